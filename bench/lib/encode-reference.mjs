// The proof encoder as it was before the exact-size encoder (commit 9ba29d8:
// lib/shared/bytes.ts ByteWriter, lib/verify/proof-format.ts encodeProof, writeBlock,
// writeStages, writeInputRecord), copied into plain JavaScript and kept as the reference:
// test/encode.test.ts checks the new encoder against it byte for byte, bench/encode.mjs
// measures both in one process. Do not "improve" it: it is the old behaviour, chunks
// doubling and joined by finish(), allocation included.
//
// makeReferenceEncoder({ specByOp, writeOptimizer, stateRowBytes }) takes the three helpers
// the encoder used from the library (from lib/ in the test, dist/ in the bench): the op
// codes, the optimizer's bytes (it writes through the writer it is given) and a state
// row's size. Returns encodeProof(proof) -> Uint8Array.

const LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const PROOF_MAGIC = Uint8Array.from([0x89, 0x47, 0x54, 0x50, 0x52, 0x46, 0x0d, 0x0a]);
const PROOF_FORMAT_VERSION = 1;
const ROW_FULL = 0, ROW_DELTA = 2;
const STATE_FULL = 0, STATE_DELTA = 2;

export class ReferenceByteWriter {
  #chunks = [];
  #done = 0;
  #buf = new Uint8Array(256);
  #dv = new DataView(this.#buf.buffer);
  #at = 0;

