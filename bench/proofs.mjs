#!/usr/bin/env node
/**
 * Ghost proofs benchmark: proof bytes and prove / verify time of one HopfieldLookup
 * layer against k and N, with and without the verifier's PatternCache.
 *
 *   node --expose-gc bench/proofs.mjs           full run (~15 min on 2 cores, ~6 GiB peak RSS at N = 2^24)
 *   node --expose-gc bench/proofs.mjs --quick   small sizes, few repetitions (~1 min); writes proofs-quick.json
 *   --max-log2n=L                               stop the N sweep at 2^L (default 24)
 *   --kinds=pk --log2n=14,18,22 --name=NAME     only these kinds / N sweep sizes; results to NAME.json
 *
 * One layer, d = 64 inputs, values of dv = 64, beta default (1/sqrt(64)), similarity ip,
 * keys and values uniform in [-1, 1), queries uniform in [-1, 1)^64:
 *   exact  keys: a SparseTensor of N x 64 (exact top-k, a full scan)
 *   pk     keys: ProductKeyIndex.random(n, 64) (two tables of n = sqrt(N) sub-keys of 32), N = n^2
 * Sweeps: k in {1, 4, 16, 64, 256} at N = 2^16; N in {2^10, 2^12, ..., 2^24} at k = 32 (exact
 * only up to 2^22: 2^24 x 64 keys and values would be 8 GiB). Batch B = 1 (one query, the
 * serving case) and B = 64.
 *
 * Per configuration (median of repeated warm calls):
 *   forward      await layer.forward(x)              the fast f32 path (what serving runs)
 *   prove        await model.prove(x)                re-runs retrieval with the canonical arithmetic,
 *                                                    gathers rows, Merkle multiproofs, encodes
 *   overhead     (prove - forward) / forward         the "prove time as a share of the forward"
 *                (forward and prove calls alternate, so load from other jobs hits both alike)
 *   verify       await verifyForward(pinned, bytes)  TypeScript, no addon, verifier holds nothing
 *   held         second proof of the same input with a prover mirror cache: every row travels
 *                as an id (no Merkle path): bytes, prove and verify time (verifier cache warm)
 *   new input    a proof of a fresh input with both caches warm (rows seen before travel as ids)
 *   deltas       after one SparseSGD step (lr 1e-3), then one SparseAdam step (lr 1e-3) on the
 *                touched value rows: a proof of the same input, changed rows as XOR deltas
 *   update       update proofs of those steps (the touched rows, their multiproof, gradient
 *                and state): bytes and verifyUpdate time; and of a third step whose old rows
 *                the verifier holds (ids only)
 *
 * Tables go to stdout, progress to stderr; results to bench/results/proofs.json
 * (--quick: proofs-quick.json).
 */
import os from 'node:os';
import { join } from 'node:path';

import { CORES, cpuHogs, fmt, fmtBytes, logger, machine, nowMs, otherProcesses, rng, round, ROOT, sampleFor, stats, table, tryGc, writeResults } from './lib/common.mjs';

const { Model, HopfieldLookup, ProductKeyIndex, SparseTensor, SparseSGD, SparseAdam, PatternCache, simdInfo } = await import(join(ROOT, 'dist/index.js'));
const { pinGhost, verifyForward, verifyUpdate } = await import(join(ROOT, 'dist/verify/index.js'));

// ---------------------------------------------------------------- parameters

const QUICK = process.argv.includes('--quick');
function numArg(name) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : undefined;
}
const MAX_LOG2N = numArg('max-log2n') ?? 24;
function listArg(name) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3).split(',') : undefined;
}
const KINDS = listArg('kinds') ?? ['exact', 'pk'];
const LOG2N = listArg('log2n')?.map(Number);
const NAME = listArg('name')?.[0];

