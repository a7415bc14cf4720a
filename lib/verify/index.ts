/**
 * `ghost-tensor/verify`: everything a verifier needs, with no native addon, so a
 * browser or a light client can check proofs against a trusted root.
 */
import { InvalidArgumentError, ProofError } from '../shared/errors.js';
import { checkMultiproof, f32le, loadHasher, type MerkleHasher } from './merkle.js';

export { GhostTensorError, InvalidArgumentError, ProofError } from '../shared/errors.js';
export type { GhostTensorErrorCode, ProofFailure } from '../shared/errors.js';
export { HASH_SCHEME, MAX_LEAVES, f32le, loadHasher, multiproofSize, rootOf } from './merkle.js';
export type { MerkleHasher } from './merkle.js';

function leafBytesOf(leaves: Uint8Array | Float32Array): Uint8Array {
  if (leaves instanceof Float32Array) return f32le(leaves);
  if (leaves instanceof Uint8Array) return leaves;
  throw new InvalidArgumentError('leafBytes must be a Uint8Array or a Float32Array');
}

/**
 * Throws ProofError (with a `reason`) unless `leafBytes` are the patterns at `ids` of
 * the tensor of N patterns committed by `root`, as shown by the compact multiproof
 * `proof`. `leafBytes` are the patterns concatenated (little-endian f32 bytes, or a
 * Float32Array); their dimension is leafBytes / ids.length / 4 and is bound by the root.
 */
export async function checkProof(
  root: Uint8Array,
  n: number,
  ids: Uint32Array | readonly number[],
  leafBytes: Uint8Array | Float32Array,
  proof: Uint8Array,
): Promise<void> {
  checkMultiproof(await loadHasher(), root, n, ids, leafBytesOf(leafBytes), proof);
}

/** checkProof as a boolean: true only when the proof holds. Non-proof errors (wrong argument types) still throw. */
export async function verify(
  root: Uint8Array,
  n: number,
  ids: Uint32Array | readonly number[],
  leafBytes: Uint8Array | Float32Array,
  proof: Uint8Array,
): Promise<boolean> {
  try {
    await checkProof(root, n, ids, leafBytes, proof);
    return true;
  } catch (err) {
    if (err instanceof ProofError) return false;
    throw err;
  }
}

/** A synchronous verifier once the hasher is loaded (for hot loops). */
export interface Verifier {
  readonly hasher: MerkleHasher;
  check(root: Uint8Array, n: number, ids: Uint32Array | readonly number[], leafBytes: Uint8Array | Float32Array, proof: Uint8Array): void;
  verify(root: Uint8Array, n: number, ids: Uint32Array | readonly number[], leafBytes: Uint8Array | Float32Array, proof: Uint8Array): boolean;
}

export async function loadVerifier(): Promise<Verifier> {
  const hasher = await loadHasher();
  const check: Verifier['check'] = (root, n, ids, leaves, proof) =>
    checkMultiproof(hasher, root, n, ids, leafBytesOf(leaves), proof);
  return {
    hasher,
    check,
    verify: (root, n, ids, leaves, proof) => {
      try {
        check(root, n, ids, leaves, proof);
        return true;
      } catch (err) {
        if (err instanceof ProofError) return false;
        throw err;
      }
    },
  };
}

// Ghost files, proofs and their verification (docs/proof-format.md).
export { FormatError } from '../shared/errors.js';
export type { FormatFailure } from '../shared/errors.js';
export { CANONICAL_VERSION } from './canonical.js';
export type { CanonicalOptimizer, CanonicalRowState, CanonicalSimilarity } from './canonical.js';
export { GHOST_FORMAT_VERSION, GHOST_LIMITS, attentionWidth, decodeGhost, encodeGhost, ghostDigest, ghostToJSON, withRoot } from './ghost-file.js';
export type { GhostAttentionLayer, GhostEmbeddingLayer, GhostHopfieldLayer, GhostIndex, GhostLayer, GhostManifest, GhostProjection, GhostTensor } from './ghost-file.js';
export { DEFAULT_VERIFIER_LIMITS, PROOF_FORMAT_VERSION, PROOF_HELD_TABLES_VERSION, PROOF_LIMITS, PatternCache, VerifyBudget, verifierLimits, RowKind, StateKind, applyDelta, attentionReads, decodeProof, encodeDelta, encodeProof } from './proof-format.js';
export type { DecodeOptions, ForwardProof, GhostProof, LayerEvidence, HeldState, HeldTable, PatternBlock, ProofInput, StateBlock, StepLayer, StepProof, StepSequence, UpdateProof, VerifierLimits } from './proof-format.js';
export { attentionCanonical, pinGhost, verifyForward, verifyUpdate } from './proof-verify.js';
export type { PinnedGhost, VerifiedForward, VerifiedUpdate, VerifyCost, VerifyOptions } from './proof-verify.js';
export { sampleToken, verifyGeneration } from './generation.js';
export { verifyTrainStep } from './step.js';
export type { VerifiedStep } from './step.js';
export { GHOST_TRAINING_VERSION } from './ghost-file.js';
export type { GhostSchedule, GhostTrainedTensor, GhostTraining, StepTargets } from './training.js';
export type { GenerationRecord, SamplingOptions } from './generation.js';
