#!/usr/bin/env node
/**
 * Step proofs benchmark (docs/step-proofs.md, issue 21): what one proved training step
 * costs against the plain training step of the same model, how long a verifier takes,
 * and how many bytes travel.
 *
 *   nice node --expose-gc bench/step-proofs.mjs           all cases (~5-8 min on 2 cores)
 *   nice node --expose-gc bench/step-proofs.mjs --quick   fewer steps, case (c) up to 2^16 rows (~2 min);
 *                                                         writes step-proofs-quick.json
 *   --cases=classifier,lm,lm-memory,memory-n             only these cases
 *   --name=NAME                                          results to bench/results/NAME.json
 *   --dist=DIR                                           measure the build in DIR instead of dist/
 *   --ab=DIR                                             A/B instead: per case, the proved model built by DIR and by
 *                                                        dist/ (same weights), proving and verifying the same batches in
 *                                                        alternating order in one process; the proofs must be identical
 *                                                        byte for byte; median CPU ms of each (less moved by other jobs
 *                                                        than two separate runs); results to step-proofs-ab.json
 *
 * Cases:
 *   classifier  the demo's Fashion-MNIST classifier (lib/cli/classifier.ts): one HopfieldLookup,
 *               cosine, normalised input, N = 2,048 stored images of 784 pixels as keys, values
 *               of 10 (5 x one-hot label), k = 32, beta 10 (held fixed under step proofs),
 *               batches of 128 images from data/fashion-mnist-small; cross-entropy, Adam lr 3e-3
 *               (the plain twin's Trainer also steps beta, one DenseAdam scalar).
 *   lm          the language model of `train-lm --quick` (lib/cli/lm.ts: context 64, dim 64,
 *               2 layers, 4 heads, hidden 192): one window of 64 bytes of text per step;
 *               cross-entropy, Adam lr 1e-2, clip to global norm 1.
 *   lm-memory   the same with its memory-layer variant (`--memory-layers 1`: layer 1's MLP is a
 *               product-key memory of 256^2 = 65,536 rows, 4 heads, k = 32).
 *   memory-n    a small LM (context 16, dim 32, 1 layer, 2 heads, hidden 64) whose MLP is a memory
 *               layer of 2^12, 2^16 or 2^20 value rows (2 heads, k = 8): verify time and proof
 *               bytes against N. The values' rows the step reads are k per head and token; only
 *               their Merkle paths (log N) and the two sub-key tables (2 sqrt(N) rows, sent
 *               until the verifier holds them) grow with N.
 *
 * Per case, with two copies of the model built from the same weights and trained on the same
 * batches, in interleaved rounds (load from other jobs falls on both):
 *   plain      the fast path: a Tape forward/backward and a Trainer step (SparseAdam, clipping)
 *   prove      model.proveTrainStep(batch): the selection, the verifier's canonical step
 *              (forward, loss, backward, optimizer) run by the prover, the writes, the encoding
 *              (with its C++ mirrors of the same bits, lib/model/train/step-native.ts;
 *              GT_STEP_NATIVE=0 runs the TypeScript only; bench/step-profile.mjs: where the time goes)
 *   overhead   (prove - plain) / plain (the issue's goal: at most 0.25)
 *   verify     verifyTrainStep(pinned, bytes) in TypeScript, no addon, verifier holding nothing
 *   bytes      the proof's size cold (verifier holds nothing) and with a PatternCache on both
 *              sides after `cachedSteps` steps (rows the verifier holds travel as ids / deltas),
 *              with that step's prove and verify time.
 *   sha256     a SHA-256 over every proof's bytes of the case, in order (cold and cached): a speed
 *              change to the step code must leave it unchanged (same bits).
 *   cpu        the JSON also gives each median's CPU time of this process (user + system, all
 *              threads): on a shared machine it moves less with other jobs than wall time does.
 * Figures are medians over the timed steps. Tables to stdout, progress to stderr.
 */
import { join } from 'node:path';
import { createHash } from 'node:crypto';

import { CORES, cpuHogs, fmt, fmtBytes, logger, machine, nowMs, round, ROOT, stats, table, tryGc, writeResults } from './lib/common.mjs';

