/**
 * The RMSNorm kind, verifier half (docs/layer-kinds.md, "RMSNorm"): each row divided by
 * its root mean square (with eps) and multiplied by a learned gain, a tensor of one row
 * of dim. A proof reveals the gain.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { cdot, crmsnorm } from '../canonical.js';
import { GHOST_LIMITS, fail, ghostBad, ghostLimit, type LayerSpec } from '../layer-spec.js';
import { wholeRows } from './linear.js';

export interface GhostRmsNormLayer {
  op: 'rmsnorm';
  dim: number;
  /** The gain tensor: one row of dim. */
  gain: number;
  /** An f32 value > 0. */
  eps: number;
}

export const rmsnormSpec: LayerSpec<GhostRmsNormLayer> = {
  op: 'rmsnorm',
  code: 5,

  encode(w: ByteWriter, l: GhostRmsNormLayer): void {
    w.u32(l.dim).u32(l.gain).f32(l.eps);
  },

  decode(r: ByteReader): GhostRmsNormLayer {
    return { op: 'rmsnorm', dim: r.u32('dim'), gain: r.u32('gain'), eps: r.f32('eps') };
  },

  check(l, c): number {
    const at = c.at;
    ghostLimit(`${at} dim`, l.dim, 1, GHOST_LIMITS.dim);
    if (!Number.isFinite(l.eps) || Math.fround(l.eps) !== l.eps || !(l.eps > 0)) ghostBad(`${at}: eps must be a finite f32 > 0`);
    if (c.prevOut !== -1 && c.prevOut !== l.dim) ghostBad(`${at}: takes ${l.dim} inputs but the layer before gives ${c.prevOut}`);
    const g = c.tensor(l.gain, `${at} gain`);
    if (g.n !== 1 || g.dim !== l.dim) ghostBad(`${at}: the gain holds ${g.n} x ${g.dim}; it must be 1 x ${l.dim}`);
    return l.dim;
  },

  describe: (l) => `rmsnorm: ${l.dim}, gain ${l.gain}, eps ${l.eps.toPrecision(3)}`,

  input: (l) => ({ kind: 'f32', cols: l.dim }),
  outWidth: (l) => l.dim,

  plan(l, _m, n, budget, li): void {
    budget.cellsFor(n * l.dim + l.dim, `layer ${li} (rmsnorm, ${n} x ${l.dim})`);
    budget.workFor(3 * n * l.dim, `layer ${li} (rmsnorm)`);
  },

  verify(l, ctx): Float32Array {
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${ctx.index} (rmsnorm) has no retrieval stages`);
    const gain = ctx.reveal(new Map([[l.gain, 'all' as const]])).get(l.gain)!;
    return crmsnorm(ctx.x!, ctx.rows, l.dim, gain.rows, l.eps);
  },

  // docs/layer-kinds.md, "RMSNorm": per row i, in f64 from the f32 values, r = 1 / sqrt(cdot(x, x)
  // / d + eps) as the forward computes it, a_t = dy_t g_t, p = sum_t a_t x_t (t ascending),
  // c = (((r r) r) p) / d; dx_t = f32(r a_t - c x_t); the gain row receives (dy_t x_t) r, rows
  // i ascending. The products of two f32 (a_t, dy_t x_t) are exact in f64.
  backward(l, ctx, dy): Float32Array[] {
    const d = l.dim, n = ctx.rows, x = ctx.inputs[0]!, eps = l.eps;
    const g = wholeRows(ctx, l.gain);
    const acc = ctx.grad(l.gain, 0);
    const dx = new Float32Array(n * d);
    for (let i = 0; i < n; i++) {
      const o = i * d;
      const r = 1 / Math.sqrt(cdot(x, o, x, o, d) / d + eps);
      let p = 0;
      for (let t = 0; t < d; t++) p = p + dy[o + t]! * g[t]! * x[o + t]!;
      const c = (r * r * r * p) / d;
      for (let t = 0; t < d; t++) {
        dx[o + t] = r * (dy[o + t]! * g[t]!) - c * x[o + t]!;
        acc[t] = acc[t]! + dy[o + t]! * x[o + t]! * r;
      }
    }
    return [dx];
  },
};
