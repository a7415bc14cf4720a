/**
 * A progress bar on stderr: redrawn in place on a terminal (at most ten times a
 * second), plain lines at each quarter otherwise (logs, CI, pipes).
 */
export class Progress {
  readonly #label: string;
  readonly #total: number;
  readonly #out: NodeJS.WriteStream;
  readonly #tty: boolean;
  readonly #quiet: boolean;
  #lastDraw = 0;
  #lastQuarter = 0;
  readonly #t0 = performance.now();

  constructor(label: string, total: number, options: { stream?: NodeJS.WriteStream; quiet?: boolean } = {}) {
    this.#label = label;
    this.#total = Math.max(1, total);
    this.#out = options.stream ?? process.stderr;
    this.#tty = this.#out.isTTY === true;
    this.#quiet = options.quiet === true;
  }

  /** `done` of total finished; `info` is appended (e.g. the running loss). */
  update(done: number, info = ''): void {
    if (this.#quiet) return;
    const frac = Math.min(1, done / this.#total);
    if (this.#tty) {
      const now = performance.now();
      if (now - this.#lastDraw < 100 && done < this.#total) return;
      this.#lastDraw = now;
      const width = 24;
      const fill = Math.round(frac * width);
      const bar = '#'.repeat(fill) + '-'.repeat(width - fill);
      this.#out.write(`\r\x1b[2K${this.#label} [${bar}] ${String(Math.round(frac * 100)).padStart(3)}% ${done}/${this.#total} ${info}`);
    } else {
      const q = Math.floor(frac * 4);
      if (q > this.#lastQuarter) {
        this.#lastQuarter = q;
        this.#out.write(`${this.#label}: ${q * 25}% (${done}/${this.#total}) ${info}\n`);
      }
    }
  }

  /** Ends the bar with a summary line. */
  done(summary: string): void {
    if (this.#quiet) return;
    const s = ((performance.now() - this.#t0) / 1000).toFixed(1);
    this.#out.write(`${this.#tty ? '\r\x1b[2K' : ''}${this.#label}: ${summary} (${s} s)\n`);
  }
}
