// Addon functions for the canonical arithmetic (native/src/core/canonical.h): the prover
// computes what a proof claims with these; tests compare them bit for bit with
// lib/verify/canonical.ts. Every size is checked here, at the edge.
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/canonical.h"
#include "../core/canonical_step.h"
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

namespace {

// The rows of canonicalScores / canonicalMix, checked: without `at` (argument `at_index`
// undefined), B x k rows of w in pair order; with it, any whole number of rows of w and
// B x k positions, each below that number (the pair's row is rows[at[p] * w ...]).
// Every row must be finite. Returns the positions (nullptr without them).
const uint32_t* pair_rows(const Napi::CallbackInfo& info, size_t at_index, const ArrayArg<float>& rows, size_t B,
                          size_t k, size_t w) {
  if (info.Length() <= at_index || info[at_index].IsUndefined()) {
    check_finite_length(rows, B * k * w, "rows");
    return nullptr;
  }
  const ArrayArg<uint32_t> at = u32_arg(info, at_index, "at");
  if (at.length != B * k)
    throw Error(ErrorCode::InvalidArgument, "at has length " + std::to_string(at.length) + ", expected B * k = " +
                                                std::to_string(B * k));
  if (rows.length % w != 0)
    throw Error(ErrorCode::InvalidArgument, "rows has length " + std::to_string(rows.length) +
                                                ", not a whole number of rows of " + std::to_string(w));
  const size_t n = rows.length / w;
  for (size_t p = 0; p < at.length; ++p)
    if (at.data[p] >= n)
      throw Error(ErrorCode::OutOfRange, "at[" + std::to_string(p) + "] = " + std::to_string(at.data[p]) +
                                             " is not below the " + std::to_string(n) + " rows");
  check_finite_length(rows, rows.length, "rows");
  return at.data;
}

}  // namespace

// (q: Float64Array (B x d), rows: Float32Array (B x k x d), B, k, d, metric, at?: Uint32Array (B x k))
//   -> Float64Array (B x k); with `at`, rows is any n x d and pair p reads row at[p]
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
    const uint32_t* at = pair_rows(info, 6, rows, B, k, d);
    return f64_array(info.Env(), canonical::scores(q.data, rows.data, B, k, d, m, at));
  });
}

// (s: Float64Array (B x k), beta, rows: Float32Array (B x k x w), B, k, w, at?: Uint32Array (B x k))
//   -> Float64Array (B x w); `at` as for canonicalScores
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
    const uint32_t* at = pair_rows(info, 6, rows, B, k, w);
    return f64_array(info.Env(), canonical::mix(s.data, static_cast<float>(beta), rows.data, B, k, w, at));
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

// a * b, or InvalidArgument when it does not fit in size_t.
size_t checked_mul(size_t a, size_t b, const char* what) {
  if (a != 0 && b > static_cast<size_t>(-1) / a) throw Error(ErrorCode::InvalidArgument, std::string(what) + " is too large");
  return a * b;
}

// Every index of `idx` is below `n` (rows of the buffer it indexes).
void check_rows(const ArrayArg<uint32_t>& idx, size_t n, const char* name) {
  for (size_t i = 0; i < idx.length; ++i)
    if (idx.data[i] >= n)
      throw Error(ErrorCode::InvalidArgument,
                  std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(idx.data[i]) + " is not below " + std::to_string(n));
}

double f32_number(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (info.Length() <= index || !info[index].IsNumber()) throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a number");
  const double v = info[index].As<Napi::Number>().DoubleValue();
  if (static_cast<double>(static_cast<float>(v)) != v && !std::isnan(v))
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be an f32 value");
  return v;
}

