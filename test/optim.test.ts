import { describe, expect, it } from 'vitest';

import { HopfieldLookup, InvalidArgumentError, Model, NonFiniteError, OutOfRangeError, SparseTensor, TensorBusyError, decodeProof, encodeProof, verifyUpdate } from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { DenseAdam, SparseAdam, SparseSGD } from '../lib/model/optim.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Float64 reference: Adam / SGD restricted to touched rows, with the documented rules. */
class RefOptimizer {
  w: Float64Array;
  m: Float64Array;
  v: Float64Array;
  rowSteps: Uint32Array;
  mark: Float64Array;
  logDecay = 0;
  t = 0;
  constructor(
    init: Float32Array,
    readonly n: number,
    readonly d: number,
    readonly o: { kind: 'adam' | 'sgd'; lr: number; b1: number; b2: number; eps: number; wd: number; row: boolean },
  ) {
    this.w = Float64Array.from(init);
    this.m = new Float64Array(n * d);
    this.v = new Float64Array(n * d);
    this.rowSteps = new Uint32Array(n);
    this.mark = new Float64Array(n);
  }
  step(ids: number[], grads: Float32Array): void {
    const { d, o } = this;
    const g = new Map<number, Float64Array>();
    ids.forEach((id, i) => {
      const acc = g.get(id) ?? new Float64Array(d);
      for (let j = 0; j < d; j++) acc[j]! += grads[i * d + j]!;
      g.set(id, acc);
    });
    const newLog = o.wd > 0 ? this.logDecay + Math.log1p(-o.lr * o.wd) : this.logDecay;
    for (const [id, gr] of g) {
      const decay = Math.exp(newLog - this.mark[id]!);
      const t = o.row ? this.rowSteps[id]! + 1 : this.t + 1;
      for (let j = 0; j < d; j++) {
        const k = id * d + j;
        if (o.kind === 'sgd') {
          this.w[k] = this.w[k]! * decay - o.lr * gr[j]!;
          continue;
        }
        this.m[k] = o.b1 * this.m[k]! + (1 - o.b1) * gr[j]!;
        this.v[k] = o.b2 * this.v[k]! + (1 - o.b2) * gr[j]! * gr[j]!;
        const mhat = this.m[k]! / (1 - o.b1 ** t), vhat = this.v[k]! / (1 - o.b2 ** t);
        this.w[k] = this.w[k]! * decay - (o.lr * mhat) / (Math.sqrt(vhat) + o.eps);
      }
      this.rowSteps[id]!++;
      this.mark[id] = newLog;
    }
    this.t++;
    this.logDecay = newLog;
  }
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, rel: number): void {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs(a[i]! - b[i]!) / (1e-3 + Math.abs(b[i]!));
    if (e > worst) worst = e;
  }
  expect(worst).toBeLessThan(rel);
}

