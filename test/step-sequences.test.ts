/**
 * Step proofs of a batch of several sequences (docs/step-proofs.md, "Batches of
 * sequences"): Model.proveTrainStep([...]) proves one step over several forwards, the
 * verifier recomputes each sequence's forward and backward into one set of accumulators
 * with the loss the mean over every row. Checked against the model tier's tape (a second
 * implementation: one tape per sequence, mergeGradients), against single-sequence
 * proofs (the encoding of one sequence is unchanged), against forgeries of one sequence,
 * and against hostile sequence counts.
 */
import { describe, expect, it } from 'vitest';

import { Model, PatternCache, Tape, decodeProof, encodeProof, languageModel, mergeGradients, verifyTrainStep } from '../lib/index.js';
import type { StepProof } from '../lib/index.js';
import { loadHasher } from '../lib/verify/merkle.js';
import { VerifyBudget } from '../lib/verify/proof-format.js';
import { computeStep } from '../lib/verify/step.js';
import { reason } from './helpers/reason.js';

const TEXT = Uint32Array.from(Buffer.from('the cat sat on the mat. a dog ran to the log; the end. '));
const CONTEXT = 10;

function lm(clipNorm = 0): Model {
  return languageModel({ context: CONTEXT, dim: 8, layers: 2, heads: 2, hidden: 12, seed: 5 }, { training: { loss: 'cross-entropy', lr: 0.01, ...(clipNorm > 0 ? { clipNorm } : {}) } });
}

/** Window s of the text: input and next-byte targets. */
function window(start: number, n = CONTEXT): { input: Uint32Array; targets: Uint32Array } {
  return { input: TEXT.slice(start, start + n), targets: TEXT.slice(start + 1, start + n + 1) };
}

