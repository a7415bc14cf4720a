// The key sketch's first pass (key_sketch.h) with AVX2 + FMA: compiled with -mavx2 -mfma in
// the avx2 library, reached only when cpu.cc found AVX2 (key_sketch.cc checks). Elsewhere
// (other architectures) the pointer is null and the portable loop runs. Like the kernel
// files, it includes no project header with inline functions (none compiled with these flags
// can be picked by the linker for baseline code): the declarations are repeated here.
#include <cstddef>
#include <cstdint>

namespace gt {
using SketchScan = void (*)(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                            const float* rho, const float* coef, size_t kn, float* a, float* hi, float* maxes);
extern const SketchScan kSketchScanAVX2;
using SketchCollect = size_t (*)(const float* v, size_t n, float thr, bool strict, uint32_t* out);
extern const SketchCollect kSketchCollectAVX2;
using SketchScan4 = void (*)(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a,
                             float* maxes);
extern const SketchScan4 kSketchScan4AVX2;
}  // namespace gt

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "key_sketch_one.h"

namespace gt {
namespace {

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// As sketch_scan_portable (key_sketch.h): 8 keys x 4 coordinates a 32-byte load, each code
// unbiased (xor 0x80 gives code as int8), then |code| (u8) times w with code's sign (s8) by
// vpmaddubsw (|code| |w| <= 127 * 127: two of them never saturate int16) and vpmaddwd with ones:
// the exact int32 sums, the same as the portable loop's.
void scan_avx2(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps, const float* rho,
               const float* coef, size_t kn, float* a, float* hi, float* maxes) {
  const __m256 pinf = _mm256_set1_ps(__builtin_inff());
  __m256 ma = _mm256_set1_ps(-__builtin_inff()), mhi = ma;
  const __m256 c0 = _mm256_set1_ps(coef[0]), c1 = _mm256_set1_ps(coef[1]), c2 = _mm256_set1_ps(coef[2]),
               c3 = _mm256_set1_ps(coef[3]), s0 = _mm256_set1_ps(sig[0]), s1 = _mm256_set1_ps(sig[1]);
  const __m256i bias = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  size_t c = 0;
  for (; c + 8 <= kn; c += 8) {
    __m256i n0 = _mm256_setzero_si256(), n1 = _mm256_setzero_si256();
    for (size_t g = 0; g < g4; ++g) {
      const __m256i x = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + ((c / 16) * g4 + g) * 64 + (c % 16) * 4)), bias);
      int32_t w0, w1;
      __builtin_memcpy(&w0, w + 4 * g, 4);
      __builtin_memcpy(&w1, w + 4 * g4 + 4 * g, 4);
      const __m256i ax = _mm256_abs_epi8(x);
      n0 = _mm256_add_epi32(n0, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_set1_epi32(w0), x)), ones));
      n1 = _mm256_add_epi32(n1, _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(_mm256_set1_epi32(w1), x)), ones));
    }
    const __m256 av = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(n0), s0), _mm256_mul_ps(_mm256_cvtepi32_ps(n1), s1));
    const __m256 B = _mm256_add_ps(
        _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(c0, _mm256_loadu_ps(eps + c)), _mm256_mul_ps(c1, _mm256_loadu_ps(rho + c))), c2),
        c3);
    const __m256 h = _mm256_add_ps(av, B);
    _mm256_storeu_ps(a + c, av);
    _mm256_storeu_ps(hi + c, h);
    ma = _mm256_max_ps(av, ma);
    // A NaN upper end counts as +inf in the max (a block holding one is never skipped).
    mhi = _mm256_max_ps(_mm256_blendv_ps(h, pinf, _mm256_cmp_ps(h, h, _CMP_UNORD_Q)), mhi);
  }
  float ml = hmax(ma), mh = hmax(mhi);
  for (; c < kn; ++c) {
    sketch_detail::score_one(codes, g4, w, sig, eps, rho, coef, c, a, hi);
    ml = a[c] > ml ? a[c] : ml;
    mh = hi[c] != hi[c] ? __builtin_inff() : (hi[c] > mh ? hi[c] : mh);
  }
  maxes[0] = ml;
  maxes[1] = mh;
}

// As sketch_collect_portable (key_sketch.h): 8 values a compare, the set lanes' indices in order.
size_t collect_avx2(const float* v, size_t n, float thr, bool strict, uint32_t* out) {
  const __m256 t = _mm256_set1_ps(thr);
  size_t m = 0, j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_loadu_ps(v + j);
    unsigned bits = static_cast<unsigned>(
        _mm256_movemask_ps(strict ? _mm256_cmp_ps(x, t, _CMP_GT_OQ) : _mm256_cmp_ps(x, t, _CMP_NLT_UQ)));
    while (bits != 0) {
      out[m++] = static_cast<uint32_t>(j + static_cast<size_t>(__builtin_ctz(bits)));
      bits &= bits - 1;
    }
  }
  for (; j < n; ++j)
    if (strict ? v[j] > thr : !(v[j] < thr)) out[m++] = static_cast<uint32_t>(j);
  return m;
}

// As sketch_scan4_portable (key_sketch.h, SketchScan4): 8 keys x 8 coordinates a 32-byte load,
// its low nibbles against the group's first four weights and its high nibbles against the next
// four by vpmaddubsw (u8 times s8: each int16 sum at most 2 x 15 x 127, and the two added
// 4 x 15 x 127, never saturate), then vpmaddwd with ones: the exact int32 sums plus 8 sum w.
void scan4_avx2(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a, float* maxes) {
  __m256 ma = _mm256_set1_ps(-__builtin_inff());
  int32_t sw = 0;
  for (size_t t = 0; t < 8 * g8; ++t) sw += w[t];
  const __m256i bias = _mm256_set1_epi32(8 * sw), low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  const __m256 sv = _mm256_set1_ps(sig);
  size_t c = 0;
  for (; c + 8 <= kn; c += 8) {
    __m256i n = _mm256_setzero_si256();
    for (size_t g = 0; g < g8; ++g) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + ((c / 16) * g8 + g) * 64 + (c % 16) * 4));
      int32_t w0, w1;
      __builtin_memcpy(&w0, w + 8 * g, 4);
      __builtin_memcpy(&w1, w + 8 * g + 4, 4);
      const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(x, low), _mm256_set1_epi32(w0)),
                                         _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(x, 4), low), _mm256_set1_epi32(w1)));
      n = _mm256_add_epi32(n, _mm256_madd_epi16(p, ones));
    }
    const __m256 av = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(n, bias)), sv);
    _mm256_storeu_ps(a + c, av);
    ma = _mm256_max_ps(av, ma);
  }
  float ml = hmax(ma);
  for (; c < kn; ++c) {
    sketch_detail::score_one4(codes, g8, w, sw, sig, c, a);
    ml = a[c] > ml ? a[c] : ml;
  }
  maxes[0] = ml;
}

}  // namespace
const SketchScan kSketchScanAVX2 = scan_avx2;
const SketchCollect kSketchCollectAVX2 = collect_avx2;
const SketchScan4 kSketchScan4AVX2 = scan4_avx2;
}  // namespace gt
#else
namespace gt {
const SketchScan kSketchScanAVX2 = nullptr;
const SketchCollect kSketchCollectAVX2 = nullptr;
const SketchScan4 kSketchScan4AVX2 = nullptr;
}
#endif
