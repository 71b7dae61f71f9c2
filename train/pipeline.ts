/**
 * One training run of any stage, from loaded inputs to a finished run folder: what `cli.ts
 * train` and the demo both call.
 *
 * - `baseline`: frozen backbone features (cached), linear head; exports `model.safetensors`.
 * - `text-baseline`: frozen text encoder on each image's paired report, MLP head (analysis only:
 *   it needs the report, so it exports no image model).
 * - `clipit`: stage 2 (train/clipit_train.ts), `fc` started from a baseline run's head when
 *   given; exports `model.safetensors` with LoRA merged.
 * - `contrastive`: InfoNCE fine-tuning on the pseudo-pairs (train/contrastive.ts), then a linear
 *   head on the fine-tuned features (in `<run>/probe/`); exports the probe's model.
 *
 * Every run ends with `eval.json` (the test report) and `report.html`.
 */
import { join } from "node:path";
import { noGrad } from "../nn/autograd.ts";
import { copyInto } from "../nn/ops/inplace.ts";
import { Linear, type MLP } from "../nn/layers.ts";
import { tidy } from "../nn/tensor.ts";
import { readImage } from "../nn/formats/image.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { writeFileAtomic } from "../nn/formats/safe_write.ts";
import type { ImageBackbone, TextEncoder, TextTokenizer } from "../clip/backbone.ts";
import type { Corpus } from "../clip/pairing_corpus.ts";
import { randomPairing } from "../clip/pairing.ts";
import { textTargets } from "./clipit.ts";
import { ClipItModel } from "./clipit.ts";
import { type ClipItSettings, type RunControl, trainClipIt } from "./clipit_train.ts";
import { trainContrastive } from "./contrastive.ts";
import type { LoopResult } from "./loop.ts";
import type { Dataset, Split, SplitName } from "./data/datasets.ts";
import { type ClassificationReport } from "./metrics.ts";
import { saveInferenceModel } from "./models.ts";
import { renderReport, type ReportSample } from "./report.ts";
import { RUN_FILES, RunDir } from "./run.ts";
import { computeFeatures, type FeatureSplit, trainHead } from "./stage1.ts";

/** The stages of the method (and its baselines). */
export const STAGES = ["baseline", "text-baseline", "clipit", "contrastive"] as const;
/** One of {@link STAGES}. */
export type Stage = typeof STAGES[number];

const STAGE_TITLES: Record<Stage, string> = {
  baseline: "Unimodal baseline (frozen backbone + linear head)",
  "text-baseline": "Text-branch baseline (frozen text encoder + MLP head)",
  clipit: "CLIP-IT",
  contrastive: "Contrastive fine-tuning + linear probe",
};

/** A split's pairing: for each sample, its paired report (top-1) and the pair's score. */
export interface SplitPairing {
  /** Report index per sample (into the corpus' reports). */
  reports: Int32Array;
  /** Cosine score per sample (NaN for a random pairing). */
  scores: Float32Array;
}

/**
 * The random-pairing ablation for every split of `ds`: each image gets a report drawn uniformly
 * from the `reports` of the corpus (seeded: the same seed gives the same pairing; each split
 * draws from its own stream). Scores are NaN (no similarity was computed).
 */
export function randomSplitPairing(
  ds: Dataset,
  reports: number,
  seed: number,
): Partial<Record<SplitName, SplitPairing>> {
  const out: Partial<Record<SplitName, SplitPairing>> = {};
  for (const s of ds.splits) {
    const r = randomPairing(s.labels.length, reports, 1, seed + s.name.length);
    out[s.name] = { reports: r.indices, scores: new Float32Array(r.indices.length).fill(NaN) };
  }
  return out;
}

/** What a run trains on, loaded. Models come from factories: LoRA changes them, so each run
 * builds its own. */