describe('step proofs of several sequences', () => {
  it('the gradient is the mean over the sequences, as the tape and mergeGradients give it', async () => {
    const model = lm();
    const twin = lm();
    const batch = [window(0), window(7), window(19)];
    const pinned = await model.ghost();
    const step = await model.proveTrainStep(batch);
    const p = decodeProof(step.bytes) as StepProof;
    expect(p.more?.length).toBe(2);
    // The verifier's own run gives the gradients the optimizer took (no clipping here).
    const r = computeStep(await loadHasher(), pinned, p, undefined, new VerifyBudget());
    // The tape on the twin (same initial weights): one tape per sequence, merged (scale 1/3: the mean of the sequences' mean losses).
    const tapes = [];
    for (const b of batch) {
      const tape = new Tape();
      const logits = await tape.model(twin, b.input);
      tapes.push(await tape.backward(tape.softmaxCrossEntropy(logits, b.targets)));
    }
    const merged = mergeGradients(tapes);
    let compared = 0;
    for (const w of r.writes) {
      const t = twin.tensors[w.tensor]!;
      const ref = new Float64Array(w.ids.length * t.dim);
      const entry = merged.sparse.find((s) => s.tensor === t);
      if (entry) {
        for (let k = 0; k < entry.ids.length; k++) {
          const at = w.ids.indexOf(entry.ids[k]!);
          expect(at, `tensor ${w.tensor} row ${entry.ids[k]} has a tape gradient but the step did not write it`).toBeGreaterThanOrEqual(0);
          for (let j = 0; j < t.dim; j++) ref[at * t.dim + j]! += entry.grads[k * t.dim + j]!;
        }
      }
      let scale = 0;
      for (const v of ref) scale = Math.max(scale, Math.abs(v));
      for (let i = 0; i < ref.length; i++) expect(Math.abs(w.grads[i]! - ref[i]!)).toBeLessThanOrEqual(1e-4 * scale + 1e-7);
      compared += ref.length;
    }
    expect(compared).toBeGreaterThan(1000);
    // The loss is the mean over every row of the three sequences.
    let sum = 0;
    for (const b of batch) {
      const tape = new Tape();
      const logits = await tape.model(twin, b.input);
      sum += tape.softmaxCrossEntropy(logits, b.targets).value;
    }
    expect(step.loss).toBeCloseTo(sum / 3, 5);
    expect(step.output.length).toBe(3 * CONTEXT * 256);
  });

  it('verifies step after step with caches; the verifier follows the model, and the loss falls', async () => {
    const model = lm(1);
    let pinned = await model.ghost();
    const mine = new PatternCache(), theirs = new PatternCache();
    const losses: number[] = [];
    for (let s = 0; s < 5; s++) {
      const step = await model.proveTrainStep([window(0), window(11), window(23, 7)], { cache: mine });
      const v = await verifyTrainStep(pinned, step.bytes, { cache: theirs });
      expect(v.ghost.digest).toEqual(step.ghost.digest);
      losses.push(v.loss);
      pinned = v.ghost;
    }
    expect(losses[4]).toBeLessThan(losses[0]!);
    expect(pinned.digest).toEqual((await model.ghost()).digest);
  });

  it('one sequence in an array is the single-batch proof, byte for byte (kind 3)', async () => {
    const a = lm(), b = lm();
    const x = await a.proveTrainStep(window(3));
    const y = await b.proveTrainStep([window(3)]);
    expect(Buffer.from(y.bytes).equals(Buffer.from(x.bytes))).toBe(true);
    expect(x.bytes[10]).toBe(3);
    const z = await a.proveTrainStep([window(3), window(5)]);
    expect(z.bytes[10]).toBe(4);
    // Kind 4 round-trips.
    expect(Buffer.from(encodeProof(decodeProof(z.bytes))).equals(Buffer.from(z.bytes))).toBe(true);
  });

  it('refuses forged sequences: a changed target, a dropped sequence, another input', async () => {
    const model = lm();
    const pinned = await model.ghost();
    const step = await model.proveTrainStep([window(0), window(9), window(30)]);
    const p = decodeProof(step.bytes) as StepProof;
    const forge = async (f: (q: StepProof) => StepProof): Promise<string> => reason(verifyTrainStep(pinned, encodeProof(f(structuredClone(p)))));
    // The honest proof verifies.
    expect((await verifyTrainStep(pinned, step.bytes)).ghost.digest).toEqual(step.ghost.digest);
    expect(
      await forge((q) => {
        const t = q.more![1]!.targets as { ids: Uint32Array };
        t.ids[4] = (t.ids[4]! + 1) % 256;
        return q;
      }),
    ).toBe('UPDATE_MISMATCH');
    // Dropping the last sequence: the rows only it read are then revealed for nothing, or the step differs.
    expect(['UPDATE_MISMATCH', 'BLOCK_IDS']).toContain(await forge((q) => ({ ...q, more: q.more!.slice(0, 1) })));
    // Another input for one sequence (its targets kept).
    expect(
      await forge((q) => {
        const x = q.more![0]!.input as { ids: Uint32Array };
        x.ids[2] = (x.ids[2]! + 1) % 256;
        return q;
      }),
    ).not.toBe('ACCEPTED');
  });

  it('a hostile sequence count is refused before anything is read for it', async () => {
    const model = lm();
    const pinned = await model.ghost();
    const step = await model.proveTrainStep([window(0), window(9)]);
    const bytes = Uint8Array.from(step.bytes);
    // The count follows magic (8), version (2), kind (1), ghost (32), step (8).
    const at = 8 + 2 + 1 + 32 + 8;
    expect(new DataView(bytes.buffer).getUint32(at, true)).toBe(2);
    for (const count of [0, 1, 0xffffffff, 70000]) {
      new DataView(bytes.buffer).setUint32(at, count, true);
      const before = process.memoryUsage().arrayBuffers;
      expect(await reason(verifyTrainStep(pinned, bytes))).not.toBe('ACCEPTED');
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 << 20);
    }
    // A count that claims more sequences than the proof holds reads the blocks as a sequence.
    new DataView(bytes.buffer).setUint32(at, 3, true);
    expect(['TRUNCATED', 'BAD_VALUE']).toContain(await reason(verifyTrainStep(pinned, bytes)));
    // More rows over all sequences than maxBatch: refused by the budget.
    new DataView(bytes.buffer).setUint32(at, 2, true);
    expect(await reason(verifyTrainStep(pinned, bytes, { limits: { maxBatch: 2 * CONTEXT - 1 } }))).toBe('BUDGET');
    expect((await verifyTrainStep(pinned, bytes, { limits: { maxBatch: 2 * CONTEXT } })).ghost.digest).toEqual(step.ghost.digest);
  });

  it('refuses an empty batch list and a malformed entry with typed errors', async () => {
    const model = lm();
    await expect(model.proveTrainStep([])).rejects.toMatchObject({ code: 'ERR_GT_INVALID_ARGUMENT' });
    await expect(model.proveTrainStep([window(0), null as never])).rejects.toThrow(/batch\[1\]/);
    await expect(model.proveTrainStep([window(0), { ...window(0), extra: 1 } as never])).rejects.toThrow(/batch\[1\]/);
    // Nothing was applied.
    const fresh = lm();
    expect((await model.ghost()).digest).toEqual((await fresh.ghost()).digest);
  });
});
