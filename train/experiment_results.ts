/**
 * The results of an experiment (train/experiment.ts) as the paper reports them: per variant the
 * test balanced accuracy, mean +/- sample std (ddof = 1) over the seeds, its difference from
 * the unimodal baseline (difference of the means, in points, as the paper's "unimodal ->
 * CLIP-IT" columns) and the paired difference per seed (mean +/- std over the seeds where
 * both runs finished: the seed-to-seed noise of the gap); and the headline row
 * "unimodal -> CLIP-IT (delta)". Rendered as JSON (`results.json`) and markdown (`results.md`).
 *
 * All numbers in the summary are percentages (a run's eval.json holds fractions).
 */
import { aggregateRuns, type ClassificationReport, type MeanStd, meanStd } from "./metrics.ts";
import type { Stage } from "./pipeline.ts";

/** One planned run and its test report (null while it has not finished). */
export interface RunOutcome {
  /** Run name, `<variant>-s<seed>`. */
  name: string;
  /** The variant. */
  variant: string;
  /** The seed. */
  seed: number;
  /** The test report of its eval.json, or null. */
  report: ClassificationReport | null;
}

/** A variant's line of the results. */
export interface VariantSummary {
  /** Variant name (`baseline`, `clipit`, `no-lora`, ...). */
  variant: string;
  /** What it is, for a reader. */
  title: string;
  /** The stage it trains. */
  stage: Stage;
  /** Runs planned (seeds). */
  planned: number;
  /** Runs finished. */
  runs: number;
  /** Seeds of the finished runs, in plan order. */
  seeds: number[];
  /** Test balanced accuracy (%) over the finished runs. */
  balanced_accuracy: MeanStd;
  /** Test accuracy (%). */
  accuracy: MeanStd;
  /** Test macro-F1 (%). */
  macro_f1: MeanStd;
  /** mean(variant) - mean(unimodal), points; null for the baseline or without both means. */
  delta_vs_unimodal: number | null;
  /** (variant - unimodal) per seed where both finished, points: mean +/- std; null for the
   * baseline. */
  paired_delta: MeanStd | null;
}

/** What results.json holds. */
export interface ExperimentSummary {
  /** Always "clipit-experiment/1". */
  format: "clipit-experiment/1";
  /** The metric of the headline and of `delta_vs_unimodal`. */
  metric: "balanced_accuracy";
  /** The split evaluated. */
  split: "test";
  /** Every number is in percent (fractions x 100). */
  unit: "percent";
  /** The sample std's delta degrees of freedom. */
  std_ddof: 1;
  /** What was run on what (dataset, backbone, ...): the caller's description. */
  about: Record<string, unknown>;
  /** The seeds planned. */
  seeds: number[];
  /** Per variant, in plan order. */
  variants: VariantSummary[];
  /** The paper's row: unimodal -> CLIP-IT; null until both have a finished run. */
  headline: {
    /** The baseline's balanced accuracy (%). */
    unimodal: MeanStd;
    /** CLIP-IT's (%). */
    clipit: MeanStd;
    /** Difference of the means, points. */
    delta: number;
    /** As the paper writes it: "88.13 ± 0.20 -> 91.42 ± 0.30 (+3.29)". */
    row: string;
  } | null;
  /** Runs not finished yet (no eval.json). */
  pending: string[];
  /** Every planned run finished. */
  complete: boolean;
}

/** How a variant is described in the results. */
export interface VariantInfo {
  /** Title for a reader. */
  title: string;
  /** The stage it trains. */
  stage: Stage;
}

const pct = (v: number | null) => v === null ? null : 100 * v;

function toPercent(m: MeanStd): MeanStd {
  return {
    mean: pct(m.mean),
    std: pct(m.std),
    n: m.n,
    values: m.values.map(pct),
  };
}

/**
 * The summary of `outcomes` (every planned run, finished or not). `info` describes each
 * variant; the unimodal reference is the variant `baseline`, CLIP-IT is `clipit`.
 */
