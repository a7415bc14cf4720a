/**
 * Joining a swarm by a checkpoint (docs/swarm.md, "Joining by a checkpoint"): a new peer
 * fetches the Ghost file, the tensor files and the optimizer state of a recent checkpoint
 * from a peer, checks that its digest is the one the sequencer's log names at that
 * generation and every root against the fetched bytes, then verifies the log from there.
 * Peers serving a damaged checkpoint (a flipped byte in a tensor file, another
 * generation's optimizer state, a Ghost file off the chain) are caught and struck, and the
 * joiner takes the checkpoint from an honest peer.
 */
import { copyFileSync, mkdtempSync, openSync, readFileSync, readdirSync, closeSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { Stream } from '@libp2p/interface';
import { afterAll, describe, expect, it } from 'vitest';

import { Embedding, FormatError, Model, SparseTensor, decodeProof, pinGhost, verifyTrainStep } from '../lib/index.js';
import type { StepProof } from '../lib/index.js';
import {
  SWARM_CHECKPOINT_PROTOCOL, SwarmPeer, decodeCheckpointRequest, decodeCheckpointResponse, encodeCheckpointRequest, encodeCheckpointResponse,
} from '../lib/swarm/index.js';
import { deadlineSignal, readFrame, writeFrame } from '../lib/p2p/host.js';
import { Rng } from './helpers/rng.js';

const V = 12;
function genesisModel(): Model {
  const table = SparseTensor.fromArray(new Rng(2026).f32(V * V), V);
  return new Model([new Embedding(table)], { training: { loss: 'cross-entropy', optimizer: 'adam', lr: 0.05, clipNorm: 10 } });
}
function batch(rng: Rng, stride: number): { input: Uint32Array; targets: Uint32Array } {
  const start = rng.int(0, V - 1);
  const input = Uint32Array.from({ length: 6 }, (_, i) => (start + i * stride) % V);
  return { input, targets: Uint32Array.from(input, (x) => (x + stride) % V) };
}

/** A hostile checkpoint server: answers the checkpoint protocol with the files of `dir` (whatever they hold). */
async function serveDir(peer: SwarmPeer, dir: string, generation: number): Promise<void> {
  const ghost = await pinGhost(new Uint8Array(readFileSync(join(dir, 'ghost.bin'))));
  const names = ['ghost.bin', ...readdirSync(dir).filter((n) => n === 'step-state.bin'), ...readdirSync(join(dir, 'tensors')).map((f) => `tensors/${f}`)];
  const files = names.map((name) => ({ name, size: readFileSync(join(dir, name)).length }));
  await peer.libp2p.unhandle(SWARM_CHECKPOINT_PROTOCOL);
  await peer.libp2p.handle(SWARM_CHECKPOINT_PROTOCOL, async (stream: Stream) => {
    const q = decodeCheckpointRequest(await readFrame(stream, 96, 5000));
    let out: Uint8Array;
    if (q.what === 'list') out = encodeCheckpointResponse({ requestId: q.requestId, status: 'OK', what: 'list', generation, digest: ghost.digest, files });
    else {
      const f = files[q.file]!;
      const n = Math.min(q.length, f.size - q.offset);
      const bytes = new Uint8Array(n);
      const fd = openSync(join(dir, f.name), 'r');
      readSync(fd, bytes, 0, n, q.offset);
      closeSync(fd);
      out = encodeCheckpointResponse({ requestId: q.requestId, status: 'OK', what: 'chunk', bytes });
    }
    const signal = deadlineSignal(5000);
    await writeFrame(stream, out, signal);
    await stream.close({ signal });
  });
}

/** A copy of a saved model directory (Model.load read-only, Model.save, close). */
async function copyModel(from: string, to: string): Promise<void> {
  const m = (await Model.load(from, { readOnly: true })).model;
  await m.save(to);
  m.close();
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('swarm: joining by a checkpoint', () => {
  it('a header-only log request: the sequencer answers each entry\'s Ghost digests (72 bytes an entry), equal to the chain of the log replayed on one model; past the head, OK and empty', async () => {
    const { SWARM_LOG_PROTOCOL, decodeLogResponse, encodeLogRequest } = await import('../lib/swarm/index.js');
    const g0 = await genesisModel().ghost();
    const seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0 });
    const A = await SwarmPeer.start({ genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs, model: genesisModel() });
    try {
      await A.ready();
      for (let i = 0; i < 5; i++) expect((await A.propose(batch(new Rng(300 + i), 1 + i))).accepted).toBe(true);
      const ask = async (from: number, count: number, headers: boolean): Promise<{ bytes: number; res: ReturnType<typeof decodeLogResponse> }> => {
        const stream = await A.libp2p.dialProtocol(seq.libp2p.peerId, SWARM_LOG_PROTOCOL);
        const signal = deadlineSignal(10_000);
        await writeFrame(stream, encodeLogRequest({ requestId: 7, genesis: g0.digest, from, count, headers }), signal);
        await stream.close({ signal });
        const payload = await readFrame(stream, 2 ** 26, 10_000);
        return { bytes: payload.length, res: decodeLogResponse(payload) };
      };
      const { bytes, res } = await ask(1, 10, true);
      expect(res.status).toBe('OK');
      expect(res.entries).toEqual([]);
      expect(res.headers!.map((h) => h.generation)).toEqual([1, 2, 3, 4]);
      expect(bytes).toBe(2 + 4 + 1 + 8 + 4 + 4 * 72);
      // The reference: the chain of Ghost digests the log replayed on one model goes through.
      const m = genesisModel();
      const chain = [(await m.ghost()).digest];
      for (const e of seq.entries()) {
        const p = decodeProof(e.proof) as StepProof;
        if (p.input.kind !== 'ids' || p.targets.kind !== 'classes') throw new Error('a bigram step');
        chain.push((await m.proveTrainStep({ input: p.input.ids, targets: p.targets.ids })).ghost.digest);
      }
      m.close();
      for (const h of res.headers!) {
        expect(Buffer.from(h.ghost).equals(Buffer.from(chain[h.generation]!))).toBe(true);
        expect(Buffer.from(h.newGhost).equals(Buffer.from(chain[h.generation + 1]!))).toBe(true);
      }
      // Whole entries cost the proofs; a request beyond the head is OK and empty.
      expect((await ask(1, 10, false)).bytes).toBeGreaterThan(4 * 1000);
      const past = await ask(5, 3, true);
      expect(past.res.status).toBe('OK');
      expect(past.res.headers).toEqual([]);
      expect(past.res.head).toBe(5);
    } finally {
      await Promise.all([A.stop(), seq.stop()]);
    }
  }, 60_000);

  it('three peers serving damaged checkpoints are struck; the joiner installs an honest one, verifies the log from it and follows the swarm', async () => {
    const d = mkdtempSync(join(tmpdir(), 'gt-swcp-'));
    dirs.push(d);
    const g0 = await genesisModel().ghost();
    const genesis = g0.digest;
    const seq = await SwarmPeer.start({ genesis, sequencer: 'self', ghost: g0 });
    const common = { genesis, sequencer: seq.peerId, bootstrap: seq.multiaddrs };
    const A = await SwarmPeer.start({ ...common, model: genesisModel() });
    const peers: SwarmPeer[] = [seq, A];
    try {
      await A.ready();
      for (let i = 0; i < 3; i++) expect((await A.propose(batch(new Rng(i), 1 + i))).accepted).toBe(true);
      await A.save(join(d, 'g3'));
      for (let i = 3; i < 6; i++) expect((await A.propose(batch(new Rng(i), 1 + (i % 5)))).accepted).toBe(true);
      await A.save(join(d, 'g6'));
      // X1: a flipped byte in a value of the tensor file.
      const x1 = join(d, 'x1');
      await copyModel(join(d, 'g6'), x1);
      const tf = join(x1, 'tensors', '0.gtt');
      const t = new Uint8Array(readFileSync(tf));
      const valuesAt = Number(new DataView(t.buffer).getBigUint64(128, true));
      t[valuesAt + 13] = t[valuesAt + 13]! ^ 0x10;
      writeFileSync(tf, t);
      // X2: generation 6's Ghost file and tensors with generation 3's optimizer state.
      const x2 = join(d, 'x2');
      await copyModel(join(d, 'g6'), x2);
      copyFileSync(join(d, 'g3', 'step-state.bin'), join(x2, 'step-state.bin'));
      // X3: a whole, self-consistent model at step 6 that is not the log's: three private steps from generation 3.
      const off = (await Model.load(join(d, 'g3'))).model;
      for (let i = 0; i < 3; i++) await off.proveTrainStep(batch(new Rng(100 + i), 7));
      const x3 = join(d, 'x3');
      await off.save(x3);
      off.close();
      // X4: lists its checkpoint at generation 50, beyond the end of the log.
      const off7 = (await Model.load(join(d, 'g6'))).model;
      await off7.proveTrainStep(batch(new Rng(200), 3));
      const x4 = join(d, 'x4');
      await off7.save(x4);
      off7.close();
      const X = await Promise.all([x1, x2, x3, x4].map(async (dir, k) => {
        const p = await SwarmPeer.start({ ...common, ghost: g0 });
        peers.push(p);
        await serveDir(p, dir, k === 3 ? 50 : 6);
        return p;
      }));
      // Two more steps: the honest checkpoint (A's head) is at generation 8.
      for (let i = 6; i < 8; i++) expect((await A.propose(batch(new Rng(i), 2))).accepted).toBe(true);
      const J = await SwarmPeer.start({ ...common, bootstrap: [...seq.multiaddrs, ...A.multiaddrs, ...X.flatMap((x) => x.multiaddrs)], model: genesisModel(), verifyFrom: 'checkpoint' });
      peers.push(J);
      await J.catchUp(undefined, { checkpointPeers: [...X.map((x) => x.peerId), A.peerId] });
      const reasons = new Map(J.rejections.map((r) => [r.peer, `${r.topic} ${r.reason}`]));
      expect(reasons.get(X[0]!.peerId)).toMatch(/^checkpoint StorageError: ROOT_MISMATCH: row 0 does not match/);
      expect(reasons.get(X[1]!.peerId)).toMatch(/^checkpoint ProofError: ROOT_MISMATCH: the optimizer state/);
      expect(reasons.get(X[2]!.peerId)).toMatch(/^checkpoint .*not the log's there/);
      expect(reasons.get(X[3]!.peerId)).toMatch(/^checkpoint .*beyond the end/);
      for (const x of X) expect(J.banned.has(x.peerId)).toBe(true);
      expect(J.banned.has(A.peerId)).toBe(false);
      expect(J.stats.checkpoints).toBe(1);
      expect(J.stats.fetched).toBe(0); // the checkpoint was the head: no entry to verify after it
      expect(J.generation).toBe(8);
      expect(J.head.digest).toEqual(seq.head.digest);
      expect((await J.model!.ghost()).digest).toEqual(seq.head.digest);
      // The joiner follows the log from the checkpoint and trains: its proposal is sequenced.
      expect((await A.propose(batch(new Rng(20), 1))).accepted).toBe(true);
      await J.waitFor(9);
      await J.ready();
      expect((await J.propose(batch(new Rng(21), 5))).accepted).toBe(true);
      await A.waitFor(10);
      expect((await A.model!.ghost()).digest).toEqual(seq.head.digest);
      expect((await J.model!.ghost()).digest).toEqual(seq.head.digest);
      // The reference: the sequencer's log replayed from generation 0 with every step verified.
      let pinned = g0;
      const m = genesisModel();
      for (const e of seq.entries()) {
        pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
        const p = decodeProof(e.proof) as StepProof;
        await m.proveTrainStep({ input: p.input.kind === 'ids' ? p.input.ids : new Uint32Array(0), targets: p.targets.kind === 'classes' ? p.targets.ids : new Uint32Array(0) });
      }
      expect(pinned.digest).toEqual(J.head.digest);
      expect((await m.ghost()).digest).toEqual(J.head.digest);
      // A verify-only joiner takes only the Ghost file of a checkpoint, then verifies the rest.
      const W = await SwarmPeer.start({ ...common, bootstrap: [...seq.multiaddrs, ...A.multiaddrs], ghost: g0 });
      peers.push(W);
      for (const until = Date.now() + 10_000; !W.libp2p.getPeers().some((p) => p.toString() === A.peerId) && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
      await W.catchUp(undefined, { verifyFrom: 'checkpoint', checkpointPeers: [A.peerId] });
      expect(W.stats.checkpoints).toBe(1);
      expect(W.head.digest).toEqual(seq.head.digest);
      // verifyFrom 0 (the default): the whole log, every entry verified.
      const R = await SwarmPeer.start({ ...common, ghost: g0 });
      peers.push(R);
      await R.catchUp();
      expect(R.stats.checkpoints).toBe(0);
      expect(R.stats.fetched).toBe(10);
      expect(R.head.digest).toEqual(seq.head.digest);
    } finally {
      await Promise.all(peers.map((p) => p.stop()));
    }
  }, 60_000);
});

describe('swarm checkpoint frames', () => {
  it('round-trip, and hostile bytes (truncation, trailing bytes, names outside the layout, counts over the limits) fail with FormatError', () => {
    const genesis = new Uint8Array(32).fill(3), digest = new Uint8Array(32).fill(9);
    const list = encodeCheckpointResponse({ requestId: 4, status: 'OK', what: 'list', generation: 2 ** 40, digest, files: [{ name: 'ghost.bin', size: 10 }, { name: 'tensors/12.gtt', size: 2 ** 33 }] });
    expect(decodeCheckpointResponse(list)).toEqual({ requestId: 4, status: 'OK', what: 'list', generation: 2 ** 40, digest, files: [{ name: 'ghost.bin', size: 10 }, { name: 'tensors/12.gtt', size: 2 ** 33 }] });
    const chunk = encodeCheckpointResponse({ requestId: 5, status: 'OK', what: 'chunk', bytes: Uint8Array.of(1, 2, 3) });
    const lq = encodeCheckpointRequest({ requestId: 1, genesis, what: 'list' });
    const cq = encodeCheckpointRequest({ requestId: 2, genesis, what: 'chunk', digest, file: 3, offset: 2 ** 35, length: 2 ** 20 });
    expect(decodeCheckpointRequest(cq)).toEqual({ requestId: 2, genesis, what: 'chunk', digest, file: 3, offset: 2 ** 35, length: 2 ** 20 });
    const all: [Uint8Array, (b: Uint8Array) => unknown][] = [[list, decodeCheckpointResponse], [chunk, decodeCheckpointResponse], [lq, decodeCheckpointRequest], [cq, decodeCheckpointRequest]];
    for (const [bytes, decode] of all) {
      for (let n = 0; n < bytes.length; n++) expect(() => decode(bytes.subarray(0, n))).toThrow(FormatError);
      expect(() => decode(Uint8Array.from([...bytes, 0]))).toThrow(FormatError);
    }
    // Names that would leave the joiner's directory, or are not Model.save's layout.
    /** A list response naming `names` (each of size 1), written byte by byte, bypassing the encoder's checks. */
    const rawList = (names: string[]): Uint8Array => {
      const parts: number[] = [1, 7, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, ...digest, names.length, 0, 0, 0];
      for (const n of names) {
        const b = new TextEncoder().encode(n);
        parts.push(b.length, ...b, 1, 0, 0, 0, 0, 0, 0, 0);
      }
      return Uint8Array.from(parts);
    };
    expect(decodeCheckpointResponse(rawList(['ghost.bin', 'step-state.bin', 'tensors/0.gtt']))).toMatchObject({ status: 'OK', generation: 1 });
    for (const name of ['../ghost.bin', '/etc/passwd', 'tensors/../x', 'tensors/01.gtt', 'ghost.bin\0', 'tensors/1.gtt/', 'tensors\\1.gtt', 'other.bin', 'tensors/1234567.gtt']) {
      expect(() => decodeCheckpointResponse(rawList(['ghost.bin', name])), name).toThrow(/file name/);
    }
    // A duplicate name, a file count and a chunk length over the limits.
    const dup = encodeCheckpointResponse({ requestId: 4, status: 'OK', what: 'list', generation: 1, digest, files: [{ name: 'ghost.bin', size: 1 }, { name: 'ghost.bin', size: 1 }] });
    expect(() => decodeCheckpointResponse(dup)).toThrow(/twice/);
    const many = list.slice();
    new DataView(many.buffer).setUint32(2 + 4 + 1 + 1 + 8 + 32, 4097, true);
    expect(() => decodeCheckpointResponse(many)).toThrow(FormatError);
    const longChunk = cq.slice();
    new DataView(longChunk.buffer).setUint32(cq.length - 4, 2 ** 20 + 1, true);
    expect(() => decodeCheckpointRequest(longChunk)).toThrow(/outside/);
    expect(() => encodeCheckpointRequest({ requestId: 2, genesis, what: 'chunk', digest, file: 4096, offset: 0, length: 1 })).toThrow();
  });
});
