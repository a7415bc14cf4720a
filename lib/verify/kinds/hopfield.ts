/**
 * The HopfieldLookup kind, verifier half (docs/proof-format.md, "Hopfield layers"):
 * retrieval of the top-k keys (exact, HNSW or product keys), softmax over beta times
 * their similarities, a mix of the values; `updateSteps` stages, the earlier ones
 * mixing keys into the next state. Its canonical backward (step proofs) goes through
 * every stage with the selection held (docs/layer-kinds.md, "HopfieldLookup").
 */
import type { ByteReader, ByteWriter } from '../../shared/bytes.js';
import { cdot, cexactTopK, cmix, cproductKeys, csimilarity, csoftmax, cstate, type CanonicalSimilarity } from '../canonical.js';
import type { GhostManifest } from '../ghost-file.js';
import type { LayerEvidence, VerifyBudget } from '../proof-format.js';
import { fail, GHOST_LIMITS, ghostBad, ghostLimit, PAIR_WORK, rowOf, sortedUniqueIds, type BackwardContext, type LayerSpec, type Revealed, type TrainedForward, type VerifyLayerContext } from '../layer-spec.js';
import { addScaled } from './linear.js';

export type GhostIndex =
  | { kind: 'exact' }
  | { kind: 'hnsw'; M: number; efConstruction: number; ef: number }
  | { kind: 'product-keys'; subKeys: number };

export interface GhostHopfieldLayer {
  op: 'hopfield';
  dIn: number;
  dOut: number;
  k: number;
  /** An f32 value. */
  beta: number;
  similarity: CanonicalSimilarity;
  normalize: boolean;
  updateSteps: number;
  index: GhostIndex;
  /** Tensor indexes of the keys: one (exact, hnsw) or the two sub-key tables (product keys). */
  keys: number[];
  values: number;
}

const SIMS: readonly CanonicalSimilarity[] = ['ip', 'cosine', 'l2'];
const INDEX_KINDS = ['exact', 'hnsw', 'product-keys'] as const;

/**
 * What a Hopfield layer's proof reveals, one block per tensor in this order (the
 * prover writes these blocks, the verifier requires exactly them): product keys, both
 * sub-key tables whole ('all') and the values at the last stage's ids; otherwise the
 * keys at every stage's ids and the values at the last stage's (one set when keys and
 * values are one tensor). With `allKeys` (held keys: an exact or HNSW layer whose
 * proof reveals its key tensor whole, docs/proof-format.md section 5) the keys are
 * 'all' instead, and the verifier re-derives each stage's exact top-k from them.
 */
export function hopfieldReads(l: GhostHopfieldLayer, stages: readonly Uint32Array[], allKeys = false): Map<number, Uint32Array | 'all'> {
  const last = stages[stages.length - 1]!;
  const reads = new Map<number, Uint32Array | 'all'>();
  if (l.index.kind === 'product-keys') {
    reads.set(l.keys[0]!, 'all');
    reads.set(l.keys[1]!, 'all');
    reads.set(l.values, sortedUniqueIds([last]));
  } else {
    reads.set(l.keys[0]!, allKeys ? 'all' : sortedUniqueIds(stages));
    if (l.values !== l.keys[0]) reads.set(l.values, sortedUniqueIds([last]));
  }
  return reads;
}

/**
 * Whether a proof of this layer reveals its keys whole (held keys): an exact or HNSW
 * layer whose key tensor's block is an all-rows block. The verifier then re-derives the
 * selection; without it the selection is the prover's (requireSelection refuses it).
 */
export function hopfieldRevealsKeys(l: GhostHopfieldLayer, ev: LayerEvidence): boolean {
  return l.index.kind !== 'product-keys' && ev.blocks.some((b) => b.tensor === l.keys[0] && b.all);
}

/**
 * Charges re-deriving the selection of a held-keys proof (every key scored per input
 * and stage, twice the dot products for cosine norms once per layer, the ranking)
 * before any of it is done; nothing for other layers. proof-verify.ts calls it beside
 * the kind's plan, from the proof's headers.
 */
