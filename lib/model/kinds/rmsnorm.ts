/**
 * The RMSNorm kind: each row divided by its root mean square (with eps), times a learned
 * gain; and its place in a Model (rmsnormKind; the verifier half is
 * lib/verify/kinds/rmsnorm.ts). The gain is a SparseTensor of one row, committed by the
 * Ghost file and trained by the sparse optimizer. The forward pass is the canonical
 * arithmetic itself (crmsnorm, run natively: f64 per row, O(n d)), so forward and proof agree exactly.
 */
import { checkFloat32Array, checkNumber, checkOptions } from '../../shared/args.js';
import { InvalidArgumentError, callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { rmsnormSpec, type GhostRmsNormLayer } from '../../verify/kinds/rmsnorm.js';
import type { LayerGradients, LayerKind, LayerShape, ProvedLayer } from '../layer-kind.js';
import type { SparseGrad } from '../optim.js';

export interface RMSNormOptions {
  /** g: one row of dim. */
  gain: SparseTensor;
  /** Added to the mean square (default 1e-6; stored as the nearest f32). */
  eps?: number;
}

/** What RMSNorm.forward keeps for backward(); treat as opaque. */
export interface RMSNormContext {
  readonly n: number;
  readonly x: Float32Array;
}

export class RMSNorm {
  readonly gain: SparseTensor;
  readonly eps: number;

  constructor(o: RMSNormOptions) {
    if (o === null || typeof o !== 'object' || o.gain === undefined) throw new InvalidArgumentError('RMSNorm needs { gain }');
    checkOptions('RMSNorm', o, ['gain', 'eps']);
    if (!(o.gain instanceof SparseTensor)) throw new InvalidArgumentError('gain must be a SparseTensor');
    if (o.gain.size !== 1) throw new InvalidArgumentError(`gain must be one row of dim; it has ${o.gain.size} rows`);
    this.gain = o.gain;
    this.eps = Math.fround(checkNumber('eps', o.eps ?? 1e-6, 0, 1, true));
    if (!(this.eps > 0)) throw new InvalidArgumentError('eps must be > 0 as an f32');
  }

  get dim(): number {
    return this.gain.dim;
  }

  /** n x dim rows, each x / rms(x) * g. */
  forward(x: Float32Array): { y: Float32Array; ctx: RMSNormContext } {
    checkFloat32Array('x', x);
    const d = this.dim;
    if (x.length === 0 || x.length % d !== 0) throw new InvalidArgumentError(`x length ${x.length} must be a positive multiple of dim ${d}`);
    for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) throw new InvalidArgumentError(`x[${i}] is not finite`);
    const n = x.length / d;
    return { y: callNative(() => native().canonicalRmsNorm(x, n, d, this.gain.gather([0]), this.eps)), ctx: { n, x } };
  }

  /**
   * Gradients of sum(dy . y): with r = (mean(x^2) + eps)^(-1/2),
   * dx_j = r g_j dy_j - (r^3 x_j / d) sum_t dy_t g_t x_t and dg_t = sum over rows of dy_t x_t r.
   */
  backward(ctx: RMSNormContext, dy: Float32Array): { dx: Float32Array; grads: SparseGrad[] } {
    checkFloat32Array('dy', dy);
    const d = this.dim, n = ctx.n, x = ctx.x;
    if (dy.length !== n * d) throw new InvalidArgumentError(`dy has length ${dy.length}, expected ${n * d}`);
    const g = this.gain.gather([0]);
    const dx = new Float32Array(n * d);
    const dg = new Float64Array(d);
    for (let i = 0; i < n; i++) {
      const o = i * d;
      let ss = 0;
      for (let t = 0; t < d; t++) ss = ss + x[o + t]! * x[o + t]!;
      const r = 1 / Math.sqrt(ss / d + this.eps);
      let dot = 0;
      for (let t = 0; t < d; t++) dot = dot + dy[o + t]! * g[t]! * x[o + t]!;
      const c = (r * r * r * dot) / d;
      for (let t = 0; t < d; t++) {
        dx[o + t] = r * g[t]! * dy[o + t]! - c * x[o + t]!;
        dg[t] = dg[t]! + dy[o + t]! * x[o + t]! * r;
      }
    }
    return { dx, grads: [{ tensor: this.gain, ids: Uint32Array.of(0), grads: Float32Array.from(dg) }] };
  }
}

/** RMSNorm in a Model: a proof reveals the gain; the claim is crmsnorm. */
export const rmsnormKind: LayerKind<RMSNorm, GhostRmsNormLayer> = {
  spec: rmsnormSpec,
  name: 'an RMSNorm',
  is: (layer): layer is RMSNorm => layer instanceof RMSNorm,

  shape(l, i, prevOut): LayerShape {
    if (prevOut === -1 && i !== 0) throw new InvalidArgumentError(`layer ${i}: an RMSNorm needs the width of the layer before`);
    if (prevOut !== -1 && prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} takes ${l.dim} inputs but layer ${i - 1} gives ${prevOut}`);
    return { inWidth: l.dim, outWidth: l.dim };
  },

  tensors: (l) => [['gain', l.gain]],
  ghost: (l, _shape, index) => ({ op: 'rmsnorm', dim: l.dim, gain: index(l.gain), eps: l.eps }),
  fromGhost: async (l, tensors) => new RMSNorm({ gain: tensors[l.gain]!, eps: l.eps }),

  async forward(l, input): Promise<{ y: Float32Array; ctx: unknown }> {
    checkFloat32Array('input', input);
    return l.forward(input as Float32Array);
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    const r = l.backward(ctx as RMSNormContext, dy);
    return { dx: r.dx, grads: r.grads, dense: [] };
  },

  async prove(l, c): Promise<ProvedLayer> {
    const gl = c.ghost.manifest.layers[c.index] as GhostRmsNormLayer;
    const b = c.block(gl.gain, 'all');
    const y = callNative(() => native().canonicalRmsNorm(c.x!, c.rows, l.dim, b.resolved.rows, l.eps));
    return { y, evidence: { op: 'rmsnorm', stages: [], blocks: [b.block] }, resolved: [b.resolved] };
  },
};
