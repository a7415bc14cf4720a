/**
 * Peers over libp2p (docs/p2p.md): five layer nodes on loopback serve a three-layer
 * model, one of them malicious; a client finds them on the DHT, runs verified forward
 * passes across them, and must catch every forgery, drop the forger and finish
 * through the honest peers with the output of a local proof, bit for bit. Hostile
 * frames sent raw to an honest node get error responses and it keeps serving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { Embedding, HopfieldLookup, Model, ProductKeyIndex, SparseSGD, SparseTensor, decodeProof, encodeProof, verifyForward, type ForwardProof, type PinnedGhost } from '../lib/index.js';
import { cmix, csoftmax, cstate } from '../lib/verify/canonical.js';
import type { GhostHopfieldLayer } from '../lib/verify/ghost-file.js';
import { ByteWriter } from '../lib/shared/bytes.js';
import { PROOF_MAGIC, type ProofInput } from '../lib/verify/proof-format.js';
import { P2PError } from '../lib/shared/errors.js';
import { FormatError, OutOfRangeError } from '../lib/shared/errors.js';
import { FORWARD_PROTOCOL, FRAME_LIMITS, GhostClient, LayerNode, P2PForwardError, decodeRequest, decodeResponse, encodeRequest, encodeResponse, modelProver, type DropReason, type ForwardResponse, type LayerProver, type P2PForwardResult } from '../lib/p2p/index.js';
import { readFrame } from '../lib/p2p/host.js';
import { Rng } from './helpers/rng.js';

/**
 * Three layers: exact cosine retrieval (300 x 16, 2 update steps, k = 8), then product
 * keys over 12^2 slots (sub-keys 8 + 8, values of 16, k = 6), then product keys over
 * 10^2 slots (values of 5, k = 4).
 */
function threeLayerModel(seed: number): Model {
  const rng = new Rng(seed);
  const d = 16;
  const t = (n: number, dim: number): SparseTensor => SparseTensor.fromArray(rng.f32(n * dim), dim);
  const l0 = new HopfieldLookup({ keys: t(300, d), values: t(300, d), k: 8, similarity: 'cosine', normalize: true, beta: 4, updateSteps: 2 });
  const l1 = new HopfieldLookup({ keys: ProductKeyIndex.fromTables(t(12, 8), t(12, 8)), values: t(144, d), k: 6, beta: 2 });
  const l2 = new HopfieldLookup({ keys: ProductKeyIndex.fromTables(t(10, 8), t(10, 8)), values: t(100, 5), k: 4, beta: 2 });
  return new Model([l0, l1, l2]);
}

const dataOf = (i: ProofInput): Float32Array | Uint32Array => (i.kind === 'ids' ? i.ids : i.data);
const bits = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/**
 * A cheating prover can rebuild everything but the selection: in a product-key layer,
 * swap input 0's last-ranked slot for the best slot not selected, reveal that slot's
 * value row with a valid multiproof, and recompute the layer's output from the swapped
 * set. Returns the forged one-layer proof.
 */
function swapPattern(model: Model, ghost: PinnedGhost, honest: ForwardProof): ForwardProof {
  const p = decodeProof(encodeProof(honest)) as ForwardProof;
  const li = p.firstLayer;
  const gl = ghost.manifest.layers[li] as GhostHopfieldLayer;
  if (gl.index.kind !== 'product-keys' || p.input.kind !== 'f32') throw new Error('swapPattern needs a product-key layer');
  const n = gl.index.subKeys, k = gl.k;
  const all = Uint32Array.from({ length: n }, (_, i) => i);
  const T1 = model.tensors[gl.keys[0]!]!, T2 = model.tensors[gl.keys[1]!]!, V = model.tensors[gl.values]!;
  const t1 = T1.gather(all), t2 = T2.gather(all), d1 = T1.dim, d2 = T2.dim;
  const inp = p.input.data;
  const score = (b: number, slot: number): number => {
    const q = cstate(inp, b * gl.dIn, gl.dIn, gl.normalize);
    let s1 = 0, s2 = 0;
    for (let j = 0; j < d1; j++) s1 = s1 + q[j]! * t1[Math.floor(slot / n) * d1 + j]!;
    for (let j = 0; j < d2; j++) s2 = s2 + q[d1 + j]! * t2[(slot % n) * d2 + j]!;
    return s1 + s2;
  };
  const st = p.layers[0]!.stages[0]!;
  const chosen = new Set(st.subarray(0, k));
  let swap = -1;
  for (let s = 0; s < n * n; s++) if (!chosen.has(s) && (swap < 0 || score(0, s) > score(0, swap))) swap = s;
  st[k - 1] = swap;
  const need = Uint32Array.from(new Set(st)).sort();
  const pr = V.prove(need);
  const vb = p.layers[0]!.blocks.find((b) => b.tensor === gl.values)!;
  vb.ids = need;
  vb.kinds = new Uint8Array(need.length);
  vb.payload = Array.from(need, (_, i) => pr.leaves.slice(i * V.dim, (i + 1) * V.dim));
  vb.hashes = pr.proof;
  for (let b = 0; b < p.output.rows; b++) {
    const ids = st.subarray(b * k, (b + 1) * k);
    const y = cmix(csoftmax(Float64Array.from(ids, (id) => score(b, id)), gl.beta), V.gather(ids), Array.from(ids, (_, i) => i * V.dim), V.dim);
    p.output.data.set(Float32Array.from(y), b * V.dim);
  }
  return p;
}

