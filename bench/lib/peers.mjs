// Peer libraries that are not dependencies of this package, loaded when present.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

import { ROOT } from './common.mjs';

/**
 * usearch (Unum), from node_modules if present, else from $GT_BENCH_PEERS (a folder where
 * `npm install usearch` was run): { usearch, version, from }, or null.
 */
export function loadUsearch() {
  const places = [ROOT, process.env.GT_BENCH_PEERS].filter(Boolean);
  for (const dir of places) {
    try {
      const req = createRequire(join(dir, 'package.json'));
      const usearch = req('usearch');
      // usearch's exports map hides package.json: read it beside the resolved entry.
      let dirOf = dirname(req.resolve('usearch'));
      while (!existsSync(join(dirOf, 'package.json')) || JSON.parse(readFileSync(join(dirOf, 'package.json'), 'utf8')).name !== 'usearch')
        dirOf = dirname(dirOf);
      return { usearch, version: JSON.parse(readFileSync(join(dirOf, 'package.json'), 'utf8')).version, from: dir };
    } catch (e) {
      if (e?.code !== 'MODULE_NOT_FOUND' && e?.code !== 'ERR_PACKAGE_PATH_NOT_EXPORTED') throw e;
    }
  }
  return null;
}
