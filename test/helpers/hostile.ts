/**
 * Hostile proofs that cost the verifier far more than their size (docs/proof-format.md,
 * "Verifier limits"), built by hand over hand-made Ghost files (no addon): an all-rows
 * block of held rows (2 bits a row), repeated embedding ids (B x dim floats from 4 bytes
 * an id), a long attention sequence (O(n^2) from n rows). Shared by the tests, the bench
 * (bench/verify-cost.mjs) and the fuzzer.
 */
import { ByteWriter } from '../../lib/shared/bytes.js';
import { CANONICAL_VERSION } from '../../lib/verify/canonical.js';
import { GHOST_FORMAT_VERSION, type GhostLayer, type GhostManifest, type GhostTensor } from '../../lib/verify/ghost-file.js';
import { HASH_SCHEME, loadHasher, rootOf } from '../../lib/verify/merkle.js';
import { PROOF_FORMAT_VERSION, PROOF_MAGIC } from '../../lib/verify/proof-format.js';

export function manifest(tensors: GhostTensor[], layers: GhostLayer[]): GhostManifest {
  return { formatVersion: GHOST_FORMAT_VERSION, hashScheme: HASH_SCHEME, arithmetic: CANONICAL_VERSION, tensors, layers };
}

/** The forward-proof header up to the input. */
function head(digest: Uint8Array, layers: number): ByteWriter {
  return new ByteWriter().bytes(PROOF_MAGIC).u16(PROOF_FORMAT_VERSION).u8(1).bytes(digest).u32(0).u32(layers);
}

/** An Embedding over a table of N rows of `dim` (a random root: the proofs below are refused before any hashing). */
export function embeddingGhost(n: number, dim: number): GhostManifest {
  return manifest([{ name: 'emb', dtype: 'f32', dim, n, root: new Uint8Array(32).fill(7) }], [{ op: 'embedding', table: 0, dim }]);
}

/**
 * A forward proof of one embedding layer whose `blocks` blocks each reveal all `n` rows
 * of tensor 0 as held (2 bits a row): about blocks x n / 4 bytes.
 */
export function heldRowsProof(digest: Uint8Array, n: number, dim: number, blocks: number): Uint8Array {
  const w = head(digest, 1).u8(2).u32(1).u32(0).u8(2).u8(0).u8(blocks);
  const kinds = new Uint8Array(Math.ceil(n / 4)).fill(0x55);
  if (n % 4 !== 0) kinds[kinds.length - 1] = 0x55 & ((1 << (2 * (n % 4))) - 1);
  for (let b = 0; b < blocks; b++) w.u32(0).u32(dim).u8(1).u32(n).bytes(kinds).u32(0);
  return w.u32(1).u32(1).f32(0).finish();
}

/** A one-row table (its root needs no hashes) and a proof of `ids` (all 0) through it, claiming `claim` (default: the true output). */
export async function repeatedIds(dim: number, B: number, claim?: { rows: number; cols: number; data: Float32Array }): Promise<{ ghost: GhostManifest; row: Float32Array; proof: (digest: Uint8Array) => Uint8Array }> {
  const row = Float32Array.from({ length: dim }, (_, j) => ((j * 37) % 11) / 8 - 0.5);
  const ghost = manifest([{ name: 'emb', dtype: 'f32', dim, n: 1, root: rootOf(await loadHasher(), row, dim) }], [{ op: 'embedding', table: 0, dim }]);
  const proof = (digest: Uint8Array): Uint8Array => {
    const w = head(digest, 1).u8(2).u32(B).u32s(new Uint32Array(B)).u8(2).u8(0).u8(1);
    w.u32(0).u32(dim).u8(0).u32(1).u32(0).u8(0).f32s(row).u32(0);
    if (claim) return w.u32(claim.rows).u32(claim.cols).f32s(claim.data).finish();
    const out = new Float32Array(B * dim);
    for (let b = 0; b < B; b++) out.set(row, b * dim);
    return w.u32(B).u32(dim).f32s(out).finish();
  };
  return { ghost, row, proof };
}

/** An attention layer with no projections (Q = K = V = the input): the selection is the whole cost. */
export function attentionGhost(dIn: number, heads = 1, k = 2): GhostManifest {
  return manifest([{ name: 'unused', dtype: 'f32', dim: 1, n: 1, root: new Uint8Array(32) }], [{ op: 'attention', dIn, dOut: dIn, heads, k, causal: false, scale: 1, query: null, key: null, value: null, output: null }]);
}

/** A proof of an attention layer over n input rows of dIn claiming `output` (rows x cols). */
export function attentionProof(digest: Uint8Array, x: Float32Array, n: number, dIn: number, output: { rows: number; cols: number; data: Float32Array }): Uint8Array {
  return head(digest, 1).u8(1).u32(n).u32(dIn).f32s(x).u8(3).u8(0).u8(0).u32(output.rows).u32(output.cols).f32s(output.data).finish();
}
