/**
 * Layers, with PyTorch's parameter names, shapes and default initialisation, so that PyTorch and
 * OpenCLIP state dicts load by name: Linear, LayerNorm, Embedding, MLP, MultiHeadAttention
 * (packed `in_proj_weight` like `torch.nn.MultiheadAttention`) and the pre-norm TransformerBlock
 * of OpenCLIP (`ln_1`, `attn`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`).
 *
 * Every forward is a few differentiable ops; backward comes from the autograd. Linear, Embedding
 * and the attention's packed input projection take an optional `adapter` (a module with
 * `adapt(x, y)`), through which LoRA adds its low-rank update without replacing the layer.
 *
 * Initialisation draws from a seeded CPU generator: `opts.rng` (shared by a model's layers), a
 * fresh `Rng(opts.seed)`, or else a process-wide generator reset by {@link manualSeed}.
 */
import { Module } from "./module.ts";
import { ones, rand, randn, Rng, type Tensor, zeros } from "./tensor.ts";
import { add, relu, sigmoid, tanh } from "./ops/elementwise.ts";
import { linear, type LinearActivation, matmul } from "./ops/matmul.ts";
import { permute, reshape, slice } from "./ops/shape.ts";
import { attention } from "./ops/attention.ts";
import { embedding } from "./ops/embedding.ts";
import { addLayerNorm, gelu, layerNorm, leakyRelu, quickGelu } from "./ops/nn.ts";

// ---- initialisation ---------------------------------------------------------------------------

let globalRng = new Rng(0);

/** Reset the generator that layers without `seed` or `rng` draw from (like torch.manual_seed). */
export function manualSeed(seed: number): void {
  globalRng = new Rng(seed);
}

/** Options every layer's constructor accepts for its initialisation. */
export interface LayerInitOptions {
  /** Seed a fresh generator for this layer. */
  seed?: number;
  /** Draw from this generator (pass one to all layers of a model for reproducible models). */
  rng?: Rng;
}

function rngOf(opts: LayerInitOptions): Rng {
  return opts.rng ?? (opts.seed !== undefined ? new Rng(opts.seed) : globalRng);
}

/** Uniform(-bound, bound) values of `shape`. */
function uniform(shape: number[], bound: number, rng: Rng): Tensor {
  return rand(shape, { rng, low: -bound, high: bound });
}

// ---- adapters ---------------------------------------------------------------------------------

/**
 * A module that modifies a layer's output, given the layer's input `x` and base output `y`
 * (LoRA returns `y + scale * B(A(x))`). Its parameters are named under the layer (`adapter.*`).
 */
export interface LayerAdapter extends Module {
  /** The layer's adapted output, shaped like `y`, from its input `x` and base output `y`. */
  adapt(x: Tensor, y: Tensor): Tensor;
}

// ---- activations ------------------------------------------------------------------------------

/** An activation by name, or any unary tensor function. */
export type Activation =
  | "relu"
  | "gelu"
  | "quickGelu"
  | "tanh"
  | "sigmoid"
  | "leakyRelu"
  | ((x: Tensor) => Tensor);

/** The function behind an {@link Activation} ("leakyRelu" has PyTorch's slope 0.01). */
export function activationFn(a: Activation): (x: Tensor) => Tensor {
  if (typeof a === "function") return a;
  const fns = { relu, gelu, quickGelu, tanh, sigmoid, leakyRelu };
  const f = fns[a];
  if (!f) throw new Error(`unknown activation "${a}" (use ${Object.keys(fns).join(", ")})`);
  return (x) => f(x);
}

// ---- layers -----------------------------------------------------------------------------------

/** Options for {@link Linear}. */
export interface LinearOptions extends LayerInitOptions {
  /** Add a learned bias (default true). */
  bias?: boolean;
  /** Start the bias at zero instead of uniform (torch.nn.MultiheadAttention's out_proj). */
  zeroBias?: boolean;
}

/**
 * y = x W^T + b, as torch.nn.Linear: `weight` [out, in], `bias` [out], both initialised
 * Uniform(-1/sqrt(in), 1/sqrt(in)) (PyTorch's Kaiming-uniform with a = sqrt(5)).
 * Input [..., in] -> output [..., out].
 */
export class Linear extends Module {
  /** Size of the input's last axis. */
  readonly inFeatures: number;
  /** Size of the output's last axis. */
  readonly outFeatures: number;
  /** Parameter `weight`, [out, in]. */
  weight: Tensor;
  /** Parameter `bias`, [out]; null when built with `bias: false`. */
  bias: Tensor | null;
  /** Optional output adapter (LoRA); null for a plain layer. */
  adapter: LayerAdapter | null = null;

