/**
 * The canonical backward of attention layers (lib/verify/kinds/attention.ts,
 * docs/attention.md "Canonical backward (step proofs)"): against a float64 forward
 * written here from the documented formula, by central finite differences of
 * L = sum(dy * y) (each probe counted only when no selection moved), against the
 * model tier's fast backward (SparseSelfAttention.backward), and with hostile contexts.
 */
import { describe, expect, it } from 'vitest';

import { Embedding, Model, Projection, ProofError, SparseSelfAttention, SparseTensor } from '../lib/index.js';
import type { BackwardContext } from '../lib/verify/layer-spec.js';
import { attentionSpec, type AttentionSaved, type GhostAttentionLayer } from '../lib/verify/kinds/attention.js';
import { canonicalGrads, type CanonicalGrads } from './helpers/canonical-grad.js';
import { Rng } from './helpers/rng.js';

/** A projection of a configuration: absent, dense, or keeping kp columns; `share` reuses the query's weight. */
type P = null | 'dense' | number | 'share';

interface Config {
  name: string;
  dIn: number;
  /** Width of Q, K, V (taken from dIn when Q, K and V are all absent). */
  D: number;
  /** Output projection width (when present). */
  out: number;
  heads: number;
  k: number;
  causal: boolean;
  n: number;
  q: P;
  key: P;
  v: P;
  o: P;
  scale?: number;
  /** An embedding of ids before the attention (needed when no projection fixes the width): x = table[ids], with repeated ids. */
  embed?: boolean;
}

const CONFIGS: Config[] = [
  { name: 'all four dense, causal, 2 heads, k < visible', dIn: 6, D: 8, out: 5, heads: 2, k: 2, causal: true, n: 6, q: 'dense', key: 'dense', v: 'dense', o: 'dense' },
  { name: 'all four keep kp < m columns, not causal, 2 heads, k < n, scale 0.3 (stored as f32)', dIn: 6, D: 8, out: 6, heads: 2, k: 3, causal: false, n: 5, q: 5, key: 4, v: 6, o: 3, scale: 0.3 },
  { name: 'Q sparse, K absent, V dense, O absent; 3 heads, causal, k >= visible', dIn: 6, D: 6, out: 6, heads: 3, k: 7, causal: true, n: 5, q: 4, key: null, v: 'dense', o: null },
  { name: 'Q absent, K dense, V absent, O sparse; not causal, k >= n', dIn: 8, D: 8, out: 5, heads: 2, k: 9, causal: false, n: 5, q: null, key: 'dense', v: null, o: 3 },
  { name: 'Q and K share one weight (sparse), V sparse, O dense; causal, 2 heads, k = 2', dIn: 6, D: 8, out: 4, heads: 2, k: 2, causal: true, n: 7, q: 5, key: 'share', v: 3, o: 'dense' },
  { name: 'no projections (after an embedding, repeated ids), 2 heads, causal, k < visible', dIn: 6, D: 6, out: 6, heads: 2, k: 2, causal: true, n: 6, q: null, key: null, v: null, o: null, embed: true },
  { name: 'a causal sequence of length 1', dIn: 5, D: 4, out: 3, heads: 2, k: 3, causal: true, n: 1, q: 'dense', key: 2, v: 'dense', o: 'dense' },
  { name: 'a sequence shorter than k, not causal', dIn: 5, D: 6, out: 4, heads: 3, k: 6, causal: false, n: 3, q: 4, key: 'dense', v: 5, o: 2 },
];

