#include "cpu.h"

#include <cstdint>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#define GT_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#endif
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define GT_ARM64 1
#endif

namespace gt {

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar: return "scalar";
    case SimdLevel::AVX2: return "avx2";
    case SimdLevel::AVX512: return "avx512";
    case SimdLevel::NEON: return "neon";
  }
  return "unknown";
}

bool parse_simd_level(const std::string& name, SimdLevel* out) {
  if (name == "scalar") *out = SimdLevel::Scalar;
  else if (name == "avx2") *out = SimdLevel::AVX2;
  else if (name == "avx512") *out = SimdLevel::AVX512;
  else if (name == "neon") *out = SimdLevel::NEON;
  else return false;
  return true;
}

#if GT_X86
namespace {
void cpuid(uint32_t out[4], uint32_t leaf, uint32_t sub) {
#if defined(_MSC_VER)
  int r[4];
  __cpuidex(r, static_cast<int>(leaf), static_cast<int>(sub));
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint32_t>(r[i]);
#else
  uint32_t a, b, c, d;
  __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
  out[0] = a; out[1] = b; out[2] = c; out[3] = d;
#endif
}
uint64_t xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  uint32_t eax = 0, edx = 0;
  __asm__ __volatile__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
#endif
}
struct X86Features { bool avx2_fma = false; bool avx512 = false; bool avx512_vnni = false; };
X86Features detect_x86() {
  X86Features f;
  uint32_t r[4];
  cpuid(r, 0, 0);
  const uint32_t max_leaf = r[0];
  if (max_leaf < 7) return f;
  cpuid(r, 1, 0);
  const bool osxsave = (r[2] >> 27) & 1;
  const bool fma = (r[2] >> 12) & 1;
  const bool avx = (r[2] >> 28) & 1;
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;          // SSE + AVX state
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;        // + opmask, ZMM_Hi256, Hi16_ZMM
  cpuid(r, 7, 0);
  const bool avx2 = (r[1] >> 5) & 1;
  const bool avx512f = (r[1] >> 16) & 1;
  f.avx2_fma = ymm_state && avx2 && fma;
  f.avx512 = f.avx2_fma && zmm_state && avx512f;
  f.avx512_vnni = f.avx512 && ((r[1] >> 30) & 1) && ((r[2] >> 11) & 1);  // AVX512BW, AVX512_VNNI
  return f;
}
}  // namespace
#endif

std::vector<SimdLevel> supported_simd_levels() {
  std::vector<SimdLevel> levels{SimdLevel::Scalar};
#if GT_X86
  static const X86Features f = detect_x86();
  if (f.avx2_fma) levels.push_back(SimdLevel::AVX2);
  if (f.avx512) levels.push_back(SimdLevel::AVX512);
#elif GT_ARM64
  levels.push_back(SimdLevel::NEON);  // NEON (ASIMD) is mandatory on AArch64
#endif
  return levels;
}

bool cpu_has_avx512_vnni() {
#if GT_X86
  static const X86Features f = detect_x86();
  return f.avx512_vnni;
#else
  return false;
#endif
}

bool simd_level_supported(SimdLevel level) {
  for (SimdLevel l : supported_simd_levels())
    if (l == level) return true;
  return false;
}

namespace {
struct DefaultLevel {
  SimdLevel level = SimdLevel::Scalar;
  std::string env_error;
  DefaultLevel() {
    level = supported_simd_levels().back();
    const char* env = std::getenv("GHOST_TENSOR_SIMD");
    if (env == nullptr || *env == '\0') return;
    SimdLevel forced;
    if (!parse_simd_level(env, &forced)) {
      env_error = std::string("GHOST_TENSOR_SIMD=") + env +
                  " is not one of scalar, avx2, avx512, neon; using " + simd_level_name(level);
    } else if (!simd_level_supported(forced)) {
      env_error = std::string("GHOST_TENSOR_SIMD=") + env + " is not supported by this CPU; using " +
                  simd_level_name(level);
    } else {
      level = forced;
    }
  }
};
const DefaultLevel& default_level_state() {
  static const DefaultLevel s;
  return s;
}
}  // namespace

SimdLevel default_simd_level() { return default_level_state().level; }
const std::string& simd_env_error() { return default_level_state().env_error; }

}  // namespace gt
