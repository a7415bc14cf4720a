/**
 * Training together (docs/swarm.md): a sequencer, a verify-only peer and 1, 2, 4
 * trainers on loopback TCP, one process, train a bigram model (an Embedding of V x V,
 * cross-entropy) by step proofs for a fixed number of proposals per trainer. Measures
 * the swarm's sequenced steps/s and examples/s, the fraction of proposals accepted (the
 * concurrency rule passes over stale steps), bytes per step per peer against a dense
 * ring all-reduce of the same model, the latency from a proposal to its acceptance, the
 * verified-step latency (from the moment the trainer's step proof was made to the moment
 * each peer, and the last peer, applied it: p50 and p99 per trainer count and per peer), and
 * the time a new peer takes to fetch and verify a log of L entries from generation 0,
 * against joining by a checkpoint (verifyFrom 'checkpoint': the trainer's tensor files
 * and optimizer state, checked against the chain the sequencer's log headers name).
 * Each swarm runs twice: the sequencer publishing whole log entries, then only their
 * digests (announce: 'digest'; peers fetch the proof). Bytes are the payloads the peers'
 * stats count: messages that reached validation (gossipsub drops a duplicate before it,
 * so the copies a mesh forwards twice are not counted) and fetch frames.
 *
 * node bench/swarm.mjs [--proposals N] [--vocab V] [--catchup-only 1]; progress to stderr, results to
 * bench/results/swarm.json (swarm-catchup.json with --catchup-only 1: one trainer, then
 * only the catch-up table). Needs dist/ (npm run build:ts).
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
const CATCHUP_ONLY = arg('catchup-only', 0) === 1;

/** The q-quantile of sorted samples (linear between neighbours). */
function quantileOf(sorted, q) {
  if (sorted.length === 0) return NaN;
  const x = (sorted.length - 1) * q, i = Math.floor(x), f = x - i;
  return i + 1 < sorted.length ? sorted[i] * (1 - f) + sorted[i + 1] * f : sorted[i];
}
const p50p99 = (samples) => {
  const s = [...samples].sort((a, b) => a - b);
  return { p50: round(quantileOf(s, 0.5)), p99: round(quantileOf(s, 0.99)), max: round(s[s.length - 1]), n: s.length };
};

/**
 * When each peer applied each generation (performance.now(), the clock of
 * ProposeResult.provedAt): waitFor(g) resolves in the peer's apply of the step to g.
 */
function watchApplies(peers) {
  const at = peers.map(() => new Map());
  peers.forEach(async (p, i) => {
    for (let g = p.generation + 1; ; g++) {
      try {
        await p.waitFor(g, 600_000);
      } catch {
        return; // stopped
      }
      at[i].set(g, performance.now());
    }
  });
  return at;
}

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

const results = { name: CATCHUP_ONLY ? 'swarm-catchup' : 'swarm', date: new Date().toISOString(), machine: machine(), config: { V, batch: BATCH, proposalsPerTrainer: PROPOSALS, model: `Embedding ${V} x ${V} (bigram), cross-entropy, SGD lr 0.05`, peers: 'sequencer (verify-only) + 1 verify-only + trainers, one process, loopback TCP' }, runs: [], catchUp: [] };
const rows = [];
const configs = CATCHUP_ONLY ? [['entry', 1]] : [['entry', 1], ['entry', 2], ['entry', 4], ['digest', 1], ['digest', 2], ['digest', 4]];
for (const [announce, n] of configs) {
  log(`${n} trainer(s), announce ${announce}`);
  const s = await swarm(n, announce);
  const applied = watchApplies(s.all);
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
  // Verified-step latency: from the trainer's proof to each peer's apply of the step (generation g -> g + 1).
  const acc = outs.flat().filter((r) => r.accepted);
  const perPeer = s.all.map((_, i) => acc.map((r) => applied[i].get(r.generation + 1) - r.provedAt));
  const lastPeer = acc.map((r) => Math.max(...s.all.map((_, i) => applied[i].get(r.generation + 1))) - r.provedAt);
  const roles = ['sequencer', 'verify-only', ...s.T.map((_, k) => `trainer ${k + 1}`)];
  const appliedLatencyMs = { lastPeer: p50p99(lastPeer), byPeer: Object.fromEntries(roles.map((role, i) => [role, p50p99(perPeer[i])])) };
  const trainersIn = stats(s.T.map((t) => t.stats.bytesIn / steps)).median;
  const run = {
    announce, trainers: n, peers, proposals, accepted, steps, acceptedFraction: round(accepted / proposals), stale: s.seq.stats.stale, ms: round(ms),
    stepsPerSec: round(steps / (ms / 1000)), examplesPerSec: round((steps * BATCH) / (ms / 1000)), proofBytesMedian: proofBytes,
    bytesPerStepPerPeer: { median: round(stats(bytes).median), max: round(Math.max(...bytes)), byPeer: bytes.map((b) => round(b)) },
    denseAllReduceBytesPerStepPerPeer: round(dense), acceptLatencyMs: stats(lat), appliedLatencyMs, oneDigest: digests.size === 1,
    trainerBytesInPerStep: round(trainersIn), verifyOnlyBytesInPerStep: round(s.W.stats.bytesIn / steps), sequencerBytesOutPerStep: round(s.seq.stats.bytesOut / steps),
  };
  results.runs.push(run);
  rows.push({ announce, trainers: n, tin: run.trainerBytesInPerStep, win: run.verifyOnlyBytesInPerStep, sout: run.sequencerBytesOutPerStep, steps: `${accepted}/${proposals}`, frac: run.acceptedFraction, sps: run.stepsPerSec, eps: run.examplesPerSec, lat: run.acceptLatencyMs.median, l50: appliedLatencyMs.lastPeer.p50, l99: appliedLatencyMs.lastPeer.p99, proof: proofBytes, bpp: run.bytesPerStepPerPeer.median, dense: run.denseAllReduceBytesPerStepPerPeer, agree: run.oneDigest ? 'yes' : 'NO' });
  if (n === 1 && announce === 'entry') {
    // Catch-up: a new peer from the shared seed fetches and verifies the log from generation 0.
    const r = lcg(7);
    // Log lengths above what the run itself sequenced (16 proposals already make a log of 16).
    for (const L of [8, 16, 32, 64].filter((x) => x >= s.seq.generation)) {
      while (s.seq.generation < L) await s.T[0].propose(batch(r, 1));
      await s.W.waitFor(L);
      const J = await SwarmPeer.start({ genesis: s.g0.digest, sequencer: s.seq.peerId, bootstrap: s.W.multiaddrs, model: genesisModel() });
      const a = nowMs();
      await J.catchUp(s.W.peerId);
      const c = nowMs() - a;
      // By a checkpoint: the trainer's files (checked against the sequencer's headers), then no entry left to verify.
      const K = await SwarmPeer.start({ genesis: s.g0.digest, sequencer: s.seq.peerId, bootstrap: [...s.seq.multiaddrs, ...s.T[0].multiaddrs], model: genesisModel(), verifyFrom: 'checkpoint' });
      while (!K.libp2p.getPeers().some((p) => p.toString() === s.T[0].peerId)) await new Promise((res) => setTimeout(res, 10));
      const b = nowMs();
      await K.catchUp(undefined, { checkpointPeers: [s.T[0].peerId] });
      const k = nowMs() - b;
      const same = (p) => Buffer.from(p.head.digest).equals(Buffer.from(s.seq.head.digest));
      results.catchUp.push({
        logLength: J.generation, ms: round(c), msPerEntry: round(c / J.generation), verified: J.stats.verified, bytesIn: J.stats.bytesIn, sameDigest: same(J),
        checkpoint: { ms: round(k), bytesIn: K.stats.bytesIn, installed: K.stats.checkpoints, entriesVerifiedAfter: K.stats.verified, sameDigest: same(K) && Buffer.from((await K.model.ghost()).digest).equals(Buffer.from(s.seq.head.digest)) },
      });
      log(`catch-up of ${J.generation} entries: ${fmt(c)} ms by the log, ${fmt(k)} ms by a checkpoint`);
      await Promise.all([J.stop(), K.stop()]);
      J.model.close();
      K.model.close();
    }
  }
  await Promise.all(s.all.map((p) => p.stop()));
}

