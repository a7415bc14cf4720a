#!/usr/bin/env node
/**
 * Training-step benchmark: one HopfieldLookup training step, sparse (k = 32 of N
 * patterns) against dense (all N), N = 2^10 .. 2^20.
 *
 *   node bench/training.mjs            full run: N = 2^10, 2^12, ..., 2^20 (~15-25 min on 2 cores)
 *   node bench/training.mjs --quick    N = 2^10 .. 2^14, a minute or two
 *   node bench/training.mjs --replot   re-print the tables and redraw the SVG from
 *                                      bench/results/training.json (no measuring)
 *   --log2n=18,20                      only these N (exponents of 2)
 *   --variants=sparse-pk,dense         only these variants
 *   --levels=scalar,avx2,avx512        run each library variant once per SIMD level
 *                                      (GHOST_TENSOR_SIMD in the child), interleaved
 *                                      level after level at each (N, variant), and
 *                                      report dense / sparse per level; tfjs runs once
 *   --name=NAME                        write bench/results/NAME.json and NAME-step.svg
 *                                      (default training; --replot reads it too)
 *
 * A step: a HopfieldLookup layer with keys (N x 64) and values (N x 64), k = 32,
 * beta = 1/8, similarity 'ip', normalize: true, over a batch of 256 random inputs;
 * loss = sum(w . y) with a random w (so dy = w); forward -> backward -> SparseAdam
 * step (lr 1e-3) over the key and value tensors -> t.root() of every tensor. Each
 * tensor was committed once at setup (commitSync), so every optimizer write updates
 * its Merkle tree incrementally. Variants:
 *
 *   sparse-pk     keys = ProductKeyIndex.fromTables(K1, K2), n = sqrt(N) sub-keys of
 *                 dim 32 per table (exact top-k over the sub-key tables); SparseAdam
 *                 over K1, K2 and the values.
 *   sparse-hnsw   keys a SparseTensor with buildHnsw (M 16, efConstruction 100; build
 *                 time reported, not in the step), index 'hnsw', ef 64; every step ends
 *                 with keys.refreshHnsw(256) (timed, in the step).
 *   sparse-exact  keys a SparseTensor, exact retrieval (an O(N) scan per query).
 *   dense         HopfieldLookup mode 'dense' (all N patterns, full softmax, the native
 *                 chunked kernels) + SparseAdam over all N rows (a dense Adam).
 *   tfjs          the same dense layer in @tensorflow/tfjs 4.22.0 on the wasm backend
 *                 (tf.matMul / tf.softmax / tf.matMul, tf.valueAndGrads for dx, dK, dV,
 *                 tf.train.adam(1e-3).applyGradients); no commitment. Run while the
 *                 predicted step stays under ~60 s.
 *
 * Every (variant, N) runs in its own child process (this file with --child), one after
 * another, so each reports its own peak RSS and none inherits another's heap. For
 * each: 1 warm-up step, then timed steps (sparse: >= 5 and ~3 s; dense: >= 2, or 1
 * when the warm-up step took over 90 s). The step's parts are timed by wrapping the
 * objects' methods (no library change): retrieval (keys.searchBatch), row gathers, the
 * native softmax-and-sums kernels (native().hopfieldMix*Async, when the library has
 * them), the rest of forward + backward (JS), SparseAdam.step (split into the native
 * checks optimCheck, the native optimStep and the JS rest), root reads, HNSW refresh.
 * Each child records the library it loaded (git HEAD, hashes of dist/*.js and the
 * addon), and the parent samples other benchmark / compile / test processes every few
 * seconds while a child runs; both are reported with the tables. The Merkle
 * share of the optimizer is measured afterwards on twin copies of the tensors (copies of
 * the trained rows, with their own SparseAdam): the gradients of the last few timed
 * steps are replayed, interleaved, on a twin that was never committed and on a committed
 * twin without any index. Merkle = committed twin - uncommitted twin (native optimStep);
 * the main tensors' optimStep (timed during the steps) - the committed twin is what the
 * HNSW index adds (drift checks, dirty marking, automatic refreshes past maxDirty), ~0
 * for the other variants. Peak RSS is taken before the twins exist. The main tensors
 * adopt the generated Float32Arrays (no second copy of the data).
 *
 * Prints tables to stdout, progress to stderr; writes bench/results/training.json and
 * bench/results/training-step.svg (--quick writes them too; parameters.quick says which).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { CORES, RESULTS_DIR, ROOT, fmt, logger, machine, nowMs, otherProcesses, resultName, rng, round, stats, table, tryGc, writeResults } from './lib/common.mjs';

const THIS_FILE = fileURLToPath(import.meta.url);
const argv = process.argv.slice(2);
const REPLOT = argv.includes('--replot');
const QUICK = argv.includes('--quick');
const CHILD = argv.indexOf('--child');
/** The value of --key=VALUE, or undefined. */
const opt = (key) => argv.find((a) => a.startsWith(`--${key}=`))?.slice(key.length + 3);
const NAME = resultName('training'); // --name=NAME: letters, digits, '.', '_', '-' (it names files in bench/results)

// ---------------------------------------------------------------- parameters

const P = {
  quick: QUICK,
  log2Ns: opt('log2n') ? opt('log2n').split(',').map(Number) : QUICK ? [10, 12, 14] : [10, 12, 14, 16, 18, 20],
  dim: 64,
  dv: 64,
  subKeyDim: 32,
  k: 32,
  batch: 256,
  lr: 1e-3,
  beta: 1 / 8, // HopfieldLookup's default 1 / sqrt(d)
  similarity: 'ip',
  normalize: true,
  batchPool: 4, // step i uses batch i % batchPool (same batches for every variant)
  seed: 0x7a11,
  hnsw: { M: 16, efConstruction: 100, ef: 64, refreshBudget: 256, buildLimitSec: 240 },
  sparseSteps: { minReps: 5, maxReps: 20, budgetMs: QUICK ? 1500 : 3000 },
  denseSteps: { minReps: 2, maxReps: 5, budgetMs: QUICK ? 2000 : 5000, slowStepMs: 90_000 },
  tfjsSteps: { minReps: 2, maxReps: 5, budgetMs: QUICK ? 2000 : 5000, slowStepMs: 60_000 },
  twinSteps: 5, // sparse: replay the last 5 steps' gradients (dense: the last step's)
  twinReps: 2, // passes over them (after one warm pass)
  limits: {
    exactMaxStepMs: 10_000, // sparse-exact: skip an N whose predicted step is longer
    tfjsMaxStepMs: 60_000, // tfjs: skip an N whose predicted step is longer
    hnswPredictedBuildSec: 400, // sparse-hnsw: skip an N whose predicted build is longer (the child also stops at buildLimitSec)
    childTimeoutSec: { 'sparse-pk': 600, 'sparse-hnsw': 900, 'sparse-exact': 600, dense: 900, tfjs: 420 },
  },
};
const ALL_VARIANTS = ['sparse-pk', 'sparse-hnsw', 'sparse-exact', 'dense', 'tfjs'];
const SPARSE = ['sparse-pk', 'sparse-hnsw', 'sparse-exact'];
let BASE_VARIANTS = opt('variants') ? opt('variants').split(',') : ALL_VARIANTS;
/** SIMD levels to run each library variant at (GHOST_TENSOR_SIMD in the child); [] = the default level only. */
let LEVELS = opt('levels') ? opt('levels').split(',') : [];
for (const v of BASE_VARIANTS) if (!ALL_VARIANTS.includes(v)) throw new Error(`--variants: unknown variant ${v} (${ALL_VARIANTS.join(', ')})`);
if (P.log2Ns.some((e) => !Number.isInteger(e) || e < 2 || e > 26)) throw new Error(`--log2n: exponents 2..26, got ${opt('log2n')}`);
/** A result column: the variant at one SIMD level ('dense@avx2'), or the bare variant without --levels. */
const key = (variant, level) => (level && variant !== 'tfjs' ? `${variant}@${level}` : variant);
const baseOf = (k) => k.split('@')[0];
const levelOf = (k) => k.split('@')[1];
const columns = () => BASE_VARIANTS.flatMap((v) => (LEVELS.length && v !== 'tfjs' ? LEVELS.map((l) => key(v, l)) : [v]));
let VARIANTS = columns();
/** The levels to report ratios at: each of --levels, or [undefined] (the bare variants). */
const ratioLevels = () => (LEVELS.length ? LEVELS : [undefined]);

