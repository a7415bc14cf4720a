/**
 * Incremental decoding with a KV cache (docs/lm.md, "Decoding with a KV cache";
 * docs/attention.md, "Decoding: a KV cache and an index over its keys").
 *
 * A `Decoder` runs a Model one new position at a time: every layer but attention and
 * positions works row by row, so it runs on the new row alone; a PositionEmbedding adds
 * the row of the new position; a causal SparseSelfAttention keeps the keys and values of
 * every earlier position (its KV cache, `AttentionDecoder`) and attends from the new
 * row's query. The cache is for contexts within the model's positions (learned absolute
 * positions make a sliding window a different function): a full context is
 * OutOfRangeError.
 *
 * Selection per head: 'exact' scans every cached key with the score tiles and heap of the
 * full forward (a step's attention is the full forward's last row over the same keys and
 * values, bit for bit; the logits are Model.forward's within f32 rounding, docs/lm.md);
 * 'hnsw' selects with the project's HNSW graph over the head's cached keys (inner
 * product, new keys inserted as they come; each returned score is exact, the selection
 * approximate); 'auto' scans exactly up to `indexThreshold` keys and switches to the
 * index past it; 'sketch' selects exactly what 'exact' selects (the same ids and scores, so
 * the same output bit for bit) from a certified first pass over a compact sketch of the keys
 * (native/src/core/key_sketch.h: int8 codes in a low-rank basis fitted to the keys, with a
 * bound on each key's error; only the keys the bound cannot rule out are scored exactly);
 * with `sketchBits: 4` the sketch has 4-bit codes and no bound, and selects approximately.
 */
import { allIds, checkFloat32Array, checkInteger, checkOptions, toIds } from '../../shared/args.js';
import { InvalidArgumentError, OutOfRangeError, callNative } from '../../shared/errors.js';
import { native, type NativeKeySketch } from '../../tensor/native.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { NO_KEY, SparseSelfAttention } from '../kinds/attention.js';
import { kindOf, type AnyLayerKind } from '../kinds/index.js';
import { PositionEmbedding } from '../kinds/position.js';
import type { LayerShape } from '../layer-kind.js';
import type { Model } from '../model.js';

/** How a decoding step selects each head's top-k keys. */
export type DecodeIndex = 'exact' | 'hnsw' | 'auto' | 'sketch';

export interface DecoderOptions {
  /**
   * 'exact' (default): scan every cached key; 'hnsw': an HNSW graph per head (approximate);
   * 'sketch': the exact selection through a key sketch (exact scan up to indexThreshold keys,
   * then the sketch, refitted in the background each time the cache doubles); 'auto': the
   * sketch past a larger default threshold (the context from which bench/decode.mjs measured
   * it faster than the scan). 'exact', 'sketch' and 'auto' select the same keys.
   */
  index?: DecodeIndex;
  /**
   * With 'sketch' or 'auto': the cached keys past which the sketch selects (its basis first
   * fitted to them; default 1,024 for 'sketch', AUTO_THRESHOLD for 'auto'). At least k.
   */
  indexThreshold?: number;
  /** With 'sketch' or 'auto': the basis size per head (1..headDim; default: the fewest dimensions keeping 99% of the keys' and queries' energy, per head, rounded up to a multiple of 4, or of 8 with sketchBits 4). */
  rank?: number;
  /**
   * With 'sketch' or 'auto': at most this many keys per head are scored exactly (>= k;
   * default: no limit, the exact selection): the maxScored best by sketch score. A head whose
   * certificate then fails keeps the top k of those, possibly missing keys (approximate,
   * stats().sketchCapped).
   */
  maxScored?: number;
  /**
   * With 'sketch': the sketch's codes. 8 (default): int8 codes and the certified bound (the
   * exact selection, unless maxScored caps it). 4: 4-bit codes and no bound, half the bytes
   * read a key and no norms: each head keeps the top k of its maxScored best by the 4-bit
   * sketch score (maxScored default 6 k), an approximate selection whose scores are exact
   * (docs/attention.md, "4-bit codes").
   */
  sketchBits?: 8 | 4;
  /** HNSW search breadth (default 256; at least the layer's k). */
  ef?: number;
  /** HNSW links per node (default 16). */
  M?: number;
  /** HNSW build breadth (default 100). */
  efConstruction?: number;
  /**
   * When a new key joins its head's HNSW graph: 'step' (default) links it in its own step;
   * 'batched' leaves it to the index's schedule (unlinked keys are scanned exactly by every
   * search; past max(256, N / 50) of them, half are linked in one refresh on the worker
   * threads), so most steps skip the insertion and a few pay for many.
   */
  link?: 'step' | 'batched';
  /** Longest context when the model has no PositionEmbedding (default 65,536). */
  maxLength?: number;
}

