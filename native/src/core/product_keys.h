// Product-key retrieval (Lample et al. 2019): slot i * n + j has the key
// concat(K1[i], K2[j]) and the score s1[i] + s2[j] (inner products with the two halves
// of the query). Exact top-k in O(n d + k^2) per query: the top min(k, n) of each
// table (exact index), then the best k of their k1 x k2 sums (the f32 sub-scores
// summed in double), ordered by canonical::pair_better: the exact sum, then the lower
// slot id. Bit-identical to the TypeScript combineProductKeys.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace gt {

struct ProductKeyArgs {
  const float* K1 = nullptr;  // n x d1
  const float* K2 = nullptr;  // n x d2
  size_t n = 0, d1 = 0, d2 = 0;
  const float* queries = nullptr;  // nq x (d1 + d2)
  size_t nq = 0;
  size_t k = 0;  // 1 <= k <= n * n
  size_t threads = 1;
  const Kernels* kernels = nullptr;
};

void product_key_search(const ProductKeyArgs& a, uint32_t* ids, double* scores);

}  // namespace gt
