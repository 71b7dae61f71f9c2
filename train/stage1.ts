/**
 * Stage 1: heads on frozen features.
 *
 * - The vision baseline (the "unimodal" model CLIP-IT must beat): a frozen image backbone and a
 *   linear head `fc: D -> C`. The backbone runs once per image: its features are computed for
 *   every split up front (and cached on disk), so every epoch after that costs only the head.
 * - The text-branch baseline of DESIGN.md: a frozen text encoder's normalised embedding of each
 *   image's paired report, and the head `d_t -> d_t -> LeakyReLU(0.1) -> C`, trained on
 *   (paired report, image label): how much of the label the paired reports carry.
 *
 * Both train with train/loop.ts on batches of feature rows (seeded order per epoch), so they
 * share its validation, best checkpoint, early stopping and resumption.
 */
import { backward, noGrad } from "../nn/autograd.ts";
import { Linear, MLP } from "../nn/layers.ts";
import type { Module } from "../nn/module.ts";
import { crossEntropy, leakyRelu } from "../nn/ops/nn.ts";
import { clipGradNorm } from "../nn/optim.ts";
import { Rng } from "../nn/rng.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import { backboneInput, type ImageBackbone } from "../clip/backbone.ts";
import { loadTrainState, saveTrainState } from "./checkpoint.ts";
import {
  makeOptimizer,
  makeSchedule,
  type OptimSettings,
  type RunControl,
} from "./clipit_train.ts";
import { DataLoader } from "./data/loader.ts";
import type { Split } from "./data/datasets.ts";
import { permutation, seedOf } from "./data/split.ts";
import { meanCrossEntropy, type Predictions, reportOf, softmaxRows } from "./evaluate.ts";
import { type LoopResult, type LoopState, trainLoop } from "./loop.ts";
import type { ClassificationReport } from "./metrics.ts";
import { RUN_FILES, type RunDir } from "./run.ts";

/** Feature rows of one split, with its labels. */
export interface FeatureSplit {
  /** Row-major [N, D]. */
  features: Float32Array;
  /** Labels [N]. */
  labels: Int32Array;
}

/** Options of {@link computeFeatures}. */
export interface FeatureOptions {
  /** Images per forward pass (default 64). */
  batchSize?: number;
  /** Decoding workers (default: the loader's). */
  workers?: number;
  /** A safetensors file to reuse when its key matches, and to write otherwise. */
  cachePath?: string;
  /** What the cache must have been made from (backbone weights, dataset, ...); any string. */
  cacheKey?: string;
  /** Images done so far (for a progress bar). */
  onProgress?: (done: number, total: number) => void;
}

/**
 * The backbone's features of every image of `split`, in sample order ([N, D], not normalised):
 * no augmentation, the backbone's own preprocessing, no gradients. With `cachePath`, a file
 * made with the same `cacheKey` is read instead; a new one is written atomically.
 */
export async function computeFeatures(
  backbone: ImageBackbone,
  split: Split,
  opts: FeatureOptions = {},
): Promise<Float32Array> {
  const N = split.labels.length, D = backbone.featureDim;
  const key = opts.cacheKey ?? "";
  if (opts.cachePath) {
    try {
      const f = await SafetensorsFile.open(opts.cachePath);
      try {
        const e = f.entries().get("features");
        if (f.metadata.key === key && e && e.shape[0] === N && e.shape[1] === D) {
          return await f.readFloat32("features");
        }
      } finally {
        f.close();
      }
    } catch {
      // No cache yet, or a corrupt / foreign one: recompute (and replace it) rather than trust it.
    }
  }
  const out = new Float32Array(N * D);
  const loader = new DataLoader(split, {
    batchSize: opts.batchSize ?? 64,
    ...backboneInput(backbone),
    shuffle: false,
    workers: opts.workers,
  });
  const wasTraining = (backbone as unknown as Module).training;
  (backbone as unknown as Module).eval();
  try {
    let done = 0;
    const reads: Promise<void>[] = [];
    for await (const b of loader.batches(0)) {
      const f = noGrad(() => tidy(() => backbone.features(b.images)));
      b.images.dispose();
      b.labels.dispose();
      const idx = Int32Array.from(b.indices);
      reads.push(
        f.toFloat32Array().then((rows) => {
          idx.forEach((i, j) => out.set(rows.subarray(j * D, (j + 1) * D), i * D));
          f.dispose();
        }),
      );
      if (reads.length >= 4) await reads.shift();
      done += b.size;
      opts.onProgress?.(done, N);
    }
    await Promise.all(reads);
  } finally {
    await loader.close();
    (backbone as unknown as Module).train(wasTraining);
  }
  if (opts.cachePath) {
    await writeSafetensors(
      opts.cachePath,
      { features: { dtype: "F32", shape: [N, D], data: out } },
      { key },
    );
  }
  return out;
}

/** The head of a stage-1 run. */
export type HeadKind = "linear" | "text-mlp";

/** A head over D features: `fc` (linear) or DESIGN.md's text-branch MLP. */
export function makeHead(kind: HeadKind, D: number, C: number, seed: number): Linear | MLP {
  const rng = new Rng(seed);
  return kind === "linear"
    ? new Linear(D, C, { rng })
    : new MLP([D, D, C], { rng, activation: (x) => leakyRelu(x, 0.1) });
}

