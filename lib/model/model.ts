/**
 * A Model: a sequence of layers over SparseTensors, with its Ghost file, forward
 * proofs (one layer, a span, or the whole chain), update proofs of optimizer steps,
 * and save / load to a directory (docs/proof-format.md).
 *
 * A proof claims what the canonical arithmetic computes (lib/verify/canonical.ts, run
 * natively here and in TypeScript by the verifier), so prove() returns that output;
 * forward() is the fast f32 path and may differ from it in the last bits.
 */
import { allIds, checkBoolean, checkFloat32Array, checkInteger, checkOptions, toIds } from '../shared/args.js';
import { bytesEqual } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError, OutOfRangeError, callNative } from '../shared/errors.js';
import { type GhostAttentionLayer, type GhostHopfieldLayer, type GhostLayer, type GhostManifest, type GhostProjection, type GhostTensor } from '../verify/ghost-file.js';
import { Projection, SparseSelfAttention } from './attention.js';
import { CANONICAL_VERSION, type CanonicalOptimizer } from '../verify/canonical.js';
import { HASH_SCHEME } from '../verify/merkle.js';
import { Embedding, HopfieldLookup } from './layers.js';
import { ModelDirectory } from './model-dir.js';
import { native } from '../tensor/native.js';
import type { SparseAdam, SparseGrad, SparseSGD } from './optim.js';
import { ProductKeyIndex } from '../tensor/product-keys.js';
import {
  attentionReads,
  encodeProof,
  hopfieldReads,
  planBlock,
  positionsToProve,
  sortedUniqueIds,
  type ForwardProof,
  type LayerEvidence,
  type PatternBlock,
  type PatternCache,
  type ProofInput,
  type ResolvedBlock,
  type UpdateProof,
} from '../verify/proof-format.js';
import { attentionCanonical, pinGhost, type PinnedGhost } from '../verify/proof-verify.js';
import { SparseTensor, internalNative } from '../tensor/sparse-tensor.js';

export type ModelLayer = HopfieldLookup | Embedding | SparseSelfAttention;

/** An attention layer's widths in a model: input (dIn), Q/K/V (D) and output. */
function attentionWidths(l: SparseSelfAttention, prevOut: number): { dIn: number; D: number; out: number } {
  const dIn = l.inDim ?? prevOut;
  return { dIn, ...l.widths(dIn) };
}

export interface ProveOptions {
  /** First layer to prove (default 0). */
  firstLayer?: number;
  /** Number of layers to prove from firstLayer (default: to the end). */
  layers?: number;
  /** Mirror of the verifier's PatternCache: held rows travel as ids or deltas; updated after the proof is made. */
  cache?: PatternCache;
  /** Worker threads for the product-key selection. */
  threads?: number;
}

export interface ProvedForward {
  /** The proved (canonical) output of the last proved layer. */
  output: Float32Array;
  proof: ForwardProof;
  /** The encoded proof (docs/proof-format.md). */
  bytes: Uint8Array;
}

export interface ProvedUpdate {
  proof: UpdateProof;
  bytes: Uint8Array;
}

export class Model {
  readonly layers: readonly ModelLayer[];
  /** Every tensor the layers use, once each, in order of first use: the Ghost file's tensor list. */
  readonly tensors: readonly SparseTensor[];
  /** Their names in the Ghost file. */
  readonly names: readonly string[];

