/**
 * The exact cosine scan keeps the rows' squared norms between scans (RowNormCache,
 * native/src/core/search.h). A stale norm would change a selection that nobody can
 * re-check, so every write path must make the next scan compute them again. Each test
 * writes through one path, then compares the scan with (a) a fresh copy of the rows
 * (a tensor whose cache is empty: the same ids and the same score bits) and (b) cosine
 * similarity computed here in f64 (independent of the native code). The writes are
 * chosen so that a stale norm changes the answer: a row scaled by 1/4 keeps its cosine
 * but a stale norm divides its score by 4; a row set to a multiple of the query becomes
 * the best hit only with its new norm.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { SparseAdam, SparseTensor } from '../lib/index.js';
import { internalNative } from '../lib/tensor/sparse-tensor.js';
import { Rng } from './helpers/rng.js';

const D = 48;
const N = 300;
const K = 8;
const dir = mkdtempSync(join(tmpdir(), 'gt-norm-cache-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const info = (t: SparseTensor): { version: number; fills: number } => internalNative(t).normCacheInfo();
const allIds = (n: number): Uint32Array => Uint32Array.from({ length: n }, (_, i) => i);
const hex = (a: Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

/** Cosine top-k in f64 (ties to the lower id): the independent reference. */
function cosineTopK(rows: Float32Array, q: Float32Array, k: number): { ids: number[]; scores: number[] } {
  const n = rows.length / D;
  let qq = 0;
  for (let j = 0; j < D; j++) qq += q[j]! * q[j]!;
  const s: { id: number; score: number }[] = [];
  for (let i = 0; i < n; i++) {
    let dot = 0;
    let rr = 0;
    for (let j = 0; j < D; j++) {
      dot += q[j]! * rows[i * D + j]!;
      rr += rows[i * D + j]! * rows[i * D + j]!;
    }
    s.push({ id: i, score: qq > 0 && rr > 0 ? dot / Math.sqrt(qq * rr) : 0 });
  }
  s.sort((a, b) => b.score - a.score || a.id - b.id);
  return { ids: s.slice(0, k).map((x) => x.id), scores: s.slice(0, k).map((x) => x.score) };
}

/** The scan of `t` equals a fresh copy's bit for bit, and cosine in f64 within f32 rounding. */
function expectCurrent(t: SparseTensor, queries: Float32Array, level?: 'scalar'): void {
  const rows = t.gather(allIds(t.size));
  const copy = SparseTensor.fromArray(rows.slice(), D, { metric: 'cosine' });
  const opts = level === undefined ? {} : { level };
  const got = t.searchBatchSync(queries, K, opts);
  const want = copy.searchBatchSync(queries, K, opts);
  expect(Array.from(got.ids)).toEqual(Array.from(want.ids));
  expect(hex(got.scores)).toBe(hex(want.scores));
  for (let qi = 0; qi < queries.length / D; qi++) {
    const ref = cosineTopK(rows, queries.subarray(qi * D, (qi + 1) * D), K);
    const mine = Array.from(got.scores.subarray(qi * K, (qi + 1) * K));
    for (let i = 0; i < K; i++) expect(Math.abs(mine[i]! - ref.scores[i]!)).toBeLessThan(1e-5);
    // Same set of rows unless two scores are within rounding of each other.
    const gap = Math.abs(ref.scores[K - 1]! - (cosineTopK(rows, queries.subarray(qi * D, (qi + 1) * D), K + 1).scores[K] ?? -2));
    if (gap > 1e-5) expect(Array.from(got.ids.subarray(qi * K, (qi + 1) * K)).sort((a, b) => a - b)).toEqual([...ref.ids].sort((a, b) => a - b));
  }
}

interface Setup {
  t: SparseTensor;
  q: Float32Array;
  /** The best hits of the first query before any write. */
  top: number[];
}

/** A cosine tensor, scanned once (the cache filled); the scans below must not refill it. */
function setup(seed: number, t?: SparseTensor): Setup {
  const rng = new Rng(seed);
  t ??= SparseTensor.fromArray(rng.f32(N * D), D, { metric: 'cosine' });
  const q = rng.f32(2 * D);
  const first = t.searchBatchSync(q, K);
  const fills = info(t).fills;
  expect(fills).toBeGreaterThanOrEqual(1);
  expect(Array.from(t.searchBatchSync(q, K).ids)).toEqual(Array.from(first.ids));
  expect(info(t).fills).toBe(fills); // held: no write, no refill
  return { t, q, top: Array.from(first.ids.subarray(0, K)) };
}

