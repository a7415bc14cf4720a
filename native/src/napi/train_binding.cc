// NativeTensor methods for training: the sparse optimizer living beside the values,
// and the dense Hopfield baseline (forward and backward off the JavaScript thread).
#include <cmath>
#include <string>
#include <vector>

#include "../core/dense_hopfield.h"
#include "../core/product_keys.h"
#include "../core/kernels.h"
#include "napi_util.h"
#include "tensor_binding.h"
#include "../core/tensor_file.h"
#include "tensor_worker.h"

namespace gt {

namespace {

OptimizerParams optimizer_params(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsObject())
    throw Error(ErrorCode::InvalidArgument, "optimizer options must be an object");
  Napi::Object o = info[index].As<Napi::Object>();
  OptimizerParams p;
  auto num = [&](const char* key, double fallback) -> float {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return static_cast<float>(fallback);
    if (!v.IsNumber()) throw Error(ErrorCode::InvalidArgument, std::string(key) + " must be a number");
    const double x = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(x)) throw Error(ErrorCode::OutOfRange, std::string(key) + " must be finite");
    return static_cast<float>(x);
  };
  Napi::Value kind = o.Get("kind");
  const std::string k = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : "";
  if (k == "adam") p.kind = OptimizerKind::Adam;
  else if (k == "sgd") p.kind = OptimizerKind::SGD;
  else throw Error(ErrorCode::InvalidArgument, "optimizer kind must be 'adam' or 'sgd'");
  p.lr = num("lr", k == "adam" ? 1e-3 : 1e-2);
  p.beta1 = num("beta1", 0.9);
  p.beta2 = num("beta2", 0.999);
  p.eps = num("eps", 1e-8);
  p.weight_decay = num("weightDecay", 0.0);
  Napi::Value bias = o.Get("biasCorrection");
  const std::string b = bias.IsUndefined() ? "row" : (bias.IsString() ? bias.As<Napi::String>().Utf8Value() : "");
  if (b == "row") p.row_step = true;
  else if (b == "global") p.row_step = false;
  else throw Error(ErrorCode::InvalidArgument, "biasCorrection must be 'row' or 'global'");
  check_optimizer_params(p);
  return p;
}

float finite_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (index >= info.Length() || !info[index].IsNumber())
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a number");
  const double x = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x)) throw Error(ErrorCode::OutOfRange, std::string(name) + " must be finite");
  return static_cast<float>(x);
}

// A dense Hopfield job over keys (the owner) and values (a second tensor, also held
// busy). Inputs are copied, so the caller's arrays may change meanwhile.
class DenseHopfieldWorker : public TensorWorker {
 public:
  DenseHopfieldWorker(Napi::Env env, TensorBinding* keys, Napi::Object keys_obj, const SparseTensor& kt,
                      TensorBinding* values, Napi::Object values_obj, const SparseTensor& vt)
      : TensorWorker(env, "ghost-tensor:dense-hopfield", keys, keys_obj, kt),
        values_(values),
        vstorage_(vt.storage()),
        vguard_(vt.read_guard()),
        dv_(vt.dim()) {
    values_ref_ = Napi::Persistent(values_obj);
    values_->enter_busy();
  }
  ~DenseHopfieldWorker() override { values_->leave_busy(); }

  DenseHopfieldArgs args;
  bool backward = false;
  std::vector<float> q, y, lse, dy, dq, dk, dv;
  double dbeta = 0.0;

