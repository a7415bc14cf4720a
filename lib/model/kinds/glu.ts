/**
 * The Glu kind: silu(gate) * up per value, the middle of a gated MLP (SwiGLU; the block
 * is GatedMLP in lib/model/blocks.ts); and its place in a Model (gluKind; the verifier
 * half is lib/verify/kinds/glu.ts). No tensors; the fast forward is the canonical one
 * (cglu, f64 per value, run natively).
 */
import { checkInteger } from '../../shared/args.js';
import { InvalidArgumentError, callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import { gluSpec, type GhostGluLayer } from '../../verify/kinds/glu.js';
import type { LayerGradients, LayerKind, LayerShape, ProvedLayer } from '../layer-kind.js';

export class Glu {
  /** The width of its rows; null: whatever its inputs have (a GatedMLP's Glu). */
  readonly dim: number | null;
  readonly activation = 'silu' as const;
  constructor(dim?: number) {
    this.dim = dim === undefined ? null : checkInteger('dim', dim, 1, 2 ** 24);
  }
}

interface GluContext {
  gate: Float32Array;
  up: Float32Array;
}

export const gluKind: LayerKind<Glu, GhostGluLayer> = {
  spec: gluSpec,
  name: 'a Glu',
  is: (layer): layer is Glu => layer instanceof Glu,

  shape(l, i, prevOut): LayerShape {
    if (i === 0) throw new InvalidArgumentError('layer 0: a Glu takes two layer outputs, so it cannot be first');
    if (prevOut === -1) throw new InvalidArgumentError(`layer ${i}: a Glu takes rows, not ids`);
    if (l.dim !== null && prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} gates rows of ${l.dim} but reads rows of ${prevOut}`);
    return { inWidth: prevOut, outWidth: prevOut };
  },

  tensors: () => [],
  ghost: (l, shape) => ({ op: 'glu', dim: shape.inWidth, activation: l.activation }),
  fromGhost: async (l) => new Glu(l.dim),

  async forward(_l, input, _shape, others): Promise<{ y: Float32Array; ctx: unknown }> {
    const gate = input as Float32Array, up = others?.[0];
    if (!(gate instanceof Float32Array) || !(up instanceof Float32Array) || gate.length !== up.length) throw new InvalidArgumentError('a Glu takes two Float32Arrays of one length');
    return { y: callNative(() => native().canonicalJoin(gate, up, 'glu')), ctx: { gate, up } satisfies GluContext };
  },

  /** With s = sigmoid(g): d/dg = dy u s (1 + g (1 - s)), d/du = dy g s. */
  async backward(_l, ctx, dy): Promise<LayerGradients> {
    const { gate, up } = ctx as GluContext;
    // Math.exp, not the canonical cexp: gradients are not part of the canonical arithmetic.
    const n = gate.length;
    const dg = new Float32Array(n), du = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const g = gate[i]!, s = 1 / (1 + Math.exp(-g)), d = dy[i]!;
      dg[i] = d * up[i]! * s * (1 + g * (1 - s));
      du[i] = d * g * s;
    }
    return { dx: dg, dxOthers: [du], grads: [], dense: [] };
  },

  async prove(_l, c): Promise<ProvedLayer> {
    return { y: callNative(() => native().canonicalJoin(c.inputs[0]!, c.inputs[1]!, 'glu')), evidence: { op: 'glu', stages: [], blocks: [] }, resolved: [] };
  },
};