// ---------------------------------------------------------------- shared helpers

/** Uniform [-1, 1) rows, each scaled to length `norm` (rows of `dim`). */
function unitRows(rand, rows, dim, norm = 1) {
  const a = new Float32Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    const o = r * dim;
    for (let j = 0; j < dim; j++) {
      const v = rand() * 2 - 1;
      a[o + j] = v;
      s += v * v;
    }
    const inv = norm / Math.sqrt(s);
    for (let j = 0; j < dim; j++) a[o + j] *= inv;
  }
  return a;
}
function uniform(rand, len, scale = 1) {
  const a = new Float32Array(len);
  for (let i = 0; i < len; i++) a[i] = (rand() * 2 - 1) * scale;
  return a;
}

/** The data of one N, identical in every child (seeded by N). */
function makeData(log2N, { keys = true, subKeys = false } = {}) {
  const N = 2 ** log2N;
  const out = { N };
  const t = nowMs();
  if (keys) out.keys = unitRows(rng(P.seed + 1000 * log2N + 1), N, P.dim);
  if (subKeys) {
    const n = 2 ** (log2N / 2);
    // two tables of unit/sqrt(2) sub-keys: the concatenated slot keys have unit length
    out.keys1 = unitRows(rng(P.seed + 1000 * log2N + 2), n, P.subKeyDim, Math.SQRT1_2);
    out.keys2 = unitRows(rng(P.seed + 1000 * log2N + 3), n, P.dim - P.subKeyDim, Math.SQRT1_2);
  }
  out.values = uniform(rng(P.seed + 1000 * log2N + 4), N * P.dv, 1);
  const rb = rng(P.seed + 7);
  out.batches = [];
  for (let i = 0; i < P.batchPool; i++) out.batches.push({ x: uniform(rb, P.batch * P.dim), w: uniform(rb, P.batch * P.dv) });
  out.dataGenMs = nowMs() - t;
  return out;
}

const median = (a) => (a.length ? stats(a).median : NaN);

/** Which library build a process loads: git HEAD and hashes of dist/*.js and the addon. */
function libraryProvenance() {
  const h = createHash('sha256');
  const dist = join(ROOT, 'dist');
  for (const f of readdirSync(dist).filter((f) => f.endsWith('.js')).sort()) h.update(f).update(readFileSync(join(dist, f)));
  let addon = null;
  try {
    addon = createHash('sha256').update(readFileSync(join(ROOT, 'build', 'Release', 'ghost_tensor.node'))).digest('hex').slice(0, 16);
  } catch {
    /* a prebuild, or none */
  }
  let head = null;
  try {
    head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    /* not a git checkout */
  }
  return { head, dist: h.digest('hex').slice(0, 16), addon };
}
const maxRssMiB = () => process.resourceUsage().maxRSS / 1024; // maxRSS is in KiB

// ================================================================ child: one variant at one N

if (CHILD >= 0) {
  const variant = argv[CHILD + 1];
  const log2N = Number(argv[CHILD + 2]);
  const outFile = argv[argv.indexOf('--out') + 1];
  const log = logger(`training ${variant} 2^${log2N}`);
  const emit = (obj) => writeFileSync(outFile, JSON.stringify(obj));
  const library = libraryProvenance(); // before the import: what this child loads
  try {
    const r = variant === 'tfjs' ? await runTfjs(log2N, log) : await runLibrary(variant, log2N, log, emit);
    let simd = null;
    if (variant !== 'tfjs') simd = (await import(join(ROOT, 'dist/index.js'))).simdInfo();
    emit({ ok: true, library, simd: simd && { level: simd.level, envError: simd.envError, blake3Simd: simd.blake3Simd }, ...r });
  } catch (err) {
    log(`FAILED: ${err?.stack ?? err}`);
    emit({ ok: false, variant, log2N, error: String(err?.message ?? err), maxRssMiB: round(maxRssMiB()) });
  }
  process.exit(0);
}

