/**
 * A tape of forward calls whose backward pass is automatic (docs/training.md,
 * "Training a model"). The user writes the forward with the tape's calls:
 *
 *   const tape = new Tape();
 *   const x = tape.input(batch, 64);                 // rows x 64 floats (or ids for an Embedding)
 *   const h = await tape.layer(attention, x);        // any registered layer kind
 *   const y = await tape.layer(head, tape.add(x, h)); // a residual: x is used twice
 *   const loss = tape.softmaxCrossEntropy(y, targets);
 *   const grads = await tape.backward(loss);         // { sparse, dense, of(value) }
 *
 * Each call runs at once and records what backward needs: a layer its kind's forward
 * context (lib/model/layer-kind.ts), `add` its two operands, a loss its gradient.
 * backward() walks the records in reverse from the loss: each value's gradient is the
 * sum of what every later use of it sends back (a value used twice sums both, in f32,
 * in reverse order of the uses); a layer's backward turns its output's gradient into
 * its input's and into its parameters'. The parameter gradients come out gathered: one
 * SparseGrad per SparseTensor (the rows of every use concatenated, in the order
 * backward met them; the sparse optimizers sum repeated ids) and one gradient per dense
 * parameter (summed over its uses). A value that does not reach the loss sends nothing.
 *
 * A tape runs backward once; its records (the forward contexts) are dropped then.
 */
import { checkFloat32Array, checkInteger, describe, toIds } from '../../shared/args.js';
import { InvalidArgumentError } from '../../shared/errors.js';
import type { SparseTensor } from '../../tensor/sparse-tensor.js';
import type { LayerShape } from '../layer-kind.js';
import { kindOf, type AnyLayerKind, type ModelLayer } from '../kinds/index.js';
import type { Model } from '../model.js';
import type { SparseGrad } from '../optim.js';
import { mse, softmaxCrossEntropy, type ClassTargets } from './losses.js';

const TOKEN = Symbol('TapeValue');

/** A value on a tape: rows x cols floats. Made by the tape's calls only. */
export class TapeValue {
  readonly data: Float32Array;
  readonly rows: number;
  readonly cols: number;
  /** @internal */
  readonly tape: Tape;
  /** @internal its index on the tape */
  readonly index: number;

  /** @internal */
  constructor(token: symbol, tape: Tape, index: number, data: Float32Array, rows: number, cols: number) {
    if (token !== TOKEN) throw new InvalidArgumentError('a TapeValue is made by a Tape (tape.input, tape.layer, tape.add)');
    this.tape = tape;
    this.index = index;
    this.data = data;
    this.rows = rows;
    this.cols = cols;
  }
}

/** A loss on a tape: its value (f64) and, for cross-entropy, the rows predicted right. */
export class TapeLoss {
  readonly value: number;
  readonly rows: number;
  /** Cross-entropy: rows whose largest logit is the target; MSE: null. */
  readonly correct: number | null;
  /** @internal */
  readonly tape: Tape;
  /** @internal */
  readonly input: TapeValue;
  /** @internal */
  readonly grad: Float32Array;

  /** @internal */
  constructor(token: symbol, tape: Tape, input: TapeValue, value: number, grad: Float32Array, correct: number | null) {
    if (token !== TOKEN) throw new InvalidArgumentError('a TapeLoss is made by a Tape (tape.softmaxCrossEntropy, tape.mse)');
    this.tape = tape;
    this.input = input;
    this.value = value;
    this.rows = input.rows;
    this.grad = grad;
    this.correct = correct;
  }
}

/** What backward gives: the parameters' gradients, gathered, and any value's gradient. */
export interface Gradients {
  /** One entry per SparseTensor that received a gradient (for SparseAdam / SparseSGD, or a Trainer). */
  readonly sparse: SparseGrad[];
  /** One entry per dense parameter (e.g. a HopfieldLookup's betaParam), for DenseAdam or a Trainer. */
  readonly dense: { param: Float32Array; grad: Float32Array }[];
  /** d loss / d value for a value of this tape (an input's too); null when it does not reach the loss. */
  of(value: TapeValue): Float32Array | null;
}

type TapeRecord =
  | { op: 'input'; out: number }
  | { op: 'layer'; out: number; in: number | null; others: number[]; kind: AnyLayerKind; layer: ModelLayer; ctx: unknown }
  | { op: 'add'; out: number; a: number; b: number };

export class Tape {
  readonly #values: TapeValue[] = [];
  readonly #records: TapeRecord[] = [];
  #done = false;

  #open(where: string): void {
    if (this.#done) throw new InvalidArgumentError(`${where}: this tape's backward has run; start a new Tape`);
  }

