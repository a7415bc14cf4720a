/**
 * The model directory without a server (docs/storage.md, "The model directory"):
 * ModelDirectory logs steps, and recover() replays and repairs what a stop left. Every
 * generation is checked against an independent reference: the Ghost digest an in-memory
 * copy of the model reaches by applying the same steps with a plain optimizer (no
 * proofs, no files, no recovery).
 */
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { FormatError, Model, ProofError, SparseAdam, type SparseTensor } from '../lib/index.js';
import { ModelDirectory } from '../lib/model/model-dir.js';
import { toHex } from '../lib/shared/bytes.js';
import { decodeProof, encodeProof } from '../lib/verify/proof-format.js';
import { twoLayerModel } from './helpers/models.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const base = mkdtempSync(join(tmpdir(), 'gt-model-dir-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));
let seq = 0;
const fresh = (): string => join(base, `m${seq++}`);

const SEED = 5;
const LR = 1e-2;
/** One entry of a step: tensor index, distinct ids, gradient rows. */
interface Entry { tensor: number; ids: Uint32Array; grads: Float32Array }

/** Requests of entries (each entry is one generation), from their own generator. */
function requests(count: number): Entry[][] {
  const rng = new Rng(1000 + SEED);
  const out: Entry[][] = [];
  for (let r = 0; r < count; r++) {
    const a = rng.int(0, 149), b = rng.int(150, 299);
    out.push([
      { tensor: 0, ids: Uint32Array.of(a, b), grads: rng.f32(2 * 16) },
      { tensor: 4, ids: Uint32Array.of(rng.int(0, 143)), grads: rng.f32(5) },
    ]);
  }
  return out;
}

/** The reference: digests[g] of an in-memory model after g entries, by SparseAdam.step alone. */
async function referenceDigests(reqs: Entry[][]): Promise<string[]> {
  const { model } = twoLayerModel(new Rng(SEED));
  const opt = new SparseAdam([...model.tensors], { lr: LR });
  const out = [toHex((await model.ghost()).digest)];
  for (const e of reqs.flat()) {
    opt.step([{ tensor: model.tensors[e.tensor]!, ids: e.ids, grads: e.grads }]);
    out.push(toHex((await model.ghost()).digest));
  }
  return out;
}

/** A saved directory of the seeded model (generation 0). */
async function saved(): Promise<string> {
  const dir = fresh();
  const { model } = twoLayerModel(new Rng(SEED));
  await model.save(dir, { optimizerState: true });
  return dir;
}

/**
 * What a prover service does per request, without HTTP: recover, load, start, then per
 * request its entries' update proofs and one appendStep; closes the model after.
 */
async function train(dir: string, reqs: Entry[][]): Promise<number> {
  const store = await ModelDirectory.recover(dir, { writable: true });
  const { model, ghost } = await Model.load(dir);
  try {
    const { generation } = await store.start(ghost);
    const opt = new SparseAdam([...model.tensors], { lr: LR });
    let g = generation;
    for (const req of reqs) {
      const proofs: Uint8Array[] = [];
      for (const e of req) {
        const [p] = await model.proveStep(opt, [{ tensor: model.tensors[e.tensor]!, ids: e.ids, grads: e.grads }]);
        proofs.push(p!.bytes);
        g++;
      }
      await store.appendStep(proofs, await model.ghost(), req.map((e) => model.tensors[e.tensor]!));
    }
    return g;
  } finally {
    model.close();
  }
}

/** Recovers and loads as a service would; the generation and the loaded Ghost digest. */
async function reopen(dir: string, writable = true): Promise<{ generation: number; digest: string; roots: string[] }> {
  const store = await ModelDirectory.recover(dir, { writable });
  const { model, ghost } = await Model.load(dir, { readOnly: !writable });
  try {
    const { generation, ghosts } = await store.start(ghost);
    if (ghosts) expect(toHex(ghosts[generation]!.digest)).toBe(toHex(ghost.digest));
    return { generation, digest: toHex(ghost.digest), roots: model.tensors.map((t) => toHex(t.root())) };
  } finally {
    model.close();
  }
}

