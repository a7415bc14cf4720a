/**
 * Issue 24 asks for benchmark figures at each SIMD level side by side. bench/training.mjs
 * --levels runs each library variant once per level (GHOST_TENSOR_SIMD in the child);
 * these tests check, through the command itself, that each cell of its table really ran
 * at the level it is labelled with: the child's own simdInfo() is the reference, not the
 * label. No timing is asserted. Also: --name, which lets a per-level run keep its own
 * results file, refuses a name that would leave bench/results/.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { simdInfo } from '../dist/index.js';

const ROOT = resolve(import.meta.dirname, '..');
const RESULTS = join(ROOT, 'bench', 'results');
const NAME = `test-bench-levels-${process.pid}`;

afterAll(() => {
  rmSync(join(RESULTS, `${NAME}.json`), { force: true });
  rmSync(join(RESULTS, `${NAME}-step.svg`), { force: true });
});

/** The environment without `key` (a level forced from outside would not change the labels' check, but keep it plain). */
function envWithout(key: string): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env[key];
  return env;
}

interface Run {
  ok: boolean;
  error?: string;
  simd?: { level: string };
  simdRequested?: string;
  medianStepMs?: number;
}

describe('bench/training.mjs --levels', () => {
  it('runs each variant at each requested level, as the child itself reports', () => {
    // The lowest and the highest level this CPU runs (scalar and avx512 / avx2 / neon).
    const supported = simdInfo().supported;
    const levels = [...new Set([supported[0]!, supported.at(-1)!])];
    const r = spawnSync(
      process.execPath,
      [join(ROOT, 'bench', 'training.mjs'), '--quick', '--log2n=10', '--variants=sparse-pk,dense', `--levels=${levels.join(',')}`, `--name=${NAME}`],
      { cwd: ROOT, encoding: 'utf8', timeout: 240_000, env: envWithout('GHOST_TENSOR_SIMD') },
    );
    expect(r.status, r.stderr).toBe(0);
    const res = JSON.parse(readFileSync(join(RESULTS, `${NAME}.json`), 'utf8')) as {
      parameters: { levels: string[]; columns: string[] };
      runs: Record<string, Record<string, Run>>;
      summary: Record<string, unknown>[];
    };
    expect(res.parameters.levels).toEqual(levels);
    const columns = ['sparse-pk', 'dense'].flatMap((v) => levels.map((l) => `${v}@${l}`));
    expect(res.parameters.columns).toEqual(columns);
    for (const c of columns) {
      const run = res.runs[c]!['10']!;
      expect(run.ok, `${c}: ${run.error}`).toBe(true);
      expect(run.simd?.level).toBe(c.split('@')[1]);
      expect(run.simdRequested).toBe(c.split('@')[1]);
      expect(run.medianStepMs).toBeGreaterThan(0);
    }
    // One dense / sparse ratio per level, from that level's two cells.
    for (const l of levels) {
      const row = res.summary[0]!;
      const want = (row[`dense@${l}`] as number) / (row[`sparse-pk@${l}`] as number);
      expect(Math.abs((row[`denseOverPk@${l}`] as number) / want - 1)).toBeLessThan(5e-3); // 3 significant digits
    }
    expect(r.stdout).toContain(`dense/pk ${levels[0]}`);
  }, 300_000);

  it('refuses an unknown variant and a name outside bench/results', () => {
    const bad = (args: string[]) => spawnSync(process.execPath, [join(ROOT, 'bench', 'training.mjs'), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
    const v = bad(['--quick', '--log2n=10', '--variants=sparse-pq', `--name=${NAME}-x`]);
    expect(v.status).not.toBe(0);
    expect(v.stderr).toContain('unknown variant sparse-pq');
    const n = bad(['--quick', '--log2n=10', '--variants=dense', '--name=../escape']);
    expect(n.status).not.toBe(0);
    expect(n.stderr).toContain('--name');
    expect(existsSync(join(ROOT, 'bench', 'escape.json'))).toBe(false);
    expect(existsSync(join(RESULTS, `${NAME}-x.json`))).toBe(false);
  });
});
