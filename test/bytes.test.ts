/**
 * The shared byte helpers of lib/shared/bytes.ts: the one hex codec, the bounded-count reader
 * and the one input-record codec that proofs, prover requests and peer requests share.
 * References: Node's Buffer hex, and input-record bytes built here by hand from the
 * documented layout (docs/proof-format.md, docs/serving.md, docs/p2p.md).
 */
import { describe, expect, it } from 'vitest';

import { ByteReader, ByteWriter, fromHex, readInputRecord, toHex, writeInputRecord, type InputRecord } from '../lib/shared/bytes.js';
import { FormatError, InvalidArgumentError } from '../lib/shared/errors.js';
import { decodeRequest, encodeRequest } from '../lib/p2p/frames.js';
import { PROOF_MAGIC, decodeProof, encodeProof, type ForwardProof } from '../lib/verify/proof-format.js';
import { decodeForwardRequest, encodeForwardRequest } from '../lib/serve/wire.js';

import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

/** The FormatError reason of a synchronous decode, 'ACCEPTED' when it decodes. */
const reasonOf = (f: () => unknown): Promise<string> => reason(Promise.resolve().then(f));

/** The documented layout, written with a DataView (not ByteWriter). */
function referenceRecord(input: InputRecord): Uint8Array {
  const n = input.kind === 'f32' ? 9 + input.data.length * 4 : 5 + input.ids.length * 4;
  const out = new Uint8Array(n);
  const dv = new DataView(out.buffer);
  if (input.kind === 'f32') {
    dv.setUint8(0, 1);
    dv.setUint32(1, input.rows, true);
    dv.setUint32(5, input.cols, true);
    input.data.forEach((v, i) => dv.setFloat32(9 + i * 4, v, true));
  } else {
    dv.setUint8(0, 2);
    dv.setUint32(1, input.ids.length, true);
    input.ids.forEach((v, i) => dv.setUint32(5 + i * 4, v, true));
  }
  return out;
}

const F32: InputRecord = { kind: 'f32', rows: 2, cols: 3, data: Float32Array.of(1.5, -2, 0, 3.25, 1e-30, -7) };
const IDS: InputRecord = { kind: 'ids', ids: Uint32Array.of(5, 0, 2 ** 32 - 1) };
const DIGEST = new Uint8Array(32).fill(7);

function proofOf(input: InputRecord): ForwardProof {
  return { kind: 'forward', ghost: DIGEST, firstLayer: 0, input, layers: [{ op: 'embedding', stages: [], blocks: [] }], output: { rows: 1, cols: 1, data: Float32Array.of(1) } };
}
/** Where the input record starts: magic, u16 version, u8 kind, digest, u32 first layer, u32 layer count. */
const PROOF_INPUT_AT = PROOF_MAGIC.length + 2 + 1 + 32 + 4 + 4;
/** u8 version, u8 type, u32 request id, digest, u32 first layer, u32 layer count. */
const FRAME_INPUT_AT = 1 + 1 + 4 + 32 + 4 + 4;

describe('hex', () => {
  it('matches Buffer hex on every byte value and on random strings, both ways', () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    expect(toHex(all)).toBe(Buffer.from(all).toString('hex'));
    const r = new Rng(17);
    for (let t = 0; t < 50; t++) {
      const b = Uint8Array.from({ length: r.int(0, 70) }, () => r.int(0, 255));
      const h = Buffer.from(b).toString('hex');
      expect(toHex(b)).toBe(h);
      expect(fromHex(h)).toEqual(b);
      expect(fromHex(h.toUpperCase())).toEqual(b);
    }
    expect(toHex(new Uint8Array(0))).toBe('');
  });

  it('refuses what is not an even-length hex string', () => {
    for (const bad of ['a', 'abc', 'zz', '0x00', ' 00', '00 ', 'g0', '+1']) expect(() => fromHex(bad), bad).toThrow(InvalidArgumentError);
    expect(() => fromHex(12 as unknown as string)).toThrow(InvalidArgumentError);
  });
});

