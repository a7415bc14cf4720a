// Native tests of the core without Node: run under -fsanitize=address,undefined by
// run-sanitized.sh. Each check compares against an independent reference.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../../native/src/core/blake3_batch.h"
#include "../../native/src/core/canonical.h"
#include "../../native/src/core/canonical_step.h"
#include <unistd.h>

#include "../../native/src/core/cpu.h"
#include "../../native/src/core/dense_hopfield.h"
#include "../../native/src/core/optimizer.h"
#include "../../native/src/core/parallel.h"
#include "../../native/src/core/product_keys.h"
#include "../../native/src/core/errors.h"
#include "../../native/src/core/attention.h"
#include "../../native/src/core/hnsw_index.h"
#include "../../native/src/core/huge_pages.h"
#include "../../native/src/core/kernels.h"
#include "../../native/src/core/key_sketch.h"
#include "../../native/src/core/merkle.h"
#include "../../native/src/core/search.h"
#include "../../native/src/core/sparse_tensor.h"
#include "../../native/src/core/tensor_file.h"
#include "../../native/src/core/topk.h"
#include "../../native/third_party/blake3/blake3.h"

static int g_passed = 0, g_failed = 0;
#define CHECK(cond)                                                          \
  do {                                                                       \
    if (cond) {                                                              \
      ++g_passed;                                                            \
    } else {                                                                 \
      ++g_failed;                                                            \
      std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
    }                                                                        \
  } while (0)

template <typename F>
static bool throws_code(gt::ErrorCode code, F&& f) {
  try {
    f();
  } catch (const gt::Error& e) {
    return e.code() == code;
  }
  return false;
}

// A StorageError with this reason, whose message starts with the reason's token.
template <typename F>
static bool throws_reason(gt::StorageReason reason, F&& f) {
  try {
    f();
  } catch (const gt::StorageError& e) {
    const std::string token = std::string(gt::storage_reason_string(reason)) + ": ";
    return e.code() == gt::ErrorCode::Storage && e.storage_reason() == reason && std::string(e.reason()) + ": " == token &&
           std::string(e.what()).compare(0, token.size(), token) == 0;
  } catch (const std::exception&) {
  }
  return false;
}

static std::mt19937 rng(12345);
static std::vector<float> rand_vec(size_t n, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng);
  return v;
}
static std::vector<float> rand_ints(size_t n, int lo, int hi) {
  std::uniform_int_distribution<int> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(u(rng));
  return v;
}

static void test_kernels() {
  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    const gt::Kernels& K = gt::kernels_for(level);
    for (size_t n : {1, 2, 7, 8, 15, 16, 17, 33, 64, 65, 100, 784, 1001}) {
      auto a = rand_vec(n), b = rand_vec(n);
      double dot = 0, l2 = 0, mag = 0, sum = 0, smag = 0;
      for (size_t i = 0; i < n; ++i) {
        dot += double(a[i]) * b[i];
        mag += std::fabs(double(a[i]) * b[i]);
        l2 += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
        sum += a[i];
        smag += std::fabs(a[i]);
      }
      const double eps = std::ldexp(1.0, -24) * 2 * (n + 4);
      CHECK(std::fabs(K.dot(a.data(), b.data(), n) - dot) <= eps * mag + 1e-30);
      CHECK(std::fabs(K.l2sq(a.data(), b.data(), n) - l2) <= eps * l2 + 1e-30);
      CHECK(std::fabs(K.sum(a.data(), n) - sum) <= eps * smag + 1e-30);
      // The hnswlib-shaped wrappers are exactly 1 - dot and l2sq of the same level.
      CHECK(K.hnsw_ip(a.data(), b.data(), &n) == 1.0f - K.dot(a.data(), b.data(), n));
      CHECK(K.hnsw_l2(a.data(), b.data(), &n) == K.l2sq(a.data(), b.data(), n));
    }
    // Block kernels: every pair equals the 1x1 computation bit for bit, across the
    // tiles (4 x 4 on AVX-512, 4 x 2 on AVX2), the rows and queries left over, and the
    // 16-rows-at-once path of a query left over on short rows (AVX-512, d <= 128).
    for (const size_t d : {1, 16, 29, 64, 100, 128, 129, 784})
      for (const size_t nq : {9, 8, 1})
        for (const size_t nr : {11, 13, 37}) {
      auto Q = rand_vec(nq * d), R = rand_vec(nr * d);
      std::vector<float> out(nq * nr), one(1);
      K.dot_block(Q.data(), nq, R.data(), nr, d, out.data(), nr);
      bool same = true;
      for (size_t i = 0; i < nq; ++i)
        for (size_t j = 0; j < nr; ++j) {
          K.dot_block(Q.data() + i * d, 1, R.data() + j * d, 1, d, one.data(), 1);
          same = same && one[0] == out[i * nr + j];
        }
      CHECK(same);
      K.l2_block(Q.data(), nq, R.data(), nr, d, out.data(), nr);
      same = true;
      for (size_t i = 0; i < nq; ++i)
        for (size_t j = 0; j < nr; ++j) {
          K.l2_block(Q.data() + i * d, 1, R.data() + j * d, 1, d, one.data(), 1);
          same = same && one[0] == out[i * nr + j];
        }
      CHECK(same);
    }
  }
}

static void test_topk_and_search() {
  gt::TopK h(3, true);
  for (uint32_t id : {5u, 1u, 3u, 2u, 4u}) h.push(1.0f, id);
  h.push(NAN, 0);
  auto s = h.sorted();
  CHECK(s.size() == 3 && s[0].id == 1 && s[1].id == 2 && s[2].id == 3);

  // push_run (one compare per row once full) keeps exactly what push() on each keeps:
  // runs of few distinct values (ties), NaN, infinities and signed zeros, both orders,
  // k from 0 to above the row count, split into runs at arbitrary points.
  {
    const float vals[] = {0.0f, -0.0f, 1.0f, -1.0f, NAN, INFINITY, -INFINITY, 2.0f};
    uint64_t st = 12345;
    for (bool desc : {true, false})
      for (size_t k : {0, 1, 3, 10, 40}) {
        std::vector<float> sc(33);
        for (float& x : sc) {
          st = st * 6364136223846793005ULL + 1442695040888963407ULL;
          x = vals[(st >> 33) % 8];
        }
        gt::TopK one(k, desc), run(k, desc);
        for (size_t j = 0; j < sc.size(); ++j) one.push(sc[j], static_cast<uint32_t>(j));
        for (size_t a = 0; a < sc.size();) {
          const size_t len = std::min<size_t>(sc.size() - a, 1 + (a * 7) % 5);
          run.push_run(sc.data() + a, len, static_cast<uint32_t>(a));
          a += len;
        }
        const auto x = one.sorted(), y = run.sorted();
        bool same = x.size() == y.size();
        for (size_t i = 0; same && i < x.size(); ++i)
          same = x[i].id == y[i].id && std::memcmp(&x[i].score, &y[i].score, sizeof(float)) == 0;
        CHECK(same);
      }
  }

  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    for (size_t n : {1, 5, 64, 3000}) {
      const size_t d = 7;
      auto data = rand_ints(n * d, -2, 2);
      // 13 queries: each thread scans a range of rows and the heaps merge; 100: each
      // thread takes a range of queries (search.cc, kRowSplitQueries).
      for (const size_t nq : {13, 100}) {
      auto q = rand_ints(nq * d, -2, 2);
      for (gt::Metric m : {gt::Metric::IP, gt::Metric::L2}) {
        const size_t k = std::min<size_t>(n, 6);
        for (size_t threads : {1, 2, 3}) {
          gt::ExactSearchArgs a;
          a.data = data.data(); a.n = n; a.d = d; a.queries = q.data(); a.nq = nq; a.k = k;
          a.metric = m; a.threads = threads; a.kernels = &gt::kernels_for(level);
          std::vector<uint32_t> ids(nq * k);
          std::vector<float> sc(nq * k);
          gt::exact_search(a, ids.data(), sc.data());
          bool ok = true;
          for (size_t qi = 0; qi < nq; ++qi) {
            std::vector<std::pair<double, uint32_t>> ref;
            for (size_t r = 0; r < n; ++r) {
              double v = 0;
              for (size_t j = 0; j < d; ++j) {
                const double x = data[r * d + j], y = q[qi * d + j];
                v += m == gt::Metric::L2 ? (x - y) * (x - y) : x * y;
              }
              ref.push_back({m == gt::Metric::L2 ? v : -v, static_cast<uint32_t>(r)});
            }
            std::sort(ref.begin(), ref.end());
            for (size_t i = 0; i < k; ++i) ok = ok && ids[qi * k + i] == ref[i].second;
          }
          CHECK(ok);
        }
      }
      }
    }
  }
}

struct Recorder : gt::WriteListener {
  std::vector<std::vector<uint32_t>> changed;
  std::vector<std::pair<size_t, size_t>> appended;
  void on_rows_changed(const uint32_t* ids, size_t n) override { changed.emplace_back(ids, ids + n); }
  void on_rows_appended(size_t first, size_t n) override { appended.emplace_back(first, n); }
};

static void test_tensor() {
  {
    // first_non_finite (blocks of 64 tested branch-free, then scanned): one NaN, +Inf or
    // -Inf at every position of arrays around the block size, among extreme finite values.
    bool all_ok = true;
    const float bad[3] = {std::nanf(""), INFINITY, -INFINITY};
    for (size_t n : {0, 1, 63, 64, 65, 200}) {
      std::vector<float> a(n);
      for (size_t i = 0; i < n; ++i) a[i] = (i % 3 == 0) ? 3.4028235e38f : (i % 3 == 1) ? -1e-45f : -0.0f;
      all_ok = all_ok && gt::first_non_finite(a.data(), n) == n;
      for (size_t at = 0; at < n; ++at)
        for (float b : bad) {
          std::vector<float> c = a;
          c[at] = b;
          if (at + 7 < n) c[at + 7] = b;  // a second one later: the first is reported
          all_ok = all_ok && gt::first_non_finite(c.data(), n) == at;
        }
    }
    CHECK(all_ok);
  }
  const size_t d = 5;
  gt::SparseTensor t(d, 1);
  Recorder rec;
  t.add_listener(&rec);
  std::vector<float> ref;
  for (int i = 0; i < 30; ++i) {
    auto rows = rand_vec(d * 3);
    t.append(rows.data(), 3);
    ref.insert(ref.end(), rows.begin(), rows.end());
  }
  CHECK(t.size() == 90 && rec.appended.size() == 30 && rec.appended.back().first == 87);
  for (int step = 0; step < 500; ++step) {
    std::uniform_int_distribution<uint32_t> pick(0, static_cast<uint32_t>(t.size() - 1));
    std::vector<uint32_t> ids{pick(rng), pick(rng), pick(rng)};
    auto v = rand_vec(ids.size() * d, -0.1f, 0.1f);
    if (step % 2 == 0) {
      ids[2] = ids[0];  // repeated id: summed in order
      t.add(ids.data(), ids.size(), v.data());
      for (size_t i = 0; i < ids.size(); ++i)
        for (size_t j = 0; j < d; ++j) ref[ids[i] * d + j] += v[i * d + j];
    } else {
      if (ids[1] == ids[0] || ids[2] == ids[0] || ids[2] == ids[1]) continue;
      t.set(ids.data(), ids.size(), v.data());
      for (size_t i = 0; i < ids.size(); ++i) std::memcpy(&ref[ids[i] * d], &v[i * d], d * sizeof(float));
    }
    auto& last = rec.changed.back();
    CHECK(std::is_sorted(last.begin(), last.end()) && std::adjacent_find(last.begin(), last.end()) == last.end());
  }
  CHECK(std::memcmp(t.data(), ref.data(), ref.size() * sizeof(float)) == 0);

  const size_t changes = rec.changed.size();
  uint32_t bad_id = 90, dup[2] = {1, 1}, ok_id = 0;
  std::vector<float> two(2 * d, 1.0f), nan_row(d, 0.0f), big(2 * d, 3e38f);
  nan_row[3] = NAN;
  CHECK(throws_code(gt::ErrorCode::OutOfRange, [&] { t.set(&bad_id, 1, two.data()); }));
  CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { t.set(dup, 2, two.data()); }));
  CHECK(throws_code(gt::ErrorCode::NonFinite, [&] { t.add(&ok_id, 1, nan_row.data()); }));
  CHECK(throws_code(gt::ErrorCode::NonFinite, [&] { t.append(nan_row.data(), 1); }));
  uint32_t same[2] = {0, 0};
  CHECK(throws_code(gt::ErrorCode::NonFinite, [&] { t.add(same, 2, big.data()); t.add(same, 2, big.data()); }));
  CHECK(throws_code(gt::ErrorCode::OutOfRange, [&] { std::vector<float> o(d); t.gather(&bad_id, 1, o.data()); }));
  CHECK(throws_code(gt::ErrorCode::OutOfRange, [&] { gt::SparseTensor z(0, 1); }));
  CHECK(rec.changed.size() <= changes + 1);  // only the first (finite) big add may have landed
}

static void test_blake3_and_hnsw() {
  // Official BLAKE3 test vector: the empty input.
  uint8_t out[32];
  blake3_hasher h;
  blake3_hasher_init(&h);
  blake3_hasher_finalize(&h, out, 32);
  const uint8_t empty[4] = {0xaf, 0x13, 0x49, 0xb9};
  CHECK(std::memcmp(out, empty, 4) == 0);

  // HNSW: recall against exact search, and after writes every moved row is still found.
  const size_t n = 2000, d = 16, k = 10;
  gt::SparseTensor t(d, 0);
  auto data = rand_vec(n * d);
  t.append(data.data(), n);
  gt::HnswParams p;
  p.metric = gt::Metric::L2;
  gt::HnswIndex index(t, p, 2);
  auto recall = [&](size_t queries) {
    size_t hit = 0;
    for (size_t qi = 0; qi < queries; ++qi) {
      auto q = rand_vec(d);
      std::vector<uint32_t> a(k), b(k);
      std::vector<float> sa(k), sb(k);
      index.search(q.data(), k, 64, a.data(), sa.data());
      gt::ExactSearchArgs ea;
      ea.data = t.data(); ea.n = t.size(); ea.d = d; ea.queries = q.data(); ea.nq = 1; ea.k = k;
      ea.metric = gt::Metric::L2; ea.threads = 1; ea.kernels = &gt::kernels();
      gt::exact_search(ea, b.data(), sb.data());
      for (uint32_t x : a) hit += std::count(b.begin(), b.end(), x);
    }
    return double(hit) / double(queries * k);
  };
  CHECK(recall(50) >= 0.95);
  // Move 300 rows far away: each is dirty and is found by a query equal to its new value.
  bool found = true;
  for (uint32_t id = 0; id < 300; ++id) {
    auto v = rand_vec(d, 5.0f, 6.0f);
    t.set(&id, 1, v.data());
    uint32_t got;
    float s;
    index.search(v.data(), 1, 16, &got, &s);
    found = found && got == id && s == 0.0f;
  }
  CHECK(found);
  auto extra = rand_vec(d * 5, 9.0f, 9.5f);
  t.append(extra.data(), 5);
  uint32_t got5[5];
  float s5[5];
  index.search(extra.data(), 1, 16, got5, s5);
  CHECK(got5[0] == n);
  const size_t before = index.stats().dirty;
  CHECK(index.refresh(before, 2) == before && index.stats().dirty == 0);
  CHECK(recall(50) >= 0.9);
}


