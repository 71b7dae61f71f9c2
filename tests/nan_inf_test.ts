/**
 * NaN and Inf propagate as in PyTorch through softmax / logSoftmax, layerNorm, max, matmul and
 * crossEntropy, forward and backward, under every row-kernel launch shape and both matmul
 * families: a NaN (or +Inf) in a row poisons that row and only that row, -Inf entries get
 * probability 0. Float64 references compute the same IEEE arithmetic, and `assertClose` requires
 * NaN where they give NaN and the same infinity where they give one.
 */
import assert from "node:assert/strict";
import { assertClose, gpuTest, randArray, ROW_CASES, ROW_LAUNCHES } from "./util.ts";
import { crossEntropyRef } from "../kernels/cross_entropy_ref.ts";
import { crossEntropyBackward, crossEntropyForward } from "../kernels/cross_entropy.ts";
import { layerNormBackwardInput, layerNormForward } from "../kernels/layernorm.ts";
import { layerNormRef } from "../kernels/layernorm_ref.ts";
import { type MatmulTile } from "../kernels/matmul.ts";
import { denseDims, matmulRef } from "../kernels/matmul_ref.ts";
import { reduceRef } from "../kernels/reduce_ref.ts";
import { softmaxBackward, softmaxForward } from "../kernels/softmax.ts";
import { softmaxGradRef, softmaxRef } from "../kernels/softmax_ref.ts";
import { backward } from "../nn/autograd.ts";
import { empty, keep, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { crossEntropy, matmul, max, mean } from "../nn/ops/index.ts";
import { matmulKernel } from "../kernels/matmul.ts";
import { pool, readback, upload } from "../kernels/runtime.ts";

const TOL = { atol: 1e-5, rtol: 1e-4 };

/**
 * `rows` rows of `n` values in [-3, 3] with row 1 holding a NaN, row 2 a +Inf and row 3 a few
 * -Inf entries (rows past those stay finite; every row keeps some finite entries).
 */
function poisoned(rows: number, n: number, seed: number): Float32Array {
  const x = randArray(rows * n, seed, -3, 3);
  const at = (r: number, j: number) => r * n + Math.min(n - 1, j);
  if (rows > 1) x[at(1, n >> 1)] = NaN;
  if (rows > 2) x[at(2, n - 1)] = Infinity;
  if (rows > 3 && n > 1) { for (let j = 0; j < n - 1; j += 3) x[at(3, j)] = -Infinity; }
  return x;
}

/** Read the tensors back and dispose them. */
async function read(...ts: Tensor[]): Promise<(Float32Array | Int32Array)[]> {
  const out = [];
  for (const t of ts) out.push(await t.toArray());
  ts.forEach((t) => t.dispose());
  return out;
}

gpuTest(
  "softmax / logSoftmax: NaN and +Inf rows become NaN, -Inf entries 0, every launch",
  async () => {
    for (const log of [false, true]) {
      for (const opts of ROW_LAUNCHES) {
        for (const [rows, n] of ROW_CASES) {
          const xd = poisoned(rows, n, rows + n), gd = randArray(rows * n, 7);
          const x = tensor(xd, [rows, n]), g = tensor(gd, [rows, n]);
          const y = empty([rows, n]), dx = empty([rows, n]);
          softmaxForward(x.buf, y.buf, rows, n, log, opts);
          softmaxBackward(y.buf, g.buf, dx.buf, rows, n, log, opts);
          const [ya, dxa] = await read(y, dx);
          x.dispose();
          g.dispose();
          const label = `${log ? "log" : ""}softmax [${rows},${n}] ${JSON.stringify(opts)}`;
          const ref = softmaxRef(xd, rows, n, log);
          if (rows > 1) assert.ok(Number.isNaN(ref[n]), "the reference poisons the NaN row");
          assertClose(ya, ref, TOL, label);
          // The -Inf row's backward is finite; the poisoned rows' is NaN.
          assertClose(dxa, softmaxGradRef(xd, gd, rows, n, log), TOL, `grad ${label}`);
        }
      }
    }
  },
);

gpuTest("layerNorm: a NaN or Inf in a row poisons that row's output and gradient", async () => {
  for (const opts of ROW_LAUNCHES) {
    for (const [rows, n] of ROW_CASES) {
      const xd = poisoned(rows, n, 3 * rows + n), gd = randArray(rows * n, 8);
      const x = tensor(xd, [rows, n]), g = tensor(gd, [rows, n]);
      const y = empty([rows, n]), stats = empty([rows, 2]), dx = empty([rows, n]);
      layerNormForward(x.buf, null, null, y.buf, stats.buf, rows, n, 1e-5, opts);
      layerNormBackwardInput(x.buf, null, g.buf, stats.buf, dx.buf, rows, n, opts);
      const [ya, dxa] = await read(y, dx);
      [x, g, stats].forEach((t) => t.dispose());
      const ref = layerNormRef(xd, null, null, rows, n, 1e-5, gd);
      const label = `layerNorm [${rows},${n}] ${JSON.stringify(opts)}`;
      assertClose(ya, ref.y, { atol: 1e-4, rtol: 1e-4 }, label);
      assertClose(dxa, ref.dx, { atol: 1e-3, rtol: 1e-3 }, `grad ${label}`);
    }
  }
});

gpuTest("max: NaN anywhere in a row or column gives NaN; -Inf rows give -Inf", async () => {
  // Rows longer than the 256-lane workgroup, NaN first, in the middle, last; all -Inf; +Inf.
  const n = 517, rows = 6;
  const xd = randArray(rows * n, 21, -5, 5);
  xd[0] = NaN;
  xd[n + 300] = NaN;
  xd[2 * n + n - 1] = NaN;
  xd.fill(-Infinity, 3 * n, 4 * n);
  xd[4 * n + 7] = Infinity;
  for (const [axis, outer, len, inner] of [[1, rows, n, 1], [0, 1, rows, n]] as const) {
    const y = tidy(() => keep(max(tensor(xd, [rows, n]), axis)));
    const [got] = await read(y);
    assertClose(got, reduceRef("max", xd, outer, len, inner), { atol: 0 }, `max axis ${axis}`);
  }
  const [rowMax] = await read(tidy(() => keep(max(tensor(xd, [rows, n]), 1))));
  assert.deepEqual(
    Array.from(rowMax.slice(0, 5), (v) => (Number.isNaN(v) ? "NaN" : v)),
    ["NaN", "NaN", "NaN", -Infinity, Infinity],
  );
});

gpuTest(
  "matmul: a NaN in A poisons its output row, an Inf in B its column (both families)",
  async () => {
    const tiles: (MatmulTile | undefined)[] = [
      undefined,
      { TM: 4, TN: 4, WX: 8, WY: 1 },
      { TM: 16, TN: 8, WX: 8, WY: 1, rowsFirst: true },
      { kind: "shared", TM: 4, TN: 4, WX: 4, WY: 2, BK: 8 },
      { kind: "shared", TM: 2, TN: 3, WX: 4, WY: 8, BK: 5 },
    ];
    // Aligned (vec4 loads) and odd (scalar loads) sizes, B transposed and not.
    for (
      const [M, N, K, tB] of [[13, 17, 9, false], [12, 16, 8, true], [33, 20, 40, false]] as const
    ) {
      const d = denseDims(1, M, N, K, { transposeB: tB });
      const A = randArray(M * K, M, 0.1, 1), B = randArray(K * N, N, 0.1, 1);
      A[5 * K + 2] = NaN; // row 5 of C
      B[tB ? 3 * K + 1 : 1 * N + 3] = Infinity; // column 3 of C (positive A: +Inf)
      B[tB ? 7 * K + 4 : 4 * N + 7] = -Infinity; // column 7: -Inf
      const ref = matmulRef(A, B, d);
      for (const tile of tiles) {
        const bufs = [A, B].map((x) => {
          const b = pool.acquire(x.length * 4);
          upload(b, x);
          return b;
        });
        const c = pool.acquire(M * N * 4);
        matmulKernel(bufs[0], bufs[1], c, d, null, tile);
        const got = new Float32Array(await readback(c, M * N * 4));
        [...bufs, c].forEach((b) => pool.release(b));
        assertClose(
          got,
          ref,
          { atol: 1e-5 * K, rtol: 1e-5 },
          `[${M},${N},${K}] ${JSON.stringify(tile)}`,
        );
        assert.ok(Number.isNaN(got[5 * N]) && got[3] === Infinity && got[7] === -Infinity);
      }
    }
    // Through the op and its backward: dA = g B^T does not involve A (finite); dB = A^T g does.
    const [ga, gb] = tidy(() => {
      const a = tensor(Float32Array.from([1, NaN, 2, 3]), [2, 2], { requiresGrad: true });
      const b = tensor(Float32Array.from([1, 2, 3, 4]), [2, 2], { requiresGrad: true });
      backward(mean(matmul(a, b)));
      const grads = [a.grad!, b.grad!];
      a.grad = b.grad = null;
      return grads;
    });
    const [gav, gbv] = await read(ga, gb);
    assert.ok(gav.every(Number.isFinite), `dA ${gav}`);
    assert.ok(Number.isNaN(gbv[2]) && Number.isNaN(gbv[3]) && Number.isFinite(gbv[0]), `dB ${gbv}`);
  },
);

gpuTest(
  "crossEntropy: NaN and +Inf logits give NaN, a -Inf logit only matters as the label",
  async () => {
    for (const opts of ROW_LAUNCHES) {
      for (const [rows, n] of ROW_CASES) {
        if (rows < 4) continue;
        const xd = poisoned(rows, n, 5 * rows + n);
        const labels = Int32Array.from({ length: rows }, (_, r) => (r * 7) % n);
        labels[3] = 0; // row 3's first entry is -Inf: an infinite loss
        if (rows > 4) xd[4 * n + 1] = -Infinity; // row 4: a -Inf logit that is not its label
        labels[4] = 0;
        const g = tensor(new Float32Array(rows).fill(1), [rows]);
        const x = tensor(xd, [rows, n]), lab = tensor(labels, [rows]);
        for (const smooth of [0, 0.1]) {
          const loss = empty([rows]), lse = empty([rows]), dx = empty([rows, n]);
          crossEntropyForward(x.buf, lab.buf, loss.buf, lse.buf, rows, n, smooth, opts);
          crossEntropyBackward(x.buf, lab.buf, lse.buf, g.buf, dx.buf, rows, n, smooth, 1, 1, opts);
          const [la, dxa] = await read(loss, dx);
          lse.dispose();
          const ref = crossEntropyRef(xd, labels, rows, n, smooth, new Float32Array(rows).fill(1));
          const label = `[${rows},${n}] smooth ${smooth} ${JSON.stringify(opts)}`;
          assertClose(la, ref.loss, TOL, `loss ${label}`);
          assert.ok(Number.isNaN(la[1]) && Number.isNaN(la[2]) && la[3] === Infinity, label);
          assert.ok(smooth > 0 ? la[4] === Infinity : Number.isFinite(la[4]), `row 4 ${label}`);
          assertClose(dxa, ref.dx, TOL, `grad ${label}`);
        }
        [g, x, lab].forEach((t) => t.dispose());
      }
    }
    // The mean of a batch with one NaN row is NaN; the other rows' gradients stay finite.
    const { loss, gx } = tidy(() => {
      const x = tensor(Float32Array.from([1, 2, NaN, 0, 3, 1]), [3, 2], { requiresGrad: true });
      const loss = crossEntropy(x, tensor(Int32Array.from([0, 1, 1]), [3]));
      backward(loss);
      const gx = x.grad!;
      x.grad = null;
      return { loss, gx };
    });
    const [lv, gv] = await read(loss, gx);
    assert.ok(Number.isNaN(lv[0]));
    assert.ok(Number.isNaN(gv[2]) && Number.isNaN(gv[3]), "the NaN row's gradient is NaN");
    assert.ok([gv[0], gv[1], gv[4], gv[5]].every(Number.isFinite), "other rows stay finite");
  },
);
