/**
 * The Add kind: the element-wise sum of two layer outputs, the join of a residual block
 * (`new Residual([norm, f])` in a Model is `x + f(norm(x))`: its body's layers, then an
 * Add of the block's input and the body's output); and its place in a Model (addKind; the
 * verifier half is lib/verify/kinds/add.ts). No tensors; the fast forward is the
 * canonical sum.
 */
import { checkInteger } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { addSpec, cadd, type GhostAddLayer } from '../../verify/kinds/add.js';
import type { LayerGradients, LayerKind, LayerShape, ProvedLayer } from '../layer-kind.js';
import type { ModelLayer } from './index.js';

export class Add {
  readonly dim: number;
  constructor(dim: number) {
    this.dim = checkInteger('dim', dim, 1, 2 ** 24);
  }
}

/**
 * A residual block: `x + body(x)`, where body is a chain of layers whose output width is
 * its input width. In a Model it becomes the body's layers and an Add (docs/layer-kinds.md).
 */
export class Residual {
  readonly body: readonly ModelLayer[];
  constructor(body: readonly ModelLayer[]) {
    if (!Array.isArray(body) || body.length === 0) throw new InvalidArgumentError('a Residual needs a non-empty array of layers');
    this.body = [...body];
  }
}

export const addKind: LayerKind<Add, GhostAddLayer> = {
  spec: addSpec,
  name: 'an Add',
  is: (layer): layer is Add => layer instanceof Add,

  shape(l, i, prevOut): LayerShape {
    if (i === 0) throw new InvalidArgumentError('layer 0: an Add takes two layer outputs, so it cannot be first');
    if (prevOut !== -1 && prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} adds rows of ${l.dim} but reads rows of ${prevOut}`);
    return { inWidth: l.dim, outWidth: l.dim };
  },

  tensors: () => [],
  ghost: (l) => ({ op: 'add', dim: l.dim }),
  fromGhost: async (l) => new Add(l.dim),

  async forward(l, input, _shape, others): Promise<{ y: Float32Array; ctx: unknown }> {
    const a = input as Float32Array, b = others?.[0];
    if (!(a instanceof Float32Array) || !(b instanceof Float32Array) || a.length !== b.length || a.length % l.dim !== 0) {
      throw new InvalidArgumentError(`an Add takes two Float32Arrays of one length, a multiple of ${l.dim}`);
    }
    return { y: cadd(a, b), ctx: null };
  },

  async backward(_l, _ctx, dy): Promise<LayerGradients> {
    return { dx: dy, dxOthers: [dy], grads: [], dense: [] };
  },

  async prove(_l, c): Promise<ProvedLayer> {
    const [a, b] = c.inputs;
    return { y: cadd(a!, b!), evidence: { op: 'add', stages: [], blocks: [] }, resolved: [] };
  },
};
