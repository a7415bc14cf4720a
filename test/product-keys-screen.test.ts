/**
 * Screened canonical product-key selection (docs/product-keys.md, "Proving fast"): the
 * prover scores both sub-key tables with the fast f32 kernels and computes the
 * canonical f64 score only for rows a rigorous bound cannot rule out. It must give the
 * bits of the unscreened canonical selection (screen 'none', every row in f64) and of
 * the verifier's cproductKeys, at every SIMD level, on random data, on data where f32
 * rounding reverses the order, on tied data, and on values f32 cannot hold.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, PatternCache, ProductKeyIndex, ProductKeyMemory, SparseTensor, simdInfo, verifyForward } from '../lib/index.js';
import { native, type NativeSimdLevel } from '../lib/tensor/native.js';
import { cproductKeys } from '../lib/verify/canonical.js';
import { exactPairRanking } from './helpers/exact-sum.js';
import { Rng } from './helpers/rng.js';

const bits = (a: Float64Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
const levels = simdInfo().supported as NativeSimdLevel[];

interface Case {
  q: Float64Array;
  t1: Float32Array;
  t2: Float32Array;
  n: number;
  d1: number;
  d2: number;
  B: number;
  k: number;
}

/** Runs the reference and every level; returns the canonical rows each level scored. */
function agree(c: Case, tsCheck = false): number[] {
  const { q, t1, t2, n, d1, d2, B, k } = c;
  const ref = native().canonicalProductKeys(q, t1, t2, n, d1, d2, B, k, 1, 'none');
  expect(ref.canonicalRows).toBe(2 * n * B);
  const rows: number[] = [];
  for (const level of levels) {
    for (const threads of [1, 2]) {
      const r = native().canonicalProductKeys(q, t1, t2, n, d1, d2, B, k, threads, level);
      expect(Array.from(r.ids), `${level} ids`).toEqual(Array.from(ref.ids));
      expect(bits(r.scores), `${level} scores`).toBe(bits(ref.scores));
      if (threads === 1) rows.push(r.canonicalRows);
    }
  }
  const def = native().canonicalProductKeys(q, t1, t2, n, d1, d2, B, k, undefined);
  expect(Array.from(def.ids)).toEqual(Array.from(ref.ids));
  if (tsCheck) {
    for (let b = 0; b < B; b++) {
      const ts = cproductKeys(q.subarray(b * (d1 + d2), (b + 1) * (d1 + d2)), t1, t2, n, d1, d2, k);
      expect(Array.from(ts.ids)).toEqual(Array.from(ref.ids.subarray(b * k, (b + 1) * k)));
      expect(bits(ts.scores)).toBe(bits(ref.scores.subarray(b * k, (b + 1) * k)));
    }
  }
  return rows;
}

