/**
 * crossEntropy (all reductions, label smoothing, bad labels) and dropout (mask fraction, the CPU
 * mirror of the mask, determinism, gradient, identity cases).
 */
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { crossEntropyRef } from "../kernels/cross_entropy_ref.ts";
import { ROW_CASES, ROW_LAUNCHES } from "./util.ts";
import { crossEntropyBackward, crossEntropyForward } from "../kernels/cross_entropy.ts";
import { dropoutKeep, dropoutRef } from "../kernels/dropout_ref.ts";
import { backward } from "../nn/autograd.ts";
import { empty, ones, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { crossEntropy, dropout } from "../nn/ops/nn.ts";

const LOSS = { atol: 1e-5, rtol: 1e-5 };
const GRAD = { atol: 1e-6, rtol: 1e-4 };

function randLabels(B: number, C: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: B }, () => rng.int(C));
}

/** Loss and logits gradient for upstream gradient `g` (scalar or per row). */
async function ceRun(
  xd: Float32Array,
  labels: Int32Array,
  B: number,
  C: number,
  opts: Parameters<typeof crossEntropy>[2],
  g: Float32Array,
): Promise<{ loss: Float32Array; dx: Float32Array }> {
  const { loss, dx } = tidy(() => {
    const x = tensor(xd, [B, C], { requiresGrad: true });
    const loss = crossEntropy(x, tensor(labels, [B]), opts);
    backward(loss, { grad: tensor(g, loss.shape) });
    const dx = x.grad!;
    x.grad = null;
    return { loss, dx };
  });
  const out = {
    loss: (await loss.toArray()) as Float32Array,
    dx: (await dx.toArray()) as Float32Array,
  };
  loss.dispose();
  dx.dispose();
  return out;
}

gpuTest("crossEntropy: every reduction and smoothing matches float64", async () => {
  const shapes = [[1, 1], [5, 7], [3, 2], [64, 1000], [4, 33], [2, 8195]];
  for (const [si, [B, C]] of shapes.entries()) {
    const xd = randArray(B * C, 700 + si, -6, 6);
    const labels = randLabels(B, C, 800 + si);
    for (const smooth of [0, 0.1]) {
      for (const reduction of ["mean", "sum", "none"] as const) {
        const g = reduction === "none" ? randArray(B, 900 + si) : new Float32Array([0.7]);
        const gRow = reduction === "none"
          ? g
          : new Float32Array(B).fill(reduction === "mean" ? 0.7 / B : 0.7);
        const got = await ceRun(xd, labels, B, C, { reduction, labelSmoothing: smooth }, g);
        const ref = crossEntropyRef(xd, labels, B, C, smooth, gRow);
        const label = `crossEntropy [${B},${C}] ${reduction} smooth=${smooth}`;
        const sum = ref.loss.reduce((a, b) => a + b, 0);
        const expected = reduction === "none" ? ref.loss : [reduction === "mean" ? sum / B : sum];
        assertClose(got.loss, expected, LOSS, label);
        assertClose(got.dx, ref.dx, GRAD, `${label} grad`);
      }
    }
  }
});

gpuTest("crossEntropy: every launch shape matches float64", async () => {
  for (const opts of ROW_LAUNCHES) {
    for (const [B, C] of ROW_CASES) {
      const xd = randArray(B * C, 1000 + C, -4, 4), labels = randLabels(B, C, C);
      const g = randArray(B, 5 + C);
      const [x, lab, gt] = [tensor(xd, [B, C]), tensor(labels, [B]), tensor(g, [B])];
      const [loss, lse, dx] = [empty([B]), empty([B]), empty([B, C])];
      crossEntropyForward(x.buf, lab.buf, loss.buf, lse.buf, B, C, 0.2, opts);
      crossEntropyBackward(x.buf, lab.buf, lse.buf, gt.buf, dx.buf, B, C, 0.2, 1, 1, opts);
      const ref = crossEntropyRef(xd, labels, B, C, 0.2, g);
      const label = `crossEntropy [${B},${C}] ${JSON.stringify(opts)}`;
      assertClose(await loss.toArray(), ref.loss, LOSS, label);
      assertClose(await dx.toArray(), ref.dx, GRAD, `${label} grad`);
      for (const t of [x, lab, gt, loss, lse, dx]) t.dispose();
    }
  }
});

gpuTest("crossEntropy: large logits (+/-80 and 1e4) stay finite and exact", async () => {
  const B = 3, C = 9;
  const xd = randArray(B * C, 4, -1, 1).map((
    v,
    i,
  ) => (i < C ? 80 + v : i < 2 * C ? -80 + v : 1e4 * v));
  const labels = new Int32Array([2, 8, 0]);
  const got = await ceRun(xd, labels, B, C, { reduction: "none" }, new Float32Array([1, 1, 1]));
  const ref = crossEntropyRef(xd, labels, B, C, 0, [1, 1, 1]);
  // Row 3's loss is ~1e4: f32 carries ~1e-3 absolute there.
  assertClose(got.loss, ref.loss, { atol: 1e-5, rtol: 1e-6 }, "crossEntropy large logits");
  assertClose(got.dx, ref.dx, GRAD, "crossEntropy large logits grad");
});

