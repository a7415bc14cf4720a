/**
 * The Position kind, verifier half (docs/layer-kinds.md, "Positions"): learned absolute
 * positions for a sequence (the rows of the batch, as attention reads them): row i of
 * the output is x_i + P_i, P a table of maxLength rows. A proof reveals rows 0..n-1.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { GHOST_LIMITS, fail, ghostBad, ghostLimit, type LayerSpec } from '../layer-spec.js';
import { cadd } from './add.js';

export interface GhostPositionLayer {
  op: 'position';
  dim: number;
  /** The table: maxLength rows of dim. */
  table: number;
}

/** Rows 0..n-1, the ones a sequence of n reads. */
export function positionIds(n: number): Uint32Array {
  return Uint32Array.from({ length: n }, (_, i) => i);
}

export const positionSpec: LayerSpec<GhostPositionLayer> = {
  op: 'position',
  code: 8,

  encode(w: ByteWriter, l: GhostPositionLayer): void {
    w.u32(l.dim).u32(l.table);
  },

  decode(r: ByteReader): GhostPositionLayer {
    return { op: 'position', dim: r.u32('dim'), table: r.u32('table') };
  },

  check(l, c): number {
    ghostLimit(`${c.at} dim`, l.dim, 1, GHOST_LIMITS.dim);
    if (c.prevOut !== -1 && c.prevOut !== l.dim) ghostBad(`${c.at}: takes ${l.dim} inputs but the layer it reads gives ${c.prevOut}`);
    const t = c.tensor(l.table, `${c.at} table`);
    if (t.dim !== l.dim) ghostBad(`${c.at}: dim ${l.dim} differs from its table's ${t.dim}`);
    return l.dim;
  },

  describe: (l, m) => `position: ${l.dim}, table ${l.table} (up to ${m.tensors[l.table]!.n} positions)`,

  input: (l) => ({ kind: 'f32', cols: l.dim }),
  outWidth: (l) => l.dim,

  plan(l, _m, n, budget, li): void {
    budget.cellsFor(2 * n * l.dim, `layer ${li} (position, ${n} x ${l.dim})`);
    budget.workFor(n * l.dim, `layer ${li} (position)`);
  },

  verify(l, ctx): Float32Array {
    const li = ctx.index, n = ctx.rows;
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${li} (position) has no retrieval stages`);
    const N = ctx.manifest.tensors[l.table]!.n;
    if (n > N) fail('SHAPE', `layer ${li}: a sequence of ${n} rows; the position table holds ${N}`);
    const rows = ctx.reveal(new Map([[l.table, positionIds(n)]])).get(l.table)!.rows;
    return cadd(ctx.x!, rows);
  },

  // y_i = f(x_i + P_i): the input's gradient is dy, and row i of the table receives dy_i.
  backward(l, ctx, dy): Float32Array[] {
    const d = l.dim;
    for (let i = 0; i < ctx.rows; i++) {
      const acc = ctx.grad(l.table, i);
      for (let j = 0; j < d; j++) acc[j] = acc[j]! + dy[i * d + j]!;
    }
    return [dy];
  },
};
