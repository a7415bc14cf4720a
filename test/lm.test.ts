/**
 * Byte-level language models (docs/lm.md): the corpus split, the model's parameter
 * count against its cost formula, merged gradients against a float64 sum, the sampler
 * against a brute-force reference, a short training run on real English that must get
 * well below the unigram baseline, an exact resume, and generation whose every token's
 * proof and sampling verify (and whose forgeries are refused). The CLI's train-lm and
 * generate --prove run end to end.
 *
 * The corpus is Debian's `fortunes` package (.ci/run installs it); without it these
 * tests are skipped outside CI and fail in CI.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  END_OF_DOCUMENT,
  Model,
  PatternCache,
  SparseTensor,
  generate,
  languageModel,
  languageModelCost,
  loadCorpus,
  resolveLanguageModelConfig,
  splitDocuments,
  trainLanguageModel,
  unigramBitsPerByte,
  type Corpus,
  type Gradients,
} from '../lib/index.js';
import { ProverClient, ProverServer } from '../lib/serve/index.js';
import { FORTUNES_DIR } from '../lib/model/lm/corpus.js';
import { stepOffsets, sumGradients } from '../lib/model/lm/train.js';
import { sampleToken, verifyGeneration } from '../lib/verify/generation.js';
import { reason } from './helpers/reason.js';
import { runCli } from './helpers/cli.js';
import { Rng } from './helpers/rng.js';

const available = existsSync(FORTUNES_DIR) || !!process.env.CI;
const dir = mkdtempSync(join(tmpdir(), 'gt-lm-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('corpus', () => {
  it('splits text into documents at % lines, else at blank lines', () => {
    expect(splitDocuments('a\nb\n%\nc\n%\n\n%\nd')).toEqual(['a\nb', 'c', 'd']);
    expect(splitDocuments('one\ntwo\n\nthree\n\n\nfour  \n')).toEqual(['one\ntwo', 'three', 'four']);
    expect(splitDocuments('')).toEqual([]);
  });

  it('a file source: split by document with a fixed seed, each document once, ended by byte 0', async () => {
    const docs = Array.from({ length: 200 }, (_, i) => `document ${i}: ${'x'.repeat(i % 7)}`);
    const path = join(dir, 'docs.txt');
    writeFileSync(path, docs.join('\n%\n'));
    const a = await loadCorpus({ source: path, validationFraction: 0.2, seed: 3 });
    const b = await loadCorpus({ source: path, validationFraction: 0.2, seed: 3 });
    const c = await loadCorpus({ source: path, validationFraction: 0.2, seed: 4 });
    expect(Buffer.from(a.validation).equals(Buffer.from(b.validation))).toBe(true);
    expect(Buffer.from(a.validation).equals(Buffer.from(c.validation))).toBe(false);
    const parts = (u: Uint8Array): string[] => new TextDecoder().decode(u).split('\0').slice(0, -1);
    const tr = parts(a.train), va = parts(a.validation);
    expect(a.train[a.train.length - 1]).toBe(END_OF_DOCUMENT);
    expect(tr.length + va.length).toBe(200);
    expect([...tr, ...va].sort()).toEqual(docs.map((d) => d.trimEnd()).sort()); // trailing white space is not kept
    expect(va.length).toBeGreaterThan(20);
    expect(va.length).toBeLessThan(60);
    expect(a.documents).toEqual({ train: tr.length, validation: va.length });
  });

  it('refuses what it cannot read, with typed errors', async () => {
    expect(await reason(loadCorpus({ source: join(dir, 'missing.txt') }))).toBe('IO');
    writeFileSync(join(dir, 'one.txt'), 'only one document');
    await expect(loadCorpus({ source: join(dir, 'one.txt') })).rejects.toThrow(/at least 2/);
    await expect(loadCorpus({ validationFraction: 0.9 })).rejects.toThrow(/validationFraction/);
    await expect(loadCorpus({ sauce: 'x' } as never)).rejects.toThrow(/sauce/);
  });

  it('the unigram baseline is the cross-entropy of the byte frequencies', () => {
    const ref = new TextEncoder().encode('aab');
    // add-one over 256: p(a) = 3 / 259, p(b) = 2 / 259.
    expect(unigramBitsPerByte(ref, new TextEncoder().encode('ab'))).toBeCloseTo((-Math.log2(3 / 259) - Math.log2(2 / 259)) / 2, 12);
  });
});

describe('the model', () => {
  it('languageModelCost counts the built model\'s parameters exactly (dense and with a memory layer)', () => {
    for (const config of [
      { context: 16, dim: 16, layers: 2, heads: 2, hidden: 24 },
      { context: 8, dim: 8, layers: 3, heads: 2, hidden: 12, memory: { layers: [1], subKeys: 4, k: 3, heads: 2, keyDim: 4 } },
    ]) {
      const model = languageModel(config);
      const count = model.tensors.reduce((n, t: SparseTensor) => n + t.size * t.dim, 0);
      const cost = languageModelCost(config);
      expect(cost.parameters).toBe(count);
      expect(cost.trainingFlops).toBe(6 * cost.forwardMacs);
      if (config.memory) expect(cost.memoryParameters).toBe(16 * 8);
    }
  });

  it('attention cost: k below the context lowers only the mix term', () => {
    const full = languageModelCost({ context: 64, dim: 16, layers: 1, heads: 2 });
    const top = languageModelCost({ context: 64, dim: 16, layers: 1, heads: 2, attentionK: 8 });
    // Mix term: D * mean(min(k, i + 1)) against D * mean(i + 1).
    let all = 0, some = 0;
    for (let i = 0; i < 64; i++) {
      all += i + 1;
      some += Math.min(8, i + 1);
    }
    expect(full.forwardMacs - top.forwardMacs).toBeCloseTo((16 * (all - some)) / 64, 9);
  });

  it('configs are checked', () => {
    expect(() => resolveLanguageModelConfig({ dim: 10, heads: 4 })).toThrow(/multiple/);
    expect(() => resolveLanguageModelConfig({ layers: 2, memory: { layers: [2], subKeys: 4 } })).toThrow(/memory.layers/);
    expect(() => resolveLanguageModelConfig({ memory: { layers: [0], subKeys: 4, keyDim: 5 } })).toThrow(/even/);
    expect(() => resolveLanguageModelConfig({ widht: 3 } as never)).toThrow(/widht/);
  });
});

describe('summed gradients', () => {
  it('each distinct row once, the sum over windows times the scale (against a float64 sum)', () => {
    const rng = new Rng(5);
    const t = SparseTensor.fromArray(rng.f32(10 * 3), 3);
    const param = new Float32Array(4);
    const list: Gradients[] = Array.from({ length: 3 }, () => {
      const ids = Uint32Array.from({ length: 6 }, () => rng.int(0, 9));
      return { sparse: [{ tensor: t, ids, grads: rng.f32(18) }], dense: [{ param, grad: rng.f32(4) }], of: () => null };
    });
    const m = sumGradients(list, 0.5);
    const ref = new Map<number, Float64Array>();
    for (const g of list) {
      const s = g.sparse[0]!;
      (s.ids as Uint32Array).forEach((id, r) => {
        const acc = ref.get(id) ?? new Float64Array(3);
        for (let j = 0; j < 3; j++) acc[j]! += s.grads[r * 3 + j]!;
        ref.set(id, acc);
      });
    }
    const s = m.sparse[0]!;
    expect([...s.ids].sort((a, b) => a - b)).toEqual([...ref.keys()].sort((a, b) => a - b));
    (s.ids as Uint32Array).forEach((id, r) => {
      for (let j = 0; j < 3; j++) expect(s.grads[r * 3 + j]).toBeCloseTo(0.5 * ref.get(id)![j]!, 5);
    });
    for (let j = 0; j < 4; j++) expect(m.dense[0]!.grad[j]).toBeCloseTo(0.5 * list.reduce((a, g) => a + g.dense[0]!.grad[j]!, 0), 5);
  });

  it('a table beyond 2^22 rows (kept in a Map, not a slot table) sums the same', () => {
    const rng = new Rng(6);
    const big = SparseTensor.fromArray(new Float32Array(2 ** 22 + 5), 1);
    const ids = [2 ** 22 + 4, 3, 2 ** 22 + 4, 0, 3];
    const list: Gradients[] = [0, 1].map(() => ({ sparse: [{ tensor: big, ids: Uint32Array.from(ids), grads: rng.f32(5) }], dense: [], of: () => null }));
    const m = sumGradients(list, 1).sparse[0]!;
    expect(Array.from(m.ids)).toEqual([2 ** 22 + 4, 3, 0]);
    const want = [0, 0, 0];
    for (const g of list) ids.forEach((id, r) => (want[[2 ** 22 + 4, 3, 0].indexOf(id)]! += g.sparse[0]!.grads[r]!));
    want.forEach((w, i) => expect(m.grads[i]).toBeCloseTo(w, 5));
  });

  it('step offsets are a function of the seed and the step, inside the text', () => {
    const a = stepOffsets(1, 7, 16, 1000, 64), b = stepOffsets(1, 7, 16, 1000, 64);
    expect(a).toEqual(b);
    expect(stepOffsets(1, 8, 16, 1000, 64)).not.toEqual(a);
    expect(stepOffsets(2, 7, 16, 1000, 64)).not.toEqual(a);
    for (const o of a) expect(o >= 0 && o + 65 <= 1000).toBe(true);
    expect(() => stepOffsets(1, 0, 1, 60, 64)).toThrow(/shorter/);
  });
});

describe('the sampler', () => {
  /** A reference: probabilities by sorting the f64 weights, the nucleus, the inverse CDF. */
  function reference(logits: Float32Array, T: number, topP: number, u: number): number {
    if (T === 0) return logits.indexOf(Math.max(...logits));
    const max = Math.max(...logits);
    const w = Array.from(logits, (l, i) => ({ i, p: Math.exp((l - max) / T) })).sort((a, b) => b.p - a.p || a.i - b.i);
    const total = w.reduce((s, x) => s + x.p, 0);
    const kept: typeof w = [];
    let mass = 0;
    for (const x of w) {
      if (kept.length > 0 && mass >= topP * total) break;
      kept.push(x);
      mass += x.p;
    }
    let run = 0;
    for (const x of kept) if ((run += x.p) > u * mass) return x.i;
    return kept[kept.length - 1]!.i;
  }

  it('matches the reference on random logits, temperatures, top-p and draws', () => {
    const rng = new Rng(9);
    for (let trial = 0; trial < 500; trial++) {
      const logits = rng.f32(rng.int(1, 40), 4);
      if (trial % 5 === 0) logits[rng.int(0, logits.length - 1)] = logits[0]!; // ties
      const T = [0, 0.5, 1, 2][trial % 4]!, p = [1, 0.9, 0.3, 1e-6][trial % 7 % 4]!, u = rng.next();
      expect(sampleToken(logits, { temperature: T, topP: p }, u)).toBe(reference(logits, T, p, u));
    }
  });

  it('temperature 0 and a tiny top-p give the most likely token; bad logits are refused', () => {
    const l = Float32Array.of(0.1, 3, 3, -1);
    expect(sampleToken(l, { temperature: 0 }, 0.99)).toBe(1);
    expect(sampleToken(l, { topP: 1e-9 }, 0.99)).toBe(1);
    expect(() => sampleToken(Float32Array.of(1, NaN), {}, 0.5)).toThrow(/NaN/);
    expect(() => sampleToken(new Float32Array(0), {}, 0.5)).toThrow(/no logits/);
    expect(() => sampleToken(l, { temperature: -1 }, 0.5)).toThrow(/temperature/);
  });
});

