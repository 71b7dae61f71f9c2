/**
 * Float64 reference of the layer-norm kernels (`layernorm.ts`): forward with the biased variance
 * and the gradients for an upstream `g`. CPU only, for tests and benchmarks.
 */

type Arr = ArrayLike<number>;

/** Layer norm of rows of [rows, n] (biased variance), with its gradients for upstream `g`. */
export function layerNormRef(
  x: Arr,
  w: Arr | null,
  b: Arr | null,
  rows: number,
  n: number,
  eps: number,
  g?: Arr,
): { y: Float64Array; dx: Float64Array; dw: Float64Array; db: Float64Array } {
  const y = new Float64Array(rows * n);
  const dx = new Float64Array(rows * n), dw = new Float64Array(n), db = new Float64Array(n);
  for (let r = 0; r < rows; r++) {
    let mu = 0;
    for (let j = 0; j < n; j++) mu += x[r * n + j];
    mu /= n;
    let v = 0;
    for (let j = 0; j < n; j++) v += (x[r * n + j] - mu) ** 2;
    v /= n;
    const rs = 1 / Math.sqrt(v + eps);
    const xh = new Float64Array(n);
    for (let j = 0; j < n; j++) {
      xh[j] = (x[r * n + j] - mu) * rs;
      y[r * n + j] = xh[j] * (w ? w[j] : 1) + (b ? b[j] : 0);
    }
    if (!g) continue;
    let a = 0, c = 0;
    for (let j = 0; j < n; j++) {
      const gw = g[r * n + j] * (w ? w[j] : 1);
      a += gw;
      c += gw * xh[j];
      dw[j] += g[r * n + j] * xh[j];
      db[j] += g[r * n + j];
    }
    for (let j = 0; j < n; j++) {
      const gw = g[r * n + j] * (w ? w[j] : 1);
      dx[r * n + j] = rs * (gw - a / n - xh[j] * c / n);
    }
  }
  return { y, dx, dw, db };
}
