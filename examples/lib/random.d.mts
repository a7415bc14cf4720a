// Types for examples/lib/random.mjs.
export function rng(seed: number): () => number;
export function gaussian(rand: () => number): number;
