#include "tensor_binding.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "../core/kernels.h"
#include "napi_util.h"
#include "../core/parallel.h"
#include "../core/search.h"
#include "tensor_worker.h"

namespace gt {

namespace {

const napi_type_tag kTensorTag = {0x67686f737454656eULL, 0x736f724e61746976ULL};  // "ghostTen" "sorNativ"
constexpr double kMaxRowsD = static_cast<double>(SparseTensor::kMaxRows);
constexpr double kMaxDimD = static_cast<double>(SparseTensor::kMaxDim);

struct SearchRequest {
  Metric metric = Metric::IP;
  SimdLevel level = SimdLevel::Scalar;
  size_t k = 0;
  size_t nq = 0;
  size_t threads = 1;
};

// Checks queries against the tensor (non-empty, length, finite); returns their count.
size_t check_queries(const SparseTensor& t, const ArrayArg<float>& q, bool batch) {
  if (t.size() == 0) throw Error(ErrorCode::OutOfRange, "search on an empty tensor (no patterns)");
  if (batch && q.length % t.dim() != 0)
    throw Error(ErrorCode::InvalidArgument, "queries length " + std::to_string(q.length) +
                                                " is not a multiple of dim " + std::to_string(t.dim()));
  if (!batch && q.length != t.dim())
    throw Error(ErrorCode::InvalidArgument, "query length " + std::to_string(q.length) + " does not match dim " +
                                                std::to_string(t.dim()));
  const size_t bad = first_non_finite(q.data, q.length);
  if (bad != q.length)
    throw Error(ErrorCode::NonFinite, std::string(batch ? "queries" : "query") + "[" + std::to_string(bad) +
                                          "] is not finite");
  return q.length / t.dim();
}

// Validates (queries, k, metric, level[, threads]) against the tensor.
SearchRequest parse_search(const Napi::CallbackInfo& info, const SparseTensor& t,
                           const ArrayArg<float>& q, bool batch) {
  SearchRequest r;
  r.nq = check_queries(t, q, batch);
  r.k = size_arg(info, 1, "k", 1, static_cast<double>(t.size()));
  r.metric = metric_arg(info, 2);
  r.level = level_arg(info, 3);
  if (batch) r.threads = threads_arg(info, 4);
  return r;
}

Napi::Object result_object(Napi::Env env, const std::vector<uint32_t>& ids, const std::vector<float>& scores) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Uint32Array idv = Napi::Uint32Array::New(env, ids.size());
  Napi::Float32Array sv = Napi::Float32Array::New(env, scores.size());
  std::copy(ids.begin(), ids.end(), idv.Data());
  std::copy(scores.begin(), scores.end(), sv.Data());
  out.Set("ids", idv);
  out.Set("scores", sv);
  return out;
}

ExactSearchArgs search_args(const float* data, size_t n, size_t d, const SearchRequest& r, const float* queries) {
  ExactSearchArgs a;
  a.data = data;
  a.n = n;
  a.d = d;
  a.queries = queries;
  a.nq = r.nq;
  a.k = r.k;
  a.metric = r.metric;
  a.threads = r.threads;
  a.kernels = &kernels_for(r.level);
  return a;
}

class SearchWorker : public TensorWorker {
 public:
  SearchWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t,
               const SearchRequest& r, const float* queries)
      : TensorWorker(env, "ghost-tensor:search", owner, owner_obj, t),
        req_(r),
        queries_(queries, queries + r.nq * t.dim()),
        ids_(r.nq * r.k),
        scores_(r.nq * r.k) {}

 private:
  void Run() override {
    check_all_rows();  // a scan reads every row
    exact_search(search_args(storage_->data(), n_, d_, req_, queries_.data()), ids_.data(), scores_.data());
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override { return result_object(env, ids_, scores_); }

  SearchRequest req_;
  std::vector<float> queries_;  // copied: JavaScript may reuse its buffer meanwhile
  std::vector<uint32_t> ids_;
  std::vector<float> scores_;
};

class CommitWorker : public TensorWorker {
 public:
  CommitWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t, size_t threads)
      : TensorWorker(env, "ghost-tensor:commit", owner, owner_obj, t), threads_(threads) {}

