/**
 * mergeGradients: B tapes' gradients as one, against one tape over the B batches'
 * rows concatenated (the same mean loss), reduced to dense per-tensor sums in f64;
 * dense parameters, of(value), the scale option and hostile lists.
 */
import { describe, expect, it } from 'vitest';
import { Embedding, InvalidArgumentError, Linear, OutOfRangeError, RMSNorm, SparseTensor, Tape, Trainer, mergeGradients } from '../lib/index.js';
import type { Gradients, SparseGrad } from '../lib/index.js';
import { Rng } from './helpers/rng.js';

const d = 6, V = 11, C = 5;

function model(rng: Rng): { emb: Embedding; norm: RMSNorm; head: Linear } {
  return {
    emb: new Embedding(SparseTensor.fromArray(rng.f32(V * d, 0.8), d)),
    norm: new RMSNorm({ gain: SparseTensor.fromArray(Float32Array.from({ length: d }, () => 1 + 0.2 * rng.signed()), d) }),
    head: new Linear({ weight: SparseTensor.fromArray(rng.f32(C * d, 0.5), d), bias: SparseTensor.fromArray(rng.f32(C, 0.2), C) }),
  };
}

async function grads(m: ReturnType<typeof model>, ids: number[], targets: number[]): Promise<{ g: Gradients; tape: Tape; e: unknown }> {
  const tape = new Tape();
  const e = await tape.layer(m.emb, ids);
  const y = await tape.layer(m.head, await tape.layer(m.norm, e));
  return { g: await tape.backward(tape.softmaxCrossEntropy(y, targets)), tape, e };
}

/** Each tensor's gradient summed per row, as a dense f64 matrix. */
function denseOf(list: readonly SparseGrad[]): Map<SparseTensor, Float64Array> {
  const out = new Map<SparseTensor, Float64Array>();
  for (const s of list) {
    const t = s.tensor, acc = out.get(t) ?? new Float64Array(t.size * t.dim);
    const ids = Array.from(s.ids);
    ids.forEach((id, r) => {
      for (let j = 0; j < t.dim; j++) acc[id * t.dim + j]! += s.grads[r * t.dim + j]!;
    });
    out.set(t, acc);
  }
  return out;
}

describe('mergeGradients', () => {
  it('B tapes merged equal one tape over the concatenated batches (the mean of the losses)', async () => {
    const rng = new Rng(3);
    const m = model(rng);
    // Equal batch sizes, so the mean of the per-tape means is the mean over all rows.
    const n = 5;
    const batches = [0, 1, 2].map(() => ({
      ids: Array.from({ length: n }, () => rng.int(0, V - 1)),
      targets: Array.from({ length: n }, () => rng.int(0, C - 1)),
    }));
    batches[1]!.ids[0] = batches[0]!.ids[0]!; // a row shared across tapes
    const parts = await Promise.all(batches.map((b) => grads(m, b.ids, b.targets)));
    const merged = mergeGradients(parts.map((p) => p.g));
    const whole = await grads(m, batches.flatMap((b) => b.ids), batches.flatMap((b) => b.targets));
    const got = denseOf(merged.sparse), want = denseOf(whole.g.sparse);
    expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
    for (const [t, w] of want) {
      const g = got.get(t)!;
      let worst = 0, scaleOf = 0;
      for (let j = 0; j < w.length; j++) {
        worst = Math.max(worst, Math.abs(g[j]! - w[j]!));
        scaleOf = Math.max(scaleOf, Math.abs(w[j]!));
      }
      expect(scaleOf).toBeGreaterThan(1e-3);
      expect(worst).toBeLessThan(1e-6 * Math.max(1, scaleOf));
    }
    // Rows concatenated in list order, each tape's own rows first to last.
    const embRows = merged.sparse.find((s) => s.tensor === m.emb.table)!;
    expect(Array.from(embRows.ids)).toEqual(batches.flatMap((b) => b.ids));
    // A Trainer takes the merged gradients (the tensor appears once).
    const tr = new Trainer([m.emb, m.norm, m.head], { clipNorm: 1 });
    const info = await tr.step(merged);
    expect(info.step).toBe(1);
  });

  it('dense parameters are summed, of(value) scales the owning tape\'s gradient, scale applies to all', async () => {
    const rng = new Rng(5);
    const m = model(rng);
    const a = await grads(m, [1, 2, 3], [0, 1, 2]);
    const b = await grads(m, [4, 2], [3, 4]);
    const param = new Float32Array(3);
    const withDense = (g: Gradients, grad: number[]): Gradients => ({ sparse: g.sparse, dense: [{ param, grad: Float32Array.from(grad) }], of: (v) => g.of(v) });
    const merged = mergeGradients([withDense(a.g, [1, 2, 3]), withDense(b.g, [0.5, -4, 1])], { scale: 0.25 });
    expect(Array.from(merged.dense[0]!.grad)).toEqual([0.375, -0.5, 1]);
    expect(merged.dense[0]!.param).toBe(param);
    const ea = a.g.of(a.e as never)!, eb = b.g.of(b.e as never)!;
    expect(Array.from(merged.of(a.e as never)!)).toEqual(Array.from(ea, (x) => Math.fround(x * 0.25)));
    expect(Array.from(merged.of(b.e as never)!)).toEqual(Array.from(eb, (x) => Math.fround(x * 0.25)));
    const head = merged.sparse.find((s) => s.tensor === m.head.weight)!;
    const ha = a.g.sparse.find((s) => s.tensor === m.head.weight)!;
    expect(head.grads[0]).toBe(Math.fround(ha.grads[0]! * 0.25));
    // A value of a tape not merged.
    const c = await grads(m, [0], [0]);
    expect(() => merged.of(c.e as never)).toThrow(InvalidArgumentError);
    // Default scale: 1 / list.length.
    const half = mergeGradients([a.g, b.g]);
    expect(half.sparse.find((s) => s.tensor === m.head.weight)!.grads[0]).toBe(Math.fround(ha.grads[0]! / 2));
  });

  it('hostile lists are typed errors', async () => {
    const rng = new Rng(7);
    const m = model(rng);
    const a = await grads(m, [1, 2], [0, 1]);
    expect(() => mergeGradients([])).toThrow(InvalidArgumentError);
    expect(() => mergeGradients(null as never)).toThrow(InvalidArgumentError);
    expect(() => mergeGradients([a.g, { sparse: [] } as never])).toThrow(InvalidArgumentError);
    expect(() => mergeGradients([a.g], { scale: 0 })).toThrow(OutOfRangeError);
    expect(() => mergeGradients([a.g], { scale: Number.NaN })).toThrow(OutOfRangeError);
    expect(() => mergeGradients([a.g], { bogus: 1 } as never)).toThrow(InvalidArgumentError);
    const short: Gradients = { sparse: [{ tensor: m.head.weight, ids: [0, 1], grads: new Float32Array(d) }], dense: [], of: () => null };
    expect(() => mergeGradients([a.g, short])).toThrow(InvalidArgumentError);
    const badDense: Gradients = { sparse: [], dense: [{ param: new Float32Array(2), grad: new Float32Array(3) }], of: () => null };
    expect(() => mergeGradients([badDense])).toThrow(InvalidArgumentError);
  });
});
