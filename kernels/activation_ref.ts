/**
 * Float64 references for the activations (exact GELU through erfc, QuickGELU, and the others the
 * matmul epilogue and the elementwise ops apply): the definitions the WGSL in `activation.ts` is
 * checked against. CPU only, for tests and benchmarks; not part of the library surface.
 */

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
function phiRef(x: number): number {
  return 0.5 * erfcRef(-x / Math.SQRT2);
}

/** Exact GELU x * Phi(x) and its derivative. */
export function geluRef(x: number): { y: number; dy: number } {
  const P = phiRef(x);
  return { y: x * P, dy: P + x * Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI) };
}

/** QuickGELU x * sigmoid(1.702 x) (OpenAI's CLIP) and its derivative. */
export function quickGeluRef(x: number): { y: number; dy: number } {
  const s = 1 / (1 + Math.exp(-1.702 * x));
  return { y: x * s, dy: s * (1 + 1.702 * x * (1 - s)) };
}

/** The activations with a float64 reference, by the names the matmul epilogue uses. */
export type ActivationName =
  | "none"
  | "relu"
  | "leaky_relu"
  | "gelu"
  | "gelu_tanh"
  | "quick_gelu"
  | "sigmoid"
  | "tanh";

/** Activation `name` at `v` (leaky_relu with negative slope `slope`). */
export function activationRef(name: ActivationName, v: number, slope = 0.01): number {
  switch (name) {
    case "none":
      return v;
    case "relu":
      return Math.max(v, 0);
    case "leaky_relu":
      return v >= 0 ? v : slope * v;
    case "gelu":
      return geluRef(v).y;
    case "gelu_tanh":
      return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
    case "quick_gelu":
      return quickGeluRef(v).y;
    case "sigmoid":
      return 1 / (1 + Math.exp(-v));
    case "tanh":
      return Math.tanh(v);
  }
}
