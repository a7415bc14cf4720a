/**
 * Training together (docs/swarm.md): a sequencer, trainers and a verify-only peer over
 * loopback TCP train a bigram model by step proofs; every honest peer ends at the Ghost
 * digest of the sequenced log replayed from generation 0; forgers are refused and cut
 * off; a late joiner and a restarted peer catch up.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Embedding, Model, SparseTensor, decodeProof, pinGhost, verifyTrainStep } from '../lib/index.js';
import type { StepProof } from '../lib/index.js';
import { SwarmPeer, encodeLogEntry, encodeStepMessage } from '../lib/swarm/index.js';
import { Rng } from './helpers/rng.js';

const V = 12;
/** The shared seed and config every peer builds generation 0 from. */
function genesisModel(): Model {
  const table = SparseTensor.fromArray(new Rng(2026).f32(V * V), V);
  return new Model([new Embedding(table)], { training: { loss: 'cross-entropy', lr: 0.05, clipNorm: 10 } });
}

/** A trainer's own data: bigrams of a walk of its own stride. */
function batch(rng: Rng, stride: number): { input: Uint32Array; targets: Uint32Array } {
  const start = rng.int(0, V - 1);
  const input = Uint32Array.from({ length: 6 }, (_, i) => (start + i * stride) % V);
  return { input, targets: Uint32Array.from(input, (x) => (x + stride) % V) };
}

type Pubsub = { publish(topic: string, data: Uint8Array): Promise<unknown> };
const pubsubOf = (p: SwarmPeer): Pubsub => (p.libp2p.services as unknown as { pubsub: Pubsub }).pubsub;

/** Replays the sequenced log from generation 0 on one machine, with no network: the reference. */
async function replay(entries: { generation: number; proof: Uint8Array }[]): Promise<{ digest: Uint8Array; verified: Uint8Array }> {
  const m = genesisModel();
  let pinned = await pinGhost((await m.ghost()).bytes);
  for (const [i, e] of entries.entries()) {
    expect(e.generation).toBe(i);
    pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
    const p = decodeProof(e.proof) as StepProof;
    await m.proveTrainStep({ input: p.input.kind === 'ids' ? p.input.ids : new Uint32Array(0), targets: p.targets.kind === 'classes' ? p.targets.ids : new Uint32Array(0) });
  }
  return { digest: (await m.ghost()).digest, verified: pinned.digest };
}

