/**
 * Training a byte-level language model (docs/lm.md, "Training"): a training directory
 * (TrainingRun: every step logged durably before it is taken, atomic checkpoints, exact
 * resume) plus
 *
 *   lm.json        the model config, the training options and the corpus it trains on
 *                  (written once, atomically, when the run starts);
 *   lm-log.jsonl   one line per logged step and per validation;
 *   loss.svg       the training and validation bits per byte against tokens seen.
 *
 * A step reads `batch` windows of context + 1 bytes of the training text at offsets
 * drawn from seededRandom(stepSeed(seed, t)) for step t (0-based), so the data a step
 * sees is a function of its number: a resumed run takes the same steps as one that
 * never stopped, bit for bit. Each window is one Tape (the windows run `concurrency`
 * at a time); their gradients are summed per row in window order and divided by
 * `batch` (sumGradients: each distinct row once, so the step's durable record stays small), then one Trainer step (warm-up and cosine schedule, global-norm clipping).
 */
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

import { checkInteger, checkNumber, checkOptions } from '../../shared/args.js';
import { exists, replaceFile, syncDir } from '../../shared/durable-fs.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import type { SparseTensor } from '../../tensor/sparse-tensor.js';
import type { Model } from '../model.js';
import type { SparseGrad } from '../optim.js';
import { TrainingRun } from '../train/checkpoint.js';
import { seededRandom } from '../train/init.js';
import { Progress } from '../train/progress.js';
import { Tape, type Gradients } from '../train/tape.js';
import type { Schedule } from '../train/schedule.js';
import type { Corpus } from './corpus.js';
import { languageModel, resolveLanguageModelConfig, type LanguageModelConfig, type ResolvedLanguageModelConfig } from './model.js';

export const LM_CONFIG = 'lm.json';
export const LM_LOG = 'lm-log.jsonl';
export const LM_PLOT = 'loss.svg';

export interface LanguageModelTrainingOptions {
  /** The model (a new run; ignored on resume, which reads lm.json). */
  model?: LanguageModelConfig;
  /** Optimizer steps in all (a resumed run goes on to this many). */
  steps: number;
  /** Windows per step (default 8). */
  batch?: number;
  /** Peak learning rate (default 3e-3), reached after warmupSteps, then cosine to lr * minLrFraction. */
  lr?: number;
  warmupSteps?: number;
  minLrFraction?: number;
  /** Global gradient-norm clipping (default 1). */
  clipNorm?: number;
  weightDecay?: number;
  /** Seed of the data order (default 1). */
  seed?: number;
  /** Validate every this many steps (default steps / 10) and at the end. */
  evalEvery?: number;
  /** Validation bytes scored each time (default 16384; the first of the validation text). */
  evalBytes?: number;
  /** Checkpoint every this many steps (default 200) and at the end. */
  checkpointEvery?: number;
  /** Log a step line every this many steps (default 10). */
  logEvery?: number;
  /** Windows run at once (default 2). */
  concurrency?: number;
  /** A progress bar on stderr (default true). */
  progress?: boolean;
  /** Called after each logged step and each validation. */
  onRecord?: (r: LanguageModelRecord) => void;
  /** Stops after the step in progress (then checkpoints). */
  signal?: AbortSignal;
}

export type LanguageModelRecord =
  | { type: 'step'; step: number; tokens: number; loss: number; bpb: number; lr: number; gradNorm: number | null; tokensPerSecond: number; seconds: number }
  | { type: 'eval'; step: number; tokens: number; valBpb: number; seconds: number };

/** What lm.json holds. */
export interface LanguageModelRunConfig {
  version: 1;
  model: ResolvedLanguageModelConfig;
  training: Required<Pick<LanguageModelTrainingOptions, 'steps' | 'batch' | 'lr' | 'warmupSteps' | 'minLrFraction' | 'clipNorm' | 'weightDecay' | 'seed'>>;
  corpus: { source: string; licence: string; trainBytes: number; validationBytes: number; documents: { train: number; validation: number } };
}

export interface LanguageModelTrainingResult {
  /** Steps taken in all (resumed ones included). */
  steps: number;
  /** Validation bits per byte at the end. */
  valBpb: number;
  /** Mean training bits per byte over the last logged steps. */
  trainBpb: number;
  /** Training tokens per second of this process's steps. */
  tokensPerSecond: number;
  /** Whether the signal stopped it before `steps`. */
  stopped: boolean;
  history: LanguageModelRecord[];
}

