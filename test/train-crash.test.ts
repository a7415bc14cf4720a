// CI-sized crash test of training checkpoints: a child trains a TrainingRun and is
// SIGKILLed at random moments; after every kill the resumed run must equal the
// uninterrupted one at the last acknowledged (or in-flight) step, bit for bit, and every
// acknowledged loss must be the uninterrupted run's. The long run (>= 200 kills) is
// `node scripts/train-crash-test.mjs --kills=200`. Needs dist/ (npm test builds it).
import { describe, expect, it } from 'vitest';

import { runTrainCrashTest } from '../scripts/train-crash-test.mjs';

describe('crash safety of training checkpoints', () => {
  // Skipped under the sanitized addon run (GT_SANITIZED), as test/crash.test.ts is: child processes load the plain addon.
  it.skipIf(!!process.env.GT_SANITIZED)('30 SIGKILLs while training: each resume equals the uninterrupted run bit for bit, no acknowledged step lost', async () => {
    const stats = await runTrainCrashTest({ kills: 30, seed: 7 });
    expect(stats.kills).toBe(30);
    // The kills landed while training (acknowledged steps), checkpoints ran (every 4 steps), and some before READY.
    expect(stats.acks).toBeGreaterThan(60);
    expect(stats.steps).toBeGreaterThan(70);
  }, 120_000);
});
