/**
 * The prover's C++ mirrors of the language-model kinds (native/src/core/canonical_step.cc,
 * lib/model/train/step-native.ts) against the verifier's TypeScript: Linear (dense and
 * top-k, with and without a bias), attention (its projections, the top-k selection
 * re-derived, causal or not, shared projection tensors), RMSNorm, the gated MLP and the
 * product-key memory layer's backward;
 * bit for bit on random and hostile inputs (zeros, -0, ties, huge and tiny values, NaN and
 * infinities, which the TypeScript takes), the same refusals, and whole proved LM steps
 * with the mirrors on and off giving the same proof bytes and digests.
 */
import { describe, expect, it } from 'vitest';

import { languageModel, pinGhost, ProofError, verifyTrainStep } from '../lib/index.js';
import { GradientAccumulator } from '../lib/verify/backward.js';
import type { GhostManifest } from '../lib/verify/ghost-file.js';
import { attentionSpec, type AttentionSaved, type GhostAttentionLayer, type GhostProjection } from '../lib/verify/kinds/attention.js';
import { gluSpec, type GhostGluLayer } from '../lib/verify/kinds/glu.js';
import type { GhostLayer } from '../lib/verify/kinds/index.js';
import { linearSpec, type GhostLinearLayer } from '../lib/verify/kinds/linear.js';
import { memorySpec, type GhostMemoryLayer, type MemorySaved } from '../lib/verify/kinds/memory.js';
import { rmsnormSpec, type GhostRmsNormLayer } from '../lib/verify/kinds/rmsnorm.js';
import type { BackwardContext, LayerSpec, Revealed, TrainedForward, VerifyLayerContext } from '../lib/verify/layer-spec.js';
import {
  attentionBackwardNative, attentionTrainForwardNative, gluBackwardNative, gluForwardNative, linearBackwardNative, memoryBackwardNative, linearTrainForwardNative, rmsnormBackwardNative, stepNative,
} from '../lib/model/train/step-native.js';
import { native } from '../lib/tensor/native.js';
import { bits, values } from './helpers/bit-values.js';
import { Rng } from './helpers/rng.js';


interface Kind { hostile: boolean; nonFinite?: boolean; ties?: boolean }

/**
 * One layer over tensors (rows x dim each, revealed whole): the forward context, the
 * backward context over a given accumulator and a fresh accumulator that already holds
 * other layers' contributions on some rows (the same start for both sides).
 */
function layerCase(rng: Rng, l: GhostLayer, shapes: [number, number][], inputs: Float32Array[], n: number, k: Kind) {
  const root = new Uint8Array(32);
  const tensors = shapes.map(([rows, dim]) => ({ n: rows, dim, root }));
  const data = shapes.map(([rows, dim]) => {
    const t = values(rng, rows * dim, k.hostile, k.nonFinite);
    // Ties: rows 1 and 2 repeat row 0 (equal scores: the lower index wins).
    if (k.ties && rows >= 3) for (const r of [1, 2]) t.copyWithin(r * dim, 0, dim);
    return t;
  });
  const manifest = { version: 3, layers: [l], tensors } as unknown as GhostManifest;
  const evidence = { op: l.op, stages: [], blocks: [] } as never;
  const fctx = (): VerifyLayerContext & { revealed: Map<number, Revealed> } => {
    const revealed = new Map<number, Revealed>();
    return {
      manifest, evidence, index: 0, rows: n, ids: null, x: inputs[0]!, inputs, revealed,
      reveal: (need) => {
        for (const [t, want] of need) {
          expect(want).toBe('all');
          const [rows, dim] = shapes[t]!;
          revealed.set(t, { tensor: t, dim, ids: Uint32Array.from({ length: rows }, (_, i) => i), rows: data[t]!, root, all: true });
        }
        return revealed;
      },
    };
  };
  const prior = shapes.map(([rows, dim]) => Array.from({ length: rows }, () => values(rng, dim, false)));
  const fresh = (): GradientAccumulator => {
    const acc = new GradientAccumulator(manifest);
    shapes.forEach(([rows], t) => {
      for (let id = 0; id < rows; id += 3) acc.row(t, id).set(prior[t]![id]!);
    });
    return acc;
  };
  const bctx = (f: TrainedForward, revealed: Map<number, Revealed>, acc: GradientAccumulator): BackwardContext => ({
    manifest, index: 0, rows: n, ids: null, inputs, evidence, revealed, y: f.y, saved: f.saved,
    grad: (t, id) => {
      if (!revealed.has(t)) throw new ProofError('BLOCK_IDS', `tensor ${t} not revealed`);
      return acc.row(t, id);
    },
  });
  return { manifest, fctx, fresh, bctx, data };
}

