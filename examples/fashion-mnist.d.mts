// Types for examples/fashion-mnist.mjs (used by test/fashion-mnist.test.ts).
export interface Split {
  x: Float32Array;
  y: Uint8Array;
  n: number;
}
export interface TrainResult {
  mode: 'sparse' | 'dense';
  testAccuracy: number;
  trainLoss: number;
  epochs: number;
  seconds: number;
  stepMsMedian: number;
  beta: number;
}
export const DATA_DIR: string;
export const SMALL_DATA_DIR: string;
export function datasetAvailable(dir?: string): boolean;
export function loadSplit(split: 'train' | 't10k', limit?: number, dir?: string): Split;
export function trainClassifier(options: {
  train: Split;
  test: Split;
  mode?: 'sparse' | 'dense';
  epochs?: number;
  n?: number;
  k?: number;
  d?: number;
  batch?: number;
  lr?: number;
  valueScale?: number;
  seed?: number;
  onEpoch?: (e: { epoch: number; loss: number; beta: number }) => void;
}): Promise<TrainResult>;