/** Everything a configuration builds: the model, its attention layer and the f64 values of its parameters. */
function build(c: Config, seed: number) {
  const rng = new Rng(seed);
  const mk = (p: P, m: number, inDim: number): { t: SparseTensor; w: Float64Array; kp: number } | null => {
    if (p === null || p === 'share') return null;
    const w = rng.f32(m * inDim, 0.5);
    return { t: SparseTensor.fromArray(w, inDim), w: Float64Array.from(w), kp: p === 'dense' ? m : p };
  };
  const q = mk(c.q, c.D, c.dIn);
  const key = c.key === 'share' ? { ...q!, kp: q!.kp } : mk(c.key, c.D, c.dIn);
  const v = mk(c.v, c.D, c.dIn), o = mk(c.o, c.out, c.D);
  const proj = (p: { t: SparseTensor; kp: number }): Projection => new Projection({ weight: p.t, ...(p.kp < p.t.size ? { k: p.kp } : {}) });
  const attn = new SparseSelfAttention({
    heads: c.heads, k: c.k, causal: c.causal, ...(c.scale !== undefined ? { scale: c.scale } : {}),
    ...(q ? { query: proj(q) } : {}), ...(key ? { key: proj(key) } : {}), ...(v ? { value: proj(v) } : {}), ...(o ? { output: proj(o) } : {}),
  });
  // With an embedding: a table of 5 rows; the ids repeat (row 1 three times), row 4 is unused.
  const table = c.embed ? rng.f32(5 * c.dIn) : null;
  const tableT = table ? SparseTensor.fromArray(table, c.dIn) : null;
  const ids = c.embed ? Uint32Array.from({ length: c.n }, (_, i) => [1, 0, 1, 3, 2, 1][i % 6]!) : null;
  const model = new Model(tableT ? [new Embedding(tableT), attn] : [attn]);
  const x = table ? Float32Array.from({ length: c.n * c.dIn }, (_, i) => table[ids![Math.floor(i / c.dIn)]! * c.dIn + (i % c.dIn)]!) : rng.f32(c.n * c.dIn);
  const outW = o ? c.out : c.D;
  const dy = rng.f32(c.n * outW);
  const scale = Math.fround(c.scale ?? 1 / Math.sqrt(c.D / c.heads));
  return { q, key, v, o, attn, model, x, dy, ids, table: table ? Float64Array.from(table) : null, tableT, outW, scale };
}

type Built = ReturnType<typeof build>;

/** Top `kp` of s (descending, ties to the lower index), as a sorted list. */
function topSet(s: Float64Array | number[], kp: number): number[] {
  const idx = Array.from({ length: s.length }, (_, j) => j);
  idx.sort((a, b) => (s[b]! - s[a]!) || a - b);
  return idx.slice(0, kp).sort((a, b) => a - b);
}

/**
 * The float64 forward from docs/proof-format.md section 1 (no f32 roundings): L =
 * sum(dy * y) and a signature of every selection (kept columns, selected keys).
 */
function reference(c: Config, b: Built, x: Float64Array | null, w: { q: Float64Array | null; key: Float64Array | null; v: Float64Array | null; o: Float64Array | null }): { L: number; y: Float64Array; sig: string } {
  const n = c.n;
  const sig: string[] = [];
  const project = (inp: Float64Array, inDim: number, W: Float64Array | null, m: number, kp: number, tag: string): Float64Array => {
    if (W === null) return inp;
    const y = new Float64Array(n * m);
    for (let i = 0; i < n; i++) {
      const s = new Float64Array(m);
      for (let j = 0; j < m; j++) {
        let t = 0;
        for (let u = 0; u < inDim; u++) t += inp[i * inDim + u]! * W[j * inDim + u]!;
        s[j] = t;
      }
      const keep = kp < m ? topSet(s, kp) : Array.from({ length: m }, (_, j) => j);
      if (kp < m) sig.push(`${tag}${i}:${keep.join(',')}`);
      for (const j of keep) y[i * m + j] = s[j]!;
    }
    return y;
  };
  const xin = b.table ? Float64Array.from({ length: n * c.dIn }, (_, i) => b.table![b.ids![Math.floor(i / c.dIn)]! * c.dIn + (i % c.dIn)]!) : x!;
  const Q = project(xin, c.dIn, w.q, c.D, b.q?.kp ?? 0, 'q');
  const K = project(xin, c.dIn, w.key, c.D, b.key?.kp ?? 0, 'k');
  const V = project(xin, c.dIn, w.v, c.D, b.v?.kp ?? 0, 'v');
  const D = c.D, dk = D / c.heads;
  const O = new Float64Array(n * D);
  for (let h = 0; h < c.heads; h++) {
    for (let i = 0; i < n; i++) {
      const vis = c.causal ? i + 1 : n;
      const s: number[] = [];
      for (let j = 0; j < vis; j++) {
        let t = 0;
        for (let u = 0; u < dk; u++) t += Q[i * D + h * dk + u]! * K[j * D + h * dk + u]!;
        s.push(t);
      }
      const sel = topSet(s, Math.min(c.k, vis));
      sig.push(`a${h},${i}:${sel.join(',')}`);
      const mx = Math.max(...sel.map((j) => b.scale * s[j]!));
      const e = sel.map((j) => Math.exp(b.scale * s[j]! - mx));
      const z = e.reduce((p, q) => p + q, 0);
      sel.forEach((j, r) => {
        for (let u = 0; u < dk; u++) O[i * D + h * dk + u] = O[i * D + h * dk + u]! + (e[r]! / z) * V[j * D + h * dk + u]!;
      });
    }
  }
  const y = project(O, D, w.o, c.out, b.o?.kp ?? 0, 'o');
  let L = 0;
  for (let i = 0; i < y.length; i++) L += b.dy[i]! * y[i]!;
  return { L, y, sig: sig.join(';') };
}