/** The accumulators of both sides: the same rows taken, the same f64 bits in each. */
function sameAccumulators(a: GradientAccumulator, b: GradientAccumulator): void {
  const ra = a.result(), rb = b.result();
  expect(rb.map((t) => [t.tensor, bits(t.ids)])).toEqual(ra.map((t) => [t.tensor, bits(t.ids)]));
  for (const t of ra) for (const id of t.ids) expect(bits(b.row(t.tensor, id)), `tensor ${t.tensor} row ${id}`).toBe(bits(a.row(t.tensor, id)));
}

/** Both sides' forward and backward of one layer: every output, saved value and accumulator bit equal. */
function compare(
  spec: LayerSpec<GhostLayer>, l: GhostLayer, c: ReturnType<typeof layerCase>, dy: Float32Array,
  nfwd: ((l: never, ctx: VerifyLayerContext) => TrainedForward | null) | null, nback: (ctx: BackwardContext, dy: Float32Array) => Float32Array[] | null,
  savedBits: (s: unknown) => string[],
): void {
  const ft = c.fctx(), fn = c.fctx();
  const fT = spec.trainForward ? spec.trainForward(l, ft) : { y: spec.verify(l, ft), saved: undefined };
  const fN = nfwd ? nfwd(l as never, fn) : (fn.reveal(new Map([...ft.revealed.keys()].map((t) => [t, 'all' as const]))), fT);
  expect(fN).not.toBeNull();
  expect(bits(fN!.y)).toBe(bits(fT.y));
  expect(savedBits(fN!.saved)).toEqual(savedBits(fT.saved));
  const aT = c.fresh(), aN = c.fresh();
  const dxT = spec.backward!(l, c.bctx(fT, ft.revealed, aT), dy);
  const dxN = nback(c.bctx(fN!, fn.revealed, aN), dy);
  expect(dxN).not.toBeNull();
  expect(dxN!.map(bits)).toEqual(dxT.map(bits));
  sameAccumulators(aT, aN);
}

const KINDS: Kind[] = [{ hostile: false }, { hostile: true }, { hostile: true, nonFinite: true }, { hostile: false, ties: true }];

