import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';

import { InvalidArgumentError, OutOfRangeError, ProofError, SparseTensor, TensorBusyError } from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { f32le, loadVerifier, multiproofSize, rootOf, type MerkleHasher, type Verifier } from '../lib/verify/index.js';
import { Rng } from './helpers/rng.js';

let V: Verifier;
let H: MerkleHasher;
beforeAll(async () => {
  V = await loadVerifier();
  H = V.hasher;
});

const hex = (u: Uint8Array): string => Buffer.from(u).toString('hex');

/** RFC 9162 section 2.1.1 MTH, written recursively: an independent reference for the tree shape. */
function mth(leaves: Uint8Array[]): Uint8Array {
  if (leaves.length === 1) return leaves[0]!;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return H.hashNode(mth(leaves.slice(0, k)), mth(leaves.slice(k)));
}
function refRoot(data: Float32Array, d: number): Uint8Array {
  const n = data.length / d;
  const bytes = f32le(data);
  const leaves = Array.from({ length: n }, (_, i) => H.hashLeaf(bytes.subarray(i * d * 4, (i + 1) * d * 4)));
  return H.commitRoot(n, d, n === 0 ? new Uint8Array(32) : mth(leaves));
}

function allRows(t: SparseTensor): Float32Array {
  return t.gather(Array.from({ length: t.size }, (_, i) => i));
}

/** Native verifier as a boolean; malformed input (a typed throw) counts as a rejection. */
function nativeAccepts(root: Uint8Array, n: number, d: number, ids: Uint32Array, leaves: Float32Array, proof: Uint8Array): boolean {
  try {
    return native().merkleVerify(root, n, d, ids, leaves, proof);
  } catch (e) {
    expect((e as { code?: string }).code).toMatch(/^ERR_GT_/);
    return false;
  }
}

describe('hash scheme v1: roots', () => {
  it('native build, TypeScript level-wise build and a recursive RFC 9162 reference agree for every N up to 70', () => {
    const rng = new Rng(5);
    for (let n = 0; n <= 70; n++) {
      for (const d of [1, 3, 16, 64, 300]) {
        if (n > 20 && d === 300) continue;
        const data = rng.f32(n * d);
        const want = hex(refRoot(data, d));
        expect(hex(rootOf(H, data, d))).toBe(want);
        expect(hex(native().merkleRoot(data, d))).toBe(want);
        expect(hex(native().merkleRoot(data, d, 1))).toBe(want);
      }
    }
  });

  it('large N: native multi-threaded build equals the single-threaded build and the TypeScript build', () => {
    const rng = new Rng(6);
    for (const [n, d] of [[65_537, 16], [100_000, 4], [4096, 256]] as const) {
      const data = rng.f32(n * d);
      const r = hex(native().merkleRoot(data, d, 2));
      expect(hex(native().merkleRoot(data, d, 1))).toBe(r);
      expect(hex(rootOf(H, data, d))).toBe(r);
    }
  });

  it('the root binds N and d: the same bytes as N or d different give a different root', () => {
    const data = new Rng(8).f32(64);
    const roots = new Set([hex(native().merkleRoot(data, 16)), hex(native().merkleRoot(data, 8)), hex(native().merkleRoot(data, 32))]);
    expect(roots.size).toBe(3);
    // [A,B,C] and [A,B,C,C] differ (no duplicated last leaf).
    const abc = new Rng(9).f32(3 * 4);
    const abcc = new Float32Array(16);
    abcc.set(abc);
    abcc.set(abc.subarray(8, 12), 12);
    expect(hex(native().merkleRoot(abc, 4))).not.toBe(hex(native().merkleRoot(abcc, 4)));
  });
});

