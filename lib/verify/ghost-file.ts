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
import { CANONICAL_VERSION, type CanonicalSimilarity } from './canonical.js';

export const GHOST_FORMAT_VERSION = 1;
/** 0x89 'GHOST' CR LF: a binary file that is not text. */
export const GHOST_MAGIC = Uint8Array.from([0x89, 0x47, 0x48, 0x4f, 0x53, 0x54, 0x0d, 0x0a]);
export const GHOST_LIMITS = { tensors: 4096, layers: 4096, nameBytes: 64, dim: 2 ** 24, k: 2 ** 16, updateSteps: 100, subKeys: 65535, heads: 4096 } as const;

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

export type GhostIndex =
  | { kind: 'exact' }
  | { kind: 'hnsw'; M: number; efConstruction: number; ef: number }
  | { kind: 'product-keys'; subKeys: number };

export interface GhostHopfieldLayer {
  op: 'hopfield';
  dIn: number;
  dOut: number;
  k: number;
  /** An f32 value. */
  beta: number;
  similarity: CanonicalSimilarity;
  normalize: boolean;
  updateSteps: number;
  index: GhostIndex;
  /** Tensor indexes of the keys: one (exact, hnsw) or the two sub-key tables (product keys). */
  keys: number[];
  values: number;
}

export interface GhostEmbeddingLayer {
  op: 'embedding';
  table: number;
  dim: number;
}

/** A projection of an attention layer: tensor `tensor` (pattern j = output column j), keeping `k` columns per row (k = N: all). */
export interface GhostProjection {
  tensor: number;
  k: number;
}

/**
 * SparseSelfAttention (docs/attention.md): the input rows are one sequence; per head,
 * each query attends to its top-k keys (j <= i when causal) with softmax(scale * s).
 */
export interface GhostAttentionLayer {
  op: 'attention';
  dIn: number;
  dOut: number;
  heads: number;
  k: number;
  causal: boolean;
  /** An f32 value. */
  scale: number;
  query: GhostProjection | null;
  key: GhostProjection | null;
  value: GhostProjection | null;
  output: GhostProjection | null;
}

export type GhostLayer = GhostHopfieldLayer | GhostEmbeddingLayer | GhostAttentionLayer;

/** The width D of an attention layer's Q, K and V (heads x headDim). */
export function attentionWidth(g: GhostManifest, l: GhostAttentionLayer): number {
  const p = l.query ?? l.key ?? l.value;
  return p === null ? l.dIn : g.tensors[p.tensor]!.n;
}

export interface GhostManifest {
  formatVersion: number;
  hashScheme: string;
  arithmetic: number;
  tensors: GhostTensor[];
  layers: GhostLayer[];
}

const SIMS: readonly CanonicalSimilarity[] = ['ip', 'cosine', 'l2'];
const INDEX_KINDS = ['exact', 'hnsw', 'product-keys'] as const;
const NAME_RE = /^[A-Za-z0-9._/-]{1,64}$/;
const te = new TextEncoder();

function bad(message: string): never {
  throw new FormatError('BAD_VALUE', `Ghost file: ${message}`);
}

function limit(field: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new FormatError('LIMIT', `Ghost file: ${field} = ${v} is outside ${lo}..${hi}`);
  return v;
}

