/**
 * The proof fuzzer's shared pieces (types in proof-mutants.d.mts): the pool of honest
 * proofs, the byte mutations (fast-check) and the classifier of a mutant. Used by
 * test/proof-fuzz.test.ts (over lib/, a few thousand mutants in CI) and by
 * scripts/fuzz-proofs.mjs (over dist/, the long runs).
 *
 * Nothing here imports lib/ or dist/: every function that needs the library takes it as
 * its first argument (`lib`, the module namespace), so that `instanceof FormatError`
 * tests the class the verifier under test throws.
 */
import fc from 'fast-check';

/** A single decode + verify slower than this counts as a hang. */
export const HANG_MS = 2000;

/** RowKind of lib/verify/proof-format.ts (how a row of a pattern block travels). */
const RowKind = { Full: 0, Held: 1, Delta: 2 };

/** @param {Uint8Array} b */
export const hex = (b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
/** @param {Uint8Array} a @param {Uint8Array} b */
export const same = (a, b) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
/** @param {Float32Array} a */
export const f32bytes = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

// ---------------------------------------------------------------- the honest pool

/** mulberry32, the same stream as test/helpers/rng.ts (`f32` is uniform in [-1, 1)). */
function Rng(seed) {
  let s = seed >>> 0;
  const next = () => {
    let t = (s = (s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, f32: (n) => Float32Array.from({ length: n }, () => next() * 2 - 1) };
}

/**
 * The model of test/helpers/models.ts, built with `lib`: exact cosine retrieval over 300
 * patterns of 16 (normalised input, 2 update steps, k = 8, beta 4), then product keys
 * over 12^2 slots (sub-keys of 8 + 8, values of 5, k = 6, beta 2).
 */
function twoLayerModel(lib, seed) {
  const { HopfieldLookup, Model, ProductKeyIndex, SparseTensor } = lib;
  const rng = Rng(seed);
  const d = 16, n0 = 300, n = 12;
  const l0 = new HopfieldLookup({
    keys: SparseTensor.fromArray(rng.f32(n0 * d), d),
    values: SparseTensor.fromArray(rng.f32(n0 * d), d),
    k: 8,
    similarity: 'cosine',
    normalize: true,
    beta: 4,
    updateSteps: 2,
  });
  const pk = ProductKeyIndex.fromTables(SparseTensor.fromArray(rng.f32(n * 8), 8), SparseTensor.fromArray(rng.f32(n * 8), 8));
  const l1 = new HopfieldLookup({ keys: pk, values: SparseTensor.fromArray(rng.f32(n * n * 5), 5), k: 6, beta: 2 });
  return { model: new Model([l0, l1]), l0, l1 };
}

/**
 * The 12 honest proofs, each with the context it verifies in: forward proofs with and
 * without the verifier's cache (C and D carry held tables), with deltas, of an Embedding-first and of an
 * attention-first model, update proofs of Adam and SGD steps (with rows in full and
 * held), and step proofs (cold, with rows held, and of three sequences).
 */
export async function buildPool(lib) {
  const { Embedding, HopfieldLookup, Model, PatternCache, SparseAdam, SparseSGD, SparseTensor, verifyForward } = lib;
  const pool = [];
  const rng = Rng(100);
  const x = rng.f32(3 * 16), x2 = rng.f32(2 * 16);

  // M1: frozen. A, B: no cache.
  const m1 = twoLayerModel(lib, 7).model;
  const ghost1 = await m1.ghost();
  const a = await m1.prove(x);
  const b = await m1.prove(x2);
  pool.push({ name: 'A forward', bytes: a.bytes, ctx: { kind: 'forward', ghost: ghost1, prover: m1 }, output: a.output });
  pool.push({ name: 'B forward, other input', bytes: b.bytes, ctx: { kind: 'forward', ghost: ghost1, prover: m1 }, output: b.output });

  // M2: the same model, then trained. C: every row held by the verifier.
  const { model: m2, l0, l1 } = twoLayerModel(lib, 7);
  const mirror = new PatternCache(), vcache = new PatternCache();
  const first = await m2.prove(x, { cache: mirror });
  await verifyForward(ghost1, first.bytes, { cache: vcache });
  const c = await m2.prove(x, { cache: mirror });
  // The product-key tables travel as held tables (proof format version 2).
  if (c.proof.layers[1].blocks.filter((b) => b.heldTable).length !== 2) throw new Error('buildPool: C should carry two held tables');
  pool.push({ name: 'C forward, all held', bytes: c.bytes, ctx: { kind: 'forward', ghost: ghost1, cache: vcache.clone(), prover: m1 }, output: c.output });
  await verifyForward(ghost1, c.bytes, { cache: vcache });

  // U1 (Adam) and U2 (SGD): update proofs of the rows the layers read, no cache (every row in full).
  const adam = new SparseAdam([l0.values], { lr: 0.01, weightDecay: 0.01 });
  const sgd = new SparseSGD([l1.values], { lr: 0.1, weightDecay: 0.01 });
  const v0 = c.proof.layers[0].blocks[1].ids, v1 = c.proof.layers[1].blocks[2].ids;
  const g1 = rng.f32(v0.length * 16), g2 = rng.f32(v1.length * 5);
  const [u1] = await m2.proveStep(adam, [{ tensor: l0.values, ids: v0, grads: g1 }]);
  const ghost1b = await m2.ghost();
  pool.push({ name: 'U1 update (Adam)', bytes: u1.bytes, ctx: { kind: 'update', ghost: ghost1 }, next: ghost1b.digest });
  const [u2] = await m2.proveStep(sgd, [{ tensor: l1.values, ids: v1, grads: g2 }]);
  const ghost2 = await m2.ghost();
  // M4: a third copy taken through the same two steps, frozen at ghost2 (the oracle for D).
  const { model: m4, l0: l40, l1: l41 } = twoLayerModel(lib, 7);
  new SparseAdam([l40.values], { lr: 0.01, weightDecay: 0.01 }).step([{ tensor: l40.values, ids: v0, grads: g1 }]);
  new SparseSGD([l41.values], { lr: 0.1, weightDecay: 0.01 }).step([{ tensor: l41.values, ids: v1, grads: g2 }]);
  if (!same((await m4.ghost()).digest, ghost2.digest)) throw new Error('buildPool: M4 does not reach ghost2');
  pool.push({ name: 'U2 update (SGD)', bytes: u2.bytes, ctx: { kind: 'update', ghost: ghost1b }, next: ghost2.digest });

  // D: after the steps, the changed rows travel as deltas, the keys as ids.
  const dd = await m2.prove(x, { cache: mirror });
  if (!dd.proof.layers[0].blocks[1].kinds.every((k) => k === RowKind.Delta)) throw new Error('buildPool: D should carry deltas');
  pool.push({ name: 'D forward, deltas', bytes: dd.bytes, ctx: { kind: 'forward', ghost: ghost2, cache: vcache.clone(), prover: m4 }, output: dd.output });
  await verifyForward(ghost2, dd.bytes, { cache: vcache });

  // U3: an SGD step whose old rows the verifier holds (they travel as ids).
  const [u3] = await m2.proveStep(sgd, [{ tensor: l1.values, ids: v1.subarray(0, 3), grads: rng.f32(3 * 5) }], { cache: mirror });
  if (!u3.proof.block.kinds.every((k) => k === RowKind.Held)) throw new Error('buildPool: U3 should carry held rows');
  pool.push({ name: 'U3 update, held rows', bytes: u3.bytes, ctx: { kind: 'update', ghost: ghost2, cache: vcache.clone() }, next: (await m2.ghost()).digest });

  // E: an Embedding-first model (ids in, l2 Hopfield after).
  const r3 = Rng(300);
  const m3 = new Model([
    new Embedding(SparseTensor.fromArray(r3.f32(50 * 8), 8)),
    new HopfieldLookup({ keys: SparseTensor.fromArray(r3.f32(64 * 8), 8), values: SparseTensor.fromArray(r3.f32(64 * 4), 4), k: 4, similarity: 'l2' }),
  ]);
  const e = await m3.prove([3, 7, 3, 49]);
  pool.push({ name: 'E forward, embedding first', bytes: e.bytes, ctx: { kind: 'forward', ghost: await m3.ghost(), prover: m3 }, output: e.output });

  // F: attention first (causal, 2 heads, k = 3, a sparse key projection), then exact Hopfield.
  const { Projection, SparseSelfAttention } = lib;
  const r5 = Rng(500);
  const proj = (m, d, k) => new Projection({ weight: SparseTensor.fromArray(r5.f32(m * d), d), ...(k ? { k } : {}) });
  const m5 = new Model([
    new SparseSelfAttention({ heads: 2, k: 3, causal: true, query: proj(8, 6), key: proj(8, 6, 5), value: proj(8, 6), output: proj(8, 8) }),
    new HopfieldLookup({ keys: SparseTensor.fromArray(r5.f32(30 * 8), 8), values: SparseTensor.fromArray(r5.f32(30 * 3), 3), k: 4 }),
  ]);
  const f = await m5.prove(r5.f32(5 * 6));
  pool.push({ name: 'F forward, attention first', bytes: f.bytes, ctx: { kind: 'forward', ghost: await m5.ghost(), prover: m5 }, output: f.output });

  // S1, S2: step proofs (docs/step-proofs.md) of a graph trained by them: Adam with weight
  // decay, clipping and a cosine schedule. S1 cold; S2 the next step, the verifier holding rows.
  const { Add, PositionEmbedding } = lib;
  const r7 = Rng(700);
  const m7 = new Model([new Embedding(SparseTensor.fromArray(r7.f32(12 * 6), 6)), new PositionEmbedding(SparseTensor.fromArray(r7.f32(8 * 6), 6)), new Add()], {
    inputs: [[-1], [0], [0, 1]],
    training: { loss: 'cross-entropy', lr: 0.05, weightDecay: 0.01, clipNorm: 0.5, schedule: { kind: 'cosine', warmupSteps: 1, totalSteps: 10 } },
  });
  const sMirror = new PatternCache(), sCache = new PatternCache();
  const g7 = await m7.ghost();
  // S1 made without a cache (its state rows in full, the encoding without row kinds); the
  // prover's mirror then records it as the verifier does, so S2's rows and state rows travel held.
  const s1 = await m7.proveTrainStep({ input: [3, 1, 4, 1, 5], targets: [1, 4, 1, 5, 2] });
  pool.push({ name: 'S1 step', bytes: s1.bytes, ctx: { kind: 'step', ghost: g7 }, next: s1.ghost.digest });
  await lib.verifyTrainStep(g7, s1.bytes, { cache: sCache });
  await lib.verifyTrainStep(g7, s1.bytes, { cache: sMirror });
  const s2 = await m7.proveTrainStep({ input: [3, 1, 4, 11], targets: [0, 4, 2, 5] }, { cache: sMirror });
  pool.push({ name: 'S2 step, held rows', bytes: s2.bytes, ctx: { kind: 'step', ghost: s1.ghost, cache: sCache.clone() }, next: s2.ghost.digest });
  // S3: a step of three sequences (kind 4), from S2's Ghost file, without a cache.
  const s3 = await m7.proveTrainStep([
    { input: [2, 7, 1], targets: [5, 1, 3] },
    { input: [5, 0, 9, 3], targets: [0, 4, 3, 1] },
    { input: [6], targets: [2] },
  ]);
  pool.push({ name: 'S3 step of three sequences', bytes: s3.bytes, ctx: { kind: 'step', ghost: s2.ghost }, next: s3.ghost.digest });

  // Each context's tight limits: exactly what its honest proof is charged (a mutant that
  // asks for one cell, one work unit, one input row or one byte more is refused: BUDGET).
  for (const h of pool) {
    const options = h.ctx.cache ? { cache: h.ctx.cache.clone() } : {};
    const v = h.ctx.kind === 'forward' ? await verifyForward(h.ctx.ghost, h.bytes, options) : h.ctx.kind === 'step' ? await lib.verifyTrainStep(h.ctx.ghost, h.bytes, options) : await lib.verifyUpdate(h.ctx.ghost, h.bytes, options);
    const p = lib.decodeProof(h.bytes);
    // Rows per sequence (a step proof of several sequences: its batch is all of them; its longest is the sequence limit).
    const rows = p.kind === 'update' ? [1] : [p, ...(p.kind === 'step' ? (p.more ?? []) : [])].map((q) => (q.input.kind === 'ids' ? q.input.ids.length : q.input.rows));
    const B = rows.reduce((a, b) => a + b, 0);
    h.ctx.limits = { maxProofBytes: h.bytes.length, maxBatch: B, maxSequence: Math.max(...rows), maxCells: v.cost.cells, maxWork: Math.max(1, v.cost.work) };
  }
  return pool;
}

/**
 * Offsets of the count, length, dimension, index and enum fields of an encoded proof
 * (walking the layout of docs/proof-format.md), for the "huge length" mutation. Throws
 * unless the walk ends exactly at the end of the bytes (checks the walk itself).
 */
export function fieldOffsets(p, total) {
  const out = [];
  let at = 11 + 32; // magic, version, kind, ghost digest
  const u32 = () => void (out.push({ at, size: 4 }), (at += 4));
  const u8 = () => void (out.push({ at, size: 1 }), (at += 1));
  const block = (b) => {
    u32(); // tensor
    u32(); // dim
    u8(); // flags
    if (b.heldTable) return; // a held table (format version 2): the marker alone
    u32(); // id count
    if (!b.all) at += 4 * b.ids.length;
    at += Math.ceil(b.ids.length / 4);
    b.payload.forEach((x, t) => (at += b.kinds[t] === RowKind.Full ? 4 * b.dim : b.kinds[t] === RowKind.Delta ? x.length : 0));
    u32(); // hash count
    at += b.hashes.length;
  };
  const input = (x = p.input) => {
    u8(); // input kind
    if (x.kind === 'f32') {
      u32();
      u32();
      at += 4 * x.data.length;
    } else {
      u32();
      at += 4 * x.ids.length;
    }
  };
  if (p.kind === 'step') {
    at += 8; // step
    const seqs = p.more?.length ? [p, ...p.more] : [p];
    if (seqs.length > 1) u32(); // sequence count (kind 4)
    for (const q of seqs) {
      input(q.input);
      u8(); // targets kind
      u32();
      at += 4 * (q.targets.kind === 'classes' ? q.targets.ids.length : q.targets.data.length);
      u32(); // layer count
      for (const l of q.layers) {
        u8(); // op
        u8(); // stage count
        for (const st of l.stages) {
          u32();
          at += 4 * st.length;
        }
      }
    }
    u32(); // block count
    p.blocks.forEach(block);
    u32(); // state count
    for (const b of p.states) {
      u32(); // tensor
      u32(); // dim
      u8(); // flags
      u32(); // count
      if (!b.all) at += 4 * b.ids.length;
      if (!b.kinds) at += b.leaves.length;
      else {
        // Coded rows (flag 2): the kinds, then the Full rows' leaves and the Delta rows' deltas.
        at += Math.ceil(b.ids.length / 4);
        b.kinds.forEach((k, t) => (at += k === 0 ? 8 * b.dim + 12 : k === 2 ? b.deltas[t].length : 0));
      }
      u32(); // hash count
      at += b.hashes.length;
    }
    at += 32;
  } else if (p.kind === 'forward') {
    u32(); // first layer
    u32(); // layer count
    input();
    for (const l of p.layers) {
      u8(); // op
      u8(); // stage count
      for (const s of l.stages) {
        u32();
        at += 4 * s.length;
      }
      u8(); // block count
      l.blocks.forEach(block);
    }
    u32();
    u32();
    at += 4 * p.output.data.length;
  } else {
    u32(); // tensor
    u8(); // optimizer kind
    at += 20;
    u8(); // rowStep
    at += 16; // global step, log decay
    block(p.block);
    at += 4 * p.grads.length + 4 * p.state.m.length + 4 * p.state.v.length + 4 * p.state.steps.length + 8 * p.state.marks.length + 32;
  }
  if (at !== total) throw new Error(`field walk ends at ${at}, the proof has ${total} bytes`);
  return out;
}

// ---------------------------------------------------------------- byte mutations

export const HUGE = [0, 1, 2, 3, 0xff, 0xffff, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 1, 2 ** 26, 2 ** 28, 2 ** 30, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 32, 2 ** 32 - 1];

export const mutationArb = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('flip'), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }), weight: 6 },
  { arbitrary: fc.record({ op: fc.constant('overwrite'), at: fc.nat(), data: fc.uint8Array({ minLength: 1, maxLength: 40 }) }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('truncate'), len: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('extend'), data: fc.uint8Array({ minLength: 1, maxLength: 64 }) }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('splice'), donor: fc.nat(), from: fc.nat(), len: fc.nat(), at: fc.nat(), del: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('aligned'), donor: fc.nat(), from: fc.nat(), len: fc.nat() }), weight: 2 },
  { arbitrary: fc.record({ op: fc.constant('duplicate'), from: fc.nat(), len: fc.nat(), at: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('length'), field: fc.nat(), value: fc.oneof(fc.constantFrom(...HUGE), fc.nat({ max: 2 ** 32 - 1 }), fc.integer({ min: -3, max: 3 })) }), weight: 5 },
  { arbitrary: fc.record({ op: fc.constant('replace'), donor: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('bomb'), kind: fc.constantFrom('held-all', 'repeat', 'long'), size: fc.nat() }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('statekind'), row: fc.nat(), kind: fc.integer({ min: 0, max: 3 }) }), weight: 1 },
);

