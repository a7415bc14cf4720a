/**
 * One step's gradients from several tapes (docs/training.md, "Batches of sequences"): a
 * sequence model runs one sequence per tape (an attention layer attends over all rows of
 * its input), so a batch of B sequences is B tapes, and mergeGradients(list) gives the
 * Trainer one Gradients for them all:
 *
 *   - per SparseTensor, the rows of every tape's entry concatenated in list order (the
 *     optimizers sum repeated ids; Trainer.globalNorm does too), each value times scale;
 *   - per dense parameter, the sum of the tapes' gradients (in f64, rounded once) times scale;
 *   - of(value): scale times the gradient of the tape the value belongs to.
 *
 * scale defaults to 1 / list.length: the gradients of the mean of the tapes' losses (each
 * tape's loss is itself a mean over its rows). Multiplying by scale rounds each value to
 * f32 once; with scale 1 the rows are copied as they are.
 */
import { checkNumber, checkOptions, describe, toIds } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import type { SparseTensor } from '../../tensor/sparse-tensor.js';
import type { SparseGrad } from '../optim.js';
import type { Gradients, TapeValue } from './tape.js';

export interface MergeGradientsOptions {
  /** Factor applied to every merged gradient (default 1 / list.length: the mean of the losses). */
  scale?: number;
}

function checkGradients(g: unknown, i: number): Gradients {
  const o = g as Gradients | null;
  if (o === null || typeof o !== 'object' || !Array.isArray(o.sparse) || !Array.isArray(o.dense) || typeof o.of !== 'function') {
    throw new InvalidArgumentError(`list[${i}] must be a tape's gradients { sparse, dense, of }, got ${describe(g)}`);
  }
  return o;
}

/** One Gradients for several tapes' (see the module comment). */
export function mergeGradients(list: readonly Gradients[], options: MergeGradientsOptions = {}): Gradients {
  const o = checkOptions('mergeGradients', options, ['scale']);
  if (!Array.isArray(list) || list.length === 0) throw new InvalidArgumentError(`list must be a non-empty array of Gradients, got ${describe(list)}`);
  const sources = list.map(checkGradients);
  const scale = o.scale === undefined ? 1 / sources.length : checkNumber('scale', o.scale, 0, 1e30, true);
  // Entries per tensor and per dense parameter, in list order (checked before any copy).
  const sparse = new Map<SparseTensor, { ids: Uint32Array; grads: Float32Array }[]>();
  const dense = new Map<Float32Array, Float32Array[]>();
  sources.forEach((g, i) => {
    g.sparse.forEach((s: SparseGrad, j) => {
      const where = `list[${i}].sparse[${j}]`;
      if (s === null || typeof s !== 'object' || s.tensor === undefined || !(s.grads instanceof Float32Array)) throw new InvalidArgumentError(`${where} must be { tensor, ids, grads }`);
      const ids = toIds(`${where}.ids`, s.ids);
      if (s.grads.length !== ids.length * s.tensor.dim) throw new InvalidArgumentError(`${where}.grads must be ids.length * dim = ${ids.length * s.tensor.dim} floats, got ${s.grads.length}`);
      const cur = sparse.get(s.tensor);
      if (cur === undefined) sparse.set(s.tensor, [{ ids, grads: s.grads }]);
      else cur.push({ ids, grads: s.grads });
    });
    g.dense.forEach((d, j) => {
      if (d === null || typeof d !== 'object' || !(d.param instanceof Float32Array) || !(d.grad instanceof Float32Array) || d.grad.length !== d.param.length) {
        throw new InvalidArgumentError(`list[${i}].dense[${j}] must be { param, grad }, two Float32Arrays of one length`);
      }
      const cur = dense.get(d.param);
      if (cur === undefined) dense.set(d.param, [d.grad]);
      else cur.push(d.grad);
    });
  });
  const outSparse: SparseGrad[] = [];
  for (const [tensor, entries] of sparse) {
    let rows = 0;
    for (const e of entries) rows += e.ids.length;
    const ids = new Uint32Array(rows);
    const grads = new Float32Array(rows * tensor.dim);
    let at = 0;
    for (const e of entries) {
      ids.set(e.ids, at);
      const base = at * tensor.dim, src = e.grads;
      if (scale === 1) grads.set(src, base);
      else for (let j = 0; j < src.length; j++) grads[base + j] = src[j]! * scale;
      at += e.ids.length;
    }
    outSparse.push({ tensor, ids, grads });
  }
  const outDense: { param: Float32Array; grad: Float32Array }[] = [];
  for (const [param, grads] of dense) {
    const acc = new Float64Array(param.length);
    for (const g of grads) for (let j = 0; j < acc.length; j++) acc[j] = acc[j]! + g[j]!;
    const grad = new Float32Array(param.length);
    for (let j = 0; j < acc.length; j++) grad[j] = acc[j]! * scale;
    outDense.push({ param, grad });
  }
  return {
    sparse: outSparse,
    dense: outDense,
    of(value: TapeValue): Float32Array | null {
      for (const g of sources) {
        let r: Float32Array | null;
        try {
          r = g.of(value);
        } catch {
          continue; // a value of another tape
        }
        if (r === null) return null;
        const out = new Float32Array(r.length);
        for (let j = 0; j < r.length; j++) out[j] = r[j]! * scale;
        return out;
      }
      throw new InvalidArgumentError('of(value): not a value of any of the merged tapes');
    },
  };
}