describe('SparseTensor commitment', () => {
  it('root equals a fresh rebuild after thousands of random sparse writes and appends', async () => {
    const rng = new Rng(77);
    for (const d of [3, 16]) {
      const t = SparseTensor.fromArray(rng.f32(5 * d), d);
      expect(t.committed).toBe(false);
      const r0 = await t.commit();
      expect(hex(r0)).toBe(hex(native().merkleRoot(allRows(t), d)));
      for (let step = 0; step < 2500; step++) {
        const op = rng.int(0, 9);
        const n = t.size;
        if (op === 0) {
          t.append(rng.f32(d * rng.int(1, 9))); // crosses every power of two on the way
        } else if (op <= 4) {
          const ids = Array.from({ length: rng.int(1, 8) }, () => rng.int(0, n - 1));
          t.add(ids, rng.f32(ids.length * d, 0.01));
        } else {
          const ids = [...new Set(Array.from({ length: rng.int(1, 8) }, () => rng.int(0, n - 1)))];
          t.scatter(ids, rng.f32(ids.length * d));
        }
        if (step % 97 === 0 || step === 2499) {
          const rows = allRows(t);
          expect(hex(t.root())).toBe(hex(native().merkleRoot(rows, d)));
          if (step % 485 === 0) expect(hex(t.root())).toBe(hex(refRoot(rows, d)));
        }
      }
      expect(t.size).toBeGreaterThan(200);
    }
  });

  it('commitSync equals commit; an empty tensor commits to the N = 0 root and then grows', async () => {
    const e = SparseTensor.create(4);
    expect(hex(e.commitSync())).toBe(hex(H.commitRoot(0, 4, new Uint8Array(32))));
    e.append(new Float32Array([1, 2, 3, 4]));
    expect(hex(e.root())).toBe(hex(refRoot(new Float32Array([1, 2, 3, 4]), 4)));
    const data = new Rng(1).f32(100 * 8);
    const a = SparseTensor.fromArray(data, 8), b = SparseTensor.fromArray(data, 8);
    expect(hex(await a.commit({ threads: 2 }))).toBe(hex(b.commitSync({ threads: 1 })));
  });

  it('refuses writes while the asynchronous build runs; root and prove need a commitment', async () => {
    const t = SparseTensor.fromArray(new Rng(2).f32(50_000 * 16), 16);
    expect(() => t.root()).toThrow(InvalidArgumentError);
    expect(() => t.prove([0])).toThrow(InvalidArgumentError);
    const p = t.commit();
    expect(() => t.add([0], new Float32Array(16))).toThrow(TensorBusyError);
    await p;
    t.add([0], new Float32Array(16).fill(1));
    expect(hex(t.root())).toBe(hex(native().merkleRoot(allRows(t), 16)));
  });

  it('prove() sorts and dedups ids, and checks them', () => {
    const t = SparseTensor.fromArray(new Rng(3).f32(10 * 4), 4);
    t.commitSync();
    const p = t.prove([7, 2, 7, 0]);
    expect(Array.from(p.ids)).toEqual([0, 2, 7]);
    expect(Array.from(p.leaves)).toEqual(Array.from(t.gather([0, 2, 7])));
    expect(V.verify(p.root, p.n, p.ids, p.leaves, p.proof)).toBe(true);
    expect(() => t.prove([10])).toThrow(OutOfRangeError);
    expect(() => t.prove([])).toThrow(InvalidArgumentError);
  });
});

function honest(n: number, d: number, ids: number[], seed: number) {
  const t = SparseTensor.fromArray(new Rng(seed).f32(n * d), d);
  t.commitSync();
  return t.prove(ids);
}

