/**
 * Messages of a training swarm (docs/swarm.md): the gossipsub topics' payloads (a step
 * proposed by a trainer, a log entry published by the sequencer) and the frames of the
 * request/response protocol `/ghost-tensor/swarm/log/1.0.0` that fetches log entries
 * (each frame one varint length-prefixed message, lib/p2p/host.ts readFrame/writeFrame).
 * All integers little-endian. Decoding checks every length against the bytes that
 * remain and the limits before it allocates, and throws FormatError on hostile bytes.
 * Loads no addon and no libp2p.
 */
import { ByteReader, ByteWriter } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError } from '../shared/errors.js';

/** The request/response protocol id (fetching log entries). */
export const SWARM_LOG_PROTOCOL = '/ghost-tensor/swarm/log/1.0.0';
export const SWARM_VERSION = 1;

export const SWARM_LIMITS = {
  /** Bytes of one step proof in a message or a response. */
  proofBytes: 16 * 2 ** 20,
  /** Entries asked for, or answered, in one request. */
  entries: 1024,
  /** Bytes of one response payload (checked on the length prefix). */
  responseBytes: 64 * 2 ** 20,
  /** Bytes of one request payload. */
  requestBytes: 64,
} as const;

const T_STEP = 1;
const T_ENTRY = 2;
const T_REQUEST = 3;
const T_RESPONSE = 4;
const T_ANNOUNCE = 5;
const T_HEADER_REQUEST = 8;
const T_HEADER_RESPONSE = 9;

/** The two gossipsub topics of the swarm whose generation-0 Ghost digest is `genesis`. */
export function swarmTopics(genesis: Uint8Array): { steps: string; log: string } {
  const hex = Buffer.from(genesis).toString('hex');
  return { steps: `/ghost-tensor/swarm/1/${hex}/steps`, log: `/ghost-tensor/swarm/1/${hex}/log` };
}

function digest(name: string, d: Uint8Array): Uint8Array {
  if (!(d instanceof Uint8Array) || d.length !== 32) throw new InvalidArgumentError(`${name} must be a 32-byte digest`);
  return d;
}

function proofBytes(p: Uint8Array): Uint8Array {
  if (!(p instanceof Uint8Array) || p.length === 0 || p.length > SWARM_LIMITS.proofBytes) throw new InvalidArgumentError(`a step proof must be 1..${SWARM_LIMITS.proofBytes} bytes`);
  return p;
}

function head(r: ByteReader, type: number): void {
  const v = r.u8('version');
  if (v !== SWARM_VERSION) throw new FormatError('BAD_VERSION', `${r.what}: version ${v}`);
  const t = r.u8('type');
  if (t !== type) throw new FormatError('BAD_VALUE', `${r.what}: type ${t}, expected ${type}`);
}

function readProof(r: ByteReader): Uint8Array {
  const n = r.count('proof length', 1, SWARM_LIMITS.proofBytes, 1);
  return r.bytes(n, 'proof');
}

/** A proposed step (topic `steps`): u8 version, u8 type 1, u32 length, the step proof. */
export function encodeStepMessage(proof: Uint8Array): Uint8Array {
  proofBytes(proof);
  return new ByteWriter().u8(SWARM_VERSION).u8(T_STEP).u32(proof.length).bytes(proof).finish();
}

export function decodeStepMessage(bytes: Uint8Array): Uint8Array {
  const r = new ByteReader(bytes, 'step message');
  head(r, T_STEP);
  const p = readProof(r);
  r.end();
  return p;
}

/** One entry of the log: the step proof that takes generation `generation` to the next. */
export interface LogEntry {
  generation: number;
  proof: Uint8Array;
}

/** A log entry (topic `log`): u8 version, u8 type 2, 32-byte genesis digest, u64 generation, u32 length, the step proof. */
export function encodeLogEntry(genesis: Uint8Array, e: LogEntry): Uint8Array {
  return new ByteWriter().u8(SWARM_VERSION).u8(T_ENTRY).bytes(digest('genesis', genesis)).u64(e.generation).u32(proofBytes(e.proof).length).bytes(e.proof).finish();
}

