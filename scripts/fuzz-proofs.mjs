#!/usr/bin/env node
/**
 * The long run of the proof fuzzer (test/proof-fuzz.test.ts runs a few thousand of the
 * same mutants in CI; the pool, the mutations and the classifier are shared with it in
 * scripts/proof-mutants.mjs, given dist/ here). Builds the pool of honest proofs with the
 * native prover (dist/, so `npx tsc -p tsconfig.build.json` first), then mutates their bytes with
 * fast-check (bit flips, overwrites, truncation, extension, splices of other honest
 * proofs, duplicated ranges, length fields set to huge values, whole replacement) and
 * decodes + verifies every mutant in the context of its base proof, with the
 * TypeScript verifier (no addon). Half the mutants are checked under their base's tight
 * limits (its exact cost: anything costlier is refused with BUDGET), and the 'bomb'
 * mutations give them the costly shapes of hostile proofs (all rows held, repeated
 * inputs, long sequences).
 *
 *   node scripts/fuzz-proofs.mjs --runs=1000000 [--seed=N] [--jobs=2]
 *
 * Every mutant must be refused with a FormatError or ProofError, or be accepted as
 * identical (byte for byte an honest proof, verified to its output), equivalent (an
 * update proof whose revealed gradient / optimizer state differ but give the same step:
 * the verifier ends at the honest Ghost file) or reproved (a forward proof of another
 * input that is exactly the prover's proof of it). Anything else is a forgery, another
 * error type is a crash, a check slower than 2 s a hang: each is printed with the
 * mutant in hex, and the exit code is 1. Progress every 10,000 runs on stderr; the
 * summary on stdout (and as JSON with --json=FILE).
 */
import { fork } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import fc from 'fast-check';

import * as lib from '../dist/index.js';
import { buildPool, check, fieldOffsets, hex, mutate, mutationArb } from './proof-mutants.mjs';

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')).map(([k, v]) => [k, v ?? 'true']));
const RUNS = Number(args.runs ?? 100000);
const SEED = Number(args.seed ?? 0x6b057);
const JOBS = Number(args.jobs ?? 1);
const PROGRESS = Number(args.progress ?? 10000);

const log = (m) => process.stderr.write(`[fuzz-proofs${JOBS > 1 || args.worker ? ` ${args.worker ?? 'main'}` : ''}] ${m}\n`);

// ---------------------------------------------------------------- parallel: one child per job