async function runLibrary(variant, log2N, log, emit) {
  const { SparseTensor, SparseAdam, HopfieldLookup, ProductKeyIndex } = await import(join(ROOT, 'dist/index.js'));
  const { internalNative, native } = await import(join(ROOT, 'dist/internal.js'));
  const N = 2 ** log2N;
  const pk = variant === 'sparse-pk';
  const hnsw = variant === 'sparse-hnsw';
  const dense = variant === 'dense';
  const setup = {};

  log('data ...');
  const data = makeData(log2N, { keys: !pk, subKeys: pk });
  setup.dataGenMs = round(data.dataGenMs);

  // Step-part accumulators (reset each step).
  const acc = {};
  const resetAcc = () => {
    for (const k of ['retrieval', 'gather', 'nativeMath', 'optimCheck', 'optimNative']) acc[k] = 0;
  };
  resetAcc();
  const wrapAsync = (obj, name, key, onSpan) => {
    const orig = obj[name].bind(obj);
    obj[name] = async (...a) => {
      const t = nowMs();
      try {
        return await orig(...a);
      } finally {
        const e = nowMs();
        if (key) acc[key] += e - t;
        if (onSpan) onSpan(t, e);
      }
    };
  };
  const wrapSync = (obj, name, key) => {
    const orig = obj[name].bind(obj);
    obj[name] = (...a) => {
      const t = nowMs();
      try {
        return orig(...a);
      } finally {
        acc[key] += nowMs() - t;
      }
    };
  };
  // Native methods are read-only prototype properties: shadow them on the instance.
  const wrapNativeMethod = (nat, name, key) => {
    const orig = nat[name];
    if (typeof orig !== 'function') return false;
    Object.defineProperty(nat, name, {
      configurable: true,
      value(...a) {
        const t = nowMs();
        try {
          return orig.apply(this, a);
        } finally {
          acc[key] += nowMs() - t;
        }
      },
    });
    return true;
  };
  const wrapOptimNative = (tensor) => {
    wrapNativeMethod(internalNative(tensor), 'optimStep', 'optimNative');
    wrapNativeMethod(internalNative(tensor), 'optimCheck', 'optimCheck');
  };

  // ---- tensors, commitment, index
  log('tensors ...');
  const values = SparseTensor.fromArray(data.values, P.dv, { adopt: true });
  let keys, keyTensors;
  if (pk) {
    const k1 = SparseTensor.fromArray(data.keys1, P.subKeyDim, { adopt: true });
    const k2 = SparseTensor.fromArray(data.keys2, P.dim - P.subKeyDim, { adopt: true });
    keys = ProductKeyIndex.fromTables(k1, k2);
    keyTensors = [k1, k2];
  } else {
    keys = SparseTensor.fromArray(data.keys, P.dim, { metric: 'ip', adopt: true });
    keyTensors = [keys];
  }
  const tensors = [...keyTensors, values];
  let t = nowMs();
  for (const x of tensors) x.commitSync();
  setup.commitMs = round(nowMs() - t);

  if (hnsw) {
    log(`buildHnsw(M ${P.hnsw.M}, efConstruction ${P.hnsw.efConstruction}) ...`);
    const limit = setTimeout(() => {
      log(`build over ${P.hnsw.buildLimitSec} s: stopping this N`);
      emit({ ok: false, variant, log2N, skipped: true, error: `HNSW build over ${P.hnsw.buildLimitSec} s`, buildOverLimit: true, maxRssMiB: round(maxRssMiB()) });
      process.exit(0);
    }, P.hnsw.buildLimitSec * 1000);
    t = nowMs();
    await keys.buildHnsw({ metric: 'ip', M: P.hnsw.M, efConstruction: P.hnsw.efConstruction });
    clearTimeout(limit);
    setup.hnswBuildMs = round(nowMs() - t);
    log(`   built in ${(setup.hnswBuildMs / 1e3).toFixed(1)} s`);
  }

  const layer = new HopfieldLookup({
    keys,
    values,
    k: P.k,
    beta: P.beta,
    similarity: P.similarity,
    normalize: P.normalize,
    mode: dense ? 'dense' : 'sparse',
    ...(hnsw ? { index: 'hnsw', ef: P.hnsw.ef } : {}),
  });
  const opt = new SparseAdam(tensors, { lr: P.lr });

  // ---- instrumentation
  if (!dense) wrapAsync(keys, 'searchBatch', 'retrieval'); // product keys: scans + k x k combine, native
  if (!dense) for (const x of tensors) wrapSync(x, 'gather', 'gather');
  for (const x of tensors) wrapOptimNative(x);
  // The sparse softmax-and-sums kernels (module functions of the addon, async).
  const nativeMathFns = ['hopfieldMixAsync', 'hopfieldMixBackwardAsync', 'hopfieldKeyBackwardAsync'].filter((f) => typeof native()[f] === 'function');
  if (!dense) for (const f of nativeMathFns) wrapAsync(native(), f, 'nativeMath');
  setup.nativeMathKernels = nativeMathFns;

  // Normalised queries of a batch (as the layer computes them), for recall checks.
  const normalized = (x) => {
    const q = new Float32Array(x.length);
    for (let b = 0; b < P.batch; b++) {
      let s = 0;
      for (let j = 0; j < P.dim; j++) s += x[b * P.dim + j] ** 2;
      const inv = 1 / Math.sqrt(s);
      for (let j = 0; j < P.dim; j++) q[b * P.dim + j] = x[b * P.dim + j] * inv;
    }
    return q;
  };
  const recallAt = async () => {
    const q = normalized(data.batches[0].x);
    const a = await keys.searchBatch(q, P.k, { index: 'hnsw', ef: P.hnsw.ef });
    const e = await keys.searchBatch(q, P.k, { metric: 'ip' });
    let hit = 0;
    for (let b = 0; b < P.batch; b++) {
      const truth = new Set(e.ids.subarray(b * P.k, (b + 1) * P.k));
      for (const id of a.ids.subarray(b * P.k, (b + 1) * P.k)) if (truth.has(id)) hit++;
    }
    return round(hit / (P.batch * P.k));
  };
  if (hnsw) {
    setup.recallBefore = await recallAt();
    log(`   recall@${P.k} at ef ${P.hnsw.ef}: ${setup.recallBefore}`);
  }

  // ---- the training step
  const recentGrads = [];
  const step = async (i) => {
    const { x, w } = data.batches[i % P.batchPool];
    resetAcc();
    const hnswBefore = hnsw ? keys.hnsw : null;
    const t0 = nowMs();
    const f = await layer.forward(x);
    const t1 = nowMs();
    const g = await layer.backward(f.ctx, w);
    const t2 = nowMs();
    opt.step(g.grads);
    const t3 = nowMs();
    for (const x of tensors) x.root();
    const t4 = nowMs();
    let refreshed = 0;
    if (hnsw) refreshed = keys.refreshHnsw(P.hnsw.refreshBudget);
    const t5 = nowMs();
    recentGrads.push(g.grads);
    if (recentGrads.length > (dense ? 1 : P.twinSteps)) recentGrads.shift();
    let loss = 0;
    for (let j = 0; j < w.length; j++) loss += w[j] * f.y[j];
    const part = {
      stepMs: t5 - t0,
      forwardMs: t1 - t0,
      backwardMs: t2 - t1,
      retrievalMs: acc.retrieval,
      gatherMs: acc.gather,
      nativeMathMs: acc.nativeMath,
      restMs: t2 - t0 - acc.retrieval - acc.gather - acc.nativeMath,
      optimizerMs: t3 - t2,
      optimCheckMs: acc.optimCheck,
      optimNativeMs: acc.optimNative,
      optimJsMs: t3 - t2 - acc.optimNative - acc.optimCheck,
      rootMs: t4 - t3,
      loss,
    };
    if (hnsw) {
      const h = keys.hnsw;
      Object.assign(part, {
        refreshMs: t5 - t4,
        refreshed,
        dirtyBefore: hnswBefore.dirty,
        dirtyAfter: h.dirty,
        autoRefreshed: h.refreshed - hnswBefore.refreshed - refreshed,
      });
    }
    return part;
  };

  const S = dense ? P.denseSteps : P.sparseSteps;
  log('warm-up step ...');
  const warm = await step(0);
  log(`   ${warm.stepMs.toFixed(1)} ms`);
  const minReps = dense && warm.stepMs > P.denseSteps.slowStepMs ? 1 : S.minReps;
  const parts = [];
  let spent = 0;
  while (parts.length < S.maxReps && (parts.length < minReps || spent < S.budgetMs)) {
    const p = await step(parts.length + 1);
    parts.push(p);
    spent += p.stepMs;
    if (dense || log2N >= 18) log(`   step ${parts.length}: ${p.stepMs.toFixed(1)} ms`);
  }
  const peakRss = maxRssMiB();
  const med = (k) => round(median(parts.map((p) => p[k]).filter((v) => v !== undefined)));
  const keysOf = Object.keys(parts[0]).filter((k) => k.endsWith('Ms'));
  const breakdown = Object.fromEntries(keysOf.map((k) => [k, med(k)]));
  if (hnsw) {
    breakdown.refreshed = med('refreshed');
    breakdown.autoRefreshed = med('autoRefreshed');
    breakdown.dirtyAfterLast = parts.at(-1).dirtyAfter;
    breakdown.autoRefreshedTotal = parts.reduce((a, p) => a + p.autoRefreshed, 0);
    setup.recallAfter = await recallAt();
    setup.hnswAfter = keys.hnsw;
  }

  // ---- Merkle (and HNSW) share of the optimizer: twins replaying the recent gradients
  log('twins (Merkle share of the optimizer) ...');
  tryGc();
  const all = new Uint32Array(N);
  for (let i = 0; i < N; i++) all[i] = i;
  const mkTwin = (commit) => {
    const m = new Map();
    for (const x of tensors) {
      const c = SparseTensor.fromArray(x.gather(all.subarray(0, x.size)), x.dim, { metric: 'ip', adopt: true });
      if (commit) c.commitSync();
      wrapOptimNative(c);
      m.set(x, c);
    }
    return { m, o: new SparseAdam([...m.values()], { lr: P.lr }) };
  };
  const twins = { plain: mkTwin(false), committed: mkTwin(true) };
  const twinSamples = { plain: [], committed: [] };
  const runTwin = (tw, grads) => {
    acc.optimNative = 0;
    tw.o.step(grads.map((g) => ({ ...g, tensor: tw.m.get(g.tensor) })));
    return acc.optimNative;
  };
  for (let r = 0; r <= P.twinReps; r++) {
    for (const grads of recentGrads) {
      const plain = runTwin(twins.plain, grads);
      const committed = runTwin(twins.committed, grads);
      if (r === 0) continue; // warm pass
      twinSamples.plain.push(plain);
      twinSamples.committed.push(committed);
    }
  }
  const twin = {
    optimNativeMainMs: breakdown.optimNativeMs,
    optimNativeCommittedTwinMs: round(median(twinSamples.committed)),
    optimNativeUncommittedTwinMs: round(median(twinSamples.plain)),
    replayedSteps: recentGrads.length,
    reps: P.twinReps,
  };
  twin.merkleMs = round(twin.optimNativeCommittedTwinMs - twin.optimNativeUncommittedTwinMs);
  twin.mainMinusCommittedTwinMs = round(twin.optimNativeMainMs - twin.optimNativeCommittedTwinMs);

  // ---- check: the incrementally kept root equals a fresh rebuild
  const fresh = native().merkleRoot(values.gather(all), P.dv, CORES);
  const rootOk = Buffer.from(fresh).equals(Buffer.from(values.root()));

  if (dense) {
    // fwd: scores 2BNd + values 2BNdv; bwd: scores again, dA, dV, dK, dQ (2BN(d or dv) each)
    const bn = P.batch * N;
    breakdown.forwardGflops = round((bn * 2 * (P.dim + P.dv)) / (breakdown.forwardMs * 1e6), 3);
    breakdown.backwardGflops = round((bn * 2 * (3 * P.dim + 2 * P.dv)) / (breakdown.backwardMs * 1e6), 3);
  }
  return {
    variant,
    log2N,
    n: N,
    setup,
    warmStepMs: round(warm.stepMs),
    stepSamplesMs: parts.map((p) => round(p.stepMs)),
    medianStepMs: breakdown.stepMs,
    breakdown,
    twin,
    lossFirst: round(warm.loss, 6),
    lossLast: round(parts.at(-1).loss, 6),
    rootMatchesFreshRebuild: rootOk,
    maxRssMiB: round(peakRss),
    maxRssWithTwinsMiB: round(maxRssMiB()),
    loadavgEnd: os.loadavg().map((x) => round(x, 3)),
  };
}

