/**
 * End-to-end training: a 2-layer MLP and a one-block transformer classifier, each trained on
 * generated data, must cut their cross-entropy at least tenfold within 200 steps.
 */
import assert from "node:assert/strict";
import { gpuTest } from "./util.ts";
import { backward } from "../nn/autograd.ts";
import { Embedding, LayerNorm, Linear, MLP, TransformerBlock } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { add, mean } from "../nn/ops/index.ts";
import { crossEntropy } from "../nn/ops/nn.ts";
import { Adam, AdamW, clipGradNorm, cosineSchedule, type Optimizer } from "../nn/optim.ts";
import { randn, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";

/** Token embedding + learned positions -> one pre-norm block -> LayerNorm -> mean -> Linear. */
class TinyTransformer extends Module {
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
 * Run `steps` full-batch steps of `lossOf` with `opt`, one tidy() each; returns the loss before
 * the first update and after the last (read back only at those two points).
 */
async function train(
  lossOf: () => Tensor,
  opt: Optimizer,
  steps: number,
  opts: { clip?: number; lr?: (step: number) => number } = {},
): Promise<{ first: number; last: number }> {
  let first = NaN;
  for (let s = 0; s < steps; s++) {
    if (opts.lr) opt.setLr(opts.lr(s));
    const loss = tidy(() => {
      const loss = lossOf();
      backward(loss);
      if (opts.clip) clipGradNorm(opt.params, opts.clip);
      opt.step();
      opt.zeroGrad();
      return loss;
    });
    if (s === 0) first = await loss.item();
    loss.dispose();
  }
  const final = tidy(lossOf);
  const last = await final.item();
  final.dispose();
  return { first, last };
}

gpuTest("train: a 2-layer MLP on 4 Gaussian blobs cuts its loss >= 10x in 200 steps", async () => {
  // 128 points in 8-D around 4 random centres (class = centre), unit noise.
  const rng = new Rng(11);
  const N = 128, F = 8, C = 4;
  const centres = Array.from(
    { length: C },
    () => Array.from({ length: F }, () => 2 * rng.normal()),
  );
  const xs = new Float32Array(N * F), ys = new Int32Array(N);
  for (let i = 0; i < N; i++) {
    ys[i] = i % C;
    for (let j = 0; j < F; j++) xs[i * F + j] = centres[ys[i]][j] + rng.normal();
  }
  const x = tensor(xs, [N, F]), y = tensor(ys, [N]);
  const mlp = new MLP([F, 32, C], { seed: 1 });
  const opt = new Adam(mlp.parameters(), { lr: 1e-2 });
  const { first, last } = await train(() => crossEntropy(mlp.forward(x), y), opt, 200);
  console.log(
    `MLP: loss ${first.toFixed(4)} -> ${last.toFixed(5)} (${(first / last).toFixed(1)}x)`,
  );
  assert.ok(last * 10 <= first, `loss ${first} -> ${last}: less than tenfold`);
  [mlp, x, y].forEach((t) => t.dispose());
  opt.dispose();
});

gpuTest("train: a one-block transformer classifier cuts its loss >= 10x in 200 steps", async () => {
  // Sequences of 8 tokens from a vocabulary of 16; the class is the token at a position chosen by
  // the first token, modulo 4. A fixed batch of 48: the test is about optimisation working end to
  // end (embedding, positions, attention, MLP, LayerNorm, head), not about generalisation.
  const rng = new Rng(5);
  const B = 48, T = 8, V = 16, C = 4;
  const ids = new Int32Array(B * T), labels = new Int32Array(B);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) ids[b * T + t] = rng.int(V);
    labels[b] = ids[b * T + 1 + (ids[b * T] % (T - 1))] % C;
  }
  const x = tensor(ids, [B, T]), y = tensor(labels, [B]);
  const model = new TinyTransformer(V, T, 32, 4, C, 3);
  const steps = 200;
  const opt = new AdamW(model.parameters(), { lr: 3e-3, weightDecay: 1e-4 });
  const lr = cosineSchedule({ lrMax: 3e-3, lrMin: 3e-4, totalSteps: steps, warmupSteps: 10 });
  const t0 = performance.now();
  const { first, last } = await train(() => crossEntropy(model.forward(x), y), opt, steps, {
    clip: 1,
    lr,
  });
  console.log(
    `transformer: loss ${first.toFixed(4)} -> ${last.toFixed(5)} (${(first / last).toFixed(1)}x) ` +
      `in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  assert.ok(last * 10 <= first, `loss ${first} -> ${last}: less than tenfold`);
  [model, x, y].forEach((t) => t.dispose());
  opt.dispose();
});
