/**
 * The matmul variants of issue 9, forced on whatever adapter runs the tests (llvmpipe in CI):
 * operands read through textures (the CPU-adapter input path), split-k (partial products summed
 * by a second kernel that applies the epilogue), double-buffered workgroup tiles, and f16 operand
 * storage with f32 accumulation (`shader-f16`). Each against a float64 product on odd sizes,
 * transposes and batches. Plus the tile chooser's use of a measured preference and of split-k.
 */
import assert from "node:assert/strict";
import { type AdapterDescription, gpu } from "../kernels/device.ts";
import { type MatmulActivation, matmulKernel, type MatmulTile } from "../kernels/matmul.ts";
import { denseDims, matmulRef } from "../kernels/matmul_ref.ts";
import { captureDispatches, pool, readback, upload } from "../kernels/runtime.ts";
import { matmulTile } from "../kernels/tune.ts";
import { assertClose, gpuTest, randArray } from "./util.ts";

interface Case {
  batch: number;
  M: number;
  N: number;
  K: number;
  tA: boolean;
  tB: boolean;
}

const CASES: Case[] = [
  { batch: 1, M: 37, N: 41, K: 129, tA: false, tB: false },
  { batch: 2, M: 64, N: 48, K: 260, tA: false, tB: true },
  { batch: 3, M: 33, N: 64, K: 100, tA: true, tB: false },
  { batch: 1, M: 9, N: 7, K: 1031, tA: true, tB: true },
];

/** Round to the nearest f16 (what an f16 buffer holds) and back. */
function roundF16(x: Float32Array): { f16: Uint16Array; values: Float32Array } {
  const f16 = new Uint16Array(x.length), values = new Float32Array(x.length);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < x.length; i++) {
    // Inputs here are in [-1, 1): normal f16 or zero; round to nearest even on 13 dropped bits.
    f[0] = x[i];
    const b = u[0], sign = (b >>> 16) & 0x8000, e = ((b >>> 23) & 0xff) - 127 + 15;
    let m = b & 0x7fffff;
    if (e <= 0) { // tiny: flush (|x| < 6e-5 never matters at these tolerances)
      f16[i] = sign;
      values[i] = 0;
      continue;
    }
    let h = (e << 10) | (m >>> 13);
    m &= 0x1fff;
    if (m > 0x1000 || (m === 0x1000 && (h & 1))) h++;
    f16[i] = sign | h;
    const he = (h >>> 10) & 0x1f, hm = h & 0x3ff;
    values[i] = (sign ? -1 : 1) * 2 ** (he - 15) * (1 + hm / 1024);
  }
  return { f16, values };
}

interface Run {
  tile: MatmulTile;
  bias?: boolean;
  act?: MatmulActivation;
  alpha?: number;
  pre?: boolean;
  f16?: boolean;
}

async function check(c: Case, r: Run, label: string): Promise<void> {
  const d = denseDims(c.batch, c.M, c.N, c.K, { transposeA: c.tA, transposeB: c.tB });
  const seed = c.M + 3 * c.N + 7 * c.K;
  let A = randArray(c.batch * c.M * c.K, seed), B = randArray(c.batch * c.K * c.N, seed + 1);
  const bias = r.bias ? randArray(c.N, seed + 2) : null;
  let bytesA: ArrayBufferView = A, bytesB: ArrayBufferView = B;
  if (r.f16) {
    const ha = roundF16(A), hb = roundF16(B);
    [A, B, bytesA, bytesB] = [ha.values, hb.values, ha.f16, hb.f16];
  }
  const put = (x: ArrayBufferView) => {
    const buf = pool.acquire(Math.max(4, x.byteLength));
    upload(buf, x.byteLength % 4 ? new Uint16Array([...(x as Uint16Array), 0]) : x);
    return buf;
  };
  const a = put(bytesA), b = put(bytesB), bb = put(bias ?? new Float32Array(1));
  const n = c.batch * c.M * c.N;
  const [out, z] = [0, 1].map(() => put(new Float32Array(n).fill(Number.NaN)));
  matmulKernel(
    a,
    b,
    out,
    d,
    bias ? bb : null,
    r.tile,
    { activation: r.act, alpha: r.alpha, pre: r.pre ? z : null },
    { f16A: r.f16, f16B: r.f16 },
  );
  const got = new Float32Array(await readback(out, n * 4));
  const gotPre = new Float32Array(await readback(z, n * 4));
  [a, b, bb, out, z].forEach((x) => pool.release(x));
  // fp32 accumulation of K products of values in [-1, 1].
  const tol = { atol: 1e-5 * Math.max(1, c.K), rtol: 1e-5 };
  assertClose(got, matmulRef(A, B, d, { bias, alpha: r.alpha, activation: r.act }), tol, label);
  if (r.pre) {
    assertClose(gotPre, matmulRef(A, B, d, { bias, alpha: r.alpha }), tol, `${label} pre`);
  }
}

const caseName = (c: Case) =>
  `${c.batch}x${c.M}x${c.N}x${c.K}${c.tA ? " A^T" : ""}${c.tB ? " B^T" : ""}`;

