#!/usr/bin/env node
/**
 * The long run of the proof fuzzer (test/proof-fuzz.test.ts runs a few thousand of the
 * same mutants in CI). Builds the same pool of honest proofs with the native prover
 * (dist/, so `npx tsc -p tsconfig.build.json` first), then mutates their bytes with
 * fast-check (bit flips, overwrites, truncation, extension, splices of other honest
 * proofs, duplicated ranges, length fields set to huge values, whole replacement) and
 * decodes + verifies every mutant in the context of its base proof, with the
 * TypeScript verifier (no addon).
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

import {
  Embedding,
  FormatError,
  HopfieldLookup,
  Model,
  PatternCache,
  ProductKeyIndex,
  ProofError,
  SparseAdam,
  SparseSGD,
  SparseTensor,
  decodeProof,
  encodeProof,
  verifyForward,
  verifyUpdate,
} from '../dist/index.js';

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')).map(([k, v]) => [k, v ?? 'true']));
const RUNS = Number(args.runs ?? 100000);
const SEED = Number(args.seed ?? 0x6b057);
const JOBS = Number(args.jobs ?? 1);
const PROGRESS = Number(args.progress ?? 10000);
const HANG_MS = 2000;
const RowKind = { Full: 0, Held: 1, Delta: 2 };

const hex = (b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const same = (a, b) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
const f32bytes = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
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

// ---------------------------------------------------------------- the honest pool (as in the test)

function Rng(seed) {
  let s = seed >>> 0;
  const next = () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, f32: (n) => Float32Array.from({ length: n }, () => next() * 2 - 1) };
}

function twoLayerModel(seed) {
  const rng = Rng(seed);
  const d = 16, n0 = 300, n = 12;
  const l0 = new HopfieldLookup({
    keys: SparseTensor.fromArray(rng.f32(n0 * d), d),
    values: SparseTensor.fromArray(rng.f32(n0 * d), d),
    k: 8,
    similarity: 'cosine',
    normalize: true,
    beta: 4,
    updateSteps: 2,
  });
  const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(n * 8), 8), SparseTensor.fromArray(rng.f32(n * 8), 8));
  const l1 = new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(n * n * 5), 5), k: 6, beta: 2 });
  return { model: new Model([l0, l1]), l0, l1 };
}

async function buildPool() {
  const pool = [];
  const rng = Rng(100);
  const x = rng.f32(3 * 16), x2 = rng.f32(2 * 16);
  const m1 = twoLayerModel(7).model;
  const ghost1 = await m1.ghost();
  const a = await m1.prove(x), b = await m1.prove(x2);
  pool.push({ name: 'A forward', bytes: a.bytes, ctx: { kind: 'forward', ghost: ghost1, prover: m1 }, output: a.output });
  pool.push({ name: 'B forward, other input', bytes: b.bytes, ctx: { kind: 'forward', ghost: ghost1, prover: m1 }, output: b.output });
  const { model: m2, l0, l1 } = twoLayerModel(7);
  const mirror = new PatternCache(), vcache = new PatternCache();
  const first = await m2.prove(x, { cache: mirror });
  await verifyForward(ghost1, first.bytes, { cache: vcache });
  const c = await m2.prove(x, { cache: mirror });
  pool.push({ name: 'C forward, all held', bytes: c.bytes, ctx: { kind: 'forward', ghost: ghost1, cache: vcache.clone(), prover: m1 }, output: c.output });
  await verifyForward(ghost1, c.bytes, { cache: vcache });
  const adam = new SparseAdam([l0.values], { lr: 0.01, weightDecay: 0.01 });
  const sgd = new SparseSGD([l1.values], { lr: 0.1, weightDecay: 0.01 });
  const v0 = c.proof.layers[0].blocks[1].ids, v1 = c.proof.layers[1].blocks[2].ids;
  const g1 = rng.f32(v0.length * 16), g2 = rng.f32(v1.length * 5);
  const [u1] = await m2.proveStep(adam, [{ tensor: l0.values, ids: v0, grads: g1 }]);
  const ghost1b = await m2.ghost();
  pool.push({ name: 'U1 update (Adam)', bytes: u1.bytes, ctx: { kind: 'update', ghost: ghost1 }, next: ghost1b.digest });
  const [u2] = await m2.proveStep(sgd, [{ tensor: l1.values, ids: v1, grads: g2 }]);
  const ghost2 = await m2.ghost();
  // M4: a third copy taken through the same two steps, frozen at ghost2 (the oracle for D).
  const { model: m4, l0: l40, l1: l41 } = twoLayerModel(7);
  new SparseAdam([l40.values], { lr: 0.01, weightDecay: 0.01 }).step([{ tensor: l40.values, ids: v0, grads: g1 }]);
  new SparseSGD([l41.values], { lr: 0.1, weightDecay: 0.01 }).step([{ tensor: l41.values, ids: v1, grads: g2 }]);
  if (!same((await m4.ghost()).digest, ghost2.digest)) throw new Error('M4 does not reach ghost2');
  pool.push({ name: 'U2 update (SGD)', bytes: u2.bytes, ctx: { kind: 'update', ghost: ghost1b }, next: ghost2.digest });
  const dd = await m2.prove(x, { cache: mirror });
  if (!dd.proof.layers[0].blocks[1].kinds.every((k) => k === RowKind.Delta)) throw new Error('D should carry deltas');
  pool.push({ name: 'D forward, deltas', bytes: dd.bytes, ctx: { kind: 'forward', ghost: ghost2, cache: vcache.clone(), prover: m4 }, output: dd.output });
  await verifyForward(ghost2, dd.bytes, { cache: vcache });
  const [u3] = await m2.proveStep(sgd, [{ tensor: l1.values, ids: v1.subarray(0, 3), grads: rng.f32(3 * 5) }], { cache: mirror });
  pool.push({ name: 'U3 update, held rows', bytes: u3.bytes, ctx: { kind: 'update', ghost: ghost2, cache: vcache.clone() }, next: (await m2.ghost()).digest });
  const r3 = Rng(300);
  const m3 = new Model([
    new Embedding(SparseTensor.fromArray(r3.f32(50 * 8), 8)),
    new HopfieldLookup({ keys: SparseTensor.fromArray(r3.f32(64 * 8), 8), values: SparseTensor.fromArray(r3.f32(64 * 4), 4), k: 4, similarity: 'l2' }),
  ]);
  const e = await m3.prove([3, 7, 3, 49]);
  pool.push({ name: 'E forward, embedding first', bytes: e.bytes, ctx: { kind: 'forward', ghost: await m3.ghost(), prover: m3 }, output: e.output });
  return pool;
}

/** Offsets of the count / length / dimension / index / enum fields (the walk must end at the last byte). */
function fieldOffsets(p, total) {
  const out = [];
  let at = 11 + 32;
  const u32 = () => (out.push({ at, size: 4 }), (at += 4));
  const u8 = () => (out.push({ at, size: 1 }), (at += 1));
  const block = (b) => {
    u32();
    u32();
    u8();
    u32();
    if (!b.all) at += 4 * b.ids.length;
    at += Math.ceil(b.ids.length / 4);
    b.payload.forEach((x, t) => (at += b.kinds[t] === RowKind.Full ? 4 * b.dim : b.kinds[t] === RowKind.Delta ? x.length : 0));
    u32();
    at += b.hashes.length;
  };
  if (p.kind === 'forward') {
    u32();
    u32();
    u8();
    if (p.input.kind === 'f32') {
      u32();
      u32();
      at += 4 * p.input.data.length;
    } else {
      u32();
      at += 4 * p.input.ids.length;
    }
    for (const l of p.layers) {
      u8();
      u8();
      for (const s of l.stages) {
        u32();
        at += 4 * s.length;
      }
      u8();
      l.blocks.forEach(block);
    }
    u32();
    u32();
    at += 4 * p.output.data.length;
  } else {
    u32();
    u8();
    at += 20;
    u8();
    at += 16;
    block(p.block);
    at += 4 * p.grads.length + 4 * p.state.m.length + 4 * p.state.v.length + 4 * p.state.steps.length + 8 * p.state.marks.length + 32;
  }
  if (at !== total) throw new Error(`field walk ends at ${at}, the proof has ${total} bytes`);
  return out;
}

