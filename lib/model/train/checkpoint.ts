/**
 * Training checkpoints and resume (docs/training.md, "Training checkpoints and resume").
 *
 * A training directory is a model directory (ModelDirectory, ../model-dir.ts) plus
 *
 *   train.log        one record per step since the last checkpoint, each appended and
 *                    fdatasync'ed BEFORE the step is applied in memory: the commit point
 *                    of a step. A record holds the step number, the learning rate, and the
 *                    exact arguments the optimizers get (per tensor: its index, the tensor
 *                    optimizer's step count before the step, the ids and the clipped
 *                    gradients as passed to stepAsync; per dense parameter: its index and
 *                    gradient), framed by a u32 length and closed by a 16-byte BLAKE3 check.
 *   train-state.bin  at the last checkpoint s0: the step count, the Trainer's options, each
 *                    tensor optimizer's step count, each dense parameter and its DenseAdam
 *                    moments, under a BLAKE3 check; replaced atomically.
 *
 * checkpoint(): every tensor file checkpointed (each then holds step s), ghost.bin
 * replaced, train-state.bin replaced (s), train.log emptied. A stop anywhere leaves each
 * tensor file at s0 or s, train-state.bin at s0 or s, and the log holding every record
 * after train-state.bin's step. open() replays, for each tensor, the records whose
 * recorded optimizer step count is at or after the file's own, and for the dense
 * parameters the records after train-state.bin's step, with the same optimizer calls:
 * the state after the last durable record, bit for bit. Anything else (a damaged record
 * with records after it, a tensor ahead of the log or behind its start, a gap) is refused.
 */
import { open as openFile, readFile, rm, stat, type FileHandle } from 'node:fs/promises';

import { checkOptions } from '../../shared/args.js';
import { bytesEqual } from '../../shared/bytes.js';
import { exists } from '../../shared/durable-fs.js';
import { FormatError, InvalidArgumentError, StorageError } from '../../shared/errors.js';
import { loadHasher } from '../../verify/merkle.js';
import { Model } from '../model.js';
import { ModelDirectory } from '../model-dir.js';
import { DenseAdam, denseAdamInternals } from '../optim.js';
import type { SparseTensor } from '../../tensor/sparse-tensor.js';
import type { Gradients } from './tape.js';
import { Trainer, trainerInternals, type PreparedStep, type StepInfo, type StepJournal, type TrainerOptions } from './trainer.js';

const STATE_MAGIC = 'GTTRAIN1';
const CHECK = 16;
/** train-state.bin holds dense parameters only (a learned beta, biases): refused beyond this before reading. */
const MAX_STATE_BYTES = 64 * 1024 * 1024;
/** One record's body (a step's clipped gradients): refused beyond this before allocating. */
const MAX_RECORD_BYTES = 1024 * 1024 * 1024;

/** The dense parameters of a model, in a stable order (layer order): what records and train-state.bin index. */
function denseParams(model: Model): Float32Array[] {
  const out: Float32Array[] = [];
  for (const l of model.layers) {
    const p = (l as { betaParam?: unknown }).betaParam;
    if (p instanceof Float32Array && !out.includes(p)) out.push(p);
  }
  return out;
}

async function check16(bytes: Uint8Array): Promise<Uint8Array> {
  return (await loadHasher()).hash(bytes).subarray(0, CHECK);
}

/** A logged step as read back: indexes instead of objects. */
interface LogRecord {
  step: number;
  lr: number;
  sparse: { tensor: number; before: number; ids: Uint32Array; grads: Float32Array }[];
  dense: { param: number; grad: Float32Array }[];
}

