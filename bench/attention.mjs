#!/usr/bin/env node
/**
 * SparseSelfAttention: top-k (k = 32) against dense attention, forward + backward time
 * and peak memory, n = 1k .. 64k, d_model = 256, 4 heads (head dim 64), in one run.
 *
 *   node --expose-gc bench/attention.mjs                 n = 1k, 2k, ..., 64k (~15-25 min on 2 shared cores)
 *   node --expose-gc bench/attention.mjs --max-n=8192    stop at n = 8k (a minute or two)
 *   --repeats=R      alternating rounds per n (default 3; 1 once dense takes over a minute)
 *   --projections    also: the layer with dense Projection q/k/v/o (256 x 256 SparseTensors), n = 1k..4k
 *   --replot         re-print the tables and redraw bench/results/attention.svg from bench/results/attention.json (no run)
 *   --name=NAME      write (or --replot) bench/results/NAME.json and NAME.svg instead of attention.*
 *
 * What is measured: the attention core only, no projections (SparseSelfAttention without
 * query/key/value/output, so Q = K = V = X), non-causal. X (n x 256) and the upstream
 * gradient dY (n x 256) are uniform [-1, 1) from the seeded generator (seed depends on n
 * only: both modes see the same data). One pass = layer.forward(X, 256) then
 * layer.backward(ctx, dY), through the public API (JS input checks, copies into and out
 * of the addon, the native kernels on the default thread count).
 *
 * Every pass runs in a child process (this file with --child), so each mode's memory is
 * its own: the child generates the data, does a warm-up pass at n = 256, collects garbage,
 * reads its RSS, runs the measured pass and reports its peak RSS (ru_maxrss, via
 * process.resourceUsage().maxRSS) minus that RSS: the extra memory a pass needs beyond
 * its inputs. For n <= 4k the child then repeats the pass for more time samples (~2 s).
 * The modes are interleaved: per n, `repeats` rounds of (sparse child, dense child), the
 * order flipped every round, so both see the same background load. Time = median of all
 * samples of a mode; memory = median over its children.
 *
 * Also reported: the analytic bytes each mode keeps between forward and backward (sparse:
 * ids + weights, H n k (4 + 4) B; dense: the log-sum-exp, H n 4 B; both keep X and the
 * attention output O, 2 n d 4 B) and the log-log slope of measured memory against n
 * (1 = linear, 2 = quadratic). Progress to stderr; tables to stdout; bench/results/
 * attention.json is rewritten after every n (a partial run keeps its figures) and
 * bench/results/attention.svg is redrawn with it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { CORES, RESULTS_DIR, ROOT, cpuHogs, fmt, fmtBytes, logger, machine, nowMs, otherProcesses, randomFloats, resultName, rng, round, stats, table, tryGc, writeResults } from './lib/common.mjs';

const RESULT_NAME = resultName('attention'); // --name=NAME writes bench/results/NAME.json and NAME.svg

const THIS_FILE = fileURLToPath(import.meta.url);
const argv = process.argv.slice(2);
const CHILD = argv.indexOf('--child');

function intArg(name, fallback) {
  const a = argv.find((x) => x.startsWith(`--${name}=`));
  if (!a) return fallback;
  const v = Number(a.slice(name.length + 3));
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} must be a positive integer, got ${a}`);
  return v;
}

const P = {
  ns: [1024, 2048, 4096, 8192, 16384, 32768, 65536].filter((n) => n <= intArg('max-n', 65536)),
  dModel: 256,
  heads: 4,
  k: 32,
  causal: false,
  repeats: intArg('repeats', 3),
  projections: argv.includes('--projections'),
  projectionNs: [1024, 2048, 4096],
  seed: 0xa77e,
  inChildBudgetMs: 2000, // extra passes in a child, n <= inChildMaxN
  inChildMaxN: 4096,
  inChildMaxReps: 10,
  oneRoundAboveMs: 60_000, // one round per n once a dense pass took longer than this
  childTimeoutSec: 3600,
};
const SVG_FILE = join(RESULTS_DIR, `${RESULT_NAME}.svg`);
const MODES = ['sparse', 'dense'];

// ================================================================ child: one pass (or a few) of one mode at one n

if (CHILD >= 0) {
  const mode = argv[CHILD + 1];
  const n = Number(argv[CHILD + 2]);
  const proj = argv.includes('--proj');
  const out = argv[argv.indexOf('--out') + 1];
  const log = logger(`attention ${mode} n=${n}${proj ? ' +proj' : ''}`);
  try {
    writeFileSync(out, JSON.stringify({ ok: true, ...(await child(mode, n, proj, log)) }));
  } catch (err) {
    log(`FAILED: ${err?.stack ?? err}`);
    writeFileSync(out, JSON.stringify({ ok: false, mode, n, error: String(err?.message ?? err) }));
  }
  process.exit(0);
}

async function child(mode, n, proj, log) {
  const { SparseSelfAttention, Projection, SparseTensor } = await import(join(ROOT, 'dist/index.js'));
  const d = P.dModel;
  const rand = rng(P.seed + n);
  const makeLayer = () => {
    if (!proj) return new SparseSelfAttention({ heads: P.heads, k: P.k, mode, causal: P.causal });
    // dense projections 256 x 256, the same initial weights in both modes
    const wr = rng(P.seed + 17);
    const W = () => new Projection({ weight: SparseTensor.fromArray(randomFloats(wr, d * d, 1 / Math.sqrt(d)), d), mode: 'dense' });
    return new SparseSelfAttention({ heads: P.heads, k: P.k, mode, causal: P.causal, query: W(), key: W(), value: W(), output: W() });
  };
  const layer = makeLayer();
  const pass = async (x, dy) => {
    const t0 = nowMs();
    const f = await layer.forward(x, d);
    const t1 = nowMs();
    await layer.backward(f.ctx, dy);
    const t2 = nowMs();
    return { fwdMs: t1 - t0, bwdMs: t2 - t1, ms: t2 - t0 };
  };
  // warm-up at n = 256 (addon load, worker threads, JIT)
  {
    const wr = rng(1);
    await pass(randomFloats(wr, 256 * d), randomFloats(wr, 256 * d));
  }
  const tg = nowMs();
  const x = randomFloats(rand, n * d);
  const dy = randomFloats(rand, n * d);
  const dataGenMs = nowMs() - tg;
  tryGc();
  const rssBefore = process.memoryUsage().rss;
  const maxBefore = process.resourceUsage().maxRSS * 1024;
  const first = await pass(x, dy);
  const maxAfter = process.resourceUsage().maxRSS * 1024;
  const samples = [first];
  if (n <= P.inChildMaxN) {
    let spent = first.ms;
    while (samples.length < P.inChildMaxReps && spent < P.inChildBudgetMs) {
      tryGc();
      const s = await pass(x, dy);
      samples.push(s);
      spent += s.ms;
    }
  }
  log(`${samples.map((s) => `${(s.ms / 1e3).toFixed(2)} s`).join(', ')}; peak - before ${fmtBytes(maxAfter - rssBefore)}`);
  return {
    mode,
    n,
    proj,
    samples: samples.map((s) => ({ fwdMs: round(s.fwdMs), bwdMs: round(s.bwdMs), ms: round(s.ms) })),
    rssBeforeBytes: rssBefore,
    maxRssBeforeBytes: maxBefore,
    maxRssAfterBytes: maxAfter,
    // the pass's own peak: ru_maxrss after it - RSS before it (inputs X, dY already counted in "before")
    peakDeltaBytes: maxAfter - rssBefore,
    // false: the process peak before the pass was higher than after it (the delta is then a lower bound)
    peakRaisedByPass: maxAfter > maxBefore,
    dataGenMs: round(dataGenMs),
    gc: typeof globalThis.gc === 'function',
    loadavg: os.loadavg().map((v) => round(v, 3)),
  };
}

// ================================================================ parent

const log = logger('attention');

if (argv.includes('--replot')) {
  const res = JSON.parse(readFileSync(join(RESULTS_DIR, `${RESULT_NAME}.json`), 'utf8'));
  printTables(res);
  writeFileSync(SVG_FILE, plot(res));
  log(`wrote ${SVG_FILE} from the existing JSON`);
  process.exit(0);
}

const tmp = mkdtempSync(join(os.tmpdir(), 'gt-bench-attention-'));
let childNo = 0;

/** Runs one child; resolves to its result (ok: false when it failed), with the processes seen meanwhile. */
function runChild(mode, n, proj) {
  const out = join(tmp, `r${childNo++}.json`);
  const args = ['--expose-gc', THIS_FILE, '--child', mode, String(n), '--out', out, ...(proj ? ['--proj'] : [])];
  const seen = new Set();
  const t = nowMs();
  return new Promise((resolve) => {
    const c = spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit'], cwd: ROOT });
    const others = () => otherProcesses({ exclude: [THIS_FILE, 'bench/attention.mjs'] }).forEach((l) => seen.add(l));
    others();
    const sampler = setInterval(others, 5000);
    const timer = setTimeout(() => {
      log(`${mode} n=${n}: over ${P.childTimeoutSec} s, killing child ${c.pid}`);
      c.kill('SIGKILL');
    }, P.childTimeoutSec * 1000);
    c.on('exit', (code, signal) => {
      clearTimeout(timer);
      clearInterval(sampler);
      let r;
      try {
        r = JSON.parse(readFileSync(out, 'utf8'));
      } catch {
        r = { ok: false, mode, n, error: `child exited (code ${code}, signal ${signal}) without a result` };
      }
      r.wallSec = round((nowMs() - t) / 1e3);
      r.othersDuring = [...seen];
      resolve(r);
    });
  });
}