export function planHopfieldSelection(l: GhostHopfieldLayer, m: GhostManifest, ev: LayerEvidence, B: number, budget: VerifyBudget, li: number): void {
  if (!hopfieldRevealsKeys(l, ev)) return;
  const n = m.tensors[l.keys[0]!]!.n;
  budget.cellsFor(2 * n, `layer ${li}'s scores of all ${n} keys`);
  if (l.similarity === 'cosine') budget.workFor(n * l.dIn, `layer ${li}'s ${n} key norms`);
  budget.workFor(B * l.updateSteps * n * (l.dIn + 16), `layer ${li}'s exact top-${l.k} of ${n} keys for ${B} inputs and ${l.updateSteps} stages`);
}

export const hopfieldSpec: LayerSpec<GhostHopfieldLayer> = {
  op: 'hopfield',
  code: 1,

  encode(w: ByteWriter, l: GhostHopfieldLayer): void {
    w.u32(l.dIn).u32(l.dOut).u32(l.k).f32(l.beta).u8(SIMS.indexOf(l.similarity)).u8(l.normalize ? 1 : 0).u16(l.updateSteps);
    w.u8(INDEX_KINDS.indexOf(l.index.kind));
    if (l.index.kind === 'hnsw') w.u32(l.index.M).u32(l.index.efConstruction).u32(l.index.ef);
    else if (l.index.kind === 'product-keys') w.u32(l.index.subKeys);
    for (const k of l.keys) w.u32(k);
    w.u32(l.values);
  },

  decode(r: ByteReader, i: number): GhostHopfieldLayer {
    const dIn = r.u32('dIn'), dOut = r.u32('dOut'), k = r.u32('k'), beta = r.f32('beta');
    const sim = SIMS[r.u8('similarity')];
    if (sim === undefined) ghostBad(`layer ${i}: unknown similarity`);
    const norm = r.u8('normalize');
    if (norm > 1) ghostBad(`layer ${i}: normalize must be 0 or 1`);
    const updateSteps = r.u16('updateSteps');
    const kind = INDEX_KINDS[r.u8('index kind')];
    let index: GhostIndex;
    if (kind === 'exact') index = { kind };
    else if (kind === 'hnsw') index = { kind, M: r.u32('M'), efConstruction: r.u32('efConstruction'), ef: r.u32('ef') };
    else if (kind === 'product-keys') index = { kind, subKeys: r.u32('subKeys') };
    else ghostBad(`layer ${i}: unknown index kind`);
    const keys = kind === 'product-keys' ? [r.u32('keys1'), r.u32('keys2')] : [r.u32('keys')];
    return { op: 'hopfield', dIn, dOut, k, beta, similarity: sim, normalize: norm === 1, updateSteps, index, keys, values: r.u32('values') };
  },

  check(l, c): number {
    const at = c.at;
    ghostLimit(`${at} dIn`, l.dIn, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} dOut`, l.dOut, 1, GHOST_LIMITS.dim);
    ghostLimit(`${at} k`, l.k, 1, GHOST_LIMITS.k);
    ghostLimit(`${at} updateSteps`, l.updateSteps, 1, GHOST_LIMITS.updateSteps);
    if (!Number.isFinite(l.beta) || Math.fround(l.beta) !== l.beta) ghostBad(`${at}: beta must be a finite f32`);
    if (!SIMS.includes(l.similarity)) ghostBad(`${at}: unknown similarity`);
    if (typeof l.normalize !== 'boolean') ghostBad(`${at}: normalize must be a boolean`);
    if (c.prevOut !== -1 && c.prevOut !== l.dIn) ghostBad(`${at}: takes ${l.dIn} inputs but the layer before gives ${c.prevOut}`);
    const v = c.tensor(l.values, `${at} values`);
    if (v.dim !== l.dOut) ghostBad(`${at}: dOut ${l.dOut} differs from its values' dim ${v.dim}`);
    const idx = l.index;
    if (idx.kind === 'product-keys') {
      ghostLimit(`${at} subKeys`, idx.subKeys, 1, GHOST_LIMITS.subKeys);
      if (l.similarity !== 'ip') ghostBad(`${at}: product keys score by inner product`);
      if (l.keys.length !== 2) ghostBad(`${at}: product keys need two sub-key tables`);
      const [a, b] = [c.tensor(l.keys[0]!, `${at} keys`), c.tensor(l.keys[1]!, `${at} keys`)];
      if (a.n !== idx.subKeys || b.n !== idx.subKeys) ghostBad(`${at}: sub-key tables must hold subKeys = ${idx.subKeys} rows`);
      if (a.dim + b.dim !== l.dIn) ghostBad(`${at}: sub-key dims ${a.dim} + ${b.dim} differ from dIn ${l.dIn}`);
      if (v.n !== idx.subKeys * idx.subKeys) ghostBad(`${at}: values hold ${v.n} rows, product keys address ${idx.subKeys ** 2}`);
    } else {
      if (idx.kind === 'hnsw') {
        ghostLimit(`${at} M`, idx.M, 2, 65535);
        ghostLimit(`${at} efConstruction`, idx.efConstruction, 1, 1_000_000);
        ghostLimit(`${at} ef`, idx.ef, 0, 1_000_000);
      } else if (idx.kind !== 'exact') ghostBad(`${at}: unknown index kind`);
      if (l.keys.length !== 1) ghostBad(`${at}: needs exactly one key tensor`);
      const kt = c.tensor(l.keys[0]!, `${at} keys`);
      if (kt.dim !== l.dIn) ghostBad(`${at}: dIn ${l.dIn} differs from its keys' dim ${kt.dim}`);
      if (kt.n !== v.n) ghostBad(`${at}: keys hold ${kt.n} patterns and values ${v.n}`);
    }
    if (l.k > v.n) ghostBad(`${at}: k = ${l.k} exceeds N = ${v.n}`);
    return l.dOut;
  },

  describe(l): string {
    return `hopfield: ${l.dIn} -> ${l.dOut}, k = ${l.k}, beta ${l.beta.toPrecision(5)}, ${l.similarity}${l.normalize ? ', normalized' : ''}, ${l.updateSteps} step(s), ${l.index.kind} index, keys ${l.keys.join('+')}, values ${l.values}`;
  },

  input: (l) => ({ kind: 'f32', cols: l.dIn }),
  outWidth: (l) => l.dOut,

  plan(l, _m, B, budget, li): void {
    const S = l.updateSteps, k = l.k;
    const pk = l.index.kind === 'product-keys' ? l.index.subKeys : 0;
    // Per input and stage: k similarities and a mix of k rows (or, for product keys, both tables scored and k^2 pairs ranked).
    const perStage = (pk ? pk * l.dIn + PAIR_WORK * k * k : PAIR_WORK * k) + 2 * k * l.dIn;
    budget.cellsFor(B * (l.dOut + l.dIn + S * k) + 2 * pk + k * k, `layer ${li}'s ${B} x ${l.dOut} output and states`);
    budget.workFor(B * (S * perStage + k * l.dOut), `layer ${li} (hopfield, B = ${B}, k = ${k}, ${S} stages)`);
  },

  verify(l, ctx): Float32Array {
    return hopfieldForward(l, ctx, false).y;
  },

  trainForward(l, ctx): TrainedForward {
    return hopfieldForward(l, ctx, true);
  },

  backward(l, ctx, dy): Float32Array[] {
    return [hopfieldBackward(l, ctx, dy)];
  },

};

