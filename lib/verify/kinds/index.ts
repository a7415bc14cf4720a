/**
 * The registry of layer kinds, verifier half: one line per kind. The Ghost-file codec,
 * the proof codec and the verifier find a layer's kind here by its op name or its byte;
 * nothing else in lib/verify names a kind. Adding a kind: docs/layer-kinds.md.
 */
import { FormatError } from '../../shared/errors.js';
import type { GhostManifest } from '../ghost-file.js';
import type { LayerInput, LayerSpec } from '../layer-spec.js';
import { addSpec } from './add.js';
import { attentionSpec } from './attention.js';
import { embeddingSpec } from './embedding.js';
import { gluSpec } from './glu.js';
import { hopfieldSpec } from './hopfield.js';
import { linearSpec } from './linear.js';
import { memorySpec } from './memory.js';
import { positionSpec } from './position.js';
import { rmsnormSpec } from './rmsnorm.js';

export const LAYER_SPECS = [
  hopfieldSpec,
  embeddingSpec,
  attentionSpec,
  linearSpec,
  rmsnormSpec,
  addSpec,
  gluSpec,
  positionSpec,
  memorySpec,
] as const;

type LayerOf<S> = S extends LayerSpec<infer L> ? L : never;
/** A layer entry of a Ghost file: one of the registered kinds'. */
export type GhostLayer = LayerOf<(typeof LAYER_SPECS)[number]>;
/** The op names of the registered kinds. */
export type LayerOp = GhostLayer['op'];

const byOp = new Map<string, LayerSpec<GhostLayer>>();
const byCode = new Map<number, LayerSpec<GhostLayer>>();
for (const s of LAYER_SPECS as unknown as readonly LayerSpec<GhostLayer>[]) {
  if (byOp.has(s.op) || byCode.has(s.code)) throw new Error(`layer kind ${s.op} (code ${s.code}) is registered twice`);
  byOp.set(s.op, s);
  byCode.set(s.code, s);
}

/** The spec of a layer (its op must be registered: a decoded or checked manifest's are). */
export function specOf<L extends GhostLayer>(l: L): LayerSpec<L> {
  const s = byOp.get(l.op);
  if (s === undefined) throw new FormatError('BAD_VALUE', `Ghost file: unknown op ${JSON.stringify(l.op)}`);
  return s as unknown as LayerSpec<L>;
}

/** The spec with this op name or byte, or undefined. */
export function specByOp(op: string): LayerSpec<GhostLayer> | undefined {
  return byOp.get(op);
}
export function specByCode(code: number): LayerSpec<GhostLayer> | undefined {
  return byCode.get(code);
}

/** What layer `li` of a manifest takes: ids into a table of n rows, or rows of cols f32. */
export function layerInput(m: GhostManifest, li: number): LayerInput {
  const l = m.layers[li]!;
  return specOf(l).input(l, m);
}

/** One line describing layer `li` (for `ghost-tensor inspect`). */
export function describeLayer(m: GhostManifest, li: number): string {
  const l = m.layers[li]!;
  const ins = m.inputs?.[li];
  return `${specOf(l).describe(l, m)}${ins ? `; reads ${ins.map((j) => (j === -1 ? 'the input' : `[${j}]`)).join(' and ')}` : ''}`;
}
