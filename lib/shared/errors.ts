/**
 * Typed errors. Every error the library throws is a GhostTensorError; the
 * subclass (and the stable `code`) says what kind of problem it is, and the
 * message names the argument at fault.
 */

export type GhostTensorErrorCode =
  | 'ERR_GT_INVALID_ARGUMENT'
  | 'ERR_GT_OUT_OF_RANGE'
  | 'ERR_GT_NON_FINITE'
  | 'ERR_GT_DETACHED'
  | 'ERR_GT_BUSY'
  | 'ERR_GT_UNSUPPORTED'
  | 'ERR_GT_NATIVE_UNAVAILABLE'
  | 'ERR_GT_OUT_OF_MEMORY'
  | 'ERR_GT_INTERNAL'
  | 'ERR_GT_PROOF'
  | 'ERR_GT_FORMAT'
  | 'ERR_GT_STORAGE'
  | 'ERR_GT_P2P'
  | 'ERR_GT_REMOTE';

export class GhostTensorError extends Error {
  readonly code: GhostTensorErrorCode;
  constructor(code: GhostTensorErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Wrong type, length or shape of an argument. */
export class InvalidArgumentError extends GhostTensorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GT_INVALID_ARGUMENT', message, options);
  }
}
/** An id, k, size or dimension outside what is allowed. */
export class OutOfRangeError extends GhostTensorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GT_OUT_OF_RANGE', message, options);
  }
}
/** NaN or an infinity where values must be finite. */
export class NonFiniteError extends GhostTensorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GT_NON_FINITE', message, options);
  }
}
/** A buffer the library relies on was detached (transferred). */
export class DetachedBufferError extends GhostTensorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GT_DETACHED', message, options);
  }
}
/** A write was attempted while an asynchronous read of the same tensor runs. */
export class TensorBusyError extends GhostTensorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GT_BUSY', message, options);
  }
}
/** A SIMD level or feature this CPU or build does not have. */
export class UnsupportedError extends GhostTensorError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_GT_UNSUPPORTED', message, options);
  }
}
/** Why a proof was rejected. */
export type ProofFailure =
  | 'BAD_N' // N is not an integer in 1..2^32-1
  | 'EMPTY' // no ids
  | 'IDS_NOT_SORTED' // ids not strictly ascending (unsorted or repeated)
  | 'ID_OUT_OF_RANGE' // an id >= N
  | 'LEAF_LENGTH' // leaf bytes are not ids.length equal, non-empty multiples of 4 bytes
  | 'PROOF_LENGTH' // the proof does not hold exactly the hashes these ids and N need
  | 'BAD_ROOT' // the trusted root is not 32 bytes
  | 'ROOT_MISMATCH' // everything was well-formed and used, but the root differs
  // Ghost proofs (docs/proof-format.md):
  | 'WRONG_KIND' // a forward proof given to verifyUpdate, or an update proof to verifyForward
  | 'GHOST_MISMATCH' // the proof is for another Ghost file (its digest differs from the pinned one)
  | 'LAYER_MISMATCH' // the layers, their ops or the tensors a block names do not match the Ghost file
  | 'SHAPE' // a length (input, ids per stage, output, block rows) does not fit the Ghost file
  | 'BLOCK_IDS' // a block does not reveal exactly the patterns the claimed computation reads
  | 'DUPLICATE_ID' // one input's k selected ids repeat an id
  | 'NOT_HELD' // a pattern sent by id only (or as a delta) is not in the verifier's cache
  | 'SELECTION_MISMATCH' // product keys, or held keys (an exact layer revealing every key): the claimed ids are not the top-k the verifier re-derives
  | 'SELECTION_UNPROVEN' // requireSelection: an exact or HNSW layer's proof does not reveal its keys whole, so its selection cannot be re-derived
  | 'OUTPUT_MISMATCH' // the verifier's canonical recomputation differs from the claimed output
  | 'UPDATE_MISMATCH' // an update proof's new root differs from the one the verifier computes
  | 'NO_TRAINING_RULE' // a step proof for a Ghost file that commits no training rule (format 3), or a model without one asked to prove a step
  | 'BUDGET' // checking the proof would take more memory or work than the verifier's limits allow (VerifierLimits; refused from the headers, before the work)
  // A peer's answer (docs/p2p.md), checked by the client before verifyForward:
  | 'INPUT_MISMATCH'; // the proof is of another input than the one the client sent

