/**
 * The built-in demo's synthetic histology world: H&E-like tiles whose class follows from a few
 * visual factors (train/data/world_factors.ts), drawn under strong nuisance variation
 * (world_draw.ts), each with a report that describes its factors in varied words and never names
 * its class (world_text.ts), and an unpaired report corpus.
 *
 * Splits (sizes are {@link WorldOptions}):
 * - `pretrain`: images with their own reports, factors drawn uniformly over every combination
 *   (also those no class has), for pretraining the demo's tiny CLIP contrastively. It plays the
 *   part of the web-scale pairs a real pathology CLIP was trained on.
 * - `train`, `val`, `test`: labelled images, classes balanced, factors drawn uniformly from their
 *   class's combinations. `train` may carry label noise.
 * - the corpus: reports written from independent random factor draws, matched to no image, so
 *   CLIP-IT's pairing can only work through image-report similarity.
 *
 * Everything is a pure function of (options, split, index): sample i is drawn from seeds hashed
 * from them, so any sample can be made alone, in any order, in any worker, and the same options
 * always give the same bytes. {@link writeWorld} puts the world on disk in the formats the real
 * pipeline reads (PNG files, a `csv` dataset manifest, a corpus text file), so the demo runs
 * exactly what users run.
 */
import { join } from "node:path";
import { encode as encodePng } from "fast-png";
import { WordTokenizer } from "../../clip/word_tokenizer.ts";
import type { DecodedImage } from "../../nn/formats/image.ts";
import { drawTile } from "./world_draw.ts";
import {
  CLASS_RULE_TEXT,
  CLASS_SUPPORTS,
  classOf,
  drawAnyFactors,
  drawClassFactors,
  FACTOR_NAMES,
  type Factors,
  WORLD_CLASSES,
  WORLD_FACTORS,
  WorldRng,
  worldSeed,
} from "./world_factors.ts";
import { FACTOR_PHRASES, worldVocabulary, writeReport } from "./world_text.ts";

export type { RgbImage } from "./world_draw.ts";

/** Sizes and seed of a world. Every field has a demo default ({@link WORLD_DEFAULTS}). */
export interface WorldOptions {
  /** Seed of everything (default 1). */
  seed?: number;
  /** Side of the square tiles in pixels (default 32; the demo's tiny CLIP reads 32). */
  imageSize?: number;
  /** Pretraining image-report pairs (default 2000). */
  pretrain?: number;
  /** Labelled training images per class (default 16): few, as CLIP-IT's setting wants. */
  trainPerClass?: number;
  /** Validation images per class (default 32). */
  valPerClass?: number;
  /** Test images per class (default 64). */
  testPerClass?: number;
  /** Reports in the unpaired corpus (default 1000). */
  corpus?: number;
  /** Fraction of training labels replaced by another class, uniformly (default 0). */
  labelNoise?: number;
}

/** The demo's world: small enough to write in seconds and train on a slow software GPU. */
export const WORLD_DEFAULTS: Readonly<Required<WorldOptions>> = Object.freeze({
  seed: 1,
  imageSize: 32,
  pretrain: 2000,
  trainPerClass: 16,
  valPerClass: 32,
  testPerClass: 64,
  corpus: 1000,
  labelNoise: 0,
});

/** The image splits of a world. */
export const WORLD_SPLITS = ["pretrain", "train", "val", "test"] as const;
/** An image split of a world. */
export type WorldSplit = typeof WORLD_SPLITS[number];

/** One tile of the world with everything known about it. */
export interface WorldSample {
  /** The RGB tile. */
  image: DecodedImage;
  /** The label a user sees (index into {@link WORLD_CLASSES}); for `train` possibly noisy;
   * for `pretrain`, the rule's class or -1 when no class has the tile's factors. */
  label: number;
  /** The class the factors decide ({@link classOf}), before any label noise. */
  trueLabel: number;
  /** The tile's factors. */
  factors: Factors;
  /** The tile's own report (for `pretrain` the text it is paired with; for the labelled
   * splits a reference that CLIP-IT never sees, useful to judge a pairing). */
  report: string;
}

/** Stream ids that keep each split's and each purpose's random numbers apart. */
const SPLIT_STREAM: Record<WorldSplit | "corpus", number> = {
  pretrain: 11,
  train: 12,
  val: 13,
  test: 14,
  corpus: 15,
};
const FACTOR_STREAM = 1, IMAGE_STREAM = 2, REPORT_STREAM = 3, NOISE_STREAM = 4;

function checkCount(name: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) {
    throw new RangeError(`world option ${name} must be an integer >= ${min}, got ${v}`);
  }
}

