// Module functions for tensor files (native/src/core/tensor_file.h): creating, opening
// (the root check runs off the JavaScript thread), the test-only operation trace. A
// NativeTensor's own file methods (checkpoints, compaction, close) are in
// tensor_binding.cc.
#include <memory>
#include <stdexcept>
#include <string>

#include "file_binding.h"
#include "async_job.h"
#include "napi_util.h"
#include "../core/parallel.h"
#include "../core/tensor_file.h"

namespace gt {

const napi_type_tag kPendingTag = {0x67686f737446696cULL, 0x6550656e64696e67ULL};  // "ghostFil" "ePending"

namespace {

// Opens, maps, replays the log and (when asked or after an unclean close) checks
// every tree node: all of the file work, none of it touching JavaScript.
std::unique_ptr<PendingFile> open_pending(const std::string& path, const FileOpenOptions& opts) {
  auto p = std::make_unique<PendingFile>();
  std::unique_ptr<TensorFile> file = TensorFile::open(path, opts);
  // No finiteness scan of every row here (it would read the whole file); a root
  // check (verify, or after an unclean close) checks it.
  p->tensor = std::make_unique<SparseTensor>(file->dim(), file->rows(), file->values_storage(), false);
  p->tree = std::make_unique<MerkleTree>(*p->tensor, file->levels());
  file->recover(*p->tensor, *p->tree);
  p->file = std::move(file);
  return p;
}

Napi::Value pending_to_js(Napi::Env env, std::unique_ptr<PendingFile> p) {
  Napi::External<PendingFile> ext =
      Napi::External<PendingFile>::New(env, p.release(), [](Napi::Env, PendingFile* q) { delete q; });
  if (napi_type_tag_object(env, ext, &kPendingTag) != napi_ok) throw std::runtime_error("cannot tag an opened file");
  return ext;
}

bool bool_opt(const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean()) throw Error(ErrorCode::InvalidArgument, std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

class OpenJob : public AsyncJob {
 public:
  OpenJob(Napi::Env env, std::string path, FileOpenOptions o)
      : AsyncJob(env, "ghost-tensor:file-open"), path_(std::move(path)), opts_(o) {}

 private:
  void Run() override { pending_ = open_pending(path_, opts_); }
  Napi::Value Result(Napi::Env env) override { return pending_to_js(env, std::move(pending_)); }
  std::string path_;
  FileOpenOptions opts_;
  std::unique_ptr<PendingFile> pending_;
};

class CreateJob : public AsyncJob {
 public:
  CreateJob(Napi::Env env, std::string path, uint64_t n, uint32_t dim, bool state, FileCreateSource src, size_t threads)
      : AsyncJob(env, "ghost-tensor:file-create"), path_(std::move(path)), n_(n), dim_(dim), state_(state), src_(src),
        threads_(threads) {}

 private:
  void Run() override { TensorFile::create(path_, n_, dim_, state_, src_, threads_); }
  Napi::Value Result(Napi::Env env) override { return env.Undefined(); }
  std::string path_;
  uint64_t n_;
  uint32_t dim_;
  bool state_;
  FileCreateSource src_;
  size_t threads_;
};

FileOpenOptions open_options(const Napi::CallbackInfo& info, size_t index) {
  FileOpenOptions o;
  o.threads = default_threads();
  if (index < info.Length() && !info[index].IsUndefined()) {
    if (!info[index].IsObject()) throw Error(ErrorCode::InvalidArgument, "options must be an object");
    Napi::Object obj = info[index].As<Napi::Object>();
    o.writable = !bool_opt(obj, "readOnly", false);
    o.verify = bool_opt(obj, "verify", false);
    o.check_reads = !bool_opt(obj, "uncheckedReads", false);
    Napi::Value t = obj.Get("threads");
    if (!t.IsUndefined()) {
      if (!t.IsNumber()) throw Error(ErrorCode::InvalidArgument, "threads must be a number");
      const double x = t.As<Napi::Number>().DoubleValue();
      if (!(x >= 1 && x <= 1024 && x == static_cast<double>(static_cast<size_t>(x))))
        throw Error(ErrorCode::OutOfRange, "threads must be an integer in 1..1024");
      o.threads = static_cast<size_t>(x);
    }
  }
  return o;
}

// openTensorFileAsync(path, { readOnly, verify, threads }) -> Promise<External>
Napi::Value OpenTensorFileAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return queue(std::make_unique<OpenJob>(info.Env(), path_arg(info, 0), open_options(info, 1)));
  });
}

