/**
 * PatternCache keeps its rows in least-recently-used order with a lazy queue (stamps)
 * instead of moving map entries. A prover's mirror and the verifier's cache must agree
 * row for row, so the observable behaviour must be the plain LRU's: compared here with
 * an independent reference (a Map moved on every use, the earlier implementation) under
 * random puts, records with changed and unchanged rows, trims at small capacities,
 * clones and clears, over ids on both sides of the small-key range.
 */
import { describe, expect, it } from 'vitest';

import { PatternCache, type ResolvedBlock } from '../lib/verify/proof-format.js';
import { Rng } from './helpers/rng.js';

/** The reference: one Map in recency order, every use deletes and re-inserts. */
class RefCache {
  readonly rows = new Map<string, { row: Float32Array; root: Uint8Array }>();
  constructor(readonly capacity: number) {}
  put(tensor: number, id: number, row: Float32Array, root: Uint8Array): void {
    const key = `${tensor}/${id}`;
    this.rows.delete(key);
    this.rows.set(key, { row, root });
  }
  trim(): void {
    for (const key of this.rows.keys()) {
      if (this.rows.size <= this.capacity) break;
      this.rows.delete(key);
    }
  }
  record(blocks: readonly ResolvedBlock[]): void {
    for (const b of blocks) {
      for (let t = 0; t < b.ids.length; t++) {
        const row = b.rows.slice(t * b.dim, (t + 1) * b.dim);
        const old = this.rows.get(`${b.tensor}/${b.ids[t]}`);
        const same = old !== undefined && Buffer.compare(Buffer.from(old.row.buffer, old.row.byteOffset, old.row.byteLength), Buffer.from(row.buffer)) === 0;
        this.put(b.tensor, b.ids[t]!, same ? old.row : row, b.root);
      }
    }
    this.trim();
  }
  clone(): RefCache {
    const c = new RefCache(this.capacity);
    for (const [k, v] of this.rows) c.rows.set(k, { row: v.row.slice(), root: v.root });
    return c;
  }
}

describe('PatternCache', () => {
  it('evicts, keeps and clones exactly like a plain LRU map (random operations)', () => {
    const rng = new Rng(2024);
    const dim = 3;
    // Ids on both sides of the small-key range (tensor < 2^10, id < 2^20).
    const tensors = [0, 1, 5, 1023, 1024, 70000];
    const idsOf = [0, 1, 2, 3, 7, 1048575, 1048576, 2 ** 32 - 1];
    const roots: Uint8Array[] = [0, 1, 2, 3].map((i) => new Uint8Array(32).fill(i));
    // A root binds its rows (what the cache may assume of rows verified against it): the row of
    // (tensor, id) under a root is fixed; small values, so rows repeat across roots.
    const memo = new Map<string, Float32Array>();
    const value = (t: number, id: number, root: Uint8Array): Float32Array => {
      const key = `${t}/${id}/${roots.indexOf(root)}`;
      if (!memo.has(key)) memo.set(key, Float32Array.from({ length: dim }, () => rng.int(0, 2)));
      return memo.get(key)!.slice();
    };
    for (const capacity of [0, 1, 3, 17, 400]) {
      let cache = new PatternCache(capacity);
      let ref = new RefCache(capacity);
      for (let op = 0; op < 3000; op++) {
        const r = rng.next();
        if (r < 0.3) {
          const t = tensors[rng.int(0, tensors.length - 1)]!, id = idsOf[rng.int(0, idsOf.length - 1)]!;
          const root = roots[rng.int(0, roots.length - 1)]!, row = value(t, id, root);
          cache.put(t, id, row, root);
          ref.put(t, id, row, root);
          if (rng.next() < 0.5) {
            cache.trim();
            ref.trim();
          }
        } else if (r < 0.9) {
          const blocks: ResolvedBlock[] = [];
          for (let b = rng.int(1, 3); b > 0; b--) {
            const ids = Uint32Array.from(new Set(Array.from({ length: rng.int(1, 6) }, () => idsOf[rng.int(0, idsOf.length - 1)]!))).sort();
            const tensor = tensors[rng.int(0, tensors.length - 1)]!, root = roots[rng.int(0, roots.length - 1)]!;
            const rows = new Float32Array(ids.length * dim);
            for (let i = 0; i < ids.length; i++) rows.set(value(tensor, ids[i]!, root), i * dim);
            blocks.push({ tensor, dim, ids, rows, root });
          }
          cache.record(blocks);
          ref.record(blocks);
        } else if (r < 0.97) {
          cache = cache.clone();
          ref = ref.clone();
        } else {
          cache.clear();
          ref.rows.clear();
        }
        // What each side holds, as one string per side (one expect per operation).
        let got = `${cache.size}`, want = `${ref.rows.size}`;
        for (const t of tensors) {
          for (const id of idsOf) {
            const h = cache.get(t, id), w = ref.rows.get(`${t}/${id}`);
            got += h ? ` ${t}/${id}:${h.row.join(',')}:${h.bits.join(',')}:${roots.indexOf(h.root)}` : '';
            want += w ? ` ${t}/${id}:${w.row.join(',')}:${new Uint32Array(w.row.buffer, w.row.byteOffset, dim).join(',')}:${roots.indexOf(w.root)}` : '';
          }
        }
        if (got !== want) expect(`capacity ${capacity} op ${op}: ${got}`).toBe(`capacity ${capacity} op ${op}: ${want}`);
      }
    }
  });

  it('holds the most recent rows while one table larger than the capacity is recorded over and over', () => {
    const cache = new PatternCache(100);
    const dim = 2, ids = Uint32Array.from({ length: 150 }, (_, i) => i), rows = new Float32Array(150 * dim).fill(1);
    const root = new Uint8Array(32);
    for (let r = 0; r < 200; r++) cache.record([{ tensor: 3, dim, ids, rows, root }]);
    expect(cache.size).toBe(100);
    // The last 100 recorded (ids 50..149) are held, the first 50 not.
    expect(cache.get(3, 49)).toBeUndefined();
    expect(cache.get(3, 50)).toBeDefined();
    expect(cache.get(3, 149)).toBeDefined();
  });
});
