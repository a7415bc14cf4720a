#include "blake3_batch.h"

#include "../../third_party/blake3/blake3_impl.h"

void gt_blake3_keyed_many(const uint8_t key[32], const uint8_t* const* inputs, size_t n, size_t len,
                          uint8_t* out) {
  uint32_t key_words[8];
  load_key_words(key, key_words);
  /* A single-chunk input hashed as the root: the chunk's blocks are compressed
   * with CHUNK_START on the first and CHUNK_END | ROOT on the last, counter 0. */
  blake3_hash_many(inputs, n, len / BLAKE3_BLOCK_LEN, key_words, 0, false, KEYED_HASH, CHUNK_START,
                   CHUNK_END | ROOT, out);
}

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
