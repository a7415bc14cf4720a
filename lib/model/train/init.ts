/**
 * Initialisers for new SparseTensors (n patterns of dim values): seeded and
 * deterministic, the same numbers on every machine. The generator is mulberry32 over a
 * 32-bit seed (uniform u in [0, 1) with 2^-32 resolution); a normal deviate is
 * Box-Muller, sqrt(-2 ln(1 - u1)) cos(2 pi u2), one per pair of uniforms; everything is
 * computed in f64 and rounded to f32 once. Values fill the tensor row by row.
 *
 *   uniform { low = -1, high = 1 }:     low + (high - low) u
 *   normal  { mean = 0, std = 1 }:      mean + std z
 *   xavier  { fanIn = dim, fanOut = n, distribution = 'uniform' }:
 *           uniform in +-sqrt(6 / (fanIn + fanOut)), or normal with std sqrt(2 / (fanIn + fanOut))
 *   kaiming { fanIn = dim, distribution = 'normal' }:
 *           normal with std sqrt(2 / fanIn), or uniform in +-sqrt(6 / fanIn)
 *
 * The fan defaults fit a Projection's weight (n output columns, each a pattern of dim
 * inputs) and a table whose rows are read as dim-wide vectors.
 */
import { checkInteger, checkNumber, checkOptions, describe } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { SparseTensor } from '../../tensor/sparse-tensor.js';

export { seededRandom } from '../../shared/random.js';
import { seededRandom } from '../../shared/random.js';

function gaussian(rand: () => number): number {
  const u1 = rand(), u2 = rand();
  return Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2);
}

function size(n: number, dim: number): number {
  checkInteger('n', n, 1, 2 ** 32 - 1);
  checkInteger('dim', dim, 1, 2 ** 20);
  if (n * dim > 2 ** 31) throw new InvalidArgumentError(`n x dim = ${n * dim} values is too many to initialise in memory`);
  return n * dim;
}

function fill(n: number, dim: number, seed: number, draw: (rand: () => number) => number): SparseTensor {
  const len = size(n, dim);
  const rand = seededRandom(seed);
  const data = new Float32Array(len);
  for (let i = 0; i < len; i++) data[i] = draw(rand);
  return SparseTensor.fromArray(data, dim, { adopt: true });
}

function checkDistribution(d: unknown, def: 'uniform' | 'normal'): 'uniform' | 'normal' {
  if (d === undefined) return def;
  if (d !== 'uniform' && d !== 'normal') throw new InvalidArgumentError(`distribution must be 'uniform' or 'normal', got ${describe(d)}`);
  return d;
}

export interface SeedOption {
  /** 32-bit seed (default 1). */
  seed?: number;
}

export const init = {
  /** Each value uniform in [low, high). */
  uniform(n: number, dim: number, options: SeedOption & { low?: number; high?: number } = {}): SparseTensor {
    const o = checkOptions('init.uniform', options, ['seed', 'low', 'high']);
    const low = checkNumber('low', o.low ?? -1, -1e30, 1e30), high = checkNumber('high', o.high ?? 1, low, 1e30);
    return fill(n, dim, o.seed ?? 1, (r) => low + (high - low) * r());
  },
  /** Each value normal(mean, std). */
  normal(n: number, dim: number, options: SeedOption & { mean?: number; std?: number } = {}): SparseTensor {
    const o = checkOptions('init.normal', options, ['seed', 'mean', 'std']);
    const mean = checkNumber('mean', o.mean ?? 0, -1e30, 1e30), std = checkNumber('std', o.std ?? 1, 0, 1e30);
    return fill(n, dim, o.seed ?? 1, (r) => mean + std * gaussian(r));
  },
  /** Glorot / Xavier: variance 2 / (fanIn + fanOut). */
  xavier(n: number, dim: number, options: SeedOption & { fanIn?: number; fanOut?: number; distribution?: 'uniform' | 'normal' } = {}): SparseTensor {
    const o = checkOptions('init.xavier', options, ['seed', 'fanIn', 'fanOut', 'distribution']);
    const fanIn = checkInteger('fanIn', o.fanIn ?? dim, 1, 2 ** 32), fanOut = checkInteger('fanOut', o.fanOut ?? n, 1, 2 ** 32);
    const dist = checkDistribution(o.distribution, 'uniform');
    const a = Math.sqrt(6 / (fanIn + fanOut)), std = Math.sqrt(2 / (fanIn + fanOut));
    return fill(n, dim, o.seed ?? 1, dist === 'uniform' ? (r) => -a + 2 * a * r() : (r) => std * gaussian(r));
  },
  /** He / Kaiming (for ReLU-like layers): variance 2 / fanIn. */
  kaiming(n: number, dim: number, options: SeedOption & { fanIn?: number; distribution?: 'uniform' | 'normal' } = {}): SparseTensor {
    const o = checkOptions('init.kaiming', options, ['seed', 'fanIn', 'distribution']);
    const fanIn = checkInteger('fanIn', o.fanIn ?? dim, 1, 2 ** 32);
    const dist = checkDistribution(o.distribution, 'normal');
    const a = Math.sqrt(6 / fanIn), std = Math.sqrt(2 / fanIn);
    return fill(n, dim, o.seed ?? 1, dist === 'uniform' ? (r) => -a + 2 * a * r() : (r) => std * gaussian(r));
  },
} as const;
