/**
 * The canonical backward of the retrieval kinds (hopfield, memory; lib/verify/kinds/):
 * against float64 references by finite differences (the selection held to the proof's
 * ids), against the model tier's fast backward, and on hostile contexts.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, ProductKeyIndex, ProductKeyMemory, ProofError, SparseTensor } from '../lib/index.js';
import { hopfieldSpec, type GhostHopfieldLayer } from '../lib/verify/kinds/hopfield.js';
import { memorySpec, type GhostMemoryLayer } from '../lib/verify/kinds/memory.js';
import type { BackwardContext, LayerSpec } from '../lib/verify/layer-spec.js';
import { rowOf } from '../lib/verify/layer-spec.js';
import type { ForwardRecord } from '../lib/verify/backward.js';
import type { GhostManifest } from '../lib/verify/ghost-file.js';
import type { SparseGrad } from '../lib/model/optim.js';
import { canonicalGrads, finiteDiff, type CanonicalGrads } from './helpers/canonical-grad.js';
import { Rng } from './helpers/rng.js';

type Sim = 'ip' | 'cosine' | 'l2';

/** Every value of a tensor widened to f64 (N x dim). */
function f64Of(t: SparseTensor): Float64Array {
  return Float64Array.from(t.gather(Uint32Array.from({ length: t.size }, (_, i) => i)));
}

function softmax(s: number[], beta: number): number[] {
  const z = s.map((v) => beta * v);
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const sum = e.reduce((p, v) => p + v, 0);
  return e.map((v) => v / sum);
}

function sim64(sim: Sim, q: number[], key: number[]): number {
  let dot = 0, nq = 0, nk = 0, l2 = 0;
  for (let j = 0; j < q.length; j++) {
    dot += q[j]! * key[j]!;
    nq += q[j]! * q[j]!;
    nk += key[j]! * key[j]!;
    l2 += (q[j]! - key[j]!) ** 2;
  }
  if (sim === 'ip') return dot;
  if (sim === 'l2') return -l2;
  return nq === 0 || nk === 0 ? 0 : dot / Math.sqrt(nq * nk);
}

/** Every element of `p` against d L / d p by central differences: |g - fd| <= 1e-4 |fd| + 1e-6. */
function expectFd(label: string, got: Float32Array, loss: () => number, p: Float64Array): void {
  expect(got.length).toBe(p.length);
  for (let i = 0; i < p.length; i++) {
    const fd = finiteDiff(() => loss(), p, i);
    if (!(Math.abs(got[i]! - fd) <= 1e-4 * Math.abs(fd) + 1e-6)) expect.fail(`${label}[${i}]: canonical ${got[i]} against finite differences ${fd}`);
  }
}

/** Sparse gradients (ids may repeat) summed into a dense N x dim array. */
function densify(grads: readonly SparseGrad[], t: SparseTensor): Float64Array {
  const out = new Float64Array(t.size * t.dim);
  for (const g of grads) {
    if (g.tensor !== t) continue;
    Array.from(g.ids).forEach((id, r) => {
      for (let j = 0; j < t.dim; j++) out[id * t.dim + j] = out[id * t.dim + j]! + g.grads[r * t.dim + j]!;
    });
  }
  return out;
}

/** |a - b| <= tol * max |a| elementwise (a: canonical, b: fast). */
function expectClose(label: string, a: Float32Array, b: ArrayLike<number>, tol: number): void {
  expect(b.length).toBe(a.length);
  let scale = 0;
  for (const v of a) scale = Math.max(scale, Math.abs(v));
  expect(scale).toBeGreaterThan(0);
  for (let i = 0; i < a.length; i++) {
    if (!(Math.abs(a[i]! - b[i]!) <= tol * scale)) expect.fail(`${label}[${i}]: canonical ${a[i]} against fast ${b[i]} (scale ${scale})`);
  }
}

interface HopCase {
  sim: Sim;
  normalize: boolean;
  index: 'exact' | 'hnsw' | 'pk';
  steps: number;
  /** Keys and values are one tensor (exact / hnsw); product keys: the two sub-key tables are one tensor. */
  shared?: boolean;
}

const B = 5, N = 12, D = 4, DV = 3, K = 3, BETA = 1.25;
const PK_N = 4, PK_D1 = 2, PK_D2 = 3;
/** The sub-key dims of a product-key case (one table twice: both PK_D2). */
const pkDims = (c: HopCase): [number, number] => (c.shared ? [PK_D2, PK_D2] : [PK_D1, PK_D2]);

