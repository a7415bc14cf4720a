#!/usr/bin/env node
/**
 * Storage benchmark: a tensor file larger than a comfortable share of RAM, read and
 * trained sparsely through its memory mapping (docs/storage.md).
 *
 *   nice node bench/storage.mjs                     full run: N = 5792^2 = 33,548,264 rows x 64 f32 (8.0 GiB of
 *                                                   values; 2.0 GiB of tree; Adam state reserved as holes)
 *   node bench/storage.mjs --rows=1048576           smaller (any N; product keys use floor(sqrt(N))^2 rows)
 *   --dir=PATH        where the file lives (default bench/.data, git-ignored); --keep keeps it afterwards
 *   --seconds=S       time budget of each throughput phase (default 15)
 *
 * Phases, each in a fresh child process so its resident memory is its own:
 *   create    SparseTensor.createFile (seeded uniform values, tree), timed once (skipped
 *             when a file of this shape exists and --recreate is not given)
 *   work      drop the file's page cache (dd iflag=nocache), open without the root check,
 *             then:
 *               search   product keys (ProductKeyIndex, two in-memory tables of n = sqrt(N)
 *                        sub-keys of 32) top-32 per query, then gather the 32 rows from the
 *                        file tensor (what a HopfieldLookup reads): queries/s
 *               train    per step: 64 queries -> product-key top-32 (2,048 row ids) ->
 *                        SparseAdam step on those rows (values, m, v, counters, tree paths):
 *                        steps/s
 *               memory   VmRSS / RssAnon / RssFile after search + training
 *               warm     search and train again after reading the whole file once into the
 *                        page cache (dd): CPU-bound figures (--skip-warm skips it)
 *               checkpoint time against touched rows (1 .. 100,000 distinct rows: one log
 *                        record + fdatasync), and compaction time for the same rows
 *   open      open time: cold and warm page cache, with and without the root check
 *             (verify: every leaf and node rehashed, 2 threads), and RSS after each
 *
 * Results: bench/results/storage.json; tables on stdout, progress on stderr.
 *
 *   node bench/storage.mjs --verified [--rows=N] [--seconds=S]
 *       verified reads only: the same search (product-key top-32 + gather of the 32 rows)
 *       on the file opened with the per-row check (default) and with uncheckedReads,
 *       alternating in fresh child processes (so every row read is a first touch for the
 *       check), twice each, first with the file's pages dropped from the page cache,
 *       then with values and tree in the page cache. Results:
 *       bench/results/storage-verified.json.
 */
import { spawnSync, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { CORES, ROOT, cpuHogs, fmt, fmtBytes, logger, machine, nowMs, otherProcesses, rng, round, table, writeResults } from './lib/common.mjs';

const log = logger('storage');
const arg = (name, def) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : def;
};
const flag = (name) => process.argv.includes(`--${name}`);

const SUB = Math.floor(Math.sqrt(Number(arg('rows', String(5792 * 5792)))));
const N = SUB * SUB;
const D = 64;
const K = 32;
const BATCH = 64;
const CKPT_EVERY = 10;
const SECONDS = Number(arg('seconds', '15'));
const DIR = arg('dir', join(ROOT, 'bench', '.data'));
const FILE = join(DIR, `storage-${N}x${D}.gtt`);
const phase = arg('phase', 'main');
const VERIFIED = flag('verified');

