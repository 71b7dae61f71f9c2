/**
 * `cli.ts data`: opens a dataset and reports, per split and class, the number of images, their
 * sizes and every file that cannot be read (reading each image in parallel workers), so a
 * problem in one file among 100,000 shows up before training does.
 */
import { parseArgs } from "node:util";
import {
  type Dataset,
  DATASET_KINDS,
  DatasetError,
  type DatasetKind,
  type DatasetOptions,
  openDataset,
} from "../train/data/datasets.ts";
import { defaultWorkers } from "../train/data/pool.ts";
import { checkSplit, type SplitReport } from "../train/data/check.ts";
import { H5Error } from "../nn/formats/hdf5.ts";

const USAGE = `usage: cli.ts data --dataset KIND --root DIR [options]

Counts the images of every split and class, their sizes, and lists unreadable files.

  --dataset KIND        ${DATASET_KINDS.join(" | ")}
  --root DIR            dataset folder (csv: the manifest file)
  --seed N              seed of stratified splits (default 42)
  --val-fraction F      validation fraction where no official split exists
  --test-fraction F     test fraction where no official split exists
  --split-file CSV      bach: fixed split, rows "name,split"
  --classes A,B,...     flat: known class names; folder/csv: class order
  --workers N           decoding workers (default: cores - 1, at most 8)
  --quick               count files only; do not read the images
  --json                print the report as JSON
  -h, --help            this text

Exit status: 0 all images readable, 1 some unreadable, 2 bad arguments or dataset.`;

/** The whole report. */
export interface DataReport {
  kind: DatasetKind;
  root: string;
  classes: string[];
  notes: string[];
  splits: SplitReport[];
  checked: boolean;
}

/** Formats a report as text (one table per split, then the unreadable files). */
export function formatReport(r: DataReport): string {
  const lines = [
    `dataset ${r.kind} at ${r.root}: ${r.classes.length} classes (${r.classes.join(", ")})`,
  ];
  for (const note of r.notes) lines.push(`  note: ${note}`);
  if (!r.checked) lines.push("  (--quick: images not read; sizes unknown except for HDF5 arrays)");
  const w = Math.max(5, ...r.classes.map((c) => c.length));
  for (const s of r.splits) {
    const bad = s.unreadable.length;
    lines.push("", `split ${s.name}: ${s.count} images${r.checked ? `, ${bad} unreadable` : ""}`);
    lines.push(`  ${"class".padEnd(w)}  ${"count".padStart(8)}  ${"bad".padStart(5)}  sizes`);
    for (const c of s.classes) {
      const sizes = Object.entries(c.sizes).sort((a, b) => b[1] - a[1]).map(([k, v]) =>
        `${k} (${v})`
      ).join(", ");
      lines.push(
        `  ${c.name.padEnd(w)}  ${String(c.count).padStart(8)}  ${
          (r.checked ? String(c.unreadable) : "-").padStart(5)
        }  ${sizes || "-"}`,
      );
    }
  }
  // Said once per run, naming the files (PIL's conversion is kept for parity).
  const noted = r.splits.flatMap((s) => s.notes ?? []);
  for (const note of new Set(noted.map((x) => x.note))) {
    const files = noted.filter((x) => x.note === note).map((x) => x.path);
    lines.push(
      "",
      `note: ${files.length} image(s) ${note}: ${files.slice(0, 10).join(", ")}${
        files.length > 10 ? ", ..." : ""
      }`,
    );
  }
  const all = r.splits.flatMap((s) => s.unreadable);
  if (r.checked) {
    lines.push("", all.length ? `unreadable files (${all.length}):` : "all images readable");
    for (const b of all) lines.push(`  ${b.path}: ${b.reason}`);
  }
  return lines.join("\n");
}

function fraction(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const f = Number(v);
  if (!Number.isFinite(f)) throw new DatasetError(`--${name} must be a number, got "${v}"`);
  return f;
}

/**
 * A flag that this dataset kind would ignore, said as a refusal (a user who passes
 * `--split-file` to a CRC run believes the split is fixed). Null when the flags agree.
 */
