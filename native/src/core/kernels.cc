#include "kernels.h"

namespace gt {

const Kernels& kernels_for(SimdLevel level) {
  const Kernels* k = nullptr;
  switch (level) {
    case SimdLevel::Scalar: k = kKernelsScalar; break;
    case SimdLevel::AVX2: k = kKernelsAVX2; break;
    case SimdLevel::AVX512: k = kKernelsAVX512; break;
    case SimdLevel::NEON: k = kKernelsNEON; break;
  }
  return k != nullptr ? *k : *kKernelsScalar;
}

const Kernels& kernels() {
  static const Kernels& k = kernels_for(default_simd_level());
  return k;
}

}  // namespace gt
