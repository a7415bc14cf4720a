#include "parallel.h"

#include <cstdlib>

namespace gt {

size_t default_threads() {
  static const size_t n = [] {
    if (const char* env = std::getenv("GHOST_TENSOR_THREADS")) {
      char* end = nullptr;
      const long v = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && v >= 1 && v <= 1024) return static_cast<size_t>(v);
    }
    const unsigned hc = std::thread::hardware_concurrency();
    return static_cast<size_t>(hc == 0 ? 1 : hc);
  }();
  return n;
}

}  // namespace gt
