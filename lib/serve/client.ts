/**
 * The verifying client of a prover service (docs/serving.md). It pins a Ghost file
 * and accepts nothing it cannot verify: every forward answer must verify against the
 * pinned Ghost file and be a proof of the very input sent; the pinned Ghost file
 * moves only through update proofs it verified itself, one generation at a time; a
 * model whose Ghost file commits a training rule (format 3) moves only through step
 * proofs it verified itself (verifyTrainStep: the whole step recomputed).
 * Uses fetch and the TypeScript verifier only (no addon).
 */
import { bytesEqual, fromHex, toHex } from '../shared/bytes.js';
import { InvalidArgumentError, ProofError, RemoteError } from '../shared/errors.js';
import { PatternCache, decodeProof, verifierLimits, type ForwardProof, type StepProof, type UpdateProof, type VerifierLimits } from '../verify/proof-format.js';
import { verifyTrainStep } from '../verify/step.js';
import type { StepTargets } from '../verify/training.js';
import { pinGhost, verifyForward, verifyUpdate, type PinnedGhost } from '../verify/proof-verify.js';
import { layerInput } from '../verify/kinds/index.js';
import { coalesce, decodeProofList, encodeForwardRequest, encodeStepRequest, encodeTrainRequest, normalizeWireGrads, type ForwardInput, type WireGrad, type WireGradU32 } from './wire.js';

/** Generations of Ghost files a client remembers (to check answers made just before a step it followed). */
const HISTORY = 64;

export interface ProverClientOptions {
  /** Bearer token for train(). */
  token?: string;
  /** Timeout of one HTTP attempt (default 30 s); a call's retries are bounded by its deadline. */
  timeoutMs?: number;
  /**
   * Default deadline of a call (connect, sync, forward, train), in milliseconds, retries
   * and backoff included (default 60 s). Past it the call fails with RemoteError
   * `DEADLINE_EXCEEDED` (status 0). Per call: `{ deadlineMs }`.
   */
  deadlineMs?: number;
  /**
   * Retries of a call on an unreachable server or a 503 (docs/serving.md, "Retries and
   * deadlines"): exponential backoff from `baseMs` (default 100) doubling up to `maxMs`
   * (default 2000) with full jitter, at least the server's Retry-After, at most
   * `attempts` tries in all (default: as many as fit in the deadline). train() is
   * retried only when the server cannot have taken the step (connection refused, 503).
   * `false`: no retries.
   */
  retry?: false | { attempts?: number; baseMs?: number; maxMs?: number };
  /** Largest response body accepted (default 256 MiB). */
  maxResponseBytes?: number;
  /** The generation of the pinned Ghost file when it is not the server's current one (to catch up from). */
  generation?: number;
  /**
   * A pattern-cache session (docs/serving.md, "Sessions"): the client keeps the rows of
   * the proofs it verified, the server a mirror, and later forward proofs send held rows
   * as ids or deltas. Forward calls are then made one at a time. Needs a server started
   * with `sessions` > 0 (otherwise proofs come whole, as without).
   */
  session?: boolean;
  /** What verifying one proof may cost (default DEFAULT_VERIFIER_LIMITS; docs/proof-format.md, "Verifier limits"): past them, ProofError BUDGET from the headers. */
  limits?: Partial<VerifierLimits>;
  /**
   * Held keys (docs/serving.md, docs/proof-format.md section 5): forward requests ask
   * the server to reveal the keys of its exact-index Hopfield layers whole
   * (`X-Ghost-Reveal-Keys: all`) and proofs are verified with `requireSelection`, so a
   * proof whose selection the client cannot re-derive (an HNSW layer, or a server that
   * ignores the request) is refused with ProofError SELECTION_UNPROVEN. With `session`
   * the keys travel whole once and then as held ids.
   */
  requireSelection?: boolean;
}

/** Options of one call. */
export interface CallOptions {
  /** This call's deadline in milliseconds, retries included (default: the client's deadlineMs). */
  deadlineMs?: number;
}

export interface ServedForward {
  /** The verified output (rows x cols). */
  output: Float32Array;
  rows: number;
  cols: number;
  /** The generation of the Ghost file the proof verified against. */
  generation: number;
  /** The proof as received (docs/proof-format.md). */
  proof: Uint8Array;
}

export interface ServedStep {
  /** The generation after the step. */
  generation: number;
  /** The Ghost file after the step (pinned). */
  ghost: PinnedGhost;
  /** The verified update proofs, one per tensor entry, in order. */
  proofs: Uint8Array[];
}

