// Long-context decoding (issue 24 item 5): one causal attention layer decoding a token
// at a time against a KV cache of L positions, for dense attention (every key), exact
// top-k (the blocked scan over the cache), the key sketch (index 'sketch': the exact top-k
// from a certified int8 low-rank first pass, native/src/core/key_sketch.h; with --sketches=4/M the
// approximate 4-bit sketch, the M best by a 4-bit first pass scored exactly) and, with --ef,
// indexed top-k (an HNSW graph per head over the cached keys, each new key inserted in the
// step), and the recall@k of each selection against the exact one at the same query and cache.
//
// The layer: 4 heads of headDim 64 (D = 256), k = 32, dense 256 x 256 query, key and value
// projections (no output projection), random normal weights / sqrt(256). A step is
// AttentionDecoder.step: the three projections of the new row, appending its key and
// value, the selection, the softmax and the mix, on one thread. The cache is filled with
// prefill() (keys and values of L rows; the index is built over them, timed apart), then
// `steps` rows are decoded (the context grows from L to L + steps; each ef's run continues
// the same cache).
//
// Inputs (--data): 'random': rows uniform in [-1, 1)^256, so keys and queries are nearly
// isotropic Gaussians of intrinsic dimension 64 per head (the hardest case for a proximity
// graph; attention over them is almost flat); 'lowrank': rows = U z + noise, z standard
// normal in 16 dimensions, U a seeded 256 x 16 normal matrix / 4, noise std 0.1 (keys of low
// intrinsic dimension, as measured for trained models' keys: Singhania et al. 2024, "Loki:
// Low-rank keys for efficient sparse attention"); queries are drawn the same way.
//
// Usage: node bench/decode.mjs [--ls=1024,4096,16384,65536] [--steps=48] [--ef=64,128,256]
//        [--data=random,lowrank] [--m=16] [--ef-construction=100] [--rank=R (sketch; default auto)]
//        [--max-scored=0,256] [--sketches=8/0,4/128] [--refit=L] [--out=decode]
// --ef= (empty, the default) leaves HNSW out: its build takes minutes at 64k keys.
// --refit=L: instead, the sketch's amortised refit (key_sketch.h, refit()): a sketch decoder
// and an exact one cache L - 1 keys (the sketch fitted to the first L / 2), then step together
// until the refit that the step reaching L starts has completed; per step time, the worst and
// the median of each. Writes bench/results/<out>.json (default decode, or decode-refit).
import { AttentionDecoder, Projection, SparseSelfAttention, SparseTensor } from '../dist/index.js';
import { gaussian, machine, nowMs, otherProcesses, rng, round, table, tryGc, writeResults } from './lib/common.mjs';
import { decodeInputs, parseSketches, recallOf } from './lib/decode-inputs.mjs';

const arg = (name, def) => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a === undefined ? def : a.slice(name.length + 3);
};
const Ls = arg('ls', '1024,4096,16384,65536').split(',').map(Number);
const steps = Number(arg('steps', 48));
const efs = arg('ef', '').split(',').filter((e) => e !== '').map(Number);
const rank = arg('rank', undefined) === undefined ? undefined : Number(arg('rank', undefined));
// --max-scored=0,256: sketch runs without a limit (0: exact) and with one (approximate past it).
// --sketches=8/0,4/128: the sketch decoders as bits/maxScored (4-bit codes: approximate, maxScored
// >= k required; docs/attention.md "4-bit codes"); default: 8/m for each --max-scored m.
const sketchSpecs = parseSketches(arg('sketches', '') === '' ? arg('max-scored', '0').split(',').map((m) => `8/${m}`).join(',') : arg('sketches', ''));
const maxScoreds = sketchSpecs.map((s) => s.maxScored);
const datas = arg('data', 'random,lowrank').split(',');
const M = Number(arg('m', 16)), efC = Number(arg('ef-construction', 100));
const refitL = arg('refit', '') === '' ? null : Number(arg('refit', ''));
const out = arg('out', refitL === null ? 'decode' : 'decode-refit');
const heads = 4, dk = 64, D = heads * dk, k = 32;
const WARM = 4; // untimed steps before the timed ones of each run (rows of its own, past the timed ones)

function weight(seed) {
  const r = rng(seed), w = new Float32Array(D * D);
  for (let i = 0; i < w.length; i++) w[i] = gaussian(r) / Math.sqrt(D);
  return SparseTensor.fromArray(w, D);
}
const W = { q: weight(1), k: weight(2), v: weight(3) };
const layer = (mode) =>
  new SparseSelfAttention({
    heads, k, causal: true, mode,
    query: new Projection({ weight: W.q }), key: new Projection({ weight: W.k }), value: new Projection({ weight: W.v }),
  });

async function q1(dec, row) {
  return (await dec.layer.query.forward(row)).y;
}

/** Times fn and adds the milliseconds to acc[key]. */
async function timed(acc, key, fn) {
  const t0 = nowMs();
  const r = await fn();
  acc[key] = (acc[key] ?? 0) + nowMs() - t0;
  return r;
}

