/**
 * timm's Vision Transformer (`timm.models.vision_transformer.VisionTransformer`) with timm's
 * parameter names, so a timm state dict (UNI, DINOv2, kaiko.ai, ImageNet ViTs) loads by name:
 *
 * image [B, 3, H, W] -> `patch_embed.proj` (stride-p conv, bias unless pre_norm) -> [B, n, D]
 * -> prefix tokens `cls_token` [1, 1, D] and `reg_token` [1, R, D] -> + `pos_embed`
 * (no_embed_class: patches only, added before the prefix is joined; else prefix + patches, added
 * after) -> `norm_pre` (pre_norm) -> blocks -> `norm` -> pool (class token, or mean / max over the
 * patch tokens) -> `fc_norm` (avg-like pools) -> features [B, D] (timm's "pre-logits");
 * `head` (a Linear, when num_classes > 0) gives logits.
 *
 * Block N: `x += ls1(attn(norm1(x)))`, `x += ls2(mlp(norm2(x)))` with `blocks.N.attn.qkv` (packed
 * q, k, v), `blocks.N.attn.proj`, `blocks.N.mlp.fc1` / `fc2` (exact GELU), `blocks.N.ls1.gamma` /
 * `ls2.gamma` (layer scale, only with init_values). LayerNorm eps 1e-6 (timm's).
 *
 * Dynamic image size: with `dynamicImgSize` an input whose patch grid differs from the one the
 * position embedding was made for gets the embedding resampled as timm's
 * `resample_abs_pos_embed` does (bicubic, antialias, prefix rows kept). The resampling is two
 * constant matrices (clip/interpolate.ts) applied with matmul, so it is differentiable and exact.
 *
 * LoRA sites: `patch_embed.proj`, and per block `attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`.
 */
