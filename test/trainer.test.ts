/**
 * The Trainer (routing, global-norm clipping, schedules), the initialisers, the
 * DataLoader and fit, on small synthetic tasks with fixed seeds.
 */
import { describe, expect, it } from 'vitest';

import { Embedding, HopfieldLookup, Model, SparseTensor } from '../lib/index.js';
import { InvalidArgumentError, NonFiniteError, OutOfRangeError } from '../lib/shared/errors.js';
import { DataLoader, fit, type EpochRecord } from '../lib/model/train/fit.js';
import { init } from '../lib/model/train/init.js';
import { scheduleFactor, type Schedule } from '../lib/model/train/schedule.js';
import type { Gradients } from '../lib/model/train/tape.js';
import { Tape } from '../lib/model/train/tape.js';
import { Trainer } from '../lib/model/train/trainer.js';
import { Rng } from './helpers/rng.js';

/** A HopfieldLookup over zero-valued tensors with beta 0: after one SGD step at lr 1 every value is minus its (coalesced, clipped) gradient. */
function zeroLayer(n = 6, d = 4, dv = 3): HopfieldLookup {
  const l = new HopfieldLookup({ keys: SparseTensor.fromArray(new Float32Array(n * d), d), values: SparseTensor.fromArray(new Float32Array(n * dv), dv), k: 2, beta: 1 });
  l.betaParam[0] = 0;
  return l;
}

function fakeGrads(l: HopfieldLookup, rng: Rng, scale: number): Gradients {
  const keys = l.keys as SparseTensor;
  // Repeated ids: the optimizer sums them, so the norm must too.
  const kIds = Uint32Array.of(1, 3, 1, 1);
  const vIds = Uint32Array.of(0, 5);
  return {
    sparse: [
      { tensor: keys, ids: kIds, grads: rng.f32(kIds.length * keys.dim, scale).map(Math.abs) },
      { tensor: l.values, ids: vIds, grads: rng.f32(vIds.length * l.values.dim, scale) },
    ],
    dense: [{ param: l.betaParam, grad: Float32Array.of(0.75 * scale) }],
    of: () => null,
  };
}

/** The f64 norm of everything the step moved (each value started at 0). */
function movedNorm(l: HopfieldLookup): number {
  let s = 0;
  for (const t of [l.keys as SparseTensor, l.values]) for (const v of t.gather(Array.from({ length: t.size }, (_, i) => i))) s += v * v;
  return Math.sqrt(s + l.betaParam[0]! ** 2);
}

