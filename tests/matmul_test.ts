/**
 * Matmul kernels (register and workgroup-memory families) against a float64 CPU product, at odd
 * sizes, every transpose combination, batched and broadcast strides, strided sub-matrices, every
 * epilogue, custom tiles and grids split over several dispatches. Plus: the tile chooser, and a
 * forward + backward of a small model recorded into one submit.
 */
import assert from "node:assert/strict";
import { type AdapterDescription, gpu, init } from "../kernels/device.ts";
import {
  type MatmulActivation,
  type MatmulDims,
  matmulKernel,
  matmulModes,
  type MatmulTile,
} from "../kernels/matmul.ts";
import { denseDims, matmulRef } from "../kernels/matmul_ref.ts";
import { MATMUL_ACTIVATIONS } from "../kernels/activation.ts";
import { counters, pool, readback, upload } from "../kernels/runtime.ts";
import { isCpuAdapter, matmulTile } from "../kernels/tune.ts";
import { backward } from "../nn/autograd.ts";
import { tensor, tidy } from "../nn/tensor.ts";
import { add, matmul, mul, relu, sum } from "../nn/ops/index.ts";
import { assertClose, gpuTest, randArray } from "./util.ts";

const REGISTER: MatmulTile = { TM: 16, TN: 8, WX: 8, WY: 1, rowsFirst: true };
const REGISTER_SMALL: MatmulTile = { TM: 4, TN: 4, WX: 8, WY: 1 };
// Small workgroup-memory tiles: llvmpipe through GL compiles barrier kernels slowly (seconds per
// pipeline, ~40 s for the 16x16-invocation GPU tile), so most checks use a 4x2-invocation one
// (vec4 tiles in workgroup memory, interleaved like the GPU tiles; "custom odd tiles" covers the
// scalar layout).
const SHARED: MatmulTile = { kind: "shared", TM: 4, TN: 4, WX: 4, WY: 2, BK: 8 };
const SHARED_GPU: MatmulTile = { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 8 };
const TILES: [string, MatmulTile, boolean][] = [
  ["register 16x8", REGISTER, true],
  ["register 8x16 columns-first", { TM: 8, TN: 16, WX: 8, WY: 1 }, false],
  ["shared 8x16", SHARED, true],
  [
    "shared 16x16, 4x4 per invocation",
    { kind: "shared", TM: 4, TN: 4, WX: 4, WY: 4, BK: 4 },
    false,
  ],
];
const GL = (Deno.env.get("DENO_WEBGPU_BACKEND") ?? "gl") === "gl";

interface Case {
  batch: number;
  M: number;
  N: number;
  K: number;
  tA: boolean;
  tB: boolean;
  /** A and/or B shared by every batch (stride 0). */
  broadcastA?: boolean;
  broadcastB?: boolean;
}

function dimsOf(c: Case): MatmulDims {
  return denseDims(c.batch, c.M, c.N, c.K, {
    transposeA: c.tA,
    transposeB: c.tB,
    broadcastA: c.broadcastA,
    broadcastB: c.broadcastB,
  });
}

/** Elements an operand needs: its largest address + 1. */
function extent(batch: number, sb: number, r: number, sr: number, c: number, sc: number): number {
  return batch * r * c === 0 ? 1 : (batch - 1) * sb + (r - 1) * sr + (c - 1) * sc + 1;
}

interface RunOptions {
  tile?: MatmulTile;
  bias?: boolean;
  alpha?: number;
  act?: MatmulActivation;
  seed?: number;
  /** Also store the pre-activation and check it. */
  pre?: boolean;
}

/** Run one product on the GPU and compare it with the float64 reference. */
async function check(d: MatmulDims, label: string, o: RunOptions = {}): Promise<void> {
  const seed = o.seed ?? d.M * 7 + d.N * 13 + d.K;
  const A = randArray(extent(d.batch, d.sab, d.M, d.sam, d.K, d.sak), seed);
  const B = randArray(extent(d.batch, d.sbb, d.K, d.sbk, d.N, d.sbn), seed + 1);
  const bias = o.bias ? randArray(d.N, seed + 2) : null;
  const bufs = [A, B, bias ?? new Float32Array(1)].map((x) => {
    const buf = pool.acquire(x.length * 4);
    upload(buf, x);
    return buf;
  });
  const n = Math.max(1, d.batch * d.M * d.N);
  const [c, z] = [0, 1].map(() => {
    const buf = pool.acquire(n * 4);
    upload(buf, new Float32Array(n).fill(Number.NaN)); // poisoned: a missed store shows up
    return buf;
  });
  matmulKernel(bufs[0], bufs[1], c, d, bias ? bufs[2] : null, o.tile, {
    alpha: o.alpha,
    activation: o.act,
    pre: o.pre ? z : null,
  });
  const got = new Float32Array(await readback(c, d.batch * d.M * d.N * 4));
  const gotPre = new Float32Array(await readback(z, d.batch * d.M * d.N * 4));
  [...bufs, c, z].forEach((x) => pool.release(x));
  const want = matmulRef(A, B, d, { bias, alpha: o.alpha, activation: o.act });
  // fp32 accumulation of K products of values in [-1, 1]: error grows ~ K * 2^-24 * |terms|.
  const tol = { atol: 1e-5 * Math.max(1, d.K), rtol: 1e-5 };
  assertClose(got, want, tol, label);
  if (o.pre) assertClose(gotPre, matmulRef(A, B, d, { bias, alpha: o.alpha }), tol, `${label} pre`);
}

