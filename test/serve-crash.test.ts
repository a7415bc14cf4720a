/**
 * Durable before visible (docs/serving.md, "Concurrency and durability"): `ghost-tensor
 * serve` in a child process takes training steps while readers poll /ghost, /updates
 * and /forward; it is killed with SIGKILL at random moments and restarted on the same
 * directory. Every (generation, digest) any reader or the trainer was ever shown must
 * be in the restarted server's history (GET /ghost?generation=G), and no two answers
 * may name different digests for one generation (a fork). Twice: a model trained by
 * update proofs (POST /train, five entries a request) and a language model with a memory
 * layer trained by step proofs (POST /train-step: one step touches every tensor and the
 * optimizer state: its record appended to step-state.log, or step-state.bin rewritten).
 *
 * Runs the compiled CLI (dist/): `npm run build:ts` first.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { languageModel, pinGhost } from '../lib/index.js';
import { toHex } from '../lib/shared/bytes.js';
import { encodeForwardRequest, encodeStepRequest, encodeTrainRequest } from '../lib/serve/wire.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';
import { killAll, spawnCli } from './helpers/spawn-cli.js';

const TOKEN = 'correct-horse-battery';
const base = mkdtempSync(join(tmpdir(), 'gt-serve-crash-'));
afterAll(() => {
  killAll();
  rmSync(base, { recursive: true, force: true });
});

async function serve(dir: string, tokenFile: string): Promise<{ child: ChildProcess; url: string; generation: number }> {
  const run = spawnCli(['serve', dir, '--port', '0', '--token-file', tokenFile]);
  const child = run.child;
  for (let i = 0; i < 600 && !/generation \d+/.test(run.stdout()) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 50));
  const url = /serving (\S+)/.exec(run.stdout())?.[1];
  const g = /generation (\d+)/.exec(run.stdout())?.[1];
  if (!url || g === undefined) throw new Error(`serve did not start: ${run.stdout()} ${run.stderr()}`);
  return { child, url, generation: Number(g) };
}

const exited = (c: ChildProcess): Promise<void> =>
  c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once('exit', () => r()));

/** What the trainer posts and a reader asks, per kind of model. */
interface Kind {
  trainPath: string;
  trainBody: (rng: Rng) => Uint8Array;
  forwardBody: (rng: Rng) => Uint8Array;
}

async function updateModel(rng: Rng, dir: string): Promise<Kind> {
  const { model } = twoLayerModel(rng);
  await model.save(dir, { optimizerState: true });
  const dims = model.tensors.map((t) => ({ n: t.size, d: t.dim }));
  model.close();
  return {
    trainPath: '/train',
    // One entry per tensor: five proofs, five checkpoints per request.
    trainBody: (r) => encodeTrainRequest(dims.map(({ n, d }, tensor) => ({ tensor, ids: Uint32Array.of(r.int(0, n - 1), r.int(0, n - 1)), grads: r.f32(2 * d, 0.1) }))),
    forwardBody: (r) => encodeForwardRequest({ kind: 'f32', rows: 1, cols: 16, data: r.f32(16) }),
  };
}

async function stepModel(_rng: Rng, dir: string): Promise<Kind> {
  const V = 24;
  // Its MLP a memory layer: a step writes few of the value rows, so steps append their state
  // rows to step-state.log, and a step that writes half the state or more rewrites step-state.bin (both paths).
  const model = languageModel({ vocab: V, context: 8, dim: 8, layers: 1, heads: 2, hidden: 8, seed: 11, memory: { layers: [0], subKeys: 32, k: 4, heads: 1 } }, { training: { loss: 'cross-entropy', lr: 0.02, clipNorm: 1 } });
  await model.commit();
  await model.save(dir);
  model.close();
  const ids = (r: Rng, n: number): Uint32Array => Uint32Array.from({ length: n }, () => r.int(0, V - 1));
  return {
    trainPath: '/train-step',
    // One step proof per request, touching every tensor and the optimizer state (step-state.log or step-state.bin).
    trainBody: (r) => encodeStepRequest({ input: { kind: 'ids', ids: ids(r, 6) }, targets: { kind: 'classes', ids: ids(r, 6) } }),
    forwardBody: (r) => encodeForwardRequest({ kind: 'ids', ids: ids(r, 4) }),
  };
}

