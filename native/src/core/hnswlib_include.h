// The vendored hnswlib headers, with their warnings kept out of ours.
#pragma once
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include "../../third_party/hnswlib/hnswlib.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
