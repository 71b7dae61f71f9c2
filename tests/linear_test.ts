/**
 * `linear(x, w, b, {activation})`: Linear + activation in one matmul dispatch (the epilogue of
 * kernels/matmul.ts). Forward and the analytic backward against float64 on odd shapes, with and
 * without gradients (the dispatch then also stores the pre-activation), finite differences, one
 * dispatch per call, and FeedForward using it with the same result as the unfused composition.
 */
import assert from "node:assert/strict";
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { geluRef, quickGeluRef } from "../kernels/activation_ref.ts";
import { denseMatmulRef } from "../kernels/matmul_ref.ts";
import { counters } from "../kernels/runtime.ts";
import { backward, noGrad } from "../nn/autograd.ts";
import { FeedForward, type LayerAdapter, Linear } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { keep, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import {
  add,
  gelu,
  linear,
  type LinearActivation,
  matmul,
  mul,
  quickGelu,
  relu,
  sum,
} from "../nn/ops/index.ts";

/** act(v) and act'(v) in float64. */
const ACT: Record<LinearActivation, (v: number) => { y: number; dy: number }> = {
  none: (v) => ({ y: v, dy: 1 }),
  relu: (v) => ({ y: Math.max(v, 0), dy: v > 0 ? 1 : 0 }),
  gelu: geluRef,
  quickGelu: quickGeluRef,
};

// Sums of K = 33 products of values in [-1, 1], then an activation with slope <= 1.1.
const FWD = { atol: 2e-5, rtol: 1e-5 };
const BWD = { atol: 1e-4, rtol: 1e-4 };

for (const act of ["none", "relu", "gelu", "quickGelu"] as const) {
  gpuTest(`linear ${act}: forward and backward vs float64 ([2, 7, 33] x [17, 33]^T)`, async () => {
    const lead = [2, 7], rows = 14, K = 33, N = 17;
    const xd = randArray(rows * K, 1), wd = randArray(N * K, 2), bd = randArray(N, 3);
    const gd = randArray(rows * N, 4);
    // float64: z = x W^T + b, y = act(z), dz = g act'(z).
    const z = denseMatmulRef(xd, wd, 1, rows, N, K, { transposeB: true, bias: bd });
    const y = z.map((v) => ACT[act](v).y);
    const dz = z.map((v, i) => gd[i] * ACT[act](v).dy);
    const dx = denseMatmulRef(dz, wd, 1, rows, K, N);
    const dw = denseMatmulRef(dz, xd, 1, N, K, rows, { transposeA: true });
    const db = new Float64Array(N);
    dz.forEach((v, i) => (db[i % N] += v));

    // Without gradients: the plain fused dispatch.
    const y0 = noGrad(() =>
      linear(tensor(xd, [...lead, K]), tensor(wd, [N, K]), tensor(bd, [N]), { activation: act })
    );
    assert.deepEqual(y0.shape, [...lead, N]);
    assertClose(await y0.toArray(), y, FWD, `${act} forward, no grad`);
    y0.dispose();
    // With gradients: the dispatch also stores the pre-activation for the backward.
    const [yt, gx, gw, gb] = tidy(() => {
      const x = tensor(xd, [...lead, K], { requiresGrad: true });
      const w = tensor(wd, [N, K], { requiresGrad: true });
      const b = tensor(bd, [N], { requiresGrad: true });
      const out = linear(x, w, b, { activation: act });
      backward(out, { grad: tensor(gd, [...lead, N]) });
      const grads = [x.grad!, w.grad!, b.grad!];
      x.grad = w.grad = b.grad = null;
      return [keep(out), ...grads];
    });
    assert.deepEqual(gx.shape, [...lead, K]);
    assertClose(await yt.toArray(), y, FWD, `${act} forward`);
    assertClose(await gx.toArray(), dx, BWD, `${act} dx`);
    assertClose(await gw.toArray(), dw, BWD, `${act} dW`);
    assertClose(await gb.toArray(), db, BWD, `${act} db`);
    [yt, gx, gw, gb].forEach((t) => t.dispose());
  });
}

gpuTest(
  "linear: gradients match finite differences (gelu, quickGelu; rank-1 input, no bias)",
  async () => {
    for (const activation of ["gelu", "quickGelu"] as const) {
      await gradCheck(
        ([x, w, b]) => linear(x, w, b, { activation }),
        [
          { data: randArray(3 * 5, 11, -2, 2), shape: [3, 5] },
          { data: randArray(6 * 5, 12), shape: [6, 5] },
          { data: randArray(6, 13), shape: [6] },
        ],
        { probes: 30 },
      );
      await gradCheck(
        ([x, w]) => linear(x, w, null, { activation }),
        [
          { data: randArray(7, 14, -2, 2), shape: [7] },
          { data: randArray(4 * 7, 15), shape: [4, 7] },
        ],
      );
    }
  },
);

gpuTest(
  "linear: one dispatch forward, with or without gradients; bad shapes are refused",
  () => {
    const x = tensor(randArray(9 * 8, 21), [9, 8], { requiresGrad: true });
    const w = tensor(randArray(12 * 8, 22), [12, 8], { requiresGrad: true });
    const b = tensor(randArray(12, 23), [12]);
    for (const grad of [false, true]) {
      const d0 = counters.dispatches;
      const y = grad
        ? linear(x, w, b, { activation: "gelu" })
        : noGrad(() => linear(x, w, b, { activation: "gelu" }));
      assert.equal(counters.dispatches - d0, 1, `one dispatch (grad ${grad})`);
      y.dispose();
    }
    assert.throws(() => linear(x, tensor(randArray(8, 1), [8])), /does not match weight/);
    assert.throws(() => linear(x, w, tensor(randArray(5, 1), [5])), /bias .* must be \[12\]/);
    assert.throws(
      () => linear(x, w, b, { activation: "tanh" as LinearActivation }),
      /unknown activation "tanh"/,
    );
    [x, w, b].forEach((t) => t.dispose());
  },
);

gpuTest(
  "FeedForward: fused c_fc + activation equals the unfused composition, one dispatch fewer",
  async () => {
    for (
      const [activation, f] of [["gelu", gelu], ["quickGelu", quickGelu], ["relu", relu]] as const
    ) {
      const ff = new FeedForward(16, 40, { activation, seed: 5 });
      const xd = randArray(3 * 5 * 16, 31);
      const unfused = (x: Tensor) => ff.proj.forward(f(ff.fc.forward(x)));
      const [fused, plain] = tidy(() => {
        const x = tensor(xd, [3, 5, 16]);
        const d0 = counters.dispatches;
        const a = ff.forward(x);
        const d1 = counters.dispatches;
        const b = unfused(x);
        assert.equal(
          counters.dispatches - d1,
          d1 - d0 + 1,
          `${activation}: the fused MLP saves a dispatch`,
        );
        return [a, b];
      });
      assertClose(
        await fused.toArray(),
        await plain.toArray(),
        { atol: 1e-6, rtol: 1e-5 },
        activation,
      );
      // Gradients of the parameters agree too.
      const grads = async (fn: (x: Tensor) => Tensor) => {
        const gs = tidy(() => {
          backward(
            sum(mul(fn(tensor(xd, [3, 5, 16])), tensor(randArray(3 * 5 * 16, 32), [3, 5, 16]))),
          );
          const out = ff.parameters().map((p) => p.grad!);
          ff.parameters().forEach((p) => (p.grad = null));
          return out;
        });
        const arrays = await Promise.all(gs.map((g) => g.toArray()));
        gs.forEach((g) => g.dispose());
        return arrays;
      };
      const [ga, gb] = [await grads((x) => ff.forward(x)), await grads(unfused)];
      ga.forEach((g, i) =>
        assertClose(g, gb[i], { atol: 1e-5, rtol: 1e-4 }, `${activation} grad ${i}`)
      );
      fused.dispose();
      plain.dispose();
    }
    // A layer with an adapter keeps the unfused path: the adapter sees the product first.
    class Shift extends Module implements LayerAdapter {
      adapt(_x: Tensor, y: Tensor): Tensor {
        return add(y, 1);
      }
    }
    const lin = new Linear(4, 3, { seed: 1 });
    lin.adapter = new Shift();
    const [adapted, want] = tidy(() => {
      const x = tensor(randArray(8, 2), [2, 4]);
      return [
        lin.forwardActivated(x, "gelu"),
        gelu(add(matmul(x, lin.weight, { transposeB: true, bias: lin.bias }), 1)),
      ];
    });
    assertClose(
      await adapted.toArray(),
      await want.toArray(),
      { atol: 1e-6 },
      "adapter, then gelu",
    );
    adapted.dispose();
    want.dispose();
  },
);
