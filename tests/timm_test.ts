/**
 * timm Vision Transformers against timm itself: tests/fixtures/make_timm_fixture.py builds tiny
 * random-weight models with `timm.create_model` for each variant family (layer scale + dynamic
 * size, registers with no_embed_class, patch 8, average / avgmax pooling without a class token,
 * a classifier head), saves them as the hub does (config.json + model.safetensors or
 * pytorch_model.bin) and records float64 reference features. Also: the position-embedding
 * resampling against F.interpolate, the built-in architecture table against timm's registry,
 * DINOv2's original checkpoint layout, LoRA sites, and the error messages.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { noGrad } from "../nn/autograd.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { tensor, tidy } from "../nn/tensor.ts";
import { interpolationMatrix, resampleGrid } from "../clip/interpolate.ts";
import { applyLora, loadLoraStateDict, mergeLora } from "../nn/lora.ts";
import {
  loadTimmConfigFile,
  parseTimmConfig,
  TIMM_ARCHITECTURES,
  type TimmVitConfig,
} from "../clip/timm_config.ts";
import { resolveTimmConfig, TIMM_BUILTINS, timmBuiltin } from "../clip/timm_models.ts";
import { loadTimm, loadTimmWeights } from "../clip/timm_load.ts";
import { TimmVisionTransformer } from "../clip/timm_vit.ts";
import { assertClose, gpuTest } from "./util.ts";

const FIX = fileURLToPath(new URL("./fixtures/", import.meta.url));
const DIR = FIX + "timm/";
/** The acceptance bound of the issue: features within 1e-4 of timm (float64 reference). */
const TOL = { atol: 1e-4 };

interface Described {
  img_size: number[];
  patch_size: number[];
  embed_dim: number;
  depth: number;
  num_heads: number;
  num_prefix_tokens: number;
  num_reg_tokens: number;
  has_class_token: boolean;
  no_embed_class: boolean;
  global_pool: string;
  dynamic_img_size: boolean;
  layer_scale: boolean;
  norm: boolean;
  fc_norm: boolean;
  norm_pre: boolean;
  num_classes: number;
  pretrained_cfg: {
    input_size: number[];
    interpolation: string;
    crop_pct: number;
    mean: number[];
    std: number[];
  };
  tag?: string;
  mlp_hidden?: number;
}

interface Meta {
  variants: Record<string, Described>;
  architectures: Record<string, Described>;
  interp: { mode: "bicubic" | "bilinear"; antialias: boolean; input: number[]; output: number[] }[];
}

const meta: Meta = JSON.parse(await Deno.readTextFile(FIX + "timm_expected.json"));
const expected = await SafetensorsFile.open(FIX + "timm_expected.safetensors");
const names = [...expected.entries().keys()];

/** The model's structure, in the fixture's terms. */
function describe(m: TimmVisionTransformer): Omit<Described, "pretrained_cfg"> {
  const c = m.config;
  return {
    img_size: [c.imageSize, c.imageSize],
    patch_size: [c.patchSize, c.patchSize],
    embed_dim: c.embedDim,
    depth: m.blocks.length,
    num_heads: c.numHeads,
    num_prefix_tokens: m.numPrefixTokens,
    num_reg_tokens: c.regTokens,
    has_class_token: c.classToken,
    no_embed_class: c.noEmbedClass,
    global_pool: c.globalPool,
    dynamic_img_size: c.dynamicImgSize,
    layer_scale: m.blocks[0].ls1 !== null,
    norm: m.norm !== null,
    fc_norm: m.fc_norm !== null,
    norm_pre: m.norm_pre !== null,
    num_classes: c.numClasses,
  };
}

function checkPreprocess(c: TimmVitConfig, d: Described, label: string) {
  const pc = d.pretrained_cfg;
  assert.deepEqual([...c.mean], pc.mean, `${label} mean`);
  assert.deepEqual([...c.std], pc.std, `${label} std`);
  assert.equal(c.interpolation, pc.interpolation, `${label} interpolation`);
  assert.equal(c.cropPct, pc.crop_pct, `${label} crop_pct`);
}

async function features(
  model: TimmVisionTransformer,
  images: string,
  head = false,
): Promise<Float32Array> {
  const e = expected.entry(images);
  const x = await expected.readFloat32(images);
  const y = noGrad(() =>
    tidy(() => {
      const t = tensor(x, e.shape);
      return head ? model.logits(t) : model.features(t);
    })
  );
  const out = await y.toFloat32Array();
  y.dispose();
  return out;
}

