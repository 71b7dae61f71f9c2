/**
 * Stage 2: training CLIP-IT (train/clipit.ts has the model and the loss; train/loop.ts the loop).
 *
 * One step: a batch of images and labels from the DataLoader, each image's paired report (the
 * pairing's top-1, or a seeded random report for the `--pairing random` ablation) as token ids,
 * `t = normalize(f_t(report))`, the model's logits and `t_hat`, the loss
 * `CE(logits, y) + lambda * mean(1 - cos(t_hat, t))`, backward, gradient-norm clipping, one
 * Adam step. Trained: the LoRA adapters of both encoders (unless `lora.enabled` is false),
 * `fc` (initialised from stage 1 when given), `h_d`, `h_t`, `g`.
 *
 * When the text encoder has no adapter (no LoRA on it) its embeddings of the paired reports
 * never change, so they are computed once before training instead of every step.
 */
import { backward, noGrad } from "../nn/autograd.ts";
import {
  applyLora,
  type LoraAdapter,
  loraAdapters,
  type LoraOptions,
  loraStateDict,
} from "../nn/lora.ts";
import { writeTensor } from "../nn/ops/inplace.ts";
import { scale } from "../nn/ops/elementwise.ts";
import { embedding } from "../nn/ops/embedding.ts";
import { Adam, AdamW, clipGradNorm, cosineSchedule, type Optimizer } from "../nn/optim.ts";
import { seedOf } from "./data/split.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { backboneInput, type ImageBackbone, type TextEncoder } from "../clip/backbone.ts";
import { DEFAULT_LORA_TARGETS, type LoraRole, loraTargetFilter } from "../clip/lora_targets.ts";
import { clipItLoss, ClipItModel, distillLoss, textTargets } from "./clipit.ts";
import { loadTrainState, saveTrainState, type TrainStateMeta } from "./checkpoint.ts";
import { DataLoader } from "./data/loader.ts";
import type { Split } from "./data/datasets.ts";
import { meanCrossEntropy, predictBatches, reportOf } from "./evaluate.ts";
import { type LoopProgress, type LoopResult, type LoopState, trainLoop } from "./loop.ts";
import { RUN_FILES, type RunDir } from "./run.ts";

/** LoRA settings of stage 2. */
export interface LoraSettings {
  /** Put adapters on the encoders (default true; false is the paper's "no LoRA" ablation). */
  enabled?: boolean;
  /** Rank r (default 16). */
  rank?: number;
  /** alpha (default 8): the update is scaled by alpha / r. */
  alpha?: number;
  /** Dropout on the adapters' inputs (default 0). */
  dropout?: number;
  /** Which weights get adapters (default attn, mlp, embedding, patch). */
  targets?: readonly LoraRole[];
}

/** Optimisation settings shared by the trainers. */
export interface OptimSettings {
  /** Epochs (default 10). */
  epochs?: number;
  /** Images per batch (default 64). */
  batchSize?: number;
  /** Learning rate (default 1e-3). */
  lr?: number;
  /** Weight decay (default 1e-4). */
  weightDecay?: number;
  /** "adam": coupled L2 decay, as the authors; "adamw": decoupled (default "adam"). */
  optimizer?: "adam" | "adamw";
  /** Gradient-norm clipping (default 0.5; 0 disables). */
  maxGradNorm?: number;
  /** "none" (default) or "cosine" down to `lrMin` (default 1e-4). */
  schedule?: "none" | "cosine";
  /** Linear warm-up steps of the cosine schedule (default 0). */
  warmupSteps?: number;
  /** Final learning rate of the cosine schedule (default 1e-4). */
  lrMin?: number;
  /** Validate every this many steps and after the last (default 0: at the end of each epoch). */
  valEvery?: number;
  /** Stop after this many validations without improvement (default 0: off). */
  earlyStop?: number;
  /** What picks the best checkpoint (default "val_loss"). */
  bestBy?: "val_loss" | "balanced_accuracy";
  /** Read back and log losses every this many steps (default 10). */
  logEvery?: number;
  /** Seed of the data order, augmentation, heads and adapters (default 0). */
  seed?: number;
  /** Light augmentation of the training images (default false). */
  augment?: boolean;
  /** Decoding workers (default: the loader's). */
  workers?: number;
}

