/** The training API (docs/training.md, "Training a model"): tape, losses, schedules, initialisers, Trainer, fit. */
export { Tape, TapeLoss, TapeValue } from './tape.js';
export type { Gradients } from './tape.js';
export { mse, softmaxCrossEntropy } from './losses.js';
export type { ClassTargets, CrossEntropyResult, LossResult } from './losses.js';
export { scheduleFactor } from './schedule.js';
export type { Schedule } from './schedule.js';
export { init, seededRandom } from './init.js';
export type { SeedOption } from './init.js';
export { Trainer, globalNorm } from './trainer.js';
export { mergeGradients } from './merge.js';
export type { MergeGradientsOptions } from './merge.js';
export type { StepInfo, TrainerOptions } from './trainer.js';
export { DataLoader, fit } from './fit.js';
export type { Batch, Dataset, EpochRecord, FitOptions, ForwardFn, History, StepRecord } from './fit.js';
export { TrainingRun } from './checkpoint.js';
