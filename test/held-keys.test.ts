/**
 * Held keys (docs/proof-format.md section 5): a proof of an exact-index HopfieldLookup
 * that reveals its key tensor whole, so the verifier re-derives each input's exact
 * top-k of every stage itself (csimilarity over all N keys in f64, ctopk) and refuses
 * other ids with SELECTION_MISMATCH. The prover selects canonically with the screened
 * selection (native canonicalExactTopK): f32 kernels first, f64 only for keys an error
 * bound cannot exclude; it must give the bits of scoring every key in f64.
 */
import { describe, expect, it } from 'vitest';

import {
  HopfieldLookup,
  InvalidArgumentError,
  Model,
  PatternCache,
  ProductKeyIndex,
  SparseTensor,
  decodeProof,
  encodeProof,
  pinGhost,
  simdInfo,
  verifyForward,
  type ForwardProof,
} from '../lib/index.js';
import { ProverClient, ProverServer, encodeForwardRequest } from '../lib/serve/index.js';
import { native, type NativeSimdLevel } from '../lib/tensor/native.js';
import { cexactTopK, cmix, csimilarity, csoftmax, cstate, type CanonicalSimilarity } from '../lib/verify/canonical.js';
import { RowKind } from '../lib/verify/proof-format.js';
import { reason } from './helpers/reason.js';
import { Rng } from './helpers/rng.js';

