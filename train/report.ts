/**
 * report.html of a run: ONE self-contained page (inline CSS and SVG, images as PNG data: URLs,
 * no script, no external resource) with the run's title and every option, the loss, accuracy
 * and learning-rate curves from metrics.jsonl, the test evaluation (headline numbers, per-class
 * recall bars, the confusion matrix as a heat map), the pairing-score histogram and a grid of
 * sample images beside their paired reports.
 *
 * Anything missing renders as a "not available" note, never a broken plot; non-finite values
 * (NaN, Infinity, or null as JSON.stringify writes NaN) are left out of the plots and listed;
 * all text is escaped (reports are raw OCR text).
 */
import type { DecodedImage } from "../nn/formats/image.ts";
import { encode as encodePng } from "fast-png";
import type { ClassificationReport } from "./metrics.ts";
import { escapeHtml, histogramSvg, linePlotSvg, type PlotSeries } from "./report_plot.ts";
import { REPORT_CSS } from "./report_style.ts";

/** A metrics.jsonl record written every logged training step. Extra fields are kept. */
export interface TrainRecord {
  /** Record kind. */
  type: "train";
  /** Optimiser step (1-based, counted over the whole run). */
  step: number;
  /** Epoch (may be fractional). */
  epoch: number;
  /** Total loss of the step. */
  loss: number;
  /** Cross-entropy part of the loss (CLIP-IT). */
  ce?: number;
  /** Distillation part, mean(1 - cos(t_hat, t)) (CLIP-IT). */
  distill?: number;
  /** Learning rate used for the step. */
  lr: number;
  /** Training throughput. */
  images_per_s?: number;
  /** Any other field the trainer logs. */
  [extra: string]: unknown;
}

/** A metrics.jsonl record written at each validation. Extra fields are kept. */
export interface ValRecord {
  /** Record kind. */
  type: "val";
  /** Step after which validation ran. */
  step: number;
  /** Epoch at that step. */
  epoch: number;
  /** Mean validation loss. */
  loss: number;
  /** Validation accuracy. */
  accuracy: number;
  /** Validation balanced accuracy. */
  balanced_accuracy: number;
  /** Any other field the trainer logs. */
  [extra: string]: unknown;
}

/** A metrics.jsonl record of the final test evaluation: a classification report plus where. */
export type TestRecord = ClassificationReport & {
  /** Record kind. */
  type: "test";
  /** Step of the evaluated checkpoint. */
  step?: number;
  /** Epoch of the evaluated checkpoint. */
  epoch?: number;
  /** Any other field. */
  [extra: string]: unknown;
};

/**
 * One line of metrics.jsonl. Records of other types are accepted and ignored; fields are read
 * defensively (a missing field is no point, a non-finite one is listed).
 */
export type MetricsRecord = TrainRecord | ValRecord | TestRecord | {
  /** Record kind. */
  type: string;
  /** Any field. */
  [extra: string]: unknown;
};

/** An 8-bit RGB image, row-major HWC: the decoders' type (`nn/formats/image.ts`). */
export type RgbImage = DecodedImage;

/** One image of the sample grid with its paired report. */
export interface ReportSample {
  /** The image as PNG bytes (used as they are), ... */
  png?: Uint8Array;
  /** ... or as RGB pixels (downscaled to at most `thumbnailSize` and PNG-encoded). */
  image?: RgbImage;
  /** Where the image comes from (file name or index), shown small. */
  id?: string;
  /** True class name. */
  label: string;
  /** Predicted class name, when the model has predicted. */
  prediction?: string;
  /** The paired report's text (raw, escaped here). */
  report: string;
  /** Index of the paired report in the corpus. */
  reportIndex?: number;
  /** Cosine similarity of the pair. */
  score: number;
}

/** Everything report.html shows; every part but the title may be absent. */
export interface ReportData {
  /** Page title, e.g. "CLIP-IT on CRC, seed 1". */
  title: string;
  /** A line under the title, e.g. the run folder and the date. */
  subtitle?: string;
  /** Every option of the run (config.json); nested objects are shown with dotted keys. */
  config?: Record<string, unknown>;
  /** The records of metrics.jsonl in file order (see {@link parseMetricsJsonl}). */
  metrics?: MetricsRecord[];
  /** The final test evaluation; defaults to the last `type: "test"` record of `metrics`. */
  classification?: ClassificationReport;
  /** Top-1 cosine score of every pairing (for the histogram). */
  pairingScores?: number[];
  /** Images beside their paired reports. */
  samples?: ReportSample[];
  /** Longest side of a sample thumbnail made from `image` (default 160). */
  thumbnailSize?: number;
  /** Extra notes shown at the end (e.g. the problems {@link parseMetricsJsonl} found). */
  notes?: string[];
}

