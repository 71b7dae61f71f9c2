/**
 * The CLIP model: an image tower (`visual`, OpenCLIP's VisionTransformer), a text tower (`text`,
 * OpenCLIP's TextTransformer) and `logit_scale`.
 *
 * State-dict names are OpenCLIP's, with the text tower under `text.` (the layout of OpenCLIP's
 * CustomTextCLIP): `visual.conv1.weight`, `visual.transformer.resblocks.0.attn.in_proj_weight`,
 * `text.token_embedding.weight`, `text.text_projection`, `logit_scale`, ... `clip/load.ts` maps
 * plain OpenCLIP and Hugging Face checkpoints onto these names.
 *
 * The model knows nothing about files or images: it takes normalised image tensors and token ids.
 */
import { Module } from "../nn/module.ts";
import { exp } from "../nn/ops/elementwise.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { l2Normalize } from "../nn/ops/nn.ts";
import { mul } from "../nn/ops/elementwise.ts";
import { Rng, type Tensor, tensor } from "../nn/tensor.ts";
import { eotPositions } from "./tokenizer.ts";
import { type ClipConfig, validateConfig } from "./config.ts";
import { checkClipConfigFits } from "./config_check.ts";
import { gpu } from "../kernels/device.ts";
import type { LoraHost, LoraSite } from "../nn/lora.ts";
import { TextTransformer } from "./text.ts";
import { VisionTransformer } from "./vision.ts";

/** Options for {@link ClipModel}. */
export interface ClipModelOptions {
  /** Seed of the random initialisation (default 0). */
  seed?: number;
}

/** CLIP: two towers and a learned temperature (see the module comment). */
export class ClipModel extends Module implements LoraHost {
  /** The model's configuration (a copy of the constructor's). */
  readonly config: ClipConfig;
  /** The image tower, parameters `visual.*`. */
  visual: VisionTransformer;
  /** The text tower, parameters `text.*`. */
  text: TextTransformer;
  /** log of the logit scale (a scalar), initialised to log(1 / 0.07) as in CLIP. */
  logit_scale: Tensor;

  /**
   * A randomly initialised model of `config`, validated first and checked against the adapter's
   * largest buffer and the host's memory ({@link checkClipConfigFits}) before anything is
   * allocated. Needs `init()`.
   */
  constructor(config: ClipConfig, opts: ClipModelOptions = {}) {
    super();
    validateConfig(config);
    // Allocation limits only: a tensor above the binding limit can exist, it just cannot run
    // (callers that know which tower runs check that: cli/embed.ts).
    checkClipConfigFits(config, { maxBufferSize: gpu().adapter.limits.maxBufferSize });
    this.config = structuredClone(config);
    const rng = new Rng(opts.seed ?? 0);
    const eps = config.layerNormEps;
    this.visual = new VisionTransformer(config.vision, config.embedDim, config.activation, {
      rng,
      eps,
    });
    this.text = new TextTransformer(config.text, config.embedDim, config.activation, { rng, eps });
    this.logit_scale = this.param("logit_scale", tensor([Math.log(1 / 0.07)], []));
  }

  /** Normalised images [B, 3, S, S] -> image features [B, embedDim] (not normalised). */
  encodeImage(images: Tensor): Tensor {
    return this.visual.forward(images);
  }

  /**
   * Token ids (CPU, row-major [M, contextLength], e.g. from `ClipTokenizer.tokenize`) -> text
   * features [M, embedDim] (not normalised). Rows are pooled at their end-of-text token: the
   * first position of the row's largest id (CLIP's `argmax`) unless `eot` gives the positions.
   * Columns after the batch's last end-of-text position are not computed (causal attention
   * makes them irrelevant). Throws a RangeError when `ids` does not fill [M, contextLength].
   */
  encodeText(ids: Int32Array, eot?: Int32Array): Tensor {
    const ctx = this.config.text.contextLength;
    if (ids.length === 0 || ids.length % ctx !== 0) {
      throw new RangeError(
        `encodeText: ${ids.length} ids do not fill rows of the context length ${ctx}`,
      );
    }
    const M = ids.length / ctx;
    const pos = eot ?? eotPositions(ids, ctx);
    let T = 1;
    for (const p of pos) T = Math.max(T, p + 1);
    const cut = new Int32Array(M * T);
    for (let m = 0; m < M; m++) cut.set(ids.subarray(m * ctx, m * ctx + T), m * T);
    return this.text.forward(tensor(cut, [M, T]), pos);
  }

  /** L2-normalised image embeddings [B, embedDim]. */
  embedImages(images: Tensor): Tensor {
    return l2Normalize(this.encodeImage(images));
  }

  /** L2-normalised text embeddings [M, embedDim] (see {@link encodeText}). */
  embedTexts(ids: Int32Array, eot?: Int32Array): Tensor {
    return l2Normalize(this.encodeText(ids, eot));
  }

  /**
   * CLIP's logits [N, M] = exp(logit_scale) * imageEmbeds [N, d] @ textEmbeds [M, d]^T, for
   * embeddings that are already normalised.
   */
  logits(imageEmbeds: Tensor, textEmbeds: Tensor): Tensor {
    return mul(matmul(imageEmbeds, textEmbeds, { transposeB: true }), exp(this.logit_scale));
  }

  /** Every place a LoRA adapter can go: `visual.*` sites, then `text.*` sites. */
  loraSites(): LoraSite[] {
    return [...this.visual.loraSites("visual"), ...this.text.loraSites("text")];
  }
}