/** A proof that does not verify. `reason` says which check failed. */
export class ProofError extends GhostTensorError {
  readonly reason: ProofFailure;
  constructor(reason: ProofFailure, message: string) {
    super('ERR_GT_PROOF', `${reason}: ${message}`);
    this.reason = reason;
  }
}

export type FormatFailure =
  | 'TRUNCATED' // the bytes end inside a field
  | 'TRAILING_BYTES' // bytes are left after the last field
  | 'BAD_MAGIC' // not this kind of file
  | 'BAD_VERSION' // a version this decoder does not know
  | 'LIMIT' // a count or length beyond the documented limits (checked before allocating)
  | 'BAD_VALUE' // an enum, flag, name or number outside its allowed values
  | 'NON_CANONICAL'; // decodes, but is not the one canonical encoding of its content

/** Bytes that do not decode as a Ghost file or a proof. `reason` says which check failed. */
export class FormatError extends GhostTensorError {
  readonly reason: FormatFailure;
  constructor(reason: FormatFailure, message: string) {
    super('ERR_GT_FORMAT', `${reason}: ${message}`);
    this.reason = reason;
  }
}

/** What is wrong with a tensor file, or which file operation failed (docs/storage.md). */
export type StorageFailure =
  | 'IO' // the operating system refused a read, write, sync, open or mapping (message has the errno text)
  | 'TRUNCATED' // the file is shorter than its header says
  | 'BAD_MAGIC' // not a ghost-tensor file
  | 'HEADER_CHECKSUM' // no header slot passes its BLAKE3 checksum
  | 'VERSION' // a format or hash-scheme version this build does not read
  | 'BAD_HEADER' // a checksummed header with impossible fields (shape, layout, flags)
  | 'ROOT_MISMATCH' // the values or stored tree do not give the recorded root
  | 'ROW_MISMATCH' // a row read for the first time does not match its stored leaf, or its tree path the root
  | 'STATE_MISMATCH' // a row's optimizer state does not match its stored check (format v2)
  | 'STATE_INVALID' // a row's optimizer state holds values no step produces (non-finite, v < 0, counter or decay mark out of range)
  | 'NON_FINITE' // the root check found NaN or an infinity in a row
  | 'WAL_CORRUPT' // a complete log record fails its checksum or is malformed (not a torn tail)
  | 'WAL_MISMATCH' // the log belongs to another file or a log was lost
  | 'WAL_ROOT_MISMATCH' // replaying a log record did not give the root it recorded
  | 'LOCKED' // another process has the file open for writing
  | 'READ_ONLY' // a checkpoint on a file opened read-only
  | 'CLOSED' // the tensor file was closed
  | 'INDEX_CHECKSUM'; // a saved HNSW graph is missing its checksum file or does not match it

const STORAGE_FAILURES: readonly string[] = [
  'IO', 'TRUNCATED', 'BAD_MAGIC', 'HEADER_CHECKSUM', 'VERSION', 'BAD_HEADER', 'ROOT_MISMATCH', 'ROW_MISMATCH',
  'STATE_MISMATCH', 'STATE_INVALID', 'NON_FINITE',
  'WAL_CORRUPT', 'WAL_MISMATCH', 'WAL_ROOT_MISMATCH', 'LOCKED', 'READ_ONLY', 'CLOSED', 'INDEX_CHECKSUM',
];

/** A damaged tensor file (refused, never served) or a failed file operation. `reason` says which. */
export class StorageError extends GhostTensorError {
  readonly reason: StorageFailure;
  constructor(reason: StorageFailure, message: string, options?: { cause?: unknown }) {
    super('ERR_GT_STORAGE', message.startsWith(`${reason}:`) ? message : `${reason}: ${message}`, options);
    this.reason = reason;
  }
}

