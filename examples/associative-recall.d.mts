// Types for examples/associative-recall.mjs (used by test/attention-quality.test.ts).
export interface RecallSequence {
  keys: Int32Array;
  vals: Int32Array;
  target: Int32Array;
  n: number;
}
export interface RecallResult {
  mode: 'sparse' | 'dense';
  k: number | null;
  /** Held-out accuracy at the query positions. */
  accuracy: number;
  /** Dense-trained model evaluated with top-k at inference (per k of evalTopK). */
  topKAtInference: Record<string, number>;
  /** First step whose training-batch accuracy exceeded 50%, or null. */
  firstStepAbove50: number | null;
  /** How the final held-out errors spread over key ids. */
  errorsByKey: { errors: number; keysWithErrors: number; keysAlwaysWrong: number; keysAsked: number; errorsOnAlwaysWrongKeys: number };
  untrainedAccuracy: number;
  chance: number;
  trainLoss: number;
  trainAccuracy: number;
  evalQueries: number;
  curve: { step: number; loss: number; trainAccuracy: number }[];
  steps: number;
  seconds: number;
  stepMsMedian: number;
  params: Record<string, number>;
}
export function makeSequence(rand: () => number, n: number, numKeys: number, numValues: number): RecallSequence;
export function trainRecall(options?: {
  mode?: 'sparse' | 'dense';
  k?: number;
  n?: number;
  numValues?: number;
  numKeys?: number;
  d?: number;
  heads?: number;
  steps?: number;
  batch?: number;
  lr?: number;
  seed?: number;
  evalSequences?: number;
  evalSeed?: number;
  concurrency?: number;
  evalTopK?: number[];
  onProgress?: (p: { step: number; loss: number; trainAccuracy: number }) => void;
}): Promise<RecallResult>;
