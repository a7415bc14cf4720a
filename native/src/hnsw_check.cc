#include "hnsw_check.h"

// hnswlib is third-party code: keep its warnings out of ours.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include "../third_party/hnswlib/hnswlib.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace gt {

uint32_t hnsw_nearest_l2(const float* rows, size_t n, size_t d, const float* query) {
  hnswlib::L2Space space(d);
  hnswlib::HierarchicalNSW<float> index(&space, n, 16, 200, 42);
  for (size_t i = 0; i < n; ++i) index.addPoint(rows + i * d, static_cast<hnswlib::labeltype>(i));
  index.setEf(64);
  auto result = index.searchKnn(query, 1);
  return static_cast<uint32_t>(result.top().second);
}

}  // namespace gt
