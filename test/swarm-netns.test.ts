/**
 * A network partition in real network namespaces (docs/swarm.md, "Partitions"): the
 * `ghost-tensor swarm` command as separate processes, each in its own network namespace,
 * in two groups on two bridges joined by one veth pair. The test makes them itself, in a
 * user + network + mount namespace (`unshare -rnm`, in which it has CAP_NET_ADMIN; a
 * tmpfs over /run/netns keeps its namespace names private), and SKIPS with the reason
 * printed when that cannot be done (no unshare, nsenter or ip, or the kernel refuses).
 *
 *   ns gt1: sequencer S  10.22.0.1 ─┐            ┌─ 10.22.0.3 trainer B      ns gt3
 *                                   br0 ── x ── br1
 *   ns gt2: trainer A    10.22.0.2 ─┘   (cut)    └─ 10.22.0.4 verify-only W  ns gt4
 *
 * One sequencer. The link between the bridges is set down while both trainers propose:
 * the side with the sequencer goes on, the side without it does not advance; the link
 * comes back up, the cut-off side catches up, and every peer stops at one generation with
 * one digest, equal to the sequencer's log file verified from generation 0 with no
 * network; every peer's own log file (each entry fsynced before it was applied) is that
 * log: no verified step is lost and no honest peer forked.
 * bin/ghost-tensor.mjs runs over dist/ (`npm run build:ts` first).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { swarmGenesisModel } from '../lib/cli/swarm.js';
import { CONFIG, logDigests, logRecords, MODEL, swarmScratch, type Running } from './helpers/swarm-cli.js';

const NODE = process.execPath;
const BIN = join(import.meta.dirname, '..', 'bin', 'ghost-tensor.mjs');

/**
 * The namespaces: a holder process (`unshare -rnm ... sleep`) owns a user, network and
 * mount namespace; `run` executes a command in it (nsenter), `spawnIn` starts a process in
 * one of its named network namespaces (ip netns exec). Made by trying: any failure is the
 * reason to skip.
 */
interface Netns {
  run(cmd: string): void;
  spawnIn(ns: string, args: string[]): ChildProcess;
  close(): void;
}

