/**
 * The image side of pairing: every image of a split through the pairing model's image tower,
 * L2-normalised, saved in chunks as it goes so an interrupted run resumes.
 *
 * The split is cut into chunks of `chunkSize` images (default 256); chunk c covers images
 * [c * chunkSize, (c + 1) * chunkSize). Each finished chunk is written atomically to
 * `<cache>/<split>-images-<tag>-<start>.safetensors` (tag: a short hash of the model and the
 * preprocessing, so runs with different models can share a cache folder). A chunk file is reused
 * only when its stored key matches: the model (weights SHA-256, configuration), the
 * preprocessing (size, mean, std, interpolation), the dataset root, the split, the chunk's start
 * and the ids of exactly its images; anything else is recomputed and overwritten. Missing chunks
 * are embedded in contiguous runs, each from one stream of batches (one loader, not one per
 * chunk).
 */
import { noGrad } from "../nn/autograd.ts";
import { tensor, tidy } from "../nn/tensor.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import type { ImageBackbone } from "./backbone.ts";
import type { ImageBatch } from "./embed.ts";
import { sha256Hex } from "./pairing_corpus.ts";
import { normalizeRows } from "./pairing_text.ts";

/** One split as the pairing step sees it: plain data, no dataset types. */
export interface PairingSplit {
  /** The split's name ("train", "val", "test"). */
  name: string;
  /** A stable id per image, in split order (file path relative to the dataset root, ...). */
  ids: readonly string[];
  /** Class index per image, in split order. */
  labels: Int32Array;
}

/**
 * Preprocessed images [from, to) of `split`, in order, in batches (normalised with the pairing
 * model's size, mean and std; no augmentation). The pairing step calls it once per contiguous
 * run of images it still needs; stopping the iteration early must release its resources.
 */
export type ImageRangeSource = (
  split: PairingSplit,
  from: number,
  to: number,
) => AsyncIterable<ImageBatch>;

/** Options of {@link embedSplitImages}. */
export interface EmbedSplitOptions {
  /** Cache folder (must exist); without one nothing is saved or resumed. */
  cacheDir?: string;
  /** What identifies the model (weights SHA-256, configuration); required with `cacheDir`. */
  modelKey?: string;
  /** The dataset's root (part of the chunk key). */
  datasetRoot?: string;
  /** Images per saved chunk (default 256). */
  chunkSize?: number;
  /** Stops after the current batch (the finished chunks stay saved): throws its reason. */
  signal?: AbortSignal;
  /** Images done (from the cache or embedded) of `total`, and whether a chunk was just saved. */
  onProgress?: (p: { done: number; total: number; cached: number; saved: boolean }) => void;
}

/** The embeddings of a split and how they were obtained. */
export interface SplitEmbeddings {
  /** Float32 [N, d], rows L2-normalised, in split order. */
  embeds: Float32Array;
  /** Row length d. */
  dim: number;
  /** Images embedded by this call. */
  embedded: number;
  /** Images read back from saved chunks. */
  cached: number;
}

function preprocessKey(backbone: ImageBackbone): object {
  return {
    size: backbone.imageSize,
    mean: [...backbone.mean],
    std: [...backbone.std],
    interpolation: backbone.interpolation,
  };
}

async function readChunk(file: string, key: string, rows: number, d: number) {
  let st: SafetensorsFile;
  try {
    st = await SafetensorsFile.open(file);
  } catch {
    return null;
  }
  try {
    if (st.metadata.key !== key) return null;
    const e = st.entry("embeds");
    if (e.dtype !== "F32" || e.shape.length !== 2 || e.shape[0] !== rows || e.shape[1] !== d) {
      return null;
    }
    return await st.readFloat32("embeds");
  } catch {
    return null;
  } finally {
    st.close();
  }
}

/**
 * The L2-normalised image embeddings of every image of `split` through `backbone`, images from
 * `source`, saved and resumed in chunks (see the module comment).
 * @throws Error naming the image whose embedding is not finite, or a batch of the wrong size;
 * the signal's reason when aborted.
 */
