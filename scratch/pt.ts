import { init } from "../kernels/device.ts";
import { builtinConfig } from "../clip/config.ts";
import { ClipModel } from "../clip/model.ts";
import { pretrainClip } from "../train/pretrain.ts";
await init();
const config = builtinConfig("demo-tiny");
for (const B of [64, 128]) {
  const clip = new ClipModel(config, { seed: 1 });
  const N = 512;
  const images = new Float32Array(N * 3 * 32 * 32).map(() => Math.random());
  const ids = new Int32Array(N * 32).map((_, i) => i % 32 === 0 ? 1 : i % 32 === 20 ? 172 : 3 + (i % 100));
  const t0 = performance.now();
  await pretrainClip(clip, { images, ids, count: N }, { steps: 20, batchSize: B, logEvery: 20 });
  console.log(`B=${B}: ${((performance.now() - t0) / 20).toFixed(0)} ms/step`);
  clip.dispose();
}
