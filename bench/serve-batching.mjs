#!/usr/bin/env node
/**
 * The batched search of concurrent forward proofs (SearchBatcher, docs/serving.md
 * "Concurrency and durability"), in process, without HTTP: P proofs kept running at once
 * on one model (the demo's shape: N = 2048 x 784, k = 32, values of 10, random
 * patterns), with and without a SearchBatcher, alternating, --reps times each; the
 * medians of the wall time and of the process CPU time (user + system) per proof, and
 * the queries per scan. The proofs are checked equal, byte for byte, between the two.
 *
 *   node bench/serve-batching.mjs [--concurrency 1,2,4,8] [--batch 1] [--proofs 400] [--reps 8] [--threads T] [--scans S] [--out NAME]
 *
 * --scans S: the SearchBatcher's scans at once (default 2).
 * --threads T: Model.prove's threads (ProverServerOptions.threads), which also sets the
 * threads of each scan (default: the machine's cores, started anew by every scan).
 * Results: bench/results/serve-batching.json (serve-batching-threadsT.json with --threads; NAME.json with --out).
 */
import { cpuUsage } from 'node:process';
import { parseArgs } from 'node:util';

import { cpuHogs, fmt, logger, machine, randomFloats, rng, round, table, writeResults } from './lib/common.mjs';
import { HopfieldLookup, Model, SearchBatcher, SparseTensor, simdInfo } from '../dist/index.js';

const log = logger('serve-batching');
const { values: a } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '1,2,4,8' },
    batch: { type: 'string', default: '1' },
    proofs: { type: 'string', default: '400' },
    reps: { type: 'string', default: '8' },
    threads: { type: 'string' },
    scans: { type: 'string' },
    out: { type: 'string' },
  },
});
const threads = a.threads === undefined ? undefined : Number(a.threads);
const N = 2048, D = 784, K = 32, DV = 10, B = Number(a.batch), n = Number(a.proofs), reps = Number(a.reps);
const rand = rng(7);
const model = new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(randomFloats(rand, N * D), D), values: SparseTensor.fromArray(randomFloats(rand, N * DV), DV), k: K, similarity: 'cosine', normalize: true })]);
await model.commit();
const inputs = Array.from({ length: 16 }, () => randomFloats(rand, B * D));
const median = (xs) => [...xs].sort((x, y) => x - y)[xs.length >> 1];

const rows = [];
for (const P of a.concurrency.split(',').map(Number)) {
  const runs = { off: { wall: [], cpu: [] }, on: { wall: [], cpu: [] } };
  let perScan = 0;
  let firstProofs = [];
  for (let r = 0; r < reps; r++) {
    for (const mode of ['off', 'on']) {
      const batcher = mode === 'on' ? new SearchBatcher(a.scans === undefined ? {} : { scans: Number(a.scans) }) : undefined;
      const out = new Array(n);
      let next = 0;
      const c0 = cpuUsage();
      const t0 = performance.now();
      await Promise.all(Array.from({ length: P }, async () => {
        while (next < n) {
          const i = next++;
          out[i] = (await model.prove(inputs[i % inputs.length], { ...(batcher ? { batcher } : {}), ...(threads === undefined ? {} : { threads }) })).bytes;
        }
      }));
      runs[mode].wall.push((performance.now() - t0) / n);
      const c = cpuUsage(c0);
      runs[mode].cpu.push((c.user + c.system) / 1000 / n);
      if (batcher) perScan = batcher.stats.queries / batcher.stats.scans;
      if (r === 0) {
        // The first inputs' proofs, byte for byte the same with and without the batcher.
        if (mode === 'off') firstProofs = out.slice(0, inputs.length);
        else for (let i = 0; i < inputs.length; i++) if (Buffer.compare(Buffer.from(out[i]), Buffer.from(firstProofs[i])) !== 0) throw new Error(`proof ${i} differs with the batcher`);
      }
    }
  }
  log(`${P} at once: done`);
  rows.push({ concurrency: P, wallOffMs: round(median(runs.off.wall), 4), wallOnMs: round(median(runs.on.wall), 4), cpuOffMs: round(median(runs.off.cpu), 4), cpuOnMs: round(median(runs.on.cpu), 4), queriesPerScan: round(perScan, 3) });
}
table(rows, [
  { key: 'concurrency', header: 'proofs at once' },
  { key: 'wallOffMs', header: 'wall ms/proof, one scan each', format: (v) => fmt(round(v, 3)) },
  { key: 'wallOnMs', header: 'batched', format: (v) => fmt(round(v, 3)) },
  { key: 'cpuOffMs', header: 'CPU ms/proof, one scan each', format: (v) => fmt(round(v, 3)) },
  { key: 'cpuOnMs', header: 'batched', format: (v) => fmt(round(v, 3)) },
  { key: 'queriesPerScan', header: 'queries per scan', format: (v) => fmt(round(v, 2)) },
], { title: `forward proofs with and without the batched search (in process; N = ${fmt(N)} x ${D}, k = ${K}, batch ${B}${threads === undefined ? '' : `, ${threads} thread(s) a scan`}; medians of ${reps})` });
const file = writeResults(a.out ?? (threads === undefined ? 'serve-batching' : `serve-batching-threads${threads}`), { name: 'serve-batching', date: new Date().toISOString(), command: ['node bench/serve-batching.mjs', ...process.argv.slice(2)].join(' '), machine: machine({ simd: simdInfo().level }), cpuHogs: cpuHogs(), parameters: { n: N, dim: D, k: K, dout: DV, batch: B, proofs: n, reps, threads: threads ?? null }, rows });
log(`wrote ${file}`);
