/**
 * The verifier entry point in a real browser: proofs made by the native prover (Node,
 * addon) are verified by `ghost-tensor/verify` (the built dist/, no addon, no Node APIs)
 * inside headless Chromium, which posts back what it computed.
 *
 * Needs `chromium` (Debian's package) on PATH: CI installs it (.ci/run) and the test
 * fails there without it; elsewhere it is skipped with a message. Needs dist/ built
 * (`npx tsc -p tsconfig.build.json`, which `npm test` runs first).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, dirname, extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { Embedding, GatedMLP, HopfieldLookup, Linear, Model, PatternCache, PositionEmbedding, generate, languageModel, ProductKeyMemory, Projection, RMSNorm, Residual, SparseAdam, SparseSelfAttention, SparseTensor, decodeProof, type ProvedStep, type SparseGrad } from '../lib/index.js';
import { twoLayerModel } from './helpers/models.js';
import { Rng } from './helpers/rng.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DIST = join(ROOT, 'dist');
const HASH_WASM = join(ROOT, 'node_modules', 'hash-wasm', 'dist');
const PAGE = join(ROOT, 'test', 'browser');
const BROWSER_TIMEOUT_MS = 60_000;

/** `chromium` or `chromium-browser` on PATH, or null. */
function findChromium(): string | null {
  for (const name of ['chromium', 'chromium-browser']) {
    for (const dir of (process.env.PATH ?? '').split(delimiter)) {
      if (!dir) continue;
      const p = join(dir, name);
      try {
        accessSync(p, constants.X_OK);
        if (statSync(p).isFile()) return p;
      } catch {
        // not here
      }
    }
  }
  return null;
}

/**
 * The browser's environment: ours without the sanitizer runtimes that
 * test/native/run-addon-sanitized.sh preloads for Node (Chromium hangs under them,
 * and it is not what is under test).
 */
function browserEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of ['LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS']) delete env[k];
  return env;
}

const hex = (b: ArrayBufferView): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

/** The only occurrence of `needle` in `hay` (the test must know exactly which bytes it flips). */
function onlyOffset(hay: Uint8Array, needle: Uint8Array, what: string): number {
  const h = Buffer.from(hay.buffer, hay.byteOffset, hay.byteLength);
  const n = Buffer.from(needle.buffer, needle.byteOffset, needle.byteLength);
  const at = h.indexOf(n);
  if (at < 0) throw new Error(`${what}: not found in the encoded proof`);
  if (h.indexOf(n, at + 1) >= 0) throw new Error(`${what}: found more than once in the encoded proof`);
  return at;
}

interface TamperCase {
  name: string;
  file: string;
  offset: number;
  mask: number;
  expect: string;
}

/** What the page posts back (test/browser/page.js). */
interface BrowserResult {
  userAgent: string;
  nodeGlobals?: boolean;
  error?: string;
  importError?: string;
  ghostDigest?: string;
  forward?: { rows: number; cols: number; outputHex: string };
  attention?: { rows: number; cols: number; outputHex: string };
  linear?: { rows: number; cols: number; outputHex: string };
  graph?: { rows: number; cols: number; outputHex: string };
  generation?: { tokens: number; forged: string };
  steps?: { digests: string[]; forged: string };
  updates?: { file: string; tensor: number; digest: string }[];
  tampered?: { name: string; reason: string; error: string }[];
  honestAgain?: string;
}


const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
};

/**
 * A static server for the page: /, /page.js (test/browser), /dist/* (the built package),
 * /hash-wasm/* (its ESM build), /data/* (in-memory proof files), and POST /result.
 * Paths are resolved and must stay under their root.
 */
class PageServer {
  readonly requests: string[] = [];
  readonly notFound: string[] = [];
  readonly result: Promise<BrowserResult>;
  #deliver!: (r: BrowserResult) => void;
  #fail!: (e: Error) => void;
  #server: Server;

  constructor(private readonly data: ReadonlyMap<string, Uint8Array>) {
    this.result = new Promise<BrowserResult>((ok, fail) => {
      this.#deliver = ok;
      this.#fail = fail;
    });
    this.#server = createServer((req, res) => this.#handle(req, res));
  }

