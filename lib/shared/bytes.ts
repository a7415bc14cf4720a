/**
 * Little-endian byte writer and a bounds-checked reader for the Ghost file and the
 * proof format. The reader checks every length against the bytes that remain (and
 * the caller's limits) before it allocates, and throws FormatError, never a
 * RangeError, on hostile input. Loads no addon.
 */
import { FormatError, GhostTensorError, InvalidArgumentError } from './errors.js';

const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A fresh byte array of `n` bytes whose contents the caller overwrites entirely: under
 * Node, memory that is not zeroed first (Buffer.allocUnsafeSlow: its own ArrayBuffer, at
 * offset 0, never the shared pool), returned as a plain Uint8Array; elsewhere (a
 * browser) a zeroed Uint8Array.
 */
function uninitialized(n: number): Uint8Array {
  const B = (globalThis as { Buffer?: { allocUnsafeSlow(n: number): Uint8Array } }).Buffer;
  if (B === undefined || n === 0) return new Uint8Array(n);
  const b = B.allocUnsafeSlow(n);
  return new Uint8Array(b.buffer, b.byteOffset, n);
}

export class ByteWriter {
  /**
   * Two modes. Growing (no size given): the bytes are written into chunks, each at least
   * twice the size of the one before, joined once by finish(). Exact (`new
   * ByteWriter(size)`, the size computed beforehand, e.g. by a ByteCounter pass over the
   * same writes): one allocation of exactly `size` bytes, not zeroed, written in place;
   * finish() returns that array itself, without a copy (`new ByteWriter(array)`: the
   * same into the caller's array, whose length is the size). A write past `size`, or finish()
   * before all `size` bytes are written, throws GhostTensorError ERR_GT_INTERNAL (a
   * sizing bug; never truncated or padded output, never uninitialized bytes handed out).
   */
  #chunks: Uint8Array[] = [];
  #done = 0;
  #buf: Uint8Array;
  #dv: DataView;
  #at = 0;
  /** The exact size, or -1 when growing. */
  readonly #exact: number;

  constructor(exactSize?: number | Uint8Array) {
    if (exactSize === undefined) {
      this.#exact = -1;
      this.#buf = new Uint8Array(256);
    } else if (exactSize instanceof Uint8Array) {
      // Exact mode into the caller's array (its length is the size; every byte is overwritten).
      this.#exact = exactSize.length;
      this.#buf = exactSize;
    } else {
      if (!Number.isSafeInteger(exactSize) || exactSize < 0) throw new InvalidArgumentError(`ByteWriter: exact size ${exactSize} must be a non-negative safe integer`);
      this.#exact = exactSize;
      this.#buf = uninitialized(exactSize);
    }
    this.#dv = new DataView(this.#buf.buffer, this.#buf.byteOffset, this.#buf.byteLength);
  }