describe('native Linear forward and backward = the verifier\'s TypeScript, bit for bit', () => {
  const run = (seed: number, kp: number, bias: boolean, k: Kind): void => {
    const rng = new Rng(seed);
    const n = 6, dIn = 5, m = 9;
    const l: GhostLinearLayer = { op: 'linear', dIn, dOut: m, weight: 0, k: kp, bias: bias ? 1 : null };
    const x = values(rng, n * dIn, k.hostile, k.nonFinite);
    if (k.ties) x.fill(0, 0, dIn); // row 0 all zero: every score 0, the top-k is the lowest columns
    const c = layerCase(rng, l, bias ? [[m, dIn], [1, m]] : [[m, dIn]], [x], n, k);
    const dy = values(rng, n * m, k.hostile, k.nonFinite);
    compare(linearSpec as LayerSpec<GhostLayer>, l, c, dy, linearTrainForwardNative, (ctx, d) => {
      const dx = linearBackwardNative(l, ctx, d);
      return dx === null ? null : [dx];
    }, (s) => [bits(s as Uint32Array | null)]);
  };
  it('dense and top-k (3 of 9), with and without a bias: random, hostile, NaN and infinities, ties', () => {
    let seed = 10;
    for (const kp of [9, 3, 1]) for (const bias of [false, true]) for (const k of KINDS) run(seed++, kp, bias, k);
  });
  it('a weight the forward did not reveal whole is refused as the TypeScript refuses it (BLOCK_IDS)', () => {
    const rng = new Rng(4);
    const l: GhostLinearLayer = { op: 'linear', dIn: 3, dOut: 4, weight: 0, k: 4, bias: null };
    const x = values(rng, 6, false);
    const c = layerCase(rng, l, [[4, 3]], [x], 2, { hostile: false });
    const f = c.fctx();
    const fT = linearSpec.trainForward!(l, f);
    const cut = new Map(f.revealed);
    cut.set(0, { ...f.revealed.get(0)!, all: false });
    const reason = (g: () => unknown): string => {
      try {
        g();
      } catch (e) {
        return e instanceof ProofError ? `${e.reason}: ${e.message}` : String(e);
      }
      return 'ACCEPTED';
    };
    const t = reason(() => linearSpec.backward!(l, c.bctx(fT, cut, c.fresh()), new Float32Array(8)));
    expect(t).toMatch(/^BLOCK_IDS: /);
    expect(reason(() => linearBackwardNative(l, c.bctx(fT, cut, c.fresh()), new Float32Array(8)))).toBe(t);
    // A sparse layer without its kept columns: left to the TypeScript (which says SHAPE).
    expect(linearBackwardNative({ ...l, k: 2 }, c.bctx({ y: fT.y, saved: null }, f.revealed, c.fresh()), new Float32Array(8))).toBeNull();
  });
});

