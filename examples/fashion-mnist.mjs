#!/usr/bin/env node
/**
 * A Fashion-MNIST classifier whose core is a HopfieldLookup with learned stored
 * patterns, trained sparse (top-k patterns, SparseAdam on the touched rows) and dense
 * (all N patterns, full softmax, Adam on every row) from the same seed.
 *
 *   image x (784) -> h = P x (P: 784 x d, learned, dense Adam)
 *     -> HopfieldLookup(keys N x d, values N x 10; cosine similarity, learned beta)
 *     -> 10 logits -> softmax cross-entropy
 *
 * Keys start as the projections of N random training images, values as their
 * one-hot labels: the layer starts as a soft kNN over N prototypes, then training
 * moves the prototypes, their label vectors, the projection and beta.
 *
 *   node examples/fashion-mnist.mjs [--epochs=E] [--n=N] [--k=K] [--train=T] [--mode=sparse|dense|both] [--data=DIR]
 *
 * Reads the full dataset from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
 * when installed, else the 4,000 + 1,000 image subset the package ships
 * (data/fashion-mnist-small); --data=DIR names another folder of the four IDX .gz files.
 * --write records bench/results/fashion-mnist.json (a checkout of the repository only).
 * --help prints this text.
 */
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync } from 'node:zlib';
import os from 'node:os';

import { DenseAdam, HopfieldLookup, SparseAdam, SparseTensor, simdInfo } from 'ghost-tensor';
import { arg, helpAndExit, resultsDir } from './lib/cli.mjs';
import { gaussian, rng } from './lib/random.mjs';

/** The full dataset (Debian's dataset-fashion-mnist). */
export const DATA_DIR = '/usr/share/datasets/fashion-mnist';
/** The subset the package ships (4,000 training and 1,000 test images). */
export const SMALL_DATA_DIR = fileURLToPath(new URL('../data/fashion-mnist-small/', import.meta.url));

export function datasetAvailable(dir = DATA_DIR) {
  return existsSync(join(dir, 'train-images-idx3-ubyte.gz'));
}

/** { x: Float32Array (n x 784, in [0, 1]), y: Uint8Array, n } with IDX headers checked. */
export function loadSplit(split, limit = Infinity, dir = DATA_DIR) {
  const img = gunzipSync(readFileSync(join(dir, `${split}-images-idx3-ubyte.gz`)));
  const lab = gunzipSync(readFileSync(join(dir, `${split}-labels-idx1-ubyte.gz`)));
  const iv = new DataView(img.buffer, img.byteOffset, img.byteLength);
  const lv = new DataView(lab.buffer, lab.byteOffset, lab.byteLength);
  if (iv.getUint32(0) !== 0x803 || lv.getUint32(0) !== 0x801) throw new Error('not IDX image / label files');
  const total = iv.getUint32(4);
  if (lv.getUint32(4) !== total || img.length !== 16 + total * 784 || lab.length !== 8 + total) throw new Error('unexpected IDX shape');
  const n = Math.min(total, limit);
  const x = new Float32Array(n * 784);
  for (let i = 0; i < n * 784; i++) x[i] = img[16 + i] / 255;
  return { x, y: lab.subarray(8, 8 + n), n };
}

/** h (B x d) = X (B x 784) P (784 x d); zero pixels skipped. */
function project(X, B, P, d) {
  const h = new Float32Array(B * d);
  for (let b = 0; b < B; b++) {
    const xo = b * 784, ho = b * d;
    for (let i = 0; i < 784; i++) {
      const xi = X[xo + i];
      if (xi === 0) continue;
      const po = i * d;
      for (let j = 0; j < d; j++) h[ho + j] += xi * P[po + j];
    }
  }
  return h;
}

/**
 * Trains one model. Returns { mode, testAccuracy, trainLoss (last epoch mean), epochs,
 * seconds, stepMsMedian }.
 */
