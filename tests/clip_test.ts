/**
 * CLIP towers and checkpoint loading, checked against PyTorch: tests/fixtures/make_clip_fixture.py
 * builds an OpenCLIP-style CLIP in plain torch (nn.MultiheadAttention, LayerNorm, QuickGELU or
 * GELU), saves it with OpenCLIP names (.bin) and Hugging Face names (.safetensors, q/k/v split),
 * and records float64 reference embeddings. Tolerances are stated at each check.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { noGrad } from "../nn/autograd.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import {
  builtinConfig,
  type ClipConfig,
  loadConfigFile,
  parseConfig,
  resolveArch,
} from "../clip/config.ts";
import {
  checkpointConfig,
  detectLayout,
  loadClip,
  loadClipCheckpoint,
  openTensorSource,
  saveClip,
  sourceFor,
} from "../clip/load.ts";
import { ClipModel } from "../clip/model.ts";
import { preprocessImage } from "../clip/preprocess.ts";
import { ClipTokenizer } from "../clip/tokenizer.ts";
import { readImage } from "../nn/formats/image.ts";
import { embedCommand } from "../cli/embed.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import { assertClose, gpuTest } from "./util.ts";

const FIX = fileURLToPath(new URL("./fixtures/", import.meta.url));
const OPENCLIP_BIN = FIX + "clip_tiny_openclip.bin";
const HF_ST = FIX + "clip_tiny_hf.safetensors";
const GELU_ST = FIX + "clip_gelu_openclip.safetensors";

/** Embeddings: 1e-4 absolute (the acceptance bound). */
const EMB_TOL = { atol: 1e-4 };

interface Expected {
  f32(name: string): Promise<Float32Array>;
  i32(name: string): Promise<Int32Array>;
  shape(name: string): number[];
}

async function expected(): Promise<Expected> {
  const f = await SafetensorsFile.open(FIX + "clip_expected.safetensors");
  return {
    f32: (n) => f.readFloat32(n),
    i32: async (n) => {
      const b = await f.read(n);
      return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    },
    shape: (n) => f.entry(n).shape,
  };
}

/** Image and text embeddings (and raw features, logits) of `model` on fixture `tag`'s inputs. */
async function run(model: ClipModel, exp: Expected, tag: string) {
  const images = await exp.f32(`${tag}.images`);
  const tokens = await exp.i32(`${tag}.tokens`);
  const imgShape = exp.shape(`${tag}.images`);
  const out = noGrad(() =>
    tidy(() => {
      const x = tensor(images, imgShape);
      const fi = model.encodeImage(x);
      const ft = model.encodeText(tokens);
      const vi = model.embedImages(x);
      const vt = model.embedTexts(tokens);
      return { fi, ft, vi, vt, logits: model.logits(vi, vt) };
    })
  );
  const arr = async (t: Tensor) => {
    const a = await t.toArray();
    t.dispose();
    return a;
  };
  return {
    fi: await arr(out.fi),
    ft: await arr(out.ft),
    vi: await arr(out.vi),
    vt: await arr(out.vt),
    logits: await arr(out.logits),
  };
}

async function checkParity(model: ClipModel, tag: string, label: string) {
  const exp = await expected();
  const got = await run(model, exp, tag);
  assertClose(got.vi, await exp.f32(`${tag}.image_embeds`), EMB_TOL, `${label} image_embeds`);
  assertClose(got.vt, await exp.f32(`${tag}.text_embeds`), EMB_TOL, `${label} text_embeds`);
  // Raw features are O(1): 1e-4 absolute plus 1e-4 relative.
  const featTol = { atol: 1e-4, rtol: 1e-4 };
  assertClose(got.fi, await exp.f32(`${tag}.image_features`), featTol, `${label} image_features`);
  assertClose(got.ft, await exp.f32(`${tag}.text_features`), featTol, `${label} text_features`);
  // Logits are embeddings times exp(logit_scale) = 14.3: 1e-4 * 14.3 absolute.
  assertClose(got.logits, await exp.f32(`${tag}.logits`), { atol: 1.5e-3 }, `${label} logits`);
}

gpuTest("clip: OpenCLIP .bin (torch zip) matches PyTorch embeddings (QuickGELU)", async () => {
  const config = await loadConfigFile(FIX + "clip_tiny_openclip_config.json");
  assert.equal(config.activation, "quick_gelu");
  assert.deepEqual([...config.mean], [0.5, 0.5, 0.5]);
  const model = await loadClip(OPENCLIP_BIN, { arch: config });
  await checkParity(model, "a", "openclip .bin");
  model.dispose();
  // The built-in tiny-test architecture is the fixture's (only mean/std differ).
  const builtin = await loadClip(OPENCLIP_BIN, { arch: "tiny-test" });
  await checkParity(builtin, "a", "tiny-test");
  builtin.dispose();
});

