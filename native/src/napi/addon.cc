// Module entry: the NativeTensor class and a few free functions.
#include <napi.h>

#include <vector>

#include "canonical_binding.h"
#include "file_binding.h"
#include "hopfield_binding.h"
#include "attention_binding.h"
#include "../../third_party/blake3/blake3.h"
#include "../core/cpu.h"
#include "../core/kernels.h"
#include "../core/merkle.h"
#include "napi_util.h"
#include "../core/parallel.h"
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
  return out;
}

// kernel(name, level, ...) entry points used by the tests and the kernel benchmark.
// kernelPair(op, level, a, b) -> number, op in dot | l2 | sum (b ignored for sum)
Napi::Value KernelPair(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const std::string op = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    const Kernels& K = kernels_for(level_arg(info, 1));
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

// blake3(bytes) -> Uint8Array(32)
Napi::Value Blake3(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<uint8_t> in = u8_arg(info, 0, "bytes");
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, in.data, in.length);
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), BLAKE3_OUT_LEN);
    blake3_hasher_finalize(&h, out.Data(), BLAKE3_OUT_LEN);
    return out;
  });
}

// merkleRoot(data, dim, threads?) -> Uint8Array(32): a fresh build over raw rows.
Napi::Value MerkleRoot(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const ArrayArg<float> data = f32_arg(info, 0, "data");
    const size_t dim = size_arg(info, 1, "dim", 1, static_cast<double>(SparseTensor::kMaxDim));
    const size_t threads = threads_arg(info, 2);
    if (data.length % dim != 0) throw Error(ErrorCode::InvalidArgument, "data length is not a multiple of dim");
    const size_t n = data.length / dim;
    if (n > SparseTensor::kMaxRows) throw Error(ErrorCode::OutOfRange, "more than 2^32-1 rows");
    const MerkleLevels levels = build_merkle_levels(data.data, n, dim, threads);
    Hash top{};
    if (!levels.empty()) top = levels.back()[0];
    return hash_to_js(info.Env(), commit_root(n, static_cast<uint32_t>(dim), top));
  });
}

// merkleVerify(root, n, dim, ids, leaves, proof) -> boolean; malformed input throws.
Napi::Value MerkleVerify(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const Hash root = hash_arg(info, 0, "root");
    const size_t n = size_arg(info, 1, "N", 0, 9007199254740991.0);
    const size_t dim = size_arg(info, 2, "dim", 1, static_cast<double>(SparseTensor::kMaxDim));
    const ArrayArg<uint32_t> ids = u32_arg(info, 3, "ids");
    const ArrayArg<float> leaves = f32_arg(info, 4, "leaves");
    const ArrayArg<uint8_t> proof = u8_arg(info, 5, "proof");
    if (leaves.length != ids.length * dim)
      throw Error(ErrorCode::InvalidArgument, "leaves length must be ids.length * dim");
    if (proof.length % 32 != 0) throw Error(ErrorCode::InvalidArgument, "proof length is not a multiple of 32");
    std::vector<Hash> hashes(proof.length / 32);
    for (size_t i = 0; i < hashes.size(); ++i) std::copy(proof.data + i * 32, proof.data + i * 32 + 32, hashes[i].begin());
    return Napi::Boolean::New(info.Env(), verify_multiproof(root, n, static_cast<uint32_t>(dim), ids.data, ids.length,
                                                            leaves.data, hashes.data(), hashes.size()));
  });
}

Napi::Value MerkleKeys(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("leaf", hash_to_js(info.Env(), merkle_keys().leaf));
  out.Set("node", hash_to_js(info.Env(), merkle_keys().node));
  out.Set("root", hash_to_js(info.Env(), merkle_keys().root));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("hopfieldMixAsync", Napi::Function::New(env, HopfieldMixAsync));
  exports.Set("hopfieldMixBackwardAsync", Napi::Function::New(env, HopfieldMixBackwardAsync));
  exports.Set("hopfieldKeyBackwardAsync", Napi::Function::New(env, HopfieldKeyBackwardAsync));
  exports.Set("attentionForwardAsync", Napi::Function::New(env, AttentionForwardAsync));
  exports.Set("attentionBackwardAsync", Napi::Function::New(env, AttentionBackwardAsync));
  exports.Set("linearAsync", Napi::Function::New(env, LinearAsync));
  exports.Set("linearBackwardAsync", Napi::Function::New(env, LinearBackwardAsync));
  exports.Set("merkleRoot", Napi::Function::New(env, MerkleRoot));
  exports.Set("merkleVerify", Napi::Function::New(env, MerkleVerify));
  exports.Set("merkleKeys", Napi::Function::New(env, MerkleKeys));
  exports.Set("NativeTensor", TensorBinding::Init(env));
  exports.Set("simdInfo", Napi::Function::New(env, SimdInfo));
  exports.Set("kernelPair", Napi::Function::New(env, KernelPair));
  exports.Set("kernelBlock", Napi::Function::New(env, KernelBlock));
  exports.Set("blake3", Napi::Function::New(env, Blake3));
  InitCanonical(env, exports);
  register_file_functions(env, exports);
  return exports;
}

}  // namespace
}  // namespace gt

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return gt::Init(env, exports); }

NODE_API_MODULE(ghost_tensor, InitModule)
