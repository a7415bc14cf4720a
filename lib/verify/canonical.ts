/**
 * Canonical arithmetic v1 (docs/proof-format.md, "Canonical arithmetic"): what a
 * proof claims is computed by these routines, which give the same bits here and in
 * C++ (native/src/core/canonical.cc), so a verifier's recomputation equals the prover's
 * claim exactly, with no tolerance band.
 *
 * The rules: values are f32 patterns and inputs, widened exactly to f64; every sum
 * runs in f64 in a fixed order, from +0, one `s = s + a * b` at a time (no fused
 * multiply-add); exp and log1p are built from + - * / and exact scaling by powers
 * of two (never a libm); sqrt (correctly rounded in IEEE 754) is allowed; ties are
 * broken by the lower id. JavaScript numbers are IEEE doubles with no contraction,
 * so plain JS expressions follow these rules; the C++ side is built with
 * -ffp-contract=off.
 *
 * Loads no addon: the verifier entry point uses it in a browser too.
 */

export const CANONICAL_VERSION = 1;

const LOG2E = 1.4426950408889634;
// fdlibm's split of ln 2: LN2_HI has its low 32 bits zero, so n * LN2_HI is exact for |n| < 2^20.
const LN2_HI = 6.93147180369123816490e-1;
const LN2_LO = 1.90821492927058770002e-10;
/** 1/k! for k = 0..13, each a correctly rounded division (C++ folds the same constants). */
const EXP_COEF: readonly number[] = (() => {
  const c: number[] = [1];
  let f = 1;
  for (let k = 1; k <= 13; k++) {
    f *= k; // exact: 13! < 2^53
    c.push(1 / f);
  }
  return c;
})();

const scratch = new DataView(new ArrayBuffer(8));

/** 2^m for an integer m in [-1022, 1023], built from its bits (exact). */
function pow2(m: number): number {
  scratch.setUint32(0, (m + 1023) * 0x100000, false);
  scratch.setUint32(4, 0, false);
  return scratch.getFloat64(0, false);
}

/** exp(x) from + - * / only: x = n ln2 + r, |r| <= ln2 / 2, a degree-13 Taylor polynomial, exact scaling. */
export function cexp(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x > 709.7) return Infinity;
  if (x < -745.2) return 0;
  const n = Math.floor(x * LOG2E + 0.5);
  const r = x - n * LN2_HI - n * LN2_LO;
  let p = EXP_COEF[13]!;
  for (let k = 12; k >= 0; k--) p = p * r + EXP_COEF[k]!;
  if (n > 1023) return p * pow2(1023) * pow2(n - 1023);
  if (n < -1022) return p * pow2(-1022) * pow2(n + 1022);
  return p * pow2(n);
}

/**
 * log(1 + x) for x in (-1, 0] (the weight-decay factor log(1 - lr * wd)):
 * 2 atanh(u) with u = x / (2 + x) summed to 40 terms (|u| <= 1/3 for x >= -1/2);
 * below -1/2 the argument is first scaled by exact powers of two.
 */
export function clog1pNeg(x: number): number {
  if (!(x <= 0 && x > -1)) return NaN;
  if (x === 0) return 0;
  if (x >= -0.5) return atanh2(x / (2 + x));
  // 1 + x is exact here (Sterbenz); scale y into [0.5, 1) by 2^e, e >= 1.
  let y = 1 + x;
  let e = 0;
  while (y < 0.5) {
    y = y * 2;
    e++;
  }
  // y in [0.5, 1): log y = log1p(y - 1) with y - 1 in [-0.5, 0) (exact).
  return atanh2((y - 1) / (2 + (y - 1))) - e * LN2_HI - e * LN2_LO;
}

/** 2 atanh(u) = 2 (u + u^3/3 + u^5/5 + ...), 40 terms, |u| <= 1/3. */
function atanh2(u: number): number {
  const u2 = u * u;
  let s = 0;
  for (let k = 79; k >= 1; k -= 2) s = s * u2 + 1 / k;
  return 2 * (u * s);
}

/** b^t for an integer t >= 0 by squaring (low bit first), in f64. */
export function cpowi(b: number, t: number): number {
  let r = 1;
  let base = b;
  let e = t;
  while (e > 0) {
    if (e % 2 === 1) r = r * base;
    e = Math.floor(e / 2);
    if (e > 0) base = base * base;
  }
  return r;
}