const QUICK = process.argv.includes('--quick');
function listArg(name) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3).split(',') : undefined;
}
// --dist=DIR: measure another build (a copy of dist/ inside the repository, e.g. one from before a change)
const DIST = listArg('dist')?.[0] ?? 'dist';
const lib = await import(join(ROOT, DIST, 'index.js'));
const { PatternCache, Tape, simdInfo } = lib;
const { verifyTrainStep } = await import(join(ROOT, DIST, 'verify/index.js'));
const classifierData = await import(join(ROOT, DIST, 'cli/classifier.js'));
const stepCases = await import('./lib/step-cases.mjs');
const CASES = listArg('cases') ?? ['classifier', 'lm', 'lm-memory', 'memory-n'];
const NAME = listArg('name')?.[0] ?? (QUICK ? 'step-proofs-quick' : 'step-proofs');
const log = logger('step-proofs');

const P = {
  quick: QUICK,
  warmSteps: 1,
  rounds: QUICK ? 3 : 6,
  cachedSteps: QUICK ? 3 : 4,
  classifier: { n: 2048, d: 784, k: 32, batch: 128, beta: 10, lr: 3e-3, seed: 1 },
  lm: { config: { context: 64, dim: 64, layers: 2, heads: 4, hidden: 192 }, lr: 1e-2, clipNorm: 1 },
  lmMemory: { layers: [1], subKeys: 256, k: 32, heads: 4 },
  memoryN: {
    config: { context: 16, dim: 32, layers: 1, heads: 2, hidden: 64 },
    memory: { layers: [0], k: 8, heads: 2 },
    log2N: QUICK ? [12, 16] : [12, 16, 20],
    lr: 1e-2,
    clipNorm: 1,
  },
};

// ---------------------------------------------------------------- the models (bench/lib/step-cases.mjs)

const classifierCase = (L = lib) => stepCases.classifierCase(L, classifierData, P.classifier);
const lmCase = (name, config, lr, clipNorm, memory, L = lib) => stepCases.lmCase(L, name, config, lr, clipNorm, memory);

// ---------------------------------------------------------------- measuring

/** CPU milliseconds (user + system) this process has used. */
function cpuMs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

async function plainStep(q, batch) {
  const tape = new Tape();
  const logits = await tape.model(q.model, batch.input);
  const loss = tape.softmaxCrossEntropy(logits, batch.targets);
  await q.trainer.step(await tape.backward(loss));
  return loss.value;
}

/**
 * Runs one case: warm-up, `rounds` interleaved (plain, prove cold, verify cold) steps, then
 * `cachedSteps` steps with a PatternCache on both sides. withPlain false: no plain twin.
 */
async function runCase(c, { withPlain = true } = {}) {
  tryGc();
  log(`${c.label}: building`);
  const t0 = nowMs();
  const model = c.proved();
  const q = withPlain ? c.plain() : null;
  let pinned = await model.ghost();
  const buildMs = nowMs() - t0;
  const sPlain = [], sProve = [], sVerify = [], bytesCold = [], losses = [];
  const proofHash = createHash('sha256');
  const cPlain = [], cProve = [], cVerify = [];
  let s = 0;
  const one = async (keep) => {
    const batch = c.batch(s++);
    if (q) {
      const t = nowMs(), t1 = cpuMs();
      await plainStep(q, batch);
      if (keep) {
        sPlain.push(nowMs() - t);
        cPlain.push(cpuMs() - t1);
      }
    }
    let t = nowMs(), t1 = cpuMs();
    const step = await model.proveTrainStep(batch);
    const dtP = nowMs() - t, cpuP = cpuMs() - t1;
    proofHash.update(step.bytes);
    t = nowMs();
    t1 = cpuMs();
    const v = await verifyTrainStep(pinned, step.bytes);
    const dtV = nowMs() - t, cpuV = cpuMs() - t1;
    pinned = v.ghost;
    if (keep) {
      cProve.push(cpuP);
      cVerify.push(cpuV);
      sProve.push(dtP);
      sVerify.push(dtV);
      bytesCold.push(step.bytes.length);
      losses.push(v.loss);
    }
    return { dtP, dtV };
  };
  for (let i = 0; i < P.warmSteps; i++) await one(false);
  for (let r = 0; r < P.rounds; r++) {
    await one(true);
    log(`  round ${r + 1}/${P.rounds}: ${q ? `plain ${fmt(sPlain.at(-1))} ms, ` : ''}prove ${fmt(sProve.at(-1))} ms, verify ${fmt(sVerify.at(-1))} ms, ${fmtBytes(bytesCold.at(-1))}`);
  }
  // With caches: the prover's mirror of what the verifier holds, and the verifier's own.
  const mine = new PatternCache(), theirs = new PatternCache();
  const cached = [];
  for (let i = 0; i < P.cachedSteps; i++) {
    const batch = c.batch(s++);
    let t = nowMs();
    const step = await model.proveTrainStep(batch, { cache: mine });
    const dtP = nowMs() - t;
    proofHash.update(step.bytes);
    t = nowMs();
    const v = await verifyTrainStep(pinned, step.bytes, { cache: theirs });
    const dtV = nowMs() - t;
    pinned = v.ghost;
    cached.push({ bytes: step.bytes.length, proveMs: dtP, verifyMs: dtV });
  }
  const last = cached.at(-1);
  const plain = q ? stats(sPlain).median : NaN;
  const prove = stats(sProve).median, verify = stats(sVerify).median;
  const res = {
    case: c.name,
    label: c.label,
    ...(c.extra ?? {}),
    tensors: model.tensors.map((t) => ({ n: t.size, dim: t.dim })),
    buildMs: round(buildMs),
    steps: sProve.length,
    plainMs: round(plain),
    plainP10Ms: q ? round(stats(sPlain).p10) : null,
    plainP90Ms: q ? round(stats(sPlain).p90) : null,
    proveMs: round(prove),
    proveP10Ms: round(stats(sProve).p10),
    proveP90Ms: round(stats(sProve).p90),
    overhead: q ? round((prove - plain) / plain, 3) : null,
    verifyMs: round(verify),
    verifyP10Ms: round(stats(sVerify).p10),
    verifyP90Ms: round(stats(sVerify).p90),
    verifyOverProve: round(verify / prove, 3),
    // CPU time of this process (all its threads: the plain step's native work runs on 2)
    plainCpuMs: q ? round(stats(cPlain).median) : null,
    proveCpuMs: round(stats(cProve).median),
    verifyCpuMs: round(stats(cVerify).median),
    bytesCold: Math.round(stats(bytesCold).median),
    bytesCached: last.bytes,
    cachedAfterSteps: P.cachedSteps,
    cachedProveMs: round(last.proveMs),
    cachedVerifyMs: round(last.verifyMs),
    cachedBytesPerStep: cached.map((x) => x.bytes),
    proofSha256: proofHash.digest('hex'),
    firstLoss: round(losses[0]),
    lastLoss: round(losses.at(-1)),
  };
  log(`  proofs' sha256 ${res.proofSha256}`);
  model.close?.();
  q?.model.close?.();
  return res;
}