// The prover's HopfieldLookup backward (native/src/core/canonical_step.h; mirrors
// lib/verify/kinds/hopfield.ts, not product keys):
// (x, dy, q, s, a, keys, values, keyRow, keyAcc, valueRow, valueAcc, accKeys, accValues,
//  B, k, d, dv, S, beta, metric, normalize) -> dx (Float32Array B x d); accKeys and
// accValues (Float64Array, may be one buffer) are added to in place. Values are not
// checked for finiteness: the TypeScript takes any (NaN and infinities propagate alike).
Napi::Value CanonicalHopfieldBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const ArrayArg<float> dy = f32_arg(info, 1, "dy");
    const ArrayArg<double> q = f64_arg(info, 2, "q");
    const ArrayArg<double> s = f64_arg(info, 3, "s");
    const ArrayArg<double> a = f64_arg(info, 4, "a");
    const ArrayArg<float> keys = f32_arg(info, 5, "keys");
    const ArrayArg<float> values = f32_arg(info, 6, "values");
    const ArrayArg<uint32_t> key_row = u32_arg(info, 7, "keyRow");
    const ArrayArg<uint32_t> key_acc = u32_arg(info, 8, "keyAcc");
    const ArrayArg<uint32_t> value_row = u32_arg(info, 9, "valueRow");
    const ArrayArg<uint32_t> value_acc = u32_arg(info, 10, "valueAcc");
    const ArrayArg<double> acc_keys = f64_arg(info, 11, "accKeys");
    const ArrayArg<double> acc_values = f64_arg(info, 12, "accValues");
    const size_t B = size_arg(info, 13, "B", 1, kMaxCount);
    const size_t k = size_arg(info, 14, "k", 1, kMaxCount);
    const size_t d = size_arg(info, 15, "d", 1, kMaxDim);
    const size_t dv = size_arg(info, 16, "dv", 1, kMaxDim);
    const size_t S = size_arg(info, 17, "S", 1, 65535);
    const double beta = f32_number(info, 18, "beta");
    const Metric m = metric_arg(info, 19);
    if (info.Length() < 21 || !info[20].IsBoolean()) throw Error(ErrorCode::InvalidArgument, "normalize must be a boolean");
    const size_t BS = checked_mul(B, S, "B x S");
    const size_t entries = checked_mul(BS, k, "B x S x k");
    check_len(x.length, checked_mul(B, d, "B x d"), "x");
    check_len(dy.length, checked_mul(B, dv, "B x dv"), "dy");
    check_len(q.length, checked_mul(BS, d, "B x S x d"), "q");
    check_len(s.length, entries, "s");
    check_len(a.length, entries, "a");
    check_len(key_row.length, entries, "keyRow");
    check_len(key_acc.length, entries, "keyAcc");
    check_len(value_row.length, B * k, "valueRow");
    check_len(value_acc.length, B * k, "valueAcc");
    if (keys.length % d != 0) throw Error(ErrorCode::InvalidArgument, "keys' length is not a multiple of d");
    if (values.length % dv != 0) throw Error(ErrorCode::InvalidArgument, "values' length is not a multiple of dv");
    if (acc_keys.length % d != 0) throw Error(ErrorCode::InvalidArgument, "accKeys' length is not a multiple of d");
    if (acc_values.length % dv != 0) throw Error(ErrorCode::InvalidArgument, "accValues' length is not a multiple of dv");
    check_rows(key_row, keys.length / d, "keyRow");
    check_rows(key_acc, acc_keys.length / d, "keyAcc");
    check_rows(value_row, values.length / dv, "valueRow");
    check_rows(value_acc, acc_values.length / dv, "valueAcc");
    Napi::Float32Array dx = Napi::Float32Array::New(info.Env(), x.length);
    canonical::HopfieldBackward p{B, k, d, dv, S, beta, m, info[20].As<Napi::Boolean>().Value(), x.data, dy.data, q.data, s.data,
                                  a.data, keys.data, values.data, key_row.data, key_acc.data, value_row.data, value_acc.data,
                                  acc_keys.data, acc_values.data, dx.Data()};
    canonical::hopfield_backward(p);
    return dx;
  });
}

