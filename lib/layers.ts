/**
 * Layers over SparseTensors: HopfieldLookup (essay Fig. 3) and Embedding, each with a
 * dense mode that is the baseline (same math over all N patterns).
 *
 * HopfieldLookup, for each input x (B of them, d floats):
 *   q = normalize ? x / |x| : x
 *   ids = top-k stored keys of q by `similarity` (exact, hnsw or product-key retrieval)
 *   s_j = sim(q, K_j)  (ip: q.K ; cosine: q.K / (|q| |K|) ; l2: -|q - K|^2)
 *   a = softmax(beta * s) over the k,  y = sum_j a_j V_j
 * backward() returns the gradient for the input, sparse gradients for the k key rows
 * and the k value rows (SparseGrad, ready for SparseAdam), and d/d beta. With
 * mode 'dense' every pattern takes part (native, chunked, off the JavaScript thread)
 * and the gradients cover all N rows (a dense Adam step is then SparseAdam over all
 * rows). Sparse with k = N equals dense.
 */
import { checkFloat32Array, checkInteger, toIds } from './args.js';
import { InvalidArgumentError, OutOfRangeError, UnsupportedError, fromNative } from './errors.js';
import type { SparseGrad } from './optim.js';
import { ProductKeyIndex } from './product-keys.js';
import { SparseTensor, internalNative } from './sparse-tensor.js';

export type Similarity = 'ip' | 'cosine' | 'l2';

export interface HopfieldLookupOptions {
  /** Stored keys: a SparseTensor of N patterns of dim d, or a ProductKeyIndex of N = n^2 slots. */
  keys: SparseTensor | ProductKeyIndex;
  /** Stored values: N rows (any dim dv). */
  values: SparseTensor;
  /** Patterns per input (1..N). In dense mode all N take part and k is ignored. */
  k: number;
  /** Inverse temperature (default 1 / sqrt(d)). */
  beta?: number;
  /** Train beta too (backward reports dBeta either way; this only marks intent for trainers). */
  learnBeta?: boolean;
  /** Default 'ip'. Product keys support 'ip' only. */
  similarity?: Similarity;
  /** L2-normalise each input first (default false). */
  normalize?: boolean;
  /** Retrieval over a SparseTensor of keys: 'exact' (default) or 'hnsw' (built with buildHnsw). */
  index?: 'exact' | 'hnsw';
  ef?: number;
  /** 'sparse' (default) or 'dense' (all N patterns; SparseTensor keys only). */
  mode?: 'sparse' | 'dense';
  /**
   * Hopfield update steps (hflayers' update_steps_max), default 1: steps - 1 times the
   * state q is replaced by sum_j a_j K_j (retrieval in key space) before the final
   * lookup of the values. Forward only when > 1 (backward raises UnsupportedError).
   */
  updateSteps?: number;
  /** Worker threads for retrieval and dense kernels. */
  threads?: number;
}

/** What forward() keeps for backward(); treat as opaque. */
export interface HopfieldContext {
  readonly batch: number;
  readonly x: Float32Array;
  readonly q: Float32Array;
  readonly xNorm: Float32Array;
  readonly ids: Uint32Array;
  readonly s: Float32Array;
  readonly a: Float32Array;
  readonly y: Float32Array;
  readonly beta: number;
  readonly lse: Float32Array | null;
  readonly steps: number;
}

export interface HopfieldForward {
  /** B x dv outputs. */
  y: Float32Array;
  /** The selected pattern ids (B x k, best first); all N in dense mode are implicit (empty). */
  ids: Uint32Array;
  /** Attention weights over the selected ids (B x k; empty in dense mode). */
  weights: Float32Array;
  ctx: HopfieldContext;
}

export interface HopfieldGradients {
  /** B x d gradient of the input. */
  dx: Float32Array;
  /** Sparse gradients of key rows (one entry per key tensor) and value rows. */
  grads: SparseGrad[];
  dBeta: number;
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[ao + i]! * b[bo + i]!;
  return s;
}