// The batched keyed hash (one chunk: hash_many over the inputs; several chunks: chunk
// j of 16 inputs at once, then their chunk trees level by level) against the official
// streaming hasher, input by input; and the blocked tree build against a reference
// built level by level from single hashes, across the 2048-row block edges.
static void test_merkle_batched() {
  std::mt19937 rng(2424);  // its own generator: the shared one's sequence stays as later tests expect
  auto rand_vec = [&](size_t n) {
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };
  const gt::Hash& key = gt::merkle_keys().leaf;
  bool same = true;
  for (size_t len : {64, 128, 960, 1024, 1088, 2048, 2112, 3072, 3136, 4096, 5184, 7168, 16384, 33 * 1024 + 512,
                     64 * 1024}) {
    for (size_t n : {1, 3, 16, 17, 40}) {
      std::vector<uint8_t> bytes(n * len + 7);
      for (auto& b : bytes) b = static_cast<uint8_t>(rng());
      std::vector<const uint8_t*> ptrs(n);
      for (size_t i = 0; i < n; ++i) ptrs[i] = bytes.data() + 7 * (i % 2) + (n - 1 - i) * len;  // odd offsets, reversed
      std::vector<uint8_t> out(n * 32);
      gt_blake3_keyed_many(key.data(), ptrs.data(), n, len, out.data());
      for (size_t i = 0; i < n; ++i) {
        blake3_hasher h;
        blake3_hasher_init_keyed(&h, key.data());
        blake3_hasher_update(&h, ptrs[i], len);
        uint8_t want[32];
        blake3_hasher_finalize(&h, want, 32);
        if (std::memcmp(want, out.data() + i * 32, 32) != 0) {
          std::fprintf(stderr, "  keyed_many differs: len %zu n %zu input %zu\n", len, n, i);
          same = false;
        }
      }
    }
  }
  CHECK(same);
  bool tree_same = true;
  for (size_t d : {16, 100, 784}) {
    for (size_t n : {1, 2, 3, 2047, 2048, 2049, 4096 + 2048 + 5}) {
      if (d == 784 && n > 2049) continue;  // keeps the sanitized run short
      auto data = rand_vec(n * d);
      std::vector<std::vector<gt::Hash>> ref(1);
      for (size_t i = 0; i < n; ++i) ref[0].push_back(gt::hash_leaf(data.data() + i * d, d));
      while (ref.back().size() > 1) {
        const auto& c = ref.back();
        std::vector<gt::Hash> p;
        for (size_t j = 0; 2 * j < c.size(); ++j) p.push_back(2 * j + 1 < c.size() ? gt::hash_node(c[2 * j], c[2 * j + 1]) : c[2 * j]);
        ref.push_back(std::move(p));
      }
      for (size_t threads : {1, 2}) {
        const auto built = gt::build_merkle_levels(data.data(), n, d, threads);
        bool ok = built.size() == ref.size();
        for (size_t l = 0; ok && l < ref.size(); ++l) ok = std::equal(ref[l].begin(), ref[l].end(), built[l].begin(), built[l].end());
        if (!ok) std::fprintf(stderr, "  tree differs: d %zu n %zu threads %zu\n", d, n, threads);
        tree_same = tree_same && ok;
      }
    }
  }
  // A level of >= 1 MiB (mapped storage): 40,000 leaves.
  {
    const size_t d = 16, n = 40000;
    auto data = rand_vec(n * d);
    const auto built = gt::build_merkle_levels(data.data(), n, d, 2);
    bool ok = true;
    for (size_t i = 0; i < n; i += 997) ok = ok && built[0][i] == gt::hash_leaf(data.data() + i * d, d);
    ok = ok && built[1][n / 2 - 1] == gt::hash_node(built[0][n - 2], built[0][n - 1]);
    tree_same = tree_same && ok;
  }
  CHECK(tree_same);
}

static void test_merkle() {
  // The tree follows every write: root == a fresh build after random writes and appends.
  for (size_t d : {3, 16}) {
    gt::SparseTensor t(d, 0);
    auto init = rand_vec(7 * d);
    t.append(init.data(), 7);
    gt::MerkleTree tree(t, 2);
    bool same = true;
    for (int step = 0; step < 600; ++step) {
      std::uniform_int_distribution<uint32_t> pick(0, static_cast<uint32_t>(t.size() - 1));
      if (step % 10 == 0) {
        auto rows = rand_vec(d * (1 + step % 5));
        t.append(rows.data(), 1 + step % 5);
      } else {
        std::vector<uint32_t> ids{pick(rng), pick(rng)};
        auto v = rand_vec(ids.size() * d, -0.1f, 0.1f);
        t.add(ids.data(), ids.size(), v.data());
      }
      if (step % 50 == 0 || step == 599) {
        const auto fresh = gt::build_merkle_levels(t.data(), t.size(), d, 1);
        same = same && tree.root() == gt::commit_root(t.size(), static_cast<uint32_t>(d), fresh.back()[0]);
      }
    }
    CHECK(same);
    // Multiproofs verify; a flipped proof bit, a wrong N, unsorted ids do not.
    std::vector<uint32_t> ids{0, 5, 6, static_cast<uint32_t>(t.size() - 1)};
    auto proof = tree.prove(ids.data(), ids.size());
    CHECK(proof.size() == gt::multiproof_size(t.size(), ids.data(), ids.size()));
    std::vector<float> leaves(ids.size() * d);
    t.gather(ids.data(), ids.size(), leaves.data());
    const gt::Hash root = tree.root();
    CHECK(gt::verify_multiproof(root, t.size(), static_cast<uint32_t>(d), ids.data(), ids.size(), leaves.data(),
                                proof.data(), proof.size()));
    bool all_rejected = true;
    for (size_t h = 0; h < proof.size(); ++h)
      for (int bit = 0; bit < 256; bit += 37) {
        auto bad = proof;
        bad[h][bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
        all_rejected = all_rejected && !gt::verify_multiproof(root, t.size(), static_cast<uint32_t>(d), ids.data(),
                                                              ids.size(), leaves.data(), bad.data(), bad.size());
      }
    CHECK(all_rejected);
    bool wrong_n_rejected;
    try {
      wrong_n_rejected = !gt::verify_multiproof(root, t.size() + 1, static_cast<uint32_t>(d), ids.data(), ids.size(),
                                                leaves.data(), proof.data(), proof.size());
    } catch (const gt::Error&) {
      wrong_n_rejected = true;  // a malformed proof for that N is a rejection too
    }
    CHECK(wrong_n_rejected);
    std::vector<uint32_t> unsorted{5, 0};
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { tree.prove(unsorted.data(), 2); }));
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] {
      gt::verify_multiproof(root, t.size(), static_cast<uint32_t>(d), ids.data(), ids.size(), leaves.data(),
                            proof.data(), proof.size() - 1);
    }));
  }
}

static void test_optimizer() {
  const size_t d = 3;
  gt::SparseTensor t(d, 0);
  std::vector<float> init = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  t.append(init.data(), 3);
  gt::OptimizerParams p;
  p.kind = gt::OptimizerKind::SGD;
  p.lr = 0.5f;
  gt::SparseOptimizer opt(t, p);
  // Row 2 twice (summed), row 0 once; row 1 untouched.
  const uint32_t ids[] = {2, 0, 2};
  const float g[] = {1, 1, 1, 2, 2, 2, 3, 3, 3};
  CHECK(opt.step(ids, 3, g) == 2);
  CHECK(t.row(0)[0] == 1 - 0.5f * 2 && t.row(1)[0] == 4 && t.row(2)[2] == 9 - 0.5f * 4);
  // Ids in non-decreasing order with a repeat (summed, not read in place as distinct
  // rows), then strictly ascending ids (read in place).
  {
    gt::SparseTensor u(2, 0);
    const float u0[] = {10, 20, 30, 40, 50, 60};
    u.append(u0, 3);
    gt::SparseOptimizer sgd(u, p);
    const uint32_t rep[] = {0, 1, 1};
    const float gr[] = {2, 4, 1, 1, 3, 5};
    CHECK(sgd.step(rep, 3, gr) == 2);
    CHECK(u.row(0)[0] == 9 && u.row(0)[1] == 18 && u.row(1)[0] == 28 && u.row(1)[1] == 37 && u.row(2)[0] == 50);
    const uint32_t asc[] = {0, 2};
    const float ga[] = {2, 2, 4, 8};
    CHECK(sgd.step(asc, 2, ga) == 2);
    CHECK(u.row(0)[0] == 8 && u.row(1)[0] == 28 && u.row(2)[0] == 48 && u.row(2)[1] == 56);
  }
  // A non-finite result is refused and changes nothing.
  const float huge[] = {3e38f, 3e38f, 3e38f, 3e38f, 3e38f, 3e38f};
  const uint32_t twice[] = {1, 1};
  bool threw = false;
  try {
    opt.step(twice, 2, huge);
  } catch (const gt::Error&) {
    threw = true;
  }
  CHECK(threw && t.row(1)[0] == 4 && opt.steps() == 1);
  const uint32_t bad[] = {3};
  threw = false;
  try {
    opt.step(bad, 1, g);
  } catch (const gt::Error&) {
    threw = true;
  }
  CHECK(threw);
  // Adam: the first step moves each coordinate by lr (sign of the gradient).
  gt::OptimizerParams a;
  a.lr = 0.1f;
  gt::SparseOptimizer adam(t, a);
  const uint32_t one[] = {1};
  const float g1[] = {5, -5, 0.5f};
  adam.step(one, 1, g1);
  CHECK(std::fabs(t.row(1)[0] - 3.9f) < 1e-5f && std::fabs(t.row(1)[1] - 5.1f) < 1e-5f);
  // A finite gradient whose square overflows v: refused whole (row 0 is fine, row 1 is not).
  float m0[6], v0[6], m1[6], v1[6];
  uint32_t s0[2], s1[2];
  double k0[2], k1[2];
  const uint32_t both[] = {0, 1};
  adam.state(both, 2, m0, v0, s0, k0);
  const float w00 = t.row(0)[0], w10 = t.row(1)[0];
  const float over[] = {1, 1, 1, 1e30f, 1, 1};
  threw = false;
  try {
    adam.step(both, 2, over);
  } catch (const gt::Error& e) {
    threw = e.code() == gt::ErrorCode::NonFinite;
  }
  adam.state(both, 2, m1, v1, s1, k1);
  CHECK(threw && adam.steps() == 1 && t.row(0)[0] == w00 && t.row(1)[0] == w10);
  CHECK(std::equal(m0, m0 + 6, m1) && std::equal(v0, v0 + 6, v1) && s0[0] == s1[0] && s0[1] == s1[1]);
  // restore() undoes a step taken: values and state as they were.
  float w[6];
  std::copy(t.row(0), t.row(0) + 3, w);
  std::copy(t.row(1), t.row(1) + 3, w + 3);
  const float fine[] = {1, 2, 3, 4, 5, 6};
  adam.step(both, 2, fine);
  CHECK(adam.steps() == 2 && t.row(0)[0] != w00);
  adam.restore(both, 2, w, m0, v0, s0, k0, 1, 0.0);
  adam.state(both, 2, m1, v1, s1, k1);
  CHECK(adam.steps() == 1 && t.row(0)[0] == w00 && t.row(1)[0] == w10 && std::equal(v0, v0 + 6, v1) && s1[1] == s0[1]);
}

static void test_dense_hopfield() {
  const size_t B = 3, d = 5, N = 2500, dv = 4;  // more than two chunks of keys
  auto Q = rand_vec(B * d), K = rand_vec(N * d), V = rand_vec(N * dv), dy = rand_vec(B * dv);
  for (gt::Metric m : {gt::Metric::IP, gt::Metric::Cosine, gt::Metric::L2}) {
    gt::DenseHopfieldArgs a;
    a.Q = Q.data(); a.B = B; a.d = d; a.K = K.data(); a.V = V.data(); a.N = N; a.dv = dv;
    a.beta = 1.3f; a.metric = m; a.threads = 2; a.kernels = &gt::kernels();
    std::vector<float> y(B * dv), lse(B);
    gt::dense_hopfield_forward(a, y.data(), lse.data());
    // Naive double reference.
    auto sim = [&](size_t q, size_t j) {
      double dot = 0, qq = 0, kk = 0, l2 = 0;
      for (size_t t = 0; t < d; ++t) {
        const double x = Q[q * d + t], k = K[j * d + t];
        dot += x * k; qq += x * x; kk += k * k; l2 += (x - k) * (x - k);
      }
      return m == gt::Metric::IP ? dot : m == gt::Metric::L2 ? -l2 : dot / std::sqrt(qq * kk);
    };
    bool ok = true;
    for (size_t q = 0; q < B; ++q) {
      double mx = -1e300, z = 0;
      for (size_t j = 0; j < N; ++j) mx = std::max(mx, 1.3 * sim(q, j));
      std::vector<double> acc(dv, 0.0);
      for (size_t j = 0; j < N; ++j) {
        const double w = std::exp(1.3 * sim(q, j) - mx);
        z += w;
        for (size_t t = 0; t < dv; ++t) acc[t] += w * V[j * dv + t];
      }
      for (size_t t = 0; t < dv; ++t) ok = ok && std::fabs(acc[t] / z - y[q * dv + t]) < 1e-4;
      ok = ok && std::fabs(mx + std::log(z) - lse[q]) < 1e-3;
    }
    CHECK(ok);
    std::vector<float> dQ(B * d), dK(N * d), dV(N * dv);
    double dbeta = 0;
    gt::dense_hopfield_backward(a, y.data(), lse.data(), dy.data(), dQ.data(), dK.data(), dV.data(), &dbeta);
    // Finite difference on one key coordinate and on beta (loss = dy . y).
    auto loss = [&]() {
      std::vector<float> yy(B * dv), ll(B);
      gt::dense_hopfield_forward(a, yy.data(), ll.data());
      double s = 0;
      for (size_t i = 0; i < B * dv; ++i) s += double(dy[i]) * yy[i];
      return s;
    };
    const size_t at = 1234 * d + 2;
    const float k0 = K[at], eps = 1e-2f;
    K[at] = k0 + eps; const double lp = loss();
    K[at] = k0 - eps; const double lm = loss();
    K[at] = k0;
    CHECK(std::fabs((lp - lm) / (2 * eps) - dK[at]) < 1e-3 + 2e-2 * std::fabs(dK[at]));
    a.beta = 1.3f + eps; const double bp = loss();
    a.beta = 1.3f - eps; const double bm = loss();
    CHECK(std::fabs((bp - bm) / (2 * eps) - dbeta) < 1e-3 + 2e-2 * std::fabs(dbeta));
  }
}

