/**
 * gelu (exact, erf), quickGelu, leakyRelu: forward and gradient against float64 references on a
 * dense grid over [-10, 10] plus odd random shapes, and finite differences.
 */
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { erfcRef, geluRef } from "../kernels/activation_ref.ts";
import { backward } from "../nn/autograd.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { gelu, leakyRelu, quickGelu } from "../nn/ops/nn.ts";

/** Values and gradients (for upstream gradient `g`) of `f` at `xd`. */
async function valueAndGrad(
  f: (x: Tensor) => Tensor,
  xd: Float32Array,
  shape: number[],
  g: Float32Array,
): Promise<{ y: Float32Array; dx: Float32Array }> {
  const { y, dx } = tidy(() => {
    const x = tensor(xd, shape, { requiresGrad: true });
    const y = f(x);
    backward(y, { grad: tensor(g, shape) });
    const dx = x.grad!;
    x.grad = null;
    return { y, dx };
  });
  const out = { y: (await y.toArray()) as Float32Array, dx: (await dx.toArray()) as Float32Array };
  y.dispose();
  dx.dispose();
  return out;
}

/** -10 ... 10 in steps of 0.01, then random values of [7, 33]. */
function grid(): Float32Array {
  const a: number[] = [];
  for (let i = -1000; i <= 1000; i++) a.push(i / 100);
  return Float32Array.from([...a, ...randArray(7 * 33, 3, -6, 6)]);
}

gpuTest("float64 erfc reference agrees with known values", () => {
  // erf(0.5), erf(1), erfc(3), erfc(5), erfc(10) to 16 digits (Abramowitz & Stegun / mpmath).
  const cases: [number, number][] = [
    [0.5, 1 - 0.5204998778130465],
    [1, 1 - 0.8427007929497149],
    [3, 2.209049699858544e-5],
    [5, 1.5374597944280349e-12],
    [10, 2.088487583762545e-45],
  ];
  assertClose(
    cases.map(([z]) => erfcRef(z)),
    cases.map(([, v]) => v),
    { atol: 0, rtol: 1e-12 },
    "erfc",
  );
});

gpuTest("gelu: exact-erf values and gradient match float64 over [-10, 10]", async () => {
  const xd = grid();
  const g = randArray(xd.length, 4);
  const { y, dx } = await valueAndGrad(gelu, xd, [xd.length], g);
  const ry = new Float64Array(xd.length), rdx = new Float64Array(xd.length);
  let maxAbs = 0, maxRelTail = 0;
  xd.forEach((x, i) => {
    const r = geluRef(x);
    ry[i] = r.y;
    rdx[i] = g[i] * r.dy;
    maxAbs = Math.max(maxAbs, Math.abs(y[i] - r.y));
    if (x < -3) maxRelTail = Math.max(maxRelTail, Math.abs(y[i] - r.y) / Math.abs(r.y));
  });
  console.log(
    `gelu: max abs error ${maxAbs.toExponential(2)} on [-10, 10], ` +
      `max relative error ${maxRelTail.toExponential(2)} for x < -3`,
  );
  // Absolute: a few f32 ulps of |x| <= 10 (the result is x itself there); relative: the lower
  // tail keeps its relative accuracy (erfc, not 1 + erf), down to gelu(-10) ~ -7.6e-23.
  assertClose(y, ry, { atol: 2e-6, rtol: 1e-5 }, "gelu");
  if (maxRelTail > 5e-5) throw new Error(`gelu lower-tail relative error ${maxRelTail}`);
  assertClose(dx, rdx, { atol: 2e-6, rtol: 1e-5 }, "gelu grad");
});

gpuTest("quickGelu and leakyRelu: values and gradients match float64", async () => {
  const xd = Float32Array.from([...grid(), -100, 100, 0]);
  const g = randArray(xd.length, 5);
  const q = await valueAndGrad(quickGelu, xd, [xd.length], g);
  const qy = new Float64Array(xd.length), qdx = new Float64Array(xd.length);
  xd.forEach((x, i) => {
    const s = 1 / (1 + Math.exp(-1.702 * x));
    qy[i] = x * s;
    qdx[i] = g[i] * (s + 1.702 * x * s * (1 - s));
  });
  assertClose(q.y, qy, { atol: 1e-6, rtol: 1e-5 }, "quickGelu");
  assertClose(q.dx, qdx, { atol: 1e-6, rtol: 1e-5 }, "quickGelu grad");
  for (const slope of [0.01, 0.2]) {
    const l = await valueAndGrad((x) => leakyRelu(x, slope), xd, [xd.length], g);
    const ly = Float64Array.from(xd, (x) => (x > 0 ? x : slope * x));
    const ldx = Float64Array.from(xd, (x, i) => (x > 0 ? g[i] : slope * g[i]));
    assertClose(l.y, ly, { atol: 0, rtol: 1e-6 }, `leakyRelu ${slope}`);
    assertClose(l.dx, ldx, { atol: 0, rtol: 1e-6 }, `leakyRelu ${slope} grad`);
  }
});

gpuTest("activations: gradients match finite differences on [3, 5, 7]", async () => {
  // Keep leakyRelu's inputs away from its kink at 0 (|x| >= 0.1 > the finite-difference step).
  const data = randArray(105, 6, -3, 3).map((v) => (v < 0 ? v - 0.1 : v + 0.1));
  for (const f of [gelu, quickGelu, (x: Tensor) => leakyRelu(x, 0.1)]) {
    await gradCheck((xs) => f(xs[0]), [{ data, shape: [3, 5, 7] }]);
  }
});
