// One key's first-pass score by the portable arithmetic (key_sketch.h, SketchScan): the
// exact integer sums of the two int8 query halves against the key's codes, scaled, and
// the upper bound hi = a + B. The portable scan runs it for every key; the SIMD scans
// for the keys past their last whole group, so every level gives these bits.
// Internal linkage on purpose: each per-level file compiles its own copy with its own
// flags (an inline function shared across files compiled with different ISA flags could
// be resolved to the AVX-512 copy in a portable caller).
#pragma once
#include <cstddef>
#include <cstdint>

namespace gt {
namespace sketch_detail {

static inline void score_one(const uint8_t* codes, size_t g4, const int8_t* w, const float* sig, const float* eps,
                             const float* rho, const float* coef, size_t c, float* a, float* hi) {
  int32_t n0 = 0, n1 = 0;
  for (size_t t = 0; t < 4 * g4; ++t) {
    const int32_t code = static_cast<int32_t>(codes[((c / 16) * g4 + t / 4) * 64 + (c % 16) * 4 + t % 4]) - 128;
    n0 += static_cast<int32_t>(w[t]) * code;
    n1 += static_cast<int32_t>(w[4 * g4 + t]) * code;
  }
  a[c] = static_cast<float>(n0) * sig[0] + static_cast<float>(n1) * sig[1];
  hi[c] = a[c] + ((coef[0] * eps[c] + coef[1] * rho[c]) * coef[2] + coef[3]);
}

// One key's 4-bit sketch score (key_sketch.h, SketchScan4); sw = sum_t w[t], the bias's share.
static inline void score_one4(const uint8_t* codes, size_t g8, const int8_t* w, int32_t sw, float sig, size_t c,
                              float* a) {
  int32_t n = 0;
  for (size_t t = 0; t < 8 * g8; ++t) {
    const uint8_t byte = codes[((c / 16) * g8 + t / 8) * 64 + (c % 16) * 4 + t % 4];
    n += static_cast<int32_t>(w[t]) * static_cast<int32_t>(t % 8 < 4 ? byte & 15 : byte >> 4);
  }
  a[c] = static_cast<float>(n - 8 * sw) * sig;
}

}  // namespace sketch_detail
}  // namespace gt
