// Builds a small hnswlib graph over the given rows and returns the label of the
// nearest row to `query` (L2). Keeps the vendored hnswlib compiled and linked
// until the retrieval issue builds the real index on it.
#pragma once
#include <cstddef>
#include <cstdint>

namespace gt {
uint32_t hnsw_nearest_l2(const float* rows, size_t n, size_t d, const float* query);
}
