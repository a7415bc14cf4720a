/**
 * What a layer kind is to a Model (docs/layer-kinds.md): the model-tier half of a kind,
 * beside its verifier half (lib/verify/layer-spec.ts). It knows the layer object: which
 * tensors it uses, how it chains, its Ghost-file entry and the layer a Ghost entry
 * describes, its fast forward and backward, and how the prover makes the layer's part
 * of a forward proof (the rows it reveals and the canonical output it claims).
 *
 * Model, its prover, save / load and the CLI dispatch through the registry
 * (lib/model/kinds/index.ts); none of them names a layer class.
 */
import { sortedIndexOf, type GhostLayerBase, type LayerSpec } from '../verify/layer-spec.js';
import type { LayerEvidence, PatternBlock, PatternCache, ResolvedBlock } from '../verify/proof-format.js';
import type { PinnedGhost } from '../verify/proof-verify.js';
import type { SparseGrad } from './optim.js';
import type { BatchSearchOptions, SparseTensor } from '../tensor/sparse-tensor.js';
import { OutOfRangeError } from '../shared/errors.js';

/** What a backward pass gives: the input's gradient (null for ids), sparse row gradients, dense parameter gradients. */
export interface LayerGradients {
  dx: Float32Array | null;
  /** A layer with several inputs (arity > 1): the gradients of the others, in order. */
  dxOthers?: Float32Array[];
  grads: SparseGrad[];
  /** Gradients of dense parameters the layer owns (e.g. a learned beta), same length as each param. */
  dense: { param: Float32Array; grad: Float32Array }[];
}

/** What Model gives a kind to prove one layer. */
export interface ProveLayerContext {
  /** The Ghost file the proof is for (the layer's entry is ghost.manifest.layers[index]). */
  readonly ghost: PinnedGhost;
  readonly index: number;
  /** Rows in the batch (attention: the sequence length). */
  readonly rows: number;
  /** The input: ids for an ids-taking layer, else rows x width f32 (the canonical output of the layer it reads). */
  readonly ids: Uint32Array | null;
  readonly x: Float32Array | null;
  /** Every input of a layer with several (arity > 1), in order; [x] otherwise. */
  readonly inputs: readonly Float32Array[];
  readonly cache: PatternCache | undefined;
  readonly threads: number | undefined;
  /**
   * Held keys (ProveOptions.revealKeys): reveal this layer's key tensor whole and select
   * canonically, so the verifier re-derives the selection. Exact-index Hopfield layers
   * apply it; other kinds ignore it.
   */
  readonly revealKeys?: boolean;
  /**
   * The exact search of a layer's selection: the ids of `tensor.searchBatch(queries, k,
   * options)`. Model gives a SearchBatcher's (ProveOptions.batcher: concurrent proofs
   * share one scan, the same ids) or the tensor's own.
   */
  search(tensor: SparseTensor, queries: Float32Array, k: number, options: BatchSearchOptions): Promise<Uint32Array>;
  /** The model's tensor at Ghost-file index `i`, and a tensor's index. */
  tensor(i: number): SparseTensor;
  tensorIndex(t: SparseTensor): number;
  /** A block revealing rows `ids` (sorted, unique) or every row ('all') of the tensor at Ghost-file index `i`. */
  block(i: number, ids: Uint32Array | 'all'): { block: PatternBlock; resolved: ResolvedBlock };
}

/** One layer's part of a forward proof: its canonical output, its evidence and the rows it revealed. */
export interface ProvedLayer {
  y: Float32Array;
  evidence: LayerEvidence;
  resolved: ResolvedBlock[];
}

/** How a layer sits in a model: its input and output widths (-1 input: it takes ids). */
export interface LayerShape {
  inWidth: number;
  outWidth: number;
}

export interface LayerKind<Layer, L extends GhostLayerBase> {
  /** The verifier half: Ghost entry codec and checks, reads, canonical forward. */
  readonly spec: LayerSpec<L>;
  /** Class names for messages ("a HopfieldLookup"). */
  readonly name: string;
  /** Whether `layer` is of this kind: the one place a layer's class is tested. */
  is(layer: unknown): layer is Layer;

