// The key sketch: see key_sketch.h.
#include "key_sketch.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "errors.h"
#include "topk.h"

namespace gt {

namespace {

// Rounding allowance of the bound (key_sketch.h), relative to |q| |k|.
constexpr float kDelta = 1.0f / 4096.0f;
// Rounds the bound up past its own f32 rounding.
constexpr float kBoundUp = 1.0f + 1.0f / (1 << 20);

inline float key_at(const float* Kp, size_t H, size_t dk, size_t h, size_t j, size_t t) {
  const size_t b = j / kDecodeKeyBlock, c = j % kDecodeKeyBlock;
  return Kp[((b * H + h) * dk + t) * kDecodeKeyBlock + c];
}

}  // namespace

void symmetric_eigen(std::vector<double>& A, size_t n, std::vector<double>& w, std::vector<double>& V) {
  if (A.size() != n * n) throw Error(ErrorCode::InvalidArgument, "symmetric_eigen: A must be n x n");
  std::vector<double> E(n * n, 0.0);  // columns: eigenvectors
  for (size_t i = 0; i < n; ++i) E[i * n + i] = 1.0;
  double diag = 0.0;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) diag += A[i * n + j] * A[i * n + j];
  for (int sweep = 0; sweep < 64; ++sweep) {
    double off = 0.0;
    for (size_t p = 0; p < n; ++p)
      for (size_t q = p + 1; q < n; ++q) off += A[p * n + q] * A[p * n + q];
    if (!(off > 1e-30 * diag)) break;
    for (size_t p = 0; p < n; ++p)
      for (size_t q = p + 1; q < n; ++q) {
        const double apq = A[p * n + q];
        if (apq == 0.0) continue;
        const double theta = (A[q * n + q] - A[p * n + p]) / (2.0 * apq);
        const double t = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
        const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
        for (size_t k = 0; k < n; ++k) {  // A J
          const double akp = A[k * n + p], akq = A[k * n + q];
          A[k * n + p] = c * akp - s * akq;
          A[k * n + q] = s * akp + c * akq;
        }
        for (size_t k = 0; k < n; ++k) {  // J^T (A J)
          const double apk = A[p * n + k], aqk = A[q * n + k];
          A[p * n + k] = c * apk - s * aqk;
          A[q * n + k] = s * apk + c * aqk;
        }
        for (size_t k = 0; k < n; ++k) {
          const double ekp = E[k * n + p], ekq = E[k * n + q];
          E[k * n + p] = c * ekp - s * ekq;
          E[k * n + q] = s * ekp + c * ekq;
        }
      }
  }
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return A[a * n + a] > A[b * n + b]; });
  w.assign(n, 0.0);
  V.assign(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    w[i] = A[order[i] * n + order[i]];
    for (size_t k = 0; k < n; ++k) V[i * n + k] = E[k * n + order[i]];
  }
}

KeySketch::KeySketch(size_t heads, size_t dk, size_t rank) : nheads_(heads), dk_(dk), rank_(rank), heads_(heads) {
  if (heads == 0 || dk == 0 || heads > 4096 || dk > 4096)
    throw Error(ErrorCode::InvalidArgument, "KeySketch: heads and dk must be in 1..4096");
  if (rank > dk) throw Error(ErrorCode::OutOfRange, "KeySketch: rank must be in 0..dk");
}

size_t KeySketch::bytes() const {
  size_t n = 0;
  for (const Head& hd : heads_)
    n += hd.codes.size() + 4 * (hd.basis.size() + hd.step.size() + hd.eps.size() + hd.rho.size() + hd.nrm.size());
  return n;
}

