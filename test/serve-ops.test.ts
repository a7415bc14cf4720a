/**
 * Operating the prover service: GET /metrics (parsed here by an independent reader of
 * the Prometheus text format: counters move with requests, histograms are cumulative
 * and their _count is the number of requests, labels are escaped), JSON request logs
 * (one object per line, the same keys every time), and the client's retries and
 * deadlines (a server stopped and restarted on the same directory and port during a
 * loop of calls; a deadline that passes; 503 with Retry-After from a fake server), and
 * a client pinned to generation 0's digest following the update chain.
 */
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { RemoteError, decodeProof, verifyForward } from '../lib/index.js';
import { ProverClient, ProverServer, encodeForwardRequest, encodeTrainRequest } from '../lib/serve/index.js';
import { Counter, Histogram, Registry } from '../lib/serve/metrics.js';
import { toHex } from '../lib/shared/bytes.js';
import { twoLayerModel } from './helpers/models.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const TOKEN = 'correct-horse-battery';
const dirs: string[] = [];
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'gt-ops-'));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

// ---- an independent reader of the Prometheus text exposition format (0.0.4) ----

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Exposition {
  help: Map<string, string>;
  type: Map<string, string>;
  samples: Sample[];
}

/** Parses the exposition; throws on any line it does not understand. */
function parseExposition(text: string): Exposition {
  const help = new Map<string, string>(), type = new Map<string, string>();
  const samples: Sample[] = [];
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a line feed');
  for (const line of text.slice(0, -1).split('\n')) {
    let m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      help.set(m[1]!, m[2]!);
      continue;
    }
    m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (m) {
      if (type.has(m[1]!)) throw new Error(`TYPE twice for ${m[1]}`);
      type.set(m[1]!, m[2]!);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      // name="value" pairs, values with \\, \" and \n escapes, separated by commas.
      const body = m[2].slice(1, -1);
      let i = 0;
      while (i < body.length) {
        const nm = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(body.slice(i));
        if (!nm) throw new Error(`bad labels: ${m[2]}`);
        i += nm[0].length;
        let v = '';
        for (;;) {
          const c = body[i++];
          if (c === undefined) throw new Error(`unterminated label value: ${m[2]}`);
          if (c === '"') break;
          if (c === '\\') {
            const e = body[i++];
            if (e === 'n') v += '\n';
            else if (e === '\\' || e === '"') v += e;
            else throw new Error(`bad escape \\${e}`);
          } else if (c === '\n') throw new Error('raw line feed in a label value');
          else v += c;
        }
        if (nm[1]! in labels) throw new Error(`label ${nm[1]} twice`);
        labels[nm[1]!] = v;
        if (body[i] === ',') i++;
        else if (i !== body.length) throw new Error(`bad labels: ${m[2]}`);
      }
    }
    const raw = m[3]!;
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : raw === 'NaN' ? NaN : Number(raw);
    if (!/^[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+|Inf|NaN)$/.test(raw) || (Number.isNaN(value) && raw !== 'NaN')) throw new Error(`bad value ${raw}`);
    samples.push({ name: m[1]!, labels, value });
  }
  // Every sample belongs to a family with HELP and TYPE (histograms: _bucket, _sum, _count).
  for (const s of samples) {
    const fam = type.has(s.name) ? s.name : s.name.replace(/_(bucket|sum|count)$/, '');
    if (!type.has(fam) || !help.has(fam)) throw new Error(`${s.name} has no TYPE / HELP`);
    if (fam !== s.name && type.get(fam) !== 'histogram') throw new Error(`${s.name}: suffix on a ${type.get(fam)}`);
    if (type.get(fam) === 'counter' && !fam.endsWith('_total')) throw new Error(`counter ${fam} without _total`);
  }
  return { help, type, samples };
}

function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const hits = e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v) && Object.keys(s.labels).length === Object.keys(labels).length);
  if (hits.length > 1) throw new Error(`${name} ${JSON.stringify(labels)}: ${hits.length} samples`);
  return hits[0]?.value ?? 0;
}

