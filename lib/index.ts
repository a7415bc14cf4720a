export { SparseTensor } from './tensor/sparse-tensor.js';
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
  SearchOneOptions,
  SearchOptions,
  SearchResult,
} from './tensor/sparse-tensor.js';
export { simdInfo } from './tensor/simd.js';
export type { SimdInfo, SimdLevel } from './tensor/simd.js';
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
} from './shared/errors.js';
export type { FormatFailure, GhostTensorErrorCode, P2PFailure, ProofFailure, StorageFailure } from './shared/errors.js';
export { HASH_SCHEME, checkProof, loadVerifier, multiproofSize, rootOf, verify } from './verify/index.js';
export type { MerkleHasher, Verifier } from './verify/index.js';
export { ProductKeyIndex, combineProductKeys } from './tensor/product-keys.js';
export type { ProductKeyBatchResult, ProductKeyResult } from './tensor/product-keys.js';
export { DenseAdam, SparseAdam, SparseSGD } from './model/optim.js';
export type { AdamOptions, OptimizerInfo, RowState, RowsSnapshot, SgdOptions, SparseGrad } from './model/optim.js';
export { Embedding } from './model/kinds/embedding.js';
export { HopfieldLookup } from './model/kinds/hopfield.js';
export { Add } from './model/kinds/add.js';
export { Glu } from './model/kinds/glu.js';
export { PositionEmbedding } from './model/kinds/position.js';
export { ProductKeyMemory } from './model/kinds/memory.js';
export type { ProductKeyMemoryContext, ProductKeyMemoryOptions } from './model/kinds/memory.js';
export { Block, GatedMLP, GatedMemory, Residual } from './model/blocks.js';
export type { EmitLayer } from './model/blocks.js';
export { Linear } from './model/kinds/linear.js';
export type { LinearContext, LinearOptions } from './model/kinds/linear.js';
export { RMSNorm } from './model/kinds/rmsnorm.js';
export type { RMSNormContext, RMSNormOptions } from './model/kinds/rmsnorm.js';
export type { HopfieldContext, HopfieldForward, HopfieldGradients, HopfieldLookupOptions, Similarity } from './model/kinds/hopfield.js';
export { Model } from './model/model.js';
export { SearchBatcher } from './model/search-batcher.js';
export type { SearchBatcherOptions } from './model/search-batcher.js';
export { NO_KEY, Projection, SparseSelfAttention } from './model/kinds/attention.js';
export type { AttentionContext, AttentionForward, AttentionGradients, ProjectionContext, ProjectionOptions, SparseSelfAttentionOptions } from './model/kinds/attention.js';
export type { ModelLayer, ModelOptions, ProveOptions, ProvedForward, ProvedStep, ProvedUpdate } from './model/model.js';
export type { StepBatch, StepTrainingOptions } from './model/train/step-training.js';
export { DataLoader, Tape, TapeLoss, TapeValue, Trainer, TrainingRun, fit, globalNorm, init, mergeGradients, mse, scheduleFactor, seededRandom, softmaxCrossEntropy } from './model/train/index.js';
export type {
  Batch,
  ClassTargets,
  CrossEntropyResult,
  Dataset,
  EpochRecord,
  FitOptions,
  ForwardFn,
  Gradients,
  History,
  LossResult,
  MergeGradientsOptions,
  Schedule,
  SeedOption,
  StepInfo,
  StepRecord,
  TrainerOptions,
} from './model/train/index.js';
export { AttentionDecoder, Decoder, decoder, END_OF_DOCUMENT, evaluateBitsPerByte, generate, languageModel, languageModelCost, loadCorpus, lossPlot, modelContext, readLanguageModelRun, resolveLanguageModelConfig, splitDocuments, trainLanguageModel, unigramBitsPerByte } from './model/lm/index.js';
export type {
  Corpus,
  CorpusOptions,
  AttentionDecoderStats,
  DecodeIndex,
  DecoderOptions,
  DecoderStats,
  GenerateOptions,
  Generation,
  LanguageModelConfig,
  LanguageModelCost,
  LanguageModelRecord,
  LanguageModelRunConfig,
  LanguageModelTrainingOptions,
  LanguageModelTrainingResult,
  MemoryConfig,
  ResolvedLanguageModelConfig,
} from './model/lm/index.js';
export {
  CANONICAL_VERSION,
  DEFAULT_VERIFIER_LIMITS,
  GHOST_FORMAT_VERSION,
  PROOF_FORMAT_VERSION,
  PROOF_HELD_TABLES_VERSION,
  PatternCache,
  decodeGhost,
  decodeProof,
  encodeGhost,
  encodeProof,
  ghostDigest,
  pinGhost,
  sampleToken,
  verifierLimits,
  verifyForward,
  verifyGeneration,
  verifyTrainStep,
  verifyUpdate,
} from './verify/index.js';
export type { ForwardProof, GenerationRecord, GhostManifest, GhostProof, GhostTraining, PinnedGhost, SamplingOptions, StepProof, UpdateProof, VerifiedForward, VerifiedStep, VerifiedUpdate, VerifierLimits } from './verify/index.js';
export { ProverClient, ProverServer } from './serve/index.js';
export type { CallOptions, ForwardInput, ProverClientOptions, ProverServerOptions, RequestLogEntry, ServedForward, ServedStep, ServedTrainStep, ServerLogOption, ServerStats, StepExamples, WireGrad } from './serve/index.js';
