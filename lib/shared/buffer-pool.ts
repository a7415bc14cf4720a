/**
 * Reused buffers (docs/serving.md, "Performance"). A fresh buffer of a few MiB costs more
 * on first write (page faults, then the GC's freeing) than the proof's encoding into it,
 * and every fresh ArrayBuffer counts as external memory, whose growth makes V8 collect.
 * Two users: the server encodes each forward answer into a buffer taken from a pool and
 * gives it back once node:http has handed the whole answer to the operating system (the
 * response's 'finish'), never earlier: an answer whose connection closed first simply
 * never comes back (the GC takes it); Model.proveBytes gathers the rows a proof reveals
 * into arrays of its own pool and gives them back once the proof is encoded.
 */

/** Capacity granularity of a pooled buffer: 64 KiB (sizes of one shape of request round to one capacity). */
const GRAIN = 65536;

export class BufferPool {
  readonly maxBytes: number;
  readonly maxBuffers: number;
  /** Free buffers, by capacity ascending. */
  #free: ArrayBuffer[] = [];
  #freeBytes = 0;
  /** Buffers taken and not given back (weakly: one that never comes back is not kept). */
  readonly #out = new WeakSet<ArrayBuffer>();
  /** Takes served from the pool, and fresh allocations (for the tests and /health). */
  reused = 0;
  allocated = 0;

  /** Keeps at most `maxBuffers` free buffers of at most `maxBytes` in all. */
  constructor(maxBytes = 32 * 2 ** 20, maxBuffers = 16) {
    this.maxBytes = maxBytes;
    this.maxBuffers = maxBuffers;
  }

  /** An array of exactly `size` bytes (contents unspecified: the caller overwrites every byte), over a pooled or fresh buffer. */
  take(size: number): Uint8Array {
    // The smallest free buffer that fits, if it is not more than twice the size (a large buffer stays for large answers).
    for (let i = 0; i < this.#free.length; i++) {
      const ab = this.#free[i]!;
      if (ab.byteLength < size) continue;
      if (ab.byteLength > 2 * size + GRAIN) break;
      this.#free.splice(i, 1);
      this.#freeBytes -= ab.byteLength;
      this.#out.add(ab);
      this.reused++;
      return new Uint8Array(ab, 0, size);
    }
    const cap = Math.max(GRAIN, Math.ceil(size / GRAIN) * GRAIN);
    const B = (globalThis as { Buffer?: { allocUnsafeSlow(n: number): Uint8Array } }).Buffer;
    const ab = B ? (B.allocUnsafeSlow(cap).buffer as ArrayBuffer) : new ArrayBuffer(cap);
    this.#out.add(ab);
    this.allocated++;
    return new Uint8Array(ab, 0, size);
  }

  /** An array of exactly `n` floats (contents unspecified), over a pooled or fresh buffer (offset 0: aligned). */
  takeFloats(n: number): Float32Array {
    const bytes = this.take(n * 4);
    return new Float32Array(bytes.buffer, 0, n);
  }

  /**
   * Gives back an array take() or takeFloats() returned, once nothing reads it any more. Anything else,
   * or the same buffer twice, is ignored; past the pool's limits the buffer is dropped
   * (the largest free ones go first).
   */
  give(bytes: ArrayBufferView): void {
    const ab = bytes.buffer as ArrayBuffer;
    if (!this.#out.has(ab)) return;
    this.#out.delete(ab);
    let at = 0;
    while (at < this.#free.length && this.#free[at]!.byteLength < ab.byteLength) at++;
    this.#free.splice(at, 0, ab);
    this.#freeBytes += ab.byteLength;
    while (this.#free.length > 0 && (this.#free.length > this.maxBuffers || this.#freeBytes > this.maxBytes)) {
      this.#freeBytes -= this.#free.pop()!.byteLength;
    }
  }

  /** Free buffers held, and their bytes. */
  get free(): { buffers: number; bytes: number } {
    return { buffers: this.#free.length, bytes: this.#freeBytes };
  }
}
