// Addon functions for the sparse Hopfield math (see hopfield_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
Napi::Value HopfieldMixAsync(const Napi::CallbackInfo& info);
Napi::Value HopfieldMixBackwardAsync(const Napi::CallbackInfo& info);
Napi::Value HopfieldKeyBackwardAsync(const Napi::CallbackInfo& info);
}  // namespace gt
