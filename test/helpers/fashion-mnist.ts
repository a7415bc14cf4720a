/** Loads Fashion-MNIST from Debian's dataset-fashion-mnist package, when installed. */
import { existsSync, readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';

export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

export function fashionMnistAvailable(): boolean {
  return existsSync(`${FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz`);
}

/** Images as f32 in [0, 1], 784 per image; `limit` caps the count. Checks the IDX header. */
export function loadFashionMnistImages(split: 'train' | 't10k', limit = Infinity): { data: Float32Array; n: number } {
  const raw = gunzipSync(readFileSync(`${FASHION_MNIST_DIR}/${split}-images-idx3-ubyte.gz`));
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (dv.getUint32(0) !== 0x00000803) throw new Error('not an IDX3 image file');
  const total = dv.getUint32(4), rows = dv.getUint32(8), cols = dv.getUint32(12);
  if (rows * cols !== 784 || raw.length !== 16 + total * 784) throw new Error('unexpected IDX3 shape');
  const n = Math.min(total, limit);
  const data = new Float32Array(n * 784);
  for (let i = 0; i < n * 784; i++) data[i] = raw[16 + i]! / 255;
  return { data, n };
}
