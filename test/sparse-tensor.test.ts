import { describe, expect, it } from 'vitest';

import {
  DetachedBufferError,
  GhostTensorError,
  InvalidArgumentError,
  NonFiniteError,
  OutOfRangeError,
  SparseTensor,
  TensorBusyError,
} from '../lib/index.js';
import { Rng } from './helpers/rng.js';

/** A dense model of the tensor in plain TypeScript: the reference every write is checked against. */
class DenseModel {
  rows: Float32Array[] = [];
  constructor(readonly d: number) {}
  append(data: Float32Array): void {
    for (let i = 0; i < data.length / this.d; i++) this.rows.push(data.slice(i * this.d, (i + 1) * this.d));
  }
  scatter(ids: number[], values: Float32Array): void {
    ids.forEach((id, i) => this.rows[id]!.set(values.subarray(i * this.d, (i + 1) * this.d)));
  }
  add(ids: number[], deltas: Float32Array): void {
    ids.forEach((id, i) => {
      const r = this.rows[id]!;
      for (let j = 0; j < this.d; j++) r[j] = Math.fround(r[j]! + deltas[i * this.d + j]!);
    });
  }
  flat(): Float32Array {
    const out = new Float32Array(this.rows.length * this.d);
    this.rows.forEach((r, i) => out.set(r, i * this.d));
    return out;
  }
}

function contents(t: SparseTensor): Float32Array {
  return t.gather(Array.from({ length: t.size }, (_, i) => i));
}

