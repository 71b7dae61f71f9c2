/**
 * Contrastive pretraining of a whole CLIP from image-text pairs held in memory: the demo uses it
 * to make its own small pathology-CLIP stand-in (a real run starts from a published CLIP such as
 * QuiltNet, PLIP or CONCH instead). Every parameter trains, with CLIP's symmetric InfoNCE
 * (train/contrastive.ts' `infoNce`, texts shared inside a batch counted as positives), AdamW and a
 * cosine schedule with warm-up, as open_clip trains.
 */
import { backward, noGrad } from "../nn/autograd.ts";
import { l2Normalize } from "../nn/ops/nn.ts";
import { clamp } from "../nn/ops/elementwise.ts";
import { copyInto } from "../nn/ops/inplace.ts";
import { AdamW, clipGradNorm, cosineSchedule } from "../nn/optim.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import type { ClipModel } from "../clip/model.ts";
import { infoNce, sharedReportTargets } from "./contrastive.ts";
import { permutation, seedOf } from "./data/split.ts";

/** Pairs for {@link pretrainClip}: preprocessed images and their texts' token ids. */
export interface PretrainPairs {
  /** Normalised images, row-major [N, 3, S, S]. */
  images: Float32Array;
  /** Token ids, row-major [N, contextLength]. */
  ids: Int32Array;
  /** Text identity per pair (pairs with equal ids here are positives of each other); default: all
   * distinct. */
  textIds?: Int32Array;
  /** Number of pairs N. */
  count: number;
}

/** Options of {@link pretrainClip}. */
export interface PretrainOptions {
  /** Optimisation steps. */
  steps: number;
  /** Pairs per batch (default 128). */
  batchSize?: number;
  /** Peak learning rate (default 2e-3). */
  lr?: number;
  /** AdamW weight decay (default 0.1). */
  weightDecay?: number;
  /** Warm-up steps (default steps / 10). */
  warmupSteps?: number;
  /** Seed of the batch order (default 0). */
  seed?: number;
  /** Called every `logEvery` steps with the step and the mean loss since the last call. */
  onProgress?: (step: number, loss: number) => void;
  /** Loss readback interval (default 20). */
  logEvery?: number;
}

const MAX_LOG_SCALE = Math.log(100);

/**
 * Train every parameter of `clip` (and its `logit_scale`, clamped at ln 100) on `pairs`.
 * Returns the loss of the last logged window.
 */
export async function pretrainClip(
  clip: ClipModel,
  pairs: PretrainPairs,
  opts: PretrainOptions,
): Promise<number> {
  const N = pairs.count, B = Math.min(opts.batchSize ?? 128, N);
  const S = clip.config.vision.imageSize, ctx = clip.config.text.contextLength;
  const plane = 3 * S * S;
  if (pairs.images.length !== N * plane || pairs.ids.length !== N * ctx) {
    throw new Error(`pretrainClip: ${N} pairs need ${N * plane} pixels and ${N * ctx} ids`);
  }
  clip.unfreeze();
  clip.train();
  const params = clip.parameters();
  const opt = new AdamW(params, { lr: opts.lr ?? 2e-3, weightDecay: opts.weightDecay ?? 0.1 });
  const lr = cosineSchedule({
    lrMax: opts.lr ?? 2e-3,
    lrMin: 0,
    totalSteps: opts.steps,
    warmupSteps: opts.warmupSteps ?? Math.floor(opts.steps / 10),
  });
  const logEvery = opts.logEvery ?? 20;
  const seed = opts.seed ?? 0;
  let order = permutation(N, seedOf(seed, 0));
  let pos = 0, epoch = 0, last = NaN;
  const pending: Tensor[] = [];
  const textIds = pairs.textIds ?? Int32Array.from({ length: N }, (_, i) => i);
  try {
    for (let step = 0; step < opts.steps; step++) {
      if (pos + B > N) {
        order = permutation(N, seedOf(seed, ++epoch));
        pos = 0;
      }
      const rows = order.subarray(pos, pos + B);
      pos += B;
      const x = new Float32Array(B * plane), ids = new Int32Array(B * ctx);
      const texts = new Int32Array(B);
      rows.forEach((r, j) => {
        x.set(pairs.images.subarray(r * plane, (r + 1) * plane), j * plane);
        ids.set(pairs.ids.subarray(r * ctx, (r + 1) * ctx), j * ctx);
        texts[j] = textIds[r];
      });
      opt.setLr(lr(step));
      const loss = tidy(() => {
        const v = l2Normalize(clip.encodeImage(tensor(x, [B, 3, S, S])));
        const t = l2Normalize(clip.encodeText(ids));
        const targets = tensor(sharedReportTargets(texts), [B, B]);
        const l = infoNce(v, t, clip.logit_scale, targets);
        backward(l);
        clipGradNorm(params, 1).dispose();
        opt.step();
        opt.zeroGrad();
        return l;
      });
      noGrad(() =>
        tidy(() => copyInto(clip.logit_scale, clamp(clip.logit_scale, -Infinity, MAX_LOG_SCALE)))
      );
      pending.push(loss);
      if (pending.length >= logEvery || step === opts.steps - 1) {
        const values = await Promise.all(pending.map((t) => t.item()));
        pending.forEach((t) => t.dispose());
        pending.length = 0;
        last = values.reduce((a, b) => a + b, 0) / values.length;
        if (!Number.isFinite(last)) {
          throw new Error(`pretrainClip: the loss became ${last} by step ${step + 1}`);
        }
        opts.onProgress?.(step + 1, last);
      }
    }
  } finally {
    pending.forEach((t) => t.dispose());
    opt.dispose();
  }
  return last;
}
