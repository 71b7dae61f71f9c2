/**
 * The CLIP-IT model of stage 2 (Karimian et al., DESIGN.md section 1):
 *
 * ```
 * t     = normalize(f_t(report))        [B, d_t]   text encoder with LoRA (training only)
 * v     = f_v(x)                        [B, D]     image backbone with LoRA
 * z_v   = fc(v)                         [B, C]     the stage-1 head, initialised from stage 1
 * t_hat = h_d(v)                        [B, d_t]   vision -> text space
 * z_t   = h_t(t_hat)                    [B, C]     Linear(d_t,d_t) -> LeakyReLU(0.1) -> Linear(d_t,C)
 * out   = g([z_v ; z_t])                [B, C]     late fusion, Linear(2C, C)
 * loss  = CE(out, y) + lambda * mean(1 - cos(t_hat, t))
 * ```
 *
 * The cross-entropy takes the fusion's logits (the authors' code applies a softmax first and
 * then a cross-entropy that softmaxes again; we do not). With the text branch off
 * (`--text-branch off`), `out = z_v` and `h_t`, `g` do not exist; the distillation term still
 * trains `h_d` and, through it, the backbone. At inference only `f_v` (LoRA merged), `fc`,
 * `h_d`, `h_t` and `g` run: a few small matrix products on top of the unimodal model.
 */
import { Linear, MLP } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { concat } from "../nn/ops/shape.ts";
import { crossEntropy, l2Normalize, leakyRelu } from "../nn/ops/nn.ts";
import { add, addScalar, mul, scale } from "../nn/ops/elementwise.ts";
import { mean, sum } from "../nn/ops/reduce.ts";
import { Rng, type Tensor } from "../nn/tensor.ts";
import { writeTensor } from "../nn/ops/inplace.ts";
import type { ImageBackbone, TextEncoder } from "../clip/backbone.ts";

/** Shape options of {@link ClipItModel}. */
export interface ClipItModelOptions {
  /** Number of classes C. */
  numClasses: number;
  /**
   * Width d_t of the text space (the text encoder's embedding size); 0 for a unimodal baseline
   * (then only `fc` exists: logits = fc(v)).
   */
  textDim: number;
  /** Build the text-branch head h_t and the fusion g (default true). */
  textBranch?: boolean;
  /** Seed of the heads' initialisation (PyTorch's Linear default, from a seeded generator). */
  seed?: number;
  /**
   * How the fusion g starts: "identity" (default) passes z_v through (`g = [I | 0]`, bias 0), so
   * training starts from the stage-1 model that `fc` is loaded from, and the text branch enters
   * as it learns; "random" is PyTorch's default Linear initialisation, as the authors' code has
   * it (the fused output then starts near chance whatever stage 1 learned).
   */
  fusionInit?: "identity" | "random";
}

/** What {@link ClipItModel.forward} returns. */
export interface ClipItOutput {
  /** The fused logits `out` [B, C] (or `z_v` with the text branch off). */
  logits: Tensor;
  /** The projected image embedding `t_hat` [B, d_t] (null for a baseline). */
  tHat: Tensor | null;
  /** The image features `v` [B, D]. */
  features: Tensor;
}

/**
 * The image backbone and the heads of CLIP-IT. The text encoder is not part of it: it is needed
 * for the training loss only, so an inference checkpoint holds just this module. Parameter
 * names: `backbone.*` (the backbone's own), `fc.*`, `h_d.*`, `h_t.layers.{0,1}.*`, `g.*`.
 */
export class ClipItModel extends Module {
  /** The image model f_v. */
  backbone: ImageBackbone;
  /** The unimodal head fc: D -> C. */
  fc: Linear;
  /** The projection h_d from image features to the text space: D -> d_t (null for a baseline). */
  h_d: Linear | null;
  /** The text-branch head h_t: d_t -> d_t -> LeakyReLU(0.1) -> C (null with the branch off). */
  h_t: MLP | null;
  /** The late fusion g: 2C -> C (null with the text branch off). */
  g: Linear | null;
  /** Number of classes. */
  readonly numClasses: number;
  /** Width of the text space. */
  readonly textDim: number;