/** Everything stage 2 trains on. */
export interface ClipItTrainInputs {
  /** The class names (a label indexes them). */
  classes: string[];
  /** The training split. */
  train: Split;
  /** The validation split. */
  val: Split;
  /** The test split, evaluated with the best checkpoint at the end (optional). */
  test?: Split;
  /** The report paired with each training sample (an index into `reportIds`' rows). */
  trainReports: Int32Array;
  /** The same for the validation samples (then the validation loss includes the distillation). */
  valReports?: Int32Array;
  /** Every report of the corpus tokenized: row-major [M, contextLength]. */
  reportIds: Int32Array;
  /** The image model f_v. */
  backbone: ImageBackbone;
  /** The text model f_t. */
  textEncoder: TextEncoder;
  /** The stage-1 head to start `fc` from: weight [C, D] and bias [C]. */
  initHead?: { weight: Float32Array; bias: Float32Array };
}

/** The method's settings. */
export interface ClipItSettings extends OptimSettings {
  /** Weight of the distillation term (default 1). */
  lambda?: number;
  /** Build the text-branch head and the fusion (default true). */
  textBranch?: boolean;
  /** How the fusion starts (default "identity"; see ClipItModelOptions). */
  fusionInit?: "identity" | "random";
  /** LoRA on both encoders. */
  lora?: LoraSettings;
}

/** How the run went. */
export interface ClipItResult extends LoopResult {
  /** The trained model (with the best checkpoint's weights, adapters not merged). */
  model: ClipItModel;
  /** The test report (when a test split was given). */
  test?: ReturnType<typeof reportOf>;
}

/** Options of {@link trainClipIt} beyond the data and the settings. */
export interface RunControl {
  /** Continue from the run folder's last checkpoint. */
  resume?: boolean;
  /** Stop at the next step (Ctrl-C), writing a resumable checkpoint. */
  signal?: AbortSignal;
  /** Progress of training and validation. */
  onProgress?: (p: LoopProgress) => void;
  /** Progress of the test evaluation (images done). */
  onTestProgress?: (done: number, total: number) => void;
}

/** The optimiser of `settings` over `params`. */
export function makeOptimizer(params: Tensor[], s: OptimSettings): Optimizer {
  const opts = { lr: s.lr ?? 1e-3, weightDecay: s.weightDecay ?? 1e-4 };
  return (s.optimizer ?? "adam") === "adamw" ? new AdamW(params, opts) : new Adam(params, opts);
}

/** The learning rate per step of `settings` for a run of `totalSteps`. */
export function makeSchedule(s: OptimSettings, totalSteps: number): (step: number) => number {
  const lr = s.lr ?? 1e-3;
  if ((s.schedule ?? "none") === "none") return () => lr;
  return cosineSchedule({
    lrMax: lr,
    lrMin: s.lrMin ?? 1e-4,
    totalSteps,
    warmupSteps: s.warmupSteps ?? 0,
  });
}

/** Rows `rows` of a row-major [*, width] array, gathered. */
export function gatherRows(ids: Int32Array, width: number, rows: ArrayLike<number>): Int32Array {
  const out = new Int32Array(rows.length * width);
  for (let i = 0; i < rows.length; i++) {
    out.set(ids.subarray(rows[i] * width, (rows[i] + 1) * width), i * width);
  }
  return out;
}

/**
 * The LoRA adapters of both encoders by checkpoint name: `backbone.<site>.lora_A` / `.lora_B`
 * and `text_encoder.<site>.lora_A` / `.lora_B`.
 */
export function adapterTensors(backbone: ImageBackbone, text: TextEncoder): [string, Tensor][] {
  return [
    ...[...loraStateDict(backbone)].map(([k, v]) => [`backbone.${k}`, v] as [string, Tensor]),
    ...[...loraStateDict(text)].map(([k, v]) => [`text_encoder.${k}`, v] as [string, Tensor]),
  ];
}

/** `applyLora`'s options for `settings` (defaults: rank 16, alpha 8, dropout 0, DESIGN's targets). */
export function loraOptions(settings: LoraSettings = {}): LoraOptions {
  return {
    rank: settings.rank ?? 16,
    alpha: settings.alpha ?? 8,
    dropout: settings.dropout ?? 0,
    filter: loraTargetFilter(settings.targets ?? DEFAULT_LORA_TARGETS),
  };
}

/** The named trainable tensors of stage 2 (what checkpoints hold). */
export function clipItTrainables(model: ClipItModel, text: TextEncoder): Map<string, Tensor> {
  return new Map<string, Tensor>([
    ...adapterTensors(model.backbone, text),
    ...model.headParameters(),
  ]);
}

