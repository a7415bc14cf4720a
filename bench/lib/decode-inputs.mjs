/**
 * The decode benchmarks' shared inputs (bench/decode.mjs, bench/decode-profile.mjs) and
 * recall (also bench/decode-trained.mjs): the layer inputs whose keys the decoders index,
 * and the recall of a selection against the exact one.
 */
import { gaussian, rng } from './common.mjs';

/**
 * n rows of D values from a seed: 'random' (uniform in [-1, 1)), or low-rank (rank 16
 * plus noise of 0.1, a fixed basis): the keys' two kinds in docs/attention.md.
 */
export function decodeInputs(kind, n, seed, D) {
  const r = rng(seed), x = new Float32Array(n * D);
  if (kind === 'random') {
    for (let i = 0; i < x.length; i++) x[i] = 2 * r() - 1;
    return x;
  }
  const R = 16, ru = rng(99), U = new Float32Array(D * R), z = new Float32Array(R);
  for (let i = 0; i < U.length; i++) U[i] = gaussian(ru) / 4;
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < R; c++) z[c] = gaussian(r);
    for (let t = 0; t < D; t++) {
      let s = 0.1 * gaussian(r);
      for (let c = 0; c < R; c++) s += U[t * R + c] * z[c];
      x[i * D + t] = s;
    }
  }
  return x;
}

/** The share of the exact selection's ids (heads x k, per head) that `got` holds. */
export function recallOf(exact, got, heads, k) {
  let hit = 0, total = 0;
  for (let h = 0; h < heads; h++) {
    const want = new Set(exact.subarray(h * k, (h + 1) * k));
    for (const id of got.subarray(h * k, (h + 1) * k)) if (want.has(id)) hit++;
    total += want.size;
  }
  return hit / total;
}

/** The sketch decoders of a `--sketches` list, "bits/maxScored,..." (8/0: the certified int8 sketch; 4/192: 4-bit). */
export function parseSketches(spec) {
  return spec.split(',').map((s) => {
    const [bits, maxScored] = s.split('/').map(Number);
    return { bits, maxScored: maxScored ?? 0 };
  });
}
