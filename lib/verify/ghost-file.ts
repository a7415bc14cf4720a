/**
 * The Ghost file: a model's public manifest (docs/proof-format.md, "Ghost file").
 * Format and hash-scheme versions, the architecture (each layer's op, dims, k,
 * beta, similarity, index kind and parameters) and each tensor's N, d, dtype and
 * Merkle root, in one canonical byte encoding, so BLAKE3 of the bytes identifies
 * the model. Loads no addon.
 */
import { ByteReader, ByteWriter, toHex } from '../shared/bytes.js';
import { FormatError, InvalidArgumentError } from '../shared/errors.js';
import { HASH_SCHEME, loadHasher } from './merkle.js';
import { CANONICAL_VERSION } from './canonical.js';
import { specByCode, specByOp, specOf, type GhostLayer } from './kinds/index.js';
import { GHOST_LIMITS, ghostBad as bad, ghostLimit as limit } from './layer-spec.js';
import { checkTraining, readTraining, writeTraining, type GhostTraining } from './training.js';

export const GHOST_FORMAT_VERSION = 1;
/** 0x89 'GHOST' CR LF: a binary file that is not text. */
export const GHOST_MAGIC = Uint8Array.from([0x89, 0x47, 0x48, 0x4f, 0x53, 0x54, 0x0d, 0x0a]);
export { GHOST_LIMITS };

export interface GhostTensor {
  /** ASCII [A-Za-z0-9._/-], 1..64 bytes, unique in the file. */
  name: string;
  dtype: 'f32';
  dim: number;
  /** Number of patterns N (1..2^32-1). */
  n: number;
  /** The Merkle root (hash scheme v1), 32 bytes. */
  root: Uint8Array;
}

export type { GhostHopfieldLayer, GhostIndex } from './kinds/hopfield.js';
export type { GhostEmbeddingLayer } from './kinds/embedding.js';
export type { GhostAttentionLayer, GhostProjection } from './kinds/attention.js';
export { attentionWidth } from './kinds/attention.js';
export type { GhostLinearLayer } from './kinds/linear.js';
export type { GhostRmsNormLayer } from './kinds/rmsnorm.js';
export type { GhostAddLayer } from './kinds/add.js';
export type { GhostGluLayer } from './kinds/glu.js';
export type { GhostPositionLayer } from './kinds/position.js';
export type { GhostMemoryLayer } from './kinds/memory.js';
export type { GhostLayer, LayerOp } from './kinds/index.js';

export interface GhostManifest {
  /** 1: the layers are a chain; 2 (GHOST_GRAPH_VERSION): a graph, with `inputs`. */
  formatVersion: number;
  hashScheme: string;
  arithmetic: number;
  tensors: GhostTensor[];
  layers: GhostLayer[];
  /**
   * Format 2 only: per layer, the layers whose outputs it takes, in order (-1: the
   * model's input), each earlier than the layer. Absent in format 1, where layer i
   * takes layer i - 1's output; a graph that is a chain is written as format 1.
   */
  inputs?: number[][];
  /**
   * Format 3 (GHOST_TRAINING_VERSION) only: the training rule step proofs follow, with
   * the step count and each trained tensor's optimizer-state root (lib/verify/training.ts).
   * A format-3 file also gives every layer's inputs, a chain's too.
   */
  training?: GhostTraining;
}

/** The format version of a Ghost file whose layers form a graph (a chain is version 1). */
export const GHOST_GRAPH_VERSION = 2;
/** The format version of a Ghost file that commits a training rule (docs/step-proofs.md). */
export const GHOST_TRAINING_VERSION = 3;
const isVersion = (v: number): boolean => v === GHOST_FORMAT_VERSION || v === GHOST_GRAPH_VERSION || v === GHOST_TRAINING_VERSION;
/** Whether a format version writes every layer's inputs. */
const hasInputs = (v: number): boolean => v === GHOST_GRAPH_VERSION || v === GHOST_TRAINING_VERSION;
/** Inputs one layer may take. */
const MAX_INPUTS = 8;

/** The layers whose outputs layer li takes (-1: the model's input). */
export function layerInputs(m: GhostManifest, li: number): readonly number[] {
  return m.inputs?.[li] ?? [li - 1];
}

/**
 * Where input j of a layer comes from in a proof of the span of layers from `first`:
 * 'span' (the span's input: layer first - 1's output, or the model's input when first is
 * 0), 'layer' (a layer inside the span), or null (a layer before the span, or the model's
 * input in a span that starts later: the span cannot be proved on its own).
 */
export function spanSource(first: number, j: number): 'span' | 'layer' | null {
  if (j === first - 1) return 'span';
  return j >= first ? 'layer' : null;
}

