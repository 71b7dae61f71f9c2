/**
 * Inline SVG plots for report.html (train/report.ts): line plots with axes, ticks, grid and a
 * legend, and a histogram. Pure string building, no scripts, no external resources.
 *
 * Every plot carries what a program needs to check it: the plot area's `<g class="plot-area">`
 * has `data-x-domain="x0 x1"`, `data-y-domain="y0 y1"` (data units) and `data-x-range="left
 * right"`, `data-y-range="bottom top"` (SVG pixels), so a point (x, y) is drawn at
 * `left + (x - x0) / (x1 - x0) * (right - left)`, `bottom - (y - y0) / (y1 - y0) * (bottom -
 * top)`, rounded to 2 decimals. Each series is one `<polyline data-series="name"
 * data-points="x,y x,y ...">` whose `points` are those pixels in the same order and whose
 * `data-points` are the logged values, exactly (JavaScript's shortest round-trip spelling).
 */

/**
 * `text` made safe inside HTML text and quoted attributes: `& < > " '` become entities, C0
 * control characters other than tab, newline and carriage return become U+FFFD (HTML forbids
 * them), and lone surrogates become U+FFFD (`toWellFormed`).
 */
export function escapeHtml(text: string): string {
  return text.toWellFormed()
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, "\ufffd")
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/** Tick positions of an axis: `step` apart, from `first` to at most `last`. */
export interface Ticks {
  /** The tick values. */
  values: number[];
  /** Distance between ticks (1, 2 or 5 times a power of ten). */
  step: number;
  /** Decimals that write every tick exactly (from `step`). */
  decimals: number;
}

/**
 * About `count` round-numbered ticks covering [lo, hi] (lo < hi, both finite), at least
 * `minStep` apart (1 for an axis of whole steps).
 */
export function niceTicks(lo: number, hi: number, count = 5, minStep = 0): Ticks {
  const raw = Math.max(minStep, (hi - lo) / Math.max(1, count));
  const power = Math.pow(10, Math.floor(Math.log10(raw)));
  const mantissa = raw / power;
  // the step of 1, 2, 5 or 10 times `power` nearest to `raw` on a log scale (as d3 picks)
  const step =
    (mantissa >= Math.sqrt(50)
      ? 10
      : mantissa >= Math.sqrt(10)
      ? 5
      : mantissa >= Math.SQRT2
      ? 2
      : 1) * power;
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const values: number[] = [];
  const first = Math.ceil(lo / step - 1e-9);
  for (let k = first; k * step <= hi + step * 1e-9; k++) {
    values.push(Number((k * step).toFixed(decimals)));
  }
  return { values, step, decimals };
}

/** One line of a {@link linePlotSvg}. */
export interface PlotSeries {
  /** Legend text. */
  name: string;
  /** The points in drawing order; all finite (callers drop and list the others). */
  points: { x: number; y: number }[];
  /** CSS colour. */
  color: string;
  /** Dashed line (for secondary series). */
  dashed?: boolean;
  /** Draw a circle at each point (default: when the series has at most 150 points). */
  markers?: boolean;
}

/** Labels and size of a {@link linePlotSvg}. */
export interface LinePlotOptions {
  /** Title above the plot. */
  title: string;
  /** X axis label. */
  xLabel: string;
  /** Y axis label. */
  yLabel: string;
  /** Width in pixels (default 540). */
  width?: number;
  /** Height in pixels (default 320). */
  height?: number;
  /** X values are whole numbers (steps): no ticks between them. */
  integerX?: boolean;
}

const MARGIN = { left: 74, right: 16, top: 34, bottom: 70 };

/** A number written for an SVG attribute: 2 decimals, no trailing zeros. */
function px(v: number): string {
  return String(Number(v.toFixed(2)));
}

/** [min, max] of `values` (a loop: spreading 10^5+ values into Math.min overflows the stack). */
function extent(values: number[]): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

/** The domain of `values`: nice-rounded outward when `nice`, widened when it is one value. */
function domainOf(values: number[], nice: boolean): [number, number] {
  let [lo, hi] = extent(values);
  if (lo === hi) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  if (!nice) return [lo, hi];
  const t = niceTicks(lo, hi);
  return [Math.floor(lo / t.step + 1e-9) * t.step, Math.ceil(hi / t.step - 1e-9) * t.step];
}

