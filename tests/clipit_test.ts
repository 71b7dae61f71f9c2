/**
 * CLIP-IT against PyTorch: tests/fixtures/make_clipit_fixture.py trains a tiny open_clip model
 * with PEFT LoRA on both towers and the CLIP-IT heads for three steps (and a stage-1 linear head
 * for three steps) from one saved initialisation; our model, started from the same tensors and
 * fed the same batches, must match every step's loss and the final trainable tensors within
 * 1e-4 of each tensor's largest value. Plus the loss on a hand-computed case.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { backward } from "../nn/autograd.ts";
import { Adam, clipGradNorm } from "../nn/optim.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { loadClip } from "../clip/load.ts";
import { applyLora, loadLoraStateDict, loraStateDict } from "../nn/lora.ts";
import { clipItLoss, ClipItModel, textTargets } from "../train/clipit.ts";
import { DEFAULT_LORA_TARGETS, loraTargetFilter } from "../clip/lora_targets.ts";
import { Linear } from "../nn/layers.ts";
import { crossEntropy } from "../nn/ops/nn.ts";
import { gpuTest } from "./util.ts";

const FIX = fileURLToPath(new URL("./fixtures/", import.meta.url));

type Host = { data: Float32Array; shape: number[] };

async function readAll(path: string): Promise<Map<string, Host & { i32?: Int32Array }>> {
  const f = await SafetensorsFile.open(path);
  try {
    const out = new Map<string, Host & { i32?: Int32Array }>();
    for (const [name, e] of f.entries()) {
      if (e.dtype === "I32") {
        const b = await f.read(name);
        const i32 = new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
        out.set(name, { data: Float32Array.from(i32), shape: e.shape, i32 });
      } else out.set(name, { data: await f.readFloat32(name), shape: e.shape });
    }
    return out;
  } finally {
    f.close();
  }
}

/** |a - b| <= tol * max|b| over the whole tensor. */
function assertRelMax(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: number,
  what: string,
) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let scale = 0, worst = 0, at = -1;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  for (let i = 0; i < expected.length; i++) {
    const e = Math.abs(actual[i] - expected[i]);
    if (!(e <= worst)) [worst, at] = [e, i];
  }
  assert.ok(
    worst <= tol * Math.max(scale, 1e-30),
    `${what}: element ${at} is ${actual[at]}, PyTorch ${expected[at]} (error ${worst}, ` +
      `${tol} x max ${scale})`,
  );
}

function sub(values: Map<string, Host>, prefix: string): Map<string, Host> {
  const out = new Map<string, Host>();
  for (const [k, v] of values) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v);
  return out;
}

gpuTest(
  "clipit: 3 stage-2 steps match open_clip + PEFT + torch.optim.Adam within 1e-4",
  async () => {
    const init = await readAll(FIX + "clipit_init_train.safetensors");
    const exp = await readAll(FIX + "clipit_expected.safetensors");
    const clip = await loadClip(FIX + "clipit_init_openclip.safetensors", {
      arch: FIX + "clipit_tiny_config.json",
    });
    const backbone = ClipImageBackbone.fromClip(clip);
    const textEncoder = new ClipTextEncoder(clip);
    const filter = loraTargetFilter(DEFAULT_LORA_TARGETS);
    applyLora(backbone, { rank: 4, alpha: 8, filter });
    applyLora(textEncoder, { rank: 4, alpha: 8, filter });
    const model = new ClipItModel(backbone, { numClasses: 3, textDim: 24 });
    loadLoraStateDict(backbone, sub(init, "backbone."));
    loadLoraStateDict(textEncoder, sub(init, "text_encoder."));
    for (const head of ["fc", "h_d", "h_t", "g"] as const) {
      model[head]!.loadStateDict(sub(init, `${head}.`));
    }
    const params = [...model.trainableParameters(), ...textEncoder.trainableParameters()];
    // 18 sites x (A, B) + fc, h_d, h_t (2 layers), g, each weight + bias.
    assert.equal(params.length, 36 + 10);
    const opt = new Adam(params, { lr: 1e-3, weightDecay: 1e-4 });
    const got: number[][] = [];
    for (const bi of [0, 1, 0]) {
      const images = exp.get(`batch${bi}.images`)!, tokens = exp.get(`batch${bi}.tokens`)!.i32!;
      const labels = exp.get(`batch${bi}.labels`)!.i32!;
      const terms = tidy(() => {
        const t = textTargets(textEncoder, tokens);
        const out = model.forward(tensor(images.data, images.shape));
        const l = clipItLoss(out.logits, tensor(labels, [labels.length]), out.tHat!, t, 1);
        backward(l.loss);
        const norm = clipGradNorm(params, 0.5);
        opt.step();
        opt.zeroGrad();
        return [l.loss, l.ce, l.distill, norm];
      });
      got.push(await Promise.all(terms.map((x) => x.item())));
      terms.forEach((x) => x.dispose());
    }
    for (const [i, name] of ["loss", "ce", "distill", "grad_norm"].entries()) {
      const want = exp.get(`stage2.${name}`)!.data;
      assertRelMax(got.map((g) => g[i]), want, 1e-4, `stage-2 ${name} per step`);
    }
    const named = new Map<string, Tensor>([
      ...[...loraStateDict(backbone)].map(([k, v]) => [`backbone.${k}`, v] as [string, Tensor]),
      ...[...loraStateDict(textEncoder)].map(([k, v]) =>
        [`text_encoder.${k}`, v] as [string, Tensor]
      ),
      ...model.headParameters(),
    ]);
    let checked = 0;
    for (const [name, want] of sub(exp, "stage2.final.")) {
      const t = named.get(name);
      assert.ok(t, `our model has no trainable tensor "${name}"`);
      assertRelMax(await t.toArray(), want.data, 1e-4, `stage-2 final ${name}`);
      checked++;
    }
    assert.equal(checked, named.size);
    model.dispose();
    textEncoder.dispose();
    opt.dispose();
  },
);

