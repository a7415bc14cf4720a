// The models and batches of the step-proof benchmarks (bench/step-proofs.mjs, bench/step-profile.mjs):
// each case has proved() (a model with its training rule), plain() (the same model and a
// Trainer: the fast path) and batch(s) (step s's input and targets). `L` is the library
// (dist/index.js, or an older build for an A/B).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { ROOT } from './common.mjs';

/** Text for the language models: this repository's docs (fixed, no corpus to install). */
const TEXT = Uint8Array.from(readFileSync(join(ROOT, 'docs', 'lm.md')));
/** Window s of S bytes (inputs) and the next bytes (targets). */
export function lmBatch(S, s) {
  const off = (s * 997) % (TEXT.length - S - 1);
  return { input: Uint32Array.from(TEXT.subarray(off, off + S)), targets: Uint32Array.from(TEXT.subarray(off + 1, off + S + 1)) };
}

/**
 * The Fashion-MNIST HopfieldLookup classifier, as trainClassifier builds it: c.n random
 * training images (seeded by c.seed) as keys, their labels (x 5) as values. `data` is
 * dist/cli/classifier.js ({ loadSplit, DEMO_DATA_DIR }).
 */
export function classifierCase(L, data, c) {
  const { HopfieldLookup, Model, SparseTensor, Trainer } = L;
  const train = data.loadSplit(data.DEMO_DATA_DIR, 'train');
  let seed = c.seed >>> 0;
  const rand = () => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);
  const pick = Array.from({ length: c.n }, () => Math.floor(rand() * train.n));
  const kd = new Float32Array(c.n * c.d), vd = new Float32Array(c.n * 10);
  pick.forEach((r, i) => {
    kd.set(train.x.subarray(r * c.d, (r + 1) * c.d), i * c.d);
    vd[i * 10 + train.y[r]] = 5;
  });
  const make = (training) => {
    const layer = new HopfieldLookup({ keys: SparseTensor.fromArray(kd.slice(), c.d), values: SparseTensor.fromArray(vd.slice(), 10), k: c.k, similarity: 'cosine', normalize: true, beta: c.beta });
    return new Model([layer], training ? { training } : {});
  };
  const batch = (s) => {
    const X = new Float32Array(c.batch * c.d), Y = new Uint32Array(c.batch);
    for (let b = 0; b < c.batch; b++) {
      const r = (s * c.batch + b * 7919) % train.n;
      X.set(train.x.subarray(r * c.d, (r + 1) * c.d), b * c.d);
      Y[b] = train.y[r];
    }
    return { input: X, targets: Y };
  };
  const training = { loss: 'cross-entropy', optimizer: 'adam', lr: c.lr };
  return {
    name: 'classifier',
    label: `Fashion-MNIST HopfieldLookup N=${c.n} k=${c.k} B=${c.batch}`,
    proved: () => make(training),
    plain: () => {
      const m = make(null);
      return { model: m, trainer: new Trainer(m, { lr: c.lr }) };
    },
    batch,
  };
}

const cfgLabel = (c) => `S${c.context} D${c.dim} L${c.layers}`;

/** A byte-level language model (languageModel, seed 1) on windows of docs/lm.md, with a memory layer when `memory` is given. */
export function lmCase(L, name, config, lr, clipNorm, memory) {
  const { languageModel, Trainer } = L;
  const cfg = { ...config, ...(memory ? { memory } : {}), seed: 1 };
  const training = { loss: 'cross-entropy', optimizer: 'adam', lr, clipNorm };
  return {
    name,
    label: memory ? `LM ${cfgLabel(config)} + memory ${memory.subKeys}^2 rows` : `LM ${cfgLabel(config)}`,
    proved: () => languageModel(cfg, { training }),
    plain: () => {
      const m = languageModel(cfg);
      return { model: m, trainer: new Trainer(m, { lr, clipNorm }) };
    },
    batch: (s) => lmBatch(config.context, s),
  };
}