// The prover's HopfieldLookup training forward (mirrors lib/verify/kinds/hopfield.ts
// hopfieldForward with keep; not product keys, not held keys):
// (x, keys, values, keyRow, valueRow, B, k, d, dv, S, beta, metric, normalize, y, q, s, a)
// fills y (B x dv f32), q (B*S x d), s and a (B*S x k, f64).
Napi::Value CanonicalHopfieldForward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const ArrayArg<float> keys = f32_arg(info, 1, "keys");
    const ArrayArg<float> values = f32_arg(info, 2, "values");
    const ArrayArg<uint32_t> key_row = u32_arg(info, 3, "keyRow");
    const ArrayArg<uint32_t> value_row = u32_arg(info, 4, "valueRow");
    const size_t B = size_arg(info, 5, "B", 1, kMaxCount);
    const size_t k = size_arg(info, 6, "k", 1, kMaxCount);
    const size_t d = size_arg(info, 7, "d", 1, kMaxDim);
    const size_t dv = size_arg(info, 8, "dv", 1, kMaxDim);
    const size_t S = size_arg(info, 9, "S", 1, 65535);
    const double beta = f32_number(info, 10, "beta");
    const Metric m = metric_arg(info, 11);
    if (info.Length() < 13 || !info[12].IsBoolean()) throw Error(ErrorCode::InvalidArgument, "normalize must be a boolean");
    const ArrayArg<float> y = f32_arg(info, 13, "y");
    const ArrayArg<double> q = f64_arg(info, 14, "q");
    const ArrayArg<double> s = f64_arg(info, 15, "s");
    const ArrayArg<double> a = f64_arg(info, 16, "a");
    const size_t BS = checked_mul(B, S, "B x S");
    const size_t entries = checked_mul(BS, k, "B x S x k");
    check_len(x.length, checked_mul(B, d, "B x d"), "x");
    check_len(key_row.length, entries, "keyRow");
    check_len(value_row.length, B * k, "valueRow");
    check_len(y.length, checked_mul(B, dv, "B x dv"), "y");
    check_len(q.length, checked_mul(BS, d, "B x S x d"), "q");
    check_len(s.length, entries, "s");
    check_len(a.length, entries, "a");
    if (keys.length % d != 0) throw Error(ErrorCode::InvalidArgument, "keys' length is not a multiple of d");
    if (values.length % dv != 0) throw Error(ErrorCode::InvalidArgument, "values' length is not a multiple of dv");
    check_rows(key_row, keys.length / d, "keyRow");
    check_rows(value_row, values.length / dv, "valueRow");
    canonical::HopfieldForward p{B, k, d, dv, S, beta, m, info[12].As<Napi::Boolean>().Value(), x.data, keys.data, values.data,
                                 key_row.data, value_row.data, y.data, q.data, s.data, a.data};
    canonical::hopfield_forward(p);
    return info.Env().Undefined();
  });
}