gpuTest("clip: Hugging Face CLIPModel safetensors (q/k/v split) matches PyTorch", async () => {
  const config = await loadConfigFile(FIX + "clip_tiny_hf_config.json");
  assert.equal(config.vision.mlpWidth, 64);
  assert.equal(config.text.heads, 2);
  const model = new ClipModel(config, { seed: 7 });
  const report = await loadClipCheckpoint(model, HF_ST);
  assert.equal(report.layout, "huggingface");
  assert.equal(report.format, "safetensors");
  assert.equal(report.tensors, model.stateDict().size);
  await checkParity(model, "a", "hf safetensors");
  model.dispose();
});

gpuTest("clip: GELU model of other sizes (1 layer, 1 text head) matches PyTorch", async () => {
  const model = await loadClip(GELU_ST, { arch: FIX + "clip_gelu_config.json" });
  assert.equal(model.config.activation, "gelu");
  assert.equal(model.config.vision.imageSize, 24);
  await checkParity(model, "b", "gelu safetensors");
  model.dispose();
});

gpuTest("clip: a mismatching checkpoint fails with the first tensor and both shapes", async () => {
  const gelu = await loadConfigFile(FIX + "clip_gelu_config.json");
  const model = new ClipModel(gelu);
  await assert.rejects(
    () => loadClipCheckpoint(model, OPENCLIP_BIN),
    (e: Error) => {
      // Model order: visual.class_embedding is the vision tower's first own tensor.
      assert.match(e.message, /clip_tiny_openclip\.bin/);
      assert.match(
        e.message,
        /"visual\.class_embedding" has shape \[32\] in the checkpoint but \[16\]/,
      );
      return true;
    },
  );
  await assert.rejects(
    () => loadClipCheckpoint(model, HF_ST),
    /"visual\.class_embedding" \(from "vision_model\.embeddings\.class_embedding"\) has shape \[32\] in the checkpoint but \[16\]/,
  );
  // Same widths, one layer fewer: the first missing... no - the extra layer is unused.
  const fewer: ClipConfig = structuredClone(await loadConfigFile(FIX + "clip_tiny_hf_config.json"));
  fewer.vision.layers = 1;
  const m1 = new ClipModel(fewer);
  await assert.rejects(
    () => loadClipCheckpoint(m1, HF_ST),
    /"vision_model\.encoder\.layers\.1\.[a-z_.0-9]+" \[\d+(,\d+)*\] of the checkpoint has no place/,
  );
  // A wrong patch size changes the conv weight's shape (and the positional table).
  const patch: ClipConfig = structuredClone(fewer);
  patch.vision.layers = 2;
  patch.vision.patchSize = 16;
  const m2 = new ClipModel(patch);
  await assert.rejects(
    () => loadClipCheckpoint(m2, OPENCLIP_BIN),
    /"visual\.positional_embedding" has shape \[17,32\] in the checkpoint but \[5,32\]/,
  );
  // Nothing was written before the check failed: the model still computes its random init.
  for (const m of [model, m1, m2]) m.dispose();
});

gpuTest("clip: saveClip writes our names + config metadata; loadClip reads it back", async () => {
  const config = await loadConfigFile(FIX + "clip_tiny_hf_config.json");
  const model = new ClipModel(config);
  await loadClipCheckpoint(model, HF_ST);
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await saveClip(model, path);
    const src = await openTensorSource(path);
    assert.equal(detectLayout(src.shapes.keys()), "openclip-custom-text");
    assert.ok(src.shapes.has("text.transformer.resblocks.1.attn.in_proj_weight"));
    src.close();
    const cfg = await checkpointConfig(path);
    assert.equal(cfg.embedDim, 24);
    const back = await loadClip(path);
    await checkParity(back, "a", "round trip");
    back.dispose();
  } finally {
    await Deno.remove(path);
    model.dispose();
  }
});

gpuTest("clip: text rows cut at their own end-of-text equal the batched result", async () => {
  const exp = await expected();
  const model = await loadClip(OPENCLIP_BIN, { arch: FIX + "clip_tiny_openclip_config.json" });
  const tokens = await exp.i32("a.tokens");
  const ctx = model.config.text.contextLength;
  const all = await noGrad(() => model.encodeText(tokens)).toArray();
  for (let r = 0; r < tokens.length / ctx; r++) {
    const one = await noGrad(() => model.encodeText(tokens.slice(r * ctx, (r + 1) * ctx)))
      .toArray();
    // Same math on fewer columns; 1e-5 absolute allows different summation order.
    assertClose(one, all.subarray(r * 24, (r + 1) * 24), { atol: 1e-5 }, `row ${r}`);
  }
  assert.throws(() => model.encodeText(new Int32Array(ctx + 1)), /do not fill rows/);
  assert.throws(
    () => model.encodeImage(tensor(new Float32Array(3 * 16 * 16), [1, 3, 16, 16])),
    /images must be \[B, 3, 32, 32\]/,
  );
  model.dispose();
});

