/**
 * CLIP's image tower in OpenCLIP's layout (`VisionTransformer`), and the residual-block stack
 * (`Transformer`) that the text tower shares.
 *
 * image [B, 3, S, S] -> patch embedding (a stride-p conv without bias, `conv1`) -> [B, g*g, w]
 * -> prepend the class token (`class_embedding`) -> + `positional_embedding` -> `ln_pre` ->
 * pre-norm residual blocks -> `ln_post` on the class token -> `@ proj` -> [B, embedDim].
 *
 * Parameter names are OpenCLIP's (`conv1.weight`, `class_embedding`, `positional_embedding`,
 * `ln_pre.*`, `transformer.resblocks.N.*`, `ln_post.*`, `proj`), so an OpenCLIP state dict loads
 * by name. LoRA sites: the patch embedding, every Linear of every block (packed in-projection
 * included) and the projection.
 */
import { isGradEnabled } from "../nn/autograd.ts";
import { type LayerAdapter, LayerNorm, type Linear, TransformerBlock } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { patchEmbed, patchify } from "../nn/ops/conv.ts";
import { add } from "../nn/ops/elementwise.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { broadcastTo, concat, reshape, slice } from "../nn/ops/shape.ts";
import { rand, randn, Rng, type Tensor, tidy } from "../nn/tensor.ts";
import type { ClipActivation, VisionConfig } from "./config.ts";
import type { LoraSite } from "../nn/lora.ts";

/** The layer-library name of an activation. */
function layerActivation(a: ClipActivation): "gelu" | "quickGelu" {
  return a === "quick_gelu" ? "quickGelu" : "gelu";
}

/** A LoRA site over a Linear layer (weight [out, in]). */
export function linearSite(name: string, lin: Linear): LoraSite {
  return {
    name,
    kind: "linear",
    layout: "out-in",
    inFeatures: lin.inFeatures,
    outFeatures: lin.outFeatures,
    weight: lin.weight,
    getAdapter: () => lin.adapter,
    setAdapter: (a) => lin.adapter = a,
  };
}

/** Options of the towers' constructors. */
export interface TowerOptions {
  /** Shared generator for the random initialisation (default: seeded with 0). */
  rng?: Rng;
  /** LayerNorm epsilon (default 1e-5). */
  eps?: number;
}

/**
 * OpenCLIP's `Transformer`: `resblocks.0 ... resblocks.{layers-1}`, each a pre-norm
 * {@link TransformerBlock} (`ln_1`, `attn` with packed `in_proj_weight`, `ln_2`, `mlp.c_fc`,
 * `mlp.c_proj`). x [B, T, width] -> [B, T, width].
 */
export class Transformer extends Module {
  /** The blocks in order, parameters `resblocks.N.*`. */
  resblocks: TransformerBlock[];

  /**
   * `layers` blocks of width `width` with `heads` heads and MLP hidden size `mlpWidth`; the
   * activation is the checkpoint's (`quick_gelu` for OpenAI's models).
   */
  constructor(
    width: number,
    layers: number,
    heads: number,
    mlpWidth: number,
    activation: ClipActivation,
    opts: TowerOptions = {},
  ) {
    super();
    const rng = opts.rng ?? new Rng(0);
    this.resblocks = Array.from(
      { length: layers },
      () =>
        new TransformerBlock(width, heads, {
          activation: layerActivation(activation),
          mlpRatio: mlpWidth / width,
          eps: opts.eps,
          rng,
        }),
    );
  }

  /**
   * Run the blocks (causal masking for the text tower). Without gradients each block's
   * intermediates are freed as soon as the block is done, so inference memory stays at about
   * one block's worth; `x` itself is never disposed.
   */
  forward(x: Tensor, causal = false): Tensor {
    let h = x;
    for (const blk of this.resblocks) {
      const inference = !isGradEnabled() ||
        (!h.requiresGrad && blk.trainableParameters().length === 0);
      if (!inference) {
        h = blk.forward(h, { causal });
        continue;
      }
      const prev = h;
      h = tidy(() => blk.forward(prev, { causal }));
      if (prev !== x) prev.dispose();
    }
    return h;
  }

