#!/usr/bin/env node
/**
 * Merkle tree build against raw BLAKE3, one thread, at every BLAKE3 SIMD level this
 * machine runs (issue 24, item 6).
 *
 *   nice -n 5 node bench/merkle-build.mjs            256 MiB of rows per d, d = 64, 256, 784
 *   node bench/merkle-build.mjs --quick              32 MiB, fewer repetitions
 *   node bench/merkle-build.mjs --levels=avx2,sse41  only these levels
 *
 * BLAKE3 picks its level at run time from the CPU (blake3_dispatch.c), independent of
 * GHOST_TENSOR_SIMD (our kernels); GHOST_TENSOR_BLAKE3_SIMD caps it. Each level runs in
 * a child process started with that variable (it is read once, when BLAKE3 first runs),
 * which reports simdInfo().blake3Simd so the level is checked, not assumed.
 *
 * Definitions (the ratio is the figure of the goal):
 *   raw    = native().blake3(bytes): unkeyed BLAKE3 of the same N*d*4 pattern bytes as
 *            one stream (the official C implementation's blake3_hasher_update), 1 thread.
 *   root   = native().merkleRoot(data, d, 1): a fresh tree build, levels allocated and
 *            filled, then the root commitment (what commit() does, without a tensor).
 *   commit = t.commitSync({threads: 1}) on a tensor adopting the same rows (the tree
 *            the tensor keeps).
 *   ratio  = raw time / build time (1 = the tree costs what hashing the bytes once
 *            costs), from medians of interleaved repetitions (raw, root, commit, raw, ...).
 *   Times are the process's CPU time (user + system, process.cpuUsage) around each
 *   synchronous call, which on a shared machine is steadier than wall time; wall-time
 *   medians and ratios are recorded beside them.
 *   bound  = the ratio a tree would reach if every BLAKE3 compression cost the same:
 *            compressions of the stream / compressions of the tree. The tree hashes
 *            each row as its own keyed BLAKE3 input plus N - 1 one-block inner nodes;
 *            the stream hashes the same blocks plus one parent per 1 KiB chunk.
 *
 * Prints a table per level and writes bench/results/merkle-build.json (or the --name).
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { cpuHogs, logger, machine, otherProcesses, round, stats, writeResults } from './lib/common.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const log = logger('merkle-build');

const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a === undefined ? dflt : a.slice(name.length + 3);
};
const QUICK = process.argv.includes('--quick');
const P = {
  bytes: QUICK ? 2 ** 25 : 2 ** 28,
  dims: arg('dims', '64,256,784').split(',').map(Number),
  reps: Number(arg('reps', QUICK ? 5 : 9)),
  seed: 0x5eed,
};
const ALL_LEVELS = ['avx512', 'avx2', 'sse41', 'sse2', 'portable'];

/** BLAKE3 compressions of one stream of `bytes` (chunks of 16 blocks, a parent per chunk after the first). */
function streamCompressions(bytes) {
  const chunks = Math.ceil(bytes / 1024);
  return Math.ceil(bytes / 64) + (chunks - 1);
}
/** Compressions of the tree: each row a keyed BLAKE3 input, N - 1 inner nodes, the root commitment. */
function treeCompressions(n, d) {
  return n * streamCompressions(d * 4) + (n - 1) + 1;
}

// ---------------------------------------------------------------- child: one level

if (process.argv.includes('--child')) {
  const { SparseTensor, simdInfo } = await import(join(root, 'dist/index.js'));
  const { native } = await import(join(root, 'dist/internal.js'));
  const { rng, randomFloats } = await import('./lib/common.mjs');
  const nat = native();
  const info = simdInfo();
  const out = { blake3Simd: info.blake3Simd, kernelLevel: info.level, dims: [] };
  const cpuMs = (fn) => {
    const c = process.cpuUsage();
    const w = process.hrtime.bigint();
    const r = fn();
    const d = process.cpuUsage(c);
    return { cpu: (d.user + d.system) / 1e3, sys: d.system / 1e3, wall: Number(process.hrtime.bigint() - w) / 1e6, r };
  };
  const rand = rng(P.seed);
  const all = randomFloats(rand, P.bytes / 4);
  for (const d of P.dims) {
    const n = Math.floor(P.bytes / 4 / d);
    const data = all.subarray(0, n * d);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const tensor = SparseTensor.fromArray(data, d, { adopt: true });
    const cases = {
      raw: () => nat.blake3(bytes),
      root: () => nat.merkleRoot(data, d, 1),
      commit: () => tensor.commitSync({ threads: 1 }),
    };
    const hex = (u8) => Buffer.from(u8).toString('hex');
    const roots = new Set();
    for (const fn of Object.values(cases)) fn(); // warm: page in, allocator
    const s = { raw: { cpu: [], sys: [], wall: [] }, root: { cpu: [], sys: [], wall: [] }, commit: { cpu: [], sys: [], wall: [] } };
    for (let r = 0; r < P.reps; r++) {
      for (const [k, fn] of Object.entries(cases)) {
        const m = cpuMs(fn);
        s[k].cpu.push(m.cpu);
        s[k].sys.push(m.sys);
        s[k].wall.push(m.wall);
        if (k !== 'raw') roots.add(hex(m.r));
      }
    }
    if (roots.size !== 1) throw new Error(`root and commit disagree at d = ${d}`);
    const med = (k, t) => stats(s[k][t]).median;
    const entry = {
      dim: d,
      n,
      patternBytes: n * d * 4,
      root: [...roots][0],
      bound: round(streamCompressions(n * d * 4) / treeCompressions(n, d), 4),
    };
    for (const k of Object.keys(cases)) {
      entry[k] = {
        cpuMedianMs: round(med(k, 'cpu')),
        cpuMinMs: round(stats(s[k].cpu).min),
        sysMedianMs: round(med(k, 'sys')), // system time (page faults, huge-page compaction) inside the CPU time
        wallMedianMs: round(med(k, 'wall')),
        gbpsCpu: round((n * d * 4) / (med(k, 'cpu') / 1e3) / 1e9),
        cpuSamplesMs: s[k].cpu.map((x) => round(x)),
        wallSamplesMs: s[k].wall.map((x) => round(x)),
      };
    }
    entry.ratios = {
      root: round(med('raw', 'cpu') / med('root', 'cpu'), 4),
      commit: round(med('raw', 'cpu') / med('commit', 'cpu'), 4),
      rootWall: round(med('raw', 'wall') / med('root', 'wall'), 4),
      commitWall: round(med('raw', 'wall') / med('commit', 'wall'), 4),
    };
    out.dims.push(entry);
    process.stderr.write(`[merkle-build ${info.blake3Simd}] d = ${d}: ratio root ${entry.ratios.root}, commit ${entry.ratios.commit}\n`);
  }
  process.stdout.write(JSON.stringify(out));
  process.exit(0);
}

