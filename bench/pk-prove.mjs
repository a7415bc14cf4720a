#!/usr/bin/env node
/**
 * Product-key proving cost in CPU time: one HopfieldLookup layer over
 * ProductKeyIndex.random(sqrt(N), 64) (two tables of sqrt(N) x 32), values N x 64, k = 32.
 * Per configuration, medians over repeated calls of the process CPU time (user + system,
 * all threads, process.cpuUsage) and of the wall time of:
 *   forward   await layer.forward(x)                      the fast f32 path
 *   prove     await model.prove(x)                        no cache: both tables travel in full
 *   held      await model.prove(x, { cache: mirror })     the verifier holds every row (held tables, ids)
 *   verify    await verifyForward(ghost, held, { cache }) the held proof checked by the verifier (TypeScript)
 * CPU time is what a loaded machine (other jobs on the cores) distorts least; bench/proofs.mjs
 * has the wall-clock view and the verifier's side.
 *
 *   node --expose-gc bench/pk-prove.mjs [--log2n=16,20,22] [--batches=1,64]
 *        [--root=DIR]   measure the build in DIR (its dist/ and build/), e.g. a copy of an older commit's
 *        [--base=DIR]   also measure the build in DIR, interleaved with this one (prove and held
 *                       of both on the same data, call by call): columns "base prove", "base held"
 *                       and the ratios new / base; the proofs' SHA-256 are compared (the cold
 *                       ones must be equal; the held ones differ across proof format versions)
 *        [--name=NAME]  results to bench/results/NAME.json (default pk-prove)
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';

import { cpuHogs, fmt, fmtBytes, logger, machine, otherProcesses, ROOT, rng, table, tryGc, writeResults } from './lib/common.mjs';

const arg = (name) => process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
const root = arg('root') ?? ROOT;
const { Model, HopfieldLookup, ProductKeyIndex, SparseTensor, PatternCache, pinGhost, verifyForward, simdInfo } = await import(join(root, 'dist/index.js'));
const baseRoot = arg('base');
const base = baseRoot === undefined ? null : await import(join(baseRoot, 'dist/index.js'));
const LOG2N = (arg('log2n') ?? '16,20,22').split(',').map(Number);
const BATCHES = (arg('batches') ?? '1,64').split(',').map(Number);
const NAME = arg('name') ?? 'pk-prove';
const K = 32;
const log = logger('pk-prove');

const results = {
  name: NAME,
  date: new Date().toISOString(),
  command: ['node --expose-gc bench/pk-prove.mjs', ...process.argv.slice(2)].join(' '),
  build: root,
  base: baseRoot ?? null,
  machine: machine({ simd: simdInfo() }),
  otherProcessesAtStart: otherProcesses(),
  cpuHogsAtStart: cpuHogs(),
  parameters: { k: K, d: 64, dv: 64, layer: 'HopfieldLookup({ keys: ProductKeyIndex.random(sqrt(N), 64), values: N x 64, k: 32 })', units: 'ms per call, medians' },
  configs: [],
};

async function cpuAndWall(fn) {
  const c = process.cpuUsage();
  const t = performance.now();
  await fn();
  const d = process.cpuUsage(c);
  return [(d.user + d.system) / 1000, performance.now() - t];
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
};

/** The layer and model of one size, built by library L from the seed alone (the same data for every build). */
async function setup(L, log2N) {
  const rand = rng(0x706b + log2N);
  const n = 2 ** (log2N / 2), N = n * n;
  const keys = L.ProductKeyIndex.random(n, 64, rand);
  const v = new Float32Array(N * 64);
  for (let i = 0; i < v.length; i++) v[i] = rand() * 2 - 1;
  const values = L.SparseTensor.fromArray(v, 64, { adopt: true });
  for (const t of [keys.keys1, keys.keys2, values]) await t.commit();
  const layer = new L.HopfieldLookup({ keys, values, k: K });
  const model = new L.Model([layer]);
  const ghost = await L.pinGhost((await model.ghost()).bytes);
  return { layer, model, mirror: () => new L.PatternCache(2 ** 22), rand, L, ghost };
}
const sha = (b) => createHash('sha256').update(b).digest('hex');

