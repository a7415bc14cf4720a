import { describe, expect, it } from 'vitest';

import { GhostTensorError, InvalidArgumentError, OutOfRangeError, ProductKeyIndex, SparseTensor, TensorBusyError, simdInfo, type SimdLevel } from '../lib/index.js';
import { exactPairRanking } from './helpers/exact-sum.js';
import { Rng } from './helpers/rng.js';

/**
 * Brute force over all n^2 composite keys. Sub-scores come from a full ranking of each
 * table (k = n), so both sides use the same f32 sub-scores; ranked by their exact sum.
 */
function bruteForce(index: ProductKeyIndex, q: Float32Array, k: number, level?: SimdLevel): { ids: number[]; scores: number[] } {
  const n = index.subKeys, d1 = index.keys1.dim;
  const s1 = new Float64Array(n), s2 = new Float64Array(n);
  const opts = { metric: 'ip' as const, ...(level ? { level } : {}) };
  const r1 = index.keys1.search(q.subarray(0, d1), n, opts);
  const r2 = index.keys2.search(q.subarray(d1), n, opts);
  r1.ids.forEach((id, t) => (s1[id] = r1.scores[t]!));
  r2.ids.forEach((id, t) => (s2[id] = r2.scores[t]!));
  const ids = exactPairRanking(s1, s2, k); // the exact sum (BigInt), ties to the lower slot id
  return { ids, scores: ids.map((id) => s1[Math.floor(id / n)]! + s2[id % n]!) };
}

/** Independent check on integer data: scores from plain dot products of the concatenated key. */
function bruteForceConcat(k1: Float32Array, k2: Float32Array, n: number, d1: number, d2: number, q: Float32Array, k: number): number[] {
  const all: { id: number; s: number }[] = [];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < d1; t++) s += q[t]! * k1[i * d1 + t]!;
      for (let t = 0; t < d2; t++) s += q[d1 + t]! * k2[j * d2 + t]!;
      all.push({ id: i * n + j, s });
    }
  }
  all.sort((a, b) => (a.s !== b.s ? b.s - a.s : a.id - b.id));
  return all.slice(0, k).map((x) => x.id);
}

