/**
 * Models that are graphs (docs/layer-kinds.md, "Graphs and residual blocks"): Residual
 * blocks x + f(norm(x)) and explicit inputs; the forward pass against the blocks
 * computed by hand; Ghost format 2 (round trip, a chain written as format 1, hostile
 * graphs refused); forward proofs of the whole graph and of spans cut between blocks
 * (and not inside one); save / load.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { Add, Embedding, FormatError, GatedMLP, Linear, PositionEmbedding, Model, Projection, RMSNorm, Residual, SparseSelfAttention, SparseTensor } from '../lib/index.js';
import { cadd } from '../lib/verify/kinds/add.js';
import { cglu } from '../lib/verify/canonical.js';
import { kindOf } from '../lib/model/kinds/index.js';
import { GHOST_GRAPH_VERSION, decodeGhost, encodeGhost, type GhostManifest } from '../lib/verify/ghost-file.js';
import { decodeProof, encodeProof, type ForwardProof } from '../lib/verify/proof-format.js';
import { pinGhost, verifyForward } from '../lib/verify/proof-verify.js';
import { editedGhostReason } from './helpers/ghost-edit.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const scratch = mkdtempSync(join(tmpdir(), 'gt-graph-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A small transformer: embedding, an attention block and an MLP block (both residual), a final norm and a head. */
function transformer(rng: Rng) {
  const d = 8, vocab = 16;
  const t = (n: number, w: number, s = 0.5) => SparseTensor.fromArray(rng.f32(n * w, s), w);
  const ones = () => SparseTensor.fromArray(new Float32Array(d).fill(1), d);
  const emb = new Embedding(t(vocab, d));
  const n1 = new RMSNorm({ gain: ones() });
  const attn = new SparseSelfAttention({ heads: 2, k: 3, causal: true, query: new Projection({ weight: t(d, d) }), key: new Projection({ weight: t(d, d) }), value: new Projection({ weight: t(d, d) }), output: new Projection({ weight: t(d, d) }) });
  const n2 = new RMSNorm({ gain: ones() });
  const up = new Linear({ weight: t(4 * d, d), bias: t(1, 4 * d), k: 8 });
  const down = new Linear({ weight: t(d, 4 * d) });
  const nf = new RMSNorm({ gain: ones() });
  const head = new Linear({ weight: t(vocab, d) });
  const model = new Model([emb, new Residual([n1, attn]), new Residual([n2, up, down]), nf, head]);
  return { model, emb, n1, attn, n2, up, down, nf, head };
}

