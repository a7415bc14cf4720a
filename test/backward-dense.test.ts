/**
 * The canonical backward of the dense kinds (linear, rmsnorm, glu; lib/verify/kinds/):
 * against float64 references written here from the documented formulas (central finite
 * differences of L = sum dy . y), against each kind's fast backward (lib/model/kinds/),
 * over graphs built with the library's blocks, and with hostile contexts (rows the
 * forward did not reveal, a sparse backward without the forward's selection).
 */
import { describe, expect, it } from 'vitest';

import { Embedding, GatedMLP, Glu, Linear, Model, ProofError, RMSNorm, Residual, SparseTensor } from '../lib/index.js';
import { gluKind } from '../lib/model/kinds/glu.js';
import type { ForwardRecord } from '../lib/verify/backward.js';
import { clinear } from '../lib/verify/canonical.js';
import { gluSpec, type GhostGluLayer } from '../lib/verify/kinds/glu.js';
import { linearTrain } from '../lib/verify/kinds/linear.js';
import type { BackwardContext, Revealed } from '../lib/verify/layer-spec.js';
import { canonicalGrads, finiteDiff } from './helpers/canonical-grad.js';
import { Rng } from './helpers/rng.js';

// ---- float64 references, from the documented formulas (docs/layer-kinds.md) ----

/** Every row of a tensor, widened to f64. */
const all64 = (t: SparseTensor): Float64Array => Float64Array.from(t.gather(Uint32Array.from({ length: t.size }, (_, i) => i)));

/** Row i's top-k columns of x W^T (ties to the lower column), by a plain sort. */
function topCols(s: ArrayLike<number>, k: number): number[] {
  return Array.from(s, (v, j) => ({ v, j }))
    .sort((a, b) => b.v - a.v || a.j - b.j)
    .slice(0, k)
    .map((e) => e.j);
}

/** y = x W^T (only each row's top-k columns kept when k < m) + b, in f64. */
function lin64(x: Float64Array, n: number, dIn: number, W: Float64Array, m: number, k: number, b: Float64Array | null): Float64Array {
  const y = new Float64Array(n * m);
  for (let i = 0; i < n; i++) {
    const s = new Float64Array(m);
    for (let j = 0; j < m; j++) for (let t = 0; t < dIn; t++) s[j] = s[j]! + x[i * dIn + t]! * W[j * dIn + t]!;
    const keep = k < m ? new Set(topCols(s, k)) : null;
    for (let j = 0; j < m; j++) y[i * m + j] = (keep === null || keep.has(j) ? s[j]! : 0) + (b === null ? 0 : b[j]!);
  }
  return y;
}

/** y = x / sqrt(mean(x^2) + eps) * g per row, in f64. */
function rms64(x: Float64Array, n: number, d: number, g: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    let ss = 0;
    for (let t = 0; t < d; t++) ss += x[i * d + t]! ** 2;
    const r = 1 / Math.sqrt(ss / d + eps);
    for (let t = 0; t < d; t++) y[i * d + t] = x[i * d + t]! * r * g[t]!;
  }
  return y;
}

/** silu(g) * u per value, in f64. */
const glu64 = (g: Float64Array, u: Float64Array): Float64Array => g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]!);

const dotDy = (dy: Float32Array, y: Float64Array): number => {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += dy[i]! * y[i]!;
  return s;
};

/** The canonical gradient agrees with the finite difference: relative 1e-4 (absolute 1e-6 near 0). */
function near(got: number, want: number, what: string): void {
  if (!(Math.abs(got - want) <= 1e-4 * Math.abs(want) + 1e-6)) throw new Error(`${what}: canonical ${got}, finite differences ${want}`);
}

/** The same within a relative tolerance, for two implementations of one formula. */
function close(got: ArrayLike<number>, want: ArrayLike<number>, rel: number, what: string): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= rel * (Math.abs(want[i]!) + 1e-3))) throw new Error(`${what}[${i}]: ${got[i]} against ${want[i]}`);
  }
}

