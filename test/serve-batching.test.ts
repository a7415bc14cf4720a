/**
 * Serving fast paths (docs/serving.md, "Performance"): the SearchBatcher joins the exact
 * searches of proofs running at once into one scan. Its answers must be the bytes of a
 * server without it, before and after a training step changes rows, on a model whose
 * keys hold exact ties (duplicated rows, queries equal to a key) and with repeated
 * inputs in one joined scan; each answer verifies. Also the no-proofs mode the benchmark
 * compares with: the fast forward's output, the same refusals.
 */
import { afterAll, describe, expect, it } from 'vitest';

import { HopfieldLookup, Model, SearchBatcher, SparseTensor, verifyForward, type PinnedGhost } from '../lib/index.js';
import { ProverServer, encodeForwardRequest, encodeTrainRequest } from '../lib/serve/index.js';
import { decodeOutput } from '../lib/serve/wire.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';

const TOKEN = 'correct-horse-battery';
const servers: ProverServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.close();
});

async function post(url: string, body: Uint8Array, headers: Record<string, string> = {}): Promise<{ status: number; type: string | null; bytes: Uint8Array }> {
  const res = await fetch(url, { method: 'POST', body: body as Uint8Array<ArrayBuffer>, headers });
  return { status: res.status, type: res.headers.get('content-type'), bytes: new Uint8Array(await res.arrayBuffer()) };
}

/** Exact cosine retrieval over 64 patterns each stored 4 times (exact score ties everywhere), 2 steps, k = 6. */
function tiesModel(): Model {
  const rng = new Rng(5);
  const d = 12;
  const base = rng.f32(64 * d);
  const keys = new Float32Array(256 * d);
  for (let i = 0; i < 256; i++) keys.set(base.subarray((i % 64) * d, (i % 64 + 1) * d), i * d);
  return new Model([new HopfieldLookup({ keys: SparseTensor.fromArray(keys, d), values: SparseTensor.fromArray(rng.f32(256 * d), d), k: 6, similarity: 'cosine', normalize: true, updateSteps: 2 })]);
}

const models: [string, () => Model, number][] = [
  ['exact (2 steps) then product keys', () => twoLayerModel(new Rng(21)).model, 16],
  ['exact with tied keys', tiesModel, 12],
];