function encodeRecord(r: LogRecord): Uint8Array {
  let n = 4 + 8 + 4 + 4;
  for (const s of r.sparse) n += 12 + 4 * s.ids.length + 4 * s.grads.length;
  for (const d of r.dense) n += 8 + 4 * d.grad.length;
  const body = new Uint8Array(n);
  const dv = new DataView(body.buffer);
  let at = 0;
  const u32 = (v: number): void => {
    dv.setUint32(at, v, true);
    at += 4;
  };
  u32(r.step);
  dv.setFloat64(at, r.lr, true);
  at += 8;
  u32(r.sparse.length);
  for (const s of r.sparse) {
    u32(s.tensor);
    u32(s.before);
    u32(s.ids.length);
    body.set(new Uint8Array(s.ids.buffer, s.ids.byteOffset, s.ids.byteLength), at);
    at += s.ids.byteLength;
    body.set(new Uint8Array(s.grads.buffer, s.grads.byteOffset, s.grads.byteLength), at);
    at += s.grads.byteLength;
  }
  u32(r.dense.length);
  for (const d of r.dense) {
    u32(d.param);
    u32(d.grad.length);
    body.set(new Uint8Array(d.grad.buffer, d.grad.byteOffset, d.grad.byteLength), at);
    at += d.grad.byteLength;
  }
  return body;
}

/** Decodes a record body whose check passed; `dims[i]`: tensor i's row width, `lens[j]`: dense parameter j's length. */
function decodeRecord(body: Uint8Array, dims: readonly number[], lens: readonly number[], where: string): LogRecord {
  const dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let at = 0;
  const need = (k: number): void => {
    if (at + k > body.length) throw new StorageError('WAL_CORRUPT', `${where}: the record ends inside a field`);
  };
  const u32 = (): number => {
    need(4);
    const v = dv.getUint32(at, true);
    at += 4;
    return v;
  };
  const step = u32();
  need(8);
  const lr = dv.getFloat64(at, true);
  at += 8;
  const sparse: LogRecord['sparse'] = [];
  for (let k = u32(); k > 0; k--) {
    const tensor = u32(), before = u32(), n = u32();
    if (tensor >= dims.length) throw new StorageError('WAL_CORRUPT', `${where}: tensor ${tensor} is not one of the model's ${dims.length}`);
    const d = dims[tensor]!;
    need(4 * n * (1 + d));
    const ids = new Uint32Array(body.slice(at, at + 4 * n).buffer);
    at += 4 * n;
    const grads = new Float32Array(body.slice(at, at + 4 * n * d).buffer);
    at += 4 * n * d;
    sparse.push({ tensor, before, ids, grads });
  }
  const dense: LogRecord['dense'] = [];
  for (let k = u32(); k > 0; k--) {
    const param = u32(), n = u32();
    if (param >= lens.length || lens[param] !== n) throw new StorageError('WAL_CORRUPT', `${where}: dense parameter ${param} of length ${n} is not the model's`);
    need(4 * n);
    dense.push({ param, grad: new Float32Array(body.slice(at, at + 4 * n).buffer) });
    at += 4 * n;
  }
  if (at !== body.length) throw new StorageError('WAL_CORRUPT', `${where}: ${body.length - at} bytes after the record's fields`);
  return { step, lr, sparse, dense };
}

/**
 * Reads train.log: whole records whose checks pass. A torn tail (a record extending past
 * the end, a last record whose check fails, zeros after the last record) is left out and
 * its length returned; a record failing its check with bytes after it is refused
 * (StorageError WAL_CORRUPT).
 */
async function readTrainLog(path: string, dims: readonly number[], lens: readonly number[]): Promise<{ records: LogRecord[]; validBytes: number; fileBytes: number }> {
  let buf: Uint8Array;
  try {
    buf = new Uint8Array(await readFile(path));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], validBytes: 0, fileBytes: 0 };
    throw err;
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const records: LogRecord[] = [];
  let at = 0;
  while (at + 4 <= buf.length) {
    const n = dv.getUint32(at, true);
    const end = at + 4 + n + CHECK;
    if (n === 0 || n > MAX_RECORD_BYTES || end > buf.length) {
      // Past the end or a zero length: a torn tail only if nothing but zeros (or a partial record) follows.
      if (end > buf.length || buf.subarray(at).every((b) => b === 0)) break;
      throw new StorageError('WAL_CORRUPT', `${path}: a malformed record length ${n} at byte ${at}`);
    }
    const body = buf.subarray(at + 4, at + 4 + n);
    const framed = buf.subarray(at, at + 4 + n);
    if (!bytesEqual(await check16(framed), buf.subarray(at + 4 + n, end))) {
      if (end === buf.length) break; // the last record: torn
      throw new StorageError('WAL_CORRUPT', `${path}: the record at byte ${at} fails its check and records follow it`);
    }
    records.push(decodeRecord(body, dims, lens, `${path} at byte ${at}`));
    at = end;
  }
  return { records, validBytes: at, fileBytes: buf.length };
}

