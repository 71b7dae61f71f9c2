/**
 * Float64 reference of the embedding kernels (`embedding.ts`): a row gather and the scatter-add
 * of its backward. CPU only, for tests and benchmarks. Ids must lie in [0, V) (the kernel refuses
 * others; see `embedding.ts`).
 */

function checkIds(ids: ArrayLike<number>, V: number): void {
  for (let n = 0; n < ids.length; n++) {
    if (!(ids[n] >= 0 && ids[n] < V)) throw new RangeError(`embeddingRef: id ${ids[n]} of ${V}`);
  }
}

/** out[n, :] = w[ids[n], :] for a table w [V, D]. */
export function embeddingRef(
  w: ArrayLike<number>,
  V: number,
  D: number,
  ids: ArrayLike<number>,
): Float64Array {
  checkIds(ids, V);
  const out = new Float64Array(ids.length * D);
  for (let n = 0; n < ids.length; n++) {
    for (let d = 0; d < D; d++) out[n * D + d] = w[ids[n] * D + d];
  }
  return out;
}

/** dW [V, D]: the sum of the rows of g [n, D] whose position holds each id. */
export function embeddingGradRef(
  g: ArrayLike<number>,
  V: number,
  D: number,
  ids: ArrayLike<number>,
): Float64Array {
  checkIds(ids, V);
  const dw = new Float64Array(V * D);
  for (let n = 0; n < ids.length; n++) {
    for (let d = 0; d < D; d++) dw[ids[n] * D + d] += g[n * D + d];
  }
  return dw;
}
