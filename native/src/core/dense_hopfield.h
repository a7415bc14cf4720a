// The dense Hopfield lookup (the baseline of HopfieldLookup): every one of N stored
// patterns takes part. For each query q (B of them, d floats):
//   s_j = sim(q, K_j) for all j < N,  a = softmax(beta * s),  y = sum_j a_j V_j.
// sim is ip (q . K_j), cosine (q . K_j / (|q| |K_j|), 0 for a zero vector) or
// l2 (-|q - K_j|^2). Rows are processed in fixed chunks of keys spread over threads
// and merged in chunk order, so results do not depend on the thread count. Memory
// is O(threads * B * chunk), never B * N.
#pragma once
#include <cstddef>

#include "kernels.h"
#include "metric.h"

namespace gt {

struct DenseHopfieldArgs {
  const float* Q = nullptr;  // B x d queries
  size_t B = 0, d = 0;
  const float* K = nullptr;  // N x d keys
  const float* V = nullptr;  // N x dv values
  size_t N = 0, dv = 0;
  float beta = 1.0f;
  Metric metric = Metric::IP;
  size_t threads = 1;
  const Kernels* kernels = nullptr;
};

// y: B x dv outputs; lse: B log-sum-exp of beta * s (kept for the backward pass).
void dense_hopfield_forward(const DenseHopfieldArgs& a, float* y, float* lse);

// Gradients of sum(dy . y): dQ (B x d), dK (N x d), dV (N x dv), dbeta.
// y and lse are the forward outputs.
void dense_hopfield_backward(const DenseHopfieldArgs& a, const float* y, const float* lse, const float* dy,
                             float* dQ, float* dK, float* dV, double* dbeta);

}  // namespace gt