export function decodeLogEntry(bytes: Uint8Array): { genesis: Uint8Array } & LogEntry {
  const r = new ByteReader(bytes, 'log entry');
  head(r, T_ENTRY);
  const genesis = r.bytes(32, 'genesis digest');
  const generation = r.u64('generation');
  const proof = readProof(r);
  r.end();
  return { genesis, generation, proof };
}

/**
 * A digest-only log entry (topic `log`, when the sequencer announces digests): u8
 * version, u8 type 5, 32-byte genesis digest, u64 generation, 32-byte BLAKE3-256 of the
 * step proof. A peer fetches the proof (the log-fetch protocol) from the peer that
 * forwarded the announcement, else the sequencer, and checks its digest before verifying it.
 */
export interface LogAnnouncement {
  genesis: Uint8Array;
  generation: number;
  proofDigest: Uint8Array;
}

export function encodeLogAnnouncement(a: LogAnnouncement): Uint8Array {
  return new ByteWriter().u8(SWARM_VERSION).u8(T_ANNOUNCE).bytes(digest('genesis', a.genesis)).u64(a.generation).bytes(digest('proofDigest', a.proofDigest)).finish();
}

export function decodeLogAnnouncement(bytes: Uint8Array): LogAnnouncement {
  const r = new ByteReader(bytes, 'log announcement');
  head(r, T_ANNOUNCE);
  const genesis = r.bytes(32, 'genesis digest');
  const generation = r.u64('generation');
  const proofDigest = r.bytes(32, 'proof digest');
  r.end();
  return { genesis, generation, proofDigest };
}

/** Whether a `log` topic payload is a digest-only announcement (type 5) rather than a whole entry. */
export function isLogAnnouncement(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[1] === T_ANNOUNCE;
}

/**
 * Ask for up to `count` entries from generation `from`: u8 version, u8 type 3, u32 request
 * id, 32-byte genesis, u64 from, u32 count (1..1024). With `headers`, type 8 (same body):
 * only each entry's header (the Ghost digests before and after its step) is answered.
 */
export interface LogRequest {
  requestId: number;
  genesis: Uint8Array;
  from: number;
  count: number;
  headers?: boolean;
}

export function encodeLogRequest(q: LogRequest): Uint8Array {
  if (!Number.isInteger(q.count) || q.count < 1 || q.count > SWARM_LIMITS.entries) throw new InvalidArgumentError(`count must be 1..${SWARM_LIMITS.entries}`);
  return new ByteWriter().u8(SWARM_VERSION).u8(q.headers ? T_HEADER_REQUEST : T_REQUEST).u32(q.requestId).bytes(digest('genesis', q.genesis)).u64(q.from).u32(q.count).finish();
}

function headOf(r: ByteReader, types: readonly number[]): number {
  const v = r.u8('version');
  if (v !== SWARM_VERSION) throw new FormatError('BAD_VERSION', `${r.what}: version ${v}`);
  const t = r.u8('type');
  if (!types.includes(t)) throw new FormatError('BAD_VALUE', `${r.what}: type ${t}, expected ${types.join(' or ')}`);
  return t;
}

export function decodeLogRequest(bytes: Uint8Array): LogRequest {
  if (bytes.length > SWARM_LIMITS.requestBytes) throw new FormatError('LIMIT', `log request: ${bytes.length} bytes`);
  const r = new ByteReader(bytes, 'log request');
  const t = headOf(r, [T_REQUEST, T_HEADER_REQUEST]);
  const requestId = r.u32('request id');
  const genesis = r.bytes(32, 'genesis digest');
  const from = r.u64('from');
  const count = r.count('count', 1, SWARM_LIMITS.entries);
  r.end();
  return { requestId, genesis, from, count, ...(t === T_HEADER_REQUEST ? { headers: true } : {}) };
}

