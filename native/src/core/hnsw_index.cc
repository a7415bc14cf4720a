#include "hnsw_index.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <queue>
#include <string>
#include <vector>

#if !defined(_WIN32)
#include <unistd.h>
#endif

#include "../../third_party/blake3/blake3.h"
#include "hnswlib_include.h"
#include "huge_pages.h"
#include "parallel.h"
#include "search.h"
#include "topk.h"

namespace gt {

// Our runtime-dispatched kernels as the hnswlib space: the level's own DISTFUNC-shaped
// wrappers (hnswlib's inner-product distance is 1 - dot; cosine uses normalised copies).
struct HnswIndex::Space : public hnswlib::SpaceInterface<float> {
  size_t dim;
  hnswlib::DISTFUNC<float> func;
  Space(size_t d, Metric m, const Kernels* k) : dim(d), func(m == Metric::L2 ? k->hnsw_l2 : k->hnsw_ip) {}
  size_t get_data_size() override { return dim * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return func; }
  void* get_dist_func_param() override { return &dim; }
};

namespace {
bool env_off(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "off") == 0;
}

// Transparent huge pages under the graph's base layer (vectors and level-0 links, 448
// bytes a row at d = 64): a search hops between rows at random, so with 4 KiB pages
// nearly every hop also misses the TLB. advise_huge_pages (huge_pages.h) advises the
// whole 2 MiB pages inside hnswlib's block; GHOST_TENSOR_HUGE_PAGES=off (read at each
// build, load or resize) leaves them out, to measure what they give (bench/hnsw-memory.mjs).

// The graph's memory settings, at each build, load or resize: huge pages under its base
// layer, and whether a search prefetches all of a node's unvisited neighbours before
// scoring them (vendored hnswalg.h, searchBaseLayerST; rows of at most 512 bytes only:
// on wider rows the extra prefetches cost more than they hide). GHOST_TENSOR_HNSW_PREFETCH=off
// turns the latter off, to measure it.
void advise_graph(hnswlib::HierarchicalNSW<float>& g) {
  advise_huge_pages(g.data_level0_memory_, g.max_elements_ * g.size_data_per_element_);
  g.gt_prefetch_all_ = !env_off("GHOST_TENSOR_HNSW_PREFETCH");
}

void check_params(const HnswParams& p) {
  if (p.M < 2 || p.M > 256) throw Error(ErrorCode::OutOfRange, "M must be in 2..256");
  if (p.ef_construction < 1 || p.ef_construction > 100000)
    throw Error(ErrorCode::OutOfRange, "efConstruction must be in 1..100000");
  if (!(p.neighbor_update_probability >= 0.0f && p.neighbor_update_probability <= 1.0f))
    throw Error(ErrorCode::OutOfRange, "neighborUpdateProbability must be in 0..1");
  if (p.relink_ef > 100000) throw Error(ErrorCode::OutOfRange, "relinkEf must be in 0..100000");
  if (!(p.drift_threshold >= 0.0f) || !std::isfinite(p.drift_threshold))
    throw Error(ErrorCode::OutOfRange, "driftThreshold must be a finite number >= 0");
}
}  // namespace

HnswIndex::HnswIndex(SparseTensor& tensor, const HnswParams& params, size_t threads)
    : tensor_(tensor), params_(params), kernels_(&kernels()) {
  check_params(params_);
  tensor_.check_all_rows();  // the build reads every row
  space_ = std::make_unique<Space>(tensor_.dim(), params_.metric, kernels_);
  const size_t n = tensor_.size();
  // Vectors on cache-line boundaries (vendored hnswalg.h, gt_align_rows): at d = 64 a
  // distance reads 4 lines instead of 5. GHOST_TENSOR_HNSW_ALIGN=off keeps upstream's
  // packed layout, to measure it (bench/hnsw-memory.mjs). A loaded graph keeps the layout
  // it was saved with.
  graph_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(space_.get(), std::max<size_t>(n, 1), params_.M,
                                                             params_.ef_construction, params_.seed, false,
                                                             !env_off("GHOST_TENSOR_HNSW_ALIGN"));
  advise_graph(*graph_);  // before addPoint first touches the pages
  graph_->setEf(1);  // the per-call ef is passed as the candidate count instead
  dirty_.assign(n, 0);
  parallel_for(n, n < 1000 ? 1 : threads, [&](size_t b, size_t e, size_t) {
    std::vector<float> v(tensor_.dim());
    for (size_t i = b; i < e; ++i) {
      graph_vector(static_cast<uint32_t>(i), v.data());
      graph_->addPoint(v.data(), static_cast<hnswlib::labeltype>(i));
    }
  });
  tensor_.add_listener(this);
}