for (const log2N of LOG2N) {
  tryGc();
  const n = 2 ** (log2N / 2);
  const self = await setup({ Model, HopfieldLookup, ProductKeyIndex, SparseTensor, PatternCache, pinGhost, verifyForward }, log2N);
  const { layer, model, mirror: newMirror, rand } = self;
  const other = base === null ? null : await setup(base, log2N);
  for (const B of BATCHES) {
    const x = Float32Array.from({ length: B * 64 }, () => rand() * 2 - 1);
    const mirror = newMirror();
    await layer.forward(x);
    await model.prove(x);
    await model.prove(x, { cache: mirror });
    const baseMirror = other?.mirror();
    if (other) await other.model.prove(x, { cache: baseMirror });
    const reps = B === 1 ? 300 : 40;
    const f = [], p = [], h = [], bp = [], bh = [];
    // Interleaved, so load from other jobs hits them alike; with a base, the two builds take
    // turns going first (an A/A run, --base=. , showed 10-20% in favour of whichever runs second).
    const mine = async () => {
      p.push(await cpuAndWall(() => model.prove(x)));
      h.push(await cpuAndWall(() => model.prove(x, { cache: mirror })));
    };
    const theirs = async () => {
      bp.push(await cpuAndWall(() => other.model.prove(x)));
      bh.push(await cpuAndWall(() => other.model.prove(x, { cache: baseMirror })));
    };
    for (let r = 0; r < reps; r++) {
      f.push(await cpuAndWall(() => layer.forward(x)));
      if (other && r % 2 === 1) await theirs();
      await mine();
      if (other && r % 2 === 0) await theirs();
    }
    // The verifier's side of a held proof: a prover's mirror and a verifier's cache in step (one cold proof first), each build's own.
    const verifiers = [self, ...(other ? [other] : [])].map((u) => ({ u, mirror: u.mirror(), cache: u.mirror(), cpu: [] }));
    for (const v of verifiers) await v.u.L.verifyForward(v.u.ghost, (await v.u.model.prove(x, { cache: v.mirror })).bytes, { cache: v.cache });
    for (let r = 0; r < reps; r++) {
      for (let i = 0; i < verifiers.length; i++) {
        const v = verifiers[(i + r) % verifiers.length];
        const bytes = (await v.u.model.prove(x, { cache: v.mirror })).bytes;
        v.cpu.push((await cpuAndWall(() => v.u.L.verifyForward(v.u.ghost, bytes, { cache: v.cache })))[0]);
      }
    }
    const proof = (await model.prove(x)).bytes, held = (await model.prove(x, { cache: mirror })).bytes;
    const c = {
      log2N, n, B, k: K,
      forwardCpuMs: median(f.map((z) => z[0])), proveCpuMs: median(p.map((z) => z[0])), heldCpuMs: median(h.map((z) => z[0])),
      forwardMs: median(f.map((z) => z[1])), proveMs: median(p.map((z) => z[1])), heldMs: median(h.map((z) => z[1])),
      bytes: proof.length, heldBytes: held.length,
    };
    c.verifyHeldCpuMs = median(verifiers[0].cpu);
    c.proveOverhead = (c.proveCpuMs - c.forwardCpuMs) / c.forwardCpuMs;
    c.heldOverhead = (c.heldCpuMs - c.forwardCpuMs) / c.forwardCpuMs;
    if (other) {
      c.baseProveCpuMs = median(bp.map((z) => z[0]));
      c.baseHeldCpuMs = median(bh.map((z) => z[0]));
      c.proveVsBase = c.proveCpuMs / c.baseProveCpuMs;
      c.heldVsBase = c.heldCpuMs / c.baseHeldCpuMs;
      c.baseVerifyHeldCpuMs = median(verifiers[1].cpu);
      c.verifyHeldVsBase = c.verifyHeldCpuMs / c.baseVerifyHeldCpuMs;
      // The cold proofs must be the same bytes; the held ones differ when one build sends held tables
      // (proof format version 2) and the other every table row as a held marker (version 1).
      const baseHeld = (await other.model.prove(x, { cache: baseMirror })).bytes;
      c.sameProofAsBase = sha(proof) === sha((await other.model.prove(x)).bytes);
      c.sameHeldAsBase = sha(held) === sha(baseHeld);
      c.baseHeldBytes = baseHeld.length;
    }
    results.configs.push(c);
    log(`N=2^${log2N} B=${B}: cpu forward ${fmt(c.forwardCpuMs)} prove ${fmt(c.proveCpuMs)} held ${fmt(c.heldCpuMs)} ms`);
    writeResults(NAME, { ...results, partial: true });
  }
}

const pct = (x) => `${fmt(100 * x, 3)}%`;
table(results.configs, [
  { key: 'log2N', header: 'N', format: (x) => `2^${x}` },
  'B',
  { key: 'forwardCpuMs', header: 'forward cpu ms' },
  { key: 'proveCpuMs', header: 'prove cpu ms' },
  { key: 'proveOverhead', header: '(prove-fwd)/fwd', format: pct },
  { key: 'heldCpuMs', header: 'held cpu ms' },
  { key: 'heldOverhead', header: '(held-fwd)/fwd', format: pct },
  { key: 'verifyHeldCpuMs', header: 'verify held cpu' },
  { key: 'forwardMs', header: 'fwd wall' },
  { key: 'proveMs', header: 'prove wall' },
  { key: 'heldMs', header: 'held wall' },
  { key: 'bytes', header: 'bytes', format: fmtBytes },
  { key: 'heldBytes', header: 'held bytes', format: fmtBytes },
  ...(base === null ? [] : [
    { key: 'baseProveCpuMs', header: 'base prove cpu' },
    { key: 'proveVsBase', header: 'prove/base', format: (x) => fmt(x, 3) },
    { key: 'baseHeldCpuMs', header: 'base held cpu' },
    { key: 'heldVsBase', header: 'held/base', format: (x) => fmt(x, 3) },
    { key: 'baseVerifyHeldCpuMs', header: 'base verify held' },
    { key: 'verifyHeldVsBase', header: 'verify/base', format: (x) => fmt(x, 3) },
    { key: 'sameProofAsBase', header: 'same SHA-256', format: (x) => (x ? 'yes' : 'NO') },
    { key: 'baseHeldBytes', header: 'base held bytes', format: fmtBytes },
    { key: 'sameHeldAsBase', header: 'held same', format: (x) => (x ? 'yes' : 'no') },
  ]),
], { title: `Product-key proving, CPU time (${root === ROOT ? 'this build' : root})` });
results.otherProcessesAtEnd = otherProcesses();
writeResults(NAME, results);
