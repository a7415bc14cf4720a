/**
 * SparseSelfAttention and Projection against an independent double-precision
 * reference written here (projections, top-k selection, softmax, gradients), the
 * dense mode, finite differences, the causal mask and hostile arguments.
 */
import { describe, expect, it } from 'vitest';
import {
  InvalidArgumentError,
  NO_KEY,
  OutOfRangeError,
  Projection,
  SparseAdam,
  SparseSelfAttention,
  SparseTensor,
} from '../lib/index.js';
import type { SparseGrad } from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { Rng } from './helpers/rng.js';

interface Ref {
  y: Float64Array;
  /** Selected keys per head and query (sorted best first). */
  ids: number[][][];
  /** Gap between the k-th and (k+1)-th score per head and query (Infinity if none). */
  gap: number[][];
}

/** x (n x dIn) W^T (outDim x dIn), keeping the top kp columns per row (all if kp = outDim). */
function refProject(x: ArrayLike<number>, n: number, w: ArrayLike<number>, outDim: number, kp: number): Float64Array {
  const dIn = x.length / n;
  const y = new Float64Array(n * outDim);
  for (let i = 0; i < n; i++) {
    const s: [number, number][] = [];
    for (let j = 0; j < outDim; j++) {
      let v = 0;
      for (let t = 0; t < dIn; t++) v += x[i * dIn + t]! * w[j * dIn + t]!;
      s.push([v, j]);
    }
    s.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    for (let c = 0; c < kp; c++) y[i * outDim + s[c]![1]] = s[c]![0];
  }
  return y;
}

/** Top-k (or all, k = n) attention in float64. */
function refAttention(q: ArrayLike<number>, kk: ArrayLike<number>, v: ArrayLike<number>, n: number, heads: number, k: number, causal: boolean): Ref {
  const D = q.length / n, dk = D / heads, scale = 1 / Math.sqrt(dk);
  const y = new Float64Array(n * D);
  const ids: number[][][] = [], gap: number[][] = [];
  for (let h = 0; h < heads; h++) {
    ids.push([]);
    gap.push([]);
    for (let i = 0; i < n; i++) {
      const cand: [number, number][] = [];
      for (let j = 0; j < (causal ? i + 1 : n); j++) {
        let s = 0;
        for (let t = 0; t < dk; t++) s += q[i * D + h * dk + t]! * kk[j * D + h * dk + t]!;
        cand.push([s, j]);
      }
      cand.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      const sel = cand.slice(0, k);
      ids[h]!.push(sel.map((c) => c[1]));
      gap[h]!.push(cand.length > k ? sel[sel.length - 1]![0] - cand[k]![0] : Infinity);
      const mx = Math.max(...sel.map((c) => scale * c[0]));
      const p = sel.map((c) => Math.exp(scale * c[0] - mx));
      const z = p.reduce((a, b) => a + b, 0);
      sel.forEach(([, j], c) => {
        for (let t = 0; t < dk; t++) y[i * D + h * dk + t]! += (p[c]! / z) * v[j * D + h * dk + t]!;
      });
    }
  }
  return { y, ids, gap };
}

function maxRel(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let mag = 1e-2, err = 0;
  for (let i = 0; i < want.length; i++) mag = Math.max(mag, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i]! - want[i]!));
  return err / mag;
}