export async function trainClassifier({
  train,
  test,
  mode = 'sparse',
  epochs = 8,
  n = 2048,
  k = 32,
  d = 64,
  batch = 128,
  lr = 3e-3,
  valueScale = 5,
  seed = 1,
  onEpoch = () => {},
}) {
  const rand = rng(seed);
  const P = new Float32Array(784 * d);
  for (let i = 0; i < P.length; i++) P[i] = gaussian(rand) / Math.sqrt(784);
  // Prototypes: n random training images, projected; values: their one-hot labels.
  const pick = Array.from({ length: n }, () => Math.floor(rand() * train.n));
  const protoX = new Float32Array(n * 784);
  pick.forEach((r, i) => protoX.set(train.x.subarray(r * 784, (r + 1) * 784), i * 784));
  const keys = SparseTensor.fromArray(project(protoX, n, P, d), d);
  const vals = new Float32Array(n * 10);
  pick.forEach((r, i) => (vals[i * 10 + train.y[r]] = valueScale));
  const values = SparseTensor.fromArray(vals, 10);
  const layer = new HopfieldLookup({
    keys,
    values,
    k: mode === 'dense' ? n : k,
    mode,
    similarity: 'cosine',
    normalize: true,
    beta: 10,
  });
  const sparseOpt = new SparseAdam([keys, values], { lr });
  const denseOpt = new DenseAdam([P, layer.betaParam], { lr });
  const order = Array.from({ length: train.n }, (_, i) => i);
  const started = performance.now();
  const stepMs = [];
  let lastLoss = NaN;
  for (let epoch = 0; epoch < epochs; epoch++) {
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    let lossSum = 0, seen = 0;
    for (let s = 0; s + batch <= order.length; s += batch) {
      const t0 = performance.now();
      const X = new Float32Array(batch * 784);
      const Y = new Uint8Array(batch);
      for (let b = 0; b < batch; b++) {
        const r = order[s + b];
        X.set(train.x.subarray(r * 784, (r + 1) * 784), b * 784);
        Y[b] = train.y[r];
      }
      const h = project(X, batch, P, d);
      const f = await layer.forward(h);
      // Softmax cross-entropy over the 10 logits.
      const dy = new Float32Array(batch * 10);
      for (let b = 0; b < batch; b++) {
        let mx = -Infinity;
        for (let c = 0; c < 10; c++) mx = Math.max(mx, f.y[b * 10 + c]);
        let z = 0;
        for (let c = 0; c < 10; c++) z += Math.exp(f.y[b * 10 + c] - mx);
        lossSum += Math.log(z) + mx - f.y[b * 10 + Y[b]];
        for (let c = 0; c < 10; c++) dy[b * 10 + c] = (Math.exp(f.y[b * 10 + c] - mx) / z - (c === Y[b] ? 1 : 0)) / batch;
      }
      seen += batch;
      const g = await layer.backward(f.ctx, dy);
      // dP = X^T dh
      const dP = new Float32Array(784 * d);
      for (let b = 0; b < batch; b++) {
        const xo = b * 784, ho = b * d;
        for (let i = 0; i < 784; i++) {
          const xi = X[xo + i];
          if (xi === 0) continue;
          const po = i * d;
          for (let j = 0; j < d; j++) dP[po + j] += xi * g.dx[ho + j];
        }
      }
      await sparseOpt.stepAsync(g.grads); // off the JavaScript thread, like retrieval and the layer math
      denseOpt.step([dP, new Float32Array([g.dBeta])]);
      stepMs.push(performance.now() - t0);
    }
    lastLoss = lossSum / seen;
    onEpoch({ epoch: epoch + 1, loss: lastLoss, beta: layer.beta });
  }
  const seconds = (performance.now() - started) / 1000;
  const testAccuracy = await evaluate(layer, P, d, test);
  stepMs.sort((a, b) => a - b);
  return { mode, testAccuracy, trainLoss: lastLoss, epochs, seconds, stepMsMedian: stepMs[stepMs.length >> 1], beta: layer.beta };
}

export async function evaluate(layer, P, d, test, batch = 500) {
  let right = 0;
  for (let s = 0; s < test.n; s += batch) {
    const B = Math.min(batch, test.n - s);
    const h = project(test.x.subarray(s * 784, (s + B) * 784), B, P, d);
    const { y } = await layer.forward(h);
    for (let b = 0; b < B; b++) {
      let best = 0;
      for (let c = 1; c < 10; c++) if (y[b * 10 + c] > y[b * 10 + best]) best = c;
      if (best === test.y[s + b]) right++;
    }
  }
  return right / test.n;
}

async function main() {
  helpAndExit(import.meta.url);
  const dir = arg('data', datasetAvailable() ? DATA_DIR : SMALL_DATA_DIR);
  if (!datasetAvailable(dir)) {
    console.error(`no Fashion-MNIST IDX files in ${dir} (the full set: apt-get install dataset-fashion-mnist)`);
    process.exit(2);
  }
  const epochs = Number(arg('epochs', 8)), n = Number(arg('n', 2048)), k = Number(arg('k', 32));
  const trainLimit = Number(arg('train', 60000));
  const modes = arg('mode', 'both') === 'both' ? ['sparse', 'dense'] : [arg('mode')];
  const train = loadSplit('train', trainLimit, dir), test = loadSplit('t10k', Infinity, dir);
  console.error(`data: ${dir} (${train.n} training, ${test.n} test images)`);
  const results = [];
  for (const mode of modes) {
    console.error(`${mode}: N = ${n}, k = ${mode === 'dense' ? n : k}, ${epochs} epochs over ${train.n} images`);
    const r = await trainClassifier({
      train, test, mode, epochs, n, k,
      onEpoch: (e) => console.error(`  epoch ${e.epoch}: train loss ${e.loss.toFixed(4)}, beta ${e.beta.toFixed(2)}`),
    });
    console.error(`  test accuracy ${(100 * r.testAccuracy).toFixed(2)}% (${r.seconds.toFixed(0)} s, median step ${r.stepMsMedian.toFixed(1)} ms)`);
    results.push(r);
  }
  console.log('| mode | N | k | epochs | test accuracy | train s | median step ms |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of results) console.log(`| ${r.mode} | ${n} | ${r.mode === 'dense' ? n : k} | ${r.epochs} | ${(100 * r.testAccuracy).toFixed(2)}% | ${r.seconds.toFixed(0)} | ${r.stepMsMedian.toFixed(1)} |`);
  if (process.argv.includes('--write')) {
    const outDir = resultsDir(import.meta.url);
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'fashion-mnist.json'), JSON.stringify({
      name: 'fashion-mnist',
      date: new Date().toISOString(),
      command: ['node examples/fashion-mnist.mjs', ...process.argv.slice(2)].join(' '),
      machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, node: process.version, simd: simdInfo().level },
      parameters: { n, k, d: 64, epochs, batch: 128, lr: 3e-3, seed: 1, trainImages: train.n, testImages: test.n, data: dir },
      results,
      anchors: 'dataset benchmark table: scikit-learn KNeighbors ~0.85-0.86, MLPClassifier ~0.87, SVC 0.897',
    }, null, 2) + '\n');
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
