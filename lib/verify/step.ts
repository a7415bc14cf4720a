/**
 * Step proofs (docs/step-proofs.md): one training step of a whole model, recomputed by
 * the verifier from the batch (inputs and targets), the rows the step reads with their
 * multiproofs, and the optimizer state of the rows it writes with theirs. Nothing in
 * the proof is trusted: the forward (the selection re-derived where forward proofs
 * re-derive it), the loss's gradient, the backward into every row (each kind's canonical
 * backward), the clipping, the learning rate of this step, the optimizer update and the
 * new value and state roots are all the verifier's own, and the proof is accepted only
 * when the Ghost file they give has the claimed digest.
 *
 * The prover (Model.proveTrainStep) runs this same module on the proof it builds, so
 * both sides compute the step with the same code. Loads no addon.
 */
import { bytesEqual } from '../shared/bytes.js';
import { ProofError } from '../shared/errors.js';
import { canonicalBackwardInto, canonicalForward, GradientAccumulator, type CanonicalForward, type NativeStepHooks } from './backward.js';
import { clog1pNeg, coptimizerStep, type CanonicalRowState } from './canonical.js';
import { encodeGhost, type GhostManifest } from './ghost-file.js';
import { planHopfieldSelection, type GhostHopfieldLayer } from './kinds/hopfield.js';
import { specOf } from './kinds/index.js';
import { fail, sortedIndexOf, type Revealed } from './layer-spec.js';
import { f32le, loadHasher, multiproofRoot, rootOf, rootOfLeaves, type MerkleHasher } from './merkle.js';
import { HASH_CALL_WORK, HASH_WORK, merkleCalls, resolveStateLeaves, VerifyBudget, type PatternBlock, type PatternCache, type ResolvedBlock, type ResolvedStates, type StateBlock, type StepProof, type StepSequence } from './proof-format.js';
import { openProof, pinGhost, resolveBlock, resolveRows, type PinnedGhost, type VerifyCost, type VerifyOptions } from './proof-verify.js';
import { cclip, closs, cstepLr, readStateLeaves, stateDim, stateLeaves, type GhostTraining, type StepTargets } from './training.js';

/** The parts one after another in one new array. */
function concat<T extends Float32Array | Uint32Array>(parts: readonly T[], make: (n: number) => T): T {
  let n = 0;
  for (const a of parts) n += a.length;
  const out = make(n);
  n = 0;
  for (const a of parts) {
    out.set(a, n);
    n += a.length;
  }
  return out;
}

/** The 32-bit words of f32 values (a view): copies through it keep every bit, a NaN's payload too. */
const words = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

/**
 * Copies n words from src at `from` to dst at `to`: what `dst.set(src.subarray(from, from
 * + n), to)` does, without a view object per short row (a step copies thousands of rows of
 * 64 values; a long row is copied by set, whose view costs less than its loop).
 */
function copyWords(dst: Uint32Array, to: number, src: Uint32Array, from: number, n: number): void {
  if (n >= 256) dst.set(src.subarray(from, from + n), to);
  else for (let j = 0; j < n; j++) dst[to + j] = src[from + j]!;
}

/** One trained tensor's rows a step wrote: their new values and optimizer state. */
export interface StepWrite {
  tensor: number;
  all: boolean;
  ids: Uint32Array;
  /** New values (ids.length x dim). */
  rows: Float32Array;
  /** New optimizer state of those rows. */
  state: CanonicalRowState;
  /** The gradient the optimizer took (after clipping), ids.length x dim. */
  grads: Float32Array;
  /** The new state rows' leaf bytes (stateLeaves of `state`), concatenated. */
  leaves: Uint8Array;
  root: Uint8Array;
  stateRoot: Uint8Array;
}

