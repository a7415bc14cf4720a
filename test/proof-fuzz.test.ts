/**
 * Fuzzing the proof decoder and verifier (fast-check). A pool of honest proofs (forward
 * proofs with and without the verifier's cache, with deltas, an Embedding-first model,
 * update proofs of Adam and SGD steps), each with the context it verifies in (pinned
 * Ghost file, verifier cache). Every mutant of their bytes must be refused with a
 * FormatError or a ProofError, or be byte-identical to an honest proof and verify to
 * that proof's output; anything else (an accepted forgery, another error type, a
 * check that hangs, memory that grows) fails. Structured mutations of decoded proofs,
 * re-encoded, must all be refused with a ProofError (or a FormatError for bytes).
 *
 * scripts/fuzz-proofs.mjs runs the same byte mutations a million times (over dist/).
 */
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';

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
  type ForwardProof,
  type GhostProof,
  type PinnedGhost,
  type UpdateProof,
} from '../lib/index.js';
import { RowKind, type PatternBlock } from '../lib/proof-format.js';
import { Rng } from './helpers/rng.js';

/** Byte-mutation runs (a few thousand in CI) and structured runs; override with GT_FUZZ_RUNS. */
const BYTE_RUNS = Number(process.env.GT_FUZZ_RUNS ?? 4000);
const STRUCT_RUNS = Math.max(100, Math.round(BYTE_RUNS / 5));
const SEED = Number(process.env.GT_FUZZ_SEED ?? 0x6b057);
/** A single decode + verify slower than this counts as a hang. */
const HANG_MS = 2000;

interface Context {
  kind: 'forward' | 'update';
  ghost: PinnedGhost;
  /** The verifier cache before this proof (cloned for every check), or none. */
  cache?: PatternCache;
  /** Forward proofs without a cache: the model, to re-prove a mutated input (the oracle for an accepted input change). */
  prover?: Model;
}

interface Honest {
  name: string;
  bytes: Uint8Array;
  ctx: Context;
  /** Forward: the proved output. */
  output?: Float32Array;
  /** Update: the digest of the Ghost file after the step. */
  next?: Uint8Array;
}

