/**
 * A swarm trains a small byte-level language model (languageModel(config, { training })):
 * a verify-only sequencer and two trainers on loopback, each trainer proposing windows
 * of its own text concurrently. Every honest peer ends at one Ghost digest, equal to the
 * log replayed on a fresh generation-0 model with no network (and to the chain of
 * verified Ghost files), and each trainer's replica is exactly that model. Then the same
 * with a sequencer that announces only each entry's digest: peers fetch the proof.
 */
import { afterAll, describe, expect, it } from 'vitest';

import { decodeProof, languageModel, pinGhost, verifyTrainStep } from '../lib/index.js';
import type { Model, StepProof } from '../lib/index.js';
import { FormatError } from '../lib/index.js';
import { SwarmPeer, decodeLogAnnouncement, encodeLogAnnouncement, isLogAnnouncement } from '../lib/swarm/index.js';

const CONTEXT = 8;
/** The shared config every peer builds generation 0 from. */
function genesisModel(): Model {
  return languageModel({ context: CONTEXT, dim: 8, layers: 1, heads: 2, hidden: 12, seed: 5 }, { training: { loss: 'cross-entropy', lr: 0.02, clipNorm: 1 } });
}

const TEXTS = [Buffer.from('the cat sat on the mat and the dog sat on the log. '), Buffer.from('a bird in the hand is worth two in the bush, they say. ')];
/** Trainer t's window i: CONTEXT bytes of its text, the next byte of each as the target. */
function window(t: number, i: number): { input: Uint32Array; targets: Uint32Array } {
  const text = TEXTS[t]!;
  const o = (i * 7) % (text.length - CONTEXT - 1);
  return { input: Uint32Array.from(text.subarray(o, o + CONTEXT)), targets: Uint32Array.from(text.subarray(o + 1, o + CONTEXT + 1)) };
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

describe('swarm: a language model trained by step proofs', () => {
  const peers: SwarmPeer[] = [];
  afterAll(async () => {
    await Promise.all(peers.map((p) => p.stop()));
    for (const p of peers) p.model?.close();
  });

  /** A verify-only sequencer and two trainers, each from generation 0, ready to propose. */
  async function sequencerAndTwoTrainers() {
    const g0 = await genesisModel().ghost();
    const seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0 });
    peers.push(seq);
    const common = { genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs };
    const A = await SwarmPeer.start({ ...common, model: genesisModel() });
    peers.push(A);
    const B = await SwarmPeer.start({ ...common, model: genesisModel() });
    peers.push(B);
    await Promise.all([A.ready(), B.ready()]);
    return { g0, seq, A, B };
  }

  it('three peers end at one digest, equal to replaying the log from generation 0', async () => {
    const { g0, seq, A, B } = await sequencerAndTwoTrainers();

    // Both trainers propose at once: some proposals race for one generation and are passed over.
    const results = await Promise.all([A, B].map(async (p, t) => {
      const rs = [];
      for (let i = 0; i < 3; i++) rs.push(await p.propose(window(t, i)));
      return rs;
    }));
    const accepted = results.flat().filter((r) => r.accepted).length;
    expect(accepted).toBeGreaterThanOrEqual(3);
    expect(seq.generation).toBe(accepted);
    await Promise.all([A, B].map((p) => p.waitFor(seq.generation)));

    // Every honest peer holds the same verified head; the replicas are that model.
    for (const p of [A, B]) {
      expect(p.generation).toBe(seq.generation);
      expect(hex(p.head.digest)).toBe(hex(seq.head.digest));
      expect(hex((await p.model!.ghost()).digest)).toBe(hex(seq.head.digest));
    }
    // An accepted proposal is the log's entry at its generation, byte for byte.
    const log = seq.entries();
    expect(log.map((e) => e.generation)).toEqual([...Array(accepted).keys()]);
    for (const r of results.flat().filter((x) => x.accepted)) expect(hex(log[r.generation]!.proof)).toBe(hex(r.proof));
    for (const p of [A, B]) expect(p.entries().map((e) => hex(e.proof))).toEqual(log.map((e) => hex(e.proof)));

    // The reference, with no network: the log replayed on a fresh generation-0 model,
    // and the chain of Ghost files verified from generation 0.
    const ref = genesisModel();
    let pinned = await pinGhost((await ref.ghost()).bytes);
    try {
      for (const e of log) {
        pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
        const p = decodeProof(e.proof) as StepProof;
        expect(p.input.kind).toBe('ids');
        await ref.proveTrainStep({ input: p.input.kind === 'ids' ? p.input.ids : new Uint32Array(0), targets: p.targets.kind === 'classes' ? p.targets.ids : new Uint32Array(0) });
      }
      expect(hex((await ref.ghost()).digest)).toBe(hex(seq.head.digest));
      expect(hex(pinned.digest)).toBe(hex(seq.head.digest));
      expect(hex(seq.head.digest)).not.toBe(hex(g0.digest));
    } finally {
      ref.close();
    }
  }, 60_000);

  it('a step of several sequences (kind 4) proposed by one trainer is applied by the other trainer\'s replica and every peer', async () => {
    const { g0, seq, A, B } = await sequencerAndTwoTrainers();
    const r = await A.propose([window(0, 1), window(0, 2), window(0, 3)]);
    expect(r.accepted).toBe(true);
    expect(r.proof[10]).toBe(4);
    await B.waitFor(1);
    expect((await B.propose(window(1, 1))).accepted).toBe(true);
    await Promise.all([A, B].map((p) => p.waitFor(2)));
    // B's replica replayed A's three-sequence step (and A's replica B's step): both hold the sequencer's head.
    for (const p of [A, B]) {
      expect(hex(p.head.digest)).toBe(hex(seq.head.digest));
      expect(hex((await p.model!.ghost()).digest)).toBe(hex(seq.head.digest));
    }
  }, 60_000);

  it('digest-only announcements: a verify-only peer and a trainer fetch each proof, reach the same digest, and the trainer no longer receives its own proofs back', async () => {
    // The frames: round trip, and hostile bytes refused.
    const ann = { genesis: new Uint8Array(32).fill(1), generation: 5, proofDigest: new Uint8Array(32).fill(2) };
    const bytes = encodeLogAnnouncement(ann);
    expect(bytes.length).toBe(74);
    expect(isLogAnnouncement(bytes)).toBe(true);
    expect(decodeLogAnnouncement(bytes)).toEqual(ann);
    for (const bad of [bytes.subarray(0, 73), Uint8Array.from([...bytes, 0]), Uint8Array.of(2, ...bytes.subarray(1)), Uint8Array.of(1, 2, ...bytes.subarray(2))]) {
      expect(() => decodeLogAnnouncement(bad)).toThrow(FormatError);
    }

    const trainerIn: number[] = [];
    for (const announce of ['digest', 'entry'] as const) {
      const g0 = await genesisModel().ghost();
      const seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0, announce });
      peers.push(seq);
      const common = { genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs };
      const A = await SwarmPeer.start({ ...common, model: genesisModel() });
      peers.push(A);
      const W = await SwarmPeer.start({ ...common, ghost: g0 });
      peers.push(W);
      await A.ready();
      for (let i = 0; i < 3; i++) expect((await A.propose(window(0, i))).accepted).toBe(true);
      await W.waitFor(3, 15_000);
      expect(hex(W.head.digest)).toBe(hex(seq.head.digest));
      expect(hex((await A.model!.ghost()).digest)).toBe(hex(seq.head.digest));
      expect(W.entries().map((e) => hex(e.proof))).toEqual(seq.entries().map((e) => hex(e.proof)));
      // With digests, the verify-only peer fetched every proof; the trainer had its own.
      expect(W.stats.fetched).toBe(announce === 'digest' ? 3 : 0);
      expect(A.stats.fetched).toBe(0);
      trainerIn.push(A.stats.bytesIn);
    }
    // The trainer no longer receives its own proofs back: only the announcements (74 bytes each).
    expect(trainerIn[0]).toBeLessThanOrEqual(3 * 74);
    expect(trainerIn[1]).toBeGreaterThan(3 * 1000);
  }, 60_000);
});
