/**
 * The data loader: batches of preprocessed images as GPU tensors [B, 3, S, S] (float32) with
 * int32 labels [B], decoded ahead of the consumer by parallel workers, in a deterministic order
 * for a seed, optionally augmented.
 *
 * Order: epoch e visits a permutation seeded by (seed, e) (or 0..N-1 without shuffling).
 * Augmentation of sample i in epoch e is seeded by (seed, e, i), so results do not depend on
 * the number of workers or on timing. Samples are requested `prefetch` batches ahead and
 * consumed strictly in order.
 *
 * Bad images: with `onBadImage: "error"` (default) the first unreadable sample stops the epoch
 * with an ImageDecodeError naming the file and the reason; with "skip" it is left out (the next
 * good samples fill the batch), counted and listed in {@link DataLoader.skipped}.
 */
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from "../../clip/preprocess.ts";
import { type Tensor, tensor } from "../../nn/tensor.ts";
import type { AugmentOptions } from "./augment.ts";
import { resolveAugment } from "./augment.ts";
import { ImageDecodeError } from "../../nn/formats/image.ts";
import type { Split } from "./datasets.ts";
import { DecodePool, defaultWorkers } from "./pool.ts";
import type { PipelineConfig, SampleResult } from "./sample.ts";
import { permutation, seedOf } from "./split.ts";

/** What to do with an image that cannot be read. */
export type OnBadImage = "error" | "skip";

/** Options of {@link DataLoader}. */
export interface LoaderOptions {
  /** Images per batch. */
  batchSize: number;
  /** Side of the square network input (resize short side + centre crop; default 224). */
  size?: number;
  /** Normalisation mean (default OpenAI CLIP's). */
  mean?: readonly number[];
  /** Normalisation std (default OpenAI CLIP's). */
  std?: readonly number[];
  /** Visit samples in a seeded random order each epoch (default true). */
  shuffle?: boolean;
  /** Seed of the order and of the augmentation (default 0). */
  seed?: number;
  /** Augmentation: false (default), true (defaults) or options. */
  augment?: boolean | AugmentOptions;
  /** Decoding worker threads; 0 decodes in this thread (default: cores - 1, at most 8). */
  workers?: number;
  /** Batches decoded ahead of the consumer (default 3). */
  prefetch?: number;
  /** Drop a last batch smaller than batchSize (default false). */
  dropLast?: boolean;
  /** Fail on an unreadable image (default) or skip it and list it. */
  onBadImage?: OnBadImage;
  /**
   * Keep prepared samples in memory, up to this many bytes, so later epochs skip decoding
   * (default 256 MiB; 0 disables). Only without augmentation: an augmented sample differs per
   * epoch. A split that does not fit is not cached at all.
   */
  cacheBytes?: number;
}

/** A batch on the CPU. */
export interface CpuBatch {
  /** Float32 [size, 3, S, S]. */
  images: Float32Array;
  /** Int32 [size]. */
  labels: Int32Array;
  /** Sample indices in the split, [size]. */
  indices: Int32Array;
  /** Images in this batch (batchSize except perhaps the last). */
  size: number;
  /** Position in the epoch's order just after this batch (where a resumed epoch starts). */
  end: number;
}

/** A batch on the GPU; the caller owns (and disposes) the tensors. */
export interface Batch {
  /** float32 [size, 3, S, S]. */
  images: Tensor;
  /** int32 [size]. */
  labels: Tensor;
  /** Sample indices in the split. */
  indices: Int32Array;
  /** Images in this batch (batchSize except perhaps the last). */
  size: number;
  /** Position in the epoch's order just after this batch (where a resumed epoch starts). */
  end: number;
}

/** An image that could not be read. */
export interface BadImage {
  /** File path, or `file.h5[x][i]`. */
  path: string;
  /** Why it could not be read (the decoder's message). */
  reason: string;
}

/** Loads one split in batches; create one per split, close it when done. */
export class DataLoader {
  /** Images per batch. */
  readonly batchSize: number;
  /** Side S of the square images, in pixels. */
  readonly size: number;
  /** Whether each epoch visits the samples in a seeded random order. */
  readonly shuffle: boolean;
  /** Seed of the order and of the augmentation. */
  readonly seed: number;
  /** Whether a last batch smaller than `batchSize` is dropped. */
  readonly dropLast: boolean;
  /** What happens on an unreadable image: throw ("error") or leave it out ("skip"). */
  readonly onBadImage: OnBadImage;
  /** Batches decoded ahead of the consumer. */
  readonly prefetch: number;
  private pool: DecodePool;
  /** Prepared samples by index, when the whole split fits in `cacheBytes` (see LoaderOptions). */
  private cache: Map<number, Float32Array> | null = null;
  private skippedMap = new Map<string, string>();
  private running = false;

  /**
   * A loader of `split`. Starts the workers at once.
   * @throws RangeError for a bad batch size, size, prefetch or augmentation option.
   */
  constructor(readonly split: Split, opts: LoaderOptions) {
    const { batchSize } = opts;
    if (!Number.isInteger(batchSize) || batchSize <= 0) {
      throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
    }
    this.batchSize = batchSize;
    this.size = opts.size ?? 224;
    if (!Number.isInteger(this.size) || this.size <= 0) {
      throw new RangeError(`size must be a positive integer, got ${this.size}`);
    }
    this.shuffle = opts.shuffle ?? true;
    this.seed = opts.seed ?? 0;
    this.dropLast = opts.dropLast ?? false;
    this.onBadImage = opts.onBadImage ?? "error";
    if (this.onBadImage !== "error" && this.onBadImage !== "skip") {
      throw new RangeError(`onBadImage must be "error" or "skip", got ${this.onBadImage}`);
    }
    this.prefetch = opts.prefetch ?? 3;
    if (!Number.isInteger(this.prefetch) || this.prefetch < 1) {
      throw new RangeError(`prefetch must be a positive integer, got ${this.prefetch}`);
    }
    const config: PipelineConfig = {
      size: this.size,
      mean: [...(opts.mean ?? OPENAI_CLIP_MEAN)],
      std: [...(opts.std ?? OPENAI_CLIP_STD)],
      augment: resolveAugment(opts.augment ?? false),
      seed: this.seed,
    };
    this.pool = new DecodePool(split.source, config, opts.workers ?? defaultWorkers());
    const planeBytes = 3 * this.size * this.size * 4;
    if (!config.augment && split.labels.length * planeBytes <= (opts.cacheBytes ?? 256 * 2 ** 20)) {
      this.cache = new Map();
    }
  }

