/** Which SIMD level the kernels run at, and what this machine supports. */
import { callNative } from '../shared/errors.js';
import { native, type NativeSimdLevel } from './native.js';

export type SimdLevel = NativeSimdLevel;

export interface SimdInfo {
  /** The level kernels use by default: the best supported, or lower if forced. */
  level: SimdLevel;
  /** Levels this CPU can run, scalar first. */
  supported: SimdLevel[];
  /** Levels compiled into this binary. */
  compiled: SimdLevel[];
  /** Why GHOST_TENSOR_SIMD was ignored (unknown or unsupported name), or null. */
  envError: string | null;
  /** Worker threads used by batched work (GHOST_TENSOR_THREADS or the core count). */
  threads: number;
  /** Version of the vendored BLAKE3 C implementation. */
  blake3: string;
  /**
   * The level BLAKE3 hashes at (Merkle trees, checksums): `avx512`, `avx2`, `sse41`,
   * `sse2`, `neon` or `portable`. BLAKE3 picks its own level from the CPU, independent of
   * GHOST_TENSOR_SIMD; GHOST_TENSOR_BLAKE3_SIMD caps it (set before the library loads).
   */
  blake3Simd: string;
}

/**
 * The run-time dispatch state. Set the environment variable GHOST_TENSOR_SIMD to
 * `scalar`, `avx2`, `avx512` or `neon` before the process loads the library to force
 * a lower (supported) level.
 */
export function simdInfo(): SimdInfo {
  return callNative(() => native().simdInfo());
}
