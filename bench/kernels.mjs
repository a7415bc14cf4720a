#!/usr/bin/env node
/**
 * Kernel and exact top-k benchmark.
 *
 *   node bench/kernels.mjs            full run (~5 min on 2 cores; needs ~8 GB of RAM)
 *   node bench/kernels.mjs --quick    smaller sizes, under a minute
 *   --hnsw-limit=SECONDS              skip hnswlib-node at a size whose projected load
 *                                     time exceeds this (default 120)
 *   --name=NAME                       write bench/results/NAME.json instead of kernels.json:
 *                                     section 2 runs at the process's level, so the top-k
 *                                     figures per SIMD level are one run per level, e.g.
 *                                     GHOST_TENSOR_SIMD=avx2 node bench/kernels.mjs --name=kernels-avx2
 *
 * Sections:
 *   1. Dot-product throughput per supported SIMD level: one query against nr rows,
 *      native().kernelBlock('dot', level, q, R, d, repeat) (the repeat loop runs in
 *      native code), in GB/s of row bytes read, at d = 64 and 784, for R resident in
 *      cache (~256 KiB) and in memory (512 MiB; 64 MiB with --quick). Beside it the
 *      plain read of the same bytes, kernelPair('sum', best level, R) called in a loop:
 *      the bandwidth limit; and the ratio dot / read. Repetitions are interleaved
 *      (level after level, then the read) and the best and the median are reported.
 *   2. Exact top-k (k = 10, metric ip) queries/s on uniform random data, N = 1e4, 1e5,
 *      1e6 (1e4, 1e5 with --quick) at d = 64 and 784:
 *        ours  t.search(q, k)                        one query per call, one thread
 *        ours  await t.searchBatch(Q, k, {threads})  a batch of queries, all cores / 1 thread
 *        hnswlib-node BruteforceSearch('ip').searchKnn(q, k)  one query per call
 *      on the same rows and queries in the same process, the ratio ours / hnswlib for
 *      one query per call, and whether both return the same top-1 (and top-10) ids.
 *      hnswlib-node takes number[] points one addPoint() call at a time; loading is
 *      timed, and a size whose projected load time exceeds a limit is skipped.
 *
 * Tables go to stdout, progress to stderr; results to bench/results/kernels.json
 * (--quick writes it too; parameters.quick says which). GB/s are decimal (1e9 B/s).
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import { join } from 'node:path';

import {
  CORES,
  ROOT,
  fmt,
  fmtBytes,
  fmtCount,
  logger,
  machine,
  nowMs,
  randomFloats,
  resultName,
  rng,
  round,
  sampleFor,
  stats,
  table,
  tryGc,
  writeResults,
} from './lib/common.mjs';

const RESULT_NAME = resultName('kernels'); // --name=NAME writes bench/results/NAME.json

const require = createRequire(join(ROOT, 'package.json'));
const { SparseTensor, simdInfo } = await import(join(ROOT, 'dist/index.js'));
const { native } = await import(join(ROOT, 'dist/internal.js'));
const { BruteforceSearch } = require('hnswlib-node');
const hnswlibVersion = require('hnswlib-node/package.json').version;

// ---------------------------------------------------------------- parameters

const QUICK = process.argv.includes('--quick');
const limitArg = process.argv.find((a) => a.startsWith('--hnsw-limit='));
const HNSW_LIMIT_SEC = limitArg ? Number(limitArg.slice('--hnsw-limit='.length)) : 120;
if (!(HNSW_LIMIT_SEC > 0)) throw new Error(`--hnsw-limit must be a positive number of seconds, got ${limitArg}`);
const P = QUICK
  ? {
      dims: [64, 784],
      cacheBytes: 256 * 1024,
      memoryBytes: 64 * 2 ** 20,
      kernelReps: 3,
      kernelCallMs: 30,
      ns: [1e4, 1e5],
      k: 10,
      batch: 64,
      queryPool: 128,
      singleBudgetMs: 200,
      singleMinReps: 5,
      batchBudgetMs: 200,
      batchMinReps: 2,
      agreeQueries: 5,
      hnswLoadLimitSec: HNSW_LIMIT_SEC,
      seed: 0x6b65726e,
    }
  : {
      dims: [64, 784],
      cacheBytes: 256 * 1024,
      memoryBytes: 512 * 2 ** 20,
      kernelReps: 7,
      kernelCallMs: 100,
      ns: [1e4, 1e5, 1e6],
      k: 10,
      batch: 64,
      queryPool: 256,
      singleBudgetMs: 1000,
      singleMinReps: 10,
      batchBudgetMs: 1000,
      batchMinReps: 2,
      agreeQueries: 10,
      hnswLoadLimitSec: HNSW_LIMIT_SEC,
      seed: 0x6b65726e,
    };

const log = logger('kernels');
const nat = native();
const simd = simdInfo();
const LEVELS = simd.supported; // only levels this CPU can run
const BEST = simd.level; // default (best supported unless GHOST_TENSOR_SIMD says otherwise)
const METRIC = 'ip';

const results = {
  name: RESULT_NAME,
  date: new Date().toISOString(),
  command: ['node bench/kernels.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd }),
  parameters: {
    quick: QUICK,
    ...P,
    levels: LEVELS,
    readLevel: BEST,
    metric: METRIC,
    threadsAll: CORES,
    hnswlibNode: hnswlibVersion,
    data: 'uniform random in [-1, 1), f32; queries drawn the same way, independently of the rows',
    units: {
      gbps: 'decimal GB/s (1e9 bytes/s) of row bytes read (nr * d * 4 per pass)',
      qps: 'queries per second',
      ms: 'milliseconds',
      ratio: 'dot / read: fraction of the plain-read bandwidth the dot kernel reaches; ours / hnswlib: throughput ratio',
    },
  },
};
const checks = [];
const t0All = nowMs();
log(`${QUICK ? 'quick' : 'full'} run: levels ${LEVELS.join(', ')}, cores ${CORES}, node ${process.version}`);

// ---------------------------------------------------------------- 1. kernel throughput

/** ms of one synchronous call of fn (second of two calls, so the first warms). */
function timeOnce(fn) {
  fn();
  const t = nowMs();
  fn();
  return nowMs() - t;
}

