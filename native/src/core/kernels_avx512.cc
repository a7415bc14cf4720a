// AVX-512F kernels. Compiled with -mavx512f -mavx2 -mfma (/arch:AVX512) in their own
// static library; reached only when cpu.cc found AVX-512F, AVX2, FMA and OS support
// for ZMM state. Tails use masked loads, so there is no scalar remainder loop.
#include "kernel_table.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself, which
// trips these warnings at every shuffle/extract; the value is never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "kernels_generic.h"

namespace gt {
namespace {

inline __mmask16 tail_mask(size_t rem) {
  return static_cast<__mmask16>((1u << rem) - 1u);
}

float dot_avx512(const float* a, const float* b, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16)
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

float l2sq_avx512(const float* a, const float* b, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
    __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32));
    __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48));
    a0 = _mm512_fmadd_ps(d0, d0, a0);
    a1 = _mm512_fmadd_ps(d1, d1, a1);
    a2 = _mm512_fmadd_ps(d2, d2, a2);
    a3 = _mm512_fmadd_ps(d3, d3, a3);
  }
  for (; i + 16 <= n; i += 16) {
    __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    a0 = _mm512_fmadd_ps(d0, d0, a0);
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    __m512 d0 = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    a1 = _mm512_fmadd_ps(d0, d0, a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

float sum_avx512(const float* a, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(_mm512_loadu_ps(a + i), a0);
    a1 = _mm512_add_ps(_mm512_loadu_ps(a + i + 16), a1);
    a2 = _mm512_add_ps(_mm512_loadu_ps(a + i + 32), a2);
    a3 = _mm512_add_ps(_mm512_loadu_ps(a + i + 48), a3);
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_add_ps(_mm512_loadu_ps(a + i), a0);
  if (i < n) a1 = _mm512_add_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), a + i), a1);
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// Horizontal sum in a fixed tree (GCC's _mm512_reduce_add_ps, written out so that every
// compiler and both row kernels below add in this order): upper 256 + lower 256, then
// upper 128 + lower 128, then lanes {2,3} onto {0,1}, then lane 1 onto lane 0.
inline float hsum_halves(__m256 lo, __m256 hi) {
  const __m256 t3 = _mm256_add_ps(hi, lo);
  const __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
  const __m128 t8 = _mm_add_ps(t6, _mm_shuffle_ps(t6, t6, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtss_f32(_mm_add_ss(t8, _mm_shuffle_ps(t8, t8, _MM_SHUFFLE(1, 1, 1, 1))));
}
inline float hsum512(__m512 v) {
  const __m256 lo = _mm512_castps512_ps256(v);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return hsum_halves(lo, hi);
}

template <bool kL2>
inline __m512 step(__m512 acc, __m512 x, __m512 rv) {
  if (kL2) {
    x = _mm512_sub_ps(x, rv);
    return _mm512_fmadd_ps(x, x, acc);
  }
  return _mm512_fmadd_ps(x, rv, acc);
}

// QN queries x RN rows with one accumulator per pair (16-lane chunks, masked tail,
// horizontal sum): a pair's score never depends on how queries were grouped.
template <bool kL2, int QN, int RN>
void micro(const float* q, const float* r, size_t d, float* out, size_t ldo) {
  __m512 acc[QN][RN];
  for (int i = 0; i < QN; ++i)
    for (int j = 0; j < RN; ++j) acc[i][j] = _mm512_setzero_ps();
  size_t t = 0;
  for (; t < d; t += 16) {
    const __mmask16 m = d - t >= 16 ? static_cast<__mmask16>(0xFFFF) : tail_mask(d - t);
    __m512 rv[RN];
    for (int j = 0; j < RN; ++j) rv[j] = _mm512_maskz_loadu_ps(m, r + j * d + t);
    for (int i = 0; i < QN; ++i) {
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + i * d + t);
      for (int j = 0; j < RN; ++j) acc[i][j] = step<kL2>(acc[i][j], qv, rv[j]);
    }
  }
  for (int i = 0; i < QN; ++i)
    for (int j = 0; j < RN; ++j) out[i * ldo + j] = hsum512(acc[i][j]);
}

template <bool kL2>
inline __m256 step256(__m256 acc, __m256 x, __m256 rv) {
  if (kL2) {
    x = _mm256_sub_ps(x, rv);
    return _mm256_fmadd_ps(x, x, acc);
  }
  return _mm256_fmadd_ps(x, rv, acc);
}

// The one-query streaming kernels' software prefetch (kOneQueryPrefetchBytes, kernel_table.h;
// AVX2's rows_n too).
// A row's accumulator is one dependency chain of d / 16 FMAs (its bits fix the order),
// so a long row fills the reorder buffer with FMAs waiting on each other, the core stops
// looking ahead for loads, and fewer cache lines are in flight than a plain read keeps:
// 0.63-0.72 of the plain read (the sum kernel) over the same huge-page rows at d = 256 to
// 1,024 on the 2-core Xeon VM. A prefetch of each line 8 KiB ahead (retired at once, it
// never waits) brought that to 0.79-0.86; 4 KiB gave about the same, 1 KiB less, and short
// rows (rows16, d <= 128) nothing. Prefetch is a hint: past the buffer's end it does not fault.
inline void prefetch_ahead(const float* p) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + kOneQueryPrefetchBytes), _MM_HINT_T0);
}

