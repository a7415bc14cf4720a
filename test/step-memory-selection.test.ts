/**
 * The prover's product-key memory training forward taken from its own forward proof
 * (memoryTrainForwardNative, lib/model/train/step-native.ts; docs/step-proofs.md, "What
 * proving a step costs"): on a real model's forward proof it gives the verifier's
 * TypeScript training forward bit for bit (output, queries, scores, softmax weights),
 * the selection it reuses is the one the TypeScript re-derives, it refuses (null: the
 * TypeScript runs) an input or a table that is not what the forward proof used and a
 * selection out of range, a step's selection-only forward proofs give the public prove()'s
 * stages and reads, and a step forgets what the forward proof kept.
 */
import { describe, expect, it } from 'vitest';

import { languageModel, ProofError } from '../lib/index.js';
import { memoryProvedForward } from '../lib/model/kinds/memory.js';
import { memoryTrainForwardNative } from '../lib/model/train/step-native.js';
import type { GhostManifest } from '../lib/verify/ghost-file.js';
import { memorySpec, type GhostMemoryLayer, type MemorySaved } from '../lib/verify/kinds/memory.js';
import type { Revealed, VerifyLayerContext } from '../lib/verify/layer-spec.js';
import type { LayerEvidence } from '../lib/verify/proof-format.js';