type Mode = 'honest' | 'forge-output' | 'swap-pattern' | 'replay-other-input' | 'replay-pre-update' | 'replay-pre-update-relabelled' | 'internal-error' | 'stall';

/** The malicious node's prover: valid-looking answers that each lie in one way. */
function maliciousProver(cur: Model, curGhost: PinnedGhost, old: Model): LayerProver & { mode: Mode } {
  const rng = new Rng(99);
  const self = {
    ghost: curGhost,
    mode: 'honest' as Mode,
    async prove(input: ProofInput, firstLayer: number, layers: number): Promise<Uint8Array> {
      const x = dataOf(input);
      switch (self.mode) {
        case 'honest':
          return (await cur.prove(x, { firstLayer, layers })).bytes;
        case 'forge-output': {
          const p = (await cur.prove(x, { firstLayer, layers })).proof;
          p.output.data[0]! += 1e-3;
          return encodeProof(p);
        }
        case 'swap-pattern': {
          // Layer by layer; the first product-key layer of the span gets the swap, the later ones run honestly on its forged output.
          const parts: ForwardProof[] = [];
          let xi: Float32Array | Uint32Array = x;
          let swapped = false;
          for (let l = firstLayer; l < firstLayer + layers; l++) {
            let p = (await cur.prove(xi, { firstLayer: l, layers: 1 })).proof;
            if (!swapped && (curGhost.manifest.layers[l] as GhostHopfieldLayer).index.kind === 'product-keys') {
              p = swapPattern(cur, curGhost, p);
              swapped = true;
            }
            parts.push(p);
            xi = p.output.data;
          }
          if (!swapped) throw new Error('no product-key layer in the span');
          return encodeProof({ ...parts[0]!, layers: parts.flatMap((p) => p.layers), output: parts[parts.length - 1]!.output });
        }
        case 'replay-other-input': {
          // A valid proof of the same layers, for an input the client did not send.
          const other = input.kind === 'ids' ? input.ids.map((id) => id) : rng.f32(input.data.length);
          return (await cur.prove(other, { firstLayer, layers })).bytes;
        }
        case 'replay-pre-update':
          return (await old.prove(x, { firstLayer, layers })).bytes;
        case 'replay-pre-update-relabelled': {
          const p = (await old.prove(x, { firstLayer, layers })).proof;
          p.ghost = curGhost.digest.slice();
          return encodeProof(p);
        }
        case 'internal-error':
          throw new Error('disk on fire');
        case 'stall':
          await new Promise((r) => setTimeout(r, 4_000));
          return (await cur.prove(x, { firstLayer, layers })).bytes;
      }
    },
  };
  return self;
}

