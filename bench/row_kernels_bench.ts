/**
 * `deno bench -A bench/row_kernels_bench.ts`: the fused row kernels on the sizes the models use.
 * Each iteration records BATCH launches into one compute pass and waits with `sync()`; the time
 * per iteration / BATCH is one launch plus its share of recording and of the wait. On a real GPU
 * that wall time is dominated by Deno's ~10 ms completion polling, so when the adapter offers
 * `timestamp-query` the pass is also timed on the GPU (timestamps at its start and end) and the
 * summary printed at the end gives both, with the effective bandwidth (bytes that must move /
 * GPU time). The softmax is also timed as the unfused composition of core ops (max, sub, exp,
 * sum, div) for comparison.
 */
import { gpu, init } from "../kernels/device.ts";
import { sync } from "../kernels/runtime.ts";
import { isCpuAdapter } from "../kernels/tune.ts";
import { softmaxBackward } from "../kernels/softmax.ts";
import { layerNormBackwardInput, layerNormBackwardParams } from "../kernels/layernorm.ts";
import { crossEntropyBackward } from "../kernels/cross_entropy.ts";
import { empty, keep, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { div, exp, max, sub, sum } from "../nn/ops/index.ts";
import { crossEntropy, layerNorm, softmax } from "../nn/ops/nn.ts";

await init();
const info = (await init()).adapter;
// Launches per iteration: CPU adapters take milliseconds per launch, GPUs microseconds.
const BATCH = isCpuAdapter(info) ? 10 : 100;

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
const wallMs: Record<string, number[]> = {};
const gpuMs: Record<string, number[]> = {};

/**
 * GPU time of the compute passes recorded while `active`: the runtime records a batch as one pass,
 * so timestamps written at the start and end of each pass (added by wrapping the encoder's
 * methods, bench-only instrumentation) give the GPU time of the whole batch.
 */
const timer = (() => {
  const dev = gpu().device;
  if (!gpu().adapter.features.includes("timestamp-query")) return null;
  const qs = dev.createQuerySet({ type: "timestamp", count: 2 });
  const resolve = dev.createBuffer({ size: 16, usage: 0x200 /* QUERY_RESOLVE */ | 0x04 });
  const read = dev.createBuffer({ size: 16, usage: 0x01 /* MAP_READ */ | 0x08 });
  const proto = GPUCommandEncoder.prototype;
  const begin = proto.beginComputePass, finish = proto.finish;
  const state = { active: false, passes: 0 };
  proto.beginComputePass = function (d?: GPUComputePassDescriptor) {
    if (!state.active) return begin.call(this, d);
    state.passes++;
    const timestampWrites = { querySet: qs, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 };
    return begin.call(this, { ...d, timestampWrites });
  };
  proto.finish = function (d?: GPUCommandBufferDescriptor) {
    if (state.active) {
      this.resolveQuerySet(qs, 0, 2, resolve, 0);
      this.copyBufferToBuffer(resolve, 0, read, 0, 16);
    }
    return finish.call(this, d);
  };
  return {
    start() {
      state.active = true;
      state.passes = 0;
    },
    /** GPU milliseconds of the one pass since start(), or null if there was not exactly one. */
    async stop(): Promise<number | null> {
      state.active = false;
      if (state.passes !== 1) return null;
      await read.mapAsync(0x01);
      const t = new BigUint64Array(read.getMappedRange().slice(0));
      read.unmap();
      return Number(t[1] - t[0]) / 1e6;
    },
  };
})();

function bench(name: string, bytes: number, launch: () => void): void {
  BYTES[name] = bytes;
  wallMs[name] = [];
  gpuMs[name] = [];
  Deno.bench({
    name: `${name} (x${BATCH} per iteration) [${info.description}]`,
    async fn() {
      const t0 = performance.now();
      timer?.start();
      for (let i = 0; i < BATCH; i++) {
        tidy(() => {
          launch(); // returns nothing, so every tensor it made is released
        });
      }
      await sync();
      wallMs[name].push((performance.now() - t0) / BATCH);
      const g = await timer?.stop();
      if (g) gpuMs[name].push(g / BATCH);
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

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

globalThis.addEventListener("unload", () => {
  console.log(`\nadapter: ${info.description} (${info.backend}); per launch, median:`);
  for (const name of Object.keys(BYTES)) {
    if (wallMs[name].length === 0) continue;
    const wall = median(wallMs[name]);
    const g = gpuMs[name].length ? median(gpuMs[name]) : null;
    const bw = (BYTES[name] / ((g ?? wall) * 1e-3) / 1e9).toFixed(1);
    console.log(
      `${name}: wall ${(wall * 1000).toFixed(1)} us` +
        (g === null ? "" : `, GPU ${(g * 1000).toFixed(2)} us`) +
        `, ${bw} GB/s effective (${g === null ? "wall" : "GPU"} time)`,
    );
  }
});
