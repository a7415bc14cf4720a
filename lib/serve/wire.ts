/**
 * The binary bodies of the prover service (docs/serving.md). All integers
 * little-endian, floats IEEE 754 little-endian, as in docs/proof-format.md; proofs
 * travel in their own encoding (encodeProof). Loads no addon: the client uses it too.
 */
import { ByteReader, ByteWriter, checkFiniteF32, readInputRecord, writeExact, writeInputRecord, type InputRecord } from '../shared/bytes.js';
import { toIds } from '../shared/args.js';
import { FormatError, InvalidArgumentError } from '../shared/errors.js';
import type { GhostManifest } from '../verify/ghost-file.js';
import type { StepTargets } from '../verify/training.js';

/** What one forward request asks: B rows of f32 (a HopfieldLookup first) or B ids (an Embedding first). */
export type ForwardInput = InputRecord;

/** The gradient of some rows of one tensor of the served model (tensor: its index in the Ghost file). */
export interface WireGrad {
  tensor: number;
  /** Row ids: a Uint32Array, or an array of integers (checked and copied, as the optimizer accepts). */
  ids: Uint32Array | readonly number[];
  /** ids.length x the tensor's dim. */
  grads: Float32Array;
}

/** A WireGrad whose ids are a Uint32Array (what decodeTrainRequest gives). */
export interface WireGradU32 extends WireGrad {
  ids: Uint32Array;
}

/** The same gradients with every ids list as a Uint32Array (an array of integers is checked and copied). */
export function normalizeWireGrads(grads: readonly WireGrad[]): WireGradU32[] {
  if (!Array.isArray(grads)) throw new InvalidArgumentError('grads must be an array of { tensor, ids, grads }');
  return grads.map((g, i) => ({ ...g, ids: toIds(`grads[${i}].ids`, g?.ids) }));
}

export const WIRE_LIMITS = {
  /** Entries (tensors) in one training request. */
  gradEntries: 4096,
  /** Rows of one entry. */
  gradRows: 2 ** 24,
  /** Proofs in one training or updates response. */
  proofs: 2 ** 20,
} as const;

/** Forward request: u8 kind (1 f32 rows: u32 rows, u32 cols, rows x cols f32; 2 ids: u32 count, count u32), nothing after. */
export function encodeForwardRequest(input: ForwardInput): Uint8Array {
  const w = new ByteWriter();
  if (input.kind === 'f32') {
    if (input.data.length !== input.rows * input.cols) throw new InvalidArgumentError(`input data has ${input.data.length} values, rows x cols = ${input.rows * input.cols}`);
  }
  return writeInputRecord(w, input).finish();
}

export function decodeForwardRequest(bytes: Uint8Array): ForwardInput {
  const r = new ByteReader(bytes, 'forward request');
  // No limit beyond the body's size (the server bounds it); an empty input is BAD_VALUE here, not LIMIT.
  const out = readInputRecord(r, { maxRows: 2 ** 32 - 1, maxCols: 2 ** 32 - 1, allowEmpty: true });
  if (out.kind === 'f32' && (out.rows === 0 || out.cols === 0)) throw new FormatError('BAD_VALUE', 'forward request: rows and cols must be at least 1');
  if (out.kind === 'ids' && out.ids.length === 0) throw new FormatError('BAD_VALUE', 'forward request: no ids');
  r.end();
  return out;
}

/** Inputs in a forward request (its batch size B). */
/**
 * The answer of a server with proofs off (ProverServerOptions.proofs false): u32 rows,
 * u32 cols, rows x cols f32 (unverifiable; for measuring what proofs cost).
 */
export function encodeOutput(y: Float32Array, rows: number): Uint8Array {
  if (!Number.isInteger(rows) || rows < 1 || y.length % rows !== 0) throw new InvalidArgumentError(`${y.length} values are not ${rows} rows`);
  return new ByteWriter().u32(rows).u32(y.length / rows).f32s(y).finish();
}

