/**
 * LoRA on the CLIP towers, checked against PyTorch (tests/fixtures/make_clip_fixture.py puts an
 * adapter W + (alpha/r) B A on every Linear, the packed attention in-projection, the token
 * embedding, the patch embedding and both projections of a reference OpenCLIP model, and records
 * the embeddings and the gradients of a loss with respect to every A and B), plus the adapters'
 * initialisation, freezing, merging and saving.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { backward, noGrad } from "../nn/autograd.ts";
import { add, mul, sum } from "../nn/ops/index.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { tensor, tidy } from "../nn/tensor.ts";
import { loadClip } from "../clip/load.ts";
import {
  applyLora,
  loadLora,
  loadLoraStateDict,
  LoraAdapter,
  loraAdapters,
  loraStateDict,
  mergeLora,
  saveLora,
} from "../nn/lora.ts";
import type { ClipModel } from "../clip/model.ts";
import { assertClose, gpuTest } from "./util.ts";

const FIX = fileURLToPath(new URL("./fixtures/", import.meta.url));

async function fixture() {
  const f = await SafetensorsFile.open(FIX + "clip_expected.safetensors");
  const i32 = async (n: string) => {
    const b = await f.read(n);
    return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  };
  return { f, i32 };
}

async function tinyModel(): Promise<ClipModel> {
  return await loadClip(FIX + "clip_tiny_openclip.bin", {
    arch: FIX + "clip_tiny_openclip_config.json",
  });
}

/** The fixture names sites like OpenCLIP (text tower at the top level); ours put it under text. */
function ourName(fixtureName: string): string {
  return fixtureName.startsWith("visual.") ? fixtureName : `text.${fixtureName}`;
}

/** LoRA values from the fixture, keyed by our `<site>.lora_A` / `.lora_B` names. */
async function fixtureLora(f: SafetensorsFile, prefix: string) {
  const values = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, e] of f.entries()) {
    if (!name.startsWith(prefix)) continue;
    values.set(ourName(name.slice(prefix.length)), {
      shape: e.shape,
      data: await f.readFloat32(name),
    });
  }
  return values;
}

gpuTest("lora: embeddings and gradients of every A and B match PyTorch", async () => {
  const { f, i32 } = await fixture();
  const rank = Number(f.metadata.lora_rank), alpha = Number(f.metadata.lora_alpha);
  assert.deepEqual([rank, alpha], [4, 8]);
  const model = await tinyModel();
  const adapters = applyLora(model, { rank, alpha });
  // Every Linear (4 per block, 4 blocks), conv1, token embedding and both projections.
  assert.equal(adapters.size, 4 * 4 + 4);
  const values = await fixtureLora(f, "a.lora.");
  assert.equal(values.size, 2 * adapters.size);
  loadLoraStateDict(model, values);

  const images = tensor(await f.readFloat32("a.images"), f.entry("a.images").shape);
  const tokens = await i32("a.tokens");
  const rv = tensor(await f.readFloat32("a.loss_rv"), f.entry("a.loss_rv").shape);
  const rt = tensor(await f.readFloat32("a.loss_rt"), f.entry("a.loss_rt").shape);
  // PyTorch's loss: sum(image_embeds * rv) + sum(text_embeds * rt), adapters on. Backward runs
  // inside the tidy: disposing the intermediates first would cut the graph.
  const { vi, vt, loss } = tidy(() => {
    const vi = model.embedImages(images);
    const vt = model.embedTexts(tokens);
    const loss = add(sum(mul(vi, rv)), sum(mul(vt, rt)));
    backward(loss);
    return { vi, vt, loss };
  });
  // Embeddings with adapters: 1e-4 absolute, as without.
  assertClose(await vi.toArray(), await f.readFloat32("a.lora_image_embeds"), { atol: 1e-4 }, "vi");
  assertClose(await vt.toArray(), await f.readFloat32("a.lora_text_embeds"), { atol: 1e-4 }, "vt");
  assertClose([await loss.item()], await f.readFloat32("a.loss"), { atol: 1e-4 }, "loss");
  // The base is frozen: only adapter tensors get gradients.
  for (const [name, t] of model.namedParameters()) {
    const isLora = /lora_[AB]$/.test(name);
    assert.equal(t.requiresGrad, isLora, name);
    if (!isLora) assert.equal(t.grad, null, `${name} got a gradient`);
  }
  // Gradients: 1e-3 relative, i.e. |g - ref| <= 1e-3 * (|ref| + max|ref of that tensor|).
  let checked = 0;
  for (const [name, t] of loraStateDict(model)) {
    const fixtureName = name.startsWith("text.") ? name.slice(5) : name;
    const ref = await f.readFloat32(`a.grad.${fixtureName}`);
    const scale = ref.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    assert.ok(scale > 0, `${name}: reference gradient is all zero`);
    assert.ok(t.grad, `${name} has no gradient`);
    assertClose(await t.grad.toArray(), ref, { atol: 1e-3 * scale, rtol: 1e-3 }, `grad ${name}`);
    checked++;
  }
  assert.equal(checked, 2 * adapters.size);
  f.close();
  model.dispose();
});

