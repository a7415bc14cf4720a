/**
 * Learning-rate schedules: a pure function of the step number t (0 for the first
 * optimizer step, counted by the Trainer), computed in f64. The rate a step uses is
 * lr * factor(schedule, t):
 *
 *   constant:                      1
 *   warmup  { warmupSteps W }:     min(1, (t + 1) / W)
 *   cosine  { warmupSteps W, totalSteps T, floor f }:
 *                                  (t + 1) / W                               when t < W
 *                                  f + (1 - f) (1 + cos(pi p)) / 2,          p = min(1, (t - W) / (T - W)), otherwise
 *   step    { every S, gamma g }:  g ^ floor(t / S)
 *
 * (the cosine runs from 1 at t = W down to the floor f at t >= T, f a fraction of lr).
 * A schedule is plain data so that a training run can record it (issue 21 commits it
 * in the Ghost file).
 */
import { checkInteger, checkNumber, checkOptions, describe } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import { cscheduleFactor } from '../../verify/training.js';

export type Schedule =
  | { kind: 'constant' }
  | { kind: 'warmup'; warmupSteps: number }
  | { kind: 'cosine'; warmupSteps?: number; totalSteps: number; floor?: number }
  | { kind: 'step'; every: number; gamma: number };

const MAX_STEPS = 2 ** 48;

/** The schedule checked (unknown keys, ranges); a copy with the defaults filled in. */
export function checkSchedule(s: unknown): Schedule {
  if (s === null || typeof s !== 'object' || Array.isArray(s)) throw new InvalidArgumentError(`schedule must be an object with a kind, got ${describe(s)}`);
  const kind = (s as { kind?: unknown }).kind;
  switch (kind) {
    case 'constant':
      checkOptions('schedule', s, ['kind']);
      return { kind };
    case 'warmup': {
      const o = checkOptions('schedule', s as { warmupSteps: number }, ['kind', 'warmupSteps']);
      return { kind, warmupSteps: checkInteger('schedule.warmupSteps', o.warmupSteps, 1, MAX_STEPS) };
    }
    case 'cosine': {
      const o = checkOptions('schedule', s as { warmupSteps?: number; totalSteps: number; floor?: number }, ['kind', 'warmupSteps', 'totalSteps', 'floor']);
      const warmupSteps = checkInteger('schedule.warmupSteps', o.warmupSteps ?? 0, 0, MAX_STEPS);
      const totalSteps = checkInteger('schedule.totalSteps', o.totalSteps, warmupSteps + 1, MAX_STEPS);
      return { kind, warmupSteps, totalSteps, floor: checkNumber('schedule.floor', o.floor ?? 0, 0, 1) };
    }
    case 'step': {
      const o = checkOptions('schedule', s as { every: number; gamma: number }, ['kind', 'every', 'gamma']);
      return { kind, every: checkInteger('schedule.every', o.every, 1, MAX_STEPS), gamma: checkNumber('schedule.gamma', o.gamma, 0, 1) };
    }
    default:
      throw new InvalidArgumentError(`schedule.kind must be 'constant', 'warmup', 'cosine' or 'step', got ${describe(kind)}`);
  }
}

/**
 * The factor the learning rate is multiplied by at step t (0-based), per the formulas
 * above: the canonical computation step proofs use (lib/verify/training.ts: its cosine is
 * built from + - * / only), so a Trainer and a step-proved model follow one schedule.
 */
export function scheduleFactor(schedule: Schedule, step: number): number {
  const s = checkSchedule(schedule);
  const t = checkInteger('step', step, 0, MAX_STEPS);
  return cscheduleFactor(s.kind === 'cosine' ? { kind: 'cosine', warmupSteps: s.warmupSteps!, totalSteps: s.totalSteps, floor: s.floor! } : s, t);
}
