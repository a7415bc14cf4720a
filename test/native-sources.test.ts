/**
 * The one list of native sources (native/sources.json): every C/C++ source of the
 * addon is listed exactly once, the core (what the sanitizer build compiles) has no
 * Node-API, and the build files read the list instead of naming sources themselves.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

interface Level {
  sources: string[];
  flags: string[];
}
interface SourceList {
  core: string[];
  napi: string[];
  blake3: string[];
  x64: Record<string, Level>;
  arm64: { sources: string[]; defines: string[] };
}
const list = JSON.parse(readFileSync(join(ROOT, 'native/sources.json'), 'utf8')) as SourceList;

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : [relative(ROOT, p).split('\\').join('/')];
  });
}

const allListed = (l: SourceList): string[] => [
  ...l.core,
  ...l.napi,
  ...l.blake3,
  ...Object.values(l.x64).flatMap((v) => v.sources),
  ...l.arm64.sources,
];

/** The files under native/src and native/third_party/blake3 that are not listed, and the listed ones more than once or missing. */
function problems(l: SourceList): { unlisted: string[]; repeated: string[]; missing: string[] } {
  const listed = allListed(l);
  const compiled = [...walk(join(ROOT, 'native/src')), ...walk(join(ROOT, 'native/third_party/blake3'))].filter((f) =>
    /\.(c|cc)$/.test(f),
  );
  return {
    unlisted: compiled.filter((f) => !listed.includes(f)),
    repeated: [...new Set(listed.filter((f, i) => listed.indexOf(f) !== i))],
    missing: listed.filter((f) => !existsSync(join(ROOT, f))),
  };
}

const includes = (file: string): string[] =>
  [...readFileSync(join(ROOT, file), 'utf8').matchAll(/^\s*#\s*include\s*[<"]([^>"]+)[>"]/gm)].map((m) => m[1]!);

describe('native sources: one list', () => {
  it('lists every .c / .cc file under native/src (and BLAKE3\'s) exactly once, and only files that exist', () => {
    expect(problems(list)).toEqual({ unlisted: [], repeated: [], missing: [] });
    // The check itself catches a dropped, a repeated and a stale entry.
    const dropped = { ...list, core: list.core.filter((f) => !f.endsWith('/merkle.cc')) };
    expect(problems(dropped).unlisted).toEqual(['native/src/core/merkle.cc']);
    const twice = { ...list, napi: [...list.napi, 'native/src/core/errors.cc'] };
    expect(problems(twice).repeated).toEqual(['native/src/core/errors.cc']);
    const stale = { ...list, napi: [...list.napi, 'native/src/napi/train_binding.cc'] };
    expect(problems(stale).missing).toEqual(['native/src/napi/train_binding.cc']);
  });

  it('the core has no Node-API: no file under native/src/core includes napi.h or a binding header', () => {
    const core = walk(join(ROOT, 'native/src/core'));
    expect(core.length).toBeGreaterThan(30);
    const offending = core.flatMap((f) => includes(f).filter((h) => /(^|\/)napi(-inl)?\.h$|(^|\/)node_api\.h$|\.\.\/napi\//.test(h)).map((h) => `${f}: ${h}`));
    expect(offending).toEqual([]);
    // Listed core sources are the files of native/src/core; the bindings those of native/src/napi.
    expect(list.core.every((f) => f.startsWith('native/src/core/'))).toBe(true);
    expect(list.napi.every((f) => f.startsWith('native/src/napi/'))).toBe(true);
    // And the bindings do use Node-API (the split is not vacuous).
    expect(includes('native/src/napi/addon.cc')).toContain('napi.h');
  });

  it('every storage failure carries a reason: nothing builds Error(ErrorCode::Storage, ...) without StorageError', () => {
    const raw = walk(join(ROOT, 'native/src'))
      .filter((f) => /\.(h|cc)$/.test(f) && !f.endsWith('/errors.h'))
      .filter((f) => /Error\(\s*ErrorCode::Storage\b/.test(readFileSync(join(ROOT, f), 'utf8')));
    expect(raw).toEqual([]);
  });

  it('binding.gyp and the sanitizer build name no source themselves: they read the list', () => {
    const gyp = readFileSync(join(ROOT, 'binding.gyp'), 'utf8').replace(/#.*$/gm, '');
    const san = readFileSync(join(ROOT, 'test/native/run-sanitized.sh'), 'utf8').replace(/#.*$/gm, '');
    for (const text of [gyp, san]) expect(text.match(/[\w/.-]+\.(c|cc)\b/g) ?? []).toEqual(text === san ? ['test/native/test_core.cc'] : []);
    for (const group of ['core', 'napi', 'blake3', 'x64-portable', 'arm64.sources', 'arm64.defines']) expect(gyp).toContain(`node native/sources.cjs ${group}`);
    for (const level of Object.keys(list.x64)) expect(gyp).toContain(`"gt_x64_${level}"`);
  });

  it('native/sources.cjs prints the groups of the JSON list', () => {
    const run = (group: string): string[] =>
      execFileSync(process.execPath, [join(ROOT, 'native/sources.cjs'), group], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n');
    expect(run('core')).toEqual(list.core);
    expect(run('x64.avx2.flags')).toEqual(list.x64.avx2!.flags);
    expect(run('x64-portable')).toEqual(['native/src/core/kernels_avx2.cc', 'native/src/core/key_sketch_avx2.cc', 'native/src/core/kernels_avx512.cc', 'native/src/core/key_sketch_avx512.cc']);
    expect(() => execFileSync(process.execPath, [join(ROOT, 'native/sources.cjs'), 'no.such.group'], { stdio: 'pipe' })).toThrow();
    const { pick } = require(join(ROOT, 'native/sources.cjs')) as { pick: (g: string) => string[] };
    expect(pick('napi')).toEqual(list.napi);
  });
});
