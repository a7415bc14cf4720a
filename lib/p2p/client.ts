/**
 * A client of layer nodes (docs/p2p.md): finds the providers of each layer of a
 * pinned model on the DHT, runs a forward pass whose layers live on different peers
 * (a span's verified output is the next span's input), verifies every hop against
 * the pinned Ghost file, and drops a provider whose answer fails (a proof that does
 * not verify, an error status, a timeout, a broken stream) to retry another. Needs no
 * addon: the verifier is the TypeScript one.
 */
import { toIds } from '../shared/args.js';
import { bytesEqual } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError, NonFiniteError, OutOfRangeError, P2PError, ProofError, type FormatFailure, type ProofFailure } from '../shared/errors.js';
import { decodeProof, verifierLimits, type ProofInput, type VerifierLimits } from '../verify/proof-format.js';
import { verifyForward, type PinnedGhost } from '../verify/proof-verify.js';
import { layerInput } from '../verify/kinds/index.js';
import { FORWARD_PROTOCOL, FRAME_LIMITS, decodeResponse, encodeRequest, sameInput, type ErrorStatus, type ForwardRequest, type ForwardResponse } from './frames.js';
import { FrameReadError, createHost, deadlineSignal, readFrame, toPeerId, writeFrame, type GhostLibp2p, type HostOptions } from './host.js';
import { layerKey } from './keys.js';

/** Why a provider was dropped. */
export type DropReason =
  /** Its proof did not verify (or answered another input, layer span or model). */
  | { kind: 'proof'; reason: ProofFailure; message: string }
  /** Its response or proof bytes did not decode. */
  | { kind: 'format'; reason: FormatFailure; message: string }
  /** It answered with an error status. */
  | { kind: 'status'; status: ErrorStatus; message: string }
  /** No complete response within the timeout. */
  | { kind: 'timeout'; message: string }
  /** The dial or the stream failed, or the response was not for this request. */
  | { kind: 'transport'; message: string };

export interface DroppedPeer {
  peer: string;
  /** The first layer of the span it was asked for. */
  layer: number;
  why: DropReason;
}

/** One verified span of the pass. */
export interface Hop {
  /** Peer id of the provider that served it. */
  peer: string;
  firstLayer: number;
  layers: number;
  proofBytes: number;
  /** Wall time from the request to the verified output, including failed attempts before it. */
  ms: number;
  /** Providers tried for this span and dropped, in order. */
  dropped: DroppedPeer[];
}

export interface P2PForwardResult {
  /** The verified output of the last layer (rows x cols f32). */
  output: Float32Array;
  rows: number;
  cols: number;
  hops: Hop[];
  /** Every provider dropped during the pass, in order. */
  dropped: DroppedPeer[];
}

export interface P2PForwardOptions {
  /** The pinned Ghost file: requests name its digest and every hop is verified against it. */
  ghost: PinnedGhost;
  firstLayer?: number;
  /** Layers from firstLayer (default: to the end). */
  layers?: number;
  /** Peer ids tried first, in this order, when they provide a layer. */
  prefer?: readonly string[];
  /** Peer ids never asked. */
  exclude?: readonly string[];
  /** Per request (dial, send, proof, response), ms (default 30 000). */
  timeoutMs?: number;
  /** Per DHT provider lookup, ms (default 5 000). */
  findTimeoutMs?: number;
  /** Providers collected per layer (default 20). */
  maxProviders?: number;
  /** Largest response accepted, bytes (default FRAME_LIMITS.responseBytes). */
  maxResponseBytes?: number;
  /** Known providers per layer (e.g. from findProviders): the DHT is asked only for layers missing here. */
  providers?: ReadonlyMap<number, readonly string[]>;
  /**
   * What verifying one peer's proof may cost (default DEFAULT_VERIFIER_LIMITS;
   * docs/proof-format.md, "Verifier limits"): a proof past them is refused from its
   * headers (a 'proof' drop with reason BUDGET) and the next provider is asked.
   */
  limits?: Partial<VerifierLimits>;
}

/** A pass that could not complete (reason NO_PROVIDER): `result` is what was done, and every drop, up to the failure. */
export class P2PForwardError extends P2PError {
  readonly result: P2PForwardResult;
  constructor(message: string, result: P2PForwardResult) {
    super('NO_PROVIDER', message, result);
    this.result = result;
  }
}

function dropOf(err: unknown, timedOut: boolean): DropReason {
  if (err instanceof ProofError) return { kind: 'proof', reason: err.reason, message: err.message };
  if (err instanceof FormatError) return { kind: 'format', reason: err.reason, message: err.message };
  if (timedOut || (err instanceof FrameReadError && err.why === 'TIMEOUT')) return { kind: 'timeout', message: (err as Error).message };
  return { kind: 'transport', message: err instanceof Error ? err.message : String(err) };
}

export class GhostClient {
  readonly libp2p: GhostLibp2p;

  private constructor(libp2p: GhostLibp2p) {
    this.libp2p = libp2p;
  }

