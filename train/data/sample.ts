/**
 * One sample, from storage to network input: read (an image file, or a row of an HDF5 array),
 * decode to 8-bit RGB, CLIP preprocessing (bicubic resize of the short side, centre crop),
 * optional augmentation, normalisation to Float32 [3, S, S]. The decoding workers and the
 * in-thread fallback both run exactly this code.
 */
import type { DecodedImage } from "../../nn/formats/image.ts";
import { resizeShortSideCenterCrop, toNormalizedCHW } from "../../clip/preprocess.ts";
import { ImageDecodeError, probeImage, readImage } from "../../nn/formats/image.ts";
import type { SampleSource } from "./datasets.ts";
import { sampleId } from "./datasets.ts";
import { H5Error, H5File } from "../../nn/formats/hdf5.ts";
import { applyAugment, type AugmentOptions, augmentParams } from "./augment.ts";
import { seedOf } from "./split.ts";

/** How samples become network inputs (plain data: it is posted to workers). */
export interface PipelineConfig {
  /** Resize short side and centre-crop side. */
  size: number;
  mean: readonly number[];
  std: readonly number[];
  /** Resolved augmentation, or null for none. */
  augment: Required<AugmentOptions> | null;
  /** Seed of the per-sample augmentation. */
  seed: number;
}

/** The seed of sample `index`'s augmentation in `epoch` (independent of batch and worker). */
export function sampleSeed(seed: number, epoch: number, index: number): number {
  return seedOf(seed, epoch, index);
}

/**
 * Resize the short side to `size` (bicubic, as PIL), centre-crop `size` x `size`, augment when
 * configured (seeded by (seed, epoch, index)), normalise: Float32Array [3, size, size].
 */
export function prepareImage(
  img: DecodedImage,
  cfg: PipelineConfig,
  epoch: number,
  index: number,
): Float32Array {
  let x = resizeShortSideCenterCrop(img, cfg.size);
  if (cfg.augment) {
    x = applyAugment(x, augmentParams(cfg.augment, sampleSeed(cfg.seed, epoch, index)));
  }
  return toNormalizedCHW(x, cfg.mean, cfg.std);
}

/** Reads samples of one source; keeps HDF5 files open between reads. Close it when done. */
export class SampleReader {
  private h5: H5File | null = null;

  /** A reader of `source`'s samples. */
  constructor(readonly source: SampleSource) {}

  /**
   * The decoded RGB image of sample `index`.
   * @throws ImageDecodeError naming the file (or `file.h5[x][i]`) and the reason.
   */
  async image(index: number): Promise<DecodedImage> {
    const src = this.source;
    if (src.kind === "files") {
      const path = src.paths[index];
      if (path === undefined) {
        throw new RangeError(`sample ${index} outside [0, ${src.paths.length})`);
      }
      return await readImage(path);
    }
    const id = sampleId(src, index);
    try {
      this.h5 ??= H5File.open(src.path);
      const ds = this.h5.dataset(src.dataset);
      const data = ds.readRows(index, 1);
      return { width: src.width, height: src.height, data };
    } catch (err) {
      if (err instanceof H5Error) throw new ImageDecodeError(id, err.reason, { cause: err });
      throw err;
    }
  }

  /** Closes any open file. */
  close(): void {
    this.h5?.close();
    this.h5 = null;
  }
}

/** What a task computes: network input, the decoded pixels, or only the size (a check). */
export type TaskMode = "prepare" | "decode" | "check";

/** A unit of work: sample `index` of the reader's source. */
export interface SampleTask {
  id: number;
  index: number;
  epoch: number;
  mode: TaskMode;
}

/**
 * A task's outcome. `data` is Float32Array [3, S, S] for "prepare", the RGB bytes (HWC) for
 * "decode", absent for "check"; `width` / `height` are the decoded image's; `note` (only for
 * "check") says when the conversion to RGB surprises (16-bit grayscale). A sample that cannot
 * be read gives `ok: false` with its id (path) and the reason.
 */
export type SampleResult =
  | {
    id: number;
    ok: true;
    width: number;
    height: number;
    data?: Float32Array | Uint8Array;
    note?: string;
  }
  | { id: number; ok: false; path: string; reason: string };

/**
 * Runs one task. Image errors (ImageDecodeError) become `ok: false` results; anything else
 * (a bug, out of memory) is thrown.
 */
export async function runTask(
  reader: SampleReader,
  cfg: PipelineConfig,
  task: SampleTask,
): Promise<SampleResult> {
  try {
    const img = await reader.image(task.index);
    if (task.mode === "check") {
      const src = reader.source;
      // The header again (the file is in the page cache): only to say how it was converted.
      const note = src.kind === "files"
        ? (await probeImage(src.paths[task.index]).catch(() => null))?.note
        : undefined;
      return { id: task.id, ok: true, width: img.width, height: img.height, note };
    }
    if (task.mode === "decode") {
      return { id: task.id, ok: true, width: img.width, height: img.height, data: img.data };
    }
    const data = prepareImage(img, cfg, task.epoch, task.index);
    return { id: task.id, ok: true, width: img.width, height: img.height, data };
  } catch (err) {
    if (err instanceof ImageDecodeError) {
      return { id: task.id, ok: false, path: err.path, reason: err.reason };
    }
    throw err;
  }
}