// ---------------------------------------------------------------- A/B of two builds

const AB = listArg('ab')?.[0];

/** Per case: the model of build A (--ab=DIR) and of build B (dist/), the same batches in alternating order; CPU ms medians. */
async function abCase(make, libA, verifyA, rounds) {
  const a = make(libA), b = make(lib);
  const ma = a.proved(), mb = b.proved();
  let ga = await ma.ghost(), gb = await mb.ghost();
  const t = { proveA: [], proveB: [], verifyA: [], verifyB: [] };
  for (let s = 0; s < rounds + 1; s++) {
    const batch = a.batch(s);
    const order = s % 2 === 0 ? ['A', 'B'] : ['B', 'A'];
    const bytes = {};
    tryGc();
    for (const who of order) {
      const m = who === 'A' ? ma : mb, verify = who === 'A' ? verifyA : verifyTrainStep;
      let c0 = cpuMs();
      const step = await m.proveTrainStep(batch);
      const cp = cpuMs() - c0;
      c0 = cpuMs();
      const v = await verify(who === 'A' ? ga : gb, step.bytes);
      const cv = cpuMs() - c0;
      if (who === 'A') ga = v.ghost;
      else gb = v.ghost;
      bytes[who] = step.bytes;
      if (s > 0) {
        t[`prove${who}`].push(cp);
        t[`verify${who}`].push(cv);
      }
    }
    if (Buffer.compare(bytes.A, bytes.B) !== 0) throw new Error(`${a.label}: the two builds' proofs of step ${s} differ`);
  }
  ma.close?.();
  mb.close?.();
  const med = (x) => round(stats(x).median);
  const res = { case: a.name, label: a.label, ...(a.extra ?? {}), steps: rounds, proveCpuMsA: med(t.proveA), proveCpuMsB: med(t.proveB), verifyCpuMsA: med(t.verifyA), verifyCpuMsB: med(t.verifyB), identicalProofs: true };
  log(`${a.label}: prove CPU ms ${res.proveCpuMsA} -> ${res.proveCpuMsB}, verify ${res.verifyCpuMsA} -> ${res.verifyCpuMsB}; proofs identical`);
  return res;
}

