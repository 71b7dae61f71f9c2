/**
 * Fused attention: forward and backward against a float64 CPU reference on odd shapes (D = 7,
 * 16, 64, 128, causal and not; every tile mode, the tiled GPU kernels with several thread grids), finite differences of the GPU forward, the unfused composition
 * as a second opinion, and T = 4096 (forward only) without a T x T buffer.
 */
import assert from "node:assert/strict";
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { poolStats, sizeClass } from "../kernels/runtime.ts";
import { attentionTileMode, type FlashTile, type TileMode } from "../kernels/attention.ts";
import { gpu } from "../kernels/device.ts";
import { backward } from "../nn/autograd.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { mul, sum } from "../nn/ops/index.ts";
import { attention, type AttentionOptions, attentionUnfused } from "../nn/ops/attention.ts";
import { attentionRef, type AttentionRefDims } from "../kernels/attention_ref.ts";

type Case = AttentionRefDims;

function inputs(c: Case, seed: number) {
  const nq = c.B * c.H * c.Tq * c.D, nk = c.B * c.H * c.Tk * c.D;
  // Spread scores over a few units so the softmax is neither flat nor one-hot.
  return {
    q: randArray(nq, seed, -2, 2),
    k: randArray(nk, seed + 1, -2, 2),
    v: randArray(nk, seed + 2),
    g: randArray(nq, seed + 3),
  };
}

/** Run the fused op forward and backward on the GPU; returns output and the three gradients. */
async function runGpu(
  c: Case,
  x: ReturnType<typeof inputs>,
  f: (q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions) => Tensor = attention,
) {
  const qs = [c.B, c.H, c.Tq, c.D], ks = [c.B, c.H, c.Tk, c.D];
  const res = tidy(() => {
    const q = tensor(x.q, qs, { requiresGrad: true });
    const k = tensor(x.k, ks, { requiresGrad: true });
    const v = tensor(x.v, ks, { requiresGrad: true });
    const o = f(q, k, v, { causal: c.causal, scale: c.scale });
    backward(sum(mul(o, tensor(x.g, qs))));
    const grads = [q.grad!, k.grad!, v.grad!];
    q.grad = k.grad = v.grad = null; // survive the scope's disposal of the leaves
    return [o, ...grads];
  });
  const out = await Promise.all(res.map((t) => t.toArray()));
  res.forEach((t) => t.dispose());
  return out;
}

const name = (c: Case) =>
  `B${c.B} H${c.H} Tq${c.Tq} Tk${c.Tk} D${c.D}${c.causal ? " causal" : ""}` +
  (c.scale !== undefined ? ` scale${c.scale}` : "");

// Forward: fp32 sums of <= 64 products of O(1) terms; 2e-5 absolute covers their rounding.
const FWD = { atol: 2e-5, rtol: 1e-4 };
// Gradients add Tq or Tk more fp32 terms of size up to ~4 (|q|, |k| <= 2).
const BWD = { atol: 1e-4, rtol: 1e-3 };

const GL = (Deno.env.get("DENO_WEBGPU_BACKEND") ?? "gl") === "gl";
/** The tiled kernels' grid on llvmpipe through GL (compiles in seconds there). */
const GL_TILE: FlashTile = { WX: 4, WY: 8, DK: 8 };

const CASES: Case[] = [
  { B: 2, H: 3, Tq: 7, Tk: 5, D: 7, causal: false },
  { B: 2, H: 3, Tq: 33, Tk: 40, D: 16, causal: false },
  { B: 2, H: 3, Tq: 19, Tk: 37, D: 64, causal: false },
  { B: 2, H: 3, Tq: 13, Tk: 13, D: 7, causal: true },
  { B: 2, H: 3, Tq: 33, Tk: 33, D: 16, causal: true },
  { B: 2, H: 3, Tq: 29, Tk: 29, D: 64, causal: true },
  { B: 1, H: 2, Tq: 9, Tk: 35, D: 128, causal: false },
  { B: 1, H: 2, Tq: 20, Tk: 20, D: 128, causal: true },
  { B: 1, H: 1, Tq: 3, Tk: 70, D: 1, causal: false, scale: 0.7 },
  { B: 1, H: 2, Tq: 40, Tk: 17, D: 5, causal: true }, // Tq > Tk: rows past Tk see every key
  { B: 1, H: 2, Tq: 40, Tk: 17, D: 8, causal: true }, // the same through the blocked forward
];