export interface StageInputs {
  /** The dataset (its train, val and, optionally, test splits are used). */
  dataset: Dataset;
  /** The corpus (text stages). */
  corpus?: Corpus;
  /** The pairing per split (text stages; train and val at least). */
  pairing?: Partial<Record<SplitName, SplitPairing>>;
  /**
   * Fresh models with their weights loaded: the image backbone, the text encoder (text stages)
   * and the CLIP's log temperature (the contrastive stage starts from it).
   */
  load: () => Promise<{ backbone: ImageBackbone; textEncoder?: TextEncoder; logitScale?: number }>;
  /** The text encoder's tokenizer (text stages). */
  tokenizer?: TextTokenizer;
  /** A baseline run's `model.safetensors` to start CLIP-IT's `fc` from. */
  initHead?: string;
  /** Where backbone features may be cached across runs (default: the run folder). */
  featureCache?: string;
  /** A string identifying the backbone weights, for the feature cache's key. */
  backboneKey?: string;
}

/** What a finished run returns. */
export interface StageResult {
  /** The run folder. */
  run: RunDir;
  /** The test report (when the dataset has a test split). */
  test?: ClassificationReport;
  /** The validation results in order. */
  validations: { step: number; loss: number; balanced_accuracy: number }[];
  /** Steps taken. */
  steps: number;
  /** Where the training loop's time went (seconds). */
  seconds: { data: number; train: number; validate: number; checkpoint: number };
}

function split(ds: Dataset, name: SplitName): Split | undefined {
  return ds.splits.find((s) => s.name === name);
}

function need<T>(v: T | undefined, what: string, stage: Stage): T {
  if (v === undefined) throw new Error(`the ${stage} stage needs ${what}`);
  return v;
}

/** Read `fc.weight` / `fc.bias` from a baseline run's inference checkpoint. */
export async function readHead(
  path: string,
): Promise<{ weight: Float32Array; bias: Float32Array }> {
  const f = await SafetensorsFile.open(path);
  try {
    for (const n of ["fc.weight", "fc.bias"]) {
      if (!f.entries().has(n)) {
        throw new Error(
          `--init-head ${path}: no "${n}" (is it a baseline run's model.safetensors?)`,
        );
      }
    }
    return { weight: await f.readFloat32("fc.weight"), bias: await f.readFloat32("fc.bias") };
  } finally {
    f.close();
  }
}

/**
 * The tokenized corpus, truncated to the encoder's context like the paper: row-major
 * [M, contextLength].
 */
export function tokenizeCorpus(corpus: Corpus, tok: TextTokenizer, ctx: number): Int32Array {
  return tok.tokenize(corpus.reports, ctx);
}

/** Features of each split through `backbone` (cached by `key` under `cacheDir`). */
async function splitFeatures(
  backbone: ImageBackbone,
  ds: Dataset,
  cacheDir: string,
  key: string,
  control: RunControl & { onFeatures?: (split: string, done: number, total: number) => void },
  workers?: number,
): Promise<Partial<Record<SplitName, FeatureSplit>>> {
  const out: Partial<Record<SplitName, FeatureSplit>> = {};
  for (const s of ds.splits) {
    const features = await computeFeatures(backbone, s, {
      workers,
      cachePath: join(cacheDir, `features-${s.name}.safetensors`),
      cacheKey: `${key}|${ds.kind}:${ds.root}|${s.name}|${s.labels.length}`,
      onProgress: (d, t) => control.onFeatures?.(s.name, d, t),
    });
    out[s.name] = { features, labels: s.labels };
  }
  return out;
}

/** Text-encoder embeddings (normalised) of each sample's paired report, per split. */
async function pairedTextFeatures(
  text: TextEncoder,
  ids: Int32Array,
  pairing: Partial<Record<SplitName, SplitPairing>>,
  ds: Dataset,
): Promise<Partial<Record<SplitName, FeatureSplit>>> {
  const ctx = text.contextLength, d = text.embedDim;
  const out: Partial<Record<SplitName, FeatureSplit>> = {};
  for (const s of ds.splits) {
    const p = pairing[s.name];
    if (!p) continue;
    const rows = new Float32Array(p.reports.length * d);
    for (let i = 0; i < p.reports.length; i += 64) {
      const chunk = p.reports.subarray(i, i + 64);
      const sel = new Int32Array(chunk.length * ctx);
      chunk.forEach((r, j) => sel.set(ids.subarray(r * ctx, (r + 1) * ctx), j * ctx));
      const e = noGrad(() => tidy(() => textTargets(text, sel)));
      rows.set(await e.toFloat32Array(), i * d);
      e.dispose();
    }
    out[s.name] = { features: rows, labels: s.labels };
  }
  return out;
}

