/**
 * Training by step proofs (docs/step-proofs.md): the training rule a Model commits in
 * its Ghost file, the optimizer state of its trained tensors (step-state.ts), and the
 * making of a step proof: the forward's selection, one block per tensor read, the state
 * of the rows written, then the step computed by the verifier's own code
 * (lib/verify/step.ts) and applied to the tensors. The model then holds exactly what the
 * verifier computed, bit for bit (checked: the tensors' native roots must equal it).
 */
import { allIds, checkInteger, checkNumber, checkOptions, describe, toIds } from '../../shared/args.js';
import { StateKind, type StepProof } from '../../verify/proof-format.js';
import { ByteReader, ByteWriter, bytesEqual, type InputRecord } from '../../shared/bytes.js';
import { FormatError, InvalidArgumentError, ProofError } from '../../shared/errors.js';
import type { GhostManifest } from '../../verify/ghost-file.js';
import { readStateLeaves, stateRowBytes } from '../../verify/training.js';
import type { SparseTensor } from '../../tensor/sparse-tensor.js';
import type { CanonicalOptimizer } from '../../verify/canonical.js';
import { loadHasher, type MerkleHasher } from '../../verify/merkle.js';
import type { GhostSchedule, GhostTraining, StepTargets } from '../../verify/training.js';
import { checkSchedule, type Schedule } from './schedule.js';
import { StateTree } from './step-state.js';

/** What `new Model(layers, { training })` takes: the rule step proofs follow. */
export interface StepTrainingOptions {
  /** 'cross-entropy' (targets: one class id per row) or 'mse' (targets: rows x outputs values). */
  loss: 'cross-entropy' | 'mse';
  /** 'adam' (default) or 'sgd'. */
  optimizer?: 'adam' | 'sgd';
  /** Base learning rate (default 1e-3 for Adam, 1e-2 for SGD); rounded to f32. */
  lr?: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay (default 0), lazy with catch-up as in SparseAdam. */
  weightDecay?: number;
  /** Adam's bias correction by each row's own step count ('row', default) or the global step. */
  biasCorrection?: 'row' | 'global';
  /** Learning-rate schedule (default constant); computed canonically (docs/step-proofs.md). */
  schedule?: Schedule;
  /** Clip the global gradient norm to this (default: no clipping). */
  clipNorm?: number;
  /** Tensors not trained (default: none; every tensor of the model is trained). */
  frozen?: readonly SparseTensor[];
}

/** A batch to train on: the model's input (ids or rows of floats) and the targets. */
export interface StepBatch {
  input: Float32Array | Uint32Array | readonly number[];
  /** Class ids (cross-entropy; one per row) or values (mse; rows x outputs). */
  targets: Uint32Array | readonly number[] | Float32Array;
}

/**
 * The batch of one recorded sequence, as Model.proveTrainStep takes it: a step proof's
 * sequence (a swarm replica replays a verified step with it) or a served step request.
 */
export function stepBatchOf(q: { input: InputRecord; targets: StepTargets }): StepBatch {
  return { input: q.input.kind === 'ids' ? q.input.ids : q.input.data, targets: q.targets.kind === 'classes' ? q.targets.ids : q.targets.data };
}

/** The training rule and state of a Model trained by step proofs. */
export class StepTraining {
  readonly loss: 'cross-entropy' | 'mse';
  readonly optimizer: CanonicalOptimizer;
  readonly schedule: GhostSchedule;
  readonly clipNorm: number;
  /** Steps taken. */
  step = 0;
  /** Per trained tensor (by Ghost-file index): its decay log and state tree. */
  readonly trained = new Map<number, { logDecay: number; state: StateTree }>();

