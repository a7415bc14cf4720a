/**
 * SparseTensor: N patterns of dimension d (f32), each contiguous, read and written
 * sparsely. Exact top-k retrieval by inner product, cosine or squared L2.
 *
 * Every write (scatter, add, append) goes through one native write path that
 * validates the whole batch before changing anything, so a rejected write leaves
 * the tensor as it was.
 */
import { checkBoolean, checkFloat32Array, checkInteger, checkOptions, toIds } from '../shared/args.js';
import { InvalidArgumentError, OutOfRangeError, callNative, callNativeAsync, fromNative } from '../shared/errors.js';
import {
  native,
  type NativeFileInfo,
  type NativeFileOpenOptions,
  type NativeHnswOptions,
  type NativeHnswStats,
  type NativeTensor,
} from './native.js';
import type { SimdLevel } from './simd.js';

/** ip: inner product (higher is better); cosine (higher is better; a zero vector scores 0);
 * l2: squared Euclidean distance (lower is better). */
export type Metric = 'ip' | 'cosine' | 'l2';

const METRICS: readonly Metric[] = ['ip', 'cosine', 'l2'];
const MAX_DIM = 2 ** 24;
const MAX_ROWS = 2 ** 32 - 1;
const SEARCH_KEYS = ['metric', 'level', 'index', 'ef'] as const;
const BATCH_SEARCH_KEYS = [...SEARCH_KEYS, 'threads'] as const;
const HNSW_KEYS = ['metric', 'M', 'efConstruction', 'seed', 'driftThreshold', 'maxDirty', 'neighborUpdateProbability', 'relink', 'relinkEf', 'threads'] as const;
const THREADS_KEYS = ['threads'] as const;

export interface SearchOptions {
  /** Defaults to the tensor's metric (with index 'hnsw': the index's metric, and only that). */
  metric?: Metric;
  /** Run the kernels at this SIMD level instead of the default (exact index only; for tests and benchmarks). */
  level?: SimdLevel;
  /** 'exact' (default): SIMD scan, ground truth. 'hnsw': the graph built by buildHnsw(). */
  index?: 'exact' | 'hnsw';
  /** HNSW candidate list size (>= k; default max(128, k)). Larger: better recall, slower. */
  ef?: number;
}

export interface HnswOptions {
  /** Defaults to the tensor's metric. Cosine and ip on normalised patterns are what HNSW suits best. */
  metric?: Metric;
  /** Graph degree (default 16). */
  M?: number;
  /** Candidate list size while building (default 200). */
  efConstruction?: number;
  /** Level-assignment seed (default 100). */
  seed?: number;
  /** Relative L2 drift of a row from its graph copy that marks it dirty (default 0.1). */
  driftThreshold?: number;
  /** Dirty rows that trigger an automatic refresh on write (default max(256, N/50)). */
  maxDirty?: number;
  /**
   * On refresh, also rebuild each one-hop neighbour's links with this probability
   * (default 0: only the moved row's own links are repaired; hnswlib's updatePoint
   * default 1 costs many insertions per row).
   */
  neighborUpdateProbability?: number;
  /**
   * How a refresh re-links a moved row (default 'repair'): 'repair' links it as an
   * insertion would (up to 2M links at layer 0) and hands the slots of old neighbours
   * that still point to it to their nearest former co-neighbour; 'hnswlib' is hnswlib's
   * updatePoint (M links at layer 0, with neighborUpdateProbability). See docs/retrieval.md.
   */
  relink?: 'repair' | 'hnswlib';
  /**
   * With relink 'repair': candidates searched per layer to re-link a moved row (default 64;
   * 0 means efConstruction, as an insertion). 64 kept recall above a fresh build's at
   * 2-3x less upkeep than 200 (docs/retrieval.md, bench/index-training.mjs).
   */
  relinkEf?: number;
  /** Build threads (default: all cores). */
  threads?: number;
}

/** State of the HNSW index. */
export type HnswInfo = NativeHnswStats;

export interface SearchOneOptions extends SearchOptions {
  /**
   * Exact index: threads the scan's rows are split across (the calling thread and the
   * scan pool's helpers; default: all cores, or GHOST_TENSOR_THREADS). The result is the
   * same for any value. Small scans run on the calling thread alone.
   */
  threads?: number;
}

