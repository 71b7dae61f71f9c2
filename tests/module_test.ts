/**
 * Modules and layers: PyTorch-style naming, modes, freezing, state dicts, save/load round trips
 * and their errors, each layer's forward against float64 CPU, and an OpenCLIP-style transformer
 * block against PyTorch (tests/fixtures/block_torch.safetensors, from make_block_fixture.py).
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { assertClose, gpuTest, randArray } from "./util.ts";
import { denseMatmulRef } from "../kernels/matmul_ref.ts";
import { poolStats } from "../kernels/runtime.ts";
import { backward } from "../nn/autograd.ts";
import { loadModule, saveModule } from "../nn/checkpoint.ts";
import {
  Embedding,
  type LayerAdapter,
  LayerNorm,
  Linear,
  manualSeed,
  MLP,
  MultiHeadAttention,
  TransformerBlock,
} from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { add, matmul, mul, sum } from "../nn/ops/index.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import { type Tensor, tensor, tidy, zeros } from "../nn/tensor.ts";

const FIXTURE = new URL("./fixtures/block_torch.safetensors", import.meta.url).pathname;

// ---- naming -----------------------------------------------------------------------------------

class Leaf extends Module {
  scale: Tensor;
  constructor() {
    super();
    this.scale = this.param("log_scale", zeros([1]));
  }
}

class Tree extends Module {
  first: Tensor = zeros([2]);
  leaf = new Leaf();
  heads = [new Linear(2, 3, { seed: 1 }), new Linear(3, 1, { seed: 2 })];
  stack: Tensor[] = [zeros([1]), zeros([4])];
  _cache: Tensor = zeros([5]); // underscore: not a member
  tied: Tensor;
  mask: Tensor;
  constructor() {
    super();
    this.tied = this.first; // the same tensor twice: listed once
    this.mask = this.buffer("attn_mask", zeros([3]));
  }
}

gpuTest("module: names are PyTorch-style dotted paths, own tensors first, deduplicated", () => {
  const t = new Tree();
  assert.deepEqual(t.namedParameters().map(([n]) => n), [
    "first",
    "stack.0",
    "stack.1",
    "leaf.log_scale",
    "heads.0.weight",
    "heads.0.bias",
    "heads.1.weight",
    "heads.1.bias",
  ]);
  assert.deepEqual(t.namedBuffers().map(([n]) => n), ["attn_mask"]);
  assert.deepEqual([...t.stateDict().keys()].slice(0, 4), [
    "first",
    "stack.0",
    "stack.1",
    "attn_mask",
  ]);
  assert.deepEqual(t.namedModules().map(([n]) => n), ["", "leaf", "heads.0", "heads.1"]);
  assert.deepEqual(t.namedParameters("model").map(([n]) => n)[3], "model.leaf.log_scale");
  assert.equal(t.numParameters(), 2 + 1 + 4 + 1 + 6 + 3 + 3 + 1);
  assert.ok(!t.parameters().includes(t.mask), "buffers are not parameters");
  t.dispose();
  t._cache.dispose();
});

gpuTest("module: a TransformerBlock has exactly PyTorch's state-dict names, in order", async () => {
  const file = await SafetensorsFile.open(FIXTURE);
  const torchNames = [...file.entries().keys()].filter((n) =>
    !["x", "w", "out", "out_causal"].includes(n) && !n.startsWith("grad.")
  );
  file.close();
  const block = new TransformerBlock(16, 2);
  assert.deepEqual([...block.stateDict().keys()], torchNames);
  class Tower extends Module {
    blocks = [new TransformerBlock(16, 2), new TransformerBlock(16, 2)];
  }
  const tower = new Tower();
  const names = tower.namedParameters().map(([n]) => n);
  assert.equal(names[2], "blocks.0.attn.in_proj_weight");
  assert.equal(names[12 + 5], "blocks.1.attn.out_proj.bias");
  assert.equal(names.length, 24);
  block.dispose();
  tower.dispose();
});

gpuTest("module: train/eval and freeze/unfreeze reach every descendant", () => {
  const block = new TransformerBlock(8, 2);
  block.eval();
  assert.ok(block.namedModules().every(([, m]) => !m.training));
  block.train();
  assert.ok(block.namedModules().every(([, m]) => m.training));
  block.freeze();
  assert.equal(block.trainableParameters().length, 0);
  block.mlp.unfreeze();
  assert.deepEqual(
    block.namedParameters().filter(([, t]) => t.requiresGrad).map(([n]) => n),
    ["mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"],
  );
  block.dispose();
});

// ---- layers against float64 CPU ----------------------------------------------------------------

gpuTest(
  "layers: Linear forward = x W^T + b (float64 CPU, atol 1e-5) and PyTorch's init",
  async () => {
    const lin = new Linear(33, 7, { seed: 3 });
    const bound = 1 / Math.sqrt(33);
    const [w, b] = [await lin.weight.toFloat32Array(), await lin.bias!.toArray()];
    assert.deepEqual(lin.weight.shape, [7, 33]);
    assert.ok([...w, ...b].every((v) => Math.abs(v) <= bound), "Uniform(-1/sqrt(in), 1/sqrt(in))");
    // Variance of U(-a, a) is a^2 / 3; 231 samples: within 25%.
    const variance = w.reduce((s, v) => s + v * v, 0) / w.length;
    assert.ok(Math.abs(variance / (bound * bound / 3) - 1) < 0.25, `variance ${variance}`);
    const xs = randArray(3 * 5 * 33, 4);
    const y = lin.forward(tensor(xs, [3, 5, 33]));
    assert.deepEqual(y.shape, [3, 5, 7]);
    assertClose(
      await y.toArray(),
      denseMatmulRef(xs, w, 1, 15, 7, 33, { transposeB: true, bias: b }),
      { atol: 1e-5 },
    );
    const noBias = new Linear(4, 2, { bias: false });
    assert.deepEqual(noBias.namedParameters().map(([n]) => n), ["weight"]);
    assert.throws(() => lin.forward(tensor(new Float32Array(8), [2, 4])), /Linear\(33, 7\)/);
    [lin, noBias, y].forEach((m) => m.dispose());
  },
);

gpuTest(
  "layers: seeds make layers reproducible; manualSeed resets the default generator",
  async () => {
    const a = await new Linear(5, 4, { seed: 9 }).weight.toArray();
    const b = await new Linear(5, 4, { seed: 9 }).weight.toArray();
    assert.deepEqual(a, b);
    manualSeed(42);
    const c = await new Linear(5, 4).weight.toArray();
    const d = await new Linear(5, 4).weight.toArray();
    manualSeed(42);
    assert.deepEqual(await new Linear(5, 4).weight.toArray(), c);
    assert.notDeepEqual(c, d);
  },
);

/** Adds x @ M to a Linear's output: stands in for a LoRA adapter. */
class AddProjection extends Module implements LayerAdapter {
  m: Tensor;
  constructor(inF: number, outF: number) {
    super();
    this.m = tensor(randArray(inF * outF, 5), [inF, outF], { requiresGrad: true });
  }
  adapt(x: Tensor, y: Tensor): Tensor {
    return add(y, matmul(x, this.m));
  }
}

