/**
 * The HopfieldLookup kind (essay Fig. 3): the layer, with a dense mode that is the
 * baseline (same math over all N patterns), and its place in a Model (hopfieldKind;
 * the verifier half is lib/verify/kinds/hopfield.ts).
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
import { allIds, checkBoolean, checkFloat32Array, checkInteger, checkOptions, toIds } from '../../shared/args.js';
import { InvalidArgumentError, OutOfRangeError, UnsupportedError, callNative, callNativeAsync } from '../../shared/errors.js';
import { hopfieldReads, hopfieldSpec, type GhostHopfieldLayer } from '../../verify/kinds/hopfield.js';
import type { PatternBlock, ResolvedBlock } from '../../verify/proof-format.js';
import { positionsOf, rowsOf, type LayerGradients, type LayerKind, type LayerShape, type ProvedLayer } from '../layer-kind.js';
import { native } from '../../tensor/native.js';
import type { SparseGrad } from '../optim.js';
import { ProductKeyIndex } from '../../tensor/product-keys.js';
import { SparseTensor, internalNative } from '../../tensor/sparse-tensor.js';

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
  /** Default 'ip'. Product keys support 'ip' only. */
  similarity?: Similarity;
  /** L2-normalise each input first (default false). */
  normalize?: boolean;
  /** Retrieval over a SparseTensor of keys: 'exact' (default) or 'hnsw' (built with buildHnsw). */
  index?: 'exact' | 'hnsw';
  /** HNSW candidate list size (index 'hnsw' only; raised to k when smaller). */
  ef?: number;
  /** 'sparse' (default) or 'dense' (all N patterns; SparseTensor keys, index 'exact', updateSteps 1). */
  mode?: 'sparse' | 'dense';
  /**
   * Hopfield update steps (hflayers' update_steps_max), default 1: steps - 1 times the
   * state q is replaced by sum_j a_j K_j (retrieval in key space) before the final
   * lookup of the values. backward() goes through every step (the key rows then get
   * gradients both as keys and as mixed rows). Sparse mode only.
   */
  updateSteps?: number;
  /** Worker threads for retrieval and dense kernels. */
  threads?: number;
}

/** One retrieval of the forward pass: state q -> top-k -> softmax -> mix of table rows. */
export interface HopfieldStage {
  readonly q: Float32Array;
  readonly ids: Uint32Array;
  readonly s: Float32Array;
  readonly a: Float32Array;
  readonly out: Float32Array;
  /** true: the mixed rows are the values (last stage); false: the keys (update steps). */
  readonly toValues: boolean;
  /** The rows mixed (B x k rows, as gathered by the forward): backward reads them instead of gathering again. */
  readonly rows?: Float32Array;
}