/** The records of a metrics.jsonl text and the lines that could not be read. */
export interface ParsedMetrics {
  /** Records in file order. */
  records: MetricsRecord[];
  /** One message per unreadable line ("line 7: ..."); a run killed mid-write leaves one. */
  problems: string[];
}

/**
 * Reads metrics.jsonl: one JSON object with a string `type` per line; blank lines are skipped,
 * unreadable lines are reported in `problems` (never thrown: a report of a crashed run is still
 * worth rendering).
 */
export function parseMetricsJsonl(text: string): ParsedMetrics {
  const records: MetricsRecord[] = [];
  const problems: string[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      problems.push(`metrics.jsonl line ${i + 1}: not JSON (${(e as Error).message})`);
      return;
    }
    if (
      typeof value !== "object" || value === null ||
      typeof (value as { type?: unknown }).type !== "string"
    ) {
      problems.push(`metrics.jsonl line ${i + 1}: not an object with a string "type"`);
      return;
    }
    records.push(value as MetricsRecord);
  });
  return { records, problems };
}

/** A value that should have been a finite number but was not (left out of a plot). */
interface Skipped {
  series: string;
  step: unknown;
  value: unknown;
}

/** The finite (step, field) points of records of `type`, and the non-finite ones. */
function pointsOf(
  records: MetricsRecord[],
  type: string,
  field: string,
  series: string,
  skipped: Skipped[],
): { x: number; y: number }[] {
  const points: { x: number; y: number }[] = [];
  for (const r of records) {
    if (r.type !== type || !(field in r)) continue;
    const x = r.step, y = r[field];
    if (
      typeof x === "number" && Number.isFinite(x) && typeof y === "number" && Number.isFinite(y)
    ) {
      points.push({ x, y });
    } else {
      skipped.push({ series, step: x, value: y });
    }
  }
  return points;
}

function notAvailable(what: string): string {
  return `<p class="na">${escapeHtml(what)}</p>`;
}

function fmt(v: number | null | undefined, digits = 4): string {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "n/a";
}

function section(id: string, title: string, body: string): string {
  return `<section id="${id}"><h2>${escapeHtml(title)}</h2>\n${body}\n</section>`;
}

/** Flattens nested objects to dotted keys; arrays and primitives are JSON values. */
function flattenConfig(obj: Record<string, unknown>, prefix = ""): [string, string][] {
  const rows: [string, string][] = [];
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix + k;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      rows.push(...flattenConfig(v as Record<string, unknown>, key + "."));
    } else {
      rows.push([key, typeof v === "object" ? JSON.stringify(v) : String(v)]);
    }
  }
  return rows;
}

