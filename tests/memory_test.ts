/**
 * 1000 training steps of a tiny transformer classifier (embedding, one pre-norm block, LayerNorm,
 * head, cross-entropy, gradient clipping, AdamW) with one tidy() per step must leave the buffer
 * pool flat: after warm-up, neither the bytes allocated on the GPU nor the bytes in use may grow.
 */
import assert from "node:assert/strict";
import { gpuTest } from "./util.ts";
import { poolStats } from "../kernels/runtime.ts";
import { backward } from "../nn/autograd.ts";
import { Embedding, Linear, TransformerBlock } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { mean } from "../nn/ops/index.ts";
import { crossEntropy } from "../nn/ops/nn.ts";
import { AdamW, clipGradNorm } from "../nn/optim.ts";
import { Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";

class Tiny extends Module {
  tok: Embedding;
  block: TransformerBlock;
  head: Linear;
  constructor(vocab: number, d: number, classes: number) {
    super();
    const rng = new Rng(1);
    this.tok = new Embedding(vocab, d, { rng });
    this.block = new TransformerBlock(d, 2, { rng, causal: true });
    this.head = new Linear(d, classes, { rng });
  }
  forward(ids: Tensor): Tensor {
    return this.head.forward(mean(this.block.forward(this.tok.forward(ids)), 1));
  }
}

gpuTest("memory: 1000 training steps leave the pool's allocatedBytes flat", async () => {
  const B = 4, T = 4, V = 8, C = 3;
  const rng = new Rng(2);
  const ids = tensor(Int32Array.from({ length: B * T }, () => rng.int(V)), [B, T]);
  const labels = tensor(Int32Array.from({ length: B }, (_, i) => i % C), [B]);
  const model = new Tiny(V, 8, C);
  const opt = new AdamW(model.parameters(), { lr: 1e-2 });
  const step = () =>
    tidy(() => {
      const loss = crossEntropy(model.forward(ids), labels);
      backward(loss);
      clipGradNorm(model.parameters(), 1);
      opt.step();
      opt.zeroGrad();
      return loss;
    });
  const losses: number[] = [];
  const t0 = performance.now();
  let base = poolStats();
  for (let s = 0; s < 1000; s++) {
    const loss = step();
    // Read a loss now and then: it bounds how far the CPU runs ahead of the GPU.
    if (s % 100 === 0) losses.push(await loss.item());
    loss.dispose();
    if (s === 19) base = poolStats(); // after warm-up: optimiser state and pool sizes settled
  }
  const end = poolStats();
  console.log(
    `1000 steps in ${((performance.now() - t0) / 1000).toFixed(1)} s; allocated ` +
      `${base.allocatedBytes} -> ${end.allocatedBytes} bytes, in use ${base.inUseBytes} -> ` +
      `${end.inUseBytes}; loss ${losses[0].toFixed(3)} -> ${losses.at(-1)!.toFixed(4)}`,
  );
  assert.ok(losses.at(-1)! < losses[0], "the model trained");
  assert.equal(end.allocatedBytes, base.allocatedBytes, "allocatedBytes grew: a leak");
  assert.equal(end.inUseBytes, base.inUseBytes, "inUseBytes grew: tensors outlive their step");
  [model, ids, labels].forEach((t) => t.dispose());
  opt.dispose();
});
