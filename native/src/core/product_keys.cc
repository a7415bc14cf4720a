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
  // Each table's list is best first, ties to the lower row (exact_search's order): the
  // pairs by the proof's best-first walk (canonical::best_pairs; the pair order holds for
  // the f32 sub-scores summed exactly), k pops instead of ranking all kk^2 pairs.
  parallel_for(a.nq, a.nq < 16 ? 1 : a.threads, [&](size_t b, size_t end, size_t) {
    std::vector<canonical::PairAt> frontier;
    frontier.reserve(kk + 1);
    for (size_t q = b; q < end; ++q)
      canonical::best_pairs(s1.data() + q * kk, i1.data() + q * kk, s2.data() + q * kk, i2.data() + q * kk, kk, a.n,
                            a.k, ids + q * a.k, scores + q * a.k, frontier);
  });
}

}  // namespace gt