describe('SparseAdam / SparseSGD against a float64 reference restricted to touched rows', () => {
  const cases = [
    { name: 'adam, per-row bias correction', kind: 'adam', row: true, wd: 0 },
    { name: 'adam, global step (PyTorch SparseAdam)', kind: 'adam', row: false, wd: 0 },
    { name: 'adam with lazy decoupled weight decay', kind: 'adam', row: true, wd: 0.05 },
    { name: 'sgd with lazy weight decay', kind: 'sgd', row: true, wd: 0.1 },
  ] as const;
  for (const c of cases) {
    it(c.name, () => {
      const rng = new Rng(7);
      const n = 40, d = 5;
      const init = rng.f32(n * d);
      const t = SparseTensor.fromArray(init, d);
      t.commitSync();
      const lr = c.kind === 'adam' ? 0.01 : 0.05;
      const opt = c.kind === 'adam'
        ? new SparseAdam([t], { lr, weightDecay: c.wd, biasCorrection: c.row ? 'row' : 'global' })
        : new SparseSGD([t], { lr, weightDecay: c.wd });
      const ref = new RefOptimizer(init, n, d, { kind: c.kind, lr, b1: 0.9, b2: 0.999, eps: 1e-8, wd: c.wd, row: c.row });
      for (let s = 0; s < 200; s++) {
        // rows 30..39 are never touched; some rows repeat; some get an exact zero gradient
        const count = rng.int(0, 8);
        const ids = Array.from({ length: count }, () => rng.int(0, 29));
        const grads = rng.f32(count * d);
        if (count > 0 && s % 3 === 0) grads.fill(0, 0, d);
        if (s === 50) opt.lr = lr / 2; // a schedule: the catch-up decay follows it
        if (s === 50) ref.o.lr = lr / 2;
        const touched = opt.step([{ tensor: t, ids, grads }]);
        ref.step(ids, grads);
        expect(touched).toEqual([new Set(ids).size]);
      }
      const all = Array.from({ length: n }, (_, i) => i);
      const w = t.gather(all);
      close(w, ref.w, 2e-5);
      for (let i = 30 * d; i < n * d; i++) expect(w[i]).toBe(init[i]); // untouched: bit for bit
      const st = opt.state(t, all);
      expect(Array.from(st.steps)).toEqual(Array.from(ref.rowSteps));
      if (c.kind === 'adam') {
        close(st.m, ref.m, 2e-5);
        close(st.v, ref.v, 2e-5);
        for (let i = 30 * d; i < n * d; i++) expect(st.m[i]).toBe(0);
      }
      // The commitment followed every step.
      expect(hex(t.root())).toBe(hex(native().merkleRoot(w, d)));
      expect(opt.info(t).steps).toBe(200);
    });
  }

  it('weight decay catch-up equals dense AdamW decay when every row is touched every step', () => {
    // With every row touched each step, lazy = dense AdamW; compare a rarely touched
    // row's decay-only trajectory (zero gradients) with (1 - lr wd)^steps.
    const d = 3, lr = 0.01, wd = 0.5;
    const init = new Float32Array([1, -2, 3, 1, -2, 3]);
    const t = SparseTensor.fromArray(init, d);
    const opt = new SparseSGD([t], { lr, weightDecay: wd });
    for (let s = 0; s < 99; s++) opt.step([{ tensor: t, ids: [0], grads: new Float32Array(d) }]);
    opt.step([{ tensor: t, ids: [0, 1], grads: new Float32Array(2 * d) }]); // row 1: first touch after 100 steps
    const w = t.gather([0, 1]);
    const f = (1 - lr * wd) ** 100;
    close(w, [f, -2 * f, 3 * f, f, -2 * f, 3 * f], 1e-5);
  });

  it('a step with a non-finite result changes nothing (values, moments, counters, root)', () => {
    const t = SparseTensor.fromArray(new Float32Array([1, 2, 3, 4]), 2);
    t.commitSync();
    const opt = new SparseAdam([t], { lr: 0.1 });
    opt.step([{ tensor: t, ids: [0], grads: new Float32Array([1, 1]) }]);
    const before = { w: t.gather([0, 1]), s: opt.state(t, [0, 1]), root: hex(t.root()) };
    // 3e38 + 3e38 overflows while coalescing: the update is NaN.
    expect(() => opt.step([{ tensor: t, ids: [0, 0], grads: new Float32Array([3e38, 3e38, 3e38, 3e38]) }])).toThrow(NonFiniteError);
    expect(t.gather([0, 1])).toEqual(before.w);
    expect(opt.state(t, [0, 1])).toEqual(before.s);
    expect(hex(t.root())).toBe(before.root);
    expect(opt.info(t).steps).toBe(1);
  });

  it('a finite gradient whose new state is not finite (v = g^2 overflows) is refused, all or nothing', async () => {
    // g = 1e30: m = 1e29 and the new value (w - lr m / sqrt(inf)) = w are finite, v = 1e-3 * 1e60 is not.
    for (const async of [false, true]) {
      const t = SparseTensor.fromArray(new Float32Array([1, 2, 3, 4, 5, 6]), 2);
      t.commitSync();
      const opt = new SparseAdam([t], { lr: 0.1 });
      opt.step([{ tensor: t, ids: [0, 2], grads: new Float32Array([1, 1, 1, 1]) }]);
      const before = { w: t.gather([0, 1, 2]), s: opt.state(t, [0, 1, 2]), root: hex(t.root()), info: opt.info(t) };
      // Row 2 is fine; row 0's v overflows in one coordinate only: nothing of either row moves.
      const huge = [{ tensor: t, ids: [2, 0], grads: new Float32Array([0.5, 0.5, 1e30, 1]) }];
      if (async) await expect(opt.stepAsync(huge)).rejects.toThrow(NonFiniteError);
      else expect(() => opt.step(huge)).toThrow(NonFiniteError);
      expect(t.gather([0, 1, 2])).toEqual(before.w);
      expect(opt.state(t, [0, 1, 2])).toEqual(before.s);
      expect(hex(t.root())).toBe(before.root);
      expect(opt.info(t)).toEqual(before.info);
      // and the largest gradient whose square still fits is taken
      expect(opt.step([{ tensor: t, ids: [0], grads: new Float32Array([1e19, 1]) }])).toEqual([1]);
      expect(Number.isFinite(opt.state(t, [0]).v[0]!)).toBe(true);
    }
  });

  it('restore() undoes steps exactly: the run continues as if they were never taken', () => {
    for (const kind of ['adam', 'sgd'] as const) {
      const rng = new Rng(kind === 'adam' ? 31 : 32);
      const init = rng.f32(6 * 3);
      const make = () => {
        const t = SparseTensor.fromArray(init, 3);
        t.commitSync();
        const o = kind === 'adam' ? new SparseAdam([t], { lr: 0.05, weightDecay: 0.1 }) : new SparseSGD([t], { lr: 0.05, weightDecay: 0.1 });
        return { t, o };
      };
      const a = make(), ref = make();
      const g1 = rng.f32(2 * 3), g2 = rng.f32(3 * 3), g3 = rng.f32(2 * 3);
      for (const x of [a, ref]) x.o.step([{ tensor: x.t, ids: [1, 4], grads: g1 }]);
      const snap = a.o.snapshot(a.t, [4, 2, 1, 4]);
      expect(Array.from(snap.ids)).toEqual([1, 2, 4]);
      a.o.step([{ tensor: a.t, ids: [2, 4, 1], grads: g2 }]); // undone below
      expect(hex(a.t.root())).not.toBe(hex(ref.t.root()));
      a.o.restore(snap);
      expect(hex(a.t.root())).toBe(hex(ref.t.root()));
      expect(a.o.info(a.t)).toEqual(ref.o.info(ref.t));
      expect(a.o.state(a.t, [0, 1, 2, 3, 4, 5])).toEqual(ref.o.state(ref.t, [0, 1, 2, 3, 4, 5]));
      for (const x of [a, ref]) x.o.step([{ tensor: x.t, ids: [4, 0], grads: g3 }]);
      expect(a.t.gather([0, 1, 2, 3, 4, 5])).toEqual(ref.t.gather([0, 1, 2, 3, 4, 5]));
      expect(a.o.state(a.t, [0, 1, 2, 3, 4, 5])).toEqual(ref.o.state(ref.t, [0, 1, 2, 3, 4, 5]));
      // a hostile snapshot is refused whole: nothing moves
      const root = hex(a.t.root());
      const bad = { ...snap, values: snap.values.map((x, i) => (i === 5 ? NaN : x)) };
      expect(() => a.o.restore(bad)).toThrow(NonFiniteError);
      expect(() => a.o.restore({ ...snap, logDecay: 1 })).toThrow(OutOfRangeError);
      expect(() => a.o.restore({ ...snap, ids: Uint32Array.of(4, 2, 1) })).toThrow(InvalidArgumentError);
      expect(hex(a.t.root())).toBe(root);
    }
  });

  it('the verifier\'s canonical re-run refuses the steps the optimizer refuses (a non-finite new state)', async () => {
    const rng = new Rng(12);
    const d = 4;
    const t = SparseTensor.fromArray(rng.f32(16 * d), d);
    const model = new Model([new HopfieldLookup({ keys: t, values: SparseTensor.fromArray(rng.f32(16 * 3), 3), k: 2 })]);
    const ghost = await model.ghost();
    const opt = new SparseAdam([t], { lr: 0.01 });
    const [ok] = await model.proveStep(opt, [{ tensor: t, ids: [3], grads: rng.f32(d) }]);
    expect((await verifyUpdate(ghost, ok!.bytes)).ids).toEqual(Uint32Array.of(3));
    // The same step with gradients 1e30: every v overflows, so the values (and the root) do not
    // move; a proof claiming the old root is what the unfixed optimizer acknowledged.
    const forged = decodeProof(ok!.bytes);
    if (forged.kind !== 'update') throw new Error('not an update proof');
    forged.grads.fill(1e30);
    forged.newRoot = ghost.manifest.tensors[forged.tensor]!.root;
    expect(await reason(verifyUpdate(ghost, encodeProof(forged)))).toBe('UPDATE_MISMATCH');
    model.close();
  });

  it('keeps the HNSW index consistent: a moved row is found at its new place', async () => {
    const rng = new Rng(3);
    const d = 8, n = 500;
    const t = SparseTensor.fromArray(rng.f32(n * d), d, { metric: 'l2' });
    await t.buildHnsw();
    const opt = new SparseSGD([t], { lr: 1 });
    const target = rng.f32(d, 10);
    const cur = t.gather([17]);
    const g = new Float32Array(d);
    for (let j = 0; j < d; j++) g[j] = cur[j]! - target[j]!; // one SGD step with lr 1 lands on target
    opt.step([{ tensor: t, ids: [17], grads: g }]);
    expect(t.search(target, 1, { index: 'hnsw' }).ids[0]).toBe(17);
  });

  it('appended rows get fresh state', () => {
    const t = SparseTensor.fromArray(new Float32Array([1, 1]), 2);
    const opt = new SparseAdam([t], { lr: 0.1 });
    opt.step([{ tensor: t, ids: [0], grads: new Float32Array([1, 1]) }]);
    t.append(new Float32Array([5, 5]));
    const s = opt.state(t, [1]);
    expect(Array.from(s.m)).toEqual([0, 0]);
    expect(Array.from(s.steps)).toEqual([0]);
    opt.step([{ tensor: t, ids: [1], grads: new Float32Array([1, -1]) }]);
    close(t.gather([1]), [4.9, 5.1], 1e-5); // first Adam step moves each coordinate by lr
  });

  it('rejects bad input with typed errors and changes nothing', async () => {
    const t = SparseTensor.fromArray(new Float32Array(8), 2);
    const other = SparseTensor.fromArray(new Float32Array(8), 2);
    const opt = new SparseAdam([t]);
    expect(() => new SparseAdam([])).toThrow(InvalidArgumentError);
    expect(() => new SparseAdam([t, t])).toThrow(InvalidArgumentError);
    expect(() => new SparseAdam([t], { lr: -1 })).toThrow(OutOfRangeError);
    expect(() => new SparseAdam([t], { beta1: 1 })).toThrow(OutOfRangeError);
    expect(() => new SparseAdam([t], { eps: 0 })).toThrow(OutOfRangeError);
    expect(() => new SparseSGD([t], { lr: 1, weightDecay: 1 })).toThrow(OutOfRangeError);
    expect(() => new SparseAdam([t], { biasCorrection: 'none' as 'row' })).toThrow(InvalidArgumentError);
    expect(() => opt.step([{ tensor: t, ids: [4], grads: new Float32Array(2) }])).toThrow(OutOfRangeError);
    expect(() => opt.step([{ tensor: t, ids: [0], grads: new Float32Array(3) }])).toThrow(InvalidArgumentError);
    expect(() => opt.step([{ tensor: t, ids: [0], grads: new Float32Array([NaN, 0]) }])).toThrow(NonFiniteError);
    expect(() => opt.step([{ tensor: other, ids: [0], grads: new Float32Array(2) }])).toThrow(InvalidArgumentError);
    expect(() => opt.step([{ tensor: t, ids: [0], grads: new Float32Array(2) }, { tensor: t, ids: [1], grads: new Float32Array(2) }])).toThrow(InvalidArgumentError);
    // A bad second entry: the first tensor does not step either.
    expect(() => new SparseAdam([other, t])).toThrow(InvalidArgumentError); // t has one already
    expect(() => opt.info(other)).toThrow(InvalidArgumentError);
    const two = new SparseAdam([t, other], { replaceState: true });
    expect(() => two.step([{ tensor: t, ids: [0], grads: new Float32Array([1, 1]) }, { tensor: other, ids: [9], grads: new Float32Array(2) }])).toThrow(OutOfRangeError);
    expect(() => two.step([{ tensor: t, ids: [0], grads: new Float32Array([1, 1]) }, { tensor: other, ids: [0], grads: new Float32Array([0, Infinity]) }])).toThrow(NonFiniteError);
    expect(two.info(t).steps).toBe(0);
    expect(Array.from(t.gather([0, 1, 2, 3]))).toEqual(new Array(8).fill(0));
    const pending = t.searchBatch(new Float32Array(2 * 64), 1);
    expect(() => two.step([{ tensor: t, ids: [0], grads: new Float32Array(2) }])).toThrow(TensorBusyError);
    await pending;
    two.detach();
    new SparseSGD([t]); // free again
  });
});

