/**
 * Canonical gradients of a model's layers (lib/verify/backward.ts, what step proofs
 * recompute) for the layer kinds' backward tests: prove x, check the proof, run the
 * canonical backward from dy. Plus central finite differences for float64 references.
 */
import type { Model, SparseTensor } from '../../lib/index.js';
import type { CanonicalBackward, CanonicalForward } from '../../lib/verify/backward.js';
import { canonicalGradients } from '../../lib/verify/proof-verify.js';

export interface CanonicalGrads {
  /** The canonical output (the forward proof's). */
  y: Float32Array;
  /** d loss / d the model's f32 input, or null. */
  input: Float32Array | null;
  /** Each tensor's gradient expanded to all N x dim rows (0 for rows without one), f32 as the backward rounded it. */
  dense(t: SparseTensor): Float32Array;
  /** The ids a tensor's gradient has rows for (sorted), or an empty array. */
  ids(t: SparseTensor): Uint32Array;
  forward: CanonicalForward;
  backward: CanonicalBackward;
}

export async function canonicalGrads(model: Model, x: Float32Array | Uint32Array | readonly number[], dy: Float32Array): Promise<CanonicalGrads> {
  const ghost = await model.ghost();
  const p = await model.prove(x);
  const r = await canonicalGradients(ghost, p.bytes, dy);
  const of = (t: SparseTensor) => r.backward.tensors.find((g) => g.tensor === model.tensors.indexOf(t));
  return {
    y: p.output,
    input: r.backward.input,
    forward: r.forward,
    backward: r.backward,
    ids: (t) => of(t)?.ids ?? new Uint32Array(0),
    dense(t) {
      const out = new Float32Array(t.size * t.dim);
      const g = of(t);
      if (g) g.ids.forEach((id, i) => out.set(g.grads.subarray(i * t.dim, (i + 1) * t.dim), id * t.dim));
      return out;
    },
  };
}

/** d f / d p[i] by central differences in f64 (p is restored). */
export function finiteDiff(f: (p: Float64Array) => number, p: Float64Array, i: number, h = 1e-5): number {
  const keep = p[i]!;
  p[i] = keep + h;
  const up = f(p);
  p[i] = keep - h;
  const down = f(p);
  p[i] = keep;
  return (up - down) / (2 * h);
}

/** sum_i a_i b_i in f64. */
export function dot64(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
