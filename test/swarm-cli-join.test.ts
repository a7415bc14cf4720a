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

import { Model } from '../lib/index.js';
import { logDigests, logRecords, MODEL, swarmScratch, type Running } from './helpers/swarm-cli.js';

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

/**
 * A sequencer (in base/NAME-seq) and a trainer proposing without pause (base/NAME-t), once
 * the log is 6 steps long: `join_` are the options every joiner repeats.
 */
async function swarmAtGeneration6(name: string): Promise<{ S: Running; T: Running; all: Running[]; join_: string[]; log: () => { generation: number; proof: Uint8Array }[] }> {
  const S = start('--dir', join(base, `${name}-seq`), '--role', 'sequencer', ...MODEL);
  await until('the sequencer listening', () => /^listen /m.test(S.stdout()), [S]);
  const genesis = /^genesis ([0-9a-f]{64})$/m.exec(S.stdout())![1]!;
  const seqId = /^peer (\S+)$/m.exec(S.stdout())![1]!;
  const join_ = ['--digest', genesis, '--sequencer', seqId, ...MODEL];
  const T = start('--dir', join(base, `${name}-t`), '--role', 'trainer', '--data', TEXT, '--seed', '1', ...join_, '--bootstrap', address(S));
  const all = [S, T];
  await until('the trainer listening', () => /^listen /m.test(T.stdout()), all);
  await until('generation 6', () => reported(S) >= 6, all);
  return { S, T, all, join_, log: () => logRecords(join(base, `${name}-seq`, 'log.bin')) };
}

describe('ghost-tensor swarm --join checkpoint', () => {
  it('a trainer joins by another trainer\'s checkpoint, verifies the log from there, proposes, and ends at the digest of the log replayed from generation 0', async () => {
    const { S, T, all, join_, log: seqLog } = await swarmAtGeneration6('one');
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
    const log = seqLog();
    expect(log.length).toBeGreaterThanOrEqual(G);
    const at = await logDigests(log);
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
  it('a trainer and a verify-only peer that joined by a checkpoint restart from their own directories: the trainer after SIGKILL, the verify-only peer after SIGTERM', async () => {
    const { S, T, all, join_, log: seqLog } = await swarmAtGeneration6('two');
    const jdir = join(base, 'joiner2'), vdir = join(base, 'verifier2');
    const boot = ['--bootstrap', `${address(S)},${address(T)}`];
    const J = start('--dir', jdir, '--role', 'trainer', '--data', TEXT, '--seed', '2', '--join', 'checkpoint', ...join_, ...boot);
    const V = start('--dir', vdir, '--role', 'verify', '--join', 'checkpoint', ...join_, ...boot);
    all.push(J, V);
    const logged = (d: string): boolean => existsSync(join(d, 'log.bin')) && logRecords(join(d, 'log.bin')).length > 0;
    await until('both checkpoints installed', () => logged(jdir) && logged(vdir), all);
    T.child.kill('SIGTERM');
    expect(await T.exit, T.stderr().slice(-1500)).toBe(0);
    const c = Number(/^joined by a checkpoint at generation (\d+)/m.exec(J.stdout())![1]);
    const cv = Number(/^joined by a checkpoint at generation (\d+)/m.exec(V.stdout())![1]);
    expect(logRecords(join(jdir, 'log.bin'))[0]!.generation).toBe(c);
    expect(logRecords(join(vdir, 'log.bin'))[0]!.generation).toBe(cv);
    // The trainer is killed once a proposal of its own is sequenced (its log file then holds a step it made).
    await until('an accepted proposal of the joiner', () => /proposals accepted [1-9]/.test(J.stderr()), all);
    J.child.kill('SIGKILL');
    await J.exit;
    V.child.kill('SIGTERM');
    expect(await V.exit, V.stderr().slice(-1500)).toBe(0);

    // Restarted with the same command lines: each resumes past its checkpoint, from its own directory.
    const J2 = start('--dir', jdir, '--role', 'trainer', '--data', TEXT, '--seed', '3', '--steps', '1', '--join', 'checkpoint', ...join_, '--bootstrap', address(S));
    all.push(J2);
    await until('the restarted trainer to stop after one accepted proposal', () => J2.child.exitCode !== null, all);
    expect(await J2.exit, J2.stderr().slice(-1500)).toBe(0);
    const resumed = /^role trainer \(resumed at generation (\d+)\)$/m.exec(J2.stdout());
    expect(resumed, J2.stdout()).not.toBeNull();
    expect(Number(resumed![1])).toBeGreaterThanOrEqual(c);
    const head = reported(S);
    const V2 = start('--dir', vdir, '--role', 'verify', '--join', 'checkpoint', '--until', String(head), ...join_, '--bootstrap', address(S));
    all.push(V2);
    await until('the restarted verify-only peer to reach the head', () => V2.child.exitCode !== null, all);
    expect(await V2.exit, V2.stderr().slice(-1500)).toBe(0);
    const vres = /^role verify \(resumed at generation (\d+)\)$/m.exec(V2.stdout());
    expect(vres, V2.stdout()).not.toBeNull();
    expect(Number(vres![1])).toBeGreaterThanOrEqual(cv);
    S.child.kill('SIGTERM');
    expect(await S.exit, S.stderr().slice(-1500)).toBe(0);

    // Both end on the sequencer's log verified from generation 0.
    const at = await logDigests(seqLog());
    for (const r of [J2, V2]) {
      const end = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(r.stdout())!;
      expect(end[2]).toBe(at[Number(end[1])]);
    }
    expect(Number(/stopped at generation (\d+)/.exec(V2.stdout())![1])).toBeGreaterThanOrEqual(head);
  }, 90_000);
});
