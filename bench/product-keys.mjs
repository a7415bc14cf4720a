#!/usr/bin/env node
/**
 * Product-key retrieval benchmark (ProductKeyIndex, Lample et al. 2019).
 *
 *   node --expose-gc bench/product-keys.mjs           full run: N = 2^16 .. 2^22 (~2 min on 2 cores, ~1.2 GiB peak RSS)
 *   node --expose-gc bench/product-keys.mjs --quick   N = 2^16, 2^18 (~10 s)
 *   --dense-build-limit=SECONDS                       skip the dense search at a size whose key table took longer
 *                                                     than this to build (default 60)
 *   --name=NAME                                       write bench/results/NAME.json (a run per GHOST_TENSOR_SIMD level)
 *
 * For each N = n^2 (n = 256, 512, 1024, 2048 sub-keys per table), d = 64 (two sub-key
 * tables of d/2 = 32, ProductKeyIndex.random(n, 64, rng): uniform in [-1, 1)), k = 32,
 * queries uniform in [-1, 1)^64:
 *   1. Throughput:
 *        pk 1q      index.search(q, 32), one query per call (JS thread; two exact table scans
 *                   of n x 32 and the k x k combine in JS)
 *        pk batch   await index.searchBatch(Q, 32) over 1,000 queries (table scans on worker
 *                   threads, all cores; the combine on the JS thread)
 *      against a dense exact search over the explicit N x 64 key table (row i*n + j =
 *      concat(keys1[i], keys2[j]); SparseTensor.fromArray(table, 64, {adopt: true}),
 *      metric ip) in the same run:
 *        dense 1q     t.search(q, 32)
 *        dense batch  await t.searchBatch(Q, 32) over 128 queries (all cores)
 *      The table build (gather both tables, write the N rows, fromArray) is timed; the dense
 *      search is skipped at a size whose build took longer than the limit. Ratios pk / dense.
 *   2. Exactness on a sample of queries, against brute force over all n^2 composite keys:
 *        (a) the test's brute force: sub-scores s1, s2 from a full ranking of each table
 *            (keys.search(q_half, n): the same f32 kernel), every slot scored s1[i] + s2[j]
 *            in f64, top-k with ties to the lower slot id; ids AND scores compared exactly
 *            (===), for both search() and searchBatch(); mismatches must be 0.
 *        (b) an independent f64 brute force: sub-scores as float64 dot products computed in
 *            JS (no library kernel); ids compared, a difference counted as a near-tie when
 *            every differing slot scores within 1e-5 (relative) of the k-th score.
 *      and the agreement of the dense top-32 with the product-key top-32 (same ids; the
 *      dense scores are one f32 dot of 64, so order can differ at near-ties).
 *
 * Tables go to stdout, progress to stderr; results to bench/results/product-keys.json
 * (--quick writes it too; parameters.quick says which).
 */
import os from 'node:os';
import { join } from 'node:path';

import {
  CORES,
  cpuHogs,
  otherProcesses,
  ROOT,
  fmt,
  fmtBytes,
  fmtCount,
  logger,
  machine,
  nowMs,
  rng,
  resultName,
  round,
  sampleFor,
  stats,
  table,
  tryGc,
  writeResults,
} from './lib/common.mjs';

const RESULT_NAME = resultName('product-keys'); // --name=NAME writes bench/results/NAME.json

const { SparseTensor, ProductKeyIndex, combineProductKeys, simdInfo } = await import(join(ROOT, 'dist/index.js'));

// ---------------------------------------------------------------- parameters

const QUICK = process.argv.includes('--quick');
function numArg(name) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  if (!a) return undefined;
  const v = Number(a.slice(name.length + 3));
  if (!(v > 0)) throw new Error(`--${name} must be a positive number, got ${a}`);
  return v;
}