export class HopfieldLookup {
  readonly keys: SparseTensor | ProductKeyIndex;
  readonly values: SparseTensor;
  readonly k: number;
  readonly similarity: Similarity;
  readonly normalize: boolean;
  readonly index: 'exact' | 'hnsw';
  readonly ef: number | undefined;
  readonly mode: 'sparse' | 'dense';
  readonly updateSteps: number;
  readonly learnBeta: boolean;
  readonly threads: number | undefined;
  /** beta as a one-element array, so a DenseAdam can train it in place. */
  readonly betaParam: Float32Array;

  constructor(o: HopfieldLookupOptions) {
    if (!o || typeof o !== 'object') throw new InvalidArgumentError('options must be an object');
    if (!(o.keys instanceof SparseTensor) && !(o.keys instanceof ProductKeyIndex)) {
      throw new InvalidArgumentError('keys must be a SparseTensor or a ProductKeyIndex');
    }
    if (!(o.values instanceof SparseTensor)) throw new InvalidArgumentError('values must be a SparseTensor');
    if (o.values.size !== o.keys.size) {
      throw new InvalidArgumentError(`keys hold ${o.keys.size} patterns and values ${o.values.size}: they must match`);
    }
    this.keys = o.keys;
    this.values = o.values;
    this.mode = o.mode ?? 'sparse';
    if (this.mode !== 'sparse' && this.mode !== 'dense') throw new InvalidArgumentError(`mode must be 'sparse' or 'dense', got ${String(o.mode)}`);
    this.k = checkInteger('k', o.k, 1, 2 ** 32 - 1);
    if (this.k > o.keys.size) throw new OutOfRangeError(`k must be in 1..${o.keys.size} (the number of patterns), got ${this.k}`);
    this.similarity = o.similarity ?? 'ip';
    if (!['ip', 'cosine', 'l2'].includes(this.similarity)) throw new InvalidArgumentError(`similarity must be 'ip', 'cosine' or 'l2', got ${String(o.similarity)}`);
    if (o.keys instanceof ProductKeyIndex) {
      if (this.similarity !== 'ip') throw new UnsupportedError("product keys score by inner product: similarity must be 'ip'");
      if (this.mode === 'dense') throw new UnsupportedError('dense mode needs a SparseTensor of keys');
      if (o.index !== undefined && o.index !== 'exact') throw new InvalidArgumentError('index applies to SparseTensor keys only');
    }
    this.normalize = o.normalize ?? false;
    this.index = o.index ?? 'exact';
    if (this.index !== 'exact' && this.index !== 'hnsw') throw new InvalidArgumentError(`index must be 'exact' or 'hnsw', got ${String(o.index)}`);
    this.ef = o.ef === undefined ? undefined : checkInteger('ef', o.ef, 1, 1_000_000);
    this.updateSteps = checkInteger('updateSteps', o.updateSteps ?? 1, 1, 100);
    this.learnBeta = o.learnBeta ?? false;
    this.threads = o.threads === undefined ? undefined : checkInteger('threads', o.threads, 1, 1024);
    const beta = o.beta ?? 1 / Math.sqrt(o.keys.dim);
    if (typeof beta !== 'number' || !Number.isFinite(beta)) throw new OutOfRangeError(`beta must be a finite number, got ${String(beta)}`);
    this.betaParam = new Float32Array([beta]);
  }

  get beta(): number {
    return this.betaParam[0]!;
  }
  get dim(): number {
    return this.keys.dim;
  }
  get outDim(): number {
    return this.values.dim;
  }

