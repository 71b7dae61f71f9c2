/**
 * train/report.ts: the HTML is parsed back (curves hold exactly the logged points, in order,
 * scaled onto their axes; the confusion matrix, histogram and samples hold the data; text is
 * escaped; nothing external is referenced), and the page is opened in headless Chromium (no
 * console error, a screenshot that is not blank). The Chromium test skips when `chromium` is
 * not installed (`apt-get install chromium`; .ci/run installs it).
 */
import assert from "node:assert/strict";
import { decode as decodePng, encode as encodePng } from "fast-png";
import { type ClassificationReport, classificationReport } from "../train/metrics.ts";
import {
  type MetricsRecord,
  parseMetricsJsonl,
  renderReport,
  type ReportData,
  type RgbImage,
  thumbnail,
} from "../train/report.ts";
import { escapeHtml, niceTicks } from "../train/report_plot.ts";
import { Rng } from "../nn/tensor.ts";
import { capturePage, findChromium } from "./chromium_util.ts";

// ---- a tiny reader for the markup renderReport writes (quoted attributes, escaped values) ----

interface Tag {
  name: string;
  attrs: Record<string, string>;
  index: number;
}

function unescape(s: string): string {
  return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'").replace(/&amp;/g, "&");
}

/** Every start tag named `name` in `html`, with its attributes unescaped, in document order. */
function tags(html: string, name: string): Tag[] {
  const out: Tag[] = [];
  for (const m of html.matchAll(new RegExp(`<${name}(\\s[^>]*)?>`, "g"))) {
    const attrs: Record<string, string> = {};
    for (const a of (m[1] ?? "").matchAll(/([\w:-]+)="([^"]*)"/g)) attrs[a[1]] = unescape(a[2]);
    out.push({ name, attrs, index: m.index! });
  }
  return out;
}

/** The `<svg class="plot">` elements with their title, as separate strings. */
function plots(html: string): { title: string; svg: string }[] {
  return [...html.matchAll(/<svg class="plot"[\s\S]*?<\/svg>/g)].map((m) => ({
    title: tags(m[0], "svg")[0].attrs["aria-label"],
    svg: m[0],
  }));
}

function pairs(attr: string): number[][] {
  return attr.split(" ").map((p) => p.split(",").map(Number));
}

// ---- data --------------------------------------------------------------------------------

const CLASSES = ["normal", "tumor & <stroma>", "lymph"];

function testReport(seed = 3): ClassificationReport {
  const rng = new Rng(seed);
  const n = 60, c = CLASSES.length;
  const labels = Int32Array.from({ length: n }, (_, i) => i % c);
  const probs = new Float32Array(n * c);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < c; k++) probs[i * c + k] = rng.next() + (k === labels[i] ? 0.6 : 0);
  }
  return classificationReport(labels, probs, CLASSES);
}

/** Train records every step with a few non-finite values, val records every 10 steps. */
function records(): MetricsRecord[] {
  const out: MetricsRecord[] = [];
  for (let step = 1; step <= 40; step++) {
    const loss = step === 5 ? NaN : step === 7 ? Infinity : 2 / Math.sqrt(step) + 0.01 * (step % 3);
    out.push({
      type: "train",
      step,
      epoch: step / 20,
      loss,
      ce: loss * 0.75,
      distill: step === 9 ? null as unknown as number : 0.3 - step / 400,
      lr: 1e-3 * Math.min(1, step / 10),
      images_per_s: 80,
      extra_field: "tolerated",
    });
    if (step % 10 === 0) {
      out.push({
        type: "val",
        step,
        epoch: step / 20,
        loss: 1.5 - step / 50,
        accuracy: 0.5 + step / 100,
        balanced_accuracy: 0.45 + step / 110,
      });
    }
  }
  out.push({ type: "note", text: "records of other types are ignored" });
  out.push({ type: "test", step: 40, ...testReport() });
  return out;
}

function tissue(seed: number, width: number, height: number): RgbImage {
  const rng = new Rng(seed);
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i += 3) {
    const dark = rng.next() < 0.3;
    data[i] = dark ? 90 : 236;
    data[i + 1] = dark ? 60 : 180;
    data[i + 2] = dark ? 150 : 212;
  }
  return { width, height, data };
}

const HOSTILE_REPORT = `<script>alert("x")</script> Tumour & 'margins' "clear" ` +
  "\u0000\u0007 < 5 mm. " + "Long text. ".repeat(40);

