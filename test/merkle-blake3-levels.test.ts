// The tree build at every BLAKE3 SIMD level (GHOST_TENSOR_BLAKE3_SIMD caps BLAKE3's
// run-time choice; each level runs in a child process, since BLAKE3 reads it once)
// against the TypeScript reference (hash-wasm, rootOf: no native code). Shapes cover the
// batched one-chunk rows (d <= 256), the batched multi-chunk rows (d = 272 .. 16384),
// the per-row fallback (d not a multiple of 16, d > 16384), and the 2048-row blocks of
// the build (N around 2048 and 4096).
import { spawnSync } from 'node:child_process';
import { beforeAll, describe, expect, it } from 'vitest';

import { simdInfo } from '../lib/index.js';
import { loadVerifier, rootOf, type MerkleHasher } from '../lib/verify/index.js';

const CASES: Array<[number, number]> = [
  [1, 16],
  [2049, 16],
  [4100, 64],
  [3, 100],
  [2048, 256],
  [33, 272],
  [2049, 784],
  [17, 16384],
  [3, 16400],
];

/** The same deterministic rows in the parent and the children. */
const ROWS_JS = `(n, d, s) => { const a = new Float32Array(n * d); for (let i = 0; i < a.length; i++) a[i] = Math.sin(i * 12.9898 + s * 78.233 + d) * 3; return a; }`;
const rows = eval(ROWS_JS) as (n: number, d: number, s: number) => Float32Array;

const CHILD = `
import { SparseTensor, simdInfo } from './dist/index.js';
import { native } from './dist/internal.js';
const rows = ${ROWS_JS};
const hex = (u) => Buffer.from(u).toString('hex');
const out = { blake3Simd: simdInfo().blake3Simd, roots: [] };
for (const [n, d] of ${JSON.stringify(CASES)}) {
  const data = rows(n, d, 1);
  const r1 = hex(native().merkleRoot(data, d, 1));
  const r2 = hex(native().merkleRoot(data, d, 2));
  const t = SparseTensor.fromArray(data, d);
  const c = hex(t.commitSync({ threads: 2 }));
  // a write of a few rows: the tree's batched update path
  const ids = [0, Math.floor(n / 2), n - 1].filter((v, i, a) => a.indexOf(v) === i);
  t.add(ids, new Float32Array(ids.length * d).fill(0.5));
  out.roots.push({ n, d, r1, r2, c, afterAdd: hex(t.root()), ids });
}
console.log(JSON.stringify(out));
`;

function child(env: Record<string, string>): { blake3Simd: string; roots: Array<Record<string, unknown>> } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CHILD], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as { blake3Simd: string; roots: Array<Record<string, unknown>> };
}

let H: MerkleHasher;
const expected: Array<{ root: string; afterAdd: string }> = [];
beforeAll(async () => {
  H = (await loadVerifier()).hasher;
  for (const [n, d] of CASES) {
    const data = rows(n, d, 1);
    const root = Buffer.from(rootOf(H, data, d)).toString('hex');
    const ids = [0, Math.floor(n / 2), n - 1].filter((v, i, a) => a.indexOf(v) === i);
    for (const id of ids) for (let j = 0; j < d; j++) data[id * d + j] = Math.fround(data[id * d + j]! + 0.5);
    expected.push({ root, afterAdd: Buffer.from(rootOf(H, data, d)).toString('hex') });
  }
});

const LEVELS = ['avx512', 'avx2', 'sse41', 'sse2', 'portable'];

describe('Merkle build at every BLAKE3 SIMD level', () => {
  const top = simdInfo().blake3Simd;
  it('simdInfo names the level BLAKE3 runs at', () => {
    expect([...LEVELS, 'neon']).toContain(top);
    if (process.arch === 'x64' && !process.env.GHOST_TENSOR_BLAKE3_SIMD) expect(['avx512', 'avx2', 'sse41']).toContain(top);
  });

  for (const level of LEVELS) {
    it(`GHOST_TENSOR_BLAKE3_SIMD=${level}: every root equals the TypeScript reference`, () => {
      const c = child({ GHOST_TENSOR_BLAKE3_SIMD: level });
      // A level at or below the CPU's best is used as asked; above it, the CPU's best.
      if (process.arch === 'x64' && LEVELS.indexOf(level) >= LEVELS.indexOf(top)) expect(c.blake3Simd).toBe(level);
      expect(c.roots).toHaveLength(CASES.length);
      c.roots.forEach((r, i) => {
        const where = `n = ${String(r.n)}, d = ${String(r.d)} at ${c.blake3Simd}`;
        expect(r.r1, where).toBe(expected[i]!.root);
        expect(r.r2, where).toBe(expected[i]!.root);
        expect(r.c, where).toBe(expected[i]!.root);
        expect(r.afterAdd, where).toBe(expected[i]!.afterAdd);
      });
    }, 120_000);
  }

  it('an unknown GHOST_TENSOR_BLAKE3_SIMD value leaves the detected level', () => {
    expect(child({ GHOST_TENSOR_BLAKE3_SIMD: 'avx1024' }).blake3Simd).toBe(top);
  }, 120_000);
});
