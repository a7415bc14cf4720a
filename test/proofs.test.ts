/**
 * Ghost files and Ghost proofs end to end: a native prover, the TypeScript verifier
 * (no addon), the binary format, the pattern cache and deltas, update proofs and
 * save / load. Every tampering must fail with its typed reason.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  Embedding,
  FormatError,
  HopfieldLookup,
  Model,
  PatternCache,
  ProductKeyIndex,
  SparseAdam,
  SparseSGD,
  SparseTensor,
  decodeGhost,
  decodeProof,
  encodeGhost,
  encodeProof,
  pinGhost,
  verifyForward,
  verifyUpdate,
  type ForwardProof,
  type PinnedGhost,
  type UpdateProof,
} from '../lib/index.js';
import { cmix, csimilarity, csoftmax, cstate } from '../lib/verify/canonical.js';
import { withRoot } from '../lib/verify/ghost-file.js';
import { RowKind } from '../lib/verify/proof-format.js';
import { twoLayerModel } from './helpers/models.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** A deep copy of a forward proof through its bytes (the tests then mutate it). */
const clone = <T extends ForwardProof | UpdateProof>(p: T): T => decodeProof(encodeProof(p)) as T;


describe('Ghost file', () => {
  it('encodes canonically, decodes back, and identifies the model by its digest', async () => {
    const { model } = twoLayerModel(new Rng(1));
    const g = await model.ghost();
    expect(encodeGhost(decodeGhost(g.bytes))).toEqual(g.bytes);
    expect(decodeGhost(g.bytes).layers).toEqual(model.manifest().layers);
    expect(g.manifest.tensors.map((t) => [t.name, t.n, t.dim])).toEqual([
      ['l0.keys', 300, 16],
      ['l0.values', 300, 16],
      ['l1.keys1', 12, 8],
      ['l1.keys2', 12, 8],
      ['l1.values', 144, 5],
    ]);
    // Any change of a root changes the digest.
    const other = await pinGhost(withRoot(g.manifest, 1, new Uint8Array(32)));
    expect(other.digest).not.toEqual(g.digest);
  });

  it('refuses every truncation and never crashes on byte flips', async () => {
    const { model } = twoLayerModel(new Rng(2));
    const g = await model.ghost();
    for (let cut = 0; cut < g.bytes.length; cut++) {
      expect(() => decodeGhost(g.bytes.subarray(0, cut))).toThrow(FormatError);
    }
    expect(() => decodeGhost(Uint8Array.from([...g.bytes, 0]))).toThrow(/TRAILING_BYTES/);
    const rng = new Rng(3);
    let refused = 0;
    for (let i = 0; i < 2000; i++) {
      const b = g.bytes.slice();
      b[rng.int(0, b.length - 1)]! ^= 1 << rng.int(0, 7);
      try {
        const m = decodeGhost(b);
        // A flip that still decodes is another model (a flipped root, beta, ...): another digest.
        expect((await pinGhost(m)).digest).not.toEqual(g.digest);
      } catch (err) {
        expect(err).toBeInstanceOf(FormatError);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(100);
  });

  it('checks references and dimensions', async () => {
    const { model } = twoLayerModel(new Rng(4));
    await model.commit();
    const m = model.manifest();
    expect(() => encodeGhost({ ...m, layers: [{ ...(m.layers[0] as object), values: 9 } as never] })).toThrow(/does not exist/);
    expect(() => encodeGhost({ ...m, layers: [m.layers[1]!, m.layers[0]!] })).toThrow(/takes 16 inputs but the layer before gives 5/);
    expect(() => encodeGhost({ ...m, tensors: m.tensors.map((t) => ({ ...t, name: 'same' })) })).toThrow(/appears twice/);
  });
});

describe('forward proofs', () => {
  const rng = new Rng(10);
  const { model, l0 } = twoLayerModel(rng);
  const B = 4;
  const x = rng.f32(B * 16);
  let ghost: PinnedGhost;
  let honest: ForwardProof;
  let bytes: Uint8Array;
  let output: Float32Array;

  it('an honest two-layer proof verifies, and the verified output is the prover\'s', async () => {
    ghost = await model.ghost();
    ({ proof: honest, bytes, output } = await model.prove(x));
    const v = await verifyForward(ghost, bytes);
    expect(v.rows).toBe(B);
    expect(v.cols).toBe(5);
    expect(Buffer.from(v.output.buffer).equals(Buffer.from(output.buffer))).toBe(true);
    // The canonical output is the fast forward's up to f32 rounding.
    const fast = await model.forward(x);
    for (let i = 0; i < fast.length; i++) expect(Math.abs(fast[i]! - output[i]!)).toBeLessThan(1e-4 * (1 + Math.abs(fast[i]!)));
    // The encoding round-trips exactly.
    expect(encodeProof(decodeProof(bytes))).toEqual(bytes);
  });

  it('the first layer recomputed by an independent plain loop gives the same bits', async () => {
    const one = await model.prove(x, { layers: 1 });
    const K = l0.keys as SparseTensor, V = l0.values;
    const st = one.proof.layers[0]!.stages;
    for (let b = 0; b < B; b++) {
      let q = cstate(x, b * 16, 16, true);
      for (let s = 0; s < 2; s++) {
        const ids = st[s]!.subarray(b * 8, (b + 1) * 8);
        const rows = (s === 1 ? V : K).gather(ids);
        const keys = K.gather(ids);
        const sc = Float64Array.from(ids, (_, i) => csimilarity('cosine', q, keys, i * 16, 16));
        q = cmix(csoftmax(sc, 4), rows, Array.from(ids, (_, i) => i * 16), 16);
      }
      expect(Array.from(Float32Array.from(q))).toEqual(Array.from(one.output.subarray(b * 16, (b + 1) * 16)));
    }
    // A one-layer proof verifies on its own, and so does the second layer started from the first's output.
    await verifyForward(ghost, one.bytes);
    const second = await model.prove(one.output, { firstLayer: 1 });
    expect((await verifyForward(ghost, second.bytes)).output).toEqual(output);
  });

  it('every tampering fails with its reason', async () => {
    const cases: [string, (p: ForwardProof) => void, string][] = [
      ['a pattern byte', (p) => { (p.layers[0]!.blocks[1]!.payload[0] as Float32Array)[3]! += 2 ** -20; }, 'ROOT_MISMATCH'],
      ['a sibling hash', (p) => { p.layers[0]!.blocks[0]!.hashes[5]! ^= 1; }, 'ROOT_MISMATCH'],
      ['a dropped hash', (p) => { p.layers[0]!.blocks[0]!.hashes = p.layers[0]!.blocks[0]!.hashes.slice(32); }, 'PROOF_LENGTH'],
      ['an id in a block', (p) => { p.layers[0]!.blocks[1]!.ids[0]! ^= 1; }, 'BLOCK_IDS'],
      ['a selected id (block unchanged)', (p) => { p.layers[0]!.stages[1]![0] = p.layers[0]!.stages[1]![0] === 0 ? 1 : 0; }, 'BLOCK_IDS'],
      ['a repeated selected id', (p) => { p.layers[0]!.stages[0]![1] = p.layers[0]!.stages[0]![0]!; }, 'DUPLICATE_ID'],
      ['the rank order of the product-key selection', (p) => { const s = p.layers[1]!.stages[0]!; [s[0], s[1]] = [s[1]!, s[0]!]; }, 'SELECTION_MISMATCH'],
      ['the output', (p) => { p.output.data[2]! += 1e-6; }, 'OUTPUT_MISMATCH'],
      ['the input', (p) => { if (p.input.kind === 'f32') p.input.data[0]! += 1e-3; }, 'OUTPUT_MISMATCH'],
      ['the Ghost digest', (p) => { p.ghost[0]! ^= 1; }, 'GHOST_MISMATCH'],
      ['the layer op', (p) => { p.layers[1]!.op = 'embedding'; }, 'LAYER_MISMATCH'],
      ['the stage count', (p) => { p.layers[0]!.stages.pop(); }, 'SHAPE'],
      ['an extra block', (p) => { p.layers[0]!.blocks.push(p.layers[0]!.blocks[0]!); }, 'BLOCK_IDS'],
      ['the first layer index', (p) => { p.firstLayer = 1; }, 'LAYER_MISMATCH'],
    ];
    for (const [what, mutate, want] of cases) {
      const p = clone(honest);
      mutate(p);
      expect(`${what}: ${await reason(verifyForward(ghost, p))}`).toBe(`${what}: ${want}`);
      expect(`${what} (bytes): ${await reason(verifyForward(ghost, encodeProof(p)))}`).toBe(`${what} (bytes): ${want}`);
    }
    // A Ghost file with another root for one tensor: the pinned digest no longer matches.
    const otherGhost = await pinGhost(withRoot(ghost.manifest, 4, new Uint8Array(32).fill(7)));
    expect(await reason(verifyForward(otherGhost, bytes))).toBe('GHOST_MISMATCH');
  });

  it('product keys: a swapped-in pattern that scores high, with a valid multiproof and a matching output, is caught', async () => {
    const one = await model.prove(await model.prove(x, { layers: 1 }).then((r) => r.output), { firstLayer: 1 });
    const l1 = model.layers[1] as HopfieldLookup;
    const pk = l1.keys as ProductKeyIndex;
    const p = clone(one.proof);
    const st = p.layers[0]!.stages[0]!;
    // Replace input 0's last-ranked slot by the best slot not selected (by the same score), and
    // rebuild everything a cheating prover can: the values block with honest rows and multiproof, and the output.
    const q0 = cstate(one.proof.input.kind === 'f32' ? one.proof.input.data : new Float32Array(0), 0, 16, false);
    const t1 = pk.keys1.gather(Uint32Array.from({ length: 12 }, (_, i) => i)), t2 = pk.keys2.gather(Uint32Array.from({ length: 12 }, (_, i) => i));
    const score = (slot: number): number => {
      let s1 = 0, s2 = 0;
      for (let j = 0; j < 8; j++) s1 = s1 + q0[j]! * t1[Math.floor(slot / 12) * 8 + j]!;
      for (let j = 0; j < 8; j++) s2 = s2 + q0[8 + j]! * t2[(slot % 12) * 8 + j]!;
      return s1 + s2;
    };
    const chosen = new Set(st.subarray(0, 6));
    let swap = -1;
    for (let s = 0; s < 144; s++) if (!chosen.has(s) && (swap < 0 || score(s) > score(swap))) swap = s;
    st[5] = swap;
    const need = Uint32Array.from(new Set(st)).sort();
    const vb = p.layers[0]!.blocks[2]!;
    const pr = l1.values.prove(need);
    vb.ids = need;
    vb.kinds = new Uint8Array(need.length);
    vb.payload = Array.from(need, (_, i) => pr.leaves.slice(i * 5, (i + 1) * 5));
    vb.hashes = pr.proof;
    for (let b = 0; b < p.output.rows; b++) {
      const ids = st.subarray(b * 6, (b + 1) * 6);
      const s = Float64Array.from(ids, score);
      const qb = cstate(p.input.kind === 'f32' ? p.input.data : new Float32Array(0), b * 16, 16, false);
      const sc = b === 0 ? s : Float64Array.from(ids, (id) => {
        let s1 = 0, s2 = 0;
        for (let j = 0; j < 8; j++) s1 = s1 + qb[j]! * t1[Math.floor(id / 12) * 8 + j]!;
        for (let j = 0; j < 8; j++) s2 = s2 + qb[8 + j]! * t2[(id % 12) * 8 + j]!;
        return s1 + s2;
      });
      const y = cmix(csoftmax(sc, l1.beta), l1.values.gather(ids), Array.from(ids, (_, i) => i * 5), 5);
      p.output.data.set(Float32Array.from(y), b * 5);
    }
    expect(await reason(verifyForward(ghost, p))).toBe('SELECTION_MISMATCH');
  });

  it('exact retrieval: the same swap is accepted, because its selection is not proven (documented)', async () => {
    const p = clone((await model.prove(x, { layers: 1 })).proof);
    const l = model.layers[0] as HopfieldLookup;
    const K = l.keys as SparseTensor;
    // Input 0, final stage: swap its last id for one outside the top-k; rebuild blocks and output honestly.
    const st = p.layers[0]!.stages[1]!;
    let other = 0;
    while (st.subarray(0, 8).includes(other)) other++;
    st[7] = other;
    const keyIds = Uint32Array.from(new Set([...p.layers[0]!.stages[0]!, ...st])).sort();
    const valIds = Uint32Array.from(new Set(st)).sort();
    const kp = K.prove(keyIds), vp = l.values.prove(valIds);
    p.layers[0]!.blocks = [
      { tensor: 0, dim: 16, all: false, ids: keyIds, kinds: new Uint8Array(keyIds.length), payload: Array.from(keyIds, (_, i) => kp.leaves.slice(i * 16, (i + 1) * 16)), hashes: kp.proof },
      { tensor: 1, dim: 16, all: false, ids: valIds, kinds: new Uint8Array(valIds.length), payload: Array.from(valIds, (_, i) => vp.leaves.slice(i * 16, (i + 1) * 16)), hashes: vp.proof },
    ];
    const inp = p.input.kind === 'f32' ? p.input.data : new Float32Array(0);
    for (let b = 0; b < p.output.rows; b++) {
      let q = cstate(inp, b * 16, 16, true);
      for (let s = 0; s < 2; s++) {
        const ids = p.layers[0]!.stages[s]!.subarray(b * 8, (b + 1) * 8);
        const keys = K.gather(ids);
        const sc = Float64Array.from(ids, (_, i) => csimilarity('cosine', q, keys, i * 16, 16));
        q = cmix(csoftmax(sc, 4), (s === 1 ? l.values : K).gather(ids), Array.from(ids, (_, i) => i * 16), 16);
      }
      p.output.data.set(Float32Array.from(q), b * 16);
    }
    expect(await reason(verifyForward(ghost, p))).toBe('ACCEPTED');
  });

  it('held patterns travel as ids, changed ones as deltas; a verifier without them says NOT_HELD', async () => {
    const proverMirror = new PatternCache(), verifierCache = new PatternCache();
    const first = await model.prove(x, { cache: proverMirror });
    await verifyForward(ghost, first.bytes, { cache: verifierCache });
    expect(verifierCache.size).toBe(proverMirror.size);
    const again = await model.prove(x, { cache: proverMirror });
    expect(again.bytes.length).toBeLessThan(first.bytes.length / 2);
    expect(again.proof.layers.every((l) => l.blocks.every((b) => b.kinds.every((k) => k === RowKind.Held)))).toBe(true);
    await verifyForward(ghost, again.bytes, { cache: verifierCache });
    expect(await reason(verifyForward(ghost, again.bytes))).toBe('NOT_HELD');
    // A verifier whose own copy went bad computes another output: refused, never accepted.
    const stale = new PatternCache();
    await verifyForward(ghost, first.bytes, { cache: stale });
    const row = stale.get(1, again.proof.layers[0]!.blocks[1]!.ids[0]!)!.row;
    row[0]! += 1;
    expect(await reason(verifyForward(ghost, again.bytes, { cache: stale }))).toBe('OUTPUT_MISMATCH');
    // After a training step the changed rows travel as deltas, with Merkle paths against the new root.
    const l0 = model.layers[0] as HopfieldLookup;
    const revealed = again.proof.layers[0]!.blocks[1]!.ids;
    const opt = new SparseSGD([l0.values], { lr: 1e-3 });
    opt.step([{ tensor: l0.values, ids: revealed, grads: rng.f32(revealed.length * 16) }]);
    opt.detach();
    const ghost2 = await model.ghost();
    const third = await model.prove(x, { cache: proverMirror });
    const vb = third.proof.layers[0]!.blocks[1]!;
    expect(Array.from(vb.kinds).every((k) => k === RowKind.Delta)).toBe(true);
    expect(vb.hashes.length).toBeGreaterThan(0);
    expect(third.bytes.length).toBeLessThan(first.bytes.length);
    expect(await reason(verifyForward(ghost, third.bytes, { cache: verifierCache.clone() }))).toBe('GHOST_MISMATCH');
    await verifyForward(ghost2, third.bytes, { cache: verifierCache });
    expect(await reason(verifyForward(ghost2, third.bytes))).toBe('NOT_HELD');
  });
});

describe('update proofs', () => {
  for (const kind of ['adam', 'sgd'] as const) {
    it(`${kind}: a chain of proved steps verifies, the verifier's Ghost file follows the model's, tampering fails`, async () => {
      const rng = new Rng(kind === 'adam' ? 20 : 21);
      const d = 8, n = 100;
      const table = SparseTensor.fromArray(rng.f32(n * d), d);
      const layer = new HopfieldLookup({ keys: table, values: SparseTensor.fromArray(rng.f32(n * 3), 3), k: 5 });
      const model = new Model([layer]);
      let pinned = await model.ghost();
      const opt = kind === 'adam' ? new SparseAdam([table, layer.values], { lr: 0.01, weightDecay: 0.1 }) : new SparseSGD([table, layer.values], { lr: 0.1, weightDecay: 0.01 });
      const proverMirror = new PatternCache(), verifierCache = new PatternCache();
      for (let step = 0; step < 6; step++) {
        const x = rng.f32(2 * d);
        const f = await layer.forward(x);
        const g = await layer.backward(f.ctx, rng.f32(2 * 3));
        const proofs = await model.proveStep(opt, g.grads, { cache: proverMirror });
        expect(proofs.length).toBe(2);
        for (const pr of proofs) {
          if (step === 3) {
            const cases: [string, (p: UpdateProof) => void, string][] = [
              // (a sign flip: Adam's first step of a row does not depend on the gradient's size)
              ['a gradient', (p) => { p.grads[0] = p.grads[0]! >= 0 ? -1 : 1; }, 'UPDATE_MISMATCH'],
              ['the learning rate', (p) => { p.optimizer.lr = Math.fround(p.optimizer.lr * 1.01); }, 'UPDATE_MISMATCH'],
              ['the new root', (p) => { p.newRoot[0]! ^= 1; }, 'UPDATE_MISMATCH'],
              ['a row step count', (p) => { p.state.steps[0]! += 1; }, kind === 'adam' ? 'UPDATE_MISMATCH' : 'ACCEPTED'],
              ['an old row', (p) => { p.block.kinds[0] = RowKind.Full; p.block.payload[0] = new Float32Array(p.block.dim); }, 'ROOT_MISMATCH'],
              ['the Ghost digest', (p) => { p.ghost[3]! ^= 4; }, 'GHOST_MISMATCH'],
            ];
            for (const [what, mutate, want] of cases) {
              const p = clone(pr.proof);
              mutate(p);
              expect(`${what}: ${await reason(verifyUpdate(pinned, encodeProof(p), { cache: verifierCache.clone() }))}`).toBe(`${what}: ${want}`);
            }
          }
          const v = await verifyUpdate(pinned, pr.bytes, { cache: verifierCache });
          pinned = v.ghost;
        }
        // The verifier's Ghost file after the chain equals the model's own.
        expect(pinned.digest).toEqual((await model.ghost()).digest);
      }
      expect(verifierCache.size).toBe(proverMirror.size);
    });
  }
});

describe('other layer kinds', () => {
  it('an HNSW layer after an Embedding: proves, verifies, and its Ghost file records the graph parameters', async () => {
    const rng = new Rng(40);
    const d = 12;
    const keys = SparseTensor.fromArray(rng.f32(500 * d), d);
    await keys.buildHnsw({ metric: 'ip', M: 8, efConstruction: 64 });
    const model = new Model([
      new Embedding(SparseTensor.fromArray(rng.f32(20 * d), d)),
      new HopfieldLookup({ keys, values: keys, k: 10, index: 'hnsw', ef: 40, beta: 1.5 }),
    ]);
    const ghost = await model.ghost();
    expect(ghost.manifest.layers[1]).toMatchObject({ op: 'hopfield', index: { kind: 'hnsw', M: 8, efConstruction: 64, ef: 40 }, keys: [1], values: 1 });
    const { output, bytes, proof } = await model.prove([4, 19, 4]);
    expect(proof.layers[1]!.blocks.length).toBe(1); // keys and values are one tensor: one block
    expect((await verifyForward(ghost, bytes)).output).toEqual(output);
    const root = mkdtempSync(join(tmpdir(), 'gt-hnsw-'));
    dirs.push(root);
    await model.save(join(root, 'm'));
    const back = await Model.load(join(root, 'm'), { expectDigest: ghost.digest });
    expect(((back.model.layers[1] as HopfieldLookup).keys as SparseTensor).hnsw).not.toBeNull();
    expect((await verifyForward(back.ghost, (await back.model.prove([1, 2])).bytes)).rows).toBe(2);
    back.model.close();
  });

  it('two layers sharing a tensor, and product keys whose two tables are one tensor, with caches', async () => {
    const rng = new Rng(42);
    const t = SparseTensor.fromArray(rng.f32(64 * 8), 8);
    const table = SparseTensor.fromArray(rng.f32(8 * 4), 4);
    const pk = ProductKeyIndex.fromTables(table, table);
    const model = new Model([
      new HopfieldLookup({ keys: t, values: t, k: 5 }),
      new HopfieldLookup({ keys: t, values: t, k: 3, updateSteps: 2 }),
      new HopfieldLookup({ keys: pk, values: t, k: 4 }),
    ]);
    const ghost = await model.ghost();
    expect(ghost.manifest.tensors.length).toBe(2);
    const mirror = new PatternCache(), held = new PatternCache();
    for (let i = 0; i < 3; i++) {
      const x = rng.f32(2 * 8);
      const { bytes, output } = await model.prove(x, { cache: mirror });
      expect((await verifyForward(ghost, bytes, { cache: held })).output).toEqual(output);
    }
    expect(held.size).toBe(mirror.size);
  });

  it('rejects bad arguments with typed errors', async () => {
    const rng = new Rng(41);
    const t = SparseTensor.fromArray(rng.f32(10 * 4), 4);
    const layer = new HopfieldLookup({ keys: t, values: t, k: 2 });
    const model = new Model([layer]);
    await expect(model.prove(new Float32Array(3))).rejects.toThrow(/multiple of 4/);
    await expect(model.prove(Float32Array.of(1, 2, NaN, 4))).rejects.toThrow(/not finite/);
    await expect(model.prove(new Float32Array(4), { firstLayer: 1 })).rejects.toThrow(/firstLayer/);
    expect(() => new Model([layer, new Embedding(t)])).toThrow(/only be the first layer/);
    expect(() => new Model([new HopfieldLookup({ keys: t, values: t, k: 2, mode: 'dense' })])).toThrow(/sparse layers/);
    const twice = { tensor: t, ids: [0], grads: new Float32Array(4) };
    await expect(model.proveStep(new SparseSGD([t]), [twice, twice])).rejects.toThrow(/appears twice/);
    const other = new SparseAdam([SparseTensor.fromArray(rng.f32(8), 4)]);
    await expect(model.proveStep(other, [{ tensor: SparseTensor.fromArray(rng.f32(8), 4), ids: [0], grads: new Float32Array(4) }])).rejects.toThrow(/not one of the model's tensors/);
  });
});

describe('save and load', () => {
  it('round trip: same Ghost digest and the same proved outputs; damage is refused', async () => {
    const rng = new Rng(30);
    const d = 8;
    const emb = new Embedding(SparseTensor.fromArray(rng.f32(50 * d), d));
    const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(64 * d), d), values: SparseTensor.fromArray(rng.f32(64 * 4), 4), k: 4, similarity: 'l2' });
    const model = new Model([emb, hop]);
    const root = mkdtempSync(join(tmpdir(), 'gt-model-'));
    dirs.push(root);
    const dir = join(root, 'm');
    const saved = await model.save(dir);
    await expect(model.save(dir)).rejects.toThrow(/exists/);
    const { model: back, ghost } = await Model.load(dir, { expectDigest: saved.digest });
    expect(ghost.digest).toEqual(saved.digest);
    const ids = [3, 7, 3, 49];
    const a = await model.prove(ids), b = await back.prove(ids);
    expect(b.bytes).toEqual(a.bytes);
    expect((await verifyForward(saved, b.bytes)).output).toEqual(a.output);
    back.close(); // releases the files' writer locks
    // A flipped value byte (row 10 of l1.values, dim 4: the values region starts at
    // offset 8192, docs/storage.md), a truncated tensor file, a damaged Ghost file.
    const tf = join(dir, 'tensors', '2.gtt');
    const good = readFileSync(tf);
    const flipped = Buffer.from(good);
    flipped[8192 + 10 * 16 + 1]! ^= 0x10;
    writeFileSync(tf, flipped);
    expect(await reason(Model.load(dir))).toBe('ROOT_MISMATCH');
    writeFileSync(tf, good.subarray(0, good.length - 4));
    expect(await reason(Model.load(dir))).toBe('TRUNCATED');
    writeFileSync(tf, good);
    const gf = join(dir, 'ghost.bin');
    const g = readFileSync(gf);
    const gb = Buffer.from(g);
    gb[gb.length - 40]! ^= 1; // inside the last tensor's root or a layer field
    writeFileSync(gf, gb);
    expect(['ROOT_MISMATCH', 'BAD_VALUE', 'LIMIT']).toContain(await reason(Model.load(dir)));
    writeFileSync(gf, g);
    expect(await reason(Model.load(dir, { expectDigest: new Uint8Array(32) }))).toBe('GHOST_MISMATCH');
    const again = await Model.load(dir, { readOnly: true });
    expect(again.ghost.digest).toEqual(saved.digest);
    again.model.close();
  });
});
