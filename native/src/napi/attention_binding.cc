// Addon functions for self-attention (native/src/core/attention.h): pure functions over copied
// arrays, run on a worker thread, settling a promise. Every argument is checked
// here, before the work is queued.
#include <napi.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "../core/attention.h"
#include "attention_binding.h"
#include "../core/kernels.h"
#include "../core/key_sketch.h"
#include "async_job.h"
#include "napi_util.h"

namespace gt {

namespace {

constexpr double kMaxElements = 1u << 30;  // floats per array (4 GiB)

bool bool_arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (index >= info.Length() || !info[index].IsBoolean())
    throw Error(ErrorCode::InvalidArgument, std::string(name) + " must be a boolean");
  return info[index].As<Napi::Boolean>().Value();
}

float scale_arg(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsNumber()) throw Error(ErrorCode::InvalidArgument, "scale must be a number");
  const double s = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(s) || !(s > 0.0) || s > 1e30) throw Error(ErrorCode::OutOfRange, "scale must be finite and > 0");
  return static_cast<float>(s);
}

class AttentionWorker : public AsyncJob {
 public:
  enum class Op { Forward, Backward, Linear, LinearBackward };
  AttentionWorker(Napi::Env env, Op op) : AsyncJob(env, "ghost-tensor:attention"), op(op) {}

  Op op;
  AttentionArgs args;
  std::vector<float> q, k, v, dout, saved_f32, lse, out, weights, r1, r2, r3;
  std::vector<uint32_t> ids;
  size_t m = 0, d = 0;  // linear: W is m x d, X is n x d

 private:
  void Run() override {
    args.kernels = &kernels();
    args.Q = q.data();
    args.K = k.data();
    args.V = v.data();
    const size_t n = args.n, D = args.heads * args.dk;
    switch (op) {
      case Op::Forward:
        out.resize(n * D);
        if (args.k > 0) {
          ids.resize(args.heads * n * args.k);
          weights.resize(args.heads * n * args.k);
          topk_attention_forward(args, out.data(), ids.data(), weights.data());
        } else {
          lse.resize(args.heads * n);
          dense_attention_forward(args, out.data(), lse.data());
        }
        break;
      case Op::Backward:
        r1.resize(n * D);
        r2.resize(n * D);
        r3.resize(n * D);
        if (args.k > 0)
          topk_attention_backward(args, ids.data(), weights.data(), dout.data(), r1.data(), r2.data(), r3.data());
        else
          dense_attention_backward(args, out.data(), lse.data(), dout.data(), r1.data(), r2.data(), r3.data());
        break;
      case Op::Linear:
        r1.resize(n * m);
        linear_forward(q.data(), n, k.data(), m, d, args.threads, kernels(), r1.data());
        break;
      case Op::LinearBackward:
        r1.resize(n * d);
        r2.resize(m * d);
        linear_backward(q.data(), n, k.data(), m, d, dout.data(), args.threads, kernels(), r1.data(), r2.data());
        break;
    }
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    switch (op) {
      case Op::Forward:
        o.Set("out", f32_array(env, out));
        if (args.k > 0) {
          Napi::Uint32Array a = Napi::Uint32Array::New(env, ids.size());
          std::copy(ids.begin(), ids.end(), a.Data());
          o.Set("ids", a);
          o.Set("weights", f32_array(env, weights));
        } else {
          o.Set("lse", f32_array(env, lse));
        }
        break;
      case Op::Backward:
        o.Set("dq", f32_array(env, r1));
        o.Set("dk", f32_array(env, r2));
        o.Set("dv", f32_array(env, r3));
        break;
      case Op::Linear:
        o.Set("y", f32_array(env, r1));
        break;
      case Op::LinearBackward:
        o.Set("dx", f32_array(env, r1));
        o.Set("dw", f32_array(env, r2));
        break;
    }
    return o;
  }
};

// (n, heads, dk, k, causal, scale, threads) at 0..6, then q, k, v at 7..9.
std::unique_ptr<AttentionWorker> attention_worker(const Napi::CallbackInfo& info, AttentionWorker::Op op) {
  auto w = std::make_unique<AttentionWorker>(info.Env(), op);
  AttentionArgs& a = w->args;
  a.n = size_arg(info, 0, "n", 1, 1 << 24);
  a.heads = size_arg(info, 1, "heads", 1, 4096);
  a.dk = size_arg(info, 2, "headDim", 1, 65536);
  a.k = size_arg(info, 3, "k", 0, static_cast<double>(a.n));
  a.causal = bool_arg(info, 4, "causal");
  a.scale = scale_arg(info, 5);
  a.threads = threads_arg(info, 6);
  const size_t D = a.heads * a.dk;
  if (static_cast<double>(a.n) * D > kMaxElements || static_cast<double>(a.n) * a.heads * a.k > kMaxElements)
    throw Error(ErrorCode::OutOfRange, "n * heads * headDim (or n * heads * k) is too large");
  w->q = copy_f32(info, 7, "q", a.n * D);
  w->k = copy_f32(info, 8, "k", a.n * D);
  w->v = copy_f32(info, 9, "v", a.n * D);
  return w;
}