function memory() {
  const s = readFileSync('/proc/self/status', 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024;
  return { VmRSS: kb('VmRSS'), RssAnon: kb('RssAnon'), RssFile: kb('RssFile'), VmHWM: kb('VmHWM') };
}

function dropCache(path) {
  // Drops this file's pages from the page cache (POSIX_FADV_DONTNEED through dd), so a
  // read has to come from the disk: the situation of a tensor larger than RAM.
  for (const p of [path, `${path}.wal`]) {
    if (existsSync(p)) spawnSync('dd', [`if=${p}`, 'iflag=nocache', 'count=0', 'status=none']);
  }
}

async function lib() {
  return import(join(ROOT, 'dist', 'index.js'));
}

function tables(rand) {
  const half = D / 2;
  const a = new Float32Array(SUB * half), b = new Float32Array(SUB * half);
  for (let i = 0; i < a.length; i++) a[i] = rand() * 2 - 1;
  for (let i = 0; i < b.length; i++) b[i] = rand() * 2 - 1;
  return [a, b];
}

// ------------------------------------------------------------------ child phases

async function phaseWork() {
  const { SparseTensor, SparseAdam, ProductKeyIndex } = await lib();
  const out = { baseline: memory() };
  dropCache(FILE);
  let t0 = nowMs();
  const t = await SparseTensor.openFile(FILE);
  out.openMs = nowMs() - t0;
  out.afterOpen = memory();
  const rand = rng(7);
  const [a, b] = tables(rand);
  const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(a, D / 2), SparseTensor.fromArray(b, D / 2));
  const query = () => Float32Array.from({ length: D }, () => rand() * 2 - 1);

  // Search: product-key top-32, then the 32 rows from the file tensor.
  const searchRun = (label, budgetMs) => {
    let n = 0, rows = 0, checksum = 0;
    const start = nowMs();
    while (nowMs() - start < budgetMs) {
      const r = pk.search(query(), K);
      const g = t.gather(r.ids.filter((id) => id < N));
      checksum += g[0];
      rows += r.ids.length;
      n++;
    }
    const ms = nowMs() - start;
    log(`${label}: ${n} queries in ${fmt(ms)} ms`);
    return { label, queries: n, ms, qps: (n * 1000) / ms, rowsRead: rows, checksum };
  };
  out.searchCold = searchRun('search (cold cache)', SECONDS * 1000);
  out.afterSearch = memory();

  // Training: batch of 64 queries -> 2,048 ids -> SparseAdam step on the file tensor,
  // a checkpoint every CKPT_EVERY steps with the default compaction policy (a training job).
  const opt = new SparseAdam([t], { lr: 1e-3 });
  const train = async (label) => {
    let steps = 0, touched = 0, searchMs = 0, stepMs = 0, ckptMs = 0, maxRss = 0, maxAnon = 0;
    const start = nowMs();
    while (nowMs() - start < SECONDS * 1000) {
      const q = new Float32Array(BATCH * D);
      for (let i = 0; i < q.length; i++) q[i] = rand() * 2 - 1;
      let s0 = nowMs();
      const r = await pk.searchBatch(q, K);
      searchMs += nowMs() - s0;
      const grads = new Float32Array(r.ids.length * D);
      for (let i = 0; i < grads.length; i++) grads[i] = (rand() - 0.5) * 1e-2;
      s0 = nowMs();
      touched += opt.step([{ tensor: t, ids: r.ids, grads }])[0];
      stepMs += nowMs() - s0;
      steps++;
      if (steps % CKPT_EVERY === 0) {
        s0 = nowMs();
        t.checkpoint();
        ckptMs += nowMs() - s0;
      }
      const m = memory();
      maxRss = Math.max(maxRss, m.VmRSS);
      maxAnon = Math.max(maxAnon, m.RssAnon);
    }
    const ms = nowMs() - start;
    log(`${label}: ${steps} steps in ${fmt(ms)} ms`);
    return {
      steps, ms, stepsPerSec: (steps * 1000) / ms, distinctRowsPerStep: touched / steps, searchMs, optimizerStepMs: stepMs,
      checkpointEvery: CKPT_EVERY, checkpointAndCompactMs: ckptMs, compactedSeq: t.file.compactedSeq, seq: t.file.seq, maxVmRSS: maxRss, maxRssAnon: maxAnon,
      after: memory(),
  };
  };
  out.train = await train('train (cold cache)');
  out.afterTrain = out.train.after;
  // The same with the whole file in the page cache (read once with dd; page cache is
  // not this process's resident memory): CPU-bound figures for a machine whose RAM
  // holds the file, resident memory still only what was touched.
  if (!flag('skip-warm')) {
    // Only the values and the tree (the optimizer state is mostly holes: reading 16 GiB
    // of holes would fill the page cache with zero pages and evict the values).
    const w0 = nowMs();
    const align = (x) => Math.ceil(x / 4096) * 4096;
    const valuesBytes = N * D * 4;
    let at = align(8192 + valuesBytes);
    at = align(at + valuesBytes); // m
    at = align(at + valuesBytes); // v
    at = align(at + N * 4); // counters
    at = align(at + N * 8); // decay marks: the tree starts here
    const ddRange = (from, length) =>
      spawnSync('dd', [`if=${FILE}`, 'of=/dev/null', 'bs=16M', 'iflag=skip_bytes,count_bytes', `skip=${from}`, `count=${length}`, 'status=none']);
    ddRange(8192, valuesBytes);
    ddRange(at, statSync(FILE).size - at);
    out.prewarmMs = nowMs() - w0;
    out.searchWarm = searchRun('search (file in page cache)', SECONDS * 1000);
    out.trainWarm = await train('train (file in page cache)');
  }
  out.pendingRowsBeforeFirstCheckpoint = t.file.pendingRows;

  // Checkpoint cost against rows touched (the training above is checkpointed first).
  t0 = nowMs();
  t.checkpoint({ compactBytes: 0, compactRows: 0 });
  out.firstCheckpointMs = nowMs() - t0;
  t0 = nowMs();
  t.compact();
  out.firstCompactMs = nowMs() - t0;
  out.checkpoints = [];
  for (const rows of [1, 10, 100, 1000, 10_000, 100_000]) {
    const samples = [];
    const reps = rows >= 100_000 ? 1 : 3;
    for (let rep = 0; rep < reps; rep++) {
      const ids = new Uint32Array(rows);
      for (let i = 0; i < rows; i++) ids[i] = Math.floor(rand() * N);
      const grads = new Float32Array(rows * D);
      for (let i = 0; i < grads.length; i++) grads[i] = (rand() - 0.5) * 1e-2;
      opt.step([{ tensor: t, ids, grads }]);
      const distinct = t.file.pendingRows;
      const w0 = t.file.walBytes;
      let c0 = nowMs();
      t.checkpoint({ compactBytes: 0, compactRows: 0 });
      const checkpointMs = nowMs() - c0;
      const recordBytes = t.file.walBytes - w0;
      c0 = nowMs();
      t.compact();
      const compactMs = nowMs() - c0;
      samples.push({ distinct, checkpointMs, compactMs, recordBytes });
    }
    samples.sort((x, y) => x.checkpointMs - y.checkpointMs);
    const mid = Math.floor(samples.length / 2);
    const med = samples[mid];
    const cm = samples.map((s) => s.compactMs).sort((x, y) => x - y)[mid];
    out.checkpoints.push({ rows, distinct: med.distinct, checkpointMs: med.checkpointMs, compactMs: cm, recordBytes: med.recordBytes });
    log(`checkpoint ${rows} rows: ${fmt(med.checkpointMs)} ms, compact ${fmt(cm)} ms`);
  }
  out.afterCheckpoints = memory();
  t0 = nowMs();
  t.close();
  out.closeMs = nowMs() - t0;
  process.stdout.write(JSON.stringify(out));
}

