#!/usr/bin/env node
/**
 * Merkle commitment benchmark (hash scheme ghost-tensor/merkle/v1).
 *
 *   node bench/merkle.mjs            full run: N = 2^20 patterns of d = 64 f32 (256 MiB), ~5 min
 *   node bench/merkle.mjs --quick    N = 2^16, well under a minute
 *   --name=NAME                      write bench/results/NAME.json instead of merkle.json
 *
 * Sections:
 *   1. Tree build vs raw BLAKE3 of the same bytes (native().blake3, single thread,
 *      official C implementation with SIMD), threads = 1 and all cores; then per-leaf
 *      throughput against merkletreejs (hash-wasm BLAKE3) and @openzeppelin/merkle-tree
 *      (StandardMerkleTree, keccak256 over ABI-encoded `bytes`) on the same leaves, at
 *      smaller N (those libraries are pure JavaScript / WebAssembly, one thread).
 *   2. Root update after t.add() on 32 random patterns, then t.root().
 *   3. Compact multiproof bytes for k = 1 .. 1024 ids (random and clustered) vs k
 *      separate single-id proofs, and proof-generation time.
 *   4. Verify time for k = 32 (TypeScript verifier over hash-wasm, and native).
 *
 * Prints tables to stdout, progress to stderr, and writes bench/results/merkle.json.
 * GB/s are decimal (1e9 bytes / s) of pattern bytes (N * d * 4).
 */
import { createRequire } from 'node:module';

import { CORES, logger, machine, nowMs, randomFloats, rng, resultName, round, stats, writeResults } from './lib/common.mjs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const RESULT_NAME = resultName('merkle'); // --name=NAME writes bench/results/NAME.json

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const require = createRequire(join(root, 'package.json'));

const { SparseTensor, simdInfo, multiproofSize } = await import(join(root, 'dist/index.js'));
const { loadVerifier } = await import(join(root, 'dist/verify/index.js'));
const { native } = await import(join(root, 'dist/internal.js'));
const { createBLAKE3 } = require('hash-wasm');
const { MerkleTree } = require('merkletreejs');
const { StandardMerkleTree } = require('@openzeppelin/merkle-tree');

// ---------------------------------------------------------------- parameters

const QUICK = process.argv.includes('--quick');
const P = QUICK
  ? {
      log2N: 16,
      dim: 64,
      buildReps: 5,
      libN: [2 ** 10, 2 ** 12],
      libReps: { merkletreejs: 3, openzeppelin: 1 },
      oursLibReps: 20,
      updateReps: 1000,
      updateK: 32,
      proofKs: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
      proofBudgetMs: 40,
      verifyKs: [1, 32, 1024],
      verifyBudgetMs: 300,
      seed: 0x5eed,
    }
  : {
      log2N: 20,
      dim: 64,
      buildReps: 7,
      libN: [2 ** 14, 2 ** 16],
      libReps: { merkletreejs: 3, openzeppelin: 1 },
      oursLibReps: 20,
      updateReps: 5000,
      updateK: 32,
      proofKs: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
      proofBudgetMs: 300,
      verifyKs: [1, 32, 1024],
      verifyBudgetMs: 2000,
      seed: 0x5eed,
    };
const N = 2 ** P.log2N;
const D = P.dim;
const PATTERN_BYTES = N * D * 4;

// ---------------------------------------------------------------- helpers

const log = logger('merkle');

/** k unique ids in [0, n), sorted. */
function randomIds(rand, n, k) {
  const s = new Set();
  while (s.size < k) s.add(Math.floor(rand() * n));
  return Uint32Array.from(s).sort();
}

function clusteredIds(rand, n, k) {
  const start = Math.floor(rand() * (n - k + 1));
  const out = new Uint32Array(k);
  for (let i = 0; i < k; i++) out[i] = start + i;
  return out;
}

