/**
 * A training step that cannot be saved is not published (docs/serving.md, "Concurrency
 * and durability"): a rename of ghost.bin that fails (the last write of a step) gives
 * 500 NOT_DURABLE with the step undone in memory and on disk; when the undo fails too,
 * the server refuses to prove or train (NEEDS_RESTART) but still serves the durable
 * history, and a restart finds the directory at the last published generation.
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it, vi } from 'vitest';

import { Model } from '../lib/index.js';
import { ProverClient, ProverServer } from '../lib/serve/index.js';
import { toHex } from '../lib/shared/bytes.js';
import { twoLayerModel } from './helpers/models.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

/** The next `failRenames` renames throw EIO. */
const faults = vi.hoisted(() => ({ failRenames: 0 }));
vi.mock('node:fs/promises', async (importOriginal) => {
  const orig = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...orig,
    rename: async (from: string, to: string): Promise<void> => {
      if (faults.failRenames > 0) {
        faults.failRenames--;
        throw Object.assign(new Error(`EIO: injected, rename '${from}' -> '${to}'`), { code: 'EIO' });
      }
      return orig.rename(from, to);
    },
  };
});

const base = mkdtempSync(join(tmpdir(), 'gt-serve-durable-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));
const TOKEN = 'correct-horse-battery';

describe('a step that cannot be saved is not published', () => {
  it('500 NOT_DURABLE, undone in memory and on disk; a failed undo stops the server (NEEDS_RESTART) and a restart is consistent', async () => {
    const rng = new Rng(91);
    const { model } = twoLayerModel(rng);
    const dir = join(base, 'model');
    const g0 = await model.save(dir, { optimizerState: true });
    model.close();
    const grads = () => [
      { tensor: 0, ids: Uint32Array.of(rng.int(0, 299)), grads: rng.f32(16) },
      { tensor: 4, ids: Uint32Array.of(rng.int(0, 143)), grads: rng.f32(5) },
    ];
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    await client.train(grads());
    const at2 = { digest: toHex(client.ghost.digest), log: statSync(join(dir, 'updates.bin')).size, ghost: readFileSync(join(dir, 'ghost.bin')) };

    // ghost.bin's rename fails once: the step is undone, nothing is published.
    faults.failRenames = 1;
    const r1 = await reason(client.train(grads()));
    expect(r1).toBe('NOT_DURABLE');
    expect(server.generation).toBe(2);
    expect(toHex(server.ghost.digest)).toBe(at2.digest);
    expect(statSync(join(dir, 'updates.bin')).size).toBe(at2.log);
    expect(readFileSync(join(dir, 'ghost.bin')).equals(at2.ghost)).toBe(true);
    server.model.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(client.ghost.manifest.tensors[i]!.root)));
    // and the server goes on: the next step is taken, saved and verified.
    await client.train(grads());
    expect(client.generation).toBe(4);
    const at4 = { digest: toHex(client.ghost.digest), log: statSync(join(dir, 'updates.bin')).size };

    // The rename fails, and so does the undo's: the server stops proving and training.
    faults.failRenames = 2;
    expect(await reason(client.train(grads()))).toBe('NOT_DURABLE');
    expect(faults.failRenames).toBe(0);
    expect(await reason(client.forward(rng.f32(16)))).toBe('NEEDS_RESTART');
    expect(await reason(client.train(grads()))).toBe('NEEDS_RESTART');
    // It still serves the durable history: generation 4.
    const res = await fetch(`${url}/ghost`);
    expect([res.headers.get('x-ghost-generation'), res.headers.get('x-ghost-digest')]).toEqual(['4', at4.digest]);
    await server.close();
    expect(statSync(join(dir, 'updates.bin')).size).toBe(at4.log);

    // Restarted: at generation 4, its files agree, and a client from generation 0 catches up.
    const again = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(again.generation).toBe(4);
    expect(toHex(again.ghost.digest)).toBe(at4.digest);
    const late = await ProverClient.connect(await again.listen(), g0.bytes, { generation: 0, token: TOKEN });
    expect(toHex(late.ghost.digest)).toBe(at4.digest);
    await late.train(grads());
    expect(late.generation).toBe(6);
    await again.close();
    const { model: m, ghost } = await Model.load(dir);
    expect(toHex(ghost.digest)).toBe(toHex(late.ghost.digest));
    m.close();
  });
});