/** What train-state.bin holds. */
interface TrainState {
  step: number;
  options: TrainerOptions;
  tensorSteps: number[];
  dense: { param: Float32Array; adam: { m: Float64Array; v: Float64Array; t: number } | null }[];
}

async function encodeState(s: TrainState): Promise<Uint8Array> {
  const json = new TextEncoder().encode(
    JSON.stringify({ step: s.step, options: s.options, tensorSteps: s.tensorSteps, dense: s.dense.map((d) => ({ length: d.param.length, t: d.adam?.t ?? null })) }),
  );
  let n = 8 + 4 + json.length;
  for (const d of s.dense) n += 4 * d.param.length + (d.adam ? 16 * d.param.length : 0);
  const out = new Uint8Array(n + CHECK);
  out.set(new TextEncoder().encode(STATE_MAGIC), 0);
  new DataView(out.buffer).setUint32(8, json.length, true);
  out.set(json, 12);
  let at = 12 + json.length;
  const put = (a: Float32Array | Float64Array): void => {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), at);
    at += a.byteLength;
  };
  for (const d of s.dense) {
    put(d.param);
    if (d.adam) {
      put(d.adam.m);
      put(d.adam.v);
    }
  }
  out.set(await check16(out.subarray(0, n)), n);
  return out;
}

async function readState(path: string): Promise<TrainState> {
  const size = (await stat(path)).size;
  if (size > MAX_STATE_BYTES) throw new FormatError('LIMIT', `${path}: ${size} bytes, more than ${MAX_STATE_BYTES}`);
  const buf = new Uint8Array(await readFile(path));
  if (buf.length < 12 + CHECK || new TextDecoder().decode(buf.subarray(0, 8)) !== STATE_MAGIC) throw new FormatError('BAD_MAGIC', `${path} is not a train-state file`);
  const n = buf.length - CHECK;
  if (!bytesEqual(await check16(buf.subarray(0, n)), buf.subarray(n))) throw new StorageError('HEADER_CHECKSUM', `${path} fails its check`);
  const jl = new DataView(buf.buffer, buf.byteOffset).getUint32(8, true);
  if (12 + jl > n) throw new FormatError('TRUNCATED', `${path}: its header ends past the file`);
  const head = JSON.parse(new TextDecoder().decode(buf.subarray(12, 12 + jl))) as { step: number; options: TrainerOptions; tensorSteps: number[]; dense: { length: number; t: number | null }[] };
  let at = 12 + jl;
  const take = <T extends Float32Array | Float64Array>(C: new (b: ArrayBuffer) => T, len: number, bytes: number): T => {
    if (at + len * bytes > n) throw new FormatError('TRUNCATED', `${path}: a dense parameter ends past the file`);
    const a = new C(buf.slice(at, at + len * bytes).buffer);
    at += len * bytes;
    return a;
  };
  const dense = head.dense.map((d) => {
    const param = take(Float32Array, d.length, 4);
    const adam = d.t === null ? null : { m: take(Float64Array, d.length, 8), v: take(Float64Array, d.length, 8), t: d.t };
    return { param, adam };
  });
  if (at !== n) throw new FormatError('TRAILING_BYTES', `${path}: ${n - at} bytes after the dense parameters`);
  return { step: head.step, options: head.options, tensorSteps: head.tensorSteps, dense };
}