describe('graphs of layers', () => {
  it('Residual blocks become the body and an Add; the forward pass equals the blocks computed by hand', async () => {
    const { model, emb, n1, attn, n2, up, down, nf, head } = transformer(new Rng(1));
    expect(model.layers.map((l) => l.constructor.name)).toEqual(['Embedding', 'RMSNorm', 'SparseSelfAttention', 'Add', 'RMSNorm', 'Linear', 'Linear', 'Add', 'RMSNorm', 'Linear']);
    expect(model.inputs).toEqual([[-1], [0], [1], [0, 2], [3], [4], [5], [3, 6], [7], [8]]);
    const ids = [3, 1, 4, 1, 5, 9];
    const x0 = emb.forward(ids);
    const x1 = cadd(x0, (await attn.forward(n1.forward(x0).y)).y);
    const x2 = cadd(x1, (await down.forward((await up.forward(n2.forward(x1).y)).y)).y);
    const y = (await head.forward(nf.forward(x2).y)).y;
    const got = await model.forward(ids);
    expect(Buffer.from(got.buffer).equals(Buffer.from(y.buffer))).toBe(true);
    // Refused: a block that changes the width, a block at an ids input, inputs beside Residuals.
    const rng = new Rng(2);
    expect(() => new Model([new Linear({ weight: SparseTensor.fromArray(rng.f32(32), 4) }), new Residual([new Linear({ weight: SparseTensor.fromArray(rng.f32(24), 8) })])])).toThrow(/widths 8, 3|takes 8 inputs|adds rows/);
    expect(() => new Model([new Residual([emb])])).toThrow(/model's input/);
    expect(() => new Model([emb, new Residual([n1])], { inputs: [[-1], [0]] })).toThrow(/not both/);
  });

  it('explicit inputs: two branches of the input added; the Ghost file is format 2 and round-trips', async () => {
    const rng = new Rng(3);
    const a = new Linear({ weight: SparseTensor.fromArray(rng.f32(6 * 5), 5) });
    const b = new Linear({ weight: SparseTensor.fromArray(rng.f32(6 * 5), 5), k: 2 });
    const model = new Model([a, b, new Add(6)], { inputs: [[-1], [-1], [0, 1]] });
    const x = rng.f32(3 * 5);
    const want = cadd((await a.forward(x)).y, (await b.forward(x)).y);
    expect(Buffer.from((await model.forward(x)).buffer).equals(Buffer.from(want.buffer))).toBe(true);
    const g = await model.ghost();
    expect(g.manifest.formatVersion).toBe(GHOST_GRAPH_VERSION);
    expect(g.manifest.inputs).toEqual([[-1], [-1], [0, 1]]);
    expect(decodeGhost(g.bytes)).toEqual(g.manifest);
    const p = await model.prove(x);
    const v = await verifyForward(g, p.bytes);
    expect(Buffer.from(v.output.buffer).equals(Buffer.from(p.output.buffer))).toBe(true);
    // A chain given as explicit inputs is the same model, written as format 1.
    const chain = new Model([a, new Linear({ weight: SparseTensor.fromArray(rng.f32(4 * 6), 6) })], { inputs: [[-1], [0]] });
    const cg = await chain.ghost();
    expect(cg.manifest.formatVersion).toBe(1);
    expect(cg.manifest.inputs).toBeUndefined();
    expect(Buffer.from(cg.bytes).equals(Buffer.from((await new Model([...chain.layers]).ghost()).bytes))).toBe(true);
  });

  it('hostile graphs in a Ghost file are refused with their reasons; every truncation too', async () => {
    const { model } = transformer(new Rng(4));
    const g = (await model.ghost()).manifest;
    const bytes = encodeGhost(g);
    expect(decodeGhost(bytes)).toEqual(g);
    const broken = (f: (m: GhostManifest) => void): string => editedGhostReason(bytes, f);
    expect(broken(() => {})).toBe('accepted');
    expect(broken((m) => { m.inputs = m.layers.map((_, i) => [i - 1]); })).toBe('NON_CANONICAL'); // a chain
    expect(broken((m) => { m.inputs![3] = [0, 5]; })).toBe('BAD_VALUE'); // a later layer
    expect(broken((m) => { m.inputs![3] = [0]; })).toBe('BAD_VALUE'); // an add with one input
    expect(broken((m) => { m.inputs![2] = [1, 0]; })).toBe('BAD_VALUE'); // attention with two
    expect(broken((m) => { m.inputs![3] = [-1, 2]; })).toBe('BAD_VALUE'); // the model's input is ids
    expect(broken((m) => { m.inputs![4] = [2]; m.inputs![7] = [2, 6]; })).toBe('BAD_VALUE'); // layer 3 read by nobody
    expect(broken((m) => { m.inputs![6] = [4]; })).toBe('BAD_VALUE'); // widths 32 -> 8 expected
    expect(broken((m) => { delete m.inputs; })).toBe('BAD_VALUE'); // format 2 without inputs
    expect(broken((m) => { m.formatVersion = 1; })).toBe('BAD_VALUE'); // format 1 with inputs
    expect(broken((m) => { m.formatVersion = 4; })).toBe('BAD_VERSION');
    // Format 3 is a graph with a training rule: without one it is refused.
    expect(broken((m) => { m.formatVersion = 3; })).toBe('BAD_VALUE');
    for (let cut = 0; cut < bytes.length; cut++) expect(() => decodeGhost(bytes.subarray(0, cut))).toThrow(FormatError);
  });

  it('proofs of the whole graph and of spans cut between blocks verify and chain; a span inside a block is refused', async () => {
    const { model } = transformer(new Rng(5));
    const ghost = await model.ghost();
    const pinned = await pinGhost(ghost.bytes);
    const ids = [2, 7, 1, 8, 2, 8, 1];
    const whole = await model.prove(ids);
    expect(Buffer.from((await verifyForward(pinned, whole.bytes)).output.buffer).equals(Buffer.from(whole.output.buffer))).toBe(true);
    // Close to the fast forward (f32 kernels) at every value.
    const fast = await model.forward(ids);
    for (let i = 0; i < fast.length; i++) expect(Math.abs(fast[i]! - whole.output[i]!)).toBeLessThan(1e-3);
    // Spans at the cut points 0..3 | 4..7 | 8..9 chain to the whole.
    let x: Float32Array | number[] = ids;
    let at = 0;
    for (const count of [4, 4, 2]) {
      const p = await model.prove(x, { firstLayer: at, layers: count });
      const v = await verifyForward(pinned, p.bytes);
      x = v.output;
      at += count;
    }
    expect(Buffer.from((x as Float32Array).buffer).equals(Buffer.from(whole.output.buffer))).toBe(true);
    // A span starting inside a block reads a layer before it.
    await expect(model.prove(whole.output.subarray(0, 0), { firstLayer: 2, layers: 2 })).rejects.toThrow(/outside layers 2..3/);
    // A forged span proof (the evidence of layers 2..3 with a made-up input) is refused before any work.
    const honest = await model.prove(ids, { firstLayer: 0, layers: 4 });
    const full = decodeProof(honest.bytes) as ForwardProof;
    const forged: ForwardProof = { ...full, firstLayer: 2, layers: full.layers.slice(2, 4), input: { kind: 'f32', rows: ids.length, cols: 8, data: new Float32Array(ids.length * 8) } };
    expect(await reason(verifyForward(pinned, encodeProof(forged)))).toBe('LAYER_MISMATCH');
    // Tampering with the claimed output is caught.
    const out = decodeProof(whole.bytes) as ForwardProof;
    out.output.data[3]! += 1e-3;
    expect(await reason(verifyForward(pinned, encodeProof(out)))).toBe('OUTPUT_MISMATCH');
  });

  it('GatedMLP: down(silu(gate x) * up x) by hand; the Glu backward equals finite differences; cglu within f32 rounding of a float64 reference', async () => {
    const rng = new Rng(7);
    const d = 6, h = 10;
    const t = (n: number, w: number) => SparseTensor.fromArray(rng.f32(n * w, 0.5), w);
    const gate = new Linear({ weight: t(h, d) }), up = new Linear({ weight: t(h, d), bias: t(1, h) }), down = new Linear({ weight: t(d, h) });
    const first = new Linear({ weight: t(d, 4) });
    const model = new Model([first, new Residual([new GatedMLP({ gate, up, down })])]);
    expect(model.layers.map((l) => l.constructor.name)).toEqual(['Linear', 'Linear', 'Linear', 'Glu', 'Linear', 'Add']);
    expect(model.inputs).toEqual([[-1], [0], [0], [1, 2], [3], [0, 4]]);
    const x = rng.f32(3 * 4);
    const x0 = (await first.forward(x)).y;
    const g = (await gate.forward(x0)).y, u = (await up.forward(x0)).y;
    const want = cadd(x0, (await down.forward(cglu(g, u))).y);
    expect(Buffer.from((await model.forward(x)).buffer).equals(Buffer.from(want.buffer))).toBe(true);
    // cglu against silu in float64 with the platform's exp.
    const ref = (a: number, b: number): number => (a / (1 + Math.exp(-a))) * b;
    for (let i = 0; i < g.length; i++) expect(Math.abs(cglu(g, u)[i]! - Math.fround(ref(g[i]!, u[i]!)))).toBeLessThanOrEqual(Math.abs(ref(g[i]!, u[i]!)) * 2 ** -23);
    // Backward of the Glu against central differences of sum(dy . silu(g) u) in float64.
    const glu = model.layers[3]!;
    const kind = kindOf(glu);
    const dy = rng.f32(g.length);
    const f = await kind.forward(glu, g, { inWidth: h, outWidth: h }, [u]);
    const grads = await kind.backward(glu, f.ctx, dy);
    const loss = (a: Float32Array, b: Float32Array): number => a.reduce((acc, v, i) => acc + dy[i]! * ref(v, b[i]!), 0);
    const eps = 1e-3;
    for (let i = 0; i < g.length; i++) {
      const gp = g.slice(), gm = g.slice();
      gp[i]! += eps;
      gm[i]! -= eps;
      expect(grads.dx![i]!).toBeCloseTo((loss(gp, u) - loss(gm, u)) / (gp[i]! - gm[i]!), 3);
      const up2 = u.slice(), um = u.slice();
      up2[i]! += eps;
      um[i]! -= eps;
      expect(grads.dxOthers![0]![i]!).toBeCloseTo((loss(g, up2) - loss(g, um)) / (up2[i]! - um[i]!), 3);
    }
    // Proved and verified, and the Ghost file names the glu.
    const ghost = await model.ghost();
    expect(ghost.manifest.layers[3]).toEqual({ op: 'glu', dim: h, activation: 'silu' });
    const p = await model.prove(x);
    expect(Buffer.from((await verifyForward(ghost, p.bytes)).output.buffer).equals(Buffer.from(p.output.buffer))).toBe(true);
  });

  it('PositionEmbedding: row i gets P_i; its proof reveals rows 0..n-1 only; a sequence past the table is refused', async () => {
    const rng = new Rng(8);
    const d = 4;
    const emb = new Embedding(SparseTensor.fromArray(rng.f32(10 * d), d));
    const pos = new PositionEmbedding(SparseTensor.fromArray(rng.f32(6 * d), d));
    const head = new Linear({ weight: SparseTensor.fromArray(rng.f32(3 * d), d) });
    const model = new Model([emb, pos, head]);
    const ids = [7, 7, 2];
    const x = emb.forward(ids);
    const P = pos.table.gather([0, 1, 2]);
    const got = (await pos.forward(x)).y;
    for (let i = 0; i < got.length; i++) expect(got[i]).toBe(Math.fround(x[i]! + P[i]!));
    // The same id at two positions gives two rows.
    expect(Array.from(got.subarray(0, d))).not.toEqual(Array.from(got.subarray(d, 2 * d)));
    const ghost = await model.ghost();
    const p = await model.prove(ids);
    const block = (decodeProof(p.bytes) as ForwardProof).layers[1]!.blocks[0]!;
    expect(Array.from(block.ids)).toEqual([0, 1, 2]);
    await verifyForward(ghost, p.bytes);
    // Backward: dx = dy, and rows 0..n-1 of the table get dy.
    const dy = rng.f32(3 * d);
    const g = await kindOf(pos).backward(pos, 3, dy);
    expect(g.dx).toBe(dy);
    expect(Array.from(g.grads[0]!.ids)).toEqual([0, 1, 2]);
    expect(Array.from(g.grads[0]!.grads)).toEqual(Array.from(dy));
    // Seven positions do not fit a table of six: refused by the layer, the prover and the verifier.
    await expect(model.forward([1, 2, 3, 4, 5, 6, 7])).rejects.toThrow(/holds 6/);
    await expect(model.prove([1, 2, 3, 4, 5, 6, 7])).rejects.toThrow(/holds 6/);
    const long = decodeProof((await new Model([emb, new PositionEmbedding(SparseTensor.fromArray(rng.f32(8 * d), d)), head]).prove([1, 2, 3, 4, 5, 6, 7])).bytes) as ForwardProof;
    long.ghost = ghost.digest;
    // Its block of 7 rows of a 6-row table is refused as it is decoded, before the layer runs.
    expect(await reason(verifyForward(ghost, encodeProof(long)))).toBe('BLOCK_IDS');
  });

  it('save / load keeps the graph, the Ghost file and the proofs', async () => {
    const rng = new Rng(6);
    const { model } = transformer(rng);
    const dir = join(scratch, 'transformer');
    const g = await model.save(dir);
    const { model: loaded, ghost } = await Model.load(dir);
    try {
      expect(Buffer.from(ghost.digest).equals(Buffer.from(g.digest))).toBe(true);
      expect(loaded.inputs).toEqual(model.inputs);
      const ids = [1, 2, 3, 4];
      expect(Buffer.from((await loaded.prove(ids)).bytes).equals(Buffer.from((await model.prove(ids)).bytes))).toBe(true);
    } finally {
      loaded.close();
    }
  });
});