/** Checks every series of a histogram: buckets cumulative in le order, +Inf = _count. Returns the series by their labels (le left out). */
function checkHistogram(e: Exposition, name: string): Map<string, { count: number; sum: number }> {
  const series = new Map<string, { le: number; v: number }[]>();
  for (const s of e.samples.filter((x) => x.name === `${name}_bucket`)) {
    const { le, ...rest } = s.labels;
    expect(le).toBeDefined();
    const k = JSON.stringify(rest);
    if (!series.has(k)) series.set(k, []);
    series.get(k)!.push({ le: le === '+Inf' ? Infinity : Number(le), v: s.value });
  }
  const out = new Map<string, { count: number; sum: number }>();
  for (const [k, buckets] of series) {
    const sorted = [...buckets].sort((a, b) => a.le - b.le);
    for (let i = 1; i < sorted.length; i++) expect(sorted[i]!.v).toBeGreaterThanOrEqual(sorted[i - 1]!.v);
    expect(sorted[sorted.length - 1]!.le).toBe(Infinity);
    const labels = JSON.parse(k) as Record<string, string>;
    const count = value(e, `${name}_count`, labels), sum = value(e, `${name}_sum`, labels);
    expect(sorted[sorted.length - 1]!.v).toBe(count);
    out.set(k, { count, sum });
  }
  return out;
}

async function scrape(url: string): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

describe('GET /metrics', () => {
  it('counters move with requests; histograms are cumulative and count the requests; bytes in and out add up', async () => {
    const rng = new Rng(71);
    const { model } = twoLayerModel(rng);
    const server = await ProverServer.fromModel(model);
    const url = await server.listen();
    try {
      const client = await ProverClient.connect(url, (await model.ghost()).digest);
      const before = await scrape(url);
      const fwdBefore = value(before, 'ghost_tensor_requests_total', { route: '/forward', method: 'POST', status: '200' });
      let sentBytes = 0, proofBytes = 0;
      const N = 7;
      for (let i = 0; i < N; i++) {
        const x = rng.f32((1 + (i % 3)) * 16);
        sentBytes += encodeForwardRequest({ kind: 'f32', rows: x.length / 16, cols: 16, data: x }).length;
        proofBytes += (await client.forward(x)).proof.length;
      }
      // Refusals: a body that does not decode (400 on /forward), an unknown route, a wrong method.
      const bad = await fetch(`${url}/forward`, { method: 'POST', body: new Uint8Array([9, 9, 9]) });
      expect(bad.status).toBe(400);
      const badBytes = (await bad.arrayBuffer()).byteLength;
      expect((await fetch(`${url}/no"where\\`)).status).toBe(404);
      expect((await fetch(`${url}/forward`)).status).toBe(405);
      const after = await scrape(url);

      expect(value(after, 'ghost_tensor_requests_total', { route: '/forward', method: 'POST', status: '200' }) - fwdBefore).toBe(N);
      expect(value(after, 'ghost_tensor_requests_total', { route: '/forward', method: 'POST', status: '400' })).toBe(1);
      expect(value(after, 'ghost_tensor_requests_total', { route: '/forward', method: 'GET', status: '405' })).toBe(1);
      // An unknown path is counted under route="other" (bounded label values), never as its own label.
      expect(value(after, 'ghost_tensor_requests_total', { route: 'other', method: 'GET', status: '404' })).toBe(1);
      expect(after.samples.some((s) => Object.values(s.labels).some((v) => v.includes('where')))).toBe(false);
      // The first scrape is counted in the second (a scrape counts once answered).
      expect(value(after, 'ghost_tensor_requests_total', { route: '/metrics', method: 'GET', status: '200' })).toBe(1);

      const req = checkHistogram(after, 'ghost_tensor_request_duration_seconds');
      const fwdRequests = [...after.samples].filter((s) => s.name === 'ghost_tensor_requests_total' && s.labels.route === '/forward').reduce((n, s) => n + s.value, 0);
      expect(req.get(JSON.stringify({ route: '/forward' }))!.count).toBe(fwdRequests);
      expect(fwdRequests).toBe(N + 2);
      const prove = checkHistogram(after, 'ghost_tensor_prove_duration_seconds');
      const p = prove.get(JSON.stringify({ kind: 'forward' }))!;
      expect(p.count).toBe(N);
      expect(p.sum).toBeGreaterThan(0);
      // Proving is part of the whole request.
      expect(req.get(JSON.stringify({ route: '/forward' }))!.sum).toBeGreaterThanOrEqual(p.sum);

      expect(value(after, 'ghost_tensor_request_bytes_total', { route: '/forward' }) - value(before, 'ghost_tensor_request_bytes_total', { route: '/forward' })).toBe(sentBytes + 3);
      expect(value(after, 'ghost_tensor_response_bytes_total', { route: '/forward' }) - value(before, 'ghost_tensor_response_bytes_total', { route: '/forward' })).toBeGreaterThanOrEqual(proofBytes + badBytes);
      expect(value(after, 'ghost_tensor_generation')).toBe(server.generation);
      expect(value(after, 'ghost_tensor_queue_depth')).toBe(0);
      expect(value(after, 'ghost_tensor_inflight_body_bytes')).toBe(0);
      expect(value(after, 'ghost_tensor_uptime_seconds')).toBeGreaterThanOrEqual(value(before, 'ghost_tensor_uptime_seconds'));
      const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
      expect(value(after, 'ghost_tensor_build_info', { version })).toBe(1);
      expect(after.type.get('ghost_tensor_request_duration_seconds')).toBe('histogram');
      expect(after.type.get('ghost_tensor_requests_total')).toBe('counter');
    } finally {
      await server.close();
    }
  });

  it('the writer escapes label values and HELP text so a reader gets them back', () => {
    const r = new Registry();
    const c = r.add(new Counter('x_total', 'help with \\ and\nline feed', ['a']));
    const hostile = ['a"b', 'back\\slash', 'line\nfeed', '\\"\n', '} 1\nx_total{a="y"} 99', ''];
    hostile.forEach((v, i) => c.inc({ a: v }, i + 1));
    const h = r.add(new Histogram('y_seconds', 'h', ['q'], [0.5, 1]));
    h.observe({ q: 'z"' }, 0.25);
    h.observe({ q: 'z"' }, 0.75);
    h.observe({ q: 'z"' }, 7);
    const e = parseExposition(r.render());
    expect(e.help.get('x_total')).toBe('help with \\\\ and\\nline feed');
    hostile.forEach((v, i) => expect(value(e, 'x_total', { a: v })).toBe(i + 1));
    expect(e.samples.filter((s) => s.name === 'x_total')).toHaveLength(hostile.length);
    expect(value(e, 'y_seconds_bucket', { q: 'z"', le: '0.5' })).toBe(1);
    expect(value(e, 'y_seconds_bucket', { q: 'z"', le: '1' })).toBe(2);
    expect(value(e, 'y_seconds_bucket', { q: 'z"', le: '+Inf' })).toBe(3);
    expect(value(e, 'y_seconds_sum', { q: 'z"' })).toBe(8);
    checkHistogram(e, 'y_seconds');
  });
});