const levels = simdInfo().supported as NativeSimdLevel[];
const clone = (p: ForwardProof): ForwardProof => decodeProof(encodeProof(p)) as ForwardProof;
const bits = (a: Float64Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

/** An independent float64 brute force: every key scored with plain loops, all N sorted by score descending, then id ascending. */
function bruteTopK(sim: CanonicalSimilarity, q: Float64Array, keys: Float32Array, n: number, d: number, k: number): number[] {
  const s: number[] = [];
  let qq = 0;
  for (let j = 0; j < d; j++) qq += q[j]! * q[j]!;
  for (let i = 0; i < n; i++) {
    let dot = 0, kk = 0, l2 = 0;
    for (let j = 0; j < d; j++) {
      const v = keys[i * d + j]!;
      dot += q[j]! * v;
      kk += v * v;
      l2 += (q[j]! - v) * (q[j]! - v);
    }
    s.push(sim === 'ip' ? dot : sim === 'l2' ? -l2 : qq === 0 || kk === 0 ? 0 : dot / (Math.sqrt(qq) * Math.sqrt(kk)));
  }
  return Array.from({ length: n }, (_, i) => i).sort((a, b) => s[b]! - s[a]! || a - b).slice(0, k);
}

function layerModel(rng: Rng, o: { n: number; d: number; dv?: number; k: number; sim: CanonicalSimilarity; normalize?: boolean; steps?: number; keys?: Float32Array; shared?: boolean }): { model: Model; layer: HopfieldLookup } {
  const keys = SparseTensor.fromArray(o.keys ?? rng.f32(o.n * o.d), o.d);
  const values = o.shared ? keys : SparseTensor.fromArray(rng.f32(o.n * (o.dv ?? o.d)), o.dv ?? o.d);
  const layer = new HopfieldLookup({ keys, values, k: o.k, similarity: o.sim, normalize: o.normalize ?? false, updateSteps: o.steps ?? 1, beta: 2 });
  return { model: new Model([layer]), layer };
}

describe('held keys: honest proofs', () => {
  const cases: { name: string; sim: CanonicalSimilarity; normalize: boolean; steps: number; shared?: boolean }[] = [
    { name: 'cosine, normalized, 2 update steps', sim: 'cosine', normalize: true, steps: 2 },
    { name: 'ip', sim: 'ip', normalize: false, steps: 1 },
    { name: 'ip, normalized, 2 update steps, keys = values', sim: 'ip', normalize: true, steps: 2, shared: true },
    { name: 'l2, 2 update steps', sim: 'l2', normalize: false, steps: 2 },
  ];
  for (const c of cases) {
    it(`${c.name}: verifies with requireSelection, and every stage's ids are the float64 brute-force top-k`, async () => {
      const rng = new Rng(11);
      const n = 400, d = 24, k = 8, B = 5;
      const { model, layer } = layerModel(rng, { n, d, k, sim: c.sim, normalize: c.normalize, steps: c.steps, ...(c.shared ? { shared: true } : {}) });
      const ghost = await pinGhost((await model.ghost()).bytes);
      const x = rng.f32(B * d);
      const r = await model.prove(x, { revealKeys: 'all' });
      const ev = r.proof.layers[0]!;
      // The key tensor is one all-rows block.
      expect(ev.blocks[0]!.all).toBe(true);
      expect(ev.blocks.length).toBe(c.shared ? 1 : 2);
      const v = await verifyForward(ghost, r.bytes, { requireSelection: true });
      expect(Array.from(v.output)).toEqual(Array.from(r.output));
      // Replay the stages with the reference: the ids the verifier accepted are the brute-force top-k.
      const K = (layer.keys as SparseTensor).gather(Uint32Array.from({ length: n }, (_, i) => i));
      const V = layer.values.gather(Uint32Array.from({ length: n }, (_, i) => i));
      for (let b = 0; b < B; b++) {
        let q = cstate(x, b * d, d, c.normalize);
        for (let s = 0; s < c.steps; s++) {
          const ids = ev.stages[s]!.subarray(b * k, (b + 1) * k);
          expect(Array.from(ids), `input ${b} stage ${s}`).toEqual(bruteTopK(c.sim, q, K, n, d, k));
          const sc = Float64Array.from(ids, (id) => csimilarity(c.sim, q, K, id * d, d));
          q = cmix(csoftmax(sc, layer.beta), s === c.steps - 1 ? V : K, Array.from(ids, (id) => id * d), d);
        }
        expect(Array.from(Float32Array.from(q))).toEqual(Array.from(r.output.subarray(b * d, (b + 1) * d)));
      }
    });
  }
});

describe('held keys: the screened canonical selection', () => {
  interface Case {
    q: Float64Array;
    keys: Float32Array;
    n: number;
    d: number;
    B: number;
    k: number;
  }
  /** Every SIMD level and thread count gives the bits of scoring every key in f64, and the verifier's cexactTopK. */
  function agree(c: Case, sim: CanonicalSimilarity): number {
    const { q, keys, n, d, B, k } = c;
    const ref = native().canonicalExactTopK(q, keys, n, d, B, k, sim, 1, 'none');
    expect(ref.canonicalRows).toBe(n * B);
    let least = Infinity;
    for (const level of levels) {
      for (const threads of [1, 2]) {
        const r = native().canonicalExactTopK(q, keys, n, d, B, k, sim, threads, level);
        expect(Array.from(r.ids), `${sim} ${level} ids`).toEqual(Array.from(ref.ids));
        expect(bits(r.scores), `${sim} ${level} scores`).toBe(bits(ref.scores));
        least = Math.min(least, r.canonicalRows);
      }
    }
    for (let b = 0; b < B; b++) {
      const t = cexactTopK(sim, q.subarray(b * d, (b + 1) * d), keys, n, d, k);
      expect(Array.from(t.ids), `${sim} verifier input ${b}`).toEqual(Array.from(ref.ids.subarray(b * k, (b + 1) * k)));
      expect(bits(t.scores)).toBe(bits(ref.scores.subarray(b * k, (b + 1) * k)));
      expect(Array.from(t.ids), `${sim} brute force input ${b}`).toEqual(bruteTopK(sim, q.subarray(b * d, (b + 1) * d), keys, n, d, k));
    }
    return least;
  }
  const sims: CanonicalSimilarity[] = ['ip', 'cosine', 'l2'];

  it('random data: same bits as scoring every key, and few keys scored in f64', () => {
    const rng = new Rng(5);
    for (const [n, d, B, k] of [[2048, 64, 3, 32], [500, 17, 9, 4], [129, 5, 2, 32]] as const) {
      const c = { q: Float64Array.from(rng.f32(B * d)), keys: rng.f32(n * d), n, d, B, k };
      for (const sim of sims) {
        const rows = agree(c, sim);
        if (k * 4 <= n) expect(rows, `${sim} n=${n}`).toBeLessThan((n * B) / 4);
      }
    }
  });

  it('ties (equal scores) go to the lower id', () => {
    const rng = new Rng(6);
    const n = 256, d = 8, k = 16, B = 4;
    // Eight distinct small-integer rows, each repeated 32 times: every score is tied 32 ways.
    const base = rng.f32ints(8 * d);
    const keys = new Float32Array(n * d);
    for (let i = 0; i < n; i++) keys.set(base.subarray((i % 8) * d, (i % 8 + 1) * d), i * d);
    const q = Float64Array.from(rng.f32ints(B * d));
    for (const sim of sims) {
      agree({ q, keys, n, d, B, k }, sim);
      const ids = Array.from(native().canonicalExactTopK(q, keys, n, d, B, k, sim, 1).ids.subarray(0, k));
      // The best row's copies, lowest ids first (i, i + 8, i + 16, ...).
      expect(ids[1]! - ids[0]!, sim).toBe(8);
      expect(ids.slice(0, 16).every((id, t) => t === 0 || id > ids[t - 1]! || bruteTopK(sim, q, keys, n, d, k)[t] === id)).toBe(true);
    }
  });

  it('hostile values: f32 rounding that reverses the order, tiny, subnormal, zero and huge keys', () => {
    const rng = new Rng(7);
    const n = 160, d = 4, k = 8;
    // Keys one f32 ulp apart from a common row: f32 scores of f32(q) cannot order them; only the bound keeps them.
    const near = new Float32Array(n * d);
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) near[i * d + j] = Math.fround(1 + ((i * 7 + j) % 13) * 2 ** -23);
    const qNear = Float64Array.of(1, 2 ** -25 + 2 ** -40, -(2 ** -26), 2 ** -30);
    const tiny = rng.f32(n * d).map((v) => v * 2 ** -120);
    const subnormal = rng.f32(n * d).map((v) => v * 2 ** -140);
    const zeros = rng.f32(n * d).map((v, i) => (Math.floor(i / d) % 3 === 0 ? 0 : v));
    const huge = rng.f32(n * d).map((v) => v * 2 ** 60);
    // One base row plus noise of a few f32 ulps, d = 64: the f32 kernels order these keys differently from f64.
    const dn = 64, nn = 512;
    const baseRow = rng.f32(dn);
    const close = new Float32Array(nn * dn);
    for (let i = 0; i < nn; i++) for (let j = 0; j < dn; j++) close[i * dn + j] = Math.fround(baseRow[j]! * (1 + rng.int(-4, 4) * 2 ** -23));
    for (const sim of sims) {
      agree({ q: Float64Array.from(rng.f32(6 * dn)), keys: close, n: nn, d: dn, B: 6, k }, sim);
      agree({ q: qNear, keys: near, n, d, B: 1, k }, sim);
      agree({ q: Float64Array.from(rng.f32(2 * d)), keys: tiny, n, d, B: 2, k }, sim);
      agree({ q: Float64Array.from(rng.f32(2 * d)), keys: subnormal, n, d, B: 2, k }, sim);
      agree({ q: Float64Array.from(rng.f32(2 * d)).map((v) => v * 2 ** -130), keys: rng.f32(n * d), n, d, B: 2, k }, sim);
      agree({ q: Float64Array.of(...rng.f32(d), 0, 0, 0, 0), keys: zeros, n, d, B: 2, k }, sim);
      agree({ q: Float64Array.from(rng.f32(2 * d)), keys: huge, n, d, B: 2, k }, sim);
      agree({ q: Float64Array.from(rng.f32(2 * d)).map((v) => v * 2 ** 70), keys: rng.f32(n * d), n, d, B: 2, k }, sim);
    }
  });
});