// (n, m, d, threads) at 0..3.
std::unique_ptr<AttentionWorker> linear_worker(const Napi::CallbackInfo& info, AttentionWorker::Op op) {
  auto w = std::make_unique<AttentionWorker>(info.Env(), op);
  w->args.n = size_arg(info, 0, "n", 1, 1 << 24);
  w->m = size_arg(info, 1, "outDim", 1, 1 << 20);
  w->d = size_arg(info, 2, "inDim", 1, 1 << 20);
  w->args.threads = threads_arg(info, 3);
  const double n = static_cast<double>(w->args.n);
  if (n * w->d > kMaxElements || n * w->m > kMaxElements || static_cast<double>(w->m) * w->d > kMaxElements)
    throw Error(ErrorCode::OutOfRange, "linear: an array would be too large");
  w->q = copy_f32(info, 4, "x", w->args.n * w->d);
  w->k = copy_f32(info, 5, "weight", w->m * w->d);
  return w;
}

// attentionForwardAsync(n, heads, headDim, k, causal, scale, threads, q, k, v)
//   -> Promise<{ out, ids, weights }> (k >= 1: top-k) | Promise<{ out, lse }> (k = 0: dense)
Napi::Value AttentionForwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return queue(attention_worker(info, AttentionWorker::Op::Forward)); });
}

// attentionBackwardAsync(n, heads, headDim, k, causal, scale, threads, q, k, v, dOut, a, b)
//   top-k: a = ids (Uint32Array, heads x n x k), b = weights; dense: a = out, b = lse.
//   -> Promise<{ dq, dk, dv }>
Napi::Value AttentionBackwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto w = attention_worker(info, AttentionWorker::Op::Backward);
    const AttentionArgs& a = w->args;
    const size_t D = a.heads * a.dk;
    w->dout = copy_f32(info, 10, "dOut", a.n * D);
    if (a.k > 0) {
      const ArrayArg<uint32_t> ids = u32_arg(info, 11, "ids");
      if (ids.length != a.heads * a.n * a.k) throw Error(ErrorCode::InvalidArgument, "ids has the wrong length");
      for (size_t i = 0; i < ids.length; ++i)
        if (ids.data[i] != kNoKey && ids.data[i] >= a.n) throw Error(ErrorCode::OutOfRange, "ids: a key id is >= n");
      w->ids.assign(ids.data, ids.data + ids.length);
      w->weights = copy_f32(info, 12, "weights", a.heads * a.n * a.k);
    } else {
      w->out = copy_f32(info, 11, "out", a.n * D);
      w->lse = copy_f32(info, 12, "lse", a.heads * a.n);
    }
    return queue(std::move(w));
  });
}

// linearAsync(n, outDim, inDim, threads, x, weight) -> Promise<{ y }>: y = x weight^T.
Napi::Value LinearAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value { return queue(linear_worker(info, AttentionWorker::Op::Linear)); });
}

// linearBackwardAsync(n, outDim, inDim, threads, x, weight, dY) -> Promise<{ dx, dw }>
Napi::Value LinearBackwardAsync(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    auto w = linear_worker(info, AttentionWorker::Op::LinearBackward);
    w->dout = copy_f32(info, 6, "dY", w->args.n * w->m);
    return queue(std::move(w));
  });
}

// linear(n, outDim, inDim, x, weight) -> y = x weight^T on the calling thread (one thread):
// linear_forward as linearAsync runs it (the same bits), without a worker hop for the few
// rows of a decoding step.
Napi::Value Linear(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 0, "n", 1, 1 << 24), m = size_arg(info, 1, "outDim", 1, 1 << 20),
                 d = size_arg(info, 2, "inDim", 1, 1 << 20);
    if (static_cast<double>(n) * d > kMaxElements || static_cast<double>(n) * m > kMaxElements ||
        static_cast<double>(m) * d > kMaxElements)
      throw Error(ErrorCode::OutOfRange, "linear: an array would be too large");
    const ArrayArg<float> x = f32_arg(info, 3, "x");
    check_finite_length(x, n * d, "x");
    const ArrayArg<float> w = f32_arg(info, 4, "weight");
    check_finite_length(w, m * d, "weight");
    std::vector<float> y(n * m);
    linear_forward(x.data, n, w.data, m, d, 1, kernels(), y.data());
    return f32_array(info.Env(), y);
  });
}

