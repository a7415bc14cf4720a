// The prover's C++ mirror of parts of the canonical training step; see canonical_step.h.
// Each loop below names the TypeScript it mirrors: the order of every f64 operation is
// that code's, so the results are the same bits.
#include "canonical_step.h"

#include <algorithm>
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
      for (size_t i = 0; i < k; ++i) a[i] = beta * s[i];
      softmax_in_place(a, k);
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


// ---- The language-model kinds. ----

size_t topk_ranked(const double* s, size_t n, size_t k, uint32_t* top) {
  if (k == 0) return 0;
  // better(a, b): a higher score, or the same score and a lower position (ctopk's).
  const auto better = [s](uint32_t a, uint32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
  size_t len = 0;
  for (size_t pi = 0; pi < n; ++pi) {
    const uint32_t p = static_cast<uint32_t>(pi);
    if (len == k && !better(p, top[k - 1])) continue;
    size_t at = len == k ? k - 1 : len;
    while (at > 0 && better(p, top[at - 1])) --at;
    const size_t end = len == k ? k - 1 : len;  // the list's length after dropping the k-th
    for (size_t t = end; t > at; --t) top[t] = top[t - 1];
    top[at] = p;
    len = end + 1;
  }
  return len;
}

void linear_train(const float* x, size_t n, size_t d_in, const float* W, size_t m, size_t kp, const float* bias, float* y,
                  uint32_t* kept) {
  std::vector<double> q(d_in), s(m);
  std::vector<uint32_t> top(kp < m ? kp : 0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t t = 0; t < d_in; ++t) q[t] = static_cast<double>(x[i * d_in + t]);
    dots(q.data(), W, m, d_in, s.data());
    float* yi = y + i * m;
    const auto put = [&](size_t j) {
      yi[j] = bias == nullptr ? static_cast<float>(s[j]) : static_cast<float>(s[j] + static_cast<double>(bias[j]));
    };
    if (kp >= m) {
      for (size_t j = 0; j < m; ++j) put(j);
      continue;
    }
    for (size_t j = 0; j < m; ++j) yi[j] = bias == nullptr ? 0.0f : bias[j];
    const size_t cnt = topk_ranked(s.data(), m, kp, top.data());
    for (size_t r = 0; r < cnt; ++r) put(top[r]);
    if (kept != nullptr) {
      std::sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(cnt));
      for (size_t r = 0; r < cnt; ++r) kept[i * kp + r] = top[r];
    }
  }
}

template <typename G>
void projection_backward(const float* input, size_t n, size_t d_in, const float* W, size_t m, size_t kp, const uint32_t* kept,
                         const G* dP, double* d_in_acc, double* acc_w, double* acc_b) {
  const bool dense = kept == nullptr;
  const size_t cols = dense ? m : kp;
  for (size_t i = 0; i < n; ++i) {
    const float* xi = input + i * d_in;
    double* di = d_in_acc + i * d_in;
    for (size_t r = 0; r < cols; ++r) {
      const size_t c = dense ? r : kept[i * kp + r];
      const double g = static_cast<double>(dP[i * m + c]);
      add_scaled(di, g, W + c * d_in, d_in);
      add_scaled(acc_w + c * d_in, g, xi, d_in);
    }
  }
  if (acc_b != nullptr)
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < m; ++j) acc_b[j] = acc_b[j] + static_cast<double>(dP[i * m + j]);
}

template void projection_backward<float>(const float*, size_t, size_t, const float*, size_t, size_t, const uint32_t*, const float*,
                                         double*, double*, double*);
template void projection_backward<double>(const float*, size_t, size_t, const float*, size_t, size_t, const uint32_t*,
                                          const double*, double*, double*, double*);

void attention_core(const AttentionCore& p) {
  const size_t n = p.n, D = p.D, dk = D / p.heads, kk = p.k_top < n ? p.k_top : n;
  std::vector<double> s(n), a(kk), o(dk);
  std::vector<uint32_t> top(kk);
  for (size_t h = 0; h < p.heads; ++h) {
    const size_t ho = h * dk;
    for (size_t i = 0; i < n; ++i) {
      const size_t m = p.causal ? i + 1 : n;
      for (size_t j = 0; j < m; ++j) s[j] = dot_in_order(p.q + i * D + ho, p.k + j * D + ho, dk);
      const size_t cnt = topk_ranked(s.data(), m, p.k_top < m ? p.k_top : m, top.data());
      // csoftmax over the selected scores
      for (size_t r = 0; r < cnt; ++r) a[r] = p.scale * s[top[r]];
      softmax_in_place(a.data(), cnt);
      // cmix of the selected v slices
      for (size_t t = 0; t < dk; ++t) o[t] = 0.0;
      for (size_t r = 0; r < cnt; ++r) add_scaled(o.data(), a[r], p.v + static_cast<size_t>(top[r]) * D + ho, dk);
      for (size_t t = 0; t < dk; ++t) p.o[i * D + ho + t] = static_cast<float>(o[t]);
      const size_t base = (h * n + i) * kk;
      for (size_t r = 0; r < kk; ++r) {
        p.top[base + r] = r < cnt ? top[r] : 0xffffffffu;
        p.weights[base + r] = r < cnt ? a[r] : 0.0;
      }
    }
  }
}

