/**
 * A prover service over HTTP (node:http): serves one Model, answers forward requests
 * with outputs and forward proofs, and, for callers with the bearer token, training
 * steps with update proofs. docs/serving.md has the routes, the bodies and the
 * guarantees; ProverClient (./client.ts) is the verifying client.
 *
 * Versioning: the Ghost file has a generation, the number of update proofs since the
 * model directory was first served. Every update proof moves it by one; the server
 * keeps the recent proofs (and the Ghost files between them) so a client pinned to
 * an older generation follows the roots only through verified update proofs.
 *
 * Training requests are all or nothing: each entry's update proof is verified by the
 * server itself (the addon-free verifier, against the served Ghost file) before it is
 * kept, and any failure undoes every entry taken. Durable before visible: a step is
 * published (generation, Ghost file, /updates) and acknowledged only after the model
 * directory has made it durable (ModelDirectory.appendStep, lib/model/model-dir.ts: the
 * update log fsynced, every touched tensor file checkpointed, ghost.bin replaced). The
 * directory's files, their recovery at open and the undo of a step that could not be
 * saved belong to ModelDirectory; this file is HTTP, scheduling and the step's flow. Request
 * bodies held at once are bounded by maxInflightBytes across all connections. close()
 * (and the CLI's SIGTERM handler) stops accepting, finishes every accepted request,
 * then closes the tensor files (checkpoint, compact, clean mark).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { FormatError, GhostTensorError, InvalidArgumentError, NonFiniteError, OutOfRangeError } from '../shared/errors.js';
import { Model } from '../model/model.js';
import { ModelDirectory } from '../model/model-dir.js';
import type { SparseTensor } from '../tensor/sparse-tensor.js';
import { SparseAdam, SparseSGD, type AdamOptions, type RowsSnapshot, type SgdOptions } from '../model/optim.js';
import { PatternCache } from '../verify/proof-format.js';
import { SearchBatcher } from '../model/search-batcher.js';
import { stepBatchOf } from '../model/train/step-training.js';
import { layerInput } from '../verify/kinds/index.js';
import { pinGhost, verifyUpdate, type PinnedGhost } from '../verify/proof-verify.js';
import { bytesEqual, fromHex, toHex } from '../shared/bytes.js';
import { Counter, Gauge, Histogram, InfoGauge, LATENCY_BUCKETS, METRICS_CONTENT_TYPE, Registry } from './metrics.js';
import { BufferPool } from '../shared/buffer-pool.js';
import { batchOf, encodeOutput, decodeForwardRequest, decodeStepRequests, decodeTrainRequest, proofListParts, type StepRequest } from './wire.js';
import { verifyTrainStep } from '../verify/step.js';
import { specOf } from '../verify/kinds/index.js';
import type { ProvedStep } from '../model/model.js';

/** One request as logged (`log` option, onLog). */
export interface RequestLogEntry {
  method: string;
  /** The path without the query (at most 256 characters). */
  path: string;
  /** The route it matched ('/forward', ...; 'other' for none). */
  route: string;
  status: number;
  /** The reason token of a refusal (docs/serving.md, "Status codes and reasons"). */
  reason?: string;
  /** Milliseconds from the request's arrival to its answer. */
  ms: number;
  /** Milliseconds spent proving or training (forward, train). */
  proveMs?: number;
  /** Request body bytes read. */
  bytesIn: number;
  /** Response body bytes sent. */
  bytesOut: number;
  /** The served generation when answered. */
  generation: number;
}

/** Where and how the server logs: 'json' (one JSON object per line) or 'text', on stderr unless `write` is given. */
export type ServerLogOption = 'json' | 'text' | { format: 'json' | 'text'; write?: (line: string) => void };

/** The routes metrics and logs name (anything else is 'other', so label values stay bounded). */
/**
 * How long a refused request's connection is drained after its answer (lingerClose),
 * and the body bytes it may take past the largest body.
 */
const LINGER_MS = 5_000;
const LINGER_SLACK = 64 * 1024;

/**
 * Closes the connection of a request answered before its body was read, without
 * letting the close overtake the answer. Destroying a socket whose peer is still
 * sending makes the kernel answer with a reset, and a reset that reaches the client
 * before it has read the answer discards it: the client sees ECONNRESET instead of
 * 503 + Retry-After. node:http itself destroys a `Connection: close` socket as soon as
 * the answer is written (`destroySoon`). So instead: half-close once the answer is
 * written (FIN after it), let node discard what still comes (it dumps an unconsumed
 * request), and destroy when the client closes, after LINGER_MS, or once `maxBytes` more
 * have come (a body the server would have read whole, and some), whichever is first.
 * Draining holds no memory: the bytes are parsed and dropped. A server that is shutting down destroys at once, as before.
 */
function lingerClose(req: IncomingMessage, res: ServerResponse, shuttingDown: boolean, maxBytes: number): void {
  const sock = req.socket as Socket | null;
  if (!sock || sock.destroyed) return;
  if (shuttingDown) {
    res.once('finish', () => sock.destroy());
    return;
  }
  // An own property shadows net.Socket's: end the writable side, keep reading.
  sock.destroySoon = function (this: Socket) {
    this.end();
  };
  // Discard the rest of the body (a refusal midway stopped reading it), counting it.
  let seen = 0;
  req.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > maxBytes) sock.destroy();
  });
  req.resume();
  const timer = setTimeout(() => sock.destroy(), LINGER_MS);
  timer.unref();
  sock.once('close', () => clearTimeout(timer));
}

const ROUTES = new Set(['/ghost', '/updates', '/forward', '/train', '/train-step', '/health', '/metrics']);

function packageVersion(): string {
  // lib/serve/server.ts and dist/serve/server.js both sit two levels under the package root.
  try {
    const v = (JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'package.json'), 'utf8')) as { version?: unknown }).version;
    return typeof v === 'string' ? v : 'unknown';
  } catch {
    return 'unknown';
  }
}

