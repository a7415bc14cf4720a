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

const char* storage_reason_string(StorageReason reason) {
  switch (reason) {
    case StorageReason::IO: return "IO";
    case StorageReason::Truncated: return "TRUNCATED";
    case StorageReason::BadMagic: return "BAD_MAGIC";
    case StorageReason::HeaderChecksum: return "HEADER_CHECKSUM";
    case StorageReason::Version: return "VERSION";
    case StorageReason::BadHeader: return "BAD_HEADER";
    case StorageReason::RootMismatch: return "ROOT_MISMATCH";
    case StorageReason::RowMismatch: return "ROW_MISMATCH";
    case StorageReason::StateMismatch: return "STATE_MISMATCH";
    case StorageReason::StateInvalid: return "STATE_INVALID";
    case StorageReason::NonFinite: return "NON_FINITE";
    case StorageReason::WalCorrupt: return "WAL_CORRUPT";
    case StorageReason::WalMismatch: return "WAL_MISMATCH";
    case StorageReason::WalRootMismatch: return "WAL_ROOT_MISMATCH";
    case StorageReason::Locked: return "LOCKED";
    case StorageReason::ReadOnly: return "READ_ONLY";
    case StorageReason::Closed: return "CLOSED";
    case StorageReason::IndexChecksum: return "INDEX_CHECKSUM";
  }
  return "IO";
}

}  // namespace gt
