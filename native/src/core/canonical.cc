#include "canonical.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "parallel.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace gt {
namespace canonical {

namespace {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2Hi = 6.93147180369123816490e-1;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// 1/k!, each a correctly rounded division, as lib/verify/canonical.ts computes them.
struct ExpCoef {
  double c[14];
  ExpCoef() {
    c[0] = 1.0;
    double f = 1.0;
    for (int k = 1; k <= 13; ++k) {
      f *= k;
      c[k] = 1.0 / f;
    }
  }
};
const ExpCoef& exp_coef() {
  static const ExpCoef coef;
  return coef;
}

// 2^m for m in [-1022, 1023], from its bits.
double pow2(int m) {
  const uint64_t bits = static_cast<uint64_t>(m + 1023) << 52;
  double r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

double atanh2(double u) {
  const double u2 = u * u;
  double s = 0.0;
  for (int k = 79; k >= 1; k -= 2) s = s * u2 + 1.0 / k;
  return 2.0 * (u * s);
}

double dot(const double* a, const float* b, size_t n) {
  double s = 0.0;
  for (size_t j = 0; j < n; ++j) s = s + a[j] * static_cast<double>(b[j]);
  return s;
}

// Four rows' dot() with q at once (four independent chains, each one term at a time in
// j order: the same bits as dot()), into s[0..3].
inline void dot4(const double* q, const float* r0, const float* r1, const float* r2, const float* r3, size_t d, double* s) {
  double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
  for (size_t j = 0; j < d; ++j) {
    const double qj = q[j];
    a0 = a0 + qj * static_cast<double>(r0[j]);
    a1 = a1 + qj * static_cast<double>(r1[j]);
    a2 = a2 + qj * static_cast<double>(r2[j]);
    a3 = a3 + qj * static_cast<double>(r3[j]);
  }
  s[0] = a0;
  s[1] = a1;
  s[2] = a2;
  s[3] = a3;
}

// Positions 0..n-1 of `s` ranked by score descending, then id ascending; first k.
template <typename IdOf>
std::vector<uint32_t> topk(const double* s, size_t n, size_t k, IdOf id_of) {
  std::vector<uint32_t> pos(n);
  std::iota(pos.begin(), pos.end(), 0u);
  auto better = [&](uint32_t a, uint32_t b) { return s[a] > s[b] || (s[a] == s[b] && id_of(a) < id_of(b)); };
  k = std::min(k, n);
  std::partial_sort(pos.begin(), pos.begin() + static_cast<std::ptrdiff_t>(k), pos.end(), better);
  pos.resize(k);
  return pos;
}

}  // namespace

void dots(const double* q, const float* t, size_t n, size_t d, double* s) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float *r0 = t + i * d, *r1 = r0 + d, *r2 = r1 + d, *r3 = r2 + d;
    dot4(q, r0, r1, r2, r3, d, s + i);
  }
  for (; i < n; ++i) s[i] = dot(q, t + i * d, d);
}

void softmax_in_place(double* z, size_t k) {
  double m = -HUGE_VAL;
  for (size_t i = 0; i < k; ++i)
    if (z[i] > m) m = z[i];
  double sum = 0.0;
  for (size_t i = 0; i < k; ++i) {
    z[i] = canonical::exp(z[i] - m);
    sum = sum + z[i];
  }
  for (size_t i = 0; i < k; ++i) z[i] = z[i] / sum;
}

double exp(double x) {
  if (std::isnan(x)) return x;
  if (x > 709.7) return HUGE_VAL;
  if (x < -745.2) return 0.0;
  const double n = std::floor(x * kLog2e + 0.5);
  const double r = x - n * kLn2Hi - n * kLn2Lo;
  const double* c = exp_coef().c;
  double p = c[13];
  for (int k = 12; k >= 0; --k) p = p * r + c[k];
  const int ni = static_cast<int>(n);
  if (ni > 1023) return p * pow2(1023) * pow2(ni - 1023);
  if (ni < -1022) return p * pow2(-1022) * pow2(ni + 1022);
  return p * pow2(ni);
}

double log1p_neg(double x) {
  if (!(x <= 0.0 && x > -1.0)) return std::nan("");
  if (x == 0.0) return 0.0;
  if (x >= -0.5) return atanh2(x / (2.0 + x));
  double y = 1.0 + x;
  int e = 0;
  while (y < 0.5) {
    y = y * 2.0;
    ++e;
  }
  return atanh2((y - 1.0) / (2.0 + (y - 1.0))) - e * kLn2Hi - e * kLn2Lo;
}

double powi(double b, uint64_t t) {
  double r = 1.0, base = b;
  while (t > 0) {
    if (t & 1u) r = r * base;
    t >>= 1;
    if (t > 0) base = base * base;
  }
  return r;
}

void state(const float* x, size_t d, bool normalize, double* q) {
  if (!normalize) {
    for (size_t j = 0; j < d; ++j) q[j] = x[j];
    return;
  }
  double s = 0.0;
  for (size_t j = 0; j < d; ++j) s = s + static_cast<double>(x[j]) * static_cast<double>(x[j]);
  const double n = std::sqrt(s);
  for (size_t j = 0; j < d; ++j) q[j] = n > 0.0 ? static_cast<double>(x[j]) / n : 0.0;
}

std::vector<double> states(const float* x, size_t B, size_t d, bool normalize) {
  std::vector<double> q(B * d, 0.0);
  for (size_t b = 0; b < B; ++b) state(x + b * d, d, normalize, q.data() + b * d);
  return q;
}

