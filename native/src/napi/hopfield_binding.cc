// Addon functions for the sparse Hopfield math (native/src/core/sparse_hopfield.h): pure
// functions over copied arrays, run on a worker thread, settling a promise.
#include <napi.h>

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hopfield_binding.h"
#include "../core/kernels.h"
#include "async_job.h"
#include "napi_util.h"
#include "../core/sparse_hopfield.h"
#include "../core/sparse_tensor.h"

namespace gt {

namespace {

class HopfieldWorker : public AsyncJob {
 public:
  enum class Op { Mix, MixBackward, KeyBackward };
  HopfieldWorker(Napi::Env env, Op op) : AsyncJob(env, "ghost-tensor:hopfield"), op_(op) {}

  size_t B = 0, k = 0, w = 0, threads = 1;
  float beta = 1.0f;
  Metric metric = Metric::IP;
  std::vector<float> rows, s, weights, out, dout, q;

 private:
  void Run() override {
    SparseMixArgs a;
    a.B = B;
    a.k = k;
    a.w = w;
    a.rows = rows.data();
    a.s = s.data();
    a.beta = beta;
    a.threads = threads;
    a.kernels = &kernels();
    if (op_ == Op::Mix) {
      weights.resize(B * k);
      out.resize(B * w);
      sparse_mix_forward(a, weights.data(), out.data());
    } else if (op_ == Op::MixBackward) {
      r1_.resize(B * k * w);
      r2_.resize(B * k);
      sparse_mix_backward(a, weights.data(), out.data(), dout.data(), r1_.data(), r2_.data(), &dbeta_);
    } else {
      r1_.resize(B * w);      // dq
      r2_.resize(B * k * w);  // dkeys
      sparse_key_backward(metric, B, k, w, q.data(), rows.data(), s.data(), dout.data(), threads, kernels(), r1_.data(),
                          r2_.data());
    }
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    if (op_ == Op::Mix) {
      o.Set("weights", f32_array(env, weights));
      o.Set("out", f32_array(env, out));
    } else if (op_ == Op::MixBackward) {
      o.Set("dRows", f32_array(env, r1_));
      o.Set("ds", f32_array(env, r2_));
      o.Set("dBeta", Napi::Number::New(env, dbeta_));
    } else {
      o.Set("dq", f32_array(env, r1_));
      o.Set("dKeys", f32_array(env, r2_));
    }
    return o;
  }

  Op op_;
  std::vector<float> r1_, r2_;
  double dbeta_ = 0.0;
};

// (B, k, w) at 0..2, validated: every product fits and is non-zero.
void shape_args(const Napi::CallbackInfo& info, HopfieldWorker* h) {
  h->B = size_arg(info, 0, "B", 1, 1 << 24);
  h->k = size_arg(info, 1, "k", 1, 1 << 24);
  h->w = size_arg(info, 2, "width", 1, 1 << 24);
  if (static_cast<double>(h->B) * h->k * h->w > 4e9) throw Error(ErrorCode::OutOfRange, "B * k * width is too large");
}

float beta_arg(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsNumber()) throw Error(ErrorCode::InvalidArgument, "beta must be a number");
  const double b = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(b)) throw Error(ErrorCode::OutOfRange, "beta must be finite");
  return static_cast<float>(b);
}

template <typename Fill>
Napi::Value queue(const Napi::CallbackInfo& info, HopfieldWorker::Op op, Fill&& fill) {
  return guard(info, [&]() -> Napi::Value {
    auto worker = std::make_unique<HopfieldWorker>(info.Env(), op);
    shape_args(info, worker.get());
    fill(*worker);
    return queue(std::move(worker));
  });
}

// hopfieldMixAsync(B, k, w, rows, s, beta, threads?) -> Promise<{ weights, out }>
Napi::Value HopfieldMixAsync(const Napi::CallbackInfo& info) {
  return queue(info, HopfieldWorker::Op::Mix, [&](HopfieldWorker& h) {
    h.rows = copy_f32(info, 3, "rows", h.B * h.k * h.w);
    h.s = copy_f32(info, 4, "s", h.B * h.k);
    h.beta = beta_arg(info, 5);
    h.threads = threads_arg(info, 6);
  });
}

// hopfieldMixBackwardAsync(B, k, w, rows, s, beta, threads, weights, out, dOut) -> Promise<{ dRows, ds, dBeta }>
Napi::Value HopfieldMixBackwardAsync(const Napi::CallbackInfo& info) {
  return queue(info, HopfieldWorker::Op::MixBackward, [&](HopfieldWorker& h) {
    h.rows = copy_f32(info, 3, "rows", h.B * h.k * h.w);
    h.s = copy_f32(info, 4, "s", h.B * h.k);
    h.beta = beta_arg(info, 5);
    h.threads = threads_arg(info, 6);
    h.weights = copy_f32(info, 7, "weights", h.B * h.k);
    h.out = copy_f32(info, 8, "out", h.B * h.w);
    h.dout = copy_f32(info, 9, "dOut", h.B * h.w);
  });
}

// hopfieldKeyBackwardAsync(B, k, d, keys, s, metric, threads, q, ds) -> Promise<{ dq, dKeys }>
Napi::Value HopfieldKeyBackwardAsync(const Napi::CallbackInfo& info) {
  return queue(info, HopfieldWorker::Op::KeyBackward, [&](HopfieldWorker& h) {
    h.rows = copy_f32(info, 3, "keys", h.B * h.k * h.w);
    h.s = copy_f32(info, 4, "s", h.B * h.k);
    h.metric = metric_arg(info, 5);
    h.threads = threads_arg(info, 6);
    h.q = copy_f32(info, 7, "q", h.B * h.w);
    h.dout = copy_f32(info, 8, "ds", h.B * h.k);
  });
}

}  // namespace

void register_hopfield_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("hopfieldMixAsync", Napi::Function::New(env, HopfieldMixAsync));
  exports.Set("hopfieldMixBackwardAsync", Napi::Function::New(env, HopfieldMixBackwardAsync));
  exports.Set("hopfieldKeyBackwardAsync", Napi::Function::New(env, HopfieldKeyBackwardAsync));
}

}  // namespace gt
