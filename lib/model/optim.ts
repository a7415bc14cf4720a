/**
 * Sparse optimizers. A step reads the gradient of the rows one training step touched
 * and writes their new values through the tensor's one write path, so the Merkle
 * root and the retrieval indexes follow. Untouched rows, and their moments, do not
 * move. The state (Adam moments, a per-row update counter, the owed weight decay)
 * lives in native memory beside each tensor's values.
 *
 * - Repeated ids in one step are summed first, in order of appearance (PyTorch's
 *   coalesce). A listed row whose gradient is exactly zero still counts as touched.
 * - Adam bias correction is per row by default ('row': each row counts its own
 *   updates, FBGEMM's row counter); 'global' uses one step count for all rows, as
 *   PyTorch's SparseAdam does, which over-steps rarely touched rows.
 * - Weight decay is decoupled (AdamW) and lazy with catch-up: a row touched now is
 *   first multiplied by the product of (1 - lr_s * wd) over every step s since its
 *   last touch. Its total decay so equals dense AdamW's over the same steps, with any
 *   learning-rate schedule, however rarely it is touched. Between touches the decay
 *   is owed, not applied.
 * - A step is all or nothing: when any new value or any new state (m, v, the decay
 *   log) would not be finite, NonFiniteError, and values and state are unchanged. A
 *   finite gradient can do it (g = 1e30: v = (1 - beta2) g^2 overflows f32 while the
 *   value does not move); such a state could not be put into an update proof.
 * - snapshot() / restore() put rows back to where they were (a service undoing
 *   a step whose proof it could not verify).
 *
 * Small dense parameters (a learned beta, a bias vector) use DenseAdam, a plain
 * TypeScript Adam over Float32Arrays with the same formulas.
 */
import { checkBoolean, checkFloat32Array, checkNumber, checkOptions, toIds } from '../shared/args.js';
import { InvalidArgumentError, NonFiniteError, OutOfRangeError, callNative, fromNative } from '../shared/errors.js';
import type { NativeOptimizerInfo, NativeOptimizerOptions } from '../tensor/native.js';
import { SparseTensor, internalNative } from '../tensor/sparse-tensor.js';

export interface AdamOptions {
  /** Learning rate (default 1e-3). */
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay (AdamW), applied lazily with catch-up; default 0. */
  weightDecay?: number;
  /** 'row' (default): each row's own update count; 'global': one count (PyTorch SparseAdam). */
  biasCorrection?: 'row' | 'global';
  /** Replace an optimizer already attached to a tensor (its state is lost). Default false: refuse. */
  replaceState?: boolean;
}

export interface SgdOptions {
  replaceState?: boolean;
  /** Learning rate (default 1e-2). */
  lr?: number;
  /** Decoupled weight decay, applied lazily with catch-up; default 0. */
  weightDecay?: number;
}

/** The gradient of some rows of one tensor: ids.length * tensor.dim values. */
export interface SparseGrad {
  tensor: SparseTensor;
  ids: Uint32Array | readonly number[];
  grads: Float32Array;
}

export type OptimizerInfo = NativeOptimizerInfo;

/** Rows of one tensor as they were: values, optimizer state, and the global scalars (snapshot()). */
export interface RowsSnapshot {
  readonly tensor: SparseTensor;
  /** Ascending, distinct. */
  readonly ids: Uint32Array;
  readonly values: Float32Array;
  readonly state: RowState;
  /** The optimizer's step count and decay log. */
  readonly steps: number;
  readonly logDecay: number;
}

export interface RowState {
  /** First moments (ids.length * dim; zeros for SGD). */
  m: Float32Array;
  /** Second moments. */
  v: Float32Array;
  /** How many steps touched each row. */
  steps: Uint32Array;
  /** Each row's decay mark: the optimizer's logDecay when the row was last touched. */
  marks: Float64Array;
}


abstract class SparseOptimizerBase {
  readonly #tensors: SparseTensor[];
  #lr: number;