/** Runs a record's backward as the driver does, with its own accumulators; `revealed` replaces the forward's. */
function rerun(rows: number, rec: ForwardRecord, dy: Float32Array, over: { revealed?: Map<number, Revealed>; saved?: unknown } = {}): { dx: Float32Array[]; asked: string[] } {
  const revealed = over.revealed ?? rec.revealed;
  const asked: string[] = [];
  const accs = new Map<string, Float64Array>();
  const ctx: BackwardContext = {
    manifest: null as never,
    index: rec.index,
    rows,
    ids: rec.ids,
    inputs: rec.inputs,
    evidence: rec.evidence,
    revealed,
    y: rec.y,
    saved: 'saved' in over ? over.saved : rec.saved,
    grad(tensor, id) {
      const rev = revealed.get(tensor);
      if (!rev || (!rev.all && !rev.ids.includes(id))) throw new ProofError('BLOCK_IDS', `row ${id} of tensor ${tensor} not revealed`);
      const key = `${tensor}:${id}`;
      if (!accs.has(key)) {
        asked.push(key);
        accs.set(key, new Float64Array(rev.dim));
      }
      return accs.get(key)!;
    },
  };
  return { dx: rec.spec.backward!(rec.layer, ctx, dy), asked };
}

const reasonOf = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (e instanceof ProofError) return e.reason;
    throw e;
  }
  return 'ACCEPTED';
};

