// The sparse Hopfield lookup's math over rows already gathered (B inputs, k selected
// rows each, row-major B*k rows). Pure functions, parallel over inputs; the layer
// (lib/model/layers.ts) does retrieval and gathering and calls these off the JS thread.
//   forward:  a = softmax(beta * s) per input, out = sum_j a_j rows_j      (B x w)
//   backward: dRows_j = a_j dOut, ds_j = beta a_j (dOut.rows_j - dOut.out),
//             dbeta = sum a_j (dOut.rows_j - dOut.out) s_j
//   keys:     chain ds into the state q and the k key rows through the similarity
//             (ip: q.K ; cosine: q.K / (|q| |K|) ; l2: -|q - K|^2)
#pragma once
#include <cstddef>

#include "kernels.h"
#include "metric.h"

namespace gt {

struct SparseMixArgs {
  size_t B = 0, k = 0, w = 0;
  const float* rows = nullptr;  // B*k x w
  const float* s = nullptr;     // B x k similarities
  float beta = 1.0f;
  size_t threads = 1;
  const Kernels* kernels = nullptr;
};

void sparse_mix_forward(const SparseMixArgs& a, float* weights, float* out);
void sparse_mix_backward(const SparseMixArgs& a, const float* weights, const float* out, const float* dout,
                         float* drows, float* ds, double* dbeta);

// q: B x d states; keys: B*k x d selected key rows; s and ds: B x k. Writes dq (B x d)
// and dkeys (B*k x d).
void sparse_key_backward(Metric metric, size_t B, size_t k, size_t d, const float* q, const float* keys,
                         const float* s, const float* ds, size_t threads, const Kernels& kr, float* dq,
                         float* dkeys);

}  // namespace gt
