/**
 * Training together (docs/swarm.md): a sequencer, a verify-only peer and 1, 2, 4
 * trainers on loopback TCP, one process, train a bigram model (an Embedding of V x V,
 * cross-entropy) by step proofs for a fixed number of proposals per trainer. Measures
 * the swarm's sequenced steps/s and examples/s, the fraction of proposals accepted (the
 * concurrency rule passes over stale steps), bytes per step per peer against a dense
 * ring all-reduce of the same model, the latency from a proposal to its acceptance, and
 * the time a new peer takes to fetch and verify a log of L entries from generation 0.
 * Each swarm runs twice: the sequencer publishing whole log entries, then only their
 * digests (announce: 'digest'; peers fetch the proof). Bytes are the payloads the peers'
 * stats count: messages that reached validation (gossipsub drops a duplicate before it,
 * so the copies a mesh forwards twice are not counted) and fetch frames.
 *
 * node bench/swarm.mjs [--proposals N] [--vocab V]; progress to stderr, results to
 * bench/results/swarm.json. Needs dist/ (npm run build:ts).
 */
import { join } from 'node:path';

import { cpuHogs, fmt, fmtBytes, logger, machine, nowMs, round, ROOT, stats, table, writeResults } from './lib/common.mjs';

const { Embedding, Model, SparseTensor } = await import(join(ROOT, 'dist/index.js'));
const { SwarmPeer } = await import(join(ROOT, 'dist/swarm/index.js'));

const log = logger('swarm');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const PROPOSALS = arg('proposals', 8);
const V = arg('vocab', 64);
const BATCH = 16;

function lcg(seed) {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}
function genesisModel() {
  const r = lcg(2026);
  const a = new Float32Array(V * V);
  for (let i = 0; i < a.length; i++) a[i] = r() * 2 - 1;
  return new Model([new Embedding(SparseTensor.fromArray(a, V))], { training: { loss: 'cross-entropy', lr: 0.05, clipNorm: 10 } });
}
function batch(r, stride) {
  const start = Math.floor(r() * V);
  const input = Uint32Array.from({ length: BATCH }, (_, i) => (start + i * stride) % V);
  return { input, targets: Uint32Array.from(input, (x) => (x + stride) % V) };
}

async function swarm(trainers, announce) {
  const g0 = await genesisModel().ghost();
  const seq = await SwarmPeer.start({ genesis: g0.digest, sequencer: 'self', ghost: g0, announce });
  const common = { genesis: g0.digest, sequencer: seq.peerId, bootstrap: seq.multiaddrs };
  const W = await SwarmPeer.start({ ...common, ghost: g0 });
  const T = [];
  for (let i = 0; i < trainers; i++) T.push(await SwarmPeer.start({ ...common, model: genesisModel() }));
  await Promise.all(T.map((t) => t.ready()));
  return { g0, seq, W, T, all: [seq, W, ...T] };
}