const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const same = (a: Uint8Array, b: Uint8Array): boolean => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
const f32bytes = (a: Float32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const clone = <T extends GhostProof>(p: T): T => decodeProof(encodeProof(p)) as T;

/** The exact cosine layer (normalised input, 2 update steps) then a product-key layer, as in proofs.test.ts. */
function twoLayerModel(seed: number): { model: Model; l0: HopfieldLookup; l1: HopfieldLookup } {
  const rng = new Rng(seed);
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

/**
 * Offsets of the count, length, dimension, index and enum fields of an encoded proof
 * (walking the layout of docs/proof-format.md), for the "huge length" mutation. Throws
 * unless the walk ends exactly at the end of the bytes (checks the walk itself).
 */
function fieldOffsets(p: GhostProof, total: number): { at: number; size: 1 | 4 }[] {
  const out: { at: number; size: 1 | 4 }[] = [];
  let at = 11 + 32; // magic, version, kind, ghost digest
  const u32 = (): void => void (out.push({ at, size: 4 }), (at += 4));
  const u8 = (): void => void (out.push({ at, size: 1 }), (at += 1));
  const block = (b: PatternBlock): void => {
    u32(); // tensor
    u32(); // dim
    u8(); // flags
    u32(); // id count
    if (!b.all) at += 4 * b.ids.length;
    at += Math.ceil(b.ids.length / 4);
    b.payload.forEach((x, t) => (at += b.kinds[t] === RowKind.Full ? 4 * b.dim : b.kinds[t] === RowKind.Delta ? x!.length : 0));
    u32(); // hash count
    at += b.hashes.length;
  };
  if (p.kind === 'forward') {
    u32(); // first layer
    u32(); // layer count
    u8(); // input kind
    if (p.input.kind === 'f32') {
      u32();
      u32();
      at += 4 * p.input.data.length;
    } else {
      u32();
      at += 4 * p.input.ids.length;
    }
    for (const l of p.layers) {
      u8(); // op
      u8(); // stage count
      for (const s of l.stages) {
        u32();
        at += 4 * s.length;
      }
      u8(); // block count
      l.blocks.forEach(block);
    }
    u32();
    u32();
    at += 4 * p.output.data.length;
  } else {
    u32(); // tensor
    u8(); // optimizer kind
    at += 20;
    u8(); // rowStep
    at += 16; // global step, log decay
    block(p.block);
    at += 4 * p.grads.length + 4 * p.state.m.length + 4 * p.state.v.length + 4 * p.state.steps.length + 8 * p.state.marks.length + 32;
  }
  if (at !== total) throw new Error(`field walk ends at ${at}, the proof has ${total} bytes`);
  return out;
}

// ---------------------------------------------------------------- byte mutations

type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'overwrite'; at: number; data: Uint8Array }
  | { op: 'truncate'; len: number }
  | { op: 'extend'; data: Uint8Array }
  | { op: 'splice'; donor: number; from: number; len: number; at: number; del: number }
  | { op: 'aligned'; donor: number; from: number; len: number }
  | { op: 'duplicate'; from: number; len: number; at: number }
  | { op: 'length'; field: number; value: number }
  | { op: 'replace'; donor: number };

const HUGE = [0, 1, 2, 3, 0xff, 0xffff, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 1, 2 ** 26, 2 ** 28, 2 ** 30, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 32, 2 ** 32 - 1];

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }), weight: 6 },
  { arbitrary: fc.record({ op: fc.constant('overwrite' as const), at: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 40 }) }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('truncate' as const), len: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('extend' as const), data: fc.uint8Array({ minLength: 1, maxLength: 64 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('splice' as const), donor: fc.nat(), from: fc.nat(), len: fc.nat(), at: fc.nat(), del: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('aligned' as const), donor: fc.nat(), from: fc.nat(), len: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('duplicate' as const), from: fc.nat(), len: fc.nat(), at: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('length' as const), field: fc.nat(), value: fc.oneof(fc.constantFrom(...HUGE), fc.nat({ max: 2 ** 32 - 1 }), fc.integer({ min: -3, max: 3 })) }), weight: 5 },
  { arbitrary: fc.record({ op: fc.constant('replace' as const), donor: fc.nat() }), weight: 1 },
);

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Applies mutations in order to a copy of `base`. `fields` are the base's field offsets. */
function mutate(base: Uint8Array, muts: readonly Mutation[], pool: readonly Honest[], fields: readonly { at: number; size: 1 | 4 }[]): Uint8Array {
  let b: Uint8Array = base.slice();
  for (const m of muts) {
    const n = b.length;
    switch (m.op) {
      case 'flip':
        if (n > 0) b[m.at % n]! ^= 1 << m.bit;
        break;
      case 'overwrite':
        if (n > 0) {
          const at = m.at % n;
          b.set(m.data.subarray(0, n - at), at);
        }
        break;
      case 'truncate':
        b = b.slice(0, m.len % (n + 1));
        break;
      case 'extend':
        b = concat(b, m.data);
        break;
      case 'splice': {
        const d = pool[m.donor % pool.length]!.bytes;
        const from = m.from % d.length, len = m.len % (d.length - from + 1);
        const at = m.at % (n + 1), del = m.del % (n - at + 1);
        b = concat(b.subarray(0, at), d.subarray(from, from + len), b.subarray(at + del));
        break;
      }
      case 'aligned': {
        // The donor's bytes at the same offsets (another proof's hashes, rows, ids, output...).
        const d = pool[m.donor % pool.length]!.bytes;
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
        const f = fields[m.field % fields.length]!;
        if (f.at + f.size > n) break;
        const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
        const old = f.size === 4 ? dv.getUint32(f.at, true) : dv.getUint8(f.at);
        // -3..-1: a small step down from the current value; else the value itself.
        const v = m.value < 0 ? old + m.value : m.value;
        if (f.size === 4) dv.setUint32(f.at, v >>> 0, true);
        else dv.setUint8(f.at, v & 0xff);
        break;
      }
      case 'replace':
        b = pool[m.donor % pool.length]!.bytes.slice();
        break;
    }
  }
  return b;
}

