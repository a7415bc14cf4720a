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
// The first pass computes a in integers: u = (pi_t s_t) is quantised to int8 twice (w_0 with
// step sig_0 = max |u_t| / 127, then w_1 of the remainder with its own step), so u = sig_0 w_0 +
// sig_1 w_1 + e and the pass's a' = sig_0 (w_0 . c) + sig_1 (w_1 . c) differs from a by
// e . c, at most E = 127 sum |e_t| (about 2^-14 of 127 sum |u_t|); E, and the f32 rounding of a'
// (2^-21 of its largest possible size), join the bound: hi = a' + B + E'.
//
// select(): one pass over the codes (4 ceil(r / 4) bytes a key instead of the f32 key's 4 dk)
// gives each key its sketch score a and upper end hi = a + B >= q . k; the M keys of best sketch score
// (M = max_scored, else kSketchFirst x k) are scored exactly, and s_k is the k-th best of
// those exact scores. The certificate: when every other key's hi is below s_k, none of them
// can enter the top k (nor tie into it), so the top k of the M is the exact selection. When
// the certificate fails, the exact mode (max_scored 0) also scores every other key whose hi
// reaches s_k (a key with hi < s_k has k keys of exact score >= s_k above it); with max_scored
// the head keeps the top k of its M, possibly missing keys (counted in stats->capped). Each
// exact score is taken by the exact path's kernel and the top k by its rule (better score,
// ties to the lower id), so a certified selection's ids and scores are the exact scan's, bit
// for bit, whatever the basis, rank or data: only the number of keys scored (the cost) depends
// on how well the basis fits the keys. Candidates are scored from a row-major copy of the keys
// (one key's dk floats are adjacent: a few cache lines, where its packed column spans dk
// lines), 16 at a time through the gemm_acc path the scan's 16-column groups take, so each
// score has the scan's bits; a key in the scan's last partial group (its tail path) is scored
// on its packed column as the scan scores it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention.h"
#include "kernel_table.h"