/** Whether per-layer inputs describe a chain (layer i takes layer i - 1 only). */
export function isChain(inputs: readonly (readonly number[])[]): boolean {
  return inputs.every((ins, i) => ins.length === 1 && ins[0] === i - 1);
}

const NAME_RE = /^[A-Za-z0-9._/-]{1,64}$/;
const te = new TextEncoder();

/** Checks what the encoding cannot: references in range, dimensions that agree, layers that chain. */
export function checkGhost(m: GhostManifest): void {
  if (!isVersion(m.formatVersion)) throw new FormatError('BAD_VERSION', `Ghost file: format version ${m.formatVersion}`);
  if (m.hashScheme !== HASH_SCHEME) throw new FormatError('BAD_VERSION', `Ghost file: hash scheme ${m.hashScheme}`);
  if (m.arithmetic !== CANONICAL_VERSION) throw new FormatError('BAD_VERSION', `Ghost file: canonical arithmetic ${m.arithmetic}`);
  limit('tensor count', m.tensors.length, 1, GHOST_LIMITS.tensors);
  limit('layer count', m.layers.length, 1, GHOST_LIMITS.layers);
  const names = new Set<string>();
  m.tensors.forEach((t, i) => {
    if (typeof t.name !== 'string' || !NAME_RE.test(t.name)) bad(`tensor ${i} has an invalid name`);
    if (names.has(t.name)) bad(`tensor name ${t.name} appears twice`);
    names.add(t.name);
    if (t.dtype !== 'f32') bad(`tensor ${t.name}: dtype must be f32`);
    limit(`tensor ${t.name} dim`, t.dim, 1, GHOST_LIMITS.dim);
    limit(`tensor ${t.name} N`, t.n, 1, 2 ** 32 - 1);
    if (!(t.root instanceof Uint8Array) || t.root.length !== 32) bad(`tensor ${t.name}: root must be 32 bytes`);
  });
  const tensor = (i: number, what: string): GhostTensor => {
    if (!Number.isInteger(i) || i < 0 || i >= m.tensors.length) bad(`${what} names tensor ${i}, which does not exist`);
    return m.tensors[i]!;
  };
  const graph = hasInputs(m.formatVersion);
  if (!graph && m.inputs !== undefined) bad('a format-1 file (a chain) has no layer inputs');
  if (graph) {
    if (!Array.isArray(m.inputs) || m.inputs.length !== m.layers.length) bad(`a format-${m.formatVersion} file gives the inputs of every layer`);
    if (m.formatVersion === GHOST_GRAPH_VERSION && isChain(m.inputs)) throw new FormatError('NON_CANONICAL', 'Ghost file: the layers form a chain, which is written as format 1');
  }
  if ((m.formatVersion === GHOST_TRAINING_VERSION) !== (m.training !== undefined)) bad('a training rule is written in format 3, and only there');
  if (m.training !== undefined) checkTraining(m.training, m.tensors.length);
  // Output widths by layer; the model's input width is the first layer's (-1: it takes ids).
  const widths: number[] = [];
  let modelInput = -1;
  const used = new Uint8Array(m.layers.length);
  m.layers.forEach((l, li) => {
    const at = `layer ${li}`;
    const spec = specByOp(l.op);
    if (spec === undefined) bad(`${at}: unknown op`);
    const ins = layerInputs(m, li);
    const arity = spec.arity ?? 1;
    if (!Array.isArray(ins) || ins.length !== arity) bad(`${at} (${l.op}) takes ${arity} input(s); the file gives ${Array.isArray(ins) ? ins.length : 'none'}`);
    const inWidths = ins.map((j) => {
      if (!Number.isInteger(j) || j < -1 || j >= li) bad(`${at} reads layer ${j}, which is not an earlier layer or the model's input (-1)`);
      if (j === -1 && li > 0 && modelInput === -1) bad(`${at} reads the model's input, which is ids (only the first layer takes them)`);
      if (j >= 0) used[j] = 1;
      return j === -1 ? (li === 0 ? -1 : modelInput) : widths[j]!;
    });
    if (inWidths.some((w) => w !== inWidths[0])) bad(`${at} (${l.op}) takes inputs of widths ${inWidths.join(', ')}; they must be equal`);
    widths.push(spec.check(l, { manifest: m, index: li, at, prevOut: inWidths[0]!, tensor }));
    if (li === 0) {
      const first = spec.input(l, m);
      modelInput = first.kind === 'ids' ? -1 : first.cols;
    }
  });
  for (let j = 0; j + 1 < m.layers.length; j++) if (!used[j]) bad(`layer ${j}'s output is read by no later layer`);
}

