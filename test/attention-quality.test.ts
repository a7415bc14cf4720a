import { describe, expect, it } from 'vitest';

import { trainRecall } from '../examples/associative-recall.mjs';

// Quality of top-k attention on a task that needs attention: single-hop multi-query
// associative recall at n = 256 (128 (key, value) pair tokens, then 128 queries; 32
// value classes, chance 1/32). One causal attention layer with dense q/k/v projections,
// trained briefly with dense attention and with top-8 attention from the same seed
// (examples/associative-recall.mjs; the full run is in bench/results/associative-recall.json).
// Both must learn far beyond chance (a wrong gradient in either backward pass, or a
// selection that misses the matching key, keeps a mode near 3%), and top-8 must end
// within 10 points of dense.
describe('attention quality: associative recall (short run)', () => {
  it('dense and top-8 attention both learn the recall task, top-8 within 0.10 of dense', async () => {
    const common = { n: 256, batch: 8, lr: 1e-2, seed: 2, evalSequences: 16 };
    const dense = await trainRecall({ ...common, mode: 'dense', steps: 150 });
    const top8 = await trainRecall({ ...common, mode: 'sparse', k: 8, steps: 220 });
    const chance = 1 / 32;
    for (const r of [dense, top8]) {
      expect(r.untrainedAccuracy).toBeLessThan(3 * chance); // the untrained model cannot do it
      expect(r.accuracy).toBeGreaterThan(0.8); // > 25x chance
    }
    expect(dense.accuracy - top8.accuracy).toBeLessThan(0.1);
  }, 600_000); // a limit, not a timing: under ASan on a busy machine this run took over 120 s
});
