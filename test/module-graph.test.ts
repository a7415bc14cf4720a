/**
 * Every compiled module can be the first one a program imports. The layer-kind
 * registries import their kinds and the codecs import the registries, so a kind that
 * imported a codec back made a cycle that threw "Cannot access ... before
 * initialization" when a kind module (or anything importing one, like the CLI's
 * classifier) was imported before the package entry. Each module is imported alone, in
 * its own process, and must load without an error or any output.
 */
import { execFile } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIST = join(ROOT, 'dist');

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.js') ? [p] : [];
  });
}

describe('the module graph', () => {
  it('each module of dist/ loads when it is the first import of a fresh process', async () => {
    const files = walk(DIST);
    expect(files.length).toBeGreaterThan(30);
    expect(files.map((f) => relative(DIST, f))).toContain('model/kinds/hopfield.js');
    const failures: string[] = [];
    const queue = [...files];
    const worker = async (): Promise<void> => {
      for (let f = queue.shift(); f !== undefined; f = queue.shift()) {
        try {
          const r = await run(process.execPath, ['--input-type=module', '-e', `await import(${JSON.stringify(f)})`], { cwd: ROOT, timeout: 30_000 });
          if (r.stdout !== '' || r.stderr !== '') failures.push(`${relative(DIST, f)}: printed ${JSON.stringify((r.stdout + r.stderr).slice(0, 200))}`);
        } catch (err) {
          const e = err as { stderr?: string; message: string };
          failures.push(`${relative(DIST, f)}: ${(e.stderr ?? e.message).split('\n').find((l) => /Error/.test(l)) ?? e.message}`);
        }
      }
    };
    await Promise.all([worker(), worker()]);
    expect(failures).toEqual([]);
  }, 120_000);
});