describe('JSON logs', () => {
  it('one JSON object per line, the same keys in the same order, the values of the request', async () => {
    const rng = new Rng(72);
    const { model } = twoLayerModel(rng);
    const lines: string[] = [];
    const server = await ProverServer.fromModel(model, { log: { format: 'json', write: (l) => lines.push(l) } });
    const url = await server.listen();
    try {
      const client = await ProverClient.connect(url, (await model.ghost()).digest);
      const x = rng.f32(2 * 16);
      const sent = encodeForwardRequest({ kind: 'f32', rows: 2, cols: 16, data: x }).length;
      const proof = (await client.forward(x)).proof.length;
      expect((await fetch(`${url}/forward`, { method: 'POST', body: new Uint8Array([7]) })).status).toBe(400);
      expect((await fetch(`${url}/a\nb"c`.replace('\n', '%0A'))).status).toBe(404);
      expect((await fetch(`${url}/health`)).status).toBe(200);
      await fetch(`${url}/metrics`);
      expect(lines.length).toBeGreaterThanOrEqual(6); // connect: /ghost?digest, /updates; forward; 400; 404; health; metrics
      const keys = ['time', 'level', 'event', 'method', 'path', 'route', 'status', 'reason', 'ms', 'proveMs', 'bytesIn', 'bytesOut', 'generation'];
      const objs = lines.map((l) => {
        expect(l).not.toMatch(/\n/);
        const o = JSON.parse(l) as Record<string, unknown>;
        expect(Object.keys(o)).toEqual(keys);
        expect(Number.isNaN(Date.parse(o.time as string))).toBe(false);
        expect(o.event).toBe('request');
        expect(typeof o.ms).toBe('number');
        return o;
      });
      const fwd = objs.filter((o) => o.route === '/forward');
      expect(fwd.map((o) => o.status)).toEqual([200, 400]);
      expect(fwd[0]).toMatchObject({ method: 'POST', path: '/forward', level: 'info', reason: null, bytesIn: sent, bytesOut: proof, generation: 0 });
      expect(typeof fwd[0]!.proveMs).toBe('number');
      expect(fwd[1]).toMatchObject({ level: 'warn', reason: 'BAD_BODY', bytesIn: 1, proveMs: null });
      const nf = objs.find((o) => o.status === 404)!;
      expect(nf).toMatchObject({ route: 'other', reason: 'NOT_FOUND', path: '/a%0Ab%22c' });
      expect(objs.filter((o) => o.route === '/ghost').length).toBeGreaterThanOrEqual(1);
    } finally {
      await server.close();
    }
  });

  it('ghost-tensor serve --log json: every stderr line is a JSON object (listen, requests, shutdown, stopped)', async () => {
    const { model } = twoLayerModel(new Rng(79));
    const dir = join(tmp(), 'model');
    await model.save(dir);
    model.close();
    const child = spawn(process.execPath, [new URL('../bin/ghost-tensor.mjs', import.meta.url).pathname, 'serve', dir, '--port', '0', '--log', 'json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
        const m = /serving (\S+)\n/.exec(stdout);
        if (m) resolve(m[1]!);
      });
      child.once('exit', (c) => reject(new Error(`serve exited ${c}: ${stderr}`)));
    });
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await fetch(`${url}/nope`)).status).toBe(404);
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const lines = stderr.trimEnd().split('\n');
    const objs = lines.map((l) => JSON.parse(l) as { event: string; status?: number; url?: string });
    expect(objs.map((o) => o.event)).toEqual(['listen', 'request', 'request', 'shutdown', 'stopped']);
    expect(objs[0]!.url).toBe(url);
    expect(objs.slice(1, 3).map((o) => o.status)).toEqual([200, 404]);
  });

  it('refuses a log option it does not know', async () => {
    const { model } = twoLayerModel(new Rng(73));
    await expect(ProverServer.fromModel(model, { log: 'yaml' as 'json' })).rejects.toThrow(/log must be/);
  });
});

