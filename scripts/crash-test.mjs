#!/usr/bin/env node
// Crash test of tensor files (docs/storage.md): a child process trains and
// checkpoints in a loop and is killed with SIGKILL at random moments (while opening
// and replaying, stepping, writing a log record, compacting, or flipping the header).
// After each kill the file is reopened and must equal, exactly (every value, the
// root, the Adam state of every row), the state after the last checkpoint the child
// acknowledged, or after the one it had started (in flight when killed); no
// acknowledged checkpoint may be lost. The reference is an in-memory tensor trained
// with the same steps.
//
//   node scripts/crash-test.mjs --kills=200 [--rows=256] [--dim=16] [--compact-bytes=4096] [--seed=1]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ADAM = { lr: 0.01, weightDecay: 0.01 };

function mulberry32(seed) {
  let s = seed >>> 0;
  return () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Step s of the schedule: 8 rows (repeats allowed) and seeded gradients. */
export function stepOf(s, n, d) {
  const r = mulberry32(0x9e3779b9 ^ s);
  const ids = Array.from({ length: 8 }, () => Math.floor(r() * n));
  const grads = new Float32Array(ids.length * d);
  for (let i = 0; i < grads.length; i++) grads[i] = r() * 2 - 1;
  return { ids, grads };
}

function initialRows(n, d) {
  const r = mulberry32(12345);
  return Float32Array.from({ length: n * d }, () => r() - 0.5);
}

const hex = (a) => Buffer.from(a.buffer ?? a, a.byteOffset ?? 0, a.byteLength).toString('hex');

/**
 * Runs the test; resolves to a summary, rejects with the first violation.
 * options: kills, rows, dim, compactBytes, seed, maxDelayMs, log (function or undefined)
 */
export async function runCrashTest(options = {}) {
  const { SparseAdam, SparseTensor } = await import('../dist/index.js');
  const kills = options.kills ?? 200, n = options.rows ?? 256, d = options.dim ?? 16;
  const compactBytes = options.compactBytes ?? 4096, maxDelay = options.maxDelayMs ?? 300;
  const rand = mulberry32(options.seed ?? 1);
  const here = dirname(fileURLToPath(import.meta.url));
  const dir = mkdtempSync(join(options.dir ?? tmpdir(), 'gt-crash-'));
  const path = join(dir, 'crash.gtt');
  const init = initialRows(n, d);
  const stats = { kills: 0, committed: 0, inFlightCommitted: 0, killedBeforeReady: 0, acks: 0, maxCompactedSeq: 0 };
  try {
    await SparseTensor.fromArray(init, d).saveFile(path, { optimizerState: true });
    const ref = SparseTensor.fromArray(init, d);
    ref.commitSync();
    const refOpt = new SparseAdam([ref], ADAM);
    let refSteps = 0;
    let durable = 0; // last checkpoint known durable
    const allIds = Uint32Array.from({ length: n }, (_, i) => i);
    for (let k = 0; k < kills; k++) {
      const child = spawn(process.execPath, [join(here, 'crash-child.mjs'), path, String(n), String(d), String(compactBytes)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '', err = '';
      // A quarter of the kills count from the spawn (many land while opening and
      // replaying the log), the rest from READY (while training, checkpointing, compacting).
      const fromSpawn = rand() < 0.25;
      const delay = fromSpawn ? 20 + rand() * maxDelay : rand() * maxDelay * 0.3;
      let timer = fromSpawn ? setTimeout(() => child.kill('SIGKILL'), delay) : undefined;
      child.stdout.on('data', (b) => {
        out += b;
        if (timer === undefined && out.includes('READY')) timer = setTimeout(() => child.kill('SIGKILL'), delay);
      });
      child.stderr.on('data', (b) => (err += b));
      const closed = new Promise((res) => child.on('close', (code, signal) => res({ code, signal })));
      const { code, signal } = await closed;
      clearTimeout(timer);
      if (signal !== 'SIGKILL') throw new Error(`kill ${k}: the child exited by itself (code ${code}): ${err}`);
      stats.kills++;
      const acks = [...out.matchAll(/^ACK (\d+)$/gm)].map((m) => Number(m[1]));
      const ready = /^READY (\d+)$/m.exec(out);
      if (!ready) stats.killedBeforeReady++;
      if (ready && Number(ready[1]) < durable)
        throw new Error(`kill ${k}: the child resumed at ${ready[1]} but checkpoint ${durable} was acknowledged`);
      stats.acks += acks.length;
      const lastAck = acks.length ? acks[acks.length - 1] : durable;

      const t = await SparseTensor.openFile(path, { readOnly: true });
      try {
        const seq = t.file.seq;
        if (seq < lastAck) throw new Error(`kill ${k}: checkpoint ${lastAck} was acknowledged but the file holds ${seq} (lost)`);
        if (seq > lastAck + 1) {
          throw new Error(`kill ${k}: the file holds ${seq}, beyond the in-flight ${lastAck + 1} (READY ${ready ? ready[1] : 'not seen'}, ${acks.length} acks ${acks.length ? `${acks[0]}..${acks[acks.length - 1]}` : ''}, durable before ${durable}, killed ${fromSpawn ? 'from spawn' : 'from READY'} after ${delay.toFixed(0)} ms; stdout ${JSON.stringify(out.slice(-200))})`);
        }
        if (seq === lastAck + 1) stats.inFlightCommitted++;
        stats.maxCompactedSeq = Math.max(stats.maxCompactedSeq, t.file.compactedSeq);
        while (refSteps < seq) {
          refSteps++;
          const { ids, grads } = stepOf(refSteps, n, d);
          refOpt.step([{ tensor: ref, ids, grads }]);
        }
        if (hex(t.root()) !== hex(ref.root())) throw new Error(`kill ${k}: root differs from the reference at checkpoint ${seq}`);
        if (hex(t.gather(allIds)) !== hex(ref.gather(allIds))) throw new Error(`kill ${k}: values differ at checkpoint ${seq}`);
        const opt = new SparseAdam([t], ADAM);
        const a = opt.state(t, allIds), b = refOpt.state(ref, allIds);
        if (hex(a.m) !== hex(b.m) || hex(a.v) !== hex(b.v) || hex(a.steps) !== hex(b.steps))
          throw new Error(`kill ${k}: Adam state differs at checkpoint ${seq}`);
        if (opt.info(t).steps !== refOpt.info(ref).steps) throw new Error(`kill ${k}: global step differs`);
        durable = seq;
      } finally {
        t.close();
      }
      options.log?.(`kill ${k + 1}/${kills}: ${acks.length} acks, file at checkpoint ${durable}`);
    }
    stats.committed = durable;
    return stats;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name, def) => {
    const a = process.argv.find((x) => x.startsWith(`--${name}=`));
    return a ? Number(a.slice(name.length + 3)) : def;
  };
  const t0 = Date.now();
  const quiet = process.argv.includes('--quiet');
  const stats = await runCrashTest({
    kills: arg('kills', 200),
    rows: arg('rows', 256),
    dim: arg('dim', 16),
    compactBytes: arg('compact-bytes', 4096),
    seed: arg('seed', 1),
    maxDelayMs: arg('max-delay-ms', 300),
    log: quiet ? undefined : (m) => process.stdout.write(`${m}\n`),
  });
  console.log(JSON.stringify({ ...stats, seconds: (Date.now() - t0) / 1000 }));
  console.log('crash test passed: every reopened file equaled an acknowledged or in-flight checkpoint exactly');
}