describe('frames', () => {
  const rng = new Rng(1);
  const digest = Uint8Array.from({ length: 32 }, (_, i) => i * 7);
  const reqs = [
    encodeRequest({ requestId: 7, ghost: digest, firstLayer: 2, layers: 3, input: { kind: 'f32', rows: 2, cols: 3, data: rng.f32(6) } }),
    encodeRequest({ requestId: 2 ** 32 - 1, ghost: digest, firstLayer: 0, layers: 1, input: { kind: 'ids', ids: Uint32Array.of(5, 0, 5) } }),
  ];
  const ress = [
    encodeResponse({ requestId: 9, status: 'OK', proof: Uint8Array.of(1, 2, 3) }),
    encodeResponse({ requestId: 9, status: 'NOT_SERVED', reason: 'layer 4 is not served here' }),
  ];

  it('round-trip, and the encoding is the one canonical encoding', () => {
    for (const b of reqs) expect(encodeRequest(decodeRequest(b))).toEqual(b);
    for (const b of ress) expect(encodeResponse(decodeResponse(b))).toEqual(b);
    expect(decodeRequest(reqs[1]!)).toEqual({ requestId: 2 ** 32 - 1, ghost: digest, firstLayer: 0, layers: 1, input: { kind: 'ids', ids: Uint32Array.of(5, 0, 5) } });
    expect(decodeResponse(ress[1]!)).toEqual({ requestId: 9, status: 'NOT_SERVED', reason: 'layer 4 is not served here' });
    // A long reason is cut to the limit rather than refused.
    const long = decodeResponse(encodeResponse({ requestId: 1, status: 'INTERNAL', reason: 'x'.repeat(5000) }));
    expect(long.status === 'INTERNAL' && new TextEncoder().encode(long.reason).length).toBeLessThanOrEqual(FRAME_LIMITS.reasonBytes);
  });

  it('every truncation is a FormatError; byte flips decode to something else or fail with FormatError, never another error', () => {
    const all: [Uint8Array, (b: Uint8Array) => unknown][] = [...reqs.map((b): [Uint8Array, (b: Uint8Array) => unknown] => [b, decodeRequest]), ...ress.map((b): [Uint8Array, (b: Uint8Array) => unknown] => [b, decodeResponse])];
    for (const [b, decode] of all) {
      for (let cut = 0; cut < b.length; cut++) expect(() => decode(b.subarray(0, cut))).toThrow(FormatError);
      expect(() => decode(Uint8Array.from([...b, 0]))).toThrow(/TRAILING_BYTES/);
      let refused = 0;
      for (let i = 0; i < 1500; i++) {
        const m = b.slice();
        m[rng.int(0, m.length - 1)]! ^= 1 << rng.int(0, 7);
        try {
          decode(m);
        } catch (err) {
          expect(err).toBeInstanceOf(FormatError);
          refused++;
        }
      }
      expect(refused).toBeGreaterThan(10);
    }
    // Counts far beyond the bytes present are refused before anything is allocated.
    const huge = reqs[0]!.slice();
    new DataView(huge.buffer).setUint32(47, FRAME_LIMITS.rows, true); // rows
    new DataView(huge.buffer).setUint32(51, FRAME_LIMITS.cols, true); // cols
    expect(() => decodeRequest(huge)).toThrow(/TRUNCATED/);
  });
});