function sh(args: string[], input?: string): { ok: boolean; out: string } {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8', timeout: 10_000, ...(input === undefined ? {} : { input }) });
  return { ok: r.status === 0, out: `${r.error?.message ?? ''}${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

async function makeNetns(): Promise<Netns | string> {
  for (const tool of ['unshare', 'nsenter', 'ip']) {
    if (!sh(['sh', '-c', `command -v ${tool} || test -x /usr/sbin/${tool} || test -x /sbin/${tool}`]).ok) return `no ${tool} on PATH`;
  }
  const holder = spawn('unshare', ['-rnm', 'sh', '-c', 'mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns && echo ready && exec sleep 600'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let said = '';
  holder.stdout!.setEncoding('utf8').on('data', (s: string) => (said += s));
  holder.stderr!.setEncoding('utf8').on('data', (s: string) => (said += s));
  const up = await new Promise<boolean>((r) => {
    holder.once('exit', () => r(false));
    holder.once('error', () => r(false));
    const t = setInterval(() => {
      if (said.includes('ready')) {
        clearInterval(t);
        r(true);
      }
    }, 20);
  });
  if (!up) return `unshare -rnm failed: ${said.trim() || 'no output'}`;
  const PATH = `${process.env.PATH ?? ''}:/usr/sbin:/sbin`;
  const enter = ['nsenter', '-t', String(holder.pid), '-U', '-n', '-m', '--preserve-credentials'];
  const close = (): void => void (holder.exitCode === null && holder.kill('SIGKILL'));
  const run = (cmd: string): void => {
    const r = sh([...enter, 'env', `PATH=${PATH}`, 'sh', '-ec', cmd]);
    if (!r.ok) throw new Error(`in the namespace: ${cmd}: ${r.out}`);
  };
  try {
    run(TOPOLOGY);
  } catch (e) {
    close();
    return (e as Error).message;
  }
  return {
    run,
    close,
    spawnIn: (ns, args) => spawn(enter[0]!, [...enter.slice(1), 'env', `PATH=${PATH}`, 'ip', 'netns', 'exec', ns, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }),
  };
}

/** Two bridges joined by the veth pair x0-x1 (the link the partition cuts); peer i in namespace gt<i> at 10.22.0.<i>, 1-2 on br0, 3-4 on br1. */
const TOPOLOGY = `
ip link set lo up
ip link add br0 type bridge; ip link add br1 type bridge
ip link add x0 type veth peer name x1
ip link set x0 master br0; ip link set x1 master br1
for l in br0 br1 x0 x1; do ip link set $l up; done
for i in 1 2 3 4; do
  ip netns add gt$i
  ip link add h$i type veth peer name e$i
  ip link set e$i netns gt$i
  if [ $i -le 2 ]; then ip link set h$i master br0; else ip link set h$i master br1; fi
  ip link set h$i up
  ip netns exec gt$i ip link set lo up
  ip netns exec gt$i ip addr add 10.22.0.$i/24 dev e$i
  ip netns exec gt$i ip link set e$i up
done
`;

const netns = await makeNetns();
if (typeof netns === 'string') console.log(`test/swarm-netns.test.ts SKIPPED: network namespaces cannot be made here (${netns})`);

const { base, TEXT } = swarmScratch('gt-swarm-netns-');

/** The highest generation a peer's progress lines (stderr) reported. */
const reported = (r: Running): number => Math.max(0, ...[...r.stderr().matchAll(/swarm generation (\d+)/g)].map((m) => Number(m[1])));

/** A trainer's accepted proposals, from its last progress line. */
const accepted = (r: Running): number => Math.max(0, ...[...r.stderr().matchAll(/proposals accepted (\d+)/g)].map((m) => Number(m[1])));

async function waitFor<T>(what: string, f: () => T | undefined | null | false, peers: Record<string, Running>, ms = 45_000): Promise<T> {
  for (const end = Date.now() + ms; ; ) {
    const v = f();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > end) {
      const dump = Object.entries(peers).map(([n, r]) => `--- ${n} (exit ${r.child.exitCode}):\n${r.stdout()}${r.stderr().slice(-800)}`).join('\n');
      throw new Error(`timed out waiting for ${what}\n${dump}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The cut between the bridges: the link down, and the TCP connections across it destroyed (ss -K) in every namespace. */
const CUT = `ip link set x0 down; ip link set x1 down
  for i in 1 2; do for j in 3 4; do ip netns exec gt$i ss -K dst 10.22.0.$j >/dev/null 2>&1; ip netns exec gt$j ss -K dst 10.22.0.$i >/dev/null 2>&1; done; done`;
const HEAL = 'ip link set x0 up; ip link set x1 up';

/**
 * Four peers, named in namespace order (gt1..gt4): their keys are made here (each
 * directory's peer.key), so every address is known before any starts; `startIn` runs
 * `ghost-tensor swarm` in the peer's namespace on `port`.
 */
async function fourPeers<N extends string>(ns: Netns, names: readonly [N, N, N, N], port: number, children: ChildProcess[]) {
  const { generateKeyPair, privateKeyToProtobuf } = await import('@libp2p/crypto/keys');
  const { peerIdFromPrivateKey } = await import('@libp2p/peer-id');
  const dirs = {} as Record<N, string>, ids = {} as Record<N, string>, addr = {} as Record<N, string>;
  for (const [i, n] of names.entries()) {
    const key = await generateKeyPair('Ed25519');
    dirs[n] = join(base, `${port}-${n}`);
    mkdirSync(dirs[n], { recursive: true });
    writeFileSync(join(dirs[n], 'peer.key'), privateKeyToProtobuf(key));
    ids[n] = peerIdFromPrivateKey(key).toString();
    addr[n] = `/ip4/10.22.0.${i + 1}/tcp/${port}/p2p/${ids[n]}`;
  }
  const peers = {} as Record<N, Running>;
  const startIn = (n: N, args: string[]): Running => {
    const i = names.indexOf(n) + 1;
    const child = ns.spawnIn(`gt${i}`, [NODE, BIN, 'swarm', '--dir', dirs[n], '--listen', `/ip4/10.22.0.${i}/tcp/${port}`, ...MODEL, ...args]);
    children.push(child);
    let out = '', err = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return (peers[n] = { child, stdout: () => out, stderr: () => err, exit });
  };
  /** A peer's log file holds every entry it applied (appended and fsynced before applying; the sequencer's before it published it). */
  // (None yet while the process is starting: it creates the file when it opens its log.)
  const log = (n: N): { generation: number; proof: Uint8Array }[] => (existsSync(join(dirs[n], 'log.bin')) ? logRecords(join(dirs[n], 'log.bin')) : []);
  const held = (n: N): number => log(n).length;
  return { dirs, ids, addr, peers, startIn, log, held };
}

/** A log verified from generation 0 with no network: the digest (hex) at every generation. */
async function replayDigests(log: { generation: number; proof: Uint8Array }[]): Promise<string[]> {
  expect(log.map((e) => e.generation)).toEqual([...Array(log.length).keys()]);
  return logDigests(log);
}
const hexes = (l: { proof: Uint8Array }[]): string[] => l.map((e) => Buffer.from(e.proof).toString('hex'));
const ended = (r: Running): { generation: number; digest: string } | undefined => {
  const e = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(r.stdout());
  return e ? { generation: Number(e[1]), digest: e[2]! } : undefined;
};

describe.skipIf(typeof netns === 'string')('ghost-tensor swarm: a partition in network namespaces', () => {
  it('the link between two groups goes down while two trainers propose: the side without the sequencer does not advance, the other does; after healing all end at one digest, the log replayed, with no verified step lost', async () => {
    const ns = netns as Netns;
    const children: ChildProcess[] = [];
    try {
      const { ids, addr, peers, startIn, log, held } = await fourPeers(ns, ['S', 'A', 'B', 'W'], 4022, children);
      const genesis = Buffer.from((await swarmGenesisModel(CONFIG).ghost()).digest).toString('hex');
      // A stops at U; B (and W) go on to UB. After A has stopped only B proposes, so B is heard after the heal however
      // the race between the two trainers' proposals went (a loaded machine can make B lose every one while A trains).
      const U = 40, UB = U + 4;
      const until = { S: UB, A: U, B: UB, W: UB };
      const join_ = ['--digest', genesis, '--sequencer', ids.S];
      const S = startIn('S', ['--role', 'sequencer']);
      await waitFor('the sequencer listening', () => /^listen /m.test(S.stdout()), peers);
      const A = startIn('A', ['--role', 'trainer', '--data', TEXT, '--seed', '1', '--until', String(until.A), ...join_, '--bootstrap', addr.S]);
      const B = startIn('B', ['--role', 'trainer', '--data', TEXT, '--seed', '2', '--until', String(until.B), ...join_, '--bootstrap', `${addr.S},${addr.A}`]);
      const W = startIn('W', ['--role', 'verify', '--until', String(until.W), ...join_, '--bootstrap', `${addr.S},${addr.B}`]);
      await waitFor('every peer at generation 2', () => (['S', 'A', 'B', 'W'] as const).every((n) => held(n) >= 2), peers);

      // The cut: {S, A} | {B, W}. The TCP connections across it are destroyed, as a partition longer than the
      // peers' timeouts would: what is published meanwhile is lost to the other side, not queued in TCP for after the heal.
      ns.run(CUT);
      // No entry the sequencer had not logged by now can reach the cut-off side until the heal.
      const sAtCut = held('S');
      const atCut = { S: reported(S), Baccepted: accepted(B) };
      expect(sAtCut).toBeLessThan(U - 10);
      let cutSide = 0;
      await waitFor('the sequencer side six steps on', () => {
        cutSide = Math.max(cutSide, held('B'), held('W'));
        return held('S') >= sAtCut + 6 && reported(A) >= sAtCut + 6;
      }, peers);
      cutSide = Math.max(cutSide, held('B'), held('W'));
      if (process.env.SWARM_NETNS_DEBUG) console.log('at cut', sAtCut, atCut, 'cut side at most', cutSide, 'now', { B: held('B'), W: held('W'), S: held('S'), A: held('A') });
      expect(cutSide).toBeLessThanOrEqual(sAtCut);
      expect(held('S')).toBeGreaterThanOrEqual(cutSide + 6);

      // Heal: the cut-off side dials the sequencer back, fetches and verifies what it missed, and training goes on to U
      // (A), then UB (B and W).
      ns.run(HEAL);
      for (const [n, r] of Object.entries({ A, B, W })) {
        const code = await r.exit;
        expect(code, `${n}: ${r.stderr().slice(-1500)}`).toBe(0);
      }
      S.child.kill('SIGTERM');
      expect(await S.exit, S.stderr().slice(-1500)).toBe(0);
      // B's proposals were sequenced again after the heal: the cut-off trainer was heard again (its last progress line,
      // printed at exit, against the one it had printed by the cut).
      expect(accepted(B)).toBeGreaterThan(atCut.Baccepted);

      // The reference: the sequencer's log file verified from generation 0 with no network, the digest at every generation.
      const seqLog = log('S');
      const at = await replayDigests(seqLog);
      // A trainer may propose once more while the step that reaches its --until is being applied (--until is checked
      // between proposals), so a peer stops there or just past it. No verified step lost, no fork: every peer's own log file is
      // the sequencer's log up to the peer's generation, and the peer's digest is the replay's there.
      for (const n of ['S', 'A', 'B', 'W'] as const) {
        const e = ended(peers[n]);
        expect(e, n).toBeDefined();
        expect(e!.generation, n).toBeGreaterThanOrEqual(until[n]);
        expect(e!.digest, n).toBe(at[e!.generation]);
        expect(hexes(log(n)), n).toEqual(hexes(seqLog.slice(0, e!.generation)));
      }
    } finally {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  }, 150_000);

  it('with a backup sequencer on the cut-off side, that side takes over and the swarm forks (by design): both logs verify from generation 0, share every entry before the cut, and the fork is not repaired by the heal', async () => {
    const ns = netns as Netns;
    const children: ChildProcess[] = [];
    try {
      const { ids, addr, peers, startIn, log, held } = await fourPeers(ns, ['S1', 'A', 'S2', 'B'], 4023, children);
      const genesis = Buffer.from((await swarmGenesisModel(CONFIG).ghost()).digest).toString('hex');
      const list = (self: 'S1' | 'S2' | undefined): string => [self === 'S1' ? 'self' : ids.S1, self === 'S2' ? 'self' : ids.S2].join(',');
      const common = ['--digest', genesis, '--takeover-ms', '1500'];
      const S1 = startIn('S1', ['--role', 'sequencer', '--sequencer', list('S1'), '--takeover-ms', '1500']);
      await waitFor('the first sequencer listening', () => /^listen /m.test(S1.stdout()), peers);
      const S2 = startIn('S2', ['--role', 'sequencer', '--sequencer', list('S2'), ...common, '--bootstrap', addr.S1]);
      const A = startIn('A', ['--role', 'trainer', '--data', TEXT, '--seed', '1', '--sequencer', list(undefined), ...common, '--bootstrap', `${addr.S1},${addr.S2}`]);
      const B = startIn('B', ['--role', 'trainer', '--data', TEXT, '--seed', '2', '--sequencer', list(undefined), ...common, '--bootstrap', `${addr.S1},${addr.S2}`]);
      await waitFor('every peer at generation 2', () => (['S1', 'S2', 'A', 'B'] as const).every((n) => held(n) >= 2), peers);

      ns.run(CUT);
      const c = held('S1');
      // Each side goes on: S1 sequences A's steps; B's proposal waits 1.5 s, then B and S2 move to S2, which sequences B's.
      // The moves are read from stderr, which a peer writes between its own steps (a sequencer every 250 ms, when its
      // event loop gets there), so they may come after the log files have grown: wait for both.
      const s2Moved = /swarm: following sequencer \S+ \(this peer\) from generation \d+: silent for 1500 ms/;
      const bMoved = new RegExp(`swarm: following sequencer ${ids.S2} from generation \\d+`);
      await waitFor('both sides three steps past the cut, S2 and B reporting the move to S2', () =>
        held('S1') >= c + 3 && held('S2') >= c + 3 && held('B') >= c + 3 && s2Moved.test(S2.stderr()) && bMoved.test(B.stderr()), peers);
      expect(S2.stderr()).toMatch(s2Moved);
      expect(B.stderr()).toMatch(bMoved);
      ns.run(HEAL);
      // Let the two sides meet again for a while; then every peer is killed (SIGKILL: a trainer whose proposal waits on a
      // sequencer of the other side would wait out its 30 s timeout at SIGTERM). Its log file is its durable state.
      await new Promise((r) => setTimeout(r, 2000));
      for (const r of [A, B, S2, S1]) r.child.kill('SIGKILL');
      for (const r of [A, B, S2, S1]) await r.exit;

      // The fork: the two sequencers' logs agree before some generation f >= 2 and differ there; each verifies from 0.
      const l1 = log('S1'), l2 = log('S2');
      const h1 = hexes(l1), h2 = hexes(l2);
      let f = 0;
      while (f < Math.min(h1.length, h2.length) && h1[f] === h2[f]) f++;
      expect(f).toBeGreaterThanOrEqual(2);
      expect(f).toBeLessThanOrEqual(c);
      expect(h1.length).toBeGreaterThan(f);
      expect(h2.length).toBeGreaterThan(f);
      const at1 = await replayDigests(l1), at2 = await replayDigests(l2);
      expect(at1[f + 1]).not.toBe(at2[f + 1]);
      // Every peer is on one of the two verified logs (its log file a prefix of its side's, its digest the replay's), and
      // none was rewritten by the heal: the fork is not repaired.
      // Every peer's log file is a prefix of its side's log, past the fork: none was rewritten by the heal, and none
      // moved to the other side's log (the fork is not repaired).
      for (const [n, side] of [['S1', h1], ['A', h1], ['S2', h2], ['B', h2]] as const) {
        const mine = hexes(log(n));
        expect(mine.length, n).toBeGreaterThan(f);
        expect(mine, n).toEqual(side.slice(0, mine.length));
      }
      expect(at1.length).toBe(h1.length + 1);
      expect(at2.length).toBe(h2.length + 1);
      if (process.env.SWARM_NETNS_DEBUG) {
        console.log('fork at', f, 'cut at', c, 'lengths', h1.length, h2.length);
        for (const [n, r] of Object.entries(peers) as [string, Running][]) console.log(n, r.stderr().split('\n').filter((l) => /following|rejected [1-9]/.test(l)).slice(-4).join('\n'));
      }
    } finally {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  }, 150_000);
});

afterAll(() => {
  if (typeof netns !== 'string') netns.close();
});
