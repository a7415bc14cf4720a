// Node-API wrapper of gt::SparseTensor (JavaScript class NativeTensor).
#pragma once
#include <napi.h>

#include <memory>

#include "../core/hnsw_index.h"
#include "../core/merkle.h"
#include "napi_util.h"
#include "../core/optimizer.h"
#include "../core/sparse_tensor.h"
#include "../core/tensor_file.h"

namespace gt {

class TensorBinding : public Napi::ObjectWrap<TensorBinding> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit TensorBinding(const Napi::CallbackInfo& info);

  // Asynchronous readers hold the tensor busy; writes are refused meanwhile.
  void enter_busy() { ++busy_; }
  void leave_busy() { --busy_; }
  // An asynchronous write (an optimizer step) holds the tensor exclusively: reads are
  // refused too until it settles.
  void enter_writing() { ++writing_; }
  void leave_writing() { --writing_; }
  // Ends adoption when the storage moved to owned memory (growth).
  void after_write();
  // Installs a Merkle tree built off the JavaScript thread over the current rows.
  void install_merkle(MerkleLevels&& levels);
  void install_hnsw(std::unique_ptr<HnswIndex> index);
  HnswIndex& hnsw();
  // Instance check for an argument that must be another NativeTensor.
  static TensorBinding* from_value(const Napi::Value& v, const char* name);
  SparseTensor& usable();
  // Takes over a file opened by openTensorFile[Async] (constructor path).
  void adopt_file(const Napi::Value& handle);

 private:
  Napi::Value Size(const Napi::CallbackInfo& info);
  Napi::Value Dim(const Napi::CallbackInfo& info);
  Napi::Value Capacity(const Napi::CallbackInfo& info);
  Napi::Value IsAdopted(const Napi::CallbackInfo& info);
  Napi::Value Reserve(const Napi::CallbackInfo& info);
  Napi::Value Append(const Napi::CallbackInfo& info);
  Napi::Value RowView(const Napi::CallbackInfo& info);
  Napi::Value Gather(const Napi::CallbackInfo& info);
  Napi::Value Set(const Napi::CallbackInfo& info);
  Napi::Value Add(const Napi::CallbackInfo& info);
  Napi::Value Search(const Napi::CallbackInfo& info);
  Napi::Value SearchBatch(const Napi::CallbackInfo& info);
  Napi::Value SearchBatchAsync(const Napi::CallbackInfo& info);
  Napi::Value NormCacheInfo(const Napi::CallbackInfo& info);
  Napi::Value Commit(const Napi::CallbackInfo& info);
  Napi::Value CommitAsync(const Napi::CallbackInfo& info);
  Napi::Value IsCommitted(const Napi::CallbackInfo& info);
  Napi::Value Root(const Napi::CallbackInfo& info);
  Napi::Value Prove(const Napi::CallbackInfo& info);
  Napi::Value HnswBuildAsync(const Napi::CallbackInfo& info);
  Napi::Value HnswLoad(const Napi::CallbackInfo& info);
  Napi::Value HnswSave(const Napi::CallbackInfo& info);
  Napi::Value HnswStatsJs(const Napi::CallbackInfo& info);
  Napi::Value HnswSearch(const Napi::CallbackInfo& info);
  Napi::Value HnswSearchBatchAsync(const Napi::CallbackInfo& info);
  Napi::Value HnswRefresh(const Napi::CallbackInfo& info);
  Napi::Value HnswRefreshAsync(const Napi::CallbackInfo& info);

  Napi::Value OptimInit(const Napi::CallbackInfo& info);
  Napi::Value OptimStep(const Napi::CallbackInfo& info);
  Napi::Value OptimStepAsync(const Napi::CallbackInfo& info);
  Napi::Value OptimCheck(const Napi::CallbackInfo& info);
  Napi::Value OptimDetach(const Napi::CallbackInfo& info);
  Napi::Value OptimState(const Napi::CallbackInfo& info);
  Napi::Value OptimRestore(const Napi::CallbackInfo& info);
  Napi::Value OptimSetLr(const Napi::CallbackInfo& info);
  Napi::Value OptimInfo(const Napi::CallbackInfo& info);
  Napi::Value DenseHopfieldForwardAsync(const Napi::CallbackInfo& info);
  Napi::Value DenseHopfieldBackwardAsync(const Napi::CallbackInfo& info);
  Napi::Value ProductKeySearchAsync(const Napi::CallbackInfo& info);
  Napi::Value SaveFileAsync(const Napi::CallbackInfo& info);
  Napi::Value FileCheckpoint(const Napi::CallbackInfo& info);
  Napi::Value FileCheckpointAsync(const Napi::CallbackInfo& info);
  Napi::Value FileCompact(const Napi::CallbackInfo& info);
  Napi::Value FileClose(const Napi::CallbackInfo& info);
  Napi::Value FileInfoJs(const Napi::CallbackInfo& info);
  TensorFile* file_or_throw(const char* op);
  void release_file_tensor();

  Napi::Value search_now(const Napi::CallbackInfo& info, bool batch);

  // (usable(): throws when an adopted buffer was detached; public above.)
  // usable() and no asynchronous reader running.
  SparseTensor& writable(const char* op);
  // The adopted buffer is still attached (no check for a running write).
  SparseTensor& present();
  // (ids, grads) at 0..1 of an optimizer step: the tensor writable, an optimizer
  // attached, grads.length == ids.length * dim. Sets *ids and *grads.
  SparseOptimizer& step_args(const Napi::CallbackInfo& info, ArrayArg<uint32_t>* ids, ArrayArg<float>* grads);

  std::unique_ptr<SparseTensor> tensor_;
  Napi::Reference<Napi::ArrayBuffer> adopted_;  // the user's buffer while adopted
  size_t adopted_offset_ = 0;                   // byte offset of row 0 in it
  Napi::Reference<Napi::ArrayBuffer> view_buffer_;  // external buffer over owned storage
  std::shared_ptr<Storage> view_storage_;
  int busy_ = 0;
  int writing_ = 0;
  // Declared after tensor_: destroyed first, so it unregisters from a live tensor.
  std::unique_ptr<MerkleTree> merkle_;
  std::unique_ptr<HnswIndex> hnsw_;
  std::unique_ptr<SparseOptimizer> optimizer_;
  // Declared last: destroyed first, so it unregisters from a live tensor.
  std::unique_ptr<TensorFile> file_;
};

}  // namespace gt
