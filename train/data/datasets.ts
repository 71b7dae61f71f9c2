/**
 * Datasets: where the images of each split are and what their labels are. Opening a dataset
 * scans folders (or reads PCAM's label arrays) but decodes no image; the loader
 * (loader.ts) reads the pixels.
 *
 * Kinds (see {@link openDataset}):
 * - `pcam`: the six PatchCamelyon `.h5` files (official train / valid / test splits).
 * - `crc`: `NCT-CRC-HE-100K/` (train + val: a stratified 80/20 split, seed 42) and
 *   `CRC-VAL-HE-7K/` (test), each with one folder per tissue class.
 * - `bach`: BACH (ICIAR 2018) photos in class folders: a seeded stratified 67/33 split per class
 *   (268 / 132 images), or a fixed split read from a CSV (`name,split`).
 * - `folder`: one subfolder per class, optionally inside `train/`, `val/`, `test/` folders.
 * - `flat`: image files in one folder, the label being the file-name prefix before the first
 *   `-` (or the first `-`-separated part that is a known class).
 * - `csv`: a manifest `path,label[,split]` (paths relative to the manifest).
 *
 * The six openers stay in this one file (about 750 lines) with the split helpers they share:
 * each is the same pattern in 50-130 lines, and reading them side by side is how one checks that
 * they agree on split names, notes and ignored files. Listing files is files.ts's job; keeping a
 * file that is reachable twice out of two splits is file_pool.ts's.
 */
import { basename, dirname, extname, join, resolve } from "node:path";
import { H5Error, H5File } from "../../nn/formats/hdf5.ts";
import { checkInputFile } from "../../nn/formats/input_file.ts";
import { byName, isDir, type ListDuplicate, listImages, subdirs } from "./files.ts";
import { DatasetError } from "./errors.ts";
import { FilePool } from "./file_pool.ts";
import { stratifiedSplit } from "./split.ts";

/** The dataset kinds {@link openDataset} understands. */
export const DATASET_KINDS = ["pcam", "crc", "bach", "folder", "flat", "csv"] as const;
/** A dataset kind. */
export type DatasetKind = typeof DATASET_KINDS[number];

/** Split names, in the order they are listed. */
export const SPLIT_NAMES = ["train", "val", "test"] as const;
/** A split name. */
export type SplitName = typeof SPLIT_NAMES[number];

/**
 * Where a split's images are: plain data, so it can be posted to decoding workers.
 * - `files`: one image file per sample.
 * - `h5`: sample i is row i of an HDF5 uint8 dataset shaped [N, H, W, 3].
 */
export type SampleSource =
  | { kind: "files"; paths: string[] }
  | { kind: "h5"; path: string; dataset: string; count: number; height: number; width: number };

/** One split of a dataset. `labels[i]` indexes {@link Dataset.classes}. */
export interface Split {
  /** Which split this is: "train", "val" or "test". */
  name: SplitName;
  /** Where its images are (files, or rows of an HDF5 array). */
  source: SampleSource;
  /** One class index per sample, in sample order. */
  labels: Int32Array;
}

/** An opened dataset: its classes, its splits (train / val / test, those that exist) and notes. */
export interface Dataset {
  /** The kind it was opened as. */
  kind: DatasetKind;
  /** The folder (or manifest file) it was opened from, absolute. */
  root: string;
  /** Class names; a label is an index into this list. */
  classes: string[];
  /** The splits present, in train / val / test order. */
  splits: Split[];
  /** How the splits were made and anything the user should know (absent folders, ...). */
  notes: string[];
  /** Files found in class folders that were left out because they are not images. */
  ignored: string[];
}

/** Options of {@link openDataset}. */
export interface DatasetOptions {
  /** Seed of the stratified splits (default 42). */
  seed?: number;
  /** Validation fraction per class where no official validation split exists. Defaults: crc,
   * folder, flat, csv 0.2; bach 0 (no validation split). */
  valFraction?: number;
  /** Test fraction per class where no official test split exists. Defaults: bach 0.33
   * (268 / 132); folder, flat, csv 0. */
  testFraction?: number;
  /** BACH: a CSV `name,split` (name = file name, split = train / val / test) that fixes the
   * split instead of the seeded one. Every image must be listed. */
  splitFile?: string;
  /** flat: the class names (a label is then the first `-`-separated part of the file name that
   * is one of them); folder / csv: the class order (every class found must be listed). */
  classes?: string[];
}

