/**
 * Float64 reference of the reduction kernel (`reduce.ts`): sum, mean or max over the middle axis
 * of x viewed as [outer, n, inner]. CPU only, for tests and benchmarks. Max propagates NaN, as
 * PyTorch's does.
 */
import type { ReduceOp } from "./reduce.ts";

/** out[o, i] = reduce_j x[o, j, i], [outer, inner]. */
export function reduceRef(
  op: ReduceOp,
  x: ArrayLike<number>,
  outer: number,
  n: number,
  inner: number,
): Float64Array {
  const out = new Float64Array(outer * inner);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let acc = op === "max" ? -Infinity : 0;
      for (let j = 0; j < n; j++) {
        const v = x[(o * n + j) * inner + i];
        acc = op === "max" ? (Number.isNaN(v) || v > acc ? v : acc) : acc + v;
        if (Number.isNaN(acc)) break;
      }
      out[o * inner + i] = op === "mean" ? acc / n : acc;
    }
  }
  return out;
}
