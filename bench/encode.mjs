#!/usr/bin/env node
/**
 * Proof encoding, the old encoder against the current one in one process
 * (bench/lib/encode-reference.mjs is the encoder before the exact-size change, kept
 * verbatim). Proofs: a served forward proof of the demo's shape (N = 2,048 x 784, k = 32,
 * values of 10, random patterns) at batch 1 and batch 32, and a step proof of the
 * Fashion-MNIST classifier of bench/step-proofs.mjs (N = 2,048, B = 128), made once
 * without a cache and once against a PatternCache (its rows held, sent as deltas). Each
 * proof is encoded by both encoders, alternating; the bytes must be equal (the bench
 * stops otherwise). Per encoder: the median wall ms of one encode (after a full GC, and
 * back to back in a loop, GC included), and the ArrayBuffer
 * bytes one encode allocates per byte of proof (process.memoryUsage().arrayBuffers
 * after one encode minus before it, right after a full GC; the proof itself is 1.0;
 * samples during which a GC ran (v8.GCProfiler) are dropped, see `gcDropped`).
 *
 *   node --expose-gc bench/encode.mjs [--quick]
 *
 * Results: bench/results/encode.json.
 */
import { GCProfiler } from 'node:v8';
import { join } from 'node:path';

import { fmt, fmtBytes, logger, machine, cpuHogs, nowMs, randomFloats, rng, round, ROOT, stats, table, tryGc, writeResults } from './lib/common.mjs';
import { classifierCase } from './lib/step-cases.mjs';
import { makeReferenceEncoder } from './lib/encode-reference.mjs';

const L = await import(join(ROOT, 'dist', 'index.js'));
const { HopfieldLookup, Model, PatternCache, SparseTensor, simdInfo } = L;
const { encodeProof } = await import(join(ROOT, 'dist', 'verify', 'proof-format.js'));
const { specByOp } = await import(join(ROOT, 'dist', 'verify', 'kinds', 'index.js'));
const { writeOptimizer, stateRowBytes } = await import(join(ROOT, 'dist', 'verify', 'training.js'));
const classifierData = await import(join(ROOT, 'dist', 'cli', 'classifier.js'));

const log = logger('encode');
const QUICK = process.argv.includes('--quick');
if (typeof globalThis.gc !== 'function') log('run with --expose-gc: the allocation figures need a GC before each sample');
const encodeOld = makeReferenceEncoder({ specByOp, writeOptimizer, stateRowBytes });


// ---------------------------------------------------------------- the proofs

const proofs = [];
{
  const N = 2048, D = 784, K = 32, DV = 10;
  const rand = rng(7);
  const model = new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(randomFloats(rand, N * D), D), values: SparseTensor.fromArray(randomFloats(rand, N * DV), DV), k: K, similarity: 'cosine', normalize: true })]);
  await model.commit();
  for (const B of [1, 32]) {
    const r = await model.prove(randomFloats(rand, B * D));
    proofs.push({ name: `forward, batch ${B} (served shape)`, proof: r.proof, reps: QUICK ? (B === 1 ? 300 : 40) : B === 1 ? 1000 : 120 });
  }
}
{
  const c = classifierCase(L, classifierData, { n: 2048, d: 784, k: 32, batch: 128, beta: 10, lr: 3e-3, seed: 1 });
  const model = c.proved();
  const cold = await model.proveTrainStep(c.batch(0));
  proofs.push({ name: 'step, classifier B=128, no cache', proof: cold.proof, reps: QUICK ? 6 : 16 });
  const mine = new PatternCache();
  await model.proveTrainStep(c.batch(1), { cache: mine });
  const warm = await model.proveTrainStep(c.batch(2), { cache: mine });
  proofs.push({ name: 'step, classifier B=128, PatternCache', proof: warm.proof, reps: QUICK ? 6 : 16 });
}

// ---------------------------------------------------------------- measuring

/** One encode: wall ms and ArrayBuffer bytes allocated (null when a GC ran meanwhile). */
async function sample(encode, proof) {
  tryGc();
  await new Promise((r) => setImmediate(r));
  const prof = new GCProfiler();
  prof.start();
  const a0 = process.memoryUsage().arrayBuffers;
  const t = nowMs();
  const bytes = encode(proof);
  const ms = nowMs() - t;
  const a1 = process.memoryUsage().arrayBuffers;
  const gcsDuring = prof.stop().statistics.length;
  return { ms, bytes, alloc: gcsDuring === 0 ? a1 - a0 : null };
}