describe('ByteWriter', () => {
  // Reference: the same fields written with Node's Buffer into one array, not through ByteWriter.
  it('gives the fields in order, little-endian, across its chunk boundaries, for writes of every size', () => {
    let seed = 7;
    const rand = (): number => ((seed = (seed * 1664525 + 1013904223) >>> 0) / 2 ** 32);
    for (let trial = 0; trial < 40; trial++) {
      const w = new ByteWriter();
      const parts: Buffer[] = [];
      const fields = 1 + Math.floor(rand() * 300);
      for (let f = 0; f < fields; f++) {
        const kind = Math.floor(rand() * 8);
        const b = Buffer.alloc(kind === 0 ? 1 : kind === 1 ? 2 : kind <= 3 ? 4 : 8);
        if (kind === 0) { const v = Math.floor(rand() * 256); w.u8(v); b.writeUInt8(v); }
        else if (kind === 1) { const v = Math.floor(rand() * 65536); w.u16(v); b.writeUInt16LE(v); }
        else if (kind === 2) { const v = Math.floor(rand() * 2 ** 32); w.u32(v); b.writeUInt32LE(v); }
        else if (kind === 3) { const v = rand() * 2e6 - 1e6; w.f32(v); b.writeFloatLE(v); }
        else if (kind === 4) { const v = Math.floor(rand() * 2 ** 53); w.u64(v); b.writeBigUInt64LE(BigInt(v)); }
        else if (kind === 5) { const v = rand() * 2e6 - 1e6; w.f64(v); b.writeDoubleLE(v); }
        else {
          // A run of bytes or f32s, sometimes larger than the writer's chunks so far.
          const n = Math.floor(rand() * (rand() < 0.1 ? 5000 : 300));
          if (kind === 6) {
            const bytes = Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
            w.bytes(bytes);
            parts.push(Buffer.from(bytes));
          } else {
            const a = Float32Array.from({ length: n }, () => rand() - 0.5);
            w.f32s(a.subarray(1));
            const c = Buffer.alloc(4 * Math.max(0, n - 1));
            for (let i = 1; i < n; i++) c.writeFloatLE(a[i]!, 4 * (i - 1));
            parts.push(c);
          }
          continue;
        }
        parts.push(b);
      }
      const ref = new Uint8Array(Buffer.concat(parts));
      expect(w.length).toBe(ref.length);
      const out = w.finish();
      expect(Buffer.compare(out, ref)).toBe(0);
      // finish() is a copy: the writer goes on, and the first result does not change.
      w.u32(0xdeadbeef);
      expect(Buffer.compare(w.finish(), Buffer.concat([ref, Buffer.from([0xef, 0xbe, 0xad, 0xde])]))).toBe(0);
      expect(Buffer.compare(out, ref)).toBe(0);
    }
  });
});

describe('ByteReader.count', () => {
  const u32 = (v: number, tail = 0): Uint8Array => new ByteWriter().u32(v).bytes(new Uint8Array(tail)).finish();

  it('returns a count in min..max and refuses one outside with LIMIT', async () => {
    expect(new ByteReader(u32(3), 't').count('n', 1, 3)).toBe(3);
    expect(new ByteReader(u32(0), 't').count('n', 0, 3)).toBe(0);
    expect(await reasonOf(() => new ByteReader(u32(0), 't').count('n', 1, 3))).toBe('LIMIT');
    expect(await reasonOf(() => new ByteReader(u32(4), 't').count('n', 1, 3))).toBe('LIMIT');
    expect(() => new ByteReader(u32(2 ** 32 - 1), 'thing').count('n', 1, 3)).toThrow(/^LIMIT: thing: n = 4294967295 is outside 1\.\.3/);
  });

  it('with bytesEach, refuses a count the remaining bytes cannot hold (TRUNCATED), before the caller allocates', async () => {
    expect(new ByteReader(u32(3, 12), 't').count('n', 0, 10, 4)).toBe(3);
    expect(() => new ByteReader(u32(4, 12), 't').count('n', 0, 10, 4)).toThrow(/^TRUNCATED: t: n needs 16 bytes/);
    // A count within the limit whose items would not fit: no allocation is attempted.
    expect(await reasonOf(() => new ByteReader(u32(2 ** 32 - 1, 8), 't').count('n', 0, 2 ** 32 - 1, 2 ** 20))).toBe('TRUNCATED');
    expect(await reasonOf(() => new ByteReader(new Uint8Array(3), 't').count('n', 0, 10))).toBe('TRUNCATED');
  });
});