interface ResolvedIndexOptions {
  index: DecodeIndex;
  threshold: number;
  ef: number;
  M: number;
  efConstruction: number;
  link: 'step' | 'batched';
  rank: number; // 0: auto
  maxScored: number; // 0: no limit (bits 4: 0 until the constructor sets 6 k)
  bits: 8 | 4;
}

export const DECODER_OPTION_KEYS = ['index', 'indexThreshold', 'ef', 'M', 'efConstruction', 'link', 'rank', 'maxScored', 'sketchBits', 'maxLength'] as const;

function resolveIndexOptions(o: DecoderOptions): ResolvedIndexOptions & { maxLength: number | undefined } {
  checkOptions('decoder', o, DECODER_OPTION_KEYS);
  const index = o.index ?? 'exact';
  if (index !== 'exact' && index !== 'hnsw' && index !== 'auto' && index !== 'sketch') throw new InvalidArgumentError(`index must be 'exact', 'hnsw', 'auto' or 'sketch', got ${String(index)}`);
  if (index !== 'auto' && index !== 'sketch' && o.indexThreshold !== undefined) throw new InvalidArgumentError("indexThreshold applies to index 'auto' or 'sketch' only");
  const sketch = index === 'sketch' || index === 'auto';
  if (o.link !== undefined && o.link !== 'step' && o.link !== 'batched') throw new InvalidArgumentError(`link must be 'step' or 'batched', got ${String(o.link)}`);
  if (index !== 'hnsw') for (const key of ['ef', 'M', 'efConstruction', 'link'] as const) if (o[key] !== undefined) throw new InvalidArgumentError(`${key} applies to index 'hnsw' only`);
  for (const key of ['rank', 'maxScored'] as const) if (!sketch && o[key] !== undefined) throw new InvalidArgumentError(`${key} applies to index 'sketch' or 'auto' only`);
  if (o.sketchBits !== undefined && index !== 'sketch') throw new InvalidArgumentError("sketchBits applies to index 'sketch' only ('auto' selects exactly)");
  if (o.sketchBits !== undefined && o.sketchBits !== 8 && o.sketchBits !== 4) throw new InvalidArgumentError(`sketchBits must be 8 or 4, got ${String(o.sketchBits)}`);
  return {
    index,
    threshold: checkInteger('indexThreshold', o.indexThreshold ?? (index === 'auto' ? AUTO_THRESHOLD : 1024), 1, 2 ** 24),
    ef: checkInteger('ef', o.ef ?? 256, 1, 1_000_000),
    M: checkInteger('M', o.M ?? 16, 2, 256),
    efConstruction: checkInteger('efConstruction', o.efConstruction ?? 100, 1, 100_000),
    link: o.link ?? 'step',
    rank: o.rank === undefined ? 0 : checkInteger('rank', o.rank, 1, 4096),
    maxScored: o.maxScored === undefined ? 0 : checkInteger('maxScored', o.maxScored, 1, 2 ** 24),
    bits: o.sketchBits ?? 8,
    maxLength: o.maxLength === undefined ? undefined : checkInteger('maxLength', o.maxLength, 1, 2 ** 24),
  };
}