  /** LoRA sites of every block, named `<prefix>.resblocks.N.{attn.in_proj,attn.out_proj,...}`. */
  loraSites(prefix: string): LoraSite[] {
    return this.resblocks.flatMap((b, i) => {
      const p = `${prefix}.resblocks.${i}`;
      const attn = b.attn;
      const inProj: LoraSite = {
        name: `${p}.attn.in_proj`,
        kind: "linear",
        layout: "out-in",
        inFeatures: attn.embedDim,
        outFeatures: 3 * attn.embedDim,
        weight: attn.inProjWeight,
        getAdapter: () => attn.inProjAdapter,
        setAdapter: (a) => attn.inProjAdapter = a,
      };
      return [
        inProj,
        linearSite(`${p}.attn.out_proj`, attn.outProj),
        linearSite(`${p}.mlp.c_fc`, b.mlp.fc),
        linearSite(`${p}.mlp.c_proj`, b.mlp.proj),
      ];
    });
  }
}

/**
 * The patch embedding: a Conv2d(3, width, kernel = stride = p, bias = False), `weight`
 * [width, 3, p, p]. images [B, 3, H, W] -> tokens [B, (H/p)*(W/p), width]. A LoRA adapter sees
 * the flattened patches [B, n, 3*p*p] (PEFT's conv LoRA: A is a p x p conv to r channels, B a
 * 1x1 conv, i.e. the same low-rank product over the patch features).
 */
export class PatchEmbedding extends Module {
  /** Patch side p in pixels (the conv's kernel size and stride). */
  readonly patchSize: number;
  /** Output channels: the token width. */
  readonly width: number;
  /** Parameter `weight`, the conv kernel [width, 3, p, p] (no bias). */
  weight: Tensor;
  /** Optional LoRA adapter on the patch features. */
  adapter: LayerAdapter | null = null;

  /** A patch embedding to `width` channels, initialised like PyTorch's Conv2d from `rng`. */
  constructor(width: number, patchSize: number, rng: Rng) {
    super();
    this.patchSize = patchSize;
    this.width = width;
    // PyTorch's Conv2d default: Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    const fanIn = 3 * patchSize * patchSize;
    const bound = 1 / Math.sqrt(fanIn);
    this.weight = this.param(
      "weight",
      rand([width, 3, patchSize, patchSize], { rng, low: -bound, high: bound }),
    );
  }

  /** images [B, 3, H, W] -> [B, n, width]. */
  forward(x: Tensor): Tensor {
    const p = this.patchSize;
    if (!this.adapter) return patchEmbed(x, this.weight, null, p);
    const patches = patchify(x, p);
    const w2 = reshape(this.weight, [this.width, 3 * p * p]);
    return this.adapter.adapt(patches, matmul(patches, w2, { transposeB: true }));
  }
}

/** OpenCLIP's `VisionTransformer` (see the module comment). */
export class VisionTransformer extends Module {
  /** The tower's shape (a copy of the constructor's). */
  readonly config: VisionConfig;
  /** Size of the output features (the shared embedding size). */
  readonly outputDim: number;
  /** Child `conv1`: the patch embedding, [B, 3, S, S] -> [B, g*g, width] with g = S / patch. */
  conv1: PatchEmbedding;
  /** Parameter `class_embedding` [width]: the class token prepended to the patch tokens. */
  class_embedding: Tensor;
  /** Parameter `positional_embedding` [g*g + 1, width], added to the class and patch tokens. */
  positional_embedding: Tensor;
  /** Child `ln_pre`: LayerNorm on the token sequence before the blocks. */
  ln_pre: LayerNorm;
  /** Child `transformer`: the residual blocks (not causal). */
  transformer: Transformer;
  /** Child `ln_post`: LayerNorm on the class token after the blocks. */
  ln_post: LayerNorm;
  /** Parameter `proj` [width, outputDim]: pooled features -> embedding (`x @ proj`). */
  proj: Tensor;
  /** Optional LoRA adapter on the projection (`x @ proj`). */
  projAdapter: LayerAdapter | null = null;

