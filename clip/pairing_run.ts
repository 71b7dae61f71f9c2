/**
 * The pairing step from start to end (DESIGN.md section 1, step 1): embed the corpus once
 * (cached), embed every split's images (saved in chunks, resumable), take the top-k reports of
 * each image, and write one pairing file per split (clip/pairing.ts) and `summary.json`.
 *
 * Library code: typed options in, a summary out, progress through a callback, no printing. The
 * caller supplies the images ({@link ImageRangeSource}: the command line feeds the worker-pool
 * DataLoader through train/data/pairing_source.ts) and the model (any {@link ImageBackbone} +
 * {@link TextEncoder} + {@link TextTokenizer}: CLIP's towers or CONCH's).
 */
import { writeFileAtomic } from "../nn/formats/safe_write.ts";
import type { ImageBackbone, TextEncoder, TextTokenizer } from "./backbone.ts";
import {
  datasetFingerprint,
  formatPairing,
  PAIRING_FORMAT,
  pairingFileName,
  type PairingHeader,
  round6,
  type ScoreStats,
  scoreStats,
} from "./pairing.ts";
import type { Corpus } from "./pairing_corpus.ts";
import { sha256Hex } from "./pairing_corpus.ts";
import { embedSplitImages, type ImageRangeSource, type PairingSplit } from "./pairing_images.ts";
import { type Histogram, histogram, MAX_K, topKReports } from "./pairing_match.ts";
import { embedCorpus } from "./pairing_text.ts";

export type { ImageRangeSource, PairingSplit } from "./pairing_images.ts";

/** Who the pairing model is: what the header records and the caches are keyed by. */
export interface PairingModelIdentity {
  /** Configuration name (e.g. "ViT-B-16", "conch_ViT-B-16"). */
  name: string;
  /** Weights as given by the user, or "random (seed S)". */
  weights: string;
  /** SHA-256 of the weights file; null for random weights (then `weights` names the seed). */
  weightsSha256: string | null;
  /** The model's full configuration as JSON (part of the cache key). */
  config: string;
  /** The tokenizer as given by the user (a path). */
  tokenizer: string;
  /** A digest of the tokenizer's content (part of the cache key). */
  tokenizerSha256: string;
}

/** The model that pairs: its two towers, its tokenizer and who it is. */
export interface PairingModel {
  /** The image tower (its size, mean, std and interpolation preprocess the images). */
  image: ImageBackbone;
  /** The text tower. */
  text: TextEncoder;
  /** The text tower's tokenizer. */
  tokenizer: TextTokenizer;
  /** What the files record about it. */
  identity: PairingModelIdentity;
}

/** A dataset as the pairing step sees it (plain data; train/data/pairing_source.ts makes it). */
export interface PairingDataset {
  /** Dataset kind (crc, pcam, folder, ...). */
  kind: string;
  /** Its root folder (or manifest file), absolute. */
  root: string;
  /** Class names. */
  classes: string[];
  /** The splits to pair. */
  splits: PairingSplit[];
}

/** A progress event of {@link runPairing}. */
export type PairingProgress =
  | { stage: "corpus"; done: number; total: number; cached: boolean }
  | {
    stage: "images";
    split: string;
    done: number;
    total: number;
    cached: number;
    saved: boolean;
  }
  | { stage: "match"; split: string }
  | { stage: "write"; path: string };

/** Options of {@link runPairing}. */
export interface RunPairingOptions {
  /** Output folder (must exist): `pairs-<split>.jsonl` and `summary.json` go there. */
  out: string;
  /** Cache folder (must exist; default `<out>/cache`, created when missing). */
  cacheDir?: string;
  /** Reports per image, 1..64 (default 5). */
  k?: number;
  /** Score a report by its best context-sized window instead of truncating it. */
  chunk?: boolean;
  /** Token rows per text batch (default 64). */
  textBatch?: number;
  /** Images per saved chunk (default 256). */
  imageChunk?: number;
  /** Abort between batches; finished image chunks stay saved for a rerun. */
  signal?: AbortSignal;
  /** Progress callback. */
  onProgress?: (p: PairingProgress) => void;
  /** The time written as `created` (default now). */
  now?: Date;
}

