// The key sketch: see key_sketch.h.
#include "key_sketch.h"
#include "key_sketch_one.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>

#include "cpu.h"
#include "errors.h"
#include "kernels.h"
#include "topk.h"

namespace gt {

namespace {

static_assert(kDecodeKeyBlock % 16 == 0, "the sketch's code layout groups 16 keys");

// Rounding allowance of the bound (key_sketch.h), relative to |q| |k|.
constexpr float kDelta = 1.0f / 4096.0f;
// Rounds the bound up past its own f32 rounding.
constexpr float kBoundUp = 1.0f + 1.0f / (1 << 20);

inline float key_at(const float* Kp, size_t H, size_t dk, size_t h, size_t j, size_t t) {
  const size_t b = j / kDecodeKeyBlock, c = j % kDecodeKeyBlock;
  return Kp[((b * H + h) * dk + t) * kDecodeKeyBlock + c];
}

// Scores the n <= 16 candidates cj[batch[i]] into cs[batch[i]]: their row-major keys as the
// columns of one dk x 16 operand (unused columns zero), one gemm_acc through its vector path.
void score_batch(const Kernels& kern, const float* qh, size_t dk, const float* rows, const uint32_t* cj,
                 const size_t* batch, size_t n, float* tile, float* cs) {
  std::fill(tile, tile + dk * 16, 0.0f);
  for (size_t i = 0; i < n; ++i) {
    const float* kr = rows + static_cast<size_t>(cj[batch[i]]) * dk;
    for (size_t t = 0; t < dk; ++t) tile[t * 16 + i] = kr[t];
  }
  float out[16] = {0};
  kern.gemm_acc(out, 16, qh, dk, tile, 16, 1, dk, 16);
  for (size_t i = 0; i < n; ++i) cs[batch[i]] = out[i];
}

// The M best of the keys [0, L) by sketch score A (then the lower id; A is finite: integer sums
// times finite steps), as a bounded heap over the keys in order would keep them, without its
// per-key pushes: a threshold tau from an evenly strided sample of A that about 2M keys reach,
// every key with a >= tau collected (vectorised), and the M best of those (nth_element). When
// fewer than M reach it (only past 2 kSketchThresholdSample keys, on an unlucky sample), a deeper
// rank of the sample is taken, and at last every key. Returns m = min(M, L): cand[0..m) hold the
// M best, cand[m - 1] the worst of them.
size_t best_m(const float* A, size_t L, size_t M, SketchCollect collect, std::vector<uint32_t>& cand,
              std::vector<float>& sample) {
  cand.resize(L);
  const size_t ns = std::min(L, kSketchThresholdSample);
  sample.resize(ns);
  for (size_t i = 0; i < ns; ++i) sample[i] = A[static_cast<size_t>((static_cast<unsigned long long>(i) * L) / ns)];
  size_t got = 0;
  for (size_t rank = std::min(ns, (2 * M * ns + L - 1) / L + 8);; rank = std::min(ns, 4 * rank)) {
    float tau = -std::numeric_limits<float>::infinity();
    if (rank < ns) {
      std::nth_element(sample.begin(), sample.begin() + static_cast<std::ptrdiff_t>(rank - 1), sample.end(), std::greater<float>());
      tau = sample[rank - 1];
    }
    got = collect(A, L, tau, false, cand.data());
    if (got >= M || rank == ns) break;
  }
  const size_t m = std::min(got, M);
  if (m > 0) {
    auto better = [A](uint32_t x, uint32_t y) { return A[x] > A[y] || (A[x] == A[y] && x < y); };
    std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(m - 1),
                     cand.begin() + static_cast<std::ptrdiff_t>(got), better);
  }
  return m;
}

// v[0..r) quantised to int8 with one step, sig = max |v_t| / 127 (1 where that is 0, not finite
// or below the smallest float: w = 0): w[t] = round(v_t / sig), clamped to +-127. Returns sig.
float quantise_int8(const double* v, size_t r, int8_t* w) {
  double mx = 0.0;
  for (size_t t = 0; t < r; ++t) mx = std::max(mx, std::fabs(v[t]));
  const float st = mx > 0.0 && std::isfinite(mx) ? static_cast<float>(mx / 127.0) : 1.0f;
  const float sig = st > 0.0f ? st : 1.0f;
  for (size_t t = 0; t < r; ++t) {
    const double wt = std::min(127.0, std::max(-127.0, std::nearbyint(v[t] / double(sig))));
    w[t] = static_cast<int8_t>(std::isfinite(wt) ? wt : 0.0);
  }
  return sig;
}

}  // namespace

