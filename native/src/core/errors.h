// Errors raised by the core. Each carries a stable code that the Node-API layer
// copies onto the JavaScript error, where the TypeScript wrapper maps it to a
// typed error class (lib/errors.ts).
#pragma once
#include <stdexcept>
#include <string>

namespace gt {

enum class ErrorCode {
  InvalidArgument,  // wrong type, length or shape
  OutOfRange,       // an id, k or size outside what is allowed
  NonFinite,        // NaN or infinity where values must be finite
  Detached,         // an adopted buffer was detached (transferred) by JavaScript
  Busy,             // a write while an asynchronous read of the tensor is running
  Unsupported,      // a SIMD level or feature this CPU or build lacks
  Storage,          // a tensor file is damaged, or reading / writing it failed; the
                    // message starts with a reason token ("HEADER_CHECKSUM: ...")
};

const char* error_code_string(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace gt
