/**
 * Classification metrics from labels and class probabilities, on the CPU in float64, defined
 * exactly as scikit-learn 1.9 defines them (tests/fixtures/make_metrics_fixture.py checks every
 * number against it within 1e-12), plus the mean and spread of those metrics over several runs.
 *
 * Definitions (N samples, C classes, prediction = the first largest probability of a row, as
 * numpy's argmax):
 * - accuracy: correct / N.
 * - balanced accuracy (the paper's metric): the mean of per-class recall over the classes that
 *   occur in the labels, as `balanced_accuracy_score`. A class with no true sample has no recall
 *   (0/0) and is left out of the mean; scikit-learn warns "y_pred contains classes not in y_true"
 *   when such a class is predicted, and this module adds the same warning to `warnings` then
 *   (and a quieter note when the class is absent from labels and predictions alike, which
 *   scikit-learn, knowing only the labels it saw, cannot notice).
 * - macro-F1: `f1_score(average="macro")` with scikit-learn's default labels: the mean of the
 *   per-class F1 = 2 tp / (2 tp + fp + fn) over the classes present in the labels or the
 *   predictions. Such a class never divides by zero, so `zero_division` plays no part; a class
 *   absent from both has no F1 (null) and is left out, as scikit-learn with
 *   `zero_division=np.nan` leaves it out.
 * - per-class recall tp / (tp + fn) and precision tp / (tp + fp): null where the denominator is
 *   zero (scikit-learn's `zero_division=np.nan`; its default "warn" would print a warning and
 *   report 0, which reads like a measured zero).
 * - confusion matrix: rows = true class, columns = predicted class.
 * - AUROC: C = 2: the area under the ROC curve of the class-1 probability with class 1 positive
 *   (`roc_auc_score(y, p[:, 1])`); C > 2: the unweighted mean of one-vs-rest AUROCs
 *   (`roc_auc_score(multi_class="ovr", average="macro")`). Tied scores form one ROC point (the
 *   trapezoid over distinct thresholds: a tie between a positive and a negative counts 1/2).
 *   A class with no positive or no negative sample has no AUROC: the value is null with a
 *   reason (scikit-learn returns NaN with an UndefinedMetricWarning), never NaN.
 */

/** Metrics of one class of a {@link ClassificationReport}. */
export interface ClassMetrics {
  /** The class name. */
  name: string;
  /** True samples of this class. */
  support: number;
  /** Samples predicted as this class. */
  predicted: number;
  /** tp / (tp + fn); null when the class has no true sample. */
  recall: number | null;
  /** tp / (tp + fp); null when the class is never predicted. */
  precision: number | null;
  /** 2 tp / (2 tp + fp + fn); null when the class is absent from labels and predictions. */
  f1: number | null;
}

/** The AUROC of a {@link ClassificationReport}. */
export interface AurocResult {
  /** "binary" (C = 2, class 1 positive) or "ovr_macro" (C > 2, mean of one-vs-rest). */
  kind: "binary" | "ovr_macro";
  /** The area, or null when undefined (see `reason`). */
  value: number | null;
  /** Why `value` is null; absent when it is a number. */
  reason?: string;
  /** One-vs-rest AUROC of each class (C > 2 only); null for a class without both outcomes. */
  per_class?: (number | null)[];
}

/**
 * The metrics of one evaluation, JSON-able (snake_case keys, like the records of
 * `metrics.jsonl`: a test record is `{type: "test", step, ...report}`).
 */
export interface ClassificationReport {
  /** Number of samples. */
  n: number;
  /** Class names, index = label. */
  classes: string[];
  /** correct / n. */
  accuracy: number;
  /** Mean recall over the classes present in the labels (the paper's metric). */
  balanced_accuracy: number;
  /** Mean F1 over the classes present in the labels or the predictions. */
  macro_f1: number;
  /** AUROC, binary or macro one-vs-rest. */
  auroc: AurocResult;
  /** Per-class metrics, in class order. */
  per_class: ClassMetrics[];
  /** confusion[t][p] = samples of true class t predicted as p. */
  confusion: number[][];
  /** Conditions a reader should know (a class without samples, ...); empty when none. */
  warnings: string[];
}

