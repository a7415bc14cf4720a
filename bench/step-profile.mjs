#!/usr/bin/env node
/**
 * Where one proved training step's time goes (docs/step-proofs.md, "What proving a step
 * costs"): runs `steps` proveTrainStep calls of a bench/step-proofs.mjs case under V8's
 * sampling profiler (node:inspector, in process) and charges every sample to the
 * innermost phase on its stack, by function name. Shares of the sampled time, so a loaded
 * machine moves them less than it moves times. Prints a table; writes
 * bench/results/step-profile.json.
 *
 *   node bench/step-profile.mjs [--steps=6] [--cases=classifier,lm,lm-memory] [--top=N]
 *     (--top=N also prints the N functions with the most self and inclusive time;
 *     --interval=US the sampling interval, default 200 us: a longer one perturbs less)
 *   GT_STEP_NATIVE=0 node bench/step-profile.mjs     the prover without its native mirrors
 */
import { Session } from 'node:inspector';
import { join } from 'node:path';

import { ROOT, machine, table, writeResults } from './lib/common.mjs';
import { classifierCase, lmCase } from './lib/step-cases.mjs';

const arg = (name, def) => process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3) ?? def;
const STEPS = Number(arg('steps', '6'));
const CASES = arg('cases', 'classifier,lm').split(',');
const TOP = Number(arg('top', '0'));
const lib = await import(join(ROOT, 'dist', 'index.js'));

// The cases of bench/step-proofs.mjs, with its parameters (the same models and batches).
async function classifier() {
  const data = await import(join(ROOT, 'dist', 'cli', 'classifier.js'));
  const c = classifierCase(lib, data, { n: 2048, d: 784, k: 32, batch: 128, beta: 10, lr: 3e-3, seed: 1 });
  return { label: 'Fashion-MNIST classifier (as bench/step-proofs.mjs)', model: c.proved(), batch: c.batch };
}

function lm(memory = null) {
  const c = lmCase(lib, 'lm', { context: 64, dim: 64, layers: 2, heads: 4, hidden: 192 }, 1e-2, 1, memory);
  return { label: `\`train-lm --quick\` LM${memory ? ' with a memory layer of 256^2 rows' : ''}, one window of 64 bytes`, model: c.proved(), batch: c.batch };
}

/** Phases by the name of a function on the stack (the innermost listed one wins). */
const PHASES = [
  ['prove', 'selection: the forward proof (prove)'],
  ['#block', 'blocks: rows gathered, multiproofs'],
  ['stateOf', 'state blocks: leaves, multiproofs'],
  ['readStateLeaves', 'state leaves decoded'],
  ['stateLeaves', 'state leaves encoded'],
  ['canonicalForward', 'canonical forward'],
  ['closs', 'loss gradient'],
  ['canonicalBackward', 'canonical backward'],
  ['cclip', 'clipping'],
  ['coptimizerStep', 'optimizer'],
  ['optimizerStepNative', 'optimizer'],
  ['apply', 'apply: scatter, state tree hashing, roots'],
  ['encodeProof', 'proof encoding'],
  ['computeStep', 'computeStep: checks, copies, rows after the step'],
];
const byName = new Map(PHASES);

function post(session, method, params) {
  return new Promise((resolve, reject) => session.post(method, params, (err, r) => (err ? reject(err) : resolve(r))));
}

const results = [];
for (const name of CASES) {
  // lm-memory: bench/step-proofs.mjs's lm-memory case (layer 1's MLP a product-key memory of 256^2 rows, 4 heads, k = 32).
  const c = name === 'classifier' ? await classifier() : name === 'lm-memory' ? lm({ layers: [1], subKeys: 256, k: 32, heads: 4 }) : lm();
  await c.model.proveTrainStep(c.batch(0));
  const session = new Session();
  session.connect();
  await post(session, 'Profiler.enable');
  await post(session, 'Profiler.setSamplingInterval', { interval: Number(arg('interval', '200')) });
  await post(session, 'Profiler.start');
  const cpu0 = process.cpuUsage();
  for (let s = 1; s <= STEPS; s++) await c.model.proveTrainStep(c.batch(s));
  const cpu = process.cpuUsage(cpu0);
  const { profile } = await post(session, 'Profiler.stop');
  session.disconnect();
  const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const ch of n.children ?? []) parent.set(ch, n.id);
  const self = new Map();
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + profile.timeDeltas[i]));
  const share = new Map();
  let total = 0;
  for (const [id, t] of self) {
    const fn = nodes.get(id).callFrame.functionName;
    if (fn === '(idle)' || fn === '(program)') continue;
    let phase = fn === '(garbage collector)' ? 'garbage collection' : 'other';
    for (let x = id; x !== undefined && phase === 'other'; x = parent.get(x)) {
      const p = byName.get(nodes.get(x).callFrame.functionName);
      if (p) phase = p;
    }
    share.set(phase, (share.get(phase) ?? 0) + t);
    total += t;
  }
  const rows = [...share].sort((a, b) => b[1] - a[1]).map(([phase, t]) => ({ phase, share: `${((100 * t) / total).toFixed(0)}%`, ms: (t / 1000 / STEPS).toFixed(1) }));
  table(rows, [{ key: 'phase', header: 'phase' }, { key: 'share', header: 'share' }, { key: 'ms', header: 'sampled ms/step' }], {
    title: `${c.label}: ${STEPS} proved steps, native mirrors ${process.env.GT_STEP_NATIVE === '0' ? 'off' : 'on'}, CPU ${((cpu.user + cpu.system) / 1000 / STEPS).toFixed(0)} ms/step`,
  });
  if (TOP > 0) {
    // --top=N: the N functions with the most self time, and the N with the most inclusive time (each function once per stack).
    const selfFn = new Map(), incl = new Map();
    const key = (n) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;
    for (const [id, t] of self) {
      const k = key(nodes.get(id));
      selfFn.set(k, (selfFn.get(k) ?? 0) + t);
      const seen = new Set();
      for (let x = id; x !== undefined; x = parent.get(x)) {
        const kx = key(nodes.get(x));
        if (!seen.has(kx)) { seen.add(kx); incl.set(kx, (incl.get(kx) ?? 0) + t); }
      }
    }
    for (const [title, m] of [['self', selfFn], ['inclusive', incl]]) {
      const top = [...m].sort((a, b) => b[1] - a[1]).slice(0, TOP).map(([fn, t]) => ({ fn, ms: (t / 1000 / STEPS).toFixed(1) }));
      table(top, [{ key: 'fn', header: 'function' }, { key: 'ms', header: 'sampled ms/step' }], { title: `${c.label}: top ${TOP} by ${title} time` });
    }
  }
  results.push({ case: name, label: c.label, steps: STEPS, native: process.env.GT_STEP_NATIVE !== '0', cpuMsPerStep: (cpu.user + cpu.system) / 1000 / STEPS, phases: rows });
}
writeResults(arg('name', process.env.GT_STEP_NATIVE === '0' ? 'step-profile-ts' : 'step-profile'), { date: new Date().toISOString(), machine: machine(), results });
