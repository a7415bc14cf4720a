/**
 * The model directory (docs/storage.md, "The model directory"): its layout and its
 * durability, in one place. Model.save / Model.load and the prover service (lib/serve)
 * go through this class; no other module names a file of the directory.
 *
 *   ghost.bin          the Ghost file the tensor files hold: the directory's commit point
 *   tensors/<i>.gtt    one tensor file per tensor of the Ghost file, in its order
 *   updates.bin        the update log of a served directory: per step, a u32 (little
 *                      endian) length then the update proof's bytes; appended and fsynced
 *   ghost-0.bin        the Ghost file the log starts from (generation 0)
 *   train.log          a training run's step records since its last checkpoint (lib/model/train/checkpoint.ts)
 *   train-state.bin    a training run's dense state and step count at its last checkpoint
 *   step-state.bin     a model trained by step proofs: the optimizer state its Ghost file's
 *                      state roots commit (lib/model/train/step-training.ts), as of its
 *                      last compaction
 *   step-state.log     a served model trained by step proofs: per durable step since the
 *                      last compaction, a u32 length, a record of the state rows the step
 *                      wrote (encodeStateRecord) and the record's BLAKE3; appended and fsynced
 *
 * A served model trained by step proofs logs step proofs instead of update proofs, and
 * each durable step also appends its state rows to step-state.log (before ghost.bin);
 * once the log is as large as step-state.bin, step-state.bin is rewritten whole and the
 * log emptied (after ghost.bin). Opening applies the log's records up to ghost.bin's step
 * to step-state.bin (a torn or damaged tail is cut, never trusted; the state roots are
 * checked at load); a step stopped halfway is rolled back at recover() from the old rows
 * the logged proof reveals and its state record cut.
 *
 * Invariants: ghost.bin is only ever replaced whole (write, fsync, rename, fsync the
 * directory), so a reader sees an old or a new Ghost file, never a mix; a step is
 * written log first, then the tensor files it touched (each checkpoint atomic), then
 * ghost.bin, so after a stop the tensor files hold the Ghost file of some generation
 * between ghost.bin's and the log's end, which recover() finds and repairs to.
 */
import { mkdir, readFile, rename, rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';

import { bytesEqual, toHex } from '../shared/bytes.js';
import { exists, replaceFile, syncDir, writeSynced } from '../shared/durable-fs.js';
import { FormatError, InvalidArgumentError, ProofError } from '../shared/errors.js';
import { decodeGhost } from '../verify/ghost-file.js';
import { decodeProof, type StepProof } from '../verify/proof-format.js';
import { pinGhost, verifyUpdate, type PinnedGhost } from '../verify/proof-verify.js';
import { verifyTrainStep } from '../verify/step.js';
import { SparseTensor } from '../tensor/sparse-tensor.js';
import { allIds } from '../shared/args.js';
import { applyStateLog, rollBackStepState, stateRecordStep } from './train/step-training.js';
import { loadHasher } from '../verify/merkle.js';

const GHOST = 'ghost.bin';
const FIRST_GHOST = 'ghost-0.bin';
const LOG = 'updates.bin';
const TENSORS = 'tensors';
const TRAIN_LOG = 'train.log';
const TRAIN_STATE = 'train-state.bin';
const STEP_STATE = 'step-state.bin';
const STEP_LOG = 'step-state.log';

/** The records of a state log as read: whole records whose checksum holds, in order, and where each ends. */
interface StateLog {
  records: Uint8Array[];
  /** Byte offset after each record. */
  ends: number[];
  /** Bytes of whole, checked records (a torn or damaged tail is not counted). */
  validBytes: number;
  fileBytes: number;
  /**
   * Whether what follows the valid records can be a torn last write: a record cut short,
   * or one last record whose checksum fails. Otherwise (a damaged record with more after
   * it) the log is damaged, not torn: recover() leaves it, and the state roots refuse it.
   */
  tornTail: boolean;
}

/** Reads step-state.log: records up to the first torn or damaged one (its checksum is the payload's BLAKE3). */
async function readStateLog(path: string): Promise<StateLog> {
  let buf: Uint8Array;
  try {
    buf = new Uint8Array(await readFile(join(path, STEP_LOG)));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], ends: [], validBytes: 0, fileBytes: 0, tornTail: true };
    throw err;
  }
  const h = await loadHasher();
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const records: Uint8Array[] = [], ends: number[] = [];
  let at = 0;
  while (at + 4 <= buf.length) {
    const n = dv.getUint32(at, true);
    if (at + 4 + n + 32 > buf.length) break;
    const payload = buf.subarray(at + 4, at + 4 + n);
    if (!bytesEqual(h.hash(payload), buf.subarray(at + 4 + n, at + 4 + n + 32))) break;
    records.push(payload);
    at += 4 + n + 32;
    ends.push(at);
  }
  const rest = buf.length - at;
  const tornTail = rest < 4 || 4 + dv.getUint32(at, true) + 32 >= rest;
  return { records, ends, validBytes: at, fileBytes: buf.length, tornTail };
}

