/**
 * Losses over a batch of rows, with their gradients (docs/training.md, "Training a
 * model"). Both are computed in f64 and their gradients rounded to f32 once at the end.
 *
 * - softmaxCrossEntropy: logits (rows x cols), targets = one class id per row;
 *   loss = mean over rows of (logsumexp(z) - z[target]), stable (the row's max is
 *   subtracted before exp); d loss / d z = (softmax(z) - onehot(target)) / rows.
 * - mse: predictions and targets of one length; loss = mean over every element of
 *   (y - t)^2 (PyTorch's reduction 'mean'); d loss / d y = 2 (y - t) / length.
 *
 * NaN or infinite logits, predictions or targets: NonFiniteError; a class id outside
 * 0..cols-1 or not an integer: OutOfRangeError / InvalidArgumentError; lengths that do
 * not match: InvalidArgumentError.
 */
import { checkFloat32Array, checkInteger, describe } from '../../shared/args.js';
import { InvalidArgumentError, NonFiniteError, OutOfRangeError } from '../../shared/errors.js';

/** Class ids, one per row. */
export type ClassTargets = Uint32Array | Uint16Array | Uint8Array | Int32Array | readonly number[];

export interface LossResult {
  /** The loss (mean over rows, or over elements for MSE), in f64. */
  value: number;
  /** d loss / d input, the input's shape. */
  grad: Float32Array;
}

export interface CrossEntropyResult extends LossResult {
  /** Rows whose largest logit (the first, on a tie) is the target. */
  correct: number;
}

function checkFinite(name: string, a: Float32Array): void {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) throw new NonFiniteError(`${name}[${i}] is not finite (${a[i]})`);
}

/** The class ids checked against `rows` and `classes`: a Uint32Array. */
export function checkTargets(name: string, targets: unknown, rows: number, classes: number): Uint32Array {
  const isTyped = targets instanceof Uint32Array || targets instanceof Uint16Array || targets instanceof Uint8Array || targets instanceof Int32Array;
  if (!isTyped && !Array.isArray(targets)) throw new InvalidArgumentError(`${name} must be class ids (a Uint8Array, Uint16Array, Uint32Array, Int32Array or number[]), got ${describe(targets)}`);
  const t = targets as ArrayLike<unknown>;
  if (t.length !== rows) throw new InvalidArgumentError(`${name} has ${t.length} class ids for ${rows} rows`);
  const out = new Uint32Array(rows);
  for (let i = 0; i < rows; i++) {
    const c = t[i];
    if (typeof c !== 'number' || !Number.isInteger(c)) throw new InvalidArgumentError(`${name}[${i}] must be an integer class id, got ${describe(c)}`);
    if (c < 0 || c >= classes) throw new OutOfRangeError(`${name}[${i}] = ${c} is not a class id in 0..${classes - 1}`);
    out[i] = c;
  }
  return out;
}

/** Mean softmax cross-entropy of `logits` (rows x cols) against class ids, its gradient and the rows predicted right. */
export function softmaxCrossEntropy(logits: Float32Array, cols: number, targets: ClassTargets): CrossEntropyResult {
  checkFloat32Array('logits', logits);
  checkInteger('cols', cols, 1, 2 ** 24);
  if (logits.length === 0 || logits.length % cols !== 0) throw new InvalidArgumentError(`logits length ${logits.length} must be a positive multiple of cols ${cols}`);
  const rows = logits.length / cols;
  const t = checkTargets('targets', targets, rows, cols);
  checkFinite('logits', logits);
  const grad = new Float32Array(logits.length);
  const e = new Float64Array(cols);
  let sum = 0;
  let correct = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let mx = -Infinity, arg = 0;
    for (let c = 0; c < cols; c++) {
      const z = logits[o + c]!;
      if (z > mx) {
        mx = z;
        arg = c;
      }
    }
    if (arg === t[r]) correct++;
    let z = 0;
    for (let c = 0; c < cols; c++) {
      e[c] = Math.exp(logits[o + c]! - mx);
      z += e[c]!;
    }
    const target = t[r]!;
    sum += Math.log(z) + mx - logits[o + target]!;
    for (let c = 0; c < cols; c++) grad[o + c] = (e[c]! / z - (c === target ? 1 : 0)) / rows;
  }
  return { value: sum / rows, grad, correct };
}

/** Mean squared error over every element, and its gradient. */
export function mse(predictions: Float32Array, targets: Float32Array): LossResult {
  checkFloat32Array('predictions', predictions);
  checkFloat32Array('targets', targets);
  if (predictions.length === 0 || predictions.length !== targets.length) {
    throw new InvalidArgumentError(`predictions (${predictions.length} values) and targets (${targets.length}) must have one non-zero length`);
  }
  checkFinite('predictions', predictions);
  checkFinite('targets', targets);
  const n = predictions.length;
  const grad = new Float32Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const d = predictions[i]! - targets[i]!;
    sum += d * d;
    grad[i] = (2 * d) / n;
  }
  return { value: sum / n, grad };
}
