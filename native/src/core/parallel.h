// Splits [0, n) into contiguous ranges over worker threads. Small helper, no pool:
// callers use it for work that is large compared with a thread start (~20 us).
#pragma once
#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace gt {

// Worker threads to use by default: GHOST_TENSOR_THREADS if set (>= 1), else the
// hardware concurrency.
size_t default_threads();

// Calls fn(begin, end, worker) for disjoint ranges covering [0, n) on up to
// `threads` threads (the calling thread runs one range). The first exception thrown
// by any range is rethrown after all threads have joined.
template <typename Fn>
void parallel_for(size_t n, size_t threads, Fn&& fn) {
  threads = std::max<size_t>(1, std::min(threads, n));
  if (threads <= 1) {
    if (n > 0) fn(size_t{0}, n, size_t{0});
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](size_t w) {
    const size_t begin = n * w / threads, end = n * (w + 1) / threads;
    try {
      fn(begin, end, w);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (size_t w = 1; w < threads; ++w) pool.emplace_back(run, w);
  run(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace gt
