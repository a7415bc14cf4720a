/**
 * Request bodies in flight are bounded across all connections (docs/serving.md,
 * `maxInflightBytes`): `ghost-tensor serve` in a child process gets many connections
 * at once, each sending a large body (half with Content-Length, half chunked); those
 * past the limit get 503 BUSY with Retry-After, and the server's peak RSS (VmHWM, Linux)
 * stays within a bound derived from the limit, whatever the number of connections.
 *
 * Runs the compiled CLI (dist/): `npm run build:ts` first.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { ProverClient } from '../lib/serve/index.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';

const BIN = join(import.meta.dirname, '..', 'bin', 'ghost-tensor.mjs');
const base = mkdtempSync(join(tmpdir(), 'gt-serve-mem-'));
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(base, { recursive: true, force: true });
});

const MiB = 2 ** 20;

/** kB of a /proc/PID/status field (VmRSS, VmHWM). */
function procKb(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

/**
 * One raw connection posting `size` bytes of `body` (framed with Content-Length, or
 * chunked); resolves with the status line's code and the Retry-After header (0: the
 * connection ended without an answer).
 */
function post(port: number, body: Buffer, chunked: boolean): Promise<{ status: number; retryAfter: string | null }> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    let head = '';
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      sock.destroy();
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      resolve({ status, retryAfter: /\r\nretry-after: *(\S+)/i.exec(head)?.[1] ?? null });
    };
    sock.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      if (head.includes('\r\n\r\n')) finish();
    });
    sock.on('error', finish);
    sock.on('close', finish);
    sock.on('connect', () => {
      const framing = chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${body.length}`;
      sock.write(`POST /forward HTTP/1.1\r\nHost: x\r\n${framing}\r\n\r\n`);
      // 1 MiB pieces (chunks when chunked), each written after the previous one drained.
      let at = 0;
      const next = (): void => {
        while (!done && at < body.length) {
          const piece = body.subarray(at, Math.min(body.length, at + MiB));
          at += piece.length;
          // Every part of a chunk is written (a short-circuiting && would drop the rest of a
          // chunk once the first part filled the buffer, and the server would see broken framing).
          let ok: boolean;
          if (chunked) {
            sock.write(`${piece.length.toString(16)}\r\n`);
            sock.write(piece);
            ok = sock.write('\r\n');
          } else ok = sock.write(piece);
          if (!ok) {
            sock.once('drain', next);
            return;
          }
        }
        if (!done && chunked && at >= body.length) sock.write('0\r\n\r\n');
      };
      next();
    });
  });
}

describe('bodies in flight are bounded across connections', () => {
  // Linux (/proc) only; skipped under the sanitized addon run (GT_SANITIZED), where ASan's
  // shadow memory and quarantine of freed blocks make RSS meaningless.
  it.skipIf(process.platform !== 'linux' || !!process.env.GT_SANITIZED)('64 connections with 8 MiB bodies against a 16 MiB limit: 503 + Retry-After past it, RSS bounded by the limit', async () => {
    const rng = new Rng(81);
    const { model } = twoLayerModel(rng);
    const dir = join(base, 'model');
    const g = await model.save(dir);
    model.close();
    const limit = 16 * MiB, size = 8 * MiB, connections = 64;
    const child = spawn(process.execPath, [BIN, 'serve', dir, '--port', '0', '--max-body', String(size), '--max-inflight', String(limit)], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let text = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (s: string) => (text += s));
    child.stderr!.resume();
    for (let i = 0; i < 600 && !/generation \d+/.test(text) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
    const url = /serving (\S+)/.exec(text)?.[1];
    if (!url) throw new Error(`serve did not start: ${text}`);
    const port = Number(new URL(url).port);
    // Warm up the request path once, then take the baseline.
    const client = await ProverClient.connect(url, g.digest);
    await client.forward(rng.f32(16));
    const baseKb = procKb(child.pid!, 'VmRSS');

    // A body that decodes as nothing (kind 0xff): answered 400 once read whole.
    const body = Buffer.alloc(size, 0xff);
    const results = await Promise.all(Array.from({ length: connections }, (_, i) => post(port, body, i % 2 === 1)));
    const peakKb = procKb(child.pid!, 'VmHWM');
    const by = new Map<number, number>();
    for (const r of results) by.set(r.status, (by.get(r.status) ?? 0) + 1);
    const summary = [...by].sort().map(([s, n]) => `${s} x${n}`).join(', ');
    const growthMiB = (peakKb - baseKb) / 1024;
    if (process.env.GT_MEM_DEBUG) console.log(`peak RSS growth ${growthMiB.toFixed(1)} MiB (baseline ${(baseKb / 1024).toFixed(0)} MiB); ${summary}`);

    // Read whole and refused as a bad body, or refused before reading: nothing else. No
    // connection ends without its answer (status 0): the server drains a refused body
    // after answering instead of resetting the connection under it (lingerClose).
    expect([...by.keys()].every((s) => s === 400 || s === 503), summary).toBe(true);
    expect(by.get(503) ?? 0, summary).toBeGreaterThan(0);
    expect(by.get(400) ?? 0, summary).toBeGreaterThan(0);
    for (const r of results) if (r.status === 503) expect(r.retryAfter).toBe('1');
    // The bound: the bodies held (the limit), their copies when chunked bodies are joined
    // (the limit again), bodies answered but not yet collected (the limit again), plus
    // 64 MiB for socket buffers and the rest. Without the limit (the server before it was
    // added) the peak grew by 283 MiB; the bodies alone are 64 x 8 MiB = 512 MiB.
    expect(growthMiB, `peak RSS ${(peakKb / 1024).toFixed(0)} MiB, baseline ${(baseKb / 1024).toFixed(0)} MiB; ${summary}`).toBeLessThan((3 * limit) / MiB + 64);
    // and the server still answers
    expect((await client.forward(rng.f32(16))).rows).toBe(1);
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }, 120_000);
});
