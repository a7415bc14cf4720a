/**
 * The training rule a Ghost file commits for step proofs (docs/step-proofs.md): the
 * loss, the optimizer and its hyper-parameters, the learning-rate schedule as a formula
 * of the step number, gradient clipping, the number of steps taken, and per trained
 * tensor a root over its optimizer state (m, v, row counter, decay mark) beside the
 * root over its values. Also the canonical parts of a step that are not a layer: the
 * schedule's factor, the loss's gradient, the clipping, and the state rows' leaf bytes.
 * Loads no addon.
 */
import type { ByteReader, ByteWriter } from '../shared/bytes.js';
import { FormatError } from '../shared/errors.js';
import { cexp, cpowi, type CanonicalOptimizer, type CanonicalRowState } from './canonical.js';
import type { MerkleHasher } from './merkle.js';

/** A learning-rate schedule (the formulas of lib/model/train/schedule.ts, computed canonically). */
export type GhostSchedule =
  | { kind: 'constant' }
  | { kind: 'warmup'; warmupSteps: number }
  | { kind: 'cosine'; warmupSteps: number; totalSteps: number; floor: number }
  | { kind: 'step'; every: number; gamma: number };

/** One trained tensor's optimizer state: its decay log and the root over its state rows. */
export interface GhostTrainedTensor {
  /** Index of the tensor in the Ghost file. */
  tensor: number;
  /** The optimizer's log-decay sum (0 without weight decay). */
  logDecay: number;
  /** Root (hash scheme v1) over the tensor's N state rows (stateLeaf), 32 bytes. */
  stateRoot: Uint8Array;
}

export interface GhostTraining {
  /** 'cross-entropy': mean softmax cross-entropy against one class id per row; 'mse': mean squared error against rows of targets. */
  loss: 'cross-entropy' | 'mse';
  /** The optimizer with the base learning rate (the step's is lr x the schedule's factor, rounded to f32). */
  optimizer: CanonicalOptimizer;
  schedule: GhostSchedule;
  /** Clip the global gradient norm to this (f32; 0: no clipping). */
  clipNorm: number;
  /** Steps taken. The next step proof is step `step` (0-based). */
  step: number;
  /** The trained tensors, ascending; a tensor not listed is frozen. */
  tensors: GhostTrainedTensor[];
}

const MAX_STEPS = 2 ** 48;
const bad = (m: string): never => {
  throw new FormatError('BAD_VALUE', `Ghost file: training: ${m}`);
};

/** Checks a training rule against the tensor count (what the encoding cannot). */
export function checkTraining(t: GhostTraining, tensorCount: number): void {
  if (t.loss !== 'cross-entropy' && t.loss !== 'mse') bad('loss must be cross-entropy or mse');
  const o = t.optimizer;
  if (o.kind !== 'adam' && o.kind !== 'sgd') bad('optimizer kind');
  for (const k of ['lr', 'beta1', 'beta2', 'eps', 'weightDecay'] as const) if (!Number.isFinite(o[k]) || Math.fround(o[k]) !== o[k]) bad(`optimizer ${k} must be a finite f32`);
  if (!optimizerInRange(o)) bad('optimizer parameters out of range');
  if (typeof o.rowStep !== 'boolean') bad('rowStep must be a boolean');
  const s = t.schedule;
  const steps = (v: number, lo: number, what: string): void => {
    if (!Number.isInteger(v) || v < lo || v > MAX_STEPS) bad(`schedule ${what} = ${v} is outside ${lo}..2^48`);
  };
  switch (s.kind) {
    case 'constant':
      break;
    case 'warmup':
      steps(s.warmupSteps, 1, 'warmupSteps');
      break;
    case 'cosine':
      steps(s.warmupSteps, 0, 'warmupSteps');
      steps(s.totalSteps, s.warmupSteps + 1, 'totalSteps');
      if (!(s.floor >= 0 && s.floor <= 1)) bad('schedule floor must be in 0..1');
      break;
    case 'step':
      steps(s.every, 1, 'every');
      if (!(s.gamma >= 0 && s.gamma <= 1)) bad('schedule gamma must be in 0..1');
      break;
    default:
      bad('unknown schedule kind');
  }
  if (!(t.clipNorm >= 0) || !Number.isFinite(t.clipNorm) || Math.fround(t.clipNorm) !== t.clipNorm) bad('clipNorm must be a finite f32 >= 0');
  if (!Number.isInteger(t.step) || t.step < 0 || t.step > MAX_STEPS) bad('step is outside 0..2^48');
  if (t.tensors.length < 1 || t.tensors.length > tensorCount) bad(`${t.tensors.length} trained tensors of ${tensorCount}`);
  let prev = -1;
  for (const e of t.tensors) {
    if (!Number.isInteger(e.tensor) || e.tensor <= prev || e.tensor >= tensorCount) bad('trained tensors must be ascending indexes of tensors');
    prev = e.tensor;
    if (!(e.logDecay <= 0) || !Number.isFinite(e.logDecay)) bad('a decay log must be finite and <= 0');
    if (!(e.stateRoot instanceof Uint8Array) || e.stateRoot.length !== 32) bad('a state root must be 32 bytes');
  }
}

