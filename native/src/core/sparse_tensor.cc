#include "sparse_tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <unordered_map>

#include "huge_pages.h"
#include "search.h"

namespace gt {

namespace {

// Process-wide, so no two states of any two tensors share a version (a tensor made at
// the address of a freed one, over the same memory, still gets a new one).
std::atomic<uint64_t> g_next_version{1};
uint64_t next_version() { return g_next_version.fetch_add(1, std::memory_order_relaxed); }

std::string fmt_id(const char* what, size_t index, uint32_t id, size_t n) {
  return std::string(what) + "[" + std::to_string(index) + "] = " + std::to_string(id) +
         " is out of range for a tensor of " + std::to_string(n) + " patterns";
}
}  // namespace

size_t first_non_finite(const float* p, size_t n) {
  // Blocks of 64 tested without a branch per value (the loop vectorises): a float is not
  // finite iff its exponent bits are all ones. The block holding one is then scanned.
  constexpr size_t kBlock = 64;
  constexpr uint32_t kExp = 0x7f800000u;
  size_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    uint32_t bits[kBlock];
    std::memcpy(bits, p + i, sizeof bits);
    uint32_t bad = 0;
    for (size_t j = 0; j < kBlock; ++j) bad |= static_cast<uint32_t>((bits[j] & kExp) == kExp);
    if (bad != 0) break;
  }
  for (; i < n; ++i)
    if (!std::isfinite(p[i])) return i;
  return n;
}

std::shared_ptr<Storage> Storage::allocate(size_t rows, size_t dim) {
  std::shared_ptr<Storage> s(new Storage());
  s->bytes_ = std::max<size_t>(rows * dim * sizeof(float), 64);
  s->data_ = static_cast<float*>(huge_alloc(s->bytes_, true));
  s->capacity_rows_ = rows;
  s->owned_ = true;
  return s;
}

std::shared_ptr<Storage> Storage::adopt(float* data, size_t rows, std::function<void()> release) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = data;
  s->capacity_rows_ = rows;
  s->owned_ = false;
  s->release_ = std::move(release);
  return s;
}

std::shared_ptr<Storage> Storage::fixed(float* data, size_t rows, std::function<void()> release) {
  std::shared_ptr<Storage> s = adopt(data, rows, std::move(release));
  s->fixed_ = true;
  return s;
}

Storage::~Storage() {
  if (owned_) huge_free(data_, bytes_);
  if (release_) release_();
}

SparseTensor::SparseTensor(size_t dim, size_t capacity_rows)
    : dim_(dim), version_(next_version()), norms_(std::make_shared<RowNormCache>()) {
  if (dim == 0 || dim > kMaxDim)
    throw Error(ErrorCode::OutOfRange, "dim must be in 1.." + std::to_string(kMaxDim) + ", got " +
                                           std::to_string(dim));
  if (capacity_rows > kMaxRows)
    throw Error(ErrorCode::OutOfRange, "capacity exceeds " + std::to_string(kMaxRows) + " patterns");
  storage_ = Storage::allocate(capacity_rows, dim);
}

SparseTensor::SparseTensor(size_t dim, size_t rows, std::shared_ptr<Storage> storage, bool check_finite)
    : dim_(dim), rows_(rows), storage_(std::move(storage)), version_(next_version()),
      norms_(std::make_shared<RowNormCache>()) {
  if (dim == 0 || dim > kMaxDim)
    throw Error(ErrorCode::OutOfRange, "dim must be in 1.." + std::to_string(kMaxDim));
  if (rows > kMaxRows || rows > storage_->capacity_rows())
    throw Error(ErrorCode::OutOfRange, "rows exceed the storage or the limit of 2^32-1 patterns");
  if (!check_finite) return;
  const size_t bad = first_non_finite(storage_->data(), rows * dim);
  if (bad != rows * dim)
    throw Error(ErrorCode::NonFinite, "data[" + std::to_string(bad) + "] is not finite");
}

void SparseTensor::reserve(size_t rows) {
  if (rows <= capacity()) return;
  if (storage_->is_fixed())
    throw Error(ErrorCode::Unsupported, "a file-backed tensor has a fixed number of rows (" +
                                            std::to_string(capacity()) + "); it cannot grow");
  if (rows > kMaxRows)
    throw Error(ErrorCode::OutOfRange, "capacity exceeds " + std::to_string(kMaxRows) + " patterns");
  auto fresh = Storage::allocate(rows, dim_);
  if (rows_ > 0) std::memcpy(fresh->data(), storage_->data(), rows_ * dim_ * sizeof(float));
  bump_version();
  storage_ = std::move(fresh);
}