export { DatasetError } from "./errors.ts";

/** The nine CRC tissue classes (NCT-CRC-HE-100K / CRC-VAL-HE-7K folder names). */
export const CRC_CLASSES = ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"];
/** The four BACH classes (folder names). */
export const BACH_CLASSES = ["Benign", "InSitu", "Invasive", "Normal"];
/** PCAM's two classes (label 0 and 1). */
export const PCAM_CLASSES = ["normal", "tumor"];

/** A readable id of sample `i` of a split: its file path, or `file.h5[x][i]`. */
export function sampleId(source: SampleSource, i: number): string {
  return source.kind === "files" ? source.paths[i] : `${source.path}[${source.dataset}][${i}]`;
}

/** The split called `name` of a dataset, or undefined. */
export function getSplit(ds: Dataset, name: SplitName): Split | undefined {
  return ds.splits.find((s) => s.name === name);
}

/**
 * Opens a dataset of `kind` at `root` (a folder; for `csv`, the manifest file). Decodes no
 * image: it finds the files, their labels and the splits.
 * @throws DatasetError naming what is missing or malformed (and for PCAM an H5Error cause).
 */
export async function openDataset(
  kind: DatasetKind,
  root: string,
  opts: DatasetOptions = {},
): Promise<Dataset> {
  const abs = resolve(root);
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(abs);
  } catch {
    throw new DatasetError(`${root} does not exist`);
  }
  if (kind === "csv" ? !st.isFile : !st.isDirectory) {
    throw new DatasetError(
      `${root} is ${kind === "csv" ? "not a regular file (the csv manifest)" : "not a folder"}`,
    );
  }
  switch (kind) {
    case "pcam":
      return openPcam(abs);
    case "crc":
      return await openCrc(abs, opts);
    case "bach":
      return await openBach(abs, opts);
    case "folder":
      return await openFolder(abs, opts);
    case "flat":
      return await openFlat(abs, opts);
    case "csv":
      return await openCsv(abs, opts);
    default:
      throw new DatasetError(
        `unknown dataset kind "${kind}" (expected one of ${DATASET_KINDS.join(", ")})`,
      );
  }
}

// ---- splits from folders ---------------------------------------------------------------------

/** Samples of class folders `classes` under `dir`: paths and labels. Missing folders fail. */
async function scanClassFolders(
  dir: string,
  classes: string[],
  ignored: string[],
  what: string,
  pool: FilePool,
  group = "pool",
): Promise<{ paths: string[]; labels: number[] }> {
  const paths: string[] = [];
  const labels: number[] = [];
  for (let c = 0; c < classes.length; c++) {
    const folder = join(dir, classes[c]);
    if (!await isDir(folder)) {
      throw new DatasetError(
        `${what}: class folder ${folder} is missing (expected ${classes.join(", ")})`,
      );
    }
    for (const p of await pool.list(folder, classes[c], group, ignored)) {
      paths.push(p);
      labels.push(c);
    }
  }
  return { paths, labels };
}

function pick<T>(items: T[], idx: number[]): T[] {
  return idx.map((i) => items[i]);
}

function filesSplit(name: SplitName, paths: string[], labels: number[]): Split {
  return { name, source: { kind: "files", paths }, labels: Int32Array.from(labels) };
}

/** Builds train / val / test splits of one pool of files with a stratified seeded split. */
function stratifiedFileSplits(
  paths: string[],
  labels: number[],
  val: number,
  test: number,
  seed: number,
): Split[] {
  const s = stratifiedSplit(labels, { val, test }, seed);
  const out: Split[] = [filesSplit("train", pick(paths, s.train), pick(labels, s.train))];
  if (val > 0) out.push(filesSplit("val", pick(paths, s.val), pick(labels, s.val)));
  if (test > 0) out.push(filesSplit("test", pick(paths, s.test), pick(labels, s.test)));
  return out;
}

function checkFraction(name: string, v: number): number {
  if (!(v >= 0 && v < 1)) throw new DatasetError(`${name} must be in [0, 1), got ${v}`);
  return v;
}