Deno.test("timm: position-embedding resampling equals F.interpolate (float64)", async () => {
  for (const [i, c] of meta.interp.entries()) {
    const grid = await expected.readFloat32(`interp.${i}.in`);
    const want = await expected.readFloat32(`interp.${i}.out`);
    const [ih, iw] = c.input, [oh, ow] = c.output;
    const got = resampleGrid(grid, 3, ih, iw, oh, ow, c.mode, c.antialias);
    // Inputs are the float32 values torch resampled in float64: only float64 rounding remains
    // (the stored reference is float32-rounded, hence 1e-6 on values of size ~1).
    assertClose(got, want, { atol: 1e-6 }, `${c.mode} aa=${c.antialias} ${c.input}->${c.output}`);
  }
  // Each row of a matrix is a partition of unity (AA weights are renormalised at the borders).
  for (const [n, m] of [[4, 6], [37, 16], [5, 8]]) {
    for (const mode of ["bicubic", "bilinear"] as const) {
      for (const aa of [true, false]) {
        const w = interpolationMatrix(n, m, mode, aa);
        for (let r = 0; r < m; r++) {
          const s = w.subarray(r * n, (r + 1) * n).reduce((a, b) => a + b, 0);
          assert.ok(Math.abs(s - 1) < 1e-12, `${mode} aa=${aa} ${n}->${m} row ${r} sums to ${s}`);
        }
      }
    }
  }
  assert.throws(() => interpolationMatrix(0, 3, "bicubic", true), /positive integers/);
});

Deno.test("timm: the architecture table matches timm's registry", async () => {
  assert.deepEqual(
    Object.keys(meta.architectures).sort(),
    Object.keys(TIMM_ARCHITECTURES).sort(),
  );
  for (const [name, d] of Object.entries(meta.architectures)) {
    const c = await resolveTimmConfig(name);
    assert.equal(c.imageSize, d.img_size[0], `${name} img_size`);
    assert.equal(c.patchSize, d.patch_size[0], `${name} patch`);
    assert.equal(c.embedDim, d.embed_dim, `${name} embed_dim`);
    assert.equal(c.depth, d.depth, `${name} depth`);
    assert.equal(c.numHeads, d.num_heads, `${name} heads`);
    assert.equal(c.initValues !== null, d.layer_scale, `${name} layer scale`);
    assert.equal(c.regTokens, d.num_reg_tokens, `${name} registers`);
    assert.equal(c.noEmbedClass, d.no_embed_class, `${name} no_embed_class`);
    assert.equal(c.numClasses, d.num_classes, `${name} num_classes`);
    assert.equal(Math.trunc(c.embedDim * c.mlpRatio), d.mlp_hidden, `${name} mlp hidden`);
    assert.equal(c.globalPool, d.global_pool, `${name} pool`);
    assert.equal(TIMM_ARCHITECTURES[name].defaultCfg.tag, d.tag, `${name} default tag`);
    checkPreprocess(c, d, name);
  }
});

