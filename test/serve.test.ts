/**
 * The prover service (lib/serve): served outputs against a local model, a tampering
 * proxy caught by the client with the right reason, the HTTP limits and refusals,
 * the concurrency bound, training with update proofs, and a graceful shutdown in the
 * middle of training that loses no acknowledged step.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Model, OutOfRangeError, StorageError, decodeProof, encodeProof, pinGhost, verifyForward, type ForwardProof } from '../lib/index.js';
import { ProverClient, ProverServer, decodeProofList, encodeForwardRequest, encodeTrainRequest } from '../lib/serve/index.js';
import { toHex } from '../lib/shared/bytes.js';
import { internalNative } from '../lib/tensor/sparse-tensor.js';
import { twoLayerModel } from './helpers/models.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'gt-serve-'));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** POST raw bytes; returns status, reason token and headers. */
async function post(url: string, body: Uint8Array | string, headers: Record<string, string> = {}): Promise<{ status: number; reason: string; headers: Headers; bytes: Uint8Array }> {
  const res = await fetch(url, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers });
  const bytes = new Uint8Array(await res.arrayBuffer());
  let r = '';
  if (!res.ok) r = (JSON.parse(new TextDecoder().decode(bytes)) as { error: string }).error;
  return { status: res.status, reason: r, headers: res.headers, bytes };
}

/**
 * A proxy in front of a prover that passes everything through except what `mutate`
 * changes (path, response bytes) -> bytes; it keeps the upstream's headers.
 */
async function proxy(upstream: string, mutate: (path: string, body: Uint8Array) => Uint8Array | Promise<Uint8Array>): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    void (async () => {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const body = Buffer.concat(chunks);
      const up = await fetch(upstream + req.url, {
        method: req.method ?? 'GET',
        headers: req.headers.authorization ? { authorization: req.headers.authorization } : {},
        ...(req.method === 'POST' ? { body } : {}),
      });
      let out: Uint8Array = new Uint8Array(await up.arrayBuffer());
      if (up.ok) out = await mutate((req.url ?? '').split('?')[0]!, out);
      const h: Record<string, string> = { 'Content-Length': String(out.length) };
      for (const k of ['content-type', 'x-ghost-generation', 'x-ghost-digest']) {
        const v = up.headers.get(k);
        if (v !== null) h[k] = v;
      }
      res.writeHead(up.status, h);
      res.end(out);
    })();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

const TOKEN = 'correct-horse-battery';

