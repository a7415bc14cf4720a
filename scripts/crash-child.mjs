// Child of scripts/crash-test.mjs: opens the tensor file, resumes training from its
// last checkpoint, and checkpoints after every step, printing "ACK <seq>" only after
// checkpoint() returned (the log record is fsynced). Killed with SIGKILL at random.
import { SparseAdam, SparseTensor } from '../dist/index.js';
import { ADAM, stepOf } from './crash-test.mjs';

const [path, nArg, dArg, compactArg] = process.argv.slice(2);
const n = Number(nArg), d = Number(dArg), compactBytes = Number(compactArg);
const t = await SparseTensor.openFile(path);
const opt = new SparseAdam([t], ADAM);
let s = t.file.seq;
process.stdout.write(`READY ${s}\n`);
for (;;) {
  s++;
  const { ids, grads } = stepOf(s, n, d);
  opt.step([{ tensor: t, ids, grads }]);
  const seq = t.checkpoint({ compactBytes });
  if (seq !== s) throw new Error(`checkpoint ${seq} after step ${s}`);
  process.stdout.write(`ACK ${seq}\n`); // synchronous on a pipe (Linux)
}
