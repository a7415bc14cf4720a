#include "blake3_batch.h"

#include <string.h>

#include "../../third_party/blake3/blake3_impl.h"

/* A single-chunk input hashed as the root: the chunk's blocks are compressed with
 * CHUNK_START on the first and CHUNK_END | ROOT on the last, counter 0. */
static void keyed_many_one_chunk(const uint32_t key_words[8], const uint8_t* const* inputs, size_t n,
                                 size_t len, uint8_t* out) {
  blake3_hash_many(inputs, n, len / BLAKE3_BLOCK_LEN, key_words, 0, false, KEYED_HASH, CHUNK_START,
                   CHUNK_END | ROOT, out);
}

/* Inputs of c > 1 chunks (the last one 64..1024 bytes), GROUP at a time. BLAKE3's tree
 * over c chunks splits at the largest power of two below c (blake3.c, left_len), which
 * is the level-by-level pairing with the lone last node promoted: so each level of all
 * the group's trees is one run of hash_many calls. Chunk j of every input is compressed
 * with counter j; parents with counter 0 and PARENT; the last parent also with ROOT,
 * whose first 32 output bytes are the hash. */
#define GROUP 16
static void keyed_many_chunks(const uint32_t key_words[8], const uint8_t* const* inputs, size_t n, size_t len,
                              uint8_t* out) {
  const size_t chunks = (len + BLAKE3_CHUNK_LEN - 1) / BLAKE3_CHUNK_LEN;
  const size_t last_blocks = (len - (chunks - 1) * BLAKE3_CHUNK_LEN) / BLAKE3_BLOCK_LEN;
  uint8_t cvs[GROUP * GT_BLAKE3_MAX_CHUNKS * BLAKE3_OUT_LEN]; /* input i's chain values at i * chunks */
  uint8_t tmp[GROUP * BLAKE3_OUT_LEN];
  const uint8_t* ptrs[GROUP];
  for (size_t g = 0; g < n; g += GROUP) {
    const size_t m = n - g < GROUP ? n - g : GROUP;
    for (size_t c = 0; c < chunks; ++c) {
      for (size_t i = 0; i < m; ++i) ptrs[i] = inputs[g + i] + c * BLAKE3_CHUNK_LEN;
      const size_t blocks = c + 1 == chunks ? last_blocks : BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN;
      blake3_hash_many(ptrs, m, blocks, key_words, c, false, KEYED_HASH, CHUNK_START, CHUNK_END, tmp);
      for (size_t i = 0; i < m; ++i)
        memcpy(cvs + (i * chunks + c) * BLAKE3_OUT_LEN, tmp + i * BLAKE3_OUT_LEN, BLAKE3_OUT_LEN);
    }
    for (size_t w = chunks; w > 1; w = (w + 1) / 2) {
      const uint8_t flags = (uint8_t)(KEYED_HASH | PARENT | (w == 2 ? ROOT : 0));
      const size_t pairs = w / 2;
      /* Parent j of input i = node(cv 2j, cv 2j+1), written to position j after its
       * batch (a later batch reads positions 2j' > j only: in place is safe). */
      size_t k = 0;
      size_t dest[GROUP];
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < pairs; ++j) {
          ptrs[k] = cvs + (i * chunks + 2 * j) * BLAKE3_OUT_LEN;
          dest[k] = i * chunks + j;
          if (++k == GROUP || (i + 1 == m && j + 1 == pairs)) {
            blake3_hash_many(ptrs, k, 1, key_words, 0, false, flags, 0, 0, tmp);
            for (size_t t = 0; t < k; ++t) memcpy(cvs + dest[t] * BLAKE3_OUT_LEN, tmp + t * BLAKE3_OUT_LEN, BLAKE3_OUT_LEN);
            k = 0;
          }
        }
      }
      if (w % 2 == 1) /* the lone last chain value moves up unchanged (after every read) */
        for (size_t i = 0; i < m; ++i)
          memcpy(cvs + (i * chunks + pairs) * BLAKE3_OUT_LEN, cvs + (i * chunks + w - 1) * BLAKE3_OUT_LEN,
                 BLAKE3_OUT_LEN);
    }
    for (size_t i = 0; i < m; ++i) memcpy(out + (g + i) * BLAKE3_OUT_LEN, cvs + i * chunks * BLAKE3_OUT_LEN, BLAKE3_OUT_LEN);
  }
}

void gt_blake3_keyed_many(const uint8_t key[32], const uint8_t* const* inputs, size_t n, size_t len,
                          uint8_t* out) {
  uint32_t key_words[8];
  load_key_words(key, key_words);
  if (len <= BLAKE3_CHUNK_LEN) keyed_many_one_chunk(key_words, inputs, n, len, out);
  else keyed_many_chunks(key_words, inputs, n, len, out);
}

const char* blake3_gt_simd_name(void); /* blake3_dispatch.c (ghost-tensor patch) */

const char* gt_blake3_simd_name(void) { return blake3_gt_simd_name(); }

void gt_blake3_keyed(const uint8_t key[32], const uint8_t* input, size_t len, uint8_t out[32]) {
  blake3_hasher h;
  blake3_hasher_init_keyed(&h, key);
  blake3_hasher_update(&h, input, len);
  blake3_hasher_finalize(&h, out, 32);
}

void gt_blake3_plain(const uint8_t* input, size_t len, uint8_t out[32]) {
  blake3_hasher h;
  blake3_hasher_init(&h);
  blake3_hasher_update(&h, input, len);
  blake3_hasher_finalize(&h, out, 32);
}