describe('client retries and deadlines', () => {
  it('a server stopped and restarted (same directory, same port) during a loop of calls: no call fails', async () => {
    const rng = new Rng(74);
    const { model } = twoLayerModel(rng);
    const dir = join(tmp(), 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    model.close();
    let server = await ProverServer.open(dir, { trainToken: TOKEN });
    await server.listen();
    const port = server.port;
    const client = await ProverClient.connect(server.url, g0.digest, { token: TOKEN, retry: { baseMs: 20, maxMs: 200 } });
    let restarts = 0;
    const outcomes: string[] = [];
    for (let i = 0; i < 24; i++) {
      if (i % 8 === 4) {
        // Stop, and restart on the same directory and port a little later, while calls are made.
        const old = server;
        await old.close();
        restarts++;
        setTimeout(() => {
          void ProverServer.open(dir, { trainToken: TOKEN, port }).then(async (s) => {
            server = s;
            await s.listen();
          });
        }, 150);
      }
      const x = rng.f32(16);
      if (i % 8 === 4 || i % 8 === 6) {
        // A training step sent while the server is down (i % 8 = 4), or after it came back: refused connections are retried, the step taken once.
        const genBefore = client.generation;
        outcomes.push(await reason(client.train([{ tensor: 0, ids: Uint32Array.of(rng.int(0, 299)), grads: rng.f32(16) }], { deadlineMs: 30_000 })));
        expect(client.generation).toBe(genBefore + 1);
      } else {
        outcomes.push(await reason(client.forward(x, { deadlineMs: 30_000 })));
      }
    }
    expect(restarts).toBe(3);
    expect(outcomes.filter((o) => o !== 'ACCEPTED')).toEqual([]);
    // The client followed every step verified and agrees with the restarted server.
    expect(client.generation).toBe(server.generation);
    expect(client.generation).toBe(6);
    expect(toHex(client.ghost.digest)).toBe(toHex(server.ghost.digest));
    await server.close();
  });

  it('a call whose deadline passes fails with RemoteError DEADLINE_EXCEEDED (server down, or never answering)', async () => {
    const { model } = twoLayerModel(new Rng(75));
    const server = await ProverServer.fromModel(model);
    const url = await server.listen();
    const client = await ProverClient.connect(url, (await model.ghost()).digest);
    await server.close();
    const err = await client.forward(new Float32Array(16), { deadlineMs: 250 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect((err as RemoteError).reason).toBe('DEADLINE_EXCEEDED');
    expect((err as RemoteError).status).toBe(0);
    // A server that accepts and never answers: the attempt is cut at the deadline.
    const hang = await listen(() => undefined);
    // (one attempt may wait 10 minutes, longer than the test's timeout: only the deadline ends it)
    const c2 = await reason(ProverClient.connect(hang.url, (await model.ghost()).digest, { deadlineMs: 300, timeoutMs: 600_000 }));
    expect(c2).toBe('DEADLINE_EXCEEDED');
    hang.server.closeAllConnections();
    hang.server.close();
  });

  it('503 with Retry-After is honoured; a Retry-After beyond the deadline fails at once; no retries with retry: false', async () => {
    const { model } = twoLayerModel(new Rng(76));
    const real = await ProverServer.fromModel(model);
    const upstream = await real.listen();
    const digest = (await model.ghost()).digest;
    // A fake prover in front of the real one: the first `busy` requests to /forward get 503 Retry-After.
    let busy = 2, retryAfter = '1';
    const seen: number[] = [];
    const fake = await listen((req, res) => {
      void (async () => {
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        if (req.url === '/forward') {
          seen.push(performance.now());
          if (busy > 0) {
            busy--;
            res.writeHead(503, { 'Content-Type': 'application/json', 'Retry-After': retryAfter });
            res.end(JSON.stringify({ error: 'BUSY', message: 'fake' }));
            return;
          }
        }
        const up = await fetch(upstream + req.url, { method: req.method ?? 'GET', ...(req.method === 'POST' ? { body: Buffer.concat(chunks) } : {}) });
        const body = Buffer.from(await up.arrayBuffer());
        const h: Record<string, string> = {};
        up.headers.forEach((v, k) => (h[k] = v));
        res.writeHead(up.status, h);
        res.end(body);
      })();
    });
    try {
      const client = await ProverClient.connect(fake.url, digest, { retry: { baseMs: 1, maxMs: 2 } });
      const out = await client.forward(new Float32Array(16).fill(0.5), { deadlineMs: 10_000 });
      expect(out.rows).toBe(1);
      expect(seen).toHaveLength(3);
      // The backoff alone would wait at most 2 ms: the waits are the server's 1 s.
      expect(seen[1]! - seen[0]!).toBeGreaterThanOrEqual(990);
      expect(seen[2]! - seen[1]!).toBeGreaterThanOrEqual(990);

      // Retry-After: 120 within a 2 s deadline: fails at once with the typed error, one request only.
      seen.length = 0;
      busy = 1;
      retryAfter = '120';
      const e = await client.forward(new Float32Array(16), { deadlineMs: 2_000 }).catch((x: unknown) => x);
      expect((e as RemoteError).reason).toBe('DEADLINE_EXCEEDED');
      expect(((e as RemoteError).cause as RemoteError).status).toBe(503);
      expect(seen).toHaveLength(1);

      // retry: false: the 503 itself.
      seen.length = 0;
      busy = 1;
      retryAfter = '1';
      const once = await ProverClient.connect(fake.url, digest, { retry: false });
      expect(await reason(once.forward(new Float32Array(16)))).toBe('BUSY');
      expect(seen).toHaveLength(1);
    } finally {
      fake.server.close();
      await real.close();
    }
  });
});

describe('training steps are taken once', () => {
  it('a /train whose answer is lost (the step taken, the connection broken) is sent again and found taken: once; a 503 is retried', async () => {
    const { model } = twoLayerModel(new Rng(78));
    const real = await ProverServer.fromModel(model, { trainToken: TOKEN });
    const upstream = await real.listen();
    let trains = 0, mode: 'lose' | '503' | 'other' = 'lose';
    const fake = await listen((req, res) => {
      void (async () => {
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        if (req.url === '/train') {
          trains++;
          if (mode === '503' && trains === 1) {
            res.writeHead(503, { 'Content-Type': 'application/json', 'Retry-After': '0' });
            return void res.end(JSON.stringify({ error: 'BUSY', message: 'fake' }));
          }
        }
        const headers: Record<string, string> = {};
        for (const k of ['authorization', 'x-ghost-if-generation']) if (typeof req.headers[k] === 'string') headers[k] = req.headers[k];
        const up = await fetch(upstream + req.url, { method: req.method ?? 'GET', headers, ...(req.method === 'POST' ? { body: Buffer.concat(chunks) } : {}) });
        const body = Buffer.from(await up.arrayBuffer());
        // The first step goes through to the prover, and its answer is lost.
        if (req.url === '/train' && mode === 'lose' && trains === 1) return void req.socket.destroy();
        const h: Record<string, string> = {};
        up.headers.forEach((v, k) => (h[k] = v));
        res.writeHead(up.status, h);
        res.end(body);
      })();
    });
    try {
      const c = await ProverClient.connect(fake.url, (await model.ghost()).digest, { token: TOKEN, retry: { baseMs: 1, maxMs: 2 } });
      const other = await ProverClient.connect(upstream, (await model.ghost()).digest, { token: TOKEN });
      const step = (v: number) => [{ tensor: 0, ids: Uint32Array.of(3), grads: new Float32Array(16).fill(v) }];
      const s1 = await c.train(step(0.01), { deadlineMs: 5_000 });
      // Sent twice (the second answered 409 GENERATION_CONFLICT), taken once, the result found in the verified chain.
      expect(trains).toBe(2);
      expect(real.generation).toBe(1);
      expect(s1.generation).toBe(1);
      expect(c.generation).toBe(1);
      expect(toHex(s1.ghost.digest)).toBe(toHex(real.ghost.digest));
      trains = 0;
      mode = '503';
      expect(await reason(c.train(step(0.02), { deadlineMs: 5_000 }))).toBe('ACCEPTED');
      expect(trains).toBe(2);
      expect(real.generation).toBe(2);
      // Another trainer moved the model: the conditional step is refused (409), not found among
      // the new steps, and sent again at the new generation.
      mode = 'other';
      trains = 0;
      await other.train(step(0.03));
      const s3 = await c.train(step(0.04), { deadlineMs: 5_000 });
      expect(trains).toBe(2);
      expect(s3.generation).toBe(4);
      expect(real.generation).toBe(4);
      // The header is checked: a step asked at a generation the server is not at is refused whole.
      const res = await fetch(`${upstream}/train`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}`, 'X-Ghost-If-Generation': '1' }, body: encodeTrainRequest(step(0.05)) as Uint8Array<ArrayBuffer> });
      expect(res.status).toBe(409);
      expect(real.generation).toBe(4);
    } finally {
      fake.server.close();
      await real.close();
    }
  });
});

describe('following the update chain from an old digest', () => {
  it('a client pinned to generation 0\'s digest connects after 3 steps and ends at the current generation, verified', async () => {
    const rng = new Rng(77);
    const { model } = twoLayerModel(rng);
    const dir = join(tmp(), 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    model.close();
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    try {
      const trainer = await ProverClient.connect(url, g0.digest, { token: TOKEN });
      for (let s = 0; s < 3; s++) await trainer.train([{ tensor: 0, ids: Uint32Array.of(rng.int(0, 299), rng.int(0, 299)), grads: rng.f32(32) }]);
      expect(server.generation).toBe(3);
      // No generation given: the server names it, the client follows 3 verified steps.
      const late = await ProverClient.connect(url, toHex(g0.digest));
      expect(late.generation).toBe(3);
      expect(toHex(late.ghost.digest)).toBe(toHex(server.ghost.digest));
      expect(toHex(late.ghost.digest)).not.toBe(toHex(g0.digest));
      // From the Ghost file's bytes too.
      const fromBytes = await ProverClient.connect(url, g0.bytes);
      expect(fromBytes.generation).toBe(3);
      // and it serves verified answers at the new generation.
      expect((await late.forward(rng.f32(16))).generation).toBe(3);

      // A server that lies about which generation the digest is: the steps after it do not verify from it.
      const liar = await listen((req, res) => {
        void (async () => {
          const up = await fetch(url + req.url);
          const body = Buffer.from(await up.arrayBuffer());
          const h: Record<string, string> = {};
          up.headers.forEach((v, k) => (h[k] = v));
          if ((req.url ?? '').startsWith('/ghost?digest=')) h['x-ghost-generation'] = '1';
          res.writeHead(up.status, h);
          res.end(body);
        })();
      });
      const r = await reason(ProverClient.connect(liar.url, g0.digest));
      expect(['ROOT_MISMATCH', 'UPDATE_MISMATCH', 'GHOST_MISMATCH']).toContain(r);
      liar.server.close();
      // A digest the server never had: GHOST_MISMATCH.
      expect(await reason(ProverClient.connect(url, new Uint8Array(32).fill(7)))).toBe('GHOST_MISMATCH');
    } finally {
      await server.close();
    }
  });
});

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe('pattern-cache sessions', () => {
  it('a session sends held rows as ids: the same verified outputs, smaller proofs; a lost answer or a training step in between starts nothing wrong', async () => {
    const rng = new Rng(80);
    const { model } = twoLayerModel(rng);
    const server = await ProverServer.fromModel(model, { sessions: 4, sessionRows: 4096, trainToken: TOKEN });
    const upstream = await server.listen();
    const digest = (await model.ghost()).digest;
    // A proxy that loses the answer of the 4th session forward (after the server made it).
    let forwards = 0;
    const px = await listen((req, res) => {
      void (async () => {
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        const headers: Record<string, string> = {};
        for (const k of ['authorization', 'x-ghost-if-generation', 'x-ghost-session', 'x-ghost-session-seq']) if (typeof req.headers[k] === 'string') headers[k] = req.headers[k];
        const up = await fetch(upstream + req.url, { method: req.method ?? 'GET', headers, ...(req.method === 'POST' ? { body: Buffer.concat(chunks) } : {}) });
        const body = Buffer.from(await up.arrayBuffer());
        if (req.url === '/forward' && ++forwards === 4) return void req.socket.destroy();
        const h: Record<string, string> = {};
        up.headers.forEach((v, k) => (h[k] = v));
        res.writeHead(up.status, h);
        res.end(body);
      })();
    });
    try {
      const withSession = await ProverClient.connect(px.url, digest, { session: true, token: TOKEN, retry: { baseMs: 1, maxMs: 2 } });
      const plain = await ProverClient.connect(upstream, digest);
      const pool = Array.from({ length: 24 }, () => rng.f32(16));
      let sized = 0, whole = 0, held = 0;
      let last = new Float32Array(0);
      for (let call = 0; call < 10; call++) {
        if (call === 6) await withSession.train([{ tensor: 0, ids: Uint32Array.of(1, 2, 3), grads: rng.f32(48) }]);
        const x = new Float32Array(8 * 16);
        for (let b = 0; b < 8; b++) x.set(pool[rng.int(0, pool.length - 1)]!, b * 16);
        last = x;
        const a = await withSession.forward(x);
        const p = await plain.forward(x);
        expect(Buffer.from(a.output.buffer).equals(Buffer.from(p.output.buffer))).toBe(true);
        expect(a.generation).toBe(p.generation);
        if (call > 0) {
          sized += a.proof.length;
          whole += p.proof.length;
        }
        const d = decodeProof(a.proof);
        if (d.kind === 'forward') held += d.layers.flatMap((l) => l.blocks).reduce((n, b) => n + b.kinds.filter((k) => k !== 0).length, 0);
      }
      expect(forwards).toBe(11); // 10 calls, one sent twice
      expect(held).toBeGreaterThan(0);
      expect(sized).toBeLessThan(whole);
      // The same batch again: its rows are held. Such a proof does not verify without the cache.
      const again = await withSession.forward(last);
      const d = decodeProof(again.proof);
      expect(d.kind === 'forward' && d.layers.some((l) => l.blocks.some((b) => b.kinds.some((k) => k !== 0)))).toBe(true);
      expect(again.proof.length).toBeLessThan((await plain.forward(last)).proof.length);
      expect(await reason(verifyForward(withSession.ghost, again.proof))).not.toBe('ACCEPTED');
    } finally {
      px.server.close();
      await server.close();
    }
  });
});
