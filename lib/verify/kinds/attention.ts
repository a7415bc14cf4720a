/**
 * The SparseSelfAttention kind, verifier half (docs/attention.md): the input rows are
 * one sequence; optional projections (each a tensor whose pattern j is output column j,
 * keeping the top-k columns per row), then per head each query attends to its top-k
 * keys (j <= i when causal) with softmax(scale * s). A proof reveals every projection
 * tensor whole; the verifier re-derives every selection itself.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { cattention, cprojection } from '../canonical.js';
import type { GhostManifest } from '../ghost-file.js';
import { fail, GHOST_LIMITS, ghostBad, ghostLimit, PAIR_WORK, type LayerSpec } from '../layer-spec.js';

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
 * Runs an attention layer (n input rows = one sequence) with the canonical arithmetic
 * over its projection tensors' rows; returns n x dOut f32. The verifier runs it on
 * revealed rows and the prover (lib/model/kinds/attention.ts) to make its claim, so
 * honest outputs match bit for bit.
 */
export function attentionCanonical(g: GhostManifest, l: GhostAttentionLayer, x: Float32Array, n: number, rowsOf: (tensor: number) => Float32Array): Float32Array {
  const project = (p: GhostProjection | null, input: Float32Array, inDim: number): Float32Array => {
    if (p === null) return input;
    const t = g.tensors[p.tensor]!;
    return cprojection(input, n, inDim, rowsOf(p.tensor), t.n, p.k);
  };
  const q = project(l.query, x, l.dIn), k = project(l.key, x, l.dIn), v = project(l.value, x, l.dIn);
  const o = cattention(q, k, v, n, l.heads, l.k, l.causal, l.scale);
  return project(l.output, o, attentionWidth(g, l));
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
    const li = ctx.index, n = ctx.rows;
    if (ctx.evidence.stages.length !== 0) fail('SHAPE', `layer ${li} (attention) carries ${ctx.evidence.stages.length} stages; the verifier derives the selection itself`);
    // A sequence shorter than k: each query attends to every key it may see (cattention takes min(k, candidates)).
    const rev = ctx.reveal(attentionReads(l));
    return attentionCanonical(ctx.manifest, l, ctx.x!, n, (t) => rev.get(t)!.rows);
  },
};