const ODD: Case[] = [
  { batch: 1, M: 1, N: 1, K: 1, tA: false, tB: false },
  { batch: 1, M: 37, N: 33, K: 29, tA: false, tB: false },
  { batch: 3, M: 7, N: 65, K: 130, tA: false, tB: true },
  { batch: 2, M: 129, N: 17, K: 9, tA: true, tB: false },
  { batch: 3, M: 33, N: 31, K: 67, tA: true, tB: true },
  { batch: 3, M: 18, N: 9, K: 5, tA: false, tB: true, broadcastA: true },
  { batch: 2, M: 11, N: 70, K: 3, tA: true, tB: false, broadcastB: true },
  { batch: 1, M: 1, N: 131, K: 257, tA: false, tB: false },
  { batch: 1, M: 133, N: 1, K: 7, tA: false, tB: true },
];

for (const [tname, tile, allModes] of TILES) {
  gpuTest(`matmul ${tname}: odd sizes, every transpose, batched and broadcast`, async () => {
    for (const c of ODD) {
      await check(dimsOf(c), `${tname} ${JSON.stringify(c)}`, { tile });
    }
  });

  gpuTest(`matmul ${tname}: aligned sizes take the vec4 paths and agree`, async () => {
    const expect: Record<string, string> = {
      "false,false": "vk/vn",
      "false,true": "vk/vk",
      "true,false": "vm/vn",
      "true,true": "vm/vk",
    };
    for (const tA of allModes ? [false, true] : [false]) {
      for (const tB of allModes ? [false, true] : [false]) {
        // Sizes are multiples of 4 but not of the tiles, so the tails are exercised too.
        for (
          const c of [
            { batch: 2, M: 36, N: 44, K: 28, tA, tB },
            { batch: 1, M: 4, N: 132, K: 68, tA, tB },
          ]
        ) {
          const d = dimsOf(c);
          const modes = matmulModes(d, tile);
          assert.equal(`${modes.a}/${modes.b}`, expect[`${tA},${tB}`], `modes for ${tA},${tB}`);
          await check(d, `${tname} aligned ${JSON.stringify(c)}`, { tile, bias: true });
        }
      }
    }
  });
}

gpuTest("matmul: strided sub-matrices (row stride > K) and K = 0", async () => {
  for (const tile of [REGISTER, SHARED]) {
    // A is the first 33 columns of a [21, 40] matrix; B the first 19 columns of a [33, 24].
    const d: MatmulDims = {
      batch: 1,
      M: 21,
      N: 19,
      K: 33,
      sab: 0,
      sam: 40,
      sak: 1,
      sbb: 0,
      sbk: 24,
      sbn: 1,
    };
    await check(d, `sub-matrix ${tile.kind ?? "register"}`, { tile });
    // Aligned sub-matrix: stride 40, K = 32: vec4 loads of a view.
    const d4: MatmulDims = {
      batch: 2,
      M: 9,
      N: 12,
      K: 32,
      sab: 400,
      sam: 40,
      sak: 1,
      sbb: 0,
      sbk: 16,
      sbn: 1,
    };
    assert.equal(matmulModes(d4, tile).a, "vk");
    await check(d4, `aligned sub-matrix ${tile.kind ?? "register"}`, { tile });
    const d0: MatmulDims = {
      batch: 1,
      M: 5,
      N: 6,
      K: 0,
      sab: 0,
      sam: 0,
      sak: 1,
      sbb: 0,
      sbk: 6,
      sbn: 1,
    };
    await check(d0, "K = 0 gives bias alone", { tile, bias: true });
  }
});

