// The prover's C++ mirror of parts of the canonical training step; see canonical_step.h.
// Each loop below names the TypeScript it mirrors: the order of every f64 operation is
// that code's, so the results are the same bits.
#include "canonical_step.h"

#include <cmath>
#include <vector>

#include "canonical.h"

namespace gt {
namespace canonical {

namespace {

// cdot: sum_j a_j b_j from +0, in order.
template <typename A, typename B>
double dot_in_order(const A* a, const B* b, size_t n) {
  double s = 0.0;
  for (size_t j = 0; j < n; ++j) s = s + static_cast<double>(a[j]) * static_cast<double>(b[j]);
  return s;
}

// linear.ts addScaled: dst_j = dst_j + c src_j.
template <typename T>
void add_scaled(double* dst, double c, const T* src, size_t len) {
  for (size_t j = 0; j < len; ++j) dst[j] = dst[j] + c * static_cast<double>(src[j]);
}

}  // namespace

void hopfield_forward(const HopfieldForward& p) {
  const size_t B = p.B, k = p.k, d = p.d, dv = p.dv, S = p.S;
  const double beta = p.beta;
  std::vector<double> cur(d, 0.0), next(d, 0.0), ym(dv, 0.0);
  for (size_t b = 0; b < B; ++b) {
    // cstate
    state(p.x + b * d, d, p.normalize, cur.data());
    for (size_t si = 0; si < S; ++si) {
      const size_t slot = b * S + si, ao = slot * k;
      double* s = p.s + ao;
      double* a = p.a + ao;
      for (size_t j = 0; j < d; ++j) p.q[slot * d + j] = cur[j];
      // csimilarity
      const double nq = p.sim == Metric::Cosine ? norm(cur.data(), d) : 0.0;
      for (size_t i = 0; i < k; ++i)
        s[i] = similarity(cur.data(), nq, p.keys + static_cast<size_t>(p.key_row[ao + i]) * d, d, p.sim);
      // csoftmax
      double m = -HUGE_VAL;
      for (size_t i = 0; i < k; ++i) {
        a[i] = beta * s[i];
        if (a[i] > m) m = a[i];
      }
      double sum = 0.0;
      for (size_t i = 0; i < k; ++i) {
        a[i] = exp(a[i] - m);
        sum = sum + a[i];
      }
      for (size_t i = 0; i < k; ++i) a[i] = a[i] / sum;
      // cmix
      if (si == S - 1) {
        for (size_t j = 0; j < dv; ++j) ym[j] = 0.0;
        for (size_t i = 0; i < k; ++i) add_scaled(ym.data(), a[i], p.values + static_cast<size_t>(p.value_row[b * k + i]) * dv, dv);
        for (size_t j = 0; j < dv; ++j) p.y[b * dv + j] = static_cast<float>(ym[j]);
      } else {
        for (size_t j = 0; j < d; ++j) next[j] = 0.0;
        for (size_t i = 0; i < k; ++i) add_scaled(next.data(), a[i], p.keys + static_cast<size_t>(p.key_row[ao + i]) * d, d);
        cur.swap(next);
      }
    }
  }
}

void hopfield_backward(const HopfieldBackward& p) {
  const size_t B = p.B, k = p.k, d = p.d, dv = p.dv, S = p.S;
  const double beta = p.beta;
  std::vector<double> g(d > dv ? d : dv, 0.0), dq(d, 0.0), da(k, 0.0), ds(k, 0.0);
  for (size_t b = 0; b < B; ++b) {
    for (size_t j = 0; j < dv; ++j) g[j] = static_cast<double>(p.dy[b * dv + j]);
    for (size_t si = S; si-- > 0;) {
      const size_t slot = b * S + si, qo = slot * d, ao = slot * k;
      const double* q = p.q + qo;
      const double* a = p.a + ao;
      // (1) out = sum_i a_i R_i: da_i = g . R_i, dR_i += a_i g.
      for (size_t i = 0; i < k; ++i) {
        const double ai = a[i];
        if (si == S - 1) {
          const float* row = p.values + static_cast<size_t>(p.value_row[b * k + i]) * dv;
          da[i] = dot_in_order(g.data(), row, dv);
          add_scaled(p.acc_values + static_cast<size_t>(p.value_acc[b * k + i]) * dv, ai, g.data(), dv);
        } else {
          const float* row = p.keys + static_cast<size_t>(p.key_row[ao + i]) * d;
          da[i] = dot_in_order(g.data(), row, d);
          add_scaled(p.acc_keys + static_cast<size_t>(p.key_acc[ao + i]) * d, ai, g.data(), d);
        }
      }
      // (2) a = softmax(beta s): ds_i = beta (a_i (da_i - sum_t a_t da_t)).
      double rho = 0.0;
      for (size_t i = 0; i < k; ++i) rho = rho + a[i] * da[i];
      for (size_t i = 0; i < k; ++i) ds[i] = beta * (a[i] * (da[i] - rho));
      // (3) s_i = sim(q, K_i): dq and dK_i.
      for (size_t j = 0; j < d; ++j) dq[j] = 0.0;
      const double nq = p.sim == Metric::Cosine ? norm(q, d) : 0.0;
      for (size_t i = 0; i < k; ++i) {
        const double c = ds[i];
        const float* K = p.keys + static_cast<size_t>(p.key_row[ao + i]) * d;
        double* acc = p.acc_keys + static_cast<size_t>(p.key_acc[ao + i]) * d;
        if (p.sim == Metric::IP) {
          add_scaled(dq.data(), c, K, d);
          add_scaled(acc, c, q, d);
        } else if (p.sim == Metric::L2) {
          const double w = 2.0 * c;
          for (size_t j = 0; j < d; ++j) {
            const double t = q[j] - static_cast<double>(K[j]);
            dq[j] = dq[j] - w * t;
            acc[j] = acc[j] + w * t;
          }
        } else {
          const double nk = std::sqrt(dot_in_order(K, K, d));
          if (nq == 0.0 || nk == 0.0) continue;  // the score is the constant 0
          const double score = p.s[ao + i];
          const double u = c / (nq * nk), vq = (c * score) / (nq * nq), vk = (c * score) / (nk * nk);
          for (size_t j = 0; j < d; ++j) {
            const double kj = static_cast<double>(K[j]), qj = q[j];
            dq[j] = dq[j] + (u * kj - vq * qj);
            acc[j] = acc[j] + (u * qj - vk * kj);
          }
        }
      }
      for (size_t j = 0; j < d; ++j) g[j] = dq[j];
    }
    // The first state: q = x, or q = x / |x| (dx = (g - q (q . g)) / |x|; 0 when x = 0).
    const float* x = p.x + b * d;
    float* dx = p.dx + b * d;
    if (!p.normalize) {
      for (size_t j = 0; j < d; ++j) dx[j] = static_cast<float>(g[j]);
    } else {
      const double nx = std::sqrt(dot_in_order(x, x, d));
      if (nx > 0.0) {
        const double* q0 = p.q + b * S * d;
        double pr = 0.0;
        for (size_t j = 0; j < d; ++j) pr = pr + q0[j] * g[j];
        for (size_t j = 0; j < d; ++j) dx[j] = static_cast<float>((g[j] - q0[j] * pr) / nx);
      } else {
        for (size_t j = 0; j < d; ++j) dx[j] = 0.0f;
      }
    }
  }
}

double optimizer_step(const OptimizerStep& p) {
  const float lr = p.lr, wd = p.weight_decay, b1 = p.beta1, b2 = p.beta2, eps = p.eps;
  const double new_log_decay =
      wd > 0.0f ? p.log_decay + log1p_neg(-static_cast<double>(lr) * static_cast<double>(wd)) : p.log_decay;
  // Math.fround of an f64 operation on f32 values is the f32 operation (+ - * / sqrt).
  const float c1 = static_cast<float>(1.0 - static_cast<double>(b1));
  const float c2 = static_cast<float>(1.0 - static_cast<double>(b2));
  const size_t d = p.d;
  for (size_t r = 0; r < p.count; ++r) {
    const float decay = wd > 0.0f ? static_cast<float>(exp(new_log_decay - p.marks[r])) : 1.0f;
    const size_t o = r * d;
    if (!p.adam) {
      for (size_t j = 0; j < d; ++j) p.out_rows[o + j] = p.rows[o + j] * decay - lr * p.grads[o + j];
    } else {
      const double t = p.row_step ? static_cast<double>(p.steps[r]) + 1.0 : p.global_step + 1.0;
      const double bc1 = 1.0 - powi(static_cast<double>(b1), static_cast<uint64_t>(t));
      const double bc2 = 1.0 - powi(static_cast<double>(b2), static_cast<uint64_t>(t));
      const float step_size = static_cast<float>(static_cast<double>(lr) / bc1);
      const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
      for (size_t j = 0; j < d; ++j) {
        const float g = p.grads[o + j];
        const float mj = b1 * p.m[o + j] + c1 * g;
        const float vj = b2 * p.v[o + j] + (c2 * g) * g;
        const float denom = std::sqrt(vj) * inv_sqrt_bc2 + eps;
        p.out_m[o + j] = mj;
        p.out_v[o + j] = vj;
        p.out_rows[o + j] = p.rows[o + j] * decay - (step_size * mj) / denom;
      }
    }
    p.out_steps[r] = p.steps[r] + 1u;
    p.out_marks[r] = new_log_decay;
  }
  return new_log_decay;
}

}  // namespace canonical
}  // namespace gt
