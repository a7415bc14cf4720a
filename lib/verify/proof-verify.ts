/**
 * Verifying Ghost proofs against a pinned Ghost file (docs/proof-format.md). The
 * verifier trusts only the Ghost file: it checks every revealed pattern against the
 * tensor roots there, recomputes each layer's output itself with the canonical
 * arithmetic (lib/verify/canonical.ts), re-derives product-key selections from the sub-key
 * tables, and accepts only when its result equals the claim bit for bit. Loads no
 * addon: runs in a browser too.
 */
import { bytesEqual } from '../shared/bytes.js';
import { InvalidArgumentError, ProofError } from '../shared/errors.js';
import { canonicalBackward, canonicalForward, type CanonicalBackward, type CanonicalForward } from './backward.js';
import { coptimizerStep } from './canonical.js';
import { decodeGhost, encodeGhost, layerInputs, spanSource, withRoot, type GhostManifest } from './ghost-file.js';
import { hopfieldRevealsKeys, planHopfieldSelection, type GhostHopfieldLayer } from './kinds/hopfield.js';
import { specOf } from './kinds/index.js';
import { fail, type Revealed } from './layer-spec.js';
import { checkMultiproof, loadHasher, type MerkleHasher } from './merkle.js';
import {
  HASH_CALL_WORK,
  HASH_WORK,
  merkleCalls,
  RowKind,
  VerifyBudget,
  applyDelta,
  decodeProof,
  encodeProof,
  positionsToProve,
  proofName,
  type ForwardProof,
  type GhostProof,
  type LayerEvidence,
  type PatternBlock,
  type PatternCache,
  type ProofInput,
  type UpdateProof,
  type VerifierLimits,
} from './proof-format.js';

export { attentionCanonical } from './kinds/attention.js';

/** A Ghost file the verifier pins: its manifest, canonical bytes and digest. */
export interface PinnedGhost {
  readonly manifest: GhostManifest;
  readonly bytes: Uint8Array;
  readonly digest: Uint8Array;
}

/** Pins a Ghost file (bytes are decoded and checked; a manifest is encoded). */
export async function pinGhost(ghost: Uint8Array | GhostManifest): Promise<PinnedGhost> {
  const manifest = ghost instanceof Uint8Array ? decodeGhost(ghost) : ghost;
  const bytes = ghost instanceof Uint8Array ? ghost.slice() : encodeGhost(ghost);
  return { manifest, bytes, digest: (await loadHasher()).hash(bytes) };
}

export interface VerifyOptions {
  /**
   * Patterns this verifier holds from earlier proofs. Rows sent by id or as deltas
   * are looked up here; after a proof verifies, its rows are recorded. A rejected
   * proof changes nothing (the prover's mirror has then diverged: clear both).
   */
  cache?: PatternCache;
  /**
   * What this verifier spends on one proof at most (default DEFAULT_VERIFIER_LIMITS):
   * memory and work are estimated from the proof's headers and the pinned Ghost file
   * and refused past these (ProofError BUDGET) before the allocation or the work.
   */
  limits?: Partial<VerifierLimits>;
  /**
   * Refuse (ProofError SELECTION_UNPROVEN) a proof in which an exact or HNSW Hopfield
   * layer's selection is the prover's word: one whose proof does not reveal the layer's
   * keys whole (held keys, docs/proof-format.md section 5). Every other kind's
   * selection is re-derived anyway. verifyForward only; default false.
   */
  requireSelection?: boolean;
}

/** What checking a proof was charged (VerifierLimits): cells of memory and estimated work units. */
export interface VerifyCost {
  cells: number;
  work: number;
}

export interface VerifiedForward {
  /** The verified output of the last proved layer (rows x cols). */
  output: Float32Array;
  rows: number;
  cols: number;
  /** What the check was charged against the limits. */
  cost: VerifyCost;
  /** The proof's input (ids, or rows of floats): what the output is the model's answer to. */
  input: ProofInput;
  /** The layers proved: firstLayer .. firstLayer + layers - 1 (the whole model when 0 and its layer count). */
  firstLayer: number;
  layers: number;
}

/**
 * The proof to check: bytes are decoded; an object goes through its encoding and back,
 * so every length in it is checked exactly as for bytes off the wire. Decoding checks
 * the blocks against the pinned Ghost file and charges the budget as it reads.
 */
