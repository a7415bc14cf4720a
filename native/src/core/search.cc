#include "search.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <thread>
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel.h"
#include "topk.h"

namespace gt {
namespace {

constexpr size_t kRowBlockBytes = 128 * 1024;  // rows scanned per block: stays in L2
constexpr size_t kQueryGroup = 32;             // queries scored against one block

inline float cosine_from(float dot, float qn2, float rn2) {
  if (qn2 <= 0.0f || rn2 <= 0.0f) return 0.0f;
  return dot / (std::sqrt(qn2) * std::sqrt(rn2));
}

size_t row_block(size_t d) {
  return std::max<size_t>(16, kRowBlockBytes / (d * sizeof(float)));
}

// Scores queries [q0, q1) against rows [r0, r1), feeding heaps[q - q0].
void scan(const ExactSearchArgs& a, size_t q0, size_t q1, size_t r0, size_t r1,
          std::vector<TopK>& heaps) {
  const Kernels& K = *a.kernels;
  const size_t d = a.d, rb = row_block(d);
  std::vector<float> scores(kQueryGroup * rb);
  std::vector<float> qnorm2, rnorm2;
  if (a.metric == Metric::Cosine) {
    qnorm2.resize(q1 - q0);
    for (size_t q = q0; q < q1; ++q) qnorm2[q - q0] = K.dot(a.queries + q * d, a.queries + q * d, d);
    if (a.row_norm2 == nullptr) rnorm2.resize(rb);
  }
  for (size_t rs = r0; rs < r1; rs += rb) {
    const size_t rn = std::min(rb, r1 - rs);
    const float* R = a.data + rs * d;
    // The rows' squared norms: cached (the same kernel's values) or computed here.
    const float* rn2 = a.row_norm2 != nullptr ? a.row_norm2 + rs : rnorm2.data();
    if (a.metric == Metric::Cosine && a.row_norm2 == nullptr)
      for (size_t j = 0; j < rn; ++j) rnorm2[j] = K.dot(R + j * d, R + j * d, d);
    for (size_t qs = q0; qs < q1; qs += kQueryGroup) {
      const size_t qn = std::min(kQueryGroup, q1 - qs);
      const float* Q = a.queries + qs * d;
      if (a.metric == Metric::L2) K.l2_block(Q, qn, R, rn, d, scores.data(), rb);
      else K.dot_block(Q, qn, R, rn, d, scores.data(), rb);
      for (size_t i = 0; i < qn; ++i) {
        float* s = scores.data() + i * rb;
        if (a.metric == Metric::Cosine) {
          const float qq = qnorm2[qs + i - q0];
          for (size_t j = 0; j < rn; ++j) s[j] = cosine_from(s[j], qq, rn2[j]);
        }
        // Rows arrive in increasing id order for each heap (see TopK::push_run).
        heaps[qs + i - q0].push_run(s, rn, static_cast<uint32_t>(rs));
      }
    }
  }
}

// Persistent helper threads for the exact scan. A one-query scan of the demo's keys
// takes about 0.2 ms a thread; starting and joining a std::thread for it on every call
// (parallel_for) cost a thread creation, a stack mapping and the joins' wake-ups each
// time. A scan here is cut into chunks that the calling thread and any idle helper
// claim one at a time (an atomic counter), so a scan never waits for a helper that is
// busy with another scan: the caller takes the chunks nobody claimed. What a chunk
// computes does not depend on who runs it, so the results are those of parallel_for.
class ScanPool {
 public:
  static ScanPool& get() {
    // Leaked on purpose: its threads sleep for the life of the process (a static
    // destructor would have to join threads that the runtime may already have stopped).
    static ScanPool* pool = new ScanPool(default_threads() > 1 ? default_threads() - 1 : 0);
    return *pool;
  }