describe('held keys: attacks and options', () => {
  it('the swap that exact proofs without held keys accept is refused with SELECTION_MISMATCH', async () => {
    const rng = new Rng(21);
    const n = 300, d = 16, k = 8, B = 3;
    const { model, layer } = layerModel(rng, { n, d, k, sim: 'cosine', normalize: true, steps: 2 });
    const ghost = await pinGhost((await model.ghost()).bytes);
    const x = rng.f32(B * d);
    const honest = await model.prove(x, { revealKeys: 'all' });
    const p = clone(honest.proof);
    const K = layer.keys as SparseTensor;
    // Input 0, final stage: swap its last id for one outside the top-k; rebuild the values block and the output honestly.
    const st = p.layers[0]!.stages[1]!;
    let other = 0;
    while (st.subarray(0, k).includes(other)) other++;
    st[k - 1] = other;
    const valIds = Uint32Array.from(new Set(st)).sort();
    const vp = layer.values.prove(valIds);
    p.layers[0]!.blocks[1] = { tensor: 1, dim: d, all: false, ids: valIds, kinds: new Uint8Array(valIds.length), payload: Array.from(valIds, (_, i) => vp.leaves.slice(i * d, (i + 1) * d)), hashes: vp.proof };
    for (let b = 0; b < B; b++) {
      let q = cstate(x, b * d, d, true);
      for (let s = 0; s < 2; s++) {
        const ids = p.layers[0]!.stages[s]!.subarray(b * k, (b + 1) * k);
        const keys = K.gather(ids);
        const sc = Float64Array.from(ids, (_, i) => csimilarity('cosine', q, keys, i * d, d));
        q = cmix(csoftmax(sc, layer.beta), (s === 1 ? layer.values : K).gather(ids), Array.from(ids, (_, i) => i * d), d);
      }
      p.output.data.set(Float32Array.from(q), b * d);
    }
    expect(await reason(verifyForward(ghost, p))).toBe('SELECTION_MISMATCH');
    // The same forgery with the keys revealed only at the ids (the mode off) is accepted: its selection is not proven.
    const keyIds = Uint32Array.from(new Set([...p.layers[0]!.stages[0]!, ...st])).sort();
    const kp = K.prove(keyIds);
    p.layers[0]!.blocks[0] = { tensor: 0, dim: d, all: false, ids: keyIds, kinds: new Uint8Array(keyIds.length), payload: Array.from(keyIds, (_, i) => kp.leaves.slice(i * d, (i + 1) * d)), hashes: kp.proof };
    expect(await reason(verifyForward(ghost, p))).toBe('ACCEPTED');
    expect(await reason(verifyForward(ghost, p, { requireSelection: true }))).toBe('SELECTION_UNPROVEN');
  });

  it('the second proof sends the keys as held markers (2 bits a key) and is small', async () => {
    const rng = new Rng(22);
    const n = 2048, d = 64, k = 16;
    const { model } = layerModel(rng, { n, d, k, sim: 'ip' });
    const ghost = await pinGhost((await model.ghost()).bytes);
    const mirror = new PatternCache(), cache = new PatternCache();
    const x = rng.f32(2 * d);
    const first = await model.prove(x, { revealKeys: 'all', cache: mirror });
    expect(first.bytes.length).toBeGreaterThan(n * d * 4);
    expect(first.proof.layers[0]!.blocks[0]!.hashes.length).toBe(0);
    await verifyForward(ghost, first.bytes, { cache, requireSelection: true });
    const second = await model.prove(rng.f32(2 * d), { revealKeys: 'all', cache: mirror });
    const kb = second.proof.layers[0]!.blocks[0]!;
    expect(kb.all).toBe(true);
    expect(kb.kinds.every((t) => t === RowKind.Held)).toBe(true);
    expect(kb.hashes.length).toBe(0);
    // 2 bits a key (512 bytes for 2,048) plus the values' rows and paths: far below the 512 KiB of keys.
    expect(second.bytes.length).toBeLessThan(n / 4 + 16 * 1024);
    await verifyForward(ghost, second.bytes, { cache, requireSelection: true });
    // Without the cache the held keys are not there.
    expect(await reason(verifyForward(ghost, second.bytes))).toBe('NOT_HELD');
  });

  it('requireSelection refuses an exact or HNSW layer proved without its keys, and accepts product keys', async () => {
    const rng = new Rng(23);
    const n = 200, d = 8;
    const { model } = layerModel(rng, { n, d, k: 4, sim: 'ip' });
    const ghost = await pinGhost((await model.ghost()).bytes);
    const x = rng.f32(d);
    const plain = await model.prove(x);
    expect(await reason(verifyForward(ghost, plain.bytes))).toBe('ACCEPTED');
    expect(await reason(verifyForward(ghost, plain.bytes, { requireSelection: true }))).toBe('SELECTION_UNPROVEN');
    expect(await reason(verifyForward(ghost, (await model.prove(x, { revealKeys: [0] })).bytes, { requireSelection: true }))).toBe('ACCEPTED');
    // HNSW keeps the graph's selection: 'all' does not reveal its keys, so requireSelection refuses it.
    const hk = SparseTensor.fromArray(rng.f32(n * d), d);
    await hk.buildHnsw({ metric: 'ip', M: 8, efConstruction: 40 });
    const hm = new Model([new HopfieldLookup({ keys: hk, values: SparseTensor.fromArray(rng.f32(n * d), d), k: 4, index: 'hnsw' })]);
    const hg = await pinGhost((await hm.ghost()).bytes);
    expect(await reason(verifyForward(hg, (await hm.prove(x, { revealKeys: 'all' })).bytes, { requireSelection: true }))).toBe('SELECTION_UNPROVEN');
    await expect(hm.prove(x, { revealKeys: [0] })).rejects.toThrow(InvalidArgumentError);
    const pk = new Model([new HopfieldLookup({ keys: ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(16 * 4), 4), SparseTensor.fromArray(rng.f32(16 * 4), 4)), values: SparseTensor.fromArray(rng.f32(256 * 3), 3), k: 4 })]);
    const pg = await pinGhost((await pk.ghost()).bytes);
    expect(await reason(verifyForward(pg, (await pk.prove(x, { revealKeys: 'all' })).bytes, { requireSelection: true }))).toBe('ACCEPTED');
    await expect(pk.prove(x, { revealKeys: [0] })).rejects.toThrow(InvalidArgumentError);
    await expect(model.prove(x, { revealKeys: [1] })).rejects.toThrow(InvalidArgumentError);
  });

  it('the budget charges the N x d re-scoring per input and stage and refuses it before the work', async () => {
    const rng = new Rng(24);
    const n = 4096, d = 32, k = 8, B = 6, S = 2;
    const { model } = layerModel(rng, { n, d, k, sim: 'cosine', steps: S });
    const ghost = await pinGhost((await model.ghost()).bytes);
    const r = await model.prove(rng.f32(B * d), { revealKeys: 'all' });
    const v = await verifyForward(ghost, r.bytes);
    // What re-deriving the selection costs: every key per input and stage (and the cosine norms once).
    const selection = B * S * n * (d + 16) + n * d;
    expect(v.cost.work).toBeGreaterThan(selection);
    const cache = new PatternCache();
    const err = await verifyForward(ghost, r.bytes, { cache, limits: { maxWork: v.cost.work - selection / 2 } }).catch((e: Error) => e);
    expect(await reason(Promise.reject(err))).toBe('BUDGET');
    expect((err as Error).message).toMatch(/exact top-8 of 4096 keys/);
    // Refused before anything was resolved: nothing reached the cache.
    expect(cache.size).toBe(0);
    expect(await reason(verifyForward(ghost, r.bytes, { limits: { maxWork: v.cost.work } }))).toBe('ACCEPTED');
  });

  it('over HTTP: a requireSelection client gets proofs with every key, then held keys in a session; a bad X-Ghost-Reveal-Keys is 400', async () => {
    const rng = new Rng(25);
    const n = 1024, d = 32;
    const { model } = layerModel(rng, { n, d, k: 8, sim: 'cosine', normalize: true });
    const server = await ProverServer.fromModel(model, { sessions: 2 });
    const url = await server.listen();
    try {
      const digest = (await model.ghost()).digest;
      const held = await ProverClient.connect(url, digest, { requireSelection: true, session: true });
      const first = await held.forward(rng.f32(2 * d));
      expect(first.proof.length).toBeGreaterThan(n * d * 4);
      const second = await held.forward(rng.f32(2 * d));
      expect(second.proof.length).toBeLessThan(n / 4 + 8192);
      // A plain client gets plain proofs (its selection unproven); they fail requireSelection.
      const plain = await ProverClient.connect(url, digest);
      const p = await plain.forward(rng.f32(d));
      expect(p.proof.length).toBeLessThan(n * d);
      expect(await reason(verifyForward(await pinGhost((await model.ghost()).bytes), p.proof, { requireSelection: true }))).toBe('SELECTION_UNPROVEN');
      const res = await fetch(`${url}/forward`, { method: 'POST', headers: { 'X-Ghost-Reveal-Keys': 'some' }, body: Buffer.from(encodeForwardRequest({ kind: 'f32', rows: 1, cols: d, data: rng.f32(d) })) });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: string }).error).toBe('BAD_REVEAL_KEYS');
    } finally {
      await server.close();
    }
  });
});