export interface BatchSearchOptions extends SearchOptions {
  /** Worker threads (default: all cores, or GHOST_TENSOR_THREADS). */
  threads?: number;
}

export interface SearchResult {
  /** Best first; ties broken by the lower id. */
  ids: Uint32Array;
  /** Similarity (ip, cosine) or squared distance (l2) of each id. */
  scores: Float32Array;
}

export interface BatchSearchResult extends SearchResult {
  /** Number of queries; ids and scores hold `queries * k` entries, query-major. */
  queries: number;
  k: number;
}

/** A compact multiproof that some patterns belong to the committed tensor. */
export interface PatternProof {
  /** The trusted commitment it checks against (BLAKE3 Merkle root, binds N and d). */
  root: Uint8Array;
  /** Number of patterns N when the proof was made. */
  n: number;
  /** Sorted, unique ids of the revealed patterns. */
  ids: Uint32Array;
  /** The patterns at `ids`, concatenated (ids.length * dim floats). */
  leaves: Float32Array;
  /** Sibling hashes, 32 bytes each, in the order of docs/hash-scheme.md. */
  proof: Uint8Array;
}

export interface CreateOptions {
  /** Rows to allocate up front (appends beyond it grow the storage). */
  capacity?: number;
  /** Default metric of search calls. Default 'ip'. */
  metric?: Metric;
}

export interface FromArrayOptions {
  /**
   * Use `data`'s memory in place instead of copying it. The tensor then writes into
   * your buffer; do not write it yourself or transfer it (a detached buffer is
   * reported as DetachedBufferError on the next call). Appending past its end copies
   * the rows into storage the tensor owns and ends the adoption.
   */
  adopt?: boolean;
  metric?: Metric;
}

export interface OpenFileOptions {
  /** Map the file without taking the writer's lock; writes stay in memory and checkpoints are refused. */
  readOnly?: boolean;
  /**
   * Check every stored Merkle node against the rows (rehashes the whole file) before
   * serving it. Done anyway when the file was not closed cleanly. Default false.
   */
  verify?: boolean;
  /**
   * Skip the check every row gets the first time it is read (its leaf and tree path
   * against the recorded root; its optimizer state against its check). Only for
   * measuring what the check costs: a damaged row is then served. Default false.
   */
  uncheckedReads?: boolean;
  /** Threads for the check (default: all cores). */
  threads?: number;
  /** Default metric of search calls (not stored in the file). Default 'ip'. */
  metric?: Metric;
}

export interface CreateFileOptions {
  rows: number;
  dim: number;
  /** Reserve Adam / SGD state (m, v, row counters, decay marks) in the file; zero to start. Default false. */
  optimizerState?: boolean;
  /** Values uniform in [-scale, scale) from this seed (deterministic). Defaults 0 and 0.01. */
  seed?: number;
  scale?: number;
  threads?: number;
}

export interface SaveFileOptions {
  /** Reserve optimizer state (zero) in the file. Default false. */
  optimizerState?: boolean;
  threads?: number;
}

export interface CheckpointOptions {
  /** Compact (apply the log to the main file) once the log exceeds this many bytes; 0: no byte limit. Default 256 MiB. */
  compactBytes?: number;
  /**
   * Compact once this many distinct rows are in the log but not in the main file; 0: no
   * row limit. Default 16,384. Until compaction, every such row keeps its changed 4 KiB
   * pages (values, optimizer state, tree path) in anonymous memory: this bounds that.
   */
  compactRows?: number;
}

/** State of a file-backed tensor (see docs/storage.md). */
export type TensorFileInfo = NativeFileInfo;

const DEFAULT_COMPACT_BYTES = 256 * 2 ** 20;
const DEFAULT_COMPACT_ROWS = 16_384;

function checkPath(path: unknown): string {
  if (typeof path !== 'string' || path.length === 0) throw new InvalidArgumentError('path must be a non-empty string');
  return path;
}