double norm(const double* q, size_t d) {
  double t = 0.0;
  for (size_t j = 0; j < d; ++j) t = t + q[j] * q[j];
  return std::sqrt(t);
}

double similarity(const double* q, double nq, const float* r, size_t d, Metric m) {
  if (m == Metric::IP) return dot(q, r, d);
  if (m == Metric::Cosine) {
    double t = 0.0;
    for (size_t j = 0; j < d; ++j) t = t + static_cast<double>(r[j]) * static_cast<double>(r[j]);
    const double nk = std::sqrt(t);
    return (nq == 0.0 || nk == 0.0) ? 0.0 : dot(q, r, d) / (nq * nk);
  }
  double t = 0.0;
  for (size_t j = 0; j < d; ++j) {
    const double u = q[j] - static_cast<double>(r[j]);
    t = t + u * u;
  }
  return -t;
}

namespace {

// similarity() of one state with four rows at once: each row's sums (its dot, and for
// COSINE its own norm; for L2 its squared distance) are separate chains, one term at a
// time in j order, so each gives similarity()'s bits; eight (COSINE) or four independent
// chains run in parallel instead of one waiting on the last add.
void similarity4(const double* q, double nq, const float* const r[4], size_t d, Metric m, double* s) {
  if (m == Metric::IP) {
    dot4(q, r[0], r[1], r[2], r[3], d, s);
    return;
  }
  if (m == Metric::Cosine) {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;  // q . r
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;  // r . r
    for (size_t j = 0; j < d; ++j) {
      const double qj = q[j];
      const double x0 = static_cast<double>(r[0][j]), x1 = static_cast<double>(r[1][j]);
      const double x2 = static_cast<double>(r[2][j]), x3 = static_cast<double>(r[3][j]);
      t0 = t0 + x0 * x0;
      t1 = t1 + x1 * x1;
      t2 = t2 + x2 * x2;
      t3 = t3 + x3 * x3;
      a0 = a0 + qj * x0;
      a1 = a1 + qj * x1;
      a2 = a2 + qj * x2;
      a3 = a3 + qj * x3;
    }
    const double t[4] = {t0, t1, t2, t3}, a[4] = {a0, a1, a2, a3};
    for (int i = 0; i < 4; ++i) {
      const double nk = std::sqrt(t[i]);
      s[i] = (nq == 0.0 || nk == 0.0) ? 0.0 : a[i] / (nq * nk);
    }
    return;
  }
  double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
  for (size_t j = 0; j < d; ++j) {
    const double qj = q[j];
    const double u0 = qj - static_cast<double>(r[0][j]), u1 = qj - static_cast<double>(r[1][j]);
    const double u2 = qj - static_cast<double>(r[2][j]), u3 = qj - static_cast<double>(r[3][j]);
    t0 = t0 + u0 * u0;
    t1 = t1 + u1 * u1;
    t2 = t2 + u2 * u2;
    t3 = t3 + u3 * u3;
  }
  s[0] = -t0;
  s[1] = -t1;
  s[2] = -t2;
  s[3] = -t3;
}

}  // namespace

std::vector<double> scores(const double* q, const float* rows, size_t B, size_t k, size_t d, Metric m,
                           const uint32_t* at) {
  std::vector<double> s(B * k);
  auto row = [&](size_t p) { return rows + (at ? static_cast<size_t>(at[p]) : p) * d; };
  for (size_t b = 0; b < B; ++b) {
    const double* qb = q + b * d;
    const double nq = m == Metric::Cosine ? norm(qb, d) : 0.0;
    size_t i = 0;
    for (; i + 4 <= k; i += 4) {
      const size_t p = b * k + i;
      const float* const r[4] = {row(p), row(p + 1), row(p + 2), row(p + 3)};
      similarity4(qb, nq, r, d, m, s.data() + p);
    }
    for (; i < k; ++i) s[b * k + i] = similarity(qb, nq, row(b * k + i), d, m);
  }
  return s;
}

std::vector<double> mix(const double* s, float beta, const float* rows, size_t B, size_t k, size_t w,
                        const uint32_t* at) {
  std::vector<double> out(B * w, 0.0), z(k);
  const double bt = beta;
  for (size_t b = 0; b < B; ++b) {
    for (size_t i = 0; i < k; ++i) z[i] = bt * s[b * k + i];
    softmax_in_place(z.data(), k);
    double* ob = out.data() + b * w;
    for (size_t i = 0; i < k; ++i) {
      const size_t p = b * k + i;
      const float* r = rows + (at ? static_cast<size_t>(at[p]) : p) * w;
      const double a = z[i];
      for (size_t j = 0; j < w; ++j) ob[j] = ob[j] + a * static_cast<double>(r[j]);
    }
  }
  return out;
}

