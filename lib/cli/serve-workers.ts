/**
 * `ghost-tensor serve --workers N` (docs/serving.md, "Several processes"): a read-only
 * model served by N processes that share one listening socket (node:cluster), so that
 * HTTP, proof encoding and sending, which run on a process's main thread, use every
 * core. Each worker runs the ordinary serve command on the same directory (the tensor
 * files are memory-mapped, so the pages are shared) and answers on its own; the primary
 * only hands out connections, restarts a worker that dies, and stops them all on SIGTERM
 * or SIGINT. Training is refused with workers: a model's steps are durable in one order,
 * which one process owns.
 */
import cluster, { type Worker } from 'node:cluster';

/** What a worker tells the primary once it listens. */
export interface WorkerReady {
  type: 'gt-serve-ready';
  url: string;
  digest: string;
  generation: number;
}

/** Whether this process is a worker of `serve --workers` (it then reports instead of printing the banner). */
export function isServeWorker(): boolean {
  return cluster.isWorker && process.env.GT_SERVE_WORKER === '1';
}

/** A worker's report to the primary, once it listens. */
export function reportReady(r: Omit<WorkerReady, 'type'>): void {
  process.send?.({ type: 'gt-serve-ready', ...r } satisfies WorkerReady);
}

/**
 * Ends a worker's channel to the primary once its command ended (or failed): the channel
 * would keep it alive. Through the cluster's own disconnect, so the worker then exits with
 * the command's exit code (a bare process.disconnect() makes the cluster exit it with 0).
 */
export function leavePrimary(): void {
  if (isServeWorker() && process.connected) cluster.worker?.disconnect();
}

/** Restarts allowed within RESTART_WINDOW_MS before the primary gives up. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 10_000;

/**
 * Runs the primary: forks `workers` processes of `bin argv` (the same serve command),
 * prints the banner once every one listens, restarts a worker that exits on its own
 * (up to MAX_RESTARTS in RESTART_WINDOW_MS), and on SIGTERM / SIGINT stops them all and
 * waits for them. Returns the exit code: 0 after a clean stop; a worker's code when one
 * fails before it listened (a bad directory, a port in use); 5 when workers keep dying.
 */
export async function runServePrimary(o: { workers: number; bin: string; argv: readonly string[]; out: (s: string) => void; err: (s: string) => void }): Promise<number> {
  cluster.setupPrimary({ exec: o.bin, args: [...o.argv], silent: false });
  const live = new Set<Worker>();
  const ready = new Map<Worker, WorkerReady>();
  let stopping = false;
  let bannerShown = false;
  const restarts: number[] = [];
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  let exitCode = 0;

  const stopAll = (code: number): void => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    for (const w of live) w.process.kill('SIGTERM');
    if (live.size === 0) resolveDone(exitCode);
  };
  const fork = (): void => {
    const w = cluster.fork({ GT_SERVE_WORKER: '1' });
    live.add(w);
    w.on('message', (m: unknown) => {
      const r = m as WorkerReady | null;
      if (r === null || typeof r !== 'object' || r.type !== 'gt-serve-ready') return;
      ready.set(w, r);
      if (bannerShown) o.err(`ghost-tensor serve: worker ${w.process.pid} listening`);
      else if (ready.size === o.workers) {
        bannerShown = true;
        o.out(`serving ${r.url}`);
        o.out(`digest ${r.digest}`);
        o.out(`generation ${r.generation}`);
        o.out('training disabled');
        o.out(`workers ${o.workers} (pids ${[...ready.keys()].map((x) => x.process.pid).join(', ')})`);
      }
    });
    // A worker's IPC channel can fail while it dies (EPIPE, ECONNRESET when the primary
    // stops the others as one fails at start): its 'exit' follows and decides; an 'error'
    // without a listener would crash the primary with exit code 1 instead.
    w.on('error', (e: Error) => o.err(`ghost-tensor serve: worker ${w.process.pid}: ${e.message}`));
    w.on('exit', (code, signal) => {
      live.delete(w);
      const wasReady = ready.delete(w);
      if (stopping) {
        if (code !== 0 && code !== null && exitCode === 0) exitCode = code;
        if (live.size === 0) resolveDone(exitCode);
        return;
      }
      const how = signal ? `signal ${signal}` : `code ${code}`;
      if (!wasReady && !bannerShown) {
        // It never listened: the others would fail the same way (the directory, the port).
        o.err(`ghost-tensor serve: worker ${w.process.pid} exited (${how}) before it listened`);
        stopAll(typeof code === 'number' && code !== 0 ? code : 5);
        return;
      }
      const now = Date.now();
      restarts.push(now);
      while (restarts.length > 0 && restarts[0]! < now - RESTART_WINDOW_MS) restarts.shift();
      if (restarts.length > MAX_RESTARTS) {
        o.err(`ghost-tensor serve: ${restarts.length} workers died within ${RESTART_WINDOW_MS / 1000} s; stopping`);
        stopAll(5);
        return;
      }
      o.err(`ghost-tensor serve: worker ${w.process.pid} exited (${how}); starting another`);
      fork();
    });
  };
  for (let i = 0; i < o.workers; i++) fork();

  const onSignal = (sig: string): void => {
    o.err(`${sig}: stopping ${live.size} workers (each finishes its accepted requests)`);
    stopAll(0);
  };
  const onTerm = (): void => onSignal('SIGTERM');
  const onInt = (): void => onSignal('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    const code = await done;
    if (code === 0) o.out('stopped');
    return code;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
  }
}