// ---------------------------------------------------------------- parent

const { simdInfo } = await import(join(root, 'dist/index.js'));
const top = simdInfo().blake3Simd;
const wanted = arg('levels', null)?.split(',') ?? ALL_LEVELS.slice(Math.max(0, ALL_LEVELS.indexOf(top)));
const results = {
  name: arg('name', 'merkle-build'),
  date: new Date().toISOString(),
  command: `node bench/merkle-build.mjs ${process.argv.slice(2).join(' ')}`.trim(),
  machine: machine({ simd: simdInfo() }),
  parameters: {
    ...P,
    quick: QUICK,
    threads: 1,
    levels: wanted,
    definitions: {
      raw: 'native().blake3(bytes): unkeyed BLAKE3 of the N*d*4 pattern bytes as one stream, 1 thread',
      root: 'native().merkleRoot(data, d, 1): fresh tree (levels allocated and filled) + root commitment',
      commit: 't.commitSync({threads: 1}) on a tensor adopting the same rows',
      ratio: 'raw time / build time, medians of interleaved repetitions, process CPU time (wall in *Wall)',
      bound: 'compressions of the stream / compressions of the tree (the ratio if every compression cost the same)',
    },
  },
  otherProcessesAtStart: otherProcesses({ exclude: ['merkle-build'] }),
  cpuHogsAtStart: cpuHogs(),
  levels: [],
};
log(`levels ${wanted.join(', ')}; ${P.bytes / 2 ** 20} MiB per d; d = ${P.dims.join(', ')}; load ${results.machine.loadavg.join(' ')}`);

for (const level of wanted) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', ...process.argv.slice(2)], {
    env: { ...process.env, GHOST_TENSOR_BLAKE3_SIMD: level },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`level ${level}: child exited with ${r.status}`);
  const child = JSON.parse(r.stdout);
  if (child.blake3Simd !== level) {
    log(`level ${level} not available here (BLAKE3 ran at ${child.blake3Simd}); skipped`);
    continue;
  }
  results.levels.push({ level, ...child });
  const rows = child.dims.map((e) => [
    String(e.dim),
    String(e.n),
    e.raw.cpuMedianMs.toFixed(1),
    e.root.cpuMedianMs.toFixed(1),
    e.commit.cpuMedianMs.toFixed(1),
    `${e.raw.sysMedianMs.toFixed(1)} / ${e.root.sysMedianMs.toFixed(1)} / ${e.commit.sysMedianMs.toFixed(1)}`,
    e.ratios.root.toFixed(3),
    e.ratios.commit.toFixed(3),
    `${e.ratios.rootWall.toFixed(3)} / ${e.ratios.commitWall.toFixed(3)}`,
    e.bound.toFixed(3),
  ]);
  const headers = ['d', 'N', 'raw ms', 'root ms', 'commit ms', 'of which sys ms', 'ratio root', 'ratio commit', 'wall ratios', 'bound'];
  const widths = headers.map((h, j) => Math.max(h.length, ...rows.map((x) => x[j].length)));
  const line = (x) => x.map((c, j) => (j === 0 ? c.padEnd(widths[j]) : c.padStart(widths[j]))).join('  ');
  console.log(
    [
      `\n## BLAKE3 ${level}: tree build vs raw BLAKE3, 1 thread, ${P.bytes / 2 ** 20} MiB of rows, median of ${P.reps} (CPU ms)`,
      '',
      line(headers),
      widths.map((w) => '-'.repeat(w)).join('  '),
      ...rows.map(line),
    ].join('\n'),
  );
}
console.log('\n  ratio = raw BLAKE3 time / build time (goal 0.9); bound = stream compressions / tree compressions.');
console.log('  of which sys ms = system time (raw / root / commit) inside the CPU times: page faults and huge-page compaction, not hashing.');
results.loadavgAtEnd = (await import('node:os')).default.loadavg().map((x) => round(x, 3));
const file = writeResults(results.name, results);
log(`load average at end ${results.loadavgAtEnd.join(' ')}; wrote ${file}`);