/** A training step of a model trained by step proofs, as the client verified it (trainStep). */
export interface ServedTrainStep {
  /** The generation after the step. */
  generation: number;
  /** The Ghost file after the step (pinned). */
  ghost: PinnedGhost;
  /** The verified step proof. */
  proof: Uint8Array;
  /** The step's number in the Ghost file's training rule (0-based). */
  step: number;
  /** As the verifier recomputed them: the model's output on the batch before the step, the loss, the learning rate, the gradient norm before clipping. */
  output: Float32Array;
  loss: number;
  lr: number;
  gradNorm: number;
}

/** The examples of one step: the model's input and the targets (class ids for cross-entropy, a Float32Array of rows x outputs for mse). */
export interface StepExamples {
  input: Float32Array | Uint32Array;
  targets: Uint32Array | readonly number[] | Float32Array;
}

export class ProverClient {
  readonly url: string;
  readonly #o: { token?: string; timeoutMs: number; maxResponseBytes: number; deadlineMs: number; attempts: number; baseMs: number; maxMs: number };
  readonly #limits: VerifierLimits;
  readonly #requireSelection: boolean;
  #ghost: PinnedGhost;
  #generation: number;
  /** The Ghost files of the recent generations this client verified (the current one included). */
  readonly #history = new Map<number, PinnedGhost>();
  /** The verified update proofs of those generations: #proofs.get(g) moved g to g + 1. */
  readonly #proofs = new Map<number, Uint8Array>();
  /** Serialises the moves of the pinned Ghost file (sync, train) between concurrent calls. */
  #lock: Promise<unknown> = Promise.resolve();
  /** The session: its id, the rows this client verified in it, how many proofs (seq); forward calls one at a time. */
  readonly #session: { id: string; cache: PatternCache; seq: number; lock: Promise<unknown> } | null;

