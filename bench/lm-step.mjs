#!/usr/bin/env node
/**
 * Training step of a small dense byte-level transformer: this library's layers against
 * TensorFlow.js on the same architecture, in one process.
 *
 *   node bench/lm-step.mjs            S=128 D=128 L=2 and S=128 D=256 L=4 (~2-3 min on 2 cores)
 *   node bench/lm-step.mjs --quick    the same two shapes, fewer steps (under a minute)
 *
 * The model (vocab 256, one sequence of S bytes per step, next-byte targets):
 *   Embedding(256 x D) -> + learned positions (S x D)
 *   -> L x [ x + Attn(RMSNorm(x)),  x + Down(silu(Gate(h)) * Up(h)), h = RMSNorm(x) ]
 *   -> RMSNorm -> Linear head (256 x D) -> mean softmax cross-entropy.
 * Attn: 4 heads, causal, dense projections Q, K, V, O (D x D, no bias); the MLP has
 * hidden 4D, no bias (SwiGLU); RMSNorm eps 1e-6 with a learned gain. A step =
 * forward + backward + global-norm clipping to 1 + Adam (lr 1e-3). Variants:
 *
 *   ours-dense   SparseSelfAttention mode 'dense' (flash-style kernel), the layers
 *                driven by Tape calls (a dense layer cannot stand in a proved Model),
 *                Trainer (SparseAdam over every row touched, each tensor's Merkle
 *                tree uncommitted, clipNorm 1).
 *   ours-dense x2  the same, two sequences per step: two tapes run concurrently
 *                (Promise.all; one's JavaScript runs while the other's native jobs do)
 *                and mergeGradients makes one step of them (the mean of the two losses).
 *   ours-topk    the same weights' shape as a Model (Residual / GatedMLP blocks) with
 *                SparseSelfAttention mode 'sparse', k = S: every visible key, selected by
 *                the exact top-k scan (what a proved model runs; bench/lm-probe.mjs).
 *   tfjs-wasm    @tensorflow/tfjs 4.22 on the WebAssembly backend: tf.matMul,
 *                tf.softmax with an additive causal mask, tf.variableGrads, the global
 *                norm and the clip as tf ops, tf.train.adam(1e-3).applyGradients
 *                (dense Adam over every parameter, the whole embedding table included).
 *                The embedding is one-hot(ids) x table (the wasm backend has no
 *                UnsortedSegmentSum kernel for tf.gather's gradient).
 *   tfjs-cpu     the same on tfjs's plain-JavaScript cpu backend (small shape only).
 *
 * The variants run in interleaved rounds (a few steps of each in turn), so load from
 * other processes on a shared machine falls on all of them; the figure per variant is
 * the median step over all rounds, after warm-up steps. tokens/s = S x sequences per
 * step / median step.
 * Prints a table to stdout, progress to stderr; writes bench/results/lm-step.json.
 */
import { CORES, cpuHogs, fmt, logger, machine, nowMs, rng, gaussian, round, stats, table, writeResults } from './lib/common.mjs';

const QUICK = process.argv.includes('--quick');
const log = logger('lm-step');
const lib = await import('../dist/index.js');
const { Embedding, Linear, Model, PositionEmbedding, Projection, RMSNorm, Residual, GatedMLP, Glu, SparseSelfAttention, SparseTensor, Tape, Trainer, mergeGradients, simdInfo } = lib;

const V = 256, HEADS = 4, LR = 1e-3, CLIP = 1, EPS = 1e-6;
const SHAPES = [
  { S: 128, D: 128, L: 2, hidden: 512 },
  { S: 128, D: 256, L: 4, hidden: 1024 },
];
const P = {
  quick: QUICK,
  warmSteps: QUICK ? 2 : 3,
  rounds: QUICK ? 3 : 5,
  stepsPerRound: QUICK ? 2 : 4,
  // tfjs-cpu is slow: fewer steps, small shape only
  cpuShapes: 1,
  cpuStepsPerRound: 1,
  largeTfjsStepsPerRound: QUICK ? 1 : 2,
};

/** Initial weights, shared by every variant of a shape (std 1/sqrt(fan-in); embeddings 0.5, positions 0.1). */
function makeWeights({ S, D, L, hidden }, seed) {
  const r = rng(seed);
  const normal = (n, std) => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = gaussian(r) * std;
    return a;
  };
  const blocks = [];
  for (let l = 0; l < L; l++) {
    blocks.push({
      q: normal(D * D, 1 / Math.sqrt(D)), k: normal(D * D, 1 / Math.sqrt(D)), v: normal(D * D, 1 / Math.sqrt(D)), o: normal(D * D, 1 / Math.sqrt(D)),
      gate: normal(hidden * D, 1 / Math.sqrt(D)), up: normal(hidden * D, 1 / Math.sqrt(D)), down: normal(D * hidden, 1 / Math.sqrt(hidden)),
    });
  }
  return { emb: normal(V * D, 0.5), pos: normal(S * D, 0.1), blocks, head: normal(V * D, 1 / Math.sqrt(D)) };
}