static void test_product_keys() {
  const size_t n = 9, d1 = 2, d2 = 3, nq = 4;
  auto K1 = rand_ints(n * d1, -1, 1), K2 = rand_ints(n * d2, -1, 1), Q = rand_ints(nq * (d1 + d2), -2, 2);
  for (size_t k : {size_t{1}, size_t{4}, n, 3 * n, n * n}) {
    gt::ProductKeyArgs a;
    a.K1 = K1.data(); a.K2 = K2.data(); a.n = n; a.d1 = d1; a.d2 = d2;
    a.queries = Q.data(); a.nq = nq; a.k = k; a.threads = 2; a.kernels = &gt::kernels();
    std::vector<uint32_t> ids(nq * k);
    std::vector<double> sc(nq * k);
    gt::product_key_search(a, ids.data(), sc.data());
    bool ok = true;
    for (size_t q = 0; q < nq; ++q) {
      // Brute force over all n^2 concatenated keys (integer data: exact sums, real ties).
      std::vector<std::pair<double, uint32_t>> all;
      const float* qq = Q.data() + q * (d1 + d2);
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) {
          double s = 0;
          for (size_t t = 0; t < d1; ++t) s += double(qq[t]) * K1[i * d1 + t];
          for (size_t t = 0; t < d2; ++t) s += double(qq[d1 + t]) * K2[j * d2 + t];
          all.push_back({-s, static_cast<uint32_t>(i * n + j)});
        }
      std::sort(all.begin(), all.end());
      for (size_t t = 0; t < k; ++t) ok = ok && ids[q * k + t] == all[t].second && sc[q * k + t] == -all[t].first;
    }
    CHECK(ok);
  }
}

static void test_canonical() {
  namespace c = gt::canonical;
  // exp and log1p against libm (an independent reference), across the whole range.
  double worst_exp = 0, worst_log = 0;
  for (int i = 0; i <= 200000; ++i) {
    const double x = -745.0 + 1454.6 * i / 200000.0;
    const double ref = std::exp(x);
    if (ref > 2.3e-308 && std::isfinite(ref)) worst_exp = std::max(worst_exp, std::fabs(c::exp(x) - ref) / ref);
    const double y = -0.999999 * i / 200000.0;
    if (y != 0.0) worst_log = std::max(worst_log, std::fabs(c::log1p_neg(y) - std::log1p(y)) / std::fabs(std::log1p(y)));
  }
  CHECK(worst_exp < 4e-16);
  CHECK(worst_log < 1e-15);  // a few ulps: u = x / (2 + x) rounds twice
  CHECK(c::exp(-746.0) == 0.0);
  CHECK(std::isinf(c::exp(710.0)));
  CHECK(c::exp(-740.0) > 0.0);
  CHECK(std::isnan(c::log1p_neg(0.5)) && std::isnan(c::log1p_neg(-1.0)));
  for (uint64_t t : {uint64_t{0}, uint64_t{1}, uint64_t{5}, uint64_t{1000}, uint64_t{1} << 40})
    CHECK(std::fabs(c::powi(0.999, t) - std::pow(0.999, static_cast<double>(t))) <= 1e-12 * std::pow(0.999, static_cast<double>(t)) + 1e-300);
  // Softmax weights sum to one; a zero vector scores 0 under cosine.
  std::vector<float> rows = {1, 0, 0, 0, 3, 4};
  std::vector<double> q = {0.6, 0.8};
  auto s = c::scores(q.data(), rows.data(), 1, 3, 2, gt::Metric::Cosine);
  CHECK(s[0] == 0.6 && s[1] == 0.0 && std::fabs(s[2] - 1.0) < 1e-15);
  std::vector<float> ones = {1, 1, 1};
  auto y = c::mix(s.data(), 2.0f, ones.data(), 1, 3, 1);
  CHECK(std::fabs(y[0] - 1.0) < 1e-15);
  // Product keys against a brute force over all n^2 slots (integer data: real ties), k up to n^2.
  const size_t n = 7, d1 = 2, d2 = 3, B = 3;
  auto T1 = rand_ints(n * d1, -1, 1), T2 = rand_ints(n * d2, -1, 1), Qf = rand_ints(B * (d1 + d2), -2, 2);
  std::vector<double> Q(Qf.begin(), Qf.end());
  for (size_t k : {size_t{1}, size_t{5}, n, 2 * n, n * n}) {
    std::vector<uint32_t> ids(B * k);
    std::vector<double> sc(B * k);
    c::product_keys(Q.data(), T1.data(), T2.data(), n, d1, d2, B, k, ids.data(), sc.data(), 2);
    bool ok = true;
    for (size_t b = 0; b < B; ++b) {
      std::vector<std::pair<double, uint32_t>> all;
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) {
          double s1 = 0, s2 = 0;
          for (size_t t = 0; t < d1; ++t) s1 = s1 + Q[b * (d1 + d2) + t] * T1[i * d1 + t];
          for (size_t t = 0; t < d2; ++t) s2 = s2 + Q[b * (d1 + d2) + d1 + t] * T2[j * d2 + t];
          all.push_back({-(s1 + s2), static_cast<uint32_t>(i * n + j)});
        }
      std::sort(all.begin(), all.end());
      for (size_t t = 0; t < k; ++t) ok = ok && ids[b * k + t] == all[t].second && sc[b * k + t] == -all[t].first;
    }
    CHECK(ok);
  }
  // Rounding ties: sub-scores 1 + r 2^-23 and 2^30 m sum to at most two f64 values per m;
  // the order must follow the exact sum (a long double holds it), then the slot id.
  {
    const size_t m = 8;
    std::vector<float> U1(m), U2(m);
    const int mult[m] = {3, 1, 3, 0, 2, 1, 3, 2};
    for (size_t r = 0; r < m; ++r) U1[r] = 1.0f + static_cast<float>((r * 5) % m) * std::ldexp(1.0f, -23);
    for (size_t j = 0; j < m; ++j) U2[j] = std::ldexp(1.0f, 15) * static_cast<float>(mult[j]);
    std::vector<double> q2 = {1.0, std::ldexp(1.0, 15)};
    std::vector<std::pair<long double, uint32_t>> all;
    for (size_t i = 0; i < m; ++i)
      for (size_t j = 0; j < m; ++j)
        all.push_back({-(static_cast<long double>(U1[i]) + static_cast<long double>(q2[1] * U2[j])), static_cast<uint32_t>(i * m + j)});
    std::sort(all.begin(), all.end());
    bool ok = true;
    for (size_t k = 1; k <= m * m; ++k) {
      std::vector<uint32_t> ids(k);
      std::vector<double> sc(k);
      c::product_keys(q2.data(), U1.data(), U2.data(), m, 1, 1, 1, k, ids.data(), sc.data(), 1);
      for (size_t t = 0; t < k; ++t) ok = ok && ids[t] == all[t].second;
    }
    CHECK(ok);
  }
  // Screened selection (f32 kernels + error bound, docs/product-keys.md) equals the
  // unscreened canonical one bit for bit at every level, and actually screens; states
  // beyond f32 range and a table near the f32 maximum fall back.
  {
    // Its own generator: the later tests' data stay what they were.
    std::mt19937 gen(777);
    const auto vec = [&gen](size_t len) {
      std::uniform_real_distribution<float> u(-1, 1);
      std::vector<float> v(len);
      for (auto& x : v) x = u(gen);
      return v;
    };
    const size_t m = 300, e1 = 7, e2 = 9, Bq = 6, kq = 5;
    auto V1 = vec(m * e1), V2 = vec(m * e2), Qv = vec(Bq * (e1 + e2));
    std::vector<double> Q2(Qv.begin(), Qv.end());
    for (size_t j = 0; j < e1 + e2; ++j) {
      Q2[1 * (e1 + e2) + j] *= 1e200;  // state 1: not an f32
      Q2[2 * (e1 + e2) + j] *= 1e-300;  // state 2: underflows to 0 in f32
    }
    auto W1 = V1;
    for (auto& x : W1) x *= 3e38f;  // products overflow f32
    bool same = true, screened = true, fell_back = true;
    for (const auto* T1v : {&V1, &W1}) {
      std::vector<uint32_t> ref_ids(Bq * kq), ids(Bq * kq);
      std::vector<double> ref_sc(Bq * kq), sc(Bq * kq);
      size_t rows = 0;
      c::product_keys(Q2.data(), T1v->data(), V2.data(), m, e1, e2, Bq, kq, ref_ids.data(), ref_sc.data(), 1, nullptr, &rows);
      same = same && rows == 2 * m * Bq;
      for (gt::SimdLevel level : gt::supported_simd_levels()) {
        c::product_keys(Q2.data(), T1v->data(), V2.data(), m, e1, e2, Bq, kq, ids.data(), sc.data(), 2, &gt::kernels_for(level), &rows);
        same = same && ids == ref_ids && std::memcmp(sc.data(), ref_sc.data(), sc.size() * sizeof(double)) == 0;
        if (T1v == &V1) screened = screened && rows < m * Bq + 2 * m * 2;  // states 1, 2 in full
        else fell_back = fell_back && rows >= m * Bq;  // table 1 in full for every state
      }
    }
    // Many states (f32 scores from gemm_acc over the transposed tables), the k-th f32
    // score from groups of 8 rows, of 4, or from all rows, rows past the last group.
    for (const auto& sh : {std::array<size_t, 5>{300, 7, 9, 5, 30}, std::array<size_t, 5>{66, 4, 4, 8, 24},
                           std::array<size_t, 5>{123, 5, 3, 30, 25}}) {
      const size_t mm = sh[0], f1 = sh[1], f2 = sh[2], kk = sh[3], BB = sh[4];
      auto P1 = vec(mm * f1), P2 = vec(mm * f2), Pq = vec(BB * (f1 + f2));
      std::vector<double> PQ(Pq.begin(), Pq.end());
      std::vector<uint32_t> ref_ids(BB * kk), ids(BB * kk);
      std::vector<double> ref_sc(BB * kk), sc(BB * kk);
      size_t rows = 0;
      c::product_keys(PQ.data(), P1.data(), P2.data(), mm, f1, f2, BB, kk, ref_ids.data(), ref_sc.data(), 1, nullptr, &rows);
      for (gt::SimdLevel level : gt::supported_simd_levels()) {
        c::product_keys(PQ.data(), P1.data(), P2.data(), mm, f1, f2, BB, kk, ids.data(), sc.data(), 2, &gt::kernels_for(level), &rows);
        same = same && ids == ref_ids && std::memcmp(sc.data(), ref_sc.data(), sc.size() * sizeof(double)) == 0;
        screened = screened && rows < 2 * mm * BB;
      }
    }
    CHECK(same);
    CHECK(screened);
    CHECK(fell_back);
    // abs_max_bits against the largest |bits| one value at a time: every length to 70,
    // the maximum at every position, values whose f32 sum overflows, subnormals, -0,
    // infinities and NaNs anywhere (vector lanes and the tail).
    {
      bool ok = true;
      const auto ref = [](const std::vector<float>& v) {
        uint32_t r = 0;
        for (float x : v) {
          uint32_t b;
          std::memcpy(&b, &x, sizeof b);
          r = std::max(r, b & 0x7fffffffu);
        }
        return r;
      };
      for (size_t len = 0; len <= 70; ++len)
        for (size_t at = 0; at < std::max<size_t>(len, 1); ++at)
          for (int kind = 0; kind < 6; ++kind) {
            std::vector<float> v = vec(len);
            if (kind == 1) for (auto& x : v) x *= 3e38f;            // sums overflow f32
            if (kind == 2) for (auto& x : v) x *= 1e-40f;           // subnormal
            if (len == 0) {
              ok = ok && c::abs_max_bits(v.data(), 0) == 0;
              continue;
            }
            if (kind == 0) v[at] = -7.5f;
            if (kind == 3) v[at] = -0.0f, std::fill(v.begin(), v.end(), -0.0f);
            if (kind == 4) v[at] = (at % 2) ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
            if (kind == 5) v[at] = std::numeric_limits<float>::quiet_NaN();
            ok = ok && c::abs_max_bits(v.data(), v.size()) == ref(v);
          }
      CHECK(ok);
    }
    CHECK(c::abs_max_bits(V1.data(), 0) == 0);
    V1[17] = -std::numeric_limits<float>::infinity();
    CHECK(c::abs_max_bits(V1.data(), V1.size()) == 0x7f800000u);
    V1[3] = std::numeric_limits<float>::quiet_NaN();
    CHECK(c::abs_max_bits(V1.data(), V1.size()) > 0x7f800000u);
  }
}

// Held keys (canonical::exact_topk): the screened selection gives the bits of scoring
// every key in f64 at every SIMD level and metric, scores few keys on random data, and
// scores every key for states beyond f32 range or tables it cannot bound.
static void test_exact_topk() {
  namespace c = gt::canonical;
  std::mt19937 gen(4242);
  std::uniform_real_distribution<float> u(-1, 1);
  const size_t n = 400, d = 13, B = 5, k = 7;
  std::vector<float> K(n * d), Qf(B * d);
  for (auto& x : K) x = u(gen);
  for (auto& x : Qf) x = u(gen);
  std::vector<double> Q(Qf.begin(), Qf.end());
  for (size_t j = 0; j < d; ++j) Q[3 * d + j] *= 1e200;  // state 3: not an f32: scored in full
  for (size_t i = 0; i < d; ++i) K[5 * d + i] = 0.0f;      // a zero key (cosine 0)
  bool same = true, few = true;
  for (gt::Metric m : {gt::Metric::IP, gt::Metric::Cosine, gt::Metric::L2}) {
    std::vector<uint32_t> ref_ids(B * k), ids(B * k);
    std::vector<double> ref_sc(B * k), sc(B * k);
    size_t rows = 0;
    c::exact_topk(Q.data(), K.data(), n, d, B, k, m, ref_ids.data(), ref_sc.data(), 1, nullptr, &rows);
    same = same && rows == n * B;
    for (gt::SimdLevel level : gt::supported_simd_levels()) {
      c::exact_topk(Q.data(), K.data(), n, d, B, k, m, ids.data(), sc.data(), 2, &gt::kernels_for(level), &rows);
      same = same && ids == ref_ids && std::memcmp(sc.data(), ref_sc.data(), sc.size() * sizeof(double)) == 0;
      few = few && rows < n + (B - 1) * n / 4;
    }
  }
  CHECK(same);
  CHECK(few);
}

