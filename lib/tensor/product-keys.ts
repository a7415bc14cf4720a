/**
 * Product-key retrieval (Lample et al. 2019, "Large Memory Layers with Product Keys").
 *
 * N = n^2 slots; slot id = i * n + j has key concat(K1[i], K2[j]) where K1 and K2 are
 * two sub-key tables of n sub-keys each (SparseTensors: committed and trainable like
 * any other tensor). For a query q = concat(q1, q2) the slot score is
 *
 *     score(i, j) = <q1, K1[i]> + <q2, K2[j]>          (f32 sub-scores, summed in f64)
 *
 * and the exact top-k over all n^2 slots is found in O(n d + k^2): the top-k' of each
 * table (k' = min(k, n)) and then the best k of the k' x k' sums. Exact because a
 * slot whose row i is not among the top-k' of table 1 is beaten by k' slots (i', j)
 * that are (the same argument for j). Order: higher exact score first (the f64 sum,
 * then its rounding error: cbestPairs), ties to the lower slot id, so a verifier
 * holding the two tables re-derives the same selection. Nothing
 * needs maintaining while the tables train: every search reads their current values.
 */
import { checkFloat32Array, checkInteger, checkOptions, toIds } from '../shared/args.js';
import { cbestPairs } from '../verify/canonical.js';
import { InvalidArgumentError, OutOfRangeError, callNativeAsync } from '../shared/errors.js';
import type { SimdLevel } from './simd.js';
import { SparseTensor, internalNative, type OpenFileOptions, type SaveFileOptions, type SearchOptions } from './sparse-tensor.js';

export interface ProductKeyResult {
  /** Slot ids (i * n + j), best first. */
  ids: Uint32Array;
  /** Slot scores, as f64 sums of the two f32 sub-scores. */
  scores: Float64Array;
}

export interface ProductKeyBatchResult extends ProductKeyResult {
  queries: number;
  k: number;
}

const MAX_SUBKEYS = 65_535; // n^2 slot ids must fit in uint32

/**
 * Best k of the k1 x k2 candidate sums combineProductKeys(n, k, ids1, s1, ids2, s2),
 * ordered by the exact sum of the two sub-scores (then the lower slot id i * n + j);
 * scores are the f64 sums. ids1/s1 and ids2/s2 are the per-table results. It is the
 * canonical selection's own routine (cbestPairs), so both order candidates alike.
 */
export const combineProductKeys: typeof cbestPairs = cbestPairs;

export class ProductKeyIndex {
  /** Sub-keys for the first half of the query (n rows of dim1). */
  readonly keys1: SparseTensor;
  /** Sub-keys for the second half (n rows of dim2). */
  readonly keys2: SparseTensor;

  private constructor(keys1: SparseTensor, keys2: SparseTensor) {
    this.keys1 = keys1;
    this.keys2 = keys2;
  }

  /**
   * An index over two sub-key tables of the same length n. The query dimension is
   * keys1.dim + keys2.dim (the first keys1.dim values go to table 1).
   */
  static fromTables(keys1: SparseTensor, keys2: SparseTensor): ProductKeyIndex {
    if (!(keys1 instanceof SparseTensor) || !(keys2 instanceof SparseTensor)) {
      throw new InvalidArgumentError('keys1 and keys2 must be SparseTensors');
    }
    if (keys1.size !== keys2.size) {
      throw new InvalidArgumentError(`keys1 has ${keys1.size} sub-keys and keys2 ${keys2.size}: they must match`);
    }
    checkInteger('number of sub-keys', keys1.size, 1, MAX_SUBKEYS);
    return new ProductKeyIndex(keys1, keys2);
  }

  /** An index with n random sub-keys per table (uniform in [-1, 1) from `random`), query dimension `dim`. */
  static random(n: number, dim: number, random: () => number = Math.random): ProductKeyIndex {
    if (typeof random !== 'function') throw new InvalidArgumentError('random must be a function returning numbers in [0, 1)');
    checkInteger('n', n, 1, MAX_SUBKEYS);
    checkInteger('dim', dim, 2, 2 ** 24);
    const d1 = Math.floor(dim / 2), d2 = dim - d1;
    const fill = (len: number): Float32Array => {
      const a = new Float32Array(len);
      for (let i = 0; i < len; i++) a[i] = random() * 2 - 1;
      return a;
    };
    return new ProductKeyIndex(SparseTensor.fromArray(fill(n * d1), d1), SparseTensor.fromArray(fill(n * d2), d2));
  }

