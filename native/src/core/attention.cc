// Top-k and dense multi-head self-attention (see attention.h).
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "parallel.h"
#include "topk.h"

namespace gt {

namespace {

constexpr size_t kQueryBlock = 64;  // queries per task and per score tile
constexpr size_t kKeyBlock = 256;   // keys per score tile

// Buffers the calling thread keeps between calls (the addon's worker threads live on):
// a fresh large allocation is mapped and page-faulted anew on each call, which costs
// more than the work at a training step's sizes. Slot s holds at least `count` floats
// (not zeroed); trim() frees the buffers past kKeep floats when a call is done.
class ThreadScratch {
 public:
  static constexpr size_t kKeep = size_t{1} << 22;  // 16 MiB
  float* get(size_t slot, size_t count) {
    if (bufs_.size() <= slot) bufs_.resize(slot + 1);
    std::vector<float>& b = bufs_[slot];
    if (b.size() < count) b.resize(count);
    return b.data();
  }
  void trim() {
    for (std::vector<float>& b : bufs_)
      if (b.size() > kKeep) std::vector<float>().swap(b);
  }

 private:
  std::vector<std::vector<float>> bufs_;
};

ThreadScratch& thread_scratch() {
  thread_local ThreadScratch scratch;
  return scratch;
}

// Frees the calling thread's large scratch buffers when a call returns (or throws).
struct TrimOnExit {
  ~TrimOnExit() { thread_scratch().trim(); }
};

// n x (H * dk) -> H x n x dk, so a head's rows are contiguous for the block kernels.
const float* split_heads(const float* X, size_t n, size_t H, size_t dk, float* out) {
  for (size_t i = 0; i < n; ++i)
    for (size_t h = 0; h < H; ++h)
      std::copy(X + i * H * dk + h * dk, X + i * H * dk + (h + 1) * dk, out + (h * n + i) * dk);
  return out;
}

// n x (H * dk) -> H x dk x n: a head's columns as rows, so a tile of keys (or
// queries) is the right operand of gemm_acc with stride n.
const float* transpose_heads(const float* X, size_t n, size_t H, size_t dk, float* out) {
  for (size_t i = 0; i < n; ++i)
    for (size_t h = 0; h < H; ++h)
      for (size_t t = 0; t < dk; ++t) out[(h * dk + t) * n + i] = X[i * H * dk + h * dk + t];
  return out;
}

// Floats pack_key_blocks writes.
size_t key_blocks_size(size_t n, size_t H, size_t dk) {
  return H * ((n + kKeyBlock - 1) / kKeyBlock) * dk * kKeyBlock;
}

// n x (H * dk) -> per head, per block of kKeyBlock rows: dk x kKeyBlock (the block's
// rows as columns, zero-padded), so a key tile is a compact right operand of gemm_acc.
const float* pack_key_blocks(const float* X, size_t n, size_t H, size_t dk, float* out) {
  const size_t nb = (n + kKeyBlock - 1) / kKeyBlock;
  std::fill(out, out + key_blocks_size(n, H, dk), 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const size_t b = i / kKeyBlock, c = i % kKeyBlock;
    for (size_t h = 0; h < H; ++h) {
      float* blk = out + (h * nb + b) * dk * kKeyBlock;
      for (size_t t = 0; t < dk; ++t) blk[t * kKeyBlock + c] = X[i * H * dk + h * dk + t];
    }
  }
  return out;
}

// A zeroed buffer of `count` floats from scratch slot `slot`.
float* zeroed(ThreadScratch& sc, size_t slot, size_t count) {
  float* p = sc.get(slot, count);
  std::fill(p, p + count, 0.0f);
  return p;
}

void merge_heads(const float* in, size_t n, size_t H, size_t dk, float* X) {
  for (size_t i = 0; i < n; ++i)
    for (size_t h = 0; h < H; ++h)
      std::copy(in + (h * n + i) * dk, in + (h * n + i + 1) * dk, X + i * H * dk + h * dk);
}

// Per-worker buffers of a parallel_for, taken from the calling thread's scratch before
// the workers start (slots from `first` on, `per` slots a worker).
size_t workers_for(size_t tasks, size_t threads) {
  return std::max<size_t>(1, std::min(threads, tasks));
}

void check(const AttentionArgs& a, bool topk) {
  if (a.kernels == nullptr || a.n == 0 || a.heads == 0 || a.dk == 0 || !(a.scale > 0.0f) || !std::isfinite(a.scale))
    throw std::invalid_argument("attention: bad arguments");
  if (topk && (a.k == 0 || a.k > a.n)) throw std::invalid_argument("attention: k must be in 1..n");
}

// Candidates of query i among keys [j0, j0 + kn): how many of them it may see.
inline size_t visible(const AttentionArgs& a, size_t i, size_t j0, size_t kn) {
  if (!a.causal) return kn;
  if (i < j0) return 0;
  return std::min(kn, i - j0 + 1);
}

}  // namespace

void topk_attention_forward(const AttentionArgs& a, float* out, uint32_t* ids, float* weights) {
  check(a, true);
  const size_t n = a.n, H = a.heads, dk = a.dk, D = H * dk, k = a.k;
  const Kernels& kern = *a.kernels;
  TrimOnExit trim_on_exit;
  ThreadScratch& scr = thread_scratch();
  const float* Qh = split_heads(a.Q, n, H, dk, scr.get(0, n * D));
  const float* KT = pack_key_blocks(a.K, n, H, dk, scr.get(1, key_blocks_size(n, H, dk)));
  const float* Vh = split_heads(a.V, n, H, dk, scr.get(2, n * D));
  const size_t nqb = (n + kQueryBlock - 1) / kQueryBlock, nkb = (n + kKeyBlock - 1) / kKeyBlock;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const size_t nw = workers_for(H * nqb, a.threads);
  std::vector<float*> tiles(nw), scs(nw), ws(nw);
  for (size_t w = 0; w < nw; ++w) {
    tiles[w] = scr.get(3 + 3 * w, kQueryBlock * kKeyBlock);
    scs[w] = scr.get(4 + 3 * w, k);
    ws[w] = scr.get(5 + 3 * w, k);
  }
  parallel_for(H * nqb, a.threads, [&](size_t begin, size_t end, size_t worker) {
    float* const S = tiles[worker];
    float* const sc = scs[worker];
    float* const w = ws[worker];
    std::vector<TopK> heaps;
    for (size_t t = begin; t < end; ++t) {
      const size_t h = t / nqb, i0 = (t % nqb) * kQueryBlock, qn = std::min(kQueryBlock, n - i0);
      const float* q = Qh + h * n * dk;
      const float* kt = KT + h * nkb * dk * kKeyBlock;
      const float* vv = Vh + h * n * dk;
      heaps.assign(qn, TopK(k, true));
      const size_t kend = a.causal ? i0 + qn : n;
      for (size_t j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const size_t kn = std::min(kKeyBlock, kend - j0);
        std::fill(S, S + kQueryBlock * kKeyBlock, 0.0f);
        kern.gemm_acc(S, kKeyBlock, q + i0 * dk, dk, kt + j0 * dk, kKeyBlock, qn, dk, kn);
        for (size_t r = 0; r < qn; ++r) {
          const size_t lim = visible(a, i0 + r, j0, kn);
          TopK& hp = heaps[r];
          const float* row = S + r * kKeyBlock;
          // Keys arrive in increasing id order, so an equal score never displaces:
          // only a score above the current k-th is offered.
          float thr = hp.full() ? hp.worst().score : neg_inf;
          for (size_t c0 = 0; c0 < lim; c0 += 16) {
            const size_t c1 = std::min(lim, c0 + 16);
            int any = 0;  // a branch-free test of 16 scores first (vectorised)
            for (size_t c = c0; c < c1; ++c) any |= row[c] > thr;
            if (!any) continue;
            for (size_t c = c0; c < c1; ++c) {
              if (!(row[c] > thr)) continue;
              hp.push(row[c], static_cast<uint32_t>(j0 + c));
              if (hp.full()) thr = hp.worst().score;
            }
          }
        }
      }
      for (size_t r = 0; r < qn; ++r) {
        const size_t i = i0 + r;
        const std::vector<Hit> hits = heaps[r].sorted();
        const size_t m = hits.size();  // >= 1: a query always sees itself at least
        const float top = a.scale * hits[0].score;
        for (size_t c = 0; c < m; ++c) sc[c] = a.scale * hits[c].score - top;
        kern.vexp(sc, w, m);
        float z = 0.0f;
        for (size_t c = 0; c < m; ++c) z += w[c];
        const float inv = 1.0f / z;
        uint32_t* idr = ids + (h * n + i) * k;
        float* wr = weights + (h * n + i) * k;
        float* o = out + i * D + h * dk;
        std::fill(o, o + dk, 0.0f);
        for (size_t c = 0; c < m; ++c) {
          idr[c] = hits[c].id;
          wr[c] = w[c] * inv;
          kern.axpy(o, wr[c], vv + static_cast<size_t>(hits[c].id) * dk, dk);
        }
        for (size_t c = m; c < k; ++c) {
          idr[c] = kNoKey;
          wr[c] = 0.0f;
        }
      }
    }
  });
}

namespace {

void check_decode(const DecodeArgs& a) {
  if (a.kernels == nullptr || a.q == nullptr || a.Kp == nullptr || a.V == nullptr || a.L == 0 || a.heads == 0 ||
      a.dk == 0 || !(a.scale > 0.0f) || !std::isfinite(a.scale))
    throw std::invalid_argument("decode_attention: bad arguments");
}

// Softmax over m selected scores (best first) and the mix of their values, in
// topk_attention_forward's order: sc = scale * s - scale * s_0, vexp, z summed in
// rank order, w = e * (1 / z), o = sum of axpy in rank order.
void softmax_mix(const DecodeArgs& a, size_t h, const float* scores, const uint32_t* idv, size_t m, float* sc,
                 float* w, float* o, uint32_t* ids_out, float* w_out) {
  const Kernels& kern = *a.kernels;
  const size_t D = a.heads * a.dk;
  const float top = a.scale * scores[0];
  for (size_t c = 0; c < m; ++c) sc[c] = a.scale * scores[c] - top;
  kern.vexp(sc, w, m);
  float z = 0.0f;
  for (size_t c = 0; c < m; ++c) z += w[c];
  const float inv = 1.0f / z;
  std::fill(o, o + a.dk, 0.0f);
  for (size_t c = 0; c < m; ++c) {
    const float wc = w[c] * inv;
    if (ids_out != nullptr) ids_out[c] = idv[c];
    if (w_out != nullptr) w_out[c] = wc;
    kern.axpy(o, wc, a.V + static_cast<size_t>(idv[c]) * D + h * a.dk, a.dk);
  }
  for (size_t c = m; c < a.k; ++c) {
    if (ids_out != nullptr) ids_out[c] = kNoKey;
    if (w_out != nullptr) w_out[c] = 0.0f;
  }
}

}  // namespace

void decode_attention(const DecodeArgs& a, float* out, uint32_t* ids, float* weights) {
  check_decode(a);
  const size_t L = a.L, H = a.heads, dk = a.dk, D = H * dk;
  const Kernels& kern = *a.kernels;
  const size_t nb = (L + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  std::vector<float> tile(kDecodeKeyBlock);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (a.k > 0) {
    const size_t kk = std::min(a.k, L);
    std::vector<float> sc(kk), w(kk), hs(kk);
    std::vector<uint32_t> hi(kk);
    for (size_t h = 0; h < H; ++h) {
      TopK hp(kk, true);
      float thr = neg_inf;
      for (size_t b = 0; b < nb; ++b) {
        const size_t j0 = b * kDecodeKeyBlock, kn = std::min(kDecodeKeyBlock, L - j0);
        std::fill(tile.begin(), tile.end(), 0.0f);
        kern.gemm_acc(tile.data(), kDecodeKeyBlock, a.q + h * dk, dk, a.Kp + (b * H + h) * dk * kDecodeKeyBlock,
                      kDecodeKeyBlock, 1, dk, kn);
        // As topk_attention_forward: keys in increasing id order, only a score above the k-th enters.
        for (size_t c = 0; c < kn; ++c) {
          if (!(tile[c] > thr)) continue;
          hp.push(tile[c], static_cast<uint32_t>(j0 + c));
          if (hp.full()) thr = hp.worst().score;
        }
      }
      const std::vector<Hit> hits = hp.sorted();
      for (size_t c = 0; c < hits.size(); ++c) {
        hs[c] = hits[c].score;
        hi[c] = hits[c].id;
      }
      softmax_mix(a, h, hs.data(), hi.data(), hits.size(), sc.data(), w.data(), out + h * dk,
                  ids == nullptr ? nullptr : ids + h * a.k, weights == nullptr ? nullptr : weights + h * a.k);
    }
    return;
  }
  // Dense: every score, then one softmax and the mix in key order.
  std::vector<float> s(L), e(L);
  for (size_t h = 0; h < H; ++h) {
    for (size_t b = 0; b < nb; ++b) {
      const size_t j0 = b * kDecodeKeyBlock, kn = std::min(kDecodeKeyBlock, L - j0);
      std::fill(s.begin() + j0, s.begin() + j0 + kn, 0.0f);
      kern.gemm_acc(s.data() + j0, kDecodeKeyBlock, a.q + h * dk, dk, a.Kp + (b * H + h) * dk * kDecodeKeyBlock,
                    kDecodeKeyBlock, 1, dk, kn);
    }
    float mx = neg_inf;
    for (size_t j = 0; j < L; ++j) mx = std::max(mx, s[j]);
    const float top = a.scale * mx;
    for (size_t j = 0; j < L; ++j) s[j] = a.scale * s[j] - top;
    kern.vexp(s.data(), e.data(), L);
    float z = 0.0f;
    for (size_t j = 0; j < L; ++j) z += e[j];
    const float inv = 1.0f / z;
    float* o = out + h * dk;
    std::fill(o, o + dk, 0.0f);
    for (size_t j = 0; j < L; ++j) kern.axpy(o, e[j] * inv, a.V + j * D + h * dk, dk);
  }
}

void decode_attention_selected(const DecodeArgs& a, const uint32_t* sel_ids, const float* sel_scores, float* out,
                               float* weights) {
  check_decode(a);
  if (a.k == 0) throw std::invalid_argument("decode_attention_selected: k must be >= 1");
  std::vector<float> sc(a.k), w(a.k);
  for (size_t h = 0; h < a.heads; ++h) {
    const uint32_t* idv = sel_ids + h * a.k;
    size_t m = 0;
    while (m < a.k && idv[m] != kNoKey) {
      if (idv[m] >= a.L) throw std::out_of_range("decode_attention_selected: a key id is >= L");
      ++m;
    }
    if (m == 0) throw std::invalid_argument("decode_attention_selected: a head selected no key");
    softmax_mix(a, h, sel_scores + h * a.k, idv, m, sc.data(), w.data(), out + h * a.dk, nullptr,
                weights == nullptr ? nullptr : weights + h * a.k);
  }
}

void topk_attention_backward(const AttentionArgs& a, const uint32_t* ids, const float* weights, const float* dout,
                             float* dQ, float* dK, float* dV) {
  check(a, true);
  const size_t n = a.n, H = a.heads, dk = a.dk, k = a.k;
  const Kernels& kern = *a.kernels;
  TrimOnExit trim_on_exit;
  ThreadScratch& scr = thread_scratch();
  const size_t N = H * n * dk;
  const float* Qh = split_heads(a.Q, n, H, dk, scr.get(0, N));
  const float* Kh = split_heads(a.K, n, H, dk, scr.get(1, N));
  const float* Vh = split_heads(a.V, n, H, dk, scr.get(2, N));
  const float* Gh = split_heads(dout, n, H, dk, scr.get(3, N));
  float* dQh = zeroed(scr, 4, N);
  float* dKh = zeroed(scr, 5, N);
  float* dVh = zeroed(scr, 6, N);
  const size_t nw = workers_for(H, a.threads);
  std::vector<float*> dps(nw);
  for (size_t w = 0; w < nw; ++w) dps[w] = scr.get(7 + w, k);
  // One head per task: a head's key and value gradients are written by one thread.
  parallel_for(H, a.threads, [&](size_t begin, size_t end, size_t worker) {
    float* const dp = dps[worker];
    for (size_t h = begin; h < end; ++h) {
      const size_t off = h * n * dk;
      for (size_t i = 0; i < n; ++i) {
        const uint32_t* idr = ids + (h * n + i) * k;
        const float* wr = weights + (h * n + i) * k;
        const float* g = Gh + off + i * dk;
        size_t m = 0;
        while (m < k && idr[m] != kNoKey) ++m;
        float dsum = 0.0f;
        for (size_t c = 0; c < m; ++c) {
          dp[c] = kern.dot(g, Vh + off + static_cast<size_t>(idr[c]) * dk, dk);
          dsum += wr[c] * dp[c];
        }
        for (size_t c = 0; c < m; ++c) {
          const size_t j = idr[c];
          const float ds = a.scale * wr[c] * (dp[c] - dsum);
          kern.axpy(dQh + off + i * dk, ds, Kh + off + j * dk, dk);
          kern.axpy(dKh + off + j * dk, ds, Qh + off + i * dk, dk);
          kern.axpy(dVh + off + j * dk, wr[c], g, dk);
        }
      }
    }
  });
  merge_heads(dQh, n, H, dk, dQ);
  merge_heads(dKh, n, H, dk, dK);
  merge_heads(dVh, n, H, dk, dV);
}

void dense_attention_forward(const AttentionArgs& a, float* out, float* lse) {
  check(a, false);
  const size_t n = a.n, H = a.heads, dk = a.dk, D = H * dk;
  const Kernels& kern = *a.kernels;
  TrimOnExit trim_on_exit;
  ThreadScratch& scr = thread_scratch();
  const float* Qh = split_heads(a.Q, n, H, dk, scr.get(0, n * D));
  const float* KT = pack_key_blocks(a.K, n, H, dk, scr.get(1, key_blocks_size(n, H, dk)));
  const float* Vh = split_heads(a.V, n, H, dk, scr.get(2, n * D));
  const size_t nqb = (n + kQueryBlock - 1) / kQueryBlock, nkb = (n + kKeyBlock - 1) / kKeyBlock;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const size_t nw = workers_for(H * nqb, a.threads);
  std::vector<float*> tiles(nw), accs(nw), mxs(nw), ls(nw);
  for (size_t w = 0; w < nw; ++w) {
    tiles[w] = scr.get(3 + 4 * w, kQueryBlock * kKeyBlock);
    accs[w] = scr.get(4 + 4 * w, kQueryBlock * dk);
    mxs[w] = scr.get(5 + 4 * w, kQueryBlock);
    ls[w] = scr.get(6 + 4 * w, kQueryBlock);
  }
  parallel_for(H * nqb, a.threads, [&](size_t begin, size_t end, size_t worker) {
    float* const S = tiles[worker];
    float* const acc = accs[worker];
    float* const mx = mxs[worker];
    float* const l = ls[worker];
    for (size_t t = begin; t < end; ++t) {
      const size_t h = t / nqb, i0 = (t % nqb) * kQueryBlock, qn = std::min(kQueryBlock, n - i0);
      const float* q = Qh + h * n * dk;
      const float* kt = KT + h * nkb * dk * kKeyBlock;
      const float* vv = Vh + h * n * dk;
      std::fill(acc, acc + kQueryBlock * dk, 0.0f);
      std::fill(mx, mx + kQueryBlock, neg_inf);
      std::fill(l, l + kQueryBlock, 0.0f);
      const size_t kend = a.causal ? i0 + qn : n;
      for (size_t j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const size_t kn = std::min(kKeyBlock, kend - j0);
        std::fill(S, S + kQueryBlock * kKeyBlock, 0.0f);
        kern.gemm_acc(S, kKeyBlock, q + i0 * dk, dk, kt + j0 * dk, kKeyBlock, qn, dk, kn);
        // S becomes the tile's unnormalised weights exp(scale * s - m) (0 where masked).
        for (size_t r = 0; r < qn; ++r) {
          const size_t lim = visible(a, i0 + r, j0, kn);
          float* row = S + r * kKeyBlock;
          if (lim == 0) {
            std::fill(row, row + kn, 0.0f);
            continue;
          }
          float tile_max = neg_inf;
          for (size_t c = 0; c < lim; ++c) {
            row[c] *= a.scale;
            tile_max = std::max(tile_max, row[c]);
          }
          const float m_new = std::max(mx[r], tile_max);
          if (mx[r] != neg_inf && m_new != mx[r]) {
            const float corr = std::exp(mx[r] - m_new);
            float* ar = acc + r * dk;
            for (size_t c = 0; c < dk; ++c) ar[c] *= corr;
            l[r] *= corr;
          }
          mx[r] = m_new;
          for (size_t c = 0; c < lim; ++c) row[c] -= m_new;
          kern.vexp(row, row, lim);
          std::fill(row + lim, row + kn, 0.0f);
          for (size_t c = 0; c < lim; ++c) l[r] += row[c];
        }
        kern.gemm_acc(acc, dk, S, kKeyBlock, vv + j0 * dk, dk, qn, kn, dk);
      }
      for (size_t r = 0; r < qn; ++r) {
        const size_t i = i0 + r;
        const float inv = 1.0f / l[r];
        float* o = out + i * D + h * dk;
        for (size_t c = 0; c < dk; ++c) o[c] = acc[r * dk + c] * inv;
        lse[h * n + i] = mx[r] + std::log(l[r]);
      }
    }
  });
}

void dense_attention_backward(const AttentionArgs& a, const float* out, const float* lse, const float* dout,
                              float* dQ, float* dK, float* dV) {
  check(a, false);
  const size_t n = a.n, H = a.heads, dk = a.dk;
  const Kernels& kern = *a.kernels;
  TrimOnExit trim_on_exit;
  ThreadScratch& scr = thread_scratch();
  const size_t N = H * n * dk;
  const float* Qh = split_heads(a.Q, n, H, dk, scr.get(0, N));
  const float* QT = transpose_heads(a.Q, n, H, dk, scr.get(1, N));
  const float* Kh = split_heads(a.K, n, H, dk, scr.get(2, N));
  const float* Vh = split_heads(a.V, n, H, dk, scr.get(3, N));
  const float* Gh = split_heads(dout, n, H, dk, scr.get(4, N));
  const float* GT = transpose_heads(dout, n, H, dk, scr.get(5, N));
  const float* Oh = split_heads(out, n, H, dk, scr.get(6, N));
  float* dQh = zeroed(scr, 7, N);
  float* dKh = zeroed(scr, 8, N);
  float* dVh = zeroed(scr, 9, N);
  const size_t nw = workers_for(H, a.threads);
  std::vector<float*> pts(nw), dsts(nw), dss(nw), dgs(nw);
  for (size_t w = 0; w < nw; ++w) {
    pts[w] = scr.get(10 + 4 * w, kKeyBlock * kQueryBlock);
    dsts[w] = scr.get(11 + 4 * w, kKeyBlock * kQueryBlock);
    dss[w] = scr.get(12 + 4 * w, kQueryBlock * kKeyBlock);
    dgs[w] = scr.get(13 + 4 * w, n);
  }
  // One head per task (flash-attention 2's backward with the key block outside):
  // the head's dQ, dK and dV are written by one thread, in a fixed order.
  parallel_for(H, a.threads, [&](size_t begin, size_t end, size_t worker) {
    // Tiles with keys as rows (kn x qn): P^T, then dS^T; dS (qn x kn) for dQ.
    float* const PT = pts[worker];
    float* const dST = dsts[worker];
    float* const dS = dss[worker];
    float* const Dg = dgs[worker];
    for (size_t h = begin; h < end; ++h) {
      const size_t off = h * n * dk;
      const float* q = Qh + off;
      const float* qt = QT + off;
      const float* kk = Kh + off;
      const float* vv = Vh + off;
      const float* g = Gh + off;
      const float* gt = GT + off;
      const float* L = lse + h * n;
      for (size_t i = 0; i < n; ++i) Dg[i] = kern.dot(g + i * dk, Oh + off + i * dk, dk);
      for (size_t j0 = 0; j0 < n; j0 += kKeyBlock) {
        const size_t kn = std::min(kKeyBlock, n - j0);
        for (size_t i0 = a.causal ? j0 : 0; i0 < n; i0 += kQueryBlock) {
          const size_t qn = std::min(kQueryBlock, n - i0);
          std::fill(PT, PT + kKeyBlock * kQueryBlock, 0.0f);
          std::fill(dST, dST + kKeyBlock * kQueryBlock, 0.0f);
          kern.gemm_acc(PT, kQueryBlock, kk + j0 * dk, dk, qt + i0, n, kn, dk, qn);   // k_j . q_i
          kern.gemm_acc(dST, kQueryBlock, vv + j0 * dk, dk, gt + i0, n, kn, dk, qn);  // v_j . dO_i
          for (size_t c = 0; c < kn; ++c) {
            const size_t j = j0 + c;
            float* prow = PT + c * kQueryBlock;
            float* drow = dST + c * kQueryBlock;
            // Queries of this tile that see key j: all, or i >= j with the mask.
            const size_t r0 = a.causal ? std::min(qn, j > i0 ? j - i0 : 0) : 0;
            for (size_t r = 0; r < r0; ++r) prow[r] = drow[r] = 0.0f;
            for (size_t r = r0; r < qn; ++r) prow[r] = a.scale * prow[r] - L[i0 + r];
            kern.vexp(prow + r0, prow + r0, qn - r0);
            for (size_t r = r0; r < qn; ++r) drow[r] = a.scale * prow[r] * (drow[r] - Dg[i0 + r]);
            for (size_t r = 0; r < qn; ++r) dS[r * kKeyBlock + c] = drow[r];
          }
          kern.gemm_acc(dVh + off + j0 * dk, dk, PT, kQueryBlock, g + i0 * dk, dk, kn, qn, dk);
          kern.gemm_acc(dKh + off + j0 * dk, dk, dST, kQueryBlock, q + i0 * dk, dk, kn, qn, dk);
          kern.gemm_acc(dQh + off + i0 * dk, dk, dS, kKeyBlock, kk + j0 * dk, dk, qn, kn, dk);
        }
      }
    }
  });
  merge_heads(dQh, n, H, dk, dQ);
  merge_heads(dKh, n, H, dk, dK);
  merge_heads(dVh, n, H, dk, dV);
}

namespace {

constexpr size_t kPanel = 16;        // columns of B per packed panel (gemm_acc's register block)
constexpr size_t kGemmRows = 32;     // rows of C per task
constexpr size_t kGemmDepth = 128;   // terms of the sum per pass (the A block stays in cache)
constexpr double kGemmThreadWork = 1u << 21;  // multiply-adds per extra thread worth its start

// A buffer of at least `count` floats that keeps its memory between calls on this
// thread (the addon's worker threads live on): a fresh large allocation is mapped
// and page-faulted anew on each call, which costs more than the packing itself.
float* scratch(std::vector<float>& buf, size_t count) {
  if (buf.size() < count) buf.resize(count);
  return buf.data();
}

// B (kd x nc) with element (t, j) at B[t * rs + j * cs], packed into `out` as column
// panels of kPanel: panel p holds columns [p * kPanel, ...) as kd contiguous rows of
// kPanel (the last panel's missing columns are 0). Strided rows of B alias in the L1
// cache; a panel is read with unit stride instead.
const float* pack_panels(const float* B, size_t kd, size_t nc, size_t rs, size_t cs, std::vector<float>& buf) {
  const size_t panels = (nc + kPanel - 1) / kPanel;
  float* out = scratch(buf, panels * kd * kPanel);
  for (size_t p = 0; p < panels; ++p) {
    const size_t j0 = p * kPanel, w = std::min(kPanel, nc - j0);
    float* dst = out + p * kd * kPanel;
    if (w < kPanel) std::fill(dst, dst + kd * kPanel, 0.0f);
    if (cs == 1) {
      for (size_t t = 0; t < kd; ++t) std::copy(B + t * rs + j0, B + t * rs + j0 + w, dst + t * kPanel);
    } else {
      for (size_t c = 0; c < w; ++c) {
        const float* src = B + (j0 + c) * cs;
        for (size_t t = 0; t < kd; ++t) dst[t * kPanel + c] = src[t * rs];
      }
    }
  }
  return out;
}

thread_local std::vector<float> tl_packed, tl_transposed;

// C (m x nc) = A (m x kd, row-major) B, B given packed (pack_panels); C overwritten.
// Each element is summed in increasing t by gemm_acc (depth blocks in order, C
// carried between them in f32), so the result does not depend
// on the thread count.
void gemm_packed(float* C, const float* A, const float* Bp, size_t m, size_t kd, size_t nc, size_t threads,
                 const Kernels& kern) {
  std::fill(C, C + m * nc, 0.0f);
  const size_t blocks = (m + kGemmRows - 1) / kGemmRows, panels = (nc + kPanel - 1) / kPanel;
  const double work = static_cast<double>(m) * kd * nc;
  const size_t useful = static_cast<size_t>(std::max(1.0, work / kGemmThreadWork));
  parallel_for(blocks, std::min(threads, useful), [&](size_t begin, size_t end, size_t) {
    for (size_t b = begin; b < end; ++b) {
      const size_t i0 = b * kGemmRows, rows = std::min(kGemmRows, m - i0);
      for (size_t t0 = 0; t0 < kd; t0 += kGemmDepth) {
        const size_t depth = std::min(kGemmDepth, kd - t0);
        for (size_t p = 0; p < panels; ++p) {
          const size_t j0 = p * kPanel, w = std::min(kPanel, nc - j0);
          kern.gemm_acc(C + i0 * nc + j0, nc, A + i0 * kd + t0, kd, Bp + (p * kd + t0) * kPanel, kPanel, rows, depth, w);
        }
      }
    }
  });
}

}  // namespace

void linear_forward(const float* X, size_t n, const float* W, size_t m, size_t d, size_t threads,
                    const Kernels& kern, float* y) {
  // y = X W^T: B = W^T, element (t, j) = W[j * d + t].
  gemm_packed(y, X, pack_panels(W, d, m, 1, d, tl_packed), n, d, m, threads, kern);
}

void linear_backward(const float* X, size_t n, const float* W, size_t m, size_t d, const float* dY, size_t threads,
                     const Kernels& kern, float* dX, float* dW) {
  gemm_packed(dX, dY, pack_panels(W, m, d, d, 1, tl_packed), n, m, d, threads, kern);  // dX = dY W
  // dW = dY^T X: A = dY^T (m x n, row-major).
  float* dyt = scratch(tl_transposed, m * n);
  constexpr size_t kTile = 32;
  for (size_t i0 = 0; i0 < n; i0 += kTile)
    for (size_t j0 = 0; j0 < m; j0 += kTile)
      for (size_t i = i0; i < std::min(n, i0 + kTile); ++i)
        for (size_t j = j0; j < std::min(m, j0 + kTile); ++j) dyt[j * n + i] = dY[i * m + j];
  gemm_packed(dW, dyt, pack_panels(X, n, d, d, 1, tl_packed), m, n, d, threads, kern);
}

}  // namespace gt
