/**
 * `ghost-tensor swarm` peers as child processes (bin/ghost-tensor.mjs over dist/: `npm
 * run build:ts` first), for test/swarm-cli.test.ts and test/swarm-kill.test.ts: a scratch
 * directory with a text file for trainers, the small model both tests run, starting a peer
 * with its output collected, and reading a sequencer's log file. `swarmScratch` registers
 * an afterAll that kills every peer still running and removes the directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll } from 'vitest';

import { swarmGenesisModel, type SwarmModelConfig } from '../../lib/cli/swarm.js';
import { verifyTrainStep } from '../../lib/index.js';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'ghost-tensor.mjs');

/** The small model's options, the same for every peer (the command's defaults otherwise), and the config that builds its generation 0. */
export const MODEL = ['--context', '16', '--dim', '8', '--hidden', '12'];
export const CONFIG: SwarmModelConfig = { model: { context: 16, dim: 8, layers: 1, heads: 2, hidden: 12, seed: 1 }, lr: 0.01 };

export interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<number | null>;
}

/** A scratch directory (removed after the file's tests) holding TEXT, a text file for trainers, and `start`, which runs `ghost-tensor swarm ARGS`. */
export function swarmScratch(prefix: string): { base: string; TEXT: string; start: (...args: string[]) => Running } {
  const base = mkdtempSync(join(tmpdir(), prefix));
  const children: ChildProcess[] = [];
  afterAll(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    rmSync(base, { recursive: true, force: true });
  });
  const TEXT = join(base, 'text.txt');
  writeFileSync(TEXT, 'It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.\n'.repeat(4));
  const start = (...args: string[]): Running => {
    const child = spawn(process.execPath, [BIN, 'swarm', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '', err = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    return { child, stdout: () => out, stderr: () => err, exit };
  };
  return { base, TEXT, start };
}

/** A log file's records (u64 generation, u32 length, the step proof); a torn last record is left out, as the sequencer cuts it off at start. */
export function logRecords(file: string): { generation: number; proof: Uint8Array }[] {
  const b = new Uint8Array(readFileSync(file));
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = [];
  for (let at = 0; at + 12 <= b.length; ) {
    const n = dv.getUint32(at + 8, true);
    if (at + 12 + n > b.length) break;
    out.push({ generation: dv.getUint32(at, true), proof: b.slice(at + 12, at + 12 + n) });
    at += 12 + n;
  }
  return out;
}

/** A sequencer's log verified from generation 0 with no network: the Ghost digest (hex) at every generation. */
export async function logDigests(log: readonly { proof: Uint8Array }[]): Promise<string[]> {
  let pinned = await swarmGenesisModel(CONFIG).ghost();
  const at = [Buffer.from(pinned.digest).toString('hex')];
  for (const e of log) {
    pinned = (await verifyTrainStep(pinned, e.proof)).ghost;
    at.push(Buffer.from(pinned.digest).toString('hex'));
  }
  return at;
}
