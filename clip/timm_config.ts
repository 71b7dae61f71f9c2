/**
 * Hyper-parameters of timm Vision Transformers (`timm.models.vision_transformer.VisionTransformer`)
 * and where they come from:
 *
 * - a timm hub `config.json` (what `timm.models.push_to_hf_hub` / `save_for_hf` write, e.g.
 *   `MahmoodLab/UNI`, `timm/vit_large_patch14_reg4_dinov2.lvd142m`): `architecture` names a
 *   registered model whose arguments are known here ({@link TIMM_ARCHITECTURES}), `model_args`
 *   override them, `pretrained_cfg` gives the preprocessing and the defaults timm's builder
 *   derives from it (`num_classes`, and `img_size` when `fixed_input_size`), exactly in timm's
 *   order of precedence (`_parse_model_cfg`, `resolve_pretrained_cfg`,
 *   `_update_default_model_kwargs`);
 * - built-in entries for the CLIP-IT paper's models (clip/timm_models.ts).
 *
 * Only the plain ViT of timm is supported (LayerNorm, GELU or QuickGELU MLP, learned absolute
 * position embedding); options this engine does not implement (qk_norm, attention pooling "map",
 * SwiGLU MLPs, patch dropout at inference, ...) are rejected with an error naming the option.
 * Dropout / drop-path rates are accepted and ignored (they are training-time regularisers).
 */

/** A parsed JSON object. */
export type Json = Record<string, unknown>;

/** How the token sequence is reduced to one feature vector (timm's `global_pool`). */
export type TimmGlobalPool = "token" | "avg" | "max" | "avgmax";

/** The resolved hyper-parameters of a timm ViT and its preprocessing. */
export interface TimmVitConfig {
  /** A label for messages (built-in name or config file). */
  name: string;
  /** The timm architecture name (e.g. `vit_large_patch16_224`). */
  architecture: string;
  /** Side of the square input the position embedding was made for (timm `img_size`). */
  imageSize: number;
  /** Patch side p (the patch embedding is a stride-p p x p conv). */
  patchSize: number;
  /** Token width D (`embed_dim`). */
  embedDim: number;
  /** Number of blocks. */
  depth: number;
  /** Attention heads per block. */
  numHeads: number;
  /** MLP hidden size as a multiple of D (`int(D * mlp_ratio)` hidden units, as timm). */
  mlpRatio: number;
  /** Bias on the packed q/k/v projection. */
  qkvBias: boolean;
  /** Bias on the attention output projection and both MLP layers. */
  projBias: boolean;
  /** Layer scale: `ls1.gamma` / `ls2.gamma` exist when this is set (timm `init_values`). */
  initValues: number | null;
  /** A class token (`cls_token`) is prepended. */
  classToken: boolean;
  /** Number of register tokens (`reg_token`), placed after the class token. */
  regTokens: number;
  /** The position embedding covers patches only (prefix tokens get none). */
  noEmbedClass: boolean;
  /** A learned position embedding exists (timm `pos_embed` = "learn"; "none" -> false). */
  posEmbed: boolean;
  /** LayerNorm `norm_pre` after the embeddings (and no bias on the patch embedding). */
  preNorm: boolean;
  /** A final LayerNorm exists (as `norm` before pooling or `fc_norm` after it). */
  finalNorm: boolean;
  /** The final LayerNorm is applied after pooling (`fc_norm`); null: timm decides (avg-like pools). */
  fcNorm: boolean | null;
  /** Pooling of the final tokens into one vector. */
  globalPool: TimmGlobalPool;
  /** Average / max pooling includes the prefix tokens. */
  poolIncludePrefix: boolean;
  /** Inputs of other sizes are accepted; the position embedding is resampled per forward. */
  dynamicImgSize: boolean;
  /** Classes of the linear head (`head.*`; 0: no head). */
  numClasses: number;
  /** MLP nonlinearity (timm `act_layer`). */
  activation: "gelu" | "quick_gelu";
  /** LayerNorm epsilon (1e-6: timm's LayerNorm). */
  eps: number;
  /** Normalisation mean (R, G, B) after scaling pixels to [0, 1] (`pretrained_cfg.mean`). */
  mean: readonly number[];
  /** Normalisation std (`pretrained_cfg.std`). */
  std: readonly number[];
  /** Resize interpolation (`pretrained_cfg.interpolation`). */
  interpolation: "bicubic" | "bilinear";
  /** Centre-crop fraction (`pretrained_cfg.crop_pct`): resize to S / crop_pct, crop S. */
  cropPct: number;
}