/** `opts` over the defaults, validated. @throws RangeError naming the bad option. */
export function resolveWorldOptions(opts: WorldOptions = {}): Required<WorldOptions> {
  const o = { ...WORLD_DEFAULTS, ...opts };
  for (const [k, v] of Object.entries(opts)) {
    if (!(k in WORLD_DEFAULTS)) throw new RangeError(`unknown world option "${k}"`);
    if (v === undefined) {
      (o as Record<string, unknown>)[k] = (WORLD_DEFAULTS as Record<string, unknown>)[k];
    }
  }
  checkCount("seed", o.seed, 0);
  checkCount("imageSize", o.imageSize, 8);
  checkCount("pretrain", o.pretrain, 0);
  checkCount("trainPerClass", o.trainPerClass, 1);
  checkCount("valPerClass", o.valPerClass, 0);
  checkCount("testPerClass", o.testPerClass, 0);
  checkCount("corpus", o.corpus, 1);
  if (!(o.labelNoise >= 0 && o.labelNoise <= 1)) {
    throw new RangeError(`world option labelNoise must be in [0, 1], got ${o.labelNoise}`);
  }
  return o;
}

/** A world: random access to its samples and corpus (see the module comment). */
export class World {
  /** The resolved options. */
  readonly options: Readonly<Required<WorldOptions>>;
  /** Class names; labels index this list. */
  readonly classes: readonly string[] = WORLD_CLASSES;

  /** A world of `opts` over {@link WORLD_DEFAULTS}. @throws RangeError on a bad option. */
  constructor(opts: WorldOptions = {}) {
    this.options = Object.freeze(resolveWorldOptions(opts));
  }

  /** Number of images of `split`. */
  size(split: WorldSplit): number {
    const o = this.options, c = this.classes.length;
    switch (split) {
      case "pretrain":
        return o.pretrain;
      case "train":
        return o.trainPerClass * c;
      case "val":
        return o.valPerClass * c;
      case "test":
        return o.testPerClass * c;
    }
  }

  /** Throw a RangeError naming the split when i is not one of its samples. */
  private check(split: WorldSplit, i: number): void {
    if (!WORLD_SPLITS.includes(split)) throw new RangeError(`unknown world split "${split}"`);
    const n = this.size(split);
    if (!Number.isInteger(i) || i < 0 || i >= n) {
      throw new RangeError(`world ${split} sample ${i} is out of range (the split has ${n})`);
    }
  }

  /** The generator of one purpose (`stream`) of sample i: independent of every other. */
  private rng(split: WorldSplit | "corpus", i: number, stream: number): WorldRng {
    return new WorldRng(worldSeed(this.options.seed, SPLIT_STREAM[split], i, stream));
  }

  /** The factors of sample i (cheap: draws no image). Labelled splits cycle through classes. */
  factors(split: WorldSplit, i: number): Factors {
    this.check(split, i);
    const rng = this.rng(split, i, FACTOR_STREAM);
    return split === "pretrain"
      ? drawAnyFactors(rng)
      : drawClassFactors(i % this.classes.length, rng);
  }

  /** The label users see for sample i: the true class, or for `train` a noisy one. */
  label(split: WorldSplit, i: number): number {
    const truth = classOf(this.factors(split, i));
    if (split !== "train" || this.options.labelNoise === 0) return truth;
    const rng = this.rng(split, i, NOISE_STREAM);
    if (!rng.chance(this.options.labelNoise)) return truth;
    const other = rng.int(this.classes.length - 1);
    return other >= truth ? other + 1 : other;
  }

  /** The report of sample i (no image drawn). */
  report(split: WorldSplit, i: number): string {
    return writeReport(this.factors(split, i), this.rng(split, i, REPORT_STREAM)).text;
  }

  /** Sample i of `split`: tile, labels, factors and report. */
  sample(split: WorldSplit, i: number): WorldSample {
    const factors = this.factors(split, i);
    return {
      image: drawTile(factors, this.options.imageSize, this.rng(split, i, IMAGE_STREAM)),
      label: this.label(split, i),
      trueLabel: classOf(factors),
      factors,
      report: writeReport(factors, this.rng(split, i, REPORT_STREAM)).text,
    };
  }

  /** The factors corpus report i was written from (never shown to the pipeline). */
  corpusFactors(i: number): Factors {
    if (!Number.isInteger(i) || i < 0 || i >= this.options.corpus) {
      throw new RangeError(
        `corpus report ${i} is out of range (the corpus has ${this.options.corpus})`,
      );
    }
    return drawAnyFactors(this.rng("corpus", i, FACTOR_STREAM));
  }

  /** Corpus report i: written from its own random factors, paired with no image. */
  corpusReport(i: number): string {
    return writeReport(this.corpusFactors(i), this.rng("corpus", i, REPORT_STREAM)).text;
  }

