/**
 * The Linear and RMSNorm kinds: backward passes against finite differences, the sparse
 * Linear against its dense baseline, the fast forwards against the canonical arithmetic
 * and a float64 reference, Ghost entries (round trip, inconsistent entries, truncations),
 * forward proofs (verify, tampering, a prover that keeps other columns), save / load.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { FormatError, HopfieldLookup, Linear, Model, RMSNorm, SparseTensor } from '../lib/index.js';
import { clinear, crmsnorm } from '../lib/verify/canonical.js';
import { decodeGhost, encodeGhost, type GhostLinearLayer, type GhostManifest, type GhostRmsNormLayer } from '../lib/verify/ghost-file.js';
import { decodeProof, encodeProof, type ForwardProof } from '../lib/verify/proof-format.js';
import { pinGhost, verifyForward } from '../lib/verify/proof-verify.js';
import { editedGhostReason } from './helpers/ghost-edit.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const scratch = mkdtempSync(join(tmpdir(), 'gt-linear-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** sum(dy . y) in f64. */
const dotF64 = (a: Float32Array, b: Float32Array): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};

/** Central difference of f at x[i] (f reads x), step h. */
function fd(x: Float32Array, i: number, h: number, f: () => number): number {
  const v = x[i]!;
  x[i] = v + h;
  const up = f();
  x[i] = v - h;
  const down = f();
  x[i] = v;
  return (up - down) / (Math.fround(v + h) - Math.fround(v - h));
}

/** A float64 RMSNorm, the plain formula. */
function rmsRef(x: Float32Array, n: number, d: number, g: Float32Array, eps: number): Float64Array {
  const y = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let t = 0; t < d; t++) s += x[i * d + t]! ** 2;
    const r = 1 / Math.sqrt(s / d + eps);
    for (let t = 0; t < d; t++) y[i * d + t] = x[i * d + t]! * r * g[t]!;
  }
  return y;
}

describe('Linear', () => {
  it('dense with a bias: backward equals finite differences of sum(dy . y) for x, W and b', async () => {
    const rng = new Rng(1);
    const n = 3, d = 5, m = 4;
    const w = rng.f32(m * d), b = rng.f32(m), x = rng.f32(n * d), dy = rng.f32(n * m);
    const lin = new Linear({ weight: SparseTensor.fromArray(w, d), bias: SparseTensor.fromArray(b, m) });
    const f = (): number => dotF64(dy, clinear(x, n, d, w, m, m, b));
    const { ctx } = await lin.forward(x);
    const g = await lin.backward(ctx, dy);
    const [gw, gb] = g.grads;
    expect(Array.from(gw!.ids)).toEqual([0, 1, 2, 3]);
    expect(Array.from(gb!.ids)).toEqual([0]);
    const h = 1e-2;
    for (let i = 0; i < x.length; i++) expect(g.dx[i]!).toBeCloseTo(fd(x, i, h, f), 3);
    for (let i = 0; i < w.length; i++) expect(gw!.grads[i]!).toBeCloseTo(fd(w, i, h, f), 3);
    for (let j = 0; j < m; j++) expect(gb!.grads[j]!).toBeCloseTo(fd(b, j, h, f), 3);
  });

  it('sparse top-k: the kept columns equal the dense layer there (bias elsewhere), and so do its gradients', async () => {
    const rng = new Rng(2);
    const n = 6, d = 7, m = 9, k = 3;
    const W = SparseTensor.fromArray(rng.f32(m * d), d), B = SparseTensor.fromArray(rng.f32(m), m);
    const sparse = new Linear({ weight: W, bias: B, k });
    const dense = new Linear({ weight: W, bias: B, mode: 'dense' });
    const x = rng.f32(n * d);
    const s = await sparse.forward(x), full = await dense.forward(x);
    const b = B.gather([0]);
    const kept = new Uint8Array(n * m);
    for (let i = 0; i < n; i++) {
      const row = Array.from(full.y.subarray(i * m, (i + 1) * m), (v, j) => ({ v: v - b[j]!, j })).sort((p, q) => q.v - p.v || p.j - q.j);
      for (const { j } of row.slice(0, k)) kept[i * m + j] = 1;
    }
    for (let t = 0; t < n * m; t++) {
      if (kept[t]) expect(s.y[t]!).toBeCloseTo(full.y[t]!, 5);
      else expect(s.y[t]!).toBe(b[t % m]!);
    }
    // The sparse gradient is the dense one of dy masked to the kept columns (the bias sees all).
    const dy = rng.f32(n * m);
    const masked = dy.map((v, t) => (kept[t] ? v : 0));
    const gs = await sparse.backward(s.ctx, dy), gd = await dense.backward(full.ctx, masked);
    for (let t = 0; t < gs.dx.length; t++) expect(gs.dx[t]!).toBeCloseTo(gd.dx[t]!, 5);
    const dW = new Float32Array(m * d);
    gs.grads[0]!.ids.forEach((id, r) => dW.set(gs.grads[0]!.grads.subarray(r * d, (r + 1) * d), id * d));
    for (let t = 0; t < dW.length; t++) expect(dW[t]!).toBeCloseTo(gd.grads[0]!.grads[t]!, 5);
    const dbFull = new Float64Array(m);
    for (let t = 0; t < n * m; t++) dbFull[t % m]! += dy[t]!;
    for (let j = 0; j < m; j++) expect(gs.grads[1]!.grads[j]!).toBeCloseTo(dbFull[j]!, 5);
  });

  it('the fast forward is within 1e-5 of the canonical one; hostile construction is refused', async () => {
    const rng = new Rng(3);
    const W = SparseTensor.fromArray(rng.f32(10 * 8), 8), B = SparseTensor.fromArray(rng.f32(10), 10);
    const x = rng.f32(4 * 8);
    const y = (await new Linear({ weight: W, bias: B, k: 10 }).forward(x)).y;
    const c = clinear(x, 4, 8, W.gather(Uint32Array.from({ length: 10 }, (_, i) => i)), 10, 10, B.gather([0]));
    for (let t = 0; t < y.length; t++) expect(Math.abs(y[t]! - c[t]!)).toBeLessThan(1e-5);
    expect(() => new Linear({ weight: W, bias: SparseTensor.fromArray(rng.f32(9), 9) })).toThrow(/bias must be 1 x 10/);
    expect(() => new Linear({ weight: W, bias: W })).toThrow(/bias must be 1 x 10/);
    expect(() => new Linear({ weight: W, k: 11 })).toThrow(/k/);
    expect(() => new Linear({ weight: W, bogus: 1 } as never)).toThrow(/bogus/);
  });
});