/** An entry's header: the Ghost digest its step was made against and the one after it. */
export interface LogHeader {
  generation: number;
  ghost: Uint8Array;
  newGhost: Uint8Array;
}

/** Response status (u8). */
export const LOG_STATUS = { OK: 0, MALFORMED: 1, WRONG_SWARM: 2, NOT_HELD: 3 } as const;
export type LogStatus = keyof typeof LOG_STATUS;
const LOG_STATUS_NAMES = new Map<number, LogStatus>(Object.entries(LOG_STATUS).map(([k, v]) => [v, k as LogStatus]));

/**
 * u8 version, u8 type 4, u32 request id, u8 status, u64 the answering peer's head
 * generation, u32 entry count (0..1024), per entry u64 generation, u32 length, the proof.
 * Entries are consecutive from the generation asked for (fewer when the peer holds fewer).
 */
export interface LogResponse {
  requestId: number;
  status: LogStatus;
  head: number;
  entries: LogEntry[];
  /**
   * The answer to a header request (type 9, in place of entries: u32 count (0..1024), per
   * entry u64 generation, 32-byte Ghost digest, 32-byte new Ghost digest).
   */
  headers?: LogHeader[];
}

export function encodeLogResponse(res: LogResponse): Uint8Array {
  if (res.headers !== undefined) {
    if (res.entries.length > 0 || res.headers.length > SWARM_LIMITS.entries) throw new InvalidArgumentError(`a header response carries 0..${SWARM_LIMITS.entries} headers and no entries`);
    const w = new ByteWriter().u8(SWARM_VERSION).u8(T_HEADER_RESPONSE).u32(res.requestId).u8(LOG_STATUS[res.status]).u64(res.head).u32(res.headers.length);
    for (const h of res.headers) w.u64(h.generation).bytes(digest('ghost', h.ghost)).bytes(digest('newGhost', h.newGhost));
    return w.finish();
  }
  const w = new ByteWriter().u8(SWARM_VERSION).u8(T_RESPONSE).u32(res.requestId).u8(LOG_STATUS[res.status]).u64(res.head).u32(res.entries.length);
  for (const e of res.entries) w.u64(e.generation).u32(proofBytes(e.proof).length).bytes(e.proof);
  return w.finish();
}

export function decodeLogResponse(bytes: Uint8Array, maxBytes: number = SWARM_LIMITS.responseBytes): LogResponse {
  if (bytes.length > maxBytes) throw new FormatError('LIMIT', `log response: ${bytes.length} bytes`);
  const r = new ByteReader(bytes, 'log response');
  const t = headOf(r, [T_RESPONSE, T_HEADER_RESPONSE]);
  const requestId = r.u32('request id');
  const code = r.u8('status');
  const status = LOG_STATUS_NAMES.get(code);
  if (status === undefined) throw new FormatError('BAD_VALUE', `log response: status ${code}`);
  const h = r.u64('head');
  if (t === T_HEADER_RESPONSE) {
    const n = r.count('header count', 0, SWARM_LIMITS.entries, 72);
    const headers: LogHeader[] = [];
    for (let i = 0; i < n; i++) headers.push({ generation: r.u64('generation'), ghost: r.bytes(32, 'ghost digest'), newGhost: r.bytes(32, 'new ghost digest') });
    r.end();
    return { requestId, status, head: h, entries: [], headers };
  }
  const n = r.count('entry count', 0, SWARM_LIMITS.entries, 13);
  const entries: LogEntry[] = [];
  for (let i = 0; i < n; i++) {
    const generation = r.u64('generation');
    entries.push({ generation, proof: readProof(r) });
  }
  r.end();
  return { requestId, status, head: h, entries };
}

// --- checkpoint transfer -------------------------------------------------------------