async function runTfjs(log2N, log) {
  const N = 2 ** log2N;
  const tf = await import('@tensorflow/tfjs');
  await import('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") failed');
  await tf.ready();
  const env = {
    tfjs: tf.version.tfjs,
    backend: tf.getBackend(),
    wasmSimd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
    wasmThreads: await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'),
  };
  log(`data ... (${JSON.stringify(env)})`);
  const data = makeData(log2N, { keys: true });
  const setup = { dataGenMs: round(data.dataGenMs) };
  const K = tf.variable(tf.tensor2d(data.keys, [N, P.dim]), true, 'keys');
  const V = tf.variable(tf.tensor2d(data.values, [N, P.dv]), true, 'values');
  delete data.keys;
  delete data.values;
  const batches = data.batches.map((b) => ({ x: tf.tensor2d(b.x, [P.batch, P.dim]), w: tf.tensor2d(b.w, [P.batch, P.dv]) }));
  const opt = tf.train.adam(P.lr);
  // loss = sum(w . y), y = softmax(beta * q K^T) V, q = x / |x|
  const lossFn = (w) => (x, k, v) => {
    const q = tf.div(x, tf.norm(x, 'euclidean', 1, true));
    const a = tf.softmax(tf.mul(tf.matMul(q, k, false, true), P.beta));
    return tf.sum(tf.mul(tf.matMul(a, v), w));
  };
  const vgs = batches.map((b) => tf.valueAndGrads(lossFn(b.w)));
  const step = (i) => {
    const b = batches[i % P.batchPool];
    const t0 = nowMs();
    const { value, grads } = vgs[i % P.batchPool]([b.x, K, V]); // wasm kernels run synchronously
    const t1 = nowMs();
    opt.applyGradients({ [K.name]: grads[1], [V.name]: grads[2] });
    const t2 = nowMs();
    grads[0].dataSync(); // dx, as a caller would read it
    const loss = value.dataSync()[0];
    tf.dispose([value, ...grads]);
    const t3 = nowMs();
    return { stepMs: t3 - t0, forwardBackwardMs: t1 - t0, optimizerMs: t2 - t1, readMs: t3 - t2, loss };
  };
  log('warm-up step ...');
  const warm = step(0);
  log(`   ${warm.stepMs.toFixed(1)} ms`);
  const S = P.tfjsSteps;
  const minReps = warm.stepMs > S.slowStepMs ? 1 : S.minReps;
  const parts = [];
  let spent = 0;
  while (parts.length < S.maxReps && (parts.length < minReps || spent < S.budgetMs)) {
    const p = step(parts.length + 1);
    parts.push(p);
    spent += p.stepMs;
    log(`   step ${parts.length}: ${p.stepMs.toFixed(1)} ms`);
  }
  const med = (k) => round(median(parts.map((p) => p[k])));
  return {
    variant: 'tfjs',
    log2N,
    n: N,
    env,
    setup,
    warmStepMs: round(warm.stepMs),
    stepSamplesMs: parts.map((p) => round(p.stepMs)),
    medianStepMs: med('stepMs'),
    breakdown: {
      stepMs: med('stepMs'),
      forwardBackwardMs: med('forwardBackwardMs'),
      optimizerMs: med('optimizerMs'),
      readMs: med('readMs'),
      forwardBackwardGflops: round((P.batch * N * 2 * (4 * P.dim + 3 * P.dv)) / (med('forwardBackwardMs') * 1e6), 3),
    },
    lossFirst: round(warm.loss, 6),
    lossLast: round(parts.at(-1).loss, 6),
    tfMemoryMiB: round(tf.memory().numBytes / 2 ** 20),
    maxRssMiB: round(maxRssMiB()),
    loadavgEnd: os.loadavg().map((x) => round(x, 3)),
  };
}