  private constructor(o: StepTrainingOptions) {
    this.loss = o.loss;
    const adam = (o.optimizer ?? 'adam') === 'adam';
    const f32 = (name: string, v: number, lo: number, hi: number): number => Math.fround(checkNumber(name, v, lo, hi));
    this.optimizer = {
      kind: adam ? 'adam' : 'sgd',
      lr: f32('training.lr', o.lr ?? (adam ? 1e-3 : 1e-2), 0, 1e6),
      beta1: f32('training.beta1', o.beta1 ?? 0.9, 0, 0.999999),
      beta2: f32('training.beta2', o.beta2 ?? 0.999, 0, 0.99999999),
      eps: f32('training.eps', o.eps ?? 1e-8, 1e-30, 1),
      weightDecay: f32('training.weightDecay', o.weightDecay ?? 0, 0, 1e6),
      rowStep: (o.biasCorrection ?? 'row') === 'row',
    };
    if (!(this.optimizer.lr * this.optimizer.weightDecay < 1)) throw new InvalidArgumentError('training: lr x weightDecay must be below 1');
    const s = checkSchedule(o.schedule ?? { kind: 'constant' });
    this.schedule = s.kind === 'cosine' ? { kind: 'cosine', warmupSteps: s.warmupSteps ?? 0, totalSteps: s.totalSteps, floor: s.floor ?? 0 } : s;
    this.clipNorm = o.clipNorm === undefined ? 0 : Math.fround(checkNumber('training.clipNorm', o.clipNorm, Number.MIN_VALUE, 1e30));
  }

  /** The rule for a model's tensors: every tensor trained but the frozen ones, each from the zero state. */
  static async create(options: StepTrainingOptions, tensors: readonly SparseTensor[]): Promise<StepTraining> {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError(`training must be an object, got ${describe(options)}`);
    const o = checkOptions('training', options, ['loss', 'optimizer', 'lr', 'beta1', 'beta2', 'eps', 'weightDecay', 'biasCorrection', 'schedule', 'clipNorm', 'frozen']);
    if (o.loss !== 'cross-entropy' && o.loss !== 'mse') throw new InvalidArgumentError(`training.loss must be 'cross-entropy' or 'mse', got ${describe(o.loss)}`);
    if (o.optimizer !== undefined && o.optimizer !== 'adam' && o.optimizer !== 'sgd') throw new InvalidArgumentError(`training.optimizer must be 'adam' or 'sgd', got ${describe(o.optimizer)}`);
    if (o.biasCorrection !== undefined && o.biasCorrection !== 'row' && o.biasCorrection !== 'global') throw new InvalidArgumentError(`training.biasCorrection must be 'row' or 'global'`);
    const frozen = o.frozen ?? [];
    if (!Array.isArray(frozen) || frozen.some((t) => !tensors.includes(t))) throw new InvalidArgumentError('training.frozen must list tensors of the model');
    const st = new StepTraining(o);
    const h = await loadHasher();
    tensors.forEach((t, i) => {
      if (!frozen.includes(t)) st.trained.set(i, { logDecay: 0, state: new StateTree(h, t.size, t.dim) });
    });
    if (st.trained.size === 0) throw new InvalidArgumentError('training: every tensor is frozen');
    return st;
  }

  /**
   * The rule and state a Ghost file's training section and a saved state file describe
   * (Model.load): every trained tensor's state rows restored, its root checked against the
   * Ghost file's (ProofError ROOT_MISMATCH otherwise).
   */
  static async restore(m: GhostManifest, tensors: readonly SparseTensor[], stateFile: Uint8Array | null): Promise<{ options: StepTrainingOptions; training: StepTraining }> {
    const t = m.training!;
    const trained = new Set(t.tensors.map((e) => e.tensor));
    const o = t.optimizer;
    const options: StepTrainingOptions = {
      loss: t.loss,
      optimizer: o.kind,
      lr: o.lr,
      beta1: o.beta1,
      beta2: o.beta2,
      eps: o.eps,
      weightDecay: o.weightDecay,
      biasCorrection: o.rowStep ? 'row' : 'global',
      schedule: t.schedule,
      ...(t.clipNorm > 0 ? { clipNorm: t.clipNorm } : {}),
      frozen: tensors.filter((_, i) => !trained.has(i)),
    };
    const st = await StepTraining.create(options, tensors);
    st.step = t.step;
    const rows = stateFile === null ? new Map<number, { ids: Uint32Array; leaves: Uint8Array }>() : decodeStepState(stateFile, m);
    for (const e of t.tensors) {
      const mine = st.trained.get(e.tensor)!;
      mine.logDecay = e.logDecay;
      const r = rows.get(e.tensor);
      if (r && r.ids.length > 0) mine.state.set(r.ids, readStateLeaves(mine.state.dim, r.leaves, r.ids.length, e.logDecay));
      if (!bytesEqual(mine.state.root(), e.stateRoot)) throw new ProofError('ROOT_MISMATCH', `the optimizer state of tensor ${e.tensor} is not the one the Ghost file commits${stateFile === null ? ' (the directory has no step-state.bin)' : ''}`);
    }
    return { options, training: st };
  }

