/**
 * The product-key memory kind, verifier half (docs/layer-kinds.md, "Product-key
 * memory"; Lample et al. 2019, Berges et al. 2024): a query projection of the input to
 * `heads` queries of dk = d1 + d2 values; each head selects the top-k of N = n^2 slots
 * through its own two sub-key tables (n rows of d1 and of d2), weights them by
 * softmax(beta * score) and mixes their rows of one value table shared by the heads; the
 * heads' outputs are summed. A proof reveals the query weight and every sub-key table
 * whole, and the value rows the heads selected; the verifier re-derives each head's
 * selection.
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { clinear, cmix, cproductKeys, csoftmax, cstate } from '../canonical.js';
import type { GhostManifest } from '../ghost-file.js';
import { fail, GHOST_LIMITS, ghostBad, ghostLimit, PAIR_WORK, rowOf, sortedUniqueIds, type LayerSpec } from '../layer-spec.js';

export interface GhostMemoryLayer {
  op: 'memory';
  dIn: number;
  dOut: number;
  heads: number;
  /** Slots per head (1..n^2). */
  k: number;
  /** Rows of each sub-key table: N = subKeys^2 slots. */
  subKeys: number;
  /** An f32 value. */
  beta: number;
  /** The query weight: heads x dk patterns of dIn (head h's query is columns h dk .. (h + 1) dk - 1). */
  query: number;
  /** The sub-key tables, two per head in head order: [keys1 of head 0, keys2 of head 0, keys1 of head 1, ...]. */
  keys: number[];
  /** The value table, N rows of dOut, shared by the heads. */
  values: number;
}

/** The width of one head's query (d1 + d2) in a checked manifest. */
export function memoryHeadDim(g: GhostManifest, l: GhostMemoryLayer): number {
  return g.tensors[l.keys[0]!]!.dim + g.tensors[l.keys[1]!]!.dim;
}

/** What a memory layer's proof reveals: the query weight and the sub-key tables whole, the values at the slots any head selected. */
export function memoryReads(l: GhostMemoryLayer, stages: readonly Uint32Array[]): Map<number, Uint32Array | 'all'> {
  const reads = new Map<number, Uint32Array | 'all'>([[l.query, 'all']]);
  for (const t of l.keys) reads.set(t, 'all');
  reads.set(l.values, sortedUniqueIds(stages));
  return reads;
}

/**
 * The queries, canonically: clinear of the input by the query weight (all columns, no
 * bias), rounded to f32, B x (heads dk).
 */
export function memoryQueries(g: GhostManifest, l: GhostMemoryLayer, x: Float32Array, B: number, queryRows: Float32Array): Float32Array {
  const m = g.tensors[l.query]!.n;
  return clinear(x, B, l.dIn, queryRows, m, m, null);
}

