/**
 * Optimisers, gradient clipping and the cosine schedule against float64 CPU re-implementations of
 * PyTorch's update rules; the CPU rules are themselves checked against torch.optim
 * (tests/fixtures/optim_torch.json, made by make_optim_fixture.py).
 */
import assert from "node:assert/strict";
import { assertClose, gpuTest, randArray } from "./util.ts";
import { counters } from "../kernels/runtime.ts";
import { clipGradNormRef } from "../kernels/optim_ref.ts";
import { Adam, AdamW, clipGradNorm, cosineSchedule, Optimizer, SGD } from "../nn/optim.ts";
import { type Tensor, tensor } from "../nn/tensor.ts";

interface Case {
  name: string;
  opt: "SGD" | "Adam" | "AdamW";
  lr: number;
  lr2: number;
  momentum?: number;
  nesterov?: boolean;
  betas?: [number, number];
  eps?: number;
  weight_decay: number;
  expected: number[][];
}
const fixture: { sizes: number[]; steps: number; lr_switch: number; cases: Case[] } = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/optim_torch.json", import.meta.url)),
);

const init0 = (k: number, n: number) =>
  Float64Array.from({ length: n }, (_, i) => Math.cos(0.37 * i + k));
const gradAt = (k: number, n: number, t: number) =>
  Float64Array.from({ length: n }, (_, i) => Math.sin(0.91 * i + 1.7 * t + k) * (1 + 0.5 * k));

/** Float64 PyTorch update rules, one parameter at a time. */
function cpuRun(c: Case): Float64Array[] {
  return fixture.sizes.map((n, k) => {
    const p = init0(k, n);
    const s1 = new Float64Array(n), s2 = new Float64Array(n);
    const [b1, b2] = c.betas ?? [0.9, 0.999];
    for (let t = 1; t <= fixture.steps; t++) {
      const lr = t <= fixture.lr_switch ? c.lr : c.lr2;
      const g = gradAt(k, n, t);
      const wd = c.weight_decay;
      for (let i = 0; i < n; i++) {
        if (c.opt === "SGD") {
          let gi = g[i] + wd * p[i];
          const mom = c.momentum ?? 0;
          if (mom > 0) {
            s1[i] = t === 1 ? gi : mom * s1[i] + gi;
            gi = c.nesterov ? gi + mom * s1[i] : s1[i];
          }
          p[i] -= lr * gi;
        } else {
          let gi = g[i];
          if (c.opt === "AdamW") p[i] *= 1 - lr * wd;
          else gi += wd * p[i];
          s1[i] = b1 * s1[i] + (1 - b1) * gi;
          s2[i] = b2 * s2[i] + (1 - b2) * gi * gi;
          const denom = Math.sqrt(s2[i]) / Math.sqrt(1 - b2 ** t) + c.eps!;
          p[i] -= (lr / (1 - b1 ** t)) * s1[i] / denom;
        }
      }
    }
    return p;
  });
}

function makeOptimizer(c: Case, params: Tensor[]): Optimizer {
  if (c.opt === "SGD") {
    return new SGD(params, {
      lr: c.lr,
      momentum: c.momentum,
      nesterov: c.nesterov,
      weightDecay: c.weight_decay,
    });
  }
  const o = { lr: c.lr, betas: c.betas, eps: c.eps, weightDecay: c.weight_decay };
  return c.opt === "Adam" ? new Adam(params, o) : new AdamW(params, o);
}

Deno.test("optim: float64 CPU rules reproduce torch.optim (atol 1e-12)", () => {
  for (const c of fixture.cases) {
    cpuRun(c).forEach((p, k) => assertClose(p, c.expected[k], { atol: 1e-12 }, `${c.name} #${k}`));
  }
});

for (const c of fixture.cases) {
  gpuTest(`optim: ${c.name} ${fixture.steps} steps match float64 CPU (atol 1e-5)`, async () => {
    const params = fixture.sizes.map((n, k) =>
      tensor(Float32Array.from(init0(k, n)), [n], { requiresGrad: true })
    );
    const opt = makeOptimizer(c, params);
    const reads = counters.readbacks;
    for (let t = 1; t <= fixture.steps; t++) {
      if (t === fixture.lr_switch + 1) opt.setLr(c.lr2);
      params.forEach((p, k) => (p.grad = tensor(Float32Array.from(gradAt(k, p.size, t)))));
      opt.step();
      opt.zeroGrad();
      assert.ok(params.every((p) => p.grad === null), "zeroGrad leaves no gradient");
    }
    assert.equal(counters.readbacks, reads, "step() must not read back");
    const want = cpuRun(c);
    for (let k = 0; k < params.length; k++) {
      assertClose(await params[k].toArray(), want[k], { atol: 1e-5 }, `${c.name} param ${k}`);
    }
    // Also straight against torch, same tolerance.
    for (let k = 0; k < params.length; k++) {
      assertClose(await params[k].toArray(), c.expected[k], { atol: 1e-5 }, `${c.name} vs torch`);
    }
    opt.dispose();
    params.forEach((p) => p.dispose());
  });
}

gpuTest("optim: a parameter without a gradient is skipped and its steps not counted", async () => {
  const a = tensor([1, 2, 3], [3], { requiresGrad: true });
  const b = tensor([4, 5], [2], { requiresGrad: true });
  const lr = 0.1, eps = 1e-8;
  const opt = new Adam([a, b], { lr, eps });
  a.grad = tensor([1, 1, 1]);
  opt.step();
  assert.deepEqual([...await b.toArray()], [4, 5], "no gradient: untouched (exact)");
  opt.zeroGrad();
  // b's first update, at the optimiser's second step: PyTorch's bias correction uses b's own
  // step count (1), which makes the update lr * g / (|g| + eps). Tolerance 1e-6.
  a.grad = tensor([1, 1, 1]);
  b.grad = tensor([0.5, -2]);
  opt.step();
  assertClose(await b.toArray(), [4 - lr * 0.5 / (0.5 + eps), 5 + lr * 2 / (2 + eps)], {
    atol: 1e-6,
  }, "b");
  opt.dispose();
  a.dispose();
  b.dispose();
});