// The prover's optimizer step (mirrors lib/verify/canonical.ts coptimizerStep):
// (params: Float64Array [adam 0/1, rowStep 0/1, lr, beta1, beta2, eps, weightDecay
// (f32 values), globalStep, logDecay], d, rows, grads, m, v, steps, marks, outRows, outM,
// outV, outSteps, outMarks) -> the new decay log. count = steps.length; m, v, outM, outV
// are empty for SGD.
Napi::Value CanonicalOptimizerStep(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<double> params = f64_arg(info, 0, "params");
    check_len(params.length, 9, "params");
    const size_t d = size_arg(info, 1, "d", 1, kMaxDim);
    const ArrayArg<float> rows = f32_arg(info, 2, "rows");
    const ArrayArg<float> grads = f32_arg(info, 3, "grads");
    const ArrayArg<float> m = f32_arg(info, 4, "m");
    const ArrayArg<float> v = f32_arg(info, 5, "v");
    const ArrayArg<uint32_t> steps = u32_arg(info, 6, "steps");
    const ArrayArg<double> marks = f64_arg(info, 7, "marks");
    const ArrayArg<float> out_rows = f32_arg(info, 8, "outRows");
    const ArrayArg<float> out_m = f32_arg(info, 9, "outM");
    const ArrayArg<float> out_v = f32_arg(info, 10, "outV");
    const ArrayArg<uint32_t> out_steps = u32_arg(info, 11, "outSteps");
    const ArrayArg<double> out_marks = f64_arg(info, 12, "outMarks");
    const double* P = params.data;
    for (size_t i = 2; i < 7; ++i)
      if (!std::isfinite(P[i]) || static_cast<double>(static_cast<float>(P[i])) != P[i])
        throw Error(ErrorCode::InvalidArgument, "params[" + std::to_string(i) + "] must be a finite f32 value");
    if (!(P[7] >= 0.0 && P[7] <= 9007199254740991.0 && std::floor(P[7]) == P[7]))
      throw Error(ErrorCode::InvalidArgument, "params[7] (the global step) must be an integer in [0, 2^53)");
    const bool adam = P[0] != 0.0;
    const size_t count = steps.length;
    const size_t n = checked_mul(count, d, "count x d");
    check_len(marks.length, count, "marks");
    check_len(rows.length, n, "rows");
    check_len(grads.length, n, "grads");
    check_len(m.length, adam ? n : 0, "m");
    check_len(v.length, adam ? n : 0, "v");
    check_len(out_rows.length, n, "outRows");
    check_len(out_m.length, adam ? n : 0, "outM");
    check_len(out_v.length, adam ? n : 0, "outV");
    check_len(out_steps.length, count, "outSteps");
    check_len(out_marks.length, count, "outMarks");
    canonical::OptimizerStep o{adam, P[1] != 0.0, static_cast<float>(P[2]), static_cast<float>(P[3]), static_cast<float>(P[4]),
                               static_cast<float>(P[5]), static_cast<float>(P[6]), P[7], P[8], count, d, rows.data, grads.data,
                               m.data, v.data, steps.data, marks.data, out_rows.data, out_m.data, out_v.data, out_steps.data,
                               out_marks.data};
    return Napi::Number::New(info.Env(), canonical::optimizer_step(o));
  });
}


// ---- The prover's mirrors of the language-model kinds (canonical_step.h). Values are
// not checked for finiteness (the TypeScript takes any); sizes and indices are, before
// any work. ----


// (x, W, bias | null, n, dIn, m, kp, y (n x m f32, out), kept (n x kp u32 when kp < m, else empty; out))
Napi::Value CanonicalLinearTrain(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const ArrayArg<float> w = f32_arg(info, 1, "W");
    const bool has_bias = info.Length() > 2 && !info[2].IsNull() && !info[2].IsUndefined();
    ArrayArg<float> b;
    if (has_bias) b = f32_arg(info, 2, "bias");
    const size_t n = size_arg(info, 3, "n", 1, kMaxCount);
    const size_t d_in = size_arg(info, 4, "dIn", 1, kMaxDim);
    const size_t m = size_arg(info, 5, "m", 1, kMaxCount);
    const size_t kp = size_arg(info, 6, "kp", 1, kMaxCount);
    const ArrayArg<float> y = f32_arg(info, 7, "y");
    const ArrayArg<uint32_t> kept = u32_arg(info, 8, "kept");
    check_len(x.length, checked_mul(n, d_in, "n x dIn"), "x");
    check_len(w.length, checked_mul(m, d_in, "m x dIn"), "W");
    if (has_bias) check_len(b.length, m, "bias");
    check_len(y.length, checked_mul(n, m, "n x m"), "y");
    check_len(kept.length, kp < m ? checked_mul(n, kp, "n x kp") : 0, "kept");
    canonical::linear_train(x.data, n, d_in, w.data, m, kp, has_bias ? b.data : nullptr, y.data, kp < m ? kept.data : nullptr);
    return info.Env().Undefined();
  });
}