// ---------------------------------------------------------------- mutations (as in the test)

const HUGE = [0, 1, 2, 3, 0xff, 0xffff, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 1, 2 ** 26, 2 ** 28, 2 ** 30, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 32, 2 ** 32 - 1];
const mutationArb = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('flip'), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }), weight: 6 },
  { arbitrary: fc.record({ op: fc.constant('overwrite'), at: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 40 }) }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('truncate'), len: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('extend'), data: fc.uint8Array({ minLength: 1, maxLength: 64 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('splice'), donor: fc.nat(), from: fc.nat(), len: fc.nat(), at: fc.nat(), del: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('aligned'), donor: fc.nat(), from: fc.nat(), len: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('duplicate'), from: fc.nat(), len: fc.nat(), at: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('length'), field: fc.nat(), value: fc.oneof(fc.constantFrom(...HUGE), fc.nat({ max: 2 ** 32 - 1 }), fc.integer({ min: -3, max: 3 })) }), weight: 5 },
  { arbitrary: fc.record({ op: fc.constant('replace'), donor: fc.nat() }), weight: 1 },
);

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function mutate(base, muts, pool, fields) {
  let b = base.slice();
  for (const m of muts) {
    const n = b.length;
    switch (m.op) {
      case 'flip':
        if (n > 0) b[m.at % n] ^= 1 << m.bit;
        break;
      case 'overwrite':
        if (n > 0) b.set(m.data.subarray(0, n - (m.at % n)), m.at % n);
        break;
      case 'truncate':
        b = b.slice(0, m.len % (n + 1));
        break;
      case 'extend':
        b = concat(b, m.data);
        break;
      case 'splice': {
        const d = pool[m.donor % pool.length].bytes;
        const from = m.from % d.length, len = m.len % (d.length - from + 1);
        const at = m.at % (n + 1), del = m.del % (n - at + 1);
        b = concat(b.subarray(0, at), d.subarray(from, from + len), b.subarray(at + del));
        break;
      }
      case 'aligned': {
        const d = pool[m.donor % pool.length].bytes;
        const lim = Math.min(n, d.length);
        if (lim === 0) break;
        const from = m.from % lim, len = m.len % (lim - from + 1);
        b.set(d.subarray(from, from + len), from);
        break;
      }
      case 'duplicate': {
        if (n === 0) break;
        const from = m.from % n, len = m.len % (n - from + 1), at = m.at % (n + 1);
        b = concat(b.subarray(0, at), b.slice(from, from + len), b.subarray(at));
        break;
      }
      case 'length': {
        if (fields.length === 0) break;
        const f = fields[m.field % fields.length];
        if (f.at + f.size > n) break;
        const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
        const old = f.size === 4 ? dv.getUint32(f.at, true) : dv.getUint8(f.at);
        const v = m.value < 0 ? old + m.value : m.value;
        if (f.size === 4) dv.setUint32(f.at, v >>> 0, true);
        else dv.setUint8(f.at, v & 0xff);
        break;
      }
      case 'replace':
        b = pool[m.donor % pool.length].bytes.slice();
        break;
    }
  }
  return b;
}