// ================================================================ parent: orchestrate, tabulate, plot

const log = logger('training');
const t0All = nowMs();
const tmp = mkdtempSync(join(os.tmpdir(), 'gt-training-'));

/** Other benchmark / compiler / test processes on the machine (not this run's). */
const otherLoad = () =>
  otherProcesses({ pattern: 'bench/|cc1plus|vitest|examples/|node-gyp', exclude: [THIS_FILE, 'bench/training.mjs'], maxLength: Infinity });

function runChild(variant, log2N, level) {
  const out = join(tmp, `${key(variant, level)}-${log2N}.json`);
  const env = { ...process.env };
  if (level) env.GHOST_TENSOR_SIMD = level;
  const args = ['--expose-gc', THIS_FILE, '--child', variant, String(log2N), '--out', out, ...(QUICK ? ['--quick'] : [])];
  const before = { loadavg: os.loadavg().map((x) => round(x, 3)), others: otherLoad() };
  const seen = new Set(before.others);
  const t = nowMs();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit'], cwd: ROOT, env });
    const sampler = setInterval(() => {
      for (const l of otherLoad()) if (!l.startsWith(`${child.pid} `)) seen.add(l);
    }, 3000);
    const limitSec = P.limits.childTimeoutSec[variant];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      log(`${variant} 2^${log2N}: over ${limitSec} s, killing child ${child.pid}`);
      child.kill('SIGKILL');
    }, limitSec * 1000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      clearInterval(sampler);
      let r;
      try {
        r = JSON.parse(readFileSync(out, 'utf8'));
      } catch {
        r = { ok: false, variant, log2N, error: timedOut ? `killed after ${limitSec} s` : `child exited (code ${code}, signal ${signal}) without a result` };
      }
      r.wallSec = round((nowMs() - t) / 1e3);
      if (level) {
        r.simdRequested = level;
        if (r.ok && r.simd?.level !== level) r.error = `asked GHOST_TENSOR_SIMD=${level}, ran at ${r.simd?.level} (${r.simd?.envError})`;
        if (r.error) r.ok = false;
      }
      r.loadBefore = before;
      for (const l of otherLoad()) seen.add(l);
      r.othersDuring = [...seen];
      resolve(r);
    });
  });
}

/** Why (variant, log2N) at `level` should be skipped given the results at smaller N, or null. */
function skipReason(variant, log2N, runs, level) {
  const prev = Object.values(runs[key(variant, level)]).filter((r) => r.log2N < log2N).sort((a, b) => b.log2N - a.log2N)[0];
  if (!prev) return null;
  const f = 2 ** (log2N - prev.log2N);
  if (!prev.ok) return `not run: it ${prev.skipped ? 'was stopped' : 'failed'} at 2^${prev.log2N} (${prev.error ?? prev.skipReason})`;
  if (variant === 'sparse-exact' && prev.medianStepMs * f > P.limits.exactMaxStepMs) {
    return `not run: predicted step ${fmt((prev.medianStepMs * f) / 1e3)} s > ${P.limits.exactMaxStepMs / 1e3} s`;
  }
  if (variant === 'tfjs' && prev.medianStepMs * f > P.limits.tfjsMaxStepMs) {
    return `not run: predicted step ${fmt((prev.medianStepMs * f) / 1e3)} s (${f} x ${fmt(prev.medianStepMs / 1e3)} s at 2^${prev.log2N}) > ${P.limits.tfjsMaxStepMs / 1e3} s`;
  }
  if (variant === 'sparse-hnsw') {
    const predicted = (prev.setup.hnswBuildMs / 1e3) * f * 1.15; // slightly worse than linear (log factor)
    if (predicted > P.limits.hnswPredictedBuildSec) return `not run: predicted HNSW build ${fmt(predicted)} s > ${P.limits.hnswPredictedBuildSec} s`;
  }
  return null;
}

let results;
if (REPLOT) {
  results = JSON.parse(readFileSync(join(RESULTS_DIR, `${NAME}.json`), 'utf8'));
  P.log2Ns = results.parameters.log2Ns;
  BASE_VARIANTS = results.parameters.variants;
  LEVELS = results.parameters.levels ?? [];
  VARIANTS = columns();
  P.quick = results.parameters.quick;
  log(`replot of ${results.command} from ${results.date}`);
} else {
  log(`${QUICK ? 'quick' : 'full'} run: N = ${P.log2Ns.map((e) => `2^${e}`).join(', ')}; ${VARIANTS.join(', ')}; cores = ${CORES}`);
  const startOthers = otherLoad();
  if (startOthers.length) log(`other load at start: ${startOthers.join(' | ')}`);
  results = {
    name: NAME,
    date: new Date().toISOString(),
    command: `node bench/training.mjs ${argv.join(' ')}`.trim(),
    machine: machine(),
    parameters: {
      ...P,
      variants: BASE_VARIANTS,
      levels: LEVELS,
      columns: VARIANTS,
      units: { ms: 'milliseconds (wall clock)', MiB: '2^20 bytes' },
      step: 'forward (256 inputs) -> backward (dy = w) -> SparseAdam.step over the key and value tensors -> t.root() of each tensor (+ refreshHnsw for sparse-hnsw); tfjs: valueAndGrads + adam.applyGradients + reading dx and the loss (no commitment)',
    },
    otherLoadAtStart: startOthers,
    runs: Object.fromEntries(VARIANTS.map((v) => [v, {}])),
  };

  for (const log2N of P.log2Ns) {
    for (const variant of BASE_VARIANTS) {
      for (const level of variant !== 'tfjs' && LEVELS.length ? LEVELS : [undefined]) {
        const k = key(variant, level);
        const why = skipReason(variant, log2N, results.runs, level);
        if (why) {
          log(`${k} 2^${log2N}: ${why}`);
          results.runs[k][log2N] = { ok: false, variant, log2N, skipped: true, skipReason: why };
          continue;
        }
        log(`${k} 2^${log2N} ...`);
        const r = await runChild(variant, log2N, level);
        results.runs[k][log2N] = r;
        log(
          r.ok
            ? `${k} 2^${log2N}: median step ${fmt(r.medianStepMs)} ms, peak RSS ${fmt(r.maxRssMiB)} MiB (${r.wallSec} s)`
            : `${k} 2^${log2N}: ${r.error}`,
        );
      }
    }
  }
}

// ---------------------------------------------------------------- tables

const get = (v, e) => {
  const r = results.runs[v]?.[e];
  return r && r.ok ? r : null;
};
const stepOf = (v, e) => get(v, e)?.medianStepMs;
const ratio = (a, b) => (a !== undefined && b !== undefined ? round(a / b, 3) : undefined);
const exp = (e) => `2^${e}`;

