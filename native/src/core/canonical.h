// Canonical arithmetic v1 (docs/proof-format.md): the routines whose results a
// proof claims. They give the same bits as lib/verify/canonical.ts: f32 inputs widened to
// f64, every sum in f64 in a fixed order from +0 with no fused multiply-add (the
// build uses -ffp-contract=off), exp and log1p from + - * / and exact scaling by
// powers of two (no libm), sqrt (correctly rounded) allowed, ties to the lower id.
// Fast SIMD f32 stays for search and training; these run over the k revealed
// patterns only (and, for product keys, over the two small sub-key tables).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "metric.h"

namespace gt {
namespace canonical {

double exp(double x);
// log(1 + x) for x in (-1, 0]; NaN outside.
double log1p_neg(double x);
// b^t by squaring, low bit first.
double powi(double b, uint64_t t);

// First states of B inputs (B x d f32): widened, or x / |x| (zero stays zero).
std::vector<double> states(const float* x, size_t B, size_t d, bool normalize);
// The first state of one input x (d f32) into q (d values), as states() gives each.
void state(const float* x, size_t d, bool normalize, double* q);

// |q| = sqrt(sum_j q_j^2), the sum in j order from +0 (COSINE's norm of a state).
double norm(const double* q, size_t d);
// The similarity of one state q (nq = norm(q, d), read by COSINE only) with one row r,
// as scores() gives each pair.
double similarity(const double* q, double nq, const float* r, size_t d, Metric m);

// s[b*k + i] = similarity(q_b, row r) for B states and k rows each, where r is
// rows[(b*k + i) * d ...], or with `at`, rows[at[b*k + i] * d ...] (B*k positions, each
// below the caller's row count: a block's rows read in place, no B x k copy).
// IP: q.K; COSINE: q.K / (|q| |K|), 0 if either is zero; L2: -|q - K|^2. Four pairs at
// once (independent chains, each sum one term at a time in j order): similarity()'s bits.
std::vector<double> scores(const double* q, const float* rows, size_t B, size_t k, size_t d, Metric m,
                           const uint32_t* at = nullptr);

// s[i] = the dot of q with row i of t (n rows of d), each sum from +0 one term at a time in
// order (four rows at once: four independent chains, the same bits).
void dots(const double* q, const float* t, size_t n, size_t d, double* s);

// csoftmax in place: z_i = exp(z_i - max z) / (their sum, added in order), with exp().
void softmax_in_place(double* z, size_t k);

// out[b*w + j] = sum_i a_bi rows[(b*k + i) * w + j], a_b = softmax(beta * s_b); with `at`,
// row (b, i) is rows[at[b*k + i] * w ...] (as scores()).
std::vector<double> mix(const double* s, float beta, const float* rows, size_t B, size_t k, size_t w,
                        const uint32_t* at = nullptr);

// The rounding error of hi = a + b (Knuth's TwoSum, + and - only): a + b == hi + lo
// exactly, for finite a, b whose sum does not overflow.
inline double two_sum_lo(double a, double b, double hi) {
  const double bb = hi - a;
  return (a - (hi - bb)) + (b - bb);
}

// A product-key candidate: slot id and its score s1 + s2 as hi = fl(s1 + s2) and lo.
struct PairScore {
  double hi, lo;
  uint32_t id;
};
inline PairScore pair_score(double s1, double s2, uint32_t id) {
  const double hi = s1 + s2;
  return {hi, two_sum_lo(s1, s2, hi), id};
}
// The order of product-key slots (docs/product-keys.md): the exact sum s1 + s2
// descending (hi, then lo), ties to the lower slot id. Comparing hi alone is not
// enough: two different sums can round to the same f64, and the lower id would then
// beat a better slot that the per-table top lists had already ruled out.
inline bool pair_better(const PairScore& u, const PairScore& v) {
  if (u.hi != v.hi) return u.hi > v.hi;
  if (u.lo != v.lo) return u.lo > v.lo;
  return u.id < v.id;
}

// The pair order of two per-table top lists (each of kk, best first in the canonical
// order: score descending, ties to the lower row): every (x', c') != (x, c) with x' <= x
// and c' <= c is strictly better than (x, c) by pair_better (its exact sum is at least as
// large; when equal, both sub-scores are equal and the lists' tie order gives it the
// lower slot id). So (x, c) has at least (x + 1) (c + 1) - 1 better pairs, and
// best_pairs takes the best k best first from a frontier (docs/product-keys.md).

// A pair of the best-first walk: its score and its ranks in the two top lists.
struct PairAt {
  PairScore p;
  uint32_t x, c;
};

// The best k pairs of two top lists (s1, top1) and (s2, top2) of kk entries each, best
// first in the canonical order above: ids[t] = top1[x] * n + top2[c] and scores[t] = the
// rounded sum, best first by pair_better; 1 <= k <= kk * kk. A best-first walk: (x, c)
// is strictly worse than (x, c - 1) and (x - 1, c), so the best pair not yet taken is
// (x, c + 1) of a taken (x, c), or (x + 1, 0) of a taken (x, 0); the frontier (scratch:
// a heap, at most one pair per x) holds those, k pops and at most 2 k pushes. S is
// double (product_keys' canonical sub-scores) or float (the fast forward's,
// product_key_search: f32 to f64 is exact, so the same pair order).
template <class S>
void best_pairs(const S* s1, const uint32_t* top1, const S* s2, const uint32_t* top2, size_t kk, size_t n, size_t k,
                uint32_t* ids, double* scores, std::vector<PairAt>& frontier);

// Product-key selection for B states (d1 + d2 each) over tables t1 (n x d1), t2
// (n x d2): the exact top-k slots (i1 * n + i2) of all n^2 by pair_better; scores
// are the rounded sums hi.
//
// `fast` (default: the kernels of default_simd_level()) screens each table with f32
// scores first and computes the canonical f64 score only for the rows that a rigorous
// bound on the f32 error cannot rule out of the table's top-k (docs/product-keys.md,
// "Proving fast"); nullptr scores every row canonically (the reference). The result is
// the same bits either way. `canonical_rows`, when given, receives the number of table
// rows scored in f64 over all states and both tables. `tmax_bits`, when given, holds
// abs_max_bits() of t1 and t2 (the binding computes them as its finiteness check).
void product_keys(const double* q, const float* t1, const float* t2, size_t n, size_t d1, size_t d2, size_t B,
                  size_t k, uint32_t* ids, double* scores, size_t threads, const Kernels* fast = &kernels(),
                  size_t* canonical_rows = nullptr, const uint32_t* tmax_bits = nullptr);

// The exact top-k of all n keys (n x d) for B states under `m` (docs/proof-format.md,
// "Held keys"): the canonical similarity of every key (as scores() computes it),
// ranked by score descending, ties to the lower id; scores are those canonical values.
// What a verifier holding every key re-derives. `fast` screens with the f32 kernels
// first and scores canonically only the keys whose interval bound on the f32 error
// (docs/proof-format.md, "Held keys: proving fast") cannot rule out; nullptr scores every key
// (the reference). Same bits either way. `canonical_rows` receives the keys scored in
// f64 over all states. Keys and states must be finite (the binding checks).
void exact_topk(const double* q, const float* keys, size_t n, size_t d, size_t B, size_t k, Metric m, uint32_t* ids,
                double* scores, size_t threads, const Kernels* fast = &kernels(), size_t* canonical_rows = nullptr,
                const uint32_t* tmax_bits = nullptr);

// The largest |t[i]| as its f32 bit pattern without the sign (the integer order of
// these patterns is the order of the absolute values): >= 0x7f800000 exactly when
// some t[i] is infinite or NaN.
uint32_t abs_max_bits(const float* t, size_t len);

// A linear layer (lib/verify/canonical.ts clinear): per row of x (n x d_in), the m
// dots with W's rows in f64, the top kp kept (all when kp >= m, ties to the lower j),
// y = f32(s) without a bias, else f32(s + b) for a kept j and b_j for the others.
std::vector<float> linear(const float* x, size_t n, size_t d_in, const float* W, size_t m, size_t kp, const float* bias);

// RMSNorm (crmsnorm): per row, r = 1 / sqrt(sum x^2 / d + eps) in f64, y = f32((x r) g).
std::vector<float> rmsnorm(const float* x, size_t n, size_t d, const float* gain, float eps);

// The gate of a gated MLP (cglu): f32((g / (1 + exp(-g))) * u), exp canonical.
std::vector<float> glu(const float* gate, const float* up, size_t len);

// The sum of two layer outputs (cadd): one f32 addition per value.
std::vector<float> add(const float* a, const float* b, size_t len);

}  // namespace canonical
}  // namespace gt