for (const [n, c] of CASES.entries()) {
  gpuTest(`attention forward + backward vs float64: ${name(c)}`, async () => {
    const x = inputs(c, 100 + 10 * n);
    const ref = attentionRef(x.q, x.k, x.v, x.g, c);
    // Every tile path: workgroup-memory tiles (what GPUs use), direct reads, and the
    // lanes-along-queries forward (CPU adapters, D % 4 == 0; other D fall back to direct).
    // On a CPU adapter the shared path is only checked for D = 7 and 16 (scalar and vec4 rows):
    // Mesa's GL compiler takes seconds to a minute (cold cache) per shared-tile kernel.
    const both = attentionTileMode() === "shared" || c.D === 7 || c.D === 16;
    const modes: TileMode[] = both ? ["shared", "direct"] : ["direct"];
    if (c.D % 4 === 0) modes.push("blocked");
    // The flash kernels for GPUs, with the tile a GPU gets (16 x 16 invocations, 64 x 64 score
    // tiles: every case here is a single partial tile or a few). Mesa's GL compiler needs ~4
    // minutes for that kernel: through GL a small grid, for three head dims.
    if (!GL || [7, 16, 64].includes(c.D)) modes.push("tiled");
    for (const mode of modes) {
      const flash = mode === "tiled" && GL ? GL_TILE : undefined;
      const [o, dq, dk, dv] = await runGpu(
        c,
        x,
        (q, k, v, o) => attention(q, k, v, { ...o, tiles: mode, flash }),
      );
      const l = `${name(c)} ${mode}`;
      assertClose(o, ref.o, FWD, `O ${l}`);
      assertClose(dq, ref.dq, BWD, `dQ ${l}`);
      assertClose(dk, ref.dk, BWD, `dK ${l}`);
      assertClose(dv, ref.dv, BWD, `dV ${l}`);
    }
  });
}

// The tiled (GPU) kernels with other thread grids: fewer columns than rows, several tiles per
// row and per column, partial last tiles, scalar (D % 4 != 0) and padded head dims (D = 96 owns
// 6 columns per invocation of 16, D = 36 pads to 48).
const TILED: [Case, FlashTile][] = [
  [{ B: 1, H: 2, Tq: 70, Tk: 131, D: 16, causal: false }, { WX: 4, WY: 8, DK: 8 }],
  [{ B: 2, H: 1, Tq: 66, Tk: 66, D: 36, causal: true }, { WX: 8, WY: 4, DK: 8 }],
  [{ B: 1, H: 1, Tq: 45, Tk: 23, D: 7, causal: true }, { WX: 4, WY: 2, DK: 4 }],
  [{ B: 1, H: 2, Tq: 66, Tk: 70, D: 96, causal: false }, { WX: 16, WY: 16, DK: 16 }],
];
for (const [n, [c, flash]] of TILED.entries()) {
  if (GL && flash.WX * flash.WY > 32) continue; // minutes to compile through GL
  gpuTest(`attention tiled ${JSON.stringify(flash)} vs float64: ${name(c)}`, async () => {
    const x = inputs(c, 300 + n);
    const ref = attentionRef(x.q, x.k, x.v, x.g, c);
    const [o, dq, dk, dv] = await runGpu(
      c,
      x,
      (q, k, v, o) => attention(q, k, v, { ...o, tiles: "tiled", flash }),
    );
    assertClose(o, ref.o, FWD, `O ${name(c)}`);
    assertClose(dq, ref.dq, BWD, `dQ ${name(c)}`);
    assertClose(dk, ref.dk, BWD, `dK ${name(c)}`);
    assertClose(dv, ref.dv, BWD, `dV ${name(c)}`);
  });
}

gpuTest("attention tiled: a tile that cannot stage one row of D is refused", () => {
  const q = tensor(randArray(64, 1), [1, 1, 1, 64]);
  assert.throws(
    () => attention(q, q, q, { tiles: "tiled", flash: { WX: 4, WY: 2, DK: 4 } }),
    /stages fewer than one row of D=64/,
  );
  q.dispose();
});

// Subgroup shuffles for the forward's row reductions: only where the adapter offers `subgroups`
// (llvmpipe does not; the GPU check runs this file).
gpuTest("attention tiled with subgroups agrees with float64", async () => {
  if (!gpu().tuning.subgroups) {
    console.log("  (skipped: this adapter offers no `subgroups`)");
    return;
  }
  for (const c of [CASES[2], CASES[5], CASES[7]]) {
    const x = inputs(c, 500);
    const ref = attentionRef(x.q, x.k, x.v, x.g, c);
    const [o] = await runGpu(
      c,
      x,
      (q, k, v, o) => attention(q, k, v, { ...o, tiles: "tiled", subgroups: true }),
    );
    assertClose(o, ref.o, FWD, `O ${name(c)} subgroups`);
  }
});

