/**
 * A Trainer routes a tape's gradients to the optimizers (docs/training.md, "Training a
 * model"): one SparseAdam (or SparseSGD) over every SparseTensor the layers use, built
 * at construction, and one dense optimizer over the dense parameters (a learned beta)
 * that backward returns, each parameter getting its own Adam state the first time it
 * has a gradient. A step:
 *
 *   1. checks every gradient (its tensor is one of the layers', finite values);
 *   2. with clipNorm c, computes the global norm |g| over all sparse and dense gradients
 *      in f64 (a tensor's repeated ids summed first, as the optimizer will) and, when
 *      |g| > c, multiplies every gradient by c / |g| (rounded to f32); without clipNorm
 *      the norm is not computed (it costs a pass over every gradient: globalNorm());
 *   3. sets the learning rate of both optimizers to lr * scheduleFactor(schedule, t),
 *      t the number of steps taken before this one (schedule.ts);
 *   4. steps the sparse optimizer (off the JavaScript thread) and the dense one.
 *
 * Weight decay applies to the sparse tensors (decoupled, lazy with catch-up); dense
 * parameters take none. With optimizer 'sgd' the dense parameters take plain SGD steps.
 */
import { checkBoolean, checkNumber, checkOptions, describe } from '../../shared/args.js';
import { InvalidArgumentError, NonFiniteError } from '../../shared/errors.js';
import type { SparseTensor } from '../../tensor/sparse-tensor.js';
import { kindOf, type ModelLayer } from '../kinds/index.js';
import { Model } from '../model.js';
import { DenseAdam, SparseAdam, SparseSGD, type SparseGrad } from '../optim.js';
import { checkSchedule, scheduleFactor, type Schedule } from './schedule.js';
import type { Gradients } from './tape.js';

export interface TrainerOptions {
  /** 'adam' (default; SparseAdam with per-row bias correction, DenseAdam) or 'sgd'. */
  optimizer?: 'adam' | 'sgd';
  /** Base learning rate (default 1e-3 for Adam, 1e-2 for SGD). */
  lr?: number;
  /** Decoupled weight decay of the sparse tensors (default 0). */
  weightDecay?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Learning-rate schedule (default constant). */
  schedule?: Schedule;
  /** Clip the global gradient norm to this (default: no clipping). */
  clipNorm?: number;
  /** Replace optimizers already attached to the tensors (their state is lost). Default false. */
  replaceState?: boolean;
}

/** What one step did. */
export interface StepInfo {
  /** Steps taken, this one included. */
  step: number;
  /** The learning rate this step used. */
  lr: number;
  /** The global gradient norm before clipping (f64); computed only with clipNorm, else null. */
  gradNorm: number | null;
  /** The factor the gradients were multiplied by (1: not clipped). */
  clipScale: number;
}

/** The global L2 norm of sparse (repeated ids summed first) and dense gradients, in f64. */
export function globalNorm(sparse: readonly SparseGrad[], dense: readonly { grad: Float32Array | Float64Array }[]): number {
  let sum = 0;
  for (const g of sparse) {
    const d = g.tensor.dim;
    const ids = g.ids, grads = g.grads;
    // Strictly increasing ids (every row once, the usual case): each row is its own sum.
    let increasing = true;
    for (let r = 1; r < ids.length && increasing; r++) increasing = ids[r]! > ids[r - 1]!;
    if (increasing) {
      for (let j = 0; j < grads.length; j++) sum += grads[j]! * grads[j]!;
      continue;
    }
    // Each distinct id's summed row, in one f64 buffer (distinct ids found first).
    const slot = new Map<number, number>();
    const at = new Int32Array(ids.length);
    for (let r = 0; r < ids.length; r++) {
      let s = slot.get(ids[r]!);
      if (s === undefined) slot.set(ids[r]!, (s = slot.size * d));
      at[r] = s;
    }
    const acc = new Float64Array(slot.size * d);
    for (let r = 0; r < ids.length; r++) {
      const o = r * d, a = at[r]!;
      for (let j = 0; j < d; j++) acc[a + j]! += grads[o + j]!;
    }
    const used = slot.size * d;
    for (let j = 0; j < used; j++) sum += acc[j]! * acc[j]!;
  }
  for (const g of dense) {
    const grad = g.grad;
    for (let j = 0; j < grad.length; j++) sum += grad[j]! * grad[j]!;
  }
  return Math.sqrt(sum);
}

/** Names the first non-finite gradient value. */
function nonFinite(grads: Gradients): string {
  for (const [i, g] of grads.sparse.entries()) {
    const j = g.grads.findIndex((v) => !Number.isFinite(v));
    if (j >= 0) return `grads.sparse[${i}].grads[${j}] is not finite`;
  }
  for (const [i, g] of grads.dense.entries()) {
    const j = g.grad.findIndex((v) => !Number.isFinite(v));
    if (j >= 0) return `grads.dense[${i}].grad[${j}] is not finite`;
  }
  return 'a gradient is not finite';
}

