/**
 * The multimodal baseline of the paper: the CLIP fine-tuned contrastively on the pseudo-pairs
 * (each training image with its paired report), then a linear head on the fine-tuned image
 * features (stage 1 on new features, train/stage1.ts).
 *
 * The loss is CLIP's symmetric InfoNCE over a batch, `(CE(S, pos) + CE(S^T, pos)) / 2` with
 * `S = exp(s) * v_n t_n^T` and a learned temperature `s` (started from the CLIP's own
 * `logit_scale`, clamped at ln 100 as open_clip does). Pseudo-pairs repeat reports, so several
 * images of a batch can share one: they are positives of each other, and the targets spread
 * evenly over every positive (a plain InfoNCE would push identical reports apart).
 *
 * The same adapters as stage 2 (LoRA on both towers) are trained, with the temperature.
 */
import { backward, noGrad } from "../nn/autograd.ts";
import { applyLora, loraAdapters } from "../nn/lora.ts";
import { add, clamp, exp, mul, neg, scale } from "../nn/ops/elementwise.ts";
import { copyInto } from "../nn/ops/inplace.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { l2Normalize, logSoftmax } from "../nn/ops/nn.ts";
import { mean, sum } from "../nn/ops/reduce.ts";
import { transpose } from "../nn/ops/shape.ts";
import { clipGradNorm } from "../nn/optim.ts";
import { keep, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { backboneInput, type ImageBackbone, type TextEncoder } from "../clip/backbone.ts";
import { loadTrainState, saveTrainState } from "./checkpoint.ts";
import {
  adapterTensors,
  type ClipItSettings,
  gatherRows,
  loraOptions,
  makeOptimizer,
  makeSchedule,
  type RunControl,
} from "./clipit_train.ts";
import { DataLoader } from "./data/loader.ts";
import type { Split } from "./data/datasets.ts";
import { seedOf } from "./data/split.ts";
import { type LoopResult, type LoopState, trainLoop } from "./loop.ts";
import { RUN_FILES, type RunDir } from "./run.ts";

/**
 * Row-normalised target matrix [B, B] for InfoNCE with repeated texts: image i and text j are a
 * positive pair when they share a report (symmetric, so it serves both directions).
 */
export function sharedReportTargets(reports: ArrayLike<number>): Float32Array {
  const B = reports.length;
  const t = new Float32Array(B * B);
  for (let i = 0; i < B; i++) {
    let n = 0;
    for (let j = 0; j < B; j++) if (reports[j] === reports[i]) n++;
    for (let j = 0; j < B; j++) if (reports[j] === reports[i]) t[i * B + j] = 1 / n;
  }
  return t;
}

/**
 * CLIP's symmetric InfoNCE of normalised embeddings v [B, d] and t [B, d], with the log
 * temperature `logScale` ([] tensor, exp'd) and soft targets [B, B] (rows sum to 1, symmetric).
 */
export function infoNce(v: Tensor, t: Tensor, logScale: Tensor, targets: Tensor): Tensor {
  const s = mul(matmul(v, t, { transposeB: true }), exp(logScale));
  const imageToText = neg(mean(sum(mul(targets, logSoftmax(s, 1)), 1)));
  const textToImage = neg(mean(sum(mul(targets, logSoftmax(transpose(s), 1)), 1)));
  return scale(add(imageToText, textToImage), 0.5);
}

/** What the contrastive phase trains on. */
export interface ContrastiveInputs {
  /** The training split. */
  train: Split;
  /** The paired report of each training sample (rows of `reportIds`). */
  trainReports: Int32Array;
  /** The validation split (the validation loss is InfoNCE on its pairs). */
  val: Split;
  /** The paired report of each validation sample. */
  valReports: Int32Array;
  /** The tokenized corpus, [M, contextLength]. */
  reportIds: Int32Array;
  /** The CLIP's image tower. */
  backbone: ImageBackbone;
  /** The CLIP's text tower. */
  textEncoder: TextEncoder;
  /** The CLIP's `logit_scale` (log of the inverse temperature) to start from. */
  logitScale: number;
}

const MAX_LOG_SCALE = Math.log(100);

/**
 * Fine-tune the two towers with InfoNCE on the pseudo-pairs into `run` (LoRA per
 * `settings.lora`, the shared loop; the best checkpoint by validation InfoNCE is loaded at the
 * end). The backbone keeps its adapters: compute its features next for the linear probe.
 */
export async function trainContrastive(
  run: RunDir,
  data: ContrastiveInputs,
  settings: ClipItSettings,
  control: RunControl = {},
): Promise<LoopResult> {
  const { backbone, textEncoder: text } = data;
  const seed = settings.seed ?? 0;
  const ctx = text.contextLength;
  const lora = settings.lora ?? {};
  if (lora.enabled ?? true) {
    const opts = loraOptions(lora);
    applyLora(backbone, { ...opts, seed: seedOf(seed, 1) });
    applyLora(text, { ...opts, seed: seedOf(seed, 2) });
  } else {
    throw new Error("the contrastive baseline trains LoRA adapters: --no-lora leaves nothing");
  }
  const logScale = keep(
    tensor([Math.min(data.logitScale, MAX_LOG_SCALE)], [], { requiresGrad: true }),
  );
  const named = new Map<string, Tensor>([
    ...adapterTensors(backbone, text),
    ["logit_scale", logScale],
  ]);
  const params = [...named.values()];
  const adapters = [...loraAdapters(backbone).values(), ...loraAdapters(text).values()];
  const opt = makeOptimizer(params, settings);
  const maxGradNorm = settings.maxGradNorm ?? 0.5;
  const batchSize = settings.batchSize ?? 64;
  const loaderOpts = {
    batchSize,
    ...backboneInput(backbone),
    workers: settings.workers,
  };
  const loader = new DataLoader(data.train, {
    ...loaderOpts,
    shuffle: true,
    seed,
    augment: settings.augment ?? false,
    dropLast: data.train.labels.length > batchSize, // a 1-image batch has no negatives
  });
  const epochs = settings.epochs ?? 10;

  const lossOf = (images: Tensor, reports: number[]) => {
    const v = l2Normalize(backbone.features(images));
    const t = l2Normalize(text.encode(gatherRows(data.reportIds, ctx, reports)));
    const targets = tensor(sharedReportTargets(reports), [reports.length, reports.length]);
    return infoNce(v, t, logScale, targets);
  };

  let start: LoopState | undefined;
  if (control.resume) {
    start = await loadTrainState(run.path(RUN_FILES.last), named, opt) as unknown as LoopState;
    await run.truncateMetrics(start.step);
  }
  try {
    return await trainLoop(run, {
      stepsPerEpoch: loader.numBatches,
      epochLength: loader.length,
      batches: (epoch, from) => loader.batches(epoch, from),
      release: (b) => {
        b.images.dispose();
        b.labels.dispose();
      },
      step: (b, step, lr) => {
        opt.setLr(lr);
        adapters.forEach((a, i) => a.dropoutSeed = seedOf(seed, 4, step, i));
        const out = tidy(() => {
          const loss = lossOf(b.images, Array.from(b.indices, (i) => data.trainReports[i]));
          backward(loss);
          const scalars: Record<string, Tensor> & { loss: Tensor } = { loss };
          if (maxGradNorm > 0) scalars.grad_norm = clipGradNorm(params, maxGradNorm);
          opt.step();
          opt.zeroGrad();
          return { scalars, size: b.size };
        });
        // open_clip clamps the learned temperature after every step.
        noGrad(() => tidy(() => copyInto(logScale, clamp(logScale, -Infinity, MAX_LOG_SCALE))));
        return out;
      },
      validate: async () => {
        const val = new DataLoader(data.val, { ...loaderOpts, shuffle: false });
        let total = 0, n = 0, hits = 0;
        try {
          for await (const b of val.batches(0)) {
            const reports = Array.from(b.indices, (i) => data.valReports[i]);
            const [loss, s] = noGrad(() =>
              tidy(() => {
                const v = l2Normalize(backbone.features(b.images));
                const t = l2Normalize(text.encode(gatherRows(data.reportIds, ctx, reports)));
                const targets = tensor(sharedReportTargets(reports), [b.size, b.size]);
                return [infoNce(v, t, logScale, targets), matmul(v, t, { transposeB: true })];
              })
            );
            b.images.dispose();
            b.labels.dispose();
            const [l, sims] = await Promise.all([loss.item(), s.toFloat32Array()]);
            loss.dispose();
            s.dispose();
            total += l * b.size;
            n += b.size;
            // Retrieval accuracy: the image's most similar text in the batch is a positive.
            for (let i = 0; i < b.size; i++) {
              let best = 0;
              for (let j = 1; j < b.size; j++) {
                if (sims[i * b.size + j] > sims[i * b.size + best]) best = j;
              }
              if (reports[best] === reports[i]) hits++;
            }
          }
        } finally {
          await val.close();
        }
        // No classes here: the class metrics are NaN (left out of plots); what is measured is
        // how often an image's nearest text in its batch is its own report.
        return {
          loss: total / Math.max(n, 1),
          accuracy: NaN,
          balanced_accuracy: NaN,
          retrieval_accuracy: hits / Math.max(n, 1),
        };
      },
      save: (path, meta) => saveTrainState(path, named, opt, meta),
    }, {
      epochs,
      valEvery: settings.valEvery,
      logEvery: settings.logEvery,
      earlyStop: settings.earlyStop,
      bestBy: "val_loss",
      lr: makeSchedule(settings, epochs * loader.numBatches),
      signal: control.signal,
      onProgress: control.onProgress,
      start,
    });
  } finally {
    await loader.close();
    if (await run.has(RUN_FILES.best)) await loadTrainState(run.path(RUN_FILES.best), named, null);
    opt.dispose();
    logScale.dispose();
  }
}