describe('canonical backward: linear', () => {
  const n = 4, dIn = 5, m = 10;
  for (const { k, bias } of [{ k: m, bias: true }, { k: m, bias: false }, { k: 2, bias: true }, { k: 2, bias: false }]) {
    it(`${k < m ? `top ${k} of ${m} columns` : 'dense'}, ${bias ? 'with' : 'no'} bias: finite differences, the documented sums exactly, the fast backward`, async () => {
      const rng = new Rng(11 + k + (bias ? 100 : 0));
      const W = SparseTensor.fromArray(rng.f32(m * dIn), dIn);
      const B = bias ? SparseTensor.fromArray(rng.f32(m), m) : undefined;
      const layer = new Linear({ weight: W, k, ...(B ? { bias: B } : {}) });
      const model = new Model([layer]);
      const x = rng.f32(n * dIn), dy = rng.f32(n * m);
      const g = await canonicalGrads(model, x, dy);
      const w64 = all64(W), b64 = B ? all64(B) : null, x64 = Float64Array.from(x);
      // The selection: row i's kept columns, from the reference's own f64 scores.
      const kept: number[][] = [];
      for (let i = 0; i < n; i++) {
        const s = Array.from({ length: m }, (_, j) => {
          let v = 0;
          for (let t = 0; t < dIn; t++) v += x[i * dIn + t]! * w64[j * dIn + t]!;
          return v;
        });
        kept.push(k < m ? topCols(s, k).sort((a, b) => a - b) : Array.from({ length: m }, (_, j) => j));
      }
      const union = [...new Set(kept.flat())].sort((a, b) => a - b);
      if (k < m) expect(union.length).toBeLessThan(m);
      expect(Array.from(g.ids(W))).toEqual(union);
      if (B) expect(Array.from(g.ids(B))).toEqual([0]);

      const L = (xx: Float64Array, ww: Float64Array, bb: Float64Array | null): number => dotDy(dy, lin64(xx, n, dIn, ww, m, k, bb));
      const gw = g.dense(W);
      for (let i = 0; i < m * dIn; i++) near(gw[i]!, finiteDiff((p) => L(x64, p, b64), w64, i), `dW[${i}]`);
      if (B) {
        const gb = g.dense(B);
        for (let j = 0; j < m; j++) near(gb[j]!, finiteDiff((p) => L(x64, w64, p), b64!, j), `db[${j}]`);
      }
      for (let i = 0; i < n * dIn; i++) near(g.input![i]!, finiteDiff((p) => L(p, w64, b64), x64, i), `dx[${i}]`);

      // Exactly as documented: dx_it = f32(sum over kept j ascending of dy_ij W_jt); weight row j's
      // gradient f32(sum over i ascending, j kept by row i, of dy_ij x_it); the bias f32(sum_i dy_ij).
      for (let i = 0; i < n; i++) {
        for (let t = 0; t < dIn; t++) {
          let s = 0;
          for (const j of kept[i]!) s = s + dy[i * m + j]! * w64[j * dIn + t]!;
          expect(g.input![i * dIn + t]).toBe(Math.fround(s));
        }
      }
      for (const j of union) {
        for (let t = 0; t < dIn; t++) {
          let s = 0;
          for (let i = 0; i < n; i++) if (kept[i]!.includes(j)) s = s + dy[i * m + j]! * x[i * dIn + t]!;
          expect(gw[j * dIn + t]).toBe(Math.fround(s));
        }
      }

      // A second implementation: the fast backward of the model tier.
      const f = await layer.forward(x);
      const fb = await layer.backward(f.ctx, dy);
      close(g.input!, fb.dx, 1e-5, 'dx');
      const fw = new Float32Array(m * dIn);
      fb.grads[0]!.ids.forEach((id, r) => fw.set(fb.grads[0]!.grads.subarray(r * dIn, (r + 1) * dIn), id * dIn));
      close(gw, fw, 1e-5, 'dW');
      if (B) close(g.dense(B), fb.grads[1]!.grads, 1e-5, 'db');
    });
  }

  it('trainForward gives verify\'s bits (clinear) with ties, and keeps each row\'s columns ascending', () => {
    const rng = new Rng(5);
    const n = 6, d = 3, mm = 9, k = 4;
    const x = rng.f32ints(n * d, -2, 2), W = rng.f32ints(mm * d, -2, 2), b = rng.f32(mm);
    for (const bias of [b, null]) {
      const r = linearTrain(x, n, d, W, mm, k, bias);
      expect(Buffer.from(r.y.buffer).equals(Buffer.from(clinear(x, n, d, W, mm, k, bias).buffer))).toBe(true);
      for (let i = 0; i < n; i++) {
        const s = Array.from({ length: mm }, (_, j) => x[i * d]! * W[j * d]! + x[i * d + 1]! * W[j * d + 1]! + x[i * d + 2]! * W[j * d + 2]!);
        expect(Array.from(r.kept!.subarray(i * k, (i + 1) * k))).toEqual(topCols(s, k).sort((p, q) => p - q));
      }
    }
    expect(linearTrain(x, n, d, W, mm, mm, b).kept).toBeNull();
  });

  it('hostile: asks only for the kept rows; refuses a weight or bias its forward did not reveal whole, and a sparse backward without the selection', async () => {
    const rng = new Rng(9);
    const W = SparseTensor.fromArray(rng.f32(12 * 4), 4), B = SparseTensor.fromArray(rng.f32(12), 12);
    const model = new Model([new Linear({ weight: W, bias: B, k: 2 })]);
    const x = rng.f32(3 * 4), dy = rng.f32(3 * 12);
    const g = await canonicalGrads(model, x, dy);
    const rec = g.forward.records[0]!;
    const kept = rec.saved as Uint32Array;
    const want = [...[...new Set(kept)].sort((a, b) => a - b).map((j) => `0:${j}`), '1:0'];
    expect(rerun(g.forward.rows, rec, dy).asked).toEqual(want);
    const wRev = rec.revealed.get(0)!, bRev = rec.revealed.get(1)!;
    // The weight revealed as some rows only, as every row but not as a whole block, or not at
    // all; the bias not whole, or missing.
    const part: Revealed = { ...wRev, all: false, ids: wRev.ids.subarray(0, 6), rows: wRev.rows.subarray(0, 24) };
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map([[0, part], [1, bRev]]) }))).toBe('BLOCK_IDS');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map([[0, { ...wRev, all: false }], [1, bRev]]) }))).toBe('BLOCK_IDS');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map([[0, wRev], [1, { ...bRev, all: false }]]) }))).toBe('BLOCK_IDS');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map([[1, bRev]]) }))).toBe('BLOCK_IDS');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map([[0, wRev]]) }))).toBe('BLOCK_IDS');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { saved: undefined }))).toBe('SHAPE');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { saved: kept.subarray(1) }))).toBe('SHAPE');
  });
});