function kernelSection() {
  log(`1. dot throughput: generating ${fmtBytes(P.memoryBytes)} of rows ...`);
  const rand = rng(P.seed);
  const memory = randomFloats(rand, P.memoryBytes / 4);
  const cache = randomFloats(rand, P.cacheBytes / 4);
  const out = [];
  for (const resident of ['cache', 'memory']) {
    for (const d of P.dims) {
      const src = resident === 'cache' ? cache : memory;
      const nr = Math.floor(src.length / d);
      const R = src.subarray(0, nr * d);
      const q = randomFloats(rand, d);
      const bytes = R.byteLength;

      // Correctness spot check: every level against a float64 dot for a few rows.
      for (const level of LEVELS) {
        const s = nat.kernelBlock('dot', level, q, R.subarray(0, Math.min(nr, 8) * d), d, 1);
        for (let j = 0; j < s.length; j++) {
          let ref = 0;
          for (let t = 0; t < d; t++) ref += q[t] * R[j * d + t];
          if (Math.abs(s[j] - ref) > 1e-4 * d) throw new Error(`kernelBlock dot ${level} d=${d} row ${j}: ${s[j]} vs ${ref}`);
        }
      }

      // Calibrate: repeat counts so one timed call takes about kernelCallMs.
      const repeat = {};
      for (const level of LEVELS) {
        const ms = timeOnce(() => nat.kernelBlock('dot', level, q, R, d, 1));
        repeat[level] = Math.max(1, Math.round(P.kernelCallMs / Math.max(ms, 1e-3)));
      }
      const readMs = timeOnce(() => nat.kernelPair('sum', BEST, R));
      const readRepeat = Math.max(1, Math.round(P.kernelCallMs / Math.max(readMs, 1e-3)));

      log(
        `   ${resident} d=${d}: ${nr} rows (${fmtBytes(bytes)}), repeat ` +
          LEVELS.map((l) => `${l} ${repeat[l]}`).join(', ') +
          `, read ${readRepeat} ...`,
      );
      const dotGbps = Object.fromEntries(LEVELS.map((l) => [l, []]));
      const readGbps = [];
      let sink = 0;
      for (let rep = 0; rep < P.kernelReps; rep++) {
        for (const level of LEVELS) {
          const t = nowMs();
          const s = nat.kernelBlock('dot', level, q, R, d, repeat[level]);
          const ms = nowMs() - t;
          sink += s[0];
          dotGbps[level].push((bytes * repeat[level]) / ms / 1e6);
        }
        const t = nowMs();
        for (let i = 0; i < readRepeat; i++) sink += nat.kernelPair('sum', BEST, R);
        readGbps.push((bytes * readRepeat) / (nowMs() - t) / 1e6);
      }
      if (!Number.isFinite(sink)) throw new Error('non-finite kernel output');
      const read = stats(readGbps);
      for (const level of LEVELS) {
        const dot = stats(dotGbps[level]);
        out.push({
          resident,
          d,
          level,
          rows: nr,
          bytes,
          repeat: repeat[level],
          readRepeat,
          dotBestGBps: round(dot.max),
          dotMedianGBps: round(dot.median),
          readBestGBps: round(read.max),
          readMedianGBps: round(read.median),
          ratioBest: round(dot.max / read.max),
          ratioMedian: round(dot.median / read.median),
          dotSamplesGBps: dotGbps[level].map((x) => round(x)),
          readSamplesGBps: readGbps.map((x) => round(x)),
        });
      }
    }
  }
  return out;
}