void attention_core_backward(const AttentionCoreBackward& p) {
  const size_t n = p.n, D = p.D, dk = D / p.heads, kk = p.k_top < n ? p.k_top : n;
  std::vector<double> dA(kk);
  for (size_t h = 0; h < p.heads; ++h) {
    const size_t ho = h * dk;
    for (size_t i = 0; i < n; ++i) {
      const size_t vis = p.causal ? i + 1 : n;
      const size_t cnt = p.k_top < vis ? p.k_top : vis, base = (h * n + i) * kk, io = i * D + ho;
      double mu = 0.0;
      for (size_t r = 0; r < cnt; ++r) {
        const size_t jo = static_cast<size_t>(p.top[base + r]) * D + ho;
        double d = 0.0;
        for (size_t t = 0; t < dk; ++t) d = d + p.dO[io + t] * static_cast<double>(p.v[jo + t]);
        dA[r] = d;
        mu = mu + p.weights[base + r] * d;
      }
      for (size_t r = 0; r < cnt; ++r) {
        const size_t jo = static_cast<size_t>(p.top[base + r]) * D + ho;
        const double a = p.weights[base + r];
        const double gz = (a * (dA[r] - mu)) * p.scale;
        for (size_t t = 0; t < dk; ++t) {
          p.dV[jo + t] = p.dV[jo + t] + a * p.dO[io + t];
          p.dQ[io + t] = p.dQ[io + t] + gz * static_cast<double>(p.k[jo + t]);
          p.dK[jo + t] = p.dK[jo + t] + gz * static_cast<double>(p.q[io + t]);
        }
      }
    }
  }
}

void rmsnorm_backward(const float* x, const float* dy, const float* gain, size_t n, size_t d, float eps, float* dx,
                      double* acc_gain) {
  for (size_t i = 0; i < n; ++i) {
    const size_t o = i * d;
    const double r = 1.0 / std::sqrt(dot_in_order(x + o, x + o, d) / static_cast<double>(d) + static_cast<double>(eps));
    double pr = 0.0;
    for (size_t t = 0; t < d; ++t)
      pr = pr + static_cast<double>(dy[o + t]) * static_cast<double>(gain[t]) * static_cast<double>(x[o + t]);
    const double c = (r * r * r * pr) / static_cast<double>(d);
    for (size_t t = 0; t < d; ++t) {
      const double dyt = dy[o + t], xt = x[o + t];
      dx[o + t] = static_cast<float>(r * (dyt * static_cast<double>(gain[t])) - c * xt);
      acc_gain[t] = acc_gain[t] + dyt * xt * r;
    }
  }
}

void glu_backward(const float* gate, const float* up, const float* dy, size_t len, float* dgate, float* dup) {
  for (size_t i = 0; i < len; ++i) {
    const double g = gate[i], d = dy[i];
    const double e = exp(-g), s = 1.0 / (1.0 + e);
    dgate[i] = static_cast<float>(d * static_cast<double>(up[i]) * s * (1.0 + g * (1.0 - s)));
    dup[i] = static_cast<float>(d * (g / (1.0 + e)));
  }
}

void memory_backward(const MemoryBackward& p) {
  const size_t B = p.B, H = p.H, k = p.k, dv = p.dv, d_in = p.d_in, dk = p.dk, d1 = p.d1, d2 = dk - d1, hdk = H * dk;
  std::vector<double> gy(dv), dq(hdk), da(k), ds(k), dxb(d_in);
  for (size_t b = 0; b < B; ++b) {
    for (size_t j = 0; j < dv; ++j) gy[j] = static_cast<double>(p.dy[b * dv + j]);
    for (size_t m = 0; m < hdk; ++m) dq[m] = 0.0;
    for (size_t h = 0; h < H; ++h) {
      const size_t ao = (b * H + h) * k, qo = b * hdk + h * dk, ho = h * dk;
      // (1) y += sum_i a_i V_i: da_i = g . V_i, dV_i += a_i g.
      for (size_t i = 0; i < k; ++i) {
        da[i] = dot_in_order(gy.data(), p.values + static_cast<size_t>(p.value_row[ao + i]) * dv, dv);
        add_scaled(p.acc_values + static_cast<size_t>(p.value_acc[ao + i]) * dv, p.a[ao + i], gy.data(), dv);
      }
      // (2) ds_i = beta (a_i (da_i - sum_t a_t da_t)).
      double rho = 0.0;
      for (size_t i = 0; i < k; ++i) rho = rho + p.a[ao + i] * da[i];
      for (size_t i = 0; i < k; ++i) ds[i] = p.beta * (p.a[ao + i] * (da[i] - rho));
      // (3) s_i = q[:d1] . T1[i1] + q[d1:] . T2[i2].
      for (size_t i = 0; i < k; ++i) {
        const double c = ds[i];
        add_scaled(dq.data() + ho, c, p.t1 + static_cast<size_t>(p.t1_row[ao + i]) * d1, d1);
        add_scaled(p.acc_t1 + static_cast<size_t>(p.t1_acc[ao + i]) * d1, c, p.q + qo, d1);
        add_scaled(dq.data() + ho + d1, c, p.t2 + static_cast<size_t>(p.t2_row[ao + i]) * d2, d2);
        add_scaled(p.acc_t2 + static_cast<size_t>(p.t2_acc[ao + i]) * d2, c, p.q + qo + d1, d2);
      }
    }
    // The query projection: dx_b = sum_m dq_m W_m, dW_m += dq_m x_b.
    for (size_t t = 0; t < d_in; ++t) dxb[t] = 0.0;
    for (size_t m = 0; m < hdk; ++m) add_scaled(dxb.data(), dq[m], p.W + m * d_in, d_in);
    for (size_t t = 0; t < d_in; ++t) p.dx[b * d_in + t] = static_cast<float>(dxb[t]);
    for (size_t m = 0; m < hdk; ++m) add_scaled(p.acc_w + m * d_in, dq[m], p.x + b * d_in, d_in);
  }
}

}  // namespace canonical
}  // namespace gt