describe('peers over libp2p', () => {
  const cur = threeLayerModel(7);
  const old = threeLayerModel(7); // the same model before one training step
  let ghost: PinnedGhost;
  let oldGhost: PinnedGhost;
  let bad: ReturnType<typeof maliciousProver>;
  const nodes: LayerNode[] = [];
  let client: GhostClient;
  const name = new Map<string, string>();
  let A: LayerNode, B: LayerNode, C: LayerNode, D: LayerNode, M: LayerNode;
  const rng = new Rng(3);
  const x = rng.f32(3 * 16);
  let local: Float32Array;

  beforeAll(async () => {
    oldGhost = await old.ghost();
    // One SGD step on every row of layer 1's first sub-key table: a new root, a new Ghost digest.
    const t = (cur.layers[1] as HopfieldLookup).keys as ProductKeyIndex;
    const opt = new SparseSGD([t.keys1], { lr: 0.05 });
    opt.step([{ tensor: t.keys1, ids: Uint32Array.from({ length: 12 }, (_, i) => i), grads: new Rng(5).f32(12 * 8) }]);
    opt.detach();
    ghost = await cur.ghost();
    expect(ghost.digest).not.toEqual(oldGhost.digest);
    local = (await cur.prove(x)).output;

    const honest = await modelProver(cur);
    bad = maliciousProver(cur, ghost, old);
    A = await LayerNode.start({ prover: honest, layers: [0] });
    const boot = [A.multiaddrs[0]!];
    B = await LayerNode.start({ prover: honest, layers: [1, 2], bootstrap: boot });
    C = await LayerNode.start({ prover: honest, layers: [1], bootstrap: boot });
    D = await LayerNode.start({ prover: honest, layers: [2], bootstrap: boot });
    M = await LayerNode.start({ prover: bad, layers: [0, 1, 2], bootstrap: boot });
    nodes.push(A, B, C, D, M);
    for (const [n, s] of [[A, 'A'], [B, 'B'], [C, 'C'], [D, 'D'], [M, 'M']] as const) name.set(n.peerId, s);
    client = await GhostClient.start({ bootstrap: [B.multiaddrs[0]!] });
    await Promise.all(nodes.map((n) => n.announce({ signal: AbortSignal.timeout(20_000) })));
  });

  afterAll(async () => {
    await Promise.all([...nodes.map((n) => n.stop()), client?.stop()]);
  });

  const hopsOf = (r: P2PForwardResult): string[] => r.hops.map((h) => `${name.get(h.peer)}[${h.firstLayer}..${h.firstLayer + h.layers - 1}]`);
  const droppedOf = (r: P2PForwardResult): [string, number, DropReason['kind'], string][] =>
    r.dropped.map((d) => [name.get(d.peer)!, d.layer, d.why.kind, d.why.kind === 'proof' || d.why.kind === 'format' ? d.why.reason : d.why.kind === 'status' ? d.why.status : '']);

  it('the DHT lists the providers of each layer', async () => {
    const of = async (l: number): Promise<string[]> => (await client.findProviders(ghost.digest, l)).map((p) => name.get(p)!).sort();
    expect(await of(0)).toEqual(['A', 'M']);
    expect(await of(1)).toEqual(['B', 'C', 'M']);
    expect(await of(2)).toEqual(['B', 'D', 'M']);
    // Nobody announces the pre-update model.
    expect(await client.findProviders(oldGhost.digest, 0, { timeoutMs: 2_000 })).toEqual([]);
  });

  it('an honest pass through one peer, and a 3-hop pass, give the local proof\'s output bit for bit', async () => {
    bad.mode = 'honest';
    const one = await client.forward(x, { ghost });
    expect(hopsOf(one)).toEqual(['M[0..2]']); // the longest span first
    expect(one.dropped).toEqual([]);
    expect(bits(one.output).equals(bits(local))).toBe(true);
    expect([one.rows, one.cols]).toEqual([3, 5]);

    const three = await client.forward(x, { ghost, exclude: [M.peerId, B.peerId] });
    expect(hopsOf(three)).toEqual(['A[0..0]', 'C[1..1]', 'D[2..2]']);
    expect(bits(three.output).equals(bits(local))).toBe(true);
    // The canonical output is the fast forward's up to f32 rounding.
    const fast = await cur.forward(x);
    for (let i = 0; i < fast.length; i++) expect(Math.abs(fast[i]! - three.output[i]!)).toBeLessThan(1e-4 * (1 + Math.abs(fast[i]!)));
  });

  const cases: [Mode, DropReason['kind'], string][] = [
    ['forge-output', 'proof', 'OUTPUT_MISMATCH'],
    ['swap-pattern', 'proof', 'SELECTION_MISMATCH'],
    ['replay-other-input', 'proof', 'INPUT_MISMATCH'],
    ['replay-pre-update', 'proof', 'GHOST_MISMATCH'],
    ['replay-pre-update-relabelled', 'proof', 'ROOT_MISMATCH'],
    ['internal-error', 'status', 'INTERNAL'],
  ];
  for (const [mode, kind, reason] of cases) {
    it(`a malicious peer (${mode}) is caught and dropped; the pass completes through honest peers`, async () => {
      bad.mode = mode;
      const r = await client.forward(x, { ghost, prefer: [M.peerId] });
      expect(droppedOf(r)).toEqual([['M', 0, kind, reason]]);
      expect(r.hops[0]!.dropped.map((d) => name.get(d.peer))).toEqual(['M']);
      expect(hopsOf(r)).toEqual(['A[0..0]', 'B[1..2]']);
      expect(bits(r.output).equals(bits(local))).toBe(true);
    });
  }

  it('the forgeries are what they claim: each verifies on its own where the client\'s extra checks catch it', async () => {
    // A replay for another input is a valid proof (only the client's input check refuses it) ...
    bad.mode = 'replay-other-input';
    const replay = await bad.prove({ kind: 'f32', rows: 3, cols: 16, data: x }, 0, 3);
    await expect(verifyForward(ghost, replay)).resolves.toBeDefined();
    // ... and a pre-update proof verifies against the pre-update Ghost file.
    bad.mode = 'replay-pre-update';
    const stale = await bad.prove({ kind: 'f32', rows: 3, cols: 16, data: x }, 0, 3);
    expect(bits((await verifyForward(oldGhost, stale)).output).equals(bits((await old.prove(x)).output))).toBe(true);
  });

  it('a peer that does not answer in time is dropped (timeout) and another serves', async () => {
    bad.mode = 'stall';
    const r = await client.forward(x, { ghost, prefer: [M.peerId], timeoutMs: 1_000 });
    expect(droppedOf(r)).toEqual([['M', 0, 'timeout', '']]);
    expect(bits(r.output).equals(bits(local))).toBe(true);
  });

  it('with every provider of a layer dropped or excluded, the pass fails with NO_PROVIDER and its partial report', async () => {
    bad.mode = 'forge-output';
    const err = await client.forward(x, { ghost, prefer: [M.peerId], exclude: [A.peerId] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(P2PError);
    expect(err).toBeInstanceOf(P2PForwardError);
    expect((err as P2PForwardError).reason).toBe('NO_PROVIDER');
    expect(droppedOf((err as P2PForwardError).result)).toEqual([['M', 0, 'proof', 'OUTPUT_MISMATCH']]);
    expect((err as P2PForwardError).result.hops).toEqual([]);
  });

  describe('hostile frames to an honest node', () => {
    /** Opens a stream to node A, writes raw bytes (closing the write side unless told), and reads the response. */
    async function raw(bytes: Uint8Array, closeWrite = true): Promise<ForwardResponse> {
      const stream = await client.libp2p.dialProtocol(A.libp2p.peerId, FORWARD_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
      stream.send(bytes);
      if (closeWrite) await stream.close();
      try {
        return decodeResponse(await readFrame(stream, 2 ** 24, 10_000));
      } finally {
        stream.abort(new Error('done'));
      }
    }
    const varint = (n: number): number[] => {
      const out: number[] = [];
      while (n >= 0x80) {
        out.push((n % 0x80) | 0x80);
        n = Math.floor(n / 0x80);
      }
      out.push(n);
      return out;
    };
    const frame = (payload: Uint8Array): Uint8Array => Uint8Array.from([...varint(payload.length), ...payload]);
    const good = (over: Partial<Parameters<typeof encodeRequest>[0]> = {}): Uint8Array =>
      encodeRequest({ requestId: 42, ghost: ghost.digest, firstLayer: 0, layers: 1, input: { kind: 'f32', rows: 1, cols: 16, data: x.slice(0, 16) }, ...over });

    it('each gets its error status, and the node keeps serving', async () => {
      const before = { ...A.stats };
      const req = good();
      const status = async (b: Uint8Array, closeWrite = true): Promise<string> => {
        const r = await raw(b, closeWrite);
        return r.status === 'OK' ? 'OK' : `${r.status}: ${r.reason}`;
      };
      // The length prefix promises more than arrives.
      expect(await status(Uint8Array.from([...varint(req.length), ...req.subarray(0, 20)]))).toMatch(/^MALFORMED: .*truncated/);
      // A complete frame whose payload ends inside a field.
      expect(await status(frame(req.subarray(0, req.length - 7)))).toMatch(/^MALFORMED: TRUNCATED/);
      // A 2 GiB length prefix: refused before any payload is read (the write side stays open).
      expect(await status(Uint8Array.from([...varint(2 ** 31), 1, 2, 3]), false)).toMatch(/^TOO_LARGE/);
      // A length prefix that is not a varint of at most 8 bytes.
      expect(await status(new Uint8Array(12).fill(0xff), false)).toMatch(/^MALFORMED/);
      // Garbage, an unknown version, trailing bytes, a non-finite input value.
      expect(await status(frame(new Rng(8).f32(30).map((v) => v * 1e9) as unknown as Uint8Array))).toMatch(/^MALFORMED/);
      expect(await status(frame(Uint8Array.from([9, ...req.subarray(1)])))).toMatch(/^MALFORMED: BAD_VERSION/);
      expect(await status(frame(Uint8Array.from([...req, 0])))).toMatch(/^MALFORMED: TRAILING_BYTES/);
      const nan = req.slice();
      new DataView(nan.buffer).setFloat32(nan.length - 4, NaN, true);
      expect(await status(frame(nan))).toMatch(/^MALFORMED: BAD_VALUE/);
      // Well-formed but unanswerable: another model, a layer A does not serve, a wrong shape.
      const wrong = ghost.digest.slice();
      wrong[0]! ^= 1;
      const r = await raw(frame(good({ ghost: wrong })));
      expect([r.requestId, r.status]).toEqual([42, 'WRONG_GHOST']);
      expect(await status(frame(good({ firstLayer: 1 })))).toMatch(/^NOT_SERVED/);
      expect(await status(frame(good({ input: { kind: 'f32', rows: 2, cols: 8, data: x.slice(0, 16) } })))).toMatch(/^BAD_INPUT/);
      expect(await status(frame(good({ input: { kind: 'ids', ids: Uint32Array.of(1) } })))).toMatch(/^BAD_INPUT/);
      // Still serving: an honest request gets a proof that verifies.
      const ok = await raw(frame(req));
      if (ok.status !== 'OK') throw new Error(`expected OK, got ${ok.status}: ${ok.reason}`);
      expect(bits((await verifyForward(ghost, ok.proof)).output).equals(bits((await cur.prove(x.slice(0, 16), { layers: 1 })).output))).toBe(true);
      expect(A.stats.MALFORMED - before.MALFORMED).toBe(7);
      expect(A.stats.TOO_LARGE - before.TOO_LARGE).toBe(1);
      expect(A.stats.OK - before.OK).toBe(1);
      // And the client's pass still runs through it.
      bad.mode = 'honest';
      const pass = await client.forward(x, { ghost, exclude: [M.peerId] });
      expect(hopsOf(pass)).toEqual(['A[0..0]', 'B[1..2]']);
      expect(bits(pass.output).equals(bits(local))).toBe(true);
    });
  });
});

describe('an Embedding-first model over two peers', () => {
  it('ids travel to the first peer, its verified rows to the second; the output is the local proof\'s', async () => {
    const rng = new Rng(11);
    const model = new Model([
      new Embedding(SparseTensor.fromArray(rng.f32(50 * 8), 8)),
      new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(64 * 8), 8), values: SparseTensor.fromArray(rng.f32(64 * 3), 3), k: 4, similarity: 'l2' }),
    ]);
    const ghost = await model.ghost();
    const prover = await modelProver(model);
    const e = await LayerNode.start({ prover, layers: [0] });
    const h = await LayerNode.start({ prover, layers: [1], bootstrap: e.multiaddrs });
    const client = await GhostClient.start({ bootstrap: e.multiaddrs });
    try {
      await Promise.all([e.announce(), h.announce()]);
      const ids = [3, 49, 3, 0];
      const r = await client.forward(ids, { ghost });
      expect(r.hops.map((x) => [x.peer, x.firstLayer, x.layers])).toEqual([[e.peerId, 0, 1], [h.peerId, 1, 1]]);
      expect(bits(r.output).equals(bits((await model.prove(ids)).output))).toBe(true);
      expect([r.rows, r.cols]).toEqual([4, 3]);
      // An id beyond the table: the client refuses it against the pinned Ghost file; sent anyway, the node answers BAD_INPUT.
      await expect(client.forward([3, 50], { ghost })).rejects.toThrow(OutOfRangeError);
      await expect(client.forward([3, 1.5], { ghost })).rejects.toThrow(/integer/);
      await expect(client.forward(Float32Array.of(1, 2), { ghost })).rejects.toThrow(/Uint32Array or an array of integers/);
      const res = await client.request(e.peerId, { requestId: 5, ghost: ghost.digest, firstLayer: 0, layers: 1, input: { kind: 'ids', ids: Uint32Array.of(50) } });
      expect([res.requestId, res.status]).toEqual([5, 'BAD_INPUT']);
      // With its only provider excluded, layer 1 has none: NO_PROVIDER, after a verified first hop.
      const err = await client.forward(ids, { ghost, exclude: [h.peerId] }).catch((x: unknown) => x);
      expect(err).toBeInstanceOf(P2PForwardError);
      expect((err as P2PForwardError).result.hops.map((x) => x.peer)).toEqual([e.peerId]);
      expect((err as P2PForwardError).message).toMatch(/layer 1/);
    } finally {
      await Promise.all([e.stop(), h.stop(), client.stop()]);
    }
  });
});

