#include "optimizer.h"

#include "canonical.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

namespace gt {

void check_optimizer_params(const OptimizerParams& p) {
  auto finite = [](float x) { return std::isfinite(x); };
  if (!finite(p.lr) || p.lr < 0.0f) throw Error(ErrorCode::OutOfRange, "lr must be a finite number >= 0");
  if (!finite(p.weight_decay) || p.weight_decay < 0.0f)
    throw Error(ErrorCode::OutOfRange, "weightDecay must be a finite number >= 0");
  if (!(static_cast<double>(p.lr) * p.weight_decay < 1.0))
    throw Error(ErrorCode::OutOfRange, "lr * weightDecay must be < 1");
  if (p.kind == OptimizerKind::Adam) {
    if (!(p.beta1 >= 0.0f && p.beta1 < 1.0f)) throw Error(ErrorCode::OutOfRange, "beta1 must be in [0, 1)");
    if (!(p.beta2 >= 0.0f && p.beta2 < 1.0f)) throw Error(ErrorCode::OutOfRange, "beta2 must be in [0, 1)");
    if (!finite(p.eps) || p.eps <= 0.0f) throw Error(ErrorCode::OutOfRange, "eps must be a finite number > 0");
  }
}

SparseOptimizer::SparseOptimizer(SparseTensor& tensor, const OptimizerParams& params)
    : tensor_(tensor), params_(params) {
  check_optimizer_params(params_);
  const size_t n = tensor_.size(), d = tensor_.dim();
  if (params_.kind == OptimizerKind::Adam) {
    m_store_.assign(n * d, 0.0f);
    v_store_.assign(n * d, 0.0f);
  }
  row_steps_store_.assign(n, 0);
  decay_mark_store_.assign(n, 0.0);
  point_at_store();
  tensor_.add_listener(this);
}

SparseOptimizer::SparseOptimizer(SparseTensor& tensor, const OptimizerParams& params,
                                 const ExternalOptimizerState& state)
    : tensor_(tensor), params_(params), global_step_(state.global_step), log_decay_(state.log_decay), external_(true) {
  check_optimizer_params(params_);
  if (params_.kind == OptimizerKind::Adam && (state.m == nullptr || state.v == nullptr))
    throw Error(ErrorCode::InvalidArgument, "Adam needs stored moments (m, v), which this state lacks");
  if (state.row_steps == nullptr || state.decay_mark == nullptr)
    throw Error(ErrorCode::InvalidArgument, "the optimizer state lacks row counters or decay marks");
  if (!std::isfinite(state.log_decay) || state.log_decay > 0.0)
    throw Error(ErrorCode::InvalidArgument, "the stored decay log must be finite and <= 0");
  if (params_.kind == OptimizerKind::Adam) {
    m_ = state.m;
    v_ = state.v;
  }
  row_steps_ = state.row_steps;
  decay_mark_ = state.decay_mark;
  tensor_.add_listener(this);
}

void SparseOptimizer::point_at_store() {
  m_ = m_store_.empty() ? nullptr : m_store_.data();
  v_ = v_store_.empty() ? nullptr : v_store_.data();
  row_steps_ = row_steps_store_.data();
  decay_mark_ = decay_mark_store_.data();
}

SparseOptimizer::~SparseOptimizer() { tensor_.remove_listener(this); }

void SparseOptimizer::set_lr(float lr) {
  OptimizerParams p = params_;
  p.lr = lr;
  check_optimizer_params(p);
  params_ = p;
}

void SparseOptimizer::on_rows_appended(size_t first, size_t count) {
  // A file-backed tensor refuses growth before it happens (its storage is fixed).
  if (external_) throw Error(ErrorCode::Unsupported, "optimizer state stored in a file cannot follow appends");
  const size_t d = tensor_.dim();
  if (params_.kind == OptimizerKind::Adam) {
    m_store_.resize((first + count) * d, 0.0f);
    v_store_.resize((first + count) * d, 0.0f);
  }
  row_steps_store_.resize(first + count, 0);
  decay_mark_store_.resize(first + count, log_decay_);  // a new row owes no earlier decay
  point_at_store();
}

void SparseOptimizer::check_step(const uint32_t* ids, size_t count, const float* grads) const {
  tensor_.check_ids(ids, count, "ids");
  const size_t n = count * tensor_.dim();
  const size_t bad = first_non_finite(grads, n);
  if (bad != n) throw Error(ErrorCode::NonFinite, "grads[" + std::to_string(bad) + "] is not finite");
}

namespace {

// A step's new values and moments are built in full before any is committed. A fresh
// buffer of a dense layer's size is mapped and page-faulted anew by every step, which
// costs more than the Adam arithmetic; each thread keeps its buffers up to kKeep floats
// each (larger steps allocate, and free when the next step is smaller).
struct StepScratch {
  static constexpr size_t kKeep = size_t{1} << 22;  // 16 MiB per buffer
  std::vector<float> w, m, v;
  float* take(std::vector<float>& buf, size_t count) {
    if (buf.size() < count || (buf.size() > kKeep && count <= kKeep)) {
      std::vector<float>().swap(buf);
      buf.resize(count);
    }
    return buf.data();
  }
};

StepScratch& step_scratch() {
  thread_local StepScratch scratch;
  return scratch;
}

}  // namespace

size_t SparseOptimizer::step(const uint32_t* ids, size_t count, const float* grads) {
  check_step(ids, count, grads);
  const size_t d = tensor_.dim();

  // Coalesce: distinct ids ascending; each one's gradients summed in order of appearance.
  // Ids already strictly ascending (a dense layer's rows, the usual case) are their own
  // coalesced form: the ids and gradients are read in place.
  bool ascending = true;
  for (size_t i = 1; i < count && ascending; ++i) ascending = ids[i] > ids[i - 1];
  std::vector<uint32_t> rows_buf;
  std::vector<float> g_buf;
  if (!ascending) {
    std::vector<uint32_t> order(count);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return ids[a] < ids[b]; });
    rows_buf.reserve(count);
    g_buf.reserve(count * d);
    for (size_t i = 0; i < count; ++i) {
      const uint32_t src = order[i];
      const float* gi = grads + static_cast<size_t>(src) * d;
      if (rows_buf.empty() || rows_buf.back() != ids[src]) {
        rows_buf.push_back(ids[src]);
        g_buf.insert(g_buf.end(), gi, gi + d);
      } else {
        float* acc = g_buf.data() + (rows_buf.size() - 1) * d;
        for (size_t j = 0; j < d; ++j) acc[j] += gi[j];
      }
    }
  }
  const uint32_t* rows = ascending ? ids : rows_buf.data();
  const float* g = ascending ? grads : g_buf.data();
  const size_t nr = ascending ? count : rows_buf.size();

  const OptimizerParams& p = params_;
  const double new_log_decay =
      p.weight_decay > 0.0f ? log_decay_ + canonical::log1p_neg(-static_cast<double>(p.lr) * p.weight_decay) : log_decay_;
  const bool adam = p.kind == OptimizerKind::Adam;
  // The new values and moments, built whole before anything is committed, in buffers
  // this thread keeps (StepScratch).
  StepScratch& scratch = step_scratch();
  float* w = scratch.take(scratch.w, nr * d);
  float* m = adam ? scratch.take(scratch.m, nr * d) : nullptr;
  float* v = adam ? scratch.take(scratch.v, nr * d) : nullptr;
  for (size_t r = 0; r < nr; ++r) {
    const uint32_t id = rows[r];
    const float* cur = tensor_.row(id);
    const float* gr = g + r * d;
    float* wr = w + r * d;
    const float decay = p.weight_decay > 0.0f ? static_cast<float>(canonical::exp(new_log_decay - decay_mark_[id])) : 1.0f;
    if (!adam) {
      for (size_t j = 0; j < d; ++j) wr[j] = cur[j] * decay - p.lr * gr[j];
      continue;
    }
    const uint64_t t = p.row_step ? uint64_t{row_steps_[id]} + 1 : global_step_ + 1;
    const double bc1 = 1.0 - canonical::powi(static_cast<double>(p.beta1), t);
    const double bc2 = 1.0 - canonical::powi(static_cast<double>(p.beta2), t);
    const float step_size = static_cast<float>(p.lr / bc1);
    const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const float* m0 = m_ + static_cast<size_t>(id) * d;
    const float* v0 = v_ + static_cast<size_t>(id) * d;
    float* mr = m + r * d;
    float* vr = v + r * d;
    for (size_t j = 0; j < d; ++j) {
      mr[j] = p.beta1 * m0[j] + (1.0f - p.beta1) * gr[j];
      vr[j] = p.beta2 * v0[j] + (1.0f - p.beta2) * gr[j] * gr[j];
      const float denom = std::sqrt(vr[j]) * inv_sqrt_bc2 + p.eps;
      wr[j] = cur[j] * decay - step_size * mr[j] / denom;
    }
  }
  // The whole new state must be finite before anything is committed: a finite gradient can
  // still overflow v (g^2), m, or the decay log, and a state that is not finite cannot be
  // written into an update proof (nor opened again from a checkpoint). Counters must not wrap.
  if (!std::isfinite(new_log_decay)) throw Error(ErrorCode::NonFinite, "the decay log would not be finite");
  if (adam) {
    const size_t bad_m = first_non_finite(m, nr * d);
    if (bad_m != nr * d)
      throw Error(ErrorCode::NonFinite, "the step's new m of row " + std::to_string(rows[bad_m / d]) + " is not finite");
    const size_t bad_v = first_non_finite(v, nr * d);
    if (bad_v != nr * d)
      throw Error(ErrorCode::NonFinite, "the step's new v of row " + std::to_string(rows[bad_v / d]) +
                                            " is not finite (the gradient squared overflows)");
  }
  const size_t bad_w = first_non_finite(w, nr * d);
  if (bad_w != nr * d)
    throw Error(ErrorCode::NonFinite, "the step's new value of row " + std::to_string(rows[bad_w / d]) + " is not finite");
  for (size_t r = 0; r < nr; ++r)
    if (row_steps_[rows[r]] == UINT32_MAX)
      throw Error(ErrorCode::OutOfRange, "row " + std::to_string(rows[r]) + " has taken 2^32 - 1 steps; its counter is full");
  // Writes (validating again); throws before anything changed.
  tensor_.set(rows, nr, w);

  for (size_t r = 0; r < nr; ++r) {
    const uint32_t id = rows[r];
    if (adam) {
      std::copy(m + r * d, m + (r + 1) * d, m_ + static_cast<size_t>(id) * d);
      std::copy(v + r * d, v + (r + 1) * d, v_ + static_cast<size_t>(id) * d);
    }
    ++row_steps_[id];
    decay_mark_[id] = new_log_decay;
  }
  ++global_step_;
  log_decay_ = new_log_decay;
  return nr;
}

