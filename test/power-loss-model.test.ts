// Power loss while Model.save writes a model directory: the file operations of the
// save (TypeScript: node:fs/promises, recorded through a mock that passes every call
// through; native: the tensor files' recorder) are merged in issue order and replayed
// into every crash state a file system may leave (test/helpers/power-loss.ts,
// crashStatesFs). Each state must either have no model directory (the save was not
// acknowledged) or load as exactly the saved model; after save() resolved, only the
// latter. GT_POWER_LOSS=full: more random combinations.
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

import { afterAll, describe, expect, it, vi } from 'vitest';

import { type FsOp, crashStatesFs } from './helpers/power-loss.js';

const rec: { on: boolean; ops: Array<{ at: number; op: FsOp }>; size: () => number } = { on: false, ops: [], size: () => 0 };

vi.mock('node:fs/promises', async (importOriginal) => {
  const fsp = await importOriginal<typeof import('node:fs/promises')>();
  const { existsSync: ex, statSync: st } = await import('node:fs');
  const push = (op: FsOp): void => {
    if (rec.on) rec.ops.push({ at: rec.size(), op });
  };
  const wrapped = {
    ...fsp,
    mkdir: async (path: string, options?: { recursive?: boolean }) => {
      const made: string[] = [];
      for (let p = String(path); !ex(p); p = dirname(p)) made.unshift(p);
      const r = await fsp.mkdir(path, options);
      for (const p of made) push({ op: 'mkdir', path: p, offset: 0 });
      return r;
    },
    rename: async (a: string, b: string) => {
      await fsp.rename(a, b);
      push({ op: 'rename', path: String(a), path2: String(b), offset: 0 });
    },
    open: async (path: string, flags?: string, mode?: number) => {
      const p = String(path);
      const existed = ex(p);
      const fh = await fsp.open(path, flags, mode);
      const f = flags ?? 'r';
      if (!existed && /[wxa]/.test(f)) push({ op: 'create', path: p, offset: 0 });
      else if (existed && f.startsWith('w')) push({ op: 'truncate', path: p, offset: 0 });
      const isDir = st(p).isDirectory();
      return new Proxy(fh, {
        get(target, prop, receiver) {
          if (prop === 'writeFile') {
            return async (data: Uint8Array) => {
              await target.writeFile(data);
              push({ op: 'write', path: p, offset: 0, data: new Uint8Array(data) });
            };
          }
          if (prop === 'sync') {
            return async () => {
              await target.sync();
              push({ op: isDir ? 'syncdir' : 'sync', path: p, offset: 0 });
            };
          }
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    },
  };
  return { ...wrapped, default: wrapped };
});

const { Embedding, HopfieldLookup, Model, SparseTensor } = await import('../lib/index.js');
const { native } = await import('../lib/tensor/native.js');
const { Rng } = await import('./helpers/rng.js');

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('power loss while saving a model directory', () => {
  const full = process.env.GT_POWER_LOSS === 'full';
  it('every crash state has no model directory (before the save is acknowledged) or loads as exactly the saved model', async () => {
    const rng = new Rng(41);
    const d = 4;
    const emb = new Embedding(SparseTensor.fromArray(rng.f32(20 * d), d));
    const hop = new HopfieldLookup({ keys: SparseTensor.fromArray(rng.f32(16 * d), d), values: SparseTensor.fromArray(rng.f32(16 * 2), 2), k: 2, similarity: 'l2' });
    const model = new Model([emb, hop]);
    const base = mkdtempSync(join(tmpdir(), 'gt-pl-model-'));
    dirs.push(base);
    const dir = join(base, 'm');
    rec.size = () => native().tensorFileTrace('size');
    rec.ops = [];
    native().tensorFileTrace('start');
    rec.on = true;
    let saved;
    let nativeOps;
    try {
      saved = await model.save(dir, { optimizerState: true });
    } finally {
      rec.on = false;
      nativeOps = native().tensorFileTrace('stop');
    }
    // Merge: a TypeScript operation recorded when `at` native ones had been issued follows them.
    const ops: FsOp[] = [];
    let ti = 0;
    for (let ni = 0; ni <= nativeOps.length; ni++) {
      while (ti < rec.ops.length && rec.ops[ti]!.at <= ni) ops.push(rec.ops[ti++]!.op);
      if (ni < nativeOps.length) {
        const o = nativeOps[ni]!;
        ops.push({ op: o.op as FsOp['op'], path: o.path, offset: o.offset, ...(o.data ? { data: o.data } : {}), ...(o.path2 ? { path2: o.path2 } : {}) });
      }
    }
    const kinds = new Set(ops.map((o) => o.op));
    for (const k of ['mkdir', 'create', 'write', 'sync', 'syncdir', 'rename'] as const) expect(kinds, k).toContain(k);
    const want = model.tensors.map((t) => Buffer.from(t.gather(Uint32Array.from({ length: t.size }, (_, i) => i)).buffer).toString('base64'));
    const states = crashStatesFs(base, ops, { random: full ? 16 : 2, seed: 5 });
    let absent = 0, loaded = 0;
    for (const cs of states) {
      const root = mkdtempSync(join(tmpdir(), 'gt-pl-state-'));
      try {
        for (const [p, v] of [...cs.entries].sort(([a], [b]) => a.length - b.length)) {
          const at = join(root, p);
          if (v === null) mkdirSync(at, { recursive: true });
          else {
            mkdirSync(dirname(at), { recursive: true });
            writeFileSync(at, v);
          }
        }
        const where = `crash after op ${cs.point}/${ops.length} (${cs.what})`;
        const m = join(root, 'm');
        if (!existsSync(m)) {
          expect(cs.point, `${where}: the acknowledged save is lost`).toBeLessThan(ops.length);
          absent++;
          continue;
        }
        expect(statSync(m).isDirectory()).toBe(true);
        let back;
        try {
          back = await Model.load(m, { expectDigest: saved.digest });
        } catch (e) {
          throw new Error(`${where}: the model directory exists but does not load: ${(e as Error).message}`);
        }
        const got = back.model.tensors.map((t) => Buffer.from(t.gather(Uint32Array.from({ length: t.size }, (_, i) => i)).buffer).toString('base64'));
        expect(got, where).toEqual(want);
        for (const t of back.model.tensors) t.close();
        loaded++;
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    }
    expect(absent).toBeGreaterThan(0);
    expect(loaded).toBeGreaterThan(0);
    if (full) console.log(JSON.stringify({ ops: ops.length, crashStates: states.length, absent, loaded }));
  }, 120_000);
});
