// The asynchronous jobs of NativeTensor's methods (tensor_binding.cc), each a
// TensorWorker (tensor_worker.h): it holds the tensor busy and settles a promise.
// Arguments were checked by the method before the job is built; inputs are copied.
#pragma once
#include <napi.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "../core/dense_hopfield.h"
#include "../core/hnsw_index.h"
#include "../core/kernels.h"
#include "../core/merkle.h"
#include "../core/optimizer.h"
#include "../core/product_keys.h"
#include "../core/search.h"
#include "../core/sparse_tensor.h"
#include "../core/tensor_file.h"
#include "napi_util.h"
#include "tensor_binding.h"
#include "tensor_worker.h"

namespace gt {

// A checked search: metric, level, k, query count, threads (tensor_binding.cc parses it).
struct SearchRequest {
  Metric metric = Metric::IP;
  SimdLevel level = SimdLevel::Scalar;
  size_t k = 0;
  size_t nq = 0;
  size_t threads = 1;
};

// { ids, scores } of a search.
inline Napi::Object result_object(Napi::Env env, const std::vector<uint32_t>& ids, const std::vector<float>& scores) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Uint32Array idv = Napi::Uint32Array::New(env, ids.size());
  Napi::Float32Array sv = Napi::Float32Array::New(env, scores.size());
  std::copy(ids.begin(), ids.end(), idv.Data());
  std::copy(scores.begin(), scores.end(), sv.Data());
  out.Set("ids", idv);
  out.Set("scores", sv);
  return out;
}