function canonicalProof(proof: Uint8Array | GhostProof, ghost: PinnedGhost, kind: GhostProof['kind'], budget: VerifyBudget): GhostProof {
  const options = { ghost, kind, budget };
  if (proof instanceof Uint8Array) return decodeProof(proof, options);
  if (!proof || typeof proof !== 'object') throw new InvalidArgumentError('proof must be bytes or a decoded proof');
  let bytes: Uint8Array;
  try {
    bytes = encodeProof(proof);
  } catch (err) {
    throw new InvalidArgumentError(`the proof object does not encode: ${(err as Error).message}`, { cause: err });
  }
  return decodeProof(bytes, options);
}

/** The proof, checked to be of `kind` and for the pinned Ghost file. */
export function openProof<K extends GhostProof['kind']>(ghost: PinnedGhost, proof: Uint8Array | GhostProof, kind: K, budget: VerifyBudget): Extract<GhostProof, { kind: K }> {
  const p = canonicalProof(proof, ghost, kind, budget);
  if (p.kind !== kind) fail('WRONG_KIND', `${proofName(p.kind)} where ${proofName(kind)} is expected`);
  if (!bytesEqual(p.ghost, ghost.digest)) fail('GHOST_MISMATCH', 'the proof is for another Ghost file');
  return p as Extract<GhostProof, { kind: K }>;
}

/**
 * A block's rows with the held and delta rows taken from the cache, checked against the
 * Ghost file's shape (tensor, dim, all rows = N, every held row present) but not against
 * its root: resolveBlock adds the multiproof check; a prover's run of a step
 * (lib/verify/step.ts) reads its own blocks with this alone.
 */
export function resolveRows(g: GhostManifest, b: PatternBlock, cache: PatternCache | undefined): Revealed {
  const t = g.tensors[b.tensor];
  if (!t) fail('LAYER_MISMATCH', `a block names tensor ${b.tensor}; the Ghost file has ${g.tensors.length}`);
  if (b.dim !== t.dim) fail('SHAPE', `a block of tensor ${t.name} has dim ${b.dim}; the Ghost file says ${t.dim}`);
  if (b.heldTable === true) {
    // A held table: the cache's copy of every row, held at the Ghost file's root (nothing copied, nothing hashed).
    const w = cache?.getTable(b.tensor);
    if (w === undefined) fail('NOT_HELD', `tensor ${t.name} was sent as a held table, but this verifier does not hold it whole`);
    if (w.n !== t.n || w.dim !== t.dim || !bytesEqual(w.root, t.root)) fail('NOT_HELD', `tensor ${t.name} was sent as a held table, but this verifier holds it whole at another root`);
    return { tensor: b.tensor, dim: b.dim, ids: w.ids, rows: w.rows, root: t.root, all: true };
  }
  if (b.all && b.ids.length !== t.n) fail('BLOCK_IDS', `an all-rows block of ${t.name} has ${b.ids.length} rows; N = ${t.n}`);
  // Every held row must be there before anything is allocated for the block.
  for (let i = 0; i < b.ids.length; i++) {
    if (b.kinds[i] !== RowKind.Full && cache?.get(b.tensor, b.ids[i]!)?.row.length !== b.dim) {
      fail('NOT_HELD', `pattern ${b.ids[i]} of ${t.name} was sent as ${b.kinds[i] === RowKind.Held ? 'an id' : 'a delta'}, but this verifier does not hold it`);
    }
  }
  const rows = new Float32Array(b.ids.length * b.dim);
  for (let i = 0; i < b.ids.length; i++) {
    const p = b.payload[i];
    const held = b.kinds[i] === RowKind.Full ? undefined : cache!.get(b.tensor, b.ids[i]!)!.row;
    const row = b.kinds[i] === RowKind.Full ? (p as Float32Array) : b.kinds[i] === RowKind.Held ? held! : applyDelta(held!, p as Uint8Array);
    rows.set(row, i * b.dim);
  }
  return { tensor: b.tensor, dim: b.dim, ids: b.ids, rows, root: t.root, all: b.all };
}

/**
 * Resolves a block's rows (cache for held and delta rows) and checks them against the
 * tensor's root: the multiproof covers every row (`everyPath`), or every row but those
 * held verified against this same root.
 */
