/**
 * softmax / logSoftmax: forward against the float64 reference (cached and streamed row paths,
 * vec4 and scalar rows), stability at +/-80 and beyond, other axes, backward against the
 * analytic float64 gradient and against finite differences.
 */
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { softmaxGradRef, softmaxRef } from "../kernels/softmax_ref.ts";
import { ROW_CASES, ROW_LAUNCHES } from "./util.ts";
import { softmaxBackward, softmaxForward } from "../kernels/softmax.ts";
import { backward } from "../nn/autograd.ts";
import { empty, numel, tensor, tidy } from "../nn/tensor.ts";
import { logSoftmax, softmax } from "../nn/ops/nn.ts";

const FWD = { atol: 1e-6, rtol: 1e-4 }; // probabilities in [0, 1]
const LOGFWD = { atol: 1e-5, rtol: 1e-5 };
const BWD = { atol: 1e-6, rtol: 1e-4 };

// Odd sizes, vec4 rows (1000, 64), many rows (40: lane mode on CPU adapters), rows past the
// register cache (8200 vec4 / 8195 scalar: streamed).
const SHAPES = [[1, 1], [7, 33], [3, 5, 129], [4, 1000], [40, 77], [2, 64], [2, 8200], [3, 8195]];

for (const log of [false, true]) {
  const name = log ? "logSoftmax" : "softmax";
  const op = log ? logSoftmax : softmax;

  gpuTest(`${name}: forward and backward match float64 on odd shapes`, async () => {
    for (const [si, shape] of SHAPES.entries()) {
      const n = shape[shape.length - 1], rows = numel(shape) / n;
      const xd = randArray(numel(shape), 10 + si, -4, 4);
      const gd = randArray(numel(shape), 50 + si);
      const { y, dx } = tidy(() => {
        const x = tensor(xd, shape, { requiresGrad: true });
        const y = op(x);
        backward(y, { grad: tensor(gd, shape) });
        const dx = x.grad!;
        x.grad = null; // x is disposed with the scope; keep its gradient
        return { y, dx };
      });
      const [ya, dxa] = [await y.toArray(), await dx.toArray()];
      y.dispose();
      dx.dispose();
      assertClose(ya, softmaxRef(xd, rows, n, log), log ? LOGFWD : FWD, `${name} [${shape}]`);
      assertClose(dxa, softmaxGradRef(xd, gd, rows, n, log), BWD, `${name} grad [${shape}]`);
    }
  });

  gpuTest(`${name}: every launch shape (lane/group, cached/streamed) matches float64`, async () => {
    for (const opts of ROW_LAUNCHES) {
      for (const [rows, n] of ROW_CASES) {
        const xd = randArray(rows * n, 3 + n, -5, 5), gd = randArray(rows * n, 4 + n);
        const x = tensor(xd, [rows, n]), g = tensor(gd, [rows, n]);
        const y = empty([rows, n]), dx = empty([rows, n]);
        softmaxForward(x.buf, y.buf, rows, n, log, opts);
        softmaxBackward(y.buf, g.buf, dx.buf, rows, n, log, opts);
        const label = `[${rows},${n}] ${JSON.stringify(opts)}`;
        assertClose(await y.toArray(), softmaxRef(xd, rows, n, log), log ? LOGFWD : FWD, label);
        assertClose(await dx.toArray(), softmaxGradRef(xd, gd, rows, n, log), BWD, `grad ${label}`);
        for (const t of [x, g, y, dx]) t.dispose();
      }
    }
  });

  gpuTest(`${name}: stable for rows near +80, -80 and with 1e30-scale masks`, async () => {
    const n = 37;
    const base = randArray(4 * n, 99, -1, 1);
    const xd = new Float32Array(4 * n);
    for (let j = 0; j < n; j++) {
      xd[j] = 80 + base[j]; // exp(80) overflows f32 without the max shift
      xd[n + j] = -80 + base[n + j]; // exp(-80) underflows
      xd[2 * n + j] = j % 2 ? 80 + base[2 * n + j] : -80 + base[2 * n + j];
      xd[3 * n + j] = j % 3 ? -1e30 : base[3 * n + j]; // masked entries
    }
    const y = op(tensor(xd, [4, n]));
    const ya = await y.toArray();
    y.dispose();
    for (const v of ya) if (!Number.isFinite(v)) throw new Error(`${name}: non-finite ${v}`);
    // log-softmax of masked entries is ~ -1e30: compare the first three rows tightly, the masked
    // row's finite entries tightly and its masked entries relatively.
    const ref = softmaxRef(xd, 4, n, log);
    assertClose(ya, ref, log ? { atol: 1e-5, rtol: 1e-6 } : FWD, `${name} extreme rows`);
  });

  gpuTest(`${name}: along axis 0 and 1 of a rank-3 tensor (permuted)`, async () => {
    const shape = [3, 4, 5];
    const xd = randArray(60, 5, -3, 3);
    for (const axis of [0, 1, -2]) {
      const a = axis < 0 ? axis + 3 : axis;
      // Reference: move `axis` last, softmax, move back.
      const idx = (i: number, j: number, k: number) => (i * 4 + j) * 5 + k;
      const n = shape[a];
      const others = shape.filter((_, d) => d !== a);
      const rows = others[0] * others[1];
      const moved = new Float64Array(60);
      const where: number[] = [];
      let r = 0;
      for (let u = 0; u < others[0]; u++) {
        for (let v = 0; v < others[1]; v++, r++) {
          for (let t = 0; t < n; t++) {
            const c = a === 0 ? [t, u, v] : a === 1 ? [u, t, v] : [u, v, t];
            moved[r * n + t] = xd[idx(c[0], c[1], c[2])];
            where[r * n + t] = idx(c[0], c[1], c[2]);
          }
        }
      }
      const refMoved = softmaxRef(moved, rows, n, log);
      const ref = new Float64Array(60);
      where.forEach((w, i) => (ref[w] = refMoved[i]));
      const y = op(tensor(xd, shape), axis);
      assertClose(await y.toArray(), ref, log ? LOGFWD : FWD, `${name} axis ${axis}`);
      y.dispose();
    }
  });

  gpuTest(`${name}: gradient matches finite differences (last axis and axis 0)`, async () => {
    // Log-softmax outputs are ~ -log(n), so the f32 loss is large and its finite differences
    // coarse: a wider step (the function is smooth) keeps them well inside the tolerance.
    const opts = { eps: log ? 5e-2 : 1e-2 };
    const cases: [number[], number][] = [[[7, 9], -1], [[5, 3], 0], [[2, 130], -1]];
    for (const [i, [shape, axis]] of cases.entries()) {
      const data = randArray(numel(shape), 21 + i, -2, 2);
      await gradCheck((xs) => op(xs[0], axis), [{ data, shape }], opts);
    }
  });
}

gpuTest("softmax: bad input gives clear errors", () => {
  const i = tensor(new Int32Array([1, 2]), [2]);
  let msg = "";
  try {
    softmax(i);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!/float32/.test(msg)) throw new Error(`expected a dtype error, got "${msg}"`);
  const x = tensor([1, 2, 3], [3]);
  try {
    softmax(x, 1);
    msg = "";
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!/axis 1 out of range/.test(msg)) throw new Error(`expected an axis error, got "${msg}"`);
  i.dispose();
  x.dispose();
});
