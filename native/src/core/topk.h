// Bounded top-k selection with a deterministic order: better score first, ties
// broken by the lower id. NaN scores rank below every number.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace gt {

struct Hit {
  float score;
  uint32_t id;
};

class TopK {
 public:
  TopK(size_t k, bool higher_is_better) : k_(k), desc_(higher_is_better) { heap_.reserve(k); }

  // True when a is strictly better than b (total order over (score, id)).
  bool better(const Hit& a, const Hit& b) const {
    if (a.score != b.score) return desc_ ? a.score > b.score : a.score < b.score;
    return a.id < b.id;
  }

  // Offers a candidate; it is kept if fewer than k are held or it beats the worst.
  void push(float score, uint32_t id) {
    if (std::isnan(score))
      score = desc_ ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
    const Hit h{score, id};
    auto worse_first = [this](const Hit& a, const Hit& b) { return better(a, b); };
    if (heap_.size() < k_) {
      heap_.push_back(h);
      std::push_heap(heap_.begin(), heap_.end(), worse_first);
    } else if (k_ > 0 && better(h, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), worse_first);
      heap_.back() = h;
      std::push_heap(heap_.begin(), heap_.end(), worse_first);
    }
  }

  // Offers scores[j] with id id0 + j for j < n, where every one of these ids is above
  // every id offered before (a scan in row order). Then a candidate whose score equals
  // the worst kept one loses the tie, so once k are held only a strictly better score
  // can enter: one compare per row (NaN compares false, and NaN would rank last anyway),
  // the same result as push() on each in turn.
  void push_run(const float* scores, size_t n, uint32_t id0) {
    size_t j = 0;
    for (; j < n && heap_.size() < k_; ++j) push(scores[j], id0 + static_cast<uint32_t>(j));
    if (j == n || k_ == 0) return;
    float worst = heap_.front().score;
    if (desc_) {
      for (; j < n; ++j)
        if (scores[j] > worst) {
          push(scores[j], id0 + static_cast<uint32_t>(j));
          worst = heap_.front().score;
        }
    } else {
      for (; j < n; ++j)
        if (scores[j] < worst) {
          push(scores[j], id0 + static_cast<uint32_t>(j));
          worst = heap_.front().score;
        }
    }
  }

  // Fast reject for scan loops: a candidate that is not better than this can be skipped.
  bool full() const { return heap_.size() == k_; }
  const Hit& worst() const { return heap_.front(); }

  void merge(const TopK& other) {
    for (const Hit& h : other.heap_) push(h.score, h.id);
  }

  // Best first.
  std::vector<Hit> sorted() const {
    std::vector<Hit> out(heap_);
    std::sort(out.begin(), out.end(), [this](const Hit& a, const Hit& b) { return better(a, b); });
    return out;
  }

 private:
  size_t k_;
  bool desc_;
  std::vector<Hit> heap_;  // heap whose front is the worst kept hit
};

}  // namespace gt
