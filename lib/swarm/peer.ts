/**
 * A peer of a training swarm (docs/swarm.md): untrusted peers train one model over
 * libp2p. Trainers propose step proofs on their own data (gossipsub topic `steps`); one
 * configured sequencer verifies each and orders the accepted ones into a log (topic
 * `log`, generation g -> g + 1); every peer verifies every log entry (verifyTrainStep)
 * against the Ghost file of its generation before applying it, and fetches entries it
 * missed over `/ghost-tensor/swarm/log/1.0.0`. Stale steps (made at a generation the log
 * has passed) are not sequenced; invalid ones are rejected, their sender scored down
 * (gossipsub's invalid-message penalty, and a local strike count) and disconnected.
 *
 * A peer that holds a model applies a verified step by replaying it: proveTrainStep on
 * the step's own batch (the step is deterministic), then its digest must equal the
 * verified one.
 */
import { closeSync, existsSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { Connection, PeerId, Stream } from '@libp2p/interface';
import type { GossipSub, Message, TopicValidatorResult as TVR } from '@libp2p/gossipsub';

import { bytesEqual } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError, P2PError, ProofError, StorageError } from '../shared/errors.js';
import { Model } from '../model/model.js';
import { stepBatchOf, type StepBatch } from '../model/train/step-training.js';
import { decodeProof, type StepProof } from '../verify/proof-format.js';
import { pinGhost, type PinnedGhost } from '../verify/proof-verify.js';
import { verifyTrainStep, type VerifiedStep } from '../verify/step.js';
import { FrameReadError, createHost, deadlineSignal, readFrame, toPeerId, writeFrame, type GhostLibp2p, type HostOptions } from '../p2p/host.js';
import { loadHasher } from '../verify/merkle.js';
import {
  CHECKPOINT_FILE_NAME, CHECKPOINT_LIMITS, SWARM_CHECKPOINT_PROTOCOL, decodeCheckpointRequest, decodeCheckpointResponse, encodeCheckpointRequest, encodeCheckpointResponse,
  type CheckpointFile, type CheckpointRequest, type CheckpointResponse,
  SWARM_LIMITS, SWARM_LOG_PROTOCOL, decodeLogAnnouncement, decodeLogEntry, encodeLogAnnouncement, isLogAnnouncement, decodeLogRequest, decodeLogResponse, decodeStepMessage,
  encodeLogEntry, encodeLogRequest, encodeLogResponse, encodeStepMessage, swarmTopics, type LogEntry, type LogHeader, type LogResponse,
} from './frames.js';

export interface SwarmOptions extends HostOptions {
  /** Digest of the swarm's generation-0 Ghost file: the swarm's identity (its topics). */
  genesis: Uint8Array;
  /** Peer id of the sequencer, or 'self' for the sequencer itself: the one-item shorthand of `sequencers`. */
  sequencer?: string;
  /**
   * The sequencers in order of takeover (peer ids, 'self' for this peer). The first
   * sequences; a peer moves to the next when the current one is silent for `takeoverMs`
   * while a proposal at the head waits, is caught forging (a log entry that does not
   * verify) or equivocating (two signed entries for one generation), or when a later
   * one's entry verifies at its head.
   */
  sequencers?: string[];
  /** How long a proposal at the head may wait for the current sequencer before a peer moves to the next, ms (default 10 000). */
  takeoverMs?: number;
  /** A replica of the model at a generation of the chain (the genesis model, or one loaded from the peer's own directory). Needed to propose steps. */
  model?: Model;
  /** Without a model (a verify-only peer): the Ghost file it starts from (the genesis one). */
  ghost?: PinnedGhost;
  /** Invalid messages a peer may send before it is disconnected and refused (default 1). */
  maxStrikes?: number;
  /** One fetch of log entries (dial, request, response), ms (default 10 000). */
  fetchTimeoutMs?: number;
  /** When the connection to the sequencer closes: wait between dials back, ms (default 500). Then catchUp(). */
  redialMs?: number;
  /**
   * A file the peer appends each entry to, fsynced before the entry is applied (and, at
   * the sequencer, published). At start its entries from the peer's generation on are
   * verified and applied again; a torn last record (a crash during an append) is cut off.
   */
  logFile?: string;
  /**
   * Sequencer: what it publishes on `log` for each entry: the whole entry (default), or
   * only its digest ('digest'): peers then fetch the proof from the peer that forwarded
   * the announcement (which holds it: it validated it first), or the sequencer. A step
   * then crosses the network about once per peer instead of once per gossipsub link.
   */
  announce?: 'entry' | 'digest';
  /**
   * How catchUp() joins (default 0): 0 fetches and verifies every log entry from the
   * peer's generation; 'checkpoint' first fetches a recent checkpoint (the Ghost file, the
   * tensor files and the optimizer state) from a peer, checks that its Ghost digest is on
   * the chain the sequencer's log entries name (their headers, not re-verified) and every
   * root against the fetched bytes (Model.load), then verifies the log from there.
   */
  verifyFrom?: 0 | 'checkpoint';
  /** Where fetched checkpoints are written (a directory per checkpoint; default a temporary directory removed by stop()). */
  checkpointDir?: string;
  /** Bytes a fetched checkpoint may have in all (checked on its file list before any is fetched; default 4 GiB). */
  maxCheckpointBytes?: number;
  /** One checkpoint fetch in all (file list, chunks), ms (default 120 000). */
  checkpointTimeoutMs?: number;
}

/** A move to the next sequencer (SwarmPeer.takeovers). */
export interface SwarmTakeover {
  /** The sequencer replaced, and the one now followed. */
  from: string;
  to: string;
  /** This peer's generation when it moved. */
  generation: number;
  reason: string;
}

/** One sequencer's signed gossipsub message (topic `log`), as received: checkable by anyone with its public key. */
export interface SignedLogMessage {
  from: string;
  topic: string;
  data: Uint8Array;
  sequenceNumber: bigint;
  signature: Uint8Array;
}

/** Evidence of equivocation: two different entries for one generation, both signed by `sequencer`. */
export interface SwarmEquivocation {
  sequencer: string;
  generation: number;
  messages: [SignedLogMessage, SignedLogMessage];
}

/** catchUp()'s options. */
export interface CatchUpOptions {
  /** Overrides SwarmOptions.verifyFrom for this call. */
  verifyFrom?: 0 | 'checkpoint';
  /** Peers to ask for a checkpoint, in order (default: every connected peer, the sequencer last). */
  checkpointPeers?: string[];
}

/** A checkpoint this peer serves: a Model.save of its replica at `generation`. */
interface Snapshot {
  generation: number;
  digest: Uint8Array;
  root: string;
  dir: string;
  files: CheckpointFile[];
}

/** Why a message was refused (SwarmPeer.events). */
export interface SwarmRejection {
  peer: string;
  topic: 'steps' | 'log' | 'fetch' | 'checkpoint';
  reason: string;
}