gpuTest("attention gradCheck (finite differences of the GPU forward)", async () => {
  for (const causal of [false, true]) {
    const B = 1, H = 2, Tq = 5, Tk = causal ? 5 : 6, D = 7;
    for (const tiles of ["auto", "tiled"] as const) {
      const flash = tiles === "tiled" && GL ? GL_TILE : undefined;
      const f = ([q, k, v]: Tensor[]) => attention(q, k, v, { causal, tiles, flash });
      await gradCheck(f, [
        { data: randArray(B * H * Tq * D, 1), shape: [B, H, Tq, D] },
        { data: randArray(B * H * Tk * D, 2), shape: [B, H, Tk, D] },
        { data: randArray(B * H * Tk * D, 3), shape: [B, H, Tk, D] },
      ], { probes: 20 });
    }
  }
});

gpuTest("attention: only the inputs that need gradients get them", async () => {
  const c: Case = { B: 1, H: 2, Tq: 6, Tk: 9, D: 16, causal: false };
  const x = inputs(c, 5);
  const ref = attentionRef(x.q, x.k, x.v, x.g, c);
  const [gq, gk] = tidy(() => {
    const q = tensor(x.q, [1, 2, 6, 16], { requiresGrad: true });
    const k = tensor(x.k, [1, 2, 9, 16], { requiresGrad: true });
    const v = tensor(x.v, [1, 2, 9, 16]);
    backward(sum(mul(attention(q, k, v), tensor(x.g, [1, 2, 6, 16]))));
    assert.equal(v.grad, null);
    const r = [q.grad!, k.grad!];
    q.grad = k.grad = null;
    return r;
  });
  assertClose(await gq.toArray(), ref.dq, BWD, "dQ");
  assertClose(await gk.toArray(), ref.dk, BWD, "dK");
  gq.dispose();
  gk.dispose();
});

gpuTest("attentionUnfused agrees with the fused op (forward and gradients)", async () => {
  for (const c of [CASES[1], CASES[4]]) {
    const x = inputs(c, 77);
    const fused = await runGpu(c, x);
    const unfused = await runGpu(c, x, attentionUnfused);
    ["O", "dQ", "dK", "dV"].forEach((l, i) =>
      assertClose(unfused[i], fused[i], BWD, `${l} unfused vs fused ${name(c)}`)
    );
  }
});

gpuTest("attention T=4096 (B=1, H=1, D=64) forward without a T x T buffer", async () => {
  const c: Case = { B: 1, H: 1, Tq: 4096, Tk: 4096, D: 64, causal: false };
  const x = inputs(c, 9);
  const rows = [0, 1, 777, 2048, 4095];
  const ref = attentionRef(x.q, x.k, x.v, null, c, rows);
  for (const causal of [false, true]) {
    const q = tensor(x.q, [1, 1, 4096, 64]);
    const k = tensor(x.k, [1, 1, 4096, 64]);
    const v = tensor(x.v, [1, 1, 4096, 64]);
    const before = poolStats().inUseBytes;
    const o = attention(q, k, v, { causal });
    // Only the output is held afterwards (the log-sum-exp is released: no gradient needed).
    assert.equal(poolStats().inUseBytes - before, sizeClass(4096 * 64 * 4));
    const got = await o.toArray();
    const r = causal ? attentionRef(x.q, x.k, x.v, null, { ...c, causal }, rows) : ref;
    for (const i of rows) {
      // 4096-term fp32 sums: a little more rounding than the small cases.
      assertClose(got.subarray(i * 64, i * 64 + 64), r.o.subarray(i * 64, i * 64 + 64), {
        atol: 5e-5,
        rtol: 1e-3,
      }, `row ${i}${causal ? " causal" : ""}`);
    }
    [q, k, v, o].forEach((t) => t.dispose());
  }
});

gpuTest("attention rejects bad shapes with a clear error", () => {
  const t = (s: number[]) => tensor(new Float32Array(s.reduce((a, b) => a * b, 1)), s);
  tidy(() => {
    assert.throws(() => attention(t([1, 2, 3]), t([1, 2, 3]), t([1, 2, 3])), /q must be/);
    assert.throws(
      () => attention(t([1, 2, 3, 4]), t([1, 2, 3, 5]), t([1, 2, 3, 5])),
      /does not match q/,
    );
    assert.throws(
      () => attention(t([1, 1, 3, 4]), t([1, 1, 5, 4]), t([1, 1, 6, 4])),
      /v .* must have k's shape/,
    );
    assert.throws(
      () => attention(t([1, 1, 2, 129]), t([1, 1, 2, 129]), t([1, 1, 2, 129])),
      /head dim D=129/,
    );
  });
});