  /**
   * Writes the two sub-key tables as tensor files (docs/storage.md): each with its
   * Merkle tree and a checksummed header, so a damaged table is refused on open.
   */
  async saveFiles(path1: string, path2: string, options: SaveFileOptions = {}): Promise<void> {
    await this.keys1.saveFile(path1, options);
    await this.keys2.saveFile(path2, options);
  }

  /** Opens two tables written by saveFiles() (memory-mapped; `verify` rehashes them). */
  static async openFiles(path1: string, path2: string, options: OpenFileOptions = {}): Promise<ProductKeyIndex> {
    const keys1 = await SparseTensor.openFile(path1, options);
    let keys2: SparseTensor;
    try {
      keys2 = await SparseTensor.openFile(path2, options);
    } catch (err) {
      keys1.close();
      throw err;
    }
    try {
      return ProductKeyIndex.fromTables(keys1, keys2);
    } catch (err) {
      keys1.close();
      keys2.close();
      throw err;
    }
  }

  /** Sub-keys per table (n). */
  get subKeys(): number {
    return this.keys1.size;
  }
  /** Number of slots N = n^2. */
  get size(): number {
    return this.subKeys * this.subKeys;
  }
  /** Query dimension. */
  get dim(): number {
    return this.keys1.dim + this.keys2.dim;
  }

  /** The keys of slots `ids`: each slot's two sub-keys side by side (ids.length x dim); a slot >= n^2 is refused by the gather of table 1. */
  keyRows(slots: Uint32Array | readonly number[]): Float32Array {
    const ids = toIds('ids', slots);
    const n = this.subKeys, d1 = this.keys1.dim, d2 = this.keys2.dim, d = d1 + d2;
    const i1 = new Uint32Array(ids.length), i2 = new Uint32Array(ids.length);
    for (let r = 0; r < ids.length; r++) {
      i1[r] = Math.floor(ids[r]! / n);
      i2[r] = ids[r]! % n;
    }
    const k1 = this.keys1.gather(i1), k2 = this.keys2.gather(i2);
    const out = new Float32Array(ids.length * d);
    for (let r = 0; r < ids.length; r++) {
      out.set(k1.subarray(r * d1, (r + 1) * d1), r * d);
      out.set(k2.subarray(r * d2, (r + 1) * d2), r * d + d1);
    }
    return out;
  }

  /** Exact top-k slots by inner product for one query (length dim); 1 <= k <= n^2. */
  search(query: Float32Array, k: number, options: { level?: SimdLevel } = {}): ProductKeyResult {
    options = checkOptions('ProductKeyIndex.search', options, ['level']);
    checkFloat32Array('query', query);
    this.#check(query.length, k, 1);
    const kk = Math.min(k, this.subKeys);
    const opts: SearchOptions = { metric: 'ip', ...(options.level ? { level: options.level } : {}) };
    const d1 = this.keys1.dim;
    const r1 = this.keys1.search(query.subarray(0, d1), kk, opts);
    const r2 = this.keys2.search(query.subarray(d1), kk, opts);
    return combineProductKeys(this.subKeys, k, r1.ids, r1.scores, r2.ids, r2.scores);
  }

  /**
   * search() for many queries (concatenated): the table scans and the k x k
   * combination run natively on worker threads (same result as combineProductKeys).
   * Writes to either table are refused until the promise settles.
   */
  async searchBatch(queries: Float32Array, k: number, options: { threads?: number } = {}): Promise<ProductKeyBatchResult> {
    options = checkOptions('ProductKeyIndex.searchBatch', options, ['threads']);
    checkFloat32Array('queries', queries);
    const nq = queries.length / this.dim;
    this.#check(queries.length, k, nq);
    if (nq === 0) throw new InvalidArgumentError('queries is empty');
    const threads = options.threads === undefined ? undefined : checkInteger('threads', options.threads, 1, 1024);
    const r = await callNativeAsync(() => internalNative(this.keys1).productKeySearchAsync(internalNative(this.keys2), queries, k, threads));
    return { ids: r.ids, scores: r.scores, queries: nq, k };
  }

  #check(length: number, k: number, nq: number): void {
    if (this.keys1.size !== this.keys2.size) {
      throw new InvalidArgumentError(`the sub-key tables differ in length (${this.keys1.size} and ${this.keys2.size})`);
    }
    if (!Number.isInteger(nq) || length !== nq * this.dim) {
      throw new InvalidArgumentError(`query length ${length} must be a multiple of dim ${this.dim}`);
    }
    checkInteger('k', k, 1, 2 ** 32 - 1);
    if (k > this.size) throw new OutOfRangeError(`k must be in 1..${this.size} (n^2 slots), got ${k}`);
  }
}
