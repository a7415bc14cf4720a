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
src=native/src
b3=native/third_party/blake3
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
for f in attention canonical cpu dense_hopfield errors hnsw_index kernels kernels_scalar kernels_neon merkle metric optimizer parallel product_keys search sparse_hopfield sparse_tensor tensor_file; do
  compile "$src/$f.cc"
done
arch=${GT_ARCH:-$(uname -m)}
if [ "$arch" = "x86_64" ]; then
  compile "$src/kernels_avx2.cc" -mavx2 -mfma
  compile "$src/kernels_avx512.cc" -mavx512f -mavx512vl -mavx2 -mfma
  compile "$b3/blake3_sse2.c" -msse2
  compile "$b3/blake3_sse41.c" -msse4.1
  compile "$b3/blake3_avx2.c" -mavx2
  compile "$b3/blake3_avx512.c" -mavx512f -mavx512vl
  b3defs=()
else
  compile "$src/kernels_avx2.cc"
  compile "$src/kernels_avx512.cc"
  b3defs=(-DBLAKE3_NO_SSE2 -DBLAKE3_NO_SSE41 -DBLAKE3_NO_AVX2 -DBLAKE3_NO_AVX512)
  if [ "$arch" = "aarch64" ]; then compile "$b3/blake3_neon.c" -DBLAKE3_USE_NEON=1; b3defs+=(-DBLAKE3_USE_NEON=1); fi
fi
for f in blake3 blake3_dispatch blake3_portable; do compile "$b3/$f.c" "${b3defs[@]}"; done
compile "$src/blake3_batch.c" "${b3defs[@]}"
compile test/native/test_core.cc
$CXX $SAN "${objs[@]}" -o "$out/test_core" -lpthread
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=${GT_ASAN_OPTIONS:-detect_leaks=1} ${GT_RUN:-} "$out/test_core"