 private:
  void Run() override {
    check_all_rows();  // dense: every key and value row
    if (vguard_ != nullptr) vguard_->check_all();
    args.Q = q.data();
    args.K = storage_->data();
    args.V = vstorage_->data();
    if (!backward) {
      y.resize(args.B * dv_);
      lse.resize(args.B);
      dense_hopfield_forward(args, y.data(), lse.data());
    } else {
      dq.resize(args.B * args.d);
      dk.resize(args.N * args.d);
      dv.resize(args.N * dv_);
      dense_hopfield_backward(args, y.data(), lse.data(), dy.data(), dq.data(), dk.data(), dv.data(), &dbeta);
    }
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override {
    Napi::Object out = Napi::Object::New(env);
    if (!backward) {
      out.Set("y", f32_array(env, y));
      out.Set("lse", f32_array(env, lse));
    } else {
      out.Set("dQ", f32_array(env, dq));
      out.Set("dK", f32_array(env, dk));
      out.Set("dV", f32_array(env, dv));
      out.Set("dBeta", Napi::Number::New(env, dbeta));
    }
    return out;
  }
  TensorBinding* values_;
  Napi::ObjectReference values_ref_;
  std::shared_ptr<Storage> vstorage_;
  const ReadGuard* vguard_;
  size_t dv_;
};

// Product-key search over two sub-key tables: the owner (table 1) and a second tensor
// (table 2), both held busy. Queries are copied.
class ProductKeyWorker : public TensorWorker {
 public:
  ProductKeyWorker(Napi::Env env, TensorBinding* t1, Napi::Object t1_obj, const SparseTensor& k1, TensorBinding* t2,
                   Napi::Object t2_obj, const SparseTensor& k2)
      : TensorWorker(env, "ghost-tensor:product-keys", t1, t1_obj, k1),
        other_(t2),
        storage2_(k2.storage()),
        guard2_(k2.read_guard()) {
    other_ref_ = Napi::Persistent(t2_obj);
    other_->enter_busy();
  }
  ~ProductKeyWorker() override { other_->leave_busy(); }

  ProductKeyArgs args;
  std::vector<float> queries;

 private:
  void Run() override {
    check_all_rows();  // both sub-key tables are scanned whole
    if (guard2_ != nullptr) guard2_->check_all();
    args.K1 = storage_->data();
    args.K2 = storage2_->data();
    args.queries = queries.data();
    ids_.resize(args.nq * args.k);
    scores_.resize(args.nq * args.k);
    product_key_search(args, ids_.data(), scores_.data());
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override {
    Napi::Object out = Napi::Object::New(env);
    Napi::Uint32Array ids = Napi::Uint32Array::New(env, ids_.size());
    std::copy(ids_.begin(), ids_.end(), ids.Data());
    out.Set("ids", ids);
    out.Set("scores", f64_array(env, scores_));
    return out;
  }
  TensorBinding* other_;
  Napi::ObjectReference other_ref_;
  std::shared_ptr<Storage> storage2_;
  const ReadGuard* guard2_;
  std::vector<uint32_t> ids_;
  std::vector<double> scores_;
};

// A step reads the rows' values and optimizer state: a file-backed tensor checks both
// the first time (ids must be in range).
void check_step_rows(const ReadGuard* guard, const TensorFile* file, const uint32_t* ids, size_t count) {
  if (guard != nullptr) guard->check_rows(ids, count);
  if (file != nullptr) file->check_state(ids, count);
}

// One optimizer step off the JavaScript thread. Holds the tensor exclusively (reads and
// writes refused) until it settles; ids and gradients are copied.
class OptimStepWorker : public TensorWorker {
 public:
  OptimStepWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t,
                  SparseOptimizer& opt, const ArrayArg<uint32_t>& ids, const ArrayArg<float>& grads,
                  const TensorFile* file)
      : TensorWorker(env, "ghost-tensor:optimizer-step", owner, owner_obj, t),
        owner_(owner),
        opt_(opt),
        file_(file),
        ids_(ids.data, ids.data + ids.length),
        grads_(grads.data, grads.data + grads.length) {
    owner_->enter_writing();
  }
  ~OptimStepWorker() override { owner_->leave_writing(); }

 private:
  void Run() override {
    check_step_rows(guard_, file_, ids_.data(), ids_.size());
    rows_ = opt_.step(ids_.data(), ids_.size(), grads_.data());
  }
  Napi::Value Settle(Napi::Env env, TensorBinding& owner) override {
    owner.after_write();
    return Napi::Number::New(env, static_cast<double>(rows_));
  }
  TensorBinding* owner_;
  SparseOptimizer& opt_;  // cannot be replaced or detached while the tensor is busy
  const TensorFile* file_;  // cannot be closed while the tensor is busy
  std::vector<uint32_t> ids_;
  std::vector<float> grads_;
  size_t rows_ = 0;
};

}  // namespace