function fileOpenOptions(options: OpenFileOptions): NativeFileOpenOptions {
  const o: NativeFileOpenOptions = {
    readOnly: options.readOnly === true,
    verify: options.verify === true,
    uncheckedReads: options.uncheckedReads === true,
  };
  if (options.threads !== undefined) o.threads = checkInteger('threads', options.threads, 1, 1024);
  return o;
}

function checkMetric(name: string, value: unknown): Metric {
  if (typeof value !== 'string' || !(METRICS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`${name} must be 'ip', 'cosine' or 'l2', got ${String(value)}`);
  }
  return value as Metric;
}

// Module-internal access to the native handle, for the optimizer and the layers
// (not re-exported from the package).
let nativeOfTensor: (t: SparseTensor) => NativeTensor;
/** @internal */
export function internalNative(t: SparseTensor): NativeTensor {
  return nativeOfTensor(t);
}

export class SparseTensor {
  static {
    nativeOfTensor = (t) => t.#native;
  }

  readonly #native: NativeTensor;
  /** Default metric of search calls. */
  readonly metric: Metric;

  private constructor(handle: NativeTensor, metric: Metric) {
    this.#native = handle;
    this.metric = metric;
  }

  /** An empty tensor of dimension `dim`. */
  static create(dim: number, options: CreateOptions = {}): SparseTensor {
    options = checkOptions('SparseTensor.create', options, ['capacity', 'metric']);
    checkInteger('dim', dim, 1, MAX_DIM);
    const capacity = checkInteger('capacity', options.capacity ?? 0, 0, MAX_ROWS);
    const metric = checkMetric('metric', options.metric ?? 'ip');
    const N = native().NativeTensor;
    return new SparseTensor(callNative(() => new N(dim, capacity)), metric);
  }

  /** A tensor holding the rows of `data` (length a multiple of `dim`), copied unless adopted. */
  static fromArray(data: Float32Array, dim: number, options: FromArrayOptions = {}): SparseTensor {
    options = checkOptions('SparseTensor.fromArray', options, ['adopt', 'metric']);
    checkFloat32Array('data', data);
    checkInteger('dim', dim, 1, MAX_DIM);
    if (data.length % dim !== 0) {
      throw new InvalidArgumentError(`data length ${data.length} is not a multiple of dim ${dim}`);
    }
    const metric = checkMetric('metric', options.metric ?? 'ip');
    const adopt = checkBoolean('adopt', options.adopt, false);
    const N = native().NativeTensor;
    return new SparseTensor(callNative(() => new N(dim, data, adopt)), metric);
  }

  /**
   * Opens a tensor file (docs/storage.md) memory-mapped: nothing is read until it is
   * touched, and writes stay in this process's memory until checkpoint(). The header
   * is checked, and, with `verify` or after an unclean close, every stored Merkle node
   * against the rows (off the JavaScript thread); the write-ahead log is then replayed.
   * A damaged file is refused with StorageError (its `reason` says what is wrong).
   * Reads are verified: a row is checked against the stored tree and the recorded
   * root the first time it is read (O(log N) hashes, then cached), its optimizer state
   * against its stored check the first time the state is touched; a damaged one is
   * refused with StorageError ('ROW_MISMATCH', 'STATE_MISMATCH', 'STATE_INVALID').
   * The tensor is committed (root() and prove() work) and has a fixed number of rows.
   */
  static async openFile(path: string, options: OpenFileOptions = {}): Promise<SparseTensor> {
    const p = checkPath(path);
    const metric = checkMetric('metric', options.metric ?? 'ip');
    const o = fileOpenOptions(options);
    const handle = await callNativeAsync(() => native().openTensorFileAsync(p, o));
    const N = native().NativeTensor;
    return new SparseTensor(callNative(() => new N(handle)), metric);
  }

  /** openFile() on the calling thread (blocks it for the check). */
  static openFileSync(path: string, options: OpenFileOptions = {}): SparseTensor {
    const p = checkPath(path);
    const metric = checkMetric('metric', options.metric ?? 'ip');
    const o = fileOpenOptions(options);
    const N = native().NativeTensor;
    return new SparseTensor(callNative(() => new N(native().openTensorFile(p, o))), metric);
  }