describe.skipIf(!available)('training on fortunes', () => {
  let corpus: Corpus;
  const config = { context: 32, dim: 32, layers: 2, heads: 2, hidden: 64 };

  it('a short run gets well below the unigram baseline', async () => {
    corpus = await loadCorpus({ source: 'fortunes' });
    expect(corpus.documents.validation).toBeGreaterThan(100);
    const unigram = unigramBitsPerByte(corpus.train, corpus.validation);
    const records: string[] = [];
    const r = await trainLanguageModel(join(dir, 'run'), corpus, {
      model: config, steps: 150, batch: 8, lr: 1e-2, evalEvery: 50, evalBytes: 4096, progress: false, onRecord: (x) => records.push(x.type),
    });
    expect(r.steps).toBe(150);
    expect(r.valBpb).toBeLessThan(unigram - 0.6);
    expect(r.trainBpb).toBeLessThan(unigram - 0.6);
    expect(records.filter((x) => x === 'eval').length).toBe(3);
    // The log, the plot and the config are on disk.
    const lines = readFileSync(join(dir, 'run', 'lm-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; step: number });
    expect(lines.filter((l) => l.type === 'step').map((l) => l.step)).toEqual(Array.from({ length: 15 }, (_, i) => 10 * (i + 1)));
    expect(readFileSync(join(dir, 'run', 'loss.svg'), 'utf8')).toMatch(/^<svg[^]*<polyline[^]*<circle/);
  }, 240_000);

  it('a run stopped and resumed takes the same steps as one that never stopped, bit for bit', async () => {
    const opts = { model: { ...config, layers: 1 }, steps: 12, batch: 2, lr: 1e-2, evalEvery: 100, evalBytes: 512, checkpointEvery: 5, logEvery: 1, progress: false } as const;
    await trainLanguageModel(join(dir, 'straight'), corpus, opts);
    const ac = new AbortController();
    const first = await trainLanguageModel(join(dir, 'resumed'), corpus, { ...opts, signal: ac.signal, onRecord: (x) => x.step === 7 && ac.abort() });
    expect(first.stopped).toBe(true);
    expect(first.steps).toBe(7);
    await expect(trainLanguageModel(join(dir, 'resumed'), corpus, { ...opts, steps: 13 })).rejects.toThrow(/resume it with steps 12/);
    const second = await trainLanguageModel(join(dir, 'resumed'), corpus, opts);
    expect(second.steps).toBe(12);
    const a = await Model.load(join(dir, 'straight')), b = await Model.load(join(dir, 'resumed'));
    try {
      expect(Buffer.from(b.ghost.digest).equals(Buffer.from(a.ghost.digest))).toBe(true);
    } finally {
      a.model.close();
      b.model.close();
    }
    // The resumed log has each step once.
    const steps = readFileSync(join(dir, 'resumed', 'lm-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; step: number }).filter((l) => l.type === 'step').map((l) => l.step);
    expect(steps).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
  }, 120_000);

  it('generates with a proof per token that verifies; a changed token, context or proof is refused', async () => {
    const { model, ghost } = await Model.load(join(dir, 'run'), { readOnly: true });
    try {
      const prompt = new TextEncoder().encode('Th');
      const g = await generate(model, prompt, { tokens: 6, temperature: 0.8, topP: 0.95, seed: 4, prove: true, stopAtEndOfDocument: false });
      expect(g.tokens.length).toBe(6);
      expect(g.proofs.length).toBe(6);
      const logits = await verifyGeneration(ghost, g);
      expect(logits.length).toBe(6);
      // With pattern caches on both sides, later proofs carry ids for rows sent before: smaller, and they verify.
      const cached = await generate(model, prompt, { tokens: 4, temperature: 0.8, topP: 0.95, seed: 4, prove: true, cache: new PatternCache(), stopAtEndOfDocument: false });
      expect(Array.from(cached.tokens)).toEqual(Array.from(g.tokens.subarray(0, 4)));
      expect(cached.proofs[1]!.length).toBeLessThan(g.proofs[1]!.length / 4);
      await verifyGeneration(ghost, cached, { cache: new PatternCache() });
      expect(await reason(verifyGeneration(ghost, cached))).not.toBe('ACCEPTED'); // without the cache the ids mean nothing
      // Without proofs, the same seed gives the same text from the fast forward (its logits differ in the last bits at most).
      const fast = await generate(model, prompt, { tokens: 6, temperature: 0, seed: 4, stopAtEndOfDocument: false });
      const proved = await generate(model, prompt, { tokens: 6, temperature: 0, seed: 4, prove: true, stopAtEndOfDocument: false });
      expect(Array.from(fast.tokens)).toEqual(Array.from(proved.tokens));
      // Forgeries.
      const other = Uint32Array.from(g.tokens);
      other[3] = (other[3]! + 1) % 256;
      expect(await reason(verifyGeneration(ghost, { ...g, tokens: other }))).toMatch(/OUTPUT_MISMATCH|INPUT_MISMATCH/);
      expect(await reason(verifyGeneration(ghost, { ...g, seed: 5 }))).toBe('OUTPUT_MISMATCH');
      expect(await reason(verifyGeneration(ghost, { ...g, prompt: Uint32Array.from(new TextEncoder().encode('Tx')) }))).toBe('INPUT_MISMATCH');
      const swapped = [...g.proofs];
      [swapped[1], swapped[2]] = [swapped[2]!, swapped[1]!];
      expect(await reason(verifyGeneration(ghost, { ...g, proofs: swapped }))).toBe('INPUT_MISMATCH');
      const flipped = [...g.proofs];
      const p = Uint8Array.from(flipped[0]!);
      p[p.length - 9]! ^= 1;
      flipped[0] = p;
      expect(await reason(verifyGeneration(ghost, { ...g, proofs: flipped }))).not.toBe('ACCEPTED');
      // A span proof (not the whole model) does not stand for a token.
      const span = await model.prove(Uint32Array.from(prompt), { layers: 2 });
      expect(await reason(verifyGeneration(ghost, { ...g, tokens: g.tokens.slice(0, 1), proofs: [span.bytes] }))).toBe('INPUT_MISMATCH');
    } finally {
      model.close();
    }
  }, 120_000);
});

describe.skipIf(!available || !!process.env.GT_SANITIZED)('killed training', () => {
  it('train-lm killed with SIGKILL at random moments, then resumed by the same command, ends at the digest of a run never killed', async () => {
    const BIN = join(import.meta.dirname, '..', 'bin', 'ghost-tensor.mjs');
    const args = (out: string): string[] => ['train-lm', '--out', out, '--steps', '120', '--batch', '2', '--context', '16', '--dim', '16', '--layers', '1', '--heads', '2', '--eval-every', '100', '--eval-bytes', '64', '--checkpoint-every', '7', '--quiet'];
    const straight = spawnSync(process.execPath, [BIN, ...args(join(dir, 'k-straight'))], { encoding: 'utf8' });
    expect(straight.status, straight.stderr).toBe(0);
    const rng = new Rng(17);
    const out = join(dir, 'k-killed');
    const logLines = (): number => {
      try {
        return readFileSync(join(out, 'lm-log.jsonl'), 'utf8').split('\n').length - 1;
      } catch {
        return 0;
      }
    };
    let kills = 0;
    for (let attempt = 0; attempt < 12; attempt++) {
      const child = spawn(process.execPath, [BIN, ...args(out)], { stdio: 'ignore' });
      let done = false;
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => ((done = true), r(code))));
      // A kill while it starts (the run is being made or opened), or a few log lines further on.
      const early = rng.next() < 0.25;
      const target = logLines() + rng.int(1, 3);
      const t0 = Date.now();
      while (!done && (early ? Date.now() - t0 < rng.int(50, 600) : logLines() < target)) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, rng.int(0, 30)));
      if (!done) child.kill('SIGKILL');
      const code = await exited;
      if (code === 0) break;
      kills++;
    }
    expect(kills).toBeGreaterThanOrEqual(2);
    // Finish (a no-op if the last attempt did).
    const last = spawnSync(process.execPath, [BIN, ...args(out)], { encoding: 'utf8' });
    expect(last.status, last.stderr).toBe(0);
    const a = await Model.load(join(dir, 'k-straight'), { readOnly: true }), b = await Model.load(out, { readOnly: true });
    try {
      expect(Buffer.from(b.ghost.digest).toString('hex')).toBe(Buffer.from(a.ghost.digest).toString('hex'));
    } finally {
      a.model.close();
      b.model.close();
    }
  }, 240_000);
});