/**
 * What the training forward keeps for the backward, per input b and stage si (slot
 * b * S + si): the stage's state q (f64, dIn values at slot * dIn), its scores s and
 * softmax weights a (f64, k values at slot * k).
 */
export interface HopfieldSaved {
  q: Float64Array;
  s: Float64Array;
  a: Float64Array;
}

/**
 * The checks of a layer's evidence before any row is read: one stage per update step, each
 * listing k ids per input, every id below N and none twice for one input (the canonical
 * forward's and the prover's native mirror's, lib/model/train/step-native.ts).
 */
export function checkHopfieldStages(l: GhostHopfieldLayer, ctx: VerifyLayerContext): void {
  const ev = ctx.evidence, li = ctx.index, B = ctx.rows, k = l.k, S = l.updateSteps;
  if (ev.stages.length !== S) fail('SHAPE', `layer ${li} has ${ev.stages.length} stages; the Ghost file says ${S}`);
  const n = ctx.manifest.tensors[l.values]!.n;
  for (const [si, st] of ev.stages.entries()) {
    if (st.length !== B * k) fail('SHAPE', `layer ${li} stage ${si} lists ${st.length} ids; B x k = ${B * k}`);
    for (let b = 0; b < B; b++) {
      const seen = new Set<number>();
      for (let i = 0; i < k; i++) {
        const id = st[b * k + i]!;
        if (id >= n) fail('ID_OUT_OF_RANGE', `layer ${li} stage ${si}: id ${id} >= N = ${n}`);
        if (seen.has(id)) fail('DUPLICATE_ID', `layer ${li} stage ${si}: input ${b} selects id ${id} twice`);
        seen.add(id);
      }
    }
  }
}

