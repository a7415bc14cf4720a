#include "tensor_file.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <unordered_map>

#include "blake3_batch.h"
#include "parallel.h"

#if defined(_WIN32)
#define GT_NO_POSIX_FILES 1
#else
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace gt {

namespace {

constexpr size_t kHeaderBytes = 256;
constexpr size_t kChecksumAt = 224;
constexpr uint64_t kSlotBytes = 4096;
constexpr uint64_t kAlign = 4096;
constexpr char kMagic[8] = {'G', 'H', 'O', 'S', 'T', 'T', 'S', 'R'};
constexpr char kWalMagic[8] = {'G', 'T', 'W', 'A', 'L', 'H', 'D', 'R'};
constexpr char kRecMagic[8] = {'G', 'T', 'W', 'A', 'L', 'R', 'E', 'C'};
constexpr size_t kWalHeaderBytes = 64;
constexpr size_t kRecHeaderBytes = 96;
constexpr uint32_t kDtypeF32 = 1;

[[noreturn]] void fail(StorageReason reason, const std::string& detail) { throw StorageError(reason, detail); }

[[noreturn]] void fail_errno(const std::string& what) {
  fail(StorageReason::IO, what + ": " + std::strerror(errno));
}

bool host_little_endian() {
  const uint16_t x = 1;
  uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}

void put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
void putf64(uint8_t* p, double d) {
  uint64_t v;
  std::memcpy(&v, &d, 8);
  put64(p, v);
}
double getf64(const uint8_t* p) {
  const uint64_t v = get64(p);
  double d;
  std::memcpy(&d, &v, 8);
  return d;
}

Hash blake3(const uint8_t* p, size_t n) {
  Hash h;
  gt_blake3_plain(p, n, h.data());
  return h;
}

uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// The test-only recorder of file operations (file_trace_start): which path each
// descriptor we write to names, and the operations in the order they were issued.
struct Trace {
  std::mutex mutex;
  bool on = false;
  std::vector<FileOp> ops;
  std::unordered_map<int, std::string> fd_paths;
};
Trace& trace() {
  static Trace t;
  return t;
}
void trace_fd(int fd, const std::string& path) {
  Trace& t = trace();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.fd_paths[fd] = path;
}
void trace_op(FileOp::Kind kind, int fd, const std::string* path, uint64_t offset, const uint8_t* p, size_t n,
              const std::string* path2 = nullptr) {
  Trace& t = trace();
  std::lock_guard<std::mutex> lock(t.mutex);
  if (!t.on) return;
  FileOp op;
  op.kind = kind;
  if (path != nullptr) {
    op.path = *path;
  } else {
    auto it = t.fd_paths.find(fd);
    op.path = it == t.fd_paths.end() ? "?" : it->second;
  }
  if (path2 != nullptr) op.path2 = *path2;
  op.offset = offset;
  if (p != nullptr) op.data.assign(p, p + n);
  t.ops.push_back(std::move(op));
}

#if !defined(GT_NO_POSIX_FILES)
void pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t off, const char* what) {
  trace_op(FileOp::Write, fd, nullptr, off, p, n);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail_errno(std::string("writing ") + what);
    }
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
}