/** The selection signature of the canonical forward's saved state, in reference()'s format. */
function canonicalSig(c: Config, s: AttentionSaved): string {
  const sig: string[] = [];
  const rows = (kept: Uint32Array | null, tag: string, kp: number): void => {
    if (kept === null) return;
    for (let i = 0; i < c.n; i++) sig.push(`${tag}${i}:${Array.from(kept.subarray(i * kp, (i + 1) * kp)).join(',')}`);
  };
  const kpOf = (k: Uint32Array | null): number => (k === null ? 0 : k.length / c.n);
  rows(s.kept.query, 'q', kpOf(s.kept.query));
  rows(s.kept.key, 'k', kpOf(s.kept.key));
  rows(s.kept.value, 'v', kpOf(s.kept.value));
  const heads: string[] = [];
  for (let h = 0; h < c.heads; h++) {
    for (let i = 0; i < c.n; i++) {
      const ids = Array.from(s.top.subarray((h * c.n + i) * s.kk, (h * c.n + i + 1) * s.kk)).filter((j) => j >= 0).sort((a, b) => a - b);
      heads.push(`a${h},${i}:${ids.join(',')}`);
    }
  }
  const out: string[] = [];
  if (s.kept.output) for (let i = 0; i < c.n; i++) out.push(`o${i}:${Array.from(s.kept.output.subarray(i * kpOf(s.kept.output), (i + 1) * kpOf(s.kept.output))).join(',')}`);
  return [...sig, ...heads, ...out].join(';');
}

const close = (got: number, want: number, rel: number): boolean => Math.abs(got - want) <= rel * Math.max(1, Math.abs(want));

async function run(c: Config, seed: number): Promise<{ b: Built; g: CanonicalGrads; layer: number }> {
  const b = build(c, seed);
  const g = await canonicalGrads(b.model, b.ids ?? b.x, b.dy);
  return { b, g, layer: b.table ? 1 : 0 };
}

