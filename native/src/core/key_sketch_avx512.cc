// The key sketch's first pass (key_sketch.h) with AVX-512F: compiled with the avx512 library's
// flags, reached only when cpu.cc found AVX-512 and the caller's kernels are the AVX-512 table
// (key_sketch.cc checks). Each key's lane computes what scan_avx2 computes for it (the same
// fused multiply-adds over t in the same order, the same bound), 16 keys a vector instead of 8.
// As key_sketch_avx2.cc, no project header with inline functions is included.
#include <cstddef>
#include <cstdint>

namespace gt {
using SketchScan = void (*)(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho,
                            const float* coef, size_t kn, float* a, float* hi, float* maxes);
extern const SketchScan kSketchScanAVX512;
constexpr size_t kSketchBlock512 = 256;  // kDecodeKeyBlock (static_assert in key_sketch.cc)
}  // namespace gt

#if defined(__AVX512F__) && defined(__FMA__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself (as kernels_avx512.cc).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

namespace gt {
namespace {

// G groups of 16 keys from key c: each key's a and hi, and the running maxes (a NaN a leaves
// ma as it was; a NaN hi counts as +inf, so a block holding one is never skipped).
template <int G>
inline void scan_groups(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho, __m512 c0,
                        __m512 c1, __m512 c2, size_t c, float* a, float* hi, __m512& ma, __m512& mhi) {
  const __m512 pinf = _mm512_set1_ps(__builtin_inff());
  __m512 acc[G];
  for (int g = 0; g < G; ++g) acc[g] = _mm512_setzero_ps();
  for (size_t t = 0; t < r; ++t) {
    const int8_t* p = codes + t * kSketchBlock512 + c;
    const __m512 ut = _mm512_set1_ps(u[t]);
    for (int g = 0; g < G; ++g) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * g));
      acc[g] = _mm512_fmadd_ps(ut, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), acc[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const size_t o = c + 16 * static_cast<size_t>(g);
    const __m512 B = _mm512_mul_ps(
        _mm512_add_ps(_mm512_mul_ps(c0, _mm512_loadu_ps(eps + o)), _mm512_mul_ps(c1, _mm512_loadu_ps(rho + o))), c2);
    const __m512 h = _mm512_add_ps(acc[g], B);
    _mm512_storeu_ps(a + o, acc[g]);
    _mm512_storeu_ps(hi + o, h);
    ma = _mm512_max_ps(acc[g], ma);
    mhi = _mm512_max_ps(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(h, h, _CMP_UNORD_Q), h, pinf), mhi);
  }
}

void scan_avx512(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho, const float* coef,
                 size_t kn, float* a, float* hi, float* maxes) {
  __m512 ma = _mm512_set1_ps(-__builtin_inff()), mhi = ma;
  const __m512 c0 = _mm512_set1_ps(coef[0]), c1 = _mm512_set1_ps(coef[1]), c2 = _mm512_set1_ps(coef[2]);
  size_t c = 0;
  for (; c + 64 <= kn; c += 64) scan_groups<4>(codes, r, u, eps, rho, c0, c1, c2, c, a, hi, ma, mhi);
  // A last 32 keys by vector too: scan_avx2 takes every key below kn - kn % 32 by its vector
  // path (fused), the rest by its scalar loop (not fused), and so does this pass.
  if (c + 32 <= kn) {
    scan_groups<2>(codes, r, u, eps, rho, c0, c1, c2, c, a, hi, ma, mhi);
    c += 32;
  }
  float ml = _mm512_reduce_max_ps(ma), mh = _mm512_reduce_max_ps(mhi);
  for (; c < kn; ++c) {
    float s = 0.0f;
    for (size_t t = 0; t < r; ++t) s += u[t] * static_cast<float>(codes[t * kSketchBlock512 + c]);
    const float B = (coef[0] * eps[c] + coef[1] * rho[c]) * coef[2];
    a[c] = s;
    hi[c] = s + B;
    ml = s > ml ? s : ml;
    mh = hi[c] != hi[c] ? __builtin_inff() : (hi[c] > mh ? hi[c] : mh);
  }
  maxes[0] = ml;
  maxes[1] = mh;
}

}  // namespace
const SketchScan kSketchScanAVX512 = scan_avx512;
}  // namespace gt
#else
namespace gt {
const SketchScan kSketchScanAVX512 = nullptr;
}
#endif