/** A one-layer model of the case, its input (row 3 repeats row 0, so rows are shared across the batch) and dy. */
async function hopfieldSetup(c: HopCase, seed: number) {
  const rng = new Rng(seed);
  const [d1, d2] = pkDims(c);
  const d = c.index === 'pk' ? d1 + d2 : D;
  const n = c.index === 'pk' ? PK_N * PK_N : N;
  let keys: SparseTensor | ProductKeyIndex;
  let values: SparseTensor;
  if (c.index === 'pk') {
    const t1 = SparseTensor.fromArray(rng.f32(PK_N * d1), d1);
    keys = ProductKeyIndex.fromTables(t1, c.shared ? t1 : SparseTensor.fromArray(rng.f32(PK_N * d2), d2));
    values = SparseTensor.fromArray(rng.f32(n * DV), DV);
  } else {
    keys = SparseTensor.fromArray(rng.f32(N * D), D);
    values = c.shared ? keys : SparseTensor.fromArray(rng.f32(N * DV), DV);
    if (c.index === 'hnsw') await keys.buildHnsw({ metric: c.sim, M: 8, efConstruction: 32 });
  }
  const layer = new HopfieldLookup({
    keys, values, k: K, beta: BETA, similarity: c.sim, normalize: c.normalize, updateSteps: c.steps,
    ...(c.index === 'hnsw' ? { index: 'hnsw' as const, ef: 16 } : {}),
  });
  const x = rng.f32(B * d);
  x.copyWithin(3 * d, 0, d);
  const dy = rng.f32(B * layer.outDim);
  return { layer, model: new Model([layer]), x, dy, d, n };
}

/** The layer's forward in float64 from the documented formula, the selection held to `stages`. */
function hopfieldRef(c: HopCase, layer: HopfieldLookup, P: Map<SparseTensor, Float64Array>, x: Float64Array, stages: readonly Uint32Array[]): Float64Array {
  const d = layer.dim, dv = layer.outDim, beta = Math.fround(BETA);
  const V = P.get(layer.values)!;
  const keyRow = (id: number): number[] => {
    if (layer.keys instanceof ProductKeyIndex) {
      const t1 = P.get(layer.keys.keys1)!, t2 = P.get(layer.keys.keys2)!, i1 = Math.floor(id / PK_N), i2 = id % PK_N;
      const [d1, d2] = pkDims(c);
      return [...t1.subarray(i1 * d1, (i1 + 1) * d1), ...t2.subarray(i2 * d2, (i2 + 1) * d2)];
    }
    return Array.from(P.get(layer.keys)!.subarray(id * d, (id + 1) * d));
  };
  const y = new Float64Array(B * dv);
  for (let b = 0; b < B; b++) {
    let q = Array.from(x.subarray(b * d, (b + 1) * d));
    if (c.normalize) {
      const nx = Math.sqrt(q.reduce((s, v) => s + v * v, 0));
      q = q.map((v) => (nx > 0 ? v / nx : 0));
    }
    for (let si = 0; si < stages.length; si++) {
      const ids = Array.from(stages[si]!.subarray(b * K, (b + 1) * K));
      const a = softmax(ids.map((id) => sim64(c.index === 'pk' ? 'ip' : c.sim, q, keyRow(id))), beta);
      if (si === stages.length - 1) {
        ids.forEach((id, i) => {
          for (let j = 0; j < dv; j++) y[b * dv + j] = y[b * dv + j]! + a[i]! * V[id * dv + j]!;
        });
      } else {
        const next = new Array<number>(d).fill(0);
        ids.forEach((id, i) => keyRow(id).forEach((v, j) => (next[j] = next[j]! + a[i]! * v)));
        q = next;
      }
    }
  }
  return y;
}

function tensorsOf(layer: HopfieldLookup): SparseTensor[] {
  const t = layer.keys instanceof ProductKeyIndex ? [layer.keys.keys1, layer.keys.keys2, layer.values] : [layer.keys, layer.values];
  return [...new Set(t)];
}

