import { describe, expect, it } from 'vitest';

import { datasetAvailable, loadSplit, trainClassifier } from '../examples/fashion-mnist.mjs';

// The full run (60k images, 10 epochs; `node examples/fashion-mnist.mjs --write`) is
// recorded in bench/results/fashion-mnist.json. Here: a short run that still has to
// learn well beyond the 10% of chance, in both modes, from the same seed.
describe.skipIf(!datasetAvailable())('Fashion-MNIST HopfieldLookup classifier (short run)', () => {
  it('sparse (k = 32 of 1024) and dense (all 1024) both learn, and end close together', async () => {
    const train = loadSplit('train', 8000), test = loadSplit('t10k', 2000);
    const common = { train, test, epochs: 2, n: 1024, k: 32, seed: 3 };
    const sparse = await trainClassifier({ ...common, mode: 'sparse' });
    const dense = await trainClassifier({ ...common, mode: 'dense' });
    expect(sparse.testAccuracy).toBeGreaterThan(0.75);
    expect(dense.testAccuracy).toBeGreaterThan(0.75);
    expect(Math.abs(sparse.testAccuracy - dense.testAccuracy)).toBeLessThan(0.04);
  }, 240_000);
});
