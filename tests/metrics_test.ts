/**
 * train/metrics.ts against scikit-learn (tests/fixtures/metrics_sklearn.json, written by
 * make_metrics_fixture.py) within 1e-12, a hand-computed case, the errors, and the tables of
 * train/metrics_table.ts.
 */
import assert from "node:assert/strict";
import {
  aggregateRuns,
  binaryAuroc,
  type ClassificationReport,
  classificationReport,
  meanStd,
} from "../train/metrics.ts";
import {
  formatAggregateTable,
  formatComparisonTable,
  formatReportTable,
} from "../train/metrics_table.ts";
import { fixturePath } from "./fixture_util.ts";

interface SklearnCase {
  name: string;
  classes: number;
  labels: number[];
  probs: number[];
  expected: {
    pred: number[];
    accuracy: number;
    balanced_accuracy: number;
    balanced_accuracy_warns: boolean;
    macro_f1: number;
    precision: (number | null)[];
    recall: (number | null)[];
    f1: (number | null)[];
    support: number[];
    confusion: number[][];
    auroc: number | null;
    auroc_per_class?: (number | null)[];
  };
}

interface SklearnAggregate {
  cases: string[];
  [metric: string]: { mean: number; std: number } | string[];
}

const FIXTURE = JSON.parse(Deno.readTextFileSync(fixturePath("metrics_sklearn.json"))) as {
  sklearn_version: string;
  cases: SklearnCase[];
  aggregates: SklearnAggregate[];
};

const TOL = 1e-12;

function near(actual: number | null, expected: number | null, what: string): void {
  if (expected === null || actual === null) {
    assert.equal(actual, expected, `${what}: got ${actual}, scikit-learn ${expected}`);
    return;
  }
  assert.ok(
    Math.abs(actual - expected) <= TOL,
    `${what}: got ${actual}, scikit-learn ${expected} (diff ${Math.abs(actual - expected)})`,
  );
}

function className(k: number): string {
  return `class${k}`;
}

function reportOf(c: SklearnCase): ClassificationReport {
  return classificationReport(
    Int32Array.from(c.labels),
    Float32Array.from(c.probs),
    Array.from({ length: c.classes }, (_, k) => className(k)),
  );
}

Deno.test("metrics fixture covers the cases the brief names", () => {
  const names = FIXTURE.cases.map((c) => c.name);
  for (
    const want of [
      "binary_random_0",
      "c4_random_0",
      "c9_random_0",
      "binary_ties",
      "c4_ties",
      "c4_class_never_predicted",
      "c4_class_missing_from_labels",
      "binary_n1_right",
      "binary_separable",
      "c4_separable",
    ]
  ) assert.ok(names.includes(want), `fixture lacks case ${want}`);
  // the "missing" cases really are missing something (the generator could silently change)
  const byName = (n: string) => FIXTURE.cases.find((c) => c.name === n)!;
  assert.ok(!byName("c4_class_never_predicted").expected.pred.includes(2));
  assert.ok(!byName("c4_class_missing_from_labels").labels.includes(3));
  assert.ok(byName("c4_class_missing_from_labels").expected.pred.includes(3));
  const tied = byName("binary_ties").probs.filter((_, i) => i % 2 === 1);
  assert.ok(new Set(tied).size < tied.length / 4, "binary_ties has few distinct scores");
});

for (const c of FIXTURE.cases) {
  Deno.test(`metrics match scikit-learn ${FIXTURE.sklearn_version}: ${c.name}`, () => {
    const r = reportOf(c);
    const e = c.expected;
    assert.equal(r.n, c.labels.length);
    assert.deepEqual(r.confusion, e.confusion, "confusion matrix");
    near(r.accuracy, e.accuracy, "accuracy");
    near(r.balanced_accuracy, e.balanced_accuracy, "balanced accuracy");
    near(r.macro_f1, e.macro_f1, "macro-F1");
    for (let k = 0; k < c.classes; k++) {
      const m = r.per_class[k];
      assert.equal(m.name, className(k));
      assert.equal(m.support, e.support[k], `support of class ${k}`);
      near(m.recall, e.recall[k], `recall of class ${k}`);
      near(m.precision, e.precision[k], `precision of class ${k}`);
      near(m.f1, e.f1[k], `F1 of class ${k}`);
    }
    assert.equal(r.auroc.kind, c.classes === 2 ? "binary" : "ovr_macro");
    near(r.auroc.value, e.auroc, "AUROC");
    if (r.auroc.value === null) {
      assert.ok(r.auroc.reason && r.auroc.reason.length > 0, "a null AUROC has a reason");
      assert.ok(r.warnings.some((w) => w.startsWith("AUROC undefined")));
    } else {
      assert.equal(r.auroc.reason, undefined);
    }
    if (e.auroc_per_class) {
      e.auroc_per_class.forEach((v, k) => near(r.auroc.per_class![k], v, `OvR AUROC ${k}`));
    } else {
      assert.equal(r.auroc.per_class, undefined);
    }
    const warns = r.warnings.some((w) => w.startsWith("y_pred contains classes not in y_true"));
    assert.equal(warns, e.balanced_accuracy_warns, "scikit-learn's balanced-accuracy warning");
  });
}

