/**
 * The prover's C++ mirror of the canonical step (native/src/core/canonical_step.cc,
 * lib/model/train/step-native.ts) against the verifier's TypeScript: bit for bit on
 * random and hostile inputs (zeros, negative zero, ties, huge and tiny values, NaN and
 * infinities, which the TypeScript takes), the same refusals, and whole proved steps
 * with the native path on and off giving the same proof bytes.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, SparseTensor, verifyTrainStep, pinGhost, ProofError } from '../lib/index.js';
import { GradientAccumulator } from '../lib/verify/backward.js';
import { coptimizerStep, type CanonicalOptimizer, type CanonicalRowState } from '../lib/verify/canonical.js';
import type { GhostManifest } from '../lib/verify/ghost-file.js';
import { hopfieldSpec, type GhostHopfieldLayer } from '../lib/verify/kinds/hopfield.js';
import type { BackwardContext, Revealed, VerifyLayerContext } from '../lib/verify/layer-spec.js';
import type { LayerEvidence } from '../lib/verify/proof-format.js';
import { hopfieldBackwardNative, hopfieldTrainForwardNative, optimizerStepNative, stepNative } from '../lib/model/train/step-native.js';
import { native } from '../lib/tensor/native.js';
import { bits, values } from './helpers/bit-values.js';
import { Rng } from './helpers/rng.js';


interface Case {
  sim: 'ip' | 'cosine' | 'l2';
  normalize: boolean;
  S: number;
  shared: boolean;
  held: boolean;
  hostile: boolean;
  nonFinite?: boolean;
  zeroRows?: boolean;
}

/** One Hopfield layer's backward context (the same for both sides but for the accumulators). */
function hopfieldCase(rng: Rng, c: Case) {
  const n = 24, d = c.shared ? 6 : 7, dv = c.shared ? 6 : 5, k = 4, B = 5, S = c.S;
  const beta = Math.fround(c.hostile ? 30 : 2.5);
  const keys = values(rng, n * d, c.hostile, c.nonFinite);
  const vals = c.shared ? keys : values(rng, n * dv, c.hostile, c.nonFinite);
  if (c.zeroRows) {
    keys.fill(0, 0, 2 * d); // rows 0, 1: zero keys (cosine's score is 0)
    keys.fill(-0, 2 * d, 3 * d);
  }
  const x = values(rng, B * d, c.hostile, c.nonFinite);
  if (c.zeroRows) x.fill(0, 0, d); // input 0 is zero (normalize's 0 branch)
  const stages = Array.from({ length: S }, () => {
    const st = new Uint32Array(B * k);
    for (let b = 0; b < B; b++) {
      const pick = new Set<number>();
      while (pick.size < k) pick.add(c.zeroRows && pick.size === 0 ? b % 3 : rng.int(0, n - 1));
      st.set([...pick], b * k);
    }
    return st;
  });
  const l: GhostHopfieldLayer = { op: 'hopfield', dIn: d, dOut: dv, k, beta, similarity: c.sim, normalize: c.normalize, updateSteps: S, index: { kind: 'exact' }, keys: [0], values: c.shared ? 0 : 1 };
  const root = new Uint8Array(32);
  const tensors = c.shared ? [{ n, dim: d, root }] : [{ n, dim: d, root }, { n, dim: dv, root }];
  const manifest = { version: 3, layers: [l], tensors } as unknown as GhostManifest;
  const reveal = (t: number, rows: Float32Array, dim: number, used: Uint32Array | 'all'): Revealed => {
    if (used === 'all') return { tensor: t, dim, ids: Uint32Array.from({ length: n }, (_, i) => i), rows, root, all: true };
    const out = new Float32Array(used.length * dim);
    used.forEach((id, i) => out.set(rows.subarray(id * dim, (id + 1) * dim), i * dim));
    return { tensor: t, dim, ids: used, rows: out, root, all: false };
  };
  // Held keys: the keys revealed whole (row = id); the selection is not re-derived here (the backward holds it).
  const evidence: LayerEvidence = { op: 'hopfield', stages, blocks: [] };
  const revealed = new Map<number, Revealed>();
  const fctx = (ev: LayerEvidence = evidence): VerifyLayerContext => ({
    manifest, evidence: ev, index: 0, rows: B, ids: null, x, inputs: [x],
    reveal: (need) => {
      for (const [t, want] of need) revealed.set(t, reveal(t, t === 0 ? keys : vals, t === 0 ? d : dv, c.held && t === 0 ? 'all' : want));
      return revealed;
    },
  });
  const fwd = hopfieldSpec.trainForward!(l, fctx());
  const dy = values(rng, B * dv, c.hostile, c.nonFinite);
  // Accumulators already holding other layers' contributions (the same start on both sides).
  const prior = Array.from({ length: n }, () => values(rng, d, false));
  const ctx = (acc: GradientAccumulator): BackwardContext => ({
    manifest, index: 0, rows: B, ids: null, inputs: [x], evidence, revealed, y: fwd.y, saved: fwd.saved,
    grad: (t, id) => {
      const r = acc.row(t, id);
      return r;
    },
  });
  const fresh = (): GradientAccumulator => {
    const acc = new GradientAccumulator(manifest);
    for (let id = 0; id < n; id += 3) acc.row(0, id).set(prior[id]!.subarray(0, d));
    return acc;
  };
  return { l, dy, ctx, fresh, fctx, fwd, stages };
}