/** Train one stage into `run` (see the module comment). */
export async function runStage(
  run: RunDir,
  stage: Stage,
  inputs: StageInputs,
  settings: ClipItSettings,
  control: RunControl & { onFeatures?: (split: string, done: number, total: number) => void } = {},
): Promise<StageResult> {
  const ds = inputs.dataset;
  const train = need(split(ds, "train"), "a train split", stage);
  const val = need(split(ds, "val"), "a val split (set a validation fraction)", stage);
  const test = split(ds, "test");
  // Every class must be learnable: a class without a training image is refused. One without a
  // validation image (a class of one or two images in a small dataset) is allowed: validation
  // metrics are then over the classes present, as the test report's are (it warns).
  const seen = new Set(train.labels);
  if (seen.size < ds.classes.length) {
    const missing = ds.classes.filter((_, c) => !seen.has(c));
    throw new Error(
      `class ${missing.map((m) => `"${m}"`).join(", ")} has no image in the train split ` +
        `of ${ds.kind}:${ds.root}; every class needs training images`,
    );
  }
  let result: StageResult;
  /** A trainer's result as this function reports it. */
  const resultOf = (r: { test?: ClassificationReport } & LoopResult): StageResult => ({
    run,
    test: r.test,
    validations: r.validations,
    steps: r.state.step,
    seconds: r.seconds,
  });
  const backboneKey = inputs.backboneKey ?? "backbone";

  const models = await inputs.load();
  /** The text side a text stage needs: the pairing, the text encoder, the tokenized corpus. */
  const textSide = () => {
    const text = need(models.textEncoder, "a text encoder", stage);
    return {
      pairing: need(inputs.pairing, "a pairing", stage),
      text,
      ids: tokenizeCorpus(
        need(inputs.corpus, "a corpus", stage),
        need(inputs.tokenizer, "a tokenizer", stage),
        text.contextLength,
      ),
    };
  };
  const { backbone } = models;
  if (stage === "baseline") {
    models.textEncoder?.dispose();
    const feats = await splitFeatures(
      backbone,
      ds,
      inputs.featureCache ?? run.dir,
      backboneKey,
      control,
      settings.workers,
    );
    const r = await trainHead(
      run,
      {
        classes: ds.classes,
        train: feats.train!,
        val: feats.val!,
        test: feats.test,
        head: "linear",
      },
      settings,
      control,
    );
    await saveBaselineModel(backbone, r.head, ds.classes, run.path(RUN_FILES.model), stage);
    r.head.dispose();
    backbone.dispose();
    result = resultOf(r);
  } else if (stage === "text-baseline") {
    backbone.dispose();
    const { pairing, text, ids } = textSide();
    const feats = await pairedTextFeatures(text, ids, pairing, ds);
    const r = await trainHead(
      run,
      {
        classes: ds.classes,
        train: need(feats.train, "a train pairing", stage),
        val: need(feats.val, "a val pairing", stage),
        test: feats.test,
        head: "text-mlp",
      },
      settings,
      control,
    );
    r.head.dispose();
    text.dispose();
    result = resultOf(r);
  } else if (stage === "clipit") {
    const { pairing, text, ids } = textSide();
    const r = await trainClipIt(
      run,
      {
        classes: ds.classes,
        train,
        val,
        test,
        trainReports: need(pairing.train, "a train pairing", stage).reports,
        valReports: pairing.val?.reports,
        reportIds: ids,
        backbone,
        textEncoder: text,
        initHead: inputs.initHead ? await readHead(inputs.initHead) : undefined,
      },
      settings,
      control,
    );
    await saveInferenceModel(r.model, run.path(RUN_FILES.model), { classes: ds.classes, stage });
    r.model.dispose();
    text.dispose();
    result = resultOf(r);
  } else {
    const { pairing, text, ids } = textSide();
    const r = await trainContrastive(
      run,
      {
        train,
        val,
        trainReports: need(pairing.train, "a train pairing", stage).reports,
        valReports: need(pairing.val, "a val pairing", stage).reports,
        reportIds: ids,
        backbone,
        textEncoder: text,
        logitScale: models.logitScale ?? Math.log(1 / 0.07),
      },
      settings,
      control,
    );
    text.dispose();
    // The probe: a linear head on the fine-tuned features, a run of its own inside this one.
    const probe = control.resume && await exists(join(run.dir, "probe", RUN_FILES.config))
      ? await RunDir.open(join(run.dir, "probe"))
      : await RunDir.create(join(run.dir, "probe"), { ...run.config, phase: "probe" });
    const feats = await splitFeatures(
      backbone,
      ds,
      probe.dir,
      `${backboneKey}|contrastive`,
      control,
      settings.workers,
    );
    const h = await trainHead(
      probe,
      {
        classes: ds.classes,
        train: feats.train!,
        val: feats.val!,
        test: feats.test,
        head: "linear",
      },
      settings,
      {},
    );
    await saveBaselineModel(backbone, h.head, ds.classes, run.path(RUN_FILES.model), stage);
    h.head.dispose();
    backbone.dispose();
    if (h.test) await run.log({ type: "test", step: r.state.step, ...h.test });
    // The contrastive phase's steps and validations; the probe's test report.
    result = { ...resultOf(r), test: h.test };
  }
  if (result.test) {
    await writeFileAtomic(run.path(RUN_FILES.eval), JSON.stringify(result.test, null, 2) + "\n");
  }
  await writeRunReport(run, stage, inputs);
  return result;
}

