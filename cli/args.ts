/**
 * Argument helpers shared by the commands: number options that collect problems instead of
 * throwing (so a command reports every bad option at once, then exits 2), and the dataset
 * options every dataset-reading command takes.
 */
import { type ParseArgsConfig } from "node:util";
import {
  type Dataset,
  DATASET_KINDS,
  type DatasetKind,
  openDataset,
} from "../train/data/datasets.ts";

/** An integer option >= `min`, or undefined when absent; a bad value is added to `problems`. */
export function intOption(
  name: string,
  v: string | undefined,
  min: number,
  problems: string[],
): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isInteger(n) || n < min) {
    problems.push(`--${name} must be an integer >= ${min}, got "${v}"`);
  }
  return n;
}

/** A finite number option in [lo, hi], or undefined when absent. */
export function numberOption(
  name: string,
  v: string | undefined,
  problems: string[],
  lo = -Infinity,
  hi = Infinity,
): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < lo || n > hi) {
    problems.push(`--${name} must be a number in [${lo}, ${hi}], got "${v}"`);
  }
  return n;
}

/** One of `choices`, or undefined when absent. */
export function choiceOption<T extends string>(
  name: string,
  v: string | undefined,
  choices: readonly T[],
  problems: string[],
): T | undefined {
  if (v === undefined) return undefined;
  if (!(choices as readonly string[]).includes(v)) {
    problems.push(`--${name} must be one of ${choices.join(", ")}, got "${v}"`);
  }
  return v as T;
}

/** A comma-separated list (empty items dropped). */
export function listOption(v: string | undefined): string[] | undefined {
  return v?.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

/** The dataset options, for `parseArgs`. */
export const DATASET_OPTIONS = {
  dataset: { type: "string" },
  root: { type: "string" },
  "dataset-seed": { type: "string" },
  "val-fraction": { type: "string" },
  "test-fraction": { type: "string" },
  "split-file": { type: "string" },
  classes: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

/** Usage lines of {@link DATASET_OPTIONS}. */
export const DATASET_USAGE = `  --dataset KIND        ${DATASET_KINDS.join(" | ")}
  --root DIR            dataset folder (csv: the manifest file)
  --dataset-seed N      seed of the stratified splits (default 42)
  --val-fraction F      validation fraction where no official split exists
  --test-fraction F     test fraction where no official split exists
  --split-file CSV      bach: fixed split, rows "name,split"
  --classes A,B,...     flat: known class names; folder/csv: class order`;

/** What the dataset options parsed to. */
export interface DatasetArgs {
  /** The dataset kind. */
  kind: DatasetKind;
  /** Its folder or manifest. */
  root: string;
  /** openDataset's options. */
  options: Parameters<typeof openDataset>[2];
}

/** Check the dataset options (problems are collected) and return them. */
export function datasetArgs(
  values: Record<string, string | boolean | undefined>,
  problems: string[],
): DatasetArgs {
  const kind = values.dataset as DatasetKind | undefined;
  if (!kind) problems.push("--dataset is required");
  else if (!DATASET_KINDS.includes(kind)) {
    problems.push(`unknown --dataset "${kind}" (use ${DATASET_KINDS.join(", ")})`);
  }
  if (!values.root) problems.push("--root is required");
  const v = (k: string) => values[k] as string | undefined;
  return {
    kind: kind!,
    root: v("root")!,
    options: {
      seed: intOption("dataset-seed", v("dataset-seed"), -(2 ** 31), problems),
      valFraction: numberOption("val-fraction", v("val-fraction"), problems, 0, 1),
      testFraction: numberOption("test-fraction", v("test-fraction"), problems, 0, 1),
      splitFile: v("split-file"),
      classes: listOption(v("classes")),
    },
  };
}

/** Open the dataset the options name. */
export async function openDatasetArgs(a: DatasetArgs): Promise<Dataset> {
  return await openDataset(a.kind, a.root, a.options);
}

/**
 * An AbortController fired by the first Ctrl-C (a second one exits at once with 130), and a
 * function that removes the handler.
 */
export function interruptOnCtrlC(what: string): { signal: AbortSignal; release: () => void } {
  const ac = new AbortController();
  const handler = () => {
    if (ac.signal.aborted) Deno.exit(130);
    console.error(`\n${what}: stopping after the current step (Ctrl-C again to quit at once)`);
    ac.abort();
  };
  try {
    Deno.addSignalListener("SIGINT", handler);
  } catch {
    // no signals on this platform: nothing to release
  }
  return {
    signal: ac.signal,
    release: () => {
      try {
        Deno.removeSignalListener("SIGINT", handler);
      } catch {
        // never added
      }
    },
  };
}