Deno.test("clip config: built-ins, OpenCLIP / HF / own JSON, validation", async () => {
  const b16 = builtinConfig("ViT-B/16");
  assert.equal(b16.name, "ViT-B-16");
  assert.deepEqual(
    [b16.vision.width, b16.vision.heads, b16.vision.layers, b16.vision.patchSize, b16.embedDim],
    [768, 12, 12, 16, 512],
  );
  const l14 = builtinConfig("vit-l-14-quickgelu");
  assert.deepEqual(
    [l14.vision.width, l14.vision.heads, l14.text.width, l14.text.heads, l14.activation],
    [1024, 16, 768, 12, "quick_gelu"],
  );
  assert.equal(builtinConfig("ViT-B-32").vision.patchSize, 32);
  assert.throws(() => builtinConfig("ViT-X"), /unknown CLIP architecture "ViT-X".*ViT-B-16/);
  // OpenCLIP model config and hub file (model_cfg + preprocess_cfg).
  const oc = parseConfig({
    embed_dim: 512,
    quick_gelu: true,
    vision_cfg: { image_size: 224, layers: 12, width: 768, patch_size: 32 },
    text_cfg: { context_length: 77, vocab_size: 49408, width: 512, heads: 8, layers: 12 },
  }, "x.json");
  const { name: _a, ...ocRest } = oc;
  const { name: _b, ...b32Rest } = builtinConfig("ViT-B-32-quickgelu");
  assert.deepEqual(ocRest, b32Rest);
  const hub = await resolveArch(FIX + "clip_tiny_openclip_config.json");
  assert.deepEqual([...hub.std], [0.25, 0.25, 0.25]);
  // Hugging Face config.json and this project's own form agree with the OpenCLIP one.
  const hf = await loadConfigFile(FIX + "clip_tiny_hf_config.json");
  const { name: _c, mean: _m1, std: _s1, ...hfRest } = hf;
  const { name: _d, mean: _m2, std: _s2, ...hubRest } = hub;
  assert.deepEqual(hfRest, hubRest);
  assert.deepEqual(parseConfig(JSON.parse(JSON.stringify(hf)), "own"), { ...hf, name: hf.name });
  assert.throws(
    () => parseConfig({ ...JSON.parse(JSON.stringify(hf)), embedDim: 0 }, "bad"),
    /embedDim must be a positive integer/,
  );
  assert.throws(
    () =>
      parseConfig({
        embed_dim: 8,
        vision_cfg: { layers: [3, 4, 6, 3], width: 64, patch_size: null },
        text_cfg: { width: 8, layers: 1 },
      }, "rn.json"),
    /ResNet/,
  );
  assert.throws(
    () =>
      parseConfig({
        embed_dim: 8,
        vision_cfg: { image_size: 30, patch_size: 8, width: 16, layers: 1, head_width: 8 },
        text_cfg: { width: 16, layers: 1, heads: 2 },
      }, "odd.json"),
    /image size 30 is not a multiple of patch 8/,
  );
  await assert.rejects(() => resolveArch("/nonexistent/cfg.json"), /cannot read CLIP config/);
});

Deno.test("clip load: Hugging Face names map onto the model's, layouts are detected", () => {
  assert.deepEqual(sourceFor("visual.transformer.resblocks.3.attn.in_proj_weight", "huggingface"), {
    keys: ["q", "k", "v"].map((p) => `vision_model.encoder.layers.3.self_attn.${p}_proj.weight`),
    op: "concat",
  });
  assert.deepEqual(sourceFor("text.transformer.resblocks.0.mlp.c_proj.bias", "huggingface"), {
    keys: ["text_model.encoder.layers.0.mlp.fc2.bias"],
    op: "copy",
  });
  assert.deepEqual(sourceFor("visual.proj", "huggingface"), {
    keys: ["visual_projection.weight"],
    op: "transpose",
  });
  assert.deepEqual(sourceFor("text.ln_final.bias", "openclip"), {
    keys: ["ln_final.bias"],
    op: "copy",
  });
  assert.deepEqual(sourceFor("visual.ln_pre.weight", "openclip"), {
    keys: ["visual.ln_pre.weight"],
    op: "copy",
  });
  assert.throws(() => sourceFor("visual.nothing", "huggingface"), /no Hugging Face name/);
  assert.throws(
    () =>
      detectLayout(["visual.trunk.blocks.0.attn.qkv.weight", "text.transformer.x"], "conch.bin"),
    /conch\.bin: a timm image trunk .*CONCH/,
  );
  assert.throws(() => detectLayout(["encoder.weight"], "other.bin"), /not a CLIP checkpoint/);
  assert.equal(detectLayout(["vision_model.embeddings.class_embedding"]), "huggingface");
});