const SCHEDULE_CODES = { constant: 0, warmup: 1, cosine: 2, step: 3 } as const;

/** The ranges an optimizer's parameters must lie in (finite; betas in [0, 1); eps > 0; lr x weightDecay < 1). */
function optimizerInRange(p: CanonicalOptimizer): boolean {
  return p.lr >= 0 && p.weightDecay >= 0 && p.lr * p.weightDecay < 1 && p.beta1 >= 0 && p.beta1 < 1 && p.beta2 >= 0 && p.beta2 < 1 && p.eps > 0 && Number.isFinite(p.eps) && Number.isFinite(p.lr) && Number.isFinite(p.weightDecay);
}

export function writeOptimizer(w: ByteWriter, p: CanonicalOptimizer): void {
  w.u8(p.kind === 'adam' ? 2 : 1).f32(p.lr).f32(p.beta1).f32(p.beta2).f32(p.eps).f32(p.weightDecay).u8(p.rowStep ? 1 : 0);
}

export function readOptimizer(r: ByteReader, where: string): CanonicalOptimizer {
  const kind = r.u8('optimizer kind');
  if (kind !== 1 && kind !== 2) throw new FormatError('BAD_VALUE', `${where}: optimizer kind ${kind}`);
  const p: CanonicalOptimizer = { kind: kind === 2 ? 'adam' : 'sgd', lr: r.f32('lr'), beta1: r.f32('beta1'), beta2: r.f32('beta2'), eps: r.f32('eps'), weightDecay: r.f32('weightDecay'), rowStep: false };
  const rs = r.u8('rowStep');
  if (rs > 1) throw new FormatError('BAD_VALUE', `${where}: rowStep must be 0 or 1`);
  p.rowStep = rs === 1;
  if (!optimizerInRange(p)) throw new FormatError('BAD_VALUE', `${where}: optimizer parameters out of range`);
  return p;
}

/** The training section's bytes (docs/step-proofs.md, "The training rule"). */
export function writeTraining(w: ByteWriter, t: GhostTraining): void {
  w.u8(t.loss === 'cross-entropy' ? 1 : 2);
  writeOptimizer(w, t.optimizer);
  const s = t.schedule;
  w.u8(SCHEDULE_CODES[s.kind]);
  if (s.kind === 'warmup') w.u64(s.warmupSteps);
  else if (s.kind === 'cosine') w.u64(s.warmupSteps).u64(s.totalSteps).f64(s.floor);
  else if (s.kind === 'step') w.u64(s.every).f64(s.gamma);
  w.f32(t.clipNorm).u64(t.step).u32(t.tensors.length);
  for (const e of t.tensors) w.u32(e.tensor).f64(e.logDecay).bytes(e.stateRoot);
}

export function readTraining(r: ByteReader, tensorCount: number): GhostTraining {
  const lossCode = r.u8('loss');
  if (lossCode !== 1 && lossCode !== 2) bad(`loss ${lossCode}`);
  const optimizer = readOptimizer(r, 'Ghost file: training');
  const sc = r.u8('schedule kind');
  let schedule: GhostSchedule;
  if (sc === 0) schedule = { kind: 'constant' };
  else if (sc === 1) schedule = { kind: 'warmup', warmupSteps: r.u64('warmupSteps') };
  else if (sc === 2) schedule = { kind: 'cosine', warmupSteps: r.u64('warmupSteps'), totalSteps: r.u64('totalSteps'), floor: r.f64('floor') };
  else if (sc === 3) schedule = { kind: 'step', every: r.u64('every'), gamma: r.f64('gamma') };
  else bad(`schedule kind ${sc}`);
  const clipNorm = r.f32('clipNorm');
  const step = r.u64('step');
  const n = r.count('trained tensor count', 1, tensorCount, 44);
  const tensors: GhostTrainedTensor[] = [];
  for (let i = 0; i < n; i++) tensors.push({ tensor: r.u32('trained tensor'), logDecay: r.f64('decay log'), stateRoot: r.bytes(32, 'state root') });
  const t: GhostTraining = { loss: lossCode === 1 ? 'cross-entropy' : 'mse', optimizer, schedule: schedule!, clipNorm, step, tensors };
  checkTraining(t, tensorCount);
  return t;
}