gpuTest("layers: a Linear's adapter changes its output and is named under it", async () => {
  const lin = new Linear(6, 3, { seed: 1 });
  const x = tensor(randArray(4 * 6, 2), [4, 6]);
  const base = await lin.forward(x).toArray();
  const ad = new AddProjection(6, 3);
  lin.adapter = ad;
  assert.deepEqual(lin.namedParameters().map(([n]) => n), ["weight", "bias", "adapter.m"]);
  const got = await lin.forward(x).toArray();
  const extra = denseMatmulRef(await x.toArray(), await ad.m.toArray(), 1, 4, 3, 6);
  assertClose(got, base.map((v, i) => v + extra[i]), { atol: 1e-5 }, "adapted");
  lin.dispose();
});

gpuTest(
  "layers: LayerNorm, Embedding and MLP forward against float64 CPU (atol 1e-5)",
  async () => {
    // LayerNorm with non-trivial affine parameters.
    const ln = new LayerNorm(7);
    const w = randArray(7, 1, 0.5, 1.5), b = randArray(7, 2);
    ln.loadStateDict({ weight: { shape: [7], data: w }, bias: { shape: [7], data: b } });
    const xs = randArray(3 * 7, 3, -2, 2);
    const want = new Float64Array(21);
    for (let r = 0; r < 3; r++) {
      const row = xs.slice(r * 7, r * 7 + 7);
      const mu = row.reduce((s, v) => s + v, 0) / 7;
      const v = row.reduce((s, x) => s + (x - mu) ** 2, 0) / 7;
      for (let j = 0; j < 7; j++) {
        want[r * 7 + j] = (row[j] - mu) / Math.sqrt(v + 1e-5) * w[j] +
          b[j];
      }
    }
    assertClose(await ln.forward(tensor(xs, [3, 7])).toArray(), want, { atol: 1e-5 }, "layerNorm");
    // Embedding: rows of the table.
    const emb = new Embedding(11, 4, { seed: 3 });
    const table = await emb.weight.toArray();
    const ids = [10, 0, 3, 3];
    const rows = await emb.forward(tensor(Int32Array.from(ids), [2, 2])).toArray();
    assertClose(rows, ids.flatMap((i) => [...table.slice(i * 4, i * 4 + 4)]), { atol: 0 }, "rows");
    // MLP: Linear, ReLU, Linear.
    const mlp = new MLP([5, 9, 2], { seed: 4 });
    assert.deepEqual(mlp.namedParameters().map(([n]) => n), [
      "layers.0.weight",
      "layers.0.bias",
      "layers.1.weight",
      "layers.1.bias",
    ]);
    const x = randArray(3 * 5, 6);
    const [w0, b0, w1, b1] = await Promise.all(mlp.parameters().map((t) => t.toArray()));
    const h = denseMatmulRef(x, w0, 1, 3, 9, 5, { transposeB: true, bias: b0 }).map((v) =>
      Math.max(v, 0)
    );
    const ref = denseMatmulRef(h, w1, 1, 3, 2, 9, { transposeB: true, bias: b1 });
    assertClose(await mlp.forward(tensor(x, [3, 5])).toArray(), ref, { atol: 1e-5 }, "mlp");
    [ln, emb, mlp].forEach((m) => m.dispose());
  },
);