  /** The whole corpus, one report per entry. */
  corpus(): string[] {
    return Array.from({ length: this.options.corpus }, (_, i) => this.corpusReport(i));
  }
}

/** Sample i of `split` of the world of `opts` (a convenience over {@link World.sample}). */
export function worldSample(split: WorldSplit, i: number, opts: WorldOptions = {}): WorldSample {
  return new World(opts).sample(split, i);
}

// ---- on disk ---------------------------------------------------------------------------------

/** Bump when the drawing, the reports or the file layout change: it invalidates worlds on disk. */
export const WORLD_VERSION = 1;

/** What {@link writeWorld} writes to `world.json` and returns. */
export interface WorldManifest {
  /** What this is, for a person opening the file. */
  generator: string;
  /** {@link WORLD_VERSION} of the code that wrote it. */
  version: number;
  /** Says plainly that the data are synthetic. */
  note: string;
  /** The resolved options (seed included). */
  options: Required<WorldOptions>;
  /** Class names in label order (pass them as the dataset's `classes` to keep this order). */
  classes: string[];
  /** The class rule in words and as the levels each class allows. */
  classRule: { text: string[]; supports: typeof CLASS_SUPPORTS };
  /** The factors: levels, whether the class depends on them, how they look, the phrases. */
  factors: {
    name: string;
    levels: readonly string[];
    classFactor: boolean;
    looks: string;
    phrases: readonly (readonly string[])[];
  }[];
  /** Images per split and class (-1: no class), corpus reports per class. */
  counts: Record<WorldSplit | "corpus", { total: number; perClass: Record<string, number> }>;
  /** Training labels that label noise changed. */
  noisyTrainLabels: number;
  /** Whether the pretraining split's images and `pretrain.csv` were written. */
  pretrainImages?: boolean;
  /** The files, relative to the world's folder. */
  files: Record<string, string>;
}

/** Options of {@link writeWorld}. */
export interface WriteWorldOptions {
  /** Rewrite even when `world.json` shows the same world is already there (default false). */
  force?: boolean;
  /** Called after each image written, with (done, total). */
  onProgress?: (done: number, total: number) => void;
  /**
   * Write the pretraining split's images and `pretrain.csv` (default true). A run that does not
   * pretrain a CLIP from files (the demo pretrains from {@link World} in memory, or ships the
   * result) skips them: they are most of the world's images.
   */
  pretrainImages?: boolean;
}

const FILES = {
  manifest: "world.json",
  labels: "labels.csv",
  pretrain: "pretrain.csv",
  corpus: "corpus.txt",
  tokenizer: "tokenizer.json",
  factors: "factors.csv",
  corpusFactors: "corpus_factors.csv",
  images: "images",
};

/** A CSV field, quoted when it holds a comma, quote or line break. */
function csvField(v: string | number): string {
  const s = String(v);
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

function csvRow(fields: (string | number)[]): string {
  return fields.map(csvField).join(",") + "\n";
}

/** Path of sample i's PNG, relative to the world's folder. */
export function worldImagePath(split: WorldSplit, i: number): string {
  return `${FILES.images}/${split}/${split}_${String(i).padStart(5, "0")}.png`;
}

function className(label: number): string {
  return label < 0 ? "none" : WORLD_CLASSES[label];
}

/** The manifest of `world` without counting anything that needs images. */
function manifestOf(world: World, counts: WorldManifest["counts"], noisy: number): WorldManifest {
  return {
    generator: "CLIP-IT demo world: synthetic H&E-like tiles, reports and an unpaired corpus",
    version: WORLD_VERSION,
    note: "Synthetic data, generated by train/data/world.ts; not real tissue. Classes follow " +
      "from the factors by classRule; reports describe factors and never name a class.",
    options: { ...world.options },
    classes: [...world.classes],
    classRule: { text: CLASS_RULE_TEXT, supports: CLASS_SUPPORTS },
    factors: WORLD_FACTORS.map((f, k) => ({ ...f, phrases: FACTOR_PHRASES[k] })),
    counts,
    noisyTrainLabels: noisy,
    files: { ...FILES },
  };
}

async function readManifest(path: string): Promise<WorldManifest | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as WorldManifest;
  } catch {
    return null; // absent or unreadable: write the world again
  }
}

/**
 * Write the world of `opts` to `dir` in the formats the pipeline reads:
 * - `images/<split>/<split>_NNNNN.png`: the tiles (8-bit RGB PNG);
 * - `labels.csv`: the `csv` dataset manifest `path,label,split` of train / val / test (train
 *   labels include any label noise); open it with `openDataset("csv", ..., {classes})`;
 * - `pretrain.csv`: `path,report`, each pretraining image with its own report;
 * - `corpus.txt`: the unpaired corpus, one report per line;
 * - `tokenizer.json`: the word tokenizer of the world's vocabulary;
 * - `factors.csv` and `corpus_factors.csv`: the truth behind every image and corpus report
 *   (factor levels, true class, own report), for judging a pairing; the pipeline never reads them;
 * - `world.json`: the {@link WorldManifest}, written last, so its presence means a complete world.
 *
 * When `world.json` already describes the same options and version, nothing is written (the
 * demo reuses its world between runs) unless `force`.
 */
