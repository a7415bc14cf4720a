// CPU feature detection and the SIMD level the kernels run at.
#pragma once
#include <string>
#include <vector>

namespace gt {

enum class SimdLevel : int { Scalar = 0, AVX2 = 1, AVX512 = 2, NEON = 3 };

const char* simd_level_name(SimdLevel level);
// Parses "scalar" | "avx2" | "avx512" | "neon"; returns false on an unknown name.
bool parse_simd_level(const std::string& name, SimdLevel* out);

// Levels this CPU (and OS) can run, scalar first.
std::vector<SimdLevel> supported_simd_levels();
bool simd_level_supported(SimdLevel level);
// AVX-512 with AVX512BW and AVX512_VNNI (the key sketch's first pass, key_sketch_avx512.cc).
bool cpu_has_avx512_vnni();

// The best supported level, lowered by the environment variable GHOST_TENSOR_SIMD
// when it names a supported level. An unknown or unsupported name is recorded in
// simd_env_error() and ignored (the library still loads).
SimdLevel default_simd_level();
const std::string& simd_env_error();

}  // namespace gt