gpuTest("matmul: every activation, alpha and bias in the epilogue", async () => {
  const d = dimsOf({ batch: 1, M: 19, N: 24, K: 16, tA: false, tB: false });
  for (const act of MATMUL_ACTIVATIONS) {
    await check(d, `epilogue ${act}`, { act, alpha: 0.37, bias: true, tile: REGISTER_SMALL });
  }
  // The pre-activation stored by the same dispatch: vec4 and scalar C, both families.
  const odd = dimsOf({ batch: 2, M: 13, N: 19, K: 11, tA: false, tB: true });
  for (const tile of [REGISTER_SMALL, REGISTER, SHARED]) {
    for (const dd of [d, odd]) {
      await check(dd, `pre + gelu ${JSON.stringify(tile)} N=${dd.N}`, {
        act: "gelu",
        bias: true,
        tile,
        pre: true,
      });
    }
  }
  await check(odd, "pre without bias, quick_gelu", { act: "quick_gelu", tile: SHARED, pre: true });
  await check(d, "epilogue gelu, shared kernel", {
    act: "gelu",
    alpha: -1.5,
    bias: true,
    tile: SHARED,
  });
});

gpuTest("matmul: custom odd tiles and the adapter's own choice", async () => {
  const d = dimsOf({ batch: 2, M: 45, N: 51, K: 37, tA: true, tB: false });
  await check(d, "register 3x5", { tile: { TM: 3, TN: 5, WX: 4, WY: 2 } });
  // k unrolled by 8 with a 4-step tail (K = 44) and a 1-step tail (odd K, scalar loads).
  const d8 = dimsOf({ batch: 1, M: 9, N: 24, K: 44, tA: false, tB: true });
  await check(d8, "register KU 2, K = 44", { tile: { TM: 4, TN: 8, WX: 8, WY: 1, KU: 2 } });
  await check(d, "register KU 2, K = 37", { tile: { TM: 4, TN: 8, WX: 8, WY: 1, KU: 2 } });
  await check(d, "shared 2x3 BK 5", {
    tile: { kind: "shared", TM: 2, TN: 3, WX: 4, WY: 8, BK: 5 },
  });
  const d2 = dimsOf({ batch: 1, M: 140, N: 136, K: 40, tA: false, tB: true });
  await check(d2, "adapter's choice", {});
});

gpuTest(
  "matmul: the CPU's 32x32 register tile (big products), with tails in M, N and K",
  async () => {
    // ~5-8 s to compile on llvmpipe: one variant only.
    const d = dimsOf({ batch: 2, M: 70, N: 300, K: 44, tA: false, tB: false });
    await check(d, "register 32x32", {
      tile: { TM: 32, TN: 32, WX: 8, WY: 1, rowsFirst: true },
      bias: true,
      act: "relu",
    });
  },
);

Deno.test({
  name: "matmul: the GPU's 128x128 workgroup-memory tile (not on GL: 40 s to compile there)",
  ignore: GL,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await init({ tune: false });
    const d = dimsOf({ batch: 1, M: 140, N: 136, K: 40, tA: false, tB: true });
    await check(d, "shared 128x128", { tile: SHARED_GPU, bias: true, act: "relu" });
  },
});

gpuTest("matmul: grids over maxComputeWorkgroupsPerDimension are split", async () => {
  const max = gpu().adapter.limits.maxComputeWorkgroupsPerDimension;
  const M = max + 37;
  const d = dimsOf({ batch: 1, M, N: 3, K: 2, tA: false, tB: false });
  for (const rowsFirst of [false, true]) {
    await check(d, `M = ${M} rows, one row per workgroup, rowsFirst ${rowsFirst}`, {
      tile: { TM: 1, TN: 4, WX: 1, WY: 1, rowsFirst },
    });
  }
});

gpuTest("matmul: bad tiles and sizes are rejected with a clear error", () => {
  const b = pool.acquire(64);
  const d = dimsOf({ batch: 1, M: 2, N: 2, K: 2, tA: false, tB: false });
  assert.throws(
    () => matmulKernel(b, b, b, d, null, { TM: 0, TN: 4, WX: 8, WY: 1 }),
    /invalid tile/,
  );
  assert.throws(() => matmulKernel(b, b, b, { ...d, M: -1 }), /M = -1/);
  assert.throws(
    () => matmulKernel(b, b, b, d, null, undefined, { activation: "swish" as MatmulActivation }),
    /unknown activation/,
  );
  pool.release(b);
});