/** Random byte sequences of S + 1 (inputs and next-byte targets). */
function makeBatches(S, count, seed) {
  const r = rng(seed);
  return Array.from({ length: count }, () => Uint32Array.from({ length: S + 1 }, () => Math.floor(r() * V)));
}

// ---------------------------------------------------------------- ours

function oursModel(shape, w, mode) {
  const { S, D } = shape;
  const t = (a, dim) => SparseTensor.fromArray(a.slice(), dim);
  const ones = () => t(new Float32Array(D).fill(1), D);
  const proj = (a) => new Projection({ weight: t(a, D) });
  const emb = new Embedding(t(w.emb, D)), pos = new PositionEmbedding(t(w.pos, D));
  const blocks = w.blocks.map((b) => ({
    n1: new RMSNorm({ gain: ones(), eps: EPS }),
    attn: new SparseSelfAttention({ heads: HEADS, k: S, causal: true, mode, query: proj(b.q), key: proj(b.k), value: proj(b.v), output: proj(b.o) }),
    n2: new RMSNorm({ gain: ones(), eps: EPS }),
    gate: new Linear({ weight: t(b.gate, D) }), up: new Linear({ weight: t(b.up, D) }), down: new Linear({ weight: t(b.down, shape.hidden) }),
    glu: new Glu(),
  }));
  const nf = new RMSNorm({ gain: ones(), eps: EPS }), head = new Linear({ weight: t(w.head, D) });
  if (mode === 'sparse') {
    const layers = [emb, pos];
    for (const b of blocks) {
      layers.push(new Residual([b.n1, b.attn]));
      layers.push(new Residual([b.n2, new GatedMLP({ gate: b.gate, up: b.up, down: b.down })]));
    }
    layers.push(nf, head);
    const model = new Model(layers);
    return { forward: (tape, ids) => tape.model(model, ids), trainer: new Trainer(model, { lr: LR, clipNorm: CLIP }) };
  }
  const forward = async (tape, ids) => {
    let x = await tape.layer(pos, await tape.layer(emb, ids));
    for (const b of blocks) {
      x = tape.add(x, await tape.layer(b.attn, await tape.layer(b.n1, x)));
      const h = await tape.layer(b.n2, x);
      const g = await tape.layer(b.gate, h), u = await tape.layer(b.up, h);
      x = tape.add(x, await tape.layer(b.down, await tape.layer(b.glu, g, u)));
    }
    return tape.layer(head, await tape.layer(nf, x));
  };
  const layers = [emb, pos, ...blocks.flatMap((b) => [b.n1, b.attn, b.n2, b.gate, b.up, b.down, b.glu]), nf, head];
  return { forward, trainer: new Trainer(layers, { lr: LR, clipNorm: CLIP }) };
}

function oursVariant(shape, w, mode) {
  const m = oursModel(shape, w, mode);
  const S = shape.S;
  const one = async (seq) => {
    const tape = new Tape();
    const logits = await m.forward(tape, seq.subarray(0, S));
    const loss = tape.softmaxCrossEntropy(logits, seq.subarray(1));
    return { grads: await tape.backward(loss), loss: loss.value };
  };
  return {
    // One tape per sequence; several run concurrently and their gradients are merged.
    async step(seqs) {
      if (seqs.length === 1) {
        const r = await one(seqs[0]);
        await m.trainer.step(r.grads);
        return r.loss;
      }
      const rs = await Promise.all(seqs.map(one));
      await m.trainer.step(mergeGradients(rs.map((r) => r.grads)));
      return rs.reduce((a, r) => a + r.loss, 0) / rs.length;
    },
  };
}

// ---------------------------------------------------------------- tfjs

async function tfjsBackend(name) {
  const tf = await import('@tensorflow/tfjs');
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  if (!(await tf.setBackend(name))) throw new Error(`tf.setBackend("${name}") failed`);
  await tf.ready();
  return tf;
}

