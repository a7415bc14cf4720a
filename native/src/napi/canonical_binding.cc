// Addon functions for the canonical arithmetic (native/src/core/canonical.h): the prover
// computes what a proof claims with these; tests compare them bit for bit with
// lib/verify/canonical.ts. Every size is checked here, at the edge.
#include <napi.h>

#include <cmath>
#include <string>
#include <vector>

#include "../core/canonical.h"
#include "canonical_binding.h"
#include "napi_util.h"
#include "../core/sparse_tensor.h"

namespace gt {

namespace {

void check_len(size_t got, size_t want, const char* name) {
  if (got != want)
    throw Error(ErrorCode::InvalidArgument,
                std::string(name) + " has length " + std::to_string(got) + ", expected " + std::to_string(want));
}

void check_finite(const double* p, size_t n, const char* name) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) throw Error(ErrorCode::NonFinite, std::string(name) + "[" + std::to_string(i) + "] is not finite");
}

constexpr double kMaxDim = static_cast<double>(SparseTensor::kMaxDim);
constexpr double kMaxCount = 4294967295.0;

// (x: Float64Array, which: 'exp' | 'log1pNeg') -> Float64Array, elementwise.
Napi::Value CanonicalMath(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<double> x = f64_arg(info, 0, "x");
    if (info.Length() < 2 || !info[1].IsString()) throw Error(ErrorCode::InvalidArgument, "which must be a string");
    const std::string which = info[1].As<Napi::String>().Utf8Value();
    std::vector<double> out(x.length);
    if (which == "exp") {
      for (size_t i = 0; i < x.length; ++i) out[i] = canonical::exp(x.data[i]);
    } else if (which == "log1pNeg") {
      for (size_t i = 0; i < x.length; ++i) out[i] = canonical::log1p_neg(x.data[i]);
    } else {
      throw Error(ErrorCode::InvalidArgument, "which must be 'exp' or 'log1pNeg'");
    }
    return f64_array(info.Env(), out);
  });
}

// (b: number, t: integer) -> number
Napi::Value CanonicalPowi(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsNumber()) throw Error(ErrorCode::InvalidArgument, "b must be a number");
    const double b = info[0].As<Napi::Number>().DoubleValue();
    const size_t t = size_arg(info, 1, "t", 0, 9007199254740991.0);
    return Napi::Number::New(info.Env(), canonical::powi(b, t));
  });
}

// (x: Float32Array, B, d, normalize: boolean) -> Float64Array (B x d)
Napi::Value CanonicalStates(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const size_t B = size_arg(info, 1, "B", 1, kMaxCount);
    const size_t d = size_arg(info, 2, "d", 1, kMaxDim);
    check_finite_length(x, B * d, "x");
    return f64_array(info.Env(), canonical::states(x.data, B, d, info[3].ToBoolean().Value()));
  });
}

// (q: Float64Array (B x d), rows: Float32Array (B x k x d), B, k, d, metric) -> Float64Array (B x k)
Napi::Value CanonicalScores(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<double> q = f64_arg(info, 0, "q");
    const ArrayArg<float> rows = f32_arg(info, 1, "rows");
    const size_t B = size_arg(info, 2, "B", 1, kMaxCount);
    const size_t k = size_arg(info, 3, "k", 1, kMaxCount);
    const size_t d = size_arg(info, 4, "d", 1, kMaxDim);
    const Metric m = metric_arg(info, 5);
    check_len(q.length, B * d, "q");
    check_finite(q.data, q.length, "q");
    check_finite_length(rows, B * k * d, "rows");
    return f64_array(info.Env(), canonical::scores(q.data, rows.data, B, k, d, m));
  });
}

// (s: Float64Array (B x k), beta, rows: Float32Array (B x k x w), B, k, w) -> Float64Array (B x w)
Napi::Value CanonicalMix(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<double> s = f64_arg(info, 0, "s");
    if (info.Length() < 2 || !info[1].IsNumber()) throw Error(ErrorCode::InvalidArgument, "beta must be a number");
    const double beta = info[1].As<Napi::Number>().DoubleValue();
    if (!std::isfinite(beta) || static_cast<double>(static_cast<float>(beta)) != beta)
      throw Error(ErrorCode::InvalidArgument, "beta must be a finite f32 value");
    const ArrayArg<float> rows = f32_arg(info, 2, "rows");
    const size_t B = size_arg(info, 3, "B", 1, kMaxCount);
    const size_t k = size_arg(info, 4, "k", 1, kMaxCount);
    const size_t w = size_arg(info, 5, "w", 1, kMaxDim);
    check_len(s.length, B * k, "s");
    check_finite(s.data, s.length, "s");
    check_finite_length(rows, B * k * w, "rows");
    return f64_array(info.Env(), canonical::mix(s.data, static_cast<float>(beta), rows.data, B, k, w));
  });
}