if (JOBS > 1 && !args.worker) {
  const t0 = performance.now();
  const per = Math.ceil(RUNS / JOBS);
  const parts = await Promise.all(
    Array.from({ length: JOBS }, (_, j) =>
      new Promise((resolve, reject) => {
        const runs = Math.min(per, RUNS - j * per);
        const child = fork(fileURLToPath(import.meta.url), [`--runs=${runs}`, `--seed=${SEED + 1000 * j}`, `--worker=${j}`, `--progress=${PROGRESS}`], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
        let summary = null;
        child.on('message', (m) => (summary = m));
        child.on('exit', (code) => (summary ? resolve(summary) : reject(new Error(`worker ${j} exited with ${code} and no summary`))));
      }),
    ),
  );
  const total = merge(parts, (performance.now() - t0) / 1000);
  report(total);
  process.exit(total.forgeries + total.crashes + total.hangs > 0 ? 1 : 0);
}

function merge(parts, seconds) {
  const out = { runs: 0, refused: 0, reasons: {}, accepted: { identical: 0, equivalent: 0, reproved: 0 }, forgeries: 0, crashes: 0, hangs: 0, slowestMs: 0, peakRssMiB: 0, seconds, seeds: [], findings: [] };
  for (const p of parts) {
    out.runs += p.runs;
    out.refused += p.refused;
    for (const [r, n] of Object.entries(p.reasons)) out.reasons[r] = (out.reasons[r] ?? 0) + n;
    for (const k of Object.keys(out.accepted)) out.accepted[k] += p.accepted[k];
    out.forgeries += p.forgeries;
    out.crashes += p.crashes;
    out.hangs += p.hangs;
    out.slowestMs = Math.max(out.slowestMs, p.slowestMs);
    out.peakRssMiB = Math.max(out.peakRssMiB, p.peakRssMiB);
    out.seeds.push(...p.seeds);
    out.findings.push(...p.findings);
  }
  out.reasons = Object.fromEntries(Object.entries(out.reasons).sort((a, b) => b[1] - a[1]));
  return out;
}

function report(s) {
  console.log(`runs ${s.runs.toLocaleString('en-US')} in ${s.seconds.toFixed(1)} s (${Math.round(s.runs / s.seconds).toLocaleString('en-US')} mutants/s), seeds ${s.seeds.join(',')}`);
  console.log(`refused ${s.refused.toLocaleString('en-US')}: ${Object.entries(s.reasons).map(([r, n]) => `${r} ${n.toLocaleString('en-US')}`).join(', ')}`);
  console.log(`accepted: identical ${s.accepted.identical.toLocaleString('en-US')}, equivalent ${s.accepted.equivalent.toLocaleString('en-US')}, reproved ${s.accepted.reproved.toLocaleString('en-US')}`);
  console.log(`forgeries ${s.forgeries}, crashes ${s.crashes}, hangs ${s.hangs}; slowest check ${s.slowestMs.toFixed(1)} ms, peak RSS ${s.peakRssMiB} MiB`);
  for (const f of s.findings.slice(0, 10)) console.log(`FINDING ${f}`);
  if (args.json) writeFileSync(args.json, JSON.stringify(s, null, 2) + '\n');
}

// ---------------------------------------------------------------- one process

const t0 = performance.now();
const pool = await buildPool(lib);
const fields = pool.map((h) => fieldOffsets(lib.decodeProof(h.bytes), h.bytes.length));
for (const h of pool) {
  for (const tight of [false, true]) {
    const r = await check(lib, h.ctx, h.bytes, pool, tight);
    if (!r.accepted || r.how !== 'identical') throw new Error(`honest proof ${h.name} does not verify${tight ? ' under its tight limits' : ''}`);
  }
}
log(`pool: ${pool.map((h) => `${h.name} ${h.bytes.length} B`).join('; ')}`);

const s = { runs: 0, refused: 0, reasons: {}, accepted: { identical: 0, equivalent: 0, reproved: 0 }, forgeries: 0, crashes: 0, hangs: 0, slowestMs: 0, peakRssMiB: 0, seconds: 0, seeds: [SEED], findings: [] };
await fc.assert(
  fc.asyncProperty(fc.nat({ max: pool.length - 1 }), fc.array(mutationArb, { minLength: 1, maxLength: 3 }), fc.boolean(), async (bi, muts, tight) => {
    const bytes = mutate(pool[bi].bytes, muts, pool, fields[bi], lib);
    const c0 = performance.now();
    try {
      const r = await check(lib, pool[bi].ctx, bytes, pool, tight);
      if (r.accepted) s.accepted[r.how]++;
      else {
        s.refused++;
        s.reasons[r.reason] = (s.reasons[r.reason] ?? 0) + 1;
      }
    } catch (err) {
      const tag = err.tag ?? 'crash';
      s[tag === 'forgery' ? 'forgeries' : tag === 'hang' ? 'hangs' : 'crashes']++;
      const msg = `${err.message} (base ${pool[bi].name}${tight ? ', tight limits' : ''}, mutations ${JSON.stringify(muts, (_, v) => (v instanceof Uint8Array ? hex(v) : v))})`;
      if (s.findings.length < 20) s.findings.push(msg);
      log(msg.slice(0, 4000));
    }
    s.slowestMs = Math.max(s.slowestMs, performance.now() - c0);
    if (++s.runs % PROGRESS === 0) {
      s.peakRssMiB = Math.max(s.peakRssMiB, Math.round(process.memoryUsage().rss / 2 ** 20));
      log(`${s.runs.toLocaleString('en-US')} / ${RUNS.toLocaleString('en-US')} runs, ${((performance.now() - t0) / 1000).toFixed(0)} s, refused ${s.refused}, accepted ${s.accepted.identical}+${s.accepted.equivalent}+${s.accepted.reproved}, forgeries ${s.forgeries}, crashes ${s.crashes}, hangs ${s.hangs}, RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB`);
    }
  }),
  { numRuns: RUNS, seed: SEED },
);
s.peakRssMiB = Math.max(s.peakRssMiB, Math.round(process.memoryUsage().rss / 2 ** 20));
s.seconds = (performance.now() - t0) / 1000;
if (args.worker) {
  process.send(s);
  process.disconnect();
} else {
  const total = merge([s], s.seconds);
  report(total);
  process.exit(total.forgeries + total.crashes + total.hangs > 0 ? 1 : 0);
}