/**
 * Index 'auto': the cached keys past which the sketch selects (bench/decode.mjs and
 * bench/decode-trained.mjs: at 1k and 4k keys the exact scan was as fast or faster on some
 * inputs; from 16k on the sketch was faster on all but one run; docs/attention.md "The key sketch").
 */
export const AUTO_THRESHOLD = 16_384;

/** Keys per packed block (native kDecodeKeyBlock). */
const KEY_BLOCK = 256;
/** Queries kept for the key sketch's fit (native kSketchQuerySample). */
const QUERY_SAMPLE = 2048;

/** What one attention layer's cache holds and how its last step selected. */
export interface AttentionDecoderStats {
  /** Cached positions. */
  length: number;
  /** True once the HNSW graphs select (index 'hnsw', or 'auto' past the threshold). */
  indexed: boolean;
  /** Steps that selected with the index, and with the exact scan. */
  indexedSteps: number;
  exactSteps: number;
  /** Index 'sketch': keys scored exactly by the last sketch step, over the heads (null before one). */
  sketchCandidates: number | null;
  /** Index 'sketch': the basis size per head (empty before the sketch is fitted). */
  sketchRanks: number[];
  /** Index 'sketch' with maxScored: heads of the last sketch step whose certificate failed within the limit (their selection approximate). */
  sketchCapped: number;
  /** Index 'sketch': refits completed since the first fit (each amortised over the steps after a doubling of the cache). */
  sketchRefits: number;
  /** Index 'sketch': the bits of its codes (8 or 4, DecoderOptions.sketchBits; null before the sketch is fitted). */
  sketchBits: number | null;
}

/**
 * The KV cache of one causal SparseSelfAttention layer, and per head an optional HNSW
 * graph over its cached keys. `step(x)` appends the row's key and value and returns the
 * layer's output for it (attending to every cached position, itself included).
 */
export class AttentionDecoder {
  readonly layer: SparseSelfAttention;
  readonly dIn: number;
  readonly D: number;
  readonly headDim: number;
  readonly maxLength: number;
  readonly #scale: number;
  readonly #opt: ResolvedIndexOptions;
  #length = 0;
  #cap = 0;
  #keys = new Float32Array(0); // packed block-major (native decode layout)
  #values = new Float32Array(0); // L x D
  #heads: SparseTensor[] | null = null; // per head the cached keys (index 'hnsw' / 'auto')
  #sketch: NativeKeySketch | null = null; // index 'sketch', once fitted
  #sketchFitAt = 0; // cached keys when the sketch was last fitted
  #sketchCandidates: number | null = null;
  #sketchCapped = 0;
  // Index 'sketch' / 'auto': the latest queries (up to QUERY_SAMPLE rows, a ring) of the
  // prefills (a strided sample of each) and of the steps before the sketch exists, handed to
  // keySketchNew so its bases fit the queries too (native/src/core/key_sketch.h, observe()).
  #qRing: Float32Array | null = null;
  #qCount = 0;
  #qNext = 0;
  #weights: (Float32Array | undefined)[] = []; // dense q, k, v projection weights, copied at the first step
  #indexed = false;
  #indexedSteps = 0;
  #exactSteps = 0;