let tfjsModels = 0;
function tfjsVariant(tf, shape, w) {
  const { S, D, hidden } = shape;
  const prefix = `m${tfjsModels++}.`; // variable names are global to tfjs
  const dk = D / HEADS;
  const vars = [];
  const v = (a, dims, name) => {
    const x = tf.variable(tf.tensor(a, dims), true, `${prefix}${name}${vars.length}`);
    vars.push(x);
    return x;
  };
  const ones = () => new Float32Array(D).fill(1);
  const M = {
    emb: v(w.emb, [V, D], 'emb'), pos: v(w.pos, [S, D], 'pos'),
    blocks: w.blocks.map((b) => ({
      g1: v(ones(), [D], 'g1'), q: v(b.q, [D, D], 'q'), k: v(b.k, [D, D], 'k'), v: v(b.v, [D, D], 'v'), o: v(b.o, [D, D], 'o'),
      g2: v(ones(), [D], 'g2'), gate: v(b.gate, [hidden, D], 'gate'), up: v(b.up, [hidden, D], 'up'), down: v(b.down, [D, hidden], 'down'),
    })),
    gf: v(ones(), [D], 'gf'), head: v(w.head, [V, D], 'head'),
  };
  // 0 on and below the diagonal, -1e9 above: added to the scores.
  const mask = tf.tidy(() => tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([S, S]), -1, 0)), -1e9));
  const rms = (x, g) => tf.mul(tf.mul(x, tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), EPS))), g);
  const lin = (x, W) => tf.matMul(x, W, false, true); // x W^T, W: out x in
  const heads = (x) => tf.transpose(tf.reshape(x, [S, HEADS, dk]), [1, 0, 2]);
  const lossOf = (ids, targets) => () => {
    // one-hot x table: the wasm backend has no UnsortedSegmentSum, tf.gather's gradient
    let x = tf.add(tf.matMul(tf.oneHot(ids, V).toFloat(), M.emb), M.pos);
    for (const b of M.blocks) {
      const h = rms(x, b.g1);
      const q = heads(lin(h, b.q)), k = heads(lin(h, b.k)), vv = heads(lin(h, b.v));
      const p = tf.softmax(tf.add(tf.mul(tf.matMul(q, k, false, true), 1 / Math.sqrt(dk)), mask));
      const a = tf.reshape(tf.transpose(tf.matMul(p, vv), [1, 0, 2]), [S, D]);
      x = tf.add(x, lin(a, b.o));
      const h2 = rms(x, b.g2);
      const g = lin(h2, b.gate);
      x = tf.add(x, lin(tf.mul(tf.mul(g, tf.sigmoid(g)), lin(h2, b.up)), b.down));
    }
    const logits = lin(rms(x, M.gf), M.head);
    return tf.losses.softmaxCrossEntropy(tf.oneHot(targets, V), logits);
  };
  const opt = tf.train.adam(LR);
  return {
    vars,
    async step([seq]) {
      const ids = tf.tensor1d(Int32Array.from(seq.subarray(0, S)), 'int32');
      const targets = tf.tensor1d(Int32Array.from(seq.subarray(1)), 'int32');
      const { value, grads } = tf.variableGrads(lossOf(ids, targets), vars);
      const clipped = tf.tidy(() => {
        const names = Object.keys(grads);
        const norm = tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(grads[n])))));
        const scale = tf.minimum(1, tf.div(CLIP, norm));
        return Object.fromEntries(names.map((n) => [n, tf.mul(grads[n], scale)]));
      });
      opt.applyGradients(clipped);
      const loss = (await value.data())[0];
      tf.dispose([ids, targets, value, ...Object.values(grads), ...Object.values(clipped)]);
      return loss;
    },
    dispose() {
      tf.dispose([...vars, mask]);
      opt.dispose();
    },
  };
}

// ---------------------------------------------------------------- run

/** FLOPs of one step (2 per multiply-add; backward = 2 x forward for the matrix products, causal attention half the scores). */
function flopsPerStep({ S, D, L, hidden }) {
  const perLayer = 2 * S * (4 * D * D + 3 * D * hidden) + 2 * 2 * (S * S / 2) * D;
  return 3 * (L * perLayer + 2 * S * V * D);
}

const env = { simd: simdInfo(), cores: CORES };
log(`simd ${JSON.stringify(env.simd)}`);
const tfWasm = await tfjsBackend('wasm');
const tfEnv = {
  tfjs: tfWasm.version.tfjs,
  wasmSimd: await tfWasm.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
  wasmThreads: await tfWasm.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'),
};
log(`tfjs ${JSON.stringify(tfEnv)}`);

