#!/usr/bin/env node
/**
 * Training with step proofs (docs/step-proofs.md): a small byte-level language model
 * (embedding, learned positions, causal top-k attention, a gated MLP, a product-key
 * memory layer, a head) whose Ghost file commits its training rule. A prover takes one
 * step at a time with `model.proveTrainStep`; a verifier that holds only the Ghost file
 * recomputes each whole step with `verifyTrainStep` (no addon) and follows the model
 * from one Ghost file to the next. Both keep a PatternCache, so rows the verifier holds
 * travel as ids or XOR deltas.
 *
 *   node examples/step-proofs.mjs                 40 steps on the built-in text
 *   --steps=N (40)  --context=S (32)  --lr=LR (0.01)  --seed=SEED (1)
 *   --text=FILE     train on the bytes of FILE instead
 *   --help          this text
 *
 * Prints one line per step (loss, learning rate, proof size, prove and verify time) and
 * the Ghost digests the verifier reached, which are the prover's.
 */
import { readFileSync } from 'node:fs';

import { PatternCache, languageModel } from 'ghost-tensor';
import { pinGhost, verifyTrainStep } from 'ghost-tensor/verify';

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')).map(([k, v]) => [k, v ?? 'true']));
if (args.help) {
  console.log(`node examples/step-proofs.mjs [--steps=N] [--context=S] [--lr=LR] [--seed=SEED] [--text=FILE] [--help]

Trains a small language model by step proofs and verifies every step as a verifier
holding only the Ghost file would (docs/step-proofs.md).`);
  process.exit(0);
}
const steps = Number(args.steps ?? 40), context = Number(args.context ?? 32), lr = Number(args.lr ?? 0.01), seed = Number(args.seed ?? 1);
for (const [k, v] of Object.entries({ steps, context, lr, seed })) {
  if (!Number.isFinite(v) || v <= 0) {
    console.error(`--${k} must be a positive number`);
    process.exit(2);
  }
}
const TEXT = 'The cat sat on the mat. The dog sat on the log. A cat and a dog sat on a mat and a log. ';
const text = new Uint8Array(args.text ? readFileSync(args.text) : Buffer.from(TEXT.repeat(8)));
if (text.length < context + 2) {
  console.error(`the text needs more than ${context + 1} bytes`);
  process.exit(2);
}

const model = languageModel(
  { context, dim: 16, layers: 2, heads: 2, hidden: 32, memory: { layers: [1], subKeys: 8, k: 4, heads: 2, keyDim: 8 }, seed },
  { training: { loss: 'cross-entropy', lr, clipNorm: 1, schedule: { kind: 'cosine', warmupSteps: Math.min(5, steps), totalSteps: steps + 1 } } },
);
const first = await model.ghost();
// The verifier: the Ghost file's bytes and nothing else.
let pinned = await pinGhost(first.bytes);
const mine = new PatternCache(), theirs = new PatternCache();
console.log(`model ${Buffer.from(first.digest).toString('hex').slice(0, 16)}..., ${model.tensors.length} tensors; ${steps} steps of ${context} bytes`);
console.log('| step | loss | lr | proof KiB | prove ms | verify ms |');
console.log('|---|---|---|---|---|---|');
let rnd = seed;
for (let s = 0; s < steps; s++) {
  rnd = (rnd * 1103515245 + 12345) % 2 ** 31;
  const at = rnd % (text.length - context - 1);
  const input = text.subarray(at, at + context), targets = text.subarray(at + 1, at + context + 1);
  const t0 = performance.now();
  const step = await model.proveTrainStep({ input: Uint32Array.from(input), targets: Uint32Array.from(targets) }, { cache: mine });
  const t1 = performance.now();
  const v = await verifyTrainStep(pinned, step.bytes, { cache: theirs });
  const t2 = performance.now();
  pinned = v.ghost;
  console.log(`| ${s} | ${v.loss.toFixed(3)} | ${v.lr.toPrecision(3)} | ${(step.bytes.length / 1024).toFixed(1)} | ${(t1 - t0).toFixed(0)} | ${(t2 - t1).toFixed(0)} |`);
}
const last = await model.ghost();
const same = Buffer.from(last.digest).equals(Buffer.from(pinned.digest));
console.log(`verified ${steps} steps: the verifier's Ghost file ${Buffer.from(pinned.digest).toString('hex').slice(0, 16)}... ${same ? 'is' : 'is NOT'} the model's`);
process.exit(same ? 0 : 1);