describe('canonical backward: the documented summation orders', () => {
  // 2^60 + (-2^60) + 1 in f64 is 1 in that order and 0 in the reverse one (1 - 2^60 rounds to -2^60).
  const big = 2 ** 60;

  it('linear: dx over columns ascending, a weight row over batch rows ascending', async () => {
    const W = SparseTensor.fromArray(Float32Array.of(big, -big, 1), 1), B = SparseTensor.fromArray(new Float32Array(3), 3);
    const g = await canonicalGrads(new Model([new Linear({ weight: W, bias: B })]), Float32Array.of(big, -big, 1), new Float32Array(9).fill(1));
    expect(Array.from(g.input!)).toEqual([1, 1, 1]);
    expect(Array.from(g.dense(W))).toEqual([1, 1, 1]);
    expect(Array.from(g.dense(B))).toEqual([3, 3, 3]);
  });

  it('rmsnorm: the gain row over batch rows ascending', async () => {
    const G = SparseTensor.fromArray(Float32Array.of(1, 1), 2);
    const x = Float32Array.of(3, 4, 3, 4, 3, 4), dy = Float32Array.of(big, big, -big, -big, 1, 1);
    const g = await canonicalGrads(new Model([new RMSNorm({ gain: G, eps: 1e-6 })]), x, dy);
    const r = 1 / Math.sqrt(12.5 + Math.fround(1e-6));
    expect(Array.from(g.dense(G))).toEqual([Math.fround(3 * r), Math.fround(4 * r)]);
  });
});

describe('canonical backward: rmsnorm', () => {
  it('finite differences for x and the gain (a large row, a zero row), the fast backward; refuses a gain not revealed', async () => {
    const rng = new Rng(21);
    const n = 4, d = 6, eps = Math.fround(1e-3);
    const G = SparseTensor.fromArray(rng.f32(d, 2), d);
    const norm = new RMSNorm({ gain: G, eps: 1e-3 });
    const model = new Model([norm]);
    const x = rng.f32(n * d, 2);
    for (let t = 0; t < d; t++) x[d + t] = x[d + t]! * 40;
    x.fill(0, 3 * d, 4 * d);
    const dy = rng.f32(n * d);
    const g = await canonicalGrads(model, x, dy);
    expect(Array.from(g.ids(G))).toEqual([0]);
    const g64 = all64(G), x64 = Float64Array.from(x);
    const L = (xx: Float64Array, gg: Float64Array): number => dotDy(dy, rms64(xx, n, d, gg, eps));
    const gg = g.dense(G);
    for (let t = 0; t < d; t++) near(gg[t]!, finiteDiff((p) => L(x64, p), g64, t), `dg[${t}]`);
    for (let i = 0; i < n * d; i++) near(g.input![i]!, finiteDiff((p) => L(p, g64), x64, i), `dx[${i}]`);

    const f = norm.forward(x);
    const fb = norm.backward(f.ctx, dy);
    close(g.input!, fb.dx, 1e-5, 'dx');
    close(gg, fb.grads[0]!.grads, 1e-5, 'dg');

    const rec = g.forward.records[0]!;
    expect(rerun(g.forward.rows, rec, dy).asked).toEqual(['0:0']);
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map() }))).toBe('BLOCK_IDS');
    expect(reasonOf(() => rerun(g.forward.rows, rec, dy, { revealed: new Map([[0, { ...rec.revealed.get(0)!, all: false }]]) }))).toBe('BLOCK_IDS');
  });
});

