// Crash states of a recorded file-operation trace, as a file system may leave them
// after a power loss (the ALICE model, Pillai et al., OSDI 2014): every operation on a
// file before that file's last fdatasync is durable; the operations since (not yet
// synced) may each have reached the disk or not, in any combination (reordering), and
// a write may be torn at a 512-byte sector boundary, or, when it extends the file,
// leave zeros where its data should be (the size reached the disk before the data).
// The trace comes from the native recorder (native().tensorFileTrace, test only).
import { createHash } from 'node:crypto';

export interface TraceOp {
  op: 'write' | 'truncate' | 'sync' | 'syncdir' | 'rename' | 'unlink';
  path: string;
  offset: number; // write: file offset; truncate: new size
  data?: Uint8Array; // write
  path2?: string; // rename target
}

/** One crash state: the content of every file (absent: undefined), and which point of the trace it follows. */
export interface CrashState {
  point: number; // operations issued before the crash
  files: Map<string, Buffer | undefined>;
  what: string; // how the unsynced operations were applied (for messages)
}

const SECTOR = 512;

function apply(content: Buffer | undefined, op: TraceOp, mode: 'full' | 'torn' | 'zeros'): Buffer {
  let b = content ?? Buffer.alloc(0);
  if (op.op === 'truncate') {
    if (op.offset <= b.length) return Buffer.from(b.subarray(0, op.offset));
    const out = Buffer.alloc(op.offset);
    b.copy(out);
    return out;
  }
  if (op.op !== 'write' || op.data === undefined) return b;
  const end = op.offset + op.data.length;
  if (end > b.length) {
    const grown = Buffer.alloc(end);
    b.copy(grown);
    b = grown;
  } else {
    b = Buffer.from(b);
  }
  if (mode === 'zeros') return b; // the size reached the disk, the data did not
  let n = op.data.length;
  if (mode === 'torn') {
    // The sectors before the middle of the write reached the disk, the rest did not.
    const firstSectorEnd = Math.ceil((op.offset + 1) / SECTOR) * SECTOR;
    const mid = op.offset + Math.floor(op.data.length / 2);
    const cut = Math.max(firstSectorEnd, Math.floor(mid / SECTOR) * SECTOR);
    n = Math.max(0, Math.min(op.data.length, cut - op.offset));
  }
  Buffer.from(op.data.buffer, op.data.byteOffset, n).copy(b, op.offset);
  return b;
}

type Choice = { ops: number[]; mode: Map<number, 'torn' | 'zeros'>; what: string };

/** Ways a set of unsynced operations (indexes into the trace) may have persisted. */
function choices(pending: number[], trace: TraceOp[], sizeBefore: (i: number) => number, random: number, rng: () => number): Choice[] {
  const out: Choice[] = [{ ops: [], mode: new Map(), what: 'none' }];
  if (pending.length === 0) return out;
  out.push({ ops: pending, mode: new Map(), what: 'all' });
  for (let i = 0; i < pending.length; i++) {
    // In order up to i (an ordered file system), and all but i (one lost write).
    out.push({ ops: pending.slice(0, i), mode: new Map(), what: `first ${i}` });
    if (pending.length <= 64) out.push({ ops: pending.filter((_, j) => j !== i), mode: new Map(), what: `all but #${pending[i]}` });
    const op = trace[pending[i]!]!;
    if (op.op === 'write' && op.data !== undefined) {
      const prefix = pending.slice(0, i + 1);
      if (op.data.length > SECTOR || op.offset % SECTOR !== 0)
        out.push({ ops: prefix, mode: new Map([[pending[i]!, 'torn']]), what: `first ${i + 1}, #${pending[i]} torn` });
      if (op.offset + op.data.length > sizeBefore(pending[i]!))
        out.push({ ops: prefix, mode: new Map([[pending[i]!, 'zeros']]), what: `first ${i + 1}, #${pending[i]} zeros` });
    }
  }
  for (let r = 0; r < random; r++) {
    const ops = pending.filter(() => rng() < 0.5);
    const mode = new Map<number, 'torn' | 'zeros'>();
    for (const i of ops) if (trace[i]!.op === 'write' && rng() < 0.25) mode.set(i, 'torn');
    out.push({ ops, mode, what: `random subset ${r}` });
  }
  return out;
}

/**
 * Every crash state of `trace` applied to `pre` (the files before it), deduplicated by
 * content. `random`: extra random subsets of the unsynced operations per crash point
 * and file. Only file-content operations and fdatasync are modelled; a trace holding a
 * rename, unlink or directory sync is refused (the checkpoint path issues none).
 */
export function crashStates(pre: Map<string, Buffer | undefined>, trace: TraceOp[], options: { random?: number; seed?: number } = {}): CrashState[] {
  for (const op of trace)
    if (op.op === 'rename' || op.op === 'unlink') throw new Error(`the replayer does not model ${op.op} (${op.path})`);
  let s = options.seed ?? 1;
  const rng = (): number => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const paths = [...pre.keys()];
  for (const op of trace) if (op.op !== 'syncdir' && !paths.includes(op.path)) throw new Error(`trace touches ${op.path}, not in the pre-state`);
  const seen = new Set<string>();
  const out: CrashState[] = [];
  for (let point = 0; point <= trace.length; point++) {
    // Per file: the durable prefix (up to its last sync before `point`) and the unsynced rest.
    const perFile = paths.map((path) => {
      let lastSync = -1;
      for (let i = 0; i < point; i++) if (trace[i]!.path === path && trace[i]!.op === 'sync') lastSync = i;
      let durable = pre.get(path);
      const sizes = new Map<number, number>();
      for (let i = 0; i <= lastSync; i++) if (trace[i]!.path === path) durable = apply(durable, trace[i]!, 'full');
      const pending: number[] = [];
      let size = durable?.length ?? 0;
      for (let i = lastSync + 1; i < point; i++) {
        const op = trace[i]!;
        if (op.path !== path || (op.op !== 'write' && op.op !== 'truncate')) continue;
        sizes.set(i, size);
        size = op.op === 'truncate' ? op.offset : Math.max(size, op.offset + (op.data?.length ?? 0));
        pending.push(i);
      }
      const cs = choices(pending, trace, (i) => sizes.get(i) ?? 0, options.random ?? 2, rng);
      return { path, durable, cs };
    });
    // Combine the files' choices: all pairs when few, else each file's choices against the other's extremes.
    let combos: Choice[][] = [[]];
    for (const f of perFile) {
      const next: Choice[][] = [];
      if (combos.length * f.cs.length <= 256) {
        for (const c of combos) for (const x of f.cs) next.push([...c, x]);
      } else {
        for (const c of combos.slice(0, 16)) for (const x of f.cs) next.push([...c, x]);
      }
      combos = next;
    }
    for (const combo of combos) {
      const files = new Map<string, Buffer | undefined>();
      const what: string[] = [];
      perFile.forEach((f, k) => {
        const c = combo[k]!;
        let b = f.durable;
        for (const i of c.ops) b = apply(b, trace[i]!, c.mode.get(i) ?? 'full');
        files.set(f.path, b);
        if (c.what !== 'none') what.push(`${f.path.split('/').pop()}: ${c.what}`);
      });
      const h = createHash('sha256');
      for (const p of paths) {
        const b = files.get(p);
        h.update(b === undefined ? 'absent' : `${b.length}:`);
        if (b !== undefined) h.update(b);
      }
      const key = h.digest('hex');
      if (seen.has(key)) continue;
      seen.add(key);
      out.push({ point, files, what: what.join('; ') || 'synced only' });
    }
  }
  return out;
}