// Tensor files: save, open, train, checkpoint, "crash" (drop the handle without
// closing), reopen: the rows, the root (against a fresh in-memory rebuild) and the
// optimizer state must equal an in-memory run of the same steps; damaged headers and
// logs are refused with ErrorCode::Storage.
static void test_tensor_file() {
  const size_t d = 8, n = 100;
  char tmpl[] = "/tmp/gt-native-XXXXXX";
  const char* dir = mkdtemp(tmpl);
  CHECK(dir != nullptr);
  if (dir == nullptr) return;
  const std::string path = std::string(dir) + "/t.gtt";
  const std::vector<float> init = rand_vec(n * d);
  gt::FileCreateSource src;
  src.data = init.data();
  gt::TensorFile::create(path, n, d, true, src, 2);

  gt::SparseTensor ref(d, 0);
  ref.append(init.data(), n);
  gt::OptimizerParams p;
  p.lr = 0.05f;
  p.weight_decay = 0.1f;
  gt::SparseOptimizer ref_opt(ref, p);
  // Members destroyed in reverse order: the file and the tree unregister from a live tensor.
  struct Opened {
    std::unique_ptr<gt::SparseTensor> t;
    std::unique_ptr<gt::MerkleTree> tree;
    std::unique_ptr<gt::TensorFile> f;
  };
  auto open = [&](bool writable, bool verify) {
    gt::FileOpenOptions o;
    o.writable = writable;
    o.verify = verify;
    o.threads = 2;
    Opened r;
    std::unique_ptr<gt::TensorFile> f = gt::TensorFile::open(path, o);
    r.t = std::make_unique<gt::SparseTensor>(f->dim(), f->rows(), f->values_storage(), false);
    r.tree = std::make_unique<gt::MerkleTree>(*r.t, f->levels());
    f->recover(*r.t, *r.tree);
    r.f = std::move(f);
    return r;
  };
  {
    Opened o = open(true, false);
    gt::TensorFile* f = o.f.get();
    gt::SparseTensor* t = o.t.get();
    gt::MerkleTree* tree = o.tree.get();
    gt::SparseOptimizer opt(*t, p, f->state());
    for (int s = 0; s < 6; ++s) {
      const uint32_t ids[] = {static_cast<uint32_t>(s * 7 % n), static_cast<uint32_t>((s * 13 + 5) % n), 3};
      const std::vector<float> g = rand_vec(3 * d);
      opt.step(ids, 3, g.data());
      ref_opt.step(ids, 3, g.data());
      CHECK(f->checkpoint(*tree, opt.steps(), opt.log_decay(), s == 2 ? 1 : 0) == static_cast<uint64_t>(s + 1));
    }
    CHECK(f->info().compacted_seq == 3);
    opt.step(std::vector<uint32_t>{1}.data(), 1, rand_vec(d).data());  // not checkpointed: lost in the "crash"
  }  // dropped without close(): the header says "not clean"
  gt::MerkleTree ref_tree(ref, 1);
  {
    Opened o = open(false, false);
    gt::TensorFile* f = o.f.get();
    gt::SparseTensor* t = o.t.get();
    gt::MerkleTree* tree = o.tree.get();
    const gt::FileInfo info = f->info();
    CHECK(info.seq == 6 && info.replayed_records == 3 && !info.was_clean && info.verified);
    CHECK(std::memcmp(t->data(), ref.data(), n * d * sizeof(float)) == 0);
    CHECK(tree->root() == ref_tree.root());
    gt::SparseOptimizer opt(*t, p, f->state());
    std::vector<uint32_t> all(n);
    for (size_t i = 0; i < n; ++i) all[i] = static_cast<uint32_t>(i);
    std::vector<float> m1(n * d), v1(n * d), m2(n * d), v2(n * d);
    std::vector<uint32_t> s1(n), s2(n);
    std::vector<double> k1(n), k2(n);
    opt.state(all.data(), n, m1.data(), v1.data(), s1.data(), k1.data());
    ref_opt.state(all.data(), n, m2.data(), v2.data(), s2.data(), k2.data());
    CHECK(m1 == m2 && v1 == v2 && s1 == s2 && k1 == k2 && opt.steps() == ref_opt.steps());
    CHECK(throws_reason(gt::StorageReason::ReadOnly, [&] { f->checkpoint(*tree, 0, 0.0, 0); }));
  }
  // A flipped header byte; a flipped value under verify; a damaged log record.
  auto flip = [&](const std::string& file, long off) {
    std::FILE* fp = std::fopen(file.c_str(), "r+b");
    std::fseek(fp, off, SEEK_SET);
    const int c = std::fgetc(fp);
    std::fseek(fp, off, SEEK_SET);
    std::fputc(c ^ 0x10, fp);
    std::fclose(fp);
  };
  flip(path, 8192 + 5);
  CHECK(throws_code(gt::ErrorCode::Storage, [&] { open(false, true); }));
  flip(path, 8192 + 5);
  flip(path + ".wal", 64 + 100);
  CHECK(throws_reason(gt::StorageReason::WalCorrupt, [&] { open(false, false); }));
  flip(path + ".wal", 64 + 100);
  flip(path, 30);  // slot A (N); slot B is the current one after the compaction
  flip(path, 4096 + 30);
  CHECK(throws_reason(gt::StorageReason::HeaderChecksum, [&] { open(false, false); }));
  std::remove((path + ".wal").c_str());
  std::remove(path.c_str());
  rmdir(dir);
}

// Verified reads: a clean file opened without the full check serves intact rows and
// refuses a damaged one on first read (gather, set, add), from many threads at once;
// damaged optimizer state is refused by check_state; the counts are exact.
static void test_tensor_file_verified_reads() {
  const size_t d = 8, n = 1000;
  char tmpl[] = "/tmp/gt-native-XXXXXX";
  const char* dir = mkdtemp(tmpl);
  CHECK(dir != nullptr);
  if (dir == nullptr) return;
  const std::string path = std::string(dir) + "/v.gtt";
  // Its own generator: the shared one's stream feeds the tests after this one.
  std::mt19937 own(777);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> init(n * d);
  for (float& x : init) x = uni(own);
  gt::FileCreateSource src;
  src.data = init.data();
  gt::TensorFile::create(path, n, d, true, src, 2);
  const gt::FileHeader layout = gt::file_layout(n, d, true, true);
  auto flip = [&](uint64_t off) {
    std::FILE* fp = std::fopen(path.c_str(), "r+b");
    std::fseek(fp, static_cast<long>(off), SEEK_SET);
    const int c = std::fgetc(fp);
    std::fseek(fp, static_cast<long>(off), SEEK_SET);
    std::fputc(c ^ 0x04, fp);
    std::fclose(fp);
  };
  flip(layout.values.offset + 777 * d * 4 + 3);   // row 777
  flip(layout.merkle.offset + 100 * 32 + 1);      // leaf 100 (rows 100 and its sibling 101)
  flip(layout.m.offset + 5 * d * 4 + 2);          // m of row 5 (holes are zero: its check is zero)
  struct Opened {
    std::unique_ptr<gt::SparseTensor> t;
    std::unique_ptr<gt::MerkleTree> tree;
    std::unique_ptr<gt::TensorFile> f;
  };
  gt::FileOpenOptions o;
  o.threads = 2;
  Opened r;
  r.f = gt::TensorFile::open(path, o);
  r.t = std::make_unique<gt::SparseTensor>(d, n, r.f->values_storage(), false);
  r.tree = std::make_unique<gt::MerkleTree>(*r.t, r.f->levels());
  r.f->recover(*r.t, *r.tree);
  CHECK(!r.f->info().verified && r.f->info().format_version == 2);
  auto bad_row = [](uint32_t id) { return id == 777 || id == 100 || id == 101; };
  // 4 threads read every row in different orders, concurrently.
  std::atomic<int> refused{0}, wrong{0};
  gt::parallel_for(4, 4, [&](size_t b, size_t e, size_t) {
    for (size_t w = b; w < e; ++w) {
      std::vector<float> out(d);
      for (size_t k = 0; k < n; ++k) {
        static const size_t kStride[4] = {1, 3, 7, 9};  // coprime to n: each thread reads every row once
        const uint32_t id = static_cast<uint32_t>((k * kStride[w] + w * 97) % n);
        try {
          r.t->gather(&id, 1, out.data());
          if (bad_row(id) || std::memcmp(out.data(), init.data() + size_t{id} * d, d * 4) != 0) ++wrong;
        } catch (const gt::Error& err) {
          if (err.code() != gt::ErrorCode::Storage || !bad_row(id)) ++wrong;
          ++refused;
        }
      }
    }
  });
  CHECK(wrong.load() == 0);
  CHECK(refused.load() == 4 * 3);
  CHECK(r.f->info().rows_checked == n - 3);
  const uint32_t bad = 777, good = 778;
  const std::vector<float> delta(d, 0.5f);
  CHECK(throws_reason(gt::StorageReason::RowMismatch, [&] { r.t->set(&bad, 1, delta.data()); }));
  CHECK(throws_code(gt::ErrorCode::Storage, [&] { r.t->add(&bad, 1, delta.data()); }));
  r.t->add(&good, 1, delta.data());
  const uint32_t s5 = 5, s6 = 6;
  CHECK(throws_code(gt::ErrorCode::Storage, [&] { r.f->check_state(&s5, 1); }));
  r.f->check_state(&s6, 1);
  r.f.reset();
  r.tree.reset();
  r.t.reset();
  std::remove((path + ".wal").c_str());
  std::remove(path.c_str());
  rmdir(dir);
}

// Attention against a double-precision scalar reference: top-k (k < n and k = n),
// dense, causal or not, forward and backward, every SIMD level; plus the element
// kernels it is built from (vexp, axpy, gemm_acc).
struct RefAttention {
  std::vector<double> out, dq, dk, dv;
};

// sel(h, i) gives the keys of query i (the reference chooses them itself unless
// `given` is set); gradients of sum(dout . out).
static RefAttention ref_attention(const std::vector<float>& Q, const std::vector<float>& K, const std::vector<float>& V,
                                  const std::vector<float>& dout, size_t n, size_t H, size_t dk, size_t k, bool causal,
                                  double scale, const uint32_t* given) {
  const size_t D = H * dk;
  RefAttention r;
  r.out.assign(n * D, 0.0);
  r.dq.assign(n * D, 0.0);
  r.dk.assign(n * D, 0.0);
  r.dv.assign(n * D, 0.0);
  for (size_t h = 0; h < H; ++h)
    for (size_t i = 0; i < n; ++i) {
      std::vector<std::pair<double, uint32_t>> cand;
      const size_t lim = causal ? i + 1 : n;
      for (size_t j = 0; j < lim; ++j) {
        double s = 0;
        for (size_t t = 0; t < dk; ++t) s += double(Q[i * D + h * dk + t]) * K[j * D + h * dk + t];
        cand.push_back({s, uint32_t(j)});
      }
      std::vector<std::pair<double, uint32_t>> sel;
      if (given != nullptr) {
        for (size_t c = 0; c < k; ++c) {
          const uint32_t j = given[(h * n + i) * k + c];
          if (j == gt::kNoKey) break;
          sel.push_back(cand[j]);
        }
      } else {
        std::sort(cand.begin(), cand.end(), [](auto& a, auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
        sel.assign(cand.begin(), cand.begin() + std::min(k, cand.size()));
      }
      double mx = -1e300, z = 0;
      for (auto& c : sel) mx = std::max(mx, scale * c.first);
      std::vector<double> p(sel.size()), dp(sel.size());
      for (size_t c = 0; c < sel.size(); ++c) z += p[c] = std::exp(scale * sel[c].first - mx);
      double dsum = 0;
      for (size_t c = 0; c < sel.size(); ++c) {
        p[c] /= z;
        const size_t j = sel[c].second;
        double g = 0;
        for (size_t t = 0; t < dk; ++t) {
          r.out[i * D + h * dk + t] += p[c] * V[j * D + h * dk + t];
          g += double(dout[i * D + h * dk + t]) * V[j * D + h * dk + t];
        }
        dp[c] = g;
        dsum += p[c] * g;
      }
      for (size_t c = 0; c < sel.size(); ++c) {
        const size_t j = sel[c].second;
        const double ds = scale * p[c] * (dp[c] - dsum);
        for (size_t t = 0; t < dk; ++t) {
          r.dq[i * D + h * dk + t] += ds * K[j * D + h * dk + t];
          r.dk[j * D + h * dk + t] += ds * Q[i * D + h * dk + t];
          r.dv[j * D + h * dk + t] += p[c] * dout[i * D + h * dk + t];
        }
      }
    }
  return r;
}

// Largest error over the largest magnitude (at least 1e-2: inputs are O(1), and a
// gradient that is zero in exact arithmetic, such as dq for a single key, is then
// f32 rounding noise of a difference of O(1) terms).
static double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double mag = 1e-2, err = 0;
  for (size_t i = 0; i < want.size(); ++i) mag = std::max(mag, std::fabs(want[i]));
  for (size_t i = 0; i < want.size(); ++i) err = std::max(err, std::fabs(got[i] - want[i]));
  return err / mag;
}

static void test_attention() {
  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    const gt::Kernels& K = gt::kernels_for(level);
    // vexp against std::exp over the whole range, and the underflow cut.
    std::vector<float> x, y(2001);
    for (int i = 0; i <= 2000; ++i) x.push_back(-87.0f + 175.0f * float(i) / 2000.0f);
    K.vexp(x.data(), y.data(), x.size());
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::fabs(y[i] / std::exp(double(x[i])) - 1.0));
    CHECK(worst < 5e-7);
    const float under[3] = {-87.5f, -100.0f, -1e30f};
    float uo[3];
    K.vexp(under, uo, 3);
    CHECK(uo[0] == 0.0f && uo[1] == 0.0f && uo[2] == 0.0f);
    // gemm_acc on odd shapes (edges of the 4 x 16 blocks), accumulating into C.
    for (size_t m : {1, 5, 8}) for (size_t kd : {1, 7, 64}) for (size_t nc : {3, 16, 37}) {
      const std::vector<float> A = rand_vec(m * (kd + 2)), B = rand_vec(kd * (nc + 1));
      std::vector<float> C = rand_vec(m * (nc + 3));
      std::vector<double> want(C.begin(), C.end());
      for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j < nc; ++j)
          for (size_t t = 0; t < kd; ++t) want[i * (nc + 3) + j] += double(A[i * (kd + 2) + t]) * B[t * (nc + 1) + j];
      K.gemm_acc(C.data(), nc + 3, A.data(), kd + 2, B.data(), nc + 1, m, kd, nc);
      CHECK(max_rel(C, want) < 1e-5);
    }
    std::vector<float> ya = rand_vec(19);
    const std::vector<float> xa = rand_vec(19);
    std::vector<double> wa(ya.begin(), ya.end());
    for (size_t i = 0; i < 19; ++i) wa[i] += 0.5 * xa[i];
    K.axpy(ya.data(), 0.5f, xa.data(), 19);
    CHECK(max_rel(ya, wa) < 1e-6);

    for (size_t n : {1, 70, 300}) for (size_t dk : {12, 32}) for (bool causal : {false, true}) {
      const size_t H = 2, D = H * dk;
      const std::vector<float> Q = rand_vec(n * D), Kt = rand_vec(n * D), V = rand_vec(n * D), G = rand_vec(n * D);
      gt::AttentionArgs a;
      a.Q = Q.data(); a.K = Kt.data(); a.V = V.data();
      a.n = n; a.heads = H; a.dk = dk; a.causal = causal; a.scale = 1.0f / std::sqrt(float(dk));
      a.threads = 2; a.kernels = &K;
      std::vector<float> out(n * D), lse(H * n), dQ(n * D), dK(n * D), dV(n * D);
      // Dense against the reference over all keys.
      gt::dense_attention_forward(a, out.data(), lse.data());
      gt::dense_attention_backward(a, out.data(), lse.data(), G.data(), dQ.data(), dK.data(), dV.data());
      const RefAttention full = ref_attention(Q, Kt, V, G, n, H, dk, n, causal, a.scale, nullptr);
      CHECK(max_rel(out, full.out) < 1e-5);
      CHECK(max_rel(dQ, full.dq) < 1e-5 && max_rel(dK, full.dk) < 1e-5 && max_rel(dV, full.dv) < 1e-5);
      for (size_t k : {size_t{1}, size_t{5}, n}) {
        if (k > n) continue;
        a.k = k;
        std::vector<uint32_t> ids(H * n * k);
        std::vector<float> w(H * n * k);
        gt::topk_attention_forward(a, out.data(), ids.data(), w.data());
        // Each query's ids: distinct, visible, padded only past the candidates, and
        // the best k by a double-precision score (unless two scores are within f32 noise).
        const RefAttention pick = ref_attention(Q, Kt, V, G, n, H, dk, k, causal, a.scale, nullptr);
        bool ids_ok = true;
        for (size_t h = 0; h < H; ++h)
          for (size_t i = 0; i < n; ++i) {
            const size_t m = std::min(k, causal ? i + 1 : n);
            for (size_t c = 0; c < k; ++c) {
              const uint32_t j = ids[(h * n + i) * k + c];
              if (c >= m) { ids_ok = ids_ok && j == gt::kNoKey && w[(h * n + i) * k + c] == 0.0f; continue; }
              ids_ok = ids_ok && j < n && (!causal || j <= i);
              for (size_t c2 = 0; c2 < c; ++c2) ids_ok = ids_ok && ids[(h * n + i) * k + c2] != j;
            }
          }
        CHECK(ids_ok);
        // Outputs and gradients for the chosen ids against the reference on the same ids.
        gt::topk_attention_backward(a, ids.data(), w.data(), G.data(), dQ.data(), dK.data(), dV.data());
        const RefAttention same = ref_attention(Q, Kt, V, G, n, H, dk, k, causal, a.scale, ids.data());
        CHECK(max_rel(out, same.out) < 1e-5);
        CHECK(max_rel(dQ, same.dq) < 1e-5 && max_rel(dK, same.dk) < 1e-5 && max_rel(dV, same.dv) < 1e-5);
        // With random scores, the reference's own choice gives the same output.
        CHECK(max_rel(out, pick.out) < 1e-4);
        if (k == n || (causal && k >= n)) CHECK(max_rel(out, full.out) < 1e-5);
      }
    }
    // linear_forward / linear_backward (packed-panel GEMM): odd shapes around the 16-column
    // panels, the 32-row tasks and the 128-term depth blocks, against f64 references; the
    // bits do not depend on the thread count.
    for (size_t n : {1, 33, 70}) for (size_t m : {1, 17, 48}) for (size_t d : {3, 16, 130, 300}) {
      const std::vector<float> X = rand_vec(n * d), W = rand_vec(m * d), dY = rand_vec(n * m);
      std::vector<double> wy(n * m, 0.0), wdx(n * d, 0.0), wdw(m * d, 0.0);
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < m; ++j)
          for (size_t t = 0; t < d; ++t) {
            wy[i * m + j] += double(X[i * d + t]) * W[j * d + t];
            wdx[i * d + t] += double(dY[i * m + j]) * W[j * d + t];
            wdw[j * d + t] += double(dY[i * m + j]) * X[i * d + t];
          }
      std::vector<float> y1(n * m), y3(n * m), dx1(n * d, 7.0f), dw1(m * d, 7.0f), dx3(n * d), dw3(m * d);
      gt::linear_forward(X.data(), n, W.data(), m, d, 1, K, y1.data());
      gt::linear_forward(X.data(), n, W.data(), m, d, 3, K, y3.data());
      gt::linear_backward(X.data(), n, W.data(), m, d, dY.data(), 1, K, dx1.data(), dw1.data());
      gt::linear_backward(X.data(), n, W.data(), m, d, dY.data(), 3, K, dx3.data(), dw3.data());
      // |error| against the sum of |terms| (relative error of a dot product of d terms).
      const auto close = [](const std::vector<float>& got, const std::vector<double>& want, size_t terms) {
        double worst = 0;
        for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
        return worst < 1e-6 * double(terms) + 1e-6;
      };
      CHECK(close(y1, wy, d) && close(dx1, wdx, m) && close(dw1, wdw, n));
      CHECK(y1 == y3 && dx1 == dx3 && dw1 == dw3);
    }
    // Bad arguments are refused before any work.
    gt::AttentionArgs bad;
    bad.kernels = &K;
    bad.n = 4; bad.heads = 1; bad.dk = 2; bad.k = 5; bad.scale = 1.0f;
    std::vector<float> z(8), o(8);
    std::vector<uint32_t> bid(20);
    bad.Q = bad.K = bad.V = z.data();
    bool threw = false;
    try { gt::topk_attention_forward(bad, o.data(), bid.data(), o.data()); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw);
  }
}