  private constructor(url: string, ghost: PinnedGhost, generation: number, o: ProverClientOptions) {
    this.url = url.replace(/\/+$/, '');
    this.#ghost = ghost;
    this.#generation = generation;
    this.#history.set(generation, ghost);
    const r = o.retry === false ? { attempts: 1 } : (o.retry ?? {});
    this.#o = {
      timeoutMs: positive('timeoutMs', o.timeoutMs, 30_000),
      maxResponseBytes: o.maxResponseBytes ?? 256 * 2 ** 20,
      deadlineMs: positive('deadlineMs', o.deadlineMs, 60_000),
      attempts: r.attempts === undefined ? Infinity : positive('retry.attempts', r.attempts, 1),
      baseMs: positive('retry.baseMs', r.baseMs, 100),
      maxMs: positive('retry.maxMs', r.maxMs, 2_000),
      ...(o.token === undefined ? {} : { token: o.token }),
    };
    this.#limits = verifierLimits(o.limits);
    this.#requireSelection = o.requireSelection === true;
    this.#session = o.session === true ? { id: globalThis.crypto.randomUUID().replace(/-/g, ''), cache: new PatternCache(0), seq: 0, lock: Promise.resolve() } : null;
  }

  /**
   * Connects to a prover and pins a Ghost file: `pin` is its digest (32 bytes or 64 hex
   * characters) or its bytes / a PinnedGhost. The pinned Ghost file may be older than
   * the server's: the server names its generation (`GET /ghost?digest=`, or
   * `options.generation` when given), and the client catches up to the current
   * generation through update proofs it verifies one by one from the pinned file.
   * Throws ProofError GHOST_MISMATCH when no Ghost file the server keeps has that
   * digest (another model, or a generation older than the kept history).
   * `options.deadlineMs` bounds the whole connect, catching up included.
   */
  static async connect(url: string, pin: Uint8Array | string | PinnedGhost, options: ProverClientOptions = {}): Promise<ProverClient> {
    let ghost: PinnedGhost | null = null;
    let digest: Uint8Array;
    if (typeof pin === 'string' || (pin instanceof Uint8Array && pin.length === 32)) {
      digest = typeof pin === 'string' ? fromHex(pin) : pin;
      if (digest.length !== 32) throw new InvalidArgumentError('a Ghost digest is 32 bytes (64 hex characters)');
    } else {
      ghost = pin instanceof Uint8Array ? await pinGhost(pin) : pin;
      digest = ghost.digest;
    }
    const probe = new ProverClient(url, null as unknown as PinnedGhost, 0, options);
    const deadline = probe.#deadline(options.deadlineMs === undefined ? {} : { deadlineMs: options.deadlineMs });
    let generation: number;
    if (options.generation !== undefined) {
      const r = await probe.#request('GET', `/ghost?generation=${options.generation}`, deadline);
      const served = await pinGhost(r.body);
      if (!bytesEqual(served.digest, digest)) throw new ProofError('GHOST_MISMATCH', `the server's Ghost file of generation ${options.generation} has digest ${toHex(served.digest)}, not the pinned ${toHex(digest)}`);
      ghost ??= served;
      generation = options.generation;
    } else {
      // Which generation has this digest? The answer is a hint: the bytes must hash to the
      // pinned digest, and every step after it must verify from them (sync below).
      let r: Answer;
      try {
        r = await probe.#request('GET', `/ghost?digest=${toHex(digest)}`, deadline);
      } catch (err) {
        if (err instanceof RemoteError && err.reason === 'UNKNOWN_DIGEST') {
          throw new ProofError('GHOST_MISMATCH', `no Ghost file the server keeps has the pinned digest ${toHex(digest)} (another model, or older than its kept history)`);
        }
        throw err;
      }
      const served = await pinGhost(r.body);
      if (!bytesEqual(served.digest, digest)) throw new ProofError('GHOST_MISMATCH', `asked for the Ghost file of digest ${toHex(digest)}, the server sent ${toHex(served.digest)}`);
      if (r.generation < 0) throw new ProofError('GHOST_MISMATCH', 'the server did not name the generation of the pinned Ghost file');
      ghost ??= served;
      generation = r.generation;
    }
    const c = new ProverClient(url, ghost, generation, options);
    await c.#locked(() => c.#syncNow(undefined, deadline));
    return c;
  }

  /** The pinned (verified) Ghost file. */
  get ghost(): PinnedGhost {
    return this.#ghost;
  }
  /** Its generation. */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Catches up with the server: fetches the update proofs from the pinned generation
   * (up to `to`, default the server's current one), verifies each against the Ghost
   * file before it, and pins the result. Returns the number of steps followed.
   */
  sync(to?: number, options: CallOptions = {}): Promise<number> {
    const deadline = this.#deadline(options);
    return this.#locked(() => this.#syncNow(to, deadline));
  }

  /** The absolute time (performance.now()) a call must end by. */
  #deadline(options: CallOptions): number {
    return performance.now() + positive('deadlineMs', options.deadlineMs, this.#o.deadlineMs);
  }

  #locked<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => undefined);
    return run;
  }

  async #syncNow(to: number | undefined, deadline: number): Promise<number> {
    if (to !== undefined && to <= this.#generation) return 0;
    const r = await this.#request('GET', `/updates?from=${this.#generation}${to === undefined ? '' : `&to=${to}`}`, deadline);
    const list = decodeProofList(r.body);
    if (list.firstGeneration !== this.#generation) throw new ProofError('GHOST_MISMATCH', `the server sent updates from generation ${list.firstGeneration}; this client is at ${this.#generation}`);
    if (to !== undefined && list.proofs.length !== to - this.#generation) throw new ProofError('GHOST_MISMATCH', `the server sent ${list.proofs.length} updates; ${to - this.#generation} were asked`);
    for (const p of list.proofs) await this.#follow(p);
    return list.proofs.length;
  }

  /**
   * Verifies the next proof of the chain against the pinned Ghost file and pins its result:
   * a step proof (verifyTrainStep) when the pinned file commits a training rule, else an
   * update proof (verifyUpdate). Returns the verified step (null for an update proof).
   */
  async #follow(proof: Uint8Array): Promise<Awaited<ReturnType<typeof verifyTrainStep>> | null> {
    const stepped = this.#ghost.manifest.training !== undefined;
    const s = stepped ? await verifyTrainStep(this.#ghost, proof, { limits: this.#limits }) : null;
    const v = s ?? (await verifyUpdate(this.#ghost, proof, { limits: this.#limits }));
    this.#ghost = v.ghost;
    this.#proofs.set(this.#generation, proof);
    this.#proofs.delete(this.#generation - HISTORY);
    this.#generation++;
    this.#history.set(this.#generation, v.ghost);
    this.#history.delete(this.#generation - HISTORY);
    return s;
  }

  /**
   * Asks for the output of B inputs: a Float32Array of B x dIn values (a model with a
   * HopfieldLookup first) or ids (an Embedding first). The answer must verify against
   * the pinned Ghost file (after following any newer update proofs) and be a proof of
   * this input; otherwise ProofError (FormatError for bytes that do not decode).
   */
  forward(input: Float32Array | Uint32Array, options: { rows?: number } & CallOptions = {}): Promise<ServedForward> {
    const s = this.#session;
    if (!s) return this.#forward(input, options);
    const run = s.lock.then(() => this.#forward(input, options));
    s.lock = run.catch(() => undefined);
    return run;
  }

  async #forward(input: Float32Array | Uint32Array, options: { rows?: number } & CallOptions): Promise<ServedForward> {
    const deadline = this.#deadline(options);
    const req = this.#input(input, options.rows);
    // The answer must be at least as new as the Ghost file pinned when asking (no replays).
    const asked = this.#generation;
    const s = this.#session;
    const headers: Record<string, string> = s ? { 'X-Ghost-Session': s.id, 'X-Ghost-Session-Seq': String(s.seq) } : {};
    if (this.#requireSelection) headers['X-Ghost-Reveal-Keys'] = 'all';
    const r = await this.#request('POST', '/forward', deadline, encodeForwardRequest(req), false, undefined, Object.keys(headers).length > 0 ? headers : undefined);
    // Cheap checks first: the proof must be of this input.
    const p = decodeProof(r.body, { kind: 'forward', limits: this.#limits });
    if (p.kind !== 'forward') throw new ProofError('WRONG_KIND', 'the server answered a forward request with an update proof');
    checkSameInput(p, req);
    if (!bytesEqual(p.ghost, this.#ghost.digest) && r.generation > this.#generation) await this.#locked(() => this.#syncNow(undefined, deadline));
    let at = this.#generation;
    for (let g = this.#generation; g >= asked; g--) {
      const h = this.#history.get(g);
      if (h && bytesEqual(h.digest, p.ghost)) {
        at = g;
        break;
      }
    }
    let cache: PatternCache | undefined;
    if (s && r.session) {
      // A fresh start on the server: this side starts from an empty cache of the server's size.
      if (r.session.fresh) s.cache = new PatternCache(r.session.rows);
      cache = s.cache;
    }
    let v: Awaited<ReturnType<typeof verifyForward>>;
    try {
      v = await verifyForward(this.#history.get(at) ?? this.#ghost, r.body, { limits: this.#limits, requireSelection: this.#requireSelection, ...(cache ? { cache } : {}) });
    } catch (err) {
      // A rejected proof changes nothing here, but the server's mirror moved: start afresh next time.
      if (s) s.seq = 0;
      throw err;
    }
    if (s) s.seq = r.session ? r.session.seq : 0;
    return { output: v.output, rows: v.rows, cols: v.cols, generation: at, proof: r.body };
  }

  /**
   * One training step (needs the token): the gradients of some rows of some tensors
   * (tensor = its index in the Ghost file). Every update proof must verify against the
   * Ghost file before it and reveal exactly these gradients (coalesced as the
   * optimizer does); the pinned Ghost file then moves to the result.
   */
  async train(wireGrads: readonly WireGrad[], options: CallOptions = {}): Promise<ServedStep> {
    const grads = normalizeWireGrads(wireGrads);
    const deadline = this.#deadline(options);
    const g = this.#ghost.manifest;
    if (g.training !== undefined) throw new InvalidArgumentError('this model is trained by step proofs: send examples with trainStep()');
    for (const [i, e] of grads.entries()) {
      const t = g.tensors[e.tensor];
      if (!t) throw new InvalidArgumentError(`grads[${i}].tensor ${e.tensor} is not in the Ghost file`);
      // ids are a Uint32Array here (normalizeWireGrads checked and converted them).
      if (!(e.grads instanceof Float32Array) || e.grads.length !== e.ids.length * t.dim) {
        throw new InvalidArgumentError(`grads[${i}] must hold ids.length x ${t.dim} gradients (Float32Array)`);
      }
    }
    // Every attempt is conditional (X-Ghost-If-Generation: the generation this client is at):
    // the server takes it only at that generation, so an attempt whose fate is unknown (the
    // connection broke) can be sent again: at most one of them is taken. On 409 the client
    // follows the new steps (verified) and looks among them for its own before sending again.
    const sent = await this.#conditional('/train', encodeTrainRequest(grads), deadline, (at) => this.#findStep(at, grads));
    if ('found' in sent) return sent.found;
    const r = sent.answer;
    const list = decodeProofList(r.body);
    if (list.proofs.length !== grads.length) throw new ProofError('INPUT_MISMATCH', `${grads.length} entries were sent, ${list.proofs.length} update proofs came back`);
    return this.#locked(async () => {
      if (list.firstGeneration > this.#generation) await this.#syncNow(list.firstGeneration, deadline);
      for (const [i, bytes] of list.proofs.entries()) {
        const p = decodeProof(bytes, { kind: 'update', limits: this.#limits });
        if (p.kind !== 'update') throw new ProofError('WRONG_KIND', 'a training step answered with a forward proof');
        checkSameGrads(p, grads[i]!, g.tensors[grads[i]!.tensor]!.dim);
        const at = list.firstGeneration + i;
        if (at === this.#generation) {
          await this.#follow(bytes);
          continue;
        }
        // Already followed through /updates (a concurrent call): it must be the same step.
        const before = this.#history.get(at), after = this.#history.get(at + 1);
        if (!before || !after) throw new ProofError('GHOST_MISMATCH', `the step at generation ${at} is older than this client's recent history`);
        const v = await verifyUpdate(before, bytes, { limits: this.#limits });
        if (!bytesEqual(v.ghost.digest, after.digest)) throw new ProofError('GHOST_MISMATCH', `the server answered generation ${at} with another step than /updates did`);
      }
      return { generation: list.firstGeneration + list.proofs.length, ghost: this.#history.get(list.firstGeneration + list.proofs.length) ?? this.#ghost, proofs: list.proofs };
    });
  }

  /**
   * One training step of a model trained by step proofs (needs the token): the examples
   * (the model's input and its targets) go to POST /train-step; the answer must be one
   * step proof of exactly this batch that verifies against the pinned Ghost file
   * (verifyTrainStep recomputes the whole step); the pinned Ghost file then moves to the
   * result. Conditional and retried as train() is (X-Ghost-If-Generation). An array of
   * examples is one step on several sequences (Model.proveTrainStep with an array).
   */
  async trainStep(examples: StepExamples | readonly StepExamples[], options: CallOptions = {}): Promise<ServedTrainStep> {
    const deadline = this.#deadline(options);
    const training = this.#ghost.manifest.training;
    if (training === undefined) throw new InvalidArgumentError('this model commits no training rule: train it with train() (update proofs)');
    const many = Array.isArray(examples);
    const given: readonly StepExamples[] = many ? examples : [examples as StepExamples];
    if (given.length === 0) throw new InvalidArgumentError('examples must be { input, targets } or a non-empty array of them');
    const batch = given.map((e, i): { input: ForwardInput; targets: StepTargets } => {
      const where = many ? `examples[${i}]` : 'examples';
      if (e === null || typeof e !== 'object') throw new InvalidArgumentError(`${where} must be { input, targets }`);
      const input = this.#input(e.input, undefined);
      const t = e.targets;
      if (training.loss === 'cross-entropy') {
        if (t instanceof Float32Array) throw new InvalidArgumentError(`${where}: a cross-entropy model takes class ids as targets`);
        const ids = t instanceof Uint32Array ? t : Uint32Array.from(t as readonly number[]);
        if (!(t instanceof Uint32Array) && (t as readonly number[]).some((c) => !Number.isInteger(c) || c < 0 || c > 0xffffffff)) throw new InvalidArgumentError(`${where}: targets must be class ids (integers >= 0)`);
        return { input, targets: { kind: 'classes', ids } };
      }
      if (!(t instanceof Float32Array)) throw new InvalidArgumentError(`${where}: an mse model takes a Float32Array of targets`);
      return { input, targets: { kind: 'values', data: t } };
    });
    const sent = await this.#conditional('/train-step', encodeStepRequest(batch), deadline, async (at): Promise<ServedTrainStep | null> => {
      for (let g = at; g < this.#generation; g++) {
        const bytes = this.#proofs.get(g);
        if (bytes && isSameBatch(decodeProof(bytes, { kind: 'step', limits: this.#limits }), batch)) {
          // Taken before: verify it again from its Ghost file for the figures the answer reports.
          const v = await verifyTrainStep(this.#history.get(g)!, bytes, { limits: this.#limits });
          return { generation: g + 1, ghost: this.#history.get(g + 1) ?? v.ghost, proof: bytes, step: v.step, output: v.output, loss: v.loss, lr: v.lr, gradNorm: v.gradNorm };
        }
      }
      return null;
    });
    if ('found' in sent) return sent.found;
    const r = sent.answer;
    const list = decodeProofList(r.body);
    if (list.proofs.length !== 1) throw new ProofError('INPUT_MISMATCH', `one step was sent, ${list.proofs.length} proofs came back`);
    const bytes = list.proofs[0]!;
    const p = decodeProof(bytes, { kind: 'step', limits: this.#limits });
    if (!isSameBatch(p, batch)) throw new ProofError('INPUT_MISMATCH', 'the step proof is of another batch (input or targets) than the one sent');
    return this.#locked(async () => {
      const at = list.firstGeneration;
      if (at > this.#generation) await this.#syncNow(at, deadline);
      if (at === this.#generation) {
        const v = (await this.#follow(bytes))!;
        return { generation: at + 1, ghost: v.ghost, proof: bytes, step: v.step, output: v.output, loss: v.loss, lr: v.lr, gradNorm: v.gradNorm };
      }
      // Already followed through /updates (a concurrent call): it must be the same step.
      const before = this.#history.get(at), after = this.#history.get(at + 1);
      if (!before || !after) throw new ProofError('GHOST_MISMATCH', `the step at generation ${at} is older than this client's recent history`);
      const v = await verifyTrainStep(before, bytes, { limits: this.#limits });
      if (!bytesEqual(v.ghost.digest, after.digest)) throw new ProofError('GHOST_MISMATCH', `the server answered generation ${at} with another step than /updates did`);
      return { generation: at + 1, ghost: after, proof: bytes, step: v.step, output: v.output, loss: v.loss, lr: v.lr, gradNorm: v.gradNorm };
    });
  }

  /** This client's step among the verified ones from generation `from`: E consecutive update proofs revealing exactly these gradients. */
  #findStep(from: number, grads: readonly WireGradU32[]): ServedStep | null {
    const tensors = this.#ghost.manifest.tensors;
    for (let g = from; g + grads.length <= this.#generation; g++) {
      const proofs: Uint8Array[] = [];
      for (const [i, e] of grads.entries()) {
        const bytes = this.#proofs.get(g + i);
        if (!bytes) break;
        const p = decodeProof(bytes, { kind: 'update', limits: this.#limits });
        try {
          if (p.kind !== 'update') break;
          checkSameGrads(p, e, tensors[e.tensor]!.dim);
        } catch {
          break;
        }
        proofs.push(bytes);
      }
      if (proofs.length === grads.length) return { generation: g + grads.length, ghost: this.#history.get(g + grads.length)!, proofs };
    }
    return null;
  }

  #input(input: Float32Array | Uint32Array, rows: number | undefined): ForwardInput {
    const first = layerInput(this.#ghost.manifest, 0);
    if (input instanceof Uint32Array) {
      if (first.kind !== 'ids') throw new InvalidArgumentError('this model takes f32 rows, not ids');
      return { kind: 'ids', ids: input };
    }
    if (!(input instanceof Float32Array)) throw new InvalidArgumentError('input must be a Float32Array or a Uint32Array');
    if (first.kind !== 'f32') throw new InvalidArgumentError('this model takes ids (an Embedding first)');
    const cols = first.cols;
    if (input.length === 0 || input.length % cols !== 0) throw new InvalidArgumentError(`input length ${input.length} must be a positive multiple of ${cols}`);
    const B = input.length / cols;
    if (rows !== undefined && rows !== B) throw new InvalidArgumentError(`rows = ${rows} but the input holds ${B}`);
    return { kind: 'f32', rows: B, cols, data: input };
  }

  /**
   * One call's request with its retries: on a 503 (the server refused before doing any
   * work) or an unreachable server, waits (exponential backoff with full jitter, at least
   * Retry-After) and tries again while the deadline allows. POST /train is retried only
   * when the server cannot have taken it: a 503, or a connection refused.
   */
  /**
   * Sends a training request conditional on this client's generation (X-Ghost-If-Generation):
   * the server takes it only there, so an attempt whose fate is unknown (the connection
   * broke) can be sent again and at most one is taken. On 409 the client follows the new
   * steps (verified) and asks `find` whether its own is among them from generation `at`.
   */
  async #conditional<T>(path: string, body: Uint8Array, deadline: number, find: (at: number) => T | null | Promise<T | null>): Promise<{ answer: Answer } | { found: T }> {
    for (;;) {
      const at = this.#generation;
      try {
        return { answer: await this.#request('POST', path, deadline, body, true, at) };
      } catch (err) {
        if (!(err instanceof RemoteError) || err.reason !== 'GENERATION_CONFLICT') throw err;
      }
      const found = await this.#locked(async () => {
        await this.#syncNow(undefined, deadline);
        if (this.#generation - at > HISTORY) {
          // The steps since are no longer all remembered: whether this one is among them is unknown.
          throw new RemoteError(409, 'GENERATION_CONFLICT', `the model moved ${this.#generation - at} steps while this step was sent; this client remembers ${HISTORY}: whether it was taken is unknown (check the chain before sending it again)`);
        }
        return find(at);
      });
      if (found) return { found };
    }
  }

  async #request(method: 'GET' | 'POST', path: string, deadline: number, body?: Uint8Array, auth = false, ifGeneration?: number, extra?: Record<string, string>): Promise<Answer> {
    // A conditional training step is taken at most once whatever the attempts (the server checks the generation).
    const idempotent = !(method === 'POST' && (path === '/train' || path === '/train-step')) || ifGeneration !== undefined;
    for (let attempt = 1; ; attempt++) {
      const left = deadline - performance.now();
      if (left <= 0) throw new RemoteError(0, 'DEADLINE_EXCEEDED', `${method} ${path}: the call's deadline passed before attempt ${attempt}`);
      let err: RemoteError;
      try {
        return await this.#attempt(method, path, Math.min(this.#o.timeoutMs, left), body, auth, ifGeneration, extra);
      } catch (e) {
        if (!(e instanceof RemoteError)) throw e;
        err = e;
      }
      const retryable = err.status === 503 || (err.status === 0 && (idempotent || neverSent(err)));
      const now = performance.now();
      if (err.status === 0 && err.reason === 'TIMEOUT' && now >= deadline - 1) {
        throw new RemoteError(0, 'DEADLINE_EXCEEDED', `${method} ${path}: no answer within the call's deadline (attempt ${attempt})`, { cause: err });
      }
      if (!retryable || attempt >= this.#o.attempts) throw err;
      const backoff = Math.random() * Math.min(this.#o.maxMs, this.#o.baseMs * 2 ** (attempt - 1));
      const after = err.retryAfterMs ?? 0;
      if (now + after >= deadline) {
        throw new RemoteError(0, 'DEADLINE_EXCEEDED', `${method} ${path}: ${err.message}; ${after > 0 ? `Retry-After ${after} ms` : 'a retry'} would pass the call's deadline (attempt ${attempt})`, { cause: err });
      }
      // Wait at least Retry-After, never past the deadline (one last attempt at it).
      const wait = Math.min(Math.max(after, backoff), deadline - now - 1);
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  async #attempt(method: 'GET' | 'POST', path: string, timeoutMs: number, body: Uint8Array | undefined, auth: boolean, ifGeneration: number | undefined, extra: Record<string, string> | undefined): Promise<Answer> {
    const headers: Record<string, string> = { ...extra };
    if (ifGeneration !== undefined) headers['X-Ghost-If-Generation'] = String(ifGeneration);
    if (body) headers['Content-Type'] = 'application/octet-stream';
    if (auth) {
      if (this.#o.token === undefined) throw new InvalidArgumentError('train() needs a token (options.token)');
      headers.Authorization = `Bearer ${this.#o.token}`;
    }
    let res: Response;
    const signal = AbortSignal.timeout(Math.max(1, Math.ceil(timeoutMs)));
    try {
      res = await fetch(`${this.url}${path}`, { method, headers, ...(body ? { body: body as Uint8Array<ArrayBuffer> } : {}), signal });
    } catch (err) {
      const timedOut = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
      throw new RemoteError(0, timedOut ? 'TIMEOUT' : 'UNREACHABLE', `${method} ${path}: ${timedOut ? `no answer within ${Math.round(timeoutMs)} ms` : (err as Error).message}${causeCode(err) ? ` (${causeCode(err)})` : ''}`, { cause: err });
    }
    const declared = Number(res.headers.get('content-length') ?? NaN);
    if (declared > this.#o.maxResponseBytes) {
      await res.body?.cancel();
      throw new RemoteError(res.status, 'RESPONSE_TOO_LARGE', `${declared} bytes; the limit is ${this.#o.maxResponseBytes}`);
    }
    const bytes = await readLimited(res, this.#o.maxResponseBytes);
    if (!res.ok) {
      let reason = 'HTTP_ERROR', message = new TextDecoder().decode(bytes.subarray(0, 500));
      try {
        const j = JSON.parse(message) as { error?: unknown; message?: unknown };
        if (typeof j.error === 'string') reason = j.error;
        if (typeof j.message === 'string') message = j.message;
      } catch {
        // not JSON: keep the text
      }
      const e = new RemoteError(res.status, reason, `${method} ${path} -> ${res.status}: ${message}`);
      const ra = retryAfterMs(res.headers.get('retry-after'));
      if (ra !== undefined) e.retryAfterMs = ra;
      throw e;
    }
    const gen = Number(res.headers.get('x-ghost-generation') ?? NaN);
    const seq = Number(res.headers.get('x-ghost-session-seq') ?? NaN), rows = Number(res.headers.get('x-ghost-session-rows') ?? NaN);
    const session = Number.isSafeInteger(seq) && seq > 0 && Number.isInteger(rows) && rows >= 1 && rows <= 2 ** 24 ? { seq, rows, fresh: res.headers.get('x-ghost-session-base') !== 'held' } : undefined;
    return { status: res.status, body: bytes, generation: Number.isSafeInteger(gen) && gen >= 0 ? gen : -1, ...(session ? { session } : {}) };
  }
}

function positive(name: string, v: number | undefined, def: number): number {
  const x = v ?? def;
  if (typeof x !== 'number' || !(x > 0)) throw new InvalidArgumentError(`${name} must be a positive number, got ${String(v)}`);
  return x;
}

/** Retry-After in milliseconds: delay-seconds or an HTTP-date (docs: RFC 9110 10.2.3); at most an hour. */
function retryAfterMs(h: string | null): number | undefined {
  if (h === null) return undefined;
  const t = h.trim();
  let ms: number;
  if (/^\d{1,10}$/.test(t)) ms = Number(t) * 1000;
  else {
    const at = Date.parse(t);
    if (Number.isNaN(at)) return undefined;
    ms = Math.max(0, at - Date.now());
  }
  return Math.min(ms, 3_600_000);
}

/** The error code of a fetch failure's cause (ECONNREFUSED, ...), if any. */
function causeCode(err: unknown): string | undefined {
  for (let e: unknown = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return code;
    const inner = (e as { errors?: unknown }).errors;
    if (Array.isArray(inner)) for (const x of inner) {
      const c = (x as { code?: unknown } | null)?.code;
      if (typeof c === 'string') return c;
    }
  }
  return undefined;
}

/** Whether the request cannot have reached the server (so even a training step may be sent again). */
function neverSent(err: RemoteError): boolean {
  const c = causeCode(err.cause);
  return c === 'ECONNREFUSED' || c === 'ENOTFOUND' || c === 'EAI_AGAIN' || c === 'EADDRNOTAVAIL';
}

/** An answer: status, body, the generation header (-1 if absent), the session headers of a forward answer in a session. */
interface Answer {
  status: number;
  body: Uint8Array;
  generation: number;
  session?: { seq: number; rows: number; fresh: boolean };
}

async function readLimited(res: Response, limit: number): Promise<Uint8Array> {
  if (!res.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body.getReader();
  for (;;) {
    let r: ReadableStreamReadResult<Uint8Array>;
    try {
      r = await reader.read();
    } catch (err) {
      throw new RemoteError(res.status, 'UNREACHABLE', `the response broke off: ${(err as Error).message}`, { cause: err });
    }
    if (r.done) break;
    size += r.value.length;
    if (size > limit) {
      await reader.cancel();
      throw new RemoteError(res.status, 'RESPONSE_TOO_LARGE', `more than ${limit} bytes`);
    }
    chunks.push(r.value);
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function u8(a: Float32Array | Uint32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function checkSameInput(p: ForwardProof, req: ForwardInput): void {
  if (p.firstLayer !== 0) throw new ProofError('INPUT_MISMATCH', `the proof starts at layer ${p.firstLayer}, not at the model's input`);
  const same =
    p.input.kind === 'f32' && req.kind === 'f32'
      ? p.input.rows === req.rows && p.input.cols === req.cols && bytesEqual(u8(p.input.data), u8(req.data))
      : p.input.kind === 'ids' && req.kind === 'ids' && bytesEqual(u8(p.input.ids), u8(req.ids));
  if (!same) throw new ProofError('INPUT_MISMATCH', 'the proof is of another input than the one sent');
}

/** Whether a step proof is of exactly this batch: the same input record and the same targets, bit for bit. */
function isSameBatch(p: ReturnType<typeof decodeProof>, batch: readonly { input: ForwardInput; targets: StepTargets }[]): boolean {
  if (p.kind !== 'step') return false;
  const seqs = [p, ...(p.more ?? [])];
  return seqs.length === batch.length && seqs.every((q, i) => sameSequence(q, batch[i]!.input, batch[i]!.targets));
}

function sameSequence(q: Pick<StepProof, 'input' | 'targets'>, input: ForwardInput, targets: StepTargets): boolean {
  const sameInput =
    q.input.kind === 'f32' && input.kind === 'f32'
      ? q.input.rows === input.rows && q.input.cols === input.cols && bytesEqual(u8(q.input.data), u8(input.data))
      : q.input.kind === 'ids' && input.kind === 'ids' && bytesEqual(u8(q.input.ids), u8(input.ids));
  const sameTargets =
    q.targets.kind === 'classes' && targets.kind === 'classes'
      ? bytesEqual(u8(q.targets.ids), u8(targets.ids))
      : q.targets.kind === 'values' && targets.kind === 'values' && bytesEqual(u8(q.targets.data), u8(targets.data));
  return sameInput && sameTargets;
}

function checkSameGrads(p: UpdateProof, g: WireGradU32, dim: number): void {
  const want = coalesce(g.ids, g.grads, dim);
  if (p.tensor !== g.tensor || !bytesEqual(u8(p.block.ids), u8(want.ids)) || !bytesEqual(u8(p.grads), u8(want.grads))) {
    throw new ProofError('INPUT_MISMATCH', `the update proof of tensor ${p.tensor} does not apply the gradients sent for tensor ${g.tensor}`);
  }
}

