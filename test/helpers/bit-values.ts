/**
 * Values and byte views for comparing native mirrors with the TypeScript bit for bit
 * (test/canonical-step-native*.test.ts).
 */
import type { Rng } from './rng.js';

/**
 * The bytes of `a`, every NaN written as the one NaN: a NaN's sign and payload are not
 * portable (JavaScript leaves them to the engine, and x86 gives -NaN for inf - inf), and
 * no NaN reaches a proof: a step with a non-finite result is refused on both sides.
 */
export const bits = (a: Float64Array | Float32Array | Uint32Array | Int32Array | null): string => {
  if (a === null) return 'null';
  if ((a instanceof Float32Array || a instanceof Float64Array) && a.some((v) => Number.isNaN(v))) a = a.map((v) => (Number.isNaN(v) ? NaN : v));
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
};

const HOSTILE = [0, -0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, 1, -1, 0.5, 1e-20, 7e20];

/** n f32 values: random, or (hostile) a mix with huge, tiny, subnormal, zeros and repeats, and NaN / infinities when `nonFinite`. */
export function values(rng: Rng, n: number, hostile: boolean, nonFinite = false): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    if (!hostile || rng.next() < 0.5) a[i] = rng.signed();
    else if (nonFinite && rng.next() < 0.1) a[i] = [NaN, Infinity, -Infinity][rng.int(0, 2)]!;
    else a[i] = HOSTILE[rng.int(0, HOSTILE.length - 1)]!;
  }
  return a;
}