/** Calls fn repeatedly (after `warm` untimed calls) for at least minReps and until budgetMs; per-call ms samples. */
function sampleFor(fn, { budgetMs, minReps = 5, maxReps = 100000, warm = 3 }) {
  for (let i = 0; i < warm; i++) fn();
  const samples = [];
  const end = nowMs() + budgetMs;
  while (samples.length < maxReps && (samples.length < minReps || nowMs() < end)) {
    const t0 = nowMs();
    fn();
    samples.push(nowMs() - t0);
  }
  return samples;
}

const hex = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('hex');

function fmt(x, digits = 3) {
  if (typeof x === 'string') return x;
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e7 || a < 1e-3)) return x.toExponential(2);
  if (Number.isInteger(x)) return x.toLocaleString('en-US');
  return x.toLocaleString('en-US', { maximumSignificantDigits: digits, minimumSignificantDigits: Math.min(digits, 2) });
}

function table(title, headers, rows, notes = []) {
  const cells = rows.map((r) => r.map((c) => fmt(c)));
  const widths = headers.map((h, j) => Math.max(h.length, ...cells.map((r) => r[j].length)));
  const line = (r) => r.map((c, j) => (j === 0 ? c.padEnd(widths[j]) : c.padStart(widths[j]))).join('  ');
  const out = [`\n## ${title}`, '', line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)];
  for (const n of notes) out.push(`  ${n}`);
  console.log(out.join('\n'));
}

const nat = native();
const results = {
  name: RESULT_NAME,
  date: new Date().toISOString(),
  command: `node bench/merkle.mjs${QUICK ? ' --quick' : ''}`,
  machine: machine({ simd: simdInfo() }),
  parameters: {
    quick: QUICK,
    n: N,
    log2N: P.log2N,
    dim: D,
    patternBytes: PATTERN_BYTES,
    threadsAll: CORES,
    ...P,
    units: {
      gbps: 'decimal GB/s (1e9 bytes/s) of pattern bytes',
      ms: 'milliseconds',
      us: 'microseconds',
      leavesPerSec: 'leaves (patterns) hashed into a tree per second',
    },
  },
};

const t0All = nowMs();
log(`${QUICK ? 'quick' : 'full'} run: N = 2^${P.log2N} = ${N}, d = ${D} (${(PATTERN_BYTES / 2 ** 20).toFixed(0)} MiB), cores = ${CORES}`);

// ---------------------------------------------------------------- data

log('generating random patterns ...');
const rand = rng(P.seed);
const data = randomFloats(rand, N * D);
const dataBytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);

// ---------------------------------------------------------------- 1. build vs raw BLAKE3

log('1. tree build vs raw BLAKE3 (interleaved repetitions) ...');
// The tensor adopts `data` (no copy), so later updates write into it and a fresh
// native().merkleRoot(data) can be checked against t.root().
const tensor = SparseTensor.fromArray(data, D, { adopt: true });

const buildCases = [
  { key: 'rawBlake3', label: 'raw BLAKE3 of all pattern bytes (1 thread)', run: async () => nat.blake3(dataBytes) },
  { key: 'merkleRoot1', label: 'native().merkleRoot, threads = 1', run: async () => nat.merkleRoot(data, D, 1) },
  { key: 'merkleRootAll', label: `native().merkleRoot, threads = ${CORES}`, run: async () => nat.merkleRoot(data, D, CORES) },
  { key: 'commit1', label: 'await t.commit({threads: 1})', run: () => tensor.commit({ threads: 1 }) },
  { key: 'commitAll', label: `await t.commit({threads: ${CORES}})`, run: () => tensor.commit({ threads: CORES }) },
];
const buildSamples = Object.fromEntries(buildCases.map((c) => [c.key, []]));
for (const c of buildCases) await c.run(); // warm: page in, JIT, allocator
const roots = new Set();
for (let r = 0; r < P.buildReps; r++) {
  for (const c of buildCases) {
    const t = nowMs();
    const out = await c.run();
    buildSamples[c.key].push(nowMs() - t);
    if (c.key !== 'rawBlake3') roots.add(hex(out));
  }
  log(`   rep ${r + 1}/${P.buildReps}: ` + buildCases.map((c) => `${c.key} ${buildSamples[c.key].at(-1).toFixed(1)} ms`).join(', '));
}
if (roots.size !== 1) throw new Error(`builds disagree on the root: ${[...roots].join(', ')}`);
const build = { patternBytes: PATTERN_BYTES, root: [...roots][0] };
for (const c of buildCases) {
  const s = stats(buildSamples[c.key]);
  build[c.key] = {
    label: c.label,
    medianMs: round(s.median),
    minMs: round(s.min),
    p90Ms: round(s.p90),
    gbps: round(PATTERN_BYTES / (s.median / 1e3) / 1e9),
    leavesPerSec: round(N / (s.median / 1e3)),
    samplesMs: buildSamples[c.key].map((x) => round(x)),
  };
}
const raw = build.rawBlake3.medianMs;
build.ratios = {
  merkleRoot1ToRaw: round(raw / build.merkleRoot1.medianMs),
  merkleRootAllToRaw: round(raw / build.merkleRootAll.medianMs),
  commit1ToRaw: round(raw / build.commit1.medianMs),
  commitAllToRaw: round(raw / build.commitAll.medianMs),
  target1ToRaw: 0.9,
  meaning: 'throughput ratio ours / raw = raw time / our time (1 = as fast as hashing the bytes once)',
};

