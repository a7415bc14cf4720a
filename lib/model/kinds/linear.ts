/**
 * The Linear kind: y = x W^T + b, dense or keeping each row's top-k columns of x W^T (a
 * sparse projection, docs/attention.md "Projections"), with an optional bias; and its
 * place in a Model (linearKind; the verifier half is lib/verify/kinds/linear.ts). The
 * weight is a SparseTensor of outDim patterns of inDim (pattern j is output column j),
 * the bias a SparseTensor of one row of outDim, so both are committed by the Ghost file
 * and trained by the sparse optimizer (the weight's rows that took part, the bias row).
 */
import { checkFloat32Array, checkOptions } from '../../shared/args.js';
import { InvalidArgumentError, callNative } from '../../shared/errors.js';
import { native } from '../../tensor/native.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { linearReads, linearSpec, type GhostLinearLayer } from '../../verify/kinds/linear.js';
import { revealWhole, type LayerGradients, type LayerKind, type LayerShape, type ProvedLayer } from '../layer-kind.js';
import type { SparseGrad } from '../optim.js';
import { Projection, type ProjectionContext } from './attention.js';

export interface LinearOptions {
  /** W: outDim patterns of inDim. */
  weight: SparseTensor;
  /** b: one row of outDim (optional). */
  bias?: SparseTensor;
  /** Columns of x W^T kept per row (1..outDim, mode 'sparse'); default outDim (dense). */
  k?: number;
  /** 'sparse' (default) keeps the top k columns; 'dense' computes all (the baseline). */
  mode?: 'sparse' | 'dense';
  threads?: number;
}

/** What Linear.forward keeps for backward(); treat as opaque. */
export interface LinearContext {
  readonly n: number;
  readonly projection: ProjectionContext;
}

export class Linear {
  readonly projection: Projection;
  readonly bias: SparseTensor | null;

  constructor(o: LinearOptions) {
    if (o === null || typeof o !== 'object' || o.weight === undefined) throw new InvalidArgumentError('Linear needs { weight }');
    checkOptions('Linear', o, ['weight', 'bias', 'k', 'mode', 'threads']);
    this.projection = new Projection({ weight: o.weight, ...(o.k === undefined ? {} : { k: o.k }), ...(o.mode === undefined ? {} : { mode: o.mode }), ...(o.threads === undefined ? {} : { threads: o.threads }) });
    if (o.bias !== undefined) {
      if (!(o.bias instanceof SparseTensor)) throw new InvalidArgumentError('bias must be a SparseTensor');
      if (o.bias.size !== 1 || o.bias.dim !== o.weight.size) throw new InvalidArgumentError(`bias must be 1 x ${o.weight.size} (one row of outDim); it is ${o.bias.size} x ${o.bias.dim}`);
      if (o.bias === o.weight) throw new InvalidArgumentError('bias and weight must be different tensors');
    }
    this.bias = o.bias ?? null;
  }

  get weight(): SparseTensor {
    return this.projection.weight;
  }
  get inDim(): number {
    return this.projection.inDim;
  }
  get outDim(): number {
    return this.projection.outDim;
  }
  get k(): number {
    return this.projection.k;
  }
  get mode(): 'sparse' | 'dense' {
    return this.projection.mode;
  }

  /** n x outDim rows: x W^T (top-k columns, or all) plus the bias (f32). */
  async forward(x: Float32Array): Promise<{ y: Float32Array; ctx: LinearContext }> {
    const r = await this.projection.forward(x);
    const m = this.outDim, n = r.ctx.n;
    if (this.bias !== null) {
      const b = this.bias.gather([0]);
      for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) r.y[i * m + j] = r.y[i * m + j]! + b[j]!;
    }
    return { y: r.y, ctx: { n, projection: r.ctx } };
  }

  /** Gradients of sum(dy . y): dx, the weight rows that took part and the bias row. */
  async backward(ctx: LinearContext, dy: Float32Array): Promise<{ dx: Float32Array; grads: SparseGrad[] }> {
    const r = await this.projection.backward(ctx.projection, dy);
    const grads: SparseGrad[] = [r.grad];
    if (this.bias !== null) {
      const m = this.outDim;
      const db = new Float64Array(m);
      for (let i = 0; i < ctx.n; i++) for (let j = 0; j < m; j++) db[j] = db[j]! + dy[i * m + j]!;
      grads.push({ tensor: this.bias, ids: Uint32Array.of(0), grads: Float32Array.from(db) });
    }
    return { dx: r.dx, grads };
  }
}

/** Linear in a Model: a proof reveals the weight and the bias whole; the claim is linearCanonical. */
export const linearKind: LayerKind<Linear, GhostLinearLayer> = {
  spec: linearSpec,
  name: 'a Linear',
  is: (layer): layer is Linear => layer instanceof Linear,

  shape(l, i, prevOut): LayerShape {
    if (l.mode !== 'sparse') throw new InvalidArgumentError(`layer ${i}: a proved model uses sparse layers (dense mode is the baseline; a dense Linear is k = outDim)`);
    if (prevOut !== -1 && prevOut !== l.inDim) throw new InvalidArgumentError(`layer ${i} takes ${l.inDim} inputs but layer ${i - 1} gives ${prevOut}`);
    return { inWidth: l.inDim, outWidth: l.outDim };
  },

  tensors: (l) => (l.bias === null ? [['weight', l.weight]] : [['weight', l.weight], ['bias', l.bias]]),
  ghost: (l, _shape, index) => ({ op: 'linear', dIn: l.inDim, dOut: l.outDim, weight: index(l.weight), k: l.k, bias: l.bias === null ? null : index(l.bias) }),
  fromGhost: async (l, tensors) => new Linear({ weight: tensors[l.weight]!, k: l.k, ...(l.bias === null ? {} : { bias: tensors[l.bias]! }) }),

  async forward(l, input): Promise<{ y: Float32Array; ctx: unknown }> {
    checkFloat32Array('input', input);
    return l.forward(input as Float32Array);
  },

  async backward(l, ctx, dy): Promise<LayerGradients> {
    const r = await l.backward(ctx as LinearContext, dy);
    return { dx: r.dx, grads: r.grads, dense: [] };
  },

  async prove(l, c): Promise<ProvedLayer> {
    const gl = c.ghost.manifest.layers[c.index] as GhostLinearLayer;
    const { blocks, resolved, rows } = revealWhole(c, linearReads(gl).keys());
    // clinear natively (native/src/core/canonical.cc: the same bits, test/canonical-kinds.test.ts).
    const bias = gl.bias === null ? null : rows.get(gl.bias)!;
    const y = callNative(() => native().canonicalLinear(c.x!, c.rows, gl.dIn, rows.get(gl.weight)!, gl.dOut, gl.k, bias));
    return { y, evidence: { op: 'linear', stages: [], blocks }, resolved };
  },
};

