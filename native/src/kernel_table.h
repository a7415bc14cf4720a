// The kernel function table shared by all SIMD levels. Per-level files include only
// this header (no standard-library templates; see kernels.h).
#pragma once
#include <stddef.h>

namespace gt {

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
};

// Per-level tables (defined in kernels_<level>.cc; null when not compiled in).
extern const Kernels* const kKernelsScalar;
extern const Kernels* const kKernelsAVX2;
extern const Kernels* const kKernelsAVX512;
extern const Kernels* const kKernelsNEON;

}  // namespace gt