describe('screened product-key selection equals the canonical one bit for bit', () => {
  it('random data, shapes with and without screening, every SIMD level, 1 and 2 threads', () => {
    const rng = new Rng(41);
    let screened = 0;
    for (const [n, d1, d2, k, B] of [
      [64, 3, 5, 4, 9], [200, 32, 32, 32, 5], [257, 1, 2, 8, 6], [513, 33, 31, 16, 17], [40, 4, 4, 32, 3], [1000, 16, 48, 1, 4],
    ] as const) {
      const c: Case = { q: Float64Array.from(rng.f32(B * (d1 + d2))), t1: rng.f32(n * d1), t2: rng.f32(n * d2), n, d1, d2, B, k };
      const rows = agree(c, n <= 257);
      // Screening is on when k <= n / 4 and then scores far fewer rows in f64.
      if (4 * k <= n) for (const r of rows) expect(r).toBeLessThan(n * B);
      else for (const r of rows) expect(r).toBe(2 * n * B);
      if (4 * k <= n) screened++;
    }
    expect(screened).toBeGreaterThan(3);
    // f64 states that are not f32 values (a later retrieval stage's states are mixes).
    const n = 300, d1 = 8, d2 = 8, B = 4, k = 8;
    agree({ q: Float64Array.from({ length: B * 16 }, () => rng.signed() * (1 + 1e-9 * rng.next())), t1: rng.f32(n * d1), t2: rng.f32(n * d2), n, d1, d2, B, k }, true);
  });

  it('many states (f32 scores from the transposed tables), the grouped k-th score, rows past the last group', () => {
    // B >= 24 takes gemm_acc over the transposed tables for the f32 scores; the k-th
    // largest f32 score comes from groups of 8 rows (n / 8 >= 2k), of 4 (n / 4 >= 2k) or
    // from all n; rows past the last whole group belong to no group.
    const rng = new Rng(2024);
    let screened = 0;
    for (const [n, d1, d2, k, B] of [
      [1024, 32, 32, 32, 64], [517, 33, 31, 16, 40], [66, 4, 4, 8, 30], [250, 3, 5, 31, 25], [123, 7, 9, 30, 24],
      [1000, 16, 48, 1, 24], [40, 2, 3, 40, 24], [12, 2, 2, 30, 26],
    ] as const) {
      const c: Case = { q: Float64Array.from(rng.f32(B * (d1 + d2))), t1: rng.f32(n * d1), t2: rng.f32(n * d2), n, d1, d2, B, k };
      const rows = agree(c, n <= 128);
      if (4 * Math.min(k, n) <= n) {
        screened++;
        for (const r of rows) expect(r).toBeLessThan(n * B);
      }
      // The rows past the last group (of 8 or 4) first in every state: q's first value
      // positive, theirs large.
      if (n % 4 !== 0) {
        const q = Float64Array.from(c.q);
        for (let b = 0; b < B; b++) q[b * (d1 + d2)] = 0.5 + 0.5 * rng.next();
        const t1 = Float32Array.from(c.t1);
        for (let i = n - (n % 4); i < n; i++) t1[i * d1] = 1000 * (i - n + (n % 4) + 1);
        const tail = agree({ ...c, q, t1 });
        for (const r of tail) expect(r).toBeLessThan(n * B);
        const top = native().canonicalProductKeys(q, t1, c.t2, n, d1, d2, B, k, 1);
        for (let b = 0; b < B; b++) expect(Math.floor(top.ids[b * k]! / n)).toBe(n - 1);
      }
    }
    expect(screened).toBe(6);
    // The k best rows one to a group (group b holds rows b, b + n / W, ...): the k-th
    // largest group maximum is then the k-th score itself, and a bound L above it (not
    // below) would lose that row.
    for (const [n, k, W] of [[512, 16, 8], [128, 16, 4], [256, 5, 8]] as const) {
      const nb = n / W;
      const tab = Float32Array.from({ length: n }, (_, i) => (i < nb ? 1 + i / nb : -1 - i / n));
      for (const B of [1, 24]) {
        const q = new Float64Array(2 * B).fill(1);
        // Screened to exactly the k best of each table (a lost row would leave fewer than
        // k candidates, and every row would be scored in f64 instead).
        for (const rows of agree({ q, t1: tab, t2: tab, n, d1: 1, d2: 1, B, k })) expect(rows).toBe(2 * k * B);
        const r = native().canonicalProductKeys(q, tab, tab, n, 1, 1, B, k, 1);
        expect(r.ids[0]).toBe((nb - 1) * n + nb - 1);
      }
    }
    // Ties at the boundary (small integers) with many states: groups of 8, and of 4.
    for (const [m, k] of [[256, 16], [128, 12]] as const) {
      const d = 4, B = 32;
      agree({ q: Float64Array.from(rng.f32ints(B * 2 * d, -1, 1)), t1: rng.f32ints(m * d, -1, 1), t2: rng.f32ints(m * d, -1, 1), n: m, d1: d, d2: d, B, k }, true);
    }
    // f32 rounding that reverses the order (the next test's rows), in every one of 24 states.
    const n = 64, A = 5, Bi = 9, B = 24;
    const table = new Float32Array(n * 2);
    for (let i = 0; i < n; i++) table.set([-100, 0], 2 * i);
    table.set([0, 2 ** 24], 2 * A);
    table.set([0.5 + 2 ** -17, 0], 2 * Bi);
    const q = new Float64Array(B * 4);
    for (let b = 0; b < B; b++) q.set([1, 2 ** -25 + 2 ** -40, 1, 2 ** -25 + 2 ** -40], 4 * b);
    for (const k of [1, 2, 3]) {
      const rows = agree({ q, t1: table, t2: table, n, d1: 2, d2: 2, B, k });
      if (k <= 2) for (const r of rows) expect(r).toBe(4 * B);
      const r = native().canonicalProductKeys(q, table, table, n, 2, 2, B, k, 1);
      for (let b = 0; b < B; b++) expect(r.ids[b * k]).toBe(A * n + A);
    }
  });

  it('many states with values f32 arithmetic cannot hold (2^100 and beyond, underflow, huge and subnormal tables)', () => {
    const rng = new Rng(10);
    const n = 256, d = 6, B = 30, k = 8;
    const t1 = rng.f32(n * d), t2 = rng.f32(n * d);
    // Per state, by b % 6: ordinary; 2^100 (at the bound's limit); 2^101; 1e200; 1e30
    // against 1e10 rows; 1e-300 (zero in f32).
    const scale = [1, 2 ** 100 / 6, 2 ** 101, 1e200, 1e30, 1e-300];
    const q = Float64Array.from(rng.f32(B * 2 * d));
    for (let b = 0; b < B; b++) for (let j = 0; j < 2 * d; j++) q[b * 2 * d + j] = q[b * 2 * d + j]! * scale[b % 6]!;
    const big1 = Float32Array.from(t1, (v) => v * 1e10);
    for (const r of agree({ q, t1: big1, t2, n, d1: d, d2: d, B, k })) expect(r).toBeLessThan(2 * n * B);
    const q2 = Float64Array.from(rng.f32(B * 2 * d));
    for (const r of agree({ q: q2, t1: Float32Array.from(t1, (v) => v * 3e38), t2, n, d1: d, d2: d, B, k })) expect(r).toBeGreaterThanOrEqual(n * B);
    agree({ q: q2, t1: Float32Array.from(t1, (v) => v * 1e-40), t2, n, d1: d, d2: d, B, k });
  });

  it('keeps a row that f32 rounding ranks below another (the bound, not the f32 order, decides)', () => {
    // q = (1, 2^-25 + 2^-40): f32 drops the 2^-40. Row A = (0, 2^24) scores 1/2 + 2^-16
    // exactly but 1/2 in f32; row B = (1/2 + 2^-17, 0) scores 1/2 + 2^-17 either way. The
    // canonical order puts A first, the f32 order B; every other row scores -100 (the
    // bound is about 6 here: those rows are ruled out, A and B are not).
    const n = 64, A = 5, Bi = 9;
    const table = new Float32Array(n * 2);
    for (let i = 0; i < n; i++) table.set([-100, 0], 2 * i);
    table.set([0, 2 ** 24], 2 * A);
    table.set([0.5 + 2 ** -17, 0], 2 * Bi);
    const q = Float64Array.from([1, 2 ** -25 + 2 ** -40, 1, 2 ** -25 + 2 ** -40]);
    for (const k of [1, 2, 3, 16]) {
      const rows = agree({ q, t1: table, t2: table, n, d1: 2, d2: 2, B: 1, k }, true);
      if (k <= 2) for (const r of rows) expect(r).toBe(4); // screened: A and B of each table
    }
    const r = native().canonicalProductKeys(q, table, table, n, 2, 2, 1, 1, 1);
    expect(r.ids[0]).toBe(A * n + A);
  });

  it('sums that round to the same f64 and tied scores keep the exact order (against BigInt sums)', () => {
    // s1 = 1 + r 2^-23 and s2 = 2^30 m as in test/canonical.test.ts, but n = 64 so that
    // screening runs: rows repeat, so the k-th and (k+1)-th scores tie.
    const n = 64;
    const t1 = Float32Array.from({ length: n }, (_, i) => 1 + (i % 8) * 2 ** -23);
    const t2 = Float32Array.from({ length: n }, (_, j) => 2 ** 15 * [3, 1, 3, 0, 2, 1, 3, 2][j % 8]!);
    const q = Float64Array.from([1, 2 ** 15]);
    const s1 = Array.from(t1, (v) => v * 1), s2 = Array.from(t2, (v) => v * 2 ** 15);
    for (const k of [1, 2, 5, 8, 13, 16]) {
      agree({ q, t1, t2, n, d1: 1, d2: 1, B: 1, k });
      expect(Array.from(native().canonicalProductKeys(q, t1, t2, n, 1, 1, 1, k, 1).ids)).toEqual(exactPairRanking(s1, s2, k));
    }
    // Small integers: many exact ties at the boundary.
    const rng = new Rng(5);
    const m = 128, d = 4, B = 6;
    agree({ q: Float64Array.from(rng.f32ints(B * 2 * d, -1, 1)), t1: rng.f32ints(m * d, -1, 1), t2: rng.f32ints(m * d, -1, 1), n: m, d1: d, d2: d, B, k: 7 }, true);
  });

  it('values f32 arithmetic cannot hold turn screening off for their state (same result)', () => {
    const rng = new Rng(9);
    const n = 128, d = 6, B = 5, k = 4;
    const t1 = rng.f32(n * d), t2 = rng.f32(n * d);
    // State 0 ordinary, 1 beyond f32 range (1e200), 2 with products overflowing f32
    // (1e30 against 1e10 rows below), 3 tiny (underflows to 0 in f32), 4 ordinary.
    const q = Float64Array.from(rng.f32(B * 2 * d));
    for (let j = 0; j < 2 * d; j++) {
      q[1 * 2 * d + j] = q[1 * 2 * d + j]! * 1e200;
      q[2 * 2 * d + j] = q[2 * 2 * d + j]! * 1e30;
      q[3 * 2 * d + j] = q[3 * 2 * d + j]! * 1e-300;
    }
    const big1 = Float32Array.from(t1, (v) => v * 1e10);
    const rows = agree({ q, t1: big1, t2, n, d1: d, d2: d, B, k });
    // Screened: states 0 and 4 in both tables, states 1 and 2 in none, table 2 of 3 (its
    // values are small) only if the f32 scores separate (they are all 0: they do not).
    for (const r of rows) {
      expect(r).toBeGreaterThanOrEqual(2 * n * 3); // states 1, 2, 3 fully
      expect(r).toBeLessThan(2 * n * B);
    }
    // Huge table values (near the f32 maximum): every state falls back.
    const huge = Float32Array.from(t1, (v) => v * 3e38);
    const q2 = Float64Array.from(rng.f32(B * 2 * d));
    for (const r of agree({ q: q2, t1: huge, t2, n, d1: d, d2: d, B, k })) expect(r).toBeGreaterThanOrEqual(n * B);
    // Subnormal table values: the absolute term of the bound covers them.
    const sub = Float32Array.from(t1, (v) => v * 1e-40);
    agree({ q: q2, t1: sub, t2, n, d1: d, d2: d, B, k });
  });

  it('refuses non-finite tables and states with the index of the first bad value', () => {
    const n = 16, d = 2;
    const t = new Float32Array(n * d).fill(0.5);
    const bad = t.slice();
    bad[37 % (n * d)] = Infinity;
    bad[9] = NaN;
    expect(() => native().canonicalProductKeys(new Float64Array(4), bad, t, n, d, d, 1, 2, 1)).toThrow(/t1\[5\] is not finite/);
    expect(() => native().canonicalProductKeys(new Float64Array(4), t, bad, n, d, d, 1, 2, 1)).toThrow(/t2\[5\] is not finite/);
    expect(() => native().canonicalProductKeys(Float64Array.of(0, 0, Infinity, 0), t, t, n, d, d, 1, 2, 1)).toThrow(/q\[2\] is not finite/);
    expect(() => native().canonicalProductKeys(new Float64Array(4), t, t, n, d, d, 1, 2, 1, 'bogus' as NativeSimdLevel)).toThrow(/level must be/);
  });
});

