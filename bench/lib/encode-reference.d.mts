// Types of bench/lib/encode-reference.mjs for the TypeScript tests (test/encode.test.ts).
export declare class ReferenceByteWriter {
  u8(v: number): this;
  u16(v: number): this;
  u32(v: number): this;
  u64(v: number): this;
  f32(v: number): this;
  f64(v: number): this;
  bytes(b: Uint8Array): this;
  f32s(a: Float32Array): this;
  f64s(a: Float64Array): this;
  u32s(a: Uint32Array): this;
  readonly length: number;
  finish(): Uint8Array;
}
export declare function makeReferenceEncoder(deps: {
  specByOp: (op: string) => { code: number } | undefined;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  writeOptimizer: (w: any, p: any) => void;
  stateRowBytes: (d: number) => number;
}): (proof: unknown) => Uint8Array;
