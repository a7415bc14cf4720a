/**
 * The canonical backward of the simple kinds (embedding, position, add) and the driver
 * that sums gradients over a graph (lib/verify/backward.ts): against float64 references
 * by finite differences and against the exact sums they must equal.
 */
import { describe, expect, it } from 'vitest';

import { Add, Embedding, Model, PositionEmbedding, SparseTensor } from '../lib/index.js';
import { canonicalGrads, dot64, finiteDiff } from './helpers/canonical-grad.js';
import { Rng } from './helpers/rng.js';

describe('canonical backward: embedding, position, add', () => {
  it('y = 2 emb(ids) + P over a graph: table rows get twice their positions\' dy summed, P_i gets dy_i', async () => {
    const rng = new Rng(7);
    const V = 11, d = 6, n = 9;
    const table = SparseTensor.fromArray(rng.f32(V * d), d);
    const pos = SparseTensor.fromArray(rng.f32(16 * d), d);
    // emb -> position(emb) -> add(emb, position): y = emb + (emb + P).
    const model = new Model([new Embedding(table), new PositionEmbedding(pos), new Add()], { inputs: [[-1], [0], [0, 1]] });
    const ids = Uint32Array.from([3, 1, 3, 3, 0, 10, 1, 7, 3]);
    const dy = rng.f32(n * d);
    const g = await canonicalGrads(model, ids, dy);
    expect(g.input).toBeNull();
    expect(Array.from(g.ids(table))).toEqual([0, 1, 3, 7, 10]);
    expect(Array.from(g.ids(pos))).toEqual(Array.from({ length: n }, (_, i) => i));
    // Float64 reference by finite differences of L = sum dy . y over the table and P.
    const T = Float64Array.from(table.gather(Uint32Array.from({ length: V }, (_, i) => i)));
    const P = Float64Array.from(pos.gather(Uint32Array.from({ length: 16 }, (_, i) => i)));
    const loss = (t: Float64Array, p: Float64Array): number => {
      let s = 0;
      for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) s += dy[i * d + j]! * (2 * t[ids[i]! * d + j]! + p[i * d + j]!);
      return s;
    };
    const gt = g.dense(table), gp = g.dense(pos);
    for (let i = 0; i < V * d; i++) expect(gt[i]).toBeCloseTo(finiteDiff((t) => loss(t, P), T, i), 4);
    for (let i = 0; i < 16 * d; i++) expect(gp[i]).toBeCloseTo(finiteDiff((p) => loss(T, p), P, i), 4);
    // Exactly: the add's two dy's are summed in f32 (dy + dy, exact), then each id's rows in f64, rounded once.
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let i = 0; i < n; i++) if (ids[i] === 3) s += Math.fround(dy[i * d + j]! + dy[i * d + j]!);
      expect(gt[3 * d + j]).toBe(Math.fround(s));
    }
    expect(dot64(gp.subarray(n * d), gp.subarray(n * d))).toBe(0);
  });
});