// ---------------------------------------------------------------------------
// Canonical arithmetic of a step outside the layers

const f = Math.fround;
const PI = 3.141592653589793;

/**
 * cos(pi p) for p in [0, 1], canonically: u = (p - 0.5) * PI, then -sin(u) by its Taylor
 * series to u^27 in Horner form over u^2, coefficients c_0 = 1, c_i = c_(i-1) / ((2i)(2i + 1)).
 */
export function ccosPi(p: number): number {
  const u = (p - 0.5) * PI;
  const u2 = u * u;
  const c: number[] = [1];
  for (let i = 1; i <= 13; i++) c.push(c[i - 1]! / ((2 * i) * (2 * i + 1)));
  let s = 0;
  for (let i = 13; i >= 0; i--) s = s * u2 + (i % 2 === 0 ? c[i]! : -c[i]!);
  return -(u * s);
}

/** The schedule's factor at step t (0-based), in f64 with the canonical cosine. */
export function cscheduleFactor(s: GhostSchedule, t: number): number {
  switch (s.kind) {
    case 'constant':
      return 1;
    case 'warmup':
      return Math.min(1, (t + 1) / s.warmupSteps);
    case 'cosine': {
      const W = s.warmupSteps, T = s.totalSteps;
      if (t < W) return (t + 1) / W;
      const p = Math.min(1, (t - W) / (T - W));
      return s.floor + ((1 - s.floor) * (1 + ccosPi(p))) / 2;
    }
    case 'step':
      return cpowi(s.gamma, Math.floor(t / s.every));
  }
}

/** The learning rate of step t: f32(lr x factor). */
export function cstepLr(t: GhostTraining, step: number): number {
  return f(t.optimizer.lr * cscheduleFactor(t.schedule, step));
}

/** Targets of a step's batch: one class id per row (cross-entropy) or rows x cols values (mse). */
export type StepTargets = { kind: 'classes'; ids: Uint32Array } | { kind: 'values'; data: Float32Array };

/**
 * The loss's gradient with respect to the output (rows x cols f32) and its value (f64,
 * reported; not part of what a proof checks). Cross-entropy, per row b: m = max z,
 * e_c = cexp(z_c - m), Z = sum_c e_c in order, p_c = e_c / Z, g_c = f((p_c - [c = y_b]) / rows).
 * MSE: g = f((2 (y - t)) / (rows x cols)).
 */
export function closs(loss: GhostTraining['loss'], y: Float32Array, rows: number, cols: number, targets: StepTargets): { grad: Float32Array; value: number } {
  const g = new Float32Array(rows * cols);
  let value = 0;
  if (loss === 'cross-entropy') {
    if (targets.kind !== 'classes') throw new FormatError('BAD_VALUE', 'a cross-entropy step takes class ids as targets');
    const e = new Float64Array(cols);
    for (let b = 0; b < rows; b++) {
      const o = b * cols, yb = targets.ids[b]!;
      let m = -Infinity;
      for (let c = 0; c < cols; c++) if (y[o + c]! > m) m = y[o + c]!;
      let Z = 0;
      for (let c = 0; c < cols; c++) {
        e[c] = cexp(y[o + c]! - m);
        Z = Z + e[c]!;
      }
      for (let c = 0; c < cols; c++) g[o + c] = (e[c]! / Z - (c === yb ? 1 : 0)) / rows;
      value += Math.log(Z) + m - y[o + yb]!;
    }
    return { grad: g, value: value / rows };
  }
  if (targets.kind !== 'values') throw new FormatError('BAD_VALUE', 'an mse step takes rows of values as targets');
  const n = rows * cols;
  for (let i = 0; i < n; i++) {
    const d = y[i]! - targets.data[i]!;
    g[i] = (2 * d) / n;
    value += d * d;
  }
  return { grad: g, value: value / n };
}

/**
 * Clipping by the global norm: norm = sqrt(sum of g^2 in f64 over every trained tensor's
 * rows, tensors ascending, ids ascending, values in order); when clipNorm > 0 and
 * norm > clipNorm, every value becomes f(g * f(clipNorm / norm)). Returns the norm and
 * the scale (1: not clipped); scales `grads` in place.
 */
export function cclip(grads: readonly Float32Array[], clipNorm: number): { norm: number; scale: number } {
  let sum = 0;
  for (const a of grads) for (let i = 0; i < a.length; i++) sum = sum + a[i]! * a[i]!;
  const norm = Math.sqrt(sum);
  if (!(clipNorm > 0) || !(norm > clipNorm)) return { norm, scale: 1 };
  const s = f(clipNorm / norm);
  for (const a of grads) for (let i = 0; i < a.length; i++) a[i] = a[i]! * s;
  return { norm, scale: s };
}

