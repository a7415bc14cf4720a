/**
 * README.md and docs/*.md travel in the package. Every relative link and every
 * backticked repository path they give must exist; a path the package does not ship
 * (package.json "files") must be under one of the checkout-only prefixes (bench/,
 * scripts/, test/, lib/, .ci/), and it, or a command that needs a checkout (npm test,
 * npm run bench:*, node bench/..., npx vitest), must sit in a section (the text under
 * one `##` heading) that says it needs a checkout of the repository, or in a doc whose
 * opening (the text above its first `##`) says so for the whole doc (each docs/*.md
 * does; README.md says it section by section). Nothing may point outside the repository.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(import.meta.dirname, '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { files: string[] };
const DOCS = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];

/** Top-level entries of the repository a backticked token may start with to count as a path. */
const TOP = ['bench/', 'bin/', 'data/', 'dist/', 'docs/', 'examples/', 'lib/', 'native/', 'prebuilds/', 'scripts/', 'test/', '.ci/', 'package.json', 'binding.gyp', 'tsconfig.json', 'vitest.config.ts'];
/** Built by npm scripts (tsc, prebuildify), not committed: named, not checked for existence. */
const BUILT = ['dist/', 'prebuilds/'];
/** Paths a user of the installed package does not have, but a doc may name (with the note). */
const CHECKOUT_ONLY = ['bench/', 'scripts/', 'test/', 'lib/', '.ci/', 'tsconfig.json', 'vitest.config.ts'];
/** What a section (for a command) or a doc's opening (for paths) must say. */
const CHECKOUT = /checkout/i;
/** Commands that need a checkout (test, benchmark and script runners). */
const CHECKOUT_COMMANDS = /\bnpm (?:test|ci|start|run [\w:-]+)\b|\bnpx (?:vitest|tsc)\b|\bnode (?:--[\w-]+ )*(?:bench|scripts|test)\/|\bbash (?:scripts|test)\//;

export interface Ref {
  doc: string;
  /** Repository-relative path (braces expanded; may hold a * glob). */
  path: string;
  kind: 'link' | 'path' | 'command';
  text: string;
  section: string;
}

/** `a/{b,c}.d` -> a/b.d, a/c.d (one level of braces). */
function expand(p: string): string[] {
  const m = /^(.*)\{([^{}]+)\}(.*)$/.exec(p);
  return m ? m[2]!.split(',').map((x) => `${m[1]}${x}${m[3]}`) : [p];
}

/** Splits a markdown file into sections at `##` headings (### stays inside its ##). */
function sections(text: string): { heading: string; body: string }[] {
  const out: { heading: string; body: string }[] = [{ heading: '(top)', body: '' }];
  let fence = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('```')) fence = !fence;
    if (!fence && /^##\s/.test(line)) out.push({ heading: line, body: '' });
    out[out.length - 1]!.body += `${line}\n`;
  }
  return out;
}

