/**
 * The Embedding kind, verifier half: the first layer of a model that takes ids; each id
 * is a row of its table (docs/proof-format.md, "Embedding layers").
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { fail, ghostBad, rowOf, sortedUniqueIds, type LayerSpec } from '../layer-spec.js';

export interface GhostEmbeddingLayer {
  op: 'embedding';
  table: number;
  dim: number;
}

export const embeddingSpec: LayerSpec<GhostEmbeddingLayer> = {
  op: 'embedding',
  code: 2,

  encode(w: ByteWriter, l: GhostEmbeddingLayer): void {
    w.u32(l.table).u32(l.dim);
  },

  decode(r: ByteReader): GhostEmbeddingLayer {
    return { op: 'embedding', table: r.u32('table'), dim: r.u32('dim') };
  },

  check(l, c): number {
    if (c.index !== 0) ghostBad(`${c.at}: an embedding takes ids, so it can only be the first layer`);
    const t = c.tensor(l.table, c.at);
    if (t.dim !== l.dim) ghostBad(`${c.at}: dim ${l.dim} differs from its table's ${t.dim}`);
    return l.dim;
  },

  describe: (l) => `embedding: table ${l.table}, dim ${l.dim}`,

  input: (l, m) => ({ kind: 'ids', n: m.tensors[l.table]!.n }),
  outWidth: (l) => l.dim,

  plan(l, _m, B, budget, li): void {
    budget.cellsFor(B * (l.dim + 2), `layer ${li}'s ${B} x ${l.dim} output`);
    budget.workFor(B * l.dim, `layer ${li} (embedding)`);
  },

  verify(l, ctx): Float32Array {
    const li = ctx.index, ids = ctx.ids!, B = ctx.rows;
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${li} (embedding) has no retrieval stages`);
    const t = ctx.manifest.tensors[l.table]!;
    for (const id of ids) if (id >= t.n) fail('ID_OUT_OF_RANGE', `embedding id ${id} >= N = ${t.n}`);
    const rev = ctx.reveal(new Map([[l.table, sortedUniqueIds([ids])]])).get(l.table)!;
    const y = new Float32Array(B * l.dim);
    ids.forEach((id, b) => y.set(rev.rows.subarray(rowOf(rev, id), rowOf(rev, id) + l.dim), b * l.dim));
    return y;
  },

  // Row ids[b] receives dy_b, for b in order (a repeated id sums its rows in f64).
  backward(l, ctx, dy): Float32Array[] {
    const ids = ctx.ids!, d = l.dim;
    for (let b = 0; b < ids.length; b++) {
      const acc = ctx.grad(l.table, ids[b]!);
      for (let j = 0; j < d; j++) acc[j] = acc[j]! + dy[b * d + j]!;
    }
    return [];
  },
};
