/**
 * The Glu kind, verifier half (docs/layer-kinds.md, "Gated MLP"): silu(gate) * up per
 * value, over two layer outputs of one width (the gate and up projections of a gated
 * MLP). No tensors, no evidence.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { cexp, cglu } from '../canonical.js';
import { GHOST_LIMITS, fail, ghostBad, ghostLimit, type LayerSpec } from '../layer-spec.js';

export interface GhostGluLayer {
  op: 'glu';
  dim: number;
  /** The gate's activation; 'silu' (SwiGLU) is the one defined. */
  activation: 'silu';
}

const ACTIVATIONS = ['silu'] as const;

export const gluSpec: LayerSpec<GhostGluLayer> = {
  op: 'glu',
  code: 7,
  arity: 2,

  encode(w: ByteWriter, l: GhostGluLayer): void {
    w.u32(l.dim).u8(ACTIVATIONS.indexOf(l.activation));
  },

  decode(r: ByteReader, i: number): GhostGluLayer {
    const dim = r.u32('dim');
    const activation = ACTIVATIONS[r.u8('activation')];
    if (activation === undefined) ghostBad(`layer ${i}: unknown activation`);
    return { op: 'glu', dim, activation };
  },

  check(l, c): number {
    ghostLimit(`${c.at} dim`, l.dim, 1, GHOST_LIMITS.dim);
    if (!ACTIVATIONS.includes(l.activation)) ghostBad(`${c.at}: unknown activation`);
    if (c.index === 0) ghostBad(`${c.at}: a glu takes two layer outputs, so it cannot be the first layer`);
    if (c.prevOut !== -1 && c.prevOut !== l.dim) ghostBad(`${c.at}: takes ${l.dim} inputs but the layer it reads gives ${c.prevOut}`);
    return l.dim;
  },

  describe: (l) => `glu: ${l.dim}, ${l.activation}(gate) * up`,

  input: (l) => ({ kind: 'f32', cols: l.dim }),
  outWidth: (l) => l.dim,

  plan(l, _m, n, budget, li): void {
    budget.cellsFor(n * l.dim, `layer ${li} (glu, ${n} x ${l.dim})`);
    budget.workFor(24 * n * l.dim, `layer ${li} (glu)`);
  },

  verify(_l, ctx): Float32Array {
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${ctx.index} (glu) has no retrieval stages`);
    ctx.reveal(new Map());
    return cglu(ctx.inputs[0]!, ctx.inputs[1]!);
  },

  // docs/layer-kinds.md, "Graphs and residual blocks": per value, in f64 from the f32 values,
  // e = cexp(-g), s = 1 / (1 + e) (sigmoid; e = Infinity for g < -709.7 gives s = 0);
  // dgate = f32(((dy u) s) (1 + g (1 - s))), dup = f32(dy (g / (1 + e))) (silu(g) as cglu's).
  backward(_l, ctx, dy): Float32Array[] {
    const gate = ctx.inputs[0]!, up = ctx.inputs[1]!, n = gate.length;
    const dg = new Float32Array(n), du = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const g = gate[i]!, d = dy[i]!;
      const e = cexp(-g), s = 1 / (1 + e);
      dg[i] = d * up[i]! * s * (1 + g * (1 - s));
      du[i] = d * (g / (1 + e));
    }
    return [dg, du];
  },
};
