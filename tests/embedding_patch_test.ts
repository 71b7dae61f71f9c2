/**
 * Embedding gather / scatter-add backward and the patch embedding (conv with stride = kernel),
 * against float64 CPU references and finite differences.
 */
import assert from "node:assert/strict";
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { backward } from "../nn/autograd.ts";
import { counters, sizeClass, sync } from "../kernels/runtime.ts";
import { Rng, tensor, tidy } from "../nn/tensor.ts";
import { mul, sum } from "../nn/ops/index.ts";
import { embedding } from "../nn/ops/embedding.ts";
import { patchEmbed, patchify } from "../nn/ops/conv.ts";
import { embeddingGradRef, embeddingRef } from "../kernels/embedding_ref.ts";
import { patchEmbedRef } from "../kernels/patch_ref.ts";

function randIds(n: number, lo: number, hi: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, () => lo + rng.int(hi - lo));
}

/** Forward and weight gradient of embedding for upstream gradient `g`. */
async function runEmbedding(
  w: Float32Array,
  V: number,
  D: number,
  ids: Int32Array,
  idShape: number[],
  g: Float32Array,
) {
  const [y, dw] = tidy(() => {
    // Leave junk past the table's end in the pooled buffer it will get (the pool hands back the
    // last released buffer of a size class), so an out-of-range read shows up as a wrong value.
    tensor(new Float32Array(sizeClass(V * D * 4) / 4).fill(99), [sizeClass(V * D * 4) / 4])
      .dispose();
    const wt = tensor(w, [V, D], { requiresGrad: true });
    const it = tensor(ids, idShape);
    const y = embedding(wt, it);
    assert.deepEqual(y.shape, [...idShape, D]);
    backward(sum(mul(y, tensor(g, y.shape))));
    const dw = wt.grad!;
    wt.grad = null;
    return [y, dw];
  });
  const out = [await y.toArray(), await dw.toArray()];
  y.dispose();
  dw.dispose();
  return out;
}

// Gather is a copy: exact. Scatter sums at most a few thousand O(1) terms in fp32.
const EXACT = { atol: 0 };
const SCATTER = { atol: 1e-5, rtol: 1e-5 };

gpuTest(
  "embedding forward and scatter-add backward vs float64 (odd sizes, repeats, edge ids)",
  async () => {
    const V = 37, D = 13, shape = [3, 11];
    const ids = randIds(33, 0, V, 1);
    ids[5] = ids[6] = ids[30] = 4; // guaranteed repeats
    ids[7] = 0;
    ids[8] = V - 1;
    const w = randArray(V * D, 2), g = randArray(ids.length * D, 3);
    const [y, dw] = await runEmbedding(w, V, D, ids, shape, g);
    assertClose(y, embeddingRef(w, V, D, ids), EXACT, "embedding forward");
    assertClose(dw, embeddingGradRef(g, V, D, ids), SCATTER, "embedding dW");
  },
);

gpuTest("embedding backward: long chains, several link tiles, deterministic", async () => {
  // 3001 positions (> 11 workgroup tiles of 256), 50 rows, one row repeated ~1/3 of the time
  // (like padding tokens), so chains are long and cross tiles.
  const V = 50, D = 33, N = 3001;
  const ids = randIds(N, 0, V, 4);
  for (let n = 0; n < N; n += 3) ids[n] = 7;
  const w = randArray(V * D, 5), g = randArray(N * D, 6);
  const [y, dw] = await runEmbedding(w, V, D, ids, [N], g);
  assertClose(y, embeddingRef(w, V, D, ids), EXACT, "embedding forward");
  assertClose(dw, embeddingGradRef(g, V, D, ids), { atol: 2e-5, rtol: 1e-5 }, "embedding dW");
  const [, dw2] = await runEmbedding(w, V, D, ids, [N], g);
  assert.deepEqual(dw2, dw, "two backward passes give bit-identical gradients");
});

