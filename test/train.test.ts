/**
 * The training API (lib/model/train/): the tape's automatic backward against central
 * finite differences of the f64 loss and against the hand-wired chain bit for bit;
 * the losses against a float64 reference and hostile input.
 */
import { describe, expect, it } from 'vitest';

import { Embedding, GatedMLP, HopfieldLookup, Linear, Model, Projection, RMSNorm, Residual, SparseSelfAttention, SparseTensor } from '../lib/index.js';
import { InvalidArgumentError, NonFiniteError, OutOfRangeError } from '../lib/shared/errors.js';
import type { SparseGrad } from '../lib/model/optim.js';
import { mse, softmaxCrossEntropy } from '../lib/model/train/losses.js';
import { Tape, type Gradients, type TapeLoss, type TapeValue } from '../lib/model/train/tape.js';
import { Rng } from './helpers/rng.js';

/** A sparse gradient summed per row into a dense n x dim array (f64). */
function densify(g: SparseGrad): Float64Array {
  const d = g.tensor.dim;
  const out = new Float64Array(g.tensor.size * d);
  Array.from(g.ids).forEach((id, i) => {
    for (let j = 0; j < d; j++) out[id * d + j]! += g.grads[i * d + j]!;
  });
  return out;
}

function bits(a: Float32Array): string {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
}

interface Probe {
  label: string;
  analytic: number;
  fd: number;
}

/**
 * Central differences of `loss()` (f64) for `count` entries of each parameter tensor
 * that got a gradient, each dense parameter, and the input entries `inputs` (an array
 * the forward reads). Returns every probe.
 */
async function finiteDifferences(
  loss: () => Promise<number>,
  grads: Gradients,
  inputs: { label: string; data: Float32Array; grad: Float32Array }[],
  rng: Rng,
  count = 6,
  eps = 1e-2,
): Promise<Probe[]> {
  const probes: Probe[] = [];
  const central = async (set: (v: number) => void, orig: number): Promise<number> => {
    set(orig + eps);
    const up = await loss();
    set(orig - eps);
    const down = await loss();
    set(orig);
    return (up - down) / (2 * eps);
  };
  for (const [ti, g] of grads.sparse.entries()) {
    const dense = densify(g);
    const t = g.tensor, d = t.dim;
    const rows = [...new Set(Array.from(g.ids))];
    for (let s = 0; s < count; s++) {
      const id = rows[rng.int(0, rows.length - 1)]!, j = rng.int(0, d - 1);
      const row = t.gather([id]);
      const orig = row[j]!;
      const fd = await central((v) => {
        row[j] = v;
        t.scatter([id], row);
      }, orig);
      probes.push({ label: `tensor ${ti} [${id}][${j}]`, analytic: dense[id * d + j]!, fd });
    }
  }
  for (const [pi, p] of grads.dense.entries()) {
    const j = rng.int(0, p.param.length - 1);
    const fd = await central((v) => (p.param[j] = v), p.param[j]!);
    probes.push({ label: `dense ${pi} [${j}]`, analytic: p.grad[j]!, fd });
  }
  for (const x of inputs) {
    for (let s = 0; s < count; s++) {
      const i = rng.int(0, x.data.length - 1);
      const fd = await central((v) => (x.data[i] = v), x.data[i]!);
      probes.push({ label: `${x.label}[${i}]`, analytic: x.grad[i]!, fd });
    }
  }
  return probes;
}

function expectClose(probes: Probe[]): void {
  if (process.env.SHOW_PROBES) console.log(probes.map((p) => `${p.label} ${p.fd.toExponential(3)} ${p.analytic.toExponential(3)}`).join('\n'));
  const bad = probes.filter((p) => !(Math.abs(p.fd - p.analytic) <= 1e-5 + 5e-3 * Math.abs(p.fd)));
  expect(bad.map((p) => `${p.label}: finite difference ${p.fd}, tape ${p.analytic}`)).toEqual([]);
  // The probes must see real gradients, or the comparison could not fail.
  expect(probes.filter((p) => Math.abs(p.fd) > 1e-3).length).toBeGreaterThan(probes.length / 3);
}

