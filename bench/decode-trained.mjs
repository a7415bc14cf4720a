// Long-context decoding on the keys of a trained model (issue 24 item 5; docs/attention.md,
// "The key sketch"): bench/decode.mjs measures random-weight layers on synthetic inputs; here
// the layer and its inputs are a trained language model's.
//
// A byte-level LM (dim 128, 2 layers, 4 heads of headDim 32, hidden 384, context 256, top-32
// attention) is trained with trainLanguageModel on the `fortunes` corpus (Debian fortune-mod,
// BSD) for --steps steps (or loaded from --dir). Its second attention layer's input rows are
// recorded while a Decoder reads consecutive 256-byte windows of the training text, until
// L + 28 rows are held. The model's positions stop at 256, so no single context reaches L:
// the L cached keys are those of L / 256 windows side by side (each position's keys carry its
// window's text and the learned position rows of 0..255), the layer's keys as training made
// them, but not one long document's. Then, as in bench/decode.mjs, an exact top-k decoder and
// sketch decoders (certified; and maxScored 256) over that layer are prefilled with L rows and
// step through the next 28 in turn (4 untimed); recall@32 of each selection against the exact one.
//
// --sketches=8/0,8/256 (the default): the sketch decoders as bits/maxScored (4-bit codes, e.g. 4/128:
// approximate, docs/attention.md "4-bit codes").
//
// Usage: node bench/decode-trained.mjs [--steps=300] [--ls=16384,65536] [--dir=PATH (a trained run to reuse)]
//        [--sketches=8/0,8/256] [--out=decode-trained]
// Writes bench/results/<out>.json (default decode-trained).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as lm from '../dist/index.js';
import { machine, nowMs, otherProcesses, round, table, writeResults, logger } from './lib/common.mjs';
import { parseSketches, recallOf } from './lib/decode-inputs.mjs';

const arg = (name, def) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a === undefined ? def : a.slice(name.length + 3);
};
const log = logger('decode-trained');
const steps = Number(arg('steps', 300));
const Ls = arg('ls', '16384,65536').split(',').map(Number);
const given = arg('dir', '');
const STEPS = 24, WARM = 4, k = 32;
const specs = parseSketches(arg('sketches', '8/0,8/256'));
const out = arg('out', 'decode-trained');
const config = { dim: 128, layers: 2, heads: 4, hidden: 384, context: 256, attentionK: k };

const startedAt = new Date().toISOString();
const others = otherProcesses();
const corpus = await lm.loadCorpus({ source: 'fortunes' });
const dir = given !== '' ? given : join(mkdtempSync(join(tmpdir(), 'decode-trained-')), 'run');
let trainS = null, valBpb = null;
if (given === '') {
  const t0 = nowMs();
  const r = await lm.trainLanguageModel(dir, corpus, { model: config, steps, batch: 4, lr: 5e-3, evalEvery: steps, evalBytes: 8192, checkpointEvery: steps });
  trainS = round((nowMs() - t0) / 1000);
  valBpb = round(r.valBpb);
  log(`trained ${steps} steps in ${trainS} s, validation ${valBpb} bits/byte`);
}
const { model } = await lm.Model.load(dir, { readOnly: true });
const attn = model.layers.filter((l) => l instanceof lm.SparseSelfAttention);
const layer = attn[attn.length - 1];

// The layer's input rows, recorded from its AttentionDecoder while a Decoder reads the text.
const need = Math.max(...Ls) + STEPS + WARM;
const recorded = [];
const step = lm.AttentionDecoder.prototype.step;
lm.AttentionDecoder.prototype.step = function (x) {
  if (this.layer === layer) recorded.push(x.slice());
  return step.call(this, x);
};
let t0 = nowMs();
for (let w = 0; recorded.length < need; w++) {
  const at = (w * 256) % (corpus.train.length - 256);
  await new lm.Decoder(model).append(Uint32Array.from(corpus.train.subarray(at, at + 256)));
}
lm.AttentionDecoder.prototype.step = step;
log(`recorded ${recorded.length} rows in ${round((nowMs() - t0) / 1000)} s`);
const dIn = recorded[0].length;
const rowsOf = (from, n) => {
  const x = new Float32Array(n * dIn);
  for (let i = 0; i < n; i++) x.set(recorded[from + i], i * dIn);
  return x;
};

