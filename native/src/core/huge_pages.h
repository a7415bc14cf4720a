// Large buffers on transparent huge pages (Linux), for memory that is scanned or
// walked at random: tensor rows, Merkle levels, the HNSW graph.
//
// A buffer of at least 2 MiB is its own anonymous mapping, 2 MiB aligned, with
// MADV_HUGEPAGE (THP in "madvise" mode, the common default, then backs it with 2 MiB
// pages): one TLB entry and one page fault per 2 MiB instead of per 4 KiB. A one-query
// scan of 188 MB of rows reads a new 4 KiB page every 1.3 rows at d = 784. The advice
// changes nothing where THP is off, and never the bytes. GHOST_TENSOR_HUGE_PAGES=off
// (read at each allocation) leaves the advice out, to measure what it gives; the buffer
// is still its own mapping, so huge_free never depends on the setting. Smaller buffers,
// and other systems, use aligned operator new.
#pragma once
#include <cstddef>

namespace gt {

// Whether GHOST_TENSOR_HUGE_PAGES is "off".
bool huge_pages_off();

// At least `bytes` bytes, 64-byte aligned (2 MiB aligned when large), zero-filled when
// `zero` (a fresh mapping is zero already, so only small buffers pay for it). Throws
// std::bad_alloc. Free with huge_free(p, bytes), the same bytes.
void* huge_alloc(size_t bytes, bool zero);
void huge_free(void* p, size_t bytes) noexcept;

// Advises huge pages for the whole 2 MiB pages inside [p, p + bytes) (memory from
// another allocator, e.g. malloc's), unless GHOST_TENSOR_HUGE_PAGES=off.
void advise_huge_pages(void* p, size_t bytes);

}  // namespace gt