function ignoredNote(ignored: string[]): string[] {
  if (ignored.length === 0) return [];
  const shown = ignored.slice(0, 5).join(", ");
  return [
    `${ignored.length} non-image file(s) in class folders left out: ${shown}${
      ignored.length > 5 ? ", ..." : ""
    }`,
  ];
}

// ---- PCAM -----------------------------------------------------------------------------------

/** File name of a PCAM split's x or y array. */
export function pcamFileName(split: "train" | "valid" | "test", xy: "x" | "y"): string {
  return `camelyonpatch_level_2_split_${split}_${xy}.h5`;
}

function openPcam(root: string): Dataset {
  const splits: Split[] = [];
  const notes: string[] = [];
  const names: [SplitName, "train" | "valid" | "test"][] = [["train", "train"], ["val", "valid"], [
    "test",
    "test",
  ]];
  const exists = (p: string): boolean => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  };
  for (const [name, file] of names) {
    const xPath = join(root, pcamFileName(file, "x"));
    const yPath = join(root, pcamFileName(file, "y"));
    const hasX = exists(xPath), hasY = exists(yPath);
    if (!hasX && !hasY) {
      const gz = exists(xPath + ".gz") || exists(yPath + ".gz");
      notes.push(
        `${name} split absent: no ${basename(xPath)} / ${basename(yPath)}` +
          (gz ? " (found the .h5.gz downloads: decompress them with gunzip)" : ""),
      );
      continue;
    }
    if (!hasX || !hasY) {
      throw new DatasetError(
        `PCAM ${name} split: found ${hasX ? xPath : yPath} but not ${hasX ? yPath : xPath}`,
      );
    }
    splits.push(pcamSplit(name, xPath, yPath));
  }
  if (splits.length === 0) {
    const gz = notes.some((n) => n.includes("gunzip"));
    const expected = names.map(([, f]) => pcamFileName(f, "x")).join(", ");
    throw new DatasetError(
      `no PCAM files in ${root}: expected ${expected} and the matching _y.h5 files` +
        (gz ? " (found .h5.gz downloads: decompress them with gunzip)" : ""),
    );
  }
  return {
    kind: "pcam",
    root,
    classes: PCAM_CLASSES,
    splits,
    notes: ["official PCAM splits", ...notes],
    ignored: [],
  };
}

function pcamSplit(name: SplitName, xPath: string, yPath: string): Split {
  let xf: H5File | null = null, yf: H5File | null = null;
  try {
    xf = H5File.open(xPath);
    const x = xf.dataset("x");
    const s = x.shape;
    if (s.length !== 4 || s[3] !== 3 || x.dtype.size !== 1 || x.dtype.kind !== "uint") {
      throw new DatasetError(
        `${xPath}: dataset "x" must be uint8 [N, H, W, 3], got ${x.dtype.kind}${
          x.dtype.size * 8
        } [${s.join(", ")}]`,
      );
    }
    yf = H5File.open(yPath);
    const y = yf.dataset("y");
    if (y.shape[0] !== s[0]) {
      throw new DatasetError(
        `${yPath}: "y" has ${y.shape[0]} labels but ${xPath} has ${s[0]} patches`,
      );
    }
    if (y.numel() !== s[0] || y.dtype.kind === "float") {
      throw new DatasetError(
        `${yPath}: "y" must hold one integer label per patch, got [${y.shape.join(", ")}]`,
      );
    }
    const values = y.readAll();
    const labels = new Int32Array(values.length);
    for (let i = 0; i < values.length; i++) {
      if (values[i] !== 0 && values[i] !== 1) {
        throw new DatasetError(
          `${yPath}: label ${i} is ${values[i]}, expected 0 (normal) or 1 (tumor)`,
        );
      }
      labels[i] = values[i];
    }
    return {
      name,
      source: { kind: "h5", path: xPath, dataset: "x", count: s[0], height: s[1], width: s[2] },
      labels,
    };
  } catch (err) {
    if (err instanceof H5Error) {
      throw new DatasetError(`PCAM ${name} split: ${err.message}`, { cause: err });
    }
    throw err;
  } finally {
    xf?.close();
    yf?.close();
  }
}

// ---- CRC ------------------------------------------------------------------------------------