/** Another benchmark, compile or test process was seen before or after this run's child. */
const contended = (v, e) => (results.runs[v][e]?.othersDuring ?? []).length > 0;
const markIf = (v) => (x, row) => (x === undefined ? '-' : `${fmt(x)}${contended(v, row.log2N) ? ' !' : ''}`);
/** One line on the library build(s) the children loaded (all must match). */
function libraryNote() {
  const libs = new Map();
  for (const v of VARIANTS) for (const r of Object.values(results.runs[v])) if (r.library) libs.set(JSON.stringify(r.library), `${v} ${exp(r.log2N)}`);
  results.libraryBuilds = [...libs.keys()].map((k) => JSON.parse(k));
  if (libs.size === 0) return 'library build not recorded';
  if (libs.size === 1) {
    const l = results.libraryBuilds[0];
    return `library: git ${l.head}, dist ${l.dist}, addon ${l.addon} (the same in every child)`;
  }
  return `WARNING: the library changed during the run (${libs.size} builds): ${[...libs.entries()].map(([k, at]) => `${k} (last at ${at})`).join('; ')}`;
}
/** Ratio columns: dense over each sparse variant and tfjs over dense, at each level (suffix @level with --levels). */
const ratioCols = ratioLevels().flatMap((l) => {
  const at = l ? `@${l}` : '';
  return [
    ['denseOverPk', 'sparse-pk', 'dense/pk'],
    ['denseOverHnsw', 'sparse-hnsw', 'dense/hnsw'],
    ['denseOverExact', 'sparse-exact', 'dense/exact'],
    ['tfjsOverDense', 'tfjs', 'tfjs/dense'],
  ]
    .filter(([, v]) => BASE_VARIANTS.includes(v) && BASE_VARIANTS.includes('dense'))
    .map(([name, v, header]) => ({
      name: name + at,
      header: header + (l ? ` ${l}` : ''),
      of: (e) => (v === 'tfjs' ? ratio(stepOf('tfjs', e), stepOf(key('dense', l), e)) : ratio(stepOf(key('dense', l), e), stepOf(key(v, l), e))),
    }));
});
const summary = P.log2Ns.map((e) => ({
  log2N: e,
  n: 2 ** e,
  ...Object.fromEntries(VARIANTS.map((v) => [v, stepOf(v, e)])),
  ...Object.fromEntries(ratioCols.map((c) => [c.name, c.of(e)])),
}));
results.summary = summary;
const skipNote = (v) =>
  P.log2Ns.filter((e) => !get(v, e)).map((e) => `${v} ${exp(e)}: ${results.runs[v][e]?.skipReason ?? results.runs[v][e]?.error ?? 'missing'}`);
table(
  summary,
  [
    { key: 'log2N', header: 'N', format: (x) => exp(x) },
    ...VARIANTS.map((v) => ({ key: v, header: `${v} ms`, format: markIf(v) })),
    ...ratioCols.map((c) => ({ key: c.name, header: c.header })),
  ],
  {
    title: `1. Median training-step time (batch ${P.batch}, d = dv = ${P.dim}, k = ${P.k}), ms`,
    notes: [
      'step = forward + backward + SparseAdam.step (incl. Merkle path updates) + root() reads (+ refreshHnsw(256) for hnsw); tfjs: no commitment.',
      'Each (variant, N) in its own process, one after another; 1 warm-up step, then the median of the timed steps.',
      ...(LEVELS.length ? [`variant@level: GHOST_TENSOR_SIMD=level in the child (checked against simdInfo().level); at each (N, variant) the levels run one after another (${LEVELS.join(', ')}).`] : []),
      ...VARIANTS.flatMap(skipNote),
      ...VARIANTS.flatMap((v) =>
        P.log2Ns.filter((e) => contended(v, e)).map((e) => `! ${v} ${exp(e)} shared the machine with: ${results.runs[v][e].othersDuring.join(' | ')}`),
      ),
      libraryNote(),
    ],
  },
);

const bdRows = [];
for (const v of VARIANTS.filter((c) => baseOf(c) !== 'tfjs')) {
  for (const e of P.log2Ns) {
    const r = get(v, e);
    if (!r) continue;
    const b = r.breakdown;
    const merkle = r.twin?.merkleMs;
    bdRows.push({
      what: v,
      log2N: e,
      step: b.stepMs,
      retrieval: b.retrievalMs,
      gather: b.gatherMs,
      nativeMath: baseOf(v) === 'dense' ? undefined : b.nativeMathMs,
      rest: baseOf(v) === 'dense' ? undefined : b.restMs,
      fwd: b.forwardMs,
      bwd: b.backwardMs,
      optimizer: b.optimizerMs,
      optimJs: b.optimJsMs,
      optimCheck: b.optimCheckMs,
      optimNative: b.optimNativeMs,
      merkle,
      residual: r.twin?.mainMinusCommittedTwinMs,
      root: b.rootMs,
      refresh: b.refreshMs,
    });
  }
}
table(
  bdRows,
  [
    { key: 'what', header: 'variant' },
    { key: 'log2N', header: 'N', format: (x) => exp(x) },
    { key: 'step', header: 'step' },
    { key: 'fwd', header: 'fwd' },
    { key: 'bwd', header: 'bwd' },
    { key: 'retrieval', header: 'retrieval' },
    { key: 'gather', header: 'gather' },
    { key: 'nativeMath', header: 'softmax+sums' },
    { key: 'rest', header: 'JS rest' },
    { key: 'optimizer', header: 'optimizer' },
    { key: 'optimCheck', header: '(checks)' },
    { key: 'optimNative', header: '(step)' },
    { key: 'optimJs', header: '(JS)' },
    { key: 'merkle', header: 'Merkle*' },
    { key: 'residual', header: 'main-twin*' },
    { key: 'root', header: 'root()' },
    { key: 'refresh', header: 'refresh' },
  ],
  {
    title: '2. Where a step goes (medians over the timed steps, ms)',
    notes: [
      'retrieval = keys.searchBatch (product keys: both sub-key scans and the k x k combination, native).',
      'gather = values/keys gather calls (native copies); softmax+sums = the native hopfieldMix / MixBackward / KeyBackward kernels (worker threads);',
      '  JS rest = forward + backward - retrieval - gather - softmax+sums (input checks, normalisation, id splitting, concatenation).',
      'optimizer = SparseAdam.step: (checks) = native optimCheck (ids in range, finite grads), (step) = native optimStep (coalesce, Adam, write path, Merkle leaves + paths,',
      '  HNSW drift check), (JS) = the rest (argument handling).',
      '* twins after the timed steps replay the last steps\' gradients: Merkle = native optimStep of a committed copy - an uncommitted copy (neither has an index);',
      '  main-twin = (step) of the main tensors during the steps - the committed copy: for hnsw the index\'s share (drift checks, dirty marking, auto-refresh past maxDirty), else ~0 (noise).',
      'dense: fwd / bwd are the native chunked kernels (+ JS input checks and normalisation); its optimizer covers all N rows of keys and values.',
    ],
  },
);

const thrRows = P.log2Ns
  .flatMap((e) =>
    ratioLevels().map((l) => ({
      log2N: e,
      level: l ?? '',
      denseFwd: get(key('dense', l), e)?.breakdown.forwardGflops,
      denseBwd: get(key('dense', l), e)?.breakdown.backwardGflops,
      denseOpt: get(key('dense', l), e)?.breakdown.optimizerMs,
      denseMerkle: get(key('dense', l), e)?.twin.merkleMs,
      tfjsFb: get('tfjs', e)?.breakdown.forwardBackwardGflops,
      tfjsOpt: get('tfjs', e)?.breakdown.optimizerMs,
    })),
  )
  .filter((r) => r.denseFwd !== undefined || r.tfjsFb !== undefined);
