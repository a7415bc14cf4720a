#!/usr/bin/env node
/**
 * Prover service benchmark: forward requests with proofs over HTTP on loopback
 * (autocannon), then a soak that samples the server's memory.
 *
 *   node --expose-gc bench/serve.mjs                      full run: 20 s per batch size, 10 min soak
 *   node --expose-gc bench/serve.mjs --soak-seconds 60    shorter soak
 *   --phase-seconds S   seconds per batch-size phase (default 20)
 *   --n N --dim D --k K --dout V   the served model (default: the demo's shape, N = 2048 patterns
 *                       of 784, k = 32, values of 10, cosine on normalised input; random patterns)
 *   --connections C     concurrent connections (default 4; the server proves 2 at once)
 *   --quick             5 s phases and a 20 s soak (a smoke run); writes serve-quick.json
 *
 * The server is `ghost-tensor serve` in a child process (so autocannon's own CPU use
 * and memory are not the server's), on 127.0.0.1, with --max-batch 64, --concurrency 2
 * and a queue of 1024. Each request is POST /forward with B random inputs (B = 1, then
 * B = 64): the server runs the canonical forward, builds the Merkle multiproofs and
 * encodes the proof (docs/serving.md). One answer of each batch size is verified
 * (verifyForward, outside the timed phases) before the phase.
 *
 * Figures: requests/s (mean over the phase), latency p50 / p99 (ms), response bytes,
 * errors (connection errors + timeouts + non-2xx: must be 0). Soak: batch 1 for
 * --soak-seconds, the server's RSS (/proc/<pid>/status VmRSS) sampled every 5 s;
 * "grew" compares the mean of the first minute with the mean of the last (first and
 * last 20% of the samples when the soak is shorter than 3 minutes), after a 30 s warm-up
 * (10% of the soak when shorter) that is left out of both.
 *
 * Tables go to stdout, progress to stderr; results to bench/results/serve.json.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import autocannon from 'autocannon';

import { cpuHogs, fmt, fmtBytes, logger, machine, otherProcesses, randomFloats, rng, round, ROOT, table, writeResults } from './lib/common.mjs';
import { HopfieldLookup, Model, SparseTensor, pinGhost, simdInfo, verifyForward } from '../dist/index.js';
import { encodeForwardRequest } from '../dist/internal.js';

const log = logger('serve');
const { values: a } = parseArgs({
  options: {
    'soak-seconds': { type: 'string', default: '600' },
    'phase-seconds': { type: 'string', default: '20' },
    n: { type: 'string', default: '2048' },
    dim: { type: 'string', default: '784' },
    k: { type: 'string', default: '32' },
    dout: { type: 'string', default: '10' },
    connections: { type: 'string', default: '4' },
    quick: { type: 'boolean', default: false },
  },
});
const quick = a.quick;
const soakSeconds = quick ? 20 : Number(a['soak-seconds']);
const phaseSeconds = quick ? 5 : Number(a['phase-seconds']);
const N = Number(a.n), D = Number(a.dim), K = Number(a.k), DV = Number(a.dout), C = Number(a.connections);
const params = { n: N, dim: D, k: K, dout: DV, similarity: 'cosine', normalize: true, connections: C, phaseSeconds, soakSeconds, serverConcurrency: 2, maxBatch: 64, host: '127.0.0.1' };

// ----------------------------------------------------------------- the served model
const rand = rng(7);
const tmp = mkdtempSync(join(tmpdir(), 'gt-bench-serve-'));
const dir = join(tmp, 'model');
{
  const layer = new HopfieldLookup({
    keys: SparseTensor.fromArray(randomFloats(rand, N * D), D),
    values: SparseTensor.fromArray(randomFloats(rand, N * DV), DV),
    k: K,
    similarity: 'cosine',
    normalize: true,
  });
  await new Model([layer]).save(dir);
}
const ghostBytes = new Uint8Array(readFileSync(join(dir, 'ghost.bin')));
const ghost = await pinGhost(ghostBytes);

// ----------------------------------------------------------------- the server (child process)
const child = spawn(process.execPath, [join(ROOT, 'bin', 'ghost-tensor.mjs'), 'serve', dir, '--port', '0', '--max-batch', '64', '--concurrency', '2', '--queue', '1024'], { stdio: ['ignore', 'pipe', 'inherit'] });
let banner = '';
child.stdout.setEncoding('utf8');
child.stdout.on('data', (s) => (banner += s));
for (let i = 0; i < 600 && !/training /.test(banner); i++) await new Promise((r) => setTimeout(r, 50));
const url = /serving (\S+)/.exec(banner)?.[1];
if (!url) throw new Error(`the server did not start: ${banner}`);
log(`server pid ${child.pid} at ${url}; model N = ${N} x ${D}, k = ${K}, values ${DV}`);

function rssBytes() {
  const s = readFileSync(`/proc/${child.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(s)[1]) * 1024;
}

function body(B) {
  return Buffer.from(encodeForwardRequest({ kind: 'f32', rows: B, cols: D, data: randomFloats(rand, B * D) }));
}

async function checkOne(B) {
  const res = await fetch(`${url}/forward`, { method: 'POST', body: body(B) });
  if (!res.ok) throw new Error(`POST /forward (B = ${B}) -> ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const v = await verifyForward(ghost, bytes);
  if (v.rows !== B || v.cols !== DV) throw new Error('wrong shape');
  return bytes.length;
}

function cannon(opts) {
  return new Promise((resolve, reject) => {
    const inst = autocannon({ url: `${url}/forward`, method: 'POST', headers: { 'content-type': 'application/octet-stream' }, connections: C, timeout: 30, ...opts }, (err, r) => (err ? reject(err) : resolve(r)));
    autocannon.track(inst, { renderProgressBar: false, renderResultsTable: false, renderLatencyTable: false });
  });
}

const summarise = (r) => ({
  requestsPerSecond: round(r.requests.average, 4),
  latencyMsP50: r.latency.p50,
  latencyMsP99: r.latency.p99,
  latencyMsMean: round(r.latency.average, 4),
  requests: r.requests.total,
  errors: r.errors + r.timeouts + r.non2xx,
  connectionErrors: r.errors,
  timeouts: r.timeouts,
  non2xx: r.non2xx,
  durationSeconds: r.duration,
  bytesPerSecond: round(r.throughput.average, 4),
});

const phases = [];
try {
  for (const B of [1, 64]) {
    const proofBytes = await checkOne(B);
    // A few bodies, cycled, so the server does not see one input only.
    const requests = Array.from({ length: 8 }, () => ({ method: 'POST', body: body(B) }));
    log(`batch ${B}: ${phaseSeconds} s, ${C} connections (proof of ${fmtBytes(proofBytes)} verified first)`);
    const r = await cannon({ duration: phaseSeconds, requests });
    phases.push({ batch: B, proofBytes, rssBytesAfter: rssBytes(), ...summarise(r) });
  }

  // ----------------------------------------------------------------- soak
  log(`soak: batch 1 for ${soakSeconds} s, RSS sampled every 5 s`);
  const samples = [];
  const t0 = Date.now();
  samples.push({ t: 0, rss: rssBytes() });
  const timer = setInterval(() => {
    samples.push({ t: (Date.now() - t0) / 1000, rss: rssBytes() });
    const last = samples[samples.length - 1];
    if (samples.length % 12 === 0) log(`  ${last.t.toFixed(0)} s: server RSS ${fmtBytes(last.rss)}`);
  }, 5000);
  const requests = Array.from({ length: 16 }, () => ({ method: 'POST', body: body(1) }));
  const soak = await cannon({ duration: soakSeconds, requests });
  clearInterval(timer);
  samples.push({ t: (Date.now() - t0) / 1000, rss: rssBytes() });

  const warm = Math.min(30, soakSeconds * 0.1);
  const window = soakSeconds >= 180 ? 60 : soakSeconds * 0.2;
  const mean = (xs) => xs.reduce((s, x) => s + x.rss, 0) / Math.max(1, xs.length);
  const first = samples.filter((s) => s.t >= warm && s.t < warm + window);
  const last = samples.filter((s) => s.t > soakSeconds - window);
  const firstMean = mean(first), lastMean = mean(last);
  const growth = (lastMean - firstMean) / firstMean;
  // "Grew": the last window's mean is more than 5% (and 16 MiB) above the first's.
  const grew = growth > 0.05 && lastMean - firstMean > 16 * 2 ** 20;
  const soakResult = {
    batch: 1,
    ...summarise(soak),
    rss: { warmupSeconds: warm, windowSeconds: window, firstWindowMeanBytes: Math.round(firstMean), lastWindowMeanBytes: Math.round(lastMean), growth: round(growth, 4), grew, maxBytes: Math.max(...samples.map((s) => s.rss)), samples: samples.map((s) => ({ t: round(s.t, 4), rssBytes: s.rss })) },
  };

  // ----------------------------------------------------------------- report
  const rows = [...phases.map((p) => ({ phase: `batch ${p.batch}`, ...p })), { phase: `soak (batch 1, ${soakSeconds} s)`, ...soakResult, proofBytes: phases[0].proofBytes }];
  table(
    rows,
    [
      'phase',
      { key: 'requestsPerSecond', header: 'req/s' },
      { key: 'requestsPerSecond', header: 'inputs/s', format: (v, r) => fmt(v * (r.batch ?? 1)) },
      { key: 'latencyMsP50', header: 'p50 ms' },
      { key: 'latencyMsP99', header: 'p99 ms' },
      { key: 'proofBytes', header: 'proof', format: (v) => fmtBytes(v) },
      { key: 'requests', header: 'requests' },
      { key: 'errors', header: 'errors' },
    ],
    {
      title: `forward + proof over HTTP (loopback, ${C} connections; N = ${fmt(N)} x ${D}, k = ${K})`,
      notes: [
        `server RSS during the soak: first ${window.toFixed(0)} s after warm-up ${fmtBytes(firstMean)}, last ${window.toFixed(0)} s ${fmtBytes(lastMean)} (${(100 * growth).toFixed(1)}%): ${grew ? 'GREW' : 'no growth'}; max ${fmtBytes(soakResult.rss.maxBytes)}`,
      ],
    },
  );
  const errors = phases.reduce((s, p) => s + p.errors, 0) + soakResult.errors;
  const file = writeResults(quick ? 'serve-quick' : 'serve', {
    name: 'serve',
    date: new Date().toISOString(),
    command: ['node --expose-gc bench/serve.mjs', ...process.argv.slice(2)].join(' '),
    machine: machine({ simd: simdInfo().level }),
    otherProcesses: otherProcesses({ exclude: ['bench/serve.mjs', 'ghost-tensor.mjs serve'] }),
    cpuHogs: cpuHogs(),
    parameters: params,
    ghostDigest: Buffer.from(ghost.digest).toString('hex'),
    phases,
    soak: soakResult,
    errors,
  });
  log(`wrote ${file}`);
  if (errors > 0) {
    log(`${errors} errors`);
    process.exitCode = 1;
  }
} finally {
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  rmSync(tmp, { recursive: true, force: true });
}