gpuTest("lora: fresh adapters start as the identity; A is Kaiming-uniform, B zero", async () => {
  const { f, i32 } = await fixture();
  const model = await tinyModel();
  const images = tensor(await f.readFloat32("a.images"), f.entry("a.images").shape);
  const tokens = await i32("a.tokens");
  const before = await noGrad(() => model.embedImages(images)).toArray();
  const beforeT = await noGrad(() => model.embedTexts(tokens)).toArray();
  const adapters = applyLora(model, { seed: 3 });
  const conv = adapters.get("visual.conv1")!;
  assert.deepEqual([conv.rank, conv.alpha, conv.scaling], [16, 8, 0.5]);
  assert.deepEqual(conv.lora_A.shape, [16, 3 * 8 * 8]);
  const a = await conv.lora_A.toArray();
  const bound = 1 / Math.sqrt(3 * 8 * 8);
  assert.ok(a.every((x) => Math.abs(x) <= bound), "A within the Kaiming-uniform bound");
  assert.ok(Math.max(...a.map(Math.abs)) > 0.9 * bound, "A fills its range");
  assert.ok((await conv.lora_B.toArray()).every((x) => x === 0), "B starts at zero");
  assert.deepEqual(adapters.get("text.token_embedding")!.lora_A.shape, [16, 48]);
  assert.deepEqual(adapters.get("text.transformer.resblocks.1.attn.in_proj")!.lora_B.shape, [
    96,
    16,
  ]);
  // B = 0: the adapted model computes exactly the base model (bit-for-bit is not promised by
  // the extra kernels, so 1e-6 absolute).
  assertClose(
    await noGrad(() => model.embedImages(images)).toArray(),
    before,
    { atol: 1e-6 },
    "vi",
  );
  assertClose(
    await noGrad(() => model.embedTexts(tokens)).toArray(),
    beforeT,
    { atol: 1e-6 },
    "vt",
  );
  // Only adapters train.
  const trainable = model.trainableParameters();
  assert.equal(trainable.length, 2 * adapters.size);
  assert.equal(
    trainable.reduce((s, t) => s + t.size, 0),
    [...adapters.values()].reduce((s, x) => s + x.numParameters(), 0),
  );
  assert.throws(() => applyLora(model), /already has an adapter/);
  // Filter: only attention in-projections.
  const other = await tinyModel();
  const some = applyLora(other, { filter: (s) => s.name.endsWith("attn.in_proj") });
  assert.equal(some.size, 4);
  f.close();
  model.dispose();
  other.dispose();
});

gpuTest("lora: merging folds every adapter into its weight exactly", async () => {
  const { f, i32 } = await fixture();
  const model = await tinyModel();
  applyLora(model, { rank: 4, alpha: 8 });
  loadLoraStateDict(model, await fixtureLora(f, "a.lora."));
  const images = tensor(await f.readFloat32("a.images"), f.entry("a.images").shape);
  const tokens = await i32("a.tokens");
  const feats = () =>
    noGrad(() => tidy(() => [model.encodeImage(images), model.encodeText(tokens)]));
  const [fi, ft] = feats();
  const adapted = [await fi.toArray(), await ft.toArray()];
  const projBefore = await model.visual.proj.toArray();
  const weightObject = model.visual.conv1.weight;
  assert.equal(mergeLora(model), 20);
  assert.equal(loraAdapters(model).size, 0);
  assert.equal(model.visual.conv1.weight, weightObject, "merge keeps the weight tensor object");
  assert.notDeepEqual(await model.visual.proj.toArray(), projBefore);
  const [gi, gt] = feats();
  // Exact in real arithmetic; float32 rounding of W + s B A vs W x + s B (A x): 2e-5 absolute
  // on O(1) features.
  assertClose(await gi.toArray(), adapted[0], { atol: 2e-5 }, "merged image features");
  assertClose(await gt.toArray(), adapted[1], { atol: 2e-5 }, "merged text features");
  // And equal to PyTorch's adapted model.
  const vi = await noGrad(() => model.embedImages(images)).toArray();
  assertClose(vi, await f.readFloat32("a.lora_image_embeds"), { atol: 1e-4 }, "vs torch");
  f.close();
  model.dispose();
});

gpuTest("lora: saveLora / loadLora round trip; bad adapter files are named", async () => {
  const { f } = await fixture();
  const model = await tinyModel();
  applyLora(model, { rank: 4, alpha: 8 });
  loadLoraStateDict(model, await fixtureLora(f, "a.lora."));
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await saveLora(model, path);
    const fresh = await tinyModel();
    await loadLora(fresh, path); // applies rank-4 alpha-8 adapters from the metadata
    const a = loraAdapters(fresh);
    assert.equal(a.size, 20);
    const site = "text.transformer.resblocks.0.mlp.c_fc";
    assert.ok(a.get(site) instanceof LoraAdapter);
    assert.equal(a.get(site)!.scaling, 2);
    assert.deepEqual(
      await a.get(site)!.lora_B.toArray(),
      await loraAdapters(model).get(site)!.lora_B.toArray(),
    );
    fresh.dispose();
    // A model with rank-16 adapters cannot take rank-4 values.
    const other = await tinyModel();
    applyLora(other);
    await assert.rejects(
      () => loadLora(other, path),
      /adapter tensor "visual\.conv1\.lora_A" has shape \[4,192\] in the source but \[16,192\]/,
    );
    other.dispose();
  } finally {
    await Deno.remove(path);
    f.close();
    model.dispose();
  }
});
