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

}  // namespace canonical
}  // namespace gt
