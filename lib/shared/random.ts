/** A seeded generator: the same numbers on every machine (training data order, initialisers, sampling). */
import { checkInteger } from './args.js';

/** mulberry32: a uniform in [0, 1) per call, from a 32-bit seed. */
export function seededRandom(seed: number): () => number {
  let a = checkInteger('seed', seed, 0, 2 ** 32 - 1) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