/**
 * The same claim as the prover's own proof: Ghost file, layers, input, every stage's
 * selected ids and the output, bit for bit (the rows may travel differently: in full,
 * as ids or as deltas, depending on the verifier's cache).
 */
function sameClaim(a: ForwardProof, b: ForwardProof): boolean {
  const u8 = (x: Float32Array | Uint32Array): Uint8Array => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  const inp = (p: ForwardProof): Uint8Array => (p.input.kind === 'f32' ? u8(p.input.data) : u8(p.input.ids));
  return (
    same(a.ghost, b.ghost) &&
    a.firstLayer === b.firstLayer &&
    a.input.kind === b.input.kind &&
    same(inp(a), inp(b)) &&
    a.layers.length === b.layers.length &&
    a.layers.every((l, i) => l.op === b.layers[i]!.op && l.stages.length === b.layers[i]!.stages.length && l.stages.every((s, j) => same(u8(s), u8(b.layers[i]!.stages[j]!)))) &&
    a.output.rows === b.output.rows &&
    same(u8(a.output.data), u8(b.output.data))
  );
}

/**
 * Accepted mutants: `identical` (byte for byte an honest proof of the pool, verified to
 * its output); `equivalent` (an update proof whose claimed gradient, optimizer state or
 * parameters differ but give the same step: the verifier ends at the honest Ghost file;
 * these inputs are revealed, not committed); `reproved` (a forward proof of another
 * input, byte for byte what the prover makes for that input).
 */
type Outcome = { accepted: false; reason: string } | { accepted: true; how: 'identical' | 'equivalent' | 'reproved'; honest: number };

/**
 * Decodes and verifies `bytes` in `ctx` the way a peer does (verifyForward or
 * verifyUpdate on the bytes). Returns the refusal reason, or how it was accepted;
 * throws (with the mutant in hex) on a forgery, another error type or a hang.
 */
async function check(ctx: Context, bytes: Uint8Array, pool: readonly Honest[]): Promise<Outcome> {
  const t0 = performance.now();
  let verified: { output?: Float32Array; next?: Uint8Array };
  try {
    const options = ctx.cache ? { cache: ctx.cache.clone() } : {};
    if (ctx.kind === 'forward') verified = { output: (await verifyForward(ctx.ghost, bytes, options)).output };
    else verified = { next: (await verifyUpdate(ctx.ghost, bytes, options)).ghost.digest };
  } catch (err) {
    const ms = performance.now() - t0;
    if (ms > HANG_MS) throw new Error(`a check took ${ms.toFixed(0)} ms (hang?) on mutant ${hex(bytes)}`);
    if (err instanceof FormatError || err instanceof ProofError) return { accepted: false, reason: err.reason };
    const e = err as Error;
    throw new Error(`CRASH: ${e?.constructor?.name}: ${e?.message}\n${e?.stack}\nmutant (${bytes.length} bytes): ${hex(bytes)}`);
  }
  // Accepted: it must be an honest proof, byte for byte, and give that proof's result...
  const decoded = decodeProof(bytes);
  const reencoded = encodeProof(decoded);
  const result = (p: Honest): boolean =>
    verified.output ? p.output !== undefined && same(f32bytes(verified.output), f32bytes(p.output)) : p.next !== undefined && same(verified.next!, p.next);
  const h = pool.findIndex((p) => same(p.bytes, bytes));
  if (h >= 0 && same(reencoded, pool[h]!.bytes) && result(pool[h]!)) return { accepted: true, how: 'identical', honest: h };
  // ...or an update proof that ends at the Ghost file an honest step from the same one ends at...
  if (ctx.kind === 'update' && same(reencoded, bytes)) {
    const e = pool.findIndex((p) => p.ctx.kind === 'update' && same(p.ctx.ghost.digest, ctx.ghost.digest) && result(p));
    if (e >= 0) return { accepted: true, how: 'equivalent', honest: e };
  }
  // ...or a forward proof of another input that is exactly the prover's proof of that input.
  if (decoded.kind === 'forward' && ctx.prover && same(reencoded, bytes)) {
    const again = await ctx.prover.prove(decoded.input.kind === 'f32' ? decoded.input.data : decoded.input.ids, { firstLayer: decoded.firstLayer, layers: decoded.layers.length }).catch(() => undefined);
    if (again && verified.output && sameClaim(again.proof, decoded) && same(f32bytes(again.output), f32bytes(verified.output))) return { accepted: true, how: 'reproved', honest: -1 };
  }
  throw new Error(`FORGERY: an accepted proof that is not an honest one (${bytes.length} bytes): ${hex(bytes)}`);
}