const P = {
  log2N: QUICK ? [16, 18] : [16, 18, 20, 22],
  d: 64,
  k: 32,
  singleQueries: 200, // queries per timed round of pk 1q
  batchQueries: 1000, // queries per pk searchBatch call
  denseBatchQueries: 128, // queries per dense searchBatch call (the exact batch scores 32 queries per pass over the rows)
  exactnessQueries: QUICK ? 30 : 100,
  nearTieRel: 1e-5,
  budgetMs: QUICK ? 300 : 1500, // timed calls per mode continue until this much time was spent
  denseBudgetMs: QUICK ? 600 : 4000,
  denseBuildLimitSec: numArg('dense-build-limit') ?? 60,
  seeds: { keys: 0x6b657973, queries: 0x71756572 },
  threads: CORES,
};

const log = logger('product-keys');
const simd = simdInfo();
const results = {
  name: RESULT_NAME,
  date: new Date().toISOString(),
  command: ['node bench/product-keys.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd }),
  otherProcessesAtStart: otherProcesses(),
  cpuHogsAtStart: cpuHogs(),
  parameters: {
    quick: QUICK,
    ...P,
    index: 'ProductKeyIndex.random(n, 64, rng) (sub-keys uniform in [-1, 1)); search / searchBatch, k = 32',
    dense: 'SparseTensor.fromArray(N x 64 concatenated keys, 64, {adopt: true, metric: ip}); search / searchBatch exact',
    units: { qps: 'queries per second (median call)', sec: 'seconds', ratio: 'product keys / dense throughput' },
  },
  sizes: [],
  notes: [],
};
const checks = [];
const t0All = nowMs();
log(`${QUICK ? 'quick' : 'full'} run: N = ${P.log2N.map((l) => `2^${l}`).join(', ')}, d ${P.d}, k ${P.k}, cores ${CORES}, simd ${simd.level}`);

// ---------------------------------------------------------------- brute force

/**
 * Both brute forces over all n^2 slots in one pass: (a) kernel sub-scores summed in f64
 * and (b) float64 sub-scores computed here. Top-k kept in sorted buffers, best first,
 * ties to the lower slot id (slots are visited in increasing id order, so an equal
 * score never displaces an earlier slot).
 */
function bruteForce(index, K1, K2, q, k) {
  const n = index.subKeys;
  const d1 = index.keys1.dim;
  const d2 = index.keys2.dim;
  const s1 = new Float64Array(n);
  const s2 = new Float64Array(n);
  const r1 = index.keys1.search(q.subarray(0, d1), n, { metric: 'ip' });
  const r2 = index.keys2.search(q.subarray(d1), n, { metric: 'ip' });
  for (let t = 0; t < n; t++) {
    s1[r1.ids[t]] = r1.scores[t];
    s2[r2.ids[t]] = r2.scores[t];
  }
  const f1 = new Float64Array(n);
  const f2 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let a = 0;
    for (let t = 0; t < d1; t++) a += q[t] * K1[i * d1 + t];
    f1[i] = a;
    let b = 0;
    for (let t = 0; t < d2; t++) b += q[d1 + t] * K2[i * d2 + t];
    f2[i] = b;
  }
  const topA = topK(n, k, s1, s2);
  const topB = topK(n, k, f1, f2);
  return { kernel: topA, f64: topB, f1, f2 };
}

function topK(n, k, s1, s2) {
  const ids = new Float64Array(k).fill(-1);
  const sc = new Float64Array(k).fill(-Infinity);
  let worst = -Infinity;
  let filled = 0;
  for (let i = 0; i < n; i++) {
    const a = s1[i];
    const base = i * n;
    for (let j = 0; j < n; j++) {
      const s = a + s2[j];
      if (filled === k && !(s > worst)) continue;
      // insert after every entry with a score >= s
      let p = filled === k ? k - 1 : filled;
      while (p > 0 && sc[p - 1] < s) {
        sc[p] = sc[p - 1];
        ids[p] = ids[p - 1];
        p--;
      }
      sc[p] = s;
      ids[p] = base + j;
      if (filled < k) filled++;
      worst = sc[k - 1];
    }
  }
  return { ids: Uint32Array.from(ids), scores: sc };
}

