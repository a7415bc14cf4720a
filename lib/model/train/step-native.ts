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
 * - The language-model kinds: Linear (dense or top-k, with its bias) and attention (its
 *   projections, the top-k selection re-derived by the TypeScript's own insertion, the
 *   softmax and the mix) forward and backward, the gated MLP's forward and backward,
 *   RMSNorm's backward. Each projection's accumulator rows are gathered, added to in C++
 *   and scattered back per call, so tensors shared between projections or layers see
 *   the TypeScript's order. The product-key memory layer's backward, and its training
 *   forward taken from the step's own forward proof (memoryTrainForwardNative: the
 *   selection is not derived a second time). Embedding, position, add and
 *   RMSNorm's forward run the TypeScript (cheap).
 */
import { callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import type { NativeStepHooks } from '../../verify/backward.js';
import { csoftmax, type CanonicalOptimizer, type CanonicalRowState, type coptimizerStep } from '../../verify/canonical.js';
import { checkHopfieldStages, hopfieldReads, hopfieldRevealsKeys, type GhostHopfieldLayer, type HopfieldSaved } from '../../verify/kinds/hopfield.js';
import { attentionReads, attentionWidth, type AttentionSaved, type GhostAttentionLayer, type GhostProjection } from '../../verify/kinds/attention.js';
import type { GhostLayer } from '../../verify/kinds/index.js';
import { linearReads, wholeRows, type GhostLinearLayer } from '../../verify/kinds/linear.js';
import { memoryHeadDim, memoryReads, type GhostMemoryLayer, type MemorySaved } from '../../verify/kinds/memory.js';
import { memoryProvedForward } from '../kinds/memory.js';
import type { GhostRmsNormLayer } from '../../verify/kinds/rmsnorm.js';
import { fail, rowOf, type BackwardContext, type Revealed, type TrainedForward, type VerifyLayerContext } from '../../verify/layer-spec.js';

/**
 * Scratch buffers for the gathered accumulators, kept between calls (grow only): a fresh
 * buffer of this size costs more in first-touch page faults than the copies themselves
 * (docs/step-proofs.md, "What proving a step costs"). Safe to share: computeStep is
 * synchronous, and each call scatters its rows back before it returns.
 */
const scratch: Float64Array[] = [];
/** Slots of `scratch`: one per buffer live at once in one hook. */
const enum Scratch { Keys = 0, Values = 1, Weight = 2, DOut = 3, DQ = 4, DK = 5, DV = 6, DIn = 7, T1 = 8, T2 = 9 }
function scratchOf(which: Scratch, n: number): Float64Array {
  const cur = scratch[which] ?? new Float64Array(0);
  scratch[which] = cur.length < n ? new Float64Array(Math.max(n, Math.ceil(cur.length * 1.5))) : cur;
  return scratch[which]!.subarray(0, n);
}
/** scratchOf, zeroed. */
function zeroedOf(which: Scratch, n: number): Float64Array {
  return scratchOf(which, n).fill(0);
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
  gather(dim: number, which: Scratch): Float64Array {
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
  const accKeys = ks.gather(d, Scratch.Keys);
  const accValues = shared ? accKeys : vs.gather(dv, Scratch.Values);
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


// ---- The language-model kinds (kinds/linear.ts, attention.ts, rmsnorm.ts, glu.ts). ----

const NO_ROWS = new Uint32Array(0);
const NO_ACC = new Float64Array(0);

/** linearTrain / projectKeep in C++: y (n x m) and, with kp < m, each row's kept columns ascending. */
function linearTrainNative(x: Float32Array, n: number, dIn: number, W: Float32Array, m: number, kp: number, bias: Float32Array | null): { y: Float32Array; kept: Uint32Array | null } {
  const y = new Float32Array(n * m);
  const kept = kp < m ? new Uint32Array(n * kp) : null;
  const nat = native();
  callNative(() => nat.canonicalLinearTrain(x, W, bias, n, dIn, m, kp, y, kept ?? NO_ROWS));
  return { y, kept };
}

/** The Linear training forward in C++ (kinds/linear.ts linearForward), or null for a shape the TypeScript should report. */
export function linearTrainForwardNative(l: GhostLinearLayer, ctx: VerifyLayerContext): TrainedForward | null {
  if (ctx.evidence.stages.length !== 0 || !ctx.x) return null;
  const rev = ctx.reveal(linearReads(l));
  const r = linearTrainNative(ctx.x, ctx.rows, l.dIn, rev.get(l.weight)!.rows, ctx.manifest.tensors[l.weight]!.n, l.k, l.bias === null ? null : rev.get(l.bias)!.rows);
  return { y: r.y, saved: r.kept };
}

/**
 * One projection's backward in C++ (kinds/attention.ts projectionBackward, kinds/linear.ts
 * backward): the accumulator rows of the columns some row kept (all when dense) are taken
 * through ctx.grad (the same rows the TypeScript takes), gathered, added to and scattered
 * back; dIn is added to. `bias`: the bias tensor, whose one row receives every column.
 */
function projectionBackwardNative(ctx: BackwardContext, tensor: number, W: Float32Array, m: number, kp: number, kept: Uint32Array | null, input: Float32Array, inDim: number, dP: Float32Array | Float64Array, dIn: Float64Array, bias: number | null): void {
  const n = ctx.rows;
  const views: (Float64Array | undefined)[] = new Array<Float64Array | undefined>(m);
  if (kept === null) for (let c = 0; c < m; c++) views[c] = ctx.grad(tensor, c);
  else {
    const used = new Uint8Array(m);
    for (const c of kept) used[c] = 1;
    for (let c = 0; c < m; c++) if (used[c] === 1) views[c] = ctx.grad(tensor, c);
  }
  const acc = scratchOf(Scratch.Weight, m * inDim);
  for (let c = 0; c < m; c++) if (views[c]) acc.set(views[c]!, c * inDim);
  const accB = bias === null ? NO_ACC : ctx.grad(bias, 0);
  const nat = native();
  callNative(() => nat.canonicalProjectionBackward(input, W, kept ?? NO_ROWS, dP, dIn, acc, accB, n, inDim, m, kp));
  for (let c = 0; c < m; c++) if (views[c]) views[c]!.set(acc.subarray(c * inDim, (c + 1) * inDim));
}

/** The Linear backward in C++, or null for a shape the TypeScript should report. */
export function linearBackwardNative(l: GhostLinearLayer, ctx: BackwardContext, dy: Float32Array): Float32Array | null {
  const n = ctx.rows, dIn = l.dIn, m = l.dOut, x = ctx.inputs[0];
  const kept = ctx.saved as Uint32Array | null | undefined;
  const sparse = l.k < m;
  if (!x || x.length !== n * dIn || dy.length !== n * m) return null;
  if (sparse && !(kept instanceof Uint32Array && kept.length === n * l.k)) return null;
  const W = wholeRows(ctx, l.weight);
  if (l.bias !== null) wholeRows(ctx, l.bias);
  if (W.length !== m * dIn) return null;
  const dx64 = zeroedOf(Scratch.DIn, n * dIn);
  projectionBackwardNative(ctx, l.weight, W, m, sparse ? l.k : m, sparse ? kept! : null, x, dIn, dy, dx64, l.bias);
  const dx = new Float32Array(n * dIn);
  dx.set(dx64);
  return dx;
}

/** The rows of a projection's tensor when revealed whole, else undefined (the TypeScript reports it). */
function wholeOrUndefined(ctx: BackwardContext | Map<number, Revealed>, tensor: number): Float32Array | undefined {
  const r = (ctx instanceof Map ? ctx : ctx.revealed).get(tensor);
  return r !== undefined && r.all ? r.rows : undefined;
}

/** The attention training forward in C++ (kinds/attention.ts attentionRun with keep), or null for a shape the TypeScript should report. */
export function attentionTrainForwardNative(l: GhostAttentionLayer, ctx: VerifyLayerContext): TrainedForward | null {
  const g = ctx.manifest, n = ctx.rows, x = ctx.x;
  if (ctx.evidence.stages.length !== 0 || !x) return null;
  const rev = ctx.reveal(attentionReads(l));
  const project = (p: GhostProjection | null, input: Float32Array, inDim: number): { y: Float32Array; kept: Uint32Array | null } =>
    p === null ? { y: input, kept: null } : linearTrainNative(input, n, inDim, rev.get(p.tensor)!.rows, g.tensors[p.tensor]!.n, p.k, null);
  const q = project(l.query, x, l.dIn), k = project(l.key, x, l.dIn), v = project(l.value, x, l.dIn);
  const D = q.y.length / n, kk = Math.min(l.k, n);
  const o = new Float32Array(n * D), top = new Int32Array(l.heads * n * kk), weights = new Float64Array(l.heads * n * kk);
  const nat = native();
  callNative(() => nat.canonicalAttentionCore(q.y, k.y, v.y, o, new Uint32Array(top.buffer), weights, n, l.heads, l.k, l.causal, l.scale));
  const y = project(l.output, o, attentionWidth(g, l));
  const saved: AttentionSaved = { q: q.y, k: k.y, v: v.y, o, kept: { query: q.kept, key: k.kept, value: v.kept, output: y.kept }, kk, top, weights };
  return { y: y.y, saved };
}

/** The attention backward in C++ (kinds/attention.ts attentionBackward), or null for a shape the TypeScript should report. */
export function attentionBackwardNative(l: GhostAttentionLayer, ctx: BackwardContext, dy: Float32Array): Float32Array | null {
  const g = ctx.manifest, n = ctx.rows, x = ctx.inputs[0];
  const D = attentionWidth(g, l), dOut = l.dOut;
  const s = ctx.saved as AttentionSaved | null | undefined;
  if (!x || !s || dy.length !== n * dOut || x.length !== n * l.dIn) return null;
  const kk = Math.min(l.k, n);
  if (s.kk !== kk || s.q.length !== n * D || s.k.length !== n * D || s.v.length !== n * D || s.o.length !== n * D || s.top.length !== l.heads * n * kk) return null;
  // Every projection's tensor revealed whole and its kept columns saved when sparse; else the TypeScript reports it.
  const projs = [[l.output, s.kept.output, D], [l.query, s.kept.query, l.dIn], [l.key, s.kept.key, l.dIn], [l.value, s.kept.value, l.dIn]] as const;
  for (const [p, kept, inDim] of projs) {
    if (p === null) continue;
    const W = wholeOrUndefined(ctx, p.tensor), m = g.tensors[p.tensor]!.n;
    if (!W || W.length !== m * inDim) return null;
    if (p.k < m && !(kept instanceof Uint32Array && kept.length === n * p.k)) return null;
  }
  const back = (p: GhostProjection, kept: Uint32Array | null, input: Float32Array, inDim: number, dP: Float32Array | Float64Array, dIn: Float64Array): void => {
    const m = g.tensors[p.tensor]!.n;
    projectionBackwardNative(ctx, p.tensor, wholeOrUndefined(ctx, p.tensor)!, m, p.k < m ? p.k : m, p.k < m ? kept : null, input, inDim, dP, dIn, null);
  };
  let dO: Float64Array;
  if (l.output === null) {
    dO = scratchOf(Scratch.DOut, n * D);
    dO.set(dy);
  } else {
    dO = zeroedOf(Scratch.DOut, n * D);
    back(l.output, s.kept.output, s.o, D, dy, dO);
  }
  const dQ = zeroedOf(Scratch.DQ, n * D), dK = zeroedOf(Scratch.DK, n * D), dV = zeroedOf(Scratch.DV, n * D);
  const nat = native();
  callNative(() => nat.canonicalAttentionCoreBackward(s.q, s.k, s.v, new Uint32Array(s.top.buffer, s.top.byteOffset, s.top.length), s.weights, dO, dQ, dK, dV, n, l.heads, l.k, l.causal, l.scale));
  const dx = zeroedOf(Scratch.DIn, n * l.dIn);
  for (const [p, dP, kept] of [[l.query, dQ, s.kept.query], [l.key, dK, s.kept.key], [l.value, dV, s.kept.value]] as const) {
    if (p === null) for (let j = 0; j < dx.length; j++) dx[j] = dx[j]! + dP[j]!;
    else back(p, kept, x, l.dIn, dP, dx);
  }
  return Float32Array.from(dx);
}

/** The RMSNorm backward in C++, or null for a shape the TypeScript should report. */
export function rmsnormBackwardNative(l: GhostRmsNormLayer, ctx: BackwardContext, dy: Float32Array): Float32Array | null {
  const d = l.dim, n = ctx.rows, x = ctx.inputs[0];
  if (!x || x.length !== n * d || dy.length !== n * d) return null;
  const gain = wholeRows(ctx, l.gain);
  if (gain.length !== d) return null;
  const acc = ctx.grad(l.gain, 0);
  const dx = new Float32Array(n * d);
  const nat = native();
  callNative(() => nat.canonicalRmsNormBackward(x, dy, gain, n, d, l.eps, dx, acc));
  return dx;
}

/** The gated-MLP backward in C++, or null for a shape the TypeScript should report. */
export function gluBackwardNative(ctx: BackwardContext, dy: Float32Array): Float32Array[] | null {
  const gate = ctx.inputs[0], up = ctx.inputs[1];
  if (!gate || !up || up.length !== gate.length || dy.length !== gate.length) return null;
  const dg = new Float32Array(gate.length), du = new Float32Array(gate.length);
  const nat = native();
  callNative(() => nat.canonicalGluBackward(gate, up, dy, dg, du));
  return [dg, du];
}


/** The gated MLP's forward in C++ (kinds/glu.ts verify: no stages, an empty reveal), or null for a shape the TypeScript should report. */
export function gluForwardNative(ctx: VerifyLayerContext): TrainedForward | null {
  const gate = ctx.inputs[0], up = ctx.inputs[1];
  if (ctx.evidence.stages.length !== 0 || !gate || !up || up.length !== gate.length) return null;
  ctx.reveal(new Map());
  const y = new Float32Array(gate.length);
  const nat = native();
  callNative(() => nat.canonicalGluForward(gate, up, y));
  return { y, saved: undefined };
}


/** Every head's sub-key tables of one side, one after another, kept between calls (grow only). */
const tableScratch: Float32Array[] = [new Float32Array(0), new Float32Array(0)];
function tablesOf(which: 0 | 1, n: number): Float32Array {
  if (tableScratch[which]!.length < n) tableScratch[which] = new Float32Array(Math.max(n, Math.ceil(tableScratch[which]!.length * 1.5)));
  return tableScratch[which]!.subarray(0, n);
}

/** Whether two f32 arrays hold the same bits. */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  const x = new Int32Array(a.buffer, a.byteOffset, a.length), y = new Int32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/**
 * The product-key memory training forward from the step's own forward proof (kinds/memory.ts
 * memoryForward with `keep`), or null (the TypeScript runs). The forward proof computed
 * the queries, each head's product-key selection and scores and the output with the
 * canonical arithmetic (its C++ mirrors, the same bits as the TypeScript); the step's
 * forward would compute all of them again from the same input and rows. So when the
 * layer's input, query weight and sub-key tables have the bits the forward proof used,
 * this takes its queries, scores and output, and computes only the softmax weights
 * (csoftmax, what the backward keeps). The selection's checks (its shape and range) are
 * the TypeScript's; the reveal is the same.
 */
export function memoryTrainForwardNative(l: GhostMemoryLayer, ctx: VerifyLayerContext): TrainedForward | null {
  const ev = ctx.evidence, B = ctx.rows, k = l.k, H = l.heads, N = l.subKeys * l.subKeys;
  const pf = memoryProvedForward.get(ev.stages);
  if (!pf || !ctx.x || !sameBits(ctx.x, pf.x) || ev.stages.length !== H || pf.scores.length !== H || pf.keyRows.length !== 2 * H) return null;
  for (const st of ev.stages) {
    if (st.length !== B * k) return null;
    for (let i = 0; i < st.length; i++) if (st[i]! >= N) return null;
  }
  if (pf.scores.some((s) => s.length !== B * k) || pf.y.length !== B * l.dOut) return null;
  const rev = ctx.reveal(memoryReads(l, ev.stages));
  if (!sameBits(rev.get(l.query)!.rows, pf.queryRows)) return null;
  for (let j = 0; j < 2 * H; j++) if (!sameBits(rev.get(l.keys[j]!)!.rows, pf.keyRows[j]!)) return null;
  const saved: MemorySaved = { q: pf.q, s: new Float64Array(B * H * k), a: new Float64Array(B * H * k) };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const s = pf.scores[h]!.subarray(b * k, (b + 1) * k), at = (b * H + h) * k;
      saved.s.set(s, at);
      saved.a.set(csoftmax(s, l.beta), at);
    }
  }
  return { y: pf.y.slice(), saved };
}

/**
 * The product-key memory backward in C++ (kinds/memory.ts memoryBackward), or null when the
 * forward's saved state or a shape is not what it should be (the TypeScript recomputes or
 * reports it). Rows are located (rowOf) and accumulators taken (ctx.grad) in the
 * TypeScript's order, so a row the layer did not reveal fails with its error.
 */
export function memoryBackwardNative(l: GhostMemoryLayer, ctx: BackwardContext, dy: Float32Array): Float32Array | null {
  const g = ctx.manifest, B = ctx.rows, k = l.k, H = l.heads, dv = l.dOut, dIn = l.dIn, n = l.subKeys;
  const dk = memoryHeadDim(g, l), d1 = g.tensors[l.keys[0]!]!.dim, d2 = dk - d1, hdk = H * dk;
  const sv = ctx.saved as MemorySaved | undefined, x = ctx.inputs[0], stages = ctx.evidence.stages;
  if (!sv || !(sv.q instanceof Float32Array) || sv.q.length !== B * hdk || sv.a.length !== B * H * k) return null;
  if (!x || x.length !== B * dIn || dy.length !== B * dv || stages.length !== H || stages.some((st) => st.length !== B * k)) return null;
  const V = ctx.revealed.get(l.values), W = ctx.revealed.get(l.query);
  if (!V || !W || V.dim !== dv || W.dim !== dIn || W.rows.length < hdk * dIn) return null;
  const T1 = l.keys.filter((_, j) => j % 2 === 0).map((t) => ctx.revealed.get(t)), T2 = l.keys.filter((_, j) => j % 2 === 1).map((t) => ctx.revealed.get(t));
  if (T1.some((t) => !t || t.dim !== d1) || T2.some((t) => !t || t.dim !== d2)) return null;
  // The query weight's rows 0..hdk-1 in order (rowOf, as the TypeScript's Wo) and their accumulators.
  let Wrows = W.rows;
  if (!(W.all && W.rows.length === hdk * dIn)) {
    Wrows = new Float32Array(hdk * dIn);
    for (let m = 0; m < hdk; m++) Wrows.set(W.rows.subarray(rowOf(W, m), rowOf(W, m) + dIn), m * dIn);
  }
  const Wacc = Array.from({ length: hdk }, (_, m) => ctx.grad(l.query, m));
  // Every head's tables, one after another.
  const base1: number[] = [], base2: number[] = [];
  let r1 = 0, r2 = 0;
  for (let h = 0; h < H; h++) {
    base1.push(r1);
    base2.push(r2);
    r1 += T1[h]!.rows.length / d1;
    r2 += T2[h]!.rows.length / d2;
  }
  const t1 = tablesOf(0, r1 * d1), t2 = tablesOf(1, r2 * d2);
  for (let h = 0; h < H; h++) {
    t1.set(T1[h]!.rows, base1[h]! * d1);
    t2.set(T2[h]!.rows, base2[h]! * d2);
  }
  const E = B * H * k;
  const valueRow = new Uint32Array(E), valueAcc = new Uint32Array(E), t1Row = new Uint32Array(E), t1Acc = new Uint32Array(E), t2Row = new Uint32Array(E), t2Acc = new Uint32Array(E);
  const vs = new Slots(), s1 = new Slots(), s2 = new Slots();
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const st = stages[h]!, ao = (b * H + h) * k;
      for (let i = 0; i < k; i++) {
        const id = st[b * k + i]!;
        valueRow[ao + i] = rowOf(V, id) / dv;
        valueAcc[ao + i] = vs.slot(ctx.grad(l.values, id));
      }
      for (let i = 0; i < k; i++) {
        const id = st[b * k + i]!, i1 = Math.floor(id / n), i2 = id % n;
        t1Row[ao + i] = base1[h]! + rowOf(T1[h]!, i1) / d1;
        t1Acc[ao + i] = s1.slot(ctx.grad(l.keys[2 * h]!, i1));
        t2Row[ao + i] = base2[h]! + rowOf(T2[h]!, i2) / d2;
        t2Acc[ao + i] = s2.slot(ctx.grad(l.keys[2 * h + 1]!, i2));
      }
    }
  }
  const accV = vs.gather(dv, Scratch.Values), acc1 = s1.gather(d1, Scratch.T1), acc2 = s2.gather(d2, Scratch.T2);
  const accW = scratchOf(Scratch.DIn, hdk * dIn);
  Wacc.forEach((v, m) => accW.set(v, m * dIn));
  const nat = native();
  const dx = callNative(() => nat.canonicalMemoryBackward(x, dy, sv.q, sv.a, V.rows, valueRow, valueAcc, accV, t1, t1Row, t1Acc, acc1, t2, t2Row, t2Acc, acc2, Wrows, accW, B, H, k, dv, dIn, dk, d1, l.beta));
  vs.scatter(accV, dv);
  s1.scatter(acc1, d1);
  s2.scatter(acc2, d2);
  Wacc.forEach((v, m) => v.set(accW.subarray(m * dIn, (m + 1) * dIn)));
  return dx;
}