// Where the time goes: builds at d = 16, 32 (leaf = 1, 2 BLAKE3 blocks) with the same N
// give a line in the number of leaf blocks; its intercept is the inner-node work (N - 1
// one-block compressions) plus allocating the levels.
log('   diagnostic: 1-thread builds at d = 16, 32, 64 ...');
const diagDims = [16, 32, 64];
const diag = [];
for (const dd of diagDims) {
  const sub = data.subarray(0, N * dd);
  nat.merkleRoot(sub, dd, 1);
  const s = [];
  for (let r = 0; r < Math.max(3, P.buildReps - 2); r++) {
    const t = nowMs();
    nat.merkleRoot(sub, dd, 1);
    s.push(nowMs() - t);
  }
  diag.push({ dim: dd, leafBlocks: dd / 16, medianMs: round(stats(s).median) });
}
{
  // least-squares fit ms = a + b * blocks
  const xs = diag.map((x) => x.leafBlocks);
  const ys = diag.map((x) => x.medianMs);
  const mx = xs.reduce((a, b) => a + b) / xs.length;
  const my = ys.reduce((a, b) => a + b) / ys.length;
  const b = xs.reduce((acc, x, i) => acc + (x - mx) * (ys[i] - my), 0) / xs.reduce((acc, x) => acc + (x - mx) ** 2, 0);
  const a = my - b * mx;
  build.breakdown1Thread = {
    points: diag,
    msPerLeafBlock: round(b),
    interceptMs: round(a),
    leafHashingMsAtD: round(b * (D / 16)),
    note: 'ms(d) ~ intercept + msPerLeafBlock * d/16; intercept ~ inner nodes (N-1 one-block compressions) + level allocation',
    rawBlake3NsPerBlock: round((raw * 1e6) / (PATTERN_BYTES / 64)),
  };
}

table(
  `1. Tree build, N = 2^${P.log2N} patterns of d = ${D} f32 (${(PATTERN_BYTES / 2 ** 20).toFixed(0)} MiB), median of ${P.buildReps}`,
  ['what', 'median ms', 'min ms', 'GB/s', 'ratio to raw'],
  buildCases.map((c) => [
    c.label,
    build[c.key].medianMs,
    build[c.key].minMs,
    build[c.key].gbps,
    c.key === 'rawBlake3' ? 1 : round(raw / build[c.key].medianMs, 3),
  ]),
  [
    `ratio = raw BLAKE3 time / our time (goal for 1 thread: 0.9; per BLAKE3 SIMD level: node bench/merkle-build.mjs). root ${build.root.slice(0, 16)}...`,
    `1-thread breakdown: ${build.breakdown1Thread.msPerLeafBlock} ms per leaf block (x${D / 16} blocks = ${build.breakdown1Thread.leafHashingMsAtD} ms of leaf hashing) + ${build.breakdown1Thread.interceptMs} ms intercept (inner nodes + levels),`,
    `   from 1-thread builds at d = ${diag.map((x) => `${x.dim}: ${x.medianMs} ms`).join(', ')}.`,
  ],
);
results.build = build;