describe('Trainer: clipping, routing and schedules', () => {
  it('clips the global norm (sparse rows summed per id, and the dense beta) to clipNorm exactly, in f64', async () => {
    const rng = new Rng(1);
    const l = zeroLayer();
    const t = new Trainer([l], { optimizer: 'sgd', lr: 1, clipNorm: 0.5 });
    const g = fakeGrads(l, rng, 1);
    const info = await t.step(g);
    expect(info.gradNorm).toBeGreaterThan(0.5);
    expect(info.clipScale).toBeCloseTo(0.5 / info.gradNorm!, 12);
    expect(Math.abs(movedNorm(l) - 0.5)).toBeLessThan(1e-6);
    // The norm the trainer reports is that of the coalesced gradient: what the step moved, before clipping.
    const l2 = zeroLayer();
    const t2 = new Trainer([l2], { optimizer: 'sgd', lr: 1, clipNorm: 1e9 });
    const g2 = fakeGrads(l2, new Rng(1), 1);
    const info2 = await t2.step(g2);
    expect(info2.clipScale).toBe(1);
    expect(Math.abs(movedNorm(l2) - info2.gradNorm!)).toBeLessThan(1e-6 * info2.gradNorm!);
    expect(info2.gradNorm).toBe(info.gradNorm);
  });

  it('under clipNorm nothing is scaled: the step moves by the gradient bit for bit', async () => {
    const rng = new Rng(2);
    const l = zeroLayer();
    const t = new Trainer([l], { optimizer: 'sgd', lr: 1, clipNorm: 100 });
    const g = fakeGrads(l, rng, 0.1);
    const info = await t.step(g);
    expect(info.clipScale).toBe(1);
    const v = l.values.gather([0, 5]);
    for (let i = 0; i < v.length; i++) expect(v[i]).toBe(-g.sparse[1]!.grads[i]!);
    expect(l.betaParam[0]).toBe(-g.dense[0]!.grad[0]!);
  });

  it('routes sparse tensors to one sparse optimizer and dense parameters to Adam; refuses foreign tensors', async () => {
    const rng = new Rng(3);
    const l = zeroLayer();
    const t = new Trainer(new Model([l]), { lr: 0.01 });
    expect(t.tensors).toEqual([l.keys, l.values]);
    expect(t.sparseOptimizer!.tensors).toEqual([l.keys, l.values]);
    await t.step(fakeGrads(l, rng, 1));
    // Adam's first step moves each touched value by lr (sign of the gradient), beta included.
    expect(Math.abs(l.betaParam[0]!)).toBeCloseTo(0.01, 6);
    expect(Math.abs(l.values.gather([0])[0]!)).toBeCloseTo(0.01, 6);
    const other = SparseTensor.fromArray(new Float32Array(4), 4);
    await expect(t.step({ sparse: [{ tensor: other, ids: [0], grads: new Float32Array(4) }], dense: [], of: () => null })).rejects.toThrow(InvalidArgumentError);
    // A non-finite gradient anywhere: NonFiniteError and nothing moves (with or without clipping).
    for (const clipNorm of [undefined, 1]) {
      const l3 = zeroLayer();
      const t3 = new Trainer([l3], { lr: 0.01, ...(clipNorm === undefined ? {} : { clipNorm }) });
      for (const where of ['sparse', 'dense'] as const) {
        const g = fakeGrads(l3, rng, 1);
        if (where === 'sparse') g.sparse[1]!.grads[2] = NaN;
        else g.dense[0]!.grad[0] = Infinity;
        await expect(t3.step(g)).rejects.toThrow(NonFiniteError);
        expect(movedNorm(l3)).toBe(0);
        expect(t3.steps).toBe(0);
      }
      t3.detach();
    }
    expect(() => new Trainer([l])).toThrow(/already has an optimizer/);
    expect(() => new Trainer([l], { replaceState: true })).not.toThrow();
  });

  it('applies the schedule to both optimizers by step number', async () => {
    const rng = new Rng(4);
    const l = zeroLayer();
    const schedule: Schedule = { kind: 'step', every: 2, gamma: 0.5 };
    const t = new Trainer([l], { optimizer: 'adam', lr: 0.1, schedule });
    const lrs: number[] = [];
    for (let s = 0; s < 5; s++) {
      const info = await t.step(fakeGrads(l, rng, 1));
      lrs.push(info.lr);
      expect(t.sparseOptimizer!.lr).toBe(info.lr);
    }
    expect(lrs).toEqual([0.1, 0.1, 0.05, 0.05, 0.025]);
    expect(t.steps).toBe(5);
    expect(t.lr).toBe(0.025);
  });

  it('schedules follow their formulas', () => {
    const f = (s: Schedule, t: number): number => scheduleFactor(s, t);
    expect([0, 5, 1000].map((t) => f({ kind: 'constant' }, t))).toEqual([1, 1, 1]);
    expect([0, 1, 3, 4, 100].map((t) => f({ kind: 'warmup', warmupSteps: 4 }, t))).toEqual([0.25, 0.5, 1, 1, 1]);
    const cos: Schedule = { kind: 'cosine', warmupSteps: 10, totalSteps: 110, floor: 0.1 };
    expect(f(cos, 0)).toBeCloseTo(0.1, 15);
    expect(f(cos, 9)).toBe(1);
    expect(f(cos, 10)).toBe(1);
    expect(f(cos, 35)).toBeCloseTo(0.1 + 0.9 * (1 + Math.SQRT1_2) / 2, 14); // a quarter of the way: cos(pi / 4)
    expect(f(cos, 60)).toBeCloseTo(0.55, 14);
    expect(f(cos, 110)).toBeCloseTo(0.1, 14);
    expect(f(cos, 5000)).toBeCloseTo(0.1, 14);
    expect(f({ kind: 'cosine', totalSteps: 4 }, 2)).toBeCloseTo(0.5, 14); // no warm-up, floor 0
    expect([0, 9, 10, 25, 30].map((t) => f({ kind: 'step', every: 10, gamma: 0.5 }, t))).toEqual([1, 1, 0.5, 0.25, 0.125]);
  });

  it('hostile options are refused with typed errors', () => {
    const l = zeroLayer();
    const bad: [unknown, typeof InvalidArgumentError | typeof OutOfRangeError][] = [
      [{ kind: 'exponential' }, InvalidArgumentError],
      [{ kind: 'cosine', warmupSteps: 10, totalSteps: 10 }, OutOfRangeError],
      [{ kind: 'step', every: 10, gamma: 2 }, OutOfRangeError],
      [{ kind: 'step', every: 0, gamma: 0.5 }, OutOfRangeError],
      [{ kind: 'step', every: 10, gamma: NaN }, OutOfRangeError],
      [{ kind: 'warmup', warmupSteps: 1.5 }, InvalidArgumentError],
      [{ kind: 'warmup', warmupSteps: 4, totalSteps: 9 }, InvalidArgumentError],
      [{ kind: 'cosine', totalSteps: 10, floor: -0.1 }, OutOfRangeError],
      ['cosine', InvalidArgumentError],
    ];
    for (const [s, E] of bad) {
      expect(() => scheduleFactor(s as Schedule, 0), JSON.stringify(s)).toThrow(E);
      expect(() => new Trainer([l], { schedule: s as Schedule, replaceState: true }), JSON.stringify(s)).toThrow(E);
    }
    expect(() => scheduleFactor({ kind: 'constant' }, -1)).toThrow(OutOfRangeError);
    expect(() => new Trainer([l], { clipNorm: 0, replaceState: true })).toThrow(OutOfRangeError);
    expect(() => new Trainer([l], { clipNorm: -1, replaceState: true })).toThrow(OutOfRangeError);
    expect(() => new Trainer([l], { clipNorm: NaN, replaceState: true })).toThrow(OutOfRangeError);
    expect(() => new Trainer([l], { lr: Infinity, replaceState: true })).toThrow(OutOfRangeError);
    expect(() => new Trainer([l], { beta1: 1.5, replaceState: true })).toThrow(OutOfRangeError);
    expect(() => new Trainer([l], { optimizer: 'sgd', beta1: 0.9, replaceState: true })).toThrow(InvalidArgumentError);
    expect(() => new Trainer([l], { optimizer: 'rmsprop' as 'sgd', replaceState: true })).toThrow(InvalidArgumentError);
    expect(() => new Trainer([l], { momentum: 0.9 } as object)).toThrow(/unknown option 'momentum'/);
    expect(() => new Trainer([])).toThrow(InvalidArgumentError);
    expect(() => new Trainer([{} as HopfieldLookup])).toThrow(InvalidArgumentError);
  });
});

