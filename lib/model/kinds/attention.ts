/**
 * SparseSelfAttention (essay Fig. 4): multi-head self-attention over one sequence
 * where each query attends only to its top-k keys, and optional sparse projections.
 *
 * For an input X (n x dIn):
 *   Q = P_q(X), K = P_k(X), V = P_v(X)          (n x D each, D = heads * headDim)
 *   per head h and query i: ids = top-k keys j by q_i . k_j (j <= i with `causal`),
 *   w = softmax(scale * q_i . k_j) over those ids (scale = 1 / sqrt(headDim)),
 *   o_i = sum_j w_j v_j;  Y = P_o(O).
 * A projection P is a `Projection` over a SparseTensor W of outDim patterns of dim
 * inDim: y_j = x . W_j. A sparse projection keeps only the kProj columns j with the
 * largest x . W_j for each row (found by kNN over the patterns; the others are 0),
 * so it reads and trains kProj patterns instead of all; a dense one keeps them all.
 * Without a projection the stream is X itself.
 *
 * mode 'dense' attends to every candidate key (flash-attention style kernel, O(n)
 * memory) and is the baseline; with k = n the sparse mode computes the same
 * function. The selection is an exact blocked scan (SIMD score tiles and a bounded
 * heap per query, O(n k) memory); backward() goes through the selected keys only.
 */
import { allIds, checkBoolean, checkFloat32Array, checkInteger, checkOptions } from '../../shared/args.js';
import { InvalidArgumentError, OutOfRangeError, callNativeAsync } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import type { SparseGrad } from '../optim.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { attentionCanonical, attentionReads, attentionSpec, type GhostAttentionLayer, type GhostProjection } from '../../verify/kinds/attention.js';
import { revealWhole, type LayerGradients, type LayerKind, type LayerShape, type ProvedLayer } from '../layer-kind.js';

/** Padding in `ids` where a causal query has fewer than k keys to choose from. */
export const NO_KEY = 0xffffffff;

function checkFinite(name: string, a: Float32Array): void {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) throw new InvalidArgumentError(`${name}[${i}] is not finite`);
}

/** Rows of `x` (n of them) and its row width, checked. */
function rowsOf(name: string, x: Float32Array, width: number): number {
  checkFloat32Array(name, x);
  if (x.length === 0 || x.length % width !== 0) throw new InvalidArgumentError(`${name} length ${x.length} must be a positive multiple of ${width}`);
  return x.length / width;
}

export interface ProjectionOptions {
  /** W: outDim patterns of dim inDim (pattern j is output column j). */
  weight: SparseTensor;
  /** Columns kept per row (1..outDim; mode 'sparse' only); default outDim (a dense linear map). */
  k?: number;
  /** 'sparse' (default) keeps the top k columns; 'dense' computes all outDim (the baseline). */
  mode?: 'sparse' | 'dense';
  threads?: number;
}

/** What Projection.forward keeps for backward(); treat as opaque. */
export interface ProjectionContext {
  readonly x: Float32Array;
  readonly n: number;
  /** Sparse: the kept columns (n x k, best first); null when all are kept. */
  readonly ids: Uint32Array | null;
}

/** y = x W^T, keeping the top-k columns per row (or all). */
export class Projection {
  readonly weight: SparseTensor;
  readonly k: number;
  readonly mode: 'sparse' | 'dense';
  readonly threads: number | undefined;

  constructor(o: ProjectionOptions) {
    if (o === null || typeof o !== 'object' || o.weight === undefined) throw new InvalidArgumentError('Projection needs { weight }');
    checkOptions('Projection', o, ['weight', 'k', 'mode', 'threads']);
    if (!(o.weight instanceof SparseTensor)) throw new InvalidArgumentError('weight must be a SparseTensor');
    this.weight = o.weight;
    const m = o.weight.size;
    if (m < 1) throw new InvalidArgumentError('the projection weight has no patterns');
    this.k = o.k === undefined ? m : checkInteger('k', o.k, 1, m);
    if (o.mode !== undefined && o.mode !== 'sparse' && o.mode !== 'dense') throw new InvalidArgumentError(`mode must be 'sparse' or 'dense'`);
    this.mode = o.mode ?? 'sparse';
    if (this.mode === 'dense' && this.k !== m) throw new InvalidArgumentError(`k applies to mode 'sparse' only (mode 'dense' computes all ${m} columns)`);
    this.threads = o.threads === undefined ? undefined : checkInteger('threads', o.threads, 1, 1024);
  }

  get inDim(): number {
    return this.weight.dim;
  }

  get outDim(): number {
    return this.weight.size;
  }

