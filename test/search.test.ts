import { describe, expect, it } from 'vitest';

import { SparseTensor, simdInfo, type Metric } from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { Rng } from './helpers/rng.js';

// Independent reference: score every row in double precision and sort in TypeScript
// (better score first, ties by lower id). Data are small integers, so every score is
// exact in f32 as well and ties are real ties.
function refScores(data: Float32Array, d: number, q: Float32Array, metric: Metric): number[] {
  const n = data.length / d;
  const out: number[] = [];
  let qq = 0;
  for (let j = 0; j < d; j++) qq += q[j]! * q[j]!;
  for (let i = 0; i < n; i++) {
    let dot = 0, l2 = 0, rr = 0;
    for (let j = 0; j < d; j++) {
      const x = data[i * d + j]!, y = q[j]!;
      dot += x * y;
      l2 += (x - y) * (x - y);
      rr += x * x;
    }
    out.push(metric === 'l2' ? l2 : metric === 'ip' ? dot : qq === 0 || rr === 0 ? 0 : dot / Math.sqrt(qq * rr));
  }
  return out;
}

function refTopK(data: Float32Array, d: number, q: Float32Array, k: number, metric: Metric): number[] {
  const s = refScores(data, d, q, metric);
  const ids = s.map((_, i) => i);
  ids.sort((a, b) => (s[a] === s[b] ? a - b : metric === 'l2' ? s[a]! - s[b]! : s[b]! - s[a]!));
  return ids.slice(0, k);
}

const METRICS: Metric[] = ['ip', 'l2', 'cosine'];

