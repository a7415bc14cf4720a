/**
 * fit: the training loop (docs/training.md, "Training a model"). Per epoch it shuffles
 * the training examples (seeded), and per batch runs the forward on a new Tape, the
 * loss, backward, and one Trainer step; then it evaluates the validation set (no
 * step). Returns the history; `signal` stops it after the step in progress.
 *
 * A DataLoader cuts a Dataset (rows of inputs and their targets) into batches: the
 * order of an epoch is a Fisher-Yates shuffle driven by seededRandom(seed + epoch)
 * (init.ts; epoch counts from 0), or the data's order with shuffle false; the last,
 * partial batch is kept.
 */
import { checkBoolean, checkInteger, checkOptions, describe } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { kindOf } from '../kinds/index.js';
import { seededRandom } from './init.js';
import { checkTargets, type ClassTargets } from './losses.js';
import { Progress } from './progress.js';
import { Tape, type TapeLoss, type TapeValue } from './tape.js';
import type { StepInfo, Trainer } from './trainer.js';

export interface Dataset {
  /** n examples: n x cols floats, or n ids (for a model whose first layer takes ids). */
  inputs: Float32Array | Uint32Array;
  /** Floats per example (default: the width the trainer's model takes); ignored for ids. */
  cols?: number;
  /** One class id per example (cross-entropy), or n x m floats (MSE). */
  targets: ClassTargets | Float32Array;
}

/** One batch: `rows` examples, their inputs and targets. */
export interface Batch {
  rows: number;
  /** rows x cols floats, or rows ids. */
  inputs: Float32Array | Uint32Array;
  cols: number;
  /** Class ids, or rows x m floats. */
  targets: Uint32Array | Float32Array;
}

export class DataLoader {
  readonly size: number;
  readonly cols: number;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly seed: number;
  readonly #inputs: Float32Array | Uint32Array;
  readonly #targets: Uint32Array | Float32Array;
  readonly #targetCols: number;

  constructor(data: Dataset, options: { batchSize?: number; shuffle?: boolean; seed?: number; cols?: number } = {}) {
    const o = checkOptions('DataLoader', options, ['batchSize', 'shuffle', 'seed', 'cols']);
    if (data === null || typeof data !== 'object') throw new InvalidArgumentError(`data must be { inputs, targets }, got ${describe(data)}`);
    checkOptions('dataset', data, ['inputs', 'cols', 'targets']);
    const x = data.inputs;
    if (!(x instanceof Float32Array) && !(x instanceof Uint32Array)) throw new InvalidArgumentError(`inputs must be a Float32Array (rows of floats) or a Uint32Array (ids), got ${describe(x)}`);
    const cols = x instanceof Uint32Array ? 1 : checkInteger('cols', data.cols ?? o.cols, 1, 2 ** 24);
    if (x.length === 0 || x.length % cols !== 0) throw new InvalidArgumentError(`inputs length ${x.length} must be a positive multiple of cols ${cols}`);
    const n = x.length / cols;
    this.size = n;
    this.cols = cols;
    this.#inputs = x;
    const t = data.targets;
    if (t instanceof Float32Array) {
      if (t.length === 0 || t.length % n !== 0) throw new InvalidArgumentError(`targets: ${t.length} floats for ${n} examples`);
      this.#targets = t;
      this.#targetCols = t.length / n;
    } else {
      this.#targets = checkTargets('targets', t, n, 2 ** 32);
      this.#targetCols = 0;
    }
    this.batchSize = checkInteger('batchSize', o.batchSize ?? 32, 1, 2 ** 24);
    this.shuffle = checkBoolean('shuffle', o.shuffle, true);
    this.seed = checkInteger('seed', o.seed ?? 1, 0, 2 ** 32 - 1);
  }

  /** Batches per epoch (the last may be partial). */
  get batches(): number {
    return Math.ceil(this.size / this.batchSize);
  }

  /** The example order of epoch `epoch` (0-based). */
  order(epoch: number): Uint32Array {
    checkInteger('epoch', epoch, 0, 2 ** 32 - 1);
    const order = new Uint32Array(this.size);
    for (let i = 0; i < order.length; i++) order[i] = i;
    if (!this.shuffle) return order;
    const rand = seededRandom((this.seed + epoch) >>> 0);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      const t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    return order;
  }