/** What a step computes. */
export interface StepOutcome {
  /** The Ghost file after the step. */
  manifest: GhostManifest;
  /** The model's output on the batch before the step (rows x cols). */
  output: Float32Array;
  rows: number;
  cols: number;
  /** The loss on the batch before the step (f64; reported, not checked bit for bit). */
  loss: number;
  /** The learning rate this step used (f32), the global gradient norm before clipping and the clipping factor (1: none). */
  lr: number;
  gradNorm: number;
  clipScale: number;
  writes: StepWrite[];
  /** Every row the step read, as it is after the step, with its tensor's root then: what both caches record. */
  record: ResolvedBlock[];
  /** Every state row the step wrote, as it is after the step, with its state root then: what both caches record too. */
  stateRecord: ResolvedStates[];
}

/**
 * Where the prover's run of computeStep takes the optimizer state of the rows a step
 * writes (its state trees); the verifier's comes from the proof's state blocks.
 */
export type StateSource = (tensor: number, ids: Uint32Array) => StateBlock;

/**
 * The prover's own run of computeStep (Model.proveTrainStep; a verifier never passes
 * this): the blocks are the ones it built from its own trees, so their rows are taken as
 * they are (resolved from its cache like a verifier's, but their multiproofs are not
 * checked again), the state rows come from its state trees (not checked again against
 * its state roots), and the new value and state
 * roots are those of its trees after `apply` wrote the step into them (called once per
 * written tensor, after every check of the step passed). The step, its bytes and its
 * result are the same as a verifier's run gives; the prover only skips re-hashing what
 * its trees hash anyway.
 */
export interface ProverRun {
  stateOf: StateSource;
  apply: (w: { tensor: number; ids: Uint32Array; rows: Float32Array; state: CanonicalRowState; leaves: Uint8Array }) => { root: Uint8Array; stateRoot: Uint8Array };
  /** Native mirrors of the backward and the optimizer step (the same bits; lib/model/train/step-native.ts). */
  native?: NativeStepHooks & { optimizerStep?: typeof coptimizerStep };
}

const work = (rows: number, dim: number, n: number): number => rows * dim * HASH_WORK + merkleCalls(rows, n) * HASH_CALL_WORK;

/** The sequences of a step's batch, in order: the proof's first, then `more`. */
export function sequencesOf(p: StepProof): StepSequence[] {
  return p.more === undefined || p.more.length === 0 ? [p] : [p, ...p.more];
}

const rowsOf = (q: StepSequence): number => (q.input.kind === 'ids' ? q.input.ids.length : q.input.rows);

/**
 * Charges what checking the step holds and does, from the proof's headers and the Ghost
 * file, before any of it: each layer's forward (its kind's plan) and backward (twice
 * the forward's work), the blocks' hashing (twice for written rows: the old and the new
 * root), the state rows, the optimizer.
 */
function planStep(g: GhostManifest, t: GhostTraining, p: StepProof, budget: VerifyBudget): void {
  for (const q of sequencesOf(p)) {
    const B = rowsOf(q);
    for (const [li, l] of g.layers.entries()) {
      const before = budget.work, cellsBefore = budget.cells;
      specOf(l).plan(l, g, B, budget, li);
      if (l.op === 'hopfield') planHopfieldSelection(l as GhostHopfieldLayer, g, { op: l.op, stages: q.layers[li]!.stages, blocks: p.blocks }, B, budget, li);
      budget.workFor(2 * (budget.work - before), `layer ${li}'s backward`);
      budget.cellsFor(2 * (budget.cells - cellsBefore), `layer ${li}'s backward`);
    }
  }
  const trained = new Set(t.tensors.map((e) => e.tensor));
  for (const b of p.blocks) {
    const n = g.tensors[b.tensor]!.n;
    const w = trained.has(b.tensor) ? 2 : 1;
    budget.workFor(w * work(b.all ? n : b.ids.length, b.dim, n) + (w - 1) * 24 * b.ids.length * b.dim, `the block of tensor ${b.tensor} (${b.ids.length} rows)`);
    if (w === 2) budget.cellsFor(4 * b.ids.length * b.dim, `the new rows, state and gradients of tensor ${b.tensor}`);
  }
  for (const s of p.states) {
    const n = g.tensors[s.tensor]!.n;
    budget.workFor(2 * work(s.ids.length, stateDim(s.dim), n), `the state block of tensor ${s.tensor}`);
  }
}