function contradictoryFlags(
  kind: DatasetKind,
  v: { [k: string]: string | boolean | undefined },
): string | null {
  const given = (f: string) => v[f] !== undefined;
  const refuse: [string, boolean, string][] = [
    ["split-file", kind !== "bach", "only BACH takes a split file"],
    ["classes", kind === "crc" || kind === "bach" || kind === "pcam", `${kind} has fixed classes`],
    ["val-fraction", kind === "pcam", "PCAM has an official validation split"],
    ["test-fraction", kind === "pcam" || kind === "crc", `${kind} has an official test split`],
    ["seed", kind === "pcam", "PCAM's splits are not drawn at random"],
  ];
  for (const [flag, bad, why] of refuse) {
    if (bad && given(flag)) return `--${flag} does nothing with --dataset ${kind} (${why})`;
  }
  if (kind === "bach" && given("split-file")) {
    for (const f of ["seed", "val-fraction", "test-fraction"]) {
      if (given(f)) return `--${f} does nothing with --split-file (the file fixes the split)`;
    }
  }
  return null;
}

/**
 * The `data` subcommand: parses `args` (without the word "data"), opens the dataset, checks
 * every image and prints the report. Returns the exit status (0 ok, 1 unreadable images,
 * 2 bad arguments or dataset).
 */
export async function dataCommand(args: string[]): Promise<number> {
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
        workers: { type: "string" },
        quick: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    console.error(`${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const kind = values.dataset as DatasetKind | undefined;
  if (!kind || !DATASET_KINDS.includes(kind) || !values.root) {
    console.error(
      `${
        !kind
          ? "--dataset is required"
          : !DATASET_KINDS.includes(kind)
          ? `unknown --dataset "${kind}"`
          : "--root is required"
      }\n\n${USAGE}`,
    );
    return 2;
  }
  const contradiction = contradictoryFlags(kind, values);
  if (contradiction) {
    console.error(`${contradiction}\n\n${USAGE}`);
    return 2;
  }
  try {
    await Deno.stat(values.root);
  } catch {
    console.error(`error: --root ${values.root}: does not exist`);
    return 2;
  }
  let ds: Dataset;
  let workers: number;
  try {
    const seed = values.seed === undefined ? undefined : Number(values.seed);
    if (seed !== undefined && !Number.isInteger(seed)) {
      throw new DatasetError(`--seed must be an integer, got "${values.seed}"`);
    }
    workers = values.workers === undefined ? defaultWorkers() : Number(values.workers);
    if (!Number.isInteger(workers) || workers < 0) {
      throw new DatasetError(`--workers must be a non-negative integer, got "${values.workers}"`);
    }
    const opts: DatasetOptions = {
      seed,
      valFraction: fraction("val-fraction", values["val-fraction"]),
      testFraction: fraction("test-fraction", values["test-fraction"]),
      splitFile: values["split-file"],
      classes: values.classes?.split(",").map((c) => c.trim()).filter((c) => c.length > 0),
    };
    ds = await openDataset(kind, values.root, opts);
  } catch (err) {
    if (err instanceof DatasetError || err instanceof H5Error) {
      console.error(`error: ${err.message}`);
      return 2;
    }
    throw err;
  }
  const splits: SplitReport[] = [];
  const started = performance.now();
  let lastPrint = started;
  for (const s of ds.splits) {
    splits.push(
      await checkSplit(ds, s, {
        workers,
        quick: values.quick,
        progress: (done, total) => {
          const now = performance.now();
          if (now - lastPrint > 5000 && !values.json) {
            lastPrint = now;
            console.error(`  ${s.name}: ${done} / ${total} images read`);
          }
        },
      }),
    );
  }
  const report: DataReport = {
    kind,
    root: ds.root,
    classes: ds.classes,
    notes: ds.notes,
    splits,
    checked: !values.quick,
  };
  if (values.json) console.log(JSON.stringify(report, null, 1));
  else {
    console.log(formatReport(report));
    if (!values.quick) {
      const total = splits.reduce((a, s) => a + s.count, 0);
      const secs = (performance.now() - started) / 1000;
      console.log(`read ${total} images in ${secs.toFixed(1)} s with ${workers || "no"} worker(s)`);
    }
  }
  return splits.some((s) => s.unreadable.length > 0) ? 1 : 0;
}