  /** Samples in the split. */
  get length(): number {
    return this.split.labels.length;
  }

  /** Batches per epoch (when no image is skipped). */
  get numBatches(): number {
    const n = this.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** Worker threads decoding for this loader. */
  get workers(): number {
    return this.pool.size;
  }

  /** The order in which epoch `epoch` visits the samples. */
  order(epoch: number): Int32Array {
    if (!this.shuffle) return Int32Array.from({ length: this.length }, (_, i) => i);
    return permutation(this.length, seedOf(this.seed, 0x0e90c4, epoch));
  }

  /** Images skipped so far (each listed once), with their reasons. */
  get skipped(): BadImage[] {
    return [...this.skippedMap].map(([path, reason]) => ({ path, reason }));
  }

  /**
   * The batches of epoch `epoch` on the CPU, in order, starting at position `from` of the
   * epoch's order (a batch's `end`: how a resumed run continues exactly where it stopped). One
   * epoch at a time per loader.
   * @throws ImageDecodeError for an unreadable image when onBadImage is "error".
   */
  async *cpuBatches(epoch = 0, from = 0): AsyncGenerator<CpuBatch> {
    if (this.running) throw new Error("DataLoader: an epoch is already running on this loader");
    this.running = true;
    const order = this.order(epoch);
    const n = order.length;
    if (!Number.isInteger(from) || from < 0 || from > n) {
      this.running = false;
      throw new RangeError(`DataLoader: start position ${from} not in [0, ${n}]`);
    }
    const B = this.batchSize;
    const plane = 3 * this.size * this.size;
    const window = this.prefetch * B;
    const inflight = new Map<number, Promise<SampleResult>>();
    let submitted = from;
    const submit = () => {
      while (submitted < n && inflight.size < window) {
        const hit = this.cache?.get(order[submitted]);
        const p = hit
          ? Promise.resolve<SampleResult>({
            id: order[submitted],
            ok: true,
            width: 0,
            height: 0,
            data: hit,
          })
          : this.pool.run(order[submitted], epoch, "prepare");
        p.catch(() => {}); // awaited in order below; avoid an unhandled rejection if abandoned
        inflight.set(submitted++, p);
      }
    };
    try {
      let images = new Float32Array(B * plane);
      let labels = new Int32Array(B);
      let indices = new Int32Array(B);
      let fill = 0;
      for (let pos = from; pos < n; pos++) {
        submit();
        const res = await inflight.get(pos)!;
        inflight.delete(pos);
        const index = order[pos];
        if (!res.ok) {
          if (this.onBadImage === "error") throw new ImageDecodeError(res.path, res.reason);
          this.skippedMap.set(res.path, res.reason);
          continue;
        }
        const data = res.data as Float32Array;
        this.cache?.set(index, data);
        if (data.length !== plane) {
          throw new Error(`sample ${index}: got ${data.length} values, expected ${plane}`);
        }
        images.set(data, fill * plane);
        labels[fill] = this.split.labels[index];
        indices[fill] = index;
        fill++;
        if (fill === B) {
          submit(); // keep the workers busy while the consumer works on this batch
          yield { images, labels, indices, size: B, end: pos + 1 };
          images = new Float32Array(B * plane);
          labels = new Int32Array(B);
          indices = new Int32Array(B);
          fill = 0;
        }
      }
      if (fill > 0 && !this.dropLast) {
        yield {
          images: images.subarray(0, fill * plane),
          labels: labels.subarray(0, fill),
          indices: indices.subarray(0, fill),
          size: fill,
          end: n,
        };
      }
    } finally {
      this.running = false;
      // Abandoned results are dropped; their tasks still finish in the workers.
      inflight.clear();
    }
  }

  /**
   * The batches of epoch `epoch` uploaded to the GPU (needs `init()` from kernels/device.ts),
   * starting at position `from` of the epoch's order.
   * The caller disposes each batch's tensors (or creates them inside its own `tidy`).
   * @throws ImageDecodeError for an unreadable image when onBadImage is "error".
   */
  async *batches(epoch = 0, from = 0): AsyncGenerator<Batch> {
    for await (const b of this.cpuBatches(epoch, from)) {
      const images = tensor(b.images, [b.size, 3, this.size, this.size]);
      const labels = tensor(b.labels, [b.size], { dtype: "int32" });
      yield { images, labels, indices: b.indices, size: b.size, end: b.end };
    }
  }

  /** Stops the workers. The loader cannot be used afterwards. */
  async close(): Promise<void> {
    await this.pool.close();
  }

  /** `await using loader = new DataLoader(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A human-readable summary of skipped images: a count, then one line per image. */
export function formatSkipped(list: BadImage[]): string {
  if (list.length === 0) return "no images skipped";
  return [`${list.length} image(s) skipped:`, ...list.map((b) => `  ${b.path}: ${b.reason}`)].join(
    "\n",
  );
}
