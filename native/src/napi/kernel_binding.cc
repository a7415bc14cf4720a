// Module functions for the SIMD kernels (native/src/core/kernels.h): simdInfo, and the
// kernelPair / kernelBlock entry points that the tests and the kernel benchmark call
// at a chosen level.
#include "kernel_binding.h"

#include <string>

#include "../core/blake3_batch.h"
#include "../core/cpu.h"
#include "../core/kernels.h"
#include "../core/parallel.h"
#include "../core/sparse_tensor.h"
#include "../../third_party/blake3/blake3.h"
#include "napi_util.h"
#include "tensor_binding.h"

namespace gt {
namespace {

Napi::Value SimdInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("level", simd_level_name(default_simd_level()));
  const auto levels = supported_simd_levels();
  Napi::Array supported = Napi::Array::New(env, levels.size());
  for (size_t i = 0; i < levels.size(); ++i) supported.Set(static_cast<uint32_t>(i), simd_level_name(levels[i]));
  out.Set("supported", supported);
  out.Set("compiled", [&] {
    Napi::Array a = Napi::Array::New(env);
    uint32_t n = 0;
    a.Set(n++, "scalar");
    if (kKernelsAVX2 != nullptr) a.Set(n++, "avx2");
    if (kKernelsAVX512 != nullptr) a.Set(n++, "avx512");
    if (kKernelsNEON != nullptr) a.Set(n++, "neon");
    return a;
  }());
  out.Set("envError", simd_env_error().empty() ? env.Null() : Napi::String::New(env, simd_env_error()));
  out.Set("threads", static_cast<double>(default_threads()));
  out.Set("blake3", blake3_version());
  out.Set("blake3Simd", gt_blake3_simd_name());
  return out;
}

// kernel(name, level, ...) entry points used by the tests and the kernel benchmark.
// kernelPair(op, level, a, b) -> number, op in dot | l2 | sum (b ignored for sum). For
// sum, `a` may be a native tensor: the sum of its rows where they are stored (for the
// benchmarks' plain read of the memory a scan reads: owned rows are on huge pages).
Napi::Value KernelPair(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const std::string op = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    const Kernels& K = kernels_for(level_arg(info, 1));
    if (op == "sum" && info.Length() > 2 && info[2].IsObject() && !info[2].IsTypedArray()) {
      const SparseTensor& t = TensorBinding::from_value(info[2], "a")->usable();
      return Napi::Number::New(info.Env(), t.size() == 0 ? 0.0 : K.sum(t.data(), t.size() * t.dim()));
    }
    const ArrayArg<float> a = f32_arg(info, 2, "a");
    if (op == "sum") return Napi::Number::New(info.Env(), K.sum(a.data, a.length));
    const ArrayArg<float> b = f32_arg(info, 3, "b");
    if (a.length != b.length) throw Error(ErrorCode::InvalidArgument, "a and b must have the same length");
    if (op == "dot") return Napi::Number::New(info.Env(), K.dot(a.data, b.data, a.length));
    if (op == "l2") return Napi::Number::New(info.Env(), K.l2sq(a.data, b.data, a.length));
    throw Error(ErrorCode::InvalidArgument, "op must be 'dot', 'l2' or 'sum'");
  });
}

// kernelBlock(op, level, Q, R, d, repeat?) -> Float32Array nq * nr, op in dot | l2
Napi::Value KernelBlock(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const std::string op = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    if (op != "dot" && op != "l2") throw Error(ErrorCode::InvalidArgument, "op must be 'dot' or 'l2'");
    const Kernels& K = kernels_for(level_arg(info, 1));
    const ArrayArg<float> Q = f32_arg(info, 2, "Q");
    const ArrayArg<float> R = f32_arg(info, 3, "R");
    const size_t d = size_arg(info, 4, "d", 1, static_cast<double>(SparseTensor::kMaxDim));
    const size_t repeat = info.Length() > 5 ? size_arg(info, 5, "repeat", 1, 1e9) : 1;
    if (Q.length % d != 0 || R.length % d != 0)
      throw Error(ErrorCode::InvalidArgument, "Q and R lengths must be multiples of d");
    const size_t nq = Q.length / d, nr = R.length / d;
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), nq * nr);
    for (size_t r = 0; r < repeat; ++r) {
      if (op == "dot") K.dot_block(Q.data, nq, R.data, nr, d, out.Data(), nr);
      else K.l2_block(Q.data, nq, R.data, nr, d, out.Data(), nr);
    }
    return out;
  });
}

}  // namespace

void register_kernel_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("simdInfo", Napi::Function::New(env, SimdInfo));
  exports.Set("kernelPair", Napi::Function::New(env, KernelPair));
  exports.Set("kernelBlock", Napi::Function::New(env, KernelBlock));
}

}  // namespace gt
