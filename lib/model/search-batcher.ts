/**
 * Micro-batching of exact searches (docs/serving.md, "Performance"): proofs running at
 * once (a prover serving several connections) each scan the whole key tensor for one or
 * a few queries; a scan of one query reads every row from memory for few flops. The
 * batcher joins the searches that arrive while a scan of the same tensor (and the same
 * k and options) is running into the next scan, one native searchBatch call over all
 * their queries, and hands each caller its own rows of the result.
 *
 * The answers are the same bits: the exact scan scores each (query, row) pair with one
 * accumulator whatever the grouping of queries (native/src/core/kernels_*.cc, "a pair's
 * score never depends on how queries were grouped") and its top-k breaks ties by the
 * lower id, so a query's ids do not depend on the other queries in its call
 * (test/serve-batching.test.ts compares with separate calls, and with a server without
 * the batcher). Only the exact index is batched; HNSW searches go through as they are.
 *
 * No timer: a search starts at once while fewer than `scans` scans of its kind run (no
 * latency added to a lone request, and two cores each run one); the ones that come
 * while that many run wait for the first to end and go together.
 * A scan that fails is retried query by query, so one caller's failure is its own.
 */
import type { BatchSearchOptions, SparseTensor } from '../tensor/sparse-tensor.js';

interface Waiter {
  queries: Float32Array;
  resolve: (ids: Uint32Array) => void;
  reject: (err: unknown) => void;
}

interface Lane {
  /** Scans of this lane running. */
  running: number;
  waiting: Waiter[];
}

export interface SearchBatcherOptions {
  /** Most queries in one joined scan (default 64); more wait for the next one. */
  maxQueries?: number;
  /** Scans of one tensor (and k, options) that run at once before searches wait to be joined (default 2). */
  scans?: number;
}

export class SearchBatcher {
  readonly maxQueries: number;
  readonly scans: number;
  readonly #lanes = new WeakMap<SparseTensor, Map<string, Lane>>();
  /** Scans made and queries searched (for tests and benchmarks). */
  readonly stats = { scans: 0, queries: 0 };

  constructor(options: SearchBatcherOptions = {}) {
    const m = options.maxQueries ?? 64;
    if (!Number.isInteger(m) || m < 1) throw new RangeError(`maxQueries must be a positive integer, got ${String(m)}`);
    this.maxQueries = m;
    const c = options.scans ?? 2;
    if (!Number.isInteger(c) || c < 1) throw new RangeError(`scans must be a positive integer, got ${String(c)}`);
    this.scans = c;
  }

  /** The ids of `tensor.searchBatch(queries, k, options)`: the top k of each query, concatenated. */
  search(tensor: SparseTensor, queries: Float32Array, k: number, options: BatchSearchOptions): Promise<Uint32Array> {
    if ((options.index ?? 'exact') !== 'exact') return tensor.searchBatch(queries, k, options).then((r) => r.ids);
    const key = `${k}|${options.metric ?? ''}|${options.level ?? ''}|${options.threads ?? ''}`;
    let lanes = this.#lanes.get(tensor);
    if (!lanes) this.#lanes.set(tensor, (lanes = new Map()));
    let lane = lanes.get(key);
    if (!lane) lanes.set(key, (lane = { running: 0, waiting: [] }));
    const l = lane;
    return new Promise<Uint32Array>((resolve, reject) => {
      l.waiting.push({ queries, resolve, reject });
      if (l.running < this.scans) this.#next(tensor, k, options, l);
    });
  }

  /** Runs the waiting searches of a lane (up to maxQueries, at least one) as one scan; when it ends, the next. */
  #next(tensor: SparseTensor, k: number, options: BatchSearchOptions, lane: Lane): void {
    if (lane.waiting.length === 0) return;
    lane.running++;
    const d = tensor.dim;
    const batch: Waiter[] = [];
    let rows = 0;
    while (lane.waiting.length > 0) {
      const n = lane.waiting[0]!.queries.length / d;
      if (batch.length > 0 && rows + n > this.maxQueries) break;
      batch.push(lane.waiting.shift()!);
      rows += n;
    }
    void this.#scan(tensor, k, options, batch, rows).finally(() => {
      lane.running--;
      this.#next(tensor, k, options, lane);
    });
  }

  async #scan(tensor: SparseTensor, k: number, options: BatchSearchOptions, batch: Waiter[], rows: number): Promise<void> {
    const d = tensor.dim;
    let joined: Float32Array;
    if (batch.length === 1) joined = batch[0]!.queries;
    else {
      joined = new Float32Array(rows * d);
      let o = 0;
      for (const w of batch) {
        joined.set(w.queries, o);
        o += w.queries.length;
      }
    }
    this.stats.scans++;
    this.stats.queries += rows;
    try {
      const { ids } = await tensor.searchBatch(joined, k, options);
      let o = 0;
      for (const w of batch) {
        const n = (w.queries.length / d) * k;
        w.resolve(batch.length === 1 ? ids : ids.slice(o, o + n));
        o += n;
      }
    } catch (err) {
      if (batch.length === 1) {
        batch[0]!.reject(err);
        return;
      }
      // One caller's bad query must not fail the others: each alone.
      await Promise.all(batch.map(async (w) => {
        try {
          w.resolve((await tensor.searchBatch(w.queries, k, options)).ids);
        } catch (e) {
          w.reject(e);
        }
      }));
    }
  }
}
