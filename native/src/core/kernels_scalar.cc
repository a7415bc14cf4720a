// Portable kernels: eight independent accumulators, so the compiler may use the
// baseline vector unit (SSE2 / ASIMD) without reassociating a single sum.
#include "kernel_table.h"
#include "kernels_generic.h"

namespace gt {
namespace {

float dot_scalar(const float* a, const float* b, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float l2sq_scalar(const float* a, const float* b, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) {
      const float t = a[i + j] - b[i + j];
      acc[j] += t * t;
    }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) {
    const float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

float sum_scalar(const float* a, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i];
  return s;
}

void dot_block_scalar(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                      size_t ldo) {
  for (size_t i = 0; i < nq; ++i)
    for (size_t j = 0; j < nr; ++j) out[i * ldo + j] = dot_scalar(Q + i * d, R + j * d, d);
}

void l2_block_scalar(const float* Q, size_t nq, const float* R, size_t nr, size_t d, float* out,
                     size_t ldo) {
  for (size_t i = 0; i < nq; ++i)
    for (size_t j = 0; j < nr; ++j) out[i * ldo + j] = l2sq_scalar(Q + i * d, R + j * d, d);
}

GT_HNSW_WRAPPERS(dot_scalar, l2sq_scalar)

const Kernels kTable = {dot_scalar, l2sq_scalar, sum_scalar, dot_block_scalar, l2_block_scalar, hnsw_ip_wrap,
                         hnsw_l2_wrap, axpy_generic, exp_generic, gemm_acc_generic};

}  // namespace

const Kernels* const kKernelsScalar = &kTable;

}  // namespace gt