  /**
   * Takes back the step `proof` made (proveTrainStep applied it; the prover service undoes
   * a step it could not make durable): every trained tensor's rows put back to the values
   * the proof's blocks reveal, its state rows to the proof's state leaves, the step count
   * and decay marks to `before`'s (the Ghost file before the step). Then each root must be
   * `before`'s (Error otherwise: the caller stops and a restart repairs from the files).
   */
  undo(proof: StepProof, before: GhostManifest, tensors: readonly SparseTensor[]): void {
    const tb = before.training;
    if (!tb) throw new Error('internal: undo of a step against a Ghost file without a training rule');
    for (const b of proof.blocks) {
      if (!this.trained.has(b.tensor)) continue;
      const t = tensors[b.tensor]!;
      const ids = b.ids.length === 0 && b.all ? allIds(t.size) : b.ids;
      const rows = new Float32Array(ids.length * t.dim);
      for (let k = 0; k < ids.length; k++) {
        const row = b.payload[k];
        if (!(row instanceof Float32Array) || row.length !== t.dim) throw new Error(`internal: the step's block of tensor ${b.tensor} does not hold row ${ids[k]} whole; it cannot be undone from the proof`);
        rows.set(row, k * t.dim);
      }
      t.scatter(ids, rows);
    }
    for (const s of proof.states) {
      const e = this.trained.get(s.tensor);
      if (!e) continue;
      const ids = s.ids.length === 0 && s.all ? allIds(e.state.n) : s.ids;
      e.state.setLeaves(ids, s.leaves);
    }
    this.step = tb.step;
    for (const e of tb.tensors) this.trained.get(e.tensor)!.logDecay = e.logDecay;
    for (const [i, t] of tensors.entries()) {
      if (!bytesEqual(t.root(), before.tensors[i]!.root)) throw new Error(`internal: tensor ${i}'s root after undoing the step is not the Ghost file's before it`);
    }
    for (const e of tb.tensors) {
      if (!bytesEqual(this.trained.get(e.tensor)!.state.root(), e.stateRoot)) throw new Error(`internal: tensor ${e.tensor}'s optimizer state after undoing the step is not the Ghost file's before it`);
    }
  }

  /** The state file's bytes (decodeStepState reads them): every trained tensor's written rows. */
  encodeState(): Uint8Array {
    const w = new ByteWriter();
    w.bytes(STATE_MAGIC).u16(2).u64(this.step).u32(this.trained.size);
    for (const [tensor, e] of [...this.trained].sort((a, b) => a[0] - b[0])) {
      const { ids, leaves } = e.state.entries();
      w.u32(tensor).u32(e.state.dim).u64(e.state.n).u32(ids.length).u32s(ids).bytes(leaves);
    }
    return w.finish();
  }

