/**
 * Options that cannot work are refused where they are given (the constructor or the
 * call that takes them), with a typed error naming the option, not at the first
 * forward or never. Unknown option keys (a misspelt option) are refused by one helper
 * (checkOptions in lib/shared/args.ts). Ids are accepted as number[] wherever a Uint32Array is.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  DenseAdam,
  Embedding,
  GhostTensorError,
  HopfieldLookup,
  InvalidArgumentError,
  Model,
  OutOfRangeError,
  ProductKeyIndex,
  Projection,
  SparseAdam,
  SparseSGD,
  SparseSelfAttention,
  SparseTensor,
} from '../lib/index.js';
import { encodeTrainRequest } from '../lib/serve/wire.js';
import { Rng } from './helpers/rng.js';

const rng = new Rng(2323);
const tensor = (n: number, d: number): SparseTensor => SparseTensor.fromArray(rng.f32(n * d), d);
/** Bypasses the option types, as a JavaScript caller (or a misspelling) would. */
const loose = <T,>(o: object): T => o as unknown as T;

const keys = tensor(16, 4), values = tensor(16, 3);
const ipGraph = tensor(16, 4);
await ipGraph.buildHnsw({ metric: 'ip', M: 4, efConstruction: 16, threads: 1 });
const pk = ProductKeyIndex.random(4, 4, () => rng.next());
const w16 = tensor(16, 8); // a projection 8 -> 16
const tmp = mkdtempSync(join(tmpdir(), 'gt-options-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface Row {
  name: string;
  /** The call that must refuse (sync or async). */
  call: () => unknown;
  /** The option the message must name. */
  option: RegExp;
  type?: new (...args: never[]) => GhostTensorError;
}

const rows: Row[] = [
  // SparseTensor
  { name: 'create: misspelt capacity', call: () => SparseTensor.create(4, loose({ capcity: 8 })), option: /'capcity'/ },
  { name: 'create: options not an object', call: () => SparseTensor.create(4, loose([8])), option: /options/ },
  { name: 'fromArray: adopt not a boolean', call: () => SparseTensor.fromArray(rng.f32(8), 4, loose({ adopt: 'yes' })), option: /adopt/ },
  { name: 'fromArray: options null', call: () => SparseTensor.fromArray(rng.f32(8), 4, loose(null as unknown as object)), option: /options/ },
  { name: 'search: unknown key efSearch', call: () => keys.search(rng.f32(4), 2, loose({ efSearch: 10 })), option: /'efSearch'/ },
  { name: 'searchBatch: unknown key thread', call: () => keys.searchBatch(rng.f32(8), 2, loose({ thread: 2 })), option: /'thread'/ },
  { name: 'searchBatchSync: ef with index exact (was ignored)', call: () => keys.searchBatchSync(rng.f32(8), 2, { ef: 10 }), option: /\bef\b/ },
  { name: 'buildHnsw: unknown key m', call: () => tensor(8, 4).buildHnsw(loose({ m: 8 })), option: /'m'/ },
  { name: 'commitSync: unknown key thread', call: () => tensor(8, 4).commitSync(loose({ thread: 1 })), option: /'thread'/ },
  { name: 'refreshHnsw: unknown key thread', call: () => ipGraph.refreshHnsw(1, loose({ thread: 1 })), option: /'thread'/ },
  // HopfieldLookup
  { name: 'HopfieldLookup: ef with index exact', call: () => new HopfieldLookup({ keys, values, k: 2, ef: 64 }), option: /\bef\b/ },
  { name: 'HopfieldLookup: ef with product keys', call: () => new HopfieldLookup({ keys: pk, values, k: 2, ef: 64 }), option: /\bef\b/ },
  { name: "HopfieldLookup: index 'hnsw' in dense mode", call: () => new HopfieldLookup({ keys: ipGraph, values, k: 2, index: 'hnsw', mode: 'dense' }), option: /index/ },
  { name: 'HopfieldLookup: updateSteps > 1 in dense mode', call: () => new HopfieldLookup({ keys, values, k: 2, updateSteps: 2, mode: 'dense' }), option: /updateSteps/ },
  { name: 'HopfieldLookup: normalize not a boolean', call: () => new HopfieldLookup(loose({ keys, values, k: 2, normalize: 'true' })), option: /normalize/ },
  { name: 'HopfieldLookup: similarity differs from the HNSW graph metric', call: () => new HopfieldLookup({ keys: ipGraph, values, k: 2, index: 'hnsw', similarity: 'cosine' }), option: /similarity/ },
  { name: 'HopfieldLookup: unknown key topk', call: () => new HopfieldLookup(loose({ keys, values, k: 2, topk: 4 })), option: /'topk'/ },
  // Embedding, Projection, SparseSelfAttention
  { name: 'Embedding: unknown key sparse', call: () => new Embedding(keys, loose({ sparse: true })), option: /'sparse'/ },
  { name: 'Projection: weight not a SparseTensor', call: () => new Projection(loose({ weight: { size: 4, dim: 4 } })), option: /weight/ },
  { name: "Projection: k with mode 'dense' (was ignored)", call: () => new Projection({ weight: w16, k: 4, mode: 'dense' }), option: /\bk\b/ },
  { name: 'Projection: unknown key kProj', call: () => new Projection(loose({ weight: w16, kProj: 4 })), option: /'kProj'/ },
  {
    name: 'SparseSelfAttention: heads do not divide the projected width',
    call: () => new SparseSelfAttention({ heads: 3, k: 2, query: new Projection({ weight: w16 }), key: new Projection({ weight: w16 }), value: new Projection({ weight: w16 }) }),
    option: /heads/,
  },
  {
    name: 'SparseSelfAttention: output projection reads another width',
    call: () => new SparseSelfAttention({ heads: 2, k: 2, query: new Projection({ weight: w16 }), key: new Projection({ weight: w16 }), value: new Projection({ weight: w16 }), output: new Projection({ weight: w16 }) }),
    option: /output/,
  },
  { name: 'SparseSelfAttention: unknown key casual', call: () => new SparseSelfAttention(loose({ heads: 2, k: 2, casual: true })), option: /'casual'/ },
  // Optimizers
  { name: 'SparseAdam: unknown key weight_decay', call: () => new SparseAdam([tensor(4, 2)], loose({ lr: 0.1, weight_decay: 0.1 })), option: /'weight_decay'/ },
  { name: 'SparseAdam: replaceState not a boolean', call: () => new SparseAdam([tensor(4, 2)], loose({ replaceState: 'yes' })), option: /replaceState/ },
  { name: 'SparseSGD: momentum (SGD has none)', call: () => new SparseSGD([tensor(4, 2)], loose({ lr: 0.1, momentum: 0.9 })), option: /'momentum'/ },
  { name: 'SparseSGD: beta1 (an Adam option)', call: () => new SparseSGD([tensor(4, 2)], loose({ beta1: 0.9 })), option: /'beta1'/ },
  { name: 'DenseAdam: weightDecay (not implemented there)', call: () => new DenseAdam([new Float32Array(2)], loose({ weightDecay: 0.1 })), option: /'weightDecay'/ },
  { name: 'DenseAdam: one parameter listed twice', call: () => { const p = new Float32Array(2); return new DenseAdam([p, p]); }, option: /params/ },
  // ProductKeyIndex
  { name: "ProductKeyIndex.search: index 'hnsw' (exact only)", call: () => pk.search(rng.f32(4), 2, loose({ index: 'hnsw' })), option: /'index'/ },
  { name: 'ProductKeyIndex.searchBatch: unknown key thread', call: () => pk.searchBatch(rng.f32(8), 2, loose({ thread: 2 })), option: /'thread'/ },
  { name: 'ProductKeyIndex.random: random not a function', call: () => ProductKeyIndex.random(4, 4, loose(42 as unknown as object)), option: /random/ },
  // Model
  { name: 'Model.prove: threads out of range', call: () => new Model([new Embedding(tensor(4, 2))]).prove([1], { threads: 0 }), option: /threads/, type: OutOfRangeError },
  { name: 'Model.prove: unknown key thread', call: () => new Model([new Embedding(tensor(4, 2))]).prove([1], loose({ thread: 2 })), option: /'thread'/ },
  { name: 'Model.save: misspelt optimizerState', call: () => new Model([new Embedding(tensor(4, 2))]).save(join(tmp, 'm'), loose({ optimiserState: true })), option: /'optimiserState'/ },
  { name: 'Model.load: misspelt verify', call: () => Model.load(join(tmp, 'none'), loose({ verfy: false })), option: /'verfy'/ },
];

/** The error `call` throws or rejects with, or null when it succeeds. */
async function errorOf(call: () => unknown): Promise<unknown> {
  try {
    await call();
    return null;
  } catch (err) {
    return err;
  }
}

describe('options that cannot work are refused where they are given', () => {
  it.each(rows)('$name', async ({ call, option, type }) => {
    const err = await errorOf(call);
    expect(err).toBeInstanceOf(type ?? InvalidArgumentError);
    expect((err as Error).message).toMatch(option);
  });

  it('a refused Model.save writes nothing', () => {
    expect(readdirSync(tmp)).toEqual([]);
  });

  it('an option whose value is undefined is not an unknown option (spreads of optional fields)', () => {
    expect(() => SparseTensor.create(4, loose({ capcity: undefined }))).not.toThrow();
    expect(() => new HopfieldLookup(loose({ keys, values, k: 2, ef: undefined }))).not.toThrow();
  });

  it('the valid combinations the refusals sit next to still work', async () => {
    const h = new HopfieldLookup({ keys: ipGraph, values, k: 2, index: 'hnsw', ef: 8 });
    expect((await h.forward(rng.f32(8))).ids.length).toBe(4);
    expect(new Projection({ weight: w16, k: 16, mode: 'dense' }).full).toBe(true);
    expect(new SparseSelfAttention({ heads: 4, k: 2, query: new Projection({ weight: w16 }), key: new Projection({ weight: w16 }), value: new Projection({ weight: w16 }), output: new Projection({ weight: tensor(8, 16) }) }).heads).toBe(4);
  });
});

describe('number[] is accepted wherever ids are', () => {
  it('WireGrad.ids: an array of integers encodes as the Uint32Array does', () => {
    const grads = rng.f32(6);
    const a = encodeTrainRequest([{ tensor: 1, ids: [3, 0, 3], grads }]);
    const b = encodeTrainRequest([{ tensor: 1, ids: Uint32Array.of(3, 0, 3), grads }]);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(a.length).toBe(4 + 4 + 4 + 3 * 4 + 6 * 4);
  });

  it('WireGrad.ids: hostile arrays are refused naming the entry', () => {
    const grads = rng.f32(2);
    expect(() => encodeTrainRequest([{ tensor: 0, ids: [1.5, 2], grads }])).toThrow(/grads\[0\]\.ids\[0\]/);
    expect(() => encodeTrainRequest([{ tensor: 0, ids: [-1, 2], grads }])).toThrow(OutOfRangeError);
    expect(() => encodeTrainRequest([{ tensor: 0, ids: [2 ** 32, 2], grads }])).toThrow(OutOfRangeError);
    expect(() => encodeTrainRequest([{ tensor: 0, ids: loose<number[]>({ length: 2 }), grads }])).toThrow(InvalidArgumentError);
  });

  it('ProductKeyIndex.keyRows takes number[] and gives the rows of the Uint32Array', () => {
    expect(Array.from(pk.keyRows([5, 0, 15]))).toEqual(Array.from(pk.keyRows(Uint32Array.of(5, 0, 15))));
    expect(() => pk.keyRows([1.5])).toThrow(InvalidArgumentError);
  });
});
