/**
 * `ghost-tensor train-lm` and `ghost-tensor generate` (docs/lm.md, docs/cli.md): the
 * language-model commands. The command table in main.ts parses the options; these run.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { toHex } from '../shared/bytes.js';
import { END_OF_DOCUMENT, loadCorpus, unigramBitsPerByte } from '../model/lm/corpus.js';
import { generate } from '../model/lm/generate.js';
import { languageModelCost, type LanguageModelConfig } from '../model/lm/model.js';
import { LM_CONFIG, LM_LOG, LM_PLOT, readLanguageModelRun, trainLanguageModel, type LanguageModelTrainingOptions } from '../model/lm/train.js';
import { Model } from '../model/model.js';
import { verifyGeneration } from '../verify/generation.js';
import { PatternCache } from '../verify/proof-format.js';

/** The --quick preset: a minute on two cores, enough to see the model learn. */
export const QUICK = {
  model: { context: 64, dim: 64, layers: 2, heads: 4, hidden: 192 } satisfies LanguageModelConfig,
  steps: 600,
  batch: 8,
  lr: 1e-2,
  evalBytes: 4096,
} as const;

/** The default: a few minutes to tens of minutes (docs/lm.md). */
export const DEFAULT = {
  model: { context: 128, dim: 128, layers: 2, heads: 4, hidden: 384 } satisfies LanguageModelConfig,
  steps: 2000,
  batch: 8,
  lr: 3e-3,
  evalBytes: 16384,
} as const;

export interface TrainLmArgs {
  out: string;
  corpus: string;
  model: LanguageModelConfig;
  training: Omit<LanguageModelTrainingOptions, 'model' | 'signal' | 'onRecord'>;
  quiet: boolean;
}

export async function runTrainLm(a: TrainLmArgs, print: (s: string) => void): Promise<number> {
  const resuming = existsSync(join(a.out, LM_CONFIG));
  if (!resuming && existsSync(a.out)) throw Object.assign(new Error(`${a.out} exists and is not a train-lm run (no ${LM_CONFIG}); choose a new directory`), { code: 'EEXIST' });
  const cfg = resuming ? await readLanguageModelRun(a.out) : null;
  const corpus = await loadCorpus({ source: cfg?.corpus.source ?? a.corpus });
  const unigram = unigramBitsPerByte(corpus.train, corpus.validation);
  if (cfg !== null) {
    print(`resuming ${a.out} (${cfg.training.steps} steps of ${cfg.training.batch} x ${cfg.model.context} bytes)`);
    a.training.steps = cfg.training.steps;
  } else {
    const cost = languageModelCost(a.model);
    print(`corpus   ${corpus.source}: ${corpus.train.length} training bytes (${corpus.documents.train} documents), ${corpus.validation.length} validation bytes (${corpus.documents.validation})`);
    print(`         ${corpus.licence}`);
    print(`model    ${cost.parameters} parameters, ${(cost.trainingFlops / 1e6).toFixed(2)} MFLOP per training token`);
  }
  print(`baseline unigram ${unigram.toFixed(3)} bits per byte on validation`);
  const ac = new AbortController();
  const onInt = (): void => ac.abort();
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onInt);
  try {
    const r = await trainLanguageModel(a.out, corpus, { ...a.training, model: a.model, progress: !a.quiet, signal: ac.signal });
    print(`model    ${a.out}`);
    print(`steps    ${r.steps}${r.stopped ? ' (stopped: run the same command to resume)' : ''}`);
    print(`valid    ${r.valBpb.toFixed(3)} bits per byte (unigram ${unigram.toFixed(3)})`);
    print(`speed    ${Math.round(r.tokensPerSecond)} training tokens/s`);
    print(`log      ${join(a.out, LM_LOG)}, plot ${join(a.out, LM_PLOT)}`);
    return 0;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onInt);
  }
}

export interface GenerateArgs {
  dir: string;
  prompt: string;
  tokens: number;
  temperature: number;
  topP: number;
  seed: number;
  prove: boolean;
  /** Pin: the model's Ghost digest must be this. */
  digest?: Uint8Array;
}

export async function runGenerate(a: GenerateArgs, print: (s: string) => void, write: (s: string) => void): Promise<number> {
  const { model, ghost } = await Model.load(a.dir, { readOnly: true, ...(a.digest === undefined ? {} : { expectDigest: a.digest }) });
  try {
    const prompt = a.prompt.length === 0 ? Uint8Array.of(END_OF_DOCUMENT) : new TextEncoder().encode(a.prompt);
    if (a.prompt.length > 0) write(a.prompt);
    const t0 = performance.now();
    let proofBytes = 0;
    // Bytes of a multi-byte UTF-8 character are held until it is complete.
    const decoder = new TextDecoder();
    // The client's pattern cache and the prover's mirror of it: rows sent once travel as ids after.
    const clientCache = new PatternCache(), proverCache = new PatternCache();
    const g = await generate(model, prompt, {
      tokens: a.tokens, temperature: a.temperature, topP: a.topP, seed: a.seed, prove: a.prove, cache: proverCache,
      onToken: (t, proof) => {
        if (proof) proofBytes += proof.length;
        write(t === END_OF_DOCUMENT ? '\n' : decoder.decode(Uint8Array.of(t), { stream: true }));
      },
    });
    write('\n');
    const s = (performance.now() - t0) / 1000;
    print(`generated ${g.tokens.length} tokens in ${s.toFixed(2)} s (${(g.tokens.length / s).toFixed(1)} tokens/s${a.prove ? ', proving' : ''})`);
    if (a.prove) {
      // Checked as a client would: the addon-free verifier against the pinned Ghost file.
      const t1 = performance.now();
      await verifyGeneration(ghost, g, { cache: clientCache });
      print(`verified  ${g.proofs.length} forward proofs (${g.proofs[0]?.length ?? 0} bytes for the first, ${Math.round((proofBytes - (g.proofs[0]?.length ?? 0)) / Math.max(1, g.proofs.length - 1))} on average after: rows the client holds travel as ids) and every sampled token against Ghost digest ${toHex(ghost.digest)} in ${((performance.now() - t1) / 1000).toFixed(2)} s`);
    }
    return 0;
  } finally {
    model.close();
  }
}