describe('canonical backward: attention', () => {
  for (const [ci, c] of CONFIGS.entries()) {
    it(`${c.name}: finite differences of a float64 forward, and the fast backward`, async () => {
      const { b, g, layer } = await run(c, 100 + ci);
      const saved = g.forward.records[layer]!.saved as AttentionSaved;
      const W = { q: b.q?.w ?? null, key: b.key?.w ?? null, v: b.v?.w ?? null, o: b.o?.w ?? null };
      const x64 = Float64Array.from(b.x);
      const base = reference(c, b, x64, W);
      // The canonical selection is the reference's, and the outputs agree.
      expect(canonicalSig(c, saved)).toBe(base.sig);
      for (let i = 0; i < base.y.length; i++) expect(Math.abs(g.y[i]! - base.y[i]!)).toBeLessThan(1e-5);

      // Central differences; a probe that moves a selection is not counted.
      let probes = 0, skipped = 0;
      const h = 1e-5;
      const check = (arr: Float64Array, i: number, got: number, what: string): void => {
        const keep = arr[i]!;
        arr[i] = keep + h;
        const up = reference(c, b, x64, W);
        arr[i] = keep - h;
        const down = reference(c, b, x64, W);
        arr[i] = keep;
        probes++;
        if (up.sig !== base.sig || down.sig !== base.sig) {
          skipped++;
          return;
        }
        const fd = (up.L - down.L) / (2 * h);
        if (!close(got, fd, 1e-4)) expect.fail(`${what}[${i}]: canonical ${got}, finite difference ${fd}`);
      };
      if (b.table) {
        expect(g.input).toBeNull();
        const gt = g.dense(b.tableT!);
        for (let i = 0; i < b.table.length; i++) check(b.table, i, gt[i]!, 'dtable');
        expect(Array.from(g.ids(b.tableT!))).toEqual([0, 1, 2, 3]);
      } else {
        expect(g.input).not.toBeNull();
        for (let i = 0; i < x64.length; i++) check(x64, i, g.input![i]!, 'dx');
      }
      for (const [name, p] of [['q', b.q], ['key', b.key], ['v', b.v], ['o', b.o]] as const) {
        if (p === null || (name === 'key' && c.key === 'share')) continue;
        const gd = g.dense(p.t);
        for (let i = 0; i < p.w.length; i++) check(p.w, i, gd[i]!, `d${name}`);
        // Rows no row kept get no gradient entry at all.
        const kept = name === 'o' ? saved.kept.output : name === 'q' ? (c.key === 'share' ? null : saved.kept.query) : name === 'key' ? saved.kept.key : saved.kept.value;
        if (kept !== null) expect(Array.from(g.ids(p.t))).toEqual(Array.from(new Set(kept)).sort((x, y) => x - y));
        else if (!(name === 'q' && c.key === 'share')) expect(g.ids(p.t).length).toBe(p.t.size);
      }
      if (c.key === 'share') {
        // One accumulator for both uses: its rows are the union of the kept columns.
        const u = new Set([...saved.kept.query!, ...saved.kept.key!]);
        expect(Array.from(g.ids(b.q!.t))).toEqual([...u].sort((x, y) => x - y));
      }
      expect(skipped).toBeLessThanOrEqual(probes * 0.05);

      // The fast backward of the model tier: the same selection and, within f32 noise, the same gradients.
      const f = await b.attn.forward(b.x, c.dIn);
      for (let i = 0; i < f.y.length; i++) expect(Math.abs(f.y[i]! - g.y[i]!)).toBeLessThan(1e-5);
      const kk = Math.min(c.k, c.n);
      for (let hh = 0; hh < c.heads; hh++) {
        for (let i = 0; i < c.n; i++) {
          const at = (hh * c.n + i) * kk;
          const fast = Array.from(f.ids.subarray(at, at + kk)).filter((j) => j !== 0xffffffff).sort((a, z) => a - z);
          const canon = Array.from(saved.top.subarray(at, at + kk)).filter((j) => j >= 0).sort((a, z) => a - z);
          expect(fast).toEqual(canon);
        }
      }
      const fb = await b.attn.backward(f.ctx, b.dy);
      const scaleOf = (a: ArrayLike<number>): number => 1 + Math.max(...Array.from(a, Math.abs));
      if (b.table) {
        // The embedding's rows: the fast dx summed over each id's positions.
        const want = g.dense(b.tableT!), got = new Float64Array(want.length);
        for (let i = 0; i < c.n * c.dIn; i++) {
          const at = b.ids![Math.floor(i / c.dIn)]! * c.dIn + (i % c.dIn);
          got[at] = got[at]! + fb.dx[i]!;
        }
        for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(1e-4 * scaleOf(want));
      } else {
        const dxRef = g.input!;
        for (let i = 0; i < dxRef.length; i++) expect(Math.abs(fb.dx[i]! - dxRef[i]!)).toBeLessThanOrEqual(1e-4 * scaleOf(dxRef));
      }
      for (const sg of fb.grads) {
        const dense = new Float64Array(sg.tensor.size * sg.tensor.dim);
        Array.from(sg.ids).forEach((id, r) => {
          for (let t = 0; t < sg.tensor.dim; t++) dense[id * sg.tensor.dim + t] = dense[id * sg.tensor.dim + t]! + sg.grads[r * sg.tensor.dim + t]!;
        });
        const canon = g.dense(sg.tensor);
        for (let i = 0; i < canon.length; i++) expect(Math.abs(dense[i]! - canon[i]!)).toBeLessThanOrEqual(1e-4 * scaleOf(canon));
      }
      expect(fb.grads.length).toBe(g.backward.tensors.length - (b.tableT ? 1 : 0));
    });
  }

  it('is deterministic; without trainForward\'s saved state it recomputes it and gives the same bits', async () => {
    const c = CONFIGS[1]!;
    const { b, g } = await run(c, 101);
    const again = await canonicalGrads(b.model, b.x, b.dy);
    expect(Array.from(again.input!)).toEqual(Array.from(g.input!));
    const rec = g.forward.records[0]!;
    const l = rec.layer as GhostAttentionLayer;
    const manifest = (await b.model.ghost()).manifest;
    const collect = (saved: unknown) => {
      const acc = new Map<string, Float64Array>();
      const ctx: BackwardContext = {
        manifest,
        index: 0, rows: c.n, ids: null, inputs: rec.inputs, evidence: rec.evidence, revealed: rec.revealed, y: rec.y, saved,
        grad: (t, id) => {
          const key = `${t}:${id}`;
          if (!acc.has(key)) acc.set(key, new Float64Array(manifest.tensors[t]!.dim));
          return acc.get(key)!;
        },
      };
      const dx = attentionSpec.backward!(l, ctx, b.dy);
      return { dx: Array.from(dx[0]!), rows: [...acc.entries()].sort(([a], [z]) => a.localeCompare(z)).map(([k, v]) => [k, Array.from(v)]) };
    };
    const withSaved = collect(rec.saved), without = collect(undefined);
    expect(without).toEqual(withSaved);
    expect(withSaved.dx).toEqual(Array.from(g.input!));
  });

  it('hostile: a projection tensor the forward did not reveal, or a dy of the wrong length, is refused', async () => {
    const c = CONFIGS[0]!;
    const { b, g } = await run(c, 100);
    const rec = g.forward.records[0]!;
    const l = rec.layer as GhostAttentionLayer;
    const base: BackwardContext = {
      manifest: (await b.model.ghost()).manifest, index: 0, rows: c.n, ids: null, inputs: rec.inputs, evidence: rec.evidence, revealed: rec.revealed, y: rec.y, saved: rec.saved,
      grad: () => new Float64Array(64),
    };
    const missing = new Map(rec.revealed);
    missing.delete(l.output!.tensor);
    expect(() => attentionSpec.backward!(l, { ...base, revealed: missing }, b.dy)).toThrow(ProofError);
    try {
      attentionSpec.backward!(l, { ...base, revealed: missing }, b.dy);
    } catch (e) {
      expect((e as ProofError).reason).toBe('BLOCK_IDS');
    }
    // A block that is not the whole tensor.
    const partial = new Map(rec.revealed);
    partial.set(l.query!.tensor, { ...rec.revealed.get(l.query!.tensor)!, all: false });
    expect(() => attentionSpec.backward!(l, { ...base, revealed: partial }, b.dy)).toThrow(/not revealed whole/);
    expect(() => attentionSpec.backward!(l, base, b.dy.subarray(1))).toThrow(ProofError);
  });
});