export interface SwarmStats {
  /** Steps this peer verified (log entries, and proposals at the sequencer). */
  verified: number;
  /** Log entries applied. */
  applied: number;
  /** Proposals passed over as stale (sequencer). */
  stale: number;
  /** Messages rejected (invalid step, forged entry, bad fetch answer). */
  rejected: number;
  /** Log entries fetched over the request/response protocol. */
  fetched: number;
  /** Checkpoints fetched, checked and installed (catchUp with verifyFrom 'checkpoint'). */
  checkpoints: number;
  /** Payload bytes of gossipsub messages received (before dedup by gossipsub: those that reached validation) and of fetch responses. */
  bytesIn: number;
  /** Payload bytes this peer published (times the peers gossipsub sent each message to) and answered. */
  bytesOut: number;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** Proposal outcome: accepted into the log at `generation`, or passed over (another step took that generation first). */
export interface ProposeResult {
  accepted: boolean;
  generation: number;
  proof: Uint8Array;
  loss: number;
  /** performance.now() when the step proof was made, before it was sent (for latency measured in one process). */
  provedAt: number;
}

export class SwarmPeer {
  readonly libp2p: GhostLibp2p;
  readonly genesis: Uint8Array;
  /** The configured sequencers, in order of takeover ('self' resolved to this peer's id). */
  readonly sequencers: readonly string[];
  /** Moves to the next sequencer this peer made, in order. */
  readonly takeovers: SwarmTakeover[] = [];
  /** Sequencers caught signing two different entries for one generation, with the two signed messages. */
  readonly equivocations: SwarmEquivocation[] = [];
  #seqIndex = 0;
  readonly #takeoverMs: number;
  /** When a proposal at the head was first made or seen and not yet sequenced (ms). */
  #waitingSince: number | undefined;
  /** A standby sequencer: proposals at its head it saw while another sequenced (it sequences them when it takes over). */
  #held: { from: PeerId; proof: Uint8Array }[] = [];
  /** The signed log message each entry came in (entries received on gossipsub). */
  readonly #signed = new Map<number, SignedLogMessage>();
  #timer: ReturnType<typeof setInterval> | undefined;
  readonly topics: { steps: string; log: string };
  /** The last checkpoint this peer installed (verifyFrom 'checkpoint'): its generation, Ghost digest and the peer that served it. */
  lastCheckpoint: { generation: number; digest: Uint8Array; from: string } | undefined;
  readonly stats: SwarmStats = { verified: 0, applied: 0, stale: 0, rejected: 0, fetched: 0, checkpoints: 0, bytesIn: 0, bytesOut: 0 };
  readonly rejections: SwarmRejection[] = [];
  /** Peers disconnected and refused for misbehaviour. */
  readonly banned: Set<string>;
  readonly #strikes = new Map<string, number>();
  readonly #maxStrikes: number;
  readonly #fetchTimeoutMs: number;
  /** Entries held, by generation (from the peer's first generation on). */
  readonly #log = new Map<number, Uint8Array>();
  /** Ghost digest (hex) at each generation this peer has passed. */
  readonly #digests = new Map<number, string>();
  #head: PinnedGhost;
  #model: Model | undefined;
  /** The proposer's scratch replica: clean at #scratchGen, or at #scratchGen + 1 after its pending proposal. */
  #scratch: Model | undefined;
  #scratchGen = -1;
  #pending: Uint8Array | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #waiters: (() => void)[] = [];
  #stopped = false;
  #requestId = 1;
  #V!: typeof TVR;
  #logFd: number | undefined;
  #redialing = false;
  readonly #redialMs: number;
  readonly #announce: 'entry' | 'digest';
  readonly #verifyFrom: 0 | 'checkpoint';
  readonly #checkpointDir: string | undefined;
  readonly #maxCheckpointBytes: number;
  readonly #checkpointTimeoutMs: number;
  /** Checkpoints served (the newest last; two kept so a fetch under way survives one step). */
  readonly #snapshots: Snapshot[] = [];
  /** Directories this peer created for fetched checkpoints (removed by stop() unless under checkpointDir). */
  readonly #tempDirs: string[] = [];

  private constructor(libp2p: GhostLibp2p, options: SwarmOptions, head: PinnedGhost, banned: Set<string>) {
    this.libp2p = libp2p;
    this.banned = banned;
    this.genesis = options.genesis;
    const self = libp2p.peerId.toString();
    this.sequencers = (options.sequencers ?? [options.sequencer!]).map((p) => (p === 'self' ? self : p));
    this.#takeoverMs = options.takeoverMs ?? 10_000;
    this.topics = swarmTopics(options.genesis);
    this.#maxStrikes = options.maxStrikes ?? 1;
    this.#fetchTimeoutMs = options.fetchTimeoutMs ?? 10_000;
    this.#redialMs = options.redialMs ?? 500;
    if (options.announce !== undefined && options.announce !== 'entry' && options.announce !== 'digest') throw new InvalidArgumentError("announce must be 'entry' or 'digest'");
    this.#announce = options.announce ?? 'entry';
    if (options.verifyFrom !== undefined && options.verifyFrom !== 0 && options.verifyFrom !== 'checkpoint') throw new InvalidArgumentError("verifyFrom must be 0 or 'checkpoint'");
    this.#verifyFrom = options.verifyFrom ?? 0;
    this.#checkpointDir = options.checkpointDir;
    this.#maxCheckpointBytes = options.maxCheckpointBytes ?? 4 * 2 ** 30;
    this.#checkpointTimeoutMs = options.checkpointTimeoutMs ?? 120_000;
    this.#head = head;
    this.#model = options.model;
    this.#digests.set(this.generation, hex(head.digest));
  }