describe('native attention forward and backward = the verifier\'s TypeScript, bit for bit', () => {
  const savedBits = (s: unknown): string[] => {
    const a = s as AttentionSaved;
    return [bits(a.q), bits(a.k), bits(a.v), bits(a.o), bits(a.kept.query), bits(a.kept.key), bits(a.kept.value), bits(a.kept.output), String(a.kk), bits(a.top), bits(a.weights)];
  };
  interface Shape { causal: boolean; kTop: number; proj: 'all' | 'none' | 'sparse' | 'shared' }
  const run = (seed: number, s: Shape, k: Kind): void => {
    const rng = new Rng(seed);
    const n = 7, dIn = 8, D = 8, heads = 2;
    // Tensors: query, key, value (D x dIn), output (dIn x D); 'shared': query and key one tensor.
    const P = (t: number, kp: number): GhostProjection => ({ tensor: t, k: kp });
    const sp = s.proj === 'sparse' ? 5 : D;
    const l: GhostAttentionLayer = {
      op: 'attention', dIn, dOut: dIn, heads, k: s.kTop, causal: s.causal, scale: Math.fround(k.hostile ? 3 : 0.35),
      query: s.proj === 'none' ? null : P(0, sp), key: s.proj === 'none' ? null : P(s.proj === 'shared' ? 0 : 1, sp),
      value: s.proj === 'none' ? null : P(2, D), output: s.proj === 'none' ? null : P(3, s.proj === 'sparse' ? 6 : dIn),
    };
    const x = values(rng, n * dIn, k.hostile, k.nonFinite);
    if (k.ties) x.fill(0, dIn, 2 * dIn); // row 1 zero: its scores tie at 0
    const c = layerCase(rng, l, [[D, dIn], [D, dIn], [D, dIn], [dIn, D]], [x], n, k);
    const dy = values(rng, n * dIn, k.hostile, k.nonFinite);
    compare(attentionSpec as LayerSpec<GhostLayer>, l, c, dy, attentionTrainForwardNative, (ctx, d) => {
      const dx = attentionBackwardNative(l, ctx, d);
      return dx === null ? null : [dx];
    }, savedBits);
  };
  it('causal and not, k below and above the sequence, projections dense, absent, top-k and shared: random, hostile, NaN and infinities, ties', () => {
    let seed = 300;
    for (const causal of [true, false]) {
      for (const kTop of [3, 16]) {
        for (const proj of ['all', 'none', 'sparse', 'shared'] as const) for (const k of KINDS) run(seed++, { causal, kTop, proj }, k);
      }
    }
  });
  it('leaves to the TypeScript what it should report (no saved state, a projection not revealed whole)', () => {
    const rng = new Rng(8);
    const l: GhostAttentionLayer = { op: 'attention', dIn: 4, dOut: 4, heads: 1, k: 2, causal: true, scale: 0.5, query: { tensor: 0, k: 4 }, key: null, value: null, output: null };
    const c = layerCase(rng, l, [[4, 4]], [values(rng, 12, false)], 3, { hostile: false });
    const f = c.fctx();
    const fN = attentionTrainForwardNative(l, f)!;
    expect(attentionBackwardNative(l, c.bctx({ y: fN.y, saved: undefined }, f.revealed, c.fresh()), new Float32Array(12))).toBeNull();
    const cut = new Map(f.revealed);
    cut.set(0, { ...f.revealed.get(0)!, all: false });
    expect(attentionBackwardNative(l, c.bctx(fN, cut, c.fresh()), new Float32Array(12))).toBeNull();
  });
  it('the bindings refuse out-of-range rows and bad shapes before any work', () => {
    const nat = native();
    const f32 = (len: number): Float32Array => new Float32Array(len), f64 = (len: number): Float64Array => new Float64Array(len);
    // n 2, D 2, 1 head, kTop 1 (kk 1)
    expect(() => nat.canonicalAttentionCoreBackward(f32(4), f32(4), f32(4), Uint32Array.of(0, 2), f64(2), f64(4), f64(4), f64(4), f64(4), 2, 1, 1, false, 0.5)).toThrow(/top\[1\] = 2 is not below 2/);
    expect(() => nat.canonicalAttentionCore(f32(4), f32(4), f32(4), f32(4), new Uint32Array(2), f64(2), 2, 3, 1, false, 0.5)).toThrow(/multiple of heads/);
    expect(() => nat.canonicalAttentionCore(f32(4), f32(4), f32(4), f32(4), new Uint32Array(2), f64(2), 2, 1, 1, false, 0.1)).toThrow(/scale must be an f32 value/);
    // n 2, inDim 2, m 3, kp 1
    expect(() => nat.canonicalProjectionBackward(f32(4), f32(6), Uint32Array.of(0, 3), f32(6), f64(4), f64(6), f64(0), 2, 2, 3, 1)).toThrow(/kept\[1\] = 3 is not below 3/);
    expect(() => nat.canonicalProjectionBackward(f32(4), f32(6), new Uint32Array(0), f32(5), f64(4), f64(6), f64(0), 2, 2, 3, 3)).toThrow(/dP has length 5/);
    expect(() => nat.canonicalLinearTrain(f32(4), f32(6), null, 2, 2, 3, 1, f32(6), new Uint32Array(1))).toThrow(/kept has length 1/);
    expect(() => nat.canonicalRmsNormBackward(f32(4), f32(4), f32(2), 2, 2, 0.1, f32(4), f64(2))).toThrow(/eps must be an f32 value/);
    expect(() => nat.canonicalGluBackward(f32(4), f32(4), f32(3), f32(4), f32(4))).toThrow(/dy has length 3/);
  });
});