export async function writeWorld(
  dir: string,
  opts: WorldOptions = {},
  wopts: WriteWorldOptions = {},
): Promise<WorldManifest> {
  const world = new World(opts);
  const withPretrain = wopts.pretrainImages ?? true;
  const manifestPath = join(dir, FILES.manifest);
  if (!wopts.force) {
    const old = await readManifest(manifestPath);
    if (
      old && old.version === WORLD_VERSION &&
      JSON.stringify(old.options) === JSON.stringify(world.options) &&
      (old.pretrainImages ?? true) === withPretrain
    ) {
      return old;
    }
  }
  await Deno.remove(manifestPath).catch(() => {}); // an interrupted rewrite must not look complete
  const total = WORLD_SPLITS.reduce(
    (n, s) => n + (s === "pretrain" && !withPretrain ? 0 : world.size(s)),
    0,
  );
  let done = 0, noisy = 0;
  const counts = {} as WorldManifest["counts"];
  let labels = csvRow(["path", "label", "split"]);
  let pretrain = csvRow(["path", "report"]);
  let factors = csvRow(["path", "split", "label", "true_label", ...FACTOR_NAMES, "report"]);
  for (const split of WORLD_SPLITS) {
    const perClass: Record<string, number> = {};
    if (split === "pretrain" && !withPretrain) {
      for (let i = 0; i < world.size(split); i++) {
        const name = className(classOf(world.factors(split, i)));
        perClass[name] = (perClass[name] ?? 0) + 1;
      }
      counts[split] = { total: world.size(split), perClass };
      continue;
    }
    await Deno.mkdir(join(dir, FILES.images, split), { recursive: true });
    for (let i = 0; i < world.size(split); i++) {
      const s = world.sample(split, i);
      const path = worldImagePath(split, i);
      const png = encodePng({ ...s.image, channels: 3, depth: 8 });
      await Deno.writeFile(join(dir, path), png);
      const name = className(s.trueLabel);
      perClass[name] = (perClass[name] ?? 0) + 1;
      if (split === "pretrain") pretrain += csvRow([path, s.report]);
      else labels += csvRow([path, className(s.label), split]);
      if (s.label !== s.trueLabel && split !== "pretrain") noisy++;
      const levels = FACTOR_NAMES.map((f, k) => WORLD_FACTORS[k].levels[s.factors[f]]);
      factors += csvRow([path, split, className(s.label), name, ...levels, s.report]);
      wopts.onProgress?.(++done, total);
    }
    counts[split] = { total: world.size(split), perClass };
  }
  const corpus: string[] = [];
  let corpusFactors = csvRow(["line", ...FACTOR_NAMES, "class"]);
  const corpusPerClass: Record<string, number> = {};
  for (let i = 0; i < world.options.corpus; i++) {
    corpus.push(world.corpusReport(i));
    const f = world.corpusFactors(i);
    const name = className(classOf(f));
    corpusPerClass[name] = (corpusPerClass[name] ?? 0) + 1;
    const levels = FACTOR_NAMES.map((n, k) => WORLD_FACTORS[k].levels[f[n]]);
    corpusFactors += csvRow([i + 1, ...levels, name]);
  }
  counts.corpus = { total: world.options.corpus, perClass: corpusPerClass };
  await Deno.writeTextFile(join(dir, FILES.labels), labels);
  if (withPretrain) await Deno.writeTextFile(join(dir, FILES.pretrain), pretrain);
  await Deno.writeTextFile(join(dir, FILES.factors), factors);
  await Deno.writeTextFile(join(dir, FILES.corpus), corpus.join("\n") + "\n");
  await Deno.writeTextFile(join(dir, FILES.corpusFactors), corpusFactors);
  const tokenizer = WordTokenizer.fromWords(worldVocabulary());
  await Deno.writeTextFile(join(dir, FILES.tokenizer), JSON.stringify(tokenizer.toJSON()) + "\n");
  const manifest = { ...manifestOf(world, counts, noisy), pretrainImages: withPretrain };
  await Deno.writeTextFile(manifestPath, JSON.stringify(manifest, null, 2) + "\n");
  return manifest;
}

/** The word tokenizer of the world's vocabulary (what `tokenizer.json` holds). */
export function worldTokenizer(): WordTokenizer {
  return WordTokenizer.fromWords(worldVocabulary());
}
