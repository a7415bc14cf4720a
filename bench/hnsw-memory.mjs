#!/usr/bin/env node
/**
 * What the HNSW graph's memory settings give (docs/retrieval.md, "Memory layout of the
 * graph"): graphs of the same rows built with the defaults (transparent huge pages
 * under the base layer; all unvisited neighbours prefetched before they are scored, on
 * rows of at most 512 bytes) and with each turned off (GHOST_TENSOR_HUGE_PAGES=off,
 * GHOST_TENSOR_HNSW_PREFETCH=off, or both; 'packed': upstream's element layout instead of
 * vectors on 64-byte lines, GHOST_TENSOR_HNSW_ALIGN=off), searched one query per call (t.search on the
 * JS thread) in interleaved rounds at each ef; q/s from the medians, recall@10 of each
 * against the exact top-10, and the huge-page bytes each build added to the process
 * (AnonHugePages of /proc/self/smaps_rollup).
 *
 *   node bench/hnsw-memory.mjs [--ns=200000] [--d=64] [--ef=128,512] [--queries=500]
 *        [--m=16] [--ef-construction=64] [--rounds=7]
 *        [--variants=default,no-huge-pages,no-prefetch,neither,packed] [--name=hnsw-memory]
 *
 * Rows and queries: random unit vectors (Gaussian components, normalised), metric ip.
 * efConstruction is lower than bench/index.mjs's 200: the point is the memory layout,
 * and several builds of 1e6 rows at 200 take too long on 2 cores. Each graph is its own
 * build (threads: all cores), so recall may differ slightly between them. Writes
 * bench/results/NAME.json.
 */
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';

import { CORES, ROOT, fmt, fmtCount, gaussian, logger, machine, nowMs, otherProcesses, rng, round, stats, table, tryGc, writeResults } from './lib/common.mjs';

const { SparseTensor, simdInfo } = await import(join(ROOT, 'dist/index.js'));

const arg = (name, def) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a === undefined ? def : a.slice(name.length + 3);
};
const ints = (name, def) => {
  const v = String(arg(name, def)).split(',').map(Number);
  if (v.some((x) => !Number.isInteger(x) || x < 1)) throw new Error(`--${name} takes positive integers, got ${arg(name, def)}`);
  return v;
};
const P = {
  ns: ints('ns', '200000'),
  d: ints('d', 64)[0],
  efs: ints('ef', '128,512'),
  queries: ints('queries', 500)[0],
  M: ints('m', 16)[0],
  efConstruction: ints('ef-construction', 64)[0],
  rounds: ints('rounds', 7)[0],
  k: 10,
  metric: 'ip',
  threads: CORES,
  seed: 100,
  variants: String(arg('variants', 'default,no-huge-pages,no-prefetch,neither')).split(','),
};
const NAME = arg('name', 'hnsw-memory');
if (!/^[a-z0-9-]+$/.test(NAME)) throw new Error(`--name must be lowercase letters, digits and dashes, got ${NAME}`);
const VARIANTS = {
  default: {},
  'no-huge-pages': { GHOST_TENSOR_HUGE_PAGES: 'off' },
  'no-prefetch': { GHOST_TENSOR_HNSW_PREFETCH: 'off' },
  neither: { GHOST_TENSOR_HUGE_PAGES: 'off', GHOST_TENSOR_HNSW_PREFETCH: 'off' },
  packed: { GHOST_TENSOR_HNSW_ALIGN: 'off' },
};
for (const v of P.variants) if (!(v in VARIANTS)) throw new Error(`--variants: unknown ${v} (known: ${Object.keys(VARIANTS).join(', ')})`);
if (P.variants[0] !== 'default') throw new Error('--variants must start with default (the others are compared with it)');
const log = logger('hnsw-memory');
const thpMode = (() => {
  try {
    return readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').trim();
  } catch {
    return 'unknown (no /sys/kernel/mm/transparent_hugepage)';
  }
})();
const hugeBytes = () => {
  if (!existsSync('/proc/self/smaps_rollup')) return NaN;
  const m = /AnonHugePages:\s+(\d+) kB/.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
};

function unitVectors(seed, n, d) {
  const rand = rng(seed);
  const a = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += (a[i * d + j] = gaussian(rand)) ** 2;
    const inv = 1 / Math.sqrt(s);
    for (let j = 0; j < d; j++) a[i * d + j] *= inv;
  }
  return a;
}