describe('native RMSNorm backward and gated-MLP forward and backward = the verifier\'s TypeScript, bit for bit', () => {
  it('RMSNorm: random, hostile, NaN and infinities, zero rows', () => {
    let seed = 600;
    for (const k of KINDS) {
      for (const eps of [Math.fround(1e-5), Math.fround(1e-30)]) {
        const rng = new Rng(seed++);
        const n = 5, d = 11;
        const l: GhostRmsNormLayer = { op: 'rmsnorm', dim: d, gain: 0, eps };
        const x = values(rng, n * d, k.hostile, k.nonFinite);
        if (k.ties) x.fill(0, 0, d).fill(-0, d, 2 * d);
        const c = layerCase(rng, l, [[1, d]], [x], n, k);
        const dy = values(rng, n * d, k.hostile, k.nonFinite);
        compare(rmsnormSpec as LayerSpec<GhostLayer>, l, c, dy, null, (ctx, g) => {
          const dx = rmsnormBackwardNative(l, ctx, g);
          return dx === null ? null : [dx];
        }, () => []);
      }
    }
  });
  it('glu forward and backward: random, hostile, NaN and infinities, gates past exp\'s range', () => {
    let seed = 700;
    for (const k of KINDS) {
      const rng = new Rng(seed++);
      const n = 4, d = 13;
      const l: GhostGluLayer = { op: 'glu', dim: d, activation: 'silu' };
      const gate = values(rng, n * d, k.hostile, k.nonFinite), up = values(rng, n * d, k.hostile, k.nonFinite);
      gate.set([-750, -709.8, -709.6, 745.3, 88, -88, 0, -0, 1e-45]);
      const c = layerCase(rng, l, [], [gate, up], n, k);
      compare(gluSpec as LayerSpec<GhostLayer>, l, c, values(rng, n * d, k.hostile, k.nonFinite), (_l, ctx) => gluForwardNative(ctx), (ctx, g) => gluBackwardNative(ctx, g), () => []);
    }
  });
});


describe('native product-key memory backward = the verifier\'s TypeScript, bit for bit', () => {
  // 2 heads of dk = 3 + 2, 4^2 slots of 5, k = 3; the values revealed in part (the slots the stages name).
  const run = (seed: number, k: Kind, repeat: boolean): void => {
    const rng = new Rng(seed);
    const B = 4, H = 2, kk = 3, n = 4, d1 = 3, d2 = 2, dk = d1 + d2, dIn = 6, dv = 5;
    const l: GhostMemoryLayer = { op: 'memory', dIn, dOut: dv, heads: H, k: kk, subKeys: n, beta: Math.fround(k.hostile ? 20 : 1.5), query: 0, keys: [1, 2, 3, 4], values: 5 };
    const shapes: [number, number][] = [[H * dk, dIn], [n, d1], [n, d2], [n, d1], [n, d2], [n * n, dv]];
    const root = new Uint8Array(32);
    const manifest = { version: 3, layers: [l], tensors: shapes.map(([rows, dim]) => ({ n: rows, dim, root })) } as unknown as GhostManifest;
    const data = shapes.map(([rows, dim]) => values(rng, rows * dim, k.hostile, k.nonFinite));
    // Slots per (input, head): distinct within the head; `repeat`: every input picks the same (accumulators shared across inputs).
    const stages = Array.from({ length: H }, () => {
      const st = new Uint32Array(B * kk);
      for (let b = 0; b < B; b++) {
        const pick = new Set<number>();
        while (pick.size < kk) pick.add(repeat && b > 0 ? st[pick.size]! : rng.int(0, n * n - 1));
        st.set([...pick], b * kk);
      }
      return st;
    });
    const used = Uint32Array.from(new Set(stages.flatMap((st) => [...st]))).sort();
    const revealed = new Map<number, Revealed>();
    shapes.forEach(([rows, dim], t) => {
      if (t === 5) {
        const r = new Float32Array(used.length * dim);
        used.forEach((id, i) => r.set(data[t]!.subarray(id * dim, (id + 1) * dim), i * dim));
        revealed.set(t, { tensor: t, dim, ids: used, rows: r, root, all: false });
      } else revealed.set(t, { tensor: t, dim, ids: Uint32Array.from({ length: rows }, (_, i) => i), rows: data[t]!, root, all: true });
    });
    const x = values(rng, B * dIn, k.hostile, k.nonFinite);
    const a = Float64Array.from({ length: B * H * kk }, () => (k.nonFinite && rng.next() < 0.1 ? NaN : rng.next()));
    const saved: MemorySaved = { q: values(rng, B * H * dk, k.hostile, k.nonFinite), s: new Float64Array(B * H * kk), a };
    const dy = values(rng, B * dv, k.hostile, k.nonFinite);
    const evidence = { op: 'memory', stages, blocks: [] } as never;
    const fresh = (): GradientAccumulator => {
      const acc = new GradientAccumulator(manifest);
      acc.row(5, used[0]!).set(values(new Rng(seed + 1), dv, false));
      acc.row(0, 2).set(values(new Rng(seed + 2), dIn, false));
      return acc;
    };
    const ctx = (acc: GradientAccumulator): BackwardContext => ({
      manifest, index: 0, rows: B, ids: null, inputs: [x], evidence, revealed, y: new Float32Array(B * dv), saved,
      grad: (t, id) => acc.row(t, id),
    });
    const aT = fresh(), aN = fresh();
    const dxT = memorySpec.backward!(l, ctx(aT), dy)[0]!;
    const dxN = memoryBackwardNative(l, ctx(aN), dy);
    expect(dxN).not.toBeNull();
    expect(bits(dxN!)).toBe(bits(dxT));
    sameAccumulators(aT, aN);
  };
  it('random, hostile, NaN and infinities, slots repeated across inputs', () => {
    let seed = 800;
    for (const k of KINDS) for (const repeat of [false, true]) run(seed++, k, repeat);
  });
});