/** The canonical bytes of a manifest (checked first). */
export function encodeGhost(m: GhostManifest): Uint8Array {
  checkGhost(m);
  const w = new ByteWriter();
  w.bytes(GHOST_MAGIC).u16(m.formatVersion).u16(m.arithmetic);
  const scheme = te.encode(m.hashScheme);
  w.u8(scheme.length).bytes(scheme);
  w.u32(m.tensors.length);
  for (const t of m.tensors) {
    const name = te.encode(t.name);
    w.u8(name.length).bytes(name).u8(1).u32(t.dim).u64(t.n).bytes(t.root);
  }
  w.u32(m.layers.length);
  for (const [li, l] of m.layers.entries()) {
    const spec = specOf(l);
    w.u8(spec.code);
    spec.encode(w, l);
    if (hasInputs(m.formatVersion)) {
      const ins = m.inputs![li]!;
      w.u8(ins.length);
      for (const j of ins) w.u32(j + 1);
    }
  }
  if (m.training !== undefined) writeTraining(w, m.training);
  return w.finish();
}

/** Decodes and checks a Ghost file from untrusted bytes; throws FormatError. */
export function decodeGhost(bytes: Uint8Array): GhostManifest {
  if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError('a Ghost file must be a Uint8Array');
  if (bytes.length > 1 << 24) throw new FormatError('LIMIT', `Ghost file: ${bytes.length} bytes is over the 16 MiB limit`);
  const r = new ByteReader(bytes, 'Ghost file');
  const magic = r.bytes(8, 'magic');
  if (magic.some((b, i) => b !== GHOST_MAGIC[i])) throw new FormatError('BAD_MAGIC', 'not a Ghost file');
  const formatVersion = r.u16('format version');
  if (!isVersion(formatVersion)) throw new FormatError('BAD_VERSION', `Ghost file: format version ${formatVersion}`);
  const arithmetic = r.u16('arithmetic version');
  const hashScheme = new TextDecoder('utf-8', { fatal: false }).decode(r.bytes(r.u8('hash scheme length'), 'hash scheme'));
  const nt = r.count('tensor count', 1, GHOST_LIMITS.tensors);
  const tensors: GhostTensor[] = [];
  for (let i = 0; i < nt; i++) {
    const len = limit('name length', r.u8('name length'), 1, GHOST_LIMITS.nameBytes);
    const raw = r.bytes(len, 'tensor name');
    if (raw.some((c) => c < 0x21 || c > 0x7e)) bad(`tensor ${i} name is not printable ASCII`);
    const name = String.fromCharCode(...raw);
    const dtype = r.u8('dtype');
    if (dtype !== 1) bad(`tensor ${name}: unknown dtype ${dtype}`);
    tensors.push({ name, dtype: 'f32', dim: r.u32('dim'), n: r.u64('N'), root: r.bytes(32, 'root') });
  }
  const nl = r.count('layer count', 1, GHOST_LIMITS.layers);
  const layers: GhostLayer[] = [];
  const inputs: number[][] = [];
  for (let i = 0; i < nl; i++) {
    const op = r.u8('op');
    const spec = specByCode(op);
    if (spec === undefined) bad(`layer ${i}: unknown op ${op}`);
    layers.push(spec.decode(r, i));
    if (hasInputs(formatVersion)) {
      const n = limit(`layer ${i} input count`, r.u8('input count'), 1, MAX_INPUTS);
      const ins: number[] = [];
      for (let k = 0; k < n; k++) ins.push(r.u32('input') - 1);
      inputs.push(ins);
    }
  }
  const training = formatVersion === GHOST_TRAINING_VERSION ? readTraining(r, tensors.length) : undefined;
  r.end();
  const m: GhostManifest = { formatVersion, hashScheme, arithmetic, tensors, layers, ...(hasInputs(formatVersion) ? { inputs } : {}), ...(training ? { training } : {}) };
  checkGhost(m);
  return m;
}

/** BLAKE3-256 of the canonical bytes: the model's identity. */
export async function ghostDigest(ghost: Uint8Array | GhostManifest): Promise<Uint8Array> {
  const bytes = ghost instanceof Uint8Array ? ghost : encodeGhost(ghost);
  return (await loadHasher()).hash(bytes);
}

/** The same manifest with one tensor's root replaced (what an update proof yields). */
export function withRoot(m: GhostManifest, tensor: number, root: Uint8Array): GhostManifest {
  return { ...m, tensors: m.tensors.map((t, i) => (i === tensor ? { ...t, root: root.slice() } : t)) };
}

/** A JSON-friendly view (roots in hex) for display. */
export function ghostToJSON(m: GhostManifest): unknown {
  return {
    ...m,
    tensors: m.tensors.map((t) => ({ ...t, root: toHex(t.root) })),
    ...(m.training ? { training: { ...m.training, tensors: m.training.tensors.map((e) => ({ ...e, stateRoot: toHex(e.stateRoot) })) } } : {}),
  };
}
