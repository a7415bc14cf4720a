/**
 * The ghost-tensor command line: --help and exit codes of every command, the quick
 * demo, train -> serve -> query -> verify -> inspect, a tampered proof file rejected
 * with exit code 1, and a server killed with SIGKILL that loses no acknowledged
 * training step, then stopped cleanly with SIGTERM. `cli` runs bin/ghost-tensor.mjs
 * as a child process (over dist/: `npm test` builds it first); `run` calls the same
 * main() in this process (lib/cli/main.ts), which is much faster than a process each.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Model, decodeProof, encodeProof, type ForwardProof } from '../lib/index.js';
import { ProverClient } from '../lib/serve/index.js';
import { toHex } from '../lib/shared/bytes.js';
import { runCli } from './helpers/cli.js';
import { Rng } from './helpers/rng.js';

const BIN = join(import.meta.dirname, '..', 'bin', 'ghost-tensor.mjs');
const dir = mkdtempSync(join(tmpdir(), 'gt-cli-'));
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function cli(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const run = runCli;

/** Starts `ghost-tensor serve`; resolves once it prints its URL and digest. */
async function serve(...args: string[]): Promise<{ child: ChildProcess; url: string; digest: string; output: () => string }> {
  const child = spawn(process.execPath, [BIN, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let text = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (s: string) => (text += s));
  child.stderr!.resume();
  for (let i = 0; i < 300 && !/digest [0-9a-f]{64}/.test(text); i++) await new Promise((r) => setTimeout(r, 50));
  const url = /serving (\S+)/.exec(text)?.[1];
  const digest = /digest ([0-9a-f]{64})/.exec(text)?.[1];
  if (!url || !digest) throw new Error(`serve did not start: ${text}`);
  return { child, url, digest, output: () => text };
}

const exited = (c: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> =>
  c.exitCode !== null || c.signalCode !== null ? Promise.resolve({ code: c.exitCode, signal: c.signalCode }) : new Promise((r) => c.once('exit', (code, signal) => r({ code, signal })));

describe('help and usage', () => {
  it('--help on every command exits 0 with its usage; bad usage exits 2', async () => {
    for (const cmd of ['demo', 'train', 'serve', 'query', 'verify', 'inspect', 'swarm', 'bench']) {
      const r = await run(cmd, '--help');
      expect(`${cmd}: ${r.code}`).toBe(`${cmd}: 0`);
      expect(r.stdout).toContain(`usage: ghost-tensor ${cmd}`);
      expect((await run('help', cmd)).stdout).toBe(r.stdout);
    }
    // through the installed entry point
    const top = cli('--help');
    expect(top.code).toBe(0);
    for (const cmd of ['demo', 'train', 'serve', 'query', 'verify', 'inspect', 'swarm', 'bench']) expect(top.stdout).toContain(`  ${cmd} `);
    expect(top.stdout).toContain('exit codes: 0 ok, 1 proof rejected, 2 usage error');
    expect(cli('frobnicate').code).toBe(2);
    expect((await run()).code).toBe(2);
    expect((await run('verify', '--nope', 'x')).code).toBe(2);
    expect((await run('verify', 'proof.bin')).stderr).toContain('--ghost PATH is required');
    expect((await run('inspect')).code).toBe(2);
    expect((await run('query', 'http://127.0.0.1:1', '--digest', 'zz', '--test-images', '0')).code).toBe(2);
    expect((await run('bench', 'no-such-bench')).code).toBe(2);
    expect((await run('--version')).stdout.trim()).toBe((JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string }).version);
  });

  it('a reader that closes the pipe early ends the command quietly (no unhandled EPIPE)', async () => {
    const child = spawn(process.execPath, [BIN, '--help'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.destroy(); // as `ghost-tensor ... | head -1` does once it has its line
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const { code } = await exited(child);
    expect(stderr).not.toContain('EPIPE');
    expect(code).toBe(0);
  });

  it('bench lists the benchmarks', async () => {
    const r = await run('bench');
    expect(r.code).toBe(0);
    for (const b of ['proofs', 'serve', 'storage']) expect(r.stdout).toMatch(new RegExp(`^  ${b} `, 'm'));
  });
});

describe('demo', () => {
  it('--quick trains both models, serves, verifies the proof and rejects every tampering', () => {
    const r = cli('demo', '--quick', '--quiet');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^sparse \(k = 32\)\s+\d+\.\d%/m);
    expect(r.stdout).toMatch(/^dense \(all 256\)\s+\d+\.\d%/m);
    expect(r.stdout).toMatch(/proof {2}verified in \d+ ms/);
    for (const reason of ['OUTPUT_MISMATCH', 'ROOT_MISMATCH', 'DUPLICATE_ID', 'GHOST_MISMATCH', 'SELECTION_MISMATCH']) expect(r.stdout).toContain(`rejected: ${reason}`);
    expect(r.stdout).toMatch(/the selection is proven/);
    expect(r.stdout).toMatch(/query  8 more: a proof of \d+\.\d KiB \(the keys held/);
    expect(r.stdout).not.toContain('ACCEPTED');
    expect(r.stderr).toBe(''); // --quiet: no progress
  });
});

describe('train, serve, query, verify, inspect', () => {
  const model = join(dir, 'model');
  const proof = join(dir, 'proof.bin');
  const tokenFile = join(dir, 'token');
  const TOKEN = 'a-long-enough-token';
  let digest = '';

  beforeAll(async () => {
    const r = await run('train', '--out', model, '--n', '64', '--k', '8', '--images', '512', '--epochs', '1', '--quiet');
    expect(r.code).toBe(0);
    digest = /digest {3}([0-9a-f]{64})/.exec(r.stdout)![1]!;
    writeFileSync(tokenFile, `${TOKEN}\n`);
  });

  it('train refuses an existing directory (exit 3); inspect describes the model directory', async () => {
    expect((await run('train', '--out', model, '--n', '64', '--quiet')).code).toBe(3);
    const r = await run('inspect', model);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Ghost digest ${digest} (generation 0`);
    expect(r.stdout).toContain('[0] hopfield: 784 -> 10, k = 8');
    const j = JSON.parse((await run('inspect', join(model, 'ghost.bin'), '--json')).stdout) as { digest: string; kind: string };
    expect([j.kind, j.digest]).toEqual(['ghost file', digest]);
  });

  it('query verifies a served answer; verify accepts the proof file and rejects tampered ones with exit code 1', async () => {
    const s = await serve(model, '--port', '0');
    expect(s.digest).toBe(digest);
    const q = await run('query', s.url, '--digest', digest, '--test-images', '0,1,2', '--proof-out', proof, '--json');
    expect(q.code).toBe(0);
    const res = JSON.parse(q.stdout) as { verified: boolean; rows: number; cols: number; output: number[][] };
    expect([res.verified, res.rows, res.cols]).toEqual([true, 3, 10]);
    // The served output equals the local model's proved output.
    const { model: local } = await Model.load(model, { readOnly: true });
    const p = decodeProof(readFileSync(proof)) as ForwardProof;
    const mine = await local.prove(p.input.kind === 'f32' ? p.input.data : new Float32Array(0));
    expect(res.output.flat()).toEqual(Array.from(mine.output));
    local.close();
    // --require-selection: the answer reveals every key (the selection is re-derived), and says so in its size.
    const held = await run('query', s.url, '--digest', digest, '--test-images', '0', '--require-selection', '--json');
    expect(held.code).toBe(0);
    expect((JSON.parse(held.stdout) as { proofBytes: number }).proofBytes).toBeGreaterThan(64 * 784 * 4);

    const ok = await run('verify', '--ghost', model, proof, '--digest', digest);
    expect([ok.code, ok.stdout.startsWith('verified: forward proof')]).toEqual([0, true]);
    const bad = async (name: string, bytes: Uint8Array): Promise<{ code: number; stderr: string }> => {
      const f = join(dir, name);
      writeFileSync(f, bytes);
      return run('verify', '--ghost', join(model, 'ghost.bin'), f);
    };
    const bytes = new Uint8Array(readFileSync(proof));
    const flipped = bytes.slice();
    flipped[bytes.length - 30 * 4]! ^= 1; // the first of the 3 x 10 output values
    const f1 = await bad('flipped.bin', flipped);
    expect([f1.code, f1.stderr]).toEqual([1, expect.stringContaining('rejected: OUTPUT_MISMATCH')]);
    const swapped = decodeProof(bytes) as ForwardProof;
    const blk = swapped.layers[0]!.blocks[0]!;
    [blk.payload[0], blk.payload[1]] = [blk.payload[1]!, blk.payload[0]!];
    const f2 = await bad('swapped.bin', encodeProof(swapped));
    expect([f2.code, f2.stderr]).toEqual([1, expect.stringContaining('rejected: ROOT_MISMATCH')]);
    // through the installed entry point too
    writeFileSync(join(dir, 'cut.bin'), bytes.subarray(0, bytes.length - 1));
    const f3 = cli('verify', '--ghost', join(model, 'ghost.bin'), join(dir, 'cut.bin'));
    expect([f3.code, f3.stderr]).toEqual([1, expect.stringContaining('rejected: TRUNCATED')]);
    const wrongDigest = await run('verify', '--ghost', model, proof, '--digest', '00'.repeat(32));
    expect([wrongDigest.code, wrongDigest.stderr]).toEqual([1, expect.stringContaining('GHOST_MISMATCH')]);
    // I/O and format errors of the inputs: 3.
    expect((await run('verify', '--ghost', model, join(dir, 'missing.bin'))).code).toBe(3);
    writeFileSync(join(dir, 'junk'), 'not a ghost file');
    expect((await run('verify', '--ghost', join(dir, 'junk'), proof)).code).toBe(3);
    expect((await run('inspect', join(dir, 'junk'))).code).toBe(3);
    const ins = await run('inspect', proof);
    expect([ins.code, ins.stdout]).toEqual([0, expect.stringContaining(`for Ghost digest ${digest}`)]);
    // A client pinned to another digest rejects the server (1); an unreachable server is 4.
    expect((await run('query', s.url, '--digest', 'ab'.repeat(32), '--test-images', '0')).code).toBe(1);
    s.child.kill('SIGTERM');
    expect(await exited(s.child)).toEqual({ code: 0, signal: null });
    expect(s.output()).toContain('stopped at generation 0');
    expect((await run('query', s.url, '--digest', digest, '--test-images', '0')).code).toBe(4);
  });

  it('serve with a token: acknowledged steps survive SIGKILL; SIGTERM finishes and exits 0', async () => {
    const rng = new Rng(5);
    const grads = () => [{ tensor: 0, ids: Uint32Array.from({ length: 6 }, () => rng.int(0, 63)), grads: rng.f32(6 * 784, 0.01) }, { tensor: 1, ids: Uint32Array.of(rng.int(0, 63)), grads: rng.f32(10) }];
    const s1 = await serve(model, '--port', '0', '--token-file', tokenFile);
    const c = await ProverClient.connect(s1.url, digest, { token: TOKEN });
    await c.train(grads());
    await c.train(grads());
    expect(c.generation).toBe(4);
    s1.child.kill('SIGKILL');
    await exited(s1.child);
    // The tensor files and ghost.bin hold both acknowledged steps.
    const { model: m, ghost } = await Model.load(model);
    expect(toHex(ghost.digest)).toBe(toHex(c.ghost.digest));
    m.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(c.ghost.manifest.tensors[i]!.root)));
    m.close();
    // Restarted, it continues at generation 4; SIGTERM after one more step exits 0 with it saved.
    const s2 = await serve(model, '--port', '0', '--token-file', tokenFile);
    expect(s2.output()).toContain('generation 4');
    const c2 = await ProverClient.connect(s2.url, digest, { generation: 0, token: TOKEN });
    expect(toHex(c2.ghost.digest)).toBe(toHex(c.ghost.digest));
    await c2.train(grads());
    s2.child.kill('SIGTERM');
    expect(await exited(s2.child)).toEqual({ code: 0, signal: null });
    expect(s2.output()).toContain(`stopped at generation 6, digest ${toHex(c2.ghost.digest)}`);
    expect((await run('inspect', model)).stdout).toContain(`Ghost digest ${toHex(c2.ghost.digest)} (generation 6`);
  });
});