namespace {

// The checksum file beside a saved graph (<path>.b3, 48 bytes): magic "GTHNSWB3",
// u64 little-endian length of the graph file, BLAKE3 of its bytes. hnswlib's format has
// no checksum of its own, and a damaged graph can send its search out of bounds.
constexpr char kHnswSumMagic[8] = {'G', 'T', 'H', 'N', 'S', 'W', 'B', '3'};

// Length and BLAKE3 of a file's bytes; false when it cannot be read.
bool file_digest(const std::string& path, uint64_t* length, uint8_t out[32]) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  blake3_hasher h;
  blake3_hasher_init(&h);
  std::vector<uint8_t> buf(size_t{1} << 20);
  uint64_t total = 0;
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    blake3_hasher_update(&h, buf.data(), got);
    total += got;
  }
  const bool ok = std::ferror(f) == 0;
  std::fclose(f);
  blake3_hasher_finalize(&h, out, 32);
  *length = total;
  return ok;
}

void write_synced(const std::string& path, const uint8_t* bytes, size_t n) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw StorageError(StorageReason::IO, "cannot write " + path);
  const bool ok = std::fwrite(bytes, 1, n, f) == n && std::fflush(f) == 0
#if !defined(_WIN32)
                  && ::fsync(::fileno(f)) == 0
#endif
      ;
  std::fclose(f);
  if (!ok) throw StorageError(StorageReason::IO, "writing " + path + " failed");
}

void check_graph_digest(const std::string& path) {
  uint8_t want[48];
  std::FILE* f = std::fopen((path + ".b3").c_str(), "rb");
  if (f == nullptr)
    throw StorageError(StorageReason::IndexChecksum, path + ".b3 is missing: the graph cannot be checked");
  const size_t got = std::fread(want, 1, sizeof want, f);
  const bool extra = std::fgetc(f) != EOF;
  std::fclose(f);
  if (got != sizeof want || extra || std::memcmp(want, kHnswSumMagic, 8) != 0)
    throw StorageError(StorageReason::IndexChecksum, path + ".b3 is not a graph checksum file");
  uint64_t length = 0, want_length = 0;
  for (int i = 0; i < 8; ++i) want_length |= static_cast<uint64_t>(want[8 + i]) << (8 * i);
  uint8_t digest[32];
  if (!file_digest(path, &length, digest))
    throw StorageError(StorageReason::IO, "cannot read the HNSW graph " + path);
  if (length != want_length || std::memcmp(digest, want + 16, 32) != 0)
    throw StorageError(StorageReason::IndexChecksum, "the HNSW graph " + path + " does not match its checksum (damaged)");
}

}  // namespace

HnswIndex::HnswIndex(SparseTensor& tensor, const HnswParams& params, const std::string& path)
    : tensor_(tensor), params_(params), kernels_(&kernels()) {
  check_params(params_);
  check_graph_digest(path);  // before hnswlib parses a byte of it
  space_ = std::make_unique<Space>(tensor_.dim(), params_.metric, kernels_);
  try {
    graph_ = std::make_unique<hnswlib::HierarchicalNSW<float>>(space_.get(), path, false,
                                                               std::max<size_t>(tensor_.size(), 1));
  } catch (const std::exception& e) {
    throw Error(ErrorCode::InvalidArgument, std::string("cannot load the HNSW graph from ") + path + ": " + e.what());
  }
  if (graph_->cur_element_count != tensor_.size() || graph_->data_size_ != tensor_.dim() * sizeof(float))
    throw Error(ErrorCode::InvalidArgument, "the saved HNSW graph does not match this tensor (rows or dim differ)");
  advise_graph(*graph_);  // already filled: khugepaged may collapse its pages later
  for (size_t i = 0; i < tensor_.size(); ++i)
    if (graph_->label_lookup_.find(i) == graph_->label_lookup_.end())
      throw Error(ErrorCode::InvalidArgument, "the saved HNSW graph lacks row " + std::to_string(i));
  graph_->setEf(1);
  dirty_.assign(tensor_.size(), 0);
  tensor_.add_listener(this);
}