describe('proofs of screened product-key layers verify (the verifier re-derives every row in f64)', () => {
  it('a two-step HopfieldLookup over product keys and a two-head memory, without and with caches', async () => {
    const rng = new Rng(77);
    const d = 16, n = 48; // k = 4 <= n / 4: the prover screens
    const w = (rows: number, c: number, scale = 1): SparseTensor => SparseTensor.fromArray(rng.f32(rows * c, scale), c);
    const pk = ProductKeyIndex.fromTables(w(n, d / 2), w(n, d / 2));
    const model = new Model([
      new HopfieldLookup({ keys: pk, values: w(n * n, d), k: 4, updateSteps: 2 }),
      new ProductKeyMemory({ query: w(2 * 8, d), keys: [[w(n, 4), w(n, 4)], [w(n, 4), w(n, 4)]], values: w(n * n, d), k: 4 }),
    ]);
    const ghost = await model.ghost();
    const mirror = new PatternCache(1 << 16), held = new PatternCache(1 << 16);
    for (let r = 0; r < 4; r++) {
      const x = rng.f32(5 * d);
      const plain = await model.prove(x);
      const v = await verifyForward(ghost, plain.bytes);
      expect(bits(Float64Array.from(v.output))).toBe(bits(Float64Array.from(plain.output)));
      const cached = await model.prove(x, { cache: mirror });
      const vc = await verifyForward(ghost, cached.bytes, { cache: held });
      expect(bits(Float64Array.from(vc.output))).toBe(bits(Float64Array.from(plain.output)));
      // The same input again: every row (tables included) travels as an id.
      const again = await model.prove(x, { cache: mirror });
      expect(again.bytes.length).toBeLessThan(plain.bytes.length / 4);
      const va = await verifyForward(ghost, again.bytes, { cache: held });
      expect(bits(Float64Array.from(va.output))).toBe(bits(Float64Array.from(plain.output)));
    }
  });
});