/**
 * Train CLIP-IT into `run` (see the module comment). Returns the model with the best
 * validation checkpoint loaded, the loop's result and (with a test split) the test report.
 */
export async function trainClipIt(
  run: RunDir,
  data: ClipItTrainInputs,
  settings: ClipItSettings,
  control: RunControl = {},
): Promise<ClipItResult> {
  const { backbone, textEncoder: text, classes } = data;
  const C = classes.length;
  const seed = settings.seed ?? 0;
  const lambda = settings.lambda ?? 1;
  const ctx = text.contextLength;
  if (data.reportIds.length % ctx !== 0) {
    throw new Error(`reportIds: ${data.reportIds.length} ids are not rows of ${ctx}`);
  }
  const M = data.reportIds.length / ctx;
  for (
    const [name, reports, split] of [
      ["train", data.trainReports, data.train],
      ["val", data.valReports, data.val],
    ] as const
  ) {
    if (!reports) continue;
    if (reports.length !== split.labels.length) {
      throw new Error(
        `the ${name} pairing has ${reports.length} entries for ${split.labels.length} images`,
      );
    }
    const bad = reports.findIndex((r) => !(r >= 0 && r < M));
    if (bad >= 0) throw new Error(`the ${name} pairing names report ${reports[bad]} of ${M}`);
  }

  // ---- the model: LoRA on both encoders, then the heads ----
  const lora = settings.lora ?? {};
  if (lora.enabled ?? true) {
    const opts = loraOptions(lora);
    applyLora(backbone, { ...opts, seed: seedOf(seed, 1) });
    // With lambda = 0 nothing reaches the text encoder: it stays frozen (its embeddings are
    // then computed once), and adapters on it would only be moved by weight decay.
    if (lambda > 0) applyLora(text, { ...opts, seed: seedOf(seed, 2) });
    else text.freeze();
  } else {
    backbone.freeze();
    text.freeze();
  }
  const model = new ClipItModel(backbone, {
    numClasses: C,
    textDim: text.embedDim,
    textBranch: settings.textBranch ?? true,
    fusionInit: settings.fusionInit,
    seed: seedOf(seed, 3),
  });
  if (data.initHead) {
    const D = backbone.featureDim;
    if (data.initHead.weight.length !== C * D || data.initHead.bias.length !== C) {
      throw new Error(
        `the stage-1 head is [${data.initHead.bias.length}, ${
          data.initHead.weight.length / Math.max(1, data.initHead.bias.length)
        }], this model needs [${C}, ${D}] (another backbone or class list?)`,
      );
    }
    writeTensor(model.fc.weight, data.initHead.weight);
    writeTensor(model.fc.bias!, data.initHead.bias);
  }
  const trainables = clipItTrainables(model, text);
  const params = [...trainables.values()];
  const adapters: LoraAdapter[] = [
    ...loraAdapters(backbone).values(),
    ...loraAdapters(text).values(),
  ];
  const opt = makeOptimizer(params, settings);
  const maxGradNorm = settings.maxGradNorm ?? 0.5;

  // Frozen text encoder: its report embeddings are constants, computed once (one row per report
  // any image is paired with; others stay zero).
  const textFrozen = text.trainableParameters().length === 0;
  let frozenTable: Tensor | null = null;
  if (textFrozen) {
    const used = [...new Set([...data.trainReports, ...(data.valReports ?? [])])].sort((a, b) =>
      a - b
    );
    const rows = new Float32Array(M * text.embedDim);
    for (let i = 0; i < used.length; i += 64) {
      const chunk = used.slice(i, i + 64);
      const emb = noGrad(() =>
        tidy(() => textTargets(text, gatherRows(data.reportIds, ctx, chunk)))
      );
      const values = await emb.toFloat32Array();
      emb.dispose();
      chunk.forEach((r, j) =>
        rows.set(values.subarray(j * text.embedDim, (j + 1) * text.embedDim), r * text.embedDim)
      );
    }
    frozenTable = tensor(rows, [M, text.embedDim]);
  }
  const targetsFor = (reports: ArrayLike<number>): Tensor =>
    frozenTable
      ? embedding(frozenTable, tensor(Int32Array.from(reports), [reports.length]))
      : textTargets(text, gatherRows(data.reportIds, ctx, reports));

  // ---- data ----
  const batchSize = settings.batchSize ?? 64;
  const loaderOpts = {
    batchSize,
    ...backboneInput(backbone),
    workers: settings.workers,
  };
  const trainLoader = new DataLoader(data.train, {
    ...loaderOpts,
    shuffle: true,
    seed,
    augment: settings.augment ?? false,
  });
  const evalLoader = (split: Split) => new DataLoader(split, { ...loaderOpts, shuffle: false });
  // One validation loader for the whole run: its decoding workers start once.
  const valLoader = evalLoader(data.val);
  const epochs = settings.epochs ?? 10;
  const stepsPerEpoch = trainLoader.numBatches;

  /** Validation: the loss (CE, plus the distillation when the split is paired) and metrics. */
  const validate = async () => {
    model.eval();
    text.eval();
    let distillSum = 0;
    try {
      const p = await predictBatches(
        valLoader.batches(0),
        (images, indices) => {
          const out = model.forward(images);
          if (data.valReports) {
            const t = targetsFor(Array.from(indices, (i) => data.valReports![i]));
            // Read with the logits' readback: the batch's summed distillation.
            return { logits: out.logits, extra: scale(distillLoss(out.tHat!, t), indices.length) };
          }
          return { logits: out.logits };
        },
        C,
        undefined,
        (extra) => distillSum += extra,
      );
      const labels = Int32Array.from(p.indices, (i) => data.val.labels[i]);
      const ce = meanCrossEntropy(p.logits, labels, C);
      const r = reportOf(p, data.val.labels, classes);
      const distill = data.valReports ? distillSum / Math.max(1, labels.length) : NaN;
      return {
        loss: data.valReports ? ce + lambda * distill : ce,
        ce,
        ...(data.valReports ? { distill } : {}),
        accuracy: r.accuracy,
        balanced_accuracy: r.balanced_accuracy,
      };
    } finally {
      model.train();
      text.train();
    }
  };

  const saveState = (path: string, meta: TrainStateMeta) =>
    saveTrainState(path, trainables, opt, meta);

  let start: LoopState | undefined;
  if (control.resume) {
    const meta = await loadTrainState(run.path(RUN_FILES.last), trainables, opt);
    start = meta as unknown as LoopState;
    await run.truncateMetrics(start.step);
  }

  let result: LoopResult;
  try {
    result = await trainLoop(run, {
      stepsPerEpoch,
      epochLength: trainLoader.length,
      batches: (epoch, from) => trainLoader.batches(epoch, from),
      release: (b) => {
        b.images.dispose();
        b.labels.dispose();
      },
      step: (b, step, lr) => {
        opt.setLr(lr);
        adapters.forEach((a, i) => a.dropoutSeed = seedOf(seed, 4, step, i));
        return tidy(() => {
          const reports = Array.from(b.indices, (i) => data.trainReports[i]);
          const t = targetsFor(reports);
          const out = model.forward(b.images);
          const l = clipItLoss(out.logits, b.labels, out.tHat!, t, lambda);
          backward(l.loss);
          const scalars: Record<string, Tensor> & { loss: Tensor } = {
            loss: l.loss,
            ce: l.ce,
            distill: l.distill,
          };
          if (maxGradNorm > 0) scalars.grad_norm = clipGradNorm(params, maxGradNorm);
          opt.step();
          opt.zeroGrad();
          return { scalars, size: b.size };
        });
      },
      validate,
      save: saveState,
    }, {
      epochs,
      valEvery: settings.valEvery,
      logEvery: settings.logEvery,
      earlyStop: settings.earlyStop,
      bestBy: settings.bestBy,
      lr: makeSchedule(settings, epochs * stepsPerEpoch),
      signal: control.signal,
      onProgress: control.onProgress,
      start,
    });
  } finally {
    await trainLoader.close();
    await valLoader.close();
    frozenTable?.dispose();
  }

  // The best checkpoint's weights, then the test split.
  if (await run.has(RUN_FILES.best)) {
    await loadTrainState(run.path(RUN_FILES.best), trainables, null);
  }
  opt.dispose();
  let test: ClipItResult["test"];
  if (data.test) {
    model.eval();
    const loader = evalLoader(data.test);
    try {
      const total = data.test.labels.length;
      const p = await predictBatches(
        loader.batches(0),
        (images) => ({ logits: model.forward(images).logits }),
        C,
        (done) => control.onTestProgress?.(done, total),
      );
      test = reportOf(p, data.test.labels, classes);
    } finally {
      await loader.close();
    }
    await run.log({ type: "test", step: result.state.step, ...test });
  }
  return { ...result, model, test };
}