/** What {@link trainHead} trains on. */
export interface HeadInputs {
  /** Class names. */
  classes: string[];
  /** Training features and labels. */
  train: FeatureSplit;
  /** Validation features and labels. */
  val: FeatureSplit;
  /** Test features and labels (evaluated with the best checkpoint). */
  test?: FeatureSplit;
  /** Which head (default "linear"). */
  head?: HeadKind;
}

/** The trained head and how it went. */
export interface HeadResult extends LoopResult {
  /** The head with the best validation checkpoint's weights. */
  head: Linear | MLP;
  /** The test report, when test features were given. */
  test?: ClassificationReport;
}

/** The head's predictions on a split's features (one batch: heads are small). */
async function predictions(head: Linear | MLP, s: FeatureSplit, C: number, D: number) {
  const t = noGrad(() => tidy(() => head.forward(tensor(s.features, [s.labels.length, D]))));
  const logits = await t.toFloat32Array();
  t.dispose();
  const p: Predictions = {
    logits,
    probs: softmaxRows(logits, C),
    indices: Int32Array.from({ length: s.labels.length }, (_, i) => i),
    classes: C,
  };
  return p;
}

/**
 * Train a head on fixed features into `run` with the shared loop (Adam, coupled weight decay by
 * default, optional clipping and cosine schedule). Returns the best head and the test report.
 */
export async function trainHead(
  run: RunDir,
  data: HeadInputs,
  settings: OptimSettings,
  control: RunControl = {},
): Promise<HeadResult> {
  const C = data.classes.length;
  const N = data.train.labels.length;
  if (N === 0) throw new Error("the training split is empty");
  const D = data.train.features.length / N;
  if (!Number.isInteger(D) || D < 1) throw new Error(`training features do not fit ${N} rows`);
  for (const [name, s] of Object.entries({ val: data.val, test: data.test })) {
    if (s && s.features.length !== s.labels.length * D) {
      throw new Error(`${name} features are not ${s.labels.length} rows of ${D}`);
    }
  }
  const seed = settings.seed ?? 0;
  const head = makeHead(data.head ?? "linear", D, C, seedOf(seed, 3));
  const named = new Map(head.namedParameters());
  const params = [...named.values()];
  const opt = makeOptimizer(params, settings);
  const maxGradNorm = settings.maxGradNorm ?? 0;
  const B = settings.batchSize ?? 64;
  const stepsPerEpoch = Math.ceil(N / B);
  const epochs = settings.epochs ?? 10;

  type FeatureBatch = { x: Tensor; y: Tensor; size: number; end: number };
  async function* batches(epoch: number, from: number): AsyncGenerator<FeatureBatch> {
    const order = permutation(N, seedOf(seed, 0x0e90c4, epoch));
    for (let pos = from; pos < N; pos += B) {
      const rows = order.subarray(pos, Math.min(N, pos + B));
      const x = new Float32Array(rows.length * D), y = new Int32Array(rows.length);
      rows.forEach((r, j) => {
        x.set(data.train.features.subarray(r * D, (r + 1) * D), j * D);
        y[j] = data.train.labels[r];
      });
      yield {
        x: tensor(x, [rows.length, D]),
        y: tensor(y, [rows.length]),
        size: rows.length,
        end: pos + rows.length,
      };
    }
  }

  let start: LoopState | undefined;
  if (control.resume) {
    start = await loadTrainState(run.path(RUN_FILES.last), named, opt) as unknown as LoopState;
    await run.truncateMetrics(start.step);
  }
  const result = await trainLoop(run, {
    stepsPerEpoch,
    epochLength: N,
    batches,
    release: (b) => {
      b.x.dispose();
      b.y.dispose();
    },
    step: (b, _step, lr) => {
      opt.setLr(lr);
      return tidy(() => {
        const loss = crossEntropy(head.forward(b.x), b.y);
        backward(loss);
        const scalars: Record<string, Tensor> & { loss: Tensor } = { loss };
        if (maxGradNorm > 0) scalars.grad_norm = clipGradNorm(params, maxGradNorm);
        opt.step();
        opt.zeroGrad();
        return { scalars, size: b.size };
      });
    },
    validate: async () => {
      const p = await predictions(head, data.val, C, D);
      const r = reportOf(p, data.val.labels, data.classes);
      return {
        loss: meanCrossEntropy(p.logits, data.val.labels, C),
        accuracy: r.accuracy,
        balanced_accuracy: r.balanced_accuracy,
      };
    },
    save: (path, meta) => saveTrainState(path, named, opt, meta),
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
  if (await run.has(RUN_FILES.best)) await loadTrainState(run.path(RUN_FILES.best), named, null);
  opt.dispose();
  let test: ClassificationReport | undefined;
  if (data.test) {
    test = reportOf(await predictions(head, data.test, C, D), data.test.labels, data.classes);
    await run.log({ type: "test", step: result.state.step, ...test });
  }
  return { ...result, head, test };
}
