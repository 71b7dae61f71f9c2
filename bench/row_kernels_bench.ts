/**
 * `deno bench -A bench/row_kernels_bench.ts`: the fused row kernels on the sizes the models use.
 * Each iteration records BATCH launches and waits for the GPU with `sync()`, so the time per
 * iteration / BATCH is the GPU time of one launch (plus its share of recording). The softmax is
 * also timed as the unfused composition of core ops (max, sub, exp, sum, div) for comparison.
 * Effective bandwidth (bytes that must move / time) is printed once per case at the end.
 */
import { init } from "../kernels/device.ts";
import { sync } from "../kernels/runtime.ts";
import { softmaxBackward } from "../kernels/softmax.ts";
import { layerNormBackwardInput, layerNormBackwardParams } from "../kernels/layernorm.ts";
import { crossEntropyBackward } from "../kernels/cross_entropy.ts";
import { empty, keep, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { div, exp, max, sub, sum } from "../nn/ops/index.ts";
import { crossEntropy, layerNorm, softmax } from "../nn/ops/nn.ts";

await init();
const info = (await init()).adapter;
const BATCH = 10;

function randT(shape: number[], seed: number): Tensor {
  const rng = new Rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return keep(tensor(Float32Array.from({ length: n }, () => rng.normal()), shape));
}

const [R, N] = [4096, 1024];
const sx = randT([R, N], 1), sg = randT([R, N], 2);
const sy = keep(softmax(sx));
const sdx = keep(empty([R, N]));

const [LR, LD] = [8 * 197, 768];
const lx = randT([LR, LD], 3), lg = randT([LR, LD], 4);
const lw = randT([LD], 5), lb = randT([LD], 6);
const lstats = keep(empty([LR, 2]));
const ldx = keep(empty([LR, LD])), ldw = keep(empty([LD])), ldb = keep(empty([LD]));

const [CB, CC] = [64, 1000];
const cx = randT([CB, CC], 7);
const rng = new Rng(8);
const clab = keep(tensor(Int32Array.from({ length: CB }, () => rng.int(CC)), [CB]));
const clse = keep(empty([CB])), cg = keep(tensor([1], [])), cdx = keep(empty([CB, CC]));

/** Bytes each case must read + write at least once, for the bandwidth line. */
const BYTES: Record<string, number> = {};
const timing: Record<string, number[]> = {};

function bench(name: string, bytes: number, launch: () => void): void {
  BYTES[name] = bytes;
  timing[name] = [];
  Deno.bench({
    name: `${name} (x${BATCH} per iteration) [${info.description}]`,
    async fn() {
      const t0 = performance.now();
      for (let i = 0; i < BATCH; i++) {
        tidy(() => {
          launch(); // returns nothing, so every tensor it made is released
        });
      }
      await sync();
      timing[name].push((performance.now() - t0) / BATCH);
    },
  });
}

const F = 4; // bytes per float
bench("softmax fwd 4096x1024 fused", 2 * R * N * F, () => softmax(sx));
bench("softmax fwd 4096x1024 unfused core ops", 2 * R * N * F, () => {
  const m = max(sx, -1, true);
  const e = exp(sub(sx, m));
  return div(e, sum(e, -1, true));
});
bench("softmax bwd 4096x1024", 3 * R * N * F, () => {
  softmaxBackward(sy.buf, sg.buf, sdx.buf, R, N, false);
});
bench("layerNorm fwd [1576, 768] (w, b)", 2 * LR * LD * F, () => layerNorm(lx, lw, lb));
bench("layerNorm bwd dx + dw/db [1576, 768]", 5 * LR * LD * F, () => {
  layerNormBackwardInput(lx.buf, lw.buf, lg.buf, lstats.buf, ldx.buf, LR, LD);
  layerNormBackwardParams(lx.buf, lg.buf, lstats.buf, ldw.buf, ldb.buf, LR, LD);
});
bench("crossEntropy fwd (mean) [64, 1000]", CB * CC * F, () => crossEntropy(cx, clab));
bench("crossEntropy bwd [64, 1000]", 2 * CB * CC * F, () => {
  crossEntropyBackward(cx.buf, clab.buf, clse.buf, cg.buf, cdx.buf, CB, CC, 0, 1 / CB, 0);
});

// Stats for layerNorm's backward and lse for cross-entropy's come from one forward each.
tidy(() => {
  layerNorm(lx, lw, lb); // warm the pipelines
});
{
  const { layerNormForward } = await import("../kernels/layernorm.ts");
  const { crossEntropyForward } = await import("../kernels/cross_entropy.ts");
  const tmp = empty([LR, LD]), loss = empty([CB]);
  layerNormForward(lx.buf, lw.buf, lb.buf, tmp.buf, lstats.buf, LR, LD, 1e-5);
  crossEntropyForward(cx.buf, clab.buf, loss.buf, clse.buf, CB, CC, 0);
  await sync();
  tmp.dispose();
  loss.dispose();
}

globalThis.addEventListener("unload", () => {
  console.log(`\nadapter: ${info.description} (${info.backend})`);
  for (const [name, ts] of Object.entries(timing)) {
    if (ts.length === 0) continue;
    const sorted = [...ts].sort((a, b) => a - b);
    const med = sorted[Math.floor(sorted.length / 2)];
    console.log(
      `${name}: median ${(med * 1000).toFixed(1)} us/launch, ` +
        `${(BYTES[name] / (med * 1e-3) / 1e9).toFixed(2)} GB/s effective`,
    );
  }
});