const P = {
  d: 64,
  dv: 64,
  beta: 1 / 8,
  similarity: 'ip',
  kSweep: { log2N: QUICK ? 12 : 16, k: QUICK ? [1, 16, 256] : [1, 4, 16, 64, 256] },
  nSweep: { k: 32, log2N: (LOG2N ?? (QUICK ? [10, 12, 14] : [10, 12, 14, 16, 18, 20, 22, 24])).filter((l) => l <= MAX_LOG2N) },
  exactMaxLog2N: 22,
  batches: [1, 64],
  budgetMs: QUICK ? 150 : 700,
  minReps: QUICK ? 3 : 5,
  maxReps: QUICK ? 20 : 60,
  newInputs: QUICK ? 3 : 7,
  lr: 1e-3,
  seeds: { tensors: 0x70726f6f, queries: 0x71756572, grads: 0x67726164 },
  cores: CORES,
};
const others = [
  {
    system: 'zkCNN (Liu, Xie, Zhang, ACM CCS 2021), THEIR published figures, not measured here',
    model: 'VGG16 (CIFAR-10 scale), zero-knowledge proof of the whole inference',
    proveSeconds: 88,
    proofBytes: 341e3,
    verifyMs: 59,
    source: 'T. Liu, X. Xie, Y. Zhang, "zkCNN: Zero Knowledge Proofs for Convolutional Neural Network Predictions and Accuracy", CCS 2021',
  },
];

