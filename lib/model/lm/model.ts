/**
 * A byte-level decoder-only transformer built from the library's layers (docs/lm.md,
 * "The model"):
 *
 *   Embedding(vocab, dim) -> PositionEmbedding(context, dim)
 *   -> per layer l:  x + Attention(RMSNorm(x))           causal, `heads` heads, top-k keys
 *                    x + MLP_l(RMSNorm(x))               a GatedMLP (SwiGLU, `hidden` wide), or
 *                                                        a memory layer where l is in memory.layers:
 *                                                        Linear(GatedMemory(ProductKeyMemory, gate))
 *   -> RMSNorm -> Linear head (vocab logits)
 *
 * The memory layer is Berges et al.'s "memory+": `heads` product-key heads over one
 * shared value table of N = subKeys^2 rows, silu-gated, then an output projection.
 * Every tensor is a SparseTensor (committed, provable, trained by the sparse optimizer);
 * initialisation is seeded (train/init.ts), so a config and a seed give one model.
 */
import type { StepTrainingOptions } from '../train/step-training.js';
import { checkInteger, checkOptions, describe } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';
import { GatedMemory, GatedMLP, Residual, type Block } from '../blocks.js';
import { Projection, SparseSelfAttention } from '../kinds/attention.js';
import { Embedding } from '../kinds/embedding.js';
import type { ModelLayer } from '../kinds/index.js';
import { Linear } from '../kinds/linear.js';
import { ProductKeyMemory } from '../kinds/memory.js';
import { PositionEmbedding } from '../kinds/position.js';
import { RMSNorm } from '../kinds/rmsnorm.js';
import { Model } from '../model.js';
import { init } from '../train/init.js';

export interface MemoryConfig {
  /** Layers (0-based) whose MLP is replaced by a memory layer. */
  layers: number[];
  /** Sub-keys per table: the memory has subKeys^2 value rows. */
  subKeys: number;
  /** Slots each head reads (default 32). */
  k?: number;
  /** Product-key heads (default 4). */
  heads?: number;
  /** Query width per head, split evenly between the two sub-key tables (default dim; even). */
  keyDim?: number;
}

export interface LanguageModelConfig {
  /** Token ids 0..vocab-1 (default 256: bytes). */
  vocab?: number;
  /** Longest sequence (learned positions; default 128). */
  context?: number;
  /** Model width (default 128). */
  dim?: number;
  /** Transformer layers (default 2). */
  layers?: number;
  /** Attention heads (default 4; dim must be a multiple). */
  heads?: number;
  /** Gated MLP width (default 3 * dim). */
  hidden?: number;
  /** Keys each query attends to (default: context, i.e. every earlier key). */
  attentionK?: number;
  /** Memory layers in place of some MLPs (default none). */
  memory?: MemoryConfig | null;
  /** Seed of the initialisation (default 1). */
  seed?: number;
}

/** A config with every default filled in. */
export interface ResolvedLanguageModelConfig {
  vocab: number;
  context: number;
  dim: number;
  layers: number;
  heads: number;
  hidden: number;
  attentionK: number;
  memory: Required<MemoryConfig> | null;
  seed: number;
}

export function resolveLanguageModelConfig(config: LanguageModelConfig = {}): ResolvedLanguageModelConfig {
  const c = checkOptions('language model config', config, ['vocab', 'context', 'dim', 'layers', 'heads', 'hidden', 'attentionK', 'memory', 'seed']);
  const vocab = checkInteger('vocab', c.vocab ?? 256, 2, 2 ** 20);
  const context = checkInteger('context', c.context ?? 128, 2, 2 ** 16);
  const dim = checkInteger('dim', c.dim ?? 128, 2, 2 ** 14);
  const layers = checkInteger('layers', c.layers ?? 2, 1, 256);
  const heads = checkInteger('heads', c.heads ?? 4, 1, dim);
  if (dim % heads !== 0) throw new InvalidArgumentError(`dim ${dim} must be a multiple of heads ${heads}`);
  const hidden = checkInteger('hidden', c.hidden ?? 3 * dim, 1, 2 ** 16);
  const attentionK = checkInteger('attentionK', c.attentionK ?? context, 1, context);
  const seed = checkInteger('seed', c.seed ?? 1, 0, 2 ** 31);
  let memory: Required<MemoryConfig> | null = null;
  if (c.memory !== undefined && c.memory !== null) {
    const m = checkOptions('memory', c.memory, ['layers', 'subKeys', 'k', 'heads', 'keyDim']);
    if (!Array.isArray(m.layers) || m.layers.length === 0) throw new InvalidArgumentError(`memory.layers must list the layers whose MLP it replaces, got ${describe(m.layers)}`);
    const at = m.layers.map((l) => checkInteger('memory.layers[]', l, 0, layers - 1));
    if (new Set(at).size !== at.length) throw new InvalidArgumentError('memory.layers has a layer twice');
    const subKeys = checkInteger('memory.subKeys', m.subKeys, 2, 2 ** 16);
    const keyDim = checkInteger('memory.keyDim', m.keyDim ?? dim, 2, 2 ** 14);
    if (keyDim % 2 !== 0) throw new InvalidArgumentError(`memory.keyDim ${keyDim} must be even (split between two sub-key tables)`);
    memory = { layers: [...at].sort((a, b) => a - b), subKeys, k: checkInteger('memory.k', m.k ?? 32, 1, subKeys), heads: checkInteger('memory.heads', m.heads ?? 4, 1, 64), keyDim };
  }
  return { vocab, context, dim, layers, heads, hidden, attentionK, memory, seed };
}

