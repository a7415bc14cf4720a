// @ts-check
// Runs in headless Chromium (see test/browser.test.ts): imports ghost-tensor/verify from
// the built dist/, verifies a forward proof and update proofs made by the native prover,
// checks that tampered copies are refused with their reason, and POSTs what it saw.

const hex = (/** @type {Uint8Array} */ b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

async function bytesOf(/** @type {string} */ url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** The reason a verification failed with, 'ACCEPTED' when it did not fail. */
async function outcome(/** @type {any} */ mod, /** @type {() => Promise<unknown>} */ run) {
  try {
    await run();
    return { reason: 'ACCEPTED', error: '' };
  } catch (err) {
    const e = /** @type {any} */ (err);
    const typed = e instanceof mod.ProofError || e instanceof mod.FormatError;
    return { reason: typed ? String(e.reason) : `UNTYPED ${e && e.name}`, error: `${e && e.name}: ${e && e.message}` };
  }
}

async function main() {
  /** @type {Record<string, unknown>} */
  const result = { userAgent: navigator.userAgent, nodeGlobals: typeof globalThis.process !== 'undefined' || typeof globalThis.Buffer !== 'undefined' };
  /** @type {any} */
  let mod;
  try {
    mod = await import('/dist/verify/index.js');
  } catch (err) {
    const e = /** @type {any} */ (err);
    result.importError = `${e && e.name}: ${e && e.message}`;
    return result;
  }
  /** @type {{ forward: string, steps: number, updates: string[], tamper: { name: string, file: string, offset: number, mask: number, expect: string }[], generation: { prompt: number[], tokens: number[], seed: number, context: number, temperature: number, topP: number } }} */
  const c = await (await fetch('/data/case.json')).json();
  const files = new Map();
  for (const f of ['ghost', 'forward', ...c.updates]) files.set(f, await bytesOf(`/data/${f}.bin`));

  const pinned = await mod.pinGhost(files.get('ghost'));
  result.ghostDigest = hex(pinned.digest);

  const v = await mod.verifyForward(pinned, files.get('forward'));
  result.forward = { rows: v.rows, cols: v.cols, outputHex: hex(new Uint8Array(v.output.buffer, v.output.byteOffset, v.output.byteLength)) };

  // Each update proof is against the Ghost file after the ones before it.
  /** @type {{ file: string, tensor: number, digest: string }[]} */
  const updates = [];
  let g = pinned;
  for (const f of c.updates) {
    const u = await mod.verifyUpdate(g, files.get(f));
    g = u.ghost;
    updates.push({ file: f, tensor: u.tensor, digest: hex(g.digest) });
  }
  result.updates = updates;

  // Tampered copies: one bit flipped at an offset the test located in the encoding.
  // Update proofs are checked against the Ghost file each one was made for.
  const before = new Map([[c.forward, pinned]]);
  let h = pinned;
  for (const f of c.updates) {
    before.set(f, h);
    h = (await mod.verifyUpdate(h, files.get(f))).ghost;
  }
  const tampered = [];
  for (const t of c.tamper) {
    const b = files.get(t.file).slice();
    b[t.offset] ^= t.mask;
    const ghostFor = before.get(t.file);
    const run = t.file === c.forward ? () => mod.verifyForward(ghostFor, b) : () => mod.verifyUpdate(ghostFor, b);
    tampered.push({ name: t.name, ...(await outcome(mod, run)) });
  }
  result.tampered = tampered;
  // An attention-first model: the browser re-derives every selection itself.
  const ag = await mod.pinGhost(await bytesOf('/data/attention-ghost.bin'));
  const av = await mod.verifyForward(ag, await bytesOf('/data/attention-forward.bin'));
  result.attention = { rows: av.rows, cols: av.cols, outputHex: hex(new Uint8Array(av.output.buffer, av.output.byteOffset, av.output.byteLength)) };
  // Linear (sparse columns, bias) and RMSNorm layers before a Hopfield layer.
  const lg = await mod.pinGhost(await bytesOf('/data/linear-ghost.bin'));
  const lv = await mod.verifyForward(lg, await bytesOf('/data/linear-forward.bin'));
  // A small transformer (a graph: two residual blocks, Ghost format 2).
  const tg = await mod.pinGhost(await bytesOf('/data/graph-ghost.bin'));
  const tv = await mod.verifyForward(tg, await bytesOf('/data/graph-forward.bin'));
  result.graph = { rows: tv.rows, cols: tv.cols, outputHex: hex(new Uint8Array(tv.output.buffer, tv.output.byteOffset, tv.output.byteLength)) };
  // A language model's generation: a proof per token, and the sampler recomputed from the proved logits.
  const lmg = await mod.pinGhost(await bytesOf('/data/lm-ghost.bin'));
  const gc = c.generation;
  const proofs = [];
  for (let i = 0; i < gc.tokens.length; i++) proofs.push(await bytesOf(`/data/lm-gen-${i}.bin`));
  const rec = { prompt: gc.prompt, tokens: gc.tokens, seed: gc.seed, context: gc.context, temperature: gc.temperature, topP: gc.topP, proofs };
  const verified = await mod.verifyGeneration(lmg, rec, { cache: new mod.PatternCache() });
  const forgedTokens = gc.tokens.map((/** @type {number} */ t, /** @type {number} */ i) => (i === 2 ? (t + 1) % 256 : t));
  const forged = await outcome(mod, () => mod.verifyGeneration(lmg, { ...rec, tokens: forgedTokens }, { cache: new mod.PatternCache() }));
  result.generation = { tokens: verified.length, forged: forged.reason };
  // Training steps with step proofs: each recomputed here, the Ghost file followed from one to the next.
  let sg = await mod.pinGhost(await bytesOf('/data/step-ghost.bin'));
  const sg0 = sg;
  const digests = [];
  for (let i = 0; i < c.steps; i++) {
    sg = (await mod.verifyTrainStep(sg, await bytesOf(`/data/step-${i}.bin`))).ghost;
    digests.push(hex(sg.digest));
  }
  const bad = (await bytesOf('/data/step-0.bin')).slice();
  bad[bad.length - 1] ^= 1; // the claimed Ghost digest after the step
  result.steps = { digests, forged: (await outcome(mod, () => mod.verifyTrainStep(sg0, bad))).reason };
  result.linear = { rows: lv.rows, cols: lv.cols, outputHex: hex(new Uint8Array(lv.output.buffer, lv.output.byteOffset, lv.output.byteLength)) };
  // The honest forward proof still verifies after all that (nothing was mutated in place).
  result.honestAgain = (await outcome(mod, () => mod.verifyForward(pinned, files.get('forward')))).reason;
  return result;
}

main()
  .catch((err) => ({ userAgent: navigator.userAgent, error: `${err && err.stack || err}` }))
  .then((result) => {
    // @ts-ignore: set by the error handlers in index.html
    window.__reported = true;
    return fetch('/result', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(result) });
  });
