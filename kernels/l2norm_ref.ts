/**
 * Float64 reference of the L2-normalisation kernels (`l2norm.ts`): x / max(||x||, eps) per row
 * and its gradient. CPU only, for tests and benchmarks.
 */

type Arr = ArrayLike<number>;

/** x / max(||x||, eps) per row and d sum(g * y) / dx. */
export function l2NormRef(
  x: Arr,
  rows: number,
  n: number,
  eps: number,
  g?: Arr,
): { y: Float64Array; dx: Float64Array } {
  const y = new Float64Array(rows * n), dx = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let q = 0;
    for (let j = 0; j < n; j++) q += x[r * n + j] ** 2;
    const nrm = Math.sqrt(q), den = Math.max(nrm, eps);
    for (let j = 0; j < n; j++) y[r * n + j] = x[r * n + j] / den;
    if (!g) continue;
    let d = 0;
    for (let j = 0; j < n; j++) d += g[r * n + j] * y[r * n + j];
    for (let j = 0; j < n; j++) {
      const i = r * n + j;
      dx[i] = nrm > eps ? (g[i] - y[i] * d) / nrm : g[i] / eps;
    }
  }
  return { y, dx };
}