results.dotThroughput = kernelSection();
tryGc();

for (const r of results.dotThroughput) {
  if (r.dotBestGBps > 1.15 * r.readBestGBps)
    checks.push(`dot ${r.level} d=${r.d} ${r.resident}: ${r.dotBestGBps} GB/s exceeds the plain read ${r.readBestGBps} GB/s by > 15%`);
  if (r.level !== 'scalar' && r.ratioBest < 0.5)
    checks.push(`dot ${r.level} d=${r.d} ${r.resident}: only ${Math.round(r.ratioBest * 100)}% of the plain-read bandwidth`);
}
for (const resident of ['cache', 'memory'])
  for (const d of P.dims) {
    const rows = results.dotThroughput.filter((r) => r.resident === resident && r.d === d);
    const scalar = rows.find((r) => r.level === 'scalar');
    for (const r of rows)
      if (scalar && r.level !== 'scalar' && r.dotBestGBps < 1.05 * scalar.dotBestGBps)
        checks.push(`dot ${r.level} d=${d} ${resident}: ${r.dotBestGBps} GB/s, not faster than scalar (${scalar.dotBestGBps})`);
  }

table(
  results.dotThroughput,
  [
    { key: 'resident', header: 'R in' },
    { key: 'd', header: 'd' },
    { key: 'bytes', header: 'R bytes', format: fmtBytes },
    { key: 'level', header: 'level', align: 'left' },
    { key: 'dotBestGBps', header: 'dot GB/s best' },
    { key: 'dotMedianGBps', header: 'dot GB/s med' },
    { key: 'readBestGBps', header: 'read GB/s best' },
    { key: 'readMedianGBps', header: 'read GB/s med' },
    { key: 'ratioBest', header: 'dot/read best' },
    { key: 'ratioMedian', header: 'dot/read med' },
  ],
  {
    title: '1. Dot-product throughput, 1 query x nr rows (kernelBlock), 1 thread',
    notes: [
      `read = kernelPair('sum', '${BEST}', R) over the same bytes (the bandwidth limit); GB/s = 1e9 bytes/s of rows.`,
      `best = fastest, med = median of ${P.kernelReps} interleaved repetitions of ~${P.kernelCallMs} ms each.`,
    ],
  },
);

