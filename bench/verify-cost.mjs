#!/usr/bin/env node
/**
 * What verifying a proof costs the verifier, per proof byte: peak memory and time of
 * verifyForward / verifyUpdate (TypeScript, no addon) across proof kinds and sizes,
 * honest and hostile (docs/proof-format.md, "Verifier limits").
 *
 *   node --expose-gc bench/verify-cost.mjs           (~2 min on 2 cores)
 *   node --expose-gc bench/verify-cost.mjs --quick   (smaller sizes, ~40 s)
 *
 * The parent makes every proof (honest ones with the native prover, dist/index.js;
 * hostile ones by hand) and writes it with its Ghost file to a temporary directory;
 * each case is then verified in a fresh child process (node --expose-gc), whose peak
 * RSS is reset just before the call (Linux: /proc/self/clear_refs), so its peak RSS
 * (VmHWM) above its RSS then is the call's peak memory. Time: the median of repeated calls (one for slow ones).
 * Work: the units the verifier charged (VerifyCost.work; refused proofs: none), and
 * nanoseconds per unit.
 *
 * Hostile cases: an all-rows block of 2^24 held rows per 4 MiB (2 bits a row), once
 * more with the memory limit lifted (maxCells 2^40: what decoding cost before the
 * budget); 65536 repeated ids of a 4096-wide table (1 GiB of output); an attention
 * sequence of 32768 rows (O(n^2)), once more with maxSequence lifted (the work estimate
 * refuses it); the held-rows proof decoded without a Ghost file (a client's pre-check).
 *
 * Table to stdout, progress to stderr, results to bench/results/verify-cost.json.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { fmt, logger, machine, nowMs, otherProcesses, rng, round, ROOT, table, tryGc, writeResults } from './lib/common.mjs';

const V = await import(join(ROOT, 'dist/verify/index.js'));
const { ByteWriter, PROOF_MAGIC } = await import(join(ROOT, 'dist/internal.js'));

const childArg = process.argv.find((a) => a.startsWith('--child='));

// ---------------------------------------------------------------- child: one verification

if (childArg) {
  const dir = childArg.slice(8);
  const spec = JSON.parse(readFileSync(join(dir, 'spec.json'), 'utf8'));
  const ghost = await V.pinGhost(readFileSync(join(dir, 'ghost.bin')));
  const bytes = new Uint8Array(readFileSync(join(dir, 'proof.bin')));
  const options = spec.limits ? { limits: spec.limits } : {};
  const run = async () => {
    try {
      if (spec.mode === 'decode') {
        V.decodeProof(bytes, options);
        return { outcome: 'DECODED' };
      }
      const v = spec.kind === 'update' ? await V.verifyUpdate(ghost, bytes, options) : await V.verifyForward(ghost, bytes, options);
      return { outcome: 'ACCEPTED', work: v.cost.work, cells: v.cost.cells };
    } catch (err) {
      if (err instanceof V.ProofError || err instanceof V.FormatError) return { outcome: err.reason, message: err.message.slice(0, 100) };
      throw err;
    }
  };
  await V.loadHasher();
  tryGc();
  // Linux: reset the peak RSS (VmHWM) to the current RSS, so the peak after the call is the call's.
  const status = (key) => Number(/(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith(key)) ?? '0 kB')[1]) * 1024;
  writeFileSync('/proc/self/clear_refs', '5');
  const rss0 = status('VmRSS:');
  const t0 = nowMs();
  const first = await run();
  const firstMs = nowMs() - t0;
  const peak = status('VmHWM:') - rss0;
  const times = [firstMs];
  while (times.length < 7 && times.reduce((a, b) => a + b, 0) < 1500) {
    tryGc();
    const t = nowMs();
    await run();
    times.push(nowMs() - t);
  }
  times.sort((a, b) => a - b);
  process.send({ ...first, peakBytes: Math.max(0, peak), ms: times[Math.floor(times.length / 2)], reps: times.length });
  process.disconnect();
  process.exit(0);
}

// ---------------------------------------------------------------- parent: the cases

const QUICK = process.argv.includes('--quick');
const log = logger('verify-cost');
const L = await import(join(ROOT, 'dist/index.js'));
const R = rng(2026);
const f32 = (n, scale = 1) => Float32Array.from({ length: n }, () => (R() * 2 - 1) * scale);
const cases = [];

async function honestForward(name, model, input) {
  const p = await model.prove(input);
  cases.push({ name, group: 'honest', kind: 'forward', ghost: (await model.ghost()).bytes, bytes: p.bytes });
}

// Hopfield (exact keys, N = 4096, d = 64, k = 32), batch B.
{
  const keys = L.SparseTensor.fromArray(f32(4096 * 64), 64), values = L.SparseTensor.fromArray(f32(4096 * 64), 64);
  const m = new L.Model([new L.HopfieldLookup({ keys, values, k: 32 })]);
  for (const B of QUICK ? [1, 64] : [1, 64, 1024]) await honestForward(`hopfield exact B=${B}`, m, f32(B * 64));
}
// Product keys (two tables of 256 x 32: N = 65536), B.
{
  const pk = L.ProductKeyIndex.random(256, 64);
  const m = new L.Model([new L.HopfieldLookup({ keys: pk, values: L.SparseTensor.fromArray(f32(65536 * 64), 64), k: 32 })]);
  for (const B of QUICK ? [1, 64] : [1, 256]) await honestForward(`hopfield pk B=${B}`, m, f32(B * 64));
}
// Embedding (4096 x 64), B ids with repeats.
{
  const m = new L.Model([new L.Embedding(L.SparseTensor.fromArray(f32(4096 * 64), 64))]);
  for (const B of QUICK ? [256] : [256, 4096]) await honestForward(`embedding B=${B}`, m, Uint32Array.from({ length: B }, () => Math.floor(R() * 4096)));
}
// Attention (dIn = D = 32, 4 heads, k = 8, causal, four projections of 32 x 32), n rows.
{
  const proj = () => new L.Projection({ weight: L.SparseTensor.fromArray(f32(32 * 32, 0.3), 32) });
  const m = new L.Model([new L.SparseSelfAttention({ heads: 4, k: 8, causal: true, query: proj(), key: proj(), value: proj(), output: proj() })]);
  for (const n of QUICK ? [64, 256] : [64, 256, 1024]) await honestForward(`attention n=${n}`, m, f32(n * 32));
}
// Update proofs (Adam), rows x 64 of a 65536 x 64 tensor.
{
  const t = L.SparseTensor.fromArray(f32(65536 * 64), 64);
  const m = new L.Model([new L.HopfieldLookup({ keys: t, values: t, k: 4 })]);
  const opt = new L.SparseAdam([t], { lr: 1e-3 });
  for (const rows of QUICK ? [256] : [256, 4096]) {
    const ids = Uint32Array.from({ length: rows }, (_, i) => i * 7);
    const ghost = (await m.ghost()).bytes;
    const [u] = await m.proveStep(opt, [{ tensor: t, ids, grads: f32(rows * 64) }]);
    cases.push({ name: `update adam rows=${rows}`, group: 'honest', kind: 'update', ghost, bytes: u.bytes });
  }
}

// Hostile proofs, by hand.
const manifest = (tensors, layers) => ({ formatVersion: 1, hashScheme: V.HASH_SCHEME, arithmetic: V.CANONICAL_VERSION, tensors, layers });
const head = (digest, layers) => new ByteWriter().bytes(PROOF_MAGIC).u16(1).u8(1).bytes(digest).u32(0).u32(layers);
{
  const N = 2 ** 24, dim = 64;
  const g = manifest([{ name: 'emb', dtype: 'f32', dim, n: N, root: new Uint8Array(32).fill(7) }], [{ op: 'embedding', table: 0, dim }]);
  const pinned = await V.pinGhost(g);
  const kinds = new Uint8Array(N / 4).fill(0x55);
  const held = (blocks) => {
    const w = head(pinned.digest, 1).u8(2).u32(1).u32(0).u8(2).u8(0).u8(blocks);
    for (let b = 0; b < blocks; b++) w.u32(0).u32(dim).u8(1).u32(N).bytes(kinds).u32(0);
    return w.u32(1).u32(1).f32(0).finish();
  };
  for (const blocks of QUICK ? [1, 4] : [1, 4, 16]) cases.push({ name: `held rows ${blocks * 4} MiB`, group: 'hostile', kind: 'forward', ghost: pinned.bytes, bytes: held(blocks) });
  cases.push({ name: 'held rows 16 MiB, decode only', group: 'hostile', kind: 'forward', mode: 'decode', ghost: pinned.bytes, bytes: held(4) });
  cases.push({ name: 'held rows 4 MiB, maxCells 2^40', group: 'hostile (limit lifted)', kind: 'forward', ghost: pinned.bytes, bytes: held(1), limits: { maxCells: 2 ** 40 } });
}
{
  const dim = 4096, B = 65536;
  const row = f32(dim);
  const h = await V.loadHasher();
  const g = manifest([{ name: 'emb', dtype: 'f32', dim, n: 1, root: V.rootOf(h, row, dim) }], [{ op: 'embedding', table: 0, dim }]);
  const pinned = await V.pinGhost(g);
  const w = head(pinned.digest, 1).u8(2).u32(B).u32s(new Uint32Array(B)).u8(2).u8(0).u8(1);
  w.u32(0).u32(dim).u8(0).u32(1).u32(0).u8(0).f32s(row).u32(0);
  cases.push({ name: 'repeated ids 65536 x 4096', group: 'hostile', kind: 'forward', ghost: pinned.bytes, bytes: w.u32(1).u32(1).f32(0).finish() });
}
{
  const dIn = 8, n = 32768;
  const g = manifest([{ name: 'unused', dtype: 'f32', dim: 1, n: 1, root: new Uint8Array(32) }], [{ op: 'attention', dIn, dOut: dIn, heads: 1, k: 2, causal: false, scale: 1, query: null, key: null, value: null, output: null }]);
  const pinned = await V.pinGhost(g);
  const bytes = head(pinned.digest, 1).u8(1).u32(n).u32(dIn).f32s(f32(n * dIn)).u8(3).u8(0).u8(0).u32(1).u32(1).f32(0).finish();
  cases.push({ name: 'attention n=32768', group: 'hostile', kind: 'forward', ghost: pinned.bytes, bytes });
  cases.push({ name: 'attention n=32768, maxSequence lifted', group: 'hostile (limit lifted)', kind: 'forward', ghost: pinned.bytes, bytes, limits: { maxSequence: n } });
}

// ---------------------------------------------------------------- run each case in a child

const self = fileURLToPath(import.meta.url);
const rows = [];
for (const c of cases) {
  const dir = mkdtempSync(join(tmpdir(), 'gt-verify-cost-'));
  try {
    writeFileSync(join(dir, 'ghost.bin'), c.ghost);
    writeFileSync(join(dir, 'proof.bin'), c.bytes);
    writeFileSync(join(dir, 'spec.json'), JSON.stringify({ kind: c.kind, mode: c.mode, limits: c.limits }));
    const r = await new Promise((resolve, reject) => {
      const child = fork(self, [`--child=${dir}`], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      let msg = null;
      child.on('message', (m) => (msg = m));
      child.on('exit', (code) => (msg ? resolve(msg) : reject(new Error(`${c.name}: child exited with ${code}`))));
    });
    const row = {
      case: c.name,
      group: c.group,
      proofBytes: c.bytes.length,
      outcome: r.outcome,
      ms: round(r.ms),
      peakMiB: round(r.peakBytes / 2 ** 20, 3),
      memPerByte: round(r.peakBytes / c.bytes.length, 3),
      nsPerByte: round((r.ms * 1e6) / c.bytes.length, 3),
      work: r.work ?? null,
      nsPerWork: r.work ? round((r.ms * 1e6) / r.work, 3) : null,
      reps: r.reps,
      ...(c.limits ? { limits: c.limits } : {}),
      ...(r.message ? { message: r.message } : {}),
    };
    rows.push(row);
    log(`${c.name}: ${row.outcome}, ${fmt(row.ms)} ms, peak ${fmt(row.peakMiB)} MiB`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

table(rows, [
  { key: 'case' },
  { key: 'proofBytes', header: 'proof bytes' },
  { key: 'outcome', format: (v) => v },
  { key: 'ms', header: 'verify ms' },
  { key: 'peakMiB', header: 'peak MiB' },
  { key: 'memPerByte', header: 'mem B / proof B' },
  { key: 'nsPerByte', header: 'ns / proof B' },
  { key: 'work', format: (v) => (v === null ? '-' : fmt(v)) },
  { key: 'nsPerWork', header: 'ns / work', format: (v) => (v === null ? '-' : fmt(v)) },
], {
  title: 'Verifier cost per proof byte (TypeScript verifier, default limits unless noted)',
  notes: ['peak: the child\'s peak RSS above its RSS before the call (reset there); includes the GC\'s slack', 'work: units charged against maxWork (accepted proofs)'],
});

const file = writeResults(QUICK ? 'verify-cost-quick' : 'verify-cost', {
  date: new Date().toISOString(),
  machine: machine(),
  otherProcesses: otherProcesses({ exclude: ['verify-cost'] }),
  limits: V.DEFAULT_VERIFIER_LIMITS,
  rows,
});
log(`wrote ${file}`);