// ---------------------------------------------------------------- the honest pool

const pool: Honest[] = [];
const fieldsOf: { at: number; size: 1 | 4 }[][] = [];

beforeAll(async () => {
  const rng = new Rng(100);
  const x = rng.f32(3 * 16), x2 = rng.f32(2 * 16);

  // M1: frozen. A, B: no cache.
  const m1 = twoLayerModel(7).model;
  const ghost1 = await m1.ghost();
  const a = await m1.prove(x);
  const b = await m1.prove(x2);
  pool.push({ name: 'A forward', bytes: a.bytes, ctx: { kind: 'forward', ghost: ghost1, prover: m1 }, output: a.output });
  pool.push({ name: 'B forward, other input', bytes: b.bytes, ctx: { kind: 'forward', ghost: ghost1, prover: m1 }, output: b.output });

  // M2: the same model, then trained. C: every row held by the verifier.
  const { model: m2, l0, l1 } = twoLayerModel(7);
  const mirror = new PatternCache(), vcache = new PatternCache();
  const first = await m2.prove(x, { cache: mirror });
  await verifyForward(ghost1, first.bytes, { cache: vcache });
  const c = await m2.prove(x, { cache: mirror });
  pool.push({ name: 'C forward, all held', bytes: c.bytes, ctx: { kind: 'forward', ghost: ghost1, cache: vcache.clone(), prover: m1 }, output: c.output });
  await verifyForward(ghost1, c.bytes, { cache: vcache });

  // U1 (Adam) and U2 (SGD): update proofs of the rows the layers read, no cache (every row in full).
  const adam = new SparseAdam([l0.values], { lr: 0.01, weightDecay: 0.01 });
  const sgd = new SparseSGD([l1.values], { lr: 0.1, weightDecay: 0.01 });
  const v0 = c.proof.layers[0]!.blocks[1]!.ids, v1 = c.proof.layers[1]!.blocks[2]!.ids;
  const g1 = rng.f32(v0.length * 16), g2 = rng.f32(v1.length * 5);
  const [u1] = await m2.proveStep(adam, [{ tensor: l0.values, ids: v0, grads: g1 }]);
  const ghost1b = await m2.ghost();
  pool.push({ name: 'U1 update (Adam)', bytes: u1!.bytes, ctx: { kind: 'update', ghost: ghost1 }, next: ghost1b.digest });
  const [u2] = await m2.proveStep(sgd, [{ tensor: l1.values, ids: v1, grads: g2 }]);
  const ghost2 = await m2.ghost();
  // M4: a third copy taken through the same two steps, frozen at ghost2 (the oracle for D).
  const { model: m4, l0: l40, l1: l41 } = twoLayerModel(7);
  new SparseAdam([l40.values], { lr: 0.01, weightDecay: 0.01 }).step([{ tensor: l40.values, ids: v0, grads: g1 }]);
  new SparseSGD([l41.values], { lr: 0.1, weightDecay: 0.01 }).step([{ tensor: l41.values, ids: v1, grads: g2 }]);
  expect((await m4.ghost()).digest).toEqual(ghost2.digest);
  pool.push({ name: 'U2 update (SGD)', bytes: u2!.bytes, ctx: { kind: 'update', ghost: ghost1b }, next: ghost2.digest });

  // D: after the steps, the changed rows travel as deltas, the keys as ids.
  const dd = await m2.prove(x, { cache: mirror });
  expect(dd.proof.layers[0]!.blocks[1]!.kinds.every((k) => k === RowKind.Delta)).toBe(true);
  pool.push({ name: 'D forward, deltas', bytes: dd.bytes, ctx: { kind: 'forward', ghost: ghost2, cache: vcache.clone(), prover: m4 }, output: dd.output });
  await verifyForward(ghost2, dd.bytes, { cache: vcache });

  // U3: an SGD step whose old rows the verifier holds (they travel as ids).
  const [u3] = await m2.proveStep(sgd, [{ tensor: l1.values, ids: v1.subarray(0, 3), grads: rng.f32(3 * 5) }], { cache: mirror });
  expect(u3!.proof.block.kinds.every((k) => k === RowKind.Held)).toBe(true);
  pool.push({ name: 'U3 update, held rows', bytes: u3!.bytes, ctx: { kind: 'update', ghost: ghost2, cache: vcache.clone() }, next: (await m2.ghost()).digest });

  // E: an Embedding-first model (ids in, l2 Hopfield after).
  const r3 = new Rng(300);
  const m3 = new Model([
    new Embedding(SparseTensor.fromArray(r3.f32(50 * 8), 8)),
    new HopfieldLookup({ keys: SparseTensor.fromArray(r3.f32(64 * 8), 8), values: SparseTensor.fromArray(r3.f32(64 * 4), 4), k: 4, similarity: 'l2' }),
  ]);
  const e = await m3.prove([3, 7, 3, 49]);
  pool.push({ name: 'E forward, embedding first', bytes: e.bytes, ctx: { kind: 'forward', ghost: await m3.ghost(), prover: m3 }, output: e.output });

  for (const h of pool) fieldsOf.push(fieldOffsets(decodeProof(h.bytes), h.bytes.length));
});