const median = (a) => (a.length ? stats(a).median : null);

/** Summary of one (n, variant) from its children. */
function summarize(n, children, proj) {
  const row = { n, proj };
  for (const m of MODES) {
    const ok = children.filter((c) => c.mode === m && c.ok);
    const all = ok.flatMap((c) => c.samples);
    row[m] = {
      children: ok.length,
      failed: children.filter((c) => c.mode === m && !c.ok).map((c) => c.error),
      samples: all.length,
      ms: round(median(all.map((s) => s.ms))),
      fwdMs: round(median(all.map((s) => s.fwdMs))),
      bwdMs: round(median(all.map((s) => s.bwdMs))),
      minMs: all.length ? round(Math.min(...all.map((s) => s.ms))) : null,
      maxMs: all.length ? round(Math.max(...all.map((s) => s.ms))) : null,
      peakDeltaBytes: median(ok.map((c) => c.peakDeltaBytes)),
      peakDeltaAllBytes: ok.map((c) => c.peakDeltaBytes),
      peakRaisedByPass: ok.every((c) => c.peakRaisedByPass),
      rssBeforeBytes: median(ok.map((c) => c.rssBeforeBytes)),
    };
  }
  const H = P.heads, d = P.dModel, k = P.k;
  row.analytic = {
    sparseStateBytes: H * n * k * 8,
    denseStateBytes: H * n * 4,
    inputsBytes: 2 * n * d * 4, // X and O (Q = K = V = X without projections)
    sparseCtxBytes: H * n * k * 8 + 2 * n * d * 4,
    denseCtxBytes: H * n * 4 + 2 * n * d * 4,
  };
  // multiply-adds x 2: dense fwd QK^T + PV = 4 n^2 d, bwd (scores again, dP, dV, dK, dQ) = 10 n^2 d;
  // sparse fwd = the full score scan 2 n^2 d (+ heaps) + 2 n k d, bwd = 8 n k d
  const f = { dense: 14 * n * n * d, sparse: 2 * n * n * d + 10 * n * k * d };
  for (const m of MODES) row[m].gflops = row[m].ms ? round(f[m] / (row[m].ms * 1e6), 3) : null;
  row.ratio = row.sparse.ms && row.dense.ms ? round(row.dense.ms / row.sparse.ms, 3) : null;
  row.memRatio = row.sparse.peakDeltaBytes && row.dense.peakDeltaBytes ? round(row.dense.peakDeltaBytes / row.sparse.peakDeltaBytes, 3) : null;
  row.othersDuring = [...new Set(children.flatMap((c) => c.othersDuring ?? []))];
  row.wallSec = round(children.reduce((a, c) => a + c.wallSec, 0));
  row.order = children.map((c) => c.mode);
  return row;
}

