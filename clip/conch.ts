/**
 * CONCH (Lu et al. 2024, mahmoodlab/CONCH), the CoCa-style pathology vision-language model the
 * CLIP-IT paper pairs images and reports with: the contrastive image and text embeddings, with
 * the parameter names of its released state dict. Written from the architecture (the reference
 * code's licence forbids derivatives; none of it is copied here).
 *
 * Image: `visual.trunk` is a timm ViT-B/16 at 448 px (dynamic image size, clip/timm_vit.ts)
 * giving all final tokens [B, 1 + n, 768] after its `norm`; `visual.attn_pool_contrast` is one
 * learned query (`query` [1, d], LayerNorm `ln_q`) attending over the LayerNorm-ed tokens
 * (`ln_k`) with a multi-head attention whose keys and values come from the trunk width
 * (`attn.q_proj_weight` [d, d], `attn.k_proj_weight` / `v_proj_weight` [d, 768], packed
 * `attn.in_proj_bias` [3d], `attn.out_proj`), then `visual.ln_contrast` and `@ proj_contrast`.
 *
 * Text: ids [M, 128] -> the last column dropped (CONCH's tokenizer leaves a pad there as a
 * placeholder) -> `token_embedding` -> a learned class embedding `cls_emb` appended at the end
 * -> + `positional_embedding` -> causal pre-norm blocks (OpenCLIP's names) in which the class
 * token's attention row is also masked by padding: key j is visible to it iff j = 0 or token
 * j - 1 is not the pad id (0), exactly as the reference builds its mask (shifted by one, so it
 * sees the first pad and, only in a full row, itself) -> `ln_final` on the class token ->
 * `@ text_projection`. Because the class token comes last and attention is causal, text rows
 * never see it; so a batch is cut after its last visible key and the class token keeps its
 * position embedding (`positional_embedding[127]`).
 *
 * The captioning parts (`visual.attn_pool_caption`, `visual.ln_caption`, `text_decoder`) are not
 * built; the loader skips their tensors.
 */