  /** Starts a client node (a DHT client: it asks, it does not answer DHT queries). Give it a bootstrap address. */
  static async start(options: HostOptions = {}): Promise<GhostClient> {
    return new GhostClient(await createHost(options, false));
  }

  get peerId(): string {
    return this.libp2p.peerId.toString();
  }

  async stop(): Promise<void> {
    await this.libp2p.stop();
  }

  /** Peer ids announcing layer `layer` of the model with this digest (their addresses are added to the peer store). */
  async findProviders(digest: Uint8Array, layer: number, options: { timeoutMs?: number; max?: number } = {}): Promise<string[]> {
    const key = await layerKey(digest, layer);
    const max = options.max ?? 20;
    const out: string[] = [];
    const signal = deadlineSignal(options.timeoutMs ?? 5_000);
    try {
      for await (const p of this.libp2p.contentRouting.findProviders(key, { signal })) {
        const id = p.id.toString();
        if (id === this.peerId || out.includes(id)) continue;
        if (p.multiaddrs.length > 0) await this.libp2p.peerStore.merge(p.id, { multiaddrs: p.multiaddrs });
        out.push(id);
        if (out.length >= max) break;
      }
    } catch (err) {
      // A lookup that times out keeps what it found.
      if (!signal.aborted) throw err;
    }
    return out;
  }

  /** Sends one request to a peer and reads its response (no verification). */
  async request(peer: string, req: ForwardRequest, options: { timeoutMs?: number; maxResponseBytes?: number } = {}): Promise<ForwardResponse> {
    const timeoutMs = options.timeoutMs ?? 30_000;
    const start = performance.now();
    const signal = deadlineSignal(timeoutMs);
    const stream = await this.libp2p.dialProtocol(await toPeerId(peer), FORWARD_PROTOCOL, { signal });
    try {
      await writeFrame(stream, encodeRequest(req), signal);
      await stream.close({ signal });
      const left = Math.max(1, timeoutMs - (performance.now() - start));
      const payload = await readFrame(stream, options.maxResponseBytes ?? FRAME_LIMITS.responseBytes, left);
      return decodeResponse(payload, options.maxResponseBytes ?? FRAME_LIMITS.responseBytes);
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      throw err;
    }
  }