// One verified-reads measurement: open (checked or not), search for SECONDS.
async function phaseReads() {
  const { SparseTensor, ProductKeyIndex } = await lib();
  const unchecked = arg('unchecked', '0') === '1';
  const cold = arg('cold', '1') === '1';
  if (cold) dropCache(FILE);
  const t = await SparseTensor.openFile(FILE, { readOnly: true, uncheckedReads: unchecked });
  const rand = rng(11 + Number(arg('round', '0')));
  const [a, b] = tables(rng(7));
  const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(a, D / 2), SparseTensor.fromArray(b, D / 2));
  const query = () => Float32Array.from({ length: D }, () => rand() * 2 - 1);
  let n = 0, rows = 0, gatherMs = 0, checksum = 0;
  const start = nowMs();
  while (nowMs() - start < SECONDS * 1000) {
    const r = pk.search(query(), K);
    const ids = r.ids.filter((id) => id < N);
    const g0 = nowMs();
    const g = t.gather(ids);
    gatherMs += nowMs() - g0;
    checksum += g[0];
    rows += ids.length;
    n++;
  }
  const ms = nowMs() - start;
  const info = t.file;
  t.close();
  const label = `${unchecked ? 'unchecked' : 'checked'}, ${cold ? 'cold' : 'page cache'}`;
  log(`${label}: ${n} queries in ${fmt(ms)} ms (${fmt((n * 1000) / ms)} q/s), gather ${fmt((gatherMs * 1000) / n)} us/query`);
  process.stdout.write(
    JSON.stringify({ label, unchecked, cold, queries: n, ms, qps: (n * 1000) / ms, rowsRead: rows, gatherUsPerQuery: (gatherMs * 1000) / n, usPerQuery: (ms * 1000) / n, rowsChecked: info.rowsChecked, memory: memory(), checksum }),
  );
}