async function openCrc(root: string, opts: DatasetOptions): Promise<Dataset> {
  const seed = opts.seed ?? 42;
  const val = checkFraction("valFraction", opts.valFraction ?? 0.2);
  const notes: string[] = [];
  const ignored: string[] = [];
  let trainDir = "";
  for (const name of ["NCT-CRC-HE-100K", "NCT-CRC-HE-100K-NONORM"]) {
    if (await isDir(join(root, name))) {
      trainDir = join(root, name);
      break;
    }
  }
  if (!trainDir) {
    throw new DatasetError(
      `${root} has no NCT-CRC-HE-100K folder (the CRC training set; its class folders ` +
        `${CRC_CLASSES.join(", ")} go inside it, and CRC-VAL-HE-7K beside it)`,
    );
  }
  const files = new FilePool();
  const pool = await scanClassFolders(
    trainDir,
    CRC_CLASSES,
    ignored,
    "CRC training set",
    files,
    "train/val",
  );
  const splits = stratifiedFileSplits(pool.paths, pool.labels, val, 0, seed);
  notes.push(
    `train/val: ${basename(trainDir)}, stratified ${Math.round((1 - val) * 100)}/${
      Math.round(val * 100)
    } split, seed ${seed}`,
  );
  const testDir = join(root, "CRC-VAL-HE-7K");
  if (await isDir(testDir)) {
    const t = await scanClassFolders(testDir, CRC_CLASSES, ignored, "CRC test set", files, "test");
    splits.push(filesSplit("test", t.paths, t.labels));
    notes.push("test: CRC-VAL-HE-7K");
  } else notes.push(`test split absent: no ${testDir}`);
  for (const dir of [trainDir, testDir]) {
    if (!await isDir(dir)) continue;
    const extra = (await subdirs(dir)).filter((d) => !CRC_CLASSES.includes(d));
    if (extra.length) {
      notes.push(`${dir}: folders that are not CRC classes left out: ${extra.join(", ")}`);
    }
  }
  notes.push(...ignoredNote(ignored), ...files.notes());
  return { kind: "crc", root, classes: CRC_CLASSES, splits, notes, ignored };
}

// ---- BACH -----------------------------------------------------------------------------------

async function openBach(root: string, opts: DatasetOptions): Promise<Dataset> {
  const candidates = [root, join(root, "Photos"), join(root, "ICIAR2018_BACH_Challenge", "Photos")];
  let dir = "";
  for (const c of candidates) {
    const found = await Promise.all(BACH_CLASSES.map((k) => isDir(join(c, k))));
    if (found.every(Boolean)) {
      dir = c;
      break;
    }
  }
  if (!dir) {
    throw new DatasetError(
      `no BACH class folders (${BACH_CLASSES.join(", ")}) in ${candidates.join(" or ")}`,
    );
  }
  const ignored: string[] = [];
  const files = new FilePool();
  const pool = await scanClassFolders(dir, BACH_CLASSES, ignored, "BACH", files);
  const notes: string[] = [];
  let splits: Split[];
  if (opts.splitFile) {
    splits = await fixedSplits(pool.paths, pool.labels, opts.splitFile);
    notes.push(`fixed split from ${resolve(opts.splitFile)}`);
  } else {
    const seed = opts.seed ?? 42;
    const test = checkFraction("testFraction", opts.testFraction ?? 0.33);
    const val = checkFraction("valFraction", opts.valFraction ?? 0);
    splits = stratifiedFileSplits(pool.paths, pool.labels, val, test, seed);
    notes.push(
      `stratified split per class (val ${val}, test ${test}), seed ${seed}` +
        " (pass splitFile for a fixed, e.g. patient-wise, split)",
    );
  }
  notes.push(...ignoredNote(ignored), ...files.notes());
  return { kind: "bach", root: dir, classes: BACH_CLASSES, splits, notes, ignored };
}

