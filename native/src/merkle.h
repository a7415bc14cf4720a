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

using MerkleLevels = std::vector<std::vector<Hash>>;

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

  // The node at (level, index), for tests.
  const MerkleLevels& levels() const { return levels_; }

 private:
  SparseTensor& tensor_;
  MerkleLevels levels_;  // levels_[0] = leaves; back() = the top (one node)
};

// Recomputes the root from revealed leaves and a compact multiproof; see
// docs/hash-scheme.md for the exact procedure. Throws gt::Error with a reason on
// any malformed input; returns whether the result equals `root`.
bool verify_multiproof(const Hash& root, uint64_t n, uint32_t dim, const uint32_t* ids, size_t count,
                       const float* leaves, const Hash* proof, size_t proof_count);

// Number of proof hashes a multiproof for these ids must contain (no hashing).
size_t multiproof_size(uint64_t n, const uint32_t* ids, size_t count);

}  // namespace gt