/** The canonical forward (verify's), keeping each stage's state, scores and weights when `keep`. */
function hopfieldForward(l: GhostHopfieldLayer, ctx: VerifyLayerContext, keep: boolean): { y: Float32Array; saved: HopfieldSaved | null } {
  const g: GhostManifest = ctx.manifest, ev = ctx.evidence, li = ctx.index, B = ctx.rows, x = ctx.x!;
  const k = l.k, d = l.dIn, S = l.updateSteps;
  checkHopfieldStages(l, ctx);
  const pk = l.index.kind === 'product-keys';
  const held = hopfieldRevealsKeys(l, ev);
  const rev = ctx.reveal(hopfieldReads(l, ev.stages, held));
  const V = rev.get(l.values)!;
  const out = new Float32Array(B * l.dOut);
  const saved: HopfieldSaved | null = keep ? { q: new Float64Array(B * S * d), s: new Float64Array(B * S * k), a: new Float64Array(B * S * k) } : null;
  const sub = pk ? { t1: rev.get(l.keys[0]!)!, t2: rev.get(l.keys[1]!)!, n: (l.index as { subKeys: number }).subKeys } : null;
  const K = pk ? null : rev.get(l.keys[0]!)!;
  // Held keys: every key is here (an all-rows block, rows in id order); cosine norms once.
  const nK = K ? K.ids.length : 0;
  const norms = held && l.similarity === 'cosine' ? Float64Array.from({ length: nK }, (_, i) => Math.sqrt(cdot(K!.rows, i * d, K!.rows, i * d, d))) : undefined;
  for (let b = 0; b < B; b++) {
    let q = cstate(x, b * d, d, l.normalize);
    for (let si = 0; si < S; si++) {
      const ids = ev.stages[si]!.subarray(b * k, (b + 1) * k);
      let s: Float64Array;
      if (sub) {
        const d1 = sub.t1.dim;
        const sel = cproductKeys(q, sub.t1.rows, sub.t2.rows, sub.n, d1, sub.t2.dim, k);
        for (let i = 0; i < k; i++) {
          if (sel.ids[i] !== ids[i]) fail('SELECTION_MISMATCH', `layer ${li} stage ${si} input ${b}: rank ${i} is id ${ids[i]}; the product-key top-${k} has ${sel.ids[i]}`);
        }
        s = sel.scores;
      } else if (held) {
        const sel = cexactTopK(l.similarity, q, K!.rows, nK, d, k, norms);
        for (let i = 0; i < k; i++) {
          if (sel.ids[i] !== ids[i]) fail('SELECTION_MISMATCH', `layer ${li} stage ${si} input ${b}: rank ${i} is id ${ids[i]}; the exact top-${k} of all ${nK} keys has ${sel.ids[i]}`);
        }
        s = sel.scores;
      } else {
        s = new Float64Array(k);
        for (let i = 0; i < k; i++) s[i] = csimilarity(l.similarity, q, K!.rows, rowOf(K!, ids[i]!), d);
      }
      const a = csoftmax(s, l.beta);
      if (saved) {
        const slot = b * S + si;
        saved.q.set(q, slot * d);
        saved.s.set(s, slot * k);
        saved.a.set(a, slot * k);
      }
      const toValues = si === S - 1;
      if (toValues) {
        const offs = Array.from(ids, (id) => rowOf(V, id));
        const y = cmix(a, V.rows, offs, l.dOut);
        for (let j = 0; j < l.dOut; j++) out[b * l.dOut + j] = y[j]!;
      } else if (sub) {
        // Mixing product keys: each key is its two sub-keys side by side.
        const q2 = new Float64Array(d);
        const d1 = sub.t1.dim, d2 = sub.t2.dim;
        for (let i = 0; i < k; i++) {
          const o1 = rowOf(sub.t1, Math.floor(ids[i]! / sub.n)), o2 = rowOf(sub.t2, ids[i]! % sub.n);
          for (let j = 0; j < d1; j++) q2[j] = q2[j]! + a[i]! * sub.t1.rows[o1 + j]!;
          for (let j = 0; j < d2; j++) q2[d1 + j] = q2[d1 + j]! + a[i]! * sub.t2.rows[o2 + j]!;
        }
        q = q2;
      } else {
        q = cmix(a, K!.rows, Array.from(ids, (id) => rowOf(K!, id)), d);
      }
    }
  }
  return { y: out, saved };
}