void KeySketch::fit(const float* Kp, size_t L) {
  if (fitted_) throw Error(ErrorCode::InvalidArgument, "KeySketch: already fitted");
  if (Kp == nullptr || L == 0) throw Error(ErrorCode::InvalidArgument, "KeySketch: fit needs at least one key");
  const size_t dk = dk_, ns = std::min(L, kSketchSample);
  std::vector<double> M(dk * dk), w, V, kv(dk);
  for (size_t h = 0; h < nheads_; ++h) {
    Head& hd = heads_[h];
    std::fill(M.begin(), M.end(), 0.0);
    for (size_t i = 0; i < ns; ++i) {
      const size_t j = static_cast<size_t>((static_cast<unsigned long long>(i) * L) / ns);
      for (size_t t = 0; t < dk; ++t) kv[t] = key_at(Kp, nheads_, dk, h, j, t);
      for (size_t a = 0; a < dk; ++a)
        for (size_t b = a; b < dk; ++b) M[a * dk + b] += kv[a] * kv[b];
    }
    for (size_t a = 0; a < dk; ++a)
      for (size_t b = 0; b < a; ++b) M[a * dk + b] = M[b * dk + a];
    symmetric_eigen(M, dk, w, V);
    size_t r = rank_;
    if (r == 0) {
      double total = 0.0;
      for (double x : w) total += std::max(x, 0.0);
      double kept = 0.0;
      r = dk;
      for (size_t i = 0; i < dk; ++i) {
        kept += std::max(w[i], 0.0);
        if (kept >= kSketchEnergy * total) {
          r = i + 1;
          break;
        }
      }
    }
    hd.r = r;
    hd.basis.assign(r * dk, 0.0f);
    for (size_t i = 0; i < r * dk; ++i) hd.basis[i] = static_cast<float>(V[i]);
    // One step per coordinate: the sample's largest |p_t| maps to 127 (a later key beyond it
    // is clamped; its eps grows, the bound stays sound).
    std::vector<double> mx(r, 0.0);
    for (size_t i = 0; i < ns; ++i) {
      const size_t j = static_cast<size_t>((static_cast<unsigned long long>(i) * L) / ns);
      for (size_t t = 0; t < r; ++t) {
        double p = 0.0;
        for (size_t c = 0; c < dk; ++c) p += double(hd.basis[t * dk + c]) * key_at(Kp, nheads_, dk, h, j, c);
        mx[t] = std::max(mx[t], std::fabs(p));
      }
    }
    hd.step.assign(r, 1.0f);
    for (size_t t = 0; t < r; ++t)
      if (mx[t] > 0.0 && std::isfinite(mx[t])) hd.step[t] = static_cast<float>(mx[t] / 127.0);
  }
  fitted_ = true;
  append(Kp, L);
}

