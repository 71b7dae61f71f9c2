/**
 * The CPU mirror of the dropout kernel (`dropout.ts`): the same seeded hash mask, so a test can
 * predict every kept element. CPU only, for tests and benchmarks.
 */
import { checkDropoutArgs, dropoutThreshold, pcgHash } from "./dropout.ts";

/** True when element `i` is kept for (`seed`, `p`). */
export function dropoutKeep(i: number, seed: number, p: number): boolean {
  checkDropoutArgs(p, seed);
  return pcgHash(pcgHash(i) ^ pcgHash(seed)) >= dropoutThreshold(p);
}

/** y[i] = x[i] / (1 - p) where kept, 0 where dropped, in float64. */
export function dropoutRef(x: ArrayLike<number>, seed: number, p: number): Float64Array {
  return Float64Array.from(x, (v, i) => (dropoutKeep(i, seed, p) ? v / (1 - p) : 0));
}
