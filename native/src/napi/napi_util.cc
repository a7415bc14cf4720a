#include "napi_util.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <new>

#include "../core/parallel.h"
#include "../core/sparse_tensor.h"

namespace gt {

Napi::Error make_error(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

Napi::Error make_error(Napi::Env env, const Error& e) {
  Napi::Error err = make_error(env, error_code_string(e.code()), e.what());
  if (e.reason() != nullptr) err.Set("reason", Napi::String::New(env, e.reason()));
  return err;
}

Napi::Error js_error(Napi::Env env, std::exception_ptr failure) {
  try {
    std::rethrow_exception(failure);
  } catch (const Napi::Error& e) {
    return e;
  } catch (const Error& e) {
    return make_error(env, e);
  } catch (const std::bad_alloc&) {
    return make_error(env, "ERR_GT_OUT_OF_MEMORY", "out of memory");
  } catch (const std::exception& e) {
    return make_error(env, "ERR_GT_INTERNAL", e.what());
  } catch (...) {
    return make_error(env, "ERR_GT_INTERNAL", "a native exception of unknown type");
  }
}

namespace {
template <typename T>
ArrayArg<T> typed_arg(const Napi::CallbackInfo& info, size_t index, const char* name,
                      napi_typedarray_type type, const char* type_name) {
  if (index >= info.Length() || !info[index].IsTypedArray() ||
      info[index].As<Napi::TypedArray>().TypedArrayType() != type)
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a " + type_name);
  Napi::TypedArray arr = info[index].As<Napi::TypedArray>();
  Napi::ArrayBuffer buf = arr.ArrayBuffer();
  if (buf.IsDetached())
    throw Error(ErrorCode::Detached, std::string(name) + " is backed by a detached ArrayBuffer");
  ArrayArg<T> out;
  out.length = arr.ElementLength();
  out.data = reinterpret_cast<T*>(static_cast<uint8_t*>(buf.Data()) + arr.ByteOffset());
  return out;
}
}  // namespace

ArrayArg<float> f32_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return typed_arg<float>(info, index, name, napi_float32_array, "Float32Array");
}
ArrayArg<uint32_t> u32_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return typed_arg<uint32_t>(info, index, name, napi_uint32_array, "Uint32Array");
}
ArrayArg<uint8_t> u8_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return typed_arg<uint8_t>(info, index, name, napi_uint8_array, "Uint8Array");
}
ArrayArg<double> f64_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return typed_arg<double>(info, index, name, napi_float64_array, "Float64Array");
}

size_t size_arg(const Napi::CallbackInfo& info, size_t index, const char* name, double lo, double hi) {
  if (index >= info.Length() || !info[index].IsNumber())
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a number");
  const double v = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(v) || v != std::floor(v))
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be an integer");
  if (v < lo || v > hi)
    throw Error(ErrorCode::OutOfRange, std::string(name) + " must be in " + std::to_string(static_cast<long long>(lo)) +
                                           ".." + std::to_string(static_cast<long long>(hi)) + ", got " +
                                           std::to_string(static_cast<long long>(v)));
  return static_cast<size_t>(v);
}

Metric metric_arg(const Napi::CallbackInfo& info, size_t index) {
  Metric m = Metric::IP;
  if (index >= info.Length() || !info[index].IsString() ||
      !parse_metric(info[index].As<Napi::String>().Utf8Value(), &m))
    throw Error(ErrorCode::InvalidArgument, "metric must be 'ip', 'cosine' or 'l2'");
  return m;
}

Napi::Uint8Array hash_to_js(Napi::Env env, const Hash& h) {
  Napi::Uint8Array out = Napi::Uint8Array::New(env, 32);
  std::copy(h.begin(), h.end(), out.Data());
  return out;
}

Hash hash_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  const ArrayArg<uint8_t> a = u8_arg(info, index, name);
  if (a.length != 32) throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be 32 bytes");
  Hash h;
  std::copy(a.data, a.data + 32, h.begin());
  return h;
}

size_t threads_arg(const Napi::CallbackInfo& info, size_t index) {
  return info.Length() > index && !info[index].IsUndefined() ? size_arg(info, index, "threads", 1, 1024)
                                                             : default_threads();
}

std::string path_arg(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsString() || info[index].As<Napi::String>().Utf8Value().empty())
    throw Error(ErrorCode::InvalidArgument, "path must be a non-empty string");
  return info[index].As<Napi::String>().Utf8Value();
}

SimdLevel level_arg(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || info[index].IsUndefined()) return default_simd_level();
  SimdLevel level = SimdLevel::Scalar;
  if (!info[index].IsString() || !parse_simd_level(info[index].As<Napi::String>().Utf8Value(), &level))
    throw Error(ErrorCode::InvalidArgument, "level must be 'scalar', 'avx2', 'avx512' or 'neon'");
  if (!simd_level_supported(level))
    throw Error(ErrorCode::Unsupported,
                std::string("SIMD level ") + simd_level_name(level) + " is not supported by this CPU");
  return level;
}

void check_finite_length(const ArrayArg<float>& a, size_t want, const char* name) {
  if (a.length != want)
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " has length " + std::to_string(a.length) + ", expected " +
                                                std::to_string(want));
  const size_t bad = first_non_finite(a.data, a.length);
  if (bad != a.length) throw Error(ErrorCode::NonFinite, std::string(name) + "[" + std::to_string(bad) + "] is not finite");
}

std::vector<float> copy_f32(const Napi::CallbackInfo& info, size_t index, const char* name, size_t want) {
  const ArrayArg<float> a = f32_arg(info, index, name);
  check_finite_length(a, want, name);
  return std::vector<float>(a.data, a.data + a.length);
}

Napi::Float32Array f32_array(Napi::Env env, const std::vector<float>& v) {
  Napi::Float32Array a = Napi::Float32Array::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}

Napi::Float64Array f64_array(Napi::Env env, const std::vector<double>& v) {
  Napi::Float64Array a = Napi::Float64Array::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}

}  // namespace gt
