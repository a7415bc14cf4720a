// The key sketch's first pass (key_sketch.h) with AVX-512 VNNI: compiled in the avx512 library,
// its functions carry the target attribute for AVX512BW and AVX512_VNNI (the library's flags
// stay AVX-512F, so no other code there can use them), reached only when cpu.cc found AVX-512
// with VNNI and the caller's kernels are the AVX-512 table (key_sketch.cc checks). vpdpbusd
// multiplies 16 keys x 4 biased codes (u8) by the query's 4 int8 weights and adds the four
// products to each key's int32 sum: the exact sums of the portable loop plus 128 sum w, which is
// subtracted (exact too); then the same f32 operations in the same order, so each key's a and hi
// are the portable loop's bits. As key_sketch_avx2.cc, no project header with inline functions
// is included.
#include <cstddef>
#include <cstdint>

namespace gt {
using SketchScan = void (*)(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                            const float* rho, const float* coef, size_t kn, float* a, float* hi, float* maxes);
extern const SketchScan kSketchScanAVX512;
using SketchScan4 = void (*)(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a,
                             float* maxes);
extern const SketchScan4 kSketchScan4AVX512;
}  // namespace gt

#if defined(__AVX512F__) && defined(__FMA__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself (as kernels_avx512.cc).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "key_sketch_one.h"

#define GT_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

namespace gt {
namespace {

// G groups of 16 keys from key c: each key's a and hi, and the running maxes (a NaN hi counts
// as +inf, so a block holding one is never skipped).
template <int G>
GT_VNNI inline void scan_groups(const uint8_t* codes, size_t g4, const int8_t* w, __m512 s0, __m512 s1, __m512i b0,
                                __m512i b1, const float* eps, const float* rho, __m512 c0, __m512 c1, __m512 c2,
                                __m512 c3, size_t c, float* a, float* hi, __m512& ma, __m512& mhi) {
  const __m512 pinf = _mm512_set1_ps(__builtin_inff());
  __m512i n0[G], n1[G];
  for (int g = 0; g < G; ++g) n0[g] = n1[g] = _mm512_setzero_si512();
  for (size_t q = 0; q < g4; ++q) {
    int32_t w0, w1;
    __builtin_memcpy(&w0, w + 4 * q, 4);
    __builtin_memcpy(&w1, w + 4 * g4 + 4 * q, 4);
    const __m512i v0 = _mm512_set1_epi32(w0), v1 = _mm512_set1_epi32(w1);
    for (int g = 0; g < G; ++g) {
      const __m512i x = _mm512_loadu_si512(codes + ((c / 16 + static_cast<size_t>(g)) * g4 + q) * 64);
      n0[g] = _mm512_dpbusd_epi32(n0[g], x, v0);
      n1[g] = _mm512_dpbusd_epi32(n1[g], x, v1);
    }
  }
  for (int g = 0; g < G; ++g) {
    const size_t o = c + 16 * static_cast<size_t>(g);
    const __m512 av = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(n0[g], b0)), s0),
                                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(n1[g], b1)), s1));
    const __m512 B = _mm512_add_ps(
        _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(c0, _mm512_loadu_ps(eps + o)), _mm512_mul_ps(c1, _mm512_loadu_ps(rho + o))), c2),
        c3);
    const __m512 h = _mm512_add_ps(av, B);
    _mm512_storeu_ps(a + o, av);
    _mm512_storeu_ps(hi + o, h);
    ma = _mm512_max_ps(av, ma);
    mhi = _mm512_max_ps(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(h, h, _CMP_UNORD_Q), h, pinf), mhi);
  }
}