export function decodeOutput(bytes: Uint8Array): { rows: number; cols: number; data: Float32Array } {
  const r = new ByteReader(bytes, 'output');
  const rows = r.u32('rows'), cols = r.u32('cols');
  const data = r.f32s(rows * cols, 'output values');
  r.end();
  return { rows, cols, data };
}

export function batchOf(input: ForwardInput): number {
  return input.kind === 'f32' ? input.rows : input.ids.length;
}

/**
 * Training request: u32 entry count E (1..4096), then per entry u32 tensor index,
 * u32 row count c (1..2^24), c u32 ids, c x dim f32 gradients (dim: the tensor's in
 * the Ghost file).
 */
export function encodeTrainRequest(grads: readonly WireGrad[]): Uint8Array {
  const w = new ByteWriter();
  w.u32(grads.length);
  for (const g of normalizeWireGrads(grads)) w.u32(g.tensor).u32(g.ids.length).u32s(g.ids).f32s(g.grads);
  return w.finish();
}

export function decodeTrainRequest(bytes: Uint8Array, ghost: GhostManifest): WireGradU32[] {
  const r = new ByteReader(bytes, 'training request');
  const count = r.count('entry count', 1, WIRE_LIMITS.gradEntries);
  const out: WireGradU32[] = [];
  const seen = new Set<number>();
  for (let e = 0; e < count; e++) {
    const tensor = r.u32('tensor index');
    const t = ghost.tensors[tensor];
    if (!t) throw new FormatError('BAD_VALUE', `training request: entry ${e} names tensor ${tensor}; the model has ${ghost.tensors.length}`);
    if (seen.has(tensor)) throw new FormatError('BAD_VALUE', `training request: tensor ${tensor} appears twice; concatenate its rows`);
    seen.add(tensor);
    const c = r.count(`entry ${e} row count`, 1, WIRE_LIMITS.gradRows, 4 + t.dim * 4); // ids and gradients
    const ids = r.u32s(c, 'ids');
    for (const id of ids) if (id >= t.n) throw new FormatError('BAD_VALUE', `training request: entry ${e}: id ${id} >= N = ${t.n} of ${t.name}`);
    const grads = r.f32s(c * t.dim, 'gradients');
    checkFiniteF32(grads, `training request: entry ${e} gradients`);
    out.push({ tensor, ids, grads });
  }
  r.end();
  return out;
}

/** What one step request asks (POST /train-step): a batch of inputs and their targets. */
export interface StepRequest {
  input: ForwardInput;
  /** Class ids (cross-entropy: one per output row) or values (mse: rows x outputs). */
  targets: StepTargets;
}

/**
 * Step request: the input record (as a forward request), then the targets as a step proof
 * holds them: u8 kind (1 class ids: u32 count, count u32; 2 values: u32 count, count f32),
 * nothing after. A step on several sequences (an array of more than one): u8 3, u32
 * count, then count times the input record and the targets.
 */
export function encodeStepRequest(req: StepRequest | readonly StepRequest[]): Uint8Array {
  const list: readonly StepRequest[] = Array.isArray(req) ? req : [req as StepRequest];
  if (list.length === 0) throw new InvalidArgumentError('a step request needs at least one sequence');
  const w = new ByteWriter();
  if (list.length > 1) w.u8(SEQUENCES).u32(list.length);
  for (const q of list) {
    if (q.input.kind === 'f32' && q.input.data.length !== q.input.rows * q.input.cols) throw new InvalidArgumentError(`input data has ${q.input.data.length} values, rows x cols = ${q.input.rows * q.input.cols}`);
    writeInputRecord(w, q.input);
    if (q.targets.kind === 'classes') w.u8(1).u32(q.targets.ids.length).u32s(q.targets.ids);
    else w.u8(2).u32(q.targets.data.length).f32s(q.targets.data);
  }
  return w.finish();
}

/** The leading byte of a step request of several sequences (an input record starts with 1 or 2). */
const SEQUENCES = 3;