/** sum_j a[ao + j] * b[bo + j] for j = 0..n-1, in f64, in that order. */
export function cdot(a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, n: number): number {
  let s = 0;
  for (let j = 0; j < n; j++) s = s + a[ao + j]! * b[bo + j]!;
  return s;
}

/**
 * cdot of q with each of the n rows of t (row length d): four rows at a time, each
 * row's sum still one term at a time in order (the same bits, more throughput).
 */
export function cdots(q: Float64Array, t: Float32Array, n: number, d: number): Float64Array {
  const s = new Float64Array(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o0 = i * d, o1 = o0 + d, o2 = o1 + d, o3 = o2 + d;
    let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (let j = 0; j < d; j++) {
      const qj = q[j]!;
      a0 = a0 + qj * t[o0 + j]!;
      a1 = a1 + qj * t[o1 + j]!;
      a2 = a2 + qj * t[o2 + j]!;
      a3 = a3 + qj * t[o3 + j]!;
    }
    s[i] = a0;
    s[i + 1] = a1;
    s[i + 2] = a2;
    s[i + 3] = a3;
  }
  for (; i < n; i++) s[i] = cdot(q, 0, t, i * d, d);
  return s;
}

export type CanonicalSimilarity = 'ip' | 'cosine' | 'l2';

/** The similarity of state q (f64, d) and pattern row (f32 at ro). cosine with a zero vector is 0; l2 is -|q - K|^2. */
export function csimilarity(sim: CanonicalSimilarity, q: Float64Array, row: Float32Array, ro: number, d: number): number {
  if (sim === 'ip') return cdot(q, 0, row, ro, d);
  if (sim === 'cosine') {
    const nq = Math.sqrt(cdot(q, 0, q, 0, d));
    const nk = Math.sqrt(cdot(row, ro, row, ro, d));
    if (nq === 0 || nk === 0) return 0;
    return cdot(q, 0, row, ro, d) / (nq * nk);
  }
  let s = 0;
  for (let j = 0; j < d; j++) {
    const t = q[j]! - row[ro + j]!;
    s = s + t * t;
  }
  return -s;
}

/** The first state of an input: x widened to f64, or x / |x| (0 for a zero vector) when normalising. */
export function cstate(x: Float32Array, xo: number, d: number, normalize: boolean): Float64Array {
  const q = new Float64Array(d);
  if (!normalize) {
    for (let j = 0; j < d; j++) q[j] = x[xo + j]!;
    return q;
  }
  const n = Math.sqrt(cdot(x, xo, x, xo, d));
  if (n > 0) for (let j = 0; j < d; j++) q[j] = x[xo + j]! / n;
  return q;
}

/** softmax(beta * s) in f64: max first, e_i = cexp(beta s_i - max), one sum in order, then e_i / sum. */
export function csoftmax(s: Float64Array, beta: number): Float64Array {
  const k = s.length;
  const z = new Float64Array(k);
  let m = -Infinity;
  for (let i = 0; i < k; i++) {
    z[i] = beta * s[i]!;
    if (z[i]! > m) m = z[i]!;
  }
  let sum = 0;
  for (let i = 0; i < k; i++) {
    z[i] = cexp(z[i]! - m);
    sum = sum + z[i]!;
  }
  for (let i = 0; i < k; i++) z[i] = z[i]! / sum;
  return z;
}

/** sum_i a_i rows[i] in f64 (i in order), rows given as f32 rows of width w (row i at rowsAt(i)). */
export function cmix(a: Float64Array, rows: Float32Array, offsets: ArrayLike<number>, w: number): Float64Array {
  const out = new Float64Array(w);
  for (let i = 0; i < a.length; i++) {
    const o = offsets[i]!;
    const ai = a[i]!;
    for (let j = 0; j < w; j++) out[j] = out[j]! + ai * rows[o + j]!;
  }
  return out;
}

/**
 * Top-k of scores (f64) by score descending, ties to the lower id; ids are 0..n-1
 * unless `idOf` maps a position to an id. Returns positions in rank order. A sorted
 * list of the best k so far: a position that does not beat the k-th is one compare.
 */