// openTensorFile(path, options) -> External (synchronous; same checks)
Napi::Value OpenTensorFile(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    return pending_to_js(info.Env(), open_pending(path_arg(info, 0), open_options(info, 1)));
  });
}

// createTensorFileAsync(path, rows, dim, optimizerState, seed, scale, threads?) -> Promise<void>
// Values uniform in [-scale, scale) from a seeded generator.
Napi::Value CreateTensorFileAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const std::string path = path_arg(info, 0);
    const size_t rows = size_arg(info, 1, "rows", 1, static_cast<double>(SparseTensor::kMaxRows));
    const size_t dim = size_arg(info, 2, "dim", 1, static_cast<double>(SparseTensor::kMaxDim));
    const bool state = info.Length() > 3 && info[3].ToBoolean().Value();
    FileCreateSource src;
    src.seed = size_arg(info, 4, "seed", 0, 9007199254740991.0);
    if (info.Length() <= 5 || !info[5].IsNumber()) throw Error(ErrorCode::InvalidArgument, "scale must be a number");
    src.scale = static_cast<float>(info[5].As<Napi::Number>().DoubleValue());
    return queue(std::make_unique<CreateJob>(info.Env(), path, rows, static_cast<uint32_t>(dim), state, src,
                                             threads_arg(info, 6)));
  });
}

// tensorFileTrace('start' | 'size' | 'stop'): the test-only recorder of file operations
// (tensor_file.h). 'size' -> operations so far; 'stop' -> [{ op, path, offset, data?, path2? }].
Napi::Value TensorFileTrace(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const std::string cmd = info.Length() > 0 && info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
    Napi::Env env = info.Env();
    if (cmd == "start") {
      file_trace_start();
      return env.Undefined();
    }
    if (cmd == "size") return Napi::Number::New(env, static_cast<double>(file_trace_size()));
    if (cmd != "stop") throw Error(ErrorCode::InvalidArgument, "tensorFileTrace takes 'start', 'size' or 'stop'");
    const std::vector<FileOp> ops = file_trace_stop();
    static const char* const kinds[] = {"write", "truncate", "sync", "syncdir", "rename", "unlink", "create"};
    Napi::Array out = Napi::Array::New(env, ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("op", kinds[ops[i].kind]);
      o.Set("path", ops[i].path);
      o.Set("offset", static_cast<double>(ops[i].offset));
      if (ops[i].kind == FileOp::Write) {
        Napi::Uint8Array d = Napi::Uint8Array::New(env, ops[i].data.size());
        std::copy(ops[i].data.begin(), ops[i].data.end(), d.Data());
        o.Set("data", d);
      }
      if (ops[i].kind == FileOp::Rename) o.Set("path2", ops[i].path2);
      out.Set(static_cast<uint32_t>(i), o);
    }
    return out;
  });
}

}  // namespace

void register_file_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("openTensorFile", Napi::Function::New(env, OpenTensorFile));
  exports.Set("openTensorFileAsync", Napi::Function::New(env, OpenTensorFileAsync));
  exports.Set("createTensorFileAsync", Napi::Function::New(env, CreateTensorFileAsync));
  exports.Set("tensorFileTrace", Napi::Function::New(env, TensorFileTrace));
}


}  // namespace gt