// ---- the transformer block against PyTorch -----------------------------------------------------

for (const causal of [false, true]) {
  gpuTest(
    `layers: TransformerBlock (causal ${causal}) matches PyTorch: out atol 1e-4`,
    async () => {
      const block = new TransformerBlock(16, 2);
      const res = await loadModule(block, FIXTURE, { strict: false });
      assert.deepEqual(res.missing, []);
      assert.ok(res.unexpected.includes("out_causal") && res.unexpected.includes("grad.x"));
      assert.equal(res.metadata.source, "make_block_fixture.py");
      const file = await SafetensorsFile.open(FIXTURE);
      const read = (n: string) => file.readFloat32(n);
      const x = tensor(await read("x"), [2, 5, 16], { requiresGrad: true });
      const w = tensor(await read("w"), [2, 5, 16]);
      const y = block.forward(x, { causal });
      assertClose(await y.toArray(), await read(causal ? "out_causal" : "out"), {
        atol: 1e-4,
        rtol: 1e-4,
      }, "block output");
      if (causal) {
        // Gradients of sum(w * block(x)) for the input and every parameter.
        backward(sum(mul(y, w)));
        assertClose(
          await x.grad!.toArray(),
          await read("grad.x"),
          { atol: 1e-4, rtol: 1e-3 },
          "dx",
        );
        for (const [name, p] of block.namedParameters()) {
          assertClose(await p.grad!.toArray(), await read("grad." + name), {
            atol: 1e-4,
            rtol: 1e-3,
          }, `d ${name}`);
        }
      }
      file.close();
      block.dispose();
      x.dispose();
    },
  );
}

gpuTest("layers: MultiHeadAttention refuses bad shapes with the layer in the message", () => {
  assert.throws(() => new MultiHeadAttention(10, 3), /divisible/);
  const mha = new MultiHeadAttention(8, 2);
  assert.throws(() => mha.forward(zeros([2, 3, 6])), /MultiHeadAttention\(8\).*\[2,3,6\]/);
  mha.dispose();
});

// ---- state dicts and checkpoints -------------------------------------------------------------

const tmp = () => join(Deno.makeTempDirSync({ prefix: "module_test_" }), "m.safetensors");

