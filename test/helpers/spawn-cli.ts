/**
 * Runs the `ghost-tensor` command as a child process (bin/ghost-tensor.mjs over dist/),
 * keeping its stdout and stderr as text, and remembers it so a file's afterAll can kill
 * what is still running (killAll).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export const BIN = join(import.meta.dirname, '..', '..', 'bin', 'ghost-tensor.mjs');

export interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Its exit code (null when a signal ended it). */
  exit: Promise<number | null>;
}

const started: ChildProcess[] = [];

export function spawnCli(args: readonly string[], env: NodeJS.ProcessEnv = process.env): Running {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  started.push(child);
  let out = '', err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, stdout: () => out, stderr: () => err, exit };
}

/** SIGKILL to every child spawnCli started that is still running. */
export function killAll(): void {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}
