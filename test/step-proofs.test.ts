/**
 * Step proofs (docs/step-proofs.md): a model trained by proveTrainStep, each step
 * verified by verifyTrainStep from nothing but the pinned Ghost file and the proof; the
 * Ghost file's training rule; the optimizer-state tree; forgeries refused with their reason.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { Add, Embedding, HopfieldLookup, Model, PatternCache, PositionEmbedding, ProductKeyIndex, SparseAdam, SparseSGD, SparseTensor, decodeGhost, decodeProof, encodeGhost, encodeProof, languageModel, pinGhost, verifyTrainStep } from '../lib/index.js';
import type { StepProof } from '../lib/index.js';
import { loadHasher, rootOfLeaves } from '../lib/verify/merkle.js';
import { StateTree } from '../lib/model/train/step-state.js';
import { ccosPi, cscheduleFactor, stateRowBytes, zeroStateRoot } from '../lib/verify/training.js';
import { runCli } from './helpers/cli.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

/** A bigram model: logits of the next id = the table row of the current id (an embedding of width V). */
function bigram(rng: Rng, V: number, training: ConstructorParameters<typeof Model>[1] extends infer O ? O : never) {
  const table = SparseTensor.fromArray(rng.f32(V * V), V);
  return { table, model: new Model([new Embedding(table)], training) };
}