export function resolveBlock(h: MerkleHasher, g: GhostManifest, b: PatternBlock, cache: PatternCache | undefined, everyPath = false): Revealed {
  const r = resolveRows(g, b, cache);
  const t = g.tensors[b.tensor]!, rows = r.rows;
  if (b.heldTable === true) {
    // Held whole at this root (resolveRows checked it): membership was shown when it was recorded.
    if (b.hashes.length !== 0) fail('PROOF_LENGTH', `the held table ${t.name} carries hashes`);
  } else if (b.all) {
    // Every row: the tree is rebuilt whole (no hashes), unless all are held at this root.
    if (b.hashes.length !== 0) fail('PROOF_LENGTH', `an all-rows block of ${t.name} carries hashes`);
    if (positionsToProve(b.tensor, b.ids, b.kinds, t.root, cache).length > 0) checkMultiproof(h, t.root, t.n, b.ids, new Uint8Array(rows.buffer), b.hashes);
  } else {
    const pos = everyPath ? Array.from(b.ids, (_, i) => i) : positionsToProve(b.tensor, b.ids, b.kinds, t.root, cache);
    if (pos.length === 0) {
      if (b.hashes.length !== 0) fail('PROOF_LENGTH', `every row of the ${t.name} block is held at this root; it must carry no hashes`);
    } else {
      const sub = new Float32Array(pos.length * b.dim);
      pos.forEach((i, j) => sub.set(rows.subarray(i * b.dim, (i + 1) * b.dim), j * b.dim));
      checkMultiproof(h, t.root, t.n, Uint32Array.from(pos, (i) => b.ids[i]!), new Uint8Array(sub.buffer), b.hashes);
    }
  }
  return r;
}

/** Checks that the layer's blocks reveal exactly `need` (tensor -> ids or 'all') and resolves them. */
function resolveLayer(
  h: MerkleHasher,
  g: GhostManifest,
  ev: LayerEvidence,
  need: Map<number, Uint32Array | 'all'>,
  cache: PatternCache | undefined,
  li: number,
): Map<number, Revealed> {
  if (ev.blocks.length !== need.size) fail('BLOCK_IDS', `layer ${li} carries ${ev.blocks.length} blocks; its computation reads ${need.size} tensors`);
  const out = new Map<number, Revealed>();
  for (const b of ev.blocks) {
    const want = need.get(b.tensor);
    if (want === undefined || out.has(b.tensor)) fail('BLOCK_IDS', `layer ${li}: a block of tensor ${b.tensor} is not expected here`);
    if (want === 'all') {
      if (!b.all) fail('BLOCK_IDS', `layer ${li}: tensor ${b.tensor} must be revealed whole`);
    } else if (b.all || b.ids.length !== want.length || b.ids.some((id, i) => id !== want[i])) {
      fail('BLOCK_IDS', `layer ${li}: the block of tensor ${b.tensor} does not reveal exactly the ${want.length} patterns the layer reads`);
    }
    out.set(b.tensor, resolveBlock(h, g, b, cache));
  }
  return out;
}

/**
 * Charges what verifying a forward proof will hold and do, from its headers and the
 * pinned Ghost file, before any block is hashed or any layer computed: the blocks'
 * hashing, each layer's activations and arithmetic (attention: O(n^2 D) for the
 * selection), and refuses a sequence over maxSequence or a claimed output of another
 * shape than the layers give.
 */
function planForward(g: GhostManifest, p: ForwardProof, budget: VerifyBudget): void {
  const B = p.input.kind === 'ids' ? p.input.ids.length : p.input.rows;
  let width = p.input.kind === 'ids' ? 0 : p.input.cols;
  for (let i = 0; i < p.layers.length; i++) {
    const li = p.firstLayer + i;
    const l = g.layers[li]!;
    const ev = p.layers[i]!;
    if (ev.op !== l.op) fail('LAYER_MISMATCH', `layer ${li} is ${l.op}; the proof says ${ev.op}`);
    for (const j of layerInputs(g, li)) {
      if (spanSource(p.firstLayer, j) === null) fail('LAYER_MISMATCH', `layer ${li} reads ${j === -1 ? "the model's input" : `layer ${j}`}, outside the proved layers ${p.firstLayer}..${p.firstLayer + p.layers.length - 1}`);
    }
    for (const b of ev.blocks) {
      const n = g.tensors[b.tensor]?.n ?? b.ids.length;
      budget.workFor(b.ids.length * b.dim * HASH_WORK + merkleCalls(b.ids.length, n) * HASH_CALL_WORK, `checking layer ${li}'s block of ${b.ids.length} rows`);
    }
    const spec = specOf(l);
    spec.plan(l, g, B, budget, li);
    if (l.op === 'hopfield') planHopfieldSelection(l as GhostHopfieldLayer, g, ev, B, budget, li);
    width = spec.outWidth(l, g);
  }
  const o = p.output;
  if (o.rows !== B || o.cols !== width) fail('SHAPE', `the claimed output is ${o.rows} x ${o.cols}; the layers give ${B} x ${width}`);
}

