/**
 * CLIP hyper-parameters: the built-in configurations (ViT-B/32, ViT-B/16, ViT-L/14, their
 * QuickGELU variants and tiny test models) and parsers for the config files that come with
 * checkpoints: an OpenCLIP model config (`ViT-B-16.json`), an OpenCLIP hub file
 * (`open_clip_config.json`: `model_cfg` + `preprocess_cfg`), a Hugging Face `config.json` of a
 * `CLIPModel`, or this project's own form (what {@link configToJson} writes).
 */
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from "./preprocess.ts";
import { checkInputFile } from "../nn/formats/input_file.ts";

/** The MLP nonlinearity: exact (erf) GELU, or OpenAI's QuickGELU `x * sigmoid(1.702 x)`. */
export type ClipActivation = "gelu" | "quick_gelu";

/** The image tower: a ViT over `imageSize` x `imageSize` images cut into square patches. */
export interface VisionConfig {
  /** Input side in pixels (224 for the standard models); images are square. */
  imageSize: number;
  /** Patch side in pixels (must divide `imageSize`); one token per patch. */
  patchSize: number;
  /** Token width (d_model). */
  width: number;
  /** Number of transformer blocks. */
  layers: number;
  /** Attention heads per block (must divide `width`). */
  heads: number;
  /** Hidden size of each block's MLP. */
  mlpWidth: number;
}

/** The text tower: a causal transformer over `contextLength` token ids. */
export interface TextConfig {
  /** Tokens per caption, start and end tokens included (77 for CLIP). */
  contextLength: number;
  /** Rows of the token embedding (49408 for CLIP's BPE vocabulary). */
  vocabSize: number;
  /** Token width (d_model). */
  width: number;
  /** Number of transformer blocks. */
  layers: number;
  /** Attention heads per block (must divide `width`). */
  heads: number;
  /** Hidden size of each block's MLP. */
  mlpWidth: number;
}

/** Everything needed to build a CLIP model and prepare its inputs. */
export interface ClipConfig {
  /** A label for messages (the built-in name or the file it came from). */
  name: string;
  /** Size of the shared image-text embedding space. */
  embedDim: number;
  /** The MLP nonlinearity of both towers. */
  activation: ClipActivation;
  /** Epsilon of every LayerNorm (1e-5 for OpenCLIP and OpenAI models). */
  layerNormEps: number;
  /** The image tower's shape. */
  vision: VisionConfig;
  /** The text tower's shape. */
  text: TextConfig;
  /** Image normalisation mean (R, G, B), subtracted after scaling pixels to [0, 1]. */
  mean: readonly number[];
  /** Image normalisation standard deviation (R, G, B), divided by after the mean. */
  std: readonly number[];
}

const CLIP_VOCAB = 49408;

function vit(
  name: string,
  embedDim: number,
  v: { width: number; layers: number; patch: number },
  t: { width: number; layers: number; heads: number },
  activation: ClipActivation,
): ClipConfig {
  return {
    name,
    embedDim,
    activation,
    layerNormEps: 1e-5,
    vision: {
      imageSize: 224,
      patchSize: v.patch,
      width: v.width,
      layers: v.layers,
      heads: v.width / 64,
      mlpWidth: v.width * 4,
    },
    text: {
      contextLength: 77,
      vocabSize: CLIP_VOCAB,
      width: t.width,
      layers: t.layers,
      heads: t.heads,
      mlpWidth: t.width * 4,
    },
    mean: OPENAI_CLIP_MEAN,
    std: OPENAI_CLIP_STD,
  };
}

const B_TEXT = { width: 512, layers: 12, heads: 8 };
const L_TEXT = { width: 768, layers: 12, heads: 12 };

/**
 * Built-in configurations, by OpenCLIP name. `-quickgelu` variants are the ones OpenAI's own
 * weights (and models fine-tuned from them, such as PLIP) need. `tiny` has the real CLIP
 * vocabulary and context (so the real tokenizer works) at a toy size; `tiny-test` is a toy
 * model for tests and quick runs; `demo-tiny` is the built-in demo's CLIP for its synthetic
 * world and word tokenizer.
 */