gpuTest("clip load: DDP 'module.' prefixes are stripped; missing tensors are named", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Re-save the HF fixture with a module. prefix and one tensor dropped.
    const src = await SafetensorsFile.open(HF_ST);
    const { writeSafetensors } = await import("../nn/formats/safetensors.ts");
    const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
    for (const [name, e] of src.entries()) {
      if (e.dtype !== "F32" || name === "text_model.final_layer_norm.bias") continue;
      tensors["module." + name] = {
        dtype: "F32",
        shape: e.shape,
        data: await src.readFloat32(name),
      };
    }
    src.close();
    const path = `${dir}/model.safetensors`;
    await writeSafetensors(path, tensors);
    const s = await openTensorSource(dir); // a directory: finds model.safetensors
    assert.ok(s.shapes.has("logit_scale"));
    s.close();
    const model = new ClipModel(await loadConfigFile(FIX + "clip_tiny_hf_config.json"));
    await assert.rejects(
      () => loadClipCheckpoint(model, dir),
      /no tensor "text_model\.final_layer_norm\.bias" for "text\.ln_final\.bias" \[32\]/,
    );
    model.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest(
  "embed cli: tiles + texts -> sorted, L2-normalised embeddings equal to the model's",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      // Three tiles (PNG and TIFF) copied under names whose sorted order differs from creation.
      const src = `${SHARED_DATA}/crc-tiles`;
      const picks = [...Deno.readDirSync(src)].map((e) => e.name).sort().slice(0, 3);
      const names = picks.map((p, i) => "cab"[i] + p.slice(p.lastIndexOf(".")));
      for (let i = 0; i < 3; i++) await Deno.copyFile(`${src}/${picks[i]}`, `${dir}/${names[i]}`);
      await Deno.writeTextFile(`${dir}/notes.txt`, "not an image\n");
      await Deno.writeTextFile(`${dir}/texts.txt`, "tumor epithelium\nadipose tissue\n");
      const out = `${dir}/out.safetensors`;
      const bpe = `${SHARED_DATA}/clip-bpe/bpe_simple_vocab_16e6.txt.gz`;
      const args = [
        "--arch",
        "tiny",
        "--random-init",
        "--seed",
        "5",
        "--images",
        dir,
        "--texts",
        `${dir}/texts.txt`,
        "--out",
        out,
        "--batch",
        "2",
        "--quiet",
        "--tokenizer",
        bpe,
      ];
      assert.equal(await embedCommand(args), 0);
      const f = await SafetensorsFile.open(out);
      const sorted = [...names].sort();
      assert.deepEqual(JSON.parse(f.metadata.image_files), sorted);
      assert.deepEqual(f.entry("image_embeds").shape, [3, 64]);
      assert.deepEqual(f.entry("text_embeds").shape, [2, 64]);
      const vi = await f.readFloat32("image_embeds"), vt = await f.readFloat32("text_embeds");
      f.close();
      // The same model (same seed) computed directly: 1e-5 absolute (same kernels, other batches).
      const model = new ClipModel(builtinConfig("tiny"), { seed: 5 });
      const S = model.config.vision.imageSize;
      const px = new Float32Array(3 * 3 * S * S);
      for (let i = 0; i < 3; i++) {
        px.set(preprocessImage(await readImage(`${dir}/${sorted[i]}`), { size: S }), i * 3 * S * S);
      }
      const ref = await noGrad(() => model.embedImages(tensor(px, [3, 3, S, S]))).toArray();
      assertClose(vi, ref, { atol: 1e-5 }, "image_embeds");
      const tok = await ClipTokenizer.load(bpe);
      const ids = tok.tokenize(["tumor epithelium", "adipose tissue"], 77);
      assertClose(vt, await noGrad(() => model.embedTexts(ids)).toArray(), { atol: 1e-5 }, "text");
      for (let r = 0; r < 5; r++) {
        const row = r < 3
          ? vi.subarray(r * 64, r * 64 + 64)
          : vt.subarray((r - 3) * 64, (r - 2) * 64);
        // Unit rows: 1e-5 on the norm.
        assertClose([Math.hypot(...row)], [1], { atol: 1e-5 }, `norm of row ${r}`);
      }
      model.dispose();
      // Usage errors: status 2, nothing thrown.
      assert.equal(await embedCommand(["--arch", "tiny", "--random-init", "--quiet"]), 2);
      assert.equal(await embedCommand(["--bogus"]), 2);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  !hasSharedData, // needs ../shared/data (real tiles and the BPE merges)
);