void SparseOptimizer::restore(const uint32_t* ids, size_t count, const float* values, const float* m, const float* v,
                              const uint32_t* row_steps, const double* marks, uint64_t global_step, double log_decay) {
  tensor_.check_ids(ids, count, "ids");
  for (size_t i = 1; i < count; ++i)
    if (ids[i] <= ids[i - 1]) throw Error(ErrorCode::InvalidArgument, "restore: ids must be ascending and distinct");
  const size_t d = tensor_.dim();
  const bool adam = params_.kind == OptimizerKind::Adam;
  if (!std::isfinite(log_decay) || log_decay > 0.0) throw Error(ErrorCode::OutOfRange, "restore: the decay log must be finite and <= 0");
  // Values first (validated, all or nothing), then the state as given, which cannot fail. The
  // state is not validated: it is put back as it was (a snapshot of this tensor).
  tensor_.set(ids, count, values);
  for (size_t i = 0; i < count; ++i) {
    const size_t off = static_cast<size_t>(ids[i]) * d;
    if (adam) {
      std::copy(m + i * d, m + (i + 1) * d, m_ + off);
      std::copy(v + i * d, v + (i + 1) * d, v_ + off);
    }
    row_steps_[ids[i]] = row_steps[i];
    decay_mark_[ids[i]] = marks[i];
  }
  global_step_ = global_step;
  log_decay_ = log_decay;
}

void SparseOptimizer::state(const uint32_t* ids, size_t count, float* m, float* v, uint32_t* row_steps,
                            double* marks) const {
  tensor_.check_ids(ids, count, "ids");
  const size_t d = tensor_.dim();
  for (size_t i = 0; i < count; ++i) {
    const size_t off = static_cast<size_t>(ids[i]) * d;
    if (params_.kind == OptimizerKind::Adam) {
      std::copy(m_ + off, m_ + off + d, m + i * d);
      std::copy(v_ + off, v_ + off + d, v + i * d);
    } else {
      std::fill(m + i * d, m + (i + 1) * d, 0.0f);
      std::fill(v + i * d, v + (i + 1) * d, 0.0f);
    }
    row_steps[i] = row_steps_[ids[i]];
    marks[i] = decay_mark_[ids[i]];
  }
}

}  // namespace gt