HnswIndex::~HnswIndex() { tensor_.remove_listener(this); }

HnswStats HnswIndex::stats() const {
  std::shared_lock<std::shared_mutex> guard(lock_);
  HnswStats s;
  s.in_graph = graph_->cur_element_count;
  s.dirty = dirty_count_;
  s.refreshed = refreshed_;
  return s;
}

void HnswIndex::graph_vector(uint32_t id, float* out) const {
  const float* r = tensor_.row(id);
  const size_t d = tensor_.dim();
  if (params_.metric != Metric::Cosine) {
    std::copy(r, r + d, out);
    return;
  }
  const float n2 = kernels_->dot(r, r, d);
  const float inv = n2 > 0.0f ? 1.0f / std::sqrt(n2) : 0.0f;
  for (size_t j = 0; j < d; ++j) out[j] = r[j] * inv;
}

void HnswIndex::search(const float* query, size_t k, size_t ef, uint32_t* ids, float* scores) const {
  std::shared_lock<std::shared_mutex> guard(lock_);
  const size_t d = tensor_.dim();
  TopK top(k, higher_is_better(params_.metric));
  const size_t in_graph = graph_->cur_element_count;
  if (in_graph > 0) {
    std::vector<float> qn(query, query + d);
    if (params_.metric == Metric::Cosine) {
      const float n2 = kernels_->dot(query, query, d);
      const float inv = n2 > 0.0f ? 1.0f / std::sqrt(n2) : 0.0f;
      for (float& x : qn) x *= inv;
    }
    auto candidates = graph_->searchKnn(qn.data(), std::min(std::max(ef, k), in_graph));
    // The queue pops worst first. Only the best `rescore` candidates by graph distance
    // are re-scored on current values: reading every one of ef rows again costs a cache
    // miss each, and a clean row's graph copy is within drift_threshold of its value.
    const size_t rescore = rescore_count(k);
    while (candidates.size() > rescore) candidates.pop();
    while (!candidates.empty()) {
      const uint32_t id = static_cast<uint32_t>(candidates.top().second);
      candidates.pop();
      // Dirty rows are scored below from their current values, exactly once.
      if (id < dirty_.size() && !dirty_[id]) {
        tensor_.check_rows(&id, 1);  // a file-backed row is checked the first time it is read
        top.push(exact_score(*kernels_, params_.metric, query, tensor_.row(id), d), id);
      }
    }
  }
  for (uint32_t id : dirty_list_)
    if (dirty_[id]) top.push(exact_score(*kernels_, params_.metric, query, tensor_.row(id), d), id);
  const std::vector<Hit> hits = top.sorted();
  if (hits.size() < k) {
    // The graph returned fewer candidates than needed (hnswlib does not promise k):
    // answer from the exact index rather than read past the hits.
    tensor_.check_all_rows();
    ExactSearchArgs a;
    a.data = tensor_.data();
    a.n = tensor_.size();
    a.d = d;
    a.queries = query;
    a.nq = 1;
    a.k = k;
    a.metric = params_.metric;
    a.threads = 1;
    a.kernels = kernels_;
    exact_search(a, ids, scores);
    return;
  }
  for (size_t i = 0; i < k; ++i) {
    ids[i] = hits[i].id;
    scores[i] = hits[i].score;
  }
}

