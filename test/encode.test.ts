/**
 * The exact-size proof encoder (lib/verify/proof-format.ts encodeProof over
 * lib/shared/bytes.ts ByteCounter + ByteWriter(size)) against the encoder before it,
 * kept verbatim as bench/lib/encode-reference.mjs (chunks doubling, joined): every
 * proof, of every kind, must encode to the same bytes. Proofs: forward proofs of exact
 * retrieval, product keys, attention and a language model with a memory layer (with
 * and without a PatternCache, held keys, a span), update proofs (SGD, Adam, cached),
 * step proofs with and without a PatternCache, and random structures that reach the
 * corners of the block layout (row kinds not a multiple of four, full rows that are
 * adjacent views or not, all-rows blocks). Then ByteWriter's exact mode: a wrong size is
 * an internal error, never a short, padded or uninitialized output.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, PatternCache, Projection, SparseAdam, SparseSGD, SparseSelfAttention, SparseTensor, languageModel } from '../lib/index.js';
import { ByteCounter, ByteWriter, writeExact } from '../lib/shared/bytes.js';
import { GhostTensorError, InvalidArgumentError } from '../lib/shared/errors.js';
import { RowKind, StateKind, decodeProof, encodeProof, type ForwardProof, type GhostProof, type PatternBlock, type StepProof } from '../lib/verify/proof-format.js';
import { specByOp } from '../lib/verify/kinds/index.js';
import { stateRowBytes, writeOptimizer } from '../lib/verify/training.js';
import { makeReferenceEncoder } from '../bench/lib/encode-reference.mjs';
import { decodeProofList, encodeProofList, proofListParts } from '../lib/serve/wire.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';

const encodeOld = makeReferenceEncoder({ specByOp, writeOptimizer, stateRowBytes });

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/**
 * The proof encodes to the reference's bytes, and `bytes` (what the prover returned) are those bytes.
 * A proof with held-table blocks (format version 2, which the reference predates) is compared in
 * its version 1 form instead: each held table as the all-rows block of N held rows it replaces
 * (`sizes`: each tensor's N); its own bytes must round-trip, with version 2 and 9-byte markers.
 */
function same(p: GhostProof, bytes?: Uint8Array, sizes?: readonly number[]): void {
  if (p.kind === 'forward' && p.layers.some((l) => l.blocks.some((b) => b.heldTable === true))) {
    if (!sizes) throw new Error('same: a proof with held tables needs the tensors\' sizes');
    const own = encodeProof(p);
    if (bytes) expect(hex(bytes)).toBe(hex(own));
    expect(own[8]! | (own[9]! << 8)).toBe(2);
    expect(hex(encodeProof(decodeProof(own)))).toBe(hex(own));
    const tables = p.layers.flatMap((l) => l.blocks).filter((b) => b.heldTable === true);
    const v1: ForwardProof = {
      ...p,
      layers: p.layers.map((l) => ({
        ...l,
        blocks: l.blocks.map((b): PatternBlock => {
          if (b.heldTable !== true) return b;
          const n = sizes[b.tensor]!;
          return { tensor: b.tensor, dim: b.dim, all: true, ids: Uint32Array.from({ length: n }, (_, i) => i), kinds: new Uint8Array(n).fill(RowKind.Held), payload: new Array<null>(n).fill(null), hashes: new Uint8Array(0) };
        }),
      })),
    };
    const old = encodeProof(v1);
    expect(hex(old)).toBe(hex(encodeOld(v1)));
    // Each marker (tensor, dim, flags 2) replaces a 13-byte header, ceil(N / 4) bytes of kinds and a 4-byte hash count.
    expect(old.length - own.length).toBe(tables.reduce((a, b) => a + 8 + Math.ceil(sizes[b.tensor]! / 4), 0));
    return;
  }
  const now = encodeProof(p), ref = encodeOld(p);
  expect(now.length).toBe(ref.length);
  expect(hex(now)).toBe(hex(ref));
  if (bytes) expect(hex(bytes)).toBe(hex(ref));
  // The encoder's array is its own: a plain Uint8Array over an ArrayBuffer of exactly its bytes.
  expect(Object.getPrototypeOf(now)).toBe(Uint8Array.prototype);
  expect(now.byteOffset).toBe(0);
  expect(now.buffer.byteLength).toBe(now.length);
}

