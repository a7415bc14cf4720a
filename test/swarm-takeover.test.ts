/**
 * Sequencer takeover (docs/swarm.md, "When the sequencer fails or misbehaves"): peers
 * configured with an ordered list of sequencers move to the next when the current one
 * is silent while a proposal waits (it was stopped), or when it signs two different
 * entries for one generation (the two signed messages are kept as evidence). Training
 * continues under the second; every honest peer ends at one digest, equal to the log
 * replayed on one model with every step verified.
 */
import { describe, expect, it } from 'vitest';

import { Embedding, Model, SparseTensor, decodeProof, verifyTrainStep } from '../lib/index.js';
import type { StepProof } from '../lib/index.js';
import { SwarmPeer, decodeLogAnnouncement, decodeLogEntry, encodeLogAnnouncement, encodeLogEntry, type LogEntry, type SignedLogMessage } from '../lib/swarm/index.js';
import { Rng } from './helpers/rng.js';

const V = 12;
function genesisModel(): Model {
  const table = SparseTensor.fromArray(new Rng(2026).f32(V * V), V);
  return new Model([new Embedding(table)], { training: { loss: 'cross-entropy', lr: 0.05, clipNorm: 10 } });
}
function batch(rng: Rng, stride: number): { input: Uint32Array; targets: Uint32Array } {
  const start = rng.int(0, V - 1);
  const input = Uint32Array.from({ length: 6 }, (_, i) => (start + i * stride) % V);
  return { input, targets: Uint32Array.from(input, (x) => (x + stride) % V) };
}
const stepBatch = (proof: Uint8Array): { input: Uint32Array; targets: Uint32Array } => {
  const p = decodeProof(proof) as StepProof;
  return { input: p.input.kind === 'ids' ? p.input.ids : new Uint32Array(0), targets: p.targets.kind === 'classes' ? p.targets.ids : new Uint32Array(0) };
};

/** The log replayed on one model with no network, every step verified: the reference digest. */
async function replay(entries: LogEntry[]): Promise<Uint8Array> {
  const m = genesisModel();
  let pinned = await m.ghost();
  for (const [i, e] of entries.entries()) {
    expect(e.generation).toBe(i);
    pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
    await m.proveTrainStep(stepBatch(e.proof));
  }
  expect((await m.ghost()).digest).toEqual(pinned.digest);
  m.close();
  return pinned.digest;
}

/** Two sequencer keys (their peer ids are the list every peer is configured with), and the swarm's generation 0. */
async function setup(): Promise<{ keys: import('@libp2p/interface').PrivateKey[]; ids: string[]; g0: Awaited<ReturnType<Model['ghost']>> }> {
  const { generateKeyPair } = await import('@libp2p/crypto/keys');
  const { peerIdFromPrivateKey } = await import('@libp2p/peer-id');
  const keys = [await generateKeyPair('Ed25519'), await generateKeyPair('Ed25519')];
  return { keys, ids: keys.map((k) => peerIdFromPrivateKey(k).toString()), g0: await genesisModel().ghost() };
}

