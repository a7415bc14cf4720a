/* Batched keyed BLAKE3 over many equal-size single-chunk inputs, through the
 * official C implementation's SIMD hash_many (SSE2/SSE4.1/AVX2/AVX-512/NEON,
 * chosen at run time by blake3_dispatch.c). Plain C interface. */
#ifndef GT_BLAKE3_BATCH_H
#define GT_BLAKE3_BATCH_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GT_BLAKE3_CHUNK_LEN 1024
#define GT_BLAKE3_BLOCK_LEN 64
/* Largest input the batched path takes: 64 chunks (64 KiB, d = 16384 f32). */
#define GT_BLAKE3_MAX_CHUNKS 64
#define GT_BLAKE3_MAX_BATCH_LEN (GT_BLAKE3_MAX_CHUNKS * GT_BLAKE3_CHUNK_LEN)

/* out[i*32 .. i*32+32) = BLAKE3_keyed(key, inputs[i][0 .. len)) for i < n.
 * Requires len to be a non-zero multiple of 64 and at most GT_BLAKE3_MAX_BATCH_LEN;
 * the caller falls back to gt_blake3_keyed otherwise. One chunk (len <= 1024): the
 * inputs go through hash_many together. Longer: 16 inputs at a time, chunk j of each
 * through one hash_many call, then their chunk trees level by level. */
void gt_blake3_keyed_many(const uint8_t key[32], const uint8_t* const* inputs, size_t n, size_t len,
                          uint8_t* out);

/* out = BLAKE3_keyed(key, input[0 .. len)), any length. */
void gt_blake3_keyed(const uint8_t key[32], const uint8_t* input, size_t len, uint8_t out[32]);

/* The level BLAKE3's hash_many runs at: "avx512", "avx2", "sse41", "sse2", "neon" or
 * "portable" (BLAKE3's own run-time detection, capped by GHOST_TENSOR_BLAKE3_SIMD). */
const char* gt_blake3_simd_name(void);

/* out = BLAKE3(input[0 .. len)) (unkeyed), any length. */
void gt_blake3_plain(const uint8_t* input, size_t len, uint8_t out[32]);

#ifdef __cplusplus
}
#endif
#endif