export interface ProverServerOptions {
  /** Interface to listen on. Default '127.0.0.1' (loopback only). */
  host?: string;
  /** Port; 0 (default) picks a free one. */
  port?: number;
  /** Bearer token that authorises POST /train. Without one, training is disabled (403). */
  trainToken?: string;
  /** The optimizer of training steps. Default { kind: 'adam', lr: 1e-3 }. */
  optimizer?: ({ kind: 'adam' } & Omit<AdamOptions, 'replaceState'>) | ({ kind: 'sgd' } & Omit<SgdOptions, 'replaceState'>);
  /** Largest request body accepted (413 beyond). Default 16 MiB. */
  maxBodyBytes?: number;
  /**
   * Request body bytes held at once across all connections (read, queued or being
   * proved). A request whose Content-Length (or, chunked, whose next chunk) would pass
   * it is refused with 503 BUSY and Retry-After before its body is read. Default
   * 64 MiB, and at least maxBodyBytes (a smaller value is refused).
   */
  maxInflightBytes?: number;
  /** Most inputs in one forward request (413 beyond). Default 256. */
  maxBatch?: number;
  /** Requests proved or trained at once. Default 2. */
  maxConcurrent?: number;
  /** Accepted requests waiting for a slot; beyond, 503 with Retry-After. Default 64. */
  maxQueue?: number;
  /** A request waiting longer than this for a slot gets 503. Default 30 s. */
  queueTimeoutMs?: number;
  /** Time to receive a whole request (headers and body); Node answers 408 beyond. Default 30 s. */
  requestTimeoutMs?: number;
  /** Update proofs (and Ghost files) kept for clients that catch up. Default 4096. */
  keepUpdates?: number;
  /** Worker threads for the product-key selection of proofs. */
  threads?: number;
  /**
   * Pattern-cache sessions (docs/serving.md, "Sessions"): at most `sessions` clients
   * (least recently used evicted) each get a mirror of their PatternCache of at most
   * `sessionRows` rows, so their forward proofs send held rows as ids or deltas. Memory:
   * up to sessions x sessionRows x (dim x 4 bytes) of rows. Default 0: off.
   */
  sessions?: number;
  /** Rows each session's cache holds (default 4096). */
  sessionRows?: number;
  /**
   * Forward proofs running at once share one exact scan of the key tensor (a
   * SearchBatcher: the searches that arrive while a scan runs go in the next one; the
   * answers are the same bytes). Default true; false scans once per proof.
   */
  batchSearch?: boolean;
  /**
   * false: POST /forward answers the output only (`application/vnd.ghost-tensor.output`:
   * u32 rows, u32 cols, rows x cols f32), from the fast f32 forward pass, with no proof:
   * the same service without proofs, to measure what proofs cost (bench/serve.mjs).
   * Clients cannot verify such answers (ProverClient refuses them). Default true.
   */
  proofs?: boolean;
  /** Called with each request's outcome (for logs). */
  onLog?: (entry: RequestLogEntry) => void;
  /**
   * Request logs: 'json' writes one JSON object per line (docs/serving.md, "Logs"),
   * 'text' one human line, on stderr; `{ format, write }` hands each line to `write`.
   * Default: no logs.
   */
  log?: ServerLogOption;
}

export interface ServerStats {
  generation: number;
  digest: string;
  running: number;
  queued: number;
  /** Request body bytes held now (reserved by Content-Length, or received so far). */
  bodyBytes: number;
  served: { forward: number; train: number; rejected: number };
  /** Exact scans made for forward proofs and the queries they searched (batchSearch; null when off): queries / scans is the batching factor. */
  search: { scans: number; queries: number } | null;
}

/** An HTTP failure: status, a reason token, a message. */
class HttpError extends Error {
  readonly status: number;
  readonly reason: string;
  readonly headers: Record<string, string>;
  constructor(status: number, reason: string, message: string, headers: Record<string, string> = {}) {
    super(message);
    this.status = status;
    this.reason = reason;
    this.headers = headers;
  }
}

const PROOF_TYPE = 'application/vnd.ghost-tensor.proof';
const GHOST_TYPE = 'application/vnd.ghost-tensor.ghost';
const LIST_TYPE = 'application/vnd.ghost-tensor.proof-list';
const OUTPUT_TYPE = 'application/vnd.ghost-tensor.output';


/**
 * Runs jobs with at most `max` at once; a writer runs alone. First come, first served:
 * a waiting writer holds back the readers behind it. Bounded queue and wait.
 */
