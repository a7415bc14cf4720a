// Module entry: the NativeTensor class (tensor_binding.cc) and the module functions,
// grouped by topic, one binding file each.
#include <napi.h>

#include "attention_binding.h"
#include "canonical_binding.h"
#include "file_binding.h"
#include "hopfield_binding.h"
#include "kernel_binding.h"
#include "merkle_binding.h"
#include "tensor_binding.h"

namespace gt {
namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeTensor", TensorBinding::Init(env));
  register_attention_functions(env, exports);
  register_canonical_functions(env, exports);
  register_file_functions(env, exports);
  register_hopfield_functions(env, exports);
  register_kernel_functions(env, exports);
  register_merkle_functions(env, exports);
  return exports;
}

}  // namespace
}  // namespace gt

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return gt::Init(env, exports); }

NODE_API_MODULE(ghost_tensor, InitModule)
