/**
 * Incremental decoding with a KV cache (docs/lm.md, "Decoding with a KV cache";
 * docs/attention.md, "Decoding"): the cached exact decode against the whole forward
 * (logits bit for bit, the same generated tokens), the HNSW selection's recall against
 * the exact one on random keys, the switch from the exact scan to the index
 * mid-generation, a full context, and hostile options and native arguments.
 */
import { describe, expect, it } from 'vitest';

import {
  AttentionDecoder,
  Decoder,
  InvalidArgumentError,
  OutOfRangeError,
  SparseSelfAttention,
  UnsupportedError,
  generate,
  languageModel,
} from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { seededRandom } from '../lib/shared/random.js';

function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
}

function randomRows(n: number, d: number, seed: number): Float32Array {
  const r = seededRandom(seed);
  const x = new Float32Array(n * d);
  for (let i = 0; i < x.length; i++) x[i] = 2 * r() - 1;
  return x;
}

/** Mean over heads and queries of |index ∩ exact| / |exact| (ids per head: k, NO_KEY padded). */
function recallOf(exact: Uint32Array, got: Uint32Array): number {
  const want = new Set(Array.from(exact).filter((id) => id !== 0xffffffff));
  let hit = 0;
  for (const id of got) if (want.has(id)) hit++;
  return hit / want.size;
}

describe('cached decoding (exact selection)', () => {
  it("the decode kernel gives the last row of the full top-k forward bit for bit (ids, weights, output)", async () => {
    // The same K and V: the exact selection, its softmax and mix are topk_attention_forward's.
    for (const [L, H, dk, k] of [[1, 2, 16, 8], [5, 2, 16, 8], [16, 4, 16, 8], [17, 1, 64, 32], [65, 2, 64, 32], [256, 2, 32, 32], [257, 3, 16, 4], [700, 2, 64, 32]] as const) {
      const D = H * dk, q = randomRows(L, D, L), k2 = randomRows(L, D, L + 1), v = randomRows(L, D, L + 2), scale = 1 / Math.sqrt(dk);
      const full = await native().attentionForwardAsync(L, H, dk, Math.min(k, L), true, scale, undefined, q, k2, v);
      const kp = new Float32Array(Math.ceil(L / 256) * 256 * D);
      for (let j = 0; j < L; j++)
        for (let h = 0; h < H; h++)
          for (let t = 0; t < dk; t++) kp[((Math.floor(j / 256) * H + h) * dk + t) * 256 + (j % 256)] = k2[j * D + h * dk + t]!;
      const dec = native().attentionDecode(L, H, dk, k, scale, q.subarray((L - 1) * D), kp, v);
      expect(bits(dec.out)).toEqual(bits(full.out.subarray((L - 1) * D)));
      const kk = Math.min(k, L);
      for (let h = 0; h < H; h++) {
        const row = (h * L + L - 1) * kk;
        expect(Array.from(dec.ids.subarray(h * k, h * k + kk))).toEqual(Array.from(full.ids!.subarray(row, row + kk)));
        expect(bits(dec.weights.subarray(h * k, h * k + kk))).toEqual(bits(full.weights!.subarray(row, row + kk)));
        expect(Array.from(dec.ids.subarray(h * k + kk, (h + 1) * k)).every((id) => id === 0xffffffff)).toBe(true);
      }
    }
  });

  it('generates the same 300 tokens as uncached generate, each step\'s logits within 1e-5 of the whole forward', async () => {
    // Top-8 of up to 304 keys (a real selection), and a product-key memory layer (row-wise).
    // Not bit for bit: the whole forward's score tiles take a vector or a scalar path by the
    // tile's width, which depends on the sequence length, so its earlier rows' keys and values
    // move in the last bits as the sequence grows (docs/lm.md, "Decoding with a KV cache").
    const model = languageModel({ context: 320, dim: 64, layers: 2, heads: 4, hidden: 96, attentionK: 8, memory: { layers: [1], subKeys: 8, k: 4, heads: 2, keyDim: 16 }, seed: 3 });
    const prompt = [84, 104, 101, 32];
    const opts = { tokens: 300, temperature: 0.9, topP: 0.95, seed: 7, stopAtEndOfDocument: false };
    const cached = await generate(model, prompt, { ...opts, kvCache: true });
    const plain = await generate(model, prompt, opts);
    expect(cached.tokens.length).toBe(300);
    expect(Array.from(cached.tokens)).toEqual(Array.from(plain.tokens));
    const seq = [...prompt, ...cached.tokens];
    const dec = new Decoder(model);
    let compared = 0, worst = 0;
    for (let i = 0; i < seq.length; i++) {
      const got = await dec.step(seq[i]!);
      if (i % 3 !== 0 && i < seq.length - 4) continue; // every third position (and the last ones) keeps the test short
      const full = await model.forward(Uint32Array.from(seq.slice(0, i + 1)));
      const last = full.subarray(i * 256, (i + 1) * 256);
      for (let t = 0; t < 256; t++) worst = Math.max(worst, Math.abs(got[t]! - last[t]!));
      compared++;
    }
    expect(compared).toBeGreaterThan(100);
    expect(worst).toBeLessThanOrEqual(1e-5);
    expect(dec.stats()).toMatchObject({ length: seq.length, attention: [{ exactSteps: seq.length, indexedSteps: 0 }, { exactSteps: seq.length, indexedSteps: 0 }] });
  }, 120_000);

  it('a dense layer decodes as its dense forward (within f32 rounding)', async () => {
    const layer = new SparseSelfAttention({ heads: 2, k: 1, causal: true, mode: 'dense' });
    const n = 40, dIn = 32, x = randomRows(n, dIn, 5);
    const full = (await layer.forward(x, dIn)).y;
    const dec = new AttentionDecoder(layer, { dIn });
    for (let i = 0; i < n; i++) {
      const y = await dec.step(x.subarray(i * dIn, (i + 1) * dIn));
      for (let t = 0; t < dIn; t++) expect(Math.abs(y[t]! - full[i * dIn + t]!)).toBeLessThan(1e-5);
    }
  });
});

