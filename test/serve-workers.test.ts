/**
 * `ghost-tensor serve --workers N` (lib/cli/serve-workers.ts, docs/serving.md "Several
 * processes"): N processes share the port; connections are spread over them (each
 * answer's proof verifies against the pinned Ghost file), a worker killed with SIGKILL
 * is replaced and service goes on, SIGTERM stops every process and exits 0, and the
 * command refuses training with workers and a directory it cannot open, leaving no
 * process behind.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { pinGhost, verifyForward, type PinnedGhost } from '../lib/index.js';
import { encodeForwardRequest } from '../lib/serve/wire.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';
import { killAll, spawnCli } from './helpers/spawn-cli.js';

const base = mkdtempSync(join(tmpdir(), 'gt-serve-workers-'));
const dir = join(base, 'model');
let pinned: PinnedGhost;
afterAll(() => {
  killAll();
  rmSync(base, { recursive: true, force: true });
});
beforeAll(async () => {
  pinned = await pinGhost((await twoLayerModel(new Rng(41)).model.save(dir)).bytes);
});

const until = async (f: () => boolean, what: string, ms = 30_000): Promise<void> => {
  for (const t0 = Date.now(); !f(); ) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** One request on a connection of its own (the cluster hands out connections, not requests). */
function call(url: string, path: string, body?: Uint8Array): Promise<{ status: number; bytes: Uint8Array }> {
  return new Promise((resolve, reject) => {
    const req = request(`${url}${path}`, { method: body ? 'POST' : 'GET', agent: false, headers: { connection: 'close' } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes: new Uint8Array(Buffer.concat(parts)) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body ? Buffer.from(body) : undefined);
  });
}

async function forward(url: string, rng: Rng): Promise<void> {
  const r = await call(url, '/forward', encodeForwardRequest({ kind: 'f32', rows: 2, cols: 16, data: rng.f32(32) }));
  expect(r.status).toBe(200);
  const v = await verifyForward(pinned, r.bytes);
  expect(v.rows).toBe(2);
}

const servedForward = async (url: string): Promise<number> => (JSON.parse(Buffer.from((await call(url, '/health')).bytes).toString()) as { served: { forward: number } }).served.forward;

describe('serve --workers', () => {
  it('spreads connections over the workers, replaces one killed with SIGKILL, and stops them all on SIGTERM', async () => {
    const run = spawnCli(['serve', dir, '--port', '0', '--workers', '2']);
    await until(() => /workers 2 \(pids \d+, \d+\)/.test(run.stdout()), 'the banner');
    const url = /serving (\S+)/.exec(run.stdout())![1]!;
    const pids = /pids (\d+), (\d+)/.exec(run.stdout())!.slice(1).map(Number);
    expect(pids[0]).not.toBe(pids[1]);
    expect(pids).not.toContain(run.child.pid);
    const rng = new Rng(7);
    for (let i = 0; i < 12; i++) await forward(url, rng);
    // Connections alternate between the two processes: each has served part of the 12, and together all of them.
    const counts = [await servedForward(url), await servedForward(url)];
    expect(counts[0]! + counts[1]!).toBe(12);
    expect(Math.max(...counts)).toBeLessThan(12);

    // A worker killed with SIGKILL is replaced; every request still gets a proof that verifies.
    process.kill(pids[0]!, 'SIGKILL');
    await until(() => /exited \(signal SIGKILL\); starting another/.test(run.stderr()), 'the restart');
    await until(() => /worker \d+ listening/.test(run.stderr()), 'the new worker');
    for (let i = 0; i < 8; i++) await forward(url, rng);
    // The new worker took part of them (a lone survivor would have served all 8 and the earlier ones).
    const after = [await servedForward(url), await servedForward(url)];
    expect(Math.min(...after)).toBeLessThan(8);

    run.child.kill('SIGTERM');
    expect(await run.exit).toBe(0);
    expect(run.stdout()).toMatch(/\nstopped\n/);
    await until(() => !alive(pids[1]!), 'the workers to exit', 10_000);
  });

  it('refuses training with workers and a directory it cannot open, and leaves no process behind', async () => {
    const tok = join(base, 'token');
    writeFileSync(tok, 'correct-horse-battery\n');
    const a = spawnCli(['serve', dir, '--port', '0', '--workers', '2', '--token-file', tok]);
    expect(await a.exit, a.stderr()).toBe(2);
    expect(a.stderr()).toMatch(/--workers serves read-only/);
    const b = spawnCli(['serve', dir, '--port', '0', '--workers', '0']);
    expect(await b.exit, b.stderr()).toBe(2);
    const c = spawnCli(['serve', join(base, 'missing'), '--port', '0', '--workers', '3']);
    expect(await c.exit, c.stderr()).toBe(3);
    expect(c.stderr()).toMatch(/before it listened/);
    await new Promise((r) => setTimeout(r, 300));
    const left = execFileSync('ps', ['-eo', 'args']).toString().split('\n').filter((l) => l.includes(join(base, 'missing')));
    expect(left).toEqual([]);
  });
});