describe('step proofs', () => {
  it('zeroStateRoot and the sparse state tree agree with a full rebuild, and its multiproofs check', async () => {
    const h = await loadHasher();
    const rng = new Rng(3);
    for (const n of [1, 2, 3, 5, 8, 13, 64, 100]) {
      const d = 3, rb = stateRowBytes(d);
      const tree = new StateTree(h, n, d);
      expect(tree.root()).toEqual(zeroStateRoot(h, n, d));
      expect(tree.root()).toEqual(rootOfLeaves(h, new Uint8Array(n * rb), n));
      // Write some rows, compare with a rebuild over all leaves, and check a multiproof.
      const ids = Uint32Array.from(new Set(Array.from({ length: Math.min(n, 4) }, () => rng.int(0, n - 1)))).sort();
      const state = { m: rng.f32(ids.length * d), v: Float32Array.from(rng.f32(ids.length * d), Math.abs), steps: Uint32Array.from(ids, (i) => i + 1), marks: Float64Array.from(ids, (i) => -i / 8) };
      tree.set(ids, state);
      const all = new Uint8Array(n * rb);
      const leaves = tree.leaves(ids);
      ids.forEach((id, k) => all.set(leaves.subarray(k * rb, (k + 1) * rb), id * rb));
      expect(tree.root()).toEqual(rootOfLeaves(h, all, n));
      const { multiproofRoot } = await import('../lib/verify/merkle.js');
      expect(multiproofRoot(h, n, ids, leaves, tree.prove(ids))).toEqual(tree.root());
    }
  });

  it('the canonical cosine and schedule follow the formulas', () => {
    for (let p = 0; p <= 1; p += 1 / 64) expect(Math.abs(ccosPi(p) - Math.cos(Math.PI * p))).toBeLessThan(1e-15);
    const s = { kind: 'cosine' as const, warmupSteps: 10, totalSteps: 110, floor: 0.1 };
    expect(cscheduleFactor(s, 4)).toBe(0.5);
    expect(cscheduleFactor(s, 60)).toBeCloseTo(0.1 + 0.9 * (1 + Math.cos(Math.PI / 2)) / 2, 14);
    expect(cscheduleFactor(s, 500)).toBeCloseTo(0.1, 14);
  });

  it('a Ghost file with a training rule round-trips, and other files are unchanged', async () => {
    const { model } = bigram(new Rng(1), 5, { training: { loss: 'cross-entropy', lr: 0.01, schedule: { kind: 'cosine', warmupSteps: 2, totalSteps: 50 }, clipNorm: 1, weightDecay: 0.01 } });
    const g = await model.ghost();
    expect(g.manifest.formatVersion).toBe(3);
    expect(decodeGhost(g.bytes)).toEqual(g.manifest);
    expect(encodeGhost(decodeGhost(g.bytes))).toEqual(g.bytes);
    const plain = new Model([new Embedding(model.tensors[0]!)]);
    expect((await plain.ghost()).manifest.formatVersion).toBe(1);
    // Hostile: a training section on a format-1 file, trailing bytes, a bad schedule.
    const bad = g.bytes.slice();
    bad[8] = 1;
    expect(() => decodeGhost(bad)).toThrow();
    expect(() => decodeGhost(Uint8Array.from([...g.bytes, 0]))).toThrow();
  });

  it('steps of a bigram model verify one after another; the verifier follows the model through its Ghost files', async () => {
    const rng = new Rng(5);
    const V = 7;
    const { model, table } = bigram(rng, V, { training: { loss: 'cross-entropy', lr: 0.05, clipNorm: 10 } });
    let pinned = await pinGhost((await model.ghost()).bytes);
    const ids = Uint32Array.from([1, 4, 4, 6, 0, 2, 4]);
    const targets = Uint32Array.from([4, 4, 6, 0, 2, 4, 1]);
    const losses: number[] = [];
    for (let s = 0; s < 5; s++) {
      const step = await model.proveTrainStep({ input: ids, targets });
      const v = await verifyTrainStep(pinned, step.bytes);
      expect(v.ghost.digest).toEqual(step.ghost.digest);
      expect(v.step).toBe(s);
      losses.push(v.loss);
      pinned = v.ghost;
    }
    expect(losses[4]).toBeLessThan(losses[0]!);
    expect(pinned.manifest.tensors[0]!.root).toEqual(table.root());
  });

  it('the step equals SparseAdam on the analytic gradient (a second implementation)', async () => {
    const rng = new Rng(6);
    const V = 5;
    const { model, table } = bigram(rng, V, { training: { loss: 'cross-entropy', lr: 0.01 } });
    const twin = SparseTensor.fromArray(table.gather([0, 1, 2, 3, 4]), V);
    const opt = new SparseAdam([twin], { lr: 0.01 });
    const ids = Uint32Array.from([0, 3, 3, 1]);
    const targets = Uint32Array.from([3, 1, 4, 0]);
    for (let s = 0; s < 3; s++) {
      // d CE / d logits = (softmax - onehot) / B, rows of a repeated id summed.
      const rows = twin.gather(ids);
      const g = new Float32Array(ids.length * V);
      for (let b = 0; b < ids.length; b++) {
        let m = -Infinity, z = 0;
        for (let c = 0; c < V; c++) m = Math.max(m, rows[b * V + c]!);
        for (let c = 0; c < V; c++) z += Math.exp(rows[b * V + c]! - m);
        for (let c = 0; c < V; c++) g[b * V + c] = (Math.exp(rows[b * V + c]! - m) / z - (c === targets[b] ? 1 : 0)) / ids.length;
      }
      opt.step([{ tensor: twin, ids, grads: g }]);
      await model.proveTrainStep({ input: ids, targets });
    }
    const a = table.gather([0, 1, 2, 3, 4]), b = twin.gather([0, 1, 2, 3, 4]);
    for (let i = 0; i < a.length; i++) expect(a[i]).toBeCloseTo(b[i]!, 6);
    // Rows never read keep their values.
    expect(table.gather([2])).toEqual(twin.gather([2]));
  });

  it('with a pattern cache, later steps send held rows and still verify', async () => {
    const rng = new Rng(8);
    const { model } = bigram(rng, 9, { training: { loss: 'cross-entropy', lr: 0.02 } });
    const mine = new PatternCache(), theirs = new PatternCache();
    let pinned = await model.ghost();
    const sizes: number[] = [];
    for (let s = 0; s < 3; s++) {
      const step = await model.proveTrainStep({ input: [1, 2, 3, 1], targets: [2, 3, 1, 2] }, { cache: mine });
      pinned = (await verifyTrainStep(pinned, step.bytes, { cache: theirs })).ghost;
      sizes.push(step.bytes.length);
    }
    expect(sizes[2]).toBeLessThan(sizes[0]!);
  });

  it('refuses forged steps, each with its reason', async () => {
    const rng = new Rng(9);
    const V = 6;
    const { model } = bigram(rng, V, { training: { loss: 'cross-entropy', lr: 0.05 } });
    const g0 = await model.ghost();
    const batch = { input: [1, 2, 2, 5], targets: [2, 5, 0, 1] };
    const s0 = await model.proveTrainStep(batch);
    const g1 = s0.ghost;
    const s1 = await model.proveTrainStep(batch);
    const forge = async (p: StepProof | Uint8Array, g = g0) => reason(verifyTrainStep(g, p));
    const copy = (): StepProof => decodeProof(s0.bytes) as StepProof;
    expect(await forge(s0.bytes)).toBe('ACCEPTED');
    // Another batch: a changed target, a changed input id.
    let p = copy();
    (p.targets as { ids: Uint32Array }).ids[0] = 3;
    expect(await forge(p)).toBe('UPDATE_MISMATCH');
    p = copy();
    if (p.input.kind === 'ids') p.input.ids[3] = 1;
    expect(await forge(p)).toBe('BLOCK_IDS');
    // A changed optimizer state (the case an update proof accepted): one m value.
    p = copy();
    const st = p.states[0]!;
    st.leaves = st.leaves.slice();
    new DataView(st.leaves.buffer).setFloat32(0, 0.5, true);
    expect(await forge(p)).toBe('ROOT_MISMATCH');
    // A new Ghost file that is not the step's.
    p = copy();
    p.newGhost = p.newGhost.slice();
    p.newGhost[0]! ^= 1;
    expect(await forge(p)).toBe('UPDATE_MISMATCH');
    // Another step number; a skipped step (step 1 against the Ghost file before step 0); a replayed step.
    p = copy();
    p.step = 1;
    expect(await forge(p)).toBe('GHOST_MISMATCH');
    expect(await forge(s1.bytes, g0)).toBe('GHOST_MISMATCH');
    expect(await forge(s0.bytes, g1)).toBe('GHOST_MISMATCH');
    expect(await forge(s1.bytes, g1)).toBe('ACCEPTED');
    // A changed row value.
    p = copy();
    const row = p.blocks[0]!.payload.find((x) => x instanceof Float32Array) as Float32Array;
    row[0] = row[0]! + 1;
    expect(await forge(p)).toBe('ROOT_MISMATCH');
    // A row the step does not read, a state block missing.
    p = copy();
    p.states = [];
    expect(await forge(p)).toBe('BLOCK_IDS');
    // A Ghost file without a training rule.
    const plain = await new Model([new Embedding(model.tensors[0]!)]).ghost();
    const q = copy();
    q.ghost = plain.digest;
    expect(await reason(verifyTrainStep(plain, encodeProof(q)))).toBe('NO_TRAINING_RULE');
  });

  it('a graph of embedding, position and add trains by step proofs with mse', async () => {
    const rng = new Rng(11);
    const V = 5, d = 4, n = 6;
    const table = SparseTensor.fromArray(rng.f32(V * d), d);
    const pos = SparseTensor.fromArray(rng.f32(8 * d), d);
    const model = new Model([new Embedding(table), new PositionEmbedding(pos), new Add()], { inputs: [[-1], [0], [0, 1]], training: { loss: 'mse', optimizer: 'sgd', lr: 0.1, frozen: [pos] } });
    let pinned = await model.ghost();
    expect(pinned.manifest.training!.tensors.map((e) => e.tensor)).toEqual([0]);
    const targets = rng.f32(n * d);
    const posBefore = pos.gather([0, 1, 2]);
    let first = 0, last = 0;
    for (let s = 0; s < 4; s++) {
      const step = await model.proveTrainStep({ input: [0, 1, 4, 4, 2, 0], targets });
      const v = await verifyTrainStep(pinned, step.bytes);
      pinned = v.ghost;
      if (s === 0) first = v.loss;
      last = v.loss;
    }
    expect(last).toBeLessThan(first);
    expect(pos.gather([0, 1, 2])).toEqual(posBefore);
  });

  it('a model trained by step proofs saves and loads with its optimizer state, and goes on training', async () => {
    const rng = new Rng(12);
    const { model } = bigram(rng, 6, { training: { loss: 'cross-entropy', lr: 0.05, weightDecay: 0.01 } });
    const dir = mkdtempSync(join(tmpdir(), 'gt-step-'));
    try {
      const batch = { input: [1, 2, 3], targets: [2, 3, 4] };
      await model.proveTrainStep(batch);
      await model.proveTrainStep({ input: [5, 0], targets: [0, 1] });
      const saved = await model.save(join(dir, 'm'));
      // A loaded model trains its files in place: load a copy.
      cpSync(join(dir, 'm'), join(dir, 'm2'), { recursive: true });
      const { model: loaded, ghost } = await Model.load(join(dir, 'm2'));
      expect(ghost.digest).toEqual(saved.digest);
      expect((await loaded.ghost()).digest).toEqual(saved.digest);
      // Both go on to the same next step, which verifies against the saved Ghost file.
      const a = await model.proveTrainStep(batch), b = await loaded.proveTrainStep(batch);
      expect(b.bytes).toEqual(a.bytes);
      expect((await verifyTrainStep(saved, b.bytes)).ghost.digest).toEqual(b.ghost.digest);
      loaded.close();
      // A damaged or missing state file is refused.
      const ro = await Model.load(join(dir, 'm'), { readOnly: true });
      expect(ro.ghost.digest).toEqual(saved.digest);
      ro.model.close();
      const file = join(dir, 'm', 'step-state.bin');
      const good = readFileSync(file);
      const bad = Uint8Array.from(good);
      bad[bad.length - 3]! ^= 1;
      writeFileSync(file, bad);
      expect(await reason(Model.load(join(dir, 'm')))).toBe('ROOT_MISMATCH');
      writeFileSync(file, good.subarray(0, good.length - 1));
      expect(await reason(Model.load(join(dir, 'm')))).toBe('TRUNCATED');
      unlinkSync(file);
      expect(await reason(Model.load(join(dir, 'm')))).toBe('ROOT_MISMATCH');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a language model with a memory layer trains by step proofs: each step verifies, the loss falls', async () => {
    const model = languageModel({ context: 12, dim: 8, layers: 2, heads: 2, hidden: 12, memory: { layers: [1], subKeys: 4, k: 3, heads: 2, keyDim: 4 }, seed: 3 }, { training: { loss: 'cross-entropy', lr: 0.01, clipNorm: 1, schedule: { kind: 'warmup', warmupSteps: 2 } } });
    const text = Uint32Array.from(Buffer.from('the cat sat on the mat. '));
    const input = text.subarray(0, 12), targets = text.subarray(1, 13);
    let pinned = await model.ghost();
    const cache = new PatternCache(), mirror = new PatternCache();
    const losses: number[] = [];
    for (let s = 0; s < 6; s++) {
      const step = await model.proveTrainStep({ input, targets }, { cache: mirror });
      const v = await verifyTrainStep(pinned, step.bytes, { cache });
      expect(v.ghost.digest).toEqual(step.ghost.digest);
      losses.push(v.loss);
      pinned = v.ghost;
    }
    expect(losses[5]).toBeLessThan(losses[0]!);
    // Every tensor of the model is trained, and a step reads the memory's values only at the selected slots.
    const p = decodeProof((await model.proveTrainStep({ input, targets })).bytes) as StepProof;
    const values = model.tensors.findIndex((t) => t.size === 16 && t.dim === 8);
    const vb = p.blocks.find((b) => b.tensor === values)!;
    expect(vb.all).toBe(false);
    expect(vb.ids.length).toBeLessThan(16);
  });

  it('a HopfieldLookup classifier (cosine, normalised, exact and product-key layers) trains by step proofs', async () => {
    const rng = new Rng(13);
    const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(6 * 4), 4), SparseTensor.fromArray(rng.f32(6 * 4), 4));
    const model = new Model([
      new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(40 * 16), 16), values: SparseTensor.fromArray(rng.f32(40 * 8), 8), k: 5, similarity: 'cosine', normalize: true, beta: 4 }),
      new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(36 * 3), 3), k: 4, beta: 2 }),
    ], { training: { loss: 'cross-entropy', lr: 0.02 } });
    let pinned = await model.ghost();
    const x = rng.f32(6 * 16), y = [0, 1, 2, 0, 1, 2];
    const losses: number[] = [];
    for (let s = 0; s < 5; s++) {
      const step = await model.proveTrainStep({ input: x, targets: y });
      const v = await verifyTrainStep(pinned, step.bytes);
      losses.push(v.loss);
      pinned = v.ghost;
    }
    expect(losses[4]).toBeLessThan(losses[0]!);
    // A product-key selection that is not the re-derived one is refused.
    const p = decodeProof((await model.proveTrainStep({ input: x, targets: y })).bytes) as StepProof;
    const st = p.layers[1]!.stages[0]!;
    [st[0], st[1]] = [st[1]!, st[0]!];
    expect(await reason(verifyTrainStep(pinned, p))).toBe('SELECTION_MISMATCH');
  });

  it('clipping, the schedule and weight decay match an independent SGD reference', async () => {
    const rng = new Rng(14);
    const V = 5, lr = 0.5, wd = 0.1, clip = 0.05;
    const { model, table } = bigram(rng, V, { training: { loss: 'cross-entropy', optimizer: 'sgd', lr, weightDecay: wd, clipNorm: clip, schedule: { kind: 'warmup', warmupSteps: 4 } } });
    const twin = SparseTensor.fromArray(table.gather([0, 1, 2, 3, 4]), V);
    const opt = new SparseSGD([twin], { lr, weightDecay: wd });
    const batches = [{ ids: [0, 3, 3], y: [3, 1, 4] }, { ids: [2, 4], y: [0, 0] }, { ids: [0, 3], y: [1, 1] }];
    for (const [s, b] of batches.entries()) {
      // The analytic gradient, rows of a repeated id summed, clipped by the global norm; lr x the warm-up factor.
      const rows = twin.gather(b.ids);
      const acc = new Map<number, Float64Array>();
      for (let i = 0; i < b.ids.length; i++) {
        let m = -Infinity, z = 0;
        for (let c = 0; c < V; c++) m = Math.max(m, rows[i * V + c]!);
        for (let c = 0; c < V; c++) z += Math.exp(rows[i * V + c]! - m);
        const a = acc.get(b.ids[i]!) ?? new Float64Array(V);
        for (let c = 0; c < V; c++) a[c]! += (Math.exp(rows[i * V + c]! - m) / z - (c === b.y[i] ? 1 : 0)) / b.ids.length;
        acc.set(b.ids[i]!, a);
      }
      let norm = 0;
      for (const a of acc.values()) for (const g of a) norm += g * g;
      norm = Math.sqrt(norm);
      const scale = norm > clip ? clip / norm : 1;
      expect(norm).toBeGreaterThan(clip); // the clipping is exercised
      const ids = [...acc.keys()].sort((p, q) => p - q);
      const grads = new Float32Array(ids.length * V);
      ids.forEach((id, k) => acc.get(id)!.forEach((g, c) => (grads[k * V + c] = g * scale)));
      opt.lr = lr * Math.min(1, (s + 1) / 4);
      opt.step([{ tensor: twin, ids, grads }]);
      const v = await model.proveTrainStep({ input: b.ids, targets: b.y });
      expect(v.lr).toBe(Math.fround(lr * Math.min(1, (s + 1) / 4)));
      expect(v.gradNorm).toBeCloseTo(norm, 6);
    }
    const a = table.gather([0, 1, 2, 3, 4]), want = twin.gather([0, 1, 2, 3, 4]);
    for (let i = 0; i < a.length; i++) expect(a[i]).toBeCloseTo(want[i]!, 6);
  });

  it('ghost-tensor verify checks step proof files and writes the Ghost file after each step', async () => {
    const rng = new Rng(15);
    const { model } = bigram(rng, 5, { training: { loss: 'cross-entropy', lr: 0.05 } });
    const dir = mkdtempSync(join(tmpdir(), 'gt-step-cli-'));
    try {
      writeFileSync(join(dir, 'g0.bin'), (await model.ghost()).bytes);
      const s0 = await model.proveTrainStep({ input: [1, 2], targets: [2, 3] });
      const s1 = await model.proveTrainStep({ input: [3, 1], targets: [4, 0] });
      writeFileSync(join(dir, 's0.bin'), s0.bytes);
      writeFileSync(join(dir, 's1.bin'), s1.bytes);
      let r = await runCli('verify', '--ghost', join(dir, 'g0.bin'), join(dir, 's0.bin'), '--next-ghost', join(dir, 'g1.bin'), '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ verified: true, kind: 'step', step: 0 });
      expect(new Uint8Array(readFileSync(join(dir, 'g1.bin')))).toEqual(s0.ghost.bytes);
      r = await runCli('verify', '--ghost', join(dir, 'g1.bin'), join(dir, 's1.bin'));
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/verified: step proof of step 1/);
      // The second step against the first Ghost file: refused, exit 1.
      r = await runCli('verify', '--ghost', join(dir, 'g0.bin'), join(dir, 's1.bin'));
      expect(r.code).toBe(1);
      expect(r.stdout + r.stderr).toMatch(/GHOST_MISMATCH/);
      r = await runCli('inspect', join(dir, 's1.bin'));
      expect(r.stdout).toMatch(/step proof .* \(\d/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('concurrent proveTrainStep calls are taken one after another, each against the Ghost file the last one left', async () => {
    const rng = new Rng(16);
    const { model } = bigram(rng, 6, { training: { loss: 'cross-entropy', lr: 0.05 } });
    let pinned = await model.ghost();
    const steps = await Promise.all([0, 1, 2, 3].map((i) => model.proveTrainStep({ input: [i, i + 1], targets: [i + 1, i + 2] })));
    expect(steps.map((s) => s.step)).toEqual([0, 1, 2, 3]);
    for (const s of steps) pinned = (await verifyTrainStep(pinned, s.bytes)).ghost;
    expect(pinned.digest).toEqual((await model.ghost()).digest);
    // A failed call (bad targets) does not stop the queue.
    await expect(model.proveTrainStep({ input: [1], targets: [9] })).rejects.toThrow();
    expect((await model.proveTrainStep({ input: [1], targets: [2] })).step).toBe(4);
  });

  it('a model with a training rule moves only by step proofs: update proofs are refused on both sides', async () => {
    const rng = new Rng(17);
    const V = 5;
    const { model, table } = bigram(rng, V, { training: { loss: 'cross-entropy', lr: 0.05 } });
    const pinned = await model.ghost();
    const opt = new SparseSGD([table], { lr: 1 });
    await expect(model.proveStep(opt, [{ tensor: table, ids: [1], grads: new Float32Array(V).fill(1) }])).rejects.toThrow(/proveTrainStep/);
    // An update proof made on a plain twin of the model (same tensor, same root) against the trained Ghost file.
    const twin = new Model([new Embedding(table)]);
    const [u] = await twin.proveStep(opt, [{ tensor: table, ids: [1], grads: new Float32Array(V).fill(1) }]);
    const forged = decodeProof(u!.bytes);
    if (forged.kind !== 'update') throw new Error('not an update proof');
    forged.ghost = pinned.digest;
    const { verifyUpdate } = await import('../lib/index.js');
    expect(await reason(verifyUpdate(pinned, encodeProof(forged)))).toBe('WRONG_KIND');
  });

  it('a step writes only the rows its backward touches: read-whole sub-key tables and held keys keep their other rows', async () => {
    const rng = new Rng(18);
    // Product keys: both sub-key tables are read whole (the verifier re-derives the selection); only the selected rows move.
    const t1 = SparseTensor.fromArray(rng.f32(8 * 4), 4), t2 = SparseTensor.fromArray(rng.f32(8 * 4), 4);
    const pk = new Model([new HopfieldLookup({ keys: ProductKeyIndex.fromTables(t1, t2), values: SparseTensor.fromArray(rng.f32(64 * 3), 3), k: 2, beta: 2 })], { training: { loss: 'cross-entropy', lr: 0.05 } });
    let pinned = await pk.ghost();
    const before1 = t1.gather(Uint32Array.from({ length: 8 }, (_, i) => i));
    const step = await pk.proveTrainStep({ input: rng.f32(1 * 8), targets: [1] });
    pinned = (await verifyTrainStep(pinned, step.bytes)).ghost;
    const p = step.proof;
    expect(p.blocks.find((b) => b.tensor === 0)!.all).toBe(true);
    const s1 = p.states.find((b) => b.tensor === 0)!;
    expect(s1.ids.length).toBeLessThanOrEqual(2);
    const after1 = t1.gather(Uint32Array.from({ length: 8 }, (_, i) => i));
    for (let r = 0; r < 8; r++) {
      const moved = after1.subarray(r * 4, r * 4 + 4).some((v, j) => v !== before1[r * 4 + j]);
      expect(moved, `row ${r}`).toBe(s1.ids.includes(r));
    }
    // Held keys: an exact layer's keys revealed whole, its selection re-derived, only the selected keys written.
    const keys = SparseTensor.fromArray(rng.f32(30 * 6), 6);
    const ex = new Model([new HopfieldLookup({ keys, values: SparseTensor.fromArray(rng.f32(30 * 3), 3), k: 3, similarity: 'cosine', normalize: true, beta: 3 })], { training: { loss: 'cross-entropy', lr: 0.05 } });
    let g = await ex.ghost();
    const x = rng.f32(2 * 6);
    const held = await ex.proveTrainStep({ input: x, targets: [0, 2] }, { revealKeys: 'all' });
    expect(held.proof.blocks[0]!.all).toBe(true);
    expect(held.proof.states[0]!.ids.length).toBeLessThanOrEqual(6);
    g = (await verifyTrainStep(g, held.bytes)).ghost;
    const next = await ex.proveTrainStep({ input: x, targets: [0, 2] }, { revealKeys: 'all' });
    const forged = decodeProof(next.bytes) as StepProof;
    const st = forged.layers[0]!.stages[0]!;
    [st[0], st[1]] = [st[1]!, st[0]!];
    expect(await reason(verifyTrainStep(g, forged))).toBe('SELECTION_MISMATCH');
    expect((await verifyTrainStep(g, next.bytes)).step).toBe(1);
  });
});
