#!/usr/bin/env node
/**
 * What a product-key forward proof's CPU time is made of (docs/product-keys.md, "What
 * building a proof costs"): the prover's steps for one HopfieldLookup over
 * ProductKeyIndex.random(sqrt(N), 64), values N x 64, k = 32, each called alone on the
 * data the prover sees, medians of process CPU time (all threads) per call, interleaved:
 *   states       canonicalStates (f64 states of the input)
 *   gatherTables both sub-key tables whole (the `all` blocks' rows)
 *   planTables   planBlock of both tables (no cache)
 *   select       canonicalProductKeys (screened, default threads)
 *   uniqueIds    sortedUniqueIds of the B x k selected ids (the values block's ids)
 *   gatherValues the values block's rows
 *   planValues   planBlock of the values block
 *   multiproof   the values block's Merkle multiproof
 *   positions    positionsOf (where each selected row is in the block)
 *   mix          canonicalMix over the block's rows
 *   encode       encodeProof of the whole proof
 *   copyBytes    allocating an array of the proof's size and copying its bytes into it
 *                (the floor of the encoding)
 * beside the whole forward (layer.forward) and prove (model.prove).
 *
 *   node --expose-gc bench/pk-prove-parts.mjs [--log2n=16,20,22] [--batches=1,64] [--name=NAME]
 *        [--root=DIR]   measure the build in DIR (its dist/ and build/), e.g. a copy of an older commit's
 */
import { join } from 'node:path';

import { fmtBytes, logger, machine, otherProcesses, ROOT, rng, table, tryGc, writeResults } from './lib/common.mjs';

const arg = (name) => process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
const root = arg('root') ?? ROOT;
const { Model, HopfieldLookup, ProductKeyIndex, SparseTensor, simdInfo } = await import(join(root, 'dist/index.js'));
const { native } = await import(join(root, 'dist/tensor/native.js'));
const { internalNative } = await import(join(root, 'dist/tensor/sparse-tensor.js'));
const { encodeProof, planBlock, sortedUniqueIds } = await import(join(root, 'dist/verify/proof-format.js'));
const { positionsOf } = await import(join(root, 'dist/model/layer-kind.js'));
const LOG2N = (arg('log2n') ?? '16,20,22').split(',').map(Number);
const BATCHES = (arg('batches') ?? '1,64').split(',').map(Number);
const NAME = arg('name') ?? 'pk-prove-parts';
const K = 32;
const log = logger('pk-prove-parts');
const nat = native();

const results = {
  name: NAME,
  date: new Date().toISOString(),
  command: ['node --expose-gc bench/pk-prove-parts.mjs', ...process.argv.slice(2)].join(' '),
  build: root,
  machine: machine({ simd: simdInfo() }),
  otherProcessesAtStart: otherProcesses(),
  parameters: { k: K, d: 64, dv: 64, units: 'ms of CPU time per call, medians' },
  configs: [],
};
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

for (const log2N of LOG2N) {
  tryGc();
  const rand = rng(0x706b + log2N);
  const n = 2 ** (log2N / 2), N = n * n;
  const keys = ProductKeyIndex.random(n, 64, rand);
  const v = new Float32Array(N * 64);
  for (let i = 0; i < v.length; i++) v[i] = rand() * 2 - 1;
  const values = SparseTensor.fromArray(v, 64, { adopt: true });
  for (const t of [keys.keys1, keys.keys2, values]) await t.commit();
  const layer = new HopfieldLookup({ keys, values, k: K });
  const model = new Model([layer]);
  const all = Uint32Array.from({ length: n }, (_, i) => i);
  for (const B of BATCHES) {
    const x = Float32Array.from({ length: B * 64 }, () => rand() * 2 - 1);
    const q = nat.canonicalStates(x, B, 64, false);
    const t1 = keys.keys1.gather(all), t2 = keys.keys2.gather(all);
    const sel = nat.canonicalProductKeys(q, t1, t2, n, 32, 32, B, K, undefined);
    const u = sortedUniqueIds([sel.ids]);
    const rows = values.gather(u);
    const block = { tensor: 2, dim: 64, ids: u, rows, root: values.root() };
    const pos = positionsOf(block, sel.ids);
    const proved = await model.prove(x);
    const size = proved.bytes.length;
    const parts = {
      forward: () => layer.forward(x),
      prove: () => model.prove(x),
      states: () => nat.canonicalStates(x, B, 64, false),
      gatherTables: () => [keys.keys1.gather(all), keys.keys2.gather(all)],
      planTables: () => [planBlock(0, 32, all, t1, true), planBlock(1, 32, all, t2, true)],
      select: () => nat.canonicalProductKeys(q, t1, t2, n, 32, 32, B, K, undefined),
      uniqueIds: () => sortedUniqueIds([sel.ids]),
      gatherValues: () => values.gather(u),
      planValues: () => planBlock(2, 64, u, rows, false),
      multiproof: () => internalNative(values).prove(u),
      positions: () => positionsOf(block, sel.ids),
      mix: () => nat.canonicalMix(sel.scores, layer.beta, rows, B, K, 64, pos),
      encode: () => encodeProof(proved.proof),
      copyBytes: () => new Uint8Array(Buffer.allocUnsafeSlow(size).buffer, 0, size).set(proved.bytes),
    };
    const reps = B === 1 ? 400 : 40;
    const t = Object.fromEntries(Object.keys(parts).map((k) => [k, []]));
    for (let r = 0; r < reps; r++) {
      for (const [k, f] of Object.entries(parts)) {
        const c = process.cpuUsage();
        await f();
        const d = process.cpuUsage(c);
        t[k].push((d.user + d.system) / 1000);
      }
    }
    const c = { log2N, B, bytes: size, ...Object.fromEntries(Object.entries(t).map(([k, xs]) => [k, median(xs)])) };
    results.configs.push(c);
    log(`N=2^${log2N} B=${B}: prove ${c.prove} ms, forward ${c.forward} ms`);
    writeResults(NAME, { ...results, partial: true });
  }
}

const rowsOut = [];
for (const key of ['forward', 'prove', 'states', 'gatherTables', 'planTables', 'select', 'uniqueIds', 'gatherValues', 'planValues', 'multiproof', 'positions', 'mix', 'encode', 'copyBytes']) {
  rowsOut.push({ part: key, ...Object.fromEntries(results.configs.map((c) => [`2^${c.log2N} B=${c.B}`, c[key]])) });
}
rowsOut.push({ part: 'proof bytes', ...Object.fromEntries(results.configs.map((c) => [`2^${c.log2N} B=${c.B}`, fmtBytes(c.bytes)])) });
table(rowsOut, ['part', ...results.configs.map((c) => `2^${c.log2N} B=${c.B}`)], { title: 'Product-key prove, CPU ms per call by part (medians)' });
results.otherProcessesAtEnd = otherProcesses();
writeResults(NAME, results);
