/**
 * layerNorm (and addLayerNorm, the residual add fused into it), l2Normalize and cosineSimilarity:
 * forward and analytic backward against float64 references (cached and streamed rows, with and
 * without weight / bias), and finite differences.
 */
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { l2NormRef } from "../kernels/l2norm_ref.ts";
import { layerNormRef } from "../kernels/layernorm_ref.ts";
import { denseMatmulRef } from "../kernels/matmul_ref.ts";
import { ROW_CASES, ROW_LAUNCHES } from "./util.ts";
import {
  layerNormBackwardInput,
  layerNormBackwardParams,
  layerNormForward,
} from "../kernels/layernorm.ts";
import { l2NormBackward, l2NormForward } from "../kernels/l2norm.ts";
import { backward } from "../nn/autograd.ts";
import { empty, numel, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { addLayerNorm, cosineSimilarity, l2Normalize, layerNorm } from "../nn/ops/nn.ts";
import { add, mul, scale, sum } from "../nn/ops/index.ts";
import { TransformerBlock } from "../nn/layers.ts";

const FWD = { atol: 1e-5, rtol: 1e-4 };
const BWD = { atol: 1e-5, rtol: 1e-4 };
// dw / db sum over all rows: f32 accumulation error grows with the row count.
const PARAM = { atol: 1e-4, rtol: 1e-4 };

const SHAPES = [[1, 1], [7, 33], [3, 5, 129], [4, 1000], [40, 77], [2, 768], [2, 8195], [3, 8200]];

/** Run `f` with grads on; return the values of `outs` and of each input's gradient. */
async function runWithGrad(
  inputs: Tensor[],
  f: (xs: Tensor[]) => Tensor,
  g: Float32Array,
): Promise<{ y: Float32Array; grads: (Float32Array | null)[] }> {
  const { y, grads } = tidy(() => {
    const y = f(inputs);
    backward(y, { grad: tensor(g, y.shape) });
    const grads = inputs.map((x) => {
      const gx = x.grad;
      x.grad = null;
      return gx;
    });
    return { y, grads };
  });
  const out = {
    y: (await y.toArray()) as Float32Array,
    grads: await Promise.all(grads.map((t) => (t ? t.toArray() as Promise<Float32Array> : null))),
  };
  y.dispose();
  grads.forEach((t) => t?.dispose());
  return out;
}

gpuTest("layerNorm: forward and all gradients match float64 on odd shapes", async () => {
  for (const [si, shape] of SHAPES.entries()) {
    const n = shape[shape.length - 1], rows = numel(shape) / n;
    // An offset mean (3) checks that the variance is not computed as E[x^2] - E[x]^2.
    const xd = randArray(numel(shape), 100 + si, 2, 4);
    const wd = randArray(n, 200 + si, 0.5, 1.5), bd = randArray(n, 300 + si);
    const gd = randArray(numel(shape), 400 + si);
    for (const [useW, useB] of [[true, true], [false, false], [true, false], [false, true]]) {
      const x = tensor(xd, shape, { requiresGrad: true });
      const w = useW ? tensor(wd, [n], { requiresGrad: true }) : null;
      const b = useB ? tensor(bd, [n], { requiresGrad: true }) : null;
      const ins = [x, ...(w ? [w] : []), ...(b ? [b] : [])];
      const { y, grads } = await runWithGrad(ins, () => layerNorm(x, w, b), gd);
      const ref = layerNormRef(xd, useW ? wd : null, useB ? bd : null, rows, n, 1e-5, gd);
      const label = `layerNorm [${shape}] w=${useW} b=${useB}`;
      assertClose(y, ref.y, FWD, label);
      assertClose(grads[0]!, ref.dx, BWD, `${label} dx`);
      if (useW) assertClose(grads[1]!, ref.dw, PARAM, `${label} dw`);
      if (useB) assertClose(grads[useW ? 2 : 1]!, ref.db, PARAM, `${label} db`);
      ins.forEach((t) => t.dispose());
    }
  }
});

gpuTest(
  "layerNorm: every launch shape, and a many-row parameter reduction, match float64",
  async () => {
    // 300 rows make several row chunks for dw / db.
    const cases: [{ threads?: number; maxFloats?: number }, number, number][] = [
      ...ROW_LAUNCHES.flatMap((o) =>
        ROW_CASES.map(([r, n]) => [o, r, n] as [typeof o, number, number])
      ),
      [{}, 300, 129],
      [{}, 301, 129],
    ];
    for (const [opts, rows, n] of cases) {
      const xd = randArray(rows * n, 7 + n, -2, 2), gd = randArray(rows * n, 8 + n);
      const wd = randArray(n, 9 + n, 0.5, 1.5), bd = randArray(n, 10 + n);
      const [x, g, w, b] = [tensor(xd, [rows, n]), tensor(gd, [rows, n]), tensor(wd), tensor(bd)];
      const y = empty([rows, n]), stats = empty([rows, 2]), dx = empty([rows, n]);
      const dw = empty([n]), db = empty([n]);
      layerNormForward(x.buf, w.buf, b.buf, y.buf, stats.buf, rows, n, 1e-5, opts);
      layerNormBackwardInput(x.buf, w.buf, g.buf, stats.buf, dx.buf, rows, n, opts);
      // Vary the column reduction's shape: row lanes 1 (CPU default) / 4 (GPU default), chunks
      // of 8 / 64 (GPU default) rows.
      layerNormBackwardParams(x.buf, g.buf, stats.buf, dw.buf, db.buf, rows, n, {
        lanes: rows % 2 ? 1 : 4,
        rowsPerChunk: rows % 3 ? 8 : 64,
      });
      const ref = layerNormRef(xd, wd, bd, rows, n, 1e-5, gd);
      const label = `layerNorm [${rows},${n}] ${JSON.stringify(opts)}`;
      assertClose(await y.toArray(), ref.y, FWD, label);
      assertClose(await dx.toArray(), ref.dx, BWD, `${label} dx`);
      assertClose(await dw.toArray(), ref.dw, PARAM, `${label} dw`);
      assertClose(await db.toArray(), ref.db, PARAM, `${label} db`);
      for (const t of [x, g, w, b, y, stats, dx, dw, db]) t.dispose();
    }
  },
);

gpuTest("layerNorm: gradient matches finite differences", async () => {
  const n = 7, rows = 5;
  await gradCheck(
    (xs) => layerNorm(xs[0], xs[1], xs[2]),
    [
      { data: randArray(rows * n, 1, -2, 2), shape: [rows, n] },
      { data: randArray(n, 2, 0.5, 1.5), shape: [n] },
      { data: randArray(n, 3), shape: [n] },
    ],
  );
  await gradCheck((xs) => layerNorm(xs[0]), [{
    data: randArray(3 * 132, 4, -2, 2),
    shape: [3, 132],
  }]);
});

gpuTest("layerNorm: shape and dtype errors name the tensor", () => {
  const x = tensor(randArray(12, 1), [3, 4]);
  const w = tensor(randArray(3, 2), [3]);
  let msg = "";
  try {
    layerNorm(x, w, null);
  } catch (e) {
    msg = (e as Error).message;
  }
  if (!/weight .* must be \[4\]/.test(msg)) throw new Error(`unexpected error "${msg}"`);
  x.dispose();
  w.dispose();
});

gpuTest(
  "l2Normalize: forward and backward match float64 (cached, streamed, tiny rows)",
  async () => {
    for (const [si, shape] of SHAPES.entries()) {
      const n = shape[shape.length - 1], rows = numel(shape) / n;
      const xd = randArray(numel(shape), 500 + si, -2, 2), gd = randArray(numel(shape), 600 + si);
      const x = tensor(xd, shape, { requiresGrad: true });
      const { y, grads } = await runWithGrad([x], () => l2Normalize(x), gd);
      const ref = l2NormRef(xd, rows, n, 1e-12, gd);
      assertClose(y, ref.y, FWD, `l2Normalize [${shape}]`);
      assertClose(grads[0]!, ref.dx, BWD, `l2Normalize [${shape}] dx`);
      x.dispose();
    }
    // A zero row stays zero; a row below eps is x / eps with gradient g / eps.
    const n = 5, eps = 1e-3;
    const xd = new Float32Array([0, 0, 0, 0, 0, 1e-4, -2e-4, 3e-4, 0, 1e-4, 1, 2, 3, 4, 5]);
    const gd = randArray(15, 3);
    const x = tensor(xd, [3, n], { requiresGrad: true });
    const { y, grads } = await runWithGrad([x], () => l2Normalize(x, -1, eps), gd);
    const ref = l2NormRef(xd, 3, n, eps, gd);
    assertClose(y, ref.y, { atol: 1e-6, rtol: 1e-5 }, "l2Normalize clamped rows");
    assertClose(grads[0]!, ref.dx, { atol: 1e-3, rtol: 1e-5 }, "l2Normalize clamped rows dx");
    x.dispose();
    // Every launch shape.
    for (const opts of ROW_LAUNCHES) {
      for (const [rows, m] of ROW_CASES) {
        const xs = randArray(rows * m, 77), gs = randArray(rows * m, 78);
        const [xt, gt] = [tensor(xs, [rows, m]), tensor(gs, [rows, m])];
        const [yt, nt, dt] = [empty([rows, m]), empty([rows]), empty([rows, m])];
        l2NormForward(xt.buf, yt.buf, nt.buf, rows, m, 1e-12, opts);
        l2NormBackward(yt.buf, gt.buf, nt.buf, dt.buf, rows, m, 1e-12, opts);
        const r2 = l2NormRef(xs, rows, m, 1e-12, gs);
        const label = `l2Normalize [${rows},${m}] ${JSON.stringify(opts)}`;
        assertClose(await yt.toArray(), r2.y, FWD, label);
        assertClose(await dt.toArray(), r2.dx, BWD, `${label} dx`);
        for (const t of [xt, gt, yt, nt, dt]) t.dispose();
      }
    }
  },
);

gpuTest("l2Normalize: axis 0 and finite differences", async () => {
  const xd = randArray(15, 9, -2, 2);
  const y = l2Normalize(tensor(xd, [5, 3]), 0);
  // Reference: columns normalised.
  const ref = new Float64Array(15);
  for (let c = 0; c < 3; c++) {
    let q = 0;
    for (let r = 0; r < 5; r++) q += xd[r * 3 + c] ** 2;
    for (let r = 0; r < 5; r++) ref[r * 3 + c] = xd[r * 3 + c] / Math.sqrt(q);
  }
  assertClose(await y.toArray(), ref, FWD, "l2Normalize axis 0");
  y.dispose();
  await gradCheck((xs) => l2Normalize(xs[0]), [{
    data: randArray(4 * 9, 10, -2, 2),
    shape: [4, 9],
  }]);
  await gradCheck((xs) => l2Normalize(xs[0], 0), [{
    data: randArray(6 * 2, 11, -2, 2),
    shape: [6, 2],
  }]);
});

gpuTest("cosineSimilarity: matches float64 and finite differences", async () => {
  const [N, M, d] = [5, 7, 33];
  const ad = randArray(N * d, 31), bd = randArray(M * d, 32), gd = randArray(N * M, 33);
  const a = tensor(ad, [N, d], { requiresGrad: true });
  const b = tensor(bd, [M, d], { requiresGrad: true });
  const { y, grads } = await runWithGrad([a, b], () => cosineSimilarity(a, b), gd);
  const ra = l2NormRef(ad, N, d, 1e-12), rb = l2NormRef(bd, M, d, 1e-12);
  assertClose(
    y,
    denseMatmulRef(ra.y, rb.y, 1, N, M, d, { transposeB: true }),
    FWD,
    "cosineSimilarity",
  );
  // Reference gradient: d/dna = g nb, d/dnb = g^T na, then through each normalisation.
  const gna = denseMatmulRef(gd, rb.y, 1, N, d, M);
  const gnb = denseMatmulRef(gd, ra.y, 1, M, d, N, { transposeA: true });
  assertClose(grads[0]!, l2NormRef(ad, N, d, 1e-12, gna).dx, BWD, "cosineSimilarity da");
  assertClose(grads[1]!, l2NormRef(bd, M, d, 1e-12, gnb).dx, BWD, "cosineSimilarity db");
  a.dispose();
  b.dispose();
  await gradCheck((xs) => cosineSimilarity(xs[0], xs[1]), [
    { data: randArray(3 * 5, 41), shape: [3, 5] },
    { data: randArray(4 * 5, 42), shape: [4, 5] },
  ]);
});

gpuTest(
  "addLayerNorm (residual + layerNorm, one kernel): every launch shape vs float64",
  async () => {
    for (const opts of ROW_LAUNCHES) {
      for (const [rows, n] of ROW_CASES) {
        const xd = randArray(rows * n, 3 + n, -2, 2), rd = randArray(rows * n, 4 + n, -1, 1);
        const wd = randArray(n, 5 + n, 0.5, 1.5), bd = randArray(n, 6 + n);
        const [x, r, w, b] = [tensor(xd, [rows, n]), tensor(rd, [rows, n]), tensor(wd), tensor(bd)];
        const y = empty([rows, n]), stats = empty([rows, 2]), h = empty([rows, n]);
        layerNormForward(x.buf, w.buf, b.buf, y.buf, stats.buf, rows, n, 1e-5, opts, {
          res: r.buf,
          h: h.buf,
        });
        // x + r rounded to f32, as the kernel stores it (one correctly rounded add: exact).
        const hsum = Float32Array.from(xd, (v, i) => v + rd[i]);
        const ref = layerNormRef(hsum, wd, bd, rows, n, 1e-5);
        const label = `addLayerNorm [${rows},${n}] ${JSON.stringify(opts)}`;
        assertClose(await h.toArray(), hsum, { atol: 0 }, `${label} h`);
        assertClose(await y.toArray(), ref.y, FWD, label);
        for (const t of [x, r, w, b, y, stats, h]) t.dispose();
      }
    }
  },
);

gpuTest("addLayerNorm: gradients match add + layerNorm and finite differences", async () => {
  const rows = 6, n = 40;
  const xd = randArray(rows * n, 1, -2, 2), rd = randArray(rows * n, 2);
  const wd = randArray(n, 3, 0.5, 1.5), bd = randArray(n, 4);
  const g1 = randArray(rows * n, 5), g2 = randArray(rows * n, 6);
  // Loss uses both outputs: sum(g1 * h) + sum(g2 * ln(h)).
  const lossOf = (fused: boolean) =>
    tidy(() => {
      const xs = [tensor(xd, [rows, n]), tensor(rd, [rows, n]), tensor(wd), tensor(bd)].map(
        (t) => (t.requiresGrad = true, t),
      );
      const [h, y] = fused ? addLayerNorm(xs[0], xs[1], xs[2], xs[3]) : (() => {
        const s = add(xs[0], xs[1]);
        return [s, layerNorm(s, xs[2], xs[3])];
      })();
      backward(add(sum(mul(h, tensor(g1, [rows, n]))), sum(mul(y, tensor(g2, [rows, n])))));
      return xs.map((x) => {
        const gx = x.grad!;
        x.grad = null;
        return gx;
      });
    });
  const fused = lossOf(true), plain = lossOf(false);
  for (let i = 0; i < 4; i++) {
    assertClose(await fused[i].toArray(), await plain[i].toArray(), BWD, `grad ${i}`);
  }
  [...fused, ...plain].forEach((t) => t.dispose());
  await gradCheck(
    (xs) => {
      const [h, y] = addLayerNorm(xs[0], xs[1], xs[2], xs[3]);
      return add(y, scale(h, 0.5));
    },
    [
      { data: randArray(3 * 7, 7, -2, 2), shape: [3, 7] },
      { data: randArray(3 * 7, 8), shape: [3, 7] },
      { data: randArray(7, 9, 0.5, 1.5), shape: [7] },
      { data: randArray(7, 10), shape: [7] },
    ],
  );
});

gpuTest("TransformerBlock with the fused residual + ln_2 matches add then layerNorm", async () => {
  const blk = new TransformerBlock(32, 4, { rng: new Rng(3) });
  const x = tensor(randArray(2 * 9 * 32, 11), [2, 9, 32]);
  const got = tidy(() => blk.forward(x));
  const want = tidy(() => {
    const h = add(x, blk.attn.forward(blk.ln1.forward(x)));
    return add(h, blk.mlp.forward(blk.ln2.forward(h)));
  });
  assertClose(await got.toArray(), await want.toArray(), { atol: 1e-6 }, "block output");
  [got, want, x].forEach((t) => t.dispose());
  blk.dispose();
});
