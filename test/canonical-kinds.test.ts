/**
 * The canonical forwards of the Linear, RMSNorm, Glu, Add and Position kinds are one
 * arithmetic in two languages: the C++ the prover runs (native/src/core/canonical.cc)
 * and the TypeScript the verifier runs (lib/verify/canonical.ts, lib/verify/kinds/add.ts)
 * give the same bits, on random data, on data built to tie (small integers: equal dot
 * products, so the top-k tie rule decides), at signed zeros, extremes and overflow of exp.
 */
import { describe, expect, it } from 'vitest';

import { NonFiniteError } from '../lib/index.js';
import { callNative } from '../lib/shared/errors.js';
import { native } from '../lib/tensor/native.js';
import { cglu, clinear, crmsnorm } from '../lib/verify/canonical.js';
import { cadd } from '../lib/verify/kinds/add.js';
import { Rng } from './helpers/rng.js';

const same = (a: Float32Array, b: Float32Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
const nat = native();

describe('canonical forwards of the new kinds, C++ against TypeScript', () => {
  it('linear: dense and top-k, with and without a bias, on random and tied data', () => {
    const rng = new Rng(1);
    let cases = 0;
    for (const tied of [false, true]) {
      for (const [n, dIn, m] of [[1, 1, 1], [3, 7, 9], [5, 16, 33], [2, 64, 5]] as const) {
        for (const kp of [1, Math.max(1, m >> 1), m]) {
          const x = tied ? rng.f32ints(n * dIn, -2, 2) : rng.f32(n * dIn, 3);
          const W = tied ? rng.f32ints(m * dIn, -1, 1) : rng.f32(m * dIn);
          for (const bias of [null, tied ? rng.f32ints(m) : rng.f32(m)]) {
            const c = callNative(() => nat.canonicalLinear(x, n, dIn, W, m, kp, bias));
            const t = clinear(x, n, dIn, W, m, kp, bias);
            expect(same(c, t), `n ${n} dIn ${dIn} m ${m} kp ${kp} tied ${tied} bias ${bias !== null}`).toBe(true);
            cases++;
          }
        }
      }
    }
    expect(cases).toBe(48);
    // Ties really occur in the tied data, so the rule is exercised: equal dots among the kept columns.
    const x = Float32Array.of(1, 1), W = Float32Array.of(1, 0, 0, 1, 1, 0);
    expect(Array.from(clinear(x, 1, 2, W, 3, 2, null))).toEqual([1, 1, 0]); // columns 0 and 1 tie with 2: the lower ids win
    expect(Array.from(callNative(() => nat.canonicalLinear(x, 1, 2, W, 3, 2, null)))).toEqual([1, 1, 0]);
  });

  it('rmsnorm: random rows, zeros, tiny and huge values', () => {
    const rng = new Rng(2);
    const rows = [rng.f32(24, 3), new Float32Array(24), Float32Array.from({ length: 24 }, (_, i) => (i % 2 ? 1e-30 : -1e-30)), Float32Array.from({ length: 24 }, (_, i) => (i - 12) * 1e18)];
    for (const [i, x] of rows.entries()) {
      for (const eps of [Math.fround(1e-6), Math.fround(1e-3)]) {
        const g = rng.f32(8);
        const c = callNative(() => nat.canonicalRmsNorm(x, 3, 8, g, eps));
        expect(same(c, crmsnorm(x, 3, 8, g, eps)), `case ${i} eps ${eps}`).toBe(true);
      }
    }
  });

  it('glu and add: random values, signed zeros, and gates where exp overflows', () => {
    const rng = new Rng(3);
    const edge = Float32Array.of(0, -0, 1, -1, 30, -30, 700, -700, 800, -800, 3.4e38, -3.4e38, 1e-45, -1e-45);
    const gates = [rng.f32(1000, 20), edge];
    for (const g of gates) {
      const u = rng.f32(g.length, 5);
      u[0] = -0;
      expect(same(callNative(() => nat.canonicalJoin(g, u, 'glu')), cglu(g, u))).toBe(true);
      expect(same(callNative(() => nat.canonicalJoin(g, u, 'add')), cadd(g, u))).toBe(true);
    }
    // Hostile arguments: another length, a non-finite value, an unknown join.
    expect(() => callNative(() => nat.canonicalJoin(new Float32Array(3), new Float32Array(2), 'add'))).toThrow(/length/);
    expect(() => callNative(() => nat.canonicalJoin(Float32Array.of(Number.NaN), Float32Array.of(1), 'glu'))).toThrow(NonFiniteError);
    expect(() => callNative(() => nat.canonicalJoin(Float32Array.of(1), Float32Array.of(1), 'mul' as 'add'))).toThrow(/add' or 'glu/);
    expect(() => callNative(() => nat.canonicalRmsNorm(new Float32Array(4), 1, 4, new Float32Array(4), 0.1))).toThrow(/f32/);
    expect(() => callNative(() => nat.canonicalLinear(new Float32Array(4), 1, 4, new Float32Array(7), 2, 1, null))).toThrow(/length/);
  });
});
