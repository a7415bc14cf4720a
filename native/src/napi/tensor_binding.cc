// NativeTensor, the JavaScript class over gt::SparseTensor: every method of the class,
// in three parts: rows, search, Merkle commitment and HNSW; training (the sparse
// optimizer beside the values, the dense Hopfield baseline, product-key search); the
// tensor file behind a file-backed tensor. The asynchronous methods check their
// arguments here and queue a job of tensor_jobs.h.
#include "tensor_binding.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../core/dense_hopfield.h"
#include "../core/kernels.h"
#include "../core/parallel.h"
#include "../core/product_keys.h"
#include "../core/search.h"
#include "../core/tensor_file.h"
#include "async_job.h"
#include "file_binding.h"
#include "napi_util.h"
#include "tensor_jobs.h"

namespace gt {

namespace {

const napi_type_tag kTensorTag = {0x67686f737454656eULL, 0x736f724e61746976ULL};  // "ghostTen" "sorNativ"
constexpr double kMaxRowsD = static_cast<double>(SparseTensor::kMaxRows);
constexpr double kMaxDimD = static_cast<double>(SparseTensor::kMaxDim);

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
  r.threads = threads_arg(info, 4);  // one query too: its rows split across the scan pool
  return r;
}

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
  p.drift_threshold = static_cast<float>(num("driftThreshold", 0, 1e30, 0.1));
  p.max_dirty = static_cast<size_t>(num("maxDirty", 0, 4294967295.0, 0));
  p.neighbor_update_probability = static_cast<float>(num("neighborUpdateProbability", 0, 1, 0));
  p.relink_ef = static_cast<size_t>(num("relinkEf", 0, 100000, 64));
  Napi::Value r = o.Get("relink");
  if (!r.IsUndefined()) {
    const std::string mode = r.IsString() ? r.As<Napi::String>().Utf8Value() : std::string();
    if (mode == "repair") p.relink = HnswParams::Relink::Repair;
    else if (mode == "hnswlib") p.relink = HnswParams::Relink::Hnswlib;
    else throw Error(ErrorCode::InvalidArgument, "relink must be 'repair' or 'hnswlib'");
  }
  return p;
}

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
    return queue(std::make_unique<HnswBuildWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, p,
                                                   threads_arg(info, 1)));
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
    o.Set("relinkEf", static_cast<double>(p.relink_ef));
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
    return queue(std::make_unique<HnswSearchWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, index, r, ef,
                                                    q.data));
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
    return queue(std::make_unique<HnswRefreshWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, hnsw(),
                                                     budget, threads_arg(info, 1)));
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
    return queue(
        std::make_unique<CommitWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, threads_arg(info, 0)));
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
                         InstanceMethod<&TensorBinding::NormCacheInfo>("normCacheInfo"),
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
  if (file_ && file_->closed()) throw StorageError(StorageReason::Closed, "the tensor file was closed");
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
    const size_t want = ids.length * t.dim();
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      // gather(ids, into): the rows written into a caller's array (a pooled one: no fresh,
      // zeroed memory per call), which must hold exactly the rows and overlap neither the
      // tensor's own storage (a row view: the copy would overwrite rows it reads) nor ids.
      const ArrayArg<float> into = f32_arg(info, 1, "into");
      if (into.length != want)
        throw Error(ErrorCode::InvalidArgument, "into has length " + std::to_string(into.length) +
                                                    ", expected ids.length * dim = " + std::to_string(want));
      const auto lo = reinterpret_cast<std::uintptr_t>(t.data());
      const auto hi = lo + t.capacity() * t.dim() * sizeof(float);
      const auto a = reinterpret_cast<std::uintptr_t>(into.data);
      if (want > 0 && a < hi && a + want * sizeof(float) > lo)
        throw Error(ErrorCode::InvalidArgument, "into overlaps the tensor's own rows");
      // Nor the ids (checked once, then read while rows are written).
      const auto ia = reinterpret_cast<std::uintptr_t>(ids.data);
      if (want > 0 && a < ia + ids.length * sizeof(uint32_t) && a + want * sizeof(float) > ia)
        throw Error(ErrorCode::InvalidArgument, "into overlaps ids");
      t.gather(ids.data, ids.length, into.data);
      return info[1];
    }
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), want);
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