  /** Forward pass over B inputs (B * dim floats). */
  async forward(x: Float32Array): Promise<HopfieldForward> {
    checkFloat32Array('x', x);
    const d = this.dim;
    if (x.length === 0 || x.length % d !== 0) throw new InvalidArgumentError(`x length ${x.length} must be a positive multiple of dim ${d}`);
    for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new InvalidArgumentError(`x[${i}] is not finite`);
    const B = x.length / d;
    const xNorm = new Float32Array(B);
    let q = x;
    if (this.normalize) {
      q = new Float32Array(x.length);
      for (let b = 0; b < B; b++) {
        const n = Math.sqrt(dot(x, b * d, x, b * d, d));
        xNorm[b] = n;
        const inv = n > 0 ? 1 / n : 0;
        for (let j = 0; j < d; j++) q[b * d + j] = x[b * d + j]! * inv;
      }
    }
    const beta = this.beta;
    if (this.mode === 'dense') {
      if (this.updateSteps > 1) throw new UnsupportedError('updateSteps > 1 is implemented for the sparse mode only');
      const keys = this.keys as SparseTensor;
      let r;
      try {
        r = await internalNative(keys).denseHopfieldForwardAsync(internalNative(this.values), q, beta, this.similarity, this.threads);
      } catch (err) {
        throw fromNative(err);
      }
      const ctx: HopfieldContext = { batch: B, x, q, xNorm, ids: new Uint32Array(0), s: new Float32Array(0), a: new Float32Array(0), y: r.y, beta, lse: r.lse, steps: 1 };
      return { y: r.y, ids: ctx.ids, weights: ctx.a, ctx };
    }
    let state = q;
    for (let step = 1; step < this.updateSteps; step++) {
      const { ids, a } = await this.#select(state, B, beta);
      state = this.#mix(ids, a, B, this.keys instanceof SparseTensor ? this.keys : null);
    }
    const { ids, s, a } = await this.#select(state, B, beta);
    const y = this.#mix(ids, a, B, this.values);
    const ctx: HopfieldContext = { batch: B, x, q: state, xNorm, ids, s, a, y, beta, lse: null, steps: this.updateSteps };
    return { y, ids, weights: a, ctx };
  }

  /** Gradients of sum(dy . y) for the forward pass `ctx`. */
  async backward(ctx: HopfieldContext, dy: Float32Array): Promise<HopfieldGradients> {
    checkFloat32Array('dy', dy);
    const B = ctx.batch, d = this.dim, dv = this.outDim;
    if (dy.length !== B * dv) throw new InvalidArgumentError(`dy has length ${dy.length}, expected ${B * dv}`);
    for (let i = 0; i < dy.length; i++) if (!Number.isFinite(dy[i]!)) throw new InvalidArgumentError(`dy[${i}] is not finite`);
    if (ctx.steps > 1) throw new UnsupportedError('backward through updateSteps > 1 is not supported; train with updateSteps = 1');
    let dq: Float32Array;
    let grads: SparseGrad[];
    let dBeta: number;
    if (this.mode === 'dense') {
      const keys = this.keys as SparseTensor;
      let r;
      try {
        r = await internalNative(keys).denseHopfieldBackwardAsync(internalNative(this.values), ctx.q, ctx.beta, this.similarity, this.threads, ctx.y, ctx.lse!, dy);
      } catch (err) {
        throw fromNative(err);
      }
      const all = new Uint32Array(keys.size);
      for (let i = 0; i < all.length; i++) all[i] = i;
      dq = r.dQ;
      grads = [
        { tensor: keys, ids: all, grads: r.dK },
        { tensor: this.values, ids: all, grads: r.dV },
      ];
      dBeta = r.dBeta;
    } else {
      const k = this.k;
      const { ids, s, a, y, beta, q } = ctx;
      const V = this.values.gather(ids);
      const dV = new Float32Array(B * k * dv);
      const ds = new Float32Array(B * k);
      dBeta = 0;
      for (let b = 0; b < B; b++) {
        const c = dot(dy, b * dv, y, b * dv, dv);
        for (let j = 0; j < k; j++) {
          const r = b * k + j;
          const aj = a[r]!;
          const g = aj * (dot(dy, b * dv, V, r * dv, dv) - c);
          ds[r] = beta * g;
          dBeta += g * s[r]!;
          for (let t = 0; t < dv; t++) dV[r * dv + t] = aj * dy[b * dv + t]!;
        }
      }
      const kg = this.#keyBackward(q, ids, s, ds, B);
      dq = kg.dq;
      grads = [...kg.grads, { tensor: this.values, ids, grads: dV }];
    }
    let dx = dq;
    if (this.normalize) {
      dx = new Float32Array(B * d);
      for (let b = 0; b < B; b++) {
        const n = ctx.xNorm[b]!;
        if (n === 0) continue;
        const p = dot(dq, b * d, ctx.q, b * d, d);
        for (let j = 0; j < d; j++) dx[b * d + j] = (dq[b * d + j]! - ctx.q[b * d + j]! * p) / n;
      }
    }
    return { dx, grads, dBeta };
  }