// (input, W, kept (n x kp u32, or empty: every column), dP (n x m, Float32Array or
// Float64Array), dIn (n x inDim f64, added to), accW (m x inDim f64, added to), accB (m
// f64 added to, or empty: no bias), n, inDim, m, kp)
Napi::Value CanonicalProjectionBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> input = f32_arg(info, 0, "input");
    const ArrayArg<float> w = f32_arg(info, 1, "W");
    const ArrayArg<uint32_t> kept = u32_arg(info, 2, "kept");
    if (info.Length() < 4 || !info[3].IsTypedArray()) throw Error(ErrorCode::InvalidArgument, "dP must be a Float32Array or a Float64Array");
    const bool dp64 = info[3].As<Napi::TypedArray>().TypedArrayType() == napi_float64_array;
    ArrayArg<float> dp32;
    ArrayArg<double> dp64a;
    if (dp64) dp64a = f64_arg(info, 3, "dP");
    else dp32 = f32_arg(info, 3, "dP");
    const ArrayArg<double> d_in = f64_arg(info, 4, "dIn");
    const ArrayArg<double> acc_w = f64_arg(info, 5, "accW");
    const ArrayArg<double> acc_b = f64_arg(info, 6, "accB");
    const size_t n = size_arg(info, 7, "n", 1, kMaxCount);
    const size_t in_dim = size_arg(info, 8, "inDim", 1, kMaxDim);
    const size_t m = size_arg(info, 9, "m", 1, kMaxCount);
    const size_t kp = size_arg(info, 10, "kp", 1, kMaxCount);
    const size_t nm = checked_mul(n, m, "n x m");
    check_len(input.length, checked_mul(n, in_dim, "n x inDim"), "input");
    check_len(w.length, checked_mul(m, in_dim, "m x inDim"), "W");
    const bool dense = kept.length == 0;
    if (!dense) {
      if (kp >= m) throw Error(ErrorCode::InvalidArgument, "kept must be empty when kp >= m");
      check_len(kept.length, checked_mul(n, kp, "n x kp"), "kept");
      check_rows(kept, m, "kept");
    }
    check_len(dp64 ? dp64a.length : dp32.length, nm, "dP");
    check_len(d_in.length, input.length, "dIn");
    check_len(acc_w.length, w.length, "accW");
    if (acc_b.length != 0) check_len(acc_b.length, m, "accB");
    double* b = acc_b.length != 0 ? acc_b.data : nullptr;
    const uint32_t* kk = dense ? nullptr : kept.data;
    if (dp64)
      canonical::projection_backward(input.data, n, in_dim, w.data, m, kp, kk, dp64a.data, d_in.data, acc_w.data, b);
    else
      canonical::projection_backward(input.data, n, in_dim, w.data, m, kp, kk, dp32.data, d_in.data, acc_w.data, b);
    return info.Env().Undefined();
  });
}

// The shapes of an attention core call: n, heads, kTop, causal, scale from index i on; D from q.
struct CoreShape {
  size_t n, heads, k_top, D, kk;
  bool causal;
  double scale;
};
CoreShape core_shape(const Napi::CallbackInfo& info, size_t i, size_t q_len) {
  CoreShape c{};
  c.n = size_arg(info, i, "n", 1, kMaxCount);
  c.heads = size_arg(info, i + 1, "heads", 1, kMaxCount);
  c.k_top = size_arg(info, i + 2, "kTop", 1, kMaxCount);
  if (info.Length() <= i + 3 || !info[i + 3].IsBoolean()) throw Error(ErrorCode::InvalidArgument, "causal must be a boolean");
  c.causal = info[i + 3].As<Napi::Boolean>().Value();
  c.scale = f32_number(info, i + 4, "scale");
  if (q_len % c.n != 0) throw Error(ErrorCode::InvalidArgument, "q's length is not a multiple of n");
  c.D = q_len / c.n;
  if (c.D == 0 || c.D % c.heads != 0) throw Error(ErrorCode::InvalidArgument, "the width is not a positive multiple of heads");
  c.kk = c.k_top < c.n ? c.k_top : c.n;
  return c;
}

