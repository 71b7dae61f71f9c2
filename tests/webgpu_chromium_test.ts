/**
 * The new kernels under a second WebGPU implementation: headless Chromium (Dawn, Tint, SwiftShader
 * with `subgroups` of size 4). The subgroup forward of the tiled attention runs nowhere else here
 * (llvmpipe through Deno offers no `subgroups`): with 4 invocations per row group (WX = 4) a row
 * group fits in a subgroup and the shuffles run; with 8 (or the GPU's 16) it does not, and the
 * kernel must fall back to workgroup memory. Both against float64. The tiled backward kernels and the new matmul
 * variants must compile and validate under Tint too. Skips where Chromium or its WebGPU is absent.
 */
import assert from "node:assert/strict";
import { type FlashTile, tiledBackward, tiledForward } from "../kernels/attention_tiled.ts";
import { attentionRef } from "../kernels/attention_ref.ts";
import { matmulKernel, type MatmulTile } from "../kernels/matmul.ts";
import { denseDims } from "../kernels/matmul_ref.ts";
import { type Buf, captureDispatches, pool } from "../kernels/runtime.ts";
import { Params } from "../kernels/wgsl.ts";
import { findChromium } from "./chromium_util.ts";
import { gpuTest, randArray } from "./util.ts";
import { type PageJob, runInChromium } from "./webgpu_chromium_util.ts";

function attentionJobs(
  B: number,
  Tq: number,
  Tk: number,
  D: number,
  causal: boolean,
  tile: FlashTile,
  dummy: Buf,
): PageJob[] {
  const q = randArray(B * Tq * D, 1, -2, 2), k = randArray(B * Tk * D, 2, -2, 2);
  const v = randArray(B * Tk * D, 3);
  const ref = attentionRef(q, k, v, null, { B, H: 1, Tq, Tk, D, causal });
  const d = { bh: B, tq: Tq, tk: Tk, d: D, scale: 1 / Math.sqrt(D), causal };
  const ntile = Math.ceil(Tq / (4 * tile.WY));
  const uniform = [
    ...new Uint32Array(
      new Params().u32(d.bh, d.tq, d.tk, d.d).f32(d.scale).u32(causal ? 1 : 0, ntile).build(),
    ),
  ];
  return [false, true].map((sg) => {
    const [c] = captureDispatches(() =>
      tiledForward(dummy, dummy, dummy, dummy, dummy, d, tile, sg)
    );
    return {
      label: `${c.name} Tq${Tq} Tk${Tk}${causal ? " causal" : ""}`,
      code: c.code,
      workgroups: c.workgroups,
      uniform,
      buffers: [[...q], [...k], [...v], new Array(B * Tq * D).fill(NaN), new Array(B * Tq).fill(0)],
      read: 3,
      ref: [...ref.o],
      features: sg ? ["subgroups"] : [],
    };
  });
}

function compileOnly(label: string, f: () => void, features: string[] = []): PageJob[] {
  return captureDispatches(f).map((c) => ({
    label: `${label}: ${c.name}`,
    code: c.code,
    workgroups: c.workgroups,
    buffers: [],
    read: -1,
    features,
  }));
}

gpuTest(
  "tiled attention (with subgroups) and matmul variants under Chromium's WebGPU",
  async () => {
    const chromium = findChromium();
    if (!chromium) {
      console.log("  (skipped: no chromium on PATH)");
      return;
    }
    const x = pool.acquire(1024);
    const d = (D: number) => ({ bh: 2, tq: 37, tk: 41, d: D, scale: 0.2, causal: true });
    const jobs: PageJob[] = [
      // Shuffles (row groups of 4 = the subgroup size), then the fallback (rows of 8 > 4).
      ...attentionJobs(2, 37, 45, 32, true, { WX: 4, WY: 4, DK: 8 }, x),
      ...attentionJobs(1, 70, 70, 32, false, { WX: 8, WY: 2, DK: 8 }, x),
      // Small grids keep SwiftShader's compile time down (a 16 x 16 backward kernel takes it
      // minutes); the code paths are those of any grid (vec4 and scalar head dims).
      ...compileOnly("tiled backward", () => {
        for (const D of [64, 36]) {
          tiledBackward(x, x, x, x, x, x, x, x, x, d(D), { WX: 4, WY: 4, DK: 8 });
        }
      }),
      ...compileOnly("matmul variants", () => {
        const tiles: MatmulTile[] = [
          { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 8, double: true },
          { kind: "shared", TM: 2, TN: 3, WX: 4, WY: 4, BK: 5, double: true, splitK: 3 },
          { TM: 4, TN: 4, WX: 8, WY: 1, rowsFirst: true, textures: true },
        ];
        for (const t of tiles) {
          matmulKernel(x, x, x, denseDims(1, 33, 64, 100), x, t, { activation: "gelu", pre: x });
        }
      }),
      ...compileOnly("matmul f16", () => {
        const t: MatmulTile = { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 8 };
        matmulKernel(x, x, x, denseDims(1, 32, 64, 96), null, t, {}, { f16A: true, f16B: true });
      }, ["shader-f16"]),
    ];
    pool.release(x);
    const outcome = await runInChromium(chromium, jobs);
    if ("skip" in outcome) {
      console.log(`  (skipped: ${outcome.skip})`);
      return;
    }
    assert.equal(outcome.results.length, jobs.length, "every job reported");
    let ran = 0;
    for (const r of outcome.results) {
      if (r.skipped) {
        console.log(`  ${r.label}: ${r.skipped}`);
        continue;
      }
      assert.deepEqual(r.errors, [], r.label);
      if (r.maxErr !== undefined) {
        ran++;
        // fp32 sums of <= 64 products of O(1) terms, as in attention_test.ts.
        assert.ok(r.maxErr !== null && r.maxErr < 2e-5, `${r.label}: max |err| ${r.maxErr}`);
      }
    }
    assert.ok(ran >= 2, `${ran} kernels ran`);
  },
);
