import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  InvalidArgumentError,
  ProductKeyIndex,
  SparseAdam,
  SparseTensor,
  StorageError,
  TensorBusyError,
  UnsupportedError,
  verify,
  type StorageFailure,
} from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { Rng } from './helpers/rng.js';

const dir = mkdtempSync(join(tmpdir(), 'gt-storage-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const fresh = (): string => join(dir, `t${counter++}.gtt`);
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const bytesOf = (a: Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');
const allIds = (n: number): Uint32Array => Uint32Array.from({ length: n }, (_, i) => i);

/** Copies the tensor file and its log as they are on disk now: the image a crash (or power loss after the last fsync) leaves. */
function crashImage(path: string): string {
  const out = fresh();
  copyFileSync(path, out);
  if (existsSync(`${path}.wal`)) copyFileSync(`${path}.wal`, `${out}.wal`);
  return out;
}

function flipByte(path: string, offset: number): void {
  const b = readFileSync(path);
  b[offset] = b[offset]! ^ 0x5a;
  writeFileSync(path, b);
}

async function expectStorageError(p: Promise<unknown>, reason: StorageFailure): Promise<StorageError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StorageError);
  const se = err as StorageError;
  expect(se.code).toBe('ERR_GT_STORAGE');
  expect(se.reason).toBe(reason);
  return se;
}

/** The deterministic training schedule of these tests: step s touches a few rows with seeded gradients. */
function stepOf(s: number, n: number, d: number): { ids: number[]; grads: Float32Array } {
  const r = new Rng(1000 + s);
  const ids = Array.from({ length: 6 }, () => r.int(0, n - 1));
  return { ids, grads: r.f32(ids.length * d) };
}

const ADAM = { lr: 0.01, weightDecay: 0.01 };

/** An in-memory reference trained with the same steps. */
function reference(init: Float32Array, d: number, steps: number): { t: SparseTensor; opt: SparseAdam } {
  const t = SparseTensor.fromArray(init, d);
  t.commitSync();
  const opt = new SparseAdam([t], ADAM);
  for (let s = 1; s <= steps; s++) {
    const { ids, grads } = stepOf(s, init.length / d, d);
    opt.step([{ tensor: t, ids, grads }]);
  }
  return { t, opt };
}

function expectSameState(a: SparseTensor, aOpt: SparseAdam, b: SparseTensor, bOpt: SparseAdam): void {
  const ids = allIds(a.size);
  expect(bytesOf(a.gather(ids))).toBe(bytesOf(b.gather(ids)));
  expect(hex(a.root())).toBe(hex(b.root()));
  const sa = aOpt.state(a, ids), sb = bOpt.state(b, ids);
  expect(bytesOf(sa.m)).toBe(bytesOf(sb.m));
  expect(bytesOf(sa.v)).toBe(bytesOf(sb.v));
  expect(Array.from(sa.steps)).toEqual(Array.from(sb.steps));
  expect(aOpt.info(a).steps).toBe(bOpt.info(b).steps);
}

describe('tensor files: round trip', () => {
  it('saveFile / openFile keeps every row, the root of a fresh rebuild, and proofs that verify', async () => {
    const d = 24, n = 777;
    const rng = new Rng(1);
    const mem = SparseTensor.fromArray(rng.f32(n * d), d);
    mem.commitSync();
    mem.add([3, 500, 3], rng.f32(3 * d));
    const path = fresh();
    await mem.saveFile(path);
    const t = await SparseTensor.openFile(path, { verify: true });
    expect(t.size).toBe(n);
    expect(t.dim).toBe(d);
    expect(t.committed).toBe(true);
    expect(bytesOf(t.gather(allIds(n)))).toBe(bytesOf(mem.gather(allIds(n))));
    // Independent reference: a fresh in-memory rebuild over the same rows.
    const rebuilt = SparseTensor.fromArray(mem.gather(allIds(n)), d).commitSync();
    expect(hex(t.root())).toBe(hex(rebuilt));
    expect(hex(await t.commit())).toBe(hex(rebuilt)); // a no-op on a file tensor
    const p = t.prove([0, 5, 776]);
    expect(await verify(p.root, p.n, p.ids, p.leaves, p.proof)).toBe(true);
    expect(t.file).toMatchObject({ seq: 0, wasClean: true, verified: true, writable: true, optimizerState: false });
    // Search reads the mapped rows.
    const q = rng.f32(d);
    expect(Array.from(t.search(q, 5).ids)).toEqual(Array.from(mem.search(q, 5).ids));
    t.close();
  });

  it('writes, checkpoints, a crash image and a clean close all reopen to the committed state (values, root, Adam state)', async () => {
    const d = 16, n = 300;
    const init = new Rng(2).f32(n * d);
    const path = fresh();
    await SparseTensor.fromArray(init, d).saveFile(path, { optimizerState: true });
    const t = await SparseTensor.openFile(path);
    const opt = new SparseAdam([t], ADAM);
    for (let s = 1; s <= 5; s++) {
      const { ids, grads } = stepOf(s, n, d);
      opt.step([{ tensor: t, ids, grads }]);
      expect(t.checkpoint()).toBe(s);
    }
    const image5 = crashImage(path);
    // Uncommitted work is not in an image.
    const { ids, grads } = stepOf(6, n, d);
    opt.step([{ tensor: t, ids, grads }]);
    const image5b = crashImage(path);
    t.checkpoint();
    t.close();

    const ref5 = reference(init, d, 5);
    for (const img of [image5, image5b]) {
      const r = await SparseTensor.openFile(img);
      expect(r.file).toMatchObject({ seq: 5, wasClean: false, verified: true, replayedRecords: 5 });
      const ropt = new SparseAdam([r], ADAM);
      expectSameState(ref5.t, ref5.opt, r, ropt);
      r.close();
    }
    // The cleanly closed file: no replay, no full check needed, training resumes.
    const c = await SparseTensor.openFile(path);
    expect(c.file).toMatchObject({ seq: 6, compactedSeq: 6, wasClean: true, verified: false, replayedRecords: 0 });
    const copt = new SparseAdam([c], ADAM);
    const ref6 = reference(init, d, 6);
    expectSameState(ref6.t, ref6.opt, c, copt);
    const s7 = stepOf(7, n, d);
    copt.step([{ tensor: c, ids: s7.ids, grads: s7.grads }]);
    ref6.opt.step([{ tensor: ref6.t, ids: s7.ids, grads: s7.grads }]);
    expectSameState(ref6.t, ref6.opt, c, copt);
    c.close();
  });

  it('compaction applies the log in place and resets it; images taken around it reopen exactly', async () => {
    const d = 8, n = 200;
    const init = new Rng(3).f32(n * d);
    const path = fresh();
    await SparseTensor.fromArray(init, d).saveFile(path, { optimizerState: true });
    const t = await SparseTensor.openFile(path);
    const opt = new SparseAdam([t], ADAM);
    const images: { img: string; seq: number }[] = [];
    for (let s = 1; s <= 12; s++) {
      const { ids, grads } = stepOf(s, n, d);
      opt.step([{ tensor: t, ids, grads }]);
      t.checkpoint({ compactBytes: 2048 }); // a record is ~700 bytes: compacts every few steps
      images.push({ img: crashImage(path), seq: s });
    }
    expect(t.file!.compactedSeq).toBeGreaterThan(0);
    expect(t.file!.walBytes).toBeLessThan(2048 + 1024);
    // The row trigger: compacts as soon as 5 rows wait.
    const more = stepOf(13, n, d);
    opt.step([{ tensor: t, ids: more.ids, grads: more.grads }]);
    t.checkpoint({ compactBytes: 0, compactRows: 5 });
    expect(t.file).toMatchObject({ seq: 13, compactedSeq: 13, uncompactedRows: 0 });
    t.close();
    images.push({ img: crashImage(path), seq: 13 });
    for (const { img, seq } of images) {
      const r = await SparseTensor.openFile(img, { readOnly: true });
      const ref = reference(init, d, seq);
      expectSameState(ref.t, ref.opt, r, new SparseAdam([r], ADAM));
      r.close();
    }
  });

  it('a file tensor has a fixed number of rows; a read-only one refuses checkpoints; a closed one refuses everything', async () => {
    const path = fresh();
    await SparseTensor.createFile(path, { rows: 64, dim: 8, seed: 5, scale: 0.5 });
    const t = await SparseTensor.openFile(path);
    expect(() => t.append(new Float32Array(8))).toThrow(UnsupportedError);
    expect(t.size).toBe(64);
    const row = t.gather([3]);
    expect(row.every((x) => x >= -0.5 && x < 0.5)).toBe(true);
    // A second writer is refused while this one holds the file, and so is replacing it.
    await expectStorageError(SparseTensor.openFile(path), 'LOCKED');
    await expectStorageError(SparseTensor.createFile(path, { rows: 8, dim: 8 }), 'LOCKED');
    t.close();
    expect(() => t.size).toThrow(StorageError);
    const ro = await SparseTensor.openFile(path, { readOnly: true });
    ro.scatter([1], new Float32Array(8).fill(2)); // in memory only
    expect(() => ro.checkpoint()).toThrow(expect.objectContaining({ reason: 'READ_ONLY' }));
    // Optimizer state was not reserved in this file.
    expect(() => new SparseAdam([ro], ADAM)).toThrow(InvalidArgumentError);
    ro.close();
    const again = await SparseTensor.openFile(path);
    expect(bytesOf(again.gather([3]))).toBe(bytesOf(row)); // the read-only write never reached the file
    again.close();
    expect(() => SparseTensor.create(4).checkpoint()).toThrow(InvalidArgumentError);
  });

  it('checkpointAsync / compactAsync run off the JavaScript thread and hold the tensor meanwhile', async () => {
    const d = 8, n = 300;
    const init = new Rng(11).f32(n * d);
    const path = fresh();
    await SparseTensor.fromArray(init, d).saveFile(path, { optimizerState: true });
    const t = await SparseTensor.openFile(path);
    const opt = new SparseAdam([t], ADAM);
    const s1 = stepOf(1, n, d);
    opt.step([{ tensor: t, ids: s1.ids, grads: s1.grads }]);
    const pending = t.checkpointAsync();
    expect(() => t.scatter([0], new Float32Array(d))).toThrow(TensorBusyError);
    expect(() => t.gather([0])).toThrow(TensorBusyError);
    expect(await pending).toBe(1);
    const s2 = stepOf(2, n, d);
    opt.step([{ tensor: t, ids: s2.ids, grads: s2.grads }]);
    await t.compactAsync();
    expect(t.file).toMatchObject({ seq: 2, compactedSeq: 2, uncompactedRows: 0, pendingRows: 0 });
    // A step that touches no row still advances the global step: after a detach, the
    // next checkpoint must still record it (and the next optimizer resume from it).
    opt.step([{ tensor: t, ids: [], grads: new Float32Array(0) }]);
    opt.detach();
    expect(t.checkpoint()).toBe(3);
    expect(t.checkpoint()).toBe(3); // nothing new
    const img = crashImage(path);
    t.close();
    const r = await SparseTensor.openFile(img);
    const ref = reference(init, d, 2);
    ref.opt.step([{ tensor: ref.t, ids: [], grads: new Float32Array(0) }]);
    expectSameState(ref.t, ref.opt, r, new SparseAdam([r], ADAM));
    r.close();
  });

  it('createFile is deterministic in its seed', async () => {
    const a = fresh(), b = fresh();
    await SparseTensor.createFile(a, { rows: 100, dim: 4, seed: 9 });
    await SparseTensor.createFile(b, { rows: 100, dim: 4, seed: 9 });
    const ta = SparseTensor.openFileSync(a), tb = SparseTensor.openFileSync(b);
    expect(hex(ta.root())).toBe(hex(tb.root()));
    expect(hex(ta.root())).toBe(hex(SparseTensor.fromArray(ta.gather(allIds(100)), 4).commitSync()));
    ta.close();
    tb.close();
  });
});

describe('tensor files: damage is refused with a typed reason', () => {
  const d = 16, n = 256;
  const init = new Rng(4).f32(n * d);
  // Layout of this shape (format v1): slots at 0 and 4096; values at 8192.
  const VALUES = 8192;

  async function base(): Promise<string> {
    const path = fresh();
    await SparseTensor.fromArray(init, d).saveFile(path);
    return path;
  }

  it('a truncated file', async () => {
    const path = await base();
    const size = statSync(path).size;
    for (const len of [0, 100, 5000, VALUES + 10, size - 1]) {
      const p = crashImage(path);
      truncateSync(p, len);
      await expectStorageError(SparseTensor.openFile(p), 'TRUNCATED');
    }
  });

  it('a flipped byte in the header (every field), in the magic, a future version', async () => {
    const path = await base();
    for (const off of [8, 24, 32, 48, 80, 130, 200, 230]) {
      const p = crashImage(path);
      flipByte(p, off);
      await expectStorageError(SparseTensor.openFile(p), 'HEADER_CHECKSUM');
    }
    const m = crashImage(path);
    flipByte(m, 0);
    await expectStorageError(SparseTensor.openFile(m), 'BAD_MAGIC');
    // A header with a valid checksum but version 2, or an impossible N.
    const rewrite = async (patch: (h: Buffer) => void, reason: StorageFailure): Promise<void> => {
      const p = crashImage(path);
      const b = readFileSync(p);
      const h = b.subarray(0, 256);
      patch(h);
      native().blake3(new Uint8Array(h.subarray(0, 224))).forEach((x, i) => (h[224 + i] = x));
      writeFileSync(p, b);
      await expectStorageError(SparseTensor.openFile(p), reason);
    };
    await rewrite((h) => h.writeUInt32LE(3, 8), 'VERSION');
    await rewrite((h) => h.writeUInt32LE(2, 8), 'BAD_HEADER'); // v2 without its state-check flag
    await rewrite((h) => h.writeUInt32LE(2, 16), 'VERSION');
    await rewrite((h) => h.writeUInt32LE(0, 32), 'BAD_HEADER');
    await rewrite((h) => h.writeBigUInt64LE(1n << 40n, 24), 'BAD_HEADER');
    await rewrite((h) => h.writeBigUInt64LE(12345n, 128), 'BAD_HEADER');
    await rewrite((h) => h.writeBigUInt64LE(BigInt(n + 1), 24), 'BAD_HEADER'); // layout no longer matches
  });

  it('a flipped byte in the values or the tree: refused by the root check (on request, or after an unclean close)', async () => {
    const path = await base();
    const size = statSync(path).size;
    const treeAt = VALUES + n * d * 4; // 4096-aligned already for this shape
    for (const off of [VALUES, VALUES + 1234, VALUES + n * d * 4 - 1, treeAt + 5, size - 4096 - 1]) {
      const p = crashImage(path);
      flipByte(p, off);
      await expectStorageError(SparseTensor.openFile(p, { verify: true }), 'ROOT_MISMATCH');
    }
    // NaN where a value was: named as such (the finiteness check rides on the root check).
    const nan = crashImage(path);
    const nb = readFileSync(nan);
    nb.writeUInt32LE(0x7fc00000, VALUES + 4 * 100);
    writeFileSync(nan, nb);
    const e = await expectStorageError(SparseTensor.openFile(nan, { verify: true }), 'NON_FINITE');
    expect(e.message).toContain('row 6 ');
    // The top node is checked on every open, even a clean one without verify.
    const top = crashImage(path);
    const nodes = 2 * n - 1;
    flipByte(top, treeAt + (nodes - 1) * 32);
    await expectStorageError(SparseTensor.openFile(top), 'ROOT_MISMATCH');
    // An unclean file (a crashed writer) gets the full check without being asked.
    const w = await SparseTensor.openFile(path);
    const unclean = crashImage(path); // header now says "not closed cleanly"
    w.close();
    flipByte(unclean, VALUES + 77);
    await expectStorageError(SparseTensor.openFile(unclean), 'ROOT_MISMATCH');
  });

  it('the log: a damaged complete record is refused, a torn tail is dropped, a foreign log is refused', async () => {
    const path = await base();
    const t = await SparseTensor.openFile(path);
    const r = new Rng(5);
    const states: string[] = [];
    for (let s = 0; s < 3; s++) {
      t.scatter([s * 10, s * 10 + 1], r.f32(2 * d));
      t.checkpoint({ compactBytes: 0 });
      states.push(hex(t.root()));
    }
    const img = crashImage(path);
    t.close();
    const wal = readFileSync(`${img}.wal`);
    const rec = (wal.length - 64) / 3; // three equal records after the 64-byte log header
    expect(Number.isInteger(rec)).toBe(true);

    const withWal = (bytes: Buffer): string => {
      const p = crashImage(img);
      writeFileSync(`${p}.wal`, bytes);
      return p;
    };
    // A flipped byte in the first or second record (complete records follow it): refused.
    for (const off of [64 + 10, 64 + 100, 64 + rec + 50]) {
      const b = Buffer.from(wal);
      b[off] = b[off]! ^ 1;
      await expectStorageError(SparseTensor.openFile(withWal(b)), 'WAL_CORRUPT');
    }
    // A torn tail (the last record incomplete): the previous checkpoint, exactly.
    for (const cut of [wal.length - 1, wal.length - 40, 64 + 2 * rec + 10]) {
      const o = await SparseTensor.openFile(withWal(wal.subarray(0, cut)), { readOnly: true });
      expect(o.file!.seq).toBe(2);
      expect(hex(o.root())).toBe(states[1]);
      o.close();
    }
    // Zeros past the last record (the file grew before its data landed): ignored.
    const z = await SparseTensor.openFile(withWal(Buffer.concat([wal, Buffer.alloc(500)])), { readOnly: true });
    expect(hex(z.root())).toBe(states[2]);
    z.close();
    // A damaged log header followed by records.
    const h = Buffer.from(wal);
    h[20] = h[20]! ^ 1;
    await expectStorageError(SparseTensor.openFile(withWal(h)), 'WAL_CORRUPT');
    // The log of another file at the same path.
    const other = await base();
    const o = await SparseTensor.openFile(other);
    o.scatter([1], r.f32(d));
    o.checkpoint();
    o.close();
    const foreign = crashImage(img);
    copyFileSync(`${other}.wal`, `${foreign}.wal`);
    // (the other file was compacted on close, so its log is an empty, valid log of another generation)
    await expectStorageError(SparseTensor.openFile(foreign), 'WAL_MISMATCH');
    // A missing log is not detected: the main file alone is a consistent older checkpoint (the
    // last compaction), and it opens as that (docs/storage.md: keep the file and its log together).
    const nolog = crashImage(img);
    rmSync(`${nolog}.wal`);
    const nl = await SparseTensor.openFile(nolog, { readOnly: true });
    expect(nl.file!.seq).toBe(0);
    nl.close();
  });
});


/** Region offsets a tensor file's header records (docs/storage.md): values, m, v, counters, decay marks, tree. */
function regions(path: string): { values: number; m: number; v: number; steps: number; decay: number; tree: number; treeLen: number } {
  const h = readFileSync(path).subarray(0, 256);
  const at = (i: number): number => Number(h.readBigUInt64LE(128 + 16 * i));
  return { values: at(0), m: at(1), v: at(2), steps: at(3), decay: at(4), tree: at(5), treeLen: Number(h.readBigUInt64LE(136 + 80)) };
}

describe('tensor files: verified reads (a row is checked against the tree the first time it is read)', () => {
  const d = 16, n = 300;
  const init = new Rng(21).f32(n * d);
  const mem = SparseTensor.fromArray(init, d);

  async function damaged(patch: (b: Buffer, r: ReturnType<typeof regions>) => void): Promise<string> {
    const path = fresh();
    await mem.saveFile(path, { optimizerState: true });
    const b = readFileSync(path);
    patch(b, regions(path));
    writeFileSync(path, b);
    return path;
  }

  it('a flipped byte in one row of a clean file opened without the full check: every read path refuses that row, others are served', async () => {
    const path = await damaged((b, r) => {
      b[r.values + 5 * d * 4 + 7]! ^= 0x10;
    });
    const t = await SparseTensor.openFile(path); // clean: no full check, the stored top matches the root
    expect(t.file).toMatchObject({ verified: false, wasClean: true, formatVersion: 2 });
    // Row 4 shares row 5's page; it is intact and served exactly.
    expect(bytesOf(t.gather([4, 6]))).toBe(bytesOf(mem.gather([4, 6])));
    const refused = async (what: () => unknown): Promise<void> => {
      await expectStorageError(Promise.resolve().then(what), 'ROW_MISMATCH');
    };
    await refused(() => t.gather([4, 5]));
    await refused(() => t.row(5));
    await refused(() => t.prove([5]));
    await refused(() => t.search(new Rng(1).f32(d), 3)); // a scan reads every row
    await refused(() => t.searchBatch(new Rng(2).f32(4 * d), 3, { threads: 2 }));
    await refused(() => t.add([5], new Float32Array(d)));
    await refused(() => t.scatter([5], new Float32Array(d))); // its path is rehashed from stored siblings
    const opt = new SparseAdam([t], ADAM);
    await refused(() => opt.step([{ tensor: t, ids: [7, 5], grads: new Float32Array(2 * d).fill(0.5) }]));
    // Nothing was written by the refused calls: the root is still the recorded one.
    expect(hex(t.root())).toBe(hex(SparseTensor.fromArray(init, d).commitSync()));
    expect(bytesOf(t.gather([7]))).toBe(bytesOf(mem.gather([7])));
    t.close();
    // Without the checks (measurement only), the damaged row is served: what happened before.
    const u = await SparseTensor.openFile(path, { uncheckedReads: true, readOnly: true });
    expect(bytesOf(u.gather([5]))).not.toBe(bytesOf(mem.gather([5])));
    u.close();
  });

  it('a damaged leaf or inner node of the stored tree: the rows below it and its sibling are refused, the others are served', async () => {
    for (const [level, index, bad, good] of [
      // A leaf: its row, and its sibling 8 (whose parent is recomputed from the damaged leaf).
      [0, 9, [9, 8], [7, 10, 200]],
      // Level 1 node 20 covers rows 40, 41; its sibling 21 (rows 42, 43) meets it one level up.
      [1, 20, [40, 41, 42, 43], [39, 44, 0]],
    ] as const) {
      const path = await damaged((b, r) => {
        let off = r.tree;
        let w = n;
        for (let l = 0; l < level; l++) {
          off += w * 32;
          w = Math.ceil(w / 2);
        }
        b[off + index * 32 + 3]! ^= 1;
      });
      const t = await SparseTensor.openFile(path);
      for (const id of good) expect(bytesOf(t.gather([id]))).toBe(bytesOf(mem.gather([id])));
      for (const id of bad) await expectStorageError(Promise.resolve().then(() => t.gather([id])), 'ROW_MISMATCH');
      t.close();
    }
  });

  it('NaN in a row is named NON_FINITE on first read', async () => {
    const path = await damaged((b, r) => b.writeUInt32LE(0x7fc00000, r.values + 4 * (d * 9 + 2)));
    const t = await SparseTensor.openFile(path);
    const e = await expectStorageError(Promise.resolve().then(() => t.gather([9])), 'NON_FINITE');
    expect(e.message).toContain('row 9 ');
    t.close();
  });

  it('each row is checked once; concurrent HNSW searches on worker threads check rows as they score them', async () => {
    const path = fresh();
    await mem.saveFile(path);
    const graph = join(dir, 'verified.hnsw');
    const m2 = SparseTensor.fromArray(init, d);
    await m2.buildHnsw({ seed: 3 });
    m2.saveHnsw(graph);
    const t = await SparseTensor.openFile(path);
    t.loadHnsw(graph, { seed: 3 });
    const q = new Rng(9).f32(64 * d);
    const [a, b] = await Promise.all([
      t.searchBatch(q, 5, { index: 'hnsw', threads: 4 }),
      t.searchBatch(q, 5, { index: 'hnsw', threads: 4 }),
    ]);
    const ref = await m2.searchBatch(q, 5, { index: 'hnsw', threads: 1 });
    expect(Array.from(a.ids)).toEqual(Array.from(ref.ids));
    expect(Array.from(b.ids)).toEqual(Array.from(ref.ids));
    const checked = t.file!.rowsChecked;
    expect(checked).toBeGreaterThan(0);
    expect(checked).toBeLessThan(n); // only the rows the searches scored
    t.gather(allIds(n));
    expect(t.file!.rowsChecked).toBe(n); // each row counted once, whichever thread checked it
    t.gather(allIds(n)); // cached: nothing is checked again
    const after = t.file!.rowsChecked;
    t.gather([1, 2, 3]);
    expect(t.file!.rowsChecked).toBe(after);
    t.close();
  });
});

describe('tensor files: damaged optimizer state is refused with a typed reason', () => {
  const d = 8, n = 200;
  const init = new Rng(31).f32(n * d);

  /** A v2 file trained for a few steps and closed (its state and state checks compacted into it). */
  async function trained(): Promise<{ path: string; ids: number[] }> {
    const path = fresh();
    await SparseTensor.fromArray(init, d).saveFile(path, { optimizerState: true });
    const t = await SparseTensor.openFile(path);
    const opt = new SparseAdam([t], ADAM);
    for (let s = 1; s <= 5; s++) {
      const { ids, grads } = stepOf(s, n, d);
      opt.step([{ tensor: t, ids, grads }]);
      if (s % 2 === 0) t.checkpoint();
    }
    t.close();
    return { path, ids: stepOf(1, n, d).ids };
  }

  it('an acknowledged state reopens and resumes exactly; a flipped byte in m, v, a counter, a decay mark or the check is refused on first touch', async () => {
    const { path, ids } = await trained();
    const row = ids[0]!;
    // Reference: the same steps in memory, then one more step.
    const ref = reference(init, d, 5);
    {
      const t = await SparseTensor.openFile(crashImage(path));
      const opt = new SparseAdam([t], ADAM);
      expectSameState(ref.t, ref.opt, t, opt);
      t.close();
    }
    const r = regions(path);
    const checkAt = Math.ceil((r.tree + r.treeLen) / 4096) * 4096;
    const cases: Array<[string, number, StorageFailure]> = [
      ['m', r.m + row * d * 4 + 1, 'STATE_MISMATCH'],
      ['v', r.v + row * d * 4 + 5, 'STATE_MISMATCH'],
      ['counter', r.steps + row * 4, 'STATE_MISMATCH'],
      ['decay mark', r.decay + row * 8 + 2, 'STATE_MISMATCH'],
      ['state check', checkAt + row * 16 + 9, 'STATE_MISMATCH'],
      ['m of an untrained row', r.m + 199 * d * 4, 'STATE_MISMATCH'],
    ];
    for (const [what, off, reason] of cases) {
      const p = crashImage(path);
      flipByte(p, off);
      const t = await SparseTensor.openFile(p);
      const opt = new SparseAdam([t], ADAM);
      const target = what.includes('untrained') ? 199 : row;
      // Values are intact: reading the row is fine; touching its state is not.
      expect(bytesOf(t.gather([target]))).toBe(bytesOf(t.gather([target])));
      const e = await expectStorageError(
        Promise.resolve().then(() => opt.step([{ tensor: t, ids: [target], grads: new Float32Array(d).fill(0.1) }])),
        reason,
      );
      expect(e.message, what).toContain(`row ${target}`);
      await expectStorageError(Promise.resolve().then(() => opt.state(t, [target])), reason);
      t.close();
      // The full check at open finds it too.
      await expectStorageError(SparseTensor.openFile(p, { verify: true, readOnly: true }), reason);
    }
  });

  it('writing the values of a row whose state is damaged does not bless the damage: the next open still refuses that state', async () => {
    const { path, ids } = await trained();
    const row = ids[0]!;
    const r = regions(path);
    const p = crashImage(path);
    flipByte(p, r.v + row * d * 4 + 6);
    const t = await SparseTensor.openFile(p);
    t.scatter([row], new Float32Array(d).fill(0.25)); // values only; its state is not touched
    t.compact(); // checkpoint + compaction: the state checks of changed rows are rewritten, not this one
    t.close();
    const again = await SparseTensor.openFile(p);
    const opt = new SparseAdam([again], ADAM);
    expect(Array.from(again.gather([row]))).toEqual(new Array(d).fill(0.25));
    await expectStorageError(Promise.resolve().then(() => opt.state(again, [row])), 'STATE_MISMATCH');
    again.close();
  });

  it('a v1 file (no state checks) still opens; its state is checked for values no step produces', async () => {
    const { path, ids } = await trained();
    // Rewrite the header as format v1 (no state-check flag; drop the region).
    const v1 = fresh();
    const b = readFileSync(path);
    const r = regions(path);
    const len = Math.ceil((r.tree + r.treeLen) / 4096) * 4096;
    const out = Buffer.from(b.subarray(0, len));
    for (const slot of [0, 4096]) {
      const h = out.subarray(slot, slot + 256);
      if (h.readUInt32LE(8) !== 2) continue;
      h.writeUInt32LE(1, 8);
      h.writeUInt32LE(1, 36);
      native().blake3(new Uint8Array(h.subarray(0, 224))).forEach((x, i) => (h[224 + i] = x));
    }
    writeFileSync(v1, out);
    {
      const t = await SparseTensor.openFile(crashImage(v1));
      expect(t.file!.formatVersion).toBe(1);
      const ref = reference(init, d, 5);
      expectSameState(ref.t, ref.opt, t, new SparseAdam([t], ADAM));
      t.close();
    }
    const row = ids[0]!;
    const bad: Array<[number, (x: Buffer) => void]> = [
      [row, (x) => x.writeFloatLE(Number.NaN, r.m + row * d * 4)],
      [row, (x) => x.writeFloatLE(-1, r.v + row * d * 4 + 4)],
      [row, (x) => x.writeUInt32LE(1000, r.steps + row * 4)],
      [row, (x) => x.writeDoubleLE(0.5, r.decay + row * 8)],
      [row, (x) => x.writeDoubleLE(-1e6, r.decay + row * 8)],
    ];
    for (const [id, patch] of bad) {
      const p = crashImage(v1);
      const x = readFileSync(p);
      patch(x);
      writeFileSync(p, x);
      const t = await SparseTensor.openFile(p);
      const opt = new SparseAdam([t], ADAM);
      await expectStorageError(
        Promise.resolve().then(() => opt.step([{ tensor: t, ids: [id], grads: new Float32Array(d).fill(0.1) }])),
        'STATE_INVALID',
      );
      t.close();
    }
  });
});

describe('the product-key index in tensor files', () => {
  it('round trip of both tables, and a flipped byte in a table is refused', async () => {
    const pk = ProductKeyIndex.random(32, 8, (() => { const r = new Rng(3); return () => r.next(); })());
    const [a, b] = [fresh(), fresh()];
    await pk.saveFiles(a, b);
    const back = await ProductKeyIndex.openFiles(a, b, { verify: true });
    const q = new Rng(8).f32(8);
    expect(Array.from(back.search(q, 10).ids)).toEqual(Array.from(pk.search(q, 10).ids));
    back.keys1.close();
    back.keys2.close();
    flipByte(b, 8192 + 17);
    await expectStorageError(ProductKeyIndex.openFiles(a, b, { verify: true }), 'ROOT_MISMATCH');
  });
});
