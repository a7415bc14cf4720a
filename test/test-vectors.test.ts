import { readFileSync } from 'node:fs';

import { beforeAll, describe, expect, it } from 'vitest';

import { native } from '../lib/tensor/native.js';
import { ProofError, loadVerifier, rootOf, type Verifier } from '../lib/verify/index.js';

interface Vector {
  n: number;
  dim: number;
  patterns: number[][];
  leafBytes: string[];
  leafHashes: string[];
  root: string;
  proofs: { ids: number[]; proof: string[] }[];
}
interface Negative {
  name: string;
  n: number;
  root: string;
  ids: number[];
  leaves: string;
  proof: string[];
  reason: string;
}
const file = JSON.parse(readFileSync(new URL('../docs/test-vectors/merkle-v1.json', import.meta.url), 'utf8')) as {
  scheme: string;
  keys: { leaf: string; node: string; root: string };
  vectors: Vector[];
  negatives: Negative[];
};

const hex = (u: Uint8Array): string => Buffer.from(u).toString('hex');
const bytes = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

let V: Verifier;
beforeAll(async () => {
  V = await loadVerifier();
});

describe('shipped test vectors (docs/test-vectors/merkle-v1.json)', () => {
  it('keys are BLAKE3 of the documented ASCII strings, in both implementations', () => {
    expect(file.scheme).toBe('ghost-tensor/merkle/v1');
    expect(hex(V.hasher.keys.leaf)).toBe(file.keys.leaf);
    expect(hex(native().blake3(new TextEncoder().encode('ghost-tensor/merkle/v1/node')))).toBe(file.keys.node);
    const k = native().merkleKeys();
    expect([hex(k.leaf), hex(k.node), hex(k.root)]).toEqual([file.keys.leaf, file.keys.node, file.keys.root]);
  });

  it('every vector: leaf bytes, leaf hashes and root match in TypeScript and native code', () => {
    expect(file.vectors.length).toBeGreaterThanOrEqual(6);
    for (const v of file.vectors) {
      const data = Float32Array.from(v.patterns.flat());
      expect(hex(new Uint8Array(data.buffer))).toBe(v.leafBytes.join(''));
      v.leafBytes.forEach((lb, i) => expect(hex(V.hasher.hashLeaf(bytes(lb)))).toBe(v.leafHashes[i]));
      expect(hex(rootOf(V.hasher, data, v.dim))).toBe(v.root);
      expect(hex(native().merkleRoot(data, v.dim))).toBe(v.root);
    }
  });

  it('every proof verifies in both implementations', () => {
    for (const v of file.vectors) {
      for (const p of v.proofs) {
        const leaves = Float32Array.from(p.ids.flatMap((i) => v.patterns[i]!));
        const proof = bytes(p.proof.join(''));
        expect(V.verify(bytes(v.root), v.n, p.ids, leaves, proof)).toBe(true);
        expect(native().merkleVerify(bytes(v.root), v.n, v.dim, Uint32Array.from(p.ids), leaves, proof)).toBe(true);
      }
    }
  });

  it('every negative case is rejected by both, the TypeScript verifier for the stated reason', () => {
    expect(file.negatives.length).toBeGreaterThanOrEqual(10);
    for (const neg of file.negatives) {
      const root = bytes(neg.root), leaves = bytes(neg.leaves), proof = bytes(neg.proof.join(''));
      let reason = 'accepted';
      try {
        V.check(root, neg.n, neg.ids, leaves, proof);
      } catch (e) {
        expect(e).toBeInstanceOf(ProofError);
        reason = (e as ProofError).reason;
      }
      expect(reason, neg.name).toBe(neg.reason);
      const dim = neg.ids.length > 0 ? leaves.length / 4 / neg.ids.length : 1;
      let nativeAccepted = false;
      try {
        if (Number.isInteger(dim)) {
          const f = new Float32Array(leaves.buffer.slice(0, Math.floor(leaves.length / 4) * 4));
          nativeAccepted = native().merkleVerify(root, neg.n, dim, Uint32Array.from(neg.ids), f, proof);
        }
      } catch {
        nativeAccepted = false;
      }
      expect(nativeAccepted, neg.name).toBe(false);
    }
  });
});