/**
 * A step proof's optimizer-state row marked as travelling another way (StateKind: 0 Full,
 * 1 Held, 2 Delta, 3 Zero), re-encoded: a row claimed held (or a no-op delta against the
 * held copy) that the verifier does not hold, a row claimed zero, a held row sent "in
 * full" as zeros. `b` unchanged when it does not decode or has no state block.
 */
function stateKind(lib, b, m) {
  let p;
  try {
    p = lib.decodeProof(b);
  } catch {
    return b;
  }
  if (p.kind !== 'step' || p.states.length === 0) return b;
  const s = p.states[m.row % p.states.length];
  const n = s.ids.length, t = Math.floor(m.row / p.states.length) % n;
  if (!s.kinds) {
    s.kinds = new Uint8Array(n);
    s.deltas = new Array(n).fill(null);
  }
  s.kinds[t] = m.kind;
  s.deltas[t] = m.kind === 2 ? new Uint8Array(Math.ceil((2 * s.dim + 3) / 4)) : null;
  return lib.encodeProof(p);
}

/**
 * The costly shapes of the hostile proofs (docs/proof-format.md, "Verifier limits") on
 * a decoded copy of `b`: 'held-all', the first block becomes n held rows (all rows for a
 * forward proof: 2 bits a row); 'repeat', the input becomes n copies of its first row or
 * id; 'long', n copies of the first input row as one long sequence. `b` unchanged when
 * it does not decode.
 */