export const BUILTIN_CONFIGS: Readonly<Record<string, ClipConfig>> = Object.freeze(
  {
    "ViT-B-32": vit("ViT-B-32", 512, { width: 768, layers: 12, patch: 32 }, B_TEXT, "gelu"),
    "ViT-B-32-quickgelu": vit(
      "ViT-B-32-quickgelu",
      512,
      { width: 768, layers: 12, patch: 32 },
      B_TEXT,
      "quick_gelu",
    ),
    "ViT-B-16": vit("ViT-B-16", 512, { width: 768, layers: 12, patch: 16 }, B_TEXT, "gelu"),
    "ViT-B-16-quickgelu": vit(
      "ViT-B-16-quickgelu",
      512,
      { width: 768, layers: 12, patch: 16 },
      B_TEXT,
      "quick_gelu",
    ),
    "ViT-L-14": vit("ViT-L-14", 768, { width: 1024, layers: 24, patch: 14 }, L_TEXT, "gelu"),
    "ViT-L-14-quickgelu": vit(
      "ViT-L-14-quickgelu",
      768,
      { width: 1024, layers: 24, patch: 14 },
      L_TEXT,
      "quick_gelu",
    ),
    "tiny": {
      name: "tiny",
      embedDim: 64,
      activation: "gelu",
      layerNormEps: 1e-5,
      vision: { imageSize: 64, patchSize: 16, width: 64, layers: 2, heads: 2, mlpWidth: 256 },
      text: {
        contextLength: 77,
        vocabSize: CLIP_VOCAB,
        width: 64,
        layers: 2,
        heads: 2,
        mlpWidth: 256,
      },
      mean: OPENAI_CLIP_MEAN,
      std: OPENAI_CLIP_STD,
    },
    "tiny-test": {
      name: "tiny-test",
      embedDim: 24,
      activation: "quick_gelu",
      layerNormEps: 1e-5,
      vision: { imageSize: 32, patchSize: 8, width: 32, layers: 2, heads: 2, mlpWidth: 64 },
      text: { contextLength: 16, vocabSize: 48, width: 32, layers: 2, heads: 2, mlpWidth: 64 },
      mean: OPENAI_CLIP_MEAN,
      std: OPENAI_CLIP_STD,
    },
    // The built-in demo's CLIP, trained from scratch on the synthetic world of
    // train/data/world.ts: 32x32 tiles, the world's word tokenizer (vocabSize = its size,
    // checked by tests/world_test.ts), reports of about 15-45 words in a 32-token context.
    // Sized for a slow software GPU, where small transformers cost per layer and per token.
    "demo-tiny": {
      name: "demo-tiny",
      embedDim: 32,
      activation: "gelu",
      layerNormEps: 1e-5,
      vision: { imageSize: 32, patchSize: 8, width: 32, layers: 2, heads: 2, mlpWidth: 128 },
      text: { contextLength: 32, vocabSize: 173, width: 32, layers: 2, heads: 2, mlpWidth: 128 },
      mean: OPENAI_CLIP_MEAN,
      std: OPENAI_CLIP_STD,
    },
  } satisfies Record<string, ClipConfig>,
);

/** Normalise a model name: `ViT-B/16` and `vit-b-16` both mean `ViT-B-16`. */
function canonicalName(name: string): string | undefined {
  const key = name.trim().replaceAll("/", "-").toLowerCase();
  return Object.keys(BUILTIN_CONFIGS).find((k) => k.toLowerCase() === key);
}

/**
 * The built-in configuration called `name` (case-insensitive; `/` may stand for `-`, so
 * `ViT-B/16` works). Returns a deep copy. Throws listing the known names when there is none.
 */
export function builtinConfig(name: string): ClipConfig {
  const key = canonicalName(name);
  if (!key) {
    throw new Error(
      `unknown CLIP architecture "${name}"; built-in: ${
        Object.keys(BUILTIN_CONFIGS).join(", ")
      } (or pass a JSON config file)`,
    );
  }
  return structuredClone(BUILTIN_CONFIGS[key]) as ClipConfig;
}

// ---- parsing config files ---------------------------------------------------------------------

type Json = Record<string, unknown>;

