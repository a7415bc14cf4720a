#!/usr/bin/env node
// Crash test of training checkpoints (docs/training.md, "Training checkpoints and
// resume"): a child process resumes a TrainingRun (three tensor files and a learned
// beta: Linear + HopfieldLookup, Adam with weight decay, clipping and a cosine
// schedule), trains on batches fixed by the step number, checkpoints every few steps and
// prints `ACK <step> <loss as f64 hex>` once each step returned (its record durable). The
// parent SIGKILLs it at random moments (a quarter timed from the spawn: start-up, open,
// replay; the rest after READY: steps, log writes, checkpoints), then requires:
//
//   - the child resumed at the last acknowledged step, or the next one (in flight when
//     killed): no acknowledged step lost, nothing beyond it;
//   - every acknowledged loss equals the uninterrupted in-memory run's at that step, bit for bit;
//   - after each kill the parent opens the run itself: every tensor's rows and root and
//     the dense parameter equal the uninterrupted run's at that step, bit for bit;
//   - at the end the parent resumes and trains on: losses and parameters still equal.
//
//   node scripts/train-crash-test.mjs --kills=200 [--every=4] [--seed=1]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = () => import('../dist/index.js');

export const OPTIONS = { lr: 0.02, weightDecay: 0.01, clipNorm: 0.5, schedule: { kind: 'cosine', warmupSteps: 10, totalSteps: 100000, floor: 0.1 } };