describe('proof fuzzing', () => {
  it('every honest proof verifies in its context and round-trips through the codec', async () => {
    expect(pool.length).toBe(8);
    for (const [i, h] of pool.entries()) {
      expect(encodeProof(decodeProof(h.bytes))).toEqual(h.bytes);
      expect(await check(h.ctx, h.bytes, pool)).toEqual({ accepted: true, how: 'identical', honest: i });
    }
    // The oracle catches what it must: another honest proof in the wrong context is refused...
    expect(await check(pool[0]!.ctx, pool[5]!.bytes, pool)).toMatchObject({ accepted: false, reason: 'GHOST_MISMATCH' });
    // ...and a proof accepted but not in the pool (nor the prover's proof of its input) is reported as a forgery.
    const { prover, ...noOracle } = pool[2]!.ctx;
    await expect(check(noOracle, pool[2]!.bytes, pool.slice(3))).rejects.toThrow(/FORGERY/);
    // With its prover the same proof is recognised as the honest claim about its input.
    expect(prover).toBeDefined();
    expect(await check(pool[2]!.ctx, pool[2]!.bytes, pool.slice(3))).toEqual({ accepted: true, how: 'reproved', honest: -1 });
    await expect(check(pool[3]!.ctx, pool[3]!.bytes, pool.slice(4))).rejects.toThrow(/FORGERY/);
  });

  it(`byte mutations (${BYTE_RUNS} mutants): refused with a typed reason, or byte-identical to an honest proof`, async () => {
    const reasons = new Map<string, number>();
    const accepted = { identical: 0, equivalent: 0, reproved: 0 };
    let worst = 0;
    const mem0 = process.memoryUsage();
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: pool.length - 1 }), fc.array(mutationArb, { minLength: 1, maxLength: 3 }), async (bi, muts) => {
        const base = pool[bi]!;
        const bytes = mutate(base.bytes, muts, pool, fieldsOf[bi]!);
        const t0 = performance.now();
        const r = await check(base.ctx, bytes, pool);
        worst = Math.max(worst, performance.now() - t0);
        if (r.accepted) accepted[r.how]++;
        else reasons.set(r.reason, (reasons.get(r.reason) ?? 0) + 1);
      }),
      { numRuns: BYTE_RUNS, seed: SEED, endOnFailure: true },
    );
    const mem1 = process.memoryUsage();
    const refused = [...reasons.values()].reduce((s, v) => s + v, 0);
    console.log(`byte fuzz: ${BYTE_RUNS} mutants, ${refused} refused ${JSON.stringify(Object.fromEntries([...reasons].sort((p, q) => q[1] - p[1])))}, accepted ${JSON.stringify(accepted)}, slowest check ${worst.toFixed(1)} ms`);
    expect(refused + accepted.identical + accepted.equivalent + accepted.reproved).toBe(BYTE_RUNS);
    // The mutations reach deep: refusals come from the decoder and from the verifier's checks.
    for (const r of ['TRUNCATED', 'TRAILING_BYTES', 'LIMIT', 'BAD_VALUE', 'ROOT_MISMATCH', 'GHOST_MISMATCH', 'OUTPUT_MISMATCH']) expect(reasons.get(r) ?? 0, r).toBeGreaterThan(0);
    expect(worst).toBeLessThan(HANG_MS);
    // No allocation blew up (limits are checked before allocating).
    expect(mem1.arrayBuffers - mem0.arrayBuffers).toBeLessThan(256 * 2 ** 20);
    expect(mem1.rss - mem0.rss).toBeLessThan(512 * 2 ** 20);
  });

  it('length fields set to huge values are refused before anything large is allocated', async () => {
    let n = 0;
    for (const [bi, base] of pool.entries()) {
      for (const f of fieldsOf[bi]!) {
        for (const v of f.size === 4 ? [2 ** 24, 2 ** 24 + 1, 2 ** 30, 2 ** 32 - 1] : [0xff, 0xfe]) {
          const before = process.memoryUsage().arrayBuffers;
          const r = await check(base.ctx, mutate(base.bytes, [{ op: 'length', field: fieldsOf[bi]!.indexOf(f), value: v }], pool, fieldsOf[bi]!), pool);
          expect(r.accepted).toBe(false);
          expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 * 2 ** 20);
          n++;
        }
      }
    }
    expect(n).toBeGreaterThan(200);
  });
});