/** An inference checkpoint of `backbone` with a linear head (`fc` = `head`'s weights). */
async function saveBaselineModel(
  backbone: ImageBackbone,
  head: Linear | MLP,
  classes: string[],
  path: string,
  stage: Stage,
): Promise<void> {
  if (!(head instanceof Linear)) throw new Error("a baseline model needs a linear head");
  const model = new ClipItModel(backbone, { numClasses: classes.length, textDim: 0 });
  copyInto(model.fc.weight, head.weight);
  copyInto(model.fc.bias!, head.bias!);
  await saveInferenceModel(model, path, { classes, stage });
  // Only the heads are this function's: the backbone belongs to the caller's run.
  model.fc.dispose();
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Write `report.html` for a run: its config and metrics, the test report, the train split's
 * pairing score histogram, and up to 8 training images beside their paired reports.
 */
export async function writeRunReport(
  run: RunDir,
  stage: Stage,
  inputs: StageInputs,
): Promise<void> {
  const metrics = await run.metrics();
  const samples: ReportSample[] = [];
  const train = split(inputs.dataset, "train");
  const pairing = inputs.pairing?.train;
  if (train && pairing && inputs.corpus && train.source.kind === "files") {
    const n = Math.min(8, train.labels.length);
    for (let k = 0; k < n; k++) {
      const i = Math.floor((k * train.labels.length) / n);
      try {
        const img = await readImage(train.source.paths[i]);
        samples.push({
          image: img,
          id: train.source.paths[i].split("/").pop(),
          label: inputs.dataset.classes[train.labels[i]],
          report: inputs.corpus.reports[pairing.reports[i]],
          reportIndex: pairing.reports[i],
          score: pairing.scores[i],
        });
      } catch {
        // an unreadable image is simply not shown
      }
    }
  }
  const ds = inputs.dataset;
  const settings = (run.config.settings ?? {}) as { seed?: number };
  const html = renderReport({
    title: `${STAGE_TITLES[stage]} on ${ds.kind} (${ds.classes.length} classes), seed ${
      settings.seed ?? 0
    }`,
    subtitle: `${run.dir}, ${new Date().toISOString()}`,
    config: run.config,
    metrics: metrics as never,
    pairingScores: pairing ? [...pairing.scores].filter(Number.isFinite) : undefined,
    samples,
  });
  await writeFileAtomic(run.path(RUN_FILES.report), html);
}
