/**
 * Embedding loops: L2-normalised CLIP embeddings of a stream of image batches and of a list of
 * texts, returned as row-major float32 rows on the CPU. The caller decides where the pixels come
 * from (the `embed` command feeds the worker-pool DataLoader of train/data/) and how progress is
 * shown; these functions only report the number of rows done through `onProgress`.
 */
import { noGrad } from "../nn/autograd.ts";
import { tensor, tidy } from "../nn/tensor.ts";
import type { ClipModel } from "./model.ts";

/** A batch of preprocessed images: `count` images, float32 [count, 3, S, S], normalised. */
export interface ImageBatch {
  /** The pixels, `count * 3 * S * S` values (S = the model's image size). */
  images: Float32Array;
  /** Images in the batch. */
  count: number;
}

/** Called after each batch with the number of rows embedded so far. */
export type EmbedProgress = (done: number) => void;

/** The tokenizer an embedding loop needs (ClipTokenizer is one). */
export interface EmbedTokenizer {
  /** Row-major [texts.length, contextLength] ids, truncated like the reference. */
  tokenize(texts: string[], contextLength: number): Int32Array;
  /** Ids the tokenizer can produce. */
  readonly vocabSize: number;
}

/** Options of {@link embedTexts}. */
export interface EmbedTextsOptions {
  /** Texts per GPU batch (default 32). */
  batch?: number;
  /** Progress callback (texts done). */
  onProgress?: EmbedProgress;
}

/**
 * Image embeddings of every batch of `batches`, in order: float32 [N, embedDim], N the total
 * image count, each row L2-normalised. One batch is on the GPU at a time.
 * @throws RangeError when a batch's pixel count does not match `count` images of the model's size.
 */
export async function embedImageBatches(
  model: ClipModel,
  batches: AsyncIterable<ImageBatch>,
  onProgress?: EmbedProgress,
): Promise<Float32Array> {
  const d = model.config.embedDim, S = model.config.vision.imageSize;
  const rows: Float32Array[] = [];
  let done = 0;
  for await (const { images, count } of batches) {
    if (images.length !== count * 3 * S * S) {
      throw new RangeError(
        `embedImageBatches: a batch of ${count} images of ${S}x${S} needs ${count * 3 * S * S} ` +
          `values, got ${images.length}`,
      );
    }
    const emb = noGrad(() => tidy(() => model.embedImages(tensor(images, [count, 3, S, S]))));
    rows.push(await emb.toFloat32Array());
    emb.dispose();
    done += count;
    onProgress?.(done);
  }
  const out = new Float32Array(done * d);
  let at = 0;
  for (const r of rows) {
    out.set(r, at);
    at += r.length;
  }
  return out;
}

/**
 * Text embeddings of `texts`, in order: float32 [M, embedDim], each row L2-normalised, computed
 * `batch` texts at a time.
 * @throws Error when the tokenizer's vocabulary is larger than the model's (a wrong tokenizer),
 * RangeError for a batch size that is not a positive integer.
 */
export async function embedTexts(
  model: ClipModel,
  tokenizer: EmbedTokenizer,
  texts: readonly string[],
  opts: EmbedTextsOptions = {},
): Promise<Float32Array> {
  const { config } = model;
  const d = config.embedDim, ctx = config.text.contextLength;
  const batch = opts.batch ?? 32;
  if (!Number.isInteger(batch) || batch < 1) {
    throw new RangeError(`embedTexts: batch must be a positive integer, got ${batch}`);
  }
  if (tokenizer.vocabSize > config.text.vocabSize) {
    throw new Error(
      `the tokenizer has ${tokenizer.vocabSize} tokens but the ${config.name} model only ` +
        `${config.text.vocabSize}: wrong tokenizer for this model`,
    );
  }
  const out = new Float32Array(texts.length * d);
  for (let i = 0; i < texts.length; i += batch) {
    const chunk = texts.slice(i, i + batch);
    const ids = tokenizer.tokenize(chunk, ctx);
    const emb = noGrad(() => tidy(() => model.embedTexts(ids)));
    out.set(await emb.toArray(), i * d);
    emb.dispose();
    opts.onProgress?.(i + chunk.length);
  }
  return out;
}