/** Row `id` scaled by `f` (cosine unchanged; a stale norm scales its score by f). */
function scaled(t: SparseTensor, id: number, f: number): Float32Array {
  return t.gather([id]).map((x) => x * f);
}

describe('exact cosine scan: the cached row norms follow every write', () => {
  it('a scan keeps its norms while nothing is written, also across async scans', async () => {
    const { t, q } = setup(1);
    const v = info(t);
    for (let i = 0; i < 3; i++) await t.searchBatch(q, K);
    t.search(q.subarray(0, D), K);
    expect(info(t)).toEqual(v);
    expectCurrent(t, q);
  });

  it('scatter (set): a scaled best row keeps its place, a row set to the query becomes the best', () => {
    const { t, q, top } = setup(2);
    const v0 = info(t).version;
    t.scatter([top[0]!, 7], new Float32Array([...scaled(t, top[0]!, 0.25), ...q.subarray(0, D).map((x) => 3 * x)]));
    expect(info(t).version).not.toBe(v0);
    expectCurrent(t, q);
    expect(t.searchBatchSync(q, K).ids[0]).toBe(7);
  });

  it('add: deltas that scale rows', () => {
    const { t, q, top } = setup(3);
    const ids = top.slice(0, 3);
    const deltas = new Float32Array(ids.length * D);
    ids.forEach((id, i) => deltas.set(scaled(t, id, -0.75), i * D));
    t.add(ids, deltas);
    expectCurrent(t, q);
  });

  it('append within capacity and past it (the storage moves), and reserve', () => {
    const rng = new Rng(4);
    const t = SparseTensor.create(D, { capacity: N + 4, metric: 'cosine' });
    t.append(rng.f32(N * D));
    const { q, top } = setup(4, t);
    t.append(q.subarray(0, D).map((x) => 2 * x)); // within capacity
    expectCurrent(t, q);
    t.scatter([top[1]!], scaled(t, top[1]!, 0.25));
    t.append(rng.f32(10 * D)); // grows
    expectCurrent(t, q);
    t.reserve(t.capacity + 100);
    expectCurrent(t, q);
  });

  it('optimizer steps (Adam) and their undo (restore)', async () => {
    const { t, q, top } = setup(5);
    const opt = new SparseAdam([t], { lr: 0.5 });
    const ids = top.slice(0, 4);
    const snap = opt.snapshot(t, ids);
    const grads = new Float32Array(ids.length * D);
    ids.forEach((id, i) => grads.set(t.gather([id]), i * D)); // pushes each row towards 0
    opt.step([{ tensor: t, ids, grads }]);
    expectCurrent(t, q);
    await opt.stepAsync([{ tensor: t, ids, grads }]);
    expectCurrent(t, q);
    opt.restore(snap);
    expectCurrent(t, q);
  });

  it('a file-backed tensor: writes, checkpoint, reopen (the log replayed)', async () => {
    const rng = new Rng(6);
    const path = join(dir, 't.gtt');
    await SparseTensor.fromArray(rng.f32(N * D), D).saveFile(path);
    const t = await SparseTensor.openFile(path, { metric: 'cosine' });
    const { q, top } = setup(6, t);
    t.scatter([top[0]!], scaled(t, top[0]!, 0.25));
    expectCurrent(t, q);
    t.checkpoint();
    expectCurrent(t, q);
    t.add([top[2]!], scaled(t, top[2]!, -0.5));
    t.checkpoint({ compactBytes: 1 << 30, compactRows: 1 << 30 }); // stays in the log
    t.close();
    const again = await SparseTensor.openFile(path, { metric: 'cosine' });
    expectCurrent(again, q);
    again.scatter([top[3]!], scaled(again, top[3]!, 4));
    expectCurrent(again, q);
    again.close();
  });

  it('another SIMD level computes its own norms', () => {
    const { t, q, top } = setup(7);
    expectCurrent(t, q, 'scalar');
    expectCurrent(t, q);
    t.scatter([top[0]!], scaled(t, top[0]!, 0.25));
    expectCurrent(t, q, 'scalar');
  });

  it('adopted memory keeps no norms (its owner can write it outside the write path)', () => {
    const rng = new Rng(8);
    const data = rng.f32(N * D);
    const t = SparseTensor.fromArray(data, D, { metric: 'cosine', adopt: true });
    const q = rng.f32(D);
    t.searchBatchSync(q, K);
    expect(info(t).fills).toBe(-1);
    const best = t.searchBatchSync(q, K).ids[0]!;
    for (let j = 0; j < D; j++) data[best * D + j]! *= 0.25; // a write the tensor never sees
    expectCurrent(t, q);
  });
});