// Reads exactly n bytes or returns false at end of file.
bool pread_all(int fd, uint8_t* p, size_t n, uint64_t off, const char* what) {
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno(std::string("reading ") + what);
    }
    if (r == 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

void sync_fd(int fd, const char* what) {
#if defined(__APPLE__)
  if (::fcntl(fd, F_FULLFSYNC) != 0 && ::fsync(fd) != 0) fail_errno(std::string("syncing ") + what);
#else
  if (::fdatasync(fd) != 0) fail_errno(std::string("syncing ") + what);
#endif
  trace_op(FileOp::Sync, fd, nullptr, 0, nullptr, 0);
}

int truncate_fd(int fd, uint64_t length) {
  trace_op(FileOp::Truncate, fd, nullptr, length, nullptr, 0);
  return ::ftruncate(fd, static_cast<off_t>(length));
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void sync_dir(const std::string& path) {
  FileDescriptor d(::open(dir_of(path).c_str(), O_RDONLY | O_CLOEXEC));
  if (!d) fail_errno("opening the directory of " + path);
  if (::fsync(d.get()) != 0) fail_errno("syncing the directory of " + path);
  const std::string dir = dir_of(path);
  trace_op(FileOp::SyncDir, -1, &dir, 0, nullptr, 0);
}

uint64_t file_size(int fd, const char* what) {
  struct stat st;
  if (::fstat(fd, &st) != 0) fail_errno(std::string("stat of ") + what);
  return static_cast<uint64_t>(st.st_size);
}
#endif

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

// ---------------------------------------------------------------------------
// RAII

FileMapping::~FileMapping() {
#if !defined(GT_NO_POSIX_FILES)
  if (base_ != nullptr) ::munmap(base_, length_);
#endif
}

FileDescriptor::~FileDescriptor() {
#if !defined(GT_NO_POSIX_FILES)
  if (fd_ >= 0) ::close(fd_);
#endif
}

FileDescriptor& FileDescriptor::operator=(FileDescriptor&& o) noexcept {
  if (this != &o) {
#if !defined(GT_NO_POSIX_FILES)
    if (fd_ >= 0) ::close(fd_);
#endif
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

// ---------------------------------------------------------------------------
// Header

FileHeader file_layout(uint64_t n, uint32_t dim, bool has_state, bool state_check) {
  FileHeader h;
  h.n = n;
  h.dim = dim;
  h.has_state = has_state;
  h.has_state_check = has_state && state_check;
  h.format_version = h.has_state_check ? 2 : 1;
  uint64_t at = 2 * kSlotBytes;
  auto region = [&](uint64_t length) {
    FileRegion r{at, length};
    at = align_up(at + length);
    return r;
  };
  const uint64_t row_bytes = uint64_t{dim} * 4;
  h.values = region(n * row_bytes);
  if (has_state) {
    h.m = region(n * row_bytes);
    h.v = region(n * row_bytes);
    h.steps = region(n * 4);
    h.decay = region(n * 8);
  }
  h.merkle = region(uint64_t{merkle_node_count(n)} * 32);
  if (h.has_state_check) h.state_check = region(n * 16);
  return h;
}

uint64_t file_length(const FileHeader& h) {
  const FileRegion& last = h.has_state_check ? h.state_check : h.merkle;
  return align_up(last.offset + last.length);
}

std::vector<uint8_t> encode_header(const FileHeader& h) {
  std::vector<uint8_t> b(kHeaderBytes, 0);
  std::memcpy(b.data(), kMagic, 8);
  put32(&b[8], h.format_version);
  put32(&b[12], kHeaderBytes);
  put32(&b[16], h.hash_scheme);
  put32(&b[20], kDtypeF32);
  put64(&b[24], h.n);
  put32(&b[32], h.dim);
  put32(&b[36], (h.has_state ? 1u : 0u) | (h.has_state_check ? 2u : 0u));
  put64(&b[40], h.slot_gen);
  put64(&b[48], h.seq);
  put32(&b[56], h.clean ? 1 : 0);
  std::memcpy(&b[64], h.gen_id, 16);
  std::memcpy(&b[80], h.root.data(), 32);
  put64(&b[112], h.global_step);
  putf64(&b[120], h.log_decay);
  const FileRegion* regions[6] = {&h.values, &h.m, &h.v, &h.steps, &h.decay, &h.merkle};
  for (int i = 0; i < 6; ++i) {
    put64(&b[128 + 16 * i], regions[i]->offset);
    put64(&b[136 + 16 * i], regions[i]->length);
  }
  const Hash c = blake3(b.data(), kChecksumAt);
  std::memcpy(&b[kChecksumAt], c.data(), 32);
  return b;
}

FileHeader decode_header(const uint8_t* b, size_t length) {
  if (length < kHeaderBytes) fail(StorageReason::Truncated, "a header slot is shorter than 256 bytes");
  if (std::memcmp(b, kMagic, 8) != 0) fail(StorageReason::BadMagic, "not a ghost-tensor file (magic differs)");
  const Hash c = blake3(b, kChecksumAt);
  if (std::memcmp(c.data(), b + kChecksumAt, 32) != 0) fail(StorageReason::HeaderChecksum, "header checksum mismatch");
  FileHeader h;
  h.format_version = get32(b + 8);
  if (h.format_version != 1 && h.format_version != 2)
    fail(StorageReason::Version, "format version " + std::to_string(h.format_version) + " is not supported (this build reads 1 and 2)");
  if (get32(b + 12) != kHeaderBytes) fail(StorageReason::BadHeader, "header length field is not 256");
  h.hash_scheme = get32(b + 16);
  if (h.hash_scheme != 1)
    fail(StorageReason::Version, "hash scheme " + std::to_string(h.hash_scheme) + " is not supported (this build knows 1)");
  if (get32(b + 20) != kDtypeF32) fail(StorageReason::BadHeader, "dtype is not f32");
  h.n = get64(b + 24);
  h.dim = get32(b + 32);
  const uint32_t flags = get32(b + 36);
  const uint32_t clean = get32(b + 56);
  if (h.n == 0 || h.n > SparseTensor::kMaxRows) fail(StorageReason::BadHeader, "N = " + std::to_string(h.n) + " is out of range");
  if (h.dim == 0 || h.dim > SparseTensor::kMaxDim)
    fail(StorageReason::BadHeader, "dim = " + std::to_string(h.dim) + " is out of range");
  // v1: bit 0 (optimizer state); v2: bits 0 and 1 (state and its per-row checks).
  const uint32_t want_flags = h.format_version == 2 ? 3u : (flags & 1u);
  if (flags != want_flags || clean > 1 || get32(b + 60) != 0) fail(StorageReason::BadHeader, "unknown flags");
  h.has_state = (flags & 1u) != 0;
  h.has_state_check = (flags & 2u) != 0;
  h.slot_gen = get64(b + 40);
  h.seq = get64(b + 48);
  h.clean = clean == 1;
  std::memcpy(h.gen_id, b + 64, 16);
  std::memcpy(h.root.data(), b + 80, 32);
  h.global_step = get64(b + 112);
  h.log_decay = getf64(b + 120);
  if (!std::isfinite(h.log_decay) || h.log_decay > 0.0) fail(StorageReason::BadHeader, "the decay log is not finite and <= 0");
  const FileHeader want = file_layout(h.n, h.dim, h.has_state, h.has_state_check);
  h.state_check = want.state_check;
  FileRegion* regions[6] = {&h.values, &h.m, &h.v, &h.steps, &h.decay, &h.merkle};
  const FileRegion* expect[6] = {&want.values, &want.m, &want.v, &want.steps, &want.decay, &want.merkle};
  for (int i = 0; i < 6; ++i) {
    regions[i]->offset = get64(b + 128 + 16 * i);
    regions[i]->length = get64(b + 136 + 16 * i);
    if (regions[i]->offset != expect[i]->offset || regions[i]->length != expect[i]->length)
      fail(StorageReason::BadHeader, "region " + std::to_string(i) + " does not have the layout of format v" +
                             std::to_string(h.format_version));
  }
  return h;
}

// ---------------------------------------------------------------------------

#if defined(GT_NO_POSIX_FILES)

void TensorFile::create(const std::string&, uint64_t, uint32_t, bool, const FileCreateSource&, size_t) {
  throw Error(ErrorCode::Unsupported, "tensor files need POSIX mmap; not supported on this platform yet");
}
std::unique_ptr<TensorFile> TensorFile::open(const std::string&, const FileOpenOptions&) {
  throw Error(ErrorCode::Unsupported, "tensor files need POSIX mmap; not supported on this platform yet");
}
TensorFile::~TensorFile() = default;
std::shared_ptr<Storage> TensorFile::values_storage() const { return nullptr; }
std::vector<LevelSpan> TensorFile::levels() const { return {}; }
ExternalOptimizerState TensorFile::state() const { return {}; }
void TensorFile::recover(SparseTensor&, MerkleTree&) {}
uint64_t TensorFile::checkpoint(const MerkleTree&, uint64_t, double, uint64_t, uint64_t) { return 0; }
void TensorFile::compact(bool) {}
std::vector<uint64_t> TensorFile::changed_pages(const std::vector<uint32_t>&) const { return {}; }
void TensorFile::drop_clean_pages(const std::vector<uint64_t>&) {}
void TensorFile::close() {}
FileInfo TensorFile::info() const { return {}; }
void TensorFile::on_rows_changed(const uint32_t*, size_t) {}
void TensorFile::on_rows_appended(size_t, size_t) {}
void TensorFile::write_header(const FileHeader&) {}
void TensorFile::reset_wal(uint64_t) {}
void TensorFile::check_usable(const char*) const {}
size_t TensorFile::row_record_bytes() const { return 0; }
void file_trace_start() {}
size_t file_trace_size() { return 0; }
std::vector<FileOp> file_trace_stop() { return {}; }
void TensorFile::check_rows(const uint32_t*, size_t) const {}
void TensorFile::check_all() const {}
void TensorFile::prefetch_paths(const uint32_t*, size_t, bool) const {}
void TensorFile::check_state(const uint32_t*, size_t) const {}
void TensorFile::update_state_checks(const uint32_t*, size_t, bool) {}
void TensorFile::alloc_bitmaps() {}

#else

void TensorFile::create(const std::string& path, uint64_t n, uint32_t dim, bool with_state, const FileCreateSource& src,
                        size_t threads) {
  if (!host_little_endian()) throw Error(ErrorCode::Unsupported, "tensor files are little-endian; this host is not");
  if (n == 0 || n > SparseTensor::kMaxRows) throw Error(ErrorCode::OutOfRange, "rows must be in 1..2^32-1");
  if (dim == 0 || dim > SparseTensor::kMaxDim) throw Error(ErrorCode::OutOfRange, "dim must be in 1..2^24");
  if (src.data == nullptr && !(std::isfinite(src.scale) && src.scale >= 0.0f))
    throw Error(ErrorCode::OutOfRange, "scale must be a finite number >= 0");
  // Replacing a file that a writer has open would strand that writer's log: refuse.
  FileDescriptor existing(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (existing && ::flock(existing.get(), LOCK_EX | LOCK_NB) != 0)
    fail(StorageReason::Locked, path + " is open elsewhere; close it before replacing it");
  FileHeader h = file_layout(n, dim, with_state, true);
  std::random_device rd;
  for (int i = 0; i < 16; ++i) h.gen_id[i] = static_cast<uint8_t>(rd());
  const uint64_t total = file_length(h);

  std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  FileDescriptor fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) fail_errno("creating " + tmp);
  trace_fd(fd.get(), tmp);
  trace_op(FileOp::Create, -1, &tmp, 0, nullptr, 0);
  struct Unlink {  // removes the temporary file unless the rename happened
    std::string p;
    bool keep = false;
    ~Unlink() {
      if (!keep) ::unlink(p.c_str());
    }
  } guard{tmp};
  if (truncate_fd(fd.get(), total) != 0) fail_errno("sizing " + tmp);

  // Values, then the tree over them, written through a shared mapping (page cache
  // writeback; nothing here is resident for long). Optimizer state stays holes (zero).
  void* base = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) fail_errno("mapping " + tmp);
  FileMapping map(base, total);
  float* values = reinterpret_cast<float*>(map.base() + h.values.offset);
  const size_t d = dim;
  if (src.data != nullptr) {
    const size_t bad = first_non_finite(src.data, n * d);
    if (bad != n * d) throw Error(ErrorCode::NonFinite, "data[" + std::to_string(bad) + "] is not finite");
    parallel_for(n, threads, [&](size_t b, size_t e, size_t) {
      std::memcpy(values + b * d, src.data + b * d, (e - b) * d * sizeof(float));
    });
  } else {
    parallel_for(n, threads, [&](size_t b, size_t e, size_t) {
      for (size_t r = b; r < e; ++r) {
        uint64_t x = src.seed ^ (0xD1B54A32D192ED03ULL * (r + 1));
        for (size_t j = 0; j < d; ++j) {
          const double u = static_cast<double>(splitmix64(x) >> 11) * (1.0 / 9007199254740992.0);
          values[r * d + j] = static_cast<float>((2.0 * u - 1.0) * src.scale);
        }
      }
    });
  }
  std::vector<LevelSpan> levels;
  {
    Hash* node = reinterpret_cast<Hash*>(map.base() + h.merkle.offset);
    for (size_t w : merkle_level_widths(n)) {
      levels.push_back(LevelSpan{node, w});
      node += w;
    }
  }
  build_merkle_into(values, n, d, levels, threads);
  h.root = commit_root(n, dim, levels.back()[0]);
  h.seq = 0;
  h.slot_gen = 1;
  h.clean = true;
  if (::msync(map.base(), total, MS_SYNC) != 0) fail_errno("syncing " + tmp);
  trace_op(FileOp::Write, fd.get(), nullptr, 0, map.base(), total);  // what the mapping wrote, as one write
  trace_op(FileOp::Sync, fd.get(), nullptr, 0, nullptr, 0);
  const std::vector<uint8_t> hb = encode_header(h);
  pwrite_all(fd.get(), hb.data(), hb.size(), 0, "the header");
  // Slot B starts invalid (zeros): slot A is the one in force.
  if (::fsync(fd.get()) != 0) fail_errno("syncing " + tmp);
  trace_op(FileOp::Sync, fd.get(), nullptr, 0, nullptr, 0);
  // A stale log of an earlier file at this path must not be replayed onto this one
  // (its generation id differs, so open() would refuse it): remove it.
  const std::string wal = path + ".wal";
  if (::unlink(wal.c_str()) != 0) {
    if (errno != ENOENT) fail_errno("removing " + wal);
  } else {
    trace_op(FileOp::Unlink, -1, &wal, 0, nullptr, 0);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail_errno("renaming " + tmp + " to " + path);
  trace_op(FileOp::Rename, -1, &tmp, 0, nullptr, 0, &path);
  guard.keep = true;
  sync_dir(path);
}

std::unique_ptr<TensorFile> TensorFile::open(const std::string& path, const FileOpenOptions& opts) {
  if (!host_little_endian()) throw Error(ErrorCode::Unsupported, "tensor files are little-endian; this host is not");
  std::unique_ptr<TensorFile> f(new TensorFile());
  f->path_ = path;
  f->wal_path_ = path + ".wal";
  f->writable_ = opts.writable;
  f->fd_ = FileDescriptor(::open(path.c_str(), (opts.writable ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  if (!f->fd_) fail_errno("opening " + path);
  trace_fd(f->fd_.get(), path);
  // One writer, or any number of readers.
  if (::flock(f->fd_.get(), (opts.writable ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) fail(StorageReason::Locked, path + " is open for writing elsewhere (or being read while opening to write)");
    fail_errno("locking " + path);
  }
  const uint64_t size = file_size(f->fd_.get(), "the tensor file");
  if (size < 2 * kSlotBytes) fail(StorageReason::Truncated, "the file is " + std::to_string(size) + " bytes, shorter than its header");

  // Both slots; the valid one with the higher generation wins.
  uint8_t slots[2][kHeaderBytes];
  if (!pread_all(f->fd_.get(), slots[0], kHeaderBytes, 0, "header slot A") ||
      !pread_all(f->fd_.get(), slots[1], kHeaderBytes, kSlotBytes, "header slot B"))
    fail(StorageReason::Truncated, "the header slots are incomplete");
  FileHeader hs[2];
  bool ok[2] = {false, false};
  std::string err[2];
  StorageReason reason_a = StorageReason::BadHeader;
  for (int i = 0; i < 2; ++i) {
    try {
      hs[i] = decode_header(slots[i], kHeaderBytes);
      ok[i] = true;
    } catch (const StorageError& e) {
      err[i] = i == 0 ? e.detail() : e.what();
      if (i == 0) reason_a = e.storage_reason();
    }
  }
  if (!ok[0] && !ok[1]) {
    // Slot B is zeros until the first header rewrite: report slot A's problem then
    // (with slot A's reason either way).
    bool b_blank = true;
    for (size_t i = 0; i < kHeaderBytes; ++i) b_blank = b_blank && slots[1][i] == 0;
    fail(reason_a, b_blank ? err[0] : err[0] + " (slot B: " + err[1] + ")");
  }
  int slot = ok[0] && (!ok[1] || hs[0].slot_gen >= hs[1].slot_gen) ? 0 : 1;
  if (ok[0] && ok[1] && (hs[0].n != hs[1].n || hs[0].dim != hs[1].dim || hs[0].has_state != hs[1].has_state ||
                         hs[0].has_state_check != hs[1].has_state_check ||
                         std::memcmp(hs[0].gen_id, hs[1].gen_id, 16) != 0))
    fail(StorageReason::BadHeader, "the two header slots describe different tensors");
  f->header_ = hs[slot];
  f->slot_ = slot;
  const FileHeader& h = f->header_;
  const uint64_t want = file_length(h);
  if (size < want)
    fail(StorageReason::Truncated, "the file is " + std::to_string(size) + " bytes; its header needs " + std::to_string(want));

  // MAP_NORESERVE: a private writable mapping larger than RAM + swap must not be
  // refused by overcommit accounting; only pages actually written take memory.
  void* base = ::mmap(nullptr, want, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, f->fd_.get(), 0);
  if (base == MAP_FAILED) fail_errno("mapping " + path);
  f->map_ = std::make_shared<FileMapping>(base, want);
  // Sparse reads and writes touch rows at random: no readahead around a fault (the
  // default reads up to 128 KiB per fault, which multiplied the I/O of a cold sparse
  // step by ~30 and filled the resident set with pages nobody asked for).
  ::madvise(base, want, MADV_RANDOM);
  f->seq_ = h.seq;
  f->global_step_ = f->durable_global_step_ = h.global_step;
  f->log_decay_ = f->durable_log_decay_ = h.log_decay;
  f->was_clean_ = h.clean;

  f->verify_ = opts.verify || !h.clean;
  f->threads_ = std::max<size_t>(1, opts.threads);
  f->check_reads_ = opts.check_reads;
  f->open_global_step_ = h.global_step;
  f->open_log_decay_ = h.log_decay;
  f->alloc_bitmaps();
  if (opts.writable && h.clean) {
    FileHeader dirty = h;
    dirty.clean = false;
    f->write_header(dirty);
  }
  return f;
}

TensorFile::~TensorFile() {
  if (tensor_ != nullptr) {
    tensor_->remove_listener(this);
    if (tensor_->read_guard() == this) tensor_->set_read_guard(nullptr);
  }
  if (fd_) ::flock(fd_.get(), LOCK_UN);
}

std::shared_ptr<Storage> TensorFile::values_storage() const {
  std::shared_ptr<FileMapping> keep = map_;
  float* p = reinterpret_cast<float*>(map_->base() + header_.values.offset);
  return Storage::fixed(p, header_.n, [keep]() mutable { keep.reset(); });
}

std::vector<LevelSpan> TensorFile::levels() const {
  std::vector<LevelSpan> out;
  Hash* node = reinterpret_cast<Hash*>(map_->base() + header_.merkle.offset);
  for (size_t w : merkle_level_widths(header_.n)) {
    out.push_back(LevelSpan{node, w});
    node += w;
  }
  return out;
}

ExternalOptimizerState TensorFile::state() const {
  ExternalOptimizerState s;
  s.global_step = global_step_;
  s.log_decay = log_decay_;
  if (!header_.has_state) return s;
  uint8_t* b = map_->base();
  s.m = reinterpret_cast<float*>(b + header_.m.offset);
  s.v = reinterpret_cast<float*>(b + header_.v.offset);
  s.row_steps = reinterpret_cast<uint32_t*>(b + header_.steps.offset);
  s.decay_mark = reinterpret_cast<double*>(b + header_.decay.offset);
  return s;
}

size_t TensorFile::row_record_bytes() const {
  const size_t rb = size_t{header_.dim} * 4;
  return header_.has_state ? rb + 2 * rb + 8 + 8 : rb;  // values [m v steps(u32, pad) decay(f64)]
}

void TensorFile::write_header(const FileHeader& h) {
  FileHeader next = h;
  next.slot_gen = header_.slot_gen + 1;
  const int slot = 1 - slot_;
  const std::vector<uint8_t> b = encode_header(next);
  pwrite_all(fd_.get(), b.data(), b.size(), slot * kSlotBytes, "a header slot");
  try {
    sync_fd(fd_.get(), "the tensor file");
  } catch (...) {
    failed_ = true;
    throw;
  }
  header_ = next;
  slot_ = slot;
}

void TensorFile::reset_wal(uint64_t base_seq) {
  if (!wal_fd_) {
    const bool existed = ::access(wal_path_.c_str(), F_OK) == 0;
    wal_fd_ = FileDescriptor(::open(wal_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (wal_fd_ && !existed) trace_op(FileOp::Create, -1, &wal_path_, 0, nullptr, 0);
    if (!wal_fd_) fail_errno("opening " + wal_path_);
    trace_fd(wal_fd_.get(), wal_path_);
  }
  if (truncate_fd(wal_fd_.get(), 0) != 0) fail_errno("truncating " + wal_path_);
  // The cut must be durable before the new header is written: a file system may
  // otherwise persist the header and lose the truncation (they are not ordered
  // without a sync), leaving the new header over the old records, which would be
  // refused as a broken chain (found by the power-loss test, test/crash.test.ts).
  try {
    sync_fd(wal_fd_.get(), "the log");
  } catch (...) {
    failed_ = true;
    throw;
  }
  uint8_t b[kWalHeaderBytes] = {};
  std::memcpy(b, kWalMagic, 8);
  put32(b + 8, 1);
  std::memcpy(b + 16, header_.gen_id, 16);
  put64(b + 32, base_seq);
  const Hash c = blake3(b, 40);
  std::memcpy(b + 40, c.data(), 24);  // 24 bytes of the checksum fill the slot
  pwrite_all(wal_fd_.get(), b, sizeof b, 0, "the log header");
  try {
    sync_fd(wal_fd_.get(), "the log");
  } catch (...) {
    failed_ = true;
    throw;
  }
  wal_end_ = kWalHeaderBytes;
}

void TensorFile::recover(SparseTensor& tensor, MerkleTree& tree) {
  const size_t d = header_.dim;
  const size_t rb = d * 4;
  const size_t stride = row_record_bytes();
  std::vector<uint32_t> replayed_rows;
  Hash expected_root = header_.root;
  FileDescriptor wal(::open(wal_path_.c_str(), (writable_ ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  if (wal) trace_fd(wal.get(), wal_path_);
  uint64_t end = 0;        // end of the last good record (0: no usable log)
  bool keep_log = false;   // the log's chain ends at seq_: new records can follow it
  if (!wal) {
    if (errno != ENOENT) fail_errno("opening " + wal_path_);
  } else {
    const uint64_t size = file_size(wal.get(), "the log");
    uint8_t hb[kWalHeaderBytes];
    bool header_ok = false;
    if (size >= kWalHeaderBytes && pread_all(wal.get(), hb, kWalHeaderBytes, 0, "the log header")) {
      const Hash c = blake3(hb, 40);
      header_ok = std::memcmp(hb, kWalMagic, 8) == 0 && get32(hb + 8) == 1 && std::memcmp(c.data(), hb + 40, 24) == 0;
    }
    if (!header_ok) {
      // A log header torn while being reset (nothing after it) holds no records.
      if (size > kWalHeaderBytes) fail(StorageReason::WalCorrupt, "the log header is damaged");
    } else {
      if (std::memcmp(hb + 16, header_.gen_id, 16) != 0)
        fail(StorageReason::WalMismatch, "the log belongs to another file (generation id differs)");
      const uint64_t base = get64(hb + 32);
      if (base > header_.seq)
        fail(StorageReason::WalMismatch, "the log starts after checkpoint " + std::to_string(base) + " but the file holds " +
                                 std::to_string(header_.seq) + " (a log was lost)");
      uint64_t at = kWalHeaderBytes, prev = base;
      std::vector<uint8_t> rec;
      while (at < size) {
        uint8_t rh[kRecHeaderBytes];
        const bool complete_header = size - at >= kRecHeaderBytes;
        if (!complete_header) break;  // torn tail
        pread_all(wal.get(), rh, kRecHeaderBytes, at, "a log record");
        const uint64_t count = get32(rh + 16);
        const uint32_t flags = get32(rh + 20);
        const uint64_t payload = get64(rh + 72);
        const uint64_t ids_bytes = (count * 4 + 7) / 8 * 8;
        const bool shape_ok = std::memcmp(rh, kRecMagic, 8) == 0 && count <= header_.n &&
                              flags == (header_.has_state ? 1u : 0u) && payload == ids_bytes + count * stride;
        if (!shape_ok) {
          // Garbage where a record should start: a torn tail only if nothing but
          // zeros follows (the file grew before its data reached the disk).
          std::vector<uint8_t> rest(static_cast<size_t>(std::min<uint64_t>(size - at, uint64_t{1} << 20)));
          pread_all(wal.get(), rest.data(), rest.size(), at, "the log tail");
          const bool zeros = std::all_of(rest.begin(), rest.end(), [](uint8_t x) { return x == 0; });
          if (zeros && size - at <= rest.size()) break;
          fail(StorageReason::WalCorrupt, "log record at byte " + std::to_string(at) + " is malformed");
        }
        const uint64_t total = kRecHeaderBytes + payload + 32;
        if (size - at < total) break;  // torn tail: the record never completed
        rec.resize(static_cast<size_t>(total));
        pread_all(wal.get(), rec.data(), rec.size(), at, "a log record");
        const Hash c = blake3(rec.data(), static_cast<size_t>(total - 32));
        if (std::memcmp(c.data(), rec.data() + total - 32, 32) != 0) {
          if (at + total == size) break;  // the last record, torn: never acknowledged
          fail(StorageReason::WalCorrupt, "log record at byte " + std::to_string(at) + " fails its checksum");
        }
        const uint64_t seq = get64(rh + 8);
        if (seq != prev + 1)
          fail(StorageReason::WalCorrupt, "log record " + std::to_string(seq) + " follows " + std::to_string(prev));
        prev = seq;
        if (seq > header_.seq) {
          const uint8_t* p = rec.data() + kRecHeaderBytes;
          std::vector<uint32_t> ids(count);
          for (size_t i = 0; i < count; ++i) {
            ids[i] = get32(p + 4 * i);
            if (ids[i] >= header_.n || (i > 0 && ids[i] <= ids[i - 1]))
              fail(StorageReason::WalCorrupt, "log record " + std::to_string(seq) + " has bad row ids");
          }
          const uint8_t* rows = p + ids_bytes;
          std::vector<float> vals(count * d);
          for (size_t i = 0; i < count; ++i) std::memcpy(vals.data() + i * d, rows + i * stride, rb);
          try {
            tensor.set(ids.data(), count, vals.data());  // the tree follows
          } catch (const Error& e) {
            fail(StorageReason::WalCorrupt, "log record " + std::to_string(seq) + ": " + e.what());
          }
          if (header_.has_state) {
            const ExternalOptimizerState s = state();
            for (size_t i = 0; i < count; ++i) {
              const uint8_t* r = rows + i * stride + rb;
              std::memcpy(s.m + size_t{ids[i]} * d, r, rb);
              std::memcpy(s.v + size_t{ids[i]} * d, r + rb, rb);
              std::memcpy(s.row_steps + ids[i], r + 2 * rb, 4);
              std::memcpy(s.decay_mark + ids[i], r + 2 * rb + 8, 8);
            }
            // The log's checksum covered this state: it is trusted, and its checks follow it.
            for (size_t i = 0; i < count; ++i)
              state_ok_[ids[i] >> 6].fetch_or(uint64_t{1} << (ids[i] & 63), std::memory_order_relaxed);
            update_state_checks(ids.data(), count, false);
          }
          // Each record's root is checked once, after the last one: a compaction cut
          // short may already have written later records' rows into the main file,
          // so intermediate roots need not match; the final state must.
          std::memcpy(expected_root.data(), rh + 40, 32);
          global_step_ = get64(rh + 24);
          log_decay_ = getf64(rh + 32);
          if (!std::isfinite(log_decay_) || log_decay_ > 0.0) fail(StorageReason::WalCorrupt, "bad decay log in a record");
          open_global_step_ = global_step_;
          open_log_decay_ = log_decay_;
          durable_global_step_ = global_step_;
          durable_log_decay_ = log_decay_;
          replayed_rows.insert(replayed_rows.end(), ids.begin(), ids.end());
          seq_ = seq;
          ++replayed_;
        }
        at += total;
      }
      end = at;
      keep_log = prev == seq_;
    }
  }
  if (verify_) {
    // Every stored node against the rows as they now stand (the replayed rows and
    // their paths were recomputed by the write path; everything else is the file's).
    size_t bad_level = 0, bad_index = 0;
    const std::vector<LevelSpan> lv = levels();
    ::madvise(map_->base(), map_->length(), MADV_SEQUENTIAL);  // one pass: readahead helps here
    const bool good = verify_merkle_levels(tensor.data(), tensor.size(), tensor.dim(), lv, threads_, &bad_level,
                                           &bad_index, true);
    ::madvise(map_->base(), map_->length(), MADV_RANDOM);
    if (!good) {
      if (bad_level == SIZE_MAX)
        fail(StorageReason::NonFinite, "row " + std::to_string(bad_index) + " holds NaN or an infinity");
      if (bad_level == 0)
        fail(StorageReason::RootMismatch, "row " + std::to_string(bad_index) +
                                  " does not match its stored leaf hash (values or tree region damaged)");
      fail(StorageReason::RootMismatch, "tree node " + std::to_string(bad_index) + " at level " + std::to_string(bad_level) +
                                " does not match its children (tree region damaged)");
    }
    if (header_.has_state) {
      // Every row's optimizer state against its check (v2) and for sane values.
      parallel_for(header_.n, threads_, [&](size_t b, size_t e, size_t) {
        std::vector<uint8_t> scratch;
        for (size_t r = b; r < e; ++r)
          if (!state_ok(static_cast<uint32_t>(r))) verify_state(static_cast<uint32_t>(r), scratch);
      });
      all_state_ok_.store(true, std::memory_order_release);
    }
    all_rows_ok_.store(true, std::memory_order_release);
    verified_ = true;
    // The check read every page; keep only those the replay changed.
    std::vector<uint32_t> rows = replayed_rows;
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    drop_clean_pages(changed_pages(rows));
  }
  if (tree.root() != expected_root) {
    if (replayed_ > 0)
      fail(StorageReason::WalRootMismatch, "after replaying the log up to checkpoint " + std::to_string(seq_) +
                                    " the root differs from the one it recorded");
    fail(StorageReason::RootMismatch, "the stored tree's top does not give the recorded root");
  }
  std::sort(replayed_rows.begin(), replayed_rows.end());
  replayed_rows.erase(std::unique(replayed_rows.begin(), replayed_rows.end()), replayed_rows.end());
  uncompacted_ = std::move(replayed_rows);
  if (writable_) {
    if (keep_log && end >= kWalHeaderBytes) {
      // Keep the valid records; cut a torn tail so new records follow the last good one.
      wal_fd_ = std::move(wal);
      if (truncate_fd(wal_fd_.get(), end) != 0) fail_errno("truncating " + wal_path_);
      sync_fd(wal_fd_.get(), "the log");
      wal_end_ = end;
    } else {
      reset_wal(header_.seq);
      sync_dir(path_);
    }
  }
  tensor_ = &tensor;
  tree_ = &tree;
  tensor.add_listener(this);
  tensor.set_read_guard(this);  // with uncheckedReads it only reads ahead
}

void TensorFile::check_usable(const char* op) const {
  if (closed_) fail(StorageReason::Closed, std::string(op) + " on a closed tensor file");
  if (!writable_) fail(StorageReason::ReadOnly, std::string(op) + ": the file was opened read-only");
  if (failed_) fail(StorageReason::IO, std::string(op) + ": an earlier sync failed; the file's durable state is unknown, reopen it");
  if (tensor_ == nullptr) throw Error(ErrorCode::InvalidArgument, "the tensor file was not recovered");
}

void TensorFile::on_rows_changed(const uint32_t* ids, size_t count) {
  pending_.insert(pending_.end(), ids, ids + count);
  // The next checkpoint recomputes the state checks of these rows. A row whose state
  // nobody checked yet is checked now, while it still holds the file's state (a
  // writer changes the values first, the optimizer state after): a damaged one stays
  // unmarked, keeps its old check and is refused on its next touch or open, instead of
  // being blessed by a fresh check. Never throws (the write has happened).
  if (header_.has_state && check_reads_ && !all_state_ok_.load(std::memory_order_acquire)) {
    std::vector<uint8_t> buf;
    for (size_t i = 0; i < count; ++i) {
      if (state_ok(ids[i])) continue;
      try {
        verify_state(ids[i], buf);
      } catch (const Error&) {
      }
    }
  }
}

void TensorFile::on_rows_appended(size_t, size_t) {
  throw Error(ErrorCode::Unsupported, "a file-backed tensor cannot grow");
}

uint64_t TensorFile::checkpoint(const MerkleTree& tree, uint64_t global_step, double log_decay, uint64_t compact_bytes,
                                uint64_t compact_rows) {
  check_usable("checkpoint");
  auto due = [&] {
    return (compact_bytes > 0 && wal_end_ > compact_bytes) || (compact_rows > 0 && uncompacted_.size() >= compact_rows);
  };
  std::sort(pending_.begin(), pending_.end());
  pending_.erase(std::unique(pending_.begin(), pending_.end()), pending_.end());
  if (pending_.empty() && global_step == durable_global_step_ && log_decay == durable_log_decay_) {
    // Nothing changed since the last checkpoint: it already is the durable state.
    if (due()) compact(false);
    return seq_;
  }
  // Rows whose optimizer state this process may have written (checked before the
  // write) get their state checks recomputed; a row whose state was never checked
  // still holds the file's state, and its check stays as it is (recomputing it would
  // bless damage nobody looked at).
  update_state_checks(pending_.data(), pending_.size(), !check_reads_);
  const size_t count = pending_.size(), d = header_.dim, rb = d * 4, stride = row_record_bytes();
  const uint64_t ids_bytes = (uint64_t{count} * 4 + 7) / 8 * 8;
  const uint64_t payload = ids_bytes + uint64_t{count} * stride;
  std::vector<uint8_t> rec(kRecHeaderBytes + payload + 32, 0);
  const uint64_t seq = seq_ + 1;
  std::memcpy(rec.data(), kRecMagic, 8);
  put64(&rec[8], seq);
  put32(&rec[16], static_cast<uint32_t>(count));
  put32(&rec[20], header_.has_state ? 1 : 0);
  put64(&rec[24], global_step);
  putf64(&rec[32], log_decay);
  const Hash root = tree.root();
  std::memcpy(&rec[40], root.data(), 32);
  put64(&rec[72], payload);
  uint8_t* p = rec.data() + kRecHeaderBytes;
  for (size_t i = 0; i < count; ++i) put32(p + 4 * i, pending_[i]);
  uint8_t* rows = p + ids_bytes;
  const ExternalOptimizerState s = state();
  for (size_t i = 0; i < count; ++i) {
    const size_t id = pending_[i];
    uint8_t* r = rows + i * stride;
    std::memcpy(r, tensor_->row(id), rb);
    if (header_.has_state) {
      std::memcpy(r + rb, s.m + id * d, rb);
      std::memcpy(r + 2 * rb, s.v + id * d, rb);
      std::memcpy(r + 3 * rb, s.row_steps + id, 4);
      std::memcpy(r + 3 * rb + 8, s.decay_mark + id, 8);
    }
  }
  const Hash c = blake3(rec.data(), rec.size() - 32);
  std::memcpy(rec.data() + rec.size() - 32, c.data(), 32);
  try {
    pwrite_all(wal_fd_.get(), rec.data(), rec.size(), wal_end_, "a log record");
  } catch (...) {
    // Cut a partial record so the next one starts at a record boundary.
    if (truncate_fd(wal_fd_.get(), wal_end_) != 0) failed_ = true;
    throw;
  }
  try {
    sync_fd(wal_fd_.get(), "the log");
  } catch (...) {
    failed_ = true;
    throw;
  }
  wal_end_ += rec.size();
  seq_ = seq;
  global_step_ = durable_global_step_ = global_step;
  log_decay_ = durable_log_decay_ = log_decay;
  // Merge into the rows the log holds beyond the main file.
  std::vector<uint32_t> merged;
  merged.reserve(uncompacted_.size() + pending_.size());
  std::set_union(uncompacted_.begin(), uncompacted_.end(), pending_.begin(), pending_.end(), std::back_inserter(merged));
  uncompacted_.swap(merged);
  pending_.clear();
  if (due()) compact(false);
  return seq;
}

std::vector<uint64_t> TensorFile::changed_pages(const std::vector<uint32_t>& rows) const {
  const size_t rb = size_t{header_.dim} * 4;
  uint8_t* base = map_->base();
  std::vector<uint64_t> pages;
  auto add_range = [&](uint64_t from, uint64_t length) {
    for (uint64_t p = from / kAlign; p <= (from + length - 1) / kAlign; ++p) pages.push_back(p);
  };
  for (uint32_t id : rows) {
    add_range(header_.values.offset + uint64_t{id} * rb, rb);
    if (header_.has_state) {
      add_range(header_.m.offset + uint64_t{id} * rb, rb);
      add_range(header_.v.offset + uint64_t{id} * rb, rb);
      add_range(header_.steps.offset + uint64_t{id} * 4, 4);
      add_range(header_.decay.offset + uint64_t{id} * 8, 8);
    }
    if (header_.has_state_check) add_range(header_.state_check.offset + uint64_t{id} * 16, 16);
  }
  const std::vector<LevelSpan> lv = levels();
  std::vector<uint64_t> cur(rows.begin(), rows.end());
  for (size_t l = 0; l < lv.size() && !cur.empty(); ++l) {
    const uint64_t level_off = static_cast<uint64_t>(reinterpret_cast<uint8_t*>(lv[l].p) - base);
    for (uint64_t x : cur) add_range(level_off + x * 32, 32);
    std::vector<uint64_t> next;
    for (uint64_t x : cur)
      if (next.empty() || next.back() != x / 2) next.push_back(x / 2);
    cur.swap(next);
  }
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  return pages;
}

void TensorFile::drop_clean_pages(const std::vector<uint64_t>& keep) {
  // Pages outside `keep` hold exactly the file's bytes: dropping them from this
  // mapping only shrinks the resident set (they stay in the page cache).
  const uint64_t total = map_->length() / kAlign;
  uint64_t from = 0;
  for (size_t i = 0; i <= keep.size(); ++i) {
    const uint64_t to = i < keep.size() ? keep[i] : total;
    if (to > from) ::madvise(map_->base() + from * kAlign, (to - from) * kAlign, MADV_DONTNEED);
    from = std::max(from, to + 1);
  }
}

void TensorFile::compact(bool mark_clean) {
  check_usable("compact");
  const int fd = fd_.get();
  // The main file must receive the rows exactly as the last checkpoint committed
  // them; rows changed since (pending_) would write uncommitted values (and tree
  // nodes over them), so the caller checkpoints first (the binding does).
  if (!pending_.empty())
    throw Error(ErrorCode::InvalidArgument, "rows changed since the last checkpoint; checkpoint first");
  // Every 4 KiB page of the mapping that the changed rows touched (values, optimizer
  // state, the tree nodes on their paths) is written whole: a page-sized write needs
  // no read of the old page (a row-sized one into an uncached page does), and the
  // bytes of a touched page that did not change equal the file's, so rewriting them
  // is harmless. Runs of adjacent pages go in one pwrite.
  uint8_t* base = map_->base();
  std::vector<uint64_t> pages = changed_pages(uncompacted_);
  const uint64_t limit = map_->length() / kAlign;  // the mapping is a whole number of pages
  for (size_t i = 0; i < pages.size();) {
    size_t j = i + 1;
    while (j < pages.size() && pages[j] == pages[j - 1] + 1) ++j;
    if (pages[j - 1] >= limit) throw Error(ErrorCode::InvalidArgument, "internal: a page past the mapping");
    pwrite_all(fd, base + pages[i] * kAlign, static_cast<size_t>((j - i) * kAlign), pages[i] * kAlign, "changed pages");
    i = j;
  }
  try {
    sync_fd(fd, "the tensor file");
  } catch (...) {
    failed_ = true;
    throw;
  }
  FileHeader h = header_;
  h.seq = seq_;
  h.root = tree_->root();
  h.global_step = durable_global_step_;  // the header describes checkpoint seq_
  h.log_decay = durable_log_decay_;
  h.clean = mark_clean;
  write_header(h);
  reset_wal(seq_);
  uncompacted_.clear();
  // Every privately modified byte of the mapping is now in the file (nothing is
  // pending), so the private copies can go: the pages fall back to the file's, with
  // the same bytes. This is what keeps a long training job's resident memory
  // proportional to the rows touched since the last compaction, not since open.
  drop_clean_pages({});
}

void TensorFile::close() {
  if (closed_) return;
  if (writable_ && !failed_) compact(true);
  closed_ = true;
  if (tensor_ != nullptr) {
    tensor_->remove_listener(this);
    if (tensor_->read_guard() == this) tensor_->set_read_guard(nullptr);
  }
  tensor_ = nullptr;
  tree_ = nullptr;
  wal_fd_ = FileDescriptor();
  // The mapping keeps the open file description (and so a flock) alive while row
  // views hold it: unlock explicitly.
  if (fd_) ::flock(fd_.get(), LOCK_UN);
  fd_ = FileDescriptor();
  map_.reset();
}

FileInfo TensorFile::info() const {
  FileInfo i;
  i.seq = seq_;
  i.compacted_seq = header_.seq;
  i.wal_bytes = wal_end_;
  i.pending_rows = pending_.size();
  i.uncompacted_rows = uncompacted_.size();
  i.replayed_records = replayed_;
  i.was_clean = was_clean_;
  i.verified = verified_;
  i.writable = writable_;
  i.has_state = header_.has_state;
  i.format_version = header_.format_version;
  i.rows_checked = rows_checked_.load(std::memory_order_relaxed);
  return i;
}

// ---------------------------------------------------------------------------
// Test-only recorder

void file_trace_start() {
  Trace& t = trace();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.ops.clear();
  t.on = true;
}

size_t file_trace_size() {
  Trace& t = trace();
  std::lock_guard<std::mutex> lock(t.mutex);
  return t.ops.size();
}

std::vector<FileOp> file_trace_stop() {
  Trace& t = trace();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.on = false;
  std::vector<FileOp> out;
  out.swap(t.ops);
  return out;
}

// ---------------------------------------------------------------------------
// Verified reads

namespace {
inline bool test_bit(const std::atomic<uint64_t>* w, size_t i) {
  return ((w[i >> 6].load(std::memory_order_acquire) >> (i & 63)) & 1u) != 0;
}
inline void set_bit(std::atomic<uint64_t>* w, size_t i) {
  w[i >> 6].fetch_or(uint64_t{1} << (i & 63), std::memory_order_release);
}
std::unique_ptr<std::atomic<uint64_t>[]> zero_bits(size_t bits) {
  const size_t words = (bits + 63) / 64;
  std::unique_ptr<std::atomic<uint64_t>[]> w(new std::atomic<uint64_t>[words]);
  for (size_t i = 0; i < words; ++i) w[i].store(0, std::memory_order_relaxed);
  return w;
}
}  // namespace

void TensorFile::alloc_bitmaps() {
  levels_ = levels();
  row_ok_ = zero_bits(header_.n);
  if (header_.has_state) state_ok_ = zero_bits(header_.n);
  size_t at = 0;
  node_bit_at_.clear();
  for (const LevelSpan& l : levels_) {
    node_bit_at_.push_back(at);
    at += (l.n + 63) / 64 * 64;  // each level starts on a word
  }
  node_ok_ = zero_bits(at);
}

void TensorFile::verify_row(uint32_t id) const {
  const size_t d = header_.dim;
  const float* row = reinterpret_cast<const float*>(map_->base() + header_.values.offset) + size_t{id} * d;
  if (first_non_finite(row, d) != d)
    fail(StorageReason::NonFinite, "row " + std::to_string(id) + " read from the file holds NaN or an infinity");
  Hash h = hash_leaf(row, d);
  if (h != levels_[0][id])
    fail(StorageReason::RowMismatch, "row " + std::to_string(id) +
                             " read from the file does not match its stored leaf hash (values or tree region damaged)");
  // Climb until a node already known to agree with the root (the top always does).
  size_t idx = id, level = 0;
  const size_t top = levels_.size() - 1;
  while (level < top && !test_bit(node_ok_.get(), node_bit_at_[level] + idx)) {
    const LevelSpan& l = levels_[level];
    const size_t left = idx & ~size_t{1}, right = left + 1;
    const Hash parent = right < l.n ? hash_node(l[left], l[right]) : l[idx];  // a lone last node is promoted
    if (parent != levels_[level + 1][idx / 2])
      fail(StorageReason::RowMismatch, "the stored tree path of row " + std::to_string(id) + " does not match at level " +
                               std::to_string(level + 1) + " (tree region damaged)");
    idx /= 2;
    ++level;
  }
  // Every node below `level` on the path, and its sibling, hashed up to a trusted node.
  idx = id;
  for (size_t l = 0; l < level; ++l) {
    set_bit(node_ok_.get(), node_bit_at_[l] + idx);
    if ((idx ^ 1u) < levels_[l].n) set_bit(node_ok_.get(), node_bit_at_[l] + (idx ^ 1u));
    idx /= 2;
  }
  // Two threads may have checked the same row at once; it is counted once.
  const uint64_t mask = uint64_t{1} << (id & 63);
  if ((row_ok_[id >> 6].fetch_or(mask, std::memory_order_release) & mask) == 0)
    rows_checked_.fetch_add(1, std::memory_order_relaxed);
}

void TensorFile::prefetch_paths(const uint32_t* ids, size_t count, bool rows_only) const {
  // The pages a batch of first checks will read: each row's values, and the tree nodes
  // on its path (a node and its sibling share a 64-byte pair, so one page) below the
  // first node already trusted. Asking for them all at once (MADV_WILLNEED: readahead
  // of exactly those pages, asynchronous) lets a cold disk serve them in parallel
  // instead of one page fault after another.
  std::vector<uint64_t> pages;
  const uint64_t rb = uint64_t{header_.dim} * 4;
  const uint8_t* base = map_->base();
  const size_t top = levels_.size() - 1;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t id = ids[i];
    if (id >= header_.n || (!rows_only && test_bit(row_ok_.get(), id))) continue;
    const uint64_t at = header_.values.offset + id * rb;
    for (uint64_t p = at / kAlign; p <= (at + rb - 1) / kAlign; ++p) pages.push_back(p);
    if (rows_only) continue;
    size_t idx = id;
    for (size_t l = 0; l <= top; ++l) {
      const uint64_t off = static_cast<uint64_t>(reinterpret_cast<const uint8_t*>(&levels_[l][idx]) - base);
      pages.push_back(off / kAlign);
      if (l == top || test_bit(node_ok_.get(), node_bit_at_[l] + idx)) break;
      idx /= 2;
    }
  }
  if (pages.size() < 2) return;
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  for (size_t i = 0; i < pages.size();) {
    size_t j = i + 1;
    while (j < pages.size() && pages[j] == pages[j - 1] + 1) ++j;
    ::madvise(map_->base() + pages[i] * kAlign, (j - i) * kAlign, MADV_WILLNEED);
    i = j;
  }
}

void TensorFile::check_rows(const uint32_t* ids, size_t count) const {
  if (!check_reads_) {
    // Measurement only (uncheckedReads): the same readahead of the rows, no check, so
    // that checked and unchecked reads differ by the check alone.
    if (count >= 2) prefetch_paths(ids, count, true);
    return;
  }
  if (all_rows_ok_.load(std::memory_order_acquire)) return;
  size_t unchecked = 0;
  for (size_t i = 0; i < count && unchecked < 2; ++i)
    if (ids[i] < header_.n && !test_bit(row_ok_.get(), ids[i])) ++unchecked;
  if (unchecked >= 2) prefetch_paths(ids, count, false);
  for (size_t i = 0; i < count; ++i) {
    const uint32_t id = ids[i];
    if (id >= header_.n) throw Error(ErrorCode::OutOfRange, "row id " + std::to_string(id) + " is out of range");
    if (!test_bit(row_ok_.get(), id)) verify_row(id);  // two threads may both check it: harmless
  }
}

void TensorFile::check_all() const {
  if (!check_reads_ || all_rows_ok_.load(std::memory_order_acquire)) return;
  std::lock_guard<std::mutex> lock(full_check_);
  if (all_rows_ok_.load(std::memory_order_acquire)) return;
  // A full scan reads every row: check every stored node against the rows as they now
  // stand (rows written since open have recomputed paths), the top is the root's.
  size_t bad_level = 0, bad_index = 0;
  const bool good = verify_merkle_levels(reinterpret_cast<const float*>(map_->base() + header_.values.offset),
                                         header_.n, header_.dim, levels_, threads_, &bad_level, &bad_index, true);
  if (!good) {
    if (bad_level == SIZE_MAX)
      fail(StorageReason::NonFinite, "row " + std::to_string(bad_index) + " read from the file holds NaN or an infinity");
    if (bad_level == 0)
      fail(StorageReason::RowMismatch, "row " + std::to_string(bad_index) +
                               " read from the file does not match its stored leaf hash (values or tree region damaged)");
    fail(StorageReason::RowMismatch, "tree node " + std::to_string(bad_index) + " at level " + std::to_string(bad_level) +
                             " does not match its children (tree region damaged)");
  }
  all_rows_ok_.store(true, std::memory_order_release);
}

bool TensorFile::state_ok(uint32_t id) const {
  return all_state_ok_.load(std::memory_order_acquire) || test_bit(state_ok_.get(), id);
}

void TensorFile::state_digest(uint32_t id, std::vector<uint8_t>& buf, uint8_t out[16]) const {
  const size_t d = header_.dim, rb = d * 4;
  const ExternalOptimizerState s = state();
  buf.resize(4 + 2 * rb + 12);
  put32(buf.data(), id);
  std::memcpy(buf.data() + 4, s.m + size_t{id} * d, rb);
  std::memcpy(buf.data() + 4 + rb, s.v + size_t{id} * d, rb);
  std::memcpy(buf.data() + 4 + 2 * rb, s.row_steps + id, 4);
  std::memcpy(buf.data() + 8 + 2 * rb, s.decay_mark + id, 8);
  const Hash h = blake3(buf.data(), buf.size());
  std::memcpy(out, h.data(), 16);
}

void TensorFile::verify_state(uint32_t id, std::vector<uint8_t>& buf) const {
  const size_t d = header_.dim;
  const ExternalOptimizerState s = state();
  const float* m = s.m + size_t{id} * d;
  const float* v = s.v + size_t{id} * d;
  if (header_.has_state_check) {
    const uint8_t* stored = map_->base() + header_.state_check.offset + uint64_t{id} * 16;
    uint8_t want[16];
    state_digest(id, buf, want);
    bool zero_check = true;
    for (int i = 0; i < 16; ++i) zero_check = zero_check && stored[i] == 0;
    if (zero_check) {
      // Never written (a hole): the state must be all zero bytes too.
      bool zero_state = s.row_steps[id] == 0;
      uint64_t mark_bits;
      std::memcpy(&mark_bits, s.decay_mark + id, 8);
      zero_state = zero_state && mark_bits == 0;
      for (size_t j = 0; j < d && zero_state; ++j) {
        uint32_t a, b;
        std::memcpy(&a, m + j, 4);
        std::memcpy(&b, v + j, 4);
        zero_state = a == 0 && b == 0;
      }
      if (!zero_state)
        fail(StorageReason::StateMismatch, "the optimizer state of row " + std::to_string(id) +
                                   " is not zero but its check is (state or check region damaged)");
    } else if (std::memcmp(stored, want, 16) != 0) {
      fail(StorageReason::StateMismatch, "the optimizer state of row " + std::to_string(id) +
                                 " does not match its stored check (m, v, counter, decay mark or check region damaged)");
    }
  }
  // Values no acknowledged step can produce (what a v1 file can be checked for).
  for (size_t j = 0; j < d; ++j)
    if (!std::isfinite(m[j]) || !std::isfinite(v[j]) || !(v[j] >= 0.0f))
      fail(StorageReason::StateInvalid, "the optimizer state of row " + std::to_string(id) + " has m or v non-finite or v < 0");
  if (s.row_steps[id] > open_global_step_)
    fail(StorageReason::StateInvalid, "row " + std::to_string(id) + " counts " + std::to_string(s.row_steps[id]) +
                              " updates, more than the " + std::to_string(open_global_step_) + " steps checkpointed");
  const double mark = s.decay_mark[id];
  if (!std::isfinite(mark) || mark > 0.0 || mark < open_log_decay_)
    fail(StorageReason::StateInvalid, "the decay mark of row " + std::to_string(id) + " is outside [decay log, 0]");
  set_bit(state_ok_.get(), id);
}

void TensorFile::check_state(const uint32_t* ids, size_t count) const {
  if (!header_.has_state || !check_reads_ || all_state_ok_.load(std::memory_order_acquire)) return;
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t id = ids[i];
    if (id >= header_.n) throw Error(ErrorCode::OutOfRange, "row id " + std::to_string(id) + " is out of range");
    if (!test_bit(state_ok_.get(), id)) verify_state(id, buf);
  }
}

void TensorFile::update_state_checks(const uint32_t* ids, size_t count, bool all) {
  if (!header_.has_state_check) return;
  std::vector<uint8_t> buf;
  for (size_t i = 0; i < count; ++i) {
    const uint32_t id = ids[i];
    if (!all && !state_ok(id)) continue;
    state_digest(id, buf, map_->base() + header_.state_check.offset + uint64_t{id} * 16);
  }
}

#endif

}  // namespace gt
