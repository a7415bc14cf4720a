// HNSW index over a SparseTensor (vendored hnswlib graph, our SIMD kernels as its
// distance). Stays useful while training moves the patterns:
//
// - The graph navigates on its own copies of the rows. The best rescore_count(k)
//   candidates by graph distance (of ef) are re-scored on the rows' current values
//   with the same scorer as the exact index, so a returned score is never stale.
// - A write measures each changed row's drift from its graph copy (MONGOOSE's
//   trigger): ||current - copy|| / ||copy|| above `drift_threshold` marks the row
//   dirty. Appended rows start dirty (not yet in the graph).
// - Dirty rows are scanned exactly at query time (so none is ever missed) and
//   re-linked into the graph by refresh(budget): explicitly, on a schedule the
//   caller chooses (SLIDE's rehash schedule), or automatically when more than
//   `max_dirty` rows are dirty, which bounds the exact-scan cost of a query.
//
// Concurrency: searches take a shared lock; refresh takes it exclusively. Tensor
// writes must not run concurrently with either (the Node binding refuses writes
// while any asynchronous work on the tensor runs).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "kernels.h"
#include "metric.h"
#include "sparse_tensor.h"

namespace hnswlib {
template <typename T>
class HierarchicalNSW;
}

namespace gt {

struct HnswParams {
  Metric metric = Metric::L2;
  size_t M = 16;
  size_t ef_construction = 200;
  size_t seed = 100;
  float drift_threshold = 0.1f;  // relative L2 drift that marks a row dirty (chosen in bench/index-training.mjs)
  size_t max_dirty = 0;           // 0: max(256, N / 50), recomputed as N grows
  // hnswlib's updatePoint also rebuilds the neighbour lists of each one-hop neighbour
  // with this probability; 1.0 (hnswlib's default) costs ~30x an insertion here.
  float neighbor_update_probability = 0.0f;
  // How a refresh re-links a row already in the graph:
  //  Repair  (default) our re-link: the row's own lists get up to 2M links at layer 0
  //          (hnswlib's updatePoint keeps only M there, so re-linked rows lose half their
  //          out-degree), and each old neighbour that still points to the row, now farther
  //          away, gets that slot back for the nearest of the row's old neighbours.
  //  Hnswlib hnswlib's updatePoint with neighbor_update_probability.
  enum class Relink { Repair, Hnswlib };
  Relink relink = Relink::Repair;
  // Repair: candidates searched per layer to re-link a moved row (hnswlib's insertion
  // uses ef_construction). A moved row's new neighbourhood is near its old one, and 64
  // kept recall@10 above a fresh build's at 2-3x less cost per row than 200
  // (bench/index-training.mjs, docs/retrieval.md). 0: ef_construction.
  size_t relink_ef = 64;
};

// How many of the graph's ef candidates a search re-scores on current values:
// 2k, at least k + 16. Graph distances of clean rows are within the drift threshold
// of their current values, so the true top k lie among the best few candidates.
inline size_t rescore_count(size_t k) { return k + (k > 16 ? k : 16); }

struct HnswStats {
  size_t in_graph = 0;  // rows linked in the graph
  size_t dirty = 0;     // rows scanned exactly until refreshed
  size_t refreshed = 0; // rows re-linked since the build
};

class HnswIndex : public WriteListener {
 public:
  // Builds the graph over every current row on up to `threads` threads and starts
  // listening to the tensor's writes.
  HnswIndex(SparseTensor& tensor, const HnswParams& params, size_t threads);
  // Loads a graph saved by save(); it must cover exactly the tensor's rows.
  HnswIndex(SparseTensor& tensor, const HnswParams& params, const std::string& path);
  ~HnswIndex() override;
  HnswIndex(const HnswIndex&) = delete;
  HnswIndex& operator=(const HnswIndex&) = delete;

  const HnswParams& params() const { return params_; }
  HnswStats stats() const;

  // Top-k of one query (length dim) by the index metric; ef >= k candidates from the
  // graph. Thread-safe with other searches.
  void search(const float* query, size_t k, size_t ef, uint32_t* ids, float* scores) const;
  // Many queries over `threads` threads.
  void search_batch(const float* queries, size_t nq, size_t k, size_t ef, size_t threads, uint32_t* ids,
                    float* scores) const;

  // Re-links up to `budget` dirty rows (oldest first) on up to `threads` threads;
  // returns how many. Exclusive: waits for running searches.
  size_t refresh(size_t budget, size_t threads);

  // Refreshes every dirty row, then writes the graph to `path`.
  void save(const std::string& path, size_t threads);

  // Non-blocking check used by synchronous callers: true when a refresh holds the lock.
  bool refreshing() const;

  void on_rows_changed(const uint32_t* ids, size_t count) override;
  void on_rows_appended(size_t first, size_t count) override;

 private:
  struct Space;
  void mark_dirty(uint32_t id);
  size_t dirty_limit() const;
  // The row as the graph stores it (normalised for cosine).
  void graph_vector(uint32_t id, float* out) const;
  size_t refresh_locked(size_t budget, size_t threads);
  // Re-links row `internal` (already in the graph) at its new graph vector `v` (Repair mode).
  void relink_row(uint32_t internal, const float* v);

  SparseTensor& tensor_;
  HnswParams params_;
  const Kernels* kernels_;
  std::unique_ptr<Space> space_;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> graph_;
  std::vector<uint8_t> dirty_;
  std::vector<uint32_t> dirty_list_;  // insertion order; entries may be stale (flag cleared)
  size_t dirty_count_ = 0;
  size_t refreshed_ = 0;
  mutable std::shared_mutex lock_;
};

}  // namespace gt
