/**
 * `ghost-tensor swarm` peers as child processes, killed with SIGKILL at seeded random
 * moments (docs/swarm.md, "Joining and restarting"): the trainer, the verify-only peer
 * and the sequencer (with its log file) are each killed once while the trainer proposes,
 * and each restarts with the same command from its own directory. No sequenced generation
 * disappears: every generation any peer reported before a kill is still in the
 * sequencer's log after it, the log verifies from generation 0, and every peer ends at its
 * digest. bin/ghost-tensor.mjs runs over dist/ (`npm run build:ts` first).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { Model, verifyTrainStep } from '../lib/index.js';
import { swarmGenesisModel } from '../lib/cli/swarm.js';
import { Rng } from './helpers/rng.js';
import { CONFIG, logRecords, MODEL, swarmScratch, type Running } from './helpers/swarm-cli.js';

const { base, TEXT, start } = swarmScratch('gt-swarm-kill-');
/** The seed of the kill moments (printed, so a failure can be replayed). */
const SEED = Number(process.env.SWARM_KILL_SEED ?? 22);

async function waitFor<T>(what: string, f: () => T | undefined | null | false, ms = 20_000): Promise<T> {
  for (const end = Date.now() + ms; ; ) {
    const v = f();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The highest generation a peer's progress lines (stderr) or start line reported. */
const reported = (r: Running): number => Math.max(0, ...[...r.stderr().matchAll(/swarm generation (\d+)/g)].map((m) => Number(m[1])), ...[...r.stdout().matchAll(/resumed at generation (\d+)/g)].map((m) => Number(m[1])));

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

describe('ghost-tensor swarm: SIGKILL at random moments', () => {
  it(`the trainer, the verify-only peer and the sequencer are each killed once (seed ${SEED}) and restarted; no sequenced generation is lost and all converge`, async () => {
    const rng = new Rng(SEED);
    const sdir = join(base, 'seq'), tdir = join(base, 'trainer'), wdir = join(base, 'verify');
    const listen = `/ip4/127.0.0.1/tcp/${await freePort()}`;
    const seqArgs = ['--dir', sdir, '--role', 'sequencer', '--listen', listen, ...MODEL];
    // The sequencer's key is made here (its directory's peer.key), so that every peer starts at once.
    const { generateKeyPair, privateKeyToProtobuf } = await import('@libp2p/crypto/keys');
    const { peerIdFromPrivateKey } = await import('@libp2p/peer-id');
    const key = await generateKeyPair('Ed25519');
    mkdirSync(sdir, { recursive: true });
    writeFileSync(join(sdir, 'peer.key'), privateKeyToProtobuf(key));
    const id = peerIdFromPrivateKey(key).toString();
    const addr = `${listen}/p2p/${id}`;
    const genesis = Buffer.from((await swarmGenesisModel(CONFIG).ghost()).digest).toString('hex');
    let seq = start(...seqArgs);
    await waitFor('the sequencer listening', () => /^listen /m.test(seq.stdout()));
    const join_ = ['--digest', genesis, '--sequencer', id, '--bootstrap', addr, ...MODEL];
    const tArgs = ['--dir', tdir, '--role', 'trainer', '--data', TEXT, ...join_];
    const wArgs = ['--dir', wdir, '--role', 'verify', ...join_];
    /**
     * A peer under a supervisor: killed with SIGKILL at a seeded random moment, it is
     * started again with the same command (and again, should that start fail while the
     * sequencer is itself down: a bootstrap address that refuses exits 4).
     */
    const supervised = (args: string[]): { cur: () => Running; killAt: (ms: number) => Promise<number> } => {
      let r = start(...args);
      const restart = (): void => {
        void r.exit.then((code) => {
          if (code !== 0 && !stopping) {
            r = start(...args);
            restart();
          }
        });
      };
      restart();
      return {
        cur: () => r,
        killAt: async (ms) => {
          await new Promise((res) => setTimeout(res, ms));
          const floor = Math.max(reported(seq), reported(t.cur()), reported(w.cur()));
          r.child.kill('SIGKILL');
          await r.exit;
          return floor;
        },
      };
    };
    let stopping = false;
    const t = supervised(tArgs);
    const w = supervised(wArgs);
    await waitFor('generation 2', () => reported(seq) >= 2);
    expect(seq.stdout()).toContain(`genesis ${genesis}`);
    // Three kills at seeded random moments within 2.5 s (they may overlap).
    const delays = [rng.int(0, 2500), rng.int(0, 2500), rng.int(0, 2500)];
    const floors = await Promise.all([
      t.killAt(delays[0]!),
      w.killAt(delays[1]!),
      (async () => {
        await new Promise((res) => setTimeout(res, delays[2]));
        const f = Math.max(reported(seq), reported(t.cur()), reported(w.cur()));
        seq.child.kill('SIGKILL');
        await seq.exit;
        seq = start(...seqArgs);
        return f;
      })(),
    ]);
    if (process.env.SWARM_KILL_DEBUG) console.log('kills at', delays, 'floors', floors);
    const t0 = Date.now();
    const dbg = (m: string): void => void (process.env.SWARM_KILL_DEBUG && console.log(m, Date.now() - t0));
    const resumed = Number((await waitFor('the sequencer back', () => /^role sequencer(?: \(resumed at generation (\d+)\))?$/m.exec(seq.stdout())))[1] ?? 0);
    dbg(`resumed ${resumed}`);
    // No sequenced generation disappears: the log file was fsynced before each entry was published.
    expect(resumed).toBeGreaterThanOrEqual(floors[2]!);
    expect(seq.stdout()).toContain(`peer ${id}`);
    // Training goes on past the restart; then every peer stops at one digest.
    const target = resumed + 2;
    await waitFor(`generation ${target}`, () => reported(seq) >= target, 30_000);
    dbg('target');
    const T = t.cur();
    T.child.kill('SIGTERM');
    expect(await T.exit, T.stderr()).toBe(0);
    const tEnd = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(T.stdout())!;
    const G = Number(tEnd[1]);
    expect(G).toBeGreaterThanOrEqual(Math.max(...floors));
    const W = await waitFor('the verify-only peer running', () => /swarm generation/.test(w.cur().stderr()) && w.cur());
    await waitFor(`the verify-only peer at ${G}`, () => reported(W) >= G && reported(seq) >= G).catch((e: unknown) => {
      throw new Error(`${(e as Error).message}\nverify-only peer (exit ${W.child.exitCode}):\n${W.stdout()}${W.stderr().slice(-1500)}`);
    });
    dbg('W at G');
    stopping = true;
    for (const r of [W, seq]) r.child.kill('SIGTERM');
    for (const r of [W, seq]) expect(await r.exit, r.stderr()).toBe(0);
    for (const r of [W, seq]) expect(r.stdout()).toContain(`stopped at generation ${G}, digest ${tEnd[2]}`);
    // The reference: the sequencer's log file verified from generation 0 with no network.
    const log = logRecords(join(sdir, 'log.bin'));
    expect(log.map((e) => e.generation)).toEqual([...Array(G).keys()]);
    let pinned = await swarmGenesisModel(CONFIG).ghost();
    for (const e of log) pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
    expect(Buffer.from(pinned.digest).toString('hex')).toBe(tEnd[2]);
    // The trainer's replica, saved at its clean stop, is that model.
    const { model, ghost } = await Model.load(join(tdir, 'model'), { readOnly: true });
    model.close();
    expect(Buffer.from(ghost.digest).toString('hex')).toBe(tEnd[2]);
  }, 60_000);
});