/** A linear scale from a domain onto a pixel range. */
function scale(d0: number, d1: number, r0: number, r1: number): (v: number) => number {
  return (v) => r0 + (v - d0) / (d1 - d0) * (r1 - r0);
}

interface Frame {
  svg: string[];
  x: (v: number) => number;
  y: (v: number) => number;
}

/** Opens the SVG and draws the frame, grid, ticks and labels of a plot over the given domains. */
function frame(
  xDomain: [number, number],
  yDomain: [number, number],
  opts: LinePlotOptions,
  width: number,
  height: number,
): Frame {
  const left = MARGIN.left, right = width - MARGIN.right;
  const top = MARGIN.top, bottom = height - MARGIN.bottom;
  const x = scale(xDomain[0], xDomain[1], left, right);
  const y = scale(yDomain[0], yDomain[1], bottom, top);
  const svg: string[] = [];
  svg.push(
    `<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" ` +
      `width="${width}" height="${height}" role="img" aria-label="${escapeHtml(opts.title)}">`,
  );
  svg.push(`<text class="plot-title" x="${left}" y="20">${escapeHtml(opts.title)}</text>`);
  svg.push(
    `<g class="plot-area" data-x-domain="${xDomain[0]} ${xDomain[1]}" ` +
      `data-y-domain="${yDomain[0]} ${yDomain[1]}" data-x-range="${left} ${right}" ` +
      `data-y-range="${bottom} ${top}">`,
  );
  const yt = niceTicks(yDomain[0], yDomain[1]);
  for (const v of yt.values) {
    const py = px(y(v));
    svg.push(`<line class="grid" x1="${left}" x2="${right}" y1="${py}" y2="${py}"/>`);
    svg.push(
      `<text class="tick" x="${left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle">` +
        `${v.toFixed(yt.decimals)}</text>`,
    );
  }
  const xt = niceTicks(
    xDomain[0],
    xDomain[1],
    Math.max(2, Math.floor((right - left) / 80)),
    opts.integerX ? 1 : 0,
  );
  for (const v of xt.values) {
    const pxv = px(x(v));
    svg.push(`<line class="tick-mark" x1="${pxv}" x2="${pxv}" y1="${bottom}" y2="${bottom + 5}"/>`);
    svg.push(
      `<text class="tick" x="${pxv}" y="${bottom + 18}" text-anchor="middle">` +
        `${v.toFixed(xt.decimals)}</text>`,
    );
  }
  svg.push(`<line class="axis" x1="${left}" x2="${right}" y1="${bottom}" y2="${bottom}"/>`);
  svg.push(`<line class="axis" x1="${left}" x2="${left}" y1="${top}" y2="${bottom}"/>`);
  svg.push(
    `<text class="axis-label" x="${(left + right) / 2}" y="${bottom + 36}" ` +
      `text-anchor="middle">${escapeHtml(opts.xLabel)}</text>`,
  );
  svg.push(
    `<text class="axis-label" transform="translate(12 ${(top + bottom) / 2}) rotate(-90)" ` +
      `text-anchor="middle">${escapeHtml(opts.yLabel)}</text>`,
  );
  return { svg, x, y };
}

/**
 * A line plot of `series` (at least one point in all) as an inline `<svg>` string. The x domain
 * is the data's range; the y domain is the data's range rounded outward to ticks. See the module
 * doc for the data attributes a test reads back.
 */