gpuTest("crossEntropy: out-of-range labels give NaN rows, never a crash", async () => {
  const B = 4, C = 5;
  const xd = randArray(B * C, 12);
  const labels = new Int32Array([1, -1, 5, 4]);
  const got = await ceRun(xd, labels, B, C, { reduction: "none" }, new Float32Array([1, 1, 1, 1]));
  const ref = crossEntropyRef(xd, labels, B, C, 0, [1, 1, 1, 1]);
  if (!Number.isNaN(got.loss[1]) || !Number.isNaN(got.loss[2])) {
    throw new Error(`bad labels should give NaN, got ${got.loss}`);
  }
  assertClose([got.loss[0], got.loss[3]], [ref.loss[0], ref.loss[3]], LOSS, "valid rows");
  assertClose(got.dx.slice(0, C), ref.dx.slice(0, C), GRAD, "valid row grad");
  if (!got.dx.slice(C, 3 * C).every(Number.isNaN)) throw new Error("bad rows' grads not NaN");
  const mean = await ceRun(xd, labels, B, C, {}, new Float32Array([1]));
  if (!Number.isNaN(mean.loss[0])) throw new Error(`mean with a bad label: ${mean.loss[0]}`);
});

gpuTest("crossEntropy: gradient matches finite differences; argument errors", async () => {
  const labels = tensor(new Int32Array([3, 0, 6, 2, 2]), [5]);
  for (const opts of [{}, { reduction: "none" as const, labelSmoothing: 0.3 }]) {
    await gradCheck(
      (xs) => crossEntropy(xs[0], labels, opts),
      [{ data: randArray(35, 61, -3, 3), shape: [5, 7] }],
    );
  }
  const x = tensor(randArray(35, 1), [5, 7]);
  const cases: [() => unknown, RegExp][] = [
    [() => crossEntropy(x, tensor([1, 2, 3, 4, 5], [5])), /int32 \[5\]/],
    [() => crossEntropy(x, tensor(new Int32Array(4), [4])), /int32 \[5\]/],
    [() => crossEntropy(x, labels, { labelSmoothing: 2 }), /labelSmoothing/],
  ];
  for (const [f, re] of cases) {
    let msg = "";
    try {
      f();
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!re.test(msg)) throw new Error(`expected ${re}, got "${msg}"`);
  }
  x.dispose();
  labels.dispose();
});

// ---- dropout -----------------------------------------------------------------------------------

gpuTest(
  "dropout: mask fraction ~p, equals the CPU mirror, scale 1/(1-p), deterministic",
  async () => {
    const n = 100_003, p = 0.3;
    const xd = randArray(n, 5, 0.5, 1.5); // nonzero, so zeros in y are exactly the dropped ones
    const x = tensor(xd, [n]);
    const y1 = dropout(x, p, { seed: 1234 });
    const y2 = dropout(x, p, { seed: 1234 });
    const y3 = dropout(x, p, { seed: 1235 });
    const [a, b, c] = [await y1.toArray(), await y2.toArray(), await y3.toArray()];
    let dropped = 0, differ = 0;
    const expected = dropoutRef(xd, 1234, p);
    for (let i = 0; i < n; i++) {
      if (a[i] === 0) dropped++;
      if ((a[i] === 0) !== (c[i] === 0)) differ++;
    }
    // Binomial std of the fraction is sqrt(p(1-p)/n) = 0.0014: allow 0.01 (7 std).
    if (Math.abs(dropped / n - p) > 0.01) throw new Error(`dropped fraction ${dropped / n}`);
    assertClose(a, expected, { atol: 0, rtol: 1e-6 }, "dropout vs CPU mask mirror");
    assertClose(b, a, { atol: 0 }, "same seed, same output");
    // Another seed: about 2 p (1 - p) = 42% of the mask decisions change.
    if (differ < 0.3 * n) throw new Error(`seeds 1234 and 1235 differ in only ${differ} places`);
    for (const t of [x, y1, y2, y3]) t.dispose();
  },
);

gpuTest("dropout: gradient is mask/(1-p) (analytic and finite differences)", async () => {
  const n = 4099, p = 0.25, seed = 77;
  const { y, gx } = tidy(() => {
    const x = tensor(randArray(n, 8, 0.5, 1.5), [n], { requiresGrad: true });
    const y = dropout(x, p, { seed });
    backward(y, { grad: ones([n]) });
    const gx = x.grad!;
    x.grad = null;
    return { y, gx };
  });
  const [ya, ga] = [await y.toArray(), await gx.toArray()];
  for (let i = 0; i < n; i++) {
    const want = dropoutKeep(i, seed, p) ? 1 / (1 - p) : 0;
    if (Math.abs(ga[i] - want) > 1e-6 || (ya[i] === 0) !== (want === 0)) {
      throw new Error(`element ${i}: grad ${ga[i]}, y ${ya[i]}, expected mask/(1-p) = ${want}`);
    }
  }
  y.dispose();
  gx.dispose();
  await gradCheck((xs) => dropout(xs[0], 0.5, { seed: 3 }), [
    { data: randArray(6 * 7, 9), shape: [6, 7] },
  ]);
});

gpuTest("dropout: p = 0 and training = false are views; p = 1 zeros; bad p throws", async () => {
  const x = tensor(randArray(10, 1), [2, 5], { requiresGrad: true });
  const views: Tensor[] = [dropout(x, 0), dropout(x, 0.5, { training: false })];
  for (const v of views) {
    if (v.buf !== x.buf) throw new Error("dropout identity case is not a view of x");
    assertClose(await v.toArray(), await x.toArray(), { atol: 0 }, "identity dropout");
  }
  const z = dropout(x, 1, { seed: 1 });
  assertClose(await z.toArray(), new Float32Array(10), { atol: 0 }, "p = 1 drops everything");
  let msg = "";
  try {
    dropout(x, 1.5);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!/p must be in \[0, 1\]/.test(msg)) throw new Error(`unexpected error "${msg}"`);
  for (const t of [x, z, ...views]) t.dispose();
});