  /**
   * A record of the state log (step-state.log, decodeStateRecord reads it): the state rows
   * the step `proof` wrote, as they are now (the step applied), and the step count after
   * it. Bytes: the written rows' ids and leaves, not every row ever written.
   */
  encodeStateRecord(proof: StepProof): Uint8Array {
    const w = new ByteWriter();
    w.u64(proof.step + 1).u32(proof.states.length);
    for (const s of proof.states) {
      const e = this.trained.get(s.tensor);
      if (!e) throw new Error(`internal: a state block of tensor ${s.tensor}, which is not trained`);
      const ids = s.ids.length === 0 && s.all ? allIds(e.state.n) : s.ids;
      w.u32(s.tensor).u32(e.state.dim).u32(ids.length).u32s(ids).bytes(e.state.leaves(ids));
    }
    return w.finish();
  }

  /** The Ghost file's training section as the model stands. */
  section(): GhostTraining {
    return {
      loss: this.loss,
      optimizer: { ...this.optimizer },
      schedule: { ...this.schedule },
      clipNorm: this.clipNorm,
      step: this.step,
      tensors: [...this.trained].sort((a, b) => a[0] - b[0]).map(([tensor, e]) => ({ tensor, logDecay: e.logDecay, stateRoot: e.state.root() })),
    };
  }

  /** The targets of a batch, checked against the loss and the output's shape. */
  targets(t: StepBatch['targets'], rows: number, cols: number): StepTargets {
    if (this.loss === 'cross-entropy') {
      if (t instanceof Float32Array) throw new InvalidArgumentError('a cross-entropy step takes class ids as targets');
      const ids = toIds('targets', t);
      if (ids.length !== rows) throw new InvalidArgumentError(`${ids.length} targets for a batch of ${rows}`);
      ids.forEach((c, i) => checkInteger(`targets[${i}]`, c, 0, cols - 1));
      return { kind: 'classes', ids: ids.slice() };
    }
    if (!(t instanceof Float32Array)) throw new InvalidArgumentError('an mse step takes a Float32Array of targets');
    if (t.length !== rows * cols) throw new InvalidArgumentError(`${t.length} target values for an output of ${rows} x ${cols}`);
    for (let i = 0; i < t.length; i++) if (!Number.isFinite(t[i]!)) throw new InvalidArgumentError(`targets[${i}] is not finite`);
    return { kind: 'values', data: t.slice() };
  }
}

const STATE_MAGIC = Uint8Array.from([0x89, 0x47, 0x54, 0x53, 0x54, 0x41, 0x0d, 0x0a]); // 0x89 'GTSTA' CR LF

/**
 * Reads a state file (untrusted bytes: every count checked against the Ghost file and
 * the bytes left before anything is allocated): per trained tensor, its written rows.
 */
export function decodeStepState(bytes: Uint8Array, m: GhostManifest): Map<number, { ids: Uint32Array; leaves: Uint8Array }> {
  const r = new ByteReader(bytes, 'step state');
  const magic = r.bytes(8, 'magic');
  if (magic.some((b, i) => b !== STATE_MAGIC[i])) throw new FormatError('BAD_MAGIC', 'not a step-state file');
  const version = r.u16('version');
  if (version !== 1 && version !== 2) throw new FormatError('BAD_VERSION', `step state: version ${version}`);
  if (version === 2) r.u64('step');
  const trained = m.training?.tensors ?? [];
  const n = r.count('tensor count', 0, trained.length);
  const out = new Map<number, { ids: Uint32Array; leaves: Uint8Array }>();
  for (let i = 0; i < n; i++) {
    const tensor = r.u32('tensor'), dim = r.u32('dim'), rows = r.u64('rows');
    const gt = m.tensors[tensor];
    if (!gt || !trained.some((e) => e.tensor === tensor) || out.has(tensor)) throw new FormatError('BAD_VALUE', `step state: tensor ${tensor} is not a trained tensor of the Ghost file (or appears twice)`);
    if (dim !== gt.dim || rows !== gt.n) throw new FormatError('BAD_VALUE', `step state: tensor ${tensor} is ${rows} x ${dim}; the Ghost file says ${gt.n} x ${gt.dim}`);
    const count = r.count('written rows', 0, gt.n, 4 + stateRowBytes(dim));
    const ids = r.u32s(count, 'ids');
    for (let k = 0; k < count; k++) if (ids[k]! >= gt.n || (k > 0 && ids[k]! <= ids[k - 1]!)) throw new FormatError('BAD_VALUE', `step state: tensor ${tensor}'s ids are not ascending ids below N`);
    out.set(tensor, { ids, leaves: r.bytes(count * stateRowBytes(dim), 'state rows') });
  }
  r.end();
  return out;
}

