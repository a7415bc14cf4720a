/**
 * What a layer kind is to the verifier (docs/layer-kinds.md): its Ghost-file entry
 * (encode, decode, checks), the rows of which tensors its proofs reveal, what checking
 * it costs, and its canonical forward, which the verifier runs on the revealed rows
 * and the prover runs to make its claim. One module per kind in lib/verify/kinds/, one
 * line per kind in lib/verify/kinds/index.ts. Loads no addon.
 *
 * The model tier adds the other half of a kind (lib/model/layer-kind.ts): the layer
 * object, its fast forward and backward, and how the prover gathers the rows.
 *
 * A kind module imports at run time only this module, canonical.ts and other kinds:
 * proof-format.ts and ghost-file.ts import the registry, so a kind importing them back
 * would make a cycle that fails when a kind module is imported first
 * (test/module-graph.test.ts imports every module first, alone).
 */
import type { ByteReader, ByteWriter } from '../shared/bytes.js';
import { FormatError, ProofError, type ProofFailure } from '../shared/errors.js';
import type { GhostManifest, GhostTensor } from './ghost-file.js';
import type { LayerEvidence, ResolvedBlock, VerifyBudget } from './proof-format.js';

/** Work units per attention score (a query-key pair of one head) besides its dk multiply-adds: the call, the top-k insertion, the scratch (docs/proof-format.md, "Verifier limits"). */
export const PAIR_WORK = 128;

/** The sorted unique ids of some lists (one typed-array sort of them all, then one pass). */
export function sortedUniqueIds(lists: readonly Uint32Array[]): Uint32Array {
  let n = 0;
  for (const l of lists) n += l.length;
  const all = new Uint32Array(n);
  let at = 0;
  for (const l of lists) {
    all.set(l, at);
    at += l.length;
  }
  all.sort();
  let m = 0;
  for (let t = 0; t < n; t++) if (m === 0 || all[t]! !== all[m - 1]!) all[m++] = all[t]!;
  return all.slice(0, m);
}

/** Bounds of Ghost-file fields (decoding refuses values past them). */
export const GHOST_LIMITS = { tensors: 4096, layers: 4096, nameBytes: 64, dim: 2 ** 24, k: 2 ** 16, updateSteps: 100, subKeys: 65535, heads: 4096 } as const;

/** Every layer entry of a Ghost file has its kind's op name. */
export interface GhostLayerBase {
  op: string;
}

/** What a layer takes: ids into a table of n rows, or rows of `cols` f32 values. */
export type LayerInput = { kind: 'ids'; n: number } | { kind: 'f32'; cols: number };

/** Rows of one tensor revealed to a layer (ids sorted; an all-rows block holds every id). */
export interface Revealed extends ResolvedBlock {
  all: boolean;
}

/** What checkGhost gives a kind's check: the manifest, the layer's position and a checked tensor lookup. */
export interface GhostCheckContext {
  readonly manifest: GhostManifest;
  /** The layer's index. */
  readonly index: number;
  /** "layer i", for messages. */
  readonly at: string;
  /** The width of the layer's (first) input: the output of the layer it reads (-1 for the first layer). */
  readonly prevOut: number;
  /** The tensor `i`, or FormatError BAD_VALUE naming `what` when it does not exist. */
  tensor(i: number, what: string): GhostTensor;
}

/** What the verifier gives a kind to recompute one layer of a forward proof. */
export interface VerifyLayerContext {
  readonly manifest: GhostManifest;
  readonly evidence: LayerEvidence;
  /** The layer's index in the model. */
  readonly index: number;
  /** Rows in the batch (for attention: the sequence length). */
  readonly rows: number;
  /** The input: ids for a layer whose input() is 'ids', else rows x cols f32 (its first input). */
  readonly ids: Uint32Array | null;
  readonly x: Float32Array | null;
  /** Every input of a layer that takes several (arity > 1), in order; [x] otherwise. */
  readonly inputs: readonly Float32Array[];
  /**
   * Checks that the layer's blocks reveal exactly `need` (tensor -> sorted ids, or
   * 'all'), each row against the Ghost file's root, and returns them by tensor.
   */
  reveal(need: Map<number, Uint32Array | 'all'>): Map<number, Revealed>;
}

/** What a kind's canonical training forward gives: its output (bit for bit what verify gives) and what its backward needs. */
export interface TrainedForward {
  y: Float32Array;
  saved: unknown;
}

/**
 * What the step verifier (lib/verify/step.ts) gives a kind's canonical backward: the
 * layer's forward as it ran (inputs, revealed rows, output, evidence, trainForward's
 * saved state) and the f64 gradient accumulators of tensor rows.
 */
