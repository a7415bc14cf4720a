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
import { FormatError, InvalidArgumentError, callNative } from '../shared/errors.js';
import { GHOST_FORMAT_VERSION, GHOST_GRAPH_VERSION, GHOST_TRAINING_VERSION, encodeGhost, isChain, spanSource, type GhostLayer, type GhostManifest, type GhostTensor } from '../verify/ghost-file.js';
import { CANONICAL_VERSION, type CanonicalOptimizer } from '../verify/canonical.js';
import { HASH_SCHEME } from '../verify/merkle.js';
import { ModelDirectory } from './model-dir.js';
import type { TrainingRun } from './train/checkpoint.js';
import type { SparseAdam, SparseGrad, SparseSGD } from './optim.js';
import {
  encodeProof,
  planBlock,
  planStateBlock,
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
import { pinGhost, type PinnedGhost } from '../verify/proof-verify.js';
import { computeStep, recordStep, type VerifiedStep } from '../verify/step.js';
import type { StepProof, StepSequence } from '../verify/proof-format.js';
import { loadHasher } from '../verify/merkle.js';
import { VerifyBudget } from '../verify/proof-format.js';
import { STEP_NATIVE, stepNative } from './train/step-native.js';
import { memoryProvedForward } from './kinds/memory.js';
import { StepTraining, noTrainingRule, type StepBatch, type StepTrainingOptions } from './train/step-training.js';
import { SparseTensor, internalNative } from '../tensor/sparse-tensor.js';
import { SearchBatcher } from './search-batcher.js';
import type { LayerShape } from './layer-kind.js';
import { Block, expandChain } from './blocks.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { kindOf, kindOfEntry, type AnyLayerKind, type ModelLayer } from './kinds/index.js';

export type { ModelLayer };

export interface ProveOptions {
  /** First layer to prove (default 0). */
  firstLayer?: number;
  /** Number of layers to prove from firstLayer (default: to the end). */
  layers?: number;
  /** Mirror of the verifier's PatternCache: held rows travel as ids or deltas; updated after the proof is made. */
  cache?: PatternCache;
  /** Worker threads for the product-key selection. */
  threads?: number;
  /**
   * Held keys (docs/proof-format.md section 5): 'all' reveals the key tensor of every
   * exact-index HopfieldLookup in the span whole and selects canonically, so a verifier
   * re-derives each selection (verifyForward's requireSelection accepts only such
   * proofs); a list names the layers (each an exact-index HopfieldLookup in the span).
   * The first proof carries every key (N x d f32, no hashes); with a `cache`, later
   * proofs send them as held ids (2 bits a key). Default 'none': the selection is the
   * prover's. HNSW layers keep the graph's selection (unproven) under 'all'.
   */
  revealKeys?: 'none' | 'all' | readonly number[];
  /**
   * Joins this proof's exact searches with those of other proofs running at once into one
   * scan (a prover serving several requests; docs/serving.md, "Performance"). The proof
   * is the same bytes with or without it.
   */
  batcher?: SearchBatcher;
  /**
   * Where the encoded proof goes (encodeProof's `into`): called once with its exact size,
   * returns a Uint8Array of that length, which `bytes` then is. A server passes its
   * reused output buffers (docs/serving.md, "Performance"). Default: a fresh array.
   */
  into?: (size: number) => Uint8Array;
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

/** What `new Model` takes besides the layers. */
export interface ModelOptions {
  /**
   * A graph: per layer, the layers whose outputs it takes, in order (-1: the model's
   * input), each earlier than the layer. Default: a chain (layer i takes layer i - 1).
   * The last layer's output is the model's; every other layer's must be read.
   */
  inputs?: readonly (readonly number[])[];
  /**
   * Train by step proofs (docs/step-proofs.md): the rule (loss, optimizer, schedule,
   * clipping, frozen tensors) the Ghost file then commits, with each trained tensor's
   * optimizer-state root; `proveTrainStep` takes the steps.
   */
  training?: StepTrainingOptions;
}

/**
 * A training step with its step proof (Model.proveTrainStep): the proof, and what a
 * verifier of it gets (VerifiedStep): the Ghost file after the step (the model's now),
 * the step's number, the canonical output on the batch before it (a batch of several
 * sequences: their outputs one after another), the loss, the learning rate and the
 * gradient norm before clipping.
 */
export interface ProvedStep extends Pick<VerifiedStep, 'ghost' | 'step' | 'output' | 'loss' | 'lr' | 'gradNorm'> {
  proof: StepProof;
  /** The encoded proof (docs/step-proofs.md). */
  bytes: Uint8Array;
}

/** Limits for the prover's own run of the step computation: its work is its own. */
const PROVER_LIMITS = { maxProofBytes: 2 ** 30, maxBatch: 2 ** 32, maxSequence: 2 ** 32, maxCells: Number.MAX_SAFE_INTEGER, maxWork: Number.MAX_SAFE_INTEGER };

export class Model {
  /** The layers (a Residual is listed as its body's layers and an Add). */
  readonly layers: readonly ModelLayer[];
  /** Per layer, the layers whose outputs it takes (-1: the model's input). */
  readonly inputs: readonly (readonly number[])[];
  /** Every tensor the layers use, once each, in order of first use: the Ghost file's tensor list. */
  readonly tensors: readonly SparseTensor[];
  /** Their names in the Ghost file. */
  readonly names: readonly string[];
  /** Each layer's kind and shape (input and output widths), found once. */
  readonly #kinds: readonly AnyLayerKind[];
  readonly #shapes: readonly LayerShape[];
  readonly #trainingOptions: StepTrainingOptions | undefined;
  #training: StepTraining | null = null;
  /**
   * Arrays proveBytes gathers revealed rows into, given back once its proof is encoded
   * (no fresh external memory per proof: at batch 1 about 100 KiB of key rows, which made
   * V8 collect its young generation early). At most 16 arrays, 32 MiB.
   */
  readonly #rowPool = new BufferPool();
  /** The last Ghost file ghost() pinned. */
  #pinned: PinnedGhost | null = null;
  /** Step proofs are taken one at a time: the tail of the queue of proveTrainStep calls. */
  #stepQueue: Promise<unknown> = Promise.resolve();

  /**
   * A chain of layers and blocks (a `Residual` is `x + body(x)`, a `GatedMLP` is
   * down(silu(gate(x)) * up(x))); or, with
   * `options.inputs`, any graph of layers (docs/layer-kinds.md, "Graphs and residual blocks").
   */
  constructor(layers: readonly (ModelLayer | Block)[], options: ModelOptions = {}) {
    if (!Array.isArray(layers) || layers.length === 0) throw new InvalidArgumentError('layers must be a non-empty array');
    options = checkOptions('Model', options, ['inputs', 'training']);
    this.#trainingOptions = options.training;
    const flat: ModelLayer[] = [];
    let given: readonly (readonly number[])[];
    if (options.inputs !== undefined) {
      if (layers.some((l) => l instanceof Block)) throw new InvalidArgumentError('give either blocks (Residual, GatedMLP) or options.inputs, not both');
      if (!Array.isArray(options.inputs) || options.inputs.length !== layers.length) throw new InvalidArgumentError(`options.inputs must list the inputs of each of the ${layers.length} layers`);
      flat.push(...(layers as ModelLayer[]));
      given = options.inputs;
    } else {
      // Blocks become their layers, each reading what the block lays out.
      const ins: number[][] = [];
      expandChain(layers, (l, from) => {
        flat.push(l);
        ins.push(from);
        return flat.length - 1;
      }, -1);
      given = ins;
    }
    const tensors: SparseTensor[] = [];
    const names: string[] = [];
    const kinds: AnyLayerKind[] = [];
    const shapes: LayerShape[] = [];
    const inputs: number[][] = [];
    const used = new Uint8Array(flat.length);
    let modelInput = -1;
    flat.forEach((l, i) => {
      const kind = kindOf(l, `layer ${i}`);
      const ins = given[i];
      const arity = kind.spec.arity ?? 1;
      if (!Array.isArray(ins) || ins.length !== arity) throw new InvalidArgumentError(`layer ${i} (${kind.spec.op}) takes ${arity} input(s)`);
      const widths = ins.map((j) => {
        if (!Number.isInteger(j) || j < -1 || j >= i) throw new InvalidArgumentError(`layer ${i} reads layer ${String(j)}, which is not an earlier layer or the model's input (-1)`);
        if (j === -1 && i > 0 && modelInput === -1) throw new InvalidArgumentError(`layer ${i} reads the model's input, which is ids (only the first layer takes them)`);
        if (j >= 0) used[j] = 1;
        return j === -1 ? (i === 0 ? -1 : modelInput) : shapes[j]!.outWidth;
      });
      if (widths.some((w) => w !== widths[0])) throw new InvalidArgumentError(`layer ${i} (${kind.spec.op}) reads outputs of widths ${widths.join(', ')}; they must be equal`);
      const shape = kind.shape(l, i, widths[0]!);
      if (i === 0) modelInput = shape.inWidth;
      for (const [suffix, t] of kind.tensors(l)) {
        if (!tensors.includes(t)) {
          tensors.push(t);
          names.push(`l${i}.${suffix}`);
        }
      }
      kinds.push(kind);
      shapes.push(shape);
      inputs.push([...ins]);
    });
    for (let j = 0; j + 1 < flat.length; j++) if (!used[j]) throw new InvalidArgumentError(`layer ${j}'s output is read by no later layer`);
    this.layers = flat;
    this.inputs = inputs;
    this.tensors = tensors;
    this.names = names;
    this.#kinds = kinds;
    this.#shapes = shapes;
  }

  /** Closes the tensor files of a loaded model (their locks are released); the model is unusable after. */
  close(): void {
    for (const t of this.tensors) if (t.file) t.close();
  }

  /** Builds the Merkle tree of every tensor that has none yet (off the JavaScript thread). */
  async commit(): Promise<void> {
    for (const t of this.tensors) if (!t.committed) await t.commit();
    if (this.#trainingOptions !== undefined && this.#training === null) this.#training = await StepTraining.create(this.#trainingOptions, this.tensors);
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
    const layers: GhostLayer[] = this.layers.map((l, i) => this.#kinds[i]!.ghost(l, this.#shapes[i]!, (t) => this.#index(t)));
    const m: GhostManifest = { formatVersion: GHOST_FORMAT_VERSION, hashScheme: HASH_SCHEME, arithmetic: CANONICAL_VERSION, tensors, layers };
    if (this.#trainingOptions !== undefined) {
      if (this.#training === null) throw new InvalidArgumentError('the training rule is set up by commit(): await model.commit() first');
      return { ...m, formatVersion: GHOST_TRAINING_VERSION, inputs: this.inputs.map((ins) => [...ins]), training: this.#training.section() };
    }
    return isChain(this.inputs) ? m : { ...m, formatVersion: GHOST_GRAPH_VERSION, inputs: this.inputs.map((ins) => [...ins]) };
  }

  /**
   * The Ghost file (canonical bytes and digest) of the model as it is now. Every proof
   * asks for it: the manifest is built each time (the roots, layers and training rule as
   * they are now), and when it equals the last one's (sameManifest: every field, every
   * root byte) the last pinned file is returned instead of encoding and hashing it again.
   */
  async ghost(): Promise<PinnedGhost> {
    await this.commit();
    const manifest = this.manifest();
    // (Were a caller to change the manifest it got back, the next one differs from it: pinned anew.)
    if (this.#pinned !== null && sameManifest(manifest, this.#pinned.manifest)) return this.#pinned;
    this.#pinned = await pinGhost(manifest);
    return this.#pinned;
  }

  /** The fast forward pass (f32 kernels): ids for an Embedding-first model, else B x dim floats. */
  async forward(input: Float32Array | Uint32Array | readonly number[]): Promise<Float32Array> {
    const x = this.#checkInput(0, input).input;
    const outs: Float32Array[] = [];
    for (const [i, l] of this.layers.entries()) {
      const [first, ...others] = this.inputs[i]!.map((j) => (j === -1 ? x : outs[j]!));
      outs.push((await this.#kinds[i]!.forward(l, first!, this.#shapes[i]!, others as Float32Array[])).y);
    }
    return outs[outs.length - 1]!;
  }

  /** The input of layer `li` checked: ids, or f32 rows of its width (finite when `finite`). */
  #checkInput(li: number, input: Float32Array | Uint32Array | readonly number[], finite = false): { input: Float32Array | Uint32Array; rows: number } {
    const w = this.#shapes[li]!.inWidth;
    if (w === -1) {
      const ids = toIds('input', input as Uint32Array | readonly number[]);
      return { input: ids, rows: ids.length };
    }
    checkFloat32Array('input', input);
    const x = input as Float32Array;
    if (finite) {
      if (x.length === 0 || x.length % w !== 0) throw new InvalidArgumentError(`input length ${x.length} must be a positive multiple of ${w}`);
      for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new InvalidArgumentError(`input[${i}] is not finite`);
    }
    return { input: x, rows: x.length / w };
  }

  /**
   * Runs layers [firstLayer, firstLayer + layers) with the canonical arithmetic and
   * returns the output with a forward proof: per layer the selected ids of every
   * retrieval stage and one block per tensor read (its patterns and one compact
   * multiproof). Each layer's part is its kind's (lib/model/kinds/): product-key layers
   * select canonically (the verifier re-derives the selection), and so do exact layers
   * named by `revealKeys` (held keys: the key tensor revealed whole); other exact and HNSW
   * layers select with the fast index on the canonical state rounded to f32 (the verifier
   * cannot re-check that choice: see the docs).
   */
  async prove(input: Float32Array | Uint32Array | readonly number[], options: ProveOptions = {}): Promise<ProvedForward> {
    const r = await this.#proveForward(input, options);
    if (options.into !== undefined && typeof options.into !== 'function') throw new InvalidArgumentError('into must be a function');
    return { ...r, bytes: encodeProof(r.proof, options.into === undefined ? {} : { into: options.into }) };
  }

  /**
   * prove() for a caller that keeps only the encoded proof (a server): the same output
   * and the same bytes, without the proof object. Since no proof object outlives the
   * call, the rows the proof reveals are gathered into arrays the model reuses (given
   * back once the proof is encoded) instead of fresh ones.
   */
  async proveBytes(input: Float32Array | Uint32Array | readonly number[], options: ProveOptions = {}): Promise<{ output: Float32Array; bytes: Uint8Array }> {
    if (options.into !== undefined && typeof options.into !== 'function') throw new InvalidArgumentError('into must be a function');
    const lent: Float32Array[] = [];
    try {
      const r = await this.#proveForward(input, options, false, lent);
      return { output: r.output, bytes: encodeProof(r.proof, options.into === undefined ? {} : { into: options.into }) };
    } finally {
      // Nothing reads them now: the proof is encoded (or dropped), and the cache copied what it keeps.
      for (const a of lent) this.#rowPool.give(a);
    }
  }

  /**
   * prove() without the encoding (proveTrainStep takes only its selection and input).
   * `selectionOnly` (proveTrainStep's): the layers' blocks carry their ids and nothing
   * else (no rows planned, no multiproof): the step builds its own blocks over the union
   * of the sequences' reads; the forward proof's are never encoded. The selection, the
   * rows each layer reads and its output are the same.
   */
  async #proveForward(input: Float32Array | Uint32Array | readonly number[], options: ProveOptions, selectionOnly = false, lent?: Float32Array[]): Promise<Omit<ProvedForward, 'bytes'>> {
    options = checkOptions('Model.prove', options, ['firstLayer', 'layers', 'cache', 'threads', 'revealKeys', 'batcher', 'into']);
    const batcher = options.batcher;
    if (batcher !== undefined && !(batcher instanceof SearchBatcher)) throw new InvalidArgumentError('batcher must be a SearchBatcher');
    if (options.threads !== undefined) checkInteger('threads', options.threads, 1, 1024);
    const first = options.firstLayer ?? 0;
    const count = options.layers ?? this.layers.length - first;
    if (!Number.isInteger(first) || first < 0 || first >= this.layers.length) throw new InvalidArgumentError(`firstLayer must be in 0..${this.layers.length - 1}`);
    if (!Number.isInteger(count) || count < 1 || first + count > this.layers.length) throw new InvalidArgumentError(`layers must be in 1..${this.layers.length - first}`);
    for (let li = first; li < first + count; li++) {
      for (const j of this.inputs[li]!) {
        if (spanSource(first, j) === null) throw new InvalidArgumentError(`layer ${li} reads ${j === -1 ? "the model's input" : `layer ${j}`}, outside layers ${first}..${first + count - 1}: prove a span that starts at or before it`);
      }
    }
    const ghost = await this.ghost();
    const reveal = revealedKeyLayers(ghost.manifest, first, count, options.revealKeys);
    const checked = this.#checkInput(first, input, true);
    let spanX: Float32Array | null = null;
    let spanIds: Uint32Array | null = null;
    let pin: ProofInput;
    const B = checked.rows;
    if (checked.input instanceof Uint32Array) {
      spanIds = checked.input;
      if (spanIds.length === 0) throw new InvalidArgumentError('input is empty');
      pin = { kind: 'ids', ids: spanIds.slice() };
    } else {
      spanX = checked.input;
      pin = { kind: 'f32', rows: B, cols: this.#shapes[first]!.inWidth, data: spanX.slice() };
    }
    const evidence: LayerEvidence[] = [];
    // The verifier records revealed rows only once the whole proof holds, so the mirror
    // must not see this proof's rows while it plans the later layers' blocks.
    const revealed: ResolvedBlock[] = [];
    const cache = options.cache;
    const outs: Float32Array[] = [];
    let cols = 0;
    for (let li = first; li < first + count; li++) {
      const sources = this.inputs[li]!.map((j) => (spanSource(first, j) === 'span' ? null : outs[j - first]!));
      const inputs = sources.map((s) => s ?? spanX) as Float32Array[];
      const r = await this.#kinds[li]!.prove(this.layers[li]!, {
        ghost,
        index: li,
        rows: B,
        ids: sources[0] === null ? spanIds : null,
        x: inputs[0] ?? null,
        inputs: spanIds !== null && sources[0] === null ? [] : inputs,
        cache,
        threads: options.threads,
        revealKeys: reveal.has(li),
        search: batcher ? (t, q, k, o) => batcher.search(t, q, k, o) : async (t, q, k, o) => (await t.searchBatch(q, k, o)).ids,
        tensor: (i) => this.tensors[i]!,
        tensorIndex: (t) => this.#index(t),
        block: (i, rows) => {
          const t = this.tensors[i]!;
          // A tensor the verifier holds whole at its current root: one marker, the rows from the mirror (O(1)).
          const held = rows === 'all' && !selectionOnly ? this.#heldTable(t, cache) : undefined;
          if (held !== undefined) return held;
          const ids = rows === 'all' ? allIds(t.size) : rows;
          if (!selectionOnly) return this.#block(t, ids, rows === 'all', cache, false, lent);
          return {
            block: { tensor: i, dim: t.dim, all: rows === 'all', ids, kinds: new Uint8Array(0), payload: [], hashes: new Uint8Array(0) },
            resolved: { tensor: i, ids, rows: t.gather(ids), dim: t.dim, root: t.root() },
          };
        },
      });
      outs.push(r.y);
      evidence.push(r.evidence);
      revealed.push(...r.resolved);
      cols = this.#shapes[li]!.outWidth;
    }
    const x = outs[outs.length - 1];
    cache?.record(revealed);
    const proof: ForwardProof = { kind: 'forward', ghost: ghost.digest, firstLayer: first, input: pin, layers: evidence, output: { rows: B, cols, data: x! } };
    return { output: x!, proof };
  }

  /**
   * The held-table block of tensor t (a forward proof's marker, docs/proof-format.md
   * section 3) when the mirror holds t whole at its current root, with the mirror's copy of
   * its rows (the same rows: one root is one table); else undefined.
   */
  #heldTable(t: SparseTensor, cache: PatternCache | undefined): { block: PatternBlock; resolved: ResolvedBlock } | undefined {
    if (cache === undefined) return undefined;
    const ti = this.#index(t);
    const w = cache.getTable(ti);
    if (w === undefined || w.n !== t.size || w.dim !== t.dim) return undefined;
    const root = t.root();
    if (!bytesEqual(w.root, root)) return undefined;
    const block: PatternBlock = { tensor: ti, dim: t.dim, all: true, heldTable: true, ids: new Uint32Array(0), kinds: new Uint8Array(0), payload: [], hashes: new Uint8Array(0) };
    return { block, resolved: { tensor: ti, ids: w.ids, rows: w.rows, dim: t.dim, root: w.root, all: true } };
  }

  /**
   * A block revealing `ids` (sorted, unique) of tensor t. Its multiproof covers the
   * rows the peer does not hold verified against the current root (every row when
   * `everyPath`, as an update proof needs); an all-rows block needs none. With `lent`
   * the rows go into an array of the row pool (proveBytes), pushed onto `lent`.
   */
  #block(t: SparseTensor, ids: Uint32Array, all: boolean, cache: PatternCache | undefined, everyPath = false, lent?: Float32Array[]): { block: PatternBlock; resolved: ResolvedBlock } {
    const ti = this.#index(t);
    let rows: Float32Array;
    if (lent === undefined) rows = t.gather(ids);
    else {
      // Into a pooled array, recorded in `lent` so that proveBytes gives it back.
      rows = this.#rowPool.takeFloats(ids.length * t.dim);
      lent.push(rows);
      callNative(() => internalNative(t).gather(ids, rows));
    }
    const root = t.root();
    const block = planBlock(ti, t.dim, ids, rows, all, cache, root);
    if (!all) {
      const pos = everyPath ? Array.from(ids, (_, i) => i) : positionsToProve(ti, ids, block.kinds, root, cache);
      // The rows are gathered above: only the hashes are needed from the tree.
      if (pos.length > 0) block.hashes = callNative(() => internalNative(t).prove(Uint32Array.from(pos, (i) => ids[i]!)));
    }
    return { block, resolved: { tensor: ti, ids, rows, dim: t.dim, root, all } };
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
    if (this.#trainingOptions !== undefined) throw new InvalidArgumentError('this model has a training rule: it trains by proveTrainStep (step proofs), not proveStep');
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
   * One training step on `batch` with its step proof (docs/step-proofs.md): the forward
   * (its selection as prove() makes it), one block per tensor the step reads (written
   * rows with every Merkle path) and the optimizer state of the rows it writes; the step
   * itself is computed by the verifier's code (lib/verify/step.ts: canonical forward,
   * loss, backward, clipping, schedule, optimizer) and applied, so the model holds what a
   * verifier computes, bit for bit. Needs `new Model(layers, { training })`. `cache`
   * mirrors the verifier's (held rows travel as ids or deltas; both record the step's rows).
   *
   * An array of batches is one step on several sequences (a model with attention sees one
   * sequence per forward): one forward and backward per sequence into one set of
   * gradients, the loss the mean over every row of every sequence, one optimizer step.
   */
  async proveTrainStep(batch: StepBatch | readonly StepBatch[], options: { cache?: PatternCache; revealKeys?: ProveOptions['revealKeys'] } = {}): Promise<ProvedStep> {
    // Calls made while a step runs wait for it: each step starts from the model the last one left.
    const run = this.#stepQueue.then(() => this.#proveTrainStep(batch, options));
    this.#stepQueue = run.catch(() => undefined);
    return run;
  }

  async #proveTrainStep(batch: StepBatch | readonly StepBatch[], options: { cache?: PatternCache; revealKeys?: ProveOptions['revealKeys'] }): Promise<ProvedStep> {
    options = checkOptions('Model.proveTrainStep', options, ['cache', 'revealKeys']);
    const list: readonly StepBatch[] = Array.isArray(batch) ? batch : [batch as StepBatch];
    if (list.length === 0) throw new InvalidArgumentError('batch must be { input, targets } or a non-empty array of them (one per sequence)');
    list.forEach((b, i) => {
      const where = Array.isArray(batch) ? `batch[${i}]` : 'batch';
      if (b === null || typeof b !== 'object') throw new InvalidArgumentError(`${where} must be { input, targets }`);
      checkOptions(where, b, ['input', 'targets']);
    });
    if (this.#trainingOptions === undefined) noTrainingRule();
    const ghost = await this.ghost();
    const tr = this.#training!;
    // Each sequence's forward selection, and the rows the layers read over all of them.
    const sequences: StepSequence[] = [];
    const reads = new Map<number, { all: boolean; ids: Set<number> }>();
    for (const b of list) {
      const fwd = await this.#proveForward(b.input, options.revealKeys === undefined ? {} : { revealKeys: options.revealKeys }, true);
      const B = fwd.proof.output.rows, cols = fwd.proof.output.cols;
      sequences.push({ input: fwd.proof.input, targets: tr.targets(b.targets, B, cols), layers: fwd.proof.layers.map((l) => ({ op: l.op, stages: l.stages })) });
      for (const ev of fwd.proof.layers) {
        for (const blk of ev.blocks) {
          const r = reads.get(blk.tensor) ?? { all: false, ids: new Set<number>() };
          if (blk.all) r.all = true;
          else for (const id of blk.ids) r.ids.add(id);
          reads.set(blk.tensor, r);
        }
      }
    }
    const cache = options.cache;
    const blocks: PatternBlock[] = [];
    for (const ti of [...reads.keys()].sort((a, b) => a - b)) {
      const r = reads.get(ti)!;
      const t = this.tensors[ti]!;
      const ids = r.all ? allIds(t.size) : Uint32Array.from(r.ids).sort();
      blocks.push(this.#block(t, ids, r.all, cache, tr.trained.has(ti)).block);
    }
    // The optimizer state of the rows the step writes (the rows its backward touches), asked for by the step itself.
    const states: StepProof['states'] = [];
    const stateOf = (ti: number, ids: Uint32Array): StepProof['states'][number] => {
      const st = tr.trained.get(ti)!.state;
      const all = ids.length === st.n;
      const full = { tensor: ti, dim: st.dim, all, ids, leaves: st.leaves(ids), hashes: all ? new Uint8Array(0) : st.prove(ids) };
      // With a cache: state rows the verifier holds travel as held or deltas, zero rows as nothing (every leaf stays in the block for the step).
      const block = cache ? planStateBlock(full, cache) : full;
      states.push(block);
      return block;
    };
    const proof: StepProof = {
      kind: 'step',
      ghost: ghost.digest,
      step: tr.step,
      ...sequences[0]!,
      ...(sequences.length > 1 ? { more: sequences.slice(1) } : {}),
      blocks,
      states,
      newGhost: new Uint8Array(32),
    };
    const h = await loadHasher();
    // The verifier's step computation on the prover's own blocks (not re-checked against
    // its own trees); each written tensor is applied by the step once all its checks passed,
    // and the new roots are the trees' (the native tree after the scatter, the state tree
    // after set: each leaf hashed once). The verifier computes the same roots from the
    // proof (tests check every proof this way; the bench compares the proofs' bytes).
    // A memory layer's canonical forward takes its forward proof's selection (memoryProvedForward), then forgets it.
    let r: ReturnType<typeof computeStep>;
    try {
      r = computeStep(h, ghost, proof, cache, new VerifyBudget(PROVER_LIMITS), {
        stateOf,
        ...(stepNative.on ? { native: STEP_NATIVE } : {}),
        apply: (w) => {
          const t = this.tensors[w.tensor]!;
          t.scatter(w.ids, w.rows);
          const st = tr.trained.get(w.tensor)!.state;
          st.set(w.ids, w.state, w.leaves);
          return { root: t.root(), stateRoot: st.root() };
        },
      });
    } finally {
      for (const q of sequences) for (const l of q.layers) memoryProvedForward.delete(l.stages);
    }
    for (const e of r.manifest.training!.tensors) tr.trained.get(e.tensor)!.logDecay = e.logDecay;
    tr.step += 1;
    const next = await this.ghost();
    if (!bytesEqual(next.bytes, encodeGhost(r.manifest))) throw new Error('internal: the model after the step differs from the step\'s Ghost file');
    proof.newGhost = next.digest;
    recordStep(cache, r);
    return { proof, bytes: encodeProof(proof), ghost: next, step: proof.step, output: r.output, loss: r.loss, lr: r.lr, gradNorm: r.gradNorm };
  }

  /**
   * The optimizer state of a model trained by step proofs, as `step-state.bin` holds it
   * (null: no training rule). The prover service writes it with each durable step.
   */
  stepState(): Uint8Array | null {
    return this.#training ? this.#training.encodeState() : null;
  }

  /**
   * The state-log record of the step `step` took (the last one): the state rows it wrote,
   * as they are now. The prover service appends it to step-state.log instead of rewriting
   * step-state.bin whole (docs/step-proofs.md, "Saving and loading").
   */
  stepStateRecord(step: ProvedStep): Uint8Array {
    if (this.#training === null) noTrainingRule();
    return this.#training.encodeStateRecord(step.proof);
  }

  /**
   * Takes back the last step proveTrainStep took, from its proof (the old rows and state
   * rows it reveals) and `before`, the Ghost file before it: for a service whose step could
   * not be made durable. Throws if the model's roots are then not `before`'s.
   */
  undoTrainStep(step: ProvedStep, before: PinnedGhost): void {
    if (this.#training === null) noTrainingRule();
    this.#training.undo(step.proof, before.manifest, this.tensors);
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
    await ModelDirectory.save(dir, ghost, this.tensors, { optimizerState: options.optimizerState === true, ...(this.#training ? { stepState: this.#training.encodeState() } : {}) });
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
    const { ghost, tensors, stepState } = await ModelDirectory.open(dir, {
      ...(options.expectDigest === undefined ? {} : { expectDigest: options.expectDigest }),
      verify: options.verify ?? true,
      readOnly: options.readOnly === true,
    });
    const m = ghost.manifest;
    let model: Model;
    try {
      model = await Model.fromManifest(m, tensors, stepState);
    } catch (err) {
      for (const t of tensors) t.close();
      throw err;
    }
    const again = await model.ghost();
    if (!bytesEqual(again.digest, ghost.digest)) throw new FormatError('NON_CANONICAL', `${dir}: the loaded model does not reproduce its Ghost file`);
    return { model, ghost };
  }

  /**
   * Resumes the training run in `dir` (a directory TrainingRun.create started) where its
   * last durable step left it: the same as TrainingRun.open(dir) (docs/training.md,
   * "Training checkpoints and resume"). Its `model` and `trainer` continue the run.
   */
  static async open(dir: string): Promise<TrainingRun> {
    // Loaded on demand: the training run module imports this one.
    const { TrainingRun } = await import('./train/checkpoint.js');
    return TrainingRun.open(dir);
  }

  /**
   * The model a Ghost manifest describes, over `tensors` (the manifest's tensor list, in
   * order, holding its roots). HNSW graphs are rebuilt with the recorded parameters.
   */
  static async fromManifest(m: GhostManifest, tensors: readonly SparseTensor[], stepState: Uint8Array | null = null): Promise<Model> {
    const layers: ModelLayer[] = [];
    for (const l of m.layers) layers.push(await kindOfEntry(l).fromGhost(l, tensors));
    if (m.training === undefined) return new Model(layers, m.inputs === undefined ? {} : { inputs: m.inputs });
    // Trained by step proofs: the rule from the Ghost file, the optimizer state from the state file, checked against its roots.
    const { options, training } = await StepTraining.restore(m, tensors, stepState);
    const model = new Model(layers, { inputs: m.inputs!, training: options });
    model.#training = training;
    return model;
  }
}

/** The layers of a span [first, first + count) whose keys a proof reveals whole (ProveOptions.revealKeys). */
function revealedKeyLayers(g: GhostManifest, first: number, count: number, o: ProveOptions['revealKeys']): Set<number> {
  const out = new Set<number>();
  const exact = (li: number): boolean => {
    const l = g.layers[li]!;
    return l.op === 'hopfield' && l.index.kind === 'exact';
  };
  if (o === undefined || o === 'none') return out;
  if (o === 'all') {
    for (let li = first; li < first + count; li++) if (exact(li)) out.add(li);
    return out;
  }
  if (!Array.isArray(o)) throw new InvalidArgumentError(`revealKeys must be 'none', 'all' or a list of layer indexes, got ${String(o)}`);
  for (const li of o as readonly unknown[]) {
    if (typeof li !== 'number' || !Number.isInteger(li) || li < first || li >= first + count) throw new InvalidArgumentError(`revealKeys: ${String(li)} is not a layer of the proved span ${first}..${first + count - 1}`);
    if (!exact(li)) throw new InvalidArgumentError(`revealKeys: layer ${li} is not a HopfieldLookup with an exact index (only those select over keys a proof can reveal whole)`);
    out.add(li);
  }
  return out;
}

/**
 * Whether two manifests are equal field for field (plain objects, arrays, numbers by
 * Object.is, strings, booleans, byte arrays by their bytes): equal manifests encode to
 * the same Ghost file.
 */
function sameManifest(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (a instanceof Uint8Array || b instanceof Uint8Array) return a instanceof Uint8Array && b instanceof Uint8Array && bytesEqual(a, b);
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  for (const k of ka) {
    if (!Object.prototype.hasOwnProperty.call(b, k)) return false;
    if (!sameManifest((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])) return false;
  }
  return true;
}