export function ctopk(scores: Float64Array, k: number, idOf: (pos: number) => number = (p) => p): number[] {
  const top: number[] = [];
  const better = (a: number, b: number): boolean => scores[a]! > scores[b]! || (scores[a] === scores[b] && idOf(a) < idOf(b));
  for (let p = 0; p < scores.length; p++) {
    if (top.length === k && !better(p, top[k - 1]!)) continue;
    let at = top.length === k ? k - 1 : top.length;
    while (at > 0 && better(p, top[at - 1]!)) at--;
    if (top.length === k) top.pop();
    top.splice(at, 0, p);
  }
  return top;
}

/**
 * The exact top-k of all n keys (n x d f32) for state q under `sim` (held keys,
 * docs/proof-format.md section 5): csimilarity of every key, then ctopk (score
 * descending, ties to the lower id). `norms`, for cosine, may hold each key's
 * sqrt(cdot(K_i, K_i)) computed once (the same bits as csimilarity's). Returns the ids
 * in rank order and their scores.
 */
export function cexactTopK(sim: CanonicalSimilarity, q: Float64Array, keys: Float32Array, n: number, d: number, k: number, norms?: Float64Array): { ids: Uint32Array; scores: Float64Array } {
  let s: Float64Array;
  if (sim === 'ip') s = cdots(q, keys, n, d);
  else if (sim === 'cosine') {
    s = cdots(q, keys, n, d);
    const nq = Math.sqrt(cdot(q, 0, q, 0, d));
    for (let i = 0; i < n; i++) {
      const nk = norms ? norms[i]! : Math.sqrt(cdot(keys, i * d, keys, i * d, d));
      s[i] = nq === 0 || nk === 0 ? 0 : s[i]! / (nq * nk);
    }
  } else {
    s = new Float64Array(n);
    for (let i = 0; i < n; i++) s[i] = csimilarity('l2', q, keys, i * d, d);
  }
  const top = ctopk(s, Math.min(k, n));
  return { ids: Uint32Array.from(top), scores: Float64Array.from(top, (p) => s[p]!) };
}

/**
 * A projection (docs/attention.md) of n rows x (dIn f32 each) by the m patterns of W:
 * s_j = cdot(x_i, W_j); with kp < m only the top kp of each row (ctopk: ties to the
 * lower j) are kept and the others are 0. Returns n x m f32, each kept s_j rounded.
 */
export function cprojection(x: Float32Array, n: number, dIn: number, W: Float32Array, m: number, kp: number, kept?: Uint32Array): Float32Array {
  return clinear(x, n, dIn, W, m, kp, null, kept);
}

/**
 * A linear layer (docs/layer-kinds.md, "Linear"): for each of the n rows, s_j = cdot(x_i,
 * W_j) over the m patterns of W; with kp < m only the top kp (ctopk: ties to the lower j)
 * are kept, the others are 0; then y_ij = f32(s_j + b_j) (the sum in f64; b = 0 without
 * a bias: cprojection). With kp < m and `kept` (n x kp), each row's kept columns are
 * written there, ascending (what the canonical backward needs).
 */
export function clinear(x: Float32Array, n: number, dIn: number, W: Float32Array, m: number, kp: number, bias: Float32Array | null, kept?: Uint32Array): Float32Array {
  const y = new Float32Array(n * m);
  const q = new Float64Array(dIn);
  for (let i = 0; i < n; i++) {
    for (let t = 0; t < dIn; t++) q[t] = x[i * dIn + t]!;
    const s = cdots(q, W, m, dIn);
    if (kp >= m) {
      if (bias === null) for (let j = 0; j < m; j++) y[i * m + j] = s[j]!;
      else for (let j = 0; j < m; j++) y[i * m + j] = s[j]! + bias[j]!;
      continue;
    }
    if (bias !== null) for (let j = 0; j < m; j++) y[i * m + j] = bias[j]!;
    const top = ctopk(s, kp);
    for (const j of top) y[i * m + j] = bias === null ? s[j]! : s[j]! + bias[j]!;
    if (kept) kept.set(Uint32Array.from(top).sort(), i * kp);
  }
  return y;
}

/**
 * RMSNorm (docs/layer-kinds.md, "RMSNorm") of n rows of d f32: per row, in f64,
 * ms = (sum_t x_t * x_t, in order) / d, r = 1 / sqrt(ms + eps), and y_t = f32((x_t * r) * g_t).
 */
export function crmsnorm(x: Float32Array, n: number, d: number, gain: Float32Array, eps: number): Float32Array {
  const y = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    const o = i * d;
    const r = 1 / Math.sqrt(cdot(x, o, x, o, d) / d + eps);
    for (let t = 0; t < d; t++) y[o + t] = (x[o + t]! * r) * gain[t]!;
  }
  return y;
}

