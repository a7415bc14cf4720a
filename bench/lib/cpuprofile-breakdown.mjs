#!/usr/bin/env node
/**
 * Where a server's main thread spent its time, from a V8 .cpuprofile (node --cpu-prof),
 * by part of a forward request: each sample goes to the first part (in the order below)
 * that any frame of its stack belongs to. Used for the breakdown in docs/serving.md:
 *
 *   node --expose-gc bench/serve.mjs --phase-seconds 6 --soak-seconds 0 --batches 1 \
 *     "--server-node-args=--cpu-prof --cpu-prof-dir /tmp/prof"
 *   node bench/lib/cpuprofile-breakdown.mjs /tmp/prof/CPU.<...>.<pid of the proving server>.cpuprofile REQUESTS
 *
 * REQUESTS (the phase's request count, printed by the benchmark) turns shares into
 * microseconds per request. The profiler samples wall time: on a loaded machine a part
 * also carries the time the thread waited for a core while in it (compare the
 * benchmark's server CPU per request, from /proc).
 */
import { readFileSync } from 'node:fs';

const [file, requestsArg] = process.argv.slice(2);
if (!file) throw new Error('usage: cpuprofile-breakdown.mjs FILE.cpuprofile [REQUESTS]');
const p = JSON.parse(readFileSync(file, 'utf8'));
const requests = Number(requestsArg ?? 0);
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

const fn = (name, url) => (f) => f.functionName === name && (url === undefined || url.test(f.url));
const PARTS = [
  ['idle (event loop waiting: scans on worker threads, the network)', [fn('(idle)')]],
  ['garbage collection', [fn('(garbage collector)')]],
  ['(program): V8 and native code outside JavaScript frames; startup (module loading)', [(f) => /internal\/modules\//.test(f.url), fn('(program)')]],
  ['exact scan call (searchBatch, native)', [fn('searchBatch'), fn('searchBatchSync')]],
  ['gather key and value rows (native copy)', [fn('gather'), fn('rowsOf')]],
  ['encode the proof (encodeProof)', [fn('encodeProof')]],
  ['Ghost file of the proof (Model.ghost: manifest, encode, hash)', [fn('ghost', /model\/model\.js/)]],
  ['Merkle multiproof (native prove)', [(f) => f.functionName === '' && /model\/model\.js/.test(f.url)]],
  ['canonical states, scores and mix (native)', [(f) => f.functionName === '' && /kinds\/hopfield\.js/.test(f.url)]],
  ['rest of the proof (plan blocks, ids, checks)', [fn('prove')]],
  ['fast forward (proofs off)', [fn('forward')]],
  ['send the answer (writeHead, end, socket writev)', [fn('#send'), fn('writev')]],
  ['read the body', [fn('#readBody')]],
  ['HTTP parsing and dispatch (node:http, streams, microtasks)', [(f) => /node:|_http|streams|net/.test(f.url), fn('runMicrotasks')]],
  ['server bookkeeping (routing, scheduler, metrics, logs)', [(f) => /serve\//.test(f.url)]],
];

const dt = new Map();
for (let i = 0; i < p.samples.length; i++) dt.set(p.samples[i], (dt.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
const total = [...dt.values()].reduce((s, x) => s + x, 0);
const parts = new Map();
for (const [id, t] of dt) {
  const stack = [];
  for (let x = id; x !== undefined; x = parent.get(x)) stack.push(byId.get(x).callFrame);
  const part = PARTS.find(([, tests]) => tests.some((test) => stack.some(test)))?.[0] ?? 'other';
  parts.set(part, (parts.get(part) ?? 0) + t);
}
// Shares of the busy time (idle left out: it is the event loop waiting, and includes the
// time before and after the load).
const idle = parts.get(PARTS[0][0]) ?? 0;
parts.delete(PARTS[0][0]);
const busy = total - idle;
console.log(`| part | share of the main thread's busy time |${requests ? ' µs per request |' : ''}`);
console.log(`|---|---|${requests ? '---|' : ''}`);
for (const [part, t] of [...parts].sort((a, b) => b[1] - a[1])) {
  console.log(`| ${part} | ${((100 * t) / busy).toFixed(1)}% |${requests ? ` ${Math.round(t / requests)} |` : ''}`);
}
console.log(`\n${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s busy${requests ? ` (${Math.round(busy / requests)} µs per request over ${requests} requests)` : ''}`);