// ---------------------------------------------------------------- 1b. other libraries

log('1b. merkletreejs and @openzeppelin/merkle-tree on the same leaves ...');
const b3 = await createBLAKE3(256);
const blake3Fn = (v) => {
  b3.init();
  b3.update(v);
  return b3.digest('binary');
};
function buildMerkletreejs(n) {
  const leaves = new Array(n);
  for (let i = 0; i < n; i++) leaves[i] = Buffer.from(data.buffer, data.byteOffset + i * D * 4, D * 4);
  const t = nowMs();
  const tree = new MerkleTree(leaves, blake3Fn, { hashLeaves: true });
  const ms = nowMs() - t;
  return { ms, root: tree.getHexRoot() };
}
function buildOpenZeppelin(n) {
  const values = new Array(n);
  for (let i = 0; i < n; i++) values[i] = ['0x' + Buffer.from(data.buffer, data.byteOffset + i * D * 4, D * 4).toString('hex')];
  const t = nowMs();
  const tree = StandardMerkleTree.of(values, ['bytes']);
  const ms = nowMs() - t;
  return { ms, root: tree.root };
}
// JIT warm-up, untimed
buildMerkletreejs(1024);
buildOpenZeppelin(256);

const libs = [];
for (const n of P.libN) {
  const sub = data.subarray(0, n * D);
  const ours = {};
  for (const [key, threads] of [
    ['ours1', 1],
    ['oursAll', CORES],
  ]) {
    nat.merkleRoot(sub, D, threads);
    const s = [];
    for (let r = 0; r < P.oursLibReps; r++) {
      const t = nowMs();
      nat.merkleRoot(sub, D, threads);
      s.push(nowMs() - t);
    }
    const m = stats(s).median;
    ours[key] = { threads, medianMs: round(m), leavesPerSec: round(n / (m / 1e3)) };
  }
  const theirs = {};
  for (const [key, fn] of [
    ['merkletreejs', buildMerkletreejs],
    ['openzeppelin', buildOpenZeppelin],
  ]) {
    const s = [];
    for (let r = 0; r < P.libReps[key]; r++) {
      log(`   ${key} n = ${n} rep ${r + 1}/${P.libReps[key]} ...`);
      s.push(fn(n).ms);
    }
    const m = stats(s).median;
    theirs[key] = { medianMs: round(m), reps: s.length, leavesPerSec: round(n / (m / 1e3)) };
  }
  libs.push({
    n,
    ...ours,
    ...theirs,
    ratios: {
      ours1ToMerkletreejs: round(ours.ours1.leavesPerSec / theirs.merkletreejs.leavesPerSec),
      oursAllToMerkletreejs: round(ours.oursAll.leavesPerSec / theirs.merkletreejs.leavesPerSec),
      ours1ToOpenzeppelin: round(ours.ours1.leavesPerSec / theirs.openzeppelin.leavesPerSec),
      oursAllToOpenzeppelin: round(ours.oursAll.leavesPerSec / theirs.openzeppelin.leavesPerSec),
    },
  });
}
// merkletreejs also copes with the full N (one thread, ~1.3 GB of Buffers at 2^20):
// compare it with our commit() at the same N.
const mtjsFull = [];
for (let r = 0; r < P.libReps.merkletreejs; r++) {
  log(`   merkletreejs n = N = ${N} rep ${r + 1}/${P.libReps.merkletreejs} ...`);
  const out = buildMerkletreejs(N);
  mtjsFull.push(out.ms);
}
const mtjsFullMs = stats(mtjsFull).median;
const mtjsAtN = {
  n: N,
  medianMs: round(mtjsFullMs),
  reps: mtjsFull.length,
  leavesPerSec: round(N / (mtjsFullMs / 1e3)),
  ratios: {
    commit1ToMerkletreejs: round(mtjsFullMs / build.commit1.medianMs),
    commitAllToMerkletreejs: round(mtjsFullMs / build.commitAll.medianMs),
  },
};
const libRows = [];
for (const l of libs) {
  const e = `2^${Math.log2(l.n)}`;
  libRows.push([`ours merkleRoot, 1 thread`, e, l.ours1.medianMs, l.ours1.leavesPerSec, 1]);
  libRows.push([`ours merkleRoot, ${CORES} threads`, e, l.oursAll.medianMs, l.oursAll.leavesPerSec, round(l.oursAll.leavesPerSec / l.ours1.leavesPerSec, 3)]);
  libRows.push([`merkletreejs 0.6.0 + hash-wasm BLAKE3`, e, l.merkletreejs.medianMs, l.merkletreejs.leavesPerSec, round(l.merkletreejs.leavesPerSec / l.ours1.leavesPerSec, 3)]);
  libRows.push([`@openzeppelin/merkle-tree 1.0.8 Standard`, e, l.openzeppelin.medianMs, l.openzeppelin.leavesPerSec, round(l.openzeppelin.leavesPerSec / l.ours1.leavesPerSec, 3)]);
}
libRows.push([`ours commit, 1 thread`, `2^${P.log2N}`, build.commit1.medianMs, build.commit1.leavesPerSec, 1]);
libRows.push([`ours commit, ${CORES} threads`, `2^${P.log2N}`, build.commitAll.medianMs, build.commitAll.leavesPerSec, round(build.commit1.medianMs / build.commitAll.medianMs, 3)]);
libRows.push([`merkletreejs 0.6.0 + hash-wasm BLAKE3`, `2^${P.log2N}`, mtjsAtN.medianMs, mtjsAtN.leavesPerSec, round(build.commit1.medianMs / mtjsAtN.medianMs, 3)]);
table(
  `1b. Tree build on the same leaves (first n patterns, d = ${D}), per-leaf throughput`,
  ['implementation', 'n', 'median ms', 'leaves/s', 'vs ours 1t'],
  libRows,
  [
    'merkletreejs: new MerkleTree(leaves, blake3, {hashLeaves: true}), leaves = 256-byte Buffers, hash = hash-wasm createBLAKE3 (unkeyed, WebAssembly), default options.',
    "@openzeppelin: StandardMerkleTree.of(values, ['bytes']), values = hex strings (hex conversion untimed); keccak256 (ethereum-cryptography, JS), double-hashed ABI-encoded leaves, sorted.",
    `Both are single-threaded JS. OpenZeppelin runs only at the smaller n (at its measured rate 2^${P.log2N} would take ~${fmt(N / libs.at(-1).openzeppelin.leavesPerSec)} s);`,
    `merkletreejs runs at both. Median of ${P.libReps.merkletreejs} (merkletreejs) / ${P.libReps.openzeppelin} (OpenZeppelin) runs. "vs ours 1t" = leaves/s / ours with 1 thread at the same n.`,
  ],
);
results.libraries = {
  note: 'merkletreejs with hash-wasm BLAKE3 (unkeyed) and hashLeaves: true; @openzeppelin StandardMerkleTree with leafEncoding [bytes] (keccak256, ABI encoding, double leaf hash, sorted leaves). Both single-threaded JS, measured at smaller n than the main build; compare per-leaf throughput.',
  runs: libs,
  merkletreejsAtN: mtjsAtN,
};

