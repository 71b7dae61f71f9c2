/**
 * CONCH's configuration and its released checkpoint.
 *
 * Config: CONCH's own model-config format (`model_configs/conch_ViT-B-16.json`: `embed_dim`,
 * `vision_cfg`, `text_cfg`, ...), with the defaults its dataclasses give to fields the file
 * leaves out (the released file does not set the trunk's width, depth or heads: ViT-B), and
 * with its poolers' 8 heads (the code ignores `attn_pooler_heads`). The built-in
 * {@link CONCH_VIT_B16} is that file's content.
 *
 * Weights: `pytorch_model.bin` from the gated hub repository `MahmoodLab/CONCH` (a state dict,
 * optionally wrapped in `state_dict` / with DDP's `module.` prefix), or the same tensors as
 * safetensors. The trunk (`visual.trunk.*`) goes through the timm loader (a `pos_embed` of
 * another grid is resampled bilinearly without antialias, as CONCH's `resize_pos_embed`); every
 * other tensor is copied by name. Names and shapes are all checked before anything is read: the
 * first missing or misshapen tensor throws naming the file and both shapes. The captioning
 * tensors (`visual.attn_pool_caption.*`, `visual.ln_caption.*`, `text_decoder.*`) are skipped;
 * any other unused tensor throws unless `strict` is false.
 */
import { openTensorSource } from "./load.ts";
import { loraStateDict } from "../nn/lora.ts";
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from "./preprocess.ts";
import { type ConchConfig, ConchModel } from "./conch.ts";
import { type PlannedTensor, planTimmTensors, writePlanned } from "./timm_load.ts";

type Json = Record<string, unknown>;

/** The numbers of CONCH's `conch_ViT-B-16.json` (the released model). */
export const CONCH_VIT_B16: Readonly<Record<string, unknown>> = Object.freeze({
  embed_dim: 512,
  embed_dim_caption: 768,
  vision_cfg: {
    image_size: 448,
    patch_size: 16,
    attentional_pool_caption: true,
    attentional_pool_contrast: true,
    attn_pooler_heads: 8,
    n_queries_contrast: 1,
    n_queries_caption: 256,
    output_tokens: true,
  },
  text_cfg: {
    context_length: 128,
    vocab_size: 32007,
    width: 768,
    heads: 12,
    layers: 12,
    embed_cls: true,
    output_tokens: true,
  },
  multimodal_cfg: { context_length: 128, vocab_size: 32007, width: 768, heads: 12, layers: 12 },
  custom_text: true,
});

function obj(v: unknown, what: string, where: string): Json {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new Error(`${where}: "${what}" must be an object`);
  }
  return v as Json;
}