// attentionDecode(L, heads, headDim, k, scale, q, keysPacked, values[, selIds, selScores])
//   -> { out, ids, weights } (ids and weights: heads x k; empty when k = 0, dense)
// Synchronous, on the calling thread: one query row per head against a KV cache the caller
// keeps (layout in attention.h, decode_attention). The cache arrays are read in place (not
// copied: they grow to the context's size and a decode step reads them once); q and the
// selection are checked here. With a selection (top-k only), its ids (heads x k, each
// head's valid ids < L first, then NO_KEY) and their scores (finite, non-increasing per
// head) replace the exact scan.
Napi::Value AttentionDecode(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    DecodeArgs a;
    a.L = size_arg(info, 0, "L", 1, 1 << 24);
    a.heads = size_arg(info, 1, "heads", 1, 4096);
    a.dk = size_arg(info, 2, "headDim", 1, 65536);
    a.k = size_arg(info, 3, "k", 0, 1 << 24);
    a.scale = scale_arg(info, 4);
    a.kernels = &kernels();
    const size_t D = a.heads * a.dk;
    if (static_cast<double>(a.L) * D > kMaxElements || static_cast<double>(a.heads) * a.k > kMaxElements)
      throw Error(ErrorCode::OutOfRange, "L * heads * headDim (or heads * k) is too large");
    const ArrayArg<float> q = f32_arg(info, 5, "q");
    check_finite_length(q, D, "q");
    const ArrayArg<float> kp = f32_arg(info, 6, "keysPacked");
    const ArrayArg<float> v = f32_arg(info, 7, "values");
    if (kp.length < decode_key_packed_size(a.L, a.heads, a.dk))
      throw Error(ErrorCode::InvalidArgument, "keysPacked holds fewer than L keys");
    if (v.length < a.L * D) throw Error(ErrorCode::InvalidArgument, "values holds fewer than L rows");
    a.q = q.data;
    a.Kp = kp.data;
    a.V = v.data;
    std::vector<float> out(D), weights(a.heads * a.k);
    std::vector<uint32_t> ids(a.heads * a.k);
    const bool selected = info.Length() > 8 && !info[8].IsUndefined();
    if (selected) {
      if (a.k == 0) throw Error(ErrorCode::InvalidArgument, "a selection needs k >= 1");
      const ArrayArg<uint32_t> si = u32_arg(info, 8, "selIds");
      const ArrayArg<float> ss = f32_arg(info, 9, "selScores");
      if (si.length != a.heads * a.k || ss.length != a.heads * a.k)
        throw Error(ErrorCode::InvalidArgument, "selIds and selScores must hold heads * k values");
      for (size_t h = 0; h < a.heads; ++h) {
        size_t m = 0;
        for (; m < a.k && si.data[h * a.k + m] != kNoKey; ++m) {
          const float sc = ss.data[h * a.k + m];
          if (si.data[h * a.k + m] >= a.L) throw Error(ErrorCode::OutOfRange, "selIds: a key id is >= L");
          if (!std::isfinite(sc)) throw Error(ErrorCode::NonFinite, "selScores: a score is not finite");
          if (m > 0 && !(sc <= ss.data[h * a.k + m - 1]))
            throw Error(ErrorCode::InvalidArgument, "selScores must be best first (non-increasing) per head");
        }
        if (m == 0) throw Error(ErrorCode::InvalidArgument, "selIds: a head selected no key");
        for (size_t c = m; c < a.k; ++c)
          if (si.data[h * a.k + c] != kNoKey) throw Error(ErrorCode::InvalidArgument, "selIds: NO_KEY padding must come last");
      }
      std::copy(si.data, si.data + si.length, ids.begin());
      decode_attention_selected(a, si.data, ss.data, out.data(), weights.data());
    } else {
      decode_attention(a, out.data(), a.k > 0 ? ids.data() : nullptr, a.k > 0 ? weights.data() : nullptr);
    }
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("out", f32_array(env, out));
    Napi::Uint32Array ia = Napi::Uint32Array::New(env, ids.size());
    std::copy(ids.begin(), ids.end(), ia.Data());
    o.Set("ids", ia);
    o.Set("weights", f32_array(env, weights));
    return o;
  });
}


