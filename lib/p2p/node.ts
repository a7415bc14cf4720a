/**
 * A layer node (docs/p2p.md): serves some layers of one model over
 * `/ghost-tensor/forward/1.0.0` and announces them on the DHT. One request and one
 * response per stream; every stream has a deadline; a malformed, oversized or
 * unanswerable request gets an error response, never a crash.
 */
import type { Connection, Stream } from '@libp2p/interface';

import { checkInteger } from '../shared/args.js';
import { bytesEqual } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError, NonFiniteError, OutOfRangeError } from '../shared/errors.js';
import type { Model } from '../model/model.js';
import type { ProofInput } from '../verify/proof-format.js';
import type { PinnedGhost } from '../verify/proof-verify.js';
import { layerInput } from '../verify/kinds/index.js';
import { FORWARD_PROTOCOL, FRAME_LIMITS, decodeRequest, encodeResponse, type ErrorStatus, type ForwardRequest, type ForwardResponse } from './frames.js';
import { FrameReadError, createHost, deadlineSignal, readFrame, writeFrame, type GhostLibp2p, type HostOptions } from './host.js';
import { ghostKey, layerKey } from './keys.js';

/** What a node serves: proofs of layer spans of one model. */
export interface LayerProver {
  /** The Ghost file of the model (requests name its digest). */
  readonly ghost: PinnedGhost;
  /** An encoded forward proof of layers [firstLayer, firstLayer + layers) on `input` (the node has checked its shape). */
  prove(input: ProofInput, firstLayer: number, layers: number): Promise<Uint8Array>;
}

/** The honest prover of a model: `model.prove(input, { firstLayer, layers })`. */
export async function modelProver(model: Model): Promise<LayerProver> {
  const ghost = await model.ghost();
  return {
    ghost,
    prove: async (input, firstLayer, layers) => (await model.prove(input.kind === 'ids' ? input.ids : input.data, { firstLayer, layers })).bytes,
  };
}

export interface LayerNodeOptions extends HostOptions {
  prover: LayerProver;
  /** Indexes of the layers this node serves (it answers any span of them). */
  layers: readonly number[];
  /** Time to receive a complete request, ms (default 10 000): then a TIMEOUT response. */
  readTimeoutMs?: number;
  /** Time to make a proof, ms (default 30 000): then a TIMEOUT response. */
  proveTimeoutMs?: number;
  /** Hard limit on a stream's life, ms (default 60 000): then it is aborted. */
  streamTimeoutMs?: number;
  /** Largest request payload, bytes (default FRAME_LIMITS.requestBytes). */
  maxRequestBytes?: number;
  /** Proofs made at the same time (default 4); more requests get BUSY. */
  maxConcurrent?: number;
}

/** What a node has answered, by status. */
export type LayerNodeStats = Record<ForwardResponse['status'], number>;