// (q, k, v (n x D f32), o (n x D f32, out), top (heads x n x kk u32, out), weights (f64, out), n, heads, kTop, causal, scale)
Napi::Value CanonicalAttentionCore(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> q = f32_arg(info, 0, "q");
    const ArrayArg<float> k = f32_arg(info, 1, "k");
    const ArrayArg<float> v = f32_arg(info, 2, "v");
    const ArrayArg<float> o = f32_arg(info, 3, "o");
    const ArrayArg<uint32_t> top = u32_arg(info, 4, "top");
    const ArrayArg<double> weights = f64_arg(info, 5, "weights");
    const CoreShape c = core_shape(info, 6, q.length);
    check_len(k.length, q.length, "k");
    check_len(v.length, q.length, "v");
    check_len(o.length, q.length, "o");
    const size_t slots = checked_mul(checked_mul(c.heads, c.n, "heads x n"), c.kk, "heads x n x kk");
    check_len(top.length, slots, "top");
    check_len(weights.length, slots, "weights");
    canonical::AttentionCore p{c.n, c.heads, c.D, c.k_top, c.causal, c.scale, q.data, k.data, v.data, o.data, top.data, weights.data};
    canonical::attention_core(p);
    return info.Env().Undefined();
  });
}

// (q, k, v, top, weights, dO (n x D f64), dQ, dK, dV (n x D f64, added to), n, heads, kTop, causal, scale)
Napi::Value CanonicalAttentionCoreBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> q = f32_arg(info, 0, "q");
    const ArrayArg<float> k = f32_arg(info, 1, "k");
    const ArrayArg<float> v = f32_arg(info, 2, "v");
    const ArrayArg<uint32_t> top = u32_arg(info, 3, "top");
    const ArrayArg<double> weights = f64_arg(info, 4, "weights");
    const ArrayArg<double> dO = f64_arg(info, 5, "dO");
    const ArrayArg<double> dQ = f64_arg(info, 6, "dQ");
    const ArrayArg<double> dK = f64_arg(info, 7, "dK");
    const ArrayArg<double> dV = f64_arg(info, 8, "dV");
    const CoreShape c = core_shape(info, 9, q.length);
    for (const auto& [len, name] : {std::pair<size_t, const char*>{k.length, "k"}, {v.length, "v"}, {dO.length, "dO"}, {dQ.length, "dQ"},
                                    {dK.length, "dK"}, {dV.length, "dV"}})
      check_len(len, q.length, name);
    const size_t slots = checked_mul(checked_mul(c.heads, c.n, "heads x n"), c.kk, "heads x n x kk");
    check_len(top.length, slots, "top");
    check_len(weights.length, slots, "weights");
    // Every selected position a query may read (the first min(kTop, visible) of its slot) is a row.
    for (size_t h = 0; h < c.heads; ++h)
      for (size_t i = 0; i < c.n; ++i) {
        const size_t vis = c.causal ? i + 1 : c.n, cnt = c.k_top < vis ? c.k_top : vis, base = (h * c.n + i) * c.kk;
        for (size_t r = 0; r < cnt; ++r)
          if (top.data[base + r] >= c.n)
            throw Error(ErrorCode::InvalidArgument, "top[" + std::to_string(base + r) + "] = " + std::to_string(top.data[base + r]) + " is not below " + std::to_string(c.n));
      }
    canonical::AttentionCoreBackward p{c.n, c.heads, c.D, c.k_top, c.causal, c.scale, q.data, k.data, v.data, top.data, weights.data,
                                       dO.data, dQ.data, dK.data, dV.data};
    canonical::attention_core_backward(p);
    return info.Env().Undefined();
  });
}

// (x, dy, gain, n, d, eps (an f32), dx (n x d f32, out), accGain (d f64, added to))
Napi::Value CanonicalRmsNormBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const ArrayArg<float> dy = f32_arg(info, 1, "dy");
    const ArrayArg<float> g = f32_arg(info, 2, "gain");
    const size_t n = size_arg(info, 3, "n", 1, kMaxCount);
    const size_t d = size_arg(info, 4, "d", 1, kMaxDim);
    const double eps = f32_number(info, 5, "eps");
    const ArrayArg<float> dx = f32_arg(info, 6, "dx");
    const ArrayArg<double> acc = f64_arg(info, 7, "accGain");
    const size_t nd = checked_mul(n, d, "n x d");
    check_len(x.length, nd, "x");
    check_len(dy.length, nd, "dy");
    check_len(g.length, d, "gain");
    check_len(dx.length, nd, "dx");
    check_len(acc.length, d, "accGain");
    canonical::rmsnorm_backward(x.data, dy.data, g.data, n, d, static_cast<float>(eps), dx.data, acc.data);
    return info.Env().Undefined();
  });
}

