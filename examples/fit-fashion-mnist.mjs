#!/usr/bin/env node
/**
 * The Fashion-MNIST classifier of examples/fashion-mnist.mjs as a Model, trained with
 * the training API:
 *
 *   image x (784) -> Linear (784 -> d, weight and bias learned: an affine map) -> HopfieldLookup (N prototypes as keys,
 *   their labels as values, cosine similarity, learned beta) -> 10 logits
 *
 * (--model=hopfield: the HopfieldLookup alone over raw pixels, as `ghost-tensor demo`).
 * A Trainer routes the gradients (SparseAdam on the touched rows, Adam on beta) with a
 * warm-up + cosine schedule and gradient clipping; fit shuffles (seeded), validates on
 * the test split each epoch and draws a progress line on stderr. No hand-written loop,
 * loss or optimizer routing: compare examples/fashion-mnist.mjs.
 *
 * Then the trained model is saved, loaded back, served over HTTP with proofs, and a
 * client that pins its Ghost file classifies test images, each answer verified (the
 * proofs cover the projection too): it prints how many it checked and that their
 * labels are the local model's.
 *
 *   node examples/fit-fashion-mnist.mjs [--model=projection|hopfield] [--epochs=E] [--n=N] [--k=K] [--d=D] [--train=T] [--data=DIR] [--serve=S]
 *
 * Reads the full dataset from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
 * when installed, else the 4,000 + 1,000 image subset the package ships
 * (data/fashion-mnist-small); --data=DIR names another folder of the four IDX .gz files.
 * --help prints this text.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { HopfieldLookup, Linear, Model, ProverClient, ProverServer, SparseTensor, Trainer, fit, init, seededRandom } from 'ghost-tensor';
import { DATA_DIR, SMALL_DATA_DIR, datasetAvailable, loadSplit } from './fashion-mnist.mjs';
import { arg, helpAndExit } from './lib/cli.mjs';

/** N random training images (their rows of x), and their labels x5 as values. */
function prototypes(train, n, seed) {
  const rand = seededRandom(seed);
  const x = new Float32Array(n * 784), values = new Float32Array(n * 10);
  for (let i = 0; i < n; i++) {
    const r = Math.floor(rand() * train.n);
    x.set(train.x.subarray(r * 784, (r + 1) * 784), i * 784);
    values[i * 10 + train.y[r]] = 5;
  }
  return { x, values: SparseTensor.fromArray(values, 10) };
}

/** The model: [Linear, HopfieldLookup] whose keys are the prototypes projected, or [HopfieldLookup] over pixels. */
async function buildModel(kind, train, n, k, d) {
  const proto = prototypes(train, n, 1);
  const hopfield = (keys) => new HopfieldLookup({ keys, values: proto.values, k, similarity: 'cosine', normalize: true, beta: 10 });
  if (kind === 'hopfield') return new Model([hopfield(SparseTensor.fromArray(proto.x, 784))]);
  // An affine map of the pixels (weight and bias, both learned): the preprocessing and the
  // projection in one layer, so the proofs cover them.
  const linear = new Linear({ weight: init.normal(d, 784, { std: 1 / Math.sqrt(784), seed: 2 }), bias: SparseTensor.fromArray(new Float32Array(d), d) });
  const keys = SparseTensor.fromArray((await linear.forward(proto.x)).y, d);
  return new Model([linear, hopfield(keys)]);
}

async function main() {
  helpAndExit(import.meta.url);
  const dir = arg('data', datasetAvailable() ? DATA_DIR : SMALL_DATA_DIR);
  if (!datasetAvailable(dir)) {
    console.error(`no Fashion-MNIST IDX files in ${dir} (the full set: apt-get install dataset-fashion-mnist)`);
    process.exit(2);
  }
  const kind = arg('model', 'projection');
  if (kind !== 'projection' && kind !== 'hopfield') throw new Error(`--model must be projection or hopfield, got ${kind}`);
  const epochs = Number(arg('epochs', 3)), n = Number(arg('n', 2048)), k = Number(arg('k', 32)), d = Number(arg('d', 64));
  const train = loadSplit('train', Number(arg('train', 60000)), dir), test = loadSplit('t10k', Infinity, dir);
  console.error(`data: ${dir} (${train.n} training, ${test.n} test images)`);

  // The whole training run: a model, a trainer, fit.
  const model = await buildModel(kind, train, n, k, d);
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

  // Save, load back, serve with proofs; a client pinned to the Ghost file checks every answer.
  const served = Number(arg('serve', 16));
  if (served <= 0) return;
  const scratch = await mkdtemp(join(tmpdir(), 'fit-fashion-mnist-'));
  try {
    const saved = await model.save(join(scratch, 'model'));
    const { model: loaded } = await Model.load(join(scratch, 'model'), { expectDigest: saved.digest });
    const server = await ProverServer.fromModel(loaded);
    const client = await ProverClient.connect(await server.listen(), saved.digest);
    let agree = 0;
    const argmax = (a) => a.indexOf(Math.max(...a));
    for (let i = 0; i < Math.min(served, test.n); i++) {
      const x = test.x.slice(i * 784, (i + 1) * 784);
      const answer = await client.forward(x); // throws unless the proof verifies against the pinned Ghost file
      if (argmax(Array.from(answer.output)) === argmax(Array.from(await model.forward(x)))) agree++;
    }
    console.log(`served: saved, reloaded and served the model (Ghost ${Buffer.from(saved.digest).toString('hex').slice(0, 16)}...); ${Math.min(served, test.n)} answers verified, ${agree} with the local model's label`);
    await server.close();
    loaded.close();
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
