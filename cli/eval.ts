/**
 * `cli.ts eval RUN [RUN ...]`: the metrics of one or more run folders on their test split
 * (or `--split val`), as JSON and printed tables; with several runs (seeds), mean +/- std.
 *
 *   deno run -A cli.ts eval runs/clipit-s0 runs/clipit-s1 runs/clipit-s2 --out clipit.json
 *
 * A run's `eval.json` (written when it finished) is used as it is unless `--recompute`, another
 * `--split`, or another dataset (`--dataset ... --root ...`) asks to run its `model.safetensors`
 * again; the run's own dataset options come from its config.json.
 */
import { parseArgs } from "node:util";
import { init } from "../kernels/device.ts";
import { checkOutputPath, writeFileAtomic } from "../nn/formats/safe_write.ts";
import { backboneInput } from "../clip/backbone.ts";
import { DataLoader } from "../train/data/loader.ts";
import type { Dataset } from "../train/data/datasets.ts";
import { predictBatches, reportOf } from "../train/evaluate.ts";
import { aggregateRuns, type ClassificationReport } from "../train/metrics.ts";
import { formatAggregateTable, formatReportTable } from "../train/metrics_table.ts";
import { loadInferenceModel } from "../train/models.ts";
import { RUN_FILES, RunDir } from "../train/run.ts";
import {
  choiceOption,
  DATASET_OPTIONS,
  DATASET_USAGE,
  datasetArgs,
  intOption,
  openDatasetArgs,
} from "./args.ts";
import { Progress } from "./progress.ts";

const USAGE = `usage: deno run -A cli.ts eval RUN [RUN ...] [options]

Accuracy, balanced accuracy (the paper's metric), macro-F1, per-class recall and precision,
the confusion matrix and AUROC of each run folder; with several runs, mean +/- std across them.

  --split test|val      which split (default test)
  --recompute           run model.safetensors again instead of reading eval.json
  --out FILE            write the reports (and the aggregate) as JSON
  --batch N             images per batch when recomputing (default 64)
  --workers N           decoding workers
  --json                print JSON instead of tables
  --quiet               no progress bar
Evaluate on another dataset than the run's own (recomputes):
${DATASET_USAGE}
  -h, --help            this text`;

/** The files of the run folders `eval` reads, for the output check. */
function runInputs(runs: RunDir[]): { path: string; label: string }[] {
  return runs.flatMap((r) =>
    [RUN_FILES.config, RUN_FILES.model, RUN_FILES.eval, RUN_FILES.metrics].map((f) => ({
      path: r.path(f),
      label: `run ${r.dir}`,
    }))
  );
}

/** The dataset a run was trained on, from the arguments stored in its config.json. */
async function runDataset(run: RunDir): Promise<Dataset> {
  const args = run.config.args as string[] | undefined;
  if (!Array.isArray(args)) throw new Error(`${run.dir}: config.json has no stored arguments`);
  const { values } = parseArgs({ args, options: DATASET_OPTIONS, strict: false });
  const problems: string[] = [];
  const a = datasetArgs(values as Record<string, string | undefined>, problems);
  if (problems.length) throw new Error(`${run.dir}: ${problems.join("; ")}`);
  return await openDatasetArgs(a);
}

/** Predictions of `run`'s model.safetensors on a split of `ds`. */
async function evaluateRun(
  run: RunDir,
  ds: Dataset,
  splitName: "test" | "val",
  opts: { batch: number; workers?: number; quiet: boolean },
): Promise<ClassificationReport> {
  const split = ds.splits.find((s) => s.name === splitName);
  if (!split) throw new Error(`${ds.kind}:${ds.root} has no ${splitName} split`);
  const { model, meta } = await loadInferenceModel(run.path(RUN_FILES.model));
  try {
    if (meta.classes.join(",") !== ds.classes.join(",")) {
      throw new Error(
        `${run.path(RUN_FILES.model)} predicts ${meta.classes.join(", ")} but the dataset has ` +
          `${ds.classes.join(", ")}`,
      );
    }
    model.eval();
    const loader = new DataLoader(split, {
      batchSize: opts.batch,
      ...backboneInput(model.backbone),
      shuffle: false,
      workers: opts.workers,
    });
    const bar = new Progress(`eval ${run.dir}`, split.labels.length, "images", opts.quiet);
    try {
      const p = await predictBatches(
        loader.batches(0),
        (images) => ({ logits: model.forward(images).logits }),
        meta.classes.length,
        (done) => bar.update(done),
      );
      return reportOf(p, split.labels, ds.classes);
    } finally {
      await loader.close();
    }
  } finally {
    model.dispose();
  }
}

/** Run `eval` with the arguments after the command name. */
export async function evalCommand(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        ...DATASET_OPTIONS,
        split: { type: "string", default: "test" },
        recompute: { type: "boolean", default: false },
        out: { type: "string" },
        batch: { type: "string", default: "64" },
        workers: { type: "string" },
        json: { type: "boolean", default: false },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (e) {
    console.error(`eval: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const problems: string[] = [];
  if (positionals.length === 0) problems.push("name at least one run folder");
  const split = choiceOption("split", values.split, ["test", "val"] as const, problems)!;
  const batch = intOption("batch", values.batch, 1, problems)!;
  const workers = intOption("workers", values.workers, 0, problems);
  const other = values.dataset || values.root ? datasetArgs(values, problems) : null;
  if (problems.length) {
    console.error(`eval: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const runs: RunDir[] = [];
  try {
    for (const dir of positionals) {
      const run = await RunDir.open(dir, "eval");
      if (!(await run.has(RUN_FILES.model)) && !(await run.has(RUN_FILES.eval))) {
        throw new Error(
          `eval ${dir}: neither ${RUN_FILES.model} nor ${RUN_FILES.eval} (unfinished run?)`,
        );
      }
      runs.push(run);
    }
    if (values.out) await checkOutputPath(values.out, { label: "--out", inputs: runInputs(runs) });
  } catch (e) {
    console.error(`eval: ${(e as Error).message}`);
    return 2;
  }
  const otherDs = other ? await openDatasetArgs(other) : null;
  const reports: ClassificationReport[] = [];
  let initialised = false;
  for (const run of runs) {
    const cached = !values.recompute && split === "test" && !otherDs &&
      await run.has(RUN_FILES.eval);
    if (cached) {
      reports.push(JSON.parse(await Deno.readTextFile(run.path(RUN_FILES.eval))));
      continue;
    }
    if (!initialised) {
      await init();
      initialised = true;
    }
    const ds = otherDs ?? await runDataset(run);
    reports.push(await evaluateRun(run, ds, split, { batch, workers, quiet: values.quiet }));
  }
  const aggregate = reports.length > 1 ? aggregateRuns(reports, runs.map((r) => r.dir)) : null;
  if (values.json) console.log(JSON.stringify({ runs: reports, aggregate }, null, 2));
  else {
    reports.forEach((r, i) =>
      console.log(`== ${runs[i].dir} (${split})\n${formatReportTable(r)}\n`)
    );
    if (aggregate) {
      console.log(
        `== mean +/- std over ${reports.length} runs\n${formatAggregateTable(aggregate)}`,
      );
    }
  }
  if (values.out) {
    await writeFileAtomic(
      values.out,
      JSON.stringify(
        { split, runs: runs.map((r, i) => ({ dir: r.dir, ...reports[i] })), aggregate },
        null,
        2,
      ) + "\n",
      { label: "--out", inputs: runInputs(runs) },
    );
  }
  return 0;
}