/** The seed of step t's data (a 32-bit mix of the run's seed and t). */
export function stepSeed(seed: number, t: number): number {
  let h = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(t >>> 0, 0x85ebca6b) ^ Math.floor(t / 2 ** 32)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d) >>> 0;
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** The offsets of step t's windows into a text of `length` bytes. */
export function stepOffsets(seed: number, t: number, batch: number, length: number, context: number): number[] {
  const span = length - context - 1;
  if (span < 1) throw new InvalidArgumentError(`the training text (${length} bytes) is shorter than a window of ${context + 1}`);
  const rand = seededRandom(stepSeed(seed, t));
  return Array.from({ length: batch }, () => Math.floor(rand() * span));
}

/**
 * The gradients of several windows as one step's: per SparseTensor each distinct row
 * once (rows summed in f32 in window order), dense parameters summed; all times `scale`.
 */
export function sumGradients(list: readonly Gradients[], scale: number): Pick<Gradients, 'sparse' | 'dense'> & { of(): null } {
  // Each tensor's distinct rows, in order of first appearance (a slot table indexed by id
  // for tables up to 2^22 rows, a Map beyond); then their sums in one f32 buffer.
  interface Rows { table: Int32Array | null; map: Map<number, number> | null; ids: number[]; d: number }
  const rows = new Map<SparseTensor, Rows>();
  const slotOf = (e: Rows, id: number): number => (e.table !== null ? e.table[id]! : (e.map!.get(id) ?? -1));
  for (const g of list) {
    for (const s of g.sparse) {
      let e = rows.get(s.tensor);
      if (e === undefined) {
        const n = s.tensor.size;
        e = n <= 2 ** 22 ? { table: new Int32Array(n).fill(-1), map: null, ids: [], d: s.tensor.dim } : { table: null, map: new Map(), ids: [], d: s.tensor.dim };
        rows.set(s.tensor, e);
      }
      const ids = s.ids as Uint32Array;
      for (let r = 0; r < ids.length; r++) {
        const id = ids[r]!;
        if (slotOf(e, id) >= 0) continue;
        if (e.table !== null) e.table[id] = e.ids.length;
        else e.map!.set(id, e.ids.length);
        e.ids.push(id);
      }
    }
  }
  const sparse: SparseGrad[] = [];
  const bufs = new Map<SparseTensor, Float32Array>();
  for (const [t, e] of rows) bufs.set(t, new Float32Array(e.ids.length * e.d));
  for (const g of list) {
    for (const s of g.sparse) {
      const e = rows.get(s.tensor)!, buf = bufs.get(s.tensor)!, d = e.d, ids = s.ids as Uint32Array, gr = s.grads;
      for (let r = 0; r < ids.length; r++) {
        const o = slotOf(e, ids[r]!) * d, src = r * d;
        for (let j = 0; j < d; j++) buf[o + j] = buf[o + j]! + gr[src + j]!;
      }
    }
  }
  for (const [t, e] of rows) {
    const buf = bufs.get(t)!;
    if (scale !== 1) for (let j = 0; j < buf.length; j++) buf[j] = buf[j]! * scale;
    sparse.push({ tensor: t, ids: Uint32Array.from(e.ids), grads: buf });
  }
  const dense = new Map<Float32Array, Float32Array>();
  for (const g of list) {
    for (const d of g.dense) {
      const cur = dense.get(d.param);
      if (cur === undefined) dense.set(d.param, Float32Array.from(d.grad));
      else for (let j = 0; j < cur.length; j++) cur[j] = cur[j]! + d.grad[j]!;
    }
  }
  const denseOut = [...dense].map(([param, grad]) => {
    if (scale !== 1) for (let j = 0; j < grad.length; j++) grad[j] = grad[j]! * scale;
    return { param, grad };
  });
  return { sparse, dense: denseOut, of: () => null };
}

/**
 * Validation bits per byte of `model` on the first `bytes` of `text`: windows of
 * context + 1 bytes, back to back; each window's context positions predict the next
 * byte from the window's start (log-softmax in f64).
 */