async function checkHopfield(c: HopCase, seed: number): Promise<{ g: CanonicalGrads; layer: HopfieldLookup; x: Float32Array; dy: Float32Array }> {
  const { layer, model, x, dy } = await hopfieldSetup(c, seed);
  const g = await canonicalGrads(model, x, dy);
  const stages = g.forward.records[0]!.evidence.stages;
  expect(stages.length).toBe(c.steps);
  // Accumulation across the batch: rows 0 and 3 are one input, so they select the same rows.
  for (const st of stages) expect(Array.from(st.subarray(3 * K, 4 * K))).toEqual(Array.from(st.subarray(0, K)));
  const P = new Map(tensorsOf(layer).map((t) => [t, f64Of(t)]));
  const X = Float64Array.from(x);
  const loss = (): number => {
    const y = hopfieldRef(c, layer, P, X, stages);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += dy[i]! * y[i]!;
    return s;
  };
  for (const [t, p] of P) expectFd(`tensor ${model.tensors.indexOf(t)}`, g.dense(t), loss, p);
  expectFd('x', g.input!, loss, X);
  // The rows with a gradient: keys (sub-keys) at every stage's ids, values at the last's.
  const last = stages[stages.length - 1]!;
  if (layer.keys instanceof ProductKeyIndex) {
    const all = stages.flatMap((s) => Array.from(s));
    const want1 = [...new Set(all.map((id) => Math.floor(id / PK_N)))].sort((a, b) => a - b);
    if (layer.keys.keys1 !== layer.keys.keys2) expect(Array.from(g.ids(layer.keys.keys1))).toEqual(want1);
    expect(Array.from(g.ids(layer.values))).toEqual([...new Set(last)].sort((a, b) => a - b));
  } else if (!c.shared) {
    expect(Array.from(g.ids(layer.keys))).toEqual([...new Set(stages.flatMap((s) => Array.from(s)))].sort((a, b) => a - b));
    expect(Array.from(g.ids(layer.values))).toEqual([...new Set(last)].sort((a, b) => a - b));
  }
  return { g, layer, x, dy };
}

describe('canonical backward: hopfield against float64 finite differences', () => {
  let seed = 100;
  for (const index of ['exact', 'hnsw'] as const) {
    for (const sim of ['ip', 'cosine', 'l2'] as const) {
      for (const normalize of [false, true]) {
        for (const steps of index === 'exact' ? [1, 2] : [2]) {
          const c: HopCase = { sim, normalize, index, steps };
          const s = seed++;
          it(`${index}, ${sim}, normalize ${normalize}, ${steps} stage(s)`, async () => {
            await checkHopfield(c, s);
          });
        }
      }
    }
  }
  for (const normalize of [false, true]) {
    for (const steps of [1, 3]) {
      const s = seed++;
      it(`product keys, normalize ${normalize}, ${steps} stage(s)`, async () => {
        await checkHopfield({ sim: 'ip', normalize, index: 'pk', steps }, s);
      });
    }
  }
  it('product keys whose two sub-key tables are one tensor, 2 stages (a row gets both halves\' gradients)', async () => {
    await checkHopfield({ sim: 'ip', normalize: true, index: 'pk', steps: 2, shared: true }, 151);
  });
  it('keys and values one tensor, 3 stages (a row gets gradients as a key, a mixed key and a value)', async () => {
    await checkHopfield({ sim: 'ip', normalize: false, index: 'exact', steps: 3, shared: true }, 150);
  });
});

describe('canonical backward: hopfield against the model tier', () => {
  const cases: HopCase[] = [
    { sim: 'ip', normalize: false, index: 'exact', steps: 1 },
    { sim: 'cosine', normalize: true, index: 'exact', steps: 2 },
    { sim: 'l2', normalize: false, index: 'hnsw', steps: 2 },
    { sim: 'ip', normalize: true, index: 'pk', steps: 2 },
  ];
  cases.forEach((c, ci) => {
    it(`${c.index}, ${c.sim}, normalize ${c.normalize}, ${c.steps} stage(s): the fast backward agrees`, async () => {
      const { layer, model, x, dy } = await hopfieldSetup(c, 200 + ci);
      const g = await canonicalGrads(model, x, dy);
      const f = await layer.forward(x);
      // The fast forward selected what the proof did (else the gradients differ by design).
      f.ctx.stages.forEach((st, si) => expect(Array.from(st.ids)).toEqual(Array.from(g.forward.records[0]!.evidence.stages[si]!)));
      const r = await layer.backward(f.ctx, dy);
      expectClose('dx', g.input!, r.dx, 1e-4);
      for (const t of tensorsOf(layer)) expectClose(`tensor ${model.tensors.indexOf(t)}`, g.dense(t), densify(r.grads, t), 1e-4);
    });
  });
});

// ---- memory ----

const M = { heads: 2, n: 4, d1: 2, d2: 3, dIn: 5, dOut: 3, k: 3, B: 5, beta: 0.9 };

