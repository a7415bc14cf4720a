/**
 * The Ghost proof format v1 (docs/proof-format.md): forward proofs (one layer, a
 * span of layers, or a whole model) and update proofs (one optimizer step of one
 * tensor), their binary encoding and decoding, the pattern blocks they carry, the
 * XOR delta codec, and the PatternCache that lets patterns a verifier already holds
 * travel as ids or deltas. Decoding checks every length against the bytes that
 * remain and the limits below before it allocates. Loads no addon.
 */
import { ByteReader, ByteWriter, bytesEqual, checkFiniteF32, readInputRecord, writeExact, writeInputRecord, type InputRecord } from '../shared/bytes.js';
import type { CanonicalOptimizer, CanonicalRowState } from './canonical.js';
import { FormatError, InvalidArgumentError, ProofError } from '../shared/errors.js';
import type { GhostManifest } from './ghost-file.js';
import { specByCode, specByOp, type LayerOp } from './kinds/index.js';
import { readOptimizer as readOptimizerOf, stateDim, stateRowBytes, writeOptimizer, type StepTargets } from './training.js';

/** The proof format version of a proof without held-table blocks (every proof before version 2). */
export const PROOF_FORMAT_VERSION = 1;
/**
 * The version of a forward proof that carries a held-table block (a tensor the verifier
 * holds whole at its current root, sent as a marker: docs/proof-format.md section 3).
 * A proof is written as version 2 exactly when it has one, so every other proof keeps
 * its version 1 bytes; a version 2 proof without one is refused (NON_CANONICAL).
 */
export const PROOF_HELD_TABLES_VERSION = 2;
/** 0x89 'GTPRF' CR LF. */
export const PROOF_MAGIC = Uint8Array.from([0x89, 0x47, 0x54, 0x50, 0x52, 0x46, 0x0d, 0x0a]);
export const PROOF_LIMITS = {
  /** Largest proof accepted by decodeProof. */
  bytes: 2 ** 30,
  layers: 4096,
  blocksPerLayer: 16,
  stages: 100,
  /** Ids in one block (an "all rows" block of a product-key table has at most 65535). */
  blockIds: 2 ** 24,
  dim: 2 ** 24,
} as const;

/**
 * What a verifier is willing to spend on one proof (docs/proof-format.md, "Verifier
 * limits"). Decoding and verification charge every allocation that grows with a count
 * in the proof (rows of a block, held rows included; activations; attention scores) and
 * the arithmetic they will do, estimated from the headers, against these limits BEFORE
 * the allocation or the work, and refuse with ProofError BUDGET past them. Callers pass
 * tighter (or, knowingly, looser) values; the pinned Ghost file bounds the rest (a
 * block's rows at its tensor's N, its dim at the tensor's dim).
 */
export interface VerifierLimits {
  /** Largest proof, bytes. */
  maxProofBytes: number;
  /** Input rows (or ids) of a forward proof: the batch B. */
  maxBatch: number;
  /** Rows of one sequence an attention layer attends over (its n; the work is O(n^2)). */
  maxSequence: number;
  /** f32 values (4 bytes each) the verifier may hold for one proof: revealed rows (held ones copied from the cache included), activations, scores; plus a per-row and per-object overhead. */
  maxCells: number;
  /** Estimated work units (about 1 ns of the TypeScript verifier each on the reference machine; see HASH_WORK). */
  maxWork: number;
}

export const DEFAULT_VERIFIER_LIMITS: Readonly<VerifierLimits> = Object.freeze({
  maxProofBytes: 2 ** 28,
  maxBatch: 65536,
  maxSequence: 4096,
  maxCells: 2 ** 25,
  maxWork: 2 ** 32,
});

/** Cells charged per decoded row (its id, kind, payload slot, position lists): 32 bytes. */
export const ROW_CELLS = 8;
/** Cells charged per decoded object (a block, a stage list, a layer). */
export const OBJECT_CELLS = 32;
/**
 * Work units are calibrated to about a nanosecond of the TypeScript verifier on the
 * reference machine (docs/proof-format.md, "Verifier limits"): an f64 multiply-add in
 * cdot is 1; a hashed f32 is 8 (BLAKE3 in WebAssembly, ~1.8 ns a byte); one hash call
 * (a leaf or a Merkle node) is 2048.
 */
export const HASH_WORK = 8;
export const HASH_CALL_WORK = 2048;
export { PAIR_WORK } from './layer-spec.js';

/** An upper bound of the hash calls checking `rows` rows of a tensor of N rows take (leaves and multiproof nodes). */
export function merkleCalls(rows: number, n: number): number {
  if (rows <= 0) return 0;
  return Math.min(2 * n, rows * (1 + Math.ceil(Math.log2(n / rows + 1))));
}

/** The limits with `partial` over the defaults; each a positive safe integer. */
export function verifierLimits(partial: Partial<VerifierLimits> = {}): VerifierLimits {
  if (partial === null || typeof partial !== 'object') throw new InvalidArgumentError('limits must be an object');
  const out = { ...DEFAULT_VERIFIER_LIMITS };
  for (const k of Object.keys(DEFAULT_VERIFIER_LIMITS) as (keyof VerifierLimits)[]) {
    const v = partial[k];
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`limits.${k} must be a positive safe integer`);
    out[k] = v;
  }
  if (out.maxProofBytes > PROOF_LIMITS.bytes) out.maxProofBytes = PROOF_LIMITS.bytes;
  return out;
}

/**
 * The memory (cells) and work one proof has been charged so far; throws ProofError
 * BUDGET when a charge would pass the limits. One budget follows a proof from its
 * bytes through decoding to the end of verification.
 */
export class VerifyBudget {
  readonly limits: VerifierLimits;
  cells = 0;
  work = 0;
  constructor(limits: Partial<VerifierLimits> | VerifierLimits = {}) {
    this.limits = verifierLimits(limits);
  }
  /** Charges `n` cells for `what` (before allocating them). */
  cellsFor(n: number, what: string): void {
    this.cells += n;
    if (!(this.cells <= this.limits.maxCells)) {
      throw new ProofError('BUDGET', `${what} needs ${n} more cells (${this.cells} in all); the verifier's limit is maxCells = ${this.limits.maxCells}`);
    }
  }
  /** Charges `n` work units for `what` (before doing it). */
  workFor(n: number, what: string): void {
    this.work += n;
    if (!(this.work <= this.limits.maxWork)) {
      throw new ProofError('BUDGET', `${what} is estimated at ${n} work units (${this.work} in all); the verifier's limit is maxWork = ${this.limits.maxWork}`);
    }
  }
  /** Refuses a count over a limit. */
  atMost(v: number, max: number, what: string, limit: keyof VerifierLimits): void {
    if (v > max) throw new ProofError('BUDGET', `${what} = ${v} is over the verifier's limit ${limit} = ${max}`);
  }
}

/** What decodeProof checks beyond the format (the verifier passes all of them). */
export interface DecodeOptions {
  /** Limits to charge against (default DEFAULT_VERIFIER_LIMITS); ignored when `budget` is given. */
  limits?: Partial<VerifierLimits>;
  /** A budget to charge (verification goes on charging it). */
  budget?: VerifyBudget;
  /**
   * The pinned Ghost file: a proof for another digest is refused as soon as the digest
   * is read (GHOST_MISMATCH), layers it does not have at the layer count
   * (LAYER_MISMATCH), and each block at its header, before its rows are allocated: its
   * tensor must exist (LAYER_MISMATCH), its dim be the tensor's (SHAPE), its rows at
   * most N, exactly N for all rows, ids < N (BLOCK_IDS, ID_OUT_OF_RANGE).
   */
  ghost?: { readonly manifest: GhostManifest; readonly digest: Uint8Array };
  /** The kind expected (WRONG_KIND as soon as the kind byte is read). */
  kind?: GhostProof['kind'];
}

/**
 * How one revealed pattern travels: Full (its f32 bytes), Held (only its id: the
 * verifier holds it in its PatternCache, unchanged), Delta (an XOR delta against the
 * copy the verifier holds).
 */
export const RowKind = { Full: 0, Held: 1, Delta: 2 } as const;