describe('a node under load', () => {
  it('answers BUSY past maxConcurrent and TIMEOUT past proveTimeoutMs, then serves again', async () => {
    const rng = new Rng(12);
    const t = SparseTensor.fromArray(rng.f32(40 * 4), 4);
    const model = new Model([new HopfieldLookup({ keys: t, values: t, k: 3 })]);
    const honest = await modelProver(model);
    let entered!: () => void;
    let release!: () => void;
    const inProve = new Promise<void>((r) => (entered = r));
    const gate = new Promise<void>((r) => (release = r));
    const gated: LayerProver = {
      ghost: honest.ghost,
      prove: async (input, first, layers) => {
        entered();
        await gate;
        return honest.prove(input, first, layers);
      },
    };
    const node = await LayerNode.start({ prover: gated, layers: [0], maxConcurrent: 1, proveTimeoutMs: 500 });
    const client = await GhostClient.start({ bootstrap: node.multiaddrs });
    try {
      const req = (requestId: number): Promise<ForwardResponse> =>
        client.request(node.peerId, { requestId, ghost: honest.ghost.digest, firstLayer: 0, layers: 1, input: { kind: 'f32', rows: 1, cols: 4, data: rng.f32(4) } });
      const first = req(1);
      await inProve;
      expect((await req(2)).status).toBe('BUSY');
      expect((await first).status).toBe('TIMEOUT');
      release();
      // The timed-out proof finishes in the background and frees its slot; then the node serves.
      let ok = await req(3);
      while (ok.status === 'BUSY') ok = await req(3);
      expect(ok.status).toBe('OK');
      expect(node.stats).toMatchObject({ OK: 1, TIMEOUT: 1 });
    } finally {
      await Promise.all([node.stop(), client.stop()]);
    }
  });
});

