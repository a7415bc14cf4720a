#include "dense_hopfield.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "parallel.h"

namespace gt {

namespace {

constexpr size_t kChunk = 1024;

std::vector<float> inv_norms(const Kernels& kr, const float* x, size_t n, size_t d) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    const float n2 = kr.dot(x + i * d, x + i * d, d);
    out[i] = n2 > 0.0f ? 1.0f / std::sqrt(n2) : 0.0f;
  }
  return out;
}

// S (B x nc) = sim(q, K_j) for keys [c0, c0 + nc).
void similarities(const DenseHopfieldArgs& a, const std::vector<float>& qinv, size_t c0, size_t nc, float* S) {
  const Kernels& kr = *a.kernels;
  const float* Kc = a.K + c0 * a.d;
  if (a.metric == Metric::L2) {
    kr.l2_block(a.Q, a.B, Kc, nc, a.d, S, nc);
    for (size_t i = 0; i < a.B * nc; ++i) S[i] = -S[i];
    return;
  }
  kr.dot_block(a.Q, a.B, Kc, nc, a.d, S, nc);
  if (a.metric == Metric::Cosine) {
    const std::vector<float> kinv = inv_norms(kr, Kc, nc, a.d);
    for (size_t q = 0; q < a.B; ++q)
      for (size_t j = 0; j < nc; ++j) S[q * nc + j] *= qinv[q] * kinv[j];
  }
}

size_t chunks_of(size_t n) { return (n + kChunk - 1) / kChunk; }

}  // namespace

void dense_hopfield_forward(const DenseHopfieldArgs& a, float* y, float* lse) {
  const size_t B = a.B, dv = a.dv, nchunks = chunks_of(a.N);
  const std::vector<float> qinv = inv_norms(*a.kernels, a.Q, B, a.d);
  // Per chunk and query: the chunk's max logit, sum of exp(l - max), and the
  // exp-weighted sum of V rows.
  std::vector<float> cmax(nchunks * B), csum(nchunks * B), cy(nchunks * B * dv);
  parallel_for(nchunks, a.threads, [&](size_t b, size_t e, size_t) {
    std::vector<float> S(B * kChunk);
    for (size_t c = b; c < e; ++c) {
      const size_t c0 = c * kChunk, nc = std::min(kChunk, a.N - c0);
      similarities(a, qinv, c0, nc, S.data());
      for (size_t q = 0; q < B; ++q) {
        float* s = S.data() + q * nc;
        float mx = -std::numeric_limits<float>::infinity();
        for (size_t j = 0; j < nc; ++j) {
          s[j] *= a.beta;
          mx = std::max(mx, s[j]);
        }
        float* yq = cy.data() + (c * B + q) * dv;
        std::fill(yq, yq + dv, 0.0f);
        double z = 0.0;
        for (size_t j = 0; j < nc; ++j) {
          const float w = std::exp(s[j] - mx);
          z += w;
          const float* vj = a.V + (c0 + j) * dv;
          for (size_t t = 0; t < dv; ++t) yq[t] += w * vj[t];
        }
        cmax[c * B + q] = mx;
        csum[c * B + q] = static_cast<float>(z);
      }
    }
  });
  for (size_t q = 0; q < B; ++q) {
    float mx = -std::numeric_limits<float>::infinity();
    for (size_t c = 0; c < nchunks; ++c) mx = std::max(mx, cmax[c * B + q]);
    double z = 0.0;
    std::vector<double> acc(dv, 0.0);
    for (size_t c = 0; c < nchunks; ++c) {
      const double f = std::exp(static_cast<double>(cmax[c * B + q]) - mx);
      z += f * csum[c * B + q];
      const float* yq = cy.data() + (c * B + q) * dv;
      for (size_t t = 0; t < dv; ++t) acc[t] += f * yq[t];
    }
    for (size_t t = 0; t < dv; ++t) y[q * dv + t] = static_cast<float>(acc[t] / z);
    lse[q] = static_cast<float>(mx + std::log(z));
  }
}

