/**
 * Blocks: groups of layers that a Model lays out as a graph (docs/layer-kinds.md,
 * "Graphs and residual blocks"). A block is not a layer kind: `new Model([...])` expands
 * it into its layers and the inputs each reads.
 */
import { InvalidArgumentError } from '../shared/errors.js';
import { Add } from './kinds/add.js';
import { Glu } from './kinds/glu.js';
import type { ModelLayer } from './kinds/index.js';
import type { Linear } from './kinds/linear.js';
import type { ProductKeyMemory } from './kinds/memory.js';

/** Adds a layer reading `inputs` (-1: the model's input) and returns its index. */
export type EmitLayer = (layer: ModelLayer, inputs: number[]) => number;

export abstract class Block {
  /** Lays the block out after `input` (a layer's index, or -1); returns the index of its output. */
  abstract expand(emit: EmitLayer, input: number): number;
}

/** Lays out a chain of layers and blocks after `input`; returns the last output's index. */
export function expandChain(items: readonly (ModelLayer | Block)[], emit: EmitLayer, input: number): number {
  let cur = input;
  for (const item of items) cur = item instanceof Block ? item.expand(emit, cur) : emit(item, [cur]);
  return cur;
}

/** x + body(x): the body (layers and blocks, a chain whose output has x's width), then an Add. */
export class Residual extends Block {
  readonly body: readonly (ModelLayer | Block)[];
  constructor(body: readonly (ModelLayer | Block)[]) {
    super();
    if (!Array.isArray(body) || body.length === 0) throw new InvalidArgumentError('a Residual needs a non-empty array of layers');
    this.body = [...body];
  }
  expand(emit: EmitLayer, input: number): number {
    if (input === -1) throw new InvalidArgumentError('a Residual block cannot read the model\'s input directly: put a layer before it');
    return emit(new Add(), [input, expandChain(this.body, emit, input)]);
  }
}

/** A gated MLP (SwiGLU): down(silu(gate(x)) * up(x)). */
export class GatedMLP extends Block {
  readonly gate: Linear;
  readonly up: Linear;
  readonly down: Linear;
  constructor(o: { gate: Linear; up: Linear; down: Linear }) {
    super();
    if (o === null || typeof o !== 'object' || !o.gate || !o.up || !o.down) throw new InvalidArgumentError('GatedMLP needs { gate, up, down }');
    this.gate = o.gate;
    this.up = o.up;
    this.down = o.down;
  }
  expand(emit: EmitLayer, input: number): number {
    const g = emit(this.gate, [input]);
    const u = emit(this.up, [input]);
    return emit(this.down, [emit(new Glu(), [g, u])]);
  }
}

/**
 * A product-key memory with output gating (the "memory+" of Berges et al. 2024, without
 * its output projection, which a Linear after the block gives): silu(gate(x)) * memory(x).
 */
export class GatedMemory extends Block {
  readonly memory: ProductKeyMemory;
  readonly gate: Linear;
  constructor(o: { memory: ProductKeyMemory; gate: Linear }) {
    super();
    if (o === null || typeof o !== 'object' || !o.memory || !o.gate) throw new InvalidArgumentError('GatedMemory needs { memory, gate }');
    this.memory = o.memory;
    this.gate = o.gate;
  }
  expand(emit: EmitLayer, input: number): number {
    const g = emit(this.gate, [input]);
    const m = emit(this.memory, [input]);
    return emit(new Glu(), [g, m]);
  }
}