// optimStepAsync(ids, grads) -> Promise<distinct rows touched>
Napi::Value TensorBinding::OptimStepAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    ArrayArg<uint32_t> ids;
    ArrayArg<float> grads;
    SparseOptimizer& opt = step_args(info, &ids, &grads);
    SparseTensor& t = *tensor_;
    t.check_ids(ids.data, ids.length, "ids");
    auto* w = new OptimStepWorker(info.Env(), this, info.This().As<Napi::Object>(), t, opt, ids, grads, file_.get());
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// productKeySearchAsync(keys2, queries, k, threads?) -> Promise<{ ids: Uint32Array, scores: Float64Array }>
// This tensor is sub-key table 1; slots are i * n + j.
Napi::Value TensorBinding::ProductKeySearchAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& k1 = usable();
    TensorBinding* b2 = TensorBinding::from_value(info[0], "keys2");
    SparseTensor& k2 = b2->usable();
    if (k1.size() == 0 || k1.size() != k2.size())
      throw Error(ErrorCode::InvalidArgument, "the sub-key tables must be non-empty and of the same length");
    if (k1.size() > 65535) throw Error(ErrorCode::OutOfRange, "more than 65535 sub-keys: slot ids would not fit in uint32");
    const size_t d = k1.dim() + k2.dim();
    const ArrayArg<float> q = f32_arg(info, 1, "queries");
    if (q.length == 0 || q.length % d != 0)
      throw Error(ErrorCode::InvalidArgument, "queries length must be a positive multiple of dim " + std::to_string(d));
    check_finite_length(q, q.length, "queries");
    const size_t n = k1.size();
    const size_t k = size_arg(info, 2, "k", 1, static_cast<double>(n * n));
    const size_t threads = threads_arg(info, 3);
    auto* w = new ProductKeyWorker(info.Env(), this, info.This().As<Napi::Object>(), k1, b2, info[0].As<Napi::Object>(), k2);
    w->args.n = n;
    w->args.d1 = k1.dim();
    w->args.d2 = k2.dim();
    w->args.nq = q.length / d;
    w->args.k = k;
    w->args.threads = threads;
    w->args.kernels = &kernels();
    w->queries.assign(q.data, q.data + q.length);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// optimInit({ kind, lr, beta1, beta2, eps, weightDecay, biasCorrection }): replaces
// any optimizer state of this tensor with fresh (zero) state.
Napi::Value TensorBinding::OptimInit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("attaching an optimizer");
    const OptimizerParams p = optimizer_params(info, 0);
    const bool replace = info.Length() > 1 && info[1].ToBoolean().Value();
    if (optimizer_ && !replace)
      throw Error(ErrorCode::InvalidArgument, "the tensor already has an optimizer (its state lives with the tensor); detach() it first");
    if (file_) {
      // The state lives in the file: a new optimizer resumes it (m, v, row counters,
      // decay marks and the global scalars of the last checkpoint or detach).
      if (!file_->has_state())
        throw Error(ErrorCode::InvalidArgument,
                    "this tensor file has no optimizer state; create it with optimizerState: true");
      if (optimizer_) file_->set_scalars(optimizer_->steps(), optimizer_->log_decay());
      optimizer_.reset();
      optimizer_ = std::make_unique<SparseOptimizer>(t, p, file_->state());
      return info.Env().Undefined();
    }
    optimizer_.reset();
    optimizer_ = std::make_unique<SparseOptimizer>(t, p);
    return info.Env().Undefined();
  });
}

// optimDetach(): drops this tensor's optimizer state.
Napi::Value TensorBinding::OptimDetach(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    writable("detaching an optimizer");
    if (file_ && optimizer_) file_->set_scalars(optimizer_->steps(), optimizer_->log_decay());
    optimizer_.reset();
    return info.Env().Undefined();
  });
}