  #room(n: number): void {
    if (this.#at + n <= this.#buf.length) return;
    if (this.#exact >= 0) {
      throw new GhostTensorError('ERR_GT_INTERNAL', `ByteWriter: a write of ${n} bytes at offset ${this.#at} passes the exact size ${this.#exact} (the size computed for this output is wrong)`);
    }
    if (this.#at > 0) {
      this.#chunks.push(this.#buf.subarray(0, this.#at));
      this.#done += this.#at;
    }
    const next = new Uint8Array(Math.max(n, 2 * this.#buf.length));
    this.#buf = next;
    this.#dv = new DataView(next.buffer);
    this.#at = 0;
  }
  u8(v: number): this {
    this.#room(1);
    this.#dv.setUint8(this.#at++, v);
    return this;
  }
  u16(v: number): this {
    this.#room(2);
    this.#dv.setUint16(this.#at, v, true);
    this.#at += 2;
    return this;
  }
  u32(v: number): this {
    this.#room(4);
    this.#dv.setUint32(this.#at, v, true);
    this.#at += 4;
    return this;
  }
  /** An integer in [0, 2^53) as u64. */
  u64(v: number): this {
    this.#room(8);
    this.#dv.setUint32(this.#at, v % 2 ** 32, true);
    this.#dv.setUint32(this.#at + 4, Math.floor(v / 2 ** 32), true);
    this.#at += 8;
    return this;
  }
  f32(v: number): this {
    this.#room(4);
    this.#dv.setFloat32(this.#at, v, true);
    this.#at += 4;
    return this;
  }
  f64(v: number): this {
    this.#room(8);
    this.#dv.setFloat64(this.#at, v, true);
    this.#at += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.#room(b.length);
    this.#buf.set(b, this.#at);
    this.#at += b.length;
    return this;
  }
  f32s(a: Float32Array): this {
    if (LE) return this.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    for (const v of a) this.f32(v);
    return this;
  }
  f64s(a: Float64Array): this {
    if (LE) return this.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    for (const v of a) this.f64(v);
    return this;
  }
  u32s(a: Uint32Array): this {
    if (LE) return this.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    for (const v of a) this.u32(v);
    return this;
  }
  get length(): number {
    return this.#done + this.#at;
  }
  /**
   * The bytes written so far. Growing: a copy (the writer may go on). Exact: the one
   * array itself (it is full: the writer takes no more), or ERR_GT_INTERNAL when fewer
   * bytes than the exact size were written.
   */
  finish(): Uint8Array {
    if (this.#exact >= 0) {
      if (this.#at !== this.#exact) {
        throw new GhostTensorError('ERR_GT_INTERNAL', `ByteWriter: ${this.#at} bytes written of the exact size ${this.#exact} (the size computed for this output is wrong)`);
      }
      return this.#buf;
    }
    if (this.#chunks.length === 0) return this.#buf.slice(0, this.#at);
    const out = new Uint8Array(this.#done + this.#at);
    let o = 0;
    for (const c of this.#chunks) {
      out.set(c, o);
      o += c.length;
    }
    out.set(this.#buf.subarray(0, this.#at), o);
    return out;
  }
}

/**
 * A ByteWriter that writes nothing and counts: run the same writes through it first,
 * then through `new ByteWriter(counter.length)` (one exact allocation). finish() is
 * not for it (ERR_GT_INTERNAL).
 */
export class ByteCounter extends ByteWriter {
  #n = 0;
  constructor() {
    super(0);
  }
  override u8(_v: number): this {
    this.#n += 1;
    return this;
  }
  override u16(_v: number): this {
    this.#n += 2;
    return this;
  }
  override u32(_v: number): this {
    this.#n += 4;
    return this;
  }
  override u64(_v: number): this {
    this.#n += 8;
    return this;
  }
  override f32(_v: number): this {
    this.#n += 4;
    return this;
  }
  override f64(_v: number): this {
    this.#n += 8;
    return this;
  }
  override bytes(b: Uint8Array): this {
    this.#n += b.length;
    return this;
  }
  override f32s(a: Float32Array): this {
    this.#n += a.byteLength;
    return this;
  }
  override f64s(a: Float64Array): this {
    this.#n += a.byteLength;
    return this;
  }
  override u32s(a: Uint32Array): this {
    this.#n += a.byteLength;
    return this;
  }
  override get length(): number {
    return this.#n;
  }
  override finish(): Uint8Array {
    throw new GhostTensorError('ERR_GT_INTERNAL', 'ByteCounter: counts bytes, holds none (finish() a ByteWriter of its length)');
  }
}

/**
 * The bytes `write` produces, in one array of exactly their size: a counting pass, then
 * the writing pass. The array is a fresh one, or `into(size)`'s (which must return a
 * Uint8Array of exactly `size` bytes; they are all overwritten).
 */
export function writeExact(write: (w: ByteWriter) => void, into?: (size: number) => Uint8Array): Uint8Array {
  const c = new ByteCounter();
  write(c);
  const size = c.length;
  let target: number | Uint8Array = size;
  if (into !== undefined) {
    target = into(size);
    if (!(target instanceof Uint8Array) || target.length !== size) throw new InvalidArgumentError(`an output array must be a Uint8Array of the ${size} bytes asked for`);
  }
  const w = new ByteWriter(target);
  write(w);
  return w.finish();
}

export class ByteReader {
  readonly #b: Uint8Array;
  readonly #dv: DataView;
  #at = 0;
  readonly what: string;

  constructor(bytes: Uint8Array, what: string) {
    this.#b = bytes;
    this.#dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.what = what;
  }
  get offset(): number {
    return this.#at;
  }
  get remaining(): number {
    return this.#b.length - this.#at;
  }
  /** Throws TRUNCATED unless n more bytes are there (n computed by the caller, may be huge). */
  need(n: number, field: string): void {
    if (!(n <= this.remaining)) {
      throw new FormatError('TRUNCATED', `${this.what}: ${field} needs ${n} bytes at offset ${this.#at}, ${this.remaining} remain`);
    }
  }
  u8(field: string): number {
    this.need(1, field);
    return this.#dv.getUint8(this.#at++);
  }
  u16(field: string): number {
    this.need(2, field);
    const v = this.#dv.getUint16(this.#at, true);
    this.#at += 2;
    return v;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.#dv.getUint32(this.#at, true);
    this.#at += 4;
    return v;
  }
  /** A u64 that must be below 2^53. */
  u64(field: string): number {
    this.need(8, field);
    const lo = this.#dv.getUint32(this.#at, true), hi = this.#dv.getUint32(this.#at + 4, true);
    if (hi >= 2 ** 21) throw new FormatError('LIMIT', `${this.what}: ${field} is >= 2^53`);
    this.#at += 8;
    return hi * 2 ** 32 + lo;
  }
  f32(field: string): number {
    this.need(4, field);
    const v = this.#dv.getFloat32(this.#at, true);
    this.#at += 4;
    return v;
  }
  f64(field: string): number {
    this.need(8, field);
    const v = this.#dv.getFloat64(this.#at, true);
    this.#at += 8;
    return v;
  }
  /**
   * A u32 count that must be in min..max (FormatError LIMIT otherwise) and, when each
   * counted item takes at least `bytesEach` bytes, that must fit in the bytes that
   * remain (TRUNCATED otherwise): both checked before the caller allocates for it.
   */
  count(field: string, min: number, max: number, bytesEach = 0): number {
    const v = this.u32(field);
    if (v < min || v > max) throw new FormatError('LIMIT', `${this.what}: ${field} = ${v} is outside ${min}..${max}`);
    if (bytesEach > 0) this.need(v * bytesEach, field);
    return v;
  }
  /** A copy of the next n bytes. */
  bytes(n: number, field: string): Uint8Array {
    this.need(n, field);
    const out = this.#b.slice(this.#at, this.#at + n);
    this.#at += n;
    return out;
  }
  f32s(n: number, field: string): Float32Array {
    this.need(n * 4, field);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.#dv.getFloat32(this.#at + i * 4, true);
    this.#at += n * 4;
    return out;
  }
  f64s(n: number, field: string): Float64Array {
    this.need(n * 8, field);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = this.#dv.getFloat64(this.#at + i * 8, true);
    this.#at += n * 8;
    return out;
  }
  u32s(n: number, field: string): Uint32Array {
    this.need(n * 4, field);
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.#dv.getUint32(this.#at + i * 4, true);
    this.#at += n * 4;
    return out;
  }
  /** Throws TRAILING_BYTES unless every byte was read. */
  end(): void {
    if (this.remaining !== 0) throw new FormatError('TRAILING_BYTES', `${this.what}: ${this.remaining} bytes after the last field`);
  }
}

/** The f32 values must be finite (a proof or manifest never carries NaN or infinity). */
export function checkFiniteF32(a: Float32Array, what: string): void {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) throw new FormatError('BAD_VALUE', `${what}[${i}] is not finite`);
}

/** Constant-time-ish equality of two byte strings. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** Lower-case hex of bytes. */
export function toHex(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += HEX[b[i]!]!;
  return s;
}
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Bytes of a hex string (even length, [0-9a-fA-F]); throws InvalidArgumentError otherwise. */
export function fromHex(s: string): Uint8Array {
  if (typeof s !== 'string' || !/^(?:[0-9a-fA-F]{2})*$/.test(s)) throw new InvalidArgumentError('not a hex string');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * The input record of a forward pass, as a proof, a prover request and a peer request
 * carry it: B rows of f32 (a HopfieldLookup first) or B ids (an Embedding first).
 */
export type InputRecord = { kind: 'f32'; rows: number; cols: number; data: Float32Array } | { kind: 'ids'; ids: Uint32Array };

/**
 * Its bytes (the same in docs/proof-format.md, docs/serving.md and docs/p2p.md): u8
 * kind, then 1 (f32): u32 rows, u32 cols, rows x cols f32; or 2 (ids): u32 count,
 * count u32. Checks no limits: each caller checks its own before writing.
 */
export function writeInputRecord(w: ByteWriter, input: InputRecord): ByteWriter {
  if (input.kind === 'f32') return w.u8(1).u32(input.rows).u32(input.cols).f32s(input.data);
  return w.u8(2).u32(input.ids.length).u32s(input.ids);
}

export interface InputRecordLimits {
  /** Most rows (or ids). */
  maxRows: number;
  /** Most values per row. */
  maxCols: number;
  /** Accept 0 rows, cols or ids (the caller refuses them itself, with its own reason). Default: at least 1. */
  allowEmpty?: boolean;
  /** Charged with the batch size after the bounds checks, before the values are allocated (a verifier's budget). */
  charge?: (batch: number, kind: InputRecord['kind']) => void;
}

/**
 * Reads an input record: each count is checked against `limits` (LIMIT), then charged,
 * then against the bytes that remain (TRUNCATED) before its array is allocated; f32 values must be finite
 * (BAD_VALUE), an unknown kind is BAD_VALUE.
 */
export function readInputRecord(r: ByteReader, limits: InputRecordLimits): InputRecord {
  const min = limits.allowEmpty ? 0 : 1;
  const kind = r.u8('input kind');
  if (kind === 1) {
    const rows = r.count('input rows', min, limits.maxRows), cols = r.count('input cols', min, limits.maxCols);
    limits.charge?.(rows, 'f32');
    const data = r.f32s(rows * cols, 'input');
    checkFiniteF32(data, 'the input');
    return { kind: 'f32', rows, cols, data };
  }
  if (kind === 2) {
    const n = r.count('input id count', min, limits.maxRows);
    limits.charge?.(n, 'ids');
    return { kind: 'ids', ids: r.u32s(n, 'input ids') };
  }
  throw new FormatError('BAD_VALUE', `${r.what}: input kind ${kind}`);
}
