// Sparse optimizers over a SparseTensor: a step reads the gradient of the rows one
// training step touched and writes their new values through the tensor's one write
// path (so the Merkle tree and the indexes follow). Rows not touched do not move,
// nor do their moments.
//
// - Duplicate ids in one step are summed first, in order of appearance (PyTorch's
//   coalesce); a listed row whose gradient is exactly zero still counts as touched.
// - Adam bias correction is per row by default: each row counts its own updates
//   (FBGEMM's row counter), so a rarely touched row is not over-stepped. The
//   alternative is PyTorch SparseAdam's one global step per step() call.
// - Weight decay is decoupled (AdamW) and lazy with catch-up: the optimizer keeps
//   the running product of (1 - lr_s * wd) over all steps s, and a row touched now
//   is first multiplied by that product since its last touch. A row's decay
//   therefore does not depend on how often it is touched, and equals dense AdamW's
//   decay over the same steps (with any lr schedule). Between touches the decay
//   is owed, not applied: a forward pass reads the undecayed value.
// - A step is all or nothing: new values, moments, counters and the decay log are
//   computed aside and checked (every one finite, no counter wrapping), the values are
//   written (which validates them again), and only then is the state committed. A
//   finite gradient whose square overflows v is refused like a non-finite one
//   (NonFinite): such a state could not be written into an update proof.
// - Every step is reproducible bit for bit by lib/canonical-optim.ts (an update
//   proof's verifier re-runs it): the per-row scalars use the canonical exp, log1p
//   and integer power (native/src/core/canonical.h), the per-element math is plain f32
//   + - * / sqrt in a fixed order, built without fused multiply-add.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparse_tensor.h"

namespace gt {

enum class OptimizerKind { SGD, Adam };

struct OptimizerParams {
  OptimizerKind kind = OptimizerKind::Adam;
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  bool row_step = true;  // Adam: per-row bias correction (false: one global step)
};

// Throws gt::Error when a parameter is out of range.
void check_optimizer_params(const OptimizerParams& p);

// Optimizer state kept outside the optimizer (a file mapping): m and v (rows * dim
// floats each; may be null for SGD), per-row update counts and decay marks (rows
// entries each), and the two scalars that continue from a checkpoint.
struct ExternalOptimizerState {
  float* m = nullptr;
  float* v = nullptr;
  uint32_t* row_steps = nullptr;
  double* decay_mark = nullptr;
  uint64_t global_step = 0;
  double log_decay = 0.0;
};

class SparseOptimizer : public WriteListener {
 public:
  SparseOptimizer(SparseTensor& tensor, const OptimizerParams& params);
  // Uses `state` in place (nothing is allocated per row); such an optimizer cannot
  // follow appends. Adam needs m and v.
  SparseOptimizer(SparseTensor& tensor, const OptimizerParams& params, const ExternalOptimizerState& state);
  ~SparseOptimizer() override;
  SparseOptimizer(const SparseOptimizer&) = delete;
  SparseOptimizer& operator=(const SparseOptimizer&) = delete;

  const OptimizerParams& params() const { return params_; }
  // Changes the learning rate from the next step on (schedules).
  void set_lr(float lr);
  uint64_t steps() const { return global_step_; }

  // The input checks step() makes before computing anything: ids in range, gradients
  // finite. Throws gt::Error.
  void check_step(const uint32_t* ids, size_t count, const float* grads) const;

  // One step: rows `ids` (count of them, repeats allowed) with gradients `grads`
  // (count * dim floats). Returns the number of distinct rows touched.
  size_t step(const uint32_t* ids, size_t count, const float* grads);

  // Puts rows `ids` (ascending, distinct) back to the given values and state, and the
  // global scalars to (global_step, log_decay): undoes steps whose proof was not
  // accepted. Values must be finite and log_decay finite and <= 0 (checked first, all
  // or nothing); the rows' state is put back as given. Throws gt::Error.
  void restore(const uint32_t* ids, size_t count, const float* values, const float* m, const float* v,
               const uint32_t* row_steps, const double* marks, uint64_t global_step, double log_decay);

  // Copies the state of rows `ids`: m and v (count * dim each; zeros for SGD), each
  // row's update count and its decay mark (the log-decay sum at its last touch).
  void state(const uint32_t* ids, size_t count, float* m, float* v, uint32_t* row_steps, double* marks) const;
  // Sum over all steps so far of log(1 - lr_s * wd) (canonical log1p).
  double log_decay() const { return log_decay_; }

  void on_rows_changed(const uint32_t*, size_t) override {}
  void on_rows_appended(size_t first, size_t count) override;

 private:
  SparseTensor& tensor_;
  OptimizerParams params_;
  uint64_t global_step_ = 0;
  double log_decay_ = 0.0;           // sum over steps of log(1 - lr_s * wd)
  bool external_ = false;
  std::vector<float> m_store_, v_store_;  // owned backing (not external)
  std::vector<uint32_t> row_steps_store_;
  std::vector<double> decay_mark_store_;
  float* m_ = nullptr;  // Adam moments, rows * dim (null for SGD)
  float* v_ = nullptr;
  uint32_t* row_steps_ = nullptr;  // updates per row
  double* decay_mark_ = nullptr;   // log_decay_ at each row's last touch
  void point_at_store();
};

}  // namespace gt