// (q: Float64Array (B x (d1+d2)), t1: Float32Array (n x d1), t2 (n x d2), n, d1, d2, B, k, threads,
//  screen?: level name | 'none')
//   -> { ids: Uint32Array (B x k), scores: Float64Array (B x k), canonicalRows: rows scored in f64 }
Napi::Value CanonicalProductKeys(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<double> q = f64_arg(info, 0, "q");
    const ArrayArg<float> t1 = f32_arg(info, 1, "t1");
    const ArrayArg<float> t2 = f32_arg(info, 2, "t2");
    const size_t n = size_arg(info, 3, "n", 1, 65535);
    const size_t d1 = size_arg(info, 4, "d1", 1, kMaxDim);
    const size_t d2 = size_arg(info, 5, "d2", 1, kMaxDim);
    const size_t B = size_arg(info, 6, "B", 1, kMaxCount);
    const size_t k = size_arg(info, 7, "k", 1, static_cast<double>(n * n));
    const size_t threads = threads_arg(info, 8);
    check_len(q.length, B * (d1 + d2), "q");
    check_finite(q.data, q.length, "q");
    check_len(t1.length, n * d1, "t1");
    check_len(t2.length, n * d2, "t2");
    // One pass per table gives both the finiteness check and the screening bound's max.
    const uint32_t tmax[2] = {canonical::abs_max_bits(t1.data, t1.length), canonical::abs_max_bits(t2.data, t2.length)};
    if (tmax[0] >= 0x7f800000u) check_finite_length(t1, n * d1, "t1");
    if (tmax[1] >= 0x7f800000u) check_finite_length(t2, n * d2, "t2");
    Napi::Uint32Array ids = Napi::Uint32Array::New(info.Env(), B * k);
    Napi::Float64Array scores = Napi::Float64Array::New(info.Env(), B * k);
    // screen: undefined (the default SIMD level's kernels), a level name, or 'none'
    // (every row scored canonically: the reference the tests compare with).
    const bool none = info.Length() > 9 && info[9].IsString() && info[9].As<Napi::String>().Utf8Value() == "none";
    const Kernels* fast = none ? nullptr : &kernels_for(level_arg(info, 9));
    size_t scored = 0;
    canonical::product_keys(q.data, t1.data, t2.data, n, d1, d2, B, k, ids.Data(), scores.Data(), threads, fast, &scored, tmax);
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("ids", ids);
    out.Set("scores", scores);
    out.Set("canonicalRows", Napi::Number::New(info.Env(), static_cast<double>(scored)));
    return out;
  });
}

// (q: Float64Array (B x d), keys: Float32Array (n x d), n, d, B, k, metric, threads, screen?: level name | 'none')
//   -> { ids: Uint32Array (B x k), scores: Float64Array (B x k), canonicalRows: keys scored in f64 }
// The exact top-k of all n keys (canonical::exact_topk): what a verifier holding every key re-derives.
Napi::Value CanonicalExactTopK(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<double> q = f64_arg(info, 0, "q");
    const ArrayArg<float> keys = f32_arg(info, 1, "keys");
    const size_t n = size_arg(info, 2, "n", 1, kMaxCount);
    const size_t d = size_arg(info, 3, "d", 1, kMaxDim);
    const size_t B = size_arg(info, 4, "B", 1, kMaxCount);
    const size_t k = size_arg(info, 5, "k", 1, static_cast<double>(n));
    const Metric m = metric_arg(info, 6);
    const size_t threads = threads_arg(info, 7);
    check_len(q.length, B * d, "q");
    check_finite(q.data, q.length, "q");
    check_len(keys.length, n * d, "keys");
    const uint32_t tmax = canonical::abs_max_bits(keys.data, keys.length);
    if (tmax >= 0x7f800000u) check_finite_length(keys, n * d, "keys");
    Napi::Uint32Array ids = Napi::Uint32Array::New(info.Env(), B * k);
    Napi::Float64Array scores = Napi::Float64Array::New(info.Env(), B * k);
    const bool none = info.Length() > 8 && info[8].IsString() && info[8].As<Napi::String>().Utf8Value() == "none";
    const Kernels* fast = none ? nullptr : &kernels_for(level_arg(info, 8));
    size_t scored = 0;
    canonical::exact_topk(q.data, keys.data, n, d, B, k, m, ids.Data(), scores.Data(), threads, fast, &scored, &tmax);
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("ids", ids);
    out.Set("scores", scores);
    out.Set("canonicalRows", Napi::Number::New(info.Env(), static_cast<double>(scored)));
    return out;
  });
}