// Row-major keys (L rows of H heads x dk) packed block-major, as decode_attention reads them.
static std::vector<float> pack_decode_keys(const std::vector<float>& Kt, size_t L, size_t H, size_t dk) {
  const size_t D = H * dk;
  std::vector<float> kp(gt::decode_key_packed_size(L, H, dk), 0.0f);
  for (size_t j = 0; j < L; ++j)
    for (size_t h = 0; h < H; ++h)
      for (size_t t = 0; t < dk; ++t)
        kp[((j / gt::kDecodeKeyBlock * H + h) * dk + t) * gt::kDecodeKeyBlock + j % gt::kDecodeKeyBlock] = Kt[j * D + h * dk + t];
  return kp;
}

// decode_attention (incremental decoding): the last row of a causal top-k forward over L
// rows, bit for bit, from keys packed block-major; the dense decode against the dense
// forward's last row; a given selection (the exact one) gives the same output. Own generator,
// so the shared stream of the other tests does not move.
static void test_decode_attention() {
  std::mt19937 gen(2024);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const auto vec = [&](size_t n) { std::vector<float> v(n); for (float& x : v) x = u(gen); return v; };
  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    const gt::Kernels& K = gt::kernels_for(level);
    for (size_t L : {1, 17, 300}) for (size_t dk : {12, 64}) for (size_t k : {5, 32}) {
      const size_t H = 2, D = H * dk;
      const std::vector<float> Q = vec(L * D), Kt = vec(L * D), V = vec(L * D);
      gt::AttentionArgs a;
      a.Q = Q.data(); a.K = Kt.data(); a.V = V.data();
      a.n = L; a.heads = H; a.dk = dk; a.causal = true; a.scale = 1.0f / std::sqrt(float(dk));
      a.threads = 2; a.kernels = &K; a.k = std::min(k, L);
      std::vector<float> out(L * D), w(H * L * a.k);
      std::vector<uint32_t> ids(H * L * a.k);
      gt::topk_attention_forward(a, out.data(), ids.data(), w.data());
      std::vector<float> kp = pack_decode_keys(Kt, L, H, dk);
      gt::DecodeArgs d;
      d.q = Q.data() + (L - 1) * D; d.Kp = kp.data(); d.V = V.data();
      d.L = L; d.heads = H; d.dk = dk; d.k = k; d.scale = a.scale; d.kernels = &K;
      std::vector<float> o(D), dw(H * k), o2(D), dw2(H * k);
      std::vector<uint32_t> did(H * k);
      gt::decode_attention(d, o.data(), did.data(), dw.data());
      bool same = std::memcmp(o.data(), out.data() + (L - 1) * D, D * sizeof(float)) == 0;
      for (size_t h = 0; h < H; ++h)
        for (size_t c = 0; c < k; ++c) {
          const size_t f = (h * L + L - 1) * a.k + c;
          if (c < a.k) same = same && did[h * k + c] == ids[f] && std::memcmp(&dw[h * k + c], &w[f], sizeof(float)) == 0;
          else same = same && did[h * k + c] == gt::kNoKey && dw[h * k + c] == 0.0f;
        }
      CHECK(same);
      // The exact selection handed in as a selection: the same output.
      std::vector<float> sel_scores(H * k, 0.0f);
      for (size_t h = 0; h < H; ++h)
        for (size_t c = 0; c < a.k; ++c) {
          double s = 0;
          for (size_t t = 0; t < dk; ++t) s += double(d.q[h * dk + t]) * Kt[did[h * k + c] * D + h * dk + t];
          sel_scores[h * k + c] = float(s);
        }
      gt::decode_attention_selected(d, did.data(), sel_scores.data(), o2.data(), dw2.data());
      std::vector<double> od(o.begin(), o.end());
      CHECK(max_rel(o2, od) < 1e-4);
      // Dense: the dense forward's last row.
      std::vector<float> lse(H * L);
      gt::dense_attention_forward(a, out.data(), lse.data());
      d.k = 0;
      gt::decode_attention(d, o.data(), nullptr, nullptr);
      std::vector<double> want(out.begin() + (L - 1) * D, out.begin() + L * D);
      CHECK(max_rel(o, want) < 1e-5);
    }
    gt::DecodeArgs bad;
    bad.kernels = &K;
    bool threw = false;
    try { gt::decode_attention(bad, nullptr, nullptr, nullptr); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw);
  }
}

// KeySketch (key_sketch.h): the certified first pass selects exactly what decode_attention's
// scan selects (ids and, through decode_attention_selected, the output bit for bit) for any
// rank, on isotropic and low-rank keys, for keys fitted and keys appended later; the Jacobi
// eigen-decomposition against its definition; hostile arguments refused. Own generator.
// The SIMD versions of a sketch pass this machine runs (null where not compiled in), as
// KeySketch::select picks them: AVX2, and AVX-512 with VNNI.
template <class F>
static std::vector<F> sketch_simd_scans(F avx2, F avx512) {
  std::vector<F> scans;
  if (avx2 != nullptr && gt::simd_level_supported(gt::SimdLevel::AVX2)) scans.push_back(avx2);
  if (avx512 != nullptr && gt::cpu_has_avx512_vnni()) scans.push_back(avx512);
  return scans;
}