describe('forward over HTTP', () => {
  const rng = new Rng(21);
  const { model } = twoLayerModel(rng);
  let server: ProverServer;
  let url: string;
  let client: ProverClient;
  const proxies: Server[] = [];

  beforeAll(async () => {
    server = await ProverServer.fromModel(model, { maxBatch: 64, maxBodyBytes: 64 * 1024 });
    url = await server.listen();
    client = await ProverClient.connect(url, toHex((await model.ghost()).digest));
  });
  afterAll(async () => {
    for (const p of proxies) p.close();
    await server.close();
  });

  it('serves the local model\'s proved output, bit for bit, for batches of 1 and 16', async () => {
    for (const B of [1, 16]) {
      const x = rng.f32(B * 16);
      const served = await client.forward(x);
      const local = await model.prove(x);
      expect(served.rows).toBe(B);
      expect(served.cols).toBe(5);
      expect(Buffer.from(served.output.buffer).equals(Buffer.from(local.output.buffer))).toBe(true);
      // and the fast forward within f32 rounding (an independent code path)
      const fast = await model.forward(x);
      for (let i = 0; i < fast.length; i++) expect(Math.abs(fast[i]! - served.output[i]!)).toBeLessThan(1e-4 * (1 + Math.abs(fast[i]!)));
      // the proof received verifies on its own too
      expect((await verifyForward(await model.ghost(), served.proof)).output).toEqual(served.output);
    }
  });

  it('concurrent requests (more than run at once) each get the proof of their own input', async () => {
    const xs = Array.from({ length: 6 }, (_, i) => rng.f32((i + 1) * 16));
    const served = await Promise.all(xs.map((x) => client.forward(x)));
    for (const [i, x] of xs.entries()) {
      const local = await model.prove(x);
      expect(Buffer.from(served[i]!.output.buffer).equals(Buffer.from(local.output.buffer))).toBe(true);
    }
  });

  it('the Ghost file is served with its generation and digest, and the client refuses another model', async () => {
    const res = await fetch(`${url}/ghost`);
    const bytes = new Uint8Array(await res.arrayBuffer());
    expect(res.headers.get('x-ghost-generation')).toBe('0');
    expect(toHex((await pinGhost(bytes)).digest)).toBe(res.headers.get('x-ghost-digest'));
    const other = twoLayerModel(new Rng(99)).model;
    expect(await reason(ProverClient.connect(url, (await other.ghost()).digest))).toBe('GHOST_MISMATCH');
  });

  it('a tampering server is caught, each way with its reason', async () => {
    const x = rng.f32(2 * 16);
    const otherInput = await model.prove(rng.f32(2 * 16));
    const flipOutput = (b: Uint8Array): Uint8Array => {
      const c = b.slice();
      c[c.length - 4 * 10]! ^= 1; // the low byte of the first output value
      return c;
    };
    const swapRows = (b: Uint8Array): Uint8Array => {
      const p = decodeProof(b) as ForwardProof;
      const o = p.output.data;
      const r0 = o.slice(0, 5);
      o.copyWithin(0, 5, 10);
      o.set(r0, 5);
      return encodeProof(p);
    };
    const swapPattern = (b: Uint8Array): Uint8Array => {
      const p = decodeProof(b) as ForwardProof;
      const blk = p.layers[0]!.blocks[1]!;
      [blk.payload[0], blk.payload[1]] = [blk.payload[1]!, blk.payload[0]!];
      return encodeProof(p);
    };
    const cases: [string, (path: string, b: Uint8Array) => Uint8Array, string][] = [
      ['a flipped output byte', (_p, b) => flipOutput(b), 'OUTPUT_MISMATCH'],
      ['two output rows swapped', (_p, b) => swapRows(b), 'OUTPUT_MISMATCH'],
      ['two revealed patterns swapped', (_p, b) => swapPattern(b), 'ROOT_MISMATCH'],
      ['an honest proof of another input', () => otherInput.bytes, 'INPUT_MISMATCH'],
      ['a truncated proof', (_p, b) => b.subarray(0, b.length - 3), 'TRUNCATED'],
    ];
    for (const [what, mutate, want] of cases) {
      const px = await proxy(url, (path, b) => (path === '/forward' ? mutate(path, b) : b));
      proxies.push(px.server);
      const c = await ProverClient.connect(px.url, (await model.ghost()).digest);
      expect(`${what}: ${await reason(c.forward(x))}`).toBe(`${what}: ${want}`);
    }
    // the untampered path through a pass-through proxy is accepted
    const clean = await proxy(url, (_p, b) => b);
    proxies.push(clean.server);
    const c = await ProverClient.connect(clean.url, (await model.ghost()).digest);
    expect((await c.forward(x)).rows).toBe(2);
  });

  it('413 for a body or a batch beyond the limits, 400 for malformed input, 404 and 405', async () => {
    const big = await post(`${url}/forward`, new Uint8Array(64 * 1024 + 1));
    expect([big.status, big.reason]).toEqual([413, 'BODY_TOO_LARGE']);
    const batch = await post(`${url}/forward`, encodeForwardRequest({ kind: 'f32', rows: 65, cols: 16, data: new Float32Array(65 * 16) }));
    expect([batch.status, batch.reason]).toEqual([413, 'BATCH_TOO_LARGE']);
    const good = encodeForwardRequest({ kind: 'f32', rows: 1, cols: 16, data: rng.f32(16) });
    const cases: [string, Uint8Array | string, string][] = [
      ['truncated', good.subarray(0, good.length - 1), 'BAD_BODY'],
      ['trailing byte', Uint8Array.from([...good, 0]), 'BAD_BODY'],
      ['unknown kind', Uint8Array.from([7, ...good.subarray(1)]), 'BAD_BODY'],
      ['wrong width', encodeForwardRequest({ kind: 'f32', rows: 2, cols: 8, data: new Float32Array(16) }), 'BAD_INPUT'],
      ['ids for a vector model', encodeForwardRequest({ kind: 'ids', ids: Uint32Array.of(1, 2) }), 'BAD_INPUT'],
      ['NaN', encodeForwardRequest({ kind: 'f32', rows: 1, cols: 16, data: new Float32Array(16).fill(NaN) }), 'BAD_BODY'],
      ['empty', new Uint8Array(0), 'BAD_BODY'],
      ['text', 'hello', 'BAD_BODY'],
    ];
    for (const [what, body, want] of cases) {
      const r = await post(`${url}/forward`, body);
      expect(`${what}: ${r.status} ${r.reason}`).toBe(`${what}: 400 ${want}`);
    }
    expect((await fetch(`${url}/nope`)).status).toBe(404);
    const get = await fetch(`${url}/forward`);
    expect([get.status, get.headers.get('allow')]).toEqual([405, 'POST']);
    // training is disabled on this server
    expect((await post(`${url}/train`, new Uint8Array(4), { Authorization: `Bearer ${TOKEN}` })).status).toBe(403);
    // the server still answers after all that
    expect((await client.forward(rng.f32(16))).rows).toBe(1);
  });

  it('the concurrency bound: beyond the running and queued requests, 503 with Retry-After, and every accepted one verifies', async () => {
    const s = await ProverServer.fromModel(model, { maxConcurrent: 1, maxQueue: 1 });
    const u = await s.listen();
    const body = encodeForwardRequest({ kind: 'f32', rows: 64, cols: 16, data: rng.f32(64 * 16) });
    const results = await Promise.all(Array.from({ length: 8 }, () => post(`${u}/forward`, body)));
    const ok = results.filter((r) => r.status === 200);
    const busy = results.filter((r) => r.status === 503);
    expect(ok.length + busy.length).toBe(8);
    expect(ok.length).toBeGreaterThanOrEqual(2);
    expect(busy.length).toBeGreaterThanOrEqual(1);
    for (const r of busy) expect([r.reason, r.headers.get('retry-after')]).toEqual(['BUSY', '1']);
    const g = await model.ghost();
    for (const r of ok) expect((await verifyForward(g, r.bytes)).rows).toBe(64);
    expect(s.stats.running + s.stats.queued).toBe(0);
    await s.close();
  });
});