Deno.test("timm: built-in entries for the paper's models", () => {
  const uni = timmBuiltin("uni");
  assert.equal(uni.architecture, "vit_large_patch16_224");
  assert.deepEqual(
    [uni.embedDim, uni.depth, uni.numHeads, uni.patchSize, uni.imageSize],
    [1024, 24, 16, 16, 224],
  );
  assert.equal(uni.initValues, 1e-5);
  assert.equal(uni.dynamicImgSize, true);
  assert.equal(uni.numClasses, 0);
  assert.deepEqual([...uni.mean], [0.485, 0.456, 0.406]);
  const dino = timmBuiltin("dinov2-vitl14-reg4");
  assert.deepEqual([dino.imageSize, dino.patchSize, dino.regTokens], [518, 14, 4]);
  assert.equal(dino.noEmbedClass, true);
  assert.equal(dino.initValues, 1e-5);
  assert.equal(dino.numClasses, 0);
  for (
    const [name, patch, dim] of [
      ["kaiko-vits8", 8, 384],
      ["kaiko-vits16", 16, 384],
      ["kaiko-vitb8", 8, 768],
      ["kaiko-vitb16", 16, 768],
    ] as const
  ) {
    const k = timmBuiltin(name);
    assert.deepEqual([k.patchSize, k.embedDim, k.imageSize, k.numClasses], [patch, dim, 224, 0]);
    assert.equal(k.dynamicImgSize, true);
    assert.deepEqual([...k.mean], [0.5, 0.5, 0.5]);
  }
  const imnet = timmBuiltin("vit-b16-imagenet");
  assert.deepEqual([imnet.embedDim, imnet.numClasses, imnet.cropPct], [768, 1000, 0.9]);
  for (const name of Object.keys(TIMM_BUILTINS)) assert.equal(timmBuiltin(name).name, name);
  assert.throws(() => timmBuiltin("nope"), /unknown timm model "nope" \(built-in: uni, /);
});

for (const [name, d] of Object.entries(meta.variants)) {
  gpuTest(`timm: ${name} loads from its hub folder and matches timm`, async () => {
    const model = await loadTimm(DIR + name);
    assert.deepEqual(
      describe(model),
      (({ pretrained_cfg: _, tag: __, mlp_hidden: ___, ...r }) => r)(d),
    );
    checkPreprocess(model.config, d, name);
    const tags = names.filter((n) => n.startsWith(`${name}.images.`));
    assert.ok(tags.length > 0);
    for (const images of tags) {
      const tag = images.slice(`${name}.images.`.length);
      if (name === "dinov2_reg" && tag === "21x21") continue; // another img_size, below
      const want = await expected.readFloat32(`${name}.features.${tag}`);
      assertClose(await features(model, images), want, TOL, `${name} features ${tag}`);
      if (model.head) {
        const logits = await expected.readFloat32(`${name}.logits.${tag}`);
        assertClose(await features(model, images, true), logits, TOL, `${name} logits ${tag}`);
      }
    }
    model.dispose();
  });
}

gpuTest("timm: LoRA sites cover patch_embed.proj and every qkv / proj / fc1 / fc2", async () => {
  const model = await loadTimm(DIR + "uni_like");
  const sites = model.loraSites().map((s) => s.name);
  assert.deepEqual(sites.slice(0, 5), [
    "patch_embed.proj",
    "blocks.0.attn.qkv",
    "blocks.0.attn.proj",
    "blocks.0.mlp.fc1",
    "blocks.0.mlp.fc2",
  ]);
  assert.equal(sites.length, 1 + 4 * model.blocks.length);
  const rank = Number(expected.metadata.lora_rank), alpha = Number(expected.metadata.lora_alpha);
  applyLora(model, { rank, alpha });
  const values = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const n of names.filter((n) => n.startsWith("uni_like.lora."))) {
    values.set(n.slice("uni_like.lora.".length), {
      shape: expected.entry(n).shape,
      data: await expected.readFloat32(n),
    });
  }
  loadLoraStateDict(model, values);
  const want = await expected.readFloat32("uni_like.lora_features.16x16");
  // The reference merged the same adapters into the weights (W + (alpha/r) B A) in float64.
  assertClose(await features(model, "uni_like.images.16x16"), want, TOL, "with adapters");
  assert.equal(mergeLora(model), sites.length);
  assertClose(await features(model, "uni_like.images.16x16"), want, TOL, "merged");
  model.dispose();
});

gpuTest("timm: DINOv2's original layout (kaiko.ai ViT-L/14) converts like timm", async () => {
  const config = await loadTimmConfigFile(DIR + "dinov2_reg/config.json");
  const model = new TimmVisionTransformer(config);
  const report = await loadTimmWeights(model, DIR + "dinov2_orig.pth");
  assert.equal(report.format, "torch");
  assert.equal(report.converted, "dinov2");
  assert.equal(report.tensors, model.stateDict().size);
  const want = await expected.readFloat32("dinov2_reg.features.28x28");
  assertClose(await features(model, "dinov2_reg.images.28x28"), want, TOL, "dinov2 original");
  model.dispose();
});

gpuTest(
  "timm: a pos_embed of another grid is resampled at load (checkpoint_filter_fn)",
  async () => {
    const json = JSON.parse(await Deno.readTextFile(DIR + "dinov2_reg/config.json"));
    json.model_args.img_size = 21;
    const model = new TimmVisionTransformer(parseTimmConfig(json, "dinov2_reg at 21 px"));
    const report = await loadTimmWeights(model, DIR + "dinov2_reg");
    assert.equal(report.resampledFrom, 4);
    const want = await expected.readFloat32("dinov2_reg.features.21x21");
    assertClose(await features(model, "dinov2_reg.images.21x21"), want, TOL, "resampled at load");
    model.dispose();
  },
);

