// The prover's C++ mirror of parts of the canonical training step (docs/step-proofs.md,
// "What proving a step costs"): the same bits as lib/verify (kinds/hopfield.ts's
// backward, canonical.ts's coptimizerStep), every f64 sum in the TypeScript's order, no
// fused multiply-add (-ffp-contract=off). The verifier never loads these; the model
// tier injects them into its own run of computeStep, and tests compare them bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "metric.h"

namespace gt {
namespace canonical {

// The shapes and rows of one HopfieldLookup layer's canonical backward (not product
// keys). Per input b and stage si, slot = b * S + si, entry e = slot * k + i:
//   q (B*S*d), s and a (B*S*k): what the training forward kept;
//   key_row[e]: the row of `keys` (row length d) of entry e; key_acc[e]: the row of
//   `acc_keys` (length d) that accumulates its gradient;
//   value_row[b*k + i], value_acc[b*k + i]: the same for the values at the last stage
//   (row length dv). acc_keys and acc_values may be one buffer (keys and values one
//   tensor); every row index is checked by the caller.
struct HopfieldBackward {
  size_t B, k, d, dv, S;
  double beta;
  Metric sim;
  bool normalize;
  const float* x;       // B x d
  const float* dy;      // B x dv
  const double* q;      // B*S x d
  const double* s;      // B*S x k
  const double* a;      // B*S x k
  const float* keys;    // rows of d
  const float* values;  // rows of dv
  const uint32_t* key_row;
  const uint32_t* key_acc;
  const uint32_t* value_row;
  const uint32_t* value_acc;
  double* acc_keys;
  double* acc_values;
  float* dx;  // B x d (out)
};

// lib/verify/kinds/hopfield.ts hopfieldForward with `keep` (trainForward; not product
// keys, not held keys): per input its first state (cstate), then per stage the
// similarities to its k key rows (csimilarity), their softmax (csoftmax) and the mix
// (cmix) of the key rows (earlier stages: the next state) or of the value rows (the last:
// y, rounded to f32). Fills q, s, a as HopfieldBackward takes them, and y (B x dv).
struct HopfieldForward {
  size_t B, k, d, dv, S;
  double beta;
  Metric sim;
  bool normalize;
  const float* x;
  const float* keys;
  const float* values;
  const uint32_t* key_row;    // B*S*k
  const uint32_t* value_row;  // B*k
  float* y;
  double* q;
  double* s;
  double* a;
};
void hopfield_forward(const HopfieldForward& p);

// lib/verify/kinds/hopfield.ts hopfieldBackward: dx, and every touched accumulator row
// added to in the same order.
void hopfield_backward(const HopfieldBackward& p);

// lib/verify/canonical.ts coptimizerStep over `count` rows of d.
struct OptimizerStep {
  bool adam, row_step;
  float lr, beta1, beta2, eps, weight_decay;
  double global_step;  // an integer
  double log_decay;
  size_t count, d;
  const float* rows;
  const float* grads;
  const float* m;  // count x d (adam) or nullptr
  const float* v;
  const uint32_t* steps;
  const double* marks;
  float* out_rows;
  float* out_m;  // nullptr for SGD
  float* out_v;
  uint32_t* out_steps;
  double* out_marks;
};
// Returns the new decay log.
double optimizer_step(const OptimizerStep& p);


// ---- The language-model kinds (lib/verify/kinds/{linear,attention,rmsnorm,glu}.ts). ----
// Values are not checked for finiteness: the TypeScript takes any, and NaN and
// infinities go through the same operations in the same order (a NaN's sign and
// payload aside). Every size and index is checked by the binding.

// lib/verify/canonical.ts ctopk over positions 0..n-1 (ids = positions): the best
// min(k, n) by score descending, ties to the lower position, in rank order, by the
// TypeScript's own sorted insertion (a NaN score never beats another and is kept only
// while fewer than k are held: the same list as the TypeScript's). Returns the count.
size_t topk_ranked(const double* s, size_t n, size_t k, uint32_t* top);

// clinear (cprojection without a bias) with `kept`: per row of x (n x d_in), s_j =
// cdot(x_i, W_j) for the m rows of W; kp >= m: y_ij = f32(s_j (+ b_j)); else y_ij =
// f32(b_j) (0 without a bias) but for the top kp (topk_ranked), f32(s_j (+ b_j)), and
// kept (n x kp, nullptr when kp >= m) gets each row's kept columns ascending.
void linear_train(const float* x, size_t n, size_t d_in, const float* W, size_t m, size_t kp, const float* bias, float* y,
                  uint32_t* kept);

// The backward of one projection y = input W^T (+ b) (kinds/linear.ts backward,
// kinds/attention.ts projectionBackward): for each row i ascending, each kept column c
// ascending (every c when kept is nullptr) with g = dP[i m + c]:
//   d_in[i, t] = d_in[i, t] + g W[c, t] (t ascending; d_in is added to, not cleared);
//   acc_w[c, t] = acc_w[c, t] + g input[i, t] (acc_w: m rows of d_in, only kept columns'
//   rows are touched);
// and, with acc_b (m values), acc_b[j] = acc_b[j] + dP[i m + j] for every i, j (a bias
// receives every column: an unkept y_ij is b_j). Per accumulator value the additions
// run in the TypeScript's order (i ascending), so the bits are the same.
template <typename G>
void projection_backward(const float* input, size_t n, size_t d_in, const float* W, size_t m, size_t kp, const uint32_t* kept,
                         const G* dP, double* d_in_acc, double* acc_w, double* acc_b);

// cattention with `keep` (kinds/attention.ts attendKeep): per head h and query i, the
// scores s_j = cdot of the head's slices of q_i and k_j (j <= i when causal), the top
// min(k_top, m) by topk_ranked, csoftmax(scale) over them, cmix of the v_j slices into
// o (n x D f32). top[(h n + i) kk + r] (kk = min(k_top, n)) gets the r-th selected
// position (0xffffffff past a causal query's count), weights its f64 weight (0 past it).
struct AttentionCore {
  size_t n, heads, D, k_top;
  bool causal;
  double scale;  // an f32 value
  const float* q;
  const float* k;
  const float* v;
  float* o;
  uint32_t* top;
  double* weights;
};
void attention_core(const AttentionCore& p);

// kinds/attention.ts attentionBackward's middle: from dO (n x D f64) through the kept
// selection and weights into dQ, dK, dV (n x D f64, added to; the caller zeroes them),
// heads then queries ascending, in the TypeScript's order.
struct AttentionCoreBackward {
  size_t n, heads, D, k_top;
  bool causal;
  double scale;
  const float* q;
  const float* k;
  const float* v;
  const uint32_t* top;
  const double* weights;
  const double* dO;
  double* dQ;
  double* dK;
  double* dV;
};
void attention_core_backward(const AttentionCoreBackward& p);

// kinds/rmsnorm.ts backward: dx (n x d f32) and the gain's accumulator row (d f64, added to).
void rmsnorm_backward(const float* x, const float* dy, const float* gain, size_t n, size_t d, float eps, float* dx,
                      double* acc_gain);

// kinds/glu.ts backward: dgate and dup (len f32 each).
void glu_backward(const float* gate, const float* up, const float* dy, size_t len, float* dgate, float* dup);

// kinds/memory.ts memoryBackward (the product-key memory layer; the selections are the
// proof's, beta is not trained). Per input b, per head h (entry e = (b H + h) k + i):
// value_row[e] / value_acc[e]: the row of `values` (rows of dv) and of `acc_values`;
// t1_row[e] / t1_acc[e]: the row of `t1` (rows of d1: every head's first sub-key table,
// one after another) and of `acc_t1`; t2_* the same for the second tables (rows of
// dk - d1). W (hdk x d_in, hdk = H dk) is the query weight, acc_w its accumulator rows
// (added to); dx (B x d_in f32, out). Every index is checked by the caller.
struct MemoryBackward {
  size_t B, H, k, dv, d_in, dk, d1;
  double beta;  // an f32 value
  const float* x;
  const float* dy;
  const float* q;   // B x hdk (the forward's f32 queries)
  const double* a;  // B H k
  const float* values;
  const uint32_t* value_row;
  const uint32_t* value_acc;
  double* acc_values;
  const float* t1;
  const uint32_t* t1_row;
  const uint32_t* t1_acc;
  double* acc_t1;
  const float* t2;
  const uint32_t* t2_row;
  const uint32_t* t2_acc;
  double* acc_t2;
  const float* W;
  double* acc_w;
  float* dx;
};
void memory_backward(const MemoryBackward& p);

}  // namespace canonical
}  // namespace gt
