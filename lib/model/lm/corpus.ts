/**
 * Byte-level text corpora for language models (docs/lm.md, "Corpus"): documents read
 * from a Debian package or a file, split into training and validation by document with
 * a fixed seed, each part the bytes of its documents in their original order, each
 * document followed by END_OF_DOCUMENT (byte 0). Tokens are bytes: no tokenizer.
 *
 * Sources (installed by .ci/run with apt-get):
 *   fortunes  Debian package `fortunes` (fortune-mod's English fortune files, BSD
 *             licence: /usr/share/doc/fortunes/copyright): about 2.5 MB in 16,000
 *             fortunes, each a document (the ASCII-art files are left out).
 *   gcide     Debian package `dict-gcide` (the GNU Collaborative International
 *             Dictionary of English, from Webster's 1913, GPL-3+:
 *             /usr/share/doc/dict-gcide/copyright): about 40 MB in 200,000 entries.
 *   a path    a UTF-8 text file: documents separated by a line holding only `%` when
 *             it has such lines (the fortune format), else by blank lines.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';

import { checkInteger, checkNumber, checkOptions, describe } from '../../shared/args.js';
import { InvalidArgumentError, StorageError } from '../../shared/errors.js';
import { seededRandom } from '../train/init.js';

/** The byte that ends every document in a corpus part. */
export const END_OF_DOCUMENT = 0;

export const FORTUNES_DIR = '/usr/share/games/fortunes';
export const GCIDE_DICT = '/usr/share/dictd/gcide.dict.dz';

/** Corpora larger than this are refused before reading (a file source). */
const MAX_CORPUS_BYTES = 1024 * 1024 * 1024;

export interface CorpusOptions {
  /** 'fortunes' (default), 'gcide', or a path to a text file. */
  source?: string;
  /** Fraction of documents held out for validation (default 0.05). */
  validationFraction?: number;
  /** Seed of the split (default 0). */
  seed?: number;
  /** Keep at most this many bytes of documents (in order, before the split; default all). */
  maxBytes?: number;
}

export interface Corpus {
  /** The source as given ('fortunes', 'gcide' or the path). */
  readonly source: string;
  /** Where the text came from and under which licence. */
  readonly licence: string;
  readonly train: Uint8Array;
  readonly validation: Uint8Array;
  readonly documents: { readonly train: number; readonly validation: number };
}

const LICENCES: Record<string, string> = {
  fortunes: 'Debian package fortunes (fortune-mod), BSD licence, /usr/share/doc/fortunes/copyright',
  gcide: 'Debian package dict-gcide (GNU Collaborative International Dictionary of English), GPL-3+, /usr/share/doc/dict-gcide/copyright',
};

function missing(what: string, pkg: string, path: string): StorageError {
  return new StorageError('IO', `the ${what} corpus is not installed (${path}): apt-get install ${pkg}`);
}

/** Splits text into documents: at lines holding only '%' (fortune format) when there are any, else at blank lines. */
export function splitDocuments(text: string): string[] {
  const byPercent = /\r?\n%\r?\n/.test(`\n${text}\n`);
  const parts = byPercent ? `\n${text}\n`.split(/\r?\n%(?:\r?\n|$)/) : text.split(/\r?\n[ \t]*\r?\n(?=\S)/);
  return parts.map((d) => d.replace(/^\s*\n/, '').replace(/\s+$/, '')).filter((d) => d.length > 0);
}

async function fortunes(): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(FORTUNES_DIR);
  } catch {
    throw missing('fortunes', 'fortunes', FORTUNES_DIR);
  }
  // The fortune files: no extension (.dat indexes, .u8 links); the ASCII-art ones are pictures, not English.
  const files = names.filter((n) => !n.includes('.') && n !== 'art' && n !== 'ascii-art').sort();
  if (files.length === 0) throw missing('fortunes', 'fortunes', FORTUNES_DIR);
  const docs: string[] = [];
  for (const f of files) docs.push(...splitDocuments(await readFile(join(FORTUNES_DIR, f), 'utf8')));
  return docs;
}

