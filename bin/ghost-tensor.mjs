#!/usr/bin/env node
// The ghost-tensor command line (docs/cli.md). The code is compiled TypeScript in dist/.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('ghost-tensor: dist/ is not built; run `npm run build:ts` first\n');
  process.exit(3);
}
// A reader that stops early (`ghost-tensor query ... | head -1`) closes the pipe: that
// ends the command quietly, as for other Unix tools, instead of an unhandled EPIPE.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err) => {
    if (err && err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