function bomb(lib, b, m) {
  let p;
  try {
    p = lib.decodeProof(b);
  } catch {
    return b;
  }
  if (m.kind === 'held-all') {
    const blk = p.kind === 'update' ? p.block : p.kind === 'step' ? p.blocks[0] : p.layers.find((l) => l.blocks.length > 0)?.blocks[0];
    if (!blk) return b;
    const n = Math.min([blk.ids.length + 1, 4096, 2 ** 16][m.size % 3], p.kind === 'update' ? Math.floor(2 ** 16 / blk.dim) : Infinity);
    blk.all = p.kind === 'forward';
    blk.ids = Uint32Array.from({ length: n }, (_, i) => i);
    blk.kinds = new Uint8Array(n).fill(RowKind.Held);
    blk.payload = new Array(n).fill(null);
    blk.hashes = new Uint8Array(0);
    if (p.kind === 'update') {
      const cells = n * blk.dim;
      p.grads = new Float32Array(cells);
      if (p.optimizer.kind === 'adam') p.state = { ...p.state, m: new Float32Array(cells), v: new Float32Array(cells) };
      p.state = { ...p.state, steps: new Uint32Array(n), marks: new Float64Array(n) };
    }
  } else {
    if (p.kind !== 'forward') return b;
    const inp = p.input;
    const n = m.kind === 'repeat' ? [2 * (inp.kind === 'ids' ? inp.ids.length : inp.rows), 4096, 65537][m.size % 3] : [4097, 32768][m.size % 2];
    if (inp.kind === 'ids') {
      if (m.kind === 'long') return b;
      p.input = { kind: 'ids', ids: new Uint32Array(n).fill(inp.ids[0]) };
    } else {
      if (n * inp.cols > 2 ** 18) return b;
      const data = new Float32Array(n * inp.cols);
      for (let r = 0; r < n; r++) data.set(inp.data.subarray(0, inp.cols), r * inp.cols);
      p.input = { kind: 'f32', rows: n, cols: inp.cols, data };
    }
  }
  return lib.encodeProof(p);
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Applies mutations in order to a copy of `base`. `fields` are the base's field offsets; `lib` (for 'bomb') decodes and encodes. */
export function mutate(base, muts, pool, fields, lib) {
  let b = base.slice();
  for (const m of muts) {
    const n = b.length;
    switch (m.op) {
      case 'flip':
        if (n > 0) b[m.at % n] ^= 1 << m.bit;
        break;
      case 'overwrite':
        if (n > 0) {
          const at = m.at % n;
          b.set(m.data.subarray(0, n - at), at);
        }
        break;
      case 'truncate':
        b = b.slice(0, m.len % (n + 1));
        break;
      case 'extend':
        b = concat(b, m.data);
        break;
      case 'splice': {
        const d = pool[m.donor % pool.length].bytes;
        const from = m.from % d.length, len = m.len % (d.length - from + 1);
        const at = m.at % (n + 1), del = m.del % (n - at + 1);
        b = concat(b.subarray(0, at), d.subarray(from, from + len), b.subarray(at + del));
        break;
      }
      case 'aligned': {
        // The donor's bytes at the same offsets (another proof's hashes, rows, ids, output...).
        const d = pool[m.donor % pool.length].bytes;
        const lim = Math.min(n, d.length);
        if (lim === 0) break;
        const from = m.from % lim, len = m.len % (lim - from + 1);
        b.set(d.subarray(from, from + len), from);
        break;
      }
      case 'duplicate': {
        if (n === 0) break;
        const from = m.from % n, len = m.len % (n - from + 1), at = m.at % (n + 1);
        b = concat(b.subarray(0, at), b.slice(from, from + len), b.subarray(at));
        break;
      }
      case 'length': {
        if (fields.length === 0) break;
        const f = fields[m.field % fields.length];
        if (f.at + f.size > n) break;
        const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
        const old = f.size === 4 ? dv.getUint32(f.at, true) : dv.getUint8(f.at);
        // -3..-1: a small step down from the current value; else the value itself.
        const v = m.value < 0 ? old + m.value : m.value;
        if (f.size === 4) dv.setUint32(f.at, v >>> 0, true);
        else dv.setUint8(f.at, v & 0xff);
        break;
      }
      case 'replace':
        b = pool[m.donor % pool.length].bytes.slice();
        break;
      case 'bomb':
        if (lib) b = bomb(lib, b, m);
        break;
      case 'statekind':
        if (lib) b = stateKind(lib, b, m);
        break;
    }
  }
  return b;
}

// ---------------------------------------------------------------- the classifier

/**
 * The same claim as the prover's own proof: Ghost file, layers, input, every stage's
 * selected ids and the output, bit for bit (the rows may travel differently: in full,
 * as ids or as deltas, depending on the verifier's cache).
 */
export function sameClaim(a, b) {
  const u8 = (x) => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
  const inp = (p) => (p.input.kind === 'f32' ? u8(p.input.data) : u8(p.input.ids));
  return (
    same(a.ghost, b.ghost) &&
    a.firstLayer === b.firstLayer &&
    a.input.kind === b.input.kind &&
    same(inp(a), inp(b)) &&
    a.layers.length === b.layers.length &&
    a.layers.every((l, i) => l.op === b.layers[i].op && l.stages.length === b.layers[i].stages.length && l.stages.every((s, j) => same(u8(s), u8(b.layers[i].stages[j])))) &&
    a.output.rows === b.output.rows &&
    same(u8(a.output.data), u8(b.output.data))
  );
}

/** An Error tagged 'forgery', 'crash' or 'hang' (a finding of the fuzzer). */
const finding = (tag, message) => Object.assign(new Error(message), { tag });

/**
 * Decodes and verifies `bytes` in `ctx` the way a peer does (verifyForward or
 * verifyUpdate on the bytes). Returns the refusal reason (a FormatError or ProofError of
 * `lib`), or how it was accepted: `identical` (byte for byte an honest proof of the pool,
 * verified to its output); `equivalent` (an update proof whose claimed gradient,
 * optimizer state or parameters differ but give the same step: the verifier ends at the
 * honest Ghost file; these inputs are revealed, not committed); `reproved` (a forward
 * proof of another input, byte for byte what the prover makes for that input). Anything
 * else throws an Error tagged FORGERY, CRASH (another error type) or HANG, with the
 * mutant in hex. `tight`: verify under the context's tight limits (its honest proof's
 * exact cost), so that any mutant asking for more is refused with BUDGET.
 */
export async function check(lib, ctx, bytes, pool, tight = false) {
  const { FormatError, ProofError, decodeProof, encodeProof, verifyForward, verifyTrainStep, verifyUpdate } = lib;
  const t0 = performance.now();
  let verified;
  try {
    const options = { ...(ctx.cache ? { cache: ctx.cache.clone() } : {}), ...(tight && ctx.limits ? { limits: ctx.limits } : {}) };
    if (ctx.kind === 'forward') verified = { output: (await verifyForward(ctx.ghost, bytes, options)).output };
    else if (ctx.kind === 'step') verified = { next: (await verifyTrainStep(ctx.ghost, bytes, options)).ghost.digest };
    else verified = { next: (await verifyUpdate(ctx.ghost, bytes, options)).ghost.digest };
  } catch (err) {
    const ms = performance.now() - t0;
    if (ms > HANG_MS) throw finding('hang', `HANG: a check took ${ms.toFixed(0)} ms on mutant ${hex(bytes)}`);
    if (err instanceof FormatError || err instanceof ProofError) return { accepted: false, reason: err.reason };
    throw finding('crash', `CRASH: ${err?.constructor?.name}: ${err?.message}\n${err?.stack}\nmutant (${bytes.length} bytes): ${hex(bytes)}`);
  }
  // Accepted: it must be an honest proof, byte for byte, and give that proof's result...
  const decoded = decodeProof(bytes);
  const reencoded = encodeProof(decoded);
  const result = (p) => (verified.output ? p.output !== undefined && same(f32bytes(verified.output), f32bytes(p.output)) : p.next !== undefined && same(verified.next, p.next));
  const h = pool.findIndex((p) => same(p.bytes, bytes));
  if (h >= 0 && same(reencoded, pool[h].bytes) && result(pool[h])) return { accepted: true, how: 'identical', honest: h };
  // ...or an update proof that ends at the Ghost file an honest step from the same one ends at...
  if ((ctx.kind === 'update' || ctx.kind === 'step') && same(reencoded, bytes)) {
    const e = pool.findIndex((p) => p.ctx.kind === ctx.kind && same(p.ctx.ghost.digest, ctx.ghost.digest) && result(p));
    if (e >= 0) return { accepted: true, how: 'equivalent', honest: e };
  }
  // ...or a forward proof of another input that is exactly the prover's proof of that input.
  if (decoded.kind === 'forward' && ctx.prover && same(reencoded, bytes)) {
    const again = await ctx.prover.prove(decoded.input.kind === 'f32' ? decoded.input.data : decoded.input.ids, { firstLayer: decoded.firstLayer, layers: decoded.layers.length }).catch(() => undefined);
    if (again && verified.output && sameClaim(again.proof, decoded) && same(f32bytes(again.output), f32bytes(verified.output))) return { accepted: true, how: 'reproved', honest: -1 };
  }
  throw finding('forgery', `FORGERY: an accepted proof that is not an honest one (${bytes.length} bytes): ${hex(bytes)}`);
}