  /** True when every column is computed (dense mode, or k = outDim). */
  get full(): boolean {
    return this.mode === 'dense' || this.k === this.outDim;
  }

  async forward(x: Float32Array): Promise<{ y: Float32Array; ctx: ProjectionContext }> {
    const n = rowsOf('x', x, this.inDim);
    checkFinite('x', x);
    const m = this.outDim;
    if (this.full) {
      const w = this.weight.gather(allIds(m));
      const r = await callNativeAsync(() => native().linearAsync(n, m, this.inDim, this.threads, x, w));
      return { y: r.y, ctx: { x, n, ids: null } };
    }
    const k = this.k;
    const r = await this.weight.searchBatch(x, k, this.threads === undefined ? { metric: 'ip' } : { metric: 'ip', threads: this.threads });
    const y = new Float32Array(n * m);
    for (let i = 0; i < n; i++)
      for (let c = 0; c < k; c++) y[i * m + r.ids[i * k + c]!] = r.scores[i * k + c]!;
    return { y, ctx: { x, n, ids: r.ids } };
  }

  /** Gradients of sum(dy . y): dx (n x inDim) and the weight rows that took part. */
  async backward(ctx: ProjectionContext, dy: Float32Array): Promise<{ dx: Float32Array; grad: SparseGrad }> {
    const m = this.outDim, d = this.inDim, n = ctx.n;
    checkFloat32Array('dy', dy);
    if (dy.length !== n * m) throw new InvalidArgumentError(`dy length ${dy.length} must be ${n * m}`);
    checkFinite('dy', dy);
    if (ctx.ids === null) {
      const w = this.weight.gather(allIds(m));
      const r = await callNativeAsync(() => native().linearBackwardAsync(n, m, d, this.threads, ctx.x, w, dy));
      return { dx: r.dx, grad: { tensor: this.weight, ids: allIds(m), grads: r.dw } };
    }
    const k = this.k, ids = ctx.ids, x = ctx.x;
    // The columns that took part, each once, in increasing order, and each one's slot.
    const slot = new Int32Array(m).fill(-1);
    for (let t = 0; t < ids.length; t++) slot[ids[t]!] = 0;
    const used: number[] = [];
    for (let j = 0; j < m; j++) if (slot[j] === 0) slot[j] = used.push(j) - 1;
    const uniq = Uint32Array.from(used);
    const rows = this.weight.gather(uniq);
    const dx = new Float32Array(n * d);
    const dw = new Float32Array(uniq.length * d);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < k; c++) {
        const j = ids[i * k + c]!;
        const g = dy[i * m + j]!;
        if (g === 0) continue;
        const u = slot[j]! * d;
        for (let t = 0; t < d; t++) {
          dx[i * d + t]! += g * rows[u + t]!;
          dw[u + t]! += g * x[i * d + t]!;
        }
      }
    }
    return { dx, grad: { tensor: this.weight, ids: uniq, grads: dw } };
  }
}

export interface SparseSelfAttentionOptions {
  /** Number of heads; D (the width of Q, K and V) must be a multiple of it. */
  heads: number;
  /** Keys per query (1..n, checked at forward). Ignored in dense mode. */
  k: number;
  /** A query never sees a later position (default false). */
  causal?: boolean;
  /** 'sparse' (default): top-k attention; 'dense': every key (the baseline). */
  mode?: 'sparse' | 'dense';
  /** Softmax scale (default 1 / sqrt(headDim)). */
  scale?: number;
  /** Projections of the input to Q, K, V and of the attention output; each optional. */
  query?: Projection;
  key?: Projection;
  value?: Projection;
  output?: Projection;
  threads?: number;
}

/** What forward() keeps for backward(); treat as opaque. */
export interface AttentionContext {
  readonly n: number;
  readonly x: Float32Array;
  readonly q: Float32Array;
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly o: Float32Array;
  readonly proj: { readonly q: ProjectionContext | null; readonly k: ProjectionContext | null; readonly v: ProjectionContext | null; readonly o: ProjectionContext | null };
  /** Sparse: ids and weights (heads x n x k); dense: the per-query log-sum-exp (heads x n). */
  readonly ids: Uint32Array | null;
  readonly weights: Float32Array | null;
  readonly lse: Float32Array | null;
  readonly kEff: number;
}

export interface AttentionForward {
  /** n x outDim (the output projection's width, else D). */
  y: Float32Array;
  /** Selected keys, heads x n x k (best first, NO_KEY padding); empty in dense mode. */
  ids: Uint32Array;
  /** Softmax weights over `ids` (0 on padding); empty in dense mode. */
  weights: Float32Array;
  ctx: AttentionContext;
}

