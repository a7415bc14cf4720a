/**
 * Optimizer-state rows in the PatternCache (docs/step-proofs.md, "With a cache"): a
 * verifier that follows a model through step proofs holds the state rows each step wrote,
 * so the next step sends them as held (or as deltas, or as nothing for zero rows) instead
 * of 8 d + 12 bytes each. Checked against a prover and verifier without caches (the same
 * Ghost files), and against hostile caches and proofs.
 */
import { describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, PatternCache, SparseTensor, decodeProof, encodeProof, verifyTrainStep } from '../lib/index.js';
import type { PinnedGhost, StepProof } from '../lib/index.js';
import { StateKind } from '../lib/verify/proof-format.js';
import { stateRowBytes } from '../lib/verify/training.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

/** A HopfieldLookup classifier (exact keys, 48 patterns of 12, values of 4), built the same from a seed. */
function classifier(seed: number): Model {
  const rng = new Rng(seed);
  return new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(48 * 12), 12), values: SparseTensor.fromArray(rng.f32(48 * 4), 4), k: 3, beta: 3 })], {
    training: { loss: 'cross-entropy', lr: 0.02, weightDecay: 0.01 },
  });
}

/** Batches: two random ones, then the first again (every row it touches was written before), then a third. */
function batches(): { input: Float32Array; targets: number[] }[] {
  const rng = new Rng(77);
  const b = () => ({ input: rng.f32(5 * 12), targets: [0, 1, 2, 3, 1] });
  const [a, c, d] = [b(), b(), b()];
  return [a, c, a, d, a];
}

/** How many state rows of a proof travel each way, and the bytes the coding adds (kind bytes). */
function stateRows(p: StepProof): { rows: number; full: number; held: number; delta: number; zero: number; kindBytes: number; rowBytes: number } {
  const out = { rows: 0, full: 0, held: 0, delta: 0, zero: 0, kindBytes: 0, rowBytes: 0 };
  for (const s of p.states) {
    out.rows += s.ids.length;
    out.rowBytes = stateRowBytes(s.dim);
    if (!s.kinds) {
      out.full += s.ids.length;
      continue;
    }
    out.kindBytes += Math.ceil(s.ids.length / 4);
    for (const k of s.kinds) {
      if (k === StateKind.Full) out.full++;
      else if (k === StateKind.Held) out.held++;
      else if (k === StateKind.Delta) out.delta++;
      else out.zero++;
    }
  }
  return out;
}

/** The held state leaves of a proof's state rows in `cache`, as hex (undefined: not held), to compare a cache before and after. */
function heldStates(cache: PatternCache, p: StepProof): (string | undefined)[] {
  return p.states.flatMap((s) => Array.from(s.ids, (id) => {
    const h = cache.getState(s.tensor, id);
    return h && Buffer.from(h.leaf).toString('hex');
  }));
}