/** Runs a dial, trying again (up to 5 times, 200 ms apart) when it fails. */
async function dialAgain<T>(dial: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await dial();
    } catch (err) {
      if (i >= 4) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Two sequencers in takeover order (S1 then S2), a trainer A and a verify-only peer W, announcing whole entries or digests. */
async function twoSequencers(announce: 'entry' | 'digest') {
  const { keys, ids, g0 } = await setup();
  const common = { genesis: g0.digest, sequencers: ids, takeoverMs: 60_000, ...(announce === 'digest' ? { announce } : {}) };
  const S1 = await SwarmPeer.start({ ...common, ghost: g0, privateKey: keys[0]! });
  const S2 = await SwarmPeer.start({ ...common, ghost: g0, privateKey: keys[1]!, bootstrap: S1.multiaddrs });
  const boot = [...S1.multiaddrs, ...S2.multiaddrs];
  const A = await SwarmPeer.start({ ...common, model: genesisModel(), bootstrap: boot });
  const W = await SwarmPeer.start({ ...common, ghost: g0, bootstrap: boot });
  return { keys, ids, g0, S1, S2, A, W, peers: [S1, S2, A, W] };
}

/**
 * Checks a kept signed log message as gossipsub does (StrictSign): the author's signature
 * over "libp2p-pubsub:" and the protobuf message (from, data, seqno, topic).
 */
async function verifySigned(pub: import('@libp2p/interface').PublicKey, m: SignedLogMessage): Promise<boolean> {
  const { RPC } = await import('@libp2p/gossipsub/message');
  const { peerIdFromString } = await import('@libp2p/peer-id');
  const seqno = new Uint8Array(8);
  new DataView(seqno.buffer).setBigUint64(0, m.sequenceNumber, false);
  const body = RPC.Message.encode({ from: peerIdFromString(m.from).toMultihash().bytes, data: m.data, seqno, topic: m.topic });
  return pub.verify(new Uint8Array([...new TextEncoder().encode('libp2p-pubsub:'), ...body]), m.signature);
}

type Pubsub = { publish(topic: string, data: Uint8Array): Promise<unknown> };
const pubsubOf = (p: SwarmPeer): Pubsub => (p.libp2p.services as unknown as { pubsub: Pubsub }).pubsub;

async function until(ok: () => boolean, ms = 15_000): Promise<void> {
  for (const end = Date.now() + ms; !ok(); ) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('swarm: sequencer takeover', () => {
  it('the first sequencer stops; a proposal waits takeoverMs; every peer moves to the second, training continues, and all end at the replayed digest', async () => {
    const { keys, ids, g0 } = await setup();
    const genesis = g0.digest;
    const common = { genesis, sequencers: ids, takeoverMs: 1500 };
    const S1 = await SwarmPeer.start({ ...common, ghost: g0, privateKey: keys[0]! });
    const S2 = await SwarmPeer.start({ ...common, ghost: g0, privateKey: keys[1]!, bootstrap: S1.multiaddrs });
    const boot = [...S1.multiaddrs, ...S2.multiaddrs];
    const A = await SwarmPeer.start({ ...common, model: genesisModel(), bootstrap: boot });
    const B = await SwarmPeer.start({ ...common, model: genesisModel(), bootstrap: boot });
    const W = await SwarmPeer.start({ ...common, ghost: g0, bootstrap: boot });
    const peers = [S1, S2, A, B, W];
    try {
      expect(S1.isSequencer).toBe(true);
      expect(S2.isSequencer).toBe(false);
      await Promise.all([A.ready(), B.ready()]);
      expect((await A.propose(batch(new Rng(1), 1))).accepted).toBe(true);
      await B.waitFor(1);
      expect((await B.propose(batch(new Rng(2), 5))).accepted).toBe(true);
      await Promise.all([A, S2, W].map((p) => p.waitFor(2)));
      await S1.stop();
      // A's proposal at generation 2 waits; after 1.5 s A, and S2 (which saw it on `steps`), move on.
      const r = await A.propose(batch(new Rng(3), 1));
      expect(r.accepted).toBe(true);
      expect(r.generation).toBe(2);
      expect(S2.isSequencer).toBe(true);
      expect(S2.takeovers[0]).toMatchObject({ from: ids[0], to: ids[1], generation: 2 });
      expect(S2.takeovers[0]!.reason).toMatch(/silent for 1500 ms/);
      await B.waitFor(3);
      expect((await B.propose(batch(new Rng(4), 5))).accepted).toBe(true);
      const honest = [S2, A, B, W];
      await Promise.all(honest.map((p) => p.waitFor(4)));
      for (const p of honest) {
        expect(p.sequencer).toBe(ids[1]);
        expect(p.head.digest).toEqual(S2.head.digest);
      }
      // W saw no proposal: it moved when S2's entry verified at its head.
      expect(W.takeovers[0]!.reason).toMatch(/later in the list, verified at generation 2/);
      for (const p of [A, B]) expect((await p.model!.ghost()).digest).toEqual(S2.head.digest);
      expect(await replay(S2.entries())).toEqual(S2.head.digest);
      for (const p of honest) expect(p.rejections).toEqual([]);
    } finally {
      await Promise.all(peers.map((p) => p.stop()));
    }
  }, 60_000);

  it('the first sequencer signs two entries for one generation: peers keep both signed messages, ban it and move to the second', async () => {
    const { keys, ids, g0, S1, S2, A, W, peers } = await twoSequencers('entry');
    const genesis = g0.digest;
    try {
      await A.ready();
      for (let i = 0; i < 2; i++) expect((await A.propose(batch(new Rng(10 + i), 1 + i))).accepted).toBe(true);
      await Promise.all([S2, W].map((p) => p.waitFor(2)));
      // A second, valid, different step for generation 1, signed by S1.
      const m = genesisModel();
      await m.proveTrainStep(stepBatch(S1.entries()[0]!.proof));
      const other = await m.proveTrainStep(batch(new Rng(99), 7));
      m.close();
      await pubsubOf(S1).publish(S1.topics.log, encodeLogEntry(genesis, { generation: 1, proof: other.bytes }));
      await until(() => [S2, A, W].every((p) => p.banned.has(ids[0]!) && p.sequencer === ids[1]));
      for (const p of [S2, A, W]) {
        const ev = p.equivocations[0]!;
        expect(ev).toMatchObject({ sequencer: ids[0], generation: 1 });
        const [a, b] = ev.messages.map((x) => decodeLogEntry(x.data));
        expect(a!.generation).toBe(1);
        expect(b!.generation).toBe(1);
        expect(Buffer.from(a!.proof).equals(Buffer.from(b!.proof))).toBe(false);
        expect(Buffer.from(b!.proof).equals(Buffer.from(other.bytes))).toBe(true);
        for (const x of ev.messages) {
          expect(x.from).toBe(ids[0]);
          expect(x.signature.length).toBe(64);
        }
        expect(p.generation).toBe(2); // the verified log is kept
      }
      expect(S2.isSequencer).toBe(true);
      await A.ready();
      expect((await A.propose(batch(new Rng(12), 3))).accepted).toBe(true);
      await W.waitFor(3);
      expect(W.head.digest).toEqual(S2.head.digest);
      expect((await A.model!.ghost()).digest).toEqual(S2.head.digest);
      expect(await replay(S2.entries())).toEqual(S2.head.digest);
    } finally {
      await Promise.all(peers.map((p) => p.stop()));
    }
  }, 60_000);

  it('with digest-only announcements, the first sequencer signs two digests for one generation: peers keep both signed announcements, ban it and move to the second; a repeated identical announcement is not equivocation', async () => {
    const { keys, ids, g0, S1, S2, A, W, peers } = await twoSequencers('digest');
    const genesis = g0.digest;
    try {
      await A.ready();
      for (let i = 0; i < 2; i++) expect((await A.propose(batch(new Rng(20 + i), 1 + i))).accepted).toBe(true);
      await Promise.all([S2, W].map((p) => p.waitFor(2)));
      // The entry of generation 1 (made at 1, taking the log to 2), which every peer applied.
      const held = S1.entries()[1]!.proof;
      const announce = (proofDigest: Uint8Array): Promise<unknown> => pubsubOf(S1).publish(S1.topics.log, encodeLogAnnouncement({ genesis, generation: 1, proofDigest }));
      // First the same announcement again (a new gossipsub message, the same signed statement): not equivocation.
      const { loadHasher } = await import('../lib/verify/merkle.js');
      const blake = await loadHasher();
      await announce(blake.hash(held));
      // Then another digest for generation 1 (of a valid, different step), signed by S1.
      const m = genesisModel();
      await m.proveTrainStep(stepBatch(S1.entries()[0]!.proof));
      const other = await m.proveTrainStep(batch(new Rng(98), 7));
      m.close();
      expect(blake.hash(other.bytes)).not.toEqual(blake.hash(held));
      await announce(blake.hash(other.bytes));
      await until(() => [S2, A, W].every((p) => p.banned.has(ids[0]!) && p.sequencer === ids[1]));
      for (const p of [S2, A, W]) {
        expect(p.equivocations).toHaveLength(1);
        const ev = p.equivocations[0]!;
        expect(ev).toMatchObject({ sequencer: ids[0], generation: 1 });
        const [a, b] = ev.messages.map((x) => decodeLogAnnouncement(x.data));
        expect(a!.generation).toBe(1);
        expect(b!.generation).toBe(1);
        const hx = (b: Uint8Array): string => Buffer.from(b).toString('hex');
        expect(hx(a!.proofDigest)).toBe(hx(blake.hash(held)));
        expect(hx(b!.proofDigest)).toBe(hx(blake.hash(other.bytes)));
        for (const x of ev.messages) {
          expect(x.from).toBe(ids[0]);
          expect(x.signature.length).toBe(64);
        }
        expect(p.generation).toBe(2);
      }
      // The evidence checks with the sequencer's public key alone: gossipsub's signed record of each message.
      const pub = keys[0]!.publicKey;
      for (const x of W.equivocations[0]!.messages) expect(await verifySigned(pub, x)).toBe(true);
      const forged = { ...W.equivocations[0]!.messages[1], data: encodeLogAnnouncement({ genesis, generation: 1, proofDigest: new Uint8Array(32).fill(7) }) };
      expect(await verifySigned(pub, forged)).toBe(false);
      expect(S2.isSequencer).toBe(true);
      await A.ready();
      expect((await A.propose(batch(new Rng(22), 3))).accepted).toBe(true);
      await W.waitFor(3);
      expect(W.head.digest).toEqual(S2.head.digest);
      expect(await replay(S2.entries())).toEqual(S2.head.digest);
    } finally {
      await Promise.all(peers.map((p) => p.stop()));
    }
  }, 60_000);

  it('a partition (simulated with the connection gater): the side cut from the sequencer cannot advance, so the log cannot fork; after healing no step is lost and all agree', async () => {
    const g0 = await genesisModel().ghost();
    const genesis = g0.digest;
    const S = await SwarmPeer.start({ genesis, sequencer: 'self', ghost: g0 });
    const common = { genesis, sequencer: S.peerId, bootstrap: S.multiaddrs };
    const A = await SwarmPeer.start({ ...common, model: genesisModel() });
    const B = await SwarmPeer.start({ ...common, model: genesisModel(), bootstrap: [...S.multiaddrs, ...A.multiaddrs] });
    const W = await SwarmPeer.start({ ...common, ghost: g0, bootstrap: [...S.multiaddrs, ...B.multiaddrs] });
    const peers = [S, A, B, W];
    try {
      await Promise.all([A.ready(), B.ready()]);
      expect((await A.propose(batch(new Rng(30), 1))).accepted).toBe(true);
      await Promise.all([B, W].map((p) => p.waitFor(1)));
      // The cut: {S, A} | {B, W}. Each side's gater refuses the other's peers (the set
      // SwarmPeer's connection gater reads), and the open connections are closed.
      const sides = [[S, A], [B, W]] as const;
      const cut = async (on: boolean): Promise<void> => {
        for (const [mine, theirs] of [[sides[0], sides[1]], [sides[1], sides[0]]] as const) {
          for (const p of mine) {
            for (const q of theirs) {
              if (on) {
                p.banned.add(q.peerId);
                await p.libp2p.hangUp(q.libp2p.peerId).catch(() => {});
              } else p.banned.delete(q.peerId);
            }
          }
        }
      };
      await cut(true);
      expect(B.libp2p.getConnections(S.libp2p.peerId)).toHaveLength(0);
      // B's side: a proposal made at generation 1 reaches no sequencer; its head does not move.
      const m = genesisModel();
      await m.proveTrainStep(stepBatch(S.entries()[0]!.proof));
      const lost = await m.proveTrainStep(batch(new Rng(31), 5));
      m.close();
      await pubsubOf(B).publish(B.topics.steps, (await import('../lib/swarm/index.js')).encodeStepMessage(lost.bytes));
      // S's side goes on.
      for (let i = 0; i < 2; i++) expect((await A.propose(batch(new Rng(32 + i), 1))).accepted).toBe(true);
      await new Promise((r) => setTimeout(r, 500));
      expect(B.generation).toBe(1);
      expect(W.generation).toBe(1);
      expect(S.generation).toBe(3);
      const before = S.entries().map((e) => Buffer.from(e.proof).toString('hex'));
      // Heal: the gaters let the peers through again; the cut-off side dials and fetches what it missed.
      await cut(false);
      // A dial can meet a connection the cut is still closing (ECONNRESET in the handshake): tried again, as a peer would.
      await Promise.all([B, W].map((p) => dialAgain(() => p.libp2p.dial(S.libp2p.peerId))));
      await Promise.all([B.catchUp(), W.catchUp()]);
      for (const p of [A, B, W]) expect(p.head.digest).toEqual(S.head.digest);
      await B.ready();
      expect((await B.propose(batch(new Rng(34), 5))).accepted).toBe(true);
      await Promise.all([A, W].map((p) => p.waitFor(4)));
      // No fork, no step lost: the log before the heal is a prefix of the log after it, and everyone holds its replay.
      expect(S.entries().slice(0, 3).map((e) => Buffer.from(e.proof).toString('hex'))).toEqual(before);
      for (const p of [A, B, W]) expect(p.head.digest).toEqual(S.head.digest);
      for (const p of [A, B]) expect((await p.model!.ghost()).digest).toEqual(S.head.digest);
      expect(await replay(S.entries())).toEqual(S.head.digest);
      expect(S.entries().some((e) => Buffer.from(e.proof).equals(Buffer.from(lost.bytes)))).toBe(false);
    } finally {
      await Promise.all(peers.map((p) => p.stop()));
    }
  }, 60_000);
});