describe('initialisers', () => {
  it('are seeded and deterministic, and follow their scales', () => {
    const a = init.normal(200, 50, { seed: 7, std: 0.5 }), b = init.normal(200, 50, { seed: 7, std: 0.5 }), c = init.normal(200, 50, { seed: 8, std: 0.5 });
    const all = (t: SparseTensor): Float32Array => t.gather(Array.from({ length: t.size }, (_, i) => i));
    expect(all(a)).toEqual(all(b));
    expect(all(a)).not.toEqual(all(c));
    const stats = (v: Float32Array): { mean: number; std: number; max: number } => {
      let s = 0, s2 = 0, max = 0;
      for (const x of v) {
        s += x;
        s2 += x * x;
        max = Math.max(max, Math.abs(x));
      }
      return { mean: s / v.length, std: Math.sqrt(s2 / v.length - (s / v.length) ** 2), max };
    };
    const n = stats(all(a));
    expect(Math.abs(n.mean)).toBeLessThan(0.02);
    expect(Math.abs(n.std - 0.5)).toBeLessThan(0.02);
    const x = stats(all(init.xavier(300, 100, { seed: 1 }))); // uniform in +-sqrt(6 / 400)
    expect(x.max).toBeLessThanOrEqual(Math.fround(Math.sqrt(6 / 400)));
    expect(Math.abs(x.std - Math.sqrt(2 / 400))).toBeLessThan(0.003);
    const k = stats(all(init.kaiming(300, 100, { seed: 1 })));
    expect(Math.abs(k.std - Math.sqrt(2 / 100))).toBeLessThan(0.005);
    const u = stats(all(init.uniform(100, 100, { low: 2, high: 3 })));
    expect(Math.abs(u.mean - 2.5)).toBeLessThan(0.01);
    expect(() => init.uniform(10, 10, { low: 1, high: 0 })).toThrow(OutOfRangeError);
    expect(() => init.normal(10, 10, { seed: -1 })).toThrow(OutOfRangeError);
    expect(() => init.xavier(10, 10, { distribution: 'cauchy' as 'normal' })).toThrow(InvalidArgumentError);
    expect(() => init.normal(0, 10)).toThrow(OutOfRangeError);
  });
});

