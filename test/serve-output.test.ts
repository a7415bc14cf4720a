/**
 * The server's reused output buffers (lib/shared/buffer-pool.ts, docs/serving.md
 * "Performance"): the pool hands a buffer out once until it is given back, and the
 * server gives an answer's buffer back only when node:http has handed the whole answer
 * to the OS. Checked against model.prove() of the same input (the same bytes), with a
 * client that holds its answer unread while other requests are proved and answered:
 * a buffer reused too early would overwrite the answer still waiting to be sent.
 */
import { connect } from 'node:net';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { HopfieldLookup, InvalidArgumentError, Model, PatternCache, SearchBatcher, SparseTensor, pinGhost, verifyForward } from '../lib/index.js';
import { callNative } from '../lib/shared/errors.js';
import { internalNative } from '../lib/tensor/sparse-tensor.js';
import { ProverServer, encodeForwardRequest } from '../lib/serve/index.js';
import { BufferPool } from '../lib/shared/buffer-pool.js';
import { Rng } from './helpers/rng.js';

describe('BufferPool', () => {
  it('reuses a given-back buffer for a size it fits, never hands one out twice, ignores foreign or repeated gives, keeps its limits', () => {
    const pool = new BufferPool(300_000, 2);
    const a = pool.take(100_000), b = pool.take(100_000);
    expect(a.length).toBe(100_000);
    expect(a.buffer).not.toBe(b.buffer);
    pool.give(a);
    pool.give(a); // twice: once only
    pool.give(new Uint8Array(100_000)); // not the pool's
    expect(pool.free.buffers).toBe(1);
    const c = pool.take(90_000);
    expect(c.buffer).toBe(a.buffer);
    expect(c.length).toBe(90_000);
    expect(pool.take(90_000).buffer).not.toBe(a.buffer); // c holds it
    // Not reused for a size far below its capacity, nor one above it.
    pool.give(c);
    expect(pool.take(1000).buffer).not.toBe(a.buffer);
    expect(pool.take(200_000).buffer).not.toBe(a.buffer);
    expect(pool.free.buffers).toBe(1);
    // Limits: at most 2 buffers, at most 300,000 bytes free (the largest leave first).
    pool.give(b);
    const big = pool.take(250_000);
    pool.give(big);
    expect(pool.free.buffers).toBeLessThanOrEqual(2);
    expect(pool.free.bytes).toBeLessThanOrEqual(300_000);
  });
});

describe('gather into a given array (the row pool of Model.proveBytes)', () => {
  it('writes the rows gather() returns into exactly that array; refuses a wrong length, a view of the rows, an overlap with ids', () => {
    const rng = new Rng(5);
    const t = SparseTensor.fromArray(rng.f32(64 * 8), 8);
    const raw = internalNative(t);
    // As the library calls it (native errors become the typed ones).
    const nat = { gather: (ids: Uint32Array, into: Float32Array) => callNative(() => raw.gather(ids, into)) };
    const ids = Uint32Array.from([3, 0, 63, 3]);
    const into = new Float32Array(32).fill(Number.NaN);
    expect(nat.gather(ids, into)).toBe(into);
    expect([...into]).toEqual([...t.gather(ids)]);
    expect([...into.subarray(8, 16)]).toEqual([...t.row(0)]);
    expect(() => nat.gather(ids, new Float32Array(31))).toThrow(InvalidArgumentError);
    expect(() => nat.gather(ids, new Float32Array(33))).toThrow(InvalidArgumentError);
    // A row view is the tensor's own memory: writing there would change the rows it reads.
    const view = t.row(10);
    expect(() => nat.gather(Uint32Array.from([1]), view)).toThrow(/overlaps the tensor/);
    expect([...t.row(10)]).toEqual([...view]);
    // ids and into over one buffer: ids are checked once, then read while rows are written.
    const shared = new ArrayBuffer(64 * 4);
    const sharedIds = new Uint32Array(shared, 0, 4);
    sharedIds.set([1, 2, 3, 4]);
    expect(() => nat.gather(sharedIds, new Float32Array(shared, 0, 32))).toThrow(/overlaps ids/);
    expect(nat.gather(sharedIds, new Float32Array(shared, 16, 32))).toBeInstanceOf(Float32Array);
  });
});

describe('Model.proveBytes: rows gathered into reused arrays', () => {
  it('gives the bytes and output of prove(), proofs running at once, with and without a session cache and held keys', async () => {
    const rng = new Rng(17);
    const D = 96, N = 512;
    const model = new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(N * D), D), values: SparseTensor.fromArray(rng.f32(N * 5), 5), k: 16, similarity: 'cosine', normalize: true })]);
    await model.commit();
    const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
    const batcher = new SearchBatcher();
    const inputs = Array.from({ length: 24 }, (_, i) => rng.f32((1 + (i % 4) * 3) * D));
    // Several rounds, so the pool hands out again the arrays earlier proofs gave back;
    // eight proofs at once, so one proof's arrays are in use while others take theirs.
    for (let round = 0; round < 3; round++) {
      const want = await Promise.all(inputs.map(async (x) => model.prove(x)));
      const got = await Promise.all(inputs.map(async (x) => model.proveBytes(x, { batcher })));
      got.forEach((g, i) => {
        expect(hex(g.bytes)).toBe(hex(want[i]!.bytes));
        expect([...g.output]).toEqual([...want[i]!.output]);
      });
    }
    // A session: two caches in step, one per path; held keys reveal the key tensor whole.
    for (const revealKeys of ['none', 'all'] as const) {
      const a = new PatternCache(4096), b = new PatternCache(4096);
      for (const x of inputs.slice(0, 8)) {
        const want = await model.prove(x, { cache: a, revealKeys });
        const got = await model.proveBytes(x, { cache: b, revealKeys });
        expect(hex(got.bytes)).toBe(hex(want.bytes));
      }
    }
    model.close();
  });
});

