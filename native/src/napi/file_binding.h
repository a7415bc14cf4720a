// Module functions for tensor files (createTensorFileAsync, openTensorFile[Async]).
#pragma once
#include <napi.h>

namespace gt {

void register_file_functions(Napi::Env env, Napi::Object exports);

}  // namespace gt
