import { describe, expect, it } from 'vitest';

import {
  Embedding,
  HopfieldLookup,
  InvalidArgumentError,
  OutOfRangeError,
  ProductKeyIndex,
  SparseTensor,
  UnsupportedError,
  type HopfieldLookupOptions,
  type Similarity,
  type SparseGrad,
} from '../lib/index.js';
import { Rng } from './helpers/rng.js';

/** Per-row sums of a SparseGrad (ids may repeat) as a dense n x dim array. */
function densify(g: SparseGrad): Float64Array {
  const d = g.tensor.dim, out = new Float64Array(g.tensor.size * d);
  const ids = Array.from(g.ids);
  ids.forEach((id, i) => {
    for (let j = 0; j < d; j++) out[id * d + j]! += g.grads[i * d + j]!;
  });
  return out;
}

const lossOf = (y: Float32Array, w: Float32Array): number => y.reduce((s, v, i) => s + v * w[i]!, 0);

let checked = 0;
function expectGrad(fd: number, an: number, label: string): void {
  checked++;
  const tol = 3e-3 + 2e-2 * Math.abs(an);
  if (Math.abs(fd - an) > tol) throw new Error(`${label}: finite difference ${fd} vs analytic ${an}`);
}

async function gradCheck(layer: HopfieldLookup, x: Float32Array, rng: Rng, samples = 12): Promise<void> {
  const B = x.length / layer.dim;
  const w = rng.f32(B * layer.outDim);
  const f = await layer.forward(x);
  const g = await layer.backward(f.ctx, w);
  const eps = 1e-2;
  checked = 0;
  // Every stage's selection must match (the selection has no gradient).
  const sel = (r: { ctx: { stages: readonly { ids: Uint32Array }[] } }): string => r.ctx.stages.map((st) => Array.from(st.ids).join(',')).join('|');
  const sameSel = (a: { ctx: { stages: readonly { ids: Uint32Array }[] } }, b: typeof a): boolean => sel(a) === sel(b);
  // input
  for (let s = 0; s < samples; s++) {
    const i = rng.int(0, x.length - 1);
    const xp = x.slice(), xm = x.slice();
    xp[i]! += eps;
    xm[i]! -= eps;
    const fp = await layer.forward(xp), fm = await layer.forward(xm);
    if (!sameSel(fp, f) || !sameSel(fm, f)) continue; // selection changed: not differentiable there
    expectGrad((lossOf(fp.y, w) - lossOf(fm.y, w)) / (2 * eps), g.dx[i]!, `dx[${i}]`);
  }
  // every parameter tensor that got a gradient
  for (const sg of g.grads) {
    const dense = densify(sg);
    const t = sg.tensor, d = t.dim;
    const rows = Array.from(new Set(Array.from(sg.ids)));
    for (let s = 0; s < samples; s++) {
      const id = rows[rng.int(0, rows.length - 1)]!, j = rng.int(0, d - 1);
      const orig = t.gather([id]);
      const p = orig.slice(), m = orig.slice();
      p[j]! += eps;
      m[j]! -= eps;
      t.scatter([id], p);
      const fp = await layer.forward(x);
      t.scatter([id], m);
      const fm = await layer.forward(x);
      t.scatter([id], orig);
      if (!sameSel(fp, f) || !sameSel(fm, f)) continue;
      expectGrad((lossOf(fp.y, w) - lossOf(fm.y, w)) / (2 * eps), dense[id * d + j]!, `d${t === layer.values ? 'V' : 'K'}[${id}][${j}]`);
    }
  }
  // beta
  const b0 = layer.betaParam[0]!;
  layer.betaParam[0] = b0 + eps;
  const fp = await layer.forward(x);
  layer.betaParam[0] = b0 - eps;
  const fm = await layer.forward(x);
  layer.betaParam[0] = b0;
  expectGrad((lossOf(fp.y, w) - lossOf(fm.y, w)) / (2 * eps), g.dBeta, 'dBeta');
  // Most perturbations keep the selection: the check is not vacuous.
  expect(checked).toBeGreaterThan(samples * (1 + g.grads.length) * 0.6);
}

function makeLayer(rng: Rng, o: Partial<HopfieldLookupOptions> & { n: number; d: number; dv: number }): HopfieldLookup {
  const { n, d, dv, ...rest } = o; // the sizes are not layer options (unknown options are refused)
  const keys = SparseTensor.fromArray(rng.f32(n * d), d);
  const values = SparseTensor.fromArray(rng.f32(n * dv), dv);
  return new HopfieldLookup({ keys, values, k: o.k ?? 5, beta: 1.5, ...rest });
}