export function summarizeExperiment(
  outcomes: RunOutcome[],
  info: Record<string, VariantInfo>,
  about: Record<string, unknown> = {},
): ExperimentSummary {
  const variants = [...new Set(outcomes.map((o) => o.variant))];
  const seeds = [...new Set(outcomes.map((o) => o.seed))];
  const baselineBySeed = new Map<number, number>();
  for (const o of outcomes) {
    if (o.variant === "baseline" && o.report) {
      baselineBySeed.set(o.seed, 100 * o.report.balanced_accuracy);
    }
  }
  const lines: VariantSummary[] = variants.map((variant) => {
    const mine = outcomes.filter((o) => o.variant === variant);
    const done = mine.filter((o) => o.report !== null);
    const reports = done.map((o) => o.report!);
    const agg = reports.length ? aggregateRuns(reports, done.map((o) => o.name)) : null;
    const empty = meanStd([]);
    const ba = agg ? toPercent(agg.balanced_accuracy) : empty;
    let paired: MeanStd | null = null;
    if (variant !== "baseline") {
      paired = meanStd(
        done.flatMap((o) => {
          const b = baselineBySeed.get(o.seed);
          return b === undefined ? [] : [100 * o.report!.balanced_accuracy - b];
        }),
      );
    }
    return {
      variant,
      title: info[variant]?.title ?? variant,
      stage: info[variant]?.stage ?? "clipit",
      planned: mine.length,
      runs: done.length,
      seeds: done.map((o) => o.seed),
      balanced_accuracy: ba,
      accuracy: agg ? toPercent(agg.accuracy) : empty,
      macro_f1: agg ? toPercent(agg.macro_f1) : empty,
      delta_vs_unimodal: null,
      paired_delta: paired,
    };
  });
  const base = lines.find((l) => l.variant === "baseline");
  for (const l of lines) {
    if (l === base || !base) continue;
    const a = l.balanced_accuracy.mean, b = base.balanced_accuracy.mean;
    l.delta_vs_unimodal = a === null || b === null ? null : a - b;
  }
  const clip = lines.find((l) => l.variant === "clipit");
  let headline: ExperimentSummary["headline"] = null;
  if (base && clip && base.runs > 0 && clip.runs > 0) {
    const delta = clip.delta_vs_unimodal!;
    headline = {
      unimodal: base.balanced_accuracy,
      clipit: clip.balanced_accuracy,
      delta,
      row: `${cell(base.balanced_accuracy)} -> ${cell(clip.balanced_accuracy)} (${signed(delta)})`,
    };
  }
  const pending = outcomes.filter((o) => o.report === null).map((o) => o.name);
  return {
    format: "clipit-experiment/1",
    metric: "balanced_accuracy",
    split: "test",
    unit: "percent",
    std_ddof: 1,
    about,
    seeds,
    variants: lines,
    headline,
    pending,
    complete: pending.length === 0,
  };
}

/** "91.42 ± 0.30", "91.42" (one run), "-" (none). */
function cell(m: MeanStd, digits = 2): string {
  if (m.mean === null) return "-";
  return m.std === null
    ? m.mean.toFixed(digits)
    : `${m.mean.toFixed(digits)} ± ${m.std.toFixed(digits)}`;
}

/** "+3.29" / "-0.19". */
function signed(x: number, digits = 2): string {
  const s = x.toFixed(digits);
  return x >= 0 && !s.startsWith("-") ? `+${s}` : s;
}

function escapeCell(s: string): string {
  return s.replaceAll("|", "\\|").replaceAll("\n", " ");
}

/**
 * The summary as markdown: the paper-style row (backbone | dataset | unimodal -> CLIP-IT |
 * delta), then every variant (runs, balanced accuracy mean ± std, the delta from the unimodal
 * baseline, the paired delta, each seed's value), then what is still pending.
 * `labels.backbone` / `labels.dataset` name the row (default "backbone" / "dataset").
 */
export function formatExperimentMarkdown(
  s: ExperimentSummary,
  labels: { backbone?: string; dataset?: string; title?: string; notes?: string[] } = {},
): string {
  const out: string[] = [];
  out.push(`# ${labels.title ?? "CLIP-IT experiment"}`, "");
  for (const n of labels.notes ?? []) out.push(n);
  if (labels.notes?.length) out.push("");
  out.push(
    `Balanced accuracy on the test split (%), mean ± sample std (ddof = 1) over seeds ` +
      `${s.seeds.join(", ")}; delta = difference of the means (points); paired delta = the ` +
      `per-seed difference from the same seed's unimodal run, mean ± std.`,
    "",
  );
  const backbone = escapeCell(labels.backbone ?? "backbone");
  const dataset = escapeCell(labels.dataset ?? "dataset");
  out.push("| backbone | dataset | unimodal -> CLIP-IT | delta |", "| --- | --- | --- | ---: |");
  if (s.headline) {
    const h = s.headline;
    out.push(
      `| ${backbone} | ${dataset} | ${cell(h.unimodal)} -> ${cell(h.clipit)} | ${
        signed(h.delta)
      } |`,
    );
  } else {
    const why = s.variants.some((v) => v.variant === "clipit")
      ? "(not finished)"
      : "(no CLIP-IT run in this experiment)";
    out.push(`| ${backbone} | ${dataset} | ${why} | - |`);
  }
  out.push(
    "",
    "| variant | runs | balanced accuracy | delta vs unimodal | paired delta | per seed |",
    "| --- | ---: | ---: | ---: | ---: | --- |",
  );
  for (const v of s.variants) {
    const perSeed = v.balanced_accuracy.values.map((x, i) =>
      `s${v.seeds[i]} ${x === null ? "n/a" : x.toFixed(2)}`
    ).join(", ");
    out.push(
      `| ${escapeCell(`${v.variant}: ${v.title}`)} | ${v.runs}/${v.planned} | ${
        cell(v.balanced_accuracy)
      } | ${v.delta_vs_unimodal === null ? "" : signed(v.delta_vs_unimodal)} | ${
        v.paired_delta && v.paired_delta.mean !== null
          ? `${signed(v.paired_delta.mean)}${
            v.paired_delta.std === null ? "" : ` ± ${v.paired_delta.std.toFixed(2)}`
          }`
          : ""
      } | ${perSeed} |`,
    );
  }
  if (s.pending.length) {
    out.push(
      "",
      `Not finished: ${s.pending.join(", ")} (run the same command again to continue).`,
    );
  }
  return out.join("\n") + "\n";
}