  /** `dIn`: the layer's input width (its projections', else the row width). */
  constructor(layer: SparseSelfAttention, options: DecoderOptions & { dIn?: number } = {}) {
    if (!(layer instanceof SparseSelfAttention)) throw new InvalidArgumentError('layer must be a SparseSelfAttention');
    const { dIn: given, ...rest } = options;
    const r = resolveIndexOptions(rest);
    if (!layer.causal) throw new InvalidArgumentError('a KV cache needs a causal layer (a new row would change the outputs of earlier rows)');
    const dIn = layer.inDim ?? (given === undefined ? null : checkInteger('dIn', given, 1, 2 ** 20));
    if (dIn === null) throw new InvalidArgumentError('a layer without projections needs dIn (its row width)');
    if (layer.inDim !== null && given !== undefined && given !== layer.inDim) throw new InvalidArgumentError(`dIn ${given} does not match the projections' input width ${layer.inDim}`);
    if (layer.mode === 'dense' && r.index !== 'exact') throw new InvalidArgumentError("a dense layer attends to every key: index must be 'exact'");
    this.layer = layer;
    this.dIn = dIn;
    this.D = layer.widths(dIn).D;
    if (this.D % layer.heads !== 0) throw new InvalidArgumentError(`the attention width ${this.D} must be a multiple of heads (${layer.heads})`);
    this.headDim = this.D / layer.heads;
    this.maxLength = r.maxLength ?? 2 ** 16;
    if (r.index === 'hnsw' && r.ef < layer.k) throw new OutOfRangeError(`ef must be >= the layer's k (${layer.k}), got ${r.ef}`);
    if (r.maxScored !== 0 && r.maxScored < layer.k) throw new OutOfRangeError(`maxScored must be >= the layer's k (${layer.k}), got ${r.maxScored}`);
    if (r.bits === 4 && r.maxScored === 0) r.maxScored = 6 * layer.k; // bench/decode.mjs: recall 0.975-0.999 at 64k
    if (r.rank > this.headDim) throw new OutOfRangeError(`rank must be <= headDim (${this.headDim}), got ${r.rank}`);
    if ((r.index === 'auto' || r.index === 'sketch') && r.threshold < layer.k) throw new OutOfRangeError(`indexThreshold must be >= the layer's k (${layer.k}), got ${r.threshold}`);
    this.#opt = r;
    this.#scale = layer.scale ?? 1 / Math.sqrt(this.headDim);
    if (r.index === 'hnsw') this.#heads = Array.from({ length: layer.heads }, () => SparseTensor.create(this.headDim, { metric: 'ip' }));
  }

  get length(): number {
    return this.#length;
  }

