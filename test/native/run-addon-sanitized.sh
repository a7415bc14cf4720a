#!/usr/bin/env bash
# Builds the Node addon itself with AddressSanitizer + UBSan in a scratch copy of the
# repository and runs the vitest suite against it (all but the files listed below), so
# the Node-API layer (buffer lifetimes, async workers, argument checks) is sanitized too.
# Usage: bash test/native/run-addon-sanitized.sh   (after npm ci)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Every file the repository tracks (the whole suite runs here: the docs-link test reads
# README.md and checks the paths the docs name); the explicit list outside a git checkout.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z | xargs -0 cp --parents -t "$tmp/"
else
  cp -r binding.gyp native lib test docs examples scripts bench bin data deploy README.md LICENSE package.json tsconfig.json tsconfig.build.json vitest.config.ts "$tmp/"
fi
ln -s "$root/node_modules" "$tmp/node_modules"
cd "$tmp"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer"
CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="-fsanitize=address,undefined" npx node-gyp rebuild -j "$(nproc)" >build.log 2>&1 ||
  { tail -n 40 build.log; exit 1; }
npx tsc -p tsconfig.build.json
# Node itself is not instrumented: the runtimes are preloaded; leak checking is off
# because V8 keeps allocations alive until exit by design.
# GT_SANITIZED: tests that measure memory (RSS) skip themselves; ASan's shadow memory
# and its quarantine of freed blocks make the figures meaningless.
#
# Left out here (they run unsanitized in `npm test`), to keep CI within its budget: files
# that load no addon code of their own (module loading, docs links, the public surface,
# the browser's addon-free verifier, the verifier fuzzer), learning-quality runs whose
# native calls the unit files already cover under the sanitizers, and child-process
# harnesses (SIGKILL loops, examples, the swarm command, the CLI's commands) whose time
# goes to process start-up and waiting, not to native code, and the libp2p peer and swarm
# suites, whose time goes to the network stack (the proofs and steps their peers make and
# replay are the native paths the proof, step and swarm-lm files run here).
unsanitized=(
  test/module-graph.test.ts test/docs-links.test.ts test/public-surface.test.ts
  test/browser.test.ts test/proof-fuzz.test.ts
  test/attention-quality.test.ts
  test/serve-crash.test.ts test/serve-workers.test.ts test/swarm-cli.test.ts test/swarm-cli-join.test.ts test/swarm-netns.test.ts test/swarm-kill.test.ts test/examples.test.ts
  test/cli.test.ts test/bench-levels.test.ts
  test/p2p.test.ts test/swarm.test.ts test/swarm-takeover.test.ts test/swarm-five.test.ts
)
exclude=()
for f in "${unsanitized[@]}"; do
  [ -f "$f" ] || { echo "run-addon-sanitized.sh: $f is listed but does not exist" >&2; exit 1; }
  exclude+=(--exclude "$f")
done
GT_SANITIZED=1 LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  npx vitest run "${exclude[@]}"