describe('product keys', () => {
  it('equal a brute-force top-k over all n^2 composite keys exactly (random data, every SIMD level)', () => {
    const rng = new Rng(21);
    for (const level of simdInfo().supported) {
      for (const [n, dim] of [[1, 2], [3, 5], [16, 8], [50, 17], [128, 32]] as const) {
        const index = ProductKeyIndex.random(n, dim, () => rng.next());
        for (const k of [1, Math.min(4, n * n), Math.min(n, 32), Math.min(n * n, 40), n * n]) {
          if (k > 300) continue;
          const q = rng.f32(dim);
          const r = index.search(q, k, { level });
          const ref = bruteForce(index, q, k, level);
          expect(Array.from(r.ids)).toEqual(ref.ids);
          expect(Array.from(r.scores)).toEqual(ref.scores);
        }
      }
    }
  });

  it('equal a brute force over the concatenated keys on integer data, ties to the lower slot id', () => {
    const rng = new Rng(22);
    for (const [n, d1, d2] of [[7, 2, 3], [20, 3, 3], [33, 4, 4]] as const) {
      const k1 = rng.f32ints(n * d1, -1, 1), k2 = rng.f32ints(n * d2, -1, 1); // many ties
      const index = ProductKeyIndex.fromTables(SparseTensor.fromArray(k1, d1), SparseTensor.fromArray(k2, d2));
      for (let trial = 0; trial < 10; trial++) {
        const q = rng.f32ints(d1 + d2, -2, 2);
        for (const k of [1, 5, n, Math.min(n * n, 3 * n)]) {
          expect(Array.from(index.search(q, k).ids)).toEqual(bruteForceConcat(k1, k2, n, d1, d2, q, k));
        }
      }
    }
  });

  it('sub-score sums that round to the same f64 are ranked by their exact value: search and searchBatch equal the exact brute force', async () => {
    // Sub-scores 1 + r 2^-23 and 2^30 m: the f64 sums of one m round to at most two
    // values, so a rule that compared rounded sums (then ids) would put a lower slot id
    // ahead of a slot whose exact score is higher, and disagree with the brute force.
    const n = 8;
    const t1 = Float32Array.from({ length: n }, (_, r) => 1 + ((r * 5) % n) * 2 ** -23);
    const t2 = Float32Array.from({ length: n }, (_, j) => 2 ** 15 * [3, 1, 3, 0, 2, 1, 3, 2][j]!);
    const index = ProductKeyIndex.fromTables(SparseTensor.fromArray(t1, 1), SparseTensor.fromArray(t2, 1));
    const q = Float32Array.from([1, 2 ** 15]);
    const s1 = Array.from(t1), s2 = Array.from(t2, (v) => v * 2 ** 15);
    for (const level of simdInfo().supported) {
      for (let k = 1; k <= n * n; k++) {
        const want = exactPairRanking(s1, s2, k);
        expect(Array.from(index.search(q, k, { level }).ids)).toEqual(want);
      }
    }
    for (let k = 1; k <= n * n; k++) {
      const b = await index.searchBatch(Float32Array.from([...q, ...q]), k);
      const want = exactPairRanking(s1, s2, k);
      expect(Array.from(b.ids.subarray(0, k))).toEqual(want);
      expect(Array.from(b.ids.subarray(k))).toEqual(want);
    }
  });

  it('track training: after sparse writes to the sub-key tables, search still equals brute force', () => {
    const rng = new Rng(23);
    const index = ProductKeyIndex.random(40, 16, () => rng.next());
    for (let step = 0; step < 50; step++) {
      index.keys1.add([rng.int(0, 39), rng.int(0, 39)], rng.f32(16, 0.3));
      index.keys2.scatter([rng.int(0, 39)], rng.f32(8));
      const q = rng.f32(16);
      expect(Array.from(index.search(q, 10).ids)).toEqual(bruteForce(index, q, 10).ids);
    }
  });

  it('searchBatch equals one search per query', async () => {
    const rng = new Rng(24);
    const index = ProductKeyIndex.random(64, 12, () => rng.next());
    const nq = 9, k = 20;
    const qs = rng.f32(nq * 12);
    const b = await index.searchBatch(qs, k, { threads: 2 });
    expect(b.queries).toBe(nq);
    for (let q = 0; q < nq; q++) {
      const one = index.search(qs.subarray(q * 12, (q + 1) * 12), k);
      expect(Array.from(b.ids.subarray(q * k, (q + 1) * k))).toEqual(Array.from(one.ids));
      expect(Array.from(b.scores.subarray(q * k, (q + 1) * k))).toEqual(Array.from(one.scores));
    }
  });

  it('searchBatch (native combination) equals the brute force on tie-heavy integer data, k up to n^2', async () => {
    const rng = new Rng(25);
    for (const [n, d1, d2] of [[7, 2, 3], [20, 3, 3]] as const) {
      const k1 = rng.f32ints(n * d1, -1, 1), k2 = rng.f32ints(n * d2, -1, 1);
      const index = ProductKeyIndex.fromTables(SparseTensor.fromArray(k1, d1), SparseTensor.fromArray(k2, d2));
      const nq = 6, d = d1 + d2;
      const qs = rng.f32ints(nq * d, -2, 2);
      for (const k of [1, 5, n, 3 * n, n * n]) {
        const b = await index.searchBatch(qs, k);
        for (let q = 0; q < nq; q++) {
          expect(Array.from(b.ids.subarray(q * k, (q + 1) * k))).toEqual(bruteForceConcat(k1, k2, n, d1, d2, qs.subarray(q * d, (q + 1) * d), k));
        }
      }
    }
  });

  it('searchBatch holds both tables busy: writes to either wait for it', async () => {
    const index = ProductKeyIndex.random(300, 64);
    const pending = index.searchBatch(new Float32Array(64 * 64), 8);
    expect(() => index.keys1.add([0], new Float32Array(32))).toThrow(TensorBusyError);
    expect(() => index.keys2.add([0], new Float32Array(32))).toThrow(TensorBusyError);
    await pending;
    index.keys2.add([0], new Float32Array(32));
  });

  it('bad input is a typed error', async () => {
    const index = ProductKeyIndex.random(4, 6);
    await expect(index.searchBatch(new Float32Array(6), 17)).rejects.toThrow(OutOfRangeError);
    await expect(index.searchBatch(new Float32Array(7), 1)).rejects.toThrow(InvalidArgumentError);
    await expect(index.searchBatch(new Float32Array([NaN, 0, 0, 0, 0, 0]), 1)).rejects.toThrow(GhostTensorError);
    expect(() => index.search(new Float32Array(5), 1)).toThrow(InvalidArgumentError);
    expect(() => index.search(new Float32Array(6), 0)).toThrow(OutOfRangeError);
    expect(() => index.search(new Float32Array(6), 17)).toThrow(OutOfRangeError);
    expect(() => ProductKeyIndex.random(0, 6)).toThrow(OutOfRangeError);
    expect(() => ProductKeyIndex.random(4, 1)).toThrow(OutOfRangeError);
    expect(() =>
      ProductKeyIndex.fromTables(SparseTensor.fromArray(new Float32Array(6), 3), SparseTensor.fromArray(new Float32Array(9), 3)),
    ).toThrow(InvalidArgumentError);
    const grown = ProductKeyIndex.random(3, 4);
    grown.keys1.append(new Float32Array(2));
    expect(() => grown.search(new Float32Array(4), 1)).toThrow(InvalidArgumentError);
  });
});
