/**
 * The prover service trains a model that commits a training rule (Ghost file format 3)
 * by step proofs (docs/serving.md, "Training by step proofs"): POST /train-step takes
 * examples and answers with a step proof; ProverClient follows the model only through
 * step proofs it verified (verifyTrainStep). Covered: a client training a served
 * language model (every answer verified, its Ghost file the server's), a second client
 * catching up through /updates, a restart at the same digest and optimizer state,
 * hostile bodies refused with their reasons and nothing changed, a step that cannot be
 * saved undone (500 NOT_DURABLE), and a directory stopped halfway through saving a step
 * (tensor files and step-state.bin of either generation) rolled back at open.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it, vi } from 'vitest';

import { Model, decodeProof, encodeProof, languageModel, pinGhost, verifyTrainStep } from '../lib/index.js';
import type { PinnedGhost, StepProof } from '../lib/index.js';
import { ProverClient, ProverServer, decodeProofList, encodeStepRequest } from '../lib/serve/index.js';
import { ByteWriter, toHex } from '../lib/shared/bytes.js';
import { ModelDirectory } from '../lib/model/model-dir.js';
import { loadHasher } from '../lib/verify/merkle.js';
import { reason } from './helpers/reason.js';
import { faults } from './helpers/fs-faults.js';

vi.mock('node:fs/promises', async (orig) => (await import('./helpers/fs-faults.js')).faultyFs(await orig()));

const base = mkdtempSync(join(tmpdir(), 'gt-serve-steps-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));
const TOKEN = 'correct-horse-battery';
const VOCAB = 24;
const TEXT = Uint32Array.from(Buffer.from('abcabdabcabdacbd'), (c) => c - 97 + 3);

/** A small language model with a training rule, saved to a new directory. */
async function savedModel(name: string): Promise<{ dir: string; g0: PinnedGhost }> {
  const model = languageModel({ vocab: VOCAB, context: 8, dim: 8, layers: 1, heads: 2, hidden: 8, seed: 7 }, { training: { loss: 'cross-entropy', lr: 0.02, clipNorm: 1 } });
  await model.commit();
  const dir = join(base, name);
  const g0 = await model.save(dir);
  model.close();
  return { dir, g0 };
}

/** Examples at offset `o` of the text: 6 ids and the next id of each. */
function examples(o: number): { input: Uint32Array; targets: Uint32Array } {
  return { input: TEXT.slice(o, o + 6), targets: TEXT.slice(o + 1, o + 7) };
}

/** What a step changes on disk (equal before and after a refused step). */
function files(dir: string): { log: number; ghost: string; state: string; stateLog: string } {
  const stateLog = join(dir, 'step-state.log');
  return {
    log: statSync(join(dir, 'updates.bin')).size,
    ghost: toHex(readFileSync(join(dir, 'ghost.bin'))),
    state: toHex(readFileSync(join(dir, 'step-state.bin'))),
    stateLog: existsSync(stateLog) ? toHex(readFileSync(stateLog)) : '',
  };
}