/** The patterns of one tensor a proof reveals, with their compact multiproof. */
export interface PatternBlock {
  /** Index of the tensor in the Ghost file. */
  tensor: number;
  dim: number;
  /** true: the block reveals every row, ids 0..count-1 (a product-key table); no hashes needed. */
  all: boolean;
  /**
   * A held table (forward proofs, format version 2): the verifier holds every row of the
   * tensor at its current root (PatternCache.getTable), so the block is only this marker:
   * `all` is true and ids, kinds, payload and hashes are empty. Absent or false otherwise.
   */
  heldTable?: boolean;
  /** Sorted, unique ids. */
  ids: Uint32Array;
  /** RowKind per id. */
  kinds: Uint8Array;
  /** Per id: the row (Full), the encoded delta (Delta) or null (Held). */
  payload: (Float32Array | Uint8Array | null)[];
  /**
   * The compact multiproof (32-byte hashes, docs/hash-scheme.md) of the positions
   * positionsToProve() names: rows the verifier holds, verified against the same
   * root, need no path. Update proofs always prove every row (the verifier needs the
   * siblings to compute the new root).
   */
  hashes: Uint8Array;
}

export type ProofInput = InputRecord;

export interface LayerEvidence {
  op: LayerOp;
  /** Hopfield: per retrieval stage, the B x k selected ids (each input's in rank order). Others: none. */
  stages: Uint32Array[];
  blocks: PatternBlock[];
}

export interface ForwardProof {
  kind: 'forward';
  /** BLAKE3 digest of the Ghost file the proof is for. */
  ghost: Uint8Array;
  /** Index of the first proved layer; the proof covers layers.length consecutive layers. */
  firstLayer: number;
  input: ProofInput;
  layers: LayerEvidence[];
  /** The claimed output of the last proved layer, computed by the canonical arithmetic. */
  output: { rows: number; cols: number; data: Float32Array };
}

export interface UpdateProof {
  kind: 'update';
  /** Digest of the Ghost file before the step. */
  ghost: Uint8Array;
  tensor: number;
  optimizer: CanonicalOptimizer;
  /** The optimizer's global step count and log-decay sum before the step. */
  globalStep: number;
  logDecay: number;
  /** The touched rows before the step (sorted, unique ids) and their multiproof against the old root. */
  block: PatternBlock;
  /** Coalesced gradients, ids.length x dim. */
  grads: Float32Array;
  /** Optimizer state of the touched rows before the step (m, v empty for SGD). */
  state: CanonicalRowState;
  /** The tensor's root after the step. */
  newRoot: Uint8Array;
}

/**
 * The optimizer state of the rows of one trained tensor a step proof writes (the same
 * ids as its pattern block), as leaf bytes (lib/verify/training.ts stateLeaves), with a
 * compact multiproof of every row against the tensor's state root (none for all rows).
 */
export interface StateBlock {
  tensor: number;
  /** The tensor's dim d (a state row is 8 d + 12 bytes). */
  dim: number;
  all: boolean;
  ids: Uint32Array;
  /**
   * The rows' leaf bytes, concatenated. In a decoded block with `kinds`, only Full and
   * Zero rows are filled in; resolveStateLeaves gives every row (held and delta rows from
   * the verifier's cache).
   */
  leaves: Uint8Array;
  /**
   * How each row travels (StateKind per id), when the block was planned against a
   * PatternCache (planStateBlock; encoded with flag 2). Absent: every row in full, the
   * encoding of proofs made without a cache (and before state rows were cached).
   */
  kinds?: Uint8Array;
  /** Per id: the encoded XOR delta of a Delta row (over the leaf's 2 d + 3 words), else null. */
  deltas?: (Uint8Array | null)[];
  hashes: Uint8Array;
}

/** A layer's part of a step proof: its selection (stages), as in a forward proof; its rows travel in the proof's blocks. */
export interface StepLayer {
  op: LayerOp;
  stages: Uint32Array[];
}

/** One sequence of a step's batch: its input, its targets and every layer's selection on it. */
export interface StepSequence {
  input: ProofInput;
  targets: StepTargets;
  /** Every layer of the model, in order. */
  layers: StepLayer[];
}

/**
 * A step proof (docs/step-proofs.md): one training step of the whole model on a batch,
 * recomputed by the verifier from the batch, the revealed rows and their optimizer
 * state; it gives the Ghost file after the step. The batch is the first sequence
 * (input, targets, layers) and then `more`: a model whose layers see one sequence per
 * call (attention) takes a batch of several sequences as one forward per sequence; the
 * loss is the mean over every row of every sequence.
 */
export interface StepProof extends StepSequence {
  kind: 'step';
  /** Digest of the Ghost file before the step. */
  ghost: Uint8Array;
  /** The step's number (the Ghost file's training step). */
  step: number;
  /** The batch's further sequences, after the first (absent or empty: one sequence; encoded as kind 4 when not empty). */
  more?: StepSequence[];
  /** One block per tensor the step reads (ascending tensor index): the union of the rows every layer reads. */
  blocks: PatternBlock[];
  /** One per trained tensor with a block (ascending), over the same ids. */
  states: StateBlock[];
  /** Digest of the Ghost file after the step. */
  newGhost: Uint8Array;
}

export type GhostProof = ForwardProof | UpdateProof | StepProof;

/** "a forward proof", "an update proof", "a step proof". */
export function proofName(k: GhostProof['kind']): string {
  return k === 'update' ? 'an update proof' : k === 'step' ? 'a step proof' : 'a forward proof';
}
/** Codes of the kinds; a step proof of several sequences is kind 4. */
const KIND_NAMES = ['', 'forward', 'update', 'step', 'step'] as const;

export { sortedUniqueIds } from './layer-spec.js';

export { hopfieldReads } from './kinds/hopfield.js';
export { attentionReads } from './kinds/attention.js';

// ---------------------------------------------------------------------------
// XOR deltas: per f32, a 2-bit tag (0: unchanged, 1: XOR fits 16 bits, 2: 24 bits,
// 3: 32 bits), four tags per byte, then the XOR's low bytes, little-endian.

const TAG_BYTES = [0, 2, 3, 4] as const;

function u32view(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

/** Encodes `next` as an XOR delta against `held` (same length). */
export function encodeDelta(held: Float32Array, next: Float32Array): Uint8Array {
  return encodeWordDelta(u32view(held), u32view(next));
}

/** The XOR delta of 32-bit words (f32 rows, or a state row's 2 d + 3 words). */
function encodeWordDelta(h: Uint32Array, n: Uint32Array): Uint8Array {
  const d = n.length;
  const tags = new Uint8Array(Math.ceil(d / 4));
  const body: number[] = [];
  for (let j = 0; j < d; j++) {
    const x = (h[j]! ^ n[j]!) >>> 0;
    const tag = x === 0 ? 0 : x < 1 << 16 ? 1 : x < 1 << 24 ? 2 : 3;
    tags[j >> 2]! |= tag << (2 * (j & 3));
    for (let b = 0; b < TAG_BYTES[tag]!; b++) body.push((x >>> (8 * b)) & 0xff);
  }
  const out = new Uint8Array(tags.length + body.length);
  out.set(tags);
  out.set(body, tags.length);
  return out;
}

/** The encoded length of a delta of `dim` values starting at r's position; reads and checks the tags. */
function readDelta(r: ByteReader, dim: number): Uint8Array {
  const tagLen = Math.ceil(dim / 4);
  r.need(tagLen, 'delta tags');
  const tags = r.bytes(tagLen, 'delta tags');
  let body = 0;
  for (let j = 0; j < dim; j++) body += TAG_BYTES[(tags[j >> 2]! >> (2 * (j & 3))) & 3]!;
  const pad = dim % 4 === 0 ? 0 : tags[tagLen - 1]! >> (2 * (dim % 4));
  if (pad !== 0) throw new FormatError('NON_CANONICAL', 'delta: padding tag bits are not zero');
  const rest = r.bytes(body, 'delta body');
  const out = new Uint8Array(tagLen + body);
  out.set(tags);
  out.set(rest, tagLen);
  return out;
}

/** Applies an encoded delta to `held`; the result must be finite. */
export function applyDelta(held: Float32Array, delta: Uint8Array): Float32Array {
  const out = new Float32Array(held.length);
  applyWordDelta(u32view(held), delta, u32view(out));
  checkFiniteF32(out, 'a delta-decoded pattern');
  return out;
}

/** Applies an encoded delta of 32-bit words to `h`, into `o` (same length). */
function applyWordDelta(h: Uint32Array, delta: Uint8Array, o: Uint32Array): void {
  const d = h.length;
  const tagLen = Math.ceil(d / 4);
  let at = tagLen;
  for (let j = 0; j < d; j++) {
    const tag = (delta[j >> 2]! >> (2 * (j & 3))) & 3;
    let x = 0;
    for (let b = 0; b < TAG_BYTES[tag]!; b++) x |= delta[at++]! << (8 * b);
    o[j] = (h[j]! ^ x) >>> 0;
  }
  if (at !== delta.length) throw new FormatError('BAD_VALUE', 'delta length does not match its tags');
}

/** 32-bit words of leaf bytes (a view when aligned, else a copy). */
function words(b: Uint8Array): Uint32Array {
  return b.byteOffset % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength >> 2) : new Uint32Array(b.slice().buffer);
}

