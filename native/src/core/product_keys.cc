#include "product_keys.h"

#include <algorithm>
#include <vector>

#include "canonical.h"
#include "parallel.h"
#include "search.h"

namespace gt {

void product_key_search(const ProductKeyArgs& a, uint32_t* ids, double* scores) {
  const size_t kk = std::min(a.k, a.n), d = a.d1 + a.d2;
  // Split the queries into their halves and take each table's exact top-kk.
  std::vector<float> q1(a.nq * a.d1), q2(a.nq * a.d2);
  for (size_t q = 0; q < a.nq; ++q) {
    std::copy(a.queries + q * d, a.queries + q * d + a.d1, q1.begin() + q * a.d1);
    std::copy(a.queries + q * d + a.d1, a.queries + (q + 1) * d, q2.begin() + q * a.d2);
  }
  std::vector<uint32_t> i1(a.nq * kk), i2(a.nq * kk);
  std::vector<float> s1(a.nq * kk), s2(a.nq * kk);
  ExactSearchArgs e;
  e.n = a.n;
  e.nq = a.nq;
  e.k = kk;
  e.metric = Metric::IP;
  e.threads = a.threads;
  e.kernels = a.kernels;
  e.data = a.K1;
  e.d = a.d1;
  e.queries = q1.data();
  exact_search(e, i1.data(), s1.data());
  e.data = a.K2;
  e.d = a.d2;
  e.queries = q2.data();
  exact_search(e, i2.data(), s2.data());
  // Each table's list is best first, ties to the lower row (exact_search's order), so
  // the pair (x, y) of list ranks has at least (x + 1)(y + 1) - 1 pairs better than it by
  // pair_better (canonical.h): only pairs with (x + 1)(y + 1) <= k can be among the best
  // k, about k (1 + ln k) of them (143 for k = 32) instead of kk^2 (1,024).
  parallel_for(a.nq, a.nq < 16 ? 1 : a.threads, [&](size_t b, size_t end, size_t) {
    std::vector<canonical::PairScore> c(kk * kk);
    for (size_t q = b; q < end; ++q) {
      const size_t o = q * kk;
      size_t m = 0;
      for (size_t x = 0; x < kk; ++x)
        for (size_t y = 0, ymax = std::min(kk, a.k / (x + 1)); y < ymax; ++y)
          c[m++] = canonical::pair_score(static_cast<double>(s1[o + x]), static_cast<double>(s2[o + y]),
                                         static_cast<uint32_t>(static_cast<uint64_t>(i1[o + x]) * a.n + i2[o + y]));
      std::partial_sort(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(a.k), c.begin() + static_cast<std::ptrdiff_t>(m),
                        canonical::pair_better);
      for (size_t t = 0; t < a.k; ++t) {
        ids[q * a.k + t] = c[t].id;
        scores[q * a.k + t] = c[t].hi;
      }
    }
  });
}

}  // namespace gt