// (gate, up, dy, dGate, dUp: Float32Arrays of one length; the last two out)
Napi::Value CanonicalGluBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> gate = f32_arg(info, 0, "gate");
    const ArrayArg<float> up = f32_arg(info, 1, "up");
    const ArrayArg<float> dy = f32_arg(info, 2, "dy");
    const ArrayArg<float> dg = f32_arg(info, 3, "dGate");
    const ArrayArg<float> du = f32_arg(info, 4, "dUp");
    check_len(up.length, gate.length, "up");
    check_len(dy.length, gate.length, "dy");
    check_len(dg.length, gate.length, "dGate");
    check_len(du.length, gate.length, "dUp");
    canonical::glu_backward(gate.data, up.data, dy.data, gate.length, dg.data, du.data);
    return info.Env().Undefined();
  });
}


// (gate, up, y: Float32Arrays of one length; y out) cglu without the finiteness check of
// canonicalJoin (the step's forward takes any value, as the TypeScript does).
Napi::Value CanonicalGluForward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> gate = f32_arg(info, 0, "gate");
    const ArrayArg<float> up = f32_arg(info, 1, "up");
    const ArrayArg<float> y = f32_arg(info, 2, "y");
    check_len(up.length, gate.length, "up");
    check_len(y.length, gate.length, "y");
    const std::vector<float> out = canonical::glu(gate.data, up.data, gate.length);
    std::copy(out.begin(), out.end(), y.data);
    return info.Env().Undefined();
  });
}