  #own(where: string, v: unknown): TapeValue {
    if (!(v instanceof TapeValue)) throw new InvalidArgumentError(`${where} must be a TapeValue, got ${describe(v)}`);
    if (v.tape !== this) throw new InvalidArgumentError(`${where} is a value of another tape`);
    return v;
  }

  #push(data: Float32Array, rows: number, cols: number, record: (out: number) => TapeRecord): TapeValue {
    const v = new TapeValue(TOKEN, this, this.#values.length, data, rows, cols);
    this.#values.push(v);
    this.#records.push(record(v.index));
    return v;
  }

  /** An input of `rows` x `cols` floats (its gradient is available after backward through `of`). */
  input(data: Float32Array, cols: number): TapeValue {
    this.#open('tape.input');
    checkFloat32Array('data', data);
    checkInteger('cols', cols, 1, 2 ** 24);
    if (data.length === 0 || data.length % cols !== 0) throw new InvalidArgumentError(`data length ${data.length} must be a positive multiple of cols ${cols}`);
    return this.#push(data, data.length / cols, cols, (out) => ({ op: 'input', out }));
  }

  /**
   * Runs `layer` (any registered kind) on x: a value of this tape, or ids for a layer
   * that takes ids (an Embedding). Its input width must be what the layer takes. A kind
   * with several inputs (an Add, a Glu) takes the others after x, of x's shape.
   */
  async layer(layer: ModelLayer, x: TapeValue | Uint32Array | readonly number[], ...others: TapeValue[]): Promise<TapeValue> {
    this.#open('tape.layer');
    const kind = kindOf(layer);
    const isIds = !(x instanceof TapeValue);
    const v = isIds ? null : this.#own('x', x);
    const ids = isIds ? toIds('x', x) : null;
    if (ids !== null && ids.length === 0) throw new InvalidArgumentError('x: no ids');
    const arity = kind.spec.arity ?? 1;
    if (others.length !== arity - 1) throw new InvalidArgumentError(`${kind.name} takes ${arity} input(s), got ${1 + others.length}`);
    others.forEach((o, i) => {
      this.#own(`input ${i + 2}`, o);
      if (v === null || o.rows !== v.rows || o.cols !== v.cols) throw new InvalidArgumentError(`${kind.name}: its inputs must have one shape`);
    });
    const rows = v ? v.rows : ids!.length;
    const shape = layerShape(kind, layer, v ? v.cols : -1);
    const r = await kind.forward(layer, v ? v.data : ids!, shape, others.map((o) => o.data));
    const outWidth = shape.outWidth > 0 ? shape.outWidth : r.y.length / rows;
    if (!Number.isInteger(outWidth) || r.y.length !== rows * outWidth) {
      throw new InvalidArgumentError(`${kind.name} gave ${r.y.length} values for ${rows} rows: its input width is not ${v ? v.cols : 'ids'}`);
    }
    return this.#push(r.y, rows, outWidth, (out) => ({ op: 'layer', out, in: v ? v.index : null, others: others.map((o) => o.index), kind, layer, ctx: r.ctx }));
  }

  /** a + b, element-wise (a residual connection); the two must have one shape. */
  add(a: TapeValue, b: TapeValue): TapeValue {
    this.#open('tape.add');
    this.#own('a', a);
    this.#own('b', b);
    if (a.rows !== b.rows || a.cols !== b.cols) throw new InvalidArgumentError(`tape.add: shapes ${a.rows} x ${a.cols} and ${b.rows} x ${b.cols} differ`);
    const y = new Float32Array(a.data.length);
    for (let i = 0; i < y.length; i++) y[i] = a.data[i]! + b.data[i]!;
    return this.#push(y, a.rows, a.cols, (out) => ({ op: 'add', out, a: a.index, b: b.index }));
  }

  /**
   * A Model's layers on x, each reading what the model says it reads (a chain, or the
   * graph its blocks or `inputs` lay out): x is a value of this tape, ids for an
   * Embedding-first model, or the first layer's rows of floats. Returns the last
   * layer's output.
   */
  async model(model: Model, x: TapeValue | Float32Array | Uint32Array | readonly number[]): Promise<TapeValue> {
    this.#open('tape.model');
    let input: TapeValue | Uint32Array | readonly number[];
    if (x instanceof Float32Array) {
      const l0 = model.layers[0]!;
      input = this.input(x, kindOf(l0).shape(l0, 0, -1).inWidth);
    } else input = x;
    const outs: TapeValue[] = [];
    for (const [i, l] of model.layers.entries()) {
      const ins = model.inputs[i]!.map((j) => (j === -1 ? input : outs[j]!));
      outs.push(await this.layer(l, ins[0]!, ...(ins.slice(1) as TapeValue[])));
    }
    return outs[outs.length - 1]!;
  }

  /** Mean softmax cross-entropy of `logits` (rows x classes) against one class id per row (losses.ts). */
  softmaxCrossEntropy(logits: TapeValue, targets: ClassTargets): TapeLoss {
    this.#open('tape.softmaxCrossEntropy');
    this.#own('logits', logits);
    const r = softmaxCrossEntropy(logits.data, logits.cols, targets);
    return new TapeLoss(TOKEN, this, logits, r.value, r.grad, r.correct);
  }

  /** Mean squared error of `y` against `targets` (one value per element of y). */
  mse(y: TapeValue, targets: Float32Array): TapeLoss {
    this.#open('tape.mse');
    this.#own('y', y);
    const r = mse(y.data, targets);
    return new TapeLoss(TOKEN, this, y, r.value, r.grad, null);
  }

  /** The gradients of `loss` (see the module comment). Runs once per tape. */
  async backward(loss: TapeLoss): Promise<Gradients> {
    this.#open('tape.backward');
    if (!(loss instanceof TapeLoss)) throw new InvalidArgumentError(`loss must be a TapeLoss, got ${describe(loss)}`);
    if (loss.tape !== this) throw new InvalidArgumentError('loss is on another tape');
    this.#done = true;
    const n = this.#values.length;
    const grads: (Float32Array | null)[] = new Array<Float32Array | null>(n).fill(null);
    // A gradient is first held as given (borrowed) and copied before anything is added to it.
    const owned = new Uint8Array(n);
    const send = (i: number, g: Float32Array): void => {
      const cur = grads[i];
      if (cur === null || cur === undefined) {
        grads[i] = g;
        return;
      }
      const acc = owned[i] ? cur : Float32Array.from(cur);
      for (let j = 0; j < acc.length; j++) acc[j] = acc[j]! + g[j]!;
      grads[i] = acc;
      owned[i] = 1;
    };
    send(loss.input.index, loss.grad);
    const sparse = new Map<SparseTensor, SparseGrad[]>();
    const dense = new Map<Float32Array, Float32Array>();
    const records = this.#records;
    try {
      for (let r = loss.input.index; r >= 0; r--) {
        const rec = records[r]!;
        const g = grads[rec.out];
        if (g === null || g === undefined) continue;
        if (rec.op === 'add') {
          send(rec.a, g);
          send(rec.b, g);
        } else if (rec.op === 'layer') {
          const b = await rec.kind.backward(rec.layer, rec.ctx, g);
          if (rec.in !== null && b.dx !== null) send(rec.in, b.dx);
          rec.others.forEach((o, k) => {
            const d = b.dxOthers?.[k];
            if (d === undefined) throw new InvalidArgumentError(`${rec.kind.name}: its backward gave no gradient for input ${k + 2}`);
            send(o, d);
          });
          for (const s of b.grads) sparse.set(s.tensor, [...(sparse.get(s.tensor) ?? []), s]);
          for (const d of b.dense) {
            const cur = dense.get(d.param);
            if (cur === undefined) dense.set(d.param, d.grad);
            else {
              const acc = new Float32Array(cur.length);
              for (let j = 0; j < acc.length; j++) acc[j] = cur[j]! + d.grad[j]!;
              dense.set(d.param, acc);
            }
          }
        }
      }
    } finally {
      for (const rec of records) if (rec.op === 'layer') rec.ctx = null;
    }
    const values = this.#values;
    return {
      sparse: [...sparse].map(([tensor, list]) => gather(tensor, list)),
      dense: [...dense].map(([param, grad]) => ({ param, grad })),
      of(value: TapeValue): Float32Array | null {
        if (!(value instanceof TapeValue) || values[value.index] !== value) throw new InvalidArgumentError('of(value): not a value of this tape');
        return grads[value.index] ?? null;
      },
    };
  }
}

/** The shape a kind gives for an input of `cols` values (-1: ids) at any position but the first (ids: the first). */
function layerShape(kind: AnyLayerKind, layer: ModelLayer, cols: number): LayerShape {
  try {
    return kind.shape(layer, cols === -1 ? 0 : 1, cols);
  } catch (e) {
    // A dense-mode layer (a baseline) cannot stand in a proved model, but trains on a
    // tape: its own forward checks the width; the output width is read from its output.
    if ((layer as { mode?: unknown }).mode === 'dense') return { inWidth: cols, outWidth: -1 };
    throw e;
  }
}

/** One SparseGrad for a tensor from its entries (their rows concatenated, in order). */
function gather(tensor: SparseTensor, list: SparseGrad[]): SparseGrad {
  if (list.length === 1) return { tensor, ids: toIds('ids', list[0]!.ids), grads: list[0]!.grads };
  let rows = 0;
  for (const g of list) rows += g.ids.length;
  const ids = new Uint32Array(rows);
  const out = new Float32Array(rows * tensor.dim);
  let at = 0;
  for (const g of list) {
    ids.set(toIds('ids', g.ids), at);
    out.set(g.grads, at * tensor.dim);
    at += g.ids.length;
  }
  return { tensor, ids, grads: out };
}
