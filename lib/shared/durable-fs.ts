/** Small durable-file helpers shared by Model.save / load and the prover service. */
import { open, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Writes bytes and fsyncs the file before resolving (`flags`: 'w', 'wx', 'a', ...). */
export async function writeSynced(path: string, bytes: Uint8Array, flags = 'w'): Promise<void> {
  const fh = await open(path, flags);
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsyncs a directory (its entries: a rename or create in it is then durable). */
export async function syncDir(path: string): Promise<void> {
  if (process.platform === 'win32') return; // directories cannot be opened for fsync there
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Replaces dir/name atomically: a new file, fsynced, renamed over it, the directory fsynced. */
export async function replaceFile(dir: string, name: string, bytes: Uint8Array): Promise<void> {
  const tmp = join(dir, `${name}.tmp-${process.pid}`);
  await writeSynced(tmp, bytes);
  await rename(tmp, join(dir, name));
  await syncDir(dir);
}