const bits = (a: Float32Array | Float64Array | Uint32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

const TEXT = Uint8Array.from(Buffer.from('A memory layer selects its slots once; the step takes them from the forward proof. '.repeat(3)));
const CONFIGS = [
  { context: 12, dim: 16, layers: 2, heads: 2, hidden: 24, attentionK: 4, memory: { layers: [1], subKeys: 4, k: 2, heads: 2, keyDim: 8 }, seed: 5 },
  { context: 16, dim: 16, layers: 2, heads: 2, hidden: 24, memory: { layers: [0, 1], subKeys: 8, k: 5, heads: 3, keyDim: 6 }, seed: 9 },
];
const TRAINING = { training: { loss: 'cross-entropy' as const, optimizer: 'adam' as const, lr: 1e-2, clipNorm: 1, weightDecay: 0.01 } };

async function proved(cfg: (typeof CONFIGS)[number], off: number) {
  const m = languageModel(cfg, TRAINING);
  const g = (await m.ghost()).manifest;
  const input = Uint32Array.from(TEXT.subarray(off, off + cfg.context));
  const fp = await m.prove(input);
  const mem = g.layers.flatMap((l, li) => (l.op === 'memory' ? [li] : []));
  expect(mem.length).toBe(cfg.memory.layers.length);
  return { m, g, input, fp, mem };
}

/** The layer's training-forward context over the model's own rows (tables[t] replaces tensor t's rows). */
function contextOf(m: ReturnType<typeof languageModel>, g: GhostManifest, li: number, ev: LayerEvidence, x: Float32Array, tables = new Map<number, Float32Array>()): VerifyLayerContext {
  return {
    manifest: g, evidence: ev, index: li, rows: x.length / (g.layers[li] as GhostMemoryLayer).dIn, ids: null, x, inputs: [x],
    reveal: (need) => {
      const out = new Map<number, Revealed>();
      for (const [t, want] of need) {
        const st = m.tensors[t]!;
        const ids = want === 'all' ? Uint32Array.from({ length: st.size }, (_, i) => i) : want;
        out.set(t, { tensor: t, dim: st.dim, ids, rows: tables.get(t) ?? st.gather(ids), root: st.root(), all: want === 'all' });
      }
      return out;
    },
  };
}

describe('the memory training forward from the forward proof\'s selection', () => {
  it('equals the TypeScript\'s re-derived one bit for bit (output, queries, scores, weights)', async () => {
    let layers = 0;
    for (const cfg of CONFIGS) {
      for (const off of [0, 7, 23]) {
        const { m, g, fp, mem } = await proved(cfg, off);
        for (const li of mem) {
          const l = g.layers[li] as GhostMemoryLayer, ev = fp.proof.layers[li]!;
          const pf = memoryProvedForward.get(ev.stages);
          expect(pf).toBeDefined();
          const ts = memorySpec.trainForward!(l, contextOf(m, g, li, ev, pf!.x));
          const nat = memoryTrainForwardNative(l, contextOf(m, g, li, ev, pf!.x));
          expect(nat).not.toBeNull();
          expect(bits(nat!.y)).toBe(bits(ts.y));
          const [a, b] = [nat!.saved as MemorySaved, ts.saved as MemorySaved];
          expect(bits(a.q)).toBe(bits(b.q));
          expect(bits(a.s)).toBe(bits(b.s));
          expect(bits(a.a)).toBe(bits(b.a));
          // Not the forward proof's own output array: the step's forward may hand it on.
          expect(nat!.y).not.toBe(pf!.y);
          layers++;
        }
      }
    }
    expect(layers).toBe(9);
  });

  it('refuses an input, a query weight or a sub-key table other than the forward proof\'s, and a slot out of range', async () => {
    const { m, g, fp, mem } = await proved(CONFIGS[1]!, 3);
    const li = mem[1]!, l = g.layers[li] as GhostMemoryLayer, ev = fp.proof.layers[li]!;
    const pf = memoryProvedForward.get(ev.stages)!;
    // One bit of the input.
    const x = pf.x.slice();
    new Uint32Array(x.buffer)[5]! ^= 1;
    expect(memoryTrainForwardNative(l, contextOf(m, g, li, ev, x))).toBeNull();
    // One value of the query weight, then of the last sub-key table.
    for (const t of [l.query, l.keys[l.keys.length - 1]!]) {
      const rows = m.tensors[t]!.gather(Uint32Array.from({ length: m.tensors[t]!.size }, (_, i) => i));
      rows[rows.length - 1] = -rows[rows.length - 1]! - 1;
      expect(memoryTrainForwardNative(l, contextOf(m, g, li, ev, pf.x, new Map([[t, rows]])))).toBeNull();
    }
    // The same input and tables: taken.
    expect(memoryTrainForwardNative(l, contextOf(m, g, li, ev, pf.x))).not.toBeNull();
    // A slot >= N: null, and the TypeScript reports it.
    const N = l.subKeys * l.subKeys;
    const keep = ev.stages[2]![1]!;
    ev.stages[2]![1] = N;
    try {
      expect(memoryTrainForwardNative(l, contextOf(m, g, li, ev, pf.x))).toBeNull();
      expect(() => memorySpec.trainForward!(l, contextOf(m, g, li, ev, pf.x))).toThrow(ProofError);
    } finally {
      ev.stages[2]![1] = keep;
    }
    // No forward proof kept for these stages: null.
    expect(memoryTrainForwardNative(l, contextOf(m, g, li, { ...ev, stages: ev.stages.map((s) => s.slice()) }, pf.x))).toBeNull();
  });

  it('a step\'s selection-only forward gives the public prove()\'s stages and reads: the step\'s blocks are their union', async () => {
    for (const cfg of CONFIGS) {
      for (const off of [2, 19]) {
        const m = languageModel(cfg, TRAINING);
        const input = Uint32Array.from(TEXT.subarray(off, off + cfg.context)), targets = Uint32Array.from(TEXT.subarray(off + 1, off + cfg.context + 1));
        const fp = (await m.prove(input)).proof;
        const step = (await m.proveTrainStep({ input, targets })).proof;
        expect(step.layers.length).toBe(fp.layers.length);
        step.layers.forEach((l, li) => {
          expect(l.op).toBe(fp.layers[li]!.op);
          expect(l.stages.map(bits)).toEqual(fp.layers[li]!.stages.map(bits));
        });
        // The rows the full forward proof reveals, per tensor: the step's blocks (ids, and whole or not).
        const want = new Map<number, { all: boolean; ids: Set<number> }>();
        for (const l of fp.layers) for (const b of l.blocks) {
          const w = want.get(b.tensor) ?? { all: false, ids: new Set<number>() };
          w.all ||= b.all;
          for (const id of b.ids) w.ids.add(id);
          want.set(b.tensor, w);
        }
        expect(step.blocks.map((b) => b.tensor)).toEqual([...want.keys()].sort((a, b) => a - b));
        for (const b of step.blocks) {
          expect(b.all).toBe(want.get(b.tensor)!.all);
          expect(bits(b.ids)).toBe(bits(Uint32Array.from(want.get(b.tensor)!.ids).sort()));
        }
      }
    }
  });

  it('a proved step forgets what its forward proofs kept', async () => {
    const cfg = CONFIGS[0]!;
    const m = languageModel(cfg, TRAINING);
    const li = (await m.ghost()).manifest.layers.findIndex((l) => l.op === 'memory');
    const step = await m.proveTrainStep({ input: Uint32Array.from(TEXT.subarray(0, cfg.context)), targets: Uint32Array.from(TEXT.subarray(1, cfg.context + 1)) });
    expect(step.proof.layers[li]!.stages.length).toBe(cfg.memory.heads);
    expect(memoryProvedForward.has(step.proof.layers[li]!.stages)).toBe(false);
  });
});
