/**
 * The `demo` command: trains a one-block transformer classifier on generated sequences and prints
 * its loss falling and its accuracy on held-out sequences rising. Real work end to end (token
 * embedding, learned positions, fused attention, MLP, LayerNorm, cross-entropy, AdamW with a
 * cosine schedule and gradient clipping) on whatever adapter WebGPU finds.
 *
 * The task: sequences of T tokens from a vocabulary of V; each of C classes favours its own
 * quarter of the vocabulary, buried in uniform noise, so the model must pool evidence over the
 * whole sequence. Batches are fresh every step and accuracy is measured on held-out sequences.
 * `TinyTransformer` is exported for tests/train_test.ts, not as library surface.
 */
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { poolStats } from "../mod.ts";
import { backward, noGrad } from "../nn/autograd.ts";
import { Embedding, LayerNorm, Linear, TransformerBlock } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { add, mean } from "../nn/ops/index.ts";
import { crossEntropy } from "../nn/ops/nn.ts";
import { AdamW, clipGradNorm, cosineSchedule } from "../nn/optim.ts";
import { randn, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";

/** Token embedding + learned positions -> one pre-norm block -> LayerNorm -> mean -> Linear. */
export class TinyTransformer extends Module {
  tok: Embedding;
  pos: Tensor;
  block: TransformerBlock;
  lnFinal: LayerNorm;
  head: Linear;
  constructor(vocab: number, T: number, d: number, heads: number, classes: number, seed: number) {
    super();
    const rng = new Rng(seed);
    this.tok = new Embedding(vocab, d, { rng });
    this.pos = this.param("pos", randn([T, d], { rng, std: 0.1 }));
    this.block = new TransformerBlock(d, heads, { rng });
    this.lnFinal = new LayerNorm(d);
    this.head = new Linear(d, classes, { rng });
  }
  /** ids [B, T] -> logits [B, classes]. */
  forward(ids: Tensor): Tensor {
    const h = this.block.forward(add(this.tok.forward(ids), this.pos));
    return this.head.forward(mean(this.lnFinal.forward(h), 1));
  }
}

/**
 * A batch of the task: class c owns the tokens [c * V/C, (c + 1) * V/C); each token of a class-c
 * sequence is drawn from c's tokens with probability 0.5, else uniformly from all V. ids [B*T],
 * labels [B].
 */
function makeBatch(rng: Rng, B: number, T: number, V: number, C: number) {
  const ids = new Int32Array(B * T), labels = new Int32Array(B);
  const per = V / C;
  for (let b = 0; b < B; b++) {
    const c = rng.int(C);
    labels[b] = c;
    for (let t = 0; t < T; t++) {
      ids[b * T + t] = rng.next() < 0.5 ? c * per + rng.int(per) : rng.int(V);
    }
  }
  return { ids, labels };
}

/** `deno run -A cli.ts demo [--steps N] [--batch B] [--width D] [--seed S]`. */
export async function demoCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      steps: { type: "string", default: "300" },
      batch: { type: "string", default: "64" },
      width: { type: "string", default: "64" },
      seed: { type: "string", default: "0" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log("demo [--steps 300] [--batch 64] [--width 64] [--seed 0]");
    return 0;
  }
  const steps = Number(values.steps), B = Number(values.batch), D = Number(values.width);
  const seed = Number(values.seed);
  for (const [k, v] of [["steps", steps], ["batch", B], ["width", D]] as const) {
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`--${k} must be a positive integer`);
  }
  const T = 12, V = 32, C = 4, heads = 4;
  await init();
  console.log(`adapter: ${adapterInfo().description} (${adapterInfo().backend})`);
  console.log(
    `task: ${T}-token sequences over ${V} symbols, ${C} classes each favouring ${V / C} symbols ` +
      `(50% signal, 50% noise); fresh batches of ${B} every step, 512 held-out sequences`,
  );
  const rng = new Rng(seed);
  const heldOut = makeBatch(new Rng(seed + 1000), 512, T, V, C);
  const hx = tensor(heldOut.ids, [512, T]), hy = heldOut.labels;
  const model = new TinyTransformer(V, T, D, heads, C, seed + 1);
  console.log(`model: one-block transformer, width ${D}, ${model.numParameters()} parameters`);
  const opt = new AdamW(model.parameters(), { lr: 3e-3, weightDecay: 1e-4 });
  const lr = cosineSchedule({ lrMax: 3e-3, lrMin: 3e-4, totalSteps: steps, warmupSteps: 20 });

  const accuracy = async () => {
    const logits = tidy(() => noGrad(() => model.forward(hx)));
    const z = await logits.toArray();
    logits.dispose();
    let right = 0;
    for (let i = 0; i < 512; i++) {
      let best = 0;
      for (let c = 1; c < C; c++) if (z[i * C + c] > z[i * C + best]) best = c;
      if (best === hy[i]) right++;
    }
    return right / 512;
  };

  const every = Math.max(1, Math.floor(steps / 12));
  let t0 = performance.now(), first = NaN, last = NaN;
  for (let s = 0; s < steps; s++) {
    const { ids, labels } = makeBatch(rng, B, T, V, C);
    opt.setLr(lr(s));
    const loss = tidy(() => {
      const loss = crossEntropy(model.forward(tensor(ids, [B, T])), tensor(labels, [B]));
      backward(loss);
      clipGradNorm(opt.params, 1);
      opt.step();
      opt.zeroGrad();
      return loss;
    });
    if (s === 0 || (s + 1) % every === 0 || s === steps - 1) {
      last = await loss.item();
      if (!Number.isFinite(last)) throw new Error(`loss became ${last} at step ${s + 1}`);
      if (s === 0) first = last;
      const acc = await accuracy();
      const dt = (performance.now() - t0) / 1000;
      console.log(
        `step ${String(s + 1).padStart(5)}  loss ${last.toFixed(4)}  held-out accuracy ` +
          `${(100 * acc).toFixed(1).padStart(5)}%  ` +
          `(${(B * (s === 0 ? 1 : every) / dt).toFixed(0)} sequences/s, ` +
          `pool ${(poolStats().allocatedBytes / 2 ** 20).toFixed(2)} MiB)`,
      );
      t0 = performance.now();
    }
    loss.dispose();
  }
  const mem = poolStats();
  console.log(
    `loss ${first.toFixed(4)} -> ${last.toFixed(4)} (${(first / last).toFixed(1)}x lower); ` +
      `GPU pool ${(mem.allocatedBytes / 2 ** 20).toFixed(2)} MiB`,
  );
  model.dispose();
  opt.dispose();
  hx.dispose();
  return 0;
}