// The addon sets the reason as a property of its error (gt::StorageError in
// native/src/core/errors.h); a missing or unknown one is an I/O failure.
function storageError(message: string, cause: unknown): StorageError {
  const r = typeof cause === 'object' && cause !== null ? (cause as { reason?: unknown }).reason : undefined;
  const reason = typeof r === 'string' && STORAGE_FAILURES.includes(r) ? (r as StorageFailure) : 'IO';
  return new StorageError(reason, message, { cause });
}

/** Why a peer-to-peer forward pass failed (docs/p2p.md). */
export type P2PFailure =
  | 'NO_PROVIDER' // no provider left for a layer (none found on the DHT, or every one was dropped)
  | 'BOOTSTRAP' // none of the bootstrap addresses could be dialled
  | 'NO_PEER' // swarm: no peer could serve the log entries asked for
  | 'TIMEOUT'; // swarm: a step was not sequenced (accepted or passed over) in time

/** A peer-to-peer operation that could not complete. `reason` says why; `detail` carries what the client learned (its report). */
export class P2PError extends GhostTensorError {
  readonly reason: P2PFailure;
  readonly detail: unknown;
  constructor(reason: P2PFailure, message: string, detail?: unknown) {
    super('ERR_GT_P2P', `${reason}: ${message}`);
    this.reason = reason;
    this.detail = detail;
  }
}

/**
 * A prover service (lib/serve) refused a request or could not be reached. `status`
 * is the HTTP status (0: no response: connection refused, timeout, aborted) and
 * `reason` the server's reason token (docs/serving.md), e.g. 'BATCH_TOO_LARGE', or the
 * client's: 'UNREACHABLE', 'TIMEOUT' (one attempt), 'DEADLINE_EXCEEDED' (the call's
 * deadline passed, retries included).
 */
export class RemoteError extends GhostTensorError {
  readonly status: number;
  readonly reason: string;
  /** The server's Retry-After, in milliseconds, when it sent one (503). */
  retryAfterMs?: number;
  constructor(status: number, reason: string, message: string, options?: { cause?: unknown }) {
    super('ERR_GT_REMOTE', `${reason}: ${message}`, options);
    this.status = status;
    this.reason = reason;
  }
}

/** The native addon could not be loaded, ran out of memory, or failed internally. */
export class NativeError extends GhostTensorError {}

const byCode: Record<string, (message: string, cause: unknown) => GhostTensorError> = {
  ERR_GT_INVALID_ARGUMENT: (m, cause) => new InvalidArgumentError(m, { cause }),
  ERR_GT_OUT_OF_RANGE: (m, cause) => new OutOfRangeError(m, { cause }),
  ERR_GT_NON_FINITE: (m, cause) => new NonFiniteError(m, { cause }),
  ERR_GT_DETACHED: (m, cause) => new DetachedBufferError(m, { cause }),
  ERR_GT_BUSY: (m, cause) => new TensorBusyError(m, { cause }),
  ERR_GT_UNSUPPORTED: (m, cause) => new UnsupportedError(m, { cause }),
  ERR_GT_STORAGE: (m, cause) => storageError(m, cause),
  ERR_GT_OUT_OF_MEMORY: (m, cause) => new NativeError('ERR_GT_OUT_OF_MEMORY', m, { cause }),
  ERR_GT_INTERNAL: (m, cause) => new NativeError('ERR_GT_INTERNAL', m, { cause }),
};

/** Converts an error thrown by the addon into the matching typed error. */
export function fromNative(err: unknown): GhostTensorError {
  if (err instanceof GhostTensorError) return err;
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    const make = typeof code === 'string' ? byCode[code] : undefined;
    if (make) return make(err.message, err);
    return new NativeError('ERR_GT_INTERNAL', err.message, { cause: err });
  }
  return new NativeError('ERR_GT_INTERNAL', String(err), { cause: err });
}

/** Runs a native call, rethrowing its errors as typed errors. */
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}

/** callNative for an asynchronous native call: a rejection is converted the same way. */
export async function callNativeAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fromNative(err);
  }
}
