/**
 * CLIP-IT's pairing file: which reports of the corpus each image of a split was paired with, in
 * a form a person can read and a program can check before training on it.
 *
 * `pairs-<split>.jsonl` (UTF-8, one JSON object per line):
 * - line 1, the header:
 *   `{"format":"clipit-pairing/1","split":"train","k":5,"created":ISO-8601,
 *     "dataset":{"kind","root","classes":[...],"count":N,"fingerprint":sha256},
 *     "corpus":{"path","sha256","reports":M,"lines":L,"blank":B,"truncated":T|null},
 *     "model":{"name","weights","weights_sha256"|null,"context_length","chunk":bool,"tokenizer"},
 *     "scores":{"min","mean","median","max"}}`
 *   where `fingerprint` is {@link datasetFingerprint} of the split, `corpus.sha256` the SHA-256
 *   of the corpus file's bytes, `reports` its non-blank lines, `lines` all its lines, `blank`
 *   the blank ones, `truncated` the reports longer than the context, and `scores` statistics of
 *   the top-1 scores;
 * - then one line per image, in split order:
 *   `{"i":0,"id":"ADI/a.png","label":"ADI","reports":[12,5,...],"lines":[14,7,...],
 *     "scores":[0.31,0.29,...]}`: k report indices (0-based among the non-blank lines), their
 *   1-based line numbers in the corpus file, and their cosine similarities (rounded to 6
 *   decimals), best first.
 *
 * {@link readPairing} parses such a file and checks it against the dataset split and corpus a
 * trainer is about to use, naming what differs; {@link randomPairing} is the paper's
 * random-pairing ablation.
 */
import { createHash } from "node:crypto";
import { basename } from "node:path";
import { Rng } from "../nn/rng.ts";

/** The format tag of the header's `format` field. */
export const PAIRING_FORMAT = "clipit-pairing/1";

/** Minimum, mean, median and maximum of a set of scores (6 decimals). */
export interface ScoreStats {
  /** Smallest score. */
  min: number;
  /** Mean score. */
  mean: number;
  /** Median (mean of the two middle values for an even count). */
  median: number;
  /** Largest score. */
  max: number;
}

/** The header (first line) of a pairing file. */
export interface PairingHeader {
  /** Always {@link PAIRING_FORMAT}. */
  format: string;
  /** The split it pairs. */
  split: string;
  /** Reports per image. */
  k: number;
  /** When it was made (ISO 8601). */
  created: string;
  /** The dataset split it was made for. */
  dataset: {
    /** Dataset kind (crc, pcam, folder, csv, ...). */
    kind: string;
    /** The dataset's root folder (or manifest) when it was made. */
    root: string;
    /** Class names; a row's label is one of them. */
    classes: string[];
    /** Images in the split. */
    count: number;
    /** {@link datasetFingerprint} of the split. */
    fingerprint: string;
  };
  /** The report corpus. */
  corpus: {
    /** The corpus file when it was made. */
    path: string;
    /** SHA-256 of the corpus file's bytes. */
    sha256: string;
    /** Non-blank lines (reports). */
    reports: number;
    /** All lines of the file. */
    lines: number;
    /** Blank lines skipped. */
    blank?: number;
    /** Reports longer than the model's context (null when the tokenizer cannot tell). */
    truncated?: number | null;
  };
  /** The pairing model. */
  model: {
    /** Model configuration name. */
    name: string;
    /** Weights file as given, or "random (seed S)". */
    weights: string;
    /** SHA-256 of the weights file, null for random weights. */
    weights_sha256: string | null;
    /** Tokens per text. */
    context_length: number;
    /** Whether reports were scored by their best context-sized window. */
    chunk: boolean;
    /** The tokenizer (path as given). */
    tokenizer: string;
  };
  /** Statistics of the top-1 scores. */
  scores: ScoreStats;
}

/** A pairing read by {@link readPairing}: row i's reports are at [i * k, (i + 1) * k). */
export interface Pairing {
  /** The file's header. */
  header: PairingHeader;
  /** Report indices (0-based among the corpus' non-blank lines), [N * k], best first. */
  indices: Int32Array;
  /** Their scores, [N * k]. */
  scores: Float32Array;
  /** Reports per image. */
  k: number;
}