function int(j: Json, key: string, dflt: number, where: string, section: string): number {
  const v = j[key] ?? dflt;
  if (!(typeof v === "number" && Number.isInteger(v) && v > 0)) {
    throw new Error(
      `${where}: ${section}.${key} must be a positive integer, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/**
 * Resolve a CONCH model config (its own JSON format) with the defaults of CONCH's
 * `CoCaVisionCfg` / `CLIPTextCfg`. Throws naming the field for settings this engine does not
 * build (no attentional contrast pooling, several contrast queries, text without the class
 * token, layer scale in the text tower, a non-square image size).
 */
export function parseConchConfig(json: unknown, name: string): ConchConfig {
  const where = name;
  const root = obj(json, "config", where);
  const v = obj(root.vision_cfg ?? {}, "vision_cfg", where);
  const t = obj(root.text_cfg ?? {}, "text_cfg", where);
  if (v.attentional_pool_contrast !== true) {
    throw new Error(`${where}: vision_cfg.attentional_pool_contrast must be true (CONCH's pooler)`);
  }
  if ((v.n_queries_contrast ?? 1) !== 1) {
    throw new Error(
      `${where}: vision_cfg.n_queries_contrast must be 1, got ${v.n_queries_contrast}`,
    );
  }
  if (t.embed_cls !== true) {
    throw new Error(`${where}: text_cfg.embed_cls must be true (CONCH's class token)`);
  }
  if (t.ls_init_value !== undefined && t.ls_init_value !== null) {
    throw new Error(`${where}: text_cfg.ls_init_value (layer scale) is not supported`);
  }
  if (Array.isArray(v.image_size) && v.image_size[0] !== v.image_size[1]) {
    throw new Error(
      `${where}: vision_cfg.image_size ${JSON.stringify(v.image_size)} is not square`,
    );
  }
  const imageSize = Array.isArray(v.image_size) ? v.image_size[0] : v.image_size;
  const mlpRatio = v.mlp_ratio ?? 4;
  if (typeof mlpRatio !== "number" || !(mlpRatio > 0)) {
    throw new Error(`${where}: vision_cfg.mlp_ratio must be a positive number`);
  }
  const c: ConchConfig = {
    name,
    embedDim: int(root, "embed_dim", 512, where, "config"),
    vision: {
      imageSize: int({ image_size: imageSize }, "image_size", 224, where, "vision_cfg"),
      patchSize: int(v, "patch_size", 16, where, "vision_cfg"),
      width: int(v, "width", 768, where, "vision_cfg"),
      layers: int(v, "layers", 12, where, "vision_cfg"),
      heads: int(v, "num_heads", 12, where, "vision_cfg"),
      mlpRatio,
      // CONCH's vision builder never passes attn_pooler_heads to its VisualModel, whose default
      // (8) is what every CONCH model has, whatever the config says.
      poolerHeads: 8,
    },
    text: {
      contextLength: int(t, "context_length", 77, where, "text_cfg"),
      vocabSize: int(t, "vocab_size", 49408, where, "text_cfg"),
      width: int(t, "width", 512, where, "text_cfg"),
      heads: int(t, "heads", 8, where, "text_cfg"),
      layers: int(t, "layers", 12, where, "text_cfg"),
      padId: typeof t.pad_id === "number" ? t.pad_id : 0,
    },
    mean: [...OPENAI_CLIP_MEAN],
    std: [...OPENAI_CLIP_STD],
  };
  for (
    const [n, d, h] of [
      ["vision_cfg.width", c.vision.width, c.vision.heads],
      ["embed_dim", c.embedDim, c.vision.poolerHeads],
      ["text_cfg.width", c.text.width, c.text.heads],
    ] as const
  ) {
    if (d % h !== 0) throw new Error(`${where}: ${n} ${d} is not divisible by its ${h} heads`);
  }
  if (c.text.contextLength < 2) throw new Error(`${where}: text_cfg.context_length must be >= 2`);
  return c;
}

/** The released CONCH (ViT-B/16 at 448 px, 512-d embeddings, 128 text positions). */
export function conchBuiltin(): ConchConfig {
  return parseConchConfig(structuredClone(CONCH_VIT_B16), "conch_ViT-B-16");
}

/** A config from "conch_ViT-B-16" (built in) or a path to a CONCH-format JSON file. */
export async function resolveConchConfig(spec: string): Promise<ConchConfig> {
  if (spec === "conch_ViT-B-16" || spec === "conch") return conchBuiltin();
  let text: string;
  try {
    text = await Deno.readTextFile(spec);
  } catch (e) {
    throw new Error(`cannot read CONCH config ${spec}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${spec}: not valid JSON (${(e as Error).message})`);
  }
  return parseConchConfig(json, spec);
}

/** Tensors of the released state dict that this engine does not build (captioning). */
const CAPTIONING = /^(visual\.attn_pool_caption\.|visual\.ln_caption\.|text_decoder\.)/;

/** What {@link loadConchWeights} did. */
export interface ConchLoadReport {
  /** The file read. */
  path: string;
  /** Its format. */
  format: "safetensors" | "torch";
  /** Model tensors written. */
  tensors: number;
  /** Captioning tensors skipped. */
  skipped: number;
  /** Unused other tensors (only non-empty with `strict: false`). */
  unused: string[];
}

/**
 * Load a CONCH checkpoint into `model` in place (see the module comment); LoRA adapters are
 * left alone.
 */
export async function loadConchWeights(
  model: ConchModel,
  path: string,
  opts: { strict?: boolean } = {},
): Promise<ConchLoadReport> {
  const src = await openTensorSource(path);
  try {
    const where = src.path;
    if (![...src.shapes.keys()].some((n) => n.startsWith("visual.trunk."))) {
      throw new Error(
        `${where}: not a CONCH checkpoint (no visual.trunk.* tensors; first names: ${
          [...src.shapes.keys()].slice(0, 3).join(", ")
        })`,
      );
    }
    const trunk = planTimmTensors(model.visual.trunk, src, {
      prefix: "visual.trunk.",
      posEmbedResample: { mode: "bilinear", antialias: false },
    });
    const used = new Set(trunk.used);
    const adapters = new Set(loraStateDict(model).values());
    const own: PlannedTensor[] = [];
    for (const [name, target] of model.stateDict()) {
      if (name.startsWith("visual.trunk.") || adapters.has(target)) continue;
      const got = src.shapes.get(name);
      if (!got) {
        throw new Error(
          `${where}: the checkpoint has no tensor "${name}" [${target.shape}] of the ${model.config.name} model`,
        );
      }
      if (got.length !== target.shape.length || got.some((d, i) => d !== target.shape[i])) {
        throw new Error(
          `${where}: tensor "${name}" has shape [${got}] in the checkpoint but [${target.shape}] ` +
            `in the ${model.config.name} model: the checkpoint does not match the configuration`,
        );
      }
      used.add(name);
      own.push({ name, shape: target.shape, read: () => src.readFloat32(name) });
    }
    const names = [...src.shapes.keys()];
    const skipped = names.filter((n) => CAPTIONING.test(n)).length;
    const unused = names.filter((n) => !used.has(n) && !CAPTIONING.test(n));
    if ((opts.strict ?? true) && unused.length > 0) {
      throw new Error(
        `${where}: tensor "${unused[0]}" [${src.shapes.get(unused[0])}] of the checkpoint has no ` +
          `place in the ${model.config.name} model (${unused.length} unused in all)`,
      );
    }
    await writePlanned(model.visual.trunk, trunk.tensors);
    await writePlanned(model, own);
    return {
      path: where,
      format: src.format,
      tensors: trunk.tensors.length + own.length,
      skipped,
      unused,
    };
  } finally {
    src.close();
  }
}

/**
 * Build CONCH and load its weights: `config` is a {@link ConchConfig}, "conch_ViT-B-16" (the
 * default) or a CONCH-format JSON path. A partly built model is disposed when loading fails.
 */
export async function loadConch(
  weights: string,
  opts: { config?: string | ConchConfig; strict?: boolean } = {},
): Promise<ConchModel> {
  const config = typeof opts.config === "object"
    ? opts.config
    : await resolveConchConfig(opts.config ?? "conch_ViT-B-16");
  const model = new ConchModel(config);
  try {
    await loadConchWeights(model, weights, { strict: opts.strict });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}
