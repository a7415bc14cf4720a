#!/usr/bin/env node
// Prints one group of native/sources.json, one entry a line, for binding.gyp's
// command expansions (<!@(node native/sources.cjs core)) and the shell scripts.
//   core | napi | blake3            the group's files
//   x64.<level>.sources | .flags    a SIMD level's files or compiler flags
//   arm64.sources | arm64.defines   BLAKE3's NEON file and its define
//   x64-portable                    our kernel files among the x64 levels (compiled
//                                   without flags elsewhere: null tables)
'use strict';
const list = require('./sources.json');

function pick(name) {
  if (name === 'x64-portable')
    return Object.values(list.x64).flatMap((l) => l.sources).filter((f) => f.startsWith('native/src/'));
  const v = name.split('.').reduce((o, k) => (o != null && k !== '//' ? o[k] : undefined), list);
  if (!Array.isArray(v)) throw new Error(`native/sources.json has no list ${JSON.stringify(name)}`);
  return v;
}

module.exports = { list, pick };
if (require.main === module) {
  if (process.argv.length !== 3) {
    process.stderr.write('usage: node native/sources.cjs <group>\n');
    process.exit(2);
  }
  process.stdout.write(`${pick(process.argv[2]).join('\n')}\n`);
}