// One query x N consecutive rows, the streaming kernel for long rows: each row's 16-lane
// accumulator is micro<kL2, 1, 1>'s, kept as two 256-bit halves (lane-wise the same
// operations and the same reduction tree, so the same bits), and N rows advance together
// (independent chains), each line prefetched kOneQueryPrefetchBytes ahead. A 64-byte load from a
// row that does not start on a 64-byte boundary (d not a multiple of 16, adopted storage)
// splits two cache lines every time and ran at half the read bandwidth; 32-byte loads
// split every other time. On aligned rows the halves measured as fast or slightly faster
// (AMD Zen 4).
template <bool kL2, int N>
inline void rows_n(const float* q, const float* R, size_t d, float* out) {
  __m256 lo[N], hi[N];
  for (int n = 0; n < N; ++n) lo[n] = hi[n] = _mm256_setzero_ps();
  size_t t = 0;
  for (; t + 16 <= d; t += 16) {
    const __m256 q0 = _mm256_loadu_ps(q + t), q1 = _mm256_loadu_ps(q + t + 8);
    for (int n = 0; n < N; ++n) {
      prefetch_ahead(R + n * d + t);
      lo[n] = step256<kL2>(lo[n], q0, _mm256_loadu_ps(R + n * d + t));
      hi[n] = step256<kL2>(hi[n], q1, _mm256_loadu_ps(R + n * d + t + 8));
    }
  }
  for (int n = 0; n < N; ++n) {
    if (t < d) {  // the masked tail, exactly as micro does it
      const __mmask16 m = tail_mask(d - t);
      __m512 acc = _mm512_castpd_ps(
          _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo[n])), _mm256_castps_pd(hi[n]), 1));
      acc = step<kL2>(acc, _mm512_maskz_loadu_ps(m, q + t), _mm512_maskz_loadu_ps(m, R + n * d + t));
      out[n] = hsum512(acc);
    } else {
      out[n] = hsum_halves(lo[n], hi[n]);
    }
  }
}

// One query x 16 rows at once, for short rows (d <= kShortRowMaxDim): each row's 16-lane
// accumulator is built exactly as micro<kL2, 1, 1> builds it, and the 16 horizontal sums
// are then done together, transposed: at each level of hsum_halves's tree (lane j +
// lane j+8, then j + j+4, then j + j+2, then j + j+1) one add serves two or more rows,
// so a row costs ~3 shuffles and adds instead of ~7. Float addition is commutative, so
// each row's sum is the same pairs added in the same order: the same bits. Measured on
// the 2-core Xeon VM, quiet, one query, one thread, 128 MiB of rows, interleaved in one
// process against row_split: 1.39x / 1.25x at d = 16 (l2 / ip), 1.29x / 1.24x at 32,
// 1.18x / 1.23x at 64, 1.20x / 1.20x at 128 (against row_split, now rows_n<kL2, 1>).
// Longer rows go to rows_n (memory-bound).

