// Errors raised by the core. Each carries a stable code that the Node-API layer
// copies onto the JavaScript error, where the TypeScript wrapper maps it to a
// typed error class (lib/shared/errors.ts). A storage error also carries its reason, which
// the Node-API layer copies as the error's `reason` (StorageError.reason in
// lib/shared/errors.ts; docs/storage.md lists them).
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
  Storage,          // a tensor file is damaged, or reading / writing it failed:
                    // always a StorageError, which says why
};

const char* error_code_string(ErrorCode code);

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }
  // A storage error's reason token ("ROW_MISMATCH"); null for every other error.
  virtual const char* reason() const { return nullptr; }

 private:
  ErrorCode code_;
};

// Why a tensor file (or a saved HNSW graph) was refused, or which file operation failed.
enum class StorageReason {
  IO,               // IO: the operating system refused a read, write, sync, open or mapping
  Truncated,        // TRUNCATED: the file is shorter than its header says
  BadMagic,         // BAD_MAGIC: not a ghost-tensor file
  HeaderChecksum,   // HEADER_CHECKSUM: no header slot passes its BLAKE3 checksum
  Version,          // VERSION: a format or hash-scheme version this build does not read
  BadHeader,        // BAD_HEADER: a checksummed header with impossible fields
  RootMismatch,     // ROOT_MISMATCH: the values or stored tree do not give the recorded root
  RowMismatch,      // ROW_MISMATCH: a row read for the first time does not match its stored leaf or path
  StateMismatch,    // STATE_MISMATCH: a row's optimizer state does not match its stored check
  StateInvalid,     // STATE_INVALID: a row's optimizer state holds values no step produces
  NonFinite,        // NON_FINITE: the root check found NaN or an infinity in a row
  WalCorrupt,       // WAL_CORRUPT: a complete log record fails its checksum or is malformed
  WalMismatch,      // WAL_MISMATCH: the log belongs to another file or a log was lost
  WalRootMismatch,  // WAL_ROOT_MISMATCH: replaying a log record did not give the root it recorded
  Locked,           // LOCKED: another process has the file open for writing
  ReadOnly,         // READ_ONLY: a checkpoint on a file opened read-only
  Closed,           // CLOSED: the tensor file was closed
  IndexChecksum,    // INDEX_CHECKSUM: a saved HNSW graph is missing its checksum file or does not match it
};

const char* storage_reason_string(StorageReason reason);

// ErrorCode::Storage with its reason. The message is the reason token, ": " and the
// detail ("ROW_MISMATCH: row 7 read from the file ..."), the text users see.
class StorageError : public Error {
 public:
  StorageError(StorageReason reason, const std::string& detail)
      : Error(ErrorCode::Storage, std::string(storage_reason_string(reason)) + ": " + detail),
        reason_(reason),
        detail_(detail) {}
  const char* reason() const override { return storage_reason_string(reason_); }
  StorageReason storage_reason() const { return reason_; }
  const std::string& detail() const { return detail_; }

 private:
  StorageReason reason_;
  std::string detail_;
};

}  // namespace gt
