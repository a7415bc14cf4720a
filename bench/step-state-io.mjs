/**
 * Bytes of optimizer state the prover service writes per served step (docs/step-proofs.md,
 * "Saving and loading"): now, each step appends the state rows it wrote to step-state.log
 * and step-state.bin is rewritten whole only once the log is as large (compaction); before,
 * each step rewrote step-state.bin whole (every state row ever written: what
 * `model.stepState()` gives after the step, measured in the same run).
 *
 *   node bench/step-state-io.mjs [--steps=N]     (uses dist/: run `npm run build:ts` first)
 *
 * Serves a saved model in-process (ProverServer, writable), trains it through /train-step
 * with ProverClient (every step verified), and after each step reads the sizes of
 * step-state.log and step-state.bin (a new inode: compacted). Prints a table; writes
 * bench/results/step-state-io.json. Bytes only: no timings.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { fmtBytes, logger, machine, ROOT, table, writeResults } from './lib/common.mjs';

const log = logger('step-state-io');
const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : dflt;
};
const STEPS = arg('steps', 24);
const lib = await import(join(ROOT, 'dist', 'index.js'));
const { ProverClient, ProverServer } = await import(join(ROOT, 'dist', 'serve', 'index.js'));
const { languageModel } = lib;

const TEXT = Uint8Array.from(readFileSync(join(ROOT, 'docs', 'lm.md')));
const S = 32;
const batch = (s) => {
  const off = (s * 997) % (TEXT.length - S - 1);
  return { input: Uint32Array.from(TEXT.subarray(off, off + S)), targets: Uint32Array.from(TEXT.subarray(off + 1, off + S + 1)) };
};

const CASES = [
  { name: 'LM S32 D32, 1 layer', config: { context: S, dim: 32, layers: 1, heads: 2, hidden: 64, seed: 3 } },
  { name: 'the same, its MLP a memory of 128^2 rows (k 8)', config: { context: S, dim: 32, layers: 1, heads: 2, hidden: 64, seed: 3, memory: { layers: [0], subKeys: 128, k: 8, heads: 2 } } },
  { name: 'LM S32 D16, its MLP a memory of 512^2 rows (k 8)', config: { context: S, dim: 16, layers: 1, heads: 2, hidden: 32, seed: 3, memory: { layers: [0], subKeys: 512, k: 8, heads: 2 } } },
];

const base = mkdtempSync(join(tmpdir(), 'gt-bench-state-io-'));
const size = (f) => (existsSync(f) ? statSync(f).size : 0);
const ino = (f) => (existsSync(f) ? statSync(f).ino : -1);
const results = [];
try {
  for (const c of CASES) {
    log(`${c.name}: ${STEPS} steps`);
    const model = languageModel(c.config, { training: { loss: 'cross-entropy', lr: 1e-2, clipNorm: 1 } });
    await model.commit();
    const dir = join(base, String(results.length));
    const g0 = await model.save(dir);
    model.close();
    const server = await ProverServer.open(dir, { trainToken: 'bench-token' });
    const client = await ProverClient.connect(await server.listen(), g0.bytes, { generation: 0, token: 'bench-token' });
    const logFile = join(dir, 'step-state.log'), binFile = join(dir, 'step-state.bin');
    let now = 0, before = 0, compactions = 0, rewrites = 0;
    const perStep = [];
    for (let s = 0; s < STEPS; s++) {
      const was = { log: size(logFile), bin: ino(binFile), binBytes: size(binFile) };
      const r = await client.trainStep(batch(s));
      // The step's framed record (u32 length, the record, its BLAKE3), from the rows the proof's state blocks name.
      const p = lib.decodeProof(r.proof);
      const record = 4 + 8 + 4 + p.states.reduce((a, b) => a + 12 + b.ids.length * (4 + 8 * b.dim + 12), 0) + 32;
      // A step that writes half the state or more rewrites step-state.bin instead of appending (ModelDirectory.appendStep).
      const whole = 2 * record >= was.binBytes;
      let wrote = whole ? 0 : record;
      if (ino(binFile) !== was.bin) {
        if (whole) rewrites++;
        else compactions++;
        wrote += size(binFile); // the whole state (and the log emptied)
      } else if (size(logFile) - was.log !== record) throw new Error(`the log grew by ${size(logFile) - was.log} bytes; the record is ${record}`);
      const full = server.model.stepState().length;
      perStep.push({ now: wrote, before: full });
      now += wrote;
      before += full;
    }
    await server.close();
    const state = size(binFile);
    results.push({ case: c.name, steps: STEPS, compactions, rewrites, stateBytesEnd: state, bytesPerStepBefore: Math.round(before / STEPS), bytesPerStepNow: Math.round(now / STEPS), ratio: Math.round((1000 * now) / before) / 1000, perStep });
  }
} finally {
  rmSync(base, { recursive: true, force: true });
}
table(results, [
  { key: 'case' },
  { key: 'steps' },
  { key: 'bytesPerStepBefore', header: 'before: state bytes / step', format: fmtBytes },
  { key: 'bytesPerStepNow', header: 'now: state bytes / step', format: fmtBytes },
  { key: 'ratio', header: 'now / before' },
  { key: 'compactions', header: 'compactions' },
  { key: 'rewrites', header: 'whole rewrites (dense steps)' },
], {
  title: 'Optimizer state written per served step (step-state.bin rewritten whole, before; step-state.log records and compactions, now)',
  notes: ['"now": each step\'s framed record (checked against the log\'s growth) and, on a compaction step, the rewritten step-state.bin. "before": the whole state after the step, what each step rewrote before.'],
});
const file = writeResults('step-state-io', { date: new Date().toISOString(), machine: machine(), parameters: { steps: STEPS, cases: CASES }, results });
log(`wrote ${file}`);