/** Sparse layers with k = N (or k = n): every pattern takes part, so the loss is smooth and finite differences apply. */
function hopfield(rng: Rng, n: number, d: number, dv: number, scale = 0.7): HopfieldLookup {
  return new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(n * d, scale), d), values: SparseTensor.fromArray(rng.f32(n * dv, scale), dv), k: n, beta: 1.3 });
}

function attention(rng: Rng, d: number, n: number): SparseSelfAttention {
  const proj = (): Projection => new Projection({ weight: SparseTensor.fromArray(rng.f32(d * d, 0.5), d) });
  return new SparseSelfAttention({ heads: 2, k: n, query: proj(), key: proj(), value: proj(), output: proj() });
}

describe('Tape: backward against central finite differences of the f64 loss', () => {
  it('HopfieldLookup -> HopfieldLookup -> softmax cross-entropy (keys, values, beta and the input)', async () => {
    const rng = new Rng(7);
    const l1 = hopfield(rng, 6, 5, 4), l2 = hopfield(rng, 5, 4, 3);
    const x = rng.f32(4 * 5);
    const targets = [0, 2, 1, 2];
    const run = async (): Promise<{ tape: Tape; xv: TapeValue; loss: TapeLoss }> => {
      const tape = new Tape();
      const xv = tape.input(x, 5);
      const y = await tape.layer(l2, await tape.layer(l1, xv));
      return { tape, xv, loss: tape.softmaxCrossEntropy(y, targets) };
    };
    const { tape, xv, loss } = await run();
    const grads = await tape.backward(loss);
    expect(grads.sparse.map((g) => g.tensor)).toEqual([l2.keys, l2.values, l1.keys, l1.values]);
    expect(grads.dense.map((g) => g.param)).toEqual([l2.betaParam, l1.betaParam]);
    const probes = await finiteDifferences(async () => (await run()).loss.value, grads, [{ label: 'x', data: x, grad: grads.of(xv)! }], rng);
    expectClose(probes);
  });

  it('Embedding -> SparseSelfAttention with a residual add -> HopfieldLookup (the residual stream is used twice)', async () => {
    const rng = new Rng(8);
    const n = 6, d = 8;
    const emb = new Embedding(SparseTensor.fromArray(rng.f32(10 * d, 0.8), d));
    const att = attention(rng, d, n);
    const head = hopfield(rng, 7, d, 3);
    const ids = [3, 1, 4, 1, 5, 9]; // id 1 twice: its row gets two gradients
    const targets = [0, 1, 2, 2, 1, 0];
    const run = async (): Promise<{ tape: Tape; loss: TapeLoss }> => {
      const tape = new Tape();
      const e = await tape.layer(emb, ids);
      const h = tape.add(e, await tape.layer(att, e));
      return { tape, loss: tape.softmaxCrossEntropy(await tape.layer(head, h), targets) };
    };
    const { tape, loss } = await run();
    const grads = await tape.backward(loss);
    expect(grads.sparse.map((g) => g.tensor)).toContain(emb.table);
    expect(grads.sparse).toHaveLength(1 + 4 + 2); // the table, four projections, keys and values
    const probes = await finiteDifferences(async () => (await run()).loss.value, grads, [], rng, 8);
    expectClose(probes);
  });

  it('one layer used twice (shared weights): its sparse rows and its beta gather both uses', async () => {
    const rng = new Rng(17);
    const l = hopfield(rng, 6, 4, 4), head = hopfield(rng, 5, 4, 3);
    const x = rng.f32(3 * 4);
    const run = async (): Promise<{ tape: Tape; loss: TapeLoss }> => {
      const tape = new Tape();
      const h = await tape.layer(l, await tape.layer(l, tape.input(x, 4)));
      return { tape, loss: tape.softmaxCrossEntropy(await tape.layer(head, h), [2, 0, 1]) };
    };
    const { tape, loss } = await run();
    const grads = await tape.backward(loss);
    expect(grads.sparse.find((g) => g.tensor === l.values)!.ids).toHaveLength(2 * 3 * 6); // two uses x 3 rows x k
    expect(grads.dense.map((g) => g.param)).toEqual([head.betaParam, l.betaParam]);
    expectClose(await finiteDifferences(async () => (await run()).loss.value, grads, [], rng));
  });

  it('a graph Model on the tape (Residual([RMSNorm, Linear]), a GatedMLP residual, a Hopfield head): model.forward bit for bit, gradients vs finite differences', async () => {
    const rng = new Rng(18);
    const d = 6, hdim = 8;
    const lin = (o: number, i: number, bias = false): Linear =>
      new Linear({ weight: SparseTensor.fromArray(rng.f32(o * i, 0.5), i), ...(bias ? { bias: SparseTensor.fromArray(rng.f32(o, 0.2), o) } : {}) });
    const gain = (): RMSNorm => new RMSNorm({ gain: SparseTensor.fromArray(Float32Array.from({ length: d }, () => 1 + 0.2 * rng.signed()), d) });
    const model = new Model([
      lin(d, 5, true),
      new Residual([gain(), lin(d, d)]),
      new Residual([gain(), new GatedMLP({ gate: lin(hdim, d), up: lin(hdim, d), down: lin(d, hdim) })]),
      hopfield(rng, 7, d, 3),
    ]);
    const x = rng.f32(4 * 5);
    const targets = [1, 0, 2, 1];
    const run = async (): Promise<{ tape: Tape; xv: TapeValue; y: TapeValue; loss: TapeLoss }> => {
      const tape = new Tape();
      const xv = tape.input(x, 5);
      const y = await tape.model(model, xv);
      return { tape, xv, y, loss: tape.softmaxCrossEntropy(y, targets) };
    };
    const { tape, xv, y, loss } = await run();
    expect(bits(y.data)).toBe(bits(await model.forward(x)));
    const grads = await tape.backward(loss);
    expect(new Set(grads.sparse.map((g) => g.tensor))).toEqual(new Set(model.tensors));
    // RMSNorm curves the loss strongly: eps 1e-2 leaves a 5% truncation error on the first layer (3e-3 and 1e-3 agree).
    expectClose(await finiteDifferences(async () => (await run()).loss.value, grads, [{ label: 'x', data: x, grad: grads.of(xv)! }], rng, 4, 3e-3));
  });

  it('MSE through a HopfieldLookup (and an add of a value to itself: its gradient counts twice)', async () => {
    const rng = new Rng(9);
    const l = hopfield(rng, 5, 4, 3);
    const x = rng.f32(3 * 4);
    const target = rng.f32(3 * 3);
    const run = async (): Promise<{ tape: Tape; xv: TapeValue; loss: TapeLoss }> => {
      const tape = new Tape();
      const xv = tape.input(x, 4);
      const y = await tape.layer(l, xv);
      return { tape, xv, loss: tape.mse(tape.add(y, y), target) };
    };
    const { tape, xv, loss } = await run();
    const grads = await tape.backward(loss);
    const probes = await finiteDifferences(async () => (await run()).loss.value, grads, [{ label: 'x', data: x, grad: grads.of(xv)! }], rng);
    expectClose(probes);
  });
});