// The prover's product-key memory backward (canonical_step.h memory_backward):
// (x, dy, q, a, values, valueRow, valueAcc, accValues, t1, t1Row, t1Acc, accT1, t2, t2Row,
//  t2Acc, accT2, W, accW, B, H, k, dv, dIn, dk, d1, beta) -> dx (B x dIn f32); the acc
// buffers are added to in place.
Napi::Value CanonicalMemoryBackward(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> x = f32_arg(info, 0, "x");
    const ArrayArg<float> dy = f32_arg(info, 1, "dy");
    const ArrayArg<float> q = f32_arg(info, 2, "q");
    const ArrayArg<double> a = f64_arg(info, 3, "a");
    const ArrayArg<float> values = f32_arg(info, 4, "values");
    const ArrayArg<uint32_t> value_row = u32_arg(info, 5, "valueRow");
    const ArrayArg<uint32_t> value_acc = u32_arg(info, 6, "valueAcc");
    const ArrayArg<double> acc_values = f64_arg(info, 7, "accValues");
    const ArrayArg<float> t1 = f32_arg(info, 8, "t1");
    const ArrayArg<uint32_t> t1_row = u32_arg(info, 9, "t1Row");
    const ArrayArg<uint32_t> t1_acc = u32_arg(info, 10, "t1Acc");
    const ArrayArg<double> acc_t1 = f64_arg(info, 11, "accT1");
    const ArrayArg<float> t2 = f32_arg(info, 12, "t2");
    const ArrayArg<uint32_t> t2_row = u32_arg(info, 13, "t2Row");
    const ArrayArg<uint32_t> t2_acc = u32_arg(info, 14, "t2Acc");
    const ArrayArg<double> acc_t2 = f64_arg(info, 15, "accT2");
    const ArrayArg<float> w = f32_arg(info, 16, "W");
    const ArrayArg<double> acc_w = f64_arg(info, 17, "accW");
    const size_t B = size_arg(info, 18, "B", 1, kMaxCount);
    const size_t H = size_arg(info, 19, "H", 1, 64);
    const size_t k = size_arg(info, 20, "k", 1, kMaxCount);
    const size_t dv = size_arg(info, 21, "dv", 1, kMaxDim);
    const size_t d_in = size_arg(info, 22, "dIn", 1, kMaxDim);
    const size_t dk = size_arg(info, 23, "dk", 2, kMaxDim);
    const size_t d1 = size_arg(info, 24, "d1", 1, kMaxDim);
    const double beta = f32_number(info, 25, "beta");
    if (d1 >= dk) throw Error(ErrorCode::InvalidArgument, "d1 must be below dk");
    const size_t d2 = dk - d1, hdk = checked_mul(H, dk, "H x dk");
    const size_t entries = checked_mul(checked_mul(B, H, "B x H"), k, "B x H x k");
    check_len(x.length, checked_mul(B, d_in, "B x dIn"), "x");
    check_len(dy.length, checked_mul(B, dv, "B x dv"), "dy");
    check_len(q.length, checked_mul(B, hdk, "B x H x dk"), "q");
    check_len(a.length, entries, "a");
    for (const auto& [len, name] : {std::pair<size_t, const char*>{value_row.length, "valueRow"}, {value_acc.length, "valueAcc"},
                                    {t1_row.length, "t1Row"}, {t1_acc.length, "t1Acc"}, {t2_row.length, "t2Row"}, {t2_acc.length, "t2Acc"}})
      check_len(len, entries, name);
    check_len(w.length, checked_mul(hdk, d_in, "H x dk x dIn"), "W");
    check_len(acc_w.length, w.length, "accW");
    const auto rows_of = [](size_t len, size_t dim, const char* name) {
      if (len % dim != 0) throw Error(ErrorCode::InvalidArgument, std::string(name) + "'s length is not a multiple of its row length");
      return len / dim;
    };
    check_rows(value_row, rows_of(values.length, dv, "values"), "valueRow");
    check_rows(value_acc, rows_of(acc_values.length, dv, "accValues"), "valueAcc");
    check_rows(t1_row, rows_of(t1.length, d1, "t1"), "t1Row");
    check_rows(t1_acc, rows_of(acc_t1.length, d1, "accT1"), "t1Acc");
    check_rows(t2_row, rows_of(t2.length, d2, "t2"), "t2Row");
    check_rows(t2_acc, rows_of(acc_t2.length, d2, "accT2"), "t2Acc");
    Napi::Float32Array dx = Napi::Float32Array::New(info.Env(), x.length);
    canonical::MemoryBackward p{B, H, k, dv, d_in, dk, d1, beta, x.data, dy.data, q.data, a.data, values.data, value_row.data,
                                value_acc.data, acc_values.data, t1.data, t1_row.data, t1_acc.data, acc_t1.data, t2.data,
                                t2_row.data, t2_acc.data, acc_t2.data, w.data, acc_w.data, dx.Data()};
    canonical::memory_backward(p);
    return dx;
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
  exports.Set("canonicalHopfieldBackward", Napi::Function::New(env, CanonicalHopfieldBackward));
  exports.Set("canonicalHopfieldForward", Napi::Function::New(env, CanonicalHopfieldForward));
  exports.Set("canonicalOptimizerStep", Napi::Function::New(env, CanonicalOptimizerStep));
  exports.Set("canonicalLinearTrain", Napi::Function::New(env, CanonicalLinearTrain));
  exports.Set("canonicalProjectionBackward", Napi::Function::New(env, CanonicalProjectionBackward));
  exports.Set("canonicalAttentionCore", Napi::Function::New(env, CanonicalAttentionCore));
  exports.Set("canonicalAttentionCoreBackward", Napi::Function::New(env, CanonicalAttentionCoreBackward));
  exports.Set("canonicalRmsNormBackward", Napi::Function::New(env, CanonicalRmsNormBackward));
  exports.Set("canonicalGluBackward", Napi::Function::New(env, CanonicalGluBackward));
  exports.Set("canonicalGluForward", Napi::Function::New(env, CanonicalGluForward));
  exports.Set("canonicalMemoryBackward", Napi::Function::New(env, CanonicalMemoryBackward));
}

}  // namespace gt