const log = logger('proofs');
const simd = simdInfo();
const results = {
  name: NAME ?? (QUICK ? 'proofs-quick' : 'proofs'),
  date: new Date().toISOString(),
  command: ['node --expose-gc bench/proofs.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd }),
  otherProcessesAtStart: otherProcesses(),
  cpuHogsAtStart: cpuHogs(),
  parameters: {
    quick: QUICK,
    ...P,
    layer: 'HopfieldLookup({ keys, values, k }) with beta default (1/sqrt(64)), similarity ip, updateSteps 1, normalize false',
    exact: 'keys = SparseTensor of N x 64 (exact retrieval); N > 2^22 skipped (8 GiB of keys and values)',
    productKeys: 'keys = ProductKeyIndex.random(sqrt(N), 64): two tables of sqrt(N) x 32; the verifier re-derives the selection from both tables, revealed whole',
    units: { ms: 'milliseconds (median of warm calls)', bytes: 'encoded proof bytes', overheadShare: '(prove - forward) / forward', proveOverForward: 'prove / forward', verifyOverForward: 'verify / forward' },
  },
  others,
  configs: [],
  notes: [],
};
const t0All = nowMs();
log(`${QUICK ? 'quick' : 'full'} run: k sweep ${P.kSweep.k.join(',')} at N = 2^${P.kSweep.log2N}; N sweep 2^${P.nSweep.log2N.join(', 2^')} at k = ${P.nSweep.k}; B = ${P.batches.join(', ')}; cores ${CORES}, simd ${simd.level}`);

// ---------------------------------------------------------------- building tensors

/** N x dim rows uniform in [-1, 1), appended in chunks into a tensor sized up front (no second copy). */
function randomTensor(N, dim, rand) {
  const t = SparseTensor.create(dim, { capacity: N, metric: P.similarity });
  const chunk = Math.max(1, Math.min(N, 2 ** 20));
  const buf = new Float32Array(chunk * dim);
  for (let s = 0; s < N; s += chunk) {
    const rows = Math.min(chunk, N - s);
    const a = rows === chunk ? buf : buf.subarray(0, rows * dim);
    for (let i = 0; i < a.length; i++) a[i] = rand() * 2 - 1;
    t.append(a);
  }
  return t;
}

async function buildTensors(kind, log2N) {
  const N = 2 ** log2N;
  const rand = rng(P.seeds.tensors + log2N * 7 + (kind === 'pk' ? 1 : 0));
  const t0 = nowMs();
  const keys = kind === 'pk' ? ProductKeyIndex.random(2 ** (log2N / 2), P.d, rand) : randomTensor(N, P.d, rand);
  const values = randomTensor(N, P.dv, rand);
  const buildMs = nowMs() - t0;
  const t1 = nowMs();
  const tensors = kind === 'pk' ? [keys.keys1, keys.keys2, values] : [keys, values];
  for (const t of tensors) await t.commit();
  return { keys, values, N, buildMs, commitMs: nowMs() - t1 };
}

const median = (xs) => stats(xs).median;
/** Medians of a() and b() called alternately (a, b, a, b, ...) after one warm call each, for budgetMs or at least minReps pairs. */
async function timeAlternating(a, b) {
  await a();
  await b();
  const ta = [], tb = [];
  let spent = 0;
  while (ta.length < P.maxReps && (ta.length < P.minReps || spent < 2 * P.budgetMs)) {
    for (const [fn, xs] of [[a, ta], [b, tb]]) {
      const t = nowMs();
      await fn();
      const dt = nowMs() - t;
      xs.push(dt);
      spent += dt;
    }
  }
  return [median(ta), median(tb)];
}
/** Median time of fn(setup()) over reps calls, setup untimed (e.g. a fresh clone of a cache). */
async function timeWith(setup, fn, reps = Math.max(3, P.minReps)) {
  await fn(setup()); // warm
  const xs = [];
  for (let r = 0; r < reps; r++) {
    const s = setup();
    const t = nowMs();
    await fn(s);
    xs.push(nowMs() - t);
  }
  return median(xs);
}
const timeOf = async (fn, o = {}) => median(await sampleFor(fn, { budgetMs: P.budgetMs, minReps: P.minReps, maxReps: P.maxReps, warm: 1, keepSlowWarm: 5000, ...o }));

// ---------------------------------------------------------------- one configuration

async function runConfig(kind, sweep, log2N, T, k, B) {
  tryGc(); // the previous configuration's proofs and caches go before anything is timed
  const N = T.N;
  const layer = new HopfieldLookup({ keys: T.keys, values: T.values, k });
  const model = new Model([layer]);
  const vi = model.tensors.indexOf(T.values);
  let pinned = await pinGhost((await model.ghost()).bytes); // the verifier's copy, from the Ghost file bytes
  const qr = rng(P.seeds.queries + 31 * log2N + k + B);
  const query = () => Float32Array.from({ length: B * P.d }, () => qr() * 2 - 1);
  const x = query();
  const out = { kind, sweep, log2N, N, k, B, otherProcesses: otherProcesses(), loadavg: os.loadavg().map((v) => round(v, 3)) };

  // No cache: forward and prove alternate call by call (load from other jobs hits both alike), then verify.
  [out.forwardMs, out.proveMs] = await timeAlternating(() => layer.forward(x), () => model.prove(x));
  const p0 = await model.prove(x);
  out.bytes = p0.bytes.length;
  out.verifyMs = await timeOf(() => verifyForward(pinned, p0.bytes));
  out.overheadShare = (out.proveMs - out.forwardMs) / out.forwardMs;
  out.proveOverForward = out.proveMs / out.forwardMs;
  out.verifyOverForward = out.verifyMs / out.forwardMs;
  const vb = p0.proof.layers[0].blocks.find((b) => b.tensor === vi);
  out.valueRows = vb.ids.length;
  out.hashBytes = p0.proof.layers[0].blocks.reduce((s, b) => s + b.hashes.length, 0);

  // Verifier cache warm, same input: every row travels as an id, no Merkle path.
  const mirror = new PatternCache(2 ** 22), vcache = new PatternCache(2 ** 22);
  const first = await model.prove(x, { cache: mirror });
  await verifyForward(pinned, first.bytes, { cache: vcache });
  const held = await model.prove(x, { cache: mirror });
  out.held = {
    bytes: held.bytes.length,
    proveMs: await timeOf(() => model.prove(x, { cache: mirror })),
    verifyMs: await timeOf(() => verifyForward(pinned, held.bytes, { cache: vcache })),
  };

  // Caches warm, a new input each time (both caches advance together).
  const nb = [], np = [], nv = [];
  for (let r = 0; r < P.newInputs; r++) {
    const xr = query();
    let t = nowMs();
    const pr = await model.prove(xr, { cache: mirror });
    np.push(nowMs() - t);
    t = nowMs();
    await verifyForward(pinned, pr.bytes, { cache: vcache });
    nv.push(nowMs() - t);
    nb.push(pr.bytes.length);
  }
  out.newInput = { bytes: median(nb), proveMs: median(np), verifyMs: median(nv) };

  // Training steps on the value rows x touched: update proofs, then deltas in the next forward proof.
  const gr = rng(P.seeds.grads + log2N + k + B);
  const ids = held.proof.layers[0].blocks.find((b) => b.tensor === vi).ids;
  const grads = () => Float32Array.from({ length: ids.length * P.dv }, () => gr() * 2 - 1);
  const stepAndDeltas = async (opt, name) => {
    const [u] = await model.proveStep(opt, [{ tensor: T.values, ids, grads: grads() }]); // no mirror: old rows in full
    opt.detach(); // (one optimizer per tensor at a time)
    const before = pinned;
    const uv = await timeOf(() => verifyUpdate(before, u.bytes), { minReps: 3 });
    pinned = (await verifyUpdate(before, u.bytes)).ghost;
    const d = await model.prove(x, { cache: mirror });
    const kinds = d.proof.layers[0].blocks.find((b) => b.tensor === vi).kinds;
    const r = {
      updateRows: ids.length,
      updateBytes: u.bytes.length,
      updateVerifyMs: uv,
      deltaBytes: d.bytes.length,
      deltaRows: kinds.filter((kk) => kk === 2).length,
      deltaVerifyMs: await timeWith(() => vcache.clone(), (c) => verifyForward(pinned, d.bytes, { cache: c })),
    };
    await verifyForward(pinned, d.bytes, { cache: vcache });
    log(`  ${name}: update ${fmtBytes(r.updateBytes)} ${fmt(r.updateVerifyMs)} ms, deltas ${fmtBytes(r.deltaBytes)} (${r.deltaRows} rows)`);
    return r;
  };
  out.sgd = await stepAndDeltas(new SparseSGD([T.values], { lr: P.lr }), 'sgd');
  out.adam = await stepAndDeltas(new SparseAdam([T.values], { lr: P.lr }), 'adam');
  // An update proof whose old rows the verifier holds (ids only; every position still has its path).
  const sgd2 = new SparseSGD([T.values], { lr: P.lr });
  const [uh] = await model.proveStep(sgd2, [{ tensor: T.values, ids, grads: grads() }], { cache: mirror });
  sgd2.detach();
  out.updateHeld = { bytes: uh.bytes.length, verifyMs: await timeWith(() => vcache.clone(), (c) => verifyUpdate(pinned, uh.bytes, { cache: c })) };
  pinned = (await verifyUpdate(pinned, uh.bytes, { cache: vcache })).ghost;
  return out;
}

// ---------------------------------------------------------------- run

const rowsOut = [];
const plan = [];
for (const kind of KINDS) {
  for (const log2N of [...new Set([P.kSweep.log2N, ...P.nSweep.log2N])].sort((a, b) => a - b)) {
    if (kind === 'exact' && log2N > P.exactMaxLog2N) continue;
    const ks = [];
    if (log2N === P.kSweep.log2N) ks.push(...P.kSweep.k.map((k) => ['k', k]));
    if (P.nSweep.log2N.includes(log2N) && !ks.some(([, k]) => k === P.nSweep.k)) ks.push(['N', P.nSweep.k]);
    plan.push({ kind, log2N, ks });
  }
}
if (P.nSweep.log2N.some((l) => l > P.exactMaxLog2N)) results.notes.push(`exact retrieval stops at N = 2^${P.exactMaxLog2N}: at 2^24 its 64-dim keys and values would be 8 GiB (the run stays under ~8 GiB on a shared machine); product keys go to 2^${Math.max(...P.nSweep.log2N)} (values 2^24 x 64 f32 = 4 GiB)`);

for (const { kind, log2N, ks } of plan) {
  tryGc();
  log(`${kind} N = 2^${log2N}: building...`);
  const T = await buildTensors(kind, log2N);
  log(`${kind} N = 2^${log2N}: built in ${(T.buildMs / 1000).toFixed(1)} s, committed in ${(T.commitMs / 1000).toFixed(1)} s, RSS ${fmtBytes(process.memoryUsage().rss)}`);
  for (const [sweep, k] of ks) {
    for (const B of P.batches) {
      const c = await runConfig(kind, sweep, log2N, T, k, B);
      c.buildMs = T.buildMs;
      c.commitMs = T.commitMs;
      c.rssBytes = process.memoryUsage().rss;
      results.configs.push(c);
      log(`${kind} N=2^${log2N} k=${k} B=${B}: fwd ${fmt(c.forwardMs)} ms, prove ${fmt(c.proveMs)} ms (x${fmt(c.proveOverForward)}), verify ${fmt(c.verifyMs)} ms, ${fmtBytes(c.bytes)} -> held ${fmtBytes(c.held.bytes)}`);
      writeResults(results.name, { ...results, partial: true });
    }
  }
}

// ---------------------------------------------------------------- tables

const ms = (v) => fmt(v, 3);
const pct = (v) => `${fmt(100 * v, 3)}%`;
const cols = [
  { key: 'kind', align: 'left' },
  { key: 'log2N', header: 'N', format: (v) => `2^${v}` },
  'k',
  'B',
  { key: 'forwardMs', header: 'forward ms', format: ms },
  { key: 'proveMs', header: 'prove ms', format: ms },
  { key: 'proveOverForward', header: 'prove/fwd', format: (v) => fmt(v, 3) },
  { key: 'overheadShare', header: '(prove-fwd)/fwd', format: pct },
  { key: 'verifyMs', header: 'verify ms', format: ms },
  { key: 'verifyOverForward', header: 'verify/fwd', format: (v) => fmt(v, 3) },
  { key: 'bytes', header: 'bytes', format: fmtBytes },
  { key: 'held', header: 'held bytes', format: (v) => fmtBytes(v.bytes) },
  { key: 'held', header: 'held verify ms', format: (v) => ms(v.verifyMs) },
  { key: 'newInput', header: 'new-input bytes', format: (v) => fmtBytes(v.bytes) },
  { key: 'newInput', header: 'new-input verify ms', format: (v) => ms(v.verifyMs) },
];
for (const [sweep, title] of [['k', `k sweep at N = 2^${P.kSweep.log2N}`], ['N', `N sweep at k = ${P.nSweep.k}`]]) {
  const rows = results.configs.filter((c) => c.sweep === sweep || (sweep === 'N' && c.k === P.nSweep.k && P.nSweep.log2N.includes(c.log2N)));
  rowsOut.push(table(rows, cols, { title: `Forward proofs, ${title}` }));
}
rowsOut.push(
  table(
    results.configs,
    [
      { key: 'kind', align: 'left' },
      { key: 'log2N', header: 'N', format: (v) => `2^${v}` },
      'k',
      'B',
      { key: 'bytes', header: 'holds nothing', format: fmtBytes },
      { key: 'held', header: 'holds all (ids)', format: (v) => fmtBytes(v.bytes) },
      { key: 'sgd', header: 'after SGD (deltas)', format: (v) => fmtBytes(v.deltaBytes) },
      { key: 'adam', header: 'after Adam (deltas)', format: (v) => fmtBytes(v.deltaBytes) },
      { key: 'sgd', header: 'update rows', format: (v) => fmt(v.updateRows) },
      { key: 'sgd', header: 'update SGD bytes', format: (v) => fmtBytes(v.updateBytes) },
      { key: 'adam', header: 'update Adam bytes', format: (v) => fmtBytes(v.updateBytes) },
      { key: 'updateHeld', header: 'update held bytes', format: (v) => fmtBytes(v.bytes) },
      { key: 'adam', header: 'update Adam verify ms', format: (v) => ms(v.updateVerifyMs) },
    ],
    { title: 'Bandwidth: what the verifier holds, deltas after a step, update proofs' },
  ),
);
table(others, ['system', { key: 'proveSeconds', header: 'prove s' }, { key: 'proofBytes', header: 'proof bytes (341 KB)' }, { key: 'verifyMs', header: 'verify ms' }], { title: 'Published figures of another system (THEIRS, not measured here)' });

const loads = results.configs.map((c) => c.loadavg[0]);
results.notes.push(
  `forward = layer.forward(x) (fast f32 path, all ${CORES} cores for exact scans); prove = model.prove(x), which runs retrieval again itself with the canonical arithmetic, so prove/forward >= ~1 for exact retrieval and the overhead share (prove - forward) / forward is what proving adds on top of a forward pass`,
  'product-key proofs reveal both sub-key tables whole (the verifier re-derives the top-k): 2 x sqrt(N) x 32 f32 when the verifier holds nothing, ids only once it holds them',
  `1-minute load average during the run: ${round(Math.min(...loads), 3)}..${round(Math.max(...loads), 3)} on ${CORES} cores (see otherProcesses per config)`,
);
results.otherProcessesAtEnd = otherProcesses();
results.cpuHogsAtEnd = cpuHogs();
results.totalSeconds = round((nowMs() - t0All) / 1000, 4);
results.peakRssBytes = Math.max(...results.configs.map((c) => c.rssBytes));
const file = writeResults(results.name, results);
log(`wrote ${file} in ${results.totalSeconds} s`);