function isObject(x: unknown): x is Json {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function num(obj: Json, key: string, where: string, fallback?: number): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new Error(`${where}: missing "${key}"`);
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new Error(`${where}: "${key}" must be a number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function triple(v: unknown, key: string, where: string): readonly number[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === "number")) {
    throw new Error(`${where}: "${key}" must be three numbers, got ${JSON.stringify(v)}`);
  }
  return v as number[];
}

function hfActivation(act: unknown, where: string): ClipActivation {
  if (act === undefined || act === "quick_gelu") return "quick_gelu"; // CLIPConfig's default
  if (act === "gelu") return "gelu";
  throw new Error(
    `${where}: hidden_act "${String(act)}" is not supported (only "gelu" and "quick_gelu")`,
  );
}

/** OpenCLIP model config (`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`). */
function fromOpenClip(cfg: Json, name: string, preprocess: Json | undefined): ClipConfig {
  const where = name;
  const v = cfg.vision_cfg, t = cfg.text_cfg;
  if (!isObject(v) || !isObject(t)) throw new Error(`${where}: needs vision_cfg and text_cfg`);
  if (Array.isArray(v.layers) || (v.patch_size ?? null) === null) {
    throw new Error(`${where}: ResNet image towers (layers as a list) are not supported`);
  }
  if (v.timm_model_name || t.hf_model_name) {
    throw new Error(
      `${where}: timm / Hugging Face towers (timm_model_name, hf_model_name) are not supported; ` +
        `only OpenCLIP's own ViT and text transformer`,
    );
  }
  for (const k of ["attentional_pool", "attentional_pool_contrast", "embed_cls"]) {
    if (v[k] || t[k]) throw new Error(`${where}: "${k}" (CoCa) is not supported`);
  }
  const vw = num(v, "width", `${where} vision_cfg`);
  const tw = num(t, "width", `${where} text_cfg`);
  const headWidth = num(v, "head_width", `${where} vision_cfg`, 64);
  const vHeads = v.heads !== undefined ? num(v, "heads", `${where} vision_cfg`) : vw / headWidth;
  const mean = triple(preprocess?.mean, "mean", where) ?? triple(v.image_mean, "image_mean", where);
  const std = triple(preprocess?.std, "std", where) ?? triple(v.image_std, "image_std", where);
  return {
    name,
    embedDim: num(cfg, "embed_dim", where),
    activation: cfg.quick_gelu ? "quick_gelu" : "gelu",
    layerNormEps: 1e-5,
    vision: {
      imageSize: num(v, "image_size", `${where} vision_cfg`, 224),
      patchSize: num(v, "patch_size", `${where} vision_cfg`),
      width: vw,
      layers: num(v, "layers", `${where} vision_cfg`),
      heads: vHeads,
      mlpWidth: Math.round(vw * num(v, "mlp_ratio", `${where} vision_cfg`, 4)),
    },
    text: {
      contextLength: num(t, "context_length", `${where} text_cfg`, 77),
      vocabSize: num(t, "vocab_size", `${where} text_cfg`, CLIP_VOCAB),
      width: tw,
      layers: num(t, "layers", `${where} text_cfg`),
      heads: num(t, "heads", `${where} text_cfg`, 8),
      mlpWidth: Math.round(tw * num(t, "mlp_ratio", `${where} text_cfg`, 4)),
    },
    mean: mean ?? OPENAI_CLIP_MEAN,
    std: std ?? OPENAI_CLIP_STD,
  };
}