  /**
   * A verified forward pass over the peers announcing the layers of `options.ghost`.
   * Per span: a provider is asked for the longest run of layers it announces from the
   * current layer; its proof must name the pinned digest, cover exactly those layers,
   * start from exactly the input sent, and pass verifyForward. A provider that fails
   * is dropped for the rest of the pass and the next one is asked. Throws
   * P2PForwardError (a P2PError, reason NO_PROVIDER, with the partial result) when a
   * layer has no provider left.
   */
  async forward(input: Float32Array | Uint32Array | readonly number[], options: P2PForwardOptions): Promise<P2PForwardResult> {
    const ghost = options.ghost;
    if (!ghost || !(ghost.digest instanceof Uint8Array)) throw new InvalidArgumentError('options.ghost must be a pinned Ghost file (pinGhost)');
    const L = ghost.manifest.layers.length;
    const first = options.firstLayer ?? 0;
    const count = options.layers ?? L - first;
    if (!Number.isInteger(first) || first < 0 || first >= L) throw new InvalidArgumentError(`firstLayer must be in 0..${L - 1}`);
    if (!Number.isInteger(count) || count < 1 || first + count > L) throw new InvalidArgumentError(`layers must be in 1..${L - first}`);
    for (const k of ['timeoutMs', 'findTimeoutMs', 'maxProviders', 'maxResponseBytes'] as const) {
      const v = options[k];
      if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > 2 ** 31 - 1)) throw new InvalidArgumentError(`${k} must be a positive integer`);
    }
    const limits = verifierLimits(options.limits);
    const end = first + count;
    let x = this.#input(input, ghost, first);

    const known = options.providers;
    const lookups = await Promise.all(
      Array.from({ length: count }, (_, i) => {
        const k = known?.get(first + i);
        return k ? [...k] : this.findProviders(ghost.digest, first + i, { timeoutMs: options.findTimeoutMs ?? 5_000, max: options.maxProviders ?? 20 });
      }),
    );
    const providers = new Map<number, string[]>(lookups.map((p, i) => [first + i, p]));
    const excluded = new Set(options.exclude ?? []);
    const prefer = options.prefer ?? [];
    const droppedPeers = new Set<string>();
    const dropped: DroppedPeer[] = [];
    const hops: Hop[] = [];
    const spanOf = (peer: string, from: number): number => {
      let s = 0;
      while (from + s < end && providers.get(from + s)!.includes(peer)) s++;
      return s;
    };

    let li = first;
    while (li < end) {
      const rank = (p: string): number => (prefer.includes(p) ? prefer.indexOf(p) : prefer.length);
      const candidates = providers
        .get(li)!
        .filter((p) => !droppedPeers.has(p) && !excluded.has(p))
        .map((p, i) => ({ p, i, span: spanOf(p, li) }))
        .sort((a, b) => rank(a.p) - rank(b.p) || b.span - a.span || a.i - b.i);
      const t0 = performance.now();
      const hopDropped: DroppedPeer[] = [];
      let done = false;
      for (const { p, span } of candidates) {
        const requestId = (Math.random() * 2 ** 32) >>> 0;
        const timeoutMs = options.timeoutMs ?? 30_000;
        const started = performance.now();
        try {
          const res = await this.request(p, { requestId, ghost: ghost.digest, firstLayer: li, layers: span, input: x }, {
            timeoutMs,
            ...(options.maxResponseBytes === undefined ? {} : { maxResponseBytes: options.maxResponseBytes }),
          });
          if (res.requestId !== requestId) throw new Error(`the response is for request ${res.requestId}, not ${requestId}`);
          if (res.status !== 'OK') {
            this.#drop(p, li, { kind: 'status', status: res.status, message: res.reason }, droppedPeers, dropped, hopDropped);
            continue;
          }
          const v = await this.#check(ghost, res.proof, li, span, x, limits);
          x = { kind: 'f32', rows: v.rows, cols: v.cols, data: v.output };
          hops.push({ peer: p, firstLayer: li, layers: span, proofBytes: res.proof.length, ms: performance.now() - t0, dropped: hopDropped });
          li += span;
          done = true;
          break;
        } catch (err) {
          this.#drop(p, li, dropOf(err, performance.now() - started >= timeoutMs), droppedPeers, dropped, hopDropped);
        }
      }
      if (!done) {
        const partial: P2PForwardResult = { output: new Float32Array(0), rows: 0, cols: 0, hops, dropped };
        const found = providers.get(li)!.length;
        throw new P2PForwardError(`layer ${li}: ${found === 0 ? 'no provider found on the DHT' : `all ${found} providers failed or were excluded`}`, partial);
      }
    }
    if (x.kind !== 'f32') throw new P2PForwardError('no layer was run', { output: new Float32Array(0), rows: 0, cols: 0, hops, dropped });
    return { output: x.data, rows: x.rows, cols: x.cols, hops, dropped };
  }

  #drop(peer: string, layer: number, why: DropReason, set: Set<string>, all: DroppedPeer[], hop: DroppedPeer[]): void {
    const d: DroppedPeer = { peer, layer, why };
    set.add(peer);
    all.push(d);
    hop.push(d);
  }

  /** The first span's input in the frame form, checked against the first layer. */
  #input(input: Float32Array | Uint32Array | readonly number[], ghost: PinnedGhost, first: number): ProofInput {
    const l = layerInput(ghost.manifest, first);
    if (l.kind === 'ids') {
      const ids = toIds('input', input).slice(); // integers in 0..2^32-1 (a Uint32Array or an array of them)
      if (ids.length === 0 || ids.length > FRAME_LIMITS.rows) throw new InvalidArgumentError(`input: layer ${first} (embedding) takes 1..${FRAME_LIMITS.rows} ids`);
      const n = l.n;
      const i = ids.findIndex((id) => id >= n);
      if (i >= 0) throw new OutOfRangeError(`input[${i}] = ${ids[i]} is beyond the ${n} rows of layer ${first}'s table`);
      return { kind: 'ids', ids };
    }
    if (!(input instanceof Float32Array) || input.length === 0 || input.length % l.cols !== 0 || input.length / l.cols > FRAME_LIMITS.rows) {
      throw new InvalidArgumentError(`input: layer ${first} takes a Float32Array of 1..${FRAME_LIMITS.rows} rows of ${l.cols}`);
    }
    const bad = input.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new NonFiniteError(`input[${bad}] is not finite`);
    return { kind: 'f32', rows: input.length / l.cols, cols: l.cols, data: input.slice() };
  }

  /** The client's checks of one hop, then verifyForward: throws ProofError / FormatError. */
  async #check(ghost: PinnedGhost, bytes: Uint8Array, first: number, layers: number, sent: ProofInput, limits: VerifierLimits) {
    // Decoding checks the blocks against the pinned file and the limits as it reads.
    const p = decodeProof(bytes, { ghost, kind: 'forward', limits });
    if (p.kind !== 'forward') throw new ProofError('WRONG_KIND', 'the peer answered with an update proof');
    if (!bytesEqual(p.ghost, ghost.digest)) throw new ProofError('GHOST_MISMATCH', 'the proof is for another Ghost file than the pinned one');
    if (p.firstLayer !== first || p.layers.length !== layers) {
      throw new ProofError('LAYER_MISMATCH', `the proof covers layers ${p.firstLayer}..${p.firstLayer + p.layers.length - 1}; ${first}..${first + layers - 1} were asked for`);
    }
    if (!sameInput(p.input, sent)) throw new ProofError('INPUT_MISMATCH', 'the proof starts from another input than the one sent');
    return verifyForward(ghost, bytes, { limits });
  }
}

export { FrameReadError };
