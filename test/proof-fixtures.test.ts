/**
 * Proofs made by an earlier build, kept as bytes in test/fixtures/proofs/: each must
 * still verify, and the same model rebuilt from the same seed must still produce the
 * same Ghost file and the same proof, byte for byte. A model directory saved by that
 * build (test/fixtures/model-v1/) must still load to the same Ghost file and prove the
 * same bytes. These guard refactors that must not change the formats or the arithmetic.
 *
 * `GT_WRITE_FIXTURES=1 npx vitest run test/proof-fixtures.test.ts` rewrites the proofs
 * and Ghost files (and saves the model directory only when it is missing): do that only
 * on purpose (a new kind, a format change), never to make this test pass.
 */
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { Embedding, HopfieldLookup, Linear, Model, PositionEmbedding, ProductKeyMemory, RMSNorm, Residual, Projection, SparseAdam, SparseSGD, SparseSelfAttention, SparseTensor } from '../lib/index.js';
import { decodeProof, pinGhost, verifyForward, verifyUpdate, type ForwardProof, type UpdateProof } from '../lib/verify/index.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';

const WRITE = process.env.GT_WRITE_FIXTURES === '1';
const here = fileURLToPath(new URL('.', import.meta.url));
const proofDir = join(here, 'fixtures', 'proofs');
const modelDir = join(here, 'fixtures', 'model-v1');
const scratch = mkdtempSync(join(tmpdir(), 'gt-fixtures-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Each fixture model, rebuilt deterministically from its seed, with the input it proves. */
const builders: Record<string, () => Promise<{ model: Model; input: Float32Array | number[]; span?: { firstLayer: number; layers: number } }>> = {
  // Exact cosine retrieval (normalised, 2 update steps) then product keys.
  'exact-pk': async () => {
    const rng = new Rng(11);
    const { model } = twoLayerModel(rng);
    return { model, input: rng.f32(3 * 16) };
  },
  // The second layer alone (a span proof).
  'exact-pk-span': async () => {
    const rng = new Rng(11);
    const { model } = twoLayerModel(rng);
    rng.f32(3 * 16);
    return { model, input: rng.f32(2 * 16), span: { firstLayer: 1, layers: 1 } };
  },
  // HNSW with L2 then inner-product exact retrieval.
  hnsw: async () => {
    const rng = new Rng(12);
    const d = 8;
    const keys = SparseTensor.fromArray(rng.f32(200 * d), d);
    await keys.buildHnsw({ metric: 'l2', M: 8, efConstruction: 40, seed: 5 });
    const l0 = new HopfieldLookup({ keys, values: SparseTensor.fromArray(rng.f32(200 * 6), 6), k: 5, similarity: 'l2', index: 'hnsw', ef: 30 });
    const l1 = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(50 * 6), 6), values: SparseTensor.fromArray(rng.f32(50 * 4), 4), k: 3, similarity: 'ip', beta: 3 });
    return { model: new Model([l0, l1]), input: rng.f32(2 * d) };
  },
  // Embedding, attention with every projection (a sparse key projection), exact retrieval.
  'embedding-attention': async () => {
    const rng = new Rng(13);
    const d = 12, D = 8;
    const proj = (m: number, w: number, k?: number) => new Projection({ weight: SparseTensor.fromArray(rng.f32(m * w, 0.5), w), ...(k === undefined ? {} : { k }) });
    const emb = new Embedding(SparseTensor.fromArray(rng.f32(30 * d), d));
    const attn = new SparseSelfAttention({ heads: 2, k: 3, causal: true, query: proj(D, d), key: proj(D, d, 5), value: proj(D, d), output: proj(D, D) });
    const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(40 * D), D), values: SparseTensor.fromArray(rng.f32(40 * 3), 3), k: 4 });
    return { model: new Model([emb, attn, hop]), input: [3, 17, 3, 29, 0, 11] };
  },
  // Linear (top-5 of 8 columns, with a bias), RMSNorm, then exact retrieval.
  'linear-rmsnorm': async () => {
    const rng = new Rng(15);
    const lin = new Linear({ weight: SparseTensor.fromArray(rng.f32(8 * 6), 6), bias: SparseTensor.fromArray(rng.f32(8), 8), k: 5 });
    const norm = new RMSNorm({ gain: SparseTensor.fromArray(rng.f32(8), 8), eps: 1e-5 });
    const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(24 * 8), 8), values: SparseTensor.fromArray(rng.f32(24 * 3), 3), k: 3 });
    return { model: new Model([lin, norm, hop]), input: rng.f32(4 * 6) };
  },
  // A graph (Ghost format 2): embedding, an attention block and an MLP block (residual), a head.
  graph: async () => {
    const rng = new Rng(16);
    const d = 8;
    const w = (n: number, c: number) => SparseTensor.fromArray(rng.f32(n * c, 0.5), c);
    const model = new Model([
      new Embedding(w(16, d)),
      new Residual([new RMSNorm({ gain: w(1, d) }), new SparseSelfAttention({ heads: 2, k: 2, causal: true, query: new Projection({ weight: w(d, d) }), key: new Projection({ weight: w(d, d) }), value: new Projection({ weight: w(d, d) }) })]),
      new Residual([new RMSNorm({ gain: w(1, d) }), new Linear({ weight: w(2 * d, d), bias: w(1, 2 * d), k: 6 }), new Linear({ weight: w(d, 2 * d) })]),
      new Linear({ weight: w(16, d) }),
    ]);
    return { model, input: [5, 3, 11, 0, 7, 5] };
  },
  // Learned positions and a two-head product-key memory in a residual block.
  memory: async () => {
    const rng = new Rng(17);
    const d = 8;
    const w = (n: number, c: number) => SparseTensor.fromArray(rng.f32(n * c, 0.5), c);
    const model = new Model([
      new Embedding(w(16, d)),
      new PositionEmbedding(w(8, d)),
      new Residual([new RMSNorm({ gain: w(1, d) }), new ProductKeyMemory({ query: w(2 * 6, d), keys: [[w(7, 3), w(7, 3)], [w(7, 3), w(7, 3)]], values: w(49, d), k: 4 })]),
      new Linear({ weight: w(16, d) }),
    ]);
    return { model, input: [1, 9, 4, 4, 15] };
  },
  // Attention without projections after a retrieval layer (non-causal).
  'attention-bare': async () => {
    const rng = new Rng(14);
    const d = 6;
    const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(60 * d), d), values: SparseTensor.fromArray(rng.f32(60 * 8), 8), k: 4 });
    const attn = new SparseSelfAttention({ heads: 2, k: 2, causal: false });
    return { model: new Model([hop, attn]), input: rng.f32(5 * d) };
  },
};