/** A state record framed for step-state.log: u32 length, the record, its BLAKE3. */
async function frameStateRecord(record: Uint8Array): Promise<Uint8Array> {
  const h = await loadHasher();
  const out = new Uint8Array(4 + record.length + 32);
  new DataView(out.buffer).setUint32(0, record.length, true);
  out.set(record, 4);
  out.set(h.hash(record), 4 + record.length);
  return out;
}

/** Where the tensor file of tensor `i` lives, relative to the directory. */
function tensorFile(i: number): string {
  return `${TENSORS}/${i}.gtt`;
}

/** Records of an update log as read: the whole records, and how many bytes they take of the file's. */
export interface UpdateLog {
  proofs: Uint8Array[];
  /** Bytes of whole records (a torn last record is not counted). */
  validBytes: number;
  fileBytes: number;
}

/** The served history of a directory after recovery: what a prover service starts from. */
export interface DirectoryHistory {
  /** Update proofs in the log: the generation ghost.bin holds. */
  generation: number;
  /** proofs[g] moves generation g to g + 1. */
  proofs: Uint8Array[];
  /**
   * ghosts[g]: the Ghost file at generation g (0..generation), replayed from ghost-0.bin
   * with every step verified; null for a directory without ghost-0.bin (served before it
   * existed), whose log is checked only by its last step.
   */
  ghosts: PinnedGhost[] | null;
}

/** Bytes a log record of each proof takes (u32 length + bytes). */
function framedBytes(proofs: readonly Uint8Array[]): number {
  return proofs.reduce((n, p) => n + 4 + p.length, 0);
}

/**
 * The Ghost file after `proof`, verified against `ghost`: a step proof when `ghost` commits
 * a training rule (such a model moves only by step proofs; an update proof is WRONG_KIND),
 * else an update proof.
 */
async function nextGhost(ghost: PinnedGhost, proof: Uint8Array): Promise<PinnedGhost> {
  return ghost.manifest.training !== undefined ? (await verifyTrainStep(ghost, proof)).ghost : (await verifyUpdate(ghost, proof)).ghost;
}

/** Checkpoints each file-backed tensor among `tensors` once, in order of first mention. */
async function checkpoint(tensors: readonly SparseTensor[]): Promise<void> {
  for (const t of new Set(tensors)) if (t.file) await t.checkpointAsync();
}

export class ModelDirectory {
  /** The directory, as given. */
  readonly path: string;
  /** Whether it may be written (repaired, logged to); read-only opens refuse to repair. */
  readonly writable: boolean;
  /** Length of updates.bin up to the last durable step. */
  #logBytes = 0;
  /** Length of step-state.log up to the last durable step, and of step-state.bin (what the log is compacted against). */
  #stateLogBytes = 0;
  #stateBaseBytes = 0;
  /** Bytes written to step-state.log and step-state.bin by this instance. */
  stateBytesWritten = 0;
  /** Whether the last appendStep() may have rewritten step-state.bin for a step it did not finish (undoStep() puts it back). */
  #baseAhead = false;
  /** The recovered log and its replayed Ghost files, until start() hands them over. */
  #pending: { proofs: Uint8Array[]; ghosts: PinnedGhost[] | null } | null;
  #started = false;

  private constructor(path: string, writable: boolean, proofs: Uint8Array[], ghosts: PinnedGhost[] | null, state: { logBytes: number; baseBytes: number } = { logBytes: 0, baseBytes: 0 }) {
    this.path = path;
    this.writable = writable;
    this.#pending = { proofs, ghosts };
    this.#stateLogBytes = state.logBytes;
    this.#stateBaseBytes = state.baseBytes;
  }