export async function embedSplitImages(
  backbone: ImageBackbone,
  split: PairingSplit,
  source: ImageRangeSource,
  opts: EmbedSplitOptions = {},
): Promise<SplitEmbeddings> {
  const N = split.ids.length, d = backbone.featureDim, S = backbone.imageSize;
  const chunkSize = opts.chunkSize ?? 256;
  if (!Number.isInteger(chunkSize) || chunkSize < 1) {
    throw new RangeError(
      `embedSplitImages: chunkSize must be a positive integer, got ${chunkSize}`,
    );
  }
  if (opts.cacheDir !== undefined && opts.modelKey === undefined) {
    throw new Error("embedSplitImages: a cache folder needs opts.modelKey");
  }
  const embeds = new Float32Array(N * d);
  const chunks = Math.ceil(N / chunkSize);
  const tag = sha256Hex(JSON.stringify({
    model: opts.modelKey,
    pre: preprocessKey(backbone),
    root: opts.datasetRoot,
  })).slice(0, 8);
  const fileOf = (c: number) =>
    `${opts.cacheDir}/${split.name}-images-${tag}-${c * chunkSize}.safetensors`;
  const keyOf = (c: number) =>
    sha256Hex(JSON.stringify({
      what: "clipit-pairing image embeddings/1",
      model: opts.modelKey,
      pre: preprocessKey(backbone),
      root: opts.datasetRoot,
      split: split.name,
      start: c * chunkSize,
      ids: split.ids.slice(c * chunkSize, Math.min(N, (c + 1) * chunkSize)),
    }));

  // Chunks already saved.
  const done = new Uint8Array(chunks);
  let cached = 0;
  if (opts.cacheDir !== undefined) {
    for (let c = 0; c < chunks; c++) {
      const rows = Math.min(N, (c + 1) * chunkSize) - c * chunkSize;
      const got = await readChunk(fileOf(c), keyOf(c), rows, d);
      if (got) {
        embeds.set(got, c * chunkSize * d);
        done[c] = 1;
        cached += rows;
      }
    }
  }
  let progress = cached;
  opts.onProgress?.({ done: progress, total: N, cached, saved: false });

  let embedded = 0;
  for (let c = 0; c < chunks; c++) {
    if (done[c]) continue;
    let end = c;
    while (end < chunks && !done[end]) end++; // a run of missing chunks [c, end)
    const from = c * chunkSize, to = Math.min(N, end * chunkSize);
    let at = from; // next image of the run
    let chunk = c; // the chunk `at` is in
    opts.signal?.throwIfAborted();
    for await (const { images, count } of source(split, from, to)) {
      if (images.length !== count * 3 * S * S || at + count > to) {
        throw new Error(
          `images of split ${split.name}: a batch of ${count} at #${at} does not fit ` +
            `${to - from} images of 3x${S}x${S} from #${from}`,
        );
      }
      const out = noGrad(() => tidy(() => backbone.features(tensor(images, [count, 3, S, S]))));
      let vals: Float32Array;
      try {
        vals = await out.toFloat32Array();
      } finally {
        out.dispose();
      }
      if (vals.length !== count * d) {
        throw new Error(`${backbone.name}: ${count} images gave ${vals.length} values`);
      }
      const bad = normalizeRows(vals, d);
      if (bad >= 0) {
        throw new Error(
          `image #${at + bad} of split ${split.name} (${split.ids[at + bad]}): its embedding ` +
            `is not finite (NaN or Inf from ${backbone.name})`,
        );
      }
      embeds.set(vals, at * d);
      at += count;
      embedded += count;
      // Save every chunk this batch completed.
      let saved = false;
      while (chunk < end && at >= Math.min(N, (chunk + 1) * chunkSize)) {
        if (opts.cacheDir !== undefined) {
          const s = chunk * chunkSize, e = Math.min(N, s + chunkSize);
          await writeSafetensors(fileOf(chunk), {
            embeds: { dtype: "F32", shape: [e - s, d], data: embeds.subarray(s * d, e * d) },
          }, { key: keyOf(chunk), split: split.name, start: String(s), count: String(e - s) });
          saved = true;
        }
        chunk++;
      }
      progress += count;
      opts.onProgress?.({ done: progress, total: N, cached, saved });
      opts.signal?.throwIfAborted();
    }
    if (at !== to) {
      throw new Error(
        `images of split ${split.name}: the source gave ${at - from} of images #${from}..#${
          to - 1
        } (${to - from})`,
      );
    }
    c = end - 1;
  }
  return { embeds, dim: d, embedded, cached };
}