gpuTest("clipit: the loss on a hand-computed case", async () => {
  // logits [[2, 0], [0, 1]], labels [0, 1]: CE = mean(log(1 + e^-2), log(1 + e^-1)).
  // t_hat rows (3, 4) and (1, 0); t rows (0, 1) and (1, 0): cos = 0.8 and 1 -> distill 0.1.
  const l = tidy(() =>
    clipItLoss(
      tensor([2, 0, 0, 1], [2, 2]),
      tensor(new Int32Array([0, 1])),
      tensor([3, 4, 1, 0], [2, 2]),
      tensor([0, 1, 1, 0], [2, 2]),
      0.5,
    )
  );
  const ce = (Math.log(1 + Math.exp(-2)) + Math.log(1 + Math.exp(-1))) / 2;
  assert.ok(Math.abs((await l.ce.item()) - ce) < 1e-6);
  assert.ok(Math.abs((await l.distill.item()) - 0.1) < 1e-6);
  assert.ok(Math.abs((await l.loss.item()) - (ce + 0.05)) < 1e-6);
  assert.throws(
    () =>
      clipItLoss(
        tensor([1, 0], [1, 2]),
        tensor(new Int32Array([0])),
        tensor([1], [1, 1]),
        tensor([1], [1, 1]),
        -1,
      ),
    /lambda/,
  );
});

gpuTest("clipit: 3 stage-1 head steps match torch within 1e-4", async () => {
  const init = await readAll(FIX + "clipit_init_train.safetensors");
  const exp = await readAll(FIX + "clipit_expected.safetensors");
  const clip = await loadClip(FIX + "clipit_init_openclip.safetensors", {
    arch: FIX + "clipit_tiny_config.json",
  });
  const head = new Linear(24, 3);
  head.loadStateDict(sub(init, "stage1.fc."));
  const opt = new Adam(head.parameters(), { lr: 1e-3, weightDecay: 1e-4 });
  const losses: number[] = [];
  for (const bi of [0, 1, 0]) {
    const images = exp.get(`batch${bi}.images`)!, labels = exp.get(`batch${bi}.labels`)!.i32!;
    const loss = tidy(() => {
      const feats = clip.encodeImage(tensor(images.data, images.shape));
      const l = crossEntropy(head.forward(feats), tensor(labels));
      backward(l);
      opt.step();
      opt.zeroGrad();
      return l;
    });
    losses.push(await loss.item());
    loss.dispose();
  }
  assertRelMax(losses, exp.get("stage1.loss")!.data, 1e-4, "stage-1 loss per step");
  assertRelMax(
    await head.weight.toArray(),
    exp.get("stage1.final.fc.weight")!.data,
    1e-4,
    "fc.weight",
  );
  assertRelMax(await head.bias!.toArray(), exp.get("stage1.final.fc.bias")!.data, 1e-4, "fc.bias");
  clip.dispose();
  head.dispose();
});