// The core's arguments for an exact search of r over n rows of d floats at data.
inline ExactSearchArgs search_args(const float* data, size_t n, size_t d, const SearchRequest& r, const float* queries) {
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

// The rows' cosine norms for a scan of r (null: the scan computes them): from the
// tensor's RowNormCache at `version`, the version the rows had when the search was
// asked for (a search holds the tensor busy, so no write comes in between).
inline std::shared_ptr<const std::vector<float>> cached_norms(const std::shared_ptr<RowNormCache>& cache,
                                                              uint64_t version, const ExactSearchArgs& a) {
  if (!cache || a.metric != Metric::Cosine || a.n == 0 || !row_norm_cache_enabled()) return nullptr;
  return cache->get(version, *a.kernels, a.data, a.n, a.d, a.threads);
}

// Exact search over every row.
class SearchWorker : public TensorWorker {
 public:
  SearchWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t,
               const SearchRequest& r, const float* queries)
      : TensorWorker(env, "ghost-tensor:search", owner, owner_obj, t),
        req_(r),
        queries_(queries, queries + r.nq * t.dim()),
        ids_(r.nq * r.k),
        scores_(r.nq * r.k),
        norm_cache_(t.norm_cache()),
        version_(t.version()) {}

 private:
  void Run() override {
    check_all_rows();  // a scan reads every row (and so do the norms)
    ExactSearchArgs a = search_args(storage_->data(), n_, d_, req_, queries_.data());
    const std::shared_ptr<const std::vector<float>> norms = cached_norms(norm_cache_, version_, a);
    if (norms) a.row_norm2 = norms->data();
    exact_search(a, ids_.data(), scores_.data());
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override { return result_object(env, ids_, scores_); }

  SearchRequest req_;
  std::vector<float> queries_;  // copied: JavaScript may reuse its buffer meanwhile
  std::vector<uint32_t> ids_;
  std::vector<float> scores_;
  std::shared_ptr<RowNormCache> norm_cache_;
  uint64_t version_;
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

// A dense Hopfield job over keys (the owner) and values (a second tensor, also held
// busy). Inputs are copied, so the caller's arrays may change meanwhile.
class DenseHopfieldWorker : public TensorWorker {
 public:
  DenseHopfieldWorker(Napi::Env env, TensorBinding* keys, Napi::Object keys_obj, const SparseTensor& kt,
                      TensorBinding* values, Napi::Object values_obj, const SparseTensor& vt)
      : TensorWorker(env, "ghost-tensor:dense-hopfield", keys, keys_obj, kt),
        values_(values),
        vstorage_(vt.storage()),
        vguard_(vt.read_guard()),
        dv_(vt.dim()) {
    values_ref_ = Napi::Persistent(values_obj);
    values_->enter_busy();
  }
  ~DenseHopfieldWorker() override { values_->leave_busy(); }

  DenseHopfieldArgs args;
  bool backward = false;
  std::vector<float> q, y, lse, dy, dq, dk, dv;
  double dbeta = 0.0;

 private:
  void Run() override {
    check_all_rows();  // dense: every key and value row
    if (vguard_ != nullptr) vguard_->check_all();
    args.Q = q.data();
    args.K = storage_->data();
    args.V = vstorage_->data();
    if (!backward) {
      y.resize(args.B * dv_);
      lse.resize(args.B);
      dense_hopfield_forward(args, y.data(), lse.data());
    } else {
      dq.resize(args.B * args.d);
      dk.resize(args.N * args.d);
      dv.resize(args.N * dv_);
      dense_hopfield_backward(args, y.data(), lse.data(), dy.data(), dq.data(), dk.data(), dv.data(), &dbeta);
    }
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override {
    Napi::Object out = Napi::Object::New(env);
    if (!backward) {
      out.Set("y", f32_array(env, y));
      out.Set("lse", f32_array(env, lse));
    } else {
      out.Set("dQ", f32_array(env, dq));
      out.Set("dK", f32_array(env, dk));
      out.Set("dV", f32_array(env, dv));
      out.Set("dBeta", Napi::Number::New(env, dbeta));
    }
    return out;
  }
  TensorBinding* values_;
  Napi::ObjectReference values_ref_;
  std::shared_ptr<Storage> vstorage_;
  const ReadGuard* vguard_;
  size_t dv_;
};

// Product-key search over two sub-key tables: the owner (table 1) and a second tensor
// (table 2), both held busy. Queries are copied.
class ProductKeyWorker : public TensorWorker {
 public:
  ProductKeyWorker(Napi::Env env, TensorBinding* t1, Napi::Object t1_obj, const SparseTensor& k1, TensorBinding* t2,
                   Napi::Object t2_obj, const SparseTensor& k2)
      : TensorWorker(env, "ghost-tensor:product-keys", t1, t1_obj, k1),
        other_(t2),
        storage2_(k2.storage()),
        guard2_(k2.read_guard()) {
    other_ref_ = Napi::Persistent(t2_obj);
    other_->enter_busy();
  }
  ~ProductKeyWorker() override { other_->leave_busy(); }

  ProductKeyArgs args;
  std::vector<float> queries;

 private:
  void Run() override {
    check_all_rows();  // both sub-key tables are scanned whole
    if (guard2_ != nullptr) guard2_->check_all();
    args.K1 = storage_->data();
    args.K2 = storage2_->data();
    args.queries = queries.data();
    ids_.resize(args.nq * args.k);
    scores_.resize(args.nq * args.k);
    product_key_search(args, ids_.data(), scores_.data());
  }
  Napi::Value Settle(Napi::Env env, TensorBinding&) override {
    Napi::Object out = Napi::Object::New(env);
    Napi::Uint32Array ids = Napi::Uint32Array::New(env, ids_.size());
    std::copy(ids_.begin(), ids_.end(), ids.Data());
    out.Set("ids", ids);
    out.Set("scores", f64_array(env, scores_));
    return out;
  }
  TensorBinding* other_;
  Napi::ObjectReference other_ref_;
  std::shared_ptr<Storage> storage2_;
  const ReadGuard* guard2_;
  std::vector<uint32_t> ids_;
  std::vector<double> scores_;
};

// A step reads the rows' values and optimizer state: a file-backed tensor checks both
// the first time (ids must be in range).
inline void check_step_rows(const ReadGuard* guard, const TensorFile* file, const uint32_t* ids, size_t count) {
  if (guard != nullptr) guard->check_rows(ids, count);
  if (file != nullptr) file->check_state(ids, count);
}

// One optimizer step off the JavaScript thread. Holds the tensor exclusively (reads and
// writes refused) until it settles; ids and gradients are copied.
class OptimStepWorker : public TensorWorker {
 public:
  OptimStepWorker(Napi::Env env, TensorBinding* owner, Napi::Object owner_obj, const SparseTensor& t,
                  SparseOptimizer& opt, const ArrayArg<uint32_t>& ids, const ArrayArg<float>& grads,
                  const TensorFile* file)
      : TensorWorker(env, "ghost-tensor:optimizer-step", owner, owner_obj, t),
        owner_(owner),
        opt_(opt),
        file_(file),
        ids_(ids.data, ids.data + ids.length),
        grads_(grads.data, grads.data + grads.length) {
    owner_->enter_writing();
  }
  ~OptimStepWorker() override { owner_->leave_writing(); }

 private:
  void Run() override {
    check_step_rows(guard_, file_, ids_.data(), ids_.size());
    rows_ = opt_.step(ids_.data(), ids_.size(), grads_.data());
  }
  Napi::Value Settle(Napi::Env env, TensorBinding& owner) override {
    owner.after_write();
    return Napi::Number::New(env, static_cast<double>(rows_));
  }
  TensorBinding* owner_;
  SparseOptimizer& opt_;  // cannot be replaced or detached while the tensor is busy
  const TensorFile* file_;  // cannot be closed while the tensor is busy
  std::vector<uint32_t> ids_;
  std::vector<float> grads_;
  size_t rows_ = 0;
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

}  // namespace gt
