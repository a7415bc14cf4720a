// Addon functions for the canonical arithmetic (see canonical_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
void InitCanonical(Napi::Env env, Napi::Object exports);
}  // namespace gt