void sketch_scan_portable(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                          const float* rho, const float* coef, size_t kn, float* a, float* hi, float* maxes) {
  float ma = -std::numeric_limits<float>::infinity(), mh = ma;
  for (size_t c = 0; c < kn; ++c) {
    sketch_detail::score_one(codes, g4, w, sig, eps, rho, coef, c, a, hi);
    ma = std::max(ma, a[c]);  // NaN leaves the max as it was
    mh = std::isnan(hi[c]) ? std::numeric_limits<float>::infinity() : std::max(mh, hi[c]);
  }
  maxes[0] = ma;
  maxes[1] = mh;
}

void sketch_scan4_portable(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a,
                           float* maxes) {
  int32_t sw = 0;
  for (size_t t = 0; t < 8 * g8; ++t) sw += w[t];
  float ma = -std::numeric_limits<float>::infinity();
  for (size_t c = 0; c < kn; ++c) {
    sketch_detail::score_one4(codes, g8, w, sw, sig, c, a);
    ma = std::max(ma, a[c]);
  }
  maxes[0] = ma;
}

size_t sketch_collect_portable(const float* v, size_t n, float thr, bool strict, uint32_t* out) {
  size_t m = 0;
  for (size_t j = 0; j < n; ++j)
    if (strict ? v[j] > thr : !(v[j] < thr)) out[m++] = static_cast<uint32_t>(j);
  return m;
}

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

KeySketch::KeySketch(size_t heads, size_t dk, size_t rank, int bits)
    : nheads_(heads), dk_(dk), rank_(rank), bits_(bits), heads_(heads) {
  if (heads == 0 || dk == 0 || heads > 4096 || dk > 4096)
    throw Error(ErrorCode::InvalidArgument, "KeySketch: heads and dk must be in 1..4096");
  if (rank > dk) throw Error(ErrorCode::OutOfRange, "KeySketch: rank must be in 0..dk");
  if (bits != 8 && bits != 4) throw Error(ErrorCode::InvalidArgument, "KeySketch: bits must be 8 or 4");
}

size_t KeySketch::bytes() const {
  size_t n = 0;
  for (const std::vector<Head>* hs : {&heads_, &next_})
    for (const Head& hd : *hs)
      n += hd.codes.size() + 4 * (hd.basis.size() + hd.step.size() + hd.eps.size() + hd.rho.size() + hd.rows.size());
  return n + 4 * queries_.size();
}

