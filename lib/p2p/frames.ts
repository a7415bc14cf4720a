/**
 * Frames of the peer protocol `/ghost-tensor/forward/1.0.0` (docs/p2p.md): one
 * request and one response per stream, each the payload of one unsigned-varint
 * length-prefixed message. All integers little-endian. Decoding checks every length
 * against the bytes that remain and the limits before it allocates, and throws
 * FormatError (never a RangeError) on hostile bytes. Loads no addon and no libp2p.
 */
import { ByteReader, ByteWriter, bytesEqual, readInputRecord, writeInputRecord } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError } from '../shared/errors.js';
import type { ProofInput } from '../verify/proof-format.js';

/** The request/response protocol id. */
export const FORWARD_PROTOCOL = '/ghost-tensor/forward/1.0.0';
export const FRAME_VERSION = 1;

export const FRAME_LIMITS = {
  /** Largest request payload a node reads (the length prefix is checked before the bytes are read). */
  requestBytes: 16 * 2 ** 20,
  /** Largest response payload a client reads. */
  responseBytes: 64 * 2 ** 20,
  /** Layers in one request (as in a proof). */
  layers: 4096,
  /** Input rows (or ids) in one request. */
  rows: 4096,
  /** Values per input row. */
  cols: 2 ** 24,
  /** UTF-8 bytes of an error reason. */
  reasonBytes: 1024,
} as const;

const TYPE_REQUEST = 1;
const TYPE_RESPONSE = 2;

/** A forward request: run layers [firstLayer, firstLayer + layers) of the model with this Ghost digest on `input`. */
export interface ForwardRequest {
  /** Chosen by the client (u32), echoed in the response. */
  requestId: number;
  /** BLAKE3 digest of the Ghost file (32 bytes). */
  ghost: Uint8Array;
  firstLayer: number;
  layers: number;
  /** f32 rows (a Hopfield layer's input) or u32 ids (an Embedding's). */
  input: ProofInput;
}

/** Response status codes (u8 on the wire). */
export const STATUS = {
  OK: 0,
  /** The request did not decode (truncated, bad version or type, trailing bytes, a value out of range). */
  MALFORMED: 1,
  /** The length prefix is over the node's request limit (refused before reading the payload). */
  TOO_LARGE: 2,
  /** The node does not serve the model with this Ghost digest. */
  WRONG_GHOST: 3,
  /** The node serves the model but not every requested layer. */
  NOT_SERVED: 4,
  /** The input does not fit the first requested layer (shape, kind, non-finite, id out of range). */
  BAD_INPUT: 5,
  /** Too many requests in progress on this node. */
  BUSY: 6,
  /** The request was not read, or the proof not made, within the node's time limit. */
  TIMEOUT: 7,
  /** The node failed to make a proof. */
  INTERNAL: 8,
} as const;
export type ResponseStatus = keyof typeof STATUS;
export type ErrorStatus = Exclude<ResponseStatus, 'OK'>;

const STATUS_NAMES = new Map<number, ResponseStatus>(Object.entries(STATUS).map(([k, v]) => [v, k as ResponseStatus]));

export type ForwardResponse =
  | { requestId: number; status: 'OK'; /** An encoded forward proof (docs/proof-format.md). */ proof: Uint8Array }
  | { requestId: number; status: ErrorStatus; reason: string };

function checkU32(name: string, v: unknown, min = 0, max = 2 ** 32 - 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new InvalidArgumentError(`${name} must be an integer in ${min}..${max}`);
  return v;
}

/**
 * Request payload: u8 version (1), u8 type (1), u32 request id, 32-byte Ghost digest,
 * u32 first layer, u32 layer count (1..4096), u8 input kind, then f32 rows
 * (1: u32 rows, u32 cols, rows x cols f32) or ids (2: u32 count, count u32).
 */
export function encodeRequest(req: ForwardRequest): Uint8Array {
  const w = new ByteWriter();
  w.u8(FRAME_VERSION).u8(TYPE_REQUEST).u32(checkU32('requestId', req.requestId));
  if (!(req.ghost instanceof Uint8Array) || req.ghost.length !== 32) throw new InvalidArgumentError('ghost must be a 32-byte digest');
  w.bytes(req.ghost).u32(checkU32('firstLayer', req.firstLayer)).u32(checkU32('layers', req.layers, 1, FRAME_LIMITS.layers));
  const inp = req.input;
  if (inp.kind === 'f32') {
    checkU32('input rows', inp.rows, 1, FRAME_LIMITS.rows);
    checkU32('input cols', inp.cols, 1, FRAME_LIMITS.cols);
    if (!(inp.data instanceof Float32Array) || inp.data.length !== inp.rows * inp.cols) throw new InvalidArgumentError('input data must be a Float32Array of rows x cols');
  } else if (inp.kind === 'ids') {
    if (!(inp.ids instanceof Uint32Array)) throw new InvalidArgumentError('input ids must be a Uint32Array');
    checkU32('input id count', inp.ids.length, 1, FRAME_LIMITS.rows);
  } else {
    throw new InvalidArgumentError('input kind must be f32 or ids');
  }
  return writeInputRecord(w, inp).finish();
}