export interface AttentionGradients {
  /** n x dIn gradient of the input. */
  dx: Float32Array;
  /** One entry per projection weight that took part (shared weights merged). */
  grads: SparseGrad[];
}

export class SparseSelfAttention {
  readonly heads: number;
  readonly k: number;
  readonly causal: boolean;
  readonly mode: 'sparse' | 'dense';
  readonly query: Projection | null;
  readonly key: Projection | null;
  readonly value: Projection | null;
  readonly output: Projection | null;
  readonly threads: number | undefined;
  readonly #scale: number | undefined;

  constructor(o: SparseSelfAttentionOptions) {
    if (o === null || typeof o !== 'object') throw new InvalidArgumentError('SparseSelfAttention needs an options object');
    checkOptions('SparseSelfAttention', o, ['heads', 'k', 'causal', 'mode', 'scale', 'query', 'key', 'value', 'output', 'threads']);
    this.heads = checkInteger('heads', o.heads, 1, 4096);
    this.k = checkInteger('k', o.k, 1, 2 ** 24);
    this.causal = checkBoolean('causal', o.causal, false);
    if (o.mode !== undefined && o.mode !== 'sparse' && o.mode !== 'dense') throw new InvalidArgumentError(`mode must be 'sparse' or 'dense'`);
    this.mode = o.mode ?? 'sparse';
    if (o.scale !== undefined && (typeof o.scale !== 'number' || !Number.isFinite(o.scale) || !(o.scale > 0)))
      throw new OutOfRangeError('scale must be a finite number > 0');
    this.#scale = o.scale;
    for (const name of ['query', 'key', 'value', 'output'] as const) {
      const p = o[name];
      if (p !== undefined && !(p instanceof Projection)) throw new InvalidArgumentError(`${name} must be a Projection`);
    }
    this.query = o.query ?? null;
    this.key = o.key ?? null;
    this.value = o.value ?? null;
    this.output = o.output ?? null;
    const widths = [this.query, this.key, this.value].filter((p): p is Projection => p !== null).map((p) => p.outDim);
    if (new Set(widths).size > 1) throw new InvalidArgumentError(`the query, key and value projections must have one output width (got ${widths.join(', ')})`);
    const ins = [this.query, this.key, this.value].filter((p): p is Projection => p !== null).map((p) => p.inDim);
    if (new Set(ins).size > 1) throw new InvalidArgumentError(`the query, key and value projections must read one input width (got ${ins.join(', ')})`);
    if (widths.length > 0 && widths.length < 3 && ins[0] !== widths[0])
      throw new InvalidArgumentError('a stream without a projection is the input itself: its width must equal the projections\' output width');
    // With a query, key or value projection the width D is known now: check what forward() would.
    if (widths.length > 0) {
      const D = widths[0]!;
      if (D % this.heads !== 0) throw new InvalidArgumentError(`heads (${this.heads}) must divide the attention width ${D} (the projections' output width)`);
      if (this.output !== null && this.output.inDim !== D) {
        throw new InvalidArgumentError(`output: the output projection reads width ${this.output.inDim}, the attention gives ${D}`);
      }
    }
    this.threads = o.threads === undefined ? undefined : checkInteger('threads', o.threads, 1, 1024);
  }

  /** The softmax scale given to the constructor, or null for the default 1 / sqrt(headDim). */
  get scale(): number | null {
    return this.#scale ?? null;
  }

  /** Input width, or null when no projection fixes it (then it is D, set by the caller). */
  get inDim(): number | null {
    const p = this.query ?? this.key ?? this.value;
    return p === null ? null : p.inDim;
  }

  /** For rows of dIn values: the width D of Q, K and V, and the output width. */
  widths(dIn: number): { D: number; out: number } {
    const p = this.query ?? this.key ?? this.value;
    const D = p === null ? dIn : p.outDim;
    return { D, out: this.output === null ? D : this.output.outDim };
  }

