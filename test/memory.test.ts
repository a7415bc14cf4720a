/**
 * The product-key memory layer: against a dense float64 baseline (every slot of every
 * head, k = N), its backward against finite differences of that baseline, the proved
 * (canonical) output against the fast one, proofs that verify and forged selections and
 * tampered rows refused, hostile Ghost entries, save / load, training inside a model.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { Embedding, FormatError, GatedMemory, Linear, Model, ProductKeyMemory, RMSNorm, Residual, SparseTensor, Tape, Trainer } from '../lib/index.js';
import { cadd } from '../lib/verify/kinds/add.js';
import { cglu } from '../lib/verify/canonical.js';
import { decodeGhost, encodeGhost, type GhostManifest, type GhostMemoryLayer } from '../lib/verify/ghost-file.js';
import { decodeProof, encodeProof, type ForwardProof } from '../lib/verify/proof-format.js';
import { verifyForward } from '../lib/verify/proof-verify.js';
import { editedGhostReason } from './helpers/ghost-edit.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const scratch = mkdtempSync(join(tmpdir(), 'gt-memory-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

interface Parts { Wq: Float32Array; K: [Float32Array, Float32Array][]; V: Float32Array; dIn: number; d1: number; d2: number; n: number; dOut: number; heads: number }

function parts(rng: Rng, heads = 2, n = 5, d1 = 3, d2 = 2, dIn = 6, dOut = 4): Parts {
  const dk = d1 + d2;
  return { Wq: rng.f32(heads * dk * dIn, 0.6), K: Array.from({ length: heads }, () => [rng.f32(n * d1), rng.f32(n * d2)] as [Float32Array, Float32Array]), V: rng.f32(n * n * dOut), dIn, d1, d2, n, dOut, heads };
}

function layer(p: Parts, k: number, beta?: number): ProductKeyMemory {
  return new ProductKeyMemory({
    query: SparseTensor.fromArray(p.Wq, p.dIn),
    keys: p.K.map(([a, b]) => [SparseTensor.fromArray(a, p.d1), SparseTensor.fromArray(b, p.d2)] as const),
    values: SparseTensor.fromArray(p.V, p.dOut),
    k,
    ...(beta === undefined ? {} : { beta }),
  });
}

/** The dense baseline in float64: every head attends to all n^2 slots. */
function dense(p: Parts, x: Float32Array, beta: number): Float64Array {
  const B = x.length / p.dIn, dk = p.d1 + p.d2, N = p.n * p.n;
  const y = new Float64Array(B * p.dOut);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < p.heads; h++) {
      const q = new Float64Array(dk);
      for (let t = 0; t < dk; t++) for (let i = 0; i < p.dIn; i++) q[t]! += p.Wq[(h * dk + t) * p.dIn + i]! * x[b * p.dIn + i]!;
      const s = new Float64Array(N);
      for (let i = 0; i < p.n; i++) {
        for (let j = 0; j < p.n; j++) {
          let v = 0;
          for (let t = 0; t < p.d1; t++) v += q[t]! * p.K[h]![0][i * p.d1 + t]!;
          for (let t = 0; t < p.d2; t++) v += q[p.d1 + t]! * p.K[h]![1][j * p.d2 + t]!;
          s[i * p.n + j] = beta * v;
        }
      }
      const m = Math.max(...s);
      let z = 0;
      for (let i = 0; i < N; i++) z += Math.exp(s[i]! - m);
      for (let i = 0; i < N; i++) {
        const a = Math.exp(s[i]! - m) / z;
        for (let c = 0; c < p.dOut; c++) y[b * p.dOut + c]! += a * p.V[i * p.dOut + c]!;
      }
    }
  }
  return y;
}

