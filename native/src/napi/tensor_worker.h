// Base of every asynchronous job on a tensor (search, commit, HNSW build, training
// kernels, saving, checkpoints): an AsyncJob (async_job.h, which settles the promise
// and maps errors) that also holds the tensor busy.
#pragma once
#include <napi.h>

#include <memory>

#include "../core/sparse_tensor.h"
#include "async_job.h"
#include "tensor_binding.h"

namespace gt {

// Work on a tensor's rows off the JavaScript thread. Holds the tensor busy (writes
// refused) from construction until it settles, and keeps the wrapper and the storage
// it reads alive.
class TensorWorker : public AsyncJob {
 public:
  TensorWorker(Napi::Env env, const char* name, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t)
      : AsyncJob(env, name), storage_(t.storage()), n_(t.size()), d_(t.dim()), guard_(t.read_guard()), owner_(owner) {
    owner_ref_ = Napi::Persistent(owner_obj);
    owner_->enter_busy();
  }

 protected:
  // JavaScript thread, after Run() returned; the tensor is no longer busy.
  virtual Napi::Value Settle(Napi::Env env, TensorBinding& owner) = 0;

  std::shared_ptr<Storage> storage_;  // the rows stay alive even if the tensor grows
  size_t n_, d_;
  // A file-backed tensor's row checks (tensor_file.h); null otherwise. A job that reads
  // every row calls check_all_rows() first, on the worker thread.
  const ReadGuard* guard_;
  void check_all_rows() const {
    if (guard_ != nullptr) guard_->check_all();
  }

 private:
  void Done() final { owner_->leave_busy(); }
  Napi::Value Result(Napi::Env env) final { return Settle(env, *owner_); }

  TensorBinding* owner_;
  Napi::ObjectReference owner_ref_;  // keeps the wrapper (and an adopted buffer) alive
};

}  // namespace gt