// ---------------------------------------------------------------- structured mutations

type Field = 'blockId' | 'stageId' | 'hash' | 'pattern' | 'output' | 'input' | 'ghost' | 'firstLayer' | 'tensor' | 'grad' | 'newRoot' | 'lr';

const FORWARD_FIELDS: Field[] = ['blockId', 'stageId', 'hash', 'pattern', 'output', 'input', 'ghost', 'firstLayer'];
const UPDATE_FIELDS: Field[] = ['blockId', 'hash', 'pattern', 'ghost', 'tensor', 'grad', 'newRoot', 'lr'];

/** A different f32 (bitwise) than `old`, from `v`. */
function otherF32(old: number, v: number): number {
  const f = Math.fround(v);
  if (!Number.isFinite(f) || Object.is(f, old)) return Math.fround(old + 1 + Math.abs(old));
  return f;
}

/**
 * Applies a structured change to a decoded proof (in place). Returns false when the
 * proof has nothing of that kind (fc.pre skips it).
 */
function change(p: GhostProof, field: Field, i: number, j: number, v: number, bit: number): boolean {
  /** v as a non-negative integer (ids, offsets); v itself for values. */
  const vi = Number.isInteger(v) ? Math.abs(v) : Math.floor(Math.abs(v) * 1e6);
  const blocks: PatternBlock[] = p.kind === 'forward' ? p.layers.flatMap((l) => l.blocks) : [p.block];
  const pick = <T>(a: readonly T[]): T | undefined => (a.length === 0 ? undefined : a[i % a.length]);
  switch (field) {
    case 'blockId': {
      const b = pick(blocks.filter((x) => !x.all));
      if (!b) return false;
      const t = j % b.ids.length, old = b.ids[t]!;
      b.ids[t] = vi % 3 === 0 ? (old + 1 + (vi % 50)) >>> 0 : vi % 3 === 1 ? Math.max(0, old - 1 - (vi % 50)) : vi >>> 0;
      return b.ids[t] !== old;
    }
    case 'stageId': {
      if (p.kind !== 'forward') return false;
      const s = pick(p.layers.flatMap((l) => l.stages));
      if (!s || s.length === 0) return false;
      const t = j % s.length, old = s[t]!;
      s[t] = vi % 2 === 0 ? (old + 1 + (vi % 299)) % 300 : vi >>> 0;
      return s[t] !== old;
    }
    case 'hash': {
      const b = pick(blocks.filter((x) => x.hashes.length > 0));
      if (!b) return false;
      b.hashes[j % b.hashes.length]! ^= 1 << bit;
      return true;
    }
    case 'pattern': {
      const rows: Float32Array[] = [];
      for (const b of blocks) b.payload.forEach((x, t) => b.kinds[t] === RowKind.Full && rows.push(x as Float32Array));
      const r = pick(rows);
      if (!r) return false;
      const t = j % r.length;
      r[t] = otherF32(r[t]!, v);
      return true;
    }
    case 'output': {
      if (p.kind !== 'forward') return false;
      const t = j % p.output.data.length;
      p.output.data[t] = otherF32(p.output.data[t]!, v);
      return true;
    }
    case 'input': {
      if (p.kind !== 'forward') return false;
      if (p.input.kind === 'f32') {
        const t = j % p.input.data.length;
        p.input.data[t] = otherF32(p.input.data[t]!, v);
      } else {
        const t = j % p.input.ids.length, old = p.input.ids[t]!;
        p.input.ids[t] = vi % 2 === 0 ? (old + 1 + (vi % 49)) % 50 : vi >>> 0;
        if (p.input.ids[t] === old) return false;
      }
      return true;
    }
    case 'ghost':
      p.ghost[j % 32]! ^= 1 << bit;
      return true;
    case 'firstLayer':
      if (p.kind !== 'forward') return false;
      p.firstLayer = p.firstLayer + 1 + (vi % 5);
      return true;
    case 'tensor':
      if (p.kind !== 'update') return false;
      p.tensor = (p.tensor + 1 + (vi % 6)) >>> 0;
      return true;
    case 'grad': {
      if (p.kind !== 'update') return false;
      const t = j % p.grads.length, g = p.grads[t]!;
      p.grads[t] = g >= 0 ? -1 - g : 1 - g; // the sign flips: the step moves the other way
      return true;
    }
    case 'newRoot':
      if (p.kind !== 'update') return false;
      p.newRoot[j % 32]! ^= 1 << bit;
      return true;
    case 'lr':
      if (p.kind !== 'update') return false;
      p.optimizer.lr = Math.fround(p.optimizer.lr * (vi % 2 === 0 ? 2 : 0.5));
      return true;
  }
}

