/** Small models shared by the proof, browser and fuzz tests. */
import { Add, Embedding, HopfieldLookup, Model, PositionEmbedding, ProductKeyIndex, SparseTensor } from '../../lib/index.js';
import type { Rng } from './rng.js';

/**
 * Two layers: exact cosine retrieval over 300 patterns of 16 (normalised input,
 * 2 update steps, k = 8, beta 4), then product keys over 12^2 slots (sub-keys of 8 + 8,
 * values of 5, k = 6, beta 2).
 */
export function twoLayerModel(rng: Rng): { model: Model; l0: HopfieldLookup; l1: HopfieldLookup } {
  const d = 16, n0 = 300, n = 12;
  const l0 = new HopfieldLookup({
    keys: SparseTensor.fromArray(rng.f32(n0 * d), d),
    values: SparseTensor.fromArray(rng.f32(n0 * d), d),
    k: 8,
    similarity: 'cosine',
    normalize: true,
    beta: 4,
    updateSteps: 2,
  });
  const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(n * 8), 8), SparseTensor.fromArray(rng.f32(n * 8), 8));
  const l1 = new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(n * n * 5), 5), k: 6, beta: 2 });
  return { model: new Model([l0, l1]), l0, l1 };
}

/**
 * A model trained by step proofs (docs/step-proofs.md) for the browser test and the
 * fuzzer: ids in, logits of 6 classes out (an embedding, learned positions, their sum),
 * Adam with weight decay, clipping and a cosine schedule.
 */
export function stepProofModel(rng: Rng): Model {
  const d = 6;
  return new Model([new Embedding(SparseTensor.fromArray(rng.f32(12 * d), d)), new PositionEmbedding(SparseTensor.fromArray(rng.f32(8 * d), d)), new Add()], {
    inputs: [[-1], [0], [0, 1]],
    training: { loss: 'cross-entropy', lr: 0.05, weightDecay: 0.01, clipNorm: 0.5, schedule: { kind: 'cosine', warmupSteps: 1, totalSteps: 10 } },
  });
}