SparseOptimizer& TensorBinding::step_args(const Napi::CallbackInfo& info, ArrayArg<uint32_t>* ids, ArrayArg<float>* grads) {
  SparseTensor& t = writable("an optimizer step");
  if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
  *ids = u32_arg(info, 0, "ids");
  *grads = f32_arg(info, 1, "grads");
  if (grads->length != ids->length * t.dim())
    throw Error(ErrorCode::InvalidArgument, "grads has length " + std::to_string(grads->length) +
                                                ", expected ids.length * dim = " + std::to_string(ids->length * t.dim()));
  return *optimizer_;
}

// optimStep(ids: Uint32Array, grads: Float32Array) -> distinct rows touched
Napi::Value TensorBinding::OptimStep(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    ArrayArg<uint32_t> ids;
    ArrayArg<float> grads;
    SparseOptimizer& opt = step_args(info, &ids, &grads);
    tensor_->check_ids(ids.data, ids.length, "ids");
    check_step_rows(tensor_->read_guard(), file_.get(), ids.data, ids.length);
    const size_t n = opt.step(ids.data, ids.length, grads.data);
    after_write();
    return Napi::Number::New(info.Env(), static_cast<double>(n));
  });
}

// optimCheck(ids, grads): the checks optimStep makes before changing anything, alone
// (a multi-tensor step checks every entry first, so it is all or nothing).
Napi::Value TensorBinding::OptimCheck(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    ArrayArg<uint32_t> ids;
    ArrayArg<float> grads;
    step_args(info, &ids, &grads).check_step(ids.data, ids.length, grads.data);
    // A multi-tensor step checks every entry before stepping any: damaged rows too.
    check_step_rows(tensor_->read_guard(), file_.get(), ids.data, ids.length);
    return info.Env().Undefined();
  });
}

// optimState(ids) -> { m, v, steps }
Napi::Value TensorBinding::OptimState(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    t.check_ids(ids.data, ids.length, "ids");
    if (file_) file_->check_state(ids.data, ids.length);
    std::vector<float> m(ids.length * t.dim()), v(ids.length * t.dim());
    std::vector<uint32_t> steps(ids.length);
    Napi::Float64Array marks = Napi::Float64Array::New(info.Env(), ids.length);
    optimizer_->state(ids.data, ids.length, m.data(), v.data(), steps.data(), marks.Data());
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("m", f32_array(info.Env(), m));
    out.Set("v", f32_array(info.Env(), v));
    Napi::Uint32Array s = Napi::Uint32Array::New(info.Env(), steps.size());
    std::copy(steps.begin(), steps.end(), s.Data());
    out.Set("steps", s);
    out.Set("marks", marks);
    return out;
  });
}

// optimRestore(ids, values, m, v, steps, marks, globalStep, logDecay): puts rows back
// (SparseOptimizer::restore); m and v are empty for SGD.
Napi::Value TensorBinding::OptimRestore(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("restore");
    if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    const ArrayArg<float> values = f32_arg(info, 1, "values");
    const ArrayArg<float> m = f32_arg(info, 2, "m");
    const ArrayArg<float> v = f32_arg(info, 3, "v");
    const ArrayArg<uint32_t> steps = u32_arg(info, 4, "steps");
    const ArrayArg<double> marks = f64_arg(info, 5, "marks");
    const double global_step = info[6].IsNumber() ? info[6].As<Napi::Number>().DoubleValue() : -1.0;
    const double log_decay = info[7].IsNumber() ? info[7].As<Napi::Number>().DoubleValue() : 1.0;
    const size_t cells = ids.length * t.dim();
    const bool adam = optimizer_->params().kind == OptimizerKind::Adam;
    if (values.length != cells || steps.length != ids.length || marks.length != ids.length ||
        m.length != (adam ? cells : 0) || v.length != (adam ? cells : 0))
      throw Error(ErrorCode::InvalidArgument, "restore: array lengths do not match ids.length and dim");
    if (!(global_step >= 0.0 && global_step <= 9007199254740991.0 && global_step == std::floor(global_step)))
      throw Error(ErrorCode::OutOfRange, "restore: globalStep must be a safe integer >= 0");
    optimizer_->restore(ids.data, ids.length, values.data, m.data, v.data, steps.data, marks.data,
                        static_cast<uint64_t>(global_step), log_decay);
    after_write();
    return info.Env().Undefined();
  });
}

