/**
 * The public surface is deliberate: the runtime names exported by each entry point in
 * package.json "exports" (built, dist/) must equal the checked-in sorted list in
 * test/public-surface.json. Adding or removing an export means editing that list in
 * the same change. Internal helpers (the addon error converters, the byte codecs, the
 * addon handle) live in lib/internal.ts, which the package does not export.
 * (Type-only exports leave no runtime name; tsc checks those.)
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');
const expected = JSON.parse(readFileSync(join(ROOT, 'test/public-surface.json'), 'utf8')) as Record<string, string[]>;
const INTERNAL = ['fromNative', 'callNative', 'callNativeAsync', 'native', 'internalNative', 'ByteReader', 'ByteWriter', 'PROOF_MAGIC', 'toHex', 'fromHex'];

async function namesOf(file: string): Promise<string[]> {
  return Object.keys(await import(pathToFileURL(join(ROOT, file)).href)).sort();
}

describe('public surface', () => {
  it('the checked-in list covers exactly the entry points of package.json "exports" (besides package.json)', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { exports: Record<string, string | { default: string }> };
    const entries = Object.entries(pkg.exports)
      .filter(([k]) => k !== './package.json')
      .map(([, v]) => (typeof v === 'string' ? v : v.default).replace(/^\.\//, ''))
      .sort();
    expect(entries).toEqual(Object.keys(expected).sort());
  });

  for (const file of Object.keys(expected)) {
    it(`${file} exports exactly the listed names, sorted`, async () => {
      const want = expected[file]!;
      expect([...want].sort(), 'the checked-in list is sorted').toEqual(want);
      expect(await namesOf(file)).toEqual(want);
    });
  }

  it('no entry point exports an internal helper', async () => {
    for (const file of Object.keys(expected)) {
      const names = await namesOf(file);
      for (const n of INTERNAL) expect(names, `${file} exports ${n}`).not.toContain(n);
    }
  });

  it('the internal entry has the helpers and cannot be imported through the package name', async () => {
    const names = await namesOf('dist/internal.js');
    for (const n of ['fromNative', 'callNative', 'callNativeAsync', 'native']) expect(names).toContain(n);
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', `await import('ghost-tensor/internal')`], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/ERR_PACKAGE_PATH_NOT_EXPORTED/);
  });
});