function header(r: ByteReader, type: number): number {
  const version = r.u8('version');
  if (version !== FRAME_VERSION) throw new FormatError('BAD_VERSION', `${r.what}: frame version ${version}`);
  const t = r.u8('type');
  if (t !== type) throw new FormatError('BAD_VALUE', `${r.what}: frame type ${t}, expected ${type}`);
  return r.u32('request id');
}

/** Decodes a request payload; throws FormatError with a reason. */
export function decodeRequest(bytes: Uint8Array): ForwardRequest {
  if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError('a request must be a Uint8Array');
  if (bytes.length > FRAME_LIMITS.requestBytes) throw new FormatError('LIMIT', `request: ${bytes.length} bytes is over the limit`);
  const r = new ByteReader(bytes, 'request');
  const requestId = header(r, TYPE_REQUEST);
  const ghost = r.bytes(32, 'ghost digest');
  const firstLayer = r.u32('first layer');
  const layers = r.count('layer count', 1, FRAME_LIMITS.layers);
  const input = readInputRecord(r, { maxRows: FRAME_LIMITS.rows, maxCols: FRAME_LIMITS.cols });
  r.end();
  return { requestId, ghost, firstLayer, layers, input };
}

/**
 * Response payload: u8 version (1), u8 type (2), u32 request id, u8 status; status 0
 * (OK): u32 length and that many bytes of an encoded forward proof; otherwise u16
 * length (<= 1024) and that many bytes of a UTF-8 reason.
 */
export function encodeResponse(res: ForwardResponse): Uint8Array {
  const w = new ByteWriter();
  w.u8(FRAME_VERSION).u8(TYPE_RESPONSE).u32(checkU32('requestId', res.requestId));
  const code = STATUS[res.status];
  if (code === undefined) throw new InvalidArgumentError(`unknown status ${String(res.status)}`);
  w.u8(code);
  if (res.status === 'OK') {
    if (!(res.proof instanceof Uint8Array)) throw new InvalidArgumentError('proof must be a Uint8Array');
    w.u32(res.proof.length).bytes(res.proof);
  } else {
    let reason = new TextEncoder().encode(res.reason);
    if (reason.length > FRAME_LIMITS.reasonBytes) reason = new TextEncoder().encode(`${res.reason.slice(0, FRAME_LIMITS.reasonBytes / 4 - 3)}...`);
    w.u16(reason.length).bytes(reason);
  }
  return w.finish();
}

/** Decodes a response payload; throws FormatError with a reason. */
export function decodeResponse(bytes: Uint8Array, maxBytes: number = FRAME_LIMITS.responseBytes): ForwardResponse {
  if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError('a response must be a Uint8Array');
  if (bytes.length > maxBytes) throw new FormatError('LIMIT', `response: ${bytes.length} bytes is over the ${maxBytes}-byte limit`);
  const r = new ByteReader(bytes, 'response');
  const requestId = header(r, TYPE_RESPONSE);
  const code = r.u8('status');
  const status = STATUS_NAMES.get(code);
  if (status === undefined) throw new FormatError('BAD_VALUE', `response: status ${code}`);
  let res: ForwardResponse;
  if (status === 'OK') {
    const n = r.u32('proof length');
    res = { requestId, status, proof: r.bytes(n, 'proof') };
  } else {
    const n = r.u16('reason length');
    if (n > FRAME_LIMITS.reasonBytes) throw new FormatError('LIMIT', `response: reason of ${n} bytes`);
    const reason = new TextDecoder('utf-8', { fatal: false }).decode(r.bytes(n, 'reason'));
    res = { requestId, status, reason };
  }
  r.end();
  return res;
}

/** True when two inputs are the same kind, shape and bits (the client's check that a proof answers its request). */
export function sameInput(a: ProofInput, b: ProofInput): boolean {
  if (a.kind === 'ids' && b.kind === 'ids') return bytesEqual(u8(a.ids), u8(b.ids));
  if (a.kind === 'f32' && b.kind === 'f32') return a.rows === b.rows && a.cols === b.cols && bytesEqual(u8(a.data), u8(b.data));
  return false;
}

function u8(a: Float32Array | Uint32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
