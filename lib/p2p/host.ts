/**
 * The libp2p host shared by layer nodes and clients (docs/p2p.md): TCP, noise,
 * yamux, identify, ping and a Kademlia DHT on a private protocol id in LAN mode (a
 * peer's private and loopback addresses are kept, so it works on one machine or a
 * LAN), plus the bounded reading and writing of one length-prefixed frame.
 *
 * libp2p is imported dynamically, after installP2PPolyfills(): libp2p 3 calls
 * Promise.withResolvers, which Node 20 lacks (Node >= 22 has it).
 */
import type { Identify } from '@libp2p/identify';
import type { ConnectionGater, PeerId, PrivateKey, Stream } from '@libp2p/interface';
import type { KadDHT, SingleKadDHT } from '@libp2p/kad-dht';
import type { Ping } from '@libp2p/ping';
import type { Libp2p } from 'libp2p';

import { setMaxListeners } from 'node:events';

import { P2PError } from '../shared/errors.js';

/** The DHT protocol id of ghost-tensor peers (not the public IPFS DHT's /ipfs/kad/1.0.0). */
export const DHT_PROTOCOL = '/ghost-tensor/lan/kad/1.0.0';

export type GhostLibp2p = Libp2p<{ identify: Identify; ping: Ping; dht: KadDHT }>;

interface WithResolvers<T> {
  promise: Promise<T>;
  resolve: (value: T | PromiseLike<T>) => void;
  reject: (reason?: unknown) => void;
}

/**
 * Installs what libp2p 3 needs and Node 20 lacks: Promise.withResolvers (ES2024).
 * Guarded: does nothing where it exists. Called by every entry point here before
 * libp2p is imported; call it yourself before importing libp2p elsewhere.
 */