describe('multiproofs: native and TypeScript verifiers', () => {
  it('agree and accept honest proofs for random N (1..1e5, powers of two and not) and id sets (k = 1..N)', () => {
    const rng = new Rng(11);
    const sizes = [1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 32, 33, 100, 1023, 1024, 1025, 4096, 65_536, 99_999, 100_000];
    for (const n of sizes) {
      const d = n > 10_000 ? 2 : 5;
      const t = SparseTensor.fromArray(rng.f32(n * d), d);
      t.commitSync();
      const ks = [1, 2, 7, 64, rng.int(1, Math.min(n, 300)), n <= 1025 ? n : 1].filter((k) => k <= n);
      for (const k of new Set(ks)) {
        const ids = new Set<number>();
        while (ids.size < k) ids.add(rng.int(0, n - 1));
        const p = t.prove([...ids]);
        expect(p.proof.length / 32).toBe(multiproofSize(n, p.ids));
        expect(V.verify(p.root, p.n, p.ids, p.leaves, p.proof)).toBe(true);
        expect(native().merkleVerify(p.root, p.n, d, p.ids, p.leaves, p.proof)).toBe(true);
        if (k === n) expect(p.proof.length).toBe(0); // every leaf revealed: nothing to add
      }
    }
  });

  it('a compact multiproof is never larger than k single proofs, and far smaller for clustered ids', () => {
    const n = 1 << 12, d = 2;
    const t = SparseTensor.fromArray(new Rng(4).f32(n * d), d);
    t.commitSync();
    const ids = Array.from({ length: 64 }, (_, i) => 1000 + i);
    const multi = t.prove(ids).proof.length;
    const singles = ids.reduce((s, id) => s + t.prove([id]).proof.length, 0);
    expect(singles).toBe(64 * 12 * 32);
    expect(multi).toBeLessThan(singles / 8);
  });

  it('rejects every single-bit flip of a proof hash, a leaf, an id or N (exhaustive, both verifiers)', () => {
    for (const [n, d, ids] of [[13, 2, [2, 3, 9]], [8, 1, [5]], [33, 1, [0, 31, 32]]] as const) {
      const p = honest(n, d, [...ids], n);
      const leafBytes = f32le(p.leaves).slice();
      expect(V.verify(p.root, n, p.ids, leafBytes, p.proof)).toBe(true);
      let checked = 0;
      for (let bit = 0; bit < p.proof.length * 8; bit++) {
        const q = p.proof.slice();
        q[bit >> 3]! ^= 1 << (bit & 7);
        expect(V.verify(p.root, n, p.ids, leafBytes, q)).toBe(false);
        expect(nativeAccepts(p.root, n, d, p.ids, p.leaves, q)).toBe(false);
        checked++;
      }
      for (let bit = 0; bit < leafBytes.length * 8; bit++) {
        const l = leafBytes.slice();
        l[bit >> 3]! ^= 1 << (bit & 7);
        expect(V.verify(p.root, n, p.ids, l, p.proof)).toBe(false);
        expect(nativeAccepts(p.root, n, d, p.ids, new Float32Array(l.buffer), p.proof)).toBe(false);
        checked++;
      }
      for (let t = 0; t < p.ids.length; t++) {
        for (let bit = 0; bit < 32; bit++) {
          const i2 = p.ids.slice();
          i2[t] = (i2[t]! ^ (1 << bit)) >>> 0;
          expect(V.verify(p.root, n, i2, leafBytes, p.proof)).toBe(false);
          expect(nativeAccepts(p.root, n, d, i2, p.leaves, p.proof)).toBe(false);
          checked++;
        }
      }
      for (let bit = 0; bit < 32; bit++) {
        const n2 = (n ^ (1 << bit)) >>> 0;
        expect(V.verify(p.root, n2, p.ids, leafBytes, p.proof)).toBe(false);
        expect(nativeAccepts(p.root, n2, d, p.ids, p.leaves, p.proof)).toBe(false);
        checked++;
      }
      for (let bit = 0; bit < 256; bit++) {
        const r = p.root.slice();
        r[bit >> 3]! ^= 1 << (bit & 7);
        expect(V.verify(r, n, p.ids, leafBytes, p.proof)).toBe(false);
        checked++;
      }
      expect(checked).toBeGreaterThan(256);
    }
  });

  it('rejects truncated, padded, reordered and duplicated inputs with a typed reason', () => {
    const p = honest(100, 3, [5, 6, 40, 77], 1);
    const lb = f32le(p.leaves).slice();
    const reason = (f: () => void): string => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(ProofError);
        return (e as ProofError).reason;
      }
      return 'accepted';
    };
    const chk = (ids: Uint32Array | number[], leaves: Uint8Array, proof: Uint8Array, n = 100, root = p.root) =>
      reason(() => V.check(root, n, ids, leaves, proof));
    expect(chk(p.ids, lb, p.proof)).toBe('accepted');
    expect(chk(p.ids, lb, p.proof.subarray(0, p.proof.length - 32))).toBe('PROOF_LENGTH');
    expect(chk(p.ids, lb, p.proof.subarray(0, p.proof.length - 1))).toBe('PROOF_LENGTH');
    expect(chk(p.ids, lb, new Uint8Array([...p.proof, ...new Uint8Array(32)]))).toBe('PROOF_LENGTH');
    expect(chk(p.ids, lb, new Uint8Array([...p.proof, ...p.proof.subarray(0, 32)]))).toBe('PROOF_LENGTH');
    expect(chk(p.ids, lb.subarray(0, lb.length - 12), p.proof)).toBe('LEAF_LENGTH');
    expect(chk(p.ids, new Uint8Array([...lb, 0, 0, 0, 0]), p.proof)).toBe('LEAF_LENGTH');
    expect(chk([6, 5, 40, 77], lb, p.proof)).toBe('IDS_NOT_SORTED');
    expect(chk([5, 5, 40, 77], lb, p.proof)).toBe('IDS_NOT_SORTED');
    expect(chk([5, 6, 40, 100], lb, p.proof)).toBe('ID_OUT_OF_RANGE');
    expect(chk([], new Uint8Array(0), new Uint8Array(0))).toBe('EMPTY');
    expect(chk(p.ids, lb, p.proof, 0)).toBe('BAD_N');
    expect(chk(p.ids, lb, p.proof, 2 ** 32)).toBe('BAD_N');
    expect(chk(p.ids, lb, p.proof, 1.5)).toBe('BAD_N');
    expect(chk(p.ids, lb, p.proof, 100, p.root.subarray(0, 31))).toBe('BAD_ROOT');
    // Swapping two revealed leaves (or two proof hashes) is a root mismatch.
    const swapped = new Uint8Array(lb);
    swapped.set(lb.subarray(0, 12), 12);
    swapped.set(lb.subarray(12, 24), 0);
    expect(chk(p.ids, swapped, p.proof)).toBe('ROOT_MISMATCH');
    if (p.proof.length >= 64) {
      const q = p.proof.slice();
      q.set(p.proof.subarray(0, 32), 32);
      q.set(p.proof.subarray(32, 64), 0);
      expect(chk(p.ids, lb, q)).toBe('ROOT_MISMATCH');
    }
  });

  it('no second preimage across levels: inner-node bytes presented as a leaf of a smaller tree are rejected', () => {
    // N = 4, d = 8: each leaf is 32 bytes. Claim N = 2 with leaf 0 = the 64 bytes of
    // (hash(leaf0) || hash(leaf1)) read as 16 floats: domain separation and the bound
    // N and d make this fail (OpenZeppelin CVE-2023-34459 class of attack).
    const data = new Rng(12).f32(4 * 8);
    const t = SparseTensor.fromArray(data, 8);
    const root = t.commitSync();
    const b = f32le(data);
    const l0 = H.hashLeaf(b.subarray(0, 32)), l1 = H.hashLeaf(b.subarray(32, 64));
    const l2 = H.hashLeaf(b.subarray(64, 96)), l3 = H.hashLeaf(b.subarray(96, 128));
    const fakeLeaf = new Uint8Array([...l0, ...l1]);
    expect(V.verify(root, 2, [0], fakeLeaf, H.hashNode(l2, l3))).toBe(false);
    expect(V.verify(root, 4, [0], fakeLeaf, new Uint8Array(0))).toBe(false);
    // And the top hash itself is not accepted as a proof of nothing.
    expect(V.verify(root, 4, [], new Uint8Array(0), H.hashNode(H.hashNode(l0, l1), H.hashNode(l2, l3)))).toBe(false);
  });

  it('property: honest proofs verify in both; any mutated byte of leaves or proof is rejected by both', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3000 }),
        fc.integer({ min: 1, max: 9 }),
        fc.array(fc.nat(), { minLength: 1, maxLength: 20 }),
        fc.nat(),
        fc.integer({ min: 1, max: 255 }),
        (n, d, raw, where, xor) => {
          const p = honest(n, d, raw.map((x) => x % n), n * 31 + d);
          const lb = f32le(p.leaves).slice();
          expect(V.verify(p.root, n, p.ids, lb, p.proof)).toBe(true);
          expect(native().merkleVerify(p.root, n, d, p.ids, p.leaves, p.proof)).toBe(true);
          const total = lb.length + p.proof.length;
          const at = where % total;
          const l2 = lb.slice(), q2 = p.proof.slice();
          if (at < lb.length) l2[at]! ^= xor;
          else q2[at - lb.length]! ^= xor;
          expect(V.verify(p.root, n, p.ids, l2, q2)).toBe(false);
          expect(nativeAccepts(p.root, n, d, p.ids, new Float32Array(l2.buffer), q2)).toBe(false);
        },
      ),
      { numRuns: 300, seed: 20261125 },
    );
  });
});
