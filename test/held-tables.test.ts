/**
 * Held tables (docs/proof-format.md sections 3 and 6): once a verified forward proof has
 * revealed every row of a tensor, both caches hold it whole at its root, and later forward
 * proofs carry it as a 9-byte marker (proof format version 2) that the verifier resolves
 * from its cache. Checked here: a held proof gives the output of the cold one and of a proof
 * made without a cache; a marker for a table the verifier does not hold, or holds at
 * another root, is refused (NOT_HELD); the prover's mirror equals the verifier's cache
 * through a sequence of proofs, table updates and evictions; PatternCache's tables against
 * a reference LRU; hostile bytes.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, PatternCache, SparseSGD, SparseTensor, languageModel } from '../lib/index.js';
import { FormatError, InvalidArgumentError, ProofError } from '../lib/shared/errors.js';
import { PROOF_FORMAT_VERSION, PROOF_HELD_TABLES_VERSION, decodeProof, encodeProof, type ForwardProof, type ResolvedBlock, type UpdateProof } from '../lib/verify/proof-format.js';
import { pinGhost, verifyForward, verifyUpdate, type PinnedGhost } from '../lib/verify/proof-verify.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const versionOf = (b: Uint8Array): number => b[8]! | (b[9]! << 8);
const tablesOf = (p: ForwardProof): number[] => p.layers.flatMap((l) => l.blocks).filter((b) => b.heldTable === true).map((b) => b.tensor);

/** Everything either cache holds, as comparable text: every (tensor, id)'s row bits and root, every table, the size. */
function snapshot(c: PatternCache, sizes: readonly number[]): string {
  const out: string[] = [`size ${c.size} tables ${c.tableCount}`];
  sizes.forEach((n, t) => {
    const w = c.getTable(t);
    if (w) out.push(`table ${t} ${w.n}x${w.dim} ${hex(w.root)} ${hex(new Uint8Array(w.rows.buffer, w.rows.byteOffset, w.rows.byteLength))}`);
    for (let id = 0; id < n; id++) {
      const r = c.get(t, id);
      if (r) out.push(`${t}/${id} ${hex(r.root)} ${hex(new Uint8Array(r.bits.buffer, r.bits.byteOffset, r.bits.byteLength))}`);
    }
  });
  return out.join('\n');
}

async function pinned(m: Model): Promise<PinnedGhost> {
  return pinGhost((await m.ghost()).bytes);
}

