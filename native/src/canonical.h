// Canonical arithmetic v1 (docs/proof-format.md): the routines whose results a
// proof claims. They give the same bits as lib/canonical.ts: f32 inputs widened to
// f64, every sum in f64 in a fixed order from +0 with no fused multiply-add (the
// build uses -ffp-contract=off), exp and log1p from + - * / and exact scaling by
// powers of two (no libm), sqrt (correctly rounded) allowed, ties to the lower id.
// Fast SIMD f32 stays for search and training; these run over the k revealed
// patterns only (and, for product keys, over the two small sub-key tables).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

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

// s[b*k + i] = similarity(q_b, rows[(b*k + i) * d ...]) for B states and k rows each.
// IP: q.K; COSINE: q.K / (|q| |K|), 0 if either is zero; L2: -|q - K|^2.
std::vector<double> scores(const double* q, const float* rows, size_t B, size_t k, size_t d, Metric m);

// out[b*w + j] = sum_i a_bi rows[(b*k + i) * w + j], a_b = softmax(beta * s_b).
std::vector<double> mix(const double* s, float beta, const float* rows, size_t B, size_t k, size_t w);

// Product-key selection for B states (d1 + d2 each) over tables t1 (n x d1), t2
// (n x d2): the exact top-k slots (i1 * n + i2) by s1 + s2, ties to the lower slot.
void product_keys(const double* q, const float* t1, const float* t2, size_t n, size_t d1, size_t d2, size_t B,
                  size_t k, uint32_t* ids, double* scores, size_t threads);

}  // namespace canonical
}  // namespace gt