  /**
   * Checks the layer at position `index` after a layer giving `prevOut` values per row
   * (-1: it is first) and returns its shape; throws InvalidArgumentError when it cannot
   * stand there (a proved model uses sparse layers; widths must chain).
   */
  shape(layer: Layer, index: number, prevOut: number): LayerShape;
  /** The tensors the layer uses, in Ghost-file order, with their name suffix (`l<i>.<suffix>`). */
  tensors(layer: Layer): [string, SparseTensor][];
  /** Its Ghost-file entry; `tensorIndex` maps a tensor to its index in the file. */
  ghost(layer: Layer, shape: LayerShape, tensorIndex: (t: SparseTensor) => number): L;
  /** The layer a Ghost entry describes, over the model's tensors (HNSW graphs are rebuilt). */
  fromGhost(l: L, tensors: readonly SparseTensor[]): Promise<Layer>;

  /** The fast forward pass (f32 kernels); `ctx` is what backward needs. `others`: the inputs after the first (arity > 1). */
  forward(layer: Layer, input: Float32Array | Uint32Array, shape: LayerShape, others?: readonly Float32Array[]): Promise<{ y: Float32Array; ctx: unknown }>;
  /** The backward pass from forward's ctx and the output's gradient. */
  backward(layer: Layer, ctx: unknown, dy: Float32Array): Promise<LayerGradients>;

  /** The layer's part of a forward proof: the canonical output and the evidence the verifier needs. */
  prove(layer: Layer, ctx: ProveLayerContext): Promise<ProvedLayer>;
}

/**
 * Blocks revealing every row of each tensor in `tensors` (Ghost-file indexes, in order):
 * the blocks and resolved rows for a ProvedLayer, and each tensor's rows by index for the
 * canonical forward.
 */
export function revealWhole(c: ProveLayerContext, tensors: Iterable<number>): { blocks: PatternBlock[]; resolved: ResolvedBlock[]; rows: Map<number, Float32Array> } {
  const blocks: PatternBlock[] = [];
  const resolved: ResolvedBlock[] = [];
  const rows = new Map<number, Float32Array>();
  for (const ti of tensors) {
    const b = c.block(ti, 'all');
    blocks.push(b.block);
    resolved.push(b.resolved);
    rows.set(ti, b.resolved.rows);
  }
  return { blocks, resolved, rows };
}

/**
 * Rows `ids` (any order, repeats allowed) of a resolved block that reveals each of them
 * (block ids ascending, as blocks have them), concatenated: the rows a canonical forward
 * mixes, copied from the block the proof carries rather than gathered a second time.
 */
export function rowsOf(r: ResolvedBlock, ids: Uint32Array): Float32Array {
  const d = r.dim, pos = positionsOf(r, ids), out = new Float32Array(ids.length * d);
  for (let t = 0; t < ids.length; t++) out.set(r.rows.subarray(pos[t]! * d, (pos[t]! + 1) * d), t * d);
  return out;
}

/**
 * Where rows `ids` (any order, repeats allowed) sit in a resolved block that reveals each
 * of them (block ids ascending): the `at` argument of the native canonicalScores and
 * canonicalMix, which then read the block's rows in place instead of a copy of them in
 * pair order (rowsOf).
 */
export function positionsOf(r: ResolvedBlock, ids: Uint32Array): Uint32Array {
  const have = r.ids, n = ids.length, pos = new Uint32Array(n);
  const missing = (id: number): never => {
    throw new OutOfRangeError(`row ${id} of tensor ${r.tensor} is not in its block`);
  };
  if (n < 64 || n >= 2 ** 21) {
    for (let t = 0; t < n; t++) {
      const lo = sortedIndexOf(have, ids[t]!);
      if (lo < 0) missing(ids[t]!);
      pos[t] = lo;
    }
    return pos;
  }
  // Many ids: sort (id, t) packed as id 2^21 + t (exact below 2^53), then one merge
  // with the block's ascending ids.
  const keys = new Float64Array(n);
  for (let t = 0; t < n; t++) keys[t] = ids[t]! * 2097152 + t;
  keys.sort();
  let at = 0;
  for (let i = 0; i < n; i++) {
    const key = keys[i]!, t = key % 2097152, id = (key - t) / 2097152;
    while (at < have.length && have[at]! < id) at++;
    if (at === have.length || have[at] !== id) missing(id);
    pos[t] = at;
  }
  return pos;
}