/** What a trainer uses, for {@link readPairing} to check the file against. */
export interface PairingExpectation {
  /** The split's name. */
  split: string;
  /** Image ids in split order, as the pairing step writes them ({@link datasetFingerprint}). */
  ids: readonly string[];
  /** Class index per image, in split order. */
  labels: ArrayLike<number>;
  /** Class names. */
  classes: readonly string[];
  /** The corpus the trainer reads the paired reports from. */
  corpus: {
    /** SHA-256 of its bytes. */
    sha256: string;
    /** Its reports (non-blank lines). */
    reports: number;
    /** How the user named it, for messages (e.g. "--corpus reports.txt"). */
    label?: string;
  };
  /** Reports per image the trainer needs (default 1). */
  k?: number;
}

/** The pairing file name of a split: `pairs-<split>.jsonl`. */
export function pairingFileName(split: string): string {
  return `pairs-${split}.jsonl`;
}

/**
 * The dataset fingerprint of a split: SHA-256 (hex) of one line `id \t label-index \t
 * class-name \n` per image, in split order. Two splits with the same images in the same order
 * and the same labels have the same fingerprint.
 */
export function datasetFingerprint(
  ids: readonly string[],
  labels: ArrayLike<number>,
  classes: readonly string[],
): string {
  const h = createHash("sha256");
  for (let i = 0; i < ids.length; i++) {
    h.update(`${ids[i]}\t${labels[i]}\t${classes[labels[i]]}\n`);
  }
  return h.digest("hex");
}