describe('swarm: untrusted peers train one model', () => {
  let seq: SwarmPeer, A: SwarmPeer, B: SwarmPeer, W: SwarmPeer;
  const extra: SwarmPeer[] = [];
  let genesis: Uint8Array;
  const dirs: string[] = [];

  beforeAll(async () => {
    const g0 = await genesisModel().ghost();
    genesis = g0.digest;
    seq = await SwarmPeer.start({ genesis, sequencer: 'self', ghost: g0 });
    const boot = seq.multiaddrs;
    const common = { genesis, sequencer: seq.peerId, bootstrap: boot };
    A = await SwarmPeer.start({ ...common, model: genesisModel() });
    B = await SwarmPeer.start({ ...common, model: genesisModel() });
    W = await SwarmPeer.start({ ...common, ghost: g0 });
    await Promise.all([A.ready(), B.ready()]);
  }, 30_000);

  afterAll(async () => {
    await Promise.all([seq, A, B, W, ...extra].filter(Boolean).map((p) => p.stop()));
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  /** Every honest peer reaches the sequencer's generation, and all heads are one digest. */
  async function converged(peers: SwarmPeer[]): Promise<Uint8Array> {
    await Promise.all(peers.map((p) => p.waitFor(seq.generation)));
    for (const p of peers) {
      expect(p.generation).toBe(seq.generation);
      expect(Buffer.from(p.head.digest).toString('hex')).toBe(Buffer.from(seq.head.digest).toString('hex'));
      if (p.model) expect((await p.model.ghost()).digest).toEqual(seq.head.digest);
    }
    return seq.head.digest;
  }

  it('two trainers race; stale steps are passed over; every peer ends at the digest of the log replayed from generation 0', async () => {
    const ra = new Rng(1), rb = new Rng(2);
    const results = await Promise.all([A, B].map(async (t, k) => {
      const out = [];
      for (let i = 0; i < 4; i++) out.push(await t.propose(batch(k === 0 ? ra : rb, k === 0 ? 1 : 5)));
      return out;
    }));
    const flat = results.flat();
    const accepted = flat.filter((r) => r.accepted).length;
    expect(accepted).toBeGreaterThanOrEqual(4); // each round sequences at least one
    expect(seq.generation).toBe(accepted);
    expect(seq.stats.stale).toBe(flat.length - accepted);
    const digest = await converged([A, B, W]);
    // The reference: replay the sequencer's log alone, verifying every entry.
    const ref = await replay(seq.entries());
    expect(ref.digest).toEqual(digest);
    expect(ref.verified).toEqual(digest);
    // Every accepted proposal is in the log at its generation.
    for (const r of flat.filter((x) => x.accepted)) expect(Buffer.from(seq.entries()[r.generation]!.proof).equals(Buffer.from(r.proof))).toBe(true);
    expect(W.stats.applied).toBe(seq.generation);
    expect(seq.rejections).toEqual([]);
  }, 60_000);

  it('a forging trainer (a flipped byte, a step against a generation the log never had, a log entry it signs) is refused and cut off; honest training continues', async () => {
    const g0 = await genesisModel().ghost();
    const F = await SwarmPeer.start({ genesis, sequencer: seq.peerId, bootstrap: seq.multiaddrs, model: genesisModel() });
    const G = await SwarmPeer.start({ genesis, sequencer: seq.peerId, bootstrap: seq.multiaddrs, model: genesisModel() });
    extra.push(F, G);
    await Promise.all([F.ready(), G.ready(), F.catchUp(), G.catchUp()]);
    expect(F.head.digest).toEqual(seq.head.digest);
    const before = seq.generation;
    // 1. F: an honest proof at the head with one byte of a row flipped.
    const d = mkdtempSync(join(tmpdir(), 'gt-sw-'));
    dirs.push(d);
    await F.save(join(d, 'f'));
    const copy = (await Model.load(join(d, 'f'))).model;
    const honest = await copy.proveTrainStep(batch(new Rng(7), 3));
    const bad = honest.bytes.slice();
    bad[bad.length - 40] = bad[bad.length - 40]! ^ 1;
    await pubsubOf(F).publish(F.topics.steps, encodeStepMessage(bad));
    // 2. G: a step made against a generation the log never had (a private step first).
    const gd = join(d, 'g');
    await G.save(gd);
    const gm = (await Model.load(gd)).model;
    await gm.proveTrainStep(batch(new Rng(8), 2));
    const ahead = await gm.proveTrainStep(batch(new Rng(9), 2));
    await pubsubOf(G).publish(G.topics.steps, encodeStepMessage(ahead.bytes));
    // 3. A trainer signing a log entry itself (a valid step proof, but not the sequencer's).
    const H = await SwarmPeer.start({ genesis, sequencer: seq.peerId, bootstrap: [...seq.multiaddrs, ...W.multiaddrs], ghost: g0 });
    extra.push(H);
    await new Promise((r) => setTimeout(r, 1500)); // gossipsub learns H's subscriptions
    await pubsubOf(H).publish(H.topics.log, encodeLogEntry(genesis, { generation: seq.generation, proof: honest.bytes }));
    const until = Date.now() + 10_000;
    while ((!seq.banned.has(F.peerId) || !seq.banned.has(G.peerId) || !(seq.banned.has(H.peerId) || W.banned.has(H.peerId))) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    expect(seq.generation).toBe(before);
    expect(seq.banned.has(F.peerId)).toBe(true);
    expect(seq.banned.has(G.peerId)).toBe(true);
    expect(seq.banned.has(H.peerId) || W.banned.has(H.peerId)).toBe(true);
    const reasons = seq.rejections.map((r) => `${r.peer === F.peerId ? 'F' : r.peer === G.peerId ? 'G' : 'H'} ${r.topic} ${r.reason}`);
    expect(reasons.some((r) => r.startsWith('F steps ProofError'))).toBe(true);
    expect(reasons.some((r) => r.startsWith('G steps') && r.includes('never had'))).toBe(true);
    expect(seq.libp2p.getConnections(await (await import('@libp2p/peer-id')).peerIdFromString(F.peerId))).toHaveLength(0);
    // Honest training continues and everyone honest agrees.
    const r = await A.propose(batch(new Rng(10), 1));
    expect(r.accepted).toBe(true);
    expect(seq.generation).toBe(before + 1);
    const digest = await converged([A, B, W]);
    expect((await replay(seq.entries())).digest).toEqual(digest);
  }, 60_000);

  it('a late joiner with only the digest and the shared seed catches up to the same digest; a restarted peer resumes from its own directory', async () => {
    // B saves now, stops; the others take more steps; B restarts from its directory.
    const d = mkdtempSync(join(tmpdir(), 'gt-sw-'));
    dirs.push(d);
    await B.save(join(d, 'b'));
    const savedAt = B.generation;
    await B.stop();
    for (let i = 0; i < 2; i++) expect((await A.propose(batch(new Rng(20 + i), 1))).accepted).toBe(true);
    const loaded = (await Model.load(join(d, 'b'))).model;
    B = await SwarmPeer.start({ genesis, sequencer: seq.peerId, bootstrap: [...A.multiaddrs, ...seq.multiaddrs], model: loaded });
    expect(B.generation).toBe(savedAt);
    await B.catchUp(A.peerId);
    expect(B.stats.fetched).toBe(seq.generation - savedAt);
    // A new peer: builds generation 0 from the shared seed, fetches the whole log from W (verify-only).
    const J = await SwarmPeer.start({ genesis, sequencer: seq.peerId, bootstrap: W.multiaddrs, model: genesisModel() });
    extra.push(J);
    expect(J.generation).toBe(0);
    await J.catchUp(W.peerId);
    expect(J.stats.fetched).toBe(seq.generation);
    expect(J.stats.verified).toBe(seq.generation);
    const digest = await converged([A, B, W, J]);
    expect((await J.model!.ghost()).digest).toEqual(digest);
    // And the joiner follows new entries live; A's next proposal is made on its scratch
    // replica, which replayed B's step (no copy of the model).
    expect((await B.propose(batch(new Rng(30), 5))).accepted).toBe(true);
    await A.waitFor(B.generation); // else A proposes against the generation before (a stale step)
    expect((await A.propose(batch(new Rng(31), 1))).accepted).toBe(true);
    await converged([A, B, W, J]);
  }, 60_000);
});

describe('swarm frames', () => {
  it('round-trip, and hostile bytes (truncation, trailing bytes, counts over the limits, wrong version or type) fail with FormatError', async () => {
    const { decodeLogEntry, decodeLogRequest, decodeLogResponse, decodeStepMessage, encodeLogRequest, encodeLogResponse } = await import('../lib/swarm/index.js');
    const { FormatError } = await import('../lib/index.js');
    const genesis = new Uint8Array(32).fill(7);
    const proof = Uint8Array.from({ length: 50 }, (_, i) => i);
    const entry = encodeLogEntry(genesis, { generation: 2 ** 40, proof });
    expect(decodeLogEntry(entry)).toEqual({ genesis, generation: 2 ** 40, proof });
    expect(decodeStepMessage(encodeStepMessage(proof))).toEqual(proof);
    const req = encodeLogRequest({ requestId: 9, genesis, from: 3, count: 1024 });
    expect(decodeLogRequest(req)).toEqual({ requestId: 9, genesis, from: 3, count: 1024 });
    const res = encodeLogResponse({ requestId: 9, status: 'OK', head: 5, entries: [{ generation: 3, proof }, { generation: 4, proof: proof.subarray(1) }] });
    expect(decodeLogResponse(res).entries.map((e) => e.generation)).toEqual([3, 4]);
    // Header-only requests (type 8) and answers (type 9).
    const hreq = encodeLogRequest({ requestId: 9, genesis, from: 3, count: 2, headers: true });
    expect(decodeLogRequest(hreq)).toEqual({ requestId: 9, genesis, from: 3, count: 2, headers: true });
    const hs = [{ generation: 3, ghost: new Uint8Array(32).fill(1), newGhost: new Uint8Array(32).fill(2) }, { generation: 4, ghost: new Uint8Array(32).fill(2), newGhost: new Uint8Array(32).fill(3) }];
    const hres = encodeLogResponse({ requestId: 9, status: 'OK', head: 5, entries: [], headers: hs });
    expect(hres.length).toBe(2 + 4 + 1 + 8 + 4 + 2 * 72);
    const hdec = decodeLogResponse(hres);
    expect(hdec.entries).toEqual([]);
    expect(hdec.headers!.map((h) => [h.generation, h.ghost[0], h.newGhost[0]])).toEqual([[3, 1, 2], [4, 2, 3]]);
    expect(decodeLogResponse(res).headers).toBeUndefined();
    const hmany = hres.slice();
    new DataView(hmany.buffer).setUint32(2 + 4 + 1 + 8, 1024, true);
    expect(() => decodeLogResponse(hmany)).toThrow(FormatError); // 1024 headers claimed, 2 present: refused before reading them
    const all: [Uint8Array, (b: Uint8Array) => unknown][] = [[entry, decodeLogEntry], [encodeStepMessage(proof), decodeStepMessage], [req, decodeLogRequest], [res, decodeLogResponse], [hreq, decodeLogRequest], [hres, decodeLogResponse]];
    for (const [bytes, decode] of all) {
      for (let n = 0; n < bytes.length; n++) expect(() => decode(bytes.subarray(0, n))).toThrow(FormatError);
      expect(() => decode(Uint8Array.from([...bytes, 0]))).toThrow(FormatError);
      for (const at of [0, 1]) {
        const bad = bytes.slice();
        bad[at] = bad[at]! ^ 0x40;
        expect(() => decode(bad)).toThrow(FormatError);
      }
    }
    // A count over the limit is refused before anything is allocated.
    const big = req.slice();
    new DataView(big.buffer).setUint32(big.length - 4, 1025, true);
    expect(() => decodeLogRequest(big)).toThrow(/outside 1..1024/);
    const many = res.slice();
    new DataView(many.buffer).setUint32(2 + 4 + 1 + 8, 2 ** 31, true);
    expect(() => decodeLogResponse(many)).toThrow(FormatError);
    const long = entry.slice();
    new DataView(long.buffer).setUint32(2 + 32 + 8, 2 ** 30, true);
    expect(() => decodeLogEntry(long)).toThrow(FormatError);
  });
});

describe('swarm: a forging sequencer', () => {
  it('a log entry from the sequencer that does not verify is refused by every peer, which disconnect it; the log does not move', async () => {
    const g0 = await genesisModel().ghost();
    const seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0 });
    const common = { genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs };
    const A = await SwarmPeer.start({ ...common, model: genesisModel() });
    const W = await SwarmPeer.start({ ...common, ghost: g0 });
    try {
      await A.ready();
      expect((await A.propose(batch(new Rng(1), 1))).accepted).toBe(true);
      await W.waitFor(1);
      // The sequencer signs an entry for generation 1 whose proof has one byte flipped.
      const m = genesisModel();
      for (const e of seq.entries()) {
        const p = decodeProof(e.proof) as StepProof;
        await m.proveTrainStep({ input: p.input.kind === 'ids' ? p.input.ids : new Uint32Array(0), targets: p.targets.kind === 'classes' ? p.targets.ids : new Uint32Array(0) });
      }
      const step = await m.proveTrainStep(batch(new Rng(2), 1));
      const bad = step.bytes.slice();
      bad[bad.length - 40] = bad[bad.length - 40]! ^ 1;
      await pubsubOf(seq).publish(seq.topics.log, encodeLogEntry(g0.digest, { generation: 1, proof: bad }));
      const until = Date.now() + 10_000;
      while ((!A.banned.has(seq.peerId) || !W.banned.has(seq.peerId)) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      for (const p of [A, W]) {
        expect(p.banned.has(seq.peerId)).toBe(true);
        expect(p.generation).toBe(1);
        expect(p.rejections[0]).toMatchObject({ peer: seq.peerId, topic: 'log' });
        expect(p.rejections[0]!.reason).toMatch(/^ProofError/);
      }
      expect((await A.model!.ghost()).digest).toEqual(W.head.digest);
    } finally {
      await Promise.all([seq, A, W].map((p) => p.stop()));
    }
  }, 60_000);
});

describe('swarm: a restarted sequencer', () => {
  it('resumes from its log file (fsynced before each entry is published; a torn last record is cut off) and the swarm continues', async () => {
    const { generateKeyPair } = await import('@libp2p/crypto/keys');
    const { appendFileSync, readFileSync: read } = await import('node:fs');
    const key = await generateKeyPair('Ed25519');
    const d = mkdtempSync(join(tmpdir(), 'gt-sw-'));
    const logFile = join(d, 'log.bin');
    const g0 = await genesisModel().ghost();
    let seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0, privateKey: key, logFile });
    const A = await SwarmPeer.start({ genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs, model: genesisModel() });
    const others: SwarmPeer[] = [];
    try {
      await A.ready();
      for (let i = 0; i < 3; i++) expect((await A.propose(batch(new Rng(40 + i), 1))).accepted).toBe(true);
      const head = seq.head.digest;
      const size = read(logFile).length;
      const addr = seq.multiaddrs[0]!.split('/p2p/')[0]!;
      expect(size).toBe(seq.entries().reduce((n, e) => n + 12 + e.proof.length, 0));
      await seq.stop();
      appendFileSync(logFile, Uint8Array.from([3, 0, 0, 0, 0, 0, 0, 0, 200, 0])); // a crash inside the next append
      seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0, privateKey: key, logFile, listen: [addr] });
      expect(seq.peerId).toBe(A.sequencer);
      expect(seq.generation).toBe(3);
      expect(seq.head.digest).toEqual(head);
      expect(read(logFile).length).toBe(size);
      // A trainer joins the restarted sequencer: it fetches the log (served from the
      // file's entries), verifies it, and its proposal is sequenced.
      const J = await SwarmPeer.start({ genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs, model: genesisModel() });
      others.push(J);
      await J.catchUp(seq.peerId);
      expect(J.head.digest).toEqual(head);
      await J.ready();
      expect((await J.propose(batch(new Rng(50), 1))).accepted).toBe(true);
      expect(seq.generation).toBe(4);
      expect((await J.model!.ghost()).digest).toEqual(seq.head.digest);
      // A, connected before the restart, dials the sequencer back by itself (it listens
      // on the same address) and fetches the step it missed.
      await A.waitFor(4);
      await A.ready();
      expect((await A.propose(batch(new Rng(51), 1))).accepted).toBe(true);
      await J.waitFor(5);
      expect((await J.model!.ghost()).digest).toEqual((await A.model!.ghost()).digest);
      // A log file whose entry does not verify is refused at start.
      const bad = new Uint8Array(read(logFile));
      bad[bad.length - 40] = bad[bad.length - 40]! ^ 1;
      const badFile = join(d, 'bad.bin');
      appendFileSync(badFile, bad);
      await expect(SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0, logFile: badFile })).rejects.toThrow(/does not verify/);
    } finally {
      await Promise.all([seq, A, ...others].map((p) => p.stop()));
      rmSync(d, { recursive: true, force: true });
    }
  }, 60_000);
});