describe('HopfieldLookup: finite-difference gradient checks', () => {
  const sims: Similarity[] = ['ip', 'cosine', 'l2'];
  for (const similarity of sims) {
    for (const normalize of [false, true]) {
      it(`sparse, exact retrieval, ${similarity}${normalize ? ', normalised input' : ''}`, async () => {
        const rng = new Rng(similarity.length * 10 + (normalize ? 1 : 0));
        const layer = makeLayer(rng, { n: 30, d: 6, dv: 4, k: 5, similarity, normalize });
        await gradCheck(layer, rng.f32(3 * 6), rng);
      });
      it(`dense, ${similarity}${normalize ? ', normalised input' : ''}`, async () => {
        const rng = new Rng(100 + similarity.length * 10 + (normalize ? 1 : 0));
        const layer = makeLayer(rng, { n: 20, d: 5, dv: 3, similarity, normalize, mode: 'dense' });
        await gradCheck(layer, rng.f32(2 * 5), rng, 8);
      });
    }
  }
  it('sparse over product keys (gradients reach both sub-key tables)', async () => {
    const rng = new Rng(5);
    const n = 6, d = 8;
    const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(n * 4), 4), SparseTensor.fromArray(rng.f32(n * 4), 4));
    const layer = new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(n * n * 3), 3), k: 7, beta: 1.2 });
    const f = await layer.forward(rng.f32(2 * d));
    const g = await layer.backward(f.ctx, rng.f32(2 * 3));
    expect(g.grads.map((x) => x.tensor)).toEqual([pk.keys1, pk.keys2, layer.values]);
    await gradCheck(layer, rng.f32(2 * d), rng);
  });
});

describe('HopfieldLookup: sparse with k = N equals dense', () => {
  for (const similarity of ['ip', 'cosine', 'l2'] as Similarity[]) {
    it(similarity, async () => {
      const rng = new Rng(9);
      const n = 64, d = 16, dv = 8, B = 5;
      const kd = rng.f32(n * d), vd = rng.f32(n * dv);
      const sparse = new HopfieldLookup({ keys: SparseTensor.fromArray(kd, d), values: SparseTensor.fromArray(vd, dv), k: n, similarity, normalize: true, beta: 2 });
      const dense = new HopfieldLookup({ keys: SparseTensor.fromArray(kd, d), values: SparseTensor.fromArray(vd, dv), k: n, similarity, normalize: true, beta: 2, mode: 'dense' });
      const x = rng.f32(B * d), dy = rng.f32(B * dv);
      const fs = await sparse.forward(x), fd = await dense.forward(x);
      const rel = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
        let num = 0, den = 0;
        for (let i = 0; i < a.length; i++) {
          num = Math.max(num, Math.abs(a[i]! - b[i]!));
          den = Math.max(den, Math.abs(b[i]!));
        }
        return num / den;
      };
      expect(rel(fs.y, fd.y)).toBeLessThan(1e-5);
      const gs = await sparse.backward(fs.ctx, dy), gd = await dense.backward(fd.ctx, dy);
      expect(rel(gs.dx, gd.dx)).toBeLessThan(1e-5);
      expect(Math.abs(gs.dBeta - gd.dBeta) / Math.abs(gd.dBeta)).toBeLessThan(1e-5);
      for (let i = 0; i < 2; i++) expect(rel(densify(gs.grads[i]!), densify(gd.grads[i]!))).toBeLessThan(1e-5);
    });
  }
});

