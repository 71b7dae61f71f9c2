/**
 * `deno run -A bench/matmul_tune.ts [--quick] [--out FILE.json]`: sweep matmul tile shapes on the
 * current adapter and print GFLOP/s per (shape, tile), the best tile per shape, and the tile
 * `kernels/tune.ts` would choose, so a new adapter's defaults can be checked or updated. Every
 * result is checked against a float64 CPU product on a sample of entries.
 */
import { parseArgs } from "node:util";
import { init } from "../kernels/device.ts";
import { defaultTile, type MatmulDims, matmulKernel, type MatmulTile } from "../kernels/matmul.ts";
import { type Buf, pool, readback, sync, upload } from "../kernels/runtime.ts";
import { isCpuAdapter } from "../kernels/tune.ts";

const args = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    out: { type: "string" },
    budget: { type: "string" }, // seconds; the sweep stops (keeping what it has) after this
  },
});
const g = await init();
const limits = g.adapter.limits;
console.log(`adapter: ${g.adapter.description} (${g.adapter.backend})`);

function rand(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

interface Shape {
  name: string;
  d: MatmulDims;
}
const shape = (
  name: string,
  batch: number,
  M: number,
  N: number,
  K: number,
  tA = false,
  tB = false,
) => ({
  name,
  d: {
    batch,
    M,
    N,
    K,
    sab: M * K,
    sam: tA ? 1 : K,
    sak: tA ? M : 1,
    sbb: K * N,
    sbk: tB ? 1 : N,
    sbn: tB ? K : 1,
  },
});
const shapes: Shape[] = [
  shape("1024^3", 1, 1024, 1024, 1024),
  ...(args.values.quick ? [] : [
    shape("4096^3", 1, 4096, 4096, 4096),
    shape("cosine scores 2048x8192x512 (A B^T)", 1, 2048, 8192, 512, false, true),
  ]),
  shape("attn q k^T 96 x 197x197x64", 96, 197, 197, 64, false, true),
  shape("attn p v 96 x 197x64x197", 96, 197, 64, 197),
  shape("ViT MLP 1576x3072x768", 1, 1576, 3072, 768),
  shape("1024^3 A B^T", 1, 1024, 1024, 1024, false, true),
  shape("1024^3 A^T B", 1, 1024, 1024, 1024, true, false),
  shape("1000^3 (odd: scalar loads)", 1, 999, 1001, 1003),
  shape("256^3", 1, 256, 256, 256),
];
const candidates: MatmulTile[] = [
  { TM: 32, TN: 32, WX: 8, WY: 1, rowsFirst: true },
  { TM: 16, TN: 16, WX: 8, WY: 1, rowsFirst: true },
  { TM: 16, TN: 8, WX: 8, WY: 1, rowsFirst: true },
  { TM: 4, TN: 4, WX: 8, WY: 8 },
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 8 },
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 16 },
  { kind: "shared", TM: 8, TN: 4, WX: 16, WY: 16, BK: 16 },
  { kind: "shared", TM: 4, TN: 8, WX: 16, WY: 16, BK: 16 },
  { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16 },
  { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 8 },
  { kind: "shared", TM: 8, TN: 8, WX: 8, WY: 8, BK: 16 },
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 8, BK: 16 },
  { kind: "shared", TM: 8, TN: 8, WX: 8, WY: 16, BK: 16 },
  { kind: "shared", TM: 8, TN: 8, WX: 8, WY: 8, BK: 32 },
  { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 16 },
  // Issue 9: double-buffered tiles, split-k for products with few output tiles, texture inputs.
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 16, double: true },
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 8, double: true },
  { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16, double: true },
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 16, splitK: 2 },
  { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 16, splitK: 4 },
  { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16, splitK: 2 },
  { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16, double: true, splitK: 4 },
  { TM: 32, TN: 32, WX: 8, WY: 1, rowsFirst: true, KU: 2, textures: true },
  { TM: 16, TN: 16, WX: 8, WY: 1, rowsFirst: true, textures: true },
  { TM: 32, TN: 32, WX: 8, WY: 1, rowsFirst: true, KU: 2, textures: "B" },
];
const tiles = candidates.filter((t) =>
  t.WX * t.WY <= limits.maxComputeInvocationsPerWorkgroup &&
  (t.kind !== "shared" ||
    (t.double ? 2 : 1) * (t.BK ?? 8) * (t.TM * t.WY + t.TN * t.WX) * 4 <=
      limits.maxComputeWorkgroupStorageSize)
);
const isCpu = isCpuAdapter(g.adapter);