  // Runs fn(begin, end, chunk) for `chunks` contiguous ranges covering [0, n), on the
  // calling thread and at most threads - 1 idle helpers; returns once all have run. The
  // first exception thrown by a chunk is rethrown here after every chunk ended.
  void run(size_t n, size_t chunks, size_t threads, const std::function<void(size_t, size_t, size_t)>& fn) {
    chunks = std::max<size_t>(1, std::min(chunks, n));
    threads = std::max<size_t>(1, std::min(threads, chunks));
    const auto range = [&](size_t c) { fn(n * c / chunks, n * (c + 1) / chunks, c); };
    if (!enabled()) {
      // GHOST_TENSOR_SCAN_POOL=0: `threads` threads started per call, as before the pool,
      // each running a contiguous run of chunks.
      parallel_for(chunks, threads, [&](size_t c0, size_t c1, size_t) {
        for (size_t c = c0; c < c1; ++c) range(c);
      });
      return;
    }
    if (threads == 1 || helpers_ == 0) {
      for (size_t c = 0; c < chunks; ++c) range(c);
      return;
    }
    auto job = std::make_shared<Job>();
    job->n = n;
    job->chunks = chunks;
    job->max_workers = threads;
    job->fn = &fn;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(job);
    }
    const size_t wake = std::min(threads - 1, helpers_);
    if (wake == helpers_) wake_.notify_all();
    else
      for (size_t i = 0; i < wake; ++i) wake_.notify_one();
    work(*job);
    {
      // Chunks a helper claimed may still run: wait for them.
      std::unique_lock<std::mutex> lock(job->mutex);
      job->finished.wait(lock, [&] { return job->done == job->chunks; });
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = std::find(queue_.begin(), queue_.end(), job);
      if (it != queue_.end()) queue_.erase(it);
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  // GHOST_TENSOR_SCAN_POOL is not "0" (read once).
  static bool enabled() {
    static const bool on = [] {
      const char* v = std::getenv("GHOST_TENSOR_SCAN_POOL");
      return v == nullptr || std::string(v) != "0";
    }();
    return on;
  }

  struct Job {
    size_t n = 0, chunks = 0;
    size_t max_workers = 1;  // threads that may claim chunks, the caller included
    size_t workers = 1;      // the caller and the helpers that joined (under the pool's mutex_)
    const std::function<void(size_t, size_t, size_t)>* fn = nullptr;
    std::atomic<size_t> next{0};
    size_t done = 0;  // under mutex
    std::mutex mutex;
    std::condition_variable finished;
    std::exception_ptr error;  // under mutex
  };

  explicit ScanPool(size_t helpers) : helpers_(helpers) {
    for (size_t i = 0; i < helpers_; ++i) std::thread([this] { loop(); }).detach();
  }

  // Claims and runs chunks of `job` until none is left.
  static void work(Job& job) {
    for (;;) {
      const size_t c = job.next.fetch_add(1, std::memory_order_relaxed);
      if (c >= job.chunks) return;
      std::exception_ptr err;
      try {
        (*job.fn)(job.n * c / job.chunks, job.n * (c + 1) / job.chunks, c);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(job.mutex);
      if (err && !job.error) job.error = err;
      if (++job.done == job.chunks) job.finished.notify_all();
    }
  }

  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] {
          // Every chunk claimed, or as many threads on it as it allows: nothing for a helper.
          while (!queue_.empty() && (queue_.front()->next.load(std::memory_order_relaxed) >= queue_.front()->chunks ||
                                     queue_.front()->workers >= queue_.front()->max_workers))
            queue_.pop_front();
          return !queue_.empty();
        });
        job = queue_.front();
        ++job->workers;
      }
      work(*job);
    }
  }

  const size_t helpers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
};

}  // namespace

void scan_pool_run(size_t n, size_t chunks, size_t threads, const std::function<void(size_t, size_t, size_t)>& fn) {
  ScanPool::get().run(n, chunks, threads, fn);
}

namespace {

void write_out(const TopK& h, size_t k, uint32_t* ids, float* scores) {
  const std::vector<Hit> hits = h.sorted();
  for (size_t i = 0; i < k; ++i) {
    ids[i] = hits[i].id;
    scores[i] = hits[i].score;
  }
}

}  // namespace

