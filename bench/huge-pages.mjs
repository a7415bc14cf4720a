#!/usr/bin/env node
/**
 * What transparent huge pages give the exact one-query scan: two tensors over the same
 * rows in one process, one made with GHOST_TENSOR_HUGE_PAGES=off (its rows on 4 KiB
 * pages) and one without (rows of 2 MiB and more advised MADV_HUGEPAGE,
 * native/src/core/huge_pages.h), searched in alternating order, one query per call on
 * one thread (`threads: 1`). The AnonHugePages of the process (/proc/self/smaps_rollup)
 * after each tensor is made shows whether the kernel gave huge pages at all.
 *
 *   node bench/huge-pages.mjs            d = 784 (60k rows, Fashion-MNIST's shape) and d = 64 (512k rows), l2 and ip
 *   --rounds=R   alternations (default 31);  --name=NAME  bench/results/NAME.json (default huge-pages)
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { ROOT, fmt, logger, machine, nowMs, round, table, writeResults } from './lib/common.mjs';

const { SparseTensor, simdInfo } = await import(join(ROOT, 'dist/index.js'));
const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const ROUNDS = Number(arg('rounds', '31'));
const NAME = arg('name', 'huge-pages');
if (!Number.isInteger(ROUNDS) || ROUNDS < 3) throw new Error('--rounds must be an integer >= 3');
if (!/^[a-z0-9][a-z0-9._-]*$/i.test(NAME)) throw new Error('--name must be a plain file name');
const log = logger('huge-pages');
const THP = existsSync('/sys/kernel/mm/transparent_hugepage/enabled')
  ? readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').trim()
  : 'not linux / no THP';
const anonHugeKiB = () => {
  try {
    return Number(readFileSync('/proc/self/smaps_rollup', 'utf8').match(/AnonHugePages:\s+(\d+)/)?.[1] ?? NaN);
  } catch {
    return NaN;
  }
};
const median = (v) => v.slice().sort((a, b) => a - b)[v.length >> 1];

const shapes = [
  { d: 784, n: 60_000 },
  { d: 64, n: 524_288 },
];
const rows = [];
for (const { d, n } of shapes)
  for (const metric of ['l2', 'ip']) {
    const data = new Float32Array(n * d);
    let s = 1;
    for (let i = 0; i < data.length; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      data[i] = s / 2 ** 31 - 1;
    }
    const h0 = anonHugeKiB();
    process.env.GHOST_TENSOR_HUGE_PAGES = 'off';
    const small = SparseTensor.fromArray(data, d, { metric });
    const h1 = anonHugeKiB();
    delete process.env.GHOST_TENSOR_HUGE_PAGES;
    const huge = SparseTensor.fromArray(data, d, { metric });
    const h2 = anonHugeKiB();
    const q = data.slice(7 * d, 8 * d).map((x) => x * 0.5);
    const a = small.search(q, 10, { threads: 1 }), b = huge.search(q, 10, { threads: 1 });
    if (String(a.ids) !== String(b.ids) || String(a.scores) !== String(b.scores)) throw new Error('the two tensors disagree');
    const t = { small: [], huge: [] };
    for (let r = 0; r < ROUNDS; r++)
      for (const [k, x] of r % 2 ? [['huge', huge], ['small', small]] : [['small', small], ['huge', huge]]) {
        const t0 = nowMs();
        x.search(q, 10, { threads: 1 });
        t[k].push(nowMs() - t0);
      }
    const ms4k = median(t.small), msHuge = median(t.huge), bytes = n * d * 4;
    rows.push({
      d, n, metric,
      ms4k: round(ms4k), msHuge: round(msHuge),
      gbps4k: round(bytes / ms4k / 1e6), gbpsHuge: round(bytes / msHuge / 1e6),
      ratio: round(ms4k / msHuge),
      anonHugeKiBOff: h1 - h0, anonHugeKiBOn: h2 - h1,
    });
    log(`d=${d} ${metric}: 4 KiB ${fmt(ms4k)} ms, huge ${fmt(msHuge)} ms`);
  }

table(rows, [
  'd', 'n', 'metric',
  { key: 'ms4k', header: '4 KiB pages ms' }, { key: 'msHuge', header: 'huge pages ms' },
  { key: 'gbps4k', header: '4 KiB GB/s' }, { key: 'gbpsHuge', header: 'huge GB/s' },
  { key: 'ratio', header: '4 KiB / huge' },
  { key: 'anonHugeKiBOff', header: 'AnonHuge KiB (off)' }, { key: 'anonHugeKiBOn', header: 'AnonHuge KiB (on)' },
], {
  title: `Exact top-10, one query per call, one thread: rows on 4 KiB pages against huge pages (THP: ${THP})`,
  notes: [`medians of ${ROUNDS} alternating calls; the same rows, ids and score bits in both tensors`],
});
const file = writeResults(NAME, {
  name: NAME,
  date: new Date().toISOString(),
  command: ['node bench/huge-pages.mjs', ...process.argv.slice(2)].join(' '),
  machine: machine({ simd: simdInfo() }),
  parameters: { rounds: ROUNDS, shapes, k: 10, threads: 1, thp: THP },
  rows,
});
log(`wrote ${file}`);