static void test_key_sketch() {
  {
    std::mt19937 gen(7);
    std::normal_distribution<double> nd(0.0, 1.0);
    const size_t n = 9;
    std::vector<double> A(n * n), A0;
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j <= i; ++j) A[i * n + j] = A[j * n + i] = nd(gen);
    A0 = A;
    std::vector<double> w, V;
    gt::symmetric_eigen(A, n, w, V);
    double worst = 0.0;
    for (size_t i = 0; i < n; ++i) {
      if (i > 0) CHECK(w[i] <= w[i - 1]);
      for (size_t a = 0; a < n; ++a) {
        double av = 0.0;
        for (size_t b = 0; b < n; ++b) av += A0[a * n + b] * V[i * n + b];
        worst = std::max(worst, std::fabs(av - w[i] * V[i * n + a]));
      }
      for (size_t j = 0; j < n; ++j) {
        double d = 0.0;
        for (size_t b = 0; b < n; ++b) d += V[i * n + b] * V[j * n + b];
        worst = std::max(worst, std::fabs(d - (i == j ? 1.0 : 0.0)));
      }
    }
    CHECK(worst < 1e-9);
  }
  std::mt19937 gen(2025);
  std::normal_distribution<float> nf(0.0f, 1.0f);
  size_t total_cand = 0, total_keys = 0, total_capped = 0;
  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    const gt::Kernels& K = gt::kernels_for(level);
    for (size_t L : {1, 40, 300, 1100}) for (size_t dk : {12, 64}) for (size_t k : {5, 32}) for (int lowrank : {0, 1})
      for (size_t rank : {size_t(0), size_t(1), size_t(4), dk}) {
        const size_t H = 2, D = H * dk, R = 3;
        std::vector<float> Kt(L * D), V(L * D), q(D), U(D * R);
        for (float& x : U) x = nf(gen);
        for (size_t j = 0; j < L; ++j) {
          float z[R] = {nf(gen), nf(gen), nf(gen)};
          for (size_t c = 0; c < D; ++c) {
            float s = lowrank ? 0.05f * nf(gen) : nf(gen);
            if (lowrank) for (size_t i = 0; i < R; ++i) s += U[c * R + i] * z[i];
            Kt[j * D + c] = s;
            V[j * D + c] = nf(gen);
          }
        }
        // Duplicate keys: ties broken by the lower id on both paths.
        if (L > 10) std::copy(Kt.begin() + 3 * D, Kt.begin() + 4 * D, Kt.begin() + 9 * D);
        for (size_t c = 0; c < D; ++c) q[c] = Kt[(L / 2) * D + c] + 0.1f * nf(gen);
        std::vector<float> kp = pack_decode_keys(Kt, L, H, dk);
        gt::DecodeArgs d;
        d.q = q.data(); d.Kp = kp.data(); d.V = V.data();
        d.L = L; d.heads = H; d.dk = dk; d.k = k; d.scale = 0.125f; d.kernels = &K;
        std::vector<float> o(D), w(H * k), o2(D), w2(H * k), ss(H * k);
        std::vector<uint32_t> ids(H * k), sid(H * k);
        gt::decode_attention(d, o.data(), ids.data(), w.data());
        // Fitted on the first part, the rest appended (a prompt, then decoded keys).
        gt::KeySketch sk(H, dk, rank);
        sk.fit(kp.data(), std::max<size_t>(1, L / 3));
        sk.append(kp.data(), L);
        CHECK(sk.length() == L && (rank == 0 || sk.rank(0) == rank));
        CHECK(rank != 0 || sk.rank(0) % 4 == 0 || sk.rank(0) == dk);  // auto: whole groups of codes
        gt::SketchSelectStats st;
        sk.select(q.data(), kp.data(), k, 0, K, sid.data(), ss.data(), &st);
        total_cand += st.candidates;
        total_keys += H * L;
        bool same = sid == ids;
        gt::decode_attention_selected(d, sid.data(), ss.data(), o2.data(), w2.data());
        same = same && std::memcmp(o.data(), o2.data(), D * sizeof(float)) == 0 &&
               std::memcmp(w.data(), w2.data(), w.size() * sizeof(float)) == 0;
        if (!same) std::printf("key sketch: L %zu dk %zu k %zu lowrank %d rank %zu differs\n", L, dk, k, lowrank, rank);
        CHECK(same);
        // A limit no head reaches: the same selection; the limit k: each head scores at most
        // k keys (approximate), its scores best first over distinct ids.
        std::vector<uint32_t> cid(H * k);
        std::vector<float> cs(H * k);
        gt::SketchSelectStats cst;
        sk.select(q.data(), kp.data(), k, std::max(k, L), K, cid.data(), cs.data(), &cst);
        CHECK(cid == ids && cst.capped == 0);
        sk.select(q.data(), kp.data(), k, k, K, cid.data(), cs.data(), &cst);
        total_capped += cst.capped;
        CHECK(cst.candidates <= H * k);
        for (size_t h = 0; h < H; ++h) {
          std::vector<uint32_t> hs(cid.begin() + h * k, cid.begin() + h * k + std::min(k, L));
          std::sort(hs.begin(), hs.end());
          CHECK(std::adjacent_find(hs.begin(), hs.end()) == hs.end() && hs.back() < L);
          for (size_t c = 1; c < std::min(k, L); ++c) CHECK(cs[h * k + c] <= cs[h * k + c - 1]);
        }
      }
  }
  // The bound prunes: on these keys far fewer than all of them are scored exactly.
  CHECK(total_cand < total_keys / 2);
  CHECK(total_capped > 0);
  // An amortised refit: started at 100 keys, carried by the following one-key appends (one
  // head's basis per call, then 32 earlier keys per call), it completes and replaces the
  // bases; the selection is the exact scan's before, during and after it, at every level.
  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    const gt::Kernels& K = gt::kernels_for(level);
    const size_t H = 2, dk = 16, D = H * dk, L = 600, k = 8, R = 3;
    std::vector<float> Kt(L * D), V(L * D, 1.0f), q(D), U(D * R);
    for (float& x : U) x = nf(gen);
    for (size_t j = 0; j < L; ++j) {
      float z[R] = {nf(gen), nf(gen), nf(gen)};
      // The keys turn: the later ones lie in another subspace than the first 100.
      for (size_t c = 0; c < D; ++c) {
        float s = 0.05f * nf(gen);
        for (size_t i = 0; i < R; ++i) s += (j < 100 ? U[c * R + i] : U[((c + 5) % D) * R + i]) * z[i];
        Kt[j * D + c] = s;
      }
    }
    std::vector<float> kp = pack_decode_keys(Kt, L, H, dk);
    gt::KeySketch sk(H, dk, 0);
    sk.fit(kp.data(), 50);
    sk.append(kp.data(), 100);
    sk.refit(100);
    CHECK(sk.refitting() && sk.refits() == 0);
    size_t done_at = 0;
    std::vector<uint32_t> ids(H * k), sid(H * k);
    std::vector<float> o(D), w(H * k), ss(H * k);
    for (size_t n = 101; n <= L; ++n) {
      sk.append(kp.data(), n);
      if (done_at == 0 && !sk.refitting()) done_at = n;
      for (size_t c = 0; c < D; ++c) q[c] = Kt[(n / 2) * D + c] + 0.1f * nf(gen);
      gt::DecodeArgs d;
      d.q = q.data(); d.Kp = kp.data(); d.V = V.data();
      d.L = n; d.heads = H; d.dk = dk; d.k = k; d.scale = 0.25f; d.kernels = &K;
      gt::decode_attention(d, o.data(), ids.data(), w.data());
      sk.select(q.data(), kp.data(), k, 0, K, sid.data(), ss.data(), nullptr);
      CHECK(sid == ids);
    }
    // 2 calls for the bases, then 100 keys at 33 a call: done within a few more.
    CHECK(done_at > 101 && done_at < 110 && sk.refits() == 1);
    CHECK(throws_code(gt::ErrorCode::OutOfRange, [&] { sk.refit(L + 1); }));
  }
  CHECK(throws_code(gt::ErrorCode::InvalidArgument, [] { gt::KeySketch s(1, 4, 0); s.refit(1); }));
  // Observed queries (observe()): low-rank keys and queries in another subspace, as the bench's
  // and a trained model's. A basis fitted to the keys alone leaves most of each query out of
  // it (a loose bound, many keys scored); fitted to both, far fewer keys are scored; the
  // selection is the exact scan's either way, at every level.
  {
    const size_t H = 2, dk = 48, D = H * dk, L = 3000, k = 16, R = 6, NQ = 300;
    std::vector<float> Kt(L * D), V(L * D, 1.0f), Uk(D * R), Uq(D * R), Qs(NQ * D);
    for (float& x : Uk) x = nf(gen);
    for (float& x : Uq) x = nf(gen);
    auto draw = [&](const std::vector<float>& U, float* out) {
      float z[R];
      for (float& v : z) v = nf(gen);
      for (size_t c = 0; c < D; ++c) {
        float s = 0.3f * nf(gen);
        for (size_t i = 0; i < R; ++i) s += U[c * R + i] * z[i];
        out[c] = s;
      }
    };
    for (size_t j = 0; j < L; ++j) draw(Uk, Kt.data() + j * D);
    for (size_t i = 0; i < NQ; ++i) draw(Uq, Qs.data() + i * D);
    std::vector<float> kp = pack_decode_keys(Kt, L, H, dk);
    gt::KeySketch plain(H, dk, 0), aware(H, dk, 0);
    aware.observe(Qs.data(), NQ - 20);  // the last 20 queries are the test's, not observed
    CHECK(aware.queries() == NQ - 20);
    plain.fit(kp.data(), L);
    aware.fit(kp.data(), L);
    for (gt::SimdLevel level : gt::supported_simd_levels()) {
      const gt::Kernels& K = gt::kernels_for(level);
      size_t cand_plain = 0, cand_aware = 0;
      for (size_t i = NQ - 20; i < NQ; ++i) {
        gt::DecodeArgs d;
        d.q = Qs.data() + i * D; d.Kp = kp.data(); d.V = V.data();
        d.L = L; d.heads = H; d.dk = dk; d.k = k; d.scale = 0.125f; d.kernels = &K;
        std::vector<float> o(D), w(H * k), s1(H * k), s2(H * k);
        std::vector<uint32_t> ids(H * k), i1(H * k), i2(H * k);
        gt::decode_attention(d, o.data(), ids.data(), w.data());
        gt::SketchSelectStats st1, st2;
        plain.select(d.q, kp.data(), k, 0, K, i1.data(), s1.data(), &st1);
        aware.select(d.q, kp.data(), k, 0, K, i2.data(), s2.data(), &st2);
        CHECK(i1 == ids && i2 == ids && s1 == s2);
        cand_plain += st1.candidates;
        cand_aware += st2.candidates;
      }
      if (cand_aware * 2 >= cand_plain) std::printf("observed queries: %zu keys scored, %zu without\n", cand_aware, cand_plain);
      CHECK(cand_aware * 2 < cand_plain);
    }
    // The ring keeps the latest kSketchQuerySample; a non-finite query is refused whole.
    std::vector<float> many((gt::kSketchQuerySample + 5) * D, 0.5f);
    aware.observe(many.data(), gt::kSketchQuerySample + 5);
    CHECK(aware.queries() == gt::kSketchQuerySample);
    many[D + 3] = std::numeric_limits<float>::quiet_NaN();
    CHECK(throws_code(gt::ErrorCode::NonFinite, [&] { plain.observe(many.data(), 2); }));
    CHECK(plain.queries() == 0);
  }
  // The first pass (integer sums over biased codes, then a fixed order of f32 operations): the
  // portable loop against a reference written here (int64 sums from the layout key_sketch.h
  // states), and every SIMD version against the portable loop bit for bit, at every block width
  // (vector groups and scalar tails split the keys differently); a NaN upper end makes the
  // block's max +inf.
  {
    const std::vector<gt::SketchScan> scans = sketch_simd_scans(gt::kSketchScanAVX2, gt::kSketchScanAVX512);
    std::uniform_int_distribution<int> code(1, 255), wd(-127, 127);
    for (size_t g4 : {1, 4, 16}) for (size_t kn : {256, 255, 224, 200, 40, 31, 17, 1}) {
      std::vector<uint8_t> codes(g4 * 4 * gt::kDecodeKeyBlock);
      for (uint8_t& c : codes) c = static_cast<uint8_t>(code(gen));
      std::vector<int8_t> w(8 * g4);
      for (int8_t& x : w) x = static_cast<int8_t>(wd(gen));
      std::vector<float> eps(kn), rho(kn), a0(kn), h0(kn), a1(kn), h1(kn);
      for (size_t c = 0; c < kn; ++c) { eps[c] = std::fabs(nf(gen)); rho[c] = std::fabs(nf(gen)); }
      if (kn > 3) rho[3] = std::numeric_limits<float>::quiet_NaN();
      const float sig[2] = {0.0123f, 0.0000456f}, coef[4] = {1.5f, 0.5f, 1.0f + 1.0f / (1 << 20), 0.003f};
      float m0[2], m1[2];
      gt::sketch_scan_portable(codes.data(), g4, w.data(), sig, eps.data(), rho.data(), coef, kn, a0.data(), h0.data(), m0);
      CHECK(kn <= 3 || m0[1] == std::numeric_limits<float>::infinity());
      bool ref = true;
      float ma = -std::numeric_limits<float>::infinity();
      for (size_t c = 0; c < kn; ++c) {
        long long n[2] = {0, 0};
        for (size_t t = 0; t < 4 * g4; ++t)
          for (int l = 0; l < 2; ++l)
            n[l] += static_cast<long long>(w[l * 4 * g4 + t]) * (static_cast<int>(codes[((c / 16) * g4 + t / 4) * 64 + (c % 16) * 4 + t % 4]) - 128);
        const float a = static_cast<float>(n[0]) * sig[0] + static_cast<float>(n[1]) * sig[1];
        const float B = (coef[0] * eps[c] + coef[1] * rho[c]) * coef[2] + coef[3];
        ref = ref && a0[c] == a && (std::isnan(B) ? std::isnan(h0[c]) : h0[c] == a + B);
        ma = std::max(ma, a);
      }
      CHECK(ref && m0[0] == ma);
      for (gt::SketchScan sc : scans) {
        sc(codes.data(), g4, w.data(), sig, eps.data(), rho.data(), coef, kn, a1.data(), h1.data(), m1);
        CHECK(std::memcmp(a0.data(), a1.data(), kn * 4) == 0 && std::memcmp(h0.data(), h1.data(), kn * 4) == 0);
        CHECK(m1[0] == m0[0] && m1[1] == m0[1]);
      }
    }
  }
  // The 4-bit pass (SketchScan4): the portable loop against a reference written here (int64 sums
  // over the nibbles as key_sketch.h lays them out), every SIMD version against it bit for bit.
  {
    const std::vector<gt::SketchScan4> scans = sketch_simd_scans(gt::kSketchScan4AVX2, gt::kSketchScan4AVX512);
    std::uniform_int_distribution<int> byte(0, 255), wd(-127, 127);
    for (size_t g8 : {1, 2, 8}) for (size_t kn : {256, 255, 224, 200, 40, 31, 17, 1}) {
      std::vector<uint8_t> codes(g8 * 4 * gt::kDecodeKeyBlock);
      for (uint8_t& c : codes) c = static_cast<uint8_t>(byte(gen));
      std::vector<int8_t> w(8 * g8);
      for (int8_t& x : w) x = static_cast<int8_t>(wd(gen));
      std::vector<float> a0(kn), a1(kn);
      const float sig = 0.0123f;
      float m0[1], m1[1];
      gt::sketch_scan4_portable(codes.data(), g8, w.data(), sig, kn, a0.data(), m0);
      bool ref = true;
      float ma = -std::numeric_limits<float>::infinity();
      for (size_t c = 0; c < kn; ++c) {
        long long n = 0;
        for (size_t t = 0; t < 8 * g8; ++t) {
          const int b = codes[((c / 16) * g8 + t / 8) * 64 + (c % 16) * 4 + t % 4];
          n += static_cast<long long>(w[t]) * ((t % 8 < 4 ? b % 16 : b / 16) - 8);
        }
        const float a = static_cast<float>(n) * sig;
        ref = ref && a0[c] == a;
        ma = std::max(ma, a);
      }
      CHECK(ref && m0[0] == ma);
      for (gt::SketchScan4 sc : scans) {
        sc(codes.data(), g8, w.data(), sig, kn, a1.data(), m1);
        CHECK(std::memcmp(a0.data(), a1.data(), kn * 4) == 0 && m1[0] == m0[0]);
      }
    }
  }
  // A 4-bit sketch (approximate, no bound): scoring every key (max_scored >= L) it selects what
  // decode_attention selects, output bit for bit; with max_scored 4 k its ids are distinct, best
  // first, and their scores are the exact ones (the 8-bit sketch's exact selection gives them
  // where the two overlap); over these low-rank keys it finds most of the exact top k (the codes'
  // layout wrong, as a swapped nibble, would not). The auto rank is a multiple of 8 (or dk).
  {
    size_t hit = 0, want = 0, overlap = 0;
    for (gt::SimdLevel level : gt::supported_simd_levels()) {
      const gt::Kernels& K = gt::kernels_for(level);
      for (size_t L : {40, 300, 1100}) for (size_t dk : {12, 64}) for (size_t k : {5, 32}) for (size_t rank : {size_t(0), size_t(4), dk}) {
        const size_t H = 2, D = H * dk, R = 3;
        std::vector<float> Kt(L * D), V(L * D), q(D), U(D * R);
        for (float& x : U) x = nf(gen);
        for (size_t j = 0; j < L; ++j) {
          float z[R] = {nf(gen), nf(gen), nf(gen)};
          for (size_t c = 0; c < D; ++c) {
            float s = 0.05f * nf(gen);
            for (size_t i = 0; i < R; ++i) s += U[c * R + i] * z[i];
            Kt[j * D + c] = s;
            V[j * D + c] = nf(gen);
          }
        }
        for (size_t c = 0; c < D; ++c) q[c] = Kt[(L / 2) * D + c] + 0.1f * nf(gen);
        std::vector<float> kp = pack_decode_keys(Kt, L, H, dk);
        gt::DecodeArgs d;
        d.q = q.data(); d.Kp = kp.data(); d.V = V.data();
        d.L = L; d.heads = H; d.dk = dk; d.k = k; d.scale = 0.125f; d.kernels = &K;
        std::vector<float> o(D), w(H * k), o2(D), w2(H * k), s4(H * k), s8(H * k);
        std::vector<uint32_t> ids(H * k), i4(H * k), i8(H * k);
        gt::decode_attention(d, o.data(), ids.data(), w.data());
        gt::KeySketch sk(H, dk, rank, 4), s8k(H, dk, rank);
        CHECK(sk.bits() == 4 && s8k.bits() == 8);
        sk.fit(kp.data(), std::max<size_t>(1, L / 3));
        sk.append(kp.data(), L);
        s8k.fit(kp.data(), L);
        CHECK(rank != 0 || sk.rank(0) % 8 == 0 || sk.rank(0) == dk);
        CHECK(rank == 0 || sk.rank(0) == rank);
        gt::SketchSelectStats st;
        sk.select(q.data(), kp.data(), k, L, K, i4.data(), s4.data(), &st);
        gt::decode_attention_selected(d, i4.data(), s4.data(), o2.data(), w2.data());
        CHECK(i4 == ids && std::memcmp(o.data(), o2.data(), D * sizeof(float)) == 0 && st.capped == 0);
        const size_t M = std::min(L, 4 * k);
        sk.select(q.data(), kp.data(), k, 4 * k, K, i4.data(), s4.data(), &st);
        CHECK(st.candidates == H * M && st.capped == 0);
        s8k.select(q.data(), kp.data(), k, 0, K, i8.data(), s8.data(), nullptr);
        for (size_t h = 0; h < H; ++h) {
          const size_t kk = std::min(k, L);
          std::vector<uint32_t> hs(i4.begin() + h * k, i4.begin() + h * k + kk);
          std::sort(hs.begin(), hs.end());
          CHECK(std::adjacent_find(hs.begin(), hs.end()) == hs.end() && hs.back() < L);
          for (size_t c = 1; c < kk; ++c) CHECK(s4[h * k + c] <= s4[h * k + c - 1]);
          for (size_t c = 0; c < kk; ++c)
            for (size_t e = 0; e < kk; ++e)
              if (i4[h * k + c] == i8[h * k + e]) {
                CHECK(s4[h * k + c] == s8[h * k + e]);
                ++overlap;
              }
          if (L > M) {
            for (size_t c = 0; c < kk; ++c) hit += std::count(i8.begin() + h * k, i8.begin() + h * k + kk, i4[h * k + c]);
            want += kk;
          }
        }
      }
    }
    // The M candidates are the M best 4-bit scores by (score, then the lower id), as a TopK over
    // the keys in order keeps them (select() takes them by a sampled threshold instead): the
    // selection is the exact order's first k among them. Duplicated keys make ties of both
    // scores; L from below the sample to past it, M from k to near L.
    for (gt::SimdLevel level : gt::supported_simd_levels()) {
      const gt::Kernels& K = gt::kernels_for(level);
      for (size_t L : {70, 1100, 5000, 16384}) for (size_t M : {8, 64, 300}) {
        const size_t H = 2, dk = 16, D = H * dk, k = 8;
        if (M > L) continue;
        std::vector<float> Kt(L * D), V(L * D, 1.0f), q(D);
        for (float& x : Kt) x = nf(gen);
        for (size_t j = 7; j < L; j += 7) std::copy(Kt.begin() + (j % 5) * D, Kt.begin() + (j % 5 + 1) * D, Kt.begin() + j * D);
        for (size_t c = 0; c < D; ++c) q[c] = Kt[3 * D + c] + 0.2f * nf(gen);
        // At 16,384 keys the threshold's sample holds every 4th key: make those the best ones, so
        // the first threshold is reached by too few keys and a deeper one must be taken.
        if (L == 16384)
          for (size_t j = 0; j < L; j += 4)
            for (size_t c = 0; c < D; ++c) Kt[j * D + c] = 0.2f * Kt[j * D + c] + q[c];
        std::vector<float> kp = pack_decode_keys(Kt, L, H, dk);
        gt::KeySketch sk(H, dk, 0, 4);
        sk.fit(kp.data(), L);
        std::vector<uint32_t> got(H * k), all(H * L);
        std::vector<float> gs(H * k), w(H * L), o(D), a(L);
        gt::SketchSelectStats st;
        sk.select(q.data(), kp.data(), k, M, K, got.data(), gs.data(), &st);
        CHECK(st.candidates == H * M);
        gt::DecodeArgs d;
        d.q = q.data(); d.Kp = kp.data(); d.V = V.data();
        d.L = L; d.heads = H; d.dk = dk; d.k = L; d.scale = 0.25f; d.kernels = &K;
        gt::decode_attention(d, o.data(), all.data(), w.data());
        bool same = true;
        for (size_t h = 0; h < H; ++h) {
          sk.scores4(q.data(), h, a.data());
          gt::TopK ref(M, true);
          for (size_t j = 0; j < L; ++j) ref.push(a[j], static_cast<uint32_t>(j));
          std::vector<bool> in(L, false);
          for (const gt::Hit& x : ref.sorted()) in[x.id] = true;
          size_t c = 0;
          for (size_t e = 0; e < L && c < k; ++e)
            if (in[all[h * L + e]]) same = same && got[h * k + c++] == all[h * L + e];
        }
        if (!same) std::printf("4-bit candidates: L %zu M %zu differ\n", L, M);
        CHECK(same);
      }
    }
    if (hit * 10 < want * 9) std::printf("4-bit sketch: recall %zu of %zu\n", hit, want);
    CHECK(want > 0 && hit * 10 >= want * 9 && overlap >= hit);
    // No max_scored: refused (no bound to certify with); bits other than 4 and 8 refused.
    gt::KeySketch s(1, 4, 0, 4);
    std::vector<float> kp(gt::decode_key_packed_size(3, 1, 4), 1.0f), q(4, 1.0f), sc(2);
    std::vector<uint32_t> id(2);
    s.fit(kp.data(), 3);
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { s.select(q.data(), kp.data(), 2, 0, gt::kernels(), id.data(), sc.data(), nullptr); }));
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [] { gt::KeySketch b(1, 4, 0, 5); }));
  }
  CHECK(throws_code(gt::ErrorCode::OutOfRange, [] {
    gt::KeySketch s(1, 4, 0);
    std::vector<float> kp(gt::decode_key_packed_size(3, 1, 4), 1.0f), q(4, 1.0f), sc(2);
    std::vector<uint32_t> id(2);
    s.fit(kp.data(), 3);
    s.select(q.data(), kp.data(), 2, 1, gt::kernels(), id.data(), sc.data(), nullptr);
  }));
  CHECK(throws_code(gt::ErrorCode::OutOfRange, [] { gt::KeySketch s(2, 8, 9); }));
  CHECK(throws_code(gt::ErrorCode::InvalidArgument, [] { gt::KeySketch s(0, 8, 0); }));
  {
    gt::KeySketch s(1, 4, 0);
    std::vector<float> kp(gt::decode_key_packed_size(3, 1, 4), 1.0f), q(4, 1.0f), sc(2);
    std::vector<uint32_t> id(2);
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { s.select(q.data(), kp.data(), 2, 0, gt::kernels(), id.data(), sc.data(), nullptr); }));
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { s.append(kp.data(), 3); }));
    s.fit(kp.data(), 3);
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { s.fit(kp.data(), 3); }));
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { s.append(kp.data(), 2); }));
    CHECK(throws_code(gt::ErrorCode::InvalidArgument, [&] { s.select(q.data(), kp.data(), 0, 0, gt::kernels(), id.data(), sc.data(), nullptr); }));
  }
}

