// Is an index worth building for the keys of one attention head? The keys of a
// sequence live for one forward pass, so an index would be built per head per pass.
// Per n: the exact blocked scan of SparseSelfAttention (one head, headDim 64, k = 32,
// all queries, forward only) against building an HNSW graph over the same keys and
// searching every query with it, in the same run; recall@k of HNSW against the scan.
// Usage: node bench/attention-index.mjs [--ns=16384,65536] [--m=12] [--ef-construction=64] [--ef=64]
import { SparseTensor } from '../dist/index.js';
import { native } from '../dist/internal.js';
import { machine, nowMs, otherProcesses, randomFloats, rng, round, table, writeResults } from './lib/common.mjs';

const arg = (name, def) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a === undefined ? def : a.slice(name.length + 3);
};
const ns = arg('ns', '16384,65536').split(',').map(Number);
const M = Number(arg('m', 12)), efC = Number(arg('ef-construction', 64)), ef = Number(arg('ef', 64));
const dk = 64, k = 32;
const rows = [];
const startedAt = new Date().toISOString();
const others = otherProcesses();
for (const n of ns) {
  const rand = rng(n);
  const q = randomFloats(rand, new Float32Array(n * dk)), keys = randomFloats(rand, new Float32Array(n * dk));
  // Exact: SparseSelfAttention's own kernel for one head (values = keys; the mix
  // after the selection is a small part of the pass).
  let t0 = nowMs();
  const exact = await native().attentionForwardAsync(n, 1, dk, k, false, 1 / 8, undefined, q, keys, keys);
  const exactMs = nowMs() - t0;
  const t = SparseTensor.fromArray(keys, dk, { metric: 'ip' });
  t0 = nowMs();
  await t.buildHnsw({ M, efConstruction: efC });
  const buildMs = nowMs() - t0;
  t0 = nowMs();
  const r = await t.searchBatch(q, k, { index: 'hnsw', ef });
  const searchMs = nowMs() - t0;
  let hit = 0;
  for (let i = 0; i < n; i++) {
    const s = new Set(exact.ids.subarray(i * k, (i + 1) * k));
    for (let c = 0; c < k; c++) if (s.has(r.ids[i * k + c])) hit++;
  }
  rows.push({ n, exactMs: round(exactMs), hnswBuildMs: round(buildMs), hnswSearchMs: round(searchMs), hnswTotalMs: round(buildMs + searchMs), ratio: round((buildMs + searchMs) / exactMs), recall: round(hit / (n * k)) });

}
table(rows, ['n', 'exactMs', 'hnswBuildMs', 'hnswSearchMs', 'hnswTotalMs', { key: 'ratio', header: 'hnsw/exact time' }, { key: 'recall', header: `hnsw recall@${k}` }], {
  title: `One head's top-${k} selection for every query, headDim ${dk}: exact scan vs a per-pass HNSW index`,
});
const file = writeResults('attention-index', {
  name: 'attention-index', date: startedAt, command: `node ${process.argv.slice(1).join(' ')}`.replace(process.cwd() + '/', ''),
  machine: machine(), otherProcesses: others,
  parameters: { dk, k, hnsw: { M, efConstruction: efC, ef, metric: 'ip' }, inputs: 'uniform [-1, 1) queries and keys, seeded' },
  rows,
});
console.log(`wrote ${file}`);
