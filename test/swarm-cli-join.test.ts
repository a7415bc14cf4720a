/**
 * `ghost-tensor swarm --join checkpoint` end to end (docs/swarm.md, "Joining by a
 * checkpoint"; the library path is tested in test/swarm-checkpoint.test.ts): a sequencer
 * and a trainer run as child processes on loopback; a second trainer joins once the log
 * is some steps long, by the first trainer's checkpoint (its tensor files and optimizer
 * state, checked against the chain of Ghost digests the sequencer's log names), then
 * verifies the log from there and proposes. Its log file starts at the checkpoint's
 * generation (it fetched no entry before it), every entry in it is the sequencer's, its
 * digest is the sequencer's log verified from generation 0 with no network, and its
 * replica, saved at its clean stop, loads with that digest.
 * bin/ghost-tensor.mjs runs over dist/ (`npm run build:ts` first).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { Model, verifyTrainStep } from '../lib/index.js';
import { swarmGenesisModel } from '../lib/cli/swarm.js';
import { CONFIG, logRecords, MODEL, swarmScratch, type Running } from './helpers/swarm-cli.js';

const { base, TEXT, start } = swarmScratch('gt-swarm-join-');

async function until<T>(what: string, f: () => T | undefined | null | false, peers: Running[], ms = 30_000): Promise<T> {
  for (const end = Date.now() + ms; ; ) {
    const v = f();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}\n${peers.map((r) => `--- exit ${r.child.exitCode}\n${r.stdout()}${r.stderr().slice(-800)}`).join('\n')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
const reported = (r: Running): number => Math.max(0, ...[...r.stderr().matchAll(/swarm generation (\d+)/g)].map((m) => Number(m[1])));
/** The first address a peer listens on (with its /p2p/ id). */
const address = (r: Running): string => /^listen (\S+\/p2p\/\S+)$/m.exec(r.stdout())![1]!;

describe('ghost-tensor swarm --join checkpoint', () => {
  it('a trainer joins by another trainer\'s checkpoint, verifies the log from there, proposes, and ends at the digest of the log replayed from generation 0', async () => {
    const S = start('--dir', join(base, 'seq'), '--role', 'sequencer', ...MODEL);
    await until('the sequencer listening', () => /^listen /m.test(S.stdout()), [S]);
    const genesis = /^genesis ([0-9a-f]{64})$/m.exec(S.stdout())![1]!;
    const seqId = /^peer (\S+)$/m.exec(S.stdout())![1]!;
    const join_ = ['--digest', genesis, '--sequencer', seqId, ...MODEL];
    const T = start('--dir', join(base, 't1'), '--role', 'trainer', '--data', TEXT, '--seed', '1', ...join_, '--bootstrap', address(S));
    const all = [S, T];
    await until('the trainer listening', () => /^listen /m.test(T.stdout()), all);
    await until('generation 6', () => reported(S) >= 6, all);
    const jdir = join(base, 'joiner');
    const J = start('--dir', jdir, '--role', 'trainer', '--data', TEXT, '--seed', '2', '--steps', '2', '--join', 'checkpoint', ...join_, '--bootstrap', `${address(S)},${address(T)}`);
    all.push(J);
    // Once the joiner holds the checkpoint (its log file has a first entry, after it), the first trainer stops: it
    // proposes at the head without pause, so the joiner would chase the head for long and lose every race for a
    // generation (it replays each step too).
    await until('the checkpoint installed', () => existsSync(join(jdir, 'log.bin')) && logRecords(join(jdir, 'log.bin')).length > 0, all);
    T.child.kill('SIGTERM');
    expect(await T.exit, T.stderr().slice(-1500)).toBe(0);
    await until('the joiner to stop after two accepted proposals', () => J.child.exitCode !== null, all, 30_000);
    const code = await J.exit;
    expect(code, J.stderr()).toBe(0);
    S.child.kill('SIGTERM');
    expect(await S.exit, S.stderr().slice(-1500)).toBe(0);

    const cp = /^joined by a checkpoint at generation (\d+) \(Ghost digest ([0-9a-f]{64})\) from (\S+)$/m.exec(J.stdout());
    expect(cp, J.stdout()).not.toBeNull();
    const c = Number(cp![1]);
    expect(c).toBeGreaterThanOrEqual(6);
    // The trainer served it (a verify-only sequencer holds no checkpoint).
    expect(cp![3]).toBe(/^peer (\S+)$/m.exec(T.stdout())![1]);
    const end = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(J.stdout())!;
    const G = Number(end[1]);
    expect(G).toBeGreaterThan(c);
    expect(J.stderr()).toMatch(/proposals accepted 2/);

    // The reference: the sequencer's log file verified from generation 0, the digest at every generation.
    const log = logRecords(join(base, 'seq', 'log.bin'));
    expect(log.length).toBeGreaterThanOrEqual(G);
    let pinned = await swarmGenesisModel(CONFIG).ghost();
    const at = [Buffer.from(pinned.digest).toString('hex')];
    for (const e of log) {
      pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
      at.push(Buffer.from(pinned.digest).toString('hex'));
    }
    expect(cp![2]).toBe(at[c]);
    expect(end[2]).toBe(at[G]);
    // The joiner's log file starts at the checkpoint: it fetched no entry before it, and every entry after it is the sequencer's.
    const mine = logRecords(join(jdir, 'log.bin'));
    expect(mine.map((e) => e.generation)).toEqual(Array.from({ length: G - c }, (_, i) => c + i));
    for (const e of mine) expect(Buffer.from(e.proof).equals(Buffer.from(log[e.generation]!.proof))).toBe(true);
    // Its replica, saved at the clean stop, is that model (every root checked by Model.load).
    const { model, ghost } = await Model.load(join(jdir, 'model'), { readOnly: true });
    model.close();
    expect(Buffer.from(ghost.digest).toString('hex')).toBe(end[2]);
  }, 60_000);
});