function memorySetup(seed: number, k = M.k) {
  const rng = new Rng(seed);
  const dk = M.d1 + M.d2;
  const query = SparseTensor.fromArray(rng.f32(M.heads * dk * M.dIn, 0.7), M.dIn);
  const keys = Array.from({ length: M.heads }, () => [SparseTensor.fromArray(rng.f32(M.n * M.d1), M.d1), SparseTensor.fromArray(rng.f32(M.n * M.d2), M.d2)] as const);
  const values = SparseTensor.fromArray(rng.f32(M.n * M.n * M.dOut), M.dOut);
  const layer = new ProductKeyMemory({ query, keys, values, k, beta: M.beta });
  const x = rng.f32(M.B * M.dIn);
  x.copyWithin(3 * M.dIn, 0, M.dIn);
  const dy = rng.f32(M.B * M.dOut);
  return { layer, model: new Model([layer]), x, dy, tensors: [query, ...keys.flat(), values] };
}

/** The memory layer in float64 (queries not rounded), each head's selection held to `stages`. */
function memoryRef(layer: ProductKeyMemory, P: Map<SparseTensor, Float64Array>, x: Float64Array, stages: readonly Uint32Array[], k: number): Float64Array {
  const dk = M.d1 + M.d2, beta = Math.fround(M.beta);
  const W = P.get(layer.query.weight)!, V = P.get(layer.values)!;
  const y = new Float64Array(M.B * M.dOut);
  for (let b = 0; b < M.B; b++) {
    for (let h = 0; h < M.heads; h++) {
      const q: number[] = [];
      for (let t = 0; t < dk; t++) {
        let s = 0;
        for (let i = 0; i < M.dIn; i++) s += W[(h * dk + t) * M.dIn + i]! * x[b * M.dIn + i]!;
        q.push(s);
      }
      const T1 = P.get(layer.keys[h]![0])!, T2 = P.get(layer.keys[h]![1])!;
      const ids = Array.from(stages[h]!.subarray(b * k, (b + 1) * k));
      const s = ids.map((id) => {
        const i1 = Math.floor(id / M.n), i2 = id % M.n;
        let v = 0;
        for (let j = 0; j < M.d1; j++) v += q[j]! * T1[i1 * M.d1 + j]!;
        for (let j = 0; j < M.d2; j++) v += q[M.d1 + j]! * T2[i2 * M.d2 + j]!;
        return v;
      });
      const a = softmax(s, beta);
      ids.forEach((id, i) => {
        for (let j = 0; j < M.dOut; j++) y[b * M.dOut + j] = y[b * M.dOut + j]! + a[i]! * V[id * M.dOut + j]!;
      });
    }
  }
  return y;
}

describe('canonical backward: memory', () => {
  for (const k of [1, 3, 6]) {
    it(`k = ${k}: finite differences of the query weight, every sub-key table, the values and x`, async () => {
      const { layer, model, x, dy, tensors } = memorySetup(300 + k, k);
      const g = await canonicalGrads(model, x, dy);
      const stages = g.forward.records[0]!.evidence.stages;
      for (const st of stages) expect(Array.from(st.subarray(3 * k, 4 * k))).toEqual(Array.from(st.subarray(0, k)));
      const P = new Map(tensors.map((t) => [t, f64Of(t)]));
      const X = Float64Array.from(x);
      const loss = (): number => {
        const y = memoryRef(layer, P, X, stages, k);
        let s = 0;
        for (let i = 0; i < y.length; i++) s += dy[i]! * y[i]!;
        return s;
      };
      for (const [t, p] of P) expectFd(`tensor ${model.tensors.indexOf(t)}`, g.dense(t), loss, p);
      expectFd('x', g.input!, loss, X);
      // Rows with a gradient: the whole query weight, the selected sub-key rows, the selected values.
      expect(g.ids(layer.query.weight).length).toBe(layer.query.weight.size);
      expect(Array.from(g.ids(layer.values))).toEqual([...new Set(stages.flatMap((s) => Array.from(s)))].sort((a, b) => a - b));
      for (let h = 0; h < M.heads; h++) {
        expect(Array.from(g.ids(layer.keys[h]![1]))).toEqual([...new Set(Array.from(stages[h]!, (id) => id % M.n))].sort((a, b) => a - b));
      }
    });
  }

  it('the fast backward (ProductKeyMemory.backward) agrees', async () => {
    const { layer, model, x, dy, tensors } = memorySetup(320);
    const g = await canonicalGrads(model, x, dy);
    const f = await layer.forward(x);
    f.ctx.heads.forEach((hc, h) => expect(Array.from(hc.stages[0]!.ids)).toEqual(Array.from(g.forward.records[0]!.evidence.stages[h]!)));
    const r = await layer.backward(f.ctx, dy);
    expectClose('dx', g.input!, r.dx, 1e-4);
    for (const t of tensors) expectClose(`tensor ${model.tensors.indexOf(t)}`, g.dense(t), densify(r.grads, t), 1e-4);
  });
});