export interface BackwardContext {
  readonly manifest: GhostManifest;
  /** The layer's index in the model. */
  readonly index: number;
  /** Rows in the batch (attention: the sequence length). */
  readonly rows: number;
  /** The forward's input: ids for a layer whose input() is 'ids' (inputs is then []), else every f32 input in order. */
  readonly ids: Uint32Array | null;
  readonly inputs: readonly Float32Array[];
  /** The layer's evidence (its stages: the selection, re-derived or checked by the forward). */
  readonly evidence: LayerEvidence;
  /** The rows the forward revealed, by tensor (what ctx.reveal returned). */
  readonly revealed: ReadonlyMap<number, Revealed>;
  /** The forward's output (rows x outWidth f32). */
  readonly y: Float32Array;
  /** trainForward's saved state (undefined when the kind has no trainForward). */
  readonly saved: unknown;
  /**
   * The f64 gradient accumulator of row `id` of tensor `tensor` (dim values, zero when
   * first asked); the backward adds each contribution into it (`acc[j] = acc[j] + c`,
   * in the kind's documented order). Rows of one tensor from several layers share one
   * accumulator. Throws ProofError BLOCK_IDS for a row the layer did not reveal.
   */
  grad(tensor: number, id: number): Float64Array;
}

export interface LayerSpec<L extends GhostLayerBase = GhostLayerBase> {
  /** The op name in manifests, proofs and messages. */
  readonly op: L['op'];
  /** Its byte in Ghost files and proofs: stable, never reused. */
  readonly code: number;
  /** How many layer outputs it takes (default 1; a graph's add takes 2). All must have its input width. */
  readonly arity?: number;

  /** Writes the layer's fields (after the op byte). */
  encode(w: ByteWriter, l: L): void;
  /** Reads the fields after the op byte from untrusted bytes (every length bounded). */
  decode(r: ByteReader, index: number): L;
  /** Checks what the encoding cannot (limits, references, widths); returns the output width. */
  check(l: L, c: GhostCheckContext): number;
  /** One line for `ghost-tensor inspect`. */
  describe(l: L, m: GhostManifest): string;

  /** What the layer takes. */
  input(l: L, m: GhostManifest): LayerInput;
  /** Output values per row. */
  outWidth(l: L, m: GhostManifest): number;

  /**
   * Charges what checking this layer of a forward proof holds and does, from the
   * proof's headers and the Ghost file, before any of it is done (rows: the batch).
   */
  plan(l: L, m: GhostManifest, rows: number, budget: VerifyBudget, index: number): void;
  /**
   * Recomputes the layer from its evidence with the canonical arithmetic: checks the
   * evidence's stages, reveals exactly the rows the layer reads (ctx.reveal) and returns
   * rows x outWidth f32, which the verifier compares with the claim bit for bit.
   */
  verify(l: L, ctx: VerifyLayerContext): Float32Array;

  /**
   * Step proofs, optional: the canonical forward that also keeps what backward needs.
   * Its output must be verify's, bit for bit (it makes the same checks). Absent: the
   * step verifier runs verify and backward gets `saved` undefined.
   */
  trainForward?(l: L, ctx: VerifyLayerContext): TrainedForward;
  /**
   * Step proofs: the canonical backward (docs/step-proofs.md). From dy (rows x outWidth
   * f32, d loss / d output), adds d loss / d row into ctx.grad for every revealed row the
   * output depends on, in f64, and returns d loss / d input for each f32 input in order
   * (rows x its cols, computed in f64 and rounded to f32 once; [] for ids). Absent: a
   * model with this kind cannot make step proofs (ProofError LAYER_MISMATCH).
   */
  backward?(l: L, ctx: BackwardContext, dy: Float32Array): Float32Array[];
}

export function fail(reason: ProofFailure, message: string): never {
  throw new ProofError(reason, message);
}

/** A Ghost file's value that breaks a rule: FormatError BAD_VALUE. */
export function ghostBad(message: string): never {
  throw new FormatError('BAD_VALUE', `Ghost file: ${message}`);
}

/** An integer field within lo..hi, or FormatError LIMIT. */
export function ghostLimit(field: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new FormatError('LIMIT', `Ghost file: ${field} = ${v} is outside ${lo}..${hi}`);
  return v;
}

/** The position of `id` in ascending `ids` (binary search), or -1. */
export function sortedIndexOf(ids: Uint32Array, id: number): number {
  let lo = 0, hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ids[mid]! < id) lo = mid + 1;
    else hi = mid;
  }
  return lo < ids.length && ids[lo] === id ? lo : -1;
}

/** Offset of row `id` in a revealed block's rows, or ProofError BLOCK_IDS when it was not revealed. */
export function rowOf(r: Revealed, id: number): number {
  const at = r.all ? (id < r.ids.length ? id : -1) : sortedIndexOf(r.ids, id);
  if (at < 0) fail('BLOCK_IDS', `pattern ${id} of tensor ${r.tensor} is read but not revealed`);
  return at * r.dim;
}