/** Hugging Face `CLIPConfig` (`projection_dim`, `text_config`, `vision_config`). */
function fromHuggingFace(cfg: Json, name: string, preprocess: Json | undefined): ClipConfig {
  const where = name;
  // Configs saved by older transformers also carry `*_config_dict` (overrides of the defaults).
  const merged = (a: unknown, b: unknown) =>
    isObject(a) || isObject(b) ? { ...(isObject(a) ? a : {}), ...(isObject(b) ? b : {}) } : null;
  const v = merged(cfg.vision_config, cfg.vision_config_dict);
  const t = merged(cfg.text_config, cfg.text_config_dict);
  if (!v || !t) throw new Error(`${where}: needs vision_config and text_config`);
  const vAct = hfActivation(v.hidden_act, `${where} vision_config`);
  const tAct = hfActivation(t.hidden_act, `${where} text_config`);
  if (vAct !== tAct) {
    throw new Error(`${where}: different activations per tower (${vAct}, ${tAct}) not supported`);
  }
  const vEps = num(v, "layer_norm_eps", `${where} vision_config`, 1e-5);
  const tEps = num(t, "layer_norm_eps", `${where} text_config`, 1e-5);
  if (vEps !== tEps) throw new Error(`${where}: different layer_norm_eps per tower not supported`);
  // Hugging Face's defaults are those of openai/clip-vit-base-patch32.
  const vw = num(v, "hidden_size", `${where} vision_config`, 768);
  const tw = num(t, "hidden_size", `${where} text_config`, 512);
  return {
    name,
    embedDim: num(cfg, "projection_dim", where, 512),
    activation: vAct,
    layerNormEps: vEps,
    vision: {
      imageSize: num(v, "image_size", `${where} vision_config`, 224),
      patchSize: num(v, "patch_size", `${where} vision_config`, 32),
      width: vw,
      layers: num(v, "num_hidden_layers", `${where} vision_config`, 12),
      heads: num(v, "num_attention_heads", `${where} vision_config`, 12),
      mlpWidth: num(v, "intermediate_size", `${where} vision_config`, 3072),
    },
    text: {
      contextLength: num(t, "max_position_embeddings", `${where} text_config`, 77),
      vocabSize: num(t, "vocab_size", `${where} text_config`, CLIP_VOCAB),
      width: tw,
      layers: num(t, "num_hidden_layers", `${where} text_config`, 12),
      heads: num(t, "num_attention_heads", `${where} text_config`, 8),
      mlpWidth: num(t, "intermediate_size", `${where} text_config`, 2048),
    },
    mean: triple(preprocess?.image_mean, "image_mean", where) ?? OPENAI_CLIP_MEAN,
    std: triple(preprocess?.image_std, "image_std", where) ?? OPENAI_CLIP_STD,
  };
}

/**
 * Parse a config object from any of the supported layouts (see the module comment); `name`
 * labels it in messages. `preprocess` optionally supplies a Hugging Face
 * `preprocessor_config.json` (`image_mean`, `image_std`). The result is validated.
 * @throws Error naming `name` and the offending field.
 */
export function parseConfig(json: unknown, name: string, preprocess?: unknown): ClipConfig {
  if (!isObject(json)) throw new Error(`${name}: a CLIP config must be a JSON object`);
  const pre = isObject(preprocess) ? preprocess : undefined;
  let cfg: ClipConfig;
  if (isObject(json.model_cfg)) {
    const pc = isObject(json.preprocess_cfg) ? json.preprocess_cfg : pre;
    cfg = fromOpenClip(json.model_cfg, name, pc);
  } else if (isObject(json.vision_cfg)) cfg = fromOpenClip(json, name, pre);
  else if (isObject(json.vision_config) || isObject(json.vision_config_dict)) {
    cfg = fromHuggingFace(json, name, pre);
  } else if (isObject(json.vision) && isObject(json.text)) {
    cfg = { ...(json as unknown as ClipConfig), name: String(json.name ?? name) };
  } else {
    throw new Error(
      `${name}: not a CLIP config (expected OpenCLIP vision_cfg/text_cfg, open_clip_config ` +
        `model_cfg, or Hugging Face vision_config/text_config)`,
    );
  }
  validateConfig(cfg);
  return cfg;
}

/**
 * Check that every size is a positive (safe) integer, heads divide widths, the patch size divides
 * the image size, mean/std have three entries (std non-zero), and that the model is not
 * degenerate: `text.contextLength` at least 3 (with 1 or 2 every text tokenizes to the same
 * start/end tokens) and `embedDim` at least 2 (a 1-d unit embedding is +1 or -1). Whether the
 * model fits the machine is config_check.ts's question.
 * @throws Error naming the config and field.
 */
