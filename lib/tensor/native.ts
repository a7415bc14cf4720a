/**
 * Loads the addon through node-gyp-build: a prebuilt binary from prebuilds/ when
 * one matches this platform, else build/Release from a local compile.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { NativeError } from '../shared/errors.js';
import type { HnswOptions } from './sparse-tensor.js';

export type NativeMetric = 'ip' | 'cosine' | 'l2';
export type NativeSimdLevel = 'scalar' | 'avx2' | 'avx512' | 'neon';

export interface NativeSearchResult {
  ids: Uint32Array;
  scores: Float32Array;
}

export interface NativeTensor {
  size(): number;
  dim(): number;
  capacity(): number;
  isAdopted(): boolean;
  reserve(capacity: number): void;
  append(rows: Float32Array): number;
  rowView(id: number): Float32Array;
  /** Rows `ids` into a new array, or into `into` (exactly ids.length * dim floats, overlapping neither the storage nor ids), which it returns. */
  gather(ids: Uint32Array, into?: Float32Array): Float32Array;
  set(ids: Uint32Array, values: Float32Array): void;
  add(ids: Uint32Array, deltas: Float32Array): void;
  search(query: Float32Array, k: number, metric: NativeMetric, level: NativeSimdLevel | undefined, threads?: number): NativeSearchResult;
  searchBatch(
    queries: Float32Array,
    k: number,
    metric: NativeMetric,
    level: NativeSimdLevel | undefined,
    threads: number | undefined,
  ): NativeSearchResult;
  searchBatchAsync(
    queries: Float32Array,
    k: number,
    metric: NativeMetric,
    level: NativeSimdLevel | undefined,
    threads: number | undefined,
  ): Promise<NativeSearchResult>;
  /** The write version and how often the exact cosine scan's row norms were computed (-1: no cache, adopted memory). */
  normCacheInfo(): { version: number; fills: number };
  commit(threads: number | undefined): void;
  commitAsync(threads: number | undefined): Promise<void>;
  isCommitted(): boolean;
  root(): Uint8Array;
  prove(ids: Uint32Array): Uint8Array;
  hnswBuildAsync(options: NativeHnswOptions, threads: number | undefined): Promise<void>;
  hnswLoad(path: string, options: NativeHnswOptions): void;
  hnswSave(path: string): void;
  hnswStats(): NativeHnswStats | null;
  hnswSearch(query: Float32Array, k: number, ef: number | undefined): NativeSearchResult;
  hnswSearchBatchAsync(queries: Float32Array, k: number, ef: number | undefined, threads: number | undefined): Promise<NativeSearchResult>;
  hnswRefresh(budget: number, threads: number | undefined): number;
  hnswRefreshAsync(budget: number, threads: number | undefined): Promise<number>;
  productKeySearchAsync(
    keys2: NativeTensor,
    queries: Float32Array,
    k: number,
    threads: number | undefined,
  ): Promise<{ ids: Uint32Array; scores: Float64Array }>;
  saveFileAsync(path: string, optimizerState: boolean, threads: number | undefined): Promise<void>;
  fileCheckpoint(compactBytes: number, compactRows: number): number;
  fileCheckpointAsync(compactBytes: number, compactRows: number, forceCompact: boolean): Promise<number>;
  fileCompact(): void;
  fileClose(): void;
  fileInfo(): NativeFileInfo | null;
  optimInit(options: NativeOptimizerOptions, replace: boolean): void;
  optimDetach(): void;
  optimStep(ids: Uint32Array, grads: Float32Array): number;
  optimCheck(ids: Uint32Array, grads: Float32Array): void;
  optimStepAsync(ids: Uint32Array, grads: Float32Array): Promise<number>;
  optimState(ids: Uint32Array): { m: Float32Array; v: Float32Array; steps: Uint32Array; marks: Float64Array };
  optimRestore(ids: Uint32Array, values: Float32Array, m: Float32Array, v: Float32Array, steps: Uint32Array, marks: Float64Array, globalStep: number, logDecay: number): void;
  optimSetLr(lr: number): void;
  optimInfo(): NativeOptimizerInfo | null;
  denseHopfieldForwardAsync(
    values: NativeTensor,
    queries: Float32Array,
    beta: number,
    metric: NativeMetric,
    threads: number | undefined,
  ): Promise<{ y: Float32Array; lse: Float32Array }>;
  denseHopfieldBackwardAsync(
    values: NativeTensor,
    queries: Float32Array,
    beta: number,
    metric: NativeMetric,
    threads: number | undefined,
    y: Float32Array,
    lse: Float32Array,
    dy: Float32Array,
  ): Promise<{ dQ: Float32Array; dK: Float32Array; dV: Float32Array; dBeta: number }>;
}

