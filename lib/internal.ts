/**
 * UNSTABLE internal entry for this repository's benchmarks and scripts (bench/,
 * scripts/). It is not part of the public API: it is not in package.json "exports",
 * so `import 'ghost-tensor/internal'` fails for users, and its names may change or
 * go away in any release. Benchmarks import it by path (`../dist/internal.js`).
 *
 * What is public is lib/index.ts, lib/verify.ts and lib/p2p/index.ts (their names are
 * pinned by test/public-surface.test.ts). Loads the native addon (through native.ts).
 */
export { native } from './native.js';
export type { NativeTensor } from './native.js';
export { internalNative } from './sparse-tensor.js';
export { callNative, callNativeAsync, fromNative } from './errors.js';
export { ByteReader, ByteWriter } from './bytes.js';
export { PROOF_MAGIC } from './proof-format.js';
export { encodeForwardRequest, decodeForwardRequest } from './serve/wire.js';
export { DEMO_DATA_DIR, loadSplit } from './cli/classifier.js';
