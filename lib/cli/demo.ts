/**
 * `ghost-tensor demo`: trains the sparse classifier and its dense baseline on the
 * shipped Fashion-MNIST subset, saves the sparse one as a model directory, serves it
 * on loopback, asks for forward proofs over HTTP that prove their selection too (held
 * keys: the first proof carries every key, the next sends them as held ids), verifies
 * them against the pinned Ghost digest, then tampers with the first and shows each
 * rejection. Results on stdout,
 * progress on stderr.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

import { FormatError, ProofError } from '../shared/errors.js';
import { HopfieldLookup } from '../model/kinds/hopfield.js';
import { Model } from '../model/model.js';
import type { SparseTensor } from '../tensor/sparse-tensor.js';
import { cmix, csimilarity, csoftmax, cstate } from '../verify/canonical.js';
import { decodeProof, encodeProof, type ForwardProof } from '../verify/proof-format.js';
import { verifyForward, type PinnedGhost } from '../verify/proof-verify.js';
import { ProverClient } from '../serve/client.js';
import { ProverServer } from '../serve/server.js';
import { toHex } from '../shared/bytes.js';
import { CLASS_NAMES, DEMO_DATA_DIR, PACKAGE_ROOT, argmax, loadSplit, trainClassifier, type Trained } from './classifier.js';
import { Progress } from '../model/train/progress.js';

export interface DemoOptions {
  quick: boolean;
  /** Keep the model directory here (must not exist); default: a temporary directory, removed at the end. */
  out?: string;
  data?: string;
  quiet?: boolean;
  /** Lines of the report (default: stdout). */
  print?: (line: string) => void;
}

/** Left-aligned first column, right-aligned others. */
export function formatTable(header: string[], rows: string[][], leftColumns = 1): string[] {
  const w = header.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j]!.length)));
  const line = (r: string[]): string => r.map((c, j) => (j < leftColumns ? c.padEnd(w[j]!) : c.padStart(w[j]!))).join('   ').trimEnd();
  return [line(header), ...rows.map(line)];
}

const kib = (n: number): string => `${(n / 1024).toFixed(1)} KiB`;

