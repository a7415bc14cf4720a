/**
 * The Add kind, verifier half (docs/layer-kinds.md, "Graphs and residual blocks"): the
 * element-wise sum of two layer outputs of one width, the join of a residual block
 * x + f(norm(x)). No tensors, no evidence.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { GHOST_LIMITS, fail, ghostBad, ghostLimit, type LayerSpec } from '../layer-spec.js';

export interface GhostAddLayer {
  op: 'add';
  dim: number;
}

/** a + b per value, each sum one f32 addition (computed in f64 and rounded: the same bits). */
export function cadd(a: Float32Array, b: Float32Array): Float32Array {
  const y = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i]! + b[i]!;
  return y;
}

export const addSpec: LayerSpec<GhostAddLayer> = {
  op: 'add',
  code: 6,
  arity: 2,

  encode(w: ByteWriter, l: GhostAddLayer): void {
    w.u32(l.dim);
  },

  decode(r: ByteReader): GhostAddLayer {
    return { op: 'add', dim: r.u32('dim') };
  },

  check(l, c): number {
    ghostLimit(`${c.at} dim`, l.dim, 1, GHOST_LIMITS.dim);
    if (c.index === 0) ghostBad(`${c.at}: an add takes two layer outputs, so it cannot be the first layer`);
    if (c.prevOut !== -1 && c.prevOut !== l.dim) ghostBad(`${c.at}: takes ${l.dim} inputs but the layer it reads gives ${c.prevOut}`);
    return l.dim;
  },

  describe: (l) => `add: ${l.dim}`,

  input: (l) => ({ kind: 'f32', cols: l.dim }),
  outWidth: (l) => l.dim,

  plan(l, _m, n, budget, li): void {
    budget.cellsFor(n * l.dim, `layer ${li} (add, ${n} x ${l.dim})`);
    budget.workFor(n * l.dim, `layer ${li} (add)`);
  },

  verify(_l, ctx): Float32Array {
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${ctx.index} (add) has no retrieval stages`);
    ctx.reveal(new Map());
    const [a, b] = ctx.inputs;
    return cadd(a!, b!);
  },

  // y = f(a + b): d y / d a = d y / d b = 1, so each input's gradient is dy.
  backward(_l, _ctx, dy): Float32Array[] {
    return [dy, dy];
  },
};