// ---------------------------------------------------------------------------
// The cache of patterns a verifier holds. A prover keeps a mirror of its peer's
// cache and applies the same updates in the same order, so both agree on what is
// held; after a rejected proof both sides clear().

export interface HeldRow {
  row: Float32Array;
  /** The row's bits (a view of `row`). */
  bits: Uint32Array;
  /** The tensor root this row was last verified against. */
  root: Uint8Array;
}

/** A held row and when it was last used (the stamp of its newest entry in the queue). */
interface HeldEntry extends HeldRow {
  stamp: number;
}

/**
 * A tensor the peer holds whole: every row, verified against `root` (the tensor's root
 * when a proof revealed all its rows). A later forward proof may send it as a held-table
 * marker while the tensor's root is still `root` (docs/proof-format.md section 6).
 */
export interface HeldTable {
  readonly tensor: number;
  readonly dim: number;
  /** Rows (the tensor's N). */
  readonly n: number;
  /** Every row, n x dim: the cache's own copy (read it, never write it). */
  readonly rows: Float32Array;
  readonly root: Uint8Array;
  /** 0, 1, ..., n - 1 (read only). */
  readonly ids: Uint32Array;
}

interface HeldTableEntry extends HeldTable {
  /** The rows' bits (a view of `rows`). */
  readonly bits: Uint32Array;
  stamp: number;
}

/** An optimizer-state row a verifier holds (step proofs): its leaf bytes (8 d + 12) and the state root it was computed under. */
export interface HeldState {
  leaf: Uint8Array;
  /** The leaf's 2 d + 3 words (a view of `leaf`). */
  words: Uint32Array;
  root: Uint8Array;
}

interface HeldStateEntry extends HeldState {
  stamp: number;
}

/** The state rows of one tensor a step wrote (their leaves after it, concatenated) and the state root after it. */
export interface ResolvedStates {
  tensor: number;
  dim: number;
  ids: Uint32Array;
  leaves: Uint8Array;
  root: Uint8Array;
}

/** What a recency-queue pair names: a value row, an optimizer-state row or a whole table. */
const Q_ROW = 0, Q_STATE = 1, Q_TABLE = 2;

export class PatternCache {
  readonly capacity: number;
  readonly #rows = new Map<number, HeldEntry>();
  /**
   * Optimizer-state rows (step proofs), a key space of their own: (tensor, id) keys as
   * #rows's. They share the capacity and the recency queue with the value rows.
   */
  readonly #states = new Map<number, HeldStateEntry>();
  /**
   * Tensors held whole, by tensor index (one entry each, counted as its n rows against the
   * capacity, one place in the recency order: used, kept and evicted as a unit).
   */
  readonly #tables = new Map<number, HeldTableEntry>();
  /** The rows of every held table. */
  #tableRows = 0;
  // Recency without moving map entries (a Map delete + set costs ~0.5 us): every use
  // appends (key, stamp, what) to this queue and stamps the entry; the least recently
  // used entry is the first queued pair whose stamp is still its entry's. Stale pairs are
  // skipped and, once they are most of the queue, compacted away.
  #qKeys: number[] = [];
  #qStamps: number[] = [];
  #qWhat: number[] = [];
  #head = 0;
  #stamp = 0;