  /**
   * Writes a new tensor file of `rows` x `dim` seeded uniform values (and its Merkle
   * tree) atomically, off the JavaScript thread, without holding the rows in memory.
   */
  static async createFile(path: string, options: CreateFileOptions): Promise<void> {
    const p = checkPath(path);
    const rows = checkInteger('rows', options.rows, 1, MAX_ROWS);
    const dim = checkInteger('dim', options.dim, 1, MAX_DIM);
    const seed = checkInteger('seed', options.seed ?? 0, 0, Number.MAX_SAFE_INTEGER);
    const scale = options.scale ?? 0.01;
    if (typeof scale !== 'number' || !Number.isFinite(scale) || scale < 0) {
      throw new InvalidArgumentError(`scale must be a finite number >= 0, got ${String(scale)}`);
    }
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    await callNativeAsync(() => native().createTensorFileAsync(p, rows, dim, options.optimizerState === true, seed, scale, threads));
  }

  /** Writes this tensor's rows and Merkle tree to a new tensor file atomically (off the JavaScript thread). */
  async saveFile(path: string, options: SaveFileOptions = {}): Promise<void> {
    const p = checkPath(path);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    await callNativeAsync(() => this.#native.saveFileAsync(p, options.optimizerState === true, threads));
  }

  /**
   * Makes every change since the last checkpoint durable (a file-backed tensor only):
   * one checksummed log record of the changed rows (values and optimizer state) and
   * the new root, then fdatasync. Costs O(rows changed). Returns the checkpoint's
   * sequence number. Then compacts when the log exceeds `compactBytes` or holds
   * `compactRows` rows not yet in the main file. Unchanged since the last checkpoint:
   * writes nothing and returns the same number.
   */
  checkpoint(options: CheckpointOptions = {}): number {
    const bytes = checkInteger('compactBytes', options.compactBytes ?? DEFAULT_COMPACT_BYTES, 0, Number.MAX_SAFE_INTEGER);
    const rows = checkInteger('compactRows', options.compactRows ?? DEFAULT_COMPACT_ROWS, 0, Number.MAX_SAFE_INTEGER);
    return callNative(() => this.#native.fileCheckpoint(bytes, rows));
  }

  /**
   * checkpoint() on a worker thread (a large checkpoint or its compaction does not block
   * the JavaScript thread). Every other call on this tensor throws TensorBusyError until
   * it settles.
   */
  async checkpointAsync(options: CheckpointOptions = {}): Promise<number> {
    const bytes = checkInteger('compactBytes', options.compactBytes ?? DEFAULT_COMPACT_BYTES, 0, Number.MAX_SAFE_INTEGER);
    const rows = checkInteger('compactRows', options.compactRows ?? DEFAULT_COMPACT_ROWS, 0, Number.MAX_SAFE_INTEGER);
    return callNativeAsync(() => this.#native.fileCheckpointAsync(bytes, rows, false));
  }

  /** Checkpoints, then applies the log to the main file in place and empties it. */
  compact(): void {
    callNative(() => this.#native.fileCompact());
  }

  /** compact() on a worker thread; the tensor is held exclusively until it settles. */
  async compactAsync(): Promise<void> {
    await callNativeAsync(() => this.#native.fileCheckpointAsync(0, 0, true));
  }

  /**
   * Checkpoints, compacts and marks the file cleanly closed (the next open skips the
   * full check). The tensor refuses every call afterwards (StorageError 'CLOSED').
   */
  close(): void {
    callNative(() => this.#native.fileClose());
  }

  /** The file behind this tensor, or null for an in-memory tensor. */
  get file(): TensorFileInfo | null {
    return callNative(() => this.#native.fileInfo());
  }

  /** Number of patterns N. */
  get size(): number {
    return callNative(() => this.#native.size());
  }
  /** Dimension d of every pattern. */
  get dim(): number {
    return this.#native.dim();
  }
  /** Rows allocated. */
  get capacity(): number {
    return callNative(() => this.#native.capacity());
  }
  /** True while the tensor uses an adopted Float32Array's memory. */
  get adopted(): boolean {
    return this.#native.isAdopted();
  }

  /** Grows the allocation to at least `capacity` rows. */
  reserve(capacity: number): void {
    checkInteger('capacity', capacity, 0, MAX_ROWS);
    callNative(() => this.#native.reserve(capacity));
  }

  /** Appends rows (length a multiple of dim); returns the id of the first one. */
  append(rows: Float32Array): number {
    checkFloat32Array('rows', rows);
    return callNative(() => this.#native.append(rows));
  }

  /**
   * A zero-copy view of pattern `id`. Read it, do not write it: writes through a
   * view bypass the write path (and so the index and commitment of later layers).
   * A view keeps its memory alive; after an append that grows the storage it no
   * longer follows the tensor.
   */
  row(id: number): Float32Array {
    checkInteger('id', id, 0, MAX_ROWS);
    return callNative(() => this.#native.rowView(id));
  }

  /** Copies of the patterns `ids`, concatenated (ids.length * dim floats). */
  gather(ids: Uint32Array | readonly number[]): Float32Array {
    const u = toIds('ids', ids);
    return callNative(() => this.#native.gather(u));
  }

  /** Overwrites patterns `ids` (unique) with `values` (ids.length * dim floats). */
  scatter(ids: Uint32Array | readonly number[], values: Float32Array): void {
    const u = toIds('ids', ids);
    checkFloat32Array('values', values);
    callNative(() => this.#native.set(u, values));
  }

  /** Adds `deltas` (ids.length * dim floats) to patterns `ids`; a repeated id gets the sum. */
  add(ids: Uint32Array | readonly number[], deltas: Float32Array): void {
    const u = toIds('ids', ids);
    checkFloat32Array('deltas', deltas);
    callNative(() => this.#native.add(u, deltas));
  }

  /** Exact top-k of one query (length dim). 1 <= k <= size. */
  search(query: Float32Array, k: number, options: SearchOneOptions = {}): SearchResult {
    options = checkOptions('search', options, BATCH_SEARCH_KEYS);
    checkFloat32Array('query', query);
    this.#checkK(k);
    const { hnsw, ef } = this.#indexArgs(options, k);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    if (threads !== undefined && hnsw) throw new InvalidArgumentError("threads applies to index 'exact' only");
    if (hnsw) return callNative(() => this.#native.hnswSearch(query, k, ef));
    const metric = checkMetric('metric', options.metric ?? this.metric);
    return callNative(() => this.#native.search(query, k, metric, options.level, threads));
  }

  /**
   * Exact top-k of many queries (concatenated, length a multiple of dim), spread over
   * worker threads off the JavaScript thread. Writes to this tensor are refused with
   * TensorBusyError until the promise settles.
   */
  async searchBatch(queries: Float32Array, k: number, options: BatchSearchOptions = {}): Promise<BatchSearchResult> {
    options = checkOptions('searchBatch', options, BATCH_SEARCH_KEYS);
    const [metric, threads] = this.#batchArgs(queries, k, options);
    const { hnsw, ef } = this.#indexArgs(options, k);
    let r;
    try {
      r = hnsw
        ? await this.#native.hnswSearchBatchAsync(queries, k, ef, threads)
        : await this.#native.searchBatchAsync(queries, k, metric, options.level, threads);
    } catch (err) {
      throw fromNative(err);
    }
    return { ...r, queries: queries.length / this.dim, k };
  }

  /** searchBatch on the calling thread's time (still spread over workers); for small batches. */
  searchBatchSync(queries: Float32Array, k: number, options: BatchSearchOptions = {}): BatchSearchResult {
    options = checkOptions('searchBatchSync', options, BATCH_SEARCH_KEYS);
    const [metric, threads] = this.#batchArgs(queries, k, options);
    if ((options.index ?? 'exact') !== 'exact') throw new InvalidArgumentError("searchBatchSync supports index 'exact' only; use searchBatch");
    this.#indexArgs(options, k); // ef without index 'hnsw' is refused, not ignored
    const r = callNative(() => this.#native.searchBatch(queries, k, metric, options.level, threads));
    return { ...r, queries: queries.length / this.dim, k };
  }

  /**
   * Builds the BLAKE3 Merkle commitment over all patterns (hash scheme v1,
   * docs/hash-scheme.md) on worker threads, off the JavaScript thread, and returns the
   * root. From then on every write keeps the tree current in O(k log N) hashes, so
   * `root()` is always the root a fresh rebuild would give. Writes are refused with
   * TensorBusyError until the promise settles.
   */
  async commit(options: { threads?: number } = {}): Promise<Uint8Array> {
    options = checkOptions('commit', options, THREADS_KEYS);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    try {
      await this.#native.commitAsync(threads);
    } catch (err) {
      throw fromNative(err);
    }
    return this.root();
  }

  /** commit() on the calling thread's time (still spread over workers); for small tensors. */
  commitSync(options: { threads?: number } = {}): Uint8Array {
    options = checkOptions('commitSync', options, THREADS_KEYS);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    callNative(() => this.#native.commit(threads));
    return this.root();
  }

  /** True once commit() has built the tree. */
  get committed(): boolean {
    return this.#native.isCommitted();
  }

  /** The current 32-byte root. Throws InvalidArgumentError before commit(). */
  root(): Uint8Array {
    return callNative(() => this.#native.root());
  }

  /**
   * A compact multiproof for the patterns `ids` (any order, repeats allowed: the proof
   * is for the sorted unique set, which it returns with the patterns in that order).
   * Check it with `verify` from `ghost-tensor/verify`.
   */
  prove(ids: Uint32Array | readonly number[]): PatternProof {
    const u = toIds('ids', ids);
    const sorted = Uint32Array.from(new Set(u)).sort();
    if (sorted.length === 0) throw new InvalidArgumentError('ids is empty');
    // gather (below) checks the ids against N before the proof is built.
    return callNative(() => ({
      root: this.#native.root(),
      n: this.#native.size(),
      ids: sorted,
      leaves: this.#native.gather(sorted),
      proof: this.#native.prove(sorted),
    }));
  }

  /**
   * Builds an HNSW graph over the patterns (hnswlib, with this library's SIMD kernels)
   * on worker threads. The graph then follows training: writes that move a row by more
   * than `driftThreshold` mark it dirty; dirty and appended rows are scanned exactly
   * at query time until refreshHnsw() (or the automatic refresh past `maxDirty`)
   * re-links them; every returned score is computed on current values.
   */
  async buildHnsw(options: HnswOptions = {}): Promise<void> {
    options = checkOptions('buildHnsw', options, HNSW_KEYS);
    const o = this.#hnswOptions(options);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    try {
      await this.#native.hnswBuildAsync(o, threads);
    } catch (err) {
      throw fromNative(err);
    }
  }

  /** Loads a graph written by saveHnsw() for exactly these rows; options as at build time. */
  loadHnsw(path: string, options: HnswOptions = {}): void {
    if (typeof path !== 'string' || path.length === 0) throw new InvalidArgumentError('path must be a non-empty string');
    options = checkOptions('loadHnsw', options, HNSW_KEYS.filter((key) => key !== 'threads'));
    const o = this.#hnswOptions(options);
    callNative(() => this.#native.hnswLoad(path, o));
  }

  /** Refreshes every dirty row, then writes the graph to `path` atomically (temporary file, rename). */
  saveHnsw(path: string): void {
    if (typeof path !== 'string' || path.length === 0) throw new InvalidArgumentError('path must be a non-empty string');
    callNative(() => this.#native.hnswSave(path));
  }

  /** The HNSW index's parameters and state, or null when none was built. */
  get hnsw(): HnswInfo | null {
    return callNative(() => this.#native.hnswStats());
  }

  /** Re-links up to `budget` dirty rows (oldest first) now; returns how many. */
  refreshHnsw(budget: number, options: { threads?: number } = {}): number {
    options = checkOptions('refreshHnsw', options, THREADS_KEYS);
    checkInteger('budget', budget, 0, 2 ** 32 - 1);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    return callNative(() => this.#native.hnswRefresh(budget, threads));
  }

  /** refreshHnsw() on worker threads; writes are refused until it settles. */
  async refreshHnswAsync(budget: number, options: { threads?: number } = {}): Promise<number> {
    options = checkOptions('refreshHnswAsync', options, THREADS_KEYS);
    checkInteger('budget', budget, 0, 2 ** 32 - 1);
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    try {
      return await this.#native.hnswRefreshAsync(budget, threads);
    } catch (err) {
      throw fromNative(err);
    }
  }

  #hnswOptions(options: HnswOptions): NativeHnswOptions {
    const o: NativeHnswOptions = { metric: checkMetric('metric', options.metric ?? this.metric) };
    if (options.M !== undefined) o.M = checkInteger('M', options.M, 2, 256);
    if (options.efConstruction !== undefined) o.efConstruction = checkInteger('efConstruction', options.efConstruction, 1, 100_000);
    if (options.seed !== undefined) o.seed = checkInteger('seed', options.seed, 0, 2 ** 32 - 1);
    if (options.driftThreshold !== undefined) {
      if (typeof options.driftThreshold !== 'number' || !(options.driftThreshold >= 0) || !Number.isFinite(options.driftThreshold)) {
        throw new InvalidArgumentError(`driftThreshold must be a finite number >= 0, got ${String(options.driftThreshold)}`);
      }
      o.driftThreshold = options.driftThreshold;
    }
    if (options.maxDirty !== undefined) o.maxDirty = checkInteger('maxDirty', options.maxDirty, 0, 2 ** 32 - 1);
    if (options.neighborUpdateProbability !== undefined) {
      const p = options.neighborUpdateProbability;
      if (typeof p !== 'number' || !(p >= 0 && p <= 1)) {
        throw new InvalidArgumentError(`neighborUpdateProbability must be in 0..1, got ${String(p)}`);
      }
      o.neighborUpdateProbability = p;
    }
    if (options.relink !== undefined) {
      if (options.relink !== 'repair' && options.relink !== 'hnswlib') {
        throw new InvalidArgumentError(`relink must be 'repair' or 'hnswlib', got ${String(options.relink)}`);
      }
      o.relink = options.relink;
    }
    if (options.relinkEf !== undefined) o.relinkEf = checkInteger('relinkEf', options.relinkEf, 0, 100_000);
    return o;
  }

  /** Validates index / metric / ef for a search; returns the ef to pass (HNSW) or undefined. */
  #indexArgs(options: SearchOptions, k: number): { hnsw: boolean; ef: number | undefined } {
    const index = options.index ?? 'exact';
    if (index !== 'exact' && index !== 'hnsw') throw new InvalidArgumentError(`index must be 'exact' or 'hnsw', got ${String(index)}`);
    if (index === 'exact') {
      if (options.ef !== undefined) throw new InvalidArgumentError("ef applies to index 'hnsw' only");
      return { hnsw: false, ef: undefined };
    }
    const info = this.hnsw;
    if (!info) throw new InvalidArgumentError('the tensor has no HNSW index: call buildHnsw() first');
    if (options.metric !== undefined && options.metric !== info.metric) {
      throw new InvalidArgumentError(`the HNSW index was built for metric '${info.metric}', not '${options.metric}'`);
    }
    if (options.level !== undefined) throw new InvalidArgumentError("level applies to index 'exact' only");
    if (options.ef === undefined) return { hnsw: true, ef: undefined };
    const ef = checkInteger('ef', options.ef, 1, 1_000_000);
    if (ef < k) throw new OutOfRangeError(`ef must be >= k (${k}), got ${ef}`);
    return { hnsw: true, ef };
  }

  #checkK(k: number): void {
    checkInteger('k', k, 1, MAX_ROWS);
    const n = this.size;
    if (n === 0) throw new OutOfRangeError('search on an empty tensor (no patterns)');
    if (k > n) throw new OutOfRangeError(`k must be in 1..${n} (the number of patterns), got ${k}`);
  }

  #batchArgs(queries: Float32Array, k: number, options: BatchSearchOptions): [Metric, number | undefined] {
    checkFloat32Array('queries', queries);
    const metric = checkMetric('metric', options.metric ?? this.metric);
    this.#checkK(k);
    if (queries.length % this.dim !== 0) {
      throw new InvalidArgumentError(`queries length ${queries.length} is not a multiple of dim ${this.dim}`);
    }
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    return [metric, threads];
  }
}
