/** Argument checks shared by the API classes. Each names the argument at fault. */
import { InvalidArgumentError, OutOfRangeError } from './errors.js';

export function checkInteger(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new InvalidArgumentError(`${name} must be an integer, got ${describe(value)}`);
  }
  if (value < min || value > max) {
    throw new OutOfRangeError(`${name} must be in ${min}..${max}, got ${value}`);
  }
  return value;
}

export function checkFloat32Array(name: string, value: unknown): Float32Array {
  if (!(value instanceof Float32Array)) {
    throw new InvalidArgumentError(`${name} must be a Float32Array, got ${describe(value)}`);
  }
  return value;
}

/** Ids as a Uint32Array: a Uint32Array is used as is, an array of integers is copied. */
export function toIds(name: string, value: unknown): Uint32Array {
  if (value instanceof Uint32Array) return value;
  if (!Array.isArray(value)) {
    throw new InvalidArgumentError(`${name} must be a Uint32Array or an array of integers, got ${describe(value)}`);
  }
  const out = new Uint32Array(value.length);
  for (let i = 0; i < value.length; i++) {
    const v: unknown = value[i];
    if (typeof v !== 'number' || !Number.isInteger(v)) {
      throw new InvalidArgumentError(`${name}[${i}] must be an integer, got ${describe(v)}`);
    }
    if (v < 0 || v > 0xffffffff) throw new OutOfRangeError(`${name}[${i}] = ${v} is not a valid id`);
    out[i] = v;
  }
  return out;
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (typeof value === 'number') return String(value);
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  return typeof value;
}

/** 0, 1, ..., n - 1: every id of n patterns. */
export function allIds(n: number): Uint32Array {
  const ids = new Uint32Array(n);
  for (let i = 0; i < n; i++) ids[i] = i;
  return ids;
}

/**
 * The options argument of `where` (a constructor or method name), checked: undefined
 * gives {}; anything but a plain object is refused; so is a key `allowed` does not
 * list (unless its value is undefined), since a misspelt option would otherwise be
 * silently ignored. The one place unknown option keys are refused.
 */
export function checkOptions<T extends object>(where: string, options: T | undefined, allowed: readonly string[]): T {
  if (options === undefined) return {} as T;
  if (options === null || typeof options !== 'object' || Array.isArray(options) || ArrayBuffer.isView(options)) {
    throw new InvalidArgumentError(`${where}: options must be an object, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (allowed.includes(key) || (options as Record<string, unknown>)[key] === undefined) continue;
    throw new InvalidArgumentError(`${where}: unknown option '${key}' (known: ${allowed.join(', ')})`);
  }
  return options;
}

/** An optional boolean option: undefined gives `def`; anything but true or false is refused. */
export function checkBoolean(name: string, value: unknown, def: boolean): boolean {
  if (value === undefined) return def;
  if (typeof value !== 'boolean') throw new InvalidArgumentError(`${name} must be true or false, got ${describe(value)}`);
  return value;
}

/** A finite number in [lo, hi] (or (lo, hi] when loOpen), else OutOfRangeError. */
export function checkNumber(name: string, x: unknown, lo: number, hi: number, loOpen = false): number {
  if (typeof x !== 'number' || !Number.isFinite(x) || x < lo || x > hi || (loOpen && x === lo)) {
    throw new OutOfRangeError(`${name} must be a finite number in ${loOpen ? '(' : '['}${lo}, ${hi}], got ${String(x)}`);
  }
  return x;
}