GT_VNNI void scan_avx512(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                         const float* rho, const float* coef, size_t kn, float* a, float* hi, float* maxes) {
  __m512 ma = _mm512_set1_ps(-__builtin_inff()), mhi = ma;
  const __m512 c0 = _mm512_set1_ps(coef[0]), c1 = _mm512_set1_ps(coef[1]), c2 = _mm512_set1_ps(coef[2]),
               c3 = _mm512_set1_ps(coef[3]), s0 = _mm512_set1_ps(sig[0]), s1 = _mm512_set1_ps(sig[1]);
  // 128 sum_t w_l[t]: what the bias of the codes adds to each sum.
  int32_t sw0 = 0, sw1 = 0;
  for (size_t t = 0; t < 4 * g4; ++t) {
    sw0 += w[t];
    sw1 += w[4 * g4 + t];
  }
  const __m512i b0 = _mm512_set1_epi32(128 * sw0), b1 = _mm512_set1_epi32(128 * sw1);
  size_t c = 0;
  for (; c + 64 <= kn; c += 64) scan_groups<4>(codes, g4, w, s0, s1, b0, b1, eps, rho, c0, c1, c2, c3, c, a, hi, ma, mhi);
  for (; c + 16 <= kn; c += 16) scan_groups<1>(codes, g4, w, s0, s1, b0, b1, eps, rho, c0, c1, c2, c3, c, a, hi, ma, mhi);
  float ml = _mm512_reduce_max_ps(ma), mh = _mm512_reduce_max_ps(mhi);
  for (; c < kn; ++c) {
    sketch_detail::score_one(codes, g4, w, sig, eps, rho, coef, c, a, hi);
    ml = a[c] > ml ? a[c] : ml;
    mh = hi[c] != hi[c] ? __builtin_inff() : (hi[c] > mh ? hi[c] : mh);
  }
  maxes[0] = ml;
  maxes[1] = mh;
}

// The 4-bit pass (key_sketch.h, SketchScan4): a 64-byte load holds 16 keys x 8 coordinates; its
// low nibbles (and 15) are coordinates 8 g..8 g + 3 and its high nibbles (shift, and 15) the next
// four, each a vpdpbusd against the four weights they meet. The sums are the portable loop's plus
// 8 sum w, subtracted; then one conversion and one product, as the portable loop.
template <int G>
GT_VNNI inline void scan4_groups(const uint8_t* codes, size_t g8, const int8_t* w, __m512i bias, __m512 sv, size_t c,
                                 float* a, __m512& ma) {
  const __m512i low = _mm512_set1_epi8(15);
  __m512i n[G];
  for (int g = 0; g < G; ++g) n[g] = _mm512_setzero_si512();
  for (size_t q = 0; q < g8; ++q) {
    int32_t w0, w1;
    __builtin_memcpy(&w0, w + 8 * q, 4);
    __builtin_memcpy(&w1, w + 8 * q + 4, 4);
    const __m512i v0 = _mm512_set1_epi32(w0), v1 = _mm512_set1_epi32(w1);
    for (int g = 0; g < G; ++g) {
      const __m512i x = _mm512_loadu_si512(codes + ((c / 16 + static_cast<size_t>(g)) * g8 + q) * 64);
      n[g] = _mm512_dpbusd_epi32(n[g], _mm512_and_si512(x, low), v0);
      n[g] = _mm512_dpbusd_epi32(n[g], _mm512_and_si512(_mm512_srli_epi16(x, 4), low), v1);
    }
  }
  for (int g = 0; g < G; ++g) {
    const __m512 av = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(n[g], bias)), sv);
    _mm512_storeu_ps(a + c + 16 * static_cast<size_t>(g), av);
    ma = _mm512_max_ps(av, ma);
  }
}

GT_VNNI void scan4_avx512(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a,
                          float* maxes) {
  __m512 ma = _mm512_set1_ps(-__builtin_inff());
  int32_t sw = 0;
  for (size_t t = 0; t < 8 * g8; ++t) sw += w[t];
  const __m512i bias = _mm512_set1_epi32(8 * sw);
  const __m512 sv = _mm512_set1_ps(sig);
  size_t c = 0;
  for (; c + 64 <= kn; c += 64) scan4_groups<4>(codes, g8, w, bias, sv, c, a, ma);
  for (; c + 16 <= kn; c += 16) scan4_groups<1>(codes, g8, w, bias, sv, c, a, ma);
  float ml = _mm512_reduce_max_ps(ma);
  for (; c < kn; ++c) {
    sketch_detail::score_one4(codes, g8, w, sw, sig, c, a);
    ml = a[c] > ml ? a[c] : ml;
  }
  maxes[0] = ml;
}

}  // namespace
const SketchScan kSketchScanAVX512 = scan_avx512;
const SketchScan4 kSketchScan4AVX512 = scan4_avx512;
}  // namespace gt
#else
namespace gt {
const SketchScan kSketchScanAVX512 = nullptr;
const SketchScan4 kSketchScan4AVX512 = nullptr;
}
#endif