describe('canonical backward: glu', () => {
  /** The glu's backward alone: a context of its two inputs. */
  function gluBackward(gate: Float32Array, up: Float32Array, dy: Float32Array): Float32Array[] {
    const l: GhostGluLayer = { op: 'glu', dim: gate.length, activation: 'silu' };
    return gluSpec.backward!(l, {
      manifest: null as never, index: 2, rows: 1, ids: null, inputs: [gate, up], evidence: { op: 'glu', stages: [], blocks: [] },
      revealed: new Map(), y: new Float32Array(gate.length), saved: undefined,
      grad: () => {
        throw new Error('a glu has no tensors');
      },
    }, dy);
  }

  it('finite differences for both inputs, the analytic formula at extreme gates (finite, no NaN), the fast backward', async () => {
    const rng = new Rng(31);
    const extreme = [-3e38, -1000, -750, -100, -30, -1e-3, 0, -0, 1e-3, 30, 100, 750, 1000, 3e38];
    const nr = 40;
    const gate = new Float32Array([...rng.f32(nr, 6), ...extreme]), up = rng.f32(gate.length, 2), dy = rng.f32(gate.length);
    const [dg, du] = gluBackward(gate, up, dy);
    // Finite differences over the ordinary values (an f32 gate of 3e38 would swamp L).
    const g64 = Float64Array.from(gate.subarray(0, nr)), u64 = Float64Array.from(up.subarray(0, nr));
    for (let i = 0; i < nr; i++) {
      near(dg![i]!, finiteDiff((p) => dotDy(dy, glu64(p, u64)), g64, i), `dgate[${i}]`);
      near(du![i]!, finiteDiff((p) => dotDy(dy, glu64(g64, p)), u64, i), `dup[${i}]`);
    }
    for (let i = 0; i < gate.length; i++) {
      const gv = gate[i]!, s = 1 / (1 + Math.exp(-gv));
      const wantG = dy[i]! * up[i]! * s * (1 + gv * (1 - s)), wantU = dy[i]! * gv * s;
      expect(Number.isFinite(dg![i]!) && Number.isFinite(du![i]!)).toBe(true);
      if (!(Math.abs(dg![i]! - wantG) <= 1e-6 * Math.abs(wantG) + 1e-40)) throw new Error(`dgate at g = ${gv}: ${dg![i]} against ${wantG}`);
      if (!(Math.abs(du![i]! - wantU) <= 1e-6 * Math.abs(wantU) + 1e-40)) throw new Error(`dup at g = ${gv}: ${du![i]} against ${wantU}`);
    }
    const fb = await gluKind.backward(new Glu(), { gate, up }, dy);
    close(dg!, fb.dx!, 1e-5, 'dgate');
    close(du!, fb.dxOthers![0]!, 1e-5, 'dup');
  });

  it('a Linear-first float-input graph: gate and up read the input, glu, rmsnorm, a linear: the input gradient sums both readers', async () => {
    const rng = new Rng(41);
    const n = 5, dIn = 4, H = 8, dOut = 3, eps = Math.fround(1e-5);
    const Wg = SparseTensor.fromArray(rng.f32(H * dIn), dIn), Wu = SparseTensor.fromArray(rng.f32(H * dIn), dIn), bu = SparseTensor.fromArray(rng.f32(H), H);
    const G = SparseTensor.fromArray(rng.f32(H, 2), H), Wo = SparseTensor.fromArray(rng.f32(dOut * H), H);
    const model = new Model([
      new Linear({ weight: Wg }),
      new Linear({ weight: Wu, bias: bu, k: 5 }),
      new Glu(),
      new RMSNorm({ gain: G, eps: 1e-5 }),
      new Linear({ weight: Wo }),
    ], { inputs: [[-1], [-1], [0, 1], [2], [3]] });
    const x = rng.f32(n * dIn, 2), dy = rng.f32(n * dOut);
    const g = await canonicalGrads(model, x, dy);
    const p = { x: Float64Array.from(x), wg: all64(Wg), wu: all64(Wu), bu: all64(bu), g: all64(G), wo: all64(Wo) };
    const L = (): number => {
      const a = lin64(p.x, n, dIn, p.wg, H, H, null), b = lin64(p.x, n, dIn, p.wu, H, 5, p.bu);
      return dotDy(dy, lin64(rms64(glu64(a, b), n, H, p.g, eps), n, H, p.wo, dOut, dOut, null));
    };
    const check = (name: keyof typeof p, got: Float32Array): void => {
      for (let i = 0; i < p[name].length; i++) near(got[i]!, finiteDiff(L, p[name], i), `${name}[${i}]`);
    };
    check('x', g.input!);
    check('wg', g.dense(Wg));
    check('wu', g.dense(Wu));
    check('bu', g.dense(bu));
    check('g', g.dense(G));
    check('wo', g.dense(Wo));
  });
});