if (results.runs.length > 0) {
  table(results.runs.flatMap((r) => Object.entries(r.appliedLatencyMs.byPeer).map(([peer, l]) => ({ announce: r.announce, trainers: r.trainers, peer, p50: l.p50, p99: l.p99, max: l.max, n: l.n }))), [
    'announce', 'trainers', 'peer', { key: 'p50', header: 'proof -> applied ms p50' }, { key: 'p99', header: 'p99' }, { key: 'max', header: 'max' }, { key: 'n', header: 'steps' },
  ], { title: 'Verified-step latency per peer: from the moment the trainer made its step proof to the moment the peer applied it (verified; a peer with a model also replayed it)' });
}
if (rows.length > 0) table(rows, [
  'announce',
  'trainers',
  { key: 'steps', header: 'accepted/proposed' },
  { key: 'frac', header: 'accepted fraction' },
  { key: 'sps', header: 'steps/s' },
  { key: 'eps', header: 'examples/s' },
  { key: 'lat', header: 'accept latency ms (median)' },
  { key: 'l50', header: 'proof -> last peer applied ms p50' },
  { key: 'l99', header: 'p99' },
  { key: 'proof', header: 'proof bytes', format: (v) => fmtBytes(v) },
  { key: 'bpp', header: 'bytes/step/peer', format: (v) => fmtBytes(v) },
  { key: 'dense', header: 'dense all-reduce bytes/step/peer', format: (v) => fmtBytes(v) },
  { key: 'tin', header: 'trainer in/step', format: (v) => fmtBytes(v) },
  { key: 'win', header: 'verify-only in/step', format: (v) => fmtBytes(v) },
  { key: 'sout', header: 'sequencer out/step', format: (v) => fmtBytes(v) },
  { key: 'agree', header: 'one digest' },
], { title: `Swarm training on loopback (bigram ${V} x ${V}, batch ${BATCH}, ${PROPOSALS} proposals per trainer)`, notes: ['trainers wait for the head before each proposal; a proposal passed over is stale (another step took its generation)'] });
table(results.catchUp.map((c) => ({ ...c, cpMs: c.checkpoint.ms, cpBytes: c.checkpoint.bytesIn, cpSame: c.checkpoint.sameDigest })), [
  { key: 'logLength', header: 'log length' },
  { key: 'ms', header: 'by the log: ms' },
  { key: 'msPerEntry', header: 'ms per entry' },
  { key: 'bytesIn', header: 'bytes in', format: (v) => fmtBytes(v) },
  { key: 'cpMs', header: 'by a checkpoint: ms' },
  { key: 'cpBytes', header: 'bytes in', format: (v) => fmtBytes(v) },
  { key: 'sameDigest', header: 'same digest (log)', format: String },
  { key: 'cpSame', header: 'same digest (checkpoint)', format: String },
], { title: 'A new peer catches up from generation 0: log replay (fetch + verify + replay) against a checkpoint (headers + files + Model.load)' });
results.cpuHogsAtEnd = cpuHogs();
log(`wrote ${writeResults(results.name, results)}`);
process.exit(0);
