// Node-API side of tensor files (native/src/tensor_file.h): creating, opening (the
// root check runs off the JavaScript thread), checkpoints, compaction, close.
#include <memory>
#include <stdexcept>
#include <string>

#include "file_binding.h"
#include "napi_util.h"
#include "../core/parallel.h"
#include "tensor_binding.h"
#include "../core/tensor_file.h"
#include "tensor_worker.h"

namespace gt {

namespace {

// An opened file waiting to be adopted by a NativeTensor (deleted by the finalizer
// if it never is).
struct PendingFile {
  std::unique_ptr<SparseTensor> tensor;
  std::unique_ptr<MerkleTree> tree;
  std::unique_ptr<TensorFile> file;  // destroyed first: unregisters from the tensor
};

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

// Tags the External handed to JavaScript, so that the NativeTensor constructor takes
// only one of ours (any other External would be a wild pointer cast).
const napi_type_tag kPendingTag = {0x67686f737446696cULL, 0x6550656e64696e67ULL};  // "ghostFil" "ePending"

Napi::Value pending_to_js(Napi::Env env, std::unique_ptr<PendingFile> p) {
  Napi::External<PendingFile> ext =
      Napi::External<PendingFile>::New(env, p.release(), [](Napi::Env, PendingFile* q) { delete q; });
  if (napi_type_tag_object(env, ext, &kPendingTag) != napi_ok) throw std::runtime_error("cannot tag an opened file");
  return ext;
}

std::string path_arg(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsString() || info[index].As<Napi::String>().Utf8Value().empty())
    throw Error(ErrorCode::InvalidArgument, "path must be a non-empty string");
  return info[index].As<Napi::String>().Utf8Value();
}

bool bool_opt(const Napi::Object& o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean()) throw Error(ErrorCode::InvalidArgument, std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

// A job off the JavaScript thread that keeps gt::Error codes on rejection.
class FileJob : public Napi::AsyncWorker {
 public:
  FileJob(Napi::Env env, const char* name) : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      Run();
    } catch (const Error& e) {
      code_ = e.code();
      has_code_ = true;
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      SetError("out of memory");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Settle(Env())); }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject((has_code_ ? make_error(Env(), Error(code_, e.Message()))
                                : make_error(Env(), "ERR_GT_INTERNAL", e.Message()))
                         .Value());
  }

 protected:
  virtual void Run() = 0;
  virtual Napi::Value Settle(Napi::Env env) = 0;

 private:
  Napi::Promise::Deferred deferred_;
  ErrorCode code_ = ErrorCode::InvalidArgument;
  bool has_code_ = false;
};

class OpenJob : public FileJob {
 public:
  OpenJob(Napi::Env env, std::string path, FileOpenOptions o)
      : FileJob(env, "ghost-tensor:file-open"), path_(std::move(path)), opts_(o) {}

 private:
  void Run() override { pending_ = open_pending(path_, opts_); }
  Napi::Value Settle(Napi::Env env) override { return pending_to_js(env, std::move(pending_)); }
  std::string path_;
  FileOpenOptions opts_;
  std::unique_ptr<PendingFile> pending_;
};

class CreateJob : public FileJob {
 public:
  CreateJob(Napi::Env env, std::string path, uint64_t n, uint32_t dim, bool state, FileCreateSource src, size_t threads)
      : FileJob(env, "ghost-tensor:file-create"), path_(std::move(path)), n_(n), dim_(dim), state_(state), src_(src),
        threads_(threads) {}

 private:
  void Run() override { TensorFile::create(path_, n_, dim_, state_, src_, threads_); }
  Napi::Value Settle(Napi::Env env) override { return env.Undefined(); }
  std::string path_;
  uint64_t n_;
  uint32_t dim_;
  bool state_;
  FileCreateSource src_;
  size_t threads_;
};

