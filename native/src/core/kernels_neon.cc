// NEON (AArch64 ASIMD) kernels. NEON is part of the AArch64 baseline.
#include "kernel_table.h"

#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>

#include "kernels_generic.h"

namespace gt {
namespace {

float dot_neon(const float* a, const float* b, size_t n) {
  float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0), a2 = vdupq_n_f32(0), a3 = vdupq_n_f32(0);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = vfmaq_f32(a0, vld1q_f32(a + i), vld1q_f32(b + i));
    a1 = vfmaq_f32(a1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    a2 = vfmaq_f32(a2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
    a3 = vfmaq_f32(a3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
  }
  for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(a + i), vld1q_f32(b + i));
  float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float l2sq_neon(const float* a, const float* b, size_t n) {
  float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float32x4_t d0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
    float32x4_t d1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    a0 = vfmaq_f32(a0, d0, d0);
    a1 = vfmaq_f32(a1, d1, d1);
  }
  float s = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i) {
    const float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

float sum_neon(const float* a, size_t n) {
  float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 = vaddq_f32(a0, vld1q_f32(a + i));
    a1 = vaddq_f32(a1, vld1q_f32(a + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i) s += a[i];
  return s;
}

void dot_block_neon(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                    size_t ldo) {
  for (size_t i = 0; i < nq; ++i)
    for (size_t j = 0; j < nr; ++j) out[i * ldo + j] = dot_neon(Q + i * d, R + j * d, d);
}
void l2_block_neon(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                   size_t ldo) {
  for (size_t i = 0; i < nq; ++i)
    for (size_t j = 0; j < nr; ++j) out[i * ldo + j] = l2sq_neon(Q + i * d, R + j * d, d);
}

GT_HNSW_WRAPPERS(dot_neon, l2sq_neon)

const Kernels kTable = {dot_neon, l2sq_neon, sum_neon, dot_block_neon, l2_block_neon, hnsw_ip_wrap,
                         hnsw_l2_wrap, axpy_generic, exp_generic, gemm_acc_generic};

}  // namespace
const Kernels* const kKernelsNEON = &kTable;
}  // namespace gt

#else
namespace gt {
const Kernels* const kKernelsNEON = nullptr;
}
#endif