gpuTest("optim: bad hyper-parameters are refused with clear errors", () => {
  const p = tensor([1], [1], { requiresGrad: true });
  assert.throws(() => new SGD([p], { lr: 0.1, nesterov: true }), /nesterov/);
  assert.throws(() => new SGD([p], { lr: -1 }), /learning rate/);
  assert.throws(() => new Adam([p], { lr: 0.1, betas: [1, 0.9] }), /betas/);
  assert.throws(() => new AdamW([p, p], { lr: 0.1 }), /listed twice/);
  assert.throws(() => clipGradNorm([p], 0), /maxNorm/);
  p.dispose();
});

for (const maxNorm of [0.5, 1e4]) {
  gpuTest(`optim: clipGradNorm(max ${maxNorm}) matches CPU (rtol 1e-5)`, async () => {
    // Odd sizes, one big enough to be summed by many workgroups; one parameter has no gradient.
    const sizes = [1, 7, 33, 129, 70001];
    const grads = sizes.map((n, i) => randArray(n, 10 + i, -0.2, 0.2));
    const params = sizes.map((n) => tensor(new Float32Array(n), [n], { requiresGrad: true }));
    params.forEach((p, i) => (p.grad = tensor(grads[i])));
    const idle = tensor([1, 2], [2], { requiresGrad: true });
    const reads = counters.readbacks;
    const norm = clipGradNorm([...params, idle], maxNorm);
    assert.equal(counters.readbacks, reads, "clipGradNorm must not read back");
    assert.deepEqual(norm.shape, []);
    const ref = clipGradNormRef(grads, maxNorm);
    assert.ok(maxNorm < ref.norm === (maxNorm === 0.5), "the test covers both clipped and not");
    assertClose([await norm.item()], [ref.norm], { atol: 0, rtol: 1e-5 }, "norm");
    for (let i = 0; i < params.length; i++) {
      assertClose(await params[i].grad!.toArray(), ref.out[i], { atol: 1e-9, rtol: 1e-5 }, `g${i}`);
    }
    norm.dispose();
    [...params, idle].forEach((p) => p.dispose());
  });
}

gpuTest(
  "optim: clipGradNorm with a NaN, Inf or overflowing gradient: NaN norm, nothing scaled",
  async () => {
    const base = randArray(300, 40, -0.2, 0.2);
    const cases: [string, (g: Float32Array) => void][] = [
      ["NaN", (g) => (g[17] = NaN)],
      ["+Inf", (g) => (g[250] = Infinity)],
      ["-Inf", (g) => (g[0] = -Infinity)],
      // Squares overflow f32 although every value is finite (float64 would not overflow).
      ["overflow", (g) => g.fill(1e30, 100, 110)],
    ];
    for (const [what, poison] of cases) {
      const bad = Float32Array.from(base);
      poison(bad);
      const grads = [randArray(7, 41), bad];
      const params = grads.map((g) =>
        tensor(new Float32Array(g.length), [g.length], { requiresGrad: true })
      );
      params.forEach((p, i) => (p.grad = tensor(grads[i])));
      const before = await Promise.all(params.map((p) => p.toArray()));
      const norm = clipGradNorm(params, 0.5);
      assert.ok(Number.isNaN(await norm.item()), `${what}: the norm is NaN`);
      for (let i = 0; i < params.length; i++) {
        assert.deepEqual(
          await params[i].grad!.toArray(),
          grads[i],
          `${what}: gradient ${i} untouched`,
        );
        assert.deepEqual(await params[i].toArray(), before[i], `${what}: parameter ${i} untouched`);
      }
      if (what !== "overflow") assert.ok(Number.isNaN(clipGradNormRef(grads, 0.5).norm));
      norm.dispose();
      params.forEach((p) => p.dispose());
    }
  },
);

gpuTest("optim: clipGradNorm with no gradients returns 0 (exact)", async () => {
  const p = tensor([3], [1], { requiresGrad: true });
  const n = clipGradNorm([p], 1);
  assert.equal(await n.item(), 0);
  n.dispose();
  p.dispose();
});

Deno.test("optim: cosineSchedule follows warm-up then PyTorch's cosine annealing (1e-12)", () => {
  const lr = cosineSchedule({ lrMax: 1e-3, lrMin: 1e-4, totalSteps: 110, warmupSteps: 10 });
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);
  close(lr(0), 1e-4);
  close(lr(4), 5e-4);
  close(lr(9), 1e-3);
  close(lr(10), 1e-3);
  // Halfway through the annealing the rate is the mean of max and min.
  close(lr(60), 5.5e-4);
  close(lr(110), 1e-4);
  close(lr(500), 1e-4);
  // CosineAnnealingLR closed form at an arbitrary step.
  const t = 37;
  close(lr(10 + t), 1e-4 + 0.5 * 9e-4 * (1 + Math.cos(Math.PI * t / 100)));
  for (let s = 10; s < 110; s++) assert.ok(lr(s + 1) <= lr(s), "non-increasing after warm-up");
  const noWarm = cosineSchedule({ lrMax: 2, totalSteps: 4 });
  close(noWarm(0), 2);
  close(noWarm(2), 1);
  close(noWarm(4), 0);
  assert.throws(() => cosineSchedule({ lrMax: 1, totalSteps: 5, warmupSteps: 6 }), /warmupSteps/);
});
