// A certified first pass for decode top-k (docs/attention.md, "The key sketch").
//
// Per head, the keys of a decode cache (packed block-major as attention.h's decode layout)
// get a compact sketch: an orthonormal basis P (r x dk, the top r eigenvectors of the keys'
// second moment, fitted once), each key's coordinates p = P k quantised to int8 with one
// step per coordinate (c_t = round(p_t / s_t), clamped to +-127), and two norms per key:
//   eps = |p - s.c| + |P k_perp| + delta |k|   (the quantisation error; P's rounding)
//   rho = |k_perp| + delta |k|, k_perp = k - P^T p   (what the basis leaves out)
// For a query q with pi = P q and q_perp = q - P^T pi, q . k = pi . (s.c) + pi . (p - s.c)
// + q_perp . k_perp + (P^T pi) . k_perp, so the sketch's score a = sum_t (pi_t s_t) c_t is
// within B = |pi| eps + |q_perp| rho of the exact one: the terms delta |k| add at least
// delta |q| |k| (|q| <= |pi| + |q_perp|), delta = 2^-12 covering every f32 rounding of both
// sides (each is below (dk + r) 2^-24 |q| |k|, > 10x smaller).
//
// select(): one pass over the codes (r bytes a key instead of the f32 key's 4 dk) gives
// per key [a - B, a + B]; lambda = the k-th largest lower end; a key whose upper end is below
// lambda has k keys above it and cannot be in the top k. The rest (the candidates) are scored
// by the exact path's kernel on their packed f32 column and selected by its rule (keys in id
// order, a score enters above the k-th; ties to the lower id), so the selection and scores
// are the exact scan's, bit for bit, whatever the basis, rank or data: only the number of
// candidates (the cost) depends on how well the basis fits the keys. Candidates are scored from
// a row-major copy of the keys (one key's dk floats are adjacent: a few cache lines, where its
// packed column spans dk lines), 16 at a time through the gemm_acc path the scan's 16-column
// groups take, so each score has the scan's bits; a key in the scan's last partial group (its
// tail path) is scored on its packed column as the scan scores it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "kernel_table.h"

namespace gt {

// Keys sampled (evenly strided) per head to fit the basis.
constexpr size_t kSketchSample = 8192;
// With rank 0 (auto), per head the smallest r whose basis keeps this share of the sampled
// keys' energy (sum of |k|^2).
constexpr double kSketchEnergy = 0.99;

struct SketchSelectStats {
  size_t candidates = 0;  // keys scored exactly (over the heads of one call)
  size_t capped = 0;      // heads whose certified candidates exceeded max_scored (approximate)
};

// The first pass over one block of kn keys (kn <= kDecodeKeyBlock): per key c < kn the sketch
// score a[c] = sum over t < r of u[t] * codes[t * kDecodeKeyBlock + c], its bound
// B = (coef[0] eps[c] + coef[1] rho[c]) * coef[2], lo[c] = a - B, hi[c] = a + B;
// returns max over c of lo in maxes[0] and of hi in maxes[1]. kSketchScanAVX2 is null where
// AVX2 was not compiled in (the portable sketch_scan_portable runs).
using SketchScan = void (*)(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho,
                            const float* coef, size_t kn, float* a, float* lo, float* hi, float* maxes);
void sketch_scan_portable(const int8_t* codes, size_t r, const float* u, const float* eps, const float* rho,
                          const float* coef, size_t kn, float* a, float* lo, float* hi, float* maxes);
extern const SketchScan kSketchScanAVX2;

class KeySketch {
 public:
  // rank: the basis size per head (1..dk), or 0 for auto (kSketchEnergy).
  KeySketch(size_t heads, size_t dk, size_t rank);

  // Fits each head's basis to the keys [0, L) of the packed cache Kp (L >= 1), then encodes
  // them. Once only.
  void fit(const float* Kp, size_t L);
  // Encodes the keys [length(), L) of Kp (earlier keys must be unchanged). After fit().
  void append(const float* Kp, size_t L);

  bool fitted() const { return fitted_; }
  size_t length() const { return length_; }
  size_t heads() const { return heads_.size(); }
  size_t dk() const { return dk_; }
  size_t rank(size_t h) const { return heads_[h].r; }
  // Bytes held by the sketch (codes and norms; the bases).
  size_t bytes() const;

  // The exact top-k of each head for the query q (heads x dk) over keys [0, length()) of Kp:
  // ids and scores (heads x k, best first; min(k, length()) valid, then kNoKey / 0).
  // max_scored (0: no limit, else >= k): a head whose certified candidates are more than this
  // scores only the max_scored best of them by sketch score (then the selection may miss keys:
  // an approximate mode, counted in stats->capped). The first pass runs with AVX2 unless kern
  // is the scalar table.
  void select(const float* q, const float* Kp, size_t k, size_t max_scored, const Kernels& kern, uint32_t* ids,
              float* scores, SketchSelectStats* stats) const;

 private:
  struct Head {
    size_t r = 0;
    std::vector<float> basis;   // r x dk, orthonormal rows
    std::vector<float> step;    // r quantisation steps
    std::vector<int8_t> codes;  // block-major: codes[(b * r + t) * kDecodeKeyBlock + c]
    std::vector<float> eps, rho;  // per key, each plus delta |k| (see above)
    std::vector<float> rows;           // the f32 keys row-major (L x dk)
  };
  void encode(size_t h, const float* Kp, size_t j0, size_t j1);

  size_t nheads_, dk_, rank_;
  bool fitted_ = false;
  size_t length_ = 0;
  std::vector<Head> heads_;
};

// Eigen-decomposition of a symmetric n x n matrix A (row-major, overwritten) by cyclic
// Jacobi rotations: eigenvalues (descending) in w, unit eigenvectors as the rows of V.
void symmetric_eigen(std::vector<double>& A, size_t n, std::vector<double>& w, std::vector<double>& V);

}  // namespace gt