/** Hashes of every file of the directory, to show a refusal changed nothing. */
function filesOf(dir: string): string {
  const walk = (d: string): string[] => readdirSync(d).sort().flatMap((f) => {
    const p = join(d, f);
    return statSync(p).isDirectory() ? walk(p) : [`${p.slice(dir.length)}:${createHash('sha256').update(readFileSync(p)).digest('hex')}`];
  });
  return walk(dir).join('\n');
}

const logSize = (dir: string): number => statSync(join(dir, 'updates.bin')).size;
/** Copies tensor i's files (the tensor file and any side files) from one directory to another. */
function copyTensor(from: string, to: string, i: number): void {
  for (const f of readdirSync(join(from, 'tensors'))) if (f.startsWith(`${i}.gtt`)) cpSync(join(from, 'tensors', f), join(to, 'tensors', f));
}

describe('ModelDirectory: the log, replayed and repaired without a server', () => {
  const reqs = requests(3);
  const ref = referenceDigests(reqs);

  it('each logged step moves the directory to the generation the reference reaches, and a reopen replays to it', async () => {
    const want = await ref;
    const dir = await saved();
    expect((await reopen(dir)).digest).toBe(want[0]);
    expect(statSync(join(dir, 'ghost-0.bin')).size).toBeGreaterThan(0);
    expect(await train(dir, reqs.slice(0, 1))).toBe(2);
    expect(await reopen(dir)).toMatchObject({ generation: 2, digest: want[2] });
    expect(await train(dir, reqs.slice(1))).toBe(6);
    expect(await reopen(dir, false)).toMatchObject({ generation: 6, digest: want[6] });
    const log = await ModelDirectory.readLog(dir);
    expect(log.proofs.length).toBe(6);
    expect(log.validBytes).toBe(log.fileBytes);
  });

  it('a step is durable once appendStep resolves: a copy taken then, the model still open (a crash), opens at the new generation', async () => {
    const want = await ref;
    const dir = await saved();
    const store = await ModelDirectory.recover(dir, { writable: true });
    const { model, ghost } = await Model.load(dir);
    const copies: string[] = [];
    try {
      await store.start(ghost);
      const opt = new SparseAdam([...model.tensors], { lr: LR });
      for (const req of reqs.slice(0, 2)) {
        const proofs: Uint8Array[] = [];
        for (const e of req) proofs.push((await model.proveStep(opt, [{ tensor: model.tensors[e.tensor]!, ids: e.ids, grads: e.grads }]))[0]!.bytes);
        await store.appendStep(proofs, await model.ghost(), req.map((e) => model.tensors[e.tensor]!));
        const copy = `${dir}-at${copies.length}`;
        cpSync(dir, copy, { recursive: true });
        copies.push(copy);
      }
    } finally {
      model.close();
    }
    expect(await reopen(copies[0]!, false)).toMatchObject({ generation: 2, digest: want[2] });
    expect(await reopen(copies[1]!, false)).toMatchObject({ generation: 4, digest: want[4] });
  });

  it('a stop after the log, with the tensor files ahead of ghost.bin, resumes at the generation the files hold', async () => {
    const want = await ref;
    const dir = await saved();
    await train(dir, reqs.slice(0, 1));
    const ghostAt2 = readFileSync(join(dir, 'ghost.bin'));
    await train(dir, reqs.slice(1, 2));
    const log4 = logSize(dir);
    writeFileSync(join(dir, 'ghost.bin'), ghostAt2); // ghost.bin's replacement did not reach the disk
    // (reopen loads ghost.bin: its digest shows ghost.bin was rewritten to generation 4)
    expect(await reopen(dir)).toMatchObject({ generation: 4, digest: want[4] });
    expect(logSize(dir)).toBe(log4);
  });

  it('a stop between two tensor checkpoints of one request resumes at the generation between; read-only refuses and changes nothing', async () => {
    const want = await ref;
    const dir = await saved();
    await train(dir, reqs.slice(0, 1));
    const snap = `${dir}-snap`;
    cpSync(dir, snap, { recursive: true });
    await train(dir, reqs.slice(1, 2)); // entries: tensor 0 (generation 3), tensor 4 (generation 4)
    // tensor 4's checkpoint and ghost.bin did not happen: the files hold generation 3.
    copyTensor(snap, dir, 4);
    cpSync(join(snap, 'ghost.bin'), join(dir, 'ghost.bin'));
    const before = filesOf(dir);
    const ro = ModelDirectory.recover(dir, { writable: false });
    await expect(ro).rejects.toBeInstanceOf(FormatError);
    await expect(ro).rejects.toThrow(/interrupted while saving generation 3; open it with training enabled once to repair it/);
    expect(filesOf(dir)).toBe(before);
    const r = await reopen(dir);
    expect(r).toMatchObject({ generation: 3, digest: want[3] });
    const log = await ModelDirectory.readLog(dir);
    expect(log.proofs.length).toBe(3);
    expect(log.fileBytes).toBe(log.validBytes);
    // and it goes on from there: the next request lands where the reference's entries 3.. lead
    // (the cut entry is not replayed: the reference applies the same entries in the same order).
    const tail = [[reqs[1]![1]!], reqs[2]!];
    expect(await train(dir, tail)).toBe(6);
    expect((await reopen(dir)).digest).toBe(want[6]);
  });

  it('a stop after the log but before any tensor checkpoint cuts the log back to ghost.bin', async () => {
    const want = await ref;
    const dir = await saved();
    await train(dir, reqs.slice(0, 1));
    const snap = `${dir}-snap`;
    cpSync(dir, snap, { recursive: true });
    await train(dir, reqs.slice(1, 2));
    rmSync(join(dir, 'tensors'), { recursive: true });
    cpSync(join(snap, 'tensors'), join(dir, 'tensors'), { recursive: true });
    cpSync(join(snap, 'ghost.bin'), join(dir, 'ghost.bin'));
    expect(await reopen(dir)).toMatchObject({ generation: 2, digest: want[2] });
    expect(logSize(dir)).toBe(logSize(snap));
  });

  it('a torn last record is left out read-only and cut off when writable', async () => {
    const want = await ref;
    const dir = await saved();
    await train(dir, reqs.slice(0, 1));
    const whole = logSize(dir);
    // a length cut short, a record longer than the file, a record 1 byte short of its length
    for (const tail of [Uint8Array.of(9, 0), Uint8Array.of(200, 0, 0, 0, 1, 2, 3), Uint8Array.of(3, 0, 0, 0, 1, 2)]) {
      writeFileSync(join(dir, 'updates.bin'), tail, { flag: 'a' });
      const log = await ModelDirectory.readLog(dir);
      expect([log.proofs.length, log.validBytes, log.fileBytes]).toEqual([2, whole, whole + tail.length]);
      expect(await reopen(dir, false)).toMatchObject({ generation: 2, digest: want[2] });
      expect(logSize(dir)).toBe(whole + tail.length);
      expect(await reopen(dir)).toMatchObject({ generation: 2, digest: want[2] });
      expect(logSize(dir)).toBe(whole);
    }
  });

  it('a ghost.bin off the path of the log is refused (NON_CANONICAL), writable or not, and nothing is written', async () => {
    const dir = await saved();
    await train(dir, reqs.slice(0, 1));
    const other = await twoLayerModel(new Rng(SEED + 1)).model.ghost();
    writeFileSync(join(dir, 'ghost.bin'), other.bytes);
    const before = filesOf(dir);
    for (const writable of [false, true]) {
      const p = ModelDirectory.recover(dir, { writable });
      expect(await reason(p)).toBe('NON_CANONICAL');
      await expect(p).rejects.toThrow(`${dir}: ghost.bin (${toHex(other.digest)}) is not on the path of updates.bin from ghost-0.bin`);
    }
    expect(filesOf(dir)).toBe(before);
  });

  it('the replay from ghost-0.bin verifies every step: a tampered record in the middle is refused', async () => {
    const dir = await saved();
    await train(dir, reqs.slice(0, 2));
    const log = await ModelDirectory.readLog(dir);
    // Entry 1 (generation 1 -> 2) with a gradient of the other sign: same length, same claimed
    // new root. (Doubling it would not do: Adam's first step of a row is lr * sign(g), the same bits.)
    const p = decodeProof(log.proofs[1]!);
    if (p.kind !== 'update') throw new Error('expected an update proof');
    p.grads[0] = -p.grads[0]!;
    const q = encodeProof(p);
    expect(q.length).toBe(log.proofs[1]!.length);
    const bytes = readFileSync(join(dir, 'updates.bin'));
    const at = 4 + log.proofs[0]!.length + 4;
    bytes.set(q, at);
    writeFileSync(join(dir, 'updates.bin'), bytes);
    const before = filesOf(dir);
    const err = await ModelDirectory.recover(dir, { writable: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProofError);
    expect(filesOf(dir)).toBe(before);
  });

  it('without ghost-0.bin only the last step is checked: it must be the one ghost.bin holds', async () => {
    const want = await ref;
    const dir = await saved();
    await train(dir, reqs.slice(0, 2));
    rmSync(join(dir, 'ghost-0.bin'));
    expect(await reopen(dir, false)).toMatchObject({ generation: 4, digest: want[4] });
    // The log's last request cut off: it ends with a step of tensor 4 (generation 2) whose new
    // root ghost.bin (generation 4, tensor 4 stepped again) does not hold. (Cutting one record only
    // would leave a step of tensor 0, whose root generation 4 still holds: this check compares the
    // stepped tensor's root alone.)
    const log = await ModelDirectory.readLog(dir);
    writeFileSync(join(dir, 'updates.bin'), readFileSync(join(dir, 'updates.bin')).subarray(0, 8 + log.proofs[0]!.length + log.proofs[1]!.length));
    const store = await ModelDirectory.recover(dir, { writable: false });
    const { model, ghost } = await Model.load(dir, { readOnly: true });
    try {
      const p = store.start(ghost);
      expect(await reason(p)).toBe('NON_CANONICAL');
      await expect(p).rejects.toThrow(`${dir}: updates.bin ends with a step that ghost.bin does not hold`);
    } finally {
      model.close();
    }
  });

  it('a step whose ghost.bin cannot be written is undone: log, ghost.bin and tensor roots as before', async () => {
    const want = await ref;
    const dir = await saved();
    await train(dir, reqs.slice(0, 1));
    const log2 = logSize(dir), ghost2 = readFileSync(join(dir, 'ghost.bin'));
    const store = await ModelDirectory.recover(dir, { writable: true });
    const { model, ghost } = await Model.load(dir);
    try {
      await store.start(ghost);
      const opt = new SparseAdam([...model.tensors], { lr: LR });
      const e = reqs[1]![0]!;
      const t: SparseTensor = model.tensors[e.tensor]!;
      const snapshot = opt.snapshot(t, e.ids);
      const [p] = await model.proveStep(opt, [{ tensor: t, ids: e.ids, grads: e.grads }]);
      // ghost.bin's new copy cannot be created: the step fails after its log record and checkpoint.
      const blocker = join(dir, `ghost.bin.tmp-${process.pid}`);
      mkdirSync(blocker);
      await expect(store.appendStep([p!.bytes], await model.ghost(), [t])).rejects.toThrow();
      expect(logSize(dir)).toBeGreaterThan(log2);
      rmSync(blocker, { recursive: true });
      opt.restore(snapshot);
      await store.undoStep(ghost, [t]);
      expect(logSize(dir)).toBe(log2);
      expect(readFileSync(join(dir, 'ghost.bin')).equals(ghost2)).toBe(true);
    } finally {
      model.close();
    }
    expect(await reopen(dir)).toMatchObject({ generation: 2, digest: want[2] });
  });

  it('the history is handed over once, and a read-only directory takes no step', async () => {
    const dir = await saved();
    const store = await ModelDirectory.recover(dir, { writable: false });
    const { model, ghost } = await Model.load(dir, { readOnly: true });
    try {
      await expect(store.appendStep([], ghost, [])).rejects.toThrow(/start\(\) the history/);
      expect((await store.start(ghost)).generation).toBe(0);
      await expect(store.start(ghost)).rejects.toThrow(/started already/);
      await expect(store.appendStep([], ghost, [])).rejects.toThrow(/opened read-only/);
    } finally {
      model.close();
    }
  });
});
