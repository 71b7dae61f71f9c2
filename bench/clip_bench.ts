/**
 * `deno bench -A bench/clip_bench.ts`: CLIP image-embedding throughput on this machine's WebGPU
 * adapter: the ViT-B/16 image tower (86 M parameters, 224 x 224, random weights) on a batch of
 * images, forward only, L2-normalised, read back to the CPU; and the `tiny` config as a quick
 * check. Each case prints images/s. `bench/clip_torch_bench.py` measures the same tower in
 * PyTorch on the CPU (see bench/RESULTS-clip.md).
 *
 * Env: `CLIP_BENCH_BATCH` images per batch (default 4), `CLIP_BENCH_N` timed iterations
 * (default 2, after 1 warm-up; llvmpipe needs ~10 s per ViT-B/16 image on 2 cores).
 */
import { init } from "../kernels/device.ts";
import { noGrad } from "../nn/autograd.ts";
import { l2Normalize } from "../nn/ops/nn.ts";
import { randn, Rng, tidy } from "../nn/tensor.ts";
import { builtinConfig } from "../clip/config.ts";
import { VisionTransformer } from "../clip/vision.ts";

const gpu = await init();
const BATCH = Number(Deno.env.get("CLIP_BENCH_BATCH") ?? 4);
const N = Number(Deno.env.get("CLIP_BENCH_N") ?? 2);

for (const arch of ["ViT-B-16", "tiny"]) {
  const config = builtinConfig(arch);
  const { imageSize: S } = config.vision;
  // Only the image tower: the text tower is not needed to embed images.
  const visual = new VisionTransformer(config.vision, config.embedDim, config.activation, {
    rng: new Rng(0),
  });
  const images = randn([BATCH, 3, S, S], { seed: 1 });
  const n = arch === "tiny" ? 10 * N : N;
  Deno.bench({
    name: `${arch} image embedding, batch ${BATCH} (${S}x${S})`,
    group: `CLIP image tower [${gpu.adapter.description}]`,
    n,
    warmup: 1,
    async fn(b) {
      b.start();
      const t0 = performance.now();
      const emb = noGrad(() => tidy(() => l2Normalize(visual.forward(images))));
      await emb.toArray();
      const s = (performance.now() - t0) / 1000;
      b.end();
      emb.dispose();
      console.log(
        `  ${arch}: ${BATCH} images in ${s.toFixed(2)} s = ${(BATCH / s).toFixed(2)} images/s`,
      );
    },
  });
}