  /** Top-k ids, their similarities and softmax weights for B states. */
  async #select(q: Float32Array, B: number, beta: number): Promise<{ ids: Uint32Array; s: Float32Array; a: Float32Array }> {
    const k = this.k;
    let ids: Uint32Array;
    const s = new Float32Array(B * k);
    const threads = this.threads === undefined ? {} : { threads: this.threads };
    if (this.keys instanceof ProductKeyIndex) {
      const r = await this.keys.searchBatch(q, k, threads);
      ids = r.ids;
      s.set(r.scores);
    } else {
      const r = await this.keys.searchBatch(q, k, {
        metric: this.similarity,
        index: this.index,
        ...(this.ef === undefined ? {} : { ef: Math.max(this.ef, k) }),
        ...threads,
      });
      ids = r.ids;
      for (let i = 0; i < s.length; i++) s[i] = this.similarity === 'l2' ? -r.scores[i]! : r.scores[i]!;
    }
    const a = new Float32Array(B * k);
    for (let b = 0; b < B; b++) {
      let mx = -Infinity;
      for (let j = 0; j < k; j++) mx = Math.max(mx, beta * s[b * k + j]!);
      let z = 0;
      for (let j = 0; j < k; j++) z += Math.exp(beta * s[b * k + j]! - mx);
      for (let j = 0; j < k; j++) a[b * k + j] = Math.exp(beta * s[b * k + j]! - mx) / z;
    }
    return { ids, s, a };
  }

  /** sum_j a_j R_j per input, R rows gathered from `table` (product keys: concatenated sub-keys). */
  #mix(ids: Uint32Array, a: Float32Array, B: number, table: SparseTensor | null): Float32Array {
    const k = this.k;
    const rows = table ? table.gather(ids) : this.#productKeyRows(ids);
    const w = table ? table.dim : this.dim;
    const out = new Float32Array(B * w);
    for (let b = 0; b < B; b++) {
      for (let j = 0; j < k; j++) {
        const r = b * k + j, aj = a[r]!;
        for (let t = 0; t < w; t++) out[b * w + t]! += aj * rows[r * w + t]!;
      }
    }
    return out;
  }

  #productKeyRows(ids: Uint32Array): Float32Array {
    const pk = this.keys as ProductKeyIndex;
    const n = pk.subKeys, d1 = pk.keys1.dim, d2 = pk.keys2.dim, d = d1 + d2;
    const i1 = new Uint32Array(ids.length), i2 = new Uint32Array(ids.length);
    for (let r = 0; r < ids.length; r++) {
      i1[r] = Math.floor(ids[r]! / n);
      i2[r] = ids[r]! % n;
    }
    const k1 = pk.keys1.gather(i1), k2 = pk.keys2.gather(i2);
    const out = new Float32Array(ids.length * d);
    for (let r = 0; r < ids.length; r++) {
      out.set(k1.subarray(r * d1, (r + 1) * d1), r * d);
      out.set(k2.subarray(r * d2, (r + 1) * d2), r * d + d1);
    }
    return out;
  }

  /** Chain ds (d loss / d s) into the state q and the key rows. */
  #keyBackward(q: Float32Array, ids: Uint32Array, s: Float32Array, ds: Float32Array, B: number): { dq: Float32Array; grads: SparseGrad[] } {
    const k = this.k, d = this.dim;
    const dq = new Float32Array(B * d);
    if (this.keys instanceof ProductKeyIndex) {
      const pk = this.keys, n = pk.subKeys, d1 = pk.keys1.dim, d2 = pk.keys2.dim;
      const i1 = new Uint32Array(ids.length), i2 = new Uint32Array(ids.length);
      for (let r = 0; r < ids.length; r++) {
        i1[r] = Math.floor(ids[r]! / n);
        i2[r] = ids[r]! % n;
      }
      const K1 = pk.keys1.gather(i1), K2 = pk.keys2.gather(i2);
      const g1 = new Float32Array(ids.length * d1), g2 = new Float32Array(ids.length * d2);
      for (let b = 0; b < B; b++) {
        for (let j = 0; j < k; j++) {
          const r = b * k + j, g = ds[r]!;
          for (let t = 0; t < d1; t++) {
            g1[r * d1 + t] = g * q[b * d + t]!;
            dq[b * d + t]! += g * K1[r * d1 + t]!;
          }
          for (let t = 0; t < d2; t++) {
            g2[r * d2 + t] = g * q[b * d + d1 + t]!;
            dq[b * d + d1 + t]! += g * K2[r * d2 + t]!;
          }
        }
      }
      return { dq, grads: [{ tensor: pk.keys1, ids: i1, grads: g1 }, { tensor: pk.keys2, ids: i2, grads: g2 }] };
    }
    const keys = this.keys;
    const K = keys.gather(ids);
    const dK = new Float32Array(ids.length * d);
    for (let b = 0; b < B; b++) {
      const qo = b * d;
      const qn = this.similarity === 'cosine' ? Math.sqrt(dot(q, qo, q, qo, d)) : 1;
      for (let j = 0; j < k; j++) {
        const r = b * k + j, g = ds[r]!, ko = r * d;
        if (this.similarity === 'ip') {
          for (let t = 0; t < d; t++) {
            dK[ko + t] = g * q[qo + t]!;
            dq[qo + t]! += g * K[ko + t]!;
          }
        } else if (this.similarity === 'l2') {
          for (let t = 0; t < d; t++) {
            const diff = q[qo + t]! - K[ko + t]!;
            dK[ko + t] = 2 * g * diff;
            dq[qo + t]! -= 2 * g * diff;
          }
        } else {
          const kn = Math.sqrt(dot(K, ko, K, ko, d));
          if (qn === 0 || kn === 0) continue; // cosine is 0 there and flat
          const c = s[r]!;
          for (let t = 0; t < d; t++) {
            const u = q[qo + t]! / qn, kh = K[ko + t]! / kn;
            dK[ko + t] = (g * (u - c * kh)) / kn;
            dq[qo + t]! += (g * (kh - c * u)) / qn;
          }
        }
      }
    }
    return { dq, grads: [{ tensor: keys, ids, grads: dK }] };
  }
}

