/**
 * `cli.ts pair`: CLIP-IT's pairing step. Every image of every split of a dataset is paired with
 * its k most similar reports of a text corpus by a pathology CLIP (or CONCH), and the result is
 * written per split to `pairs-<split>.jsonl` (format: clip/pairing.ts) with a `summary.json`:
 *
 *   deno run -A cli.ts pair --dataset crc --root data/crc --corpus reports.txt \
 *     --weights weights/quiltnet-b32 --out pairing/
 *
 * Order of work: arguments, then the dataset and the corpus are opened and checked and every
 * output path is checked, all before the model is loaded; the corpus is embedded once (cached
 * in `<out>/cache`), the images of each split are embedded through the worker-pool DataLoader
 * and saved in chunks as they go, so Ctrl-C (or a crash) loses at most the chunk in progress and
 * the same command resumes. Exit status: 0 done, 1 failure while working, 2 bad arguments or
 * inputs, 130 interrupted (rerun to resume).
 */
import { parseArgs } from "node:util";
import { init } from "../kernels/device.ts";
import { checkOutputPath } from "../nn/formats/safe_write.ts";
import { pairingFileName } from "../clip/pairing.ts";
import { type Corpus, readCorpus } from "../clip/pairing_corpus.ts";
import { MAX_K } from "../clip/pairing_match.ts";
import {
  type PairingDataset,
  type PairingProgress,
  type PairingSummary,
  runPairing,
} from "../clip/pairing_run.ts";
import {
  type Dataset,
  DATASET_KINDS,
  type DatasetKind,
  openDataset,
} from "../train/data/datasets.ts";
import { loaderImageSource, pairingDataset } from "../train/data/pairing_source.ts";
import { defaultWorkers } from "../train/data/pool.ts";
import { loadPairingModel } from "./models.ts";
import { Progress } from "./progress.ts";

const USAGE = `usage: deno run -A cli.ts pair --dataset KIND --root DIR --corpus FILE
                        --weights FILE|DIR|random [--arch NAME|FILE] --out DIR [options]

Pairs every image of each split with its k most similar reports of the corpus (CLIP-IT step 1)
and writes OUT/pairs-<split>.jsonl (one header line, then one JSON line per image) and
OUT/summary.json.

dataset (as cli.ts data):
  --dataset KIND        ${DATASET_KINDS.join(" | ")}
  --root DIR            dataset folder (csv: the manifest file)
  --seed N              seed of stratified splits (default 42)
  --val-fraction F      validation fraction where no official split exists
  --test-fraction F     test fraction where no official split exists
  --split-file CSV      bach: fixed split, rows "name,split"
  --classes A,B,...     flat: known class names; folder/csv: class order
  --splits A,B          splits to pair (default: every split the dataset has)

corpus and model:
  --corpus FILE         UTF-8 text, one report per line (blank lines skipped)
  --model clip|conch    the pairing model's family (default clip)
  --weights FILE|DIR    checkpoint (clip: OpenCLIP / Hugging Face; conch: CONCH's); "random" =
                        random weights (seeded by --init-seed; a smoke test)
  --arch NAME|FILE      clip: built-in config (ViT-B-32, ViT-B-16, ..., tiny) or JSON, optional
                        when the weights carry one; conch: conch_ViT-B-16 (default) or JSON
  --tokenizer PATH      clip: merges .txt.gz or a folder with vocab.json + merges.txt (default:
                        beside the weights, else ../shared/data/clip-bpe); conch: tokenizer.json
                        (default: beside the weights)
  --init-seed N         seed of --weights random (default 0)

pairing:
  --out DIR             output folder (created if missing)
  --k N                 reports per image, 1..${MAX_K} (default 5)
  --chunk               score a report by its best context-sized window instead of truncating
                        it to the context (the paper truncates)
  --cache DIR           embeddings cache (default OUT/cache): the corpus, and the images in
                        chunks so an interrupted run resumes
  --save-every N        images per saved chunk (default 256)
  --batch N             images per GPU batch (default 16); text batches are 4N token rows
  --workers N           image decoding workers (default: cores - 1, at most 8; 0 = this thread)
  --quiet               no progress bars
  -h, --help            this text

Exit status: 0 done, 1 failure while working, 2 bad arguments or inputs, 130 interrupted (run
the same command again to resume).`;

