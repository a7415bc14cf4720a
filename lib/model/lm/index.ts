/** Byte-level language models (docs/lm.md): corpora, the model, training, generation. */
export { END_OF_DOCUMENT, loadCorpus, splitDocuments, unigramBitsPerByte } from './corpus.js';
export type { Corpus, CorpusOptions } from './corpus.js';
export { languageModel, languageModelCost, resolveLanguageModelConfig } from './model.js';
export type { LanguageModelConfig, LanguageModelCost, MemoryConfig, ResolvedLanguageModelConfig } from './model.js';
export { evaluateBitsPerByte, lossPlot, readLanguageModelRun, trainLanguageModel } from './train.js';
export type { LanguageModelRecord, LanguageModelRunConfig, LanguageModelTrainingOptions, LanguageModelTrainingResult } from './train.js';
export { generate, modelContext } from './generate.js';
export type { GenerateOptions, Generation } from './generate.js';
export { AttentionDecoder, Decoder, decoder } from './decode.js';
export type { AttentionDecoderStats, DecodeIndex, DecoderOptions, DecoderStats } from './decode.js';
