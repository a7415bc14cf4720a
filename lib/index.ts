export { SparseTensor } from './sparse-tensor.js';
export type {
  BatchSearchOptions,
  BatchSearchResult,
  CreateOptions,
  FromArrayOptions,
  Metric,
  SearchOptions,
  SearchResult,
} from './sparse-tensor.js';
export { simdInfo } from './simd.js';
export type { SimdInfo, SimdLevel } from './simd.js';
export * from './errors.js';