describe('stepAsync', () => {
  it('equals step() on twin tensors, and holds the tensor exclusively while it runs', async () => {
    const rng = new Rng(31);
    const d = 16, n = 2000;
    const init = rng.f32(n * d);
    const a = SparseTensor.fromArray(init.slice(), d), b = SparseTensor.fromArray(init.slice(), d);
    const va = SparseTensor.fromArray(new Float32Array(n * 2), 2), vb = SparseTensor.fromArray(new Float32Array(n * 2), 2);
    a.commitSync();
    b.commitSync();
    const oa = new SparseAdam([a, va], { lr: 0.01, weightDecay: 0.1 }), ob = new SparseAdam([b, vb], { lr: 0.01, weightDecay: 0.1 });
    for (let s = 0; s < 20; s++) {
      const ids = Array.from({ length: 300 }, () => rng.int(0, n - 1));
      const g = rng.f32(ids.length * d), gv = rng.f32(ids.length * 2);
      oa.step([{ tensor: a, ids, grads: g }, { tensor: va, ids, grads: gv }]);
      const pending = ob.stepAsync([{ tensor: b, ids, grads: g }, { tensor: vb, ids, grads: gv }]);
      expect(() => b.gather([0])).toThrow(TensorBusyError); // reads wait too
      expect(() => b.add([0], new Float32Array(d))).toThrow(TensorBusyError);
      expect(b.size).toBe(n); // the size stays readable
      expect(await pending).toEqual([new Set(ids).size, new Set(ids).size]);
    }
    expect(Array.from(b.gather([0, 1, 2, 1999]))).toEqual(Array.from(a.gather([0, 1, 2, 1999])));
    expect(hex(b.root())).toBe(hex(a.root()));
    expect(hex(vb.commitSync())).toBe(hex(va.commitSync()));
    expect(Array.from(vb.gather([5]))).toEqual(Array.from(va.gather([5])));
  });

  it('rejects with a typed error and changes nothing when the result is not finite', async () => {
    const t = SparseTensor.fromArray(new Float32Array([1, 2, 3, 4]), 2);
    const opt = new SparseSGD([t], { lr: 1 });
    await expect(opt.stepAsync([{ tensor: t, ids: [0, 0], grads: new Float32Array([3e38, 3e38, 3e38, 3e38]) }])).rejects.toThrow(NonFiniteError);
    expect(Array.from(t.gather([0, 1]))).toEqual([1, 2, 3, 4]);
    expect(opt.info(t).steps).toBe(0);
    await expect(opt.stepAsync([{ tensor: t, ids: [2], grads: new Float32Array(2) }])).rejects.toThrow(OutOfRangeError);
    expect(await opt.stepAsync([{ tensor: t, ids: [1], grads: new Float32Array([1, 1]) }])).toEqual([1]);
    expect(Array.from(t.gather([1]))).toEqual([2, 3]);
  });
});

describe('DenseAdam', () => {
  it('matches the sparse Adam on the same values (one row, every step)', () => {
    const rng = new Rng(11);
    const p = rng.f32(4);
    const t = SparseTensor.fromArray(p.slice(), 4);
    const dense = new DenseAdam([p], { lr: 0.02 });
    const sparse = new SparseAdam([t], { lr: 0.02 });
    for (let s = 0; s < 30; s++) {
      const g = rng.f32(4);
      dense.step([g]);
      sparse.step([{ tensor: t, ids: [0], grads: g }]);
    }
    close(p, t.gather([0]), 1e-5);
    expect(() => dense.step([new Float32Array(3)])).toThrow(InvalidArgumentError);
    expect(() => dense.step([new Float32Array([NaN, 0, 0, 0])])).toThrow(NonFiniteError);
  });
});
