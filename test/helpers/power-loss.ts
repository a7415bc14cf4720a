// Crash states of a recorded file-operation trace, as a file system may leave them
// after a power loss (the ALICE model, Pillai et al., OSDI 2014): every operation on a
// file before that file's last fdatasync is durable; the operations since (not yet
// synced) may each have reached the disk or not, in any combination (reordering), and
// a write may be torn at a 512-byte sector boundary, or, when it extends the file,
// leave zeros where its data should be (the size reached the disk before the data).
// The trace comes from the native recorder (native().tensorFileTrace, test only).
import { createHash } from 'node:crypto';
import { dirname } from 'node:path';

export interface TraceOp {
  op: 'write' | 'truncate' | 'sync' | 'syncdir' | 'rename' | 'unlink' | 'create';
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
 * and file. Only file-content operations and fdatasync are modelled (a directory sync
 * is ignored); a trace holding a create, rename or unlink is refused (the checkpoint
 * path issues none; crashStatesFs models them).
 */
export function crashStates(pre: Map<string, Buffer | undefined>, trace: TraceOp[], options: { random?: number; seed?: number } = {}): CrashState[] {
  for (const op of trace)
    if (op.op === 'rename' || op.op === 'unlink' || op.op === 'create') throw new Error(`crashStates does not model ${op.op} (${op.path}); crashStatesFs does`);
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

// ---------------------------------------------------------------------------
// Directories: crash states of a trace that creates, renames and syncs files and
// directories (Model.save). Model: the namespace operations (mkdir, create, rename,
// unlink) of one directory reach the disk in the order they were issued, those of
// different directories independently, so a crash keeps, per directory, a prefix of
// its operations, at least up to the last fsync of that directory (an fsync of a file
// is not counted: POSIX does not promise that it makes the file's name durable, ext4
// happens to; nor is another directory's fsync, as ordered journaling would give). An
// entry whose parent directory did not persist is unreachable. File contents follow each file (inode), as above: durable up to its
// last fsync, unsynced writes in any subset or torn. Contents belong to inodes, so a
// rename carries whatever content has reached the disk.

export interface FsOp {
  op: 'mkdir' | 'create' | 'write' | 'truncate' | 'sync' | 'syncdir' | 'rename' | 'unlink';
  path: string;
  offset: number;
  data?: Uint8Array;
  path2?: string;
}

export interface FsCrashState {
  point: number;
  /** path -> file content, or null for a directory. */
  entries: Map<string, Buffer | null>;
  what: string;
}

/** Crash states of `ops` issued inside the directory `base` (which exists, empty, before them). */
export function crashStatesFs(base: string, ops: FsOp[], options: { random?: number; seed?: number } = {}): FsCrashState[] {
  // Resolve every operation to the inode it touches, in program order.
  const inodeOf: Array<number | undefined> = [];
  const view = new Map<string, number | null>(); // path -> inode (null: directory)
  let nextInode = 0;
  for (const o of ops) {
    if (o.op === 'mkdir') view.set(o.path, null);
    else if (o.op === 'create') view.set(o.path, nextInode++);
    else if (o.op === 'rename') {
      for (const [p, v] of [...view]) {
        if (p === o.path || p.startsWith(`${o.path}/`)) {
          view.delete(p);
          view.set(o.path2! + p.slice(o.path.length), v);
        }
      }
    } else if (o.op === 'unlink') view.delete(o.path);
    else if (o.op === 'write' || o.op === 'truncate' || o.op === 'sync') {
      const ino = view.get(o.path);
      if (ino === undefined || ino === null) throw new Error(`${o.op} of ${o.path}, which is not a file here`);
      inodeOf.push(ino);
      continue;
    }
    inodeOf.push(undefined);
  }
  const isNs = (o: FsOp): boolean => o.op === 'mkdir' || o.op === 'create' || o.op === 'rename' || o.op === 'unlink';
  let s = options.seed ?? 1;
  const rng = (): number => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s / 2147483648;
  };
  const seen = new Set<string>();
  const out: FsCrashState[] = [];
  for (let point = 0; point <= ops.length; point++) {
    // Per directory: its namespace operations before the crash, and how many of them a
    // directory fsync made durable.
    const parentOf = (o: FsOp): string => dirname(o.op === 'rename' ? o.path2! : o.path);
    const perDir = new Map<string, { ops: number[]; forced: number }>();
    for (let i = 0; i < point; i++) {
      const o = ops[i]!;
      if (isNs(o)) {
        const d = parentOf(o);
        if (!perDir.has(d)) perDir.set(d, { ops: [], forced: 0 });
        perDir.get(d)!.ops.push(i);
      }
      if (o.op === 'syncdir' && perDir.has(o.path)) perDir.get(o.path)!.forced = perDir.get(o.path)!.ops.length;
    }
    // Which prefix of each directory's operations persisted: all combinations when few.
    let keeps: number[][] = [[]];
    for (const [, v] of perDir) {
      const next: number[][] = [];
      for (const k of keeps) for (let n = v.forced; n <= v.ops.length; n++) next.push([...k, ...v.ops.slice(0, n)]);
      keeps = next.length > 64 ? next.filter((_, j) => j % Math.ceil(next.length / 64) === 0 || j === next.length - 1) : next;
    }
    // Per inode: its durable content and the choices for its unsynced operations.
    const inodes = new Set(inodeOf.slice(0, point).filter((x): x is number => x !== undefined));
    const perInode = [...inodes].map((ino) => {
      const mine = [];
      for (let i = 0; i < point; i++) if (inodeOf[i] === ino) mine.push(i);
      let lastSync = -1;
      for (const i of mine) if (ops[i]!.op === 'sync') lastSync = i;
      let durable: Buffer | undefined = Buffer.alloc(0);
      const pending: number[] = [];
      const sizes = new Map<number, number>();
      for (const i of mine) {
        const o = ops[i]!;
        if (o.op === 'sync') continue;
        const t: TraceOp = { op: o.op as 'write' | 'truncate', path: '', offset: o.offset, ...(o.data ? { data: o.data } : {}) };
        if (i < lastSync) durable = apply(durable, t, 'full');
        else {
          sizes.set(i, pending.reduce((sz, j) => {
            const p = ops[j]!;
            return p.op === 'truncate' ? p.offset : Math.max(sz, p.offset + (p.data?.length ?? 0));
          }, durable.length));
          pending.push(i);
        }
      }
      const asTrace = ops.map((o) => ({ op: o.op === 'write' || o.op === 'truncate' ? o.op : 'sync', path: '', offset: o.offset, ...(o.data ? { data: o.data } : {}) }) as TraceOp);
      return { ino, durable, cs: choices(pending, asTrace, (i) => sizes.get(i) ?? 0, options.random ?? 2, rng), asTrace };
    });
    for (const kept of keeps) {
      const keptSet = new Set(kept);
      // Data choices: every inode's choices against the others' "all", and a few random combinations.
      const combos: Array<Map<number, Choice>> = [];
      const allOf = (): Map<number, Choice> => new Map(perInode.map((f) => [f.ino, f.cs[1] ?? f.cs[0]!]));
      combos.push(allOf());
      for (const f of perInode) for (const c of f.cs) combos.push(new Map(allOf()).set(f.ino, c));
      for (let r = 0; r < (options.random ?? 2); r++)
        combos.push(new Map(perInode.map((f) => [f.ino, f.cs[Math.floor(rng() * f.cs.length)]!])));
      for (const combo of combos) {
        const content = new Map<number, Buffer>();
        for (const f of perInode) {
          const c = combo.get(f.ino)!;
          let b: Buffer | undefined = f.durable;
          for (const i of c.ops) b = apply(b, f.asTrace[i]!, c.mode.get(i) ?? 'full');
          content.set(f.ino, b ?? Buffer.alloc(0));
        }
        // Replay the kept namespace prefix.
        const names = new Map<string, number | null>();
        let ino = 0;
        const inoOfCreate = new Map<number, number>();
        for (let i = 0; i < ops.length; i++) if (ops[i]!.op === 'create') inoOfCreate.set(i, ino++);
        for (let i = 0; i < point; i++) {
          if (!keptSet.has(i)) continue;
          const o = ops[i]!;
          if (o.op === 'mkdir') names.set(o.path, null);
          else if (o.op === 'create') names.set(o.path, inoOfCreate.get(i)!);
          else if (o.op === 'unlink') names.delete(o.path);
          else if (o.op === 'rename') {
            for (const p of [...names.keys()]) {
              if (p === o.path2 || p.startsWith(`${o.path2}/`)) names.delete(p); // replaced target
            }
            for (const [p, v] of [...names]) {
              if (p === o.path || p.startsWith(`${o.path}/`)) {
                names.delete(p);
                names.set(o.path2! + p.slice(o.path.length), v);
              }
            }
          }
        }
        const entries = new Map<string, Buffer | null>();
        const reachable = (p: string): boolean => {
          for (let d = dirname(p); d !== base; d = dirname(d)) if (names.get(d) !== null || d === dirname(d)) return false;
          return true;
        };
        for (const [p, v] of names) {
          if (!p.startsWith(`${base}/`) || !reachable(p)) continue;
          entries.set(p.slice(base.length + 1), v === null ? null : content.get(v) ?? Buffer.alloc(0));
        }
        const h = createHash('sha256');
        for (const [p, v] of [...entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
          h.update(`${p}\0${v === null ? 'dir' : v.length}\0`);
          if (v) h.update(v);
        }
        const key = h.digest('hex');
        if (seen.has(key)) continue;
        seen.add(key);
        out.push({ point, entries, what: `${kept.length} namespace ops kept` });
      }
    }
  }
  return out;
}
