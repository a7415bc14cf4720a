/**
 * Ghost proofs of SparseSelfAttention layers: the Ghost file carries the layer, a
 * forward proof reveals the projection tensors whole and the verifier re-derives
 * every selection (projection columns and top-k keys) canonically; tampering, a
 * different selection, chains with Hopfield layers, caches, update proofs of the
 * projections, save / load.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  FormatError,
  HopfieldLookup,
  Model,
  Projection,
  SparseAdam,
  SparseSelfAttention,
  SparseTensor,
} from '../lib/index.js';
import { cattention, cprojection } from '../lib/verify/canonical.js';
import { decodeGhost, encodeGhost, type GhostAttentionLayer, type GhostManifest } from '../lib/verify/ghost-file.js';
import { PatternCache, decodeProof, encodeProof, type ForwardProof } from '../lib/verify/proof-format.js';
import { pinGhost, verifyForward, verifyUpdate } from '../lib/verify/proof-verify.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const clone = (p: ForwardProof): ForwardProof => decodeProof(encodeProof(p)) as ForwardProof;

/** Attention (causal, 2 heads, k = 3, a sparse key projection) then an exact HopfieldLookup. */
function attentionModel(rng: Rng) {
  const dIn = 12, D = 8;
  const w = { q: rng.f32(D * dIn, 0.5), k: rng.f32(D * dIn, 0.5), v: rng.f32(D * dIn, 0.5), o: rng.f32(D * D, 0.5) };
  const t = { q: SparseTensor.fromArray(w.q, dIn), k: SparseTensor.fromArray(w.k, dIn), v: SparseTensor.fromArray(w.v, dIn), o: SparseTensor.fromArray(w.o, D) };
  const attn = new SparseSelfAttention({
    heads: 2, k: 3, causal: true,
    query: new Projection({ weight: t.q }), key: new Projection({ weight: t.k, k: 5 }),
    value: new Projection({ weight: t.v }), output: new Projection({ weight: t.o }),
  });
  const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(40 * D), D), values: SparseTensor.fromArray(rng.f32(40 * 3), 3), k: 4 });
  return { model: new Model([attn, hop]), attn, hop, w, t, dIn, D };
}

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('attention layers in Ghost files and proofs', () => {
  it('the Ghost file carries the layer; encoding round-trips; inconsistent layers are refused', async () => {
    const { model } = attentionModel(new Rng(1));
    const g = (await model.ghost()).manifest;
    const a = g.layers[0] as GhostAttentionLayer;
    expect(a).toMatchObject({ op: 'attention', dIn: 12, dOut: 8, heads: 2, k: 3, causal: true, scale: Math.fround(1 / 2) });
    expect(a.key!.k).toBe(5);
    expect(a.query!.k).toBe(8);
    expect(decodeGhost(encodeGhost(g))).toEqual(g);
    const broken = (f: (l: GhostAttentionLayer) => void): GhostManifest => {
      const m = decodeGhost(encodeGhost(g));
      f(m.layers[0] as GhostAttentionLayer);
      return m;
    };
    expect(() => encodeGhost(broken((l) => { l.heads = 3; }))).toThrow(FormatError); // 8 % 3
    expect(() => encodeGhost(broken((l) => { l.dOut = 7; }))).toThrow(FormatError);
    expect(() => encodeGhost(broken((l) => { l.key = { tensor: 1, k: 9 }; }))).toThrow(FormatError); // k > N
    expect(() => encodeGhost(broken((l) => { l.output = { tensor: 0, k: 8 }; }))).toThrow(FormatError); // reads 12, gets 8
    expect(() => encodeGhost(broken((l) => { l.scale = 0.1; }))).toThrow(FormatError); // not an f32
    expect(() => encodeGhost(broken((l) => { l.value = null; }))).toThrow(FormatError); // passes 12 through, Q/K are 8
    // Truncations of the encoding never decode to something else.
    const bytes = encodeGhost(g);
    for (let cut = 0; cut < bytes.length; cut += 7) expect(() => decodeGhost(bytes.subarray(0, cut))).toThrow(FormatError);
  });

  it('a forward proof verifies to the canonical output, computed independently here', async () => {
    const rng = new Rng(2);
    const { model, attn, w, dIn, D } = attentionModel(rng);
    const n = 10;
    const x = rng.f32(n * dIn);
    const single = new Model([attn]);
    const pinned = await single.ghost();
    const pr = await single.prove(x);
    const v = await verifyForward(pinned, pr.bytes);
    expect(Buffer.from(v.output.buffer).equals(Buffer.from(pr.output.buffer))).toBe(true);
    // The same pipeline spelled out from the canonical parts.
    const q = cprojection(x, n, dIn, w.q, D, D), k = cprojection(x, n, dIn, w.k, D, 5), val = cprojection(x, n, dIn, w.v, D, D);
    const o = cattention(q, k, val, n, 2, 3, true, Math.fround(0.5));
    const y = cprojection(o, n, D, w.o, D, D);
    expect(Buffer.from(y.buffer).equals(Buffer.from(v.output.buffer))).toBe(true);
    // And it is the fast path's function up to f32 rounding.
    const fast = await single.forward(x);
    for (let i = 0; i < y.length; i++) expect(Math.abs(fast[i]! - y[i]!)).toBeLessThan(1e-4);
    // The whole chain (attention then Hopfield) verifies too.
    const chain = await model.prove(x);
    expect((await verifyForward(await model.ghost(), chain.bytes)).output).toEqual(chain.output);
  });

  it('tampering and a different selection are refused with their reasons', async () => {
    const rng = new Rng(3);
    const { attn, dIn, w, D } = attentionModel(rng);
    const model = new Model([attn]);
    const pinned = await model.ghost();
    const n = 9;
    const x = rng.f32(n * dIn);
    const pr = await model.prove(x);
    const cases: [string, (p: ForwardProof) => void, string][] = [
      ['an output value', (p) => { p.output.data[5] = p.output.data[5]! + 1e-3; }, 'OUTPUT_MISMATCH'],
      ['an input value', (p) => { (p.input as { data: Float32Array }).data[0]! += 1; }, 'OUTPUT_MISMATCH'],
      ['a projection pattern', (p) => { (p.layers[0]!.blocks[1]!.payload[2] as Float32Array)[0]! += 0.5; }, 'ROOT_MISMATCH'],
      ['a missing block', (p) => { p.layers[0]!.blocks.pop(); }, 'BLOCK_IDS'],
      ['a stage the verifier does not take', (p) => { p.layers[0]!.stages.push(new Uint32Array(3)); }, 'SHAPE'],
      ['the op', (p) => { p.layers[0]!.op = 'hopfield'; }, 'LAYER_MISMATCH'],
      ['the Ghost digest', (p) => { p.ghost[0]! ^= 1; }, 'GHOST_MISMATCH'],
    ];
    for (const [what, mutate, want] of cases) {
      const p = clone(pr.proof);
      mutate(p);
      expect(`${what}: ${await reason(verifyForward(pinned, encodeProof(p)))}`).toBe(`${what}: ${want}`);
    }
    // A prover that attends to other keys (k = 2 instead of 3; or no causal mask)
    // and claims that output with genuine patterns is caught: the verifier selects itself.
    for (const [k, causal] of [[2, true], [3, false]] as const) {
      const q = cprojection(x, n, dIn, w.q, D, D), kk = cprojection(x, n, dIn, w.k, D, 5), v = cprojection(x, n, dIn, w.v, D, D);
      const y = cprojection(cattention(q, kk, v, n, 2, k, causal, 0.5), n, D, w.o, D, D);
      const p = clone(pr.proof);
      p.output.data = y;
      expect(await reason(verifyForward(pinned, encodeProof(p)))).toBe('OUTPUT_MISMATCH');
    }
    // A sequence shorter than k attends to every key a query may see: it proves and verifies.
    const short = await model.prove(rng.f32(2 * dIn));
    const verified = await verifyForward(pinned, short.bytes);
    expect(verified.rows).toBe(2);
    expect(Buffer.from(verified.output.buffer).equals(Buffer.from(short.output.buffer))).toBe(true);
  });

  it('with a cache the projections travel once; update proofs of the projections move the Ghost file', async () => {
    const rng = new Rng(4);
    const { attn, t, dIn, D } = attentionModel(rng);
    const model = new Model([attn]);
    let pinned = await model.ghost();
    const prover = new PatternCache(), verifier = new PatternCache();
    const first = await model.prove(rng.f32(6 * dIn), { cache: prover });
    await verifyForward(pinned, first.bytes, { cache: verifier });
    const second = await model.prove(rng.f32(6 * dIn), { cache: prover });
    expect(second.bytes.length).toBeLessThan(first.bytes.length / 3);
    await verifyForward(pinned, second.bytes, { cache: verifier });
    // A fresh verifier without the cache cannot take the short proof.
    expect(await reason(verifyForward(pinned, second.bytes))).toBe('NOT_HELD');
    // Train the projections; each step's update proofs carry the Ghost file forward.
    const opt = new SparseAdam([t.q, t.k, t.v, t.o], { lr: 0.01 });
    for (let step = 0; step < 3; step++) {
      const x = rng.f32(6 * dIn);
      const f = await attn.forward(x);
      const g = await attn.backward(f.ctx, rng.f32(6 * D));
      for (const u of await model.proveStep(opt, g.grads, { cache: prover })) pinned = (await verifyUpdate(pinned, u.bytes, { cache: verifier })).ghost;
      expect(pinned.digest).toEqual((await model.ghost()).digest);
    }
    // A proof under the trained weights verifies against the followed Ghost file, with deltas.
    const after = await model.prove(rng.f32(6 * dIn), { cache: prover });
    await verifyForward(pinned, after.bytes, { cache: verifier });
  });

  it('save / load reproduces the Ghost file and the proofs', async () => {
    const rng = new Rng(5);
    const { model, dIn } = attentionModel(rng);
    const dir = await mkdtemp(join(tmpdir(), 'gt-attn-'));
    dirs.push(dir);
    const saved = await model.save(join(dir, 'm'));
    const { model: loaded, ghost } = await Model.load(join(dir, 'm'));
    try {
      expect(ghost.digest).toEqual(saved.digest);
      const x = rng.f32(7 * dIn);
      const a = await model.prove(x), b = await loaded.prove(x);
      expect(Buffer.from(b.bytes).equals(Buffer.from(a.bytes))).toBe(true);
      await verifyForward(await pinGhost(ghost.bytes), b.bytes);
    } finally {
      loaded.close();
    }
  });
});