function fullData(): ReportData {
  return {
    title: 'Run <b>"1"</b> & more',
    subtitle: "runs/x",
    config: {
      stage: "clipit",
      lora: { rank: 16, targets: ["q", "v"] },
      note: "</table><i>",
      ratio: NaN,
    },
    metrics: records(),
    pairingScores: [0.21, 0.25, 0.25, 0.3, NaN, 0.28, 0.22, 0.27, 0.24, 0.26],
    samples: [
      {
        image: tissue(1, 300, 200),
        id: "a.tif",
        label: "normal",
        prediction: "normal",
        report: HOSTILE_REPORT,
        reportIndex: 4,
        score: 0.3,
      },
      {
        png: encodePng({
          width: 2,
          height: 2,
          data: new Uint8Array(12).fill(200),
          channels: 3,
          depth: 8,
        }),
        label: "lymph",
        prediction: "normal",
        report: "short",
        score: 0.2,
      },
      {
        image: { width: 4, height: 4, data: new Uint8Array(10) },
        label: "lymph",
        report: "bad image",
        score: 0.1,
      },
    ],
  };
}

// ---- structure -----------------------------------------------------------------------------

Deno.test("report curves hold exactly the logged finite points, in order, scaled onto the axes", () => {
  const data = fullData();
  const html = renderReport(data);
  const byTitle = new Map(plots(html).map((p) => [p.title, p.svg]));
  assert.deepEqual([...byTitle.keys()], [
    "Loss",
    "Validation accuracy",
    "Learning rate",
    "Top-1 cosine score of each image's paired report",
  ]);
  const recs = data.metrics!;
  const expect = (type: string, field: string) =>
    recs.filter((r) => r.type === type && typeof r[field] === "number" && Number.isFinite(r[field]))
      .map((r) => [r.step as number, r[field] as number]);
  const wanted: Record<string, Record<string, number[][]>> = {
    "Loss": {
      "train loss": expect("train", "loss"),
      "train CE": expect("train", "ce"),
      "train distill": expect("train", "distill"),
      "val loss": expect("val", "loss"),
    },
    "Validation accuracy": {
      "val accuracy": expect("val", "accuracy"),
      "val balanced accuracy": expect("val", "balanced_accuracy"),
    },
    "Learning rate": { "learning rate": expect("train", "lr") },
  };
  assert.equal(wanted.Loss["train loss"].length, 38, "steps 5 (NaN) and 7 (Infinity) are left out");
  assert.equal(wanted.Loss["train distill"].length, 39, "step 9 (null) is left out");
  for (const [title, series] of Object.entries(wanted)) {
    const svg = byTitle.get(title)!;
    const area = tags(svg, "g").find((g) => g.attrs.class === "plot-area")!;
    const [x0, x1] = area.attrs["data-x-domain"].split(" ").map(Number);
    const [y0, y1] = area.attrs["data-y-domain"].split(" ").map(Number);
    const [left, right] = area.attrs["data-x-range"].split(" ").map(Number);
    const [bottom, top] = area.attrs["data-y-range"].split(" ").map(Number);
    assert.ok(left < right && top < bottom, `${title}: pixel ranges`);
    const lines = tags(svg, "polyline");
    assert.deepEqual(lines.map((l) => l.attrs["data-series"]), Object.keys(series), title);
    const all = Object.values(series).flat();
    assert.equal(
      x0,
      Math.min(...all.map((p) => p[0])),
      `${title}: x domain starts at the first step`,
    );
    assert.equal(x1, Math.max(...all.map((p) => p[0])), `${title}: x domain ends at the last step`);
    assert.ok(all.every((p) => p[1] >= y0 && p[1] <= y1), `${title}: y domain holds every value`);
    for (const line of lines) {
      const name = line.attrs["data-series"];
      assert.deepEqual(
        pairs(line.attrs["data-points"]),
        series[name],
        `${title} / ${name}: values`,
      );
      const vertices = pairs(line.attrs.points);
      assert.equal(
        vertices.length,
        series[name].length,
        `${title} / ${name}: one vertex per point`,
      );
      series[name].forEach(([x, y], i) => {
        const px = left + (x - x0) / (x1 - x0) * (right - left);
        const py = bottom - (y - y0) / (y1 - y0) * (bottom - top);
        assert.ok(
          Math.abs(vertices[i][0] - px) <= 0.006 && Math.abs(vertices[i][1] - py) <= 0.006,
          `${title} / ${name} point ${i} (${x}, ${y}): vertex ${vertices[i]}, expected ${px},${py}`,
        );
      });
    }
  }
  // validation points are also markers a test (or a reader's tool) can find
  const markers = tags(byTitle.get("Validation accuracy")!, "circle")
    .filter((c) => c.attrs["data-series"] === "val balanced accuracy")
    .map((c) => [Number(c.attrs["data-step"]), Number(c.attrs["data-value"])]);
  assert.deepEqual(markers, wanted["Validation accuracy"]["val balanced accuracy"]);
});

