/**
 * The canonical forward and backward of a model's layers, as step proofs recompute
 * them (docs/step-proofs.md). The forward is the forward proof's (each kind's verify,
 * or its trainForward, which gives the same bits and keeps what backward needs); the
 * backward walks the layers in reverse and calls each kind's canonical backward
 * (lib/verify/layer-spec.ts). Rules, the same for the prover and the verifier (both run
 * this module):
 *
 * - A layer output's gradient is f32. When several layers read one output (or the
 *   model's input), their contributions are added in f32 (`f(a + b)`) in the order the
 *   backward meets them: readers in decreasing layer index, a reader's inputs in order.
 * - A tensor row's gradient is one f64 accumulator per (tensor, id) shared by every
 *   layer, added to in backward order (layers in decreasing index, each kind's own
 *   documented order), rounded to f32 once at the end.
 *
 * Loads no addon.
 */
import { ProofError } from '../shared/errors.js';
import { layerInputs, spanSource, type GhostManifest } from './ghost-file.js';
import { specOf, type GhostLayer } from './kinds/index.js';
import { fail, rowOf, type BackwardContext, type LayerSpec, type Revealed, type TrainedForward, type VerifyLayerContext } from './layer-spec.js';
import type { LayerEvidence, ProofInput } from './proof-format.js';

/** One layer's forward as it ran: what its backward needs. */
export interface ForwardRecord {
  index: number;
  layer: GhostLayer;
  spec: LayerSpec<GhostLayer>;
  evidence: LayerEvidence;
  /** Sources of its inputs: -1 the span's input, else the position of the layer (relative to the first) whose output it reads. */
  sources: number[];
  ids: Uint32Array | null;
  inputs: Float32Array[];
  revealed: Map<number, Revealed>;
  y: Float32Array;
  saved: unknown;
}

/** The canonical forward of layers first .. first + evidence.length - 1 and the records backward needs. */
export interface CanonicalForward {
  output: Float32Array;
  cols: number;
  rows: number;
  records: ForwardRecord[];
}

/**
 * Runs the canonical forward over the proof's input and evidence (verifyForward and step
 * proofs). `reveal(li, ev, need)` returns the rows a layer reads (the verifier checks
 * them against the roots). Checks each layer's op and input shapes. With `train`, each
 * kind's trainForward runs where it has one (the records keep what backward needs);
 * without, its verify.
 */
export function canonicalForward(
  g: GhostManifest,
  first: number,
  input: ProofInput,
  evidence: readonly LayerEvidence[],
  reveal: (li: number, ev: LayerEvidence, need: Map<number, Uint32Array | 'all'>) => Map<number, Revealed>,
  train = true,
  native?: NativeStepHooks,
): CanonicalForward {
  const spanIds = input.kind === 'ids' ? input.ids : null;
  const spanX = input.kind === 'ids' ? null : input.data;
  const B = input.kind === 'ids' ? input.ids.length : input.rows;
  const outs: Float32Array[] = [];
  const records: ForwardRecord[] = [];
  let cols = 0;
  for (let i = 0; i < evidence.length; i++) {
    const li = first + i;
    const l = g.layers[li]!;
    const ev = evidence[i]!;
    if (ev.op !== l.op) fail('LAYER_MISMATCH', `layer ${li} is ${l.op}; the proof says ${ev.op}`);
    const spec = specOf(l);
    const want = spec.input(l, g);
    const sources = layerInputs(g, li).map((j) => (spanSource(first, j) === 'span' ? -1 : j - first));
    const ids = sources[0] === -1 ? spanIds : null;
    const inputs = sources.map((s) => (s === -1 ? spanX : outs[s]!));
    if (want.kind === 'ids') {
      if (!ids) fail('SHAPE', `layer ${li} (${l.op}) takes ids`);
    } else {
      for (const x of inputs) {
        if (!x) fail('SHAPE', `layer ${li} (${l.op}) takes vectors, not ids`);
        if (x.length !== B * want.cols) fail('SHAPE', `layer ${li} takes ${want.cols} values per row; it got ${x.length / B}`);
      }
    }
    let revealed = new Map<number, Revealed>();
    const ctx: VerifyLayerContext = {
      manifest: g,
      evidence: ev,
      index: li,
      rows: B,
      ids,
      x: inputs[0]!,
      inputs: want.kind === 'ids' ? [] : (inputs as Float32Array[]),
      reveal: (need: Map<number, Uint32Array | 'all'>) => (revealed = reveal(li, ev, need)),
    };
    // The prover's hook may also take a kind without a trainForward (its verify's output, nothing saved).
    const r = !train ? { y: spec.verify(l, ctx), saved: undefined }
      : native?.trainForward?.(l, ctx) ?? (spec.trainForward ? spec.trainForward(l, ctx) : { y: spec.verify(l, ctx), saved: undefined });
    outs.push(r.y);
    records.push({ index: li, layer: l, spec, evidence: ev, sources, ids, inputs: ctx.inputs as Float32Array[], revealed, y: r.y, saved: r.saved });
    cols = spec.outWidth(l, g);
  }
  return { output: outs[outs.length - 1]!, cols, rows: B, records };
}