// The prover's canonical step mirror (canonical_step.h) on a case worked by hand (every
// value exact), under the sanitizers: accumulators added to, not overwritten; the
// TypeScript comparison is test/canonical-step-native.test.ts.
static void test_canonical_step() {
  namespace c = gt::canonical;
  const float x[2] = {1, 0}, dy[1] = {2}, keys[4] = {1, 0, 0, 1}, values[2] = {1, 3};
  const double q[2] = {1, 2}, s[2] = {0, 0}, a[2] = {0.25, 0.75};
  const uint32_t key_row[2] = {0, 1}, key_acc[2] = {1, 0}, value_row[2] = {0, 1}, value_acc[2] = {0, 1};
  for (gt::Metric m : {gt::Metric::IP, gt::Metric::L2}) {
    double acc_keys[4] = {10, 10, 0, 0}, acc_values[2] = {0, 0};
    float dx[2] = {-7, -7};
    c::HopfieldBackward p{1, 2, 2, 1, 1, 2.0, m, false, x, dy, q, s, a, keys, values, key_row, key_acc, value_row, value_acc,
                          acc_keys, acc_values, dx};
    c::hopfield_backward(p);
    // da = (2, 6), rho = 5, ds = (-1.5, 1.5); values' rows get a_i g = (0.5, 1.5).
    CHECK(acc_values[0] == 0.5 && acc_values[1] == 1.5);
    if (m == gt::Metric::IP) {  // dq = sum ds_i K_i; dK_i += ds_i q (row 0 in slot 1, row 1 in slot 0 on top of 10)
      CHECK(dx[0] == -1.5f && dx[1] == 1.5f);
      CHECK(acc_keys[2] == -1.5 && acc_keys[3] == -3.0 && acc_keys[0] == 11.5 && acc_keys[1] == 13.0);
    } else {  // dq -= 2 ds_i (q - K_i), dK_i += 2 ds_i (q - K_i)
      CHECK(dx[0] == -3.0f && dx[1] == 3.0f);
      CHECK(acc_keys[2] == 0.0 && acc_keys[3] == -6.0 && acc_keys[0] == 13.0 && acc_keys[1] == 13.0);
    }
  }
  {  // The forward: a zero state scores 0 against both keys: a = (1/2, 1/2), y = (1 + 3) / 2.
    const float x0[2] = {0, 0};
    float y[1] = {-1};
    double fq[2] = {-1, -1}, fs[2] = {-1, -1}, fa[2] = {-1, -1};
    c::HopfieldForward f{1, 2, 2, 1, 1, 2.0, gt::Metric::IP, true, x0, keys, values, key_row, value_row, y, fq, fs, fa};
    c::hopfield_forward(f);
    CHECK(y[0] == 2.0f && fq[0] == 0.0 && fq[1] == 0.0 && fs[0] == 0.0 && fs[1] == 0.0 && fa[0] == 0.5 && fa[1] == 0.5);
  }
  // SGD: rows - lr g, no decay; Adam's first step moves each value by about lr against its gradient's sign.
  const float rows[2] = {1, 2}, grads[2] = {2, -4}, zero[2] = {0, 0};
  const uint32_t steps[1] = {3};
  const double marks[1] = {0};
  float out[2], om[2], ov[2];
  uint32_t osteps[1];
  double omarks[1];
  c::OptimizerStep sgd{false, true, 0.5f, 0.9f, 0.999f, 1e-8f, 0.0f, 0, 0.0, 1, 2, rows, grads, nullptr, nullptr, steps, marks,
                       out, nullptr, nullptr, osteps, omarks};
  CHECK(c::optimizer_step(sgd) == 0.0);
  CHECK(out[0] == 0.0f && out[1] == 4.0f && osteps[0] == 4 && omarks[0] == 0.0);
  const uint32_t fresh[1] = {0};
  c::OptimizerStep adam{true, true, 0.25f, 0.5f, 0.75f, 1e-8f, 0.0f, 0, 0.0, 1, 2, rows, grads, zero, zero, fresh, marks,
                        out, om, ov, osteps, omarks};
  c::optimizer_step(adam);
  CHECK(om[0] == 1.0f && om[1] == -2.0f && ov[0] == 1.0f && ov[1] == 4.0f && osteps[0] == 1);
  CHECK(std::fabs(out[0] - 0.75f) < 1e-6f && std::fabs(out[1] - 2.25f) < 1e-6f);
}

// The prover's mirrors of the language-model kinds (canonical_step.h) on cases worked by
// hand (every value exact), under the sanitizers; the TypeScript comparison is
// test/canonical-step-native-lm.test.ts.
static void test_canonical_step_lm() {
  namespace c = gt::canonical;
  {  // topk_ranked: ties to the lower position; a NaN is kept only while fewer than k are held,
     // where sorted insertion leaves it (not where a sort would put it).
    const double s[5] = {1, 3, 3, std::nan(""), 2};
    uint32_t top[5] = {9, 9, 9, 9, 9};
    CHECK(c::topk_ranked(s, 5, 3, top) == 3);
    CHECK(top[0] == 1 && top[1] == 2 && top[2] == 4);
    CHECK(c::topk_ranked(s, 5, 5, top) == 5);
    CHECK(top[0] == 1 && top[1] == 2 && top[2] == 0 && top[3] == 3 && top[4] == 4);
    CHECK(c::topk_ranked(s, 5, 0, top) == 0);
  }
  {  // linear_train: s = (1, 2, 3), top 2 = columns 2, 1 (kept ascending), the other column its bias.
    const float x[2] = {1, 2}, W[6] = {1, 0, 0, 1, 1, 1}, bias[3] = {10, 20, 30};
    float y[3] = {-1, -1, -1};
    uint32_t kept[2] = {9, 9};
    c::linear_train(x, 1, 2, W, 3, 2, bias, y, kept);
    CHECK(y[0] == 10.0f && y[1] == 22.0f && y[2] == 33.0f && kept[0] == 1 && kept[1] == 2);
    c::linear_train(x, 1, 2, W, 3, 3, nullptr, y, nullptr);
    CHECK(y[0] == 1.0f && y[1] == 2.0f && y[2] == 3.0f);
  }
  {  // projection_backward (dense, with a bias): every accumulator added to, not overwritten.
    const float input[2] = {3, 4}, W[4] = {1, 0, 0, 1};
    const float dP[2] = {1, 2};
    double d_in[2] = {10, 10}, acc_w[4] = {0, 0, 1, 1}, acc_b[2] = {5, 5};
    c::projection_backward(input, 1, 2, W, 2, 2, static_cast<const uint32_t*>(nullptr), dP, d_in, acc_w, acc_b);
    CHECK(d_in[0] == 11.0 && d_in[1] == 12.0);
    CHECK(acc_w[0] == 3.0 && acc_w[1] == 4.0 && acc_w[2] == 7.0 && acc_w[3] == 9.0);
    CHECK(acc_b[0] == 6.0 && acc_b[1] == 7.0);
    // Top-1 of 2 columns per row: only row 1's kept column 1 is touched.
    const uint32_t kept[1] = {1};
    const double dP64[2] = {100, 1};
    double d2[2] = {0, 0}, w2[4] = {0, 0, 0, 0};
    c::projection_backward(input, 1, 2, W, 2, 1, kept, dP64, d2, w2, static_cast<double*>(nullptr));
    CHECK(d2[0] == 0.0 && d2[1] == 1.0 && w2[0] == 0.0 && w2[1] == 0.0 && w2[2] == 3.0 && w2[3] == 4.0);
  }
  {  // attention_core, causal, k 1: query 0 sees key 0 only; query 1 picks key 1 (score 2 > 1).
    const float q[2] = {1, 1}, k[2] = {1, 2}, v[2] = {5, 7};
    float o[2] = {-1, -1};
    uint32_t top[2] = {9, 9};
    double w[2] = {-1, -1};
    c::AttentionCore a{2, 1, 1, 1, true, 0.5, q, k, v, o, top, w};
    c::attention_core(a);
    CHECK(o[0] == 5.0f && o[1] == 7.0f && top[0] == 0 && top[1] == 1 && w[0] == 1.0 && w[1] == 1.0);
    // k 2 over 2 keys, causal: query 0 fills one slot; the other is padding.
    uint32_t top2[4];
    double w2[4];
    c::AttentionCore a2{2, 1, 1, 2, true, 0.5, q, k, v, o, top2, w2};
    c::attention_core(a2);
    CHECK(top2[0] == 0 && top2[1] == 0xffffffffu && w2[1] == 0.0 && top2[2] == 1 && top2[3] == 0);
    // Backward with one key per query: the weight is 1, so dQ and dK get 0 and dV gets dO.
    const double dO[2] = {1, 2};
    double dQ[2] = {0, 0}, dK[2] = {0, 0}, dV[2] = {0, 0.5};
    c::AttentionCoreBackward b{2, 1, 1, 1, true, 0.5, q, k, v, top, w, dO, dQ, dK, dV};
    c::attention_core_backward(b);
    CHECK(dV[0] == 1.0 && dV[1] == 2.5 && dQ[0] == 0.0 && dQ[1] == 0.0 && dK[0] == 0.0 && dK[1] == 0.0);
  }
  {  // rmsnorm_backward with eps 0 and x = (1, 1): r = 1, p = 2, c = 1.
    const float x[2] = {1, 1}, dy[2] = {1, 0}, gain[2] = {2, 2};
    float dx[2];
    double acc[2] = {0, 4};
    c::rmsnorm_backward(x, dy, gain, 1, 2, 0.0f, dx, acc);
    CHECK(dx[0] == 1.0f && dx[1] == -1.0f && acc[0] == 1.0 && acc[1] == 4.0);
  }
  {  // memory_backward, one input, one head, k 2: da = (2, 6), rho = 5, ds = beta a (da - rho) = (-1.5, 1.5).
    const float x[1] = {1}, dy[1] = {2}, q[2] = {1, 2}, values[2] = {1, 3}, t1[2] = {1, 2}, t2[2] = {4, 8}, W[2] = {10, 100};
    const double a[2] = {0.25, 0.75};
    const uint32_t rows[2] = {0, 1}, accs[2] = {1, 0};
    double acc_v[2] = {0, 0}, acc_t1[2] = {0, 0}, acc_t2[2] = {0, 0}, acc_w[2] = {0, 0};
    float dx[1] = {-1};
    c::MemoryBackward m{1, 1, 2, 1, 1, 2, 1, 2.0, x, dy, q, a, values, rows, accs, acc_v, t1, rows, accs, acc_t1, t2, rows, accs, acc_t2,
                        W, acc_w, dx};
    c::memory_backward(m);
    // dq = (-1.5 + 3, -6 + 12) = (1.5, 6): dx = 15 + 600; the entries' accumulators sit in swapped slots.
    CHECK(dx[0] == 615.0f && acc_w[0] == 1.5 && acc_w[1] == 6.0);
    CHECK(acc_v[1] == 0.5 && acc_v[0] == 1.5 && acc_t1[1] == -1.5 && acc_t1[0] == 1.5 && acc_t2[1] == -3.0 && acc_t2[0] == 3.0);
  }
  {  // glu_backward at g = 0: sigmoid 1/2, silu 0.
    const float gate[1] = {0}, up[1] = {3}, dy[1] = {2};
    float dg[1], du[1];
    c::glu_backward(gate, up, dy, 1, dg, du);
    CHECK(dg[0] == 3.0f && du[0] == 0.0f);
  }
}