/** What forward() keeps for backward(); treat as opaque. */
export interface HopfieldContext {
  readonly batch: number;
  readonly x: Float32Array;
  /** The (normalised) input: the first state. */
  readonly q: Float32Array;
  readonly xNorm: Float32Array;
  readonly stages: readonly HopfieldStage[];
  readonly y: Float32Array;
  readonly beta: number;
  /** Dense mode: per-input log-sum-exp from the forward kernel. */
  readonly lse: Float32Array | null;
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

/** The parts one after another, in a new array from `make`. */
function concat<A extends Uint32Array | Float32Array>(parts: A[], make: (length: number) => A): A {
  const out = make(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s = 0;
  for (let i = 0; i < n; i++) s += a[ao + i]! * b[bo + i]!;
  return s;
}

const HOPFIELD_KEYS = ['keys', 'values', 'k', 'beta', 'similarity', 'normalize', 'index', 'ef', 'mode', 'updateSteps', 'threads'] as const;

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
  readonly threads: number | undefined;
  /** beta as a one-element array, so a DenseAdam can train it in place. */
  readonly betaParam: Float32Array;

  constructor(o: HopfieldLookupOptions) {
    if (!o || typeof o !== 'object') throw new InvalidArgumentError('options must be an object');
    checkOptions('HopfieldLookup', o, HOPFIELD_KEYS);
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
    this.normalize = checkBoolean('normalize', o.normalize, false);
    this.index = o.index ?? 'exact';
    if (this.index !== 'exact' && this.index !== 'hnsw') throw new InvalidArgumentError(`index must be 'exact' or 'hnsw', got ${String(o.index)}`);
    if (this.index === 'hnsw' && this.mode === 'dense') throw new InvalidArgumentError("index 'hnsw' applies to mode 'sparse' only (dense mode reads every pattern)");
    if (o.ef !== undefined && this.index !== 'hnsw') throw new InvalidArgumentError("ef applies to index 'hnsw' only");
    this.ef = o.ef === undefined ? undefined : checkInteger('ef', o.ef, 1, 1_000_000);
    const graph = this.index === 'hnsw' ? (o.keys as SparseTensor).hnsw : null;
    if (graph && graph.metric !== this.similarity) {
      throw new InvalidArgumentError(`similarity '${this.similarity}' differs from the metric '${graph.metric}' the keys' HNSW index was built for`);
    }
    this.updateSteps = checkInteger('updateSteps', o.updateSteps ?? 1, 1, 100);
    if (this.updateSteps > 1 && this.mode === 'dense') throw new InvalidArgumentError("updateSteps > 1 applies to mode 'sparse' only");
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
      const keys = this.keys as SparseTensor;
      const r = await callNativeAsync(() =>
        internalNative(keys).denseHopfieldForwardAsync(internalNative(this.values), q, beta, this.similarity, this.threads),
      );
      const ctx: HopfieldContext = { batch: B, x, q, xNorm, stages: [], y: r.y, beta, lse: r.lse };
      return { y: r.y, ids: new Uint32Array(0), weights: new Float32Array(0), ctx };
    }
    const stages: HopfieldStage[] = [];
    let state = q;
    for (let step = 1; step <= this.updateSteps; step++) {
      const toValues = step === this.updateSteps;
      const { ids, s } = await this.#select(state, B);
      const rows = toValues ? this.values.gather(ids) : this.#keyRows(ids);
      const w = toValues ? this.outDim : this.dim;
      const m = await callNativeAsync(() => native().hopfieldMixAsync(B, this.k, w, rows, s, beta, this.threads));
      stages.push({ q: state, ids, s, a: m.weights, out: m.out, toValues, rows });
      state = m.out;
    }
    const last = stages[stages.length - 1]!;
    const ctx: HopfieldContext = { batch: B, x, q, xNorm, stages, y: last.out, beta, lse: null };
    return { y: last.out, ids: last.ids, weights: last.a, ctx };
  }

