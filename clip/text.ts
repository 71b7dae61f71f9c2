/**
 * CLIP's text tower in OpenCLIP's layout (`TextTransformer`):
 *
 * ids [M, T] -> `token_embedding` + `positional_embedding[:T]` -> causal pre-norm residual
 * blocks -> the features at each row's end-of-text position -> `ln_final` -> `@ text_projection`
 * -> [M, embedDim].
 *
 * Because attention is causal, the features at position e depend only on tokens 0..e, so a batch
 * may be cut after its last end-of-text token (`T` < context length) without changing anything;
 * `ClipModel.encodeText` does that. `ln_final` is applied to the pooled rows only (it is a per-row
 * operation, so this equals OpenCLIP's "normalise everything, then pool").
 *
 * Parameter names: `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*`,
 * `ln_final.*`, `text_projection` (OpenCLIP's, under the model's `text.` prefix).
 */
import { Embedding, type LayerAdapter, LayerNorm } from "../nn/layers.ts";
import { Module } from "../nn/module.ts";
import { embedding } from "../nn/ops/embedding.ts";
import { add, scale } from "../nn/ops/elementwise.ts";
import { copyInto } from "../nn/ops/inplace.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { reshape, slice } from "../nn/ops/shape.ts";
import { noGrad } from "../nn/autograd.ts";
import { randn, Rng, type Tensor, tensor } from "../nn/tensor.ts";
import type { ClipActivation, TextConfig } from "./config.ts";
import type { LoraSite } from "../nn/lora.ts";
import { type TowerOptions, Transformer } from "./vision.ts";

/** OpenCLIP's text transformer (see the module comment). */
export class TextTransformer extends Module {
  /** The tower's shape (a copy of the constructor's). */
  readonly config: TextConfig;
  /** Size of the output features (the shared embedding size). */
  readonly outputDim: number;
  /** Child `token_embedding`: the table [vocabSize, width] (initialised N(0, 0.02^2)). */
  token_embedding: Embedding;
  /** Parameter `positional_embedding` [contextLength, width]; the first T rows are used. */
  positional_embedding: Tensor;
  /** Child `transformer`: the residual blocks, run with causal masking. */
  transformer: Transformer;
  /** Child `ln_final`: LayerNorm on the pooled end-of-text features. */
  ln_final: LayerNorm;
  /** Parameter `text_projection` [width, outputDim]: pooled features -> embedding. */
  text_projection: Tensor;
  /** Optional LoRA adapter on the projection (`x @ text_projection`). */
  projAdapter: LayerAdapter | null = null;

  /**
   * A randomly initialised tower (OpenCLIP's initialisation; load a checkpoint for real weights)
   * producing `outputDim` features, with the given MLP activation.
   */
  constructor(
    config: TextConfig,
    outputDim: number,
    activation: ClipActivation,
    opts: TowerOptions = {},
  ) {
    super();
    const rng = opts.rng ?? new Rng(0);
    const { width, contextLength, vocabSize } = config;
    this.config = { ...config };
    this.outputDim = outputDim;
    this.token_embedding = new Embedding(vocabSize, width, { rng });
    // OpenCLIP initialises the token table with N(0, 0.02^2); Embedding draws N(0, 1).
    noGrad(() => {
      const w = this.token_embedding.weight;
      const scaled = scale(w, 0.02);
      copyInto(w, scaled);
      scaled.dispose();
    });
    this.positional_embedding = this.param(
      "positional_embedding",
      randn([contextLength, width], { rng, std: 0.01 }),
    );
    this.transformer = new Transformer(
      width,
      config.layers,
      config.heads,
      config.mlpWidth,
      activation,
      { ...opts, rng },
    );
    this.ln_final = new LayerNorm(width, { eps: opts.eps });
    this.text_projection = this.param(
      "text_projection",
      randn([width, outputDim], { rng, std: width ** -0.5 }),
    );
  }

  /**
   * ids: int32 [M, T] on the GPU with T <= context length; eot: the end-of-text position of
   * each row (CPU, [M], each in [0, T)). Returns features [M, outputDim] (not normalised).
   * Throws a RangeError on a bad shape or position.
   */
  forward(ids: Tensor, eot: Int32Array): Tensor {
    const { contextLength, width } = this.config;
    if (ids.rank !== 2 || ids.dtype !== "int32" || ids.shape[1] > contextLength) {
      throw new RangeError(
        `TextTransformer: ids must be int32 [M, T <= ${contextLength}], got ${ids}`,
      );
    }
    const [M, T] = ids.shape;
    if (eot.length !== M) {
      throw new RangeError(`TextTransformer: ${eot.length} end-of-text positions for ${M} rows`);
    }
    // Row m's pooled token is row m * T + eot[m] of the flattened [M * T, width] sequence.
    const rows = new Int32Array(M);
    for (let m = 0; m < M; m++) {
      if (!(eot[m] >= 0 && eot[m] < T)) {
        throw new RangeError(
          `TextTransformer: end-of-text position ${eot[m]} of row ${m} not in [0, ${T})`,
        );
      }
      rows[m] = m * T + eot[m];
    }
    const pos = T === contextLength
      ? this.positional_embedding
      : slice(this.positional_embedding, 0, 0, T);
    const x = add(this.token_embedding.forward(ids), pos);
    const h = this.transformer.forward(x, true);
    const pooled = this.ln_final.forward(
      embedding(reshape(h, [M * T, width]), tensor(rows, [M])),
    );
    const y = matmul(pooled, this.text_projection);
    return this.projAdapter ? this.projAdapter.adapt(pooled, y) : y;
  }

  /** LoRA sites, named under `prefix` ("text" in this project's model). */
  loraSites(prefix = "text"): LoraSite[] {
    const p = prefix ? `${prefix}.` : "";
    const emb = this.token_embedding;
    const tokenSite: LoraSite = {
      name: `${p}token_embedding`,
      kind: "embedding",
      layout: "in-out",
      inFeatures: emb.num,
      outFeatures: emb.dim,
      weight: emb.weight,
      getAdapter: () => emb.adapter,
      setAdapter: (a) => emb.adapter = a,
    };
    const proj: LoraSite = {
      name: `${p}text_projection`,
      kind: "linear",
      layout: "in-out",
      inFeatures: this.config.width,
      outFeatures: this.outputDim,
      weight: this.text_projection,
      getAdapter: () => this.projAdapter,
      setAdapter: (a) => this.projAdapter = a,
    };
    return [tokenSite, ...this.transformer.loraSites(`${p}transformer`), proj];
  }
}
