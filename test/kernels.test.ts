import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

import { InvalidArgumentError, SparseTensor, simdInfo, UnsupportedError, type SimdLevel } from '../lib/index.js';
import { native } from '../lib/tensor/native.js';
import { internalNative } from '../lib/tensor/sparse-tensor.js';
import { Rng } from './helpers/rng.js';

const info = simdInfo();
const ALL: SimdLevel[] = ['scalar', 'avx2', 'avx512', 'neon'];
const EPS = 2 ** -24;

// Scalar double-precision references, with a rigorous bound on f32 summation error:
// |fl(sum) - sum| <= n * eps * sum |terms| (+ one rounding of each product/difference).
function refDot(a: Float32Array, b: Float32Array, off = 0, boff = 0, n = a.length): { v: number; mag: number } {
  let v = 0, mag = 0;
  for (let i = 0; i < n; i++) {
    const t = a[off + i]! * b[boff + i]!;
    v += t;
    mag += Math.abs(t);
  }
  return { v, mag };
}
function refL2(a: Float32Array, b: Float32Array, off = 0, boff = 0, n = a.length): { v: number; mag: number } {
  let v = 0;
  for (let i = 0; i < n; i++) {
    const t = a[off + i]! - b[boff + i]!;
    v += t * t;
  }
  return { v, mag: v };
}
function tol(n: number, mag: number): number {
  return (n + 4) * EPS * mag * 2 + 1e-30;
}

const SHAPES = [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 129, 255, 784, 1000];

describe('SIMD dispatch', () => {
  it('reports a supported default level that is the best supported unless forced', () => {
    expect(info.supported[0]).toBe('scalar');
    expect(info.supported).toContain(info.level);
    if (!process.env.GHOST_TENSOR_SIMD) expect(info.level).toBe(info.supported[info.supported.length - 1]);
    for (const l of info.supported) expect(info.compiled).toContain(l);
  });

  function childInfo(env: Record<string, string>): { level: string; envError: string | null } {
    // GT_TEST_NODE: the Node that children run on, when it is not this process's own
    // binary (scripts/arm64-tests.sh: the arm64 Node under qemu-user).
    const r = spawnSync(
      process.env.GT_TEST_NODE ?? process.execPath,
      ['--input-type=module', '-e', "import { simdInfo } from './dist/index.js'; console.log(JSON.stringify(simdInfo()))"],
      { env: { ...process.env, ...env }, encoding: 'utf8' },
    );
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout) as { level: string; envError: string | null };
  }

  it('GHOST_TENSOR_SIMD forces every supported level, and ignores unknown or unsupported ones', () => {
    for (const level of info.supported) {
      const c = childInfo({ GHOST_TENSOR_SIMD: level });
      expect(c.level).toBe(level);
      expect(c.envError).toBeNull();
    }
    const bogus = childInfo({ GHOST_TENSOR_SIMD: 'sse9' });
    expect(bogus.level).toBe(info.supported[info.supported.length - 1]);
    expect(bogus.envError).toMatch(/sse9/);
    for (const level of ALL.filter((l) => !info.supported.includes(l))) {
      const c = childInfo({ GHOST_TENSOR_SIMD: level });
      expect(c.level).toBe(info.supported[info.supported.length - 1]);
      expect(c.envError).toMatch(/not supported/);
    }
  });

  it('refuses a level the CPU cannot run with a typed error', () => {
    const missing = ALL.filter((l) => !info.supported.includes(l));
    expect(missing.length).toBeGreaterThan(0); // no CPU runs both x86 and ARM levels
    const t = SparseTensor.fromArray(new Float32Array(8), 4);
    for (const level of missing) {
      expect(() => t.search(new Float32Array(4), 1, { level })).toThrow(UnsupportedError);
    }
    expect(() => t.search(new Float32Array(4), 1, { level: 'sse9' as SimdLevel })).toThrow(InvalidArgumentError);
  });
});