function configSection(config: Record<string, unknown> | undefined): string {
  const rows = config ? flattenConfig(config) : [];
  if (rows.length === 0) {
    return section(
      "config",
      "Configuration",
      notAvailable("No configuration recorded: not available."),
    );
  }
  const table = rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`);
  return section(
    "config",
    "Configuration",
    `<details><summary>All ${rows.length} options</summary>\n` +
      `<table class="config">${table.join("\n")}</table></details>`,
  );
}

const COLORS = {
  train: "#1f6fb4",
  val: "#d9480f",
  ce: "#5c940d",
  distill: "#9c36b5",
  accuracy: "#2b8a3e",
  balanced: "#5f3dc4",
  lr: "#495057",
};

function curvesSection(records: MetricsRecord[], skipped: Skipped[]): string {
  const loss: PlotSeries[] = [
    {
      name: "train loss",
      points: pointsOf(records, "train", "loss", "train loss", skipped),
      color: COLORS.train,
    },
    {
      name: "train CE",
      points: pointsOf(records, "train", "ce", "train CE", skipped),
      color: COLORS.ce,
      dashed: true,
    },
    {
      name: "train distill",
      points: pointsOf(records, "train", "distill", "train distill", skipped),
      color: COLORS.distill,
      dashed: true,
    },
    {
      name: "val loss",
      points: pointsOf(records, "val", "loss", "val loss", skipped),
      color: COLORS.val,
      markers: true,
    },
  ].filter((s) => s.points.length > 0);
  const acc: PlotSeries[] = [
    {
      name: "val accuracy",
      points: pointsOf(records, "val", "accuracy", "val accuracy", skipped),
      color: COLORS.accuracy,
      markers: true,
    },
    {
      name: "val balanced accuracy",
      points: pointsOf(records, "val", "balanced_accuracy", "val balanced accuracy", skipped),
      color: COLORS.balanced,
      markers: true,
    },
  ].filter((s) => s.points.length > 0);
  const lr: PlotSeries[] = [
    {
      name: "learning rate",
      points: pointsOf(records, "train", "lr", "learning rate", skipped),
      color: COLORS.lr,
    },
  ].filter((s) => s.points.length > 0);
  const plots = [
    loss.length > 0
      ? linePlotSvg(loss, { title: "Loss", xLabel: "step", yLabel: "loss", integerX: true })
      : notAvailable(
        "No finite training or validation loss in metrics.jsonl: loss curves not available.",
      ),
    acc.length > 0
      ? linePlotSvg(acc, {
        title: "Validation accuracy",
        xLabel: "step",
        yLabel: "accuracy",
        integerX: true,
      })
      : notAvailable("No validation records in metrics.jsonl: accuracy curves not available."),
  ];
  const balanced = acc.find((s) => s.name === "val balanced accuracy")?.points ?? [];
  if (balanced.length > 0) {
    const best = balanced.reduce((a, b) => b.y > a.y ? b : a);
    plots[1] += `<p class="caption">Best validation balanced accuracy ${fmt(best.y)} at step ` +
      `${best.x}.</p>`;
  }
  if (lr.length > 0) {
    plots.push(
      linePlotSvg(lr, { title: "Learning rate", xLabel: "step", yLabel: "lr", integerX: true }),
    );
  }
  return section(
    "curves",
    "Training curves",
    `<div class="plots">${plots.map((p) => `<figure>${p}</figure>`).join("\n")}</div>`,
  );
}

/** Background of a heat-map cell for a fraction in [0, 1]: near-white to dark blue. */
function heat(fraction: number): string {
  const from = [247, 249, 252], to = [24, 78, 145];
  const c = from.map((f, i) => Math.round(f + (to[i] - f) * fraction));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function headline(report: ClassificationReport | undefined): string {
  if (!report) return notAvailable("No test evaluation recorded: headline metrics not available.");
  const auroc = report.auroc.kind === "binary" ? "AUROC" : "AUROC (macro OvR)";
  const cards: [string, string][] = [
    ["balanced accuracy", fmt(report.balanced_accuracy)],
    ["accuracy", fmt(report.accuracy)],
    ["macro-F1", fmt(report.macro_f1)],
    [auroc, fmt(report.auroc.value)],
    ["test images", String(report.n)],
  ];
  return `<p class="caption">On the test set:</p><div class="cards">${
    cards.map(([k, v]) =>
      `<div class="card"><div class="k">${k}</div><div class="v">${v}</div></div>`
    )
      .join("")
  }</div>`;
}

function perClassTable(report: ClassificationReport): string {
  const ovr = report.auroc.per_class;
  const rows = report.per_class.map((m, k) => {
    const bar = m.recall === null
      ? `<span class="muted">n/a (no test sample)</span>`
      : `<div class="cell"><div class="bar"><div style="width:${
        (m.recall * 100).toFixed(1)
      }%"></div></div><span class="num">${fmt(m.recall)}</span></div>`;
    return `<tr><th>${escapeHtml(m.name)}</th><td class="num">${m.support}</td>` +
      `<td class="recall">${bar}</td><td class="num">${fmt(m.precision)}</td>` +
      `<td class="num">${fmt(m.f1)}</td>${ovr ? `<td class="num">${fmt(ovr[k])}</td>` : ""}</tr>`;
  });
  return `<table class="per-class"><thead><tr><th>class</th><th>support</th><th>recall</th>` +
    `<th>precision</th><th>F1</th>${ovr ? "<th>AUROC (OvR)</th>" : ""}</tr></thead>` +
    `<tbody>${rows.join("\n")}</tbody></table>`;
}

function confusionTable(report: ClassificationReport): string {
  const names = report.classes.map(escapeHtml);
  const head = `<tr><th class="corner">true \\ predicted</th>${
    names.map((n) => `<th class="col">${n}</th>`).join("")
  }<th class="total">total</th></tr>`;
  const rows = report.confusion.map((row, t) => {
    const total = row.reduce((a, b) => a + b, 0);
    const cells = row.map((count, p) => {
      const frac = total > 0 ? count / total : 0;
      const cls = `${t === p ? "diag" : ""}${frac > 0.5 ? " dark" : ""}`.trim();
      return `<td${cls ? ` class="${cls}"` : ""} style="background:${heat(frac)}" ` +
        `data-true="${t}" data-pred="${p}" data-count="${count}" title="${names[t]} predicted ` +
        `as ${names[p]}: ${count}">${count}<small>${
          total > 0 ? (frac * 100).toFixed(0) + "%" : ""
        }</small></td>`;
    });
    return `<tr><th>${names[t]}</th>${cells.join("")}<td class="total">${total}</td></tr>`;
  });
  return `<table class="confusion">${head}\n${rows.join("\n")}</table>` +
    `<p class="caption">Rows: true class; columns: predicted class; shade and small ` +
    `number: share of the row.</p>`;
}

