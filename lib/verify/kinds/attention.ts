/**
 * The SparseSelfAttention kind, verifier half (docs/attention.md): the input rows are
 * one sequence; optional projections (each a tensor whose pattern j is output column j,
 * keeping the top-k columns per row), then per head each query attends to its top-k
 * keys (j <= i when causal) with softmax(scale * s). A proof reveals every projection
 * tensor whole; the verifier re-derives every selection itself.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { cattention, cprojection } from '../canonical.js';
import { addScaled } from './linear.js';
import type { GhostManifest } from '../ghost-file.js';
import { fail, GHOST_LIMITS, ghostBad, ghostLimit, PAIR_WORK, type BackwardContext, type LayerSpec, type VerifyLayerContext } from '../layer-spec.js';

/** A projection of an attention layer: tensor `tensor` (pattern j = output column j), keeping `k` columns per row (k = N: all). */
export interface GhostProjection {
  tensor: number;
  k: number;
}

export interface GhostAttentionLayer {
  op: 'attention';
  dIn: number;
  dOut: number;
  heads: number;
  k: number;
  causal: boolean;
  /** An f32 value. */
  scale: number;
  query: GhostProjection | null;
  key: GhostProjection | null;
  value: GhostProjection | null;
  output: GhostProjection | null;
}

/** The width D of an attention layer's Q, K and V (heads x headDim). */
export function attentionWidth(g: GhostManifest, l: GhostAttentionLayer): number {
  const p = l.query ?? l.key ?? l.value;
  return p === null ? l.dIn : g.tensors[p.tensor]!.n;
}

/**
 * What an attention layer's proof reveals: every projection tensor whole ('all'), so
 * the verifier recomputes Q, K and V, re-derives each sparse projection's kept columns
 * and each query's top-k keys itself (nothing about the selection is taken on trust).
 */
export function attentionReads(l: GhostAttentionLayer): Map<number, 'all'> {
  const reads = new Map<number, 'all'>();
  for (const p of [l.query, l.key, l.value, l.output]) if (p !== null) reads.set(p.tensor, 'all');
  return reads;
}

/**
 * What an attention layer's canonical training forward keeps for its backward
 * (trainForward; docs/attention.md, "Canonical backward"). Q, K and V are the f32
 * projection outputs (the input itself where a projection is absent), o the f32 mix
 * before the output projection.
 */
export interface AttentionSaved {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  o: Float32Array;
  /** Per projection that keeps kp < m columns: each row's kept columns (n x kp, ascending); null when dense or absent. */
  kept: { query: Uint32Array | null; key: Uint32Array | null; value: Uint32Array | null; output: Uint32Array | null };
  /** Keys per query slot: min(k, n). */
  kk: number;
  /** Per head and query (heads x n x kk): the selected key positions in rank order (ctopk's), then -1 for a causal query that sees fewer. */
  top: Int32Array;
  /** Their softmax weights (csoftmax's f64 values), 0 on padding. */
  weights: Float64Array;
}

/** cprojection, also giving each row's kept columns (ascending) when `keep` and kp < m. */
function projectKeep(input: Float32Array, n: number, dIn: number, W: Float32Array, m: number, kp: number, keep: boolean): { y: Float32Array; kept: Uint32Array | null } {
  const kept = keep && kp < m ? new Uint32Array(n * kp) : null;
  return { y: cprojection(input, n, dIn, W, m, kp, kept ?? undefined), kept };
}

/** cattention, also giving each (head, query)'s selected keys and softmax weights when `keep`. */
function attendKeep(q: Float32Array, k: Float32Array, v: Float32Array, n: number, heads: number, kTop: number, causal: boolean, scale: number, keep: boolean):
  { o: Float32Array; kk: number; top: Int32Array; weights: Float64Array } {
  const kk = Math.min(kTop, n);
  const topAll = new Int32Array(keep ? heads * n * kk : 0).fill(-1);
  const weights = new Float64Array(keep ? heads * n * kk : 0);
  const o = cattention(q, k, v, n, heads, kTop, causal, scale, keep ? (h, i, top, a) => {
    topAll.set(top, (h * n + i) * kk);
    weights.set(a, (h * n + i) * kk);
  } : undefined);
  return { o, kk, top: topAll, weights };
}

/**
 * The canonical forward of an attention layer (n input rows = one sequence) over its
 * projection tensors' rows: n x dOut f32 and, when `keep`, what the canonical backward
 * needs. The one code path of the verifier (verify, trainForward) and the prover.
 */