describe('HopfieldLookup: retrieval kinds and iterative retrieval', () => {
  it('hnsw retrieval gives the exact result when the graph finds the exact top-k', async () => {
    const rng = new Rng(21);
    const n = 300, d = 16, dv = 4;
    const keys = SparseTensor.fromArray(rng.f32(n * d), d, { metric: 'cosine' });
    await keys.buildHnsw();
    const values = SparseTensor.fromArray(rng.f32(n * dv), dv);
    const exact = new HopfieldLookup({ keys, values, k: 8, similarity: 'cosine' });
    const hnsw = new HopfieldLookup({ keys, values, k: 8, similarity: 'cosine', index: 'hnsw', ef: 300 });
    const x = rng.f32(4 * d);
    const a = await exact.forward(x), b = await hnsw.forward(x);
    expect(Array.from(b.ids)).toEqual(Array.from(a.ids));
    expect(Array.from(b.y)).toEqual(Array.from(a.y));
  });

  it('updateSteps > 1 completes a corrupted stored pattern (associative memory)', async () => {
    const rng = new Rng(4);
    const n = 40, d = 32;
    const pats = rng.f32(n * d);
    const keys = SparseTensor.fromArray(pats, d), values = SparseTensor.fromArray(pats, d);
    const one = new HopfieldLookup({ keys, values, k: 10, beta: 1, updateSteps: 1 });
    const three = new HopfieldLookup({ keys, values, k: 10, beta: 1, updateSteps: 3 });
    const target = 7, x = pats.slice(target * d, (target + 1) * d);
    for (let j = 0; j < d / 2; j++) x[j] = 0; // half of the pattern erased
    const dist = (y: Float32Array): number => y.reduce((s, v, j) => s + (v - pats[target * d + j]!) ** 2, 0);
    const y1 = (await one.forward(x)).y, y3 = await three.forward(x);
    expect(dist(y3.y)).toBeLessThan(dist(y1));
    expect(dist(y3.y)).toBeLessThan(0.01 * d);
  });

  for (const steps of [2, 3]) {
    it(`backward through ${steps} update steps matches finite differences (keys get both gradients)`, async () => {
      const rng = new Rng(40 + steps);
      const layer = makeLayer(rng, { n: 25, d: 6, dv: 4, k: 4, similarity: 'cosine', normalize: true, updateSteps: steps });
      await gradCheck(layer, rng.f32(2 * 6), rng);
    });
  }
  it('backward through 2 update steps over product keys matches finite differences', async () => {
    const rng = new Rng(77);
    const n = 5;
    const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(n * 3), 3), SparseTensor.fromArray(rng.f32(n * 3), 3));
    const layer = new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(n * n * 2), 2), k: 6, beta: 0.8, updateSteps: 2 });
    await gradCheck(layer, rng.f32(2 * 6), rng);
  });

  it('rejects bad input with typed errors', async () => {
    const rng = new Rng(1);
    const keys = SparseTensor.fromArray(rng.f32(40), 4), values = SparseTensor.fromArray(rng.f32(30), 3);
    const other = SparseTensor.fromArray(rng.f32(12), 3);
    expect(() => new HopfieldLookup({ keys, values: other, k: 2 })).toThrow(InvalidArgumentError);
    expect(() => new HopfieldLookup({ keys, values, k: 11 })).toThrow(OutOfRangeError);
    expect(() => new HopfieldLookup({ keys, values, k: 0 })).toThrow(OutOfRangeError);
    expect(() => new HopfieldLookup({ keys, values, k: 2, similarity: 'dot' as Similarity })).toThrow(InvalidArgumentError);
    expect(() => new HopfieldLookup({ keys, values, k: 2, beta: NaN })).toThrow(OutOfRangeError);
    const pk = ProductKeyIndex.random(3, 4, () => rng.next());
    expect(() => new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(27), 3), k: 2, similarity: 'l2' })).toThrow(UnsupportedError);
    expect(() => new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(27), 3), k: 2, mode: 'dense' })).toThrow(UnsupportedError);
    const layer = new HopfieldLookup({ keys, values, k: 2 });
    await expect(layer.forward(new Float32Array(5))).rejects.toThrow(InvalidArgumentError);
    await expect(layer.forward(new Float32Array([1, NaN, 0, 0]))).rejects.toThrow(InvalidArgumentError);
    const f = await layer.forward(rng.f32(8));
    await expect(layer.backward(f.ctx, new Float32Array(5))).rejects.toThrow(InvalidArgumentError);
    const dense = new HopfieldLookup({ keys, values, k: 2, mode: 'dense' });
    await expect(dense.forward(new Float32Array(0))).rejects.toThrow(InvalidArgumentError);
  });
});

describe('Embedding', () => {
  it('forward gathers rows; sparse and dense gradients agree; repeats are summed', () => {
    const rng = new Rng(2);
    const table = SparseTensor.fromArray(rng.f32(10 * 3), 3);
    const sparse = new Embedding(table), dense = new Embedding(table, { mode: 'dense' });
    const ids = [4, 1, 4];
    expect(Array.from(sparse.forward(ids))).toEqual(Array.from(table.gather(ids)));
    const dy = rng.f32(9);
    const a = densify(sparse.backward(ids, dy)), b = densify(dense.backward(ids, dy));
    a.forEach((v, i) => expect(v).toBeCloseTo(b[i]!, 6));
    expect(a[4 * 3]).toBeCloseTo(dy[0]! + dy[6]!, 6);
    expect(a[0]).toBe(0); // row 0 not looked up
    expect(() => sparse.backward(ids, new Float32Array(8))).toThrow(InvalidArgumentError);
    expect(() => sparse.backward([10], new Float32Array(3))).toThrow(OutOfRangeError);
  });
});
