/**
 * The prover's fast paths for product-key layers (docs/product-keys.md, "Proving fast"):
 * each gives what the plain computation gives, checked here against an independent one.
 * - canonicalProductKeys ranks only the pairs (x, c) of the two top lists with
 *   (x + 1) (c + 1) <= k: the same slots and score bits as the verifier's cproductKeys
 *   (all k' x k' pairs) and an exact BigInt ranking, for k up to n^2 and with ties;
 * - sortedUniqueIds (one typed-array sort) equals a Set-and-sort of the same lists, and
 *   positionsOf (a sort and a merge for many ids) a Map of the block's ids;
 * - canonicalMix with `pos` (a block's rows mixed in place) equals the mix of the rows
 *   copied out, bit for bit, and refuses positions outside the rows;
 * - encodeProof writes rows planBlock planned as slices of their array: the same bytes
 *   as a copy of each block that goes the general way, also after a row is edited in
 *   place, two rows are swapped or one is replaced.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, PatternCache, ProductKeyIndex, SparseTensor } from '../lib/index.js';
import { positionsOf } from '../lib/model/layer-kind.js';
import { native } from '../lib/tensor/native.js';
import { cproductKeys } from '../lib/verify/canonical.js';
import { decodeProof, encodeProof, RowKind, sortedUniqueIds, type ForwardProof, type PatternBlock } from '../lib/verify/proof-format.js';
import { exactPairRanking } from './helpers/exact-sum.js';
import { Rng } from './helpers/rng.js';

const bits = (a: Float64Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

describe('product-key selection ranks the pairs that can win', () => {
  it('equals cproductKeys (every pair) and the exact ranking for k from 1 to n^2, with ties', () => {
    const rng = new Rng(77);
    for (const [n, d, ints] of [[6, 3, true], [9, 2, false], [16, 4, true]] as const) {
      const t1 = ints ? rng.f32ints(n * d, -2, 2) : rng.f32(n * d), t2 = ints ? rng.f32ints(n * d, -2, 2) : rng.f32(n * d);
      const q = Float64Array.from(ints ? rng.f32ints(2 * d, -2, 2) : rng.f32(2 * d));
      const s1 = Array.from({ length: n }, (_, i) => { let s = 0; for (let j = 0; j < d; j++) s += q[j]! * t1[i * d + j]!; return s; });
      const s2 = Array.from({ length: n }, (_, i) => { let s = 0; for (let j = 0; j < d; j++) s += q[d + j]! * t2[i * d + j]!; return s; });
      for (const k of [1, 2, 3, n - 1, n, n + 1, 2 * n + 3, Math.floor((n * n) / 2), n * n - 1, n * n]) {
        const r = native().canonicalProductKeys(q, t1, t2, n, d, d, 1, k, 1, 'none');
        const ts = cproductKeys(q, t1, t2, n, d, d, k);
        expect(Array.from(r.ids), `n ${n} k ${k}`).toEqual(Array.from(ts.ids));
        expect(bits(r.scores)).toBe(bits(ts.scores));
        // Integer data: every dot product above is exact, so this ranking is independent.
        if (ints) expect(Array.from(r.ids)).toEqual(exactPairRanking(s1, s2, k));
      }
    }
  });
});

describe('sortedUniqueIds', () => {
  it('equals a Set of the ids, sorted, for repeats, empty lists and ids up to 2^32 - 1', () => {
    const rng = new Rng(3);
    const ref = (lists: Uint32Array[]): number[] => [...new Set(lists.flatMap((l) => Array.from(l)))].sort((a, b) => a - b);
    for (let trial = 0; trial < 50; trial++) {
      const lists = Array.from({ length: rng.int(0, 4) }, () => {
        const span = [4, 100, 2 ** 32][rng.int(0, 2)]!;
        return Uint32Array.from({ length: rng.int(0, 300) }, () => Math.min(2 ** 32 - 1, Math.floor(rng.next() * span)));
      });
      if (trial === 0) lists.push(Uint32Array.of(2 ** 32 - 1, 0, 2 ** 32 - 1, 2 ** 31));
      const got = sortedUniqueIds(lists);
      expect(got).toBeInstanceOf(Uint32Array);
      expect(Array.from(got)).toEqual(ref(lists));
    }
  });
});

describe('positionsOf', () => {
  it('finds every id in a block (few ids and many, repeats), and names an id the block lacks', () => {
    const rng = new Rng(15);
    for (const [n, span] of [[5, 40], [63, 40], [64, 40], [3000, 500], [3000, 2 ** 32 - 1]] as const) {
      const ids = Uint32Array.from({ length: n }, () => Math.min(2 ** 32 - 1, Math.floor(rng.next() * span)));
      const have = sortedUniqueIds([ids, Uint32Array.of(0, 7)]);
      const block = { tensor: 3, dim: 1, ids: have, rows: new Float32Array(have.length), root: new Uint8Array(32) };
      const pos = positionsOf(block, ids);
      const at = new Map(Array.from(have, (id, i) => [id, i]));
      expect(Array.from(pos)).toEqual(Array.from(ids, (id) => at.get(id)));
      const gone = have.filter((id) => id !== ids[n >> 1]);
      expect(() => positionsOf({ ...block, ids: gone }, ids)).toThrow(new RegExp(`row ${ids[n >> 1]} of tensor 3 is not in its block`));
    }
  });
});

describe('canonicalMix with positions', () => {
  it('mixes rows in place with the bits of the copied rows; positions are checked', () => {
    const rng = new Rng(9);
    const B = 5, k = 7, w = 6, m = 11;
    const rows = rng.f32(m * w);
    const pos = Uint32Array.from({ length: B * k }, () => rng.int(0, m - 1));
    const copied = new Float32Array(B * k * w);
    for (let t = 0; t < B * k; t++) copied.set(rows.subarray(pos[t]! * w, (pos[t]! + 1) * w), t * w);
    const s = Float64Array.from({ length: B * k }, () => rng.signed() * 3);
    const a = native().canonicalMix(s, 0.5, rows, B, k, w, pos);
    expect(bits(a)).toBe(bits(native().canonicalMix(s, 0.5, copied, B, k, w)));
    const bad = pos.slice();
    bad[B * k - 1] = m;
    expect(() => native().canonicalMix(s, 0.5, rows, B, k, w, bad)).toThrow(/at\[34\] = 11/);
    expect(() => native().canonicalMix(s, 0.5, rows, B, k, w, pos.subarray(1))).toThrow();
    expect(() => native().canonicalMix(s, 0.5, rows.subarray(1), B, k, w, pos)).toThrow(/whole number of rows/);
  });
});

describe('encodeProof writes planned rows as slices', () => {
  /** A copy of the proof whose blocks planBlock did not make (the general path), rows shared. */
  const copyOf = (p: ForwardProof): ForwardProof => ({ ...p, layers: p.layers.map((l) => ({ ...l, blocks: l.blocks.map((b): PatternBlock => ({ ...b, payload: b.payload.slice() })) })) });

  it('gives the bytes of the general path, for Full, Held and Delta rows and after edits', async () => {
    const rng = new Rng(21);
    const n = 16, N = n * n;
    const keys = ProductKeyIndex.random(n, 8, () => rng.next());
    const values = SparseTensor.fromArray(rng.f32(N * 4), 4);
    for (const t of [keys.keys1, keys.keys2, values]) await t.commit();
    const model = new Model([new HopfieldLookup({ keys, values, k: 5 })]);
    const mirror = new PatternCache();
    const x1 = rng.f32(2 * 8);
    const first = await model.prove(x1, { cache: mirror });
    // Change two of the rows the mirror holds (they travel as deltas), then prove inputs
    // that read those rows again and new ones (held, delta and full rows in one block).
    const held = first.proof.layers[0]!.blocks[2]!.ids;
    values.scatter(held.subarray(0, 2), rng.f32(2 * 4, 0.01).map((v, i) => values.gather(held.subarray(0, 2))[i]! + v));
    const x2 = Float32Array.from([...x1, ...rng.f32(3 * 8)]);
    const p = (await model.prove(x2, { cache: mirror })).proof;
    const vb = p.layers[0]!.blocks.find((b) => b.tensor === 2)!;
    const kinds = new Set(vb.kinds);
    expect(kinds.has(RowKind.Full) && kinds.has(RowKind.Held) && kinds.has(RowKind.Delta)).toBe(true);
    const plain = await model.prove(x2);
    for (const proof of [p, plain.proof]) {
      expect(Buffer.from(encodeProof(proof)).equals(Buffer.from(encodeProof(copyOf(proof))))).toBe(true);
    }
    // Edits of the planned blocks: each still encodes as the general path does.
    const blocks = plain.proof.layers[0]!.blocks;
    const table = blocks[0]!, vals = blocks[2]!;
    const before = encodeProof(plain.proof);
    (table.payload[3] as Float32Array)[1] = 1234.5; // in place
    [vals.payload[0], vals.payload[1]] = [vals.payload[1]!, vals.payload[0]!]; // swapped
    table.payload[7] = Float32Array.from({ length: 4 }, (_, j) => 100 + j); // replaced
    const after = encodeProof(plain.proof);
    expect(Buffer.from(after).equals(Buffer.from(encodeProof(copyOf(plain.proof))))).toBe(true);
    expect(Buffer.from(after).equals(Buffer.from(before))).toBe(false);
    const back = decodeProof(after) as ForwardProof;
    const [bt, bv] = [back.layers[0]!.blocks[0]!, back.layers[0]!.blocks[2]!];
    expect((bt.payload[3] as Float32Array)[1]).toBe(1234.5);
    expect(Array.from(bt.payload[7] as Float32Array)).toEqual([100, 101, 102, 103]);
    expect(Array.from(bv.payload[0] as Float32Array)).toEqual(Array.from(vals.payload[0] as Float32Array));
    expect(Array.from(bv.payload[0] as Float32Array)).toEqual(Array.from(values.row(vals.ids[1]!)));
    // An all-Full block whose payload was never read: a kind changed alone still counts.
    const fresh = (await model.prove(x2)).proof;
    fresh.layers[0]!.blocks[1]!.kinds[2] = RowKind.Held;
    const lazy = encodeProof(fresh); // before anything reads the payload
    expect(Buffer.from(lazy).equals(Buffer.from(encodeProof(copyOf(fresh))))).toBe(true);
    expect(lazy.length).toBe(plain.bytes.length - 4 * 4);
  });
});