 private:
  void Run() override { levels_ = build_merkle_levels(storage_->data(), n_, d_, threads_); }
  Napi::Value Settle(Napi::Env env, TensorBinding& owner) override {
    owner.install_merkle(std::move(levels_));
    return env.Undefined();
  }

  size_t threads_;
  MerkleLevels levels_;
};


HnswParams hnsw_params(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsObject())
    throw Error(ErrorCode::InvalidArgument, "HNSW options must be an object");
  Napi::Object o = info[index].As<Napi::Object>();
  HnswParams p;
  auto num = [&](const char* key, double lo, double hi, double fallback) -> double {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return fallback;
    if (!v.IsNumber()) throw Error(ErrorCode::InvalidArgument, std::string(key) + " must be a number");
    const double x = v.As<Napi::Number>().DoubleValue();
    if (!(x >= lo && x <= hi)) throw Error(ErrorCode::OutOfRange, std::string(key) + " is out of range");
    return x;
  };
  Napi::Value m = o.Get("metric");
  if (!m.IsString() || !parse_metric(m.As<Napi::String>().Utf8Value(), &p.metric))
    throw Error(ErrorCode::InvalidArgument, "metric must be 'ip', 'cosine' or 'l2'");
  p.M = static_cast<size_t>(num("M", 2, 256, 16));
  p.ef_construction = static_cast<size_t>(num("efConstruction", 1, 100000, 200));
  p.seed = static_cast<size_t>(num("seed", 0, 4294967295.0, 100));
  p.drift_threshold = static_cast<float>(num("driftThreshold", 0, 1e30, 0.05));
  p.max_dirty = static_cast<size_t>(num("maxDirty", 0, 4294967295.0, 0));
  p.neighbor_update_probability = static_cast<float>(num("neighborUpdateProbability", 0, 1, 0));
  return p;
}

class HnswBuildWorker : public TensorWorker {
 public:
  HnswBuildWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, SparseTensor& t, const HnswParams& p,
                  size_t threads)
      : TensorWorker(env, "ghost-tensor:hnsw-build", owner, owner_obj, t), tensor_(t), params_(p), threads_(threads) {}

 private:
  // Writes are refused while this runs, so building (and registering as a listener)
  // here cannot race with the JavaScript thread.
  void Run() override { index_ = std::make_unique<HnswIndex>(tensor_, params_, threads_); }
  Napi::Value Settle(Napi::Env env, TensorBinding& owner) override {
    owner.install_hnsw(std::move(index_));
    return env.Undefined();
  }
  SparseTensor& tensor_;
  HnswParams params_;
  size_t threads_;
  std::unique_ptr<HnswIndex> index_;
};

class HnswSearchWorker : public TensorWorker {
 public:
  HnswSearchWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t,
                   const HnswIndex& index, const SearchRequest& r, size_t ef, const float* queries)
      : TensorWorker(env, "ghost-tensor:hnsw-search", owner, owner_obj, t),
        index_(index),
        req_(r),
        ef_(ef),
        queries_(queries, queries + r.nq * t.dim()),
        ids_(r.nq * r.k),
        scores_(r.nq * r.k) {}

 private:
  void Run() override { index_.search_batch(queries_.data(), req_.nq, req_.k, ef_, req_.threads, ids_.data(), scores_.data()); }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override { return result_object(env, ids_, scores_); }
  const HnswIndex& index_;  // kept alive: the index is not replaced while the tensor is busy
  SearchRequest req_;
  size_t ef_;
  std::vector<float> queries_;
  std::vector<uint32_t> ids_;
  std::vector<float> scores_;
};

class HnswRefreshWorker : public TensorWorker {
 public:
  HnswRefreshWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t,
                    HnswIndex& index, size_t budget, size_t threads)
      : TensorWorker(env, "ghost-tensor:hnsw-refresh", owner, owner_obj, t),
        index_(index),
        budget_(budget),
        threads_(threads) {}

 private:
  void Run() override { done_ = index_.refresh(budget_, threads_); }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override { return Napi::Number::New(env, static_cast<double>(done_)); }
  HnswIndex& index_;
  size_t budget_, threads_, done_ = 0;
};

}  // namespace