/**
 * Whether Model.proveTrainStep uses these (default on; GT_STEP_NATIVE=0 turns them off, for
 * A/B runs; tests flip `on` to compare both paths byte for byte).
 */
export const stepNative = { on: process.env['GT_STEP_NATIVE'] !== '0' };

/** What Model.proveTrainStep passes to computeStep (ProverRun.native). */
export const STEP_NATIVE: NativeStepHooks & { optimizerStep: typeof coptimizerStep } = {
  trainForward(layer: GhostLayer, ctx: VerifyLayerContext): TrainedForward | null {
    switch (layer.op) {
      case 'hopfield': return hopfieldTrainForwardNative(layer, ctx);
      case 'linear': return linearTrainForwardNative(layer, ctx);
      case 'attention': return attentionTrainForwardNative(layer, ctx);
      case 'glu': return gluForwardNative(ctx);
      case 'memory': return memoryTrainForwardNative(layer, ctx);
      default: return null;
    }
  },
  backward(layer: GhostLayer, ctx: BackwardContext, dy: Float32Array): Float32Array[] | null {
    const one = (dx: Float32Array | null): Float32Array[] | null => (dx === null ? null : [dx]);
    switch (layer.op) {
      case 'hopfield': return one(hopfieldBackwardNative(layer, ctx, dy));
      case 'linear': return one(linearBackwardNative(layer, ctx, dy));
      case 'attention': return one(attentionBackwardNative(layer, ctx, dy));
      case 'rmsnorm': return one(rmsnormBackwardNative(layer, ctx, dy));
      case 'glu': return gluBackwardNative(ctx, dy);
      case 'memory': return one(memoryBackwardNative(layer, ctx, dy));
      default: return null;
    }
  },
  optimizerStep: optimizerStepNative,
};