interface Result {
  shape: string;
  tile: string;
  ms: number;
  gflops: number;
  chosen: boolean;
  error?: string;
}
const results: Result[] = [];
const deadline = performance.now() + 1000 * Number(args.values.budget ?? Infinity);
for (const s of shapes) {
  if (performance.now() > deadline) {
    console.log(`time budget reached: skipping ${s.name} and the rest`);
    break;
  }
  const { d } = s;
  const A = rand(d.batch * d.M * d.K, 1), B = rand(d.batch * d.K * d.N, 2);
  const a = pool.acquire(A.length * 4), b = pool.acquire(B.length * 4);
  upload(a, A);
  upload(b, B);
  const c: Buf = pool.acquire(d.batch * d.M * d.N * 4);
  const flops = 2 * d.batch * d.M * d.N * d.K;
  const chosen = JSON.stringify(defaultTile(d));
  const list = [...tiles];
  if (!list.some((t) => JSON.stringify(t) === chosen)) list.push(JSON.parse(chosen));
  console.log(`\n== ${s.name}  (chosen: ${chosen})`);
  for (const t of list) {
    // On a CPU adapter the GPU tiles take seconds per run at the big sizes: skip them there.
    if (isCpu && t.kind === "shared" && flops > 4e9) continue;
    // On a GPU the register tiles are for reference only: one of them.
    if (!isCpu && (t.kind ?? "register") === "register" && (t.TM !== 16 || t.TN !== 8)) continue;
    // On a CPU adapter the register tiles (with and without textures) are what matters.
    if (isCpu && (t.double || t.splitK)) continue;
    const key = JSON.stringify(t);
    try {
      // GPU time per product: (T(2n) - T(n)) / n cancels the fixed cost of a submit and wait
      // (~10 ms in Deno), with n large enough that T(n) >= 50 ms.
      const batch = async (n: number) => {
        const t0 = performance.now();
        for (let i = 0; i < n; i++) matmulKernel(a, b, c, d, null, t);
        await sync();
        return performance.now() - t0;
      };
      await batch(1);
      let n = 1;
      while (n < 512 && (await batch(n)) < 50) n *= 2;
      let best = Infinity;
      for (let r = 0; r < 3; r++) {
        const t1 = await batch(n), t2 = await batch(2 * n);
        best = Math.min(best, Math.max(t2 - t1, 1e-3) / n);
      }
      // Check a sample of entries against float64.
      const got = new Float32Array(await readback(c, d.batch * d.M * d.N * 4));
      let worst = 0;
      for (let q = 0; q < 32; q++) {
        const bi = q % d.batch, m = (q * 7919) % d.M, n = (q * 104729) % d.N;
        let acc = 0;
        for (let k = 0; k < d.K; k++) {
          acc += A[bi * d.sab + m * d.sam + k * d.sak] * B[bi * d.sbb + k * d.sbk + n * d.sbn];
        }
        worst = Math.max(worst, Math.abs(acc - got[(bi * d.M + m) * d.N + n]));
      }
      const r: Result = {
        shape: s.name,
        tile: key,
        ms: best,
        gflops: flops / best / 1e6,
        chosen: key === chosen,
      };
      if (!(worst <= 1e-5 * d.K)) r.error = `wrong result: |diff| ${worst}`;
      results.push(r);
      console.log(
        `${key.padEnd(70)} ${best.toFixed(3).padStart(9)} ms ${
          r.gflops.toFixed(1).padStart(8)
        } GFLOP/s` +
          `${r.chosen ? "  <- chosen" : ""}${r.error ? "  " + r.error : ""}`,
      );
    } catch (e) {
      results.push({
        shape: s.name,
        tile: key,
        ms: NaN,
        gflops: 0,
        chosen: false,
        error: String(e),
      });
      console.log(`${key.padEnd(70)} failed: ${e}`);
    }
  }
  const ok = results.filter((r) => r.shape === s.name && !r.error);
  const best = ok.reduce((x, y) => (y.gflops > x.gflops ? y : x), ok[0]);
  const mine = ok.find((r) => r.chosen);
  if (best && mine) {
    console.log(
      `best ${best.tile} ${best.gflops.toFixed(1)}; chosen reaches ${
        (100 * mine.gflops / best.gflops).toFixed(0)
      }%`,
    );
  }
  [a, b, c].forEach((x) => pool.release(x));
}
if (args.values.out) {
  await Deno.writeTextFile(
    args.values.out,
    JSON.stringify({ adapter: g.adapter, results }, null, 1),
  );
}
const bad = results.filter((r) => r.error?.startsWith("wrong"));
if (bad.length) {
  console.log(`${bad.length} wrong result(s)`);
  Deno.exit(1);
}