describe('timeouts', () => {
  it('a client that sends its body too slowly gets 408 and frees its slot; close() does not wait for it longer', async () => {
    const { model } = twoLayerModel(new Rng(51));
    const server = await ProverServer.fromModel(model, { requestTimeoutMs: 500 });
    const url = new URL(await server.listen());
    const { connect } = await import('node:net');
    const sock = connect(Number(url.port), url.hostname);
    let answer = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => (answer += d));
    const t0 = Date.now();
    sock.write('POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789');
    await new Promise((r) => sock.once('close', r));
    const waited = Date.now() - t0;
    expect(answer).toMatch(/^HTTP\/1\.1 408/);
    expect(waited).toBeGreaterThanOrEqual(400);
    expect(waited).toBeLessThan(5_000);
    // The server still serves.
    const c = await ProverClient.connect(url.href, (await model.ghost()).digest);
    expect((await c.forward(new Rng(1).f32(16))).rows).toBe(1);
    await server.close();
  });
});

describe('request bodies in flight', () => {
  it('bodies are held against maxInflightBytes across connections: past it 503 BUSY with Retry-After before reading; released when answered', async () => {
    const { model } = twoLayerModel(new Rng(53));
    const server = await ProverServer.fromModel(model, { maxBodyBytes: 40_000, maxInflightBytes: 64_000 });
    const url = new URL(await server.listen());
    const { connect } = await import('node:net');
    const open = (head: string): import('node:net').Socket => {
      const sock = connect(Number(url.port), url.hostname);
      sock.on('error', () => {});
      sock.write(`POST /forward HTTP/1.1\r\nHost: x\r\n${head}\r\n\r\n`);
      return sock;
    };
    const until = async (f: () => boolean): Promise<void> => {
      for (let i = 0; i < 500 && !f(); i++) await new Promise((r) => setTimeout(r, 10));
    };
    // A Content-Length of 30000 is held at once, before any of the body came.
    const a = open('Content-Length: 30000');
    await until(() => server.stats.bodyBytes === 30_000);
    expect(server.stats.bodyBytes).toBe(30_000);
    // A chunked body is held as its chunks come: 20000 now.
    const b = open('Transfer-Encoding: chunked');
    b.write(`${(20_000).toString(16)}\r\n${'x'.repeat(20_000)}\r\n`);
    await until(() => server.stats.bodyBytes === 50_000);
    expect(server.stats.bodyBytes).toBe(50_000);
    // 50000 + 20000 > 64000: refused before its body is read; a smaller one still fits.
    const refused = await post(url.href + 'forward', new Uint8Array(20_000));
    expect([refused.status, refused.reason, refused.headers.get('retry-after')]).toEqual([503, 'BUSY', '1']);
    const fits = await post(url.href + 'forward', encodeForwardRequest({ kind: 'f32', rows: 1, cols: 16, data: new Rng(3).f32(16) }));
    expect(fits.status).toBe(200);
    // The chunked one passing the limit with its next chunk is refused too, and lets go of its 20000.
    b.write(`${(15_000).toString(16)}\r\n${'x'.repeat(15_000)}\r\n`);
    await until(() => server.stats.bodyBytes === 30_000);
    expect(server.stats.bodyBytes).toBe(30_000);
    // The first one, answered (400: not a forward request), lets go of its 30000.
    a.write('x'.repeat(30_000));
    await until(() => server.stats.bodyBytes === 0);
    expect(server.stats.bodyBytes).toBe(0);
    expect((await post(url.href + 'forward', new Uint8Array(40_000))).reason).toBe('BAD_BODY');
    a.destroy();
    b.destroy();
    await expect(ProverServer.fromModel(model, { maxBodyBytes: 1000, maxInflightBytes: 999 })).rejects.toThrow(OutOfRangeError);
    await server.close();
  });
});