describe('RMSNorm', () => {
  it('forward equals the canonical arithmetic bit for bit and a float64 reference to f32 rounding', () => {
    const rng = new Rng(4);
    const n = 5, d = 12;
    const g = rng.f32(d), x = rng.f32(n * d, 3);
    const norm = new RMSNorm({ gain: SparseTensor.fromArray(g, d), eps: 1e-5 });
    const y = norm.forward(x).y;
    expect(Buffer.from(y.buffer).equals(Buffer.from(crmsnorm(x, n, d, g, Math.fround(1e-5)).buffer))).toBe(true);
    const ref = rmsRef(x, n, d, g, Math.fround(1e-5));
    for (let t = 0; t < y.length; t++) expect(Math.abs(y[t]! - ref[t]!)).toBeLessThanOrEqual(Math.abs(ref[t]!) * 2 ** -23 + 1e-30);
    // A zero row gives zeros (eps keeps r finite).
    expect(norm.forward(new Float32Array(d)).y.every((v) => v === 0)).toBe(true);
  });

  it('backward equals finite differences of sum(dy . y) for x and the gain', () => {
    const rng = new Rng(5);
    const n = 3, d = 6;
    const g = rng.f32(d), x = rng.f32(n * d, 2), dy = rng.f32(n * d);
    const norm = new RMSNorm({ gain: SparseTensor.fromArray(g, d), eps: 1e-3 });
    const { ctx } = norm.forward(x);
    const grads = norm.backward(ctx, dy);
    // Finite differences on the float64 formula (the f32 rounding of y would swamp small steps).
    const f = (): number => {
      const y = rmsRef(x, n, d, g, Math.fround(1e-3));
      let s = 0;
      for (let t = 0; t < y.length; t++) s += dy[t]! * y[t]!;
      return s;
    };
    for (let i = 0; i < x.length; i++) expect(grads.dx[i]!).toBeCloseTo(fd(x, i, 1e-3, f), 4);
    for (let t = 0; t < d; t++) expect(grads.grads[0]!.grads[t]!).toBeCloseTo(fd(g, t, 1e-3, f), 4);
    expect(() => new RMSNorm({ gain: SparseTensor.fromArray(rng.f32(2 * d), d) })).toThrow(/one row/);
    expect(() => new RMSNorm({ gain: SparseTensor.fromArray(g, d), eps: 0 })).toThrow(/eps/);
    expect(() => norm.forward(Float32Array.of(1, Number.NaN, 0, 0, 0, 0))).toThrow(/not finite/);
  });
});