export function attentionTrain(g: GhostManifest, l: GhostAttentionLayer, x: Float32Array, n: number, rowsOf: (tensor: number) => Float32Array, keep: boolean):
  { y: Float32Array; saved: AttentionSaved | null } {
  const project = (p: GhostProjection | null, input: Float32Array, inDim: number): { y: Float32Array; kept: Uint32Array | null } =>
    p === null ? { y: input, kept: null } : projectKeep(input, n, inDim, rowsOf(p.tensor), g.tensors[p.tensor]!.n, p.k, keep);
  const q = project(l.query, x, l.dIn), k = project(l.key, x, l.dIn), v = project(l.value, x, l.dIn);
  const a = attendKeep(q.y, k.y, v.y, n, l.heads, l.k, l.causal, l.scale, keep);
  const y = project(l.output, a.o, attentionWidth(g, l));
  if (!keep) return { y: y.y, saved: null };
  return {
    y: y.y,
    saved: {
      q: q.y, k: k.y, v: v.y, o: a.o,
      kept: { query: q.kept, key: k.kept, value: v.kept, output: y.kept },
      kk: a.kk, top: a.top, weights: a.weights,
    },
  };
}

/**
 * Runs an attention layer (n input rows = one sequence) with the canonical arithmetic
 * over its projection tensors' rows; returns n x dOut f32. The verifier runs it on
 * revealed rows and the prover (lib/model/kinds/attention.ts) to make its claim, so
 * honest outputs match bit for bit.
 */
export function attentionCanonical(g: GhostManifest, l: GhostAttentionLayer, x: Float32Array, n: number, rowsOf: (tensor: number) => Float32Array): Float32Array {
  return attentionTrain(g, l, x, n, rowsOf, false).y;
}

/** The revealed rows of a projection's tensor (all of them), or ProofError BLOCK_IDS. */
function revealedWhole(ctx: BackwardContext, p: GhostProjection): Float32Array {
  const r = ctx.revealed.get(p.tensor);
  if (r === undefined || !r.all) fail('BLOCK_IDS', `layer ${ctx.index} (attention): tensor ${p.tensor} was not revealed whole`);
  return r.rows;
}

/**
 * The backward of one projection y = f32(input W^T) (kept columns only): for each row i
 * ascending, each kept column c ascending (every c when dense) with g = dP[i m + c]:
 * dIn[i, t] += g * W[c, t] and the accumulator of row c of W gets g * input[i, t]
 * (t ascending). Accumulators are taken (ctx.grad) for the columns some row kept.
 */
function projectionBackward(ctx: BackwardContext, p: GhostProjection, input: Float32Array, inDim: number, dP: ArrayLike<number>, kept: Uint32Array | null, dIn: Float64Array): void {
  const m = ctx.manifest.tensors[p.tensor]!.n, n = ctx.rows;
  const W = revealedWhole(ctx, p);
  const dense = p.k >= m;
  if (!dense && kept === null) fail('SHAPE', `layer ${ctx.index} (attention): the kept columns of tensor ${p.tensor} were not saved`);
  const kp = dense ? m : p.k;
  const acc: (Float64Array | undefined)[] = new Array<Float64Array | undefined>(m);
  if (dense) for (let c = 0; c < m; c++) acc[c] = ctx.grad(p.tensor, c);
  else {
    const used = new Uint8Array(m);
    for (const c of kept!) used[c] = 1;
    for (let c = 0; c < m; c++) if (used[c] === 1) acc[c] = ctx.grad(p.tensor, c);
  }
  for (let i = 0; i < n; i++) {
    const xo = i * inDim;
    for (let r = 0; r < kp; r++) {
      const c = dense ? r : kept![i * kp + r]!;
      const gv = dP[i * m + c]!, a = acc[c]!, wo = c * inDim;
      addScaled(dIn, xo, gv, W, wo, inDim);
      addScaled(a, 0, gv, input, xo, inDim);
    }
  }
}

/**
 * The canonical backward of an attention layer (docs/attention.md, "Canonical backward
 * (step proofs)"): the output projection, then the attention per head and query
 * through the selected keys, then the Q, K and V projections into one f64 dx, rounded
 * to f32 once.
 */
