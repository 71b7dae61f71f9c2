/**
 * Seeded randomness for datasets and loaders: a hash of (seed, stream, index) so every epoch's
 * order and every sample's augmentation is reproducible on its own (no shared generator state
 * between workers), a Fisher-Yates permutation, and a stratified split. The generator is
 * nn/rng.ts's, started from the hashed seed as is.
 */
import { Rng } from "../../nn/rng.ts";

/** A 32-bit integer hash (Chris Wellons' lowbias32): good avalanche, cheap. */
export function hash32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** Combines integers into one 32-bit seed, order-sensitive (seedOf(1, 2) != seedOf(2, 1)). */
export function seedOf(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const p of parts) h = hash32((h ^ hash32((p | 0) >>> 0)) + 0x632be5ab);
  return h;
}

/** A permutation of 0..n-1 from `seed` (Fisher-Yates). */
export function permutation(n: number, seed: number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  const rng = Rng.fromState(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

/** Sizes of the parts of a split, as fractions of each class. */
export interface SplitFractions {
  /** Fraction held out for validation (0 <= val < 1). */
  val?: number;
  /** Fraction held out for testing (0 <= test < 1, val + test < 1). */
  test?: number;
}

/** Indices (into the labels array) of each part of a stratified split. */
export interface StratifiedSplit {
  train: number[];
  val: number[];
  test: number[];
}

/**
 * Splits samples per class: within every class (in label order) the samples are shuffled with a
 * generator seeded from (seed, class), then `round(n * test)` go to test, `round(n * val)` to
 * val and the rest to train, so each part keeps the class proportions (100 per class at 0.33
 * test gives 67/33). Each part lists indices in ascending order. Deterministic for a seed and
 * independent of the order of other classes. `labels[i]` must be a non-negative integer.
 * @throws RangeError for fractions outside [0, 1) or summing to 1 or more.
 */
export function stratifiedSplit(
  labels: ArrayLike<number>,
  fractions: SplitFractions,
  seed: number,
): StratifiedSplit {
  const val = fractions.val ?? 0;
  const test = fractions.test ?? 0;
  if (!(val >= 0 && val < 1 && test >= 0 && test < 1 && val + test < 1)) {
    throw new RangeError(
      `split fractions must be in [0, 1) and sum below 1: val ${val}, test ${test}`,
    );
  }
  const byClass = new Map<number, number[]>();
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    let list = byClass.get(l);
    if (!list) byClass.set(l, list = []);
    list.push(i);
  }
  const out: StratifiedSplit = { train: [], val: [], test: [] };
  for (const cls of [...byClass.keys()].sort((a, b) => a - b)) {
    const idx = byClass.get(cls)!;
    const perm = permutation(idx.length, seedOf(seed, cls));
    const nTest = Math.round(idx.length * test);
    const nVal = Math.round(idx.length * val);
    for (let k = 0; k < idx.length; k++) {
      const i = idx[perm[k]];
      if (k < nTest) out.test.push(i);
      else if (k < nTest + nVal) out.val.push(i);
      else out.train.push(i);
    }
  }
  for (const part of [out.train, out.val, out.test]) part.sort((a, b) => a - b);
  return out;
}