  constructor(layers: readonly ModelLayer[]) {
    if (!Array.isArray(layers) || layers.length === 0) throw new InvalidArgumentError('layers must be a non-empty array');
    const tensors: SparseTensor[] = [];
    const names: string[] = [];
    const use = (t: SparseTensor, name: string): void => {
      if (!tensors.includes(t)) {
        tensors.push(t);
        names.push(name);
      }
    };
    let prevOut = -1;
    layers.forEach((l, i) => {
      if (l instanceof Embedding) {
        if (i !== 0) throw new InvalidArgumentError(`layer ${i}: an Embedding takes ids, so it can only be the first layer`);
        use(l.table, `l${i}.table`);
        prevOut = l.dim;
      } else if (l instanceof HopfieldLookup) {
        if (l.mode !== 'sparse') throw new InvalidArgumentError(`layer ${i}: a proved model uses sparse layers (dense mode is the baseline)`);
        if (prevOut !== -1 && prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} takes ${l.dim} inputs but layer ${i - 1} gives ${prevOut}`);
        if (l.keys instanceof ProductKeyIndex) {
          use(l.keys.keys1, `l${i}.keys1`);
          use(l.keys.keys2, `l${i}.keys2`);
        } else {
          use(l.keys, `l${i}.keys`);
        }
        use(l.values, `l${i}.values`);
        prevOut = l.outDim;
      } else if (l instanceof SparseSelfAttention) {
        if (l.mode !== 'sparse') throw new InvalidArgumentError(`layer ${i}: a proved model uses sparse layers (dense mode is the baseline)`);
        if (l.inDim === null && prevOut === -1) throw new InvalidArgumentError(`layer ${i}: an attention layer without projections cannot come first (its width is unknown)`);
        const w = attentionWidths(l, prevOut);
        if (prevOut !== -1 && prevOut !== w.dIn) throw new InvalidArgumentError(`layer ${i} takes ${w.dIn} inputs but layer ${i - 1} gives ${prevOut}`);
        if (w.D % l.heads !== 0) throw new InvalidArgumentError(`layer ${i}: width ${w.D} is not a multiple of ${l.heads} heads`);
        if (l.output !== null && l.output.inDim !== w.D) throw new InvalidArgumentError(`layer ${i}: the output projection reads ${l.output.inDim} values; the attention gives ${w.D}`);
        for (const [name, p] of [['query', l.query], ['key', l.key], ['value', l.value], ['output', l.output]] as const) if (p !== null) use(p.weight, `l${i}.${name}`);
        prevOut = w.out;
      } else {
        throw new InvalidArgumentError(`layer ${i} is not a HopfieldLookup, an Embedding or a SparseSelfAttention`);
      }
    });
    this.layers = [...layers];
    this.tensors = tensors;
    this.names = names;
  }

  /** Closes the tensor files of a loaded model (their locks are released); the model is unusable after. */
  close(): void {
    for (const t of this.tensors) if (t.file) t.close();
  }

  /** Builds the Merkle tree of every tensor that has none yet (off the JavaScript thread). */
  async commit(): Promise<void> {
    for (const t of this.tensors) if (!t.committed) await t.commit();
  }

  #index(t: SparseTensor): number {
    return this.tensors.indexOf(t);
  }

  /** The Ghost manifest with the tensors' current roots (commit() first). */
  manifest(): GhostManifest {
    const tensors: GhostTensor[] = this.tensors.map((t, i) => {
      if (!t.committed) throw new InvalidArgumentError(`tensor ${this.names[i]} is not committed: await model.commit() first`);
      return { name: this.names[i]!, dtype: 'f32', dim: t.dim, n: t.size, root: t.root() };
    });
    let prevOut = -1;
    const layers: GhostLayer[] = this.layers.map((l) => {
      const before = prevOut;
      prevOut = this.#outWidth(l, prevOut);
      if (l instanceof Embedding) return { op: 'embedding', table: this.#index(l.table), dim: l.dim };
      if (l instanceof SparseSelfAttention) return this.#attentionManifest(l, before);
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
        keys: pk ? [this.#index(pk.keys1), this.#index(pk.keys2)] : [this.#index(l.keys as SparseTensor)],
        values: this.#index(l.values),
      };
    });
    return { formatVersion: 1, hashScheme: HASH_SCHEME, arithmetic: CANONICAL_VERSION, tensors, layers };
  }

  #outWidth(l: ModelLayer, prevOut: number): number {
    if (l instanceof Embedding) return l.dim;
    if (l instanceof SparseSelfAttention) return attentionWidths(l, prevOut).out;
    return l.outDim;
  }

  #inWidth(li: number): number {
    let w = -1;
    for (let i = 0; i < li; i++) w = this.#outWidth(this.layers[i]!, w);
    const l = this.layers[li]!;
    if (l instanceof Embedding) return -1;
    if (l instanceof SparseSelfAttention) return attentionWidths(l, w).dIn;
    return l.dim;
  }

  #attentionManifest(l: SparseSelfAttention, prevOut: number): GhostAttentionLayer {
    const w = attentionWidths(l, prevOut);
    const proj = (p: Projection | null): GhostProjection | null => (p === null ? null : { tensor: this.#index(p.weight), k: p.full ? p.outDim : p.k });
    return {
      op: 'attention', dIn: w.dIn, dOut: w.out, heads: l.heads, k: l.k, causal: l.causal,
      scale: Math.fround(l.scale ?? 1 / Math.sqrt(w.D / l.heads)),
      query: proj(l.query), key: proj(l.key), value: proj(l.value), output: proj(l.output),
    };
  }

  /** The Ghost file (canonical bytes and digest) of the model as it is now. */
  async ghost(): Promise<PinnedGhost> {
    await this.commit();
    return pinGhost(this.manifest());
  }

  /** The fast forward pass (f32 kernels): ids for an Embedding-first model, else B x dim floats. */
  async forward(input: Float32Array | Uint32Array | readonly number[]): Promise<Float32Array> {
    let x: Float32Array | null = null;
    for (const [i, l] of this.layers.entries()) {
      if (l instanceof Embedding) x = l.forward(toIds('input', input as Uint32Array | readonly number[]));
      else if (l instanceof SparseSelfAttention) {
        if (i === 0) checkFloat32Array('input', input);
        x = (await l.forward(i === 0 ? (input as Float32Array) : x!, this.#inWidth(i))).y;
      } else {
        if (i === 0) checkFloat32Array('input', input);
        x = (await l.forward(i === 0 ? (input as Float32Array) : x!)).y;
      }
    }
    return x!;
  }

  /**
   * Runs layers [firstLayer, firstLayer + layers) with the canonical arithmetic and
   * returns the output with a forward proof: per layer the selected ids of every
   * retrieval stage and one block per tensor read (its patterns and one compact
   * multiproof). Product-key layers select canonically (the verifier re-derives the
   * selection); exact and HNSW layers select with the fast index on the canonical
   * state rounded to f32 (the verifier cannot re-check that choice: see the docs).
   */
  async prove(input: Float32Array | Uint32Array | readonly number[], options: ProveOptions = {}): Promise<ProvedForward> {
    options = checkOptions('Model.prove', options, ['firstLayer', 'layers', 'cache', 'threads']);
    if (options.threads !== undefined) checkInteger('threads', options.threads, 1, 1024);
    const first = options.firstLayer ?? 0;
    const count = options.layers ?? this.layers.length - first;
    if (!Number.isInteger(first) || first < 0 || first >= this.layers.length) throw new InvalidArgumentError(`firstLayer must be in 0..${this.layers.length - 1}`);
    if (!Number.isInteger(count) || count < 1 || first + count > this.layers.length) throw new InvalidArgumentError(`layers must be in 1..${this.layers.length - first}`);
    const ghost = await this.ghost();
    let x: Float32Array | null = null;
    let ids: Uint32Array | null = null;
    let pin: ProofInput;
    let B: number;
    if (this.layers[first] instanceof Embedding) {
      ids = toIds('input', input as Uint32Array | readonly number[]);
      if (ids.length === 0) throw new InvalidArgumentError('input is empty');
      pin = { kind: 'ids', ids: ids.slice() };
      B = ids.length;
    } else {
      checkFloat32Array('input', input);
      const dim = this.#inWidth(first);
      x = input as Float32Array;
      if (x.length === 0 || x.length % dim !== 0) throw new InvalidArgumentError(`input length ${x.length} must be a positive multiple of ${dim}`);
      for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new InvalidArgumentError(`input[${i}] is not finite`);
      B = x.length / dim;
      pin = { kind: 'f32', rows: B, cols: dim, data: x.slice() };
    }
    const evidence: LayerEvidence[] = [];
    // The verifier records revealed rows only once the whole proof holds, so the mirror
    // must not see this proof's rows while it plans the later layers' blocks.
    const revealed: ResolvedBlock[] = [];
    let cols = 0;
    for (let li = first; li < first + count; li++) {
      const l = this.layers[li]!;
      if (l instanceof Embedding) {
        const u = sortedUniqueIds([ids!]);
        const block = this.#block(l.table, u, false, options.cache);
        const at = new Map<number, number>();
        u.forEach((id, i) => at.set(id, i));
        const rows = l.table.gather(u);
        x = new Float32Array(B * l.dim);
        ids!.forEach((id, b) => x!.set(rows.subarray(at.get(id)! * l.dim, (at.get(id)! + 1) * l.dim), b * l.dim));
        evidence.push({ op: 'embedding', stages: [], blocks: [block.block] });
        revealed.push(block.resolved);
        cols = l.dim;
      } else if (l instanceof SparseSelfAttention) {
        const gl = ghost.manifest.layers[li] as GhostAttentionLayer;
        if (l.k > B) throw new OutOfRangeError(`layer ${li}: k (${l.k}) must be at most the sequence length (${B} rows)`);
        const blocks: PatternBlock[] = [];
        const rows = new Map<number, Float32Array>();
        for (const ti of attentionReads(gl).keys()) {
          const t = this.tensors[ti]!;
          const b = this.#block(t, allIds(t.size), true, options.cache);
          blocks.push(b.block);
          revealed.push(b.resolved);
          rows.set(ti, b.resolved.rows);
        }
        x = attentionCanonical(ghost.manifest, gl, x!, B, (ti) => rows.get(ti)!);
        evidence.push({ op: 'attention', stages: [], blocks });
        cols = gl.dOut;
      } else {
        const r = await this.#proveHopfield(l, ghost.manifest.layers[li] as GhostHopfieldLayer, x!, B, options);
        x = r.y;
        evidence.push(r.evidence);
        revealed.push(...r.resolved);
        cols = l.outDim;
      }
    }
    options.cache?.record(revealed);
    const proof: ForwardProof = { kind: 'forward', ghost: ghost.digest, firstLayer: first, input: pin, layers: evidence, output: { rows: B, cols, data: x! } };
    return { output: x!, proof, bytes: encodeProof(proof) };
  }

  /**
   * A block revealing `ids` (sorted, unique) of tensor t. Its multiproof covers the
   * rows the peer does not hold verified against the current root (every row when
   * `everyPath`, as an update proof needs); an all-rows block needs none.
   */
  #block(t: SparseTensor, ids: Uint32Array, all: boolean, cache: PatternCache | undefined, everyPath = false): { block: PatternBlock; resolved: ResolvedBlock } {
    const ti = this.#index(t);
    const rows = t.gather(ids);
    const root = t.root();
    const block = planBlock(ti, t.dim, ids, rows, all, cache);
    if (!all) {
      const pos = everyPath ? Array.from(ids, (_, i) => i) : positionsToProve(ti, ids, block.kinds, root, cache);
      // The rows are gathered above: only the hashes are needed from the tree.
      if (pos.length > 0) block.hashes = callNative(() => internalNative(t).prove(Uint32Array.from(pos, (i) => ids[i]!)));
    }
    return { block, resolved: { tensor: ti, ids, rows, dim: t.dim, root } };
  }

  async #proveHopfield(l: HopfieldLookup, gl: GhostHopfieldLayer, x: Float32Array, B: number, options: ProveOptions) {
    const k = l.k, d = l.dim;
    const nat = native();
    const pk = l.keys instanceof ProductKeyIndex ? l.keys : null;
    let q = callNative(() => nat.canonicalStates(x, B, d, l.normalize));
    const t1 = pk ? pk.keys1.gather(allIds(pk.subKeys)) : null;
    const t2 = pk ? pk.keys2.gather(allIds(pk.subKeys)) : null;
    const stages: Uint32Array[] = [];
    let out: Float64Array = new Float64Array(0);
    for (let step = 1; step <= l.updateSteps; step++) {
      const last = step === l.updateSteps;
      let ids: Uint32Array;
      let s: Float64Array;
      let keyRows: Float32Array;
      if (pk) {
        const r = callNative(() => nat.canonicalProductKeys(q, t1!, t2!, pk.subKeys, pk.keys1.dim, pk.keys2.dim, B, k, options.threads));
        ids = r.ids;
        s = r.scores;
        keyRows = last ? new Float32Array(0) : pk.keyRows(ids);
      } else {
        const keys = l.keys as SparseTensor;
        const r = await keys.searchBatch(Float32Array.from(q), k, {
          metric: l.similarity,
          index: l.index,
          ...(l.ef === undefined ? {} : { ef: Math.max(l.ef, k) }),
          ...(options.threads === undefined ? {} : { threads: options.threads }),
        });
        ids = r.ids;
        keyRows = keys.gather(ids);
        s = callNative(() => nat.canonicalScores(q, keyRows, B, k, d, l.similarity));
      }
      stages.push(ids);
      const rows = last ? l.values.gather(ids) : keyRows;
      out = callNative(() => nat.canonicalMix(s, l.beta, rows, B, k, last ? l.outDim : d));
      q = out;
    }
    // One block per tensor the layer reads, as the verifier requires them.
    const blocks: PatternBlock[] = [];
    const resolved: ResolvedBlock[] = [];
    for (const [ti, ids] of hopfieldReads(gl, stages)) {
      const t = this.tensors[ti]!;
      const b = this.#block(t, ids === 'all' ? allIds(t.size) : ids, ids === 'all', options.cache);
      blocks.push(b.block);
      resolved.push(b.resolved);
    }
    return { y: Float32Array.from(out), evidence: { op: 'hopfield' as const, stages, blocks }, resolved };
  }

  /**
   * One optimizer step with update proofs: for each entry (one per tensor), in order,
   * the touched rows before the step with their multiproof, the coalesced gradient and
   * the optimizer state; the step is taken, and the proof carries the new root. The
   * i-th proof is against the Ghost file after proofs 0..i-1. `cache` mirrors the
   * verifier's (held old rows travel as ids; the new rows are recorded).
   */
  async proveStep(optimizer: SparseAdam | SparseSGD, grads: readonly SparseGrad[], options: { cache?: PatternCache } = {}): Promise<ProvedUpdate[]> {
    options = checkOptions('Model.proveStep', options, ['cache']);
    if (!Array.isArray(grads)) throw new InvalidArgumentError('grads must be an array of { tensor, ids, grads }');
    if (new Set(grads.map((g) => g?.tensor)).size !== grads.length) throw new InvalidArgumentError('a tensor appears twice in one step; concatenate its rows');
    const out: ProvedUpdate[] = [];
    for (const [gi, g] of grads.entries()) {
      const ti = this.tensors.indexOf(g.tensor);
      if (ti < 0) throw new InvalidArgumentError(`grads[${gi}].tensor is not one of the model's tensors`);
      const t = g.tensor;
      const d = t.dim;
      const raw = toIds(`grads[${gi}].ids`, g.ids);
      checkFloat32Array(`grads[${gi}].grads`, g.grads);
      if (g.grads.length !== raw.length * d) throw new InvalidArgumentError(`grads[${gi}].grads has length ${g.grads.length}, expected ${raw.length * d}`);
      // Coalesce as the optimizer does (f32 sums in order of appearance), so the proof carries what the step used.
      const ids = sortedUniqueIds([raw]);
      const at = new Map<number, number>();
      ids.forEach((id, i) => at.set(id, i));
      const sum = new Float32Array(ids.length * d);
      for (let i = 0; i < raw.length; i++) {
        const o = at.get(raw[i]!)! * d;
        for (let j = 0; j < d; j++) sum[o + j] = sum[o + j]! + g.grads[i * d + j]!;
      }
      const ghost = await this.ghost();
      const info = optimizer.info(t);
      const state = optimizer.state(t, ids);
      const { block } = this.#block(t, ids, false, options.cache, true);
      optimizer.step([{ tensor: t, ids, grads: sum }]);
      const params: CanonicalOptimizer = {
        kind: info.kind,
        lr: info.lr,
        beta1: info.beta1,
        beta2: info.beta2,
        eps: info.eps,
        weightDecay: info.weightDecay,
        rowStep: info.biasCorrection === 'row',
      };
      const proof: UpdateProof = {
        kind: 'update',
        ghost: ghost.digest,
        tensor: ti,
        optimizer: params,
        globalStep: info.steps,
        logDecay: info.logDecay,
        block,
        grads: sum,
        state: params.kind === 'adam' ? state : { ...state, m: new Float32Array(0), v: new Float32Array(0) },
        newRoot: t.root(),
      };
      options.cache?.record([{ tensor: ti, ids, rows: t.gather(ids), dim: d, root: proof.newRoot }]);
      out.push({ proof, bytes: encodeProof(proof) });
    }
    return out;
  }

  /**
   * Saves the model to a new directory `dir` (it must not exist): `ghost.bin` (the
   * Ghost file) and one tensor file per tensor, `tensors/<i>.gtt` (docs/storage.md:
   * values and Merkle tree; with `optimizerState`, room for Adam / SGD state), written
   * into a temporary directory, fsynced, then renamed to `dir` in one step
   * (ModelDirectory.save, ./model-dir.ts, owns the layout).
   */
  async save(dir: string, options: { optimizerState?: boolean } = {}): Promise<PinnedGhost> {
    options = checkOptions('Model.save', options, ['optimizerState']);
    checkBoolean('optimizerState', options.optimizerState, false);
    const ghost = await this.ghost();
    await ModelDirectory.save(dir, ghost, this.tensors, { optimizerState: options.optimizerState === true });
    return ghost;
  }

  /**
   * Loads a model saved by save(): each tensor file is opened memory-mapped (nothing
   * is read until touched) and checked (`verify`, default true: every Merkle node
   * against the rows, as docs/storage.md describes) and its root must equal the Ghost
   * file's; HNSW graphs are rebuilt with the recorded parameters. Throws FormatError,
   * StorageError or ProofError('ROOT_MISMATCH' / 'GHOST_MISMATCH') for a damaged or
   * unexpected directory. ModelDirectory.open (./model-dir.ts) opens the files; this
   * builds the layers over them (fromManifest).
   */
  static async load(dir: string, options: { expectDigest?: Uint8Array; verify?: boolean; readOnly?: boolean } = {}): Promise<{ model: Model; ghost: PinnedGhost }> {
    options = checkOptions('Model.load', options, ['expectDigest', 'verify', 'readOnly']);
    checkBoolean('verify', options.verify, true);
    checkBoolean('readOnly', options.readOnly, false);
    if (options.expectDigest !== undefined && !(options.expectDigest instanceof Uint8Array && options.expectDigest.length === 32)) {
      throw new InvalidArgumentError('expectDigest must be a 32-byte Uint8Array');
    }
    const { ghost, tensors } = await ModelDirectory.open(dir, {
      ...(options.expectDigest === undefined ? {} : { expectDigest: options.expectDigest }),
      verify: options.verify ?? true,
      readOnly: options.readOnly === true,
    });
    const m = ghost.manifest;
    let model: Model;
    try {
      model = await Model.fromManifest(m, tensors);
    } catch (err) {
      for (const t of tensors) t.close();
      throw err;
    }
    const again = await model.ghost();
    if (!bytesEqual(again.digest, ghost.digest)) throw new FormatError('NON_CANONICAL', `${dir}: the loaded model does not reproduce its Ghost file`);
    return { model, ghost };
  }

  /**
   * The model a Ghost manifest describes, over `tensors` (the manifest's tensor list, in
   * order, holding its roots). HNSW graphs are rebuilt with the recorded parameters.
   */
  static async fromManifest(m: GhostManifest, tensors: readonly SparseTensor[]): Promise<Model> {
    const layers: ModelLayer[] = [];
    for (const l of m.layers) {
      if (l.op === 'embedding') {
        layers.push(new Embedding(tensors[l.table]!));
        continue;
      }
      if (l.op === 'attention') {
        const proj = (p: GhostProjection): Projection => new Projection({ weight: tensors[p.tensor]!, k: p.k });
        layers.push(new SparseSelfAttention({
          heads: l.heads, k: l.k, causal: l.causal, scale: l.scale,
          ...(l.query ? { query: proj(l.query) } : {}), ...(l.key ? { key: proj(l.key) } : {}),
          ...(l.value ? { value: proj(l.value) } : {}), ...(l.output ? { output: proj(l.output) } : {}),
        }));
        continue;
      }
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
      layers.push(new HopfieldLookup({ keys, values, k: l.k, beta: l.beta, similarity: l.similarity, normalize: l.normalize, index, updateSteps: l.updateSteps, ...ef }));
    }
    return new Model(layers);
  }
}
