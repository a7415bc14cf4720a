#!/usr/bin/env node
/**
 * Prover service benchmark: forward requests with proofs over HTTP on loopback, side
 * by side with the same service answering without proofs, then a soak that samples the
 * server's memory.
 *
 *   node --expose-gc bench/serve.mjs                      full run: 20 s per phase, 10 min soak
 *   node --expose-gc bench/serve.mjs --soak-seconds 60    shorter soak
 *   --phase-seconds S   seconds per phase (default 20)
 *   --batches 1,32,64   batch sizes (inputs per request)
 *   --n N --dim D --k K --dout V   the served model (default: the demo's shape, N = 2048 patterns
 *                       of 784, k = 32, values of 10, cosine on normalised input; random patterns)
 *   --connections C     concurrent connections (default 4)
 *   --concurrency P     requests the server proves at once (default 4)
 *   --client lean|autocannon   the load generator (default lean: bench/lib/http-load.mjs,
 *                       raw keep-alive sockets that skip the answer by its Content-Length;
 *                       autocannon parses every answer in JavaScript, about a core at batch 32)
 *   --no-batch-search   the server scans once per proof (ProverServerOptions.batchSearch false)
 *   --threads T         the servers' --threads (threads of each scan; default: the machine's cores)
 *   --server-node-args "..."   extra node flags for the servers (e.g. "--cpu-prof --cpu-prof-dir D")
 *   --heap-mb M         the servers run with node --initial-old-space-size=M, as deploy/ starts the
 *                       service (default 64; 0: V8's default, whose old-generation limit on a heap of
 *                       ~8 MiB kept a major collection running back to back: docs/serving.md)
 *   --perf DIR          record the proving server with `perf record -g` during each phase with proofs
 *                       (after an unrecorded warm-up of up to 3 s) into DIR/batch-B.data (the servers
 *                       get --perf-basic-prof, so node leaves /tmp/perf-PID.map files behind); then
 *                       `perf script -i DIR/batch-1.data | node bench/lib/perf-breakdown.mjs`
 *   --quick             5 s phases and a 20 s soak (a smoke run); writes serve-quick.json
 *   --out NAME          write bench/results/NAME.json instead
 *   --workers N         the servers' --workers (N processes on one port; CPU and RSS are summed
 *                       over the primary and the workers; the workers run this tree's bin/, even with --dist)
 *   --dist DIR          the servers run the build in DIR (a copy of dist/ at the repository's root,
 *                       e.g. one from before a change; default dist)
 *   --session           after each batch's phases, one more with proofs in which every connection keeps
 *                       a pattern-cache session (the proving server runs --sessions 2C): the server sends
 *                       rows it believes the client holds as ids. The load generator neither verifies nor
 *                       keeps rows (it echoes the answer's seq): the server's side of a session only, and
 *                       with the phase's 8 inputs cycled every row recurs (the best case for a session)
 *
 * Two servers run as `ghost-tensor serve` child processes (so the load generator's CPU
 * and memory are not the servers'), on 127.0.0.1, --max-batch 64, --queue 1024: one
 * answers with proofs (the canonical forward, the Merkle multiproofs, the encoded
 * proof), the other with `--no-proofs` (the fast f32 forward's output only: what the
 * service costs without proofs). Each phase runs on the one, then on the other. One
 * answer with a proof of each batch size is verified (verifyForward, outside the timed
 * phases) before its phase.
 *
 * Figures: requests/s and inputs/s (over the phase), latency p50 / p99 (ms), answer
 * bytes, the server's CPU time per request (user + system of the server process, from
 * /proc/PID/stat: the machine's other load does not enter it as it enters the rates),
 * errors (connection errors + timeouts + non-2xx: must be 0), and the ratio without /
 * with proofs. The load generator's own CPU per request (this process: user + system, the
 * kernel's receive path included) is reported too: on two cores what it takes is not the
 * servers'. Soak: batch 1 with proofs for --soak-seconds, the server's RSS
 * (/proc/<pid>/status VmRSS) sampled every 5 s; "grew" compares the mean of the first
 * minute with the mean of the last (first and last 20% of the samples when the soak is
 * shorter than 3 minutes), after a 30 s warm-up (10% of the soak when shorter) that is
 * left out of both.
 *
 * Tables go to stdout, progress to stderr; results to bench/results/serve.json.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import autocannon from 'autocannon';

import { cpuHogs, fmt, fmtBytes, logger, machine, otherProcesses, randomFloats, rng, round, ROOT, table, writeResults } from './lib/common.mjs';
import { httpLoad } from './lib/http-load.mjs';
import { HopfieldLookup, Model, SparseTensor, pinGhost, simdInfo, verifyForward } from '../dist/index.js';
import { encodeForwardRequest } from '../dist/internal.js';

const log = logger('serve');
const { values: a } = parseArgs({
  options: {
    'soak-seconds': { type: 'string', default: '600' },
    'phase-seconds': { type: 'string', default: '20' },
    batches: { type: 'string', default: '1,32,64' },
    n: { type: 'string', default: '2048' },
    dim: { type: 'string', default: '784' },
    k: { type: 'string', default: '32' },
    dout: { type: 'string', default: '10' },
    connections: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '4' },
    client: { type: 'string', default: 'lean' },
    'no-batch-search': { type: 'boolean', default: false },
    threads: { type: 'string' },
    'server-node-args': { type: 'string', default: '' },
    'heap-mb': { type: 'string', default: '64' },
    perf: { type: 'string' },
    quick: { type: 'boolean', default: false },
    out: { type: 'string' },
    dist: { type: 'string', default: 'dist' },
    workers: { type: 'string', default: '1' },
    session: { type: 'boolean', default: false },
  },
});
const quick = a.quick;
const soakSeconds = quick ? 20 : Number(a['soak-seconds']);
const phaseSeconds = quick ? 5 : Number(a['phase-seconds']);
const N = Number(a.n), D = Number(a.dim), K = Number(a.k), DV = Number(a.dout), C = Number(a.connections), P = Number(a.concurrency);
const batches = a.batches.split(',').map(Number);
if (a.client !== 'lean' && a.client !== 'autocannon') throw new Error('--client takes lean or autocannon');
const batchSearch = !a['no-batch-search'];
const params = { n: N, dim: D, k: K, dout: DV, similarity: 'cosine', normalize: true, connections: C, phaseSeconds, soakSeconds, batches, serverConcurrency: P, batchSearch, heapMb: Number(a['heap-mb']), threads: a.threads === undefined ? null : Number(a.threads), client: a.client, maxBatch: 64, host: '127.0.0.1', dist: a.dist, workers: Number(a.workers) };

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

// ----------------------------------------------------------------- the servers (child processes)
async function startServer(extra) {
  const heapMb = Number(a['heap-mb']);
  const nodeArgs = [...(heapMb > 0 ? [`--initial-old-space-size=${heapMb}`] : []), ...a['server-node-args'].split(' ').filter(Boolean), ...(a.perf === undefined ? [] : ['--perf-basic-prof'])];
  // The servers run the CLI of --dist (default dist/, as bin/ghost-tensor.mjs does); the client side always dist/.
  const cli = a.dist === 'dist' ? [join(ROOT, 'bin', 'ghost-tensor.mjs')] : ['--input-type=module', '-e', `const { main } = await import(${JSON.stringify(pathToFileURL(join(ROOT, a.dist, 'cli', 'main.js')).href)}); process.exitCode = await main(process.argv.slice(1));`];
  const workers = Number(a.workers);
  const args = [...nodeArgs, ...cli, 'serve', dir, '--port', '0', '--max-batch', '64', '--concurrency', String(P), '--queue', '1024', ...(batchSearch ? [] : ['--no-batch-search']), ...(a.threads === undefined ? [] : ['--threads', a.threads]), ...(workers > 1 ? ['--workers', String(workers)] : []), ...extra];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let banner = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (s) => (banner += s));
  const done = workers > 1 ? /workers \d+ \(pids [\d, ]+\)/ : /training /;
  for (let i = 0; i < 600 && !done.test(banner); i++) await new Promise((r) => setTimeout(r, 50));
  const url = /serving (\S+)/.exec(banner)?.[1];
  if (!url) throw new Error(`the server did not start: ${banner}`);
  // With --workers, the CPU and memory are the primary's and every worker's.
  const pids = [child.pid, ...(/\(pids ([\d, ]+)\)/.exec(banner)?.[1].split(', ').map(Number) ?? [])];
  return { child, url, pids };
}
const proved = await startServer(a.session ? ['--sessions', String(2 * C)] : []);
const plain = await startServer(['--no-proofs']);
log(`servers: with proofs pid ${proved.child.pid} at ${proved.url}, without pid ${plain.child.pid} at ${plain.url}; model N = ${N} x ${D}, k = ${K}, values ${DV}; ${C} connections, ${P} proved at once, batched search ${batchSearch ? 'on' : 'off'}, client ${a.client}`);

/** Resident memory of the server's processes (summed: the workers' shared pages of the tensor files count once per worker). */
function rssBytes(pids) {
  let sum = 0;
  for (const pid of [pids].flat()) sum += Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
  return sum;
}
/** User + system CPU seconds of the server's processes so far. */
function cpuSeconds(pids) {
  let sum = 0;
  for (const pid of [pids].flat()) {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
    sum += (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
  }
  return sum;
}

function body(B) {
  return Buffer.from(encodeForwardRequest({ kind: 'f32', rows: B, cols: D, data: randomFloats(rand, B * D) }));
}

async function checkOne(url, B) {
  const res = await fetch(`${url}/forward`, { method: 'POST', body: body(B) });
  if (!res.ok) throw new Error(`POST /forward (B = ${B}) -> ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const v = await verifyForward(ghost, bytes);
  if (v.rows !== B || v.cols !== DV) throw new Error('wrong shape');
  return bytes.length;
}

function cannon(url, opts) {
  return new Promise((resolve, reject) => {
    const inst = autocannon({ url: `${url}/forward`, method: 'POST', headers: { 'content-type': 'application/octet-stream' }, connections: C, timeout: 30, ...opts }, (err, r) => (err ? reject(err) : resolve(r)));
    autocannon.track(inst, { renderProgressBar: false, renderResultsTable: false, renderLatencyTable: false });
  });
}

const summariseCannon = (r) => ({
  requestsPerSecond: round(r.requests.total / r.duration, 4),
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

/** One load run against a server: the load generator's figures, the server's CPU per request and the load generator's. */
async function load(server, bodies, seconds, perfFile, session = false) {
  let perf = null;
  if (perfFile !== undefined) {
    // A warm-up first, not recorded: the server's first seconds are mostly JIT compilation.
    await httpLoad({ url: server.url, path: '/forward', bodies, connections: C, seconds: Math.min(3, seconds) });
    mkdirSync(a.perf, { recursive: true });
    perf = spawn('perf', ['record', '-F', '999', '-g', '-o', perfFile, '-p', server.pids.join(',')], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 300));
  }
  const own0 = process.cpuUsage();
  const cpu0 = cpuSeconds(server.pids);
  let r;
  if (a.client === 'lean') {
    const x = await httpLoad({ url: server.url, path: '/forward', bodies, connections: C, seconds, session });
    r = { ...x, requestsPerSecond: round(x.requestsPerSecond, 4), latencyMsP50: round(x.latencyMsP50, 4), latencyMsP99: round(x.latencyMsP99, 4), latencyMsMean: round(x.latencyMsMean, 4), durationSeconds: round(x.durationSeconds, 4), bytesPerSecond: round(x.bytes / x.durationSeconds, 4) };
  } else {
    r = summariseCannon(await cannon(server.url, { duration: seconds, requests: bodies.map((b) => ({ method: 'POST', body: b })) }));
  }
  const cpu = cpuSeconds(server.pids) - cpu0;
  const own = process.cpuUsage(own0);
  if (perf) {
    perf.kill('SIGINT');
    await new Promise((r) => perf.once('exit', r));
  }
  return { ...r, serverCpuSeconds: round(cpu, 4), serverCpuMsPerRequest: round((1000 * cpu) / Math.max(1, r.requests), 4), clientCpuMsPerRequest: round((own.user + own.system) / 1000 / Math.max(1, r.requests), 4), rssBytesAfter: rssBytes(server.pids) };
}

const phases = [];
try {
  for (const B of batches) {
    const proofBytes = await checkOne(proved.url, B);
    // A few bodies, cycled, so the server does not see one input only.
    const bodies = Array.from({ length: 8 }, () => body(B));
    log(`batch ${B}: ${phaseSeconds} s with proofs (proof of ${fmtBytes(proofBytes)} verified first), then ${phaseSeconds} s without`);
    const withProofs = await load(proved, bodies, phaseSeconds, a.perf === undefined ? undefined : join(a.perf, `batch-${B}.data`));
    const without = await load(plain, bodies, phaseSeconds);
    phases.push({ batch: B, proofBytes, ...withProofs, noProofs: without, costRatio: round(without.requestsPerSecond / withProofs.requestsPerSecond, 4), cpuRatio: round(withProofs.serverCpuMsPerRequest / without.serverCpuMsPerRequest, 4) });
    if (a.session) {
      if (a.client !== 'lean') throw new Error('--session takes the lean client');
      log(`batch ${B}: ${phaseSeconds} s with proofs, a session per connection (the load generator does not verify)`);
      const s = await load(proved, bodies, phaseSeconds, undefined, true);
      phases.push({ batch: B, session: true, proofBytes: Math.round(s.bytes / Math.max(1, s.requests)), ...s });
    }
  }

  // ----------------------------------------------------------------- soak
  let soakResult = null;
  if (soakSeconds > 0) {
    log(`soak: batch 1 with proofs for ${soakSeconds} s, RSS sampled every 5 s`);
    const pid = proved.pids;
    const samples = [];
    const t0 = Date.now();
    samples.push({ t: 0, rss: rssBytes(pid) });
    const timer = setInterval(() => {
      samples.push({ t: (Date.now() - t0) / 1000, rss: rssBytes(pid) });
      const last = samples[samples.length - 1];
      if (samples.length % 12 === 0) log(`  ${last.t.toFixed(0)} s: server RSS ${fmtBytes(last.rss)}`);
    }, 5000);
    const soak = await load(proved, Array.from({ length: 16 }, () => body(1)), soakSeconds);
    clearInterval(timer);
    samples.push({ t: (Date.now() - t0) / 1000, rss: rssBytes(pid) });

    const warm = Math.min(30, soakSeconds * 0.1);
    const window = soakSeconds >= 180 ? 60 : soakSeconds * 0.2;
    const mean = (xs) => xs.reduce((s, x) => s + x.rss, 0) / Math.max(1, xs.length);
    const first = samples.filter((s) => s.t >= warm && s.t < warm + window);
    const last = samples.filter((s) => s.t > soakSeconds - window);
    const firstMean = mean(first), lastMean = mean(last);
    const growth = (lastMean - firstMean) / firstMean;
    // "Grew": the last window's mean is more than 5% (and 16 MiB) above the first's.
    const grew = growth > 0.05 && lastMean - firstMean > 16 * 2 ** 20;
    soakResult = {
      batch: 1,
      ...soak,
      rss: { warmupSeconds: warm, windowSeconds: window, firstWindowMeanBytes: Math.round(firstMean), lastWindowMeanBytes: Math.round(lastMean), growth: round(growth, 4), grew, maxBytes: Math.max(...samples.map((s) => s.rss)), samples: samples.map((s) => ({ t: round(s.t, 4), rssBytes: s.rss })) },
    };
  }

  // ----------------------------------------------------------------- report
  const rows = [
    ...phases.map((p) => (p.session ? { phase: `batch ${p.batch}, session`, ...p } : { phase: `batch ${p.batch}`, ...p, plainInputs: p.noProofs.requestsPerSecond * p.batch, plainP99: p.noProofs.latencyMsP99, plainCpu: p.noProofs.serverCpuMsPerRequest })),
    ...(soakResult ? [{ phase: `soak (batch 1, ${soakSeconds} s)`, ...soakResult, proofBytes: phases.find((p) => p.batch === 1 && !p.session)?.proofBytes }] : []),
  ];
  const opt = (f) => (v) => (v === undefined || v === null ? '' : f(v));
  table(
    rows,
    [
      'phase',
      { key: 'requestsPerSecond', header: 'req/s' },
      { key: 'requestsPerSecond', header: 'inputs/s', format: (v, r) => fmt(v * (r.batch ?? 1)) },
      { key: 'latencyMsP50', header: 'p50 ms', format: (v) => fmt(round(v, 2)) },
      { key: 'latencyMsP99', header: 'p99 ms', format: (v) => fmt(round(v, 2)) },
      { key: 'serverCpuMsPerRequest', header: 'server CPU ms/req', format: (v) => fmt(round(v, 3)) },
      { key: 'clientCpuMsPerRequest', header: 'load gen. CPU ms/req', format: opt((v) => fmt(round(v, 3))) },
      { key: 'proofBytes', header: 'proof', format: opt((v) => fmtBytes(v)) },
      { key: 'plainInputs', header: 'no proofs: inputs/s', format: opt((v) => fmt(v)) },
      { key: 'plainP99', header: 'p99 ms', format: opt((v) => fmt(round(v, 2))) },
      { key: 'plainCpu', header: 'CPU ms/req', format: opt((v) => fmt(round(v, 3))) },
      { key: 'costRatio', header: 'rate without / with', format: opt((v) => `${fmt(round(v, 2))}x`) },
      { key: 'requests', header: 'requests' },
      { key: 'errors', header: 'errors', format: (v, r) => String(v + (r.noProofs?.errors ?? 0)) },
    ],
    {
      title: `forward with and without proofs over HTTP (loopback, ${C} connections, ${P} proved at once, batched search ${batchSearch ? 'on' : 'off'}${a.threads === undefined ? '' : `, ${a.threads} thread(s) a scan`}, client ${a.client}; N = ${fmt(N)} x ${D}, k = ${K})`,
      notes: soakResult
        ? [`server RSS during the soak: first ${soakResult.rss.windowSeconds.toFixed(0)} s after warm-up ${fmtBytes(soakResult.rss.firstWindowMeanBytes)}, last ${soakResult.rss.windowSeconds.toFixed(0)} s ${fmtBytes(soakResult.rss.lastWindowMeanBytes)} (${(100 * soakResult.rss.growth).toFixed(1)}%): ${soakResult.rss.grew ? 'GREW' : 'no growth'}; max ${fmtBytes(soakResult.rss.maxBytes)}`]
        : [],
    },
  );
  const errors = phases.reduce((s, p) => s + p.errors + (p.noProofs?.errors ?? 0), 0) + (soakResult?.errors ?? 0);
  const file = writeResults(a.out ?? (quick ? 'serve-quick' : 'serve'), {
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
  for (const s of [proved, plain]) {
    s.child.kill('SIGTERM');
    await new Promise((r) => s.child.once('exit', r));
  }
  rmSync(tmp, { recursive: true, force: true });
}
