/**
 * Injected write faults for tests that mock node:fs/promises: the next `count` renames
 * onto a file named `name`, or opens of it to append, throw EIO. A test file mocks the
 * module with
 *
 *   vi.mock('node:fs/promises', async (orig) => (await import('./helpers/fs-faults.js')).faultyFs(await orig()));
 *   import { faults } from './helpers/fs-faults.js';
 *
 * and sets `faults.name` and `faults.count` before the call that should fail.
 */
import type * as fsp from 'node:fs/promises';

export const faults = { name: '', count: 0 };

export function faultyFs(orig: typeof fsp): typeof fsp {
  return {
    ...orig,
    rename: async (from: Parameters<typeof fsp.rename>[0], to: Parameters<typeof fsp.rename>[1]): Promise<void> => {
      if (faults.count > 0 && String(to).endsWith(`/${faults.name}`)) {
        faults.count--;
        throw Object.assign(new Error(`EIO: injected, rename '${String(from)}' -> '${String(to)}'`), { code: 'EIO' });
      }
      return orig.rename(from, to);
    },
    open: async (path: Parameters<typeof fsp.open>[0], flags?: Parameters<typeof fsp.open>[1], mode?: Parameters<typeof fsp.open>[2]) => {
      if (faults.count > 0 && flags === 'a' && String(path).endsWith(`/${faults.name}`)) {
        faults.count--;
        throw Object.assign(new Error(`EIO: injected, append to '${String(path)}'`), { code: 'EIO' });
      }
      return orig.open(path, flags, mode);
    },
  } as typeof fsp;
}