describe('ProductKeyMemory', () => {
  it('with k = N it equals the dense float64 baseline; with k < N each head keeps its top-k slots', async () => {
    const rng = new Rng(1);
    const p = parts(rng);
    const x = rng.f32(4 * p.dIn);
    const beta = 0.7;
    const all = await layer(p, p.n * p.n, beta).forward(x);
    const ref = dense(p, x, Math.fround(beta));
    for (let i = 0; i < ref.length; i++) expect(all.y[i]!).toBeCloseTo(ref[i]!, 5);
    // k = 3: the output moves toward the best slots; each head's ids are its 3 best scores.
    const few = layer(p, 3, beta);
    const r = await few.forward(x);
    expect(r.ctx.heads.length).toBe(2);
    expect(r.ctx.heads[0]!.stages[0]!.ids.length).toBe(4 * 3);
  });

  it('backward equals finite differences of the dense baseline (k = N) for x, the query weight, sub-keys and values', async () => {
    const rng = new Rng(2);
    const p = parts(rng, 2, 3, 2, 2, 4, 3);
    const beta = 0.9;
    const x = rng.f32(2 * p.dIn), dy = rng.f32(2 * p.dOut);
    const mem = layer(p, p.n * p.n, beta);
    const f = await mem.forward(x);
    const g = await mem.backward(f.ctx, dy);
    const loss = (): number => dense(p, x, Math.fround(beta)).reduce((s, v, i) => s + v * dy[i]!, 0);
    const fd = (a: Float32Array, i: number): number => {
      const v = a[i]!;
      a[i] = v + 1e-3;
      const up = loss();
      a[i] = v - 1e-3;
      const down = loss();
      a[i] = v;
      return (up - down) / (Math.fround(v + 1e-3) - Math.fround(v - 1e-3));
    };
    for (let i = 0; i < x.length; i++) expect(g.dx[i]!).toBeCloseTo(fd(x, i), 3);
    const byTensor = (t: SparseTensor, n: number): Float32Array => {
      const out = new Float32Array(n * t.dim);
      for (const e of g.grads.filter((e) => e.tensor === t)) {
        Array.from(e.ids).forEach((id, r) => {
          for (let c = 0; c < t.dim; c++) out[id * t.dim + c]! += e.grads[r * t.dim + c]!;
        });
      }
      return out;
    };
    const dWq = byTensor(mem.query.weight, mem.heads * mem.headDim);
    for (let i = 0; i < p.Wq.length; i += 3) expect(dWq[i]!).toBeCloseTo(fd(p.Wq, i), 3);
    const dK = byTensor(mem.keys[1]![0], p.n);
    for (let i = 0; i < p.K[1]![0].length; i++) expect(dK[i]!).toBeCloseTo(fd(p.K[1]![0], i), 3);
    const dV = byTensor(mem.values, p.n * p.n);
    for (let i = 0; i < p.V.length; i += 2) expect(dV[i]!).toBeCloseTo(fd(p.V, i), 3);
    // One entry per tensor: the values' rows from both heads in one entry.
    expect(g.grads.filter((e) => e.tensor === mem.values).length).toBe(1);
  });

  it('proved inside a residual block: verifies, is close to the fast forward; forged selections and tampered rows are refused', async () => {
    const rng = new Rng(3);
    const p = parts(rng, 2, 6, 3, 3, 8, 8);
    const mem = layer(p, 4);
    const model = new Model([new Linear({ weight: SparseTensor.fromArray(rng.f32(8 * 5), 5) }), new Residual([new RMSNorm({ gain: SparseTensor.fromArray(rng.f32(8), 8) }), mem])]);
    const ghost = await model.ghost();
    const x = rng.f32(5 * 5);
    const proved = await model.prove(x);
    const v = await verifyForward(ghost, proved.bytes);
    expect(Buffer.from(v.output.buffer).equals(Buffer.from(proved.output.buffer))).toBe(true);
    const fast = await model.forward(x);
    for (let i = 0; i < fast.length; i++) expect(Math.abs(fast[i]! - proved.output[i]!)).toBeLessThan(1e-4);
    const clone = (): ForwardProof => decodeProof(proved.bytes) as ForwardProof;
    const memAt = model.layers.indexOf(mem);
    // Swap a head's first two slots of input 0: the order is re-derived.
    const swapped = clone();
    const st = swapped.layers[memAt]!.stages[1]!;
    [st[0], st[1]] = [st[1]!, st[0]!];
    expect(await reason(verifyForward(ghost, encodeProof(swapped)))).toBe('SELECTION_MISMATCH');
    // Another slot in place of the best one (its value row revealed too, so only the selection is wrong).
    const other = clone();
    const ev = other.layers[memAt]!;
    const vb = ev.blocks.find((b) => b.tensor === ghost.manifest.tensors.findIndex((t) => t.name.endsWith('values')))!;
    // A slot another input of the same head chose: revealed, but not this input's best.
    const fresh = Array.from(ev.stages[0]!.subarray(4)).find((id) => !Array.from(ev.stages[0]!.subarray(0, 4)).includes(id));
    expect(fresh).toBeDefined();
    expect(vb.ids.includes(fresh!)).toBe(true);
    ev.stages[0]![0] = fresh!;
    expect(await reason(verifyForward(ghost, encodeProof(other)))).toBe('SELECTION_MISMATCH');
    const stageCount = clone();
    stageCount.layers[memAt]!.stages.pop();
    expect(await reason(verifyForward(ghost, encodeProof(stageCount)))).toBe('SHAPE');
    const row = clone();
    const kb = row.layers[memAt]!.blocks[1]!;
    (kb.payload[0] as Float32Array)[0]! += 0.25;
    expect(await reason(verifyForward(ghost, encodeProof(row)))).toBe('ROOT_MISMATCH');
  });

  it('GatedMemory: silu(gate x) * memory(x), trained through the tape against finite differences, proved and verified', async () => {
    const rng = new Rng(5);
    const p = parts(rng, 2, 4, 2, 2, 6, 6);
    const mem = layer(p, 16);
    const gate = new Linear({ weight: SparseTensor.fromArray(rng.f32(6 * 6), 6) });
    const first = new Linear({ weight: SparseTensor.fromArray(rng.f32(6 * 3), 3) });
    const model = new Model([first, new Residual([new GatedMemory({ memory: mem, gate })])]);
    expect(model.layers.map((l) => l.constructor.name)).toEqual(['Linear', 'Linear', 'ProductKeyMemory', 'Glu', 'Add']);
    const x = rng.f32(2 * 3);
    const x0 = (await first.forward(x)).y;
    const want = cadd(x0, cglu((await gate.forward(x0)).y, (await mem.forward(x0)).y));
    expect(Buffer.from((await model.forward(x)).buffer).equals(Buffer.from(want.buffer))).toBe(true);
    // The gradient of an MSE loss with respect to the input, through the gate and the memory (k = N: smooth).
    const target = rng.f32(2 * 6);
    const lossAt = async (xs: Float32Array): Promise<number> => {
      const t = new Tape();
      return t.mse(await t.model(model, xs), target).value;
    };
    const tape = new Tape();
    const input = tape.input(x, 3);
    const g = await tape.backward(tape.mse(await tape.model(model, input), target));
    for (let i = 0; i < x.length; i++) {
      const up = x.slice(), down = x.slice();
      up[i]! += 1e-2;
      down[i]! -= 1e-2;
      expect(g.of(input)![i]!).toBeCloseTo(((await lossAt(up)) - (await lossAt(down))) / (up[i]! - down[i]!), 2);
    }
    const ghost = await model.ghost();
    await verifyForward(ghost, (await model.prove(x)).bytes);
  });

  it('a memory whose value table is a memory-mapped tensor file (2^16 slots) proves and verifies; a tied output head trains', async () => {
    const rng = new Rng(6);
    const path = join(scratch, 'values.gtt');
    await SparseTensor.createFile(path, { rows: 256 * 256, dim: 8, seed: 3, scale: 0.1, optimizerState: true });
    const values = await SparseTensor.openFile(path);
    try {
      const mem = new ProductKeyMemory({ query: SparseTensor.fromArray(rng.f32(16 * 8, 0.5), 8), keys: [[SparseTensor.fromArray(rng.f32(256 * 8), 8), SparseTensor.fromArray(rng.f32(256 * 8), 8)]], values, k: 8 });
      const table = SparseTensor.fromArray(rng.f32(20 * 8, 0.5), 8);
      // The head's weight is the embedding table (tied): one tensor, listed once.
      const model = new Model([new Embedding(table), new Residual([mem]), new Linear({ weight: table })]);
      expect(model.tensors.filter((t) => t === table).length).toBe(1);
      const ids = [3, 17, 4, 4, 19];
      const ghost = await model.ghost();
      const v = await verifyForward(ghost, (await model.prove(ids)).bytes);
      expect(v.cols).toBe(20);
      // The tied table gets one gradient entry with the rows of both uses.
      const tape = new Tape();
      const loss = tape.softmaxCrossEntropy(await tape.model(model, ids), Uint32Array.from([17, 4, 4, 19, 3]));
      const grads = await tape.backward(loss);
      const tied = grads.sparse.filter((e) => e.tensor === table);
      expect(tied.length).toBe(1);
      expect(tied[0]!.ids.length).toBe(ids.length + 20);
      const trainer = new Trainer(model, { lr: 1e-2 });
      const before = table.gather([3]);
      await trainer.step(grads);
      expect(Array.from(table.gather([3]))).not.toEqual(Array.from(before));
      trainer.detach();
    } finally {
      values.close();
    }
  });

  it('hostile Ghost entries are refused; save / load keeps the layer and its proofs', async () => {
    const rng = new Rng(4);
    const p = parts(rng);
    const model = new Model([layer(p, 5)]);
    const g = (await model.ghost()).manifest;
    expect(g.layers[0]).toMatchObject({ op: 'memory', dIn: 6, dOut: 4, heads: 2, k: 5, subKeys: 5 });
    const bytes = encodeGhost(g);
    expect(decodeGhost(bytes)).toEqual(g);
    const broken = (f: (l: GhostMemoryLayer, m: GhostManifest) => void): string => editedGhostReason(bytes, (m) => f(m.layers[0] as GhostMemoryLayer, m));
    expect(broken(() => {})).toBe('accepted');
    expect(broken((l) => { l.k = 26; })).toBe('LIMIT');
    expect(broken((l) => { l.heads = 3; })).toBe('BAD_VALUE');
    expect(broken((l) => { l.keys = [l.keys[0]!, l.keys[1]!, l.keys[0]!, l.keys[1]!]; })).toBe('BAD_VALUE');
    expect(broken((l) => { l.keys[2] = l.values; })).toBe('BAD_VALUE');
    expect(broken((l) => { l.query = l.keys[0]!; })).toBe('BAD_VALUE');
    expect(broken((l) => { l.subKeys = 4; })).toBe('BAD_VALUE');
    expect(broken((l) => { l.dOut = 3; })).toBe('BAD_VALUE');
    expect(broken((l) => { l.beta = 0.1; })).toBe('BAD_VALUE');
    for (let cut = 0; cut < bytes.length; cut++) expect(() => decodeGhost(bytes.subarray(0, cut))).toThrow(FormatError);
    const dir = join(scratch, 'memory');
    const saved = await model.save(dir);
    const { model: loaded } = await Model.load(dir);
    try {
      const x = rng.f32(3 * 6);
      expect(Buffer.from((await loaded.prove(x)).bytes).equals(Buffer.from((await model.prove(x)).bytes))).toBe(true);
      expect((await loaded.ghost()).digest).toEqual(saved.digest);
    } finally {
      loaded.close();
    }
  });
});
