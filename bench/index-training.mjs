#!/usr/bin/env node
/**
 * Cost of keeping the HNSW index fresh during training.
 *
 *   node bench/index-training.mjs            full run: N = 1e5 x 64, 10,000 steps, 3 policies (21 min measured at load average 3-5 on 2 cores; ~13 min estimated when idle)
 *   node bench/index-training.mjs --quick    N = 2e4, 2,000 steps (~2 min)
 *   --n=N, --steps=S, --batch=B              override the row count / steps / queries per step
 *   --replot                                 only redraw the SVG from bench/results/index-training.json
 *   --policies=a,b,...                       policies by name (see CATALOGUE below; ' d<x>' sets driftThreshold x)
 *   --name=NAME                              results to bench/results/NAME.json and NAME-recall.svg
 *   --neighbor-update=P                      add a fourth policy: drift-only on a graph loaded with
 *                                            neighborUpdateProbability = P (a refresh also rebuilds the
 *                                            one-hop neighbours' lists with probability P; default 0)
 *
 * A training-like loop over a SparseTensor of N random unit vectors (Gaussian,
 * normalised; d = 64, metric cosine, HNSW M = 16, efConstruction = 200, seed 100, the
 * policy's driftThreshold and maxDirty max(256, N/50)). Each step:
 *   (a) search   await t.searchBatch(B fresh random unit queries, 32, { index: 'hnsw' })   (the forward; default ef = 128)
 *   (b) write    t.add(ids, deltas): 32 rows picked from the ids that search returned (32 distinct
 *                queries; in each, the returned id with the smallest salted hash, i.e. a uniform draw from its
 *                32 results that does not depend on their ranks), deltas uniform in [-0.01, 0.01) per element
 *                (the test's rng.signed() * 0.01; at d = 64 a touch moves a unit row by ~4.6%, so a row
 *                turns dirty on about its second touch). The add also updates the Merkle tree
 *                (O(32 log N) hashes) and measures drift; when more than maxDirty rows are dirty, it
 *                runs the automatic refresh (re-links down to maxDirty / 2) inside the add.
 *   (c) commit   t.root(): the tree was built once by `await t.commit()` before the loop and every
 *                write keeps it current, so the root is always fresh; root() only hashes the top.
 *   (d) refresh  the policy:
 *                  drift-only  no explicit refresh (only the automatic one inside add, past maxDirty)
 *                  budget      t.refreshHnsw(256) every 100 steps (the schedule of test/hnsw.test.ts)
 *                  every-step  t.refreshHnsw(32) every step
 *
 * The policies run side by side in lockstep on three tensors that start from the same
 * rows and the same graph (built once, saved with saveHnsw, loaded with loadHnsw), with
 * the same queries, picks (query, salt) and deltas at every step; the policy order is
 * rotated every step. Only the ids can differ between policies (a pick is made from that
 * policy's own search results); the share of ids equal to the drift-only policy's is reported.
 *
 * Every `recallEvery` steps (untimed): recall@10 of index 'hnsw' against index 'exact'
 * on the same tensor, on 200 fixed held-out random unit queries, at ef = 128 (the
 * forward's default) and ef = 512. At the end: recall after refreshing every dirty row,
 * and recall of a fresh build (SparseTensor.fromArray(t.gather(all ids)) + buildHnsw with
 * the same parameters) over the final rows. The write path is split by replaying the
 * drift-only policy's writes on a tensor with no index and no tree, and on one with the
 * tree only. Every id returned by any search is checked to be < N.
 *
 * Tables go to stdout, progress to stderr; results to bench/results/index-training.json
 * and the recall plot to bench/results/index-training-recall.svg (--quick writes them too;
 * parameters.quick says which).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';

import {
  CORES,
  cpuHogs,
  otherProcesses,
  RESULTS_DIR,
  ROOT,
  fmt,
  fmtBytes,
  fmtCount,
  logger,
  machine,
  nowMs,
  rng,
  round,
  stats,
  table,
  tryGc,
  writeResults,
} from './lib/common.mjs';
import { legend, lineChart, svgDocument } from './lib/svg.mjs';

const { SparseTensor, simdInfo } = await import(join(ROOT, 'dist/index.js'));

// --replot: redraw the SVG from bench/results/index-training.json and exit (no run)
if (process.argv.includes('--replot')) {
  const res = JSON.parse(readFileSync(join(RESULTS_DIR, 'index-training.json'), 'utf8'));
  process.stderr.write(`[index-training] wrote ${plotRecall(res)} from the existing JSON\n`);
  process.exit(0);
}

// ---------------------------------------------------------------- parameters

const QUICK = process.argv.includes('--quick');
function intArg(name) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  if (!a) return undefined;
  const v = Number(a.slice(name.length + 3));
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} must be a positive integer, got ${a}`);
  return v;
}

function floatArg(name) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  if (!a) return undefined;
  const v = Number(a.slice(name.length + 3));
  if (!(v >= 0 && v <= 1)) throw new Error(`--${name} must be in 0..1, got ${a}`);
  return v;
}
const NEIGHBOR_UPDATE = floatArg('neighbor-update');

const P = {
  n: intArg('n') ?? (QUICK ? 20_000 : 100_000),
  d: 64,
  metric: 'cosine',
  steps: intArg('steps') ?? (QUICK ? 2_000 : 10_000),
  // queries per step: 64, not 256: one searchBatch of 256 (k = 32, ef 128) took ~50 ms at N = 1e5
  // here, so 10,000 steps would take ~8.5 min per policy (~25 min for three) -- over budget
  batch: intArg('batch') ?? 64,
  k: 32,
  rowsPerStep: 32,
  deltaScale: 0.01,
  hnsw: { M: 16, efConstruction: 200, seed: 100 },
  recallEvery: QUICK ? 250 : 500,
  recallQueries: 200,
  recallK: 10,
  recallEf: [128, 512],
  policies: [],
  seeds: { rows: 0x726f7773, heldOut: 0x686f6c64, queries: 0x71756572, picks: 0x7069636b, deltas: 0x64656c74 },
  dirtySeriesEvery: 10, // dirty-row counts kept in the JSON every this many steps
};
// Policies by name (--policies=a,b,...; default: the old default, drift-only, against the
// new default, drift-only, and the repair re-link at the old threshold 0.05). The first
// three names are the old default's schedules (hnswlib's updatePoint with
// neighborUpdateProbability 0, driftThreshold 0.05); 'repair ...' use the defaults since
// issue 24 item 7 (relink 'repair', driftThreshold 0.1). A name may end in ' d<threshold>'.
const DRIFT = floatArg('drift');
const CATALOGUE = {
  'drift-only': { every: 0, budget: 0, opts: { relink: 'hnswlib', driftThreshold: 0.05 }, desc: 'the old default (hnswlib re-link, driftThreshold 0.05); no explicit refresh; only the automatic one inside add past maxDirty' },
  budget: { every: 100, budget: 256, opts: { relink: 'hnswlib', driftThreshold: 0.05 }, desc: 'hnswlib re-link, driftThreshold 0.05; refreshHnsw(256) every 100 steps (test/hnsw.test.ts schedule)' },
  'every-step': { every: 1, budget: 32, opts: { relink: 'hnswlib', driftThreshold: 0.05 }, desc: 'hnswlib re-link, driftThreshold 0.05; refreshHnsw(32) every step' },
  'repair drift-only': { every: 0, budget: 0, opts: { relink: 'repair' }, desc: 'the default (repair re-link, driftThreshold 0.1, relinkEf 64); no explicit refresh' },
  'repair-ef200 drift-only': { every: 0, budget: 0, opts: { relink: 'repair', relinkEf: 0 }, desc: 'repair re-link searching efConstruction (200) candidates per re-link, as an insertion (the default before relinkEf 64); no explicit refresh' },
  'repair every-step': { every: 1, budget: 32, opts: { relink: 'repair' }, desc: 'repair re-link; refreshHnsw(32) every step' },
};
{
  const a = process.argv.find((x) => x.startsWith('--policies='));
  const names = a ? a.slice('--policies='.length).split(',') : ['drift-only', 'repair drift-only', 'repair drift-only d0.05'];
  if (names[0] !== 'drift-only') names.unshift('drift-only');
  for (const name of names) {
    // a name may end in ' d<threshold>': that policy with driftThreshold <threshold>
    const m = /^(.*) d([0-9.]+)$/.exec(name);
    const c = CATALOGUE[m ? m[1] : name];
    if (!c) throw new Error(`unknown policy ${name}; known: ${Object.keys(CATALOGUE).join(', ')} (each may end in ' d<driftThreshold>')`);
    const opts = { ...c.opts };
    if (DRIFT !== undefined && name.startsWith('repair')) opts.driftThreshold = DRIFT;
    if (m) opts.driftThreshold = Number(m[2]);
    P.policies.push({ name, ...c, opts, desc: c.desc + (opts.driftThreshold !== undefined ? `, driftThreshold ${opts.driftThreshold}` : '') });
  }
}
if (NEIGHBOR_UPDATE !== undefined)
  P.policies.push({
    name: `drift-only nbr=${NEIGHBOR_UPDATE}`,
    every: 0,
    budget: 0,
    opts: { relink: 'hnswlib', driftThreshold: 0.05, neighborUpdateProbability: NEIGHBOR_UPDATE },
    desc: `drift-only on a graph loaded with neighborUpdateProbability ${NEIGHBOR_UPDATE} (refresh also re-links one-hop neighbours)`,
  });
if (P.steps % P.recallEvery !== 0) P.recallEvery = Math.max(1, Math.floor(P.steps / 10));
if (P.rowsPerStep > P.batch) throw new Error('--batch must be >= 32 (one pick per query)');

const log = logger('index-training');
const simd = simdInfo();
const results = {
  name: 'index-training',
  date: new Date().toISOString(),
  command: ['node bench/index-training.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd }),
  parameters: {
    quick: QUICK,
    ...P,
    maxDirty: Math.max(256, Math.floor(P.n / 50)),
    driftThreshold: 0.05,
    forwardEf: Math.max(128, P.k),
    step:
      'search: await searchBatch(batch, k=32, {index: hnsw}); write: add(32 picked ids, deltas) -- includes the Merkle update, the drift check ' +
      'and the automatic refresh; refresh: the policy\'s explicit refreshHnsw; commit: root() (tree kept current by every write)',
    recall: 'recall@10 = |hnsw top-10 ids ∩ exact top-10 ids| / 10 on the same tensor, averaged over 200 held-out queries',
    units: { ms: 'milliseconds', us: 'microseconds', share: 'fraction of the summed step time (search + write + refresh + commit)' },
  },
  policies: [],
  notes: [],
};
const checks = [];
const t0All = nowMs();
const busy = () => os.loadavg().map((x) => round(x, 3));
results.otherProcessesAtStart = otherProcesses();
results.cpuHogsAtStart = cpuHogs();
log(`${QUICK ? 'quick' : 'full'} run: N=${fmtCount(P.n)} d=${P.d}, ${P.steps} steps, batch ${P.batch}, cores ${CORES}, simd ${simd.level}`);

// ---------------------------------------------------------------- data

function gaussian(rand) {
  let spare = null;
  return () => {
    if (spare !== null) {
      const s = spare;
      spare = null;
      return s;
    }
    const u = 1 - rand();
    const v = rand();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
}

/** Fills `a` with rows of Gaussian components normalised to unit length. */
function fillUnit(gauss, a, d) {
  for (let i = 0; i < a.length / d; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) {
      const x = gauss();
      a[i * d + j] = x;
      s += x * x;
    }
    const inv = 1 / Math.sqrt(s);
    for (let j = 0; j < d; j++) a[i * d + j] *= inv;
  }
  return a;
}