/** How many rows of each kind the proof's blocks carry (to show a case reaches the kinds it claims). */
function rowKinds(p: GhostProof): Record<'full' | 'held' | 'delta', number> {
  const blocks: PatternBlock[] = p.kind === 'forward' ? p.layers.flatMap((l) => l.blocks) : p.kind === 'update' ? [p.block] : p.blocks;
  const out = { full: 0, held: 0, delta: 0 };
  for (const b of blocks) for (const k of b.kinds) out[k === RowKind.Full ? 'full' : k === RowKind.Held ? 'held' : 'delta']++;
  return out;
}

describe('encodeProof: the same bytes as the encoder before it', () => {
  it('forward proofs: exact retrieval then product keys, a span, held keys, and with a PatternCache (held rows, then deltas)', async () => {
    const rng = new Rng(5);
    const { model, l0 } = twoLayerModel(rng);
    const x = rng.f32(3 * 16);
    const plain = await model.prove(x);
    same(plain.proof, plain.bytes);
    const span = await model.prove(rng.f32(2 * 16), { firstLayer: 1, layers: 1 });
    expect(span.proof.firstLayer).toBe(1);
    same(span.proof, span.bytes);
    const keys = await model.prove(x, { revealKeys: 'all' });
    same(keys.proof, keys.bytes);
    const mirror = new PatternCache();
    await model.prove(x, { cache: mirror });
    const held = await model.prove(x, { cache: mirror });
    expect(rowKinds(held.proof).held).toBeGreaterThan(0);
    same(held.proof, held.bytes, model.tensors.map((t) => t.size));
    const opt = new SparseSGD([l0.values], { lr: 1e-3 });
    const ids = held.proof.layers[0]!.blocks[1]!.ids;
    opt.step([{ tensor: l0.values, ids, grads: rng.f32(ids.length * 16) }]);
    opt.detach();
    const delta = await model.prove(x, { cache: mirror });
    expect(rowKinds(delta.proof).delta).toBeGreaterThan(0);
    same(delta.proof, delta.bytes, model.tensors.map((t) => t.size));
  });

  it('forward proofs: attention with sparse projections, and a language model with a product-key memory layer', async () => {
    const rng = new Rng(6);
    const dIn = 12, D = 8;
    const attn = new SparseSelfAttention({
      heads: 2, k: 3, causal: true,
      query: new Projection({ weight: SparseTensor.fromArray(rng.f32(D * dIn, 0.5), dIn) }), key: new Projection({ weight: SparseTensor.fromArray(rng.f32(D * dIn, 0.5), dIn), k: 5 }),
      value: new Projection({ weight: SparseTensor.fromArray(rng.f32(D * dIn, 0.5), dIn) }), output: new Projection({ weight: SparseTensor.fromArray(rng.f32(D * D, 0.5), D) }),
    });
    const m1 = new Model([attn, new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(40 * D), D), values: SparseTensor.fromArray(rng.f32(40 * 3), 3), k: 4 })]);
    const a = await m1.prove(rng.f32(5 * dIn));
    same(a.proof, a.bytes);
    const lm = languageModel({ context: 8, dim: 8, layers: 1, heads: 2, hidden: 12, memory: { layers: [0], subKeys: 3, k: 2, heads: 2, keyDim: 4 }, seed: 2 });
    const mirror = new PatternCache();
    for (let i = 0; i < 2; i++) {
      const r = await lm.prove([1, 7, 3, 200, 5, 9], { cache: mirror });
      same(r.proof, r.bytes, lm.tensors.map((t) => t.size));
    }
  });

  for (const kind of ['sgd', 'adam'] as const) {
    it(`update proofs (${kind}), without and with a PatternCache`, async () => {
      const rng = new Rng(kind === 'sgd' ? 7 : 8);
      const d = 8, n = 60;
      const table = SparseTensor.fromArray(rng.f32(n * d), d);
      const layer = new HopfieldLookup({ keys: table, values: SparseTensor.fromArray(rng.f32(n * 3), 3), k: 5 });
      const model = new Model([layer]);
      const opt = kind === 'adam' ? new SparseAdam([table, layer.values], { lr: 0.01, weightDecay: 0.1 }) : new SparseSGD([table, layer.values], { lr: 0.1 });
      const mirror = new PatternCache();
      const x = rng.f32(2 * d);
      for (let step = 0; step < 3; step++) {
        const f = await layer.forward(x);
        const g = await layer.backward(f.ctx, rng.f32(2 * 3));
        for (const pr of await model.proveStep(opt, g.grads, step === 0 ? {} : { cache: mirror })) {
          expect(pr.proof.kind).toBe('update');
          same(pr.proof, pr.bytes);
        }
      }
    });
  }

  it('step proofs: a classifier and a language model with a memory layer, without and with a PatternCache (state rows full, held, delta, zero)', async () => {
    const rng = new Rng(9);
    const clf = new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(48 * 12), 12), values: SparseTensor.fromArray(rng.f32(48 * 4), 4), k: 3, beta: 3 })], {
      training: { loss: 'cross-entropy', lr: 0.02, weightDecay: 0.01 },
    });
    const b1 = { input: rng.f32(5 * 12), targets: [0, 1, 2, 3, 1] }, b2 = { input: rng.f32(5 * 12), targets: [3, 2, 1, 0, 0] };
    const cold = await clf.proveTrainStep(b1);
    expect(cold.proof.states.every((s) => s.kinds === undefined)).toBe(true);
    same(cold.proof, cold.bytes);
    const mirror = new PatternCache();
    const seen = new Set<number>();
    let last: StepProof | undefined;
    for (const b of [b2, b1, b2, b1]) {
      const r = await clf.proveTrainStep(b, { cache: mirror });
      for (const s of r.proof.states) for (const k of s.kinds ?? []) seen.add(k);
      same(r.proof, r.bytes);
      last = r.proof;
    }
    expect([...seen].sort()).toEqual([StateKind.Full, StateKind.Held, StateKind.Zero].sort());
    // State deltas are rare in an honest run (Adam's m and v change most words): two rows made deltas by hand.
    const s0 = last!.states[0]!;
    const kinds = s0.kinds!.slice(), deltas = s0.deltas!.slice();
    for (const t of [0, s0.ids.length - 1]) {
      kinds[t] = StateKind.Delta;
      deltas[t] = Uint8Array.from({ length: Math.ceil((2 * s0.dim + 3) / 4) + 5 }, (_, i) => (i * 37 + t) & 0xff);
    }
    same({ ...last!, states: [{ ...s0, kinds, deltas }, ...last!.states.slice(1)] });
    const lm = languageModel({ context: 6, dim: 8, layers: 2, heads: 2, hidden: 8, memory: { layers: [1], subKeys: 3, k: 2, heads: 2, keyDim: 4 } }, { training: { loss: 'cross-entropy', lr: 0.01, clipNorm: 1 } });
    const lmMirror = new PatternCache();
    const batch = { input: Uint32Array.of(3, 1, 4, 1, 5, 9), targets: Uint32Array.of(1, 4, 1, 5, 9, 2) };
    const s1 = await lm.proveTrainStep(batch);
    same(s1.proof, s1.bytes);
    for (let i = 0; i < 2; i++) {
      const r = await lm.proveTrainStep(batch, { cache: lmMirror });
      same(r.proof, r.bytes);
    }
  });

  it('random block layouts: 1..13 rows of every kind mix, adjacent and scattered full rows, all-rows blocks, several blocks and layers', () => {
    const rng = new Rng(10);
    const int = (n: number): number => Math.floor(rng.next() * n);
    const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256));
    for (let c = 0; c < 300; c++) {
      const layers: ForwardProof['layers'] = [];
      for (let l = 0, nl = 1 + int(3); l < nl; l++) {
        const blocks: PatternBlock[] = [];
        for (let bi = 0, nb = int(4); bi < nb; bi++) {
          const n = 1 + int(13), dim = 1 + int(6);
          const all = int(4) === 0;
          // One backing buffer: full rows are views of it, adjacent unless this block scatters them.
          const scatter = int(2) === 0;
          const back = rng.f32(2 * n * dim);
          const kinds = Uint8Array.from({ length: n }, () => int(3));
          const payload = Array.from(kinds, (k, t) => (k === RowKind.Full ? back.subarray((scatter ? 2 * t : t) * dim, ((scatter ? 2 * t : t) + 1) * dim) : k === RowKind.Delta ? bytes(1 + int(9)) : null));
          blocks.push({ tensor: int(5), dim, all, ids: Uint32Array.from({ length: n }, (_, t) => t * 3 + 1), kinds, payload, hashes: bytes(32 * int(4)) });
        }
        layers.push({ op: 'hopfield', stages: Array.from({ length: int(3) }, () => Uint32Array.from({ length: int(5) }, () => int(1000))), blocks });
      }
      const rows = 1 + int(3), cols = 1 + int(4);
      const p: ForwardProof = {
        kind: 'forward', ghost: bytes(32), firstLayer: int(3),
        input: int(2) ? { kind: 'f32', rows: 2, cols: 3, data: rng.f32(6) } : { kind: 'ids', ids: Uint32Array.from({ length: int(6) }, () => int(300)) },
        layers, output: { rows, cols, data: rng.f32(rows * cols) },
      };
      same(p);
    }
  });

  it('into: the proof is written into the caller\'s array of the size asked for (the same bytes); another size is refused', async () => {
    const rng = new Rng(14);
    const { model } = twoLayerModel(rng);
    const x = rng.f32(2 * 16);
    const plain = await model.prove(x);
    const backing = new ArrayBuffer(plain.bytes.length + 100);
    new Uint8Array(backing).fill(0xee);
    let asked = -1;
    const into = (size: number): Uint8Array => {
      asked = size;
      return new Uint8Array(backing, 0, size);
    };
    const r = await model.prove(x, { into });
    expect(asked).toBe(plain.bytes.length);
    expect(r.bytes.buffer).toBe(backing);
    expect(hex(r.bytes)).toBe(hex(plain.bytes));
    expect(() => encodeProof(plain.proof, { into: (n) => new Uint8Array(n + 1) })).toThrow(InvalidArgumentError);
    expect(() => encodeProof(plain.proof, { into: () => [] as unknown as Uint8Array })).toThrow(InvalidArgumentError);
    await expect(model.prove(x, { into: 5 as unknown as () => Uint8Array })).rejects.toThrow(InvalidArgumentError);
  });

  it('a step proof whose state blocks mix coded and uncoded rows decodes and re-encodes to the same bytes', async () => {
    const rng = new Rng(11);
    const clf = new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(30 * 6), 6), values: SparseTensor.fromArray(rng.f32(30 * 3), 3), k: 2 })], {
      training: { loss: 'cross-entropy', lr: 0.05 },
    });
    const mirror = new PatternCache();
    const batch = { input: rng.f32(3 * 6), targets: [0, 1, 2] };
    await clf.proveTrainStep(batch, { cache: mirror });
    const r = await clf.proveTrainStep(batch, { cache: mirror });
    const back = decodeProof(r.bytes) as StepProof;
    same(back, r.bytes);
  });
});