function evaluationSection(report: ClassificationReport | undefined): string {
  if (!report) {
    return section(
      "evaluation",
      "Test evaluation",
      notAvailable(
        "No test evaluation recorded: per-class metrics and confusion matrix not available.",
      ),
    );
  }
  const warnings = report.warnings.length === 0
    ? ""
    : `<ul class="warnings">${
      report.warnings.map((w) => `<li>${escapeHtml(w)}</li>`).join("")
    }</ul>`;
  return section(
    "evaluation",
    "Test evaluation",
    `<div class="eval"><div><h3>Per class</h3>${perClassTable(report)}</div>` +
      `<div class="scroll"><h3>Confusion matrix</h3>${
        confusionTable(report)
      }</div></div>${warnings}`,
  );
}

function pairingSection(scores: number[] | undefined): string {
  const all = scores ?? [];
  const finite = all.filter((v) => typeof v === "number" && Number.isFinite(v));
  if (finite.length === 0) {
    return section(
      "pairing",
      "Pairing scores",
      notAvailable("No pairing scores recorded: histogram not available."),
    );
  }
  const sorted = [...finite].sort((a, b) => a - b);
  const mean = finite.reduce((a, b) => a + b, 0) / finite.length;
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  const stats = `n ${finite.length} · mean ${fmt(mean)} · median ${fmt(median)} · ` +
    `min ${fmt(sorted[0])} · max ${fmt(sorted[sorted.length - 1])}`;
  const bad = all.length - finite.length;
  const svg = histogramSvg(finite, {
    title: "Top-1 cosine score of each image's paired report",
    xLabel: "cosine similarity",
    yLabel: "images",
    width: 720,
  });
  return section(
    "pairing",
    "Pairing scores",
    `<figure>${svg}</figure><p class="caption">${stats}${
      bad > 0 ? ` · ${bad} non-finite score${bad === 1 ? "" : "s"} left out` : ""
    }</p>`,
  );
}

/** `img` shrunk by an integer box filter so that its longest side is at most `maxSide`. */
export function thumbnail(img: RgbImage, maxSide: number): RgbImage {
  const factor = Math.ceil(Math.max(img.width, img.height) / maxSide);
  if (factor <= 1) return img;
  const w = Math.ceil(img.width / factor), h = Math.ceil(img.height / factor);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const sum = [0, 0, 0];
      let n = 0;
      for (let sy = y * factor; sy < Math.min(img.height, (y + 1) * factor); sy++) {
        for (let sx = x * factor; sx < Math.min(img.width, (x + 1) * factor); sx++) {
          const i = (sy * img.width + sx) * 3;
          sum[0] += img.data[i];
          sum[1] += img.data[i + 1];
          sum[2] += img.data[i + 2];
          n++;
        }
      }
      for (let c = 0; c < 3; c++) out[(y * w + x) * 3 + c] = Math.round(sum[c] / n);
    }
  }
  return { width: w, height: h, data: out };
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Characters of a report shown before "full report". */
const EXCERPT_CHARS = 240;

function sampleCard(s: ReportSample, index: number, maxSide: number, notes: string[]): string {
  let img = `<div class="no-image">no image</div>`;
  let png = s.png;
  let small = false;
  if (!png && s.image) {
    const { width, height, data } = s.image;
    if (!(width > 0 && height > 0 && data.length === width * height * 3)) {
      notes.push(
        `sample ${index + 1}: image data has ${data.length} bytes, expected width * height * 3 = ` +
          `${width} * ${height} * 3`,
      );
    } else {
      const t = thumbnail(s.image, maxSide);
      small = t.width < 96;
      png = encodePng({ width: t.width, height: t.height, data: t.data, channels: 3, depth: 8 });
    }
  }
  if (png) {
    img = `<img class="${small ? "pixelated" : ""}" src="data:image/png;base64,${base64(png)}" ` +
      `alt="sample ${index + 1}, class ${escapeHtml(s.label)}">`;
  }
  const verdict = s.prediction === undefined
    ? ""
    : `<span class="tag ${s.prediction === s.label ? "right" : "wrong"}">predicted <b>${
      escapeHtml(s.prediction)
    }</b></span>`;
  const text = s.report;
  const excerpt = text.length > EXCERPT_CHARS ? text.slice(0, EXCERPT_CHARS).trimEnd() + "…" : text;
  const full = text.length > EXCERPT_CHARS
    ? `<details><summary>full report (${text.length} characters)</summary>` +
      `<p class="report-text">${escapeHtml(text)}</p></details>`
    : "";
  const where = [
    s.id ? escapeHtml(s.id) : `sample ${index + 1}`,
    s.reportIndex !== undefined ? `report #${s.reportIndex}` : "",
  ].filter((x) => x).join(" · ");
  return `<figure class="sample${
    verdict ? (s.prediction === s.label ? " right" : " wrong") : ""
  }">` +
    `${img}<figcaption><div class="tags"><span class="tag">label <b>${escapeHtml(s.label)}</b>` +
    `</span>${verdict}</div><div class="meta">${where} · pair score ` +
    `<b class="num">${fmt(s.score)}</b></div><p class="report-text excerpt">` +
    `${escapeHtml(excerpt)}</p>${full}</figcaption></figure>`;
}