/**
 * The predicted class of each row of `probs` ([N, C] row-major): the index of the first largest
 * value (numpy's argmax). Throws a RangeError naming the row if a value is not finite.
 */
export function argmaxRows(probs: Float32Array | Float64Array, classCount: number): Int32Array {
  const n = probs.length / classCount;
  const pred = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    let bestValue = probs[i * classCount];
    for (let c = 0; c < classCount; c++) {
      const v = probs[i * classCount + c];
      if (!Number.isFinite(v)) {
        throw new RangeError(`metrics: probs row ${i} column ${c} is ${v}; scores must be finite`);
      }
      if (v > bestValue) {
        bestValue = v;
        best = c;
      }
    }
    pred[i] = best;
  }
  return pred;
}

/** The C x C confusion matrix, rows = true class, columns = predicted class. */
export function confusionMatrix(
  labels: ArrayLike<number>,
  predictions: ArrayLike<number>,
  classCount: number,
): number[][] {
  const m = Array.from({ length: classCount }, () => new Array<number>(classCount).fill(0));
  for (let i = 0; i < labels.length; i++) m[labels[i]][predictions[i]]++;
  return m;
}

/**
 * Area under the ROC curve of `scores` for the binary outcome `positive` (truthy = positive),
 * as scikit-learn's `roc_auc_score` computes it: one ROC point per distinct score (ties), the
 * trapezoid rule between points. Returns null when there is no positive or no negative sample.
 * The area is summed in integers (tp and fp counts) and divided once, so it is exact to the
 * last bit for any N below 2^26.
 */
export function binaryAuroc(
  positive: ArrayLike<number | boolean>,
  scores: ArrayLike<number>,
): number | null {
  const n = scores.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[b] - scores[a]);
  let pos = 0;
  for (let i = 0; i < n; i++) if (positive[i]) pos++;
  const neg = n - pos;
  if (pos === 0 || neg === 0) return null;
  // Walk thresholds from high to low; at each distinct score add the trapezoid between the
  // previous ROC point (fp0, tp0) and the new one, in units of 1/2 (2 * area * pos * neg).
  let tp = 0, fp = 0, tp0 = 0, fp0 = 0, twiceArea = 0;
  for (let k = 0; k < n; k++) {
    const i = order[k];
    if (positive[i]) tp++;
    else fp++;
    const last = k === n - 1 || scores[order[k + 1]] !== scores[i];
    if (last) {
      twiceArea += (fp - fp0) * (tp + tp0);
      tp0 = tp;
      fp0 = fp;
    }
  }
  return twiceArea / (2 * pos * neg);
}

function checkInputs(labels: Int32Array, probs: Float32Array, classes: string[]): number {
  const c = classes.length;
  if (c < 2) throw new RangeError(`metrics: need at least 2 classes, got ${c}`);
  const n = labels.length;
  if (n === 0) throw new RangeError("metrics: no samples (labels is empty)");
  if (probs.length !== n * c) {
    throw new RangeError(
      `metrics: probs has ${probs.length} values, expected N * C = ${n} * ${c} = ${n * c}`,
    );
  }
  for (let i = 0; i < n; i++) {
    const y = labels[i];
    if (!(y >= 0 && y < c)) {
      throw new RangeError(`metrics: label ${y} of sample ${i} is outside [0, ${c})`);
    }
  }
  return n;
}

function mean(values: number[]): number {
  let s = 0;
  for (const v of values) s += v;
  return s / values.length;
}

function ratio(num: number, den: number): number | null {
  return den === 0 ? null : num / den;
}

