/**
 * What both examples share: --name=value arguments, --help (the usage block of the
 * example's header comment), and where --write may record figures (bench/results of a
 * checkout of the repository; an installed package has no bench/).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The value of --name=value in process.argv, or `fallback`. */
export function arg(name, fallback) {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : fallback;
}

/** With --help (or -h): prints the header comment of the script at `url` and exits 0. */
export function helpAndExit(url) {
  if (!process.argv.includes('--help') && !process.argv.includes('-h')) return;
  const src = readFileSync(fileURLToPath(url), 'utf8');
  const block = /\/\*\*([\s\S]*?)\*\//.exec(src)?.[1] ?? '';
  console.log(block.split('\n').map((l) => l.replace(/^ \* ?| \*$/, '')).join('\n').trim());
  process.exit(0);
}

/**
 * bench/results of the checkout this example runs from; exits 2 with a message when
 * there is none (the example was run from an installed package).
 */
export function resultsDir(url) {
  const root = join(dirname(fileURLToPath(url)), '..');
  if (!existsSync(join(root, 'bench'))) {
    console.error('--write records figures in bench/results of a checkout of the repository; this copy (an installed package) has no bench/');
    process.exit(2);
  }
  return join(root, 'bench', 'results');
}
