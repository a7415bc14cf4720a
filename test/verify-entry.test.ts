import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

describe('ghost-tensor/verify entry point', () => {
  it('verifies the shipped vectors without loading any native addon', () => {
    // Counts process.dlopen calls (how Node loads .node addons) while the entry point
    // is imported and used, through the package's own exports map.
    const script = `
      import { readFileSync } from 'node:fs';
      let dlopens = 0;
      const orig = process.dlopen;
      process.dlopen = (...a) => { dlopens++; return orig.apply(process, a); };
      const { verify } = await import('ghost-tensor/verify');
      const f = JSON.parse(readFileSync('docs/test-vectors/merkle-v1.json', 'utf8'));
      const b = (h) => new Uint8Array(Buffer.from(h, 'hex'));
      let ok = 0, total = 0;
      for (const v of f.vectors) for (const p of v.proofs) {
        total++;
        const leaves = Float32Array.from(p.ids.flatMap((i) => v.patterns[i]));
        if (await verify(b(v.root), v.n, p.ids, leaves, b(p.proof.join('')))) ok++;
      }
      console.log(JSON.stringify({ ok, total, dlopens }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { ok: number; total: number; dlopens: number };
    expect(out.total).toBeGreaterThanOrEqual(15);
    expect(out.ok).toBe(out.total);
    expect(out.dlopens).toBe(0);
  });
});