/**
 * The step a proof describes, computed from nothing but the pinned Ghost file, the proof
 * and the verifier's cache (rows sent as held ids or deltas). Throws ProofError naming
 * the first check that fails. Does not compare the claimed new digest (verifyTrainStep
 * does; the prover fills it in from this result).
 */
export function computeStep(h: MerkleHasher, ghost: PinnedGhost, p: StepProof, cache: PatternCache | undefined, budget: VerifyBudget, prover?: ProverRun): StepOutcome {
  const stateOf = prover?.stateOf;
  const g = ghost.manifest;
  const t = g.training;
  if (!t) fail('NO_TRAINING_RULE', 'the pinned Ghost file commits no training rule (format 3): it cannot be trained by step proofs');
  if (!bytesEqual(p.ghost, ghost.digest)) fail('GHOST_MISMATCH', 'the proof is for another Ghost file');
  if (p.step !== t.step) fail('GHOST_MISMATCH', `the proof is of step ${p.step}; the Ghost file's next step is ${t.step}`);
  const seqs = sequencesOf(p);
  for (const q of seqs) if (q.layers.length !== g.layers.length) fail('LAYER_MISMATCH', `a step proof covers every layer: ${q.layers.length} given, the model has ${g.layers.length}`);
  let B = 0;
  for (const q of seqs) B += rowsOf(q);
  planStep(g, t, p, budget);

  // The rows read, each block checked against its tensor's root (written rows with every path: the new root needs the siblings).
  const trained = new Map(t.tensors.map((e) => [e.tensor, e]));
  const blocks = new Map<number, { block: PatternBlock; rev: Revealed; used: Uint8Array }>();
  for (const b of p.blocks) {
    if (blocks.has(b.tensor)) fail('BLOCK_IDS', `two blocks of tensor ${b.tensor}`);
    const rev = prover ? resolveRows(g, b, cache) : resolveBlock(h, g, b, cache, trained.has(b.tensor));
    blocks.set(b.tensor, { block: b, rev, used: new Uint8Array(b.ids.length) });
  }
  // The forward of each sequence, each layer served from the blocks: exactly the rows it reads.
  // Each layer sees the step's blocks as its evidence's (a HopfieldLookup whose key block is all rows re-derives its exact selection: held keys).
  const reveal = (li: number, need: Map<number, Uint32Array | 'all'>): Map<number, Revealed> => {
    const out = new Map<number, Revealed>();
    for (const [tensor, want] of need) {
      const b = blocks.get(tensor);
      if (!b) fail('BLOCK_IDS', `layer ${li} reads tensor ${tensor}, which the proof does not reveal`);
      if (want === 'all') {
        if (!b.block.all) fail('BLOCK_IDS', `layer ${li} reads tensor ${tensor} whole; its block lists ids`);
        b.used.fill(1);
        out.set(tensor, b.rev);
        continue;
      }
      const d = b.rev.dim, src = words(b.rev.rows), all = b.block.all;
      const rows = new Float32Array(want.length * d), dst = words(rows);
      for (let k = 0; k < want.length; k++) {
        const id = want[k]!;
        const at = all ? (id < b.rev.ids.length ? id : -1) : sortedIndexOf(b.rev.ids, id);
        if (at < 0) fail('BLOCK_IDS', `layer ${li} reads row ${id} of tensor ${tensor}, which the proof does not reveal`);
        b.used[at] = 1;
        copyWords(dst, k * d, src, at * d, d);
      }
      out.set(tensor, { tensor, dim: d, ids: want, rows, root: b.rev.root, all: false });
    }
    return out;
  };
  const fwds: CanonicalForward[] = seqs.map((q) => canonicalForward(g, 0, q.input, q.layers.map((l) => ({ op: l.op, stages: l.stages, blocks: p.blocks })), (li, _ev, need) => reveal(li, need), true, prover?.native));
  for (const b of blocks.values()) {
    const at = b.used.indexOf(0);
    if (at >= 0) fail('BLOCK_IDS', `the block of tensor ${b.block.tensor} reveals row ${b.block.ids[at]}, which the step does not read`);
  }

  // The loss (the mean over every row of every sequence) and its gradient, then each sequence's backward into one set of accumulators.
  const cols = fwds[0]!.cols;
  for (const [s, q] of seqs.entries()) {
    const Bq = rowsOf(q);
    if (q.targets.kind === 'classes') {
      if (t.loss !== 'cross-entropy') fail('SHAPE', `the training rule's loss is ${t.loss}; the proof gives class ids`);
      if (q.targets.ids.length !== Bq) fail('SHAPE', `${q.targets.ids.length} targets for ${seqs.length > 1 ? `sequence ${s}'s` : 'a batch of'} ${Bq}${seqs.length > 1 ? ' rows' : ''}`);
      for (const c of q.targets.ids) if (c >= cols) fail('SHAPE', `target class ${c} of ${cols}`);
    } else {
      if (t.loss !== 'mse') fail('SHAPE', `the training rule's loss is ${t.loss}; the proof gives target values`);
      if (q.targets.data.length !== Bq * cols) fail('SHAPE', `${q.targets.data.length} target values for an output of ${Bq} x ${cols}`);
    }
  }
  const y = seqs.length === 1 ? fwds[0]!.output : concat(fwds.map((x) => x.output), (n) => new Float32Array(n));
  const targets: StepTargets = seqs.length === 1 ? p.targets : p.targets.kind === 'classes' ? { kind: 'classes', ids: concat(seqs.map((q) => (q.targets as { ids: Uint32Array }).ids), (n) => new Uint32Array(n)) } : { kind: 'values', data: concat(seqs.map((q) => (q.targets as { data: Float32Array }).data), (n) => new Float32Array(n)) };
  const loss = closs(t.loss, y, B, cols, targets);
  const acc = new GradientAccumulator(g);
  let off = 0;
  for (const fwd of fwds) {
    const n = fwd.output.length;
    canonicalBackwardInto(acc, g, fwd, seqs.length === 1 ? loss.grad : loss.grad.subarray(off, off + n), prover?.native);
    off += n;
  }
  const back = { tensors: acc.result() };

  // The rows written: every row of a trained tensor the backward touched (its gradient may
  // be 0), each with its optimizer state, one state block per such tensor (ascending).
  const touched = back.tensors.filter((x) => trained.has(x.tensor));
  const written = touched.map((x) => blocks.get(x.tensor)!.block);
  const grads = touched.map((x) => x.grads);
  let nextState = 0;
  const states = touched.map((x) => {
    const e = trained.get(x.tensor)!, n = g.tensors[x.tensor]!.n, d = g.tensors[x.tensor]!.dim;
    let s: StateBlock;
    if (stateOf) s = stateOf(x.tensor, x.ids);
    else {
      s = p.states[nextState++] ?? fail('BLOCK_IDS', `the step writes rows of tensor ${x.tensor}; the proof carries no state block for them`);
      if (s.tensor !== x.tensor) fail('BLOCK_IDS', `a state block of tensor ${s.tensor} where the step writes tensor ${x.tensor}`);
      const same = s.all ? x.ids.length === n : s.ids.length === x.ids.length && s.ids.every((id, k) => id === x.ids[k]);
      if (!same) fail('BLOCK_IDS', `the state block of tensor ${x.tensor} does not cover exactly the ${x.ids.length} rows the step writes`);
    }
    // The state rows against the state root (not for the prover's own state tree, which gave them).
    // Held and delta rows come from the cache first (the prover's block has every leaf).
    if (!prover) {
      const leaves = resolveStateLeaves(s, cache, budget);
      if (leaves !== s.leaves) s = { tensor: s.tensor, dim: s.dim, all: s.all, ids: s.ids, leaves, hashes: s.hashes };
      let root: Uint8Array;
      try {
        root = s.all ? (s.hashes.length === 0 ? rootOfLeaves(h, s.leaves, n) : fail('PROOF_LENGTH', `an all-rows state block of tensor ${s.tensor} carries hashes`)) : multiproofRoot(h, n, x.ids, s.leaves, s.hashes);
      } catch (err) {
        if (err instanceof ProofError) throw err;
        throw new ProofError('PROOF_LENGTH', `the state block of tensor ${s.tensor}: ${(err as Error).message}`);
      }
      if (!bytesEqual(root, e.stateRoot)) fail('ROOT_MISMATCH', `the state rows of tensor ${s.tensor} are not the ones its state root commits`);
    }
    return { block: s, state: readStateLeaves(d, s.leaves, x.ids.length, e.logDecay) };
  });
  if (!stateOf && nextState !== p.states.length) fail('BLOCK_IDS', `the proof carries ${p.states.length} state blocks; the step writes ${nextState} trained tensors`);
  const clip = cclip(grads, t.clipNorm);

  // The optimizer, with this step's learning rate; every trained tensor's decay log advances.
  const lr = cstepLr(t, t.step);
  const params = { ...t.optimizer, lr };
  const f = Math.fround;
  const writes: StepWrite[] = [];
  const newTrained = t.tensors.map((e) => ({ ...e, logDecay: f(params.weightDecay) > 0 ? e.logDecay + clog1pNeg(-f(lr) * f(params.weightDecay)) : e.logDecay }));
  if (newTrained.some((e) => !Number.isFinite(e.logDecay))) fail('UPDATE_MISMATCH', 'the step gives a non-finite decay log; the optimizer would have refused it');
  const roots = g.tensors.map((x) => x.root);
  const record: ResolvedBlock[] = [];
  const stateRecord: ResolvedStates[] = [];
  // First every check of the optimizer's result, then the new roots (a prover's `apply` writes only a step that passed).
  const stepped = touched.map((x, i) => {
    const b = written[i]!, e = trained.get(b.tensor)!, d = b.dim;
    const st = states[i]!;
    const ids = x.ids;
    for (let r = 0; r < st.state.steps.length; r++) if (st.state.steps[r] === 0xffffffff) fail('UPDATE_MISMATCH', `row ${ids[r]} of tensor ${b.tensor}: its counter is full`);
    const rev = blocks.get(b.tensor)!.rev;
    // The written rows' old values, and where each sits in the block.
    const at = new Int32Array(ids.length);
    const old = new Float32Array(ids.length * d), oldW = words(old), revW = words(rev.rows);
    for (let k = 0; k < ids.length; k++) {
      const pos = b.all ? ids[k]! : sortedIndexOf(b.ids, ids[k]!);
      at[k] = pos;
      copyWords(oldW, k * d, revW, pos * d, d);
    }
    const out = (prover?.native?.optimizerStep ?? coptimizerStep)(params, t.step, e.logDecay, d, old, grads[i]!, st.state);
    for (let k = 0; k < out.rows.length; k++) if (!Number.isFinite(out.rows[k]!)) fail('UPDATE_MISMATCH', `the step gives a non-finite value in tensor ${b.tensor}; the optimizer would have refused it`);
    for (const a of [out.state.m, out.state.v]) for (let k = 0; k < a.length; k++) if (!Number.isFinite(a[k]!)) fail('UPDATE_MISMATCH', `the step gives a non-finite optimizer state in tensor ${b.tensor}`);
    return { at, out };
  });
  touched.forEach((x, i) => {
    const b = written[i]!, d = b.dim, n = g.tensors[b.tensor]!.n;
    const st = states[i]!;
    const ids = x.ids;
    const { at, out } = stepped[i]!;
    const rev = blocks.get(b.tensor)!.rev;
    // The block's rows after the step (the unwritten ones unchanged) give the new root with the block's siblings.
    const after = rev.rows.slice(), afterW = words(after), outW = words(out.rows);
    for (let k = 0; k < ids.length; k++) copyWords(afterW, at[k]! * d, outW, k * d, d);
    const leaves = stateLeaves(d, out.state, ids.length);
    let root: Uint8Array, stateRoot: Uint8Array;
    if (prover) ({ root, stateRoot } = prover.apply({ tensor: b.tensor, ids, rows: out.rows, state: out.state, leaves }));
    else {
      root = b.all ? rootOf(h, after, d) : multiproofRoot(h, n, b.ids, f32le(after), b.hashes);
      stateRoot = st.block.all ? rootOfLeaves(h, leaves, n) : multiproofRoot(h, n, ids, leaves, st.block.hashes);
    }
    roots[b.tensor] = root;
    newTrained.find((y) => y.tensor === b.tensor)!.stateRoot = stateRoot;
    writes.push({ tensor: b.tensor, all: st.block.all, ids, rows: out.rows, state: out.state, grads: grads[i]!, leaves, root, stateRoot });
    record.push({ tensor: b.tensor, dim: d, ids: rev.ids, rows: after, root, all: b.all });
    stateRecord.push({ tensor: b.tensor, dim: d, ids, leaves, root: stateRoot });
  });
  const manifest: GhostManifest = {
    ...g,
    tensors: g.tensors.map((x, i) => (roots[i] === x.root ? x : { ...x, root: roots[i]! })),
    training: { ...t, step: t.step + 1, tensors: newTrained },
  };
  // Frozen tensors' rows and trained tensors' rows no layer's backward touched: unchanged (at the new root for the latter).
  for (const b of blocks.values()) {
    if (!record.some((r) => r.tensor === b.block.tensor)) record.push(trained.has(b.block.tensor) ? { ...b.rev, root: roots[b.block.tensor]! } : b.rev);
  }
  return { manifest, output: y, rows: B, cols, loss: loss.value, lr, gradNorm: clip.norm, clipScale: clip.scale, writes, record, stateRecord };
}

export interface VerifiedStep {
  /** The Ghost file after the step: what the next proof (forward or step) must name. */
  ghost: PinnedGhost;
  /** The step's number (0-based). */
  step: number;
  /** The model's output on the batch before the step, the loss, the learning rate, the gradient norm and the clipping factor. */
  output: Float32Array;
  loss: number;
  lr: number;
  gradNorm: number;
  clipScale: number;
  /** Per trained tensor written: its ids and their new rows (as the verifier computed them). */
  writes: { tensor: number; ids: Uint32Array; rows: Float32Array }[];
  cost: VerifyCost;
}

/**
 * Verifies a step proof against the pinned Ghost file (which must commit a training
 * rule): recomputes the whole step and accepts only when the Ghost file it gives has the
 * proof's claimed digest (ProofError UPDATE_MISMATCH otherwise). Returns the Ghost file
 * after the step; with a cache, records the written rows at their new roots, their new
 * optimizer state, and the frozen rows read.
 */
export async function verifyTrainStep(ghost: PinnedGhost, proof: Uint8Array | StepProof, options: VerifyOptions = {}): Promise<VerifiedStep> {
  const h = await loadHasher();
  const budget = new VerifyBudget(options.limits);
  const p = openProof(ghost, proof, 'step', budget);
  const r = computeStep(h, ghost, p, options.cache, budget);
  const bytes = encodeGhost(r.manifest);
  if (!bytesEqual(h.hash(bytes), p.newGhost)) fail('UPDATE_MISMATCH', 'the Ghost file the step gives differs from the one the proof claims');
  recordStep(options.cache, r);
  return {
    ghost: await pinGhost(bytes),
    step: p.step,
    output: r.output,
    loss: r.loss,
    lr: r.lr,
    gradNorm: r.gradNorm,
    clipScale: r.clipScale,
    writes: r.writes.map((w) => ({ tensor: w.tensor, ids: w.ids, rows: w.rows })),
    cost: { cells: budget.cells, work: budget.work },
  };
}

/**
 * What both caches record after a step: the rows read (the written ones at their new
 * roots), then the written rows' new optimizer state at the new state roots. Called only
 * once the step verified (a refused step leaves the cache as it was).
 */
export function recordStep(cache: PatternCache | undefined, r: StepOutcome): void {
  if (!cache) return;
  cache.record(r.record);
  cache.recordStates(r.stateRecord);
}