/**
 * A training run over a training directory: its model (file-backed tensors), its
 * Trainer (every trainer.step() is logged durably before it is taken), checkpoint()
 * and open() (resume, exactly). See the module comment.
 */
export class TrainingRun {
  readonly path: string;
  readonly model: Model;
  readonly trainer: Trainer;
  readonly #options: TrainerOptions;
  readonly #dense: Float32Array[];
  #log: FileHandle | null;
  #logBytes: number;
  #poisoned = false;
  /** A step (logged, not yet applied) or a checkpoint is in flight: the log and the state must not move under it. */
  #busy = false;
  /** Where the last appended record starts (cut back to when its step fails to apply). */
  #recordStart = 0;
  #checkpointed: number;

  private constructor(path: string, model: Model, trainer: Trainer, options: TrainerOptions, log: FileHandle, logBytes: number, checkpointed: number) {
    this.path = path;
    this.model = model;
    this.trainer = trainer;
    this.#options = options;
    this.#dense = denseParams(model);
    this.#log = log;
    this.#logBytes = logBytes;
    this.#checkpointed = checkpointed;
    const run = this;
    const journal: StepJournal = {
      get poisoned() {
        return run.#poisoned;
      },
      append: (p) => this.#append(p),
      applied: () => {
        this.#busy = false;
      },
      failed: () => this.#failed(),
    };
    trainerInternals.setJournal(trainer, journal);
  }

