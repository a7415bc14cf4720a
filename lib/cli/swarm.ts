/**
 * `ghost-tensor swarm` (docs/cli.md, docs/swarm.md): join a training swarm of a small
 * byte-level language model as its sequencer, a trainer on a local text file, or a
 * verify-only peer. The command table in main.ts parses the options; this runs.
 *
 * The peer's state lives in one directory (--dir): its libp2p key (peer.key, so the
 * peer id survives a restart), the swarm it joined (swarm.json), the log file (log.bin:
 * every entry fsynced before it is applied) and, for a trainer, its replica (model/,
 * saved at a clean stop). The same command resumes from there. A peer that joined by a
 * checkpoint has a log file that starts there, so it also keeps a restart point from the
 * join on: a trainer its replica, a verify-only peer the head's Ghost file (ghost.bin).
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { FormatError, P2PError, ProofError } from '../shared/errors.js';
import { toHex } from '../shared/bytes.js';
import { languageModel, type LanguageModelConfig } from '../model/lm/model.js';
import { Model } from '../model/model.js';
import type { StepBatch, StepTrainingOptions } from '../model/train/step-training.js';
import { pinGhost, type PinnedGhost } from '../verify/proof-verify.js';
import { replaceFile } from '../shared/durable-fs.js';
import { SwarmPeer } from '../swarm/peer.js';

export type SwarmRole = 'sequencer' | 'trainer' | 'verify';

/** The swarm's generation-0 model: every peer builds it from these (the digest must match). */
export interface SwarmModelConfig {
  model: Required<Pick<LanguageModelConfig, 'context' | 'dim' | 'layers' | 'heads' | 'hidden' | 'seed'>>;
  lr: number;
}

export interface SwarmArgs {
  dir: string;
  role: SwarmRole;
  /** The generation-0 Ghost digest to join (required unless the sequencer). */
  digest?: Uint8Array;
  /** The sequencers in order of takeover (peer ids; 'self' for this peer, which a sequencer lists). */
  sequencers: string[];
  /** Move to the next sequencer after this long without the log moving while a proposal waits (SwarmOptions.takeoverMs). */
  takeoverMs?: number;
  /** How to reach the head: verify every step from generation 0 (log, default) or from a fetched checkpoint. */
  join?: 'log' | 'checkpoint';
  bootstrap: string[];
  listen?: string[];
  /** Trainer: the text file whose windows are its batches. */
  data?: string;
  config: SwarmModelConfig;
  /** Trainer: stop after this many accepted proposals. */
  steps?: number;
  /** Trainer: windows per step (1: one sequence; more: one step of several sequences). */
  sequences?: number;
  /** Stop once the head reaches this generation. */
  until?: number;
  /** Sequencer: publish whole entries (default) or only their digests. */
  announce?: 'entry' | 'digest';
  seed: number;
  quiet: boolean;
}

/** The generation-0 model of a swarm command: a byte-level language model trained by step proofs. */
export function swarmGenesisModel(c: SwarmModelConfig): Model {
  const training: StepTrainingOptions = { loss: 'cross-entropy', lr: c.lr, clipNorm: 1 };
  return languageModel({ ...c.model, vocab: 256 }, { training });
}

/**
 * A trainer's batches: a window of `context` bytes of the file at a seeded offset, the
 * byte after each as its target (one sequence per step).
 */
export class WindowBatches {
  readonly #bytes: Uint8Array;
  readonly #context: number;
  #state: number;

  constructor(bytes: Uint8Array, context: number, seed: number) {
    if (bytes.length < context + 1) throw new FormatError('BAD_VALUE', `the data file has ${bytes.length} bytes; a window needs ${context + 1} (--context + 1)`);
    this.#bytes = bytes;
    this.#context = context;
    this.#state = (seed >>> 0) || 1;
  }