// Checked and unchecked reads interleaved query by query in one process: the file opened
// twice read-only (one mapping each, one with the per-row check, one without), each
// with its own query stream (disjoint random rows), so the machine's load hits both alike.
async function phaseInterleaved() {
  const { SparseTensor, ProductKeyIndex } = await lib();
  const cold = arg('cold', '1') === '1';
  if (cold) dropCache(FILE);
  const checked = await SparseTensor.openFile(FILE, { readOnly: true });
  const unchecked = await SparseTensor.openFile(FILE, { readOnly: true, uncheckedReads: true });
  const [a, b] = tables(rng(7));
  const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(a, D / 2), SparseTensor.fromArray(b, D / 2));
  const sides = [
    { name: 'unchecked', t: unchecked, rand: rng(101), queries: 0, us: 0, gatherUs: 0 },
    { name: 'checked', t: checked, rand: rng(202), queries: 0, us: 0, gatherUs: 0 },
  ];
  let checksum = 0;
  const start = nowMs();
  for (let i = 0; nowMs() - start < SECONDS * 1000; i++) {
    const s = sides[i % 2];
    const q = Float32Array.from({ length: D }, () => s.rand() * 2 - 1);
    const t0 = nowMs();
    const r = pk.search(q, K);
    const g0 = nowMs();
    const g = s.t.gather(r.ids.filter((id) => id < N));
    const t1 = nowMs();
    checksum += g[0];
    s.queries++;
    s.us += (t1 - t0) * 1000;
    s.gatherUs += (t1 - g0) * 1000;
  }
  const out = {
    cold,
    rowsChecked: checked.file.rowsChecked,
    checksum,
    sides: sides.map(({ name, queries, us, gatherUs }) => ({ name, queries, usPerQuery: us / queries, gatherUsPerQuery: gatherUs / queries })),
  };
  checked.close();
  unchecked.close();
  const [u, c] = out.sides;
  out.overheadPct = (100 * (c.usPerQuery - u.usPerQuery)) / u.usPerQuery;
  log(`interleaved ${cold ? 'cold' : 'page cache'}: unchecked ${fmt(u.usPerQuery)} us/query, checked ${fmt(c.usPerQuery)} us/query (+${fmt(out.overheadPct)}%)`);
  process.stdout.write(JSON.stringify(out));
}

function warmValuesAndTree() {
  // Reads the values and the tree into the page cache (not the optimizer state: holes).
  const head = Buffer.alloc(256);
  const f = openSync(FILE, 'r');
  readSync(f, head, 0, 256, 0);
  closeSync(f);
  const region = (i) => [Number(head.readBigUInt64LE(128 + 16 * i)), Number(head.readBigUInt64LE(136 + 16 * i))];
  for (const [off, len] of [region(0), region(5)]) {
    const MB = 1 << 20;
    spawnSync('dd', [`if=${FILE}`, 'bs=1M', 'iflag=skip_bytes,count_bytes', `skip=${off}`, `count=${len + MB}`, 'status=none', 'of=/dev/null']);
  }
}

