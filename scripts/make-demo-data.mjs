#!/usr/bin/env node
/**
 * Regenerates data/fashion-mnist-small/ (the demo's data set, shipped in the repository)
 * from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist): the first
 * TRAIN training images and the first TEST test images with their labels, as gzipped
 * IDX files in the original layout (gzip level 9, no timestamp: the same bytes on every
 * run). Prints each file's SHA-256 (data/fashion-mnist-small/README.md lists them).
 *
 *   node scripts/make-demo-data.mjs [--train=4000] [--test=1000] [--src=DIR] [--out=DIR]
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { gunzipSync, gzipSync } from 'node:zlib';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    train: { type: 'string', default: '4000' },
    test: { type: 'string', default: '1000' },
    src: { type: 'string', default: '/usr/share/datasets/fashion-mnist' },
    out: { type: 'string', default: join(ROOT, 'data', 'fashion-mnist-small') },
  },
});

/** The first n items of an IDX file (magic 0x801 labels / 0x803 images), header rewritten with n. */
function head(file, n) {
  const raw = gunzipSync(readFileSync(join(values.src, file)));
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const magic = dv.getUint32(0);
  const dims = magic & 0xff;
  if ((magic & 0xffffff00) !== 0x800 || (dims !== 1 && dims !== 3)) throw new Error(`${file}: not an IDX u8 file`);
  const total = dv.getUint32(4);
  if (n > total) throw new Error(`${file} holds ${total} items, ${n} asked`);
  const headerBytes = 4 + 4 * dims;
  const item = dims === 3 ? dv.getUint32(8) * dv.getUint32(12) : 1;
  if (raw.length !== headerBytes + total * item) throw new Error(`${file}: unexpected length`);
  const out = Buffer.from(raw.subarray(0, headerBytes + n * item));
  out.writeUInt32BE(n, 4);
  return out;
}

mkdirSync(values.out, { recursive: true });
const plan = [
  ['train-images-idx3-ubyte.gz', Number(values.train)],
  ['train-labels-idx1-ubyte.gz', Number(values.train)],
  ['t10k-images-idx3-ubyte.gz', Number(values.test)],
  ['t10k-labels-idx1-ubyte.gz', Number(values.test)],
];
for (const [file, n] of plan) {
  const gz = gzipSync(head(file, n), { level: 9 });
  writeFileSync(join(values.out, file), gz);
  console.log(`${createHash('sha256').update(gz).digest('hex')}  ${file}  (${n} items, ${gz.length} bytes)`);
}