/** `x` rounded to 6 decimals (what the file stores). */
export function round6(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

/** {@link ScoreStats} of `values` (all zeros for none). */
export function scoreStats(values: ArrayLike<number>): ScoreStats {
  const n = values.length;
  if (n === 0) return { min: 0, mean: 0, median: 0, max: 0 };
  const sorted = Float64Array.from(values).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  const mid = n >> 1;
  const median = n % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return {
    min: round6(sorted[0]),
    mean: round6(sum / n),
    median: round6(median),
    max: round6(sorted[n - 1]),
  };
}

/** The rows of a pairing file, for {@link formatPairing}. */
export interface PairingRows {
  /** Image ids in split order. */
  ids: readonly string[];
  /** Class index per image. */
  labels: ArrayLike<number>;
  /** Report indices [N * k], best first. */
  indices: Int32Array;
  /** Scores [N * k]. */
  scores: Float32Array;
  /** 1-based corpus line number of each report index. */
  reportLines: ArrayLike<number>;
}

/**
 * The text of a pairing file: the header line, then one line per image (see the module
 * comment), as pieces to write in order.
 */
export function formatPairing(header: PairingHeader, rows: PairingRows): string[] {
  const { k, dataset: { classes } } = header;
  const out = [JSON.stringify(header) + "\n"];
  const lines: string[] = [];
  for (let i = 0; i < rows.ids.length; i++) {
    const reports = Array.from(rows.indices.subarray(i * k, (i + 1) * k));
    lines.push(JSON.stringify({
      i,
      id: rows.ids[i],
      label: classes[rows.labels[i]],
      reports,
      lines: reports.map((r) => rows.reportLines[r]),
      scores: Array.from(rows.scores.subarray(i * k, (i + 1) * k), round6),
    }));
    if (lines.length === 4096) out.push(lines.splice(0).join("\n") + "\n");
  }
  if (lines.length) out.push(lines.join("\n") + "\n");
  return out;
}

const short = (h: string) => `${h.slice(0, 12)}..`;

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Checks the header's shape; throws naming the field. */
function checkHeader(h: unknown, where: string): PairingHeader {
  if (!isObject(h)) throw new Error(`${where} line 1: the header is not a JSON object`);
  if (h.format !== PAIRING_FORMAT) {
    throw new Error(
      `${where} line 1: format is ${JSON.stringify(h.format)}, expected "${PAIRING_FORMAT}" ` +
        `(not a pairing file, or one from another version)`,
    );
  }
  const need = (cond: boolean, field: string) => {
    if (!cond) throw new Error(`${where} line 1: header field ${field} is missing or malformed`);
  };
  need(typeof h.split === "string", "split");
  need(Number.isInteger(h.k) && (h.k as number) >= 1, "k");
  const ds = h.dataset, co = h.corpus, mo = h.model;
  need(isObject(ds), "dataset");
  const d = ds as Record<string, unknown>;
  need(
    Array.isArray(d.classes) && d.classes.every((c) => typeof c === "string"),
    "dataset.classes",
  );
  need(Number.isInteger(d.count) && (d.count as number) >= 0, "dataset.count");
  need(typeof d.fingerprint === "string", "dataset.fingerprint");
  need(isObject(co), "corpus");
  const c = co as Record<string, unknown>;
  need(typeof c.sha256 === "string", "corpus.sha256");
  need(Number.isInteger(c.reports) && (c.reports as number) >= 1, "corpus.reports");
  need(isObject(mo), "model");
  return h as unknown as PairingHeader;
}

/**
 * Read the pairing file at `path` and check it against `expect`: the split's name, its images
 * (count, ids in order, labels), the class names, the corpus (SHA-256 and report count) and
 * that it has at least `expect.k` reports per image. Every row is validated (index, id, label,
 * k report indices within the corpus, line numbers, k finite scores, best first).
 * @throws Error naming the file and what does not match (the first differing image, the two
 * corpus digests, ...) or the malformed line.
 */
export async function readPairing(path: string, expect: PairingExpectation): Promise<Pairing> {
  const name = basename(path);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(await Deno.readFile(path));
  } catch (e) {
    throw new Error(`cannot read pairing file ${path}: ${(e as Error).message}`);
  }
  const lines = text.split("\n");
  if (lines.length && lines[lines.length - 1] === "") lines.pop();
  if (lines.length === 0) throw new Error(`pairing file ${path} is empty`);
  let parsedHeader: unknown;
  try {
    parsedHeader = JSON.parse(lines[0]);
  } catch (e) {
    throw new Error(`${name} line 1: not valid JSON (${(e as Error).message})`);
  }
  const header = checkHeader(parsedHeader, name);
  const { k } = header;
  const ds = header.dataset;
  const made = `${name} was made for ${ds.count} images of split ${header.split} of dataset ` +
    `${header.dataset.kind}:${header.dataset.root}`;

  if (header.split !== expect.split) {
    throw new Error(`${name} pairs split ${header.split}, not split ${expect.split}`);
  }
  const classes = [...expect.classes];
  if (JSON.stringify(ds.classes) !== JSON.stringify(classes)) {
    throw new Error(
      `${name} was made with classes [${ds.classes.join(", ")}] but the dataset has ` +
        `[${classes.join(", ")}]`,
    );
  }
  const N = expect.ids.length;
  if (expect.labels.length !== N) {
    throw new Error(`readPairing: ${N} ids but ${expect.labels.length} labels expected`);
  }
  if (lines.length - 1 !== ds.count) {
    throw new Error(
      `${name}: the header says ${ds.count} images but the file has ${lines.length - 1} rows ` +
        `(a truncated or edited file)`,
    );
  }

  // Rows: parse and validate each, and find the first image that differs from the split.
  const M = header.corpus.reports;
  const indices = new Int32Array(ds.count * k);
  const scores = new Float32Array(ds.count * k);
  let firstId = -1, firstLabel = -1;
  const labelOf: string[] = new Array(ds.count);
  const idOf: string[] = new Array(ds.count);
  for (let i = 0; i < ds.count; i++) {
    const where = `${name} line ${i + 2}`;
    let row: unknown;
    try {
      row = JSON.parse(lines[i + 1]);
    } catch (e) {
      throw new Error(`${where}: not valid JSON (${(e as Error).message})`);
    }
    if (!isObject(row)) throw new Error(`${where}: not a JSON object`);
    if (row.i !== i) throw new Error(`${where}: "i" is ${JSON.stringify(row.i)}, expected ${i}`);
    if (typeof row.id !== "string") throw new Error(`${where}: "id" is not a string`);
    if (typeof row.label !== "string" || !ds.classes.includes(row.label)) {
      throw new Error(`${where}: "label" ${JSON.stringify(row.label)} is not one of the classes`);
    }
    const reps = row.reports, lns = row.lines, scs = row.scores;
    if (!Array.isArray(reps) || reps.length !== k) {
      throw new Error(`${where}: "reports" must be a list of k = ${k} report indices`);
    }
    if (!Array.isArray(lns) || lns.length !== k) {
      throw new Error(`${where}: "lines" must be a list of k = ${k} line numbers`);
    }
    if (!Array.isArray(scs) || scs.length !== k) {
      throw new Error(`${where}: "scores" must be a list of k = ${k} scores`);
    }
    for (let j = 0; j < k; j++) {
      const r = reps[j], l = lns[j], s = scs[j];
      if (!Number.isInteger(r) || r < 0 || r >= M) {
        throw new Error(`${where}: report index ${JSON.stringify(r)} is outside 0..${M - 1}`);
      }
      if (!Number.isInteger(l) || l < 1) {
        throw new Error(`${where}: line number ${JSON.stringify(l)} is not a positive integer`);
      }
      if (typeof s !== "number" || !Number.isFinite(s)) {
        throw new Error(`${where}: score ${JSON.stringify(s)} is not a finite number`);
      }
      if (j > 0 && s > scs[j - 1]) {
        throw new Error(`${where}: scores are not sorted best first (${scs[j - 1]} < ${s})`);
      }
      indices[i * k + j] = r;
      scores[i * k + j] = s;
    }
    idOf[i] = row.id;
    labelOf[i] = row.label;
    if (i < N) {
      if (firstId < 0 && row.id !== expect.ids[i]) firstId = i;
      if (firstLabel < 0 && row.label !== classes[expect.labels[i]]) firstLabel = i;
    }
  }
  if (
    datasetFingerprint(idOf, labelOf.map((l) => ds.classes.indexOf(l)), ds.classes) !==
      ds.fingerprint
  ) {
    throw new Error(
      `${name}: the rows do not match the header's dataset fingerprint (an edited file)`,
    );
  }

  // The split the trainer uses.
  if (ds.count !== N) {
    const m = Math.min(N, ds.count);
    const diff = firstId >= 0
      ? `first difference at #${firstId}: ${idOf[firstId]} vs ${expect.ids[firstId]}`
      : `the first ${m} match; then ${
        N > ds.count ? `this split has #${m}: ${expect.ids[m]}` : `the file has #${m}: ${idOf[m]}`
      }`;
    throw new Error(`${made}, but this split has ${N} (${diff})`);
  }
  if (firstId >= 0) {
    throw new Error(
      `${made}, but image #${firstId} is ${idOf[firstId]} there and ${
        expect.ids[firstId]
      } in this split (other images or another order)`,
    );
  }
  if (firstLabel >= 0) {
    throw new Error(
      `${name}: image #${firstLabel} ${idOf[firstLabel]} has label ${labelOf[firstLabel]} ` +
        `there but ${classes[expect.labels[firstLabel]]} in this split`,
    );
  }
  const co = expect.corpus;
  if (header.corpus.sha256 !== co.sha256 || header.corpus.reports !== co.reports) {
    throw new Error(
      `${name} was made from corpus ${header.corpus.path} (sha256 ${
        short(header.corpus.sha256)
      }, ${header.corpus.reports} reports); ${co.label ?? "the corpus given"} is sha256 ${
        short(co.sha256)
      } (${co.reports} reports)`,
    );
  }
  const need = expect.k ?? 1;
  if (k < need) {
    throw new Error(`${name} has k = ${k} report(s) per image, but ${need} are needed`);
  }
  return { header, indices, scores, k };
}