Napi::Value TensorBinding::OptimSetLr(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    usable();
    if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
    optimizer_->set_lr(finite_arg(info, 0, "lr"));
    return info.Env().Undefined();
  });
}

// optimInfo() -> null | { kind, lr, beta1, beta2, eps, weightDecay, biasCorrection, steps, logDecay }
Napi::Value TensorBinding::OptimInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    usable();
    if (!optimizer_) return info.Env().Null();
    const OptimizerParams& p = optimizer_->params();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("kind", p.kind == OptimizerKind::Adam ? "adam" : "sgd");
    o.Set("lr", p.lr);
    o.Set("beta1", p.beta1);
    o.Set("beta2", p.beta2);
    o.Set("eps", p.eps);
    o.Set("weightDecay", p.weight_decay);
    o.Set("biasCorrection", p.row_step ? "row" : "global");
    o.Set("steps", static_cast<double>(optimizer_->steps()));
    o.Set("logDecay", optimizer_->log_decay());
    return o;
  });
}

namespace {
// Shared argument parsing: (values, Q, beta, metric, threads) at 0..4.
DenseHopfieldWorker* dense_worker(const Napi::CallbackInfo& info, TensorBinding* self, SparseTensor& kt) {
  TensorBinding* vb = TensorBinding::from_value(info[0], "values");
  SparseTensor& vt = vb->usable();
  if (kt.size() == 0) throw Error(ErrorCode::OutOfRange, "the key tensor is empty");
  if (vt.size() != kt.size())
    throw Error(ErrorCode::InvalidArgument, "keys and values hold different pattern counts (" + std::to_string(kt.size()) +
                                                " vs " + std::to_string(vt.size()) + ")");
  const ArrayArg<float> q = f32_arg(info, 1, "queries");
  if (q.length == 0 || q.length % kt.dim() != 0)
    throw Error(ErrorCode::InvalidArgument, "queries length must be a positive multiple of dim " + std::to_string(kt.dim()));
  check_finite_length(q, q.length, "queries");
  const float beta = finite_arg(info, 2, "beta");
  const Metric metric = metric_arg(info, 3);
  const size_t threads = threads_arg(info, 4);
  auto* w = new DenseHopfieldWorker(info.Env(), self, info.This().As<Napi::Object>(), kt, vb,
                                    info[0].As<Napi::Object>(), vt);
  w->args.B = q.length / kt.dim();
  w->args.d = kt.dim();
  w->args.N = kt.size();
  w->args.dv = vt.dim();
  w->args.beta = beta;
  w->args.metric = metric;
  w->args.threads = threads;
  w->args.kernels = &kernels();
  w->q.assign(q.data, q.data + q.length);
  return w;
}
}  // namespace

// denseHopfieldForwardAsync(values, queries, beta, metric, threads?) -> Promise<{ y, lse }>
Napi::Value TensorBinding::DenseHopfieldForwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    DenseHopfieldWorker* w = dense_worker(info, this, usable());
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// denseHopfieldBackwardAsync(values, queries, beta, metric, threads, y, lse, dy)
//   -> Promise<{ dQ, dK, dV, dBeta }>
Napi::Value TensorBinding::DenseHopfieldBackwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& kt = usable();
    TensorBinding* vb = TensorBinding::from_value(info[0], "values");
    const size_t dv = vb->usable().dim();
    const ArrayArg<float> q = f32_arg(info, 1, "queries");
    const size_t B = q.length / kt.dim();
    const ArrayArg<float> y = f32_arg(info, 5, "y");
    const ArrayArg<float> lse = f32_arg(info, 6, "lse");
    const ArrayArg<float> dy = f32_arg(info, 7, "dy");
    check_finite_length(y, B * dv, "y");
    check_finite_length(lse, B, "lse");
    check_finite_length(dy, B * dv, "dy");
    DenseHopfieldWorker* w = dense_worker(info, this, kt);
    w->backward = true;
    w->y.assign(y.data, y.data + y.length);
    w->lse.assign(lse.data, lse.data + lse.length);
    w->dy.assign(dy.data, dy.data + dy.length);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

}  // namespace gt