void KeySketch::fit_basis(Head& hd, size_t h, const float* Kp, size_t L, size_t ns) const {
  const size_t dk = dk_;
  std::vector<double> M(dk * dk, 0.0), w, V, kv(dk);
  for (size_t i = 0; i < ns; ++i) {
    const size_t j = static_cast<size_t>((static_cast<unsigned long long>(i) * L) / ns);
    for (size_t t = 0; t < dk; ++t) kv[t] = key_at(Kp, nheads_, dk, h, j, t);
    for (size_t a = 0; a < dk; ++a)
      for (size_t b = a; b < dk; ++b) M[a * dk + b] += kv[a] * kv[b];
  }
  if (qn_ > 0) {
    // With queries observed: the keys' and the queries' second moments, each scaled to trace 1
    // (key_sketch.h, observe()).
    std::vector<double> Mq(dk * dk, 0.0);
    for (size_t i = 0; i < qn_; ++i) {
      const float* qv = queries_.data() + (i * nheads_ + h) * dk;
      for (size_t a = 0; a < dk; ++a)
        for (size_t b = a; b < dk; ++b) Mq[a * dk + b] += double(qv[a]) * double(qv[b]);
    }
    double tk = 0.0, tq = 0.0;
    for (size_t a = 0; a < dk; ++a) {
      tk += M[a * dk + a];
      tq += Mq[a * dk + a];
    }
    const double sk = tk > 0.0 && std::isfinite(tk) ? 1.0 / tk : 1.0, sq = tq > 0.0 && std::isfinite(tq) ? 1.0 / tq : 1.0;
    for (size_t i = 0; i < dk * dk; ++i) M[i] = M[i] * sk + Mq[i] * sq;
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
    // Rounded up to the codes' group (4 coordinates in int8, 8 in 4-bit): the group's bytes are
    // read either way, and the extra rows shrink the bound (fewer keys scored).
    const size_t group = bits_ == 4 ? 8 : 4;
    r = std::min(dk, (r + group - 1) / group * group);
  }
  hd = Head{};
  hd.r = r;
  hd.basis.assign(r * dk, 0.0f);
  for (size_t i = 0; i < r * dk; ++i) hd.basis[i] = static_cast<float>(V[i]);
  // One step per coordinate: the sample's largest |p_t| maps to 127 (7 with bits 4; a later key
  // beyond it is clamped; its eps grows, the bound stays sound).
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
    if (mx[t] > 0.0 && std::isfinite(mx[t])) hd.step[t] = static_cast<float>(mx[t] / (bits_ == 4 ? 7.0 : 127.0));
}

void KeySketch::observe(const float* Q, size_t n) {
  if (Q == nullptr && n > 0) throw Error(ErrorCode::InvalidArgument, "KeySketch: observe needs queries");
  const size_t D = nheads_ * dk_;
  for (size_t i = 0; i < n; ++i)
    for (size_t c = 0; c < D; ++c)
      if (!std::isfinite(Q[i * D + c])) throw Error(ErrorCode::NonFinite, "KeySketch: a query is not finite");
  queries_.resize(kSketchQuerySample * D);
  // Only the latest kSketchQuerySample rows can stay.
  const size_t skip = n > kSketchQuerySample ? n - kSketchQuerySample : 0;
  for (size_t i = skip; i < n; ++i) {
    std::copy(Q + i * D, Q + (i + 1) * D, queries_.begin() + qnext_ * D);
    qnext_ = (qnext_ + 1) % kSketchQuerySample;
    qn_ = std::min(qn_ + 1, kSketchQuerySample);
  }
}

void KeySketch::fit(const float* Kp, size_t L) {
  if (fitted_) throw Error(ErrorCode::InvalidArgument, "KeySketch: already fitted");
  if (Kp == nullptr || L == 0) throw Error(ErrorCode::InvalidArgument, "KeySketch: fit needs at least one key");
  for (size_t h = 0; h < nheads_; ++h) fit_basis(heads_[h], h, Kp, L, std::min(L, kSketchSample));
  fitted_ = true;
  append(Kp, L);
}

void KeySketch::refit(size_t L) {
  if (!fitted_) throw Error(ErrorCode::InvalidArgument, "KeySketch: refit before fit");
  if (L == 0 || L > length_) throw Error(ErrorCode::OutOfRange, "KeySketch: refit needs 1 <= L <= length()");
  next_.assign(nheads_, Head{});
  next_fitted_ = 0;
  next_length_ = 0;
  refit_at_ = L;
  refitting_ = true;
}

