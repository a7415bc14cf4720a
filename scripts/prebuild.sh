#!/usr/bin/env bash
# Builds every prebuilt addon this machine can build into prebuilds/: the host's
# (linux-x64 here, N-API: one binary for every Node version) and, when Debian's
# aarch64 cross compiler is installed (g++-aarch64-linux-gnu), linux-arm64.
# `npm pack` and `npm publish` run it through prepack, so the tarball they make is
# the one that carries the binaries. Each build runs in a scratch copy of the
# sources, so build/ (the development build that tests load) is left alone.
# Usage: bash scripts/prebuild.sh   (after npm ci)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r native binding.gyp package.json "$tmp/"
ln -s "$root/node_modules" "$tmp/node_modules"
rm -rf prebuilds
# Node's own headers where npm is set up with them (npm config nodedir; npm run and
# npm pack export it), so node-gyp downloads nothing.
if [ -z "${npm_config_nodedir:-}" ]; then
  nodedir=$(npm config get nodedir 2>/dev/null || true)
  if [ -n "$nodedir" ] && [ "$nodedir" != "undefined" ] && [ "$nodedir" != "null" ]; then export npm_config_nodedir="$nodedir"; fi
fi
prebuildify="$root/node_modules/.bin/prebuildify"
echo "== prebuild: $(node -p 'process.platform + "-" + process.arch') (host) =="
"$prebuildify" --napi --strip --cwd "$tmp" --out "$root"
if [ "$(uname -m)" = "x86_64" ] && command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  echo "== prebuild: linux-arm64 (cross, aarch64-linux-gnu-g++) =="
  rm -rf "$tmp/build"
  CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar \
    "$prebuildify" --napi --strip --arch arm64 --strip-bin aarch64-linux-gnu-strip --cwd "$tmp" --out "$root"
else
  echo "(no aarch64 cross compiler: linux-arm64 prebuild skipped)"
fi
ls -l prebuilds/*/
