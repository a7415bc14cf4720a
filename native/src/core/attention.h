// Multi-head self-attention over one sequence, top-k (sparse) and dense.
//
// Q, K, V are n x (H * dk) row-major; head h owns columns [h * dk, (h + 1) * dk).
// For query i of head h the candidate keys are all j < n (j <= i with a causal
// mask); scores s_ij = q_i . k_j, weights p = softmax(scale * s) and the output
// o_i = sum_j p_ij v_j.
//  - top-k: only the k best-scoring candidates (ties to the lower j) take part. An
//    exact blocked scan (SIMD score tiles, a bounded heap per query) selects them;
//    the forward pass keeps ids and weights (H x n x k) for the backward pass, so
//    memory is O(n k H), never n^2. Rows with fewer than k candidates (causal,
//    i < k - 1) are padded with kNoKey and weight 0.
//  - dense: every candidate takes part. Flash-attention style tiles with an online
//    softmax; the backward pass recomputes the tiles, so memory is O(n H) plus
//    per-thread tiles.
// With k >= n the two compute the same function (up to f32 summation order).
// Work is split over (head, query block) pairs in fixed blocks, so results do not
// depend on the thread count.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels.h"

namespace gt {

constexpr uint32_t kNoKey = 0xFFFFFFFFu;

struct AttentionArgs {
  const float* Q = nullptr;
  const float* K = nullptr;
  const float* V = nullptr;
  size_t n = 0, heads = 1, dk = 0;
  size_t k = 0;  // top-k only
  bool causal = false;
  float scale = 1.0f;
  size_t threads = 1;
  const Kernels* kernels = nullptr;
};

// out: n x (H * dk); ids, weights: H x n x k.
void topk_attention_forward(const AttentionArgs& a, float* out, uint32_t* ids, float* weights);
// dQ, dK, dV: n x (H * dk), overwritten.
void topk_attention_backward(const AttentionArgs& a, const uint32_t* ids, const float* weights, const float* dout,
                             float* dQ, float* dK, float* dV);

// out: n x (H * dk); lse: H x n log-sum-exp of scale * s.
void dense_attention_forward(const AttentionArgs& a, float* out, float* lse);
void dense_attention_backward(const AttentionArgs& a, const float* out, const float* lse, const float* dout,
                              float* dQ, float* dK, float* dV);

// Incremental decoding (one new query per head against a KV cache of L rows).
// Keys are packed block-major, so appending a key never moves the others:
//   Kp[((b * H + h) * dk + t) * kDecodeKeyBlock + c] = key (b * kDecodeKeyBlock + c), head h, column t
// (decode_key_packed_size(L, H, dk) floats, blocks zero-padded); V is L x (H * dk), row-major.
constexpr size_t kDecodeKeyBlock = 256;
inline size_t decode_key_packed_size(size_t L, size_t H, size_t dk) {
  return ((L + kDecodeKeyBlock - 1) / kDecodeKeyBlock) * H * dk * kDecodeKeyBlock;
}

struct DecodeArgs {
  const float* q = nullptr;   // H * dk: the new row's query
  const float* Kp = nullptr;  // packed keys, as above
  const float* V = nullptr;   // L x (H * dk)
  size_t L = 0, heads = 1, dk = 0;
  size_t k = 0;  // 0: dense (every key); else top-k
  float scale = 1.0f;
  const Kernels* kernels = nullptr;
};

// The last row of a causal attention over L rows. Top-k: the same score tiles, selection,
// softmax and mix as topk_attention_forward computes for query L - 1 (bit for bit with the
// same kernels), min(k, L) keys; ids and weights (H x k, best first) padded with kNoKey / 0.
// Dense (k = 0): softmax over every key, two passes (ids and weights may be null).
void decode_attention(const DecodeArgs& a, float* out, uint32_t* ids, float* weights);
// The same softmax and mix over a selection made elsewhere (an approximate index): per head
// sel_ids (H x k; valid ids < L first, then kNoKey) with their scores q . k_j in sel_scores.
void decode_attention_selected(const DecodeArgs& a, const uint32_t* sel_ids, const float* sel_scores, float* out,
                               float* weights);

// y (n x m) = X (n x d) W^T for W (m x d): y_ij = x_i . w_j.
void linear_forward(const float* X, size_t n, const float* W, size_t m, size_t d, size_t threads,
                    const Kernels& kern, float* y);
// dX (n x d) = dY W, dW (m x d) = dY^T X.
void linear_backward(const float* X, size_t n, const float* W, size_t m, size_t d, const float* dY, size_t threads,
                     const Kernels& kern, float* dX, float* dW);

}  // namespace gt