describe('canonical backward: a language-model-shaped graph of blocks', () => {
  for (const tied of [false, true]) {
    it(`Embedding -> Residual([RMSNorm, GatedMLP]) -> RMSNorm -> Linear head${tied ? ' tied to the table' : ' with a bias'}: finite differences of a float64 forward`, async () => {
      const rng = new Rng(tied ? 52 : 51);
      const V = 13, D = 6, H = 10, n = 7, kUp = 6, eps = Math.fround(1e-6);
      const table = SparseTensor.fromArray(rng.f32(V * D), D);
      const g1 = SparseTensor.fromArray(rng.f32(D, 2), D), g2 = SparseTensor.fromArray(rng.f32(D, 2), D);
      const wg = SparseTensor.fromArray(rng.f32(H * D), D), wu = SparseTensor.fromArray(rng.f32(H * D), D), bu = SparseTensor.fromArray(rng.f32(H), H);
      const wd = SparseTensor.fromArray(rng.f32(D * H, 0.5), H);
      const head = tied ? table : SparseTensor.fromArray(rng.f32(V * D), D), bh = SparseTensor.fromArray(rng.f32(V), V);
      const model = new Model([
        new Embedding(table),
        new Residual([new RMSNorm({ gain: g1 }), new GatedMLP({ gate: new Linear({ weight: wg }), up: new Linear({ weight: wu, bias: bu, k: kUp }), down: new Linear({ weight: wd }) })]),
        new RMSNorm({ gain: g2 }),
        new Linear({ weight: head, ...(tied ? {} : { bias: bh }) }),
      ]);
      expect(model.inputs).toEqual([[-1], [0], [1], [1], [2, 3], [4], [0, 5], [6], [7]]);
      const ids = Uint32Array.from([4, 1, 4, 9, 0, 4, 1]);
      const dy = rng.f32(n * V);
      const g = await canonicalGrads(model, ids, dy);
      expect(g.input).toBeNull();

      const P = new Map<SparseTensor, Float64Array>([table, g1, g2, wg, wu, bu, wd, head, bh].map((t) => [t, all64(t)]));
      const p = (t: SparseTensor): Float64Array => P.get(t)!;
      const L = (): number => {
        const h0 = new Float64Array(n * D);
        ids.forEach((id, b) => h0.set(p(table).subarray(id * D, (id + 1) * D), b * D));
        const a = rms64(h0, n, D, p(g1), eps);
        const mid = glu64(lin64(a, n, D, p(wg), H, H, null), lin64(a, n, D, p(wu), H, kUp, p(bu)));
        const h1 = lin64(mid, n, H, p(wd), D, D, null).map((v, i) => v + h0[i]!);
        return dotDy(dy, lin64(rms64(h1, n, D, p(g2), eps), n, D, p(head), V, V, tied ? null : p(bh)));
      };
      const tensors = tied ? [table, g1, g2, wg, wu, bu, wd] : [table, g1, g2, wg, wu, bu, wd, head, bh];
      for (const t of tensors) {
        const got = g.dense(t), vals = p(t);
        // A few values of each tensor; for the table, every value of a repeated id's row and of an unread row.
        const at = new Set<number>();
        for (let r = 0; r < 8; r++) at.add(rng.int(0, vals.length - 1));
        if (t === table) for (let j = 0; j < D; j++) at.add(4 * D + j).add(7 * D + j);
        for (const i of at) near(got[i]!, finiteDiff(L, vals, i), `tensor ${model.tensors.indexOf(t)} [${i}]`);
      }
      // The table's rows: the ids read (and every row when the head is tied to it).
      expect(Array.from(g.ids(table))).toEqual(tied ? Array.from({ length: V }, (_, i) => i) : [0, 1, 4, 9]);
    });
  }
});