describe('refused bodies: the answer is not overtaken by a reset', () => {
  // A socket destroyed while its peer still sends makes the kernel answer with a reset,
  // which can discard the answer at the client. After a 503 before the body was read,
  // the server half-closes and drains the rest instead (lingerClose in lib/serve/server.ts).
  it('a refused client reads its 503, writes the rest of its body without error and sees a clean end; one that goes on past maxBodyBytes is cut off', async () => {
    const { model } = twoLayerModel(new Rng(54));
    const server = await ProverServer.fromModel(model, { maxBodyBytes: 40_000, maxInflightBytes: 40_000 });
    const url = new URL(await server.listen());
    const { connect } = await import('node:net');
    // Holds the whole limit: every other body is refused before it is read.
    const holder = connect(Number(url.port), url.hostname);
    holder.on('error', () => {});
    holder.write('POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 40000\r\n\r\n');
    for (let i = 0; i < 500 && server.stats.bodyBytes !== 40_000; i++) await new Promise((r) => setTimeout(r, 10));
    expect(server.stats.bodyBytes).toBe(40_000);

    /** Posts with `framing` and `first`, waits for the answer's head, then writes `pieces` pieces of body (stopping at an error or close), then ends. */
    const refused = (framing: string, piece: (i: number) => string, pieces: number, first = '') =>
      new Promise<{ head: string; error: string | null; wrote: number; ended: boolean }>((resolve) => {
        const sock = connect({ port: Number(url.port), host: url.hostname, allowHalfOpen: true });
        let head = '';
        let error: string | null = null;
        let wrote = 0;
        let ended = false;
        let over = false;
        const done = (): void => {
          if (over) return;
          over = true;
          sock.destroy();
          resolve({ head, error, wrote, ended });
        };
        sock.on('error', (e: NodeJS.ErrnoException) => {
          error = e.code ?? e.message;
          done();
        });
        sock.on('end', () => (ended = true));
        sock.on('close', done);
        const write = (i: number): void => {
          if (over) return;
          if (i === pieces) {
            // A short wait for a reset the last writes may have drawn, then a clean end.
            setTimeout(() => sock.end(), 50);
            return;
          }
          const p = piece(i);
          wrote += p.length;
          if (sock.write(p)) setImmediate(() => write(i + 1));
          else sock.once('drain', () => write(i + 1));
        };
        sock.on('data', (d: Buffer) => {
          const started = head.includes('\r\n\r\n');
          head += d.toString('latin1');
          if (!started && head.includes('\r\n\r\n')) write(0);
        });
        sock.write(`POST /forward HTTP/1.1\r\nHost: x\r\n${framing}\r\n\r\n${first}`);
      });

    // Content-Length: refused before the body; the body follows in 8 pieces.
    const a = await refused('Content-Length: 40000', () => 'x'.repeat(5_000), 8);
    expect(a.head).toMatch(/^HTTP\/1\.1 503 /);
    expect(a.head).toMatch(/\r\nconnection: close\r\n/i);
    expect([a.error, a.wrote, a.ended]).toEqual([null, 40_000, true]);
    // Chunked: refused at its first chunk, in the middle of reading the body; the rest follows.
    const chunk = `${(5_000).toString(16)}\r\n${'y'.repeat(5_000)}\r\n`;
    const b = await refused('Transfer-Encoding: chunked', (i) => (i < 6 ? chunk : `${chunk}0\r\n\r\n`), 7, chunk);
    expect(b.head).toMatch(/^HTTP\/1\.1 503 /);
    expect([b.error, b.ended]).toEqual([null, true]);
    // A request pipelined behind a refused body is not served (its connection is closing).
    const d = await refused('Content-Length: 40000', (i) => (i < 7 ? 'x'.repeat(5_000) : `${'x'.repeat(5_000)}GET /health HTTP/1.1\r\nHost: x\r\n\r\n`), 8);
    expect(d.head).toMatch(/^HTTP\/1\.1 503 /);
    expect(d.head.match(/HTTP\/1\.1 \d{3}/g)).toHaveLength(1);
    // Draining is bounded: a chunked body that never ends is cut off (a reset, or a close)
    // soon after maxBodyBytes more bytes, not after the 64 MiB the client would send.
    const big = `${(64 * 1024).toString(16)}\r\n${'z'.repeat(64 * 1024)}\r\n`;
    const c = await refused('Transfer-Encoding: chunked', () => big, 1024, big);
    expect(c.head).toMatch(/^HTTP\/1\.1 413 /); // its first chunk is past maxBodyBytes already
    expect(c.wrote).toBeLessThan(1024 * big.length);
    // The server still serves.
    holder.destroy();
    const cl = await ProverClient.connect(url.href, (await model.ghost()).digest);
    expect((await cl.forward(new Rng(5).f32(16))).rows).toBe(1);
    await server.close();
  });
});

