#!/usr/bin/env bash
# Builds the native core (no Node) with AddressSanitizer and UBSan and runs
# test_core.cc. Usage: bash test/native/run-sanitized.sh
# Cross builds (scripts/arm64-tests.sh): GT_ARCH=aarch64 CC=aarch64-linux-gnu-gcc
# CXX=aarch64-linux-gnu-g++ GT_RUN="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# GT_NATIVE_OUT=<dir> (GT_SAN overrides the sanitizer flags).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${GT_NATIVE_OUT:-test/native/build}
mkdir -p "$out"
CXX=${CXX:-g++}
CC=${CC:-gcc}
SAN=${GT_SAN:-"-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"}
objs=()
compile() {  # file, extra flags...
  local f=$1; shift
  local o="$out/$(basename "$f").o"
  case "$f" in
    *.c) $CC $SAN -std=c11 "$@" -c "$f" -o "$o" ;;
    *) $CXX $SAN -std=c++17 -ffp-contract=off -Wall -Wextra -Werror "$@" -c "$f" -o "$o" ;;
  esac
  objs+=("$o")
}
list() { node native/sources.cjs "$1"; }  # one group of native/sources.json (the list binding.gyp reads)
# BLAKE3's per-level defines, as binding.gyp sets them: x86-64 builds every level;
# elsewhere the x86 levels are off (and arm64 adds NEON).
arch=${GT_ARCH:-$(uname -m)}
b3defs=()
if [ "$arch" != "x86_64" ]; then
  b3defs=(-DBLAKE3_NO_SSE2 -DBLAKE3_NO_SSE41 -DBLAKE3_NO_AVX2 -DBLAKE3_NO_AVX512)
  if [ "$arch" = "aarch64" ]; then
    for d in $(list arm64.defines); do b3defs+=("-D$d"); done
  fi
fi
# Assignments, so that a failing list stops the script (set -e).
core=$(list core)
b3=$(list blake3)
levels=$(node -p "Object.keys(require('./native/sources.json').x64).join(' ')")
for f in $core $b3; do
  case "$f" in
    *.c) compile "$f" "${b3defs[@]}" ;;
    *) compile "$f" ;;
  esac
done
if [ "$arch" = "x86_64" ]; then
  for level in $levels; do
    mapfile -t flags < <(list "x64.$level.flags")
    for f in $(list "x64.$level.sources"); do compile "$f" "${flags[@]}"; done
  done
else
  for f in $(list x64-portable); do compile "$f"; done  # null tables
  if [ "$arch" = "aarch64" ]; then
    for f in $(list arm64.sources); do compile "$f" "${b3defs[@]}"; done
  fi
fi
compile test/native/test_core.cc
$CXX $SAN "${objs[@]}" -o "$out/test_core" -lpthread
# GT_NATIVE_EMULATED: the run is under an emulator (GT_RUN), whose /proc shows the host's pages, not the guest's.
GT_NATIVE_EMULATED=${GT_RUN:+1} UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=${GT_ASAN_OPTIONS:-detect_leaks=1} ${GT_RUN:-} "$out/test_core"
