// Module functions for the canonical arithmetic (see canonical_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
void register_canonical_functions(Napi::Env env, Napi::Object exports);
}  // namespace gt
