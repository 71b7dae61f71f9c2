/**
 * Test helpers: one shared device, float64 comparison with a stated tolerance, seeded random
 * inputs and a finite-difference gradient check.
 */
import { init } from "../kernels/device.ts";
import { backward } from "../nn/autograd.ts";
import { Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { concat, mul, reshape, sum } from "../nn/ops/index.ts";

/** A test that needs the GPU device (WebGPU resources outlive a test, so no sanitizers). */
export function gpuTest(name: string, fn: () => Promise<void> | void, ignore = false): void {
  Deno.test({
    name,
    ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      // The fixed tile table: tests never run the first-use tuning sweep (kernels/autotune.ts).
      await init({ tune: false });
      await fn();
    },
  });
}

/** `n` uniform values in [lo, hi) from `seed` (never all zeros). */
export function randArray(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const rng = new Rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * rng.next();
  return a;
}

/** Tolerance: |actual - expected| <= atol + rtol * |expected| elementwise. */
export interface Tol {
  atol: number;
  rtol?: number;
}

/**
 * Assert two arrays agree within `tol`; the message names the worst element. Where `expected` is
 * NaN or +-Infinity, `actual` must be the same (NaN where NaN, the same infinity).
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: Tol,
  label = "",
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    if (!Number.isFinite(expected[i]) && Object.is(actual[i], expected[i])) continue;
    const lim = tol.atol + (tol.rtol ?? 0) * Math.abs(expected[i]);
    const err = Math.abs(actual[i] - expected[i]);
    if (!(err <= lim) && (worst < 0 || err - lim > worstExcess || Number.isNaN(err))) {
      worst = i;
      worstExcess = err - lim;
      if (Number.isNaN(err)) break;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${label}: element ${worst}: got ${actual[worst]}, expected ${expected[worst]} ` +
        `(atol ${tol.atol}, rtol ${tol.rtol ?? 0})`,
    );
  }
}

/** Options for {@link gradCheck}. */
export interface GradCheckOptions {
  eps?: number;
  tol?: Tol;
  /** How many coordinates of each input to probe (random subset; all when smaller). */
  probes?: number;
  seed?: number;
}

/**
 * Compare the analytic gradient of `sum(w * f(inputs))` (w random, fixed) with central finite
 * differences of the same GPU forward, on a random subset of coordinates of each input.
 */
export async function gradCheck(
  f: (xs: Tensor[]) => Tensor,
  inputs: { data: Float32Array; shape: number[] }[],
  opts: GradCheckOptions = {},
): Promise<void> {
  const eps = opts.eps ?? 1e-2;
  const tol = opts.tol ?? { atol: 2e-3, rtol: 2e-2 };
  const rng = new Rng(opts.seed ?? 7);
  let weights: Float32Array | null = null;
  const lossOf = (datas: Float32Array[], needGrad: boolean) => {
    const xs = inputs.map((inp, i) => tensor(datas[i], inp.shape, { requiresGrad: needGrad }));
    const y = f(xs);
    if (!weights) {
      weights = new Float32Array(y.size);
      for (let i = 0; i < y.size; i++) weights[i] = 0.5 + rng.next();
    }
    const w = tensor(weights, y.shape);
    return { xs, loss: sum(mul(y, w)) };
  };
  // Analytic.
  const analytic = tidy(() => {
    const { xs, loss } = lossOf(inputs.map((i) => i.data), true);
    backward(loss);
    return xs.map((x) => {
      const g = x.grad!;
      x.grad = null; // the leaf is disposed with this scope; its gradient survives
      return g;
    });
  });
  const grads = await Promise.all(analytic.map((g) => g.toArray()));
  analytic.forEach((g) => g.dispose());
  // Numeric, all evaluations recorded first and read back once.
  const probes: { input: number; index: number }[] = [];
  inputs.forEach((inp, i) => {
    const n = inp.data.length;
    const count = Math.min(n, opts.probes ?? 24);
    const idx = count === n ? [...Array(n).keys()] : [...Array(count)].map(() => rng.int(n));
    for (const index of idx) probes.push({ input: i, index });
  });
  const diffs = tidy(() => {
    const vals: Tensor[] = [];
    for (const p of probes) {
      for (const sgn of [1, -1]) {
        const datas = inputs.map((i) => i.data);
        const d = Float32Array.from(datas[p.input]);
        d[p.index] += sgn * eps;
        datas[p.input] = d;
        vals.push(reshape(lossOf(datas, false).loss, [1]));
      }
    }
    return concat(vals);
  });
  const v = await diffs.toArray();
  diffs.dispose();
  const numeric: number[] = [], got: number[] = [];
  probes.forEach((p, j) => {
    numeric.push((v[2 * j] - v[2 * j + 1]) / (2 * eps));
    got.push(grads[p.input][p.index]);
  });
  assertClose(got, numeric, tol, "gradient vs finite differences");
}

/**
 * Launch shapes every row kernel is tested under, whatever this adapter would pick: lane mode
 * (one invocation per row) and groups of 8 / 32 / 256 invocations per row, with the row cached
 * in registers or streamed (maxFloats 0).
 */
export const ROW_LAUNCHES: { threads: number; maxFloats?: number }[] = [
  { threads: 1 },
  { threads: 1, maxFloats: 0 },
  { threads: 8 },
  { threads: 32, maxFloats: 0 },
  { threads: 256 },
];

/** [rows, n] for {@link ROW_LAUNCHES}: odd, vec4 and scalar rows, partial row groups. */
export const ROW_CASES: [number, number][] = [[3, 33], [20, 7], [70, 129], [5, 1000]];
