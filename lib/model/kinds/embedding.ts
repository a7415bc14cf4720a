/**
 * The Embedding kind: a table of rows looked up by id (the first layer of a model that
 * takes ids), with a dense mode whose gradient covers every row; and its place in a
 * Model (embeddingKind; the verifier half is lib/verify/kinds/embedding.ts).
 */
import { allIds, checkFloat32Array, checkOptions, toIds } from '../../shared/args.js';
import { InvalidArgumentError, OutOfRangeError } from '../../shared/errors.js';
import type { SparseGrad } from '../optim.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { embeddingSpec, type GhostEmbeddingLayer } from '../../verify/kinds/embedding.js';
import { sortedUniqueIds } from '../../verify/proof-format.js';
import type { LayerGradients, LayerKind, LayerShape, ProvedLayer } from '../layer-kind.js';

/** One-to-one lookup of rows of a table; sparse gradient (dense mode: a gradient over all rows). */
export class Embedding {
  readonly table: SparseTensor;
  readonly mode: 'sparse' | 'dense';

  constructor(table: SparseTensor, options: { mode?: 'sparse' | 'dense' } = {}) {
    options = checkOptions('Embedding', options, ['mode']);
    if (!(table instanceof SparseTensor)) throw new InvalidArgumentError('table must be a SparseTensor');
    this.table = table;
    this.mode = options.mode ?? 'sparse';
    if (this.mode !== 'sparse' && this.mode !== 'dense') throw new InvalidArgumentError(`mode must be 'sparse' or 'dense', got ${String(options.mode)}`);
  }

  get dim(): number {
    return this.table.dim;
  }

  /** ids.length x dim rows. */
  forward(ids: Uint32Array | readonly number[]): Float32Array {
    return this.table.gather(toIds('ids', ids));
  }

  /** The gradient of sum(dy . forward(ids)): the rows of dy (repeats are summed by the optimizer). */
  backward(ids: Uint32Array | readonly number[], dy: Float32Array): SparseGrad {
    const u = toIds('ids', ids);
    checkFloat32Array('dy', dy);
    const d = this.dim;
    if (dy.length !== u.length * d) throw new InvalidArgumentError(`dy has length ${dy.length}, expected ids.length * dim = ${u.length * d}`);
    const n = this.table.size;
    for (let i = 0; i < u.length; i++) if (u[i]! >= n) throw new OutOfRangeError(`ids[${i}] = ${u[i]} is out of range (size ${n})`);
    if (this.mode === 'sparse') return { tensor: this.table, ids: u, grads: dy.slice() };
    const all = allIds(n);
    const g = new Float32Array(n * d);
    for (let i = 0; i < u.length; i++) for (let j = 0; j < d; j++) g[u[i]! * d + j]! += dy[i * d + j]!;
    return { tensor: this.table, ids: all, grads: g };
  }
}

/** Embedding in a Model: first layer only; a proof reveals the rows of the ids it looked up. */
export const embeddingKind: LayerKind<Embedding, GhostEmbeddingLayer> = {
  spec: embeddingSpec,
  name: 'an Embedding',
  is: (layer): layer is Embedding => layer instanceof Embedding,

  shape(l, i): LayerShape {
    if (i !== 0) throw new InvalidArgumentError(`layer ${i}: an Embedding takes ids, so it can only be the first layer`);
    return { inWidth: -1, outWidth: l.dim };
  },

  tensors: (l) => [['table', l.table]],
  ghost: (l, _shape, index) => ({ op: 'embedding', table: index(l.table), dim: l.dim }),
  fromGhost: async (l, tensors) => new Embedding(tensors[l.table]!),

  async forward(l, input): Promise<{ y: Float32Array; ctx: unknown }> {
    const ids = toIds('input', input as Uint32Array | readonly number[]);
    return { y: l.forward(ids), ctx: ids };
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    return { dx: null, grads: [l.backward(ctx as Uint32Array, dy)], dense: [] };
  },

  async prove(l, c): Promise<ProvedLayer> {
    const ids = c.ids!, B = c.rows;
    const u = sortedUniqueIds([ids]);
    const block = c.block(c.tensorIndex(l.table), u);
    const at = new Map<number, number>();
    u.forEach((id, i) => at.set(id, i));
    const rows = block.resolved.rows;
    const y = new Float32Array(B * l.dim);
    ids.forEach((id, b) => y.set(rows.subarray(at.get(id)! * l.dim, (at.get(id)! + 1) * l.dim), b * l.dim));
    return { y, evidence: { op: 'embedding', stages: [], blocks: [block.block] }, resolved: [block.resolved] };
  },
};