describe('indexed selection', () => {
  it('HNSW recall@32 against the exact scan on 4,096 random keys is at least 0.9 (ef 256)', async () => {
    const heads = 4, dk = 64, D = heads * dk;
    const layer = new SparseSelfAttention({ heads, k: 32, causal: true });
    const dec = new AttentionDecoder(layer, { dIn: D, index: 'hnsw', ef: 256 });
    await dec.prefill(randomRows(4096, D, 11));
    const queries = randomRows(24, D, 12);
    let sum = 0;
    for (let i = 0; i < 24; i++) {
      const q = queries.subarray(i * D, (i + 1) * D);
      const exact = dec.exactSelection(q), got = dec.indexSelection(q)!;
      for (let h = 0; h < heads; h++) sum += recallOf(exact.subarray(h * 32, (h + 1) * 32), got.subarray(h * 32, (h + 1) * 32));
    }
    const recall = sum / (24 * heads);
    expect(recall).toBeGreaterThanOrEqual(0.9);
  }, 60_000);

  it("'auto' scans exactly up to the threshold, then selects through the sketch mid-generation: every step the exact decoder's bits, across an amortised refit", async () => {
    const model = languageModel({ context: 200, dim: 64, layers: 2, heads: 2, hidden: 64, attentionK: 8, seed: 5 });
    const seq = Array.from({ length: 180 }, (_, i) => (i * 37 + 11) % 251);
    const exact = new Decoder(model);
    const auto = new Decoder(model, { index: 'auto', indexThreshold: 64 });
    let refitsSeen = 0;
    for (let i = 0; i < seq.length; i++) {
      const a = await exact.step(seq[i]!), b = await auto.step(seq[i]!);
      expect(bits(b)).toEqual(bits(a)); // the scan up to 64 keys, then the sketch: the same selection
      refitsSeen = auto.stats().attention[0]!.sketchRefits;
      if (i === 128) expect(refitsSeen).toBe(0); // fitted at 65 keys; the cache doubles at 130: a refit starts
    }
    // The refit (one head's basis a step, then 32 earlier keys a step) finished well before 180.
    expect(refitsSeen).toBe(1);
    for (const st of auto.stats().attention) {
      expect(st).toMatchObject({ length: 180, indexed: true, exactSteps: 64, indexedSteps: 116, sketchCapped: 0, sketchRefits: 1 });
      expect(st.sketchRanks).toHaveLength(2);
      expect(st.sketchCandidates).toBeGreaterThan(0);
    }
  }, 60_000);
});

describe('a full context', () => {
  it('is OutOfRangeError at the step past the positions, and before any work in generate', async () => {
    const model = languageModel({ context: 16, dim: 16, layers: 1, heads: 2, hidden: 16, seed: 2 });
    const dec = new Decoder(model);
    await dec.append(Array.from({ length: 16 }, (_, i) => i));
    await expect(dec.step(1)).rejects.toThrow(/the context is full: 16 of 16/);
    expect(dec.length).toBe(16);
    await expect(new Decoder(model).append(new Array(17).fill(1))).rejects.toBeInstanceOf(OutOfRangeError);
    // The prompt and tokens - 1 must fit: 10 + 7 - 1 = 16 does, 10 + 8 - 1 does not.
    const ok = await generate(model, new Array(10).fill(65), { tokens: 7, kvCache: true, stopAtEndOfDocument: false, temperature: 0 });
    expect(ok.tokens.length).toBe(7);
    let made = 0;
    await expect(generate(model, new Array(10).fill(65), { tokens: 8, kvCache: true, stopAtEndOfDocument: false, onToken: () => void made++ })).rejects.toBeInstanceOf(OutOfRangeError);
    expect(made).toBe(0); // refused before any work
    // Without the cache the window slides, as before.
    expect((await generate(model, new Array(10).fill(65), { tokens: 8, stopAtEndOfDocument: false })).tokens.length).toBe(8);
  });
});

