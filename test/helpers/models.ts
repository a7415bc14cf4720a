/** Small models shared by the proof, browser and fuzz tests. */
import { HopfieldLookup, Model, ProductKeyIndex, SparseTensor } from '../../lib/index.js';
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