const { n: N, d } = P;
const rows0 = fillUnit(gaussian(rng(P.seeds.rows)), new Float32Array(N * d), d);
const heldOut = fillUnit(gaussian(rng(P.seeds.heldOut)), new Float32Array(P.recallQueries * d), d);

// ---------------------------------------------------------------- helpers

let idChecks = 0;
let idViolations = 0;
function checkIds(ids, where) {
  idChecks += ids.length;
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] >= N) {
      idViolations++;
      if (idViolations <= 5) checks.push({ check: 'id < N', ok: false, detail: `${where}: id ${ids[i]} >= N = ${N}` });
    }
  }
}

async function recallAt(t, label) {
  const K = P.recallK;
  const exact = await t.searchBatch(heldOut, K, { metric: P.metric });
  checkIds(exact.ids, `${label} exact`);
  const truth = [];
  for (let q = 0; q < P.recallQueries; q++) truth.push(new Set(exact.ids.subarray(q * K, (q + 1) * K)));
  const out = {};
  for (const ef of P.recallEf) {
    const r = await t.searchBatch(heldOut, K, { index: 'hnsw', ef });
    checkIds(r.ids, `${label} hnsw ef=${ef}`);
    let hit = 0;
    for (let q = 0; q < P.recallQueries; q++) for (let j = 0; j < K; j++) if (truth[q].has(r.ids[q * K + j])) hit++;
    out[`ef${ef}`] = round(hit / (P.recallQueries * K), 5);
  }
  return out;
}

