// f32 vector kernels, one table per SIMD level, chosen at run time (see cpu.h).
//
// Every level computes the same quantities; results differ only by f32 rounding
// (different summation order). The per-level files are compiled with their own
// target flags and include only kernel_table.h and intrinsics headers, so no
// instruction beyond baseline x86-64 can leak into code that runs before dispatch.
#pragma once
#include "cpu.h"
#include "kernel_table.h"

namespace gt {

// The table for a level. Requesting a level the CPU cannot run is a programming
// error: callers check simd_level_supported() first (the API edge does). A level
// not compiled into this binary falls back to scalar.
const Kernels& kernels_for(SimdLevel level);
// The table for default_simd_level().
const Kernels& kernels();

}  // namespace gt