function compareHopfield(c: Case, seed: number): void {
  const rng = new Rng(seed);
  const { l, dy, ctx, fresh } = hopfieldCase(rng, c);
  const accT = fresh(), accN = fresh();
  const dxT = hopfieldSpec.backward!(l, ctx(accT), dy)[0]!;
  const dxN = hopfieldBackwardNative(l, ctx(accN), dy);
  expect(dxN).not.toBeNull();
  expect(bits(dxN!)).toBe(bits(dxT));
  const gT = accT.result(), gN = accN.result();
  expect(gN.map((t) => [t.tensor, bits(t.ids)])).toEqual(gT.map((t) => [t.tensor, bits(t.ids)]));
  // result() rounds to f32; the f64 rows themselves must match too.
  for (const t of gT) for (const id of t.ids) expect(bits(accN.row(t.tensor, id))).toBe(bits(accT.row(t.tensor, id)));
}

describe('native HopfieldLookup backward = the verifier\'s TypeScript, bit for bit', () => {
  let seed = 100;
  for (const sim of ['ip', 'cosine', 'l2'] as const) {
    for (const normalize of [false, true]) {
      for (const S of [1, 3]) {
        it(`${sim}, normalize ${normalize}, ${S} stage(s): random, hostile, shared tensor, held keys, zero rows`, () => {
          for (const hostile of [false, true]) {
            compareHopfield({ sim, normalize, S, shared: false, held: false, hostile }, seed++);
            compareHopfield({ sim, normalize, S, shared: true, held: false, hostile }, seed++);
            compareHopfield({ sim, normalize, S, shared: false, held: true, hostile }, seed++);
            compareHopfield({ sim, normalize, S, shared: false, held: false, hostile, zeroRows: true }, seed++);
          }
        });
      }
    }
  }

  it('NaN and infinities propagate alike (the TypeScript takes them)', () => {
    for (const sim of ['ip', 'cosine', 'l2'] as const) {
      for (let r = 0; r < 4; r++) compareHopfield({ sim, normalize: r % 2 === 0, S: 1 + (r % 2), shared: false, held: false, hostile: true, nonFinite: true }, 900 + r);
    }
  });

  it('a row the layer did not reveal is refused as the TypeScript refuses it (BLOCK_IDS)', () => {
    const rng = new Rng(5);
    const { l, dy, ctx, fresh } = hopfieldCase(rng, { sim: 'cosine', normalize: true, S: 2, shared: false, held: false, hostile: false });
    const c0 = ctx(fresh());
    const K = c0.revealed.get(0)!;
    const cut = new Map(c0.revealed);
    cut.set(0, { ...K, ids: K.ids.slice(1), rows: K.rows.slice(K.dim) });
    const code = (f: () => unknown): string => {
      try {
        f();
      } catch (e) {
        return e instanceof ProofError ? e.reason : String(e);
      }
      return 'ACCEPTED';
    };
    const cT = { ...ctx(fresh()), revealed: cut }, cN = { ...ctx(fresh()), revealed: cut };
    expect(code(() => hopfieldSpec.backward!(l, cT, dy))).toBe('BLOCK_IDS');
    expect(code(() => hopfieldBackwardNative(l, cN, dy))).toBe('BLOCK_IDS');
  });

  it('the binding refuses bad shapes and out-of-range rows before any work', () => {
    const nat = native();
    const f32 = (n: number): Float32Array => new Float32Array(n), f64 = (n: number): Float64Array => new Float64Array(n), u32 = (n: number): Uint32Array => new Uint32Array(n);
    // B 1, k 1, d 2, dv 2, S 1
    const ok = (): unknown[] => [f32(2), f32(2), f64(2), f64(1), f64(1), f32(2), f32(2), u32(1), u32(1), u32(1), u32(1), f64(2), f64(2), 1, 1, 2, 2, 1, 1, 'ip', false];
    expect(nat.canonicalHopfieldBackward(...(ok() as Parameters<typeof nat.canonicalHopfieldBackward>)).length).toBe(2);
    const bad = (i: number, v: unknown, msg: RegExp): void => {
      const a = ok();
      a[i] = v;
      expect(() => nat.canonicalHopfieldBackward(...(a as Parameters<typeof nat.canonicalHopfieldBackward>))).toThrow(msg);
    };
    bad(0, f32(3), /x has length 3/);
    bad(7, Uint32Array.of(1), /keyRow\[0\] = 1 is not below 1/);
    bad(8, Uint32Array.of(5), /keyAcc\[0\] = 5 is not below 1/);
    bad(10, Uint32Array.of(1), /valueAcc\[0\] = 1 is not below 1/);
    bad(5, f32(3), /keys' length is not a multiple of d/);
    bad(18, 0.1, /beta must be an f32 value/);
    bad(13, 0, /B/);
  });
});

describe('native HopfieldLookup training forward = the verifier\'s TypeScript, bit for bit', () => {
  const code = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      return e instanceof ProofError ? `${e.reason}: ${e.message}` : String(e);
    }
    return 'ACCEPTED';
  };
  it('every similarity, normalize or not, 1 and 3 stages, random, hostile (NaN and infinities too), zero rows', () => {
    let seed = 2000;
    for (const sim of ['ip', 'cosine', 'l2'] as const) {
      for (const normalize of [false, true]) {
        for (const S of [1, 3]) {
          for (const v of [{ hostile: false }, { hostile: true }, { hostile: true, nonFinite: true }, { hostile: false, zeroRows: true }, { hostile: false, shared: true }]) {
            const { l, fctx, fwd } = hopfieldCase(new Rng(seed++), { sim, normalize, S, shared: false, held: false, ...v });
            const n = hopfieldTrainForwardNative(l, fctx());
            expect(n).not.toBeNull();
            expect(bits(n!.y)).toBe(bits(fwd.y));
            const sn = n!.saved as { q: Float64Array; s: Float64Array; a: Float64Array }, st = fwd.saved as typeof sn;
            expect([bits(sn.q), bits(sn.s), bits(sn.a)]).toEqual([bits(st.q), bits(st.s), bits(st.a)]);
          }
        }
      }
    }
  });
  it('refuses a selection as the TypeScript does (shape, id out of range, duplicate), and leaves held and product keys to it', () => {
    const { l, fctx, stages } = hopfieldCase(new Rng(3), { sim: 'cosine', normalize: true, S: 2, shared: false, held: false, hostile: false });
    const evs: LayerEvidence[] = [
      { op: 'hopfield', stages: [stages[0]!], blocks: [] },
      { op: 'hopfield', stages: [stages[0]!, stages[1]!.subarray(1)], blocks: [] },
      { op: 'hopfield', stages: [stages[0]!, Uint32Array.from(stages[1]!, (id, i) => (i === 5 ? 24 : id))], blocks: [] },
      { op: 'hopfield', stages: [Uint32Array.from(stages[0]!, (id, i) => (i === 1 ? stages[0]![0]! : id)), stages[1]!], blocks: [] },
    ];
    for (const ev of evs) {
      const t = code(() => hopfieldSpec.trainForward!(l, fctx(ev)));
      expect(t).toMatch(/^(SHAPE|ID_OUT_OF_RANGE|DUPLICATE_ID): /);
      expect(code(() => hopfieldTrainForwardNative(l, fctx(ev)))).toBe(t);
    }
    const held: LayerEvidence = { op: 'hopfield', stages, blocks: [{ tensor: 0, all: true } as never] };
    expect(hopfieldTrainForwardNative(l, fctx(held))).toBeNull();
    expect(hopfieldTrainForwardNative({ ...l, index: { kind: 'product-keys', subKeys: 5 }, keys: [0, 1] }, fctx())).toBeNull();
  });
});