  /** Gradients of sum(dy . y) for the forward pass `ctx`. */
  async backward(ctx: HopfieldContext, dy: Float32Array): Promise<HopfieldGradients> {
    checkFloat32Array('dy', dy);
    const B = ctx.batch, d = this.dim, dv = this.outDim;
    if (dy.length !== B * dv) throw new InvalidArgumentError(`dy has length ${dy.length}, expected ${B * dv}`);
    for (let i = 0; i < dy.length; i++) if (!Number.isFinite(dy[i]!)) throw new InvalidArgumentError(`dy[${i}] is not finite`);
    let dq: Float32Array;
    let grads: SparseGrad[];
    let dBeta: number;
    if (this.mode === 'dense') {
      const keys = this.keys as SparseTensor;
      const r = await callNativeAsync(() =>
        internalNative(keys).denseHopfieldBackwardAsync(internalNative(this.values), ctx.q, ctx.beta, this.similarity, this.threads, ctx.y, ctx.lse!, dy),
      );
      const all = allIds(keys.size);
      dq = r.dQ;
      grads = [
        { tensor: keys, ids: all, grads: r.dK },
        { tensor: this.values, ids: all, grads: r.dV },
      ];
      dBeta = r.dBeta;
    } else {
      // Back through the stages: the last mixed the values, earlier ones the keys.
      const parts = new Map<SparseTensor, { ids: Uint32Array[]; grads: Float32Array[] }>();
      const push = (g: SparseGrad): void => {
        const e = parts.get(g.tensor) ?? { ids: [], grads: [] };
        e.ids.push(g.ids as Uint32Array);
        e.grads.push(g.grads);
        parts.set(g.tensor, e);
      };
      let dOut = dy;
      dBeta = 0;
      for (let i = ctx.stages.length - 1; i >= 0; i--) {
        const st = ctx.stages[i]!;
        const r = await this.#stageBackward(st, dOut, ctx.beta, B);
        dBeta += r.dBeta;
        for (const g of r.grads) push(g);
        dOut = r.dq;
      }
      dq = dOut;
      const order = this.keys instanceof ProductKeyIndex ? [this.keys.keys1, this.keys.keys2, this.values] : [this.keys, this.values];
      grads = [];
      for (const t of order) {
        const e = parts.get(t);
        if (!e) continue;
        grads.push(e.ids.length === 1 ? { tensor: t, ids: e.ids[0]!, grads: e.grads[0]! } : { tensor: t, ids: concat(e.ids, (n) => new Uint32Array(n)), grads: concat(e.grads, (n) => new Float32Array(n)) });
      }
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

  /** One stage's backward: gradients of the mixed rows, the key rows and its state q (native, off the JS thread). */
  async #stageBackward(st: HopfieldStage, dOut: Float32Array, beta: number, B: number): Promise<{ dq: Float32Array; grads: SparseGrad[]; dBeta: number }> {
    const k = this.k, d = this.dim;
    const { ids, s, a, out } = st;
    const keyRows = !st.toValues && st.rows !== undefined ? st.rows : this.#keyRows(ids);
    const rows = st.rows ?? (st.toValues ? this.values.gather(ids) : keyRows);
    const w = out.length / B;
    const mb = await callNativeAsync(() => native().hopfieldMixBackwardAsync(B, k, w, rows, s, beta, this.threads, a, out, dOut));
    const metric = this.keys instanceof ProductKeyIndex ? 'ip' : this.similarity;
    const kb = await callNativeAsync(() => native().hopfieldKeyBackwardAsync(B, k, d, keyRows, s, metric, this.threads, st.q, mb.ds));
    const grads: SparseGrad[] = this.keys instanceof ProductKeyIndex ? this.#splitProductKeyGrads(ids, kb.dKeys) : [{ tensor: this.keys, ids, grads: kb.dKeys }];
    if (st.toValues) grads.push({ tensor: this.values, ids, grads: mb.dRows });
    else if (this.keys instanceof SparseTensor) grads.push({ tensor: this.keys, ids, grads: mb.dRows });
    else grads.push(...this.#splitProductKeyGrads(ids, mb.dRows));
    return { dq: kb.dq, grads, dBeta: mb.dBeta };
  }

  /** The selected key rows (product keys: the two sub-keys concatenated). */
  #keyRows(ids: Uint32Array): Float32Array {
    return this.keys instanceof SparseTensor ? this.keys.gather(ids) : this.keys.keyRows(ids);
  }

  /** Gradients of concatenated product-key rows, split into the two sub-key tables. */
  #splitProductKeyGrads(ids: Uint32Array, g: Float32Array): SparseGrad[] {
    const pk = this.keys as ProductKeyIndex;
    const n = pk.subKeys, d1 = pk.keys1.dim, d2 = pk.keys2.dim, d = d1 + d2;
    const i1 = new Uint32Array(ids.length), i2 = new Uint32Array(ids.length);
    const g1 = new Float32Array(ids.length * d1), g2 = new Float32Array(ids.length * d2);
    for (let r = 0; r < ids.length; r++) {
      i1[r] = Math.floor(ids[r]! / n);
      i2[r] = ids[r]! % n;
      g1.set(g.subarray(r * d, r * d + d1), r * d1);
      g2.set(g.subarray(r * d + d1, (r + 1) * d), r * d2);
    }
    return [{ tensor: pk.keys1, ids: i1, grads: g1 }, { tensor: pk.keys2, ids: i2, grads: g2 }];
  }

  /** Top-k ids and their similarities for B states. */
  async #select(q: Float32Array, B: number): Promise<{ ids: Uint32Array; s: Float32Array }> {
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
    return { ids, s };
  }
}

