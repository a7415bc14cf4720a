#include "errors.h"

namespace gt {

const char* error_code_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::InvalidArgument: return "ERR_GT_INVALID_ARGUMENT";
    case ErrorCode::OutOfRange: return "ERR_GT_OUT_OF_RANGE";
    case ErrorCode::NonFinite: return "ERR_GT_NON_FINITE";
    case ErrorCode::Detached: return "ERR_GT_DETACHED";
    case ErrorCode::Busy: return "ERR_GT_BUSY";
    case ErrorCode::Unsupported: return "ERR_GT_UNSUPPORTED";
    case ErrorCode::Storage: return "ERR_GT_STORAGE";
  }
  return "ERR_GT_UNKNOWN";
}

}  // namespace gt