  next(): StepBatch {
    // xorshift32: a fixed sequence of offsets per seed.
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    const o = this.#state % (this.#bytes.length - this.#context);
    return { input: Uint32Array.from(this.#bytes.subarray(o, o + this.#context)), targets: Uint32Array.from(this.#bytes.subarray(o + 1, o + 1 + this.#context)) };
  }
}

const FILES = { key: 'peer.key', info: 'swarm.json', log: 'log.bin', model: 'model', live: 'model.live', next: 'model.next', old: 'model.old', ghost: 'ghost.bin' } as const;

async function peerKey(dir: string): Promise<import('@libp2p/interface').PrivateKey> {
  const { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } = await import('@libp2p/crypto/keys');
  const f = join(dir, FILES.key);
  if (existsSync(f)) return privateKeyFromProtobuf(new Uint8Array(readFileSync(f)));
  const key = await generateKeyPair('Ed25519');
  writeFileSync(`${f}.tmp`, privateKeyToProtobuf(key), { mode: 0o600 });
  renameSync(`${f}.tmp`, f);
  return key;
}

/**
 * The generation of the log file's first entry (undefined: no file or no whole entry).
 * A log that starts after generation 0 (the peer joined by a checkpoint) cannot rebuild
 * the peer from generation 0: its restart point is a saved replica (a trainer) or Ghost
 * file (a verify-only peer), kept from the join on (keepRestartPoint).
 */
function logStart(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  // The first record's header only: the log holds every step's proof.
  const b = Buffer.alloc(12);
  const fd = openSync(file, 'r');
  try {
    if (readSync(fd, b, 0, 12, 0) < 12) return undefined;
  } finally {
    closeSync(fd);
  }
  return b.readUInt32LE(0) + b.readUInt32LE(4) * 2 ** 32;
}

/**
 * The trainer's replica: the one saved last (at a clean stop, or kept at the join of a
 * peer whose log starts at a checkpoint), moved aside to model.live while the peer runs,
 * since training writes its files in place; else generation 0. A save swaps directories
 * (model.next, then model.old), so a crash during one leaves a whole replica under one of
 * the three names: each is tried (Model.load checks every root), the newest first.
 * A crash leaves no model/ for a peer that joined by the log, and its log file then
 * replays every step from generation 0.
 */
async function loadReplica(dir: string, genesis: () => Model, print: (s: string) => void): Promise<Model> {
  rmSync(join(dir, FILES.live), { recursive: true, force: true });
  const names = [FILES.model, FILES.next, FILES.old].filter((n) => existsSync(join(dir, n)));
  let model: Model | undefined;
  for (const n of names) {
    if (model) {
      rmSync(join(dir, n), { recursive: true, force: true });
      continue;
    }
    renameSync(join(dir, n), join(dir, FILES.live));
    try {
      model = (await Model.load(join(dir, FILES.live))).model;
    } catch (e) {
      print(`swarm: the saved replica ${n}/ does not load (${(e as Error).message})${n === names[names.length - 1] ? '; replaying the log from generation 0' : ''}`);
      rmSync(join(dir, FILES.live), { recursive: true, force: true });
    }
  }
  return model ?? genesis();
}

async function saveReplica(dir: string, peer: SwarmPeer): Promise<void> {
  rmSync(join(dir, FILES.next), { recursive: true, force: true });
  await peer.save(join(dir, FILES.next));
  if (existsSync(join(dir, FILES.model))) {
    rmSync(join(dir, FILES.old), { recursive: true, force: true });
    renameSync(join(dir, FILES.model), join(dir, FILES.old));
  }
  renameSync(join(dir, FILES.next), join(dir, FILES.model));
  rmSync(join(dir, FILES.old), { recursive: true, force: true });
}

/**
 * A verify-only peer's start: generation 0, or, when its log file starts after it (a
 * checkpoint join), the Ghost file it kept (ghost.bin, written by keepRestartPoint).
 */
async function verifierStart(dir: string, g0: PinnedGhost): Promise<PinnedGhost> {
  const first = logStart(join(dir, FILES.log));
  if (first === undefined || first === 0) return g0;
  const f = join(dir, FILES.ghost);
  if (!existsSync(f)) throw new FormatError('BAD_VALUE', `${join(dir, FILES.log)} starts at generation ${first} (the peer joined by a checkpoint) and ${f} is missing; remove the log file and join again`);
  const g = await pinGhost(new Uint8Array(readFileSync(f)));
  if (g.manifest.training === undefined || g.manifest.training.step < first) throw new FormatError('BAD_VALUE', `${f} is not at the log file's first generation (${first}) or after it; remove the log file and join again`);
  return g;
}

/**
 * Where a peer whose log file starts after generation 0 restarts from, kept up to date:
 * a trainer's replica (model/), a verify-only peer's Ghost file (ghost.bin). A peer whose
 * log starts at generation 0 needs none (the log replays it).
 */
async function keepRestartPoint(dir: string, peer: SwarmPeer): Promise<void> {
  const first = logStart(join(dir, FILES.log));
  if (first === undefined || first === 0) return;
  if (peer.model) await saveReplica(dir, peer);
  else await replaceFile(dir, FILES.ghost, peer.head.bytes);
}

export async function runSwarm(a: SwarmArgs, print: (s: string) => void, err: (s: string) => void): Promise<number> {
  mkdirSync(a.dir, { recursive: true });
  const g0Model = swarmGenesisModel(a.config);
  const g0: PinnedGhost = await g0Model.ghost();
  g0Model.close();
  if (a.digest !== undefined && toHex(a.digest) !== toHex(g0.digest)) {
    throw new ProofError('GHOST_MISMATCH', `the model these options build has Ghost digest ${toHex(g0.digest)}, not ${toHex(a.digest)} (use the swarm's --context --dim --layers --heads --hidden --init-seed --lr)`);
  }
  const infoFile = join(a.dir, FILES.info);
  if (existsSync(infoFile)) {
    const info = JSON.parse(readFileSync(infoFile, 'utf8')) as { genesis?: string };
    if (info.genesis !== toHex(g0.digest)) throw new ProofError('GHOST_MISMATCH', `${a.dir} holds a peer of the swarm ${info.genesis}, not ${toHex(g0.digest)}`);
  } else {
    writeFileSync(`${infoFile}.tmp`, JSON.stringify({ genesis: toHex(g0.digest), role: a.role, config: a.config }, null, 2) + '\n');
    renameSync(`${infoFile}.tmp`, infoFile);
  }
  const batches = a.data !== undefined ? new WindowBatches(new Uint8Array(readFileSync(a.data)), a.config.model.context, a.seed) : undefined;
  const privateKey = await peerKey(a.dir);
  const model = a.role === 'trainer' ? await loadReplica(a.dir, () => swarmGenesisModel(a.config), err) : undefined;
  const start = model ? undefined : await verifierStart(a.dir, g0);
  const peer = await SwarmPeer.start({
    genesis: g0.digest,
    sequencers: a.sequencers,
    ...(a.takeoverMs === undefined ? {} : { takeoverMs: a.takeoverMs }),
    ...(a.join === 'checkpoint' ? { verifyFrom: 'checkpoint' as const } : {}),
    ...(model ? { model } : { ghost: start! }),
    privateKey,
    logFile: join(a.dir, FILES.log),
    ...(a.announce ? { announce: a.announce } : {}),
    bootstrap: a.bootstrap,
    ...(a.listen ? { listen: a.listen } : {}),
  }).catch((e: unknown) => {
    model?.close();
    throw e;
  });

  let stopping: string | undefined;
  let wake: (() => void) | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    stopping ??= sig;
    wake?.();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let accepted = 0, passed = 0, lastLoss = NaN;
  let shown = '', moves = 0;
  let kept: SwarmPeer['lastCheckpoint'];
  const progress = (force = false): void => {
    // Sequencer takeovers, each once (also with --quiet: they change whom the peer follows).
    for (; moves < peer.takeovers.length; moves++) {
      const t = peer.takeovers[moves]!;
      err(`swarm: following sequencer ${t.to}${t.to === peer.peerId ? ' (this peer)' : ''} from generation ${t.generation}: ${t.reason}`);
    }
    if (a.quiet && !force) return;
    const s = peer.stats;
    const line = `swarm generation ${peer.generation}  ${a.role === 'trainer' ? `proposals accepted ${accepted} stale ${passed}${Number.isFinite(lastLoss) ? `  loss ${lastLoss.toFixed(4)}` : ''}` : `applied ${s.applied}${peer.isSequencer ? ` stale ${s.stale}` : ''}`}  rejected ${s.rejected}  peers ${peer.libp2p.getPeers().length}`;
    if (line !== shown || force) err(line);
    shown = line;
  };
  try {
    print(`peer ${peer.peerId}`);
    for (const m of peer.multiaddrs) print(`listen ${m}`);
    print(`genesis ${toHex(g0.digest)}`);
    print(`role ${a.role}${peer.generation > 0 ? ` (resumed at generation ${peer.generation})` : ''}`);
    if (!peer.isSequencer && stopping === undefined) {
      await peer.catchUp();
      const cp = peer.lastCheckpoint;
      if (cp) print(`joined by a checkpoint at generation ${cp.generation} (Ghost digest ${toHex(cp.digest)}) from ${cp.from}`);
      // A crash from here on restarts from this point, not from generation 0, which its log file no longer reaches.
      await keepRestartPoint(a.dir, peer);
      kept = peer.lastCheckpoint;
      progress();
    }
    const done = (): boolean => stopping !== undefined || (a.until !== undefined && peer.generation >= a.until) || (a.steps !== undefined && accepted >= a.steps);
    if (batches && !done()) await peer.ready();
    while (!done()) {
      if (batches) {
        // A trainer cut off from the sequencer (no subscription seen, or its proposal not sequenced in time) waits and
        // proposes again: the peer dials the sequencer back, or moves to the next one (--takeover-ms).
        const k = a.sequences ?? 1;
        const batch = k === 1 ? batches.next() : Array.from({ length: k }, () => batches.next());
        const r = await peer.propose(batch).catch((e: unknown) => {
          if (!(e instanceof P2PError) || stopping !== undefined) throw e;
          err(`swarm: ${e.message}; proposing again`);
          return new Promise<undefined>((res) => setTimeout(() => res(undefined), 500));
        });
        if (r) {
          if (r.accepted) accepted++;
          else passed++;
          lastLoss = r.loss;
        }
      } else {
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 250);
        });
      }
      // A later catch-up (after the sequencer's connection closed) may install a newer checkpoint, and the log file
      // then skips to it: the restart point moves there too.
      if (peer.lastCheckpoint !== kept) {
        kept = peer.lastCheckpoint;
        await keepRestartPoint(a.dir, peer);
      }
      progress();
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (stopping !== undefined) err(`swarm: ${stopping}: saving the peer's state and leaving`);
    try {
      if (peer.model) await saveReplica(a.dir, peer);
      else await keepRestartPoint(a.dir, peer);
    } finally {
      await peer.stop();
      peer.model?.close();
      rmSync(join(a.dir, FILES.live), { recursive: true, force: true });
    }
  }
  progress(true);
  print(`stopped at generation ${peer.generation}, digest ${toHex(peer.head.digest)}`);
  return 0;
}
