/**
 * Float64 reference of the cosine top-k kernels (`cosine_topk.ts`, driven by `nn/retrieval.ts`):
 * the cosine similarity of queries with keys, rows normalised like torch.nn.functional.normalize.
 * CPU only, for tests and benchmarks (they rank the scores themselves).
 */

/** ||row r of X [., d]|| clamped to 1e-12 (1 without normalisation). */
function norm(X: ArrayLike<number>, r: number, d: number, normalize: boolean): number {
  if (!normalize) return 1;
  let s = 0;
  for (let i = 0; i < d; i++) s += X[r * d + i] ** 2;
  return Math.max(Math.sqrt(s), 1e-12);
}

/**
 * Float64 cosine similarities of query `i` of Q [N, d] with every key of K [M, d] (plain dot
 * products when `normalize` is false).
 */
export function cosineRowRef(
  Q: ArrayLike<number>,
  i: number,
  K: ArrayLike<number>,
  d: number,
  normalize = true,
  keyNorms?: ArrayLike<number>,
): Float64Array {
  const M = K.length / d;
  const qn = norm(Q, i, d, normalize);
  const row = new Float64Array(M);
  for (let j = 0; j < M; j++) {
    let s = 0;
    for (let t = 0; t < d; t++) s += Q[i * d + t] * K[j * d + t];
    row[j] = s / (qn * (keyNorms ? keyNorms[j] : norm(K, j, d, normalize)));
  }
  return row;
}

/** Every query's row of {@link cosineRowRef}: [N][M]. */
export function cosineRef(
  Q: ArrayLike<number>,
  K: ArrayLike<number>,
  d: number,
  normalize = true,
): Float64Array[] {
  const N = Q.length / d, M = K.length / d;
  const kn = Array.from({ length: M }, (_, j) => norm(K, j, d, normalize));
  return Array.from({ length: N }, (_, i) => cosineRowRef(Q, i, K, d, normalize, kn));
}