/** The architecture arguments a registered timm model function fixes. */
export interface TimmArchitecture {
  /** Patch side. */
  patchSize: number;
  /** Token width. */
  embedDim: number;
  /** Blocks. */
  depth: number;
  /** Heads. */
  numHeads: number;
  /** Layer-scale init (DINOv2 models). */
  initValues?: number;
  /** Register tokens (DINOv2 "reg4" models). */
  regTokens?: number;
  /** Position embedding without prefix rows (DINOv2 "reg4" models). */
  noEmbedClass?: boolean;
  /**
   * The `pretrained_cfg` of timm's default tag for the architecture (`tag`, `input_size`,
   * `fixed_input_size`, `interpolation`, `crop_pct`, `mean`, `std`, `num_classes`): what
   * `timm.create_model(name)` builds with when no config says otherwise.
   */
  defaultCfg: Readonly<Record<string, unknown>>;
}

/** timm's IMAGENET_INCEPTION_MEAN / _STD (0.5), as a pretrained_cfg fragment. */
export const INCEPTION_NORM: Readonly<Json> = { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
/** timm's IMAGENET_DEFAULT_MEAN / _STD, as a pretrained_cfg fragment. */
export const IMAGENET_NORM: Readonly<Json> = {
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
};

/** A default pretrained config: fixed input size, bicubic (as every ViT tag here). */
function tagCfg(
  tag: string,
  size: number,
  cropPct: number,
  norm: Readonly<Json>,
  numClasses: number,
): Json {
  return {
    tag,
    input_size: [3, size, size],
    fixed_input_size: true,
    interpolation: "bicubic",
    crop_pct: cropPct,
    ...norm,
    num_classes: numClasses,
  };
}

const VIT = (
  patchSize: number,
  embedDim: number,
  depth: number,
  numHeads: number,
  tag = "augreg_in21k_ft_in1k",
  numClasses = 1000,
): TimmArchitecture => ({
  patchSize,
  embedDim,
  depth,
  numHeads,
  defaultCfg: tagCfg(tag, 224, 0.9, INCEPTION_NORM, numClasses),
});
const DINOV2 = (embedDim: number, numHeads: number, depth: number, reg: boolean) => ({
  patchSize: 14,
  embedDim,
  depth,
  numHeads,
  initValues: 1e-5,
  ...(reg ? { regTokens: 4, noEmbedClass: true } : {}),
  defaultCfg: tagCfg("lvd142m", 518, 1.0, IMAGENET_NORM, 0),
});

/**
 * The timm ViT architectures this engine can build, with the arguments their registered
 * functions pass and their default tag's pretrained config (timm 1.0.x, `vision_transformer.py`);
 * tests/fixtures/make_timm_fixture.py records every entry from timm itself and
 * tests/timm_test.ts compares. DINOv2 giant models (SwiGLU MLP) are not supported.
 */
export const TIMM_ARCHITECTURES: Readonly<Record<string, TimmArchitecture>> = Object.freeze({
  vit_tiny_patch16_224: VIT(16, 192, 12, 3),
  vit_small_patch16_224: VIT(16, 384, 12, 6),
  vit_small_patch8_224: {
    ...VIT(8, 384, 12, 6),
    defaultCfg: tagCfg("dino", 224, 0.9, IMAGENET_NORM, 0),
  },
  vit_small_patch32_224: VIT(32, 384, 12, 6),
  vit_base_patch16_224: VIT(16, 768, 12, 12, "augreg2_in21k_ft_in1k"),
  vit_base_patch8_224: VIT(8, 768, 12, 12, "augreg2_in21k_ft_in1k"),
  vit_base_patch32_224: VIT(32, 768, 12, 12),
  vit_large_patch16_224: VIT(16, 1024, 24, 16),
  vit_large_patch14_224: VIT(14, 1024, 24, 16, "untrained"),
  vit_large_patch32_224: VIT(32, 1024, 24, 16, "orig_in21k", 0),
  vit_huge_patch14_224: VIT(14, 1280, 32, 16, "orig_in21k", 0),
  vit_small_patch14_dinov2: DINOV2(384, 6, 12, false),
  vit_base_patch14_dinov2: DINOV2(768, 12, 12, false),
  vit_large_patch14_dinov2: DINOV2(1024, 16, 24, false),
  vit_small_patch14_reg4_dinov2: DINOV2(384, 6, 12, true),
  vit_base_patch14_reg4_dinov2: DINOV2(768, 12, 12, true),
  vit_large_patch14_reg4_dinov2: DINOV2(1024, 16, 24, true),
});

/** timm's `PretrainedCfg` defaults, used for fields a `pretrained_cfg` leaves out. */
const PRETRAINED_DEFAULTS = {
  input_size: [3, 224, 224],
  fixed_input_size: false,
  interpolation: "bicubic",
  crop_pct: 0.875,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
  num_classes: 1000,
};

/** `VisionTransformer.__init__` keyword arguments that change nothing at inference. */
const IGNORED_ARGS = new Set([
  "drop_rate",
  "pos_drop_rate",
  "proj_drop_rate",
  "attn_drop_rate",
  "drop_path_rate",
  "weight_init",
  "fix_init",
  "in_chans", // checked separately (must be 3)
]);

function isObject(x: unknown): x is Json {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function squareSize(v: unknown, what: string, where: string): number {
  const sizes = Array.isArray(v) ? v : [v, v];
  const [h, w] = sizes.slice(-2);
  if (!(Number.isInteger(h) && (h as number) > 0) || h !== w) {
    throw new Error(
      `${where}: ${what} ${
        JSON.stringify(v)
      } is not a square size (only square inputs are supported)`,
    );
  }
  return h as number;
}

function num(v: unknown, what: string, where: string): number {
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new Error(`${where}: ${what} must be a number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(v: unknown, what: string, where: string): boolean {
  if (typeof v !== "boolean") {
    throw new Error(`${where}: ${what} must be true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

function triple(v: unknown, what: string, where: string): number[] {
  if (!Array.isArray(v) || v.length !== 3 || v.some((x) => typeof x !== "number")) {
    throw new Error(`${where}: ${what} must be three numbers, got ${JSON.stringify(v)}`);
  }
  return v as number[];
}

/**
 * Build a config from an architecture name, `model_args` (timm `create_model` keyword arguments)
 * and a `pretrained_cfg` object, the way timm does. Throws naming the option for anything
 * unsupported.
 */
export function timmConfigFrom(
  architecture: string,
  modelArgs: Json,
  pretrainedCfg: Json,
  name: string,
): TimmVitConfig {
  const where = name;
  const arch = TIMM_ARCHITECTURES[architecture];
  if (!arch) {
    throw new Error(
      `${where}: timm architecture "${architecture}" is not supported (known: ${
        Object.keys(TIMM_ARCHITECTURES).join(", ")
      })`,
    );
  }
  const pc = { ...PRETRAINED_DEFAULTS, ...pretrainedCfg } as Json;
  // _update_default_model_kwargs: num_classes (when >= 0), global_pool, and img_size when the
  // pretrained config says the input size is fixed; explicit model_args win.
  const args: Json = { ...modelArgs };
  if (args.num_classes === undefined && typeof pc.num_classes === "number" && pc.num_classes >= 0) {
    args.num_classes = pc.num_classes;
  }
  if (args.global_pool === undefined && pc.global_pool !== undefined) {
    args.global_pool = pc.global_pool;
  }
  if (args.img_size === undefined && pc.fixed_input_size === true) {
    args.img_size = triple(pc.input_size, "pretrained_cfg.input_size", where).slice(1);
  }
  const c: TimmVitConfig = {
    name,
    architecture,
    imageSize: 224, // VisionTransformer's default img_size
    patchSize: arch.patchSize,
    embedDim: arch.embedDim,
    depth: arch.depth,
    numHeads: arch.numHeads,
    mlpRatio: 4,
    qkvBias: true,
    projBias: true,
    initValues: arch.initValues ?? null,
    classToken: true,
    regTokens: arch.regTokens ?? 0,
    noEmbedClass: arch.noEmbedClass ?? false,
    posEmbed: true,
    preNorm: false,
    finalNorm: true,
    fcNorm: null,
    globalPool: "token",
    poolIncludePrefix: false,
    dynamicImgSize: false,
    numClasses: 1000,
    activation: "gelu",
    eps: 1e-6,
    mean: triple(pc.mean, "pretrained_cfg.mean", where),
    std: triple(pc.std, "pretrained_cfg.std", where),
    interpolation: "bicubic",
    cropPct: num(pc.crop_pct, "pretrained_cfg.crop_pct", where),
  };
  const interp = pc.interpolation;
  if (interp !== "bicubic" && interp !== "bilinear") {
    throw new Error(
      `${where}: pretrained_cfg.interpolation "${interp}" is not supported (bicubic, bilinear)`,
    );
  }
  c.interpolation = interp;
  for (const [key, v] of Object.entries(args)) {
    const what = `model_args.${key}`;
    switch (key) {
      case "img_size":
        c.imageSize = squareSize(v, what, where);
        break;
      case "patch_size":
        c.patchSize = squareSize(v, what, where);
        break;
      case "embed_dim":
        c.embedDim = num(v, what, where);
        break;
      case "depth":
        c.depth = num(v, what, where);
        break;
      case "num_heads":
        c.numHeads = num(v, what, where);
        break;
      case "mlp_ratio":
        c.mlpRatio = num(v, what, where);
        break;
      case "qkv_bias":
        c.qkvBias = bool(v, what, where);
        break;
      case "proj_bias":
        c.projBias = bool(v, what, where);
        break;
      case "init_values":
        c.initValues = v === null ? null : num(v, what, where);
        break;
      case "class_token":
        c.classToken = bool(v, what, where);
        break;
      case "reg_tokens":
        c.regTokens = num(v, what, where);
        break;
      case "no_embed_class":
        c.noEmbedClass = bool(v, what, where);
        break;
      case "pos_embed":
        if (v !== "learn" && v !== "none" && v !== "") {
          throw new Error(`${where}: ${what} "${v}" is not supported (learn, none)`);
        }
        c.posEmbed = v === "learn";
        break;
      case "pre_norm":
        c.preNorm = bool(v, what, where);
        break;
      case "final_norm":
        c.finalNorm = bool(v, what, where);
        break;
      case "fc_norm":
        c.fcNorm = v === null ? null : bool(v, what, where);
        break;
      case "global_pool":
        if (v !== "token" && v !== "avg" && v !== "max" && v !== "avgmax") {
          throw new Error(
            `${where}: ${what} "${v}" is not supported (token, avg, max, avgmax; a backbone needs one vector per image)`,
          );
        }
        c.globalPool = v;
        break;
      case "pool_include_prefix":
        c.poolIncludePrefix = bool(v, what, where);
        break;
      case "dynamic_img_size":
        c.dynamicImgSize = bool(v, what, where);
        break;
      case "num_classes":
        c.numClasses = num(v, what, where);
        break;
      case "act_layer":
        if (v !== "gelu" && v !== "quick_gelu") {
          throw new Error(`${where}: ${what} "${v}" is not supported (gelu, quick_gelu)`);
        }
        c.activation = v;
        break;
      case "norm_layer":
        if (v !== "layernorm" && v !== null) {
          throw new Error(`${where}: ${what} "${v}" is not supported (layernorm)`);
        }
        break;
      case "in_chans":
        if (v !== 3) throw new Error(`${where}: ${what} ${v}: only RGB (3 channels) is supported`);
        break;
      case "qk_norm":
      case "scale_attn_norm":
      case "scale_mlp_norm":
      case "dynamic_img_pad":
        if (v !== false) {
          throw new Error(`${where}: ${what} = ${JSON.stringify(v)} is not supported`);
        }
        break;
      case "patch_drop_rate":
        if (v !== 0) throw new Error(`${where}: ${what} = ${v} is not supported (patch dropout)`);
        break;
      default:
        if (!IGNORED_ARGS.has(key)) {
          throw new Error(`${where}: ${what} is not supported by this engine's timm ViT`);
        }
    }
  }
  if (c.globalPool === "token" && !c.classToken) {
    throw new Error(`${where}: global_pool "token" needs a class token (class_token is false)`);
  }
  validateTimmConfig(c);
  return c;
}

/** Check a config's sizes; throws a RangeError naming the first bad field. */
export function validateTimmConfig(c: TimmVitConfig): void {
  const pos = (v: number, what: string) => {
    if (!(Number.isInteger(v) && v > 0)) {
      throw new RangeError(`${c.name}: ${what} must be a positive integer, got ${v}`);
    }
  };
  pos(c.imageSize, "image size");
  pos(c.patchSize, "patch size");
  pos(c.embedDim, "embed_dim");
  pos(c.depth, "depth");
  pos(c.numHeads, "num_heads");
  if (c.embedDim % c.numHeads !== 0) {
    throw new RangeError(
      `${c.name}: embed_dim ${c.embedDim} is not divisible by num_heads ${c.numHeads}`,
    );
  }
  if (!(Number.isInteger(c.regTokens) && c.regTokens >= 0)) {
    throw new RangeError(
      `${c.name}: reg_tokens must be a non-negative integer, got ${c.regTokens}`,
    );
  }
  if (!(Number.isInteger(c.numClasses) && c.numClasses >= 0)) {
    throw new RangeError(
      `${c.name}: num_classes must be a non-negative integer, got ${c.numClasses}`,
    );
  }
  if (c.imageSize < c.patchSize) {
    throw new RangeError(
      `${c.name}: image size ${c.imageSize} is smaller than the patch ${c.patchSize}`,
    );
  }
  if (!(c.mlpRatio > 0) || Math.trunc(c.embedDim * c.mlpRatio) < 1) {
    throw new RangeError(`${c.name}: mlp_ratio ${c.mlpRatio} gives no hidden units`);
  }
}

/**
 * Parse a timm hub `config.json` (new form with `pretrained_cfg` and optional `model_args`, or the
 * legacy single-dictionary form). `name` labels errors (the file path).
 */
export function parseTimmConfig(json: unknown, name: string): TimmVitConfig {
  if (!isObject(json)) throw new Error(`${name}: a timm config must be a JSON object`);
  let cfg = json;
  if (!("pretrained_cfg" in cfg)) {
    // Legacy form: the pretrained config is the whole object.
    const { architecture, num_features: _, ...rest } = cfg;
    cfg = { architecture, pretrained_cfg: rest };
  }
  const arch = cfg.architecture;
  if (typeof arch !== "string") throw new Error(`${name}: no "architecture" (a timm model name)`);
  const pc = cfg.pretrained_cfg;
  if (!isObject(pc)) throw new Error(`${name}: "pretrained_cfg" must be an object`);
  const pretrained: Json = { ...pc };
  if (cfg.num_classes !== undefined) pretrained.num_classes = cfg.num_classes;
  const modelArgs = cfg.model_args ?? {};
  if (!isObject(modelArgs)) throw new Error(`${name}: "model_args" must be an object`);
  return timmConfigFrom(arch, modelArgs, pretrained, name);
}

/** Read and parse a timm `config.json`; errors name the file. */
export async function loadTimmConfigFile(path: string): Promise<TimmVitConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`cannot read timm config ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseTimmConfig(json, path);
}
