/**
 * The prover's side of step proofs' optimizer state (docs/step-proofs.md): per trained
 * tensor, the state rows (m, v, row counter, decay mark) of the rows ever written, as
 * their leaf bytes, under a sparse Merkle tree whose untouched rows are the zero state.
 * Its root is the one the Ghost file commits; it gives the compact multiproofs step
 * proofs carry (docs/hash-scheme.md). Memory: one leaf and about log2(N) node hashes per
 * row ever written.
 */
import type { CanonicalRowState } from '../../verify/canonical.js';
import type { MerkleHasher } from '../../verify/merkle.js';
import { readStateLeaves, stateDim, stateLeaves, stateRowBytes } from '../../verify/training.js';

export class StateTree {
  readonly n: number;
  readonly dim: number;
  readonly #h: MerkleHasher;
  readonly #rowBytes: number;
  readonly #zeroLeaf: Uint8Array;
  /** widths[L]: nodes at level L (widths[0] = n); the top is the last level. */
  readonly #widths: number[] = [];
  /** Hashes of a full subtree of zero rows at level L, and of the last (maybe partial) node of level L. */
  readonly #full: Uint8Array[] = [];
  readonly #edge: Uint8Array[] = [];
  /** Nodes that differ from the zero tree's, per level (level 0: leaf hashes). */
  readonly #nodes: Map<number, Uint8Array>[] = [];
  readonly #leaves = new Map<number, Uint8Array>();

  constructor(h: MerkleHasher, n: number, dim: number) {
    this.#h = h;
    this.n = n;
    this.dim = dim;
    this.#rowBytes = stateRowBytes(dim);
    this.#zeroLeaf = new Uint8Array(this.#rowBytes);
    let full = h.hashLeaf(this.#zeroLeaf), edge = full;
    for (let width = n; ; width = Math.ceil(width / 2)) {
      this.#widths.push(width);
      this.#full.push(full);
      this.#edge.push(edge);
      this.#nodes.push(new Map());
      if (width === 1) break;
      edge = width % 2 === 0 ? h.hashNode(full, edge) : edge;
      full = h.hashNode(full, full);
    }
  }

  #node(level: number, i: number): Uint8Array {
    return this.#nodes[level]!.get(i) ?? (i === this.#widths[level]! - 1 ? this.#edge[level]! : this.#full[level]!);
  }

  /** The committed root (hash scheme v1, binding N and 2 dim + 3). */
  root(): Uint8Array {
    return this.#h.commitRoot(this.n, stateDim(this.dim), this.#node(this.#widths.length - 1, 0));
  }

  /** Leaf bytes of rows `ids` (sorted), concatenated. */
  leaves(ids: Uint32Array): Uint8Array {
    const rb = this.#rowBytes;
    const out = new Uint8Array(ids.length * rb);
    for (let k = 0; k < ids.length; k++) {
      const l = this.#leaves.get(ids[k]!);
      if (l) out.set(l, k * rb);
    }
    return out;
  }

  /** The state rows `ids` (sorted). */
  state(ids: Uint32Array): CanonicalRowState {
    return readStateLeaves(this.dim, this.leaves(ids), ids.length, -Infinity);
  }

  /**
   * Sets rows `ids` (sorted, unique) to `state` and updates the tree: O(rows log N)
   * hashes. `bytes`: the state's leaf bytes when the caller has them (a step computes
   * them for its state root), else they are encoded here.
   */
  set(ids: Uint32Array, state: CanonicalRowState, bytes: Uint8Array = stateLeaves(this.dim, state, ids.length)): void {
    this.setLeaves(ids, bytes);
  }

  /** Sets rows `ids` (sorted, unique) to these leaf bytes (ids.length rows; a step proof's old state rows, to undo a step). */
  setLeaves(ids: Uint32Array, bytes: Uint8Array): void {
    const rb = this.#rowBytes;
    if (bytes.length !== ids.length * rb) throw new RangeError(`internal: ${bytes.length} bytes of state leaves for ${ids.length} rows of ${rb}`);
    let cur: number[] = [];
    // A row written before keeps its leaf's buffer (no one else holds it: leaves() and
    // entries() copy); a new row gets its own copy (not a view of `bytes`, which would
    // keep a whole step's leaves alive for one row).
    for (let k = 0; k < ids.length; k++) {
      const id = ids[k]!, src = bytes.subarray(k * rb, (k + 1) * rb);
      let leaf = this.#leaves.get(id);
      if (leaf) leaf.set(src);
      else this.#leaves.set(id, (leaf = src.slice()));
      this.#nodes[0]!.set(id, this.#h.hashLeaf(leaf));
      cur.push(id);
    }
    for (let level = 0; level + 1 < this.#widths.length; level++) {
      const width = this.#widths[level]!;
      const next: number[] = [];
      for (const i of cur) {
        const p = Math.floor(i / 2);
        if (next.length > 0 && next[next.length - 1] === p) continue;
        next.push(p);
        const right = 2 * p + 1;
        this.#nodes[level + 1]!.set(p, right < width ? this.#h.hashNode(this.#node(level, 2 * p), this.#node(level, right)) : this.#node(level, 2 * p));
      }
      cur = next;
    }
  }

  /** The compact multiproof of rows `ids` (sorted, unique): the siblings multiproofRoot consumes, in its order. */
  prove(ids: Uint32Array): Uint8Array {
    const out: Uint8Array[] = [];
    let cur = Array.from(ids);
    for (let level = 0; level + 1 < this.#widths.length; level++) {
      const width = this.#widths[level]!;
      const next: number[] = [];
      for (let t = 0; t < cur.length; t++) {
        const i = cur[t]!;
        const s = i % 2 === 0 ? i + 1 : i - 1;
        if (s < width) {
          if (t + 1 < cur.length && cur[t + 1] === s) t++;
          else out.push(this.#node(level, s));
        }
        const p = Math.floor(i / 2);
        if (next.length === 0 || next[next.length - 1] !== p) next.push(p);
      }
      cur = next;
    }
    const bytes = new Uint8Array(out.length * 32);
    out.forEach((x, k) => bytes.set(x, 32 * k));
    return bytes;
  }

  /** The rows ever written (ids ascending) and their leaf bytes, concatenated. */
  entries(): { ids: Uint32Array; leaves: Uint8Array } {
    const ids = Uint32Array.from(this.#leaves.keys()).sort();
    return { ids, leaves: this.leaves(ids) };
  }

  /** Rows ever written (their state may since have returned to anything). */
  get written(): number {
    return this.#leaves.size;
  }
}
