/**
 * The verifier's limits (docs/proof-format.md, "Verifier limits"): hostile proofs that
 * cost far more than their size to decode or check are refused from their headers,
 * before the allocation or the work, with ProofError BUDGET (or the mismatch with the
 * pinned Ghost file that bounds them), within memory bounded per proof byte. Honest
 * proofs still verify; a caller's tighter limits are honoured. Addon-free.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { ProofError } from '../lib/shared/errors.js';
import { encodeGhost } from '../lib/verify/ghost-file.js';
import { DEFAULT_VERIFIER_LIMITS, VerifyBudget, decodeProof } from '../lib/verify/proof-format.js';
import { attentionCanonical, pinGhost, verifyForward } from '../lib/verify/proof-verify.js';
import { attentionGhost, attentionProof, embeddingGhost, heldRowsProof, repeatedIds } from './helpers/hostile.js';
import { reason } from './helpers/reason.js';

const dir = mkdtempSync(join(tmpdir(), 'gt-limits-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Bytes of memory (V8 heap + ArrayBuffers) `fn` leaves allocated, garbage collected where --expose-gc allows. */
async function memoryOf(fn: () => Promise<unknown>): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const m0 = process.memoryUsage();
  let peak = 0;
  const sample = (): void => {
    const m = process.memoryUsage();
    peak = Math.max(peak, m.heapUsed + m.arrayBuffers - m0.heapUsed - m0.arrayBuffers);
  };
  await fn().catch(() => undefined);
  sample();
  return peak;
}

/** How a rejected promise's ProofError reads: `REASON: message`. */
async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ProofError) return err.message;
    throw err;
  }
  return 'ACCEPTED';
}