/** trainForward's saved state, or (when the step ran verify) the same recomputed from the context. */
function savedOf(l: GhostHopfieldLayer, ctx: BackwardContext): HopfieldSaved {
  const sv = ctx.saved as HopfieldSaved | undefined;
  const B = ctx.rows, S = l.updateSteps;
  if (sv && sv.q instanceof Float64Array && sv.q.length === B * S * l.dIn && sv.a.length === B * S * l.k && sv.s.length === B * S * l.k) return sv;
  const x = ctx.inputs[0];
  if (!x) fail('SHAPE', `layer ${ctx.index} (hopfield) takes vectors`);
  const again = hopfieldForward(l, {
    manifest: ctx.manifest, evidence: ctx.evidence, index: ctx.index, rows: B, ids: null, x, inputs: ctx.inputs,
    reveal: () => ctx.revealed as Map<number, Revealed>,
  }, true);
  return again.saved!;
}

/**
 * The canonical backward (docs/layer-kinds.md, "HopfieldLookup", "Canonical backward"):
 * per input b in order, the stages in reverse, each (1) the mixed rows (i in rank
 * order), (2) the softmax, (3) the similarity (i in rank order) to the key rows and the
 * state; then through normalize to dx, rounded to f32 once. The selection is the
 * proof's (held constant); beta is not trained.
 */
/**
 * The cosine score's step for one key: dq_j += u K_j - vq q_j and dK_j += u q_j - vk K_j,
 * each in the canonical order of its f64 operations, unrolled by 4.
 */
function cosineStep(dq: Float64Array, acc: Float64Array, Kr: Float32Array, o: number, q: Float32Array | Float64Array, qo: number, u: number, vq: number, vk: number, d: number): void {
  let j = 0;
  for (; j + 4 <= d; j += 4) {
    const k0 = Kr[o + j]!, k1 = Kr[o + j + 1]!, k2 = Kr[o + j + 2]!, k3 = Kr[o + j + 3]!;
    const q0 = q[qo + j]!, q1 = q[qo + j + 1]!, q2 = q[qo + j + 2]!, q3 = q[qo + j + 3]!;
    dq[j] = dq[j]! + (u * k0 - vq * q0);
    acc[j] = acc[j]! + (u * q0 - vk * k0);
    dq[j + 1] = dq[j + 1]! + (u * k1 - vq * q1);
    acc[j + 1] = acc[j + 1]! + (u * q1 - vk * k1);
    dq[j + 2] = dq[j + 2]! + (u * k2 - vq * q2);
    acc[j + 2] = acc[j + 2]! + (u * q2 - vk * k2);
    dq[j + 3] = dq[j + 3]! + (u * k3 - vq * q3);
    acc[j + 3] = acc[j + 3]! + (u * q3 - vk * k3);
  }
  for (; j < d; j++) {
    dq[j] = dq[j]! + (u * Kr[o + j]! - vq * q[qo + j]!);
    acc[j] = acc[j]! + (u * q[qo + j]! - vk * Kr[o + j]!);
  }
}

