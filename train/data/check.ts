/**
 * Checking a split before training: every image read by the decoding workers (or, quickly, only
 * counted), tallied per class with the image sizes and every file that cannot be read, so a
 * problem in one file among 100,000 shows up before training does. `cli.ts data` prints it.
 */
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from "../../clip/preprocess.ts";
import type { Dataset, Split } from "./datasets.ts";
import type { BadImage } from "./loader.ts";
import { DecodePool } from "./pool.ts";

/** Per-class statistics of one split. */
export interface ClassReport {
  name: string;
  count: number;
  /** "WxH" -> number of images (empty with `quick`, except for HDF5 arrays). */
  sizes: Record<string, number>;
  unreadable: number;
}

/** The report of one split. */
export interface SplitReport {
  name: string;
  count: number;
  classes: ClassReport[];
  unreadable: BadImage[];
  /** Readable images whose conversion to RGB surprises (16-bit grayscale), with the note. */
  notes: { path: string; note: string }[];
}

/** Options of {@link checkSplit}. */
export interface CheckOptions {
  /** Decoding workers (0: decode in this thread). */
  workers: number;
  /** Count the files only; do not read the images. */
  quick: boolean;
  /** Called every 1,000 images with the number done and the split's size. */
  progress?: (done: number, total: number) => void;
}

/**
 * Reads every image of `split` (unless `quick`) with `workers` decoding workers and tallies
 * counts, sizes and unreadable files per class. `progress` is called now and then with the
 * number of images done.
 */
export async function checkSplit(
  ds: Dataset,
  split: Split,
  opts: CheckOptions,
): Promise<SplitReport> {
  const classes: ClassReport[] = ds.classes.map((name) => ({
    name,
    count: 0,
    sizes: {},
    unreadable: 0,
  }));
  const n = split.labels.length;
  for (let i = 0; i < n; i++) classes[split.labels[i]].count++;
  const unreadable: BadImage[] = [];
  const notes: { path: string; note: string }[] = [];
  const src = split.source;
  if (opts.quick) {
    if (src.kind === "h5") {
      for (const c of classes) if (c.count) c.sizes[`${src.width}x${src.height}`] = c.count;
    }
    return { name: split.name, count: n, classes, unreadable, notes };
  }
  const pool = new DecodePool(
    src,
    { size: 1, mean: [...OPENAI_CLIP_MEAN], std: [...OPENAI_CLIP_STD], augment: null, seed: 0 },
    opts.workers,
  );
  try {
    const window = Math.max(16, 32 * Math.max(1, opts.workers));
    let next = 0, done = 0;
    const worker = async () => {
      while (next < n) {
        const i = next++;
        const r = await pool.run(i, 0, "check");
        const c = classes[split.labels[i]];
        if (r.ok) {
          const key = `${r.width}x${r.height}`;
          c.sizes[key] = (c.sizes[key] ?? 0) + 1;
          if (r.note && src.kind === "files") notes.push({ path: src.paths[i], note: r.note });
        } else {
          c.unreadable++;
          unreadable.push({ path: r.path, reason: r.reason });
        }
        if (++done % 1000 === 0) opts.progress?.(done, n);
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, n) }, worker));
  } finally {
    await pool.close();
  }
  const byPath = (a: { path: string }, b: { path: string }) =>
    a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
  unreadable.sort(byPath);
  notes.sort(byPath);
  return { name: split.name, count: n, classes, unreadable, notes };
}