function sameArrays(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// ---------------------------------------------------------------- one size

async function runSize(log2N) {
  const N = 2 ** log2N;
  const n = Math.round(Math.sqrt(N));
  const { d, k } = P;
  const out = { log2N, N, n, d, subKeyDim: d / 2, k, otherProcesses: otherProcesses(), cpuHogs: cpuHogs(), loadavg: os.loadavg().map((x) => round(x, 3)) };
  log(`N = 2^${log2N} = ${fmt(N)} slots (n = ${n} sub-keys per table, ${d / 2} dims each)`);

  const index = ProductKeyIndex.random(n, d, rng(P.seeds.keys + log2N));
  if (index.size !== N || index.dim !== d || index.keys1.dim !== d / 2) throw new Error('unexpected index shape');
  const all = Uint32Array.from({ length: n }, (_, i) => i);
  const K1 = index.keys1.gather(all);
  const K2 = index.keys2.gather(all);
  const rq = rng(P.seeds.queries + log2N);
  const nq = Math.max(P.batchQueries, P.singleQueries, P.exactnessQueries, P.denseBatchQueries);
  const Q = new Float32Array(nq * d);
  for (let i = 0; i < Q.length; i++) Q[i] = rq() * 2 - 1;
  const qv = (i) => Q.subarray(i * d, (i + 1) * d);

  // --- product keys: single query
  let qi = 0;
  const single = await sampleFor(
    () => {
      for (let r = 0; r < P.singleQueries; r++) index.search(qv(qi++ % P.singleQueries), k);
    },
    { budgetMs: P.budgetMs, minReps: 3, warm: 1 },
  );
  const pk1 = (P.singleQueries / stats(single).median) * 1e3;
  // --- product keys: batch
  const QB = Q.subarray(0, P.batchQueries * d);
  const batch = await sampleFor(() => index.searchBatch(QB, k), { budgetMs: P.budgetMs, minReps: 3, warm: 1 });
  const pkB = (P.batchQueries / stats(batch).median) * 1e3;
  // --- where the single-query time goes: the two table scans vs the k x k combine (JS)
  const kk = Math.min(k, n);
  const subs = [];
  for (let r = 0; r < P.singleQueries; r++) {
    const q = qv(r);
    subs.push([index.keys1.search(q.subarray(0, d / 2), kk, { metric: 'ip' }), index.keys2.search(q.subarray(d / 2), kk, { metric: 'ip' })]);
  }
  const tablesMs = await sampleFor(
    () => {
      for (let r = 0; r < P.singleQueries; r++) {
        const q = qv(r);
        index.keys1.search(q.subarray(0, d / 2), kk, { metric: 'ip' });
        index.keys2.search(q.subarray(d / 2), kk, { metric: 'ip' });
      }
    },
    { budgetMs: P.budgetMs / 2, minReps: 3, warm: 1 },
  );
  const combineMs = await sampleFor(
    () => {
      for (const [a, b] of subs) combineProductKeys(n, k, a.ids, a.scores, b.ids, b.scores);
    },
    { budgetMs: P.budgetMs / 2, minReps: 3, warm: 1 },
  );
  out.pk = {
    usPerQueryTables: round((stats(tablesMs).median / P.singleQueries) * 1e3),
    usPerQueryCombine: round((stats(combineMs).median / P.singleQueries) * 1e3),
    qps1q: round(pk1),
    qpsBatch: round(pkB),
    usPerQuery1q: round(1e3 / pk1 * 1e3),
    rounds1q: single.length,
    roundsBatch: batch.length,
    batchQueries: P.batchQueries,
  };
  log(
    `  pk: 1q ${fmt(pk1)} q/s (${fmt(out.pk.usPerQuery1q)} us: table scans ${fmt(out.pk.usPerQueryTables)} us + combine ${fmt(out.pk.usPerQueryCombine)} us), batch ${fmt(pkB)} q/s`,
  );

  // --- exactness
  const E = P.exactnessQueries;
  const eb = await index.searchBatch(Q.subarray(0, E * d), k);
  const ex = {
    queries: E,
    singleIdMismatches: 0,
    singleScoreMismatches: 0,
    batchIdMismatches: 0,
    batchScoreMismatches: 0,
    f64SameIds: 0,
    f64NearTieOnly: 0,
    f64Other: 0,
    maxAbsScoreDiffVsF64: 0,
  };
  const pkIdsSample = [];
  const tBf = nowMs();
  for (let i = 0; i < E; i++) {
    const q = qv(i);
    const r = index.search(q, k);
    pkIdsSample.push(r.ids);
    const bf = bruteForce(index, K1, K2, q, k);
    if (!sameArrays(r.ids, bf.kernel.ids)) ex.singleIdMismatches++;
    if (!sameArrays(r.scores, bf.kernel.scores)) ex.singleScoreMismatches++;
    const bIds = eb.ids.subarray(i * k, (i + 1) * k);
    const bSc = eb.scores.subarray(i * k, (i + 1) * k);
    if (!sameArrays(bIds, bf.kernel.ids)) ex.batchIdMismatches++;
    if (!sameArrays(bSc, bf.kernel.scores)) ex.batchScoreMismatches++;
    // (b) the independent f64 brute force
    const f64Score = (id) => bf.f1[Math.floor(id / n)] + bf.f2[id % n];
    for (let t = 0; t < k; t++) ex.maxAbsScoreDiffVsF64 = Math.max(ex.maxAbsScoreDiffVsF64, Math.abs(r.scores[t] - f64Score(r.ids[t])));
    const fIds = bf.f64.ids;
    const mine = new Set(r.ids);
    const theirs = new Set(fIds);
    const differ = [...r.ids.filter((x) => !theirs.has(x)), ...fIds.filter((x) => !mine.has(x))];
    if (differ.length === 0) ex.f64SameIds++;
    else {
      const kth = bf.f64.scores[k - 1];
      const tol = P.nearTieRel * Math.max(1, Math.abs(kth));
      if (differ.every((id) => Math.abs(f64Score(id) - kth) <= tol)) ex.f64NearTieOnly++;
      else ex.f64Other++;
    }
  }
  ex.maxAbsScoreDiffVsF64 = round(ex.maxAbsScoreDiffVsF64, 3);
  ex.bruteForceSec = round((nowMs() - tBf) / 1e3);
  out.exactness = ex;
  const mism = ex.singleIdMismatches + ex.singleScoreMismatches + ex.batchIdMismatches + ex.batchScoreMismatches;
  checks.push({ check: `2^${log2N}: search and searchBatch equal the n^2 brute force exactly (ids and scores), ${E} queries`, ok: mism === 0, detail: mism ? JSON.stringify(ex) : undefined });
  checks.push({ check: `2^${log2N}: ids equal the float64 brute force (up to near-ties)`, ok: ex.f64Other === 0, detail: `${ex.f64SameIds} identical, ${ex.f64NearTieOnly} near-tie only, ${ex.f64Other} other` });
  log(`  exactness: ${mism} mismatches over ${E} queries (single + batch, ids + scores); f64: ${ex.f64SameIds} same, ${ex.f64NearTieOnly} near-tie, ${ex.f64Other} other (${fmt(ex.bruteForceSec)} s)`);

  // --- dense
  const bytes = N * d * 4;
  out.dense = { tableBytes: bytes };
  log(`  dense table ${fmtBytes(bytes)}: building ...`);
  let t1 = nowMs();
  const h = d / 2;
  const tableData = new Float32Array(N * d);
  for (let i = 0; i < n; i++) {
    const a = K1.subarray(i * h, (i + 1) * h);
    for (let j = 0; j < n; j++) {
      const off = (i * n + j) * d;
      tableData.set(a, off);
      tableData.set(K2.subarray(j * h, (j + 1) * h), off + h);
    }
  }
  let dense = SparseTensor.fromArray(tableData, d, { adopt: true, metric: 'ip' });
  const buildSec = (nowMs() - t1) / 1e3;
  out.dense.buildSec = round(buildSec);
  out.dense.rssMiB = round(process.memoryUsage().rss / 2 ** 20, 4);
  log(`  built in ${fmt(buildSec)} s (rss ${fmt(out.dense.rssMiB)} MiB)`);
  if (buildSec > P.denseBuildLimitSec) {
    out.dense.skipped = `the table build took ${round(buildSec)} s > ${P.denseBuildLimitSec} s`;
    results.notes.push(`2^${log2N}: dense search skipped: ${out.dense.skipped}`);
    log(`  dense skipped: ${out.dense.skipped}`);
  } else {
    // one query per call; rounds of one query (a different one each call)
    let di = 0;
    const d1 = await sampleFor(() => dense.search(qv(di++ % nq), k), { budgetMs: P.denseBudgetMs, minReps: 5, warm: 1, keepSlowWarm: 2000 });
    const QD = Q.subarray(0, P.denseBatchQueries * d);
    const dB = await sampleFor(() => dense.searchBatch(QD, k), { budgetMs: P.denseBudgetMs, minReps: 3, warm: 1, keepSlowWarm: 2000 });
    const dense1 = 1e3 / stats(d1).median;
    const denseB = (P.denseBatchQueries / stats(dB).median) * 1e3;
    // agreement with the product keys (sample queries)
    let sameSets = 0;
    let sameOrder = 0;
    for (let i = 0; i < E; i++) {
      const r = dense.search(qv(i), k);
      if (sameArrays(r.ids, pkIdsSample[i])) sameOrder++;
      const s = new Set(pkIdsSample[i]);
      if (r.ids.every((x) => s.has(x))) sameSets++;
    }
    Object.assign(out.dense, {
      qps1q: round(dense1),
      qpsBatch: round(denseB),
      batchQueries: P.denseBatchQueries,
      reps1q: d1.length,
      repsBatch: dB.length,
      scanGBps1q: round((bytes / (stats(d1).median / 1e3)) / 1e9),
      sameTopKSetAsPk: sameSets,
      sameTopKOrderAsPk: sameOrder,
      agreementQueries: E,
    });
    out.ratio1q = round(pk1 / dense1);
    out.ratioBatch = round(pkB / denseB);
    log(`  dense: 1q ${fmt(dense1)} q/s, batch ${fmt(denseB)} q/s; pk / dense: ${fmt(out.ratio1q)} (1q), ${fmt(out.ratioBatch)} (batch); same top-${k} set ${sameSets}/${E}`);
    if (sameSets < E) checks.push({ check: `2^${log2N}: dense top-${k} set equals the product-key top-${k}`, ok: false, detail: `${sameSets}/${E} (near-ties between f32 64-d dots and f64 sums of two 32-d f32 dots?)` });
  }
  dense = null;
  tryGc();
  return out;
}

// warm-up (JIT, worker threads) on a small index, so the first size is not penalised
{
  const w = ProductKeyIndex.random(256, P.d, rng(1));
  const r = rng(2);
  const Q = new Float32Array(1000 * P.d).map(() => r() * 2 - 1);
  for (let rep = 0; rep < 3; rep++) {
    for (let i = 0; i < 1000; i++) w.search(Q.subarray(i * P.d, (i + 1) * P.d), P.k);
    await w.searchBatch(Q, P.k);
  }
  const t = SparseTensor.fromArray(new Float32Array(4096 * P.d).map(() => r()), P.d);
  for (let i = 0; i < 200; i++) t.search(Q.subarray(0, P.d), P.k);
  await t.searchBatch(Q.subarray(0, 128 * P.d), P.k);
}

for (const l of P.log2N) {
  results.sizes.push(await runSize(l));
  writeResults(RESULT_NAME, { ...results, partial: true, checks });
  tryGc();
}

// ---------------------------------------------------------------- tables

table(
  results.sizes.map((r) => ({
    N: `2^${r.log2N}`,
    n: r.n,
    pk1: r.pk.qps1q,
    us1: r.pk.usPerQuery1q,
    usT: r.pk.usPerQueryTables,
    usC: r.pk.usPerQueryCombine,
    pkB: r.pk.qpsBatch,
    build: r.dense.buildSec,
    d1: r.dense.qps1q ?? 'skipped',
    dB: r.dense.qpsBatch ?? 'skipped',
    gbps: r.dense.scanGBps1q,
    r1: r.ratio1q,
    rB: r.ratioBatch,
  })),
  [
    { key: 'N', header: 'N = n^2' },
    { key: 'n', header: 'n' },
    { key: 'pk1', header: 'pk 1q q/s' },
    { key: 'us1', header: 'us/q' },
    { key: 'usT', header: '(scans us' },
    { key: 'usC', header: '+ combine us)' },
    { key: 'pkB', header: `pk batch q/s` },
    { key: 'build', header: 'dense table build s' },
    { key: 'd1', header: 'dense 1q q/s' },
    { key: 'dB', header: `dense batch q/s` },
    { key: 'gbps', header: 'dense 1q GB/s' },
    { key: 'r1', header: 'pk/dense 1q' },
    { key: 'rB', header: 'pk/dense batch' },
  ],
  {
    title: `1. Top-${P.k} queries/s: product keys vs dense exact search over the N x ${P.d} key table`,
    notes: [
      `pk 1q: index.search per query (JS thread); pk batch: await index.searchBatch of ${P.batchQueries} queries (${CORES} threads).`,
      `dense: SparseTensor over the N x ${P.d} concatenated keys (f32), exact ip; batch = ${P.denseBatchQueries} queries per searchBatch (${CORES} threads).`,
      'dense 1q GB/s = key-table bytes scanned per second by one query. q/s from the median call.',
      '(scans + combine): pk 1q time split, timed separately: the two exact table scans (keys.search, k each) and combineProductKeys (JS).',
      ...results.notes,
    ],
  },
);

table(
  results.sizes.map((r) => ({
    N: `2^${r.log2N}`,
    q: r.exactness.queries,
    si: r.exactness.singleIdMismatches,
    ss: r.exactness.singleScoreMismatches,
    bi: r.exactness.batchIdMismatches,
    bs: r.exactness.batchScoreMismatches,
    fs: r.exactness.f64SameIds,
    ft: r.exactness.f64NearTieOnly,
    fo: r.exactness.f64Other,
    md: r.exactness.maxAbsScoreDiffVsF64,
    agree: r.dense.sameTopKSetAsPk === undefined ? '-' : `${r.dense.sameTopKSetAsPk}/${r.dense.agreementQueries}`,
  })),
  [
    { key: 'N', header: 'N' },
    { key: 'q', header: 'queries' },
    { key: 'si', header: '1q id mism.' },
    { key: 'ss', header: '1q score mism.' },
    { key: 'bi', header: 'batch id mism.' },
    { key: 'bs', header: 'batch score mism.' },
    { key: 'fs', header: 'f64 BF same ids' },
    { key: 'ft', header: 'near-tie only' },
    { key: 'fo', header: 'other' },
    { key: 'md', header: 'max |score - f64|' },
    { key: 'agree', header: 'dense same top-k set' },
  ],
  {
    title: `2. Exactness against brute force over all n^2 composite keys (k = ${P.k})`,
    notes: [
      'mism. = queries whose ids (or f64 scores) differ from the brute force that uses the kernel\'s f32 sub-scores (s1[i] + s2[j] in f64,',
      'ties to the lower slot id); compared with ===. f64 BF: sub-scores as float64 dot products computed in JS.',
    ],
  },
);

const loads = [results.machine.loadavg[0], ...results.sizes.map((r) => r.loadavg[0]), os.loadavg()[0]];
if (Math.max(...loads) > 0.75 * CORES)
  results.notes.push(
    `run under other load: 1-min load average up to ${round(Math.max(...loads), 3)} on ${CORES} cores (see otherProcesses / cpuHogs per size); ` +
      'absolute q/s are low, the product-key / dense ratios are what to read',
  );
results.checks = checks;
results.loadavgEnd = os.loadavg().map((x) => round(x, 3));
results.otherProcessesAtEnd = otherProcesses();
results.cpuHogsAtEnd = cpuHogs();
results.elapsedSec = round((nowMs() - t0All) / 1e3);
console.log(`\n## Checks\n`);
console.log(checks.map((c) => `  - [${c.ok ? 'ok' : 'FAILED'}] ${c.check}${c.detail ? `: ${c.detail}` : ''}`).join('\n'));
console.log(`\n  elapsed ${fmt(results.elapsedSec)} s`);
const file = writeResults(RESULT_NAME, results);
log(`done in ${results.elapsedSec} s; wrote ${file}`);
if (checks.some((c) => !c.ok && /exactly/.test(c.check))) process.exitCode = 1;
