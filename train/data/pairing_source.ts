/**
 * A dataset as the pairing step (clip/pairing_run.ts) sees it, and the worker-pool DataLoader as
 * its image source.
 *
 * Image ids: a pairing file names each image by its path relative to the dataset's root (for a
 * `csv` dataset, relative to the manifest's folder), so a dataset folder can move, or be paired
 * on one machine and trained on on another, and the pairing still matches; an image outside the
 * root keeps its absolute path, and a PCAM sample is `file.h5[x][i]` with the file relative.
 * Trainers check a pairing file with the same ids: {@link pairingSplit}.
 */
import { relative, sep } from "node:path";
import type { ImageBatch } from "../../clip/embed.ts";
import type { ImageRangeSource, PairingDataset, PairingSplit } from "../../clip/pairing_run.ts";
import { type Dataset, getSplit, type SampleSource, type Split } from "./datasets.ts";
import { DataLoader, type LoaderOptions } from "./loader.ts";

/** The folder image ids are relative to: the root, or the manifest's folder for `csv`. */
function idBase(ds: Dataset): string {
  if (ds.kind !== "csv") return ds.root;
  const i = ds.root.lastIndexOf("/");
  return i <= 0 ? "/" : ds.root.slice(0, i);
}

function relId(base: string, path: string): string {
  const r = relative(base, path);
  if (r === "" || r === ".." || r.startsWith("../") || r.startsWith("/")) return path;
  return sep === "/" ? r : r.split(sep).join("/");
}

/** The pairing ids of a split's samples, in order (see the module comment). */
export function pairingIds(ds: Dataset, source: SampleSource): string[] {
  const base = idBase(ds);
  if (source.kind === "files") return source.paths.map((p) => relId(base, p));
  const file = relId(base, source.path);
  return Array.from({ length: source.count }, (_, i) => `${file}[${source.dataset}][${i}]`);
}

/** One split of `ds` as the pairing step and readPairing's expectation see it. */
export function pairingSplit(ds: Dataset, split: Split): PairingSplit {
  return { name: split.name, ids: pairingIds(ds, split.source), labels: split.labels };
}

/**
 * `ds` as a {@link PairingDataset} with the splits named in `splits` (default: all present).
 * @throws Error naming a requested split the dataset does not have.
 */
export function pairingDataset(ds: Dataset, splits?: readonly string[]): PairingDataset {
  const names = splits ?? ds.splits.map((s) => s.name);
  const out: PairingSplit[] = [];
  for (const name of names) {
    const s = ds.splits.find((x) => x.name === name);
    if (!s) {
      throw new Error(
        `dataset ${ds.kind} at ${ds.root} has no split "${name}" (it has ${
          ds.splits.map((x) => x.name).join(", ") || "none"
        })`,
      );
    }
    out.push(pairingSplit(ds, s));
  }
  return { kind: ds.kind, root: ds.root, classes: [...ds.classes], splits: out };
}

/** A DataLoader over samples [from, to) of a split, in order. */
class RangeLoader extends DataLoader {
  constructor(split: Split, opts: LoaderOptions, readonly from: number, readonly to: number) {
    super(split, { ...opts, shuffle: false, augment: false });
  }

  /** Samples from..to-1 in order, whatever the epoch. */
  override order(_epoch: number): Int32Array {
    return Int32Array.from({ length: this.to - this.from }, (_, i) => this.from + i);
  }
}

/** Options of {@link loaderImageSource}: the pairing model's preprocessing and the loader's. */
export interface LoaderSourceOptions {
  /** Input side S (the model's image size). */
  size: number;
  /** Normalisation mean of the model. */
  mean: readonly number[];
  /** Normalisation std of the model. */
  std: readonly number[];
  /** How the model resizes; the loader resizes bicubic only. */
  interpolation: "bicubic" | "bilinear";
  /** Images per batch. */
  batch: number;
  /** Decoding workers (0: this thread). */
  workers: number;
}

/**
 * The worker-pool DataLoader as the pairing step's image source: no augmentation, no shuffle,
 * the model's size, mean and std; one loader per requested range, closed when the range is done
 * or abandoned.
 * @throws Error at once for a model that resizes bilinearly (the loader only resizes bicubic).
 */
export function loaderImageSource(ds: Dataset, opts: LoaderSourceOptions): ImageRangeSource {
  if (opts.interpolation !== "bicubic") {
    throw new Error(
      `the pairing model resizes with ${opts.interpolation} interpolation, but the data loader ` +
        `resizes bicubic only`,
    );
  }
  return async function* (split: PairingSplit, from: number, to: number) {
    const s = getSplit(ds, split.name as Split["name"]);
    if (!s) throw new Error(`dataset ${ds.kind} at ${ds.root} has no split "${split.name}"`);
    await using loader = new RangeLoader(
      s,
      {
        batchSize: opts.batch,
        size: opts.size,
        mean: opts.mean,
        std: opts.std,
        workers: opts.workers,
      },
      from,
      to,
    );
    for await (const b of loader.cpuBatches()) {
      const batch: ImageBatch = { images: b.images, count: b.size };
      yield batch;
    }
  };
}
