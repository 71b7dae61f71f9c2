/**
 * Images/s of one CLIP-IT stage-2 training step on this machine's WebGPU adapter: a ViT-B/16
 * CLIP (random weights) with LoRA r = 16, alpha = 8 on both towers (attention in/out, MLPs,
 * token embedding, patch embedding: the default targets), the heads, and the full step:
 * text encoder on the paired reports (77 tokens), image forward, loss, backward, gradient
 * clipping, Adam. `bench/clipit_step_torch.py` does the same step with open_clip + PEFT on the
 * CPU; bench/RESULTS-clipit.md has both, measured in one sitting.
 *
 *   deno run -A bench/clipit_step_bench.ts [--arch ViT-B-16] [--batch 8] [--steps 3]
 *
 * Prints seconds and images/s per timed step (after one warm-up step, which compiles the
 * kernels) and their median, and writes them as JSON with `--json FILE`.
 */
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { backward } from "../nn/autograd.ts";
import { applyLora } from "../nn/lora.ts";
import { Adam, clipGradNorm } from "../nn/optim.ts";
import { randn, Rng, tensor, tidy } from "../nn/tensor.ts";
import { builtinConfig } from "../clip/config.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { DEFAULT_LORA_TARGETS, loraTargetFilter } from "../clip/lora_targets.ts";
import { ClipModel } from "../clip/model.ts";
import { clipItLoss, ClipItModel, textTargets } from "../train/clipit.ts";

const { values } = parseArgs({
  options: {
    arch: { type: "string", default: "ViT-B-16" },
    batch: { type: "string", default: "8" },
    steps: { type: "string", default: "3" },
    json: { type: "string" },
  },
});
const B = Number(values.batch), steps = Number(values.steps);
await init();
const config = builtinConfig(values.arch!);
const clip = new ClipModel(config, { seed: 0 });
const backbone = ClipImageBackbone.fromClip(clip);
const text = new ClipTextEncoder(clip);
const filter = loraTargetFilter(DEFAULT_LORA_TARGETS);
applyLora(backbone, { rank: 16, alpha: 8, filter, seed: 1 });
applyLora(text, { rank: 16, alpha: 8, filter, seed: 2 });
const model = new ClipItModel(backbone, { numClasses: 9, textDim: config.embedDim });
const params = [...model.trainableParameters(), ...text.trainableParameters()];
const opt = new Adam(params, { lr: 1e-3, weightDecay: 1e-4 });
const S = config.vision.imageSize, ctx = config.text.contextLength;
const images = randn([B, 3, S, S], { seed: 3 });
const rng = new Rng(4);
const labels = tensor(Int32Array.from({ length: B }, () => rng.int(9)));
// Full-length reports (real pathology reports fill the 77-token context).
const ids = new Int32Array(B * ctx);
for (let b = 0; b < B; b++) {
  ids[b * ctx] = 49406;
  for (let j = 1; j < ctx - 1; j++) ids[b * ctx + j] = 1 + rng.int(49000);
  ids[b * ctx + ctx - 1] = 49407;
}
const trainable = params.reduce((s, p) => s + p.size, 0);
console.log(
  `${values.arch} CLIP-IT step, batch ${B}, LoRA r16 on both towers: ` +
    `${(clip.numParameters() / 1e6).toFixed(1)} M parameters, ${(trainable / 1e6).toFixed(2)} M ` +
    `trainable; adapter ${adapterInfo().description}`,
);
const times: number[] = [];
for (let i = 0; i <= steps; i++) {
  const t0 = performance.now();
  const loss = tidy(() => {
    const t = textTargets(text, ids);
    const out = model.forward(images);
    const l = clipItLoss(out.logits, labels, out.tHat!, t, 1);
    backward(l.loss);
    clipGradNorm(params, 0.5).dispose();
    opt.step();
    opt.zeroGrad();
    return l.loss;
  });
  const value = await loss.item(); // waits for the whole step
  loss.dispose();
  const s = (performance.now() - t0) / 1000;
  if (i > 0) times.push(s);
  console.log(
    `  ${i === 0 ? "warm-up" : `step ${i}`}: ${s.toFixed(2)} s = ${(B / s).toFixed(3)} images/s ` +
      `(loss ${value.toFixed(4)})`,
  );
}
const median = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)];
console.log(`median: ${median.toFixed(2)} s per step = ${(B / median).toFixed(3)} images/s`);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({
      engine: "clip-it-webgpu",
      adapter: adapterInfo().description,
      arch: values.arch,
      batch: B,
      seconds: times,
      images_per_s: B / median,
    }) + "\n",
  );
}