export const memorySpec: LayerSpec<GhostMemoryLayer> = {
  op: 'memory',
  code: 9,

  encode(w: ByteWriter, l: GhostMemoryLayer): void {
    w.u32(l.dIn).u32(l.dOut).u32(l.heads).u32(l.k).u32(l.subKeys).f32(l.beta).u32(l.query);
    for (const t of l.keys) w.u32(t);
    w.u32(l.values);
  },

  decode(r: ByteReader, i: number): GhostMemoryLayer {
    const dIn = r.u32('dIn'), dOut = r.u32('dOut'), heads = r.u32('heads'), k = r.u32('k'), subKeys = r.u32('subKeys');
    const beta = r.f32('beta'), query = r.u32('query');
    if (heads < 1 || heads > 64) ghostBad(`layer ${i}: ${heads} heads (1..64)`);
    const keys: number[] = [];
    for (let h = 0; h < 2 * heads; h++) keys.push(r.u32('sub-key table'));
    return { op: 'memory', dIn, dOut, heads, k, subKeys, beta, query, keys, values: r.u32('values') };
  },

  check(l, c): number {
    const at = c.at;
    ghostLimit(`${at} dIn`, l.dIn, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} dOut`, l.dOut, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} heads`, l.heads, 1, 64);
    ghostLimit(`${at} subKeys`, l.subKeys, 1, GHOST_LIMITS.subKeys);
    ghostLimit(`${at} k`, l.k, 1, Math.min(GHOST_LIMITS.k, l.subKeys * l.subKeys));
    if (!Number.isFinite(l.beta) || Math.fround(l.beta) !== l.beta) ghostBad(`${at}: beta must be a finite f32`);
    if (c.prevOut !== -1 && c.prevOut !== l.dIn) ghostBad(`${at}: takes ${l.dIn} inputs but the layer it reads gives ${c.prevOut}`);
    if (!Array.isArray(l.keys) || l.keys.length !== 2 * l.heads) ghostBad(`${at}: ${l.heads} heads need ${2 * l.heads} sub-key tables`);
    const first = [c.tensor(l.keys[0]!, `${at} keys`), c.tensor(l.keys[1]!, `${at} keys`)];
    l.keys.forEach((t, j) => {
      const kt = c.tensor(t, `${at} keys`);
      if (kt.n !== l.subKeys) ghostBad(`${at}: sub-key table ${j} holds ${kt.n} rows; subKeys = ${l.subKeys}`);
      if (kt.dim !== first[j % 2]!.dim) ghostBad(`${at}: every head's sub-key tables must have the dims of head 0's`);
    });
    if (new Set(l.keys).size !== l.keys.length) ghostBad(`${at}: a sub-key table is listed twice`);
    const dk = first[0]!.dim + first[1]!.dim;
    const q = c.tensor(l.query, `${at} query`);
    if (q.dim !== l.dIn || q.n !== l.heads * dk) ghostBad(`${at}: the query weight holds ${q.n} x ${q.dim}; ${l.heads} heads of ${dk} from ${l.dIn} inputs need ${l.heads * dk} x ${l.dIn}`);
    const v = c.tensor(l.values, `${at} values`);
    if (v.dim !== l.dOut || v.n !== l.subKeys * l.subKeys) ghostBad(`${at}: the values hold ${v.n} x ${v.dim}; ${l.subKeys}^2 slots of ${l.dOut} are needed`);
    if (l.keys.includes(l.values) || l.keys.includes(l.query) || l.query === l.values) ghostBad(`${at}: the query weight, sub-keys and values must be different tensors`);
    return l.dOut;
  },

  describe: (l) => `memory: ${l.dIn} -> ${l.dOut}, ${l.heads} head(s), k = ${l.k} of ${l.subKeys}^2 slots, beta ${l.beta.toPrecision(5)}, query ${l.query}, sub-keys ${l.keys.join('+')}, values ${l.values}`,

  input: (l) => ({ kind: 'f32', cols: l.dIn }),
  outWidth: (l) => l.dOut,

  plan(l, g, B, budget, li): void {
    const dk = memoryHeadDim(g, l), n = l.subKeys, k = l.k;
    const perHead = n * dk + PAIR_WORK * k * k + k * l.dOut;
    budget.cellsFor(B * (l.heads * dk + l.dOut + l.heads * k) + 2 * n + k * k, `layer ${li} (memory, ${B} x ${l.heads} heads)`);
    budget.workFor(B * (l.dIn * l.heads * dk + l.heads * perHead), `layer ${li} (memory, B = ${B}, ${l.heads} heads, k = ${k})`);
  },

  verify(l, ctx): Float32Array {
    const g = ctx.manifest, ev = ctx.evidence, li = ctx.index, B = ctx.rows, k = l.k;
    if (ev.stages.length !== l.heads) fail('SHAPE', `layer ${li} has ${ev.stages.length} stages; one per head (${l.heads}) is expected`);
    const N = l.subKeys * l.subKeys;
    for (const [h, st] of ev.stages.entries()) {
      if (st.length !== B * k) fail('SHAPE', `layer ${li} head ${h} lists ${st.length} ids; B x k = ${B * k}`);
      for (const id of st) if (id >= N) fail('ID_OUT_OF_RANGE', `layer ${li} head ${h}: slot ${id} >= N = ${N}`);
    }
    const rev = ctx.reveal(memoryReads(l, ev.stages));
    const V = rev.get(l.values)!;
    const q = memoryQueries(g, l, ctx.x!, B, rev.get(l.query)!.rows);
    const dk = memoryHeadDim(g, l), d1 = g.tensors[l.keys[0]!]!.dim, d2 = dk - d1, hdk = l.heads * dk;
    const out = new Float32Array(B * l.dOut);
    const acc = new Float64Array(l.dOut);
    for (let b = 0; b < B; b++) {
      acc.fill(0);
      for (let h = 0; h < l.heads; h++) {
        const qh = cstate(q, b * hdk + h * dk, dk, false);
        const sel = cproductKeys(qh, rev.get(l.keys[2 * h]!)!.rows, rev.get(l.keys[2 * h + 1]!)!.rows, l.subKeys, d1, d2, k);
        const ids = ev.stages[h]!.subarray(b * k, (b + 1) * k);
        for (let i = 0; i < k; i++) {
          if (sel.ids[i] !== ids[i]) fail('SELECTION_MISMATCH', `layer ${li} head ${h} input ${b}: rank ${i} is slot ${ids[i]}; the product-key top-${k} has ${sel.ids[i]}`);
        }
        const y = cmix(csoftmax(sel.scores, l.beta), V.rows, Array.from(ids, (id) => rowOf(V, id)), l.dOut);
        for (let j = 0; j < l.dOut; j++) acc[j] = acc[j]! + y[j]!;
      }
      for (let j = 0; j < l.dOut; j++) out[b * l.dOut + j] = acc[j]!;
    }
    return out;
  },
};
