// The one base of every asynchronous job of the addon: Run() works off the JavaScript
// thread and must not touch JavaScript; Result() builds the value the promise resolves
// to. Whatever Run() or Result() throws rejects the promise with the error guard()
// would throw for the same exception (js_error() in napi_util.h): gt::Error keeps its
// code and storage reason, std::bad_alloc is ERR_GT_OUT_OF_MEMORY, anything else
// ERR_GT_INTERNAL. Nothing is compared by message text.
#pragma once
#include <napi.h>

#include <exception>
#include <memory>
#include <utility>

#include "napi_util.h"

namespace gt {

class AsyncJob : public Napi::AsyncWorker {
 public:
  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  AsyncJob(Napi::Env env, const char* name) : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

  virtual void Run() = 0;                          // worker thread
  virtual Napi::Value Result(Napi::Env env) = 0;  // JavaScript thread, after Run() returned
  // JavaScript thread, before the promise settles, whether Run() threw or not.
  virtual void Done() {}

 private:
  void Execute() final {
    try {
      Run();
    } catch (...) {
      failure_ = std::current_exception();
    }
  }
  void OnOK() final {
    Napi::Env env = Env();
    Done();
    if (failure_) {
      deferred_.Reject(js_error(env, failure_).Value());
      return;
    }
    try {
      deferred_.Resolve(Result(env));
    } catch (...) {
      deferred_.Reject(js_error(env, std::current_exception()).Value());
    }
  }
  // Only if Node-API reports a failure itself: Execute() never calls SetError().
  void OnError(const Napi::Error& e) final {
    Done();
    deferred_.Reject(make_error(Env(), "ERR_GT_INTERNAL", e.Message()).Value());
  }

  Napi::Promise::Deferred deferred_;
  std::exception_ptr failure_;  // what Run() threw, rethrown on the JavaScript thread
};

// Queues a job (Node-API deletes it once it settled) and returns its promise. Every
// job is built in a unique_ptr and handed over here last, so an argument check that
// throws before this frees it.
template <typename Job>
Napi::Value queue(std::unique_ptr<Job> job) {
  Napi::Promise p = job->promise();
  job.release()->Queue();
  return p;
}

}  // namespace gt
