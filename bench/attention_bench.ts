/**
 * `deno bench -A bench/attention_bench.ts`: fused flash-style attention vs the unfused
 * matmul-softmax-matmul composition, forward and forward + backward, for a ViT-B/16 layer
 * (B=8, H=12, T=197, D=64) and a causal CLIP text layer (B=8, H=8, T=77, D=64).
 *
 * Each iteration records the work REPS times and waits for the GPU once (`sync`), so the times
 * are GPU times plus the fixed cost of one submit and wait (~11 ms in Deno): `ATTN_BENCH_REPS`
 * (default 20 on GPUs, 1 on CPU adapters) amortises it. Inputs are uploaded once, outside the timed region.
 * `ATTN_BENCH_N` sets the iterations per case (default 5, after 1 warm-up): llvmpipe is slow.
 * The fused op also runs with the tile mode the adapter does not pick by default (workgroup-memory
 * tiles on CPU adapters, direct reads on GPUs), to check that choice.
 */
import { init } from "../kernels/device.ts";
import { attentionTileMode } from "../kernels/attention.ts";
import { sync } from "../kernels/runtime.ts";
import { backward } from "../nn/autograd.ts";
import { randn, type Tensor, tidy } from "../nn/tensor.ts";
import { attention, type AttentionOptions, attentionUnfused } from "../nn/ops/attention.ts";

const gpu = await init();
const N = Number(Deno.env.get("ATTN_BENCH_N") ?? 5);
// Calls recorded per wait: on a GPU one call is far below the ~11 ms a wait costs in Deno.
const shared = attentionTileMode() === "shared";
const REPS = Number(Deno.env.get("ATTN_BENCH_REPS") ?? (shared ? 20 : 1));

interface Shape {
  label: string;
  B: number;
  H: number;
  T: number;
  D: number;
  causal: boolean;
}

const SHAPES: Shape[] = [
  { label: "ViT-B/16 B=8 H=12 T=197 D=64", B: 8, H: 12, T: 197, D: 64, causal: false },
  { label: "text causal B=8 H=8 T=77 D=64", B: 8, H: 8, T: 77, D: 64, causal: true },
];

type Attn = (q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions) => Tensor;

for (const s of SHAPES) {
  const shape = [s.B, s.H, s.T, s.D];
  const flops = 4 * s.B * s.H * s.T * s.T * s.D * (s.causal ? 0.5 : 1);
  const mk = (seed: number, grad: boolean) => randn(shape, { seed, requiresGrad: grad });
  // Kept for the whole process: one set with gradients, one without.
  const plain = [mk(1, false), mk(2, false), mk(3, false)];
  const train = [mk(1, true), mk(2, true), mk(3, true)];
  const g = randn(shape, { seed: 4 });
  // The fused op with the tile mode this adapter does not pick by default, to check the choice.
  const other = shared ? "direct" : "shared";
  const fusedOther: Attn = (q, k, v, o) => attention(q, k, v, { ...o, tiles: other });
  const impls: [string, Attn][] = [
    ["fused", attention],
    [`fused (${other} tiles)`, fusedOther],
    ["unfused", attentionUnfused],
  ];
  for (const [impl, f] of impls) {
    Deno.bench({
      name: `${impl} forward${REPS > 1 ? ` x${REPS}` : ""}`,
      group: `${s.label} forward (${(flops / 1e9).toFixed(2)} GFLOP) [${gpu.adapter.description}]`,
      baseline: impl === "fused",
      n: N,
      warmup: 1,
      async fn() {
        for (let r = 0; r < REPS; r++) {
          tidy(() => {
            f(plain[0], plain[1], plain[2], { causal: s.causal });
          });
        }
        await sync();
      },
    });
    Deno.bench({
      name: `${impl} forward + backward${REPS > 1 ? ` x${REPS}` : ""}`,
      group: `${s.label} forward + backward [${gpu.adapter.description}]`,
      baseline: impl === "fused",
      n: N,
      warmup: 1,
      async fn() {
        for (let r = 0; r < REPS; r++) {
          tidy(() => {
            backward(f(train[0], train[1], train[2], { causal: s.causal }), { grad: g });
            for (const t of train) {
              t.grad?.dispose();
              t.grad = null;
            }
          });
        }
        await sync();
      },
    });
  }
}