bool row_norm_cache_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("GHOST_TENSOR_NORM_CACHE");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

std::shared_ptr<const std::vector<float>> RowNormCache::get(uint64_t version, const Kernels& K, const float* data,
                                                            size_t n, size_t d, size_t threads) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (norms_ && version_ == version && kernels_ == &K && data_ == data && n_ == n && d_ == d) return norms_;
  auto fresh = std::make_shared<std::vector<float>>(n);
  float* out = fresh->data();
  const size_t useful = static_cast<double>(n) * d < 4e6 ? 1 : std::max<size_t>(1, threads);
  parallel_for(n, useful, [&](size_t r0, size_t r1, size_t) {
    for (size_t r = r0; r < r1; ++r) out[r] = K.dot(data + r * d, data + r * d, d);
  });
  norms_ = std::move(fresh);
  version_ = version;
  kernels_ = &K;
  data_ = data;
  n_ = n;
  d_ = d;
  ++fills_;
  return norms_;
}

uint64_t RowNormCache::fills() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fills_;
}

float exact_score(const Kernels& K, Metric metric, const float* q, const float* r, size_t d) {
  float s;
  if (metric == Metric::L2) K.l2_block(q, 1, r, 1, d, &s, 1);
  else K.dot_block(q, 1, r, 1, d, &s, 1);
  if (metric == Metric::Cosine) s = cosine_from(s, K.dot(q, q, d), K.dot(r, r, d));
  return s;
}

void exact_search(const ExactSearchArgs& a, uint32_t* out_ids, float* out_scores) {
  const bool desc = higher_is_better(a.metric);
  const size_t threads = std::max<size_t>(1, a.threads);
  // Many queries: each thread owns a range of queries and scans every row.
  // Fewer than kRowSplitQueries a thread: each thread scans a range of rows for all
  // queries and the heaps merge, so every row is read (and its cosine norm computed) by
  // one thread, and the 4-query tiles of the block kernels stay full (2 queries a thread
  // scanned every row twice, one query at a time). The ids and scores are the same
  // either way: a pair's score does not depend on the grouping, and the merge keeps the
  // best k by score, ties to the lower id, as one heap does.
  // Small scans are not worth a thread start.
  constexpr size_t kRowSplitQueries = 32;
  const double work = static_cast<double>(a.n) * a.d * a.nq;
  const size_t useful = work < 2e5 ? 1 : threads;
  if (a.nq >= kRowSplitQueries * useful || useful == 1) {
    scan_pool_run(a.nq, useful, useful, [&](size_t q0, size_t q1, size_t) {
      for (size_t g0 = q0; g0 < q1; g0 += kQueryGroup * 8) {
        const size_t g1 = std::min(q1, g0 + kQueryGroup * 8);
        std::vector<TopK> heaps(g1 - g0, TopK(a.k, desc));
        scan(a, g0, g1, 0, a.n, heaps);
        for (size_t q = g0; q < g1; ++q) write_out(heaps[q - g0], a.k, out_ids + q * a.k, out_scores + q * a.k);
      }
    });
    return;
  }
  // Row split: more pieces than threads, so that a helper that starts late (or is busy
  // with another scan) leaves the calling thread more pieces instead of a wait.
  constexpr size_t kPiecesPerThread = 4;
  const size_t pieces = std::min(useful * kPiecesPerThread, std::max<size_t>(useful, a.n / 1024));
  std::vector<std::vector<TopK>> partial(pieces);
  scan_pool_run(a.n, pieces, useful, [&](size_t r0, size_t r1, size_t w) {
    partial[w].assign(a.nq, TopK(a.k, desc));
    scan(a, 0, a.nq, r0, r1, partial[w]);
  });
  for (size_t q = 0; q < a.nq; ++q) {
    TopK all(a.k, desc);
    for (auto& p : partial)
      if (!p.empty()) all.merge(p[q]);
    write_out(all, a.k, out_ids + q * a.k, out_scores + q * a.k);
  }
}

}  // namespace gt