describe('Linear and RMSNorm in Ghost files and proofs', () => {
  function model(rng: Rng, k = 5) {
    const W = SparseTensor.fromArray(rng.f32(8 * 6), 6), B = SparseTensor.fromArray(rng.f32(8), 8);
    const lin = new Linear({ weight: W, bias: B, k });
    const norm = new RMSNorm({ gain: SparseTensor.fromArray(rng.f32(8), 8), eps: 1e-5 });
    const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(24 * 8), 8), values: SparseTensor.fromArray(rng.f32(24 * 3), 3), k: 3 });
    return { model: new Model([lin, norm, hop]), W, B };
  }

  it('the entries round-trip; inconsistent entries and every truncation are refused', async () => {
    const { model: m } = model(new Rng(6));
    const g = (await m.ghost()).manifest;
    expect(g.layers[0]).toMatchObject({ op: 'linear', dIn: 6, dOut: 8, k: 5, weight: 0, bias: 1 });
    expect(g.layers[1]).toMatchObject({ op: 'rmsnorm', dim: 8, gain: 2, eps: Math.fround(1e-5) });
    const bytes = encodeGhost(g);
    expect(decodeGhost(bytes)).toEqual(g);
    const broken = (f: (m: GhostManifest) => void): string => editedGhostReason(bytes, f);
    const lin = (m: GhostManifest) => m.layers[0] as GhostLinearLayer;
    const nrm = (m: GhostManifest) => m.layers[1] as GhostRmsNormLayer;
    expect(broken((m) => { lin(m).k = 9; })).toBe('LIMIT');
    expect(broken((m) => { lin(m).k = 0; })).toBe('LIMIT');
    expect(broken((m) => { lin(m).bias = 0; })).toBe('BAD_VALUE');
    expect(broken((m) => { lin(m).bias = 3; })).toBe('BAD_VALUE');
    expect(broken((m) => { lin(m).dOut = 7; })).toBe('BAD_VALUE');
    expect(broken((m) => { lin(m).weight = 9; })).toBe('BAD_VALUE');
    expect(broken((m) => { nrm(m).eps = 0; })).toBe('BAD_VALUE');
    expect(broken((m) => { nrm(m).eps = 0.1; })).toBe('BAD_VALUE');
    expect(broken((m) => { nrm(m).gain = 0; })).toBe('BAD_VALUE');
    expect(broken((m) => { nrm(m).dim = 6; })).toBe('BAD_VALUE');
    expect(broken(() => {})).toBe('accepted');
    for (let cut = 0; cut < bytes.length; cut++) expect(() => decodeGhost(bytes.subarray(0, cut))).toThrow(FormatError);
  });

  it('a forward proof verifies to its claim; tampering and other kept columns are refused', async () => {
    const rng = new Rng(7);
    const { model: m } = model(rng);
    const pinned = await m.ghost();
    const x = rng.f32(4 * 6);
    const p = await m.prove(x);
    const v = await verifyForward(pinned, p.bytes);
    expect(Buffer.from(v.output.buffer).equals(Buffer.from(p.output.buffer))).toBe(true);
    // Within f32 noise of the fast forward.
    const fast = await m.forward(x);
    for (let t = 0; t < fast.length; t++) expect(Math.abs(fast[t]! - p.output[t]!)).toBeLessThan(1e-4);
    const clone = (): ForwardProof => decodeProof(p.bytes) as ForwardProof;
    const bias = clone();
    (bias.layers[0]!.blocks[1]!.payload[0] as Float32Array)[2]! += 0.5;
    expect(await reason(verifyForward(pinned, encodeProof(bias)))).toBe('ROOT_MISMATCH');
    const gain = clone();
    (gain.layers[1]!.blocks[0]!.payload[0] as Float32Array)[0]! *= 2;
    expect(await reason(verifyForward(pinned, encodeProof(gain)))).toBe('ROOT_MISMATCH');
    const out = clone();
    out.output.data[1]! += 1e-3;
    expect(await reason(verifyForward(pinned, encodeProof(out)))).toBe('OUTPUT_MISMATCH');
    const stages = clone();
    stages.layers[0]!.stages = [Uint32Array.of(1)];
    expect(await reason(verifyForward(pinned, encodeProof(stages)))).toBe('SHAPE');
    // A prover keeping 6 columns (same tensors, another k) claims another output.
    const rng2 = new Rng(7);
    const other = model(rng2, 6).model;
    const forged = decodeProof((await other.prove(x)).bytes) as ForwardProof;
    forged.ghost = pinned.digest;
    expect(await reason(verifyForward(pinned, encodeProof(forged)))).toBe('OUTPUT_MISMATCH');
  });

  it('save / load keeps the layers, the Ghost file and the proofs', async () => {
    const rng = new Rng(8);
    const { model: m } = model(rng);
    const dir = join(scratch, 'model');
    const g = await m.save(dir);
    const { model: loaded, ghost } = await Model.load(dir);
    try {
      expect(Buffer.from(ghost.digest).equals(Buffer.from(g.digest))).toBe(true);
      expect(loaded.layers[0]).toBeInstanceOf(Linear);
      expect(loaded.layers[1]).toBeInstanceOf(RMSNorm);
      const x = rng.f32(2 * 6);
      expect(Buffer.from((await loaded.prove(x)).bytes).equals(Buffer.from((await m.prove(x)).bytes))).toBe(true);
      await verifyForward(await pinGhost(g.bytes), (await loaded.prove(x)).bytes);
    } finally {
      loaded.close();
    }
  });
});