void TensorBinding::install_hnsw(std::unique_ptr<HnswIndex> index) {
  hnsw_.reset();
  hnsw_ = std::move(index);
}

HnswIndex& TensorBinding::hnsw() {
  usable();
  if (!hnsw_) throw Error(ErrorCode::InvalidArgument, "the tensor has no HNSW index: call buildHnsw() first");
  return *hnsw_;
}

// hnswBuildAsync(options, threads?)
Napi::Value TensorBinding::HnswBuildAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("buildHnsw");
    const HnswParams p = hnsw_params(info, 0);
    auto* worker = new HnswBuildWorker(info.Env(), this, info.This().As<Napi::Object>(), t, p, threads_arg(info, 1));
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  });
}

// hnswLoad(path, options)
Napi::Value TensorBinding::HnswLoad(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("loadHnsw");
    if (info.Length() < 1 || !info[0].IsString()) throw Error(ErrorCode::InvalidArgument, "path must be a string");
    const HnswParams p = hnsw_params(info, 1);
    install_hnsw(std::make_unique<HnswIndex>(t, p, info[0].As<Napi::String>().Utf8Value()));
    return info.Env().Undefined();
  });
}

// hnswSave(path): refreshes every dirty row first (a write to the graph).
Napi::Value TensorBinding::HnswSave(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    writable("saveHnsw");
    if (info.Length() < 1 || !info[0].IsString()) throw Error(ErrorCode::InvalidArgument, "path must be a string");
    hnsw().save(info[0].As<Napi::String>().Utf8Value(), default_threads());
    return info.Env().Undefined();
  });
}

Napi::Value TensorBinding::HnswStatsJs(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    if (!hnsw_) return info.Env().Null();
    const HnswStats st = hnsw_->stats();
    const HnswParams& p = hnsw_->params();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("metric", metric_name(p.metric));
    o.Set("M", static_cast<double>(p.M));
    o.Set("efConstruction", static_cast<double>(p.ef_construction));
    o.Set("driftThreshold", static_cast<double>(p.drift_threshold));
    o.Set("inGraph", static_cast<double>(st.in_graph));
    o.Set("dirty", static_cast<double>(st.dirty));
    o.Set("refreshed", static_cast<double>(st.refreshed));
    return o;
  });
}

namespace {
// Default candidate list: recall@10 >= 0.975 on 20k random unit vectors of d = 32
// (0.94 at 64), see test/hnsw.test.ts.
constexpr size_t kDefaultEf = 128;

size_t ef_arg(const Napi::CallbackInfo& info, size_t index, size_t k) {
  const size_t ef = info.Length() > index && !info[index].IsUndefined() ? size_arg(info, index, "ef", 1, 1e6)
                                                                         : std::max<size_t>(kDefaultEf, k);
  if (ef < k) throw Error(ErrorCode::OutOfRange, "ef must be >= k (" + std::to_string(k) + "), got " + std::to_string(ef));
  return ef;
}
}  // namespace

// hnswSearch(query, k, ef?) -> { ids, scores }; the metric is the index's.
Napi::Value TensorBinding::HnswSearch(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    HnswIndex& index = hnsw();
    const ArrayArg<float> q = f32_arg(info, 0, "query");
    check_queries(t, q, false);
    const size_t k = size_arg(info, 1, "k", 1, static_cast<double>(t.size()));
    const size_t ef = ef_arg(info, 2, k);
    if (index.refreshing()) throw Error(ErrorCode::Busy, "an HNSW refresh is running; await it first");
    std::vector<uint32_t> ids(k);
    std::vector<float> scores(k);
    index.search(q.data, k, ef, ids.data(), scores.data());
    return result_object(info.Env(), ids, scores);
  });
}