  /** Holds at most `capacity` rows (default 65536); the least recently used leave first. */
  constructor(capacity = 65536) {
    if (!Number.isInteger(capacity) || capacity < 0 || capacity > 2 ** 26) throw new InvalidArgumentError('capacity must be an integer in 0..2^26');
    this.capacity = capacity;
  }
  /**
   * The map key of (tensor, id): a small integer (V8 keeps it unboxed, so lookups do
   * not allocate) when tensor < 2^10 and id < 2^20, else a negative number; distinct
   * pairs get distinct keys either way.
   */
  static #key(tensor: number, id: number): number {
    return tensor < 1024 && id < 1048576 ? tensor * 1048576 + id : -(tensor * 2 ** 32 + id) - 1;
  }
  /**
   * The row (tensor, id) the peer holds: its own entry, or its row in the tensor's held
   * table, whichever was used last (the copy verified most recently).
   */
  get(tensor: number, id: number): HeldRow | undefined {
    const r = this.#rows.get(PatternCache.#key(tensor, id));
    const w = this.#tables.get(tensor);
    if (w === undefined || id >= w.n || (r !== undefined && r.stamp > w.stamp)) return r;
    return { row: w.rows.subarray(id * w.dim, (id + 1) * w.dim), bits: w.bits.subarray(id * w.dim, (id + 1) * w.dim), root: w.root };
  }
  /** The tensor the peer holds whole (every row, at the table's root), if any. */
  getTable(tensor: number): HeldTable | undefined {
    return this.#tables.get(tensor);
  }
  /** The optimizer-state row (tensor, id) this cache holds (step proofs), if any. */
  getState(tensor: number, id: number): HeldState | undefined {
    return this.#states.get(PatternCache.#key(tensor, id));
  }
  /** Appends (key, stamp, what) to the recency queue. */
  #queue(key: number, stamp: number, what: number): void {
    this.#qKeys.push(key);
    this.#qStamps.push(stamp);
    this.#qWhat.push(what);
    if (this.#qKeys.length - this.#head > 4 * (this.#rows.size + this.#states.size + this.#tables.size) + 4096) this.#compact();
  }
  /** Marks `e` (now the entry of `key`; `stored`: it already is) most recently used. */
  #use(key: number, e: HeldEntry, stored = false): void {
    e.stamp = ++this.#stamp;
    if (!stored) this.#rows.set(key, e);
    this.#queue(key, e.stamp, Q_ROW);
  }
  /** Marks the state entry `e` (now the entry of `key`) most recently used. */
  #useState(key: number, e: HeldStateEntry): void {
    e.stamp = ++this.#stamp;
    this.#states.set(key, e);
    this.#queue(key, e.stamp, Q_STATE);
  }
  /** Marks the table `e` (now the entry of its tensor) most recently used. */
  #useTable(e: HeldTableEntry): void {
    e.stamp = ++this.#stamp;
    this.#queue(e.tensor, e.stamp, Q_TABLE);
  }
  /** Whether the queue pair (key, st, what) is still its entry's newest. */
  #live(key: number, st: number, what: number): boolean {
    return (what === Q_ROW ? this.#rows : what === Q_STATE ? this.#states : this.#tables).get(key)?.stamp === st;
  }
  /** Drops stale queue pairs (the order of the live ones is kept). */
  #compact(): void {
    const keys: number[] = [], stamps: number[] = [], what: number[] = [];
    for (let i = this.#head; i < this.#qKeys.length; i++) {
      const key = this.#qKeys[i]!, st = this.#qStamps[i]!, w = this.#qWhat[i]!;
      if (this.#live(key, st, w)) {
        keys.push(key);
        stamps.push(st);
        what.push(w);
      }
    }
    this.#qKeys = keys;
    this.#qStamps = stamps;
    this.#qWhat = what;
    this.#head = 0;
  }
  /** Records that the peer holds `row` for (tensor, id), verified against `root`, and marks it most recently used. */
  put(tensor: number, id: number, row: Float32Array, root: Uint8Array): void {
    this.#use(PatternCache.#key(tensor, id), { row, bits: u32view(row), root, stamp: 0 });
  }
  /** Drops the least recently used entries (value rows, state rows and tables alike) beyond the capacity. */
  trim(): void {
    while (this.size > this.capacity && this.#head < this.#qKeys.length) {
      const key = this.#qKeys[this.#head]!, st = this.#qStamps[this.#head]!, w = this.#qWhat[this.#head]!;
      this.#head++;
      if (!this.#live(key, st, w)) continue;
      if (w === Q_TABLE) {
        this.#tableRows -= this.#tables.get(key)!.n;
        this.#tables.delete(key);
      } else (w === Q_ROW ? this.#rows : this.#states).delete(key);
    }
    if (this.#head > 1024 && this.#head * 2 > this.#qKeys.length) this.#compact();
  }
  /**
   * Records every row of resolved blocks (in block and id order), then trims. Every row
   * recorded must be the one verified against its block's root: a root binds its rows, so
   * a row already held at the same root is the same row and is not compared again. A block
   * of every row (`all`) is recorded as a held table: kept (and marked used) when the cache
   * holds the tensor whole at the same root, else replaced by a copy of the block's rows.
   * Another block's rows are recorded one by one; a row held at the same root, or with the
   * same bits at another, keeps its copy (a row of a held table at the table's root marks
   * the table used).
   */
  record(blocks: readonly ResolvedBlock[]): void {
    for (const b of blocks) {
      // Every row (sorted unique ids ending at n - 1: 0..n-1): a held table.
      if (b.all === true && b.ids.length > 0 && b.ids[b.ids.length - 1] === b.ids.length - 1) {
        this.#recordTable(b);
        continue;
      }
      const bits = u32view(b.rows);
      const w = this.#tables.get(b.tensor);
      // An earlier root array with the bytes of b.root (rows recorded by one proof share one).
      let sameRoot: Uint8Array = b.root;
      for (let t = 0; t < b.ids.length; t++) {
        const id = b.ids[t]!;
        const key = PatternCache.#key(b.tensor, id);
        const old = this.#rows.get(key);
        if (w !== undefined && id < w.n && (old === undefined || old.stamp < w.stamp)) {
          // The copy held is the table's row: at the table's root, the same row (a root binds its rows).
          if (w.dim === b.dim) {
            if (w.root !== sameRoot && bytesEqual(w.root, b.root)) sameRoot = w.root;
            if (w.root === sameRoot) {
              this.#useTable(w);
              continue;
            }
          }
          this.#recordRow(key, b, t);
          continue;
        }
        if (old !== undefined && old.bits.length === b.dim) {
          // At the same root, the same row: keep the entry (its bits are compared only across roots).
          if (old.root !== sameRoot && bytesEqual(old.root, b.root)) sameRoot = old.root;
          if (old.root === sameRoot) {
            this.#use(key, old, true);
            continue;
          }
          // The same bits at another root: keep the copy.
          if (sameBits(old, bits, t * b.dim, b.dim)) {
            this.#use(key, { row: old.row, bits: old.bits, root: b.root, stamp: 0 });
            continue;
          }
        }
        this.#recordRow(key, b, t);
      }
    }
    this.trim();
  }
  /** Row t of block b as a new entry (its own copy). */
  #recordRow(key: number, b: ResolvedBlock, t: number): void {
    const row = b.rows.slice(t * b.dim, (t + 1) * b.dim);
    this.#use(key, { row, bits: u32view(row), root: b.root, stamp: 0 });
  }
  /** Every row of tensor b.tensor, verified against b.root: the held table (see record). */
  #recordTable(b: ResolvedBlock): void {
    const n = b.ids.length;
    const w = this.#tables.get(b.tensor);
    // One root is one table (the root binds every row and N): the same root, the same rows.
    if (w !== undefined && w.n === n && w.dim === b.dim && (w.root === b.root || bytesEqual(w.root, b.root))) {
      this.#useTable(w);
      return;
    }
    const rows = b.rows.slice(0, n * b.dim);
    const ids = new Uint32Array(n);
    for (let i = 0; i < n; i++) ids[i] = i;
    if (w !== undefined) this.#tableRows -= w.n;
    const e: HeldTableEntry = { tensor: b.tensor, dim: b.dim, n, rows, bits: u32view(rows), root: b.root, ids, stamp: 0 };
    this.#tables.set(b.tensor, e);
    this.#tableRows += n;
    this.#useTable(e);
  }
  /**
   * Records the optimizer-state rows a verified step wrote (in block and id order; each
   * leaf copied), then trims. Both sides of a step proof call this after the step
   * (recordStep), so the prover's mirror holds what the verifier holds.
   */
  recordStates(blocks: readonly ResolvedStates[]): void {
    for (const b of blocks) {
      const rb = stateRowBytes(b.dim);
      for (let t = 0; t < b.ids.length; t++) {
        const leaf = b.leaves.slice(t * rb, (t + 1) * rb);
        this.#useState(PatternCache.#key(b.tensor, b.ids[t]!), { leaf, words: new Uint32Array(leaf.buffer), root: b.root, stamp: 0 });
      }
    }
    this.trim();
  }
  clear(): void {
    this.#rows.clear();
    this.#states.clear();
    this.#tables.clear();
    this.#tableRows = 0;
    this.#qKeys = [];
    this.#qStamps = [];
    this.#qWhat = [];
    this.#head = 0;
  }
  /** An independent copy (same rows, tables and state rows, same recency order). */
  clone(): PatternCache {
    const c = new PatternCache(this.capacity);
    for (let i = this.#head; i < this.#qKeys.length; i++) {
      const key = this.#qKeys[i]!, st = this.#qStamps[i]!, w = this.#qWhat[i]!;
      if (!this.#live(key, st, w)) continue;
      if (w === Q_ROW) {
        const e = this.#rows.get(key)!, row = e.row.slice();
        c.#use(key, { row, bits: u32view(row), root: e.root, stamp: 0 });
      } else if (w === Q_STATE) {
        const e = this.#states.get(key)!, leaf = e.leaf.slice();
        c.#useState(key, { leaf, words: new Uint32Array(leaf.buffer), root: e.root, stamp: 0 });
      } else {
        const e = this.#tables.get(key)!, rows = e.rows.slice();
        const t: HeldTableEntry = { tensor: e.tensor, dim: e.dim, n: e.n, rows, bits: u32view(rows), root: e.root, ids: e.ids.slice(), stamp: 0 };
        c.#tables.set(key, t);
        c.#tableRows += t.n;
        c.#useTable(t);
      }
    }
    return c;
  }
  /** Rows held: value rows, the rows of held tables and optimizer-state rows (the capacity counts all three). */
  get size(): number {
    return this.#rows.size + this.#states.size + this.#tableRows;
  }
  /** Optimizer-state rows held (step proofs). */
  get stateSize(): number {
    return this.#states.size;
  }
  /** Tensors held whole. */
  get tableCount(): number {
    return this.#tables.size;
  }
}

/** The rows of one tensor a proof revealed, and the root they were verified against. */
export interface ResolvedBlock {
  tensor: number;
  dim: number;
  ids: Uint32Array;
  rows: Float32Array;
  root: Uint8Array;
  /** Every row of the tensor (ids 0..N-1): PatternCache.record keeps it as a held table. */
  all?: boolean;
}

/** Whether a[ai, ai + n) and b[bi, bi + n) hold the same words. */
function sameWords(a: Uint32Array, ai: number, b: Uint32Array, bi: number, n: number): boolean {
  for (let j = 0; j < n; j++) if (a[ai + j] !== b[bi + j]) return false;
  return true;
}

/** Whether a held row has the bits of bits[at, at + dim) (bit patterns: -0 and 0 differ). */
function sameBits(held: HeldRow, bits: Uint32Array, at: number, dim: number): boolean {
  const h = held.bits;
  return h.length === dim && sameWords(h, 0, bits, at, dim);
}

/**
 * Which positions of a block need a Merkle path: every row except those the peer
 * holds with the same bytes, verified against the same root (membership already
 * shown). `root` is the tensor's current root.
 */
export function positionsToProve(tensor: number, ids: Uint32Array, kinds: Uint8Array, root: Uint8Array, cache: PatternCache | undefined): number[] {
  const out: number[] = [];
  // A root array already found equal to `root` (rows recorded by one proof share one).
  let sameRoot: Uint8Array = root;
  for (let t = 0; t < ids.length; t++) {
    const held = kinds[t] === RowKind.Held ? cache?.get(tensor, ids[t]!) : undefined;
    if (held === undefined) out.push(t);
    else if (held.root !== sameRoot) {
      if (bytesEqual(held.root, root)) sameRoot = held.root;
      else out.push(t);
    }
  }
  return out;
}

type Payload = (Float32Array | Uint8Array | null)[];

/**
 * The blocks planBlock made: the rows their Full entries view (row t of `rows` is view t)
 * and the entries as planned (`views`, a copy; null while the payload of an all-Full
 * block has not been read: it is made on first read). writeBlock writes consecutive Full
 * rows whose entries are still the planned views as one slice of `rows` (the same bytes,
 * an edit in place included) without reading each view's buffer and offset; any other
 * entry (replaced, reordered, a block built by hand) goes the general way.
 */
const planned = new WeakMap<PatternBlock, { rows: Float32Array; dim: number; n: number; views: readonly (Float32Array | Uint8Array | null)[] | null }>();

/**
 * Plans how the rows (ids.length x dim) of one tensor travel: as an id when `cache`
 * holds the same bytes (a row it holds at `root`, the tensor's current root, is those
 * bytes and is not compared), as a delta when it holds an older copy and the delta is
 * smaller, in full otherwise (full rows are views of `rows`, which the block then
 * owns). The caller then proves the positions positionsToProve() names and sets
 * their multiproof as `hashes`. When every row travels in full (no cache, or it holds
 * none of them), the payload's views are made when it is first read (encodeProof does
 * not need them).
 */
export function planBlock(tensor: number, dim: number, ids: Uint32Array, rows: Float32Array, all: boolean, cache?: PatternCache, root?: Uint8Array): PatternBlock {
  const n = ids.length;
  const kinds = new Uint8Array(n); // RowKind.Full is 0
  let deltas: (Uint8Array | null)[] | null = null;
  let allFull = true;
  if (cache !== undefined) {
    const bits = u32view(rows);
    // A root array already found equal to `root` (rows recorded by one proof share one).
    let sameRoot = root;
    for (let t = 0; t < n; t++) {
      const h = cache.get(tensor, ids[t]!);
      const held = h?.row;
      if (!h || !held || held.length !== dim) continue;
      // Held at the tensor's current root: the same row (the root binds it), not compared.
      let atRoot = root !== undefined && h.root === sameRoot;
      if (!atRoot && root !== undefined && bytesEqual(h.root, root)) {
        sameRoot = h.root;
        atRoot = true;
      }
      if (atRoot || sameBits(h, bits, t * dim, dim)) {
        kinds[t] = RowKind.Held;
        allFull = false;
        continue;
      }
      const delta = encodeDelta(held, rows.subarray(t * dim, (t + 1) * dim));
      if (delta.length < dim * 4) {
        kinds[t] = RowKind.Delta;
        (deltas ??= new Array<Uint8Array | null>(n).fill(null))[t] = delta;
        allFull = false;
      }
    }
  }
  const views = (): Payload => {
    const payload: Payload = new Array<null>(n).fill(null);
    for (let t = 0; t < n; t++) {
      // A view: `rows` belongs to the block from here on.
      payload[t] = kinds[t] === RowKind.Full ? rows.subarray(t * dim, (t + 1) * dim) : kinds[t] === RowKind.Delta ? deltas![t]! : null;
    }
    return payload;
  };
  const hashes = new Uint8Array(0);
  if (!allFull) {
    const payload = views();
    const block: PatternBlock = { tensor, dim, all, ids, kinds, payload, hashes };
    planned.set(block, { rows, dim, n, views: payload.slice() });
    return block;
  }
  const plan = { rows, dim, n, views: null as Payload | null };
  let payload: Payload | null = null;
  const block = { tensor, dim, all, ids, kinds, hashes } as PatternBlock;
  Object.defineProperty(block, 'payload', {
    enumerable: true,
    configurable: true,
    get(): Payload {
      if (payload === null) {
        payload = views();
        plan.views = payload.slice();
      }
      return payload;
    },
    set(v: Payload) {
      if (plan.views === null) plan.views = views();
      payload = v;
    },
  });
  planned.set(block, plan);
  return block;
}

/**
 * How one optimizer-state row of a step proof travels when the block was planned against
 * a cache: Full (its 8 d + 12 leaf bytes), Held (the verifier holds these bytes), Delta
 * (an XOR delta over the leaf's words against the held copy), Zero (the zero row every
 * state starts from: nothing sent). Every state row, whatever its kind, is checked
 * against the state root by the block's multiproof.
 */
export const StateKind = { Full: 0, Held: 1, Delta: 2, Zero: 3 } as const;

/**
 * Plans how the state rows of a block (its `leaves`, every row) travel against `cache`:
 * Zero for an all-zero leaf, Held when the cache holds the same bytes, Delta when it
 * holds other bytes and the delta is smaller, Full otherwise.
 */
export function planStateBlock(b: StateBlock, cache: PatternCache): StateBlock {
  const q = stateRowBytes(b.dim) / 4, n = b.ids.length;
  const w = words(b.leaves);
  const kinds = new Uint8Array(n);
  const deltas: (Uint8Array | null)[] = new Array<null>(n).fill(null);
  for (let t = 0; t < n; t++) {
    const row = w.subarray(t * q, (t + 1) * q);
    let zero = true;
    for (let j = 0; zero && j < q; j++) zero = row[j] === 0;
    if (zero) {
      kinds[t] = StateKind.Zero;
      continue;
    }
    const h = cache.getState(b.tensor, b.ids[t]!);
    if (h && h.words.length === q) {
      let same = true;
      for (let j = 0; same && j < q; j++) same = h.words[j] === row[j];
      if (same) {
        kinds[t] = StateKind.Held;
        continue;
      }
      const delta = encodeWordDelta(h.words, row);
      if (delta.length < q * 4) {
        kinds[t] = StateKind.Delta;
        deltas[t] = delta;
        continue;
      }
    }
    kinds[t] = StateKind.Full;
  }
  return { ...b, kinds, deltas };
}

/**
 * Every state row of a block as leaf bytes: held and delta rows from `cache` (ProofError
 * NOT_HELD when it does not hold one, checked before anything is allocated), the others
 * as decoded. A block without kinds is returned as it is. The copy is charged to `budget`.
 */
export function resolveStateLeaves(s: StateBlock, cache: PatternCache | undefined, budget: VerifyBudget): Uint8Array {
  const kinds = s.kinds;
  if (!kinds) return s.leaves;
  const rb = stateRowBytes(s.dim), q = rb / 4, n = s.ids.length;
  const held: (HeldState | undefined)[] = new Array<undefined>(n);
  for (let t = 0; t < n; t++) {
    if (kinds[t] !== StateKind.Held && kinds[t] !== StateKind.Delta) continue;
    const h = cache?.getState(s.tensor, s.ids[t]!);
    if (h === undefined || h.words.length !== q) {
      throw new ProofError('NOT_HELD', `the optimizer state of row ${s.ids[t]} of tensor ${s.tensor} was sent as ${kinds[t] === StateKind.Held ? 'held' : 'a delta'}, but this verifier does not hold it`);
    }
    held[t] = h;
  }
  budget.cellsFor(n * q, `the state rows of tensor ${s.tensor}`);
  const out = new Uint8Array(n * rb);
  const o = new Uint32Array(out.buffer);
  for (let t = 0; t < n; t++) {
    const k = kinds[t]!;
    if (k === StateKind.Held) o.set(held[t]!.words, t * q);
    else if (k === StateKind.Delta) applyWordDelta(held[t]!.words, s.deltas![t]!, o.subarray(t * q, (t + 1) * q));
    else out.set(s.leaves.subarray(t * rb, (t + 1) * rb), t * rb);
  }
  return out;
}

// ---------------------------------------------------------------------------
// Encoding

// One pass of writes, run twice by encodeProof (writeExact): through a ByteCounter for the
// exact size, then into one array of that size. The writes must not depend on which
// writer they go to; a wrong size is an internal error (ERR_GT_INTERNAL), never a short
// or padded proof.

/** The first n 2-bit kinds, four to a byte, the first in the low bits (row and state kinds). */
function writePacked2(w: ByteWriter, kinds: Uint8Array, n: number): void {
  for (let t = 0; t < n; t += 4) {
    let v = kinds[t]!;
    if (t + 1 < n) v |= kinds[t + 1]! << 2;
    if (t + 2 < n) v |= kinds[t + 2]! << 4;
    if (t + 3 < n) v |= kinds[t + 3]! << 6;
    w.u8(v);
  }
}

/** A held-table block (forward proofs of format version 2): the marker alone. */
function writeHeldTable(w: ByteWriter, b: PatternBlock): void {
  if (!b.all || b.ids.length !== 0 || b.kinds.length !== 0 || b.payload.length !== 0 || b.hashes.length !== 0) {
    throw new InvalidArgumentError(`proof: the held-table block of tensor ${b.tensor} must be all rows with no ids, kinds, payload or hashes`);
  }
  w.u32(b.tensor).u32(b.dim).u8(2);
}

function writeBlock(w: ByteWriter, b: PatternBlock): void {
  if (b.heldTable === true) throw new InvalidArgumentError(`proof: a held-table block (tensor ${b.tensor}) may appear only in a forward proof`);
  w.u32(b.tensor).u32(b.dim).u8(b.all ? 1 : 0).u32(b.ids.length);
  if (!b.all) w.u32s(b.ids);
  writePacked2(w, b.kinds, b.ids.length);
  // Consecutive full rows that are adjacent views of one buffer go out in one write.
  let run: Float32Array | null = null;
  let runLength = 0;
  const flush = (): void => {
    if (run) w.f32s(new Float32Array(run.buffer, run.byteOffset, runLength));
    run = null;
    runLength = 0;
  };
  const plan = planned.get(b);
  const n = b.ids.length;
  if (plan !== undefined && plan.views === null && n === plan.n && b.kinds.length === n && b.kinds.every((k) => k === RowKind.Full)) {
    // An all-Full block whose payload was never read: its rows, as planned.
    w.f32s(plan.rows.subarray(0, n * plan.dim));
    w.u32(b.hashes.length / 32).bytes(b.hashes);
    return;
  }
  const payload = b.payload;
  const views = plan?.views ?? null; // read after the payload (a first read plans the views)
  for (let t = 0; t < n; t++) {
    const p = payload[t];
    if (b.kinds[t] === RowKind.Full) {
      if (views !== null && p != null && p === views[t]) {
        let u = t + 1;
        while (u < n && b.kinds[u] === RowKind.Full && payload[u] != null && payload[u] === views[u]) u++;
        flush();
        w.f32s(plan!.rows.subarray(t * plan!.dim, u * plan!.dim));
        t = u - 1;
        continue;
      }
      const row = p as Float32Array;
      if (run && row.buffer === run.buffer && row.byteOffset === run.byteOffset + runLength * 4) {
        runLength += row.length;
      } else {
        flush();
        run = row;
        runLength = row.length;
      }
      continue;
    }
    flush();
    if (b.kinds[t] === RowKind.Delta) w.bytes(p as Uint8Array);
  }
  flush();
  w.u32(b.hashes.length / 32).bytes(b.hashes);
}

/** A layer's op and its stage lists (forward and step proofs). */
function writeStages(w: ByteWriter, l: { op: LayerOp; stages: readonly Uint32Array[] }): void {
  const spec = specByOp(l.op);
  if (spec === undefined) throw new InvalidArgumentError(`proof: unknown op ${JSON.stringify(l.op)}`);
  w.u8(spec.code).u8(l.stages.length);
  for (const s of l.stages) w.u32(s.length).u32s(s);
}

/**
 * The proof's bytes (docs/proof-format.md), in one allocation of their exact size: a
 * counting pass over the proof, then one pass writing each field in place (revealed
 * rows, state leaves and hashes copied once, from where the proof object holds them).
 */
export function encodeProof(p: GhostProof, options: EncodeOptions = {}): Uint8Array {
  return writeExact((w) => writeProof(w, p), options.into);
}

export interface EncodeOptions {
  /**
   * Where the bytes go: called once with the proof's exact size, returns a Uint8Array of
   * exactly that length (InvalidArgumentError otherwise), which encodeProof fills and
   * returns (a server's reused output buffers). Default: a fresh array.
   */
  into?: (size: number) => Uint8Array;
}

/** The format version a proof is written in: 2 exactly when it carries a held-table block. */
function versionOf(p: GhostProof): number {
  return p.kind === 'forward' && p.layers.some((l) => l.blocks.some((b) => b.heldTable === true)) ? PROOF_HELD_TABLES_VERSION : PROOF_FORMAT_VERSION;
}

function writeProof(w: ByteWriter, p: GhostProof): void {
  w.bytes(PROOF_MAGIC).u16(versionOf(p));
  if (p.kind === 'forward') {
    w.u8(1).bytes(p.ghost).u32(p.firstLayer).u32(p.layers.length);
    writeInputRecord(w, p.input);
    for (const l of p.layers) {
      writeStages(w, l);
      w.u8(l.blocks.length);
      for (const b of l.blocks) (b.heldTable === true ? writeHeldTable : writeBlock)(w, b);
    }
    w.u32(p.output.rows).u32(p.output.cols).f32s(p.output.data);
  } else if (p.kind === 'update') {
    w.u8(2).bytes(p.ghost).u32(p.tensor);
    writeOptimizer(w, p.optimizer);
    w.u64(p.globalStep).f64(p.logDecay);
    writeBlock(w, p.block);
    w.f32s(p.grads);
    if (p.optimizer.kind === 'adam') w.f32s(p.state.m).f32s(p.state.v);
    w.u32s(p.state.steps).f64s(p.state.marks).bytes(p.newRoot);
  } else {
    const more = p.more ?? [];
    w.u8(more.length === 0 ? 3 : 4).bytes(p.ghost).u64(p.step);
    if (more.length > 0) w.u32(1 + more.length);
    for (const q of [p, ...more]) {
      writeInputRecord(w, q.input);
      if (q.targets.kind === 'classes') w.u8(1).u32(q.targets.ids.length).u32s(q.targets.ids);
      else w.u8(2).u32(q.targets.data.length).f32s(q.targets.data);
      w.u32(q.layers.length);
      for (const l of q.layers) writeStages(w, l);
    }
    w.u32(p.blocks.length);
    for (const b of p.blocks) writeBlock(w, b);
    w.u32(p.states.length);
    for (const b of p.states) {
      const k = b.kinds;
      w.u32(b.tensor).u32(b.dim).u8((b.all ? 1 : 0) | (k ? 2 : 0)).u32(b.ids.length);
      if (!b.all) w.u32s(b.ids);
      if (!k) w.bytes(b.leaves);
      else {
        writePacked2(w, k, b.ids.length);
        const rb = stateRowBytes(b.dim);
        for (let t = 0; t < b.ids.length; t++) {
          if (k[t] === StateKind.Full) w.bytes(b.leaves.subarray(t * rb, (t + 1) * rb));
          else if (k[t] === StateKind.Delta) w.bytes(b.deltas![t]!);
        }
      }
      w.u32(b.hashes.length / 32).bytes(b.hashes);
    }
    w.bytes(p.newGhost);
  }
}

// ---------------------------------------------------------------------------
// Decoding (untrusted bytes)

/**
 * A pattern block from untrusted bytes. `heldTables` (forward proofs of format version 2):
 * flags 2, a held-table marker, is allowed; the caller counts them in `found`.
 */
function readBlock(r: ByteReader, budget: VerifyBudget, g: GhostManifest | undefined, heldTables = false, found?: { heldTables: number }): PatternBlock {
  const tensor = r.u32('block tensor');
  const dim = r.count('block dim', 1, PROOF_LIMITS.dim);
  const flags = r.u8('block flags');
  if (flags > 2 || (flags === 2 && !heldTables)) throw new FormatError('BAD_VALUE', `proof: block flags ${flags}`);
  const gt = g?.tensors[tensor];
  const checkTensor = (): void => {
    if (!g) return;
    if (!gt) throw new ProofError('LAYER_MISMATCH', `a block names tensor ${tensor}; the Ghost file has ${g.tensors.length}`);
    if (dim !== gt.dim) throw new ProofError('SHAPE', `a block of tensor ${gt.name} has dim ${dim}; the Ghost file says ${gt.dim}`);
  };
  if (flags === 2) {
    // A held table: nothing follows (its rows come from the verifier's cache, not copied).
    checkTensor();
    budget.cellsFor(OBJECT_CELLS, `a held-table block of tensor ${tensor}`);
    if (found) found.heldTables++;
    return { tensor, dim, all: true, heldTable: true, ids: new Uint32Array(0), kinds: new Uint8Array(0), payload: [], hashes: new Uint8Array(0) };
  }
  const all = flags === 1;
  const n = r.count('block id count', 1, PROOF_LIMITS.blockIds);
  // Checked against the pinned Ghost file and charged before anything is allocated for the rows.
  checkTensor();
  if (gt && (all ? n !== gt.n : n > gt.n)) throw new ProofError('BLOCK_IDS', `a${all ? 'n all-rows' : ''} block of ${gt.name} has ${n} rows; N = ${gt.n}`);
  budget.cellsFor(OBJECT_CELLS + n * (dim + ROW_CELLS), `a block of ${n} rows of ${dim}`);
  let ids: Uint32Array;
  if (all) {
    r.need(Math.ceil(n / 4), 'block kinds'); // bounds the allocation below by the bytes present
    ids = new Uint32Array(n);
    for (let t = 0; t < n; t++) ids[t] = t;
  } else {
    ids = r.u32s(n, 'block ids');
    for (let t = 1; t < n; t++) if (ids[t]! <= ids[t - 1]!) throw new FormatError('BAD_VALUE', `proof: block ids not strictly ascending at ${t}`);
    if (gt && ids[n - 1]! >= gt.n) throw new ProofError('ID_OUT_OF_RANGE', `a block of ${gt.name} reveals id ${ids[n - 1]} >= N = ${gt.n}`);
  }
  const packed = r.bytes(Math.ceil(n / 4), 'block kinds');
  const kinds = new Uint8Array(n);
  for (let t = 0; t < n; t++) {
    const k = (packed[t >> 2]! >> (2 * (t & 3))) & 3;
    if (k === 3) throw new FormatError('BAD_VALUE', `proof: row kind 3 at ${t}`);
    kinds[t] = k;
  }
  if (n % 4 !== 0 && packed[packed.length - 1]! >> (2 * (n % 4)) !== 0) throw new FormatError('NON_CANONICAL', 'proof: padding bits of the row kinds are not zero');
  const payload: (Float32Array | Uint8Array | null)[] = new Array<null>(n).fill(null);
  for (let t = 0; t < n; t++) {
    if (kinds[t] === RowKind.Full) {
      const row = r.f32s(dim, 'pattern');
      checkFiniteF32(row, 'a pattern');
      payload[t] = row;
    } else if (kinds[t] === RowKind.Delta) {
      payload[t] = readDelta(r, dim);
    }
  }
  const hc = r.count('hash count', 0, 2 ** 32 - 1, 32);
  return { tensor, dim, all, ids, kinds, payload, hashes: r.bytes(hc * 32, 'hashes') };
}

function readOptimizer(r: ByteReader): CanonicalOptimizer {
  return readOptimizerOf(r, 'proof');
}

/** A state block from untrusted bytes: checked against the pinned Ghost file and charged before its rows are read. */
function readStateBlock(r: ByteReader, budget: VerifyBudget, g: GhostManifest | undefined): StateBlock {
  const tensor = r.u32('state tensor');
  const dim = r.count('state dim', 1, PROOF_LIMITS.dim);
  const flags = r.u8('state flags');
  if (flags > 3) throw new FormatError('BAD_VALUE', `proof: state block flags ${flags}`);
  const all = (flags & 1) === 1, coded = (flags & 2) === 2;
  const n = r.count('state row count', 1, PROOF_LIMITS.blockIds);
  const gt = g?.tensors[tensor];
  if (g) {
    if (!gt) throw new ProofError('LAYER_MISMATCH', `a state block names tensor ${tensor}; the Ghost file has ${g.tensors.length}`);
    if (dim !== gt.dim) throw new ProofError('SHAPE', `a state block of tensor ${gt.name} has dim ${dim}; the Ghost file says ${gt.dim}`);
    if (all ? n !== gt.n : n > gt.n) throw new ProofError('BLOCK_IDS', `a state block of ${gt.name} has ${n} rows; N = ${gt.n}`);
  }
  budget.cellsFor(OBJECT_CELLS + n * (stateDim(dim) + ROW_CELLS), `a state block of ${n} rows of ${dim}`);
  let ids: Uint32Array;
  if (all) {
    r.need(coded ? Math.ceil(n / 4) : n * stateRowBytes(dim), 'state rows'); // bounds the allocation below by the bytes present
    ids = new Uint32Array(n);
    for (let t = 0; t < n; t++) ids[t] = t;
  } else {
    ids = r.u32s(n, 'state ids');
    for (let t = 1; t < n; t++) if (ids[t]! <= ids[t - 1]!) throw new FormatError('BAD_VALUE', `proof: state ids not strictly ascending at ${t}`);
    if (gt && ids[n - 1]! >= gt.n) throw new ProofError('ID_OUT_OF_RANGE', `a state block of ${gt.name} names id ${ids[n - 1]} >= N = ${gt.n}`);
  }
  const rb = stateRowBytes(dim);
  if (!coded) {
    const leaves = r.bytes(n * rb, 'state rows');
    const hc = r.count('state hash count', 0, 2 ** 32 - 1, 32);
    return { tensor, dim, all, ids, leaves, hashes: r.bytes(hc * 32, 'state hashes') };
  }
  // Row kinds (2 bits each), then the Full rows' leaves and the Delta rows' deltas in order.
  const packed = r.bytes(Math.ceil(n / 4), 'state row kinds');
  if (n % 4 !== 0 && packed[packed.length - 1]! >> (2 * (n % 4)) !== 0) throw new FormatError('NON_CANONICAL', 'proof: padding bits of the state row kinds are not zero');
  const kinds = new Uint8Array(n);
  const deltas: (Uint8Array | null)[] = new Array<null>(n).fill(null);
  const leaves = new Uint8Array(n * rb);
  for (let t = 0; t < n; t++) {
    const k = (packed[t >> 2]! >> (2 * (t & 3))) & 3;
    kinds[t] = k;
    if (k === StateKind.Full) leaves.set(r.bytes(rb, 'state row'), t * rb);
    else if (k === StateKind.Delta) deltas[t] = readDelta(r, rb / 4);
  }
  const hc = r.count('state hash count', 0, 2 ** 32 - 1, 32);
  return { tensor, dim, all, ids, leaves, kinds, deltas, hashes: r.bytes(hc * 32, 'state hashes') };
}

/** Stage lists of a layer (forward and step proofs). */
function readStages(r: ByteReader, budget: VerifyBudget, i: number): Uint32Array[] {
  const ns = r.u8('stage count');
  if (ns > PROOF_LIMITS.stages) throw new FormatError('LIMIT', `proof: ${ns} stages`);
  budget.cellsFor(OBJECT_CELLS * (1 + ns), `layer ${i}'s stage lists`);
  const stages: Uint32Array[] = [];
  for (let s = 0; s < ns; s++) stages.push(r.u32s(r.u32('stage length'), 'stage ids'));
  return stages;
}

/**
 * Decodes a Ghost proof from untrusted bytes; throws FormatError naming the first bad
 * field, or ProofError (BUDGET, or a mismatch with `options.ghost`) from a header,
 * before the allocation it announces. Memory: the bytes read plus what the budget was
 * charged (docs/proof-format.md, "Verifier limits").
 */
export function decodeProof(bytes: Uint8Array, options: DecodeOptions = {}): GhostProof {
  if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError('a proof must be a Uint8Array');
  const budget = options.budget ?? new VerifyBudget(options.limits);
  const L = budget.limits;
  if (bytes.length > PROOF_LIMITS.bytes) throw new FormatError('LIMIT', `proof: ${bytes.length} bytes is over the ${PROOF_LIMITS.bytes}-byte limit`);
  budget.atMost(bytes.length, L.maxProofBytes, 'the proof\'s bytes', 'maxProofBytes');
  const g = options.ghost?.manifest;
  const r = new ByteReader(bytes, 'proof');
  const magic = r.bytes(8, 'magic');
  if (magic.some((b, i) => b !== PROOF_MAGIC[i])) throw new FormatError('BAD_MAGIC', 'not a Ghost proof');
  const version = r.u16('version');
  if (version !== PROOF_FORMAT_VERSION && version !== PROOF_HELD_TABLES_VERSION) throw new FormatError('BAD_VERSION', `proof: format version ${version}`);
  // Version 2: forward proofs with held-table blocks (at least one: else the proof is written as version 1).
  const found = { heldTables: 0 };
  const kind = r.u8('kind');
  const kindName = KIND_NAMES[kind];
  if (options.kind !== undefined && kindName && kindName !== options.kind) {
    throw new ProofError('WRONG_KIND', `${proofName(kindName)} where ${proofName(options.kind)} is expected`);
  }
  const readDigest = (): Uint8Array => {
    const d = r.bytes(32, 'ghost digest');
    if (options.ghost && !bytesEqual(d, options.ghost.digest)) throw new ProofError('GHOST_MISMATCH', 'the proof is for another Ghost file');
    return d;
  };
  let out: GhostProof;
  if (kind === 1) {
    const ghost = readDigest();
    const firstLayer = r.u32('first layer');
    const nl = r.count('layer count', 1, PROOF_LIMITS.layers);
    if (g && firstLayer + nl > g.layers.length) throw new ProofError('LAYER_MISMATCH', `layers ${firstLayer}..${firstLayer + nl - 1} do not exist (the model has ${g.layers.length})`);
    const input = readInputRecord(r, {
      maxRows: 2 ** 32 - 1,
      maxCols: PROOF_LIMITS.dim,
      charge: (n, k) => budget.atMost(n, L.maxBatch, k === 'f32' ? 'input rows' : 'input ids', 'maxBatch'),
    });
    const layers: LayerEvidence[] = [];
    for (let i = 0; i < nl; i++) {
      const op = r.u8('op');
      const opName = specByCode(op)?.op;
      if (opName === undefined) throw new FormatError('BAD_VALUE', `proof: layer ${i} op ${op}`);
      if (g && g.layers[firstLayer + i]!.op !== opName) throw new ProofError('LAYER_MISMATCH', `layer ${firstLayer + i} is ${g.layers[firstLayer + i]!.op}; the proof says ${opName}`);
      const stages = readStages(r, budget, i);
      const nb = r.u8('block count');
      if (nb > PROOF_LIMITS.blocksPerLayer) throw new FormatError('LIMIT', `proof: ${nb} blocks in layer ${i}`);
      const blocks: PatternBlock[] = [];
      for (let b = 0; b < nb; b++) blocks.push(readBlock(r, budget, g, version === PROOF_HELD_TABLES_VERSION, found));
      layers.push({ op: opName, stages, blocks });
    }
    const rows = r.count('output rows', 1, 2 ** 32 - 1), cols = r.count('output cols', 1, PROOF_LIMITS.dim);
    const data = r.f32s(rows * cols, 'output');
    checkFiniteF32(data, 'the output');
    out = { kind: 'forward', ghost, firstLayer, input, layers, output: { rows, cols, data } };
  } else if (kind === 2) {
    const ghost = readDigest();
    const tensor = r.u32('tensor');
    const optimizer = readOptimizer(r);
    const globalStep = r.u64('global step');
    const logDecay = r.f64('log decay');
    if (!(logDecay <= 0) || !Number.isFinite(logDecay)) throw new FormatError('BAD_VALUE', 'proof: log decay must be finite and <= 0');
    const block = readBlock(r, budget, g);
    if (block.all) throw new FormatError('BAD_VALUE', 'proof: an update block lists its ids');
    const n = block.ids.length, cells = n * block.dim;
    const grads = r.f32s(cells, 'gradients');
    checkFiniteF32(grads, 'a gradient');
    const adam = optimizer.kind === 'adam';
    const m = adam ? r.f32s(cells, 'm') : new Float32Array(0);
    const v = adam ? r.f32s(cells, 'v') : new Float32Array(0);
    checkFiniteF32(m, 'm');
    checkFiniteF32(v, 'v');
    for (let i = 0; i < v.length; i++) if (v[i]! < 0) throw new FormatError('BAD_VALUE', `proof: v[${i}] is negative`);
    const steps = r.u32s(n, 'row steps');
    const marks = r.f64s(n, 'decay marks');
    for (let i = 0; i < n; i++) if (!Number.isFinite(marks[i]!) || marks[i]! > 0 || marks[i]! < logDecay) throw new FormatError('BAD_VALUE', `proof: decay mark ${i} out of range`);
    out = { kind: 'update', ghost, tensor, optimizer, globalStep, logDecay, block, grads, state: { m, v, steps, marks }, newRoot: r.bytes(32, 'new root') };
  } else if (kind === 3 || kind === 4) {
    const ghost = readDigest();
    const step = r.u64('step');
    if (g?.training && step !== g.training.step) throw new ProofError('GHOST_MISMATCH', `the proof is of step ${step}; the Ghost file's next step is ${g.training.step}`);
    // Kind 4: several sequences, each charged before it is read; their rows together are the batch (maxBatch).
    const count = kind === 3 ? 1 : r.count('sequence count', 2, L.maxBatch);
    let rows = 0;
    const charge = (n: number, what: string): void => {
      budget.atMost(rows + n, L.maxBatch, what, 'maxBatch');
      rows += n;
    };
    const sequences: StepSequence[] = [];
    for (let q = 0; q < count; q++) {
      budget.cellsFor(OBJECT_CELLS, `sequence ${q}`);
      const input = readInputRecord(r, { maxRows: 2 ** 32 - 1, maxCols: PROOF_LIMITS.dim, charge: (n, k) => charge(n, k === 'f32' ? 'input rows' : 'input ids') });
      const tk = r.u8('targets kind');
      let targets: StepTargets;
      if (tk === 1) {
        const n = r.count('target count', 1, L.maxBatch, 4);
        targets = { kind: 'classes', ids: r.u32s(n, 'targets') };
      } else if (tk === 2) {
        const n = r.count('target values', 1, 2 ** 32 - 1, 4);
        budget.cellsFor(n, `${n} target values`);
        targets = { kind: 'values', data: r.f32s(n, 'targets') };
        checkFiniteF32(targets.data, 'a target');
      } else throw new FormatError('BAD_VALUE', `proof: targets kind ${tk}`);
      const nl = r.count('layer count', 1, PROOF_LIMITS.layers);
      if (g && nl !== g.layers.length) throw new ProofError('LAYER_MISMATCH', `a step proof covers every layer: ${nl} given, the model has ${g.layers.length}`);
      if (q > 0 && nl !== sequences[0]!.layers.length) throw new FormatError('BAD_VALUE', `proof: sequence ${q} has ${nl} layers, sequence 0 has ${sequences[0]!.layers.length}`);
      const layers: StepLayer[] = [];
      for (let i = 0; i < nl; i++) {
        const op = r.u8('op');
        const opName = specByCode(op)?.op;
        if (opName === undefined) throw new FormatError('BAD_VALUE', `proof: layer ${i} op ${op}`);
        if (g && g.layers[i]!.op !== opName) throw new ProofError('LAYER_MISMATCH', `layer ${i} is ${g.layers[i]!.op}; the proof says ${opName}`);
        layers.push({ op: opName, stages: readStages(r, budget, i) });
      }
      sequences.push({ input, targets, layers });
    }
    const nb = r.count('block count', 0, g ? g.tensors.length : 4096);
    const blocks: PatternBlock[] = [];
    for (let b = 0; b < nb; b++) {
      blocks.push(readBlock(r, budget, g));
      if (b > 0 && blocks[b]!.tensor <= blocks[b - 1]!.tensor) throw new FormatError('BAD_VALUE', 'proof: step blocks must name ascending tensors');
    }
    const ns = r.count('state count', 0, nb);
    const states: StateBlock[] = [];
    for (let b = 0; b < ns; b++) {
      states.push(readStateBlock(r, budget, g));
      if (b > 0 && states[b]!.tensor <= states[b - 1]!.tensor) throw new FormatError('BAD_VALUE', 'proof: state blocks must name ascending tensors');
    }
    const [head, ...more] = sequences as [StepSequence, ...StepSequence[]];
    out = { kind: 'step', ghost, step, ...head, ...(more.length > 0 ? { more } : {}), blocks, states, newGhost: r.bytes(32, 'new ghost digest') };
  } else {
    throw new FormatError('BAD_VALUE', `proof: kind ${kind}`);
  }
  r.end();
  if (version === PROOF_HELD_TABLES_VERSION && found.heldTables === 0) throw new FormatError('NON_CANONICAL', 'proof: format version 2 without a held-table block (such a proof is written as version 1)');
  return out;
}