// kChunks = ceil(d / 16), a constant, so that the 16 accumulators stay in registers.
template <bool kL2, int kChunks>
inline void rows16(const float* q, const float* R, size_t d, float* out) {
  __m512 v[16];
  const __mmask16 last = tail_mask(d - 16 * (kChunks - 1));
  {
    const __mmask16 m = kChunks == 1 ? last : static_cast<__mmask16>(0xFFFF);
    const __m512 qv = _mm512_maskz_loadu_ps(m, q);
    for (int r = 0; r < 16; ++r) v[r] = step<kL2>(_mm512_setzero_ps(), qv, _mm512_maskz_loadu_ps(m, R + r * d));
  }
  for (int c = 1; c < kChunks; ++c) {
    const __mmask16 m = c == kChunks - 1 ? last : static_cast<__mmask16>(0xFFFF);
    const __m512 qv = _mm512_maskz_loadu_ps(m, q + 16 * c);
    for (int r = 0; r < 16; ++r) v[r] = step<kL2>(v[r], qv, _mm512_maskz_loadu_ps(m, R + r * d + 16 * c));
  }
  // Level 1: rows x, x+1 -> [x: l_j + l_{j+8} (j < 8) | x+1: the same].
  __m512 w[8];
  for (int p = 0; p < 8; ++p)
    w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44), _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
  // Level 2: -> four rows a vector, one per 128-bit lane: l_j + l_{j+4} (j < 4).
  __m512 x[4];
  for (int p = 0; p < 4; ++p)
    x[p] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], 0x88), _mm512_shuffle_f32x4(w[2 * p], w[2 * p + 1], 0xDD));
  // Level 3: per 128-bit lane [a: j + j+2 (j < 2) | b: the same], a from x[2p], b from x[2p+1].
  __m512 y[2];
  for (int p = 0; p < 2; ++p)
    y[p] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * p], x[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(x[2 * p], x[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // Level 4: lane j + lane j+1: per 128-bit lane L, [x0.L, x1.L, x2.L, x3.L]'s rows.
  const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(y[0], y[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // Lane 4L + c holds row 4c + ... : x[c] holds rows 4c..4c+3 (lane L: row 4c + L).
  // So lane 4L + c is row 4c + L; gather the rows back into order.
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_ps(out, _mm512_permutexvar_ps(idx, z));
}

template <bool kL2>
void block_avx512(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                  size_t ldo) {
  size_t i = 0;
  for (; i + 4 <= nq; i += 4) {
    // 4 queries x 4 rows: 8 loads for 16 FMAs (4 x 1 made 5 loads for 4, and was bound by
    // them); then 4 x 1 for the rows left. Each pair keeps its own accumulator, so the bits
    // are micro<kL2, 1, 1>'s whatever the tile.
    size_t j = 0;
    for (; j + 4 <= nr; j += 4) micro<kL2, 4, 4>(Q + i * d, R + j * d, d, out + i * ldo + j, ldo);
    for (; j < nr; ++j) micro<kL2, 4, 1>(Q + i * d, R + j * d, d, out + i * ldo + j, ldo);
  }
  // Leftover queries (all of them for one query per call): short rows 16 at a time
  // (rows16), long ones two at a time (rows_n), in address order.
  for (; i < nq; ++i) {
    size_t j = 0;
    if (d <= kShortRowMaxDim) {
      void (*f)(const float*, const float*, size_t, float*) = nullptr;
      switch ((d + 15) / 16) {
        case 1: f = rows16<kL2, 1>; break;
        case 2: f = rows16<kL2, 2>; break;
        case 3: f = rows16<kL2, 3>; break;
        case 4: f = rows16<kL2, 4>; break;
        case 5: f = rows16<kL2, 5>; break;
        case 6: f = rows16<kL2, 6>; break;
        case 7: f = rows16<kL2, 7>; break;
        default: f = rows16<kL2, 8>; break;
      }
      for (; j + 16 <= nr; j += 16) f(Q + i * d, R + j * d, d, out + i * ldo + j);
    } else {
      // Long rows two at a time (two chains: 1.02-1.06x one at a time, with the prefetch).
      for (; j + 2 <= nr; j += 2) rows_n<kL2, 2>(Q + i * d, R + j * d, d, out + i * ldo + j);
    }
    for (; j < nr; ++j) rows_n<kL2, 1>(Q + i * d, R + j * d, d, out + i * ldo + j);
  }
}

void dot_block_avx512(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                      size_t ldo) {
  block_avx512<false>(Q, nq, R, nr, d, out, ldo);
}
void l2_block_avx512(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                     size_t ldo) {
  block_avx512<true>(Q, nq, R, nr, d, out, ldo);
}

GT_HNSW_WRAPPERS(dot_avx512, l2sq_avx512)

const Kernels kTable = {dot_avx512, l2sq_avx512, sum_avx512, dot_block_avx512, l2_block_avx512, hnsw_ip_wrap,
                         hnsw_l2_wrap, axpy_generic, exp_generic, gemm_acc_generic};

}  // namespace
const Kernels* const kKernelsAVX512 = &kTable;
}  // namespace gt

#else
namespace gt {
const Kernels* const kKernelsAVX512 = nullptr;
}
#endif
