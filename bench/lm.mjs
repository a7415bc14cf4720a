#!/usr/bin/env node
/**
 * Language-model experiments (docs/lm.md, "Experiments"; issue 20): byte-level models on
 * the Debian fortunes corpus, each trained for the same number of tokens with
 * trainLanguageModel (the train-lm path: durable steps, checkpoints), then scored on
 * validation bits per byte, timed generating with and without proofs. Each run is a
 * child process, so its peak RSS is its own.
 *
 *   node bench/lm.mjs [--steps N] [--batch B] [--only a,b] [--quick] [--name NAME]
 *
 * Runs (the same width, layers and data; see RUNS):
 *   dense        gated-MLP transformer, every key attended, context 128
 *   memory-2^16  layer 1's MLP replaced by a product-key memory of 2^16 rows (4 heads,
 *                k 32, key width 64: forward FLOPs matched to the MLP's)
 *   memory-2^20  the same with 2^20 rows (sub-key scoring grows with sqrt(N))
 *   attn-256     dense attention at context 256;  topk-256:  top-32 keys per query
 *   attn-1024    dense attention at context 1024; topk-1024: top-32 keys per query
 * At context 256 and 1024 a step holds fewer windows, so the tokens per step match.
 *
 * Writes bench/results/lm.json (or NAME.json) and lm.svg (validation bits per byte against tokens).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { ROOT, fmt, logger, machine, round, table, writeResults, cpuHogs } from './lib/common.mjs';
import { lineChart, legend, svgDocument } from './lib/svg.mjs';

const DIST = join(ROOT, 'dist', 'index.js');
const log = logger('lm');

const BASE = { dim: 128, layers: 2, heads: 4, hidden: 384 };
const MEMORY = { layers: [1], k: 32, heads: 4, keyDim: 64 };
const RUNS = {
  dense: { context: 128, windows: 8 },
  'memory-2^16': { context: 128, windows: 8, memory: { ...MEMORY, subKeys: 256 } },
  'memory-2^20': { context: 128, windows: 8, memory: { ...MEMORY, subKeys: 1024 } },
  'attn-256': { context: 256, windows: 4 },
  'topk-256': { context: 256, windows: 4, attentionK: 32 },
  'attn-1024': { context: 1024, windows: 1 },
  'topk-1024': { context: 1024, windows: 1, attentionK: 32 },
};

async function child(name, steps, batchScale, corpusSource) {
  const lm = await import(DIST);
  const spec = RUNS[name];
  const model = { ...BASE, context: spec.context, ...(spec.attentionK ? { attentionK: spec.attentionK } : {}), ...(spec.memory ? { memory: spec.memory } : {}) };
  const corpus = await lm.loadCorpus({ source: corpusSource });
  const dir = mkdtempSync(join(tmpdir(), 'gt-bench-lm-'));
  try {
    const out = join(dir, 'run');
    const t0 = performance.now();
    const r = await lm.trainLanguageModel(out, corpus, {
      model, steps, batch: spec.windows * batchScale, lr: 5e-3, evalEvery: Math.max(1, Math.floor(steps / 8)), evalBytes: 16384, checkpointEvery: 500, progress: true,
    });
    const trainSeconds = (performance.now() - t0) / 1000;
    const { model: m, ghost } = await lm.Model.load(out, { readOnly: true });
    const prompt = new TextEncoder().encode('The ');
    let t = performance.now();
    const plain = await lm.generate(m, prompt, { tokens: 64, temperature: 0.8, topP: 0.95, stopAtEndOfDocument: false });
    const genTps = plain.tokens.length / ((performance.now() - t) / 1000);
    t = performance.now();
    const proved = await lm.generate(m, prompt, { tokens: 8, temperature: 0.8, topP: 0.95, prove: true, cache: new lm.PatternCache(), stopAtEndOfDocument: false });
    const proveTps = proved.tokens.length / ((performance.now() - t) / 1000);
    t = performance.now();
    await lm.verifyGeneration(ghost, proved, { cache: new lm.PatternCache() });
    const verifyMs = (performance.now() - t) / proved.tokens.length;
    m.close();
    const cost = lm.languageModelCost(model);
    const evals = r.history.filter((x) => x.type === 'eval').map((x) => ({ tokens: x.tokens, valBpb: x.valBpb }));
    return {
      name, model, steps, tokensPerStep: spec.windows * batchScale * spec.context, tokens: steps * spec.windows * batchScale * spec.context,
      parameters: cost.parameters, memoryParameters: cost.memoryParameters, trainingFlopsPerToken: cost.trainingFlops,
      valBpb: r.valBpb, trainBpb: r.trainBpb, trainTokensPerSecond: r.tokensPerSecond, trainSeconds,
      generateTokensPerSecond: genTps, generateProvedTokensPerSecond: proveTps, firstProofBytes: proved.proofs[0].length, proofBytesPerToken: proved.proofs.slice(1).reduce((a, p) => a + p.length, 0) / (proved.proofs.length - 1),
      verifyMsPerToken: verifyMs, peakRssBytes: process.resourceUsage().maxRSS * 1024, evals,
      sample: new TextDecoder().decode(Uint8Array.from([...prompt, ...plain.tokens])).replace(/\0/g, ' | '),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const { values } = parseArgs({
  options: {
    child: { type: 'string' }, name: { type: 'string' }, steps: { type: 'string' }, batch: { type: 'string' }, only: { type: 'string' }, quick: { type: 'boolean' }, corpus: { type: 'string' },
  },
});
const steps = Number(values.steps ?? (values.quick ? 40 : 1500));
const batchScale = Number(values.batch ?? 1);
const corpusSource = values.corpus ?? 'fortunes';

if (values.child) {
  const r = await child(values.child, steps, batchScale, corpusSource);
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0);
}

const names = values.only ? values.only.split(',') : Object.keys(RUNS);
for (const n of names) if (!RUNS[n]) throw new Error(`unknown run ${n}; runs: ${Object.keys(RUNS).join(', ')}`);
const { simdInfo } = await import(DIST);
const { unigramBitsPerByte, loadCorpus } = await import(DIST);
const corpus = await loadCorpus({ source: corpusSource });
const unigram = unigramBitsPerByte(corpus.train, corpus.validation);
const hogs = cpuHogs();
if (hogs.length > 0) log(`other processes using CPU (figures are noisy):\n  ${hogs.join('\n  ')}`);
const results = [];
for (const name of names) {
  log(`${name}: ${steps} steps`);
  const r = spawnSync(process.execPath, [new URL(import.meta.url).pathname, '--child', name, '--steps', String(steps), '--batch', String(batchScale), '--corpus', corpusSource], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 1024 * 1024,
  });
  if (r.status !== 0) throw new Error(`${name} failed (exit ${r.status})`);
  results.push(JSON.parse(r.stdout.trim().split('\n').pop()));
}

const byName = Object.fromEntries(results.map((r) => [r.name, r]));
table(results, [
  'name',
  { key: 'parameters', format: (v) => fmt(v / 1e6, 3) + 'M', header: 'params' },
  { key: 'trainingFlopsPerToken', header: 'MFLOP/tok', format: (v) => fmt(v / 1e6, 3) },
  { key: 'tokens', header: 'tokens', format: (v) => fmt(v / 1e3, 4) + 'k' },
  { key: 'valBpb', header: 'val bpb', format: (v) => v.toFixed(3) },
  { key: 'trainTokensPerSecond', header: 'train tok/s', format: (v) => fmt(v, 4) },
  { key: 'generateTokensPerSecond', header: 'gen tok/s', format: (v) => fmt(v, 3) },
  { key: 'generateProvedTokensPerSecond', header: 'proved tok/s', format: (v) => fmt(v, 3) },
  { key: 'firstProofBytes', header: '1st proof', format: (v) => fmt(v / 1024, 3) + 'k' },
  { key: 'proofBytesPerToken', header: 'then B/tok', format: (v) => fmt(v / 1024, 3) + 'k' },
  { key: 'peakRssBytes', header: 'peak RSS', format: (v) => fmt(v / 2 ** 20, 4) + 'M' },
], { title: `byte-level LMs on ${corpusSource}, ${steps} steps each (unigram baseline ${unigram.toFixed(3)} bits per byte)` });

const goals = [];
const d = byName.dense, m16 = byName['memory-2^16'], m20 = byName['memory-2^20'];
if (d && m16) goals.push({ goal: 'memory (2^16) below dense at equal tokens', dense: d.valBpb, memory: m16.valBpb, flopsRatio: m16.trainingFlopsPerToken / d.trainingFlopsPerToken, met: m16.valBpb < d.valBpb });
if (m16 && m20) goals.push({ goal: 'N 2^16 -> 2^20 costs at most 20% of training tokens/s', ratio: m20.trainTokensPerSecond / m16.trainTokensPerSecond, met: m20.trainTokensPerSecond >= 0.8 * m16.trainTokensPerSecond });
for (const S of [256, 1024]) {
  const a = byName[`attn-${S}`], t = byName[`topk-${S}`];
  if (a && t) goals.push({ goal: `top-32 attention within 1% of dense at context ${S}`, dense: a.valBpb, topk: t.valBpb, relative: t.valBpb / a.valBpb - 1, met: t.valBpb <= 1.01 * a.valBpb });
}
for (const g of goals) console.log(`${g.met ? 'MET    ' : 'NOT MET'}  ${g.goal}: ${Object.entries(g).filter(([k]) => !['goal', 'met'].includes(k)).map(([k, v]) => `${k} ${typeof v === 'number' ? round(v, 4) : v}`).join(', ')}`);
for (const r of results) console.log(`sample ${r.name}: ${JSON.stringify(r.sample.slice(0, 100))}`);

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2'];
const series = results.map((r, i) => ({ name: r.name, color: COLORS[i % COLORS.length], dash: r.name.startsWith('attn'), points: r.evals.map((e) => [e.tokens, e.valBpb]) }));
try {
  const chart = lineChart({ x: 0, y: 0, width: 640, height: 360, title: 'validation bits per byte', xLabel: 'training tokens', yLabel: 'bits per byte', series });
  writeFileSync(join(ROOT, 'bench', 'results', `${values.name ?? 'lm'}.svg`), svgDocument(820, 380, [chart, legend({ x: 660, y: 40, entries: series })]));
} catch (e) {
  log(`no plot: ${e.message}`);
}
const resultName = values.name ?? 'lm';
const file = writeResults(resultName, { machine: machine({ simd: simdInfo() }), date: new Date().toISOString(), corpus: { source: corpusSource, licence: corpus.licence, trainBytes: corpus.train.length, validationBytes: corpus.validation.length }, unigramBpb: unigram, parameters: { steps, batchScale, base: BASE, runs: Object.fromEntries(names.map((n) => [n, RUNS[n]])) }, results, goals, otherProcesses: hogs });
log(`wrote ${file}`);