  /** Heads around `backbone`, freshly initialised (load stage 1's head into `fc` after). */
  constructor(backbone: ImageBackbone, opts: ClipItModelOptions) {
    super();
    const { numClasses: C, textDim } = opts;
    if (!(Number.isInteger(C) && C >= 2)) {
      throw new RangeError(`ClipItModel: need at least 2 classes, got ${C}`);
    }
    if (!(Number.isInteger(textDim) && textDim >= 0)) {
      throw new RangeError(`ClipItModel: textDim must be an integer >= 0, got ${textDim}`);
    }
    this.backbone = backbone;
    this.numClasses = C;
    this.textDim = textDim;
    const rng = new Rng(opts.seed ?? 0);
    const D = backbone.featureDim;
    this.fc = new Linear(D, C, { rng });
    this.h_d = textDim > 0 ? new Linear(D, textDim, { rng }) : null;
    const branch = textDim > 0 && (opts.textBranch ?? true);
    this.h_t = branch
      ? new MLP([textDim, textDim, C], { rng, activation: (x) => leakyRelu(x, 0.1) })
      : null;
    this.g = branch ? new Linear(2 * C, C, { rng }) : null;
    if (this.g && (opts.fusionInit ?? "identity") === "identity") {
      // out = z_v at the start: CLIP-IT begins as the stage-1 model it is initialised from.
      const w = new Float32Array(C * 2 * C);
      for (let c = 0; c < C; c++) w[c * 2 * C + c] = 1;
      writeTensor(this.g.weight, w);
      writeTensor(this.g.bias!, new Float32Array(C));
    }
  }

  /** The heads' parameters (everything but the backbone's), by name. */
  headParameters(): [string, Tensor][] {
    return this.namedParameters().filter(([n]) => !n.startsWith("backbone."));
  }

  /** Normalised images [B, 3, S, S] -> logits, t_hat and the features. */
  forward(images: Tensor): ClipItOutput {
    const features = this.backbone.features(images);
    return { ...this.heads(features), features };
  }

  /** The heads alone, on image features [B, D]. */
  heads(features: Tensor): { logits: Tensor; tHat: Tensor | null } {
    const zV = this.fc.forward(features);
    if (!this.h_d) return { logits: zV, tHat: null };
    const tHat = this.h_d.forward(features);
    if (!this.h_t || !this.g) return { logits: zV, tHat };
    const zT = this.h_t.forward(tHat);
    return { logits: this.g.forward(concat([zV, zT], 1)), tHat };
  }
}

/** The terms of the CLIP-IT loss (scalars, shape []). */
export interface ClipItLoss {
  /** `ce + lambda * distill`. */
  loss: Tensor;
  /** Cross-entropy of the logits against the labels (mean over the batch). */
  ce: Tensor;
  /** `mean(1 - cos(t_hat, t))` over the batch. */
  distill: Tensor;
}

/** Row-wise cosine similarity of a [B, d] and b [B, d]: [B]. */
export function rowCosine(a: Tensor, b: Tensor): Tensor {
  if (a.rank !== 2 || b.rank !== 2 || a.shape[0] !== b.shape[0] || a.shape[1] !== b.shape[1]) {
    throw new RangeError(`rowCosine: need two [B, d] tensors of one shape, got ${a} and ${b}`);
  }
  return sum(mul(l2Normalize(a), l2Normalize(b)), 1);
}

/** The distillation term `mean(1 - cos(tHat, t))` over the batch (a scalar). */
export function distillLoss(tHat: Tensor, t: Tensor): Tensor {
  return addScalar(scale(mean(rowCosine(tHat, t)), -1), 1);
}

/**
 * The CLIP-IT loss `CE(logits, y) + lambda * mean(1 - cos(tHat, t))` on logits (no softmax
 * before the cross-entropy). `t` is the text embedding of each image's paired report; it is not
 * detached, so the distillation term trains the text encoder's LoRA too (as in the paper).
 */
export function clipItLoss(
  logits: Tensor,
  labels: Tensor,
  tHat: Tensor,
  t: Tensor,
  lambda: number,
): ClipItLoss {
  if (!(lambda >= 0) || !Number.isFinite(lambda)) {
    throw new RangeError(`clipItLoss: lambda must be a finite number >= 0, got ${lambda}`);
  }
  const ce = crossEntropy(logits, labels);
  const distill = distillLoss(tHat, t);
  // With lambda = 0 the distillation term is only reported: it must not put (zero) gradients
  // on the text encoder, whose Adam weight decay would then still move it.
  const loss = lambda === 0 ? ce : add(ce, scale(distill, lambda));
  return { loss, ce, distill };
}

/** The text embeddings t = normalize(f_t(ids)) of the paired reports, [B, d_t]. */
export function textTargets(encoder: TextEncoder, ids: Int32Array): Tensor {
  return l2Normalize(encoder.encode(ids));
}
