#!/usr/bin/env node
/**
 * Held keys (docs/proof-format.md section 5): proof bytes, prove and verify time of the
 * `npm start` demo's model when its proofs prove the selection, cold (the first proof:
 * every key travels, N x 784 f32) and warm (prover mirror and verifier cache hold the
 * keys: 2 bits a key), beside plain proofs (selection unproven). The demo's layer:
 * HopfieldLookup over N = 2,048 Fashion-MNIST training images (keys, as the demo picks
 * them: seeded, with replacement), one-hot label values x 5, cosine, normalized, k = 32,
 * beta 10; queries: test images. Also the screened selection alone (native
 * canonicalExactTopK) against scoring every key in f64, and the keys it scored in f64.
 * Medians of wall time over a few repetitions (a short run; the machine is shared).
 *
 *   nice node --expose-gc bench/held-keys.mjs [--reps=5] [--batches=1,8]
 */
import { join } from 'node:path';

import { cpuHogs, fmt, fmtBytes, logger, machine, otherProcesses, ROOT, table, tryGc, writeResults } from './lib/common.mjs';

const arg = (name) => process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
const { Model, HopfieldLookup, SparseTensor, PatternCache, pinGhost, verifyForward, simdInfo } = await import(join(ROOT, 'dist/index.js'));
const { native } = await import(join(ROOT, 'dist/tensor/native.js'));
const { cstate } = await import(join(ROOT, 'dist/verify/canonical.js'));
const { loadSplit, DEMO_DATA_DIR } = await import(join(ROOT, 'dist/cli/classifier.js'));
const REPS = Number(arg('reps') ?? 7);
const BATCHES = (arg('batches') ?? '1,8').split(',').map(Number);
const N = 2048, D = 784, K = 32;
const log = logger('held-keys');

const results = {
  name: 'held-keys',
  date: new Date().toISOString(),
  command: ['node --expose-gc bench/held-keys.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd: simdInfo() }),
  otherProcessesAtStart: otherProcesses(),
  cpuHogsAtStart: cpuHogs(),
  parameters: { N, d: D, k: K, reps: REPS, layer: 'demo: cosine, normalize, beta 10, keys = 2,048 Fashion-MNIST images, values one-hot x 5', units: 'ms wall, medians' },
  configs: [],
  selection: [],
};

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
async function timed(fn) {
  const t = performance.now();
  const r = await fn();
  return [performance.now() - t, r];
}

// The demo's model before training (trainClassifier's initialisation: seeded picks).
const train = loadSplit(DEMO_DATA_DIR, 'train', 4000);
const test = loadSplit(DEMO_DATA_DIR, 't10k', 64);
let s = 1 >>> 0;
const rand = () => {
  let t = (s = (s + 0x6d2b79f5) >>> 0);
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const kd = new Float32Array(N * D), vd = new Float32Array(N * 10);
for (let i = 0; i < N; i++) {
  const r = Math.floor(rand() * train.n);
  kd.set(train.x.subarray(r * D, (r + 1) * D), i * D);
  vd[i * 10 + train.y[r]] = 5;
}
const keys = SparseTensor.fromArray(kd, D);
const values = SparseTensor.fromArray(vd, 10);
const layer = new HopfieldLookup({ keys, values, k: K, similarity: 'cosine', normalize: true, beta: 10 });
const model = new Model([layer]);
const ghost = await pinGhost((await model.ghost()).bytes);

for (const B of BATCHES) {
  const x = test.x.slice(0, B * D);
  const row = (mode, prove, verify, bytes) => ({ B, mode, bytes, proveMs: median(prove), verifyMs: median(verify) });
  // Plain proofs: the selection is the prover's.
  {
    const p = [], v = [];
    let bytes = 0;
    for (let r = 0; r < REPS; r++) {
      tryGc();
      const [pm, out] = await timed(() => model.prove(x));
      const [vm] = await timed(() => verifyForward(ghost, out.bytes));
      p.push(pm), v.push(vm), (bytes = out.bytes.length);
    }
    results.configs.push(row('plain (selection unproven)', p, v, bytes));
  }
  // Held keys, cold: fresh caches each time, every key travels.
  const pc = [], vc = [], pw = [], vw = [];
  let coldBytes = 0, warmBytes = 0;
  for (let r = 0; r < REPS; r++) {
    tryGc();
    const [pm, cold] = await timed(() => model.prove(x, { revealKeys: 'all', cache: new PatternCache() }));
    const [vm] = await timed(() => verifyForward(ghost, cold.bytes, { cache: new PatternCache(), requireSelection: true }));
    pc.push(pm), vc.push(vm), (coldBytes = cold.bytes.length);
  }
  // Warm: one prover mirror and one verifier cache, primed by a first proof; then other inputs: keys as held ids.
  const mirror = new PatternCache(), cache = new PatternCache();
  await verifyForward(ghost, (await model.prove(x, { revealKeys: 'all', cache: mirror })).bytes, { cache, requireSelection: true });
  for (let r = 0; r < REPS; r++) {
    tryGc();
    const at = ((r + 1) * B) % (test.n - B);
    const x2 = test.x.slice(at * D, (at + B) * D);
    const [pm2, warm] = await timed(() => model.prove(x2, { revealKeys: 'all', cache: mirror }));
    const [vm2] = await timed(() => verifyForward(ghost, warm.bytes, { cache, requireSelection: true }));
    pw.push(pm2), vw.push(vm2), (warmBytes = warm.bytes.length);
  }
  results.configs.push(row('held keys, cold', pc, vc, coldBytes));
  results.configs.push(row('held keys, warm', pw, vw, warmBytes));
  log(`B=${B} done`);
  writeResults('held-keys', { ...results, partial: true });
}

// The selection alone: screened (default SIMD level) against every key in f64, the demo's first states.
for (const B of BATCHES) {
  const q = new Float64Array(B * D);
  for (let b = 0; b < B; b++) q.set(cstate(test.x, b * D, D, true), b * D);
  const sc = [], full = [];
  let rows = 0;
  for (let r = 0; r < REPS * 4; r++) {
    const [a, res] = await timed(() => native().canonicalExactTopK(q, kd, N, D, B, K, 'cosine', 1));
    const [f] = await timed(() => native().canonicalExactTopK(q, kd, N, D, B, K, 'cosine', 1, 'none'));
    sc.push(a), full.push(f), (rows = res.canonicalRows);
  }
  results.selection.push({ B, screenedMs: median(sc), everyKeyMs: median(full), f64KeysPerState: rows / B });
}

table(results.configs, [
  'B',
  { key: 'mode', header: 'proof' },
  { key: 'bytes', header: 'bytes', format: fmtBytes },
  { key: 'proveMs', header: 'prove ms' },
  { key: 'verifyMs', header: 'verify ms' },
], { title: `Demo model (N = ${N} x ${D}, k = ${K}): held keys against plain proofs` });
table(results.selection, [
  'B',
  { key: 'screenedMs', header: 'screened ms' },
  { key: 'everyKeyMs', header: 'every key f64 ms' },
  { key: 'f64KeysPerState', header: `keys scored in f64 (of ${N})`, format: (x) => fmt(x) },
], { title: 'Canonical exact top-32 (one thread)' });
results.otherProcessesAtEnd = otherProcesses();
writeResults('held-keys', results);