// hnswSearchBatchAsync(queries, k, ef?, threads?) -> Promise<{ ids, scores }>
Napi::Value TensorBinding::HnswSearchBatchAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    HnswIndex& index = hnsw();
    const ArrayArg<float> q = f32_arg(info, 0, "queries");
    SearchRequest r;
    r.nq = check_queries(t, q, true);
    r.k = size_arg(info, 1, "k", 1, static_cast<double>(t.size()));
    const size_t ef = ef_arg(info, 2, r.k);
    r.threads = threads_arg(info, 3);
    auto* worker = new HnswSearchWorker(info.Env(), this, info.This().As<Napi::Object>(), t, index, r, ef, q.data);
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  });
}

// hnswRefresh(budget, threads?) -> rows re-linked
Napi::Value TensorBinding::HnswRefresh(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    writable("refreshHnsw");
    const size_t budget = size_arg(info, 0, "budget", 0, 4294967295.0);
    return Napi::Number::New(info.Env(), static_cast<double>(hnsw().refresh(budget, threads_arg(info, 1))));
  });
}

Napi::Value TensorBinding::HnswRefreshAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("refreshHnsw");
    const size_t budget = size_arg(info, 0, "budget", 0, 4294967295.0);
    auto* worker = new HnswRefreshWorker(info.Env(), this, info.This().As<Napi::Object>(), t, hnsw(), budget,
                                         threads_arg(info, 1));
    Napi::Promise promise = worker->promise();
    worker->Queue();
    return promise;
  });
}

void TensorBinding::install_merkle(MerkleLevels&& levels) {
  merkle_.reset();
  merkle_ = std::make_unique<MerkleTree>(*tensor_, std::move(levels));
}

// commit(threads?): builds the Merkle tree now (on this thread's time, spread over
// workers); from then on every write keeps it current.
Napi::Value TensorBinding::Commit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("commit");
    const size_t threads = threads_arg(info, 0);
    if (file_) return info.Env().Undefined();  // a file tensor's tree lives in the file, always current
    install_merkle(build_merkle_levels(t.data(), t.size(), t.dim(), threads));
    return info.Env().Undefined();
  });
}

Napi::Value TensorBinding::CommitAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("commit");
    if (file_) {  // a file tensor's tree lives in the file, always current
      auto d = Napi::Promise::Deferred::New(info.Env());
      d.Resolve(info.Env().Undefined());
      return d.Promise();
    }
    auto* worker = new CommitWorker(info.Env(), this, info.This().As<Napi::Object>(), t, threads_arg(info, 0));
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  });
}

Napi::Value TensorBinding::IsCommitted(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), merkle_ != nullptr);
}

Napi::Value TensorBinding::Root(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    usable();
    if (!merkle_) throw Error(ErrorCode::InvalidArgument, "the tensor is not committed: call commit() first");
    return hash_to_js(info.Env(), merkle_->root());
  });
}

// prove(ids: sorted unique Uint32Array) -> Uint8Array of 32-byte proof hashes
Napi::Value TensorBinding::Prove(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    usable();
    if (!merkle_) throw Error(ErrorCode::InvalidArgument, "the tensor is not committed: call commit() first");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    const std::vector<Hash> proof = merkle_->prove(ids.data, ids.length);
    // The proof's siblings come from the stored tree: the rows' paths must be checked.
    tensor_->check_rows(ids.data, ids.length);
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), proof.size() * 32);
    for (size_t i = 0; i < proof.size(); ++i) std::copy(proof[i].begin(), proof[i].end(), out.Data() + i * 32);
    return out;
  });
}

