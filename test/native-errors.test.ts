/**
 * The addon's errors at the Node-API edge: a synchronous call and an asynchronous job
 * raise the same error (code, reason, message) for the same failure, because both
 * convert the C++ exception with one function (js_error in native/src/napi/napi_util.cc;
 * guard() and the job base native/src/napi/async_job.h). A storage failure's reason
 * travels from C++ (gt::StorageError) as the error's `reason` property, which
 * lib/shared/errors.ts reads: the message is not parsed for it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { StorageError, fromNative } from '../lib/shared/errors.js';
import { native } from '../lib/tensor/native.js';

const dir = mkdtempSync(join(tmpdir(), 'gt-native-errors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
const fresh = (): string => join(dir, `e${counter++}.gtt`);

type Raw = { code?: unknown; reason?: unknown; message: string };

function syncError(fn: () => unknown): Raw {
  try {
    fn();
  } catch (e) {
    return e as Raw;
  }
  throw new Error('expected the call to throw');
}

async function asyncError(fn: () => Promise<unknown>): Promise<Raw> {
  return fn().then(
    () => {
      throw new Error('expected the promise to reject');
    },
    (e: unknown) => e as Raw,
  );
}

const shape = (e: Raw): { code: unknown; reason: unknown; message: string } => ({ code: e.code, reason: e.reason, message: e.message });

// A file of n rows of d floats without optimizer state: the values start at byte 8192
// (docs/storage.md), row r at 8192 + r * d * 4.
const n = 64;
const d = 8;
async function fileWithRow5Flipped(): Promise<string> {
  const path = fresh();
  await native().createTensorFileAsync(path, n, d, false, 7, 0.5, 1);
  const b = readFileSync(path);
  b[8192 + 5 * d * 4 + 7]! ^= 0x10;
  writeFileSync(path, b);
  return path;
}

describe('native errors: one mapping for synchronous calls and asynchronous jobs', () => {
  it('opening a damaged or missing file: the same code, reason and message either way, the reason set by C++', async () => {
    const truncated = fresh();
    writeFileSync(truncated, Buffer.alloc(100));
    const notOurs = fresh();
    writeFileSync(notOurs, Buffer.alloc(16384, 0x41));
    const cases: Array<[string, string]> = [
      [truncated, 'TRUNCATED'],
      [notOurs, 'BAD_MAGIC'],
      [join(dir, 'missing.gtt'), 'IO'],
      [await fileWithRow5Flipped(), 'ROOT_MISMATCH'], // verify: the full check finds row 5
    ];
    for (const [path, reason] of cases) {
      const sync = syncError(() => native().openTensorFile(path, { verify: true }));
      const async = await asyncError(() => native().openTensorFileAsync(path, { verify: true }));
      expect(shape(sync)).toEqual(shape(async));
      expect(sync.code).toBe('ERR_GT_STORAGE');
      expect(sync.reason).toBe(reason);
      // The message users see still starts with the reason's token.
      expect(sync.message.startsWith(`${reason}: `)).toBe(true);
      const typed = fromNative(sync);
      expect(typed).toBeInstanceOf(StorageError);
      expect((typed as StorageError).reason).toBe(reason);
      expect(typed.message).toBe(sync.message);
    }
  });

  it('a tensor job (a batch search over a damaged row) rejects with the error the synchronous search throws', async () => {
    const path = await fileWithRow5Flipped();
    const t = new (native().NativeTensor)(native().openTensorFile(path, {})); // clean: rows are checked on first read
    const q = new Float32Array(2 * d).fill(0.25);
    const async = await asyncError(() => t.searchBatchAsync(q, 3, 'ip', undefined, 1));
    const sync = syncError(() => t.searchBatch(q, 3, 'ip', undefined, 1));
    expect(shape(async)).toEqual(shape(sync));
    expect(async.code).toBe('ERR_GT_STORAGE');
    expect(async.reason).toBe('ROW_MISMATCH');
    t.fileClose();
  });

  it('a job keeps a core error\'s code (not ERR_GT_INTERNAL): an optimizer step with a NaN gradient', async () => {
    const t = new (native().NativeTensor)(d, new Float32Array(4 * d).fill(0.5), false);
    t.optimInit({ kind: 'sgd', lr: 0.1 }, false);
    const grads = new Float32Array(d).fill(0.25);
    grads[3] = Number.NaN;
    const async = await asyncError(() => t.optimStepAsync(Uint32Array.of(2), grads));
    const sync = syncError(() => t.optimStep(Uint32Array.of(2), grads));
    expect(shape(async)).toEqual(shape(sync));
    expect(sync).toMatchObject({ code: 'ERR_GT_NON_FINITE', message: 'grads[3] is not finite' });
    expect(sync.reason).toBeUndefined();
  });

  it('lib/shared/errors.ts takes the reason from the property, never from the message', () => {
    const raw = (message: string, reason?: unknown): Error => Object.assign(new Error(message), { code: 'ERR_GT_STORAGE', reason });
    // The property decides, whatever the message says.
    expect((fromNative(raw('WAL_CORRUPT: log record 3 fails its checksum', 'WAL_CORRUPT')) as StorageError).reason).toBe('WAL_CORRUPT');
    const mismatch = fromNative(raw('ROW_MISMATCH: row 5', 'LOCKED')) as StorageError;
    expect(mismatch.reason).toBe('LOCKED');
    expect(mismatch.message).toBe('LOCKED: ROW_MISMATCH: row 5');
    // Hostile or missing reasons: an I/O failure, the message kept behind the token.
    for (const reason of [undefined, 'NOT_A_REASON', 42, 'row_mismatch']) {
      const e = fromNative(raw('ROW_MISMATCH: row 5', reason)) as StorageError;
      expect(e).toBeInstanceOf(StorageError);
      expect(e.reason).toBe('IO');
      expect(e.message).toBe('IO: ROW_MISMATCH: row 5');
    }
  });
});