  #room(n) {
    if (this.#at + n <= this.#buf.length) return;
    if (this.#at > 0) {
      this.#chunks.push(this.#buf.subarray(0, this.#at));
      this.#done += this.#at;
    }
    const next = new Uint8Array(Math.max(n, 2 * this.#buf.length));
    this.#buf = next;
    this.#dv = new DataView(next.buffer);
    this.#at = 0;
  }
  u8(v) {
    this.#room(1);
    this.#dv.setUint8(this.#at++, v);
    return this;
  }
  u16(v) {
    this.#room(2);
    this.#dv.setUint16(this.#at, v, true);
    this.#at += 2;
    return this;
  }
  u32(v) {
    this.#room(4);
    this.#dv.setUint32(this.#at, v, true);
    this.#at += 4;
    return this;
  }
  u64(v) {
    this.#room(8);
    this.#dv.setUint32(this.#at, v % 2 ** 32, true);
    this.#dv.setUint32(this.#at + 4, Math.floor(v / 2 ** 32), true);
    this.#at += 8;
    return this;
  }
  f32(v) {
    this.#room(4);
    this.#dv.setFloat32(this.#at, v, true);
    this.#at += 4;
    return this;
  }
  f64(v) {
    this.#room(8);
    this.#dv.setFloat64(this.#at, v, true);
    this.#at += 8;
    return this;
  }
  bytes(b) {
    this.#room(b.length);
    this.#buf.set(b, this.#at);
    this.#at += b.length;
    return this;
  }
  f32s(a) {
    if (LE) return this.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    for (const v of a) this.f32(v);
    return this;
  }
  f64s(a) {
    if (LE) return this.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    for (const v of a) this.f64(v);
    return this;
  }
  u32s(a) {
    if (LE) return this.bytes(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
    for (const v of a) this.u32(v);
    return this;
  }
  get length() {
    return this.#done + this.#at;
  }
  finish() {
    if (this.#chunks.length === 0) return this.#buf.slice(0, this.#at);
    const out = new Uint8Array(this.#done + this.#at);
    let o = 0;
    for (const c of this.#chunks) {
      out.set(c, o);
      o += c.length;
    }
    out.set(this.#buf.subarray(0, this.#at), o);
    return out;
  }
}

export function makeReferenceEncoder({ specByOp, writeOptimizer, stateRowBytes }) {
  function writeInputRecord(w, input) {
    if (input.kind === 'f32') return w.u8(1).u32(input.rows).u32(input.cols).f32s(input.data);
    return w.u8(2).u32(input.ids.length).u32s(input.ids);
  }

  function writeBlock(w, b) {
    w.u32(b.tensor).u32(b.dim).u8(b.all ? 1 : 0).u32(b.ids.length);
    if (!b.all) w.u32s(b.ids);
    const kinds = new Uint8Array(Math.ceil(b.ids.length / 4));
    for (let t = 0; t < b.ids.length; t++) kinds[t >> 2] |= b.kinds[t] << (2 * (t & 3));
    w.bytes(kinds);
    let run = null;
    let runLength = 0;
    const flush = () => {
      if (run) w.f32s(new Float32Array(run.buffer, run.byteOffset, runLength));
      run = null;
      runLength = 0;
    };
    for (let t = 0; t < b.ids.length; t++) {
      const p = b.payload[t];
      if (b.kinds[t] === ROW_FULL) {
        const row = p;
        if (run && row.buffer === run.buffer && row.byteOffset === run.byteOffset + runLength * 4) {
          runLength += row.length;
        } else {
          flush();
          run = row;
          runLength = row.length;
        }
        continue;
      }
      flush();
      if (b.kinds[t] === ROW_DELTA) w.bytes(p);
    }
    flush();
    w.u32(b.hashes.length / 32).bytes(b.hashes);
  }

  function writeStages(w, l) {
    const spec = specByOp(l.op);
    if (spec === undefined) throw new Error(`proof: unknown op ${JSON.stringify(l.op)}`);
    w.u8(spec.code).u8(l.stages.length);
    for (const s of l.stages) w.u32(s.length).u32s(s);
  }

  return function encodeProof(p) {
    const w = new ReferenceByteWriter();
    w.bytes(PROOF_MAGIC).u16(PROOF_FORMAT_VERSION);
    if (p.kind === 'forward') {
      w.u8(1).bytes(p.ghost).u32(p.firstLayer).u32(p.layers.length);
      writeInputRecord(w, p.input);
      for (const l of p.layers) {
        writeStages(w, l);
        w.u8(l.blocks.length);
        for (const b of l.blocks) writeBlock(w, b);
      }
      w.u32(p.output.rows).u32(p.output.cols).f32s(p.output.data);
    } else if (p.kind === 'update') {
      w.u8(2).bytes(p.ghost).u32(p.tensor);
      writeOptimizer(w, p.optimizer);
      w.u64(p.globalStep).f64(p.logDecay);
      writeBlock(w, p.block);
      w.f32s(p.grads);
      if (p.optimizer.kind === 'adam') w.f32s(p.state.m).f32s(p.state.v);
      w.u32s(p.state.steps).f64s(p.state.marks).bytes(p.newRoot);
    } else {
      w.u8(3).bytes(p.ghost).u64(p.step);
      writeInputRecord(w, p.input);
      if (p.targets.kind === 'classes') w.u8(1).u32(p.targets.ids.length).u32s(p.targets.ids);
      else w.u8(2).u32(p.targets.data.length).f32s(p.targets.data);
      w.u32(p.layers.length);
      for (const l of p.layers) writeStages(w, l);
      w.u32(p.blocks.length);
      for (const b of p.blocks) writeBlock(w, b);
      w.u32(p.states.length);
      for (const b of p.states) {
        const k = b.kinds;
        w.u32(b.tensor).u32(b.dim).u8((b.all ? 1 : 0) | (k ? 2 : 0)).u32(b.ids.length);
        if (!b.all) w.u32s(b.ids);
        if (!k) w.bytes(b.leaves);
        else {
          const packed = new Uint8Array(Math.ceil(b.ids.length / 4));
          for (let t = 0; t < b.ids.length; t++) packed[t >> 2] |= k[t] << (2 * (t & 3));
          w.bytes(packed);
          const rb = stateRowBytes(b.dim);
          for (let t = 0; t < b.ids.length; t++) {
            if (k[t] === STATE_FULL) w.bytes(b.leaves.subarray(t * rb, (t + 1) * rb));
            else if (k[t] === STATE_DELTA) w.bytes(b.deltas[t]);
          }
        }
        w.u32(b.hashes.length / 32).bytes(b.hashes);
      }
      w.bytes(p.newGhost);
    }
    return w.finish();
  };
}
