#!/usr/bin/env node
/**
 * The Fashion-MNIST classifier of `ghost-tensor demo` (one HopfieldLookup over raw
 * pixels: N stored training images as keys, their one-hot labels as values, cosine
 * similarity, learned beta) trained with the training API: a Model, a Trainer (SparseAdam
 * on the touched rows, Adam on beta, warm-up + cosine schedule, gradient clipping) and
 * fit (seeded shuffling, validation accuracy per epoch, a progress line on stderr).
 * No hand-written loop, loss or optimizer routing: compare examples/fashion-mnist.mjs.
 *
 *   node examples/fit-fashion-mnist.mjs [--epochs=E] [--n=N] [--k=K] [--train=T] [--data=DIR]
 *
 * Reads the full dataset from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
 * when installed, else the 4,000 + 1,000 image subset the package ships
 * (data/fashion-mnist-small); --data=DIR names another folder of the four IDX .gz files.
 * --help prints this text.
 */
import { fileURLToPath } from 'node:url';

import { HopfieldLookup, Model, SparseTensor, Trainer, fit, seededRandom } from 'ghost-tensor';
import { DATA_DIR, SMALL_DATA_DIR, datasetAvailable, loadSplit } from './fashion-mnist.mjs';
import { arg, helpAndExit } from './lib/cli.mjs';

/** N random training images as keys, their labels (x5) as values. */
function prototypes(train, n, seed) {
  const rand = seededRandom(seed);
  const keys = new Float32Array(n * 784), values = new Float32Array(n * 10);
  for (let i = 0; i < n; i++) {
    const r = Math.floor(rand() * train.n);
    keys.set(train.x.subarray(r * 784, (r + 1) * 784), i * 784);
    values[i * 10 + train.y[r]] = 5;
  }
  return { keys: SparseTensor.fromArray(keys, 784), values: SparseTensor.fromArray(values, 10) };
}

async function main() {
  helpAndExit(import.meta.url);
  const dir = arg('data', datasetAvailable() ? DATA_DIR : SMALL_DATA_DIR);
  if (!datasetAvailable(dir)) {
    console.error(`no Fashion-MNIST IDX files in ${dir} (the full set: apt-get install dataset-fashion-mnist)`);
    process.exit(2);
  }
  const epochs = Number(arg('epochs', 3)), n = Number(arg('n', 1024)), k = Number(arg('k', 32));
  const train = loadSplit('train', Number(arg('train', 60000)), dir), test = loadSplit('t10k', Infinity, dir);
  console.error(`data: ${dir} (${train.n} training, ${test.n} test images)`);

  // The whole training run: a model, a trainer, fit.
  const { keys, values } = prototypes(train, n, 1);
  const model = new Model([new HopfieldLookup({ keys, values, k, similarity: 'cosine', normalize: true, beta: 10 })]);
  const steps = epochs * Math.ceil(train.n / 128);
  const trainer = new Trainer(model, { lr: 3e-3, schedule: { kind: 'cosine', warmupSteps: Math.min(20, steps - 1), totalSteps: steps, floor: 0.1 }, clipNorm: 5 });
  const history = await fit(trainer, {
    train: { inputs: train.x, targets: train.y },
    validation: { inputs: test.x, targets: test.y },
    epochs, batchSize: 128, metrics: ['accuracy'], seed: 1, progress: true,
  });

  console.log('| epoch | train loss | train accuracy | test loss | test accuracy |');
  console.log('|---|---|---|---|---|');
  for (const e of history.epochs) {
    console.log(`| ${e.epoch} | ${e.loss.toFixed(4)} | ${(100 * e.accuracy).toFixed(2)}% | ${e.valLoss.toFixed(4)} | ${(100 * e.valAccuracy).toFixed(2)}% |`);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