/** One of the most used reports of a split. */
export interface UsedReport {
  /** Report index. */
  report: number;
  /** Its 1-based line in the corpus file. */
  line: number;
  /** Images paired with it at top-1. */
  count: number;
  /** Its first 100 characters. */
  text: string;
}

/** What the summary says about one split. */
export interface SplitSummary {
  /** The pairing file written (path). */
  file: string;
  /** Images. */
  count: number;
  /** Statistics of the top-1 scores. */
  scores: ScoreStats;
  /** Statistics of all k scores. */
  scores_all_k: ScoreStats;
  /** 20-bin histogram of the top-1 scores. */
  histogram: Histogram;
  /** Distinct reports at top-1. */
  distinct_top1: number;
  /** The 10 reports most used at top-1. */
  top_reports: UsedReport[];
  /** Images embedded by this run. */
  embedded: number;
  /** Images read from saved chunks (a resumed or repeated run). */
  cached: number;
}

/** `summary.json`: the whole run (field names as in the file, like the pairing header's). */
export interface PairingSummary {
  /** "clipit-pairing-summary/1". */
  format: string;
  /** When it was made. */
  created: string;
  /** Reports per image. */
  k: number;
  /** The model, as in the pairing files' headers. */
  model: PairingHeader["model"];
  /** The corpus, as in the headers, plus how it was embedded. */
  corpus: PairingHeader["corpus"] & {
    /** Embedded rows: reports, or windows in chunk mode. */
    rows: number;
    /** Most windows of one report. */
    max_windows: number;
    /** Whether the embeddings came from the cache. */
    cached: boolean;
  };
  /** Chunk mode's top-k: k', whether it was clamped, images completed on the CPU. */
  chunk: { enabled: boolean; k_prime: number; clamped: boolean; cpu_rows: number };
  /** The dataset. */
  dataset: { kind: string; root: string; classes: string[] };
  /** Per split, in the order paired. */
  splits: Record<string, SplitSummary>;
}

/** The cache key of the model + tokenizer (identity without the display fields). */
export function modelKey(id: PairingModelIdentity): string {
  return sha256Hex(JSON.stringify({
    weights: id.weightsSha256 ?? id.weights,
    config: id.config,
    tokenizer: id.tokenizerSha256,
  }));
}

function topReports(indices: Int32Array, k: number, corpus: Corpus, n = 10): UsedReport[] {
  const counts = new Map<number, number>();
  for (let i = 0; i < indices.length; i += k) {
    counts.set(indices[i], (counts.get(indices[i]) ?? 0) + 1);
  }
  return [...counts].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, n).map(([r, c]) => ({
    report: r,
    line: corpus.lines[r],
    count: c,
    text: [...corpus.reports[r]].slice(0, 100).join(""),
  }));
}

/**
 * Pair every image of every split of `dataset` with its top-k reports of `corpus` through
 * `model`, writing `pairs-<split>.jsonl` per split and `summary.json` into `opts.out` (each file
 * atomically). Re-running with the same arguments reuses the corpus cache and every saved image
 * chunk. Needs the GPU initialised (kernels/device.ts `init`).
 * @throws RangeError for k outside 1..min(64, reports); Error for an image preprocessing the
 * data loader cannot do, a non-finite embedding (naming the image or report), or a failed write;
 * the signal's reason when aborted.
 */
