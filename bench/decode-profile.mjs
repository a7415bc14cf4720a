// Where one decode step's time goes (issue 24 item 5; docs/attention.md, "Measured: the key
// sketch"), on bench/decode.mjs's layer (4 heads x 64, k = 32, dense 256 x 256 projections).
//
// 1. Parts: an exact top-k decoder and a sketch decoder (certified), each prefilled to L keys
//    of --data, step 60 rows one decoder at a time (not interleaved: one decoder's cache at a
//    time); the native calls a step makes (linear: the three projections; attentionDecode:
//    the exact scan, heap, softmax and mix, or with a selection the softmax and mix alone;
//    keySketchSelect; keySketchAppend) are timed by wrapping them; the rest of the step is the
//    JavaScript around them. The first 10 steps are not counted.
// 2. The steps around a refit: a sketch decoder fitted to L / 2 keys holding L - 2 steps 42
//    rows; the step reaching L starts the refit, that step and the next three fit one head's
//    basis each, then each step encodes 32 earlier keys. Each step's time.
//
// Usage: node bench/decode-profile.mjs [--l=65536] [--data=lowrank] [--refit-l=16384]
// Writes bench/results/decode-profile.json.
import { AttentionDecoder, Projection, SparseSelfAttention, SparseTensor } from '../dist/index.js';
import { native } from '../dist/tensor/native.js';
import { gaussian, machine, nowMs, otherProcesses, rng, round, table, writeResults } from './lib/common.mjs';
import { decodeInputs } from './lib/decode-inputs.mjs';

const arg = (name, def) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a === undefined ? def : a.slice(name.length + 3);
};
const L = Number(arg('l', 65536)), data = arg('data', 'lowrank'), refitL = Number(arg('refit-l', 16384));
const heads = 4, D = 256, k = 32, S = 60, SKIP = 10;
function weight(seed) {
  const r = rng(seed), w = new Float32Array(D * D);
  for (let i = 0; i < w.length; i++) w[i] = gaussian(r) / Math.sqrt(D);
  return SparseTensor.fromArray(w, D);
}
const W = { q: weight(1), k: weight(2), v: weight(3) };
const layer = () => new SparseSelfAttention({ heads, k, causal: true, mode: 'sparse', query: new Projection({ weight: W.q }), key: new Projection({ weight: W.k }), value: new Projection({ weight: W.v }) });
const startedAt = new Date().toISOString();
const others = otherProcesses();
const x = decodeInputs(data, L + S, 5, D);
const n = native(), acc = {};
const wrapped = ['linear', 'keySketchSelect', 'keySketchAppend', 'attentionDecode'];
const originals = Object.fromEntries(wrapped.map((f) => [f, n[f]]));
for (const f of wrapped) {
  const orig = originals[f].bind(n);
  n[f] = (...a) => {
    const t0 = nowMs();
    const r = orig(...a);
    acc[f] = (acc[f] ?? 0) + nowMs() - t0;
    return r;
  };
}
const parts = [];
for (const which of ['exact', 'sketch']) {
  const dec = new AttentionDecoder(layer(), { maxLength: L + S, ...(which === 'sketch' ? { index: 'sketch' } : {}) });
  await dec.prefill(x.subarray(0, L * D));
  let total = 0;
  for (let i = 0; i < S; i++) {
    if (i === SKIP) {
      for (const key in acc) acc[key] = 0;
      total = 0;
    }
    const t0 = nowMs();
    await dec.step(x.subarray((L + i) * D, (L + i + 1) * D));
    total += nowMs() - t0;
  }
  const N = S - SKIP, row = { decoder: which, data, L, stepMs: round(total / N) };
  let native_ = 0;
  for (const f of wrapped) {
    row[`${f}Ms`] = round((acc[f] ?? 0) / N);
    native_ += acc[f] ?? 0;
  }
  row.otherMs = round((total - native_) / N);
  parts.push(row);
  console.log(JSON.stringify(row));
}
for (const f of wrapped) n[f] = originals[f];

const y = decodeInputs('random', refitL + 64, 6, D);
const sk = new AttentionDecoder(layer(), { maxLength: refitL + 64, index: 'sketch' });
await sk.prefill(y.subarray(0, (refitL / 2) * D));
await sk.prefill(y.subarray((refitL / 2) * D, (refitL - 2) * D));
const steps = [];
for (let at = refitL - 2; at < refitL + 40; at++) {
  const t0 = nowMs();
  await sk.step(y.subarray(at * D, (at + 1) * D));
  steps.push(round(nowMs() - t0));
}
console.log(`steps from ${refitL - 1} keys (the 2nd starts the refit; it and the next three fit a head's basis each), ms: ${steps.join(' ')}`);
table(parts, ['decoder', 'data', 'L', { key: 'stepMs', header: 'step ms' }, { key: 'linearMs', header: 'projections ms' }, { key: 'attentionDecodeMs', header: 'attentionDecode ms' }, { key: 'keySketchSelectMs', header: 'sketch select ms' }, { key: 'keySketchAppendMs', header: 'sketch append ms' }, { key: 'otherMs', header: 'other (JS) ms' }], { title: 'One decode step, by native call' });
const file = writeResults('decode-profile', {
  name: 'decode-profile', date: startedAt, command: `node ${process.argv.slice(1).join(' ')}`.replace(process.cwd() + '/', ''),
  machine: machine(), otherProcesses: others,
  parameters: { heads, headDim: 64, k, steps: S, skipped: SKIP, refitL, refitData: 'random' },
  parts, refitSteps: { fromKeys: refitL - 1, ms: steps },
});
console.log(`wrote ${file}`);