describe('native optimizer step = coptimizerStep, bit for bit', () => {
  const state = (rng: Rng, count: number, d: number, hostile: boolean): CanonicalRowState => ({
    m: values(rng, count * d, hostile).map((v) => v * 1e-2),
    v: values(rng, count * d, hostile).map((v) => Math.abs(v) * 1e-3),
    steps: Uint32Array.from({ length: count }, () => (hostile ? [0, 1, 7, 0xfffffffe, 1e6][rng.int(0, 4)]! : rng.int(0, 20))),
    marks: Float64Array.from({ length: count }, () => -rng.next() * (hostile ? 50 : 0.1)),
  });
  const cases: CanonicalOptimizer[] = [
    { kind: 'adam', lr: Math.fround(1e-3), beta1: Math.fround(0.9), beta2: Math.fround(0.999), eps: Math.fround(1e-8), weightDecay: 0, rowStep: true },
    { kind: 'adam', lr: Math.fround(3e-3), beta1: Math.fround(0.5), beta2: Math.fround(0.99), eps: Math.fround(1e-6), weightDecay: Math.fround(0.01), rowStep: false },
    { kind: 'adam', lr: Math.fround(0.7), beta1: 0, beta2: 0, eps: Math.fround(1e-30), weightDecay: Math.fround(1.2), rowStep: true },
    { kind: 'sgd', lr: Math.fround(1e-2), beta1: Math.fround(0.9), beta2: Math.fround(0.999), eps: Math.fround(1e-8), weightDecay: 0, rowStep: true },
    { kind: 'sgd', lr: Math.fround(0.3), beta1: Math.fround(0.9), beta2: Math.fround(0.999), eps: Math.fround(1e-8), weightDecay: Math.fround(0.5), rowStep: true },
  ];
  it('Adam and SGD, row and global bias correction, weight decay, random and hostile rows, gradients and state (NaN and infinities too)', () => {
    const rng = new Rng(33);
    for (const [ci, p] of cases.entries()) {
      for (const hostile of [false, true]) {
        const count = 9, d = 13;
        const rows = values(rng, count * d, hostile, hostile), grads = values(rng, count * d, hostile, hostile);
        let st = state(rng, count, d, hostile);
        if (p.kind === 'sgd') st = { ...st, m: new Float32Array(count * d), v: new Float32Array(count * d) };
        for (const globalStep of [0, 5, 2 ** 40]) {
          const logDecay = hostile ? -rng.next() * 60 : -rng.next() * 0.01;
          const t = coptimizerStep(p, globalStep, logDecay, d, rows, grads, st);
          const n = optimizerStepNative(p, globalStep, logDecay, d, rows, grads, st);
          const at = `case ${ci} hostile ${hostile} step ${globalStep}`;
          expect(bits(n.rows), at).toBe(bits(t.rows));
          expect(bits(n.state.m), at).toBe(bits(p.kind === 'adam' ? t.state.m : new Float32Array(0)));
          expect(bits(n.state.v), at).toBe(bits(p.kind === 'adam' ? t.state.v : new Float32Array(0)));
          expect(bits(n.state.steps), at).toBe(bits(t.state.steps));
          expect(bits(n.state.marks), at).toBe(bits(t.state.marks));
          expect(Object.is(n.logDecay, t.logDecay), at).toBe(true);
        }
      }
    }
  });
  it('no rows, and the binding\'s refusals (lengths, non-f32 parameters, a fractional step)', () => {
    const p = cases[0]!;
    const e: CanonicalRowState = { m: new Float32Array(0), v: new Float32Array(0), steps: new Uint32Array(0), marks: new Float64Array(0) };
    expect(optimizerStepNative(p, 0, -0.5, 4, new Float32Array(0), new Float32Array(0), e).rows.length).toBe(0);
    const one: CanonicalRowState = { m: new Float32Array(4), v: new Float32Array(4), steps: new Uint32Array(1), marks: new Float64Array(1) };
    expect(() => optimizerStepNative(p, 0, 0, 4, new Float32Array(3), new Float32Array(4), one)).toThrow(/rows has length 3/);
    expect(() => optimizerStepNative({ ...p, lr: 0.1 + 1e-12 }, 0, 0, 4, new Float32Array(4), new Float32Array(4), one)).not.toThrow(); // rounded to f32 first, as coptimizerStep does
    expect(() => optimizerStepNative(p, 0.5, 0, 4, new Float32Array(4), new Float32Array(4), one)).toThrow(/global step/);
  });
});

