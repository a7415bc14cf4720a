#!/usr/bin/env bash
# Shows that the packed tarball installs and loads in an empty folder with no C/C++
# compiler, make or python on PATH, when its prebuilt binary is present.
# Usage: bash scripts/check-pack.sh   (run after npm ci)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
echo "== prebuildify (napi, stripped) =="
npm run prebuild --silent
ls -l prebuilds/*/
echo "== npm pack =="
tarball=$(npm pack --silent | tail -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; rm -f "$root/$tarball"' EXIT
# A PATH with node, npm and sh (npm runs install scripts through sh) only: any
# attempt to compile fails.
mkdir -p "$tmp/bin"
for tool in node npm sh; do ln -s "$(command -v $tool)" "$tmp/bin/$tool"; done
for tool in cc gcc g++ c++ make python3 python; do
  if PATH="$tmp/bin" command -v "$tool" >/dev/null 2>&1; then echo "unexpected $tool on PATH"; exit 1; fi
done
mkdir -p "$tmp/app"
cd "$tmp/app"
PATH="$tmp/bin" npm init -y >/dev/null
PATH="$tmp/bin" npm install --no-audit --no-fund "$root/$tarball" 2>&1 | tail -n 3
test ! -d node_modules/ghost-tensor/build || { echo "a local build happened"; exit 1; }
cat > check.mjs <<'JS'
import { SparseTensor, simdInfo } from 'ghost-tensor';
const t = SparseTensor.fromArray(new Float32Array([1, 0, 0, 1, 1, 1]), 2);
const r = t.search(new Float32Array([1, 0.5]), 2);
if (r.ids[0] !== 2 || r.ids[1] !== 0) throw new Error('wrong result ' + r.ids);
console.log('loaded prebuilt addon:', JSON.stringify(simdInfo()));
// The verifier entry point checks a proof made by the native prover.
const { verify } = await import('ghost-tensor/verify');
const root = t.commitSync();
const p = t.prove([0, 2]);
if (!(await verify(root, p.n, p.ids, p.leaves, p.proof))) throw new Error('verify failed');
p.proof[0] ^= 1;
if (await verify(root, p.n, p.ids, p.leaves, p.proof)) throw new Error('tampered proof accepted');
console.log('ghost-tensor/verify: honest proof accepted, tampered proof rejected');
JS
PATH="$tmp/bin" node check.mjs
echo "pack check: ok"