table(
  thrRows,
  [
    { key: 'log2N', header: 'N', format: (x) => exp(x) },
    ...(LEVELS.length ? [{ key: 'level', header: 'dense SIMD' }] : []),
    { key: 'denseFwd', header: 'dense fwd GFLOP/s' },
    { key: 'denseBwd', header: 'dense bwd GFLOP/s' },
    { key: 'denseOpt', header: 'dense optimizer ms' },
    { key: 'denseMerkle', header: '(Merkle ms)' },
    { key: 'tfjsFb', header: 'tfjs fwd+bwd GFLOP/s' },
    { key: 'tfjsOpt', header: 'tfjs adam ms' },
  ],
  {
    title: '2b. Dense baselines: arithmetic rate and optimizer',
    notes: [
      'GFLOP/s counts 2 flops per multiply-add: forward 2BN(d + dv), backward 2BN(3d + 2dv) (scores again, dA, dV, dK, dQ); tfjs: both.',
      'dense optimizer = SparseAdam.step over all N rows of keys and values (JS checks + native Adam + Merkle over every leaf); tfjs adam = applyGradients (no commitment).',
    ],
  },
);

const setupRows = [];
for (const v of VARIANTS) {
  for (const e of P.log2Ns) {
    const r = results.runs[v][e];
    if (!r || !r.ok) continue;
    setupRows.push({
      what: v,
      log2N: e,
      dataGenMs: r.setup?.dataGenMs,
      commitMs: r.setup?.commitMs,
      hnswBuildMs: r.setup?.hnswBuildMs,
      recall: r.setup?.recallBefore !== undefined ? `${r.setup.recallBefore} / ${r.setup.recallAfter}` : undefined,
      refreshed: r.breakdown?.refreshed,
      autoRefreshed: r.breakdown?.autoRefreshed,
      dirty: r.breakdown?.dirtyAfterLast,
      steps: r.stepSamplesMs.length,
      warmStepMs: r.warmStepMs,
      rss: r.maxRssMiB,
      loss: `${fmt(r.lossFirst)} -> ${fmt(r.lossLast)}`,
      rootOk: r.rootMatchesFreshRebuild,
      wallSec: r.wallSec,
    });
  }
}
table(
  setupRows,
  [
    { key: 'what', header: 'variant' },
    { key: 'log2N', header: 'N', format: (x) => exp(x) },
    { key: 'commitMs', header: 'commit ms' },
    { key: 'hnswBuildMs', header: 'HNSW build ms' },
    { key: 'recall', header: `recall@${P.k} before/after` },
    { key: 'refreshed', header: 'refreshHnsw/step' },
    { key: 'autoRefreshed', header: 'auto/step' },
    { key: 'dirty', header: 'dirty at end' },
    { key: 'warmStepMs', header: 'warm-up ms' },
    { key: 'steps', header: 'timed steps' },
    { key: 'rss', header: 'peak RSS MiB' },
    { key: 'loss', header: 'loss first -> last' },
    { key: 'rootOk', header: 'root = rebuild' },
    { key: 'wallSec', header: 'wall s' },
  ],
  {
    title: '3. Setup, index state, memory',
    notes: [
      `recall@${P.k}: HNSW (ef ${P.hnsw.ef}) top-${P.k} ids against the exact top-${P.k} for the 256 queries of batch 0, before the first and after the last step.`,
      `refreshHnsw/step: rows re-linked by the step's refreshHnsw(${P.hnsw.refreshBudget}); auto/step: rows re-linked inside the optimizer's write (dirty rows past maxDirty); medians.`,
      'peak RSS: the child process maximum (ru_maxrss) after the timed steps, before the twin tensors (tfjs: includes the wasm heap, which never shrinks).',
      'root = rebuild: values.root() after training equals native().merkleRoot over the current rows (fresh build).',
    ],
  },
);

// ---------------------------------------------------------------- checks

/** Least-squares slope of log(time) against log(N) over the largest `m` measured sizes. */
function growth(v, m = 3) {
  const pts = P.log2Ns.filter((e) => stepOf(v, e) !== undefined).slice(-m);
  if (pts.length < 2) return null;
  const xs = pts.map((e) => e * Math.LN2);
  const ys = pts.map((e) => Math.log(stepOf(v, e)));
  const mx = xs.reduce((a, b) => a + b) / xs.length;
  const my = ys.reduce((a, b) => a + b) / ys.length;
  const slope = xs.reduce((a, x, i) => a + (x - mx) * (ys[i] - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
  return { slope: round(slope, 3), over: pts.map(exp) };
}
const top = P.log2Ns.at(-1);
const checks = {
  growthExponent: Object.fromEntries(VARIANTS.map((v) => [v, growth(v)])),
  growthNote: 'slope of log(step time) vs log(N), least squares over the largest 3 measured sizes: ~0 = flat (log N), 1 = linear in N',
};
const checkedSparse = ratioLevels().flatMap((l) => ['sparse-pk', 'sparse-hnsw'].map((v) => key(v, l)));
for (const v of checkedSparse) {
  const r = ratio(stepOf(key('dense', levelOf(v)), top), stepOf(v, top));
  checks[`denseOver_${v}_at_2^${top}`] = r ?? null;
  checks[`${v} >= 50x faster than dense at 2^${top}`] = r === undefined ? null : r >= 50;
}
{
  // Same data, same math: the first (warm-up) step's loss of dense and tfjs must agree.
  const denseKey = key('dense', ratioLevels().at(-1));
  const agree = P.log2Ns
    .filter((e) => get(denseKey, e) && get('tfjs', e))
    .map((e) => {
      const a = get(denseKey, e).lossFirst, b = get('tfjs', e).lossFirst;
      return { log2N: e, dense: a, tfjs: b, relDiff: round(Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), 1e-3), 3) };
    });
  checks.denseVsTfjsFirstLoss = agree;
  checks.denseVsTfjsAgree = agree.length ? agree.every((x) => x.relDiff < 1e-2) : null;
}
checks.rootsMatchFreshRebuild = Object.values(results.runs).flatMap((v) => Object.values(v)).filter((r) => r.ok && r.rootMatchesFreshRebuild !== undefined).every((r) => r.rootMatchesFreshRebuild);
results.checks = checks;
table(
  [
    ...checkedSparse.map((v) => ({
      check: `${v} >= 50x faster per step than dense${levelOf(v) ? `@${levelOf(v)}` : ''} at N = ${exp(top)}`,
      value: checks[`denseOver_${v}_at_2^${top}`] === null ? 'not measured' : `${fmt(checks[`denseOver_${v}_at_2^${top}`])}x`,
      pass: checks[`${v} >= 50x faster than dense at 2^${top}`] ?? 'n/a',
    })),
    {
      check: 'dense and tfjs agree on the first step\'s loss (rel. diff < 1e-2)',
      value: checks.denseVsTfjsFirstLoss.length ? `max rel. diff ${fmt(Math.max(...checks.denseVsTfjsFirstLoss.map((x) => x.relDiff)))}` : 'n/a',
      pass: checks.denseVsTfjsAgree ?? 'n/a',
    },
    { check: 'every root after training = a fresh rebuild', value: '', pass: checks.rootsMatchFreshRebuild },
    ...VARIANTS.map((v) => ({
      check: `growth exponent ${v}${checks.growthExponent[v] ? ` (${checks.growthExponent[v].over.join(', ')})` : ''}`,
      value: checks.growthExponent[v]?.slope ?? 'n/a',
      pass: '',
    })),
  ],
  [{ key: 'check' }, { key: 'value', header: 'value' }, { key: 'pass', header: 'pass' }],
  { title: '4. Checks', notes: [checks.growthNote, QUICK ? '--quick: N stops at 2^14; the 2^20 check needs the full run.' : ''].filter(Boolean) },
);

