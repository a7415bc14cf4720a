// SparseTensor core: N patterns of dimension d, f32, each pattern contiguous.
//
// Every write (set, add, append) goes through apply_write(), which validates the
// whole batch first, applies it, and then tells each registered WriteListener which
// rows changed. Later layers (the Merkle tree, the ANN indexes) keep their views
// consistent by listening there, so no write path can bypass them.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "errors.h"

namespace gt {

class RowNormCache;  // search.h

// Row storage. Owned storage is 64-byte aligned and, from 2 MiB, on transparent huge
// pages (huge_pages.h: a scan reads a new 4 KiB page every few rows); adopted storage
// points at memory kept alive by someone else (the JavaScript buffer it came from).
class Storage {
 public:
  static std::shared_ptr<Storage> allocate(size_t rows, size_t dim);
  static std::shared_ptr<Storage> adopt(float* data, size_t rows, std::function<void()> release);
  // Memory that cannot be replaced by a larger allocation (a file mapping): the
  // tensor refuses to grow past it instead of copying it into owned memory.
  static std::shared_ptr<Storage> fixed(float* data, size_t rows, std::function<void()> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  float* data() const { return data_; }
  size_t capacity_rows() const { return capacity_rows_; }
  bool owned() const { return owned_; }
  bool is_fixed() const { return fixed_; }

 private:
  Storage() = default;
  float* data_ = nullptr;
  size_t bytes_ = 0;  // owned: the bytes allocated
  size_t capacity_rows_ = 0;
  bool owned_ = false;
  bool fixed_ = false;
  std::function<void()> release_;
};

class WriteListener {
 public:
  virtual ~WriteListener() = default;
  // Rows `ids` (sorted, unique) now hold new values.
  virtual void on_rows_changed(const uint32_t* ids, size_t count) = 0;
  // Rows [first, first + count) were appended.
  virtual void on_rows_appended(size_t first, size_t count) = 0;
};

// Checks rows before anyone reads them (a file-backed tensor: each row against the
// stored Merkle tree and the recorded root the first time it is touched, see
// tensor_file.h). Must be safe to call from several threads at once. Throws
// gt::Error(Storage) for a row that fails its check.
class ReadGuard {
 public:
  virtual ~ReadGuard() = default;
  // Rows `ids` (in range; repeats allowed) are about to be read.
  virtual void check_rows(const uint32_t* ids, size_t count) const = 0;
  // Every row is about to be read (a full scan).
  virtual void check_all() const = 0;
};

enum class WriteKind { Set, Add, Append };

struct WriteBatch {
  WriteKind kind = WriteKind::Set;
  const uint32_t* ids = nullptr;  // Set / Add: which rows (Add may repeat an id)
  size_t count = 0;               // rows in the batch
  const float* values = nullptr;  // count * dim floats: new values, deltas, or appended rows
};

class SparseTensor {
 public:
  // Largest pattern count: ids are uint32.
  static constexpr size_t kMaxRows = 0xFFFFFFFFu;
  // Largest dimension accepted (keeps rows * dim * 4 far from overflow).
  static constexpr size_t kMaxDim = size_t{1} << 24;

  SparseTensor(size_t dim, size_t capacity_rows);
  // Takes `rows` rows in place from `storage` (no copy). Checks that every value is
  // finite unless `check_finite` is false (a file mapping: reading every row would
  // defeat the mapping; the file's own check covers it, see tensor_file.h).
  SparseTensor(size_t dim, size_t rows, std::shared_ptr<Storage> storage, bool check_finite = true);

  size_t size() const { return rows_; }
  size_t dim() const { return dim_; }
  size_t capacity() const { return storage_->capacity_rows(); }
  const float* row(size_t id) const { return storage_->data() + id * dim_; }
  const float* data() const { return storage_->data(); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // Grows capacity to at least `rows` (copies into new owned storage).
  void reserve(size_t rows);

  // The one write path. Throws gt::Error and leaves the tensor unchanged when any
  // id is out of range, a Set repeats an id, or a value (or, for Add, a result) is
  // not finite.
  void apply_write(const WriteBatch& batch);

  void set(const uint32_t* ids, size_t count, const float* values) {
    apply_write({WriteKind::Set, ids, count, values});
  }
  void add(const uint32_t* ids, size_t count, const float* deltas) {
    apply_write({WriteKind::Add, ids, count, deltas});
  }
  void append(const float* rows, size_t count) {
    apply_write({WriteKind::Append, nullptr, count, rows});
  }

  // Copies rows `ids` into out (count * dim floats). Ids are checked.
  void gather(const uint32_t* ids, size_t count, float* out) const;

  void add_listener(WriteListener* listener) { listeners_.push_back(listener); }

  // The guard every read path consults (null: rows need no check). gather() and the
  // write path (Set and Add read or replace rows whose tree paths they rehash) call it
  // themselves; code that reads rows through row() / data() calls check_rows() /
  // check_all_rows() first.
  void set_read_guard(const ReadGuard* guard) { guard_ = guard; }
  const ReadGuard* read_guard() const { return guard_; }
  void check_rows(const uint32_t* ids, size_t count) const {
    if (guard_ != nullptr) guard_->check_rows(ids, count);
  }
  void check_all_rows() const {
    if (guard_ != nullptr) guard_->check_all();
  }
  void remove_listener(WriteListener* listener);

  // Checks that ids are < size(); names `what` in the error.
  void check_ids(const uint32_t* ids, size_t count, const char* what) const;

  // The write version: a number no other state of any tensor in the process has had.
  // It changes on every change of the rows (each branch of apply_write, reserve) and a
  // new tensor starts with a fresh one, so state kept beside the rows (the cosine norms
  // of the exact scan, RowNormCache) is valid exactly while the version it was made at
  // is current.
  uint64_t version() const { return version_; }

  // The cache of the rows' squared norms for the exact cosine scan (search.h), or null
  // where the rows can change outside the write path: adopted JavaScript memory, which
  // its owner can still write (such a tensor's scans compute every norm, as before).
  std::shared_ptr<RowNormCache> norm_cache() const {
    return storage_->owned() || storage_->is_fixed() ? norms_ : nullptr;
  }

 private:
  void notify_changed(std::vector<uint32_t>& ids);
  // Rows are about to change (or the storage be replaced): a new version.
  void bump_version();

  size_t dim_;
  size_t rows_ = 0;
  std::shared_ptr<Storage> storage_;
  std::vector<WriteListener*> listeners_;
  const ReadGuard* guard_ = nullptr;
  uint64_t version_ = 0;
  std::shared_ptr<RowNormCache> norms_;
};

// Index of the first non-finite value in [p, p + n), or n when all are finite.
size_t first_non_finite(const float* p, size_t n);

}  // namespace gt