namespace gt {

// Keys scored exactly in select()'s first stage, per unit of k, when max_scored is 0.
constexpr size_t kSketchFirst = 2;
// Keys sampled (evenly strided) per head to fit the basis.
constexpr size_t kSketchSample = 8192;
// A refit (refit()): keys sampled per head for its bases, and earlier keys it encodes per
// append() call once the bases are fitted (one head's basis per call before that).
constexpr size_t kSketchRefitSample = 2048;
constexpr size_t kSketchRefitChunk = 32;
// With rank 0 (auto), per head the smallest r whose basis keeps this share of the sampled
// keys' energy (sum of |k|^2), or with queries observed, of the sum of the keys' and the
// queries' second moments, each scaled to trace 1.
constexpr double kSketchEnergy = 0.99;
// A 4-bit select(): the sketch scores sampled (evenly strided) per head for its threshold.
constexpr size_t kSketchThresholdSample = 4096;
// Queries kept (the latest) for fitting bases (observe()).
constexpr size_t kSketchQuerySample = 2048;

struct SketchSelectStats {
  size_t candidates = 0;  // keys scored exactly (over the heads of one call)
  size_t capped = 0;      // heads whose certified candidates exceeded max_scored (approximate)
};

// The first pass over one block of kn keys (kn <= kDecodeKeyBlock), in integers. A key's codes
// are stored biased (code + 128, as uint8), 16 keys' codes contiguous (one pass streams through
// memory), in groups of four coordinates: codes[((c / 16) * g4 + g) * 64 + (c % 16) * 4 + i]
// for coordinate t = 4 g + i of key c (g < g4; the coordinates past r hold 128). The query comes as two int8 vectors w (w[0..4 g4) and
// w[4 g4..8 g4), zero past r) with scales sig: per key c < kn the exact int32 sums
// n_l = sum_t w_l[t] (codes[..] - 128), then a[c] = float(n_0) * sig[0] + float(n_1) * sig[1]
// and hi[c] = a[c] + ((coef[0] eps[c] + coef[1] rho[c]) * coef[2] + coef[3]), f32, unfused, in
// this order; returns the max over c of a in maxes[0] and of hi in maxes[1] (a NaN hi counts as
// +inf). Integer sums and one fixed order of f32 operations: every version gives each key the
// same a and hi, bit for bit. kSketchScanAVX2 is null where AVX2 was not compiled in (the
// portable sketch_scan_portable runs).
using SketchScan = void (*)(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                            const float* rho, const float* coef, size_t kn, float* a, float* hi, float* maxes);
void sketch_scan_portable(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                          const float* rho, const float* coef, size_t kn, float* a, float* hi, float* maxes);
extern const SketchScan kSketchScanAVX2;
// The same pass with AVX-512 VNNI (key_sketch_avx512.cc: vpdpbusd, 16 keys x 4 coordinates an
// instruction). Null where AVX-512 was not compiled in; run only where cpu_has_avx512_vnni().
extern const SketchScan kSketchScanAVX512;
// The indices j < n (increasing) with v[j] > thr (strict) or !(v[j] < thr) (not strict: NaN
// included) written to out; returns how many. kSketchCollectAVX2 as kSketchScanAVX2.
using SketchCollect = size_t (*)(const float* v, size_t n, float thr, bool strict, uint32_t* out);
size_t sketch_collect_portable(const float* v, size_t n, float thr, bool strict, uint32_t* out);
extern const SketchCollect kSketchCollectAVX2;

// The 4-bit codes of an approximate sketch (KeySketch with bits 4, select()): a coordinate's code
// in -7..7 (step: the sample's largest |p_t| / 7), stored biased by 8 in a nibble, 16 keys'
// codes contiguous in groups of eight coordinates: the byte codes[((c / 16) * g8 + g) * 64 +
// (c % 16) * 4 + i] holds coordinate t = 8 g + i of key c in its low nibble and t = 8 g + 4 + i
// in its high nibble (the coordinates past r hold 8). The query comes as one int8 vector w of
// 8 g8 weights (zero past r) with its step sig: per key c < kn the exact int32 sum
// n = sum_t w[t] (nibble_t - 8), a[c] = float(n) * sig, and maxes[0] the max of a. Every version
// gives each key the same a, bit for bit. Half the bytes of the int8 codes and no norms: no bound,
// so the selection is approximate (the max_scored best by a, scored exactly).
using SketchScan4 = void (*)(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a,
                             float* maxes);
void sketch_scan4_portable(const uint8_t* codes, size_t g8, const int8_t* w, float sig, size_t kn, float* a,
                           float* maxes);
extern const SketchScan4 kSketchScan4AVX2;
extern const SketchScan4 kSketchScan4AVX512;

class KeySketch {
 public:
  // rank: the basis size per head (1..dk), or 0 for auto (kSketchEnergy, then rounded up to a
  // multiple of 4 with bits 8 and of 8 with bits 4, at most dk: a group of codes costs its bytes
  // either way, and the extra coordinates tighten the bound).
  // bits: 8 (int8 codes and the bound: select() is exact, or approximate only past max_scored)
  // or 4 (4-bit codes, no bound: select() needs max_scored and is approximate).
  KeySketch(size_t heads, size_t dk, size_t rank, int bits = 8);
  int bits() const { return bits_; }

  // Fits each head's basis to the keys [0, L) of the packed cache Kp (L >= 1), then encodes
  // them. Once only.
  void fit(const float* Kp, size_t L);
  // Records n queries (n x heads x dk, row-major), the latest kSketchQuerySample kept, for the
  // bases fitted from then on (fit(), refit()). The bound's largest term is |q_perp| rho: a
  // basis fitted to the keys alone leaves out the directions the queries take when these lie
  // outside the keys' subspace (as for the bench's low-rank keys and a trained model's:
  // docs/attention.md), so q_perp is most of q and the bound is loose. Fitted to both second
  // moments, the basis holds both subspaces: q_perp and k_perp are both small. Any orthonormal
  // basis keeps the bound sound; the queries only change the cost (the keys scored).
  void observe(const float* Q, size_t n);
  size_t queries() const { return qn_; }
  // Encodes the keys [length(), L) of Kp (earlier keys must be unchanged). After fit(). While
  // a refit is under way, each call also does a bounded share of it (see refit()), so no call
  // pays for a whole refit; Kp must then hold the keys [0, L) the refit reads.
  void append(const float* Kp, size_t L);
  // Starts an amortised refit: new bases fitted to a sample of the keys [0, L) (L <= length()),
  // one head per later append() call, then every key encoded under them, kSketchRefitChunk
  // earlier keys (and the call's new ones) per call; when done they replace the current bases.
  // Until then select() uses the current ones (a stale basis costs candidates, never
  // exactness). A refit started while one is under way restarts it.
  void refit(size_t L);
  bool refitting() const { return refitting_; }
  // Refits completed.
  size_t refits() const { return refits_; }