export async function evaluateBitsPerByte(model: Model, text: Uint8Array, context: number, bytes = text.length): Promise<number> {
  const n = Math.min(bytes, text.length);
  let bits = 0, count = 0;
  for (let at = 0; at + 1 < n; at += context) {
    const len = Math.min(context, n - 1 - at);
    const ids = Uint32Array.from(text.subarray(at, at + len));
    const logits = await model.forward(ids);
    const V = logits.length / len;
    for (let i = 0; i < len; i++) {
      const row = logits.subarray(i * V, (i + 1) * V);
      let max = -Infinity;
      for (let j = 0; j < V; j++) if (row[j]! > max) max = row[j]!;
      let sum = 0;
      for (let j = 0; j < V; j++) sum += Math.exp(row[j]! - max);
      const target = text[at + i + 1]!;
      bits += (Math.log(sum) + max - row[target]!) / Math.LN2;
      count++;
    }
  }
  return bits / Math.max(1, count);
}

function resolveTraining(o: LanguageModelTrainingOptions): LanguageModelRunConfig['training'] {
  const steps = checkInteger('steps', o.steps, 1, 2 ** 40);
  return {
    steps,
    batch: checkInteger('batch', o.batch ?? 8, 1, 4096),
    lr: checkNumber('lr', o.lr ?? 3e-3, 0, 10),
    warmupSteps: checkInteger('warmupSteps', o.warmupSteps ?? Math.min(100, Math.floor(steps / 10)), 0, steps - 1),
    minLrFraction: checkNumber('minLrFraction', o.minLrFraction ?? 0.1, 0, 1),
    clipNorm: checkNumber('clipNorm', o.clipNorm ?? 1, 0, 1e30, true),
    weightDecay: checkNumber('weightDecay', o.weightDecay ?? 0, 0, 10),
    seed: checkInteger('seed', o.seed ?? 1, 0, 2 ** 32 - 1),
  };
}

function schedule(t: LanguageModelRunConfig['training']): Schedule {
  return { kind: 'cosine', warmupSteps: t.warmupSteps, totalSteps: t.steps, floor: t.minLrFraction };
}

/** Reads a run's lm.json (a training directory trainLanguageModel started). */
export async function readLanguageModelRun(dir: string): Promise<LanguageModelRunConfig> {
  const path = join(dir, LM_CONFIG);
  if (!(await exists(path))) throw new InvalidArgumentError(`${dir} has no ${LM_CONFIG}: it is not a language-model run`);
  const c = JSON.parse(await readFile(path, 'utf8')) as LanguageModelRunConfig;
  if (c.version !== 1) throw new InvalidArgumentError(`${path}: unknown version ${String(c.version)}`);
  return c;
}

/**
 * Trains (or resumes) the language model in `dir` on `corpus` (see the module
 * comment). A new run needs `dir` not to exist; a directory with lm.json resumes where
 * its last durable step left it (the corpus must be the one it started on).
 */