/**
 * Faster mirrors of kinds' canonical forward and backward that the prover injects
 * (Model.proveTrainStep through ProverRun.native; lib/verify never fills this and loads no
 * addon). A hook gives the same bits as the kind's TypeScript (trainForward: the same
 * checks, the same reveal, and for a kind without a trainForward its verify's output and
 * nothing saved; backward: the same ctx.grad accumulators added to in the same
 * order), or returns null, before doing anything, to let the TypeScript run.
 */
export interface NativeStepHooks {
  trainForward?(layer: GhostLayer, ctx: VerifyLayerContext): TrainedForward | null;
  backward?(layer: GhostLayer, ctx: BackwardContext, dy: Float32Array): Float32Array[] | null;
}

/** A tensor's gradient: sorted ids and their rows (ids.length x dim f32). */
export interface TensorGradient {
  tensor: number;
  ids: Uint32Array;
  grads: Float32Array;
}

/** What the canonical backward gives. */
export interface CanonicalBackward {
  /** d loss / d span input (rows x cols f32), or null when the input is ids or nothing reads it as floats. */
  input: Float32Array | null;
  /** Per tensor with any accumulated row, ascending tensor index: its rows' gradients. */
  tensors: TensorGradient[];
}

/** Values in the largest slab of accumulators (32,768 f64: 256 KiB). */
const SLAB_VALUES = 32768;

/**
 * f64 accumulators of tensor rows, by tensor then id. Rows are views into slabs (zeroed
 * at allocation), so a new row costs no ArrayBuffer of its own. A tensor's slabs double
 * from 4 rows up to SLAB_VALUES values (at least one row), so the rows allocated and not
 * used are fewer than the rows used, and at most one slab.
 */
export class GradientAccumulator {
  readonly #rows = new Map<number, { dim: number; byId: Map<number, Float64Array>; slab: Float64Array; used: number; size: number }>();
  constructor(private readonly g: GhostManifest) {}

  row(tensor: number, id: number): Float64Array {
    let t = this.#rows.get(tensor);
    if (!t) {
      const dim = this.g.tensors[tensor]!.dim;
      this.#rows.set(tensor, (t = { dim, byId: new Map(), slab: new Float64Array(0), used: 0, size: 0 }));
    }
    let r = t.byId.get(id);
    if (!r) {
      if (t.used === t.size) {
        t.size = Math.max(1, Math.min(t.size === 0 ? 4 : 2 * t.size, Math.floor(SLAB_VALUES / t.dim)));
        t.slab = new Float64Array(t.size * t.dim);
        t.used = 0;
      }
      r = t.slab.subarray(t.used * t.dim, (t.used + 1) * t.dim);
      t.used++;
      t.byId.set(id, r);
    }
    return r;
  }

