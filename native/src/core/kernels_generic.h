// Element-wise kernels written as plain loops, included by every per-level file so
// each level's compiler flags vectorise them (no intrinsics, no standard library:
// see kernel_table.h). Static: each level gets its own copy.
#pragma once
#include <stddef.h>
#include <string.h>

namespace gt {
namespace {

// y[i] += a * x[i]
static void axpy_generic(float* y, float a, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// y[i] = exp(x[i]) (Cephes expf: range reduction by ln 2, degree-6 polynomial,
// relative error below 3e-7). Inputs below -87 give 0, above 88 are clamped to
// exp(88); a NaN gives exp(88) (callers never pass one: softmax inputs are finite).
static void exp_generic(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float in = x[i];
    float v = in > 88.0f ? 88.0f : in;
    v = v < -87.0f ? -87.0f : v;
    // Round v / ln 2 to the nearest integer with the 1.5 * 2^23 trick (|v / ln 2| < 2^22).
    const float t = v * 1.44269504088896341f;
    const float f = (t + 12582912.0f) - 12582912.0f;
    float r = v - f * 0.693359375f;
    r = r - f * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int e = (int)f + 127;
    const unsigned bits = (unsigned)e << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    y[i] = in < -87.0f ? 0.0f : p * scale;
  }
}

// C[i * ldc + j] += sum_t A[i * lda + t] * B[t * ldb + j] for i < m, t < kd, j < nc.
// Register blocks of 4 rows x 16 columns (GCC / Clang vector extensions, so each
// level's flags pick the instructions); edges in plain loops. The sum over t runs
// in increasing t for every element, whatever the block.
#if defined(__GNUC__)
// The vector type is never passed across a non-inlined call (no ABI concern).
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float gt_v8f __attribute__((vector_size(32)));

static inline gt_v8f load8(const float* p) {
  gt_v8f v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void store8(float* p, const gt_v8f* v) { memcpy(p, v, sizeof *v); }
#endif

// Multiply-adds may fuse (FMA where the level has it): these tiles are not part of
// the canonical arithmetic, and the rounding is still fixed per level.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=fast")))
#endif
static void gemm_acc_generic(float* C, size_t ldc, const float* A, size_t lda, const float* B, size_t ldb, size_t m,
                             size_t kd, size_t nc) {
  size_t j0 = 0;
#if defined(__GNUC__)
  for (; j0 + 16 <= nc; j0 += 16) {
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
      gt_v8f c[4][2];
      for (int r = 0; r < 4; ++r) {
        c[r][0] = load8(C + (i + r) * ldc + j0);
        c[r][1] = load8(C + (i + r) * ldc + j0 + 8);
      }
      for (size_t t = 0; t < kd; ++t) {
        const gt_v8f b0 = load8(B + t * ldb + j0), b1 = load8(B + t * ldb + j0 + 8);
        for (int r = 0; r < 4; ++r) {
          const float a = A[(i + r) * lda + t];
          const gt_v8f av = {a, a, a, a, a, a, a, a};
          c[r][0] += av * b0;
          c[r][1] += av * b1;
        }
      }
      for (int r = 0; r < 4; ++r) {
        store8(C + (i + r) * ldc + j0, &c[r][0]);
        store8(C + (i + r) * ldc + j0 + 8, &c[r][1]);
      }
    }
    for (; i < m; ++i) {
      gt_v8f c0 = load8(C + i * ldc + j0), c1 = load8(C + i * ldc + j0 + 8);
      for (size_t t = 0; t < kd; ++t) {
        const float a = A[i * lda + t];
        const gt_v8f av = {a, a, a, a, a, a, a, a};
        c0 += av * load8(B + t * ldb + j0);
        c1 += av * load8(B + t * ldb + j0 + 8);
      }
      store8(C + i * ldc + j0, &c0);
      store8(C + i * ldc + j0 + 8, &c1);
    }
  }
#endif
  for (size_t i = 0; i < m; ++i)
    for (size_t j = j0; j < nc; ++j) {
      float s = C[i * ldc + j];
      for (size_t t = 0; t < kd; ++t) s += A[i * lda + t] * B[t * ldb + j];
      C[i * ldc + j] = s;
    }
}

}  // namespace
}  // namespace gt