function hopfieldBackward(l: GhostHopfieldLayer, ctx: BackwardContext, dy: Float32Array): Float32Array {
  const sv = savedOf(l, ctx);
  const B = ctx.rows, k = l.k, d = l.dIn, dv = l.dOut, S = l.updateSteps, beta = l.beta;
  const ev = ctx.evidence, x = ctx.inputs[0]!;
  const V = ctx.revealed.get(l.values)!;
  const pk = l.index.kind === 'product-keys' ? l.index.subKeys : 0;
  const T1 = pk ? ctx.revealed.get(l.keys[0]!)! : null, T2 = pk ? ctx.revealed.get(l.keys[1]!)! : null;
  const K = pk ? null : ctx.revealed.get(l.keys[0]!)!;
  const d1 = T1 ? T1.dim : d;
  const sim = pk ? 'ip' : l.similarity;
  const dx = new Float32Array(B * d);
  const g = new Float64Array(Math.max(d, dv)), dq = new Float64Array(d), da = new Float64Array(k), ds = new Float64Array(k);
  for (let b = 0; b < B; b++) {
    for (let j = 0; j < dv; j++) g[j] = dy[b * dv + j]!;
    for (let si = S - 1; si >= 0; si--) {
      const ids = ev.stages[si]!.subarray(b * k, (b + 1) * k);
      const slot = b * S + si, qo = slot * d, ao = slot * k;
      const q = sv.q, a = sv.a, s = sv.s;
      // (1) out = sum_i a_i R_i: da_i = g . R_i, dR_i += a_i g.
      for (let i = 0; i < k; i++) {
        const id = ids[i]!, ai = a[ao + i]!;
        if (si === S - 1) {
          const o = rowOf(V, id);
          da[i] = cdot(g, 0, V.rows, o, dv);
          addScaled(ctx.grad(l.values, id), 0, ai, g, 0, dv);
        } else if (pk) {
          const i1 = Math.floor(id / pk), i2 = id % pk;
          const o1 = rowOf(T1!, i1), o2 = rowOf(T2!, i2);
          let t = 0;
          for (let j = 0; j < d1; j++) t = t + g[j]! * T1!.rows[o1 + j]!;
          for (let j = d1; j < d; j++) t = t + g[j]! * T2!.rows[o2 + j - d1]!;
          da[i] = t;
          addScaled(ctx.grad(l.keys[0]!, i1), 0, ai, g, 0, d1);
          addScaled(ctx.grad(l.keys[1]!, i2), 0, ai, g, d1, d - d1);
        } else {
          const o = rowOf(K!, id);
          da[i] = cdot(g, 0, K!.rows, o, d);
          addScaled(ctx.grad(l.keys[0]!, id), 0, ai, g, 0, d);
        }
      }
      // (2) a = softmax(beta s): ds_i = beta * (a_i * (da_i - sum_t a_t da_t)).
      let rho = 0;
      for (let i = 0; i < k; i++) rho = rho + a[ao + i]! * da[i]!;
      for (let i = 0; i < k; i++) ds[i] = beta * (a[ao + i]! * (da[i]! - rho));
      // (3) s_i = sim(q, K_i): dq and dK_i.
      dq.fill(0);
      const nq = sim === 'cosine' ? Math.sqrt(cdot(q, qo, q, qo, d)) : 0;
      for (let i = 0; i < k; i++) {
        const id = ids[i]!, c = ds[i]!;
        if (pk) {
          const i1 = Math.floor(id / pk), i2 = id % pk;
          const o1 = rowOf(T1!, i1), o2 = rowOf(T2!, i2);
          addScaled(dq, 0, c, T1!.rows, o1, d1);
          addScaled(ctx.grad(l.keys[0]!, i1), 0, c, q, qo, d1);
          addScaled(dq, d1, c, T2!.rows, o2, d - d1);
          addScaled(ctx.grad(l.keys[1]!, i2), 0, c, q, qo + d1, d - d1);
          continue;
        }
        const o = rowOf(K!, id), Kr = K!.rows;
        const acc = ctx.grad(l.keys[0]!, id);
        if (sim === 'ip') {
          addScaled(dq, 0, c, Kr, o, d);
          addScaled(acc, 0, c, q, qo, d);
        } else if (sim === 'l2') {
          const w = 2 * c;
          for (let j = 0; j < d; j++) {
            const t = q[qo + j]! - Kr[o + j]!;
            dq[j] = dq[j]! - w * t;
            acc[j] = acc[j]! + w * t;
          }
        } else {
          const nk = Math.sqrt(cdot(Kr, o, Kr, o, d));
          if (nq === 0 || nk === 0) continue; // the score is the constant 0
          const score = s[ao + i]!;
          const u = c / (nq * nk), vq = (c * score) / (nq * nq), vk = (c * score) / (nk * nk);
          cosineStep(dq, acc, Kr, o, q, qo, u, vq, vk, d);
        }
      }
      for (let j = 0; j < d; j++) g[j] = dq[j]!;
    }
    // The first state: q = x, or q = x / |x| (dx = (g - q (q . g)) / |x|; 0 when x = 0).
    const xo = b * d;
    if (!l.normalize) {
      for (let j = 0; j < d; j++) dx[xo + j] = g[j]!;
    } else {
      const nx = Math.sqrt(cdot(x, xo, x, xo, d));
      if (nx > 0) {
        const q0 = sv.q, qo = b * S * d;
        let p = 0;
        for (let j = 0; j < d; j++) p = p + q0[qo + j]! * g[j]!;
        for (let j = 0; j < d; j++) dx[xo + j] = (g[j]! - q0[qo + j]! * p) / nx;
      }
    }
  }
  return dx;
}
