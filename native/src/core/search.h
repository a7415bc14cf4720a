// Exact top-k retrieval: a SIMD scan over every row with a bounded selection.
// Deterministic for a given SIMD level: scores are computed the same way whatever
// the thread count, and ties go to the lower id.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

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
  // Cosine only, optional: the n rows' squared norms exactly as the scan computes them
  // (kernels->dot(row, row, d)), from a RowNormCache; null: the scan computes them.
  const float* row_norm2 = nullptr;
};

// The squared norms of a tensor's rows for the exact cosine scan, kept between scans
// (a one-query scan otherwise computes all n of them again, as much arithmetic as its
// dot products). Valid for one (version, kernels, data, n, d): SparseTensor::version()
// changes on every write of the rows, so a norm made before a write is never used after
// it; any other key (another SIMD level, storage that moved or grew) refills it. The
// values are the scan's own (the same kernel on the same row), so a scan gives the same
// ids and scores with the cache as without it. Safe to call from several threads.
// False when the environment sets GHOST_TENSOR_NORM_CACHE=0 (read once): scans then
// compute every norm as before the cache (for A/B measurements).
bool row_norm_cache_enabled();

class RowNormCache {
 public:
  // The n norms, computed now (on up to `threads` threads) unless held for this key.
  std::shared_ptr<const std::vector<float>> get(uint64_t version, const Kernels& kernels, const float* data, size_t n,
                                                size_t d, size_t threads);
  // Times the norms were computed (tests: a scan after a write refills, one without does not).
  uint64_t fills() const;

 private:
  mutable std::mutex mutex_;
  uint64_t version_ = 0;
  const Kernels* kernels_ = nullptr;
  const float* data_ = nullptr;
  size_t n_ = 0, d_ = 0;
  uint64_t fills_ = 0;
  std::shared_ptr<const std::vector<float>> norms_;
};

// Runs fn(begin, end, chunk) for `chunks` contiguous ranges covering [0, n) on the
// calling thread and at most threads - 1 of the exact scan's persistent helper threads
// (the machine's cores less one); idle helpers claim chunks as they come, so a caller
// never waits for a helper busy elsewhere. The first exception thrown by a chunk is
// rethrown after every chunk ended. GHOST_TENSOR_SCAN_POOL=0: `threads` threads
// started for the call instead (for A/B measurements).
void scan_pool_run(size_t n, size_t chunks, size_t threads, const std::function<void(size_t, size_t, size_t)>& fn);

// Writes nq * k ids and scores, best first per query. For l2 the score is the
// squared distance (ascending); for ip and cosine the similarity (descending).
void exact_search(const ExactSearchArgs& args, uint32_t* out_ids, float* out_scores);

// The score of one (query, row) pair exactly as exact_search computes it, for tests.
float exact_score(const Kernels& kernels, Metric metric, const float* q, const float* r, size_t d);

}  // namespace gt
