#!/usr/bin/env node
/**
 * Where a server process spent its CPU, from `perf script` output on stdin, by part of a
 * forward request (docs/serving.md, "Where a request's time goes"). Unlike the V8
 * profile (cpuprofile-breakdown.mjs: the main thread only, wall time), perf samples
 * every thread of the process on CPU: the main thread, libuv's workers running the exact
 * scans, V8's garbage-collector and compiler threads, and the kernel inside their system
 * calls. Each sample goes to the first part in PARTS (in order) that any frame of its
 * stack matches.
 *
 *   node --expose-gc bench/serve.mjs --phase-seconds 8 --soak-seconds 0 --batches 1,32 --perf /tmp/perf-serve
 *   perf script -i /tmp/perf-serve/batch-1.data | node bench/lib/perf-breakdown.mjs
 *
 * (bench/serve.mjs --perf starts the servers with --perf-basic-prof, so JavaScript frames
 * have names, and records the proving server during each phase with proofs.)
 */
import { createInterface } from 'node:readline';

const PARTS = [
  ['gather rows (native copy; into reused arrays under Model.proveBytes)', /TensorBinding::Gather/],
  ['exact scan (native searchBatch, on libuv worker threads and its helper threads)', /gt::exact_search|SearchWorker|ScanPool/],
  ['garbage collection (V8, every thread)', /v8::internal::(ConcurrentMarking|Sweeper|MarkCompact|Scavenger|IncrementalMarking|MinorMarkSweep|ArrayBufferSweeper|Heap::CollectGarbage|Heap::PerformGarbageCollection|ScavengeJob|Heap::FinalizeIncrementalMarking|GCTracer)|ScavengerCollector|MarkingVisitor/],
  ['JIT compilation (V8)', /v8::internal::compiler::|OptimizingCompileDispatcher|v8::internal::Compiler::|CompileLazy|v8::internal::baseline/],
  ['canonical states, scores and mix (native)', /gt::canonical::|CanonicalScores|CanonicalMix|CanonicalStates/],
  ['Merkle multiproof (native prove)', /MerkleTree::prove|multiproof/],
  ['encode the proof (encodeProof)', /encodeProof|writeProof|writeBlock/],
  ["the proof's Ghost file (Model.ghost: manifest, encode, hash)", /JS:\S*(ghost|manifest|pinGhost) |blake3/],
  ['rest of the proof (search dispatch, ids, blocks, checks)', /JS:\S*(prove|#proveForward|#block|planBlock|positionsOf|positionsToProve|sortedUniqueIds|#checkInput) /],
  ['fast forward (proofs off)', /JS:\S*forward /],
  ['send the answer (writeHead, end, writev, TCP send)', /#send|writev|Writev|tcp_sendmsg|writeHead|_writeRaw|clearBuffer/],
  ['read the body, decode the request', /#readBody|decodeForwardRequest|readInputRecord|tcp_recvmsg|sock_recvmsg|ksys_read/],
  ['HTTP parsing, dispatch, promises, event loop (the main thread\'s rest)', /llhttp|Parser::|_http_|parserOnIncoming|epoll|uv__io_poll|uv_run|node:net|node:internal\/streams|RunMicrotasks|processTicksAndRejections/],
];
const OTHER = 'other: thread wake-ups and hand-offs (futex), malloc without a stack';

const counts = new Map();
let total = 0;
let stack = [];
const flush = () => {
  if (stack.length === 0) return;
  total++;
  const part = PARTS.find(([, re]) => stack.some((f) => re.test(f)))?.[0] ?? OTHER;
  counts.set(part, (counts.get(part) ?? 0) + 1);
  stack = [];
};
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === '') flush();
  else if (line.startsWith(' ') || line.startsWith('\t')) stack.push(line.trim());
  else stack = [];
}
flush();
console.log('| part | share of the process\'s CPU samples |');
console.log('|---|---|');
for (const [part, n] of [...counts].sort((a, b) => b[1] - a[1])) console.log(`| ${part} | ${((100 * n) / total).toFixed(1)}% |`);
console.log(`\n${total} samples`);
