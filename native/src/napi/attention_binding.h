// Module functions for self-attention and the linear layer (see attention_binding.cc).
#pragma once
#include <napi.h>

namespace gt {
void register_attention_functions(Napi::Env env, Napi::Object exports);
}  // namespace gt