function mulberry32(seed) {
  let s = seed >>> 0;
  return () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function buildModel() {
  const { HopfieldLookup, Linear, Model, init } = await dist();
  return new Model([
    new Linear({ weight: init.normal(8, 8, { seed: 1, std: 0.3 }) }),
    new HopfieldLookup({ keys: init.normal(32, 8, { seed: 2, std: 0.5 }), values: init.normal(32, 3, { seed: 3, std: 0.1 }), k: 4, beta: 5, similarity: 'cosine', normalize: true }),
  ]);
}

/** Step s: 12 rows of inputs and class targets, fixed by s alone. */
function batchOf(s) {
  const r = mulberry32(0x9e3779b9 ^ s);
  const inputs = Float32Array.from({ length: 12 * 8 }, () => r() * 2 - 1);
  const targets = Uint32Array.from({ length: 12 }, () => Math.floor(r() * 3));
  return { inputs, targets };
}

/** One training step s; resolves to its loss (the f64 the tape computed). */
export async function trainStep(model, trainer, s) {
  const { Tape } = await dist();
  const { inputs, targets } = batchOf(s);
  const tape = new Tape();
  const y = await tape.model(model, tape.input(inputs, 8));
  const loss = tape.softmaxCrossEntropy(y, targets);
  const info = await trainer.step(await tape.backward(loss));
  if (info.step !== s) throw new Error(`step ${info.step}, expected ${s}`);
  return loss.value;
}

const hex = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
const f64hex = (x) => hex(Float64Array.of(x));

export function snapshot(model) {
  return JSON.stringify({
    rows: model.tensors.map((t) => hex(t.gather(Uint32Array.from({ length: t.size }, (_, i) => i)))),
    roots: model.tensors.map((t) => hex(t.root())),
    beta: hex(model.layers[1].betaParam),
  });
}

/** The uninterrupted run, in memory, advanced on demand. */
async function reference() {
  const { Trainer } = await dist();
  const model = await buildModel();
  await model.commit();
  const trainer = new Trainer(model, OPTIONS);
  const losses = [];
  return {
    losses,
    async advance(n) {
      while (losses.length < n) losses.push(await trainStep(model, trainer, losses.length + 1));
    },
    async at(n) {
      if (losses.length > n) throw new Error('the reference went past the step asked');
      await this.advance(n);
      return snapshot(model);
    },
  };
}

async function child(path, every) {
  const { TrainingRun } = await dist();
  const run = await TrainingRun.open(path);
  process.stdout.write(`READY ${run.steps}\n`);
  for (let s = run.steps + 1; ; s++) {
    const loss = await trainStep(run.model, run.trainer, s);
    process.stdout.write(`ACK ${s} ${f64hex(loss)}\n`);
    if (s % every === 0) await run.checkpoint();
  }
}

/**
 * Runs the test; resolves to a summary, rejects with the first violation.
 * options: kills, every (checkpoint every so many steps), seed, maxDelayMs, log
 */
export async function runTrainCrashTest(options = {}) {
  const { TrainingRun } = await dist();
  const kills = options.kills ?? 200, every = options.every ?? 4, maxDelay = options.maxDelayMs ?? 400;
  const rand = mulberry32(options.seed ?? 1);
  const dir = mkdtempSync(join(options.dir ?? tmpdir(), 'gt-train-crash-'));
  const path = join(dir, 'run');
  const stats = { kills: 0, acks: 0, inFlightDurable: 0, killedBeforeReady: 0, steps: 0 };
  const ref = await reference();
  try {
    await (await TrainingRun.create(path, await buildModel(), OPTIONS)).close();
    let durable = 0; // the last step known durable
    for (let k = 0; k < kills; k++) {
      const proc = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', path, String(every)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '', err = '';
      const fromSpawn = rand() < 0.25;
      const delay = fromSpawn ? 20 + rand() * maxDelay : rand() * maxDelay;
      let timer = fromSpawn ? setTimeout(() => proc.kill('SIGKILL'), delay) : undefined;
      proc.stdout.on('data', (b) => {
        out += b;
        if (timer === undefined && out.includes('READY')) timer = setTimeout(() => proc.kill('SIGKILL'), delay);
      });
      proc.stderr.on('data', (b) => (err += b));
      const { code, signal } = await new Promise((res) => proc.on('close', (code, signal) => res({ code, signal })));
      clearTimeout(timer);
      if (signal !== 'SIGKILL') throw new Error(`kill ${k}: the child exited by itself (code ${code}): ${err}`);
      stats.kills++;
      const ready = /^READY (\d+)$/m.exec(out);
      if (!ready) stats.killedBeforeReady++;
      else if (Number(ready[1]) !== durable) {
        throw new Error(`kill ${k}: the child resumed at step ${ready[1]}, the parent last found the run at ${durable}`);
      }
      const acks = [...out.matchAll(/^ACK (\d+) ([0-9a-f]{16})$/gm)].map((m) => ({ step: Number(m[1]), loss: m[2] }));
      for (const a of acks) {
        await ref.advance(a.step);
        if (a.loss !== f64hex(ref.losses[a.step - 1])) throw new Error(`kill ${k}: the loss of step ${a.step} differs from the uninterrupted run's`);
      }
      stats.acks += acks.length;
      const lastAck = acks.length ? acks[acks.length - 1].step : durable;
      const run = await TrainingRun.open(path);
      try {
        if (run.steps < lastAck) throw new Error(`kill ${k}: step ${lastAck} was acknowledged but the run resumes at ${run.steps} (lost)`);
        if (run.steps > lastAck + 1) throw new Error(`kill ${k}: the run resumes at ${run.steps}, beyond the in-flight ${lastAck + 1}`);
        if (run.steps === lastAck + 1) stats.inFlightDurable++;
        if (snapshot(run.model) !== (await ref.at(run.steps))) throw new Error(`kill ${k}: the parameters at step ${run.steps} differ from the uninterrupted run's`);
        durable = run.steps;
      } finally {
        await run.close({ checkpoint: false });
      }
      options.log?.(`kill ${k + 1}/${kills}: ${acks.length} acks, run at step ${durable}`);
    }
    // The end: resume once more and train on; still the uninterrupted run, bit for bit.
    const run = await TrainingRun.open(path);
    try {
      for (let s = run.steps + 1; s <= durable + 10; s++) {
        const loss = await trainStep(run.model, run.trainer, s);
        await ref.advance(s);
        if (f64hex(loss) !== f64hex(ref.losses[s - 1])) throw new Error(`after the kills: the loss of step ${s} differs`);
      }
      if (snapshot(run.model) !== (await ref.at(durable + 10))) throw new Error('after the kills: the final parameters differ from the uninterrupted run');
    } finally {
      await run.close();
    }
    stats.steps = durable + 10;
    return stats;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  if (process.argv[2] === '--child') {
    await child(process.argv[3], Number(process.argv[4]));
  } else {
    const arg = (name, def) => {
      const a = process.argv.find((x) => x.startsWith(`--${name}=`));
      return a ? Number(a.slice(name.length + 3)) : def;
    };
    const t0 = Date.now();
    const quiet = process.argv.includes('--quiet');
    const stats = await runTrainCrashTest({
      kills: arg('kills', 200),
      every: arg('every', 4),
      seed: arg('seed', 1),
      maxDelayMs: arg('max-delay-ms', 400),
      log: quiet ? undefined : (m) => process.stdout.write(`${m}\n`),
    });
    console.log(JSON.stringify({ ...stats, seconds: (Date.now() - t0) / 1000 }));
    console.log('train crash test passed: every resumed run equaled the uninterrupted one at its last acknowledged (or in-flight) step, bit for bit');
  }
}