describe.skipIf(!available)('serving the language model', () => {
  it('the HTTP service answers a context of bytes with a proof the client verifies; its logits are the local proof\'s', async () => {
    const model = languageModel({ context: 16, dim: 16, layers: 1, heads: 2, hidden: 24, memory: { layers: [0], subKeys: 4, k: 2, heads: 2, keyDim: 8 } });
    const server = await ProverServer.fromModel(model);
    try {
      const url = await server.listen();
      const client = await ProverClient.connect(url, (await model.ghost()).digest);
      for (const text of ['T', 'The cat sat.']) {
        const ids = Uint32Array.from(new TextEncoder().encode(text));
        const served = await client.forward(ids);
        const local = await model.prove(ids);
        expect(Buffer.from(served.output.buffer, served.output.byteOffset, served.output.byteLength).equals(Buffer.from(local.output.buffer))).toBe(true);
        expect(served.output.length).toBe(ids.length * 256);
      }
    } finally {
      await server.close();
    }
  });
});

describe.skipIf(!available)('the command line', () => {
  const run = runCli;

  it('train-lm then generate --prove: the text comes out and its proofs verify', async () => {
    const out = join(dir, 'cli');
    const t = await run('train-lm', '--out', out, '--steps', '20', '--batch', '2', '--context', '16', '--dim', '16', '--layers', '1', '--heads', '2', '--memory-layers', '0', '--memory-keys', '4', '--memory-k', '2', '--memory-heads', '2', '--eval-every', '20', '--eval-bytes', '256', '--quiet');
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/valid +\d+\.\d+ bits per byte \(unigram \d+\.\d+\)/);
    const g = await run('generate', out, '--prompt', 'A', '--tokens', '5', '--prove', '--seed', '2');
    expect(g.code).toBe(0);
    expect(g.stdout.startsWith('A')).toBe(true);
    expect(g.stderr).toMatch(/verified +\d+ forward proofs/);
    const digest = /Ghost digest ([0-9a-f]{64})/.exec(g.stderr)![1]!;
    expect((await run('generate', out, '--tokens', '2', '--digest', digest)).code).toBe(0);
    expect((await run('generate', out, '--tokens', '2', '--digest', digest.replace(/^./, (c) => (c === '0' ? '1' : '0')))).code).toBe(1);
    expect((await run('generate', out, '--digest', 'abc')).code).toBe(2);
    expect((await run('train-lm')).code).toBe(2);
    // Refuses a directory that is not a run, and a run with another schedule length.
    writeFileSync(join(dir, 'not-a-run'), 'x');
    expect((await run('train-lm', '--out', join(dir, 'not-a-run'), '--quiet')).code).toBe(3);
    // Run again on a finished run: it resumes with the run's own settings (nothing left to do).
    const again = await run('train-lm', '--out', out, '--steps', '21', '--quiet');
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/resuming .* \(20 steps/);
    expect(again.stdout).toMatch(/steps +20\n/);
    expect((await run('train-lm', '--out', join(dir, 'x'), '--memory-layers', '5')).code).toBe(2);
    expect((await run('generate', join(dir, 'nothing'))).code).toBe(3);
  }, 120_000);
});