/** Least-squares slope of log(y) against log(n) over the points with n >= minN. */
function slope(rows, get, minN = 0) {
  const pts = rows.filter((r) => r.n >= minN && get(r) > 0).map((r) => [Math.log(r.n), Math.log(get(r))]);
  if (pts.length < 2) return null;
  const mx = pts.reduce((a, p) => a + p[0], 0) / pts.length;
  const my = pts.reduce((a, p) => a + p[1], 0) / pts.length;
  const s = pts.reduce((a, p) => a + (p[0] - mx) * (p[1] - my), 0) / pts.reduce((a, p) => a + (p[0] - mx) ** 2, 0);
  return { slope: round(s, 3), over: pts.map((p) => Math.round(Math.exp(p[0]))) };
}

const results = {
  name: RESULT_NAME,
  date: new Date().toISOString(),
  command: ['node --expose-gc bench/attention.mjs', ...argv].join(' '),
  machine: machine(),
  parameters: {
    ...P,
    what:
      'the attention core: SparseSelfAttention without projections (Q = K = V = X), non-causal, forward(X, 256) + backward(ctx, dY) through the public API, ' +
      'X and dY uniform [-1, 1) from the seeded generator (seed + n)',
    memory:
      'peakDeltaBytes = the child process\'s ru_maxrss after its first measured pass - its RSS just before (after a warm-up pass at n = 256 and gc; X and dY already allocated)',
    interleaving: 'per n, `repeats` rounds of (sparse child, dense child), order flipped each round; one round once a dense pass took > 60 s',
    units: { ms: 'milliseconds (median over samples)', bytes: 'bytes', gflops: '1e9 flops / s, 2 per multiply-add, counted as in summarize()' },
  },
  otherProcessesAtStart: otherProcesses({ exclude: ['bench/attention.mjs'] }),
  cpuHogsAtStart: cpuHogs(),
  rows: [],
  projectionRows: [],
  checks: {},
  complete: false,
};
const t0All = nowMs();