describe('batched search: the same answers as a server without it', () => {
  for (const [name, make, d] of models) {
    it(`${name}: concurrent answers equal a fresh unbatched server's, before and after a training step`, async () => {
      const a = await ProverServer.fromModel(make(), { trainToken: TOKEN, maxConcurrent: 8, maxQueue: 256 });
      const b = await ProverServer.fromModel(make(), { trainToken: TOKEN, batchSearch: false, maxConcurrent: 1, maxQueue: 256 });
      servers.push(a, b);
      const [ua, ub] = [await a.listen(), await b.listen()];
      expect(b.stats.search).toBeNull();
      const rng = new Rng(99);
      const keyRow = make().tensors[0]!.gather(Uint32Array.of(3)); // a query equal to a key: a tie of duplicated rows
      const inputs: Float32Array[] = [];
      for (let i = 0; i < 24; i++) inputs.push(i % 6 === 5 ? inputs[i - 1]! : i % 7 === 3 ? keyRow : rng.f32(d * (1 + (i % 3))));
      const bodies = inputs.map((x) => encodeForwardRequest({ kind: 'f32', rows: x.length / d, cols: d, data: x }));

      const round = async (ghost: PinnedGhost): Promise<Uint8Array[]> => {
        const got = await Promise.all(bodies.map((x) => post(`${ua}/forward`, x)));
        for (const [i, x] of bodies.entries()) {
          const want = await post(`${ub}/forward`, x);
          expect(got[i]!.status).toBe(200);
          expect(want.status).toBe(200);
          expect(Buffer.from(got[i]!.bytes).equals(Buffer.from(want.bytes)), `answer ${i}`).toBe(true);
          const v = await verifyForward(ghost, got[i]!.bytes);
          expect(v.rows).toBe(inputs[i]!.length / d);
        }
        return got.map((g) => g.bytes);
      };
      const before = await round(a.ghost);
      // Concurrent proofs shared scans: fewer scans than queries.
      const s = a.stats.search!;
      expect(s.queries).toBeGreaterThan(s.scans);

      // A training step on both (the same gradients): rows change, answers follow, still equal.
      const ids = Uint32Array.from({ length: 40 }, (_, i) => (i * 5) % 256);
      const grads = new Rng(3).f32(ids.length * d, 5);
      for (const u of [ua, ub]) expect((await post(`${u}/train`, encodeTrainRequest([{ tensor: 0, ids, grads }]), { authorization: `Bearer ${TOKEN}` })).status).toBe(200);
      expect(a.generation).toBe(1);
      expect(Buffer.from(a.ghost.digest).equals(Buffer.from(b.ghost.digest))).toBe(true);
      const after = await round(a.ghost);
      expect(after.some((x, i) => !Buffer.from(x).equals(Buffer.from(before[i]!)))).toBe(true);
    }, 20_000);
  }

  it('SearchBatcher alone: joined scans give each caller the ids of its own searchBatch, one failure stays its own', async () => {
    const rng = new Rng(8);
    const d = 8;
    const base = rng.f32(50 * d);
    const rows = new Float32Array(200 * d);
    for (let i = 0; i < 200; i++) rows.set(base.subarray((i % 50) * d, (i % 50 + 1) * d), i * d);
    const t = SparseTensor.fromArray(rows, d);
    const batcher = new SearchBatcher({ maxQueries: 5 });
    const qs = Array.from({ length: 30 }, (_, i) => (i % 4 === 0 ? rows.slice(i * d, (i + 2) * d) : rng.f32(d * (1 + (i % 3)))));
    const got = await Promise.all(qs.map((q) => batcher.search(t, q, 7, { metric: 'cosine' })));
    for (const [i, q] of qs.entries()) expect(Array.from(got[i]!), `search ${i}`).toEqual(Array.from((await t.searchBatch(q, 7, { metric: 'cosine' })).ids));
    expect(batcher.stats.scans).toBeLessThan(qs.length);
    expect(batcher.stats.queries).toBe(qs.reduce((s, q) => s + q.length / d, 0));
    // A query of the wrong width joined with good ones: it alone fails.
    const mixed = await Promise.allSettled([batcher.search(t, qs[0]!, 7, { metric: 'cosine' }), batcher.search(t, qs[1]!, 7, { metric: 'cosine' }), batcher.search(t, new Float32Array(d + 1), 7, { metric: 'cosine' }), batcher.search(t, qs[2]!, 7, { metric: 'cosine' })]);
    expect(mixed.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(Array.from((mixed[3] as PromiseFulfilledResult<Uint32Array>).value)).toEqual(Array.from(got[2]!));
  });
});

describe('proofs: false (what the benchmark compares with)', () => {
  it('answers the fast forward output only, with the same refusals', async () => {
    const model = twoLayerModel(new Rng(21)).model;
    const s = await ProverServer.fromModel(model, { proofs: false, maxBatch: 4 });
    servers.push(s);
    const u = await s.listen();
    const x = new Rng(4).f32(3 * 16);
    const r = await post(`${u}/forward`, encodeForwardRequest({ kind: 'f32', rows: 3, cols: 16, data: x }));
    expect(r.status).toBe(200);
    expect(r.type).toBe('application/vnd.ghost-tensor.output');
    const out = decodeOutput(r.bytes);
    const want = await model.forward(x);
    expect([out.rows, out.cols]).toEqual([3, want.length / 3]);
    expect(Array.from(out.data)).toEqual(Array.from(want));
    expect((await post(`${u}/forward`, Uint8Array.of(1, 2, 3))).status).toBe(400);
    expect((await post(`${u}/forward`, encodeForwardRequest({ kind: 'f32', rows: 5, cols: 16, data: new Rng(1).f32(80) }))).status).toBe(413);
    expect((await post(`${u}/forward`, encodeForwardRequest({ kind: 'f32', rows: 1, cols: 15, data: new Rng(1).f32(15) }))).status).toBe(400);
    expect(() => decodeOutput(r.bytes.subarray(0, r.bytes.length - 1))).toThrow();
  });
});