// Saving an in-memory tensor: holds it busy (writes refused) while its rows are read.
class SaveWorker : public TensorWorker {
 public:
  SaveWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t, std::string path,
             bool state, size_t threads)
      : TensorWorker(env, "ghost-tensor:file-save", owner, owner_obj, t), path_(std::move(path)), state_(state),
        threads_(threads) {}

 private:
  void Run() override {
    check_all_rows();  // saving a file-backed tensor reads every row
    FileCreateSource src;
    src.data = storage_->data();
    TensorFile::create(path_, n_, static_cast<uint32_t>(d_), state_, src, threads_);
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override { return env.Undefined(); }
  std::string path_;
  bool state_;
  size_t threads_;
};

// A checkpoint (and compaction) off the JavaScript thread. Holds the tensor exclusively
// (reads and writes refused) until it settles.
class CheckpointWorker : public TensorWorker {
 public:
  CheckpointWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t, TensorFile& file,
                   const MerkleTree& tree, uint64_t global_step, double log_decay, uint64_t compact_bytes,
                   uint64_t compact_rows, bool force_compact)
      : TensorWorker(env, "ghost-tensor:checkpoint", owner, owner_obj, t),
        owner_(owner),
        file_(file),
        tree_(tree),
        gs_(global_step),
        ld_(log_decay),
        compact_bytes_(compact_bytes),
        compact_rows_(compact_rows),
        force_(force_compact) {
    owner_->enter_writing();
  }
  ~CheckpointWorker() override { owner_->leave_writing(); }

 private:
  void Run() override {
    seq_ = file_.checkpoint(tree_, gs_, ld_, compact_bytes_, compact_rows_);
    if (force_) file_.compact(false);
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override { return Napi::Number::New(env, static_cast<double>(seq_)); }
  TensorBinding* owner_;
  TensorFile& file_;  // cannot be closed while the tensor is held
  const MerkleTree& tree_;
  uint64_t gs_;
  double ld_;
  uint64_t compact_bytes_, compact_rows_;
  bool force_;
  uint64_t seq_ = 0;
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
    auto* job = new OpenJob(info.Env(), path_arg(info, 0), open_options(info, 1));
    Napi::Promise p = job->promise();
    job->Queue();
    return p;
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
    auto* job = new CreateJob(info.Env(), path, rows, static_cast<uint32_t>(dim), state, src, threads_arg(info, 6));
    Napi::Promise p = job->promise();
    job->Queue();
    return p;
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

// Constructor path: adopt an opened file (see TensorBinding::TensorBinding).
void TensorBinding::adopt_file(const Napi::Value& handle) {
  bool ours = false;
  if (napi_check_object_type_tag(handle.Env(), handle, &kPendingTag, &ours) != napi_ok || !ours)
    throw Error(ErrorCode::InvalidArgument, "expected a file opened by openTensorFile");
  PendingFile* p = handle.As<Napi::External<PendingFile>>().Data();
  if (p == nullptr || !p->file) throw Error(ErrorCode::InvalidArgument, "the opened file was already used");
  tensor_ = std::move(p->tensor);
  merkle_ = std::move(p->tree);
  file_ = std::move(p->file);
}

TensorFile* TensorBinding::file_or_throw(const char* op) {
  if (!file_) throw Error(ErrorCode::InvalidArgument, std::string(op) + ": the tensor is not backed by a file");
  return file_.get();
}

// saveFileAsync(path, optimizerState, threads?) -> Promise<void>: writes this (in-memory)
// tensor's rows and tree to a new file atomically.
Napi::Value TensorBinding::SaveFileAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("saveFile");
    const std::string path = path_arg(info, 0);
    if (t.size() == 0) throw Error(ErrorCode::OutOfRange, "an empty tensor cannot be saved (no rows)");
    const bool state = info.Length() > 1 && info[1].ToBoolean().Value();
    auto* w = new SaveWorker(info.Env(), this, info.This().As<Napi::Object>(), t, path, state, threads_arg(info, 2));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// fileCheckpoint(compactBytes, compactRows) -> sequence number of the new durable checkpoint
Napi::Value TensorBinding::FileCheckpoint(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    writable("checkpoint");
    TensorFile* f = file_or_throw("checkpoint");
    const size_t compact_bytes = size_arg(info, 0, "compactBytes", 0, 9007199254740991.0);
    const size_t compact_rows = size_arg(info, 1, "compactRows", 0, 9007199254740991.0);
    const uint64_t gs = optimizer_ ? optimizer_->steps() : f->global_step();
    const double ld = optimizer_ ? optimizer_->log_decay() : f->log_decay();
    const uint64_t seq = f->checkpoint(*merkle_, gs, ld, compact_bytes, compact_rows);
    return Napi::Number::New(info.Env(), static_cast<double>(seq));
  });
}

