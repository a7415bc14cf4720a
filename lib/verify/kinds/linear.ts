/**
 * The Linear kind, verifier half (docs/layer-kinds.md, "Linear"): y = x W^T + b over a
 * weight tensor of dOut patterns of dIn (pattern j is output column j) and an optional
 * bias tensor of one row of dOut; with k < dOut only each row's top-k columns of x W^T
 * are kept (a sparse projection). A proof reveals the weight and the bias whole; the
 * verifier re-derives the kept columns itself.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { clinear } from '../canonical.js';
import type { GhostManifest } from '../ghost-file.js';
import { GHOST_LIMITS, fail, ghostBad, ghostLimit, type LayerSpec } from '../layer-spec.js';

export interface GhostLinearLayer {
  op: 'linear';
  dIn: number;
  dOut: number;
  /** The weight tensor: dOut patterns of dIn. */
  weight: number;
  /** Columns kept per row (dOut: all, a dense layer). */
  k: number;
  /** The bias tensor (one row of dOut), or null. */
  bias: number | null;
}

/** What a Linear layer's proof reveals: the weight and the bias, whole. */
export function linearReads(l: GhostLinearLayer): Map<number, 'all'> {
  const reads = new Map<number, 'all'>([[l.weight, 'all']]);
  if (l.bias !== null) reads.set(l.bias, 'all');
  return reads;
}

/** The layer's canonical output for n rows of x, over the weight's and bias's rows. */
export function linearCanonical(g: GhostManifest, l: GhostLinearLayer, x: Float32Array, n: number, rowsOf: (tensor: number) => Float32Array): Float32Array {
  return clinear(x, n, l.dIn, rowsOf(l.weight), g.tensors[l.weight]!.n, l.k, l.bias === null ? null : rowsOf(l.bias));
}

export const linearSpec: LayerSpec<GhostLinearLayer> = {
  op: 'linear',
  code: 4,

  encode(w: ByteWriter, l: GhostLinearLayer): void {
    w.u32(l.dIn).u32(l.dOut).u32(l.weight).u32(l.k);
    if (l.bias === null) w.u8(0);
    else w.u8(1).u32(l.bias);
  },

  decode(r: ByteReader, i: number): GhostLinearLayer {
    const dIn = r.u32('dIn'), dOut = r.u32('dOut'), weight = r.u32('weight'), k = r.u32('k');
    const present = r.u8('bias present');
    if (present > 1) ghostBad(`layer ${i}: bias presence must be 0 or 1`);
    return { op: 'linear', dIn, dOut, weight, k, bias: present === 1 ? r.u32('bias') : null };
  },

  check(l, c): number {
    const at = c.at;
    ghostLimit(`${at} dIn`, l.dIn, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} dOut`, l.dOut, 1, GHOST_LIMITS.dim);
    if (c.prevOut !== -1 && c.prevOut !== l.dIn) ghostBad(`${at}: takes ${l.dIn} inputs but the layer before gives ${c.prevOut}`);
    const w = c.tensor(l.weight, `${at} weight`);
    if (w.dim !== l.dIn || w.n !== l.dOut) ghostBad(`${at}: the weight holds ${w.n} x ${w.dim}; a ${l.dIn} -> ${l.dOut} layer needs ${l.dOut} x ${l.dIn}`);
    ghostLimit(`${at} k`, l.k, 1, l.dOut);
    if (l.bias !== null) {
      const b = c.tensor(l.bias, `${at} bias`);
      if (b.n !== 1 || b.dim !== l.dOut) ghostBad(`${at}: the bias holds ${b.n} x ${b.dim}; it must be 1 x ${l.dOut}`);
      if (l.bias === l.weight) ghostBad(`${at}: the bias and the weight are one tensor`);
    }
    return l.dOut;
  },

  describe: (l) => `linear: ${l.dIn} -> ${l.dOut}, weight ${l.weight}${l.k < l.dOut ? ` (top ${l.k} columns)` : ''}${l.bias === null ? ', no bias' : `, bias ${l.bias}`}`,

  input: (l) => ({ kind: 'f32', cols: l.dIn }),
  outWidth: (l) => l.dOut,

  plan(l, _m, n, budget, li): void {
    const sparse = l.k < l.dOut;
    budget.cellsFor(n * l.dOut + l.dOut + l.dIn, `layer ${li} (linear, ${n} x ${l.dOut})`);
    budget.workFor(n * l.dIn * l.dOut + (sparse ? n * l.dOut * (16 + Math.ceil(l.k / 16)) : 0) + n * l.dOut, `layer ${li} (linear, ${n} x ${l.dIn} x ${l.dOut})`);
  },

  verify(l, ctx): Float32Array {
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${ctx.index} (linear) carries ${ctx.evidence.stages.length} stages; the verifier derives the selection itself`);
    const rev = ctx.reveal(linearReads(l));
    return linearCanonical(ctx.manifest, l, ctx.x!, ctx.rows, (t) => rev.get(t)!.rows);
  },
};