// (x: Float32Array (n x dIn), n, dIn, W: Float32Array (m x dIn), m, kp, bias: Float32Array (m) | null) -> Float32Array (n x m)
Napi::Value CanonicalLinear(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const size_t n = size_arg(info, 1, "n", 1, kMaxCount);
    const size_t d_in = size_arg(info, 2, "dIn", 1, kMaxDim);
    const ArrayArg<float> w = f32_arg(info, 3, "W");
    const size_t m = size_arg(info, 4, "m", 1, kMaxCount);
    const size_t kp = size_arg(info, 5, "kp", 1, kMaxCount);
    check_finite_length(x, n * d_in, "x");
    check_finite_length(w, m * d_in, "W");
    const bool has_bias = info.Length() > 6 && !info[6].IsNull() && !info[6].IsUndefined();
    if (!has_bias) return f32_array(info.Env(), canonical::linear(x.data, n, d_in, w.data, m, kp, nullptr));
    const ArrayArg<float> b = f32_arg(info, 6, "bias");
    check_finite_length(b, m, "bias");
    return f32_array(info.Env(), canonical::linear(x.data, n, d_in, w.data, m, kp, b.data));
  });
}

// (x: Float32Array (n x d), n, d, gain: Float32Array (d), eps: an f32 > 0) -> Float32Array (n x d)
Napi::Value CanonicalRmsNorm(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const size_t n = size_arg(info, 1, "n", 1, kMaxCount);
    const size_t d = size_arg(info, 2, "d", 1, kMaxDim);
    const ArrayArg<float> g = f32_arg(info, 3, "gain");
    if (info.Length() < 5 || !info[4].IsNumber()) throw Error(ErrorCode::InvalidArgument, "eps must be a number");
    const double eps = info[4].As<Napi::Number>().DoubleValue();
    if (!(eps > 0.0) || !std::isfinite(eps) || static_cast<double>(static_cast<float>(eps)) != eps)
      throw Error(ErrorCode::InvalidArgument, "eps must be a finite f32 value > 0");
    check_finite_length(x, n * d, "x");
    check_finite_length(g, d, "gain");
    return f32_array(info.Env(), canonical::rmsnorm(x.data, n, d, g.data, static_cast<float>(eps)));
  });
}

// (a: Float32Array, b: Float32Array of a's length, which: 'add' | 'glu') -> Float32Array
Napi::Value CanonicalJoin(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> a = f32_arg(info, 0, "a");
    const ArrayArg<float> b = f32_arg(info, 1, "b");
    check_finite_length(a, a.length, "a");
    check_finite_length(b, a.length, "b");
    if (info.Length() < 3 || !info[2].IsString()) throw Error(ErrorCode::InvalidArgument, "which must be a string");
    const std::string which = info[2].As<Napi::String>().Utf8Value();
    if (which == "add") return f32_array(info.Env(), canonical::add(a.data, b.data, a.length));
    if (which == "glu") return f32_array(info.Env(), canonical::glu(a.data, b.data, a.length));
    throw Error(ErrorCode::InvalidArgument, "which must be 'add' or 'glu'");
  });
}

}  // namespace

void register_canonical_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("canonicalMath", Napi::Function::New(env, CanonicalMath));
  exports.Set("canonicalPowi", Napi::Function::New(env, CanonicalPowi));
  exports.Set("canonicalStates", Napi::Function::New(env, CanonicalStates));
  exports.Set("canonicalScores", Napi::Function::New(env, CanonicalScores));
  exports.Set("canonicalMix", Napi::Function::New(env, CanonicalMix));
  exports.Set("canonicalProductKeys", Napi::Function::New(env, CanonicalProductKeys));
  exports.Set("canonicalExactTopK", Napi::Function::New(env, CanonicalExactTopK));
  exports.Set("canonicalLinear", Napi::Function::New(env, CanonicalLinear));
  exports.Set("canonicalRmsNorm", Napi::Function::New(env, CanonicalRmsNorm));
  exports.Set("canonicalJoin", Napi::Function::New(env, CanonicalJoin));
}

}  // namespace gt