// ---- The key sketch (key_sketch.h): an External owned by JavaScript, tagged so that no
// other object is taken for one. Synchronous, on the calling thread, like attentionDecode;
// the packed keys are the caller's cache, read in place.
const napi_type_tag kSketchTag = {0x67686f73744b6579ULL, 0x536b657463684e61ULL};  // "ghostKey" "SketchNa"

KeySketch& sketch_arg(const Napi::CallbackInfo& info, size_t index) {
  bool ours = false;
  if (index >= info.Length() || !info[index].IsExternal() ||
      napi_check_object_type_tag(info.Env(), info[index], &kSketchTag, &ours) != napi_ok || !ours)
    throw Error(ErrorCode::InvalidArgument, "expected a key sketch made by keySketchNew");
  return *info[index].As<Napi::External<KeySketch>>().Data();
}

const float* packed_keys_arg(const Napi::CallbackInfo& info, size_t index, size_t L, size_t heads, size_t dk) {
  const ArrayArg<float> kp = f32_arg(info, index, "keysPacked");
  if (kp.length < decode_key_packed_size(L, heads, dk)) throw Error(ErrorCode::InvalidArgument, "keysPacked holds fewer than L keys");
  return kp.data;
}

// keySketchNew(heads, headDim, rank, keysPacked, L[, queries[, bits]]) -> External: fitted to keys
// [0, L) and holding them (rank 0: auto); queries (n x heads x headDim, finite), when given,
// are observed first (key_sketch.h, observe()), so the bases fit them too. bits: 8 (default)
// or 4 (approximate: keySketchSelect then needs maxScored).
Napi::Value KeySketchNew(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const size_t heads = size_arg(info, 0, "heads", 1, 4096);
    const size_t dk = size_arg(info, 1, "headDim", 1, 4096);
    const size_t rank = size_arg(info, 2, "rank", 0, 4096);
    if (rank > dk) throw Error(ErrorCode::OutOfRange, "rank must be <= headDim");
    const size_t L = size_arg(info, 4, "L", 1, 1 << 24);
    if (static_cast<double>(L) * heads * dk > kMaxElements) throw Error(ErrorCode::OutOfRange, "L * heads * headDim is too large");
    const float* kp = packed_keys_arg(info, 3, L, heads, dk);
    const size_t bits = info.Length() > 6 && !info[6].IsUndefined() ? size_arg(info, 6, "bits", 4, 8) : 8;
    if (bits != 4 && bits != 8) throw Error(ErrorCode::InvalidArgument, "bits must be 8 or 4");
    auto sk = std::make_unique<KeySketch>(heads, dk, rank, static_cast<int>(bits));
    if (info.Length() > 5 && !info[5].IsUndefined()) {
      const ArrayArg<float> qs = f32_arg(info, 5, "queries");
      if (qs.length % (heads * dk) != 0) throw Error(ErrorCode::InvalidArgument, "queries must hold whole rows of heads * headDim");
      sk->observe(qs.data, qs.length / (heads * dk));
    }
    sk->fit(kp, L);
    Napi::Env env = info.Env();
    Napi::External<KeySketch> ext = Napi::External<KeySketch>::New(env, sk.release(), [](Napi::Env, KeySketch* p) { delete p; });
    if (napi_type_tag_object(env, ext, &kSketchTag) != napi_ok) throw std::runtime_error("cannot tag a key sketch");
    return ext;
  });
}

// keySketchAppend(sketch, keysPacked, L): encodes keys [length, L).
Napi::Value KeySketchAppend(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    KeySketch& sk = sketch_arg(info, 0);
    const size_t L = size_arg(info, 2, "L", 1, 1 << 24);
    if (L < sk.length()) throw Error(ErrorCode::OutOfRange, "L is below the sketch's length");
    if (static_cast<double>(L) * sk.heads() * sk.dk() > kMaxElements) throw Error(ErrorCode::OutOfRange, "L * heads * headDim is too large");
    sk.append(packed_keys_arg(info, 1, L, sk.heads(), sk.dk()), L);
    return info.Env().Undefined();
  });
}

