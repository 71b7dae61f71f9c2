/**
 * The two interfaces CLIP-IT trains through, and their CLIP implementations.
 *
 * - {@link ImageBackbone}: the image model `f_v` (a CLIP image tower here; timm ViTs such as UNI
 *   and DINOv2, and CONCH's trunk, implement the same interface). Stage 1 freezes it; stage 2
 *   adapts it with LoRA; inference runs only it (LoRA merged) and the small heads.
 * - {@link TextEncoder}: the text model `f_t` whose embedding of the paired report the image
 *   model is distilled towards (CLIP's text tower, CONCH's), with its {@link TextTokenizer}.
 *
 * Both are {@link LoraHost}s: they list the weights a LoRA adapter may go on, named like the
 * checkpoint's modules, so one `applyLora` serves every model.
 */
import { Module } from "../nn/module.ts";
import type { Tensor } from "../nn/tensor.ts";
import type { LoraHost, LoraSite } from "../nn/lora.ts";
import type { ClipModel } from "./model.ts";
import type { ClipConfig } from "./config.ts";
import { VisionTransformer } from "./vision.ts";
import { Rng } from "../nn/rng.ts";

/** An image feature extractor that CLIP-IT trains with LoRA. */
export interface ImageBackbone extends LoraHost {
  /** A label for messages and run configs (e.g. "ViT-B-16 (CLIP visual)", "UNI"). */
  readonly name: string;
  /** Size D of the features {@link features} returns. */
  readonly featureDim: number;
  /** Side S of the square input image in pixels. */
  readonly imageSize: number;
  /** Normalisation mean (R, G, B) of the input, after scaling pixels to [0, 1]. */
  readonly mean: readonly number[];
  /** Normalisation standard deviation (R, G, B). */
  readonly std: readonly number[];
  /** How images are resized to S before the centre crop. */
  readonly interpolation: "bicubic" | "bilinear";
  /** Normalised images [B, 3, S, S] -> features [B, D] (not normalised). */
  features(images: Tensor): Tensor;
}

/**
 * The input an image backbone expects, in the data loader's terms: the square side and the
 * normalisation (spread it into `DataLoader` options).
 */
export function backboneInput(
  b: ImageBackbone,
): { size: number; mean: readonly number[]; std: readonly number[] } {
  return { size: b.imageSize, mean: b.mean, std: b.std };
}

/** A text encoder whose embeddings CLIP-IT distils the image model towards. */
export interface TextEncoder extends LoraHost {
  /** A label for messages and run configs. */
  readonly name: string;
  /** Size d of the embeddings {@link encode} returns. */
  readonly embedDim: number;
  /** Tokens per text (start and end tokens included); longer texts are truncated. */
  readonly contextLength: number;
  /**
   * Token ids, row-major [M, contextLength] on the CPU (from a {@link TextTokenizer}) ->
   * embeddings [M, d] (not normalised).
   */
  encode(ids: Int32Array): Tensor;
}

/** Turns texts into the ids a {@link TextEncoder} reads. */
export interface TextTokenizer {
  /** Number of distinct ids (every id is below it). */
  readonly vocabSize: number;
  /** Row-major [texts.length, contextLength] ids, each row truncated like the reference. */
  tokenize(texts: string[], contextLength: number): Int32Array;
}

/**
 * A CLIP image tower as an {@link ImageBackbone}: features = `encode_image` (the projected
 * embedding, not normalised). It holds only the image tower, so an inference checkpoint of a
 * CLIP-IT model needs no text tower.
 */
export class ClipImageBackbone extends Module implements ImageBackbone {
  /** A label naming the CLIP configuration. */
  readonly name: string;
  /** The CLIP configuration the tower belongs to (its `vision` part and preprocessing). */
  readonly config: ClipConfig;
  /** The embedding size of the CLIP model. */
  readonly featureDim: number;
  /** The CLIP model's image size. */
  readonly imageSize: number;
  /** The CLIP model's normalisation mean. */
  readonly mean: readonly number[];
  /** The CLIP model's normalisation std. */
  readonly std: readonly number[];
  /** CLIP resizes with bicubic interpolation. */
  readonly interpolation = "bicubic" as const;
  /** The image tower, parameters `visual.*` (OpenCLIP's names). */
  visual: VisionTransformer;

  /** Wrap `visual` (shared, not copied), the image tower of a CLIP model of `config`. */
  constructor(visual: VisionTransformer, config: ClipConfig) {
    super();
    this.visual = visual;
    this.config = structuredClone(config);
    this.name = `${config.name} (CLIP image tower)`;
    this.featureDim = config.embedDim;
    this.imageSize = config.vision.imageSize;
    this.mean = config.mean;
    this.std = config.std;
  }

  /** The image tower of `clip` (shared with it). */
  static fromClip(clip: ClipModel): ClipImageBackbone {
    return new ClipImageBackbone(clip.visual, clip.config);
  }

  /** A randomly initialised image tower of `config` alone (load weights into it after). */
  static create(config: ClipConfig, seed = 0): ClipImageBackbone {
    const visual = new VisionTransformer(config.vision, config.embedDim, config.activation, {
      rng: new Rng(seed),
      eps: config.layerNormEps,
    });
    return new ClipImageBackbone(visual, config);
  }

  /** Normalised images [B, 3, S, S] -> CLIP image features [B, embedDim]. */
  features(images: Tensor): Tensor {
    return this.visual.forward(images);
  }

  /** The image tower's LoRA sites, named `visual.*`. */
  loraSites(): LoraSite[] {
    return this.visual.loraSites("visual");
  }
}

/** A CLIP model's text tower as a {@link TextEncoder}: embeddings = `encode_text`. */
export class ClipTextEncoder extends Module implements TextEncoder {
  /** A label naming the CLIP configuration. */
  readonly name: string;
  /** The embedding size of the CLIP model. */
  readonly embedDim: number;
  /** The CLIP model's context length. */
  readonly contextLength: number;
  /** The CLIP model whose tower this is. */
  readonly _clip: ClipModel;
  /** The text tower, parameters `text.*`. */
  text: ClipModel["text"];

  /** Wrap `clip`'s text tower (shared, not copied). */
  constructor(clip: ClipModel) {
    super();
    this._clip = clip;
    this.text = clip.text;
    this.name = `${clip.config.name} (CLIP text tower)`;
    this.embedDim = clip.config.embedDim;
    this.contextLength = clip.config.text.contextLength;
  }

  /** ids [M, contextLength] (CPU) -> CLIP text features [M, embedDim]. */
  encode(ids: Int32Array): Tensor {
    return this._clip.encodeText(ids);
  }

  /** The text tower's LoRA sites, named `text.*`. */
  loraSites(): LoraSite[] {
    return this.text.loraSites("text");
  }
}