describe('the input record (one codec for proofs, prover requests and peer requests)', () => {
  it('is the documented layout in all three encodings', () => {
    for (const input of [F32, IDS]) {
      const ref = referenceRecord(input);
      expect(writeInputRecord(new ByteWriter(), input).finish()).toEqual(ref);
      expect(encodeForwardRequest(input)).toEqual(ref);
      const frame = encodeRequest({ requestId: 9, ghost: DIGEST, firstLayer: 0, layers: 1, input });
      expect(frame.subarray(FRAME_INPUT_AT, FRAME_INPUT_AT + ref.length)).toEqual(ref);
      expect(frame.length).toBe(FRAME_INPUT_AT + ref.length);
      const proof = encodeProof(proofOf(input));
      expect(proof.subarray(PROOF_INPUT_AT, PROOF_INPUT_AT + ref.length)).toEqual(ref);
    }
  });

  it('decodes back to the same record through all three', () => {
    for (const input of [F32, IDS]) {
      expect(readInputRecord(new ByteReader(referenceRecord(input), 't'), { maxRows: 10, maxCols: 10 })).toEqual(input);
      expect(decodeForwardRequest(referenceRecord(input))).toEqual(input);
      expect(decodeRequest(encodeRequest({ requestId: 9, ghost: DIGEST, firstLayer: 0, layers: 1, input })).input).toEqual(input);
      expect((decodeProof(encodeProof(proofOf(input))) as ForwardProof).input).toEqual(input);
    }
  });

  it('refuses hostile records with the reason each caller documents', async () => {
    const lim = { maxRows: 4, maxCols: 4 };
    const read = (b: Uint8Array, l: Parameters<typeof readInputRecord>[1] = lim) => reasonOf(() => readInputRecord(new ByteReader(b, 't'), l));
    const f32 = (rows: number, cols: number, values: number): Uint8Array => new ByteWriter().u8(1).u32(rows).u32(cols).bytes(new Uint8Array(values * 4)).finish();
    const ids = (n: number, values: number): Uint8Array => new ByteWriter().u8(2).u32(n).bytes(new Uint8Array(values * 4)).finish();
    expect(await read(new Uint8Array([3]))).toBe('BAD_VALUE');
    expect(await read(new Uint8Array(0))).toBe('TRUNCATED');
    expect(await read(f32(5, 1, 5))).toBe('LIMIT');
    expect(await read(f32(1, 5, 5))).toBe('LIMIT');
    expect(await read(f32(0, 1, 0))).toBe('LIMIT');
    expect(await read(ids(0, 0))).toBe('LIMIT');
    expect(await read(ids(5, 5))).toBe('LIMIT');
    expect(await read(f32(2 ** 32 - 1, 2 ** 32 - 1, 1), { maxRows: 2 ** 32 - 1, maxCols: 2 ** 32 - 1 })).toBe('TRUNCATED');
    expect(await read(ids(2 ** 32 - 1, 1), { maxRows: 2 ** 32 - 1, maxCols: 1 })).toBe('TRUNCATED');
    expect(await read(new ByteWriter().u8(1).u32(1).u32(2).f32(1).f32(NaN).finish())).toBe('BAD_VALUE');
    // allowEmpty: the caller refuses an empty input itself (the prover's BAD_VALUE).
    expect(await read(f32(0, 4, 0), { ...lim, allowEmpty: true })).toBe('ACCEPTED');
    expect(await reasonOf(() => decodeForwardRequest(f32(0, 4, 0)))).toBe('BAD_VALUE');
    expect(await reasonOf(() => decodeForwardRequest(f32(3, 0, 0)))).toBe('BAD_VALUE');
    expect(await reasonOf(() => decodeForwardRequest(ids(0, 0)))).toBe('BAD_VALUE');
    expect(await reasonOf(() => decodeForwardRequest(ids(1, 2)))).toBe('TRAILING_BYTES');
  });

  it('charges the batch size after the bounds checks and before reading the values', async () => {
    const calls: [number, string][] = [];
    const charge = (n: number, k: string): void => void calls.push([n, k]);
    const truncated = new ByteWriter().u8(1).u32(3).u32(2).f32(1).finish();
    expect(await reasonOf(() => readInputRecord(new ByteReader(truncated, 't'), { maxRows: 4, maxCols: 4, charge }))).toBe('TRUNCATED');
    expect(calls).toEqual([[3, 'f32']]);
    const over = new ByteWriter().u8(2).u32(9).finish();
    expect(await reasonOf(() => readInputRecord(new ByteReader(over, 't'), { maxRows: 4, maxCols: 4, charge }))).toBe('LIMIT');
    expect(calls).toEqual([[3, 'f32']]);
    const refuse = (): never => {
      throw new FormatError('LIMIT', 'charged');
    };
    expect(() => readInputRecord(new ByteReader(referenceRecord(IDS), 't'), { maxRows: 4, maxCols: 4, charge: refuse })).toThrow(/charged/);
  });
});