gpuTest("embedding gradCheck (finite differences)", async () => {
  const ids = tensor(Int32Array.from([0, 3, 3, 1, 4, 0, 6]), [7]);
  await gradCheck(([w]) => embedding(w, ids), [{ data: randArray(7 * 5, 8), shape: [7, 5] }]);
  ids.dispose();
});

gpuTest("embedding: out-of-range ids are refused at the next readback, naming the id", async () => {
  const V = 37, D = 5;
  const w = tensor(randArray(V * D, 9), [V, D]);
  w.name = "token_embedding.weight";
  const ok = tensor(Int32Array.from([0, 36, 5]), [3]);
  await ok.toArray(); // uploads submitted
  // One bad id among good ones: recording costs no readback and no error yet.
  const r0 = counters.readbacks;
  const y = embedding(w, tensor(Int32Array.from([3, 50000, 1]), [1, 3]));
  assert.equal(counters.readbacks, r0, "the check costs no readback of its own");
  await assert.rejects(
    () => y.toArray(),
    (e: Error) =>
      e instanceof RangeError &&
      /^embedding: id 50000 not in \[0, 37\) \(ids \[1,3\] into token_embedding.weight \[37, 5\]\)$/
        .test(e.message),
  );
  // Reported once: the next readback of anything succeeds, and good ids keep working.
  assertClose(await embedding(w, ok).toArray(), embeddingRef(await w.toArray(), V, D, [0, 36, 5]), {
    atol: 0,
  });
  // Several bad ids: the largest one too big is named, with the count and the range.
  const many = embedding(w, tensor(Int32Array.from([-1, 40, 2, -7, 38, 37]), [6]));
  await assert.rejects(
    () => many.toArray(),
    /id 40 not in \[0, 37\).*5 of 6 ids out of range, from -7 to 40/,
  );
  // Only negative ids: the most negative is named. Any readback reports it, and so does sync().
  embedding(w, tensor(Int32Array.from([-3, -2]), [2]));
  await assert.rejects(() => ok.toArray(), /embedding: id -3 not in \[0, 37\)/);
  embedding(w, tensor(Int32Array.from([37]), [1]));
  await assert.rejects(() => sync(), /embedding: id 37 not in \[0, 37\)/);
  await sync(); // cleared
  for (const t of [w, ok, y, many]) t.dispose();
});

gpuTest("embedding rejects bad inputs", () => {
  tidy(() => {
    const w = tensor(randArray(12, 1), [4, 3]);
    assert.throws(() => embedding(w, tensor([1, 2], [2])), /ids must be int32/);
    assert.throws(
      () => embedding(tensor(randArray(12, 1), [12]), tensor(Int32Array.from([1]), [1])),
      /weight must be float32 \[V, D\]/,
    );
  });
});

gpuTest("patchify vs float64 layout (remainder dropped, p = 1, p = H)", async () => {
  for (const [shape, p] of [[[2, 3, 11, 9], 4], [[1, 2, 5, 3], 1], [[2, 1, 6, 7], 6]] as const) {
    const [B, C, H, W] = shape;
    const x = randArray(B * C * H * W, 11);
    // patchify equals patchEmbed with an identity weight: E = C*p*p, weight[e] = one-hot(e).
    const F = C * p * p;
    const eye = new Float32Array(F * F);
    for (let e = 0; e < F; e++) eye[e * F + e] = 1;
    const expected = patchEmbedRef(x, [...shape], eye, F, null, p);
    const y = tidy(() => patchify(tensor(x, [...shape]), p));
    assert.deepEqual(y.shape, [B, Math.floor(H / p) * Math.floor(W / p), F]);
    assertClose(await y.toArray(), expected, EXACT, `patchify [${shape}] p=${p}`);
    y.dispose();
  }
});