describe('a proved step with the native path equals the TypeScript-only one, byte for byte', () => {
  const build = (sim: 'ip' | 'cosine' | 'l2', normalize: boolean, updateSteps: number, training: ConstructorParameters<typeof Model>[1]): Model => {
    const rng = new Rng(77);
    const n = 96, d = 24, dv = 6;
    const keys = SparseTensor.fromArray(values(rng, n * d, false), d);
    const vals = SparseTensor.fromArray(values(rng, n * dv, false), dv);
    return new Model([new HopfieldLookup({ keys, values: vals, k: 8, similarity: sim, normalize, beta: 4, updateSteps })], training);
  };
  const batches = Array.from({ length: 3 }, (_, s) => {
    const rng = new Rng(500 + s);
    return { input: values(rng, 10 * 24, s === 2), targets: Uint32Array.from({ length: 10 }, () => rng.int(0, 5)) };
  });
  const run = async (on: boolean, ...a: Parameters<typeof build>): Promise<Uint8Array[]> => {
    const was = stepNative.on;
    stepNative.on = on;
    try {
      const m = build(...a);
      let pinned = await pinGhost((await m.ghost()).bytes);
      const out: Uint8Array[] = [];
      for (const b of batches) {
        const s = await m.proveTrainStep(b);
        const v = await verifyTrainStep(pinned, s.bytes);
        pinned = v.ghost;
        out.push(s.bytes, s.ghost.digest);
      }
      return out;
    } finally {
      stepNative.on = was;
    }
  };
  const rules: [string, 'ip' | 'cosine' | 'l2', boolean, number, ConstructorParameters<typeof Model>[1]][] = [
    ['cosine, normalized, Adam (the classifier)', 'cosine', true, 1, { training: { loss: 'cross-entropy', optimizer: 'adam', lr: 3e-3 } }],
    ['l2, 2 stages, Adam with clipping, decay and a schedule', 'l2', false, 2, { training: { loss: 'cross-entropy', optimizer: 'adam', lr: 1e-2, clipNorm: 0.05, weightDecay: 0.1, schedule: { kind: 'cosine', warmupSteps: 1, totalSteps: 4 } } }],
    ['ip, SGD with decay', 'ip', false, 1, { training: { loss: 'cross-entropy', optimizer: 'sgd', lr: 0.1, weightDecay: 0.5, biasCorrection: 'global' } }],
  ];
  for (const [name, sim, normalize, S, training] of rules) {
    it(name, async () => {
      const ts = await run(false, sim, normalize, S, training);
      const nat = await run(true, sim, normalize, S, training);
      expect(nat.length).toBe(ts.length);
      nat.forEach((b, i) => expect(Buffer.from(b).equals(Buffer.from(ts[i]!)), `item ${i}`).toBe(true));
    });
  }
});