/** HnswOptions as the addon takes them: the metric resolved, threads passed apart. */
export type NativeHnswOptions = Omit<HnswOptions, 'metric' | 'threads'> & { metric: NativeMetric };

export interface NativeOptimizerOptions {
  kind: 'adam' | 'sgd';
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  biasCorrection?: 'row' | 'global';
}

export interface NativeOptimizerInfo {
  kind: 'adam' | 'sgd';
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  biasCorrection: 'row' | 'global';
  /** Steps taken (the global step count). */
  steps: number;
  /** Sum over the steps of log(1 - lr * weightDecay), canonical log1p (0 without weight decay). */
  logDecay: number;
}

export interface NativeHnswStats {
  metric: NativeMetric;
  M: number;
  efConstruction: number;
  driftThreshold: number;
  /** Candidates searched to re-link a moved row (0: efConstruction). */
  relinkEf: number;
  inGraph: number;
  dirty: number;
  refreshed: number;
}

export interface NativeFileInfo {
  seq: number;
  compactedSeq: number;
  walBytes: number;
  pendingRows: number;
  uncompactedRows: number;
  replayedRecords: number;
  wasClean: boolean;
  verified: boolean;
  writable: boolean;
  optimizerState: boolean;
  closed: boolean;
  /** 1, or 2 when the file carries a check per row over its optimizer state. */
  formatVersion: number;
  /** Rows checked against the stored tree on their first read since open. */
  rowsChecked: number;
}

/** An opened tensor file not yet wrapped by a NativeTensor (opaque). */
export type NativeOpenedFile = { readonly __openedFile: unique symbol };
/** An opaque key sketch (keySketchNew). */
export type NativeKeySketch = { readonly __keySketch: unique symbol };

export interface NativeFileOpenOptions {
  readOnly?: boolean;
  verify?: boolean;
  uncheckedReads?: boolean;
  threads?: number;
}

export interface NativeTensorConstructor {
  new (file: NativeOpenedFile): NativeTensor;
  new (dim: number, capacity?: number): NativeTensor;
  new (dim: number, data: Float32Array, adopt: boolean): NativeTensor;
}

export interface NativeSimdInfo {
  level: NativeSimdLevel;
  supported: NativeSimdLevel[];
  compiled: NativeSimdLevel[];
  envError: string | null;
  threads: number;
  blake3: string;
  blake3Simd: string;
}