/**
 * Verifies a forward proof (bytes or decoded) against a pinned Ghost file. Returns the
 * verified output; throws ProofError with a `reason` (or FormatError for bytes that do
 * not decode) otherwise.
 */
export async function verifyForward(ghost: PinnedGhost, proof: Uint8Array | ForwardProof, options: VerifyOptions = {}): Promise<VerifiedForward> {
  const { p, fwd, resolved, budget } = await checkForward(ghost, proof, options, false);
  options.cache?.record(resolved);
  return { output: fwd.output, rows: fwd.rows, cols: fwd.cols, cost: { cells: budget.cells, work: budget.work }, input: p.input, firstLayer: p.firstLayer, layers: p.layers.length };
}

/**
 * A forward proof checked (roots, selections, the claimed output bit for bit) with its
 * canonical forward's records (`train`: what the canonical backward needs) and the rows
 * it revealed (recorded in the cache by the caller once it accepts).
 */
async function checkForward(ghost: PinnedGhost, proof: Uint8Array | ForwardProof, options: VerifyOptions, train: boolean): Promise<{ p: ForwardProof; fwd: CanonicalForward; resolved: Revealed[]; budget: VerifyBudget }> {
  const h = await loadHasher();
  const budget = new VerifyBudget(options.limits);
  const p = openProof(ghost, proof, 'forward', budget);
  const g = ghost.manifest;
  if (p.firstLayer + p.layers.length > g.layers.length) fail('LAYER_MISMATCH', `layers ${p.firstLayer}..${p.firstLayer + p.layers.length - 1} do not exist (the model has ${g.layers.length})`);
  planForward(g, p, budget);
  if (options.requireSelection) {
    p.layers.forEach((ev, i) => {
      const l = g.layers[p.firstLayer + i]!;
      if (l.op === 'hopfield' && !hopfieldRevealsKeys(l as GhostHopfieldLayer, ev) && (l as GhostHopfieldLayer).index.kind !== 'product-keys') {
        fail('SELECTION_UNPROVEN', `layer ${p.firstLayer + i} (${(l as GhostHopfieldLayer).index.kind} index) does not reveal its keys whole, so its selection cannot be re-derived (prove with revealKeys)`);
      }
    });
  }
  const resolved: Revealed[] = [];
  const fwd = canonicalForward(g, p.firstLayer, p.input, p.layers, (li, ev, need) => {
    const rev = resolveLayer(h, g, ev, need, options.cache, li);
    resolved.push(...rev.values());
    return rev;
  }, train);
  const y = fwd.output, o = p.output;
  if (o.rows !== fwd.rows || o.cols !== fwd.cols || o.data.length !== y.length) fail('SHAPE', `the claimed output is ${o.rows} x ${o.cols}; the layers give ${fwd.rows} x ${fwd.cols}`);
  const yb = new Uint8Array(y.buffer, y.byteOffset, y.byteLength), ob = new Uint8Array(o.data.buffer, o.data.byteOffset, o.data.byteLength);
  if (!bytesEqual(yb, ob)) {
    let at = 0;
    while (Object.is(y[at], o.data[at])) at++;
    fail('OUTPUT_MISMATCH', `output[${at}]: the verifier computes ${y[at]}, the proof claims ${o.data[at]}`);
  }
  return { p, fwd, resolved, budget };
}

export interface VerifiedUpdate {
  /** The Ghost file after the step (the tensor's new root). */
  ghost: PinnedGhost;
  tensor: number;
  ids: Uint32Array;
  /** The touched rows after the step, as the verifier computed them. */
  rows: Float32Array;
  /** What the check was charged against the limits. */
  cost: VerifyCost;
}

