/**
 * Metrics of the prover service in the Prometheus text exposition format (version
 * 0.0.4), written by hand: counters (`_total`), gauges and histograms (`_bucket{le=..}`
 * cumulative, `_sum`, `_count`), each family with its HELP and TYPE lines, label
 * values escaped (backslash, double quote, line feed). docs/serving.md, "Metrics".
 *
 * Label sets are bounded by the caller (routes are a fixed list, statuses are HTTP
 * codes): a series is created on first use and never removed.
 */

type Labels = Readonly<Record<string, string>>;

/** Escapes a label value: `\` -> `\\`, `"` -> `\"`, line feed -> `\n`. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Escapes HELP text: `\` -> `\\`, line feed -> `\n`. */
function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** A sample value as Prometheus writes it (+Inf, -Inf, NaN; integers without a fraction). */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function labelText(names: readonly string[], values: readonly string[], extra?: [string, string]): string {
  const parts = names.map((n, i) => `${n}="${escapeLabel(values[i]!)}"`);
  if (extra) parts.push(`${extra[0]}="${escapeLabel(extra[1])}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

abstract class Family {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`bad metric name ${name}`);
  }
  protected key(labels: Labels): string[] {
    return this.labelNames.map((n) => labels[n] ?? '');
  }
  abstract readonly type: 'counter' | 'gauge' | 'histogram';
  abstract samples(): string[];
  render(): string {
    return [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`, ...this.samples()].join('\n');
  }
}

export class Counter extends Family {
  readonly type = 'counter' as const;
  readonly #series = new Map<string, { values: string[]; v: number }>();
  inc(labels: Labels = {}, by = 1): void {
    if (!(by >= 0)) return;
    const values = this.key(labels);
    const k = JSON.stringify(values);
    const s = this.#series.get(k);
    if (s) s.v += by;
    else this.#series.set(k, { values, v: by });
  }
  samples(): string[] {
    return [...this.#series.values()].map((s) => `${this.name}${labelText(this.labelNames, s.values)} ${formatValue(s.v)}`);
  }
}

/** A gauge read when scraped. */
export class Gauge extends Family {
  readonly type = 'gauge' as const;
  constructor(
    name: string,
    help: string,
    readonly read: () => number,
  ) {
    super(name, help, []);
  }
  samples(): string[] {
    return [`${this.name} ${formatValue(this.read())}`];
  }
}

/** A gauge of constant labels and value 1 (build information). */
export class InfoGauge extends Family {
  readonly type = 'gauge' as const;
  constructor(
    name: string,
    help: string,
    readonly labels: Labels,
  ) {
    super(name, help, Object.keys(labels));
  }
  samples(): string[] {
    return [`${this.name}${labelText(this.labelNames, this.key(this.labels))} 1`];
  }
}

export class Histogram extends Family {
  readonly type = 'histogram' as const;
  readonly #series = new Map<string, { values: string[]; counts: number[]; sum: number; count: number }>();
  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    /** Upper bounds, increasing; +Inf is implied. */
    readonly buckets: readonly number[],
  ) {
    super(name, help, labelNames);
    for (let i = 1; i < buckets.length; i++) if (!(buckets[i]! > buckets[i - 1]!)) throw new Error(`${name}: buckets must increase`);
  }
  observe(labels: Labels, v: number): void {
    if (!Number.isFinite(v)) return;
    const values = this.key(labels);
    const k = JSON.stringify(values);
    let s = this.#series.get(k);
    if (!s) {
      s = { values, counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
      this.#series.set(k, s);
    }
    // Counted in the first bucket that holds it; render() accumulates.
    const i = this.buckets.findIndex((b) => v <= b);
    if (i >= 0) s.counts[i]!++;
    s.sum += v;
    s.count++;
  }
  samples(): string[] {
    const out: string[] = [];
    for (const s of this.#series.values()) {
      let acc = 0;
      for (const [i, b] of this.buckets.entries()) {
        acc += s.counts[i]!;
        out.push(`${this.name}_bucket${labelText(this.labelNames, s.values, ['le', formatValue(b)])} ${acc}`);
      }
      out.push(`${this.name}_bucket${labelText(this.labelNames, s.values, ['le', '+Inf'])} ${s.count}`);
      out.push(`${this.name}_sum${labelText(this.labelNames, s.values)} ${formatValue(s.sum)}`);
      out.push(`${this.name}_count${labelText(this.labelNames, s.values)} ${s.count}`);
    }
    return out;
  }
}

export class Registry {
  readonly #families: Family[] = [];
  add<F extends Family>(f: F): F {
    if (this.#families.some((x) => x.name === f.name)) throw new Error(`metric ${f.name} registered twice`);
    this.#families.push(f);
    return f;
  }
  /** The exposition: one block per family, a line feed at the end. */
  render(): string {
    return this.#families.map((f) => f.render()).join('\n') + '\n';
  }
}

/** Seconds: 1 ms to 30 s. */
export const LATENCY_BUCKETS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
