// Types of scripts/crash-test.mjs (used by test/crash.test.ts).
export interface CrashTestOptions {
  kills?: number;
  rows?: number;
  dim?: number;
  compactBytes?: number;
  seed?: number;
  maxDelayMs?: number;
  dir?: string;
  log?: (message: string) => void;
}
export interface CrashTestStats {
  kills: number;
  committed: number;
  inFlightCommitted: number;
  killedBeforeReady: number;
  acks: number;
  maxCompactedSeq: number;
}
export const ADAM: { lr: number; weightDecay: number };
export function stepOf(s: number, n: number, d: number): { ids: number[]; grads: Float32Array };
export function runCrashTest(options?: CrashTestOptions): Promise<CrashTestStats>;