  #headDim(D: number): number {
    if (D % this.heads !== 0) throw new InvalidArgumentError(`the attention width ${D} must be a multiple of heads (${this.heads})`);
    return D / this.heads;
  }

  /**
   * x: n x dIn rows (dIn = the projections' input width; without projections, any width
   * that is a multiple of heads, given by `dim`).
   */
  async forward(x: Float32Array, dim?: number): Promise<AttentionForward> {
    if (dim !== undefined) checkInteger('dim', dim, 1, 2 ** 20);
    const fixed = this.inDim;
    if (fixed === null && dim === undefined) throw new InvalidArgumentError('without projections, forward(x, dim) needs the row width');
    if (fixed !== null && dim !== undefined && dim !== fixed) throw new InvalidArgumentError(`dim ${dim} does not match the projections' input width ${fixed}`);
    const dIn = fixed ?? dim!;
    const n = rowsOf('x', x, dIn);
    checkFinite('x', x);
    const { D } = this.widths(dIn);
    const dk = this.#headDim(D);
    if (this.output !== null && this.output.inDim !== D)
      throw new InvalidArgumentError(`the output projection reads width ${this.output.inDim}, the attention gives ${D}`);
    const sparse = this.mode === 'sparse';
    // A sequence shorter than k: every query attends to all the keys it may see (as the canonical forward does).
    const kEff = sparse ? Math.min(this.k, n) : 0;
    const [pq, pk, pv] = await inTurnOrTogether([this.query, this.key, this.value], (p) => p.forward(x));
    const q = pq?.y ?? x, k = pk?.y ?? x, v = pv?.y ?? x;
    const scale = this.#scale ?? 1 / Math.sqrt(dk);
    const r = await callNativeAsync(() => native().attentionForwardAsync(n, this.heads, dk, kEff, this.causal, scale, this.threads, q, k, v));
    const po = this.output === null ? null : await this.output.forward(r.out);
    const ctx: AttentionContext = {
      n, x, q, k, v, o: r.out,
      proj: { q: pq?.ctx ?? null, k: pk?.ctx ?? null, v: pv?.ctx ?? null, o: po?.ctx ?? null },
      ids: r.ids ?? null, weights: r.weights ?? null, lse: r.lse ?? null, kEff,
    };
    return { y: po?.y ?? r.out, ids: r.ids ?? new Uint32Array(0), weights: r.weights ?? new Float32Array(0), ctx };
  }

  /** Gradients of sum(dy . y) for the forward pass `ctx`. */
  async backward(ctx: AttentionContext, dy: Float32Array): Promise<AttentionGradients> {
    const n = ctx.n, D = ctx.o.length / n, dk = D / this.heads;
    const outW = this.output === null ? D : this.output.outDim;
    checkFloat32Array('dy', dy);
    if (dy.length !== n * outW) throw new InvalidArgumentError(`dy length ${dy.length} must be ${n * outW}`);
    checkFinite('dy', dy);
    const grads: SparseGrad[] = [];
    let dO = dy;
    if (this.output !== null) {
      const r = await this.output.backward(ctx.proj.o!, dy);
      dO = r.dx;
      grads.push(r.grad);
    }
    const scale = this.#scale ?? 1 / Math.sqrt(dk);
    const r = await callNativeAsync(() =>
      native().attentionBackwardAsync(n, this.heads, dk, ctx.kEff, this.causal, scale, this.threads, ctx.q, ctx.k, ctx.v, dO,
        ctx.kEff > 0 ? ctx.ids! : ctx.o, ctx.kEff > 0 ? ctx.weights! : ctx.lse!),
    );
    const dIn = ctx.x.length / n;
    const dx = new Float32Array(n * dIn);
    const streams: [Projection | null, ProjectionContext | null, Float32Array][] = [
      [this.query, ctx.proj.q, r.dq], [this.key, ctx.proj.k, r.dk], [this.value, ctx.proj.v, r.dv],
    ];
    const back = await inTurnOrTogether(streams.map(([p]) => p), (p, i) => p.backward(streams[i]![1]!, streams[i]![2]));
    streams.forEach(([, , g], i) => {
      const b = back[i];
      if (b != null) grads.push(b.grad);
      const part = b == null ? g : b.dx;
      for (let j = 0; j < dx.length; j++) dx[j]! += part[j]!;
    });
    return { dx, grads: mergeByTensor(grads) };
  }
}

/**
 * f(p, i) for each projection p (null: none). Dense ones (`full`: a copy-in, copy-out
 * native product each) run together, so their jobs overlap on the worker threads; with
 * a sparse one among them they run in turn. Results in the order of `ps` either way.
 */
async function inTurnOrTogether<T>(ps: readonly (Projection | null)[], f: (p: Projection, i: number) => Promise<T>): Promise<(T | null)[]> {
  if (ps.every((p) => p === null || p.full)) return Promise.all(ps.map((p, i) => (p === null ? null : f(p, i))));
  const out: (T | null)[] = [];
  for (const [i, p] of ps.entries()) out.push(p === null ? null : await f(p, i));
  return out;
}