/** Three well-separated classes in 8 dimensions: centre + noise. */
function blobs(rng: Rng, n: number): { inputs: Float32Array; targets: Uint8Array } {
  const centres = [rng.f32(8, 1), rng.f32(8, 1), rng.f32(8, 1)];
  const inputs = new Float32Array(n * 8), targets = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const c = i % 3;
    targets[i] = c;
    for (let j = 0; j < 8; j++) inputs[i * 8 + j] = centres[c]![j]! + 0.3 * rng.signed();
  }
  return { inputs, targets };
}

function classifier(seed: number): Model {
  return new Model([new HopfieldLookup({ keys: init.normal(12, 8, { seed, std: 0.5 }), values: init.normal(12, 3, { seed: seed + 1, std: 0.1 }), k: 4, beta: 5, similarity: 'cosine', normalize: true })]);
}

describe('DataLoader and fit', () => {
  it('a DataLoader visits every example once per epoch, keeps the last partial batch, and shuffles by seed and epoch', () => {
    const inputs = Float32Array.from({ length: 10 * 2 }, (_, i) => Math.floor(i / 2));
    const targets = Uint32Array.from({ length: 10 }, (_, i) => i);
    const dl = new DataLoader({ inputs, cols: 2, targets }, { batchSize: 4, seed: 3 });
    const seen = (e: number): number[] => [...dl.epoch(e)].flatMap((b) => Array.from(b.targets));
    expect([...dl.epoch(0)].map((b) => b.rows)).toEqual([4, 4, 2]);
    for (const b of dl.epoch(0)) for (let r = 0; r < b.rows; r++) expect(b.inputs[r * 2]).toBe(b.targets[r]);
    expect([...seen(0)].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(seen(0)).not.toEqual(seen(1));
    expect(seen(1)).toEqual([...new DataLoader({ inputs, cols: 2, targets }, { batchSize: 4, seed: 3 }).epoch(1)].flatMap((b) => Array.from(b.targets)));
    expect(() => new DataLoader({ inputs, cols: 3, targets })).toThrow(InvalidArgumentError);
    expect(() => new DataLoader({ inputs, cols: 2, targets: targets.subarray(1) })).toThrow(InvalidArgumentError);
  });

  it('fit learns a separable task: the loss falls, accuracy rises; the same seed gives the same history bit for bit', async () => {
    const rng = new Rng(5);
    const train = blobs(rng, 240), validation = blobs(new Rng(5), 60);
    const run = async (): Promise<EpochRecord[]> => {
      const model = classifier(11);
      const trainer = new Trainer(model, { lr: 0.05, schedule: { kind: 'cosine', warmupSteps: 5, totalSteps: 60, floor: 0.1 }, clipNorm: 5 });
      const h = await fit(trainer, { train, validation, epochs: 4, batchSize: 16, metrics: ['accuracy'], seed: 2 });
      expect(h.steps).toBe(4 * 15);
      expect(h.stopped).toBe(false);
      trainer.detach();
      return h.epochs;
    };
    const a = await run();
    expect(a[3]!.loss).toBeLessThan(a[0]!.loss * 0.7);
    expect(a[3]!.valLoss!).toBeLessThan(a[0]!.valLoss!);
    expect(a[3]!.valAccuracy!).toBeGreaterThan(0.95);
    expect(a[0]!.accuracy!).toBeLessThan(a[3]!.accuracy!);
    const b = await run();
    expect(b).toEqual(a);
    for (const [i, e] of a.entries()) for (const k of Object.keys(e) as (keyof EpochRecord)[]) expect(Object.is(e[k], b[i]![k]), `${k}`).toBe(true);
  });

  it('an Embedding-first model trains on ids; MSE targets are rows of floats', async () => {
    const emb = new Embedding(init.normal(5, 3, { seed: 4, std: 0.5 }));
    const trainer = new Trainer(new Model([emb]), { lr: 0.1 });
    const ids = Uint32Array.of(0, 1, 2, 3, 4, 0, 1, 2);
    const targets = Float32Array.from({ length: 8 * 3 }, (_, i) => (ids[Math.floor(i / 3)]! + (i % 3)) / 5);
    const h = await fit(trainer, { train: { inputs: ids, targets }, epochs: 100, batchSize: 4, loss: 'mse' });
    expect(h.epochs[99]!.loss).toBeLessThan(h.epochs[0]!.loss / 10);
    // Each id's row has moved to its target row (every float of it, not only the first).
    const y = emb.forward([0, 1, 2, 3, 4]);
    for (let i = 0; i < 15; i++) expect(Math.abs(y[i]! - targets[i]!), `row ${Math.floor(i / 3)}[${i % 3}]`).toBeLessThan(0.1);
    trainer.detach();
  });

  it('an AbortSignal stops the run after the step in progress; callbacks see every step and epoch', async () => {
    const rng = new Rng(6);
    const train = blobs(rng, 96);
    const trainer = new Trainer(classifier(3), { lr: 0.05 });
    const ac = new AbortController();
    const steps: number[] = [];
    const epochs: EpochRecord[] = [];
    const h = await fit(trainer, {
      train, epochs: 5, batchSize: 16,
      signal: ac.signal,
      onStep: (s) => {
        steps.push(s.step);
        if (s.step === 8) ac.abort();
      },
      onEpoch: (e) => void epochs.push(e),
    });
    expect(h.stopped).toBe(true);
    expect(h.steps).toBe(8);
    expect(trainer.steps).toBe(8);
    expect(steps).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(epochs.map((e) => [e.epoch, e.steps, e.complete])).toEqual([[1, 6, true], [2, 2, false]]);
    expect(h.epochs).toEqual(epochs);
    trainer.detach();
  });

  it('fit refuses hostile options', async () => {
    const trainer = new Trainer(classifier(4), { lr: 0.05 });
    const train = blobs(new Rng(1), 12);
    await expect(fit(trainer, { train, epochs: 0 })).rejects.toThrow(OutOfRangeError);
    await expect(fit(trainer, { train, loss: 'hinge' as 'mse' })).rejects.toThrow(InvalidArgumentError);
    await expect(fit(trainer, { train: { inputs: train.inputs, targets: new Float32Array(12 * 3) }, loss: 'mse', metrics: ['accuracy'] })).rejects.toThrow(/accuracy/);
    await expect(fit(trainer, { train, metrics: ['f1' as 'accuracy'] })).rejects.toThrow(InvalidArgumentError);
    await expect(fit(trainer, { train, batchSize: 0 })).rejects.toThrow(OutOfRangeError);
    await expect(fit(trainer, { train, signal: {} as AbortSignal })).rejects.toThrow(InvalidArgumentError);
    await expect(fit(trainer, { train: { inputs: train.inputs, targets: Uint8Array.of(0, 1) } })).rejects.toThrow(InvalidArgumentError);
    await expect(fit(trainer, { train: { inputs: train.inputs, targets: train.targets.map(() => 7) } })).rejects.toThrow(OutOfRangeError); // 3 classes
    await expect(fit(new Trainer([zeroLayer()]), { train })).rejects.toThrow(/forward/);
    await expect(fit(trainer, { train, shuffel: true } as object as { train: typeof train })).rejects.toThrow(/unknown option/);
    expect(trainer.steps).toBe(0);
    trainer.detach();
  });

  it('a custom forward on a tape (a residual add) trains through fit', async () => {
    const l = new HopfieldLookup({ keys: init.normal(12, 8, { seed: 9, std: 0.5 }), values: init.normal(12, 8, { seed: 10, std: 0.1 }), k: 4 });
    const head = new HopfieldLookup({ keys: init.normal(6, 8, { seed: 12, std: 0.5 }), values: init.normal(6, 3, { seed: 13, std: 0.1 }), k: 6 });
    const trainer = new Trainer([l, head], { lr: 0.05 });
    const train = blobs(new Rng(2), 96);
    const h = await fit(trainer, {
      train: { ...train, cols: 8 }, epochs: 3, batchSize: 16, metrics: ['accuracy'],
      forward: async (tape: Tape, x) => tape.layer(head, tape.add(x as never, await tape.layer(l, x))),
    });
    expect(h.epochs[2]!.loss).toBeLessThan(h.epochs[0]!.loss);
    trainer.detach();
  });
});