function sum(a) {
  let s = 0;
  for (const x of a) s += x;
  return s;
}

/** median / p90 / max / mean of a Float64Array of ms, in microseconds. */
function usStats(a) {
  const s = stats(a);
  return { medianUs: round(s.median * 1e3), p90Us: round(s.p90 * 1e3), maxUs: round(s.max * 1e3), meanUs: round((sum(a) / a.length) * 1e3) };
}

// ---------------------------------------------------------------- initial graph (shared)

log(`building the initial graph: N=${fmtCount(N)} x ${d} (${fmtBytes(rows0.byteLength)}), ${CORES} threads ...`);
const tmp = mkdtempSync(join(os.tmpdir(), 'gt-index-training-'));
const graphFile = join(tmp, 'initial.hnsw');
let tBuild = nowMs();
{
  const t = SparseTensor.fromArray(rows0, d, { metric: P.metric });
  await t.buildHnsw({ metric: P.metric, ...P.hnsw });
  results.initialBuildSec = round((nowMs() - tBuild) / 1e3);
  t.saveHnsw(graphFile);
}
log(`  ${results.initialBuildSec} s; saved the graph for the three policies`);

const pol = [];
for (const p of P.policies) {
  const t = SparseTensor.fromArray(rows0, d, { metric: P.metric });
  const tl = nowMs();
  t.loadHnsw(graphFile, { metric: P.metric, ...P.hnsw, ...p.opts });
  const loadSec = (nowMs() - tl) / 1e3;
  const tc = nowMs();
  await t.commit();
  const commitSec = (nowMs() - tc) / 1e3;
  pol.push({
    ...p,
    t,
    loadSec,
    commitSec,
    search: new Float64Array(P.steps),
    write: new Float64Array(P.steps),
    refresh: new Float64Array(P.steps),
    commit: new Float64Array(P.steps),
    dirty: new Uint32Array(P.steps),
    autoRows: new Uint32Array(P.steps),
    explicitRows: new Uint32Array(P.steps),
    sameIds: 0,
    recall: [],
  });
}
rmSync(tmp, { recursive: true, force: true });
const info0 = pol[0].t.hnsw;
results.initialGraph = info0;
results.loadSec = pol.map((p) => round(p.loadSec));
results.initialCommitSec = pol.map((p) => round(p.commitSec));