void KeySketch::encode(size_t h, const float* Kp, size_t j0, size_t j1) {
  Head& hd = heads_[h];
  const size_t dk = dk_, r = hd.r;
  const size_t blocks = (j1 + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  hd.codes.resize(blocks * r * kDecodeKeyBlock, 0);
  hd.eps.resize(j1);
  hd.rho.resize(j1);
  hd.nrm.resize(j1);
  std::vector<double> kv(dk), p(r), perp(dk);
  for (size_t j = j0; j < j1; ++j) {
    double nk = 0.0;
    for (size_t t = 0; t < dk; ++t) {
      kv[t] = key_at(Kp, nheads_, dk, h, j, t);
      nk += kv[t] * kv[t];
    }
    double qe = 0.0;
    const size_t b = j / kDecodeKeyBlock, cc = j % kDecodeKeyBlock;
    for (size_t t = 0; t < r; ++t) {
      double s = 0.0;
      for (size_t c = 0; c < dk; ++c) s += double(hd.basis[t * dk + c]) * kv[c];
      p[t] = s;
      double code = std::nearbyint(s / double(hd.step[t]));
      if (!(code <= 127.0)) code = std::isnan(code) ? 0.0 : 127.0;
      if (code < -127.0) code = -127.0;
      hd.codes[(b * r + t) * kDecodeKeyBlock + cc] = static_cast<int8_t>(code);
      const double e = s - code * double(hd.step[t]);
      qe += e * e;
    }
    perp = kv;
    for (size_t t = 0; t < r; ++t)
      for (size_t c = 0; c < dk; ++c) perp[c] -= p[t] * double(hd.basis[t * dk + c]);
    double rho = 0.0, pp = 0.0;
    for (size_t c = 0; c < dk; ++c) rho += perp[c] * perp[c];
    for (size_t t = 0; t < r; ++t) {
      double s = 0.0;
      for (size_t c = 0; c < dk; ++c) s += double(hd.basis[t * dk + c]) * perp[c];
      pp += s * s;
    }
    // A non-finite key gets an infinite bound: it is always a candidate.
    const float inf = std::numeric_limits<float>::infinity();
    const double e = std::sqrt(qe) + std::sqrt(pp);
    hd.eps[j] = std::isfinite(e) ? static_cast<float>(e) : inf;
    hd.rho[j] = std::isfinite(rho) ? static_cast<float>(std::sqrt(rho)) : inf;
    hd.nrm[j] = std::isfinite(nk) ? static_cast<float>(std::sqrt(nk)) : inf;
  }
}

void KeySketch::append(const float* Kp, size_t L) {
  if (!fitted_) throw Error(ErrorCode::InvalidArgument, "KeySketch: append before fit");
  if (Kp == nullptr || L < length_) throw Error(ErrorCode::InvalidArgument, "KeySketch: append needs L >= length()");
  if (L == length_) return;
  for (size_t h = 0; h < nheads_; ++h) encode(h, Kp, length_, L);
  length_ = L;
}

void KeySketch::select(const float* q, const float* Kp, size_t k, const Kernels& kern, uint32_t* ids, float* scores,
                       SketchSelectStats* stats) const {
  if (!fitted_ || length_ == 0) throw Error(ErrorCode::InvalidArgument, "KeySketch: select before fit");
  if (q == nullptr || Kp == nullptr || ids == nullptr || scores == nullptr || k == 0)
    throw Error(ErrorCode::InvalidArgument, "KeySketch: select needs q, Kp, k >= 1 and outputs");
  const size_t L = length_, dk = dk_, H = nheads_, kk = std::min(k, L);
  const size_t nb = (L + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> hi(L), acc(kDecodeKeyBlock), u;
  std::vector<double> pi, qperp(dk);
  size_t cand = 0;
  for (size_t h = 0; h < H; ++h) {
    const Head& hd = heads_[h];
    const size_t r = hd.r;
    const float* qh = q + h * dk;
    pi.assign(r, 0.0);
    u.assign(r, 0.0f);
    double qn = 0.0;
    for (size_t c = 0; c < dk; ++c) {
      qperp[c] = qh[c];
      qn += double(qh[c]) * qh[c];
    }
    double pn = 0.0;
    for (size_t t = 0; t < r; ++t) {
      double s = 0.0;
      for (size_t c = 0; c < dk; ++c) s += double(hd.basis[t * dk + c]) * qh[c];
      pi[t] = s;
      pn += s * s;
      u[t] = static_cast<float>(s * double(hd.step[t]));
      for (size_t c = 0; c < dk; ++c) qperp[c] -= s * double(hd.basis[t * dk + c]);
    }
    double qp = 0.0;
    for (size_t c = 0; c < dk; ++c) qp += qperp[c] * qperp[c];
    const float Pi = static_cast<float>(std::sqrt(pn)), Qp = static_cast<float>(std::sqrt(qp)),
                Qd = kDelta * static_cast<float>(std::sqrt(qn));
    // Pass 1: the sketch's interval per key; lambda = the kk-th largest lower end.
    TopK lows(kk, true);
    float lambda = neg_inf;
    for (size_t b = 0; b < nb; ++b) {
      const size_t j0 = b * kDecodeKeyBlock, kn = std::min(kDecodeKeyBlock, L - j0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      const int8_t* cb = hd.codes.data() + b * r * kDecodeKeyBlock;
      for (size_t t = 0; t < r; ++t) {
        const float ut = u[t];
        const int8_t* ct = cb + t * kDecodeKeyBlock;
        for (size_t c = 0; c < kDecodeKeyBlock; ++c) acc[c] += ut * static_cast<float>(ct[c]);
      }
      const float* e = hd.eps.data() + j0;
      const float* rh = hd.rho.data() + j0;
      const float* nm = hd.nrm.data() + j0;
      float* hb = hi.data() + j0;
      for (size_t c = 0; c < kn; ++c) {
        const float B = (Pi * e[c] + Qp * rh[c] + Qd * nm[c]) * kBoundUp;
        const float lo = acc[c] - B;
        hb[c] = acc[c] + B;
        if (lo > lambda) {
          lows.push(lo, static_cast<uint32_t>(j0 + c));
          if (lows.full()) lambda = lows.worst().score;
        }
      }
    }
    if (!lows.full()) lambda = neg_inf;
    // Pass 2: the candidates, scored and selected as decode_attention does.
    // A candidate's score comes from the same call shape as decode_attention's tile: its
    // group of 16 columns (one cache line of each key row), or the block's last columns past
    // the last full group, so that gemm_acc takes the same path (vector or tail) for it and
    // rounds alike (the tail may fuse differently from the vector path).
    TopK hp(kk, true);
    float thr = neg_inf;
    const float* Kh = Kp + h * dk * kDecodeKeyBlock;
    size_t group = std::numeric_limits<size_t>::max();
    for (size_t j = 0; j < L; ++j) {
      if (hi[j] < lambda) continue;
      ++cand;
      const size_t b = j / kDecodeKeyBlock, c = j % kDecodeKeyBlock, g = c & ~size_t{15};
      const size_t kn = std::min(kDecodeKeyBlock, L - b * kDecodeKeyBlock);
      if (j - c + g != group) {
        group = j - c + g;
        std::fill(acc.begin(), acc.begin() + 16, 0.0f);
        kern.gemm_acc(acc.data(), kDecodeKeyBlock, qh, dk, Kh + b * H * dk * kDecodeKeyBlock + g, kDecodeKeyBlock, 1, dk,
                      std::min<size_t>(16, kn - g));
      }
      const float s = acc[c - g];
      if (!(s > thr)) continue;
      hp.push(s, static_cast<uint32_t>(j));
      if (hp.full()) thr = hp.worst().score;
    }
    const std::vector<Hit> hits = hp.sorted();
    for (size_t c = 0; c < k; ++c) {
      ids[h * k + c] = c < hits.size() ? hits[c].id : kNoKey;
      scores[h * k + c] = c < hits.size() ? hits[c].score : 0.0f;
    }
  }
  if (stats != nullptr) stats->candidates = cand;
}

}  // namespace gt
