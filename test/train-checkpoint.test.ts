// Training checkpoints and resume (docs/training.md, "Training checkpoints and resume"):
// a run stopped at arbitrary points (no checkpoint, files closed or dropped) and resumed
// equals an uninterrupted in-memory run bit for bit: every tensor's rows and root, the
// dense parameter, and every step's loss. Damaged or mismatched directories are refused.
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { loadHasher } from '../lib/verify/merkle.js';
import { HopfieldLookup, Linear, Model, NonFiniteError, OutOfRangeError, SparseTensor, StorageError, Tape, Trainer, TrainingRun, init, type Gradients, type TrainerOptions } from '../lib/index.js';

const OPTIONS: TrainerOptions = { lr: 0.02, weightDecay: 0.01, clipNorm: 0.5, schedule: { kind: 'cosine', warmupSteps: 3, totalSteps: 40, floor: 0.1 } };

function buildModel(): Model {
  return new Model([
    new Linear({ weight: init.normal(8, 8, { seed: 1, std: 0.3 }) }),
    new HopfieldLookup({ keys: init.normal(16, 8, { seed: 2, std: 0.5 }), values: init.normal(16, 3, { seed: 3, std: 0.1 }), k: 4, beta: 5, similarity: 'cosine', normalize: true }),
  ]);
}

/** Step s's batch: 12 rows, seeded by s alone. */
function batchOf(s: number): { inputs: Float32Array; targets: Uint32Array } {
  const r = init.normal(12, 8, { seed: 1000 + s, std: 1 });
  const inputs = r.gather(Uint32Array.from({ length: 12 }, (_, i) => i));
  const targets = Uint32Array.from({ length: 12 }, (_, i) => (Math.floor(Math.abs(inputs[i * 8]!) * 7) + i) % 3);
  return { inputs, targets };
}

async function trainStep(model: Model, trainer: Trainer, s: number): Promise<number> {
  const { inputs, targets } = batchOf(s);
  const tape = new Tape();
  const y = await tape.model(model, tape.input(inputs, 8));
  const loss = tape.softmaxCrossEntropy(y, targets);
  const info = await trainer.step(await tape.backward(loss));
  expect(info.step).toBe(s);
  return loss.value;
}

interface Snapshot {
  rows: string[];
  roots: string[];
  beta: string;
}
const hex = (a: ArrayBufferView): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
function snapshot(model: Model): Snapshot {
  return {
    rows: model.tensors.map((t) => hex(t.gather(Uint32Array.from({ length: t.size }, (_, i) => i)))),
    roots: model.tensors.map((t) => hex(t.root())),
    beta: hex((model.layers[1] as HopfieldLookup).betaParam),
  };
}