/** Hooks for tests: an abort signal (as Ctrl-C) and a progress listener. */
export interface PairHooks {
  /** Aborting it interrupts the run as Ctrl-C does. */
  signal?: AbortSignal;
  /** Every progress event. */
  onProgress?: (p: PairingProgress) => void;
}

/** Reason of an interruption by Ctrl-C or the test hook. */
class Interrupted extends Error {
  constructor() {
    super("interrupted");
    this.name = "Interrupted";
  }
}

function intOption(
  name: string,
  v: string | undefined,
  min: number,
  problems: string[],
): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) problems.push(`--${name} must be an integer >= ${min}`);
  return n;
}

function fraction(name: string, v: string | undefined, problems: string[]): number | undefined {
  if (v === undefined) return undefined;
  const f = Number(v);
  if (!Number.isFinite(f)) problems.push(`--${name} must be a number, got "${v}"`);
  return f;
}

const BLOCKS = " ▁▂▃▄▅▆▇█";

/** The printed summary: corpus, then per split the scores, a histogram line and top reports. */
export function formatSummary(s: PairingSummary): string {
  const c = s.corpus;
  const out: string[] = [];
  const trunc = c.truncated === null || c.truncated === undefined
    ? "truncation not counted (the tokenizer cannot tell)"
    : s.chunk.enabled
    ? `${c.truncated} longer than ${s.model.context_length} tokens, scored by their best ` +
      `window (up to ${c.max_windows} windows, ${c.rows} in all)`
    : `${c.truncated} longer than ${s.model.context_length} tokens and truncated, as in the paper`;
  out.push(
    `corpus ${c.path}: ${c.reports} reports${
      c.blank ? ` (${c.blank} blank line(s) skipped)` : ""
    }; ${trunc}` +
      `${c.cached ? "; embeddings from the cache" : ""}`,
  );
  if (s.chunk.enabled && s.chunk.clamped) {
    out.push(
      `note: k x windows exceeds ${MAX_K}: top-${s.chunk.k_prime} windows per image were ` +
        `searched; ${s.chunk.cpu_rows} image(s) completed exactly on the CPU`,
    );
  }
  for (const [name, sp] of Object.entries(s.splits)) {
    const { min, mean, median, max } = sp.scores;
    const peak = Math.max(1, ...sp.histogram.counts);
    const bars = sp.histogram.counts.map((n) =>
      BLOCKS[n === 0 ? 0 : Math.max(1, Math.round((8 * n) / peak))]
    ).join("");
    out.push(
      `split ${name}: ${sp.count} images (${sp.embedded} embedded, ${sp.cached} from the cache)`,
      `  top-1 score min ${min.toFixed(4)} mean ${mean.toFixed(4)} median ${
        median.toFixed(4)
      } max ${max.toFixed(4)}  [${bars}]`,
      `  ${sp.distinct_top1} distinct reports at top-1; most used:`,
    );
    for (const r of sp.top_reports.slice(0, 5)) {
      out.push(
        `    ${String(r.count).padStart(6)} x report ${r.report} (line ${r.line}): ${
          JSON.stringify(r.text.length < 60 ? r.text : r.text.slice(0, 60) + "...")
        }`,
      );
    }
  }
  return out.join("\n");
}

/**
 * Run `pair` with the arguments after the command name (see the module comment and `--help`).
 * Returns the exit status; errors while working are thrown with a message naming the file.
 */