for (const level of ALL) {
  const supported = info.supported.includes(level);
  describe.skipIf(!supported)(`kernels at level ${level}${supported ? '' : ' (not supported by this CPU: skipped)'}`, () => {
    const rng = new Rng(0xc0ffee ^ level.length);

    it('dot, squared L2 and sum match a double-precision reference on odd shapes', () => {
      for (const n of SHAPES) {
        for (const scale of [1, 1e-3, 1e3]) {
          const a = rng.f32(n, scale), b = rng.f32(n, scale);
          const d = refDot(a, b);
          expect(Math.abs(native().kernelPair('dot', level, a, b) - d.v)).toBeLessThanOrEqual(tol(n, d.mag));
          const l = refL2(a, b);
          expect(Math.abs(native().kernelPair('l2', level, a, b) - l.v)).toBeLessThanOrEqual(tol(n, l.mag));
          let s = 0, m = 0;
          for (const x of a) {
            s += x;
            m += Math.abs(x);
          }
          expect(Math.abs(native().kernelPair('sum', level, a) - s)).toBeLessThanOrEqual(tol(n, m));
        }
      }
    });

    it('sum over a tensor reads its rows where they are stored: the bits of sum over the same values in an array', () => {
      // 2 MiB and more of owned rows are their own (huge-page) mapping; smaller ones are not.
      for (const [rows, d] of [[0, 7], [1, 1], [3, 17], [1100, 512], [5, 784]] as const) {
        const data = rng.f32(rows * d, 3);
        const t = SparseTensor.fromArray(data, d);
        const nat = internalNative(t);
        expect(Object.is(native().kernelPair('sum', level, nat), native().kernelPair('sum', level, data))).toBe(true);
        // the tensor's rows, not a copy taken once: a write shows
        t.scatter([0].slice(0, rows), rng.f32(rows > 0 ? d : 0, 3));
        expect(Object.is(native().kernelPair('sum', level, nat), native().kernelPair('sum', level, t.gather(Array.from({ length: rows }, (_, i) => i))))).toBe(true);
      }
      expect(() => native().kernelPair('sum', level, {} as unknown as Float32Array)).toThrow(/a must be a SparseTensor/);
    });

    it('blocked many-by-many kernels match the reference for every (query, row) pair', () => {
      for (const d of [1, 3, 8, 17, 64, 100]) {
        for (const [nq, nr] of [[1, 1], [1, 5], [3, 2], [4, 4], [5, 9], [9, 13]] as const) {
          const Q = rng.f32(nq * d), R = rng.f32(nr * d);
          const dots = native().kernelBlock('dot', level, Q, R, d);
          const l2s = native().kernelBlock('l2', level, Q, R, d);
          expect(dots.length).toBe(nq * nr);
          for (let i = 0; i < nq; i++) {
            for (let j = 0; j < nr; j++) {
              const rd = refDot(Q, R, i * d, j * d, d);
              expect(Math.abs(dots[i * nr + j]! - rd.v)).toBeLessThanOrEqual(tol(d, rd.mag));
              const rl = refL2(Q, R, i * d, j * d, d);
              expect(Math.abs(l2s[i * nr + j]! - rl.v)).toBeLessThanOrEqual(tol(d, rl.mag));
            }
          }
        }
      }
    });

    it('a pair scores the same bits whichever group of queries and rows it was computed in', () => {
      const d = 37, nq = 11, nr = 10;
      const Q = rng.f32(nq * d), R = rng.f32(nr * d);
      for (const op of ['dot', 'l2'] as const) {
        const all = native().kernelBlock(op, level, Q, R, d);
        for (let i = 0; i < nq; i++) {
          for (let j = 0; j < nr; j++) {
            const one = native().kernelBlock(op, level, Q.subarray(i * d, (i + 1) * d), R.subarray(j * d, (j + 1) * d), d);
            expect(one[0]).toBe(all[i * nr + j]);
          }
        }
      }
    });

    it('is exact on small integers (no rounding anywhere)', () => {
      for (const n of SHAPES) {
        const a = rng.f32ints(n), b = rng.f32ints(n);
        expect(native().kernelPair('dot', level, a, b)).toBe(refDot(a, b).v);
        expect(native().kernelPair('l2', level, a, b)).toBe(refL2(a, b).v);
      }
    });
  });
}