  /** A layer mapping [..., inFeatures] to [..., outFeatures]; throws RangeError unless both > 0. */
  constructor(inFeatures: number, outFeatures: number, opts: LinearOptions = {}) {
    super();
    if (!(inFeatures > 0 && outFeatures > 0)) {
      throw new RangeError(`Linear: sizes must be positive, got ${inFeatures} -> ${outFeatures}`);
    }
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const rng = rngOf(opts);
    const bound = 1 / Math.sqrt(inFeatures);
    this.weight = this.param("weight", uniform([outFeatures, inFeatures], bound, rng));
    this.bias = null;
    if (opts.bias ?? true) {
      const b = opts.zeroBias ? zeros([outFeatures]) : uniform([outFeatures], bound, rng);
      this.bias = this.param("bias", b);
    }
  }

  /** x [..., in] -> [..., out]. */
  forward(x: Tensor): Tensor {
    if (x.shape[x.rank - 1] !== this.inFeatures) {
      throw new RangeError(`Linear(${this.inFeatures}, ${this.outFeatures}): input is ${x}`);
    }
    const y = matmul(x, this.weight, { transposeB: true, bias: this.bias });
    return this.adapter ? this.adapter.adapt(x, y) : y;
  }

  /**
   * act(x W^T + b): the activation fused into the matmul (one dispatch, see `linear`), or applied
   * after the adapter when the layer has one (the adapter must see the product first).
   */
  forwardActivated(x: Tensor, activation: LinearActivation): Tensor {
    if (this.adapter || activation === "none") {
      const y = this.forward(x);
      return activation === "none" ? y : activationFn(activation)(y);
    }
    if (x.shape[x.rank - 1] !== this.inFeatures) {
      throw new RangeError(`Linear(${this.inFeatures}, ${this.outFeatures}): input is ${x}`);
    }
    return linear(x, this.weight, this.bias, { activation });
  }
}

/** Options for {@link LayerNorm}. */
export interface LayerNormOptions {
  /** Added to the variance (default 1e-5, PyTorch's). */
  eps?: number;
}

/**
 * Normalise the last axis to zero mean and unit variance, then scale by `weight` (ones) and
 * shift by `bias` (zeros), as torch.nn.LayerNorm(d). [..., d] -> [..., d].
 */
export class LayerNorm extends Module {
  /** Size of the normalised (last) axis. */
  readonly dim: number;
  /** Added to the variance before the square root. */
  readonly eps: number;
  /** Parameter `weight`, the scale [dim] (starts at ones). */
  weight: Tensor;
  /** Parameter `bias`, the shift [dim] (starts at zeros). */
  bias: Tensor;

  /** A LayerNorm over a last axis of size `dim`. */
  constructor(dim: number, opts: LayerNormOptions = {}) {
    super();
    this.dim = dim;
    this.eps = opts.eps ?? 1e-5;
    this.weight = this.param("weight", ones([dim]));
    this.bias = this.param("bias", zeros([dim]));
  }

  /** x [..., d] -> [..., d]. */
  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }

  /** `[h, forward(h)]` for h = x + r, in one kernel (a transformer block's residual add). */
  forwardResidual(x: Tensor, r: Tensor): [Tensor, Tensor] {
    return addLayerNorm(x, r, this.weight, this.bias, this.eps);
  }
}

/**
 * A lookup table, as torch.nn.Embedding: `weight` [num, dim] initialised N(0, 1); int32 ids of
 * any shape [...] -> [..., dim].
 */
export class Embedding extends Module {
  /** Number of rows (the vocabulary size); ids must lie in [0, num). */
  readonly num: number;
  /** Size of each embedding vector. */
  readonly dim: number;
  /** Parameter `weight`, the table [num, dim]. */
  weight: Tensor;
  /** Optional output adapter (LoRA); receives the ids as `x`. */
  adapter: LayerAdapter | null = null;

  /** A table of `num` vectors of size `dim`, drawn N(0, 1). */
  constructor(num: number, dim: number, opts: LayerInitOptions = {}) {
    super();
    this.num = num;
    this.dim = dim;
    this.weight = this.param("weight", randn([num, dim], { rng: rngOf(opts) }));
  }

  /** ids (int32) [...] -> [..., dim]. */
  forward(ids: Tensor): Tensor {
    const y = embedding(this.weight, ids);
    return this.adapter ? this.adapter.adapt(ids, y) : y;
  }
}

/** Options for {@link MLP}. */
export interface MLPOptions extends LayerInitOptions {
  /** Between layers, not after the last (default "relu"). */
  activation?: Activation;
  /** Biases on every layer (default true). */
  bias?: boolean;
}

