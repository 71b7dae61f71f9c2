/**
 * Float64 CPU references for the nn ops (softmax, layer norm, cross-entropy, L2 normalisation,
 * GELU): plain loops over rows of the last axis, forward and analytic backward. They define what
 * the GPU kernels are checked against.
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
      l -= t * lp[r * C + c];
      if (gRow) dx[r * C + c] = gRow[r] * (Math.exp(lp[r * C + c]) - t);
    }
    loss[r] = l;
  }
  return { loss, dx };
}

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

/**
 * erfc in float64: the Maclaurin series of erf below 3 (absolute error ~1e-15, so relative error
 * of erfc <= 1e-10 there) and a continued fraction (Lentz) from 3 on (relative error ~1e-15).
 */
export function erfcRef(z: number): number {
  if (z < 0) return 2 - erfcRef(-z);
  if (z < 3) {
    let term = z, sum = z;
    for (let k = 1; k < 200; k++) {
      term *= -z * z / k;
      const add = term / (2 * k + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return 1 - (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + ...)))))
  const tiny = 1e-300;
  let f = z, C = z, D = 0;
  for (let k = 1; k < 500; k++) {
    const a = k / 2;
    D = z + a * D;
    D = Math.abs(D) < tiny ? tiny : D;
    C = z + a / C;
    C = Math.abs(C) < tiny ? tiny : C;
    D = 1 / D;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-z * z) / Math.sqrt(Math.PI) / f;
}

/** Standard normal CDF. */
export function phiRef(x: number): number {
  return 0.5 * erfcRef(-x / Math.SQRT2);
}

/** Exact GELU x * Phi(x) and its derivative. */
export function geluRef(x: number): { y: number; dy: number } {
  const P = phiRef(x);
  return { y: x * P, dy: P + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI) };
}

/**
 * Launch shapes every row kernel is tested under, whatever this adapter would pick: lane mode
 * (one invocation per row) and groups of 8 / 32 / 256 invocations per row, with the row cached
 * in registers or streamed (maxFloats 0).
 */
export const ROW_LAUNCHES: { threads: number; maxFloats?: number }[] = [
  { threads: 1 },
  { threads: 1, maxFloats: 0 },
  { threads: 8 },
  { threads: 32, maxFloats: 0 },
  { threads: 256 },
];

/** [rows, n] for {@link ROW_LAUNCHES}: odd, vec4 and scalar rows, partial row groups. */
export const ROW_CASES: [number, number][] = [[3, 33], [20, 7], [70, 129], [5, 1000]];
