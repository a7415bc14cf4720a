// Module functions for the sparse Hopfield math (see hopfield_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
void register_hopfield_functions(Napi::Env env, Napi::Object exports);
}  // namespace gt