  bool fitted() const { return fitted_; }
  size_t length() const { return length_; }
  size_t heads() const { return heads_.size(); }
  size_t dk() const { return dk_; }
  size_t rank(size_t h) const { return heads_[h].r; }
  // Bytes held by the sketch (codes and norms; the bases).
  size_t bytes() const;

  // The exact top-k of each head for the query q (heads x dk) over keys [0, length()) of Kp:
  // ids and scores (heads x k, best first; min(k, length()) valid, then kNoKey / 0).
  // max_scored (0: no limit, else >= k): each head scores exactly the max_scored keys of best
  // sketch score and no more; a head whose certificate then fails may miss keys (an approximate
  // mode, counted in stats->capped). With bits 4, max_scored must be >= k: each head scores its
  // max_scored best by the 4-bit sketch score and keeps their top k (approximate; no
  // certificate, so stats->capped stays 0). The ids' scores are exact either way. The first pass runs with AVX-512 VNNI when kern is the
  // AVX-512 table and the CPU has VNNI, with AVX2 unless kern is the scalar table (the same a and
  // hi either way).
  void select(const float* q, const float* Kp, size_t k, size_t max_scored, const Kernels& kern, uint32_t* ids,
              float* scores, SketchSelectStats* stats) const;
  // A 4-bit sketch's first-pass scores for head h of the query q (heads x dk): length() values into
  // a, the scores select() ranks by (every SIMD level gives these bits). For tests.
  void scores4(const float* q, size_t h, float* a) const;

 private:
  struct Head {
    size_t r = 0;
    std::vector<float> basis;   // r x dk, orthonormal rows
    std::vector<float> step;    // r quantisation steps
    std::vector<uint8_t> codes;  // per block of 256 keys g x 1,024 bytes, as SketchScan (g4) or SketchScan4 (g8) reads them
    std::vector<float> eps, rho;  // per key, each plus delta |k| (see above); empty with bits 4
    std::vector<float> rows;           // the f32 keys row-major (L x dk)
  };
  void fit_basis(Head& hd, size_t h, const float* Kp, size_t L, size_t ns) const;
  void encode(Head& hd, size_t h, const float* Kp, size_t j0, size_t j1) const;
  void score(size_t h, const float* qh, const float* Kp, const uint32_t* cj, size_t n, const Kernels& kern, float* tile,
             float* cs) const;
  size_t select4(size_t h, const float* qh, const float* Kp, size_t k, size_t M, const Kernels& kern, SketchScan4 scan4,
               SketchCollect collect, float* A, float* tile, uint32_t* ids, float* scores) const;
  void pass4(size_t h, const float* qh, SketchScan4 scan4, float* A) const;

  size_t nheads_, dk_, rank_;
  int bits_;
  bool fitted_ = false;
  size_t length_ = 0;
  std::vector<Head> heads_;
  // A refit under way: its heads, how many have bases, how many keys they hold, its sample's L.
  std::vector<Head> next_;
  size_t next_fitted_ = 0, next_length_ = 0, refit_at_ = 0, refits_ = 0;
  // observe()'s ring: up to kSketchQuerySample rows of heads x dk; qn_ held, qnext_ the next slot.
  std::vector<float> queries_;
  size_t qn_ = 0, qnext_ = 0;
  bool refitting_ = false;
};

// Eigen-decomposition of a symmetric n x n matrix A (row-major, overwritten) by cyclic
// Jacobi rotations: eigenvalues (descending) in w, unit eigenvectors as the rows of V.
void symmetric_eigen(std::vector<double>& A, size_t n, std::vector<double>& w, std::vector<double>& V);

}  // namespace gt
