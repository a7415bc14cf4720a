// Proof sizes with and without a pattern-cache session (docs/serving.md, "Sessions"):
// a model directory written by `ghost-tensor train`, served in-process on loopback; two
// clients ask the same batches of test images (drawn from a small pool, so batches share
// patterns); sizes are deterministic, no timing. Prints a table and writes
// bench/results/serve-session-pool<POOL>.json.
// Usage: node bench/serve-session.mjs MODEL_DIR [--calls 20] [--batch 16] [--pool 64]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ProverClient, ProverServer } from '../dist/index.js';
import { DEMO_DATA_DIR, loadSplit } from '../dist/internal.js';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { calls: { type: 'string' }, batch: { type: 'string' }, pool: { type: 'string' } } });
const dir = positionals[0];
if (!dir) throw new Error('usage: node bench/serve-session.mjs MODEL_DIR');
const calls = Number(values.calls ?? 20), B = Number(values.batch ?? 16), poolSize = Number(values.pool ?? 64);
const test = loadSplit(DEMO_DATA_DIR, 't10k');
const server = await ProverServer.open(dir, { sessions: 2, sessionRows: 4096 });
const url = await server.listen();
const digest = server.ghost.digest;
const plain = await ProverClient.connect(url, digest);
const cached = await ProverClient.connect(url, digest, { session: true });
let seed = 12345;
const rand = (n) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16) % n;
const rows = [];
for (let c = 0; c < calls; c++) {
  const x = new Float32Array(B * 784);
  for (let b = 0; b < B; b++) {
    const i = rand(poolSize);
    x.set(test.x.subarray(i * 784, (i + 1) * 784), b * 784);
  }
  const a = await plain.forward(x), s = await cached.forward(x);
  if (Buffer.compare(Buffer.from(a.output.buffer), Buffer.from(s.output.buffer)) !== 0) throw new Error('outputs differ');
  rows.push({ call: c + 1, whole: a.proof.length, session: s.proof.length });
}
await server.close();
const sum = (k) => rows.reduce((n, r) => n + r[k], 0);
console.log(`batch ${B} test images from a pool of ${poolSize}, ${calls} calls, model ${dir}`);
console.log('| call | whole proof (bytes) | in a session (bytes) | ratio |');
console.log('|---|---|---|---|');
for (const r of rows) console.log(`| ${r.call} | ${r.whole.toLocaleString('en-US')} | ${r.session.toLocaleString('en-US')} | ${(r.session / r.whole).toFixed(3)} |`);
console.log(`| all | ${sum('whole').toLocaleString('en-US')} | ${sum('session').toLocaleString('en-US')} | ${(sum('session') / sum('whole')).toFixed(3)} |`);
const out = join(dirname(fileURLToPath(import.meta.url)), 'results', `serve-session-pool${poolSize}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), model: dir, batch: B, pool: poolSize, calls, rows, totals: { whole: sum('whole'), session: sum('session') } }, null, 2) + '\n');