  protected constructor(tensors: readonly SparseTensor[], options: NativeOptimizerOptions, replace: boolean) {
    if (!Array.isArray(tensors) || tensors.length === 0) throw new InvalidArgumentError('tensors must be a non-empty array of SparseTensors');
    for (const t of tensors) if (!(t instanceof SparseTensor)) throw new InvalidArgumentError('tensors must be SparseTensors');
    if (new Set(tensors).size !== tensors.length) throw new InvalidArgumentError('a tensor is listed twice');
    // Validate everything before attaching to any tensor.
    this.#tensors = [...tensors];
    this.#lr = options.lr!;
    for (const t of tensors) {
      if (callNative(() => internalNative(t).optimInfo()) !== null && !replace) {
        throw new InvalidArgumentError('a tensor already has an optimizer (its state lives with the tensor): detach() that one first, or pass replaceState: true');
      }
    }
    for (const t of this.#tensors) callNative(() => internalNative(t).optimInit(options, replace));
  }

  /** Drops the optimizer state of every tensor (they can then take another optimizer). */
  detach(): void {
    for (const t of this.#tensors) callNative(() => internalNative(t).optimDetach());
  }

  /** The tensors this optimizer updates. */
  get tensors(): readonly SparseTensor[] {
    return this.#tensors;
  }

  get lr(): number {
    return this.#lr;
  }
  /** Changes the learning rate from the next step on. */
  set lr(lr: number) {
    checkNumber('lr', lr, 0, 1e6);
    for (const t of this.#tensors) callNative(() => internalNative(t).optimSetLr(lr));
    this.#lr = lr;
  }

  /**
   * One step over the given gradients (one entry per tensor at most; a tensor not
   * listed takes no step). Validates every entry before changing any tensor.
   * Returns the number of distinct rows touched per entry.
   */
  step(grads: readonly SparseGrad[]): number[] {
    const prepared = this.#prepare(grads);
    return prepared.map((p) => callNative(() => internalNative(p.t).optimStep(p.ids, p.grads)));
  }

  /**
   * step() on worker threads (one per tensor, concurrently). Inputs are checked for
   * every entry first; while a tensor's step runs, reads and writes of that tensor are
   * refused with TensorBusyError. Resolves to the distinct rows touched per entry.
   */
  async stepAsync(grads: readonly SparseGrad[]): Promise<number[]> {
    const prepared = this.#prepare(grads);
    const results = await Promise.allSettled(prepared.map((p) => internalNative(p.t).optimStepAsync(p.ids, p.grads)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw fromNative(failed.reason);
    return results.map((r) => (r as PromiseFulfilledResult<number>).value);
  }

  #prepare(grads: readonly SparseGrad[]): { t: SparseTensor; ids: Uint32Array; grads: Float32Array }[] {
    if (!Array.isArray(grads)) throw new InvalidArgumentError('grads must be an array of { tensor, ids, grads }');
    const seen = new Set<SparseTensor>();
    return grads.map((g, i) => {
      if (!g || !(g.tensor instanceof SparseTensor)) throw new InvalidArgumentError(`grads[${i}].tensor must be a SparseTensor`);
      if (!this.#tensors.includes(g.tensor)) throw new InvalidArgumentError(`grads[${i}].tensor is not one of this optimizer's tensors`);
      if (seen.has(g.tensor)) throw new InvalidArgumentError(`grads[${i}]: a tensor appears twice in one step; concatenate its rows`);
      seen.add(g.tensor);
      const ids = toIds(`grads[${i}].ids`, g.ids);
      checkFloat32Array(`grads[${i}].grads`, g.grads);
      if (g.grads.length !== ids.length * g.tensor.dim) {
        throw new InvalidArgumentError(`grads[${i}].grads has length ${g.grads.length}, expected ids.length * dim = ${ids.length * g.tensor.dim}`);
      }
      // ids in range, finite gradients, tensor not busy: checked natively, per entry, before any step.
      callNative(() => internalNative(g.tensor).optimCheck(ids, g.grads));
      return { t: g.tensor, ids, grads: g.grads };
    });
  }

  /** The optimizer state of rows `ids` of `tensor` (copies). */
  state(tensor: SparseTensor, ids: Uint32Array | readonly number[]): RowState {
    if (!this.#tensors.includes(tensor)) throw new InvalidArgumentError("tensor is not one of this optimizer's tensors");
    const u = toIds('ids', ids);
    return callNative(() => internalNative(tensor).optimState(u));
  }

  /**
   * Rows `ids` of `tensor` as they are now (values, state) and the optimizer's global
   * scalars, for restore(). ids are sorted and made distinct.
   */
  snapshot(tensor: SparseTensor, ids: Uint32Array | readonly number[]): RowsSnapshot {
    const u = Uint32Array.from(new Set(toIds('ids', ids))).sort();
    const state = this.state(tensor, u);
    const info = this.info(tensor);
    return { tensor, ids: u, values: tensor.gather(u), state, steps: info.steps, logDecay: info.logDecay };
  }

  /**
   * Puts a snapshot's rows back (values, hence the root, and state) and the optimizer's
   * step count and decay log: undoes the steps taken since, when they touched only
   * those rows. The values must be finite and the decay log finite and <= 0 (checked
   * first; all or nothing); the rows' state is put back as given.
   */
  restore(s: RowsSnapshot): void {
    if (!this.#tensors.includes(s.tensor)) throw new InvalidArgumentError("the snapshot's tensor is not one of this optimizer's tensors");
    const adam = this.info(s.tensor).kind === 'adam';
    const m = adam ? s.state.m : new Float32Array(0), v = adam ? s.state.v : new Float32Array(0);
    callNative(() => internalNative(s.tensor).optimRestore(s.ids, s.values, m, v, s.state.steps, s.state.marks, s.steps, s.logDecay));
  }

  /** Parameters and the number of steps taken, per tensor. */
  info(tensor: SparseTensor): OptimizerInfo {
    if (!this.#tensors.includes(tensor)) throw new InvalidArgumentError("tensor is not one of this optimizer's tensors");
    const i = callNative(() => internalNative(tensor).optimInfo());
    if (!i) throw new InvalidArgumentError('the tensor lost its optimizer (another optimizer was attached to it)');
    return i;
  }
}

/** Sparse Adam (per-row bias correction by default); see the module comment. */
export class SparseAdam extends SparseOptimizerBase {
  constructor(tensors: readonly SparseTensor[], options: AdamOptions = {}) {
    options = checkOptions('SparseAdam', options, ['lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'biasCorrection', 'replaceState']);
    const o: NativeOptimizerOptions = {
      kind: 'adam',
      lr: checkNumber('lr', options.lr ?? 1e-3, 0, 1e6),
      beta1: checkNumber('beta1', options.beta1 ?? 0.9, 0, 0.999999999),
      beta2: checkNumber('beta2', options.beta2 ?? 0.999, 0, 0.999999999),
      eps: checkNumber('eps', options.eps ?? 1e-8, 0, 1, true),
      weightDecay: checkNumber('weightDecay', options.weightDecay ?? 0, 0, 1e6),
      biasCorrection: options.biasCorrection ?? 'row',
    };
    if (o.biasCorrection !== 'row' && o.biasCorrection !== 'global') {
      throw new InvalidArgumentError(`biasCorrection must be 'row' or 'global', got ${String(o.biasCorrection)}`);
    }
    if (o.lr! * o.weightDecay! >= 1) throw new OutOfRangeError('lr * weightDecay must be < 1');
    super(tensors, o, checkBoolean('replaceState', options.replaceState, false));
  }
}

/** Sparse SGD: w <- w * (owed decay) - lr * g on the touched rows. */
export class SparseSGD extends SparseOptimizerBase {
  constructor(tensors: readonly SparseTensor[], options: SgdOptions = {}) {
    options = checkOptions('SparseSGD', options, ['lr', 'weightDecay', 'replaceState']);
    const o: NativeOptimizerOptions = {
      kind: 'sgd',
      lr: checkNumber('lr', options.lr ?? 1e-2, 0, 1e6),
      weightDecay: checkNumber('weightDecay', options.weightDecay ?? 0, 0, 1e6),
    };
    if (o.lr! * o.weightDecay! >= 1) throw new OutOfRangeError('lr * weightDecay must be < 1');
    super(tensors, o, checkBoolean('replaceState', options.replaceState, false));
  }
}

/** A DenseAdam's moments and step count, for a training checkpoint (lib/model/train/checkpoint.ts); not exported from the package. */
export interface DenseAdamState {
  m: Float64Array[];
  v: Float64Array[];
  t: number;
}
export let denseAdamInternals: {
  state(o: DenseAdam): DenseAdamState;
  setState(o: DenseAdam, s: DenseAdamState): void;
};

/** Adam over small dense parameters held in Float32Arrays (a learned beta, biases). */
export class DenseAdam {
  readonly #params: Float32Array[];
  readonly #m: Float64Array[];
  readonly #v: Float64Array[];
  #t = 0;
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;

  constructor(params: readonly Float32Array[], options: Omit<AdamOptions, 'biasCorrection' | 'weightDecay' | 'replaceState'> = {}) {
    options = checkOptions('DenseAdam', options, ['lr', 'beta1', 'beta2', 'eps']);
    if (!Array.isArray(params)) throw new InvalidArgumentError('params must be an array of Float32Arrays');
    params.forEach((p, i) => checkFloat32Array(`params[${i}]`, p));
    if (new Set(params).size !== params.length) throw new InvalidArgumentError('params: a Float32Array is listed twice (it would take two steps per step)');
    this.#params = [...params];
    this.#m = params.map((p) => new Float64Array(p.length));
    this.#v = params.map((p) => new Float64Array(p.length));
    this.lr = checkNumber('lr', options.lr ?? 1e-3, 0, 1e6);
    this.beta1 = checkNumber('beta1', options.beta1 ?? 0.9, 0, 0.999999999);
    this.beta2 = checkNumber('beta2', options.beta2 ?? 0.999, 0, 0.999999999);
    this.eps = checkNumber('eps', options.eps ?? 1e-8, 0, 1, true);
  }

  static {
    denseAdamInternals = {
      state: (o) => ({ m: o.#m.map((a) => a.slice()), v: o.#v.map((a) => a.slice()), t: o.#t }),
      setState: (o, st) => {
        st.m.forEach((a, i) => o.#m[i]!.set(a));
        st.v.forEach((a, i) => o.#v[i]!.set(a));
        o.#t = st.t;
      },
    };
  }

  /** One step; grads[i] matches params[i] in length. */
  step(grads: readonly (Float32Array | Float64Array)[]): void {
    if (grads.length !== this.#params.length) throw new InvalidArgumentError(`expected ${this.#params.length} gradients, got ${grads.length}`);
    grads.forEach((g, i) => {
      if (g.length !== this.#params[i]!.length) throw new InvalidArgumentError(`grads[${i}] has length ${g.length}, expected ${this.#params[i]!.length}`);
      for (let j = 0; j < g.length; j++) if (!Number.isFinite(g[j]!)) throw new NonFiniteError(`grads[${i}][${j}] is not finite`);
    });
    this.#t++;
    const bc1 = 1 - this.beta1 ** this.#t, bc2 = 1 - this.beta2 ** this.#t;
    grads.forEach((g, i) => {
      const p = this.#params[i]!, m = this.#m[i]!, v = this.#v[i]!;
      for (let j = 0; j < p.length; j++) {
        m[j] = this.beta1 * m[j]! + (1 - this.beta1) * g[j]!;
        v[j] = this.beta2 * v[j]! + (1 - this.beta2) * g[j]! * g[j]!;
        p[j] = p[j]! - ((this.lr / bc1) * m[j]!) / (Math.sqrt(v[j]! / bc2) + this.eps);
      }
    });
  }
}