  /** Each tensor's rows, ids ascending, rounded to f32 once. */
  result(): TensorGradient[] {
    const out: TensorGradient[] = [];
    for (const tensor of [...this.#rows.keys()].sort((a, b) => a - b)) {
      const m = this.#rows.get(tensor)!.byId;
      const d = this.g.tensors[tensor]!.dim;
      const ids = Uint32Array.from(m.keys()).sort();
      const grads = new Float32Array(ids.length * d);
      for (let i = 0; i < ids.length; i++) grads.set(m.get(ids[i]!)!, i * d);
      out.push({ tensor, ids, grads });
    }
    return out;
  }
}

/**
 * The canonical backward from dy (d loss / d the last layer's output, rows x cols f32)
 * through the records of canonicalForward, in reverse (see the module comment).
 * `native` (the prover's only) runs a kind's backward natively where it can.
 */
export function canonicalBackward(g: GhostManifest, fwd: CanonicalForward, dy: Float32Array, native?: NativeStepHooks): CanonicalBackward {
  const acc = new GradientAccumulator(g);
  const input = canonicalBackwardInto(acc, g, fwd, dy, native);
  return { input, tensors: acc.result() };
}

/**
 * canonicalBackward into the accumulators `acc`, which several forwards can share (a
 * step of several sequences: each sequence's backward adds to the same f64 rows, in
 * sequence order). Returns d loss / d the span input (or null, as canonicalBackward).
 */
export function canonicalBackwardInto(acc: GradientAccumulator, g: GhostManifest, fwd: CanonicalForward, dy: Float32Array, native?: NativeStepHooks): Float32Array | null {
  const recs = fwd.records;
  const n = recs.length;
  if (dy.length !== fwd.output.length) fail('SHAPE', `the output's gradient has ${dy.length} values; the output has ${fwd.output.length}`);
  const grads: (Float32Array | null)[] = new Array<Float32Array | null>(n).fill(null);
  let spanGrad: Float32Array | null = null;
  grads[n - 1] = dy;
  const owned = new Uint8Array(n);
  const send = (source: number, d: Float32Array): void => {
    if (source === -1) {
      if (spanGrad === null) spanGrad = Float32Array.from(d);
      else for (let j = 0; j < d.length; j++) spanGrad[j] = spanGrad[j]! + d[j]!;
      return;
    }
    const cur = grads[source];
    if (cur === null || cur === undefined) {
      grads[source] = d;
      return;
    }
    const acc = owned[source] ? cur : Float32Array.from(cur);
    for (let j = 0; j < acc.length; j++) acc[j] = acc[j]! + d[j]!;
    grads[source] = acc;
    owned[source] = 1;
  };
  for (let i = n - 1; i >= 0; i--) {
    const r = recs[i]!;
    const d = grads[i];
    if (d === null || d === undefined) continue;
    if (!r.spec.backward) fail('LAYER_MISMATCH', `layer ${r.index} (${r.layer.op}) has no canonical backward: it cannot be trained by step proofs`);
    // This layer's accumulators by tensor and position in its revealed block: a row asked
    // again (every head and input of a layer asks for its rows) costs a lookup in an array.
    const seen = new Map<number, (Float64Array | undefined)[]>();
    const ctx: BackwardContext = {
      manifest: g,
      index: r.index,
      rows: fwd.rows,
      ids: r.ids,
      inputs: r.inputs,
      evidence: r.evidence,
      revealed: r.revealed,
      y: r.y,
      saved: r.saved,
      grad: (tensor, id) => {
        const rev = r.revealed.get(tensor);
        if (!rev) fail('BLOCK_IDS', `layer ${r.index}'s backward reads tensor ${tensor}, which it did not reveal`);
        const at = rowOf(rev, id) / rev.dim;
        let views = seen.get(tensor);
        if (!views) seen.set(tensor, (views = []));
        return (views[at] ??= acc.row(tensor, id));
      },
    };
    const dx = native?.backward?.(r.layer, ctx, d) ?? r.spec.backward(r.layer, ctx, d);
    if (dx.length !== r.inputs.length) throw new ProofError('SHAPE', `layer ${r.index} (${r.layer.op}): its backward gave ${dx.length} input gradients for ${r.inputs.length} inputs`);
    dx.forEach((dxi, k) => send(r.sources[k]!, dxi));
  }
  return spanGrad;
}
