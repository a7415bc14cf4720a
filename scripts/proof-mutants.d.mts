// Types of scripts/proof-mutants.mjs (used by test/proof-fuzz.test.ts; scripts/fuzz-proofs.mjs passes dist/).
import type { Arbitrary } from 'fast-check';
import type * as Lib from '../lib/index.js';
import type { ForwardProof, GhostProof, Model, PatternCache, PinnedGhost, VerifierLimits } from '../lib/index.js';

/** The library under test (the module namespace of lib/index.js or dist/index.js). */
export type ProofLib = Pick<
  typeof Lib,
  | 'Embedding'
  | 'FormatError'
  | 'HopfieldLookup'
  | 'Model'
  | 'PatternCache'
  | 'ProductKeyIndex'
  | 'ProofError'
  | 'SparseAdam'
  | 'SparseSGD'
  | 'SparseTensor'
  | 'decodeProof'
  | 'encodeProof'
  | 'verifyForward'
  | 'verifyUpdate'
>;

export interface Context {
  kind: 'forward' | 'update';
  ghost: PinnedGhost;
  /** The verifier cache before this proof (cloned for every check), or none. */
  cache?: PatternCache;
  /** Forward proofs: the model, to re-prove a mutated input (the oracle for an accepted input change). */
  prover?: Model;
  /** The honest proof's exact cost as limits (set by buildPool; check(..., tight) verifies under them). */
  limits?: Partial<VerifierLimits>;
}

export interface Honest {
  name: string;
  bytes: Uint8Array;
  ctx: Context;
  /** Forward: the proved output. */
  output?: Float32Array;
  /** Update: the digest of the Ghost file after the step. */
  next?: Uint8Array;
}

export interface FieldOffset {
  at: number;
  size: 1 | 4;
}

export type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'overwrite'; at: number; data: Uint8Array }
  | { op: 'truncate'; len: number }
  | { op: 'extend'; data: Uint8Array }
  | { op: 'splice'; donor: number; from: number; len: number; at: number; del: number }
  | { op: 'aligned'; donor: number; from: number; len: number }
  | { op: 'duplicate'; from: number; len: number; at: number }
  | { op: 'length'; field: number; value: number }
  | { op: 'replace'; donor: number }
  | { op: 'bomb'; kind: 'held-all' | 'repeat' | 'long'; size: number }
  | { op: 'statekind'; row: number; kind: number };

/** A refusal (the reason of the FormatError or ProofError), or how the mutant was accepted (`honest`: the pool index, -1 for reproved). */
export type Outcome = { accepted: false; reason: string } | { accepted: true; how: 'identical' | 'equivalent' | 'reproved'; honest: number };

export const HANG_MS: number;
export const HUGE: number[];
export const mutationArb: Arbitrary<Mutation>;

export function hex(b: Uint8Array): string;
export function same(a: Uint8Array, b: Uint8Array): boolean;
export function f32bytes(a: Float32Array): Uint8Array;
export function concat(...parts: Uint8Array[]): Uint8Array;

export function buildPool(lib: ProofLib): Promise<Honest[]>;
export function fieldOffsets(p: GhostProof, total: number): FieldOffset[];
export function mutate(base: Uint8Array, muts: readonly Mutation[], pool: readonly Honest[], fields: readonly FieldOffset[], lib?: ProofLib): Uint8Array;
export function sameClaim(a: ForwardProof, b: ForwardProof): boolean;
/** Throws an Error with `tag` 'forgery', 'crash' or 'hang' on a finding. */
export function check(lib: ProofLib, ctx: Context, bytes: Uint8Array, pool: readonly Honest[], tight?: boolean): Promise<Outcome>;
