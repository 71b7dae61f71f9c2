/**
 * `deno bench -A bench/timm_bench.ts`: image-embedding throughput of a timm ViT-L/16 the size of
 * UNI (the `uni` built-in: 303 M parameters, 224 x 224, layer scale, random weights) on this
 * machine's WebGPU adapter: forward only, timm's pre-logits features [B, 1024], read back to the
 * CPU. `bench/timm_torch_bench.py` measures the same model built by `timm.create_model` on
 * PyTorch's CPU; run both on the same quiet machine and cores (the lead records results).
 *
 * Env: `TIMM_BENCH_BATCH` images per batch (default 4), `TIMM_BENCH_N` timed iterations
 * (default 2, after 1 warm-up: ViT-L/16 is ~3.5x the work of ViT-B/16, so expect tens of
 * seconds per image on a 2-core llvmpipe).
 */
import { init } from "../kernels/device.ts";
import { noGrad } from "../nn/autograd.ts";
import { randn, Rng, tidy } from "../nn/tensor.ts";
import { timmBuiltin } from "../clip/timm_models.ts";
import { TimmVisionTransformer } from "../clip/timm_vit.ts";

const gpu = await init();
const BATCH = Number(Deno.env.get("TIMM_BENCH_BATCH") ?? 4);
const N = Number(Deno.env.get("TIMM_BENCH_N") ?? 2);

const config = timmBuiltin("uni");
const model = new TimmVisionTransformer(config, { rng: new Rng(0) });
const S = config.imageSize;
const images = randn([BATCH, 3, S, S], { seed: 1 });
const params = model.numParameters();

Deno.bench({
  name: `UNI-size ViT-L/16 features, batch ${BATCH} (${S}x${S}, ${(params / 1e6).toFixed(0)} M)`,
  group: `timm ViT-L/16 [${gpu.adapter.description}]`,
  n: N,
  warmup: 1,
  async fn(b) {
    b.start();
    const t0 = performance.now();
    const f = noGrad(() => tidy(() => model.features(images)));
    await f.toArray();
    const s = (performance.now() - t0) / 1000;
    b.end();
    f.dispose();
    console.log(
      `  ViT-L/16: ${BATCH} images in ${s.toFixed(2)} s = ${(BATCH / s).toFixed(2)} images/s`,
    );
  },
});
