// CI-sized crash test of tensor files: a child trains and checkpoints in a loop and is
// SIGKILLed at random moments; after every kill the reopened file must equal the last
// acknowledged checkpoint (or the in-flight one) exactly. The long run (>= 200 kills)
// is `node scripts/crash-test.mjs --kills=200`. Needs dist/ (npm test builds it).
import { describe, expect, it } from 'vitest';

import { runCrashTest } from '../scripts/crash-test.mjs';

describe('crash safety of tensor files', () => {
  it('30 SIGKILLs at random moments: every reopened file is an acknowledged (or in-flight) checkpoint, exactly', async () => {
    const stats = await runCrashTest({ kills: 30, seed: 7 });
    expect(stats.kills).toBe(30);
    // The kills landed while training (acknowledged checkpoints) and compaction ran.
    expect(stats.acks).toBeGreaterThan(50);
    expect(stats.maxCompactedSeq).toBeGreaterThan(0);
    expect(stats.committed).toBeGreaterThanOrEqual(stats.acks);
  }, 60_000);
});