class Scheduler {
  #running = 0;
  #writer = false;
  readonly #queue: { write: boolean; start: () => void }[] = [];
  readonly #idle: (() => void)[] = [];
  constructor(
    readonly max: number,
    readonly maxQueue: number,
    readonly waitMs: number,
  ) {}
  get running(): number {
    return this.#running;
  }
  get queued(): number {
    return this.#queue.length;
  }
  #canStart(write: boolean): boolean {
    return write ? this.#running === 0 : !this.#writer && this.#running < this.max;
  }
  async run<T>(write: boolean, fn: () => Promise<T>): Promise<T> {
    if (this.#queue.length > 0 || !this.#canStart(write)) {
      if (this.#queue.length >= this.maxQueue) throw new HttpError(503, 'BUSY', `${this.#running} requests running and ${this.#queue.length} waiting`, { 'Retry-After': '1' });
      await new Promise<void>((resolve, reject) => {
        const entry = {
          write,
          start: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        const timer = setTimeout(() => {
          const i = this.#queue.indexOf(entry);
          if (i >= 0) this.#queue.splice(i, 1);
          reject(new HttpError(503, 'BUSY', `waited ${this.waitMs} ms for a slot`, { 'Retry-After': '1' }));
          this.#pump();
        }, this.waitMs);
        this.#queue.push(entry);
      });
    } else {
      this.#enter(write);
    }
    try {
      return await fn();
    } finally {
      this.#running--;
      if (write) this.#writer = false;
      this.#pump();
    }
  }
  #enter(write: boolean): void {
    this.#running++;
    if (write) this.#writer = true;
  }
  #pump(): void {
    while (this.#queue.length > 0 && this.#canStart(this.#queue[0]!.write)) {
      const e = this.#queue.shift()!;
      this.#enter(e.write);
      e.start();
    }
    if (this.#running === 0 && this.#queue.length === 0) for (const f of this.#idle.splice(0)) f();
  }
  /** Resolves once nothing runs or waits. */
  idle(): Promise<void> {
    if (this.#running === 0 && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }
}

/** The hex digest of a served Ghost file, made once per file (every answer's X-Ghost-Digest). */
const digestHexes = new WeakMap<PinnedGhost, string>();
function digestHex(ghost: PinnedGhost): string {
  let hex = digestHexes.get(ghost);
  if (hex === undefined) digestHexes.set(ghost, (hex = toHex(ghost.digest)));
  return hex;
}

/** sha256 of both, then a constant-time comparison (lengths do not leak either). */
function tokenMatches(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}


export class ProverServer {
  readonly model: Model;
  /** The model directory (null: an in-memory model, nothing persisted). */
  readonly dir: string | null;
  /** Its files: the update log, ghost.bin and the tensor checkpoints of each step (null: in memory). */
  readonly #store: ModelDirectory | null;
  readonly #o: Required<Omit<ProverServerOptions, 'trainToken' | 'threads' | 'onLog' | 'optimizer' | 'log'>> & Pick<ProverServerOptions, 'trainToken' | 'threads' | 'onLog'>;
  readonly #log: { format: 'json' | 'text'; write: (line: string) => void } | null;
  readonly #startedAt = performance.now();
  readonly #version = packageVersion();
  readonly #metrics = new Registry();
  readonly #mRequests: Counter;
  readonly #mBytesIn: Counter;
  readonly #mBytesOut: Counter;
  readonly #mRequestSeconds: Histogram;
  readonly #mProveSeconds: Histogram;
  readonly #optimizer: SparseAdam | SparseSGD | null;
  readonly #ownsModel: boolean;
  readonly #sched: Scheduler;
  /** Joins the exact searches of forward proofs running at once (null: batchSearch false). */
  readonly #batcher: SearchBatcher | null;
  /** Output buffers of forward proofs, reused once an answer is handed to the OS (lib/shared/buffer-pool.ts). */
  readonly #outputs = new BufferPool();
  #server: Server | null = null;
  #ghost: PinnedGhost;
  /** Generation of #ghost. */
  #generation: number;
  /** Kept update proofs: #updates[i] moves generation #firstKept + i to + 1; #ghosts[i] is the Ghost file at #firstKept + i. */
  #updates: Uint8Array[] = [];
  #ghosts: (PinnedGhost | null)[] = [];
  #firstKept: number;
  #closing: Promise<void> | null = null;
  /** Request body bytes reserved by the requests in flight (at most maxInflightBytes). */
  #bodyBytes = 0;
  /** Set when a failed step could not be undone: no more training or proving. */
  #broken: string | null = null;
  #inflight = 0;
  readonly #drained: (() => void)[] = [];
  readonly #served = { forward: 0, train: 0, rejected: 0 };
  /** Pattern-cache sessions by id, least recently used first. `seq`: proofs made in the session (-1: none yet). */
  readonly #sessions = new Map<string, { cache: PatternCache; seq: number; busy: boolean }>();

  private constructor(model: Model, ghost: PinnedGhost, store: ModelDirectory | null, generation: number, options: ProverServerOptions, ownsModel: boolean) {
    const bool = (name: string, v: boolean | undefined, def: boolean): boolean => {
      if (v !== undefined && typeof v !== 'boolean') throw new InvalidArgumentError(`${name} must be a boolean`);
      return v ?? def;
    };
    const int = (name: string, v: number | undefined, def: number, lo: number, hi: number): number => {
      const x = v ?? def;
      if (!Number.isInteger(x) || x < lo || x > hi) throw new OutOfRangeError(`${name} must be an integer in ${lo}..${hi}, got ${String(v)}`);
      return x;
    };
    this.#o = {
      host: options.host ?? '127.0.0.1',
      port: int('port', options.port, 0, 0, 65535),
      maxBodyBytes: int('maxBodyBytes', options.maxBodyBytes, 16 * 2 ** 20, 1, 2 ** 30),
      maxInflightBytes: int('maxInflightBytes', options.maxInflightBytes, Math.max(64 * 2 ** 20, options.maxBodyBytes ?? 0), 1, 2 ** 40),
      maxBatch: int('maxBatch', options.maxBatch, 256, 1, 2 ** 20),
      maxConcurrent: int('maxConcurrent', options.maxConcurrent, 2, 1, 1024),
      maxQueue: int('maxQueue', options.maxQueue, 64, 0, 2 ** 20),
      queueTimeoutMs: int('queueTimeoutMs', options.queueTimeoutMs, 30_000, 1, 2 ** 31 - 1),
      requestTimeoutMs: int('requestTimeoutMs', options.requestTimeoutMs, 30_000, 1, 2 ** 31 - 1),
      keepUpdates: int('keepUpdates', options.keepUpdates, 4096, 0, 2 ** 24),
      sessions: int('sessions', options.sessions, 0, 0, 2 ** 16),
      sessionRows: int('sessionRows', options.sessionRows, 4096, 1, 2 ** 24),
      batchSearch: bool('batchSearch', options.batchSearch, true),
      proofs: bool('proofs', options.proofs, true),
      ...(options.trainToken === undefined ? {} : { trainToken: options.trainToken }),
      ...(options.threads === undefined ? {} : { threads: options.threads }),
      ...(options.onLog === undefined ? {} : { onLog: options.onLog }),
    };
    const log = options.log;
    if (log === undefined) this.#log = null;
    else if (log === 'json' || log === 'text') this.#log = { format: log, write: (line) => process.stderr.write(`${line}\n`) };
    else if (typeof log === 'object' && log !== null && (log.format === 'json' || log.format === 'text') && (log.write === undefined || typeof log.write === 'function')) {
      const write = log.write;
      this.#log = { format: log.format, write: write ?? ((line) => process.stderr.write(`${line}\n`)) };
    } else throw new InvalidArgumentError("log must be 'json', 'text' or { format: 'json' | 'text', write?: (line) => void }");
    const m = this.#metrics;
    this.#mRequests = m.add(new Counter('ghost_tensor_requests_total', 'HTTP requests answered, by route, method and status.', ['route', 'method', 'status']));
    this.#mRequestSeconds = m.add(new Histogram('ghost_tensor_request_duration_seconds', 'Time from a request\'s arrival to its answer (body read, queue wait, proving, sending), by route.', ['route'], LATENCY_BUCKETS));
    this.#mProveSeconds = m.add(new Histogram('ghost_tensor_prove_duration_seconds', 'Time spent building proofs: a forward proof (kind="forward") or a whole training request with its update proofs, self-check and fsyncs (kind="train").', ['kind'], LATENCY_BUCKETS));
    this.#mBytesIn = m.add(new Counter('ghost_tensor_request_bytes_total', 'Request body bytes read, by route.', ['route']));
    this.#mBytesOut = m.add(new Counter('ghost_tensor_response_bytes_total', 'Response body bytes sent, by route.', ['route']));
    m.add(new Gauge('ghost_tensor_queue_depth', 'Accepted requests waiting for a proving slot.', () => this.#sched.queued));
    m.add(new Gauge('ghost_tensor_running', 'Requests being proved or trained now.', () => this.#sched.running));
    m.add(new Gauge('ghost_tensor_inflight_body_bytes', 'Request body bytes held now (bounded by maxInflightBytes).', () => this.#bodyBytes));
    m.add(new Gauge('ghost_tensor_max_inflight_body_bytes', 'The bound on request body bytes held at once (maxInflightBytes).', () => this.#o.maxInflightBytes));
    m.add(new Gauge('ghost_tensor_generation', 'Generation of the served Ghost file (update proofs since the directory was first served).', () => this.#generation));
    m.add(new Gauge('ghost_tensor_uptime_seconds', 'Seconds since the server object was created.', () => (performance.now() - this.#startedAt) / 1000));
    m.add(new InfoGauge('ghost_tensor_build_info', 'The ghost-tensor version serving (value 1).', { version: this.#version }));
    if (this.#o.maxInflightBytes < this.#o.maxBodyBytes) {
      throw new OutOfRangeError(`maxInflightBytes (${this.#o.maxInflightBytes}) must be at least maxBodyBytes (${this.#o.maxBodyBytes})`);
    }
    if (options.trainToken !== undefined && (typeof options.trainToken !== 'string' || options.trainToken.length < 8)) {
      throw new InvalidArgumentError('trainToken must be a string of at least 8 characters');
    }
    this.model = model;
    this.dir = store ? store.path : null;
    this.#store = store;
    this.#ghost = ghost;
    this.#generation = generation;
    this.#firstKept = generation;
    this.#ownsModel = ownsModel;
    this.#sched = new Scheduler(this.#o.maxConcurrent, this.#o.maxQueue, this.#o.queueTimeoutMs);
    this.#batcher = this.#o.batchSearch ? new SearchBatcher() : null;
    // A model trained by step proofs follows its own committed rule (POST /train-step); no update-proof optimizer.
    if (options.trainToken === undefined || ghost.manifest.training !== undefined) this.#optimizer = null;
    else {
      const opt = options.optimizer ?? { kind: 'adam' as const, lr: 1e-3 };
      const { kind, ...rest } = opt;
      this.#optimizer = kind === 'sgd' ? new SparseSGD([...model.tensors], rest as SgdOptions) : new SparseAdam([...model.tensors], rest as AdamOptions);
    }
  }

  /**
   * Serves an in-memory model (nothing is persisted; generation starts at 0). The
   * caller keeps ownership: close() does not close it. With a trainToken the server
   * attaches its optimizer to every tensor of the model.
   */
  static async fromModel(model: Model, options: ProverServerOptions = {}): Promise<ProverServer> {
    if (!(model instanceof Model)) throw new InvalidArgumentError('model must be a Model');
    return new ProverServer(model, await model.ghost(), null, 0, options, false);
  }

  /**
   * Serves a model directory written by Model.save (with `optimizerState: true` the
   * optimizer state lives in the tensor files and survives restarts). Its tensor files
   * are checked against ghost.bin; the generation is the number of update proofs in
   * `updates.bin` (0 for a fresh directory). Read-only without a trainToken.
   */
  static async open(dir: string, options: ProverServerOptions = {}): Promise<ProverServer> {
    const writable = options.trainToken !== undefined;
    // The log replayed and an interrupted step repaired (docs/serving.md), before the model loads.
    const store = await ModelDirectory.recover(dir, { writable });
    const { model, ghost } = await Model.load(dir, { readOnly: !writable });
    try {
      const { generation, proofs, ghosts } = await store.start(ghost);
      const s = new ProverServer(model, ghost, store, generation, options, true);
      // The recent proofs (and the Ghost files before them, when known) for clients that catch up.
      const keep = Math.min(proofs.length, s.#o.keepUpdates);
      s.#updates = proofs.slice(proofs.length - keep);
      s.#ghosts = ghosts ? ghosts.slice(proofs.length - keep, proofs.length) : s.#updates.map(() => null);
      s.#firstKept = proofs.length - keep;
      return s;
    } catch (err) {
      model.close();
      throw err;
    }
  }

  /** Starts listening; resolves with the base URL (http://host:port). */
  async listen(): Promise<string> {
    if (this.#server) throw new InvalidArgumentError('already listening');
    const server = createServer(
      {
        requestTimeout: this.#o.requestTimeoutMs,
        headersTimeout: Math.min(this.#o.requestTimeoutMs, 10_000),
        keepAliveTimeout: 5_000,
        // How often Node checks those timeouts (its default, 30 s, would let a slow client hold a slot that long).
        connectionsCheckingInterval: Math.max(100, Math.min(1_000, this.#o.requestTimeoutMs / 4)),
      }, (req, res) => {
      void this.#handle(req, res);
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#o.port, this.#o.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return this.url;
  }

  get url(): string {
    const a = this.#server?.address() as AddressInfo | null | undefined;
    if (!a) throw new InvalidArgumentError('not listening');
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `http://${host}:${a.port}`;
  }
  get port(): number {
    return (this.#server?.address() as AddressInfo).port;
  }
  get generation(): number {
    return this.#generation;
  }
  get ghost(): PinnedGhost {
    return this.#ghost;
  }
  get stats(): ServerStats {
    return { generation: this.#generation, digest: toHex(this.#ghost.digest), running: this.#sched.running, queued: this.#sched.queued, bodyBytes: this.#bodyBytes, served: { ...this.#served }, search: this.#batcher ? { ...this.#batcher.stats } : null };
  }

  /**
   * Graceful shutdown: stops accepting connections and requests (503 SHUTTING_DOWN on
   * open keep-alive connections), finishes every accepted request (training steps
   * included: each is durable before it is answered), then closes the model's tensor
   * files when the server opened them. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  async #shutdown(): Promise<void> {
    const server = this.#server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    server?.closeIdleConnections();
    if (this.#inflight > 0) await new Promise<void>((resolve) => this.#drained.push(resolve));
    await this.#sched.idle();
    server?.closeIdleConnections();
    // A connection still open now has no request in flight (a half-sent one): end it.
    const force = setTimeout(() => server?.closeAllConnections(), 1_000);
    await closed;
    clearTimeout(force);
    if (this.#ownsModel) this.model.close();
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t0 = performance.now();
    const path = (req.url ?? '/').split('?')[0]!;
    this.#inflight++;
    let status = 500;
    let reason: string | undefined;
    // The body bytes this request holds (released when it is answered), read, sent, and the proving time.
    const lease: Lease = { bytes: 0, read: 0, sent: 0, proveMs: undefined };
    try {
      if (this.#closing) throw new HttpError(503, 'SHUTTING_DOWN', 'the server is shutting down', { Connection: 'close', 'Retry-After': '1' });
      status = await this.#route(req, res, path, lease);
    } catch (err) {
      const e = toHttpError(err);
      status = e.status;
      reason = e.reason;
      this.#served.rejected++;
      if (!res.headersSent) {
        const body = JSON.stringify({ error: e.reason, message: e.message });
        // A body we did not read: close the connection rather than drain it.
        const unread = !req.complete;
        res.writeHead(e.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...(unread ? { Connection: 'close' } : {}), ...e.headers });
        res.end(body);
        lease.sent = Buffer.byteLength(body);
        if (unread) lingerClose(req, res, this.#closing !== null, this.#o.maxBodyBytes + LINGER_SLACK);
      } else {
        res.destroy();
      }
    } finally {
      this.#bodyBytes -= lease.bytes;
      lease.bytes = 0;
      const ms = performance.now() - t0;
      const route = ROUTES.has(path) ? path : 'other';
      const method = req.method === 'GET' || req.method === 'POST' ? req.method : 'other';
      this.#mRequests.inc({ route, method, status: String(status) });
      this.#mRequestSeconds.observe({ route }, ms / 1000);
      this.#mBytesIn.inc({ route }, lease.read);
      this.#mBytesOut.inc({ route }, lease.sent);
      if (this.#log || this.#o.onLog) {
        const entry: RequestLogEntry = {
          method: (req.method ?? '?').slice(0, 16),
          path: path.slice(0, 256),
          route,
          status,
          ...(reason === undefined ? {} : { reason }),
          ms,
          ...(lease.proveMs === undefined ? {} : { proveMs: lease.proveMs }),
          bytesIn: lease.read,
          bytesOut: lease.sent,
          generation: this.#generation,
        };
        this.#o.onLog?.(entry);
        if (this.#log) this.#writeLog(entry);
      }
      if (--this.#inflight === 0) for (const f of this.#drained.splice(0)) f();
    }
  }

  #writeLog(e: RequestLogEntry): void {
    const log = this.#log!;
    const time = new Date().toISOString();
    const level = e.status >= 500 ? 'error' : e.status >= 400 ? 'warn' : 'info';
    try {
      if (log.format === 'json') {
        // Always the same keys in the same order (null when absent): docs/serving.md, "Logs".
        log.write(JSON.stringify({
          time, level, event: 'request', method: e.method, path: e.path, route: e.route, status: e.status, reason: e.reason ?? null,
          ms: round3(e.ms), proveMs: e.proveMs === undefined ? null : round3(e.proveMs), bytesIn: e.bytesIn, bytesOut: e.bytesOut, generation: e.generation,
        }));
      } else {
        log.write(`${time} ${e.method} ${JSON.stringify(e.path).slice(1, -1)} ${e.status}${e.reason ? ` ${e.reason}` : ''} ${e.ms.toFixed(1)} ms ${e.bytesIn}/${e.bytesOut} B gen ${e.generation}`);
      }
    } catch {
      // a failing log sink must not fail the request
    }
  }

  /** The metrics in the Prometheus text exposition format (what GET /metrics answers). */
  metrics(): string {
    return this.#metrics.render();
  }

  async #route(req: IncomingMessage, res: ServerResponse, path: string, lease: Lease): Promise<number> {
    const method = req.method ?? 'GET';
    const allow = (m: string): void => {
      if (method !== m) throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${path} takes ${m}`, { Allow: m });
    };
    const query = new URLSearchParams((req.url ?? '').split('?')[1] ?? '');
    switch (path) {
      case '/ghost': {
        allow('GET');
        const g = query.get('generation'), d = query.get('digest');
        if (g !== null && d !== null) throw new HttpError(400, 'BAD_GENERATION', 'give generation or digest, not both');
        const at = d !== null ? this.#generationOf(d) : g === null ? this.#generation : parseGeneration(g);
        const ghost = this.#ghostAt(at);
        return this.#send(res, 200, GHOST_TYPE, ghost.bytes, at, ghost, lease);
      }
      case '/updates': {
        allow('GET');
        const from = parseGeneration(query.get('from') ?? '');
        const toParam = query.get('to');
        const to = toParam === null ? this.#generation : parseGeneration(toParam);
        if (from > to || to > this.#generation) throw new HttpError(400, 'BAD_GENERATION', `from ${from} to ${to}: the server is at generation ${this.#generation}`);
        if (from < this.#firstKept) throw new HttpError(410, 'GONE', `update proofs before generation ${this.#firstKept} are not kept; pin a newer Ghost file`);
        const proofs = this.#updates.slice(from - this.#firstKept, to - this.#firstKept);
        return this.#send(res, 200, LIST_TYPE, proofListParts(from, proofs), this.#generation, this.#ghost, lease);
      }
      case '/health': {
        allow('GET');
        const body = Buffer.from(JSON.stringify(this.stats));
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': body.length });
        res.end(body);
        lease.sent = body.length;
        return 200;
      }
      case '/metrics': {
        allow('GET');
        // This request is counted once answered: a scrape shows the ones before it.
        const body = Buffer.from(this.metrics());
        res.writeHead(200, { 'Content-Type': METRICS_CONTENT_TYPE, 'Content-Length': body.length });
        res.end(body);
        lease.sent = body.length;
        return 200;
      }
      case '/forward': {
        allow('POST');
        this.#checkNotBroken();
        const body = await this.#readBody(req, lease);
        const input = decodeForwardRequest(body);
        const B = batchOf(input);
        if (B > this.#o.maxBatch) throw new HttpError(413, 'BATCH_TOO_LARGE', `${B} inputs; this server takes at most ${this.#o.maxBatch} per request`);
        this.#checkInput(input);
        // Held keys (docs/serving.md): the client asks for proofs whose exact selection it can re-derive.
        const revealHeader = req.headers['x-ghost-reveal-keys'];
        if (revealHeader !== undefined && revealHeader !== 'all' && revealHeader !== 'none') throw new HttpError(400, 'BAD_REVEAL_KEYS', "X-Ghost-Reveal-Keys must be 'all' or 'none'");
        const session = this.#session(req);
        try {
          const out = await this.#sched.run(false, async () => {
            this.#checkNotBroken();
            const t = performance.now();
            try {
              const x = input.kind === 'f32' ? input.data : input.ids;
              if (!this.#o.proofs) return { bytes: encodeOutput(await this.model.forward(x), batchOf(input)), generation: this.#generation, ghost: this.#ghost };
              const r = await this.model.proveBytes(x, {
                ...(this.#o.threads === undefined ? {} : { threads: this.#o.threads }),
                ...(session ? { cache: session.cache } : {}),
                ...(revealHeader === 'all' ? { revealKeys: 'all' as const } : {}),
                ...(this.#batcher ? { batcher: this.#batcher } : {}),
                into: (size: number) => this.#outputs.take(size),
              });
              return { bytes: r.bytes, generation: this.#generation, ghost: this.#ghost };
            } finally {
              lease.proveMs = performance.now() - t;
              this.#mProveSeconds.observe({ kind: 'forward' }, lease.proveMs / 1000);
            }
          });
          this.#served.forward++;
          if (session) {
            res.setHeader('X-Ghost-Session-Seq', String(session.seq));
            res.setHeader('X-Ghost-Session-Base', session.fresh ? 'fresh' : 'held');
            res.setHeader('X-Ghost-Session-Rows', String(this.#o.sessionRows));
          }
          // The proof's buffer goes back to the pool once node:http has handed all of it to the OS (not on 'close': a write may still hold it).
          if (this.#o.proofs) res.once('finish', () => this.#outputs.give(out.bytes));
          return this.#send(res, 200, this.#o.proofs ? PROOF_TYPE : OUTPUT_TYPE, out.bytes, out.generation, out.ghost, lease);
        } finally {
          if (session) session.release();
        }
      }
      case '/train': {
        allow('POST');
        if (this.#ghost.manifest.training !== undefined) throw new HttpError(409, 'STEP_TRAINED', 'this model is trained by step proofs: POST /train-step with examples');
        if (!this.#optimizer || this.#o.trainToken === undefined) throw new HttpError(403, 'TRAINING_DISABLED', 'this server takes no training requests');
        const ifGeneration = this.#authorizeTraining(req, this.#o.trainToken);
        const body = await this.#readBody(req, lease);
        const grads = decodeTrainRequest(body, this.#ghost.manifest);
        const out = await this.#runTraining(lease, ifGeneration, () => this.#train(grads));
        return this.#send(res, 200, LIST_TYPE, proofListParts(out.from, out.proofs), this.#generation, this.#ghost, lease);
      }
      case '/train-step': {
        allow('POST');
        if (this.#ghost.manifest.training === undefined) throw new HttpError(409, 'NO_TRAINING_RULE', 'this model commits no training rule: POST /train with gradients (update proofs)');
        if (this.#o.trainToken === undefined) throw new HttpError(403, 'TRAINING_DISABLED', 'this server takes no training requests');
        const ifGeneration = this.#authorizeTraining(req, this.#o.trainToken);
        const body = await this.#readBody(req, lease);
        // One sequence, or several (one step over all of them); their inputs together are the batch.
        const batches = decodeStepRequests(body);
        let B = 0;
        for (const batch of batches) B += batchOf(batch.input);
        if (B > this.#o.maxBatch) throw new HttpError(413, 'BATCH_TOO_LARGE', `${B} inputs; this server takes at most ${this.#o.maxBatch} per request`);
        for (const batch of batches) {
          this.#checkInput(batch.input);
          this.#checkTargets(batch, batchOf(batch.input));
        }
        const out = await this.#runTraining(lease, ifGeneration, () => this.#trainStep(batches));
        return this.#send(res, 200, LIST_TYPE, proofListParts(out.from, [out.proof]), this.#generation, this.#ghost, lease);
      }
      default:
        throw new HttpError(404, 'NOT_FOUND', `no route ${path}`);
    }
  }

  /** A training request's bearer token checked; returns the generation it is conditional on (X-Ghost-If-Generation), or null. */
  #authorizeTraining(req: IncomingMessage, token: string): number | null {
    this.#checkNotBroken();
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (!m || !tokenMatches(m[1]!, token)) throw new HttpError(401, 'UNAUTHORIZED', 'training needs the bearer token', { 'WWW-Authenticate': 'Bearer realm="ghost-tensor"' });
    const ifHeader = req.headers['x-ghost-if-generation'];
    return ifHeader === undefined ? null : parseGeneration(String(ifHeader));
  }

  /** Runs one training request in the scheduler's exclusive slot: a conditional step only at the generation it names (the client's retries), timed. */
  async #runTraining<T>(lease: Lease, ifGeneration: number | null, step: () => Promise<T>): Promise<T> {
    const out = await this.#sched.run(true, async () => {
      this.#checkNotBroken();
      if (ifGeneration !== null && ifGeneration !== this.#generation) {
        throw new HttpError(409, 'GENERATION_CONFLICT', `the step was asked at generation ${ifGeneration}; the server is at ${this.#generation}`, { 'X-Ghost-Generation': String(this.#generation) });
      }
      const t = performance.now();
      try {
        return await step();
      } finally {
        lease.proveMs = performance.now() - t;
        this.#mProveSeconds.observe({ kind: 'train' }, lease.proveMs / 1000);
      }
    });
    this.#served.train++;
    return out;
  }

  /**
   * The session a forward request names (X-Ghost-Session: id, X-Ghost-Session-Seq: the
   * proofs the client verified in it), taken for this request: its cache is used when the
   * client is where the server is, else started afresh (the client then clears its own).
   */
  #session(req: IncomingMessage): { cache: PatternCache; seq: number; fresh: boolean; release: () => void } | null {
    const id = req.headers['x-ghost-session'];
    if (id === undefined || this.#o.sessions === 0) return null;
    if (typeof id !== 'string' || !/^[A-Za-z0-9_-]{8,64}$/.test(id)) throw new HttpError(400, 'BAD_SESSION', 'X-Ghost-Session must be 8..64 characters of [A-Za-z0-9_-]');
    const seqHeader = req.headers['x-ghost-session-seq'];
    const seq = typeof seqHeader === 'string' && /^\d{1,15}$/.test(seqHeader) ? Number(seqHeader) : -2;
    let s = this.#sessions.get(id);
    if (s?.busy) throw new HttpError(409, 'SESSION_BUSY', 'one request at a time per session');
    if (!s) {
      // Evict the least recently used idle session beyond the limit.
      if (this.#sessions.size >= this.#o.sessions) {
        for (const [k, v] of this.#sessions) {
          if (!v.busy) {
            this.#sessions.delete(k);
            break;
          }
        }
        if (this.#sessions.size >= this.#o.sessions) throw new HttpError(503, 'BUSY', 'every session is in use', { 'Retry-After': '1' });
      }
      s = { cache: new PatternCache(this.#o.sessionRows), seq: -1, busy: false };
    }
    this.#sessions.delete(id);
    this.#sessions.set(id, s);
    const fresh = s.seq < 0 || s.seq !== seq;
    if (fresh) s.cache = new PatternCache(this.#o.sessionRows);
    s.busy = true;
    // The mirror records the proof's rows: the session moves to the next seq (a client that
    // did not get or did not verify the answer sends the old one, and starts afresh).
    s.seq = (fresh ? Math.max(seq, 0) : seq) + 1;
    const taken = s;
    return {
      cache: s.cache,
      seq: s.seq,
      fresh,
      release: () => {
        taken.busy = false;
      },
    };
  }

  #checkNotBroken(): void {
    if (this.#broken !== null) throw new HttpError(500, 'NEEDS_RESTART', this.#broken);
  }

  /** The newest kept generation whose Ghost file has this digest (hex); 404 UNKNOWN_DIGEST if none. */
  #generationOf(hex: string): number {
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new HttpError(400, 'BAD_DIGEST', 'digest must be 64 hex characters');
    const d = fromHex(hex);
    if (bytesEqual(this.#ghost.digest, d)) return this.#generation;
    for (let i = this.#ghosts.length - 1; i >= 0; i--) {
      const g = this.#ghosts[i];
      if (g && bytesEqual(g.digest, d)) return this.#firstKept + i;
    }
    throw new HttpError(404, 'UNKNOWN_DIGEST', `no kept Ghost file (generations ${this.#firstKept}..${this.#generation}) has digest ${hex.toLowerCase()}`);
  }

  #ghostAt(generation: number): PinnedGhost {
    if (generation === this.#generation) return this.#ghost;
    if (generation > this.#generation) throw new HttpError(400, 'BAD_GENERATION', `generation ${generation} is ahead of the server's ${this.#generation}`);
    const g = this.#ghosts[generation - this.#firstKept];
    if (!g) throw new HttpError(410, 'GONE', `the Ghost file of generation ${generation} is not kept`);
    return g;
  }

  #checkInput(input: ReturnType<typeof decodeForwardRequest>): void {
    const first = layerInput(this.#ghost.manifest, 0);
    if (first.kind === 'ids') {
      if (input.kind !== 'ids') throw new HttpError(400, 'BAD_INPUT', 'this model takes ids (an Embedding first)');
      for (const id of input.ids) if (id >= first.n) throw new HttpError(400, 'BAD_INPUT', `id ${id} >= N = ${first.n}`);
    } else {
      if (input.kind !== 'f32') throw new HttpError(400, 'BAD_INPUT', 'this model takes f32 rows');
      if (input.cols !== first.cols) throw new HttpError(400, 'BAD_INPUT', `rows of ${input.cols} values; this model takes ${first.cols}`);
    }
  }

  /**
   * The targets of a step request against the model, before any work (400 BAD_TARGETS):
   * class ids (cross-entropy), one per output row, each below the output width; or values
   * (mse), rows x the output width. An output row per input row (B).
   */
  #checkTargets(batch: StepRequest, B: number): void {
    const m = this.#ghost.manifest;
    const last = m.layers[m.layers.length - 1]!;
    const cols = specOf(last).outWidth(last, m);
    const t = batch.targets;
    if (m.training!.loss === 'cross-entropy') {
      if (t.kind !== 'classes') throw new HttpError(400, 'BAD_TARGETS', 'this model trains with cross-entropy: targets are class ids');
      if (t.ids.length !== B) throw new HttpError(400, 'BAD_TARGETS', `${t.ids.length} class ids for ${B} inputs`);
      for (const [i, c] of t.ids.entries()) if (c >= cols) throw new HttpError(400, 'BAD_TARGETS', `targets[${i}] = ${c} is not a class below the output width ${cols}`);
    } else {
      if (t.kind !== 'values') throw new HttpError(400, 'BAD_TARGETS', 'this model trains with mse: targets are f32 values');
      if (t.data.length !== B * cols) throw new HttpError(400, 'BAD_TARGETS', `${t.data.length} target values for ${B} x ${cols} outputs`);
    }
  }

  /**
   * One step of a model trained by step proofs, all or nothing: Model.proveTrainStep takes
   * it (the verifier's own computation, applied), the server verifies the encoded proof
   * itself (verifyTrainStep against the served Ghost file), then makes it durable (the
   * log, the touched tensor files, the step's record in step-state.log, ghost.bin) and
   * only then publishes it.
   * Any failure puts the model back (Model.undoTrainStep, from the proof's old rows and
   * state rows) and the files (ModelDirectory.undoStep); if that fails, NEEDS_RESTART.
   */
  async #trainStep(batches: readonly StepRequest[]): Promise<{ from: number; proof: Uint8Array }> {
    const before = this.#ghost;
    const from = this.#generation;
    let step: ProvedStep;
    try {
      const list = batches.map(stepBatchOf);
      step = await this.model.proveTrainStep(list.length === 1 ? list[0]! : list);
    } catch (err) {
      // proveTrainStep changes nothing before its step is computed; a failure while applying it is internal.
      if (!bytesEqual((await this.model.ghost()).digest, before.digest)) this.#broken = `a step failed half applied (${err instanceof Error ? err.message : String(err)}); restart the server`;
      throw err;
    }
    const undo = async (files: boolean): Promise<void> => {
      try {
        this.model.undoTrainStep(step, before);
        if (files && this.#store) await this.#store.undoStep(before, this.#stepTensors(step), () => this.model.stepState()!);
      } catch (err) {
        this.#broken = `a failed step could not be undone (${err instanceof Error ? err.message : String(err)}); restart the server`;
      }
    };
    try {
      const v = await verifyTrainStep(before, step.bytes);
      if (!bytesEqual(v.ghost.digest, step.ghost.digest)) throw new Error('it verifies to another Ghost file than the model\'s');
    } catch (err) {
      await undo(false);
      throw new HttpError(500, 'SELF_CHECK_FAILED', `the step proof does not verify against the served Ghost file (${err instanceof Error ? err.message : String(err)}); nothing was changed`);
    }
    try {
      // The state rows the step wrote go to step-state.log; step-state.bin is rewritten whole only when the log has grown as large (ModelDirectory.appendStep).
      if (this.#store) await this.#store.appendStep([step.bytes], step.ghost, this.#stepTensors(step), { record: this.model.stepStateRecord(step), full: () => this.model.stepState()! });
    } catch (err) {
      await undo(true);
      const e = toHttpError(err);
      throw new HttpError(500, 'NOT_DURABLE', `the step could not be saved (${e.message}); nothing was changed`);
    }
    this.#remember(step.bytes, step.ghost);
    return { from, proof: step.bytes };
  }

  /** The trained tensors a step read (and so may have written): the ones to checkpoint. */
  #stepTensors(step: ProvedStep): SparseTensor[] {
    const trained = new Set(this.#ghost.manifest.training?.tensors.map((e) => e.tensor) ?? []);
    return step.proof.blocks.filter((b) => trained.has(b.tensor)).map((b) => this.model.tensors[b.tensor]!);
  }

  /**
   * One training request, all or nothing. Entry by entry: the optimizer step and its
   * update proof, which the server verifies itself (the addon-free verifier, against the
   * Ghost file before the step) before it goes on. Then the proofs are made durable
   * (#persist), and only then published (#remember): /ghost, /updates and /forward see
   * the new generation once a crash can no longer take it back. Any failure undoes
   * every entry taken (the rows and optimizer state put back) and changes no file.
   */
  async #train(grads: ReturnType<typeof decodeTrainRequest>): Promise<{ from: number; proofs: Uint8Array[] }> {
    const opt = this.#optimizer!;
    const from = this.#generation;
    const taken: { proof: Uint8Array; ghost: PinnedGhost }[] = [];
    const undo: RowsSnapshot[] = [];
    let ghost = this.#ghost;
    try {
      for (const g of grads) {
        const tensor = this.model.tensors[g.tensor]!;
        const before = opt.snapshot(tensor, g.ids);
        let proof: Uint8Array;
        try {
          const [p] = await this.model.proveStep(opt, [{ tensor, ids: g.ids, grads: g.grads }]);
          proof = p!.bytes;
        } finally {
          // Stepped (even if its proof then failed): to be undone on any failure.
          if (opt.info(tensor).steps !== before.steps) undo.push(before);
        }
        let next: PinnedGhost;
        try {
          next = (await verifyUpdate(ghost, proof)).ghost;
        } catch (err) {
          throw new HttpError(500, 'SELF_CHECK_FAILED', `the update proof of entry ${taken.length} (tensor ${g.tensor}) does not verify against the served Ghost file (${err instanceof Error ? err.message : String(err)}); nothing was changed`);
        }
        if (!bytesEqual(next.digest, (await pinGhost(this.model.manifest())).digest)) {
          throw new HttpError(500, 'SELF_CHECK_FAILED', `the update proof of entry ${taken.length} (tensor ${g.tensor}) verifies, but to another Ghost file than the model's; nothing was changed`);
        }
        taken.push({ proof, ghost: next });
        ghost = next;
      }
    } catch (err) {
      await this.#undo(undo, null);
      throw err;
    }
    try {
      await this.#persist(taken.map((t) => t.proof), ghost, grads.map((g) => g.tensor));
    } catch (err) {
      await this.#undo(undo, grads.map((g) => g.tensor));
      const e = toHttpError(err);
      throw new HttpError(500, 'NOT_DURABLE', `the step could not be saved (${e.message}); nothing was changed`);
    }
    for (const t of taken) this.#remember(t.proof, t.ghost);
    return { from, proofs: taken.map((t) => t.proof) };
  }

  /**
   * Puts the rows of the entries taken back, last first. After a failed #persist
   * (`tensors` given), also puts the directory's files back (ModelDirectory.undoStep:
   * the log cut back, the tensors checkpointed at the old rows, ghost.bin rewritten). If any of that fails the server stops training and
   * proving (NEEDS_RESTART); a restart repairs the directory (docs/serving.md).
   */
  async #undo(undo: readonly RowsSnapshot[], tensors: readonly number[] | null): Promise<void> {
    try {
      for (const s of [...undo].reverse()) this.#optimizer!.restore(s);
      if (tensors && this.#store) await this.#store.undoStep(this.#ghost, this.#tensors(tensors));
    } catch (err) {
      this.#broken = `a failed step could not be undone (${err instanceof Error ? err.message : String(err)}); restart the server`;
    }
  }

  #remember(proof: Uint8Array, next: PinnedGhost): void {
    this.#ghosts.push(this.#ghost);
    this.#updates.push(proof);
    this.#ghost = next;
    this.#generation++;
    const extra = this.#updates.length - this.#o.keepUpdates;
    if (extra > 0) {
      this.#updates.splice(0, extra);
      this.#ghosts.splice(0, extra);
      this.#firstKept += extra;
    }
  }

  #tensors(indices: readonly number[]): SparseTensor[] {
    return indices.map((i) => this.model.tensors[i]!);
  }

  /** The step made durable (ModelDirectory.appendStep: log record, touched tensors checkpointed, ghost.bin). */
  async #persist(proofs: Uint8Array[], ghost: PinnedGhost, tensors: number[]): Promise<void> {
    if (this.#store) await this.#store.appendStep(proofs, ghost, this.#tensors(tensors));
  }

  /**
   * Reads the body whole, within maxBodyBytes, holding its bytes in `lease` against
   * maxInflightBytes: the Content-Length up front (then read into one buffer of that
   * size), or chunk by chunk as they come. Past the limit: 503 BUSY before reading.
   * A refusal midway leaves the request undestroyed (`destroyOnReturn: false`): its
   * connection is closed by lingerClose, after the answer, not by a reset before it.
   */
  async #readBody(req: IncomingMessage, lease: Lease): Promise<Uint8Array> {
    const limit = this.#o.maxBodyBytes;
    const header = req.headers['content-length'];
    const declared = header === undefined ? null : Number(header);
    if (declared !== null && declared > limit) throw new HttpError(413, 'BODY_TOO_LARGE', `${declared} bytes; the limit is ${limit}`);
    const reserve = (n: number): void => {
      if (this.#bodyBytes + n > this.#o.maxInflightBytes) {
        throw new HttpError(503, 'BUSY', `${this.#bodyBytes} bytes of request bodies are in flight; the limit is ${this.#o.maxInflightBytes}`, { 'Retry-After': '1' });
      }
      this.#bodyBytes += n;
      lease.bytes += n;
    };
    if (declared !== null && Number.isSafeInteger(declared) && declared >= 0) {
      // Node's parser delivers exactly Content-Length bytes (or the request aborts).
      reserve(declared);
      const buf = Buffer.allocUnsafe(declared);
      let size = 0;
      for await (const chunk of req.iterator({ destroyOnReturn: false })) {
        const c = chunk as Buffer;
        if (size + c.length > declared) throw new HttpError(400, 'BAD_BODY', 'more bytes than Content-Length');
        c.copy(buf, size);
        size += c.length;
        lease.read = size;
      }
      if (size !== declared) throw new HttpError(400, 'ABORTED', 'the body ended before Content-Length');
      return new Uint8Array(buf.buffer, buf.byteOffset, size);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req.iterator({ destroyOnReturn: false })) {
      const c = chunk as Buffer;
      size += c.length;
      if (size > limit) throw new HttpError(413, 'BODY_TOO_LARGE', `more than ${limit} bytes`);
      reserve(c.length);
      lease.read = size;
      chunks.push(c);
    }
    const buf = Buffer.concat(chunks, size);
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  /** Sends `body` (or its parts, in order, written one after the other without joining them: a list of step proofs is megabytes). */
  #send(res: ServerResponse, status: number, type: string, body: Uint8Array | readonly Uint8Array[], generation: number, ghost: PinnedGhost, lease: Lease): number {
    const parts = body instanceof Uint8Array ? [body] : body;
    let length = 0;
    for (const p of parts) length += p.length;
    res.writeHead(status, {
      'Content-Type': type,
      'Content-Length': length,
      'X-Ghost-Generation': String(generation),
      'X-Ghost-Digest': digestHex(ghost),
      ...(this.#closing ? { Connection: 'close' } : {}),
    });
    if (parts.length > 1) {
      res.cork(); // one writev for the parts; end() uncorks
      for (let i = 0; i < parts.length - 1; i++) res.write(parts[i]);
    }
    res.end(parts[parts.length - 1]);
    lease.sent = length;
    return status;
  }
}

/** What one request holds and did: body bytes reserved and read, bytes sent, proving time. */
interface Lease {
  bytes: number;
  read: number;
  sent: number;
  proveMs: number | undefined;
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

function parseGeneration(s: string): number {
  if (!/^\d{1,15}$/.test(s)) throw new HttpError(400, 'BAD_GENERATION', `generation must be a non-negative integer, got ${JSON.stringify(s.slice(0, 20))}`);
  return Number(s);
}

function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE' || (err instanceof Error && err.message === 'aborted')) {
    return new HttpError(400, 'ABORTED', 'the client closed the connection before the body ended');
  }
  if (err instanceof FormatError) return new HttpError(400, 'BAD_BODY', err.message);
  if (err instanceof InvalidArgumentError || err instanceof OutOfRangeError) return new HttpError(400, 'BAD_INPUT', err.message);
  if (err instanceof NonFiniteError) return new HttpError(422, 'NON_FINITE', err.message);
  if (err instanceof GhostTensorError) return new HttpError(500, 'INTERNAL', `${err.code}: ${err.message}`);
  return new HttpError(500, 'INTERNAL', err instanceof Error ? err.message : String(err));
}