describe('SparseTensor', () => {
  it('create, append and grow keep every row', () => {
    const t = SparseTensor.create(3, { capacity: 2 });
    expect(t.size).toBe(0);
    expect(t.capacity).toBe(2);
    const model = new DenseModel(3);
    const rng = new Rng(1);
    for (let i = 0; i < 50; i++) {
      const rows = rng.f32(3 * rng.int(0, 7));
      expect(t.append(rows)).toBe(model.rows.length);
      model.append(rows);
    }
    expect(t.size).toBe(model.rows.length);
    expect(t.capacity).toBeGreaterThanOrEqual(t.size);
    expect(contents(t)).toEqual(model.flat());
  });

  it('random sequences of scatter, add (repeated ids) and append equal a dense reference', async () => {
    const rng = new Rng(99);
    for (const d of [1, 5, 16, 33]) {
      const init = rng.f32(40 * d);
      const t = SparseTensor.fromArray(init, d);
      const model = new DenseModel(d);
      model.append(init);
      for (let step = 0; step < 400; step++) {
        const op = rng.int(0, 2);
        if (op === 2) {
          const rows = rng.f32(d * rng.int(1, 3));
          t.append(rows);
          model.append(rows);
          continue;
        }
        const k = rng.int(1, 6);
        const n = model.rows.length;
        const ids: number[] = [];
        if (op === 0) {
          const set = new Set<number>();
          while (set.size < Math.min(k, n)) set.add(rng.int(0, n - 1));
          ids.push(...set);
          const v = rng.f32(ids.length * d);
          t.scatter(Uint32Array.from(ids), v);
          model.scatter(ids, v);
        } else {
          for (let i = 0; i < k; i++) ids.push(rng.int(0, n - 1));
          if (k > 1) ids[k - 1] = ids[0]!; // always a repeated id
          const v = rng.f32(ids.length * d, 0.1);
          t.add(ids, v);
          model.add(ids, v);
        }
      }
      expect(contents(t)).toEqual(model.flat());
      // Search after the writes equals search on a fresh build of the same values.
      const fresh = SparseTensor.fromArray(model.flat(), d);
      const q = rng.f32(d);
      for (const metric of ['ip', 'l2', 'cosine'] as const) {
        expect(t.search(q, 5, { metric })).toEqual(fresh.search(q, 5, { metric }));
      }
      const qs = rng.f32(d * 9);
      expect(await t.searchBatch(qs, 4)).toEqual(await fresh.searchBatch(qs, 4));
    }
  });

  it('row() is a zero-copy view that follows writes until the storage grows', () => {
    const t = SparseTensor.create(2, { capacity: 4 });
    t.append(new Float32Array([1, 2, 3, 4]));
    const v = t.row(1);
    expect(Array.from(v)).toEqual([3, 4]);
    t.scatter([1], new Float32Array([7, 8]));
    expect(Array.from(v)).toEqual([7, 8]); // same memory
    t.append(new Float32Array(2 * 20)); // grows: new storage
    t.scatter([1], new Float32Array([9, 9]));
    expect(Array.from(v)).toEqual([7, 8]); // the old view is frozen, still valid
    expect(Array.from(t.row(1))).toEqual([9, 9]);
  });

  it('adopt uses the caller memory in place; copy does not', () => {
    const data = new Float32Array([1, 2, 3, 4, 5, 6]);
    const adopted = SparseTensor.fromArray(data, 3, { adopt: true });
    const copied = SparseTensor.fromArray(data, 3);
    expect(adopted.adopted).toBe(true);
    expect(copied.adopted).toBe(false);
    adopted.scatter([0], new Float32Array([9, 9, 9]));
    expect(Array.from(data.subarray(0, 3))).toEqual([9, 9, 9]);
    expect(Array.from(copied.row(0))).toEqual([1, 2, 3]);
    expect(adopted.row(1).buffer).toBe(data.buffer);
    // Adopting a subarray honours its offset.
    const big = new Float32Array([0, 0, 10, 11, 12, 13]);
    const sub = SparseTensor.fromArray(big.subarray(2), 2, { adopt: true });
    expect(Array.from(sub.row(1))).toEqual([12, 13]);
    // Growing past the adopted buffer copies and ends the adoption.
    adopted.append(new Float32Array([7, 7, 7]));
    expect(adopted.adopted).toBe(false);
    expect(Array.from(contents(adopted))).toEqual([9, 9, 9, 4, 5, 6, 7, 7, 7]);
  });

  it('a detached adopted buffer is a typed error, never a crash', () => {
    const data = new Float32Array([1, 2, 3, 4]);
    const t = SparseTensor.fromArray(data, 2, { adopt: true });
    structuredClone(data.buffer, { transfer: [data.buffer] });
    expect(data.buffer.byteLength).toBe(0);
    expect(() => t.search(new Float32Array(2), 1)).toThrow(DetachedBufferError);
    expect(() => t.row(0)).toThrow(DetachedBufferError);
    expect(() => t.gather([0])).toThrow(DetachedBufferError);
    expect(() => t.scatter([0], new Float32Array(2))).toThrow(DetachedBufferError);
    expect(() => t.size).toThrow(DetachedBufferError);
    // A detached argument is refused too (not read as an empty array).
    const u = SparseTensor.create(2);
    const q = new Float32Array(2);
    structuredClone(q.buffer, { transfer: [q.buffer] });
    expect(() => u.append(q)).toThrow(DetachedBufferError);
  });

  it('transferring the buffer of a row view does not free the tensor memory', () => {
    const t = SparseTensor.fromArray(new Float32Array([1, 2, 3, 4]), 2);
    const v = t.row(0);
    expect(() => structuredClone(v.buffer, { transfer: [v.buffer] })).not.toThrow();
    expect(Array.from(t.gather([0, 1]))).toEqual([1, 2, 3, 4]);
    expect(Array.from(t.row(1))).toEqual([3, 4]);
  });

  it('refuses writes while an asynchronous search runs, then accepts them', async () => {
    const t = SparseTensor.fromArray(new Rng(3).f32(2000 * 16), 16);
    const p = t.searchBatch(new Rng(4).f32(16 * 64), 3);
    expect(() => t.add([0], new Float32Array(16))).toThrow(TensorBusyError);
    expect(() => t.scatter([0], new Float32Array(16))).toThrow(TensorBusyError);
    expect(() => t.append(new Float32Array(16))).toThrow(TensorBusyError);
    expect(() => t.reserve(5000)).toThrow(TensorBusyError);
    expect(t.search(new Float32Array(16), 1).ids.length).toBe(1); // reads are fine
    await p;
    t.add([0], new Float32Array(16));
  });

  describe('bad input', () => {
    const t = SparseTensor.fromArray(new Float32Array([1, 2, 3, 4, 5, 6]), 2);
    const cases: [string, () => unknown, new (...a: never[]) => GhostTensorError, RegExp][] = [
      ['dim 0', () => SparseTensor.create(0), OutOfRangeError, /dim/],
      ['dim 1.5', () => SparseTensor.create(1.5), InvalidArgumentError, /dim/],
      ['dim as string', () => SparseTensor.create('4' as unknown as number), InvalidArgumentError, /dim/],
      ['data not a multiple of dim', () => SparseTensor.fromArray(new Float32Array(5), 2), InvalidArgumentError, /data length/],
      ['data as Float64Array', () => SparseTensor.fromArray(new Float64Array(4) as unknown as Float32Array, 2), InvalidArgumentError, /data/],
      ['NaN in data', () => SparseTensor.fromArray(new Float32Array([1, NaN]), 2), NonFiniteError, /data\[1\]/],
      ['Infinity in adopted data', () => SparseTensor.fromArray(new Float32Array([Infinity, 1]), 2, { adopt: true }), NonFiniteError, /data\[0\]/],
      ['bad metric', () => SparseTensor.create(2, { metric: 'dot' as 'ip' }), InvalidArgumentError, /metric/],
      ['id out of range in gather', () => t.gather([3]), OutOfRangeError, /ids\[0\] = 3/],
      ['negative id', () => t.gather([-1]), OutOfRangeError, /ids\[0\]/],
      ['fractional id', () => t.gather([0.5]), InvalidArgumentError, /ids\[0\]/],
      ['ids as Int32Array', () => t.gather(new Int32Array([0]) as unknown as Uint32Array), InvalidArgumentError, /ids/],
      ['scatter wrong length', () => t.scatter([0], new Float32Array(3)), InvalidArgumentError, /values length 3/],
      ['scatter duplicate ids', () => t.scatter([1, 1], new Float32Array(4)), InvalidArgumentError, /repeats id 1/],
      ['scatter id out of range', () => t.scatter([0, 7], new Float32Array(4)), OutOfRangeError, /ids\[1\] = 7/],
      ['scatter NaN', () => t.scatter([0], new Float32Array([0, NaN])), NonFiniteError, /values\[1\]/],
      ['add wrong length', () => t.add([0, 1], new Float32Array(2)), InvalidArgumentError, /deltas length/],
      ['add overflow', () => t.add([0, 0], new Float32Array([3e38, 0, 3e38, 0])), NonFiniteError, /overflow/],
      ['append wrong length', () => t.append(new Float32Array(3)), InvalidArgumentError, /rows length 3/],
      ['append -Infinity', () => t.append(new Float32Array([0, -Infinity])), NonFiniteError, /values\[1\]/],
      ['k = 0', () => t.search(new Float32Array(2), 0), OutOfRangeError, /k must be/],
      ['k > N', () => t.search(new Float32Array(2), 4), OutOfRangeError, /k must be in 1..3/],
      ['k = NaN', () => t.search(new Float32Array(2), NaN), InvalidArgumentError, /k must be an integer/],
      ['query wrong length', () => t.search(new Float32Array(3), 1), InvalidArgumentError, /query length 3/],
      ['query NaN', () => t.search(new Float32Array([NaN, 0]), 1), NonFiniteError, /query\[0\]/],
      ['query as number[]', () => t.search([1, 2] as unknown as Float32Array, 1), InvalidArgumentError, /query must be a Float32Array/],
      ['batch wrong length', () => t.searchBatchSync(new Float32Array(3), 1), InvalidArgumentError, /queries length 3/],
      ['batch threads 0', () => t.searchBatchSync(new Float32Array(2), 1, { threads: 0 }), OutOfRangeError, /threads/],
      ['search on empty tensor', () => SparseTensor.create(2).search(new Float32Array(2), 1), OutOfRangeError, /empty/],
      ['row out of range', () => t.row(3), OutOfRangeError, /id/],
    ];
    for (const [name, fn, cls, msg] of cases) {
      it(`${name}: ${cls.name}`, () => {
        let caught: unknown;
        try {
          fn();
        } catch (e) {
          caught = e;
        }
        expect(caught).toBeInstanceOf(cls);
        expect((caught as Error).message).toMatch(msg);
      });
    }

    it('a rejected write leaves the tensor unchanged', () => {
      const before = contents(t);
      for (const [, fn] of cases) {
        try {
          fn();
        } catch {
          /* expected */
        }
      }
      expect(contents(t)).toEqual(before);
    });

    it('the async batch rejects bad input with the same typed errors', async () => {
      await expect(t.searchBatch(new Float32Array(3), 1)).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(t.searchBatch(new Float32Array([0, NaN]), 1)).rejects.toBeInstanceOf(NonFiniteError);
      await expect(t.searchBatch(new Float32Array(2), 9)).rejects.toBeInstanceOf(OutOfRangeError);
    });
  });
});