/**
 * The gate of a gated MLP (docs/layer-kinds.md, "Gated MLP"): per value, in f64,
 * silu(g) = g / (1 + cexp(-g)) and y = f(silu(g) * u).
 */
export function cglu(gate: Float32Array, up: Float32Array): Float32Array {
  const y = new Float32Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i]!;
    y[i] = (g / (1 + cexp(-g))) * up[i]!;
  }
  return y;
}

/**
 * Top-k multi-head self-attention over one sequence of n rows (Q, K, V: n x D f32,
 * head h in columns [h dk, (h + 1) dk)): for each head and query i, s_j = cdot of the
 * head's slices of q_i and k_j for every visible j (j <= i when causal), the top
 * min(k, visible) by ctopk, csoftmax(s, scale) over them, cmix of the v_j slices.
 * Returns n x D f32.
 */
export function cattention(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  n: number,
  heads: number,
  kTop: number,
  causal: boolean,
  scale: number,
  /** Called per head and query with the selected key positions (rank order) and their softmax weights (the canonical backward keeps them). */
  onQuery?: (h: number, i: number, top: number[], a: Float64Array) => void,
): Float32Array {
  const D = q.length / n, dk = D / heads;
  const out = new Float32Array(n * D);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < n; i++) {
      const m = causal ? i + 1 : n;
      const s = new Float64Array(m);
      for (let j = 0; j < m; j++) s[j] = cdot(q, i * D + h * dk, k, j * D + h * dk, dk);
      const top = ctopk(s, Math.min(kTop, m));
      const a = csoftmax(Float64Array.from(top, (j) => s[j]!), scale);
      const o = cmix(a, v, top.map((j) => j * D + h * dk), dk);
      for (let t = 0; t < dk; t++) out[i * D + h * dk + t] = o[t]!;
      onQuery?.(h, i, top, a);
    }
  }
  return out;
}

/**
 * Error of the f64 sum a + b (Knuth's TwoSum, + and - only): a + b == hi + lo exactly,
 * where hi = fl(a + b). Valid for finite a, b whose sum does not overflow.
 */
export function ctwoSumLo(a: number, b: number, hi: number): number {
  const bb = hi - a;
  return (a - (hi - bb)) + (b - bb);
}

/**
 * Best k of the candidate pairs (s1[a], s2[b]) of two per-table top lists, the order
 * that makes product-key selection the exact top-k of all n^2 slots
 * (docs/product-keys.md): the exact sum s1 + s2 descending (compared as hi, then its
 * rounding error lo, both descending), ties (equal exact sums) to the lower slot id
 * i * n + j. The rounded sum alone is not enough: two sums that differ can round to
 * the same f64, and the lower id then wins over a slot that is really better, while
 * the other slot (outside the per-table top lists) was never a candidate.
 * Scores reported are hi.
 */
export function cbestPairs(
  n: number,
  k: number,
  ids1: ArrayLike<number>,
  s1: ArrayLike<number>,
  ids2: ArrayLike<number>,
  s2: ArrayLike<number>,
): { ids: Uint32Array; scores: Float64Array } {
  const k1 = ids1.length, k2 = ids2.length, m = k1 * k2;
  const hi = new Float64Array(m), lo = new Float64Array(m), id = new Float64Array(m);
  for (let a = 0; a < k1; a++) {
    for (let b = 0; b < k2; b++) {
      const p = a * k2 + b, x = s1[a]!, y = s2[b]!, h = x + y;
      hi[p] = h;
      lo[p] = ctwoSumLo(x, y, h);
      id[p] = ids1[a]! * n + ids2[b]!;
    }
  }
  const better = (p: number, q: number): boolean =>
    hi[p]! !== hi[q]! ? hi[p]! > hi[q]! : lo[p]! !== lo[q]! ? lo[p]! > lo[q]! : id[p]! < id[q]!;
  const top: number[] = [];
  for (let p = 0; p < m; p++) {
    if (top.length === k && !better(p, top[k - 1]!)) continue;
    let at = top.length === k ? k - 1 : top.length;
    while (at > 0 && better(p, top[at - 1]!)) at--;
    if (top.length === k) top.pop();
    top.splice(at, 0, p);
  }
  return { ids: Uint32Array.from(top, (p) => id[p]!), scores: Float64Array.from(top, (p) => hi[p]!) };
}

