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

// n x (H * dk) -> H x n x dk, so a head's rows are contiguous for the block kernels.
std::vector<float> split_heads(const float* X, size_t n, size_t H, size_t dk) {
  std::vector<float> out(H * n * dk);
  for (size_t i = 0; i < n; ++i)
    for (size_t h = 0; h < H; ++h)
      std::copy(X + i * H * dk + h * dk, X + i * H * dk + (h + 1) * dk, out.data() + (h * n + i) * dk);
  return out;
}

// n x (H * dk) -> H x dk x n: a head's columns as rows, so a tile of keys (or
// queries) is the right operand of gemm_acc with stride n.
std::vector<float> transpose_heads(const float* X, size_t n, size_t H, size_t dk) {
  std::vector<float> out(H * n * dk);
  for (size_t i = 0; i < n; ++i)
    for (size_t h = 0; h < H; ++h)
      for (size_t t = 0; t < dk; ++t) out[(h * dk + t) * n + i] = X[i * H * dk + h * dk + t];
  return out;
}

// n x (H * dk) -> per head, per block of kKeyBlock rows: dk x kKeyBlock (the block's
// rows as columns, zero-padded), so a key tile is a compact right operand of gemm_acc.
std::vector<float> pack_key_blocks(const float* X, size_t n, size_t H, size_t dk) {
  const size_t nb = (n + kKeyBlock - 1) / kKeyBlock;
  std::vector<float> out(H * nb * dk * kKeyBlock, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const size_t b = i / kKeyBlock, c = i % kKeyBlock;
    for (size_t h = 0; h < H; ++h) {
      float* blk = out.data() + (h * nb + b) * dk * kKeyBlock;
      for (size_t t = 0; t < dk; ++t) blk[t * kKeyBlock + c] = X[i * H * dk + h * dk + t];
    }
  }
  return out;
}

