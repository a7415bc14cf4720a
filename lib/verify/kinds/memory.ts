/**
 * The product-key memory kind, verifier half (docs/layer-kinds.md, "Product-key
 * memory"; Lample et al. 2019, Berges et al. 2024): a query projection of the input to
 * `heads` queries of dk = d1 + d2 values; each head selects the top-k of N = n^2 slots
 * through its own two sub-key tables (n rows of d1 and of d2), weights them by
 * softmax(beta * score) and mixes their rows of one value table shared by the heads; the
 * heads' outputs are summed. A proof reveals the query weight and every sub-key table
 * whole, and the value rows the heads selected; the verifier re-derives each head's
 * selection. Its canonical backward (step proofs) reaches the query weight, the
 * selected sub-key and value rows and the input (docs/layer-kinds.md).
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { cdot, clinear, cmix, cproductKeys, csoftmax, cstate } from '../canonical.js';
import { addScaled } from './linear.js';
import type { GhostManifest } from '../ghost-file.js';
import { fail, GHOST_LIMITS, ghostBad, ghostLimit, PAIR_WORK, rowOf, sortedUniqueIds, type BackwardContext, type LayerSpec, type Revealed, type TrainedForward, type VerifyLayerContext } from '../layer-spec.js';

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
    return memoryForward(l, ctx, false).y;
  },

  trainForward(l, ctx): TrainedForward {
    return memoryForward(l, ctx, true);
  },

  backward(l, ctx, dy): Float32Array[] {
    return [memoryBackward(l, ctx, dy)];
  },

};

/**
 * What the training forward keeps for the backward: the queries (B x heads dk f32, as
 * clinear rounded them) and, per input b and head h (slot b * heads + h), the scores s
 * and softmax weights a (f64, k values at slot * k).
 */
export interface MemorySaved {
  q: Float32Array;
  s: Float64Array;
  a: Float64Array;
}

/** The canonical forward (verify's), keeping the queries, scores and weights when `keep`. */
function memoryForward(l: GhostMemoryLayer, ctx: VerifyLayerContext, keep: boolean): { y: Float32Array; saved: MemorySaved | null } {
  const g = ctx.manifest, ev = ctx.evidence, li = ctx.index, B = ctx.rows, k = l.k, H = l.heads;
  if (ev.stages.length !== H) fail('SHAPE', `layer ${li} has ${ev.stages.length} stages; one per head (${H}) is expected`);
  const N = l.subKeys * l.subKeys;
  for (const [h, st] of ev.stages.entries()) {
    if (st.length !== B * k) fail('SHAPE', `layer ${li} head ${h} lists ${st.length} ids; B x k = ${B * k}`);
    for (const id of st) if (id >= N) fail('ID_OUT_OF_RANGE', `layer ${li} head ${h}: slot ${id} >= N = ${N}`);
  }
  const rev = ctx.reveal(memoryReads(l, ev.stages));
  const V = rev.get(l.values)!;
  const q = memoryQueries(g, l, ctx.x!, B, rev.get(l.query)!.rows);
  const dk = memoryHeadDim(g, l), d1 = g.tensors[l.keys[0]!]!.dim, d2 = dk - d1, hdk = H * dk;
  const out = new Float32Array(B * l.dOut);
  const saved: MemorySaved | null = keep ? { q, s: new Float64Array(B * H * k), a: new Float64Array(B * H * k) } : null;
  const acc = new Float64Array(l.dOut);
  for (let b = 0; b < B; b++) {
    acc.fill(0);
    for (let h = 0; h < H; h++) {
      const qh = cstate(q, b * hdk + h * dk, dk, false);
      const sel = cproductKeys(qh, rev.get(l.keys[2 * h]!)!.rows, rev.get(l.keys[2 * h + 1]!)!.rows, l.subKeys, d1, d2, k);
      const ids = ev.stages[h]!.subarray(b * k, (b + 1) * k);
      for (let i = 0; i < k; i++) {
        if (sel.ids[i] !== ids[i]) fail('SELECTION_MISMATCH', `layer ${li} head ${h} input ${b}: rank ${i} is slot ${ids[i]}; the product-key top-${k} has ${sel.ids[i]}`);
      }
      const a = csoftmax(sel.scores, l.beta);
      if (saved) {
        saved.s.set(sel.scores, (b * H + h) * k);
        saved.a.set(a, (b * H + h) * k);
      }
      const y = cmix(a, V.rows, Array.from(ids, (id) => rowOf(V, id)), l.dOut);
      for (let j = 0; j < l.dOut; j++) acc[j] = acc[j]! + y[j]!;
    }
    for (let j = 0; j < l.dOut; j++) out[b * l.dOut + j] = acc[j]!;
  }
  return { y: out, saved };
}

