#!/usr/bin/env node
/**
 * Peers over libp2p: latency of a verified forward pass of a three-layer model whose
 * layers are served by peers on loopback (docs/p2p.md).
 *
 *   node bench/p2p.mjs           (~1 min on 2 cores)
 *   node bench/p2p.mjs --quick   fewer repetitions; writes p2p-quick.json
 *
 * Per model and batch B (medians of warm calls, p10 / p90 in the JSON):
 *   local        model.prove(x) + verifyForward(ghost, bytes) in this process (no network)
 *   1 hop        client.forward(x) served by one node holding all three layers (providers known: no DHT lookup)
 *   3 hops       three nodes, one layer each: three requests, three proofs, three verifications (providers known)
 *   3 hops+DHT   the same with the three provider lookups on the DHT (findProviders, in parallel) in every pass
 *   lookup       one findProviders of one layer
 * Every node and the client run in this one process (loopback TCP, noise, yamux), so
 * proving, verifying and the network share the same 2 cores. Tables to stdout,
 * progress to stderr, results to bench/results/p2p.json.
 */
import { join } from 'node:path';

import { CORES, cpuHogs, fmt, fmtBytes, logger, machine, nowMs, otherProcesses, rng, round, ROOT, sampleFor, stats, table, writeResults } from './lib/common.mjs';

const { Model, HopfieldLookup, ProductKeyIndex, SparseTensor, simdInfo } = await import(join(ROOT, 'dist/index.js'));
const { verifyForward } = await import(join(ROOT, 'dist/verify/index.js'));
const { GhostClient, LayerNode, modelProver } = await import(join(ROOT, 'dist/p2p/index.js'));

const QUICK = process.argv.includes('--quick');
const P = {
  budgetMs: QUICK ? 400 : 3000,
  minReps: QUICK ? 5 : 15,
  maxReps: QUICK ? 30 : 300,
  batches: [1, 16],
  seeds: { tensors: 0x70327031, queries: 0x71756572 },
  models: {
    small: 'd = 16: exact cosine 300 x 16 (k 8, 2 update steps, normalised) -> product keys 12^2 slots, sub-keys 8 + 8, values 16 (k 6) -> product keys 10^2 slots, values 5 (k 4)  [the model of test/p2p.test.ts]',
    medium: 'd = 64: exact ip 16,384 x 64 (k 32) -> product keys 64^2 slots, sub-keys 32 + 32, values 64 (k 32) -> product keys 64^2 slots, values 16 (k 16)',
  },
};
const log = logger('p2p');

function tensor(rand, n, dim) {
  const a = new Float32Array(n * dim);
  for (let i = 0; i < a.length; i++) a[i] = rand() * 2 - 1;
  return SparseTensor.fromArray(a, dim);
}

function buildModel(name) {
  const rand = rng(P.seeds.tensors + (name === 'small' ? 0 : 1));
  if (name === 'small') {
    return new Model([
      new HopfieldLookup({ keys: tensor(rand, 300, 16), values: tensor(rand, 300, 16), k: 8, similarity: 'cosine', normalize: true, beta: 4, updateSteps: 2 }),
      new HopfieldLookup({ keys: ProductKeyIndex.fromTables(tensor(rand, 12, 8), tensor(rand, 12, 8)), values: tensor(rand, 144, 16), k: 6, beta: 2 }),
      new HopfieldLookup({ keys: ProductKeyIndex.fromTables(tensor(rand, 10, 8), tensor(rand, 10, 8)), values: tensor(rand, 100, 5), k: 4, beta: 2 }),
    ]);
  }
  return new Model([
    new HopfieldLookup({ keys: tensor(rand, 2 ** 14, 64), values: tensor(rand, 2 ** 14, 64), k: 32, beta: 0.125 }),
    new HopfieldLookup({ keys: ProductKeyIndex.fromTables(tensor(rand, 64, 32), tensor(rand, 64, 32)), values: tensor(rand, 4096, 64), k: 32, beta: 0.125 }),
    new HopfieldLookup({ keys: ProductKeyIndex.fromTables(tensor(rand, 64, 32), tensor(rand, 64, 32)), values: tensor(rand, 4096, 16), k: 16, beta: 0.125 }),
  ]);
}

