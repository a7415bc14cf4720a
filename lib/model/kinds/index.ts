/**
 * The registry of layer kinds, model half: one line per kind (its verifier half is
 * registered in lib/verify/kinds/index.ts). Model, its prover, save / load and the CLI
 * find a layer's kind here; nothing else names a layer class. Adding a kind:
 * docs/layer-kinds.md.
 */
import { InvalidArgumentError } from '../../shared/errors.js';
import type { GhostLayer } from '../../verify/kinds/index.js';
import type { GhostLayerBase } from '../../verify/layer-spec.js';
import type { LayerKind } from '../layer-kind.js';
import { addKind } from './add.js';
import { attentionKind } from './attention.js';
import { embeddingKind } from './embedding.js';
import { gluKind } from './glu.js';
import { hopfieldKind } from './hopfield.js';
import { linearKind } from './linear.js';
import { memoryKind } from './memory.js';
import { positionKind } from './position.js';
import { rmsnormKind } from './rmsnorm.js';

export const LAYER_KINDS = [
  hopfieldKind,
  embeddingKind,
  attentionKind,
  linearKind,
  rmsnormKind,
  addKind,
  gluKind,
  positionKind,
  memoryKind,
] as const;

type LayerOf<K> = K extends LayerKind<infer T, GhostLayerBase> ? T : never;
/** A layer a Model holds: one of the registered kinds'. */
export type ModelLayer = LayerOf<(typeof LAYER_KINDS)[number]>;

/** A kind with its layer and entry types erased, as the registry hands it out. */
export type AnyLayerKind = LayerKind<ModelLayer, GhostLayer>;

const kinds = LAYER_KINDS as unknown as readonly AnyLayerKind[];
const byOp = new Map<string, AnyLayerKind>(kinds.map((k) => [k.spec.op, k]));
if (byOp.size !== kinds.length) throw new Error('two layer kinds share an op');

/** The kind of a layer object; InvalidArgumentError names the kinds when it is none of them. */
export function kindOf(layer: unknown, at = 'layer'): AnyLayerKind {
  for (const k of kinds) if (k.is(layer)) return k;
  throw new InvalidArgumentError(`${at} is not ${kinds.map((k) => k.name).join(', ').replace(/, ([^,]*)$/, ' or $1')}`);
}

/** The kind of a Ghost-file entry (a checked manifest's ops are all registered). */
export function kindOfEntry(l: GhostLayer): AnyLayerKind {
  const k = byOp.get(l.op);
  if (k === undefined) throw new InvalidArgumentError(`no layer kind has op ${JSON.stringify(l.op)}`);
  return k;
}
