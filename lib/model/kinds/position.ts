/**
 * The Position kind: learned absolute positions, x_i + P_i for row i of a sequence (the
 * rows of the batch, as attention reads them); and its place in a Model (positionKind;
 * the verifier half is lib/verify/kinds/position.ts). Learned rather than rotary: a
 * table row is committed and revealed like any pattern, read and trained sparsely (a
 * sequence of n touches rows 0..n-1), and needs no sine or cosine, whose results differ
 * between math libraries, so its canonical forward is one f32 addition per value.
 */
import { checkFloat32Array } from '../../shared/args.js';
import { InvalidArgumentError, OutOfRangeError, callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { positionIds, positionSpec, type GhostPositionLayer } from '../../verify/kinds/position.js';
import type { LayerGradients, LayerKind, LayerShape, ProvedLayer } from '../layer-kind.js';

export class PositionEmbedding {
  /** maxLength rows of dim. */
  readonly table: SparseTensor;
  constructor(table: SparseTensor) {
    if (!(table instanceof SparseTensor)) throw new InvalidArgumentError('table must be a SparseTensor');
    this.table = table;
  }
  get dim(): number {
    return this.table.dim;
  }
  get maxLength(): number {
    return this.table.size;
  }
  /** x (n rows of dim, one sequence) plus rows 0..n-1 of the table. */
  forward(x: Float32Array): { y: Float32Array; ctx: number } {
    checkFloat32Array('x', x);
    const d = this.dim;
    if (x.length === 0 || x.length % d !== 0) throw new InvalidArgumentError(`x length ${x.length} must be a positive multiple of dim ${d}`);
    const n = x.length / d;
    if (n > this.maxLength) throw new OutOfRangeError(`a sequence of ${n} rows; the position table holds ${this.maxLength}`);
    return { y: callNative(() => native().canonicalJoin(x, this.table.gather(positionIds(n)), 'add')), ctx: n };
  }
}

export const positionKind: LayerKind<PositionEmbedding, GhostPositionLayer> = {
  spec: positionSpec,
  name: 'a PositionEmbedding',
  is: (layer): layer is PositionEmbedding => layer instanceof PositionEmbedding,

  shape(l, i, prevOut): LayerShape {
    if (i === 0 || prevOut === -1) throw new InvalidArgumentError(`layer ${i}: a PositionEmbedding adds to rows, so it comes after the layer that makes them`);
    if (prevOut !== l.dim) throw new InvalidArgumentError(`layer ${i} takes ${l.dim} inputs but reads ${prevOut}`);
    return { inWidth: l.dim, outWidth: l.dim };
  },

  tensors: (l) => [['positions', l.table]],
  ghost: (l, _shape, index) => ({ op: 'position', dim: l.dim, table: index(l.table) }),
  fromGhost: async (l, tensors) => new PositionEmbedding(tensors[l.table]!),

  async forward(l, input): Promise<{ y: Float32Array; ctx: unknown }> {
    return l.forward(input as Float32Array);
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    const n = ctx as number;
    return { dx: dy, grads: [{ tensor: l.table, ids: positionIds(n), grads: dy.slice() }], dense: [] };
  },

  async prove(l, c): Promise<ProvedLayer> {
    const gl = c.ghost.manifest.layers[c.index] as GhostPositionLayer;
    if (c.rows > l.maxLength) throw new OutOfRangeError(`layer ${c.index}: a sequence of ${c.rows} rows; the position table holds ${l.maxLength}`);
    const b = c.block(gl.table, positionIds(c.rows));
    return { y: callNative(() => native().canonicalJoin(c.x!, b.resolved.rows, 'add')), evidence: { op: 'position', stages: [], blocks: [b.block] }, resolved: [b.resolved] };
  },
};
