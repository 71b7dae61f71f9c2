/**
 * `deno bench -A bench/matmul_bench.ts`: the matmul kernel at small and medium sizes, every
 * transpose combination, odd sizes (scalar loads) and a batched attention-shaped product, with
 * the tile `kernels/tune.ts` picks for this adapter (and, for comparison, the other family).
 *
 * Each iteration records the product and waits for the GPU (`sync`): GPU time plus one submit and
 * wait. Inputs are uploaded once. `MATMUL_BENCH_N` sets iterations per case (default 5).
 */
import { init } from "../kernels/device.ts";
import { defaultTile, type MatmulDims, matmulKernel, type MatmulTile } from "../kernels/matmul.ts";
import { type Buf, pool, sync, upload } from "../kernels/runtime.ts";

const gpu = await init();
const N_ITER = Number(Deno.env.get("MATMUL_BENCH_N") ?? 5);
const ADAPTER = gpu.adapter.description;

function buffer(n: number, seed: number): Buf {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  const b = pool.acquire(n * 4);
  upload(b, a);
  return b;
}

function dims(batch: number, M: number, N: number, K: number, tA: boolean, tB: boolean) {
  return {
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
  } satisfies MatmulDims;
}

interface Case {
  group: string;
  name: string;
  d: MatmulDims;
  tile?: MatmulTile;
}

const cases: Case[] = [];
for (
  const [label, size] of [["small", 128], ["small", 256], ["medium", 512], [
    "medium",
    1024,
  ]] as const
) {
  for (const [tA, tB] of [[false, false], [false, true], [true, false]] as const) {
    cases.push({
      group: `${label} ${size}^3`,
      name: `${size}^3 A${tA ? "^T" : ""} B${tB ? "^T" : ""}`,
      d: dims(1, size, size, size, tA, tB),
    });
  }
}
cases.push({
  group: "odd sizes",
  name: "255 x 257 x 129 (scalar loads)",
  d: dims(1, 255, 257, 129, false, false),
});
cases.push({
  group: "odd sizes",
  name: "1000 x 1000 x 1000 (vec4 loads)",
  d: dims(1, 1000, 1000, 1000, false, false),
});
cases.push({
  group: "odd sizes",
  name: "999 x 1001 x 1003 (scalar loads)",
  d: dims(1, 999, 1001, 1003, false, false),
});
// ViT-B/16 attention shapes, batch 8 x 12 heads: scores q k^T and probabilities x v.
cases.push({
  group: "attention-shaped (batch 96)",
  name: "q k^T 197 x 197 x 64",
  d: dims(96, 197, 197, 64, false, true),
});
cases.push({
  group: "attention-shaped (batch 96)",
  name: "p v 197 x 64 x 197",
  d: dims(96, 197, 64, 197, false, false),
});
// The other kernel family at 512^3, to show why tune.ts picks what it picks.
const chosen = defaultTile(dims(1, 512, 512, 512, false, false));
const other: MatmulTile = chosen.kind === "shared"
  ? { TM: 16, TN: 8, WX: 8, WY: 1 }
  : { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16 };
cases.push({
  group: "tile families, 512^3",
  name: `chosen ${JSON.stringify(chosen)}`,
  d: dims(1, 512, 512, 512, false, false),
});
cases.push({
  group: "tile families, 512^3",
  name: `other ${JSON.stringify(other)}`,
  d: dims(1, 512, 512, 512, false, false),
  tile: other,
});

for (const c of cases) {
  const { d } = c;
  const a = buffer(d.batch * d.M * d.K, 1), b = buffer(d.batch * d.K * d.N, 2);
  const out = pool.acquire(d.batch * d.M * d.N * 4);
  const gflop = (2 * d.batch * d.M * d.N * d.K) / 1e9;
  Deno.bench({
    name: `${c.name} (${gflop.toPrecision(3)} GFLOP)`,
    group: `${c.group} [${ADAPTER}]`,
    n: N_ITER,
    warmup: 1,
    async fn() {
      matmulKernel(a, b, out, d, null, c.tile);
      await sync();
    },
  });
}