/** Reads a `name,split` CSV and assigns every file (by base name) of the pool to a split. */
async function fixedSplits(paths: string[], labels: number[], file: string): Promise<Split[]> {
  let text: string;
  try {
    await checkInputFile(file);
    text = await Deno.readTextFile(file);
  } catch (err) {
    throw new DatasetError(`cannot read the split file ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const rows = parseCsv(text, file);
  const assign = new Map<string, SplitName>();
  for (const [i, row] of rows.entries()) {
    if (i === 0 && row[1] !== undefined && /^split$/i.test(row[1].trim())) continue;
    if (row.length < 2) throw new DatasetError(`${file}:${i + 1}: expected name,split`);
    assign.set(basename(row[0].trim()), parseSplitName(row[1], `${file}:${i + 1}`));
  }
  const parts = new Map<SplitName, { paths: string[]; labels: number[] }>();
  const missing: string[] = [];
  for (let i = 0; i < paths.length; i++) {
    const s = assign.get(basename(paths[i]));
    if (!s) {
      missing.push(basename(paths[i]));
      continue;
    }
    let p = parts.get(s);
    if (!p) parts.set(s, p = { paths: [], labels: [] });
    p.paths.push(paths[i]);
    p.labels.push(labels[i]);
  }
  if (missing.length) {
    throw new DatasetError(
      `${file} does not list ${missing.length} image(s): ${missing.slice(0, 5).join(", ")}${
        missing.length > 5 ? ", ..." : ""
      }`,
    );
  }
  return SPLIT_NAMES.filter((n) => parts.has(n)).map((n) =>
    filesSplit(n, parts.get(n)!.paths, parts.get(n)!.labels)
  );
}

function parseSplitName(v: string, where: string): SplitName {
  const s = v.trim().toLowerCase();
  if (s === "train" || s === "training") return "train";
  if (s === "val" || s === "valid" || s === "validation") return "val";
  if (s === "test" || s === "testing") return "test";
  throw new DatasetError(`${where}: unknown split "${v}" (expected train, val or test)`);
}

// ---- generic folder ---------------------------------------------------------------------------

const SPLIT_FOLDERS: Record<string, SplitName> = {
  train: "train",
  val: "val",
  valid: "val",
  validation: "val",
  test: "test",
};

function orderClasses(found: string[], given: string[] | undefined, where: string): string[] {
  if (!given) return [...new Set(found)].sort(byName);
  const unknown = [...new Set(found)].filter((c) => !given.includes(c));
  if (unknown.length) {
    throw new DatasetError(
      `${where}: classes ${unknown.join(", ")} are not in the given classes ${given.join(", ")}`,
    );
  }
  return given.slice();
}

async function openFolder(root: string, opts: DatasetOptions): Promise<Dataset> {
  if (!await isDir(root)) throw new DatasetError(`${root} is not a folder`);
  const dirs = await subdirs(root);
  if (dirs.length === 0) throw new DatasetError(`${root} has no class subfolders`);
  const ignored: string[] = [];
  const notes: string[] = [];
  const splitLayout = dirs.every((d) => d.toLowerCase() in SPLIT_FOLDERS);
  if (splitLayout) {
    const perSplit: { name: SplitName; dir: string; classes: string[] }[] = [];
    for (const d of dirs) {
      const name = SPLIT_FOLDERS[d.toLowerCase()];
      if (perSplit.some((s) => s.name === name)) {
        throw new DatasetError(`${root}: two folders for the ${name} split`);
      }
      perSplit.push({ name, dir: join(root, d), classes: await subdirs(join(root, d)) });
    }
    const classes = orderClasses(perSplit.flatMap((s) => s.classes), opts.classes, root);
    const files = new FilePool();
    const splits: Split[] = [];
    for (const name of SPLIT_NAMES) {
      const s = perSplit.find((p) => p.name === name);
      if (!s) continue;
      const paths: string[] = [], labels: number[] = [];
      for (const c of s.classes) {
        for (const p of await files.list(join(s.dir, c), c, name, ignored)) {
          paths.push(p);
          labels.push(classes.indexOf(c));
        }
      }
      splits.push(filesSplit(name, paths, labels));
    }
    notes.push(`splits from the folders ${dirs.join(", ")}`);
    notes.push(...ignoredNote(ignored), ...files.notes());
    return { kind: "folder", root, classes, splits, notes, ignored };
  }
  const classes = orderClasses(dirs, opts.classes, root);
  const files = new FilePool();
  const pool = await scanClassFolders(
    root,
    classes.filter((c) => dirs.includes(c)),
    ignored,
    root,
    files,
  );
  // scanClassFolders numbers labels by its own list; map them to `classes`.
  const present = classes.filter((c) => dirs.includes(c));
  const labels = pool.labels.map((l) => classes.indexOf(present[l]));
  const seed = opts.seed ?? 42;
  const val = checkFraction("valFraction", opts.valFraction ?? 0.2);
  const test = checkFraction("testFraction", opts.testFraction ?? 0);
  notes.push(`stratified split per class (val ${val}, test ${test}), seed ${seed}`);
  notes.push(...ignoredNote(ignored), ...files.notes());
  return {
    kind: "folder",
    root,
    classes,
    splits: stratifiedFileSplits(pool.paths, labels, val, test, seed),
    notes,
    ignored,
  };
}

// ---- flat folder, label = file-name prefix ---------------------------------------------------

/**
 * The label of a file in a flat folder: the name (without extension) up to its first `-`, or,
 * when `classes` is given, the first `-`-separated part that is one of them
 * (`CRC-VAL-HE-7K-NORM-TCGA-X.tif` -> NORM). Null when there is none.
 */
export function labelFromFileName(name: string, classes?: string[]): string | null {
  const stem = basename(name, extname(name));
  const parts = stem.split("-");
  if (classes) return parts.find((p) => classes.includes(p)) ?? null;
  return parts.length > 1 && parts[0].length > 0 ? parts[0] : null;
}

async function openFlat(root: string, opts: DatasetOptions): Promise<Dataset> {
  if (!await isDir(root)) throw new DatasetError(`${root} is not a folder`);
  const ignored: string[] = [];
  const duplicates: ListDuplicate[] = [];
  const files = await listImages(root, { ignored, recursive: false, duplicates });
  const names: string[] = [];
  const unlabelled: string[] = [];
  for (const p of files) {
    const l = labelFromFileName(p, opts.classes);
    if (l === null) unlabelled.push(basename(p));
    names.push(l ?? "");
  }
  if (unlabelled.length) {
    const rule = opts.classes
      ? `a part that is one of ${opts.classes.join(", ")}`
      : "a '-' after the label";
    throw new DatasetError(
      `${root}: cannot take a label from ${unlabelled.length} file name(s) (need ${rule}): ` +
        unlabelled.slice(0, 5).join(", "),
    );
  }
  if (files.length === 0) throw new DatasetError(`${root} has no image files`);
  for (const d of duplicates) {
    const [a, b] = [
      labelFromFileName(d.path, opts.classes),
      labelFromFileName(d.first, opts.classes),
    ];
    if (a !== b) {
      throw new DatasetError(
        `${d.path} (class ${a}) and ${d.first} (class ${b}) are the same file: one image cannot ` +
          `have two labels`,
      );
    }
  }
  const classes = opts.classes ? opts.classes.slice() : [...new Set(names)].sort(byName);
  const labels = names.map((n) => classes.indexOf(n));
  const seed = opts.seed ?? 42;
  const val = checkFraction("valFraction", opts.valFraction ?? 0.2);
  const test = checkFraction("testFraction", opts.testFraction ?? 0);
  const notes = [
    `labels from file-name prefixes; stratified split per class (val ${val}, test ${test}), seed ${seed}`,
    ...(ignored.length
      ? [`${ignored.length} non-image file(s) left out: ${ignored.slice(0, 5).join(", ")}`]
      : []),
    ...(duplicates.length
      ? [
        `${duplicates.length} file(s) reachable under a second name counted once: ${
          duplicates.slice(0, 3).map((d) => `${d.path} = ${d.first}`).join(", ")
        }`,
      ]
      : []),
  ];
  return {
    kind: "flat",
    root,
    classes,
    splits: stratifiedFileSplits(files, labels, val, test, seed),
    notes,
    ignored,
  };
}

// ---- CSV manifest ---------------------------------------------------------------------------

/** Parses CSV text (RFC 4180 quotes, `,` separator, CRLF or LF); blank lines are dropped. */
export function parseCsv(text: string, where = "CSV"): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let i = 0;
  const endRow = () => {
    row.push(field);
    field = "";
    if (!(row.length === 1 && row[0].trim() === "")) rows.push(row);
    row = [];
  };
  if (text.charCodeAt(0) === 0xfeff) i = 1; // byte-order mark
  for (; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += ch;
    } else if (ch === '"' && field === "") quoted = true;
    else if (ch === ",") {
      row.push(field);
      field = "";
    } else if (ch === "\n") endRow();
    else if (ch === "\r") {
      if (text[i + 1] !== "\n") endRow();
    } else field += ch;
  }
  if (quoted) throw new DatasetError(`${where}: unterminated quoted field`);
  if (field !== "" || row.length) endRow();
  return rows;
}

async function openCsv(file: string, opts: DatasetOptions): Promise<Dataset> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (err) {
    throw new DatasetError(`cannot read the manifest ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const rows = parseCsv(text, file);
  if (rows.length === 0) throw new DatasetError(`${file} is empty`);
  let col = { path: 0, label: 1, split: 2 };
  let first = 0;
  const head = rows[0].map((h) => h.trim().toLowerCase());
  if (head.includes("path") && head.includes("label")) {
    col = {
      path: head.indexOf("path"),
      label: head.indexOf("label"),
      split: head.indexOf("split"),
    };
    first = 1;
  }
  const base = dirname(file);
  const paths: string[] = [];
  const names: string[] = [];
  const splitOf: (SplitName | null)[] = [];
  for (let r = first; r < rows.length; r++) {
    const row = rows[r];
    const where = `${file}:${r + 1}`;
    const p = row[col.path]?.trim();
    const l = row[col.label]?.trim();
    if (!p || l === undefined || l === "") {
      throw new DatasetError(`${where}: expected path,label[,split]`);
    }
    paths.push(resolve(base, p));
    names.push(l);
    const s = col.split >= 0 ? row[col.split]?.trim() : undefined;
    splitOf.push(s ? parseSplitName(s, where) : null);
  }
  if (paths.length === 0) throw new DatasetError(`${file} lists no images`);
  // One file listed twice (under the same or another name): once if the rows agree, refused if
  // they give it two labels or two splits.
  const firstRow = new Map<string, number>();
  const keep: number[] = [];
  let repeated = 0;
  for (let i = 0; i < paths.length; i++) {
    const real = await Deno.realPath(paths[i]).catch(() => paths[i]);
    const j = firstRow.get(real);
    if (j === undefined) {
      firstRow.set(real, i);
      keep.push(i);
    } else if (names[j] !== names[i] || splitOf[j] !== splitOf[i]) {
      throw new DatasetError(
        `${file}: rows ${first + j + 1} and ${first + i + 1} name the same file (${real}) with ` +
          `${names[j] !== names[i] ? "two labels" : "two splits"}`,
      );
    } else repeated++;
  }
  if (repeated > 0) {
    const [p2, n2, s2] = [pick(paths, keep), pick(names, keep), pick(splitOf, keep)];
    paths.length = names.length = splitOf.length = 0;
    paths.push(...p2), names.push(...n2), splitOf.push(...s2);
  }
  const numeric = names.every((n) => /^-?\d+$/.test(n));
  const classes = opts.classes
    ? orderClasses(names, opts.classes, file)
    : [...new Set(names)].sort(numeric ? (a, b) => Number(a) - Number(b) : byName);
  const labels = names.map((n) => classes.indexOf(n));
  const withSplit = splitOf.filter((s) => s !== null).length;
  if (withSplit > 0 && withSplit < splitOf.length) {
    throw new DatasetError(
      `${file}: ${splitOf.length - withSplit} row(s) have no split while others do`,
    );
  }
  const notes: string[] = [];
  let splits: Split[];
  if (withSplit > 0) {
    splits = SPLIT_NAMES.map((name) => {
      const idx = splitOf.flatMap((s, i) => (s === name ? [i] : []));
      return filesSplit(name, pick(paths, idx), pick(labels, idx));
    }).filter((s) => s.labels.length > 0);
    notes.push("splits from the manifest's split column");
  } else {
    const seed = opts.seed ?? 42;
    const val = checkFraction("valFraction", opts.valFraction ?? 0.2);
    const test = checkFraction("testFraction", opts.testFraction ?? 0);
    splits = stratifiedFileSplits(paths, labels, val, test, seed);
    notes.push(`stratified split per class (val ${val}, test ${test}), seed ${seed}`);
  }
  if (repeated > 0) notes.push(`${repeated} row(s) naming a file listed before counted once`);
  return { kind: "csv", root: file, classes, splits, notes, ignored: [] };
}