  /**
   * Starts a training run in a new directory `path` (it must not exist): `model` saved
   * with room for optimizer state (Model.save), train-state.bin at step 0 with the
   * Trainer's `options`, then opened (open()). Train `run.model` (file-backed) with
   * `run.trainer` from then on; `model` itself is left as it was.
   */
  static async create(path: string, model: Model, options: TrainerOptions = {}): Promise<TrainingRun> {
    if (!(model instanceof Model)) throw new InvalidArgumentError('TrainingRun.create needs a Model');
    const o = checkOptions('TrainingRun.create', options, ['optimizer', 'lr', 'weightDecay', 'beta1', 'beta2', 'eps', 'schedule', 'clipNorm']);
    await model.save(path, { optimizerState: true });
    try {
      // The tensor files start with zero optimizer state (saveFile does not copy an attached optimizer's).
      const state: TrainState = { step: 0, options: o, tensorSteps: model.tensors.map(() => 0), dense: denseParams(model).map((p) => ({ param: p.slice(), adam: null })) };
      await ModelDirectory.replaceTrainState(path, await encodeState(state));
      return await TrainingRun.open(path);
    } catch (err) {
      // Options the Trainer refuses (checked by open()) leave no directory behind.
      await rm(path, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * Resumes the training run in `path` where its last durable step left it: tensor files
   * and ghost.bin opened, train-state.bin loaded, train.log replayed (a torn last record
   * cut off). Refuses a directory it cannot resume exactly: StorageError WAL_CORRUPT (a
   * damaged record with records after it), WAL_MISMATCH (a tensor file ahead of the log
   * or behind its start, a gap in the steps), FormatError / StorageError for damaged files.
   */
  static async open(path: string): Promise<TrainingRun> {
    const files = ModelDirectory.trainingFiles(path);
    if (!(await exists(files.state))) throw new InvalidArgumentError(`${path} is not a training directory (no train-state.bin); start one with TrainingRun.create`);
    const state = await readState(files.state);
    const { ghost, tensors } = await ModelDirectory.openForTraining(path);
    let log: FileHandle | null = null;
    try {
      const model = await Model.fromManifest(ghost.manifest, tensors);
      const dense = denseParams(model);
      if (dense.length !== state.dense.length || dense.some((p, i) => p.length !== state.dense[i]!.param.length)) {
        throw new FormatError('BAD_VALUE', `${files.state} holds ${state.dense.length} dense parameters, the model ${dense.length}`);
      }
      if (state.tensorSteps.length !== model.tensors.length) throw new FormatError('BAD_VALUE', `${files.state} holds ${state.tensorSteps.length} tensors, the model ${model.tensors.length}`);
      const trainer = new Trainer(model, state.options);
      // The dense parameters and their Adam state at train-state.bin's step.
      const adam = trainerInternals.adamOptions(trainer);
      dense.forEach((p, i) => {
        const s = state.dense[i]!;
        p.set(s.param);
        if (s.adam) {
          const o = new DenseAdam([p], { ...adam });
          denseAdamInternals.setState(o, { m: [s.adam.m], v: [s.adam.v], t: s.adam.t });
          trainerInternals.setDenseOptimizer(trainer, p, o);
        }
      });
      const { records, validBytes, fileBytes } = await readTrainLog(files.log, model.tensors.map((t) => t.dim), dense.map((p) => p.length));
      const sparse = trainer.sparseOptimizer;
      const fileSteps = model.tensors.map((t) => (sparse === null ? 0 : sparse.info(t).steps));
      const live = records.filter((r) => r.step > state.step);
      // The plan: which records each tensor replays, checked before anything is applied.
      live.forEach((r, i) => {
        if (r.step !== state.step + 1 + i) throw new StorageError('WAL_MISMATCH', `${files.log}: step ${r.step} where ${state.step + 1 + i} was expected (a gap)`);
      });
      const next = [...state.tensorSteps];
      for (const r of live) {
        for (const s of r.sparse) {
          if (s.before !== next[s.tensor]) throw new StorageError('WAL_MISMATCH', `${files.log}: step ${r.step} steps tensor ${s.tensor} from its step ${s.before}, expected ${next[s.tensor]}`);
          next[s.tensor]!++;
        }
      }
      fileSteps.forEach((t, i) => {
        if (t < state.tensorSteps[i]! || t > next[i]!) {
          throw new StorageError('WAL_MISMATCH', `tensor file ${i} holds optimizer step ${t}, outside the log's ${state.tensorSteps[i]}..${next[i]} (the files do not belong together)`);
        }
      });
      for (const r of live) {
        const p: PreparedStep = {
          step: r.step,
          lr: r.lr,
          sparse: r.sparse.filter((s) => s.before >= fileSteps[s.tensor]!).map((s) => ({ tensor: model.tensors[s.tensor]!, ids: s.ids, grads: s.grads })),
          dense: r.dense.map((d) => ({ param: dense[d.param]!, grad: d.grad })),
        };
        await trainerInternals.apply(trainer, p);
      }
      trainerInternals.setSteps(trainer, state.step + live.length);
      log = await openFile(files.log, 'a');
      if (validBytes < fileBytes) {
        await log.truncate(validBytes);
        await log.datasync();
      }
      return new TrainingRun(path, model, trainer, state.options, log, validBytes, state.step);
    } catch (err) {
      await log?.close();
      for (const t of tensors) if (t.file) t.close();
      throw err;
    }
  }

  /** Steps taken (the last durable one). */
  get steps(): number {
    return this.trainer.steps;
  }

  /** The step of the last completed checkpoint (train-state.bin's). */
  get checkpointedStep(): number {
    return this.#checkpointed;
  }

  /** trainer.step(grads): the step's record is durable in train.log before it is taken. */
  step(grads: Gradients): Promise<StepInfo> {
    return this.trainer.step(grads);
  }

  async #append(p: PreparedStep): Promise<void> {
    const log = this.#openLog();
    this.#claim('step');
    const sparse = this.trainer.sparseOptimizer;
    const record: LogRecord = {
      step: p.step,
      lr: p.lr,
      sparse: p.sparse.map((g) => {
        const ids = g.ids instanceof Uint32Array ? g.ids : Uint32Array.from(g.ids);
        return { tensor: this.model.tensors.indexOf(g.tensor), before: sparse!.info(g.tensor).steps, ids, grads: g.grads };
      }),
      dense: p.dense.map((d) => {
        const i = this.#dense.indexOf(d.param);
        if (i < 0) throw new InvalidArgumentError("a dense gradient's parameter is not one of the model's (a layer's betaParam)");
        return { param: i, grad: d.grad };
      }),
    };
    const body = encodeRecord(record);
    const framed = new Uint8Array(4 + body.length + CHECK);
    new DataView(framed.buffer).setUint32(0, body.length, true);
    framed.set(body, 4);
    framed.set(await check16(framed.subarray(0, 4 + body.length)), 4 + body.length);
    this.#recordStart = this.#logBytes;
    try {
      for (let at = 0; at < framed.length; ) at += (await log.write(framed, at)).bytesWritten;
      await log.datasync();
    } catch (err) {
      // Not durable: the step is not taken; what reached the file is a torn tail, or a
      // record the next open() replays (the step was never acknowledged, either is allowed).
      this.#poisoned = true;
      this.#busy = false;
      throw err;
    }
    this.#logBytes += framed.length;
  }

  /**
   * A logged step failed to apply (the optimizers refused it; a tensor may have stepped
   * before another refused): its record is cut back off the log and the run refuses
   * further steps and checkpoints. Reopen it (open()) to continue from the last durable step.
   */
  async #failed(): Promise<void> {
    this.#poisoned = true;
    this.#busy = false;
    const log = this.#log;
    if (log === null) return;
    await log.truncate(this.#recordStart);
    await log.datasync();
    this.#logBytes = this.#recordStart;
  }

  /** Refuses a step or checkpoint while another is in flight (each must be awaited before the next). */
  #claim(what: string): void {
    if (this.#busy) throw new InvalidArgumentError(`a step or checkpoint of this training run is in flight; await it before the next ${what}`);
    this.#busy = true;
  }

  #openLog(): FileHandle {
    if (this.#log === null) throw new InvalidArgumentError(`${this.path}: the training run is closed`);
    return this.#log;
  }

  /**
   * Makes the run's state the checkpointed one: every tensor file checkpointed, ghost.bin
   * replaced, train-state.bin replaced, train.log emptied (in that order; see the module
   * comment for what a stop in between leaves). Resolves to the step checkpointed.
   */
  async checkpoint(): Promise<number> {
    const log = this.#openLog();
    if (this.#poisoned) throw new InvalidArgumentError('a step of this training run failed after it was logged; reopen the run (TrainingRun.open)');
    this.#claim('checkpoint');
    try {
      return await this.#checkpoint(log);
    } finally {
      this.#busy = false;
    }
  }

  async #checkpoint(log: FileHandle): Promise<number> {
    for (const t of this.model.tensors) await t.checkpointAsync();
    await ModelDirectory.replaceGhost(this.path, await this.model.ghost());
    const sparse = this.trainer.sparseOptimizer;
    const state: TrainState = {
      step: this.trainer.steps,
      options: this.#options,
      tensorSteps: this.model.tensors.map((t) => (sparse === null ? 0 : sparse.info(t).steps)),
      dense: this.#dense.map((p) => {
        const o = trainerInternals.denseOptimizer(this.trainer, p);
        const s = o === undefined ? null : denseAdamInternals.state(o);
        return { param: p.slice(), adam: s === null ? null : { m: s.m[0]!, v: s.v[0]!, t: s.t } };
      }),
    };
    await ModelDirectory.replaceTrainState(this.path, await encodeState(state));
    await log.truncate(0);
    await log.datasync();
    this.#logBytes = 0;
    this.#recordStart = 0;
    this.#checkpointed = state.step;
    return state.step;
  }

  /**
   * Closes the run: with `checkpoint` (default true) a checkpoint first; then the log and
   * the tensor files (closing a tensor file checkpoints it, which the log covers).
   */
  async close(options: { checkpoint?: boolean } = {}): Promise<void> {
    const o = checkOptions('TrainingRun.close', options, ['checkpoint']);
    if (this.#log === null) return;
    if (o.checkpoint !== false && !this.#poisoned) await this.checkpoint();
    trainerInternals.setJournal(this.trainer, null);
    await this.#log.close();
    this.#log = null;
    this.model.close();
  }
}