export function installP2PPolyfills(): void {
  const P = Promise as PromiseConstructor & { withResolvers?: unknown };
  if (typeof P.withResolvers === 'function') return;
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers<T>(this: PromiseConstructor): WithResolvers<T> {
      let resolve!: WithResolvers<T>['resolve'];
      let reject!: WithResolvers<T>['reject'];
      const promise = new this<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

export interface HostOptions {
  /** Listen addresses (default one TCP port on 127.0.0.1). */
  listen?: readonly string[];
  /** Multiaddrs (with /p2p/<id>) dialled at start to join the DHT. */
  bootstrap?: readonly string[];
  /** DHT protocol id (default DHT_PROTOCOL): peers with another id form another network. */
  dhtProtocol?: string;
  /** The node's key (default a new Ed25519 key): its peer id. */
  privateKey?: PrivateKey;
  /** With bootstrap addresses: how long start waits for a DHT peer in the routing table, ms (default 10 000). */
  joinTimeoutMs?: number;
}

/**
 * What a caller adds to the host (lib/swarm: gossipsub, and a gater that keeps banned
 * peers out). Services are libp2p service factories, reached as host.services[name].
 */
export interface HostExtras {
  services?: Record<string, (components: never) => unknown>;
  connectionGater?: ConnectionGater;
}

/**
 * Creates, starts and bootstraps a libp2p node. `dhtServer`: answer DHT queries (layer
 * nodes) or only ask (clients). With bootstrap addresses it resolves once a DHT peer
 * is in the routing table (P2PError BOOTSTRAP when none can be dialled or none joins).
 */
export async function createHost(options: HostOptions, dhtServer: boolean, extra: HostExtras = {}): Promise<GhostLibp2p> {
  installP2PPolyfills();
  const [{ createLibp2p }, { tcp }, { noise }, { yamux }, kad, { identify }, { ping }, { multiaddr }] = await Promise.all([
    import('libp2p'),
    import('@libp2p/tcp'),
    import('@chainsafe/libp2p-noise'),
    import('@chainsafe/libp2p-yamux'),
    import('@libp2p/kad-dht'),
    import('@libp2p/identify'),
    import('@libp2p/ping'),
    import('@multiformats/multiaddr'),
  ]);
  const listen = [...(options.listen ?? ['/ip4/127.0.0.1/tcp/0'])];
  const host = await createLibp2p({
    ...(options.privateKey ? { privateKey: options.privateKey } : {}),
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kad.kadDHT({
        protocol: options.dhtProtocol ?? DHT_PROTOCOL,
        clientMode: !dhtServer,
        // LAN mode: keep private (and loopback) addresses, drop public ones.
        peerInfoMapper: kad.removePublicAddressesMapper,
        initialQuerySelfInterval: 200,
      }),
      ...(extra.services ?? {}),
    },
    ...(extra.connectionGater ? { connectionGater: extra.connectionGater } : {}),
  }) as unknown as GhostLibp2p;
  // libp2p records a node's own addresses in its peer store 1 s (a debounce) after it
  // starts listening; until then its DHT answers leave the node out of the providers it
  // lists for its own keys. Record them now.
  const self = `/p2p/${host.peerId.toString()}`;
  await host.peerStore.merge(host.peerId, { multiaddrs: host.getMultiaddrs().map((ma) => (ma.toString().endsWith(self) ? ma.decapsulate(self) : ma)) });
  const boot = options.bootstrap ?? [];
  const errors: string[] = [];
  for (const a of boot) {
    try {
      await host.dial(multiaddr(a), { signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      errors.push(`${a}: ${(err as Error).message}`);
    }
  }
  if (boot.length > 0 && errors.length === boot.length) {
    await host.stop();
    throw new P2PError('BOOTSTRAP', `no bootstrap address could be dialled (${errors.join('; ')})`);
  }
  // Joined once a DHT peer is in the routing table (identify has run and the peer speaks
  // our DHT protocol): a lookup started before that would find nobody.
  if (boot.length > 0) {
    const until = Date.now() + (options.joinTimeoutMs ?? 10_000);
    const peers = (): number => (host.services.dht as Partial<SingleKadDHT>).routingTable?.size ?? 1;
    while (peers() === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    if (peers() === 0) {
      await host.stop();
      throw new P2PError('BOOTSTRAP', `dialled ${boot.length - errors.length} bootstrap peer(s), but none joined the DHT ${options.dhtProtocol ?? DHT_PROTOCOL}`);
    }
  }
  return host;
}

/**
 * A signal that aborts after `ms` or with `parent`, allowed many listeners (a DHT
 * query adds one per path and peer; Node warns past 10).
 */
export function deadlineSignal(ms: number, parent?: AbortSignal): AbortSignal {
  const signal = parent ? AbortSignal.any([parent, AbortSignal.timeout(ms)]) : AbortSignal.timeout(ms);
  setMaxListeners(Infinity, signal);
  return signal;
}

/** A peer id string as a PeerId. */
export async function toPeerId(id: string): Promise<PeerId> {
  const { peerIdFromString } = await import('@libp2p/peer-id');
  return peerIdFromString(id);
}

/** Why readFrame failed: the stream ended early, the length prefix is over the limit or malformed, or the deadline passed. */
export class FrameReadError extends Error {
  readonly why: 'EOF' | 'TOO_LARGE' | 'BAD_PREFIX' | 'TIMEOUT' | 'STREAM';
  constructor(why: FrameReadError['why'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.why = why;
    this.name = 'FrameReadError';
  }
}

/**
 * Reads one varint length-prefixed frame of at most maxBytes from the stream. The
 * prefix is checked against maxBytes before the payload is read (it-length-prefixed);
 * the read gives up after timeoutMs (the stream stays open, so an error can still be
 * written back).
 */
export async function readFrame(stream: Stream, maxBytes: number, timeoutMs: number): Promise<Uint8Array> {
  const lp = await import('it-length-prefixed');
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FrameReadError('TIMEOUT', `no complete frame within ${timeoutMs} ms`)), timeoutMs);
  });
  const read = (async (): Promise<Uint8Array> => {
    try {
      for await (const msg of lp.decode(stream, { maxDataLength: maxBytes })) return msg.subarray();
    } catch (err) {
      const name = (err as Error).name;
      if (name === 'InvalidDataLengthError') throw new FrameReadError('TOO_LARGE', `the length prefix is over the ${maxBytes}-byte limit`, { cause: err });
      if (name === 'InvalidDataLengthLengthError' || name === 'InvalidMessageLengthError') throw new FrameReadError('BAD_PREFIX', 'malformed length prefix', { cause: err });
      if (name === 'UnexpectedEOFError') throw new FrameReadError('EOF', 'the stream ended inside a frame (truncated)', { cause: err });
      throw new FrameReadError('STREAM', `stream error: ${(err as Error).message}`, { cause: err });
    }
    throw new FrameReadError('EOF', 'the stream ended before a frame');
  })();
  read.catch(() => {}); // the deadline may win; the read then ends when the stream is closed
  try {
    return await Promise.race([read, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Writes one varint length-prefixed frame, waiting for the stream to drain when its
 * buffer is full. The caller bounds the payload (it-length-prefixed's own 4 MiB default
 * would refuse, and abort the stream on, any larger proof).
 */
export async function writeFrame(stream: Stream, payload: Uint8Array, signal: AbortSignal): Promise<void> {
  const lp = await import('it-length-prefixed');
  if (!stream.send(lp.encode.single(payload, { maxDataLength: payload.length }))) await stream.onDrain({ signal });
}