export function refsOf(doc: string, text: string): Ref[] {
  const refs: Ref[] = [];
  const dir = dirname(doc);
  for (const { heading, body } of sections(text)) {
    for (const m of body.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = m[1]!.split('#')[0]!;
      if (target === '' || /^[a-z][\w+.-]*:/i.test(target)) continue; // anchors, http:, mailto:
      refs.push({ doc, path: normalize(join(dir, target)), kind: 'link', text: m[0], section: heading });
    }
    // Inline code outside fences, and whole lines inside fences, for paths and commands.
    const codes: string[] = [];
    let fence = false;
    for (const line of body.split('\n')) {
      if (line.startsWith('```')) {
        fence = !fence;
        continue;
      }
      if (fence) codes.push(line);
      else for (const m of line.matchAll(/`([^`]+)`/g)) codes.push(m[1]!);
    }
    for (const code of codes) {
      if (CHECKOUT_COMMANDS.test(code)) refs.push({ doc, path: '', kind: 'command', text: code, section: heading });
      for (const tok of code.split(/[\s'"();=]+/)) {
        const t = tok.replace(/[.,:]+$/, '');
        if (t.startsWith('../') || t.includes('/shared/')) refs.push({ doc, path: t, kind: 'path', text: code, section: heading });
        else if (TOP.some((p) => t === p || t.startsWith(p))) {
          for (const p of expand(t)) refs.push({ doc, path: p, kind: 'path', text: code, section: heading });
        }
      }
    }
  }
  return refs;
}

/** True when the path exists (a * in the last part: some entry of its folder matches). */
function exists(path: string): boolean {
  if (!path.includes('*')) return existsSync(join(ROOT, path));
  const dir = join(ROOT, dirname(path));
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return false;
  const re = new RegExp(`^${path.split('/').pop()!.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
  return readdirSync(dir).some((f) => re.test(f));
}

/** True when the package ships the path (it is under a "files" entry, or a folder above one). */
export function shipped(path: string, files: readonly string[] = pkg.files): boolean {
  const p = path.replace(/\/$/, '');
  return files.some((f) => {
    const e = f.replace(/\/$/, '');
    return p === e || p.startsWith(`${e}/`) || e.startsWith(`${p}/`);
  });
}

const all = DOCS.flatMap((doc) => refsOf(doc, readFileSync(join(ROOT, doc), 'utf8')));
const sectionText = new Map<string, string>();
for (const doc of DOCS) for (const s of sections(readFileSync(join(ROOT, doc), 'utf8'))) sectionText.set(`${doc}\0${s.heading}`, s.body);

describe('docs links travel with the package', () => {
  it('the scanner finds links, backticked paths (braces expanded), fenced commands and paths outside the repo', () => {
    const text = 'see [x](hash-scheme.md#a) and [y](https://e.org)\n`lib/a.{h,cc}` `../shared/DESIGN.md` `bench/results/x.json`.\n## Two\n```sh\nnpm run bench:serve\n```\n';
    const r = refsOf('docs/p.md', text);
    expect(r.map((x) => `${x.kind}:${x.path}`)).toEqual(['link:docs/hash-scheme.md', 'path:lib/a.h', 'path:lib/a.cc', 'path:../shared/DESIGN.md', 'path:bench/results/x.json', 'command:']);
    expect(r.at(-1)!.section).toBe('## Two');
    expect(shipped('docs/x.md')).toBe(true);
    expect(shipped('data/')).toBe(true);
    expect(shipped('bench/x.mjs')).toBe(false);
    expect(shipped('lib/shared/args.ts')).toBe(false);
  });

  it('finds something to check in every doc', () => {
    for (const doc of DOCS) expect(all.some((r) => r.doc === doc), doc).toBe(true);
  });

  it('nothing points outside the repository', () => {
    const bad = all.filter((r) => r.path.startsWith('..') || r.path.startsWith('shared/'));
    expect(bad.map((r) => `${r.doc}: ${r.text}`)).toEqual([]);
  });

  it('every linked or named repository path exists', () => {
    const missing = all.filter((r) => r.kind !== 'command' && !r.path.startsWith('..') && !BUILT.some((b) => r.path.startsWith(b)) && !exists(r.path));
    expect(missing.map((r) => `${r.doc}: ${r.path} (${r.text})`)).toEqual([]);
  });

  it('a path the package does not ship is under a checkout-only prefix', () => {
    const bad = all.filter((r) => r.kind !== 'command' && !r.path.startsWith('..') && !shipped(r.path) && !CHECKOUT_ONLY.some((p) => r.path.startsWith(p)));
    expect([...new Set(bad.map((r) => `${r.doc}: ${r.path}`))]).toEqual([]);
  });

  it('a checkout-only path or command sits in a section, or a doc opening, that says it needs a checkout', () => {
    const marked = (r: Ref): boolean => CHECKOUT.test(sectionText.get(`${r.doc}\0${r.section}`) ?? '') || CHECKOUT.test(sectionText.get(`${r.doc}\0(top)`) ?? '');
    const unmarked = all.filter((r) => (r.kind === 'command' || (!r.path.startsWith('..') && !shipped(r.path))) && !marked(r));
    expect([...new Set(unmarked.map((r) => `${r.doc} ${r.section}: ${r.kind === 'command' ? r.text : r.path}`))]).toEqual([]);
  });

  it('README.md says it section by section (its opening does not cover the whole file)', () => {
    expect(CHECKOUT.test(sectionText.get('README.md\0(top)') ?? '')).toBe(false);
  });
});