const TEX: MatmulTile = { TM: 8, TN: 8, WX: 8, WY: 1, rowsFirst: true, textures: true };
const RUNS: [string, Run][] = [
  ["textures 8x8", { tile: TEX }],
  ["textures 4x4 (2 rows of lanes) + bias + gelu", {
    tile: { TM: 4, TN: 4, WX: 8, WY: 2, textures: true },
    bias: true,
    act: "gelu",
    pre: true,
  }],
  ["textures 8x8 unrolled x2", { tile: { ...TEX, KU: 2 } }],
  ["register split-k 5", { tile: { TM: 8, TN: 8, WX: 8, WY: 1, splitK: 5 } }],
  ["textures split-k 3 + bias + relu + alpha", {
    tile: { ...TEX, splitK: 3 },
    bias: true,
    act: "relu",
    alpha: 0.5,
    pre: true,
  }],
  ["shared double-buffered", {
    tile: { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 8, double: true },
  }],
  ["shared double-buffered, odd scalar tile", {
    tile: { kind: "shared", TM: 2, TN: 3, WX: 4, WY: 4, BK: 5, double: true },
    bias: true,
  }],
  ["shared double-buffered split-k 4 + gelu + pre", {
    tile: { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 8, double: true, splitK: 4 },
    bias: true,
    act: "gelu",
    pre: true,
  }],
];

for (const [label, run] of RUNS) {
  gpuTest(`matmul ${label} vs float64`, async () => {
    for (const c of CASES) await check(c, run, `${label} ${caseName(c)}`);
  });
}

gpuTest("matmul f16 operands, f32 accumulation vs float64 of the f16 values", async () => {
  if (!gpu().adapter.features.includes("shader-f16")) {
    console.log("  (skipped: this adapter offers no shader-f16)");
    return;
  }
  const tiles: [string, MatmulTile][] = [
    ["register", { TM: 8, TN: 8, WX: 8, WY: 1, rowsFirst: true }],
    ["shared", { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 8, double: true }],
    ["shared scalar", { kind: "shared", TM: 2, TN: 3, WX: 4, WY: 4, BK: 5 }],
  ];
  for (const [label, tile] of tiles) {
    for (const c of CASES) {
      await check(c, { tile, f16: true, bias: true }, `f16 ${label} ${caseName(c)}`);
    }
  }
});

gpuTest("matmul: f16 operands without shader-f16 are refused clearly", () => {
  if (gpu().adapter.features.includes("shader-f16")) return;
  const x = pool.acquire(64);
  assert.throws(
    () => matmulKernel(x, x, x, denseDims(1, 2, 2, 2), null, undefined, {}, { f16A: true }),
    /shader-f16/,
  );
  pool.release(x);
});

gpuTest(
  "matmul: a texture operand larger than the texture limit falls back to buffers",
  async () => {
    // Force the fallback by claiming the adapter's texture limit is 0 rows.
    const g = gpu();
    const saved = g.adapter.limits.maxTextureDimension2D;
    g.adapter.limits.maxTextureDimension2D = 0;
    try {
      const x = pool.acquire(4 * 37 * 129);
      const d = denseDims(1, 37, 41, 129);
      const [k] = captureDispatches(() => matmulKernel(x, x, x, d, null, TEX));
      pool.release(x);
      assert.doesNotMatch(k.name, /texture/, k.name);
      await check(CASES[0], { tile: TEX }, "texture fallback");
    } finally {
      g.adapter.limits.maxTextureDimension2D = saved;
    }
  },
);

const CPU: AdapterDescription = {
  description: "llvmpipe (LLVM 15.0.6, 256 bits)",
  vendor: "65541",
  architecture: "",
  isFallbackAdapter: true,
  features: [],
  limits: {
    maxBufferSize: 2 ** 31,
    maxStorageBufferBindingSize: 2 ** 27,
    maxComputeWorkgroupStorageSize: 32768,
    maxComputeInvocationsPerWorkgroup: 1024,
    maxComputeWorkgroupSizeX: 1024,
    maxComputeWorkgroupsPerDimension: 65535,
    maxStorageBuffersPerShaderStage: 32,
    maxTextureDimension2D: 16384,
  },
  backend: "vulkan",
};
const H200: AdapterDescription = {
  ...CPU,
  description: "NVIDIA H200",
  vendor: "4318",
  isFallbackAdapter: false,
  limits: { ...CPU.limits, maxComputeWorkgroupStorageSize: 49152 },
};

Deno.test("tile chooser: a measured CPU preference (textures, 16x16 cap) is applied", () => {
  const s = { batch: 1, M: 1024, N: 1024, K: 1024 };
  assert.equal(matmulTile(s, CPU).textures, undefined);
  assert.equal(matmulTile(s, CPU).TM, 32);
  const t = matmulTile(s, CPU, { matmul: { textures: true, maxTile: 16 } });
  assert.deepEqual([t.TM, t.TN, t.textures], [16, 16, true]);
  // A measured 32x32 preference applies from 2^28 multiply-adds (ViT-B/16 MLP at batch 2).
  const vit = { batch: 1, M: 394, N: 3072, K: 768 };
  assert.equal(matmulTile(vit, CPU).TM, 16);
  assert.equal(matmulTile(vit, CPU, { matmul: { textures: true, maxTile: 32 } }).TM, 32);
  // Tiny products skip the copy into textures.
  const tiny = matmulTile({ batch: 1, M: 8, N: 8, K: 8 }, CPU, {
    matmul: { textures: true, maxTile: 32 },
  });
  assert.equal(tiny.textures, undefined);
});

Deno.test("tile chooser: few output tiles and a deep k split k on a GPU", () => {
  const t = matmulTile({ batch: 1, M: 256, N: 256, K: 8192 }, H200);
  assert.equal(t.kind, "shared");
  assert.ok((t.splitK ?? 1) > 1, JSON.stringify(t));
  assert.equal(matmulTile({ batch: 1, M: 4096, N: 4096, K: 4096 }, H200).splitK, undefined);
});