  /** Starts a peer: joins the swarm's topics and serves its log. Call catchUp() to fetch what it missed. */
  static async start(options: SwarmOptions): Promise<SwarmPeer> {
    if (!(options.genesis instanceof Uint8Array) || options.genesis.length !== 32) throw new InvalidArgumentError('genesis must be a 32-byte Ghost digest');
    const list = options.sequencers ?? (options.sequencer === undefined ? [] : [options.sequencer]);
    if (options.sequencers !== undefined && options.sequencer !== undefined && !(options.sequencers.length === 1 && options.sequencers[0] === options.sequencer)) throw new InvalidArgumentError('give sequencer or sequencers, not both');
    if (!Array.isArray(list) || list.length === 0 || list.length > 64 || list.some((p) => typeof p !== 'string' || p.length === 0) || new Set(list).size !== list.length) {
      throw new InvalidArgumentError('sequencer must be a peer id, or sequencers a list of 1..64 different peer ids');
    }
    if (options.takeoverMs !== undefined && !(Number.isFinite(options.takeoverMs) && options.takeoverMs > 0)) throw new InvalidArgumentError('takeoverMs must be a positive number');
    const head = options.model ? await options.model.ghost() : options.ghost;
    if (!head) throw new InvalidArgumentError('a swarm peer needs a model or a Ghost file to start from');
    if (!head.manifest.training) throw new InvalidArgumentError('the model commits no training rule (new Model(layers, { training }))');
    const banned = new Set<string>();
    const [{ gossipsub, TopicValidatorResult }, { createTopicScoreParams }] = await Promise.all([import('@libp2p/gossipsub'), import('@libp2p/gossipsub/score')]);
    const topics = swarmTopics(options.genesis);
    // Every invalid message costs its sender 100 points (squared count x weight), under
    // the graylist threshold (-80): gossipsub then ignores it; a banned peer's
    // application score keeps it there. All peers of a test share 127.0.0.1, so the
    // IP-colocation penalty is off.
    const topic = createTopicScoreParams({ topicWeight: 1, invalidMessageDeliveriesWeight: -100, invalidMessageDeliveriesDecay: 0.99, timeInMeshWeight: 0, firstMessageDeliveriesWeight: 0, meshMessageDeliveriesWeight: 0, meshFailurePenaltyWeight: 0 });
    const pubsub = gossipsub({
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      scoreParams: {
        IPColocationFactorWeight: 0,
        appSpecificScore: (p: string) => (banned.has(p) ? -1e6 : 0),
        appSpecificWeight: 1,
        topics: { [topics.steps]: topic, [topics.log]: topic },
      },
      maxInboundDataLength: SWARM_LIMITS.proofBytes + 1024,
    });
    const gate = (p: PeerId): boolean => banned.has(p.toString());
    const host = await createHost(options, true, {
      services: { pubsub: pubsub as (components: never) => unknown },
      connectionGater: { denyDialPeer: gate, denyInboundEncryptedConnection: gate, denyOutboundEncryptedConnection: gate },
    });
    const peer = new SwarmPeer(host, options, head, banned);
    host.addEventListener('peer:disconnect', (e) => {
      if (e.detail.toString() === peer.sequencer && !peer.isSequencer) void peer.#redial();
    });
    peer.#V = TopicValidatorResult;
    const ps = peer.#pubsub;
    ps.topicValidators.set(topics.log, (from, msg) => peer.#onLog(from, msg));
    ps.subscribe(topics.log);
    if (peer.sequencers.includes(peer.peerId)) {
      ps.topicValidators.set(topics.steps, (from, msg) => peer.#onStep(from, msg));
      ps.subscribe(topics.steps);
    }
    if (peer.sequencers.length > 1) {
      peer.#timer = setInterval(() => peer.#tick(), Math.max(25, Math.min(1000, peer.#takeoverMs / 4)));
      peer.#timer.unref();
    }
    try {
      if (options.logFile !== undefined) await peer.#openLog(options.logFile);
    } catch (err) {
      await host.stop();
      throw err;
    }
    await host.handle(SWARM_LOG_PROTOCOL, (stream, conn) => peer.#serve(stream, conn), { maxInboundStreams: 16 });
    await host.handle(SWARM_CHECKPOINT_PROTOCOL, (stream) => peer.#serveCheckpoint(stream), { maxInboundStreams: 8 });
    return peer;
  }

  get #pubsub(): GossipSub {
    return (this.libp2p.services as unknown as { pubsub: GossipSub }).pubsub;
  }

  get peerId(): string {
    return this.libp2p.peerId.toString();
  }

  get multiaddrs(): string[] {
    return this.libp2p.getMultiaddrs().map(String);
  }

  /** The sequencer this peer follows now (the first of `sequencers` until a takeover). */
  get sequencer(): string {
    return this.sequencers[this.#seqIndex]!;
  }

  get isSequencer(): boolean {
    return this.peerId === this.sequencer;
  }

  /** The Ghost file at the peer's current generation (every step before it verified). */
  get head(): PinnedGhost {
    return this.#head;
  }

  /** The generation: the Ghost file's training step count. */
  get generation(): number {
    return this.#head.manifest.training!.step;
  }

  /** The replica of the model this peer holds (undefined for a verify-only peer). */
  get model(): Model | undefined {
    return this.#model;
  }

  /** The log entries this peer holds, ascending. */
  entries(): LogEntry[] {
    return [...this.#log.entries()].sort((a, b) => a[0] - b[0]).map(([generation, proof]) => ({ generation, proof }));
  }

  /** gossipsub's score of a peer (misbehaviour drives it below the graylist threshold). */
  score(peer: string): number {
    return (this.#pubsub as unknown as { getScore(p: string): number }).getScore(peer);
  }

  /** Resolves when the gossipsub subscriptions needed to propose (the sequencer's `steps`) or follow are known. */
  async ready(timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    const ok = (): boolean => this.isSequencer || this.#pubsub.getSubscribers(this.topics.steps).some((p) => p.toString() === this.sequencer);
    while (!ok()) {
      if (Date.now() > until) throw new P2PError('NO_PEER', 'the sequencer is not subscribed to the steps topic of any connected peer');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Resolves when the peer reaches `generation` (P2PError TIMEOUT after timeoutMs). */
  async waitFor(generation: number, timeoutMs = 30_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (this.generation < generation) {
      if (Date.now() > until) throw new P2PError('TIMEOUT', `still at generation ${this.generation}, waiting for ${generation}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50);
        this.#waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /**
   * Makes a step proof on `batch` against the current generation and proposes it to the
   * sequencer; resolves once the log has passed that generation: accepted when the
   * entry there is this proof, passed over (stale) otherwise. Needs a model and waits
   * (ready()) until gossipsub knows the sequencer's subscription to `steps`.
   */
  async propose(batch: StepBatch | readonly StepBatch[], options: { timeoutMs?: number } = {}): Promise<ProposeResult> {
    if (!this.#model) throw new InvalidArgumentError('a verify-only peer cannot propose steps (start it with a model)');
    // With a standby after the current sequencer, wait for the current one only takeoverMs: if it is unreachable (a
    // partition, a crash), the proposal goes to a standby that gossipsub knows (it keeps proposals at its head), and
    // the silence moves this peer, and the standby, on after takeoverMs (#tick).
    const standby = this.#seqIndex + 1 < this.sequencers.length;
    try {
      await this.ready(standby ? this.#takeoverMs : undefined);
    } catch (err) {
      const later = this.#pubsub.getSubscribers(this.topics.steps).some((p) => this.sequencers.indexOf(p.toString()) > this.#seqIndex);
      if (!standby || !later) throw err;
    }
    const made = await this.#serial(async () => {
      const scratch = await this.#scratchAtHead();
      const g = this.generation;
      const step = await scratch.proveTrainStep(batch);
      const provedAt = performance.now();
      this.#pending = step.bytes;
      if (!bytesEqual(step.proof.ghost, this.#head.digest)) throw new Error(`internal: the scratch replica is not at the head (generation ${g})`);
      return { g, step, provedAt };
    });
    const { g, step, provedAt } = made;
    if (this.isSequencer) {
      await this.#serial(() => this.#sequence(this.libp2p.peerId, step.bytes));
    } else {
      const data = encodeStepMessage(step.bytes);
      this.#waitingSince ??= Date.now();
      const sent = await this.#pubsub.publish(this.topics.steps, data);
      this.stats.bytesOut += data.length * Math.max(1, sent.recipients.length);
    }
    await this.waitFor(g + 1, options.timeoutMs ?? 30_000);
    const entry = this.#log.get(g);
    return { accepted: entry !== undefined && bytesEqual(entry, step.bytes), generation: g, proof: step.bytes, loss: step.loss, provedAt };
  }

  /**
   * Fetches and applies, each verified, the entries from this peer's generation on, from
   * `from` (a peer id; default the sequencer, then any connected peer) until that peer
   * has none newer. Returns the generation reached.
   */
  async catchUp(from?: string, options: CatchUpOptions = {}): Promise<number> {
    return this.#serial(async () => {
      if ((options.verifyFrom ?? this.#verifyFrom) === 'checkpoint' && !this.isSequencer) {
        const others = this.libp2p.getPeers().map(String).filter((p) => p !== this.sequencer);
        await this.#joinByCheckpoint(options.checkpointPeers ?? [...(from ? [from] : []), ...others, this.sequencer]);
      }
      const candidates = from ? [from] : [this.sequencer, ...this.libp2p.getPeers().map(String).filter((p) => p !== this.sequencer)];
      for (const p of candidates) {
        if (p === this.peerId || this.banned.has(p)) continue;
        try {
          await this.#fetchFrom(p, Infinity);
          return this.generation;
        } catch (err) {
          if (from) throw err;
        }
      }
      if (candidates.length > 0 && !from) throw new P2PError('NO_PEER', 'no peer answered a log request');
      return this.generation;
    });
  }

  /** Saves the peer's replica to a new directory (Model.save: tensors, Ghost file, optimizer state); restart with Model.load and { model }. */
  async save(dir: string): Promise<PinnedGhost> {
    if (!this.#model) throw new InvalidArgumentError('a verify-only peer holds no model to save');
    return this.#serial(() => this.#model!.save(dir));
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    await this.libp2p.stop();
    await this.#queue;
    if (this.#logFd !== undefined) closeSync(this.#logFd);
    this.#logFd = undefined;
    this.#scratch?.close();
    this.#scratch = undefined;
    for (const s of this.#snapshots.splice(0)) rmSync(s.root, { recursive: true, force: true });
    for (const d of this.#tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
  }

  // --- internals -------------------------------------------------------------------

  /**
   * The sequencer went away: dial it back at the addresses the peer store holds (every
   * `redialMs`, until it answers, the peer stops or bans it), then fetch what was missed.
   */
  async #redial(): Promise<void> {
    if (this.#redialing) return;
    this.#redialing = true;
    try {
      const target = this.sequencer;
      const id = await toPeerId(target);
      while (!this.#stopped && !this.banned.has(target) && this.sequencer === target) {
        await new Promise((r) => setTimeout(r, this.#redialMs));
        if (this.#stopped) return;
        if (this.libp2p.getConnections(id).length > 0) break;
        try {
          await this.libp2p.dial(id, { signal: AbortSignal.timeout(this.#fetchTimeoutMs) });
          break;
        } catch {
          // not back yet
        }
      }
      if (!this.#stopped && !this.banned.has(target) && this.sequencer === target) {
        await this.catchUp(target).catch(() => {});
        // A proposal sent before the sequencer went away may never have reached it: send it again.
        const pending = this.#pending;
        if (pending !== undefined && this.#scratchGen === this.generation && !this.#stopped) {
          await this.ready()
            .then(() => (this.#stopped || this.#pending !== pending ? undefined : this.#pubsub.publish(this.topics.steps, encodeStepMessage(pending))))
            .catch(() => {});
        }
      }
    } finally {
      this.#redialing = false;
    }
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => {});
    return run;
  }

  #strike(peer: string, topic: SwarmRejection['topic'], reason: string): void {
    this.stats.rejected++;
    this.rejections.push({ peer, topic, reason });
    const n = (this.#strikes.get(peer) ?? 0) + 1;
    this.#strikes.set(peer, n);
    if (n >= this.#maxStrikes && !this.banned.has(peer)) {
      this.banned.add(peer);
      void toPeerId(peer).then((id) => this.libp2p.hangUp(id)).catch(() => {});
      if (peer === this.sequencer && !this.isSequencer) void this.#advance(`the sequencer was caught: ${reason}`);
    }
  }

  /** A replica at the head to propose on: the scratch one when it is clean there, else a copy of the model (save and load). */
  async #scratchAtHead(): Promise<Model> {
    if (this.#scratch && this.#scratchGen === this.generation && this.#pending === undefined) return this.#scratch;
    this.#scratch?.close();
    const tmp = mkdtempSync(join(tmpdir(), 'gt-swarm-'));
    try {
      await this.#model!.save(join(tmp, 'm'));
      this.#scratch = (await Model.load(join(tmp, 'm'), { expectDigest: this.#head.digest })).model;
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    this.#scratchGen = this.generation;
    this.#pending = undefined;
    return this.#scratch;
  }

  // --- checkpoints ---------------------------------------------------------------

  /** The checkpoint this peer serves: a save of its replica at the head (made again once the head moved). */
  async #snapshot(): Promise<Snapshot | undefined> {
    if (!this.#model || this.#stopped) return undefined;
    return this.#serial(async () => {
      const last = this.#snapshots.at(-1);
      if (last && last.generation === this.generation) return last;
      const root = mkdtempSync(join(tmpdir(), 'gt-swarm-cp-'));
      try {
        const dir = join(root, 'm');
        const ghost = await this.#model!.save(dir);
        const names = [...readdirSync(dir), ...readdirSync(join(dir, 'tensors')).map((f) => `tensors/${f}`)].filter((n) => CHECKPOINT_FILE_NAME.test(n));
        names.sort((a, b) => (a === 'ghost.bin' ? -1 : b === 'ghost.bin' ? 1 : a < b ? -1 : a > b ? 1 : 0));
        const files = names.map((name) => {
          const fd = openSync(join(dir, name), 'r');
          try {
            return { name, size: fstatSync(fd).size };
          } finally {
            closeSync(fd);
          }
        });
        const snap: Snapshot = { generation: this.generation, digest: ghost.digest, root, dir, files };
        this.#snapshots.push(snap);
        while (this.#snapshots.length > 2) rmSync(this.#snapshots.shift()!.root, { recursive: true, force: true });
        return snap;
      } catch (err) {
        rmSync(root, { recursive: true, force: true });
        throw err;
      }
    });
  }

  /** Answers one checkpoint request: the latest checkpoint's file list, or a chunk of one of its files. */
  async #serveCheckpoint(stream: Stream): Promise<void> {
    const hard = setTimeout(() => stream.abort(new Error('ghost-tensor swarm: stream deadline')), 30_000);
    hard.unref();
    stream.addEventListener('close', () => clearTimeout(hard), { once: true });
    try {
      let res: CheckpointResponse;
      try {
        const q = decodeCheckpointRequest(await readFrame(stream, CHECKPOINT_LIMITS.requestBytes, 10_000));
        const notHeld: CheckpointResponse = q.what === 'list'
          ? { requestId: q.requestId, status: 'NOT_HELD', what: 'list', generation: this.generation, digest: this.#head.digest, files: [] }
          : { requestId: q.requestId, status: 'NOT_HELD', what: 'chunk', bytes: new Uint8Array(0) };
        if (!bytesEqual(q.genesis, this.genesis)) res = { ...notHeld, status: 'WRONG_SWARM' };
        else if (q.what === 'list') {
          const snap = await this.#snapshot();
          res = snap ? { requestId: q.requestId, status: 'OK', what: 'list', generation: snap.generation, digest: snap.digest, files: snap.files } : notHeld;
        } else {
          const snap = this.#snapshots.find((x) => bytesEqual(x.digest, q.digest));
          const f = snap?.files[q.file];
          if (!snap || !f) res = notHeld;
          else if (q.offset >= f.size) res = { ...notHeld, status: 'MALFORMED' };
          else {
            const n = Math.min(q.length, f.size - q.offset);
            const bytes = new Uint8Array(n);
            const fd = openSync(join(snap.dir, f.name), 'r');
            try {
              for (let at = 0; at < n; ) {
                const k = readSync(fd, bytes, at, n - at, q.offset + at);
                if (k === 0) throw new Error('internal: a checkpoint file is shorter than listed');
                at += k;
              }
            } finally {
              closeSync(fd);
            }
            res = { requestId: q.requestId, status: 'OK', what: 'chunk', bytes };
          }
        }
      } catch (err) {
        if (!(err instanceof FormatError) && !(err instanceof FrameReadError)) throw err;
        res = { requestId: 0, status: 'MALFORMED', what: 'chunk', bytes: new Uint8Array(0) };
      }
      const signal = deadlineSignal(30_000);
      const out = encodeCheckpointResponse(res);
      this.stats.bytesOut += out.length;
      await writeFrame(stream, out, signal);
      await stream.close({ signal });
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
    }
  }

  async #checkpointRequest(peer: string, q: CheckpointRequest, signal: AbortSignal): Promise<CheckpointResponse> {
    const stream = await this.libp2p.dialProtocol(await toPeerId(peer), SWARM_CHECKPOINT_PROTOCOL, { signal: deadlineSignal(this.#fetchTimeoutMs, signal) });
    try {
      await writeFrame(stream, encodeCheckpointRequest(q), signal);
      await stream.close({ signal });
      const payload = await readFrame(stream, CHECKPOINT_LIMITS.responseBytes, this.#fetchTimeoutMs);
      this.stats.bytesIn += payload.length;
      const res = decodeCheckpointResponse(payload);
      if (res.requestId !== q.requestId || res.what !== q.what) throw new FormatError('BAD_VALUE', 'a response to another request');
      return res;
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      if (err instanceof FormatError) this.#strike(peer, 'checkpoint', err.message);
      throw err;
    }
  }

  /**
   * The Ghost digests of the chain from this peer's generation to `until`, as the
   * sequencer's log entries name them: each entry's proof header names the Ghost file
   * it was made against and the one after it (the steps are not verified here). Null
   * when the sequencer cannot be asked or answers a broken chain (its entries are then
   * not trusted for this); 'short' when the sequencer's log ends before `until`.
   */
  async #chainTo(until: number, known: Map<number, string>): Promise<Map<number, string> | 'short' | null> {
    if (this.isSequencer || this.banned.has(this.sequencer)) return null;
    let g = Math.max(...[...known.keys()].filter((k) => k >= this.generation));
    try {
      while (g < until) {
        // Headers only (72 bytes an entry): the steps are not verified here either way.
        const res = await this.#request(this.sequencer, g, Math.min(SWARM_LIMITS.entries, until - g), true);
        const headers = res.headers ?? [];
        if (res.status === 'OK' && headers.length === 0 && res.head <= g) return 'short';
        if (res.status !== 'OK' || headers.length === 0) return null;
        for (const h of headers) {
          if (h.generation !== g) return null;
          if (hex(h.ghost) !== known.get(g)) {
            this.#strike(this.sequencer, 'fetch', `the log entry of generation ${g} does not continue the chain`);
            return null;
          }
          known.set(g + 1, hex(h.newGhost));
          g++;
          if (g >= until) break;
        }
      }
      return known;
    } catch {
      return null;
    }
  }

  /**
   * Joins by a checkpoint: asks `candidates` in order for their latest checkpoint, and
   * installs the first that is ahead of this peer, on the chain (#chainTo) and whose
   * files load (Model.load with the chain's digest: every tensor root, the optimizer
   * state root and the Ghost file checked against the fetched bytes). A peer serving a
   * checkpoint off the chain or with damaged files is struck. Returns whether one was
   * installed; catchUp() then verifies the log from there.
   */
  async #joinByCheckpoint(candidates: string[]): Promise<boolean> {
    const known = new Map<number, string>([[this.generation, hex(this.#head.digest)]]);
    const deadline = deadlineSignal(this.#checkpointTimeoutMs);
    const tried = new Set<string>();
    for (const p of candidates) {
      if (p === this.peerId || this.banned.has(p) || tried.has(p) || deadline.aborted) continue;
      tried.add(p);
      let list: CheckpointResponse;
      try {
        list = await this.#checkpointRequest(p, { requestId: this.#requestId++ >>> 0, genesis: this.genesis, what: 'list' }, deadline);
      } catch {
        continue;
      }
      if (list.what !== 'list' || list.status !== 'OK' || list.generation <= this.generation) continue;
      const c = list.generation;
      const chain = await this.#chainTo(c, known);
      if (chain === null) return false; // the chain cannot be checked: catchUp() replays the log instead
      if (chain === 'short') {
        this.#strike(p, 'checkpoint', `a checkpoint at generation ${c}, beyond the end of the sequencer's log`);
        continue;
      }
      if (chain.get(c) !== hex(list.digest)) {
        this.#strike(p, 'checkpoint', `a checkpoint at generation ${c} whose Ghost file is not the log's there`);
        continue;
      }
      const total = list.files.reduce((a, f) => a + f.size, 0);
      const ghostFile = list.files.findIndex((f) => f.name === 'ghost.bin');
      if (ghostFile < 0 || total > this.#maxCheckpointBytes) {
        this.#strike(p, 'checkpoint', ghostFile < 0 ? 'a checkpoint without its Ghost file' : `a checkpoint of ${total} bytes (at most ${this.#maxCheckpointBytes})`);
        continue;
      }
      const root = this.#checkpointDir ?? mkdtempSync(join(tmpdir(), 'gt-swarm-join-'));
      const dir = join(root, `generation-${c}-${hex(list.digest).slice(0, 16)}`);
      if (this.#checkpointDir === undefined) this.#tempDirs.push(root);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(join(dir, 'tensors'), { recursive: true });
      const struck = this.stats.rejected;
      try {
        // A verify-only peer needs only the Ghost file.
        const wanted = this.#model ? list.files : [list.files[ghostFile]!];
        for (const f of wanted) {
          const fd = openSync(join(dir, f.name), 'wx');
          try {
            for (let at = 0; at < f.size; ) {
              if (deadline.aborted) throw new P2PError('TIMEOUT', `the checkpoint was not fetched within ${this.#checkpointTimeoutMs} ms`);
              const length = Math.min(CHECKPOINT_LIMITS.chunkBytes, f.size - at);
              const res = await this.#checkpointRequest(p, { requestId: this.#requestId++ >>> 0, genesis: this.genesis, what: 'chunk', digest: list.digest, file: list.files.indexOf(f), offset: at, length }, deadline);
              if (res.what !== 'chunk' || res.status !== 'OK') throw new P2PError('NO_PEER', `${p} answered ${res.status} for ${f.name}`);
              if (res.bytes.length !== length) throw new FormatError('BAD_VALUE', `${f.name}: a chunk of ${res.bytes.length} bytes, asked ${length}`);
              for (let off = 0; off < length; ) off += writeSync(fd, res.bytes, off, length - off, at + off);
              at += length;
            }
            fsyncSync(fd);
          } finally {
            closeSync(fd);
          }
        }
        let head: PinnedGhost, model: Model | undefined;
        if (this.#model) ({ model, ghost: head } = await Model.load(dir, { expectDigest: list.digest }));
        else {
          head = await pinGhost(new Uint8Array(readFileSync(join(dir, 'ghost.bin'))));
          if (!bytesEqual(head.digest, list.digest)) throw new ProofError('GHOST_MISMATCH', 'the Ghost file is not the listed one');
        }
        if (head.manifest.training?.step !== c || !head.manifest.training) {
          model?.close();
          throw new ProofError('GHOST_MISMATCH', `the Ghost file is at step ${head.manifest.training?.step}, listed at generation ${c}`);
        }
        // Installed: the replica, the head and the chain's digests; the log from here is verified by catchUp().
        this.#model?.close();
        this.#model = model;
        this.#scratch?.close();
        this.#scratch = undefined;
        this.#scratchGen = -1;
        this.#pending = undefined;
        for (const [g, d] of chain) if (g <= c) this.#digests.set(g, d);
        this.#head = head;
        this.stats.checkpoints++;
        this.lastCheckpoint = { generation: c, digest: head.digest, from: p };
        const w = this.#waiters;
        this.#waiters = [];
        for (const f of w) f();
        return true;
      } catch (err) {
        rmSync(dir, { recursive: true, force: true });
        if (err instanceof ProofError || err instanceof FormatError || err instanceof StorageError) {
          if (this.stats.rejected === struck) this.#strike(p, 'checkpoint', `${err.constructor.name}: ${err.message}`);
        }
        // unreachable, timed out or damaged: the next peer
      }
    }
    return false;
  }

  /** Verifies `proof` against the head: the VerifiedStep, or a reason. */
  async #verify(proof: Uint8Array): Promise<VerifiedStep | string> {
    try {
      const v = await verifyTrainStep(this.#head, proof);
      this.stats.verified++;
      return v;
    } catch (err) {
      if (err instanceof ProofError || err instanceof FormatError) return `${err.constructor.name}: ${err.message}`;
      throw err;
    }
  }

  /**
   * Reads the log file: records of u64 generation, u32 length, the step proof. Entries
   * below the peer's generation are skipped, the others verified and applied in order;
   * a torn last record is cut off. Then keeps the file open for appending.
   */
  async #openLog(file: string): Promise<void> {
    const bytes = existsSync(file) ? new Uint8Array(readFileSync(file)) : new Uint8Array(0);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = 0;
    while (bytes.length - at >= 12) {
      const generation = dv.getUint32(at, true) + dv.getUint32(at + 4, true) * 2 ** 32;
      const n = dv.getUint32(at + 8, true);
      if (n === 0 || n > SWARM_LIMITS.proofBytes || bytes.length - at - 12 < n) break;
      const proof = bytes.slice(at + 12, at + 12 + n);
      at += 12 + n;
      if (generation < this.generation) continue;
      if (generation > this.generation) throw new FormatError('BAD_VALUE', `${file}: entry of generation ${generation} where ${this.generation} was expected`);
      const v = await this.#verify(proof);
      if (typeof v === 'string') throw new FormatError('BAD_VALUE', `${file}: the entry of generation ${generation} does not verify: ${v}`);
      await this.#apply(proof, v, false);
    }
    this.#logFd = openSync(file, 'a+');
    if (at < bytes.length) {
      ftruncateSync(this.#logFd, at);
      fsyncSync(this.#logFd);
    }
  }

  /** Applies a verified step at the head: log file (fsynced), replica (replayed), scratch, head. */
  async #apply(proof: Uint8Array, v: VerifiedStep, durable = true): Promise<void> {
    const g = this.generation;
    if (durable && this.#logFd !== undefined) {
      const rec = new Uint8Array(12 + proof.length);
      const dv = new DataView(rec.buffer);
      dv.setUint32(0, g % 2 ** 32, true);
      dv.setUint32(4, Math.floor(g / 2 ** 32), true);
      dv.setUint32(8, proof.length, true);
      rec.set(proof, 12);
      for (let off = 0; off < rec.length; ) off += writeSync(this.#logFd, rec, off);
      fsyncSync(this.#logFd);
    }
    if (this.#model) {
      const batch = batchOf(decodeProof(proof) as StepProof);
      const mine = this.#pending !== undefined && this.#scratchGen === g && bytesEqual(this.#pending, proof);
      const r = await this.#model.proveTrainStep(batch);
      if (!bytesEqual(r.ghost.digest, v.ghost.digest)) throw new Error(`internal: replaying generation ${g} gave another Ghost file than the verified step (a non-deterministic selection?)`);
      if (mine) {
        this.#pending = undefined;
        this.#scratchGen = g + 1;
      } else if (this.#pending === undefined && this.#scratch && this.#scratchGen === g) {
        await this.#scratch.proveTrainStep(batch);
        this.#scratchGen = g + 1;
      }
    }
    this.#log.set(g, proof);
    this.#waitingSince = undefined;
    this.#held = [];
    this.#head = v.ghost;
    this.#digests.set(g + 1, hex(v.ghost.digest));
    this.stats.applied++;
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  /** Sequencer: a proposed step. */
  async #onStep(from: PeerId, msg: Message): Promise<TVR> {
    const V = this.#V;
    this.stats.bytesIn += msg.data.length;
    let proof: Uint8Array;
    try {
      proof = decodeStepMessage(msg.data);
    } catch (err) {
      this.#strike(from.toString(), 'steps', (err as Error).message);
      return V.Reject;
    }
    if (!this.isSequencer) {
      // A standby sequencer: it keeps proposals at its head, to time the current
      // sequencer's silence and to sequence them if it takes over.
      try {
        const p = decodeProof(proof);
        if (p.kind === 'step' && p.step === this.generation && bytesEqual(p.ghost, this.#head.digest) && this.#held.length < 16) {
          this.#held.push({ from, proof });
          this.#waitingSince ??= Date.now();
        }
      } catch {
        // judged by the sequencer that sequences it
      }
      return V.Ignore;
    }
    return this.#serial(() => this.#sequence(from, proof));
  }

  /** Every few hundred ms: move to the next sequencer when a proposal at the head has waited `takeoverMs`. */
  #tick(): void {
    if (this.#stopped || this.isSequencer || this.#waitingSince === undefined) return;
    if (Date.now() - this.#waitingSince < this.#takeoverMs) return;
    void this.#advance(`silent for ${this.#takeoverMs} ms with a proposal pending at generation ${this.generation}`);
  }

  /**
   * Follows the sequencer at index `to` (default the next). A peer that becomes the
   * sequencer first fetches, verifying each, the entries any connected peer holds beyond
   * its head (the highest verified generation it can reach), then sequences the
   * proposals it held; a trainer sends its pending proposal again.
   */
  async #advance(reason: string, to = this.#seqIndex + 1): Promise<void> {
    if (this.#stopped || to <= this.#seqIndex || to >= this.sequencers.length) return;
    const from = this.sequencer;
    this.#seqIndex = to;
    this.#waitingSince = undefined;
    this.takeovers.push({ from, to: this.sequencer, generation: this.generation, reason });
    if (this.isSequencer) {
      await this.#serial(async () => {
        for (const p of this.libp2p.getPeers().map(String)) {
          if (p === from || this.banned.has(p)) continue;
          await this.#fetchFrom(p, Infinity).catch(() => {});
        }
        const held = this.#held;
        this.#held = [];
        for (const h of held) if ((await this.#sequence(h.from, h.proof)) === this.#V.Accept) break;
      }).catch(() => {});
    } else if (this.#pending !== undefined && this.#scratchGen === this.generation) {
      const pending = this.#pending;
      this.#waitingSince = Date.now();
      await this.ready()
        .then(() => (this.#stopped || this.#pending !== pending ? undefined : this.#pubsub.publish(this.topics.steps, encodeStepMessage(pending))))
        .catch(() => {});
    }
  }

  async #sequence(from: PeerId, proof: Uint8Array): Promise<TVR> {
    const V = this.#V;
    const who = from.toString();
    let p;
    try {
      p = decodeProof(proof);
    } catch (err) {
      this.#strike(who, 'steps', (err as Error).message);
      return V.Reject;
    }
    if (p.kind !== 'step') {
      this.#strike(who, 'steps', `${p.kind} proof, not a step proof`);
      return V.Reject;
    }
    const g = this.generation;
    // The concurrency rule: a step is sequenced only at the generation it was made at.
    if (p.step < g && this.#digests.get(p.step) === hex(p.ghost)) {
      this.stats.stale++;
      return V.Ignore;
    }
    if (p.step !== g) {
      this.#strike(who, 'steps', `a step at generation ${p.step} against a Ghost file the log never had (the log is at ${g})`);
      return V.Reject;
    }
    const v = await this.#verify(proof);
    if (typeof v === 'string') {
      this.#strike(who, 'steps', v);
      return V.Reject;
    }
    await this.#apply(proof, v);
    const data = this.#announce === 'digest'
      ? encodeLogAnnouncement({ genesis: this.genesis, generation: g, proofDigest: (await loadHasher()).hash(proof) })
      : encodeLogEntry(this.genesis, { generation: g, proof });
    if (!this.#stopped) {
      const sent = await this.#pubsub.publish(this.topics.log, data).catch(() => ({ recipients: [] }));
      this.stats.bytesOut += data.length * sent.recipients.length;
    }
    return V.Accept;
  }

  /**
   * Every peer: a log entry, signed by a configured sequencer: the current one, or a
   * later one in the list (followed from then on once its entry verifies). An earlier,
   * replaced one's is ignored.
   */
  async #onLog(from: PeerId, msg: Message): Promise<TVR> {
    const V = this.#V;
    const who = from.toString();
    this.stats.bytesIn += msg.data.length;
    const k = msg.type === 'signed' ? this.sequencers.indexOf(msg.from.toString()) : -1;
    if (msg.type !== 'signed' || k < 0) {
      this.#strike(who, 'log', 'a log entry not signed by a sequencer');
      return V.Reject;
    }
    if (k < this.#seqIndex || (k === this.#seqIndex && this.isSequencer)) return V.Ignore;
    const author = msg.from.toString();
    const signed: SignedLogMessage = { from: author, topic: msg.topic, data: msg.data, sequenceNumber: msg.sequenceNumber, signature: msg.signature };
    if (isLogAnnouncement(msg.data)) return this.#onAnnouncement(who, signed, k);
    let e: ReturnType<typeof decodeLogEntry>;
    try {
      e = decodeLogEntry(msg.data);
    } catch (err) {
      this.#strike(who, 'log', (err as Error).message);
      return V.Reject;
    }
    if (!bytesEqual(e.genesis, this.genesis)) {
      this.#strike(who, 'log', 'a log entry of another swarm');
      return V.Reject;
    }
    const hasher = await loadHasher();
    return this.#serial(async () => {
      if (e.generation < this.generation) return this.#equivocation(who, signed, e.generation, () => hasher.hash(e.proof));
      if (e.generation > this.generation) {
        // Missed entries: fetch them from whoever sent this one, then its author.
        for (const p of [who, author]) {
          if (this.generation >= e.generation || p === this.peerId || this.banned.has(p)) continue;
          await this.#fetchFrom(p, e.generation).catch(() => {});
        }
        if (e.generation !== this.generation) return V.Ignore;
      }
      const v = await this.#verify(e.proof);
      if (typeof v === 'string') {
        this.#strike(who, 'log', v);
        return V.Reject;
      }
      await this.#apply(e.proof, v);
      this.#signed.set(e.generation, signed);
      if (k > this.#seqIndex) void this.#advance(`an entry of ${author}, later in the list, verified at generation ${e.generation}`, k);
      return V.Accept;
    });
  }

  /**
   * A signed log message (a whole entry or a digest-only announcement) for a generation
   * this peer holds: if the signed message it applied there has the same author and
   * commits to another proof (BLAKE3-256 of the step proof, what an announcement carries),
   * the sequencer equivocated: both signed messages are kept as evidence, and it is struck.
   * Otherwise (a duplicate, or an entry this peer fetched rather than received signed:
   * no pair of signed messages to compare) ignored.
   */
  async #equivocation(who: string, signed: SignedLogMessage, generation: number, proofDigest: () => Uint8Array): Promise<TVR> {
    const V = this.#V;
    const mine = this.#signed.get(generation);
    const held = this.#log.get(generation);
    if (!held || !mine || mine.from !== signed.from) return V.Ignore;
    if (bytesEqual((await loadHasher()).hash(held), proofDigest())) return V.Ignore;
    this.equivocations.push({ sequencer: signed.from, generation, messages: [mine, signed] });
    this.#strike(signed.from, 'log', `equivocation: two signed log messages for generation ${generation}`);
    return signed.from === who ? V.Reject : V.Ignore; // a forwarder did nothing wrong
  }

  /**
   * A digest-only log entry: the proof is this peer's own pending proposal, or fetched
   * from the peer that forwarded the announcement (it validated it, so it holds it), then
   * the sequencer; its BLAKE3 digest must be the announced one (else the answering peer is
   * struck), then it is verified and applied as a whole entry is. Forwarded only once
   * applied, so whoever receives it from this peer can fetch the proof here.
   */
  async #onAnnouncement(who: string, signed: SignedLogMessage, k: number): Promise<TVR> {
    const V = this.#V;
    let a: ReturnType<typeof decodeLogAnnouncement>;
    try {
      a = decodeLogAnnouncement(signed.data);
    } catch (err) {
      this.#strike(who, 'log', (err as Error).message);
      return V.Reject;
    }
    if (!bytesEqual(a.genesis, this.genesis)) {
      this.#strike(who, 'log', 'a log announcement of another swarm');
      return V.Reject;
    }
    const hasher = await loadHasher();
    return this.#serial(async () => {
      if (a.generation < this.generation) return this.#equivocation(who, signed, a.generation, () => a.proofDigest);
      for (const p of [who, this.sequencer]) {
        if (this.generation >= a.generation || p === this.peerId || this.banned.has(p)) continue;
        await this.#fetchFrom(p, a.generation).catch(() => {});
      }
      if (a.generation !== this.generation) return V.Ignore;
      let proof = this.#pending !== undefined && this.#scratchGen === a.generation && bytesEqual(hasher.hash(this.#pending), a.proofDigest) ? this.#pending : undefined;
      for (const p of [who, this.sequencer]) {
        if (proof !== undefined || p === this.peerId || this.banned.has(p)) continue;
        try {
          const res = await this.#request(p, a.generation, 1);
          const e = res.entries[0];
          if (res.status !== 'OK' || e === undefined || e.generation !== a.generation) continue;
          if (bytesEqual(hasher.hash(e.proof), a.proofDigest)) {
            proof = e.proof;
            this.stats.fetched++;
          } else this.#strike(p, 'fetch', `the entry of generation ${a.generation} is not the announced one`);
        } catch {
          // unreachable or malformed (struck in #request): try the next
        }
      }
      if (proof === undefined) return V.Ignore;
      const v = await this.#verify(proof);
      if (typeof v === 'string') {
        this.#strike(who, 'log', v);
        return V.Reject;
      }
      await this.#apply(proof, v);
      this.#signed.set(a.generation, signed);
      if (k > this.#seqIndex) void this.#advance(`an announcement of ${this.sequencers[k]}, later in the list, verified at generation ${a.generation}`, k);
      return V.Accept;
    });
  }

  /** Fetches entries from this peer's generation up to (not including) `until` from `peer`, verifying and applying each. */
  async #fetchFrom(peer: string, until: number): Promise<void> {
    while (this.generation < until) {
      const from = this.generation;
      const res = await this.#request(peer, from, Math.min(SWARM_LIMITS.entries, 64));
      if (res.status !== 'OK') throw new P2PError('NO_PEER', `${peer} answered ${res.status}`);
      if (res.entries.length === 0) return;
      for (const [i, e] of res.entries.entries()) {
        if (e.generation !== from + i) {
          this.#strike(peer, 'fetch', `entry ${i} is of generation ${e.generation}, asked from ${from}`);
          throw new P2PError('NO_PEER', 'a fetched entry out of order');
        }
        if (e.generation >= until) return;
        const v = await this.#verify(e.proof);
        if (typeof v === 'string') {
          this.#strike(peer, 'fetch', v);
          throw new P2PError('NO_PEER', `a fetched entry does not verify: ${v}`);
        }
        this.stats.fetched++;
        await this.#apply(e.proof, v);
      }
      if (this.generation >= res.head) return;
    }
  }

  async #request(peer: string, from: number, count: number, headers = false): Promise<LogResponse> {
    const signal = deadlineSignal(this.#fetchTimeoutMs);
    const requestId = this.#requestId++ >>> 0;
    const stream = await this.libp2p.dialProtocol(await toPeerId(peer), SWARM_LOG_PROTOCOL, { signal });
    try {
      await writeFrame(stream, encodeLogRequest({ requestId, genesis: this.genesis, from, count, headers }), signal);
      await stream.close({ signal });
      const payload = await readFrame(stream, SWARM_LIMITS.responseBytes, this.#fetchTimeoutMs);
      this.stats.bytesIn += payload.length;
      const res = decodeLogResponse(payload);
      if (res.requestId !== requestId) throw new FormatError('BAD_VALUE', 'a response to another request');
      if ((res.headers !== undefined) !== headers && res.status === 'OK') throw new FormatError('BAD_VALUE', headers ? 'entries where headers were asked for' : 'headers where entries were asked for');
      return res;
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
      if (err instanceof FormatError) this.#strike(peer, 'fetch', err.message);
      throw err;
    }
  }

  async #serve(stream: Stream, _conn: Connection): Promise<void> {
    const hard = setTimeout(() => stream.abort(new Error('ghost-tensor swarm: stream deadline')), 30_000);
    hard.unref();
    stream.addEventListener('close', () => clearTimeout(hard), { once: true });
    try {
      let res: LogResponse;
      try {
        const q = decodeLogRequest(await readFrame(stream, SWARM_LIMITS.requestBytes, 10_000));
        if (!bytesEqual(q.genesis, this.genesis)) res = { requestId: q.requestId, status: 'WRONG_SWARM', head: this.generation, entries: [] };
        else if (q.headers) {
          // The headers of the entries held from q.from (read from the proofs this peer verified).
          const headers: LogHeader[] = [];
          for (let g = q.from; headers.length < q.count; g++) {
            const proof = this.#log.get(g);
            if (!proof) break;
            const p = decodeProof(proof) as StepProof;
            headers.push({ generation: g, ghost: p.ghost, newGhost: p.newGhost });
          }
          const held = headers.length > 0 || q.from >= this.generation;
          res = { requestId: q.requestId, status: held ? 'OK' : 'NOT_HELD', head: this.generation, entries: [], headers };
        } else {
          const entries: LogEntry[] = [];
          let bytes = 0;
          for (let g = q.from; entries.length < q.count; g++) {
            const proof = this.#log.get(g);
            if (!proof || bytes + proof.length > SWARM_LIMITS.responseBytes / 2) break;
            entries.push({ generation: g, proof });
            bytes += proof.length + 12;
          }
          const held = entries.length > 0 || q.from >= this.generation;
          res = { requestId: q.requestId, status: held ? 'OK' : 'NOT_HELD', head: this.generation, entries };
        }
      } catch (err) {
        if (!(err instanceof FormatError) && !(err instanceof FrameReadError)) throw err;
        res = { requestId: 0, status: 'MALFORMED', head: this.generation, entries: [] };
      }
      const signal = deadlineSignal(30_000);
      const out = encodeLogResponse(res);
      this.stats.bytesOut += out.length;
      await writeFrame(stream, out, signal);
      await stream.close({ signal });
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)));
    }
  }
}

/**
 * The batch a step proof was made on, as Model.proveTrainStep takes it: one sequence, or
 * every sequence of a proof of several (kind 4) in order. A replica replays a verified
 * step with it.
 */
function batchOf(p: StepProof): StepBatch | StepBatch[] {
  return p.more === undefined || p.more.length === 0 ? stepBatchOf(p) : [p, ...p.more].map(stepBatchOf);
}