describe('structured mutations, re-encoded', () => {
  it(`changed ids, hashes, patterns, outputs, inputs, stages, digests, update fields: all refused (${STRUCT_RUNS} mutants)`, async () => {
    const reasons = new Map<string, number>();
    let reproved = 0;
    const arb = fc.record({
      base: fc.nat({ max: 7 }),
      field: fc.nat({ max: 7 }),
      i: fc.nat(),
      j: fc.nat(),
      v: fc.oneof(fc.nat({ max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 400 }), fc.double({ noNaN: true, min: -4, max: 4 })),
      bit: fc.integer({ min: 0, max: 7 }),
    });
    await fc.assert(
      fc.asyncProperty(arb, async ({ base, field, i, j, v, bit }) => {
        const h = pool[base % pool.length]!;
        const p = decodeProof(h.bytes);
        const f = (p.kind === 'forward' ? FORWARD_FIELDS : UPDATE_FIELDS)[field]!;
        // Inputs are re-proved as an oracle, so only forward proofs with a prover get input changes.
        fc.pre(f !== 'input' || h.ctx.prover !== undefined);
        fc.pre(change(p, f, i, j, v, bit));
        const what = `${h.name}: ${f} (i=${i} j=${j} v=${v} bit=${bit})`;
        // The object itself: a ProofError (or a FormatError: an object is checked through its
        // encoding, so e.g. unsorted block ids fail as they do in bytes), never anything else.
        const opts = () => (h.ctx.cache ? { cache: h.ctx.cache.clone() } : {});
        let objReason = 'ACCEPTED';
        try {
          if (p.kind === 'forward') await verifyForward(h.ctx.ghost, p, opts());
          else await verifyUpdate(h.ctx.ghost, p, opts());
        } catch (err) {
          if (!(err instanceof ProofError || err instanceof FormatError)) throw new Error(`${what}: the object was refused with ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
          // Only the decoder's structural checks may answer with a FormatError.
          if (err instanceof FormatError && !['blockId', 'stageId', 'input', 'tensor'].includes(f)) throw new Error(`${what}: FormatError ${err.message} for a change the format cannot see`);
          objReason = err.reason;
        }
        const bytes = encodeProof(p);
        if (objReason === 'ACCEPTED') {
          // Only a changed input may verify: then it must be exactly the prover's honest proof of that input.
          const again = f === 'input' && p.kind === 'forward' ? await h.ctx.prover!.prove(p.input.kind === 'f32' ? p.input.data : p.input.ids) : undefined;
          if (!again || p.kind !== 'forward' || !sameClaim(again.proof, p)) throw new Error(`${what}: FORGERY accepted: ${hex(bytes)}`);
          reproved++;
          return;
        }
        reasons.set(objReason, (reasons.get(objReason) ?? 0) + 1);
        // The bytes: a ProofError or a FormatError (a change the decoder already refuses).
        const r = await check(h.ctx, bytes, pool);
        if (r.accepted) throw new Error(`${what}: the object was refused (${objReason}) but its bytes were accepted`);
      }),
      { numRuns: STRUCT_RUNS, seed: SEED + 1, endOnFailure: true },
    );
    const refused = [...reasons.values()].reduce((s, v) => s + v, 0);
    console.log(`structured: ${refused} refused ${JSON.stringify(Object.fromEntries([...reasons].sort((p, q) => q[1] - p[1])))}, ${reproved} input changes accepted as the honest proof of the new input`);
    for (const r of ['ROOT_MISMATCH', 'BLOCK_IDS', 'OUTPUT_MISMATCH', 'GHOST_MISMATCH', 'UPDATE_MISMATCH']) expect(reasons.get(r) ?? 0, r).toBeGreaterThan(0);
    expect(refused).toBeGreaterThan(STRUCT_RUNS * 0.8);
  });

  it('the structured changes named in the issue, one by one, on the two-layer proof', async () => {
    const h = pool[0]!;
    const cases: [string, (p: ForwardProof) => void][] = [
      ['a selected id of stage 0', (p) => void (p.layers[0]!.stages[0]![0] = (p.layers[0]!.stages[0]![0]! + 1) % 300)],
      ['a product-key stage id', (p) => void (p.layers[1]!.stages[0]![2] = (p.layers[1]!.stages[0]![2]! + 1) % 144)],
      ['a block id', (p) => void (p.layers[0]!.blocks[0]!.ids[1]! += 1)],
      ['a hash', (p) => void (p.layers[1]!.blocks[2]!.hashes[40]! ^= 0x80)],
      ['a pattern value', (p) => void ((p.layers[1]!.blocks[0]!.payload[3] as Float32Array)[0]! *= -1)],
      ['the output', (p) => void (p.output.data[0] = Math.fround(p.output.data[0]! + 1e-3))],
      ['the input', (p) => void (p.input.kind === 'f32' && (p.input.data[5]! += 0.5))],
    ];
    for (const [what, f] of cases) {
      const p = clone(decodeProof(h.bytes) as ForwardProof);
      f(p);
      const r = await check(h.ctx, encodeProof(p), pool);
      expect(r.accepted, what).toBe(false);
      await expect(verifyForward(h.ctx.ghost, p), what).rejects.toBeInstanceOf(ProofError);
    }
    // Found by this fuzzer: an update proof whose tensor field names another tensor of the same
    // N and dim than its block (l0.keys instead of l0.values) was accepted, and the verifier's
    // Ghost file then gave l0.keys the new root of l0.values. Now LAYER_MISMATCH.
    const u1 = decodeProof(pool[3]!.bytes) as UpdateProof;
    expect(u1.tensor).toBe(1);
    u1.tensor = 0;
    expect(await check(pool[3]!.ctx, encodeProof(u1), pool)).toEqual({ accepted: false, reason: 'LAYER_MISMATCH' });
    // An update proof with a changed old row, gradient or new root.
    const u = pool[3]!;
    for (const f of [(p: UpdateProof) => void ((p.block.payload[0] as Float32Array)[1]! += 1), (p: UpdateProof) => void (p.grads[2] = -p.grads[2]! - 1), (p: UpdateProof) => void (p.newRoot[31]! ^= 1)]) {
      const p = clone(decodeProof(u.bytes) as UpdateProof);
      f(p);
      await expect(verifyUpdate(u.ctx.ghost, p)).rejects.toBeInstanceOf(ProofError);
    }
  });
});