// keySketchRefit(sketch, L): starts an amortised refit to the keys [0, L) (L <= its length),
// carried out by the following keySketchAppend calls (key_sketch.h, refit()).
Napi::Value KeySketchRefit(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    KeySketch& sk = sketch_arg(info, 0);
    const size_t L = size_arg(info, 1, "L", 1, 1 << 24);
    if (L > sk.length()) throw Error(ErrorCode::OutOfRange, "L is above the sketch's length");
    sk.refit(L);
    return info.Env().Undefined();
  });
}

// keySketchSelect(sketch, q, keysPacked, k[, maxScored[, observe]]) -> { ids, scores, candidates, capped }:
// the exact top-k per head (heads x k, best first, padded with NO_KEY / 0), how many keys were
// scored, and how many heads hit maxScored (0 or absent: no limit; else >= k) and so selected
// approximately. Unless observe is false, the query is then observed (key_sketch.h,
// observe()): later refits fit the queries served.
Napi::Value KeySketchSelect(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    KeySketch& sk = sketch_arg(info, 0);
    const size_t H = sk.heads(), dk = sk.dk();
    const ArrayArg<float> q = f32_arg(info, 1, "q");
    check_finite_length(q, H * dk, "q");
    const float* kp = packed_keys_arg(info, 2, sk.length(), H, dk);
    const size_t k = size_arg(info, 3, "k", 1, 1 << 16);
    const size_t max_scored = info.Length() > 4 && !info[4].IsUndefined() ? size_arg(info, 4, "maxScored", 0, 1 << 24) : 0;
    if (max_scored != 0 && max_scored < k) throw Error(ErrorCode::OutOfRange, "maxScored must be 0 or >= k");
    if (sk.bits() == 4 && max_scored == 0) throw Error(ErrorCode::InvalidArgument, "a 4-bit sketch needs maxScored (>= k)");
    std::vector<uint32_t> ids(H * k);
    std::vector<float> scores(H * k);
    SketchSelectStats st;
    sk.select(q.data, kp, k, max_scored, kernels(), ids.data(), scores.data(), &st);
    if (!(info.Length() > 5 && info[5].IsBoolean() && !info[5].As<Napi::Boolean>().Value())) sk.observe(q.data, 1);
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    Napi::Uint32Array ia = Napi::Uint32Array::New(env, ids.size());
    std::copy(ids.begin(), ids.end(), ia.Data());
    o.Set("ids", ia);
    o.Set("scores", f32_array(env, scores));
    o.Set("candidates", Napi::Number::New(env, static_cast<double>(st.candidates)));
    o.Set("capped", Napi::Number::New(env, static_cast<double>(st.capped)));
    return o;
  });
}

// keySketchInfo(sketch) -> { length, ranks, bytes, refitting, refits, bits }
Napi::Value KeySketchInfo(const Napi::CallbackInfo& info) {
  return guard(info, [&]() -> Napi::Value {
    const KeySketch& sk = sketch_arg(info, 0);
    Napi::Env env = info.Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("length", Napi::Number::New(env, static_cast<double>(sk.length())));
    Napi::Array ranks = Napi::Array::New(env, sk.heads());
    for (size_t h = 0; h < sk.heads(); ++h) ranks.Set(static_cast<uint32_t>(h), Napi::Number::New(env, static_cast<double>(sk.rank(h))));
    o.Set("ranks", ranks);
    o.Set("bytes", Napi::Number::New(env, static_cast<double>(sk.bytes())));
    o.Set("refitting", Napi::Boolean::New(env, sk.refitting()));
    o.Set("refits", Napi::Number::New(env, static_cast<double>(sk.refits())));
    o.Set("bits", Napi::Number::New(env, sk.bits()));
    return o;
  });
}

}  // namespace

void register_attention_functions(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionForwardAsync", Napi::Function::New(env, AttentionForwardAsync));
  exports.Set("attentionBackwardAsync", Napi::Function::New(env, AttentionBackwardAsync));
  exports.Set("linear", Napi::Function::New(env, Linear));
  exports.Set("attentionDecode", Napi::Function::New(env, AttentionDecode));
  exports.Set("keySketchNew", Napi::Function::New(env, KeySketchNew));
  exports.Set("keySketchAppend", Napi::Function::New(env, KeySketchAppend));
  exports.Set("keySketchRefit", Napi::Function::New(env, KeySketchRefit));
  exports.Set("keySketchSelect", Napi::Function::New(env, KeySketchSelect));
  exports.Set("keySketchInfo", Napi::Function::New(env, KeySketchInfo));
  exports.Set("linearAsync", Napi::Function::New(env, LinearAsync));
  exports.Set("linearBackwardAsync", Napi::Function::New(env, LinearBackwardAsync));
}

}  // namespace gt