describe('exact top-k', () => {
  const rng = new Rng(7);

  for (const level of simdInfo().supported) {
    it(`equals a TypeScript sort, ties included, for ip and l2 (level ${level})`, () => {
      for (const [n, d] of [[1, 1], [1, 5], [2, 3], [17, 1], [50, 7], [300, 16], [1000, 33]] as const) {
        const data = new Rng(n * 131 + d).f32ints(n * d, -2, 2); // few distinct values: many ties
        const t = SparseTensor.fromArray(data, d);
        for (const metric of ['ip', 'l2'] as const) {
          for (const k of [1, Math.min(n, 3), Math.min(n, 10), n]) {
            const q = rng.f32ints(d, -2, 2);
            const r = t.search(q, k, { metric, level });
            expect(Array.from(r.ids)).toEqual(refTopK(data, d, q, k, metric));
            const s = refScores(data, d, q, metric);
            expect(Array.from(r.scores)).toEqual(Array.from(r.ids, (id) => s[id]));
          }
        }
      }
    });
  }

  // One query per call streams the rows through the level's one-row kernel; a group of
  // four queries goes through the four-query block kernel. Both must give every pair
  // the same bits (the summation order is fixed per level), on shapes that end inside a
  // SIMD vector, a row block and a group of four, with NaN, infinities and overflow.
  for (const level of simdInfo().supported) {
    it(`one query, a few queries and a batch score every row with the same bits (level ${level})`, async () => {
      let nonFinite = 0;
      // Rows must be finite; these make infinite and NaN scores (overflow, inf - inf) and subnormals.
      const hostile = [3e38, -3e38, 1e30, -1e30, 1e-40];
      for (const [n, d] of [[9, 1], [301, 7], [999, 17], [1001, 100], [333, 129], [130, 784], [77, 1000]] as const) {
        const r = new Rng(n * 7 + d);
        const data = r.f32(n * d);
        for (let h = 0; h < hostile.length; h++) data[((h * 37) % n) * d + ((h * 5) % d)] = hostile[h]!;
        if (d > 1) data[1] = -3e38; // row 0 against query 0: +inf + -inf = NaN for ip, inf for l2
        // A row equal to another (a real tie at every level: same operands, same order).
        data.copyWithin(((n - 1) % n) * d, 0, d);
        const Q = r.f32(4 * d);
        Q[0] = 2e38;
        if (d > 1) Q[1] = 2e38;
        // Adopted from an offset view too: rows that start off any vector alignment.
        const buf = new Float32Array(n * d + 1);
        buf.set(data, 1);
        for (const t of [SparseTensor.fromArray(data, d), SparseTensor.fromArray(buf.subarray(1), d, { adopt: true })]) {
          for (const metric of ['ip', 'l2'] as const) {
            const block = native().kernelBlock(metric === 'l2' ? 'l2' : 'dot', level, Q, data, d); // 4 x n, 4-query kernel
            nonFinite += block.filter((x) => !Number.isFinite(x)).length;
            const k = Math.min(n, 10);
            for (let i = 0; i < 4; i++) {
              const s = Array.from(block.subarray(i * n, (i + 1) * n), (x) =>
                Number.isNaN(x) ? (metric === 'l2' ? Infinity : -Infinity) : x,
              );
              const ids = s.map((_, j) => j);
              ids.sort((a, b) => (s[a] === s[b] ? a - b : metric === 'l2' ? (s[a]! < s[b]! ? -1 : 1) : s[a]! > s[b]! ? -1 : 1));
              const want = ids.slice(0, k);
              const got = t.search(Q.subarray(i * d, (i + 1) * d), k, { metric, level });
              expect(Array.from(got.ids)).toEqual(want);
              expect(Array.from(got.scores)).toEqual(want.map((j) => s[j]));
            }
            // A few queries (1..3: the one-row path for each) and all four (block path).
            for (const nq of [1, 2, 3, 4]) {
              const b = await t.searchBatch(Q.subarray(0, nq * d), k, { metric, level, threads: 1 });
              for (let i = 0; i < nq; i++) {
                const one = t.search(Q.subarray(i * d, (i + 1) * d), k, { metric, level });
                expect(Array.from(b.ids.subarray(i * k, (i + 1) * k))).toEqual(Array.from(one.ids));
                expect(Array.from(b.scores.subarray(i * k, (i + 1) * k))).toEqual(Array.from(one.scores));
              }
            }
          }
        }
      }
      expect(nonFinite).toBeGreaterThan(0);
    });
  }

  it('cosine: the same ids as the reference where scores are separated, best first', () => {
    const d = 24, n = 400;
    const data = rng.f32(n * d);
    const t = SparseTensor.fromArray(data, d, { metric: 'cosine' });
    for (let trial = 0; trial < 20; trial++) {
      const q = rng.f32(d);
      const r = t.search(q, 10);
      const s = refScores(data, d, q, 'cosine');
      const ref = refTopK(data, d, q, 10, 'cosine');
      for (let i = 0; i < 10; i++) expect(r.scores[i]).toBeCloseTo(s[ref[i]!]!, 5);
      for (let i = 1; i < 10; i++) expect(r.scores[i]!).toBeLessThanOrEqual(r.scores[i - 1]!);
      // Float rounding can only swap near-ties: every returned score is within 1e-6 of the reference list.
      for (let i = 0; i < 10; i++) expect(Math.abs(s[r.ids[i]!]! - s[ref[i]!]!)).toBeLessThan(1e-6);
    }
    // A zero row has cosine 0 with everything; a zero query scores 0 everywhere.
    const z = SparseTensor.fromArray(new Float32Array([0, 0, 1, 0, -1, 0]), 2, { metric: 'cosine' });
    expect(Array.from(z.search(new Float32Array([1, 0]), 3).scores)).toEqual([1, 0, -1]);
    expect(Array.from(z.search(new Float32Array([0, 0]), 3).ids)).toEqual([0, 1, 2]);
  });

  it('batched search (sync and async, 1 and many threads) equals one search per query', async () => {
    const d = 19, n = 2500, nq = 37, k = 7;
    const data = rng.f32ints(n * d, -3, 3);
    const t = SparseTensor.fromArray(data, d);
    const queries = rng.f32ints(nq * d, -3, 3);
    for (const metric of METRICS) {
      const singles = Array.from({ length: nq }, (_, i) => t.search(queries.subarray(i * d, (i + 1) * d), k, { metric }));
      for (const threads of [1, 2, 3, 8]) {
        const sync = t.searchBatchSync(queries, k, { metric, threads });
        const asyncR = await t.searchBatch(queries, k, { metric, threads });
        for (const r of [sync, asyncR]) {
          expect(r.queries).toBe(nq);
          expect(r.k).toBe(k);
          for (let i = 0; i < nq; i++) {
            expect(Array.from(r.ids.subarray(i * k, (i + 1) * k))).toEqual(Array.from(singles[i]!.ids));
            expect(Array.from(r.scores.subarray(i * k, (i + 1) * k))).toEqual(Array.from(singles[i]!.scores));
          }
        }
      }
    }
  });

  it('few queries over many rows (rows split across threads) equals the reference', async () => {
    const d = 8, n = 60_000;
    const data = rng.f32ints(n * d, -4, 4);
    const t = SparseTensor.fromArray(data, d);
    const q = rng.f32ints(d, -4, 4);
    const r = await t.searchBatch(q, 25, { metric: 'l2', threads: 2 });
    expect(Array.from(r.ids)).toEqual(refTopK(data, d, q, 25, 'l2'));
  });

  it('one query with threads (rows split into pieces between the caller and the scan pool) equals one thread and the reference', () => {
    // Integer data: exact scores, real ties. Rows not a multiple of the pieces, k past a
    // piece's worth of ties; d 24 and 100 (short rows: the 16-rows-at-once kernel path).
    for (const d of [24, 100]) {
      const n = 20_011;
      const data = rng.f32ints(n * d, -2, 2);
      const t = SparseTensor.fromArray(data, d);
      for (const metric of METRICS) {
        const q = rng.f32ints(d, -2, 2);
        const one = t.search(q, 40, { metric, threads: 1 });
        for (const threads of [2, 3, 8]) {
          const r = t.search(q, 40, { metric, threads });
          expect(Array.from(r.ids)).toEqual(Array.from(one.ids));
          expect(Array.from(r.scores)).toEqual(Array.from(one.scores));
        }
        expect(Array.from(t.search(q, 40, { metric }).ids)).toEqual(Array.from(one.ids)); // the default: all cores
        if (metric !== 'cosine') expect(Array.from(one.ids)).toEqual(refTopK(data, d, q, 40, metric));
      }
      // k = n: every row of every piece is scored once, in the one-thread order.
      const q = rng.f32ints(d, -2, 2);
      const all1 = t.search(q, n, { metric: 'l2', threads: 1 });
      const all3 = t.search(q, n, { metric: 'l2', threads: 3 });
      expect(new Set(all3.ids).size).toBe(n);
      expect(Array.from(all3.ids)).toEqual(Array.from(all1.ids));
    }
  });

  it('search refuses a bad threads option, and threads with the hnsw index', async () => {
    const t = SparseTensor.fromArray(rng.f32(64 * 4), 4);
    await t.buildHnsw({ M: 4, efConstruction: 16 });
    const q = rng.f32(4);
    for (const threads of [0, 1025, 1.5, Number.NaN]) expect(() => t.search(q, 3, { threads })).toThrow(/threads/);
    expect(() => t.search(q, 3, { index: 'hnsw', threads: 2 })).toThrow(/threads applies to index 'exact' only/);
  });

  it('an empty batch returns empty results', async () => {
    const t = SparseTensor.fromArray(new Float32Array([1, 2, 3, 4]), 2);
    const r = await t.searchBatch(new Float32Array(0), 1);
    expect(r.queries).toBe(0);
    expect(r.ids.length).toBe(0);
  });
});