// search(query, k, metric, level?, threads?) -> { ids, scores }
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
    t.check_all_rows();  // a scan reads every row (and so do the norms)
    ExactSearchArgs a = search_args(t.data(), t.size(), t.dim(), r, q.data);
    const std::shared_ptr<const std::vector<float>> norms = cached_norms(t.norm_cache(), t.version(), a);
    if (norms) a.row_norm2 = norms->data();
    exact_search(a, ids.data(), scores.data());
    return result_object(info.Env(), ids, scores);
  });
}

// normCacheInfo() -> { version, fills } (tests: the write version, and how often the
// exact cosine scan's row norms were computed; fills is -1 where no cache is kept).
Napi::Value TensorBinding::NormCacheInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    Napi::Object o = Napi::Object::New(info.Env());
    const std::shared_ptr<RowNormCache> c = t.norm_cache();
    o.Set("version", Napi::Number::New(info.Env(), static_cast<double>(t.version())));
    o.Set("fills", Napi::Number::New(info.Env(), c ? static_cast<double>(c->fills()) : -1.0));
    return o;
  });
}

Napi::Value TensorBinding::SearchBatchAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    const ArrayArg<float> q = f32_arg(info, 0, "queries");
    const SearchRequest r = parse_search(info, t, q, true);
    return queue(std::make_unique<SearchWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, r, q.data));
  });
}

// ---- Training: the sparse optimizer beside the values, the dense Hopfield baseline,
// product-key search.

namespace {

OptimizerParams optimizer_params(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsObject())
    throw Error(ErrorCode::InvalidArgument, "optimizer options must be an object");
  Napi::Object o = info[index].As<Napi::Object>();
  OptimizerParams p;
  auto num = [&](const char* key, double fallback) -> float {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return static_cast<float>(fallback);
    if (!v.IsNumber()) throw Error(ErrorCode::InvalidArgument, std::string(key) + " must be a number");
    const double x = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(x)) throw Error(ErrorCode::OutOfRange, std::string(key) + " must be finite");
    return static_cast<float>(x);
  };
  Napi::Value kind = o.Get("kind");
  const std::string k = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : "";
  if (k == "adam") p.kind = OptimizerKind::Adam;
  else if (k == "sgd") p.kind = OptimizerKind::SGD;
  else throw Error(ErrorCode::InvalidArgument, "optimizer kind must be 'adam' or 'sgd'");
  p.lr = num("lr", k == "adam" ? 1e-3 : 1e-2);
  p.beta1 = num("beta1", 0.9);
  p.beta2 = num("beta2", 0.999);
  p.eps = num("eps", 1e-8);
  p.weight_decay = num("weightDecay", 0.0);
  Napi::Value bias = o.Get("biasCorrection");
  const std::string b = bias.IsUndefined() ? "row" : (bias.IsString() ? bias.As<Napi::String>().Utf8Value() : "");
  if (b == "row") p.row_step = true;
  else if (b == "global") p.row_step = false;
  else throw Error(ErrorCode::InvalidArgument, "biasCorrection must be 'row' or 'global'");
  check_optimizer_params(p);
  return p;
}

float finite_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (index >= info.Length() || !info[index].IsNumber())
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a number");
  const double x = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x)) throw Error(ErrorCode::OutOfRange, std::string(name) + " must be finite");
  return static_cast<float>(x);
}

}  // namespace

// optimStepAsync(ids, grads) -> Promise<distinct rows touched>
Napi::Value TensorBinding::OptimStepAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    ArrayArg<uint32_t> ids;
    ArrayArg<float> grads;
    SparseOptimizer& opt = step_args(info, &ids, &grads);
    SparseTensor& t = *tensor_;
    t.check_ids(ids.data, ids.length, "ids");
    return queue(std::make_unique<OptimStepWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, opt, ids, grads,
                                                   file_.get()));
  });
}