const results = [];
for (const [si, shape] of SHAPES.entries()) {
  const w = makeWeights(shape, 7 + si);
  const seqs = makeBatches(shape.S, 16, 99 + si);
  const variants = [
    { name: 'ours-dense', make: async () => oursVariant(shape, w, 'dense') },
    // (skipped on a checkout without mergeGradients, to measure an older build)
    ...(mergeGradients ? [{ name: 'ours-dense x2', batch: 2, make: async () => oursVariant(shape, w, 'dense') }] : []),
    { name: 'ours-topk', make: async () => oursVariant(shape, w, 'sparse') },
    // tfjs-wasm is several times slower: fewer steps a round on the larger shape
    { name: 'tfjs-wasm', make: async () => tfjsVariant(await tfjsBackend('wasm'), shape, w), ...(si > 0 ? { steps: P.largeTfjsStepsPerRound } : {}) },
  ];
  if (si < P.cpuShapes) variants.push({ name: 'tfjs-cpu', make: async () => tfjsVariant(await tfjsBackend('cpu'), shape, w), steps: P.cpuStepsPerRound, warm: 1 });
  // tfjs holds one backend at a time: each tfjs variant switches to its own before stepping.
  const live = [];
  for (const vdef of variants) {
    const backend = vdef.name.startsWith('tfjs') ? vdef.name.slice(5) : null;
    const inst = await vdef.make();
    live.push({ batch: 1, ...vdef, backend, inst, samples: [], losses: [] });
  }
  let seqAt = 0;
  const run = async (x, count, keep) => {
    if (x.backend) await tfjsBackend(x.backend);
    for (let i = 0; i < count; i++) {
      const batch = Array.from({ length: x.batch }, () => seqs[seqAt++ % seqs.length]);
      const t0 = nowMs();
      const loss = await x.inst.step(batch);
      const dt = nowMs() - t0;
      if (keep) {
        x.samples.push(dt);
        x.losses.push(loss);
      }
    }
  };
  log(`S=${shape.S} D=${shape.D} L=${shape.L}: warm-up`);
  for (const x of live) await run(x, x.warm ?? P.warmSteps, false);
  for (let r = 0; r < P.rounds; r++) {
    for (const x of live) await run(x, x.steps ?? P.stepsPerRound, true);
    log(`  round ${r + 1}/${P.rounds}: ${live.map((x) => `${x.name} ${fmt(stats(x.samples).median)} ms`).join(', ')}`);
  }
  const flops = flopsPerStep(shape);
  for (const x of live) {
    const st = stats(x.samples);
    results.push({
      shape: `S${shape.S} D${shape.D} L${shape.L}`, ...shape, variant: x.name, sequencesPerStep: x.batch,
      stepMs: round(st.median), p10Ms: round(st.p10), p90Ms: round(st.p90), steps: st.reps,
      tokensPerS: round((x.batch * shape.S * 1000) / st.median), gflops: round((x.batch * flops) / st.median / 1e6),
      lastLoss: round(x.losses[x.losses.length - 1]),
    });
    if (x.backend) x.inst.dispose();
  }
}
for (const r of results) {
  const base = results.find((q) => q.shape === r.shape && q.variant === 'tfjs-wasm');
  r.speedupOverTfjsWasm = base ? round(r.tokensPerS / base.tokensPerS, 3) : null;
}

table(results, [
  'shape', 'variant', { key: 'sequencesPerStep', header: 'seq/step' },
  { key: 'stepMs', header: 'step ms (median)' }, { key: 'p10Ms', header: 'p10' }, { key: 'p90Ms', header: 'p90' },
  { key: 'tokensPerS', header: 'tokens/s' }, { key: 'gflops', header: 'GFLOP/s' },
  { key: 'speedupOverTfjsWasm', header: 'x tfjs-wasm' }, { key: 'lastLoss', header: 'loss' },
], {
  title: 'LM training step (one sequence of S bytes per step)',
  notes: [
    'step = forward + backward + clip to global norm 1 + Adam (lr 1e-3); tokens/s = S x sequences per step / median step.',
    'GFLOP/s: 3 x forward multiply-add flops (2 per multiply-add; causal attention counts half the scores).',
    `simd ${env.simd.level ?? JSON.stringify(env.simd)}; tfjs ${tfEnv.tfjs} wasm simd ${tfEnv.wasmSimd} threads ${tfEnv.wasmThreads}`,
  ],
});
const hogs = cpuHogs();
if (hogs.length > 0) console.log(`\n  other processes using CPU:\n    ${hogs.join('\n    ')}`);
const file = writeResults('lm-step', {
  date: new Date().toISOString(),
  machine: machine({ simd: env.simd }),
  tfjs: tfEnv,
  parameters: { ...P, vocab: V, heads: HEADS, lr: LR, clipNorm: CLIP, eps: EPS, shapes: SHAPES },
  otherProcesses: hogs,
  results,
});
log(`wrote ${file}`);
