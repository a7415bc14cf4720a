export { SparseTensor } from './sparse-tensor.js';
export type {
  BatchSearchOptions,
  BatchSearchResult,
  CheckpointOptions,
  CreateFileOptions,
  CreateOptions,
  OpenFileOptions,
  SaveFileOptions,
  TensorFileInfo,
  FromArrayOptions,
  HnswInfo,
  HnswOptions,
  Metric,
  PatternProof,
  SearchOptions,
  SearchResult,
} from './sparse-tensor.js';
export { simdInfo } from './simd.js';
export type { SimdInfo, SimdLevel } from './simd.js';
export {
  DetachedBufferError,
  FormatError,
  GhostTensorError,
  InvalidArgumentError,
  NativeError,
  NonFiniteError,
  OutOfRangeError,
  P2PError,
  ProofError,
  RemoteError,
  StorageError,
  TensorBusyError,
  UnsupportedError,
} from './errors.js';
export type { FormatFailure, GhostTensorErrorCode, P2PFailure, ProofFailure, StorageFailure } from './errors.js';
export { HASH_SCHEME, checkProof, loadVerifier, multiproofSize, rootOf, verify } from './verify.js';
export type { MerkleHasher, Verifier } from './verify.js';
export { ProductKeyIndex, combineProductKeys } from './product-keys.js';
export type { ProductKeyBatchResult, ProductKeyResult } from './product-keys.js';
export { DenseAdam, SparseAdam, SparseSGD } from './optim.js';
export type { AdamOptions, OptimizerInfo, RowState, RowsSnapshot, SgdOptions, SparseGrad } from './optim.js';
export { Embedding, HopfieldLookup } from './layers.js';
export type { HopfieldContext, HopfieldForward, HopfieldGradients, HopfieldLookupOptions, Similarity } from './layers.js';
export { Model } from './model.js';
export { NO_KEY, Projection, SparseSelfAttention } from './attention.js';
export type { AttentionContext, AttentionForward, AttentionGradients, ProjectionContext, ProjectionOptions, SparseSelfAttentionOptions } from './attention.js';
export type { ModelLayer, ProveOptions, ProvedForward, ProvedUpdate } from './model.js';
export {
  CANONICAL_VERSION,
  DEFAULT_VERIFIER_LIMITS,
  GHOST_FORMAT_VERSION,
  PROOF_FORMAT_VERSION,
  PatternCache,
  decodeGhost,
  decodeProof,
  encodeGhost,
  encodeProof,
  ghostDigest,
  pinGhost,
  verifierLimits,
  verifyForward,
  verifyUpdate,
} from './verify.js';
export type { ForwardProof, GhostManifest, GhostProof, PinnedGhost, UpdateProof, VerifiedForward, VerifiedUpdate, VerifierLimits } from './verify.js';
export { ProverClient, ProverServer } from './serve/index.js';
export type { CallOptions, ForwardInput, ProverClientOptions, ProverServerOptions, RequestLogEntry, ServedForward, ServedStep, ServerLogOption, ServerStats, WireGrad } from './serve/index.js';
