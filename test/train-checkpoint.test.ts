// Training checkpoints and resume (docs/training.md, "Training checkpoints and resume"):
// a run stopped at arbitrary points (no checkpoint, files closed or dropped) and resumed
// equals an uninterrupted in-memory run bit for bit: every tensor's rows and root, the
// dense parameter, and every step's loss. Damaged or mismatched directories are refused.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { HopfieldLookup, Linear, Model, SparseTensor, StorageError, Tape, Trainer, TrainingRun, init, type TrainerOptions } from '../lib/index.js';

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
});