const startedAt = new Date().toISOString();
const others = otherProcesses();
const results = [];
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
if (refitL !== null) {
  for (const data of datas) {
    const extra = 4096;
    const x = decodeInputs(data, refitL + extra, refitL + 13, D);
    const exact = new AttentionDecoder(layer('sparse'), { maxLength: refitL + extra });
    const sk = new AttentionDecoder(layer('sparse'), { maxLength: refitL + extra, index: 'sketch', ...(rank === undefined ? {} : { rank }) });
    const half = refitL / 2;
    for (const d of [exact, sk]) {
      await d.prefill(x.subarray(0, half * D)); // the sketch fitted to these
      await d.prefill(x.subarray(half * D, (refitL - 1) * D)); // no doubling yet: appended
    }
    const te = [], ts = [];
    let at = refitL - 1;
    for (; at < refitL + extra; at++) {
      const row = x.subarray(at * D, (at + 1) * D);
      let t0 = nowMs();
      await exact.step(row);
      te.push(nowMs() - t0);
      t0 = nowMs();
      await sk.step(row);
      ts.push(nowMs() - t0);
      if (sk.stats().sketchRefits === 1) break;
    }
    const r = {
      data, L: refitL, refitSteps: ts.length, refitDone: sk.stats().sketchRefits === 1,
      exactWorstMs: round(Math.max(...te)), exactMedianMs: round(median(te)),
      sketchWorstMs: round(Math.max(...ts)), sketchMedianMs: round(median(ts)),
      sketchMedianSpeedup: round(median(te) / median(ts)),
    };
    results.push(r);
    console.log(JSON.stringify(r));
  }
  table(results, ['data', 'L', { key: 'refitSteps', header: 'steps to refit' }, { key: 'exactMedianMs', header: 'exact median ms' }, { key: 'exactWorstMs', header: 'exact worst ms' }, { key: 'sketchMedianMs', header: 'sketch median ms' }, { key: 'sketchWorstMs', header: 'sketch worst ms' }, { key: 'sketchMedianSpeedup', header: 'median exact/sketch' }], { title: `Decode steps across the sketch's amortised refit at L keys (${heads} heads x ${dk}, k = ${k})` });
  const file = writeResults(out, {
    name: out, date: startedAt, command: `node ${process.argv.slice(1).join(' ')}`.replace(process.cwd() + '/', ''),
    machine: machine(), otherProcesses: others,
    parameters: { heads, headDim: dk, k, refit: 'sketch fitted to L/2 keys; L-1 cached; the step reaching L starts the refit; stepped until it completed', interleaved: 'exact and sketch decoders step through the same rows in turn' },
    rows: results,
  });
  console.log(`wrote ${file}`);
  process.exit(0);
}
for (const data of datas) {
  for (const L of Ls) {
    const runs = efs.length === 0 ? [null] : efs;
    const rowsNeeded = L + (steps + WARM) * runs.length;
    const x = decodeInputs(data, rowsNeeded, L + (data === 'random' ? 0 : 7), D);
    const prefix = x.subarray(0, L * D);
    tryGc();
    const dense = new AttentionDecoder(layer('dense'), { maxLength: rowsNeeded });
    const exact = new AttentionDecoder(layer('sparse'), { maxLength: rowsNeeded });
    const sketches = sketchSpecs.map(({ bits, maxScored: m }) => new AttentionDecoder(layer('sparse'), { maxLength: rowsNeeded, index: 'sketch', ...(rank === undefined ? {} : { rank }), ...(m === 0 ? {} : { maxScored: m }), ...(bits === 8 ? {} : { sketchBits: bits }) }));
    const hnsw = efs.length === 0 ? null : new AttentionDecoder(layer('sparse'), { maxLength: rowsNeeded, index: 'hnsw', ef: efs[0], M, efConstruction: efC });
    await dense.prefill(prefix);
    await exact.prefill(prefix);
    let t0 = nowMs();
    await sketches[0].prefill(prefix);
    const sketchBuildS = round((nowMs() - t0) / 1000);
    for (const sk of sketches.slice(1)) await sk.prefill(prefix);
    let buildS = null;
    if (hnsw !== null) {
      t0 = nowMs();
      await hnsw.prefill(prefix);
      buildS = round((nowMs() - t0) / 1000);
    }
    // The decoders step through the same rows, interleaved step by step, so a swing in the
    // machine's load falls on all of them alike.
    for (const [j, ef] of runs.entries()) {
      if (hnsw !== null) hnsw.ef = ef;
      const ms = {}, worst = {};
      let rsum = 0;
      const ssum = maxScoreds.map(() => 0), cand = maxScoreds.map(() => 0), capped = maxScoreds.map(() => 0);
      for (let i = 0; i < steps + WARM; i++) {
        const at = L + (steps + WARM) * j + i, row = x.subarray(at * D, (at + 1) * D);
        const acc = i < WARM ? {} : ms;
        await timed(acc, 'dense', () => dense.step(row));
        const e0 = acc.exact ?? 0;
        await timed(acc, 'exact', () => exact.step(row));
        if (i >= WARM) worst.exact = Math.max(worst.exact ?? 0, acc.exact - e0);
        for (const [m, sk] of sketches.entries()) {
          const s0 = acc[`sketch${m}`] ?? 0;
          await timed(acc, `sketch${m}`, () => sk.step(row));
          if (i >= WARM) worst[m] = Math.max(worst[m] ?? 0, acc[`sketch${m}`] - s0);
          if (i >= WARM) {
            cand[m] += sk.stats().sketchCandidates;
            capped[m] += sk.stats().sketchCapped;
          }
        }
        if (hnsw !== null) await timed(acc, 'hnsw', () => hnsw.step(row));
        // The selection alone, at the same query and cache: the exact scan, the sketch, the index search.
        const q = await q1(exact, row);
        const e = await timed(acc, 'exactSelect', () => exact.exactSelection(q));
        for (const [m, sk] of sketches.entries()) {
          const s = await timed(acc, `sketchSelect${m}`, () => sk.indexSelection(q));
          if (i >= WARM) ssum[m] += recallOf(e, s, heads, k);
        }
        if (hnsw !== null) {
          const g = await timed(acc, 'hnswSelect', () => hnsw.indexSelection(q));
          if (i >= WARM) rsum += recallOf(e, g, heads, k);
        }
      }
      const tps = (key) => round((steps * 1000) / ms[key]);
      for (const [m, sk] of sketches.entries()) {
        const r = {
          data, L, denseTokS: tps('dense'), exactTokS: tps('exact'), bits: sketchSpecs[m].bits, maxScored: maxScoreds[m],
          sketchTokS: tps(`sketch${m}`), sketchSpeedup: round(ms.exact / ms[`sketch${m}`]), sketchRecall: round(ssum[m] / steps),
          sketchRank: sk.stats().sketchRanks.join('/'), sketchCandidates: round(cand[m] / steps / heads), sketchCappedHeads: round(capped[m] / steps / heads), sketchBuildS,
          exactSelectMs: round(ms.exactSelect / steps), sketchSelectMs: round(ms[`sketchSelect${m}`] / steps),
          exactWorstStepMs: round(worst.exact), sketchWorstStepMs: round(worst[m]),
        };
        if (hnsw !== null) Object.assign(r, { ef, hnswTokS: tps('hnsw'), speedup: round(ms.exact / ms.hnsw), recall: round(rsum / steps), hnswSelectMs: round(ms.hnswSelect / steps), selectSpeedup: round(ms.exactSelect / ms.hnswSelect), buildS });
        results.push(r);
        console.log(JSON.stringify(r));
      }
    }
  }
}