/** Checks what the encoding cannot: references in range, dimensions that agree, layers that chain. */
export function checkGhost(m: GhostManifest): void {
  if (m.formatVersion !== GHOST_FORMAT_VERSION) throw new FormatError('BAD_VERSION', `Ghost file: format version ${m.formatVersion}`);
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
  let prevOut = -1;
  m.layers.forEach((l, li) => {
    const at = `layer ${li}`;
    if (l.op === 'embedding') {
      if (li !== 0) bad(`${at}: an embedding takes ids, so it can only be the first layer`);
      const t = tensor(l.table, at);
      if (t.dim !== l.dim) bad(`${at}: dim ${l.dim} differs from its table's ${t.dim}`);
      prevOut = l.dim;
      return;
    }
    if (l.op === 'attention') {
      limit(`${at} dIn`, l.dIn, 1, GHOST_LIMITS.dim);
      limit(`${at} dOut`, l.dOut, 1, GHOST_LIMITS.dim);
      limit(`${at} heads`, l.heads, 1, GHOST_LIMITS.heads);
      limit(`${at} k`, l.k, 1, GHOST_LIMITS.k);
      if (typeof l.causal !== 'boolean') bad(`${at}: causal must be a boolean`);
      if (!Number.isFinite(l.scale) || Math.fround(l.scale) !== l.scale || !(l.scale > 0)) bad(`${at}: scale must be a finite f32 > 0`);
      if (prevOut !== -1 && prevOut !== l.dIn) bad(`${at}: takes ${l.dIn} inputs but the layer before gives ${prevOut}`);
      const proj = (p: GhostProjection | null, what: string, inDim: number): number | null => {
        if (p === null) return null;
        const t = tensor(p.tensor, `${at} ${what}`);
        if (t.dim !== inDim) bad(`${at}: the ${what} projection reads ${t.dim} values; it gets ${inDim}`);
        limit(`${at} ${what} k`, p.k, 1, Math.min(t.n, GHOST_LIMITS.dim));
        return t.n;
      };
      const widths = [proj(l.query, 'query', l.dIn), proj(l.key, 'key', l.dIn), proj(l.value, 'value', l.dIn)];
      const D = attentionWidth(m, l);
      for (const w of widths) if ((w ?? l.dIn) !== D) bad(`${at}: Q, K and V must have one width (a missing projection passes the ${l.dIn} inputs through)`);
      if (D % l.heads !== 0) bad(`${at}: width ${D} is not a multiple of ${l.heads} heads`);
      const o = proj(l.output, 'output', D);
      if ((o ?? D) !== l.dOut) bad(`${at}: dOut ${l.dOut} differs from the output width ${o ?? D}`);
      prevOut = l.dOut;
      return;
    }
    if (l.op !== 'hopfield') bad(`${at}: unknown op`);
    limit(`${at} dIn`, l.dIn, 1, GHOST_LIMITS.dim);
    limit(`${at} dOut`, l.dOut, 1, GHOST_LIMITS.dim);
    limit(`${at} k`, l.k, 1, GHOST_LIMITS.k);
    limit(`${at} updateSteps`, l.updateSteps, 1, GHOST_LIMITS.updateSteps);
    if (!Number.isFinite(l.beta) || Math.fround(l.beta) !== l.beta) bad(`${at}: beta must be a finite f32`);
    if (!SIMS.includes(l.similarity)) bad(`${at}: unknown similarity`);
    if (typeof l.normalize !== 'boolean') bad(`${at}: normalize must be a boolean`);
    if (prevOut !== -1 && prevOut !== l.dIn) bad(`${at}: takes ${l.dIn} inputs but the layer before gives ${prevOut}`);
    prevOut = l.dOut;
    const v = tensor(l.values, `${at} values`);
    if (v.dim !== l.dOut) bad(`${at}: dOut ${l.dOut} differs from its values' dim ${v.dim}`);
    const idx = l.index;
    if (idx.kind === 'product-keys') {
      limit(`${at} subKeys`, idx.subKeys, 1, GHOST_LIMITS.subKeys);
      if (l.similarity !== 'ip') bad(`${at}: product keys score by inner product`);
      if (l.keys.length !== 2) bad(`${at}: product keys need two sub-key tables`);
      const [a, b] = [tensor(l.keys[0]!, `${at} keys`), tensor(l.keys[1]!, `${at} keys`)];
      if (a.n !== idx.subKeys || b.n !== idx.subKeys) bad(`${at}: sub-key tables must hold subKeys = ${idx.subKeys} rows`);
      if (a.dim + b.dim !== l.dIn) bad(`${at}: sub-key dims ${a.dim} + ${b.dim} differ from dIn ${l.dIn}`);
      if (v.n !== idx.subKeys * idx.subKeys) bad(`${at}: values hold ${v.n} rows, product keys address ${idx.subKeys ** 2}`);
    } else {
      if (idx.kind === 'hnsw') {
        limit(`${at} M`, idx.M, 2, 65535);
        limit(`${at} efConstruction`, idx.efConstruction, 1, 1_000_000);
        limit(`${at} ef`, idx.ef, 0, 1_000_000);
      } else if (idx.kind !== 'exact') bad(`${at}: unknown index kind`);
      if (l.keys.length !== 1) bad(`${at}: needs exactly one key tensor`);
      const kt = tensor(l.keys[0]!, `${at} keys`);
      if (kt.dim !== l.dIn) bad(`${at}: dIn ${l.dIn} differs from its keys' dim ${kt.dim}`);
      if (kt.n !== v.n) bad(`${at}: keys hold ${kt.n} patterns and values ${v.n}`);
    }
    if (l.k > v.n) bad(`${at}: k = ${l.k} exceeds N = ${v.n}`);
  });
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
  for (const l of m.layers) {
    if (l.op === 'embedding') {
      w.u8(2).u32(l.table).u32(l.dim);
      continue;
    }
    if (l.op === 'attention') {
      w.u8(3).u32(l.dIn).u32(l.dOut).u32(l.heads).u32(l.k).u8(l.causal ? 1 : 0).f32(l.scale);
      for (const p of [l.query, l.key, l.value, l.output]) {
        if (p === null) w.u8(0);
        else w.u8(1).u32(p.tensor).u32(p.k);
      }
      continue;
    }
    w.u8(1).u32(l.dIn).u32(l.dOut).u32(l.k).f32(l.beta).u8(SIMS.indexOf(l.similarity)).u8(l.normalize ? 1 : 0).u16(l.updateSteps);
    w.u8(INDEX_KINDS.indexOf(l.index.kind));
    if (l.index.kind === 'hnsw') w.u32(l.index.M).u32(l.index.efConstruction).u32(l.index.ef);
    else if (l.index.kind === 'product-keys') w.u32(l.index.subKeys);
    for (const k of l.keys) w.u32(k);
    w.u32(l.values);
  }
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
  if (formatVersion !== GHOST_FORMAT_VERSION) throw new FormatError('BAD_VERSION', `Ghost file: format version ${formatVersion}`);
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
  for (let i = 0; i < nl; i++) {
    const op = r.u8('op');
    if (op === 2) {
      layers.push({ op: 'embedding', table: r.u32('table'), dim: r.u32('dim') });
      continue;
    }
    if (op === 3) {
      const dIn = r.u32('dIn'), dOut = r.u32('dOut'), heads = r.u32('heads'), k = r.u32('k');
      const causal = r.u8('causal');
      if (causal > 1) bad(`layer ${i}: causal must be 0 or 1`);
      const scale = r.f32('scale');
      const proj = (what: string): GhostProjection | null => {
        const present = r.u8(`${what} present`);
        if (present > 1) bad(`layer ${i}: ${what} presence must be 0 or 1`);
        return present === 0 ? null : { tensor: r.u32(`${what} tensor`), k: r.u32(`${what} k`) };
      };
      const query = proj('query'), key = proj('key'), value = proj('value'), output = proj('output');
      layers.push({ op: 'attention', dIn, dOut, heads, k, causal: causal === 1, scale, query, key, value, output });
      continue;
    }
    if (op !== 1) bad(`layer ${i}: unknown op ${op}`);
    const dIn = r.u32('dIn'), dOut = r.u32('dOut'), k = r.u32('k'), beta = r.f32('beta');
    const sim = SIMS[r.u8('similarity')];
    if (sim === undefined) bad(`layer ${i}: unknown similarity`);
    const norm = r.u8('normalize');
    if (norm > 1) bad(`layer ${i}: normalize must be 0 or 1`);
    const updateSteps = r.u16('updateSteps');
    const kind = INDEX_KINDS[r.u8('index kind')];
    let index: GhostIndex;
    if (kind === 'exact') index = { kind };
    else if (kind === 'hnsw') index = { kind, M: r.u32('M'), efConstruction: r.u32('efConstruction'), ef: r.u32('ef') };
    else if (kind === 'product-keys') index = { kind, subKeys: r.u32('subKeys') };
    else bad(`layer ${i}: unknown index kind`);
    const keys = kind === 'product-keys' ? [r.u32('keys1'), r.u32('keys2')] : [r.u32('keys')];
    layers.push({ op: 'hopfield', dIn, dOut, k, beta, similarity: sim, normalize: norm === 1, updateSteps, index, keys, values: r.u32('values') });
  }
  r.end();
  const m: GhostManifest = { formatVersion, hashScheme, arithmetic, tensors, layers };
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
  return { ...m, tensors: m.tensors.map((t) => ({ ...t, root: toHex(t.root) })) };
}