// ---------------------------------------------------------------- 2. exact top-k

/** Copies row i of a Float32Array into the reusable number[] `into` (hnswlib-node takes arrays only). */
function rowInto(data, d, i, into) {
  const off = i * d;
  for (let j = 0; j < d; j++) into[j] = data[off + j];
  return into;
}

async function topkSection() {
  const out = [];
  const nMax = Math.max(...P.ns);
  for (const d of P.dims) {
    log(`2. top-k d=${d}: generating ${fmtCount(nMax)} x ${d} rows (${fmtBytes(nMax * d * 4)}) ...`);
    const data = randomFloats(rng(P.seed + d), nMax * d, 1, (f) => log(`   ... ${Math.round(f * 100)}%`));
    const queries = randomFloats(rng(P.seed + 7 * d + 1), P.queryPool * d);
    const query = (i) => queries.subarray((i % P.queryPool) * d, ((i % P.queryPool) + 1) * d);
    const queryArrays = Array.from({ length: P.queryPool }, (_, i) => Array.from(query(i)));
    const batchQ = queries.subarray(0, P.batch * d);

    const index = new BruteforceSearch(METRIC, d);
    index.initIndex(nMax);
    let loaded = 0;
    let loadMs = 0;
    const point = new Array(d).fill(0);

    for (const n of P.ns) {
      const row = { n, d, k: P.k, bytes: n * d * 4, batch: P.batch, threadsAll: CORES };
      const t = SparseTensor.fromArray(data.subarray(0, n * d), d, { adopt: true, metric: METRIC });
      if (t.size !== n) throw new Error(`tensor size ${t.size}, expected ${n}`);

      // (a) ours, one query per call (search runs on the calling thread).
      log(`   ours search N=${fmtCount(n)} d=${d} ...`);
      const single = await sampleFor((i) => t.search(query(i), P.k), {
        budgetMs: P.singleBudgetMs,
        minReps: P.singleMinReps,
        warm: 2,
        keepSlowWarm: 1000,
      });
      row.ours = { single: timing(single, 1, n, d) };

      // (b, c) ours, batches on all cores and on one thread.
      for (const [key, threads] of [
        ['batchAll', CORES],
        ['batch1', 1],
      ]) {
        log(`   ours searchBatch N=${fmtCount(n)} d=${d} batch=${P.batch} threads=${threads} ...`);
        const s = await sampleFor(() => t.searchBatch(batchQ, P.k, { threads }), {
          budgetMs: P.batchBudgetMs,
          minReps: P.batchMinReps,
          warm: 1,
          keepSlowWarm: 1000,
        });
        row.ours[key] = { threads, ...timing(s, P.batch, n, d) };
      }

      // Batched and single results must agree (same kernels, same summation order).
      const b = await t.searchBatch(queries.subarray(0, P.agreeQueries * d), P.k);
      let batchVsSingle = 0;
      const ourTop = [];
      for (let i = 0; i < P.agreeQueries; i++) {
        const r = t.search(query(i), P.k);
        ourTop.push(r.ids);
        if (r.ids.every((id, j) => id === b.ids[i * P.k + j])) batchVsSingle++;
      }
      row.ours.batchMatchesSingle = batchVsSingle;
      if (batchVsSingle !== P.agreeQueries)
        checks.push(`N=${n} d=${d}: searchBatch ids differ from search for ${P.agreeQueries - batchVsSingle} of ${P.agreeQueries} queries`);

      // (d) hnswlib-node BruteforceSearch on the same rows.
      const projectedSec = loaded > 0 ? (loadMs / loaded / 1e3) * n : null;
      if (projectedSec !== null && projectedSec > P.hnswLoadLimitSec) {
        const reason =
          `loading ${fmtCount(n)} x ${d} points one addPoint() call at a time would take ~${Math.round(projectedSec)} s ` +
          `(measured ${Math.round(loaded / (loadMs / 1e3))} points/s up to N=${fmtCount(loaded)}), over the ${P.hnswLoadLimitSec} s limit`;
        log(`   hnswlib N=${fmtCount(n)} d=${d}: skipped: ${reason}`);
        row.hnswlib = { skipped: reason, projectedLoadSec: round(projectedSec) };
        checks.push(`hnswlib skipped at N=${n} d=${d}: ${reason}`);
      } else {
        log(`   loading hnswlib N=${fmtCount(n)} d=${d} (${fmtCount(n - loaded)} more points) ...`);
        const tl = nowMs();
        let lastLog = tl;
        for (let i = loaded; i < n; i++) {
          index.addPoint(rowInto(data, d, i, point), i);
          if ((i & 0x3fff) === 0 && nowMs() - lastLog > 10000) {
            lastLog = nowMs();
            const rate = (i - loaded) / ((lastLog - tl) / 1e3);
            log(`     ${fmtCount(i)} / ${fmtCount(n)} points, ${Math.round(rate)} points/s, ~${Math.round((n - i) / rate)} s left`);
          }
        }
        loadMs += nowMs() - tl;
        loaded = n;
        if (index.getCurrentCount() !== n) throw new Error(`hnswlib holds ${index.getCurrentCount()} points, expected ${n}`);
        log(`   hnswlib searchKnn N=${fmtCount(n)} d=${d} ...`);
        const hs = await sampleFor((i) => index.searchKnn(queryArrays[i % P.queryPool], P.k), {
          budgetMs: P.singleBudgetMs,
          minReps: P.singleMinReps,
          warm: 2,
          keepSlowWarm: 1000,
        });
        // Agreement: both are exact, so the ids should match (up to f32 near-ties).
        let top1 = 0;
        let overlap = 0;
        for (let i = 0; i < P.agreeQueries; i++) {
          const h = index.searchKnn(queryArrays[i], P.k).neighbors;
          if (h[0] === ourTop[i][0]) top1++;
          const mine = new Set(ourTop[i]);
          overlap += h.filter((id) => mine.has(id)).length / P.k;
        }
        row.hnswlib = {
          single: timing(hs, 1, n, d),
          loadSec: round(loadMs / 1e3),
          loadPointsPerSec: round(loaded / (loadMs / 1e3)),
        };
        row.agreement = { queries: P.agreeQueries, top1Agree: top1, top10Overlap: round(overlap / P.agreeQueries) };
        row.ratioSingle = round(row.ours.single.qps / row.hnswlib.single.qps);
        if (top1 !== P.agreeQueries)
          checks.push(`N=${n} d=${d}: top-1 differs from hnswlib for ${P.agreeQueries - top1} of ${P.agreeQueries} queries`);
        if (row.ratioSingle < 1)
          checks.push(`N=${n} d=${d}: hnswlib searchKnn is faster than our search (ours/hnswlib = ${row.ratioSingle})`);
      }
      if (row.ours.batchAll.qps < row.ours.single.qps)
        checks.push(
          `N=${n} d=${d}: searchBatch (${CORES} threads, batch ${P.batch}) gives fewer queries/s than one search per call ` +
            `(${row.ours.batchAll.qps} vs ${row.ours.single.qps})`,
        );
      if (CORES > 1 && row.ours.batchAll.qps < 1.3 * row.ours.batch1.qps)
        checks.push(
          `N=${n} d=${d}: searchBatch with ${CORES} threads is only ${round(row.ours.batchAll.qps / row.ours.batch1.qps, 3)}x ` +
            `the 1-thread rate`,
        );
      out.push(row);
      log(
        `   N=${fmtCount(n)} d=${d}: ours ${fmt(row.ours.single.qps)} q/s single, ${fmt(row.ours.batchAll.qps)} q/s batched; ` +
          `hnswlib ${row.hnswlib.single ? fmt(row.hnswlib.single.qps) + ' q/s' : 'skipped'}`,
      );
    }
    tryGc();
  }
  return out;
}