export function validateConfig(c: ClipConfig): void {
  const pos = (v: unknown, field: string) => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw new Error(`${c.name}: ${field} must be a positive integer, got ${JSON.stringify(v)}`);
    }
  };
  pos(c.embedDim, "embedDim");
  for (const [tower, t] of [["vision", c.vision], ["text", c.text]] as const) {
    if (!t) throw new Error(`${c.name}: missing ${tower} config`);
    pos(t.width, `${tower}.width`);
    pos(t.layers, `${tower}.layers`);
    pos(t.heads, `${tower}.heads`);
    pos(t.mlpWidth, `${tower}.mlpWidth`);
    if (t.width % t.heads !== 0) {
      throw new Error(`${c.name}: ${tower}.width ${t.width} is not divisible by heads ${t.heads}`);
    }
    if (t.width / t.heads > 128) {
      throw new Error(`${c.name}: ${tower} head width ${t.width / t.heads} exceeds 128`);
    }
  }
  pos(c.vision.imageSize, "vision.imageSize");
  pos(c.vision.patchSize, "vision.patchSize");
  if (c.vision.imageSize % c.vision.patchSize !== 0) {
    throw new Error(
      `${c.name}: image size ${c.vision.imageSize} is not a multiple of patch ${c.vision.patchSize}`,
    );
  }
  pos(c.text.contextLength, "text.contextLength");
  pos(c.text.vocabSize, "text.vocabSize");
  // Degenerate models: they build and run, but their outputs carry no information.
  if (c.text.contextLength < 3) {
    throw new Error(
      `${c.name}: text.contextLength (context_length) ${c.text.contextLength} leaves no room ` +
        `for a single token between the start and end tokens: every text would embed the same ` +
        `(CLIP uses 77)`,
    );
  }
  if (c.embedDim < 2) {
    throw new Error(
      `${c.name}: embedDim ${c.embedDim}: every L2-normalised embedding would be +1 or -1`,
    );
  }
  if (c.activation !== "gelu" && c.activation !== "quick_gelu") {
    throw new Error(`${c.name}: activation must be "gelu" or "quick_gelu", got ${c.activation}`);
  }
  if (!(c.layerNormEps > 0 && Number.isFinite(c.layerNormEps))) {
    throw new Error(`${c.name}: layerNormEps must be a finite number > 0`);
  }
  for (const [k, v] of [["mean", c.mean], ["std", c.std]] as const) {
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => Number.isFinite(x))) {
      throw new Error(`${c.name}: ${k} must be three numbers`);
    }
  }
  if (c.std.some((s) => s === 0)) throw new Error(`${c.name}: std must not contain 0`);
}

/** The config as this project's own JSON form (what `parseConfig` reads back). */
export function configToJson(c: ClipConfig): string {
  return JSON.stringify(c, null, 2);
}

/**
 * Read a JSON config file (any supported layout). For a Hugging Face `config.json`, a
 * `preprocessor_config.json` beside it supplies mean/std.
 * @throws Error naming the file when it is unreadable, not JSON or not a CLIP config.
 */
export async function loadConfigFile(path: string): Promise<ClipConfig> {
  let text: string;
  try {
    await checkInputFile(path); // a FIFO named *.json would block the read forever
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`cannot read CLIP config ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${path}: not valid JSON (${(e as Error).message})`);
  }
  let pre: unknown;
  if (isObject(json) && isObject(json.vision_config)) {
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    try {
      pre = JSON.parse(await Deno.readTextFile(`${dir}/preprocessor_config.json`));
    } catch {
      pre = undefined; // optional: the OpenAI defaults apply
    }
  }
  return parseConfig(json, path, pre);
}

/**
 * The config named by `arch`: a built-in name (see {@link BUILTIN_CONFIGS}) or the path of a
 * JSON config file (anything ending in `.json`, or an existing file).
 */
export async function resolveArch(arch: string): Promise<ClipConfig> {
  if (canonicalName(arch)) return builtinConfig(arch);
  let isFile = arch.endsWith(".json");
  if (!isFile) {
    try {
      isFile = (await Deno.stat(arch)).isFile;
    } catch {
      isFile = false;
    }
  }
  return isFile ? await loadConfigFile(arch) : builtinConfig(arch);
}

/**
 * The config file shipped next to a checkpoint, if any: `open_clip_config.json` or (Hugging
 * Face) `config.json` in the same directory. Returns null when neither exists.
 */
export async function findCheckpointConfig(weightsPath: string): Promise<ClipConfig | null> {
  const dir = weightsPath.includes("/") ? weightsPath.slice(0, weightsPath.lastIndexOf("/")) : ".";
  for (const name of ["open_clip_config.json", "config.json"]) {
    const p = `${dir}/${name}`;
    try {
      if ((await Deno.stat(p)).isFile) return await loadConfigFile(p);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return null;
}