// ---------------------------------------------------------------- the loop (lockstep)

const queries = new Float32Array(P.batch * d);
const picksQ = new Uint32Array(P.rowsPerStep);
const salts = new Uint32Array(P.rowsPerStep);
const deltas = new Float32Array(P.rowsPerStep * d);
const ids = new Uint32Array(P.rowsPerStep);
const gQueries = gaussian(rng(P.seeds.queries));
const rPicks = rng(P.seeds.picks);
const rDeltas = rng(P.seeds.deltas);
const perm = Uint32Array.from({ length: P.batch }, (_, i) => i);
// the drift-only policy's written ids, for the write-path replay
const writtenIds = new Uint32Array(P.steps * P.rowsPerStep);

/** murmur3's 32-bit finaliser. */
function mix32(h) {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
/**
 * The pick among one query's k returned ids: the id with the smallest salted hash. A
 * uniform draw from the returned set that does not depend on the ranks, so two policies
 * whose result sets overlap mostly pick the same row (a draw by rank would not: one
 * missing id shifts every rank after it).
 */
function pickOne(all, off, salt) {
  let best = all[off];
  let bestH = mix32(best ^ salt);
  for (let j = 1; j < P.k; j++) {
    const h = mix32(all[off + j] ^ salt);
    if (h < bestH) {
      bestH = h;
      best = all[off + j];
    }
  }
  return best;
}

async function checkpoint(step) {
  for (const p of pol) {
    const r = await recallAt(p.t, `${p.name} step ${step}`);
    const info = p.t.hnsw;
    p.recall.push({ step, ...r, dirty: info.dirty, refreshed: info.refreshed });
  }
  log(
    `step ${step}: recall@10 ef=${P.recallEf[0]}/${P.recallEf[1]}: ` +
      pol.map((p) => `${p.name} ${p.recall.at(-1)[`ef${P.recallEf[0]}`]}/${p.recall.at(-1)[`ef${P.recallEf[1]}`]} (dirty ${p.recall.at(-1).dirty})`).join(', '),
  );
}

results.loadavgBeforeLoop = busy();
results.otherProcessesBeforeLoop = otherProcesses();
results.cpuHogsBeforeLoop = cpuHogs();
log(`loadavg ${busy().join(' ')}; other bench/compiler/test processes: ${results.otherProcessesBeforeLoop.length ? results.otherProcessesBeforeLoop.join(' | ') : 'none'}`);
await checkpoint(0);
const tLoop = nowMs();
let lastLog = tLoop;
const loadSamples = [];
results.loadSamples = loadSamples;
for (let s = 0; s < P.steps; s++) {
  fillUnit(gQueries, queries, d);
  // 32 distinct queries (partial Fisher-Yates), one rank each
  for (let i = 0; i < P.rowsPerStep; i++) {
    const j = i + Math.floor(rPicks() * (P.batch - i));
    const x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
    picksQ[i] = perm[i];
    salts[i] = Math.floor(rPicks() * 4294967296);
  }
  for (let i = 0; i < deltas.length; i++) deltas[i] = (rDeltas() * 2 - 1) * P.deltaScale;

  let refIds = null;
  for (let o = 0; o < pol.length; o++) {
    const pi = (o + s) % pol.length; // rotate the order
    const p = pol[pi];
    const t = p.t;
    let t1 = nowMs();
    const r = await t.searchBatch(queries, P.k, { index: 'hnsw' });
    let t2 = nowMs();
    p.search[s] = t2 - t1;
    checkIds(r.ids, `${p.name} step ${s}`);
    for (let i = 0; i < P.rowsPerStep; i++) ids[i] = pickOne(r.ids, picksQ[i] * P.k, salts[i]);
    if (pi === 0) writtenIds.set(ids, s * P.rowsPerStep);
    const before = t.hnsw.refreshed;
    t1 = nowMs();
    t.add(ids, deltas);
    t2 = nowMs();
    p.write[s] = t2 - t1;
    const afterAdd = t.hnsw.refreshed;
    p.autoRows[s] = afterAdd - before;
    if (p.every > 0 && s % p.every === p.every - 1) {
      t1 = nowMs();
      p.explicitRows[s] = t.refreshHnsw(p.budget);
      t2 = nowMs();
      p.refresh[s] = t2 - t1;
    }
    t1 = nowMs();
    const root = t.root();
    t2 = nowMs();
    p.commit[s] = t2 - t1;
    if (root.length !== 32) throw new Error('root is not 32 bytes');
    p.dirty[s] = t.hnsw.dirty;
    // the same ids as the drift-only policy (pol[0]) at this step?
    if (pi === 0) refIds = Uint32Array.from(ids);
    p.idsThisStep = Uint32Array.from(ids);
  }
  for (const p of pol) {
    let same = 0;
    for (let i = 0; i < P.rowsPerStep; i++) if (p.idsThisStep[i] === refIds[i]) same++;
    p.sameIds += same;
  }
  if ((s + 1) % P.recallEvery === 0) await checkpoint(s + 1);
  if (nowMs() - lastLog > 20_000) {
    lastLog = nowMs();
    const rate = (s + 1) / ((lastLog - tLoop) / 1e3);
    const others = otherProcesses();
    const hogs = cpuHogs();
    loadSamples.push({ step: s + 1, loadavg: busy(), otherProcesses: others.length, cpuHogs: hogs });
    log(
      `  step ${s + 1} / ${P.steps}, ${fmt(rate)} steps/s (all policies), ~${Math.round((P.steps - s - 1) / rate)} s left; ` +
        `loadavg ${busy().join(' ')}, ${others.length} other bench/compiler/test processes, ${hogs.length} other processes over 5% CPU`,
    );
  }
}
results.loopSec = round((nowMs() - tLoop) / 1e3);
results.loadavgAfterLoop = busy();
results.otherProcessesAfterLoop = otherProcesses();
results.cpuHogsAfterLoop = cpuHogs();
log(`loop done in ${results.loopSec} s`);

// ---------------------------------------------------------------- end of training: full refresh and fresh builds

for (const p of pol) {
  const t = p.t;
  const final = p.recall.at(-1);
  const dirtyBefore = t.hnsw.dirty;
  let t1 = nowMs();
  const n = t.refreshHnsw(2 ** 32 - 1);
  const fullRefreshSec = (nowMs() - t1) / 1e3;
  const afterFull = await recallAt(t, `${p.name} after full refresh`);
  log(`${p.name}: refreshed all ${n} dirty rows in ${fmt(fullRefreshSec)} s; recall ${JSON.stringify(afterFull)}`);
  const all = Uint32Array.from({ length: N }, (_, i) => i);
  const fresh = SparseTensor.fromArray(t.gather(all), d, { metric: P.metric });
  t1 = nowMs();
  await fresh.buildHnsw({ metric: P.metric, ...P.hnsw });
  const freshBuildSec = (nowMs() - t1) / 1e3;
  const freshRecall = await recallAt(fresh, `${p.name} fresh build`);
  log(`${p.name}: fresh build over the final rows in ${fmt(freshBuildSec)} s; recall ${JSON.stringify(freshRecall)}`);
  p.end = {
    recall: final,
    dirtyBeforeFullRefresh: dirtyBefore,
    fullRefreshRows: n,
    fullRefreshSec: round(fullRefreshSec),
    recallAfterFullRefresh: afterFull,
    freshBuildSec: round(freshBuildSec),
    freshRecall,
    recallOverFresh: Object.fromEntries(P.recallEf.map((ef) => [`ef${ef}`, round(final[`ef${ef}`] / freshRecall[`ef${ef}`], 4)])),
    refreshedTotal: t.hnsw.refreshed,
  };
  tryGc();
}

// ---------------------------------------------------------------- write-path split (replay of drift-only's writes)

log('replaying the drift-only writes on a plain tensor and on a committed tensor without an index ...');
const replay = {};
for (const kind of ['plain', 'merkle']) {
  const t = SparseTensor.fromArray(rows0, d, { metric: P.metric });
  if (kind === 'merkle') await t.commit();
  const rD = rng(P.seeds.deltas);
  const ms = new Float64Array(P.steps);
  for (let s = 0; s < P.steps; s++) {
    for (let i = 0; i < deltas.length; i++) deltas[i] = (rD() * 2 - 1) * P.deltaScale;
    const u = writtenIds.subarray(s * P.rowsPerStep, (s + 1) * P.rowsPerStep);
    const t1 = nowMs();
    t.add(u, deltas);
    if (kind === 'merkle') t.root();
    ms[s] = nowMs() - t1;
  }
  replay[kind] = usStats(ms);
  if (kind === 'merkle') {
    // the replayed tensor must hold exactly the drift-only policy's rows (same writes)
    const same = Buffer.compare(Buffer.from(t.root()), Buffer.from(pol[0].t.root())) === 0;
    checks.push({ check: 'replay reproduces the drift-only rows (equal Merkle roots)', ok: same });
  }
}
results.writePathSplit = {
  note:
    'add(32 rows) median time: plain = tensor with no index and no tree; merkle = tensor with the tree (add + root()); ' +
    'drift-only / every-step = the policy tensors (tree + HNSW drift check), steps with an automatic refresh excluded',
  plain: replay.plain,
  merkle: replay.merkle,
};

// ---------------------------------------------------------------- summary per policy

for (const p of pol) {
  const S = P.steps;
  const sums = { search: sum(p.search), write: sum(p.write), refresh: sum(p.refresh), commit: sum(p.commit) };
  const total = sums.search + sums.write + sums.refresh + sums.commit;
  const autoSteps = [];
  const quietWrites = [];
  let autoWriteMs = 0;
  for (let s = 0; s < S; s++) {
    if (p.autoRows[s] > 0) {
      autoSteps.push(s);
      autoWriteMs += p.write[s];
    } else quietWrites.push(p.write[s]);
  }
  const explicitSteps = [];
  for (let s = 0; s < S; s++) if (p.every > 0 && s % p.every === p.every - 1) explicitSteps.push(p.refresh[s]);
  const stepTotals = new Float64Array(S);
  for (let s = 0; s < S; s++) stepTotals[s] = p.search[s] + p.write[s] + p.refresh[s] + p.commit[s];
  const autoRows = sum(p.autoRows);
  const explicitRows = sum(p.explicitRows);
  const dirtySeries = [];
  for (let s = P.dirtySeriesEvery - 1; s < S; s += P.dirtySeriesEvery) dirtySeries.push([s + 1, p.dirty[s]]);
  let dMax = 0;
  let dSum = 0;
  for (const x of p.dirty) {
    dMax = Math.max(dMax, x);
    dSum += x;
  }
  const out = {
    name: p.name,
    desc: p.desc,
    steps: S,
    msPerStep: {
      total: round(total / S),
      search: round(sums.search / S),
      write: round(sums.write / S),
      refresh: round(sums.refresh / S),
      commit: round(sums.commit / S, 3),
    },
    share: {
      search: round(sums.search / total),
      write: round(sums.write / total),
      refreshExplicit: round(sums.refresh / total),
      refreshAutomaticInWrite: round(autoWriteMs / total),
      refreshAll: round((sums.refresh + autoWriteMs) / total),
      commit: round(sums.commit / total, 3),
    },
    stepMs: { median: round(stats(stepTotals).median), p90: round(stats(stepTotals).p90), max: round(stats(stepTotals).max) },
    search: usStats(p.search),
    writeQuiet: quietWrites.length ? usStats(Float64Array.from(quietWrites)) : null,
    writeAll: usStats(p.write),
    commitRoot: usStats(p.commit),
    explicitRefresh: explicitSteps.length
      ? { calls: explicitSteps.length, rows: explicitRows, ...usStats(Float64Array.from(explicitSteps)), usPerRow: round((sums.refresh * 1e3) / Math.max(1, explicitRows)) }
      : { calls: 0, rows: 0 },
    automaticRefresh: {
      events: autoSteps.length,
      rows: autoRows,
      firstAtStep: autoSteps.length ? autoSteps[0] + 1 : null,
      msTotal: round(autoWriteMs),
      msPerEvent: autoSteps.length ? round(autoWriteMs / autoSteps.length) : null,
      usPerRow: autoRows ? round((autoWriteMs * 1e3) / autoRows) : null,
    },
    dirty: { final: p.dirty[S - 1], max: dMax, mean: round(dSum / S), series: dirtySeries },
    idsEqualToDriftOnly: round(p.sameIds / (S * P.rowsPerStep), 5),
    recall: p.recall,
    end: p.end,
    initialLoadSec: round(p.loadSec),
    initialCommitSec: round(p.commitSec),
  };
  results.policies.push(out);
  results.writePathSplit[p.name] = out.writeQuiet;
}

const maxLoad = Math.max(results.machine.loadavg[0], ...loadSamples.map((x) => x.loadavg[0]));
if (maxLoad > 0.75 * CORES)
  results.notes.push(
    `run under other load: 1-min load average up to ${round(maxLoad, 3)} on ${CORES} cores during the loop (see loadSamples, cpuHogs*); ` +
      'absolute times are inflated; the policies ran in lockstep with rotated order, so they saw the same load',
  );
const rDrift = results.policies.find((x) => x.name === 'drift-only');
if (!QUICK && rDrift && rDrift.msPerStep.total * P.steps > 6 * 60e3)
  results.notes.push(`one policy's summed step time is ${round((rDrift.msPerStep.total * P.steps) / 60e3, 3)} min (over the ~6 min target)`);
results.notes.push(
  `batch ${P.batch} queries per step, not 256: a searchBatch of 256 queries (k = 32, ef = 128, 2 threads) took ~50 ms at N = 1e5 on this machine, ` +
    'so 10,000 steps would take ~8.5 min per policy and ~25 min for the three; with 64 it is ~13 ms.',
  'Random 64-d unit vectors are a hard case for HNSW (no low-dimensional structure): recall@10 at ef = 128 is ~0.65-0.7 even on a fresh graph ' +
    '(bench/index.json: 0.54 at N = 2.5e5), hence the second recall column at ef = 512.',
  'Dirty rows are scanned exactly by every search, so a dirty row in the true top-10 is always found: more dirty rows can raise recall slightly.',
  'The policies diverge only through the ids their searches return (identical queries, picks and deltas); idsEqualToDriftOnly gives the share of written ids equal to the drift-only policy\'s.',
);

// ---------------------------------------------------------------- checks

checks.unshift({ check: `every returned id < N (${idChecks} ids checked)`, ok: idViolations === 0, detail: idViolations ? `${idViolations} violations` : undefined });
for (const r of results.policies) {
  const ef = `ef${P.recallEf[1]}`;
  checks.push({
    check: `${r.name}: final recall@10 (ef ${P.recallEf[1]}) >= 0.9 x fresh build`,
    ok: r.end.recall[ef] >= 0.9 * r.end.freshRecall[ef],
    detail: `${r.end.recall[ef]} vs fresh ${r.end.freshRecall[ef]}`,
  });
  // the criterion of test/hnsw.test.ts (there at d = 32, N = 1e4, default ef)
  const ef0 = `ef${P.recallEf[0]}`;
  checks.push({
    check: `${r.name}: final recall@10 (ef ${P.recallEf[0]}, the default) >= 0.9 x fresh build (test/hnsw.test.ts's criterion)`,
    ok: r.end.recall[ef0] >= 0.9 * r.end.freshRecall[ef0],
    detail: `${r.end.recall[ef0]} vs fresh ${r.end.freshRecall[ef0]} (ratio ${round(r.end.recall[ef0] / r.end.freshRecall[ef0], 4)})`,
  });
}
results.checks = checks;

// ---------------------------------------------------------------- tables

const label = `N=${fmtCount(N)} x ${d}, ${P.metric}, ${P.steps} steps, batch ${P.batch}, k ${P.k}, ${P.rowsPerStep} rows written per step`;
table(
  results.policies.map((r) => ({
    name: r.name,
    total: r.msPerStep.total,
    search: r.msPerStep.search,
    write: r.msPerStep.write,
    refresh: r.msPerStep.refresh,
    commit: r.msPerStep.commit,
    shExp: r.share.refreshExplicit,
    shAuto: r.share.refreshAutomaticInWrite,
    shAll: r.share.refreshAll,
    p90: r.stepMs.p90,
    max: r.stepMs.max,
  })),
  [
    { key: 'name', header: 'policy' },
    { key: 'total', header: 'ms/step' },
    { key: 'search', header: 'search' },
    { key: 'write', header: 'write (add)' },
    { key: 'refresh', header: 'refresh' },
    { key: 'commit', header: 'commit (root)' },
    { key: 'shExp', header: 'refresh share', format: (v) => `${(v * 100).toFixed(2)}%` },
    { key: 'shAuto', header: 'auto-refresh share', format: (v) => `${(v * 100).toFixed(2)}%` },
    { key: 'shAll', header: 'all refresh share', format: (v) => `${(v * 100).toFixed(2)}%` },
    { key: 'p90', header: 'step p90 ms' },
    { key: 'max', header: 'step max ms' },
  ],
  {
    title: `1. Time per training step (${label})`,
    notes: [
      'Mean ms per step over all steps. write = t.add, which includes the Merkle update, the drift check and the automatic refresh',
      '(auto-refresh share = time of the adds that ran it / step time). refresh = the explicit refreshHnsw of the policy.',
      'commit = t.root() (the tree is built once before the loop; every write keeps it current).',
    ],
  },
);

table(
  results.policies.map((r) => ({
    name: r.name,
    eCalls: r.explicitRefresh.calls,
    eRows: r.explicitRefresh.rows,
    eUs: r.explicitRefresh.medianUs,
    aEv: r.automaticRefresh.events,
    aRows: r.automaticRefresh.rows,
    aMs: r.automaticRefresh.msPerEvent,
    aFirst: r.automaticRefresh.firstAtStep,
    usRow: r.explicitRefresh.usPerRow ?? r.automaticRefresh.usPerRow,
    aUsRow: r.automaticRefresh.usPerRow,
    dMean: r.dirty.mean,
    dMax: r.dirty.max,
    dFinal: r.dirty.final,
  })),
  [
    { key: 'name', header: 'policy' },
    { key: 'eCalls', header: 'explicit calls' },
    { key: 'eRows', header: 'rows' },
    { key: 'eUs', header: 'median us/call' },
    { key: 'usRow', header: 'us/row' },
    { key: 'aEv', header: 'auto events' },
    { key: 'aRows', header: 'rows' },
    { key: 'aMs', header: 'ms/event' },
    { key: 'aUsRow', header: 'us/row' },
    { key: 'aFirst', header: 'first at step' },
    { key: 'dMean', header: 'dirty mean' },
    { key: 'dMax', header: 'dirty max' },
    { key: 'dFinal', header: 'dirty final' },
  ],
  { title: `2. Refresh work and dirty rows (maxDirty ${results.parameters.maxDirty}; an automatic refresh re-links down to ${results.parameters.maxDirty / 2})` },
);

const split = results.writePathSplit;
table(
  [
    { what: 'plain tensor (no tree, no index)', ...split.plain },
    { what: '+ Merkle tree (add + root)', ...split.merkle },
    ...results.policies.map((r) => ({ what: `+ tree + HNSW drift check (${r.name}, no auto refresh)`, ...r.writeQuiet })),
  ],
  [
    { key: 'what', header: 'add(32 rows) on' },
    { key: 'medianUs', header: 'median us' },
    { key: 'p90Us', header: 'p90 us' },
    { key: 'meanUs', header: 'mean us' },
  ],
  { title: '3. Write path split (the drift-only writes replayed)' },
);

const rc = [];
for (const r of results.policies) {
  for (const c of r.recall) if (c.step % (P.recallEvery * (QUICK ? 2 : 4)) === 0 || c.step === P.steps) rc.push({ name: r.name, ...c });
  rc.push({ name: r.name, step: 'after full refresh', ...r.end.recallAfterFullRefresh, dirty: 0 });
  rc.push({ name: r.name, step: 'fresh build', ...r.end.freshRecall, dirty: 0 });
}
table(
  rc,
  [
    { key: 'name', header: 'policy' },
    { key: 'step', header: 'step' },
    { key: `ef${P.recallEf[0]}`, header: `recall@10 ef=${P.recallEf[0]}`, format: (v) => v.toFixed(4) },
    { key: `ef${P.recallEf[1]}`, header: `recall@10 ef=${P.recallEf[1]}`, format: (v) => v.toFixed(4) },
    { key: 'dirty', header: 'dirty rows' },
  ],
  {
    title: `4. Recall@10 vs the exact index (${P.recallQueries} held-out queries)`,
    notes: [
      `all checkpoints (every ${P.recallEvery} steps) are in the JSON and the SVG; fresh build = fromArray(gather(all)) + buildHnsw over the final rows.`,
      ...results.policies.map(
        (r) => `${r.name}: written ids equal to drift-only's: ${(r.idsEqualToDriftOnly * 100).toFixed(2)}%; fresh build ${fmt(r.end.freshBuildSec)} s; full refresh of ${r.end.fullRefreshRows} rows ${fmt(r.end.fullRefreshSec)} s`,
      ),
    ],
  },
);

// ---------------------------------------------------------------- SVG

results.name = process.argv.find((x) => x.startsWith('--name='))?.slice('--name='.length) ?? 'index-training';
const svgFile = plotRecall(results);

// ---------------------------------------------------------------- results

results.loadavgEnd = busy();
results.otherProcessesAtEnd = otherProcesses();
results.cpuHogsAtEnd = cpuHogs();
results.elapsedSec = round((nowMs() - t0All) / 1e3);
console.log(`\n## Checks\n`);
console.log(checks.map((c) => `  - [${c.ok ? 'ok' : 'FAILED'}] ${c.check}${c.detail ? `: ${c.detail}` : ''}`).join('\n'));
console.log(`\n  elapsed ${fmt(results.elapsedSec)} s`);
const file = writeResults(results.name, results);
log(`done in ${results.elapsedSec} s; wrote ${file} and ${svgFile}`);
if (idViolations > 0) {
  log(`FAILED: ${idViolations} returned ids >= N`);
  process.exitCode = 1;
}

// ---------------------------------------------------------------- the plot

/**
 * Writes bench/results/index-training-recall.svg from a results object (this run's, or
 * the JSON's with --replot): recall@10 vs step at both ef values per policy, each
 * policy's fresh-build recall as a dashed line, and the dirty rows after each step.
 */
function plotRecall(res) {
  const PP = res.parameters;
  const colors = ['#d62728', '#1f77b4', '#2ca02c', '#9467bd'];
  const W = 1040;
  const H = 380;
  const parts = [];
  const recallPanel = (ef, x) => {
    const series = [];
    res.policies.forEach((r, i) => {
      series.push({ name: r.name, color: colors[i], points: r.recall.map((c) => [c.step, c[`ef${ef}`]]), marker: true });
      const f = r.end.freshRecall[`ef${ef}`];
      series.push({ name: `${r.name} fresh`, color: colors[i], points: [[0, f], [PP.steps, f]], dash: true });
    });
    return lineChart({ x, y: 0, width: 345, height: H - 40, title: `recall@10, ef = ${ef}`, xLabel: 'training step', yLabel: 'recall@10 vs exact', series, xDomain: [0, PP.steps] });
  };
  parts.push(recallPanel(PP.recallEf[0], 0));
  parts.push(recallPanel(PP.recallEf[1], 345));
  parts.push(
    lineChart({
      x: 690,
      y: 0,
      width: 345,
      height: H - 40,
      title: `dirty rows after each step (every ${PP.dirtySeriesEvery}th)`,
      xLabel: 'training step',
      yLabel: 'dirty rows',
      series: res.policies.map((r, i) => ({ name: r.name, color: colors[i], points: r.dirty.series })),
      xDomain: [0, PP.steps],
      yDomain: [0, Math.max(...res.policies.map((r) => r.dirty.max)) * 1.08 || 1],
    }),
  );
  // legend in one row under the panels
  const items = [
    ...res.policies.map((r, i) => ({ name: r.name, color: colors[i] })),
    { name: "dashed: fresh build over that policy's final rows", color: '#555', dash: true },
  ];
  let lx = 70;
  for (const e of items) {
    parts.push(legend({ x: lx, y: H - 24, entries: [e] }));
    lx += 40 + e.name.length * 6.2;
  }
  const svg = svgDocument(W, H, parts, {
    caption:
      `${res.command}: N=${fmtCount(PP.n)} x ${PP.d} random unit vectors, ${PP.metric}, batch ${PP.batch}, k ${PP.k}, ` +
      `${PP.rowsPerStep} rows +/-${PP.deltaScale}/element per step; ${res.date.slice(0, 10)}`,
  });
  const file = join(RESULTS_DIR, `${res.name ?? 'index-training'}-recall.svg`);
  writeFileSync(file, svg);
  return file;
}