describe('Tape: the same numbers as the hand-wired chain', () => {
  it('Embedding -> attention + residual -> HopfieldLookup: every gradient bit for bit', async () => {
    const rng = new Rng(10);
    const n = 6, d = 8;
    const emb = new Embedding(SparseTensor.fromArray(rng.f32(10 * d, 0.8), d));
    const att = attention(rng, d, n);
    const head = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(9 * d), d), values: SparseTensor.fromArray(rng.f32(9 * 3), 3), k: 4 });
    const ids = Uint32Array.of(3, 1, 4, 1, 5, 9);
    const targets = [0, 1, 2, 2, 1, 0];

    // By hand: forward, keep each context, backward, pass dx on, sum the residual's two gradients.
    const e = emb.forward(ids);
    const a = await att.forward(e);
    const h = new Float32Array(e.length);
    for (let i = 0; i < h.length; i++) h[i] = e[i]! + a.y[i]!;
    const f = await head.forward(h);
    const ce = softmaxCrossEntropy(f.y, 3, targets);
    const gh = await head.backward(f.ctx, ce.grad);
    const ga = await att.backward(a.ctx, gh.dx);
    const de = new Float32Array(e.length);
    for (let i = 0; i < de.length; i++) de[i] = gh.dx[i]! + ga.dx[i]!;
    const ge = emb.backward(ids, de);
    const hand = new Map<SparseTensor, SparseGrad>([...gh.grads, ...ga.grads, ge].map((g) => [g.tensor, g]));

    const tape = new Tape();
    const ev = await tape.layer(emb, ids);
    const av = await tape.layer(att, ev);
    const hv = tape.add(ev, av);
    const loss = tape.softmaxCrossEntropy(await tape.layer(head, hv), targets);
    expect(loss.value).toBe(ce.value);
    const grads = await tape.backward(loss);
    expect(grads.sparse.length).toBe(hand.size);
    for (const g of grads.sparse) {
      const want = hand.get(g.tensor)!;
      expect(Array.from(g.ids)).toEqual(Array.from(want.ids));
      expect(bits(g.grads)).toBe(bits(want.grads));
    }
    expect(grads.dense).toHaveLength(1);
    expect(grads.dense[0]!.grad[0]).toBe(Math.fround(gh.dBeta));
    expect(bits(grads.of(ev)!)).toBe(bits(de));
    expect(bits(grads.of(hv)!)).toBe(bits(gh.dx));
  });

  it('tape.model runs a Model chain and equals the layers run on the tape one by one', async () => {
    const rng = new Rng(11);
    const l1 = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(8 * 5), 5), values: SparseTensor.fromArray(rng.f32(8 * 4), 4), k: 3 });
    const l2 = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(6 * 4), 4), values: SparseTensor.fromArray(rng.f32(6 * 3), 3), k: 2 });
    const model = new Model([l1, l2]);
    const x = rng.f32(4 * 5);
    const t1 = new Tape();
    const y1 = await t1.model(model, x);
    expect(bits(y1.data)).toBe(bits(await model.forward(x)));
    const g1 = await t1.backward(t1.softmaxCrossEntropy(y1, [0, 1, 2, 0]));
    const t2 = new Tape();
    const y2 = await t2.layer(l2, await t2.layer(l1, t2.input(x, 5)));
    const g2 = await t2.backward(t2.softmaxCrossEntropy(y2, [0, 1, 2, 0]));
    expect(g1.sparse.map((g) => bits(g.grads))).toEqual(g2.sparse.map((g) => bits(g.grads)));
  });

  it('a value that does not reach the loss sends nothing back', async () => {
    const rng = new Rng(12);
    const used = hopfield(rng, 4, 3, 2), unused = hopfield(rng, 4, 3, 2);
    const tape = new Tape();
    const x = tape.input(rng.f32(2 * 3), 3);
    const z = await tape.layer(unused, x); // recorded before y: backward walks past it
    const y = await tape.layer(used, x);
    const grads = await tape.backward(tape.mse(y, new Float32Array(4)));
    expect(grads.sparse.map((g) => g.tensor)).toEqual([used.keys, used.values]);
    expect(grads.of(z)).toBeNull();
  });

  it('refuses what cannot be recorded or differentiated, with typed errors', async () => {
    const rng = new Rng(13);
    const l = hopfield(rng, 4, 3, 2);
    const tape = new Tape(), other = new Tape();
    const x = tape.input(rng.f32(2 * 3), 3);
    expect(() => tape.input(new Float32Array(5), 3)).toThrow(InvalidArgumentError);
    expect(() => tape.input([1, 2, 3] as unknown as Float32Array, 3)).toThrow(InvalidArgumentError);
    await expect(tape.layer(l, other.input(rng.f32(3), 3))).rejects.toThrow(/another tape/);
    await expect(tape.layer(l, tape.input(rng.f32(8), 4))).rejects.toThrow(InvalidArgumentError); // width 4, the layer takes 3
    await expect(tape.layer({} as HopfieldLookup, x)).rejects.toThrow(InvalidArgumentError);
    expect(() => tape.add(x, tape.input(rng.f32(3), 3))).toThrow(/shapes/);
    const y = await tape.layer(l, x);
    expect(() => tape.softmaxCrossEntropy(y, [0])).toThrow(InvalidArgumentError);
    const loss = tape.softmaxCrossEntropy(y, [0, 1]);
    await expect(other.backward(loss)).rejects.toThrow(/another tape/);
    await tape.backward(loss);
    await expect(tape.backward(loss)).rejects.toThrow(/backward has run/);
    expect(() => tape.input(rng.f32(3), 3)).toThrow(/backward has run/);
  });
});

