/**
 * Float64 reference of the softmax kernels (`softmax.ts`): softmax and log-softmax of each row of
 * [rows, n], and the vector-Jacobian product. CPU only, for tests and benchmarks.
 */

type Arr = ArrayLike<number>;

/** Softmax (or log-softmax) of each row of [rows, n]. */
export function softmaxRef(x: Arr, rows: number, n: number, log = false): Float64Array {
  const y = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) m = Math.max(m, x[r * n + j]);
    let s = 0;
    for (let j = 0; j < n; j++) s += Math.exp(x[r * n + j] - m);
    for (let j = 0; j < n; j++) {
      const v = x[r * n + j] - m;
      y[r * n + j] = log ? v - Math.log(s) : Math.exp(v) / s;
    }
  }
  return y;
}

/** d sum(g * softmax(x)) / dx (or log-softmax), rows of [rows, n]. */
export function softmaxGradRef(
  x: Arr,
  g: Arr,
  rows: number,
  n: number,
  log = false,
): Float64Array {
  const p = softmaxRef(x, rows, n, false);
  const dx = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let d = 0;
    for (let j = 0; j < n; j++) d += log ? g[r * n + j] : g[r * n + j] * p[r * n + j];
    for (let j = 0; j < n; j++) {
      const i = r * n + j;
      dx[i] = log ? g[i] - p[i] * d : p[i] * (g[i] - d);
    }
  }
  return dx;
}