void merge_heads(const std::vector<float>& in, size_t n, size_t H, size_t dk, float* X) {
  for (size_t i = 0; i < n; ++i)
    for (size_t h = 0; h < H; ++h)
      std::copy(in.data() + (h * n + i) * dk, in.data() + (h * n + i + 1) * dk, X + i * H * dk + h * dk);
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
  const std::vector<float> Qh = split_heads(a.Q, n, H, dk), KT = pack_key_blocks(a.K, n, H, dk),
                           Vh = split_heads(a.V, n, H, dk);
  const size_t nqb = (n + kQueryBlock - 1) / kQueryBlock, nkb = (n + kKeyBlock - 1) / kKeyBlock;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  parallel_for(H * nqb, a.threads, [&](size_t begin, size_t end, size_t) {
    std::vector<float> S(kQueryBlock * kKeyBlock), sc(k), w(k);
    std::vector<TopK> heaps;
    for (size_t t = begin; t < end; ++t) {
      const size_t h = t / nqb, i0 = (t % nqb) * kQueryBlock, qn = std::min(kQueryBlock, n - i0);
      const float* q = Qh.data() + h * n * dk;
      const float* kt = KT.data() + h * nkb * dk * kKeyBlock;
      const float* vv = Vh.data() + h * n * dk;
      heaps.assign(qn, TopK(k, true));
      const size_t kend = a.causal ? i0 + qn : n;
      for (size_t j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const size_t kn = std::min(kKeyBlock, kend - j0);
        std::fill(S.begin(), S.end(), 0.0f);
        kern.gemm_acc(S.data(), kKeyBlock, q + i0 * dk, dk, kt + j0 * dk, kKeyBlock, qn, dk, kn);
        for (size_t r = 0; r < qn; ++r) {
          const size_t lim = visible(a, i0 + r, j0, kn);
          TopK& hp = heaps[r];
          const float* row = S.data() + r * kKeyBlock;
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
        kern.vexp(sc.data(), w.data(), m);
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

void topk_attention_backward(const AttentionArgs& a, const uint32_t* ids, const float* weights, const float* dout,
                             float* dQ, float* dK, float* dV) {
  check(a, true);
  const size_t n = a.n, H = a.heads, dk = a.dk, k = a.k;
  const Kernels& kern = *a.kernels;
  const std::vector<float> Qh = split_heads(a.Q, n, H, dk), Kh = split_heads(a.K, n, H, dk),
                           Vh = split_heads(a.V, n, H, dk), Gh = split_heads(dout, n, H, dk);
  std::vector<float> dQh(H * n * dk, 0.0f), dKh(H * n * dk, 0.0f), dVh(H * n * dk, 0.0f);
  // One head per task: a head's key and value gradients are written by one thread.
  parallel_for(H, a.threads, [&](size_t begin, size_t end, size_t) {
    std::vector<float> dp(k);
    for (size_t h = begin; h < end; ++h) {
      const size_t off = h * n * dk;
      for (size_t i = 0; i < n; ++i) {
        const uint32_t* idr = ids + (h * n + i) * k;
        const float* wr = weights + (h * n + i) * k;
        const float* g = Gh.data() + off + i * dk;
        size_t m = 0;
        while (m < k && idr[m] != kNoKey) ++m;
        float dsum = 0.0f;
        for (size_t c = 0; c < m; ++c) {
          dp[c] = kern.dot(g, Vh.data() + off + static_cast<size_t>(idr[c]) * dk, dk);
          dsum += wr[c] * dp[c];
        }
        for (size_t c = 0; c < m; ++c) {
          const size_t j = idr[c];
          const float ds = a.scale * wr[c] * (dp[c] - dsum);
          kern.axpy(dQh.data() + off + i * dk, ds, Kh.data() + off + j * dk, dk);
          kern.axpy(dKh.data() + off + j * dk, ds, Qh.data() + off + i * dk, dk);
          kern.axpy(dVh.data() + off + j * dk, wr[c], g, dk);
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
  const std::vector<float> Qh = split_heads(a.Q, n, H, dk), KT = pack_key_blocks(a.K, n, H, dk),
                           Vh = split_heads(a.V, n, H, dk);
  const size_t nqb = (n + kQueryBlock - 1) / kQueryBlock, nkb = (n + kKeyBlock - 1) / kKeyBlock;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  parallel_for(H * nqb, a.threads, [&](size_t begin, size_t end, size_t) {
    std::vector<float> S(kQueryBlock * kKeyBlock), acc(kQueryBlock * dk), mx(kQueryBlock), l(kQueryBlock);
    for (size_t t = begin; t < end; ++t) {
      const size_t h = t / nqb, i0 = (t % nqb) * kQueryBlock, qn = std::min(kQueryBlock, n - i0);
      const float* q = Qh.data() + h * n * dk;
      const float* kt = KT.data() + h * nkb * dk * kKeyBlock;
      const float* vv = Vh.data() + h * n * dk;
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(mx.begin(), mx.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.0f);
      const size_t kend = a.causal ? i0 + qn : n;
      for (size_t j0 = 0; j0 < kend; j0 += kKeyBlock) {
        const size_t kn = std::min(kKeyBlock, kend - j0);
        std::fill(S.begin(), S.end(), 0.0f);
        kern.gemm_acc(S.data(), kKeyBlock, q + i0 * dk, dk, kt + j0 * dk, kKeyBlock, qn, dk, kn);
        // S becomes the tile's unnormalised weights exp(scale * s - m) (0 where masked).
        for (size_t r = 0; r < qn; ++r) {
          const size_t lim = visible(a, i0 + r, j0, kn);
          float* row = S.data() + r * kKeyBlock;
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
            float* ar = acc.data() + r * dk;
            for (size_t c = 0; c < dk; ++c) ar[c] *= corr;
            l[r] *= corr;
          }
          mx[r] = m_new;
          for (size_t c = 0; c < lim; ++c) row[c] -= m_new;
          kern.vexp(row, row, lim);
          std::fill(row + lim, row + kn, 0.0f);
          for (size_t c = 0; c < lim; ++c) l[r] += row[c];
        }
        kern.gemm_acc(acc.data(), dk, S.data(), kKeyBlock, vv + j0 * dk, dk, qn, kn, dk);
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
  const std::vector<float> Qh = split_heads(a.Q, n, H, dk), QT = transpose_heads(a.Q, n, H, dk),
                           Kh = split_heads(a.K, n, H, dk), Vh = split_heads(a.V, n, H, dk),
                           Gh = split_heads(dout, n, H, dk), GT = transpose_heads(dout, n, H, dk),
                           Oh = split_heads(out, n, H, dk);
  std::vector<float> dQh(H * n * dk, 0.0f), dKh(H * n * dk, 0.0f), dVh(H * n * dk, 0.0f);
  // One head per task (flash-attention 2's backward with the key block outside):
  // the head's dQ, dK and dV are written by one thread, in a fixed order.
  parallel_for(H, a.threads, [&](size_t begin, size_t end, size_t) {
    // Tiles with keys as rows (kn x qn): P^T, then dS^T; dS (qn x kn) for dQ.
    std::vector<float> PT(kKeyBlock * kQueryBlock), dST(kKeyBlock * kQueryBlock), dS(kQueryBlock * kKeyBlock), Dg(n);
    for (size_t h = begin; h < end; ++h) {
      const size_t off = h * n * dk;
      const float* q = Qh.data() + off;
      const float* qt = QT.data() + off;
      const float* kk = Kh.data() + off;
      const float* vv = Vh.data() + off;
      const float* g = Gh.data() + off;
      const float* gt = GT.data() + off;
      const float* L = lse + h * n;
      for (size_t i = 0; i < n; ++i) Dg[i] = kern.dot(g + i * dk, Oh.data() + off + i * dk, dk);
      for (size_t j0 = 0; j0 < n; j0 += kKeyBlock) {
        const size_t kn = std::min(kKeyBlock, n - j0);
        for (size_t i0 = a.causal ? j0 : 0; i0 < n; i0 += kQueryBlock) {
          const size_t qn = std::min(kQueryBlock, n - i0);
          std::fill(PT.begin(), PT.end(), 0.0f);
          std::fill(dST.begin(), dST.end(), 0.0f);
          kern.gemm_acc(PT.data(), kQueryBlock, kk + j0 * dk, dk, qt + i0, n, kn, dk, qn);   // k_j . q_i
          kern.gemm_acc(dST.data(), kQueryBlock, vv + j0 * dk, dk, gt + i0, n, kn, dk, qn);  // v_j . dO_i
          for (size_t c = 0; c < kn; ++c) {
            const size_t j = j0 + c;
            float* prow = PT.data() + c * kQueryBlock;
            float* drow = dST.data() + c * kQueryBlock;
            // Queries of this tile that see key j: all, or i >= j with the mask.
            const size_t r0 = a.causal ? std::min(qn, j > i0 ? j - i0 : 0) : 0;
            for (size_t r = 0; r < r0; ++r) prow[r] = drow[r] = 0.0f;
            for (size_t r = r0; r < qn; ++r) prow[r] = a.scale * prow[r] - L[i0 + r];
            kern.vexp(prow + r0, prow + r0, qn - r0);
            for (size_t r = r0; r < qn; ++r) drow[r] = a.scale * prow[r] * (drow[r] - Dg[i0 + r]);
            for (size_t r = 0; r < qn; ++r) dS[r * kKeyBlock + c] = drow[r];
          }
          kern.gemm_acc(dVh.data() + off + j0 * dk, dk, PT.data(), kQueryBlock, g + i0 * dk, dk, kn, qn, dk);
          kern.gemm_acc(dKh.data() + off + j0 * dk, dk, dST.data(), kQueryBlock, q + i0 * dk, dk, kn, qn, dk);
          kern.gemm_acc(dQh.data() + off + i0 * dk, dk, dS.data(), kKeyBlock, kk + j0 * dk, dk, qn, kn, dk);
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
