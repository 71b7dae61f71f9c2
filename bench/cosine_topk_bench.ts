/**
 * `deno bench -A bench/cosine_topk_bench.ts`: streaming cosine top-k (`nn/retrieval.ts`) at small
 * and medium sizes, k = 1, 10 and 64, with GPU-resident Tensor inputs and with Float32Array inputs
 * (which adds the uploads). Each iteration includes normalising both inputs and reading back the
 * N x k results. `TOPK_BENCH_N` sets iterations per case (default 3, after 1 warm-up).
 */
import { init } from "../kernels/device.ts";
import { cosineTopK } from "../nn/retrieval.ts";
import { tensor } from "../nn/tensor.ts";

const gpu = await init();
const N_ITER = Number(Deno.env.get("TOPK_BENCH_N") ?? 3);
const ADAPTER = gpu.adapter.description;

function rand(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

const SIZES = [
  { label: "small", N: 256, M: 2048, d: 512 },
  { label: "medium", N: 2048, M: 20000, d: 512 },
];

for (const s of SIZES) {
  const Q = rand(s.N * s.d, 1), K = rand(s.M * s.d, 2);
  const q = tensor(Q, [s.N, s.d]), k = tensor(K, [s.M, s.d]);
  const gflop = (2 * s.N * s.M * s.d) / 1e9;
  const group =
    `${s.label}: ${s.N} queries x ${s.M} keys, d=${s.d} (${gflop.toPrecision(3)} GFLOP) ` +
    `[${ADAPTER}]`;
  for (const topk of [1, 10, 64]) {
    Deno.bench({
      name: `k=${topk}, Tensor inputs`,
      group,
      baseline: topk === 10,
      n: N_ITER,
      warmup: 1,
      async fn() {
        await cosineTopK(q, k, topk);
      },
    });
  }
  Deno.bench({
    name: "k=10, Float32Array inputs (uploads included)",
    group,
    n: N_ITER,
    warmup: 1,
    async fn() {
      await cosineTopK(Q, K, 10, { dim: s.d });
    },
  });
}