describe('Model.ghost(): the last pinned Ghost file, while nothing changed', () => {
  it('is returned again until a write or a parameter changes the manifest; then it is the new file, and proofs verify against it', async () => {
    const rng = new Rng(23);
    const D = 16, N = 64;
    const keys = SparseTensor.fromArray(rng.f32(N * D), D);
    const layer = new HopfieldLookup({ keys, values: SparseTensor.fromArray(rng.f32(N * 3), 3), k: 4, beta: 2 });
    const model = new Model([layer]);
    const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
    /** The Ghost file as pinning the manifest anew gives it (no cache). */
    const fresh = async (): Promise<string> => hex((await pinGhost(model.manifest())).digest);
    const g0 = await model.ghost();
    expect(await model.ghost()).toBe(g0);
    expect(hex(g0.digest)).toBe(await fresh());
    const x = rng.f32(2 * D);
    // A write to one row: a new root, so a new file.
    keys.scatter([5], rng.f32(D));
    const g1 = await model.ghost();
    expect(hex(g1.digest)).not.toBe(hex(g0.digest));
    expect(hex(g1.digest)).toBe(await fresh());
    await verifyForward(await pinGhost(g1.bytes), (await model.proveBytes(x)).bytes);
    // A trained beta (in place, no tensor write): a new file too.
    layer.betaParam[0] = 3;
    const g2 = await model.ghost();
    expect(hex(g2.digest)).not.toBe(hex(g1.digest));
    expect(hex(g2.digest)).toBe(await fresh());
    await expect(verifyForward(await pinGhost(g1.bytes), (await model.prove(x)).bytes)).rejects.toThrow();
    await verifyForward(await pinGhost(g2.bytes), (await model.prove(x)).bytes);
    // A caller that changes the manifest it got back gets the right file next time all the same.
    (g2.manifest.tensors[0]!.root as Uint8Array)[0]! ^= 1;
    expect(hex((await model.ghost()).digest)).toBe(await fresh());
    model.close();
  });
});

describe('a prover server reusing its output buffers', () => {
  const rng = new Rng(31);
  const D = 1024, N = 8192;
  let model: Model;
  let server: ProverServer;
  let url: URL;
  beforeAll(async () => {
    model = new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(N * D), D), values: SparseTensor.fromArray(rng.f32(N * 4), 4), k: 64 })]);
    server = await ProverServer.fromModel(model, { maxConcurrent: 2, maxBatch: 64 });
    url = new URL(await server.listen());
  });
  afterAll(async () => {
    await server.close();
    model.close();
  });

  /** A raw keep-alive request whose answer this test reads when it chooses (the server's writes wait meanwhile). */
  function rawForward(body: Uint8Array): { read: () => Promise<Uint8Array> } {
    const sock = connect(Number(url.port), url.hostname);
    const head = `POST /forward HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
    sock.write(head);
    sock.write(body);
    sock.pause();
    return {
      read: () => new Promise((resolve, reject) => {
        const chunks: Buffer[] = [];
        sock.on('data', (c: Buffer) => chunks.push(c));
        sock.on('error', reject);
        sock.on('end', () => {
          const all = Buffer.concat(chunks);
          const at = all.indexOf('\r\n\r\n');
          expect(all.subarray(0, at).toString('latin1')).toMatch(/^HTTP\/1\.1 200/);
          resolve(new Uint8Array(all.subarray(at + 4)));
        });
        sock.resume();
      }),
    };
  }

  it('answers held unread while others are proved are still their own proofs, byte for byte', async () => {
    const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
    const inputs = Array.from({ length: 6 }, (_, i) => rng.f32((i % 2 ? 64 : 60) * D));
    const expected = await Promise.all(inputs.map(async (x) => hex((await model.prove(x)).bytes)));
    for (let round = 0; round < 2; round++) {
      // Each answer is about 13 MiB, more than loopback's socket buffers (4 MiB here): the kernel takes part of it, the rest waits in node:http for the reader.
      const held = inputs.slice(0, 3).map((x) => rawForward(encodeForwardRequest({ kind: 'f32', rows: x.length / D, cols: D, data: x })));
      await new Promise((r) => setTimeout(r, 300));
      // Meanwhile: more proofs of other inputs, answered and read (their buffers taken from the pool).
      for (let i = 3; i < inputs.length; i++) {
        const x = inputs[i]!;
        const r = await fetch(new URL('/forward', url), { method: 'POST', body: Buffer.from(encodeForwardRequest({ kind: 'f32', rows: x.length / D, cols: D, data: x })) });
        expect(r.status).toBe(200);
        expect(hex(new Uint8Array(await r.arrayBuffer()))).toBe(expected[i]);
      }
      const got = await Promise.all(held.map((h) => h.read()));
      got.forEach((b, i) => expect(hex(b)).toBe(expected[i]));
    }
  });
});