gpuTest("timm: mismatches fail naming the file and the first tensor", async () => {
  // uni_like's weights into patch8_dyn's architecture: the first tensor in model order differs.
  const p8 = await loadTimmConfigFile(DIR + "patch8_dyn/config.json");
  const m = new TimmVisionTransformer(p8);
  await assert.rejects(
    () => loadTimmWeights(m, DIR + "uni_like"),
    /uni_like\/pytorch_model\.bin: tensor "cls_token" has shape \[1,1,16\] in the checkpoint but "cls_token" is \[1,1,24\]/,
  );
  m.dispose();
  // One block fewer: the second block's tensors are unused (strict), or ignored.
  const uni = await loadTimmConfigFile(DIR + "uni_like/config.json");
  const short = new TimmVisionTransformer({ ...uni, depth: 1 });
  await assert.rejects(
    () => loadTimmWeights(short, DIR + "uni_like"),
    /tensor "blocks\.1\.[a-z0-9_.]+" \[[\d,]+\] of the checkpoint has no place in the .* \(\d+ unused in all\)/,
  );
  const lax = await loadTimmWeights(short, DIR + "uni_like", { strict: false });
  assert.ok(lax.unused.every((n) => n.startsWith("blocks.1.")));
  short.dispose();
  // Layer scale expected but absent: the missing tensor is named.
  const avg = await loadTimmConfigFile(DIR + "avgmax_pre/config.json");
  const ls = new TimmVisionTransformer({ ...avg, initValues: 1e-5 });
  await assert.rejects(
    () => loadTimmWeights(ls, DIR + "avgmax_pre"),
    /avgmax_pre\/model\.safetensors: the checkpoint has no tensor "blocks\.0\.ls1\.gamma"/,
  );
  ls.dispose();
  // No config beside a bare file.
  await assert.rejects(() => loadTimm(DIR + "dinov2_orig.pth"), /no timm config\.json beside/);
});

gpuTest("timm: input checks (fixed size without dynamic_img_size)", async () => {
  const model = await loadTimm(DIR + "head_token");
  assert.equal(model.config.dynamicImgSize, false);
  const wrong = tensor(new Float32Array(2 * 3 * 20 * 20), [2, 3, 20, 20]);
  assert.throws(() => model.features(wrong), /images must be \[B, 3, 16, 16\], got/);
  wrong.dispose();
  model.dispose();
});

Deno.test("timm: config.json options this engine lacks are rejected by name", () => {
  const base = { architecture: "vit_base_patch16_224", pretrained_cfg: {} };
  const bad = (model_args: Record<string, unknown>) =>
    parseTimmConfig({ ...base, model_args }, "cfg.json");
  assert.throws(
    () => bad({ qk_norm: true }),
    /cfg\.json: model_args\.qk_norm = true is not supported/,
  );
  assert.throws(
    () => bad({ global_pool: "map" }),
    /model_args\.global_pool "map" is not supported/,
  );
  assert.throws(() => bad({ mlp_layer: "swiglu" }), /model_args\.mlp_layer is not supported/);
  assert.throws(() => bad({ img_size: [224, 256] }), /not a square size/);
  assert.throws(() => bad({ class_token: false }), /global_pool "token" needs a class token/);
  assert.throws(
    () => parseTimmConfig({ ...base, architecture: "vit_giant_patch14_dinov2" }, "g.json"),
    /g\.json: timm architecture "vit_giant_patch14_dinov2" is not supported \(known: /,
  );
  // Legacy single-dictionary form: everything but the architecture is the pretrained config.
  const legacy = parseTimmConfig(
    { architecture: "vit_small_patch16_224", num_classes: 0, mean: [0.1, 0.2, 0.3] },
    "legacy.json",
  );
  assert.deepEqual([legacy.numClasses, ...legacy.mean], [0, 0.1, 0.2, 0.3]);
  // timm's precedence: model_args > pretrained_cfg (num_classes, img_size if fixed) > defaults.
  const c = parseTimmConfig({
    architecture: "vit_small_patch16_224",
    num_classes: 7,
    model_args: { num_classes: 3 },
    pretrained_cfg: { input_size: [3, 384, 384], fixed_input_size: false },
  }, "p.json");
  assert.deepEqual([c.numClasses, c.imageSize, c.cropPct], [3, 224, 0.875]);
  // Dropout rates change nothing at inference and are accepted.
  assert.equal(bad({ drop_path_rate: 0.1 }).embedDim, 768);
});