/** The same claim as the prover's own proof (Ghost file, layers, input, every stage's ids, output); rows may travel differently. */
function sameClaim(a, b) {
  const u8 = (x) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  const inp = (p) => (p.input.kind === 'f32' ? u8(p.input.data) : u8(p.input.ids));
  return (
    same(a.ghost, b.ghost) &&
    a.firstLayer === b.firstLayer &&
    a.input.kind === b.input.kind &&
    same(inp(a), inp(b)) &&
    a.layers.length === b.layers.length &&
    a.layers.every((l, i) => l.op === b.layers[i].op && l.stages.length === b.layers[i].stages.length && l.stages.every((s, j) => same(u8(s), u8(b.layers[i].stages[j])))) &&
    a.output.rows === b.output.rows &&
    same(u8(a.output.data), u8(b.output.data))
  );
}

/** Refusal reason, or how it was accepted; throws a tagged Error (FORGERY / CRASH / HANG) otherwise. */
async function check(ctx, bytes, pool) {
  const t0 = performance.now();
  let verified;
  try {
    const options = ctx.cache ? { cache: ctx.cache.clone() } : {};
    if (ctx.kind === 'forward') verified = { output: (await verifyForward(ctx.ghost, bytes, options)).output };
    else verified = { next: (await verifyUpdate(ctx.ghost, bytes, options)).ghost.digest };
  } catch (err) {
    const ms = performance.now() - t0;
    if (ms > HANG_MS) throw Object.assign(new Error(`HANG: a check took ${ms.toFixed(0)} ms on mutant ${hex(bytes)}`), { tag: 'hang' });
    if (err instanceof FormatError || err instanceof ProofError) return { accepted: false, reason: err.reason };
    throw Object.assign(new Error(`CRASH: ${err?.constructor?.name}: ${err?.message}\n${err?.stack}\nmutant (${bytes.length} bytes): ${hex(bytes)}`), { tag: 'crash' });
  }
  const decoded = decodeProof(bytes);
  const reencoded = encodeProof(decoded);
  const result = (p) => (verified.output ? p.output !== undefined && same(f32bytes(verified.output), f32bytes(p.output)) : p.next !== undefined && same(verified.next, p.next));
  const h = pool.findIndex((p) => same(p.bytes, bytes));
  if (h >= 0 && same(reencoded, pool[h].bytes) && result(pool[h])) return { accepted: true, how: 'identical' };
  if (ctx.kind === 'update' && same(reencoded, bytes) && pool.some((p) => p.ctx.kind === 'update' && same(p.ctx.ghost.digest, ctx.ghost.digest) && result(p))) return { accepted: true, how: 'equivalent' };
  if (decoded.kind === 'forward' && ctx.prover && same(reencoded, bytes)) {
    const again = await ctx.prover.prove(decoded.input.kind === 'f32' ? decoded.input.data : decoded.input.ids, { firstLayer: decoded.firstLayer, layers: decoded.layers.length }).catch(() => undefined);
    if (again && sameClaim(again.proof, decoded) && same(f32bytes(again.output), f32bytes(verified.output))) return { accepted: true, how: 'reproved' };
  }
  throw Object.assign(new Error(`FORGERY: an accepted proof that is not an honest one (${bytes.length} bytes): ${hex(bytes)}`), { tag: 'forgery' });
}

