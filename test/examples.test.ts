/**
 * The examples ship in the package (package.json "files"), so they must run from an
 * installed copy: they import the package by its name ('ghost-tensor', which resolves
 * in the repository through the package's self-reference) and their own examples/lib
 * files, never ../dist, ../bench or anything else a user of the package does not have.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const EXAMPLES = join(ROOT, 'examples');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string; files: string[] };

function scripts(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? scripts(join(dir, e.name)) : /\.m?js$/.test(e.name) ? [join(dir, e.name)] : [],
  );
}

/** Every module specifier a script imports (static and dynamic, with a string literal). */
export function importsOf(src: string): string[] {
  const out: string[] = [];
  for (const m of src.matchAll(/(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of src.matchAll(/(?:^|\n)\s*import\s*['"]([^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of src.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  return out;
}

/** Runs `node file args` from a directory outside the repository. */
function run(file: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(EXAMPLES, file), ...args], { cwd: tmpdir(), encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('examples travel with the package', () => {
  it('the package ships examples/', () => {
    expect(pkg.files).toContain('examples/');
  });

  it('the import scanner sees the imports this test is about', () => {
    expect(importsOf("import { a } from '../dist/index.js';\nimport x from \"ghost-tensor\";\nexport { b } from './lib/r.mjs';\nawait import('../bench/lib/common.mjs');")).toEqual([
      '../dist/index.js', 'ghost-tensor', './lib/r.mjs', '../bench/lib/common.mjs',
    ]);
  });

  const files = scripts(EXAMPLES);
  it.each(files.map((f) => relative(ROOT, f)))('%s imports only node:*, the package by name, and examples/ files', (file) => {
    const specs = importsOf(readFileSync(join(ROOT, file), 'utf8'));
    if (!file.includes('/lib/')) expect(specs).toContain(pkg.name); // an example uses the package by its name
    for (const s of specs) {
      if (s.startsWith('node:') || s === pkg.name || s.startsWith(`${pkg.name}/`)) continue;
      expect(s, `${file} imports ${s}`).toMatch(/^\.\.?\//);
      const target = relative(EXAMPLES, resolve(dirname(join(ROOT, file)), s));
      expect(target.startsWith('..'), `${file} imports ${s}, outside examples/`).toBe(false);
    }
  });

  it.each(['associative-recall.mjs', 'fashion-mnist.mjs', 'fit-fashion-mnist.mjs', 'step-proofs.mjs'])('%s --help prints its usage and exits 0', (file) => {
    const r = run(file, ['--help']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/node examples\//);
    expect(r.stdout).toMatch(/--help/);
  });

  it('step-proofs trains 3 steps by step proofs and its verifier reaches the model\'s Ghost file', () => {
    const r = run('step-proofs.mjs', ['--steps=3', '--context=12']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.match(/^\| \d \| [\d.]+ \| /gm)?.length).toBe(3);
    expect(r.stdout).toMatch(/verified 3 steps: the verifier's Ghost file [0-9a-f]+\.\.\. is the model's/);
    expect(run('step-proofs.mjs', ['--steps=0']).status).toBe(2);
  });

  it('associative-recall runs a tiny training (3 steps) and prints its table', () => {
    const r = run('associative-recall.mjs', ['--mode=sparse', '--k=4', '--steps=3', '--seq=32', '--batch=2', '--eval=2']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\| top-4 \| 32 \| 3 \|/);
  });

  it('fashion-mnist runs one short epoch on the shipped subset (no dataset installed needed)', () => {
    const r = run('fashion-mnist.mjs', ['--data=' + join(ROOT, 'data', 'fashion-mnist-small'), '--epochs=1', '--n=128', '--k=8', '--train=1000', '--mode=sparse']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/1000 training, 1000 test images/);
    const acc = /\| sparse \| 128 \| 8 \| 1 \| ([\d.]+)% \|/.exec(r.stdout);
    expect(acc, r.stdout).not.toBeNull();
    expect(Number(acc![1])).toBeGreaterThan(30); // chance is 10%
  });

  it.each(['projection', 'hopfield'])('fit-fashion-mnist (--model=%s) trains with fit for one short epoch on the shipped subset', (model) => {
    const r = run('fit-fashion-mnist.mjs', ['--data=' + join(ROOT, 'data', 'fashion-mnist-small'), `--model=${model}`, '--epochs=1', '--n=128', '--k=8', '--train=1000']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/1000 training, 1000 test images/);
    expect(r.stderr).toMatch(/epoch 1\/1: loss [\d.]+, accuracy [\d.]+%, validation loss/); // fit's progress line
    const acc = /\| 1 \| [\d.]+ \| [\d.]+% \| [\d.]+ \| ([\d.]+)% \|/.exec(r.stdout);
    expect(acc, r.stdout).not.toBeNull();
    expect(Number(acc![1])).toBeGreaterThan(30); // chance is 10%
    // Saved, reloaded, served: every answer verified against the pinned Ghost file, and labelled as the local model does.
    const served = /served: .* (\d+) answers verified, (\d+) with the local model's label/.exec(r.stdout);
    expect(served, r.stdout).not.toBeNull();
    expect(Number(served![1])).toBe(16);
    expect(Number(served![2])).toBe(16);
  });
});
