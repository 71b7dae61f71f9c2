/**
 * `deno task profile [--batch B] [--train-batch B] [--layers L] [--top N] [--out FILE.json]`:
 * where the GPU time goes, per kernel, for ViT-B/16 image embedding (inference) and a CLIP-IT
 * training step (image tower with LoRA on every attention and MLP weight: forward, a distillation
 * loss against fixed text embeddings, backward, AdamW), measured with `timestamp-query` (every
 * dispatch in its own compute pass with a timestamp at its start and end; see `startProfile` in
 * kernels/runtime.ts). Prints, per workload, a table by kernel family and the top kernels by
 * variant, with their share of the summed GPU time, next to the wall time of the same run.
 *
 * Random weights (the time does not depend on them). On a CPU adapter use small batches and
 * `--layers` to run fewer of the 12 blocks (the table's shares stay representative: every block
 * is the same work).
 */
import { parseArgs } from "node:util";
import { init } from "../kernels/device.ts";
import { type KernelTime, startProfile, stopProfile, sync } from "../kernels/runtime.ts";
import { backward, noGrad } from "../nn/autograd.ts";
import { applyLora } from "../nn/lora.ts";
import { AdamW } from "../nn/optim.ts";
import { matmul, scale } from "../nn/ops/index.ts";
import { crossEntropy, l2Normalize } from "../nn/ops/nn.ts";
import { randn, tensor, tidy } from "../nn/tensor.ts";
import { builtinConfig } from "../clip/config.ts";
import { ClipModel } from "../clip/model.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    batch: { type: "string" },
    "train-batch": { type: "string" },
    layers: { type: "string" },
    top: { type: "string", default: "12" },
    out: { type: "string" },
    only: { type: "string" },
  },
});

const g = await init();
const cpu = g.tuning.cpu;
const B = Number(args.batch ?? (cpu ? 2 : 64));
const TB = Number(args["train-batch"] ?? (cpu ? 1 : 32));
const cfg = builtinConfig("ViT-B-16");
const layers = Number(args.layers ?? cfg.vision.layers);
const vision = { ...cfg.vision, layers };
const model = new ClipModel({ ...cfg, vision }, { seed: 0 });
console.log(
  `${g.adapter.description} (${g.adapter.backend}); ViT-B/16 image tower, ${layers} of ` +
    `${cfg.vision.layers} blocks, random weights`,
);

/** The family of a kernel variant: its name up to the sizes and tile (e.g. `matmul_register`). */
function family(name: string): string {
  const parts = name.split("_");
  const stop = parts.findIndex((p, i) => i > 0 && /\d/.test(p));
  return parts.slice(0, Math.min(stop < 0 ? 2 : stop, 2)).join("_");
}

interface Result {
  workload: string;
  wallMs: number;
  gpuMs: number;
  dispatches: number;
  byFamily: [string, KernelTime][];
  top: [string, KernelTime][];
  unusable: number;
}
const results: Result[] = [];

async function profile(workload: string, run: () => void | Promise<void>): Promise<void> {
  await run(); // compile every kernel outside the profile
  await sync();
  startProfile();
  const t0 = performance.now();
  await run();
  const { kernels, bad } = await stopProfile();
  const wallMs = performance.now() - t0;
  const total = [...kernels.values()].reduce((a, k) => a + k.ns, 0);
  const fam = new Map<string, KernelTime>();
  for (const [name, k] of kernels) {
    const f = fam.get(family(name)) ?? { count: 0, ns: 0 };
    f.count += k.count;
    f.ns += k.ns;
    fam.set(family(name), f);
  }
  const sort = (m: Map<string, KernelTime>) => [...m.entries()].sort((a, b) => b[1].ns - a[1].ns);
  const r: Result = {
    workload,
    wallMs,
    gpuMs: total / 1e6,
    dispatches: [...kernels.values()].reduce((a, k) => a + k.count, 0),
    byFamily: sort(fam),
    top: sort(kernels).slice(0, Number(args.top)),
    unusable: bad,
  };
  results.push(r);
  const pct = (ns: number) => `${(100 * ns / total).toFixed(1)}%`.padStart(6);
  const ms = (ns: number) => (ns / 1e6).toFixed(2).padStart(10);
  console.log(
    `\n== ${workload}: wall ${wallMs.toFixed(1)} ms, GPU ${r.gpuMs.toFixed(1)} ms in ` +
      `${r.dispatches} dispatches${bad ? ` (${bad} unusable timestamp pairs)` : ""}`,
  );
  console.log(`${"family".padEnd(28)} ${"GPU ms".padStart(10)}  share  launches`);
  for (const [f, k] of r.byFamily) {
    console.log(`${f.padEnd(28)} ${ms(k.ns)} ${pct(k.ns)}  ${k.count}`);
  }
  console.log(`\ntop kernels (variants)`);
  for (const [n, k] of r.top) {
    console.log(`${n.slice(0, 70).padEnd(70)} ${ms(k.ns)} ${pct(k.ns)}  ${k.count}`);
  }
}

const only = args.only?.split(",");
if (!only || only.includes("inference")) {
  const x = randn([B, 3, 224, 224], { seed: 1 });
  await profile(`ViT-B/16 image embedding, batch ${B}`, async () => {
    const y = noGrad(() => model.encodeImage(x));
    await y.toArray(); // one readback, as an embedding loop does per batch
    y.dispose();
  });
  x.dispose();
}

if (!only || only.includes("train")) {
  // CLIP-IT stage 2, image side: LoRA on the image tower, features distilled towards the paired
  // report embeddings (fixed) through a contrastive loss over the batch.
  applyLora(model, { filter: (s) => s.name.startsWith("visual.transformer.resblocks.") });
  const params = model.trainableParameters();
  const opt = new AdamW(params, { lr: 1e-4 });
  const x = randn([TB, 3, 224, 224], { seed: 2 });
  const text = l2Normalize(randn([TB, cfg.embedDim], { seed: 3 }));
  const labels = tensor(Int32Array.from({ length: TB }, (_, i) => i), [TB], { dtype: "int32" });
  await profile(
    `CLIP-IT training step (LoRA on ViT-B/16, forward + backward + AdamW), batch ${TB}`,
    async () => {
      const loss = tidy(() => {
        const img = l2Normalize(model.encodeImage(x));
        const logits = scale(matmul(img, text, { transposeB: true }), 100);
        const l = crossEntropy(logits, labels);
        backward(l);
        return l;
      });
      opt.step();
      opt.zeroGrad();
      await loss.toArray(); // the loss is read once per step
      loss.dispose();
    },
  );
  console.log(`(${params.length} trainable LoRA tensors)`);
}

if (args.out) {
  const json = results.map((r) => ({
    ...r,
    byFamily: Object.fromEntries(r.byFamily),
    top: Object.fromEntries(r.top),
  }));
  await Deno.writeTextFile(
    args.out,
    JSON.stringify(
      { adapter: g.adapter, layers, batch: B, trainBatch: TB, results: json },
      null,
      1,
    ),
  );
  console.log(`wrote ${args.out}`);
}