/**
 * A state file (step-state.bin) with the rows a step proof wrote put back to the state the
 * proof reveals for them (its old leaves): the state file before the step, whether `file`
 * was written before or after it (idempotent). ModelDirectory.recover rolls back a step that
 * was logged but not finished; the result's roots are checked when the model loads. A
 * version-2 file that names a step up to `m`'s does not hold the step: it is returned as it
 * is (the state log's later records still apply to it). One that names the step after is
 * put back and names `m`'s; a version-1 file (or none) is put back and stays version 1.
 */
export function rollBackStepState(file: Uint8Array | null, m: GhostManifest, proof: StepProof): Uint8Array {
  const at = file === null ? -1 : stepStateStep(file);
  if (file !== null && at >= 0 && at <= (m.training?.step ?? 0)) return file;
  const rows = file === null ? new Map<number, { ids: Uint32Array; leaves: Uint8Array }>() : decodeStepState(file, m);
  const trained = m.training?.tensors ?? [];
  const w = new ByteWriter();
  if (at >= 0) w.bytes(STATE_MAGIC).u16(2).u64(m.training?.step ?? 0).u32(trained.length);
  else w.bytes(STATE_MAGIC).u16(1).u32(trained.length);
  for (const e of [...trained].sort((a, b) => a.tensor - b.tensor)) {
    const gt = m.tensors[e.tensor]!;
    const rb = stateRowBytes(gt.dim);
    const byId = new Map<number, Uint8Array>();
    const r = rows.get(e.tensor);
    if (r) r.ids.forEach((id, k) => byId.set(id, r.leaves.subarray(k * rb, (k + 1) * rb)));
    for (const s of proof.states) {
      if (s.tensor !== e.tensor) continue;
      if (s.kinds?.some((k) => k === StateKind.Held || k === StateKind.Delta)) throw new Error(`internal: the step's state block of tensor ${s.tensor} does not carry every row (a proof made with a cache); it cannot be rolled back from the proof`);
      const ids = s.ids.length === 0 && s.all ? allIds(gt.n) : s.ids;
      ids.forEach((id, k) => byId.set(id, s.leaves.subarray(k * rb, (k + 1) * rb)));
    }
    const ids = Uint32Array.from(byId.keys()).sort();
    w.u32(e.tensor).u32(gt.dim).u64(gt.n).u32(ids.length).u32s(ids);
    for (const id of ids) w.bytes(byId.get(id)!);
  }
  return w.finish();
}

/** One record of a state log: the step count after its step, and per tensor the rows it wrote. */
export interface StateRecord {
  step: number;
  tensors: { tensor: number; ids: Uint32Array; leaves: Uint8Array }[];
}

/**
 * The step count a state file holds the state after (version 2), or -1 for a version-1
 * file (written before the state log: every record applies to it) or bytes too short.
 */
export function stepStateStep(bytes: Uint8Array): number {
  if (bytes.length < 18 || STATE_MAGIC.some((b, i) => b !== bytes[i])) return -1;
  const r = new ByteReader(bytes, 'step state');
  r.bytes(8, 'magic');
  return r.u16('version') === 2 ? r.u64('step') : -1;
}

/** The step count a state record ends at (its first 8 bytes), or -1 if it is shorter. */
export function stateRecordStep(bytes: Uint8Array): number {
  return bytes.length < 8 ? -1 : new ByteReader(bytes, 'step state record').u64('step');
}

/**
 * Reads a state record (encodeStateRecord), checked against the Ghost file's trained
 * tensors and shapes (FormatError otherwise) before anything is allocated.
 */