  /** Where each file of the directory `path` lives (for tools that show them: the CLI's inspect). */
  static files(path: string): { ghost: string; firstGhost: string; log: string; tensor: (i: number) => string } {
    return { ghost: join(path, GHOST), firstGhost: join(path, FIRST_GHOST), log: join(path, LOG), tensor: (i) => join(path, tensorFile(i)) };
  }

  /**
   * Writes a new directory `path` (it must not exist): one tensor file per tensor and
   * ghost.bin, into a temporary directory beside it, everything fsynced, then renamed
   * to `path` in one step (and the parent fsynced). On failure nothing is left.
   */
  static async save(path: string, ghost: PinnedGhost, tensors: readonly SparseTensor[], options: { optimizerState: boolean; stepState?: Uint8Array }): Promise<void> {
    if (await exists(path)) throw new InvalidArgumentError(`${path} exists; save into a new directory`);
    const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
    await mkdir(join(tmp, TENSORS), { recursive: true });
    try {
      for (const [i, t] of tensors.entries()) {
        await t.saveFile(join(tmp, tensorFile(i)), { optimizerState: options.optimizerState });
      }
      if (options.stepState) await writeSynced(join(tmp, STEP_STATE), options.stepState, 'wx');
      await writeSynced(join(tmp, GHOST), ghost.bytes, 'wx');
      await syncDir(join(tmp, TENSORS));
      await syncDir(tmp);
      await rename(tmp, path);
      await syncDir(join(path, '..'));
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * Opens the directory's files: ghost.bin (decoded and pinned; `expectDigest`, if given,
   * must be its digest) and each tensor file (memory-mapped; `verify`: every Merkle node
   * checked; `readOnly`), whose size and root must be the Ghost file's. The caller owns
   * the tensors (Model.load builds the layers over them). Throws FormatError, StorageError
   * or ProofError('GHOST_MISMATCH' / 'ROOT_MISMATCH'); on failure no file is left open.
   */
  static async open(path: string, options: { expectDigest?: Uint8Array; verify: boolean; readOnly: boolean }): Promise<{ ghost: PinnedGhost; tensors: SparseTensor[]; stepState: Uint8Array | null }> {
    const ghost = await pinGhost(decodeGhost(new Uint8Array(await readFile(join(path, GHOST)))));
    if (options.expectDigest && !bytesEqual(options.expectDigest, ghost.digest)) throw new ProofError('GHOST_MISMATCH', `${path}/${GHOST} is not the expected model`);
    const tensors: SparseTensor[] = [];
    try {
      for (const [i, gt] of ghost.manifest.tensors.entries()) {
        const t = await SparseTensor.openFile(join(path, tensorFile(i)), { verify: options.verify, readOnly: options.readOnly });
        tensors.push(t);
        if (t.dim !== gt.dim || t.size !== gt.n || !bytesEqual(t.root(), gt.root)) {
          throw new ProofError('ROOT_MISMATCH', `${tensorFile(i)} (${gt.name}) holds ${t.size} x ${t.dim} with another root than the Ghost file's ${gt.n} x ${gt.dim}`);
        }
      }
    } catch (err) {
      for (const t of tensors) t.close();
      throw err;
    }
    const stepPath = join(path, STEP_STATE);
    let stepState: Uint8Array | null = ghost.manifest.training && (await exists(stepPath)) ? new Uint8Array(await readFile(stepPath)) : null;
    if (ghost.manifest.training) {
      // The state log's records (up to ghost.bin's step) on top of the last compaction.
      const log = await readStateLog(path);
      if (log.records.length > 0) stepState = applyStateLog(stepState, log.records, ghost.manifest);
    }
    return { ghost, tensors, stepState };
  }

  /** Where a training run's files live (lib/model/train/checkpoint.ts, docs/training.md "Training checkpoints and resume"). */
  static trainingFiles(path: string): { log: string; state: string } {
    return { log: join(path, TRAIN_LOG), state: join(path, TRAIN_STATE) };
  }

  /** Replaces a training run's train-state.bin atomically (a new file, fsynced, renamed, the directory fsynced). */
  static async replaceTrainState(path: string, bytes: Uint8Array): Promise<void> {
    await replaceFile(path, TRAIN_STATE, bytes);
  }

  /** Replaces ghost.bin atomically by the Ghost file the tensor files now hold (a training checkpoint). */
  static async replaceGhost(path: string, ghost: PinnedGhost): Promise<void> {
    await replaceFile(path, GHOST, ghost.bytes);
  }

  /**
   * Opens a training directory's files for resuming: ghost.bin (its layers and shapes;
   * after a stop its roots may be older or newer than the tensor files', which the
   * training log reconciles) and each tensor file, writable, whose shape must be the
   * Ghost file's. On failure no file is left open.
   */
  static async openForTraining(path: string): Promise<{ ghost: PinnedGhost; tensors: SparseTensor[] }> {
    const ghost = await pinGhost(decodeGhost(new Uint8Array(await readFile(join(path, GHOST)))));
    const tensors: SparseTensor[] = [];
    try {
      for (const [i, gt] of ghost.manifest.tensors.entries()) {
        const t = await SparseTensor.openFile(join(path, tensorFile(i)));
        tensors.push(t);
        if (t.dim !== gt.dim || t.size !== gt.n) throw new FormatError('BAD_VALUE', `${tensorFile(i)} (${gt.name}) holds ${t.size} x ${t.dim}, the Ghost file ${gt.n} x ${gt.dim}`);
      }
    } catch (err) {
      for (const t of tensors) t.close();
      throw err;
    }
    return { ghost, tensors };
  }

  /** Reads the update log of `path`: whole records; a torn last record is left out (not cut). */
  static async readLog(path: string): Promise<UpdateLog> {
    let buf: Uint8Array;
    try {
      buf = new Uint8Array(await readFile(join(path, LOG)));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { proofs: [], validBytes: 0, fileBytes: 0 };
      throw err;
    }
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const proofs: Uint8Array[] = [];
    let at = 0;
    while (at + 4 <= buf.length) {
      const n = dv.getUint32(at, true);
      if (at + 4 + n > buf.length) break;
      proofs.push(buf.slice(at + 4, at + 4 + n));
      at += 4 + n;
    }
    return { proofs, validBytes: at, fileBytes: buf.length };
  }

  /**
   * Brings a directory to a consistent generation before its model is loaded. Reads the
   * update log (writable: a torn last record is cut off). With ghost-0.bin, replays the
   * log from it with verifyUpdate (every step must verify, else ProofError); if the
   * replay does not end at ghost.bin, the directory was stopped while saving a step
   * (after the log, before ghost.bin): ghost.bin must lie on the replayed path
   * (FormatError NON_CANONICAL otherwise), the tensor files must hold the Ghost file of a
   * generation between it and the log's end, and, writable, ghost.bin is rewritten to
   * that generation and the log cut back to it (nothing after ghost.bin's generation was
   * published). A log of step proofs whose last step ghost.bin does not hold yet is
   * rolled back instead (#rollBackStep: its tensors and step-state.bin may each be at
   * either generation). Read-only, such a directory is refused (NON_CANONICAL). Then load the
   * model (Model.load) and call start() with its Ghost file.
   */
  static async recover(path: string, options: { writable: boolean }): Promise<ModelDirectory> {
    const writable = options.writable;
    const logPath = join(path, LOG), g0Path = join(path, FIRST_GHOST);
    const log = await ModelDirectory.readLog(path);
    if (log.validBytes < log.fileBytes && writable) await truncate(logPath, log.validBytes);
    let proofs = log.proofs;
    // history[g]: the Ghost file at generation g, replayed from ghost-0.bin (every step must verify).
    let history: PinnedGhost[] | null = null;
    if (proofs.length > 0 && (await exists(g0Path))) {
      history = [await pinGhost(new Uint8Array(await readFile(g0Path)))];
      // A served log holds update proofs or, for a model trained by step proofs, step proofs.
      for (const p of proofs) history.push(await nextGhost(history[history.length - 1]!, p));
      const onDisk = await pinGhost(new Uint8Array(await readFile(join(path, GHOST))));
      const last = proofs.length - 1;
      const lastProof = decodeProof(proofs[last]!);
      if (!bytesEqual(history[proofs.length]!.digest, onDisk.digest) && lastProof.kind === 'step' && bytesEqual(history[last]!.digest, onDisk.digest)) {
        // Stopped while persisting a step proof's step (after the log, before ghost.bin): one step
        // touches many tensors and the state file, which may each hold the step or not. Roll
        // every one of them back to the rows the proof reveals (ghost.bin's generation), and
        // cut the step from the log: it was never acknowledged.
        if (!writable) throw new FormatError('NON_CANONICAL', `${path}: interrupted while saving step ${lastProof.step}; open it with training enabled once to repair it`);
        await ModelDirectory.#rollBackStep(path, history[last]!, lastProof);
        await truncate(logPath, framedBytes(proofs.slice(0, last)));
        proofs = proofs.slice(0, last);
        history = history.slice(0, last + 1);
      } else if (!bytesEqual(history[proofs.length]!.digest, onDisk.digest)) {
        // Stopped while persisting a step (after the log, before ghost.bin): the tensor files hold
        // the Ghost file of some generation between ghost.bin's and the log's end. Nothing after
        // ghost.bin's generation was acknowledged; resume at the generation the files hold.
        const from = history.findIndex((h) => bytesEqual(h.digest, onDisk.digest));
        if (from < 0) throw new FormatError('NON_CANONICAL', `${path}: ${GHOST} (${toHex(onDisk.digest)}) is not on the path of ${LOG} from ${FIRST_GHOST}`);
        let at = -1;
        for (let g = proofs.length; g >= from && at < 0; g--) if (await ModelDirectory.#rootsMatch(path, history[g]!)) at = g;
        if (at < 0) throw new FormatError('NON_CANONICAL', `${path}: the tensor files hold none of the Ghost files of generations ${from}..${proofs.length}`);
        if (!writable) throw new FormatError('NON_CANONICAL', `${path}: interrupted while saving generation ${at}; open it with training enabled once to repair it`);
        await replaceFile(path, GHOST, history[at]!.bytes);
        await truncate(logPath, framedBytes(proofs.slice(0, at)));
        proofs = proofs.slice(0, at);
        history = history.slice(0, at + 1);
      }
    }
    const state = await ModelDirectory.#recoverStateLog(path, writable);
    return new ModelDirectory(path, writable, proofs, history, state);
  }

  /**
   * Cuts step-state.log (writable) after its last whole record of a step ghost.bin holds:
   * a torn or damaged tail, and the record of a step that was not finished (or was undone
   * halfway). Returns the log's length then and step-state.bin's.
   */
  static async #recoverStateLog(path: string, writable: boolean): Promise<{ logBytes: number; baseBytes: number }> {
    const log = await readStateLog(path);
    const basePath = join(path, STEP_STATE);
    const baseBytes = (await exists(basePath)) ? (await stat(basePath)).size : 0;
    if (log.fileBytes === 0) return { logBytes: 0, baseBytes };
    const g = decodeGhost(new Uint8Array(await readFile(join(path, GHOST))));
    const upTo = g.training?.step ?? 0;
    let keep = 0, later = false;
    for (const [i, r] of log.records.entries()) {
      if (stateRecordStep(r) > upTo) {
        later = true;
        break;
      }
      keep = log.ends[i]!;
    }
    // A damaged record followed by more is not cut: what follows may be acknowledged steps (the state roots refuse the model at load).
    if (!later && !log.tornTail) return { logBytes: log.validBytes, baseBytes };
    if (keep < log.fileBytes && writable) {
      await truncate(join(path, STEP_LOG), keep);
      await writeSynced(join(path, STEP_LOG), new Uint8Array(0), 'a');
    }
    return { logBytes: keep, baseBytes };
  }

  /**
   * Puts the directory's tensor files and step-state.bin back to `before` (the Ghost file
   * before the step `proof`), from the old rows and state rows the proof reveals; each
   * tensor file checkpointed, the state file replaced atomically. Idempotent. Then every
   * tensor root must be `before`'s (FormatError NON_CANONICAL otherwise); the state roots
   * are checked when the model loads.
   */
  static async #rollBackStep(path: string, before: PinnedGhost, proof: StepProof): Promise<void> {
    const m = before.manifest;
    const trained = new Set((m.training?.tensors ?? []).map((e) => e.tensor));
    for (const b of proof.blocks) {
      if (!trained.has(b.tensor)) continue;
      const gt = m.tensors[b.tensor]!;
      const ids = b.ids.length === 0 && b.all ? allIds(gt.n) : b.ids;
      const rows = new Float32Array(ids.length * gt.dim);
      for (let k = 0; k < ids.length; k++) {
        const row = b.payload[k];
        if (!(row instanceof Float32Array) || row.length !== gt.dim) throw new FormatError('NON_CANONICAL', `${path}: the logged step does not reveal row ${ids[k]} of tensor ${b.tensor} whole`);
        rows.set(row, k * gt.dim);
      }
      const t = await SparseTensor.openFile(join(path, tensorFile(b.tensor)));
      try {
        t.scatter(ids, rows);
        await t.checkpointAsync();
      } finally {
        t.close();
      }
    }
    // step-state.bin may hold the step (a step that writes about half the state or more
    // rewrites it before ghost.bin): its rows put back, and it names `before`'s step. The
    // step's record in step-state.log, if any, is cut by #recoverStateLog.
    const statePath = join(path, STEP_STATE);
    const file = (await exists(statePath)) ? new Uint8Array(await readFile(statePath)) : null;
    const back = rollBackStepState(file, m, proof);
    if (back !== file) await replaceFile(path, STEP_STATE, back);
    if (!(await ModelDirectory.#rootsMatch(path, before))) throw new FormatError('NON_CANONICAL', `${path}: the tensor files do not hold ${GHOST} after rolling back the unfinished step ${proof.step}`);
  }

  /** Whether every tensor file of the directory has the root the Ghost file gives it. */
  static async #rootsMatch(path: string, g: PinnedGhost): Promise<boolean> {
    for (const [i, gt] of g.manifest.tensors.entries()) {
      const t = await SparseTensor.openFile(join(path, tensorFile(i)), { readOnly: true });
      try {
        if (!bytesEqual(t.root(), gt.root)) return false;
      } finally {
        t.close();
      }
    }
    return true;
  }

  /**
   * Starts the history at `ghost`, the Ghost file of the model loaded from the recovered
   * directory, and hands it over (once). An empty log starts here: writable, ghost-0.bin
   * becomes `ghost`. A log without ghost-0.bin must end with a step `ghost` holds
   * (FormatError NON_CANONICAL otherwise).
   */
  async start(ghost: PinnedGhost): Promise<DirectoryHistory> {
    const pending = this.#pending;
    if (!pending) throw new InvalidArgumentError(`${this.path}: the history was started already`);
    const { proofs, ghosts } = pending;
    if (proofs.length === 0) {
      // The history starts here: keep its first Ghost file, to name every later one.
      if (this.writable) await replaceFile(this.path, FIRST_GHOST, ghost.bytes);
    } else if (!ghosts) {
      // No first Ghost file: at least the last logged step must be the one ghost.bin holds.
      const last = decodeProof(proofs[proofs.length - 1]!);
      const root = last.kind === 'update' ? ghost.manifest.tensors[last.tensor]?.root : undefined;
      const held = last.kind === 'step' ? bytesEqual(last.newGhost, ghost.digest) : last.kind === 'update' && root !== undefined && toHex(root) === toHex(last.newRoot);
      if (!held) {
        throw new FormatError('NON_CANONICAL', `${this.path}: ${LOG} ends with a step that ${GHOST} does not hold`);
      }
    }
    this.#pending = null;
    this.#started = true;
    this.#logBytes = framedBytes(proofs);
    return { generation: proofs.length, proofs, ghosts };
  }

  #checkWritable(what: string): void {
    if (!this.#started) throw new InvalidArgumentError(`${this.path}: start() the history before ${what}`);
    if (!this.writable) throw new InvalidArgumentError(`${this.path} was opened read-only; cannot ${what}`);
  }

  /**
   * Makes a step durable: its update proofs appended to updates.bin and fsynced, every
   * file-backed tensor among `tensors` (those the step touched) checkpointed, for a model
   * trained by step proofs the step's state record (`stepState.record`: the state rows it
   * wrote) appended to step-state.log and fsynced, then ghost.bin replaced by `ghost` (the
   * Ghost file after the step). Only once this resolves may the step be published. On
   * failure call undoStep(). Then, once the log is as large as step-state.bin, the log is
   * compacted: step-state.bin replaced by `stepState.full()` (every state row the new
   * Ghost file commits) and the log emptied; a failure there leaves the step durable and
   * the log as it was (a later step compacts it).
   */
  async appendStep(proofs: readonly Uint8Array[], ghost: PinnedGhost, tensors: readonly SparseTensor[], stepState?: { record: Uint8Array; full: () => Uint8Array }): Promise<void> {
    this.#checkWritable('log a step');
    const framed = new Uint8Array(framedBytes(proofs));
    const dv = new DataView(framed.buffer);
    let at = 0;
    for (const p of proofs) {
      dv.setUint32(at, p.length, true);
      framed.set(p, at + 4);
      at += 4 + p.length;
    }
    await writeSynced(join(this.path, LOG), framed, 'a');
    await checkpoint(tensors);
    let record: Uint8Array | null = stepState ? await frameStateRecord(stepState.record) : null;
    this.#baseAhead = false;
    if (stepState && record && 2 * record.length >= this.#stateBaseBytes) {
      // The step writes about half the state or more: step-state.bin rewritten whole (it names
      // the step; recover() rolls it back from the logged proof if ghost.bin is not replaced).
      const full = stepState.full();
      this.#baseAhead = true;
      await replaceFile(this.path, STEP_STATE, full);
      this.stateBytesWritten += full.length;
      this.#stateBaseBytes = full.length;
      record = null;
    } else if (record) {
      await writeSynced(join(this.path, STEP_LOG), record, 'a');
      this.stateBytesWritten += record.length;
    }
    await replaceFile(this.path, GHOST, ghost.bytes);
    this.#logBytes += framed.length;
    this.#baseAhead = false;
    if (!stepState) return;
    if (record) this.#stateLogBytes += record.length;
    try {
      if (record && this.#stateLogBytes >= this.#stateBaseBytes) {
        // Compaction: the log as large as step-state.bin, which is rewritten at this step.
        const full = stepState.full();
        await replaceFile(this.path, STEP_STATE, full);
        this.stateBytesWritten += full.length;
        this.#stateBaseBytes = full.length;
      }
      if (this.#stateLogBytes > 0 && !record) {
        // step-state.bin holds this step: the log's records (of earlier steps) are no longer needed.
        await truncate(join(this.path, STEP_LOG), 0);
        await writeSynced(join(this.path, STEP_LOG), new Uint8Array(0), 'a');
        this.#stateLogBytes = 0;
      } else if (record && this.#stateLogBytes >= this.#stateBaseBytes) {
        await truncate(join(this.path, STEP_LOG), 0);
        await writeSynced(join(this.path, STEP_LOG), new Uint8Array(0), 'a');
        this.#stateLogBytes = 0;
      }
    } catch {
      // The step is durable either way: step-state.bin names the step it holds, and records of
      // steps up to it are skipped when the log is applied (applyStateLog).
    }
  }

  /**
   * Puts the files back after a failed appendStep(), once the caller has put the rows of
   * `tensors` back in memory: updates.bin cut back to the last durable step (and fsynced),
   * the tensors checkpointed at their old rows, with `stateLog` step-state.log cut back to
   * the last durable step (and fsynced), ghost.bin rewritten to `ghost` (the Ghost file
   * before the step). If this throws, the directory is repaired by the next
   * recover() of a writable open.
   */
  async undoStep(ghost: PinnedGhost, tensors: readonly SparseTensor[], stepState?: () => Uint8Array): Promise<void> {
    this.#checkWritable('undo a step');
    await truncate(join(this.path, LOG), this.#logBytes);
    await writeSynced(join(this.path, LOG), new Uint8Array(0), 'a');
    await checkpoint(tensors);
    if (stepState) {
      if (await exists(join(this.path, STEP_LOG))) {
        await truncate(join(this.path, STEP_LOG), this.#stateLogBytes);
        await writeSynced(join(this.path, STEP_LOG), new Uint8Array(0), 'a');
      }
      // A step-state.bin rewritten (or maybe rewritten) for the failed step: put back (the state in memory, undone).
      if (this.#baseAhead) {
        const full = stepState();
        await replaceFile(this.path, STEP_STATE, full);
        this.#stateBaseBytes = full.length;
        this.#baseAhead = false;
      }
    }
    await replaceFile(this.path, GHOST, ghost.bytes);
  }
}
