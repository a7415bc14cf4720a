/**
 * The served optimizer state is durable incrementally (docs/step-proofs.md, "Saving and
 * loading"): each step appends the state rows it wrote to step-state.log (with a
 * checksum), step-state.bin is rewritten whole only once the log is as large, and opening
 * applies the log to it. The independent reference is the Ghost file's state roots, which
 * every client verified step by step: a restored state that differs from them is refused
 * at load (ROOT_MISMATCH), and a restored server's next step must verify for a client.
 * Torn and unfinished records are covered in test/serve-steps.test.ts and, under SIGKILL,
 * test/serve-crash.test.ts.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it, vi } from 'vitest';

import { Embedding, Model, SparseTensor } from '../lib/index.js';
import { ProverClient, ProverServer } from '../lib/serve/index.js';
import { toHex } from '../lib/shared/bytes.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';
import { faults } from './helpers/fs-faults.js';

vi.mock('node:fs/promises', async (orig) => (await import('./helpers/fs-faults.js')).faultyFs(await orig()));

const base = mkdtempSync(join(tmpdir(), 'gt-step-state-log-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));
const TOKEN = 'correct-horse-battery';

/** A bigram model over 64 ids (logits: the 8 values of the current id's row), saved: each step writes only its input ids' rows. */
async function saved(name: string): Promise<{ dir: string; g0: Uint8Array }> {
  const rng = new Rng(21);
  const model = new Model([new Embedding(SparseTensor.fromArray(rng.f32(64 * 8), 8))], { training: { loss: 'cross-entropy', lr: 0.05 } });
  const dir = join(base, name);
  const g0 = await model.save(dir);
  model.close();
  return { dir, g0: g0.bytes };
}

const size = (f: string): number => (existsSync(f) ? statSync(f).size : 0);
const ino = (f: string): number => (existsSync(f) ? statSync(f).ino : -1);

describe('step-state.log', () => {
  it('steps append only the rows they wrote; the log is compacted into step-state.bin; a restart applies it; a damaged record is refused, not cut', async () => {
    const { dir, g0 } = await saved('sparse');
    const log = join(dir, 'step-state.log'), bin = join(dir, 'step-state.bin');
    let server = await ProverServer.open(dir, { trainToken: TOKEN });
    let client = await ProverClient.connect(await server.listen(), g0, { generation: 0, token: TOKEN });
    // The first step writes six rows; each later one writes one row (its input id twice).
    await client.trainStep({ input: Uint32Array.of(1, 2, 3, 4, 5, 6), targets: Uint32Array.of(0, 1, 2, 3, 4, 5) });
    const rowBytes = 8 * 8 + 12;
    let appended = 0, compactions = 0;
    for (let s = 0; s < 9; s++) {
      const before = { log: size(log), bin: ino(bin) };
      await client.trainStep({ input: Uint32Array.of(1 + (s % 6), 1 + (s % 6)), targets: Uint32Array.of(s % 8, (s + 3) % 8) });
      if (ino(bin) !== before.bin) {
        compactions++;
        expect(size(log)).toBe(0);
      } else {
        // One row written: the record is its id and leaf plus a fixed frame, far less than the whole state.
        const grew = size(log) - before.log;
        expect(grew).toBeGreaterThan(rowBytes);
        expect(grew).toBeLessThan(rowBytes + 80);
        expect(grew).toBeLessThan(size(bin));
        appended++;
      }
    }
    expect(compactions).toBeGreaterThan(0);
    expect(appended).toBeGreaterThan(compactions);
    // Stop with records in the log (step until there are at least two).
    let s = 0;
    while (size(log) < 2 * rowBytes) await client.trainStep({ input: Uint32Array.of(7 + (s % 3), 7 + (s++ % 3)), targets: Uint32Array.of(1, 2) });
    const at = { gen: server.generation, digest: toHex(server.ghost.digest) };
    await server.close();

    // A damaged record with another after it is not a torn tail: the state roots refuse the directory, and the log is left as it was.
    const good = readFileSync(log);
    const bad = Buffer.from(good);
    bad[8]! ^= 1;
    writeFileSync(log, bad);
    expect(await reason(ProverServer.open(dir, { trainToken: TOKEN }))).toBe('ROOT_MISMATCH');
    expect(readFileSync(log)).toEqual(bad);
    writeFileSync(log, good);

    // A restart applies the log: the same generation and digest, and the next step verifies for a client that replays from generation 0.
    server = await ProverServer.open(dir, { trainToken: TOKEN });
    expect([server.generation, toHex(server.ghost.digest)]).toEqual([at.gen, at.digest]);
    client = await ProverClient.connect(await server.listen(), g0, { generation: 0, token: TOKEN });
    expect(toHex(client.ghost.digest)).toBe(at.digest);
    const ghostBefore = readFileSync(join(dir, 'ghost.bin')), logBefore = readFileSync(log);
    expect((await client.trainStep({ input: Uint32Array.of(9, 10), targets: Uint32Array.of(3, 4) })).generation).toBe(at.gen + 1);
    await server.close();
    expect(size(log)).toBeGreaterThan(logBefore.length); // the step appended its record (no compaction)

    // Stopped before ghost.bin was replaced: the step is rolled back (its record cut; the log's earlier records still apply to step-state.bin).
    writeFileSync(join(dir, 'ghost.bin'), ghostBefore);
    server = await ProverServer.open(dir, { trainToken: TOKEN });
    expect([server.generation, toHex(server.ghost.digest)]).toEqual([at.gen, at.digest]);
    expect(readFileSync(log)).toEqual(logBefore);
    client = await ProverClient.connect(await server.listen(), g0, { generation: 0, token: TOKEN });
    expect((await client.trainStep({ input: Uint32Array.of(9, 10), targets: Uint32Array.of(3, 4) })).generation).toBe(at.gen + 1);
    await server.close();
  });

  it('a step whose state record cannot be appended, or whose ghost.bin cannot be replaced after it, is undone: the log cut back, the files as they were', async () => {
    const { dir, g0 } = await saved('faults');
    const log = join(dir, 'step-state.log');
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const client = await ProverClient.connect(await server.listen(), g0, { generation: 0, token: TOKEN });
    await client.trainStep({ input: Uint32Array.of(1, 2, 3, 4, 5, 6), targets: Uint32Array.of(0, 1, 2, 3, 4, 5) });
    await client.trainStep({ input: Uint32Array.of(1, 1), targets: Uint32Array.of(0, 1) });
    const files = () => ['updates.bin', 'ghost.bin', 'step-state.bin', 'step-state.log'].map((f) => (existsSync(join(dir, f)) ? toHex(readFileSync(join(dir, f))) : ''));
    for (const name of ['step-state.log', 'ghost.bin']) {
      const at = { gen: server.generation, files: files() };
      faults.name = name;
      faults.count = 1;
      expect(await reason(client.trainStep({ input: Uint32Array.of(2, 2), targets: Uint32Array.of(3, 4) }))).toBe('NOT_DURABLE');
      expect(faults.count).toBe(0);
      expect(server.generation).toBe(at.gen);
      expect(files()).toEqual(at.files);
      // The next step appends to the log again and verifies from the client's Ghost file.
      const grew = size(log);
      expect((await client.trainStep({ input: Uint32Array.of(3, 3), targets: Uint32Array.of(5, 6) })).generation).toBe(at.gen + 1);
      expect(size(log)).not.toBe(grew);
    }
    await server.close();
    // And a restart is at the same generation.
    const again = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(again.generation).toBe(server.generation);
    await again.close();
  });
});