Napi::Function TensorBinding::Init(Napi::Env env) {
  return DefineClass(env, "NativeTensor",
                     {
                         InstanceMethod<&TensorBinding::Size>("size"),
                         InstanceMethod<&TensorBinding::Dim>("dim"),
                         InstanceMethod<&TensorBinding::Capacity>("capacity"),
                         InstanceMethod<&TensorBinding::IsAdopted>("isAdopted"),
                         InstanceMethod<&TensorBinding::Reserve>("reserve"),
                         InstanceMethod<&TensorBinding::Append>("append"),
                         InstanceMethod<&TensorBinding::RowView>("rowView"),
                         InstanceMethod<&TensorBinding::Gather>("gather"),
                         InstanceMethod<&TensorBinding::Set>("set"),
                         InstanceMethod<&TensorBinding::Add>("add"),
                         InstanceMethod<&TensorBinding::Search>("search"),
                         InstanceMethod<&TensorBinding::SearchBatch>("searchBatch"),
                         InstanceMethod<&TensorBinding::SearchBatchAsync>("searchBatchAsync"),
                         InstanceMethod<&TensorBinding::Commit>("commit"),
                         InstanceMethod<&TensorBinding::CommitAsync>("commitAsync"),
                         InstanceMethod<&TensorBinding::IsCommitted>("isCommitted"),
                         InstanceMethod<&TensorBinding::Root>("root"),
                         InstanceMethod<&TensorBinding::Prove>("prove"),
                         InstanceMethod<&TensorBinding::HnswBuildAsync>("hnswBuildAsync"),
                         InstanceMethod<&TensorBinding::HnswLoad>("hnswLoad"),
                         InstanceMethod<&TensorBinding::HnswSave>("hnswSave"),
                         InstanceMethod<&TensorBinding::HnswStatsJs>("hnswStats"),
                         InstanceMethod<&TensorBinding::HnswSearch>("hnswSearch"),
                         InstanceMethod<&TensorBinding::HnswSearchBatchAsync>("hnswSearchBatchAsync"),
                         InstanceMethod<&TensorBinding::HnswRefresh>("hnswRefresh"),
                         InstanceMethod<&TensorBinding::HnswRefreshAsync>("hnswRefreshAsync"),
                         InstanceMethod<&TensorBinding::OptimInit>("optimInit"),
                         InstanceMethod<&TensorBinding::OptimStep>("optimStep"),
                         InstanceMethod<&TensorBinding::OptimStepAsync>("optimStepAsync"),
                         InstanceMethod<&TensorBinding::OptimCheck>("optimCheck"),
                         InstanceMethod<&TensorBinding::OptimDetach>("optimDetach"),
                         InstanceMethod<&TensorBinding::OptimState>("optimState"),
                         InstanceMethod<&TensorBinding::OptimRestore>("optimRestore"),
                         InstanceMethod<&TensorBinding::OptimSetLr>("optimSetLr"),
                         InstanceMethod<&TensorBinding::OptimInfo>("optimInfo"),
                         InstanceMethod<&TensorBinding::DenseHopfieldForwardAsync>("denseHopfieldForwardAsync"),
                         InstanceMethod<&TensorBinding::DenseHopfieldBackwardAsync>("denseHopfieldBackwardAsync"),
                         InstanceMethod<&TensorBinding::ProductKeySearchAsync>("productKeySearchAsync"),
                         InstanceMethod<&TensorBinding::SaveFileAsync>("saveFileAsync"),
                         InstanceMethod<&TensorBinding::FileCheckpoint>("fileCheckpoint"),
                         InstanceMethod<&TensorBinding::FileCheckpointAsync>("fileCheckpointAsync"),
                         InstanceMethod<&TensorBinding::FileCompact>("fileCompact"),
                         InstanceMethod<&TensorBinding::FileClose>("fileClose"),
                         InstanceMethod<&TensorBinding::FileInfoJs>("fileInfo"),
                     });
}

