// The key sketch's first pass (key_sketch.h) with AVX2 + FMA: compiled with -mavx2 -mfma in
// the avx2 library, reached only when cpu.cc found AVX2 (key_sketch.cc checks). Elsewhere
// (other architectures) the pointer is null and the portable loop runs. Like the kernel
// files, it includes no project header with inline functions (none compiled with these flags
// can be picked by the linker for baseline code): the declarations are repeated here.
#include <cstddef>
#include <cstdint>

namespace gt {
using SketchScan = void (*)(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho,
                            const float* coef, size_t kn, float* a, float* hi, float* maxes);
extern const SketchScan kSketchScanAVX2;
using SketchCollect = size_t (*)(const float* v, size_t n, float thr, bool strict, uint32_t* out);
extern const SketchCollect kSketchCollectAVX2;
constexpr size_t kSketchBlock = 256;  // kSketchBlock (static_assert in key_sketch.cc)
}  // namespace gt

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace gt {
namespace {

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// As sketch_scan_portable (key_sketch.h): 32 keys at a time, then the rest one by one.
void scan_avx2(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho, const float* coef,
               size_t kn, float* a, float* hi, float* maxes) {
  const float ninf = -__builtin_inff();
  const __m256 pinf = _mm256_set1_ps(__builtin_inff());
  __m256 ma = _mm256_set1_ps(ninf), mhi = ma;
  const __m256 c0 = _mm256_set1_ps(coef[0]), c1 = _mm256_set1_ps(coef[1]), c2 = _mm256_set1_ps(coef[2]);
  size_t c = 0;
  for (; c + 32 <= kn; c += 32) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (size_t t = 0; t < r; ++t) {
      const int8_t* p = codes + t * kSketchBlock + c;
      const __m256 ut = _mm256_set1_ps(u[t]);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      const __m128i l = _mm256_castsi256_si128(raw), h = _mm256_extracti128_si256(raw, 1);
      acc[0] = _mm256_fmadd_ps(ut, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(l)), acc[0]);
      acc[1] = _mm256_fmadd_ps(ut, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(l, 8))), acc[1]);
      acc[2] = _mm256_fmadd_ps(ut, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h)), acc[2]);
      acc[3] = _mm256_fmadd_ps(ut, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(h, 8))), acc[3]);
    }
    for (int g = 0; g < 4; ++g) {
      const size_t o = c + 8 * static_cast<size_t>(g);
      const __m256 B = _mm256_mul_ps(
          _mm256_add_ps(_mm256_mul_ps(c0, _mm256_loadu_ps(eps + o)), _mm256_mul_ps(c1, _mm256_loadu_ps(rho + o))), c2);
      const __m256 h = _mm256_add_ps(acc[g], B);
      _mm256_storeu_ps(a + o, acc[g]);
      _mm256_storeu_ps(hi + o, h);
      ma = _mm256_max_ps(acc[g], ma);  // a NaN lane leaves the max as it was
      // A NaN upper end counts as +inf in the max (a block holding one is never skipped).
      mhi = _mm256_max_ps(_mm256_blendv_ps(h, pinf, _mm256_cmp_ps(h, h, _CMP_UNORD_Q)), mhi);
    }
  }
  float ml = hmax(ma), mh = hmax(mhi);
  for (; c < kn; ++c) {
    float s = 0.0f;
    for (size_t t = 0; t < r; ++t) s += u[t] * static_cast<float>(codes[t * kSketchBlock + c]);
    const float B = (coef[0] * eps[c] + coef[1] * rho[c]) * coef[2];
    a[c] = s;
    hi[c] = s + B;
    ml = s > ml ? s : ml;
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

}  // namespace
const SketchScan kSketchScanAVX2 = scan_avx2;
const SketchCollect kSketchCollectAVX2 = collect_avx2;
}  // namespace gt
#else
namespace gt {
const SketchScan kSketchScanAVX2 = nullptr;
const SketchCollect kSketchCollectAVX2 = nullptr;
}
#endif