/** One SparseGrad per tensor (a weight shared by projections gets their rows together). */
function mergeByTensor(grads: SparseGrad[]): SparseGrad[] {
  const byTensor = new Map<SparseTensor, SparseGrad[]>();
  for (const g of grads) byTensor.set(g.tensor, [...(byTensor.get(g.tensor) ?? []), g]);
  const out: SparseGrad[] = [];
  for (const [tensor, list] of byTensor) {
    if (list.length === 1) {
      out.push(list[0]!);
      continue;
    }
    const ids = list.flatMap((g) => Array.from(g.ids));
    const rows = new Float32Array(list.reduce((s, g) => s + g.grads.length, 0));
    let at = 0;
    for (const g of list) {
      rows.set(g.grads, at);
      at += g.grads.length;
    }
    out.push({ tensor, ids: Uint32Array.from(ids), grads: rows });
  }
  return out;
}

/** An attention layer's widths in a model: input (dIn), Q/K/V (D) and output. */
function attentionWidths(l: SparseSelfAttention, prevOut: number): { dIn: number; D: number; out: number } {
  const dIn = l.inDim ?? prevOut;
  return { dIn, ...l.widths(dIn) };
}

/** SparseSelfAttention in a Model: a proof reveals its projections whole; the claim is attentionCanonical. */
export const attentionKind: LayerKind<SparseSelfAttention, GhostAttentionLayer> = {
  spec: attentionSpec,
  name: 'a SparseSelfAttention',
  is: (layer): layer is SparseSelfAttention => layer instanceof SparseSelfAttention,

  shape(l, i, prevOut): LayerShape {
    if (l.mode !== 'sparse') throw new InvalidArgumentError(`layer ${i}: a proved model uses sparse layers (dense mode is the baseline)`);
    if (l.inDim === null && prevOut === -1) throw new InvalidArgumentError(`layer ${i}: an attention layer without projections cannot come first (its width is unknown)`);
    const w = attentionWidths(l, prevOut);
    if (prevOut !== -1 && prevOut !== w.dIn) throw new InvalidArgumentError(`layer ${i} takes ${w.dIn} inputs but layer ${i - 1} gives ${prevOut}`);
    if (w.D % l.heads !== 0) throw new InvalidArgumentError(`layer ${i}: width ${w.D} is not a multiple of ${l.heads} heads`);
    if (l.output !== null && l.output.inDim !== w.D) throw new InvalidArgumentError(`layer ${i}: the output projection reads ${l.output.inDim} values; the attention gives ${w.D}`);
    return { inWidth: w.dIn, outWidth: w.out };
  },

  tensors(l): [string, SparseTensor][] {
    const out: [string, SparseTensor][] = [];
    for (const [name, p] of [['query', l.query], ['key', l.key], ['value', l.value], ['output', l.output]] as const) if (p !== null) out.push([name, p.weight]);
    return out;
  },

  ghost(l, shape, index): GhostAttentionLayer {
    const D = l.widths(shape.inWidth).D;
    const proj = (p: Projection | null): GhostProjection | null => (p === null ? null : { tensor: index(p.weight), k: p.full ? p.outDim : p.k });
    return {
      op: 'attention', dIn: shape.inWidth, dOut: shape.outWidth, heads: l.heads, k: l.k, causal: l.causal,
      scale: Math.fround(l.scale ?? 1 / Math.sqrt(D / l.heads)),
      query: proj(l.query), key: proj(l.key), value: proj(l.value), output: proj(l.output),
    };
  },

  async fromGhost(l, tensors): Promise<SparseSelfAttention> {
    const proj = (p: GhostProjection): Projection => new Projection({ weight: tensors[p.tensor]!, k: p.k });
    return new SparseSelfAttention({
      heads: l.heads, k: l.k, causal: l.causal, scale: l.scale,
      ...(l.query ? { query: proj(l.query) } : {}), ...(l.key ? { key: proj(l.key) } : {}),
      ...(l.value ? { value: proj(l.value) } : {}), ...(l.output ? { output: proj(l.output) } : {}),
    });
  },

  async forward(l, input, shape): Promise<{ y: Float32Array; ctx: unknown }> {
    checkFloat32Array('input', input);
    const r = await l.forward(input as Float32Array, shape.inWidth);
    return { y: r.y, ctx: r.ctx };
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    const r = await l.backward(ctx as AttentionContext, dy);
    return { dx: r.dx, grads: r.grads, dense: [] };
  },

  async prove(l, c): Promise<ProvedLayer> {
    const gl = c.ghost.manifest.layers[c.index] as GhostAttentionLayer;
    const B = c.rows;
    const { blocks, resolved, rows } = revealWhole(c, attentionReads(gl).keys());
    const y = attentionCanonical(c.ghost.manifest, gl, c.x!, B, (ti) => rows.get(ti)!);
    return { y, evidence: { op: 'attention', stages: [], blocks }, resolved };
  },
};