  /**
   * A randomly initialised tower (OpenCLIP's initialisation; load a checkpoint for real weights)
   * producing `outputDim` features, with the given MLP activation.
   */
  constructor(
    config: VisionConfig,
    outputDim: number,
    activation: ClipActivation,
    opts: TowerOptions = {},
  ) {
    super();
    const rng = opts.rng ?? new Rng(0);
    const { width, patchSize, imageSize } = config;
    this.config = { ...config };
    this.outputDim = outputDim;
    const grid = imageSize / patchSize;
    // OpenCLIP's initialisation of the embeddings and the projection: N(0, width^-1/2).
    const scale = width ** -0.5;
    this.conv1 = new PatchEmbedding(width, patchSize, rng);
    this.class_embedding = this.param("class_embedding", randn([width], { rng, std: scale }));
    this.positional_embedding = this.param(
      "positional_embedding",
      randn([grid * grid + 1, width], { rng, std: scale }),
    );
    this.ln_pre = new LayerNorm(width, { eps: opts.eps });
    this.transformer = new Transformer(
      width,
      config.layers,
      config.heads,
      config.mlpWidth,
      activation,
      { ...opts, rng },
    );
    this.ln_post = new LayerNorm(width, { eps: opts.eps });
    this.proj = this.param("proj", randn([width, outputDim], { rng, std: scale }));
  }

  /**
   * images [B, 3, S, S] (normalised, S = the config's image size) -> features [B, outputDim]
   * (not normalised). Throws a RangeError naming the expected shape.
   */
  forward(images: Tensor): Tensor {
    const { imageSize: S, width: w } = this.config;
    if (
      images.rank !== 4 || images.shape[1] !== 3 || images.shape[2] !== S ||
      images.shape[3] !== S
    ) {
      throw new RangeError(`VisionTransformer: images must be [B, 3, ${S}, ${S}], got ${images}`);
    }
    const B = images.shape[0];
    const tokens = this.conv1.forward(images); // [B, g*g, w]
    const cls = broadcastTo(reshape(this.class_embedding, [1, 1, w]), [B, 1, w]);
    const seq = add(concat([cls, tokens], 1), this.positional_embedding);
    const h = this.transformer.forward(this.ln_pre.forward(seq));
    const pooled = this.ln_post.forward(reshape(slice(h, 1, 0, 1), [B, w]));
    const y = matmul(pooled, this.proj);
    return this.projAdapter ? this.projAdapter.adapt(pooled, y) : y;
  }

  /** LoRA sites, named under `prefix` (OpenCLIP: "visual"). */
  loraSites(prefix = "visual"): LoraSite[] {
    const { width, patchSize } = this.config;
    const conv: LoraSite = {
      name: `${prefix}.conv1`,
      kind: "linear",
      layout: "out-in",
      inFeatures: 3 * patchSize * patchSize,
      outFeatures: width,
      weight: this.conv1.weight,
      getAdapter: () => this.conv1.adapter,
      setAdapter: (a) => this.conv1.adapter = a,
    };
    const proj: LoraSite = {
      name: `${prefix}.proj`,
      kind: "linear",
      layout: "in-out",
      inFeatures: width,
      outFeatures: this.outputDim,
      weight: this.proj,
      getAdapter: () => this.projAdapter,
      setAdapter: (a) => this.projAdapter = a,
    };
    return [conv, ...this.transformer.loraSites(`${prefix}.transformer`), proj];
  }
}