/** The request/response protocol id (fetching a checkpoint: its file list, then chunks of its files). */
export const SWARM_CHECKPOINT_PROTOCOL = '/ghost-tensor/swarm/checkpoint/1.0.0';

export const CHECKPOINT_LIMITS = {
  /** Files of one checkpoint (the Ghost file, the optimizer state, one file per tensor). */
  files: 4096,
  /** Bytes of one file name. */
  nameBytes: 64,
  /** Bytes of one chunk asked for or answered. */
  chunkBytes: 2 ** 20,
  /** Bytes of one request payload. */
  requestBytes: 96,
  /** Bytes of one response payload (checked on the length prefix): a chunk, or a file list. */
  responseBytes: 2 ** 20 + 64,
} as const;

const T_CP_REQUEST = 6;
const T_CP_RESPONSE = 7;

/**
 * The names a checkpoint's files may have (Model.save's layout: ghost.bin, step-state.bin,
 * tensors/<i>.gtt). Anything else is refused: a name is joined to a directory of the
 * asking peer, so it must never hold `..`, a leading `/` or another separator.
 */
export const CHECKPOINT_FILE_NAME = /^(?:ghost\.bin|step-state\.bin|tensors\/(?:0|[1-9][0-9]{0,5})\.gtt)$/;

/**
 * Ask for a checkpoint's file list (`file` absent: the answering peer's latest
 * checkpoint) or for `length` bytes of file `file` at `offset` of the checkpoint whose
 * Ghost digest is `digest`. u8 version, u8 type 6, u32 request id, 32-byte genesis,
 * u8 what (0 list, 1 chunk), then for a chunk 32-byte digest, u16 file, u64 offset,
 * u32 length (1..1 MiB).
 */
export type CheckpointRequest =
  | { requestId: number; genesis: Uint8Array; what: 'list' }
  | { requestId: number; genesis: Uint8Array; what: 'chunk'; digest: Uint8Array; file: number; offset: number; length: number };

export function encodeCheckpointRequest(q: CheckpointRequest): Uint8Array {
  const w = new ByteWriter().u8(SWARM_VERSION).u8(T_CP_REQUEST).u32(q.requestId).bytes(digest('genesis', q.genesis));
  if (q.what === 'list') return w.u8(0).finish();
  if (!Number.isInteger(q.file) || q.file < 0 || q.file >= CHECKPOINT_LIMITS.files) throw new InvalidArgumentError(`file must be 0..${CHECKPOINT_LIMITS.files - 1}`);
  if (!Number.isInteger(q.length) || q.length < 1 || q.length > CHECKPOINT_LIMITS.chunkBytes) throw new InvalidArgumentError(`length must be 1..${CHECKPOINT_LIMITS.chunkBytes}`);
  return w.u8(1).bytes(digest('digest', q.digest)).u16(q.file).u64(q.offset).u32(q.length).finish();
}

export function decodeCheckpointRequest(bytes: Uint8Array): CheckpointRequest {
  if (bytes.length > CHECKPOINT_LIMITS.requestBytes) throw new FormatError('LIMIT', `checkpoint request: ${bytes.length} bytes`);
  const r = new ByteReader(bytes, 'checkpoint request');
  head(r, T_CP_REQUEST);
  const requestId = r.u32('request id');
  const genesis = r.bytes(32, 'genesis digest');
  const what = r.u8('what');
  if (what === 0) {
    r.end();
    return { requestId, genesis, what: 'list' };
  }
  if (what !== 1) throw new FormatError('BAD_VALUE', `checkpoint request: what ${what}`);
  const d = r.bytes(32, 'checkpoint digest');
  const file = r.u16('file');
  if (file >= CHECKPOINT_LIMITS.files) throw new FormatError('LIMIT', `checkpoint request: file ${file}`);
  const offset = r.u64('offset');
  const length = r.count('length', 1, CHECKPOINT_LIMITS.chunkBytes);
  r.end();
  return { requestId, genesis, what: 'chunk', digest: d, file, offset, length };
}

