// Module functions for BLAKE3 and the Merkle commitment (see merkle_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
void register_merkle_functions(Napi::Env env, Napi::Object exports);
}  // namespace gt