gpuTest(
  "checkpoint: save/load round trip restores every value exactly, with metadata",
  async () => {
    const a = new MLP([5, 9, 2], { seed: 1 });
    const b = new MLP([5, 9, 2], { seed: 2 });
    const path = tmp();
    await saveModule(a, path, { epoch: "3" });
    const before = b.parameters();
    const res = await loadModule(b, path);
    assert.deepEqual(res, { missing: [], unexpected: [], metadata: { epoch: "3" } });
    assert.ok(b.parameters().every((t, i) => t === before[i]), "parameters keep their identity");
    for (
      const [[n, ta], [, tb]] of a.namedParameters().map((e, i) => [e, b.namedParameters()[i]])
    ) {
      assert.deepEqual(await tb.toArray(), await ta.toArray(), n);
    }
    a.dispose();
    b.dispose();
    Deno.removeSync(dirname(path), { recursive: true });
  },
);

gpuTest("checkpoint: mismatches name the file, the tensor and both shapes", async () => {
  const path = tmp();
  const small = new MLP([5, 9, 2], { seed: 1 });
  await saveModule(small, path);
  const wide = new MLP([5, 8, 2], { seed: 1 });
  await assert.rejects(
    () => loadModule(wide, path),
    (e: Error) =>
      e.message.includes(path) && e.message.includes(`"layers.0.weight"`) &&
      e.message.includes("[9,5]") && e.message.includes("[8,5]"),
  );
  // Shapes are checked even when names need not match.
  await assert.rejects(() => loadModule(wide, path, { strict: false }), /layers\.0\.weight/);
  const deeper = new MLP([5, 9, 2, 2], { seed: 1 });
  await assert.rejects(() => loadModule(deeper, path), /"layers\.2\.weight" \[2,2\].*missing/);
  const res = await loadModule(deeper, path, { strict: false });
  assert.deepEqual(res.missing, ["layers.2.weight", "layers.2.bias"]);
  const shallow = new MLP([5, 9], { seed: 1 });
  // (the file lists tensors by name: layers.1.bias comes first)
  await assert.rejects(
    () => loadModule(shallow, path),
    /"layers\.1\.bias" \[2\].*not in the module/,
  );
  // A failed load writes nothing.
  const w0 = await wide.layers[1].weight.toArray();
  await writeSafetensors(path, {
    "layers.0.weight": { dtype: "F32", shape: [8, 5], data: new Float32Array(40) },
    "layers.0.bias": { dtype: "F32", shape: [8], data: new Float32Array(8) },
    "layers.1.weight": { dtype: "F32", shape: [2, 8], data: new Float32Array(16) },
    "layers.1.bias": { dtype: "F32", shape: [3], data: new Float32Array(3) },
  });
  await assert.rejects(() => loadModule(wide, path), /"layers\.1\.bias" has shape \[3\].*\[2\]/);
  assert.deepEqual(await wide.layers[1].weight.toArray(), w0);
  [small, wide, deeper, shallow].forEach((m) => m.dispose());
  Deno.removeSync(dirname(path), { recursive: true });
});

gpuTest("module: loadStateDict copies tensors on the GPU and checks before writing", async () => {
  const a = new Linear(3, 2, { seed: 1 }), b = new Linear(3, 2, { seed: 2 });
  b.loadStateDict(a.stateDict());
  assert.deepEqual(await b.weight.toArray(), await a.weight.toArray());
  const bad = { weight: zeros([2, 3]), bias: zeros([3]) };
  assert.throws(() => a.loadStateDict(bad), /"bias" has shape \[3\] in the source but \[2\]/);
  assert.notDeepEqual([...await a.weight.toArray()], [0, 0, 0, 0, 0, 0], "nothing was written");
  assert.throws(() => a.loadStateDict({ weight: zeros([2, 3]) }), /"bias" \[2\].*missing/);
  assert.throws(
    () => a.loadStateDict({ weight: zeros([2, 3]), bias: zeros([2]), extra: zeros([1]) }),
    /"extra" \[1\].*not in the module/,
  );
  const r = a.loadStateDict({ weight: zeros([2, 3]) }, { strict: false });
  assert.deepEqual(r, { missing: ["bias"], unexpected: [] });
  assert.deepEqual([...await a.weight.toArray()], [0, 0, 0, 0, 0, 0]);
  [a, b, bad.weight, bad.bias].forEach((m) => m.dispose());
});

gpuTest("module: dispose() returns every parameter's buffer to the pool", () => {
  const before = poolStats().inUseBytes;
  const block = tidy(() => new TransformerBlock(16, 2));
  assert.ok(poolStats().inUseBytes > before, "parameters survive an enclosing tidy()");
  block.dispose();
  assert.equal(poolStats().inUseBytes, before);
});
