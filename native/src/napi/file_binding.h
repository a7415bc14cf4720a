// Module functions for tensor files (createTensorFileAsync, openTensorFile[Async],
// tensorFileTrace), and the opened file they hand to the NativeTensor constructor.
#pragma once
#include <napi.h>

#include <memory>

#include "../core/merkle.h"
#include "../core/sparse_tensor.h"
#include "../core/tensor_file.h"

namespace gt {

// An opened file waiting to be adopted by a NativeTensor (deleted by the finalizer
// if it never is).
struct PendingFile {
  std::unique_ptr<SparseTensor> tensor;
  std::unique_ptr<MerkleTree> tree;
  std::unique_ptr<TensorFile> file;  // destroyed first: unregisters from the tensor
};

// Tags the External handed to JavaScript, so that the NativeTensor constructor takes
// only one of ours (any other External would be a wild pointer cast).
extern const napi_type_tag kPendingTag;

void register_file_functions(Napi::Env env, Napi::Object exports);

}  // namespace gt