function dot64(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/** A layer with dense (k = outDim) or sparse projections over fresh tensors. */
function makeLayer(rng: Rng, o: { dIn: number; D: number; heads: number; k: number; causal?: boolean; mode?: 'sparse' | 'dense'; kProj?: number; output?: boolean }) {
  const w = { q: rng.f32(o.D * o.dIn, 0.4), k: rng.f32(o.D * o.dIn, 0.4), v: rng.f32(o.D * o.dIn, 0.4), o: rng.f32(o.D * o.D, 0.4) };
  const t = {
    q: SparseTensor.fromArray(w.q, o.dIn), k: SparseTensor.fromArray(w.k, o.dIn),
    v: SparseTensor.fromArray(w.v, o.dIn), o: SparseTensor.fromArray(w.o, o.D),
  };
  const proj = (tensor: SparseTensor) => new Projection({ weight: tensor, ...(o.kProj === undefined ? {} : { k: o.kProj }) });
  const layer = new SparseSelfAttention({
    heads: o.heads, k: o.k, causal: o.causal ?? false, mode: o.mode ?? 'sparse',
    query: proj(t.q), key: proj(t.k), value: proj(t.v), ...(o.output ? { output: new Projection({ weight: t.o }) } : {}),
  });
  return { layer, w, t };
}

describe('SparseSelfAttention', () => {
  it('matches a float64 reference: projections, top-k selection, softmax (k < n and k = n, causal or not)', async () => {
    const rng = new Rng(11);
    for (const causal of [false, true]) {
      for (const k of [3, 16, 90]) {
        const n = 90, dIn = 20, D = 24, heads = 3;
        const { layer, w } = makeLayer(rng, { dIn, D, heads, k, causal, output: true });
        const x = rng.f32(n * dIn);
        const r = await layer.forward(x);
        const q = refProject(x, n, w.q, D, D), kk = refProject(x, n, w.k, D, D), v = refProject(x, n, w.v, D, D);
        const ref = refAttention(q, kk, v, n, heads, k, causal);
        const y = refProject(ref.y, n, w.o, D, D);
        expect(maxRel(r.y, y)).toBeLessThan(1e-5);
        // ids: the reference's choice wherever the k-th score is clear of the next.
        let compared = 0;
        for (let h = 0; h < heads; h++)
          for (let i = 0; i < n; i++) {
            const got = Array.from(r.ids.subarray((h * n + i) * k, (h * n + i + 1) * k));
            const want = ref.ids[h]![i]!;
            expect(got.slice(want.length).every((j) => j === NO_KEY)).toBe(true);
            if (ref.gap[h]![i]! > 1e-4) {
              expect(got.slice(0, want.length)).toEqual(want);
              compared++;
            }
            const wsum = r.weights.subarray((h * n + i) * k, (h * n + i + 1) * k).reduce((a, b) => a + b, 0);
            expect(Math.abs(wsum - 1)).toBeLessThan(1e-5);
          }
        expect(compared).toBeGreaterThan(heads * n * 0.9);
      }
    }
  });

  it('with k = n equals the dense mode to 1e-5 (outputs and every gradient), causal or not', async () => {
    for (const causal of [false, true]) {
      const n = 130, dIn = 16, D = 32, heads = 4;
      const a = makeLayer(new Rng(5), { dIn, D, heads, k: n, causal, output: true });
      const b = makeLayer(new Rng(5), { dIn, D, heads, k: n, causal, output: true, mode: 'dense' });
      const x = new Rng(6).f32(n * dIn);
      const ra = await a.layer.forward(x), rb = await b.layer.forward(x);
      expect(rb.ids.length).toBe(0);
      expect(maxRel(ra.y, rb.y)).toBeLessThan(1e-5);
      const dy = new Rng(7).f32(n * D);
      const ga = await a.layer.backward(ra.ctx, dy), gb = await b.layer.backward(rb.ctx, dy);
      expect(maxRel(ga.dx, gb.dx)).toBeLessThan(1e-5);
      expect(ga.grads.length).toBe(4);
      for (let t = 0; t < 4; t++) {
        expect(Array.from(ga.grads[t]!.ids)).toEqual(Array.from(gb.grads[t]!.ids));
        expect(maxRel(ga.grads[t]!.grads, gb.grads[t]!.grads)).toBeLessThan(1e-5);
      }
      // And a smaller k is a different function (the comparison above can fail).
      const c = makeLayer(new Rng(5), { dIn, D, heads, k: 4, causal, output: true });
      expect(maxRel((await c.layer.forward(x)).y, rb.y)).toBeGreaterThan(1e-3);
    }
  });

  it('gradients agree with central finite differences (input and every projection weight)', async () => {
    const rng = new Rng(21);
    for (const [mode, k, kProj] of [['sparse', 5, undefined], ['sparse', 5, 3], ['dense', 0, undefined]] as const) {
      const n = 24, dIn = 8, D = 12, heads = 2;
      const { layer, t } = makeLayer(rng, { dIn, D, heads, k: Math.max(k, 1), mode, output: true, ...(kProj === undefined ? {} : { kProj }) });
      const x = rng.f32(n * dIn);
      const dy = rng.f32(n * D);
      const base = await layer.forward(x);
      const g = await layer.backward(base.ctx, dy);
      const loss = async (): Promise<{ l: number; same: boolean }> => {
        const r = await layer.forward(x);
        const sameIds = r.ids.every((v, i) => v === base.ids[i]);
        // Sparse projections: the kept columns must not change either.
        const sameCols = ['q', 'k', 'v'].every((s) => {
          const c = r.ctx.proj[s as 'q' | 'k' | 'v']?.ids, c0 = base.ctx.proj[s as 'q' | 'k' | 'v']?.ids;
          return c === null || c === undefined || c0 === null || c0 === undefined || c.every((v, i) => v === c0[i]);
        });
        return { l: dot64(r.y, dy), same: sameIds && sameCols };
      };
      const eps = 2e-3;
      let checked = 0, tried = 0;
      const probe = async (arr: Float32Array, at: number, analytic: number, write: () => void) => {
        tried++;
        const old = arr[at]!;
        arr[at] = old + eps;
        write();
        const up = await loss();
        arr[at] = old - eps;
        write();
        const down = await loss();
        arr[at] = old;
        write();
        if (!up.same || !down.same) return;
        checked++;
        const fd = (up.l - down.l) / (2 * eps);
        expect(Math.abs(fd - analytic)).toBeLessThan(2e-3 + 2e-2 * Math.abs(fd));
      };
      for (let s = 0; s < 12; s++) {
        const at = rng.int(0, x.length - 1);
        await probe(x, at, g.dx[at]!, () => {});
      }
      for (const [name, tensor] of Object.entries(t)) {
        const grad = g.grads.find((e: SparseGrad) => e.tensor === tensor);
        expect(grad, name).toBeDefined();
        const ids = Array.from(grad!.ids);
        const dim = tensor.dim;
        for (let s = 0; s < 4; s++) {
          const r = rng.int(0, ids.length - 1), c = rng.int(0, dim - 1);
          const row = tensor.row(ids[r]!);
          await probe(row, c, grad!.grads[r * dim + c]!, () => tensor.scatter([ids[r]!], row));
        }
        // A sparse projection's gradient covers only the columns it kept.
        if (kProj !== undefined && name !== 'o') {
          const kept = new Set(Array.from(base.ctx.proj[name as 'q' | 'k' | 'v']!.ids!));
          expect(ids).toEqual([...kept].sort((a, b) => a - b));
        }
      }
      // Most probes must keep the selection, or the check would pass vacuously.
      expect(checked, `${mode} k=${k} kProj=${kProj}`).toBeGreaterThanOrEqual(Math.floor(tried * 0.7));
    }
  });

  it('causal: a query never sees a later position', async () => {
    const rng = new Rng(31);
    for (const mode of ['sparse', 'dense'] as const) {
      const n = 200, D = 32, heads = 2, k = 8;
      const layer = new SparseSelfAttention({ heads, k, causal: true, mode });
      const x = rng.f32(n * D);
      const r = await layer.forward(x, D);
      if (mode === 'sparse') {
        for (let h = 0; h < heads; h++)
          for (let i = 0; i < n; i++)
            for (let c = 0; c < k; c++) {
              const j = r.ids[(h * n + i) * k + c]!;
              if (c <= i) expect(j).toBeLessThanOrEqual(i);
              else expect(j).toBe(NO_KEY);
            }
      }
      // Changing the rows after position p leaves outputs 0..p bit for bit.
      const p = 117;
      const x2 = x.slice();
      for (let i = (p + 1) * D; i < x2.length; i++) x2[i] = rng.signed() * 5;
      const r2 = await layer.forward(x2, D);
      expect(Buffer.from(r2.y.buffer, 0, (p + 1) * D * 4).equals(Buffer.from(r.y.buffer, 0, (p + 1) * D * 4))).toBe(true);
      expect(Buffer.from(r2.y.buffer).equals(Buffer.from(r.y.buffer))).toBe(false);
      // And the gradient of an early output reaches no later input.
      const dy = new Float32Array(n * D);
      for (let i = 0; i < (p + 1) * D; i++) dy[i] = rng.signed();
      const g = await layer.backward(r.ctx, dy);
      expect(g.dx.subarray((p + 1) * D).every((v) => v === 0)).toBe(true);
      expect(g.dx.subarray(0, (p + 1) * D).some((v) => v !== 0)).toBe(true);
    }
  });

  it('a sparse projection keeps the top-k columns and an optimizer step touches only their patterns', async () => {
    const rng = new Rng(41);
    const n = 5, dIn = 16, m = 40, kp = 6;
    const wArr = rng.f32(m * dIn);
    const weight = SparseTensor.fromArray(wArr, dIn);
    const p = new Projection({ weight, k: kp });
    const x = rng.f32(n * dIn);
    const { y, ctx } = await p.forward(x);
    const ref = refProject(x, n, wArr, m, kp);
    expect(maxRel(y, ref)).toBeLessThan(1e-5);
    for (let i = 0; i < n; i++) expect(y.subarray(i * m, (i + 1) * m).filter((v) => v !== 0).length).toBe(kp);
    const dy = rng.f32(n * m);
    const { grad } = await p.backward(ctx, dy);
    const touched = new Set(Array.from(grad.ids));
    expect(touched.size).toBe(grad.ids.length);
    expect(touched.size).toBeLessThan(m); // else "only the touched rows change" says nothing
    const before = weight.gather(Array.from({ length: m }, (_, j) => j));
    await weight.commit();
    const root0 = weight.root();
    new SparseAdam([weight], { lr: 0.01 }).step([grad]);
    const after = weight.gather(Array.from({ length: m }, (_, j) => j));
    for (let j = 0; j < m; j++) {
      const same = after.subarray(j * dIn, (j + 1) * dIn).every((v, t) => v === before[j * dIn + t]);
      expect(same).toBe(!touched.has(j));
    }
    expect(Buffer.from(weight.root()).equals(Buffer.from(root0))).toBe(false);
    // k = outDim is the dense linear map.
    const full = await new Projection({ weight, k: m }).forward(x);
    const dense = await new Projection({ weight, mode: 'dense' }).forward(x);
    expect(maxRel(full.y, dense.y)).toBeLessThan(1e-5);
    expect(maxRel(dense.y, refProject(x, n, after, m, m))).toBeLessThan(1e-5);
  });

  it('a weight shared by two projections gets one merged gradient entry', async () => {
    const rng = new Rng(51);
    const w = SparseTensor.fromArray(rng.f32(16 * 16), 16);
    const layer = new SparseSelfAttention({ heads: 2, k: 4, query: new Projection({ weight: w }), key: new Projection({ weight: w }), value: new Projection({ weight: w }) });
    const r = await layer.forward(rng.f32(10 * 16));
    const g = await layer.backward(r.ctx, rng.f32(10 * 16));
    expect(g.grads.length).toBe(1);
    expect(g.grads[0]!.ids.length).toBe(48);
    new SparseAdam([w], { lr: 0.01 }).step(g.grads);
  });

  it('bad shapes, k out of range and hostile contexts are typed errors', async () => {
    const rng = new Rng(61);
    const layer = new SparseSelfAttention({ heads: 4, k: 8 });
    // k > n: every query attends to all the keys it may see, exactly as with k = n.
    const short = rng.f32(7 * 32);
    const all = await layer.forward(short, 32);
    expect(Array.from(all.y)).toEqual(Array.from((await new SparseSelfAttention({ heads: 4, k: 7 }).forward(short, 32)).y));
    await expect(layer.forward(rng.f32(33), 32)).rejects.toThrow(InvalidArgumentError); // not whole rows
    await expect(layer.forward(rng.f32(20 * 30), 30)).rejects.toThrow(InvalidArgumentError); // 30 % 4 heads
    await expect(layer.forward(rng.f32(20 * 32))).rejects.toThrow(InvalidArgumentError); // no width
    const nan = rng.f32(20 * 32);
    nan[5] = NaN;
    await expect(layer.forward(nan, 32)).rejects.toThrow(InvalidArgumentError);
    await expect(layer.forward(new Float64Array(640) as unknown as Float32Array, 32)).rejects.toThrow(InvalidArgumentError);
    expect(() => new SparseSelfAttention({ heads: 0, k: 8 })).toThrow(OutOfRangeError);
    expect(() => new SparseSelfAttention({ heads: 2, k: 0 })).toThrow(OutOfRangeError);
    expect(() => new SparseSelfAttention({ heads: 2, k: 1.5 })).toThrow(InvalidArgumentError);
    expect(() => new SparseSelfAttention({ heads: 2, k: 4, scale: -1 })).toThrow(OutOfRangeError);
    expect(() => new SparseSelfAttention({ heads: 2, k: 4, mode: 'fast' as 'dense' })).toThrow(InvalidArgumentError);
    const a = SparseTensor.fromArray(rng.f32(8 * 16), 16), b = SparseTensor.fromArray(rng.f32(12 * 16), 16);
    expect(() => new SparseSelfAttention({ heads: 2, k: 4, query: new Projection({ weight: a }), key: new Projection({ weight: b }) })).toThrow(InvalidArgumentError);
    expect(() => new Projection({ weight: a, k: 9 })).toThrow(OutOfRangeError);
    // The output projection must read the attention width: refused at construction when the projections fix it.
    expect(() => new SparseSelfAttention({ heads: 2, k: 4, query: new Projection({ weight: a }), key: new Projection({ weight: a }), value: new Projection({ weight: a }), output: new Projection({ weight: b }) })).toThrow(InvalidArgumentError);
    // Without q/k/v projections the width comes with forward(): checked there.
    const bad = new SparseSelfAttention({ heads: 2, k: 4, output: new Projection({ weight: SparseTensor.fromArray(rng.f32(12 * 8), 8) }) });
    await expect(bad.forward(rng.f32(10 * 16), 16)).rejects.toThrow(InvalidArgumentError);
    // backward: wrong dy length, and a context whose ids were tampered with.
    const ok = await layer.forward(rng.f32(20 * 32), 32);
    await expect(layer.backward(ok.ctx, rng.f32(10))).rejects.toThrow(InvalidArgumentError);
    const ids = ok.ctx.ids!.slice();
    ids[3] = 20;
    await expect(layer.backward({ ...ok.ctx, ids }, rng.f32(20 * 32))).rejects.toThrow(OutOfRangeError);
    // The native edge refuses what the layer would never send.
    const z = new Float32Array(4 * 8);
    const code = (f: () => unknown): string | undefined => {
      try {
        f();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return undefined;
    };
    expect(code(() => native().attentionForwardAsync(4, 2, 4, 5, false, 1, undefined, z, z, z))).toBe('ERR_GT_OUT_OF_RANGE');
    expect(code(() => native().attentionForwardAsync(4, 2, 4, 2, false, 0, undefined, z, z, z))).toBe('ERR_GT_OUT_OF_RANGE');
    expect(code(() => native().attentionForwardAsync(4, 2, 4, 2, false, 1, undefined, z, z, new Float32Array(3)))).toBe('ERR_GT_INVALID_ARGUMENT');
    expect(code(() => native().attentionForwardAsync(2 ** 24, 4096, 65536, 0, false, 1, undefined, z, z, z))).toBe('ERR_GT_OUT_OF_RANGE');
  });
});