function aurocOf(
  labels: Int32Array,
  probs: Float32Array,
  classes: string[],
  support: number[],
): AurocResult {
  const c = classes.length;
  const n = labels.length;
  const column = (k: number) => {
    const s = new Float64Array(n);
    for (let i = 0; i < n; i++) s[i] = probs[i * c + k];
    return s;
  };
  const lacking = (k: number) =>
    support[k] === 0
      ? `class '${classes[k]}' has no sample in the labels`
      : `class '${classes[k]}' is the only class in the labels`;
  if (c === 2) {
    const isPositive = Array.from(labels, (y) => y === 1);
    const value = binaryAuroc(isPositive, column(1));
    if (value !== null) return { kind: "binary", value };
    const k = support[1] === 0 ? 1 : 0;
    return { kind: "binary", value: null, reason: `${lacking(k)}; AUROC needs both classes` };
  }
  const perClass: (number | null)[] = [];
  for (let k = 0; k < c; k++) {
    perClass.push(binaryAuroc(Array.from(labels, (y) => y === k), column(k)));
  }
  const undefinedFor = perClass.flatMap((v, k) => v === null ? [k] : []);
  if (undefinedFor.length === 0) {
    return { kind: "ovr_macro", value: mean(perClass as number[]), per_class: perClass };
  }
  const reason = undefinedFor.map(lacking).join("; ") +
    "; one-vs-rest AUROC needs positives and negatives of every class";
  return { kind: "ovr_macro", value: null, reason, per_class: perClass };
}

/**
 * The metrics of one evaluation (see the module doc for every definition).
 * `labels`: true class of each sample; `probs`: [N, C] row-major class probabilities (or any
 * scores whose row maximum is the prediction; AUROC only ranks them); `classes`: the C names.
 * Throws a RangeError on mismatched sizes, an empty set, a label outside [0, C) or a
 * non-finite score.
 */
export function classificationReport(
  labels: Int32Array,
  probs: Float32Array,
  classes: string[],
): ClassificationReport {
  const n = checkInputs(labels, probs, classes);
  const c = classes.length;
  const pred = argmaxRows(probs, c);
  const confusion = confusionMatrix(labels, pred, c);
  const support = confusion.map((row) => row.reduce((a, b) => a + b, 0));
  const predicted = classes.map((_, p) => confusion.reduce((a, row) => a + row[p], 0));
  let correct = 0;
  for (let k = 0; k < c; k++) correct += confusion[k][k];

  const perClass: ClassMetrics[] = classes.map((name, k) => {
    const tp = confusion[k][k];
    const fn = support[k] - tp;
    const fp = predicted[k] - tp;
    return {
      name,
      support: support[k],
      predicted: predicted[k],
      recall: ratio(tp, tp + fn),
      precision: ratio(tp, tp + fp),
      f1: ratio(2 * tp, 2 * tp + fp + fn),
    };
  });

  const warnings: string[] = [];
  for (let k = 0; k < c; k++) {
    if (support[k] > 0) continue;
    warnings.push(
      predicted[k] > 0
        ? `y_pred contains classes not in y_true: class '${classes[k]}' is predicted ` +
          `${predicted[k]} times but has no sample; balanced accuracy leaves it out`
        : `class '${classes[k]}' has no sample and is never predicted; balanced accuracy and ` +
          "macro-F1 leave it out",
    );
  }
  const auroc = aurocOf(labels, probs, classes, support);
  if (auroc.value === null) warnings.push(`AUROC undefined: ${auroc.reason}`);

  return {
    n,
    classes: [...classes],
    accuracy: correct / n,
    balanced_accuracy: mean(perClass.flatMap((m) => m.recall === null ? [] : [m.recall])),
    macro_f1: mean(perClass.flatMap((m) => m.f1 === null ? [] : [m.f1])),
    auroc,
    per_class: perClass,
    confusion,
    warnings,
  };
}

/** The mean and spread of one metric over runs. */
export interface MeanStd {
  /** Mean over the runs where the metric is defined; null when it is defined in none. */
  mean: number | null;
  /** Sample standard deviation (ddof = 1, numpy's `std(ddof=1)`); null below 2 defined runs. */
  std: number | null;
  /** Runs where the metric is defined. */
  n: number;
  /** The metric of every run, in run order (null where undefined). */
  values: (number | null)[];
}