/** One file of a checkpoint's list. */
export interface CheckpointFile {
  name: string;
  size: number;
}

/**
 * u8 version, u8 type 7, u32 request id, u8 status (LOG_STATUS: NOT_HELD when the peer
 * holds no checkpoint, or no longer the one asked for), u8 what, then for a list u64
 * generation, 32-byte Ghost digest, u32 file count (0..4096), per file u8 name length,
 * the name (CHECKPOINT_FILE_NAME), u64 size; for a chunk u32 length, the bytes.
 */
export type CheckpointResponse =
  | { requestId: number; status: LogStatus; what: 'list'; generation: number; digest: Uint8Array; files: CheckpointFile[] }
  | { requestId: number; status: LogStatus; what: 'chunk'; bytes: Uint8Array };

export function encodeCheckpointResponse(res: CheckpointResponse): Uint8Array {
  const w = new ByteWriter().u8(SWARM_VERSION).u8(T_CP_RESPONSE).u32(res.requestId).u8(LOG_STATUS[res.status]);
  if (res.what === 'chunk') {
    if (res.bytes.length > CHECKPOINT_LIMITS.chunkBytes) throw new InvalidArgumentError('a chunk is at most 1 MiB');
    return w.u8(1).u32(res.bytes.length).bytes(res.bytes).finish();
  }
  if (res.files.length > CHECKPOINT_LIMITS.files) throw new InvalidArgumentError('too many files');
  w.u8(0).u64(res.generation).bytes(digest('digest', res.digest)).u32(res.files.length);
  for (const f of res.files) {
    const name = new TextEncoder().encode(f.name);
    if (name.length === 0 || name.length > CHECKPOINT_LIMITS.nameBytes) throw new InvalidArgumentError(`a file name must be 1..${CHECKPOINT_LIMITS.nameBytes} bytes`);
    w.u8(name.length).bytes(name).u64(f.size);
  }
  return w.finish();
}

export function decodeCheckpointResponse(bytes: Uint8Array): CheckpointResponse {
  if (bytes.length > CHECKPOINT_LIMITS.responseBytes) throw new FormatError('LIMIT', `checkpoint response: ${bytes.length} bytes`);
  const r = new ByteReader(bytes, 'checkpoint response');
  head(r, T_CP_RESPONSE);
  const requestId = r.u32('request id');
  const code = r.u8('status');
  const status = LOG_STATUS_NAMES.get(code);
  if (status === undefined) throw new FormatError('BAD_VALUE', `checkpoint response: status ${code}`);
  const what = r.u8('what');
  if (what === 1) {
    const n = r.count('chunk length', 0, CHECKPOINT_LIMITS.chunkBytes, 1);
    const b = r.bytes(n, 'chunk');
    r.end();
    return { requestId, status, what: 'chunk', bytes: b };
  }
  if (what !== 0) throw new FormatError('BAD_VALUE', `checkpoint response: what ${what}`);
  const generation = r.u64('generation');
  const d = r.bytes(32, 'checkpoint digest');
  const n = r.count('file count', 0, CHECKPOINT_LIMITS.files, 10);
  const files: CheckpointFile[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < n; i++) {
    const len = r.u8('name length');
    if (len === 0 || len > CHECKPOINT_LIMITS.nameBytes) throw new FormatError('LIMIT', `checkpoint response: a file name of ${len} bytes`);
    const name = new TextDecoder('utf-8', { fatal: false }).decode(r.bytes(len, 'name'));
    if (!CHECKPOINT_FILE_NAME.test(name)) throw new FormatError('BAD_VALUE', `checkpoint response: file name ${JSON.stringify(name)}`);
    if (seen.has(name)) throw new FormatError('BAD_VALUE', `checkpoint response: file ${name} listed twice`);
    seen.add(name);
    files.push({ name, size: r.u64('size') });
  }
  r.end();
  return { requestId, status, what: 'list', generation, digest: d, files };
}
