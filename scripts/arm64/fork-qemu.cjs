// Preloaded (node --require) into the vitest main process by scripts/arm64-tests.sh:
// every child that vitest forks runs under the arm64 Node binary through qemu-user
// (GT_FORK_EXEC_PATH, a wrapper script). The main process stays on the host's Node,
// where vitest's own native modules (x64) load; test files are transformed there and
// run in the arm64 children, which load the arm64 addon.
'use strict';
const cp = require('node:child_process');
const { syncBuiltinESMExports } = require('node:module');
const execPath = process.env.GT_FORK_EXEC_PATH;
if (!execPath) throw new Error('fork-qemu.cjs: GT_FORK_EXEC_PATH is not set');
const fork = cp.fork;
cp.fork = function forkUnderQemu(modulePath, args, options) {
  if (!Array.isArray(args)) return fork.call(this, modulePath, { ...(args || {}), execPath });
  return fork.call(this, modulePath, args, { ...(options || {}), execPath });
};
syncBuiltinESMExports();