async function verifiedMain() {
  const { SparseTensor, simdInfo } = await lib();
  mkdirSync(DIR, { recursive: true });
  const result = {
    name: 'storage-verified',
    date: new Date().toISOString(),
    machine: machine({ simd: simdInfo() }),
    parameters: { rows: N, dim: D, subKeys: SUB, k: K, secondsPerRun: SECONDS, file: FILE, optimizerState: true },
    contention: { otherProcesses: otherProcesses(), cpuHogs: cpuHogs() },
  };
  if (flag('recreate') || !existsSync(FILE)) {
    rmSync(FILE, { force: true });
    rmSync(`${FILE}.wal`, { force: true });
    log(`creating ${FILE} (${fmtBytes(N * D * 4)} of values)`);
    const t0 = nowMs();
    await SparseTensor.createFile(FILE, { rows: N, dim: D, seed: 1, scale: 0.05, optimizerState: true });
    result.createMs = nowMs() - t0;
    log(`created in ${fmt(result.createMs / 1000)} s`);
  }
  result.runs = [];
  const run = async (unchecked, cold, round) => {
    const extra = [`--phase=reads`, `--unchecked=${unchecked ? 1 : 0}`, `--cold=${cold ? 1 : 0}`, `--round=${round}`];
    const r = await new Promise((resolve, reject) => {
      const c = spawn(process.execPath, [process.argv[1], ...extra, ...process.argv.slice(2).filter((a) => !a.startsWith('--phase=') && a !== '--verified')], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      c.stdout.on('data', (b) => (out += b));
      c.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`reads exited with ${code}`))));
    });
    result.runs.push({ round, ...r });
  };
  // The same query stream (seeded by round) for both modes of a round.
  for (let round = 0; round < 2; round++) {
    await run(true, true, round);
    await run(false, true, round);
  }
  log('reading values and tree into the page cache');
  warmValuesAndTree();
  for (let round = 0; round < 2; round++) {
    await run(true, false, round);
    await run(false, false, round);
  }
  // The A/B design least sensitive to the machine's load: both modes in one process,
  // alternating query by query (after the page-cache runs, then after dropping it).
  const inter = async (cold) =>
    new Promise((resolve, reject) => {
      const c = spawn(process.execPath, [process.argv[1], '--phase=interleaved', `--cold=${cold ? 1 : 0}`, ...process.argv.slice(2).filter((a) => !a.startsWith('--phase=') && a !== '--verified')], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      c.stdout.on('data', (b) => (out += b));
      c.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`interleaved exited with ${code}`))));
    });
  result.interleaved = [await inter(false), await inter(true)];
  result.contentionAfter = { otherProcesses: otherProcesses(), cpuHogs: cpuHogs(), loadavg: machine().loadavg };
  const pick = (unchecked, cold) => result.runs.filter((r) => r.unchecked === unchecked && r.cold === cold);
  const sum = (rs, k) => rs.reduce((a, r) => a + r[k], 0);
  result.summary = [true, false].map((cold) => {
    const u = pick(true, cold), c = pick(false, cold);
    const uUs = (sum(u, 'ms') * 1000) / sum(u, 'queries'), cUs = (sum(c, 'ms') * 1000) / sum(c, 'queries');
    const uG = (sum(u, 'gatherUsPerQuery') / u.length), cG = (sum(c, 'gatherUsPerQuery') / c.length);
    return {
      cache: cold ? 'cold' : 'page cache',
      uncheckedQps: 1e6 / uUs,
      checkedQps: 1e6 / cUs,
      uncheckedUsPerQuery: uUs,
      checkedUsPerQuery: cUs,
      overheadPct: (100 * (cUs - uUs)) / uUs,
      uncheckedGatherUs: uG,
      checkedGatherUs: cG,
      gatherOverheadPct: (100 * (cG - uG)) / uG,
      rowsCheckedPerQuery: sum(c, 'rowsChecked') / sum(c, 'queries'),
    };
  });
  table(
    result.runs,
    [
      { key: 'round' },
      { key: 'label', header: 'run' },
      { key: 'qps', header: 'q/s', format: (v) => fmt(v) },
      { key: 'gatherUsPerQuery', header: 'gather us/q', format: (v) => fmt(v) },
      { key: 'rowsChecked', header: 'rows checked' },
    ],
    { title: `Verified reads, tensor file ${N} x ${D} f32 (${fmtBytes(N * D * 4)} of values): product-key top-${K} + gather` },
  );
  table(
    result.summary,
    [
      { key: 'cache' },
      { key: 'uncheckedQps', header: 'unchecked q/s', format: (v) => fmt(v) },
      { key: 'checkedQps', header: 'checked q/s', format: (v) => fmt(v) },
      { key: 'overheadPct', header: 'cost of the check (% of a query)', format: (v) => fmt(v) },
      { key: 'uncheckedGatherUs', header: 'gather us (unchecked)', format: (v) => fmt(v) },
      { key: 'checkedGatherUs', header: 'gather us (checked)', format: (v) => fmt(v) },
    ],
    { title: 'Summary (both rounds pooled)' },
  );
  table(
    result.interleaved.flatMap((r) => r.sides.map((s) => ({ cache: r.cold ? 'cold' : 'page cache', ...s, overhead: s.name === 'checked' ? `${fmt(r.overheadPct)}%` : '' }))),
    [
      { key: 'cache' },
      { key: 'name', header: 'reads' },
      { key: 'queries' },
      { key: 'usPerQuery', header: 'us/query', format: (v) => fmt(v) },
      { key: 'gatherUsPerQuery', header: 'gather us/query', format: (v) => fmt(v) },
      { key: 'overhead', header: 'cost of the check' },
    ],
    { title: 'Interleaved in one process (query by query)' },
  );
  const path = writeResults('storage-verified', result);
  log(`wrote ${path}`);
}

