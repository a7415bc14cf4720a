// A SparseTensor stored in a file (format v1, docs/storage.md): values, optional
// optimizer state and the whole Merkle tree, mapped copy-on-write (MAP_PRIVATE), so a
// tensor larger than memory is read and trained with resident memory proportional
// to the rows touched. The file itself changes only at a checkpoint:
//
//   checkpoint = one checksummed write-ahead-log record holding the full new rows
//                (values and optimizer state) changed since the previous one, the
//                new root and a sequence number, then fdatasync;
//   compaction = the rows changed since the last compaction written in place
//                (pwrite, idempotent), fdatasync, then the other header slot
//                (A/B) with the new sequence number, fdatasync, then the log reset.
//
// Opening checks the header (magic, checksum, version, shape, layout, length), the
// stored tree's top against the recorded root, and on request or after an unclean
// close every stored tree node against the rows; it then replays complete log
// records through the tensor's write path, checking each record's root. Damage is
// reported as gt::StorageError (errors.h): ErrorCode::Storage with a reason
// (docs/storage.md lists them), also the first token of its message.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "merkle.h"
#include "optimizer.h"
#include "sparse_tensor.h"

namespace gt {

// A file mapping, unmapped when the last holder lets go (row views may outlive the
// TensorFile).
class FileMapping {
 public:
  FileMapping(void* base, size_t length) : base_(base), length_(length) {}
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  uint8_t* base() const { return static_cast<uint8_t*>(base_); }
  size_t length() const { return length_; }

