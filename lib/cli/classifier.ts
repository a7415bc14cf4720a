/**
 * The demo's classifier: one HopfieldLookup over raw pixels. Keys are N stored images
 * (784 values, cosine similarity, normalised input), values their one-hot labels
 * (scaled); training moves the keys, the values and beta. Sparse: each input takes
 * its top-k patterns and SparseAdam updates the touched rows; dense (the baseline):
 * all N patterns, every row updated. The whole classifier is the proved model: a
 * proof shows the 10 logits of an image.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';

import { FormatError } from '../shared/errors.js';
import { HopfieldLookup } from '../model/kinds/hopfield.js';
import { seededRandom } from '../model/train/init.js';
import { DenseAdam, SparseAdam } from '../model/optim.js';
import { SparseTensor } from '../tensor/sparse-tensor.js';

/** The package root (dist/cli/ -> ../..). */
export const PACKAGE_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The Fashion-MNIST subset shipped with the package (data/fashion-mnist-small/README.md). */
export const DEMO_DATA_DIR = join(PACKAGE_ROOT, 'data', 'fashion-mnist-small');

export const CLASS_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'] as const;

export interface Split {
  /** n x 784 pixels in [0, 1]. */
  x: Float32Array;
  y: Uint8Array;
  n: number;
}

/** Loads `<split>-images-idx3-ubyte.gz` and `<split>-labels-idx1-ubyte.gz` from dir (first `limit`); checks the IDX headers. */
export function loadSplit(dir: string, split: 'train' | 't10k', limit = Infinity): Split {
  const img = gunzipSync(readFileSync(join(dir, `${split}-images-idx3-ubyte.gz`)));
  const lab = gunzipSync(readFileSync(join(dir, `${split}-labels-idx1-ubyte.gz`)));
  const iv = new DataView(img.buffer, img.byteOffset, img.byteLength);
  const lv = new DataView(lab.buffer, lab.byteOffset, lab.byteLength);
  if (img.length < 16 || lab.length < 8 || iv.getUint32(0) !== 0x803 || lv.getUint32(0) !== 0x801) throw new FormatError('BAD_MAGIC', `${dir}: not IDX image / label files`);
  const total = iv.getUint32(4);
  if (lv.getUint32(4) !== total || iv.getUint32(8) * iv.getUint32(12) !== 784 || img.length !== 16 + total * 784 || lab.length !== 8 + total) {
    throw new FormatError('BAD_VALUE', `${dir}: unexpected IDX shape`);
  }
  const n = Math.min(total, limit);
  const x = new Float32Array(n * 784);
  for (let i = 0; i < n * 784; i++) x[i] = img[16 + i]! / 255;
  const y = Uint8Array.from(lab.subarray(8, 8 + n));
  for (const c of y) if (c > 9) throw new FormatError('BAD_VALUE', `${dir}: label ${c}`);
  return { x, y, n };
}


export interface TrainOptions {
  mode: 'sparse' | 'dense';
  /** Stored patterns N. */
  n: number;
  /** Patterns per input (sparse). */
  k: number;
  epochs: number;
  batch?: number;
  lr?: number;
  seed?: number;
  /** After each step: steps done, steps in all, mean loss so far this epoch. */
  onStep?: (done: number, total: number, loss: number) => void;
}

export interface Trained {
  layer: HopfieldLookup;
  accuracy: number;
  /** Median milliseconds of one training step (forward, backward, optimizer). */
  stepMs: number;
  seconds: number;
  steps: number;
}

/** Trains one classifier from `seed` (sparse and dense start from the same patterns). */
export async function trainClassifier(train: Split, test: Split, o: TrainOptions): Promise<Trained> {
  const d = 784, batch = o.batch ?? 128, lr = o.lr ?? 3e-3;
  const rand = seededRandom(o.seed ?? 1);
  const pick = Array.from({ length: o.n }, () => Math.floor(rand() * train.n));
  const kd = new Float32Array(o.n * d);
  const vd = new Float32Array(o.n * 10);
  pick.forEach((r, i) => {
    kd.set(train.x.subarray(r * d, (r + 1) * d), i * d);
    vd[i * 10 + train.y[r]!] = 5;
  });
  const keys = SparseTensor.fromArray(kd, d);
  const values = SparseTensor.fromArray(vd, 10);
  const layer = new HopfieldLookup({ keys, values, k: o.mode === 'dense' ? o.n : o.k, mode: o.mode, similarity: 'cosine', normalize: true, beta: 10 });
  const opt = new SparseAdam([keys, values], { lr });
  const betaOpt = new DenseAdam([layer.betaParam], { lr });
  const order = Array.from({ length: train.n }, (_, i) => i);
  const perEpoch = Math.floor(train.n / batch);
  const total = perEpoch * o.epochs;
  const stepMs: number[] = [];
  const t0 = performance.now();
  const X = new Float32Array(batch * d);
  const Y = new Uint8Array(batch);
  for (let e = 0; e < o.epochs; e++) {
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    let lossSum = 0;
    for (let s = 0; s < perEpoch; s++) {
      const t1 = performance.now();
      for (let b = 0; b < batch; b++) {
        const r = order[s * batch + b]!;
        X.set(train.x.subarray(r * d, (r + 1) * d), b * d);
        Y[b] = train.y[r]!;
      }
      const f = await layer.forward(X);
      const dy = new Float32Array(batch * 10);
      for (let b = 0; b < batch; b++) {
        let mx = -Infinity;
        for (let c = 0; c < 10; c++) mx = Math.max(mx, f.y[b * 10 + c]!);
        let z = 0;
        for (let c = 0; c < 10; c++) z += Math.exp(f.y[b * 10 + c]! - mx);
        lossSum += Math.log(z) + mx - f.y[b * 10 + Y[b]!]!;
        for (let c = 0; c < 10; c++) dy[b * 10 + c] = (Math.exp(f.y[b * 10 + c]! - mx) / z - (c === Y[b] ? 1 : 0)) / batch;
      }
      const g = await layer.backward(f.ctx, dy);
      await opt.stepAsync(g.grads);
      betaOpt.step([new Float32Array([g.dBeta])]);
      stepMs.push(performance.now() - t1);
      o.onStep?.(e * perEpoch + s + 1, total, lossSum / ((s + 1) * batch));
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  // The layer is served after training: detach the optimizer so a server can attach its own.
  opt.detach();
  stepMs.sort((a, b) => a - b);
  return { layer, accuracy: await accuracy(layer, test), stepMs: stepMs[stepMs.length >> 1] ?? NaN, seconds, steps: total };
}

/** Fraction of `test` whose largest logit is the label (fast f32 forward). */
export async function accuracy(layer: HopfieldLookup, test: Split, batch = 500): Promise<number> {
  let right = 0;
  for (let s = 0; s < test.n; s += batch) {
    const B = Math.min(batch, test.n - s);
    const { y } = await layer.forward(test.x.slice(s * 784, (s + B) * 784));
    for (let b = 0; b < B; b++) if (argmax(y, b * 10, 10) === test.y[s + b]) right++;
  }
  return right / test.n;
}

export function argmax(a: Float32Array, at: number, n: number): number {
  let best = 0;
  for (let c = 1; c < n; c++) if (a[at + c]! > a[at + best]!) best = c;
  return best;
}