// ---- the forward it keeps, and hostile contexts ----

/** The driver's context for a record (grad checks the row was revealed, as lib/verify/backward.ts does). */
function contextOf(rec: ForwardRecord, manifest: GhostManifest, saved: unknown, stages = rec.evidence.stages): { ctx: BackwardContext; rows: Map<string, Float64Array> } {
  const rows = new Map<string, Float64Array>();
  const ctx: BackwardContext = {
    manifest,
    index: rec.index, rows: rec.inputs[0]!.length / (rec.layer as { dIn: number }).dIn, ids: null, inputs: rec.inputs,
    evidence: { ...rec.evidence, stages: [...stages] }, revealed: rec.revealed, y: rec.y, saved,
    grad(tensor, id) {
      const rev = rec.revealed.get(tensor);
      if (!rev) throw new ProofError('BLOCK_IDS', `tensor ${tensor} not revealed`);
      rowOf(rev, id);
      const key = `${tensor}:${id}`;
      let r = rows.get(key);
      if (!r) rows.set(key, (r = new Float64Array(rev.dim)));
      return r;
    },
  };
  return { ctx, rows };
}

describe('canonical backward: retrieval kinds on what they were given', () => {
  it('trainForward gives verify\'s bits; the backward without saved state (recomputed) gives the same bits', async () => {
    for (const { model, x, dy } of [
      await hopfieldSetup({ sim: 'cosine', normalize: true, index: 'exact', steps: 2 }, 400),
      await hopfieldSetup({ sim: 'ip', normalize: false, index: 'pk', steps: 2 }, 401),
      memorySetup(402),
    ]) {
      const g = await canonicalGrads(model, x, dy);
      expect(g.forward.output).toEqual(g.y); // trainForward's output is the proof's claim
      const rec = g.forward.records[0]!;
      expect(rec.saved).toBeDefined();
      const ghost = await model.ghost();
      const spec = rec.spec as LayerSpec<GhostHopfieldLayer | GhostMemoryLayer>;
      const a = contextOf(rec, ghost.manifest, rec.saved), b = contextOf(rec, ghost.manifest, undefined);
      const dxa = spec.backward!(rec.layer as GhostHopfieldLayer & GhostMemoryLayer, a.ctx, dy)[0]!;
      const dxb = spec.backward!(rec.layer as GhostHopfieldLayer & GhostMemoryLayer, b.ctx, dy)[0]!;
      expect(dxb).toEqual(dxa);
      expect([...b.rows.keys()]).toEqual([...a.rows.keys()]);
      for (const [key, r] of a.rows) expect(b.rows.get(key)).toEqual(r);
      expect(Array.from(dxa)).toEqual(Array.from(g.input!));
    }
  });

  it('a stage naming a row the forward did not reveal: BLOCK_IDS, from the row read or the gradient asked', async () => {
    const cases = [
      { spec: hopfieldSpec, s: await hopfieldSetup({ sim: 'ip', normalize: false, index: 'exact', steps: 2 }, 410) },
      { spec: memorySpec, s: memorySetup(411) },
    ] as const;
    for (const { spec, s } of cases) {
      const g = await canonicalGrads(s.model, s.x, s.dy);
      const rec = g.forward.records[0]!;
      const ghost = await s.model.ghost();
      const last = rec.evidence.stages[rec.evidence.stages.length - 1]!;
      const shown = new Set(rec.evidence.stages.flatMap((st) => Array.from(st)));
      const n = spec === memorySpec ? M.n * M.n : N;
      const hidden = Array.from({ length: n }, (_, i) => i).find((i) => !shown.has(i))!;
      expect(hidden).toBeDefined();
      const bad = Uint32Array.from(last);
      bad[bad.length - 1] = hidden;
      const { ctx } = contextOf(rec, ghost.manifest, rec.saved, [...rec.evidence.stages.slice(0, -1), bad]);
      let err: unknown;
      try {
        (spec as LayerSpec<GhostHopfieldLayer | GhostMemoryLayer>).backward!(rec.layer as GhostHopfieldLayer & GhostMemoryLayer, ctx, s.dy);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ProofError);
      expect((err as ProofError).reason).toBe('BLOCK_IDS');
    }
  });
});
