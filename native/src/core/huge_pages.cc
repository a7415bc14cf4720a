#include "huge_pages.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gt {

namespace {
constexpr std::align_val_t kAlign{64};
#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define GT_HUGE_PAGES 1
constexpr size_t kHugePage = size_t{2} << 20;
size_t huge_round(size_t bytes) { return (bytes + kHugePage - 1) / kHugePage * kHugePage; }
#endif
}  // namespace

bool huge_pages_off() {
  const char* v = std::getenv("GHOST_TENSOR_HUGE_PAGES");
  return v != nullptr && std::strcmp(v, "off") == 0;
}

void* huge_alloc(size_t bytes, bool zero) {
#if defined(GT_HUGE_PAGES)
  if (bytes >= kHugePage) {
    if (bytes > SIZE_MAX - 2 * kHugePage) throw std::bad_alloc();
    // Map a huge page more than needed, keep the 2 MiB-aligned part, return the rest.
    const size_t len = huge_round(bytes);
    void* m = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t raw = reinterpret_cast<uintptr_t>(m);
    const uintptr_t p = (raw + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
    if (p > raw) munmap(m, p - raw);
    if (raw + len + kHugePage > p + len) munmap(reinterpret_cast<void*>(p + len), raw + len + kHugePage - (p + len));
    if (!huge_pages_off()) madvise(reinterpret_cast<void*>(p), len, MADV_HUGEPAGE);  // advice only
    return reinterpret_cast<void*>(p);                                              // zero-filled
  }
#endif
  void* p = ::operator new(bytes == 0 ? 1 : bytes, kAlign);
  if (zero) std::memset(p, 0, bytes);
  return p;
}

void huge_free(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
#if defined(GT_HUGE_PAGES)
  if (bytes >= kHugePage) {
    munmap(p, huge_round(bytes));
    return;
  }
#endif
  (void)bytes;
  ::operator delete(p, kAlign);
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(GT_HUGE_PAGES)
  if (huge_pages_off()) return;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(uintptr_t{kHugePage} - 1);
  if (e > b) (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace gt