async function phaseOpen() {
  const { SparseTensor } = await lib();
  const out = { baseline: memory(), runs: [] };
  const run = async (label, cold, verify) => {
    if (cold) dropCache(FILE);
    const t0 = nowMs();
    const t = await SparseTensor.openFile(FILE, { verify });
    const ms = nowMs() - t0;
    const mem = memory();
    const info = t.file;
    t.close();
    log(`open ${label}: ${fmt(ms)} ms`);
    out.runs.push({ label, cold, verify, ms, memory: mem, verified: info.verified });
  };
  await run('cold, no root check', true, false);
  await run('warm, no root check', false, false);
  await run('cold, root check', true, true);
  await run('warm, root check', false, true);
  process.stdout.write(JSON.stringify(out));
}

// ------------------------------------------------------------------ parent

function child(phaseName) {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [process.argv[1], `--phase=${phaseName}`, ...process.argv.slice(2).filter((a) => !a.startsWith('--phase='))], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    c.stdout.on('data', (b) => (out += b));
    c.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`phase ${phaseName} exited with ${code}`))));
  });
}

async function main() {
  const { SparseTensor, simdInfo } = await lib();
  mkdirSync(DIR, { recursive: true });
  const started = new Date().toISOString();
  const contention = { otherProcesses: otherProcesses(), cpuHogs: cpuHogs() };
  const result = {
    name: 'storage',
    date: started,
    machine: machine({ simd: simdInfo() }),
    parameters: { rows: N, dim: D, subKeys: SUB, k: K, batch: BATCH, secondsPerPhase: SECONDS, file: FILE, optimizerState: true },
    contention,
  };
  let createMs = null;
  if (flag('recreate') || !existsSync(FILE)) {
    rmSync(FILE, { force: true });
    rmSync(`${FILE}.wal`, { force: true });
    log(`creating ${FILE} (${fmtBytes(N * D * 4)} of values)`);
    const t0 = nowMs();
    await SparseTensor.createFile(FILE, { rows: N, dim: D, seed: 1, scale: 0.05, optimizerState: true });
    createMs = nowMs() - t0;
    log(`created in ${fmt(createMs / 1000)} s`);
  }
  const st = statSync(FILE);
  const du = spawnSync('du', ['-B1', FILE], { encoding: 'utf8' }).stdout.split(/\s+/)[0];
  result.file = { apparentBytes: st.size, diskBytes: Number(du), valuesBytes: N * D * 4, createMs };
  log('phase work');
  result.work = await child('work');
  log('phase open');
  result.open = await child('open');
  result.contentionAfter = { otherProcesses: otherProcesses(), cpuHogs: cpuHogs(), loadavg: machine().loadavg };

  const w = result.work;
  const fileBytes = N * D * 4;
  const summary = [
    { what: 'values in the file', value: fmtBytes(fileBytes) },
    { what: 'file (apparent / on disk)', value: `${fmtBytes(st.size)} / ${fmtBytes(Number(du))}` },
    { what: 'create (fill + tree + fsync)', value: createMs === null ? 'reused' : `${fmt(createMs / 1000)} s` },
    { what: 'open, clean file, no root check', value: `${fmt(w.openMs)} ms` },
    { what: `search q/s (pk top-${K} + gather), cold cache`, value: fmt(w.searchCold.qps) },
    {
      what: `training steps/s, cold (batch ${BATCH}, ~${Math.round(w.train.distinctRowsPerStep)} rows/step, checkpoint every ${CKPT_EVERY})`,
      value: `${fmt(w.train.stepsPerSec)} (${fmt((100 * w.train.checkpointAndCompactMs) / w.train.ms)}% of the time in checkpoints + compaction)`,
    },
    ...(w.searchWarm
      ? [
          { what: 'search q/s, file in page cache', value: fmt(w.searchWarm.qps) },
          {
            what: 'training steps/s, file in page cache',
            value: `${fmt(w.trainWarm.stepsPerSec)} (${fmt((100 * w.trainWarm.checkpointAndCompactMs) / w.trainWarm.ms)}% in checkpoints + compaction)`,
          },
          { what: '  VmRSS after it (peak while training)', value: `${fmtBytes(w.trainWarm.after.VmRSS)} (${fmtBytes(w.trainWarm.maxVmRSS)})` },
          { what: '  peak RssAnon while training (private page copies)', value: fmtBytes(w.trainWarm.maxRssAnon) },
        ]
      : []),
    { what: 'VmRSS after cold search + training', value: `${fmtBytes(w.afterTrain.VmRSS)} (${fmt((100 * w.afterTrain.VmRSS) / fileBytes)}% of the values)` },
    { what: '  peak VmRSS while training', value: `${fmtBytes(w.train.maxVmRSS)} (${fmt((100 * w.train.maxVmRSS) / fileBytes)}%)` },
    { what: '  peak RssAnon while training', value: fmtBytes(w.train.maxRssAnon) },
    { what: '  RssAnon / RssFile', value: `${fmtBytes(w.afterTrain.RssAnon)} / ${fmtBytes(w.afterTrain.RssFile)}` },
    { what: '  baseline VmRSS (node + addon, before open)', value: fmtBytes(w.baseline.VmRSS) },
  ];
  table(summary, ['what', { key: 'value', align: 'left' }], { title: `Tensor file ${N} x ${D} f32` });
  table(
    w.checkpoints,
    [
      { key: 'rows', header: 'rows stepped' },
      { key: 'distinct', header: 'distinct' },
      { key: 'recordBytes', header: 'log record', format: (v) => fmtBytes(v) },
      { key: 'checkpointMs', header: 'checkpoint ms', format: (v) => fmt(v) },
      { key: 'compactMs', header: 'compact ms', format: (v) => fmt(v) },
    ],
    { title: 'Checkpoint and compaction time against rows touched (median of 3; 1 run at 100,000)' },
  );
  table(
    result.open.runs,
    [
      { key: 'label', header: 'open' },
      { key: 'ms', header: 'ms', format: (v) => fmt(v) },
      { key: 'memory', header: 'VmRSS after', format: (v) => fmtBytes(v.VmRSS) },
      { key: 'memory', header: 'RssFile', format: (v) => fmtBytes(v.RssFile) },
    ],
    { title: 'Open time' },
  );
  const path = writeResults('storage', result);
  log(`wrote ${path}`);
  if (!flag('keep') && !arg('dir', '')) log(`(the file stays in ${DIR} for a re-run; delete it or pass --recreate)`);
}

if (phase === 'work') await phaseWork();
else if (phase === 'open') await phaseOpen();
else if (phase === 'reads') await phaseReads();
else if (phase === 'interleaved') await phaseInterleaved();
else if (VERIFIED) await verifiedMain();
else await main();
void CORES;
void round;