function readStepRequest(r: ByteReader): StepRequest {
  const input = readInputRecord(r, { maxRows: 2 ** 32 - 1, maxCols: 2 ** 32 - 1 });
  const kind = r.u8('targets kind');
  let targets: StepTargets;
  if (kind === 1) {
    const n = r.count('target count', 1, 2 ** 32 - 1, 4);
    targets = { kind: 'classes', ids: r.u32s(n, 'targets') };
  } else if (kind === 2) {
    const n = r.count('target count', 1, 2 ** 32 - 1, 4);
    const data = r.f32s(n, 'targets');
    checkFiniteF32(data, 'step request: a target');
    targets = { kind: 'values', data };
  } else throw new FormatError('BAD_VALUE', `step request: targets kind ${kind}`);
  return { input, targets };
}

/**
 * Reads a step request of one sequence (untrusted: each count checked against the bytes
 * left before its array is allocated, f32 values finite). The server then checks the
 * counts against the model (the batch, the output width, the loss).
 */
export function decodeStepRequest(bytes: Uint8Array): StepRequest {
  const list = decodeStepRequests(bytes);
  if (list.length !== 1) throw new FormatError('BAD_VALUE', `step request: ${list.length} sequences where one is expected`);
  return list[0]!;
}

/**
 * Reads a step request of one or several sequences (as decodeStepRequest; the count of
 * sequences is checked against the bytes left, each taking at least 10).
 */
export function decodeStepRequests(bytes: Uint8Array): StepRequest[] {
  const r = new ByteReader(bytes, 'step request');
  let count = 1;
  if (bytes.length > 0 && bytes[0] === SEQUENCES) {
    r.u8('request kind');
    count = r.count('sequence count', 2, 2 ** 32 - 1, 10);
  }
  const out: StepRequest[] = [];
  for (let i = 0; i < count; i++) out.push(readStepRequest(r));
  r.end();
  return out;
}

/** A list of proofs: u64 first generation, u32 count, count x (u32 length, proof bytes). */
export function encodeProofList(firstGeneration: number, proofs: readonly Uint8Array[]): Uint8Array {
  return writeExact((w) => {
    w.u64(firstGeneration).u32(proofs.length);
    for (const p of proofs) w.u32(p.length).bytes(p);
  });
}

/**
 * The bytes of encodeProofList, in order, without copying the proofs: the headers in small
 * arrays of their own, each proof as it is (the server writes the parts to the socket one
 * after the other; a step proof is megabytes).
 */
export function proofListParts(firstGeneration: number, proofs: readonly Uint8Array[]): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let head = new ByteWriter(16).u64(firstGeneration).u32(proofs.length);
  for (let i = 0; i < proofs.length; i++) {
    parts.push(head.u32(proofs[i]!.length).finish(), proofs[i]!);
    head = new ByteWriter(4);
  }
  if (proofs.length === 0) parts.push(new ByteWriter(12).u64(firstGeneration).u32(0).finish());
  return parts;
}

export function decodeProofList(bytes: Uint8Array): { firstGeneration: number; proofs: Uint8Array[] } {
  const r = new ByteReader(bytes, 'proof list');
  const firstGeneration = r.u64('first generation');
  const count = r.count('proof count', 0, WIRE_LIMITS.proofs, 4); // each at least its u32 length
  const proofs: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    proofs.push(r.bytes(r.u32('proof length'), 'proof'));
  }
  r.end();
  return { firstGeneration, proofs };
}

/**
 * The gradient entry as the optimizer coalesces it (and an update proof reveals it):
 * sorted unique ids, repeated rows summed in f32 in order of appearance.
 */
export function coalesce(ids: Uint32Array, grads: Float32Array, dim: number): { ids: Uint32Array; grads: Float32Array } {
  const u = Uint32Array.from(new Set(ids)).sort();
  const at = new Map<number, number>();
  u.forEach((id, i) => at.set(id, i));
  const sum = new Float32Array(u.length * dim);
  for (let i = 0; i < ids.length; i++) {
    const o = at.get(ids[i]!)! * dim;
    for (let j = 0; j < dim; j++) sum[o + j] = sum[o + j]! + grads[i * dim + j]!;
  }
  return { ids: u, grads: sum };
}