const cols = ['data', 'L', { key: 'denseTokS', header: 'dense tok/s' }, { key: 'exactTokS', header: 'exact top-k tok/s' }, { key: 'bits', header: 'sketch bits' }, { key: 'maxScored', header: 'maxScored' }, { key: 'sketchTokS', header: 'sketch tok/s' }, { key: 'sketchSpeedup', header: 'sketch/exact' }, { key: 'sketchRecall', header: `sketch recall@${k}` }, { key: 'sketchRank', header: 'rank/head' }, { key: 'sketchCandidates', header: 'scored/head' }, { key: 'sketchCappedHeads', header: 'capped share' }, { key: 'exactSelectMs', header: 'exact select ms' }, { key: 'sketchSelectMs', header: 'sketch select ms' }, { key: 'sketchBuildS', header: 'sketch fit s' }];
if (efs.length > 0) cols.push('ef', { key: 'hnswTokS', header: 'hnsw tok/s' }, { key: 'speedup', header: 'hnsw/exact' }, { key: 'recall', header: `hnsw recall@${k}` }, { key: 'hnswSelectMs', header: 'hnsw select ms' }, { key: 'buildS', header: 'hnsw build s' });
table(results, cols, { title: `Decode tokens/s, one causal attention layer (${heads} heads x ${dk}, k = ${k}), KV cache of L positions` });
const file = writeResults(out, {
  name: out, date: startedAt, command: `node ${process.argv.slice(1).join(' ')}`.replace(process.cwd() + '/', ''),
  machine: machine(), otherProcesses: others,
  parameters: {
    heads, headDim: dk, k, steps, projections: 'dense q, k, v (256 x 256), no output projection',
    sketch: { rank: rank ?? 'auto (99% of the keys\' energy per head; 4-bit: rounded up to a multiple of 8)', bits: sketchSpecs.map((s) => s.bits), maxScored: maxScoreds, cappedShare: 'share of heads and steps whose certified candidates exceeded maxScored (selected approximately)', fitted: 'to the L prefilled keys (refitted when the cache doubles)', scoredPerHead: 'keys scored exactly per head and step (the rest ruled out by the bound)' },
    ...(efs.length === 0 ? {} : { hnsw: { M, efConstruction: efC, efs, metric: 'ip', insertion: 'each new key linked in its step' } }),
    interleaved: 'the decoders step through the same rows in turn; select: exactSelection / indexSelection of the step query (4 heads), timed apart',
  },
  rows: results,
});
console.log(`wrote ${file}`);