// ---------------------------------------------------------------- 2. root update

log(`2. root update: t.add(${P.updateK} random ids) + t.root(), ${P.updateReps} reps ...`);
{
  const POOL = 256;
  const sets = [];
  for (let i = 0; i < POOL; i++) {
    const ids = randomIds(rand, N, P.updateK);
    const plus = randomFloats(rand, P.updateK * D, 1e-3);
    const minus = plus.map((x) => -x);
    sets.push({ ids, plus, minus });
  }
  const step = (r) => {
    const s = sets[r % POOL];
    tensor.add(s.ids, Math.floor(r / POOL) % 2 === 0 ? s.plus : s.minus);
    return tensor.root();
  };
  for (let r = 0; r < 200; r++) step(r); // warm-up
  const samples = new Array(P.updateReps);
  let last;
  for (let r = 0; r < P.updateReps; r++) {
    const t = nowMs();
    last = step(r + 200);
    samples[r] = (nowMs() - t) * 1e3;
  }
  const s = stats(samples);
  // The tree is kept current by the writes: check against a fresh rebuild of the same bytes.
  log('   checking t.root() against a fresh rebuild ...');
  const fresh = hex(nat.merkleRoot(data, D, CORES));
  const ok = fresh === hex(last);
  if (!ok) throw new Error('root after updates differs from a fresh rebuild');
  const rebuildUs = build.commitAll.medianMs * 1e3;
  results.update = {
    k: P.updateK,
    reps: P.updateReps,
    medianUs: round(s.median),
    p10Us: round(s.p10),
    p90Us: round(s.p90),
    minUs: round(s.min),
    fullRebuildAllCoresUs: round(rebuildUs),
    ratioToRebuild: round(s.median / rebuildUs),
    speedupVsRebuild: round(rebuildUs / s.median),
    rootMatchesFreshRebuild: ok,
  };
  table(
    `2. Root update after t.add() on ${P.updateK} random patterns, then t.root() (N = 2^${P.log2N})`,
    ['what', 'median us', 'p10 us', 'p90 us', 'ratio to rebuild'],
    [
      [`add(${P.updateK} ids) + root()`, results.update.medianUs, results.update.p10Us, results.update.p90Us, results.update.ratioToRebuild],
      [`full rebuild, commit ${CORES} threads`, results.update.fullRebuildAllCoresUs, '', '', 1],
    ],
    [
      `${P.updateReps} repetitions, each on a different random id set (pool of ${POOL}); speedup vs rebuild ${fmt(results.update.speedupVsRebuild)}x.`,
      `includes the write itself (validation, 32 x ${D} float adds). Root after all updates equals a fresh rebuild: ${ok}.`,
    ],
  );
}

