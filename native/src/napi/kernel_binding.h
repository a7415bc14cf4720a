// Module functions for the SIMD kernels (see kernel_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
void register_kernel_functions(Napi::Env env, Napi::Object exports);
}  // namespace gt