Deno.test("report lists the non-finite values it left out of the plots", () => {
  const html = renderReport(fullData());
  const table = html.match(/<table class="skipped" id="non-finite">([\s\S]*?)<\/table>/)![1];
  const rows = [
    ...table.matchAll(
      /<tr><td>([^<]*)<\/td><td class="num">([^<]*)<\/td><td class="num">([^<]*)<\/td><\/tr>/g,
    ),
  ]
    .map((m) => [m[1], m[2], m[3]]);
  assert.deepEqual(rows, [
    ["train loss", "5", "NaN"],
    ["train loss", "7", "Infinity"],
    ["train CE", "5", "NaN"],
    ["train CE", "7", "Infinity"],
    ["train distill", "9", "null"],
  ]);
  assert.match(html, /1 non-finite score left out/);
});

Deno.test("report escapes every text and references nothing outside the page", () => {
  const html = renderReport(fullData());
  assert.ok(!/<script/i.test(html), "no script element, not even from report text");
  assert.ok(!html.includes('<b>"1"</b>'), "title is escaped");
  assert.ok(html.includes("<title>Run &lt;b&gt;&quot;1&quot;&lt;/b&gt; &amp; more</title>"));
  assert.ok(
    html.includes(
      "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Tumour &amp; &#39;margins&#39;",
    ),
  );
  assert.ok(!html.includes("\u0000") && !html.includes("\u0007"), "control characters replaced");
  assert.ok(html.includes("tumor &amp; &lt;stroma&gt;"), "class names are escaped");
  assert.ok(html.includes("&lt;/table&gt;&lt;i&gt;"), "config values are escaped");
  assert.ok(html.includes("<tr><th>lora.targets</th><td>[&quot;q&quot;,&quot;v&quot;]</td></tr>"));
  assert.ok(html.includes("<tr><th>ratio</th><td>NaN</td></tr>"), "NaN option shown as NaN");
  assert.ok(!/<(link|iframe|object|embed)\b/i.test(html));
  assert.ok(!/url\(/i.test(html), "no CSS url()");
  for (const attr of ["src", "href"]) {
    for (const m of html.matchAll(new RegExp(`\\s${attr}="([^"]*)"`, "g"))) {
      assert.ok(m[1].startsWith("data:image/png;base64,"), `${attr}="${m[1].slice(0, 40)}"`);
    }
  }
  // every element's text is well-formed: the opening and closing tags balance
  for (const t of ["section", "table", "svg", "figure", "details", "g"]) {
    const open = html.match(new RegExp(`<${t}[\\s>]`, "g"))?.length ?? 0;
    const close = html.match(new RegExp(`</${t}>`, "g"))?.length ?? 0;
    assert.equal(open, close, `<${t}> opened ${open}, closed ${close}`);
  }
});

Deno.test("report shows the confusion matrix, per-class recall and the histogram counts", () => {
  const data = fullData();
  const report = data.metrics!.findLast((r) =>
    r.type === "test"
  ) as unknown as ClassificationReport;
  const html = renderReport(data);
  const cells = tags(html, "td").filter((t) => "data-count" in t.attrs);
  assert.equal(cells.length, CLASSES.length ** 2);
  for (const c of cells) {
    assert.equal(
      Number(c.attrs["data-count"]),
      report.confusion[Number(c.attrs["data-true"])][Number(c.attrs["data-pred"])],
    );
  }
  const bars = [...html.matchAll(/<div class="bar"><div style="width:([\d.]+)%">/g)].map((m) =>
    Number(m[1])
  );
  assert.deepEqual(bars, report.per_class.map((m) => Number((m.recall! * 100).toFixed(1))));
  assert.ok(html.includes(`<div class="v">${report.balanced_accuracy.toFixed(4)}</div>`));
  const bins = tags(html, "rect").filter((r) => r.attrs.class === "bin");
  const finite = data.pairingScores!.filter(Number.isFinite);
  bins.forEach((b, i) => {
    const lo = Number(b.attrs["data-lo"]), hi = Number(b.attrs["data-hi"]);
    const last = i === bins.length - 1;
    const inside = finite.filter((v) => v >= lo && (v < hi || (last && v <= hi))).length;
    assert.equal(Number(b.attrs["data-count"]), inside, `bin [${lo}, ${hi})`);
  });
  assert.equal(bins.reduce((s, b) => s + Number(b.attrs["data-count"]), 0), 9, "9 finite scores");
});

Deno.test("report samples: thumbnails as PNG data URLs, PNG bytes kept, bad images noted", () => {
  const data = fullData();
  const html = renderReport(data);
  const imgs = tags(html, "img");
  assert.equal(imgs.length, 2, "two valid images, one placeholder");
  const png = (src: string) => Uint8Array.from(atob(src.split(",")[1]), (c) => c.charCodeAt(0));
  const first = decodePng(png(imgs[0].attrs.src));
  const thumb = thumbnail(data.samples![0].image!, 160);
  assert.deepEqual([first.width, first.height], [150, 100], "300x200 shrunk by 2 to fit 160");
  assert.deepEqual(Array.from(first.data), Array.from(thumb.data));
  assert.deepEqual(png(imgs[1].attrs.src), data.samples![1].png, "PNG bytes used as given");
  assert.match(html, /<div class="no-image">no image<\/div>/);
  assert.match(
    html,
    /sample 3: image data has 10 bytes, expected width \* height \* 3 = 4 \* 4 \* 3/,
  );
  assert.match(html, /<details><summary>full report \(\d+ characters\)<\/summary>/);
  assert.match(html, /class="tag wrong">predicted <b>normal<\/b>/);
});

Deno.test("report thumbnail averages whole blocks and keeps partial edge blocks", () => {
  const img = { width: 3, height: 1, data: Uint8Array.from([0, 0, 0, 100, 50, 10, 7, 8, 9]) };
  const t = thumbnail(img, 2);
  assert.deepEqual([t.width, t.height], [2, 1]);
  assert.deepEqual(Array.from(t.data), [50, 25, 5, 7, 8, 9]);
  assert.equal(thumbnail(img, 3), img, "small enough: unchanged");
});

Deno.test("report with nothing but a title says what is not available, draws no plot", () => {
  const html = renderReport({ title: "empty run" });
  assert.ok(!html.includes("<svg"), "no plot");
  for (
    const note of [
      "No configuration recorded: not available.",
      "No finite training or validation loss in metrics.jsonl: loss curves not available.",
      "No validation records in metrics.jsonl: accuracy curves not available.",
      "No test evaluation recorded: headline metrics not available.",
      "No test evaluation recorded: per-class metrics and confusion matrix not available.",
      "No pairing scores recorded: histogram not available.",
      "No samples recorded: image-report pairs not available.",
    ]
  ) assert.ok(html.includes(`<p class="na">${note}</p>`), note);
  // all values non-finite: still no broken plot
  const nan = renderReport({
    title: "diverged",
    metrics: [{ type: "train", step: 1, epoch: 0, loss: NaN, lr: NaN }],
    pairingScores: [NaN],
  });
  assert.ok(!nan.includes("<svg"));
  assert.match(nan, /2 logged values are not finite/);
});

Deno.test("report draws 300k pairing scores and 100k logged steps (no spread into Math.min)", () => {
  const rng = new Rng(5);
  const scores = Array.from({ length: 300_000 }, () => rng.next());
  const metrics: MetricsRecord[] = Array.from({ length: 100_000 }, (_, i) => ({
    type: "train",
    step: i + 1,
    epoch: 0,
    loss: 1 / (i + 1),
    lr: 1e-3,
  }));
  const html = renderReport({ title: "long run", pairingScores: scores, metrics });
  const bins = tags(html, "rect").filter((r) => r.attrs.class === "bin");
  assert.equal(bins.reduce((s, b) => s + Number(b.attrs["data-count"]), 0), 300_000);
  const loss = tags(html, "polyline").find((l) => l.attrs["data-series"] === "train loss")!;
  assert.equal(loss.attrs.points.split(" ").length, 100_000);
  assert.equal(tags(html, "circle").length, 0, "no markers on long series");
});

Deno.test("report takes the classification argument over the last test record", () => {
  const other = testReport(11);
  const html = renderReport({ title: "t", metrics: records(), classification: other });
  assert.ok(html.includes(`<div class="v">${other.balanced_accuracy.toFixed(4)}</div>`));
  const fromRecords = renderReport({ title: "t", metrics: records() });
  assert.ok(
    fromRecords.includes(`<div class="v">${testReport().balanced_accuracy.toFixed(4)}</div>`),
  );
  assert.notEqual(other.balanced_accuracy.toFixed(4), testReport().balanced_accuracy.toFixed(4));
});

Deno.test("report parseMetricsJsonl keeps good lines and names the bad ones", () => {
  const text = [
    JSON.stringify({ type: "train", step: 1, epoch: 0, loss: 1, lr: 1e-3 }),
    "",
    "[1, 2]",
    JSON.stringify({
      type: "val",
      step: 1,
      epoch: 0,
      loss: 1,
      accuracy: 0.5,
      balanced_accuracy: 0.5,
    }),
    '{"type": "train", "step": 2, "lo', // a run killed mid-write
  ].join("\n");
  const { records, problems } = parseMetricsJsonl(text);
  assert.deepEqual(records.map((r) => r.type), ["train", "val"]);
  assert.equal(problems.length, 2);
  assert.match(problems[0], /^metrics.jsonl line 3: not an object with a string "type"$/);
  assert.match(problems[1], /^metrics.jsonl line 5: not JSON/);
});

Deno.test("report helpers: escapeHtml and niceTicks", () => {
  assert.equal(
    escapeHtml(`<a href="x">&'\u0001\ud800`),
    "&lt;a href=&quot;x&quot;&gt;&amp;&#39;\ufffd\ufffd",
  );
  assert.deepEqual(niceTicks(0, 1).values, [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(3, 287, 5).values, [50, 100, 150, 200, 250]);
  const t = niceTicks(0.0001, 0.00098);
  assert.deepEqual(t.values, [0.0002, 0.0004, 0.0006, 0.0008]);
  assert.equal(t.decimals, 4);
});

// ---- headless Chromium ---------------------------------------------------------------------

/** Distinct colours and the share of pixels darker than light grey (text, lines, images). */
function inkStats(png: Uint8Array): { colours: number; inkShare: number; width: number } {
  const img = decodePng(png);
  const ch = img.channels;
  const colours = new Set<number>();
  let ink = 0;
  const n = img.width * img.height;
  for (let i = 0; i < n; i++) {
    const r = img.data[i * ch], g = img.data[i * ch + 1], b = img.data[i * ch + 2];
    colours.add((r << 16) | (g << 8) | b);
    if (0.299 * r + 0.587 * g + 0.114 * b < 200) ink++;
  }
  return { colours: colours.size, inkShare: ink / n, width: img.width };
}

/** A page that shows almost nothing: few colours or almost no ink. */
function looksBlank(s: { colours: number; inkShare: number }): boolean {
  return s.colours < 500 || s.inkShare < 0.02;
}

const CHROMIUM = findChromium();

Deno.test({
  name:
    "report opens in headless Chromium with no console error and a screenshot that is not blank",
  ignore: CHROMIUM === null,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "report-test-" });
    try {
      // The checks themselves must be able to fail: a page with a console error, an uncaught
      // exception and a missing image, and nothing drawn, is caught on all counts.
      const bad = `${dir}/bad.html`;
      await Deno.writeTextFile(
        bad,
        `<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom");` +
          `undefinedFunction();</script></body></html>`,
      );
      const control = await capturePage(CHROMIUM!, `file://${bad}`);
      assert.ok(control.errors.some((e) => e.includes("boom")), control.errors.join("\n"));
      assert.ok(control.errors.some((e) => e.startsWith("exception")), control.errors.join("\n"));
      assert.ok(control.errors.some((e) => e.includes("missing.png")), control.errors.join("\n"));
      const blank = inkStats(control.screenshot);
      assert.ok(
        looksBlank(blank),
        `control page looks blank: ${JSON.stringify(blank)}`,
      );

      const page = `${dir}/report.html`;
      await Deno.writeTextFile(page, renderReport(fullData()));
      const got = await capturePage(CHROMIUM!, `file://${page}`);
      assert.deepEqual(got.errors, [], `console errors:\n${got.errors.join("\n")}`);
      const stats = inkStats(got.screenshot);
      assert.equal(stats.width, 1200);
      assert.ok(
        !looksBlank(stats),
        `screenshot looks blank: ${JSON.stringify(stats)}`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

if (CHROMIUM === null) {
  console.warn(
    "report_test: `chromium` is not on PATH; the headless-Chromium test is skipped " +
      "(install it with `apt-get install chromium`).",
  );
}