void HnswIndex::search_batch(const float* queries, size_t nq, size_t k, size_t ef, size_t threads, uint32_t* ids,
                             float* scores) const {
  parallel_for(nq, nq < 4 ? 1 : threads, [&](size_t b, size_t e, size_t) {
    for (size_t q = b; q < e; ++q) search(queries + q * tensor_.dim(), k, ef, ids + q * k, scores + q * k);
  });
}

bool HnswIndex::refreshing() const {
  if (!lock_.try_lock_shared()) return true;
  lock_.unlock_shared();
  return false;
}

size_t HnswIndex::refresh(size_t budget, size_t threads) {
  std::unique_lock<std::shared_mutex> guard(lock_);
  return refresh_locked(budget, threads);
}

size_t HnswIndex::refresh_locked(size_t budget, size_t threads) {
  std::vector<uint32_t> todo;
  size_t consumed = 0;
  for (; consumed < dirty_list_.size() && todo.size() < budget; ++consumed) {
    const uint32_t id = dirty_list_[consumed];
    if (dirty_[id]) todo.push_back(id);
  }
  if (todo.empty() && consumed == dirty_list_.size()) {
    dirty_list_.clear();
    return 0;
  }
  const size_t need = *std::max_element(todo.begin(), todo.end()) + 1;
  if (need > graph_->max_elements_) {
    graph_->resizeIndex(std::max(need, graph_->max_elements_ * 3 / 2));
    advise_graph(*graph_);  // realloc may have moved the base layer
  }
  // A row already in the graph gets its vector replaced and its own links repaired
  // (updatePoint); a new row is inserted.
  std::vector<hnswlib::tableint> internal(todo.size());
  std::vector<uint8_t> present(todo.size());
  for (size_t i = 0; i < todo.size(); ++i) {
    auto it = graph_->label_lookup_.find(todo[i]);
    present[i] = it != graph_->label_lookup_.end();
    if (present[i]) internal[i] = it->second;
  }
  parallel_for(todo.size(), todo.size() < 64 ? 1 : threads, [&](size_t b, size_t e, size_t) {
    std::vector<float> v(tensor_.dim());
    for (size_t i = b; i < e; ++i) {
      graph_vector(todo[i], v.data());
      if (present[i] && params_.relink == HnswParams::Relink::Repair) relink_row(internal[i], v.data());
      else if (present[i]) graph_->updatePoint(v.data(), internal[i], params_.neighbor_update_probability);
      else graph_->addPoint(v.data(), static_cast<hnswlib::labeltype>(todo[i]));
    }
  });
  for (uint32_t id : todo) dirty_[id] = 0;
  dirty_count_ -= todo.size();
  refreshed_ += todo.size();
  dirty_list_.erase(dirty_list_.begin(), dirty_list_.begin() + static_cast<std::ptrdiff_t>(consumed));
  return todo.size();
}

