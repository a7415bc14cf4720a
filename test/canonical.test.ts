/**
 * Canonical arithmetic: the TypeScript routines (the verifier's) and the C++ ones
 * (the prover's) must agree bit for bit on random and hostile inputs, and both must
 * be close to the libm functions they stand in for (an independent reference).
 */
import { describe, expect, it } from 'vitest';

import { cexp, clog1pNeg, cmix, coptimizerStep, cpowi, cproductKeys, csimilarity, csoftmax, cstate } from '../lib/verify/canonical.js';
import { SparseAdam, SparseSGD, SparseTensor } from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { exactPairRanking } from './helpers/exact-sum.js';
import { Rng } from './helpers/rng.js';

const bits = (a: Float64Array | Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

/** Float32 arrays with hostile magnitudes: huge, tiny, subnormal, zero, negative zero. */
function hostile(rng: Rng, n: number): Float32Array {
  const picks = [0, -0, 1e-45, -1e-45, 1e-38, 3e38, -3e38, 1, -1, 0.5, 1e-20, 7e20];
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.next() < 0.5 ? picks[rng.int(0, picks.length - 1)]! * (0.5 + rng.next() / 2) : rng.signed();
  return a;
}

describe('canonical exp, log1p and integer power', () => {
  const rng = new Rng(7);
  const xs: number[] = [0, -0, 1e-300, -1e-300, 709.7, 709.69, -745.1, -745.2, -745.3, -708.4, -708.39, -1022 * Math.LN2, 0.5 * Math.LN2, -0.5 * Math.LN2];
  for (let i = 0; i < 20000; i++) xs.push(rng.signed() * 760);
  for (let i = 0; i < 5000; i++) xs.push(rng.signed() * 2);
  for (let i = 0; i < 2000; i++) xs.push(rng.signed() * 1e-8);

  it('exp: C++ and TypeScript give the same bits, within 2e-16 relative of Math.exp on normal results', () => {
    const x = Float64Array.from(xs);
    const nat = native().canonicalMath(x, 'exp');
    const ts = Float64Array.from(xs, cexp);
    expect(bits(ts)).toBe(bits(nat));
    let worst = 0;
    for (let i = 0; i < xs.length; i++) {
      const ref = Math.exp(xs[i]!);
      if (ref < 2.3e-308 || !Number.isFinite(ref)) continue;
      worst = Math.max(worst, Math.abs(ts[i]! - ref) / ref);
    }
    expect(worst).toBeLessThan(4e-16);
    expect(cexp(710)).toBe(Infinity);
    expect(cexp(-746)).toBe(0);
    expect(cexp(0)).toBe(1);
    expect(cexp(-740)).toBeGreaterThan(0); // subnormal results survive the two-step scaling
  });

  it('log1p for x in (-1, 0]: same bits in both, within 1e-15 relative (a few ulps) of Math.log1p', () => {
    const v: number[] = [0, -1e-300, -1e-12, -0.5, -0.5000001, -0.75, -0.999999, -1 + 2 ** -52];
    for (let i = 0; i < 20000; i++) v.push(-rng.next() * (i % 3 === 0 ? 1 : i % 3 === 1 ? 1e-3 : 1e-9));
    const x = Float64Array.from(v);
    const nat = native().canonicalMath(x, 'log1pNeg');
    const ts = Float64Array.from(v, clog1pNeg);
    expect(bits(ts)).toBe(bits(nat));
    let worst = 0;
    for (let i = 0; i < v.length; i++) if (v[i] !== 0) worst = Math.max(worst, Math.abs(ts[i]! - Math.log1p(v[i]!)) / Math.abs(Math.log1p(v[i]!)));
    expect(worst).toBeLessThan(1e-15);
    expect(Number.isNaN(clog1pNeg(0.1))).toBe(true);
    expect(Number.isNaN(clog1pNeg(-1))).toBe(true);
    expect(Number.isNaN(native().canonicalMath(new Float64Array([-1]), 'log1pNeg')[0]!)).toBe(true);
  });

  it('powi: same bits in both, close to Math.pow', () => {
    for (const b of [0.9, 0.999, Math.fround(0.9), Math.fround(0.999), 0.5, 1, 0]) {
      for (const t of [0, 1, 2, 3, 7, 100, 1023, 65537, 2 ** 31 + 5]) {
        const ts = cpowi(b, t);
        expect(Object.is(ts, native().canonicalPowi(b, t))).toBe(true);
        const ref = Math.pow(b, t);
        if (ref > 1e-300) expect(Math.abs(ts - ref) / ref).toBeLessThan(1e-13 * Math.max(1, Math.log2(t + 1)));
        else expect(ts).toBeLessThan(1e-290);
      }
    }
  });
});

describe('canonical layer math: C++ equals TypeScript bit for bit', () => {
  const rng = new Rng(11);
  for (const normalize of [false, true]) {
    for (const sim of ['ip', 'cosine', 'l2'] as const) {
      it(`states, ${sim} scores and the softmax mix (normalize ${normalize}), random and hostile values`, () => {
        for (const gen of [(n: number) => rng.f32(n, 2), (n: number) => hostile(rng, n), (n: number) => rng.f32ints(n)]) {
          const B = 5, k = 7, d = 13, w = 6;
          const x = gen(B * d);
          x.fill(0, 0, d); // one zero input
          const rows = gen(B * k * d);
          rows.fill(0, d, 2 * d); // one zero key
          const vals = gen(B * k * w);
          const beta = Math.fround(0.1 + rng.next());
          const qn = native().canonicalStates(x, B, d, normalize);
          const sn = native().canonicalScores(qn, rows, B, k, d, sim);
          const yn = native().canonicalMix(sn, beta, vals, B, k, w);
          const qt = new Float64Array(B * d), st = new Float64Array(B * k), yt = new Float64Array(B * w);
          for (let b = 0; b < B; b++) {
            const q = cstate(x, b * d, d, normalize);
            qt.set(q, b * d);
            const s = new Float64Array(k);
            for (let i = 0; i < k; i++) s[i] = csimilarity(sim, q, rows, (b * k + i) * d, d);
            st.set(s, b * k);
            const a = csoftmax(s, beta);
            yt.set(cmix(a, vals, Array.from({ length: k }, (_, i) => (b * k + i) * w), w), b * w);
          }
          expect(bits(qt)).toBe(bits(qn));
          expect(bits(st)).toBe(bits(sn));
          expect(bits(yt)).toBe(bits(yn));
          for (const v of yt) expect(Number.isFinite(v)).toBe(true);
        }
      });
    }
  }

  it('the softmax mix is a weighted mean: weights sum to 1 within 1e-15, agrees with a plain f64 reference', () => {
    const s = Float64Array.from({ length: 9 }, () => rng.signed() * 30);
    const a = csoftmax(s, 0.7);
    expect(Math.abs(a.reduce((p, c) => p + c, 0) - 1)).toBeLessThan(1e-15);
    const m = Math.max(...s) * 0.7;
    const e = Array.from(s, (v) => Math.exp(0.7 * v - m));
    const z = e.reduce((p, c) => p + c, 0);
    for (let i = 0; i < 9; i++) expect(Math.abs(a[i]! - e[i]! / z)).toBeLessThan(1e-15);
  });

  it('product keys: C++ equals TypeScript, and both equal a brute force over all n^2 slots (ties included)', () => {
    for (const ints of [false, true]) {
      const n = 13, d1 = 3, d2 = 4, k = 9, B = 6; // n not a multiple of 4: the four-row pass and its tail
      const t1 = ints ? rng.f32ints(n * d1, -1, 1) : rng.f32(n * d1);
      const t2 = ints ? rng.f32ints(n * d2, -1, 1) : rng.f32(n * d2);
      const q = Float64Array.from(ints ? rng.f32ints(B * (d1 + d2), -1, 1) : rng.f32(B * (d1 + d2)));
      const nat = native().canonicalProductKeys(q, t1, t2, n, d1, d2, B, k, 2);
      for (let b = 0; b < B; b++) {
        const qb = q.subarray(b * (d1 + d2), (b + 1) * (d1 + d2));
        const ts = cproductKeys(qb, t1, t2, n, d1, d2, k);
        expect(Array.from(ts.ids)).toEqual(Array.from(nat.ids.subarray(b * k, (b + 1) * k)));
        expect(bits(ts.scores)).toBe(bits(nat.scores.subarray(b * k, (b + 1) * k)));
        // Brute force: every slot scored s1 + s2 exactly (BigInt), ranked by score then slot id.
        const s1 = new Float64Array(n), s2 = new Float64Array(n);
        for (let i = 0; i < n; i++) {
          for (let j = 0; j < d1; j++) s1[i] = s1[i]! + qb[j]! * t1[i * d1 + j]!;
          for (let j = 0; j < d2; j++) s2[i] = s2[i]! + qb[d1 + j]! * t2[i * d2 + j]!;
        }
        expect(Array.from(ts.ids)).toEqual(exactPairRanking(s1, s2, k));
      }
    }
  });

  it('product keys: sums that round to the same f64 are ranked by their exact value (C++ and TypeScript)', () => {
    // s1 = 1 + r 2^-23 (r = 0..7) and s2 = 2^30 m: at 2^30 the f64 spacing is 2^-22, so
    // slots of one m round to at most 2 values and tie often; only the exact sum (then
    // the slot id) orders them like the brute force over all n^2 slots.
    const n = 8;
    const t1 = Float32Array.from({ length: n }, (_, r) => 1 + r * 2 ** -23);
    const t2 = Float32Array.from({ length: n }, (_, j) => 2 ** 15 * [3, 1, 3, 0, 2, 1, 3, 2][j]!);
    const q = Float64Array.from([1, 2 ** 15]);
    const s1 = Array.from(t1, (v) => v * 1), s2 = Array.from(t2, (v) => v * 2 ** 15);
    let rounded = 0;
    for (let k = 1; k <= n * n; k++) {
      const ts = cproductKeys(q, t1, t2, n, 1, 1, k);
      const nat = native().canonicalProductKeys(q, t1, t2, n, 1, 1, 1, k, 1);
      const want = exactPairRanking(s1, s2, k);
      expect(Array.from(ts.ids)).toEqual(want);
      expect(Array.from(nat.ids)).toEqual(want);
      expect(bits(ts.scores)).toBe(bits(nat.scores));
      for (let t = 1; t < k; t++) if (ts.scores[t] === ts.scores[t - 1] && ts.ids[t]! < ts.ids[t - 1]!) rounded++;
    }
    expect(rounded).toBeGreaterThan(0); // the data does hit rounding ties where the lower id loses
  });

  it('scores and mix read rows in place through `at` (a block\'s rows, any order, repeats): the same bits as the pair-order copy', () => {
    for (const sim of ['ip', 'cosine', 'l2'] as const) {
      for (const gen of [(n: number) => rng.f32(n, 2), (n: number) => hostile(rng, n)]) {
        const B = 3, k = 9, d = 11, w = 5, n = 14;
        const x = gen(B * d);
        const keys = gen(n * d), vals = gen(n * w);
        keys.fill(0, 2 * d, 3 * d); // one zero key
        const at = Uint32Array.from({ length: B * k }, (_, p) => (p * 5 + (p % 3)) % n); // repeats, not sorted
        at[4] = 2;
        const beta = Math.fround(0.1 + rng.next());
        const q = native().canonicalStates(x, B, d, true);
        // The TypeScript reference over the rows copied out in pair order.
        const st = new Float64Array(B * k), yt = new Float64Array(B * w);
        for (let b = 0; b < B; b++) {
          const qb = q.subarray(b * d, (b + 1) * d);
          const s = new Float64Array(k);
          for (let i = 0; i < k; i++) s[i] = csimilarity(sim, qb, keys, at[b * k + i]! * d, d);
          st.set(s, b * k);
          yt.set(cmix(csoftmax(s, beta), vals, Array.from({ length: k }, (_, i) => at[b * k + i]! * w), w), b * w);
        }
        const sn = native().canonicalScores(q, keys, B, k, d, sim, at);
        expect(bits(sn)).toBe(bits(st));
        expect(bits(native().canonicalMix(sn, beta, vals, B, k, w, at))).toBe(bits(yt));
      }
    }
  });

  it('rejects hostile `at`: wrong length, a position past the rows, rows not whole, a non-finite row', () => {
    const q = new Float64Array(4), rows = new Float32Array(3 * 4), s = new Float64Array(2);
    const ok = Uint32Array.of(0, 2);
    expect(native().canonicalScores(q, rows, 1, 2, 4, 'ip', ok).length).toBe(2);
    expect(() => native().canonicalScores(q, rows, 1, 2, 4, 'ip', Uint32Array.of(0))).toThrow(/at has length 1, expected B \* k = 2/);
    expect(() => native().canonicalScores(q, rows, 1, 2, 4, 'ip', Uint32Array.of(0, 3))).toThrow(expect.objectContaining({ code: 'ERR_GT_OUT_OF_RANGE' }));
    expect(() => native().canonicalMix(s, 0.5, rows, 1, 2, 4, Uint32Array.of(2 ** 32 - 1, 0))).toThrow(/at\[0\] = 4294967295 is not below the 3 rows/);
    expect(() => native().canonicalScores(q, new Float32Array(10), 1, 2, 4, 'ip', ok)).toThrow(/not a whole number of rows of 4/);
    expect(() => native().canonicalScores(q, rows, 1, 2, 4, 'ip', new Float32Array(2) as unknown as Uint32Array)).toThrow(/at/);
    const bad = rows.slice();
    bad[5] = Infinity; // row 1, which no pair reads: every row is checked
    expect(() => native().canonicalScores(q, bad, 1, 2, 4, 'ip', ok)).toThrow(expect.objectContaining({ code: 'ERR_GT_NON_FINITE' }));
    expect(() => native().canonicalMix(s, 0.5, bad, 1, 2, 4, ok)).toThrow(/rows\[5\] is not finite/);
  });

  it('rejects bad shapes and non-finite inputs with typed errors', () => {
    expect(() => native().canonicalScores(new Float64Array(3), new Float32Array(6), 1, 2, 4, 'ip')).toThrow(/q has length 3/);
    expect(() => native().canonicalScores(new Float64Array([NaN, 0]), new Float32Array(2), 1, 1, 2, 'ip')).toThrow(/q\[0\] is not finite/);
    expect(() => native().canonicalMix(new Float64Array(2), 0.1, new Float32Array(4), 1, 2, 2)).toThrow(/f32/);
    expect(() => native().canonicalProductKeys(new Float64Array(4), new Float32Array(4), new Float32Array(4), 2, 2, 2, 1, 5, 1)).toThrow(/k must be in 1..4/);
  });
});

describe('the optimizer step is reproduced bit for bit by coptimizerStep', () => {
  for (const kind of ['adam', 'sgd'] as const) {
    for (const rowStep of [true, false]) {
      if (kind === 'sgd' && !rowStep) continue;
      it(`${kind}${kind === 'adam' ? (rowStep ? ', row bias correction' : ', global bias correction') : ''}, weight decay, lr change, 30 steps`, () => {
        const rng = new Rng(kind === 'adam' ? (rowStep ? 3 : 4) : 5);
        const n = 40, d = 9;
        const t = SparseTensor.fromArray(rng.f32(n * d), d);
        const opt = kind === 'adam'
          ? new SparseAdam([t], { lr: 0.01, weightDecay: 0.05, biasCorrection: rowStep ? 'row' : 'global' })
          : new SparseSGD([t], { lr: 0.05, weightDecay: 0.02 });
        for (let step = 0; step < 30; step++) {
          if (step === 12) opt.lr = 0.003;
          const ids = Uint32Array.from(new Set(Array.from({ length: 6 }, () => rng.int(0, n - 1)))).sort();
          const grads = rng.f32(ids.length * d, step % 5 === 0 ? 1e3 : 1);
          const info = opt.info(t);
          const before = opt.state(t, ids);
          const rows = t.gather(ids);
          const p = { kind: info.kind, lr: info.lr, beta1: info.beta1, beta2: info.beta2, eps: info.eps, weightDecay: info.weightDecay, rowStep: info.biasCorrection === 'row' };
          const ref = coptimizerStep(p, info.steps, info.logDecay, d, rows, grads, before);
          opt.step([{ tensor: t, ids, grads }]);
          const after = opt.state(t, ids);
          expect(bits(t.gather(ids))).toBe(bits(ref.rows));
          if (kind === 'adam') {
            expect(bits(after.m)).toBe(bits(ref.state.m));
            expect(bits(after.v)).toBe(bits(ref.state.v));
          }
          expect(Array.from(after.steps)).toEqual(Array.from(ref.state.steps));
          expect(bits(after.marks)).toBe(bits(ref.state.marks));
          expect(opt.info(t).logDecay).toBe(ref.logDecay);
        }
      });
    }
  }
});
