/**
 * Exact arithmetic on f64 values for reference rankings: every finite double is an
 * integer multiple of 2^-1074, so x * 2^1074 is an exact BigInt and sums of them are
 * exact. Independent of the TwoSum trick the library uses.
 */
const view = new DataView(new ArrayBuffer(8));

/** x * 2^1074 as an exact BigInt (x finite). */
export function scaled(x: number): bigint {
  if (!Number.isFinite(x)) throw new Error(`scaled: ${x} is not finite`);
  view.setFloat64(0, x);
  const hi = view.getUint32(0), lo = view.getUint32(4);
  const sign = hi >>> 31 ? -1n : 1n;
  const e = (hi >>> 20) & 0x7ff;
  let m = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  if (e === 0) return sign * m; // subnormal: m * 2^-1074
  m |= 1n << 52n;
  return sign * (m << BigInt(e - 1)); // m * 2^(e - 1075) * 2^1074
}

/**
 * Slots of a product-key memory ranked by the exact sum s1[i] + s2[j] (descending),
 * ties to the lower slot id i * n + j: the first k ids.
 */
export function exactPairRanking(s1: ArrayLike<number>, s2: ArrayLike<number>, k: number): number[] {
  const n = s1.length;
  const all: { id: number; s: bigint }[] = [];
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) all.push({ id: i * n + j, s: scaled(s1[i]!) + scaled(s2[j]!) });
  all.sort((a, b) => (a.s !== b.s ? (a.s > b.s ? -1 : 1) : a.id - b.id));
  return all.slice(0, k).map((x) => x.id);
}
