/**
 * Plain-text tables of the metrics in train/metrics.ts, for a terminal or a log: one run's
 * report (headline numbers, per-class table, confusion matrix with class names), the mean and
 * spread over runs, and several configurations side by side. Returns strings; prints nothing.
 */
import type { AggregateReport, ClassificationReport, MeanStd } from "./metrics.ts";

/** How numbers are written in the tables. */
export interface TableOptions {
  /** Digits after the decimal point (default 4, or 2 with `percent`). */
  digits?: number;
  /** Write rates as percentages (0.9142 -> 91.42), as the paper does (default false). */
  percent?: boolean;
}

/** Written for a metric that is undefined (null). */
const NOT_AVAILABLE = "n/a";

function rateWriter(opts: TableOptions): (v: number | null) => string {
  const percent = opts.percent ?? false;
  const digits = opts.digits ?? (percent ? 2 : 4);
  return (v) => v === null ? NOT_AVAILABLE : (percent ? v * 100 : v).toFixed(digits);
}

/** Lays out rows as columns: the first column left-aligned, the others right-aligned. */
function columns(rows: string[][], gap = "  "): string[] {
  const widths: number[] = [];
  for (const row of rows) {
    row.forEach((cell, j) => widths[j] = Math.max(widths[j] ?? 0, cell.length));
  }
  return rows.map((row) =>
    row.map((cell, j) => j === 0 ? cell.padEnd(widths[j]) : cell.padStart(widths[j]))
      .join(gap).trimEnd()
  );
}

function aurocLabel(report: ClassificationReport): string {
  return report.auroc.kind === "binary"
    ? `AUROC (class '${report.classes[1]}' positive)`
    : "AUROC (macro one-vs-rest)";
}

/**
 * One run's report as a table: the headline numbers (n, accuracy, balanced accuracy,
 * macro-F1, AUROC), per-class support / predicted / recall / precision / F1 (and one-vs-rest
 * AUROC for C > 2), the confusion matrix with class names, and the report's warnings.
 * Undefined values read "n/a".
 */
export function formatReportTable(report: ClassificationReport, opts: TableOptions = {}): string {
  const rate = rateWriter(opts);
  const unit = opts.percent ? " (%)" : "";
  const lines: string[] = [];
  lines.push(
    `n = ${report.n}   accuracy ${rate(report.accuracy)}   balanced accuracy ` +
      `${rate(report.balanced_accuracy)}   macro-F1 ${rate(report.macro_f1)}   ` +
      `${aurocLabel(report)} ${rate(report.auroc.value)}${unit}`,
  );
  lines.push("");
  const ovr = report.auroc.per_class;
  const header = ["class", "support", "predicted", "recall", "precision", "F1"];
  if (ovr) header.push("AUROC");
  const rows = [header];
  report.per_class.forEach((m, k) => {
    const row = [m.name, String(m.support), String(m.predicted), rate(m.recall)];
    row.push(rate(m.precision), rate(m.f1));
    if (ovr) row.push(rate(ovr[k]));
    rows.push(row);
  });
  lines.push(...columns(rows));
  lines.push("");
  lines.push("confusion matrix (rows = true class, columns = predicted class)");
  const cm = [["true \\ predicted", ...report.classes]];
  report.confusion.forEach((row, k) => cm.push([report.classes[k], ...row.map(String)]));
  lines.push(...columns(cm));
  if (report.warnings.length > 0) {
    lines.push("");
    lines.push("warnings:");
    for (const w of report.warnings) lines.push(`- ${w}`);
  }
  return lines.join("\n") + "\n";
}

function meanStdCell(m: MeanStd, rate: (v: number | null) => string): string {
  if (m.mean === null) return NOT_AVAILABLE;
  return m.std === null ? rate(m.mean) : `${rate(m.mean)} ± ${rate(m.std)}`;
}

/**
 * Several runs of one configuration: each headline metric and each class's recall as
 * "mean ± std" (sample std, ddof = 1) followed by every run's value.
 */
export function formatAggregateTable(agg: AggregateReport, opts: TableOptions = {}): string {
  const rate = rateWriter(opts);
  const lines = [
    `${agg.runs} run${agg.runs === 1 ? "" : "s"}: mean ± sample std (ddof = ${agg.std_ddof})` +
    (opts.percent ? ", in %" : ""),
    "",
  ];
  const rows = [["metric", "mean ± std", ...agg.run_names]];
  const add = (name: string, m: MeanStd) =>
    rows.push([name, meanStdCell(m, rate), ...m.values.map(rate)]);
  add("accuracy", agg.accuracy);
  add("balanced accuracy", agg.balanced_accuracy);
  add("macro-F1", agg.macro_f1);
  add("AUROC", agg.auroc);
  rows.push([""]);
  rows.push(["recall per class"]);
  for (const c of agg.per_class) add(`  ${c.name}`, c.recall);
  lines.push(...columns(rows));
  if (agg.warnings.length > 0) {
    lines.push("");
    lines.push("warnings:");
    for (const w of agg.warnings) lines.push(`- ${w}`);
  }
  return lines.join("\n") + "\n";
}

/** One configuration of a {@link formatComparisonTable}. */
export interface ComparisonRow {
  /** What was run, e.g. "baseline (linear probe)" or "CLIP-IT". */
  name: string;
  /** Its runs' metrics. */
  aggregate: AggregateReport;
}

/**
 * Configurations side by side (e.g. baseline vs CLIP-IT): balanced accuracy, accuracy,
 * macro-F1 and AUROC as "mean ± std" over each configuration's runs, with the run count.
 */
export function formatComparisonTable(rows: ComparisonRow[], opts: TableOptions = {}): string {
  const rate = rateWriter(opts);
  const table = [["", "runs", "balanced accuracy", "accuracy", "macro-F1", "AUROC"]];
  for (const { name, aggregate: a } of rows) {
    table.push([
      name,
      String(a.runs),
      meanStdCell(a.balanced_accuracy, rate),
      meanStdCell(a.accuracy, rate),
      meanStdCell(a.macro_f1, rate),
      meanStdCell(a.auroc, rate),
    ]);
  }
  const note = `mean ± sample std (ddof = 1) over runs${opts.percent ? ", in %" : ""}`;
  return [...columns(table, "   "), note].join("\n") + "\n";
}
