/**
 * Sampling text from a language model (docs/lm.md, "Generating with proofs"): token by
 * token, each from the logits of the last position of the context (the prompt and the
 * tokens so far, the last `context` of them), with the sampler of
 * lib/verify/generation.ts and the i-th draw of seededRandom(seed). With `prove`, each
 * token's logits are the canonical ones of a forward proof of the whole model, and the
 * proofs come back with the tokens: verifyGeneration (ghost-tensor/verify) checks them.
 */
import { checkBoolean, checkInteger, checkOptions, toIds } from '../../shared/args.js';
import { InvalidArgumentError, OutOfRangeError, UnsupportedError } from '../../shared/errors.js';
import { seededRandom } from '../../shared/random.js';
import { sampleToken, type GenerationRecord, type SamplingOptions } from '../../verify/generation.js';
import { PositionEmbedding } from '../kinds/position.js';
import type { PatternCache } from '../../verify/proof-format.js';
import type { Model } from '../model.js';
import { END_OF_DOCUMENT } from './corpus.js';
import { Decoder, type DecodeIndex } from './decode.js';

export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate (at most). */
  tokens: number;
  /** Seed of the draws (default 1). */
  seed?: number;
  /** Prove each token's forward pass (default false). */
  prove?: boolean;
  /**
   * With prove: the prover's mirror of the verifier's PatternCache (Model.prove): rows
   * the verifier already holds travel as ids, so after the first token a proof carries
   * only the rows it has not sent before. The verifier passes its own cache to
   * verifyGeneration.
   */
  cache?: PatternCache;
  /** Stop after END_OF_DOCUMENT (byte 0; default true). */
  stopAtEndOfDocument?: boolean;
  /**
   * Decode with a KV cache (lib/model/lm/decode.ts): each token costs one row through the
   * model instead of a forward over the whole context. With index 'exact' the tokens and
   * logits are those of the uncached run, bit for bit. The context does not slide: the
   * prompt and tokens - 1 must fit the model's positions (OutOfRangeError before any
   * work otherwise). Default false.
   */
  kvCache?: boolean;
  /** With kvCache: the selection of each head's keys (Decoder's `index`; default 'exact'). */
  index?: DecodeIndex;
  /** With kvCache and index 'auto' or 'sketch': the cached keys from which the index selects (Decoder's indexThreshold). */
  indexThreshold?: number;
  /** With kvCache and index 'hnsw': the HNSW search breadth. */
  ef?: number;
  /** Called with each token as it is made (and its proof). */
  onToken?: (token: number, proof: Uint8Array | null) => void | Promise<void>;
}

export interface Generation extends GenerationRecord {
  prompt: Uint32Array;
  tokens: Uint32Array;
  temperature: number;
  topP: number;
}

/** The longest input a model takes: its PositionEmbedding's rows (null: no limit of its own). */
export function modelContext(model: Model): number | null {
  for (const l of model.layers) if (l instanceof PositionEmbedding) return l.maxLength;
  return null;
}

export async function generate(model: Model, prompt: Uint32Array | Uint8Array | readonly number[], options: GenerateOptions): Promise<Generation> {
  const o = checkOptions('generate', options, ['tokens', 'seed', 'prove', 'cache', 'stopAtEndOfDocument', 'onToken', 'temperature', 'topP', 'kvCache', 'index', 'indexThreshold', 'ef']);
  const n = checkInteger('tokens', o.tokens, 0, 2 ** 24);
  const seed = checkInteger('seed', o.seed ?? 1, 0, 2 ** 32 - 1);
  const prove = checkBoolean('prove', o.prove, false);
  const stop = checkBoolean('stopAtEndOfDocument', o.stopAtEndOfDocument, true);
  const sampling = { temperature: o.temperature ?? 1, topP: o.topP ?? 1 };
  const p = toIds('prompt', prompt instanceof Uint8Array ? Array.from(prompt) : prompt);
  if (p.length === 0) throw new InvalidArgumentError('the prompt is empty: give at least one token (END_OF_DOCUMENT starts a new document)');
  const kvCache = checkBoolean('kvCache', o.kvCache, false);
  if (!kvCache) for (const key of ['index', 'indexThreshold', 'ef'] as const) if (o[key] !== undefined) throw new InvalidArgumentError(`${key} applies with kvCache: true only`);
  // A proof re-derives each selection exactly (docs/proof-format.md section 5): 'exact', 'sketch'
  // and 'auto' select exactly those keys (the sketch's selection is certified to be the scan's,
  // bit for bit); 'hnsw' selects keys a verifier cannot re-derive.
  if (prove && kvCache && o.index === 'hnsw') throw new UnsupportedError("prove needs the exact selection: index 'hnsw' selects keys a verifier cannot re-derive (use index 'exact', 'sketch' or 'auto', or no kvCache)");
  const context = modelContext(model) ?? p.length + n;
  const rand = seededRandom(seed);
  if (kvCache && !prove) {
    if (p.length + Math.max(n, 1) - 1 > context) throw new OutOfRangeError(`with kvCache the context does not slide: the prompt (${p.length}) and tokens - 1 (${Math.max(n, 1) - 1}) must fit the model's ${context} positions`);
    const dec = new Decoder(model, {
      ...(o.index === undefined ? {} : { index: o.index }),
      ...(o.indexThreshold === undefined ? {} : { indexThreshold: o.indexThreshold }),
      ...(o.ef === undefined ? {} : { ef: o.ef }),
    });
    const tokens: number[] = [];
    if (n > 0) {
      let logits = await dec.append(p);
      for (let i = 0; i < n; i++) {
        const token = sampleToken(logits, sampling, rand());
        tokens.push(token);
        await o.onToken?.(token, null);
        if ((stop && token === END_OF_DOCUMENT) || i === n - 1) break;
        logits = await dec.step(token);
      }
    }
    return { prompt: p, tokens: Uint32Array.from(tokens), proofs: [], seed, context, temperature: sampling.temperature, topP: sampling.topP };
  }
  const seq = Array.from(p);
  const tokens: number[] = [];
  const proofs: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const ids = Uint32Array.from(seq.slice(Math.max(0, seq.length - context)));
    let logits: Float32Array, proof: Uint8Array | null = null;
    if (prove) {
      const r = await model.prove(ids, o.cache === undefined ? {} : { cache: o.cache });
      proof = r.bytes;
      proofs.push(proof);
      logits = r.output;
    } else logits = await model.forward(ids);
    const V = logits.length / ids.length;
    const token = sampleToken(logits.subarray((ids.length - 1) * V, ids.length * V), sampling, rand());
    tokens.push(token);
    seq.push(token);
    await o.onToken?.(token, proof);
    if (stop && token === END_OF_DOCUMENT) break;
  }
  return { prompt: p, tokens: Uint32Array.from(tokens), proofs, seed, context, temperature: sampling.temperature, topP: sampling.topP };
}
