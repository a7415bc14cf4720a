#include "merkle.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>


#include "blake3_batch.h"
#include "huge_pages.h"
#include "parallel.h"

namespace gt {

void* merkle_level_alloc(size_t bytes) { return huge_alloc(bytes, false); }

void merkle_level_free(void* p, size_t bytes) noexcept { huge_free(p, bytes); }

std::vector<size_t> merkle_level_widths(uint64_t n) {
  std::vector<size_t> w;
  if (n == 0) return w;
  w.push_back(static_cast<size_t>(n));
  while (w.back() > 1) w.push_back((w.back() + 1) / 2);
  return w;
}

size_t merkle_node_count(uint64_t n) {
  size_t total = 0;
  for (size_t w : merkle_level_widths(n)) total += w;
  return total;
}

namespace {

Hash plain(const char* s) {
  Hash h;
  gt_blake3_plain(reinterpret_cast<const uint8_t*>(s), std::strlen(s), h.data());
  return h;
}

std::vector<size_t> widths(uint64_t n) { return merkle_level_widths(n); }

static_assert(sizeof(float) == 4, "f32 leaves");

bool little_endian() {
  const uint16_t x = 1;
  uint8_t b;
  std::memcpy(&b, &x, 1);
  return b == 1;
}

// Leaf bytes: the pattern as little-endian f32. On a big-endian host the bytes
// are swapped into a scratch buffer first.
void leaf_bytes(const float* row, size_t dim, std::vector<uint8_t>& scratch, const uint8_t** out) {
  if (little_endian()) {
    *out = reinterpret_cast<const uint8_t*>(row);
    return;
  }
  scratch.resize(dim * 4);
  for (size_t i = 0; i < dim; ++i) {
    uint8_t b[4];
    std::memcpy(b, row + i, 4);
    for (int j = 0; j < 4; ++j) scratch[i * 4 + j] = b[3 - j];
  }
  *out = scratch.data();
}

// Whether rows of `len` bytes go through the batched (SIMD over many rows) path.
bool leaf_batched(size_t len) {
  return len % GT_BLAKE3_BLOCK_LEN == 0 && len <= GT_BLAKE3_MAX_BATCH_LEN && little_endian();
}

}  // namespace

const MerkleKeys& merkle_keys() {
  static const MerkleKeys k = {plain("ghost-tensor/merkle/v1/leaf"), plain("ghost-tensor/merkle/v1/node"),
                               plain("ghost-tensor/merkle/v1/root")};
  return k;
}

Hash hash_leaf(const float* row, size_t dim) {
  std::vector<uint8_t> scratch;
  const uint8_t* bytes;
  leaf_bytes(row, dim, scratch, &bytes);
  Hash h;
  gt_blake3_keyed(merkle_keys().leaf.data(), bytes, dim * 4, h.data());
  return h;
}

Hash hash_node(const Hash& left, const Hash& right) {
  uint8_t block[64];
  std::memcpy(block, left.data(), 32);
  std::memcpy(block + 32, right.data(), 32);
  Hash h;
  const uint8_t* in = block;
  gt_blake3_keyed_many(merkle_keys().node.data(), &in, 1, 64, h.data());
  return h;
}

Hash commit_root(uint64_t n, uint32_t dim, const Hash& top) {
  uint8_t buf[8 + 4 + 32];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<uint8_t>(n >> (8 * i));
  for (int i = 0; i < 4; ++i) buf[8 + i] = static_cast<uint8_t>(dim >> (8 * i));
  std::memcpy(buf + 12, top.data(), 32);
  Hash h;
  gt_blake3_keyed(merkle_keys().root.data(), buf, sizeof buf, h.data());
  return h;
}

namespace {

void resize_levels(MerkleLevels& levels, size_t n) {
  const std::vector<size_t> w = widths(n);
  levels.resize(w.size());
  for (size_t l = 0; l < w.size(); ++l) levels[l].resize(w[l]);
}

// Hashes rows [first, first + count) into leaves[first ...].
void hash_leaves(const float* data, size_t dim, size_t first, size_t count, size_t threads,
                 const LevelSpan& leaves) {
  const size_t len = dim * 4;
  const bool batched = leaf_batched(len);
  const size_t useful = count * len < (size_t{1} << 20) ? 1 : threads;
  parallel_for(count, useful, [&](size_t b, size_t e, size_t) {
    if (batched) {
      constexpr size_t kBatch = 64;
      const uint8_t* ptrs[kBatch];
      for (size_t s = b; s < e; s += kBatch) {
        const size_t m = std::min(kBatch, e - s);
        for (size_t i = 0; i < m; ++i)
          ptrs[i] = reinterpret_cast<const uint8_t*>(data + (first + s + i) * dim);
        gt_blake3_keyed_many(merkle_keys().leaf.data(), ptrs, m, len, leaves[first + s].data());
      }
    } else {
      for (size_t i = b; i < e; ++i) leaves[first + i] = hash_leaf(data + (first + i) * dim, dim);
    }
  });
}

// Recomputes parent[from, to) from child (sizes already set).
void hash_parents(const LevelSpan& child, const LevelSpan& parent, size_t from, size_t to,
                  size_t threads) {
  const size_t useful = (to - from) < 4096 ? 1 : threads;
  parallel_for(to - from, useful, [&](size_t b, size_t e, size_t) {
    constexpr size_t kBatch = 64;
    const uint8_t* ptrs[kBatch];
    size_t j = from + b;
    const size_t end = from + e;
    while (j < end) {
      if (2 * j + 1 >= child.size()) {  // the promoted last node: copied, not hashed
        parent[j] = child[2 * j];
        ++j;
        continue;
      }
      size_t m = 0;
      const size_t start = j;
      // Children 2j and 2j+1 are adjacent in memory: one 64-byte block.
      while (j < end && m < kBatch && 2 * j + 1 < child.size()) {
        ptrs[m++] = child[2 * j].data();
        ++j;
      }
      gt_blake3_keyed_many(merkle_keys().node.data(), ptrs, m, 64, parent[start].data());
    }
  });
}

// Builds every level over rows [0, n) into `lv` (shaped by widths(n)). Rows go in
// aligned blocks of 2^kBlockLog: a block's leaves, then the nodes of its subtree
// (levels 1 .. kBlockLog), while its leaves are still in cache; then the levels above
// the blocks, which are small. Same nodes as level by level: a block's range at level
// l is [s >> l, ceil(t / 2^l)), its children were hashed before it, and the promoted
// last node of a level (only in the last block) follows the same rule.
void build_levels(const float* data, size_t n, size_t dim, const std::vector<LevelSpan>& lv, size_t threads) {
  constexpr size_t kBlockLog = 11;
  constexpr size_t kBlock = size_t{1} << kBlockLog;
  const size_t blocks = (n + kBlock - 1) / kBlock;
  const size_t depth = std::min(kBlockLog, lv.size() - 1);
  const size_t useful = n * dim * 4 < (size_t{1} << 20) ? 1 : threads;
  parallel_for(blocks, useful, [&](size_t b, size_t e, size_t) {
    for (size_t k = b; k < e; ++k) {
      const size_t s = k * kBlock, t = std::min(n, s + kBlock);
      hash_leaves(data, dim, s, t - s, 1, lv[0]);
      for (size_t l = 1; l <= depth; ++l) {
        const size_t to = std::min(lv[l].size(), ((t - 1) >> l) + 1);
        hash_parents(lv[l - 1], lv[l], s >> l, to, 1);
      }
    }
  });
  for (size_t l = depth; l + 1 < lv.size(); ++l) hash_parents(lv[l], lv[l + 1], 0, lv[l + 1].size(), threads);
}

}  // namespace

MerkleLevels build_merkle_levels(const float* data, size_t n, size_t dim, size_t threads) {
  MerkleLevels levels;
  resize_levels(levels, n);
  if (n == 0) return levels;
  std::vector<LevelSpan> spans(levels.size());
  for (size_t l = 0; l < levels.size(); ++l) spans[l] = LevelSpan{levels[l].data(), levels[l].size()};
  build_levels(data, n, dim, spans, threads);
  return levels;
}

void build_merkle_into(const float* data, size_t n, size_t dim, const std::vector<LevelSpan>& levels, size_t threads) {
  const std::vector<size_t> w = widths(n);
  if (levels.size() != w.size()) throw Error(ErrorCode::InvalidArgument, "levels do not have the tree's shape");
  for (size_t l = 0; l < w.size(); ++l)
    if (levels[l].size() != w[l]) throw Error(ErrorCode::InvalidArgument, "levels do not have the tree's shape");
  if (n == 0) return;
  build_levels(data, n, dim, levels, threads);
}

bool verify_merkle_levels(const float* data, size_t n, size_t dim, const std::vector<LevelSpan>& levels,
                          size_t threads, size_t* bad_level, size_t* bad_index, bool check_finite) {
  const std::vector<size_t> w = widths(n);
  if (levels.size() != w.size()) {
    *bad_level = 0;
    *bad_index = 0;
    return false;
  }
  for (size_t l = 0; l < w.size(); ++l) {
    if (levels[l].size() != w[l]) {
      *bad_level = l;
      *bad_index = 0;
      return false;
    }
  }
  if (n == 0) return true;
  // Chunks of 2^14 nodes, recomputed into per-chunk scratch and compared; the first
  // mismatch (lowest level, lowest index) is reported.
  constexpr size_t kChunk = size_t{1} << 14;
  for (size_t l = 0; l < w.size(); ++l) {
    const size_t width = w[l];
    const size_t chunks = (width + kChunk - 1) / kChunk;
    std::vector<size_t> first_bad(chunks, SIZE_MAX);
    std::vector<size_t> first_nonfinite(chunks, SIZE_MAX);
    parallel_for(chunks, width < 4096 ? 1 : threads, [&](size_t cb, size_t ce, size_t) {
      std::vector<Hash> scratch(kChunk);
      for (size_t c = cb; c < ce; ++c) {
        const size_t from = c * kChunk, to = std::min(width, from + kChunk);
        // Shifted views so that index j of the scratch level is node from + j.
        if (l == 0) {
          if (check_finite) {
            const size_t bad = first_non_finite(data + from * dim, (to - from) * dim);
            if (bad != (to - from) * dim) first_nonfinite[c] = from + bad / dim;
          }
          hash_leaves(data + from * dim, dim, 0, to - from, 1, LevelSpan{scratch.data(), to - from});
        } else {
          // Parents [from, to) need children [2 from, min(2 to, child width)).
          const LevelSpan& child = levels[l - 1];
          const size_t cfrom = 2 * from, cto = std::min(child.size(), 2 * to);
          hash_parents(LevelSpan{child.p + cfrom, cto - cfrom}, LevelSpan{scratch.data(), to - from}, 0, to - from, 1);
        }
        for (size_t j = from; j < to; ++j) {
          if (scratch[j - from] != levels[l][j]) {
            first_bad[c] = j;
            break;
          }
        }
      }
    });
    for (size_t c = 0; c < chunks; ++c) {
      if (first_nonfinite[c] != SIZE_MAX) {
        *bad_level = SIZE_MAX;
        *bad_index = first_nonfinite[c];
        return false;
      }
    }
    for (size_t c = 0; c < chunks; ++c) {
      if (first_bad[c] != SIZE_MAX) {
        *bad_level = l;
        *bad_index = first_bad[c];
        return false;
      }
    }
  }
  return true;
}

MerkleTree::MerkleTree(SparseTensor& tensor, size_t threads)
    : MerkleTree(tensor, build_merkle_levels(tensor.data(), tensor.size(), tensor.dim(), threads)) {}

MerkleTree::MerkleTree(SparseTensor& tensor, MerkleLevels&& levels) : tensor_(tensor), owned_(std::move(levels)) {
  attach_owned();
  if (leaf_count() != tensor_.size())
    throw Error(ErrorCode::InvalidArgument, "the tree was built over a different number of rows");
  tensor_.add_listener(this);
}

MerkleTree::MerkleTree(SparseTensor& tensor, std::vector<LevelSpan> external)
    : tensor_(tensor), external_(true), levels_(std::move(external)) {
  const std::vector<size_t> w = widths(tensor_.size());
  bool ok = w.size() == levels_.size();
  for (size_t l = 0; ok && l < w.size(); ++l) ok = levels_[l].size() == w[l] && levels_[l].p != nullptr;
  if (!ok) throw Error(ErrorCode::InvalidArgument, "the stored tree does not have the shape of the tensor's rows");
  tensor_.add_listener(this);
}

void MerkleTree::attach_owned() {
  levels_.resize(owned_.size());
  for (size_t l = 0; l < owned_.size(); ++l) levels_[l] = LevelSpan{owned_[l].data(), owned_[l].size()};
}

MerkleTree::~MerkleTree() { tensor_.remove_listener(this); }

Hash MerkleTree::root() const {
  Hash top{};
  if (!levels_.empty()) top = levels_.back()[0];
  return commit_root(tensor_.size(), static_cast<uint32_t>(tensor_.dim()), top);
}

void MerkleTree::on_rows_changed(const uint32_t* ids, size_t count) {
  if (count == 0) return;
  // Sorted, unique ids (the write path's contract). Leaves, then each level's changed
  // parents, are hashed in SIMD batches (hash_many runs up to 8 or 16 at once); one
  // call per node would fall back to BLAKE3's portable single-input path.
  const size_t dim = tensor_.dim(), len = dim * 4;
  std::vector<size_t> cur(ids, ids + count);
  std::vector<const uint8_t*> ptrs;
  std::vector<Hash> out;
  if (leaf_batched(len)) {
    ptrs.resize(count);
    out.resize(count);
    for (size_t t = 0; t < count; ++t) ptrs[t] = reinterpret_cast<const uint8_t*>(tensor_.row(cur[t]));
    gt_blake3_keyed_many(merkle_keys().leaf.data(), ptrs.data(), count, len, out[0].data());
    for (size_t t = 0; t < count; ++t) levels_[0][cur[t]] = out[t];
  } else {
    for (size_t id : cur) levels_[0][id] = hash_leaf(tensor_.row(id), dim);
  }
  std::vector<size_t> next, hashed;
  for (size_t l = 0; l + 1 < levels_.size(); ++l) {
    const LevelSpan& child = levels_[l];
    const LevelSpan& parent = levels_[l + 1];
    next.clear();
    hashed.clear();
    ptrs.clear();
    for (size_t i : cur) {
      const size_t j = i / 2;
      if (!next.empty() && next.back() == j) continue;
      next.push_back(j);
      if (2 * j + 1 < child.size()) {
        hashed.push_back(j);
        ptrs.push_back(child[2 * j].data());  // children 2j, 2j+1: one 64-byte block
      } else {
        parent[j] = child[2 * j];  // promoted
      }
    }
    if (!hashed.empty()) {
      out.resize(hashed.size());
      gt_blake3_keyed_many(merkle_keys().node.data(), ptrs.data(), hashed.size(), 64, out[0].data());
      for (size_t t = 0; t < hashed.size(); ++t) parent[hashed[t]] = out[t];
    }
    cur.swap(next);
  }
}

void MerkleTree::on_rows_appended(size_t first, size_t count) {
  // A file-backed tensor refuses growth before it happens (its storage is fixed).
  if (external_) throw Error(ErrorCode::Unsupported, "a tree stored in a file cannot follow appends");
  resize_levels(owned_, tensor_.size());
  attach_owned();
  hash_leaves(tensor_.data(), tensor_.dim(), first, count, default_threads(), levels_[0]);
  // Every node from the first changed position rightwards may change (including
  // nodes that were promoted and now get a partner).
  size_t from = first;
  for (size_t l = 0; l + 1 < levels_.size(); ++l) {
    from /= 2;
    hash_parents(levels_[l], levels_[l + 1], from, levels_[l + 1].size(), default_threads());
  }
}

std::vector<Hash> MerkleTree::prove(const uint32_t* ids, size_t count) const {
  const uint64_t n = tensor_.size();
  multiproof_size(n, ids, count);  // validates ids
  std::vector<Hash> proof;
  std::vector<size_t> cur(ids, ids + count);
  for (size_t l = 0; l + 1 < levels_.size(); ++l) {
    const size_t width = levels_[l].size();
    std::vector<size_t> next;
    for (size_t t = 0; t < cur.size(); ++t) {
      const size_t i = cur[t];
      const size_t sib = i ^ 1;
      if (sib < width) {
        if (t + 1 < cur.size() && cur[t + 1] == sib) ++t;  // both children known
        else proof.push_back(levels_[l][sib]);
      }
      if (next.empty() || next.back() != i / 2) next.push_back(i / 2);
    }
    cur.swap(next);
  }
  return proof;
}

size_t multiproof_size(uint64_t n, const uint32_t* ids, size_t count) {
  if (n == 0) throw Error(ErrorCode::OutOfRange, "N = 0: an empty tensor has no leaves to prove");
  if (n > SparseTensor::kMaxRows) throw Error(ErrorCode::OutOfRange, "N exceeds 2^32-1");
  if (count == 0) throw Error(ErrorCode::InvalidArgument, "ids is empty");
  for (size_t t = 0; t < count; ++t) {
    if (ids[t] >= n)
      throw Error(ErrorCode::OutOfRange, "ids[" + std::to_string(t) + "] = " + std::to_string(ids[t]) +
                                             " is out of range for N = " + std::to_string(n));
    if (t > 0 && ids[t] <= ids[t - 1])
      throw Error(ErrorCode::InvalidArgument, "ids must be sorted ascending and unique (ids[" +
                                                  std::to_string(t) + "])");
  }
  size_t needed = 0;
  std::vector<size_t> cur(ids, ids + count);
  for (size_t width = static_cast<size_t>(n); width > 1; width = (width + 1) / 2) {
    std::vector<size_t> next;
    for (size_t t = 0; t < cur.size(); ++t) {
      const size_t i = cur[t], sib = i ^ 1;
      if (sib < width) {
        if (t + 1 < cur.size() && cur[t + 1] == sib) ++t;
        else ++needed;
      }
      if (next.empty() || next.back() != i / 2) next.push_back(i / 2);
    }
    cur.swap(next);
  }
  return needed;
}

bool verify_multiproof(const Hash& root, uint64_t n, uint32_t dim, const uint32_t* ids, size_t count,
                       const float* leaves, const Hash* proof, size_t proof_count) {
  const size_t needed = multiproof_size(n, ids, count);
  if (proof_count != needed)
    throw Error(ErrorCode::InvalidArgument, "proof has " + std::to_string(proof_count) +
                                                " hashes; these ids and N need exactly " + std::to_string(needed));
  std::vector<std::pair<size_t, Hash>> cur(count);
  for (size_t t = 0; t < count; ++t) cur[t] = {ids[t], hash_leaf(leaves + t * dim, dim)};
  size_t used = 0;
  for (size_t width = static_cast<size_t>(n); width > 1; width = (width + 1) / 2) {
    std::vector<std::pair<size_t, Hash>> next;
    for (size_t t = 0; t < cur.size(); ++t) {
      const size_t i = cur[t].first, sib = i ^ 1;
      Hash h;
      if (sib >= width) {
        h = cur[t].second;  // promoted
      } else if (t + 1 < cur.size() && cur[t + 1].first == sib) {
        h = hash_node(cur[t].second, cur[t + 1].second);
        ++t;
      } else {
        const Hash& other = proof[used++];
        h = (i & 1) ? hash_node(other, cur[t].second) : hash_node(cur[t].second, other);
      }
      next.push_back({i / 2, h});
    }
    cur.swap(next);
  }
  // Exactly one node remains, at index 0, and every proof hash was used.
  if (cur.size() != 1 || cur[0].first != 0 || used != proof_count) return false;
  return commit_root(n, dim, cur[0].second) == root;
}

}  // namespace gt
