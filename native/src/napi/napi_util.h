// Argument checking and error conversion at the Node-API edge. Every exported
// function runs inside guard() and every asynchronous job derives from AsyncJob
// (async_job.h); both convert a C++ exception with js_error(), so no exception
// crosses into JavaScript unconverted and both paths give the same error.
#pragma once
#include <napi.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "../core/cpu.h"
#include "../core/merkle.h"
#include "../core/errors.h"
#include "../core/metric.h"

namespace gt {

Napi::Error make_error(Napi::Env env, const char* code, const std::string& message);
// A gt::Error's code (and a StorageError's reason, as `reason`) on a JavaScript error.
Napi::Error make_error(Napi::Env env, const Error& e);

// The one mapping of a C++ exception to a JavaScript error: a Napi::Error is already
// one; gt::Error keeps its code (and a storage reason); std::bad_alloc becomes
// ERR_GT_OUT_OF_MEMORY "out of memory"; any other exception ERR_GT_INTERNAL with its
// message. Called on the JavaScript thread.
Napi::Error js_error(Napi::Env env, std::exception_ptr failure);

template <typename F>
Napi::Value guard(const Napi::CallbackInfo& info, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw js_error(info.Env(), std::current_exception());
  }
}

template <typename T>
struct ArrayArg {
  T* data = nullptr;
  size_t length = 0;
};

// A Float32Array / Uint32Array argument; rejects other types and detached buffers.
ArrayArg<float> f32_arg(const Napi::CallbackInfo& info, size_t index, const char* name);
ArrayArg<uint32_t> u32_arg(const Napi::CallbackInfo& info, size_t index, const char* name);
ArrayArg<uint8_t> u8_arg(const Napi::CallbackInfo& info, size_t index, const char* name);
ArrayArg<double> f64_arg(const Napi::CallbackInfo& info, size_t index, const char* name);
// Throws unless `a` holds `want` floats, all finite (InvalidArgument / NonFinite, naming `name`).
void check_finite_length(const ArrayArg<float>& a, size_t want, const char* name);
// A copy of the Float32Array at `index`, checked as check_finite_length does (for
// work queued on a worker thread, which must not read the JS buffer).
std::vector<float> copy_f32(const Napi::CallbackInfo& info, size_t index, const char* name, size_t want);
// A new Float32Array holding a copy of v.
Napi::Float32Array f32_array(Napi::Env env, const std::vector<float>& v);
// A new Float64Array holding a copy of v.
Napi::Float64Array f64_array(Napi::Env env, const std::vector<double>& v);
// An integer in [lo, hi].
size_t size_arg(const Napi::CallbackInfo& info, size_t index, const char* name, double lo, double hi);
Metric metric_arg(const Napi::CallbackInfo& info, size_t index);
// A 32-byte hash as a new Uint8Array, and back (checked length).
Napi::Uint8Array hash_to_js(Napi::Env env, const Hash& h);
Hash hash_arg(const Napi::CallbackInfo& info, size_t index, const char* name);
// `threads` at index: undefined means default_threads(); else an integer in 1..1024.
size_t threads_arg(const Napi::CallbackInfo& info, size_t index);

// A non-empty string (a file path).
std::string path_arg(const Napi::CallbackInfo& info, size_t index);

// A SIMD level name, or undefined for the default level; must be supported.
SimdLevel level_arg(const Napi::CallbackInfo& info, size_t index);

}  // namespace gt