describe('SIGKILL at random moments while training and reading', () => {
  it.each([
    ['update proofs (POST /train)', updateModel, 'model'],
    ['step proofs (POST /train-step)', stepModel, 'lm'],
  ] as const)('no reader ever sees a generation that the restarted server does not have: %s', async (_name, make, name) => {
    const rng = new Rng(Number(process.env.GT_CRASH_SEED ?? 20261206));
    const dir = join(base, name);
    const kind = await make(rng, dir);
    const tokenFile = join(base, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`);

    /** generation -> digest, from every answer anyone got. */
    const seen = new Map<number, string>();
    const forks: string[] = [];
    const see = (g: number, digest: string, from: string): void => {
      const had = seen.get(g);
      if (had !== undefined && had !== digest) forks.push(`generation ${g}: ${had} and ${digest} (${from})`);
      seen.set(g, digest);
    };
    const headers = (res: Response, from: string): void => {
      const g = res.headers.get('x-ghost-generation'), d = res.headers.get('x-ghost-digest');
      if (g !== null && d !== null) see(Number(g), d, from);
    };
    const kills = 8;
    let acked = 0;
    for (let round = 0; round <= kills; round++) {
      const s = await serve(dir, tokenFile);
      if (process.env.GT_CRASH_DEBUG) console.log(`round ${round}: restarted at ${s.generation}; seen up to ${Math.max(-1, ...seen.keys())}; acked ${acked}`);
      // Everything seen so far is in the restarted server's history, with the same digest.
      for (const [g, d] of seen) {
        expect(g, `generation ${g} was seen; the server restarted at ${s.generation}`).toBeLessThanOrEqual(s.generation);
        const res = await fetch(`${s.url}/ghost?generation=${g}`);
        expect(res.status).toBe(200);
        expect(toHex((await pinGhost(new Uint8Array(await res.arrayBuffer()))).digest), `generation ${g}`).toBe(d);
      }
      if (round === kills) {
        s.child.kill('SIGTERM');
        await exited(s.child);
        break;
      }
      let stop = false;
      const train = async (): Promise<void> => {
        while (!stop) {
          const body = kind.trainBody(rng);
          try {
            const res = await fetch(`${s.url}${kind.trainPath}`, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers: { Authorization: `Bearer ${TOKEN}` } });
            await res.arrayBuffer();
            if (res.ok) {
              headers(res, 'train');
              acked++;
            }
          } catch {
            return; // killed
          }
        }
      };
      const read = async (which: number): Promise<void> => {
        while (!stop) {
          try {
            if (which === 0) {
              const res = await fetch(`${s.url}/ghost`);
              const bytes = new Uint8Array(await res.arrayBuffer());
              if (res.ok) see(Number(res.headers.get('x-ghost-generation')), toHex((await pinGhost(bytes)).digest), 'ghost');
            } else if (which === 1) {
              const res = await fetch(`${s.url}/updates?from=0`);
              await res.arrayBuffer();
              if (res.ok) headers(res, 'updates');
            } else {
              const res = await fetch(`${s.url}/forward`, { method: 'POST', body: kind.forwardBody(rng) as Uint8Array<ArrayBuffer> });
              await res.arrayBuffer();
              if (res.ok) headers(res, 'forward');
            }
          } catch {
            return; // killed
          }
        }
      };
      const loops = [train(), read(0), read(0), read(1), read(2)];
      // The first kill lands early (start-up, first step), the others anywhere in the first 1.5 s.
      await new Promise((r) => setTimeout(r, round === 0 ? rng.int(0, 200) : rng.int(300, 1500)));
      s.child.kill('SIGKILL');
      await exited(s.child);
      stop = true;
      await Promise.all(loops);
    }
    expect(forks).toEqual([]);
    // The test exercised something: steps were acknowledged and generations seen.
    expect(acked).toBeGreaterThan(0);
    expect(Math.max(...seen.keys())).toBeGreaterThan(0);
    // Step proofs: some step appended its state rows to the log (the incremental path ran under the kills).
    if (kind.trainPath === '/train-step') expect(existsSync(join(dir, 'step-state.log'))).toBe(true);
  }, 120_000);
});