describe('verifier limits', () => {
  it('an all-rows block of held rows (2 bits a row) is refused at its header, before its rows are allocated', async () => {
    const N = 2 ** 24, dim = 64;
    const ghost = await pinGhost(embeddingGhost(N, dim));
    const bytes = heldRowsProof(ghost.digest, N, dim, 1); // 4 MiB: 16M rows
    expect(bytes.length).toBeLessThan(4.1 * 2 ** 20);
    // Without the Ghost file (a client's pre-check), the default budget refuses it...
    expect(() => decodeProof(bytes)).toThrow(/^BUDGET: .*maxCells/);
    // ...and against the pinned file too; memory stays small (before: ~350 MiB for this proof).
    let why = '';
    const mem = await memoryOf(async () => (why = await reason(verifyForward(ghost, bytes))));
    expect(why).toBe('BUDGET');
    expect(mem).toBeLessThan(16 * 2 ** 20);
    // A Ghost file whose tensor has fewer rows bounds the block at its N.
    const small = await pinGhost(embeddingGhost(1000, dim));
    expect(await refusal(verifyForward(small, heldRowsProof(small.digest, N, dim, 1)))).toMatch(/^BLOCK_IDS: an all-rows block of emb has 16777216 rows; N = 1000/);
  });

  it('a 48 MiB held-rows proof decodes and is refused in a child with a 96 MiB heap (before: V8 out of memory)', () => {
    const N = 2 ** 24, dim = 8;
    const g = embeddingGhost(N, dim);
    const gfile = join(dir, 'g.bin'), pfile = join(dir, 'p.bin');
    writeFileSync(gfile, encodeGhost(g));
    const digestProof = async (): Promise<Uint8Array> => heldRowsProof((await pinGhost(g)).digest, N, dim, 12);
    return digestProof().then((bytes) => {
      writeFileSync(pfile, bytes);
      const child = `
        import { readFileSync } from 'node:fs';
        const v = await import(${JSON.stringify(join(process.cwd(), 'dist/verify/index.js'))});
        const g = await v.pinGhost(readFileSync(${JSON.stringify(gfile)}));
        const bytes = readFileSync(${JSON.stringify(pfile)});
        const out = [];
        for (const run of [() => v.decodeProof(bytes), () => v.verifyForward(g, bytes), () => v.decodeProof(bytes, { ghost: g, kind: 'forward' })]) {
          try { await run(); out.push('ACCEPTED'); } catch (e) { out.push(e.reason ?? e.name); }
        }
        console.log(JSON.stringify(out));`;
      const res = execFileSync(process.execPath, ['--max-old-space-size=96', '--input-type=module', '-e', child], { encoding: 'utf8', timeout: 120_000 });
      expect(JSON.parse(res.trim())).toEqual(['BUDGET', 'BUDGET', 'BUDGET']);
    });
  });

  it('repeated embedding ids: B x dim floats are charged before they are allocated; honest proofs verify; the caller\'s maxBatch and maxCells hold', async () => {
    // 65536 ids (256 KiB) of a 4096-wide table: 1 GiB of output to compute.
    const hostile = await repeatedIds(4096, 65536, { rows: 1, cols: 1, data: new Float32Array(1) });
    const g = await pinGhost(hostile.ghost);
    let msg = '';
    const mem = await memoryOf(async () => (msg = await refusal(verifyForward(g, hostile.proof(g.digest)))));
    expect(msg).toMatch(/^BUDGET: layer 0's 65536 x 4096 output/);
    expect(mem).toBeLessThan(32 * 2 ** 20);
    // More ids than the limit: refused at the input's header.
    const tooMany = await repeatedIds(4, DEFAULT_VERIFIER_LIMITS.maxBatch + 1);
    const g2 = await pinGhost(tooMany.ghost);
    expect(await refusal(verifyForward(g2, tooMany.proof(g2.digest)))).toMatch(/^BUDGET: input ids = 65537 is over the verifier's limit maxBatch = 65536/);
    // An honest proof with repeated ids verifies; tighter limits refuse it.
    const honest = await repeatedIds(64, 50);
    const g3 = await pinGhost(honest.ghost);
    const v = await verifyForward(g3, honest.proof(g3.digest));
    expect([v.rows, v.cols, v.output[64 * 49 + 5]]).toEqual([50, 64, honest.row[5]]);
    expect(await refusal(verifyForward(g3, honest.proof(g3.digest), { limits: { maxBatch: 49 } }))).toMatch(/^BUDGET: input ids = 50 .*maxBatch = 49/);
    expect(await refusal(verifyForward(g3, honest.proof(g3.digest), { limits: { maxCells: 50 * 64 } }))).toMatch(/^BUDGET: .*maxCells = 3200/);
  });

  it('a long attention sequence is refused from its header (maxSequence, then the O(n^2 D) work estimate), before any score is computed', async () => {
    const dIn = 8, n = 32768;
    const g = await pinGhost(attentionGhost(dIn));
    const x = Float32Array.from({ length: n * dIn }, (_, i) => ((i * 7919) % 1000) / 1000);
    const bytes = attentionProof(g.digest, x, n, dIn, { rows: 1, cols: 1, data: new Float32Array(1) });
    expect(await refusal(verifyForward(g, bytes))).toMatch(/^BUDGET: layer 0 \(attention\): the sequence length = 32768 .*maxSequence = 4096/);
    // With the sequence limit lifted, the work estimate (n^2 (128 + 2 D + 1) = 1.6e11 units) refuses it.
    expect(await refusal(verifyForward(g, bytes, { limits: { maxSequence: n } }))).toMatch(/^BUDGET: layer 0 \(attention, n = 32768, D = 8\) is estimated at \d+ work units .*maxWork = 4294967296/);
    // The estimate runs before the layer: a budget charged by decoding and planning only.
    const b = new VerifyBudget({ maxSequence: n });
    decodeProof(bytes, { budget: b, ghost: g, kind: 'forward' });
    expect(b.work).toBe(0);
    // An honest sequence verifies, and is refused under a work budget below its estimate.
    const m = 64;
    const xs = x.subarray(0, m * dIn);
    const layer = g.manifest.layers[0]!;
    if (layer.op !== 'attention') throw new Error('attention expected');
    const y = attentionCanonical(g.manifest, layer, xs, m, () => new Float32Array(0));
    const honest = attentionProof(g.digest, xs, m, dIn, { rows: m, cols: dIn, data: y });
    expect((await verifyForward(g, honest)).output).toEqual(y);
    expect(await reason(verifyForward(g, honest, { limits: { maxWork: m * m * dIn } }))).toBe('BUDGET');
  });

  it('limits are checked: positive safe integers only', () => {
    expect(() => new VerifyBudget({ maxCells: 0 })).toThrow(/maxCells must be a positive safe integer/);
    expect(() => new VerifyBudget({ maxWork: 1.5 })).toThrow(/maxWork/);
    expect(new VerifyBudget({ maxProofBytes: 2 ** 40 }).limits.maxProofBytes).toBe(2 ** 30);
    expect(() => decodeProof(new Uint8Array(100), { limits: { maxProofBytes: 99 } })).toThrow(/^BUDGET: the proof's bytes = 100/);
  });
});
