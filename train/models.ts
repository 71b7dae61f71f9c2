/**
 * Building a CLIP-IT model's image backbone from a description, and the inference checkpoint:
 * one safetensors file with the backbone's weights (LoRA merged into them), the heads
 * `fc`, `h_d`, `h_t`, `g`, and in its metadata everything needed to rebuild the model and
 * prepare its input (backbone kind and config, classes, image size, mean, std).
 *
 * `cli.ts predict` and `cli.ts eval` read only this file: no text encoder, no training state.
 */
import { type ClipConfig, parseConfig } from "../clip/config.ts";
import { ClipImageBackbone, type ImageBackbone } from "../clip/backbone.ts";
import type { TimmVitConfig } from "../clip/timm_config.ts";
import { TimmVisionTransformer } from "../clip/timm_vit.ts";
import { mergeLora } from "../nn/lora.ts";
import { loadModule, saveModule } from "../nn/checkpoint.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { Rng } from "../nn/rng.ts";
import { ClipItModel } from "./clipit.ts";

/** How to rebuild an image backbone: its kind and its full configuration. */
export type BackboneSpec =
  | { kind: "clip"; config: ClipConfig }
  | { kind: "timm"; config: TimmVitConfig };

/** The description of a backbone built by this project (throws for another kind). */
export function backboneSpec(b: ImageBackbone): BackboneSpec {
  if (b instanceof ClipImageBackbone) return { kind: "clip", config: b.config };
  if (b instanceof TimmVisionTransformer) return { kind: "timm", config: b.config };
  throw new Error(`backbone "${b.name}" cannot be described for an inference checkpoint`);
}

/** A randomly initialised backbone of `spec` (load its weights after). */
export function buildBackbone(spec: BackboneSpec, seed = 0): ImageBackbone {
  if (spec.kind === "clip") return ClipImageBackbone.create(spec.config, seed);
  if (spec.kind === "timm") return new TimmVisionTransformer(spec.config, { rng: new Rng(seed) });
  throw new Error(`unknown backbone kind "${(spec as { kind: string }).kind}"`);
}

/** What an inference checkpoint says about itself (its `clipit_model` metadata). */
export interface InferenceMeta {
  /** Always "clipit-model/1". */
  format: "clipit-model/1";
  /** The class names, in label order. */
  classes: string[];
  /** The backbone. */
  backbone: BackboneSpec;
  /** Width of the text space (h_d's output). */
  textDim: number;
  /** Whether the text-branch head and the fusion exist. */
  textBranch: boolean;
  /** What produced it: "clipit", "baseline" (fc only is used), "contrastive". */
  stage: string;
}

const META_KEY = "clipit_model";

/**
 * Write `model` as an inference checkpoint: its LoRA adapters are merged into the backbone's
 * weights first (the model is changed in place: call this on a model you are done training).
 */
export async function saveInferenceModel(
  model: ClipItModel,
  path: string,
  meta: Omit<InferenceMeta, "format" | "backbone" | "textDim" | "textBranch">,
): Promise<void> {
  mergeLora(model.backbone);
  const full: InferenceMeta = {
    format: "clipit-model/1",
    backbone: backboneSpec(model.backbone),
    textDim: model.textDim,
    textBranch: model.h_t !== null,
    ...meta,
  };
  await saveModule(model, path, { [META_KEY]: JSON.stringify(full) });
}

/** Read an inference checkpoint's metadata (classes, backbone spec, heads) only. */
export async function readInferenceMeta(path: string): Promise<InferenceMeta> {
  const f = await SafetensorsFile.open(path);
  let meta: InferenceMeta;
  try {
    const raw = f.metadata[META_KEY];
    if (!raw) {
      throw new Error(
        `${path}: not a CLIP-IT inference checkpoint (no "${META_KEY}" metadata; use the ` +
          `model.safetensors of a run folder)`,
      );
    }
    meta = JSON.parse(raw);
  } finally {
    f.close();
  }
  if (meta.format !== "clipit-model/1") {
    throw new Error(`${path}: unknown checkpoint format "${meta.format}"`);
  }
  if (meta.backbone.kind === "clip") {
    meta.backbone.config = parseConfig(meta.backbone.config, `${path} (backbone config)`);
  }
  return meta;
}

/** Read an inference checkpoint's metadata and rebuild its model with the saved weights. */
export async function loadInferenceModel(
  path: string,
): Promise<{ model: ClipItModel; meta: InferenceMeta }> {
  const meta = await readInferenceMeta(path);
  const backbone = buildBackbone(meta.backbone);
  const model = new ClipItModel(backbone, {
    numClasses: meta.classes.length,
    textDim: meta.textDim,
    textBranch: meta.textBranch,
  });
  try {
    await loadModule(model, path);
  } catch (e) {
    model.dispose();
    throw e;
  }
  return { model, meta };
}
