/**
 * Five peers on loopback (docs/swarm.md): a verify-only sequencer, three trainers and a
 * verify-only peer train (1) a Fashion-MNIST HopfieldLookup classifier (exact index, so
 * every replay selects the same rows) on images of data/fashion-mnist-small, each trainer
 * its own slice, and (2) a small byte-level language model, each trainer its own text.
 * The trainers propose concurrently; all honest peers end at one Ghost digest, equal to the
 * sequenced log replayed on one model with no network, every step verified.
 */
import { afterAll, describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, SparseTensor, decodeProof, languageModel, verifyTrainStep } from '../lib/index.js';
import type { StepProof } from '../lib/index.js';
import { SwarmPeer, type LogEntry } from '../lib/swarm/index.js';
import { SMALL_DATA_DIR, loadSplit } from '../examples/fashion-mnist.mjs';
import { Rng } from './helpers/rng.js';

type Batch = { input: Uint32Array | Float32Array; targets: Uint32Array | Float32Array };
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

const stepBatch = (proof: Uint8Array): Batch => {
  const p = decodeProof(proof) as StepProof;
  return { input: p.input.kind === 'ids' ? p.input.ids : p.input.data, targets: p.targets.kind === 'classes' ? p.targets.ids : p.targets.data };
};

const stopped: SwarmPeer[] = [];
afterAll(async () => {
  await Promise.all(stopped.map((p) => p.stop()));
  for (const p of stopped) p.model?.close();
});

/**
 * Runs the five peers: each trainer proposes `rounds` batches (batchOf(trainer, i))
 * concurrently; then checks that every honest peer holds the sequencer's digest and that
 * the log replayed on a fresh generation-0 model gives it.
 */
async function fivePeers(genesisModel: () => Model, batchOf: (t: number, i: number) => Batch, rounds: number): Promise<{ accepted: number; proposed: number }> {
  const g0 = await genesisModel().ghost();
  const seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0 });
  stopped.push(seq);
  const common = { genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs };
  const T = await Promise.all([0, 1, 2].map(() => SwarmPeer.start({ ...common, model: genesisModel() })));
  const W = await SwarmPeer.start({ ...common, ghost: g0 });
  stopped.push(...T, W);
  await Promise.all(T.map((t) => t.ready()));
  const results = await Promise.all(T.map(async (t, k) => {
    const rs = [];
    for (let i = 0; i < rounds; i++) {
      await t.catchUp().catch(() => {}); // propose at the newest head it can reach
      rs.push(await t.propose(batchOf(k, i)));
    }
    return rs;
  }));
  const flat = results.flat();
  const accepted = flat.filter((r) => r.accepted).length;
  expect(accepted).toBeGreaterThanOrEqual(rounds); // each round sequences at least one
  expect(seq.generation).toBe(accepted);
  await Promise.all([...T, W].map((p) => p.waitFor(seq.generation)));
  for (const p of [...T, W]) {
    expect(hex(p.head.digest)).toBe(hex(seq.head.digest));
    expect(p.rejections).toEqual([]);
  }
  for (const t of T) expect(hex((await t.model!.ghost()).digest)).toBe(hex(seq.head.digest));
  expect(seq.rejections).toEqual([]);
  // The reference: the sequenced log on one model, no network, each step verified.
  const log: LogEntry[] = seq.entries();
  const ref = genesisModel();
  let pinned = await ref.ghost();
  for (const [i, e] of log.entries()) {
    expect(e.generation).toBe(i);
    pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
    await ref.proveTrainStep(stepBatch(e.proof));
  }
  expect(hex(pinned.digest)).toBe(hex(seq.head.digest));
  expect(hex((await ref.ghost()).digest)).toBe(hex(seq.head.digest));
  expect(hex(seq.head.digest)).not.toBe(hex(g0.digest));
  ref.close();
  // Every accepted proposal is the log's entry at its generation.
  for (const r of flat.filter((x) => x.accepted)) expect(hex(log[r.generation]!.proof)).toBe(hex(r.proof));
  return { accepted, proposed: flat.length };
}

describe('swarm: five peers', () => {
  it('a Fashion-MNIST HopfieldLookup classifier (exact index): every honest peer ends at the digest of the log replayed on one model', async () => {
    const D = 16, N = 64, C = 10, B = 8;
    const train = loadSplit('train', 3 * 4 * B, SMALL_DATA_DIR);
    // A fixed random projection of the 784 pixels to D features (shared by every trainer).
    const P = new Rng(7).f32(784 * D);
    const features = new Float32Array(train.n * D);
    for (let s = 0; s < train.n; s++) {
      for (let i = 0; i < 784; i++) {
        const x = train.x[s * 784 + i]!;
        if (x !== 0) for (let j = 0; j < D; j++) features[s * D + j] = features[s * D + j]! + (x * (P[i * D + j]! - 0.5)) / 8;
      }
    }
    const genesis = (): Model => {
      const rng = new Rng(11);
      return new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(N * D), D), values: SparseTensor.fromArray(rng.f32(N * C), C), k: 4, beta: 2 })], { training: { loss: 'cross-entropy', lr: 0.05 } });
    };
    // Trainer t's batch i: its own slice of the images.
    const batchOf = (t: number, i: number): Batch => {
      const at = (t * 4 + i) * B;
      return { input: features.slice(at * D, (at + B) * D), targets: Uint32Array.from(train.y.subarray(at, at + B)) };
    };
    const r = await fivePeers(genesis, batchOf, 3);
    expect(r.proposed).toBe(9);
  }, 60_000);

  it('a byte-level language model: every honest peer ends at the digest of the log replayed on one model', async () => {
    const CONTEXT = 8;
    const TEXTS = ['the cat sat on the mat and the dog sat on the log. ', 'a bird in the hand is worth two in the bush, they say. ', 'it was the best of times, it was the worst of times. '].map((s) => Buffer.from(s));
    const genesis = (): Model => languageModel({ context: CONTEXT, dim: 8, layers: 1, heads: 2, hidden: 12, seed: 5 }, { training: { loss: 'cross-entropy', lr: 0.02, clipNorm: 1 } });
    const batchOf = (t: number, i: number): Batch => {
      const text = TEXTS[t]!;
      const o = (i * 7) % (text.length - CONTEXT - 1);
      return { input: Uint32Array.from(text.subarray(o, o + CONTEXT)), targets: Uint32Array.from(text.subarray(o + 1, o + CONTEXT + 1)) };
    };
    const r = await fivePeers(genesis, batchOf, 3);
    expect(r.proposed).toBe(9);
  }, 60_000);
});
