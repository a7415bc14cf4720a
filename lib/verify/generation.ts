/**
 * Sampling a token from a language model's logits, and checking a generation (docs/lm.md,
 * "Generating with proofs"). The sampler is a pure function of the logits, the
 * temperature, top-p and one uniform draw u, computed in f64:
 *
 *   temperature 0: the largest logit (the lowest id among equals);
 *   otherwise p_i = exp((l_i - max) / T) / sum; ids ordered by p descending (ids
 *   ascending among equals); the shortest prefix whose sum reaches topP * total is
 *   kept; the token is the first id of that prefix whose running sum exceeds u times
 *   the prefix's sum (the last of the prefix if rounding leaves none).
 *
 * Token i of a generation uses the i-th draw of seededRandom(seed) (lib/shared/random.ts).
 * verifyGeneration checks, for every generated token, a forward proof of the whole
 * model on the context (the prompt and the tokens before it, the last `context` of
 * them) against the pinned Ghost file, and that the sampler picks that token from the
 * proved logits of the last position: the text follows from the committed model, the
 * prompt, the sampling settings and the seed, and from nothing else.
 */
import { checkInteger, checkNumber, checkOptions, toIds } from '../shared/args.js';
import { InvalidArgumentError, ProofError } from '../shared/errors.js';
import { seededRandom } from '../shared/random.js';
import { verifyForward, type PinnedGhost, type VerifyOptions } from './proof-verify.js';

export interface SamplingOptions {
  /** Softmax temperature (default 1; 0: the most likely token). */
  temperature?: number;
  /** Nucleus: keep the most likely tokens up to this much probability (default 1: all). */
  topP?: number;
}

function checkSampling(o: SamplingOptions): { temperature: number; topP: number } {
  return { temperature: checkNumber('temperature', o.temperature ?? 1, 0, 1e6), topP: checkNumber('topP', o.topP ?? 1, 1e-9, 1) };
}

/** The token the sampler picks from `logits` with the uniform draw `u` in [0, 1) (see the module comment). */
export function sampleToken(logits: Float32Array, options: SamplingOptions, u: number): number {
  const { temperature, topP } = checkSampling(options);
  const V = logits.length;
  if (V === 0) throw new InvalidArgumentError('no logits');
  let best = 0;
  for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
  if (!Number.isFinite(logits[best]!)) throw new InvalidArgumentError('the logits are not finite');
  if (temperature === 0) return best;
  const max = logits[best]!;
  const p = new Float64Array(V);
  let total = 0;
  for (let i = 0; i < V; i++) {
    const l = logits[i]!;
    if (Number.isNaN(l)) throw new InvalidArgumentError(`logits[${i}] is NaN`);
    p[i] = Math.exp((l - max) / temperature);
    total += p[i]!;
  }
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => p[b]! - p[a]! || a - b);
  let kept = 0, mass = 0;
  while (kept < V && (kept === 0 || mass < topP * total)) mass += p[order[kept++]!]!;
  const target = u * mass;
  let run = 0;
  for (let r = 0; r < kept; r++) {
    run += p[order[r]!]!;
    if (run > target) return order[r]!;
  }
  return order[kept - 1]!;
}

export interface GenerationRecord extends SamplingOptions {
  /** The prompt's token ids. */
  prompt: Uint32Array | readonly number[];
  /** The generated ids, in order. */
  tokens: Uint32Array | readonly number[];
  /** One forward proof per generated token. */
  proofs: readonly Uint8Array[];
  /** Seed of the draws. */
  seed: number;
  /** The longest input the model takes (its learned positions): the context is the last this many ids. */
  context: number;
}

/**
 * Checks a generation against the pinned Ghost file (see the module comment): throws
 * ProofError (reason INPUT_MISMATCH when a proof is not of the expected context or not
 * of the whole model, OUTPUT_MISMATCH when the sampler does not pick the token; a
 * proof's own failures as verifyForward gives them). Returns the verified logits of
 * each step's last position.
 */
export async function verifyGeneration(ghost: PinnedGhost, g: GenerationRecord, options: VerifyOptions = {}): Promise<Float32Array[]> {
  checkOptions('generation', g, ['prompt', 'tokens', 'proofs', 'seed', 'context', 'temperature', 'topP']);
  const prompt = toIds('prompt', g.prompt), tokens = toIds('tokens', g.tokens);
  const sampling = checkSampling(g);
  const context = checkInteger('context', g.context, 1, 2 ** 24);
  if (!Array.isArray(g.proofs) || g.proofs.length !== tokens.length) throw new InvalidArgumentError(`one proof per token: ${tokens.length} tokens, ${Array.isArray(g.proofs) ? g.proofs.length : 'no'} proofs`);
  const layers = ghost.manifest.layers.length;
  const rand = seededRandom(checkInteger('seed', g.seed, 0, 2 ** 32 - 1));
  const seq = [...prompt];
  const out: Float32Array[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const want = seq.slice(Math.max(0, seq.length - context));
    if (want.length === 0) throw new InvalidArgumentError('an empty prompt: the first token has no context');
    const v = await verifyForward(ghost, g.proofs[i]!, options);
    if (v.firstLayer !== 0 || v.layers !== layers) throw new ProofError('INPUT_MISMATCH', `token ${i}: the proof covers layers ${v.firstLayer}..${v.firstLayer + v.layers - 1}, not the whole model`);
    if (v.input.kind !== 'ids' || v.input.ids.length !== want.length || v.input.ids.some((id, j) => id !== want[j])) {
      throw new ProofError('INPUT_MISMATCH', `token ${i}: the proof is not of the context (the prompt and the tokens before it)`);
    }
    const logits = v.output.slice((v.rows - 1) * v.cols, v.rows * v.cols);
    const picked = sampleToken(logits, sampling, rand());
    if (picked !== tokens[i]) throw new ProofError('OUTPUT_MISMATCH', `token ${i}: the sampler picks ${picked} from the proved logits, the generation says ${tokens[i]}`);
    out.push(logits);
    seq.push(tokens[i]!);
  }
  return out;
}
