/**
 * Shared helpers for the benchmarks in bench/: machine description, seeded random
 * data, timing and statistics, a plain-text table printer, and writing
 * bench/results/<name>.json.
 *
 * Conventions: tables go to stdout, progress to stderr (`logger(tag)`), JSON figures
 * are numbers (never formatted strings), GB/s are decimal (1e9 bytes / s).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (the directory holding package.json). */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Directory the results JSON files are written to. */
export const RESULTS_DIR = join(ROOT, 'bench', 'results');

/** Cores usable by this process (os.availableParallelism where available). */
export const CORES = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;

// ---------------------------------------------------------------- progress and time

/** A function writing `[tag] message` lines to stderr. */
export function logger(tag) {
  return (msg) => process.stderr.write(`[${tag}] ${msg}\n`);
}

/** Monotonic milliseconds (fractional). */
export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/** Runs `globalThis.gc` when node was started with --expose-gc; returns whether it ran. */
export function tryGc() {
  if (typeof globalThis.gc === 'function') {
    globalThis.gc();
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- random data

// rng (mulberry32) and gaussian (Box-Muller) live with the examples, which the package ships.
export { gaussian, rng } from '../../examples/lib/random.mjs';

/**
 * Fills `out` (a Float32Array, or a new one of length `out` when given a number) with
 * uniform values in [-scale, scale) from `rand`. Calls onProgress(fraction) every few
 * hundred million values when given.
 */
export function randomFloats(rand, out, scale = 1, onProgress) {
  const a = typeof out === 'number' ? new Float32Array(out) : out;
  const step = 2 ** 27;
  for (let s = 0; s < a.length; s += step) {
    const e = Math.min(a.length, s + step);
    for (let i = s; i < e; i++) a[i] = (rand() * 2 - 1) * scale;
    if (onProgress && e < a.length) onProgress(e / a.length);
  }
  return a;
}

// ---------------------------------------------------------------- statistics

export function quantile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** median, p10, p90, min, max and count of an array of numbers. */
export function stats(samples) {
  const s = [...samples].sort((a, b) => a - b);
  return {
    median: quantile(s, 0.5),
    p10: quantile(s, 0.1),
    p90: quantile(s, 0.9),
    min: s[0],
    max: s[s.length - 1],
    reps: s.length,
  };
}

/** x rounded to `digits` significant digits (non-finite values pass through). */
export const round = (x, digits = 4) => (Number.isFinite(x) ? Number(x.toPrecision(digits)) : x);

/**
 * Calls fn (sync or async) repeatedly and returns the per-call times in ms. `warm`
 * untimed calls first; then at least minReps calls, and more until budgetMs of timed
 * calls have passed (at most maxReps). With keepSlowWarm, a warm-up call slower than
 * keepSlowWarm ms is kept as a sample and ends the warm-up (for calls so long that
 * warm-up effects are negligible and a repeat is expensive).
 */
export async function sampleFor(fn, { budgetMs, minReps = 3, maxReps = 1e6, warm = 1, keepSlowWarm = Infinity }) {
  const samples = [];
  for (let i = 0; i < warm; i++) {
    const t = nowMs();
    await fn(i);
    const dt = nowMs() - t;
    if (dt > keepSlowWarm) {
      samples.push(dt);
      break;
    }
  }
  let spent = samples.reduce((a, b) => a + b, 0);
  while (samples.length < maxReps && (samples.length < minReps || spent < budgetMs)) {
    const t = nowMs();
    await fn(samples.length);
    const dt = nowMs() - t;
    samples.push(dt);
    spent += dt;
  }
  return samples;
}

// ---------------------------------------------------------------- formatting

/** A number for a table cell: grouped integers, `digits` significant digits, exponent when huge/tiny. */
export function fmt(x, digits = 3) {
  if (x === undefined || x === null) return '-';
  if (typeof x === 'string') return x;
  if (typeof x === 'boolean') return x ? 'yes' : 'no';
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e9 || a < 1e-3)) return x.toExponential(2);
  if (Number.isInteger(x)) return x.toLocaleString('en-US');
  return x.toLocaleString('en-US', { maximumSignificantDigits: digits, minimumSignificantDigits: Math.min(digits, 2) });
}