export function linePlotSvg(series: PlotSeries[], opts: LinePlotOptions): string {
  const width = opts.width ?? 540, height = opts.height ?? 320;
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) throw new RangeError(`linePlotSvg: "${opts.title}" has no points`);
  const f = frame(
    domainOf(all.map((p) => p.x), false),
    domainOf(all.map((p) => p.y), true),
    opts,
    width,
    height,
  );
  for (const s of series) {
    if (s.points.length === 0) continue;
    const name = escapeHtml(s.name);
    const pixels = s.points.map((p) => `${px(f.x(p.x))},${px(f.y(p.y))}`).join(" ");
    const values = s.points.map((p) => `${p.x},${p.y}`).join(" ");
    f.svg.push(
      `<polyline class="series" data-series="${name}" data-points="${values}" ` +
        `points="${pixels}" fill="none" stroke="${s.color}" stroke-width="${s.dashed ? 1.5 : 2}"${
          s.dashed ? ' stroke-dasharray="5 4"' : ""
        }/>`,
    );
    if (s.markers ?? s.points.length <= 150) {
      for (const p of s.points) {
        f.svg.push(
          `<circle data-series="${name}" data-step="${p.x}" data-value="${p.y}" ` +
            `cx="${px(f.x(p.x))}" cy="${px(f.y(p.y))}" r="3" fill="${s.color}"/>`,
        );
      }
    }
  }
  f.svg.push("</g>");
  // legend below the x axis label, one entry per series
  let lx = MARGIN.left;
  const ly = height - 14;
  for (const s of series) {
    f.svg.push(
      `<line x1="${lx}" x2="${lx + 22}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" ` +
        `stroke-width="3"${s.dashed ? ' stroke-dasharray="5 4"' : ""}/>`,
    );
    f.svg.push(`<text class="legend" x="${lx + 28}" y="${ly}">${escapeHtml(s.name)}</text>`);
    lx += 40 + 7 * s.name.length;
  }
  f.svg.push("</svg>");
  return f.svg.join("\n");
}

/** Counts of a histogram: `counts[i]` values fall in [edges[i], edges[i + 1]). */
export interface HistogramBins {
  /** bins + 1 increasing edges; the last bin also holds values equal to the last edge. */
  edges: number[];
  /** Values per bin. */
  counts: number[];
}

/** Equal-width bins over [min, max] of finite `values` (widened when they are all equal). */
export function histogramBins(values: number[], bins: number): HistogramBins {
  let [lo, hi] = extent(values);
  if (lo === hi) {
    lo -= 0.01;
    hi += 0.01;
  }
  const edges = Array.from({ length: bins + 1 }, (_, i) => lo + (hi - lo) * i / bins);
  const counts = new Array<number>(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / (hi - lo) * bins))]++;
  return { edges, counts };
}

/**
 * A histogram of finite `values` as an inline `<svg>`: one `<rect class="bin" data-lo data-hi
 * data-count>` per bin, axes with ticks, and a dashed line at the mean.
 */
export function histogramSvg(
  values: number[],
  opts: LinePlotOptions & { bins?: number },
): string {
  if (values.length === 0) throw new RangeError(`histogramSvg: "${opts.title}" has no values`);
  const width = opts.width ?? 540, height = opts.height ?? 320;
  const bins = opts.bins ?? Math.min(40, Math.max(5, Math.ceil(Math.sqrt(values.length))));
  const h = histogramBins(values, bins);
  const maxCount = extent(h.counts)[1];
  const f = frame(
    [h.edges[0], h.edges[bins]],
    domainOf([0, maxCount], true),
    opts,
    width,
    height,
  );
  h.counts.forEach((count, i) => {
    const x0 = f.x(h.edges[i]), x1 = f.x(h.edges[i + 1]);
    const y0 = f.y(0), y1 = f.y(count);
    f.svg.push(
      `<rect class="bin" data-lo="${h.edges[i]}" data-hi="${h.edges[i + 1]}" ` +
        `data-count="${count}" x="${px(x0 + 0.5)}" y="${px(y1)}" ` +
        `width="${px(Math.max(0.5, x1 - x0 - 1))}" height="${px(y0 - y1)}"/>`,
    );
  });
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const mx = px(f.x(mean));
  f.svg.push(
    `<line class="mean" x1="${mx}" x2="${mx}" y1="${px(f.y(0))}" y2="${MARGIN.top}" ` +
      `stroke-dasharray="5 4"/>`,
  );
  f.svg.push("</g>");
  f.svg.push(
    `<text class="legend" x="${MARGIN.left}" y="${height - 14}">dashed line: mean ` +
      `${mean.toFixed(4)}</text>`,
  );
  f.svg.push("</svg>");
  return f.svg.join("\n");
}