void dense_hopfield_backward(const DenseHopfieldArgs& a, const float* y, const float* lse, const float* dy,
                             float* dQ, float* dK, float* dV, double* dbeta) {
  const Kernels& kr = *a.kernels;
  const size_t B = a.B, d = a.d, dv = a.dv, nchunks = chunks_of(a.N);
  const std::vector<float> qinv = inv_norms(kr, a.Q, B, d);
  std::vector<float> cdot(B);  // dy_q . y_q = sum_j a_j (dy_q . V_j)
  for (size_t q = 0; q < B; ++q) cdot[q] = kr.dot(dy + q * dv, y + q * dv, dv);
  // The "effective" query vectors the similarity is bilinear in: q itself (ip, l2)
  // or q / |q| (cosine).
  std::vector<float> P(a.Q, a.Q + B * d);
  if (a.metric == Metric::Cosine)
    for (size_t q = 0; q < B; ++q)
      for (size_t t = 0; t < d; ++t) P[q * d + t] *= qinv[q];
  // Per chunk: dP partial (B x d), sum_j dS (B, for l2) and dbeta partial; merged in order.
  std::vector<float> cdP(nchunks * B * d), crow(nchunks * B);
  std::vector<double> cbeta(nchunks);
  parallel_for(nchunks, a.threads, [&](size_t b, size_t e, size_t) {
    std::vector<float> S(B * kChunk), G(B * kChunk), R(kChunk * d);
    for (size_t c = b; c < e; ++c) {
      const size_t c0 = c * kChunk, nc = std::min(kChunk, a.N - c0);
      const float* Kc = a.K + c0 * d;
      const float* Vc = a.V + c0 * dv;
      similarities(a, qinv, c0, nc, S.data());
      kr.dot_block(dy, B, Vc, nc, dv, G.data(), nc);  // dA = dy . V_j
      std::vector<float> kinv;
      if (a.metric == Metric::Cosine) kinv = inv_norms(kr, Kc, nc, d);
      for (size_t j = 0; j < nc; ++j)
        for (size_t t = 0; t < d; ++t) R[j * d + t] = kinv.empty() ? Kc[j * d + t] : Kc[j * d + t] * kinv[j];
      double gb = 0.0;
      // G := dS = beta * a (dA - dy.y), with a = exp(beta s - lse); dV = sum_q a dy.
      float* dVc = dV + c0 * dv;
      std::fill(dVc, dVc + nc * dv, 0.0f);
      for (size_t q = 0; q < B; ++q) {
        const float* s = S.data() + q * nc;
        float* g = G.data() + q * nc;
        const float* dyq = dy + q * dv;
        for (size_t j = 0; j < nc; ++j) {
          const float aj = std::exp(a.beta * s[j] - lse[q]);
          const float gj = aj * (g[j] - cdot[q]);
          gb += static_cast<double>(gj) * s[j];
          g[j] = a.beta * gj;
          float* dvj = dVc + j * dv;
          for (size_t t = 0; t < dv; ++t) dvj[t] += aj * dyq[t];
        }
      }
      cbeta[c] = gb;
      // dR_j = sum_q dS[q][j] P_q ; dP_q = sum_j dS[q][j] R_j.
      float* dKc = dK + c0 * d;
      std::fill(dKc, dKc + nc * d, 0.0f);
      float* dPc = cdP.data() + c * B * d;
      std::fill(dPc, dPc + B * d, 0.0f);
      for (size_t q = 0; q < B; ++q) {
        const float* g = G.data() + q * nc;
        const float* pq = P.data() + q * d;
        float* dpq = dPc + q * d;
        float rs = 0.0f;
        for (size_t j = 0; j < nc; ++j) {
          const float gj = g[j];
          rs += gj;
          const float* rj = R.data() + j * d;
          float* dkj = dKc + j * d;
          for (size_t t = 0; t < d; ++t) {
            dkj[t] += gj * pq[t];
            dpq[t] += gj * rj[t];
          }
        }
        crow[c * B + q] = rs;
      }
      // Chain through the similarity: l2 (s = -|q - K|^2) and cosine (normalised K).
      if (a.metric == Metric::L2) {
        for (size_t j = 0; j < nc; ++j) {
          float cs = 0.0f;
          for (size_t q = 0; q < B; ++q) cs += G[q * nc + j];
          for (size_t t = 0; t < d; ++t) dKc[j * d + t] = 2.0f * (dKc[j * d + t] - cs * Kc[j * d + t]);  // d/dK = 2 (q - K)
        }
      } else if (a.metric == Metric::Cosine) {
        for (size_t j = 0; j < nc; ++j) {
          float* dkj = dKc + j * d;
          const float* rj = R.data() + j * d;
          const float pr = kr.dot(dkj, rj, d);
          for (size_t t = 0; t < d; ++t) dkj[t] = (dkj[t] - rj[t] * pr) * kinv[j];
        }
      }
    }
  });
  double gb = 0.0;
  for (size_t c = 0; c < nchunks; ++c) gb += cbeta[c];
  *dbeta = gb;
  for (size_t q = 0; q < B; ++q) {
    float* dq = dQ + q * d;
    std::fill(dq, dq + d, 0.0f);
    float rs = 0.0f;
    for (size_t c = 0; c < nchunks; ++c) {
      const float* p = cdP.data() + (c * B + q) * d;
      for (size_t t = 0; t < d; ++t) dq[t] += p[t];
      rs += crow[c * B + q];
    }
    const float* qq = a.Q + q * d;
    if (a.metric == Metric::L2) {
      // d/dq of -|q - K_j|^2 = 2 (K_j - q): 2 (sum_j dS K_j - rs q).
      for (size_t t = 0; t < d; ++t) dq[t] = 2.0f * (dq[t] - rs * qq[t]);
    } else if (a.metric == Metric::Cosine) {
      const float* u = P.data() + q * d;
      const float pu = kr.dot(dq, u, d);
      for (size_t t = 0; t < d; ++t) dq[t] = (dq[t] - u[t] * pu) * qinv[q];
    }
  }
}

}  // namespace gt