const KNOBS = ['GHOST_TENSOR_HUGE_PAGES', 'GHOST_TENSOR_HNSW_PREFETCH', 'GHOST_TENSOR_HNSW_ALIGN'];
async function build(data, env) {
  for (const k of KNOBS) delete process.env[k];
  Object.assign(process.env, env);
  const t = SparseTensor.fromArray(data, P.d, { metric: P.metric });
  const h0 = hugeBytes();
  const t0 = nowMs();
  await t.buildHnsw({ M: P.M, efConstruction: P.efConstruction, seed: P.seed, threads: P.threads });
  const sec = (nowMs() - t0) / 1e3;
  for (const k of KNOBS) delete process.env[k];
  return { t, sec, hugeAdded: hugeBytes() - h0 };
}

const started = new Date().toISOString();
const others = otherProcesses();
const rows = [];
for (const n of P.ns) {
  log(`N=${fmtCount(n)} x ${P.d}: rows ...`);
  const data = unitVectors(0x70616765 + n, n, P.d);
  const queries = unitVectors(0x71756572, P.queries, P.d);
  const qs = Array.from({ length: P.queries }, (_, i) => queries.subarray(i * P.d, (i + 1) * P.d));
  const g = {};
  for (const v of P.variants) {
    log(`N=${fmtCount(n)}: build (${v}) ...`);
    g[v] = await build(data, VARIANTS[v]);
    log(`  ${fmt(g[v].sec)} s, huge pages +${fmt(g[v].hugeAdded / 2 ** 20)} MiB`);
  }
  const exact = await g.default.t.searchBatch(queries, P.k);
  const truth = qs.map((_, i) => new Set(exact.ids.subarray(i * P.k, (i + 1) * P.k)));
  const recall = (a) => {
    let hit = 0;
    for (let i = 0; i < P.queries; i++) for (let j = 0; j < P.k; j++) if (truth[i].has(a[i * P.k + j])) hit++;
    return hit / (P.queries * P.k);
  };
  for (const ef of P.efs) {
    const opt = { index: 'hnsw', ef };
    const ids = Object.fromEntries(P.variants.map((v) => [v, new Uint32Array(P.queries * P.k)]));
    const run = (v) => {
      const t = g[v].t;
      const t0 = nowMs();
      for (let i = 0; i < P.queries; i++) ids[v].set(t.search(qs[i], P.k, opt).ids, i * P.k);
      return nowMs() - t0;
    };
    for (const v of P.variants) run(v); // warm-up
    const ms = Object.fromEntries(P.variants.map((v) => [v, []]));
    for (let r = 0; r < P.rounds; r++) {
      // rotate which goes first, so none always follows the same one's cache state
      for (let i = 0; i < P.variants.length; i++) {
        const v = P.variants[(i + r) % P.variants.length];
        ms[v].push(run(v));
      }
    }
    const qps = Object.fromEntries(P.variants.map((v) => [v, (P.queries / stats(ms[v]).median) * 1e3]));
    for (const v of P.variants) {
      const row = {
        n,
        ef,
        variant: v,
        qps: round(qps[v]),
        defaultOver: round(qps.default / qps[v]),
        recall: round(recall(ids[v])),
        hugeMiB: round(g[v].hugeAdded / 2 ** 20),
        buildSec: round(g[v].sec),
      };
      rows.push(row);
      log(`N=${fmtCount(n)} ef=${ef} ${v}: ${fmt(qps[v])} q/s (default / this ${fmt(row.defaultOver)}), recall ${row.recall}`);
    }
  }
  tryGc();
}

table(rows, [
  { key: 'n', header: 'N', format: fmtCount },
  { key: 'ef', header: 'ef' },
  { key: 'variant', header: 'graph' },
  { key: 'qps', header: 'q/s one query' },
  { key: 'defaultOver', header: 'default / this' },
  { key: 'recall', header: 'recall@10' },
  { key: 'hugeMiB', header: 'huge pages MiB' },
  { key: 'buildSec', header: 'build s' },
], {
  title: `HNSW one query per call, ${P.d}-d unit vectors (ip), M=${P.M}, efConstruction=${P.efConstruction}, k=${P.k}, ${P.queries} queries, median of ${P.rounds} interleaved rounds`,
  notes: [
    `THP: ${thpMode}. default: huge pages and the neighbour prefetch; no-huge-pages: GHOST_TENSOR_HUGE_PAGES=off;`,
    'no-prefetch: GHOST_TENSOR_HNSW_PREFETCH=off; neither: both off; packed: GHOST_TENSOR_HNSW_ALIGN=off (upstream element layout). Each graph is its own build.',
  ],
});
const file = writeResults(NAME, {
  date: started,
  machine: machine({ simd: simdInfo() }),
  loadavgAtEnd: os.loadavg(),
  otherProcesses: others,
  parameters: { ...P, thp: thpMode },
  results: rows,
});
log(`wrote ${file}`);