describe('held tables', () => {
  it('a held proof carries the tables as markers (version 2) and verifies to the cold and uncached proofs\' output', async () => {
    const rng = new Rng(41);
    const { model } = twoLayerModel(rng);
    const ghost = await pinned(model);
    const x = rng.f32(3 * 16);
    const mirror = new PatternCache(), cache = new PatternCache();
    const plain = await model.prove(x);
    const ref = await verifyForward(ghost, plain.bytes);
    const cold = await model.prove(x, { cache: mirror });
    expect(versionOf(cold.bytes)).toBe(PROOF_FORMAT_VERSION);
    expect(tablesOf(cold.proof)).toEqual([]);
    expect(hex(cold.bytes)).toBe(hex(plain.bytes)); // nothing held yet: the same bytes
    await verifyForward(ghost, cold.bytes, { cache });
    expect(cache.tableCount).toBe(2); // the two sub-key tables, held whole
    const held = await model.prove(x, { cache: mirror });
    expect(versionOf(held.bytes)).toBe(PROOF_HELD_TABLES_VERSION);
    expect(tablesOf(held.proof)).toEqual([2, 3]);
    expect(held.bytes.length).toBeLessThan(cold.bytes.length);
    const v = await verifyForward(ghost, held.bytes, { cache });
    expect(hex(new Uint8Array(v.output.buffer))).toBe(hex(new Uint8Array(ref.output.buffer)));
    expect(hex(new Uint8Array(held.output.buffer))).toBe(hex(new Uint8Array(plain.output.buffer)));
    expect(snapshot(mirror, model.tensors.map((t) => t.size))).toBe(snapshot(cache, model.tensors.map((t) => t.size)));
    // Decoded and re-encoded: the same bytes.
    expect(hex(encodeProof(decodeProof(held.bytes)))).toBe(hex(held.bytes));

    // A language model with a product-key memory layer (query weight and sub-key tables whole) and
    // an exact layer with held keys (requireSelection): every table a marker the second time.
    const lm = languageModel({ context: 8, dim: 8, layers: 1, heads: 2, hidden: 12, memory: { layers: [0], subKeys: 3, k: 2, heads: 2, keyDim: 4 }, seed: 2 });
    const lg = await pinned(lm);
    const lMirror = new PatternCache(), lCache = new PatternCache();
    const ids = [1, 7, 3, 200, 5, 9];
    const lref = await verifyForward(lg, (await lm.prove(ids)).bytes);
    for (let i = 0; i < 2; i++) {
      const r = await lm.prove(ids, { cache: lMirror });
      expect(tablesOf(r.proof).length > 0).toBe(i === 1);
      const lv = await verifyForward(lg, r.bytes, { cache: lCache });
      expect(hex(new Uint8Array(lv.output.buffer))).toBe(hex(new Uint8Array(lref.output.buffer)));
    }
    const keys = SparseTensor.fromArray(rng.f32(64 * 6), 6);
    const ex = new Model([new HopfieldLookup({ keys, values: SparseTensor.fromArray(rng.f32(64 * 3), 3), k: 4 })]);
    const eg = await pinned(ex);
    const eMirror = new PatternCache(), eCache = new PatternCache();
    const ey = rng.f32(2 * 6);
    const eref = await verifyForward(eg, (await ex.prove(ey, { revealKeys: 'all' })).bytes, { requireSelection: true });
    for (let i = 0; i < 2; i++) {
      const r = await ex.prove(ey, { revealKeys: 'all', cache: eMirror });
      expect(tablesOf(r.proof)).toEqual(i === 0 ? [] : [0]);
      const ev = await verifyForward(eg, r.bytes, { cache: eCache, requireSelection: true });
      expect(hex(new Uint8Array(ev.output.buffer))).toBe(hex(new Uint8Array(eref.output.buffer)));
    }
  });

  it('a marker for a table the verifier does not hold, or holds at another root, is refused: NOT_HELD', async () => {
    const rng = new Rng(42);
    const { model, l1 } = twoLayerModel(rng);
    let ghost = await pinned(model);
    const x = rng.f32(2 * 16);
    const mirror = new PatternCache(), cache = new PatternCache();
    await verifyForward(ghost, (await model.prove(x, { cache: mirror })).bytes, { cache });
    const held = await model.prove(x, { cache: mirror });
    expect(tablesOf(held.proof)).toEqual([2, 3]);
    const before = cache.clone();
    // Not held at all.
    await expect(verifyForward(ghost, held.bytes, { cache: new PatternCache() })).rejects.toMatchObject({ reason: 'NOT_HELD' });
    await expect(verifyForward(ghost, held.bytes)).rejects.toMatchObject({ reason: 'NOT_HELD' });
    await verifyForward(ghost, held.bytes, { cache });
    // A sub-key table changes (an update proof of two of its rows): held at the old root only.
    const keys1 = (l1.keys as { keys1: SparseTensor }).keys1;
    const sgd = new SparseSGD([keys1], { lr: 0.1 });
    const [u] = await model.proveStep(sgd, [{ tensor: keys1, ids: [0, 5], grads: rng.f32(2 * 8) }], { cache: mirror });
    ghost = (await verifyUpdate(ghost, u!.bytes, { cache })).ghost;
    const stale = cache.clone();
    // The next proof sends keys1 row by row (held and delta rows), keys2 still as a held table.
    const next = await model.prove(x, { cache: mirror });
    expect(tablesOf(next.proof)).toEqual([3]);
    await verifyForward(ghost, next.bytes, { cache });
    const again = await model.prove(x, { cache: mirror });
    expect(tablesOf(again.proof)).toEqual([2, 3]);
    // A verifier holding keys1 whole at its old root (the stale cache) refuses the marker...
    await expect(verifyForward(ghost, again.bytes, { cache: stale })).rejects.toMatchObject({ reason: 'NOT_HELD' });
    await expect(verifyForward(ghost, again.bytes, { cache: before })).rejects.toBeInstanceOf(ProofError);
    // ...the one that followed every proof accepts it.
    await verifyForward(ghost, again.bytes, { cache });
    expect(stale.getTable(2)).toBeDefined();
  });

  it('the prover\'s mirror equals the verifier\'s cache through proofs, table updates and evictions', async () => {
    for (const capacity of [0, 10, 30, 200, 100000]) {
      const rng = new Rng(43 + capacity);
      const { model, l0, l1 } = twoLayerModel(rng);
      const pk = l1.keys as { keys1: SparseTensor; keys2: SparseTensor };
      const sizes = model.tensors.map((t) => t.size);
      let ghost = await pinned(model);
      const mirror = new PatternCache(capacity), cache = new PatternCache(capacity);
      let tables = 0;
      for (let step = 0; step < 14; step++) {
        const r = rng.next();
        if (r < 0.6) {
          const p = await model.prove(rng.f32(rng.int(1, 3) * 16), { cache: mirror });
          tables += tablesOf(p.proof).length;
          await verifyForward(ghost, p.bytes, { cache });
        } else {
          // A sparse step on a sub-key table or on the exact layer's values.
          const t = r < 0.75 ? pk.keys1 : r < 0.85 ? pk.keys2 : l0.values;
          const ids = [...new Set([rng.int(0, t.size - 1), rng.int(0, t.size - 1)])].sort((a, b) => a - b);
          const sgd = new SparseSGD([t], { lr: 0.05 });
          const [u] = await model.proveStep(sgd, [{ tensor: t, ids, grads: rng.f32(ids.length * t.dim) }], { cache: mirror });
          sgd.detach();
          ghost = (await verifyUpdate(ghost, u!.bytes, { cache })).ghost;
        }
        expect(snapshot(mirror, sizes), `capacity ${capacity} step ${step}`).toBe(snapshot(cache, sizes));
        expect(mirror.size).toBeLessThanOrEqual(capacity);
      }
      // With room for a table (12 rows) held tables were sent; without, none.
      if (capacity >= 30) expect(tables).toBeGreaterThan(0);
      if (capacity < 12) expect(tables).toBe(0);
    }
  });

  it('PatternCache tables: kept, used and evicted as one entry of n rows, as a reference LRU does', () => {
    /** The reference: one Map in recency order (every use moves its key last); a table is one entry counted n. */
    class Ref {
      readonly m = new Map<string, { rows: Float32Array; root: Uint8Array; n: number }>();
      constructor(readonly capacity: number) {}
      #touch(key: string, e: { rows: Float32Array; root: Uint8Array; n: number }): void {
        this.m.delete(key);
        this.m.set(key, e);
      }
      get size(): number {
        let s = 0;
        for (const [k, e] of this.m) s += k.startsWith('t') ? e.n : 1;
        return s;
      }
      /** The row's copy: its own entry or its table's, whichever was used last. */
      get(t: number, id: number, dim: number): { row: Float32Array; root: Uint8Array; table: boolean } | undefined {
        const keys = [...this.m.keys()];
        const ri = keys.indexOf(`r${t}/${id}`), tab = this.m.get(`t${t}`), ti = keys.indexOf(`t${t}`);
        if (tab && id < tab.n && ti > ri) return { row: tab.rows.subarray(id * dim, (id + 1) * dim), root: tab.root, table: true };
        if (ri < 0) return undefined;
        const e = this.m.get(`r${t}/${id}`)!;
        return { row: e.rows, root: e.root, table: false };
      }
      record(blocks: readonly ResolvedBlock[]): void {
        for (const b of blocks) {
          if (b.all) {
            const w = this.m.get(`t${b.tensor}`);
            if (w && w.n === b.ids.length && hex(w.root) === hex(b.root)) this.#touch(`t${b.tensor}`, w);
            else this.#touch(`t${b.tensor}`, { rows: b.rows.slice(), root: b.root, n: b.ids.length });
            continue;
          }
          for (let i = 0; i < b.ids.length; i++) {
            const row = b.rows.slice(i * b.dim, (i + 1) * b.dim), id = b.ids[i]!;
            const old = this.get(b.tensor, id, b.dim);
            const same = old !== undefined && hex(new Uint8Array(old.row.slice().buffer)) === hex(new Uint8Array(row.buffer));
            if (old?.table && same && hex(old.root) === hex(b.root)) this.#touch(`t${b.tensor}`, this.m.get(`t${b.tensor}`)!);
            else this.#touch(`r${b.tensor}/${id}`, { rows: same ? old!.row.slice() : row, root: b.root, n: 1 });
          }
        }
        for (const k of [...this.m.keys()]) {
          if (this.size <= this.capacity) break;
          this.m.delete(k);
        }
      }
    }
    const rng = new Rng(44);
    const dim = 2, N = [5, 3, 8];
    const roots: Uint8Array[] = [new Uint8Array(32), new Uint8Array(32).fill(1), new Uint8Array(32).fill(2)];
    // A root binds its rows: the row of (tensor, id) under a root is fixed (small values: rows repeat across roots).
    const memo = new Map<string, number[]>();
    const rowOf = (t: number, id: number, root: Uint8Array): number[] => {
      const key = `${t}/${id}/${roots.indexOf(root)}`;
      if (!memo.has(key)) memo.set(key, Array.from({ length: dim }, () => rng.int(0, 1)));
      return memo.get(key)!;
    };
    const value = (t: number, ids: Uint32Array, root: Uint8Array): Float32Array => Float32Array.from(Array.from(ids).flatMap((id) => rowOf(t, id, root)));
    for (const capacity of [0, 4, 7, 12, 40]) {
      let cache = new PatternCache(capacity);
      const ref = new Ref(capacity);
      for (let op = 0; op < 600; op++) {
        const blocks: ResolvedBlock[] = [];
        for (let b = rng.int(1, 3); b > 0; b--) {
          const t = rng.int(0, N.length - 1), root = roots[rng.int(0, 2)]!;
          if (rng.next() < 0.4) {
            const ids = Uint32Array.from({ length: N[t]! }, (_, i) => i);
            blocks.push({ tensor: t, dim, ids, rows: value(t, ids, root), root, all: true });
          } else {
            const ids = Uint32Array.from(new Set(Array.from({ length: rng.int(1, 3) }, () => rng.int(0, N[t]! - 1)))).sort();
            blocks.push({ tensor: t, dim, ids, rows: value(t, ids, root), root });
          }
        }
        cache.record(blocks);
        ref.record(blocks);
        if (rng.next() < 0.05) cache = cache.clone();
        expect(cache.size, `capacity ${capacity} op ${op}`).toBe(ref.size);
        for (let t = 0; t < N.length; t++) {
          const w = cache.getTable(t), rw = ref.m.get(`t${t}`);
          expect(w === undefined, `table ${t}`).toBe(rw === undefined);
          if (w && rw) expect(hex(w.root) + hex(new Uint8Array(w.rows.buffer))).toBe(hex(rw.root) + hex(new Uint8Array(rw.rows.buffer)));
          for (let id = 0; id < N[t]!; id++) {
            const a = cache.get(t, id), r = ref.get(t, id, dim);
            expect(a === undefined, `capacity ${capacity} op ${op} row ${t}/${id}`).toBe(r === undefined);
            if (a && r) expect(hex(a.root) + hex(new Uint8Array(a.row.slice().buffer))).toBe(hex(r.root) + hex(new Uint8Array(r.row.slice().buffer)));
          }
        }
      }
    }
  });

  it('hostile bytes: a marker outside version 2 or outside a forward proof, version 2 without a marker, a marker of another shape', async () => {
    const rng = new Rng(45);
    const { model, l0 } = twoLayerModel(rng);
    const ghost = await pinned(model);
    const x = rng.f32(16);
    const mirror = new PatternCache(), cache = new PatternCache();
    const cold = await model.prove(x, { cache: mirror });
    await verifyForward(ghost, cold.bytes, { cache });
    const held = await model.prove(x, { cache: mirror });
    const at = (b: Uint8Array, tensor: number, dim: number): number[] => {
      const m = Buffer.from([tensor, 0, 0, 0, dim, 0, 0, 0, 2]);
      const out: number[] = [];
      for (let i = Buffer.from(b).indexOf(m); i >= 0; i = Buffer.from(b).indexOf(m, i + 1)) out.push(i);
      return out;
    };
    const [m2] = at(held.bytes, 2, 8);
    expect(at(held.bytes, 2, 8)).toHaveLength(1);
    const patched = (b: Uint8Array, f: (c: Uint8Array) => void): Uint8Array => {
      const c = b.slice();
      f(c);
      return c;
    };
    const refuse = async (b: Uint8Array, reason: string, c: PatternCache | undefined = cache.clone()): Promise<void> => {
      const err = await verifyForward(ghost, b, c ? { cache: c } : {}).then(() => null, (e: unknown) => e);
      expect(err, reason).toBeInstanceOf(reason === 'NOT_HELD' || reason === 'SHAPE' || reason === 'LAYER_MISMATCH' || reason === 'BLOCK_IDS' ? ProofError : FormatError);
      expect((err as FormatError | ProofError).reason).toBe(reason);
    };
    await verifyForward(ghost, held.bytes, { cache: cache.clone() });
    // The marker in a version 1 proof: unknown flags.
    await refuse(patched(held.bytes, (c) => void (c[8] = 1)), 'BAD_VALUE');
    // A version 1 proof relabelled version 2 (no marker): not the canonical encoding.
    await refuse(patched(cold.bytes, (c) => void (c[8] = 2)), 'NON_CANONICAL');
    // Flags 3, another dim, the other table twice, no such tensor.
    await refuse(patched(held.bytes, (c) => void (c[m2! + 8] = 3)), 'BAD_VALUE');
    await refuse(patched(held.bytes, (c) => void (c[m2! + 4] = 9)), 'SHAPE');
    await refuse(patched(held.bytes, (c) => void (c[m2!] = 3)), 'BLOCK_IDS');
    await refuse(patched(held.bytes, (c) => void (c[m2!] = 77)), 'LAYER_MISMATCH');
    // The exact layer's values as a held table: the layer reads ids, not the tensor whole.
    const p = decodeProof(held.bytes) as ForwardProof;
    Object.assign(p.layers[0]!.blocks[1]!, { all: true, heldTable: true, ids: new Uint32Array(0), kinds: new Uint8Array(0), payload: [], hashes: new Uint8Array(0) });
    await refuse(encodeProof(p), 'BLOCK_IDS');
    // Every truncation: a FormatError, never a crash or a pass.
    for (let n = 0; n < held.bytes.length; n += 7) await expect(verifyForward(ghost, held.bytes.subarray(0, n), { cache: cache.clone() })).rejects.toBeInstanceOf(FormatError);
    // Update proofs: no markers (encodeProof refuses one; flags 2 in the bytes is BAD_VALUE, version 2 NON_CANONICAL).
    const sgd = new SparseSGD([l0.values], { lr: 0.1 });
    const [u] = await model.proveStep(sgd, [{ tensor: l0.values, ids: [1, 4], grads: rng.f32(2 * 16) }]);
    const up = decodeProof(u!.bytes) as UpdateProof;
    expect(() => encodeProof({ ...up, block: { ...up.block, heldTable: true } })).toThrow(InvalidArgumentError);
    const flagsAt = 8 + 2 + 1 + 32 + 4 + 1 + 20 + 1 + 8 + 8 + 4 + 4; // magic, version, kind, digest, tensor, optimizer, steps, log decay, block tensor and dim
    expect(u!.bytes[flagsAt]).toBe(0);
    await expect(verifyUpdate(ghost, patched(u!.bytes, (c) => void (c[flagsAt] = 2)))).rejects.toMatchObject({ reason: 'BAD_VALUE' });
    await expect(verifyUpdate(ghost, patched(u!.bytes, (c) => void (c[8] = 2)))).rejects.toMatchObject({ reason: 'NON_CANONICAL' });
    // A held-table block must carry nothing but the marker.
    const q = decodeProof(held.bytes) as ForwardProof;
    q.layers[1]!.blocks[0]!.hashes = new Uint8Array(32);
    expect(() => encodeProof(q)).toThrow(InvalidArgumentError);
  });
});
