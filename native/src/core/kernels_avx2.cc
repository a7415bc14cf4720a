// AVX2 + FMA kernels. Compiled with -mavx2 -mfma (/arch:AVX2) in their own static
// library; reached only when cpu.cc found AVX2, FMA and OS support for YMM state.
#include "kernel_table.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cstdint>

#include "kernels_generic.h"

namespace gt {
namespace {

inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}

float dot_avx2(const float* a, const float* b, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float l2sq_avx2(const float* a, const float* b, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
    __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
    a0 = _mm256_fmadd_ps(d0, d0, a0);
    a1 = _mm256_fmadd_ps(d1, d1, a1);
    a2 = _mm256_fmadd_ps(d2, d2, a2);
    a3 = _mm256_fmadd_ps(d3, d3, a3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    a0 = _mm256_fmadd_ps(d0, d0, a0);
  }
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) {
    const float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

float sum_avx2(const float* a, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(_mm256_loadu_ps(a + i), a0);
    a1 = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), a1);
    a2 = _mm256_add_ps(_mm256_loadu_ps(a + i + 16), a2);
    a3 = _mm256_add_ps(_mm256_loadu_ps(a + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_add_ps(_mm256_loadu_ps(a + i), a0);
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) s += a[i];
  return s;
}

template <bool kL2>
inline __m256 step(__m256 acc, __m256 x, __m256 r) {
  if (kL2) {
    x = _mm256_sub_ps(x, r);
    return _mm256_fmadd_ps(x, x, acc);
  }
  return _mm256_fmadd_ps(x, r, acc);
}

// QN queries x RN rows with one accumulator per pair, so a pair's score has the
// same summation order (8-lane chunks, horizontal sum, scalar tail) whichever
// micro-kernel computed it: results never depend on how queries were grouped.
template <bool kL2, int QN, int RN>
void micro(const float* q, const float* r, size_t d, float* out, size_t ldo) {
  __m256 acc[QN][RN];
  for (int i = 0; i < QN; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = _mm256_setzero_ps();
  size_t t = 0;
  for (; t + 8 <= d; t += 8) {
    __m256 rv[RN];
    for (int j = 0; j < RN; ++j) rv[j] = _mm256_loadu_ps(r + j * d + t);
    for (int i = 0; i < QN; ++i) {
      const __m256 qv = _mm256_loadu_ps(q + i * d + t);
      for (int j = 0; j < RN; ++j) acc[i][j] = step<kL2>(acc[i][j], qv, rv[j]);
    }
  }
  for (int i = 0; i < QN; ++i)
    for (int j = 0; j < RN; ++j) {
      float s = hsum256(acc[i][j]);
      for (size_t u = t; u < d; ++u) {
        const float x = q[i * d + u], y = r[j * d + u];
        s += kL2 ? (x - y) * (x - y) : x * y;
      }
      out[i * ldo + j] = s;
    }
}

// One query x N consecutive rows for long rows: each row's accumulator is
// micro<kL2, 1, 1>'s (8-lane chunks in order, horizontal sum, scalar tail: the same bits),
// N rows advance together, and each line is prefetched 8 KiB ahead: a row's accumulator is
// one dependency chain, which stops the core looking ahead for loads (see kOneQueryPrefetchBytes
// in kernels_avx512.cc; measured there and here with bench/exact-topk.mjs).
template <bool kL2, int N>
inline void rows_n(const float* q, const float* R, size_t d, float* out) {
  __m256 acc[N];
  for (int n = 0; n < N; ++n) acc[n] = _mm256_setzero_ps();
  size_t t = 0;
  for (; t + 16 <= d; t += 16) {
    const __m256 q0 = _mm256_loadu_ps(q + t), q1 = _mm256_loadu_ps(q + t + 8);
    for (int n = 0; n < N; ++n) {
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(R + n * d + t) + kOneQueryPrefetchBytes), _MM_HINT_T0);
      acc[n] = step<kL2>(acc[n], q0, _mm256_loadu_ps(R + n * d + t));
      acc[n] = step<kL2>(acc[n], q1, _mm256_loadu_ps(R + n * d + t + 8));
    }
  }
  if (t + 8 <= d) {
    const __m256 q0 = _mm256_loadu_ps(q + t);
    for (int n = 0; n < N; ++n) acc[n] = step<kL2>(acc[n], q0, _mm256_loadu_ps(R + n * d + t));
    t += 8;
  }
  for (int n = 0; n < N; ++n) {
    float s = hsum256(acc[n]);
    for (size_t u = t; u < d; ++u) {
      const float x = q[u], y = R[n * d + u];
      s += kL2 ? (x - y) * (x - y) : x * y;
    }
    out[n] = s;
  }
}

template <bool kL2>
void block_avx2(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                size_t ldo) {
  size_t i = 0;
  for (; i + 4 <= nq; i += 4) {
    // 4 queries x 2 rows (8 accumulators and 3 loaded vectors fit the 16 registers): 6
    // loads for 8 FMAs instead of 5 for 4; then 4 x 1 for a row left. Each pair keeps its
    // own accumulator, so the bits are micro<kL2, 1, 1>'s whatever the tile.
    size_t j = 0;
    for (; j + 2 <= nr; j += 2) micro<kL2, 4, 2>(Q + i * d, R + j * d, d, out + i * ldo + j, ldo);
    for (; j < nr; ++j) micro<kL2, 4, 1>(Q + i * d, R + j * d, d, out + i * ldo + j, ldo);
  }
  // Leftover queries (all of them for one query per call), in address order: long rows
  // two at a time with the prefetch (rows_n), short ones one at a time.
  for (; i < nq; ++i) {
    size_t j = 0;
    if (d > kShortRowMaxDim) {
      for (; j + 2 <= nr; j += 2) rows_n<kL2, 2>(Q + i * d, R + j * d, d, out + i * ldo + j);
      for (; j < nr; ++j) rows_n<kL2, 1>(Q + i * d, R + j * d, d, out + i * ldo + j);
    }
    for (; j < nr; ++j) micro<kL2, 1, 1>(Q + i * d, R + j * d, d, out + i * ldo + j, ldo);
  }
}

void dot_block_avx2(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                    size_t ldo) {
  block_avx2<false>(Q, nq, R, nr, d, out, ldo);
}
void l2_block_avx2(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                   size_t ldo) {
  block_avx2<true>(Q, nq, R, nr, d, out, ldo);
}

GT_HNSW_WRAPPERS(dot_avx2, l2sq_avx2)

const Kernels kTable = {dot_avx2, l2sq_avx2, sum_avx2, dot_block_avx2, l2_block_avx2, hnsw_ip_wrap,
                         hnsw_l2_wrap, axpy_generic, exp_generic, gemm_acc_generic};

}  // namespace
const Kernels* const kKernelsAVX2 = &kTable;
}  // namespace gt

#else
namespace gt {
const Kernels* const kKernelsAVX2 = nullptr;
}
#endif