import { isGradEnabled } from "../nn/autograd.ts";
import { Embedding, type LayerAdapter, LayerNorm, Linear } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { attention } from "../nn/ops/attention.ts";
import { add, scale } from "../nn/ops/elementwise.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { softmax } from "../nn/ops/nn.ts";
import { broadcastTo, concat, permute, reshape, slice } from "../nn/ops/shape.ts";
import { full, randn, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import type { ImageBackbone, TextEncoder } from "./backbone.ts";
import type { LoraHost, LoraSite } from "../nn/lora.ts";
import type { TimmVitConfig } from "./timm_config.ts";
import { TimmVisionTransformer } from "./timm_vit.ts";
import { linearSite, Transformer } from "./vision.ts";
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from "./preprocess.ts";

/** CONCH's hyper-parameters (its `model_configs/conch_ViT-B-16.json`, resolved). */
export interface ConchConfig {
  /** A label for messages. */
  name: string;
  /** Size of the contrastive embedding (512). */
  embedDim: number;
  /** The image trunk and its attentional pooler. */
  vision: {
    /** Input side (448). */
    imageSize: number;
    /** Patch side (16). */
    patchSize: number;
    /** Trunk width (768). */
    width: number;
    /** Trunk blocks (12). */
    layers: number;
    /** Trunk heads (12). */
    heads: number;
    /** Trunk MLP ratio (4). */
    mlpRatio: number;
    /** Heads of the contrastive attentional pooler (8). */
    poolerHeads: number;
  };
  /** The text tower. */
  text: {
    /** Ids per row including the placeholder last column (128). */
    contextLength: number;
    /** Rows of the token embedding (32007). */
    vocabSize: number;
    /** Width (768). */
    width: number;
    /** Heads (12). */
    heads: number;
    /** Blocks (12). */
    layers: number;
    /** The padding id the class token's mask looks for (0). */
    padId: number;
  };
  /** Image normalisation mean (OpenAI CLIP's, as CONCH's factory sets). */
  mean: readonly number[];
  /** Image normalisation std. */
  std: readonly number[];
}

/** The timm trunk config of a CONCH model (timm VisionTransformer, num_classes 0, dynamic size). */
export function conchTrunkConfig(c: ConchConfig): TimmVitConfig {
  const v = c.vision;
  return {
    name: `${c.name} visual.trunk`,
    architecture: "vit_base_patch16_224",
    imageSize: v.imageSize,
    patchSize: v.patchSize,
    embedDim: v.width,
    depth: v.layers,
    numHeads: v.heads,
    mlpRatio: v.mlpRatio,
    qkvBias: true,
    projBias: true,
    initValues: null,
    classToken: true,
    regTokens: 0,
    noEmbedClass: false,
    posEmbed: true,
    preNorm: false,
    finalNorm: true,
    fcNorm: null,
    globalPool: "token",
    poolIncludePrefix: false,
    dynamicImgSize: true,
    numClasses: 0,
    activation: "gelu",
    eps: 1e-6,
    mean: [...c.mean],
    std: [...c.std],
    interpolation: "bicubic",
    cropPct: 1,
  };
}

/** A weight matrix [out, in] used as `x W^T (+ b)`, with a LoRA slot (a LoraSite's host). */
class ProjSlot {
  adapter: LayerAdapter | null = null;
  constructor(
    readonly get: () => Tensor,
    readonly inFeatures: number,
    readonly outFeatures: number,
  ) {}
  apply(x: Tensor, bias: Tensor | null): Tensor {
    const y = matmul(x, this.get(), { transposeB: true, bias });
    return this.adapter ? this.adapter.adapt(x, y) : y;
  }
}

/**
 * `torch.nn.MultiheadAttention(d, heads, kdim=kv, vdim=kv)` for cross-attention: separate
 * `q_proj_weight` / `k_proj_weight` / `v_proj_weight` when kv != d, else the packed
 * `in_proj_weight`; packed `in_proj_bias` [3d]; `out_proj`. q [B, Tq, d], kv [B, Tk, kv].
 */
export class CrossAttention extends Module {
  /** Width d. */
  readonly embedDim: number;
  /** Heads. */
  readonly numHeads: number;
  /** Whether q, k and v share the packed `in_proj_weight` (kv = d). */
  readonly #packed: boolean;
  /** LoRA slots of the q, k and v projections. */
  readonly #slots: { q: ProjSlot; k: ProjSlot; v: ProjSlot };
  /** Parameter `in_proj_bias` [3d]. */
  in_proj_bias: Tensor;
  /** Child `out_proj`. */
  out_proj: Linear;

  /** Attention of width `d` over keys / values of width `kv`. */
  constructor(d: number, numHeads: number, kv: number, rng: Rng) {
    super();
    this.embedDim = d;
    this.numHeads = numHeads;
    const init = (rows: number, cols: number) =>
      randn([rows, cols], { rng, std: Math.sqrt(2 / (rows + cols)) });
    this.#packed = kv === d;
    if (this.#packed) {
      const w = this.param("in_proj_weight", init(3 * d, d));
      const part = (i: number) => () => slice(w, 0, i * d, d);
      this.#slots = {
        q: new ProjSlot(part(0), d, d),
        k: new ProjSlot(part(1), d, d),
        v: new ProjSlot(part(2), d, d),
      };
    } else {
      const q = this.param("q_proj_weight", init(d, d));
      const k = this.param("k_proj_weight", init(d, kv));
      const v = this.param("v_proj_weight", init(d, kv));
      this.#slots = {
        q: new ProjSlot(() => q, d, d),
        k: new ProjSlot(() => k, kv, d),
        v: new ProjSlot(() => v, kv, d),
      };
    }
    this.in_proj_bias = this.param("in_proj_bias", full([3 * d], 0));
    this.out_proj = new Linear(d, d, { rng });
  }

  /** q [B, Tq, d], kv [B, Tk, kdim] -> [B, Tq, d]. */
  forward(q: Tensor, kv: Tensor): Tensor {
    const [B, Tq, d] = q.shape, Tk = kv.shape[1];
    const H = this.numHeads, hd = d / H;
    const b = (i: number) => slice(this.in_proj_bias, 0, i * d, d);
    const split = (t: Tensor, T: number) => permute(reshape(t, [B, T, H, hd]), [0, 2, 1, 3]);
    const Q = split(this.#slots.q.apply(q, b(0)), Tq);
    const K = split(this.#slots.k.apply(kv, b(1)), Tk);
    const V = split(this.#slots.v.apply(kv, b(2)), Tk);
    const o = attention(Q, K, V);
    return this.out_proj.forward(reshape(permute(o, [0, 2, 1, 3]), [B, Tq, d]));
  }

  /**
   * LoRA sites `<prefix>.q_proj`, `.k_proj`, `.v_proj` (weights [out, in]) and `.out_proj`. With
   * a packed `in_proj_weight` (kv = d) q, k and v are rows of one matrix that LoRA's merge cannot
   * address separately, so only `out_proj` is offered.
   */
  loraSites(prefix: string): LoraSite[] {
    const out = linearSite(`${prefix}.out_proj`, this.out_proj);
    if (this.#packed) return [out];
    const slot = (n: "q" | "k" | "v"): LoraSite => {
      const s = this.#slots[n];
      return {
        name: `${prefix}.${n}_proj`,
        kind: "linear",
        layout: "out-in",
        inFeatures: s.inFeatures,
        outFeatures: s.outFeatures,
        weight: s.get(),
        getAdapter: () => s.adapter,
        setAdapter: (a) => s.adapter = a,
      };
    };
    return [slot("q"), slot("k"), slot("v"), out];
  }
}

/** CONCH's attentional pooler: learned queries `query` attend over LayerNorm-ed tokens. */
export class AttentionalPooler extends Module {
  /** Parameter `query` [nq, d]. */
  query: Tensor;
  /** Child `attn`. */
  attn: CrossAttention;
  /** Child `ln_q` (eps 1e-5). */
  ln_q: LayerNorm;
  /** Child `ln_k` (eps 1e-5). */
  ln_k: LayerNorm;

  /** `nq` queries of width `d` over tokens of width `context`. */
  constructor(d: number, context: number, heads: number, nq: number, rng: Rng) {
    super();
    this.query = this.param("query", randn([nq, d], { rng }));
    this.attn = new CrossAttention(d, heads, context, rng);
    this.ln_q = new LayerNorm(d);
    this.ln_k = new LayerNorm(context);
  }

  /** tokens [B, T, context] -> [B, nq, d]. */
  forward(tokens: Tensor): Tensor {
    const B = tokens.shape[0], [nq, d] = this.query.shape;
    const q = broadcastTo(reshape(this.ln_q.forward(this.query), [1, nq, d]), [B, nq, d]);
    return this.attn.forward(q, this.ln_k.forward(tokens));
  }
}

/** CONCH's image side (`visual.*`): trunk, contrastive pooler, `ln_contrast`, `proj_contrast`. */
export class ConchVisual extends Module {
  /** Child `trunk`: the timm ViT. */
  trunk: TimmVisionTransformer;
  /** Child `attn_pool_contrast`. */
  attn_pool_contrast: AttentionalPooler;
  /** Child `ln_contrast` (eps 1e-5). */
  ln_contrast: LayerNorm;
  /** Parameter `proj_contrast` [d, d] (`x @ proj_contrast`). */
  proj_contrast: Tensor;
  /** LoRA slot of `proj_contrast`. */
  _projAdapter: LayerAdapter | null = null;

  /** The image side of `c`. */
  constructor(c: ConchConfig, rng: Rng) {
    super();
    const d = c.embedDim, w = c.vision.width;
    this.trunk = new TimmVisionTransformer(conchTrunkConfig(c), { rng });
    this.attn_pool_contrast = new AttentionalPooler(d, w, c.vision.poolerHeads, 1, rng);
    this.ln_contrast = new LayerNorm(d);
    this.proj_contrast = this.param("proj_contrast", randn([d, d], { rng, std: w ** -0.5 }));
  }

  /** Normalised images [B, 3, S, S] -> contrastive embeddings [B, d] (not normalised). */
  forward(images: Tensor): Tensor {
    const tokens = this.trunk.forwardFeatures(images);
    const pooled = this.attn_pool_contrast.forward(tokens); // [B, 1, d]
    const B = pooled.shape[0], d = pooled.shape[2];
    const x = this.ln_contrast.forward(reshape(pooled, [B, d]));
    const y = matmul(x, this.proj_contrast);
    return this._projAdapter ? this._projAdapter.adapt(x, y) : y;
  }

  /** LoRA sites: the trunk's, the pooler's projections and `proj_contrast`. */
  loraSites(prefix = "visual"): LoraSite[] {
    const d = this.proj_contrast.shape[0];
    const proj: LoraSite = {
      name: `${prefix}.proj_contrast`,
      kind: "linear",
      layout: "in-out",
      inFeatures: d,
      outFeatures: d,
      weight: this.proj_contrast,
      getAdapter: () => this._projAdapter,
      setAdapter: (a) => this._projAdapter = a,
    };
    return [
      ...this.trunk.loraSites(`${prefix}.trunk`),
      ...this.attn_pool_contrast.attn.loraSites(`${prefix}.attn_pool_contrast.attn`),
      proj,
    ];
  }
}

/** CONCH's text tower (`text.*`), see the module comment. */
export class ConchText extends Module {
  /** The tower's shape. */
  readonly config: ConchConfig["text"];
  /** Parameter `cls_emb` [width]: the class token appended after the text. */
  cls_emb: Tensor;
  /** Child `token_embedding` [vocab, width]. */
  token_embedding: Embedding;
  /** Parameter `positional_embedding` [context, width]. */
  positional_embedding: Tensor;
  /** Child `transformer`: OpenCLIP residual blocks (`resblocks.N.*`), GELU, eps 1e-5. */
  transformer: Transformer;
  /** Child `ln_final`. */
  ln_final: LayerNorm;
  /** Parameter `text_projection` [width, d]. */
  text_projection: Tensor;
  /** LoRA slot of `text_projection`. */
  _projAdapter: LayerAdapter | null = null;

  /** The text tower of `c`. */
  constructor(c: ConchConfig, rng: Rng) {
    super();
    const t = c.text;
    this.config = { ...t };
    this.cls_emb = this.param("cls_emb", randn([t.width], { rng, std: 0.01 }));
    this.token_embedding = new Embedding(t.vocabSize, t.width, { rng });
    this.positional_embedding = this.param(
      "positional_embedding",
      randn([t.contextLength, t.width], { rng, std: 0.01 }),
    );
    this.transformer = new Transformer(t.width, t.layers, t.heads, 4 * t.width, "gelu", { rng });
    this.ln_final = new LayerNorm(t.width);
    this.text_projection = this.param(
      "text_projection",
      randn([t.width, c.embedDim], { rng, std: t.width ** -0.5 }),
    );
  }

  /**
   * ids, row-major [M, contextLength] on the CPU (CONCH's tokenizer rows) -> embeddings [M, d]
   * (not normalised). Throws a RangeError on a bad length or an id outside the vocabulary.
   */
  forward(ids: Int32Array): Tensor {
    const { contextLength: ctx, vocabSize, padId, width: W } = this.config;
    if (ids.length === 0 || ids.length % ctx !== 0) {
      throw new RangeError(`ConchText: ${ids.length} ids are not rows of ${ctx}`);
    }
    const M = ids.length / ctx, L = ctx - 1;
    // Keep text positions up to one past each row's last non-pad token (all the class token can
    // see; later positions cannot reach it or any earlier position).
    let T = 1;
    for (let m = 0; m < M; m++) {
      let last = -1;
      for (let j = 0; j < L; j++) {
        const id = ids[m * ctx + j];
        if (!(id >= 0 && id < vocabSize)) {
          throw new RangeError(
            `ConchText: id ${id} (row ${m}, position ${j}) not in [0, ${vocabSize})`,
          );
        }
        if (id !== padId) last = j;
      }
      T = Math.max(T, Math.min(L, last + 2));
    }
    const cut = new Int32Array(M * T);
    const mask = new Float32Array(M * (T + 1));
    for (let m = 0; m < M; m++) {
      const row = ids.subarray(m * ctx, m * ctx + ctx);
      cut.set(row.subarray(0, T), m * T);
      for (let j = 0; j < T; j++) {
        mask[m * (T + 1) + j] = j === 0 || row[j - 1] !== padId ? 0 : -1e30;
      }
      mask[m * (T + 1) + T] = row[L - 1] !== padId ? 0 : -1e30;
    }
    const tok = this.token_embedding.forward(tensor(cut, [M, T]));
    const textPart = add(tok, slice(this.positional_embedding, 0, 0, T));
    const clsPos = add(this.cls_emb, reshape(slice(this.positional_embedding, 0, L, 1), [W]));
    const cls = broadcastTo(reshape(clsPos, [1, 1, W]), [M, 1, W]);
    let x = concat([textPart, cls], 1); // [M, T + 1, W]
    const clsMask = tensor(mask, [M, 1, 1, T + 1]);
    for (const blk of this.transformer.resblocks) {
      // Without gradients, free each block's intermediates as soon as it is done (a batch of
      // reports is ~20 activations of [M, 129, 768] per block), as the CLIP towers do.
      const inference = !isGradEnabled() ||
        (!x.requiresGrad && blk.trainableParameters().length === 0);
      if (!inference) {
        x = textBlock(blk, x, clsMask);
        continue;
      }
      const prev = x;
      x = tidy(() => textBlock(blk, prev, clsMask));
      prev.dispose();
    }
    const pooled = this.ln_final.forward(reshape(slice(x, 1, T, 1), [M, W]));
    const y = matmul(pooled, this.text_projection);
    return this._projAdapter ? this._projAdapter.adapt(pooled, y) : y;
  }

  /** LoRA sites: token embedding, every block (packed in-projection included), projection. */
  loraSites(prefix = "text"): LoraSite[] {
    const emb = this.token_embedding;
    const token: LoraSite = {
      name: `${prefix}.token_embedding`,
      kind: "embedding",
      layout: "in-out",
      inFeatures: emb.num,
      outFeatures: emb.dim,
      weight: emb.weight,
      getAdapter: () => emb.adapter,
      setAdapter: (a) => emb.adapter = a,
    };
    const proj: LoraSite = {
      name: `${prefix}.text_projection`,
      kind: "linear",
      layout: "in-out",
      inFeatures: this.config.width,
      outFeatures: this.text_projection.shape[1],
      weight: this.text_projection,
      getAdapter: () => this._projAdapter,
      setAdapter: (a) => this._projAdapter = a,
    };
    return [token, ...this.transformer.loraSites(`${prefix}.transformer`), proj];
  }
}

/**
 * One OpenCLIP residual block over [text..., cls]: text rows attend causally; the class row
 * (last) attends with the padding mask `clsMask` [M, 1, 1, T + 1] (0 or -1e30).
 */
function textBlock(blk: Transformer["resblocks"][number], x: Tensor, clsMask: Tensor): Tensor {
  const [M, T1, W] = x.shape;
  const attn = blk.attn, H = attn.numHeads, hd = W / H;
  const a = blk.ln1.forward(x);
  let qkv = matmul(a, attn.inProjWeight, { transposeB: true, bias: attn.inProjBias });
  if (attn.inProjAdapter) qkv = attn.inProjAdapter.adapt(a, qkv);
  const heads = permute(reshape(qkv, [M, T1, 3, H, hd]), [2, 0, 3, 1, 4]);
  const [q, k, v] = [0, 1, 2].map((i) => reshape(slice(heads, 0, i, 1), [M, H, T1, hd]));
  const textOut = slice(attention(q, k, v, { causal: true }), 2, 0, T1 - 1);
  const qCls = slice(q, 2, T1 - 1, 1);
  const scores = scale(matmul(qCls, k, { transposeB: true }), 1 / Math.sqrt(hd)); // [M, H, 1, T1]
  const clsOut = matmul(softmax(add(scores, clsMask), -1), v); // [M, H, 1, hd]
  const o = concat([textOut, clsOut], 2);
  const h = add(x, attn.outProj.forward(reshape(permute(o, [0, 2, 1, 3]), [M, T1, W])));
  return add(h, blk.mlp.forward(blk.ln2.forward(h)));
}

/** The CONCH model (`visual`, `text`, `logit_scale`), named like its released state dict. */
export class ConchModel extends Module implements LoraHost {
  /** The configuration. */
  readonly config: ConchConfig;
  /** Child `visual`. */
  visual: ConchVisual;
  /** Child `text`. */
  text: ConchText;
  /** Parameter `logit_scale` (log of the inverse temperature). */
  logit_scale: Tensor;

  /** A randomly initialised model (load the released weights with clip/conch_load.ts). */
  constructor(config: ConchConfig, opts: { rng?: Rng } = {}) {
    super();
    const rng = opts.rng ?? new Rng(0);
    this.config = structuredClone(config);
    this.visual = new ConchVisual(this.config, rng);
    this.text = new ConchText(this.config, rng);
    this.logit_scale = this.param("logit_scale", full([], Math.log(1 / 0.07)));
  }

  /** Every LoRA site of both towers (`visual.*`, then `text.*`). */
  loraSites(): LoraSite[] {
    return [...this.visual.loraSites("visual"), ...this.text.loraSites("text")];
  }
}

/** CONCH's image embedding (`encode_image(normalize=False)`) as an {@link ImageBackbone}. */
export class ConchImageBackbone extends Module implements ImageBackbone {
  /** "CONCH (image)" or the config's name. */
  readonly name: string;
  /** The contrastive embedding size (512). */
  readonly featureDim: number;
  /** 448 for the released model. */
  readonly imageSize: number;
  /** OpenAI CLIP's mean (CONCH's factory sets it). */
  readonly mean: readonly number[];
  /** OpenAI CLIP's std. */
  readonly std: readonly number[];
  /** CONCH resizes with bicubic interpolation (then centre-crops). */
  readonly interpolation = "bicubic" as const;
  /** The shared model. */
  readonly _model: ConchModel;
  /** Child `visual` (parameters `visual.*`). */
  visual: ConchVisual;

  /** Wrap `model`'s image side (shared, not copied). */
  constructor(model: ConchModel) {
    super();
    this._model = model;
    this.visual = model.visual;
    const c = model.config;
    this.name = `${c.name} (image)`;
    this.featureDim = c.embedDim;
    this.imageSize = c.vision.imageSize;
    this.mean = c.mean;
    this.std = c.std;
  }

  /** Normalised images -> contrastive image embeddings [B, 512] (not normalised). */
  features(images: Tensor): Tensor {
    return this.visual.forward(images);
  }

  /** LoRA sites named `visual.*` as in the state dict. */
  loraSites(): LoraSite[] {
    return this.visual.loraSites("visual");
  }
}

/** CONCH's text embedding (`encode_text(normalize=False)`) as a {@link TextEncoder}. */
export class ConchTextEncoder extends Module implements TextEncoder {
  /** "CONCH (text)" or the config's name. */
  readonly name: string;
  /** The contrastive embedding size (512). */
  readonly embedDim: number;
  /** 128: CONCH's rows, the placeholder last column included. */
  readonly contextLength: number;
  /** The shared model. */
  readonly _model: ConchModel;
  /** Child `text` (parameters `text.*`). */
  text: ConchText;

  /** Wrap `model`'s text tower (shared, not copied). */
  constructor(model: ConchModel) {
    super();
    this._model = model;
    this.text = model.text;
    this.name = `${model.config.name} (text)`;
    this.embedDim = model.config.embedDim;
    this.contextLength = model.config.text.contextLength;
  }

  /** ids [M, 128] (CPU, from a ConchTokenizer) -> text embeddings [M, 512] (not normalised). */
  encode(ids: Int32Array): Tensor {
    return this.text.forward(ids);
  }

  /** LoRA sites named `text.*` as in the state dict. */
  loraSites(): LoraSite[] {
    return this.text.loraSites("text");
  }
}

/** OpenAI CLIP's normalisation, which CONCH's `create_model` sets on its image tower. */
export const CONCH_MEAN: readonly number[] = OPENAI_CLIP_MEAN;
/** See {@link CONCH_MEAN}. */
export const CONCH_STD: readonly number[] = OPENAI_CLIP_STD;