// Re-links a row that moved, as an insertion would link it, and repairs what hnswlib's
// updatePoint leaves behind (measured in bench/index-training.mjs):
// - hnswlib keeps at most M links of the row at layer 0 after an update (an insertion
//   starts with M, then gains back-links up to 2M from later insertions, which a moved
//   row no longer gets); here the heuristic keeps up to maxM0 (2M) at layer 0;
// - the row's old layer-0 neighbours keep pointing to it after it moved away: each one
//   that does, and is not a new neighbour, gets that slot back for the nearest of the
//   row's other old neighbours (near it, since they were near the row), when nearer.
// Locks one link list at a time, as hnswlib does, so refreshes of several rows can run
// on several threads.
void HnswIndex::relink_row(uint32_t internal_id, const float* v) {
  using Graph = hnswlib::HierarchicalNSW<float>;
  using Node = hnswlib::tableint;
  using Queue = std::priority_queue<std::pair<float, Node>, std::vector<std::pair<float, Node>>, Graph::CompareByFirst>;
  Graph& g = *graph_;
  const Node id = internal_id;
  const int elem_level = g.element_levels_[id];
  const std::vector<Node> old0 = g.getConnectionsWithLock(id, 0);
  std::memcpy(g.getDataByInternalId(id), v, g.data_size_);
  if (g.cur_element_count <= 1) return;
  auto dist = [&](const void* a, Node b) { return g.fstdistfunc_(a, g.getDataByInternalId(b), g.dist_func_param_); };

  Node cur = g.enterpoint_node_;
  const int max_level = g.maxlevel_;
  if (elem_level < max_level) {
    float cur_dist = dist(v, cur);
    for (int level = max_level; level > elem_level; --level) {
      bool changed = true;
      while (changed) {
        changed = false;
        std::unique_lock<std::mutex> lk(g.link_list_locks_[cur]);
        unsigned* data = g.get_linklist_at_level(cur, level);
        const int size = g.getListCount(data);
        const Node* list = reinterpret_cast<const Node*>(data + 1);
        for (int i = 0; i < size; ++i) {
          const float d = dist(v, list[i]);
          if (d < cur_dist) {
            cur_dist = d;
            cur = list[i];
            changed = true;
          }
        }
      }
    }
  }

  std::vector<Node> new0;
  for (int level = std::min(elem_level, max_level); level >= 0; --level) {
    Queue found = g.searchBaseLayer(cur, v, level, params_.relink_ef);
    Queue cand;
    for (; !found.empty(); found.pop())
      if (found.top().second != id) cand.push(found.top());
    if (cand.empty()) continue;
    const size_t cap = level == 0 ? g.maxM0_ : g.maxM_;
    g.getNeighborsByHeuristic2(cand, cap);
    std::vector<Node> sel;
    for (; !cand.empty(); cand.pop()) sel.push_back(cand.top().second);
    cur = sel.back();  // the nearest (the queue pops farthest first)
    {
      std::unique_lock<std::mutex> lk(g.link_list_locks_[id]);
      unsigned* ll = g.get_linklist_at_level(id, level);
      g.setListCount(ll, static_cast<unsigned short>(sel.size()));
      std::copy(sel.begin(), sel.end(), reinterpret_cast<Node*>(ll + 1));
    }
    // Back-links, as hnswlib's insertion makes them (the heuristic when a list is full).
    for (Node n : sel) {
      std::unique_lock<std::mutex> lk(g.link_list_locks_[n]);
      unsigned* ll = g.get_linklist_at_level(n, level);
      const size_t size = g.getListCount(ll);
      Node* list = reinterpret_cast<Node*>(ll + 1);
      if (std::find(list, list + size, id) != list + size) continue;
      if (size < cap) {
        list[size] = id;
        g.setListCount(ll, static_cast<unsigned short>(size + 1));
        continue;
      }
      const void* nd = g.getDataByInternalId(n);
      Queue keep;
      keep.emplace(dist(nd, id), id);
      for (size_t j = 0; j < size; ++j) keep.emplace(dist(nd, list[j]), list[j]);
      g.getNeighborsByHeuristic2(keep, cap);
      size_t j = 0;
      for (; !keep.empty(); keep.pop()) list[j++] = keep.top().second;
      g.setListCount(ll, static_cast<unsigned short>(j));
    }
    if (level == 0) new0 = std::move(sel);
  }

  // Old layer-0 neighbours that still point to the moved row.
  for (Node x : old0) {
    if (x == id || std::find(new0.begin(), new0.end(), x) != new0.end()) continue;
    std::unique_lock<std::mutex> lk(g.link_list_locks_[x]);
    unsigned* ll = g.get_linklist_at_level(x, 0);
    const size_t size = g.getListCount(ll);
    Node* list = reinterpret_cast<Node*>(ll + 1);
    Node* slot = std::find(list, list + size, id);
    if (slot == list + size) continue;
    const void* xd = g.getDataByInternalId(x);
    float best = dist(xd, id);
    Node pick = id;
    for (Node c : old0) {
      if (c == x || c == id || std::find(list, list + size, c) != list + size) continue;
      const float d = dist(xd, c);
      if (d < best) {
        best = d;
        pick = c;
      }
    }
    *slot = pick;
  }
}