describe('losses', () => {
  it('softmax cross-entropy and its gradient match a float64 reference, with the mean over rows', () => {
    const rng = new Rng(14);
    const rows = 7, cols = 5;
    const z = rng.f32(rows * cols, 4);
    const t = Array.from({ length: rows }, () => rng.int(0, cols - 1));
    const r = softmaxCrossEntropy(z, cols, t);
    let ref = 0, right = 0;
    for (let i = 0; i < rows; i++) {
      const row = Array.from(z.subarray(i * cols, (i + 1) * cols));
      const sum = row.reduce((s, v) => s + Math.exp(v), 0); // no max shift: fine for |z| <= 4
      ref += -Math.log(Math.exp(row[t[i]!]!) / sum);
      if (row.indexOf(Math.max(...row)) === t[i]) right++;
      for (let c = 0; c < cols; c++) {
        const want = (Math.exp(row[c]!) / sum - (c === t[i] ? 1 : 0)) / rows;
        expect(Math.abs(r.grad[i * cols + c]! - want)).toBeLessThan(1e-7);
      }
    }
    expect(Math.abs(r.value - ref / rows)).toBeLessThan(1e-12);
    expect(r.correct).toBe(right);
  });

  it('cross-entropy is stable for huge logits', () => {
    const z = Float32Array.of(1000, 0, -1000, 3e38, 0, 0);
    const r = softmaxCrossEntropy(z, 3, [1, 0]);
    expect(r.value).toBeCloseTo((1000 + 0) / 2, 9); // row 0: loss 1000; row 1: ~0
    expect(r.grad[0]).toBeCloseTo(0.5, 7);
    expect(r.grad[1]).toBeCloseTo(-0.5, 7);
    for (const v of r.grad) expect(Number.isFinite(v)).toBe(true);
  });

  it('MSE and its gradient match a float64 reference (mean over every element)', () => {
    const rng = new Rng(15);
    const y = rng.f32(12), t = rng.f32(12);
    const r = mse(y, t);
    let ref = 0;
    for (let i = 0; i < 12; i++) {
      ref += (y[i]! - t[i]!) ** 2;
      expect(r.grad[i]).toBe(Math.fround((2 * (y[i]! - t[i]!)) / 12));
    }
    expect(Math.abs(r.value - ref / 12)).toBeLessThan(1e-15);
  });

  it('hostile input: NaN logits, a class out of range or not an integer, shapes that do not match', () => {
    const z = new Float32Array(6);
    expect(() => softmaxCrossEntropy(Float32Array.of(0, NaN, 0, 0, 0, 0), 3, [0, 1])).toThrow(NonFiniteError);
    expect(() => softmaxCrossEntropy(Float32Array.of(0, Infinity, 0, 0, 0, 0), 3, [0, 1])).toThrow(NonFiniteError);
    expect(() => softmaxCrossEntropy(z, 3, [0, 3])).toThrow(OutOfRangeError);
    expect(() => softmaxCrossEntropy(z, 3, [0, -1])).toThrow(OutOfRangeError);
    expect(() => softmaxCrossEntropy(z, 3, [0, 1.5])).toThrow(InvalidArgumentError);
    expect(() => softmaxCrossEntropy(z, 3, [0])).toThrow(InvalidArgumentError);
    expect(() => softmaxCrossEntropy(z, 4, [0, 1])).toThrow(InvalidArgumentError);
    expect(() => softmaxCrossEntropy(z, 3, 'ab' as unknown as number[])).toThrow(InvalidArgumentError);
    expect(() => mse(new Float32Array(3), new Float32Array(4))).toThrow(InvalidArgumentError);
    expect(() => mse(Float32Array.of(NaN), Float32Array.of(0))).toThrow(NonFiniteError);
    expect(() => mse(new Float32Array(0), new Float32Array(0))).toThrow(InvalidArgumentError);
  });
});