function scaled(a: Float32Array, s: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! * s;
  return out;
}

/** Access to a Trainer's private state for the training run (checkpoint.ts); not exported from the package. */
export let trainerInternals: {
  setJournal(t: Trainer, j: StepJournal | null): void;
  apply(t: Trainer, p: PreparedStep): Promise<void>;
  setSteps(t: Trainer, n: number): void;
  denseOptimizer(t: Trainer, param: Float32Array): DenseAdam | undefined;
  setDenseOptimizer(t: Trainer, param: Float32Array, o: DenseAdam): void;
  adamOptions(t: Trainer): { beta1?: number; beta2?: number; eps?: number };
};

export class Trainer {
  /** The model trained, when the Trainer was given one. */
  readonly model: Model | null;
  readonly layers: readonly ModelLayer[];
  /** The SparseTensors trained, in order of first use. */
  readonly tensors: readonly SparseTensor[];
  readonly optimizer: 'adam' | 'sgd';
  readonly baseLr: number;
  readonly schedule: Schedule;
  readonly clipNorm: number | null;
  readonly #sparse: SparseAdam | SparseSGD | null;
  readonly #dense = new Map<Float32Array, DenseAdam>();
  readonly #adam: { beta1?: number; beta2?: number; eps?: number };
  #steps = 0;
  #journal: StepJournal | null = null;