/** Whether two id lists are the same ids in the same order. */
function sameIds(a: Uint32Array, b: Uint32Array): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** HopfieldLookup in a Model: its tensors, its Ghost entry, the layer an entry describes, its part of a proof. */
export const hopfieldKind: LayerKind<HopfieldLookup, GhostHopfieldLayer> = {
  spec: hopfieldSpec,
  name: 'a HopfieldLookup',
  is: (layer): layer is HopfieldLookup => layer instanceof HopfieldLookup,

  shape(l, i, prevOut): LayerShape {
    if (l.mode !== 'sparse') throw new InvalidArgumentError(`layer ${i}: a proved model uses sparse layers (dense mode is the baseline)`);
    if (prevOut !== -1 && prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} takes ${l.dim} inputs but layer ${i - 1} gives ${prevOut}`);
    return { inWidth: l.dim, outWidth: l.outDim };
  },

  tensors(l): [string, SparseTensor][] {
    const keys: [string, SparseTensor][] = l.keys instanceof ProductKeyIndex ? [['keys1', l.keys.keys1], ['keys2', l.keys.keys2]] : [['keys', l.keys]];
    return [...keys, ['values', l.values]];
  },

  ghost(l, _shape, index): GhostHopfieldLayer {
    const pk = l.keys instanceof ProductKeyIndex ? l.keys : null;
    const hnsw = !pk && l.index === 'hnsw' ? (l.keys as SparseTensor).hnsw : null;
    if (!pk && l.index === 'hnsw' && !hnsw) throw new InvalidArgumentError('a HopfieldLookup with index hnsw needs its graph: buildHnsw() first');
    return {
      op: 'hopfield',
      dIn: l.dim,
      dOut: l.outDim,
      k: l.k,
      beta: l.beta,
      similarity: l.similarity,
      normalize: l.normalize,
      updateSteps: l.updateSteps,
      index: pk ? { kind: 'product-keys', subKeys: pk.subKeys } : hnsw ? { kind: 'hnsw', M: hnsw.M, efConstruction: hnsw.efConstruction, ef: l.ef ?? 0 } : { kind: 'exact' },
      keys: pk ? [index(pk.keys1), index(pk.keys2)] : [index(l.keys as SparseTensor)],
      values: index(l.values),
    };
  },

  async fromGhost(l, tensors): Promise<HopfieldLookup> {
    const values = tensors[l.values]!;
    let keys: SparseTensor | ProductKeyIndex;
    let index: 'exact' | 'hnsw' = 'exact';
    if (l.index.kind === 'product-keys') keys = ProductKeyIndex.fromTables(tensors[l.keys[0]!]!, tensors[l.keys[1]!]!);
    else {
      keys = tensors[l.keys[0]!]!;
      if (l.index.kind === 'hnsw') {
        index = 'hnsw';
        if (!keys.hnsw) await keys.buildHnsw({ metric: l.similarity, M: l.index.M, efConstruction: l.index.efConstruction });
      }
    }
    const ef = l.index.kind === 'hnsw' && l.index.ef > 0 ? { ef: l.index.ef } : {};
    return new HopfieldLookup({ keys, values, k: l.k, beta: l.beta, similarity: l.similarity, normalize: l.normalize, index, updateSteps: l.updateSteps, ...ef });
  },

  async forward(l, input): Promise<{ y: Float32Array; ctx: unknown }> {
    checkFloat32Array('input', input);
    const r = await l.forward(input as Float32Array);
    return { y: r.y, ctx: r.ctx };
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    const r = await l.backward(ctx as HopfieldContext, dy);
    return { dx: r.dx, grads: r.grads, dense: [{ param: l.betaParam, grad: Float32Array.of(r.dBeta) }] };
  },

  /**
   * Product-key layers select canonically (the verifier re-derives the selection), and
   * so do exact layers with held keys (c.revealKeys: the key tensor is revealed whole
   * and each stage's exact top-k of all N keys is taken with the screened canonical
   * selection, canonicalExactTopK). Otherwise exact and HNSW layers select with the fast
   * index on the canonical state rounded to f32 (the verifier cannot re-check that
   * choice: see the docs). The scores and mixes are the canonical arithmetic, run natively.
   */
  async prove(l, c): Promise<ProvedLayer> {
    const gl = c.ghost.manifest.layers[c.index] as GhostHopfieldLayer;
    const B = c.rows, k = l.k, d = l.dim;
    const nat = native();
    const pk = l.keys instanceof ProductKeyIndex ? l.keys : null;
    const heldKeys = c.revealKeys === true && !pk && l.index === 'exact';
    let q = callNative(() => nat.canonicalStates(c.x!, B, d, l.normalize));
    // Product keys: the proof reveals both tables whole; the selection reads those rows.
    // Held keys: the key tensor whole.
    const whole = new Map<number, { block: PatternBlock; resolved: ResolvedBlock }>();
    if (pk || heldKeys) for (const ti of heldKeys ? [gl.keys[0]!] : gl.keys) if (!whole.has(ti)) whole.set(ti, c.block(ti, 'all'));
    const t1 = pk ? whole.get(gl.keys[0]!)!.resolved.rows : null;
    const t2 = pk ? whole.get(gl.keys[1]!)!.resolved.rows : null;
    const allKeys = heldKeys ? whole.get(gl.keys[0]!)!.resolved : null;
    // One block per tensor the layer reads, as the verifier requires them (hopfieldReads).
    const made = new Map<number, { block: PatternBlock; resolved: ResolvedBlock }>();
    const stages: Uint32Array[] = [];
    let out: Float64Array = new Float64Array(0);
    for (let step = 1; step <= l.updateSteps; step++) {
      const last = step === l.updateSteps;
      let ids: Uint32Array;
      let s: Float64Array;
      let keyRows: Float32Array;
      if (pk) {
        const r = callNative(() => nat.canonicalProductKeys(q, t1!, t2!, pk.subKeys, pk.keys1.dim, pk.keys2.dim, B, k, c.threads));
        ids = r.ids;
        s = r.scores;
        keyRows = last ? new Float32Array(0) : pk.keyRows(ids);
      } else if (allKeys) {
        const r = callNative(() => nat.canonicalExactTopK(q, allKeys.rows, allKeys.ids.length, d, B, k, l.similarity, c.threads));
        ids = r.ids;
        s = r.scores;
        keyRows = last ? new Float32Array(0) : rowsOf(allKeys, ids);
      } else {
        const keys = l.keys as SparseTensor;
        ids = await c.search(keys, Float32Array.from(q), k, {
          metric: l.similarity,
          index: l.index,
          ...(l.ef === undefined ? {} : { ef: Math.max(l.ef, k) }),
          ...(c.threads === undefined ? {} : { threads: c.threads }),
        });
        // The last stage scores the key rows in place in the keys' block (below): one gather of them, not two.
        keyRows = last ? new Float32Array(0) : keys.gather(ids);
        s = last ? new Float64Array(0) : callNative(() => nat.canonicalScores(q, keyRows, B, k, d, l.similarity));
      }
      stages.push(ids);
      if (last) {
        // The last stage reads its rows in place in the blocks the proof carries: the value rows
        // (and, for a searched exact or HNSW layer, the key rows) are not gathered a second time.
        for (const [ti, reads] of hopfieldReads(gl, stages, heldKeys)) made.set(ti, (reads === 'all' ? whole.get(ti) : undefined) ?? c.block(ti, reads));
        const vb = made.get(gl.values)!.resolved;
        const atValues = positionsOf(vb, ids);
        if (!pk && !allKeys) {
          const kb = made.get(gl.keys[0]!)!.resolved;
          // With one stage both blocks reveal the same ids (its sorted selection): the same positions.
          const atKeys = sameIds(kb.ids, vb.ids) ? atValues : positionsOf(kb, ids);
          s = callNative(() => nat.canonicalScores(q, kb.rows, B, k, d, l.similarity, atKeys));
        }
        out = callNative(() => nat.canonicalMix(s, l.beta, vb.rows, B, k, l.outDim, atValues));
      } else {
        out = callNative(() => nat.canonicalMix(s, l.beta, keyRows, B, k, d));
      }
      q = out;
    }
    const blocks: PatternBlock[] = [];
    const resolved: ResolvedBlock[] = [];
    for (const ti of hopfieldReads(gl, stages, heldKeys).keys()) {
      const b = made.get(ti)!;
      blocks.push(b.block);
      resolved.push(b.resolved);
    }
    return { y: Float32Array.from(out), evidence: { op: 'hopfield', stages, blocks }, resolved };
  },
};