// ---------------------------------------------------------------- SVG plot

function svgPlot() {
  const W = 820, H = 500, L = 78, R = 220, T = 48, B = 58;
  const colors = { 'sparse-pk': '#1b9e77', 'sparse-hnsw': '#7570b3', 'sparse-exact': '#e6ab02', dense: '#d95f02', tfjs: '#e7298a' };
  const dashes = (v) => (levelOf(v) && LEVELS.indexOf(levelOf(v)) > 0 ? ` stroke-dasharray="${['', '6 3', '2 3', '8 3 2 3'][LEVELS.indexOf(levelOf(v)) % 4]}"` : '');
  const pts = VARIANTS.map((v) => ({ v, p: P.log2Ns.filter((e) => stepOf(v, e) !== undefined).map((e) => [e, stepOf(v, e)]) }));
  const ys = pts.flatMap((s) => s.p.map((q) => q[1]));
  const yLo = Math.floor(Math.log10(Math.min(...ys)));
  const yHi = Math.ceil(Math.log10(Math.max(...ys)));
  const xLo = P.log2Ns[0], xHi = P.log2Ns.at(-1);
  const X = (e) => L + ((e - xLo) / (xHi - xLo)) * (W - L - R);
  const Y = (ms) => T + ((yHi - Math.log10(ms)) / (yHi - yLo || 1)) * (H - T - B);
  const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');
  const o = [];
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(`<text x="${L}" y="22" font-size="15" font-weight="bold">HopfieldLookup training step vs N (log-log)</text>`);
  o.push(`<text x="${L}" y="38" fill="#555">batch ${P.batch}, d = dv = ${P.dim}, k = ${P.k}; forward + backward + SparseAdam + Merkle root; ${os.cpus()[0]?.model ?? ''}, ${CORES} cores</text>`);
  for (let p = yLo; p <= yHi; p++) {
    const y = Y(10 ** p);
    o.push(`<line x1="${L}" y1="${y}" x2="${W - R}" y2="${y}" stroke="#ddd"/>`);
    const lab = p >= 3 ? `${10 ** (p - 3)} s` : `${10 ** p} ms`;
    o.push(`<text x="${L - 6}" y="${y + 4}" text-anchor="end">${lab}</text>`);
    if (p < yHi) for (let m = 2; m < 10; m++) o.push(`<line x1="${L}" y1="${Y(m * 10 ** p)}" x2="${L + 4}" y2="${Y(m * 10 ** p)}" stroke="#999"/>`);
  }
  for (const e of P.log2Ns) {
    const x = X(e);
    o.push(`<line x1="${x}" y1="${T}" x2="${x}" y2="${H - B}" stroke="#eee"/>`);
    o.push(`<text x="${x}" y="${H - B + 18}" text-anchor="middle">2<tspan dy="-6" font-size="9">${e}</tspan></text>`);
  }
  o.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#333"/>`);
  o.push(`<text x="${(L + W - R) / 2}" y="${H - 14}" text-anchor="middle">N (patterns)</text>`);
  o.push(`<text transform="translate(18 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">median step time</text>`);
  pts.forEach(({ v, p }, i) => {
    if (!p.length) return;
    const c = colors[baseOf(v)];
    o.push(`<polyline fill="none" stroke="${c}" stroke-width="2"${dashes(v)} points="${p.map(([e, ms]) => `${X(e).toFixed(1)},${Y(ms).toFixed(1)}`).join(' ')}"/>`);
    for (const [e, ms] of p) {
      const fill = contended(v, e) ? `fill="white" stroke="${c}" stroke-width="2"` : `fill="${c}"`;
      o.push(`<circle cx="${X(e).toFixed(1)}" cy="${Y(ms).toFixed(1)}" r="3.5" ${fill}><title>${esc(v)} 2^${e}: ${fmt(ms)} ms${contended(v, e) ? ' (machine shared with another process)' : ''}</title></circle>`);
    }
    const ly = T + 14 + i * 20;
    o.push(`<line x1="${W - R + 14}" y1="${ly - 4}" x2="${W - R + 38}" y2="${ly - 4}" stroke="${c}" stroke-width="2"${dashes(v)}/>`);
    o.push(`<circle cx="${W - R + 26}" cy="${ly - 4}" r="3.5" fill="${c}"/>`);
    const g = checks.growthExponent[v];
    o.push(`<text x="${W - R + 44}" y="${ly}">${esc(v)}${g ? ` (slope ${g.slope})` : ''}</text>`);
  });
  o.push(`<text x="${W - R + 14}" y="${T + 14 + VARIANTS.length * 20 + 6}" fill="#555" font-size="10">slope: log-log fit over</text>`);
  o.push(`<text x="${W - R + 14}" y="${T + 14 + VARIANTS.length * 20 + 19}" fill="#555" font-size="10">the largest 3 sizes</text>`);
  if (VARIANTS.some((v) => P.log2Ns.some((e) => stepOf(v, e) !== undefined && contended(v, e)))) {
    o.push(`<circle cx="${W - R + 18}" cy="${T + 14 + VARIANTS.length * 20 + 36}" r="3.5" fill="white" stroke="#555" stroke-width="2"/>`);
    o.push(`<text x="${W - R + 26}" y="${T + 14 + VARIANTS.length * 20 + 40}" fill="#555" font-size="10">another process shared the CPU</text>`);
  }
  let line = 0;
  for (const v of VARIANTS) {
    const miss = P.log2Ns.filter((e) => stepOf(v, e) === undefined);
    if (miss.length) o.push(`<text x="${W - R + 14}" y="${T + 14 + VARIANTS.length * 20 + 62 + 14 * line++}" fill="#555" font-size="10">${esc(v)}: not measured at ${miss.map(exp).join(', ')}</text>`);
  }
  o.push('</svg>');
  return o.join('\n') + '\n';
}
const svgFile = join(RESULTS_DIR, `${NAME}-step.svg`);
writeFileSync(svgFile, svgPlot());

// ---------------------------------------------------------------- output

if (!REPLOT) {
  results.loadavgEnd = os.loadavg().map((x) => round(x, 3));
  results.otherLoadAtEnd = otherLoad();
  results.elapsedSec = round((nowMs() - t0All) / 1e3);
}
const outFile = writeResults(NAME, results); // --quick writes it too (parameters.quick says which)
rmSync(tmp, { recursive: true, force: true });
log(`${REPLOT ? 'replotted' : `done in ${results.elapsedSec} s`}; wrote ${outFile} and ${svgFile}`);