const results = {
  name: QUICK ? 'p2p-quick' : 'p2p',
  date: new Date().toISOString(),
  command: ['node bench/p2p.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd: simdInfo() }),
  otherProcessesAtStart: otherProcesses(),
  cpuHogsAtStart: cpuHogs(),
  parameters: { quick: QUICK, ...P, cores: CORES, transport: 'TCP on 127.0.0.1, noise, yamux; kad-dht /ghost-tensor/lan/kad/1.0.0; all nodes in one process', units: { ms: 'milliseconds per verified pass (median of warm passes)', bytes: 'proof bytes summed over the hops of one pass' } },
  configs: [],
};

const rows = [];
for (const name of ['small', 'medium']) {
  log(`model ${name}: building and committing`);
  const model = buildModel(name);
  const ghost = await model.ghost();
  const prover = await modelProver(model);
  const all = await LayerNode.start({ prover, layers: [0, 1, 2] });
  const boot = [all.multiaddrs[0]];
  const one = await Promise.all([0, 1, 2].map((l) => LayerNode.start({ prover, layers: [l], bootstrap: boot })));
  const nodes = [all, ...one];
  const client = await GhostClient.start({ bootstrap: boot });
  await Promise.all(nodes.map((n) => n.announce()));
  const known1 = new Map([0, 1, 2].map((l) => [l, [all.peerId]]));
  const known3 = new Map([0, 1, 2].map((l) => [l, [one[l].peerId]]));
  const dIn = ghost.manifest.layers[0].dIn;
  for (const B of P.batches) {
    const qrand = rng(P.seeds.queries + B);
    const xs = Array.from({ length: 8 }, () => Float32Array.from({ length: B * dIn }, () => qrand() * 2 - 1));
    const x = (i) => xs[i % xs.length];
    const ref = await Promise.all(xs.map((xi) => model.prove(xi)));
    const check = (r, i) => {
      const want = ref[i % xs.length].output;
      if (Buffer.compare(Buffer.from(r.output.buffer, r.output.byteOffset, r.output.byteLength), Buffer.from(want.buffer, want.byteOffset, want.byteLength)) !== 0) throw new Error('a verified pass differs from the local proof');
      if (r.dropped.length > 0) throw new Error(`a peer was dropped: ${JSON.stringify(r.dropped)}`);
    };
    const scen = {};
    const opts = { budgetMs: P.budgetMs, minReps: P.minReps, maxReps: P.maxReps, warm: 2 };
    let bytes1 = 0, bytes3 = 0;
    log(`${name} B=${B}: local`);
    scen.local = stats(await sampleFor(async (i) => {
      const p = await model.prove(x(i));
      await verifyForward(ghost, p.bytes);
    }, opts));
    log(`${name} B=${B}: 1 hop`);
    scen.hop1 = stats(await sampleFor(async (i) => {
      const r = await client.forward(x(i), { ghost, providers: known1 });
      check(r, i);
      bytes1 = r.hops.reduce((s, h) => s + h.proofBytes, 0);
    }, opts));
    log(`${name} B=${B}: 3 hops`);
    let hopMs = [[], [], []];
    scen.hop3 = stats(await sampleFor(async (i) => {
      const r = await client.forward(x(i), { ghost, providers: known3 });
      check(r, i);
      if (r.hops.length !== 3) throw new Error('expected 3 hops');
      r.hops.forEach((h, j) => hopMs[j].push(h.ms));
      bytes3 = r.hops.reduce((s, h) => s + h.proofBytes, 0);
    }, opts));
    log(`${name} B=${B}: 3 hops with DHT lookups`);
    scen.hop3dht = stats(await sampleFor(async (i) => {
      const r = await client.forward(x(i), { ghost, exclude: [all.peerId] });
      check(r, i);
      if (r.hops.length !== 3) throw new Error('expected 3 hops');
    }, opts));
    log(`${name} B=${B}: lookup`);
    scen.lookup = stats(await sampleFor(async (i) => {
      const p = await client.findProviders(ghost.digest, i % 3);
      if (p.length !== 2) throw new Error(`expected 2 providers, found ${p.length}`);
    }, opts));
    const cfg = {
      model: name,
      B,
      ms: Object.fromEntries(Object.entries(scen).map(([k, s]) => [k, round(s.median)])),
      stats: Object.fromEntries(Object.entries(scen).map(([k, s]) => [k, Object.fromEntries(Object.entries(s).map(([a, b]) => [a, round(b)]))])),
      perHopMedianMs: hopMs.map((h) => round(stats(h).median)),
      bytes: { hop1: bytes1, hop3: bytes3 },
    };
    results.configs.push(cfg);
    rows.push({ model: name, B, local: cfg.ms.local, hop1: cfg.ms.hop1, hop3: cfg.ms.hop3, hop3dht: cfg.ms.hop3dht, lookup: cfg.ms.lookup, perHop: cfg.perHopMedianMs.map((v) => fmt(v)).join(' / '), bytes3 });
  }
  await client.stop();
  await Promise.all(nodes.map((n) => n.stop()));
}

table(rows, [
  'model',
  'B',
  { key: 'local', header: 'local prove+verify ms' },
  { key: 'hop1', header: '1 hop ms' },
  { key: 'hop3', header: '3 hops ms' },
  { key: 'hop3dht', header: '3 hops + DHT ms' },
  { key: 'lookup', header: 'lookup ms' },
  { key: 'perHop', header: 'per hop ms (L0 / L1 / L2)' },
  { key: 'bytes3', header: '3-hop proof bytes', format: (v) => fmtBytes(v) },
], {
  title: 'Verified forward pass over peers on loopback (medians)',
  notes: ['every pass verifies each hop (verifyForward) and equals the local proof bit for bit; all nodes share this process and its 2 cores'],
});
results.cpuHogsAtEnd = cpuHogs();
log(`wrote ${writeResults(results.name, results)}`);
process.exit(0);