// The AnonHugePages (KiB) of the mapping holding p, from /proc/self/smaps; -1 if unknown.
static long anon_huge_kib(const void* p) {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (f == nullptr) return -1;
  char line[512];
  bool in = false;
  long kib = -1;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
      if (in) break;
      in = a >= lo && a < hi;
    } else if (in && std::sscanf(line, "AnonHugePages: %ld kB", &kib) == 1) {
      break;
    }
  }
  std::fclose(f);
  return kib;
}

static void test_huge_pages() {
  const size_t mib2 = size_t{2} << 20;
  for (size_t bytes : {size_t{1}, size_t{64}, size_t{4096} + 3, mib2 - 1, mib2, mib2 + 1, 5 * mib2 + 12}) {
    unsigned char* p = static_cast<unsigned char*>(gt::huge_alloc(bytes, true));
    CHECK(reinterpret_cast<uintptr_t>(p) % 64 == 0);
#if defined(__linux__)
    if (bytes >= mib2) CHECK(reinterpret_cast<uintptr_t>(p) % mib2 == 0);
#endif
    bool zero = true;
    for (size_t i = 0; i < bytes; ++i) zero = zero && p[i] == 0;
    CHECK(zero);
    std::memset(p, 0xab, bytes);  // every byte writable (ASan: within the block)
    CHECK(p[bytes - 1] == 0xab);
    gt::huge_free(p, bytes);
  }
  // A tensor growing from small storage (operator new) past 2 MiB (a mapping) keeps its rows.
  {
    const size_t d = 784, n = 1000;  // 3.1 MB
    const auto rows = rand_vec(n * d);
    gt::SparseTensor t(d, 4);
    for (size_t i = 0; i < n; i += 100) t.append(rows.data() + i * d, 100);
    CHECK(t.size() == n && std::memcmp(t.data(), rows.data(), n * d * sizeof(float)) == 0);
  }
#if defined(__linux__)
  // Where THP is on in "madvise" or "always" mode, a touched 8 MiB buffer gets huge pages,
  // and GHOST_TENSOR_HUGE_PAGES=off leaves them out in "madvise" mode.
  FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  char mode[128] = {0};
  if (f != nullptr) {
    if (std::fgets(mode, sizeof mode, f) == nullptr) mode[0] = 0;
    std::fclose(f);
  }
  const bool madvise_mode = std::strstr(mode, "[madvise]") != nullptr;
  // Under an emulator (qemu-user: run-sanitized.sh sets GT_NATIVE_EMULATED with GT_RUN)
  // /proc/self/smaps is the host's view of the emulator, not of this program's mappings.
  const char* emulated = std::getenv("GT_NATIVE_EMULATED");
  if (emulated != nullptr && emulated[0] == '1') {
    std::printf("huge pages: under an emulator, the advice is not checked\n");
  } else if (madvise_mode || std::strstr(mode, "[always]") != nullptr) {
    const size_t bytes = 4 * mib2;
    void* on = gt::huge_alloc(bytes, false);
    std::memset(on, 1, bytes);
    CHECK(anon_huge_kib(on) >= 2048);
    gt::huge_free(on, bytes);
    if (madvise_mode) {
      setenv("GHOST_TENSOR_HUGE_PAGES", "off", 1);
      void* off = gt::huge_alloc(bytes, false);
      std::memset(off, 1, bytes);
      CHECK(anon_huge_kib(off) == 0);
      gt::huge_free(off, bytes);
      unsetenv("GHOST_TENSOR_HUGE_PAGES");
    }
  } else {
    std::printf("huge pages: THP is off here (%s), the advice is not checked\n", mode[0] ? mode : "no /sys entry");
  }
#endif
}

// The scan pool runs every chunk once, over its own range, on at most `threads` threads
// (the caller included): with threads = 1 no helper joins, even an idle one.
static void test_scan_pool_threads() {
  for (const size_t threads : {size_t{1}, size_t{2}, size_t{3}}) {
    const size_t n = 1000, chunks = 8;
    std::mutex m;
    std::vector<std::thread::id> who(chunks);
    std::vector<size_t> runs(chunks, 0);
    bool ranges_ok = true;
    gt::scan_pool_run(n, chunks, threads, [&](size_t b, size_t e, size_t c) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // time for an idle helper to join
      std::lock_guard<std::mutex> lock(m);
      ranges_ok = ranges_ok && c < chunks && b == n * c / chunks && e == n * (c + 1) / chunks;
      if (c < chunks) {
        ++runs[c];
        who[c] = std::this_thread::get_id();
      }
    });
    CHECK(ranges_ok);
    CHECK(std::all_of(runs.begin(), runs.end(), [](size_t r) { return r == 1; }));
    std::vector<std::thread::id> distinct(who);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    CHECK(distinct.size() <= threads);
    if (threads == 1) CHECK(distinct.size() == 1 && distinct[0] == std::this_thread::get_id());
  }
  // Helpers that come free from another scan, not only the ones a call wakes, respect the
  // cap: a wide job on another thread ends early and its helpers look for work while a
  // two-thread job still has chunks left.
  {
    std::thread wide([] { gt::scan_pool_run(12, 12, 4, [](size_t, size_t, size_t) { std::this_thread::sleep_for(std::chrono::milliseconds(1)); }); });
    std::mutex m;
    std::vector<std::thread::id> who;
    gt::scan_pool_run(40, 40, 2, [&](size_t, size_t, size_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      std::lock_guard<std::mutex> lock(m);
      who.push_back(std::this_thread::get_id());
    });
    wide.join();
    std::sort(who.begin(), who.end());
    who.erase(std::unique(who.begin(), who.end()), who.end());
    CHECK(who.size() <= 2);
  }
}

// Exact scans from several threads at once share the scan's helper threads (search.cc,
// ScanPool): each caller gets the ids and score bits of a one-thread scan.
static void test_concurrent_scans() {
  std::mt19937 gen(4242);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const size_t d = 29, n = 2500, k = 7;
  std::vector<float> data(n * d);
  for (auto& x : data) x = u(gen);
  const size_t callers = 4, rounds = 6;
  std::vector<std::vector<float>> queries(callers);
  for (auto& q : queries) {
    q.resize(40 * d);
    for (auto& x : q) x = u(gen);
  }
  auto search = [&](const std::vector<float>& q, size_t nq, gt::Metric m, size_t threads, std::vector<uint32_t>& ids,
                    std::vector<float>& sc) {
    gt::ExactSearchArgs a;
    a.data = data.data(); a.n = n; a.d = d; a.queries = q.data(); a.nq = nq; a.k = k;
    a.metric = m; a.threads = threads; a.kernels = &gt::kernels_for(gt::default_simd_level());
    ids.assign(nq * k, 0);
    sc.assign(nq * k, 0);
    gt::exact_search(a, ids.data(), sc.data());
  };
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (size_t c = 0; c < callers; ++c)
    ts.emplace_back([&, c] {
      for (size_t r = 0; r < rounds; ++r) {
        const size_t nq = r % 2 == 0 ? 1 : 40;  // rows split across threads; queries split
        const gt::Metric m = r % 3 == 0 ? gt::Metric::Cosine : gt::Metric::IP;
        std::vector<uint32_t> i1, i2;
        std::vector<float> s1, s2;
        search(queries[c], nq, m, 3, i1, s1);
        search(queries[c], nq, m, 1, i2, s2);
        if (i1 != i2 || std::memcmp(s1.data(), s2.data(), s1.size() * sizeof(float)) != 0) bad++;
      }
    });
  for (auto& t : ts) t.join();
  CHECK(bad.load() == 0);
}

// The exact cosine scan's cached row norms (search.h, RowNormCache): a scan given them
// gives the same ids and score bits as one that computes them; the tensor's version
// changes on every write path; the cache refills only for a new key.
static void test_row_norm_cache() {
  std::mt19937 gen(777);  // its own stream: the shared generator's later users stay as they were
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const size_t d = 37, n = 700;
  std::vector<float> data(n * d);
  for (auto& x : data) x = u(gen);
  data[5 * d + 3] = 0;  // a few zero rows: cosine 0 either way
  std::fill(data.begin() + 9 * d, data.begin() + 10 * d, 0.0f);
  for (gt::SimdLevel level : gt::supported_simd_levels()) {
    const gt::Kernels& K = gt::kernels_for(level);
    gt::RowNormCache cache;
    auto norms = cache.get(1, K, data.data(), n, d, 2);
    CHECK(cache.fills() == 1 && norms->size() == n);
    CHECK(cache.get(1, K, data.data(), n, d, 2) == norms && cache.fills() == 1);
    CHECK(cache.get(2, K, data.data(), n, d, 2) != norms && cache.fills() == 2);
    CHECK(cache.get(2, K, data.data(), n - 1, d, 2)->size() == n - 1 && cache.fills() == 3);
    norms = cache.get(3, K, data.data(), n, d, 1);
    bool same_norms = true;
    for (size_t r = 0; r < n; ++r) same_norms = same_norms && (*norms)[r] == K.dot(&data[r * d], &data[r * d], d);
    CHECK(same_norms);
    for (const size_t nq : {1, 5, 40})
      for (size_t threads : {1, 2, 3}) {
        std::vector<float> q(nq * d);
        for (auto& x : q) x = u(gen);
        gt::ExactSearchArgs a;
        a.data = data.data(); a.n = n; a.d = d; a.queries = q.data(); a.nq = nq; a.k = 9;
        a.metric = gt::Metric::Cosine; a.threads = threads; a.kernels = &K;
        std::vector<uint32_t> i1(nq * 9), i2(nq * 9);
        std::vector<float> s1(nq * 9), s2(nq * 9);
        gt::exact_search(a, i1.data(), s1.data());
        a.row_norm2 = norms->data();
        gt::exact_search(a, i2.data(), s2.data());
        CHECK(i1 == i2 && std::memcmp(s1.data(), s2.data(), s1.size() * sizeof(float)) == 0);
      }
  }
  // Every write path gives a new version; a new tensor never reuses one.
  gt::SparseTensor t(d, 0);
  uint64_t v = t.version();
  auto moved = [&]() { const bool m = t.version() != v; v = t.version(); return m; };
  t.append(data.data(), 10);
  CHECK(moved());
  const uint32_t ids[2] = {1, 4};
  t.set(ids, 2, data.data() + 20 * d);
  CHECK(moved());
  t.add(ids, 2, data.data() + 30 * d);
  CHECK(moved());
  t.reserve(t.capacity() + 50);
  CHECK(moved());
  const uint32_t bad[1] = {999};
  CHECK(throws_code(gt::ErrorCode::OutOfRange, [&] { t.set(bad, 1, data.data()); }));
  CHECK(!moved());  // refused whole: nothing changed
  gt::SparseTensor other(d, 0);
  CHECK(other.version() != t.version());
  CHECK(t.norm_cache() != nullptr && t.norm_cache() != other.norm_cache());
  auto adopted = gt::Storage::adopt(data.data(), n, nullptr);
  gt::SparseTensor borrowed(d, n, adopted);
  CHECK(borrowed.norm_cache() == nullptr);  // its owner can write it outside the write path
}

int main() {
  // Four threads by default whatever the machine (unless the environment says otherwise),
  // so the scan pool has three helpers and test_scan_pool_threads can see a cap below them.
  setenv("GHOST_TENSOR_THREADS", "4", 0);
  std::printf("simd levels:");
  for (auto l : gt::supported_simd_levels()) std::printf(" %s", gt::simd_level_name(l));
  std::printf("\n");
  test_kernels();
  test_topk_and_search();
  test_tensor();
  test_huge_pages();
  test_blake3_and_hnsw();
  test_merkle();
  test_merkle_batched();
  test_optimizer();
  test_dense_hopfield();
  test_product_keys();
  test_exact_topk();
  test_canonical();
  test_canonical_step();
  test_canonical_step_lm();
  test_tensor_file();
  test_attention();
  test_decode_attention();
  test_key_sketch();
  test_row_norm_cache();
  test_concurrent_scans();
  test_scan_pool_threads();
  test_tensor_file_verified_reads();  // last: it must not shift the shared generator's stream
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
