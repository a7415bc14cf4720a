/**
 * The product-key memory kind (Lample et al. 2019; Berges et al. 2024, "Memory Layers at
 * Scale"): a query projection to `heads` queries, each selecting its top-k of n^2 slots
 * through its own two sub-key tables, softmax(beta * score) over them and a mix of their
 * rows of one value table shared by the heads; the heads' outputs summed. And its place
 * in a Model (memoryKind; the verifier half is lib/verify/kinds/memory.ts). Every table
 * is a SparseTensor (the values may be a memory-mapped tensor file), trained sparsely:
 * a step touches the query weight, the sub-key rows and the value rows the heads chose.
 */
import { checkFloat32Array, checkInteger, checkOptions } from '../../shared/args.js';
import { InvalidArgumentError, callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import { ProductKeyIndex } from '../../tensor/product-keys.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { memoryQueries, memoryReads, memorySpec, type GhostMemoryLayer } from '../../verify/kinds/memory.js';
import type { PatternBlock, ResolvedBlock } from '../../verify/proof-format.js';
import { positionsOf, type LayerGradients, type LayerKind, type LayerShape, type ProvedLayer } from '../layer-kind.js';
import type { SparseGrad } from '../optim.js';
import { HopfieldLookup, type HopfieldContext } from './hopfield.js';
import { Linear, type LinearContext } from './linear.js';

export interface ProductKeyMemoryOptions {
  /** heads x dk patterns of dIn: head h's query is output columns h dk .. (h + 1) dk - 1. */
  query: SparseTensor;
  /** Per head, two sub-key tables of n rows (dims d1 and d2, d1 + d2 = dk; the same for every head). */
  keys: readonly (readonly [SparseTensor, SparseTensor])[];
  /** n^2 rows of dOut, shared by the heads. */
  values: SparseTensor;
  /** Slots per head (1..n^2). */
  k: number;
  /** Softmax inverse temperature (default 1 / sqrt(dk); stored as an f32). */
  beta?: number;
  threads?: number;
}

/** What ProductKeyMemory.forward keeps for backward(); treat as opaque. */
export interface ProductKeyMemoryContext {
  readonly B: number;
  readonly query: LinearContext;
  readonly heads: readonly HopfieldContext[];
}

export class ProductKeyMemory {
  readonly query: Linear;
  readonly keys: readonly (readonly [SparseTensor, SparseTensor])[];
  readonly values: SparseTensor;
  readonly k: number;
  readonly beta: number;
  readonly threads: number | undefined;
  /** One HopfieldLookup per head (its product keys over the shared values): the fast passes. */
  readonly #heads: HopfieldLookup[];

  constructor(o: ProductKeyMemoryOptions) {
    if (o === null || typeof o !== 'object') throw new InvalidArgumentError('ProductKeyMemory needs { query, keys, values, k }');
    checkOptions('ProductKeyMemory', o, ['query', 'keys', 'values', 'k', 'beta', 'threads']);
    if (!(o.query instanceof SparseTensor) || !(o.values instanceof SparseTensor)) throw new InvalidArgumentError('query and values must be SparseTensors');
    if (!Array.isArray(o.keys) || o.keys.length < 1 || o.keys.length > 64) throw new InvalidArgumentError('keys must be 1..64 pairs [keys1, keys2], one per head');
    const tables = o.keys.map((p, h) => {
      if (!Array.isArray(p) || p.length !== 2) throw new InvalidArgumentError(`keys[${h}] must be a pair [keys1, keys2]`);
      return ProductKeyIndex.fromTables(p[0], p[1]);
    });
    const [d1, d2] = [o.keys[0]![0].dim, o.keys[0]![1].dim];
    for (const [h, p] of o.keys.entries()) {
      if (p[0].dim !== d1 || p[1].dim !== d2 || p[0].size !== o.keys[0]![0].size) throw new InvalidArgumentError(`keys[${h}]: every head's tables must have head 0's shapes`);
    }
    const dk = d1 + d2, heads = o.keys.length;
    if (o.query.size !== heads * dk) throw new InvalidArgumentError(`the query weight has ${o.query.size} patterns; ${heads} heads of ${dk} need ${heads * dk}`);
    this.query = new Linear({ weight: o.query, ...(o.threads === undefined ? {} : { threads: o.threads }) });
    this.keys = o.keys.map((p) => [p[0], p[1]] as const);
    this.values = o.values;
    this.k = checkInteger('k', o.k, 1, tables[0]!.size);
    this.threads = o.threads;
    const beta = Math.fround(o.beta ?? 1 / Math.sqrt(dk));
    if (!Number.isFinite(beta)) throw new InvalidArgumentError('beta must be finite');
    this.beta = beta;
    this.#heads = tables.map((keys) => new HopfieldLookup({ keys, values: o.values, k: this.k, beta, ...(o.threads === undefined ? {} : { threads: o.threads }) }));
  }

  get heads(): number {
    return this.keys.length;
  }
  get headDim(): number {
    return this.keys[0]![0].dim + this.keys[0]![1].dim;
  }
  get inDim(): number {
    return this.query.inDim;
  }
  get outDim(): number {
    return this.values.dim;
  }
  get subKeys(): number {
    return this.keys[0]![0].size;
  }

  /** B x outDim: the sum over heads of each head's product-key lookup of its query. */
  async forward(x: Float32Array): Promise<{ y: Float32Array; ctx: ProductKeyMemoryContext }> {
    const q = await this.query.forward(x);
    const B = q.ctx.n, dk = this.headDim, hdk = this.heads * dk;
    const y = new Float32Array(B * this.outDim);
    const ctxs: HopfieldContext[] = [];
    for (let h = 0; h < this.heads; h++) {
      const qh = new Float32Array(B * dk);
      for (let b = 0; b < B; b++) qh.set(q.y.subarray(b * hdk + h * dk, b * hdk + (h + 1) * dk), b * dk);
      const r = await this.#heads[h]!.forward(qh);
      for (let i = 0; i < y.length; i++) y[i] = y[i]! + r.y[i]!;
      ctxs.push(r.ctx);
    }
    return { y, ctx: { B, query: q.ctx, heads: ctxs } };
  }

  /** Gradients of sum(dy . y): dx, the query weight, each head's sub-key rows and the value rows (one entry per tensor). */
  async backward(ctx: ProductKeyMemoryContext, dy: Float32Array): Promise<{ dx: Float32Array; grads: SparseGrad[] }> {
    checkFloat32Array('dy', dy);
    const B = ctx.B, dk = this.headDim, hdk = this.heads * dk;
    const dq = new Float32Array(B * hdk);
    const grads: SparseGrad[] = [];
    const valueIds: number[] = [];
    const valueGrads: Float32Array[] = [];
    for (let h = 0; h < this.heads; h++) {
      const r = await this.#heads[h]!.backward(ctx.heads[h]!, dy);
      for (let b = 0; b < B; b++) dq.set(r.dx.subarray(b * dk, (b + 1) * dk), b * hdk + h * dk);
      for (const g of r.grads) {
        if (g.tensor === this.values) {
          valueIds.push(...g.ids);
          valueGrads.push(g.grads);
        } else grads.push(g);
      }
    }
    const vg = new Float32Array(valueGrads.reduce((n, a) => n + a.length, 0));
    let at = 0;
    for (const a of valueGrads) {
      vg.set(a, at);
      at += a.length;
    }
    grads.push({ tensor: this.values, ids: Uint32Array.from(valueIds), grads: vg });
    const q = await this.query.backward(ctx.query, dq);
    return { dx: q.dx, grads: [...q.grads, ...grads] };
  }
}

/**
 * What a memory layer's forward proof computed, for the prover's own step (Model.
 * proveTrainStep): the input it read, the query and sub-key rows its selection used, the
 * queries, each head's scores (B x k, rank order) and the layer's output. Keyed by the
 * proof's `stages` array of that layer (the step's canonical forward sees the same
 * array), so the step's native training forward (memoryTrainForwardNative,
 * lib/model/train/step-native.ts) takes the selection from here instead of re-deriving
 * it, when the rows and input it is given have the same bits. Never part of a proof; a
 * verifier never sees it. proveTrainStep deletes its entries after the step.
 */
export interface MemoryProvedForward {
  x: Float32Array;
  queryRows: Float32Array;
  keyRows: readonly Float32Array[];
  q: Float32Array;
  scores: readonly Float64Array[];
  y: Float32Array;
}
export const memoryProvedForward = new WeakMap<readonly Uint32Array[], MemoryProvedForward>();

export const memoryKind: LayerKind<ProductKeyMemory, GhostMemoryLayer> = {
  spec: memorySpec,
  name: 'a ProductKeyMemory',
  is: (layer): layer is ProductKeyMemory => layer instanceof ProductKeyMemory,

  shape(l, i, prevOut): LayerShape {
    if (prevOut !== -1 && prevOut !== l.inDim) throw new InvalidArgumentError(`layer ${i} takes ${l.inDim} inputs but reads ${prevOut}`);
    return { inWidth: l.inDim, outWidth: l.outDim };
  },

  tensors(l): [string, SparseTensor][] {
    return [['query', l.query.weight], ...l.keys.flatMap(([a, b], h): [string, SparseTensor][] => [[`keys${h}a`, a], [`keys${h}b`, b]]), ['values', l.values]];
  },

  ghost: (l, _shape, index) => ({
    op: 'memory', dIn: l.inDim, dOut: l.outDim, heads: l.heads, k: l.k, subKeys: l.subKeys, beta: l.beta,
    query: index(l.query.weight), keys: l.keys.flatMap(([a, b]) => [index(a), index(b)]), values: index(l.values),
  }),

  fromGhost: async (l, tensors) => new ProductKeyMemory({
    query: tensors[l.query]!,
    keys: Array.from({ length: l.heads }, (_, h) => [tensors[l.keys[2 * h]!]!, tensors[l.keys[2 * h + 1]!]!] as const),
    values: tensors[l.values]!,
    k: l.k,
    beta: l.beta,
  }),

  async forward(l, input): Promise<{ y: Float32Array; ctx: unknown }> {
    checkFloat32Array('input', input);
    return l.forward(input as Float32Array);
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    const r = await l.backward(ctx as ProductKeyMemoryContext, dy);
    return { dx: r.dx, grads: r.grads, dense: [] };
  },

  /** The queries by clinear (as the verifier computes them), then each head's selection and mix natively in the canonical arithmetic. */
  async prove(l, c): Promise<ProvedLayer> {
    const g = c.ghost.manifest, gl = g.layers[c.index] as GhostMemoryLayer;
    const B = c.rows, k = l.k, dk = l.headDim, hdk = l.heads * dk, n = l.subKeys;
    const nat = native();
    const qBlock = c.block(gl.query, 'all');
    const q = memoryQueries(g, gl, c.x!, B, qBlock.resolved.rows);
    const stages: Uint32Array[] = [];
    const acc = new Float64Array(B * l.outDim);
    const keyBlocks: { block: PatternBlock; resolved: ResolvedBlock }[] = [];
    const scores: Float64Array[] = [];
    for (let h = 0; h < l.heads; h++) {
      const qh = new Float64Array(B * dk);
      for (let b = 0; b < B; b++) for (let t = 0; t < dk; t++) qh[b * dk + t] = q[b * hdk + h * dk + t]!;
      const [a, bT] = [c.block(gl.keys[2 * h]!, 'all'), c.block(gl.keys[2 * h + 1]!, 'all')];
      keyBlocks.push(a, bT);
      const r = callNative(() => nat.canonicalProductKeys(qh, a.resolved.rows, bT.resolved.rows, n, a.resolved.dim, bT.resolved.dim, B, k, c.threads));
      stages.push(r.ids);
      scores.push(r.scores);
    }
    // The value rows every head chose, gathered once for the block; each head's mix
    // reads its rows there (canonicalMix's pos; the heads summed in head order, as the verifier does).
    const reads = memoryReads(gl, stages);
    const vBlock = c.block(gl.values, reads.get(gl.values) as Uint32Array);
    for (let h = 0; h < l.heads; h++) {
      const mixed = callNative(() => nat.canonicalMix(scores[h]!, l.beta, vBlock.resolved.rows, B, k, l.outDim, positionsOf(vBlock.resolved, stages[h]!)));
      for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + mixed[i]!;
    }
    const all = [qBlock, ...keyBlocks, vBlock];
    const y = Float32Array.from(acc);
    memoryProvedForward.set(stages, { x: c.x!, queryRows: qBlock.resolved.rows, keyRows: keyBlocks.map((b) => b.resolved.rows), q, scores, y });
    return { y, evidence: { op: 'memory', stages, blocks: all.map((b) => b.block) }, resolved: all.map((b) => b.resolved) };
  },
};