// productKeySearchAsync(keys2, queries, k, threads?) -> Promise<{ ids: Uint32Array, scores: Float64Array }>
// This tensor is sub-key table 1; slots are i * n + j.
Napi::Value TensorBinding::ProductKeySearchAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& k1 = usable();
    TensorBinding* b2 = TensorBinding::from_value(info[0], "keys2");
    SparseTensor& k2 = b2->usable();
    if (k1.size() == 0 || k1.size() != k2.size())
      throw Error(ErrorCode::InvalidArgument, "the sub-key tables must be non-empty and of the same length");
    if (k1.size() > 65535) throw Error(ErrorCode::OutOfRange, "more than 65535 sub-keys: slot ids would not fit in uint32");
    const size_t d = k1.dim() + k2.dim();
    const ArrayArg<float> q = f32_arg(info, 1, "queries");
    if (q.length == 0 || q.length % d != 0)
      throw Error(ErrorCode::InvalidArgument, "queries length must be a positive multiple of dim " + std::to_string(d));
    check_finite_length(q, q.length, "queries");
    const size_t n = k1.size();
    const size_t k = size_arg(info, 2, "k", 1, static_cast<double>(n * n));
    const size_t threads = threads_arg(info, 3);
    auto w = std::make_unique<ProductKeyWorker>(info.Env(), this, info.This().As<Napi::Object>(), k1, b2,
                                                info[0].As<Napi::Object>(), k2);
    w->args.n = n;
    w->args.d1 = k1.dim();
    w->args.d2 = k2.dim();
    w->args.nq = q.length / d;
    w->args.k = k;
    w->args.threads = threads;
    w->args.kernels = &kernels();
    w->queries.assign(q.data, q.data + q.length);
    return queue(std::move(w));
  });
}

// optimInit({ kind, lr, beta1, beta2, eps, weightDecay, biasCorrection }): replaces
// any optimizer state of this tensor with fresh (zero) state.
Napi::Value TensorBinding::OptimInit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("attaching an optimizer");
    const OptimizerParams p = optimizer_params(info, 0);
    const bool replace = info.Length() > 1 && info[1].ToBoolean().Value();
    if (optimizer_ && !replace)
      throw Error(ErrorCode::InvalidArgument, "the tensor already has an optimizer (its state lives with the tensor); detach() it first");
    if (file_) {
      // The state lives in the file: a new optimizer resumes it (m, v, row counters,
      // decay marks and the global scalars of the last checkpoint or detach).
      if (!file_->has_state())
        throw Error(ErrorCode::InvalidArgument,
                    "this tensor file has no optimizer state; create it with optimizerState: true");
      if (optimizer_) file_->set_scalars(optimizer_->steps(), optimizer_->log_decay());
      optimizer_.reset();
      optimizer_ = std::make_unique<SparseOptimizer>(t, p, file_->state());
      return info.Env().Undefined();
    }
    optimizer_.reset();
    optimizer_ = std::make_unique<SparseOptimizer>(t, p);
    return info.Env().Undefined();
  });
}

// optimDetach(): drops this tensor's optimizer state.
Napi::Value TensorBinding::OptimDetach(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    writable("detaching an optimizer");
    if (file_ && optimizer_) file_->set_scalars(optimizer_->steps(), optimizer_->log_decay());
    optimizer_.reset();
    return info.Env().Undefined();
  });
}

SparseOptimizer& TensorBinding::step_args(const Napi::CallbackInfo& info, ArrayArg<uint32_t>* ids, ArrayArg<float>* grads) {
  SparseTensor& t = writable("an optimizer step");
  if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
  *ids = u32_arg(info, 0, "ids");
  *grads = f32_arg(info, 1, "grads");
  if (grads->length != ids->length * t.dim())
    throw Error(ErrorCode::InvalidArgument, "grads has length " + std::to_string(grads->length) +
                                                ", expected ids.length * dim = " + std::to_string(ids->length * t.dim()));
  return *optimizer_;
}

// optimStep(ids: Uint32Array, grads: Float32Array) -> distinct rows touched
Napi::Value TensorBinding::OptimStep(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    ArrayArg<uint32_t> ids;
    ArrayArg<float> grads;
    SparseOptimizer& opt = step_args(info, &ids, &grads);
    tensor_->check_ids(ids.data, ids.length, "ids");
    check_step_rows(tensor_->read_guard(), file_.get(), ids.data, ids.length);
    const size_t n = opt.step(ids.data, ids.length, grads.data);
    after_write();
    return Napi::Number::New(info.Env(), static_cast<double>(n));
  });
}