describe('optimizer-state rows in the PatternCache', () => {
  it('a chain of cached steps verifies, gives the uncached chain\'s Ghost files, and sends held state rows', async () => {
    const cold = classifier(5), warm = classifier(5);
    const mirror = new PatternCache(), theirs = new PatternCache();
    let pinned: PinnedGhost = await warm.ghost();
    expect(pinned.digest).toEqual((await cold.ghost()).digest);
    for (const [s, batch] of batches().entries()) {
      const c = await cold.proveTrainStep(batch);
      const w = await warm.proveTrainStep(batch, { cache: mirror });
      // The same step, whatever the coding: the same Ghost file after it, and the verifier with its cache agrees.
      expect(w.ghost.digest).toEqual(c.ghost.digest);
      const v = await verifyTrainStep(pinned, w.bytes, { cache: theirs });
      expect(v.ghost.digest).toEqual(c.ghost.digest);
      pinned = v.ghost;
      // The prover's mirror holds what the verifier holds.
      expect(mirror.size).toBe(theirs.size);
      expect(mirror.stateSize).toBe(theirs.stateSize);
      const pc = decodeProof(c.bytes) as StepProof, pw = decodeProof(w.bytes) as StepProof;
      expect(encodeProof(pw)).toEqual(w.bytes);
      const sc = stateRows(pc), sw = stateRows(pw);
      expect(sc.full).toBe(sc.rows); // without a cache: every state row in full, no kinds
      expect(sw.rows).toBe(sc.rows);
      expect(sw.full + sw.held + sw.delta + sw.zero).toBe(sw.rows);
      // Bytes: every state row not sent in full saves its 8 d + 12 bytes, less 2 bits of kind a row (value rows only ever shrink).
      expect(w.bytes.length).toBeLessThanOrEqual(c.bytes.length - (sw.held + sw.zero) * sw.rowBytes + sw.kindBytes);
      // Following the chain, no state row travels in full: it was never written (the zero row) or the verifier recorded its last write.
      expect(sw.full).toBe(0);
      expect(sw.held + sw.zero).toBe(sw.rows);
      if (s === 0) expect(sw.zero).toBe(sw.rows);
      if (s >= 2) expect(sw.held).toBeGreaterThan(0); // the first batch again: rows written before are held
      // So the cached proof is at most the cold one less every state row's bytes (plus the kind bits).
      expect(w.bytes.length / c.bytes.length).toBeLessThanOrEqual(1 - (sw.rows * sw.rowBytes - sw.kindBytes) / c.bytes.length);
    }
    expect(theirs.stateSize).toBeGreaterThan(0);
  });

  it('hostile caches and proofs: a wrong held state row, an evicted one, one from another model; a failed step leaves the cache as it was', async () => {
    const model = classifier(6), other = classifier(7);
    const [b0, , b2] = batches();
    const mirror = new PatternCache(), theirs = new PatternCache(), otherCache = new PatternCache();
    const g0 = await model.ghost();
    const s0 = await model.proveTrainStep(b0!, { cache: mirror });
    const g1 = (await verifyTrainStep(g0, s0.bytes, { cache: theirs })).ghost;
    // The other model (same shapes) followed by its own verifier cache.
    const o0 = await other.proveTrainStep(b0!);
    await verifyTrainStep(await classifier(7).ghost(), o0.bytes, { cache: otherCache });
    // Step 1 writes the rows step 0 wrote (the same batch): its state rows travel held.
    const s1 = await model.proveTrainStep(b2!, { cache: mirror });
    const p1 = decodeProof(s1.bytes) as StepProof;
    expect(stateRows(p1).held).toBeGreaterThan(0);
    const st = p1.states.find((x) => x.kinds!.includes(StateKind.Held))!;
    const at = st.kinds!.indexOf(StateKind.Held);
    const id = st.ids[at]!;

    // A wrong held state row: one bit of the verifier's copy changed.
    const wrong = theirs.clone();
    wrong.getState(st.tensor, id)!.words[0]! ^= 1;
    const before = heldStates(wrong, p1), sizeBefore = wrong.size;
    expect(await reason(verifyTrainStep(g1, s1.bytes, { cache: wrong }))).toBe('ROOT_MISMATCH');
    // ...and the refused step left that cache as it was (nothing recorded).
    expect(heldStates(wrong, p1)).toEqual(before);
    expect(wrong.size).toBe(sizeBefore);
    // A step refused only at its last check (another claimed Ghost file) leaves the right cache as it was too.
    const late = decodeProof(s1.bytes) as StepProof;
    late.newGhost = late.newGhost.slice();
    late.newGhost[0]! ^= 1;
    const right = heldStates(theirs, p1), rightSize = theirs.size;
    expect(await reason(verifyTrainStep(g1, late, { cache: theirs }))).toBe('UPDATE_MISMATCH');
    expect(heldStates(theirs, p1)).toEqual(right);
    expect(theirs.size).toBe(rightSize);

    // A verifier without the cache, or whose cache evicted the rows (capacity 0), does not hold them.
    expect(await reason(verifyTrainStep(g1, s1.bytes))).toBe('NOT_HELD');
    expect(await reason(verifyTrainStep(g1, s1.bytes, { cache: new PatternCache(0) }))).toBe('NOT_HELD');
    // Only state rows missing: a cold proof of the same step (a twin model, no cache: value rows in full) with its state rows claimed held.
    const twin = classifier(6);
    await twin.proveTrainStep(b0!);
    const claim = decodeProof((await twin.proveTrainStep(b2!)).bytes) as StepProof;
    expect(await reason(verifyTrainStep(g1, claim))).toBe('ACCEPTED');
    for (const s of claim.states) {
      s.kinds = new Uint8Array(s.ids.length).fill(StateKind.Held);
      s.deltas = new Array<null>(s.ids.length).fill(null);
    }
    expect(await reason(verifyTrainStep(g1, decodeProof(encodeProof(claim)) as StepProof, { cache: new PatternCache() }))).toBe('NOT_HELD');

    // A cache from another model: its state rows for the same ids are not this model's.
    const mixed = theirs.clone();
    for (const s of p1.states) {
      const leaves = new Uint8Array(s.ids.length * stateRowBytes(s.dim));
      s.ids.forEach((x, k) => {
        const h = otherCache.getState(s.tensor, x);
        if (h) leaves.set(h.leaf, k * stateRowBytes(s.dim));
      });
      mixed.recordStates([{ tensor: s.tensor, dim: s.dim, ids: s.ids, leaves, root: new Uint8Array(32) }]);
    }
    expect(await reason(verifyTrainStep(g1, s1.bytes, { cache: mixed }))).toBe('ROOT_MISMATCH');
    expect(await reason(verifyTrainStep(g1, s1.bytes, { cache: otherCache }))).toMatch(/^(ROOT_MISMATCH|NOT_HELD)$/);

    // A state row claimed zero, or sent "in full" with other bytes, is refused; a no-op delta against the held row is the same step.
    for (const [k, want] of [[StateKind.Zero, 'ROOT_MISMATCH'], [StateKind.Full, 'ROOT_MISMATCH'], [StateKind.Delta, 'ACCEPTED']] as const) {
      const p = decodeProof(s1.bytes) as StepProof;
      const s = p.states[p1.states.indexOf(st)]!;
      s.kinds![at] = k;
      s.deltas![at] = k === StateKind.Delta ? new Uint8Array(Math.ceil((2 * s.dim + 3) / 4)) : null;
      expect(await reason(verifyTrainStep(g1, decodeProof(encodeProof(p)) as StepProof, { cache: theirs.clone() }))).toBe(want);
    }
    // The honest proof verifies with the right cache, which then records the new state rows.
    const v = await verifyTrainStep(g1, s1.bytes, { cache: theirs });
    expect(v.ghost.digest).toEqual(s1.ghost.digest);
    expect(heldStates(theirs, p1)).not.toEqual(before);
    expect(theirs.size).toBe(mirror.size);
  });

  it('decoding coded state blocks: bad flags and padding bits are refused; old uncoded blocks still decode', async () => {
    const model = classifier(8);
    const [b0] = batches();
    const mirror = new PatternCache();
    const s0 = await model.proveTrainStep(b0!, { cache: mirror });
    const p = decodeProof(s0.bytes) as StepProof;
    expect(p.states[0]!.kinds).toBeDefined();
    // Find the state block's flags byte: re-encode with the flags changed (4: unknown).
    const uncoded: StepProof = { ...p, states: p.states.map((s) => ({ tensor: s.tensor, dim: s.dim, all: s.all, ids: s.ids, leaves: s.leaves, hashes: s.hashes })) };
    const a = encodeProof(uncoded), b = encodeProof(p);
    expect((decodeProof(a) as StepProof).states[0]!.kinds).toBeUndefined();
    // The first byte where the encodings differ is the state block's flags (0 vs 2).
    let at = 0;
    while (a[at] === b[at]) at++;
    expect([a[at], b[at]]).toEqual([0, 2]);
    const bad = b.slice();
    bad[at] = 6;
    expect(await reason(Promise.resolve().then(() => decodeProof(bad)))).toBe('BAD_VALUE');
    // Padding bits of the kinds (after the ids): set the top bits of the last kind byte when the count is not a multiple of 4.
    const s = p.states[0]!;
    if (s.ids.length % 4 !== 0) {
      const pad = b.slice();
      const kindsAt = at + 1 + 4 + (s.all ? 0 : 4 * s.ids.length);
      pad[kindsAt + Math.ceil(s.ids.length / 4) - 1]! |= 0xc0;
      expect(await reason(Promise.resolve().then(() => decodeProof(pad)))).toMatch(/^(NON_CANONICAL|BAD_VALUE|PROOF_LENGTH|TRUNCATED)$/);
    }
  });
});