/** The uninterrupted in-memory reference: losses of steps 1..n and the state after n. */
async function reference(n: number): Promise<{ losses: number[]; after: Snapshot[] }> {
  const model = buildModel();
  await model.commit();
  const trainer = new Trainer(model, OPTIONS);
  const losses: number[] = [], after: Snapshot[] = [snapshot(model)];
  for (let s = 1; s <= n; s++) {
    losses.push(await trainStep(model, trainer, s));
    after.push(snapshot(model));
  }
  return { losses, after };
}

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'gt-trainckpt-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('TrainingRun: checkpoints and resume', () => {
  it('stopped without a checkpoint at arbitrary steps and resumed, it equals the uninterrupted run bit for bit', async () => {
    const N = 24;
    const ref = await reference(N);
    const path = join(dir, 'run');
    let run = await TrainingRun.create(path, buildModel(), OPTIONS);
    const losses: number[] = [];
    const stops = new Set([3, 7, 8, 13, 20]);
    for (let s = 1; s <= N; s++) {
      losses.push(await trainStep(run.model, run.trainer, s));
      if (s % 5 === 0) await run.checkpoint();
      if (stops.has(s)) {
        await run.close({ checkpoint: false });
        run = await TrainingRun.open(path);
        expect(run.steps).toBe(s);
        expect(snapshot(run.model)).toEqual(ref.after[s]);
      }
    }
    expect(losses).toEqual(ref.losses);
    expect(snapshot(run.model)).toEqual(ref.after[N]);
    await run.close();
  });

  /**
   * Crash states built from copies of the directory: `early` is the directory right after
   * the checkpoint at step 5 (its files are what a stop would leave: writes since the
   * checkpoint stay in memory), `log` train.log at step 12 (before the next checkpoint),
   * `late` the directory after the checkpoint at 12.
   */
  async function crashStates(): Promise<{ early: string; late: string; log: Buffer; ref: Awaited<ReturnType<typeof reference>> }> {
    const ref = await reference(16);
    const path = join(dir, 'run');
    const run = await TrainingRun.create(path, buildModel(), OPTIONS);
    for (let s = 1; s <= 12; s++) {
      await trainStep(run.model, run.trainer, s);
      if (s === 5) {
        await run.checkpoint();
        cpSync(path, join(dir, 'early'), { recursive: true });
      }
    }
    const log = readFileSync(join(path, 'train.log'));
    await run.checkpoint();
    cpSync(path, join(dir, 'late'), { recursive: true });
    await run.close({ checkpoint: false });
    return { early: join(dir, 'early'), late: join(dir, 'late'), log, ref };
  }

  /** Opens `path`, checks it is at step `at` equal to the reference, trains on to 16 and checks again. */
  async function resumeAndFinish(path: string, at: number, ref: Awaited<ReturnType<typeof reference>>): Promise<void> {
    const run = await TrainingRun.open(path);
    expect(run.steps).toBe(at);
    expect(snapshot(run.model)).toEqual(ref.after[at]);
    for (let s = at + 1; s <= 16; s++) expect(await trainStep(run.model, run.trainer, s)).toBe(ref.losses[s - 1]);
    expect(snapshot(run.model)).toEqual(ref.after[16]);
    await run.close();
  }

  it('tensor files and train-state.bin at the previous checkpoint, the log holding every step since: replayed to the last step', async () => {
    const { early, log, ref } = await crashStates();
    writeFileSync(join(early, 'train.log'), log);
    await resumeAndFinish(early, 12, ref);
  });

  it('stopped between tensor checkpoints (tensor 1 at step 12, the others at 5; train-state.bin at 5): each tensor replays only its own missing steps', async () => {
    const { early, late, log, ref } = await crashStates();
    writeFileSync(join(early, 'train.log'), log);
    const files = readdirSync(join(late, 'tensors')).filter((f) => f.startsWith('1.gtt'));
    expect(files.length).toBeGreaterThan(0);
    rmSync(join(early, 'tensors', '1.gtt.wal'), { force: true });
    for (const f of files) cpSync(join(late, 'tensors', f), join(early, 'tensors', f));
    await resumeAndFinish(early, 12, ref);
  });

  it('stopped after ghost.bin was replaced, before train-state.bin: the dense parameter comes from train-state.bin, not the newer Ghost file', async () => {
    const { early, late, log, ref } = await crashStates();
    writeFileSync(join(early, 'train.log'), log);
    expect(readFileSync(join(late, 'ghost.bin')).equals(readFileSync(join(early, 'ghost.bin')))).toBe(false);
    cpSync(join(late, 'ghost.bin'), join(early, 'ghost.bin'));
    await resumeAndFinish(early, 12, ref);
  });

  it('stopped after train-state.bin, before the log was emptied: the stale records are skipped', async () => {
    const { late, log, ref } = await crashStates();
    writeFileSync(join(late, 'train.log'), log);
    await resumeAndFinish(late, 12, ref);
  });

  it('a torn last record is cut off: the run resumes at the step before it, and goes on', async () => {
    const { early, log, ref } = await crashStates();
    // Steps 6..12: cut the last record in its middle, then a run with a garbage-checked last record.
    const lens: number[] = [];
    for (let at = 0; at < log.length; ) {
      const n = log.readUInt32LE(at) + 4 + 16;
      lens.push(n);
      at += n;
    }
    expect(lens.length).toBe(7);
    const upTo11 = lens.slice(0, 6).reduce((a, b) => a + b, 0);
    writeFileSync(join(early, 'train.log'), log.subarray(0, upTo11 + 30));
    await resumeAndFinish(early, 11, ref);
  });

  it('a last record with a bad check is a torn tail; a bad check with records after it is refused (WAL_CORRUPT)', async () => {
    const { early, log, ref } = await crashStates();
    const bad = Buffer.from(log);
    bad[bad.length - 1]! ^= 1;
    writeFileSync(join(early, 'train.log'), bad);
    cpSync(early, join(dir, 'early2'), { recursive: true });
    await resumeAndFinish(early, 11, ref);
    const mid = Buffer.from(log);
    mid[40]! ^= 1; // inside the first record's body
    writeFileSync(join(dir, 'early2', 'train.log'), mid);
    const err = await TrainingRun.open(join(dir, 'early2')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).reason).toBe('WAL_CORRUPT');
  });

  it('a tensor file ahead of the log (its log lost) is refused (WAL_MISMATCH), and so is a gap in the steps', async () => {
    const { early, late, log } = await crashStates();
    cpSync(early, join(dir, 'gap'), { recursive: true });
    // Tensor 0 at step 12, train-state.bin at 5, an empty log: ahead of the log.
    for (const f of readdirSync(join(late, 'tensors')).filter((x) => x.startsWith('0.gtt'))) cpSync(join(late, 'tensors', f), join(early, 'tensors', f));
    rmSync(join(early, 'train.log'), { force: true });
    const err = await TrainingRun.open(early).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((err as StorageError).reason).toBe('WAL_MISMATCH');
    // The first record (step 6) dropped: the log starts at 7.
    const first = log.readUInt32LE(0) + 4 + 16;
    writeFileSync(join(dir, 'gap', 'train.log'), log.subarray(first));
    const err2 = await TrainingRun.open(join(dir, 'gap')).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(StorageError);
    expect((err2 as StorageError).reason).toBe('WAL_MISMATCH');
    // A record renumbered (step 6 says 9, its check recomputed): its per-tensor steps still follow on, the step numbers do not.
    const body = Buffer.from(log.subarray(4, first - 16));
    body.writeUInt32LE(9, 0);
    const check = (await loadHasher()).hash(Buffer.concat([log.subarray(0, 4), body])).subarray(0, 16);
    writeFileSync(join(dir, 'gap', 'train.log'), Buffer.concat([log.subarray(0, 4), body, check, log.subarray(first)]));
    const err3 = await TrainingRun.open(join(dir, 'gap')).catch((e: unknown) => e);
    expect(err3).toBeInstanceOf(StorageError);
    expect((err3 as StorageError).reason).toBe('WAL_MISMATCH');
    // A refused open leaves no file locked: the directory opens once repaired.
    writeFileSync(join(dir, 'gap', 'train.log'), log);
    await (await TrainingRun.open(join(dir, 'gap'))).close({ checkpoint: false });
  });

  it('create refuses options the Trainer refuses and leaves no directory; a checkpointed run loads as a plain model (Model.load) at its step', async () => {
    const path = join(dir, 'bad');
    await expect(TrainingRun.create(path, buildModel(), { lr: -1 })).rejects.toThrow(OutOfRangeError);
    expect(existsSync(path)).toBe(false);
    const ref = await reference(6);
    const run = await TrainingRun.create(join(dir, 'run'), buildModel(), OPTIONS);
    for (let s = 1; s <= 6; s++) await trainStep(run.model, run.trainer, s);
    await run.close();
    const { model } = await Model.load(join(dir, 'run'));
    expect(snapshot(model)).toEqual(ref.after[6]);
    model.close();
    // Model.open resumes the run (TrainingRun.open).
    const resumed = await Model.open(join(dir, 'run'));
    expect(resumed).toBeInstanceOf(TrainingRun);
    expect(resumed.steps).toBe(6);
    expect(snapshot(resumed.model)).toEqual(ref.after[6]);
    await resumed.close();
  });

  it('a logged step the optimizer refuses is cut off the log; the run then refuses steps and checkpoints, and reopens at the step before', async () => {
    const path = join(dir, 'run');
    const { clipNorm: _, ...noClip } = OPTIONS;
    const run = await TrainingRun.create(path, buildModel(), noClip);
    for (let s = 1; s <= 3; s++) await trainStep(run.model, run.trainer, s);
    const before = snapshot(run.model);
    const logBytes = readFileSync(join(path, 'train.log')).length;
    // A finite gradient the optimizer refuses after the record is durable: v = (1 - beta2) g^2 overflows f32.
    const t = run.model.tensors[0]!;
    const bad = { sparse: [{ tensor: t, ids: Uint32Array.of(0), grads: new Float32Array(t.dim).fill(1e30) }], dense: [], of: () => null } as unknown as Gradients;
    await expect(run.trainer.step(bad)).rejects.toThrow(NonFiniteError);
    expect(readFileSync(join(path, 'train.log')).length).toBe(logBytes);
    await expect(run.trainer.step(bad)).rejects.toThrow(/reopen/);
    await expect(run.checkpoint()).rejects.toThrow(/reopen/);
    await run.close();
    const again = await TrainingRun.open(path);
    expect(again.steps).toBe(3);
    expect(snapshot(again.model)).toEqual(before);
    await again.close();
  });

  it('a checkpoint while a step is in flight, or a step while a checkpoint is, is refused (it would empty the log under a logged step)', async () => {
    const ref = await reference(4);
    const path = join(dir, 'run');
    const run = await TrainingRun.create(path, buildModel(), OPTIONS);
    for (let s = 1; s <= 2; s++) await trainStep(run.model, run.trainer, s);
    const gradsOf = async (s: number): Promise<Gradients> => {
      const { inputs, targets } = batchOf(s);
      const tape = new Tape();
      return tape.backward(tape.softmaxCrossEntropy(await tape.model(run.model, tape.input(inputs, 8)), targets));
    };
    // step() logs before its first await returns: a checkpoint called right after is refused.
    const step3 = run.trainer.step(await gradsOf(3));
    await expect(run.checkpoint()).rejects.toThrow(/in flight/);
    expect((await step3).step).toBe(3);
    const g4 = await gradsOf(4);
    const ck = run.checkpoint();
    await expect(run.trainer.step(g4)).rejects.toThrow(/in flight/);
    expect(await ck).toBe(3);
    expect((await run.trainer.step(g4)).step).toBe(4);
    await run.close({ checkpoint: false });
    const again = await TrainingRun.open(path);
    expect(snapshot(again.model)).toEqual(ref.after[4]);
    await again.close();
  });
});