// new NativeTensor(dim, capacity) or new NativeTensor(dim, data: Float32Array, adopt: boolean)
TensorBinding::TensorBinding(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorBinding>(info) {
  guard(info, [&]() -> Napi::Value {
    // Tagged so that from_value() can tell a NativeTensor from any other object.
    if (napi_type_tag_object(info.Env(), info.This(), &kTensorTag) != napi_ok)
      throw std::runtime_error("cannot tag the NativeTensor object");
    if (info.Length() > 0 && info[0].IsExternal()) {
      adopt_file(info[0]);
      return info.Env().Undefined();
    }
    const size_t dim = size_arg(info, 0, "dim", 1, kMaxDimD);
    if (info.Length() > 1 && info[1].IsTypedArray()) {
      const ArrayArg<float> data = f32_arg(info, 1, "data");
      if (data.length % dim != 0)
        throw Error(ErrorCode::InvalidArgument, "data length " + std::to_string(data.length) +
                                                    " is not a multiple of dim " + std::to_string(dim));
      const size_t rows = data.length / dim;
      if (rows > SparseTensor::kMaxRows)
        throw Error(ErrorCode::OutOfRange, "data holds more than 2^32-1 patterns");
      const size_t bad = first_non_finite(data.data, data.length);
      if (bad != data.length)
        throw Error(ErrorCode::NonFinite, "data[" + std::to_string(bad) + "] is not finite");
      const bool adopt = info.Length() > 2 && info[2].ToBoolean().Value();
      if (adopt) {
        Napi::TypedArray arr = info[1].As<Napi::TypedArray>();
        tensor_ = std::make_unique<SparseTensor>(dim, rows, Storage::adopt(data.data, rows, nullptr));
        adopted_ = Napi::Persistent(arr.ArrayBuffer());
        adopted_offset_ = arr.ByteOffset();
      } else {
        tensor_ = std::make_unique<SparseTensor>(dim, rows);
        tensor_->append(data.data, rows);
      }
    } else {
      const size_t capacity = info.Length() > 1 && !info[1].IsUndefined()
                                  ? size_arg(info, 1, "capacity", 0, kMaxRowsD)
                                  : 0;
      tensor_ = std::make_unique<SparseTensor>(dim, capacity);
    }
    return info.Env().Undefined();
  });
}

TensorBinding* TensorBinding::from_value(const Napi::Value& v, const char* name) {
  bool ok = false;
  if (v.IsObject() && napi_check_object_type_tag(v.Env(), v, &kTensorTag, &ok) == napi_ok && ok)
    return Napi::ObjectWrap<TensorBinding>::Unwrap(v.As<Napi::Object>());
  throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a SparseTensor");
}

SparseTensor& TensorBinding::present() {
  if (file_ && file_->closed()) throw Error(ErrorCode::Storage, "CLOSED: the tensor file was closed");
  if (!adopted_.IsEmpty() && adopted_.Value().IsDetached())
    throw Error(ErrorCode::Detached, "the adopted Float32Array's buffer was detached (transferred)");
  return *tensor_;
}

SparseTensor& TensorBinding::usable() {
  SparseTensor& t = present();
  if (writing_ > 0) throw Error(ErrorCode::Busy, "an asynchronous optimizer step is writing the tensor; await it first");
  return t;
}

SparseTensor& TensorBinding::writable(const char* op) {
  SparseTensor& t = usable();
  if (busy_ > 0)
    throw Error(ErrorCode::Busy, std::string(op) + " while an asynchronous search reads the tensor; await it first");
  return t;
}

void TensorBinding::after_write() {
  if (!adopted_.IsEmpty() && tensor_->storage()->owned()) {
    adopted_.Reset();  // growth copied the rows into owned storage: adoption is over
    adopted_offset_ = 0;
  }
}

Napi::Value TensorBinding::Size(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), static_cast<double>(present().size())); });
}
Napi::Value TensorBinding::Dim(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(tensor_->dim()));
}
Napi::Value TensorBinding::Capacity(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return Napi::Number::New(info.Env(), static_cast<double>(present().capacity())); });
}
Napi::Value TensorBinding::IsAdopted(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !adopted_.IsEmpty());
}

Napi::Value TensorBinding::Reserve(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("reserve");
    t.reserve(size_arg(info, 0, "capacity", 0, kMaxRowsD));
    after_write();
    return info.Env().Undefined();
  });
}

Napi::Value TensorBinding::Append(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("append");
    const ArrayArg<float> rows = f32_arg(info, 0, "rows");
    if (rows.length % t.dim() != 0)
      throw Error(ErrorCode::InvalidArgument, "rows length " + std::to_string(rows.length) +
                                                  " is not a multiple of dim " + std::to_string(t.dim()));
    const size_t first = t.size();
    t.append(rows.data, rows.length / t.dim());
    after_write();
    return Napi::Number::New(info.Env(), static_cast<double>(first));
  });
}