void SparseTensor::bump_version() { version_ = next_version(); }

void SparseTensor::check_ids(const uint32_t* ids, size_t count, const char* what) const {
  for (size_t i = 0; i < count; ++i)
    if (ids[i] >= rows_) throw Error(ErrorCode::OutOfRange, fmt_id(what, i, ids[i], rows_));
}

void SparseTensor::gather(const uint32_t* ids, size_t count, float* out) const {
  check_ids(ids, count, "ids");
  check_rows(ids, count);
  for (size_t i = 0; i < count; ++i) std::memcpy(out + i * dim_, row(ids[i]), dim_ * sizeof(float));
}

void SparseTensor::remove_listener(WriteListener* listener) {
  listeners_.erase(std::remove(listeners_.begin(), listeners_.end(), listener), listeners_.end());
}

void SparseTensor::notify_changed(std::vector<uint32_t>& ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (WriteListener* l : listeners_) l->on_rows_changed(ids.data(), ids.size());
}

void SparseTensor::apply_write(const WriteBatch& b) {
  const size_t d = dim_;
  if (b.count > 0 && b.values == nullptr)
    throw Error(ErrorCode::InvalidArgument, "values are missing");
  const size_t bad = first_non_finite(b.values, b.count * d);
  if (bad != b.count * d) {
    const char* what = b.kind == WriteKind::Add ? "deltas" : "values";
    throw Error(ErrorCode::NonFinite, std::string(what) + "[" + std::to_string(bad) + "] is not finite");
  }

  if (b.kind == WriteKind::Append) {
    if (b.count == 0) return;
    if (b.count > kMaxRows - rows_)
      throw Error(ErrorCode::OutOfRange, "append would exceed 2^32-1 patterns");
    if (rows_ + b.count > capacity()) {
      // Geometric growth keeps a sequence of appends amortised O(1) per row.
      const size_t want = std::max(rows_ + b.count, capacity() + capacity() / 2 + 16);
      reserve(std::min(want, kMaxRows));
    }
    const size_t first = rows_;
    bump_version();
    std::memcpy(storage_->data() + first * d, b.values, b.count * d * sizeof(float));
    rows_ += b.count;
    for (WriteListener* l : listeners_) l->on_rows_appended(first, b.count);
    return;
  }

  check_ids(b.ids, b.count, "ids");
  std::vector<uint32_t> touched(b.ids, b.ids + b.count);
  if (b.kind == WriteKind::Set) {
    std::sort(touched.begin(), touched.end());
    auto dup = std::adjacent_find(touched.begin(), touched.end());
    if (dup != touched.end())
      throw Error(ErrorCode::InvalidArgument,
                  "ids repeats id " + std::to_string(*dup) + " (a set writes each row once)");
    // A set reads no old value, but the tree rehashes each row's path from its stored
    // siblings: those must be checked before the new root is computed over them.
    check_rows(touched.data(), touched.size());
    bump_version();
    for (size_t i = 0; i < b.count; ++i)
      std::memcpy(storage_->data() + size_t{b.ids[i]} * d, b.values + i * d, d * sizeof(float));
    notify_changed(touched);
    return;
  }

  // Add: accumulate in order into scratch copies (repeated ids sum), check that every
  // result is finite, then commit; a failing batch leaves the tensor untouched.
  check_rows(b.ids, b.count);
  std::unordered_map<uint32_t, size_t> slot;
  std::vector<float> scratch;
  slot.reserve(b.count);
  for (size_t i = 0; i < b.count; ++i) {
    auto [it, fresh] = slot.emplace(b.ids[i], scratch.size() / d);
    if (fresh) scratch.insert(scratch.end(), row(b.ids[i]), row(b.ids[i]) + d);
    float* dst = scratch.data() + it->second * d;
    const float* src = b.values + i * d;
    for (size_t j = 0; j < d; ++j) dst[j] += src[j];
  }
  const size_t overflow = first_non_finite(scratch.data(), scratch.size());
  if (overflow != scratch.size())
    throw Error(ErrorCode::NonFinite, "adding the deltas overflows to a non-finite value");
  bump_version();
  for (const auto& [id, s] : slot)
    std::memcpy(storage_->data() + size_t{id} * d, scratch.data() + s * d, d * sizeof(float));
  notify_changed(touched);
}

}  // namespace gt