Deno.test("metrics aggregateRuns matches numpy mean and std(ddof=1)", () => {
  for (const agg of FIXTURE.aggregates) {
    const reports = agg.cases.map((n) => reportOf(FIXTURE.cases.find((c) => c.name === n)!));
    const a = aggregateRuns(reports, agg.cases);
    assert.equal(a.runs, agg.cases.length);
    assert.equal(a.std_ddof, 1);
    for (const key of ["accuracy", "balanced_accuracy", "macro_f1", "auroc"] as const) {
      const want = agg[key] as { mean: number; std: number };
      near(a[key].mean, want.mean, `${agg.cases[0]}.. ${key} mean`);
      near(a[key].std, want.std, `${agg.cases[0]}.. ${key} std`);
      assert.equal(a[key].n, agg.cases.length);
    }
  }
});

Deno.test("metrics on a hand-computed 3-class case", () => {
  // labels 0 0 1 1 2 2; predictions 0 1 1 1 0 2 (from one-hot-ish rows)
  const rows = [[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1], [.5, .4, .1], [0, .4, .6]];
  const r = classificationReport(
    Int32Array.from([0, 0, 1, 1, 2, 2]),
    Float32Array.from(rows.flat()),
    ["a", "b", "c"],
  );
  assert.deepEqual(r.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]]);
  assert.equal(r.accuracy, 4 / 6);
  assert.equal(r.balanced_accuracy, (0.5 + 1 + 0.5) / 3);
  // precision a 1/2, b 2/3, c 1/1; F1 a = 2/(2+1+1), b = 4/(4+1+0), c = 2/(2+0+1)
  assert.deepEqual(r.per_class.map((m) => m.precision), [1 / 2, 2 / 3, 1]);
  assert.deepEqual(r.per_class.map((m) => m.f1), [2 / 4, 4 / 5, 2 / 3]);
  assert.equal(r.macro_f1, (2 / 4 + 4 / 5 + 2 / 3) / 3);
  // class c one-vs-rest: positives (scores .1, .6) vs negatives (.1 .1 .1 .1): the .6 beats all
  // four, the .1 ties all four -> (4 + 4 * 0.5) / 8 = 0.75
  assert.equal(r.auroc.per_class![2], 0.75);
  assert.deepEqual(r.warnings, []);
});

Deno.test("metrics binaryAuroc counts a tie between a positive and a negative as 1/2", () => {
  assert.equal(binaryAuroc([1, 0], [0.5, 0.5]), 0.5);
  assert.equal(binaryAuroc([1, 0, 0], [0.9, 0.9, 0.1]), 0.75);
  assert.equal(binaryAuroc([0, 1], [0.2, 0.7]), 1);
  assert.equal(binaryAuroc([1, 0], [0.2, 0.7]), 0);
  assert.equal(binaryAuroc([1, 1], [0.2, 0.7]), null);
});

Deno.test("metrics errors name what is wrong", () => {
  const probs = Float32Array.from([0.5, 0.5, 0.2, 0.8]);
  assert.throws(
    () => classificationReport(Int32Array.from([0, 1]), probs, ["a"]),
    /at least 2 classes/,
  );
  assert.throws(
    () => classificationReport(new Int32Array(0), new Float32Array(0), ["a", "b"]),
    /no samples/,
  );
  assert.throws(
    () => classificationReport(Int32Array.from([0, 1, 1]), probs, ["a", "b"]),
    /probs has 4 values, expected N \* C = 3 \* 2 = 6/,
  );
  assert.throws(
    () => classificationReport(Int32Array.from([0, 2]), probs, ["a", "b"]),
    /label 2 of sample 1 is outside \[0, 2\)/,
  );
  assert.throws(
    () =>
      classificationReport(Int32Array.from([0, 1]), Float32Array.from([0.5, NaN, 1, 0]), [
        "a",
        "b",
      ]),
    /row 0 column 1 is NaN/,
  );
  const r = classificationReport(Int32Array.from([0, 1]), probs, ["a", "b"]);
  assert.throws(() => aggregateRuns([]), /no reports/);
  assert.throws(() => aggregateRuns([r], ["x", "y"]), /2 run names for 1 reports/);
  assert.throws(
    () => aggregateRuns([r, { ...r, classes: ["a", "c"] }]),
    /run 2 has classes \[a, c\], run 1 has \[a, b\]/,
  );
});