  /** The batches of epoch `epoch`, in order. */
  *epoch(epoch: number): Generator<Batch> {
    const order = this.order(epoch);
    const c = this.cols, tc = this.#targetCols;
    for (let s = 0; s < order.length; s += this.batchSize) {
      const rows = Math.min(this.batchSize, order.length - s);
      const inputs = this.#inputs instanceof Uint32Array ? new Uint32Array(rows) : new Float32Array(rows * c);
      const targets = tc === 0 ? new Uint32Array(rows) : new Float32Array(rows * tc);
      for (let b = 0; b < rows; b++) {
        const r = order[s + b]!;
        inputs.set(this.#inputs.subarray(r * c, (r + 1) * c), b * c);
        if (tc === 0) targets[b] = this.#targets[r]!;
        else targets.set(this.#targets.subarray(r * tc, (r + 1) * tc), b * tc);
      }
      yield { rows, inputs, cols: c, targets };
    }
  }
}

/** The forward a fit runs: from a batch's input on the tape to the output the loss reads. */
export type ForwardFn = (tape: Tape, x: TapeValue | Uint32Array) => Promise<TapeValue>;

export interface StepRecord extends StepInfo {
  /** 1-based. */
  epoch: number;
  /** The batch's loss. */
  loss: number;
  rows: number;
}

export interface EpochRecord {
  /** 1-based. */
  epoch: number;
  /** Steps taken in this epoch. */
  steps: number;
  /** Mean training loss over the epoch's examples (each batch's loss before its step). */
  loss: number;
  /** Training accuracy over the epoch (metrics: ['accuracy']). */
  accuracy?: number;
  valLoss?: number;
  valAccuracy?: number;
  /** The learning rate of the epoch's last step. */
  lr: number;
  /** false when the run was stopped inside this epoch (no validation then). */
  complete: boolean;
}

export interface History {
  epochs: EpochRecord[];
  /** Steps taken in all. */
  steps: number;
  /** true when `signal` stopped the run. */
  stopped: boolean;
}

export interface FitOptions {
  train: Dataset;
  validation?: Dataset;
  /** Default 1. */
  epochs?: number;
  /** Default 32. */
  batchSize?: number;
  /** Default 'softmax-cross-entropy' (class ids as targets); 'mse': float targets. */
  loss?: 'softmax-cross-entropy' | 'mse';
  /** 'accuracy' (cross-entropy only): the fraction whose largest output is the target. */
  metrics?: readonly 'accuracy'[];
  /** The forward (default: the trainer's model, layer after layer). */
  forward?: ForwardFn;
  /** Shuffle seed (default 1). */
  seed?: number;
  /** Shuffle each epoch (default true). */
  shuffle?: boolean;
  onStep?: (s: StepRecord) => void | Promise<void>;
  onEpoch?: (e: EpochRecord) => void | Promise<void>;
  /** Stops the run after the step in progress. */
  signal?: AbortSignal;
  /** A progress line per epoch on stderr (default false). */
  progress?: boolean;
}

/** Trains `trainer`'s layers (see the module comment). */
export async function fit(trainer: Trainer, options: FitOptions): Promise<History> {
  const o = checkOptions('fit', options, ['train', 'validation', 'epochs', 'batchSize', 'loss', 'metrics', 'forward', 'seed', 'shuffle', 'onStep', 'onEpoch', 'signal', 'progress']);
  if (o === undefined || o.train === undefined) throw new InvalidArgumentError('fit needs { train }');
  const epochs = checkInteger('epochs', o.epochs ?? 1, 1, 1_000_000);
  const lossKind = o.loss ?? 'softmax-cross-entropy';
  if (lossKind !== 'softmax-cross-entropy' && lossKind !== 'mse') throw new InvalidArgumentError(`loss must be 'softmax-cross-entropy' or 'mse', got ${describe(lossKind)}`);
  const metrics = o.metrics ?? [];
  if (!Array.isArray(metrics)) throw new InvalidArgumentError(`metrics must be an array, got ${describe(metrics)}`);
  for (const m of metrics) if (m !== 'accuracy') throw new InvalidArgumentError(`unknown metric ${describe(m)} (known: 'accuracy')`);
  const accuracy = metrics.includes('accuracy');
  if (accuracy && lossKind !== 'softmax-cross-entropy') throw new InvalidArgumentError("metric 'accuracy' needs loss 'softmax-cross-entropy' (class ids as targets)");
  for (const f of ['forward', 'onStep', 'onEpoch'] as const) if (o[f] !== undefined && typeof o[f] !== 'function') throw new InvalidArgumentError(`${f} must be a function`);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw new InvalidArgumentError('signal must be an AbortSignal');
  const progress = checkBoolean('progress', o.progress, false);
  const model = trainer.model;
  if (o.forward === undefined && model === null) throw new InvalidArgumentError('fit: give forward(tape, x) when the Trainer was made from layers, not a Model');
  const forward: ForwardFn = o.forward ?? ((tape, x) => tape.model(model!, x));
  let cols: number | undefined;
  if (model !== null) {
    const l0 = model.layers[0]!;
    const w = kindOf(l0).shape(l0, 0, -1).inWidth;
    if (w > 0) cols = w;
  }
  const batchSize = o.batchSize ?? 32;
  const train = new DataLoader(o.train, { batchSize, seed: o.seed ?? 1, shuffle: o.shuffle ?? true, ...(cols === undefined ? {} : { cols }) });
  const validation = o.validation === undefined ? null : new DataLoader(o.validation, { batchSize, shuffle: false, ...(cols === undefined ? {} : { cols }) });

  const run = async (batch: Batch): Promise<{ tape: Tape; loss: TapeLoss }> => {
    const tape = new Tape();
    const x = batch.inputs instanceof Uint32Array ? batch.inputs : tape.input(batch.inputs, batch.cols);
    const y = await forward(tape, x);
    const loss = lossKind === 'mse' ? tape.mse(y, batch.targets as Float32Array) : tape.softmaxCrossEntropy(y, batch.targets as Uint32Array);
    return { tape, loss };
  };

  const history: History = { epochs: [], steps: 0, stopped: false };
  for (let e = 0; e < epochs && !history.stopped; e++) {
    const bar = progress ? new Progress(`epoch ${e + 1}/${epochs}`, train.batches) : null;
    let lossSum = 0, rows = 0, correct = 0, steps = 0, lr = trainer.lr;
    for (const batch of train.epoch(e)) {
      if (o.signal?.aborted) {
        history.stopped = true;
        break;
      }
      const { tape, loss } = await run(batch);
      const grads = await tape.backward(loss);
      const info = await trainer.step(grads);
      steps++;
      history.steps++;
      lr = info.lr;
      lossSum += loss.value * batch.rows;
      rows += batch.rows;
      correct += loss.correct ?? 0;
      bar?.update(steps, `loss ${(lossSum / rows).toFixed(4)}`);
      await o.onStep?.({ ...info, epoch: e + 1, loss: loss.value, rows: batch.rows });
    }
    if (o.signal?.aborted) history.stopped = true;
    const rec: EpochRecord = { epoch: e + 1, steps, loss: rows > 0 ? lossSum / rows : NaN, lr, complete: !history.stopped };
    if (accuracy) rec.accuracy = rows > 0 ? correct / rows : NaN;
    if (validation !== null && !history.stopped) {
      let vSum = 0, vRows = 0, vCorrect = 0;
      for (const batch of validation.epoch(0)) {
        const { loss } = await run(batch);
        vSum += loss.value * batch.rows;
        vRows += batch.rows;
        vCorrect += loss.correct ?? 0;
      }
      rec.valLoss = vSum / vRows;
      if (accuracy) rec.valAccuracy = vCorrect / vRows;
    }
    bar?.done(
      `loss ${rec.loss.toFixed(4)}` +
        (rec.accuracy === undefined ? '' : `, accuracy ${(100 * rec.accuracy).toFixed(2)}%`) +
        (rec.valLoss === undefined ? '' : `, validation loss ${rec.valLoss.toFixed(4)}`) +
        (rec.valAccuracy === undefined ? '' : `, validation accuracy ${(100 * rec.valAccuracy).toFixed(2)}%`) +
        (history.stopped ? ' (stopped)' : ''),
    );
    history.epochs.push(rec);
    await o.onEpoch?.(rec);
  }
  return history;
}