gpuTest("patchEmbed forward vs float64 conv2d (with and without bias)", async () => {
  for (
    const [shape, E, p, withBias] of [
      [[2, 3, 13, 10], 5, 3, true],
      [[1, 3, 32, 32], 8, 16, false],
      [[3, 2, 7, 9], 4, 2, true],
    ] as const
  ) {
    const [B, C, H, W] = shape;
    const x = randArray(B * C * H * W, 21), w = randArray(E * C * p * p, 22);
    const b = withBias ? randArray(E, 23) : null;
    const y = tidy(() =>
      patchEmbed(
        tensor(x, [...shape]),
        tensor(w, [E, C, p, p]),
        b ? tensor(b, [E]) : null,
        p,
      )
    );
    assert.deepEqual(y.shape, [B, Math.floor(H / p) * Math.floor(W / p), E]);
    // Sums of up to 768 products of values in [-1, 1].
    assertClose(
      await y.toArray(),
      patchEmbedRef(x, [...shape], w, E, b, p),
      { atol: 2e-5, rtol: 1e-5 },
      `patchEmbed [${shape}] E=${E} p=${p}`,
    );
    y.dispose();
  }
});

gpuTest(
  "patchEmbed gradCheck in x, weight and bias (remainder pixels get zero gradient)",
  async () => {
    const B = 2, C = 2, H = 7, W = 5, E = 3, p = 2;
    await gradCheck(
      ([x, w, b]) => patchEmbed(x, w, b, p),
      [
        { data: randArray(B * C * H * W, 31), shape: [B, C, H, W] },
        { data: randArray(E * C * p * p, 32), shape: [E, C, p, p] },
        { data: randArray(E, 33), shape: [E] },
      ],
      { probes: 40 },
    );
    // dx exactly: the inverse gather of g W, and exactly zero on the dropped row / column.
    const x = randArray(B * C * H * W, 34), w = randArray(E * C * p * p, 35);
    const nh = 3, nw = 2, F = C * p * p;
    const g = randArray(B * nh * nw * E, 36);
    const dx = tidy(() => {
      const xt = tensor(x, [B, C, H, W], { requiresGrad: true });
      backward(
        sum(mul(patchEmbed(xt, tensor(w, [E, C, p, p]), null, p), tensor(g, [B, nh * nw, E]))),
      );
      const d = xt.grad!;
      xt.grad = null;
      return d;
    });
    const got = await dx.toArray();
    dx.dispose();
    const ref = new Float64Array(x.length);
    for (let b = 0; b < B; b++) {
      for (let n = 0; n < nh * nw; n++) {
        for (let f = 0; f < F; f++) {
          let s = 0;
          for (let e = 0; e < E; e++) s += g[(b * nh * nw + n) * E + e] * w[e * F + f];
          const c = Math.floor(f / (p * p)), ky = Math.floor(f / p) % p, kx = f % p;
          const y = Math.floor(n / nw) * p + ky, xx = (n % nw) * p + kx;
          ref[((b * C + c) * H + y) * W + xx] = s;
        }
      }
    }
    assertClose(got, ref, { atol: 1e-6, rtol: 1e-5 }, "patchEmbed dx");
    for (let i = 0; i < got.length; i++) {
      const xx = i % W, y = Math.floor(i / W) % H;
      if (y >= nh * p || xx >= nw * p) assert.equal(got[i], 0, `dropped pixel ${i} has gradient`);
    }
  },
);

gpuTest("patchEmbed rejects bad inputs", () => {
  const t = (s: number[]) => tensor(new Float32Array(s.reduce((a, b) => a * b, 1)), s);
  tidy(() => {
    assert.throws(() => patchify(t([1, 3, 4]), 2), /x must be float32 \[B, C, H, W\]/);
    assert.throws(() => patchify(t([1, 3, 4, 4]), 5), /patch size 5/);
    assert.throws(() => patchEmbed(t([1, 3, 4, 4]), t([2, 2, 2, 2]), null, 2), /weight .* must be/);
    assert.throws(() => patchEmbed(t([1, 3, 4, 4]), t([2, 3, 2, 2]), t([3]), 2), /bias .* must be/);
  });
});
