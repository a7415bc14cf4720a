/**
 * The Add kind: the element-wise sum of two layer outputs, the join of a residual block
 * (lib/model/blocks.ts); and its place in a Model (addKind; the verifier half is
 * lib/verify/kinds/add.ts). No tensors; the fast forward is the canonical sum.
 */
import { checkInteger } from '../../shared/args.js';
import { InvalidArgumentError, callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import { addSpec, type GhostAddLayer } from '../../verify/kinds/add.js';
import type { LayerGradients, LayerKind, LayerShape, ProvedLayer } from '../layer-kind.js';

export class Add {
  /** The width of the rows it adds; null: whatever its inputs have (a Residual's Add). */
  readonly dim: number | null;
  constructor(dim?: number) {
    this.dim = dim === undefined ? null : checkInteger('dim', dim, 1, 2 ** 24);
  }
}

export const addKind: LayerKind<Add, GhostAddLayer> = {
  spec: addSpec,
  name: 'an Add',
  is: (layer): layer is Add => layer instanceof Add,

  shape(l, i, prevOut): LayerShape {
    if (i === 0) throw new InvalidArgumentError('layer 0: an Add takes two layer outputs, so it cannot be first');
    if (prevOut === -1) throw new InvalidArgumentError(`layer ${i}: an Add takes rows, not ids`);
    if (l.dim !== null && prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} adds rows of ${l.dim} but reads rows of ${prevOut}`);
    return { inWidth: prevOut, outWidth: prevOut };
  },

  tensors: () => [],
  ghost: (_l, shape) => ({ op: 'add', dim: shape.inWidth }),
  fromGhost: async (l) => new Add(l.dim),

  async forward(_l, input, _shape, others): Promise<{ y: Float32Array; ctx: unknown }> {
    const a = input as Float32Array, b = others?.[0];
    if (!(a instanceof Float32Array) || !(b instanceof Float32Array) || a.length !== b.length) throw new InvalidArgumentError('an Add takes two Float32Arrays of one length');
    return { y: callNative(() => native().canonicalJoin(a, b, 'add')), ctx: null };
  },

  async backward(_l, _ctx, dy): Promise<LayerGradients> {
    return { dx: dy, dxOthers: [dy], grads: [], dense: [] };
  },

  async prove(_l, c): Promise<ProvedLayer> {
    const [a, b] = c.inputs;
    return { y: callNative(() => native().canonicalJoin(a!, b!, 'add')), evidence: { op: 'add', stages: [], blocks: [] }, resolved: [] };
  },
};