class Deadline extends Error {}

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Deadline(`over ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export class LayerNode {
  readonly libp2p: GhostLibp2p;
  readonly prover: LayerProver;
  /** The served layers, ascending. */
  readonly layers: readonly number[];
  readonly stats: LayerNodeStats = { OK: 0, MALFORMED: 0, TOO_LARGE: 0, WRONG_GHOST: 0, NOT_SERVED: 0, BAD_INPUT: 0, BUSY: 0, TIMEOUT: 0, INTERNAL: 0 };
  readonly #served: Set<number>;
  readonly #readTimeoutMs: number;
  readonly #proveTimeoutMs: number;
  readonly #streamTimeoutMs: number;
  readonly #maxRequestBytes: number;
  readonly #maxConcurrent: number;
  #active = 0;

  private constructor(libp2p: GhostLibp2p, options: LayerNodeOptions) {
    this.libp2p = libp2p;
    this.prover = options.prover;
    this.layers = [...new Set(options.layers)].sort((a, b) => a - b);
    this.#served = new Set(this.layers);
    this.#readTimeoutMs = options.readTimeoutMs ?? 10_000;
    this.#proveTimeoutMs = options.proveTimeoutMs ?? 30_000;
    this.#streamTimeoutMs = options.streamTimeoutMs ?? 60_000;
    this.#maxRequestBytes = options.maxRequestBytes ?? FRAME_LIMITS.requestBytes;
    this.#maxConcurrent = options.maxConcurrent ?? 4;
  }

  /** Starts a node serving `layers` of the prover's model (call announce() once it has DHT peers). */
  static async start(options: LayerNodeOptions): Promise<LayerNode> {
    const n = options.prover?.ghost?.manifest.layers.length;
    if (n === undefined) throw new InvalidArgumentError('prover must be a LayerProver (see modelProver)');
    if (!Array.isArray(options.layers) || options.layers.length === 0 || options.layers.some((l) => !Number.isInteger(l) || l < 0 || l >= n)) {
      throw new InvalidArgumentError(`layers must be a non-empty array of layer indexes in 0..${n - 1}`);
    }
    for (const k of ['readTimeoutMs', 'proveTimeoutMs', 'streamTimeoutMs', 'maxRequestBytes', 'maxConcurrent'] as const) {
      if (options[k] !== undefined) checkInteger(k, options[k], 1, k === 'maxRequestBytes' ? FRAME_LIMITS.requestBytes * 64 : 2 ** 31 - 1);
    }
    const host = await createHost(options, true);
    const node = new LayerNode(host, options);
    await host.handle(FORWARD_PROTOCOL, (stream, connection) => node.#handle(stream, connection), { maxInboundStreams: 64 });
    return node;
  }

  get peerId(): string {
    return this.libp2p.peerId.toString();
  }

  /** Dialable addresses (with /p2p/<id>). */
  get multiaddrs(): string[] {
    return this.libp2p.getMultiaddrs().map(String);
  }

  /**
   * Provides the model's key and one key per served layer on the DHT (docs/p2p.md).
   * Waits for at least one DHT peer; gives up after timeoutMs (default 30 000).
   */
  async announce(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<void> {
    const digest = this.prover.ghost.digest;
    const keys = [await ghostKey(digest), ...(await Promise.all(this.layers.map((l) => layerKey(digest, l))))];
    const signal = deadlineSignal(options.timeoutMs ?? 30_000, options.signal);
    await Promise.all(keys.map((k) => this.libp2p.contentRouting.provide(k, { signal })));
  }

  async stop(): Promise<void> {
    await this.libp2p.stop();
  }

  async #handle(stream: Stream, _connection: Connection): Promise<void> {
    // Hard limit on the stream's life, whatever the peer does (a half-open stream included).
    const hard = setTimeout(() => stream.abort(new Error('ghost-tensor forward: stream deadline')), this.#streamTimeoutMs);
    hard.unref();
    stream.addEventListener('close', () => clearTimeout(hard), { once: true });
    try {
      const res = await this.#answer(stream);
      this.stats[res.status]++;
      const signal = deadlineSignal(this.#streamTimeoutMs);
      await writeFrame(stream, encodeResponse(res), signal);
      await stream.close({ signal });
      // Whatever else the peer sends is not read.
      await stream.closeRead({ signal });
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
    }
  }

  async #answer(stream: Stream): Promise<ForwardResponse> {
    let payload: Uint8Array;
    try {
      payload = await readFrame(stream, this.#maxRequestBytes, this.#readTimeoutMs);
    } catch (err) {
      const why = err instanceof FrameReadError ? err.why : 'STREAM';
      const status: ErrorStatus = why === 'TOO_LARGE' ? 'TOO_LARGE' : why === 'TIMEOUT' ? 'TIMEOUT' : 'MALFORMED';
      return { requestId: 0, status, reason: (err as Error).message };
    }
    let req: ForwardRequest;
    try {
      req = decodeRequest(payload);
    } catch (err) {
      if (err instanceof FormatError) return { requestId: 0, status: 'MALFORMED', reason: err.message };
      throw err;
    }
    const fail = (status: ErrorStatus, reason: string): ForwardResponse => ({ requestId: req.requestId, status, reason });
    const g = this.prover.ghost;
    if (!bytesEqual(req.ghost, g.digest)) return fail('WRONG_GHOST', 'this node does not serve the model with that Ghost digest');
    const end = req.firstLayer + req.layers;
    for (let l = req.firstLayer; l < end; l++) {
      if (!this.#served.has(l)) return fail('NOT_SERVED', `layer ${l} is not served here (serving ${this.layers.join(', ')})`);
    }
    const first = layerInput(g.manifest, req.firstLayer);
    const inp = req.input;
    if (first.kind === 'ids') {
      if (inp.kind !== 'ids') return fail('BAD_INPUT', `layer ${req.firstLayer} (${g.manifest.layers[req.firstLayer]!.op}) takes ids`);
      if (inp.ids.some((id) => id >= first.n)) return fail('BAD_INPUT', `an id is >= the table's ${first.n} rows`);
    } else if (inp.kind !== 'f32' || inp.cols !== first.cols) {
      return fail('BAD_INPUT', `layer ${req.firstLayer} takes rows of ${first.cols} f32`);
    }
    if (this.#active >= this.#maxConcurrent) return fail('BUSY', `${this.#active} proofs in progress`);
    this.#active++;
    const proving = this.prover.prove(inp, req.firstLayer, req.layers).finally(() => this.#active--);
    try {
      const proof = await withDeadline(proving, this.#proveTimeoutMs);
      return { requestId: req.requestId, status: 'OK', proof };
    } catch (err) {
      proving.catch(() => {});
      if (err instanceof Deadline) return fail('TIMEOUT', `the proof took ${err.message}`);
      if (err instanceof InvalidArgumentError || err instanceof OutOfRangeError || err instanceof NonFiniteError) return fail('BAD_INPUT', err.message);
      return fail('INTERNAL', 'the proof could not be made');
    }
  }
}