function finish() {
  const rows = results.rows;
  results.checks = {
    memorySlope: {
      sparse: slope(rows, (r) => r.sparse.peakDeltaBytes, 4096),
      dense: slope(rows, (r) => r.dense.peakDeltaBytes, 4096),
      sparseAll: slope(rows, (r) => r.sparse.peakDeltaBytes),
      denseAll: slope(rows, (r) => r.dense.peakDeltaBytes),
      note: 'log-log least-squares slope of the measured peak delta vs n (over n >= 4k, and over all n): 1 = linear, 2 = quadratic',
    },
    timeSlope: {
      sparse: slope(rows, (r) => r.sparse.ms, 4096),
      dense: slope(rows, (r) => r.dense.ms, 4096),
      note: 'log-log slope of forward+backward time vs n over n >= 4k',
    },
    sparseFasterFrom4k: rows.filter((r) => r.n >= 4096).length ? rows.filter((r) => r.n >= 4096).every((r) => r.ratio > 1) : null,
    ratioByN: Object.fromEntries(rows.map((r) => [r.n, r.ratio])),
  };
  results.elapsedSec = round((nowMs() - t0All) / 1e3);
  results.loadavgEnd = os.loadavg().map((v) => round(v, 3));
  writeResults(RESULT_NAME, results);
  writeFileSync(SVG_FILE, plot(results));
}