// ---------------------------------------------------------------- one process

const t0 = performance.now();
const pool = await buildPool();
const fields = pool.map((h) => fieldOffsets(decodeProof(h.bytes), h.bytes.length));
for (const h of pool) {
  const r = await check(h.ctx, h.bytes, pool);
  if (!r.accepted || r.how !== 'identical') throw new Error(`honest proof ${h.name} does not verify`);
}
log(`pool: ${pool.map((h) => `${h.name} ${h.bytes.length} B`).join('; ')}`);

const s = { runs: 0, refused: 0, reasons: {}, accepted: { identical: 0, equivalent: 0, reproved: 0 }, forgeries: 0, crashes: 0, hangs: 0, slowestMs: 0, peakRssMiB: 0, seconds: 0, seeds: [SEED], findings: [] };
await fc.assert(
  fc.asyncProperty(fc.nat({ max: pool.length - 1 }), fc.array(mutationArb, { minLength: 1, maxLength: 3 }), async (bi, muts) => {
    const bytes = mutate(pool[bi].bytes, muts, pool, fields[bi]);
    const c0 = performance.now();
    try {
      const r = await check(pool[bi].ctx, bytes, pool);
      if (r.accepted) s.accepted[r.how]++;
      else {
        s.refused++;
        s.reasons[r.reason] = (s.reasons[r.reason] ?? 0) + 1;
      }
    } catch (err) {
      const tag = err.tag ?? 'crash';
      s[tag === 'forgery' ? 'forgeries' : tag === 'hang' ? 'hangs' : 'crashes']++;
      const msg = `${err.message} (base ${pool[bi].name}, mutations ${JSON.stringify(muts, (_, v) => (v instanceof Uint8Array ? hex(v) : v))})`;
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