/** trainForward's saved state, or (when the step ran verify) the same recomputed from the context. */
function savedOf(l: GhostMemoryLayer, ctx: BackwardContext): MemorySaved {
  const sv = ctx.saved as MemorySaved | undefined;
  const B = ctx.rows, n = B * l.heads * l.k;
  if (sv && sv.q instanceof Float32Array && sv.q.length === B * memoryHeadDim(ctx.manifest, l) * l.heads && sv.s.length === n && sv.a.length === n) return sv;
  const x = ctx.inputs[0];
  if (!x) fail('SHAPE', `layer ${ctx.index} (memory) takes vectors`);
  return memoryForward(l, {
    manifest: ctx.manifest, evidence: ctx.evidence, index: ctx.index, rows: B, ids: null, x, inputs: ctx.inputs,
    reveal: () => ctx.revealed as Map<number, Revealed>,
  }, true).saved!;
}

/**
 * The canonical backward (docs/layer-kinds.md, "Product-key memory", "Canonical
 * backward"): per input b in order, the heads in order, each (1) the value rows (i in
 * rank order), (2) the softmax, (3) the sub-key rows and the head's query (i in rank
 * order); then the query projection: dx_b (patterns m ascending) and the weight rows
 * (m ascending). The selections are the proof's; beta is not trained.
 */
function memoryBackward(l: GhostMemoryLayer, ctx: BackwardContext, dy: Float32Array): Float32Array {
  const g = ctx.manifest, sv = savedOf(l, ctx), ev = ctx.evidence, x = ctx.inputs[0]!;
  const B = ctx.rows, k = l.k, H = l.heads, dv = l.dOut, dIn = l.dIn, n = l.subKeys, beta = l.beta;
  const dk = memoryHeadDim(g, l), d1 = g.tensors[l.keys[0]!]!.dim, hdk = H * dk;
  const V = ctx.revealed.get(l.values)!, W = ctx.revealed.get(l.query)!;
  const Wo = Array.from({ length: hdk }, (_, m) => rowOf(W, m));
  // Every query row gets a gradient (B >= 1): their accumulators, asked once.
  const Wacc = B > 0 ? Array.from({ length: hdk }, (_, m) => ctx.grad(l.query, m)) : [];
  const dx = new Float32Array(B * dIn);
  const gy = new Float64Array(dv), dq = new Float64Array(hdk), da = new Float64Array(k), ds = new Float64Array(k), dxb = new Float64Array(dIn);
  const { q, a } = sv;
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < dv; j++) gy[j] = dy[b * dv + j]!;
    dq.fill(0);
    for (let h = 0; h < H; h++) {
      const ids = ev.stages[h]!.subarray(b * k, (b + 1) * k);
      const ao = (b * H + h) * k, qo = b * hdk + h * dk, ho = h * dk;
      // (1) y += sum_i a_i V_i: da_i = g . V_i, dV_i += a_i g.
      for (let i = 0; i < k; i++) {
        const id = ids[i]!, ai = a[ao + i]!;
        da[i] = cdot(gy, 0, V.rows, rowOf(V, id), dv);
        const acc = ctx.grad(l.values, id);
        addScaled(acc, 0, ai, gy, 0, dv);
      }
      // (2) ds_i = beta * (a_i * (da_i - sum_t a_t da_t)).
      let rho = 0;
      for (let i = 0; i < k; i++) rho = rho + a[ao + i]! * da[i]!;
      for (let i = 0; i < k; i++) ds[i] = beta * (a[ao + i]! * (da[i]! - rho));
      // (3) s_i = q[:d1] . T1[i1] + q[d1:] . T2[i2] for slot i1 n + i2.
      const T1 = ctx.revealed.get(l.keys[2 * h]!)!, T2 = ctx.revealed.get(l.keys[2 * h + 1]!)!;
      for (let i = 0; i < k; i++) {
        const id = ids[i]!, c = ds[i]!, i1 = Math.floor(id / n), i2 = id % n;
        const o1 = rowOf(T1, i1), o2 = rowOf(T2, i2);
        const a1 = ctx.grad(l.keys[2 * h]!, i1);
        addScaled(dq, ho, c, T1.rows, o1, d1);
        addScaled(a1, 0, c, q, qo, d1);
        const a2 = ctx.grad(l.keys[2 * h + 1]!, i2);
        addScaled(dq, ho + d1, c, T2.rows, o2, dk - d1);
        addScaled(a2, 0, c, q, qo + d1, dk - d1);
      }
    }
    // The query projection q_m = x . W_m: dx_b = sum_m dq_m W_m, dW_m += dq_m x_b.
    const xo = b * dIn;
    dxb.fill(0);
    for (let m = 0; m < hdk; m++) {
      addScaled(dxb, 0, dq[m]!, W.rows, Wo[m]!, dIn);
    }
    for (let t = 0; t < dIn; t++) dx[xo + t] = dxb[t]!;
    for (let m = 0; m < hdk; m++) {
      addScaled(Wacc[m]!, 0, dq[m]!, x, xo, dIn);
    }
  }
  return dx;
}
