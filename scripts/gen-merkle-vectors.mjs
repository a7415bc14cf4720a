// Writes docs/test-vectors/merkle-v1.json from the native prover, cross-checked with
// the TypeScript verifier. Run after a build: node scripts/gen-merkle-vectors.mjs
import { writeFileSync } from 'node:fs';

import { SparseTensor } from '../dist/index.js';
import { f32le, loadVerifier, rootOf } from '../dist/verify/index.js';

const hex = (u) => Buffer.from(u).toString('hex');
const V = await loadVerifier();
const H = V.hasher;

// Dyadic values: exact in f32 and in decimal JSON.
const value = (i, j) => ((i * 7 + j * 3) % 17) * 0.25 - 2;

const vectors = [];
const negatives = [];
for (const [n, dim, idSets] of [
  [1, 1, [[0]]],
  [2, 2, [[0], [1], [0, 1]]],
  [3, 4, [[2], [0, 2], [1]]],
  [5, 3, [[4], [0, 3], [1, 2, 4]]],
  [8, 2, [[5], [0, 7], [2, 3, 6]]],
  [13, 1, [[12], [0], [0, 6, 7], [3, 8, 9, 12]]],
]) {
  const patterns = Array.from({ length: n }, (_, i) => Array.from({ length: dim }, (_, j) => value(i, j)));
  const data = Float32Array.from(patterns.flat());
  const t = SparseTensor.fromArray(data, dim);
  const root = t.commitSync();
  if (hex(root) !== hex(rootOf(H, data, dim))) throw new Error('native and TypeScript roots differ');
  const bytes = f32le(data);
  const proofs = idSets.map((ids) => {
    const p = t.prove(ids);
    V.check(root, n, p.ids, p.leaves, p.proof);
    const hashes = [];
    for (let i = 0; i < p.proof.length; i += 32) hashes.push(hex(p.proof.subarray(i, i + 32)));
    return { ids: Array.from(p.ids), proof: hashes };
  });
  vectors.push({
    n,
    dim,
    patterns,
    leafBytes: patterns.map((_, i) => hex(bytes.subarray(i * dim * 4, (i + 1) * dim * 4))),
    leafHashes: patterns.map((_, i) => hex(H.hashLeaf(bytes.subarray(i * dim * 4, (i + 1) * dim * 4)))),
    root: hex(root),
    proofs,
  });
}

// Negative cases on the N = 13 vector: each must be rejected, for the reason given.
{
  const v = vectors[vectors.length - 1];
  const good = v.proofs[3];
  const leaves = (ids) => ids.map((i) => v.leafBytes[i]).join('');
  const base = { vector: vectors.length - 1, n: v.n, root: v.root, ids: good.ids, leaves: leaves(good.ids), proof: good.proof };
  const flip = (h) => (h.slice(0, 2) === '00' ? '01' : '00') + h.slice(2);
  negatives.push(
    { ...base, name: 'a flipped bit in a proof hash', proof: [flip(good.proof[0]), ...good.proof.slice(1)], reason: 'ROOT_MISMATCH' },
    { ...base, name: 'a changed leaf byte', leaves: flip(base.leaves), reason: 'ROOT_MISMATCH' },
    { ...base, name: 'one proof hash missing', proof: good.proof.slice(1), reason: 'PROOF_LENGTH' },
    { ...base, name: 'an extra proof hash', proof: [...good.proof, good.proof[0]], reason: 'PROOF_LENGTH' },
    { ...base, name: 'ids not sorted', ids: [good.ids[1], good.ids[0], ...good.ids.slice(2)], reason: 'IDS_NOT_SORTED' },
    { ...base, name: 'a repeated id', ids: [good.ids[0], good.ids[0], ...good.ids.slice(2)], reason: 'IDS_NOT_SORTED' },
    { ...base, name: 'an id out of range', ids: [...good.ids.slice(0, -1), v.n], reason: 'ID_OUT_OF_RANGE' },
    { ...base, name: 'a wrong N (one more)', n: v.n + 1, reason: 'PROOF_LENGTH' },
    // For N = 9..16 a proof for id 0 has the same shape (4 hashes): only the root binding of N catches it.
    { ...base, name: 'a wrong N with the same proof shape', n: 14, ids: [0], leaves: leaves([0]), proof: v.proofs[1].proof, reason: 'ROOT_MISMATCH' },
    { ...base, name: 'two leaves swapped', leaves: leaves([good.ids[1], good.ids[0], ...good.ids.slice(2)]), reason: 'ROOT_MISMATCH' },
    { ...base, name: 'no ids', ids: [], leaves: '', proof: [], reason: 'EMPTY' },
    { ...base, name: 'leaf bytes not a whole number of f32 per id', leaves: base.leaves.slice(0, -2), reason: 'LEAF_LENGTH' },
  );
  for (const neg of negatives) {
    let reason = 'accepted';
    try {
      V.check(Buffer.from(neg.root, 'hex'), neg.n, neg.ids, Buffer.from(neg.leaves, 'hex'), Buffer.from(neg.proof.join(''), 'hex'));
    } catch (e) {
      reason = e.reason;
    }
    if (reason !== neg.reason) throw new Error(`negative case "${neg.name}": got ${reason}, expected ${neg.reason}`);
  }
}

const out = {
  scheme: 'ghost-tensor/merkle/v1',
  note: 'See docs/hash-scheme.md. Hex strings are lowercase; leafBytes are the patterns as little-endian f32.',
  keys: { leaf: hex(H.keys.leaf), node: hex(H.keys.node), root: hex(H.keys.root) },
  vectors,
  negatives,
};
writeFileSync(new URL('../docs/test-vectors/merkle-v1.json', import.meta.url), JSON.stringify(out, null, 1) + '\n');
console.log(`wrote ${vectors.length} vectors and ${negatives.length} negative cases`);