Napi::Value TensorBinding::RowView(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    if (t.size() == 0) throw Error(ErrorCode::OutOfRange, "id is out of range: the tensor is empty");
    const size_t id = size_arg(info, 0, "id", 0, static_cast<double>(t.size() - 1));
    const uint32_t id32 = static_cast<uint32_t>(id);
    t.check_rows(&id32, 1);
    Napi::Env env = info.Env();
    const size_t bytes_per_row = t.dim() * sizeof(float);
    if (!adopted_.IsEmpty())
      return Napi::Float32Array::New(env, t.dim(), adopted_.Value(), adopted_offset_ + id * bytes_per_row);
    const std::shared_ptr<Storage>& s = t.storage();
    if (view_storage_ != s || view_buffer_.IsEmpty() || view_buffer_.Value().IsDetached()) {
      // One external buffer per storage generation; its finalizer holds the storage,
      // so a view stays valid (frozen) after the tensor grows into new storage.
      auto* keep = new std::shared_ptr<Storage>(s);
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
          env, s->data(), s->capacity_rows() * bytes_per_row,
          [](Napi::Env, void*, std::shared_ptr<Storage>* hint) { delete hint; }, keep);
      view_buffer_ = Napi::Persistent(ab);
      view_storage_ = s;
    }
    return Napi::Float32Array::New(env, t.dim(), view_buffer_.Value(), id * bytes_per_row);
  });
}

Napi::Value TensorBinding::Gather(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), ids.length * t.dim());
    t.gather(ids.data, ids.length, out.Data());
    return out;
  });
}

namespace {
void check_rows_for_ids(const SparseTensor& t, const ArrayArg<uint32_t>& ids, const ArrayArg<float>& v,
                        const char* vname) {
  if (v.length != ids.length * t.dim())
    throw Error(ErrorCode::InvalidArgument, std::string(vname) + " length " + std::to_string(v.length) +
                                                " must be ids.length * dim = " +
                                                std::to_string(ids.length * t.dim()));
}
}  // namespace

Napi::Value TensorBinding::Set(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("set");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    const ArrayArg<float> values = f32_arg(info, 1, "values");
    check_rows_for_ids(t, ids, values, "values");
    t.set(ids.data, ids.length, values.data);
    return info.Env().Undefined();
  });
}

Napi::Value TensorBinding::Add(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("add");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    const ArrayArg<float> deltas = f32_arg(info, 1, "deltas");
    check_rows_for_ids(t, ids, deltas, "deltas");
    t.add(ids.data, ids.length, deltas.data);
    return info.Env().Undefined();
  });
}

// search(query, k, metric, level?) -> { ids, scores }
Napi::Value TensorBinding::Search(const Napi::CallbackInfo& info) { return search_now(info, false); }

// searchBatch(queries, k, metric, level?, threads?) -> { ids, scores } (nq * k each)
Napi::Value TensorBinding::SearchBatch(const Napi::CallbackInfo& info) { return search_now(info, true); }

Napi::Value TensorBinding::search_now(const Napi::CallbackInfo& info, bool batch) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    const ArrayArg<float> q = f32_arg(info, 0, batch ? "queries" : "query");
    const SearchRequest r = parse_search(info, t, q, batch);
    std::vector<uint32_t> ids(r.nq * r.k);
    std::vector<float> scores(r.nq * r.k);
    t.check_all_rows();  // a scan reads every row
    exact_search(search_args(t.data(), t.size(), t.dim(), r, q.data), ids.data(), scores.data());
    return result_object(info.Env(), ids, scores);
  });
}

Napi::Value TensorBinding::SearchBatchAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    const ArrayArg<float> q = f32_arg(info, 0, "queries");
    const SearchRequest r = parse_search(info, t, q, true);
    auto* worker = new SearchWorker(info.Env(), this, info.This().As<Napi::Object>(), t, r, q.data);
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  });
}

}  // namespace gt