describe('a hostile peer over real streams', () => {
  it('an honest proof over 4 MiB travels (it-length-prefixed refuses frames over 4 MiB by default, and the node used to abort the stream)', async () => {
    const rng = new Rng(14);
    const model = new Model([new Embedding(SparseTensor.fromArray(rng.f32(320 * 4096), 4096))]);
    const prover = await modelProver(model);
    const node = await LayerNode.start({ prover, layers: [0] });
    const client = await GhostClient.start({ bootstrap: node.multiaddrs });
    try {
      const ids = Array.from({ length: 320 }, (_, i) => i);
      const r = await client.forward(ids, { ghost: prover.ghost, providers: new Map([[0, [node.peerId]]]) });
      expect(r.dropped).toEqual([]);
      expect(r.hops[0]!.proofBytes).toBeGreaterThan(4 * 2 ** 20);
      expect(bits(r.output).equals(bits((await model.prove(ids)).output))).toBe(true);
    } finally {
      await Promise.all([node.stop(), client.stop()]);
    }
  });

  it('oversized, slow, malformed and costly responses are each dropped within the client\'s limits; the pass completes through an honest peer with bounded memory', async () => {
    const rng = new Rng(13);
    const model = new Model([
      new Embedding(SparseTensor.fromArray(rng.f32(50 * 8), 8)),
      new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(64 * 8), 8), values: SparseTensor.fromArray(rng.f32(64 * 3), 3), k: 4 }),
    ]);
    const prover = await modelProver(model);
    const ghost = prover.ghost;
    const honest = await LayerNode.start({ prover, layers: [0, 1] });
    const evil = await LayerNode.start({ prover, layers: [0, 1], bootstrap: honest.multiaddrs });
    const client = await GhostClient.start({ bootstrap: honest.multiaddrs });
    const lp = await import('it-length-prefixed');
    // The hostile answers, built before memory is measured.
    const proofHead = (ids: number): ByteWriter => new ByteWriter().bytes(PROOF_MAGIC).u16(1).u8(1).bytes(ghost.digest).u32(0).u32(2).u8(2).u32(ids);
    // Four all-rows blocks of 2^24 held rows (16 MiB; before the fix ~1.5 GB of memory to decode).
    const held = proofHead(1).u32(0).u8(2).u8(0).u8(4);
    const kinds = new Uint8Array(2 ** 22).fill(0x55);
    for (let b = 0; b < 4; b++) held.bytes(Uint8Array.of(0, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 1)).bytes(kinds).u32(0);
    const heldBomb = held.u8(1).u8(0).u8(0).u32(1).u32(3).f32s(new Float32Array(3)).finish();
    // 60 000 ids (repeats of one id): over this client's maxBatch.
    const batchBomb = proofHead(60_000).u32s(new Uint32Array(60_000)).u8(2).u8(0).u8(0).u8(1).u8(0).u8(0).u32(1).u32(3).f32s(new Float32Array(3)).finish();
    const big = new Uint8Array(6 * 2 ** 20);
    type Mode = 'huge-prefix' | 'over-limit' | 'slow' | 'garbage' | 'held-bomb' | 'batch-bomb' | 'wrong-id';
    let mode: Mode = 'garbage';
    const slowTimers: ReturnType<typeof setInterval>[] = [];
    await evil.libp2p.unhandle(FORWARD_PROTOCOL);
    await evil.libp2p.handle(FORWARD_PROTOCOL, async (stream) => {
      const req = decodeRequest(await readFrame(stream, FRAME_LIMITS.requestBytes, 5_000));
      const ok = (proof: Uint8Array): Uint8Array => lp.encode.single(encodeResponse({ requestId: req.requestId, status: 'OK', proof }), { maxDataLength: Infinity }).subarray();
      const send = (b: Uint8Array): void => void stream.send(b);
      const answer = async (b: Uint8Array): Promise<void> => {
        if (!stream.send(b)) await stream.onDrain({ signal: AbortSignal.timeout(5_000) });
        await stream.close({ signal: AbortSignal.timeout(5_000) });
      };
      try {
        if (mode === 'huge-prefix') await answer(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x08, 1, 2, 3)); // 2^31
        else if (mode === 'over-limit') await answer(ok(big));
        else if (mode === 'garbage') await answer(lp.encode.single(new Uint8Array(rng.f32(64).map((v) => v * 1e9).buffer)).subarray());
        else if (mode === 'held-bomb') await answer(ok(heldBomb));
        else if (mode === 'batch-bomb') await answer(ok(batchBomb));
        else if (mode === 'wrong-id') await answer(lp.encode.single(encodeResponse({ requestId: (req.requestId + 1) >>> 0, status: 'OK', proof: heldBomb.subarray(0, 10) })).subarray());
        else {
          // One byte of a 1000-byte frame every 50 ms: never complete within the client's timeout.
          send(Uint8Array.of(0xe8, 0x07));
          const t = setInterval(() => {
            try {
              send(Uint8Array.of(0));
            } catch {
              clearInterval(t);
            }
          }, 50);
          slowTimers.push(t);
        }
      } catch {
        // The client hung up first (it refuses at the length prefix): nothing more to send.
      }
    });
    try {
      await Promise.all([honest.announce(), evil.announce()]);
      const ids = [3, 49, 3, 0];
      const local = (await model.prove(ids)).output;
      const expected: Record<Mode, (d: DropReason) => boolean> = {
        'huge-prefix': (d) => d.kind === 'transport' && /length prefix is over/.test(d.message),
        'over-limit': (d) => d.kind === 'transport' && /length prefix is over the 4194304-byte limit/.test(d.message),
        slow: (d) => d.kind === 'timeout',
        garbage: (d) => d.kind === 'format',
        'held-bomb': (d) => d.kind === 'proof' && d.reason === 'BLOCK_IDS',
        'batch-bomb': (d) => d.kind === 'proof' && d.reason === 'BUDGET',
        'wrong-id': (d) => d.kind === 'transport' && /is for request/.test(d.message),
      };
      const gc = (globalThis as { gc?: () => void }).gc;
      gc?.();
      const m0 = process.memoryUsage();
      let peak = 0;
      for (const m of Object.keys(expected) as Mode[]) {
        mode = m;
        const r = await client.forward(ids, { ghost, prefer: [evil.peerId], timeoutMs: m === 'slow' ? 1_500 : 10_000, maxResponseBytes: 4 * 2 ** 20 + 2 ** 20 * (m === 'held-bomb' ? 13 : 0), limits: { maxBatch: 1024 } });
        expect(r.dropped.map((d) => [d.peer, d.layer]), m).toEqual([[evil.peerId, 0]]);
        expect(expected[m](r.dropped[0]!.why), `${m}: ${JSON.stringify(r.dropped[0]!.why)}`).toBe(true);
        expect(r.hops.map((h) => h.peer)).toEqual([honest.peerId]);
        expect(bits(r.output).equals(bits(local))).toBe(true);
        const mu = process.memoryUsage();
        peak = Math.max(peak, mu.heapUsed + mu.arrayBuffers - m0.heapUsed - m0.arrayBuffers);
      }
      // The 16 MiB bomb travels and is refused at its first block header: memory stays near the response's size.
      expect(peak).toBeLessThan(96 * 2 ** 20);
    } finally {
      for (const t of slowTimers) clearInterval(t);
      await Promise.all([honest.stop(), evil.stop(), client.stop()]);
    }
  });
});