  async listen(): Promise<number> {
    await new Promise<void>((ok, fail) => {
      this.#server.once('error', fail);
      this.#server.listen(0, '127.0.0.1', () => ok());
    });
    return (this.#server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((ok) => this.#server.close(() => ok()));
  }

  /** A file under `root` named by the URL rest `rel`, or null when it escapes root or does not exist. */
  static fileUnder(root: string, rel: string): string | null {
    if (rel.includes('\0')) return null;
    const p = resolve(root, '.' + sep + rel);
    if (!p.startsWith(root + sep)) return null;
    try {
      return statSync(p).isFile() ? p : null;
    } catch {
      return null;
    }
  }

  #send(res: ServerResponse, status: number, type: string, body: Uint8Array | string): void {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(body);
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const raw = req.url ?? '/';
    this.requests.push(`${req.method} ${raw}`);
    let path: string;
    try {
      path = decodeURIComponent(raw.split('?')[0]!);
    } catch {
      this.#send(res, 400, 'text/plain', 'bad URL');
      return;
    }
    if (req.method === 'POST' && path === '/result') {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > 1 << 20) req.destroy();
        else chunks.push(c);
      });
      req.on('end', () => {
        this.#send(res, 204, 'text/plain', '');
        try {
          this.#deliver(JSON.parse(Buffer.concat(chunks).toString('utf8')) as BrowserResult);
        } catch (err) {
          this.#fail(new Error(`the page posted a result that is not JSON: ${String(err)}`));
        }
      });
      return;
    }
    if (req.method !== 'GET') {
      this.#send(res, 405, 'text/plain', 'method not allowed');
      return;
    }
    if (path === '/favicon.ico') {
      this.#send(res, 204, 'text/plain', '');
      return;
    }
    let file: string | null = null;
    if (path === '/' || path === '/index.html') file = join(PAGE, 'index.html');
    else if (path === '/page.js') file = join(PAGE, 'page.js');
    else if (path.startsWith('/dist/')) file = PageServer.fileUnder(DIST, path.slice('/dist/'.length));
    else if (path.startsWith('/hash-wasm/')) file = PageServer.fileUnder(HASH_WASM, path.slice('/hash-wasm/'.length));
    else if (path.startsWith('/data/')) {
      const body = this.data.get(path.slice('/data/'.length));
      if (body) {
        const json = path.endsWith('.json');
        this.#send(res, 200, json ? 'application/json' : 'application/octet-stream', body);
        return;
      }
    }
    if (!file) {
      this.notFound.push(raw);
      this.#send(res, 404, 'text/plain', 'not found');
      return;
    }
    this.#send(res, 200, TYPES[extname(file)] ?? 'application/octet-stream', readFileSync(file));
  }
}

/** GET with the raw path as given (no client-side normalisation of `..`), for the traversal checks. */
function rawGet(port: number, path: string): Promise<number> {
  return new Promise((ok, fail) => {
    const r = request({ host: '127.0.0.1', port, path, method: 'GET' }, (res) => {
      res.resume();
      res.on('end', () => ok(res.statusCode ?? 0));
    });
    r.on('error', fail);
    r.end();
  });
}

const chromium = findChromium();

