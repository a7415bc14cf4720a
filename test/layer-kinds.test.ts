/**
 * The layer-kind registries (docs/layer-kinds.md): the model half and the verifier half
 * agree; each kind's Ghost entry round-trips through the codec and back to a layer that
 * gives the same entry; the kind's forward and backward are the layer's; a model's
 * forward is its layers' forwards chained by hand; and what a layer takes is read from
 * its kind everywhere (an attention-first model is served over HTTP).
 */
import { afterAll, describe, expect, it } from 'vitest';

import { Embedding, GatedMLP, PositionEmbedding, ProductKeyMemory, HopfieldLookup, Linear, Model, RMSNorm, Residual, type SparseGrad, ProductKeyIndex, Projection, ProverClient, ProverServer, SparseSelfAttention, SparseTensor } from '../lib/index.js';
import { kindOf, LAYER_KINDS, type ModelLayer } from '../lib/model/kinds/index.js';
import { decodeGhost, encodeGhost } from '../lib/verify/ghost-file.js';
import { describeLayer, layerInput, LAYER_SPECS, specByCode, specByOp } from '../lib/verify/kinds/index.js';
import { Rng } from './helpers/rng.js';

const servers: ProverServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
});

/** One model per kind and index, each layer's input width following the one before. */
async function models(rng: Rng): Promise<Record<string, Model>> {
  const d = 8;
  const t = (n: number, w: number) => SparseTensor.fromArray(rng.f32(n * w, 0.5), w);
  const hnswKeys = t(64, d);
  await hnswKeys.buildHnsw({ metric: 'cosine', M: 8, efConstruction: 32, seed: 3 });
  return {
    exact: new Model([new HopfieldLookup({ keys: t(50, d), values: t(50, 6), k: 4, similarity: 'l2', updateSteps: 2 })]),
    hnsw: new Model([new HopfieldLookup({ keys: hnswKeys, values: t(64, 5), k: 3, similarity: 'cosine', index: 'hnsw', ef: 16 })]),
    productKeys: new Model([new HopfieldLookup({ keys: ProductKeyIndex.fromTables(t(6, 4), t(6, 4)), values: t(36, 3), k: 5 })]),
    embeddingAttention: new Model([
      new Embedding(t(20, d)),
      new PositionEmbedding(t(9, d)),
      new SparseSelfAttention({ heads: 2, k: 2, causal: true, query: new Projection({ weight: t(6, d) }), key: new Projection({ weight: t(6, d), k: 4 }), value: new Projection({ weight: t(6, d) }) }),
    ]),
    linearNorm: new Model([
      new Linear({ weight: t(6, d), bias: t(1, 6), k: 4 }),
      new RMSNorm({ gain: t(1, 6), eps: 1e-5 }),
      new Linear({ weight: t(d, 6) }),
      new HopfieldLookup({ keys: t(30, d), values: t(30, 3), k: 2 }),
    ]),
    residual: new Model([
      new Linear({ weight: t(d, 6) }),
      new Residual([new RMSNorm({ gain: t(1, d) }), new Linear({ weight: t(d, d), k: 5 })]),
      new Residual([new ProductKeyMemory({ query: t(2 * 4, d), keys: [[t(5, 2), t(5, 2)], [t(5, 2), t(5, 2)]], values: t(25, d), k: 3 })]),
      new Residual([new RMSNorm({ gain: t(1, d) }), new GatedMLP({ gate: new Linear({ weight: t(12, d) }), up: new Linear({ weight: t(12, d), bias: t(1, 12) }), down: new Linear({ weight: t(d, 12) }) })]),
      new HopfieldLookup({ keys: t(20, d), values: t(20, 3), k: 2 }),
    ]),
    attentionFirst: new Model([
      new SparseSelfAttention({ heads: 1, k: 3, causal: false, query: new Projection({ weight: t(4, d) }), key: new Projection({ weight: t(4, d) }), value: new Projection({ weight: t(4, d) }), output: new Projection({ weight: t(d, 4) }) }),
      new HopfieldLookup({ keys: t(30, d), values: t(30, 2), k: 2 }),
    ]),
  };
}

const inputFor = async (m: Model, rng: Rng, rows: number): Promise<Float32Array | number[]> => {
  const first = layerInput((await m.ghost()).manifest, 0);
  return first.kind === 'ids' ? Array.from({ length: rows }, (_, i) => (i * 7) % first.n) : rng.f32(rows * first.cols);
};