describe('hostile options and arguments', () => {
  const model = languageModel({ context: 32, dim: 16, layers: 1, heads: 2, hidden: 16, attentionK: 4, seed: 2 });
  it('refuses bad decoder and generate options with typed errors', async () => {
    expect(() => new Decoder(model, { index: 'ivf' as never })).toThrow(InvalidArgumentError);
    expect(() => new Decoder(model, { index: 'exact', ef: 64 })).toThrow(InvalidArgumentError);
    expect(() => new Decoder(model, { index: 'hnsw', indexThreshold: 64 })).toThrow(InvalidArgumentError);
    expect(() => new Decoder(model, { index: 'auto', indexThreshold: 2 })).toThrow(OutOfRangeError); // below k
    expect(() => new Decoder(model, { index: 'auto', ef: 64 })).toThrow(InvalidArgumentError); // HNSW's, not the sketch's
    expect(() => new Decoder(model, { index: 'auto', maxScored: 2 })).toThrow(OutOfRangeError); // below k
    expect(() => new Decoder(model, { index: 'hnsw', rank: 2 })).toThrow(InvalidArgumentError);
    expect(() => new Decoder(model, { index: 'hnsw', ef: 2 })).toThrow(OutOfRangeError); // below k
    expect(() => new Decoder(model, { index: 'hnsw', ef: 1.5 })).toThrow(InvalidArgumentError);
    expect(() => new Decoder(model, { maxLength: 64 })).toThrow(InvalidArgumentError); // the positions fix it
    expect(() => new Decoder(model, { bogus: 1 } as never)).toThrow(InvalidArgumentError);
    expect(() => new AttentionDecoder(new SparseSelfAttention({ heads: 2, k: 4 }), { dIn: 16 })).toThrow(InvalidArgumentError); // not causal
    expect(() => new AttentionDecoder(new SparseSelfAttention({ heads: 2, k: 4, causal: true }))).toThrow(InvalidArgumentError); // no width
    const dec = new Decoder(model);
    await expect(dec.step(256)).rejects.toBeInstanceOf(OutOfRangeError); // not a byte of the vocabulary
    await expect(dec.step(new Float32Array(16))).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(generate(model, [65], { tokens: 2, index: 'hnsw' })).rejects.toBeInstanceOf(InvalidArgumentError); // without kvCache
    await expect(generate(model, [65], { tokens: 2, kvCache: 'yes' as never })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(generate(model, [65], { tokens: 2, kvCache: true, index: 'hnsw', prove: true })).rejects.toBeInstanceOf(UnsupportedError);
  });

  it('the native decode checks its arguments before reading', () => {
    const H = 2, dk = 4, L = 3, D = H * dk;
    const kp = new Float32Array(256 * D), v = new Float32Array(L * D), q = new Float32Array(D);
    const ok = native().attentionDecode(L, H, dk, 2, 0.5, q, kp, v);
    expect(ok.ids.length).toBe(4);
    expect(() => native().attentionDecode(L, H, dk, 2, 0.5, q, kp.subarray(0, 100), v)).toThrow(/fewer than L keys/);
    expect(() => native().attentionDecode(L, H, dk, 2, 0.5, q, kp, v.subarray(0, 8))).toThrow(/fewer than L rows/);
    expect(() => native().attentionDecode(L, H, dk, 2, 0.5, new Float32Array(D).fill(NaN), kp, v)).toThrow(/not finite/);
    const sel = (ids: number[], scores: number[]) => () => native().attentionDecode(L, H, dk, 2, 0.5, q, kp, v, Uint32Array.from(ids), Float32Array.from(scores));
    expect(sel([0, 1, 2, 0xffffffff], [2, 1, 3, 0])).not.toThrow();
    expect(sel([0, 3, 2, 1], [2, 1, 3, 0])).toThrow(/>= L/);
    expect(sel([0, 1, 2, 1], [1, 2, 3, 0])).toThrow(/best first/);
    expect(sel([0xffffffff, 1, 2, 1], [1, 0, 3, 0])).toThrow(/padding must come last|selected no key/);
    expect(sel([0, 1, 2, 1], [1, NaN, 3, 0])).toThrow(/not finite/);
    expect(sel([0, 1], [1, 0])).toThrow(/heads \* k/);
  });
});
