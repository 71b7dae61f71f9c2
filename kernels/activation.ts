/**
 * The activations' WGSL, shared by the elementwise ops (`nn/ops/nn.ts`, through the map kernel)
 * and the matmul epilogue (`matmul.ts`): one GELU, one QuickGELU. `activation_ref.ts` holds their
 * float64 references.
 *
 * GELU is exact (erf) GELU, x * Phi(x), PyTorch's default. WGSL has no erf: Phi is evaluated
 * through erfc(|x| / sqrt 2) from Numerical Recipes' `erfcc` (a Chebyshev fit with fractional
 * error < 1.2e-7 everywhere), so the lower tail keeps its relative accuracy where 1 + erf(x /
 * sqrt 2) would cancel. Measured against float64 on a 0.01 grid over [-10, 10] (llvmpipe, GL and
 * Vulkan): max absolute error 3.7e-7 (under one f32 ulp of |x| there), max relative error 5.7e-6
 * for x < -3 (tests/nn_ops_act_test.ts).
 */

/** Activations the matmul epilogue applies (same formulas as the elementwise ops). */
export type MatmulActivation =
  | "none"
  | "relu"
  | "leaky_relu"
  | "gelu"
  | "gelu_tanh"
  | "quick_gelu"
  | "sigmoid"
  | "tanh";

/** Every {@link MatmulActivation}, for validation and tests. */
export const MATMUL_ACTIVATIONS: readonly MatmulActivation[] = [
  "none",
  "relu",
  "leaky_relu",
  "gelu",
  "gelu_tanh",
  "quick_gelu",
  "sigmoid",
  "tanh",
];

/** erfcc's Chebyshev coefficients (Numerical Recipes), innermost last. */
const ERFC_COEFFS = [
  -1.26551223,
  1.00002368,
  0.37409196,
  0.09678418,
  -0.18628806,
  0.27886807,
  -1.13520398,
  1.48851587,
  -0.82215223,
  0.17087277,
];

function horner(t: string): string {
  let poly = ERFC_COEFFS[ERFC_COEFFS.length - 1].toString();
  for (let i = ERFC_COEFFS.length - 2; i >= 0; i--) poly = `(${ERFC_COEFFS[i]} + ${t} * ${poly})`;
  return poly;
}

/**
 * WGSL functions `phi(x)` (standard normal CDF), `gelu(x)`, `gelu_grad(x)` (d gelu / dx),
 * `quick_gelu(x)` and `quick_gelu_grad(x)`. Prepend to any kernel that uses them.
 */
export const ACTIVATION_WGSL = /* wgsl */ `
fn phi(x: f32) -> f32 {
  let t = 1.0 / (1.0 + 0.35355339059327373 * abs(x)); // 1 / (1 + z / 2), z = |x| / sqrt 2
  let erfc = t * exp(-0.5 * x * x + ${horner("t")}); // erfc(|x| / sqrt 2)
  return select(1.0 - 0.5 * erfc, 0.5 * erfc, x < 0.0);
}
fn gelu(x: f32) -> f32 { return x * phi(x); }
fn gelu_grad(x: f32) -> f32 { return phi(x) + x * 0.3989422804014327 * exp(-0.5 * x * x); }
// x / (1 + exp(-1.702 x)): exp overflows to +inf for x << 0 and gives -0, not NaN.
fn quick_gelu(x: f32) -> f32 { return x / (1.0 + exp(-1.702 * x)); }
fn quick_gelu_grad(x: f32) -> f32 {
  let s = 1.0 / (1.0 + exp(-1.702 * x));
  return s * (1.0 + 1.702 * x * (1.0 - s));
}`;

/**
 * WGSL expression applying `act` to the f32 expression `v` (evaluated more than once: pass a
 * name); `slope` is the WGSL expression of leaky_relu's negative slope. Needs
 * {@link ACTIVATION_WGSL} in scope for gelu and quick_gelu.
 */
export function activationExpr(act: MatmulActivation, v: string, slope = "0.01"): string {
  switch (act) {
    case "none":
      return v;
    case "relu":
      return `max(${v}, 0.0)`;
    case "leaky_relu":
      return `select(${v} * ${slope}, ${v}, ${v} >= 0.0)`;
    case "gelu":
      return `gelu(${v})`;
    case "gelu_tanh":
      return `0.5 * ${v} * (1.0 + tanh(0.7978845608028654 * (${v} + 0.044715 * ${v} * ${v} * ${v})))`;
    case "quick_gelu":
      return `quick_gelu(${v})`;
    case "sigmoid":
      return `1.0 / (1.0 + exp(-${v}))`;
    case "tanh":
      return `tanh(${v})`;
  }
}

/**
 * WGSL expression of d act / dv at pre-activation `v`, for the activations a fused Linear can
 * differentiate by recomputing from its pre-activation (`nn/ops/matmul.ts`).
 */
export function activationGradExpr(act: "relu" | "gelu" | "quick_gelu", v: string): string {
  switch (act) {
    case "relu":
      return `select(0.0, 1.0, ${v} > 0.0)`;
    case "gelu":
      return `gelu_grad(${v})`;
    case "quick_gelu":
      return `quick_gelu_grad(${v})`;
  }
}