export async function runPairing(
  model: PairingModel,
  corpus: Corpus,
  dataset: PairingDataset,
  images: ImageRangeSource,
  opts: RunPairingOptions,
): Promise<PairingSummary> {
  const k = opts.k ?? 5;
  const M = corpus.reports.length;
  if (!Number.isInteger(k) || k < 1 || k > Math.min(MAX_K, M)) {
    throw new RangeError(
      `k = ${k} must be an integer in 1..${Math.min(MAX_K, M)} (at most ${MAX_K}, and at most ` +
        `the ${M} reports of corpus ${corpus.path})`,
    );
  }
  if (model.image.featureDim !== model.text.embedDim) {
    throw new Error(
      `${model.image.name} gives ${model.image.featureDim}-d embeddings but ${model.text.name} ` +
        `${model.text.embedDim}-d: not one model's two towers`,
    );
  }
  const cacheDir = opts.cacheDir ?? `${opts.out}/cache`;
  await Deno.mkdir(cacheDir, { recursive: true });
  const key = modelKey(model.identity);
  const created = (opts.now ?? new Date()).toISOString();
  const chunk = opts.chunk ?? false;

  const text = await embedCorpus(model.text, model.tokenizer, corpus, {
    chunk,
    batch: opts.textBatch,
    cacheDir,
    modelKey: key,
    signal: opts.signal,
    onProgress: (done, total) => opts.onProgress?.({ stage: "corpus", done, total, cached: false }),
  });
  if (text.cached) {
    opts.onProgress?.({ stage: "corpus", done: text.rows, total: text.rows, cached: true });
  }

  const id = model.identity;
  const modelInfo: PairingHeader["model"] = {
    name: id.name,
    weights: id.weights,
    weights_sha256: id.weightsSha256,
    context_length: model.text.contextLength,
    chunk,
    tokenizer: id.tokenizer,
  };
  const corpusInfo: PairingHeader["corpus"] = {
    path: corpus.path,
    sha256: corpus.sha256,
    reports: M,
    lines: corpus.totalLines,
    blank: corpus.blankLines,
    truncated: text.truncated,
  };
  const summary: PairingSummary = {
    format: "clipit-pairing-summary/1",
    created,
    k,
    model: modelInfo,
    corpus: { ...corpusInfo, rows: text.rows, max_windows: text.maxWindows, cached: text.cached },
    chunk: { enabled: chunk, k_prime: k, clamped: false, cpu_rows: 0 },
    dataset: { kind: dataset.kind, root: dataset.root, classes: dataset.classes },
    splits: {},
  };

  for (const split of dataset.splits) {
    const img = await embedSplitImages(model.image, split, images, {
      cacheDir,
      modelKey: key,
      datasetRoot: dataset.root,
      chunkSize: opts.imageChunk,
      signal: opts.signal,
      onProgress: (p) => opts.onProgress?.({ stage: "images", split: split.name, ...p }),
    });
    opts.onProgress?.({ stage: "match", split: split.name });
    const top = await topKReports(img.embeds, text, M, k);
    summary.chunk.k_prime = top.kPrime;
    summary.chunk.clamped = top.clamped;
    summary.chunk.cpu_rows += top.cpuRows;

    const N = split.ids.length;
    const top1 = new Float64Array(N);
    for (let i = 0; i < N; i++) top1[i] = round6(top.scores[i * k]);
    const header: PairingHeader = {
      format: PAIRING_FORMAT,
      split: split.name,
      k,
      created,
      dataset: {
        kind: dataset.kind,
        root: dataset.root,
        classes: dataset.classes,
        count: N,
        fingerprint: datasetFingerprint(split.ids, split.labels, dataset.classes),
      },
      corpus: corpusInfo,
      model: modelInfo,
      scores: scoreStats(top1),
    };
    const path = `${opts.out}/${pairingFileName(split.name)}`;
    opts.onProgress?.({ stage: "write", path });
    await writeFileAtomic(
      path,
      formatPairing(header, {
        ids: split.ids,
        labels: split.labels,
        indices: top.indices,
        scores: top.scores,
        reportLines: corpus.lines,
      }),
    );
    const all = Array.from(top.scores, round6);
    summary.splits[split.name] = {
      file: path,
      count: N,
      scores: header.scores,
      scores_all_k: scoreStats(all),
      histogram: histogram(top1, 20),
      distinct_top1: new Set(Array.from({ length: N }, (_, i) => top.indices[i * k])).size,
      top_reports: topReports(top.indices, k, corpus),
      embedded: img.embedded,
      cached: img.cached,
    };
  }
  const path = `${opts.out}/summary.json`;
  opts.onProgress?.({ stage: "write", path });
  await writeFileAtomic(path, JSON.stringify(summary, null, 1) + "\n");
  return summary;
}
