// Types of scripts/train-crash-test.mjs (used by test/train-crash.test.ts).
export interface TrainCrashStats {
  kills: number;
  acks: number;
  inFlightDurable: number;
  killedBeforeReady: number;
  steps: number;
}
export function runTrainCrashTest(options?: { kills?: number; every?: number; seed?: number; maxDelayMs?: number; dir?: string; log?: (m: string) => void }): Promise<TrainCrashStats>;
