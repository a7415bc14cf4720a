/**
 * The hash scheme v1 (docs/hash-scheme.md) and the compact-multiproof verifier, in
 * TypeScript over hash-wasm's BLAKE3 (WebAssembly). Loads no native addon: usable in
 * a browser or a light client.
 */
import { createBLAKE3, type IHasher } from 'hash-wasm';

import { bytesEqual } from '../shared/bytes.js';
import { InvalidArgumentError, ProofError } from '../shared/errors.js';

export const HASH_SCHEME = 'ghost-tensor/merkle/v1';
/** Largest N: ids are uint32. */
export const MAX_LEAVES = 2 ** 32 - 1;

const te = new TextEncoder();

export interface MerkleHasher {
  /** K_LEAF, K_NODE, K_ROOT: BLAKE3 of the ASCII strings `ghost-tensor/merkle/v1/{leaf,node,root}`. */
  readonly keys: { leaf: Uint8Array; node: Uint8Array; root: Uint8Array };
  hashLeaf(bytes: Uint8Array): Uint8Array;
  hashNode(left: Uint8Array, right: Uint8Array): Uint8Array;
  /** BLAKE3-keyed(K_ROOT, u64le(N) || u32le(d) || top). */
  commitRoot(n: number, dim: number, top: Uint8Array): Uint8Array;
  /** Plain (unkeyed) BLAKE3-256: the digest of a Ghost file. */
  hash(bytes: Uint8Array): Uint8Array;
}

let hasherPromise: Promise<MerkleHasher> | undefined;

/** The hash functions of scheme v1 (compiles the WebAssembly module once). */
export function loadHasher(): Promise<MerkleHasher> {
  hasherPromise ??= (async () => {
    const plain = await createBLAKE3(256);
    const digest = (h: IHasher, ...parts: Uint8Array[]): Uint8Array => {
      h.init();
      for (const p of parts) h.update(p);
      return h.digest('binary');
    };
    const keys = {
      leaf: digest(plain, te.encode(`${HASH_SCHEME}/leaf`)),
      node: digest(plain, te.encode(`${HASH_SCHEME}/node`)),
      root: digest(plain, te.encode(`${HASH_SCHEME}/root`)),
    };
    const [leaf, node, root] = await Promise.all([
      createBLAKE3(256, keys.leaf),
      createBLAKE3(256, keys.node),
      createBLAKE3(256, keys.root),
    ]);
    const pair = new Uint8Array(64);
    return {
      keys,
      hash: (bytes) => digest(plain, bytes),
      hashLeaf: (bytes) => digest(leaf, bytes),
      // One update of the 64 bytes l || r (the same BLAKE3 input as two updates; each
      // hash-wasm call has a fixed cost that dominates a 64-byte hash).
      hashNode: (l, r) => {
        if (l.length !== 32 || r.length !== 32) return digest(node, l, r);
        pair.set(l, 0);
        pair.set(r, 32);
        return digest(node, pair);
      },
      commitRoot: (n, dim, top) => {
        const head = new Uint8Array(12);
        const dv = new DataView(head.buffer);
        dv.setUint32(0, n % 2 ** 32, true);
        dv.setUint32(4, Math.floor(n / 2 ** 32), true);
        dv.setUint32(8, dim, true);
        return digest(root, head, top);
      },
    };
  })();
  return hasherPromise;
}

/** Little-endian bytes of f32 values (a copy on big-endian hosts, a view otherwise). */
export function f32le(values: Float32Array): Uint8Array {
  const le = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  if (le) return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  const out = new Uint8Array(values.length * 4);
  const dv = new DataView(out.buffer);
  values.forEach((v, i) => dv.setFloat32(i * 4, v, true));
  return out;
}

/** Root of rows (concatenated, dim each) by a full rebuild: the reference the tests use. */
export function rootOf(h: MerkleHasher, data: Float32Array, dim: number): Uint8Array {
  const n = data.length / dim;
  if (!Number.isInteger(n)) throw new InvalidArgumentError('data length is not a multiple of dim');
  return rootOfBytes(h, f32le(data), n, dim);
}

/** Root of n >= 1 leaves of equal length (a multiple of 4 bytes; the root binds length / 4 as d) by a full rebuild. */
export function rootOfLeaves(h: MerkleHasher, bytes: Uint8Array, n: number): Uint8Array {
  const len = bytes.length / n;
  if (!Number.isInteger(n) || n < 1 || !Number.isInteger(len) || len % 4 !== 0) throw new InvalidArgumentError('leaf bytes do not split into n leaves of whole f32s');
  return rootOfBytes(h, bytes, n, len / 4);
}

function rootOfBytes(h: MerkleHasher, bytes: Uint8Array, n: number, dim: number): Uint8Array {
  const len = dim * 4;
  let level: Uint8Array[] = [];
  for (let i = 0; i < n; i++) level.push(h.hashLeaf(bytes.subarray(i * len, (i + 1) * len)));
  while (level.length > 1) {
    const next: Uint8Array[] = [];
    for (let j = 0; 2 * j < level.length; j++) {
      next.push(2 * j + 1 < level.length ? h.hashNode(level[2 * j]!, level[2 * j + 1]!) : level[2 * j]!);
    }
    level = next;
  }
  return h.commitRoot(n, dim, level[0] ?? new Uint8Array(32));
}