import { isGradEnabled } from "../nn/autograd.ts";
import { type LayerAdapter, LayerNorm, Linear } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { attention } from "../nn/ops/attention.ts";
import { patchEmbed, patchify } from "../nn/ops/conv.ts";
import { add, mul, scale } from "../nn/ops/elementwise.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { gelu, quickGelu } from "../nn/ops/nn.ts";
import { max, mean } from "../nn/ops/reduce.ts";
import { broadcastTo, concat, permute, reshape, slice } from "../nn/ops/shape.ts";
import { full, keep, rand, randn, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import type { ImageBackbone } from "./backbone.ts";
import { interpolationMatrix } from "./interpolate.ts";
import type { LoraSite } from "../nn/lora.ts";
import type { TimmVitConfig } from "./timm_config.ts";
import { validateTimmConfig } from "./timm_config.ts";
import { linearSite } from "./vision.ts";

/** timm's `PatchEmbed.proj`: Conv2d(3, D, p, stride p), `weight` [D, 3, p, p], `bias` [D]. */
export class PatchProjection extends Module {
  /** Patch side p. */
  readonly patchSize: number;
  /** Output channels D. */
  readonly width: number;
  /** Parameter `weight` [D, 3, p, p]. */
  weight: Tensor;
  /** Parameter `bias` [D]; null without bias (pre_norm models). */
  bias: Tensor | null;
  /** Optional LoRA adapter on the flattened patches [B, n, 3 p p]. */
  adapter: LayerAdapter | null = null;

  /** A projection to `width` channels, initialised like PyTorch's Conv2d from `rng`. */
  constructor(width: number, patchSize: number, bias: boolean, rng: Rng) {
    super();
    this.patchSize = patchSize;
    this.width = width;
    const bound = 1 / Math.sqrt(3 * patchSize * patchSize);
    const init = (shape: number[]) => rand(shape, { rng, low: -bound, high: bound });
    this.weight = this.param("weight", init([width, 3, patchSize, patchSize]));
    this.bias = bias ? this.param("bias", init([width])) : null;
  }

  /** images [B, 3, H, W] -> [B, floor(H/p) * floor(W/p), D]. */
  forward(x: Tensor): Tensor {
    const p = this.patchSize;
    if (!this.adapter) return patchEmbed(x, this.weight, this.bias, p);
    const patches = patchify(x, p);
    const w2 = reshape(this.weight, [this.width, 3 * p * p]);
    const y = matmul(patches, w2, { transposeB: true, bias: this.bias });
    return this.adapter.adapt(patches, y);
  }
}

/** timm's `PatchEmbed` (only its `proj`; flattening is implicit). */
export class TimmPatchEmbed extends Module {
  /** Child `proj`. */
  proj: PatchProjection;

  /** See {@link PatchProjection}. */
  constructor(width: number, patchSize: number, bias: boolean, rng: Rng) {
    super();
    this.proj = new PatchProjection(width, patchSize, bias, rng);
  }

  /** images [B, 3, H, W] -> tokens [B, n, D]. */
  forward(x: Tensor): Tensor {
    return this.proj.forward(x);
  }
}

/** timm's `LayerScale`: `x * gamma`, parameter `gamma` [D]. */
export class LayerScale extends Module {
  /** Parameter `gamma` [D]. */
  gamma: Tensor;

  /** A scale of `dim` values, all `init`. */
  constructor(dim: number, init: number) {
    super();
    this.gamma = this.param("gamma", full([dim], init));
  }

  /** x [..., D] -> x * gamma. */
  forward(x: Tensor): Tensor {
    return mul(x, this.gamma);
  }
}

/** timm's `Attention`: packed `qkv` Linear (D -> 3D) and `proj` Linear, softmax(q k^T / sqrt d) v. */
export class TimmAttention extends Module {
  /** Heads H. */
  readonly numHeads: number;
  /** Child `qkv`: D -> 3D, q, k and v stacked in that order. */
  qkv: Linear;
  /** Child `proj`: D -> D. */
  proj: Linear;

  /** Attention of width `dim` with `numHeads` heads. */
  constructor(dim: number, numHeads: number, qkvBias: boolean, projBias: boolean, rng: Rng) {
    super();
    this.numHeads = numHeads;
    this.qkv = new Linear(dim, 3 * dim, { bias: qkvBias, rng });
    this.proj = new Linear(dim, dim, { bias: projBias, rng });
  }

  /** x [B, T, D] -> [B, T, D]. */
  forward(x: Tensor): Tensor {
    const [B, T, D] = x.shape;
    const H = this.numHeads, hd = D / H;
    // timm: qkv.reshape(B, T, 3, H, hd).permute(2, 0, 3, 1, 4) -> q, k, v [B, H, T, hd].
    const heads = permute(reshape(this.qkv.forward(x), [B, T, 3, H, hd]), [2, 0, 3, 1, 4]);
    const [q, k, v] = [0, 1, 2].map((i) => reshape(slice(heads, 0, i, 1), [B, H, T, hd]));
    const o = attention(q, k, v);
    return this.proj.forward(reshape(permute(o, [0, 2, 1, 3]), [B, T, D]));
  }
}

/** timm's `Mlp`: `fc1` (D -> hidden), activation, `fc2` (hidden -> D). */
export class TimmMlp extends Module {
  /** Child `fc1`. */
  fc1: Linear;
  /** Child `fc2`. */
  fc2: Linear;
  /** The activation between them. */
  readonly _act: (x: Tensor) => Tensor;

  /** An MLP D -> hidden -> D. */
  constructor(dim: number, hidden: number, bias: boolean, act: "gelu" | "quick_gelu", rng: Rng) {
    super();
    this.fc1 = new Linear(dim, hidden, { bias, rng });
    this.fc2 = new Linear(hidden, dim, { bias, rng });
    this._act = act === "gelu" ? (x) => gelu(x) : (x) => quickGelu(x);
  }

  /** x [..., D] -> [..., D]. */
  forward(x: Tensor): Tensor {
    return this.fc2.forward(this._act(this.fc1.forward(x)));
  }
}

/** timm's pre-norm `Block` with optional layer scale (see the module comment). */
export class TimmBlock extends Module {
  /** Child `norm1`. */
  norm1: LayerNorm;
  /** Child `attn`. */
  attn: TimmAttention;
  /** Child `ls1` (layer scale after attention), or null. */
  ls1: LayerScale | null;
  /** Child `norm2`. */
  norm2: LayerNorm;
  /** Child `mlp`. */
  mlp: TimmMlp;
  /** Child `ls2` (layer scale after the MLP), or null. */
  ls2: LayerScale | null;

  /** A block for config `c`. */
  constructor(c: TimmVitConfig, rng: Rng) {
    super();
    const D = c.embedDim, eps = c.eps;
    this.norm1 = new LayerNorm(D, { eps });
    this.attn = new TimmAttention(D, c.numHeads, c.qkvBias, c.projBias, rng);
    this.ls1 = c.initValues !== null ? new LayerScale(D, c.initValues) : null;
    this.norm2 = new LayerNorm(D, { eps });
    this.mlp = new TimmMlp(D, Math.trunc(D * c.mlpRatio), c.projBias, c.activation, rng);
    this.ls2 = c.initValues !== null ? new LayerScale(D, c.initValues) : null;
  }

  /** x [B, T, D] -> [B, T, D]. */
  forward(x: Tensor): Tensor {
    let a = this.attn.forward(this.norm1.forward(x));
    if (this.ls1) a = this.ls1.forward(a);
    const h = add(x, a);
    let m = this.mlp.forward(this.norm2.forward(h));
    if (this.ls2) m = this.ls2.forward(m);
    return add(h, m);
  }
}

/** Options of {@link TimmVisionTransformer}. */
export interface TimmVitOptions {
  /** Generator for the random initialisation (default: seeded with 0). */
  rng?: Rng;
}

/**
 * timm's VisionTransformer as an {@link ImageBackbone}: `features` are timm's pre-logits
 * (`forward_head(forward_features(x), pre_logits=True)`). See the module comment.
 */
export class TimmVisionTransformer extends Module implements ImageBackbone {
  /** The configuration (a copy). */
  readonly config: TimmVitConfig;
  /** The config's name. */
  readonly name: string;
  /** D. */
  readonly featureDim: number;
  /** The side the position embedding was made for. */
  readonly imageSize: number;
  /** Preprocessing mean. */
  readonly mean: readonly number[];
  /** Preprocessing std. */
  readonly std: readonly number[];
  /** Preprocessing interpolation. */
  readonly interpolation: "bicubic" | "bilinear";
  /** Class token plus register tokens. */
  readonly numPrefixTokens: number;
  /** Parameter `cls_token` [1, 1, D], or null without a class token. */
  cls_token: Tensor | null;
  /** Parameter `reg_token` [1, R, D], or null without registers. */
  reg_token: Tensor | null;
  /** Parameter `pos_embed` [1, (no_embed_class ? 0 : prefix) + g*g, D], or null. */
  pos_embed: Tensor | null;
  /** Child `patch_embed`. */
  patch_embed: TimmPatchEmbed;
  /** Child `norm_pre` (pre_norm), or null. */
  norm_pre: LayerNorm | null;
  /** Children `blocks.N`. */
  blocks: TimmBlock[];
  /** Child `norm` (before pooling), or null. */
  norm: LayerNorm | null;
  /** Child `fc_norm` (after pooling), or null. */
  fc_norm: LayerNorm | null;
  /** Child `head` (num_classes > 0), or null. */
  head: Linear | null;
  /** Resampling matrices by "from->to" grid side, kept across calls. */
  readonly _resample = new Map<string, Tensor>();

  /** A randomly initialised model for `config` (load weights with clip/timm_load.ts). */
  constructor(config: TimmVitConfig, opts: TimmVitOptions = {}) {
    super();
    validateTimmConfig(config);
    const c = { ...config };
    this.config = c;
    this.name = c.name;
    this.featureDim = c.embedDim;
    this.imageSize = c.imageSize;
    this.mean = [...c.mean];
    this.std = [...c.std];
    this.interpolation = c.interpolation;
    const rng = opts.rng ?? new Rng(0);
    const D = c.embedDim;
    this.numPrefixTokens = (c.classToken ? 1 : 0) + c.regTokens;
    const grid = Math.floor(c.imageSize / c.patchSize);
    this.patch_embed = new TimmPatchEmbed(D, c.patchSize, !c.preNorm, rng);
    this.cls_token = c.classToken
      ? this.param("cls_token", randn([1, 1, D], { rng, std: 1e-6 }))
      : null;
    this.reg_token = c.regTokens > 0
      ? this.param("reg_token", randn([1, c.regTokens, D], { rng, std: 1e-6 }))
      : null;
    const posLen = grid * grid + (c.noEmbedClass ? 0 : this.numPrefixTokens);
    this.pos_embed = c.posEmbed
      ? this.param("pos_embed", randn([1, posLen, D], { rng, std: 0.02 }))
      : null;
    this.norm_pre = c.preNorm ? new LayerNorm(D, { eps: c.eps }) : null;
    this.blocks = Array.from({ length: c.depth }, () => new TimmBlock(c, rng));
    const useFcNorm = c.fcNorm ?? (c.globalPool !== "token");
    this.norm = c.finalNorm && !useFcNorm ? new LayerNorm(D, { eps: c.eps }) : null;
    this.fc_norm = c.finalNorm && useFcNorm ? new LayerNorm(D, { eps: c.eps }) : null;
    this.head = c.numClasses > 0 ? new Linear(D, c.numClasses, { rng }) : null;
  }

  /** Side of the patch grid the position embedding holds. */
  get gridSize(): number {
    return Math.floor(this.config.imageSize / this.config.patchSize);
  }

  /** The [to, from] interpolation matrix (bicubic, antialias: timm's), cached on the GPU. */
  #matrix(from: number, to: number): Tensor {
    const key = `${from}->${to}`;
    let m = this._resample.get(key);
    if (!m) {
      const w = interpolationMatrix(from, to, "bicubic", true);
      m = keep(tensor(Float32Array.from(w), [to, from]));
      this._resample.set(key, m);
    }
    return m;
  }

  /**
   * The position embedding for a gh x gw patch grid: `pos_embed` itself at the trained grid,
   * otherwise its patch rows resampled (prefix rows kept), as timm's `_pos_embed`.
   */
  posEmbedFor(gh: number, gw: number): Tensor | null {
    const pos = this.pos_embed;
    if (!pos) return null;
    const g = this.gridSize;
    if (gh === g && gw === g) return pos;
    const D = this.config.embedDim;
    const prefix = this.config.noEmbedClass ? 0 : this.numPrefixTokens;
    const grid = reshape(slice(pos, 1, prefix, g * g), [g, g * D]);
    // Rows, then columns: [gh, g] @ [g, g*D] -> [gh, g, D]; [gw, g] @ [gh, g, D] -> [gh, gw, D].
    const rows = reshape(matmul(this.#matrix(g, gh), grid), [gh, g, D]);
    const both = reshape(matmul(this.#matrix(g, gw), rows), [1, gh * gw, D]);
    return prefix ? concat([slice(pos, 1, 0, prefix), both], 1) : both;
  }

  /**
   * images [B, 3, H, W] (normalised) -> all final tokens [B, prefix + n, D] after `norm`
   * (timm's `forward_features`). H = W = the config's image size unless `dynamicImgSize`.
   * Throws a RangeError naming the expected shape.
   */
  forwardFeatures(images: Tensor): Tensor {
    const c = this.config, p = c.patchSize, D = c.embedDim;
    const [B, C, H, W] = images.shape;
    const fixed = !c.dynamicImgSize;
    if (
      images.rank !== 4 || C !== 3 || H < p || W < p ||
      (fixed && (H !== c.imageSize || W !== c.imageSize))
    ) {
      const want = fixed
        ? `[B, 3, ${c.imageSize}, ${c.imageSize}]`
        : `[B, 3, H >= ${p}, W >= ${p}]`;
      throw new RangeError(`${this.name}: images must be ${want}, got ${images}`);
    }
    const gh = Math.floor(H / p), gw = Math.floor(W / p);
    let x = this.patch_embed.forward(images); // [B, gh*gw, D]
    const pos = this.posEmbedFor(gh, gw);
    const prefix: Tensor[] = [];
    if (this.cls_token) prefix.push(broadcastTo(this.cls_token, [B, 1, D]));
    if (this.reg_token) prefix.push(broadcastTo(this.reg_token, [B, c.regTokens, D]));
    if (c.noEmbedClass) {
      if (pos) x = add(x, pos);
      if (prefix.length) x = concat([...prefix, x], 1);
    } else {
      if (prefix.length) x = concat([...prefix, x], 1);
      if (pos) x = add(x, pos);
    }
    if (this.norm_pre) x = this.norm_pre.forward(x);
    x = this.#blocks(x);
    return this.norm ? this.norm.forward(x) : x;
  }

  /**
   * Run the blocks. Without gradients each block's intermediates are freed as soon as it is
   * done (inference memory about one block's worth); `x` itself is never disposed.
   */
  #blocks(x: Tensor): Tensor {
    let h = x;
    for (const blk of this.blocks) {
      const inference = !isGradEnabled() ||
        (!h.requiresGrad && blk.trainableParameters().length === 0);
      if (!inference) {
        h = blk.forward(h);
        continue;
      }
      const prev = h;
      h = tidy(() => blk.forward(prev));
      if (prev !== x) prev.dispose();
    }
    return h;
  }

  /** tokens [B, T, D] -> pooled and `fc_norm`-ed features [B, D] (timm's `forward_head` pre-logits). */
  forwardHead(tokens: Tensor): Tensor {
    const c = this.config;
    const [B, T, D] = tokens.shape;
    let y: Tensor;
    if (c.globalPool === "token") y = reshape(slice(tokens, 1, 0, 1), [B, D]);
    else {
      const skip = c.poolIncludePrefix ? 0 : this.numPrefixTokens;
      const t = skip ? slice(tokens, 1, skip, T - skip) : tokens;
      if (c.globalPool === "avg") y = mean(t, 1);
      else if (c.globalPool === "max") y = max(t, 1);
      else y = scale(add(max(t, 1), mean(t, 1)), 0.5);
    }
    return this.fc_norm ? this.fc_norm.forward(y) : y;
  }

  /** Normalised images -> features [B, D] (timm's pre-logits; not L2-normalised). */
  features(images: Tensor): Tensor {
    return this.forwardHead(this.forwardFeatures(images));
  }

  /** Normalised images -> class logits [B, num_classes] through `head`; throws without a head. */
  logits(images: Tensor): Tensor {
    if (!this.head) {
      throw new Error(`${this.name}: the model has no classifier head (num_classes 0)`);
    }
    return this.head.forward(this.features(images));
  }

  /** LoRA sites named after timm's modules, under `prefix` (e.g. "visual.trunk" in CONCH). */
  loraSites(prefix = ""): LoraSite[] {
    const p = prefix ? `${prefix}.` : "";
    const proj = this.patch_embed.proj;
    const patch: LoraSite = {
      name: `${p}patch_embed.proj`,
      kind: "linear",
      layout: "out-in",
      inFeatures: 3 * proj.patchSize * proj.patchSize,
      outFeatures: proj.width,
      weight: proj.weight,
      getAdapter: () => proj.adapter,
      setAdapter: (a) => proj.adapter = a,
    };
    return [
      patch,
      ...this.blocks.flatMap((b, i) => [
        linearSite(`${p}blocks.${i}.attn.qkv`, b.attn.qkv),
        linearSite(`${p}blocks.${i}.attn.proj`, b.attn.proj),
        linearSite(`${p}blocks.${i}.mlp.fc1`, b.mlp.fc1),
        linearSite(`${p}blocks.${i}.mlp.fc2`, b.mlp.fc2),
      ]),
    ];
  }

  /** Release the weights and the cached resampling matrices. */
  override dispose(): void {
    super.dispose();
    for (const m of this._resample.values()) m.dispose();
    this._resample.clear();
  }
}