// fileCheckpointAsync(compactBytes, compactRows, forceCompact) -> Promise<sequence number>
Napi::Value TensorBinding::FileCheckpointAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("checkpoint");
    TensorFile* f = file_or_throw("checkpoint");
    if (f->closed()) throw Error(ErrorCode::Storage, "CLOSED: the tensor file was closed");
    const size_t compact_bytes = size_arg(info, 0, "compactBytes", 0, 9007199254740991.0);
    const size_t compact_rows = size_arg(info, 1, "compactRows", 0, 9007199254740991.0);
    const bool force = info.Length() > 2 && info[2].ToBoolean().Value();
    const uint64_t gs = optimizer_ ? optimizer_->steps() : f->global_step();
    const double ld = optimizer_ ? optimizer_->log_decay() : f->log_decay();
    auto* w = new CheckpointWorker(info.Env(), this, info.This().As<Napi::Object>(), t, *f, *merkle_, gs, ld,
                                   compact_bytes, compact_rows, force);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// fileCompact(): checkpoint, then apply the log to the main file.
Napi::Value TensorBinding::FileCompact(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    writable("compact");
    TensorFile* f = file_or_throw("compact");
    const uint64_t gs = optimizer_ ? optimizer_->steps() : f->global_step();
    const double ld = optimizer_ ? optimizer_->log_decay() : f->log_decay();
    f->checkpoint(*merkle_, gs, ld, 0);
    f->compact(false);
    return info.Env().Undefined();
  });
}

// fileClose(): checkpoint, compact, mark clean; the tensor is unusable afterwards.
Napi::Value TensorBinding::FileClose(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    TensorFile* f = file_or_throw("close");
    if (f->closed()) return info.Env().Undefined();
    writable("close");
    if (f->info().writable) {
      const uint64_t gs = optimizer_ ? optimizer_->steps() : f->global_step();
      const double ld = optimizer_ ? optimizer_->log_decay() : f->log_decay();
      f->checkpoint(*merkle_, gs, ld, 0);
    }
    f->close();
    release_file_tensor();
    return info.Env().Undefined();
  });
}

void TensorBinding::release_file_tensor() {
  const size_t dim = tensor_->dim();
  optimizer_.reset();
  hnsw_.reset();
  merkle_.reset();
  view_buffer_.Reset();
  view_storage_.reset();
  // Row views keep the mapping alive through their own reference; the tensor lets go.
  tensor_ = std::make_unique<SparseTensor>(dim, 0);
}

Napi::Value TensorBinding::FileInfoJs(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    if (!file_) return info.Env().Null();
    if (!file_->closed()) usable();  // not while an asynchronous checkpoint runs
    const FileInfo i = file_->info();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("seq", static_cast<double>(i.seq));
    o.Set("compactedSeq", static_cast<double>(i.compacted_seq));
    o.Set("walBytes", static_cast<double>(i.wal_bytes));
    o.Set("pendingRows", static_cast<double>(i.pending_rows));
    o.Set("uncompactedRows", static_cast<double>(i.uncompacted_rows));
    o.Set("replayedRecords", static_cast<double>(i.replayed_records));
    o.Set("wasClean", i.was_clean);
    o.Set("verified", i.verified);
    o.Set("writable", i.writable);
    o.Set("optimizerState", i.has_state);
    o.Set("formatVersion", static_cast<double>(i.format_version));
    o.Set("rowsChecked", static_cast<double>(i.rows_checked));
    o.Set("closed", file_->closed());
    return o;
  });
}

}  // namespace gt
