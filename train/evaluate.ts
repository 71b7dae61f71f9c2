/**
 * Running a classifier over a split: logits on the GPU, a batch at a time (no gradients, the
 * model in evaluation mode), then class probabilities, the cross-entropy and the metrics of
 * train/metrics.ts on the CPU in float64.
 */
import { noGrad } from "../nn/autograd.ts";
import type { Tensor } from "../nn/tensor.ts";
import { tidy } from "../nn/tensor.ts";
import { type ClassificationReport, classificationReport } from "./metrics.ts";

/** A batch of images for prediction (a DataLoader batch has this shape). */
export interface ImageBatch {
  /** Normalised images [B, 3, S, S]. */
  images: Tensor;
  /** int32 labels [B] (ignored by prediction). */
  labels: Tensor;
  /** Sample indices in the split. */
  indices: Int32Array;
  /** Images in the batch. */
  size: number;
}

/** Predictions over a split, in the order the batches came. */
export interface Predictions {
  /** Softmax probabilities [N, C], row-major. */
  probs: Float32Array;
  /** The logits [N, C], row-major. */
  logits: Float32Array;
  /** Sample indices in the split, [N]. */
  indices: Int32Array;
  /** Number of classes C. */
  classes: number;
}

/** Row-wise softmax of `logits` [N, C] in float64 (then float32). */
export function softmaxRows(logits: Float32Array, C: number): Float32Array {
  const out = new Float32Array(logits.length);
  for (let r = 0; r < logits.length / C; r++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, logits[r * C + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(logits[r * C + c] - m);
    for (let c = 0; c < C; c++) out[r * C + c] = Math.exp(logits[r * C + c] - m) / s;
  }
  return out;
}

/** Mean cross-entropy of `logits` [N, C] against `labels` [N], in float64. */
export function meanCrossEntropy(
  logits: Float32Array,
  labels: ArrayLike<number>,
  C: number,
): number {
  let total = 0;
  const n = labels.length;
  for (let r = 0; r < n; r++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, logits[r * C + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(logits[r * C + c] - m);
    total += Math.log(s) + m - logits[r * C + labels[r]];
  }
  return n > 0 ? total / n : NaN;
}

/** What a prediction callback returns: logits [B, C] and optionally one more scalar. */
export interface BatchOutput {
  /** The logits [B, C]. */
  logits: Tensor;
  /** A scalar read back with the logits and passed to `onExtra` (e.g. a summed loss term). */
  extra?: Tensor;
}

/**
 * Run `forward` (a model's forward on a batch's images and sample indices) over every batch
 * and collect the predictions. The batches' tensors are disposed here. Readbacks are issued as
 * batches finish, a few at a time, never waiting on each batch.
 */
export async function predictBatches(
  batches: AsyncIterable<ImageBatch>,
  forward: (images: Tensor, indices: Int32Array) => BatchOutput,
  C: number,
  onProgress?: (done: number) => void,
  onExtra?: (value: number) => void,
): Promise<Predictions> {
  const logits: Float32Array[] = [], indices: Int32Array[] = [];
  let done = 0;
  const reads: Promise<void>[] = [];
  for await (const b of batches) {
    const out = noGrad(() => tidy(() => forward(b.images, b.indices)));
    b.images.dispose();
    b.labels.dispose();
    const slot = logits.length;
    logits.push(new Float32Array(0));
    indices.push(Int32Array.from(b.indices));
    reads.push((async () => {
      const [l, e] = await Promise.all([
        out.logits.toFloat32Array(),
        out.extra ? out.extra.item() : Promise.resolve(0),
      ]);
      logits[slot] = l;
      if (out.extra) onExtra?.(e);
      out.logits.dispose();
      out.extra?.dispose();
    })());
    done += b.size;
    onProgress?.(done);
    // Keep at most a few readbacks in flight: memory stays bounded on a large split.
    if (reads.length >= 4) await reads.shift();
  }
  await Promise.all(reads);
  const n = indices.reduce((s, a) => s + a.length, 0);
  const all = new Float32Array(n * C), idx = new Int32Array(n);
  let o = 0;
  logits.forEach((l, i) => {
    all.set(l, o * C);
    idx.set(indices[i], o);
    o += indices[i].length;
  });
  return { probs: softmaxRows(all, C), logits: all, indices: idx, classes: C };
}

/** The labels of predicted samples, from the split's labels and the predictions' indices. */
export function labelsOf(p: Predictions, splitLabels: Int32Array): Int32Array {
  return Int32Array.from(p.indices, (i) => splitLabels[i]);
}

/** Metrics of predictions against a split's labels (train/metrics.ts). */
export function reportOf(
  p: Predictions,
  splitLabels: Int32Array,
  classes: string[],
): ClassificationReport {
  return classificationReport(labelsOf(p, splitLabels), p.probs, classes);
}