 private:
  void* base_;
  size_t length_;
};

// An open file descriptor, closed on destruction.
class FileDescriptor {
 public:
  FileDescriptor() = default;
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor();
  FileDescriptor(FileDescriptor&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  FileDescriptor& operator=(FileDescriptor&& o) noexcept;
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct FileRegion {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// The decoded header (one slot).
struct FileHeader {
  uint32_t format_version = 1;
  uint32_t hash_scheme = 1;
  uint64_t n = 0;
  uint32_t dim = 0;
  bool has_state = false;  // optimizer state regions present
  bool has_state_check = false;  // format v2: a 16-byte check per row over its optimizer state
  uint64_t slot_gen = 0;   // bumped on every header write; the valid slot with the higher one wins
  uint64_t seq = 0;        // checkpoint sequence number the main file holds
  bool clean = true;       // closed cleanly (no writer has it open)
  uint8_t gen_id[16] = {};
  Hash root{};
  uint64_t global_step = 0;
  double log_decay = 0.0;
  FileRegion values, m, v, steps, decay, merkle;
  FileRegion state_check;  // v2 only; after the tree, not listed in the header (derived)
};

// Region layout for a shape (4096-aligned regions after the two header slots). Files
// with optimizer state are written as format v2 (a state check region after the tree);
// `state_check` false gives the v1 layout (still read and written).
FileHeader file_layout(uint64_t n, uint32_t dim, bool has_state, bool state_check);
// Total file length of a layout.
uint64_t file_length(const FileHeader& h);
// Header bytes (256) of h, checksum included; and the inverse, which throws
// gt::Error(Storage) naming what is wrong.
std::vector<uint8_t> encode_header(const FileHeader& h);
FileHeader decode_header(const uint8_t* bytes, size_t length);

struct FileCreateSource {
  const float* data = nullptr;  // n * dim floats, or null for a seeded uniform fill
  uint64_t seed = 0;            // fill: values uniform in [-scale, scale)
  float scale = 0.0f;
};

struct FileOpenOptions {
  bool writable = true;
  bool verify = false;  // check every stored tree node against the rows
  // Check each row against the stored tree (and its optimizer state against its
  // check) the first time it is read. false exists only to measure what the checks
  // cost (bench/storage.mjs): a damaged row is then served.
  bool check_reads = true;
  size_t threads = 1;
};

struct FileInfo {
  uint64_t seq = 0;             // last durable checkpoint
  uint64_t compacted_seq = 0;   // checkpoint the main file holds
  uint64_t wal_bytes = 0;
  uint64_t pending_rows = 0;    // rows changed since the last checkpoint (with repeats)
  uint64_t uncompacted_rows = 0;
  uint64_t replayed_records = 0;  // log records applied when opening
  bool was_clean = true;          // the file had been closed cleanly
  bool verified = false;          // every tree node was checked when opening
  bool writable = false;
  bool has_state = false;
  uint32_t format_version = 1;
  uint64_t rows_checked = 0;    // rows checked on first read since open (lazily)
};

// Verified reads: a TensorFile is its tensor's ReadGuard. The first read of a row
// hashes it and compares the leaf with the stored one, then climbs the stored tree
// (each parent recomputed from its two stored children) until it reaches a node
// already known to agree with the recorded root (the top always does: open() checks
// it). O(log N) hashes the first time, a bit test afterwards; the row, the nodes on
// its path and their siblings are marked in atomic bitmaps, so searchBatch threads
// may check rows concurrently. A mismatch is gt::Error(Storage) "ROW_MISMATCH: ..."
// (NaN / infinity: "NON_FINITE: ..."). Optimizer state is checked the same way on
// first touch (check_state): in a v2 file against its per-row BLAKE3 check, in any
// file for sane values (finite, v >= 0, counter <= global step, decay mark in
// [decay log, 0]); "STATE_MISMATCH: ..." / "STATE_INVALID: ...".
// Test-only recorder of the file operations this code issues (writes with their
// bytes, truncations, fdatasync / fsync, directory syncs, renames, unlinks), in
// order, from every thread; the power-loss test (test/crash.test.ts) replays them
// into the crash states a file system may leave. Off unless started; cheap when off.
struct FileOp {
  enum Kind { Write, Truncate, Sync, SyncDir, Rename, Unlink, Create } kind = Write;
  std::string path, path2;  // path2: a rename's target
  uint64_t offset = 0;      // Write: where; Truncate: the new length
  std::vector<uint8_t> data;
};
void file_trace_start();
size_t file_trace_size();
std::vector<FileOp> file_trace_stop();

class TensorFile : public WriteListener, public ReadGuard {
 public:
  // Writes a new file atomically (temporary file, fsync, rename, fsync of the
  // directory). Optimizer state, when requested, starts at zero.
  static void create(const std::string& path, uint64_t n, uint32_t dim, bool with_state, const FileCreateSource& src,
                     size_t threads);

  // Maps and checks the main file (not the log yet). Throws gt::Error(Storage).
  static std::unique_ptr<TensorFile> open(const std::string& path, const FileOpenOptions& opts);
  ~TensorFile() override;

  // The mapped regions (copy-on-write).
  std::shared_ptr<Storage> values_storage() const;
  std::vector<LevelSpan> levels() const;
  bool has_state() const { return header_.has_state; }
  ExternalOptimizerState state() const;  // pointers into the mapping + current scalars
  uint64_t rows() const { return header_.n; }
  uint32_t dim() const { return header_.dim; }

  // Replays the log through tensor's write path (the tree listens); then, when asked
  // to verify or after an unclean close, checks every stored tree node against the
  // rows; then checks the root against the last record's (or the header's). Starts
  // tracking changed rows. Call once after open(); may run off the JavaScript thread.
  void recover(SparseTensor& tensor, MerkleTree& tree);

  // Makes the current state durable: one log record of the rows changed since the
  // last checkpoint (sorted, unique), fdatasync. Then compacts when the log holds
  // more than `compact_bytes` (0: no limit) or the rows not yet compacted number
  // `compact_rows` or more (0: no limit). Returns the new sequence number.
  uint64_t checkpoint(const MerkleTree& tree, uint64_t global_step, double log_decay, uint64_t compact_bytes,
                      uint64_t compact_rows = 0);
  // Applies every checkpointed row to the main file and resets the log. Rows changed
  // since the last checkpoint are not written (they are not committed).
  void compact(bool mark_clean);
  // Compacts and marks the file clean; the TensorFile refuses further work.
  void close();
  bool closed() const { return closed_; }

  FileInfo info() const;
  // Global optimizer scalars as of the last open / checkpoint.
  uint64_t global_step() const { return global_step_; }
  double log_decay() const { return log_decay_; }
  // Takes the scalars of an optimizer that is being detached (the next one resumes them).
  void set_scalars(uint64_t global_step, double log_decay) {
    global_step_ = global_step;
    log_decay_ = log_decay;
  }

  void on_rows_changed(const uint32_t* ids, size_t count) override;
  void on_rows_appended(size_t first, size_t count) override;

  // ReadGuard (thread-safe).
  void check_rows(const uint32_t* ids, size_t count) const override;
  void check_all() const override;
  // The optimizer state of rows `ids` (in range) is about to be read (a step, optimState).
  void check_state(const uint32_t* ids, size_t count) const;

 private:
  TensorFile() = default;
  void write_header(const FileHeader& h);
  void reset_wal(uint64_t base_seq);
  void check_usable(const char* op) const;
  // File pages (sorted, unique) holding the rows' values and state and the tree nodes
  // on their paths.
  std::vector<uint64_t> changed_pages(const std::vector<uint32_t>& rows) const;
  // MADV_DONTNEED on every page of the mapping not in `keep` (sorted).
  void drop_clean_pages(const std::vector<uint64_t>& keep);
  size_t row_record_bytes() const;
  void verify_row(uint32_t id) const;
  // MADV_WILLNEED on the pages a batch of first checks reads (rows_only: the rows').
  void prefetch_paths(const uint32_t* ids, size_t count, bool rows_only) const;
  void verify_state(uint32_t id, std::vector<uint8_t>& scratch) const;
  bool state_ok(uint32_t id) const;
  // BLAKE3 (first 16 bytes) of u32le id || m || v || u32le counter || f64le decay mark.
  void state_digest(uint32_t id, std::vector<uint8_t>& scratch, uint8_t out[16]) const;
  // Recomputes the stored checks of rows whose state this process wrote.
  void update_state_checks(const uint32_t* ids, size_t count, bool all);
  void alloc_bitmaps();

  std::string path_, wal_path_;
  FileDescriptor fd_, wal_fd_;
  std::shared_ptr<FileMapping> map_;
  FileHeader header_;       // the slot in force
  int slot_ = 0;            // slot index of header_
  uint64_t seq_ = 0;        // last durable checkpoint (>= header_.seq)
  uint64_t wal_end_ = 0;    // bytes of valid log
  uint64_t global_step_ = 0;  // current: what a newly attached optimizer resumes
  double log_decay_ = 0.0;
  uint64_t durable_global_step_ = 0;  // as of checkpoint seq_
  double durable_log_decay_ = 0.0;
  std::vector<uint32_t> pending_;      // rows changed since the last checkpoint (unsorted, repeats)
  std::vector<uint32_t> uncompacted_;  // rows in the log, sorted unique
  SparseTensor* tensor_ = nullptr;
  const MerkleTree* tree_ = nullptr;
  uint64_t replayed_ = 0;
  bool was_clean_ = true;
  bool verified_ = false;
  bool verify_ = false;
  size_t threads_ = 1;
  bool writable_ = false;
  bool closed_ = false;
  bool failed_ = false;  // an fsync failed: the durable state is unknown, refuse more

  // Verified reads (see the class comment).
  bool check_reads_ = true;
  std::vector<LevelSpan> levels_;
  std::unique_ptr<std::atomic<uint64_t>[]> row_ok_, state_ok_, node_ok_;
  std::vector<size_t> node_bit_at_;  // first bit of each level in node_ok_
  mutable std::atomic<bool> all_rows_ok_{false};
  mutable std::atomic<bool> all_state_ok_{false};
  mutable std::atomic<uint64_t> rows_checked_{0};
  mutable std::mutex full_check_;
  uint64_t open_global_step_ = 0;  // durable scalars when opened: bounds for the state's sanity
  double open_log_decay_ = 0.0;
};

}  // namespace gt