const rows = [];
for (const p of proofs) {
  const res = { old: { ms: [], alloc: [], dropped: 0 }, new: { ms: [], alloc: [], dropped: 0 } };
  let size = 0;
  for (let r = 0; r < p.reps; r++) {
    const pair = {};
    for (const mode of r % 2 ? ['new', 'old'] : ['old', 'new']) {
      const s = await sample(mode === 'old' ? encodeOld : encodeProof, p.proof);
      pair[mode] = s.bytes;
      res[mode].ms.push(s.ms);
      if (s.alloc === null) res[mode].dropped++;
      else res[mode].alloc.push(s.alloc);
    }
    size = pair.old.length;
    if (pair.old.length !== pair.new.length || !Buffer.from(pair.old.buffer, pair.old.byteOffset, pair.old.length).equals(Buffer.from(pair.new.buffer, pair.new.byteOffset, pair.new.length))) {
      throw new Error(`${p.name}: the encoders disagree (${pair.old.length} and ${pair.new.length} bytes)`);
    }
  }
  // Back to back, GC included (what a busy server pays): `loop` encodes per block, old and new blocks alternating.
  const loop = { old: [], new: [] };
  const perBlock = Math.max(2, Math.round(p.reps / 2));
  for (let r = 0; r < 6; r++) {
    for (const mode of r % 2 ? ['new', 'old'] : ['old', 'new']) {
      const enc = mode === 'old' ? encodeOld : encodeProof;
      const t = nowMs();
      for (let i = 0; i < perBlock; i++) enc(p.proof);
      loop[mode].push((nowMs() - t) / perBlock);
    }
  }
  const med = (xs) => (xs.length ? stats(xs).median : NaN);
  const row = {
    proof: p.name,
    bytes: size,
    reps: p.reps,
    oldMs: round(med(res.old.ms)),
    newMs: round(med(res.new.ms)),
    oldAllocPerByte: round(med(res.old.alloc) / size, 3),
    newAllocPerByte: round(med(res.new.alloc) / size, 3),
    gcDropped: res.old.dropped + res.new.dropped,
    oldLoopMs: round(med(loop.old)),
    newLoopMs: round(med(loop.new)),
  };
  row.speedup = round(row.oldMs / row.newMs, 3);
  rows.push(row);
  log(`${p.name}: ${fmtBytes(size)}, old ${fmt(row.oldMs)} ms ${row.oldAllocPerByte} B/B, new ${fmt(row.newMs)} ms ${row.newAllocPerByte} B/B`);
}

table(rows, [
  { key: 'proof' },
  { key: 'bytes', header: 'size', format: (v) => fmtBytes(v) },
  { key: 'oldMs', header: 'old ms' },
  { key: 'newMs', header: 'new ms' },
  { key: 'speedup', header: 'old/new' },
  { key: 'oldLoopMs', header: 'old ms in a loop' },
  { key: 'newLoopMs', header: 'new ms in a loop' },
  { key: 'oldAllocPerByte', header: 'old alloc B/B', format: (v) => String(v) },
  { key: 'newAllocPerByte', header: 'new alloc B/B', format: (v) => String(v) },
], { title: 'Proof encoding: the old encoder (chunks doubling, joined) against the current one; the same bytes' });

const file = writeResults(QUICK ? 'encode-quick' : 'encode', {
  bench: 'encode',
  date: new Date().toISOString(),
  machine: machine({ simd: simdInfo() }),
  cpuHogs: cpuHogs(),
  notes: [
    'old = bench/lib/encode-reference.mjs (the encoder of commit 9ba29d8, verbatim); new = dist encodeProof. Every encode pair compared byte for byte.',
    'ms: median wall time of one encode after a full GC, old and new alternating (fresh memory, no GC inside). ms in a loop: reps/2 encodes back to back, GC included, 3 blocks each, alternating; the median block. alloc B/B: median ArrayBuffer bytes allocated by one encode per byte of proof (memoryUsage().arrayBuffers after minus before, after a full GC); samples during which a GC ran (v8.GCProfiler) are dropped (gcDropped).',
  ],
  rows,
});
log(`wrote ${file}`);