void HnswIndex::save(const std::string& path, size_t threads) {
  std::unique_lock<std::shared_mutex> guard(lock_);
  while (dirty_count_ > 0) refresh_locked(dirty_count_, threads);
  // hnswlib's saveIndex does not report I/O errors: write a temporary file, check it
  // is complete, then rename it over `path` (a crash leaves the old file intact).
  const std::string tmp = path + ".tmp";
  {
    std::ofstream probe(tmp, std::ios::binary);
    if (!probe) throw Error(ErrorCode::InvalidArgument, "cannot write " + tmp);
  }
  graph_->saveIndex(tmp);
  std::ifstream check(tmp, std::ios::binary | std::ios::ate);
  const auto size = check ? static_cast<long long>(check.tellg()) : -1;
  if (size <= 0) {
    std::remove(tmp.c_str());
    throw Error(ErrorCode::InvalidArgument, "writing the HNSW graph to " + tmp + " failed");
  }
  check.close();
  // The checksum file first (as a temporary), then both renamed: a crash in between
  // leaves a graph and a checksum that disagree, which loading refuses (never serves).
  uint8_t sum[48] = {};
  std::memcpy(sum, kHnswSumMagic, 8);
  uint64_t length = 0;
  if (!file_digest(tmp, &length, sum + 16)) {
    std::remove(tmp.c_str());
    throw Error(ErrorCode::InvalidArgument, "cannot read back " + tmp);
  }
  for (int i = 0; i < 8; ++i) sum[8 + i] = static_cast<uint8_t>(length >> (8 * i));
  const std::string sum_tmp = path + ".b3.tmp";
  try {
    write_synced(sum_tmp, sum, sizeof sum);
  } catch (...) {
    std::remove(tmp.c_str());
    std::remove(sum_tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    std::remove(sum_tmp.c_str());
    throw Error(ErrorCode::InvalidArgument, "cannot rename " + tmp + " to " + path);
  }
  if (std::rename(sum_tmp.c_str(), (path + ".b3").c_str()) != 0) {
    std::remove(sum_tmp.c_str());
    throw Error(ErrorCode::InvalidArgument, "cannot rename " + sum_tmp + " to " + path + ".b3");
  }
}

size_t HnswIndex::dirty_limit() const {
  return params_.max_dirty > 0 ? params_.max_dirty : std::max<size_t>(256, tensor_.size() / 50);
}

void HnswIndex::mark_dirty(uint32_t id) {
  if (dirty_[id]) return;
  dirty_[id] = 1;
  dirty_list_.push_back(id);
  ++dirty_count_;
}

void HnswIndex::on_rows_changed(const uint32_t* ids, size_t count) {
  std::unique_lock<std::shared_mutex> guard(lock_);
  const size_t d = tensor_.dim();
  std::vector<float> v(d);
  const float t2 = params_.drift_threshold * params_.drift_threshold;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t id = ids[i];
    if (dirty_[id]) continue;
    auto it = graph_->label_lookup_.find(id);
    if (it == graph_->label_lookup_.end()) {
      mark_dirty(id);
      continue;
    }
    const float* copy = reinterpret_cast<const float*>(graph_->getDataByInternalId(it->second));
    graph_vector(id, v.data());
    const float moved = kernels_->l2sq(v.data(), copy, d);
    const float size2 = kernels_->dot(copy, copy, d);
    if (moved > t2 * std::max(size2, 1e-30f)) mark_dirty(id);
  }
  if (dirty_count_ > dirty_limit()) refresh_locked(dirty_count_ - dirty_limit() / 2, default_threads());
}

void HnswIndex::on_rows_appended(size_t first, size_t count) {
  std::unique_lock<std::shared_mutex> guard(lock_);
  dirty_.resize(first + count, 0);
  for (size_t i = 0; i < count; ++i) mark_dirty(static_cast<uint32_t>(first + i));
  if (dirty_count_ > dirty_limit()) refresh_locked(dirty_count_ - dirty_limit() / 2, default_threads());
}

}  // namespace gt