export async function pairCommand(args: string[], hooks: PairHooks = {}): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        dataset: { type: "string" },
        root: { type: "string" },
        seed: { type: "string" },
        "val-fraction": { type: "string" },
        "test-fraction": { type: "string" },
        "split-file": { type: "string" },
        classes: { type: "string" },
        splits: { type: "string" },
        corpus: { type: "string" },
        model: { type: "string", default: "clip" },
        weights: { type: "string" },
        arch: { type: "string" },
        tokenizer: { type: "string" },
        "init-seed": { type: "string", default: "0" },
        out: { type: "string" },
        k: { type: "string", default: "5" },
        chunk: { type: "boolean", default: false },
        cache: { type: "string" },
        "save-every": { type: "string", default: "256" },
        batch: { type: "string", default: "16" },
        workers: { type: "string" },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`pair: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const problems: string[] = [];
  const kind = values.dataset as DatasetKind | undefined;
  if (!kind) problems.push("--dataset is required");
  else if (!DATASET_KINDS.includes(kind)) problems.push(`unknown --dataset "${kind}"`);
  for (const f of ["root", "corpus", "out", "weights"] as const) {
    if (!values[f]) problems.push(`--${f} is required`);
  }
  const family = values.model;
  if (family !== "clip" && family !== "conch") {
    problems.push(`--model must be clip or conch, got "${family}"`);
  }
  const random = values.weights === "random";
  if (random && family === "clip" && !values.arch) problems.push("--weights random needs --arch");
  const k = intOption("k", values.k, 1, problems)!;
  if (k > MAX_K) problems.push(`--k must be at most ${MAX_K}, got ${k}`);
  const initSeed = intOption("init-seed", values["init-seed"], -(2 ** 31), problems)!;
  const saveEvery = intOption("save-every", values["save-every"], 1, problems)!;
  const batch = intOption("batch", values.batch, 1, problems)!;
  const workers = intOption("workers", values.workers, 0, problems) ?? defaultWorkers();
  const seed = intOption("seed", values.seed, -(2 ** 31), problems);
  const valFraction = fraction("val-fraction", values["val-fraction"], problems);
  const testFraction = fraction("test-fraction", values["test-fraction"], problems);
  const splits = values.splits?.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (values.splits !== undefined && !splits?.length) problems.push("--splits names no split");
  if (problems.length) {
    console.error(`pair: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const quiet = values.quiet;
  const out = values.out!;
  const cacheDir = values.cache ?? `${out}/cache`;

  // Inputs and outputs, checked before any model work.
  let ds: Dataset, data: PairingDataset, corpus: Corpus;
  try {
    ds = await openDataset(kind!, values.root!, {
      seed,
      valFraction,
      testFraction,
      splitFile: values["split-file"],
      classes: values.classes?.split(",").map((c) => c.trim()).filter((c) => c.length > 0),
    });
    data = pairingDataset(ds, splits);
    corpus = await readCorpus(values.corpus!);
    if (k > corpus.reports.length) {
      throw new Error(
        `--k ${k} is more than the ${corpus.reports.length} reports of --corpus ${values.corpus}`,
      );
    }
    await Deno.mkdir(out, { recursive: true }).catch((e) => {
      throw new Error(`--out ${out}: cannot create the folder (${(e as Error).message})`);
    });
    await Deno.mkdir(cacheDir, { recursive: true }).catch((e) => {
      throw new Error(`--cache ${cacheDir}: cannot create the folder (${(e as Error).message})`);
    });
    // No output may be an input of the run (safe_write.ts compares real paths and inodes).
    const inputs = [
      { path: values.corpus!, label: "--corpus" },
      ...(random ? [] : [{ path: values.weights!, label: "--weights" }]),
    ];
    for (const s of data.splits) {
      await checkOutputPath(`${out}/${pairingFileName(s.name)}`, { label: "--out", inputs });
    }
    await checkOutputPath(`${out}/summary.json`, { label: "--out", inputs });
  } catch (e) {
    // DatasetError, H5Error, an unreadable corpus, an output that cannot be written: all inputs.
    console.error(`pair: ${(e as Error).message}`);
    return 2;
  }
  if (!quiet) {
    const counts = data.splits.map((s) => `${s.name} ${s.ids.length}`).join(", ");
    console.error(
      `pair: dataset ${ds.kind} at ${ds.root}: ${data.classes.length} classes; ${counts}` +
        `\npair: corpus ${corpus.path}: ${corpus.reports.length} reports` +
        (corpus.blankLines ? ` (${corpus.blankLines} blank line(s) skipped)` : ""),
    );
  }

  const gpu = await init();
  const t0 = performance.now();
  const { model, dispose } = await loadPairingModel(
    family as "clip" | "conch",
    values.arch,
    random ? null : values.weights!,
    values.tokenizer,
    initSeed,
    cacheDir,
  );
  const ac = new AbortController();
  const onSigint = () => {
    if (ac.signal.aborted) Deno.exit(130);
    console.error("\npair: interrupted; finishing the current batch (Ctrl-C again to quit now)");
    ac.abort(new Interrupted());
  };
  const onHookAbort = () => ac.abort(new Interrupted());
  hooks.signal?.addEventListener("abort", onHookAbort);
  if (hooks.signal?.aborted) onHookAbort();
  Deno.addSignalListener("SIGINT", onSigint);
  let summary: PairingSummary;
  try {
    if (!quiet) {
      console.error(
        `pair: ${model.identity.name} (${model.identity.weights}) ready in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s on ${gpu.adapter.description || "WebGPU"}`,
      );
    }
    const images = loaderImageSource(ds, {
      size: model.image.imageSize,
      mean: model.image.mean,
      std: model.image.std,
      interpolation: model.image.interpolation,
      batch,
      workers,
    });
    const bars = new Map<string, Progress>();
    // Off a terminal every update is a line of the log: at most one every 5 s per bar.
    const tty = Deno.stderr.isTerminal();
    const shown = new Map<string, number>();
    const show = (bar: Progress, key: string, done: number) => {
      const now = performance.now();
      if (tty || done === 0 || done === bar.total || now - (shown.get(key) ?? 0) >= 5000) {
        shown.set(key, now);
        bar.update(done);
      }
    };
    const onProgress = (p: PairingProgress) => {
      hooks.onProgress?.(p);
      if (quiet) return;
      if (p.stage === "corpus" && !p.cached) {
        let bar = bars.get("corpus");
        if (!bar) {
          bar = new Progress("corpus ", p.total, values.chunk ? "windows" : "reports", false);
          bars.set("corpus", bar);
        }
        show(bar, "corpus", p.done);
      } else if (p.stage === "images") {
        if (p.cached === p.total) return;
        let bar = bars.get(p.split);
        if (!bar) {
          const label = `${p.split}${p.cached ? ` (${p.cached} cached)` : ""}`;
          bar = new Progress(label, p.total - p.cached, "images", false);
          bars.set(p.split, bar);
        }
        show(bar, p.split, p.done - p.cached);
      }
    };
    summary = await runPairing(model, corpus, data, images, {
      out,
      cacheDir,
      k,
      chunk: values.chunk,
      textBatch: 4 * batch,
      imageChunk: saveEvery,
      signal: ac.signal,
      onProgress,
    });
  } catch (e) {
    if (ac.signal.aborted && (e === ac.signal.reason || e instanceof Interrupted)) {
      console.error(
        `pair: interrupted; finished image chunks are saved in ${cacheDir}: run the same ` +
          `command again to resume`,
      );
      return 130;
    }
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    hooks.signal?.removeEventListener("abort", onHookAbort);
    dispose();
  }
  console.log(formatSummary(summary));
  console.log(
    `pair: wrote ${
      data.splits.map((s) => `${out}/${pairingFileName(s.name)}`).join(", ")
    }, ${out}/summary.json (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
  );
  return 0;
}
