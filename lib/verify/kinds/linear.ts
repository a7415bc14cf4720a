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
import { GHOST_LIMITS, fail, ghostBad, ghostLimit, type BackwardContext, type LayerSpec, type VerifyLayerContext } from '../layer-spec.js';

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

/**
 * clinear (canonical.ts), keeping what the canonical backward needs: with k < dOut, each
 * row's kept columns (n x k, each row's ascending); null when every column is kept. The
 * same arithmetic as clinear: cdots of the row with every pattern, ctopk (ties to the
 * lower column), y_ij = f32(s_j + b_j) for a kept column, f32(b_j) (or 0) for another.
 */
export function linearTrain(x: Float32Array, n: number, dIn: number, W: Float32Array, m: number, kp: number, bias: Float32Array | null): { y: Float32Array; kept: Uint32Array | null } {
  const kept = kp < m ? new Uint32Array(n * kp) : null;
  return { y: clinear(x, n, dIn, W, m, kp, bias, kept ?? undefined), kept };
}

/**
 * dst[d + t] = dst[d + t] + c * src[s + t] for t = 0..len-1, each element in its own f64
 * multiply and add (no fused multiply-add in JavaScript): the canonical backwards' inner
 * loop, unrolled by 4 (the same arithmetic as the plain loop, element by element).
 */
export function addScaled(dst: Float64Array, d: number, c: number, src: Float32Array | Float64Array, s: number, len: number): void {
  let t = 0;
  for (; t + 4 <= len; t += 4) {
    dst[d + t] = dst[d + t]! + c * src[s + t]!;
    dst[d + t + 1] = dst[d + t + 1]! + c * src[s + t + 1]!;
    dst[d + t + 2] = dst[d + t + 2]! + c * src[s + t + 2]!;
    dst[d + t + 3] = dst[d + t + 3]! + c * src[s + t + 3]!;
  }
  for (; t < len; t++) dst[d + t] = dst[d + t]! + c * src[s + t]!;
}

/** The rows of a tensor the layer's forward revealed whole (its backward reads them), or ProofError BLOCK_IDS. */
export function wholeRows(ctx: BackwardContext, tensor: number): Float32Array {
  const r = ctx.revealed.get(tensor);
  if (!r || !r.all) fail('BLOCK_IDS', `layer ${ctx.index}'s backward reads tensor ${tensor} whole, which its forward did not reveal`);
  return r.rows;
}

function linearForward(l: GhostLinearLayer, ctx: VerifyLayerContext): { y: Float32Array; kept: Uint32Array | null } {
  if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${ctx.index} (linear) carries ${ctx.evidence.stages.length} stages; the verifier derives the selection itself`);
  const rev = ctx.reveal(linearReads(l));
  return linearTrain(ctx.x!, ctx.rows, l.dIn, rev.get(l.weight)!.rows, ctx.manifest.tensors[l.weight]!.n, l.k, l.bias === null ? null : rev.get(l.bias)!.rows);
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
    return linearForward(l, ctx).y;
  },

  trainForward(l, ctx) {
    const r = linearForward(l, ctx);
    return { y: r.y, saved: r.kept };
  },

  // docs/layer-kinds.md, "Linear": K_i = row i's kept columns (all when k = dOut), in f64 from
  // the f32 values. dx_it = f32(sum over j in K_i ascending of dy_ij W_jt). Weight row j (one
  // with j in some K_i) receives dy_ij x_i for i ascending; the bias row receives dy_i for i
  // ascending (every column: an unkept y_ij is b_j). Each product of two f32 is exact in f64.
  backward(l, ctx, dy): Float32Array[] {
    const n = ctx.rows, dIn = l.dIn, m = l.dOut, x = ctx.inputs[0]!;
    const kept = ctx.saved as Uint32Array | null | undefined;
    const sparse = l.k < m;
    if (sparse && !(kept instanceof Uint32Array && kept.length === n * l.k)) fail('SHAPE', `layer ${ctx.index} (linear): its backward needs the forward's kept columns (trainForward)`);
    const W = wholeRows(ctx, l.weight);
    if (l.bias !== null) wholeRows(ctx, l.bias);
    const kp = sparse ? l.k : m;
    const col = (i: number, r: number): number => (sparse ? kept![i * kp + r]! : r);
    // dx, and which (row, column) pairs are kept.
    const dx = new Float32Array(n * dIn);
    const acc = new Float64Array(dIn);
    const mask = sparse ? new Uint8Array(n * m) : null;
    for (let i = 0; i < n; i++) {
      acc.fill(0);
      for (let r = 0; r < kp; r++) {
        const j = col(i, r);
        if (mask) mask[i * m + j] = 1;
        addScaled(acc, 0, dy[i * m + j]!, W, j * dIn, dIn);
      }
      for (let t = 0; t < dIn; t++) dx[i * dIn + t] = acc[t]!;
    }
    for (let j = 0; j < m; j++) {
      let g: Float64Array | null = null;
      for (let i = 0; i < n; i++) {
        if (mask && !mask[i * m + j]) continue;
        g ??= ctx.grad(l.weight, j);
        addScaled(g, 0, dy[i * m + j]!, x, i * dIn, dIn);
      }
    }
    if (l.bias !== null) {
      const b = ctx.grad(l.bias, 0);
      for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) b[j] = b[j]! + dy[i * m + j]!;
    }
    return [dx];
  },
};