/** Per-class metrics of an {@link AggregateReport}. */
export interface ClassAggregate {
  /** The class name. */
  name: string;
  /** Recall over runs. */
  recall: MeanStd;
  /** Precision over runs. */
  precision: MeanStd;
  /** F1 over runs. */
  f1: MeanStd;
}

/** Metrics of several runs (seeds) of one configuration: mean and sample std of each. */
export interface AggregateReport {
  /** Number of runs. */
  runs: number;
  /** A name for each run (the caller's, else "run 1", "run 2", ...). */
  run_names: string[];
  /** Class names (the same in every run). */
  classes: string[];
  /** The std's delta degrees of freedom: always 1 (sample standard deviation). */
  std_ddof: 1;
  /** Accuracy over runs. */
  accuracy: MeanStd;
  /** Balanced accuracy over runs (the paper reports its mean +/- std over 3 runs). */
  balanced_accuracy: MeanStd;
  /** Macro-F1 over runs. */
  macro_f1: MeanStd;
  /** AUROC over the runs where it is defined. */
  auroc: MeanStd;
  /** Per-class recall, precision and F1 over runs. */
  per_class: ClassAggregate[];
  /** Conditions a reader should know (a metric undefined in some runs); empty when none. */
  warnings: string[];
}

/** Mean and sample std (ddof = 1) of the non-null values; see {@link MeanStd}. */
export function meanStd(values: (number | null)[]): MeanStd {
  const defined = values.filter((v): v is number => v !== null);
  const n = defined.length;
  if (n === 0) return { mean: null, std: null, n, values: [...values] };
  const m = mean(defined);
  let ss = 0;
  for (const v of defined) ss += (v - m) * (v - m);
  return { mean: m, std: n < 2 ? null : Math.sqrt(ss / (n - 1)), n, values: [...values] };
}

/**
 * Mean and sample std (ddof = 1) of every metric across `reports` (one per run or seed).
 * A metric undefined in some runs (AUROC, a class's precision) is averaged over the runs where
 * it is defined, and `warnings` says so. Throws if `reports` is empty, if the runs have
 * different classes, or if `runNames` has the wrong length.
 */
export function aggregateRuns(
  reports: ClassificationReport[],
  runNames?: string[],
): AggregateReport {
  if (reports.length === 0) throw new RangeError("aggregateRuns: no reports");
  const names = runNames ?? reports.map((_, i) => `run ${i + 1}`);
  if (names.length !== reports.length) {
    throw new RangeError(`aggregateRuns: ${names.length} run names for ${reports.length} reports`);
  }
  const classes = reports[0].classes;
  reports.forEach((r, i) => {
    if (r.classes.length !== classes.length || r.classes.some((c, k) => c !== classes[k])) {
      throw new RangeError(
        `aggregateRuns: ${names[i]} has classes [${r.classes.join(", ")}], ` +
          `${names[0]} has [${classes.join(", ")}]`,
      );
    }
  });
  const auroc = meanStd(reports.map((r) => r.auroc.value));
  const warnings: string[] = [];
  if (auroc.n < reports.length) {
    const missing = reports.flatMap((r, i) => r.auroc.value === null ? [names[i]] : []);
    warnings.push(
      `AUROC is undefined in ${missing.join(", ")}; its mean is over the other ${auroc.n} runs`,
    );
  }
  return {
    runs: reports.length,
    run_names: [...names],
    classes: [...classes],
    std_ddof: 1,
    accuracy: meanStd(reports.map((r) => r.accuracy)),
    balanced_accuracy: meanStd(reports.map((r) => r.balanced_accuracy)),
    macro_f1: meanStd(reports.map((r) => r.macro_f1)),
    auroc,
    per_class: classes.map((name, k) => ({
      name,
      recall: meanStd(reports.map((r) => r.per_class[k].recall)),
      precision: meanStd(reports.map((r) => r.per_class[k].precision)),
      f1: meanStd(reports.map((r) => r.per_class[k].f1)),
    })),
    warnings,
  };
}
