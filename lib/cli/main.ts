/**
 * The `ghost-tensor` command line (docs/cli.md): demo, train, serve, query, verify,
 * inspect, swarm, bench. Exit codes (EXIT) are part of the interface.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';

import { FormatError, GhostTensorError, P2PError, ProofError, RemoteError, StorageError } from '../shared/errors.js';
import { decodeGhost, ghostToJSON, GHOST_MAGIC } from '../verify/ghost-file.js';
import { describeLayer } from '../verify/kinds/index.js';
import { Model } from '../model/model.js';
import { ModelDirectory } from '../model/model-dir.js';
import { PROOF_MAGIC, decodeProof, type GhostProof } from '../verify/proof-format.js';
import { pinGhost, verifyForward, verifyUpdate } from '../verify/proof-verify.js';
import { verifyTrainStep } from '../verify/step.js';
import { ProverClient } from '../serve/client.js';
import { ProverServer } from '../serve/server.js';
import { fromHex, toHex } from '../shared/bytes.js';
import { CLASS_NAMES, DEMO_DATA_DIR, PACKAGE_ROOT, argmax, loadSplit, trainClassifier } from './classifier.js';
import { runDemo } from './demo.js';
import { Progress } from '../model/train/progress.js';
import type { LanguageModelConfig } from '../model/lm/model.js';
import { DEFAULT as LM_DEFAULT, QUICK as LM_QUICK, runGenerate, runTrainLm } from './lm.js';
import { runSwarm, type SwarmRole } from './swarm.js';
import { isServeWorker, leavePrimary, reportReady, runServePrimary } from './serve-workers.js';

/** Exit codes scripts can rely on. */
export const EXIT = {
  OK: 0,
  /** A proof was rejected (it does not verify, does not decode, or is not of the request). */
  REJECTED: 1,
  /** Wrong command line. */
  USAGE: 2,
  /** A local file or directory is missing, unreadable or not what it should be. */
  IO: 3,
  /** The server could not be reached or refused the request. */
  REMOTE: 4,
  /** Anything else (a bug). */
  INTERNAL: 5,
} as const;

class UsageError extends Error {}

type Options = NonNullable<ParseArgsConfig['options']>;

interface Command {
  summary: string;
  usage: string;
  help: string;
  options: Options;
  positionals: [number, number];
  run: (values: Record<string, string | boolean | undefined>, positionals: string[]) => Promise<number>;
}

const out = (s: string): void => void process.stdout.write(s + '\n');
const outLine = out;
/** The arguments main() was called with (the serve primary starts its workers with them). */
let invokedWith: readonly string[] = [];
const err = (s: string): void => void process.stderr.write(s + '\n');

function num(values: Record<string, string | boolean | undefined>, name: string, def: number, lo: number, hi: number, integer = true): number {
  const v = values[name];
  if (v === undefined) return def;
  const x = Number(v);
  if (typeof v !== 'string' || !Number.isFinite(x) || (integer && !Number.isInteger(x)) || x < lo || x > hi) {
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'} in ${lo}..${hi}, got ${String(v)}`);
  }
  return x;
}