  /** The HNSW search breadth (index 'hnsw'); may be changed between steps (>= k). */
  get ef(): number {
    return this.#opt.ef;
  }
  set ef(ef: number) {
    if (this.#heads === null) throw new InvalidArgumentError("ef applies to index 'hnsw' only");
    const e = checkInteger('ef', ef, 1, 1_000_000);
    if (e < this.layer.k) throw new OutOfRangeError(`ef must be >= the layer's k (${this.layer.k}), got ${e}`);
    this.#opt.ef = e;
  }

  /** When new keys join the graphs (DecoderOptions.link); may be changed between steps. */
  get link(): 'step' | 'batched' {
    return this.#opt.link;
  }
  set link(link: 'step' | 'batched') {
    if (this.#heads === null) throw new InvalidArgumentError("link applies to index 'hnsw' only");
    if (link !== 'step' && link !== 'batched') throw new InvalidArgumentError(`link must be 'step' or 'batched', got ${String(link)}`);
    this.#opt.link = link;
  }

  stats(): AttentionDecoderStats {
    const info = this.#sketch === null ? null : native().keySketchInfo(this.#sketch);
    const ranks = info === null ? [] : info.ranks;
    return { length: this.#length, indexed: this.#indexed, indexedSteps: this.#indexedSteps, exactSteps: this.#exactSteps, sketchCandidates: this.#sketchCandidates, sketchRanks: ranks, sketchCapped: this.#sketchCapped, sketchRefits: info === null ? 0 : info.refits, sketchBits: info === null ? null : info.bits };
  }

  #grow(need: number): void {
    if (need <= this.#cap) return;
    const cap = Math.min(Math.max(need, 2 * this.#cap, KEY_BLOCK), Math.ceil(this.maxLength / KEY_BLOCK) * KEY_BLOCK);
    const blocks = Math.ceil(cap / KEY_BLOCK);
    const keys = new Float32Array(blocks * KEY_BLOCK * this.D);
    keys.set(this.#keys);
    const values = new Float32Array(blocks * KEY_BLOCK * this.D); // #cap rows (a prefill of a non-multiple of 256 rows overflowed at its next step)
    values.set(this.#values);
    this.#keys = keys;
    this.#values = values;
    this.#cap = blocks * KEY_BLOCK;
  }

  /** Appends n positions' keys and values (n x D each, the K and V streams). */
  #appendKV(k: Float32Array, v: Float32Array, n: number): void {
    const D = this.D, H = this.layer.heads, dk = this.headDim, L = this.#length;
    this.#grow(L + n);
    for (let r = 0; r < n; r++) {
      const j = L + r, b = Math.floor(j / KEY_BLOCK), c = j % KEY_BLOCK;
      for (let h = 0; h < H; h++) {
        const base = (b * H + h) * dk * KEY_BLOCK + c;
        for (let t = 0; t < dk; t++) this.#keys[base + t * KEY_BLOCK] = k[r * D + h * dk + t]!;
      }
    }
    this.#values.set(v.subarray(0, n * D), L * D);
    if (this.#heads !== null) {
      for (let h = 0; h < H; h++) {
        const rows = new Float32Array(n * dk);
        for (let r = 0; r < n; r++) rows.set(k.subarray(r * D + h * dk, r * D + (h + 1) * dk), r * dk);
        this.#heads[h]!.append(rows);
      }
    }
    this.#length = L + n;
  }

  async #project(x: Float32Array): Promise<{ q: Float32Array; k: Float32Array; v: Float32Array }> {
    const l = this.layer;
    // As SparseSelfAttention.forward: each stream is its projection of x, or x itself. A dense
    // projection of a step's one row runs on this thread (linear_forward, the bits of
    // Projection.forward's worker job) rather than waiting for a worker.
    const one = x.length === this.dIn;
    const [q, k, v] = await Promise.all([l.query, l.key, l.value].map(async (p, i) => {
      if (p === null) return x;
      if (one && p.full) {
        // The weights as at the decoder's first step (a copy per step cost as much as the
        // three projections themselves at D = 256: bench/decode.mjs). A layer trained after
        // that needs a new decoder, as its cached keys and values would be stale too.
        const w = (this.#weights[i] ??= p.weight.gather(allIds(p.outDim)));
        return callNative(() => native().linear(1, p.outDim, p.inDim, x, w));
      }
      return (await p.forward(x)).y;
    }));
    return { q: q!, k: k!, v: v! };
  }

  #checkRows(x: Float32Array): number {
    checkFloat32Array('x', x);
    if (x.length === 0 || x.length % this.dIn !== 0) throw new InvalidArgumentError(`x length ${x.length} must be a positive multiple of ${this.dIn}`);
    for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new InvalidArgumentError(`x[${i}] is not finite`);
    const n = x.length / this.dIn;
    if (this.#length + n > this.maxLength) throw new OutOfRangeError(`the context is full: ${this.#length} cached positions + ${n} > ${this.maxLength}`);
    return n;
  }

  /**
   * Caches the keys and values of n rows (n x dIn) without computing their outputs:
   * a context whose outputs are not needed (a benchmark's filler, a single layer's prompt).
   */
  async prefill(x: Float32Array): Promise<void> {
    const n = this.#checkRows(x);
    const { k, v } = await this.#project(x);
    if (this.#opt.index === 'sketch' || this.#opt.index === 'auto') {
      // The queries of a strided sample of the rows (the prefill computes no query otherwise).
      const ns = Math.min(n, QUERY_SAMPLE), xs = new Float32Array(ns * this.dIn);
      for (let i = 0; i < ns; i++) {
        const j = Math.floor((i * n) / ns);
        xs.set(x.subarray(j * this.dIn, (j + 1) * this.dIn), i * this.dIn);
      }
      const qp = this.layer.query;
      this.#observe(qp === null ? xs : (await qp.forward(xs)).y, ns);
    }
    this.#appendKV(k, v, n);
    await this.#maybeBuild(n > 1);
  }

  /** Adds n query rows (n x D) to the ring of queries for the sketch's fit. */
  #observe(q: Float32Array, n: number): void {
    const D = this.D, cap = Math.min(QUERY_SAMPLE, this.maxLength);
    this.#qRing ??= new Float32Array(cap * D);
    for (let i = Math.max(0, n - cap); i < n; i++) {
      this.#qRing.set(q.subarray(i * D, (i + 1) * D), this.#qNext * D);
      this.#qNext = (this.#qNext + 1) % cap;
      this.#qCount = Math.min(this.#qCount + 1, cap);
    }
  }

  /** bulk: a prefill of several rows (a refit may run whole, as the prefill's own cost grows with it). */
  async #maybeBuild(bulk = false): Promise<void> {
    const o = this.#opt;
    if (o.index === 'sketch' || o.index === 'auto') {
      const L = this.#length;
      if (L <= o.threshold) return;
      // Fitted to every cached key when the threshold is first passed; refitted each time the
      // cache doubles (the basis then follows the keys; a stale one costs candidates, never
      // exactness). In a step the refit is amortised (key_sketch.h, refit(): one head's basis,
      // then 32 earlier keys, per step, the old basis selecting meanwhile), so no step pays for
      // a whole refit; a prefill of many rows refits at once.
      const sk = this.#sketch;
      if (sk === null || (bulk && L >= 2 * this.#sketchFitAt)) {
        const qs = this.#qRing === null ? undefined : this.#qRing.subarray(0, this.#qCount * this.D);
        this.#sketch = callNative(() => native().keySketchNew(this.layer.heads, this.headDim, o.rank, this.#keys, L, qs, o.bits));
        this.#sketchFitAt = L;
        this.#indexed = true;
        return;
      }
      if (L >= 2 * this.#sketchFitAt) {
        callNative(() => native().keySketchRefit(sk, L - 1));
        this.#sketchFitAt = L;
      }
      callNative(() => native().keySketchAppend(sk, this.#keys, L));
      return;
    }
    if (this.#heads === null || this.#indexed) return;
    const start = this.layer.k + 1;
    if (this.#length < start) return;
    for (const t of this.#heads) await t.buildHnsw({ metric: 'ip', M: o.M, efConstruction: o.efConstruction, seed: 100 });
    this.#indexed = true;
  }

  /** The layer's output for one new row x (dIn values): appends its key and value, then attends. */
  async step(x: Float32Array): Promise<Float32Array> {
    const n = this.#checkRows(x);
    if (n !== 1) throw new InvalidArgumentError(`step takes one row (${this.dIn} values), got ${n}`);
    const { q, k, v } = await this.#project(x);
    // Before the sketch exists its fit's queries are kept here; after, it observes those it serves.
    if (this.#sketch === null && (this.#opt.index === 'sketch' || this.#opt.index === 'auto')) this.#observe(q, 1);
    this.#appendKV(k, v, 1);
    await this.#maybeBuild();
    // The new key is linked into each head's graph now (one insertion per head and step), so
    // a step's cost includes the index's upkeep and no backlog of unlinked keys builds up.
    if (this.#indexed && this.#heads !== null && this.#opt.link === 'step') for (const t of this.#heads!) t.refreshHnsw(1, { threads: 1 });
    const l = this.layer, L = this.#length, H = l.heads, dk = this.headDim;
    const kk = l.mode === 'dense' ? 0 : l.k;
    let r: { out: Float32Array };
    if (this.#sketch !== null && L > kk) {
      const sk = this.#sketch;
      const s = callNative(() => native().keySketchSelect(sk, q, this.#keys, kk, this.#opt.maxScored));
      this.#sketchCandidates = s.candidates;
      this.#sketchCapped = s.capped;
      r = callNative(() => native().attentionDecode(L, H, dk, kk, this.#scale, q, this.#keys, this.#values, s.ids, s.scores));
      this.#indexedSteps++;
    } else if (this.#indexed && this.#heads !== null && L > kk) {
      const ids = new Uint32Array(H * kk).fill(NO_KEY), scores = new Float32Array(H * kk);
      for (let h = 0; h < H; h++) {
        const s = this.#heads![h]!.search(q.subarray(h * dk, (h + 1) * dk), kk, { index: 'hnsw', ef: this.#opt.ef });
        ids.set(s.ids, h * kk);
        scores.set(s.scores, h * kk);
      }
      r = callNative(() => native().attentionDecode(L, H, dk, kk, this.#scale, q, this.#keys, this.#values, ids, scores));
      this.#indexedSteps++;
    } else {
      r = callNative(() => native().attentionDecode(L, H, dk, kk, this.#scale, q, this.#keys, this.#values));
      this.#exactSteps++;
    }
    return l.output === null ? r.out : (await l.output.forward(r.out)).y;
  }

  /**
   * The exact selection of the last step's query (per head, ids best first) for a query q
   * (D values) over the current cache: the reference an index's recall is measured against.
   */
  exactSelection(q: Float32Array): Uint32Array {
    checkFloat32Array('q', q);
    if (q.length !== this.D) throw new InvalidArgumentError(`q must hold ${this.D} values`);
    if (this.#length === 0) throw new OutOfRangeError('the cache is empty');
    const kk = this.layer.mode === 'dense' ? 0 : this.layer.k;
    if (kk === 0) throw new InvalidArgumentError('a dense layer selects no keys');
    return callNative(() => native().attentionDecode(this.#length, this.layer.heads, this.headDim, kk, this.#scale, q, this.#keys, this.#values)).ids;
  }

  /** The selection the index makes for q (per head, ids best first); null before the index is built. */
  indexSelection(q: Float32Array): Uint32Array | null {
    checkFloat32Array('q', q);
    if (q.length !== this.D) throw new InvalidArgumentError(`q must hold ${this.D} values`);
    if (!this.#indexed) return null;
    if (this.#sketch !== null) {
      const sk = this.#sketch;
      return callNative(() => native().keySketchSelect(sk, q, this.#keys, this.layer.k, this.#opt.maxScored, false)).ids;
    }
    const H = this.layer.heads, dk = this.headDim, kk = Math.min(this.layer.k, this.#length);
    const ids = new Uint32Array(H * this.layer.k).fill(NO_KEY);
    for (let h = 0; h < H; h++) ids.set(this.#heads![h]!.search(q.subarray(h * dk, (h + 1) * dk), kk, { index: 'hnsw', ef: this.#opt.ef }).ids, h * this.layer.k);
    return ids;
  }
}

/** What a Decoder's attention layers hold. */
export interface DecoderStats {
  /** Positions decoded. */
  length: number;
  /** The longest context (the model's positions). */
  maxLength: number;
  /** Per attention layer, in model order. */
  attention: AttentionDecoderStats[];
}

/**
 * A Model decoded one position at a time (see the file comment). `step(token)` returns the
 * logits (or the last layer's row) of the new position.
 */
export class Decoder {
  readonly model: Model;
  readonly maxLength: number;
  readonly #kinds: AnyLayerKind[];
  readonly #shapes: LayerShape[];
  readonly #attention: Map<number, AttentionDecoder>;
  #length = 0;
  #busy = false;

  constructor(model: Model, options: DecoderOptions = {}) {
    const r = resolveIndexOptions(options);
    this.model = model;
    const layers = model.layers;
    const kinds: AnyLayerKind[] = [];
    const shapes: LayerShape[] = [];
    let modelInput = -1;
    let positions: number | null = null;
    // The shapes as Model's constructor finds them.
    layers.forEach((l, i) => {
      const kind = kindOf(l, `layer ${i}`);
      const from = model.inputs[i]![0]!;
      const w = from === -1 ? (i === 0 ? -1 : modelInput) : shapes[from]!.outWidth;
      const shape = kind.shape(l, i, w);
      if (i === 0) modelInput = shape.inWidth;
      kinds.push(kind);
      shapes.push(shape);
      if (l instanceof PositionEmbedding) positions = positions === null ? l.maxLength : Math.min(positions, l.maxLength);
    });
    if (positions !== null && r.maxLength !== undefined) throw new InvalidArgumentError(`maxLength: the model's positions fix the context (${positions})`);
    this.maxLength = positions ?? r.maxLength ?? 2 ** 16;
    const attention = new Map<number, AttentionDecoder>();
    const { maxLength: _unused, ...indexOptions } = options;
    layers.forEach((l, i) => {
      if (l instanceof SparseSelfAttention) attention.set(i, new AttentionDecoder(l, { ...indexOptions, dIn: shapes[i]!.inWidth, maxLength: this.maxLength }));
    });
    this.#kinds = kinds;
    this.#shapes = shapes;
    this.#attention = attention;
  }

  /** Positions decoded so far. */
  get length(): number {
    return this.#length;
  }

  stats(): DecoderStats {
    return { length: this.#length, maxLength: this.maxLength, attention: [...this.#attention.values()].map((a) => a.stats()) };
  }

  /** The attention layers' caches, in model order. */
  get attention(): readonly AttentionDecoder[] {
    return [...this.#attention.values()];
  }

  /** Appends one position (a token id for an Embedding-first model, else a row) and returns its output row. */
  async step(input: number | Float32Array): Promise<Float32Array> {
    if (this.#busy) throw new InvalidArgumentError('a decoder runs one step at a time: await the previous step');
    if (this.#length >= this.maxLength) throw new OutOfRangeError(`the context is full: ${this.#length} of ${this.maxLength} positions decoded`);
    const w0 = this.#shapes[0]!.inWidth;
    let x: Float32Array | Uint32Array;
    if (w0 === -1) {
      if (typeof input !== 'number') throw new InvalidArgumentError('this model takes token ids: step(token)');
      x = toIds('token', [input]);
    } else {
      if (!(input instanceof Float32Array) || input.length !== w0) throw new InvalidArgumentError(`this model takes rows: step(Float32Array of ${w0})`);
      for (let i = 0; i < input.length; i++) if (!Number.isFinite(input[i]!)) throw new InvalidArgumentError(`input[${i}] is not finite`);
      x = input;
    }
    this.#busy = true;
    try {
      const pos = this.#length;
      const outs: Float32Array[] = [];
      for (const [i, l] of this.model.layers.entries()) {
        const [first, ...others] = this.model.inputs[i]!.map((j) => (j === -1 ? x : outs[j]!));
        let y: Float32Array;
        if (l instanceof PositionEmbedding) {
          y = callNative(() => native().canonicalJoin(first as Float32Array, l.table.gather([pos]), 'add'));
        } else if (l instanceof SparseSelfAttention) {
          y = await this.#attention.get(i)!.step(first as Float32Array);
        } else {
          y = (await this.#kinds[i]!.forward(l, first!, this.#shapes[i]!, others as Float32Array[])).y;
        }
        outs.push(y);
      }
      this.#length = pos + 1;
      return outs[outs.length - 1]!;
    } finally {
      this.#busy = false;
    }
  }

  /** Steps through `tokens` in order; returns the output row of the last. */
  async append(tokens: Uint32Array | readonly number[]): Promise<Float32Array> {
    const ids = toIds('tokens', tokens);
    if (ids.length === 0) throw new InvalidArgumentError('tokens is empty');
    if (this.#length + ids.length > this.maxLength) throw new OutOfRangeError(`the context is full: ${this.#length} + ${ids.length} positions > ${this.maxLength}`);
    let y: Float32Array | null = null;
    for (const t of ids) y = await this.step(t);
    return y!;
  }
}

/** A Decoder over `model` (see Decoder). */
export function decoder(model: Model, options: DecoderOptions = {}): Decoder {
  return new Decoder(model, options);
}
