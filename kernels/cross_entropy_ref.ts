/**
 * Float64 reference of the cross-entropy kernels (`cross_entropy.ts`): per-row loss with label
 * smoothing and its gradient. CPU only, for tests and benchmarks.
 */
import { softmaxRef } from "./softmax_ref.ts";

type Arr = ArrayLike<number>;

/**
 * Per-row cross-entropy of logits [B, C] with label smoothing, and d(sum_r gRow[r] * loss_r) /
 * d logits. NaN rows for labels out of range.
 */
export function crossEntropyRef(
  x: Arr,
  labels: Arr,
  B: number,
  C: number,
  smooth: number,
  gRow?: Arr,
): { loss: Float64Array; dx: Float64Array } {
  const loss = new Float64Array(B), dx = new Float64Array(B * C);
  const lp = softmaxRef(x, B, C, true);
  for (let r = 0; r < B; r++) {
    const lab = labels[r];
    if (lab < 0 || lab >= C) {
      loss[r] = NaN;
      dx.fill(NaN, r * C, (r + 1) * C);
      continue;
    }
    let l = 0;
    for (let c = 0; c < C; c++) {
      const t = (c === lab ? 1 - smooth : 0) + smooth / C;
      if (t !== 0) l -= t * lp[r * C + c]; // a -inf log-probability with no weight adds nothing
      if (gRow) dx[r * C + c] = gRow[r] * (Math.exp(lp[r * C + c]) - t);
    }
    loss[r] = l;
  }
  return { loss, dx };
}