const results = [];
for (const L of Ls) {
  const maxLength = L + STEPS + WARM;
  const exact = new lm.AttentionDecoder(layer, { dIn, maxLength });
  const sketches = specs.map(({ bits, maxScored: m }) => new lm.AttentionDecoder(layer, { dIn, maxLength, index: 'sketch', ...(m === 0 ? {} : { maxScored: m }), ...(bits === 8 ? {} : { sketchBits: bits }) }));
  const prefix = rowsOf(0, L);
  await exact.prefill(prefix);
  t0 = nowMs();
  for (const s of sketches) await s.prefill(prefix);
  const fitS = round((nowMs() - t0) / 1000 / sketches.length);
  const ms = { exact: 0 }, sel = { exact: 0 }, rec = specs.map(() => 0), cand = specs.map(() => 0), capped = specs.map(() => 0);
  for (let i = 0; i < STEPS + WARM; i++) {
    const row = recorded[L + i];
    const timed = async (key, f, into) => { const t = nowMs(); const r = await f(); if (i >= WARM) into[key] = (into[key] ?? 0) + nowMs() - t; return r; };
    await timed('exact', () => exact.step(row), ms);
    for (const [m, s] of sketches.entries()) {
      await timed(m, () => s.step(row), ms);
      if (i >= WARM) { cand[m] += s.stats().sketchCandidates; capped[m] += s.stats().sketchCapped; }
    }
    const q = layer.query === null ? row : (await layer.query.forward(row)).y;
    const e = await timed('exact', () => exact.exactSelection(q), sel);
    for (const [m, s] of sketches.entries()) {
      const g = await timed(m, () => s.indexSelection(q), sel);
      if (i >= WARM) rec[m] += recallOf(e, g, layer.heads, k);
    }
  }
  for (const [m, s] of sketches.entries()) {
    const r = {
      data: 'trained', L, bits: specs[m].bits, maxScored: specs[m].maxScored, exactTokS: round((STEPS * 1000) / ms.exact), sketchTokS: round((STEPS * 1000) / ms[m]),
      sketchSpeedup: round(ms.exact / ms[m]), sketchRecall: round(rec[m] / STEPS), sketchRank: s.stats().sketchRanks.join('/'),
      sketchCandidates: round(cand[m] / STEPS / layer.heads), sketchCappedHeads: round(capped[m] / STEPS / layer.heads),
      exactSelectMs: round(sel.exact / STEPS), sketchSelectMs: round(sel[m] / STEPS), sketchFitS: fitS,
    };
    results.push(r);
    console.log(JSON.stringify(r));
  }
}
table(results, ['data', 'L', { key: 'bits', header: 'sketch bits' }, { key: 'maxScored', header: 'maxScored' }, { key: 'exactTokS', header: 'exact top-k tok/s' }, { key: 'sketchTokS', header: 'sketch tok/s' }, { key: 'sketchSpeedup', header: 'sketch/exact' }, { key: 'sketchRecall', header: `recall@${k}` }, { key: 'sketchRank', header: 'rank/head' }, { key: 'sketchCandidates', header: 'scored/head' }, { key: 'sketchCappedHeads', header: 'capped share' }, { key: 'exactSelectMs', header: 'exact select ms' }, { key: 'sketchSelectMs', header: 'sketch select ms' }],
  { title: `Decode on a trained LM's last attention layer (${layer.heads} heads, k = ${k}), L cached keys from L / 256 windows` });
const file = writeResults(out, {
  name: out, date: startedAt, command: `node ${process.argv.slice(1).join(' ')}`.replace(process.cwd() + '/', ''),
  machine: machine(), otherProcesses: others,
  parameters: { model: config, trainingSteps: given === '' ? steps : 'loaded from --dir', trainS, valBpb, sketches: specs, corpus: corpus.licence, keys: 'the last attention layer\'s keys over L / 256 consecutive 256-byte windows of the training text (positions 0..255 each)', steps: STEPS, warm: WARM, interleaved: 'exact and sketch decoders step through the same rows in turn; select: exactSelection / indexSelection of the step query, timed apart' },
  rows: results,
});
model.close();
if (given === '') rmSync(join(dir, '..'), { recursive: true, force: true });
console.log(`wrote ${file}`);