describe('serving a model trained by step proofs', () => {
  it('a client trains through /train-step: every answer verifies, its Ghost file is the server\'s; a second client catches up; a restart continues at the same digest and state', async () => {
    const { dir, g0 } = await savedModel('lm');
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    // Independent check: each proof verified here too, from the pinned Ghost file, one after another.
    let pinned = g0;
    const losses: number[] = [];
    for (let s = 0; s < 4; s++) {
      const r = await client.trainStep(examples(s % 3));
      expect(r.generation).toBe(s + 1);
      expect(r.step).toBe(s);
      const p = decodeProof(r.proof) as StepProof;
      expect(p.kind).toBe('step');
      expect(Array.from(p.targets.kind === 'classes' ? p.targets.ids : [])).toEqual(Array.from(examples(s % 3).targets));
      const v = await verifyTrainStep(pinned, r.proof);
      expect(toHex(v.ghost.digest)).toBe(toHex(r.ghost.digest));
      expect(v.loss).toBe(r.loss);
      pinned = v.ghost;
      losses.push(r.loss);
      expect(toHex(client.ghost.digest)).toBe(toHex(server.ghost.digest));
      expect(client.generation).toBe(server.generation);
    }
    expect(losses[3]).toBeLessThan(losses[0]!);
    // The served model's roots are the client's.
    server.model.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(client.ghost.manifest.tensors[i]!.root)));
    // The update-proof route is not this model's, nor train() the client's.
    const res = await fetch(`${url}/train`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` }, body: new Uint8Array(8) });
    expect(res.status).toBe(409);
    expect(((await res.json()) as { error: string }).error).toBe('STEP_TRAINED');
    await expect(client.train([{ tensor: 0, ids: [0], grads: new Float32Array(8) }])).rejects.toThrow(/step proofs/);

    // A second client pinned at generation 0 follows the four step proofs through /updates.
    const late = await ProverClient.connect(url, g0.bytes, { generation: 0 });
    expect(late.generation).toBe(4);
    expect(toHex(late.ghost.digest)).toBe(toHex(server.ghost.digest));
    const list = decodeProofList(new Uint8Array(await (await fetch(`${url}/updates?from=1&to=3`)).arrayBuffer()));
    expect(list.proofs.map((b) => decodeProof(b).kind)).toEqual(['step', 'step']);
    // A forged step in /updates is refused: the client follows nothing it cannot verify.
    const forged = decodeProof(list.proofs[0]!) as StepProof;
    forged.newGhost = forged.newGhost.slice();
    forged.newGhost[0]! ^= 1;
    const g1 = await pinGhost(new Uint8Array(await (await fetch(`${url}/ghost?generation=1`)).arrayBuffer()));
    expect(await reason(verifyTrainStep(g1, encodeProof(forged)))).toBe('UPDATE_MISMATCH');
    expect(await reason(verifyTrainStep(g1, list.proofs[0]!))).toBe('ACCEPTED');
    await server.close();

    // Restarted: the same generation and digest; the optimizer state is restored (the next step verifies against the client's Ghost file, which commits it).
    const again = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(again.generation).toBe(4);
    expect(toHex(again.ghost.digest)).toBe(toHex(client.ghost.digest));
    const url2 = await again.listen();
    const c2 = await ProverClient.connect(url2, client.ghost.digest, { token: TOKEN });
    const r5 = await c2.trainStep(examples(0));
    expect(r5.generation).toBe(5);
    expect(toHex((await verifyTrainStep(client.ghost, r5.proof)).ghost.digest)).toBe(toHex(again.ghost.digest));
    // Conditional retries: a step asked at an old generation is 409, and the client's sync finds its step among the new ones.
    const stale = await fetch(`${url2}/train-step`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}`, 'X-Ghost-If-Generation': '4' }, body: encodeStepRequest({ input: { kind: 'ids', ids: examples(1).input }, targets: { kind: 'classes', ids: examples(1).targets } }) as Uint8Array<ArrayBuffer> });
    expect(stale.status).toBe(409);
    expect(((await stale.json()) as { error: string }).error).toBe('GENERATION_CONFLICT');
    expect(again.generation).toBe(5);
    await again.close();
    const { model, ghost } = await Model.load(dir);
    expect(toHex(ghost.digest)).toBe(toHex(c2.ghost.digest));
    model.close();
  });

  it('the client returns only a verified step of its own batch: a swapped batch is refused, a lost answer is found again through /updates', async () => {
    const { dir, g0 } = await savedModel('proxy');
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const real = await server.listen();
    // A proxy in front of the server: 'swap' sends another batch in the client's place; 'drop' takes the step, then breaks the connection.
    let mode: 'pass' | 'swap' | 'drop' = 'pass';
    const proxy = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        void (async () => {
          let body: Uint8Array | undefined = req.method === 'POST' ? Buffer.concat(chunks) : undefined;
          const m = req.url === '/train-step' ? mode : 'pass';
          if (m === 'swap') body = encodeStepRequest({ input: { kind: 'ids', ids: examples(2).input }, targets: { kind: 'classes', ids: examples(2).targets } });
          const headers: Record<string, string> = {};
          for (const h of ['authorization', 'x-ghost-if-generation', 'content-type']) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h];
          const r = await fetch(`${real}${req.url}`, { method: req.method!, headers, ...(body ? { body: body as Uint8Array<ArrayBuffer> } : {}) });
          const out = Buffer.from(await r.arrayBuffer());
          if (m === 'drop') {
            mode = 'pass';
            req.socket.destroy();
            return;
          }
          const h: Record<string, string> = {};
          r.headers.forEach((v, k) => (h[k] = v));
          res.writeHead(r.status, h).end(out);
        })();
      });
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    try {
      const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
      await client.trainStep(examples(0));
      mode = 'swap';
      expect(await reason(client.trainStep(examples(1)))).toBe('INPUT_MISMATCH');
      // The server took the other batch; the client did not move on the answer (it follows the step only through /updates).
      expect(client.generation).toBe(1);
      expect(server.generation).toBe(2);
      expect(await client.sync()).toBe(1);
      mode = 'drop';
      const r = await client.trainStep(examples(1));
      expect(server.generation).toBe(3);
      expect(r.generation).toBe(3);
      expect(toHex(r.ghost.digest)).toBe(toHex(server.ghost.digest));
      const p = decodeProof(r.proof) as StepProof;
      expect(p.targets.kind === 'classes' && Array.from(p.targets.ids)).toEqual(Array.from(examples(1).targets));
    } finally {
      await new Promise<void>((resolve) => proxy.close(() => resolve()));
      await server.close();
    }
  });

  it('a step on several sequences: one request, one kind 4 proof the client verifies, the same Ghost file as the library\'s step on the same sequences', async () => {
    const { dir, g0 } = await savedModel('sequences');
    cpSync(dir, `${dir}-twin`, { recursive: true });
    const twin = (await Model.load(`${dir}-twin`)).model;
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    const batch = [examples(0), examples(5), { input: TEXT.slice(2, 5), targets: TEXT.slice(3, 6) }];
    const r = await client.trainStep(batch);
    const p = decodeProof(r.proof) as StepProof;
    expect(r.proof[10]).toBe(4);
    expect(p.more?.length).toBe(2);
    expect(Array.from((p.more![1]!.input as { ids: Uint32Array }).ids)).toEqual(Array.from(batch[2]!.input));
    expect(toHex(r.ghost.digest)).toBe(toHex(server.ghost.digest));
    expect(toHex((await twin.proveTrainStep(batch)).ghost.digest)).toBe(toHex(r.ghost.digest));
    // The next step, of one sequence, follows it.
    expect((await client.trainStep([examples(1)])).generation).toBe(2);
    twin.close();
    await server.close();
  });

  it('hostile step requests get their typed errors and change nothing', async () => {
    const { dir, g0 } = await savedModel('hostile');
    const server = await ProverServer.open(dir, { trainToken: TOKEN, maxBatch: 8 });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    await client.trainStep(examples(0));
    const before = { gen: server.generation, digest: toHex(server.ghost.digest), files: files(dir) };
    const post = async (body: Uint8Array, token = TOKEN): Promise<[number, string]> => {
      const res = await fetch(`${url}/train-step`, { method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: body as Uint8Array<ArrayBuffer> });
      return [res.status, ((await res.json()) as { error: string }).error];
    };
    const good = encodeStepRequest({ input: { kind: 'ids', ids: examples(1).input }, targets: { kind: 'classes', ids: examples(1).targets } });
    const step = (ids: Uint32Array, targets: { kind: 'classes'; ids: Uint32Array } | { kind: 'values'; data: Float32Array }): Uint8Array => encodeStepRequest({ input: { kind: 'ids', ids }, targets });
    const input = examples(1).input;
    expect(await post(good.subarray(0, good.length - 3))).toEqual([400, 'BAD_BODY']); // truncated
    expect(await post(Uint8Array.from([...good, 0]))).toEqual([400, 'BAD_BODY']); // trailing byte
    expect(await post(new ByteWriter().u8(2).u32(0xffffffff).finish())).toEqual([400, 'BAD_BODY']); // a huge id count
    expect(await post(new ByteWriter().u8(2).u32(1).u32(3).u8(1).u32(0xfffffff0).finish())).toEqual([400, 'BAD_BODY']); // a huge target count
    expect(await post(new ByteWriter().u8(2).u32(1).u32(3).u8(9).finish())).toEqual([400, 'BAD_BODY']); // unknown targets kind
    expect(await post(step(input, { kind: 'values', data: Float32Array.from(input, () => NaN) }))).toEqual([400, 'BAD_BODY']); // NaN targets
    expect(await post(step(input, { kind: 'values', data: new Float32Array(6 * VOCAB) }))).toEqual([400, 'BAD_TARGETS']); // values for a cross-entropy model
    expect(await post(step(input, { kind: 'classes', ids: Uint32Array.of(1, 2, 3, 4, 5, VOCAB) }))).toEqual([400, 'BAD_TARGETS']); // class id out of range
    expect(await post(step(input, { kind: 'classes', ids: Uint32Array.of(1, 2, 3) }))).toEqual([400, 'BAD_TARGETS']); // too few targets
    expect(await post(step(Uint32Array.of(1, 2, VOCAB), { kind: 'classes', ids: Uint32Array.of(1, 2, 3) }))).toEqual([400, 'BAD_INPUT']); // id >= vocab
    expect(await post(step(new Uint32Array(9), { kind: 'classes', ids: new Uint32Array(9) }))).toEqual([413, 'BATCH_TOO_LARGE']);
    // Several sequences: a huge or too small count, one bad sequence among good ones, more rows together than maxBatch.
    expect(await post(new ByteWriter().u8(3).u32(0xffffffff).finish())).toEqual([400, 'BAD_BODY']);
    expect(await post(Uint8Array.from([3, 1, 0, 0, 0, ...good]))).toEqual([400, 'BAD_BODY']);
    const two = (a: Uint8Array, b: Uint8Array): Uint8Array => Uint8Array.from([3, 2, 0, 0, 0, ...a, ...b]);
    const small = step(input.slice(0, 3), { kind: 'classes', ids: Uint32Array.of(4, 5, 6) });
    expect(await post(two(small, step(input.slice(0, 4), { kind: 'classes', ids: Uint32Array.of(1, 2, 3) })))).toEqual([400, 'BAD_TARGETS']);
    expect(await post(two(small, step(Uint32Array.of(1, 2, VOCAB), { kind: 'classes', ids: Uint32Array.of(1, 2, 3) })))).toEqual([400, 'BAD_INPUT']);
    expect(await post(two(good, good))).toEqual([413, 'BATCH_TOO_LARGE']); // 12 rows against maxBatch 8
    expect(await post(good, 'wrong-token-here')).toEqual([401, 'UNAUTHORIZED']);
    expect(server.generation).toBe(before.gen);
    expect(toHex(server.ghost.digest)).toBe(before.digest);
    expect(files(dir)).toEqual(before.files);
    // The client checks targets before sending too, and the server still takes an honest step.
    await expect(client.trainStep({ input, targets: Float32Array.of(1) })).rejects.toThrow(/class ids/);
    expect((await client.trainStep(examples(1))).generation).toBe(2);
    await server.close();
  });

  it('a step that cannot be saved is undone (500 NOT_DURABLE) in memory and on disk; a failed undo stops the server and a restart is consistent', async () => {
    const { dir, g0 } = await savedModel('durable');
    const server = await ProverServer.open(dir, { trainToken: TOKEN });
    const url = await server.listen();
    const client = await ProverClient.connect(url, g0.digest, { token: TOKEN });
    await client.trainStep(examples(0));
    // This model's steps write most of its state: each rewrites step-state.bin whole (before ghost.bin). The state log's faults: test/step-state-log.test.ts.
    for (const name of ['ghost.bin', 'step-state.bin']) {
      const at = { gen: server.generation, digest: toHex(server.ghost.digest), files: files(dir) };
      faults.name = name;
      faults.count = 1;
      expect(await reason(client.trainStep(examples(1)))).toBe('NOT_DURABLE');
      expect(faults.count).toBe(0);
      expect(server.generation).toBe(at.gen);
      expect(toHex(server.ghost.digest)).toBe(at.digest);
      expect(files(dir)).toEqual(at.files);
      server.model.tensors.forEach((t, i) => expect(toHex(t.root())).toBe(toHex(client.ghost.manifest.tensors[i]!.root)));
      // The model is back at the previous step and state: the next step verifies from the client's Ghost file.
      const r = await client.trainStep(examples(2));
      expect(r.generation).toBe(at.gen + 1);
    }
    // ghost.bin's rename fails, and so does the undo's: no more training or proving.
    const at = { gen: server.generation, digest: toHex(server.ghost.digest) };
    faults.name = 'ghost.bin';
    faults.count = 2;
    expect(await reason(client.trainStep(examples(1)))).toBe('NOT_DURABLE');
    expect(faults.count).toBe(0);
    expect(await reason(client.trainStep(examples(1)))).toBe('NEEDS_RESTART');
    await server.close();
    const again = await ProverServer.open(dir, { trainToken: TOKEN });
    expect(again.generation).toBe(at.gen);
    expect(toHex(again.ghost.digest)).toBe(at.digest);
    const late = await ProverClient.connect(await again.listen(), g0.bytes, { generation: 0, token: TOKEN });
    expect(toHex(late.ghost.digest)).toBe(at.digest);
    expect((await late.trainStep(examples(1))).generation).toBe(at.gen + 1);
    await again.close();
  });

  it('a directory stopped halfway through saving a step is rolled back to the last published generation at open', async () => {
    const { dir, g0 } = await savedModel('torn');
    let server = await ProverServer.open(dir, { trainToken: TOKEN });
    let client = await ProverClient.connect(await server.listen(), g0.digest, { token: TOKEN });
    await client.trainStep(examples(0));
    await client.trainStep(examples(1));
    await server.close();
    const before = join(base, 'torn-before');
    cpSync(dir, before, { recursive: true });
    const g2 = client.ghost;
    server = await ProverServer.open(dir, { trainToken: TOKEN });
    client = await ProverClient.connect(await server.listen(), g2.digest, { token: TOKEN });
    await client.trainStep(examples(2));
    await server.close();
    const tensorCount = g2.manifest.tensors.length;
    // Step 3's state record as the server appends it to step-state.log (u32 length, the
    // record, its BLAKE3), made here from the model loaded at generation 3 and the logged proof.
    const { model: m3 } = await Model.load(dir, { readOnly: true });
    const { proofs } = await ModelDirectory.readLog(dir);
    const record = m3.stepStateRecord({ proof: decodeProof(proofs[proofs.length - 1]!) as StepProof } as Parameters<typeof m3.stepStateRecord>[0]);
    m3.close();
    const h = await loadHasher();
    const framed = new Uint8Array([...new Uint8Array(Uint32Array.of(record.length).buffer), ...record, ...h.hash(record)]);
    const oldLog = existsSync(join(before, 'step-state.log')) ? readFileSync(join(before, 'step-state.log')) : new Uint8Array(0);
    // The step was logged; then a stop left ghost.bin at generation 2 and each other file at 2 or 3
    // (step-state.bin is compacted only after ghost.bin: always generation 2's; the state log
    // with or without step 3's record, or with a torn or damaged part of it).
    // step-state.bin: generation 2's, or 3's (this model's steps write most of the state: each rewrites it before ghost.bin).
    const cases: { name: string; oldTensors: (i: number) => boolean; newBin?: boolean; stateLog: Uint8Array }[] = [
      { name: 'nothing else written', oldTensors: () => true, stateLog: oldLog },
      { name: 'half of the tensor files written', oldTensors: (i) => i % 2 === 0, stateLog: oldLog },
      { name: 'every tensor file and step-state.bin written', oldTensors: () => false, newBin: true, stateLog: oldLog },
      { name: 'step-state.bin written, not the tensors', oldTensors: () => true, newBin: true, stateLog: oldLog },
      { name: 'every tensor file and the state record written', oldTensors: () => false, stateLog: Buffer.concat([oldLog, framed]) },
      { name: 'the state record written, not the tensors', oldTensors: () => true, stateLog: Buffer.concat([oldLog, framed]) },
      { name: 'half the state record written', oldTensors: () => false, stateLog: Buffer.concat([oldLog, framed.subarray(0, framed.length >> 1)]) },
      { name: 'the state record damaged', oldTensors: () => false, stateLog: Buffer.concat([oldLog, framed.map((b, i) => (i === 9 ? b ^ 1 : b))]) },
    ];
    for (const c of cases) {
      const torn = join(base, `torn-${cases.indexOf(c)}`);
      cpSync(dir, torn, { recursive: true });
      writeFileSync(join(torn, 'ghost.bin'), readFileSync(join(before, 'ghost.bin')));
      if (!c.newBin) writeFileSync(join(torn, 'step-state.bin'), readFileSync(join(before, 'step-state.bin')));
      writeFileSync(join(torn, 'step-state.log'), c.stateLog);
      for (let i = 0; i < tensorCount; i++) {
        if (!c.oldTensors(i)) continue;
        // A tensor file is its main file and its write-ahead log (docs/storage.md): both from generation 2.
        for (const f of [`${i}.gtt`, `${i}.gtt.wal`]) {
          rmSync(join(torn, 'tensors', f), { force: true });
          if (existsSync(join(before, 'tensors', f))) cpSync(join(before, 'tensors', f), join(torn, 'tensors', f));
        }
      }
      expect(await reason(ProverServer.open(torn))).toBe('NON_CANONICAL'); // read-only: refused, not repaired
      const s = await ProverServer.open(torn, { trainToken: TOKEN });
      expect([c.name, s.generation, toHex(s.ghost.digest)]).toEqual([c.name, 2, toHex(g2.digest)]);
      expect(statSync(join(torn, 'updates.bin')).size).toBe(statSync(join(before, 'updates.bin')).size);
      // The unfinished step's state record (whole, torn or damaged) is cut, never applied.
      expect(readFileSync(join(torn, 'step-state.log'))).toEqual(Buffer.from(oldLog));
      const cl = await ProverClient.connect(await s.listen(), g0.bytes, { generation: 0, token: TOKEN });
      const r = await cl.trainStep(examples(2));
      expect(r.generation).toBe(3);
      await s.close();
    }
  });
});