// ---------------------------------------------------------------- 3. multiproofs

log('3. multiproofs ...');
const proofs = [];
const singleBytes = (ids) => {
  let total = 0;
  for (const id of ids) total += multiproofSize(N, [id]) * 32;
  return total;
};
// sanity: a real single-id proof has the size multiproofSize says
{
  const id = Math.floor(rand() * N);
  const p = tensor.prove([id]);
  if (p.proof.length !== multiproofSize(N, [id]) * 32) throw new Error('single proof size mismatch');
}
for (const k of P.proofKs) {
  const row = { k };
  for (const [kind, gen] of [
    ['random', randomIds],
    ['clustered', clusteredIds],
  ]) {
    const ids = gen(rand, N, k);
    const p = tensor.prove(ids);
    const bytes = p.proof.length;
    if (bytes !== multiproofSize(N, ids) * 32) throw new Error(`multiproof size mismatch at k = ${k}`);
    const sep = singleBytes(ids);
    const gen1 = stats(sampleFor(() => tensor.prove(ids), { budgetMs: P.proofBudgetMs, minReps: 5 }));
    const entry = {
      proofBytes: bytes,
      proofHashes: bytes / 32,
      separateBytes: sep,
      ratio: round(bytes / sep),
      leafBytes: p.leaves.byteLength,
      genUs: round(gen1.median * 1e3),
      genReps: gen1.reps,
    };
    if (kind === 'random') {
      // time of k separate single-id prove() calls, for comparison
      const singles = Array.from(ids, (id) => [id]);
      const sepGen = stats(
        sampleFor(() => {
          for (const s of singles) tensor.prove(s);
        }, { budgetMs: P.proofBudgetMs, minReps: 3 }),
      );
      entry.separateGenUs = round(sepGen.median * 1e3);
    }
    row[kind] = entry;
  }
  proofs.push(row);
  log(`   k = ${k}: random ${row.random.proofBytes} B, clustered ${row.clustered.proofBytes} B`);
}
table(
  `3. Compact multiproof vs k separate single-id proofs (N = 2^${P.log2N}, d = ${D}; proof hashes only, 32 B each)`,
  ['k', 'k x single B', 'random B', 'ratio', 'gen us', 'k singles gen us', 'clustered B', 'ratio', 'gen us'],
  proofs.map((r) => [
    String(r.k),
    r.random.separateBytes,
    r.random.proofBytes,
    r.random.ratio,
    r.random.genUs,
    r.random.separateGenUs,
    r.clustered.proofBytes,
    r.clustered.ratio,
    r.clustered.genUs,
  ]),
  [
    'ratio = multiproof bytes / (k x single-id proof bytes); lower is better. Revealed leaves (k x 256 B) are not counted.',
    'random: k unique uniform ids; clustered: k consecutive ids from a random (unaligned) start.',
    'gen us: median of t.prove(ids) (id sort/dedup, gather of the leaves, proof walk); k singles gen: k calls of t.prove([id]).',
  ],
);
results.multiproof = { n: N, dim: D, rows: proofs };