/** One-to-one lookup of rows of a table; sparse gradient (dense mode: a gradient over all rows). */
export class Embedding {
  readonly table: SparseTensor;
  readonly mode: 'sparse' | 'dense';

  constructor(table: SparseTensor, options: { mode?: 'sparse' | 'dense' } = {}) {
    if (!(table instanceof SparseTensor)) throw new InvalidArgumentError('table must be a SparseTensor');
    this.table = table;
    this.mode = options.mode ?? 'sparse';
    if (this.mode !== 'sparse' && this.mode !== 'dense') throw new InvalidArgumentError(`mode must be 'sparse' or 'dense', got ${String(options.mode)}`);
  }

  get dim(): number {
    return this.table.dim;
  }

  /** ids.length x dim rows. */
  forward(ids: Uint32Array | readonly number[]): Float32Array {
    return this.table.gather(toIds('ids', ids));
  }

  /** The gradient of sum(dy . forward(ids)): the rows of dy (repeats are summed by the optimizer). */
  backward(ids: Uint32Array | readonly number[], dy: Float32Array): SparseGrad {
    const u = toIds('ids', ids);
    checkFloat32Array('dy', dy);
    const d = this.dim;
    if (dy.length !== u.length * d) throw new InvalidArgumentError(`dy has length ${dy.length}, expected ids.length * dim = ${u.length * d}`);
    const n = this.table.size;
    for (let i = 0; i < u.length; i++) if (u[i]! >= n) throw new OutOfRangeError(`ids[${i}] = ${u[i]} is out of range (size ${n})`);
    if (this.mode === 'sparse') return { tensor: this.table, ids: u, grads: dy.slice() };
    const all = new Uint32Array(n);
    for (let i = 0; i < n; i++) all[i] = i;
    const g = new Float32Array(n * d);
    for (let i = 0; i < u.length; i++) for (let j = 0; j < d; j++) g[u[i]! * d + j]! += dy[i * d + j]!;
    return { tensor: this.table, ids: all, grads: g };
  }
}