/**
 * The random-pairing ablation: for each of `n` images, `k` distinct report indices drawn
 * uniformly from `reports` (as many as there are when k > reports, then repeating), from the
 * seeded generator of nn/rng.ts, so the same (n, reports, k, seed) always gives the same
 * pairing. Scores are 0 (no similarity was computed).
 * @throws RangeError for n < 0, reports < 1, k < 1 or a non-integer argument.
 */
export function randomPairing(
  n: number,
  reports: number,
  k: number,
  seed: number,
): { indices: Int32Array; scores: Float32Array; k: number } {
  for (const [what, v, min] of [["n", n, 0], ["reports", reports, 1], ["k", k, 1]] as const) {
    if (!Number.isInteger(v) || v < min) {
      throw new RangeError(`randomPairing: ${what} must be an integer >= ${min}, got ${v}`);
    }
  }
  if (!Number.isInteger(seed)) {
    throw new RangeError(`randomPairing: seed ${seed} is not an integer`);
  }
  const rng = new Rng(seed);
  const indices = new Int32Array(n * k);
  const picked = new Set<number>();
  for (let i = 0; i < n; i++) {
    picked.clear();
    for (let j = 0; j < k; j++) {
      let r = Math.floor(rng.next() * reports);
      if (picked.size < reports) {
        while (picked.has(r)) r = Math.floor(rng.next() * reports);
        picked.add(r);
      }
      indices[i * k + j] = r;
    }
  }
  return { indices, scores: new Float32Array(n * k), k };
}