namespace {

// s[c] = dot(q, t + rows[c] * d, d) for c < m: dots() over listed rows, four at a time
// (each row's sum one term at a time in j order: the same bits as dot()).
void dots_rows(const double* q, const float* t, const uint32_t* rows, size_t m, size_t d, double* s) {
  size_t c = 0;
  for (; c + 4 <= m; c += 4) {
    const float *r0 = t + rows[c] * d, *r1 = t + rows[c + 1] * d, *r2 = t + rows[c + 2] * d, *r3 = t + rows[c + 3] * d;
    dot4(q, r0, r1, r2, r3, d, s + c);
  }
  for (; c < m; ++c) s[c] = dot(q, t + rows[c] * d, d);
}

// Screening bound E for one state half qb (d values) against a table whose largest
// |value| is tmax (docs/product-keys.md, "Proving fast"): for every row t_i,
// |f32 kernel score of (f32(qb), t_i) - canonical f64 score of (qb, t_i)| <= E.
// Returns a negative number when the bound does not hold (screening off): d too large,
// values too large for f32 arithmetic, a non-finite table.
double screen_bound(const double* qb, size_t d, uint32_t tmax_bits) {
  if (d > (size_t{1} << 20) || tmax_bits >= 0x7f800000u) return -1.0;
  float tmax_f;
  std::memcpy(&tmax_f, &tmax_bits, sizeof tmax_f);
  const double tmax = tmax_f;
  double sq = 0.0;
  for (size_t j = 0; j < d; ++j) sq = sq + std::fabs(qb[j]);
  const double lim = 0x1p100;
  if (!(sq <= lim) || !(sq * tmax <= lim)) return -1.0;
  const double dd = static_cast<double>(d);
  const double rel = (2.0 * (dd + 1.0) * 0x1p-24) * sq * tmax * (1.0 + 0x1p-20);
  const double abs = (4.0 * dd + 4.0) * 0x1p-126 * (1.0 + tmax + sq);
  return rel + abs;
}

// Per-thread buffers of product_keys.
struct PkScratch {
  std::vector<float> qf, a, bmax, gval;
  std::vector<double> s;
  std::vector<uint32_t> cand, pos, gid;
  std::vector<int32_t> keys;
};

// The integer whose order is the order of finite floats: key(x) < key(y) exactly when
// x < y (both zeros 0). |key| <= 0x7f800000.
inline int32_t order_key(float x) {
  int32_t b;
  std::memcpy(&b, &x, sizeof b);
  const int32_t s = b >> 31;  // 0, or -1 for a negative sign
  return ((b & 0x7fffffff) ^ s) - s;
}
inline float from_order_key(int32_t k) {
  const uint32_t b = k < 0 ? (static_cast<uint32_t>(-k) | 0x80000000u) : static_cast<uint32_t>(k);
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// The kk-th largest of v[0..m) (finite values, 1 <= kk <= m): the largest key c with at
// least kk keys >= c, by bisection over the keys' range. Each step is one count without
// a branch per value (vector code); nth_element's data-dependent branches cost more
// here. With slack > 0 the bisection stops once the range is at most slack keys wide and
// returns a value with at least kk values at or above it (a lower bound of the kk-th
// largest, within slack keys of it). `keys` is scratch.
float nth_largest(const float* v, size_t m, size_t kk, std::vector<int32_t>& keys, int32_t slack = 0) {
  keys.resize(m);
  int32_t* k = keys.data();
  int32_t lo = std::numeric_limits<int32_t>::max(), hi = std::numeric_limits<int32_t>::min();
  for (size_t i = 0; i < m; ++i) {
    k[i] = order_key(v[i]);
    lo = k[i] < lo ? k[i] : lo;
    hi = k[i] > hi ? k[i] : hi;
  }
  // Invariant: count(>= lo) >= kk > count(>= hi + 1); |keys| <= 2^31 - 2^23: no overflow.
  while (static_cast<int64_t>(hi) - lo > slack) {
    const int32_t mid = lo + static_cast<int32_t>((static_cast<int64_t>(hi) - lo + 1) / 2);
    uint32_t c = 0;
    for (size_t i = 0; i < m; ++i) c += k[i] >= mid ? 1u : 0u;
    if (c >= kk) lo = mid;
    else hi = mid - 1;
  }
  return from_order_key(lo);
}

// One table's f32 scores a[0..n) for one state (finite values, 1 <= kk <= n): returns
// the kk-th largest a_i and sets L to a lower bound of it, with the rows at or above L
// in sc.gid (their scores in sc.gval); with too few rows to group, L = +inf and no rows
// (a caller's threshold below L then reads all n).
//
// The rows are split into nb groups of W (group b: rows b, b + nb, ..., b + (W - 1) nb;
// the n - W nb rows past them in none), and bmax[b] is a group's largest score: a
// strided split, so that the maxima are W - 1 element-wise passes over contiguous
// scores (vector code) rather than a reduction per group. L, the kk-th largest group
// maximum (or any value with kk group maxima at or above it), is at most the answer (the
// kk groups with the largest maxima hold kk distinct rows at or above L), so every row at or above the answer is at or above L
// and the answer is the kk-th largest of those rows alone: usually a few more than kk.
// (A min-heap of the kk best over all n, with its data-dependent branches, was half of
// product_keys at n = 1,024, kk = 32, B = 64.)
float kth_largest(const float* a, size_t n, size_t kk, PkScratch& sc, float& L) {
  const size_t W = n / 8 >= 2 * kk ? 8 : n / 4 >= 2 * kk ? 4 : 0;
  sc.gid.resize(n);
  sc.gval.resize(n);
  if (W == 0) {
    L = HUGE_VALF;
    sc.gid.clear();
    return nth_largest(a, n, kk, sc.keys);
  }
  const size_t nb = n / W;
  sc.bmax.assign(a, a + nb);
  float* bm = sc.bmax.data();
  for (size_t l = 1; l < W; ++l) {
    const float* r = a + l * nb;
    for (size_t b = 0; b < nb; ++b) bm[b] = r[b] > bm[b] ? r[b] : bm[b];
  }
  // L need only be a lower bound: within 2^16 keys (2^-7 relative, for normal floats)
  // of the kk-th largest maximum, which saves a few bisection steps (5-9% of the call).
  L = nth_largest(bm, nb, kk, sc.keys, 1 << 16);
  // The rows at or above L, appended without a branch per row.
  uint32_t* gid = sc.gid.data();
  float* gval = sc.gval.data();
  size_t m = 0;
  for (size_t b = 0; b < nb; ++b) {
    if (!(bm[b] >= L)) continue;
    for (size_t j = b; j < W * nb; j += nb) {
      gid[m] = static_cast<uint32_t>(j);
      gval[m] = a[j];
      m += a[j] >= L ? 1 : 0;
    }
  }
  for (size_t j = W * nb; j < n; ++j) {
    gid[m] = static_cast<uint32_t>(j);
    gval[m] = a[j];
    m += a[j] >= L ? 1 : 0;
  }
  sc.gid.resize(m);  // >= kk: the rows holding the kk best group maxima
  return nth_largest(gval, m, kk, sc.keys);
}

// The canonical top-kk rows of table t (n x d) for state half qb, best first, and their
// canonical scores: topk(dots(qb, t)) restricted to what it returns. `a` (n f32 scores
// of f32(qb)) and E >= 0: only rows with a_i >= a_(kk) - 2.5 E are scored canonically
// (the others are beaten by kk rows outright); E < 0 or too many candidates: all rows.
void table_top(const double* qb, const float* t, size_t n, size_t d, size_t kk, const float* a, double E,
               PkScratch& sc, std::vector<uint32_t>& top, std::vector<double>& top_s, size_t& scored) {
  const auto ident = [](uint32_t p) { return p; };
  bool screened = false;
  if (E >= 0.0 && a != nullptr) {
    // The kk-th largest a_i (the a_i are finite when E >= 0: screen_bound).
    float L;
    const float kth = kth_largest(a, n, kk, sc, L);
    // a_i >= thr_f (an f32 at or below thr) keeps every row with a_i >= thr.
    const double thr = static_cast<double>(kth) - 2.5 * E;
    float thr_f = static_cast<float>(thr);
    if (static_cast<double>(thr_f) > thr) thr_f = std::nextafter(thr_f, -HUGE_VALF);
    // The candidates, in no particular order (they are ranked below), appended without
    // a branch per row: usually from the rows at or above L, else from all n.
    sc.cand.resize(n);
    uint32_t* cand = sc.cand.data();
    size_t m = 0;
    if (thr_f >= L) {
      const uint32_t* gid = sc.gid.data();
      const float* gval = sc.gval.data();
      for (size_t i = 0; i < sc.gid.size(); ++i) {
        cand[m] = gid[i];
        m += gval[i] >= thr_f ? 1 : 0;
      }
    } else {
      for (size_t j = 0; j < n; ++j) {
        cand[m] = static_cast<uint32_t>(j);
        m += a[j] >= thr_f ? 1 : 0;
      }
    }
    sc.cand.resize(m);
    // At least kk (the kk largest a_i pass); the first test only guards the reads below.
    screened = sc.cand.size() >= kk && sc.cand.size() * 2 <= n;
  }
  if (!screened) {
    sc.s.resize(n);
    dots(qb, t, n, d, sc.s.data());
    top = topk(sc.s.data(), n, kk, ident);
    top_s.resize(kk);
    for (size_t i = 0; i < kk; ++i) top_s[i] = sc.s[top[i]];
    scored += n;
    return;
  }
  const size_t m = sc.cand.size();  // >= kk: the kk best a_i are candidates
  sc.s.resize(m);
  dots_rows(qb, t, sc.cand.data(), m, d, sc.s.data());
  // The candidates ranked canonically (usually about kk of them: one sort).
  const uint32_t* cand = sc.cand.data();
  const double* cs = sc.s.data();
  sc.pos.resize(m);
  std::iota(sc.pos.begin(), sc.pos.end(), 0u);
  const auto better = [cs, cand](uint32_t x, uint32_t y) { return cs[x] > cs[y] || (cs[x] == cs[y] && cand[x] < cand[y]); };
  if (m > 2 * kk) std::partial_sort(sc.pos.begin(), sc.pos.begin() + static_cast<std::ptrdiff_t>(kk), sc.pos.end(), better);
  else std::sort(sc.pos.begin(), sc.pos.end(), better);
  const uint32_t* pos = sc.pos.data();
  top.resize(kk);
  top_s.resize(kk);
  for (size_t i = 0; i < kk; ++i) {
    top[i] = cand[pos[i]];
    top_s[i] = sc.s[pos[i]];
  }
  scored += m;
}

}  // namespace

uint32_t abs_max_bits(const float* t, size_t len) {
  size_t i = 0;
  uint32_t r = 0;
#if defined(__SSE2__) || defined(__ARM_NEON)
  // Four vectors of four lanes (SSE2 or NEON: the baseline of x86-64 and arm64), each
  // keeping the largest |t| as a float (for non-negative floats the order of the values
  // is that of their bits) and the f32 sum of the |t|: it is an infinity or a NaN when
  // some |t| is (a float max can drop a NaN), or when a finite sum overflows; then the
  // table is scanned again one pattern at a time. The integer max one pattern at a time
  // (SSE2 has no 32-bit integer max: compare and select) cost 2.5 times as much, about
  // twice the f32 scores of the same table at B = 1.
  float mx[16], sm[16];
#if defined(__SSE2__)
  const __m128 mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  __m128 m0 = _mm_setzero_ps(), m1 = m0, m2 = m0, m3 = m0, s0 = m0, s1 = m0, s2 = m0, s3 = m0;
  for (; i + 16 <= len; i += 16) {
    const __m128 v0 = _mm_and_ps(_mm_loadu_ps(t + i), mask), v1 = _mm_and_ps(_mm_loadu_ps(t + i + 4), mask);
    const __m128 v2 = _mm_and_ps(_mm_loadu_ps(t + i + 8), mask), v3 = _mm_and_ps(_mm_loadu_ps(t + i + 12), mask);
    m0 = _mm_max_ps(m0, v0), m1 = _mm_max_ps(m1, v1), m2 = _mm_max_ps(m2, v2), m3 = _mm_max_ps(m3, v3);
    s0 = _mm_add_ps(s0, v0), s1 = _mm_add_ps(s1, v1), s2 = _mm_add_ps(s2, v2), s3 = _mm_add_ps(s3, v3);
  }
  _mm_storeu_ps(mx, m0), _mm_storeu_ps(mx + 4, m1), _mm_storeu_ps(mx + 8, m2), _mm_storeu_ps(mx + 12, m3);
  _mm_storeu_ps(sm, s0), _mm_storeu_ps(sm + 4, s1), _mm_storeu_ps(sm + 8, s2), _mm_storeu_ps(sm + 12, s3);
#else
  float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0, s0 = m0, s1 = m0, s2 = m0, s3 = m0;
  for (; i + 16 <= len; i += 16) {
    const float32x4_t v0 = vabsq_f32(vld1q_f32(t + i)), v1 = vabsq_f32(vld1q_f32(t + i + 4));
    const float32x4_t v2 = vabsq_f32(vld1q_f32(t + i + 8)), v3 = vabsq_f32(vld1q_f32(t + i + 12));
    m0 = vmaxq_f32(m0, v0), m1 = vmaxq_f32(m1, v1), m2 = vmaxq_f32(m2, v2), m3 = vmaxq_f32(m3, v3);
    s0 = vaddq_f32(s0, v0), s1 = vaddq_f32(s1, v1), s2 = vaddq_f32(s2, v2), s3 = vaddq_f32(s3, v3);
  }
  vst1q_f32(mx, m0), vst1q_f32(mx + 4, m1), vst1q_f32(mx + 8, m2), vst1q_f32(mx + 12, m3);
  vst1q_f32(sm, s0), vst1q_f32(sm + 4, s1), vst1q_f32(sm + 8, s2), vst1q_f32(sm + 12, s3);
#endif
  float total = 0.0f;
  for (int l = 0; l < 16; ++l) {
    total += sm[l];
    uint32_t v;
    std::memcpy(&v, mx + l, sizeof v);
    r = v > r ? v : r;
  }
  if (!(total <= std::numeric_limits<float>::max())) {
    i = 0;  // an infinity, a NaN or an overflow: every value again, exactly, below
    r = 0;
  }
#endif
  for (; i < len; ++i) {
    uint32_t v;
    std::memcpy(&v, t + i, sizeof v);
    v &= 0x7fffffffu;
    r = v > r ? v : r;
  }
  return r;
}

template <class S>
void best_pairs(const S* s1, const uint32_t* top1, const S* s2, const uint32_t* top2, size_t kk, size_t n, size_t k,
                uint32_t* ids, double* scores, std::vector<PairAt>& frontier) {
  // The heap's order: the top is the best pair (pair_better).
  const auto worse = [](const PairAt& u, const PairAt& v) { return pair_better(v.p, u.p); };
  const auto at = [&](uint32_t x, uint32_t c) {
    return PairAt{pair_score(static_cast<double>(s1[x]), static_cast<double>(s2[c]),
                             static_cast<uint32_t>(static_cast<uint64_t>(top1[x]) * n + top2[c])),
                  x, c};
  };
  frontier.clear();
  frontier.push_back(at(0, 0));
  for (size_t t = 0; t < k; ++t) {
    std::pop_heap(frontier.begin(), frontier.end(), worse);
    const PairAt p = frontier.back();
    frontier.pop_back();
    ids[t] = p.p.id;
    scores[t] = p.p.hi;
    if (p.c == 0 && p.x + 1 < kk) {
      frontier.push_back(at(p.x + 1, 0));
      std::push_heap(frontier.begin(), frontier.end(), worse);
    }
    if (p.c + 1 < kk) {
      frontier.push_back(at(p.x, p.c + 1));
      std::push_heap(frontier.begin(), frontier.end(), worse);
    }
  }
}
template void best_pairs<double>(const double*, const uint32_t*, const double*, const uint32_t*, size_t, size_t, size_t,
                                 uint32_t*, double*, std::vector<PairAt>&);
template void best_pairs<float>(const float*, const uint32_t*, const float*, const uint32_t*, size_t, size_t, size_t,
                                uint32_t*, double*, std::vector<PairAt>&);

void product_keys(const double* q, const float* t1, const float* t2, size_t n, size_t d1, size_t d2, size_t B,
                  size_t k, uint32_t* ids, double* out_scores, size_t threads, const Kernels* fast,
                  size_t* canonical_rows, const uint32_t* tmax_bits) {
  const size_t d = d1 + d2;
  const size_t kk = std::min(k, n);
  // Screening pays only when it can leave most rows out.
  const bool screen = fast != nullptr && kk * 4 <= n;
  const uint32_t tmax1 = !screen ? 0x7f800000u : tmax_bits != nullptr ? tmax_bits[0] : abs_max_bits(t1, n * d1);
  const uint32_t tmax2 = !screen ? 0x7f800000u : tmax_bits != nullptr ? tmax_bits[1] : abs_max_bits(t2, n * d2);
  constexpr size_t kGroup = 8;  // states screened per kernel call
  // With many states the f32 scores come from gemm_acc over the tables transposed
  // (d x n: each multiply-add serves a vector of rows, no horizontal sums), where
  // dot_block sums each (state, row) pair across a vector. The transposition is paid
  // once per call: against dot_block, 1 thread, d = 32, n = 256 to 2,048, it cost 1.08-1.31x
  // at 8 states, 0.96-1.02x at 16, 0.90-0.94x at 32, 0.83-0.94x at 64.
  constexpr size_t kGemmMinStates = 24;
  const bool gemm = screen && B >= kGemmMinStates;
  std::vector<float> t1T, t2T;
  if (gemm) {
    for (int half = 0; half < 2; ++half) {
      const size_t dh = half == 0 ? d1 : d2;
      const float* t = half == 0 ? t1 : t2;
      std::vector<float>& tT = half == 0 ? t1T : t2T;
      tT.resize(dh * n);
      // 16 rows at a time: each column's 16 values are one cache line of tT (a row at a
      // time wrote d lines n floats apart, and at n a power of two they share cache sets).
      size_t i0 = 0;
      for (; i0 + 16 <= n; i0 += 16)
        for (size_t j = 0; j < dh; ++j)
          for (size_t i = i0; i < i0 + 16; ++i) tT[j * n + i] = t[i * dh + j];
      for (size_t i = i0; i < n; ++i)
        for (size_t j = 0; j < dh; ++j) tT[j * n + i] = t[i * dh + j];
    }
  }
  std::atomic<size_t> scored_all{0};
  parallel_for(B, threads, [&](size_t lo, size_t hi, size_t) {
    PkScratch sc;
    std::vector<float> a1, a2;
    std::vector<uint32_t> top1, top2;
    std::vector<double> s1, s2;
    std::vector<PairAt> frontier;
    frontier.reserve(kk + 1);
    size_t scored = 0;
    for (size_t g = lo; g < hi; g += kGroup) {
      const size_t ng = std::min(kGroup, hi - g);
      if (screen) {
        // f32 scores of the group's states against both tables (the fast kernels).
        for (int half = 0; half < 2; ++half) {
          const size_t dh = half == 0 ? d1 : d2, off = half == 0 ? 0 : d1;
          sc.qf.resize(ng * dh);
          for (size_t b = 0; b < ng; ++b)
            for (size_t j = 0; j < dh; ++j) {
              // A value beyond 2^100 turns screening off for its state (screen_bound):
              // 0 keeps the conversion in range.
              const double v = q[(g + b) * d + off + j];
              sc.qf[b * dh + j] = std::fabs(v) <= 0x1p100 ? static_cast<float>(v) : 0.0f;
            }
          std::vector<float>& a = half == 0 ? a1 : a2;
          if (gemm) {
            a.assign(ng * n, 0.0f);
            fast->gemm_acc(a.data(), n, sc.qf.data(), dh, half == 0 ? t1T.data() : t2T.data(), n, ng, dh, n);
          } else {
            a.resize(ng * n);
            fast->dot_block(sc.qf.data(), ng, half == 0 ? t1 : t2, n, dh, a.data(), n);
          }
        }
      }
      for (size_t b = g; b < g + ng; ++b) {
        const double* qb = q + b * d;
        const double E1 = screen ? screen_bound(qb, d1, tmax1) : -1.0;
        const double E2 = screen ? screen_bound(qb + d1, d2, tmax2) : -1.0;
        table_top(qb, t1, n, d1, kk, screen ? a1.data() + (b - g) * n : nullptr, E1, sc, top1, s1, scored);
        table_top(qb + d1, t2, n, d2, kk, screen ? a2.data() + (b - g) * n : nullptr, E2, sc, top2, s2, scored);
        // The best k pairs, best first (best_pairs: a walk of k pops and at most 2 k pushes,
        // where a partial sort over the k (1 + ln k) pairs with (x + 1) (c + 1) <= k made a
        // heap of them all).
        best_pairs(s1.data(), top1.data(), s2.data(), top2.data(), kk, n, k, ids + b * k, out_scores + b * k, frontier);
      }
    }
    scored_all.fetch_add(scored, std::memory_order_relaxed);
  });
  if (canonical_rows != nullptr) *canonical_rows = scored_all.load();
}

namespace {

// Canonical similarities of state qb (|qb| = nq, canonical, for cosine) with the keys
// rows[c] (c < m; all n keys in order when rows is nullptr), as scores() computes them.
void score_rows(const double* qb, double nq, const float* keys, const uint32_t* rows, size_t m, size_t d, Metric metric,
                double* s) {
  if (metric == Metric::IP) {
    if (rows == nullptr) dots(qb, keys, m, d, s);
    else dots_rows(qb, keys, rows, m, d, s);
    return;
  }
  for (size_t c = 0; c < m; ++c) {
    const float* r = keys + static_cast<size_t>(rows == nullptr ? c : rows[c]) * d;
    double t = 0.0;
    if (metric == Metric::Cosine) {
      for (size_t j = 0; j < d; ++j) t = t + static_cast<double>(r[j]) * static_cast<double>(r[j]);
      const double nk = std::sqrt(t);
      s[c] = (nq == 0.0 || nk == 0.0) ? 0.0 : dot(qb, r, d) / (nq * nk);
    } else {
      for (size_t j = 0; j < d; ++j) {
        const double u = qb[j] - static_cast<double>(r[j]);
        t = t + u * u;
      }
      s[c] = -t;
    }
  }
}

// Per-thread buffers of exact_topk.
struct ExactScratch {
  std::vector<float> qf, a;
  std::vector<double> lo, hi, tmp, s;
  std::vector<uint32_t> cand;
};

// Interval bounds [lo_i, hi_i] on the canonical score of every key i for state qb,
// from the f32 kernel's a_i (dot of f32(qb) and K_i for ip and cosine, squared L2
// distance for l2) and, for cosine, n2_i (the kernel's dot of K_i with itself). The
// bounds and their proof: docs/proof-format.md, "Held keys: proving fast". Returns
// false when no bound holds (values too large for the f32 arithmetic): score all.
bool exact_bounds(const double* qb, size_t d, size_t n, Metric metric, const float* a, const float* n2, double tmax,
                  double nq, ExactScratch& sc) {
  if (d > (size_t{1} << 20) || !(tmax <= 0x1p50)) return false;
  const double dd = static_cast<double>(d), u = 0x1p-24, e = 0x1p-53;
  double S = 0.0, amax = 0.0;
  for (size_t j = 0; j < d; ++j) {
    S = S + std::fabs(qb[j]);
    amax = std::max(amax, std::fabs(qb[j]));
  }
  if (!(S <= 0x1p100) || !(S * tmax <= 0x1p100) || !(amax <= 0x1p50)) return false;
  sc.lo.resize(n);
  sc.hi.resize(n);
  if (metric == Metric::IP) {
    // docs/product-keys.md's bound E, padded for the rounding of lo and hi.
    const double E = 1.25 * (2.0 * (dd + 1.0) * u * S * tmax * (1.0 + 0x1p-20) + (4.0 * dd + 4.0) * 0x1p-126 * (1.0 + tmax + S));
    for (size_t i = 0; i < n; ++i) {
      sc.lo[i] = static_cast<double>(a[i]) - E;
      sc.hi[i] = static_cast<double>(a[i]) + E;
    }
    return true;
  }
  if (metric == Metric::Cosine) {
    if (nq == 0.0) return false;  // every score is 0: nothing to screen
    const double rho = 1.1 * (dd + 1.0) * u, delta = (dd + 1.0) * 0x1p-126;
    const double U = (4.0 * dd + 4.0) * 0x1p-126 * (1.0 + tmax + S);
    const double base = 2.0 * (dd + 1.0) * u * (1.0 + 0x1p-20) + (4.0 * dd + 20.0) * e;
    for (size_t i = 0; i < n; ++i) {
      const double m2 = n2[i];
      const double n2lo = (m2 - delta) / (1.0 + rho);
      const double r = n2lo > 0.0 ? rho + delta / n2lo : 1.0;
      if (!(r <= 0.1)) {
        // A key whose norm the f32 pass cannot bound away from 0: always a candidate.
        sc.lo[i] = -2.0;
        sc.hi[i] = 2.0;
        continue;
      }
      const double den = nq * std::sqrt(n2lo);
      const double c = static_cast<double>(a[i]) / (nq * std::sqrt(m2));
      const double err = 2.0 * (base + U / den + 1.2 * (std::fabs(static_cast<double>(a[i])) / den) * r);
      sc.lo[i] = c - err;
      sc.hi[i] = c + err;
    }
    return true;
  }
  // L2: the kernel's distance l_i bounds the distance D~ of f32(qb), whose square root
  // is within |qb - f32(qb)| <= w of the real sqrt(D).
  const double rho = 1.1 * (dd + 2.0) * u, delta = (3.0 * dd + 3.0) * 0x1p-126;
  const double w = (u * nq * (1.0 + 0x1p-20) + std::sqrt(dd) * 0x1p-126) * (1.0 + 0x1p-30);
  const double pad = 0x1p-30 + (dd + 2.0) * 0x1p-52;
  for (size_t i = 0; i < n; ++i) {
    const double l = a[i];
    const double dlo = std::max(0.0, (l - delta) / (1.0 + rho)), dhi = (l + delta) / (1.0 - rho);
    const double rlo = std::max(0.0, std::sqrt(dlo) * (1.0 - 0x1p-30) - w), rhi = std::sqrt(dhi) * (1.0 + 0x1p-30) + w;
    sc.lo[i] = -(rhi * rhi) * (1.0 + pad);
    sc.hi[i] = -(rlo * rlo) * (1.0 - pad);
  }
  return true;
}

}  // namespace

void exact_topk(const double* q, const float* keys, size_t n, size_t d, size_t B, size_t k, Metric metric, uint32_t* ids,
                double* out_scores, size_t threads, const Kernels* fast, size_t* canonical_rows, const uint32_t* tmax_bits) {
  k = std::min(k, n);
  // Screening pays only when it can leave most keys out.
  const bool screen = fast != nullptr && k * 4 <= n;
  uint32_t tbits = 0x7f800000u;
  if (screen) tbits = tmax_bits != nullptr ? *tmax_bits : abs_max_bits(keys, n * d);
  float tmax_f;
  std::memcpy(&tmax_f, &tbits, sizeof tmax_f);
  const double tmax = tbits >= 0x7f800000u ? HUGE_VAL : static_cast<double>(tmax_f);
  // Cosine: the kernel's squared norm of every key, once for all states.
  std::vector<float> n2;
  if (screen && metric == Metric::Cosine && tmax <= 0x1p50) {
    n2.resize(n);
    for (size_t i = 0; i < n; ++i) n2[i] = fast->dot(keys + i * d, keys + i * d, d);
  }
  constexpr size_t kGroup = 8;  // states screened per kernel call
  std::atomic<size_t> scored_all{0};
  parallel_for(B, threads, [&](size_t lo, size_t hi, size_t) {
    ExactScratch sc;
    size_t scored = 0;
    for (size_t g = lo; g < hi; g += kGroup) {
      const size_t ng = std::min(kGroup, hi - g);
      if (screen) {
        sc.qf.resize(ng * d);
        for (size_t b = 0; b < ng; ++b)
          for (size_t j = 0; j < d; ++j) {
            // A value beyond 2^50 turns screening off for its state (exact_bounds).
            const double v = q[(g + b) * d + j];
            sc.qf[b * d + j] = std::fabs(v) <= 0x1p50 ? static_cast<float>(v) : 0.0f;
          }
        sc.a.resize(ng * n);
        if (metric == Metric::L2) fast->l2_block(sc.qf.data(), ng, keys, n, d, sc.a.data(), n);
        else fast->dot_block(sc.qf.data(), ng, keys, n, d, sc.a.data(), n);
      }
      for (size_t b = g; b < g + ng; ++b) {
        const double* qb = q + b * d;
        double nq = 0.0;
        {
          double t = 0.0;
          for (size_t j = 0; j < d; ++j) t = t + qb[j] * qb[j];
          nq = std::sqrt(t);
        }
        bool screened = false;
        if (screen && exact_bounds(qb, d, n, metric, sc.a.data() + (b - g) * n, n2.data(), tmax, nq, sc)) {
          // theta: the k-th largest lower bound; a key whose upper bound is below it is
          // beaten strictly by k keys.
          sc.tmp.assign(sc.lo.begin(), sc.lo.end());
          std::nth_element(sc.tmp.begin(), sc.tmp.begin() + static_cast<std::ptrdiff_t>(k - 1), sc.tmp.end(),
                           [](double x, double y) { return x > y; });
          const double theta = sc.tmp[k - 1];
          sc.cand.clear();
          for (size_t i = 0; i < n; ++i)
            if (sc.hi[i] >= theta) sc.cand.push_back(static_cast<uint32_t>(i));
          screened = sc.cand.size() * 2 <= n;
        }
        const size_t m = screened ? sc.cand.size() : n;
        sc.s.resize(m);
        score_rows(qb, nq, keys, screened ? sc.cand.data() : nullptr, m, d, metric, sc.s.data());
        const uint32_t* cand = sc.cand.data();
        const std::vector<uint32_t> pos =
            screened ? topk(sc.s.data(), m, k, [cand](uint32_t p) { return cand[p]; }) : topk(sc.s.data(), m, k, [](uint32_t p) { return p; });
        for (size_t t = 0; t < k; ++t) {
          ids[b * k + t] = screened ? cand[pos[t]] : pos[t];
          out_scores[b * k + t] = sc.s[pos[t]];
        }
        scored += m;
      }
    }
    scored_all.fetch_add(scored, std::memory_order_relaxed);
  });
  if (canonical_rows != nullptr) *canonical_rows = scored_all.load();
}

std::vector<float> linear(const float* x, size_t n, size_t d_in, const float* W, size_t m, size_t kp, const float* bias) {
  std::vector<float> y(n * m, 0.0f);
  std::vector<double> q(d_in), s(m);
  const auto ident = [](uint32_t p) { return p; };
  for (size_t i = 0; i < n; ++i) {
    for (size_t t = 0; t < d_in; ++t) q[t] = static_cast<double>(x[i * d_in + t]);
    dots(q.data(), W, m, d_in, s.data());
    float* yi = y.data() + i * m;
    if (bias != nullptr && kp < m)
      for (size_t j = 0; j < m; ++j) yi[j] = bias[j];
    const auto put = [&](size_t j) {
      yi[j] = bias == nullptr ? static_cast<float>(s[j]) : static_cast<float>(s[j] + static_cast<double>(bias[j]));
    };
    if (kp >= m) {
      for (size_t j = 0; j < m; ++j) put(j);
    } else {
      for (const uint32_t j : topk(s.data(), m, kp, ident)) put(j);
    }
  }
  return y;
}

std::vector<float> rmsnorm(const float* x, size_t n, size_t d, const float* gain, float eps) {
  std::vector<float> y(n * d);
  for (size_t i = 0; i < n; ++i) {
    const float* xi = x + i * d;
    double ss = 0.0;
    for (size_t t = 0; t < d; ++t) ss = ss + static_cast<double>(xi[t]) * static_cast<double>(xi[t]);
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + static_cast<double>(eps));
    for (size_t t = 0; t < d; ++t) y[i * d + t] = static_cast<float>((static_cast<double>(xi[t]) * r) * static_cast<double>(gain[t]));
  }
  return y;
}

std::vector<float> glu(const float* gate, const float* up, size_t len) {
  std::vector<float> y(len);
  for (size_t i = 0; i < len; ++i) {
    const double g = gate[i];
    y[i] = static_cast<float>((g / (1.0 + canonical::exp(-g))) * static_cast<double>(up[i]));
  }
  return y;
}

std::vector<float> add(const float* a, const float* b, size_t len) {
  std::vector<float> y(len);
  for (size_t i = 0; i < len; ++i) y[i] = static_cast<float>(static_cast<double>(a[i]) + static_cast<double>(b[i]));
  return y;
}

}  // namespace canonical
}  // namespace gt