// ---------------------------------------------------------------------------
// State rows

/** Bytes of one state row of a tensor of dim d: m (d f32), v (d f32), steps (u32), mark (f64), little-endian. */
export function stateRowBytes(d: number): number {
  return 8 * d + 12;
}

/** The "dim" a state tree's root binds (its leaves' bytes / 4): 2d + 3. */
export function stateDim(d: number): number {
  return 2 * d + 3;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Leaf bytes of `count` state rows (m and v: count x d; SGD rows have zero moments). */
export function stateLeaves(d: number, s: CanonicalRowState, count: number): Uint8Array {
  const rb = stateRowBytes(d);
  const out = new Uint8Array(count * rb);
  const dv = new DataView(out.buffer);
  if (LITTLE_ENDIAN) {
    // The same bytes: f32 copied as f32 (a row is 4-byte aligned: rb = 8d + 12), the mark through the DataView.
    const w = new Float32Array(out.buffer), u = new Uint32Array(out.buffer), q = rb / 4;
    for (let r = 0; r < count; r++) {
      const o = r * rb;
      if (s.m.length) w.set(s.m.subarray(r * d, (r + 1) * d), r * q);
      if (s.v.length) w.set(s.v.subarray(r * d, (r + 1) * d), r * q + d);
      u[r * q + 2 * d] = s.steps[r]!;
      dv.setFloat64(o + 8 * d + 4, s.marks[r]!, true);
    }
    return out;
  }
  for (let r = 0; r < count; r++) {
    const o = r * rb;
    for (let j = 0; j < d; j++) {
      dv.setFloat32(o + 4 * j, s.m.length ? s.m[r * d + j]! : 0, true);
      dv.setFloat32(o + 4 * (d + j), s.v.length ? s.v[r * d + j]! : 0, true);
    }
    dv.setUint32(o + 8 * d, s.steps[r]!, true);
    dv.setFloat64(o + 8 * d + 4, s.marks[r]!, true);
  }
  return out;
}

/** State rows from leaf bytes (count rows); refuses non-finite or out-of-range values (FormatError). */
export function readStateLeaves(d: number, bytes: Uint8Array, count: number, logDecay: number): CanonicalRowState {
  const rb = stateRowBytes(d);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const m = new Float32Array(count * d), v = new Float32Array(count * d), steps = new Uint32Array(count), marks = new Float64Array(count);
  // Aligned little-endian bytes: the f32 values copied as they are (the same values as getFloat32).
  const w = LITTLE_ENDIAN && bytes.byteOffset % 4 === 0 && bytes.byteLength >= count * rb && d > 0 ? new Float32Array(bytes.buffer, bytes.byteOffset, (count * rb) / 4) : null;
  for (let r = 0; r < count; r++) {
    const o = r * rb;
    if (w) {
      m.set(w.subarray(o / 4, o / 4 + d), r * d);
      v.set(w.subarray(o / 4 + d, o / 4 + 2 * d), r * d);
    } else {
      for (let j = 0; j < d; j++) {
        m[r * d + j] = dv.getFloat32(o + 4 * j, true);
        v[r * d + j] = dv.getFloat32(o + 4 * (d + j), true);
      }
    }
    steps[r] = dv.getUint32(o + 8 * d, true);
    marks[r] = dv.getFloat64(o + 8 * d + 4, true);
    if (!Number.isFinite(marks[r]!) || marks[r]! > 0 || marks[r]! < logDecay) throw new FormatError('BAD_VALUE', `proof: state row ${r}: decay mark out of range`);
  }
  for (let i = 0; i < m.length; i++) {
    if (!Number.isFinite(m[i]!) || !Number.isFinite(v[i]!) || v[i]! < 0) throw new FormatError('BAD_VALUE', `proof: state value ${i} is not finite (or v < 0)`);
  }
  return { m, v, steps, marks };
}

/**
 * The root of N state rows that are all zero (m = v = 0, steps 0, mark 0): what every
 * trained tensor starts from. O(log N) hashes: subtrees of zero rows share their hash.
 */
export function zeroStateRoot(h: MerkleHasher, n: number, d: number): Uint8Array {
  const leaf = h.hashLeaf(new Uint8Array(stateRowBytes(d)));
  // full[L]: a full subtree of 2^L zero rows; the last node of each level may be partial.
  let full = leaf;
  let edge = leaf; // the hash of the last node of the current level
  for (let width = n; width > 1; width = Math.ceil(width / 2)) {
    // Level width -> ceil(width / 2): the last node pairs (full, edge) when width is even, else is edge promoted.
    edge = width % 2 === 0 ? h.hashNode(full, edge) : edge;
    full = h.hashNode(full, full);
  }
  return h.commitRoot(n, stateDim(d), edge);
}