/** Bytes as a short binary size: 256 KiB, 512 MiB, 3.1 GiB. */
export function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number(v.toPrecision(3))} ${units[i]}`;
}

/** 1e4 -> "1e4", 100000 -> "1e5", 2 ** 20 -> "1,048,576". */
export function fmtCount(n) {
  const e = Math.log10(n);
  if (n >= 1e4 && Number.isInteger(e)) return `1e${e}`;
  return fmt(n);
}

/**
 * Prints (stdout) and returns a plain-text table.
 *
 * rows:    array of objects.
 * columns: array of a key string, or { key, header?, format?(value, row), align?: 'left' | 'right' }.
 *          The first column is left-aligned, the others right-aligned unless `align` says.
 * options: { title?, notes?: string[], print?: boolean (default true) }.
 */
export function table(rows, columns, { title, notes = [], print = true } = {}) {
  const cols = columns.map((c, j) => {
    const o = typeof c === 'string' ? { key: c } : c;
    return {
      key: o.key,
      header: o.header ?? o.key,
      format: o.format ?? ((v) => fmt(v)),
      align: o.align ?? (j === 0 ? 'left' : 'right'),
    };
  });
  const cells = rows.map((r) => cols.map((c) => String(c.format(r[c.key], r))));
  const widths = cols.map((c, j) => Math.max(c.header.length, ...cells.map((r) => r[j].length)));
  const line = (r) =>
    r
      .map((s, j) => (cols[j].align === 'left' ? s.padEnd(widths[j]) : s.padStart(widths[j])))
      .join('  ')
      .trimEnd();
  const out = [];
  if (title) out.push('', `## ${title}`, '');
  out.push(line(cols.map((c) => c.header)), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line));
  for (const n of notes) out.push(`  ${n}`);
  const text = out.join('\n');
  if (print) console.log(text);
  return text;
}

// ---------------------------------------------------------------- machine and results

/** CPU, cores, memory, platform and Node version; `extra` (e.g. { simd: simdInfo() }) is merged in. */
export function machine(extra = {}) {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model ?? 'unknown',
    cpuSpeedMHz: cpus[0]?.speed ?? null,
    cores: CORES,
    logicalCpus: cpus.length,
    memoryBytes: os.totalmem(),
    memoryGiB: round(os.totalmem() / 2 ** 30, 3),
    platform: process.platform,
    arch: process.arch,
    osRelease: os.release(),
    node: process.version,
    v8: process.versions.v8,
    // 1, 5, 15 min load averages when the run started (other load skews the figures)
    loadavg: os.loadavg().map((x) => round(x, 3)),
    ...extra,
  };
}

/**
 * The results name of this run: `--name=NAME` on the command line, else `dflt`. Lets a
 * re-run (at another GHOST_TENSOR_SIMD level, say) keep its own file beside the default.
 */
export function resultName(dflt) {
  const a = process.argv.find((x) => x.startsWith('--name='));
  const name = a === undefined ? dflt : a.slice('--name='.length);
  if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new Error(`--name: letters, digits, '.', '_' and '-' only, got ${JSON.stringify(name)}`);
  return name;
}

/** Writes `obj` as bench/results/<name>.json (pretty-printed) and returns the path. */
export function writeResults(name, obj) {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const file = join(RESULTS_DIR, `${name}.json`);
  writeFileSync(file, JSON.stringify(obj, null, 2) + '\n');
  return file;
}

/**
 * Other benchmark / compiler / test processes on this shared machine (`pgrep -af
 * pattern`), this process and lines containing any of `exclude` left out, each line
 * cut to `maxLength` characters.
 */
export function otherProcesses({ pattern = 'bench/|cc1plus|vitest', exclude = [], maxLength = 160 } = {}) {
  const r = spawnSync('pgrep', ['-af', pattern], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .filter((l) => l && !l.startsWith(`${process.pid} `) && !exclude.some((x) => l.includes(x)))
    .map((l) => (l.length > maxLength ? l.slice(0, maxLength) + '...' : l));
}

/** Other processes using CPU (ps %CPU = average over each one's lifetime, > 5%), this process excluded. */
export function cpuHogs() {
  const r = spawnSync('ps', ['-eo', 'pid=,pcpu=,etime=,args=', '--sort=-pcpu'], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && Number(l.split(/\s+/)[1]) > 5 && Number(l.split(/\s+/)[0]) !== process.pid && !l.includes(' ps -eo '))
    .slice(0, 6)
    .map((l) => (l.length > 120 ? l.slice(0, 120) + '...' : l));
}