export interface NativeAddon {
  NativeTensor: NativeTensorConstructor;
  simdInfo(): NativeSimdInfo;
  /** For 'sum', `a` may be a native tensor: the sum of its rows where they are stored. */
  kernelPair(op: 'dot' | 'l2' | 'sum', level: NativeSimdLevel | undefined, a: Float32Array | NativeTensor, b?: Float32Array): number;
  kernelBlock(
    op: 'dot' | 'l2',
    level: NativeSimdLevel | undefined,
    Q: Float32Array,
    R: Float32Array,
    d: number,
    repeat?: number,
  ): Float32Array;
  blake3(bytes: Uint8Array): Uint8Array;
  merkleRoot(data: Float32Array, dim: number, threads?: number): Uint8Array;
  merkleVerify(root: Uint8Array, n: number, dim: number, ids: Uint32Array, leaves: Float32Array, proof: Uint8Array): boolean;
  attentionForwardAsync(
    n: number, heads: number, headDim: number, k: number, causal: boolean, scale: number, threads: number | undefined,
    q: Float32Array, key: Float32Array, v: Float32Array,
  ): Promise<{ out: Float32Array; ids?: Uint32Array; weights?: Float32Array; lse?: Float32Array }>;
  attentionBackwardAsync(
    n: number, heads: number, headDim: number, k: number, causal: boolean, scale: number, threads: number | undefined,
    q: Float32Array, key: Float32Array, v: Float32Array, dOut: Float32Array, a: Uint32Array | Float32Array, b: Float32Array,
  ): Promise<{ dq: Float32Array; dk: Float32Array; dv: Float32Array }>;
  linear(n: number, outDim: number, inDim: number, x: Float32Array, weight: Float32Array): Float32Array;
  attentionDecode(
    L: number, heads: number, headDim: number, k: number, scale: number, q: Float32Array, keysPacked: Float32Array, values: Float32Array,
    selIds?: Uint32Array, selScores?: Float32Array,
  ): { out: Float32Array; ids: Uint32Array; weights: Float32Array };
  /** A key sketch over a decode cache's packed keys (native/src/core/key_sketch.h); rank 0: auto. */
  keySketchNew(heads: number, headDim: number, rank: number, keysPacked: Float32Array, L: number, queries?: Float32Array, bits?: 8 | 4): NativeKeySketch;
  keySketchAppend(sketch: NativeKeySketch, keysPacked: Float32Array, L: number): void;
  keySketchSelect(sketch: NativeKeySketch, q: Float32Array, keysPacked: Float32Array, k: number, maxScored?: number, observe?: boolean): { ids: Uint32Array; scores: Float32Array; candidates: number; capped: number };
  keySketchRefit(sketch: NativeKeySketch, L: number): void;
  keySketchInfo(sketch: NativeKeySketch): { length: number; ranks: number[]; bytes: number; refitting: boolean; refits: number; bits: number };
  linearAsync(n: number, outDim: number, inDim: number, threads: number | undefined, x: Float32Array, weight: Float32Array): Promise<{ y: Float32Array }>;
  linearBackwardAsync(
    n: number, outDim: number, inDim: number, threads: number | undefined, x: Float32Array, weight: Float32Array, dY: Float32Array,
  ): Promise<{ dx: Float32Array; dw: Float32Array }>;
  hopfieldMixAsync(B: number, k: number, w: number, rows: Float32Array, s: Float32Array, beta: number, threads: number | undefined): Promise<{ weights: Float32Array; out: Float32Array }>;
  hopfieldMixBackwardAsync(
    B: number, k: number, w: number, rows: Float32Array, s: Float32Array, beta: number, threads: number | undefined,
    weights: Float32Array, out: Float32Array, dOut: Float32Array,
  ): Promise<{ dRows: Float32Array; ds: Float32Array; dBeta: number }>;
  hopfieldKeyBackwardAsync(
    B: number, k: number, d: number, keys: Float32Array, s: Float32Array, metric: NativeMetric, threads: number | undefined,
    q: Float32Array, ds: Float32Array,
  ): Promise<{ dq: Float32Array; dKeys: Float32Array }>;
  merkleKeys(): { leaf: Uint8Array; node: Uint8Array; root: Uint8Array };
  canonicalMath(x: Float64Array, which: 'exp' | 'log1pNeg'): Float64Array;
  canonicalPowi(b: number, t: number): number;
  canonicalStates(x: Float32Array, B: number, d: number, normalize: boolean): Float64Array;
  /** `at` (B x k): pair p reads row at[p] of rows (any n x d) instead of row p. */
  canonicalScores(q: Float64Array, rows: Float32Array, B: number, k: number, d: number, metric: NativeMetric, at?: Uint32Array): Float64Array;
  canonicalMix(s: Float64Array, beta: number, rows: Float32Array, B: number, k: number, w: number, at?: Uint32Array): Float64Array;
  canonicalLinear(x: Float32Array, n: number, dIn: number, W: Float32Array, m: number, kp: number, bias: Float32Array | null): Float32Array;
  canonicalRmsNorm(x: Float32Array, n: number, d: number, gain: Float32Array, eps: number): Float32Array;
  canonicalJoin(a: Float32Array, b: Float32Array, which: 'add' | 'glu'): Float32Array;
  /** The prover's HopfieldLookup backward (native/src/core/canonical_step.h); accKeys / accValues are added to in place. */
  canonicalHopfieldBackward(
    x: Float32Array, dy: Float32Array, q: Float64Array, s: Float64Array, a: Float64Array, keys: Float32Array, values: Float32Array,
    keyRow: Uint32Array, keyAcc: Uint32Array, valueRow: Uint32Array, valueAcc: Uint32Array, accKeys: Float64Array, accValues: Float64Array,
    B: number, k: number, d: number, dv: number, S: number, beta: number, metric: NativeMetric, normalize: boolean,
  ): Float32Array;
  /** The prover's HopfieldLookup training forward (native/src/core/canonical_step.h): fills y, q, s, a. */
  canonicalHopfieldForward(
    x: Float32Array, keys: Float32Array, values: Float32Array, keyRow: Uint32Array, valueRow: Uint32Array,
    B: number, k: number, d: number, dv: number, S: number, beta: number, metric: NativeMetric, normalize: boolean,
    y: Float32Array, q: Float64Array, s: Float64Array, a: Float64Array,
  ): void;
  /** The prover's optimizer step (coptimizerStep's bits); fills the out arrays, returns the new decay log. */
  canonicalOptimizerStep(
    params: Float64Array, d: number, rows: Float32Array, grads: Float32Array, m: Float32Array, v: Float32Array, steps: Uint32Array, marks: Float64Array,
    outRows: Float32Array, outM: Float32Array, outV: Float32Array, outSteps: Uint32Array, outMarks: Float64Array,
  ): number;
  /** The prover's Linear / projection training forward (canonical_step.h linear_train): fills y and, when kp < m, kept. */
  canonicalLinearTrain(x: Float32Array, W: Float32Array, bias: Float32Array | null, n: number, dIn: number, m: number, kp: number, y: Float32Array, kept: Uint32Array): void;
  /** The prover's projection backward (canonical_step.h projection_backward): dIn, accW and accB (empty: none) are added to. */
  canonicalProjectionBackward(
    input: Float32Array, W: Float32Array, kept: Uint32Array, dP: Float32Array | Float64Array, dIn: Float64Array, accW: Float64Array, accB: Float64Array,
    n: number, inDim: number, m: number, kp: number,
  ): void;
  /** The prover's attention core with its selection kept (canonical_step.h attention_core): fills o, top (0xffffffff: none), weights. */
  canonicalAttentionCore(
    q: Float32Array, k: Float32Array, v: Float32Array, o: Float32Array, top: Uint32Array, weights: Float64Array,
    n: number, heads: number, kTop: number, causal: boolean, scale: number,
  ): void;
  /** The prover's attention core backward (canonical_step.h attention_core_backward): dQ, dK, dV are added to. */
  canonicalAttentionCoreBackward(
    q: Float32Array, k: Float32Array, v: Float32Array, top: Uint32Array, weights: Float64Array, dO: Float64Array, dQ: Float64Array, dK: Float64Array, dV: Float64Array,
    n: number, heads: number, kTop: number, causal: boolean, scale: number,
  ): void;
  /** The prover's RMSNorm backward: fills dx, adds to accGain. */
  canonicalRmsNormBackward(x: Float32Array, dy: Float32Array, gain: Float32Array, n: number, d: number, eps: number, dx: Float32Array, accGain: Float64Array): void;
  /** The prover's gated-MLP backward: fills dGate and dUp. */
  canonicalGluBackward(gate: Float32Array, up: Float32Array, dy: Float32Array, dGate: Float32Array, dUp: Float32Array): void;
  /** cglu into y, taking any value (canonicalJoin refuses non-finite ones). */
  canonicalGluForward(gate: Float32Array, up: Float32Array, y: Float32Array): void;
  /** The prover's product-key memory backward (canonical_step.h memory_backward); the acc buffers are added to in place. */
  canonicalMemoryBackward(
    x: Float32Array, dy: Float32Array, q: Float32Array, a: Float64Array, values: Float32Array, valueRow: Uint32Array, valueAcc: Uint32Array, accValues: Float64Array,
    t1: Float32Array, t1Row: Uint32Array, t1Acc: Uint32Array, accT1: Float64Array, t2: Float32Array, t2Row: Uint32Array, t2Acc: Uint32Array, accT2: Float64Array,
    W: Float32Array, accW: Float64Array, B: number, H: number, k: number, dv: number, dIn: number, dk: number, d1: number, beta: number,
  ): Float32Array;
  canonicalProductKeys(
    q: Float64Array, t1: Float32Array, t2: Float32Array, n: number, d1: number, d2: number, B: number, k: number,
    threads: number | undefined, screen?: NativeSimdLevel | 'none',
  ): { ids: Uint32Array; scores: Float64Array; canonicalRows: number };
  canonicalExactTopK(
    q: Float64Array, keys: Float32Array, n: number, d: number, B: number, k: number, metric: NativeMetric,
    threads: number | undefined, screen?: NativeSimdLevel | 'none',
  ): { ids: Uint32Array; scores: Float64Array; canonicalRows: number };
  openTensorFile(path: string, options: NativeFileOpenOptions): NativeOpenedFile;
  openTensorFileAsync(path: string, options: NativeFileOpenOptions): Promise<NativeOpenedFile>;
  /** Test only: records the file operations of tensor files (native/src/core/tensor_file.h). */
  tensorFileTrace(cmd: 'start'): undefined;
  tensorFileTrace(cmd: 'size'): number;
  tensorFileTrace(cmd: 'stop'): Array<{ op: string; path: string; offset: number; data?: Uint8Array; path2?: string }>;
  createTensorFileAsync(
    path: string, rows: number, dim: number, optimizerState: boolean, seed: number, scale: number, threads: number | undefined,
  ): Promise<void>;
}

let cached: NativeAddon | undefined;

/** The addon, loaded on first use. Throws NativeError when no binary fits. */
export function native(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  try {
    const load = require('node-gyp-build') as (dir: string) => unknown;
    cached = load(root) as NativeAddon;
  } catch (err) {
    throw new NativeError(
      'ERR_GT_NATIVE_UNAVAILABLE',
      `ghost-tensor: no native binary for ${process.platform}-${process.arch} (node ${process.versions.node}); ` +
        `run 'npm run build:native' with a C++ toolchain. ${(err as Error).message}`,
      { cause: err },
    );
  }
  return cached;
}