// ---------------------------------------------------------------- 4. verify

log('4. verify ...');
const verifier = await loadVerifier();
const vrows = [];
for (const k of P.verifyKs) {
  const ids = randomIds(rand, N, k);
  const p = tensor.prove(ids);
  if (!verifier.verify(p.root, p.n, p.ids, p.leaves, p.proof)) throw new Error('TS verifier rejected a good proof');
  if (!nat.merkleVerify(p.root, p.n, D, p.ids, p.leaves, p.proof)) throw new Error('native verifier rejected a good proof');
  const bad = p.leaves.slice();
  bad[0] += 1;
  if (verifier.verify(p.root, p.n, p.ids, bad, p.proof)) throw new Error('TS verifier accepted a tampered proof');
  const ts = stats(sampleFor(() => verifier.check(p.root, p.n, p.ids, p.leaves, p.proof), { budgetMs: P.verifyBudgetMs, minReps: 20, warm: 20 }));
  const nv = stats(sampleFor(() => nat.merkleVerify(p.root, p.n, D, p.ids, p.leaves, p.proof), { budgetMs: P.verifyBudgetMs / 2, minReps: 20, warm: 20 }));
  vrows.push({
    k,
    proofBytes: p.proof.length,
    tsMedianUs: round(ts.median * 1e3),
    tsP90Us: round(ts.p90 * 1e3),
    tsReps: ts.reps,
    nativeMedianUs: round(nv.median * 1e3),
    nativeP90Us: round(nv.p90 * 1e3),
    nativeReps: nv.reps,
    tsToNative: round(ts.median / nv.median),
  });
  log(`   k = ${k}: ts ${vrows.at(-1).tsMedianUs} us, native ${vrows.at(-1).nativeMedianUs} us`);
}
table(
  `4. Verify (random ids, N = 2^${P.log2N}, d = ${D}); k = 32 is the headline`,
  ['k', 'proof B', 'TS check us', 'TS p90 us', 'native us', 'native p90 us', 'TS / native'],
  vrows.map((v) => [String(v.k), v.proofBytes, v.tsMedianUs, v.tsP90Us, v.nativeMedianUs, v.nativeP90Us, v.tsToNative]),
  [
    'TS: loadVerifier() once, then median of verifier.check(root, n, ids, leaves, proof) (hash-wasm BLAKE3, WebAssembly, no addon).',
    'native: native().merkleVerify(root, n, dim, ids, leaves, proof) (official BLAKE3 C, SIMD). Both include argument checks.',
  ],
);
results.verify = { n: N, dim: D, rows: vrows, headlineK: 32 };

// ---------------------------------------------------------------- output

results.elapsedSec = round((nowMs() - t0All) / 1e3);
const outFile = writeResults(RESULT_NAME, results); // --quick writes it too (parameters.quick says which)
log(`done in ${results.elapsedSec} s; wrote ${outFile}`);