/** Throughput figures from per-call times (ms) of calls doing `perCall` queries each over n x d rows. */
function timing(samplesMs, perCall, n, d) {
  const s = stats(samplesMs);
  const total = samplesMs.reduce((a, b) => a + b, 0);
  const qps = (perCall * samplesMs.length) / (total / 1e3);
  return {
    qps: round(qps),
    // queries/s from the median call, less sensitive to a noisy neighbour
    qpsMedian: round(perCall / (s.median / 1e3)),
    msPerCallMedian: round(s.median),
    msPerCallMin: round(s.min),
    calls: samplesMs.length,
    // row bytes scanned per second (each query reads all n rows once)
    gbps: round((qps * n * d * 4) / 1e9),
  };
}

results.topk = await topkSection();

const hnswCell = (v, r) => (r.hnswlib.skipped ? 'skipped' : v);
table(
  results.topk.map((r) => ({
    n: fmtCount(r.n),
    d: r.d,
    single: r.ours.single.qps,
    singleGbps: r.ours.single.gbps,
    batchAll: r.ours.batchAll.qps,
    batch1: r.ours.batch1.qps,
    hnsw: r.hnswlib.single?.qps,
    hnswGbps: r.hnswlib.single?.gbps,
    ratio: r.ratioSingle,
    top1: r.agreement ? `${r.agreement.top1Agree}/${r.agreement.queries}` : undefined,
    top10: r.agreement?.top10Overlap,
    load: r.hnswlib.loadSec,
    hnswlib: r.hnswlib,
  })),
  [
    { key: 'n', header: 'N' },
    { key: 'd', header: 'd' },
    { key: 'single', header: 'ours 1q q/s' },
    { key: 'singleGbps', header: 'ours 1q GB/s' },
    { key: 'batchAll', header: `ours batch ${CORES}t q/s` },
    { key: 'batch1', header: 'ours batch 1t q/s' },
    { key: 'hnsw', header: 'hnswlib 1q q/s', format: (v, r) => hnswCell(fmt(v), r) },
    { key: 'hnswGbps', header: 'hnswlib GB/s', format: (v, r) => hnswCell(fmt(v), r) },
    { key: 'ratio', header: 'ours/hnswlib 1q', format: (v, r) => hnswCell(fmt(v), r) },
    { key: 'top1', header: 'top-1 agree', format: (v, r) => hnswCell(fmt(v), r) },
    { key: 'top10', header: 'top-10 overlap', format: (v, r) => hnswCell(fmt(v), r) },
    { key: 'load', header: 'hnswlib load s', format: (v, r) => hnswCell(fmt(v), r) },
  ],
  {
    title: `2. Exact top-${P.k} (${METRIC}), uniform random f32, queries/s`,
    notes: [
      `1q = one query per call: ours t.search (1 thread, ${BEST}), hnswlib-node ${hnswlibVersion} BruteforceSearch.searchKnn (1 thread).`,
      `batch = await t.searchBatch of ${P.batch} queries with threads = ${CORES} (all cores) or 1.`,
      'GB/s = row bytes scanned per second (N * d * 4 per query). hnswlib load s = cumulative addPoint time up to this N.',
      `top-1 agree / top-10 overlap: ours vs hnswlib on the first ${P.agreeQueries} queries (both exact).`,
      ...results.topk
        .filter((r) => r.hnswlib.skipped)
        .map((r) => `hnswlib skipped at N=${fmtCount(r.n)} d=${r.d}: ${r.hnswlib.skipped}.`),
    ],
  },
);

// ---------------------------------------------------------------- checks and results

results.checks = checks;
results.loadavgEnd = os.loadavg().map((x) => round(x, 3));
results.elapsedSec = round((nowMs() - t0All) / 1e3);
console.log(`\n## Checks\n`);
console.log(checks.length === 0 ? '  none flagged' : checks.map((c) => `  - ${c}`).join('\n'));
const file = writeResults(RESULT_NAME, results);
log(`done in ${results.elapsedSec} s; wrote ${file}`);