describe('layer kinds', () => {
  it('the model registry and the verifier registry name the same kinds, with unique ops and codes', () => {
    expect(LAYER_KINDS.map((k) => k.spec.op)).toEqual(LAYER_SPECS.map((s) => s.op));
    for (const k of LAYER_KINDS) {
      expect(specByOp(k.spec.op)).toBe(k.spec);
      expect(specByCode(k.spec.code)).toBe(k.spec);
    }
    expect(new Set(LAYER_SPECS.map((s) => s.code)).size).toBe(LAYER_SPECS.length);
    expect(specByCode(0)).toBeUndefined();
    expect(() => kindOf({})).toThrow(/is not a HopfieldLookup, an Embedding, a SparseSelfAttention, a Linear, an RMSNorm, an Add, a Glu, a PositionEmbedding or a ProductKeyMemory$/);
  });

  it('each kind: the Ghost entry round-trips, fromGhost gives a layer with the same entry, describe and input follow the entry', async () => {
    const all = await models(new Rng(3));
    const seen = new Set<string>();
    for (const [name, model] of Object.entries(all)) {
      await model.commit();
      const m = model.manifest();
      const again = decodeGhost(encodeGhost(m));
      expect(again, name).toEqual(m);
      const rebuilt = await Model.fromManifest(again, model.tensors);
      expect(rebuilt.manifest(), name).toEqual(m);
      m.layers.forEach((l, i) => {
        seen.add(l.op);
        expect(kindOf(rebuilt.layers[i]).spec.op).toBe(l.op);
        expect(describeLayer(m, i).startsWith(`${l.op}:`)).toBe(true);
        const inp = layerInput(m, i);
        if (l.op === 'embedding') expect(inp).toEqual({ kind: 'ids', n: m.tensors[l.table]!.n });
        else if (l.op === 'add' || l.op === 'glu' || l.op === 'position' || l.op === 'rmsnorm') expect(inp).toEqual({ kind: 'f32', cols: 'dim' in l ? l.dim : -1 });
        else if (l.op === 'memory') expect(inp).toEqual({ kind: 'f32', cols: l.dIn });
        else expect(inp).toEqual({ kind: 'f32', cols: l.dIn });
      });
    }
    expect([...seen].sort()).toEqual(LAYER_SPECS.map((s) => s.op).sort());
  });

  it("a model's forward is its layers' forwards chained by hand; the kind's forward and backward are the layer's", async () => {
    const rng = new Rng(5);
    for (const [name, model] of Object.entries(await models(rng))) {
      if (name === 'residual') continue; // a graph: test/graph.test.ts
      const input = await inputFor(model, rng, 5);
      const y = await model.forward(input);
      // By hand, through each class's own API.
      let x: Float32Array | null = null;
      let width = -1;
      for (const l of model.layers as ModelLayer[]) {
        if (l instanceof Embedding) x = l.forward(input as number[]);
        else if (l instanceof SparseSelfAttention) x = (await l.forward(x ?? (input as Float32Array), l.inDim ?? width)).y;
        else if (l instanceof Linear) x = (await l.forward(x ?? (input as Float32Array))).y;
        else if (l instanceof PositionEmbedding) x = l.forward(x!).y;
        else if (l instanceof RMSNorm) x = l.forward(x ?? (input as Float32Array)).y;
        else if (l instanceof HopfieldLookup) x = (await l.forward(x ?? (input as Float32Array))).y;
        else throw new Error('a chain model here has no Add');
        width = x.length / 5;
      }
      expect(Buffer.from(y.buffer).equals(Buffer.from(x!.buffer)), name).toBe(true);
      // The last layer's backward through its kind equals the class's backward.
      const last = model.layers[model.layers.length - 1]!;
      const kind = kindOf(last);
      const before = model.layers.length === 1 ? input : await new Model(model.layers.slice(0, -1)).forward(input);
      const shape = { inWidth: width === -1 ? -1 : (before as Float32Array).length / 5, outWidth: y.length / 5 };
      if (last instanceof Embedding) shape.inWidth = -1;
      const f = await kind.forward(last, before instanceof Float32Array ? before : Uint32Array.from(before), shape);
      expect(Buffer.from(f.y.buffer).equals(Buffer.from(y.buffer)), name).toBe(true);
      const dy = rng.f32(y.length);
      const viaKind = await kind.backward(last, f.ctx, dy);
      let direct: { dx: Float32Array | null; grads: SparseGrad[] };
      if (last instanceof HopfieldLookup) direct = await last.backward((await last.forward(before as Float32Array)).ctx, dy);
      else if (last instanceof SparseSelfAttention) direct = await last.backward((await last.forward(before as Float32Array, shape.inWidth)).ctx, dy);
      else throw new Error('unexpected last layer');
      expect(viaKind.dx, name).toEqual(direct.dx);
      expect(viaKind.grads.map((g) => [Array.from(g.ids), Array.from(g.grads)]), name).toEqual(direct.grads.map((g) => [Array.from(g.ids), Array.from(g.grads)]));
      if (last instanceof HopfieldLookup) expect(viaKind.dense.map((g) => g.param)).toEqual([last.betaParam]);
    }
  });

  it('an attention-first model is served: the service and the client read its input width from its kind', async () => {
    const rng = new Rng(9);
    const model = (await models(rng)).attentionFirst!;
    const server = await ProverServer.fromModel(model);
    servers.push(server);
    const url = await server.listen();
    const client = await ProverClient.connect(url, (await model.ghost()).digest);
    const x = rng.f32(4 * 8);
    const served = await client.forward(x);
    const local = await model.prove(x);
    expect(Buffer.from(served.output.buffer, served.output.byteOffset, served.output.byteLength).equals(Buffer.from(local.output.buffer))).toBe(true);
  });
});