export async function trainLanguageModel(dir: string, corpus: Corpus, options: LanguageModelTrainingOptions): Promise<LanguageModelTrainingResult> {
  const o = checkOptions('trainLanguageModel', options, ['model', 'steps', 'batch', 'lr', 'warmupSteps', 'minLrFraction', 'clipNorm', 'weightDecay', 'seed', 'evalEvery', 'evalBytes', 'checkpointEvery', 'logEvery', 'concurrency', 'progress', 'onRecord', 'signal']);
  let run: TrainingRun;
  let cfg: LanguageModelRunConfig;
  const history: LanguageModelRecord[] = [];
  if (await exists(join(dir, LM_CONFIG))) {
    cfg = await readLanguageModelRun(dir);
    if (cfg.corpus.source !== corpus.source || cfg.corpus.trainBytes !== corpus.train.length || cfg.corpus.validationBytes !== corpus.validation.length) {
      throw new InvalidArgumentError(`${dir} trained on ${cfg.corpus.source} (${cfg.corpus.trainBytes} training bytes); this corpus is ${corpus.source} (${corpus.train.length})`);
    }
    const steps = checkInteger('steps', o.steps, 1, 2 ** 40);
    if (steps !== cfg.training.steps) throw new InvalidArgumentError(`${dir} is a run of ${cfg.training.steps} steps (its schedule); resume it with steps ${cfg.training.steps}`);
    run = await TrainingRun.open(dir);
    // Lines of steps the run no longer holds (after its last durable step) are dropped.
    const logPath = join(dir, LM_LOG);
    if (await exists(logPath)) {
      const kept = (await readFile(logPath, 'utf8')).split('\n').filter((line) => {
        if (line.trim() === '') return false;
        try {
          const r = JSON.parse(line) as LanguageModelRecord;
          if (r.step > run.steps) return false;
          history.push(r);
          return true;
        } catch {
          return false;
        }
      });
      await writeFile(logPath, kept.map((l) => `${l}\n`).join(''));
    }
  } else {
    if (await exists(dir)) throw new InvalidArgumentError(`${dir} exists and is not a language-model run (no ${LM_CONFIG})`);
    const model = resolveLanguageModelConfig(o.model ?? {});
    const training = resolveTraining(o);
    cfg = {
      version: 1,
      model,
      training,
      corpus: { source: corpus.source, licence: corpus.licence, trainBytes: corpus.train.length, validationBytes: corpus.validation.length, documents: { ...corpus.documents } },
    };
    // Made whole beside dir, then renamed into place: a crash leaves no half-made run at dir.
    const tmp = `${dir}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    const m = languageModel(model);
    const made = await TrainingRun.create(tmp, m, { lr: training.lr, schedule: schedule(training), clipNorm: training.clipNorm, weightDecay: training.weightDecay });
    m.close();
    await made.close();
    await replaceFile(tmp, LM_CONFIG, new TextEncoder().encode(`${JSON.stringify(cfg, null, 2)}\n`));
    await rename(tmp, dir);
    await syncDir(dirname(resolve(dir)));
    run = await TrainingRun.open(dir);
  }
  const t = cfg.training, S = cfg.model.context;
  const evalEvery = checkInteger('evalEvery', o.evalEvery ?? Math.max(1, Math.floor(t.steps / 10)), 1, 2 ** 40);
  const evalBytes = checkInteger('evalBytes', o.evalBytes ?? 16384, 2, 2 ** 40);
  const checkpointEvery = checkInteger('checkpointEvery', o.checkpointEvery ?? 200, 1, 2 ** 40);
  const logEvery = checkInteger('logEvery', o.logEvery ?? 10, 1, 2 ** 40);
  const concurrency = checkInteger('concurrency', o.concurrency ?? 2, 1, 64);
  const model = run.model;
  const bar = new Progress('train-lm', t.steps, { quiet: o.progress === false });
  const priorSeconds = history.length > 0 ? history[history.length - 1]!.seconds : 0;
  const t0 = performance.now();
  const seconds = (): number => priorSeconds + (performance.now() - t0) / 1000;
  const record = async (r: LanguageModelRecord): Promise<void> => {
    history.push(r);
    await writeFile(join(dir, LM_LOG), `${JSON.stringify(r)}\n`, { flag: 'a' });
    o.onRecord?.(r);
  };
  const validate = async (): Promise<number> => {
    const valBpb = await evaluateBitsPerByte(model, corpus.validation, S, evalBytes);
    await record({ type: 'eval', step: run.steps, tokens: run.steps * t.batch * S, valBpb, seconds: seconds() });
    await replaceFile(dir, LM_PLOT, new TextEncoder().encode(lossPlot(history)));
    return valBpb;
  };
  // Training time only (validation and checkpoints excluded): what tokens/s is of.
  let tokensHere = 0, stepsHere = 0, trainMs = 0, stopped = false;
  let recent: number[] = [];
  let lastVal = NaN;
  try {
    while (run.steps < t.steps) {
      if (o.signal?.aborted) {
        stopped = true;
        break;
      }
      const step = run.steps;
      const tStep = performance.now();
      const offsets = stepOffsets(t.seed, step, t.batch, corpus.train.length, S);
      const grads: Gradients[] = new Array<Gradients>(t.batch);
      const losses = new Float64Array(t.batch);
      for (let b0 = 0; b0 < t.batch; b0 += concurrency) {
        await Promise.all(offsets.slice(b0, b0 + concurrency).map(async (off, j) => {
          const w = corpus.train.subarray(off, off + S + 1);
          const tape = new Tape();
          const logits = await tape.model(model, Uint32Array.from(w.subarray(0, S)));
          const loss = tape.softmaxCrossEntropy(logits, Uint32Array.from(w.subarray(1)));
          grads[b0 + j] = await tape.backward(loss);
          losses[b0 + j] = loss.value;
        }));
      }
      const info = await run.step(sumGradients(grads, 1 / t.batch));
      const loss = losses.reduce((a, b) => a + b, 0) / t.batch;
      recent.push(loss);
      stepsHere++;
      tokensHere += t.batch * S;
      trainMs += performance.now() - tStep;
      const tps = tokensHere / (trainMs / 1000);
      bar.update(run.steps, `loss ${(loss / Math.LN2).toFixed(3)} bpb, ${Math.round(tps)} tok/s${Number.isNaN(lastVal) ? '' : `, val ${lastVal.toFixed(3)}`}`);
      if (run.steps % logEvery === 0 || run.steps === t.steps) {
        const mean = recent.reduce((a, b) => a + b, 0) / recent.length;
        recent = [];
        await record({ type: 'step', step: run.steps, tokens: run.steps * t.batch * S, loss: mean, bpb: mean / Math.LN2, lr: info.lr, gradNorm: info.gradNorm, tokensPerSecond: tps, seconds: seconds() });
      }
      if (run.steps % evalEvery === 0 && run.steps < t.steps) lastVal = await validate();
      if (run.steps % checkpointEvery === 0) await run.checkpoint();
    }
    lastVal = await validate();
    bar.done(`${run.steps} steps, validation ${lastVal.toFixed(3)} bits per byte`);
  } finally {
    await run.close({ checkpoint: true });
  }
  const steps = history.filter((r): r is Extract<LanguageModelRecord, { type: 'step' }> => r.type === 'step');
  const last = steps.slice(-5);
  return {
    steps: run.steps,
    valBpb: lastVal,
    trainBpb: last.length === 0 ? NaN : last.reduce((a, r) => a + r.bpb, 0) / last.length,
    tokensPerSecond: stepsHere === 0 ? 0 : tokensHere / (trainMs / 1000),
    stopped,
    history,
  };
}

/** An SVG plot of training (line) and validation (dots) bits per byte against tokens seen. */
export function lossPlot(history: readonly LanguageModelRecord[]): string {
  const W = 640, H = 360, L = 56, R = 16, T = 24, B = 40;
  const train = history.filter((r) => r.type === 'step').map((r) => [r.tokens, (r as { bpb: number }).bpb] as const);
  const val = history.filter((r) => r.type === 'eval').map((r) => [r.tokens, (r as { valBpb: number }).valBpb] as const);
  const all = [...train, ...val].filter(([, y]) => Number.isFinite(y));
  const xMax = Math.max(1, ...all.map(([x]) => x));
  const yMax = Math.max(1, ...all.map(([, y]) => y)), yMin = Math.min(yMax - 0.5, ...all.map(([, y]) => y));
  const lo = Math.max(0, Math.floor(yMin * 2) / 2), hi = Math.ceil(yMax * 2) / 2;
  const px = (x: number): string => (L + ((W - L - R) * x) / xMax).toFixed(1);
  const py = (y: number): string => (T + ((H - T - B) * (hi - y)) / Math.max(1e-9, hi - lo)).toFixed(1);
  const lines: string[] = [];
  lines.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`);
  lines.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  for (let y = lo; y <= hi + 1e-9; y += 0.5) lines.push(`<line x1="${L}" x2="${W - R}" y1="${py(y)}" y2="${py(y)}" stroke="#ddd"/><text x="${L - 6}" y="${py(y)}" text-anchor="end" dy="4">${y.toFixed(1)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const x = (xMax * i) / 4;
    lines.push(`<text x="${px(x)}" y="${H - B + 16}" text-anchor="middle">${x >= 1e6 ? `${(x / 1e6).toFixed(1)}M` : x >= 1e3 ? `${(x / 1e3).toFixed(0)}k` : x.toFixed(0)}</text>`);
  }
  lines.push(`<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">training tokens</text>`);
  lines.push(`<text x="14" y="${(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 14 ${(T + H - B) / 2})">bits per byte</text>`);
  if (train.length > 0) lines.push(`<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="${train.map(([x, y]) => `${px(x)},${py(y)}`).join(' ')}"/>`);
  for (const [x, y] of val) lines.push(`<circle cx="${px(x)}" cy="${py(y)}" r="3" fill="#d62728"/>`);
  lines.push(`<text x="${W - R}" y="${T - 8}" text-anchor="end"><tspan fill="#1f77b4">training</tspan>  <tspan fill="#d62728">validation</tspan></text>`);
  lines.push('</svg>');
  return `${lines.join('\n')}\n`;
}