function str(values: Record<string, string | boolean | undefined>, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

/** A 32-byte Ghost digest given as 64 hex digits (UsageError otherwise). */
function parseDigest(hex: string): Uint8Array {
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new UsageError(`--digest must be 64 hex digits (a Ghost digest), got ${hex}`);
  return fromHex(hex);
}

function readBytes(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

/** A Ghost file path, or a model directory (its ghost.bin). */
function ghostPath(path: string): string {
  return existsSync(path) && statSync(path).isDirectory() ? ModelDirectory.files(path).ghost : path;
}

function startsWith(b: Uint8Array, magic: Uint8Array): boolean {
  return b.length >= magic.length && magic.every((x, i) => b[i] === x);
}

// ------------------------------------------------------------------- commands

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: 'train on the shipped Fashion-MNIST subset, serve, prove, verify, tamper',
    usage: 'ghost-tensor demo [--quick] [--out DIR] [--data DIR]',
    help: `Trains a sparse HopfieldLookup classifier (k = 32) and its dense baseline on the
Fashion-MNIST subset shipped in data/fashion-mnist-small, prints accuracy and step
times, saves the sparse model with its Ghost file, serves it on loopback, asks for a
forward proof over HTTP, verifies it against the pinned Ghost digest, then tampers
with the proof and shows each rejection. Under a minute on two cores.

  --quick      a small run (1,000 images, N = 256, one epoch): seconds, for tests
  --out DIR    keep the model directory at DIR (must not exist); default: a temporary one, removed
  --data DIR   IDX files to use instead of the shipped subset
  --quiet      no progress bar

Exit 0 when the honest proof verifies and every tampered one is rejected.`,
    options: { quick: { type: 'boolean' }, out: { type: 'string' }, data: { type: 'string' }, quiet: { type: 'boolean' } },
    positionals: [0, 0],
    run: async (v) =>
      runDemo({ quick: v.quick === true, quiet: v.quiet === true, ...(str(v, 'out') ? { out: str(v, 'out')! } : {}), ...(str(v, 'data') ? { data: str(v, 'data')! } : {}) }),
  },

  train: {
    summary: 'train a classifier on IDX image files and save it as a model directory',
    usage: 'ghost-tensor train --out DIR [--data DIR] [--n N] [--k K] [--epochs E] [--images M] [--seed S]',
    help: `Trains the demo's sparse HopfieldLookup classifier (keys: N stored images, values:
their labels, cosine, top-k) and saves it with its Ghost file and room for optimizer
state (docs/proof-format.md, docs/storage.md), ready for \`ghost-tensor serve\`.

  --out DIR      the model directory to write (must not exist)          (required)
  --data DIR     gzipped IDX files (train-*, t10k-*)   default: the shipped subset
  --n N          stored patterns                        default 2048
  --k K          patterns per input                     default 32
  --epochs E     default 2
  --images M     training images to use (first M)       default all
  --lr LR        default 0.003
  --seed S       default 1
  --quiet        no progress bar`,
    options: {
      out: { type: 'string' },
      data: { type: 'string' },
      n: { type: 'string' },
      k: { type: 'string' },
      epochs: { type: 'string' },
      images: { type: 'string' },
      lr: { type: 'string' },
      seed: { type: 'string' },
      quiet: { type: 'boolean' },
    },
    positionals: [0, 0],
    run: async (v) => {
      const dir = str(v, 'out');
      if (!dir) throw new UsageError('--out DIR is required');
      if (existsSync(dir)) throw Object.assign(new Error(`${dir} exists; choose a new directory`), { code: 'EEXIST' });
      const data = str(v, 'data') ?? DEMO_DATA_DIR;
      const train = loadSplit(data, 'train', num(v, 'images', Infinity, 1, 2 ** 31) || Infinity);
      const test = loadSplit(data, 't10k');
      const n = num(v, 'n', 2048, 1, 2 ** 24), k = num(v, 'k', 32, 1, 65536), epochs = num(v, 'epochs', 2, 1, 1000);
      if (k > n) throw new UsageError(`--k (${k}) must be at most --n (${n})`);
      if (n > train.n) throw new UsageError(`--n (${n}) must be at most the number of training images (${train.n})`);
      const bar = new Progress('train', Math.floor(train.n / 128) * epochs, { quiet: v.quiet === true });
      const r = await trainClassifier(train, test, { mode: 'sparse', n, k, epochs, lr: num(v, 'lr', 3e-3, 0, 10, false), seed: num(v, 'seed', 1, 0, 2 ** 32 - 1), onStep: (d, _t, loss) => bar.update(d, `loss ${loss.toFixed(3)}`) });
      bar.done(`test accuracy ${(100 * r.accuracy).toFixed(1)}%`);
      const model = new Model([r.layer]);
      const ghost = await model.save(dir, { optimizerState: true });
      out(`model    ${dir}`);
      out(`digest   ${toHex(ghost.digest)}`);
      out(`accuracy ${(100 * r.accuracy).toFixed(2)}% on ${test.n} test images (median step ${r.stepMs.toFixed(1)} ms)`);
      return EXIT.OK;
    },
  },

  'train-lm': {
    summary: 'train a byte-level language model on English text (resumes a stopped run)',
    usage: 'ghost-tensor train-lm --out DIR [--quick] [--corpus fortunes|gcide|FILE] [--steps N] [...]',
    help: `Trains a byte-level transformer (docs/lm.md) on a Debian English corpus and keeps
it in DIR: the model directory, lm.json, lm-log.jsonl (one JSON line per logged
step and validation) and loss.svg. Every step is durable before it is taken;
SIGINT or SIGTERM stops after the step in progress and checkpoints; the same
command resumes exactly where the run stopped (with the run's own settings, from
DIR/lm.json: other options are then ignored).

  --out DIR            the run directory (new, or a stopped run to resume)       (required)
  --quick              under a minute: context 64, dim 64, 2 layers, 600 steps
  --corpus C           fortunes (default; apt-get install fortunes), gcide
                       (apt-get install dict-gcide) or a text file
  --steps N            optimizer steps (default 2000; quick 600)
  --batch B            windows per step (default 8)
  --context S          bytes per window (default 128; quick 64)
  --dim D              model width (default 128; quick 64)
  --layers L           transformer layers (default 2)
  --heads H            attention heads (default 4)
  --hidden F           gated MLP width (default 3 x dim)
  --attention-k K      keys per query (default: all earlier ones)
  --memory-layers I,J  layers whose MLP is a product-key memory (default none)
  --memory-keys n      sub-keys per table: the memory holds n^2 rows (default 256)
  --memory-k K         slots per head (default 32)
  --memory-heads H     product-key heads (default 4)
  --lr LR              peak learning rate (default 0.003; quick 0.01), warm-up then cosine
  --seed S             data order (default 1); the model's initialisation is --init-seed
  --init-seed S        default 1
  --eval-every N       validate every N steps (default steps / 10)
  --eval-bytes N       validation bytes scored each time (default 16384; quick 4096)
  --checkpoint-every N default 200
  --quiet              no progress bar`,
    options: {
      out: { type: 'string' },
      quick: { type: 'boolean' },
      corpus: { type: 'string' },
      steps: { type: 'string' },
      batch: { type: 'string' },
      context: { type: 'string' },
      dim: { type: 'string' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      hidden: { type: 'string' },
      'attention-k': { type: 'string' },
      'memory-layers': { type: 'string' },
      'memory-keys': { type: 'string' },
      'memory-k': { type: 'string' },
      'memory-heads': { type: 'string' },
      lr: { type: 'string' },
      seed: { type: 'string' },
      'init-seed': { type: 'string' },
      'eval-every': { type: 'string' },
      'eval-bytes': { type: 'string' },
      'checkpoint-every': { type: 'string' },
      quiet: { type: 'boolean' },
    },
    positionals: [0, 0],
    run: async (v) => {
      const dir = str(v, 'out');
      if (!dir) throw new UsageError('--out DIR is required');
      const p = v.quick === true ? LM_QUICK : LM_DEFAULT;
      const dim = num(v, 'dim', p.model.dim, 2, 16384);
      const memoryLayers = str(v, 'memory-layers');
      const layers = num(v, 'layers', p.model.layers, 1, 256);
      const model: LanguageModelConfig = {
        context: num(v, 'context', p.model.context, 2, 65536),
        dim,
        layers,
        heads: num(v, 'heads', p.model.heads, 1, 1024),
        hidden: num(v, 'hidden', v.dim === undefined ? p.model.hidden : 3 * dim, 1, 65536),
        ...(v['attention-k'] === undefined ? {} : { attentionK: num(v, 'attention-k', 32, 1, 65536) }),
        seed: num(v, 'init-seed', 1, 0, 2 ** 31),
        ...(memoryLayers === undefined ? {} : {
          memory: {
            layers: memoryLayers.split(',').map((s) => {
              const i = Number(s);
              if (!Number.isInteger(i) || i < 0 || i >= layers) throw new UsageError(`--memory-layers must list layers in 0..${layers - 1}, got ${memoryLayers}`);
              return i;
            }),
            subKeys: num(v, 'memory-keys', 256, 2, 65536),
            k: num(v, 'memory-k', 32, 1, 65536),
            heads: num(v, 'memory-heads', 4, 1, 64),
          },
        }),
      };
      const steps = num(v, 'steps', p.steps, 1, 2 ** 40);
      return runTrainLm({
        out: dir,
        corpus: str(v, 'corpus') ?? 'fortunes',
        model,
        training: {
          steps,
          batch: num(v, 'batch', p.batch, 1, 4096),
          lr: num(v, 'lr', p.lr, 0, 10, false),
          seed: num(v, 'seed', 1, 0, 2 ** 32 - 1),
          ...(v['eval-every'] === undefined ? {} : { evalEvery: num(v, 'eval-every', 1, 1, 2 ** 40) }),
          checkpointEvery: num(v, 'checkpoint-every', 200, 1, 2 ** 40),
          evalBytes: num(v, 'eval-bytes', p.evalBytes, 2, 2 ** 40),
        },
        quiet: v.quiet === true,
      }, out);
    },
  },
  generate: {
    summary: 'sample text from a trained language model, optionally proving every token',
    usage: 'ghost-tensor generate DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-p P] [--seed S] [--prove]',
    help: `Samples bytes from the language model in DIR (a train-lm run) and prints them as
they come. With --prove, every token comes with a forward proof of the whole model on
its context; the proofs and every sampled token (the sampler is recomputed from the
proved logits) are then checked by the addon-free verifier against DIR's Ghost file
(docs/lm.md, "Generating with proofs"); exit 1 when any check fails.

  --prompt TEXT     the start of the text (default: a new document)
  --tokens N        bytes to generate, at most (default 200; stops at a document's end)
  --temperature T   default 0.8 (0: always the most likely byte)
  --top-p P         default 0.95
  --seed S          default 1
  --prove           prove and verify every token
  --digest HEX      refuse the model unless its Ghost digest is HEX (pin what you verify against)`,
    options: {
      prompt: { type: 'string' },
      tokens: { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      prove: { type: 'boolean' },
      digest: { type: 'string' },
    },
    positionals: [1, 1],
    run: async (v, pos) => runGenerate({
      ...(str(v, 'digest') === undefined ? {} : { digest: parseDigest(str(v, 'digest')!) }),
      dir: pos[0]!,
      prompt: str(v, 'prompt') ?? '',
      tokens: num(v, 'tokens', 200, 0, 2 ** 24),
      temperature: num(v, 'temperature', 0.8, 0, 1e6, false),
      topP: num(v, 'top-p', 0.95, 1e-9, 1, false),
      seed: num(v, 'seed', 1, 0, 2 ** 32 - 1),
      prove: v.prove === true,
    }, (s) => void process.stderr.write(s + '\n'), (s) => void process.stdout.write(s)),
  },
  serve: {
    summary: 'serve a model directory over HTTP (forward proofs; training with a token)',
    usage: 'ghost-tensor serve DIR [--host H] [--port P] [--token-file F] [--lr LR] [--workers N] [...]',
    help: `Serves the model directory DIR (docs/serving.md): GET /ghost, GET /updates,
POST /forward (outputs with forward proofs) and, with a token, POST /train (update
proofs; each step is durable before it is answered). Prints \`serving <url>\` and
\`digest <hex>\` on stdout once listening. SIGTERM or SIGINT: stops accepting,
finishes every accepted request, closes the tensor files, exits 0.

  --host H            default 127.0.0.1 (loopback only)
  --port P            default 8080 (0: any free port)
  --token-file F      enables training: callers must send "Authorization: Bearer <first line of F>"
                      (or set GHOST_TENSOR_TOKEN; a token is never taken from the command line)
  --lr LR             learning rate of the server's SparseAdam, default 0.001
  --max-batch B       inputs per forward request, default 256 (413 beyond)
  --max-body BYTES    request body limit, default 16777216 (413 beyond)
  --max-inflight BYTES  request body bytes held at once over all connections,
                      default 67108864 (and at least --max-body; 503 + Retry-After beyond)
  --concurrency C     requests proved at once, default 2
  --queue Q           accepted requests waiting, default 64 (503 + Retry-After beyond)
  --sessions N        pattern-cache sessions kept (clients with { session: true }), default 0
  --session-rows R    rows each session holds, default 4096 (memory: N x R x dim x 4 bytes)
  --log FORMAT        one line per request on stderr: json (one JSON object per line,
                      docs/serving.md "Logs") or text
  --threads T         threads of each proof's scans and product-key selection (default:
                      the machine's cores, started anew by each; 1 suits many requests at once)
  --no-batch-search   one exact scan per forward proof (default: proofs running at once
                      share one scan; the answers are the same bytes)
  --no-proofs         answer /forward with the output only (fast f32 forward, no proof;
                      unverifiable: for measuring what proofs cost)
  --workers N         serve from N processes sharing the port (default 1): HTTP and proof
                      encoding run on each process's main thread, so N = the cores uses them
                      all. Read-only (no training). A worker that dies is restarted; SIGTERM
                      stops them all. Each worker keeps its own sessions and /metrics.
GET /metrics answers the Prometheus text format; GET /health a small JSON summary.`,
    options: {
      host: { type: 'string' },
      port: { type: 'string' },
      'token-file': { type: 'string' },
      lr: { type: 'string' },
      'max-batch': { type: 'string' },
      'max-body': { type: 'string' },
      'max-inflight': { type: 'string' },
      concurrency: { type: 'string' },
      queue: { type: 'string' },
      log: { type: 'string' },
      sessions: { type: 'string' },
      'session-rows': { type: 'string' },
      threads: { type: 'string' },
      'no-batch-search': { type: 'boolean' },
      'no-proofs': { type: 'boolean' },
      workers: { type: 'string' },
    },
    positionals: [1, 1],
    run: async (v, [dir]) => {
      const tf = str(v, 'token-file');
      const token = tf !== undefined ? readFileSync(tf, 'utf8').split('\n')[0]!.trim() : process.env.GHOST_TENSOR_TOKEN;
      if (token !== undefined && token.length < 8) throw new UsageError('the training token must be at least 8 characters');
      const workers = num(v, 'workers', 1, 1, 256);
      if (workers > 1 && token !== undefined) throw new UsageError('--workers serves read-only: a model trains in one process (unset GHOST_TENSOR_TOKEN, drop --token-file)');
      const worker = isServeWorker();
      if (workers > 1 && !worker) return runServePrimary({ workers, bin: join(PACKAGE_ROOT, 'bin', 'ghost-tensor.mjs'), argv: invokedWith, out: outLine, err });
      // A worker reports to the primary instead of printing the banner.
      const out = worker ? (): void => undefined : outLine;
      const logArg = str(v, 'log');
      if (logArg !== undefined && logArg !== 'json' && logArg !== 'text') throw new UsageError('--log takes json or text');
      const logFormat: 'json' | 'text' | undefined = logArg;
      const server = await ProverServer.open(dir!, {
        host: str(v, 'host') ?? '127.0.0.1',
        port: num(v, 'port', 8080, 0, 65535),
        maxBatch: num(v, 'max-batch', 256, 1, 2 ** 20),
        maxBodyBytes: num(v, 'max-body', 16 * 2 ** 20, 1, 2 ** 30),
        ...(v['max-inflight'] === undefined ? {} : { maxInflightBytes: num(v, 'max-inflight', 64 * 2 ** 20, 1, 2 ** 40) }),
        maxConcurrent: num(v, 'concurrency', 2, 1, 1024),
        maxQueue: num(v, 'queue', 64, 0, 2 ** 20),
        sessions: num(v, 'sessions', 0, 0, 2 ** 16),
        sessionRows: num(v, 'session-rows', 4096, 1, 2 ** 24),
        ...(v.threads === undefined ? {} : { threads: num(v, 'threads', 1, 1, 1024) }),
        ...(v['no-batch-search'] === true ? { batchSearch: false } : {}),
        ...(v['no-proofs'] === true ? { proofs: false } : {}),
        ...(token === undefined ? {} : { trainToken: token, optimizer: { kind: 'adam' as const, lr: num(v, 'lr', 1e-3, 0, 10, false) } }),
        ...(logFormat === undefined ? {} : { log: { format: logFormat, write: (line: string) => err(line) } }),
      });
      const url = await server.listen();
      if (worker) reportReady({ url, digest: toHex(server.ghost.digest), generation: server.generation });
      // With --log json, stderr holds only JSON objects: the start and the stop are events too.
      const event = (e: string, fields: Record<string, unknown>): void =>
        err(JSON.stringify({ time: new Date().toISOString(), level: 'info', event: e, ...fields }));
      if (logFormat === 'json') event('listen', { url, digest: toHex(server.ghost.digest), generation: server.generation, training: token !== undefined });
      out(`serving ${url}`);
      out(`digest ${toHex(server.ghost.digest)}`);
      out(`generation ${server.generation}`);
      out(`training ${token === undefined ? 'disabled' : 'enabled'}`);
      await new Promise<void>((resolve) => {
        let stopped = false;
        const stop = (sig: string): void => {
          // A worker keeps its handlers (the terminal's SIGINT and the primary's SIGTERM both
          // reach it: the second must not kill it mid-request); a lone server's second signal
          // takes the default action.
          if (stopped) return;
          stopped = true;
          if (logFormat === 'json') event('shutdown', { signal: sig, generation: server.generation });
          else if (!worker) err(`${sig}: finishing accepted requests, then closing the model`);
          if (!worker) {
            process.off('SIGTERM', onTerm);
            process.off('SIGINT', onInt);
          }
          void server.close().then(resolve);
        };
        const onTerm = (): void => stop('SIGTERM');
        const onInt = (): void => stop('SIGINT');
        process.on('SIGTERM', onTerm);
        process.on('SIGINT', onInt);
        // A worker whose primary is gone gets no more connections: it stops.
        if (worker) process.on('disconnect', () => stop('disconnect'));
      });
      if (logFormat === 'json') event('stopped', { generation: server.generation, digest: toHex(server.ghost.digest) });
      out(`stopped at generation ${server.generation}, digest ${toHex(server.ghost.digest)}`);
      return EXIT.OK;
    },
  },

  query: {
    summary: 'ask a prover for outputs and verify them against a pinned Ghost digest',
    usage: 'ghost-tensor query URL --digest HEX (--input FILE | --test-images I,J,...) [--proof-out F] [--json]',
    help: `Connects to a prover (\`ghost-tensor serve\`), pins the Ghost digest, sends the inputs,
and accepts the answer only if its forward proof verifies and is of these inputs
(following any newer generation through verified update proofs).

  --digest HEX         the Ghost digest to trust (64 hex characters)        (required)
  --generation G       the generation of that digest when it is not the server's current one
  --input FILE         raw little-endian f32 values, B x (the model's input width)
  --test-images LIST   images of the shipped test subset, e.g. 0,1,2 (for the demo's classifier)
  --proof-out FILE     write the received proof (for \`ghost-tensor verify\`)
  --require-selection  ask for held keys and refuse a proof whose top-k selection cannot be
                       re-derived (an exact layer's keys travel whole; docs/proof-format.md 5)
  --json               print the result as JSON
  --deadline SECONDS   per call (connect, then forward), retries on an unreachable server or
                       a 503 included, default 5

Exit 0 verified, 1 rejected, 4 server unreachable or refused.`,
    options: {
      digest: { type: 'string' },
      generation: { type: 'string' },
      input: { type: 'string' },
      'test-images': { type: 'string' },
      'proof-out': { type: 'string' },
      'require-selection': { type: 'boolean' },
      json: { type: 'boolean' },
      deadline: { type: 'string' },
    },
    positionals: [1, 1],
    run: async (v, [url]) => {
      const hex = str(v, 'digest');
      if (!hex || !/^[0-9a-fA-F]{64}$/.test(hex)) throw new UsageError('--digest must be 64 hex characters');
      const inputFile = str(v, 'input'), list = str(v, 'test-images');
      if ((inputFile === undefined) === (list === undefined)) throw new UsageError('give one of --input FILE or --test-images LIST');
      let x: Float32Array;
      let labels: number[] | null = null;
      if (inputFile !== undefined) {
        const b = readFileSync(inputFile);
        if (b.length === 0 || b.length % 4 !== 0) throw new FormatError('BAD_VALUE', `${inputFile}: ${b.length} bytes is not a whole number of f32 values`);
        x = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
      } else {
        const idx = list!.split(',').map((s) => Number(s));
        if (idx.some((i) => !Number.isInteger(i) || i < 0)) throw new UsageError('--test-images takes non-negative integers, e.g. 0,1,2');
        const test = loadSplit(DEMO_DATA_DIR, 't10k');
        if (idx.some((i) => i >= test.n)) throw new UsageError(`--test-images: the shipped test subset has ${test.n} images`);
        x = new Float32Array(idx.length * 784);
        idx.forEach((i, b) => x.set(test.x.subarray(i * 784, (i + 1) * 784), b * 784));
        labels = idx.map((i) => test.y[i]!);
      }
      const gen = str(v, 'generation') === undefined ? {} : { generation: num(v, 'generation', 0, 0, Number.MAX_SAFE_INTEGER) };
      // Whatever the server sends that does not decode is rejected like a proof that does not verify.
      const rejectUndecodable = (e: unknown): never => {
        throw e instanceof FormatError ? new Rejected(e) : e;
      };
      const deadlineMs = num(v, 'deadline', 5, 0.001, 86_400, false) * 1000;
      const client = await ProverClient.connect(url!, fromHex(hex), { ...gen, deadlineMs, requireSelection: v['require-selection'] === true }).catch(rejectUndecodable);
      const r = await client.forward(x, { deadlineMs }).catch(rejectUndecodable);
      const pout = str(v, 'proof-out');
      if (pout !== undefined) writeFileSync(pout, r.proof);
      const rows = Array.from({ length: r.rows }, (_, b) => Array.from(r.output.subarray(b * r.cols, (b + 1) * r.cols)));
      if (v.json === true) {
        out(JSON.stringify({ verified: true, generation: r.generation, digest: toHex(client.ghost.digest), proofBytes: r.proof.length, rows: r.rows, cols: r.cols, output: rows }));
      } else {
        out(`verified: ${r.rows} x ${r.cols} output, proof of ${r.proof.length} bytes, Ghost generation ${r.generation} (digest ${toHex(client.ghost.digest)})`);
        rows.forEach((row, b) => {
          const cls = r.cols === 10 ? `  -> ${CLASS_NAMES[argmax(r.output, b * 10, 10)]}${labels ? ` (label ${CLASS_NAMES[labels[b]!]})` : ''}` : '';
          out(`[${b}] ${row.map((y) => y.toFixed(4)).join(' ')}${cls}`);
        });
      }
      return EXIT.OK;
    },
  },

  verify: {
    summary: 'verify a proof file against a Ghost file',
    usage: 'ghost-tensor verify --ghost GHOST PROOF [--digest HEX] [--next-ghost OUT] [--json]',
    help: `Verifies a forward, update or step proof (docs/proof-format.md, docs/step-proofs.md)
against a Ghost file. The verifier trusts only the Ghost file (and, with --digest,
checks its digest first). A step proof is the whole training step recomputed.

  --ghost PATH        the Ghost file, or a model directory (its ghost.bin)   (required)
  --digest HEX        the digest the Ghost file must have
  --next-ghost OUT    update and step proofs: write the Ghost file after the step to OUT
  --json              print the result as JSON

Exit 0 verified, 1 rejected (the reason is printed: OUTPUT_MISMATCH, ROOT_MISMATCH, ...),
3 the Ghost file or the proof file cannot be read.`,
    options: { ghost: { type: 'string' }, digest: { type: 'string' }, 'next-ghost': { type: 'string' }, json: { type: 'boolean' } },
    positionals: [1, 1],
    run: async (v, [proofPath]) => {
      const gp = str(v, 'ghost');
      if (!gp) throw new UsageError('--ghost PATH is required');
      const ghost = await pinGhost(decodeGhost(readBytes(ghostPath(gp))));
      const want = str(v, 'digest');
      if (want !== undefined) {
        if (!/^[0-9a-fA-F]{64}$/.test(want)) throw new UsageError('--digest must be 64 hex characters');
        if (toHex(ghost.digest) !== want.toLowerCase()) throw new ProofError('GHOST_MISMATCH', `the Ghost file has digest ${toHex(ghost.digest)}, not ${want.toLowerCase()}`);
      }
      const bytes = readBytes(proofPath!);
      let proof: GhostProof;
      try {
        proof = decodeProof(bytes);
      } catch (e) {
        throw new Rejected(e as FormatError);
      }
      if (proof.kind === 'forward') {
        const r = await verifyForward(ghost, bytes);
        if (v.json === true) out(JSON.stringify({ verified: true, kind: 'forward', digest: toHex(ghost.digest), rows: r.rows, cols: r.cols, output: Array.from(r.output) }));
        else out(`verified: forward proof, layers ${proof.firstLayer}..${proof.firstLayer + proof.layers.length - 1}, ${r.rows} x ${r.cols} output, Ghost digest ${toHex(ghost.digest)}`);
      } else if (proof.kind === 'step') {
        const r = await verifyTrainStep(ghost, bytes);
        const next = str(v, 'next-ghost');
        if (next !== undefined) writeFileSync(next, r.ghost.bytes);
        const rows = r.writes.reduce((n, w) => n + w.ids.length, 0);
        if (v.json === true) out(JSON.stringify({ verified: true, kind: 'step', digest: toHex(ghost.digest), step: r.step, loss: r.loss, lr: r.lr, gradNorm: r.gradNorm, rowsWritten: rows, next: toHex(r.ghost.digest) }));
        else out(`verified: step proof of step ${r.step} (loss ${r.loss.toFixed(4)}, lr ${r.lr.toPrecision(4)}, ${rows.toLocaleString('en-US')} rows written in ${r.writes.length} tensor(s)); the Ghost digest moves ${toHex(ghost.digest)} -> ${toHex(r.ghost.digest)}`);
      } else {
        const r = await verifyUpdate(ghost, bytes);
        const next = str(v, 'next-ghost');
        if (next !== undefined) writeFileSync(next, r.ghost.bytes);
        if (v.json === true) out(JSON.stringify({ verified: true, kind: 'update', digest: toHex(ghost.digest), tensor: r.tensor, rows: r.ids.length, next: toHex(r.ghost.digest) }));
        else out(`verified: update proof of tensor ${r.tensor} (${ghost.manifest.tensors[r.tensor]!.name}), ${r.ids.length} rows; the Ghost digest moves ${toHex(ghost.digest)} -> ${toHex(r.ghost.digest)}`);
      }
      return EXIT.OK;
    },
  },

  inspect: {
    summary: 'describe a model directory, a Ghost file or a proof file',
    usage: 'ghost-tensor inspect PATH [--json]',
    help: `Prints what PATH holds, human-readable (or --json): a model directory (its Ghost file,
tensor files and served generation), a Ghost file (digest, tensors and roots, layers)
or a proof file (kind, Ghost digest, layers, selected ids, revealed blocks, sizes).
Describes only: \`ghost-tensor verify\` checks.

Exit 0, or 3 when PATH cannot be read or is none of these.`,
    options: { json: { type: 'boolean' } },
    positionals: [1, 1],
    run: async (v, [path]) => inspect(path!, v.json === true),
  },

  swarm: {
    summary: 'train a small language model together with untrusted peers (sequencer, trainer or verify-only)',
    usage: 'ghost-tensor swarm --dir DIR --role sequencer|trainer|verify [--digest HEX --sequencer ID[,ID...] --bootstrap ADDR] [--data FILE] [...]',
    help: `Joins a training swarm (docs/swarm.md) over libp2p: every step is a step proof that
every peer verifies before applying it. The model is a byte-level language model
trained by step proofs; every peer builds generation 0 from the model options below,
and its Ghost digest is the swarm's identity (--digest pins it).

  --dir DIR          the peer's state: key (its peer id), log file, replica   (required)
  --role R           sequencer (orders the steps; verify-only), trainer (proposes
                     steps on --data) or verify (follows and serves the log)   (required)
  --digest HEX       the swarm's generation-0 Ghost digest (required but for the sequencer)
  --sequencer IDS    the sequencer's peer id            (required but for the sequencer);
                     several, comma-separated: the sequencers in order of takeover
                     (docs/swarm.md); a sequencer lists itself as self (default: self)
  --takeover-ms MS   move to the next sequencer after MS without the log moving while a
                     proposal waits (default 10000)
  --join J           log (verify every step from generation 0, default) or checkpoint
                     (fetch a recent checkpoint from a peer, check it against the log's
                     chain of digests, verify the log from it: docs/swarm.md)
  --bootstrap ADDRS  multiaddrs with /p2p/<id>, comma-separated (required but for the sequencer)
  --listen ADDRS     multiaddrs to listen on, comma-separated (default a free TCP port on 127.0.0.1)
  --data FILE        trainer: a text file; each step is a window of --context bytes at a
                     seeded offset, the next byte of each position its target
  --steps N          trainer: stop after N accepted proposals (default: until stopped)
  --sequences K      trainer: windows per step (default 1; K > 1: one step of K sequences,
                     a step proof of kind 4)
  --until G          stop once the log reaches generation G
  --announce A       sequencer: publish each log entry whole (entry, default) or only its
                     digest (digest: peers fetch the proof; fewer bytes, docs/swarm.md)
  --seed S           trainer: the offsets of its windows (default 1; give each trainer its own)
  --context S        model: bytes per window (default 32)
  --dim D            model width (default 16)
  --layers L         transformer layers (default 1)
  --heads H          attention heads (default 2)
  --hidden F         gated MLP width (default 3 x dim)
  --init-seed S      the initialisation (default 1)
  --lr LR            learning rate (default 0.01)
  --quiet            no progress lines

Prints "peer <id>", "listen <addr>" and "genesis <hex>" on stdout once started, progress
(generation, steps accepted / stale, peers) on stderr, and "stopped at generation G,
digest HEX" at the end. SIGINT or SIGTERM: finishes the proposal in flight, saves the
replica, leaves; the same command resumes. Exit 1 when the model options give another
digest than --digest, 4 when no peer can be reached.`,
    options: {
      dir: { type: 'string' },
      role: { type: 'string' },
      digest: { type: 'string' },
      sequencer: { type: 'string' },
      'takeover-ms': { type: 'string' },
      join: { type: 'string' },
      bootstrap: { type: 'string' },
      listen: { type: 'string' },
      data: { type: 'string' },
      steps: { type: 'string' },
      sequences: { type: 'string' },
      until: { type: 'string' },
      announce: { type: 'string' },
      seed: { type: 'string' },
      context: { type: 'string' },
      dim: { type: 'string' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      hidden: { type: 'string' },
      'init-seed': { type: 'string' },
      lr: { type: 'string' },
      quiet: { type: 'boolean' },
    },
    positionals: [0, 0],
    run: async (v) => {
      const dir = str(v, 'dir');
      if (!dir) throw new UsageError('--dir DIR is required');
      const role = str(v, 'role');
      if (role !== 'sequencer' && role !== 'trainer' && role !== 'verify') throw new UsageError(`--role takes sequencer, trainer or verify, got ${String(role)}`);
      const list = (name: string): string[] | undefined => str(v, name)?.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
      const bootstrap = list('bootstrap') ?? [];
      const digest = str(v, 'digest');
      const sequencers = list('sequencer');
      if (sequencers !== undefined && new Set(sequencers).size !== sequencers.length) throw new UsageError('--sequencer lists a peer twice');
      const selfAt = sequencers?.indexOf('self') ?? -1;
      if (role === 'sequencer') {
        if (sequencers !== undefined && selfAt < 0) throw new UsageError('a sequencer lists itself in --sequencer as self (its place in the order of takeover)');
      } else {
        if (sequencers === undefined) throw new UsageError(`--sequencer ID is required for a ${role}`);
        if (selfAt >= 0) throw new UsageError(`--sequencer: only a sequencer lists itself (self); this is a ${role}`);
      }
      // Every peer but the first sequencer joins a running swarm.
      if (role !== 'sequencer' || selfAt > 0) {
        if (digest === undefined) throw new UsageError(`--digest HEX (the swarm's generation-0 Ghost digest) is required for a ${role}${role === 'sequencer' ? ' that is not first in --sequencer' : ''}`);
        if (bootstrap.length === 0) throw new UsageError(`--bootstrap ADDR is required for a ${role}${role === 'sequencer' ? ' that is not first in --sequencer' : ''}`);
      }
      const join = str(v, 'join');
      if (join !== undefined && join !== 'log' && join !== 'checkpoint') throw new UsageError(`--join takes log or checkpoint, got ${join}`);
      const takeoverMs = v['takeover-ms'] === undefined ? undefined : num(v, 'takeover-ms', 10_000, 1, 2 ** 31);
      const announce = str(v, 'announce');
      if (announce !== undefined && announce !== 'entry' && announce !== 'digest') throw new UsageError(`--announce takes entry or digest, got ${announce}`);
      if (announce !== undefined && role !== 'sequencer') throw new UsageError('--announce is for the sequencer');
      if (role === 'trainer' && str(v, 'data') === undefined) throw new UsageError('a trainer needs --data FILE');
      if (role !== 'trainer' && (str(v, 'data') !== undefined || v.steps !== undefined || v.sequences !== undefined)) throw new UsageError('--data, --steps and --sequences are for a trainer');
      for (const b of bootstrap) if (!/^\/.+\/p2p\/[1-9A-HJ-NP-Za-km-z]+$/.test(b)) throw new UsageError(`--bootstrap takes multiaddrs ending in /p2p/<peer id>, got ${b}`);
      const dim = num(v, 'dim', 16, 2, 4096);
      const heads = num(v, 'heads', 2, 1, 256);
      if (dim % heads !== 0) throw new UsageError(`--dim (${dim}) must be a multiple of --heads (${heads})`);
      const listen = list('listen');
      const steps = v.steps === undefined ? undefined : num(v, 'steps', 1, 1, 2 ** 40);
      const until = v.until === undefined ? undefined : num(v, 'until', 1, 0, 2 ** 40);
      return runSwarm({
        dir,
        role: role as SwarmRole,
        ...(digest === undefined ? {} : { digest: parseDigest(digest) }),
        sequencers: sequencers ?? ['self'],
        ...(takeoverMs === undefined ? {} : { takeoverMs }),
        ...(join === undefined ? {} : { join }),
        bootstrap,
        ...(listen === undefined ? {} : { listen }),
        ...(str(v, 'data') === undefined ? {} : { data: str(v, 'data')! }),
        ...(steps === undefined ? {} : { steps }),
        sequences: num(v, 'sequences', 1, 1, 64),
        ...(until === undefined ? {} : { until }),
        ...(announce === undefined ? {} : { announce }),
        seed: num(v, 'seed', 1, 0, 2 ** 32 - 1),
        config: {
          model: {
            context: num(v, 'context', 32, 2, 4096),
            dim,
            layers: num(v, 'layers', 1, 1, 64),
            heads,
            hidden: num(v, 'hidden', 3 * dim, 1, 65536),
            seed: num(v, 'init-seed', 1, 0, 2 ** 31),
          },
          lr: num(v, 'lr', 0.01, 0, 10, false),
        },
        quiet: v.quiet === true,
      }, out, err);
    },
  },

  bench: {
    summary: 'list the benchmarks in bench/, or run one',
    usage: 'ghost-tensor bench [NAME [ARGS...]]',
    help: `Without NAME, lists the benchmarks (bench/*.mjs in a checkout of the repository)
with their npm scripts. With NAME, runs bench/NAME.mjs with ARGS and exits with its
code; results go to bench/results/NAME.json (docs in each file's header).

  ghost-tensor bench                  list
  ghost-tensor bench serve --soak-seconds 60`,
    options: {},
    positionals: [0, Infinity as unknown as number],
    run: async (_v, pos) => bench(pos),
  },
};

class Rejected extends Error {
  constructor(readonly inner: FormatError | ProofError) {
    super(inner.message);
  }
}

async function inspect(path: string, json: boolean): Promise<number> {
  const print = (obj: unknown, lines: string[]): void => {
    if (json) out(JSON.stringify(obj, null, 2));
    else lines.forEach((l) => out(l));
  };
  if (statSync(path).isDirectory()) {
    const layout = ModelDirectory.files(path);
    const ghostBytes = readBytes(layout.ghost);
    const g = await pinGhost(decodeGhost(ghostBytes));
    const files = g.manifest.tensors.map((t, i) => {
      const f = layout.tensor(i);
      return { name: t.name, file: relative(path, f), bytes: existsSync(f) ? statSync(f).size : null, wal: existsSync(`${f}.wal`) ? statSync(`${f}.wal`).size : 0 };
    });
    // Whole records of the update log (a torn last one is not counted).
    const generation = (await ModelDirectory.readLog(path)).proofs.length;
    print({ kind: 'model directory', path, digest: toHex(g.digest), generation, ghost: ghostToJSON(g.manifest), files }, [
      `model directory ${path}`,
      `  Ghost digest ${toHex(g.digest)} (generation ${generation}: update proofs in updates.bin)`,
      ...describeGhost(g.manifest).map((l) => `  ${l}`),
      ...files.map((f) => `  ${f.file}  ${f.name}  ${f.bytes === null ? 'MISSING' : `${f.bytes.toLocaleString('en-US')} bytes`}${f.wal ? `, log ${f.wal.toLocaleString('en-US')} bytes` : ''}`),
    ]);
    return EXIT.OK;
  }
  const bytes = readBytes(path);
  if (startsWith(bytes, GHOST_MAGIC)) {
    const g = await pinGhost(decodeGhost(bytes));
    print({ kind: 'ghost file', digest: toHex(g.digest), bytes: bytes.length, ghost: ghostToJSON(g.manifest) }, [`Ghost file ${path} (${bytes.length} bytes)`, `  digest ${toHex(g.digest)}`, ...describeGhost(g.manifest).map((l) => `  ${l}`)]);
    return EXIT.OK;
  }
  if (startsWith(bytes, PROOF_MAGIC)) {
    const p = decodeProof(bytes);
    if (p.kind === 'forward') {
      const layers = p.layers.map((l, i) => ({
        layer: p.firstLayer + i,
        op: l.op,
        stages: l.stages.map((s) => s.length),
        blocks: l.blocks.map((b) => ({ tensor: b.tensor, dim: b.dim, rows: b.ids.length, all: b.all, heldTable: b.heldTable === true, full: b.kinds.filter((x) => x === 0).length, hashes: b.hashes.length / 32 })),
        firstIds: l.stages[l.stages.length - 1]?.subarray(0, 8).join(',') ?? '',
      }));
      const inputDesc = p.input.kind === 'f32' ? `${p.input.rows} x ${p.input.cols} f32` : `${p.input.ids.length} ids`;
      print({ kind: 'forward proof', bytes: bytes.length, ghost: toHex(p.ghost), firstLayer: p.firstLayer, input: inputDesc, layers, output: { rows: p.output.rows, cols: p.output.cols } }, [
        `forward proof ${path} (${bytes.length.toLocaleString('en-US')} bytes; not verified: use ghost-tensor verify)`,
        `  for Ghost digest ${toHex(p.ghost)}`,
        `  input ${inputDesc}, output ${p.output.rows} x ${p.output.cols}: ${Array.from(p.output.data.subarray(0, Math.min(10, p.output.data.length)), (x) => x.toFixed(4)).join(' ')}${p.output.data.length > 10 ? ' ...' : ''}`,
        ...layers.flatMap((l) => [
          `  layer ${l.layer} (${l.op}): ${l.stages.length} stage(s) of ${l.stages.join(', ')} ids${l.firstIds ? `; last stage starts ${l.firstIds}` : ''}`,
          ...l.blocks.map((b) => (b.heldTable ? `    block of tensor ${b.tensor}: held table (every row of ${b.dim}, held by the verifier at the tensor's root)` : `    block of tensor ${b.tensor}: ${b.all ? 'all ' : ''}${b.rows} rows of ${b.dim} (${b.full} in full), multiproof of ${b.hashes} hashes`)),
        ]),
      ]);
    } else if (p.kind === 'step') {
      const rows = p.blocks.reduce((a, b) => a + b.ids.length, 0);
      const batch = p.input.kind === 'f32' ? p.input.rows : p.input.ids.length;
      print({ kind: 'step proof', bytes: bytes.length, ghost: toHex(p.ghost), step: p.step, batch, layers: p.layers.length, blocks: p.blocks.map((b) => ({ tensor: b.tensor, rows: b.ids.length, all: b.all })), states: p.states.length, newGhost: toHex(p.newGhost) }, [
        `step proof ${path} (${bytes.length.toLocaleString('en-US')} bytes; not verified: use ghost-tensor verify)`,
        `  step ${p.step} of Ghost digest ${toHex(p.ghost)}`,
        `  batch of ${batch}, ${p.layers.length} layers, ${rows.toLocaleString('en-US')} rows read from ${p.blocks.length} tensor(s), the state of ${p.states.length} trained tensor(s)`,
        `  Ghost digest after the step ${toHex(p.newGhost)}`,
      ]);
    } else {
      print({ kind: 'update proof', bytes: bytes.length, ghost: toHex(p.ghost), tensor: p.tensor, optimizer: p.optimizer, globalStep: p.globalStep, rows: p.block.ids.length, newRoot: toHex(p.newRoot) }, [
        `update proof ${path} (${bytes.length.toLocaleString('en-US')} bytes; not verified: use ghost-tensor verify)`,
        `  for Ghost digest ${toHex(p.ghost)}`,
        `  tensor ${p.tensor}: ${p.block.ids.length} rows of ${p.block.dim}, ${p.optimizer.kind} lr ${p.optimizer.lr}, global step ${p.globalStep}`,
        `  new root ${toHex(p.newRoot)}`,
      ]);
    }
    return EXIT.OK;
  }
  throw new FormatError('BAD_MAGIC', `${path} is not a model directory, a Ghost file or a proof file`);
}

function describeGhost(m: ReturnType<typeof decodeGhost>): string[] {
  return [
    `format v${m.formatVersion}, ${m.hashScheme}, canonical arithmetic v${m.arithmetic}`,
    `${m.tensors.length} tensor(s):`,
    ...m.tensors.map((t, i) => `  [${i}] ${t.name}: ${t.n.toLocaleString('en-US')} x ${t.dim} ${t.dtype}, root ${toHex(t.root)}`),
    `${m.layers.length} layer(s):`,
    ...m.layers.map((_, i) => `  [${i}] ${describeLayer(m, i)}`),
  ];
}

async function bench(pos: string[]): Promise<number> {
  const dir = join(PACKAGE_ROOT, 'bench');
  if (!existsSync(dir)) {
    err('the benchmarks live in bench/ of a checkout of the repository; this installation has none');
    return EXIT.IO;
  }
  const names = readdirSync(dir).filter((f) => f.endsWith('.mjs')).map((f) => f.slice(0, -4)).sort();
  if (pos.length === 0) {
    out('benchmarks (ghost-tensor bench NAME [ARGS...], or npm run bench:NAME):');
    for (const n of names) {
      const src = readFileSync(join(dir, `${n}.mjs`), 'utf8');
      const first = /\/\*\*\s*\n\s*\*\s*(.+)/.exec(src)?.[1] ?? '';
      out(`  ${n.padEnd(16)} ${first.length > 90 ? first.slice(0, 87) + '...' : first}`);
    }
    return EXIT.OK;
  }
  const [name, ...args] = pos;
  if (!names.includes(name!)) throw new UsageError(`no benchmark ${name}; one of ${names.join(', ')}`);
  const child = spawn(process.execPath, ['--expose-gc', join(dir, `${name}.mjs`), ...args], { stdio: 'inherit', cwd: PACKAGE_ROOT });
  const fwd = (s: NodeJS.Signals): void => void child.kill(s);
  process.on('SIGINT', fwd);
  process.on('SIGTERM', fwd);
  const code = await new Promise<number>((resolve) => child.on('exit', (c, s) => resolve(c ?? (s ? 128 + 15 : EXIT.INTERNAL))));
  process.off('SIGINT', fwd);
  process.off('SIGTERM', fwd);
  return code;
}

// ------------------------------------------------------------------- entry

function topHelp(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'ghost-tensor: Sparsely Activated Tensors with Merkle commitments and Ghost proofs',
    '',
    'usage: ghost-tensor <command> [options]      ghost-tensor <command> --help',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(w)}  ${c.summary}`),
    '',
    'exit codes: 0 ok, 1 proof rejected, 2 usage error, 3 file missing or malformed,',
    '            4 server or peers unreachable or refused, 5 internal error',
    '',
    'docs/cli.md has the details; `npm start` runs the demo.',
  ].join('\n');
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Runs the command line; resolves to the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  invokedWith = argv;
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    const sub = name === 'help' ? rest[0] : undefined;
    if (sub !== undefined && COMMANDS[sub]) {
      out(`usage: ${COMMANDS[sub].usage}\n\n${COMMANDS[sub].help}`);
      return EXIT.OK;
    }
    out(topHelp());
    return name === undefined ? EXIT.USAGE : EXIT.OK;
  }
  if (name === '--version' || name === '-v') {
    out(version());
    return EXIT.OK;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    err(`ghost-tensor: unknown command ${JSON.stringify(name)}\n\n${topHelp()}`);
    return EXIT.USAGE;
  }
  try {
    if (name === 'bench') {
      if (rest[0] === '--help' || rest[0] === '-h') {
        out(`usage: ${cmd.usage}\n\n${cmd.help}`);
        return EXIT.OK;
      }
      return await cmd.run({}, [...rest]);
    }
    let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
    try {
      parsed = parseArgs({ args: [...rest], options: { ...cmd.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true }) as typeof parsed;
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    if (parsed.values.help === true) {
      out(`usage: ${cmd.usage}\n\n${cmd.help}`);
      return EXIT.OK;
    }
    const [lo, hi] = cmd.positionals;
    if (parsed.positionals.length < lo || parsed.positionals.length > hi) {
      throw new UsageError(`${name} takes ${lo === hi ? lo : `${lo}..${hi}`} argument(s), got ${parsed.positionals.length}`);
    }
    return await cmd.run(parsed.values, parsed.positionals);
  } catch (e) {
    return report(name, e, cmd.usage);
  } finally {
    // A serve worker's channel to its primary would keep it alive after the command ends (or fails).
    leavePrimary();
  }
}

function report(name: string, e: unknown, usage: string): number {
  if (e instanceof UsageError) {
    err(`ghost-tensor ${name}: ${e.message}\nusage: ${usage}\n(ghost-tensor ${name} --help for more)`);
    return EXIT.USAGE;
  }
  if (e instanceof Rejected) {
    err(`rejected: ${e.inner.reason}: ${e.inner.message.replace(/^[A-Z_]+: /, '')}`);
    return EXIT.REJECTED;
  }
  if (e instanceof ProofError) {
    err(`rejected: ${e.reason}: ${e.message.replace(/^[A-Z_]+: /, '')}`);
    return EXIT.REJECTED;
  }
  if (e instanceof P2PError) {
    err(`ghost-tensor ${name}: no peer could be reached or answered: ${e.message}`);
    return EXIT.REMOTE;
  }
  if (e instanceof RemoteError) {
    err(`ghost-tensor ${name}: ${e.status === 0 ? 'server unreachable' : `server refused (${e.status})`}: ${e.message}`);
    return EXIT.REMOTE;
  }
  if (e instanceof FormatError || e instanceof StorageError) {
    err(`ghost-tensor ${name}: ${e.message}`);
    return EXIT.IO;
  }
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) {
    err(`ghost-tensor ${name}: ${(e as Error).message}`);
    return EXIT.IO;
  }
  if (e instanceof GhostTensorError && e.code === 'ERR_GT_INVALID_ARGUMENT') {
    err(`ghost-tensor ${name}: ${e.message}`);
    return EXIT.USAGE;
  }
  err(`ghost-tensor ${name}: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  return EXIT.INTERNAL;
}
