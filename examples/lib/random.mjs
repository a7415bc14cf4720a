/**
 * Seeded random numbers for the examples (the benchmarks in a checkout of the
 * repository use the same functions, re-exported by bench/lib/common.mjs).
 */

/** mulberry32: small seeded PRNG, uniform in [0, 1) (the library's seededRandom; seeds are integers in 0..2^32-1). */
export { seededRandom as rng } from 'ghost-tensor';

/** A standard normal deviate from two uniforms of `rand` (Box-Muller). */
export function gaussian(rand) {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}
