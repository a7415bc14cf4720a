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
 * The pool, the byte mutations and the classifier (`check`) are scripts/proof-mutants.mjs,
 * given lib/ here; scripts/fuzz-proofs.mjs runs the same byte mutations a million times
 * over dist/.
 */
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';

import { FormatError, ProofError, decodeProof, encodeProof, verifyForward, verifyTrainStep, verifyUpdate, type ForwardProof, type GhostProof, type StepProof, type UpdateProof } from '../lib/index.js';
import type { StepSequence } from '../lib/verify/proof-format.js';
import { RowKind, StateKind, type PatternBlock } from '../lib/verify/proof-format.js';
import { HANG_MS, buildPool, check as checkWith, fieldOffsets, hex, mutate, mutationArb, sameClaim, type Context, type FieldOffset, type Honest, type Outcome } from '../scripts/proof-mutants.mjs';

/** The library under test, injected into the shared fuzzer (the script passes dist/). */
const lib = await import('../lib/index.js');

/** Byte-mutation runs (a few thousand in CI) and structured runs; override with GT_FUZZ_RUNS. */
const BYTE_RUNS = Number(process.env.GT_FUZZ_RUNS ?? 4000);
const STRUCT_RUNS = Math.max(100, Math.round(BYTE_RUNS / 5));
const SEED = Number(process.env.GT_FUZZ_SEED ?? 0x6b057);

const clone = <T extends GhostProof>(p: T): T => decodeProof(encodeProof(p)) as T;

/**
 * Decodes and verifies `bytes` in `ctx` with lib/ (scripts/proof-mutants.mjs): the refusal
 * reason, or how it was accepted; throws on a forgery, another error type or a hang.
 */
const check = (ctx: Context, bytes: Uint8Array, pool: readonly Honest[], tight = false): Promise<Outcome> => checkWith(lib, ctx, bytes, pool, tight);

// ---------------------------------------------------------------- the honest pool (scripts/proof-mutants.mjs)

const pool: Honest[] = [];
const fieldsOf: FieldOffset[][] = [];

beforeAll(async () => {
  pool.push(...(await buildPool(lib)));
  for (const h of pool) fieldsOf.push(fieldOffsets(decodeProof(h.bytes), h.bytes.length));
});