/**
 * Builds the model of a config, initialised: embeddings normal(0, 1); every weight
 * normal(0, 1 / sqrt(fan in)), the projections that end a residual branch scaled by
 * 1 / sqrt(2 layers); norms' gains 1; sub-keys normal(0, 1 / sqrt(keyDim / 2)); memory
 * values normal(0, 1 / sqrt(dim)).
 */
export function languageModel(config: LanguageModelConfig = {}, options: { training?: StepTrainingOptions } = {}): Model {
  const c = resolveLanguageModelConfig(config);
  let seed = c.seed * 1000;
  const normal = (n: number, d: number, std: number): SparseTensor => init.normal(n, d, { std, seed: seed++ });
  const ones = (d: number): SparseTensor => SparseTensor.fromArray(new Float32Array(d).fill(1), d, { adopt: true });
  const D = c.dim, out = 1 / Math.sqrt(2 * c.layers);
  const linear = (m: number, d: number, scale = 1): Linear => new Linear({ weight: normal(m, d, scale / Math.sqrt(d)) });
  const proj = (m: number, d: number, scale = 1): Projection => new Projection({ weight: normal(m, d, scale / Math.sqrt(d)) });
  const items: (ModelLayer | Block)[] = [new Embedding(normal(c.vocab, D, 1)), new PositionEmbedding(normal(c.context, D, 0.1))];
  for (let l = 0; l < c.layers; l++) {
    items.push(new Residual([
      new RMSNorm({ gain: ones(D) }),
      new SparseSelfAttention({ heads: c.heads, k: c.attentionK, causal: true, query: proj(D, D), key: proj(D, D), value: proj(D, D), output: proj(D, D, out) }),
    ]));
    const m = c.memory;
    if (m !== null && m.layers.includes(l)) {
      const half = m.keyDim / 2;
      const memory = new ProductKeyMemory({
        query: normal(m.heads * m.keyDim, D, 1 / Math.sqrt(D)),
        keys: Array.from({ length: m.heads }, () => [normal(m.subKeys, half, 1 / Math.sqrt(half)), normal(m.subKeys, half, 1 / Math.sqrt(half))] as const),
        values: normal(m.subKeys * m.subKeys, D, 1 / Math.sqrt(D)),
        k: m.k,
      });
      items.push(new Residual([new RMSNorm({ gain: ones(D) }), new GatedMemory({ memory, gate: linear(D, D) }), linear(D, D, out)]));
    } else {
      items.push(new Residual([new RMSNorm({ gain: ones(D) }), new GatedMLP({ gate: linear(c.hidden, D), up: linear(c.hidden, D), down: linear(D, c.hidden, out) })]));
    }
  }
  items.push(new RMSNorm({ gain: ones(D) }), linear(c.vocab, D));
  return new Model(items, options.training === undefined ? {} : { training: options.training });
}

/** Multiply-adds per token of a config's forward pass, by part (docs/lm.md, "Compute"). */
export interface LanguageModelCost {
  /** Parameters (every tensor's values). */
  parameters: number;
  /** Of which in memory value tables. */
  memoryParameters: number;
  /** Forward multiply-adds per token, averaged over the context's positions. */
  forwardMacs: number;
  /** Training FLOPs per token: 3 x forward (backward ~ 2 x forward), 2 FLOPs per multiply-add. */
  trainingFlops: number;
}

/**
 * The cost of a config. Attention scores every earlier key (the top-k selection scans
 * them all) and mixes min(k, keys) values: per token and layer 4 D^2 (projections) + D
 * (i + 1) (scores) + D min(k, i + 1) (mix), averaged over positions i < context. A
 * memory layer: query D H dk, sub-key scores H n dk, mix H k D, gate and output 2 D^2.
 */
export function languageModelCost(config: LanguageModelConfig = {}): LanguageModelCost {
  const c = resolveLanguageModelConfig(config);
  const D = c.dim, S = c.context;
  let keys = 0, mixed = 0;
  for (let i = 0; i < S; i++) {
    keys += i + 1;
    mixed += Math.min(c.attentionK, i + 1);
  }
  const attn = 4 * D * D + (D * keys) / S + (D * mixed) / S;
  const mlp = 3 * D * c.hidden;
  let macs = c.layers * attn + D * c.vocab;
  let params = c.vocab * D + S * D + c.layers * (4 * D * D + 2 * D) + D + c.vocab * D;
  let memoryParameters = 0;
  const m = c.memory;
  for (let l = 0; l < c.layers; l++) {
    if (m !== null && m.layers.includes(l)) {
      const N = m.subKeys * m.subKeys;
      macs += D * m.heads * m.keyDim + m.heads * m.subKeys * m.keyDim + m.heads * m.k * D + 2 * D * D;
      params += m.heads * m.keyDim * D + m.heads * m.subKeys * m.keyDim + N * D + 2 * D * D;
      memoryParameters += N * D;
    } else {
      macs += mlp;
      params += 3 * D * c.hidden;
    }
  }
  return { parameters: params, memoryParameters, forwardMacs: macs, trainingFlops: 6 * macs };
}