  constructor(modelOrLayers: Model | readonly ModelLayer[], options: TrainerOptions = {}) {
    const o = checkOptions('Trainer', options, ['optimizer', 'lr', 'weightDecay', 'beta1', 'beta2', 'eps', 'schedule', 'clipNorm', 'replaceState']);
    this.model = modelOrLayers instanceof Model ? modelOrLayers : null;
    const layers = modelOrLayers instanceof Model ? modelOrLayers.layers : modelOrLayers;
    if (!Array.isArray(layers) || layers.length === 0) throw new InvalidArgumentError(`Trainer needs a Model or a non-empty array of layers, got ${describe(modelOrLayers)}`);
    const tensors: SparseTensor[] = [];
    layers.forEach((l, i) => {
      for (const [, t] of kindOf(l, `layers[${i}]`).tensors(l)) if (!tensors.includes(t)) tensors.push(t);
    });
    this.layers = [...layers];
    this.tensors = tensors;
    const opt = o.optimizer ?? 'adam';
    if (opt !== 'adam' && opt !== 'sgd') throw new InvalidArgumentError(`optimizer must be 'adam' or 'sgd', got ${describe(opt)}`);
    this.optimizer = opt;
    this.baseLr = checkNumber('lr', o.lr ?? (opt === 'adam' ? 1e-3 : 1e-2), 0, 1e6);
    this.schedule = checkSchedule(o.schedule ?? { kind: 'constant' });
    this.clipNorm = o.clipNorm === undefined ? null : checkNumber('clipNorm', o.clipNorm, 0, 1e30, true);
    const weightDecay = checkNumber('weightDecay', o.weightDecay ?? 0, 0, 1e6);
    const replaceState = checkBoolean('replaceState', o.replaceState, false);
    if (opt === 'sgd' && (o.beta1 !== undefined || o.beta2 !== undefined || o.eps !== undefined)) throw new InvalidArgumentError("beta1, beta2 and eps apply to optimizer 'adam' only");
    this.#adam = { ...(o.beta1 === undefined ? {} : { beta1: o.beta1 }), ...(o.beta2 === undefined ? {} : { beta2: o.beta2 }), ...(o.eps === undefined ? {} : { eps: o.eps }) };
    const lr0 = this.baseLr * scheduleFactor(this.schedule, 0);
    // Check the Adam options once, before attaching anything to the tensors.
    if (opt === 'adam') new DenseAdam([], { lr: lr0, ...this.#adam });
    this.#sparse =
      tensors.length === 0 ? null
      : opt === 'adam' ? new SparseAdam(tensors, { lr: lr0, weightDecay, replaceState, ...this.#adam })
      : new SparseSGD(tensors, { lr: lr0, weightDecay, replaceState });
  }

  /** Steps taken. */
  get steps(): number {
    return this.#steps;
  }

  /** The learning rate the next step will use. */
  get lr(): number {
    return this.baseLr * scheduleFactor(this.schedule, this.#steps);
  }

  /** The sparse optimizer (null when the layers use no SparseTensor). */
  get sparseOptimizer(): SparseAdam | SparseSGD | null {
    return this.#sparse;
  }

  /** Drops the sparse optimizer's state from the tensors (so a server can attach its own). */
  detach(): void {
    this.#sparse?.detach();
  }

  /** One optimizer step over a tape's gradients (see the module comment). */
  async step(grads: Gradients): Promise<StepInfo> {
    if (grads === null || typeof grads !== 'object' || !Array.isArray(grads.sparse) || !Array.isArray(grads.dense)) {
      throw new InvalidArgumentError(`grads must be a tape's gradients { sparse, dense }, got ${describe(grads)}`);
    }
    const seen = new Set<SparseTensor>();
    grads.sparse.forEach((g, i) => {
      if (!this.tensors.includes(g?.tensor)) throw new InvalidArgumentError(`grads.sparse[${i}]: its tensor is not one of the trained layers'`);
      if (seen.has(g.tensor)) throw new InvalidArgumentError(`grads.sparse[${i}]: a tensor appears twice; concatenate its rows`);
      seen.add(g.tensor);
      if (!(g.grads instanceof Float32Array) || g.grads.length !== g.ids.length * g.tensor.dim) throw new InvalidArgumentError(`grads.sparse[${i}].grads must be ids.length * dim floats`);
    });
    const dparams = new Set<Float32Array>();
    grads.dense.forEach((g, i) => {
      if (!(g?.param instanceof Float32Array) || !(g.grad instanceof Float32Array) || g.grad.length !== g.param.length) {
        throw new InvalidArgumentError(`grads.dense[${i}] must be { param, grad }, two Float32Arrays of one length`);
      }
      if (dparams.has(g.param)) throw new InvalidArgumentError(`grads.dense[${i}]: a parameter appears twice; sum its gradients`);
      dparams.add(g.param);
      // Checked here, not only by the dense optimizer, which steps after the sparse one.
      for (let j = 0; j < g.grad.length; j++) if (!Number.isFinite(g.grad[j]!)) throw new NonFiniteError(`grads.dense[${i}].grad[${j}] is not finite`);
    });
    // Finite squares of f32 values cannot overflow f64: the norm is finite iff every
    // gradient is. Without clipNorm the optimizers check finiteness themselves.
    const gradNorm = this.clipNorm === null ? null : globalNorm(grads.sparse, grads.dense);
    if (gradNorm !== null && !Number.isFinite(gradNorm)) throw new NonFiniteError(nonFinite(grads));
    const clipScale = gradNorm !== null && gradNorm > this.clipNorm! ? this.clipNorm! / gradNorm : 1;
    const sparse = clipScale === 1 ? grads.sparse : grads.sparse.map((g) => ({ tensor: g.tensor, ids: g.ids, grads: scaled(g.grads, clipScale) }));
    const dense = clipScale === 1 ? grads.dense : grads.dense.map((g) => ({ param: g.param, grad: scaled(g.grad, clipScale) }));
    const prepared: PreparedStep = { step: this.#steps + 1, lr: this.lr, sparse, dense };
    const journal = this.#journal;
    if (journal !== null) {
      if (journal.poisoned) throw new InvalidArgumentError('a step of this training run failed after it was logged; reopen the run (TrainingRun.open) to continue');
      await journal.append(prepared);
    }
    try {
      await this.#apply(prepared);
    } catch (err) {
      if (journal !== null) await journal.failed(prepared);
      throw err;
    }
    journal?.applied();
    this.#steps++;
    return { step: this.#steps, lr: prepared.lr, gradNorm, clipScale };
  }

  /** Takes a prepared step: the optimizers get exactly these arguments (a replay calls this too). */
  async #apply(p: PreparedStep): Promise<void> {
    const lr = p.lr;
    if (this.#sparse !== null && p.sparse.length > 0) {
      this.#sparse.lr = lr;
      await this.#sparse.stepAsync(p.sparse);
    }
    for (const g of p.dense) {
      if (this.optimizer === 'sgd') {
        for (let j = 0; j < g.param.length; j++) g.param[j] = g.param[j]! - lr * g.grad[j]!;
        continue;
      }
      let opt = this.#dense.get(g.param);
      if (opt === undefined) this.#dense.set(g.param, (opt = new DenseAdam([g.param], { lr, ...this.#adam })));
      opt.lr = lr;
      opt.step([g.grad]);
    }
  }

  static {
    trainerInternals = {
      setJournal: (t, j) => {
        t.#journal = j;
      },
      apply: (t, p) => t.#apply(p),
      setSteps: (t, n) => {
        t.#steps = n;
      },
      denseOptimizer: (t, param) => t.#dense.get(param),
      setDenseOptimizer: (t, param, o) => {
        t.#dense.set(param, o);
      },
      adamOptions: (t) => ({ ...t.#adam }),
    };
  }
}

/** Exactly what one step hands the optimizers (after clipping): what a training log records. */
export interface PreparedStep {
  /** The step's number (steps taken before it + 1). */
  step: number;
  lr: number;
  sparse: readonly SparseGrad[];
  dense: readonly { param: Float32Array; grad: Float32Array }[];
}

/** A training run's log (lib/model/train/checkpoint.ts): a step is appended, durably, before it is taken. */
export interface StepJournal {
  /** Set once a logged step failed to apply: the in-memory state is no longer the log's. */
  readonly poisoned: boolean;
  append(p: PreparedStep): Promise<void>;
  /** The logged step was applied. */
  applied(): void;
  /** The logged step `p` failed to apply: its record is taken back and the journal poisoned. */
  failed(p: PreparedStep): Promise<void>;
}