// optimCheck(ids, grads): the checks optimStep makes before changing anything, alone
// (a multi-tensor step checks every entry first, so it is all or nothing).
Napi::Value TensorBinding::OptimCheck(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    ArrayArg<uint32_t> ids;
    ArrayArg<float> grads;
    step_args(info, &ids, &grads).check_step(ids.data, ids.length, grads.data);
    // A multi-tensor step checks every entry before stepping any: damaged rows too.
    check_step_rows(tensor_->read_guard(), file_.get(), ids.data, ids.length);
    return info.Env().Undefined();
  });
}

// optimState(ids) -> { m, v, steps }
Napi::Value TensorBinding::OptimState(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = usable();
    if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    t.check_ids(ids.data, ids.length, "ids");
    if (file_) file_->check_state(ids.data, ids.length);
    std::vector<float> m(ids.length * t.dim()), v(ids.length * t.dim());
    std::vector<uint32_t> steps(ids.length);
    Napi::Float64Array marks = Napi::Float64Array::New(info.Env(), ids.length);
    optimizer_->state(ids.data, ids.length, m.data(), v.data(), steps.data(), marks.Data());
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("m", f32_array(info.Env(), m));
    out.Set("v", f32_array(info.Env(), v));
    Napi::Uint32Array s = Napi::Uint32Array::New(info.Env(), steps.size());
    std::copy(steps.begin(), steps.end(), s.Data());
    out.Set("steps", s);
    out.Set("marks", marks);
    return out;
  });
}

// optimRestore(ids, values, m, v, steps, marks, globalStep, logDecay): puts rows back
// (SparseOptimizer::restore); m and v are empty for SGD.
Napi::Value TensorBinding::OptimRestore(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& t = writable("restore");
    if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
    const ArrayArg<uint32_t> ids = u32_arg(info, 0, "ids");
    const ArrayArg<float> values = f32_arg(info, 1, "values");
    const ArrayArg<float> m = f32_arg(info, 2, "m");
    const ArrayArg<float> v = f32_arg(info, 3, "v");
    const ArrayArg<uint32_t> steps = u32_arg(info, 4, "steps");
    const ArrayArg<double> marks = f64_arg(info, 5, "marks");
    const double global_step = info[6].IsNumber() ? info[6].As<Napi::Number>().DoubleValue() : -1.0;
    const double log_decay = info[7].IsNumber() ? info[7].As<Napi::Number>().DoubleValue() : 1.0;
    const size_t cells = ids.length * t.dim();
    const bool adam = optimizer_->params().kind == OptimizerKind::Adam;
    if (values.length != cells || steps.length != ids.length || marks.length != ids.length ||
        m.length != (adam ? cells : 0) || v.length != (adam ? cells : 0))
      throw Error(ErrorCode::InvalidArgument, "restore: array lengths do not match ids.length and dim");
    if (!(global_step >= 0.0 && global_step <= 9007199254740991.0 && global_step == std::floor(global_step)))
      throw Error(ErrorCode::OutOfRange, "restore: globalStep must be a safe integer >= 0");
    optimizer_->restore(ids.data, ids.length, values.data, m.data, v.data, steps.data, marks.data,
                        static_cast<uint64_t>(global_step), log_decay);
    after_write();
    return info.Env().Undefined();
  });
}

Napi::Value TensorBinding::OptimSetLr(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    usable();
    if (!optimizer_) throw Error(ErrorCode::InvalidArgument, "the tensor has no optimizer");
    optimizer_->set_lr(finite_arg(info, 0, "lr"));
    return info.Env().Undefined();
  });
}

// optimInfo() -> null | { kind, lr, beta1, beta2, eps, weightDecay, biasCorrection, steps, logDecay }
Napi::Value TensorBinding::OptimInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    usable();
    if (!optimizer_) return info.Env().Null();
    const OptimizerParams& p = optimizer_->params();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("kind", p.kind == OptimizerKind::Adam ? "adam" : "sgd");
    o.Set("lr", p.lr);
    o.Set("beta1", p.beta1);
    o.Set("beta2", p.beta2);
    o.Set("eps", p.eps);
    o.Set("weightDecay", p.weight_decay);
    o.Set("biasCorrection", p.row_step ? "row" : "global");
    o.Set("steps", static_cast<double>(optimizer_->steps()));
    o.Set("logDecay", optimizer_->log_decay());
    return o;
  });
}