/**
 * A stack of Linear layers `dims[0] -> dims[1] -> ... -> dims[n]` with an activation between
 * them (none after the last). Parameters are `layers.0.weight`, `layers.0.bias`, ...
 */
export class MLP extends Module {
  /** The Linear layers in order, `layers.i` mapping dims[i] -> dims[i + 1]. */
  layers: Linear[];
  /** The activation applied between layers. */
  readonly act: (x: Tensor) => Tensor;

  /** An MLP through the sizes `dims` (at least 2; throws RangeError otherwise). */
  constructor(dims: number[], opts: MLPOptions = {}) {
    super();
    if (dims.length < 2) throw new RangeError(`MLP: need at least 2 sizes, got [${dims}]`);
    const rng = rngOf(opts);
    this.layers = dims.slice(1).map((d, i) => new Linear(dims[i], d, { bias: opts.bias, rng }));
    this.act = activationFn(opts.activation ?? "relu");
  }

  /** x [..., dims[0]] -> [..., dims[n]]. */
  forward(x: Tensor): Tensor {
    const last = this.layers.length - 1;
    let h = x;
    for (let i = 0; i <= last; i++) {
      h = this.layers[i].forward(h);
      if (i < last) h = this.act(h);
    }
    return h;
  }
}

/** Options for {@link MultiHeadAttention}. */
export interface MultiHeadAttentionOptions extends LayerInitOptions {
  /** Default masking for `forward` (overridable per call): query i sees keys j <= i. */
  causal?: boolean;
  /** Biases on the projections (default true). */
  bias?: boolean;
}

/**
 * Self-attention with PyTorch's packed layout (torch.nn.MultiheadAttention, batch_first):
 * `in_proj_weight` [3E, E] holds the q, k and v projections stacked (Xavier-uniform),
 * `in_proj_bias` [3E] (zeros), `out_proj.weight` [E, E] (Linear's default), `out_proj.bias`
 * (zeros). x [B, T, E] -> [B, T, E].
 */
export class MultiHeadAttention extends Module {
  /** Model width E (input and output last axis). */
  readonly embedDim: number;
  /** Number of heads H. */
  readonly numHeads: number;
  /** Width of one head, E / H. */
  readonly headDim: number;
  /** Whether `forward` masks causally when the call does not say. */
  readonly causal: boolean;
  /** Parameter `in_proj_weight` [3E, E]: the q, k and v projections stacked in that order. */
  inProjWeight: Tensor;
  /** Parameter `in_proj_bias` [3E]; null when built with `bias: false`. */
  inProjBias: Tensor | null;
  /** The output projection, child `out_proj` (E -> E). */
  outProj: Linear;
  /** Optional adapter on the packed q/k/v projection (LoRA); sees x and the [B, T, 3E] output. */
  inProjAdapter: LayerAdapter | null = null;

  /** Attention of width `embedDim` split into `numHeads` heads (RangeError unless it divides). */
  constructor(embedDim: number, numHeads: number, opts: MultiHeadAttentionOptions = {}) {
    super();
    if (!(numHeads > 0) || embedDim % numHeads !== 0) {
      throw new RangeError(
        `MultiHeadAttention: embedDim ${embedDim} must be divisible by numHeads ${numHeads}`,
      );
    }
    const E = embedDim;
    this.embedDim = E;
    this.numHeads = numHeads;
    this.headDim = E / numHeads;
    this.causal = opts.causal ?? false;
    const rng = rngOf(opts);
    const bias = opts.bias ?? true;
    // Xavier-uniform over the packed matrix: fan_in E, fan_out 3E.
    this.inProjWeight = this.param(
      "in_proj_weight",
      uniform([3 * E, E], Math.sqrt(6 / (4 * E)), rng),
    );
    this.inProjBias = bias ? this.param("in_proj_bias", zeros([3 * E])) : null;
    this.outProj = this.child("out_proj", new Linear(E, E, { bias, zeroBias: true, rng }));
  }

  /** x [B, T, E] -> [B, T, E]; `causal` overrides the constructor's default. */
  forward(x: Tensor, opts: { causal?: boolean } = {}): Tensor {
    const [B, T, E] = x.shape;
    if (x.rank !== 3 || E !== this.embedDim) {
      throw new RangeError(
        `MultiHeadAttention(${this.embedDim}): input must be [B, T, ${this.embedDim}], got ${x}`,
      );
    }
    const H = this.numHeads, D = this.headDim;
    // One matmul projects to q, k and v side by side: [B, T, 3E].
    let qkv = matmul(x, this.inProjWeight, { transposeB: true, bias: this.inProjBias });
    if (this.inProjAdapter) qkv = this.inProjAdapter.adapt(x, qkv);
    // [B, T, 3, H, D] -> [3, B, H, T, D]: q, k and v, each in the [B, H, T, D] layout of attention.
    const heads = permute(reshape(qkv, [B, T, 3, H, D]), [2, 0, 3, 1, 4]);
    const [q, k, v] = [0, 1, 2].map((i) => reshape(slice(heads, 0, i, 1), [B, H, T, D]));
    const o = attention(q, k, v, { causal: opts.causal ?? this.causal });
    // Heads back side by side: [B, H, T, D] -> [B, T, H * D], then the output projection.
    const merged = reshape(permute(o, [0, 2, 1, 3]), [B, T, E]);
    return this.outProj.forward(merged);
  }
}