/**
 * Verifies an update proof: the old rows against the pinned root, then the optimizer
 * step re-run canonically from the revealed gradient and state, then the new root
 * computed from the new rows and the same multiproof (the siblings did not change).
 * Returns the Ghost file after the step.
 */
export async function verifyUpdate(ghost: PinnedGhost, proof: Uint8Array | UpdateProof, options: VerifyOptions = {}): Promise<VerifiedUpdate> {
  const h = await loadHasher();
  const budget = new VerifyBudget(options.limits);
  const p = openProof(ghost, proof, 'update', budget);
  const g = ghost.manifest;
  // A model whose Ghost file commits a training rule moves only by step proofs: an update
  // proof (a revealed gradient) would change a root without its optimizer state or step.
  if (g.training) fail('WRONG_KIND', 'this Ghost file commits a training rule: it moves only by step proofs (verifyTrainStep), not update proofs');
  const t = g.tensors[p.tensor];
  if (!t) fail('LAYER_MISMATCH', `tensor ${p.tensor} does not exist`);
  if (p.block.tensor !== p.tensor) fail('LAYER_MISMATCH', `the block is of tensor ${p.block.tensor}; the proof updates tensor ${p.tensor}`);
  if (p.block.all) fail('BLOCK_IDS', 'an update block lists its ids');
  const cells = p.block.ids.length * t.dim;
  budget.cellsFor(3 * cells + 2 * p.block.ids.length, `the step's new rows and state (${p.block.ids.length} x ${t.dim})`);
  budget.workFor(2 * (cells * HASH_WORK + merkleCalls(p.block.ids.length, t.n) * HASH_CALL_WORK) + 16 * cells, `the step of ${p.block.ids.length} rows`);
  const old = resolveBlock(h, g, p.block, options.cache, true);
  const d = t.dim;
  const stepped = coptimizerStep(p.optimizer, p.globalStep, p.logDecay, d, old.rows, p.grads, p.state);
  for (let i = 0; i < stepped.rows.length; i++) {
    if (!Number.isFinite(stepped.rows[i]!)) fail('UPDATE_MISMATCH', `the step gives a non-finite value at ${i}; the optimizer would have refused it`);
  }
  // As the optimizer does: a step whose new state is not finite (v = g^2 overflowing) is refused.
  for (const [name, a] of [['m', stepped.state.m], ['v', stepped.state.v]] as const) {
    for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) fail('UPDATE_MISMATCH', `the step gives a non-finite ${name} at ${i}; the optimizer would have refused it`);
  }
  for (let i = 0; i < p.state.steps.length; i++) if (p.state.steps[i] === 0xffffffff) fail('UPDATE_MISMATCH', `row counter ${i} is full; the optimizer would have refused the step`);
  if (!Number.isFinite(stepped.logDecay)) fail('UPDATE_MISMATCH', 'the step gives a non-finite decay log; the optimizer would have refused it');
  const bytes = new Uint8Array(stepped.rows.buffer);
  // The new leaves with the old siblings must reduce to the claimed new root.
  try {
    checkMultiproof(h, p.newRoot, t.n, old.ids, bytes, p.block.hashes);
  } catch (err) {
    if (err instanceof ProofError && err.reason === 'ROOT_MISMATCH') fail('UPDATE_MISMATCH', 'the re-run step does not give the claimed new root');
    throw err;
  }
  options.cache?.record([{ tensor: p.tensor, dim: d, ids: old.ids, rows: stepped.rows, root: p.newRoot }]);
  return { ghost: await pinGhost(withRoot(g, p.tensor, p.newRoot)), tensor: p.tensor, ids: old.ids, rows: stepped.rows, cost: { cells: budget.cells, work: budget.work } };
}

/**
 * The canonical forward and backward of a forward proof's layers for `dy` (d loss / d
 * the proved output): the proof is checked as verifyForward checks it (roots, selections,
 * the output bit for bit), then lib/verify/backward.ts runs each kind's canonical
 * backward. What step proofs compute; the kinds' tests compare it with float64
 * references and finite differences. Not in the public API.
 */
export async function canonicalGradients(ghost: PinnedGhost, proof: Uint8Array | ForwardProof, dy: Float32Array, options: VerifyOptions = {}): Promise<{ forward: CanonicalForward; backward: CanonicalBackward }> {
  const { fwd } = await checkForward(ghost, proof, options, true);
  return { forward: fwd, backward: canonicalBackward(ghost.manifest, fwd, dy) };
}
