#include "sparse_hopfield.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"

namespace gt {

namespace {
size_t workers_for(size_t B, size_t k, size_t w, size_t threads) {
  return B * k * w < (1u << 16) ? 1 : threads;  // small batches: a thread costs more than it saves
}
}  // namespace

void sparse_mix_forward(const SparseMixArgs& a, float* weights, float* out) {
  const size_t k = a.k, w = a.w;
  parallel_for(a.B, workers_for(a.B, k, w, a.threads), [&](size_t b0, size_t b1, size_t) {
    for (size_t b = b0; b < b1; ++b) {
      const float* s = a.s + b * k;
      float* wt = weights + b * k;
      float mx = -INFINITY;
      for (size_t j = 0; j < k; ++j) mx = std::max(mx, a.beta * s[j]);
      double z = 0.0;
      for (size_t j = 0; j < k; ++j) z += std::exp(static_cast<double>(a.beta * s[j] - mx));
      for (size_t j = 0; j < k; ++j) wt[j] = static_cast<float>(std::exp(static_cast<double>(a.beta * s[j] - mx)) / z);
      float* o = out + b * w;
      std::fill(o, o + w, 0.0f);
      for (size_t j = 0; j < k; ++j) {
        const float aj = wt[j];
        const float* r = a.rows + (b * k + j) * w;
        for (size_t t = 0; t < w; ++t) o[t] += aj * r[t];
      }
    }
  });
}

void sparse_mix_backward(const SparseMixArgs& a, const float* weights, const float* out, const float* dout,
                         float* drows, float* ds, double* dbeta) {
  const size_t k = a.k, w = a.w;
  std::vector<double> part(a.B, 0.0);
  parallel_for(a.B, workers_for(a.B, k, w, a.threads), [&](size_t b0, size_t b1, size_t) {
    for (size_t b = b0; b < b1; ++b) {
      const float* g = dout + b * w;
      const float c = a.kernels->dot(g, out + b * w, w);
      double pb = 0.0;
      for (size_t j = 0; j < k; ++j) {
        const size_t r = b * k + j;
        const float aj = weights[r];
        const float gj = aj * (a.kernels->dot(g, a.rows + r * w, w) - c);
        ds[r] = a.beta * gj;
        pb += static_cast<double>(gj) * a.s[r];
        float* dr = drows + r * w;
        for (size_t t = 0; t < w; ++t) dr[t] = aj * g[t];
      }
      part[b] = pb;
    }
  });
  double total = 0.0;
  for (double p : part) total += p;  // fixed order: independent of the thread count
  *dbeta = total;
}

void sparse_key_backward(Metric metric, size_t B, size_t k, size_t d, const float* q, const float* keys,
                         const float* s, const float* ds, size_t threads, const Kernels& kr, float* dq,
                         float* dkeys) {
  parallel_for(B, workers_for(B, k, d, threads), [&](size_t b0, size_t b1, size_t) {
    for (size_t b = b0; b < b1; ++b) {
      const float* qb = q + b * d;
      float* dqb = dq + b * d;
      std::fill(dqb, dqb + d, 0.0f);
      const float qn = metric == Metric::Cosine ? std::sqrt(kr.dot(qb, qb, d)) : 1.0f;
      for (size_t j = 0; j < k; ++j) {
        const size_t r = b * k + j;
        const float g = ds[r];
        const float* K = keys + r * d;
        float* dK = dkeys + r * d;
        if (metric == Metric::IP) {
          for (size_t t = 0; t < d; ++t) {
            dK[t] = g * qb[t];
            dqb[t] += g * K[t];
          }
        } else if (metric == Metric::L2) {
          for (size_t t = 0; t < d; ++t) {
            const float diff = qb[t] - K[t];
            dK[t] = 2.0f * g * diff;
            dqb[t] -= 2.0f * g * diff;
          }
        } else {
          const float kn = std::sqrt(kr.dot(K, K, d));
          if (qn == 0.0f || kn == 0.0f) {  // cosine is 0 there and flat
            std::fill(dK, dK + d, 0.0f);
            continue;
          }
          const float c = s[r];
          for (size_t t = 0; t < d; ++t) {
            const float u = qb[t] / qn, kh = K[t] / kn;
            dK[t] = g * (u - c * kh) / kn;
            dqb[t] += g * (kh - c * u) / qn;
          }
        }
      }
    }
  });
}

}  // namespace gt
