// Base of every asynchronous job on a tensor (search, commit, HNSW build, training
// kernels): runs off the JavaScript thread and settles a promise.
#pragma once
#include <napi.h>

#include <memory>
#include <stdexcept>

#include "napi_util.h"
#include "../core/sparse_tensor.h"
#include "tensor_binding.h"

namespace gt {

// Work on a tensor's rows off the JavaScript thread. Holds the tensor busy (writes
// refused) from construction until it settles, keeps the wrapper and the storage it
// reads alive, and turns every failure into a rejected promise with a code.
class TensorWorker : public Napi::AsyncWorker {
 public:
  TensorWorker(Napi::Env env, const char* name, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t)
      : Napi::AsyncWorker(env, name),
        storage_(t.storage()),
        n_(t.size()),
        d_(t.dim()),
        guard_(t.read_guard()),
        deferred_(Napi::Promise::Deferred::New(env)),
        owner_(owner) {
    owner_ref_ = Napi::Persistent(owner_obj);
    owner_->enter_busy();
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      Run();
    } catch (const Error& e) {
      code_ = e.code();
      has_code_ = true;
      SetError(e.what());
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    owner_->leave_busy();
    try {
      deferred_.Resolve(Settle(Env(), *owner_));
    } catch (const std::exception& e) {
      deferred_.Reject(make_error(Env(), "ERR_GT_INTERNAL", e.what()).Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    owner_->leave_busy();
    // A gt::Error keeps its code (NonFinite, OutOfRange, ...); anything else is internal.
    deferred_.Reject((has_code_ ? make_error(Env(), Error(code_, e.Message())) : make_error(Env(), "ERR_GT_INTERNAL", e.Message())).Value());
  }

 protected:
  virtual void Run() = 0;                                          // worker thread
  virtual Napi::Value Settle(Napi::Env env, TensorBinding& owner) = 0;  // JavaScript thread

  std::shared_ptr<Storage> storage_;  // the rows stay alive even if the tensor grows
  size_t n_, d_;
  // A file-backed tensor's row checks (tensor_file.h); null otherwise. A job that reads
  // every row calls check_all_rows() first, on the worker thread.
  const ReadGuard* guard_;
  void check_all_rows() const {
    if (guard_ != nullptr) guard_->check_all();
  }

 private:
  Napi::Promise::Deferred deferred_;
  ErrorCode code_ = ErrorCode::InvalidArgument;
  bool has_code_ = false;
  TensorBinding* owner_;
  Napi::ObjectReference owner_ref_;  // keeps the wrapper (and an adopted buffer) alive
};

}  // namespace gt