/**
 * Canonical product-key selection (Lample et al. 2019) for state q (f64, d1 + d2):
 * s1 = q[:d1] . T1 rows, s2 = q[d1:] . T2 rows, each cdot; the top-k of each table
 * (ctopk, ties to the lower row); then cbestPairs over the k x k pairs. This is the
 * exact top-k over all n^2 slots ordered by the exact sum s1 + s2, ties to the lower
 * slot id (slot = i1 * n + i2).
 */
export function cproductKeys(
  q: Float64Array,
  t1: Float32Array,
  t2: Float32Array,
  n: number,
  d1: number,
  d2: number,
  k: number,
): { ids: Uint32Array; scores: Float64Array } {
  const q2 = q.subarray(d1);
  const s1 = cdots(q, t1, n, d1), s2 = cdots(q2, t2, n, d2);
  const kk = Math.min(k, n);
  const top1 = ctopk(s1, kk), top2 = ctopk(s2, kk);
  return cbestPairs(n, k, top1, top1.map((i) => s1[i]!), top2, top2.map((j) => s2[j]!));
}

/** Optimizer hyper-parameters as the step uses them (f32 values). */
export interface CanonicalOptimizer {
  kind: 'adam' | 'sgd';
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Adam bias correction by each row's own step count (true) or by the global step (false). */
  rowStep: boolean;
}

/** Optimizer state of some rows: moments (count x d), update counts, decay marks. */
export interface CanonicalRowState {
  m: Float32Array;
  v: Float32Array;
  steps: Uint32Array;
  marks: Float64Array;
}

const f = Math.fround;

/**
 * One optimizer step over `count` distinct rows (old values `rows`, coalesced
 * gradients `grads`, both count x d), exactly as native/src/core/optimizer.cc takes it:
 * per-row scalars in f64 with the canonical exp / log1p / powi, then per element in
 * f32 (each operation rounded with Math.fround, which equals f32 arithmetic for
 * + - * / and sqrt). `globalStep` and `logDecay` are the optimizer's before the step.
 */
export function coptimizerStep(
  p: CanonicalOptimizer,
  globalStep: number,
  logDecay: number,
  d: number,
  rows: Float32Array,
  grads: Float32Array,
  state: CanonicalRowState,
): { rows: Float32Array; state: CanonicalRowState; logDecay: number } {
  const count = state.steps.length;
  const lr = f(p.lr), wd = f(p.weightDecay), b1 = f(p.beta1), b2 = f(p.beta2), eps = f(p.eps);
  const newLogDecay = wd > 0 ? logDecay + clog1pNeg(-lr * wd) : logDecay;
  const adam = p.kind === 'adam';
  const out = new Float32Array(count * d);
  const m = new Float32Array(adam ? count * d : 0), v = new Float32Array(adam ? count * d : 0);
  const steps = new Uint32Array(count), marks = new Float64Array(count);
  const c1 = f(1 - b1), c2 = f(1 - b2);
  for (let r = 0; r < count; r++) {
    const decay = wd > 0 ? f(cexp(newLogDecay - state.marks[r]!)) : 1;
    const o = r * d;
    if (!adam) {
      for (let j = 0; j < d; j++) out[o + j] = f(f(rows[o + j]! * decay) - f(lr * grads[o + j]!));
    } else {
      const t = p.rowStep ? state.steps[r]! + 1 : globalStep + 1;
      const bc1 = 1 - cpowi(b1, t);
      const bc2 = 1 - cpowi(b2, t);
      const stepSize = f(lr / bc1);
      const invSqrtBc2 = f(1 / Math.sqrt(bc2));
      for (let j = 0; j < d; j++) {
        const g = grads[o + j]!;
        const mj = f(f(b1 * state.m[o + j]!) + f(c1 * g));
        const vj = f(f(b2 * state.v[o + j]!) + f(f(c2 * g) * g));
        const denom = f(f(f(Math.sqrt(vj)) * invSqrtBc2) + eps);
        m[o + j] = mj;
        v[o + j] = vj;
        out[o + j] = f(f(rows[o + j]! * decay) - f(f(stepSize * mj) / denom));
      }
    }
    steps[r] = state.steps[r]! + 1;
    marks[r] = newLogDecay;
  }
  return { rows: out, state: { m, v, steps, marks }, logDecay: newLogDecay };
}