/** Options for {@link FeedForward} and {@link TransformerBlock}. */
export interface FeedForwardOptions extends LayerInitOptions {
  /** Default "gelu" (OpenCLIP); OpenAI's CLIP uses "quickGelu". */
  activation?: Activation;
}

/**
 * The transformer's position-wise MLP with OpenCLIP's names: `c_fc` (width -> hidden), the
 * activation, `c_proj` (hidden -> width). [..., width] -> [..., width].
 */
export class FeedForward extends Module {
  /** Child `c_fc`: width -> hidden. */
  fc: Linear;
  /** Child `c_proj`: hidden -> width. */
  proj: Linear;
  /** The activation between `c_fc` and `c_proj`. */
  readonly act: (x: Tensor) => Tensor;
  /** The activation when `c_fc`'s matmul applies it in its epilogue (gelu, quickGelu, relu). */
  private readonly fused: LinearActivation | null;

  /** An MLP width -> hidden -> width. */
  constructor(width: number, hidden: number, opts: FeedForwardOptions = {}) {
    super();
    const rng = rngOf(opts);
    this.fc = this.child("c_fc", new Linear(width, hidden, { rng }));
    this.proj = this.child("c_proj", new Linear(hidden, width, { rng }));
    const a = opts.activation ?? "gelu";
    this.act = activationFn(a);
    this.fused = a === "gelu" || a === "quickGelu" || a === "relu" ? a : null;
  }

  /** x [..., width] -> [..., width]. */
  forward(x: Tensor): Tensor {
    const h = this.fused ? this.fc.forwardActivated(x, this.fused) : this.act(this.fc.forward(x));
    return this.proj.forward(h);
  }
}

/** Options for {@link TransformerBlock}. */
export interface TransformerBlockOptions extends FeedForwardOptions {
  /** Hidden width of the MLP as a multiple of the width (default 4). */
  mlpRatio?: number;
  /** Default attention masking (overridable per call). */
  causal?: boolean;
  /** LayerNorm epsilon (default 1e-5). */
  eps?: number;
}

/**
 * A pre-norm transformer block, OpenCLIP's ResidualAttentionBlock:
 * `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`, with parameters `ln_1.*`, `attn.in_proj_weight`,
 * `attn.in_proj_bias`, `attn.out_proj.*`, `ln_2.*`, `mlp.c_fc.*`, `mlp.c_proj.*`.
 * x [B, T, width] -> [B, T, width].
 */
export class TransformerBlock extends Module {
  /** Child `ln_1`: the LayerNorm before attention. */
  ln1: LayerNorm;
  /** Child `attn`: self-attention with `heads` heads. */
  attn: MultiHeadAttention;
  /** Child `ln_2`: the LayerNorm before the MLP. */
  ln2: LayerNorm;
  /** Child `mlp`: the feed-forward part, width -> mlpRatio * width -> width. */
  mlp: FeedForward;

  /** A block of width `width` with `heads` attention heads (which must divide `width`). */
  constructor(width: number, heads: number, opts: TransformerBlockOptions = {}) {
    super();
    const rng = rngOf(opts);
    const eps = opts.eps;
    this.ln1 = this.child("ln_1", new LayerNorm(width, { eps }));
    this.attn = new MultiHeadAttention(width, heads, { causal: opts.causal, rng });
    this.ln2 = this.child("ln_2", new LayerNorm(width, { eps }));
    const hidden = Math.round(width * (opts.mlpRatio ?? 4));
    this.mlp = new FeedForward(width, hidden, { activation: opts.activation, rng });
  }

  /** x [B, T, width] -> [B, T, width]; `causal` overrides the default masking. */
  forward(x: Tensor, opts: { causal?: boolean } = {}): Tensor {
    // The residual add and ln_2 run as one kernel (addLayerNorm).
    const [h, n2] = this.ln2.forwardResidual(x, this.attn.forward(this.ln1.forward(x), opts));
    return add(h, this.mlp.forward(n2));
  }
}