function samplesSection(data: ReportData, notes: string[]): string {
  const samples = data.samples ?? [];
  if (samples.length === 0) {
    return section(
      "samples",
      "Sample pairs",
      notAvailable("No samples recorded: image-report pairs not available."),
    );
  }
  const maxSide = data.thumbnailSize ?? 160;
  return section(
    "samples",
    "Sample pairs",
    `<div class="samples">${
      samples.map((s, i) => sampleCard(s, i, maxSide, notes)).join("\n")
    }</div>`,
  );
}

function notesSection(skipped: Skipped[], notes: string[]): string {
  if (skipped.length === 0 && notes.length === 0) return "";
  const parts: string[] = [];
  if (notes.length > 0) {
    parts.push(
      `<ul class="warnings">${notes.map((n) => `<li>${escapeHtml(n)}</li>`).join("")}</ul>`,
    );
  }
  if (skipped.length > 0) {
    const shown = skipped.slice(0, 50).map((s) =>
      `<tr><td>${escapeHtml(s.series)}</td><td class="num">${escapeHtml(String(s.step))}</td>` +
      `<td class="num">${escapeHtml(String(s.value))}</td></tr>`
    );
    const more = skipped.length > 50
      ? `<p class="caption">… and ${skipped.length - 50} more.</p>`
      : "";
    parts.push(
      `<p>${skipped.length} logged value${skipped.length === 1 ? " is" : "s are"} not finite ` +
        `and left out of the plots:</p><table class="skipped" id="non-finite"><tr><th>series</th>` +
        `<th>step</th><th>value</th></tr>${shown.join("")}</table>${more}`,
    );
  }
  return section("notes", "Notes", parts.join("\n"));
}

/** The last `type: "test"` record that looks like a classification report, if any. */
function lastTestReport(records: MetricsRecord[]): ClassificationReport | undefined {
  for (let i = records.length - 1; i >= 0; i--) {
    const r = records[i];
    if (
      r.type === "test" && Array.isArray(r.classes) && Array.isArray(r.confusion) &&
      Array.isArray(r.per_class) && typeof r.auroc === "object" && r.auroc !== null &&
      Array.isArray(r.warnings)
    ) return r as unknown as ClassificationReport;
  }
  return undefined;
}

/**
 * report.html for `data`: a complete, self-contained HTML document (inline CSS and SVG, PNG
 * data: URLs, no script, no external resource). Missing parts render as "not available" notes,
 * non-finite logged values are left out of the plots and listed in a "Notes" section, and all
 * text is escaped.
 */
export function renderReport(data: ReportData): string {
  const records = data.metrics ?? [];
  const skipped: Skipped[] = [];
  const notes = [...(data.notes ?? [])];
  const report = data.classification ?? lastTestReport(records);
  const curves = curvesSection(records, skipped);
  const samples = samplesSection(data, notes);
  const body = [
    `<header><h1>${escapeHtml(data.title)}</h1>${
      data.subtitle ? `<p class="subtitle">${escapeHtml(data.subtitle)}</p>` : ""
    }${headline(report)}</header>`,
    configSection(data.config),
    curves,
    evaluationSection(report),
    pairingSection(data.pairingScores),
    samples,
    notesSection(skipped, notes),
  ].filter((s) => s).join("\n");
  return `<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n` +
    `<meta name="viewport" content="width=device-width, initial-scale=1">\n` +
    `<title>${escapeHtml(data.title)}</title>\n<style>${REPORT_CSS}</style>\n</head>\n` +
    `<body>\n<main>\n${body}\n</main>\n</body>\n</html>\n`;
}