describe('proof fuzzing', () => {
  it('every honest proof verifies in its context and round-trips through the codec', async () => {
    expect(pool.length).toBe(12);
    for (const [i, h] of pool.entries()) {
      expect(encodeProof(decodeProof(h.bytes))).toEqual(h.bytes);
      expect(await check(h.ctx, h.bytes, pool)).toEqual({ accepted: true, how: 'identical', honest: i });
      // Under its tight limits (its exact cost) too; one cell or one work unit less refuses it.
      expect(await check(h.ctx, h.bytes, pool, true)).toEqual({ accepted: true, how: 'identical', honest: i });
      const lim = h.ctx.limits!;
      for (const less of [{ ...lim, maxCells: lim.maxCells! - 1 }, { ...lim, maxWork: lim.maxWork! - 1 }]) {
        expect(await check({ ...h.ctx, limits: less }, h.bytes, pool, true)).toEqual({ accepted: false, reason: 'BUDGET' });
      }
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
      fc.asyncProperty(fc.nat({ max: pool.length - 1 }), fc.array(mutationArb, { minLength: 1, maxLength: 3 }), fc.boolean(), async (bi, muts, tight) => {
        const base = pool[bi]!;
        const bytes = mutate(base.bytes, muts, pool, fieldsOf[bi]!, lib);
        const t0 = performance.now();
        const r = await check(base.ctx, bytes, pool, tight);
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
    for (const r of ['TRUNCATED', 'TRAILING_BYTES', 'LIMIT', 'BAD_VALUE', 'ROOT_MISMATCH', 'GHOST_MISMATCH', 'OUTPUT_MISMATCH', 'BUDGET']) expect(reasons.get(r) ?? 0, r).toBeGreaterThan(0);
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

type Field = 'blockId' | 'stageId' | 'hash' | 'pattern' | 'output' | 'input' | 'ghost' | 'firstLayer' | 'table' | 'tensor' | 'grad' | 'newRoot' | 'lr' | 'target' | 'state' | 'newGhost' | 'stepNo';

const FORWARD_FIELDS: Field[] = ['blockId', 'stageId', 'hash', 'pattern', 'output', 'input', 'ghost', 'firstLayer', 'table'];
const UPDATE_FIELDS: Field[] = ['blockId', 'hash', 'pattern', 'ghost', 'tensor', 'grad', 'newRoot', 'lr'];
const STEP_FIELDS: Field[] = ['blockId', 'hash', 'pattern', 'input', 'target', 'state', 'newGhost', 'stepNo'];

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
  const blocks: PatternBlock[] = p.kind === 'forward' ? p.layers.flatMap((l) => l.blocks) : p.kind === 'step' ? p.blocks : [p.block];
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
      if (p.kind === 'update') return false;
      const q = p.kind === 'step' ? sequenceOf(p, vi) : p;
      if (q.input.kind === 'f32') {
        const t = j % q.input.data.length;
        q.input.data[t] = otherF32(q.input.data[t]!, v);
      } else {
        const t = j % q.input.ids.length, old = q.input.ids[t]!;
        q.input.ids[t] = vi % 2 === 0 ? (old + 1 + (vi % 49)) % 50 : vi >>> 0;
        if (q.input.ids[t] === old) return false;
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
    case 'table': {
      // A held table (format version 2) retargeted to another tensor, or a block that is not
      // one (rows in full, or a layer's ids) turned into a held-table marker.
      if (p.kind !== 'forward') return false;
      const held = blocks.filter((x) => x.heldTable === true);
      const b = held.length > 0 && vi % 2 === 0 ? pick(held)! : pick(blocks.filter((x) => x.heldTable !== true && !(x.all && x.kinds.every((k) => k === RowKind.Held))));
      if (!b) return false;
      if (b.heldTable === true) b.tensor = (b.tensor + 1 + (vi % 5)) >>> 0;
      else Object.assign(b, { all: true, heldTable: true, ids: new Uint32Array(0), kinds: new Uint8Array(0), payload: [], hashes: new Uint8Array(0) });
      return true;
    }
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
    case 'target': {
      if (p.kind !== 'step') return false;
      const q = sequenceOf(p, vi);
      if (q.targets.kind === 'classes') {
        const t = j % q.targets.ids.length, old = q.targets.ids[t]!;
        q.targets.ids[t] = vi % 2 === 0 ? (old + 1 + (vi % 5)) % 6 : vi >>> 0;
        return q.targets.ids[t] !== old;
      }
      const t = j % q.targets.data.length;
      q.targets.data[t] = otherF32(q.targets.data[t]!, v);
      return true;
    }
    case 'state': {
      if (p.kind !== 'step') return false;
      const st = pick(p.states);
      if (!st) return false;
      // A row that travels (in a block coded against a cache, only Full rows carry their leaf).
      const rb = 8 * st.dim + 12;
      const sent = st.kinds ? Array.from(st.kinds.keys()).filter((t) => st.kinds![t] === StateKind.Full) : null;
      if (sent && sent.length === 0) return false;
      const at = sent ? sent[j % sent.length]! * rb + (j % rb) : j % st.leaves.length;
      st.leaves[at]! ^= 1 << bit;
      return true;
    }
    case 'newGhost':
      if (p.kind !== 'step') return false;
      p.newGhost[j % 32]! ^= 1 << bit;
      return true;
    case 'stepNo':
      if (p.kind !== 'step') return false;
      p.step = p.step + 1 + (vi % 5);
      return true;
  }
}

/** One of a step proof's sequences (the first, or one of `more`), chosen by v. */
function sequenceOf(p: StepProof, v: number): StepSequence {
  const all: StepSequence[] = [p, ...(p.more ?? [])];
  return all[(v >>> 3) % all.length]!;
}

describe('structured mutations, re-encoded', () => {
  it(`changed ids, hashes, patterns, outputs, inputs, stages, digests, update fields: all refused (${STRUCT_RUNS} mutants)`, async () => {
    const reasons = new Map<string, number>();
    let reproved = 0;
    const arb = fc.record({
      base: fc.nat({ max: 10 }),
      field: fc.nat({ max: 8 }),
      i: fc.nat(),
      j: fc.nat(),
      v: fc.oneof(fc.nat({ max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 400 }), fc.double({ noNaN: true, min: -4, max: 4 })),
      bit: fc.integer({ min: 0, max: 7 }),
    });
    await fc.assert(
      fc.asyncProperty(arb, async ({ base, field, i, j, v, bit }) => {
        const h = pool[base % pool.length]!;
        const p = decodeProof(h.bytes);
        const fields = p.kind === 'forward' ? FORWARD_FIELDS : p.kind === 'step' ? STEP_FIELDS : UPDATE_FIELDS;
        const f = fields[field % fields.length]!;
        // Inputs are re-proved as an oracle, so only forward proofs with a prover get input changes (a step's must all be refused).
        fc.pre(f !== 'input' || h.ctx.prover !== undefined || p.kind === 'step');
        fc.pre(change(p, f, i, j, v, bit));
        const what = `${h.name}: ${f} (i=${i} j=${j} v=${v} bit=${bit})`;
        // The object itself: a ProofError (or a FormatError: an object is checked through its
        // encoding, so e.g. unsorted block ids fail as they do in bytes), never anything else.
        const opts = () => (h.ctx.cache ? { cache: h.ctx.cache.clone() } : {});
        let objReason = 'ACCEPTED';
        try {
          if (p.kind === 'forward') await verifyForward(h.ctx.ghost, p, opts());
          else if (p.kind === 'step') await verifyTrainStep(h.ctx.ghost, p, opts());
          else await verifyUpdate(h.ctx.ghost, p, opts());
        } catch (err) {
          if (!(err instanceof ProofError || err instanceof FormatError)) throw new Error(`${what}: the object was refused with ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`);
          // Only the decoder's structural checks may answer with a FormatError.
          if (err instanceof FormatError && !['blockId', 'stageId', 'input', 'tensor', 'state', 'table'].includes(f)) throw new Error(`${what}: FormatError ${err.message} for a change the format cannot see`);
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
    for (const r of ['ROOT_MISMATCH', 'BLOCK_IDS', 'OUTPUT_MISMATCH', 'GHOST_MISMATCH', 'UPDATE_MISMATCH', 'NOT_HELD']) expect(reasons.get(r) ?? 0, r).toBeGreaterThan(0);
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