void KeySketch::encode(Head& hd, size_t h, const float* Kp, size_t j0, size_t j1) const {
  const bool four = bits_ == 4;
  // Groups of 4 coordinates a 64-byte line of 16 keys (int8), or of 8 (4-bit: g8).
  const size_t per = four ? 8 : 4;
  const size_t dk = dk_, r = hd.r, g = (r + per - 1) / per;
  const double lim = four ? 7.0 : 127.0;
  const size_t blocks = (j1 + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  // Code 0 (padding coordinates, later keys): 128, or 8 in both nibbles.
  hd.codes.resize(blocks * g * 4 * kDecodeKeyBlock, four ? 0x88 : 128);
  hd.rows.resize(j1 * dk, 0.0f);
  if (!four) {  // the norms of the bound (a 4-bit sketch has none)
    hd.eps.resize(j1);
    hd.rho.resize(j1);
  }
  std::vector<double> kv(dk), p(r), perp(dk);
  for (size_t j = j0; j < j1; ++j) {
    double nk = 0.0;
    for (size_t t = 0; t < dk; ++t) {
      kv[t] = key_at(Kp, nheads_, dk, h, j, t);
      hd.rows[j * dk + t] = key_at(Kp, nheads_, dk, h, j, t);
      nk += kv[t] * kv[t];
    }
    double qe = 0.0;
    const size_t b = j / kDecodeKeyBlock, cc = j % kDecodeKeyBlock;
    for (size_t t = 0; t < r; ++t) {
      double s = 0.0;
      for (size_t c = 0; c < dk; ++c) s += double(hd.basis[t * dk + c]) * kv[c];
      p[t] = s;
      double code = std::nearbyint(s / double(hd.step[t]));
      if (!(code <= lim)) code = std::isnan(code) ? 0.0 : lim;
      if (code < -lim) code = -lim;
      uint8_t& byte = hd.codes[b * g * 4 * kDecodeKeyBlock + ((cc / 16) * g + t / per) * 64 + (cc % 16) * 4 + t % 4];
      if (four) {  // coordinate t % 8 < 4 in the low nibble, the next four in the high one
        const auto nib = static_cast<uint8_t>(static_cast<int>(code) + 8);
        byte = t % 8 < 4 ? static_cast<uint8_t>((byte & 0xF0) | nib) : static_cast<uint8_t>((byte & 0x0F) | (nib << 4));
      } else {
        byte = static_cast<uint8_t>(static_cast<int>(code) + 128);
      }
      const double e = s - code * double(hd.step[t]);
      qe += e * e;
    }
    if (four) continue;
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
    // A non-finite key gets the largest bound (never NaN: B is then +inf or, for q = 0, 0).
    const float inf = std::numeric_limits<float>::max();
    const double e = std::sqrt(qe) + std::sqrt(pp);
    // delta |q| |k| <= |pi| delta |k| + |q_perp| delta |k|: the rounding allowance joins both.
    const double dn = double(kDelta) * std::sqrt(nk);
    const double ee = e + dn, rr = std::sqrt(rho) + dn;
    hd.eps[j] = std::isfinite(ee) && ee < inf ? static_cast<float>(ee) : inf;
    hd.rho[j] = std::isfinite(rr) && rr < inf ? static_cast<float>(rr) : inf;
  }
}

void KeySketch::append(const float* Kp, size_t L) {
  if (!fitted_) throw Error(ErrorCode::InvalidArgument, "KeySketch: append before fit");
  if (Kp == nullptr || L < length_) throw Error(ErrorCode::InvalidArgument, "KeySketch: append needs L >= length()");
  const size_t added = L - length_;
  for (size_t h = 0; h < nheads_; ++h) encode(heads_[h], h, Kp, length_, L);
  length_ = L;
  if (!refitting_) return;
  // The refit's share of this call: one head's basis (from a sample of the keys [0, refit_at_)),
  // else up to kSketchRefitChunk earlier keys plus this call's encoded under the new bases;
  // once the new bases hold every key they replace the old ones.
  if (next_fitted_ < nheads_) {
    fit_basis(next_[next_fitted_], next_fitted_, Kp, refit_at_, std::min(refit_at_, kSketchRefitSample));
    ++next_fitted_;
    return;
  }
  const size_t to = std::min(L, next_length_ + kSketchRefitChunk + added);
  for (size_t h = 0; h < nheads_; ++h) encode(next_[h], h, Kp, next_length_, to);
  next_length_ = to;
  if (next_length_ == L) {
    heads_.swap(next_);
    next_.clear();
    refitting_ = false;
    ++refits_;
  }
}

// Scores the candidates cj[0..n) of head h exactly into cs, each by the gemm_acc path the
// exact scan takes for it (so it rounds alike: the tail may fuse differently from the vector
// path): a key in a full 16-column group of the scan by the vector path, 16 candidates at a
// time gathered from the row-major copy into one 16-column operand (each column's sum is the
// same chain of multiply-adds as in the scan); a key past its block's last full group by the
// tail, on its packed column group as the scan scores it.
void KeySketch::score(size_t h, const float* qh, const float* Kp, const uint32_t* cj, size_t n, const Kernels& kern,
                      float* tile, float* cs) const {
  const Head& hd = heads_[h];
  const size_t L = length_, dk = dk_, H = nheads_;
  const float* Kh = Kp + h * dk * kDecodeKeyBlock;
  size_t batch[16];
  size_t nfull = 0;
  for (size_t i = 0; i < n; ++i) {
    // The row 16 candidates ahead is fetched meanwhile (the candidates are scattered over the copy).
    if (i + 16 < n)
      for (size_t t = 0; t < dk; t += 16) __builtin_prefetch(hd.rows.data() + static_cast<size_t>(cj[i + 16]) * dk + t);
    const size_t j = cj[i], b = j / kDecodeKeyBlock, c = j % kDecodeKeyBlock, g = c & ~size_t{15};
    const size_t kn = std::min(kDecodeKeyBlock, L - b * kDecodeKeyBlock);
    if (g + 16 <= kn) {
      batch[nfull++] = i;
      if (nfull == 16) {
        score_batch(kern, qh, dk, hd.rows.data(), cj, batch, nfull, tile, cs);
        nfull = 0;
      }
    } else {
      float t16[16] = {0};
      kern.gemm_acc(t16, 16, qh, dk, Kh + b * H * dk * kDecodeKeyBlock + g, kDecodeKeyBlock, 1, dk, kn - g);
      cs[i] = t16[c - g];
    }
  }
  if (nfull > 0) score_batch(kern, qh, dk, hd.rows.data(), cj, batch, nfull, tile, cs);
}

// A 4-bit head's first pass for the query's head qh: u_t = pi_t step_t quantised to int8 once
// (step max |u_t| / 127), then every key's sketch score into A (SketchScan4).
void KeySketch::pass4(size_t h, const float* qh, SketchScan4 scan4, float* A) const {
  const Head& hd = heads_[h];
  const size_t L = length_, dk = dk_, r = hd.r, g8 = (r + 7) / 8;
  const size_t nb = (L + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  std::vector<double> u(r, 0.0);
  for (size_t t = 0; t < r; ++t) {
    double s = 0.0;
    for (size_t c = 0; c < dk; ++c) s += double(hd.basis[t * dk + c]) * qh[c];
    u[t] = s * double(hd.step[t]);
  }
  std::vector<int8_t> w(8 * g8, 0);
  const float sig = quantise_int8(u.data(), r, w.data());
  for (size_t b = 0; b < nb; ++b) {
    const size_t j0 = b * kDecodeKeyBlock, kn = std::min(kDecodeKeyBlock, L - j0);
    float maxes[1];
    scan4(hd.codes.data() + b * g8 * 4 * kDecodeKeyBlock, g8, w.data(), sig, kn, A + j0, maxes);
  }
}

void KeySketch::scores4(const float* q, size_t h, float* a) const {
  if (bits_ != 4 || !fitted_ || h >= nheads_ || q == nullptr || a == nullptr)
    throw Error(ErrorCode::InvalidArgument, "KeySketch: scores4 needs a fitted 4-bit sketch, a head, q and a");
  pass4(h, q + h * dk_, sketch_scan4_portable, a);
}

// A 4-bit head's selection (select(), bits 4): the first pass (pass4), the M best of its scores
// (ties to the lower id) scored exactly, their top k kept. A holds the pass's scores (nb blocks
// of kDecodeKeyBlock). Returns the keys scored (M).
size_t KeySketch::select4(size_t h, const float* qh, const float* Kp, size_t k, size_t M, const Kernels& kern,
                        SketchScan4 scan4, SketchCollect collect, float* A, float* tile, uint32_t* ids,
                        float* scores) const {
  const size_t L = length_, kk = std::min(k, L);
  // Stage 1: every key's 4-bit score into A.
  pass4(h, qh, scan4, A);
  // Stage 1's M best (best_m: a sampled threshold, not a heap).
  thread_local std::vector<uint32_t> cand;
  thread_local std::vector<float> sample;
  const size_t m = best_m(A, L, M, collect, cand, sample);
  // In id order: the gathers of stage 2 walk the row copy forwards.
  std::sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(m));
  thread_local std::vector<float> cs;
  cs.resize(m);
  score(h, qh, Kp, cand.data(), m, kern, tile, cs.data());
  TopK hp(kk, true);
  for (size_t i = 0; i < m; ++i) hp.push(cs[i], cand[i]);
  const std::vector<Hit> hits = hp.sorted();
  for (size_t c = 0; c < k; ++c) {
    ids[h * k + c] = c < hits.size() ? hits[c].id : kNoKey;
    scores[h * k + c] = c < hits.size() ? hits[c].score : 0.0f;
  }
  return m;
}

void KeySketch::select(const float* q, const float* Kp, size_t k, size_t max_scored, const Kernels& kern,
                       uint32_t* ids, float* scores, SketchSelectStats* stats) const {
  if (!fitted_ || length_ == 0) throw Error(ErrorCode::InvalidArgument, "KeySketch: select before fit");
  if (q == nullptr || Kp == nullptr || ids == nullptr || scores == nullptr || k == 0)
    throw Error(ErrorCode::InvalidArgument, "KeySketch: select needs q, Kp, k >= 1 and outputs");
  if (max_scored != 0 && max_scored < k) throw Error(ErrorCode::OutOfRange, "KeySketch: max_scored must be 0 or >= k");
  if (bits_ == 4 && max_scored == 0)
    throw Error(ErrorCode::InvalidArgument, "KeySketch: a 4-bit sketch selects approximately: it needs max_scored >= k");
  SketchScan scan = sketch_scan_portable;
  SketchScan4 scan4 = sketch_scan4_portable;
  SketchCollect collect = sketch_collect_portable;
  if (kSketchScanAVX2 != nullptr && &kern != &kernels_for(SimdLevel::Scalar) && simd_level_supported(SimdLevel::AVX2)) {
    scan = kSketchScanAVX2;
    scan4 = kSketchScan4AVX2;
    collect = kSketchCollectAVX2;
    if (kSketchScanAVX512 != nullptr && simd_level_supported(SimdLevel::AVX512) && cpu_has_avx512_vnni() &&
        &kern == &kernels_for(SimdLevel::AVX512)) {
      scan = kSketchScanAVX512;
      scan4 = kSketchScan4AVX512;
    }
  }
  const size_t L = length_, dk = dk_, H = nheads_, kk = std::min(k, L);
  const size_t nb = (L + kDecodeKeyBlock - 1) / kDecodeKeyBlock;
  // The first stage's size: max_scored, or (exact mode) kSketchFirst x k.
  const size_t M = std::min(L, max_scored != 0 ? max_scored : kSketchFirst * k);
  // Per-thread scratch kept between calls: every key's sketch score and upper end, the
  // candidates and their exact scores.
  struct Scratch {
    std::vector<float> a, hi, bhi, cs;
    std::vector<uint32_t> cj;
  };
  thread_local Scratch scr;
  scr.a.resize(nb * kDecodeKeyBlock);
  scr.hi.resize(nb * kDecodeKeyBlock);
  scr.bhi.resize(nb);
  float* const A = scr.a.data();
  float* const Hi = scr.hi.data();
  float* const Bhi = scr.bhi.data();  // per block, the largest hi (NaN: +inf)
  std::vector<float>& cs = scr.cs;
  std::vector<uint32_t>& cj = scr.cj;
  std::vector<float> tile(dk * 16);
  std::vector<int8_t> wq;
  uint32_t idx[kDecodeKeyBlock];
  std::vector<double> pi, u, e, qperp(dk);
  size_t cand = 0, capped = 0;
  for (size_t h = 0; h < H; ++h) {
    const Head& hd = heads_[h];
    const size_t r = hd.r, g4 = (r + 3) / 4;
    const float* qh = q + h * dk;
    if (bits_ == 4) {
      cand += select4(h, qh, Kp, k, M, kern, scan4, collect, A, tile.data(), ids, scores);
      continue;
    }
    pi.assign(r, 0.0);
    u.assign(r, 0.0);
    for (size_t c = 0; c < dk; ++c) qperp[c] = qh[c];
    double pn = 0.0;
    for (size_t t = 0; t < r; ++t) {
      double s = 0.0;
      for (size_t c = 0; c < dk; ++c) s += double(hd.basis[t * dk + c]) * qh[c];
      pi[t] = s;
      pn += s * s;
      u[t] = s * double(hd.step[t]);
      for (size_t c = 0; c < dk; ++c) qperp[c] -= s * double(hd.basis[t * dk + c]);
    }
    double qp = 0.0;
    for (size_t c = 0; c < dk; ++c) qp += qperp[c] * qperp[c];
    // u quantised to int8 twice (key_sketch.h): w_0 = round(u / sig_0), then w_1 of the remainder;
    // e = u - sig_0 w_0 - sig_1 w_1 (exact in double: each product has at most 31 bits).
    wq.assign(8 * g4, 0);
    float sig[2];
    e = u;
    double extent = 0.0;  // 127 sum_t (sig_0 |w_0t| + sig_1 |w_1t|): the largest |a'| can be
    for (int l = 0; l < 2; ++l) {
      sig[l] = quantise_int8(e.data(), r, wq.data() + l * 4 * g4);
      for (size_t t = 0; t < r; ++t) {
        e[t] -= double(sig[l]) * double(wq[l * 4 * g4 + t]);
        extent += 127.0 * double(sig[l]) * std::fabs(double(wq[l * 4 * g4 + t]));
      }
    }
    double E = 0.0;
    for (size_t t = 0; t < r; ++t) E += 127.0 * std::fabs(e[t]);
    // E and the f32 rounding of a' (a conversion, two products and a sum: below 2^-21 of extent),
    // rounded up past their own f32 rounding.
    const double Eb = (E + extent * (1.0 / (1 << 21))) * (1.0 + 1.0 / (1 << 20));
    const float coef[4] = {static_cast<float>(std::sqrt(pn)), static_cast<float>(std::sqrt(qp)), kBoundUp,
                           std::isfinite(Eb) && Eb < double(std::numeric_limits<float>::max())
                               ? static_cast<float>(Eb)
                               : std::numeric_limits<float>::infinity()};
    // Stage 1: one pass over the codes: every key's sketch score a and upper end hi = a + B
    // (hi >= its exact score); the M keys of best sketch score kept (ties to the lower id). (A heap
    // here: for M = 2k, best_m's separate sample and collect measured slower, 0.78 against 0.70 ms
    // a warm select at 64k.)
    TopK first(M, true);
    for (size_t b = 0; b < nb; ++b) {
      const size_t j0 = b * kDecodeKeyBlock, kn = std::min(kDecodeKeyBlock, L - j0);
      float maxes[2];
      scan(hd.codes.data() + b * g4 * 4 * kDecodeKeyBlock, g4, wq.data(), sig, hd.eps.data() + j0, hd.rho.data() + j0,
           coef, kn, A + j0, Hi + j0, maxes);
      Bhi[b] = maxes[1];
      if (!first.full()) {
        first.push_run(A + j0, kn, static_cast<uint32_t>(j0));
      } else if (maxes[0] > first.worst().score) {
        // The keys above the worst kept score as the block starts (the worst only rises).
        const size_t m = collect(A + j0, kn, first.worst().score, true, idx);
        for (size_t i = 0; i < m; ++i) {
          const size_t j = j0 + idx[i];
          if (A[j] > first.worst().score) first.push(A[j], static_cast<uint32_t>(j));
        }
      }
    }
    // Stage 2: the M scored exactly; s_k = the k-th best exact score among them.
    const std::vector<Hit> firsts = first.sorted();
    cj.resize(firsts.size());
    for (size_t i = 0; i < firsts.size(); ++i) cj[i] = firsts[i].id;
    cs.resize(cj.size());
    score(h, qh, Kp, cj.data(), cj.size(), kern, tile.data(), cs.data());
    TopK hp(kk, true);
    for (size_t i = 0; i < cj.size(); ++i) hp.push(cs[i], cj[i]);
    size_t scored = cj.size();
    // The certificate: every key left out has an exact score <= its hi; when the largest such
    // hi is below s_k, none of them can enter the top k (nor tie into it), and the selection
    // is the exact scan's. (A left-out key is one ranked below the first stage's worst by
    // (score, id); a NaN sketch score counts as left out, which only makes the test stricter.)
    if (M < L) {
      const Hit worst = first.worst();
      const float s_k = hp.worst().score;
      // Only blocks whose largest hi reaches s_k can hold a key that breaks the certificate.
      bool holds = true;
      for (size_t b = 0; b < nb && holds; ++b) {
        if (Bhi[b] < s_k) continue;
        const size_t j0 = b * kDecodeKeyBlock, m = collect(Hi + j0, std::min(kDecodeKeyBlock, L - j0), s_k, false, idx);
        for (size_t i = 0; i < m && holds; ++i) {
          const size_t j = j0 + idx[i];
          const float a = A[j];
          holds = a > worst.score || (a == worst.score && j <= worst.id);
        }
      }
      if (!holds) {
        if (max_scored != 0) {
          ++capped;  // approximate: the limit left keys that might belong to the top k
        } else {
          // Exact mode: the left-out keys whose upper end reaches s_k are scored too (a key
          // with hi < s_k has k keys of exact score >= s_k above it).
          cj.clear();
          for (size_t b = 0; b < nb; ++b) {
            if (Bhi[b] < s_k) continue;
            const size_t j0 = b * kDecodeKeyBlock, m = collect(Hi + j0, std::min(kDecodeKeyBlock, L - j0), s_k, false, idx);
            for (size_t i = 0; i < m; ++i) {
              const size_t j = j0 + idx[i];
              const float a = A[j];
              if (a > worst.score || (a == worst.score && j <= worst.id)) continue;
              cj.push_back(static_cast<uint32_t>(j));
            }
          }
          cs.resize(cj.size());
          score(h, qh, Kp, cj.data(), cj.size(), kern, tile.data(), cs.data());
          for (size_t i = 0; i < cj.size(); ++i) hp.push(cs[i], cj[i]);
          scored += cj.size();
        }
      }
    }
    cand += scored;
    const std::vector<Hit> hits = hp.sorted();
    for (size_t c = 0; c < k; ++c) {
      ids[h * k + c] = c < hits.size() ? hits[c].id : kNoKey;
      scores[h * k + c] = c < hits.size() ? hits[c].score : 0.0f;
    }
  }
  if (stats != nullptr) {
    stats->candidates = cand;
    stats->capped = capped;
  }
}

}  // namespace gt