Deno.test("tune: CPU adapters get register tiles, GPUs workgroup-memory tiles that fit", () => {
  const base: AdapterDescription = {
    description: "NVIDIA H100",
    vendor: "nvidia",
    architecture: "hopper",
    isFallbackAdapter: false,
    features: [],
    limits: {
      maxBufferSize: 2 ** 31,
      maxStorageBufferBindingSize: 2 ** 30,
      maxComputeWorkgroupStorageSize: 16384,
      maxComputeInvocationsPerWorkgroup: 256,
      maxComputeWorkgroupSizeX: 256,
      maxComputeWorkgroupsPerDimension: 65535,
      maxStorageBuffersPerShaderStage: 8,
      maxTextureDimension2D: 8192,
    },
    backend: "vulkan",
  };
  const llvmpipe = { ...base, description: "llvmpipe (LLVM 15.0.6, 256 bits)", vendor: "65541" };
  assert.ok(isCpuAdapter(llvmpipe));
  assert.ok(!isCpuAdapter(base));
  const big = { batch: 1, M: 4096, N: 4096, K: 4096 };
  const cpu = matmulTile(big, llvmpipe);
  assert.equal(cpu.kind ?? "register", "register");
  assert.equal(cpu.WY, 1, "CPU tiles keep A's addresses uniform across lanes");
  const g = matmulTile(big, base);
  assert.equal(g.kind, "shared");
  assert.ok((g.BK ?? 8) * (g.TM * g.WY + g.TN * g.WX) * 4 <= 16384, "fits workgroup memory");
  assert.ok(g.WX * g.WY <= 256);
  // A tiny product on a GPU gets a small tile (more workgroups), and a tiny-memory GPU still fits.
  const small = matmulTile({ batch: 1, M: 64, N: 64, K: 64 }, base);
  assert.ok(small.TM * small.WY <= 64);
  const tiny = { ...base, limits: { ...base.limits, maxComputeWorkgroupStorageSize: 2048 } };
  const t = matmulTile(big, tiny);
  assert.ok((t.BK ?? 8) * (t.TM * t.WY + t.TN * t.WX) * 4 <= 2048);
});

gpuTest("a forward + backward of a small MLP records into one submit, read back once", async () => {
  const x = tensor(randArray(8 * 16, 1), [8, 16]);
  const w1 = tensor(randArray(16 * 32, 2), [16, 32], { requiresGrad: true });
  const b1 = tensor(randArray(32, 3), [32], { requiresGrad: true });
  const w2 = tensor(randArray(4 * 32, 4), [4, 32], { requiresGrad: true });
  const t = tensor(randArray(8 * 4, 5), [8, 4]);
  await x.toArray(); // uploads done and submitted
  const s0 = counters.submits, r0 = counters.readbacks, d0 = counters.dispatches;
  const loss = tidy(() => {
    const h = relu(matmul(x, w1, { bias: b1 }));
    const y = matmul(h, w2, { transposeB: true });
    const l = sum(mul(add(y, t), y));
    backward(l);
    return l;
  });
  assert.ok(counters.dispatches - d0 >= 8, "the step ran kernels");
  assert.equal(counters.submits, s0, "nothing submitted before a value is needed");
  assert.equal(counters.readbacks, r0, "nothing read back during the step");
  const lv = await loss.item();
  assert.equal(counters.submits - s0, 1, "the whole step went in one command buffer");
  assert.equal(counters.readbacks - r0, 1);
  const g1 = await w2.grad!.toArray();
  assert.equal(counters.submits - s0, 2, "a later readback submits only its own copy");
  assert.ok(Number.isFinite(lv) && g1.every(Number.isFinite));
  // Check the gradient of w2 against the float64 chain rule: dL/dy = 2y + t, dL/dW2 = g^T h.
  const X = await x.toArray(), W1 = await w1.toArray(), B1 = await b1.toArray();
  const W2 = await w2.toArray(), T = await t.toArray();
  const H = new Float64Array(8 * 32), G = new Float64Array(8 * 4);
  for (let i = 0; i < 8; i++) {
    for (let j = 0; j < 32; j++) {
      let s = B1[j];
      for (let k = 0; k < 16; k++) s += X[i * 16 + k] * W1[k * 32 + j];
      H[i * 32 + j] = Math.max(s, 0);
    }
    for (let o = 0; o < 4; o++) {
      let y = 0;
      for (let j = 0; j < 32; j++) y += H[i * 32 + j] * W2[o * 32 + j];
      G[i * 4 + o] = 2 * y + T[i * 4 + o];
    }
  }
  const want = new Float64Array(4 * 32);
  for (let o = 0; o < 4; o++) {
    for (let j = 0; j < 32; j++) {
      for (let i = 0; i < 8; i++) want[o * 32 + j] += G[i * 4 + o] * H[i * 32 + j];
    }
  }
  assertClose(g1, want, { atol: 1e-3, rtol: 1e-4 }, "dL/dW2");
  [x, w1, b1, w2, t, loss].forEach((v) => v.dispose());
});