const results = { name: 'swarm', date: new Date().toISOString(), machine: machine(), config: { V, batch: BATCH, proposalsPerTrainer: PROPOSALS, model: `Embedding ${V} x ${V} (bigram), cross-entropy, SGD lr 0.05`, peers: 'sequencer (verify-only) + 1 verify-only + trainers, one process, loopback TCP' }, runs: [], catchUp: [] };
const rows = [];
for (const [announce, n] of [['entry', 1], ['entry', 2], ['entry', 4], ['digest', 1], ['digest', 2], ['digest', 4]]) {
  log(`${n} trainer(s), announce ${announce}`);
  const s = await swarm(n, announce);
  const lat = [];
  const t0 = nowMs();
  const outs = await Promise.all(s.T.map(async (t, k) => {
    const r = lcg(100 + k);
    const out = [];
    for (let i = 0; i < PROPOSALS; i++) {
      await t.waitFor(s.seq.generation).catch(() => {});
      const a = nowMs();
      const res = await t.propose(batch(r, 1 + 2 * k));
      if (res.accepted) lat.push(nowMs() - a);
      out.push(res);
    }
    return out;
  }));
  await Promise.all(s.all.map((p) => p.waitFor(s.seq.generation)));
  const ms = nowMs() - t0;
  const steps = s.seq.generation;
  const proposals = outs.flat().length;
  const accepted = outs.flat().filter((r) => r.accepted).length;
  const proofBytes = stats(s.seq.entries().map((e) => e.proof.length)).median;
  const peers = s.all.length;
  const bytes = s.all.map((p) => (p.stats.bytesIn + p.stats.bytesOut) / steps);
  const params = V * V * 4;
  const dense = (2 * (peers - 1) / peers) * params * 2; // ring all-reduce: each peer sends and receives 2 (P-1)/P of the gradient
  const digests = new Set(s.all.map((p) => Buffer.from(p.head.digest).toString('hex')));
  const trainersIn = stats(s.T.map((t) => t.stats.bytesIn / steps)).median;
  const run = {
    announce, trainers: n, peers, proposals, accepted, steps, acceptedFraction: round(accepted / proposals), stale: s.seq.stats.stale, ms: round(ms),
    stepsPerSec: round(steps / (ms / 1000)), examplesPerSec: round((steps * BATCH) / (ms / 1000)), proofBytesMedian: proofBytes,
    bytesPerStepPerPeer: { median: round(stats(bytes).median), max: round(Math.max(...bytes)), byPeer: bytes.map((b) => round(b)) },
    denseAllReduceBytesPerStepPerPeer: round(dense), acceptLatencyMs: stats(lat), oneDigest: digests.size === 1,
    trainerBytesInPerStep: round(trainersIn), verifyOnlyBytesInPerStep: round(s.W.stats.bytesIn / steps), sequencerBytesOutPerStep: round(s.seq.stats.bytesOut / steps),
  };
  results.runs.push(run);
  rows.push({ announce, trainers: n, tin: run.trainerBytesInPerStep, win: run.verifyOnlyBytesInPerStep, sout: run.sequencerBytesOutPerStep, steps: `${accepted}/${proposals}`, frac: run.acceptedFraction, sps: run.stepsPerSec, eps: run.examplesPerSec, lat: run.acceptLatencyMs.median, proof: proofBytes, bpp: run.bytesPerStepPerPeer.median, dense: run.denseAllReduceBytesPerStepPerPeer, agree: run.oneDigest ? 'yes' : 'NO' });
  if (n === 1 && announce === 'entry') {
    // Catch-up: a new peer from the shared seed fetches and verifies the log from generation 0.
    const r = lcg(7);
    for (const L of [8, 16, 32]) {
      while (s.seq.generation < L) await s.T[0].propose(batch(r, 1));
      await s.W.waitFor(L);
      const J = await SwarmPeer.start({ genesis: s.g0.digest, sequencer: s.seq.peerId, bootstrap: s.W.multiaddrs, model: genesisModel() });
      const a = nowMs();
      await J.catchUp(s.W.peerId);
      const c = nowMs() - a;
      results.catchUp.push({ logLength: J.generation, ms: round(c), msPerEntry: round(c / J.generation), verified: J.stats.verified, sameDigest: Buffer.from(J.head.digest).equals(Buffer.from(s.seq.head.digest)) });
      log(`catch-up of ${J.generation} entries: ${fmt(c)} ms`);
      await J.stop();
    }
  }
  await Promise.all(s.all.map((p) => p.stop()));
}

table(rows, [
  'announce',
  'trainers',
  { key: 'steps', header: 'accepted/proposed' },
  { key: 'frac', header: 'accepted fraction' },
  { key: 'sps', header: 'steps/s' },
  { key: 'eps', header: 'examples/s' },
  { key: 'lat', header: 'accept latency ms (median)' },
  { key: 'proof', header: 'proof bytes', format: (v) => fmtBytes(v) },
  { key: 'bpp', header: 'bytes/step/peer', format: (v) => fmtBytes(v) },
  { key: 'dense', header: 'dense all-reduce bytes/step/peer', format: (v) => fmtBytes(v) },
  { key: 'tin', header: 'trainer in/step', format: (v) => fmtBytes(v) },
  { key: 'win', header: 'verify-only in/step', format: (v) => fmtBytes(v) },
  { key: 'sout', header: 'sequencer out/step', format: (v) => fmtBytes(v) },
  { key: 'agree', header: 'one digest' },
], { title: `Swarm training on loopback (bigram ${V} x ${V}, batch ${BATCH}, ${PROPOSALS} proposals per trainer)`, notes: ['trainers wait for the head before each proposal; a proposal passed over is stale (another step took its generation)'] });
table(results.catchUp, [{ key: 'logLength', header: 'log length' }, { key: 'ms', header: 'catch-up ms' }, { key: 'msPerEntry', header: 'ms per entry' }, { key: 'sameDigest', header: 'same digest', format: String }], { title: 'A new peer catches up from generation 0 (fetch + verify + replay)' });
results.cpuHogsAtEnd = cpuHogs();
log(`wrote ${writeResults(results.name, results)}`);
process.exit(0);
