#!/usr/bin/env node
/**
 * The exact scan's cosine norm cache and helper-thread pool, A/B (docs/sparse-tensor.md,
 * "How the exact scan runs"): one-query `searchBatch` calls over the demo's keys
 * (N = 2,048 x 784, cosine, k = 32, random rows), timed one after the other, in child
 * processes that alternate between the build as it is and the same build with
 * GHOST_TENSOR_NORM_CACHE=0 GHOST_TENSOR_SCAN_POOL=0 (the scan as before both: every norm
 * computed per call, a thread started per call). CPU is the child's (user + system, every
 * thread), per call.
 *
 *   node bench/scan-ab.mjs [--rounds 3] [--calls 2000] [--threads 1,2] [--nq 1] [--out NAME]
 *
 * Results: bench/results/scan-ab.json (NAME.json with --out).
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { fmt, machine, otherProcesses, round, table, writeResults } from './lib/common.mjs';

const { values: a } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    calls: { type: 'string', default: '2000' },
    threads: { type: 'string', default: '1,2' },
    nq: { type: 'string', default: '1' },
    out: { type: 'string', default: 'scan-ab' },
    child: { type: 'boolean', default: false },
  },
});

if (a.child) {
  const { SparseTensor } = await import('../dist/index.js');
  const n = 2048, d = 784, nq = Number(a.nq);
  let s = 1;
  const r = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32) - 0.5;
  const t = SparseTensor.fromArray(new Float32Array(n * d).map(r), d, { metric: 'cosine' });
  const q = new Float32Array(nq * d).map(r);
  const threads = Number(a.threads);
  for (let i = 0; i < 200; i++) await t.searchBatch(q, 32, { threads });
  const calls = Number(a.calls);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < calls; i++) await t.searchBatch(q, 32, { threads });
  const wallUs = ((performance.now() - t0) * 1000) / calls;
  const cu = process.cpuUsage(c0);
  console.log(JSON.stringify({ wallUs, cpuUs: (cu.user + cu.system) / calls }));
} else {
  const rows = [];
  const load = [];
  for (const threads of a.threads.split(',').map(Number)) {
    const runs = { new: [], old: [] };
    for (let round_ = 0; round_ < Number(a.rounds); round_++) {
      for (const v of ['new', 'old']) {
        const env = { ...process.env };
        if (v === 'old') Object.assign(env, { GHOST_TENSOR_NORM_CACHE: '0', GHOST_TENSOR_SCAN_POOL: '0' });
        else for (const k of ['GHOST_TENSOR_NORM_CACHE', 'GHOST_TENSOR_SCAN_POOL']) delete env[k];
        const p = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', '--threads', String(threads), '--calls', a.calls, '--nq', a.nq], { env, encoding: 'utf8' });
        if (p.status !== 0) throw new Error(p.stderr);
        runs[v].push(JSON.parse(p.stdout.trim().split('\n').pop()));
        load.push(machine().loadavg[0]);
      }
    }
    for (const v of ['new', 'old']) {
      rows.push({ threads, build: v === 'new' ? 'cache + pool' : 'neither (before)', cpu: runs[v].map((x) => round(x.cpuUs, 3)), wall: runs[v].map((x) => round(x.wallUs, 3)) });
    }
  }
  table(rows, [
    { key: 'threads' },
    { key: 'build', align: 'left' },
    { key: 'cpu', header: 'CPU us per call (each round)', format: (v) => v.map((x) => fmt(x)).join(', ') },
    { key: 'wall', header: 'wall us per call', format: (v) => v.map((x) => fmt(x)).join(', ') },
  ], { title: `one ${a.nq}-query cosine scan of 2,048 x 784 keys, k = 32, alternating (load average ${Math.min(...load)}-${Math.max(...load)})` });
  const file = writeResults(a.out, { command: ['node bench/scan-ab.mjs', ...process.argv.slice(2)].join(' '), machine: machine(), others: otherProcesses(), loadavgDuring: load, rows });
  console.error(`[scan-ab] wrote ${file}`);
}