describe('ghost-tensor/verify in headless Chromium', () => {
  it('verifies a native forward proof and update proofs bit for bit, and refuses tampered copies', async (ctx) => {
    if (!chromium) {
      const msg = 'chromium is not installed (apt-get install -y chromium); the browser verification test needs it';
      if (process.env.CI) throw new Error(`${msg}, and CI must run it (.ci/run installs it)`);
      console.warn(`SKIPPED: ${msg}`);
      ctx.skip(msg);
      return;
    }
    for (const f of [join(DIST, 'verify', 'index.js'), join(HASH_WASM, 'index.esm.js')]) {
      if (!existsSync(f)) throw new Error(`${f} is missing: run \`npx tsc -p tsconfig.build.json\` (npm test builds it) and npm ci`);
    }

    // The native prover: a forward proof through both layers, then one Adam step with update proofs.
    const rng = new Rng(70);
    const { model, l0, l1 } = twoLayerModel(rng);
    const B = 3;
    const x = rng.f32(B * 16);
    const ghost = await model.ghost();
    const fwd = await model.prove(x);
    expect(fwd.output.length).toBe(B * 5);

    const f0 = await l0.forward(x);
    const f1 = await l1.forward(f0.y);
    const g1 = await l1.backward(f1.ctx, rng.f32(B * 5));
    const g0 = await l0.backward(f0.ctx, g1.dx);
    const grads: SparseGrad[] = [...g0.grads, ...g1.grads];
    const opt = new SparseAdam([...new Set(grads.map((g) => g.tensor))], { lr: 0.01 });
    const ups = await model.proveStep(opt, grads);
    opt.detach();
    expect(ups.length).toBeGreaterThanOrEqual(2);
    const after = await model.ghost();
    expect(hex(after.digest)).not.toBe(hex(ghost.digest));

    // Tampered copies, each one bit at a located offset: a pattern of the product-key
    // layer's values block, the claimed output, and an update proof's new root.
    const honest = decodeProof(fwd.bytes);
    if (honest.kind !== 'forward') throw new Error('model.prove made a proof that is not a forward proof');
    const pkValues = honest.layers[1]!.blocks.find((b) => b.dim === 5 && b.kinds.length > 0 && b.payload[0] instanceof Float32Array);
    if (!pkValues) throw new Error('no product-key values block with a full row in the proof');
    const pattern = pkValues.payload[0] as Float32Array;
    const lastUpdate = decodeProof(ups[ups.length - 1]!.bytes);
    if (lastUpdate.kind !== 'update') throw new Error('model.proveStep made a proof that is not an update proof');
    const updateFiles = ups.map((_, i) => `update-${i}`);
    const tamper: TamperCase[] = [
      // Lowest mantissa bit (little-endian f32: byte 0): still finite, another value.
      { name: 'a pattern byte', file: 'forward', offset: onlyOffset(fwd.bytes, new Uint8Array(pattern.buffer, pattern.byteOffset, pattern.byteLength), 'the pattern'), mask: 1, expect: 'ROOT_MISMATCH' },
      { name: 'the output', file: 'forward', offset: onlyOffset(fwd.bytes, new Uint8Array(fwd.output.buffer, fwd.output.byteOffset, fwd.output.byteLength), 'the output') + 4 * 7, mask: 1, expect: 'OUTPUT_MISMATCH' },
      { name: 'the new root of an update', file: updateFiles[updateFiles.length - 1]!, offset: onlyOffset(ups[ups.length - 1]!.bytes, lastUpdate.newRoot, 'the new root') + 5, mask: 0x10, expect: 'UPDATE_MISMATCH' },
    ];

    // An attention-first model (sparse key projection, causal), then exact Hopfield.
    const proj = (m: number, d: number, k?: number) => new Projection({ weight: SparseTensor.fromArray(rng.f32(m * d), d), ...(k === undefined ? {} : { k }) });
    const attnModel = new Model([
      new SparseSelfAttention({ heads: 2, k: 3, causal: true, query: proj(8, 6), key: proj(8, 6, 5), value: proj(8, 6), output: proj(8, 8) }),
      new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(30 * 8), 8), values: SparseTensor.fromArray(rng.f32(30 * 3), 3), k: 4 }),
    ]);
    const attnGhost = await attnModel.ghost();
    const attnFwd = await attnModel.prove(rng.f32(7 * 6));
    // Linear (top-5 of 8 columns, with a bias), RMSNorm, then exact Hopfield.
    const linModel = new Model([
      new Linear({ weight: SparseTensor.fromArray(rng.f32(8 * 6), 6), bias: SparseTensor.fromArray(rng.f32(8), 8), k: 5 }),
      new RMSNorm({ gain: SparseTensor.fromArray(rng.f32(8), 8) }),
      new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(20 * 8), 8), values: SparseTensor.fromArray(rng.f32(20 * 4), 4), k: 3 }),
    ]);
    const linGhost = await linModel.ghost();
    // A small transformer: embedding, attention and MLP residual blocks, norm, head (a graph).
    const d = 8;
    const w = (n: number, c: number) => SparseTensor.fromArray(rng.f32(n * c, 0.5), c);
    const graphModel = new Model([
      new Embedding(w(16, d)),
      new PositionEmbedding(w(8, d)),
      new Residual([new RMSNorm({ gain: w(1, d) }), new SparseSelfAttention({ heads: 2, k: 2, causal: true, query: new Projection({ weight: w(d, d) }), key: new Projection({ weight: w(d, d) }), value: new Projection({ weight: w(d, d) }) })]),
      new Residual([new RMSNorm({ gain: w(1, d) }), new GatedMLP({ gate: new Linear({ weight: w(2 * d, d) }), up: new Linear({ weight: w(2 * d, d), bias: w(1, 2 * d), k: 6 }), down: new Linear({ weight: w(d, 2 * d) }) })]),
      new Residual([new RMSNorm({ gain: w(1, d) }), new ProductKeyMemory({ query: w(2 * 4, d), keys: [[w(5, 2), w(5, 2)], [w(5, 2), w(5, 2)]], values: w(25, d), k: 3 })]),
      new Linear({ weight: w(16, d) }),
    ]);
    const graphGhost = await graphModel.ghost();
    const graphFwd = await graphModel.prove([5, 3, 11, 0, 7]);
    const linFwd = await linModel.prove(rng.f32(5 * 6));
    // A byte-level language model (a memory layer in place of the MLP) generating with a proof per token, caches on both sides.
    const lmModel = languageModel({ context: 8, dim: 8, layers: 1, heads: 2, hidden: 12, memory: { layers: [0], subKeys: 3, k: 2, heads: 2, keyDim: 4 } });
    const lmGhost = await lmModel.ghost();
    const gen = await generate(lmModel, [72, 105, 32], { tokens: 4, temperature: 0.9, topP: 0.9, seed: 3, prove: true, cache: new PatternCache(), stopAtEndOfDocument: false });
    const generation = { prompt: Array.from(gen.prompt), tokens: Array.from(gen.tokens), seed: gen.seed, context: gen.context, temperature: gen.temperature, topP: gen.topP };
    // After the first token the memory layer's query weight and sub-key tables travel as held tables (proof format version 2).
    if (gen.proofs.length < 2 || !gen.proofs.slice(1).every((p) => p[8] === 2)) throw new Error('the generation\'s later proofs should carry held tables');
    // Training steps with step proofs (docs/step-proofs.md) of a language model with every kind a
    // step can train (embedding, positions, norms, attention, gated MLP, memory layer, head), then
    // of a small graph: the browser recomputes each step and follows the model through them.
    const stepModel = languageModel({ context: 6, dim: 8, layers: 2, heads: 2, hidden: 8, memory: { layers: [1], subKeys: 3, k: 2, heads: 2, keyDim: 4 } }, { training: { loss: 'cross-entropy', lr: 0.01, clipNorm: 1, weightDecay: 0.01, schedule: { kind: 'cosine', warmupSteps: 1, totalSteps: 5 } } });
    const stepGhost = await stepModel.ghost();
    const stepProofs: ProvedStep[] = [];
    stepProofs.push(await stepModel.proveTrainStep({ input: [72, 105, 33, 32, 72, 105], targets: [105, 33, 32, 72, 105, 33] }));
    // The second step is a batch of two sequences (proof kind 4).
    stepProofs.push(await stepModel.proveTrainStep([{ input: [72, 105, 33, 32, 72, 105], targets: [105, 33, 32, 72, 105, 33] }, { input: [111, 107, 33], targets: [107, 33, 10] }]));
    if (stepProofs[1]!.bytes[10] !== 4) throw new Error('the two-sequence step is not a kind 4 proof');

    const data = new Map<string, Uint8Array>([
      ['attention-ghost.bin', attnGhost.bytes],
      ['attention-forward.bin', attnFwd.bytes],
      ['linear-ghost.bin', linGhost.bytes],
      ['graph-ghost.bin', graphGhost.bytes],
      ['graph-forward.bin', graphFwd.bytes],
      ['linear-forward.bin', linFwd.bytes],
      ['lm-ghost.bin', lmGhost.bytes],
      ...gen.proofs.map((p, i): [string, Uint8Array] => [`lm-gen-${i}.bin`, p]),
      ['step-ghost.bin', stepGhost.bytes],
      ...stepProofs.map((p, i): [string, Uint8Array] => [`step-${i}.bin`, p.bytes]),
      ['ghost.bin', ghost.bytes],
      ['forward.bin', fwd.bytes],
      ...ups.map((u, i): [string, Uint8Array] => [`${updateFiles[i]!}.bin`, u.bytes]),
      ['case.json', new TextEncoder().encode(JSON.stringify({ forward: 'forward', updates: updateFiles, tamper, generation, steps: stepProofs.length }))],
    ]);
    const server = new PageServer(data);
    const port = await server.listen();
    const profile = mkdtempSync(join(tmpdir(), 'gt-chromium-'));
    let browser: ChildProcess | null = null;
    let stderr = '';
    const pageConsole: string[] = [];
    let timer: NodeJS.Timeout | undefined;
    try {
      // The server refuses to leave its roots, whatever the encoding of `..`.
      for (const p of ['/dist/../package.json', '/dist/%2e%2e/package.json', '/dist/..%2fpackage.json', '/hash-wasm/../../../package.json', '/dist/%00verify.js']) {
        expect(`${p} -> ${await rawGet(port, p)}`).toBe(`${p} -> 404`);
      }
      expect(await rawGet(port, '/dist/verify/index.js')).toBe(200);
      server.notFound.length = 0;

      const url = `http://127.0.0.1:${port}/index.html`;
      const started = Date.now();
      browser = spawn(
        chromium,
        [
          '--headless=new', '--no-sandbox', '--disable-gpu', `--user-data-dir=${profile}`,
          '--no-first-run', '--no-default-browser-check', '--disable-extensions', '--disable-dev-shm-usage',
          '--disable-background-networking', '--disable-component-update', '--disable-sync', '--mute-audio',
          '--enable-logging=stderr', // page console messages (e.g. why a module failed to resolve) land in stderr
          url,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'], detached: true, env: browserEnv() },
      );
      let partial = '';
      browser.stderr!.on('data', (c: Buffer) => {
        stderr = (stderr + c.toString('utf8')).slice(-4000);
        const lines = (partial + c.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l.includes('CONSOLE')) pageConsole.push(l.replace(/^\[[^\]]*\]\s*/, ''));
      });
      const exited = new Promise<never>((_, fail) => {
        browser!.once('error', (e) => fail(new Error(`could not start ${chromium}: ${e.message}`)));
        browser!.once('exit', (code, sig) => fail(new Error(`chromium exited (${code ?? sig}) before the page posted a result.\nstderr: ${stderr}`)));
      });
      const timeout = new Promise<never>((_, fail) => {
        timer = setTimeout(() => fail(new Error(
          `no result from the page in headless Chromium after ${BROWSER_TIMEOUT_MS / 1000} s.\n` +
          `requests: ${server.requests.join(', ')}\nnot found: ${server.notFound.join(', ')}\nchromium stderr: ${stderr}`,
        )), BROWSER_TIMEOUT_MS);
      });
      const r = await Promise.race([server.result, exited, timeout]);
      console.log(`browser verification: ${Date.now() - started} ms in ${r.userAgent}`);

      // It ran in Chromium, without Node's globals, and the import graph of dist/verify/index.js loaded.
      expect(r.userAgent).toMatch(/HeadlessChrome\/\d+/);
      expect(r.nodeGlobals).toBe(false);
      expect(r.importError, `importing /dist/verify/index.js in the browser failed (does lib/verify/index.ts pull a Node built-in?)\npage console: ${pageConsole.join('\n')}`).toBeUndefined();
      expect(r.error, `the page threw; requests: ${server.requests.join(', ')}\npage console: ${pageConsole.join('\n')}`).toBeUndefined();
      expect(server.notFound).toEqual([]);
      expect(server.requests.some((q) => q.startsWith('GET /hash-wasm/index.esm.js'))).toBe(true);

      // The browser pinned the same Ghost file and verified the prover's output bit for bit.
      expect(r.ghostDigest).toBe(hex(ghost.digest));
      expect(r.forward).toEqual({ rows: B, cols: 5, outputHex: hex(fwd.output) });
      expect(r.honestAgain).toBe('ACCEPTED');
      expect(r.attention).toEqual({ rows: 7, cols: 3, outputHex: hex(attnFwd.output) });
      expect(r.linear).toEqual({ rows: 5, cols: 4, outputHex: hex(linFwd.output) });
      expect(r.graph).toEqual({ rows: 5, cols: 16, outputHex: hex(graphFwd.output) });
      // Every generated token's proof and sampling verified in the browser; a changed token refused.
      expect(r.generation).toEqual({ tokens: 4, forged: 'OUTPUT_MISMATCH' });
      // Step proofs: the browser recomputed each training step and reached the prover's Ghost files; a forged one refused.
      expect(r.steps).toEqual({ digests: stepProofs.map((p) => hex(p.ghost.digest)), forged: 'UPDATE_MISMATCH' });

      // Update proofs: after each, the Ghost digest the next proof was made against; after the last, the model's.
      const want = ups.map((_, i) => (i + 1 < ups.length ? hex(decodeProof(ups[i + 1]!.bytes).ghost) : hex(after.digest)));
      expect(r.updates?.map((u) => u.digest)).toEqual(want);
      expect(r.updates?.map((u) => u.tensor)).toEqual(ups.map((u) => (u.proof.kind === 'update' ? u.proof.tensor : -1)));

      // Tampered copies are refused with their typed reason.
      expect(r.tampered?.map((t) => `${t.name}: ${t.reason}`)).toEqual(tamper.map((t) => `${t.name}: ${t.expect}`));
    } finally {
      clearTimeout(timer);
      if (browser?.pid !== undefined && browser.exitCode === null && browser.signalCode === null) {
        const gone = new Promise<void>((ok) => browser!.once('exit', () => ok()));
        try {
          process.kill(-browser.pid, 'SIGKILL'); // its process group: the browser and its helpers
        } catch {
          browser.kill('SIGKILL');
        }
        await Promise.race([gone, new Promise((ok) => setTimeout(ok, 5000))]);
      }
      await server.close();
      rmSync(profile, { recursive: true, force: true });
    }
  }, 90_000);
});