log(`n = ${P.ns.join(', ')}; d_model ${P.dModel}, ${P.heads} heads, k ${P.k}; ${P.repeats} rounds per n (1 once dense > 60 s); ${CORES} cores`);
const others0 = results.otherProcessesAtStart;
if (others0.length) log(`other processes: ${others0.join(' | ')}`);
let lastDenseMs = 0;
for (const n of P.ns) {
  const rounds = lastDenseMs * 4 > P.oneRoundAboveMs ? 1 : P.repeats;
  const children = [];
  for (let r = 0; r < rounds; r++) {
    for (const m of r % 2 === 0 ? MODES : [...MODES].reverse()) {
      log(`n=${n} round ${r + 1}/${rounds}: ${m} ...${m === 'dense' && lastDenseMs ? ` (expect ~${fmt((lastDenseMs * 4) / 1e3)} s)` : ''}`);
      const c = await runChild(m, n, false);
      if (!c.ok) log(`  ${m} n=${n} FAILED: ${c.error}`);
      children.push(c);
    }
  }
  const row = summarize(n, children, false);
  results.rows.push(row);
  lastDenseMs = row.dense.ms ?? lastDenseMs * 4;
  log(
    `n=${n}: sparse ${fmt(row.sparse.ms)} ms, dense ${fmt(row.dense.ms)} ms, dense/sparse ${fmt(row.ratio)}; ` +
      `peak delta sparse ${fmtBytes(row.sparse.peakDeltaBytes ?? 0)}, dense ${fmtBytes(row.dense.peakDeltaBytes ?? 0)}; elapsed ${fmt((nowMs() - t0All) / 1e3)} s`,
  );
  finish();
}

if (P.projections) {
  for (const n of P.projectionNs) {
    const children = [];
    for (let r = 0; r < P.repeats; r++) for (const m of r % 2 === 0 ? MODES : [...MODES].reverse()) children.push(await runChild(m, n, true));
    const row = summarize(n, children, true);
    results.projectionRows.push(row);
    log(`+proj n=${n}: sparse ${fmt(row.sparse.ms)} ms, dense ${fmt(row.dense.ms)} ms, dense/sparse ${fmt(row.ratio)}`);
    finish();
  }
}
results.complete = true;
finish();
rmSync(tmp, { recursive: true, force: true });

printTables(results);
log(`done in ${results.elapsedSec} s; wrote ${join(RESULTS_DIR, `${RESULT_NAME}.json`)} and ${SVG_FILE}`);

// ---------------------------------------------------------------- tables

/** Prints the tables of a results object (this run's, or the JSON's with --replot). */
function printTables(res) {

  const mib = (b) => (b === null || b === undefined ? '-' : fmt(b / 2 ** 20));
  const timeCols = [
    { key: 'n', header: 'n' },
    { key: 'sMs', header: 'sparse ms' },
    { key: 'sFb', header: '(fwd / bwd)' },
    { key: 'dMs', header: 'dense ms' },
    { key: 'dFb', header: '(fwd / bwd)' },
    { key: 'ratio', header: 'dense/sparse' },
    { key: 'samples', header: 'samples s/d' },
    { key: 'sMem', header: 'sparse peak MiB' },
    { key: 'dMem', header: 'dense peak MiB' },
    { key: 'sAn', header: 'sparse keeps MiB' },
    { key: 'dAn', header: 'dense keeps MiB' },
    { key: 'gf', header: 'dense GFLOP/s' },
  ];
  const toRow = (r) => ({
    n: r.n,
    sMs: r.sparse.ms,
    sFb: `${fmt(r.sparse.fwdMs)} / ${fmt(r.sparse.bwdMs)}`,
    dMs: r.dense.ms,
    dFb: `${fmt(r.dense.fwdMs)} / ${fmt(r.dense.bwdMs)}`,
    ratio: r.ratio,
    samples: `${r.sparse.samples}/${r.dense.samples}`,
    sMem: mib(r.sparse.peakDeltaBytes),
    dMem: mib(r.dense.peakDeltaBytes),
    sAn: `${mib(r.analytic.sparseStateBytes)} + ${mib(r.analytic.inputsBytes)}`,
    dAn: `${mib(r.analytic.denseStateBytes)} + ${mib(r.analytic.inputsBytes)}`,
    gf: r.dense.gflops,
  });
  const ms = res.checks.memorySlope;
    const others = (r) => {
      const cmds = [...new Set(r.othersDuring.map((l) => l.replace(/^\d+ /, '').split(' ').slice(0, 4).join(' ')))];
      return `! n=${r.n} shared the machine with ${r.othersDuring.length} other processes, e.g. ${cmds.slice(0, 3).join(' | ')} (all in the JSON)`;
    };
  table(res.rows.map(toRow), timeCols, {
    title: `1. Attention core forward + backward, sparse (top-${res.parameters.k}) vs dense (d_model ${res.parameters.dModel}, ${res.parameters.heads} heads, no projections)`,
    notes: [
      'ms: median over all samples (children x passes); modes interleaved per n, each pass in its own child process.',
      'peak MiB: child ru_maxrss after the first pass - its RSS before it (X and dY already allocated); the pass\'s working set.',
      'keeps: analytic bytes held between forward and backward: sparse ids + weights (H n k 8 B) + X and O (2 n d 4 B); dense lse (H n 4 B) + X and O.',
      `memory slope (log-log, n >= 4k): sparse ${ms.sparse?.slope ?? 'n/a'}, dense ${ms.dense?.slope ?? 'n/a'}; over all n: sparse ${ms.sparseAll?.slope ?? 'n/a'}, dense ${ms.denseAll?.slope ?? 'n/a'}`,
      `time slope (n >= 4k): sparse ${res.checks.timeSlope.sparse?.slope ?? 'n/a'}, dense ${res.checks.timeSlope.dense?.slope ?? 'n/a'}; sparse faster at every n >= 4k: ${fmt(res.checks.sparseFasterFrom4k)}`,
      ...res.rows.filter((r) => r.othersDuring.length).map(others),
    ],
  });
  if (res.projectionRows.length)
    table(res.projectionRows.map(toRow), timeCols, {
      title: '2. With dense Projection q/k/v/o (256 x 256 SparseTensors, JS + native linear kernels)',
      notes: ['same protocol; keeps excludes the projections\' contexts (each keeps its input); GFLOP/s counts the attention core\'s flops only'],
    });
}

