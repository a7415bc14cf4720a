/**
 * UNSTABLE internal entry for this repository's benchmarks and scripts (bench/,
 * scripts/). It is not part of the public API: it is not in package.json "exports",
 * so `import 'ghost-tensor/internal'` fails for users, and its names may change or
 * go away in any release. Benchmarks import it by path (`../dist/internal.js`).
 *
 * What is public is lib/index.ts, lib/verify/index.ts and lib/p2p/index.ts (their names are
 * pinned by test/public-surface.test.ts). Loads the native addon (through native.ts).
 */
export { native } from './tensor/native.js';
export type { NativeTensor } from './tensor/native.js';
export { internalNative } from './tensor/sparse-tensor.js';
export { callNative, callNativeAsync, fromNative } from './shared/errors.js';
export { ByteReader, ByteWriter } from './shared/bytes.js';
export { PROOF_MAGIC } from './verify/proof-format.js';
export { encodeForwardRequest, decodeForwardRequest } from './serve/wire.js';
export { DEMO_DATA_DIR, loadSplit } from './cli/classifier.js';