function fixture(name: string, bytes: Uint8Array | null): Uint8Array {
  const p = join(proofDir, name);
  if (WRITE && bytes !== null) {
    mkdirSync(proofDir, { recursive: true });
    writeFileSync(p, bytes);
  }
  return new Uint8Array(readFileSync(p));
}

describe('proofs made by an earlier build', () => {
  for (const [name, build] of Object.entries(builders)) {
    it(`${name}: the Ghost file and the forward proof are the same bytes, and the kept proof verifies`, async () => {
      const { model, input, span } = await build();
      const ghost = await model.ghost();
      const keptGhost = fixture(`${name}.ghost.bin`, ghost.bytes);
      expect(Buffer.from(ghost.bytes).equals(Buffer.from(keptGhost))).toBe(true);
      const proved = await model.prove(input, span ?? {});
      const kept = fixture(`${name}.forward.bin`, proved.bytes);
      expect(Buffer.from(proved.bytes).equals(Buffer.from(kept))).toBe(true);
      // The kept bytes verify against the kept Ghost file, to the output they claim.
      const pinned = await pinGhost(keptGhost);
      const v = await verifyForward(pinned, kept);
      const claimed = (decodeProof(kept) as ForwardProof).output.data;
      expect(Buffer.from(v.output.buffer, v.output.byteOffset, v.output.byteLength).equals(Buffer.from(claimed.buffer, claimed.byteOffset, claimed.byteLength))).toBe(true);
    });
  }

  for (const kind of ['adam', 'sgd'] as const) {
    it(`update proofs (${kind}): the same bytes, and the kept ones verify in a chain`, async () => {
      const rng = new Rng(21);
      const { model, l0, l1 } = twoLayerModel(rng);
      const k1 = (l1.keys as { keys1: SparseTensor }).keys1;
      const opt = kind === 'adam' ? new SparseAdam([l0.values, k1], { lr: 0.01, weightDecay: 0.001 }) : new SparseSGD([l0.values, k1], { lr: 0.05 });
      const g0 = await model.ghost();
      const ids0 = [4, 9, 4, 250], ids1 = [1, 7];
      const grads = [
        { tensor: l0.values, ids: ids0, grads: rng.f32(ids0.length * 16) },
        { tensor: k1, ids: ids1, grads: rng.f32(ids1.length * 8) },
      ];
      const steps = [...(await model.proveStep(opt, grads)), ...(await model.proveStep(opt, [grads[0]!]))];
      let pinned = await pinGhost(fixture(`update-${kind}.ghost.bin`, g0.bytes));
      expect(Buffer.from(pinned.bytes).equals(Buffer.from(g0.bytes))).toBe(true);
      for (const [i, s] of steps.entries()) {
        const kept = fixture(`update-${kind}-${i}.bin`, s.bytes);
        expect(Buffer.from(s.bytes).equals(Buffer.from(kept))).toBe(true);
        const v = await verifyUpdate(pinned, kept);
        expect(Buffer.from(v.ghost.digest).equals(Buffer.from(pinned.digest))).toBe(false);
        const p = decodeProof(kept) as UpdateProof;
        expect(Buffer.from(v.ghost.manifest.tensors[p.tensor]!.root).equals(Buffer.from(p.newRoot))).toBe(true);
        pinned = v.ghost;
      }
      expect(Buffer.from(pinned.digest).equals(Buffer.from((await model.ghost()).digest))).toBe(true);
    });
  }

  it('a model directory saved by that build loads to the same Ghost file and proves the same bytes', async () => {
    const { model, input } = await builders['embedding-attention']!();
    if (WRITE && !existsSync(modelDir)) await model.save(modelDir, { optimizerState: true });
    expect(existsSync(join(modelDir, 'ghost.bin'))).toBe(true);
    const copy = join(scratch, 'model');
    cpSync(modelDir, copy, { recursive: true });
    const { model: loaded, ghost } = await Model.load(copy);
    try {
      expect(Buffer.from(ghost.digest).equals(Buffer.from((await model.ghost()).digest))).toBe(true);
      const kept = fixture('embedding-attention.forward.bin', null);
      const again = await loaded.prove(input);
      expect(Buffer.from(again.bytes).equals(Buffer.from(kept))).toBe(true);
    } finally {
      loaded.close();
    }
  });
});