function checkIds(n: number, ids: Uint32Array | readonly number[]): void {
  if (!Number.isInteger(n) || n < 1 || n > MAX_LEAVES) throw new ProofError('BAD_N', `N must be in 1..2^32-1, got ${n}`);
  if (ids.length === 0) throw new ProofError('EMPTY', 'ids is empty');
  let prev = -1;
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t]!;
    if (!Number.isInteger(id) || id < 0) throw new ProofError('IDS_NOT_SORTED', `ids[${t}] = ${id} is not an id`);
    if (id >= n) throw new ProofError('ID_OUT_OF_RANGE', `ids[${t}] = ${id} is out of range for N = ${n}`);
    if (id <= prev) throw new ProofError('IDS_NOT_SORTED', `ids must be strictly ascending (ids[${t}] = ${id})`);
    prev = id;
  }
}

/**
 * How many proof hashes a compact multiproof for these ids must hold, computed from
 * N and the ids alone (no hashing). Throws ProofError for malformed ids or N.
 */
export function multiproofSize(n: number, ids: Uint32Array | readonly number[]): number {
  checkIds(n, ids);
  let needed = 0;
  let cur = Array.from(ids);
  for (let width = n; width > 1; width = Math.ceil(width / 2)) {
    const next: number[] = [];
    for (let t = 0; t < cur.length; t++) {
      const i = cur[t]!;
      const s = i % 2 === 0 ? i + 1 : i - 1; // the sibling (i ^ 1 overflows int32 for ids >= 2^31)
      if (s < width) {
        if (t + 1 < cur.length && cur[t + 1] === s) t++;
        else needed++;
      }
      const p = Math.floor(i / 2);
      if (next.length === 0 || next[next.length - 1] !== p) next.push(p);
    }
    cur = next;
  }
  return needed;
}

/**
 * Checks that `leafBytes` (the revealed patterns of `ids`, concatenated, little-endian
 * f32) are the leaves at `ids` of the tree committed by `root` over N patterns, given
 * a compact multiproof (32-byte sibling hashes, concatenated). Throws ProofError
 * naming the first failed check; returns when the proof holds.
 *
 * Accepts only when the proof holds exactly the hashes needed (every one is used),
 * every leaf is consumed, exactly one node remains at the top, ids are in range,
 * sorted and unique, and the root binds N and d.
 */
export function checkMultiproof(
  h: MerkleHasher,
  root: Uint8Array,
  n: number,
  ids: Uint32Array | readonly number[],
  leafBytes: Uint8Array,
  proof: Uint8Array,
): void {
  if (!(root instanceof Uint8Array) || root.length !== 32) throw new ProofError('BAD_ROOT', 'root must be 32 bytes');
  const got = multiproofRoot(h, n, ids, leafBytes, proof);
  if (!bytesEqual(got, root)) throw new ProofError('ROOT_MISMATCH', 'the recomputed root differs from the trusted root');
}

/**
 * The root that leaves `leafBytes` at `ids` and a compact multiproof reduce to (the
 * checks of checkMultiproof but the comparison): with the old leaves it is the old root;
 * with new leaves and the same siblings, the root after those rows change (what an
 * update or step proof's verifier computes).
 */
export function multiproofRoot(
  h: MerkleHasher,
  n: number,
  ids: Uint32Array | readonly number[],
  leafBytes: Uint8Array,
  proof: Uint8Array,
): Uint8Array {
  if (!(leafBytes instanceof Uint8Array)) throw new InvalidArgumentError('leafBytes must be a Uint8Array');
  if (!(proof instanceof Uint8Array)) throw new InvalidArgumentError('proof must be a Uint8Array');
  const needed = multiproofSize(n, ids); // checks N and ids before any hashing
  const k = ids.length;
  const leafLen = leafBytes.length / k;
  if (!Number.isInteger(leafLen) || leafLen === 0 || leafLen % 4 !== 0 || leafLen / 4 > 2 ** 26) {
    throw new ProofError('LEAF_LENGTH', `${leafBytes.length} leaf bytes do not split into ${k} patterns of f32`);
  }
  if (proof.length !== needed * 32) {
    throw new ProofError('PROOF_LENGTH', `proof has ${proof.length} bytes; these ids and N need exactly ${needed * 32}`);
  }
  let cur: { i: number; h: Uint8Array }[] = [];
  for (let t = 0; t < k; t++) cur.push({ i: ids[t]!, h: h.hashLeaf(leafBytes.subarray(t * leafLen, (t + 1) * leafLen)) });
  let used = 0;
  for (let width = n; width > 1; width = Math.ceil(width / 2)) {
    const next: { i: number; h: Uint8Array }[] = [];
    for (let t = 0; t < cur.length; t++) {
      const { i, h: x } = cur[t]!;
      const s = i % 2 === 0 ? i + 1 : i - 1;
      let y: Uint8Array;
      if (s >= width) {
        y = x; // the last node of an odd level is promoted unchanged
      } else if (t + 1 < cur.length && cur[t + 1]!.i === s) {
        y = h.hashNode(x, cur[t + 1]!.h);
        t++;
      } else {
        const other = proof.subarray(used * 32, used * 32 + 32);
        used++;
        y = i % 2 === 1 ? h.hashNode(other, x) : h.hashNode(x, other);
      }
      next.push({ i: Math.floor(i / 2), h: y });
    }
    cur = next;
  }
  if (cur.length !== 1 || cur[0]!.i !== 0 || used !== needed) {
    throw new ProofError('PROOF_LENGTH', 'the proof did not reduce to exactly one root with every hash used');
  }
  return h.commitRoot(n, leafLen / 4, cur[0]!.h);
}
