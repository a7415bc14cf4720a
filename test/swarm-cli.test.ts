/**
 * `ghost-tensor swarm` (docs/cli.md): usage errors with their exit codes (in this
 * process), then two peers as child processes on loopback (bin/ghost-tensor.mjs over
 * dist/: `npm run build:ts` first): a sequencer (announcing digests) and a trainer on a text file. Both end at
 * one digest, equal to the sequencer's log file verified from generation 0 with no
 * network; SIGTERM stops the sequencer cleanly, and the same command resumes it at its
 * generation.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { Model, verifyTrainStep } from '../lib/index.js';
import { swarmGenesisModel } from '../lib/cli/swarm.js';
import { runCli } from './helpers/cli.js';
import { CONFIG, logRecords, MODEL, swarmScratch, type Running } from './helpers/swarm-cli.js';

const { base, TEXT, start } = swarmScratch('gt-swarm-cli-');

async function until(r: Running, re: RegExp): Promise<RegExpExecArray> {
  for (let i = 0; i < 600; i++) {
    const m = re.exec(r.stdout());
    if (m) return m;
    if (r.child.exitCode !== null) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`no ${re} in: ${r.stdout()}\n${r.stderr()}`);
}

describe('ghost-tensor swarm', () => {
  it('usage errors exit 2, a digest the options do not build exits 1, a data file shorter than a window exits 3', async () => {
    const d = join(base, 'usage');
    const z = '0'.repeat(64);
    const boot = '/ip4/127.0.0.1/tcp/1/p2p/12D3KooWSXPScNSYFvDQ5TKAAk9gdxitMg2NQchU7s8kLKe8AEkv';
    const cases: [string[], RegExp][] = [
      [['--role', 'sequencer'], /--dir DIR is required/],
      [['--dir', d, '--role', 'boss'], /--role takes sequencer, trainer or verify/],
      [['--dir', d, '--role', 'trainer', '--sequencer', 'x', '--bootstrap', boot, '--data', TEXT], /--digest HEX .* is required/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--bootstrap', boot], /--sequencer ID is required/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--sequencer', 'x'], /--bootstrap ADDR is required/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--sequencer', 'x', '--bootstrap', '/ip4/127.0.0.1/tcp/1'], /--bootstrap takes multiaddrs ending in \/p2p/],
      [['--dir', d, '--role', 'trainer', '--digest', z, '--sequencer', 'x', '--bootstrap', boot], /a trainer needs --data FILE/],
      [['--dir', d, '--role', 'sequencer', '--data', TEXT], /--data, --steps and --sequences are for a trainer/],
      [['--dir', d, '--role', 'sequencer', '--sequences', '2'], /--data, --steps and --sequences are for a trainer/],
      [['--dir', d, '--role', 'trainer', '--digest', z, '--sequencer', 'x', '--bootstrap', boot, '--data', TEXT, '--sequences', '0'], /--sequences/],
      [['--dir', d, '--role', 'sequencer', '--sequencer', 'x'], /a sequencer lists itself in --sequencer as self/],
      [['--dir', d, '--role', 'sequencer', '--sequencer', 'x,self'], /--digest HEX .* is required for a sequencer that is not first/],
      [['--dir', d, '--role', 'sequencer', '--sequencer', 'x,self', '--digest', z], /--bootstrap ADDR is required for a sequencer that is not first/],
      [['--dir', d, '--role', 'sequencer', '--sequencer', 'self,self'], /--sequencer lists a peer twice/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--sequencer', 'x,self', '--bootstrap', boot], /only a sequencer lists itself/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--sequencer', 'x', '--bootstrap', boot, '--join', 'snapshot'], /--join takes log or checkpoint/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--sequencer', 'x', '--bootstrap', boot, '--takeover-ms', '0'], /--takeover-ms/],
      [['--dir', d, '--role', 'sequencer', '--digest', 'abc'], /--digest must be 64 hex digits/],
      [['--dir', d, '--role', 'sequencer', '--dim', '9'], /--dim \(9\) must be a multiple of --heads \(2\)/],
      [['--dir', d, '--role', 'sequencer', '--lr', 'fast'], /--lr must be a number/],
      [['--dir', d, '--role', 'sequencer', '--bogus'], /Unknown option '--bogus'/],
      [['--dir', d, '--role', 'sequencer', '--announce', 'all'], /--announce takes entry or digest/],
      [['--dir', d, '--role', 'verify', '--digest', z, '--sequencer', 'x', '--bootstrap', boot, '--announce', 'digest'], /--announce is for the sequencer/],
    ];
    for (const [args, re] of cases) {
      const r = await runCli('swarm', ...args);
      expect(`${args.join(' ')}: ${r.code}`).toBe(`${args.join(' ')}: 2`);
      expect(r.stderr).toMatch(re);
    }
    const mismatch = await runCli('swarm', '--dir', d, '--role', 'sequencer', '--digest', z, ...MODEL);
    expect(mismatch.code).toBe(1);
    expect(mismatch.stderr).toMatch(/rejected: GHOST_MISMATCH/);
    const short = join(base, 'short.txt');
    writeFileSync(short, 'too short');
    const g0 = await swarmGenesisModel(CONFIG).ghost();
    const r = await runCli('swarm', '--dir', join(base, 'short'), '--role', 'trainer', '--digest', Buffer.from(g0.digest).toString('hex'), '--sequencer', 'x', '--bootstrap', boot, '--data', short, ...MODEL);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/the data file has 9 bytes; a window needs 17/);
  }, 30_000);

  it('a sequencer and a trainer (two processes) reach one digest, that of the log verified from generation 0; SIGTERM / SIGINT stop, the same commands resume', async () => {
    const sdir = join(base, 'seq'), tdir = join(base, 'trainer');
    const seq = start('--dir', sdir, '--role', 'sequencer', '--announce', 'digest', ...MODEL);
    const id = (await until(seq, /^peer (\S+)$/m))[1]!;
    const addr = (await until(seq, /^listen (\S+)$/m))[1]!;
    const genesis = (await until(seq, /^genesis ([0-9a-f]{64})$/m))[1]!;
    const g0 = await swarmGenesisModel(CONFIG).ghost();
    expect(genesis).toBe(Buffer.from(g0.digest).toString('hex'));

    const trainer = start('--dir', tdir, '--role', 'trainer', '--digest', genesis, '--sequencer', id, '--bootstrap', addr, '--data', TEXT, '--steps', '2', ...MODEL);
    expect(await trainer.exit, trainer.stderr()).toBe(0);
    const tEnd = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(trainer.stdout());
    expect(tEnd?.[1]).toBe('2');
    expect(trainer.stderr()).toMatch(/swarm generation 2 {2}proposals accepted 2 stale 0 {2}loss \d/);

    seq.child.kill('SIGTERM');
    expect(await seq.exit, seq.stderr()).toBe(0);
    expect(seq.stderr()).toMatch(/SIGTERM: saving the peer's state/);
    const sEnd = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(seq.stdout());
    expect(sEnd?.slice(1)).toEqual(tEnd?.slice(1));

    // The reference: the sequencer's log file verified from generation 0, no network.
    const log = logRecords(join(sdir, 'log.bin'));
    expect(log.map((e) => e.generation)).toEqual([0, 1]);
    let pinned = g0;
    for (const e of log) pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
    expect(Buffer.from(pinned.digest).toString('hex')).toBe(sEnd![2]);
    // The trainer's saved replica is that model.
    const { model, ghost } = await Model.load(join(tdir, 'model'), { readOnly: true });
    model.close();
    expect(Buffer.from(ghost.digest).toString('hex')).toBe(sEnd![2]);

    // The same command resumes the sequencer at its generation, with its peer id, and the
    // trainer from its saved replica; SIGINT stops the sequencer as SIGTERM does.
    const again = start('--dir', sdir, '--role', 'sequencer', '--announce', 'digest', ...MODEL);
    expect((await until(again, /^role (.*)$/m))[1]).toBe('sequencer (resumed at generation 2)');
    expect(again.stdout()).toContain(`peer ${id}`);
    const addr2 = (await until(again, /^listen (\S+)$/m))[1]!;
    // This step is one of three windows (--sequences 3: a step proof of kind 4).
    const more = start('--dir', tdir, '--role', 'trainer', '--digest', genesis, '--sequencer', id, '--bootstrap', addr2, '--data', TEXT, '--steps', '1', '--sequences', '3', ...MODEL);
    expect(await more.exit, more.stderr()).toBe(0);
    expect(more.stdout()).toContain('role trainer (resumed at generation 2)');
    expect(more.stderr()).not.toMatch(/replaying the log from generation 0/);
    const mEnd = /stopped at generation 3, digest ([0-9a-f]{64})/.exec(more.stdout());
    expect(mEnd).not.toBeNull();
    again.child.kill('SIGINT');
    expect(await again.exit, again.stderr()).toBe(0);
    expect(again.stderr()).toMatch(/SIGINT: saving the peer's state/);
    expect(again.stdout()).toContain(`stopped at generation 3, digest ${mEnd![1]}`);
    let p3 = g0;
    const log3 = logRecords(join(sdir, 'log.bin'));
    expect(log3.map((e) => e.proof[10])).toEqual([3, 3, 4]);
    for (const e of log3) p3 = (await verifyTrainStep(p3, e.proof)).ghost;
    expect(Buffer.from(p3.digest).toString('hex')).toBe(mEnd![1]);
  }, 60_000);
  it('--sequencer A,B: when A is killed the trainer moves to B, which sequences on; B ends at the trainer\'s digest, that of its log from the takeover verified on the log before it', async () => {
    const g0 = await swarmGenesisModel(CONFIG).ghost();
    const genesis = Buffer.from(g0.digest).toString('hex');
    const a = start('--dir', join(base, 'tk-a'), '--role', 'sequencer', ...MODEL, '--quiet');
    const aId = (await until(a, /^peer (\S+)$/m))[1]!;
    const aAddr = (await until(a, /^listen (\S+)$/m))[1]!;
    const b = start('--dir', join(base, 'tk-b'), '--role', 'sequencer', '--sequencer', `${aId},self`, '--digest', genesis, '--bootstrap', aAddr, '--takeover-ms', '1000', ...MODEL, '--quiet');
    const bId = (await until(b, /^peer (\S+)$/m))[1]!;
    const bAddr = (await until(b, /^listen (\S+)$/m))[1]!;
    await until(b, /^role sequencer$/m);
    const t = start('--dir', join(base, 'tk-t'), '--role', 'trainer', '--sequencer', `${aId},${bId}`, '--digest', genesis, '--bootstrap', `${aAddr},${bAddr}`,
      '--takeover-ms', '1000', '--data', TEXT, '--until', '4', ...MODEL);
    for (let i = 0; i < 600 && !/swarm generation [2-9]/.test(t.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
    expect(t.stderr()).toMatch(/swarm generation [2-9]/);
    a.child.kill('SIGKILL');
    expect(await t.exit, t.stderr()).toBe(0);
    const tEnd = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(t.stdout());
    expect(Number(tEnd?.[1])).toBeGreaterThanOrEqual(4);
    b.child.kill('SIGTERM');
    expect(await b.exit, b.stderr()).toBe(0);
    const bEnd = /stopped at generation (\d+), digest ([0-9a-f]{64})/.exec(b.stdout());
    expect(bEnd?.slice(1)).toEqual(tEnd?.slice(1));
    // A's log up to the kill, then B's from where it took over: one chain from generation 0.
    const la = logRecords(join(base, 'tk-a', 'log.bin')), lb = logRecords(join(base, 'tk-b', 'log.bin'));
    const byGen = new Map<number, Uint8Array>();
    for (const e of [...la, ...lb]) byGen.set(e.generation, e.proof);
    let pinned = g0;
    for (let g = 0; g < Number(bEnd![1]); g++) pinned = (await verifyTrainStep(pinned, byGen.get(g)!)).ghost;
    expect(Buffer.from(pinned.digest).toString('hex')).toBe(bEnd![2]);
    expect(lb.length).toBeGreaterThan(0);
  }, 60_000);
  // A trainer killed with SIGKILL (and the verify-only peer and the sequencer): test/swarm-kill.test.ts.
});