export function decodeStateRecord(bytes: Uint8Array, m: GhostManifest): StateRecord {
  const r = new ByteReader(bytes, 'step state record');
  const step = r.u64('step');
  const trained = m.training?.tensors ?? [];
  const n = r.count('tensor count', 0, trained.length);
  const tensors: StateRecord['tensors'] = [];
  for (let i = 0; i < n; i++) {
    const tensor = r.u32('tensor'), dim = r.u32('dim');
    const gt = m.tensors[tensor];
    if (!gt || !trained.some((e) => e.tensor === tensor) || dim !== gt.dim) throw new FormatError('BAD_VALUE', `step state record: tensor ${tensor} of dim ${dim} is not a trained tensor of the Ghost file`);
    const count = r.count('rows', 0, gt.n, 4 + stateRowBytes(dim));
    const ids = r.u32s(count, 'ids');
    for (let k = 0; k < count; k++) if (ids[k]! >= gt.n || (k > 0 && ids[k]! <= ids[k - 1]!)) throw new FormatError('BAD_VALUE', `step state record: tensor ${tensor}'s ids are not ascending ids below N`);
    tensors.push({ tensor, ids, leaves: r.bytes(count * stateRowBytes(dim), 'state rows') });
  }
  r.end();
  return { step, tensors };
}

/**
 * The state file `base` (step-state.bin, or null: no row written) with the state log's
 * records applied in order, each row set to the record's leaf: the state file of the
 * Ghost file `m`. Only records of steps after the base's (version 2 names its step) and up
 * to m's step are applied (a later one is a step that was not finished; recover() cuts
 * it), so a log not yet emptied after the base was rewritten is harmless. The result's
 * roots are checked when the model loads (StepTraining.restore).
 */
export function applyStateLog(base: Uint8Array | null, records: readonly Uint8Array[], m: GhostManifest): Uint8Array {
  const rows = base === null ? new Map<number, { ids: Uint32Array; leaves: Uint8Array }>() : decodeStepState(base, m);
  const trained = m.training?.tensors ?? [];
  const byId = new Map<number, Map<number, Uint8Array>>();
  for (const e of trained) {
    const rb = stateRowBytes(m.tensors[e.tensor]!.dim);
    const map = new Map<number, Uint8Array>();
    const r = rows.get(e.tensor);
    if (r) r.ids.forEach((id, k) => map.set(id, r.leaves.subarray(k * rb, (k + 1) * rb)));
    byId.set(e.tensor, map);
  }
  const upTo = m.training?.step ?? 0;
  const from = base === null ? -1 : stepStateStep(base);
  for (const bytes of records) {
    const rec = decodeStateRecord(bytes, m);
    if (rec.step > upTo || rec.step <= from) continue;
    for (const t of rec.tensors) {
      const rb = stateRowBytes(m.tensors[t.tensor]!.dim), map = byId.get(t.tensor)!;
      t.ids.forEach((id, k) => map.set(id, t.leaves.subarray(k * rb, (k + 1) * rb)));
    }
  }
  const w = new ByteWriter();
  w.bytes(STATE_MAGIC).u16(2).u64(m.training?.step ?? 0).u32(trained.length);
  for (const e of [...trained].sort((a, b) => a.tensor - b.tensor)) {
    const gt = m.tensors[e.tensor]!, map = byId.get(e.tensor)!;
    const ids = Uint32Array.from(map.keys()).sort();
    w.u32(e.tensor).u32(gt.dim).u64(gt.n).u32(ids.length).u32s(ids);
    for (const id of ids) w.bytes(map.get(id)!);
  }
  return w.finish();
}

export { StateTree };
export type { MerkleHasher };
/** A prover that has no training rule. */
export function noTrainingRule(): never {
  throw new ProofError('NO_TRAINING_RULE', 'this model has no training rule: build it with new Model(layers, { training }) (docs/step-proofs.md)');
}