async function gcide(): Promise<string[]> {
  let packed: Buffer;
  try {
    packed = await readFile(GCIDE_DICT);
  } catch {
    throw missing('gcide', 'dict-gcide', GCIDE_DICT);
  }
  const text = gunzipSync(packed).toString('utf8');
  // dictd entries start at column 0 after a blank line; the first ones are the database's own notes.
  return text.split(/\n\n(?=\S)/).map((d) => d.replace(/\s+$/, '')).filter((d) => d.length > 0 && !d.startsWith('00-database') && !d.startsWith('00database'));
}

async function fromFile(path: string): Promise<string[]> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch {
    throw new StorageError('IO', `corpus file ${path} does not exist`);
  }
  if (size > MAX_CORPUS_BYTES) throw new InvalidArgumentError(`corpus file ${path} has ${size} bytes; the limit is ${MAX_CORPUS_BYTES}`);
  return splitDocuments(await readFile(path, 'utf8'));
}

/** Joins documents' UTF-8 bytes, each followed by END_OF_DOCUMENT. */
function join0(docs: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(docs.reduce((n, d) => n + d.length + 1, 0));
  let at = 0;
  for (const d of docs) {
    out.set(d, at);
    at += d.length;
    out[at++] = END_OF_DOCUMENT;
  }
  return out;
}

/**
 * Loads a corpus and splits it by document: document i goes to validation when the
 * i-th draw of seededRandom(seed) is below validationFraction (train/init.ts). Byte 0
 * inside a document is replaced by a space (it ends documents).
 */
export async function loadCorpus(options: CorpusOptions = {}): Promise<Corpus> {
  const o = checkOptions('loadCorpus', options, ['source', 'validationFraction', 'seed', 'maxBytes']);
  const source = o.source ?? 'fortunes';
  if (typeof source !== 'string' || source.length === 0) throw new InvalidArgumentError(`source must be 'fortunes', 'gcide' or a file path, got ${describe(source)}`);
  const frac = checkNumber('validationFraction', o.validationFraction ?? 0.05, 0, 0.5);
  const seed = checkInteger('seed', o.seed ?? 0, 0, 2 ** 32 - 1);
  const maxBytes = o.maxBytes === undefined ? Infinity : checkInteger('maxBytes', o.maxBytes, 1, MAX_CORPUS_BYTES);
  const texts = source === 'fortunes' ? await fortunes() : source === 'gcide' ? await gcide() : await fromFile(source);
  const enc = new TextEncoder();
  const docs: Uint8Array[] = [];
  let bytes = 0;
  for (const t of texts) {
    const d = enc.encode(t);
    for (let i = 0; i < d.length; i++) if (d[i] === END_OF_DOCUMENT) d[i] = 0x20;
    if (bytes + d.length + 1 > maxBytes) break;
    bytes += d.length + 1;
    docs.push(d);
  }
  if (docs.length < 2) throw new InvalidArgumentError(`the corpus ${source} has ${docs.length} document(s); a split needs at least 2`);
  const rand = seededRandom(seed);
  const train: Uint8Array[] = [], validation: Uint8Array[] = [];
  for (const d of docs) (rand() < frac ? validation : train).push(d);
  // Both parts non-empty whatever the draws.
  if (validation.length === 0 && frac > 0) validation.push(train.pop()!);
  if (train.length === 0) train.push(validation.pop()!);
  return {
    source,
    licence: LICENCES[source] ?? `the file ${source}`,
    train: join0(train),
    validation: join0(validation),
    documents: { train: train.length, validation: validation.length },
  };
}

/**
 * Cross-entropy in bits per byte of `text` under the byte frequencies of `reference`
 * (add-one smoothed): the unigram baseline a language model must beat.
 */
export function unigramBitsPerByte(reference: Uint8Array, text: Uint8Array): number {
  const counts = new Float64Array(256).fill(1);
  for (let i = 0; i < reference.length; i++) counts[reference[i]!]!++;
  const total = reference.length + 256;
  let bits = 0;
  for (let i = 0; i < text.length; i++) bits -= Math.log2(counts[text[i]!]! / total);
  return bits / Math.max(1, text.length);
}