describe('ByteWriter: exact size', () => {
  const internal = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      expect(e).toBeInstanceOf(GhostTensorError);
      return `${(e as GhostTensorError).code}: ${(e as Error).message}`;
    }
    return 'NO ERROR';
  };

  it('writes in place and hands out the one array, without a copy, when the size is right', () => {
    const w = new ByteWriter(15);
    w.u8(0xab).u16(0x1234).u32(0xdeadbeef).u64(2 ** 40 + 7);
    const out = w.finish();
    expect(hex(out)).toBe('ab3412efbeadde0700000000010000');
    expect(out.buffer.byteLength).toBe(15);
    expect(new ByteWriter(0).finish().length).toBe(0);
  });

  it('a write past the size throws ERR_GT_INTERNAL at that write; finish() before the size is reached throws too', () => {
    const over = new ByteWriter(6).u32(1);
    expect(internal(() => over.u32(2))).toMatch(/^ERR_GT_INTERNAL: ByteWriter: a write of 4 bytes at offset 4 passes the exact size 6/);
    expect(internal(() => new ByteWriter(3).bytes(new Uint8Array(4)))).toMatch(/^ERR_GT_INTERNAL: .*exact size 3/);
    expect(internal(() => new ByteWriter(8).f32s(new Float32Array(3)))).toMatch(/^ERR_GT_INTERNAL/);
    const short = new ByteWriter(9).f64(1);
    expect(internal(() => short.finish())).toMatch(/^ERR_GT_INTERNAL: ByteWriter: 8 bytes written of the exact size 9/);
    // The growing writer still grows.
    const g = new ByteWriter();
    for (let i = 0; i < 1000; i++) g.u32(i);
    expect(g.finish().length).toBe(4000);
  });

  it('a size that is not a non-negative safe integer is refused', () => {
    for (const bad of [-1, 1.5, NaN, Infinity, 2 ** 53]) expect(() => new ByteWriter(bad)).toThrow(InvalidArgumentError);
  });

  it('ByteCounter counts what a growing writer writes; writeExact gives the growing writer\'s bytes; a pass that writes otherwise the second time is an internal error', () => {
    const rng = new Rng(12);
    const ops: ((w: ByteWriter) => void)[] = [
      (w) => w.u8(7), (w) => w.u16(700), (w) => w.u32(7e6), (w) => w.u64(7e12), (w) => w.f32(0.7), (w) => w.f64(-0.7),
      (w) => w.bytes(Uint8Array.of(1, 2, 3)), (w) => w.f32s(Float32Array.of(1, 2)), (w) => w.f64s(Float64Array.of(1, 2, 3)), (w) => w.u32s(Uint32Array.of(9)),
    ];
    for (let c = 0; c < 50; c++) {
      const seq = Array.from({ length: Math.floor(rng.next() * 40) }, () => ops[Math.floor(rng.next() * ops.length)]!);
      const write = (w: ByteWriter): void => seq.forEach((op) => op(w));
      const grow = new ByteWriter(), count = new ByteCounter();
      write(grow);
      write(count);
      expect(count.length).toBe(grow.length);
      expect(hex(writeExact(write))).toBe(hex(grow.finish()));
    }
    let pass = 0;
    expect(internal(() => writeExact((w) => (pass++ === 0 ? w.u32(1) : w.u32(1).u8(2))))).toMatch(/^ERR_GT_INTERNAL: .*passes the exact size 4/);
    pass = 0;
    expect(internal(() => writeExact((w) => (pass++ === 0 ? w.u32(1) : w.u16(1))))).toMatch(/^ERR_GT_INTERNAL: .*2 bytes written of the exact size 4/);
    expect(internal(() => new ByteCounter().u8(1).finish())).toMatch(/^ERR_GT_INTERNAL: ByteCounter/);
  });
});

describe('proof lists (the server\'s /updates, /train and /train-step answers)', () => {
  it('proofListParts are encodeProofList\'s bytes in order, with the proofs themselves as parts (not copied)', () => {
    const rng = new Rng(13);
    const reference = (first: number, proofs: Uint8Array[]): Uint8Array => {
      const w = new ByteWriter().u64(first).u32(proofs.length);
      for (const p of proofs) w.u32(p.length).bytes(p);
      return w.finish();
    };
    for (const count of [0, 1, 3]) {
      const proofs = Array.from({ length: count }, (_, i) => Uint8Array.from({ length: 5 + 40 * i }, () => Math.floor(rng.next() * 256)));
      const first = 2 ** 40 + count;
      const parts = proofListParts(first, proofs);
      const joined = Buffer.concat(parts);
      expect(hex(joined)).toBe(hex(reference(first, proofs)));
      expect(hex(encodeProofList(first, proofs))).toBe(hex(joined));
      for (const p of proofs) expect(parts).toContain(p);
      expect(decodeProofList(joined).proofs.map(hex)).toEqual(proofs.map(hex));
    }
  });
});