export function attentionBackward(l: GhostAttentionLayer, ctx: BackwardContext, dy: Float32Array): Float32Array[] {
  const g = ctx.manifest, n = ctx.rows, x = ctx.inputs[0]!;
  const D = attentionWidth(g, l), dk = D / l.heads, dOut = l.dOut;
  if (dy.length !== n * dOut) fail('SHAPE', `layer ${ctx.index} (attention): dy has ${dy.length} values; the output has ${n * dOut}`);
  const s = (ctx.saved as AttentionSaved | null | undefined) ??
    attentionTrain(g, l, x, n, (t) => revealedWhole(ctx, { tensor: t, k: 0 }), true).saved!;
  // The output projection: dO (f64) from dy.
  let dO: Float64Array;
  if (l.output === null) dO = Float64Array.from(dy);
  else {
    dO = new Float64Array(n * D);
    projectionBackward(ctx, l.output, s.o, D, dy, s.kept.output, dO);
  }
  // The attention through the selected keys (held fixed), heads then queries ascending.
  const { q, k, v, kk, top, weights } = s;
  const dQ = new Float64Array(n * D), dK = new Float64Array(n * D), dV = new Float64Array(n * D);
  const dA = new Float64Array(kk);
  for (let h = 0; h < l.heads; h++) {
    const ho = h * dk;
    for (let i = 0; i < n; i++) {
      const cnt = Math.min(l.k, l.causal ? i + 1 : n), base = (h * n + i) * kk, io = i * D + ho;
      let mu = 0;
      for (let r = 0; r < cnt; r++) {
        const jo = top[base + r]! * D + ho;
        let d = 0;
        for (let t = 0; t < dk; t++) d = d + dO[io + t]! * v[jo + t]!;
        dA[r] = d;
        mu = mu + weights[base + r]! * d;
      }
      for (let r = 0; r < cnt; r++) {
        const jo = top[base + r]! * D + ho, a = weights[base + r]!;
        const gz = (a * (dA[r]! - mu)) * l.scale;
        for (let t = 0; t < dk; t++) {
          dV[jo + t] = dV[jo + t]! + a * dO[io + t]!;
          dQ[io + t] = dQ[io + t]! + gz * k[jo + t]!;
          dK[jo + t] = dK[jo + t]! + gz * q[io + t]!;
        }
      }
    }
  }
  // Q, K, V in that order into one f64 dx (an absent projection passes its gradient through).
  const dx = new Float64Array(n * l.dIn);
  for (const [p, dP, kept] of [[l.query, dQ, s.kept.query], [l.key, dK, s.kept.key], [l.value, dV, s.kept.value]] as const) {
    if (p === null) for (let j = 0; j < dx.length; j++) dx[j] = dx[j]! + dP[j]!;
    else projectionBackward(ctx, p, x, l.dIn, dP, kept, dx);
  }
  return [Float32Array.from(dx)];
}

const PROJECTIONS = ['query', 'key', 'value', 'output'] as const;