if (AB !== undefined) {
  const libA = await import(join(ROOT, AB, 'index.js'));
  const { verifyTrainStep: verifyA } = await import(join(ROOT, AB, 'verify/index.js'));
  const rounds = QUICK ? 6 : 12;
  const results = [];
  const c = P.lm.config, m = P.memoryN;
  for (const name of CASES) {
    if (name === 'classifier') results.push(await abCase(classifierCase, libA, verifyA, rounds));
    else if (name === 'lm') results.push(await abCase((L) => lmCase('lm', c, P.lm.lr, P.lm.clipNorm, null, L), libA, verifyA, rounds));
    else if (name === 'lm-memory') results.push(await abCase((L) => lmCase('lm-memory', c, P.lm.lr, P.lm.clipNorm, P.lmMemory, L), libA, verifyA, rounds));
    else if (name === 'memory-n') {
      for (const l of m.log2N) {
        results.push(await abCase((L) => Object.assign(lmCase('memory-n', m.config, m.lr, m.clipNorm, { ...m.memory, subKeys: 2 ** (l / 2) }, L), { extra: { log2N: l } }), libA, verifyA, rounds));
      }
    } else throw new Error(`unknown case ${name}`);
  }
  table(results, [
    { key: 'label', header: 'case' },
    { key: 'proveCpuMsA', header: `prove CPU ms ${AB}` }, { key: 'proveCpuMsB', header: `prove CPU ms ${DIST}` },
    { key: 'verifyCpuMsA', header: `verify CPU ms ${AB}` }, { key: 'verifyCpuMsB', header: `verify CPU ms ${DIST}` },
  ], { title: `Step proofs A/B: ${AB} against ${DIST} (medians of ${rounds} alternating steps; proofs identical)` });
  const file = writeResults(listArg('name')?.[0] ?? 'step-proofs-ab', { date: new Date().toISOString(), machine: machine(), parameters: { ...P, a: AB, b: DIST, rounds }, otherProcesses: cpuHogs(), results });
  log(`wrote ${file}`);
  process.exit(0);
}

// ---------------------------------------------------------------- run

const simd = simdInfo();
log(`simd ${JSON.stringify(simd)}`);
const mach = machine({ simd });
const results = [];
const c = P.lm.config;
for (const name of CASES) {
  if (name === 'classifier') results.push(await runCase(classifierCase()));
  else if (name === 'lm') results.push(await runCase(lmCase('lm', c, P.lm.lr, P.lm.clipNorm, null)));
  else if (name === 'lm-memory') results.push(await runCase(lmCase('lm-memory', c, P.lm.lr, P.lm.clipNorm, P.lmMemory)));
  else if (name === 'memory-n') {
    const m = P.memoryN;
    for (const l of m.log2N) {
      const sub = 2 ** (l / 2);
      const cs = lmCase(`memory-n`, m.config, m.lr, m.clipNorm, { ...m.memory, subKeys: sub });
      cs.extra = { log2N: l, memoryRows: 2 ** l };
      results.push(await runCase(cs, { withPlain: true }));
    }
  } else throw new Error(`unknown case ${name}`);
}

table(results, [
  { key: 'label', header: 'case' },
  { key: 'plainMs', header: 'plain ms' }, { key: 'proveMs', header: 'prove ms' },
  { key: 'overhead', header: '(prove-plain)/plain' },
  { key: 'verifyMs', header: 'verify ms' }, { key: 'verifyOverProve', header: 'verify/prove' },
  { key: 'bytesCold', header: 'bytes cold', format: fmtBytes }, { key: 'bytesCached', header: 'bytes cached', format: fmtBytes },
  { key: 'cachedVerifyMs', header: 'verify cached ms' },
], {
  title: 'Step proofs: one training step proved and verified',
  notes: [
    'plain = Tape forward/backward + Trainer (SparseAdam) step; prove = model.proveTrainStep; verify = verifyTrainStep (no addon, verifier holds nothing).',
    `medians of ${P.rounds} interleaved steps; "cached" = the step after ${P.cachedSteps - 1} earlier steps with a PatternCache on both sides.`,
    `simd ${simd.level ?? JSON.stringify(simd)}; load average at start ${mach.loadavg.join(' ')}, at end ${machine().loadavg.join(' ')}`,
  ],
});
const hogs = cpuHogs();
if (hogs.length > 0) console.log(`\n  other processes using CPU:\n    ${hogs.join('\n    ')}`);
const file = writeResults(NAME, {
  date: new Date().toISOString(),
  machine: mach,
  loadavgAtEnd: machine().loadavg,
  parameters: { ...P, cores: CORES, dist: DIST },
  otherProcesses: hogs,
  results,
});
log(`wrote ${file}`);
