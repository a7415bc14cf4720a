/**
 * The folders of lib/ are tiers (README "Layout"): a file imports only from its own
 * tier or lower ones, and the verifier tier reaches neither the addon nor any Node
 * built-in, through any path. lib/verify/tsconfig.json checks the second with the
 * compiler (no Node types); this test checks both from the import graph.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const LIB = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'lib');

/** Lower numbers are lower tiers. serve and p2p are siblings: neither imports the other. */
const TIER: Record<string, number> = { shared: 0, verify: 1, tensor: 2, model: 3, serve: 4, p2p: 4, swarm: 5, cli: 6, '.': 6 };

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Every module specifier of a file: static imports and re-exports, and dynamic import(). */
export function specifiers(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'";]*?from\s*['"]([^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of text.matchAll(/(?:^|\n)\s*import\s*['"]([^'"]+)['"]/g)) out.push(m[1]!);
  for (const m of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1]!);
  return out;
}

const folderOf = (file: string): string => {
  const r = relative(LIB, file).split('/');
  return r.length === 1 ? '.' : r[0]!;
};

interface Edge { from: string; to: string; spec: string }
const files = walk(LIB);
const edges: Edge[] = [];
const builtins = new Map<string, string[]>();
for (const f of files) {
  for (const s of specifiers(readFileSync(f, 'utf8'))) {
    if (s.startsWith('.')) edges.push({ from: f, to: resolve(dirname(f), s.replace(/\.js$/, '.ts')), spec: s });
    else if (s.startsWith('node:') || ['fs', 'path', 'os', 'module', 'url', 'crypto', 'worker_threads', 'child_process'].includes(s)) {
      builtins.set(f, [...(builtins.get(f) ?? []), s]);
    }
  }
}

describe('lib/ tiers', () => {
  it('the scanner finds static, re-exported, side-effect and dynamic imports', () => {
    const t = "import { a } from './a.js';\nexport { b } from '../b.js';\nimport type { C } from \"./c.js\";\nimport './d.js';\nconst e = await import('./e.js');";
    expect(specifiers(t)).toEqual(['./a.js', '../b.js', './c.js', './d.js', './e.js']);
    expect(edges.length).toBeGreaterThan(50);
    for (const e of edges) expect(files, `${relative(LIB, e.from)} imports ${e.spec}, which is not a file`).toContain(e.to);
  });

  it('every folder of lib/ has a tier', () => {
    for (const f of files) expect(TIER[folderOf(f)], relative(LIB, f)).toBeDefined();
  });

  it('a file imports only from its own tier or lower ones, and serve and p2p not from each other', () => {
    const bad = edges.filter((e) => {
      const a = folderOf(e.from), b = folderOf(e.to);
      return TIER[b]! > TIER[a]! || (a !== b && TIER[a] === TIER[b] && a !== '.');
    });
    expect(bad.map((e) => `${relative(LIB, e.from)} -> ${relative(LIB, e.to)}`)).toEqual([]);
  });

  it('nothing the verifier tier reaches, directly or not, is the addon or a Node built-in', () => {
    const seen = new Set<string>();
    const stack = files.filter((f) => folderOf(f) === 'verify');
    while (stack.length > 0) {
      const f = stack.pop()!;
      if (seen.has(f)) continue;
      seen.add(f);
      for (const e of edges) if (e.from === f) stack.push(e.to);
    }
    const reached = [...seen].map((f) => relative(LIB, f));
    expect(reached).toContain('verify/proof-verify.ts');
    expect(reached.filter((f) => !f.startsWith('verify/') && !f.startsWith('shared/'))).toEqual([]);
    expect(reached.filter((f) => builtins.has(join(LIB, f)))).toEqual([]);
    expect(reached).not.toContain('tensor/native.ts');
  });
});