// ---------------------------------------------------------------- the plot

/** Two log-log panels: forward+backward time vs n and peak memory vs n, both modes. */
function plot(res) {
  const rows = res.rows;
  const W = 920, H = 420;
  const colors = { sparse: '#1b9e77', dense: '#d95f02' };
  const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  const o = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`];
  o.push(`<rect width="100%" height="100%" fill="white"/>`);
  o.push(`<text x="16" y="20" font-size="14" font-weight="bold">SparseSelfAttention: top-${res.parameters.k} vs dense, forward + backward (log-log)</text>`);
  o.push(
    `<text x="16" y="36" fill="#555">d_model ${res.parameters.dModel}, ${res.parameters.heads} heads, no projections; ${esc(res.machine.cpuModel)}, ${res.machine.cores} cores; ${res.date.slice(0, 10)}${res.complete ? '' : ' (partial run)'}</text>`,
  );
  const panel = (x0, title, yLabel, get, unit) => {
    const L = x0 + 70, R = x0 + 430, T = 64, B = H - 64;
    const pts = Object.fromEntries(MODES.map((m) => [m, rows.filter((r) => get(r, m) > 0).map((r) => [r.n, get(r, m)])]));
    const ys = MODES.flatMap((m) => pts[m].map((p) => p[1]));
    if (!ys.length) return;
    const yLo = Math.floor(Math.log10(Math.min(...ys))), yHi = Math.max(yLo + 1, Math.ceil(Math.log10(Math.max(...ys))));
    const ns = res.parameters.ns;
    const xLo = Math.log2(ns[0]), xHi = Math.max(xLo + 1, Math.log2(ns.at(-1)));
    const X = (n) => L + ((Math.log2(n) - xLo) / (xHi - xLo)) * (R - L);
    const Y = (v) => T + ((yHi - Math.log10(v)) / (yHi - yLo)) * (B - T);
    o.push(`<text x="${(L + R) / 2}" y="${T - 10}" text-anchor="middle" font-size="12" font-weight="bold">${esc(title)}</text>`);
    for (let p = yLo; p <= yHi; p++) {
      o.push(`<line x1="${L}" x2="${R}" y1="${Y(10 ** p)}" y2="${Y(10 ** p)}" stroke="#ddd"/>`);
      o.push(`<text x="${L - 6}" y="${Y(10 ** p) + 4}" text-anchor="end">${esc(unit(10 ** p))}</text>`);
      if (p < yHi) for (let mm = 2; mm < 10; mm++) o.push(`<line x1="${L}" x2="${L + 4}" y1="${Y(mm * 10 ** p).toFixed(1)}" y2="${Y(mm * 10 ** p).toFixed(1)}" stroke="#999"/>`);
    }
    for (const n of ns) {
      o.push(`<line x1="${X(n)}" x2="${X(n)}" y1="${T}" y2="${B}" stroke="#f0f0f0"/>`);
      o.push(`<text x="${X(n)}" y="${B + 16}" text-anchor="middle">${n >= 1024 ? `${n / 1024}k` : n}</text>`);
    }
    o.push(`<rect x="${L}" y="${T}" width="${R - L}" height="${B - T}" fill="none" stroke="#333"/>`);
    o.push(`<text x="${(L + R) / 2}" y="${B + 34}" text-anchor="middle">sequence length n</text>`);
    o.push(`<text transform="translate(${x0 + 16} ${(T + B) / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`);
    for (const m of MODES) {
      if (!pts[m].length) continue;
      o.push(`<polyline fill="none" stroke="${colors[m]}" stroke-width="2" points="${pts[m].map(([n, v]) => `${X(n).toFixed(1)},${Y(v).toFixed(1)}`).join(' ')}"/>`);
      for (const [n, v] of pts[m]) o.push(`<circle cx="${X(n).toFixed(1)}" cy="${Y(v).toFixed(1)}" r="3" fill="${colors[m]}"><title>${m} n=${n}: ${esc(unit(v, true))}</title></circle>`);
    }
    // reference slopes from the first sparse point: linear and quadratic
    const s0 = pts.sparse[0] ?? pts.dense[0];
    if (s0) {
      for (const [e, dash] of [[1, '2 3'], [2, '7 4']]) {
        // v = v0 (n / n0)^e up to the last n or the top of the panel, whichever comes first
        const nEnd = Math.min(ns.at(-1), s0[0] * (10 ** yHi / s0[1]) ** (1 / e));
        const v1 = s0[1] * (nEnd / s0[0]) ** e;
        o.push(`<line x1="${X(s0[0]).toFixed(1)}" y1="${Y(s0[1]).toFixed(1)}" x2="${X(nEnd).toFixed(1)}" y2="${Y(v1).toFixed(1)}" stroke="#999" stroke-dasharray="${dash}"/>`);
      }
    }
    const sl = get === getMem ? res.checks?.memorySlope : res.checks?.timeSlope;
    MODES.forEach((m, i) => {
      const ly = T + 14 + i * 16;
      o.push(`<line x1="${L + 10}" x2="${L + 34}" y1="${ly - 4}" y2="${ly - 4}" stroke="${colors[m]}" stroke-width="2"/>`);
      o.push(`<text x="${L + 40}" y="${ly}">${m === 'sparse' ? `top-${res.parameters.k}` : 'dense'}${sl?.[m] ? ` (slope ${sl[m].slope} for n &gt;= 4k)` : ''}</text>`);
    });
    o.push(`<text x="${L + 10}" y="${T + 14 + 2 * 16}" fill="#777">grey dotted / dashed: slope 1 / 2 from the first point</text>`);
  };
  const getTime = (r, m) => r[m].ms;
  const getMem = (r, m) => (r[m].peakDeltaBytes ?? 0) / 2 ** 20;
  const fmtTime = (v) => (v >= 1000 ? `${round(v / 1000, 3)} s` : `${round(v, 3)} ms`);
  const fmtMem = (v) => (v >= 1024 ? `${round(v / 1024, 3)} GiB` : `${round(v, 3)} MiB`);
  panel(0, 'forward + backward time (median)', 'time', getTime, fmtTime);
  panel(460, 'peak memory of a pass (child ru_maxrss - RSS before)', 'memory', getMem, fmtMem);
  o.push(`<text x="16" y="${H - 8}" fill="#555" font-size="10">${esc(res.command)}</text>`);
  o.push('</svg>');
  return o.join('\n') + '\n';
}
