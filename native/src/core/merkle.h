// BLAKE3 Merkle commitment of a SparseTensor (hash scheme v1, docs/hash-scheme.md).
//
//   leaf_i = BLAKE3-keyed(K_LEAF, pattern i as little-endian f32 bytes)
//   node   = BLAKE3-keyed(K_NODE, left || right)            (one 64-byte block)
//   tree   = levels built bottom-up; a level's last node without a partner is
//            promoted unchanged (this is exactly the RFC 9162 shape: split at the
//            largest power of two below n, no duplicated leaf)
//   root   = BLAKE3-keyed(K_ROOT, u64le(N) || u32le(d) || top)  (top = 32 zero bytes if N = 0)
//
// The tree listens to the tensor's write path, so root() is always current: a
// write of k rows re-hashes k leaves and their paths, O(k log N) hashes.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

#include "sparse_tensor.h"

namespace gt {

using Hash = std::array<uint8_t, 32>;

struct MerkleKeys {
  Hash leaf, node, root;
};
// K_LEAF = BLAKE3("ghost-tensor/merkle/v1/leaf"), K_NODE = BLAKE3(".../node"),
// K_ROOT = BLAKE3(".../root") (unkeyed hashes of those ASCII strings).
const MerkleKeys& merkle_keys();

Hash hash_leaf(const float* row, size_t dim);
Hash hash_node(const Hash& left, const Hash& right);
Hash commit_root(uint64_t n, uint32_t dim, const Hash& top);

// Storage of one tree level: huge_alloc (huge_pages.h), so a large level (>= 2 MiB) is
// its own mapping on transparent huge pages. Measured on the 2-core VM of
// bench/merkle.mjs: first writes to 48 MiB cost 170-220 ms of page faults with 4 KiB
// pages (more than hashing the 256 MiB of leaves under the tree, ~53 ms), 4-5 ms with
// huge pages.
//
// Elements are default-initialised (construct() without arguments: no zeroing pass,
// another 3-4 ms at 48 MiB); every builder writes each node before anything reads it
// (build_merkle_levels, and on_rows_appended's rehash of the new leaves and of every
// parent from the first changed position).
void* merkle_level_alloc(size_t bytes);
void merkle_level_free(void* p, size_t bytes) noexcept;

template <typename T>
struct LevelAllocator {
  using value_type = T;
  LevelAllocator() noexcept = default;
  template <typename U>
  LevelAllocator(const LevelAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(merkle_level_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { merkle_level_free(p, n * sizeof(T)); }
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <typename U>
  bool operator==(const LevelAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const LevelAllocator<U>&) const noexcept { return false; }
};

using HashLevel = std::vector<Hash, LevelAllocator<Hash>>;
using MerkleLevels = std::vector<HashLevel>;

// One level of a tree: `n` nodes at `p` (owned by a MerkleLevels or by a file mapping).
struct LevelSpan {
  Hash* p = nullptr;
  size_t n = 0;
  Hash& operator[](size_t i) const { return p[i]; }
  size_t size() const { return n; }
};

// Level widths for n leaves: n, ceil(n/2), ..., 1 (empty for n = 0).
std::vector<size_t> merkle_level_widths(uint64_t n);
// Total nodes over all levels (sum of merkle_level_widths).
size_t merkle_node_count(uint64_t n);

// Builds the tree over n rows at `data` into levels that live elsewhere (shaped by
// merkle_level_widths(n)), on up to `threads` threads.
void build_merkle_into(const float* data, size_t n, size_t dim, const std::vector<LevelSpan>& levels, size_t threads);

// Checks stored levels against the rows at `data`: every leaf is recomputed from its
// row and every inner node from its stored children, in bounded memory, on up to
// `threads` threads. Returns true when all match; otherwise sets *bad_level and
// *bad_index to the first mismatch found (level 0 = a leaf). With `check_finite`, a
// row holding NaN or an infinity also fails (*bad_level = SIZE_MAX, *bad_index = the
// row). Reads only.
bool verify_merkle_levels(const float* data, size_t n, size_t dim, const std::vector<LevelSpan>& levels,
                          size_t threads, size_t* bad_level, size_t* bad_index, bool check_finite = false);

// All levels of the tree over n rows of dim floats at `data`, hashed on up to
// `threads` threads (leaves and inner nodes in SIMD batches). Reads only.
MerkleLevels build_merkle_levels(const float* data, size_t n, size_t dim, size_t threads);

class MerkleTree : public WriteListener {
 public:
  // Hashes every row of `tensor` on up to `threads` threads and starts listening.
  MerkleTree(SparseTensor& tensor, size_t threads);
  // Adopts levels built by build_merkle_levels over the tensor's current rows (an
  // asynchronous build) and starts listening.
  MerkleTree(SparseTensor& tensor, MerkleLevels&& levels);
  // Uses levels that live elsewhere (a file mapping) in place; they must hold the
  // tree of the tensor's current rows. Such a tree cannot follow appends.
  MerkleTree(SparseTensor& tensor, std::vector<LevelSpan> external);
  ~MerkleTree() override;
  MerkleTree(const MerkleTree&) = delete;
  MerkleTree& operator=(const MerkleTree&) = delete;

  Hash root() const;
  size_t leaf_count() const { return levels_.empty() ? 0 : levels_[0].size(); }

  // Compact multiproof for sorted, unique, in-range ids: the sibling hashes a
  // verifier cannot compute from the revealed leaves, level by level from the
  // leaves up, ascending within a level. Checked; throws gt::Error otherwise.
  std::vector<Hash> prove(const uint32_t* ids, size_t count) const;

  void on_rows_changed(const uint32_t* ids, size_t count) override;
  void on_rows_appended(size_t first, size_t count) override;

  // The node at (level, index), for tests and for the file format.
  const std::vector<LevelSpan>& levels() const { return levels_; }

 private:
  void attach_owned();
  SparseTensor& tensor_;
  MerkleLevels owned_;              // backing of levels_ unless external
  bool external_ = false;
  std::vector<LevelSpan> levels_;  // levels_[0] = leaves; back() = the top (one node)
};

// Recomputes the root from revealed leaves and a compact multiproof; see
// docs/hash-scheme.md for the exact procedure. Throws gt::Error with a reason on
// any malformed input; returns whether the result equals `root`.
bool verify_multiproof(const Hash& root, uint64_t n, uint32_t dim, const uint32_t* ids, size_t count,
                       const float* leaves, const Hash* proof, size_t proof_count);

// Number of proof hashes a multiproof for these ids must contain (no hashing).
size_t multiproof_size(uint64_t n, const uint32_t* ids, size_t count);

}  // namespace gt