describe('aborted requests', () => {
  it('a client that hangs up in the middle of its body is logged as 400 ABORTED and the server goes on', async () => {
    const { model } = twoLayerModel(new Rng(52));
    const logs: { status: number; reason?: string }[] = [];
    const server = await ProverServer.fromModel(model, { onLog: (e) => logs.push(e) });
    const url = new URL(await server.listen());
    const { connect } = await import('node:net');
    const sock = connect(Number(url.port), url.hostname);
    sock.write('POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123');
    for (let i = 0; i < 100 && server.stats.served.rejected === 0; i++) {
      if (i === 5) sock.destroy();
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(logs).toEqual([expect.objectContaining({ status: 400, reason: 'ABORTED' })]);
    const c = await ProverClient.connect(url.href, (await model.ghost()).digest);
    expect((await c.forward(new Rng(2).f32(16))).rows).toBe(1);
    await server.close();
  });
});

describe('training over HTTP', () => {
  it('401 without the token, update proofs that the client follows, and a stale replay refused', async () => {
    const rng = new Rng(31);
    const { model } = twoLayerModel(rng);
    const ghost0 = await model.ghost();
    const server = await ProverServer.fromModel(model, { trainToken: TOKEN, optimizer: { kind: 'adam', lr: 0.01 } });
    const url = await server.listen();
    const body = encodeTrainRequest([{ tensor: 1, ids: Uint32Array.of(3), grads: rng.f32(16) }]);
    for (const auth of [undefined, 'Bearer wrong-token-here', `Basic ${TOKEN}`, `Bearer ${TOKEN}x`]) {
      const r = await post(`${url}/train`, body, auth ? { Authorization: auth } : {});
      expect(`${auth}: ${r.status} ${r.reason} ${r.headers.get('www-authenticate')}`).toBe(`${auth}: 401 UNAUTHORIZED Bearer realm="ghost-tensor"`);
    }
    expect(server.generation).toBe(0);

    const trainer = await ProverClient.connect(url, ghost0.digest, { token: TOKEN });
    const reader = await ProverClient.connect(url, ghost0.digest);
    const x = rng.f32(3 * 16);
    const before = await reader.forward(x);
    // A step over two tensors, with a repeated id (coalesced as the optimizer does).
    const step = await trainer.train([
      { tensor: 0, ids: Uint32Array.of(5, 9, 5), grads: rng.f32(3 * 16) },
      { tensor: 4, ids: Uint32Array.of(7), grads: rng.f32(5) },
    ]);
    expect(step.generation).toBe(2);
    expect(step.proofs.length).toBe(2);
    expect(toHex(step.ghost.digest)).toBe(toHex((await model.ghost()).digest));
    expect(server.generation).toBe(2);
    // The reader follows the roots through the update proofs when it sees a newer proof.
    const after = await reader.forward(x);
    expect(after.generation).toBe(2);
    expect(toHex(reader.ghost.digest)).toBe(toHex(step.ghost.digest));
    expect(Buffer.from(after.output.buffer).equals(Buffer.from((await model.prove(x)).output.buffer))).toBe(true);

    // Forward requests racing a training step: each answer verifies against the Ghost file
    // before or after the step (never a mix), and the reader follows the step when it sees it.
    const racing = await Promise.all([
      ...Array.from({ length: 4 }, () => reader.forward(rng.f32(2 * 16))),
      trainer.train([{ tensor: 1, ids: Uint32Array.of(8, 9), grads: rng.f32(32) }]).then(() => null),
      ...Array.from({ length: 4 }, () => reader.forward(rng.f32(2 * 16))),
    ]);
    for (const r of racing) if (r) expect([2, 3]).toContain(r.generation);
    expect(trainer.generation).toBe(3);
    await reader.sync();
    expect(toHex(reader.ghost.digest)).toBe(toHex((await model.ghost()).digest));

    // A proxy that replays the proof from before the step: valid, same input, old Ghost file.
    const stale = await proxy(url, (path, b) => (path === '/forward' ? before.proof : b));
    const c = await ProverClient.connect(stale.url, ghost0.digest, { generation: 0 });
    expect(c.generation).toBe(3);
    expect(await reason(c.forward(x))).toBe('GHOST_MISMATCH');
    stale.server.close();

    // A proxy that forges the catch-up: the last update proof's gradient changed.
    const forged = await proxy(url, (path, b) => {
      if (path !== '/updates') return b;
      const l = decodeProofList(b);
      const p = decodeProof(l.proofs[1]!);
      if (p.kind === 'update') p.grads[0] = p.grads[0]! + 1;
      l.proofs[1] = encodeProof(p);
      const w = Buffer.alloc(12 + l.proofs.reduce((n, q) => n + 4 + q.length, 0));
      w.writeUInt32LE(l.firstGeneration, 0);
      w.writeUInt32LE(l.proofs.length, 8);
      let at = 12;
      for (const q of l.proofs) {
        w.writeUInt32LE(q.length, at);
        w.set(q, at + 4);
        at += 4 + q.length;
      }
      return new Uint8Array(w);
    });
    expect(await reason(ProverClient.connect(forged.url, ghost0.digest, { generation: 0 }))).toBe('UPDATE_MISMATCH');
    forged.server.close();

    // A proxy that answers a training step with the proofs of other gradients.
    const other = await proxy(url, async (path, b) => {
      if (path !== '/train') return b;
      const l = decodeProofList(b);
      const p = decodeProof(l.proofs[0]!);
      if (p.kind === 'update') p.grads[0] = p.grads[0]! * 2;
      const q = encodeProof(p);
      const w = Buffer.alloc(16 + q.length);
      w.writeUInt32LE(l.firstGeneration, 0);
      w.writeUInt32LE(1, 8);
      w.writeUInt32LE(q.length, 12);
      w.set(q, 16);
      return new Uint8Array(w);
    });
    const t2 = await ProverClient.connect(other.url, (await model.ghost()).digest, { token: TOKEN });
    expect(await reason(t2.train([{ tensor: 1, ids: Uint32Array.of(3), grads: rng.f32(16) }]))).toBe('INPUT_MISMATCH');
    other.server.close();
    await server.close();
  });

  it('a graceful shutdown in the middle of training loses no acknowledged step', async () => {
    const rng = new Rng(41);
    const { model } = twoLayerModel(rng);
    const dir = join(tmp(), 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    const grads = () => [
      { tensor: 0, ids: Uint32Array.from({ length: 40 }, () => rng.int(0, 299)), grads: rng.f32(40 * 16) },
      { tensor: 4, ids: Uint32Array.of(rng.int(0, 143)), grads: rng.f32(5) },
    ];
    // Two steps, then a third in flight when close() is called, then a fourth after.
    await client.train(grads());
    await client.train(grads());
    const third = client.train(grads());
    // close() while the third step runs (the scheduler holds it).
    for (let i = 0; i < 100_000 && server.stats.running === 0; i++) await new Promise((r) => setImmediate(r));
    expect(server.stats.running).toBe(1);
    const closing = server.close();
    const thirdOutcome = await reason(third);
    // (retried while the deadline allows: a closed server refuses connections)
    const fourth = await reason(client.train(grads(), { deadlineMs: 300 }));
    await closing;
    // The step in flight was finished and acknowledged; the fourth was refused.
    expect(thirdOutcome).toBe('ACCEPTED');
    expect(['SHUTTING_DOWN', 'UNREACHABLE', 'DEADLINE_EXCEEDED']).toContain(fourth);
    const acked = 6;
    expect(client.generation).toBe(acked);
    // Reload from disk: the tensor roots are those of the last acknowledged step.
    const { model: again, ghost } = await Model.load(dir);
    expect(toHex(ghost.digest)).toBe(toHex(client.ghost.digest));
    again.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(client.ghost.manifest.tensors[i]!.root)));
    again.close();
    // and the served history restarts where it stopped: a client pinned at generation 0 catches up.
    const restarted = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(restarted.generation).toBe(acked);
    const u2 = await restarted.listen();
    const late = await ProverClient.connect(u2, g0.bytes, { generation: 0, token: TOKEN });
    expect(late.generation).toBe(acked);
    expect(toHex(late.ghost.digest)).toBe(toHex(client.ghost.digest));
    await late.train(grads());
    expect(late.generation).toBe(acked + 2);
    await restarted.close();
    expect(readFileSync(join(dir, 'ghost.bin')).equals(Buffer.from(late.ghost.bytes))).toBe(true);
  });

  it('a stop between the log and ghost.bin (tensor files ahead, or behind, the log) is repaired at the next start', async () => {
    const rng = new Rng(61);
    const { model } = twoLayerModel(rng);
    const base = tmp();
    const dir = join(base, 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    const grads = () => [
      { tensor: 0, ids: Uint32Array.of(rng.int(0, 299), rng.int(0, 299)), grads: rng.f32(2 * 16) },
      { tensor: 4, ids: Uint32Array.of(rng.int(0, 143)), grads: rng.f32(5) },
    ];
    const run = async (steps: number): Promise<ProverClient> => {
      const s = await ProverServer.open(dir, { trainToken: TOKEN });
      const c = await ProverClient.connect(await s.listen(), g0.bytes, { generation: 0, token: TOKEN });
      for (let i = 0; i < steps; i++) await c.train(grads());
      await s.close();
      return c;
    };
    const at2 = await run(1);
    expect(at2.generation).toBe(2);
    const snap = join(base, 'snap');
    cpSync(dir, snap, { recursive: true });
    const at4 = await run(1);
    expect(at4.generation).toBe(4);
    const log4 = statSync(join(dir, 'updates.bin')).size;

    // The tensor files and the log hold generation 4, ghost.bin still 2: resume at 4.
    cpSync(join(snap, 'ghost.bin'), join(dir, 'ghost.bin'));
    const a = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(a.generation).toBe(4);
    expect(toHex(a.ghost.digest)).toBe(toHex(at4.ghost.digest));
    await a.close();
    expect(statSync(join(dir, 'updates.bin')).size).toBe(log4);

    // The log holds generation 4, the tensor files and ghost.bin 2 (never acknowledged): resume at 2, log cut back.
    rmSync(join(dir, 'tensors'), { recursive: true });
    cpSync(join(snap, 'tensors'), join(dir, 'tensors'), { recursive: true });
    cpSync(join(snap, 'ghost.bin'), join(dir, 'ghost.bin'));
    // read-only, it refuses rather than repair
    expect(await reason(ProverServer.open(dir))).toBe('NON_CANONICAL');
    const b = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(b.generation).toBe(2);
    expect(toHex(b.ghost.digest)).toBe(toHex(at2.ghost.digest));
    expect(statSync(join(dir, 'updates.bin')).size).toBe(statSync(join(snap, 'updates.bin')).size);
    // and a client pinned at generation 0 follows the history as it now stands
    const c = await ProverClient.connect(await b.listen(), g0.bytes, { generation: 0, token: TOKEN });
    expect(c.generation).toBe(2);
    await c.train(grads());
    expect(c.generation).toBe(4);
    await b.close();
  });
});

describe('a training step the server cannot prove is refused whole', () => {
  /** Everything a restart would read, to check that a refusal changed nothing. */
  const snapshot = (dir: string): string =>
    ['ghost.bin', 'updates.bin', 'ghost-0.bin'].map((f) => { try { return createHash('sha256').update(readFileSync(join(dir, f))).digest('hex'); } catch { return '-'; } }).join(',');

  it('a huge but finite gradient (v = g^2 overflows) is 422 NON_FINITE, the earlier entry undone; the server trains and restarts after', async () => {
    const rng = new Rng(71);
    const { model } = twoLayerModel(rng);
    const dir = join(tmp(), 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    await client.train([{ tensor: 4, ids: Uint32Array.of(7), grads: rng.f32(5) }]);
    const files = snapshot(dir), digest = toHex(client.ghost.digest);
    const huge = rng.f32(16);
    huge[3] = 1e30;
    const r = await post(`${url}/train`, encodeTrainRequest([{ tensor: 4, ids: Uint32Array.of(9), grads: rng.f32(5) }, { tensor: 0, ids: Uint32Array.of(5), grads: huge }]), { Authorization: `Bearer ${TOKEN}` });
    expect(`${r.status} ${r.reason}`).toBe('422 NON_FINITE');
    // Nothing changed: not the generation, not the first entry's tensor, not a file.
    expect(server.generation).toBe(1);
    expect(toHex(server.ghost.digest)).toBe(digest);
    expect(snapshot(dir)).toBe(files);
    server.model.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(client.ghost.manifest.tensors[i]!.root)));
    const updates = decodeProofList(new Uint8Array(await (await fetch(`${url}/updates?from=0`)).arrayBuffer()));
    expect(updates.proofs.length).toBe(1);
    // The next step is proved, verified by a client, and survives a restart; so does a state
    // near the edge (g = 1e19: v = 1e35, finite), which the next proof of that row reveals.
    const large = rng.f32(16);
    large[3] = 1e19;
    await client.train([{ tensor: 0, ids: Uint32Array.of(5), grads: large }, { tensor: 4, ids: Uint32Array.of(9), grads: rng.f32(5) }]);
    expect(client.generation).toBe(3);
    await server.close();
    expect(snapshot(dir)).not.toBe(files);
    const again = await ProverServer.open(dir, { trainToken: TOKEN });
    const late = await ProverClient.connect(await again.listen(), g0.bytes, { generation: 0, token: TOKEN });
    expect(toHex(late.ghost.digest)).toBe(toHex(client.ghost.digest));
    await late.train([{ tensor: 0, ids: Uint32Array.of(5), grads: rng.f32(16) }]);
    expect(late.generation).toBe(4);
    const p = decodeProof(decodeProofList(new Uint8Array(await (await fetch(`${again.url}/updates?from=3`)).arrayBuffer())).proofs[0]!);
    expect(p.kind === 'update' && p.state.v[3]! > 1e34).toBe(true);
    await again.close();
  });

  it('a damaged moment in a tensor file is refused when the directory opens (StorageError STATE_MISMATCH), not served', async () => {
    const rng = new Rng(72);
    const { model } = twoLayerModel(rng);
    const dir = join(tmp(), 'model');
    await model.save(dir, { optimizerState: true });
    // Row 5 of tensor 0: v[0] = -1e-30. The optimizer state is not under the Merkle root,
    // but each row's state has its own check in the tensor file (docs/storage.md).
    const path = join(dir, 'tensors', '0.gtt');
    const f = readFileSync(path);
    const vOff = Number(f.readBigUInt64LE(128 + 2 * 16));
    expect(Number(f.readBigUInt64LE(128 + 2 * 16 + 8))).toBe(300 * 16 * 4);
    f.writeFloatLE(-1e-30, vOff + 5 * 16 * 4);
    writeFileSync(path, f);
    const err = await ProverServer.open(dir, { trainToken: TOKEN }).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).reason).toBe('STATE_MISMATCH');
  });

  it('a step whose own proof does not verify (a damaged moment in memory) is 500 SELF_CHECK_FAILED: not logged, undone', async () => {
    const rng = new Rng(72);
    const { model } = twoLayerModel(rng);
    const dir = join(tmp(), 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    const logs: { status: number; reason?: string }[] = [];
    const server = await ProverServer.open(dir, { trainToken: TOKEN, onLog: (e) => logs.push(e) });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    await client.train([{ tensor: 4, ids: Uint32Array.of(7), grads: rng.f32(5) }]);
    // Damage row 5's moment in memory, past the file's checks: v[0] = -1e-30. The optimizer
    // steps from it (the new v, 1e-3 g^2 - 1e-30, is positive), but the proof reveals the
    // old v, which no verifier accepts, so the server's own check refuses the step.
    const t0 = server.model.tensors[0]!;
    const st = internalNative(t0).optimState(Uint32Array.of(5));
    const info = internalNative(t0).optimInfo()!;
    const goodV = st.v.slice();
    st.v[0] = -1e-30;
    internalNative(t0).optimRestore(Uint32Array.of(5), t0.gather([5]), st.m, st.v, st.steps, st.marks, info.steps, info.logDecay);
    const files = snapshot(dir), digest = toHex(client.ghost.digest);
    const r = await post(`${url}/train`, encodeTrainRequest([{ tensor: 4, ids: Uint32Array.of(9), grads: rng.f32(5) }, { tensor: 0, ids: Uint32Array.of(5, 6), grads: rng.f32(32) }]), { Authorization: `Bearer ${TOKEN}` });
    expect(`${r.status} ${r.reason}`).toBe('500 SELF_CHECK_FAILED');
    expect(logs.some((e) => e.status === 500 && e.reason === 'SELF_CHECK_FAILED')).toBe(true);
    expect(server.generation).toBe(1);
    expect(toHex(server.ghost.digest)).toBe(digest);
    expect(snapshot(dir)).toBe(files);
    server.model.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(client.ghost.manifest.tensors[i]!.root)));
    // Steps on other rows go on, and the client verifies them.
    await client.train([{ tensor: 0, ids: Uint32Array.of(6), grads: rng.f32(16) }]);
    expect(client.generation).toBe(2);
    // Undo the damage (a checkpoint would write it, and the file's state check then refuses
    // the directory: STATE_INVALID), then the directory opens again and its history
    // verifies from generation 0.
    const now = internalNative(t0).optimInfo()!;
    internalNative(t0).optimRestore(Uint32Array.of(5), t0.gather([5]), st.m, goodV, st.steps, st.marks, now.steps, now.logDecay);
    await server.close();
    const again = await ProverServer.open(dir, { trainToken: TOKEN });
    const late = await ProverClient.connect(await again.listen(), g0.bytes, { generation: 0 });
    expect(toHex(late.ghost.digest)).toBe(toHex(client.ghost.digest));
    await again.close();
  });
});