namespace {
// Shared argument parsing: (values, Q, beta, metric, threads) at 0..4.
std::unique_ptr<DenseHopfieldWorker> dense_worker(const Napi::CallbackInfo& info, TensorBinding* self, SparseTensor& kt) {
  TensorBinding* vb = TensorBinding::from_value(info[0], "values");
  SparseTensor& vt = vb->usable();
  if (kt.size() == 0) throw Error(ErrorCode::OutOfRange, "the key tensor is empty");
  if (vt.size() != kt.size())
    throw Error(ErrorCode::InvalidArgument, "keys and values hold different pattern counts (" + std::to_string(kt.size()) +
                                                " vs " + std::to_string(vt.size()) + ")");
  const ArrayArg<float> q = f32_arg(info, 1, "queries");
  if (q.length == 0 || q.length % kt.dim() != 0)
    throw Error(ErrorCode::InvalidArgument, "queries length must be a positive multiple of dim " + std::to_string(kt.dim()));
  check_finite_length(q, q.length, "queries");
  const float beta = finite_arg(info, 2, "beta");
  const Metric metric = metric_arg(info, 3);
  const size_t threads = threads_arg(info, 4);
  auto w = std::make_unique<DenseHopfieldWorker>(info.Env(), self, info.This().As<Napi::Object>(), kt, vb,
                                                 info[0].As<Napi::Object>(), vt);
  w->args.B = q.length / kt.dim();
  w->args.d = kt.dim();
  w->args.N = kt.size();
  w->args.dv = vt.dim();
  w->args.beta = beta;
  w->args.metric = metric;
  w->args.threads = threads;
  w->args.kernels = &kernels();
  w->q.assign(q.data, q.data + q.length);
  return w;
}
}  // namespace

// denseHopfieldForwardAsync(values, queries, beta, metric, threads?) -> Promise<{ y, lse }>
Napi::Value TensorBinding::DenseHopfieldForwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return queue(dense_worker(info, this, usable())); });
}

// denseHopfieldBackwardAsync(values, queries, beta, metric, threads, y, lse, dy)
//   -> Promise<{ dQ, dK, dV, dBeta }>
Napi::Value TensorBinding::DenseHopfieldBackwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    SparseTensor& kt = usable();
    TensorBinding* vb = TensorBinding::from_value(info[0], "values");
    const size_t dv = vb->usable().dim();
    const ArrayArg<float> q = f32_arg(info, 1, "queries");
    const size_t B = q.length / kt.dim();
    const ArrayArg<float> y = f32_arg(info, 5, "y");
    const ArrayArg<float> lse = f32_arg(info, 6, "lse");
    const ArrayArg<float> dy = f32_arg(info, 7, "dy");
    check_finite_length(y, B * dv, "y");
    check_finite_length(lse, B, "lse");
    check_finite_length(dy, B * dv, "dy");
    auto w = dense_worker(info, this, kt);
    w->backward = true;
    w->y.assign(y.data, y.data + y.length);
    w->lse.assign(lse.data, lse.data + lse.length);
    w->dy.assign(dy.data, dy.data + dy.length);
    return queue(std::move(w));
  });
}

// ---- Tensor files (file_binding.cc opens and creates them).

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
    return queue(std::make_unique<SaveWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, path, state,
                                              threads_arg(info, 2)));
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
    if (f->closed()) throw StorageError(StorageReason::Closed, "the tensor file was closed");
    const size_t compact_bytes = size_arg(info, 0, "compactBytes", 0, 9007199254740991.0);
    const size_t compact_rows = size_arg(info, 1, "compactRows", 0, 9007199254740991.0);
    const bool force = info.Length() > 2 && info[2].ToBoolean().Value();
    const uint64_t gs = optimizer_ ? optimizer_->steps() : f->global_step();
    const double ld = optimizer_ ? optimizer_->log_decay() : f->log_decay();
    return queue(std::make_unique<CheckpointWorker>(info.Env(), this, info.This().As<Napi::Object>(), t, *f, *merkle_,
                                                    gs, ld, compact_bytes, compact_rows, force));
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
