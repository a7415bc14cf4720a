// The kernel function table shared by all SIMD levels. Per-level files include only
// this header (no standard-library templates; see kernels.h).
#pragma once
#include <stddef.h>

namespace gt {

// How far ahead the one-query kernels for long rows (AVX-512 and AVX2 rows_n) prefetch
// each line, and the row length above which they run (kernels_avx512.cc says why).
constexpr size_t kOneQueryPrefetchBytes = 8192;
constexpr size_t kShortRowMaxDim = 128;

struct Kernels {
  // sum_i a[i] * b[i]
  float (*dot)(const float* a, const float* b, size_t n);
  // sum_i (a[i] - b[i])^2
  float (*l2sq)(const float* a, const float* b, size_t n);
  // sum_i a[i]: a plain read of the bytes (the bandwidth reference for benchmarks).
  float (*sum)(const float* a, size_t n);
  // out[i * ldo + j] = dot(Q + i*d, R + j*d) for i < nq, j < nr. Rows of R are reused
  // from cache across queries (register block of 4 queries x 1 row).
  void (*dot_block)(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                    size_t ldo);
  // Same with squared L2 distance.
  void (*l2_block)(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                   size_t ldo);
  // hnswlib distance functions (DISTFUNC shape; `param` points to the size_t dim):
  // 1 - dot(a, b) and l2sq(a, b), one call with the kernel inlined.
  float (*hnsw_ip)(const void* a, const void* b, const void* param);
  float (*hnsw_l2)(const void* a, const void* b, const void* param);
  // y[i] += a * x[i] (kernels_generic.h)
  void (*axpy)(float* y, float a, const float* x, size_t n);
  // y[i] = exp(x[i]), relative error below 3e-7; x < -87 gives 0 (kernels_generic.h)
  void (*vexp)(const float* x, float* y, size_t n);
  // C (m x nc, row stride ldc) += A (m x kd, stride lda) . B (kd x nc, stride ldb)
  // (kernels_generic.h): register-blocked, for the attention tiles.
  void (*gemm_acc)(float* C, size_t ldc, const float* A, size_t lda, const float* B, size_t ldb, size_t m, size_t kd,
                   size_t nc);
};

// Defines the two hnswlib-shaped wrappers of a level's dot and l2sq kernels.
#define GT_HNSW_WRAPPERS(DOT, L2)                                                          \
  float hnsw_ip_wrap(const void* a, const void* b, const void* p) {                        \
    return 1.0f - DOT(static_cast<const float*>(a), static_cast<const float*>(b),          \
                      *static_cast<const size_t*>(p));                                     \
  }                                                                                        \
  float hnsw_l2_wrap(const void* a, const void* b, const void* p) {                        \
    return L2(static_cast<const float*>(a), static_cast<const float*>(b), *static_cast<const size_t*>(p)); \
  }

// Per-level tables (defined in kernels_<level>.cc; null when not compiled in).
extern const Kernels* const kKernelsScalar;
extern const Kernels* const kKernelsAVX2;
extern const Kernels* const kKernelsAVX512;
extern const Kernels* const kKernelsNEON;

}  // namespace gt
