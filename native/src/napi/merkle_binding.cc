// Module functions for hashing and the Merkle commitment (native/src/core/merkle.h):
// blake3, merkleRoot (a fresh build over raw rows), merkleVerify, merkleKeys.
#include "merkle_binding.h"

#include <algorithm>
#include <vector>

#include "../core/merkle.h"
#include "../core/sparse_tensor.h"
#include "../../third_party/blake3/blake3.h"
#include "napi_util.h"

namespace gt {
namespace {

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

Napi::Value MerkleKeysJs(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("leaf", hash_to_js(info.Env(), merkle_keys().leaf));
  out.Set("node", hash_to_js(info.Env(), merkle_keys().node));
  out.Set("root", hash_to_js(info.Env(), merkle_keys().root));
  return out;
}

}  // namespace

void register_merkle_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("blake3", Napi::Function::New(env, Blake3));
  exports.Set("merkleRoot", Napi::Function::New(env, MerkleRoot));
  exports.Set("merkleVerify", Napi::Function::New(env, MerkleVerify));
  exports.Set("merkleKeys", Napi::Function::New(env, MerkleKeysJs));
}

}  // namespace gt
