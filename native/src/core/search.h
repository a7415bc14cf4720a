// Exact top-k retrieval: a SIMD scan over every row with a bounded selection.
// Deterministic for a given SIMD level: scores are computed the same way whatever
// the thread count, and ties go to the lower id.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"
#include "metric.h"

namespace gt {

struct ExactSearchArgs {
  const float* data = nullptr;  // n rows of d floats
  size_t n = 0;
  size_t d = 0;
  const float* queries = nullptr;  // nq rows of d floats
  size_t nq = 0;
  size_t k = 0;  // 1 <= k <= n (checked by the caller)
  Metric metric = Metric::IP;
  size_t threads = 1;
  const Kernels* kernels = nullptr;
};

// Writes nq * k ids and scores, best first per query. For l2 the score is the
// squared distance (ascending); for ip and cosine the similarity (descending).
void exact_search(const ExactSearchArgs& args, uint32_t* out_ids, float* out_scores);

// The score of one (query, row) pair exactly as exact_search computes it, for tests.
float exact_score(const Kernels& kernels, Metric metric, const float* q, const float* r, size_t d);

}  // namespace gt