export const attentionSpec: LayerSpec<GhostAttentionLayer> = {
  op: 'attention',
  code: 3,

  encode(w: ByteWriter, l: GhostAttentionLayer): void {
    w.u32(l.dIn).u32(l.dOut).u32(l.heads).u32(l.k).u8(l.causal ? 1 : 0).f32(l.scale);
    for (const p of [l.query, l.key, l.value, l.output]) {
      if (p === null) w.u8(0);
      else w.u8(1).u32(p.tensor).u32(p.k);
    }
  },

  decode(r: ByteReader, i: number): GhostAttentionLayer {
    const dIn = r.u32('dIn'), dOut = r.u32('dOut'), heads = r.u32('heads'), k = r.u32('k');
    const causal = r.u8('causal');
    if (causal > 1) ghostBad(`layer ${i}: causal must be 0 or 1`);
    const scale = r.f32('scale');
    const proj = (what: string): GhostProjection | null => {
      const present = r.u8(`${what} present`);
      if (present > 1) ghostBad(`layer ${i}: ${what} presence must be 0 or 1`);
      return present === 0 ? null : { tensor: r.u32(`${what} tensor`), k: r.u32(`${what} k`) };
    };
    const [query, key, value, output] = PROJECTIONS.map(proj) as [GhostProjection | null, GhostProjection | null, GhostProjection | null, GhostProjection | null];
    return { op: 'attention', dIn, dOut, heads, k, causal: causal === 1, scale, query, key, value, output };
  },

  check(l, c): number {
    const at = c.at;
    ghostLimit(`${at} dIn`, l.dIn, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} dOut`, l.dOut, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} heads`, l.heads, 1, GHOST_LIMITS.heads);
    ghostLimit(`${at} k`, l.k, 1, GHOST_LIMITS.k);
    if (typeof l.causal !== 'boolean') ghostBad(`${at}: causal must be a boolean`);
    if (!Number.isFinite(l.scale) || Math.fround(l.scale) !== l.scale || !(l.scale > 0)) ghostBad(`${at}: scale must be a finite f32 > 0`);
    if (c.prevOut !== -1 && c.prevOut !== l.dIn) ghostBad(`${at}: takes ${l.dIn} inputs but the layer before gives ${c.prevOut}`);
    const proj = (p: GhostProjection | null, what: string, inDim: number): number | null => {
      if (p === null) return null;
      const t = c.tensor(p.tensor, `${at} ${what}`);
      if (t.dim !== inDim) ghostBad(`${at}: the ${what} projection reads ${t.dim} values; it gets ${inDim}`);
      ghostLimit(`${at} ${what} k`, p.k, 1, Math.min(t.n, GHOST_LIMITS.dim));
      return t.n;
    };
    const widths = [proj(l.query, 'query', l.dIn), proj(l.key, 'key', l.dIn), proj(l.value, 'value', l.dIn)];
    const D = attentionWidth(c.manifest, l);
    for (const w of widths) if ((w ?? l.dIn) !== D) ghostBad(`${at}: Q, K and V must have one width (a missing projection passes the ${l.dIn} inputs through)`);
    if (D % l.heads !== 0) ghostBad(`${at}: width ${D} is not a multiple of ${l.heads} heads`);
    const o = proj(l.output, 'output', D);
    if ((o ?? D) !== l.dOut) ghostBad(`${at}: dOut ${l.dOut} differs from the output width ${o ?? D}`);
    return l.dOut;
  },

  describe(l, m): string {
    const proj = (name: string, p: GhostProjection | null): string =>
      p === null ? '' : `, ${name} ${p.tensor}${p.k < m.tensors[p.tensor]!.n ? ` (top ${p.k} columns)` : ''}`;
    return `attention: ${l.dIn} -> ${l.dOut}, ${l.heads} head(s), k = ${l.k}${l.causal ? ', causal' : ''}, scale ${l.scale.toPrecision(5)}` +
      `${proj('query', l.query)}${proj('key', l.key)}${proj('value', l.value)}${proj('output', l.output)}`;
  },

  input: (l) => ({ kind: 'f32', cols: l.dIn }),
  outWidth: (l) => l.dOut,

  plan(l, g, n, budget, li): void {
    budget.atMost(n, budget.limits.maxSequence, `layer ${li} (attention): the sequence length`, 'maxSequence');
    const D = attentionWidth(g, l), dk = D / l.heads;
    let work = 0, cells = 0;
    for (const [pr, inDim] of [[l.query, l.dIn], [l.key, l.dIn], [l.value, l.dIn], [l.output, D]] as const) {
      if (pr === null) continue;
      const m = g.tensors[pr.tensor]!.n;
      work += n * inDim * m + (pr.k < m ? n * m * (16 + Math.ceil(pr.k / 16)) : 0);
      cells += n * m + m + inDim;
    }
    const kk = Math.min(l.k, n);
    const pairs = l.causal ? (n * (n + 1)) / 2 : n * n;
    work += l.heads * pairs * (PAIR_WORK + 2 * dk + Math.ceil(kk / 16)) + n * kk * D;
    cells += 2 * n * D + n * l.dOut + 2 * n + kk;
    budget.cellsFor(cells, `layer ${li} (attention, n = ${n})`);
    budget.workFor(work, `layer ${li} (attention, n = ${n}, D = ${D})`);
  },

  verify(l, ctx): Float32Array {
    return attentionRun(l, ctx, false).y;
  },

  trainForward: (l, ctx) => attentionRun(l, ctx, true),

  backward: attentionBackward,
};

/** verify and trainForward: one code path (`keep` only records what backward needs). */
function attentionRun(l: GhostAttentionLayer, ctx: VerifyLayerContext, keep: boolean): { y: Float32Array; saved: AttentionSaved | null } {
  const li = ctx.index, n = ctx.rows;
  if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${li} (attention) carries ${ctx.evidence.stages.length} stages; the verifier derives the selection itself`);
  // A sequence shorter than k: each query attends to every key it may see (attendKeep takes min(k, candidates)).
  const rev = ctx.reveal(attentionReads(l));
  return attentionTrain(ctx.manifest, l, ctx.x!, n, (t) => rev.get(t)!.rows, keep);
}