Deno.test("metrics meanStd: null below two defined values, undefined runs left out", () => {
  assert.deepEqual(meanStd([0.5]), { mean: 0.5, std: null, n: 1, values: [0.5] });
  assert.deepEqual(meanStd([null, null]), { mean: null, std: null, n: 0, values: [null, null] });
  const m = meanStd([1, null, 3]);
  assert.equal(m.mean, 2);
  assert.equal(m.std, Math.SQRT2);
  assert.equal(m.n, 2);
});

Deno.test("metrics aggregateRuns warns when AUROC is undefined in a run", () => {
  const labels = Int32Array.from([0, 1, 1]);
  const probs = Float32Array.from([0.9, 0.1, 0.3, 0.7, 0.6, 0.4]);
  const ok = classificationReport(labels, probs, ["a", "b"]);
  const oneClass = classificationReport(Int32Array.from([1, 1, 1]), probs, ["a", "b"]);
  assert.equal(oneClass.auroc.value, null);
  assert.match(oneClass.auroc.reason!, /class 'a' has no sample in the labels/);
  const a = aggregateRuns([ok, oneClass, ok], ["s1", "s2", "s3"]);
  assert.equal(a.auroc.n, 2);
  assert.equal(a.auroc.mean, ok.auroc.value);
  assert.equal(a.auroc.std, 0);
  assert.deepEqual(a.warnings, ["AUROC is undefined in s2; its mean is over the other 2 runs"]);
});

Deno.test("metrics formatReportTable shows the headline, per-class rows and the matrix", () => {
  const c = FIXTURE.cases.find((c) => c.name === "c4_class_missing_from_labels")!;
  const r = reportOf(c);
  const text = formatReportTable(r);
  const lines = text.split("\n");
  assert.match(lines[0], new RegExp(`balanced accuracy ${r.balanced_accuracy.toFixed(4)}`));
  assert.match(lines[0], /AUROC \(macro one-vs-rest\) n\/a/);
  const row3 = lines.find((l) => l.startsWith("class3 "))!;
  // class 3 has no sample: support 0, recall and AUROC n/a
  assert.deepEqual(row3.split(/\s+/).slice(0, 4), [
    "class3",
    "0",
    String(r.per_class[3].predicted),
    "n/a",
  ]);
  const cmStart = lines.indexOf("confusion matrix (rows = true class, columns = predicted class)");
  assert.ok(cmStart > 0);
  assert.deepEqual(lines[cmStart + 1].split(/\s+/).slice(-4), [
    "class0",
    "class1",
    "class2",
    "class3",
  ]);
  const cmRow0 = lines[cmStart + 2].split(/\s+/);
  assert.deepEqual(cmRow0, ["class0", ...r.confusion[0].map(String)]);
  assert.match(text, /warnings:\n- y_pred contains classes not in y_true: class 'class3'/);
  const pct = formatReportTable(r, { percent: true });
  assert.match(pct, new RegExp(`accuracy ${(r.accuracy * 100).toFixed(2)} `));
});

Deno.test("metrics formatAggregateTable and formatComparisonTable show mean ± std per run", () => {
  const group = FIXTURE.aggregates[1];
  const reports = group.cases.map((n) => reportOf(FIXTURE.cases.find((c) => c.name === n)!));
  const a = aggregateRuns(reports);
  const text = formatAggregateTable(a, { percent: true });
  const bal = text.split("\n").find((l) => l.startsWith("balanced accuracy"))!;
  const cells = bal.split(/\s{2,}/);
  assert.equal(
    cells[1],
    `${(a.balanced_accuracy.mean! * 100).toFixed(2)} ± ${
      (a.balanced_accuracy.std! * 100).toFixed(2)
    }`,
  );
  assert.deepEqual(cells.slice(2), reports.map((r) => (r.balanced_accuracy * 100).toFixed(2)));
  assert.match(text, /3 runs: mean ± sample std \(ddof = 1\), in %/);
  const cmp = formatComparisonTable([{ name: "baseline", aggregate: a }, {
    name: "CLIP-IT",
    aggregate: aggregateRuns([reports[0]]),
  }]);
  const clipit = cmp.split("\n").find((l) => l.startsWith("CLIP-IT"))!;
  // one run: no std, just the value
  assert.equal(clipit.split(/\s{3,}/)[2], reports[0].balanced_accuracy.toFixed(4));
});