describe('a proved LM step with the native mirrors equals the TypeScript-only one, byte for byte', () => {
  const TEXT = Uint8Array.from(Buffer.from('The prover runs the verifier\'s canonical step; the mirrors give the same bits. '.repeat(4)));
  const batch = (S: number, s: number): { input: Uint32Array; targets: Uint32Array } => {
    const off = (s * 31) % (TEXT.length - S - 1);
    return { input: Uint32Array.from(TEXT.subarray(off, off + S)), targets: Uint32Array.from(TEXT.subarray(off + 1, off + S + 1)) };
  };
  const run = async (on: boolean, cfg: NonNullable<Parameters<typeof languageModel>[0]>, seqs = 1): Promise<Uint8Array[]> => {
    const was = stepNative.on;
    stepNative.on = on;
    try {
      const m = languageModel(cfg, { training: { loss: 'cross-entropy', optimizer: 'adam', lr: 1e-2, clipNorm: 1, weightDecay: 0.01 } });
      let pinned = await pinGhost((await m.ghost()).bytes);
      const out: Uint8Array[] = [];
      for (let s = 0; s < 3; s++) {
        const p = await m.proveTrainStep(seqs === 1 ? batch(cfg.context!, s) : Array.from({ length: seqs }, (_, j) => batch(cfg.context!, s * seqs + j)));
        pinned = (await verifyTrainStep(pinned, p.bytes)).ghost;
        out.push(p.bytes, p.ghost.digest);
      }
      return out;
    } finally {
      stepNative.on = was;
    }
  };
  const configs: [string, NonNullable<Parameters<typeof languageModel>[0]>][] = [
    ['2 layers, attention over every key', { context: 12, dim: 16, layers: 2, heads: 2, hidden: 24, seed: 4 }],
    ['top-4 attention and a product-key memory layer', { context: 12, dim: 16, layers: 2, heads: 2, hidden: 24, attentionK: 4, memory: { layers: [1], subKeys: 4, k: 2, heads: 2, keyDim: 8 }, seed: 5 }],
  ];
  configs.push(['two sequences a step (one proof of kind 4), top-4 attention', { context: 10, dim: 16, layers: 1, heads: 2, hidden: 24, attentionK: 4, seed: 6 }]);
  for (const [name, cfg] of configs) {
    const seqs = name.startsWith('two sequences') ? 2 : 1;
    it(name, async () => {
      const ts = await run(false, cfg, seqs);
      const nat = await run(true, cfg, seqs);
      expect(nat.length).toBe(ts.length);
      nat.forEach((b, i) => expect(Buffer.from(b).equals(Buffer.from(ts[i]!)), `item ${i}`).toBe(true));
    });
  }
});
