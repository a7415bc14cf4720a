/**
 * A small transformer trains with the tape and the Trainer: embedding, learned
 * positions, a residual block of causal top-k attention, a residual block with a
 * product-key memory, a final norm and a head, on next-token prediction of sequences
 * that follow a fixed rule. Its loss must fall well below the start and below the
 * entropy a model without context could reach; after training its forward proof
 * verifies, and the trained model's Ghost file differs from the untrained one's.
 */
import { describe, expect, it } from 'vitest';

import {
  Embedding,
  Linear,
  Model,
  PositionEmbedding,
  ProductKeyMemory,
  Projection,
  RMSNorm,
  Residual,
  SparseSelfAttention,
  SparseTensor,
  Tape,
  Trainer,
  init,
} from '../lib/index.js';
import { verifyForward } from '../lib/verify/proof-verify.js';
import { Rng } from './helpers/rng.js';

const VOCAB = 12, SEQ = 10, D = 16;

/**
 * A sequence: two random tokens a, b, then a b a b ... The current token says nothing of
 * the next (a model without context is stuck at ln VOCAB): the layer must attend to the
 * token before it.
 */
function sequence(rng: Rng): number[] {
  const s = [rng.int(0, VOCAB - 1), rng.int(0, VOCAB - 1)];
  while (s.length < SEQ + 1) s.push(s[s.length - 2]!);
  return s;
}

function transformer(): Model {
  let seed = 1;
  const w = (n: number, d: number, std = 0.3) => init.normal(n, d, { std, seed: seed++ });
  const ones = (d: number) => SparseTensor.fromArray(new Float32Array(d).fill(1), d);
  const proj = (m: number, d: number) => new Projection({ weight: w(m, d, 1 / Math.sqrt(d)) });
  return new Model([
    new Embedding(w(VOCAB, D, 0.5)),
    new PositionEmbedding(w(SEQ, D, 0.1)),
    new Residual([new RMSNorm({ gain: ones(D) }), new SparseSelfAttention({ heads: 2, k: 4, causal: true, query: proj(D, D), key: proj(D, D), value: proj(D, D), output: proj(D, D) })]),
    new Residual([new RMSNorm({ gain: ones(D) }), new ProductKeyMemory({ query: w(2 * 8, D, 1 / Math.sqrt(D)), keys: [[w(8, 4), w(8, 4)], [w(8, 4), w(8, 4)]], values: w(64, D, 0.05), k: 4 })]),
    new RMSNorm({ gain: ones(D) }),
    new Linear({ weight: w(VOCAB, D, 1 / Math.sqrt(D)) }),
  ]);
}

describe('a small transformer', () => {
  it('trains for 300 steps with its loss falling, and proves and verifies after', async () => {
    const model = transformer();
    const before = await model.ghost();
    const trainer = new Trainer(model, { lr: 1e-2, clipNorm: 1 });
    const rng = new Rng(7);
    const losses: number[] = [];
    for (let step = 0; step < 300; step++) {
      const s = sequence(rng);
      const tape = new Tape();
      const logits = await tape.model(model, s.slice(0, SEQ));
      const loss = tape.softmaxCrossEntropy(logits, Uint32Array.from(s.slice(1)));
      losses.push(loss.value);
      await trainer.step(await tape.backward(loss));
    }
    const mean = (a: number[]): number => a.reduce((x, y) => x + y, 0) / a.length;
    const first = losses[0]!, last = mean(losses.slice(-20));
    // A model that ignores context can do no better than ln(VOCAB) here (each token is uniform without it).
    expect(first).toBeGreaterThan(0.8 * Math.log(VOCAB));
    expect(last).toBeLessThan(0.35 * first);
    expect(last).toBeLessThan(0.5 * Math.log(VOCAB));
    // The trained model proves its forward pass; the proof verifies against its new Ghost file.
    const ghost = await model.ghost();
    expect(Buffer.from(ghost.digest).equals(Buffer.from(before.digest))).toBe(false);
    const s = sequence(rng);
    const proved = await model.prove(s.slice(0, SEQ));
    const v = await verifyForward(ghost, proved.bytes);
    expect(v.rows).toBe(SEQ);
    expect(v.cols).toBe(VOCAB);
    // Its predictions follow the rule from the second token on (the first has no context).
    let right = 0;
    for (let i = 1; i < SEQ; i++) {
      const row = Array.from(v.output.subarray(i * VOCAB, (i + 1) * VOCAB));
      if (row.indexOf(Math.max(...row)) === s[i + 1]) right++;
    }
    expect(right).toBeGreaterThanOrEqual(7);
  }, 120_000);
});
