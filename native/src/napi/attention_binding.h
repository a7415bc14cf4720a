// Addon functions for self-attention (see attention_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
Napi::Value AttentionForwardAsync(const Napi::CallbackInfo& info);
Napi::Value AttentionBackwardAsync(const Napi::CallbackInfo& info);
Napi::Value LinearAsync(const Napi::CallbackInfo& info);
Napi::Value LinearBackwardAsync(const Napi::CallbackInfo& info);
}  // namespace gt