export async function runDemo(o: DemoOptions): Promise<number> {
  const print = o.print ?? ((l: string) => process.stdout.write(l + '\n'));
  const started = performance.now();
  const size = o.quick ? { train: 1000, test: 500, n: 256, epochs: 1 } : { train: 4000, test: 1000, n: 2048, epochs: 1 };
  const k = 32;
  const dataDir = o.data ?? DEMO_DATA_DIR;
  const train = loadSplit(dataDir, 'train', size.train);
  const test = loadSplit(dataDir, 't10k', size.test);
  const where = relative(process.cwd(), dataDir).startsWith('..') ? dataDir : relative(process.cwd(), dataDir) || '.';
  print('ghost-tensor demo: a Fashion-MNIST classifier whose answers come with proofs');
  print('');
  print(`data   ${train.n.toLocaleString('en-US')} training + ${test.n.toLocaleString('en-US')} test images (${where}), 784 pixels each`);
  print(`model  HopfieldLookup: N = ${size.n.toLocaleString('en-US')} stored patterns (keys: images, values: labels), cosine, k = ${k}`);
  print('');

  const run = async (mode: 'sparse' | 'dense'): Promise<Trained> => {
    const label = mode === 'sparse' ? `train sparse (k = ${k})` : `train dense (all ${size.n})`;
    const bar = new Progress(label, Math.floor(train.n / 128) * size.epochs, { quiet: o.quiet === true });
    const r = await trainClassifier(train, test, { mode, n: size.n, k, epochs: size.epochs, onStep: (d, t, loss) => bar.update(d, `loss ${loss.toFixed(3)}`) });
    bar.done(`test accuracy ${(100 * r.accuracy).toFixed(1)}%`);
    return r;
  };
  const sparse = await run('sparse');
  const dense = await run('dense');
  const rows = [
    [`sparse (k = ${k})`, sparse],
    [`dense (all ${size.n.toLocaleString('en-US')})`, dense],
  ] as const;
  for (const l of formatTable(
    ['model', 'test accuracy', 'median step', 'train time', 'speedup'],
    rows.map(([name, r]) => [name, `${(100 * r.accuracy).toFixed(1)}%`, `${r.stepMs.toFixed(1)} ms`, `${r.seconds.toFixed(1)} s`, `${(dense.stepMs / r.stepMs).toFixed(2)}x`]),
  )) print(l);
  print(`(${sparse.steps} steps of 128 images each; step = forward + backward + Adam; speedup = dense step / step)`);
  print('');

  // Save the sparse model, serve it, ask for a proof.
  const tmp = o.out === undefined ? await mkdtemp(join(tmpdir(), 'ghost-tensor-demo-')) : null;
  const dir = o.out ?? join(tmp!, 'model');
  const model = new Model([sparse.layer]);
  let server: ProverServer | null = null;
  try {
    const ghost = await model.save(dir, { optimizerState: true });
    const shown = relative(PACKAGE_ROOT, dir).startsWith('..') ? dir : relative(process.cwd(), dir);
    print(`saved  ${shown}: ghost.bin (${ghost.bytes.length} bytes) + ${model.tensors.length} tensor files`);
    print(`ghost  digest ${toHex(ghost.digest)}`);
    // One session: the client's cache keeps the keys of the first proof, so the next sends them as ids.
    server = await ProverServer.open(dir, { sessions: 1 });
    const url = await server.listen();
    print(`serve  prover on ${url} (POST /forward), client pinned to that digest`);
    // requireSelection: the server reveals every key, and the client re-derives each top-k itself.
    const client = await ProverClient.connect(url, ghost.digest, { requireSelection: true, session: true });
    const B = 8;
    const x = test.x.slice(0, B * 784);
    const t0 = performance.now();
    const served = await client.forward(x);
    const ms = performance.now() - t0;
    const pred = Array.from({ length: B }, (_, b) => argmax(served.output, b * 10, 10));
    const right = pred.filter((p, b) => p === test.y[b]).length;
    print(`query  ${B} test images over HTTP -> 10 logits each + a forward proof of ${kib(served.proof.length)} (every key, once)`);
    print(`proof  verified in ${ms.toFixed(0)} ms (request, proving and verification): ${right}/${B} right`);
    print(`       predicted: ${pred.map((p) => CLASS_NAMES[p]).join(', ')}`);
    print(`       the selection is proven: the client re-derived each image's top-${k} of all ${size.n.toLocaleString('en-US')} keys`);
    const t1 = performance.now();
    const again = await client.forward(test.x.slice(B * 784, 2 * B * 784));
    const againMs = performance.now() - t1;
    // The keys, held whole at their root since the first proof, travel as one held-table marker (docs/proof-format.md section 6).
    const heldTable = (decodeProof(again.proof) as ForwardProof).layers.some((l) => l.blocks.some((b) => b.heldTable === true));
    print(`query  ${B} more: a proof of ${kib(again.proof.length)} (the keys held from the first: ${heldTable ? 'one 9-byte held-table marker' : '2 bits each'}), verified in ${againMs.toFixed(0)} ms`);
    print('');
    print('tamper with the proof; each must be rejected:');
    const tampers = await tamperings(served.proof, ghost, sparse, dense);
    for (const l of formatTable(['change', 'verdict'], tampers, 2)) print(`  ${l}`);
    const rejectedAll = tampers.every((t) => t[1]!.startsWith('rejected'));
    print('');
    print(`done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    return rejectedAll ? 0 : 1;
  } finally {
    if (server) await server.close();
    else model.close();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}

async function verdict(ghost: PinnedGhost, bytes: Uint8Array): Promise<string> {
  try {
    await verifyForward(ghost, bytes, { requireSelection: true });
    return 'ACCEPTED (a bug)';
  } catch (err) {
    if (err instanceof ProofError || err instanceof FormatError) return `rejected: ${err.reason}`;
    throw err;
  }
}

async function tamperings(proof: Uint8Array, ghost: PinnedGhost, sparse: Trained, dense: Trained): Promise<string[][]> {
  const out: string[][] = [];
  // 1. The low byte of the first claimed logit (the output is the proof's last B x 10 f32).
  const p = decodeProof(proof) as ForwardProof;
  const flipped = proof.slice();
  flipped[proof.length - p.output.data.length * 4]! ^= 1;
  out.push(['flip one byte of the claimed output', await verdict(ghost, flipped)]);
  // 2. Two revealed key patterns trade places (both are genuine patterns of the model).
  const swapped = decodeProof(proof) as ForwardProof;
  const keys = swapped.layers[0]!.blocks[0]!;
  [keys.payload[0], keys.payload[1]] = [keys.payload[1]!, keys.payload[0]!];
  out.push(['swap two revealed patterns', await verdict(ghost, encodeProof(swapped))]);
  // 3. One input's selection names the same pattern twice (to weigh it double).
  const doubled = decodeProof(proof) as ForwardProof;
  const ids = doubled.layers[0]!.stages[0]!;
  ids[1] = ids[0]!;
  out.push(['count one pattern twice', await verdict(ghost, encodeProof(doubled))]);
  // 4. The honest proof, checked against the dense baseline's Ghost file (another model).
  const other = new Model([new HopfieldLookup({ keys: dense.layer.keys, values: dense.layer.values, k: sparse.layer.k, similarity: 'cosine', normalize: true, beta: dense.layer.beta })]);
  out.push(['present it as the dense model\'s answer', await verdict(await other.ghost(), proof)]);
  // 5. Input 0 attends to another genuine pattern instead of its last-ranked one: its value
  //    row with a valid multiproof, the output recomputed canonically (without held keys, accepted).
  const chosen = decodeProof(proof) as ForwardProof;
  const ev = chosen.layers[0]!;
  const l = sparse.layer, k = l.k, d = l.dim, dv = l.outDim;
  const st = ev.stages[0]!;
  let id = 0;
  while (st.subarray(0, k).includes(id)) id++;
  st[k - 1] = id;
  const need = Uint32Array.from(new Set(st)).sort();
  const pr = l.values.prove(need);
  ev.blocks[1] = { tensor: ev.blocks[1]!.tensor, dim: dv, all: false, ids: need, kinds: new Uint8Array(need.length), payload: Array.from(need, (_, i) => pr.leaves.slice(i * dv, (i + 1) * dv)), hashes: pr.proof };
  const input = chosen.input.kind === 'f32' ? chosen.input.data : new Float32Array(0);
  for (let b = 0; b < chosen.output.rows; b++) {
    const ids = st.subarray(b * k, (b + 1) * k);
    const q = cstate(input, b * d, d, l.normalize);
    const rows = (l.keys as SparseTensor).gather(ids);
    const s = Float64Array.from(ids, (_, i) => csimilarity(l.similarity, q, rows, i * d, d));
    chosen.output.data.set(Float32Array.from(cmix(csoftmax(s, l.beta), l.values.gather(ids), Array.from(ids, (_, i) => i * dv), dv)), b * dv);
  }
  out.push(['attend to another pattern (re-proved honestly)', await verdict(ghost, encodeProof(chosen))]);
  return out;
}
