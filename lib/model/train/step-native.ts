/**
 * The prover's native mirrors of the canonical step (docs/step-proofs.md, "What proving a
 * step costs"): Model.proveTrainStep passes them to its own run of computeStep
 * (ProverRun.native). Each gives the same bits as the verifier's TypeScript (compared
 * bit for bit in test/canonical-step-native.test.ts); a verifier never runs them.
 *
 * - HopfieldLookup training forward (exact and HNSW selections without held keys): the
 *   kind's own checks of the selection and its reveal, then states, scores, softmax
 *   weights and mixes in C++ (what the backward keeps).
 * - HopfieldLookup backward (exact and HNSW selections, every similarity, normalize, any
 *   number of stages; product keys run the TypeScript): the layer's f64 accumulator rows
 *   (ctx.grad, shared with every other layer) are gathered into one buffer, added to in
 *   C++ in the TypeScript's order, and scattered back (copies are exact).
 * - The optimizer step (coptimizerStep).
 */
import { callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import type { NativeStepHooks } from '../../verify/backward.js';
import type { CanonicalOptimizer, CanonicalRowState, coptimizerStep } from '../../verify/canonical.js';
import { checkHopfieldStages, hopfieldReads, hopfieldRevealsKeys, type GhostHopfieldLayer, type HopfieldSaved } from '../../verify/kinds/hopfield.js';
import type { GhostLayer } from '../../verify/kinds/index.js';
import { fail, rowOf, type BackwardContext, type TrainedForward, type VerifyLayerContext } from '../../verify/layer-spec.js';

/**
 * Scratch buffers for the gathered accumulators, kept between calls (grow only): a fresh
 * buffer of this size costs more in first-touch page faults than the copies themselves
 * (docs/step-proofs.md, "What proving a step costs"). Safe to share: computeStep is
 * synchronous, and each call scatters its rows back before it returns.
 */
const scratch: Float64Array[] = [new Float64Array(0), new Float64Array(0)];
function scratchOf(which: 0 | 1, n: number): Float64Array {
  if (scratch[which]!.length < n) scratch[which] = new Float64Array(Math.max(n, Math.ceil(scratch[which]!.length * 1.5)));
  return scratch[which]!.subarray(0, n);
}

/** Accumulator rows of one tensor asked through ctx.grad, each given a slot in one f64 buffer. */
class Slots {
  readonly views: Float64Array[] = [];
  readonly #at = new Map<Float64Array, number>();
  slot(view: Float64Array): number {
    let s = this.#at.get(view);
    if (s === undefined) {
      s = this.views.length;
      this.views.push(view);
      this.#at.set(view, s);
    }
    return s;
  }
  gather(dim: number, which: 0 | 1): Float64Array {
    const buf = scratchOf(which, this.views.length * dim);
    this.views.forEach((v, i) => buf.set(v, i * dim));
    return buf;
  }
  scatter(buf: Float64Array, dim: number): void {
    this.views.forEach((v, i) => v.set(buf.subarray(i * dim, (i + 1) * dim)));
  }
}

/**
 * The HopfieldLookup training forward in C++ (kinds/hopfield.ts hopfieldForward with
 * `keep`), or null for product keys and held keys (their selection is re-derived: the
 * TypeScript runs). The selection's checks are the TypeScript's, with its messages.
 */
export function hopfieldTrainForwardNative(l: GhostHopfieldLayer, ctx: VerifyLayerContext): TrainedForward | null {
  const ev = ctx.evidence;
  if (l.index.kind === 'product-keys' || hopfieldRevealsKeys(l, ev)) return null;
  const li = ctx.index, B = ctx.rows, x = ctx.x;
  const k = l.k, d = l.dIn, dv = l.dOut, S = l.updateSteps;
  if (!x) return null;
  checkHopfieldStages(l, ctx);
  const rev = ctx.reveal(hopfieldReads(l, ev.stages, false));
  const K = rev.get(l.keys[0]!)!, V = rev.get(l.values)!;
  const keyRow = new Uint32Array(B * S * k), valueRow = new Uint32Array(B * k);
  for (let b = 0; b < B; b++) {
    for (let si = 0; si < S; si++) {
      const st = ev.stages[si]!;
      for (let i = 0; i < k; i++) keyRow[(b * S + si) * k + i] = rowOf(K, st[b * k + i]!) / d;
    }
    const last = ev.stages[S - 1]!;
    for (let i = 0; i < k; i++) valueRow[b * k + i] = rowOf(V, last[b * k + i]!) / dv;
  }
  const y = new Float32Array(B * dv);
  const saved: HopfieldSaved = { q: new Float64Array(B * S * d), s: new Float64Array(B * S * k), a: new Float64Array(B * S * k) };
  const nat = native();
  callNative(() => nat.canonicalHopfieldForward(x, K.rows, V.rows, keyRow, valueRow, B, k, d, dv, S, l.beta, l.similarity, l.normalize, y, saved.q, saved.s, saved.a));
  return { y, saved };
}

/** The HopfieldLookup backward in C++, or null (product keys, or a shape the TypeScript should report). */
export function hopfieldBackwardNative(l: GhostHopfieldLayer, ctx: BackwardContext, dy: Float32Array): Float32Array | null {
  if (l.index.kind === 'product-keys') return null;
  const B = ctx.rows, S = l.updateSteps, k = l.k, d = l.dIn, dv = l.dOut;
  const sv = ctx.saved as HopfieldSaved | undefined;
  if (!sv || !(sv.q instanceof Float64Array) || sv.q.length !== B * S * d || sv.s.length !== B * S * k || sv.a.length !== B * S * k) return null;
  const x = ctx.inputs[0];
  const stages = ctx.evidence.stages;
  const K = ctx.revealed.get(l.keys[0]!), V = ctx.revealed.get(l.values);
  if (!x || x.length !== B * d || dy.length !== B * dv || stages.length !== S || !K || !V || K.dim !== d || V.dim !== dv) return null;
  if (stages.some((st) => st.length !== B * k)) return null;
  const E = B * S * k;
  const keyRow = new Uint32Array(E), keyAcc = new Uint32Array(E);
  const valueRow = new Uint32Array(B * k), valueAcc = new Uint32Array(B * k);
  const shared = l.values === l.keys[0];
  const ks = new Slots(), vs = shared ? ks : new Slots();
  for (let b = 0; b < B; b++) {
    for (let si = 0; si < S; si++) {
      const st = stages[si]!;
      for (let i = 0; i < k; i++) {
        const id = st[b * k + i]!, e = (b * S + si) * k + i;
        keyRow[e] = rowOf(K, id) / d;
        keyAcc[e] = ks.slot(ctx.grad(l.keys[0]!, id));
        if (si === S - 1) {
          valueRow[b * k + i] = rowOf(V, id) / dv;
          valueAcc[b * k + i] = vs.slot(ctx.grad(l.values, id));
        }
      }
    }
  }
  const accKeys = ks.gather(d, 0);
  const accValues = shared ? accKeys : vs.gather(dv, 1);
  const nat = native();
  const dx = callNative(() => nat.canonicalHopfieldBackward(x, dy, sv.q, sv.s, sv.a, K.rows, V.rows, keyRow, keyAcc, valueRow, valueAcc, accKeys, accValues, B, k, d, dv, S, l.beta, l.similarity, l.normalize));
  ks.scatter(accKeys, d);
  if (!shared) vs.scatter(accValues, dv);
  return dx;
}

/** coptimizerStep in C++ (the same bits). */
export function optimizerStepNative(p: CanonicalOptimizer, globalStep: number, logDecay: number, d: number, rows: Float32Array, grads: Float32Array, state: CanonicalRowState): ReturnType<typeof coptimizerStep> {
  const count = state.steps.length;
  const adam = p.kind === 'adam';
  const f = Math.fround;
  const out = new Float32Array(count * d);
  const m = new Float32Array(adam ? count * d : 0), v = new Float32Array(adam ? count * d : 0);
  const steps = new Uint32Array(count), marks = new Float64Array(count);
  const params = Float64Array.of(adam ? 1 : 0, p.rowStep ? 1 : 0, f(p.lr), f(p.beta1), f(p.beta2), f(p.eps), f(p.weightDecay), globalStep, logDecay);
  const none = new Float32Array(0);
  const nat = native();
  const newLogDecay = callNative(() => nat.canonicalOptimizerStep(params, d, rows, grads, adam ? state.m : none, adam ? state.v : none, state.steps, state.marks, out, m, v, steps, marks));
  return { rows: out, state: { m, v, steps, marks }, logDecay: newLogDecay };
}

/**
 * Whether Model.proveTrainStep uses these (default on; GT_STEP_NATIVE=0 turns them off, for
 * A/B runs; tests flip `on` to compare both paths byte for byte).
 */
export const stepNative = { on: process.env['GT_STEP_NATIVE'] !== '0' };

/** What Model.proveTrainStep passes to computeStep (ProverRun.native). */
export const STEP_NATIVE: NativeStepHooks & { optimizerStep: typeof coptimizerStep } = {
  trainForward(layer: GhostLayer, ctx: VerifyLayerContext): TrainedForward | null {
    return layer.op === 'hopfield' ? hopfieldTrainForwardNative(layer, ctx) : null;
  },
  backward(layer: GhostLayer, ctx: BackwardContext, dy: Float32Array): Float32Array[] | null {
    if (layer.op !== 'hopfield') return null;
    const dx = hopfieldBackwardNative(layer, ctx, dy);
    return dx === null ? null : [dx];
  },
  optimizerStep: optimizerStepNative,
};
