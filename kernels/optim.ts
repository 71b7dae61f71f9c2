/**
 * Optimiser kernels: one invocation updates one element of a parameter in place, reading its
 * gradient and per-parameter state buffers. Plus the two halves of gradient-norm clipping: sums of
 * squares into a partials buffer, then one workgroup that turns them into the norm and a scale,
 * and a kernel that multiplies a gradient by that scale. Nothing here reads back to the CPU.
 *
 * The update rules are PyTorch's (torch.optim.SGD / Adam / AdamW, non-foreach, amsgrad off).
 */
import { type Buf, dispatch, grid } from "./runtime.ts";
import { FLAT_WG, Params } from "./wgsl.ts";

const WG = 256;

const SGD_WGSL = /* wgsl */ `
struct P { n: u32, lr: f32, momentum: f32, weight_decay: f32, nesterov: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i >= p.n) { return; }
  // L2 penalty folded into the gradient.
  var g = grad[i] + p.weight_decay * param[i];
  // Momentum buffer (starts at zero, so the first step stores g as PyTorch does).
  let b = p.momentum * buf[i] + g;
  buf[i] = b;
  if (p.nesterov != 0u) { g = g + p.momentum * b; } else { g = b; }
  param[i] = param[i] - p.lr * g;
}`;

// SGD without momentum needs no state buffer.
const SGD_PLAIN_WGSL = /* wgsl */ `
struct P { n: u32, lr: f32, weight_decay: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i >= p.n) { return; }
  param[i] = param[i] - p.lr * (grad[i] + p.weight_decay * param[i]);
}`;

const ADAM_WGSL = /* wgsl */ `
struct P { n: u32, lr: f32, beta1: f32, beta2: f32, eps: f32, l2: f32, decay: f32,
  bias1: f32, sqrt_bias2: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i >= p.n) { return; }
  // AdamW shrinks the weight first (decay = 1 - lr * wd); Adam adds the L2 term to the gradient.
  let w = param[i] * p.decay;
  let g = grad[i] + p.l2 * w;
  let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
  let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  // PyTorch's order of operations: denom = sqrt(v) / sqrt(1 - beta2^t) + eps.
  let denom = sqrt(vi) / p.sqrt_bias2 + p.eps;
  param[i] = w - (p.lr / p.bias1) * mi / denom;
}`;

/** Hyper-parameters of one SGD step (see {@link sgdKernel}). */
export interface SgdStep {
  lr: number;
  momentum: number;
  weightDecay: number;
  nesterov: boolean;
}

/**
 * One SGD step over `n` elements, in place: `param` and the momentum buffer `buf` are updated
 * from `grad`. `buf` may be null only when `momentum` is 0.
 */
export function sgdKernel(param: Buf, grad: Buf, buf: Buf | null, n: number, h: SgdStep): void {
  if (n === 0) return;
  const groups = grid(Math.ceil(n / WG));
  if (h.momentum === 0) {
    const u = new Params().u32(n).f32(h.lr, h.weightDecay).build();
    dispatch("sgd", SGD_PLAIN_WGSL, [param, grad], u, groups);
    return;
  }
  if (!buf) throw new Error("sgdKernel: momentum needs a state buffer");
  const u = new Params().u32(n).f32(h.lr, h.momentum, h.weightDecay).u32(h.nesterov ? 1 : 0)
    .build();
  dispatch("sgd_momentum", SGD_WGSL, [param, grad, buf], u, groups);
}

/** Hyper-parameters of one Adam / AdamW step (see {@link adamKernel}). */
export interface AdamStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** AdamW (decay the weight directly) instead of Adam (L2 term in the gradient). */
  decoupled: boolean;
  /** The 1-based step number, for the bias corrections. */
  step: number;
}

/** One Adam or AdamW step over `n` elements, in place on `param` and the moments `m`, `v`. */
export function adamKernel(param: Buf, grad: Buf, m: Buf, v: Buf, n: number, h: AdamStep): void {
  if (n === 0) return;
  const bias1 = 1 - h.beta1 ** h.step;
  const sqrtBias2 = Math.sqrt(1 - h.beta2 ** h.step);
  const l2 = h.decoupled ? 0 : h.weightDecay;
  const decay = h.decoupled ? 1 - h.lr * h.weightDecay : 1;
  const u = new Params().u32(n).f32(h.lr, h.beta1, h.beta2, h.eps, l2, decay, bias1, sqrtBias2)
    .build();
  dispatch("adam", ADAM_WGSL, [param, grad, m, v], u, grid(Math.ceil(n / WG)));
}

// ---- gradient-norm clipping -------------------------------------------------------------------

/** Workgroups a sum of squares over `n` elements uses (each writes one partial). */
export function sumSquaresGroups(n: number): number {
  // Enough workgroups to keep a big GPU busy on large tensors, few partials for small ones.
  return Math.max(1, Math.min(64, Math.ceil(n / (WG * 16))));
}

const SUMSQ_WGSL = /* wgsl */ `
struct P { n: u32, groups: u32, offset: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  var acc = 0.0;
  for (var i = wg.x * ${WG}u + li; i < p.n; i += p.groups * ${WG}u) { acc += x[i] * x[i]; }
  part[li] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (li == 0u) { partials[p.offset + wg.x] = part[0]; }
}`;

/**
 * Partial sums of squares of `x` (n elements): writes {@link sumSquaresGroups}(n) values into
 * `partials` starting at `offset`.
 */
export function sumSquaresKernel(x: Buf, n: number, partials: Buf, offset: number): void {
  const groups = sumSquaresGroups(n);
  const u = new Params().u32(n, groups, offset).build();
  dispatch("sum_squares", SUMSQ_WGSL, [x, partials], u, [groups]);
}

const CLIP_SCALE_WGSL = /* wgsl */ `
struct P { count: u32, max_norm: f32, nan_bits: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> norm: array<f32>;
@group(0) @binding(3) var<storage, read_write> scale: array<f32>;
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32) {
  var acc = 0.0;
  for (var i = li; i < p.count; i += ${WG}u) { acc += partials[i]; }
  part[li] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (li == 0u) {
    let total = sqrt(part[0]);
    // Finite by its bits (a compiler may assume no NaN/Inf in comparisons). A non-finite norm is
    // reported as NaN and scales nothing: a 0 or NaN factor would wipe every gradient.
    let finite = (bitcast<u32>(total) & 0x7f800000u) != 0x7f800000u;
    norm[0] = select(bitcast<f32>(p.nan_bits), total, finite);
    // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6), never above 1.
    scale[0] = select(1.0, min(1.0, p.max_norm / (total + 1e-6)), finite);
  }
}`;

/**
 * Sum `count` partials into the total norm `norm[0] = sqrt(sum)` and the clipping factor
 * `scale[0] = min(1, maxNorm / (norm + 1e-6))`; a non-finite norm gives `norm[0] = NaN` and
 * `scale[0] = 1`.
 */
export function clipScaleKernel(
  partials: Buf,
  count: number,
  maxNorm: number,
  norm: Buf,
  scale: Buf,
): void {
  const u = new Params().u32(count).f32(maxNorm).u32(0x7fc00000 /* quiet NaN */).build();
  dispatch("clip_scale", CLIP_SCALE_WGSL, [partials, norm, scale], u, [1]);
}

const SCALE_BY_WGSL = /* wgsl */ `
struct P { n: u32, index: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i < p.n) { x[i] = x[i] * s[p.index]; }
}`;

/** x[i] *= s[index] for the first `n` elements of `x`, in place (a GPU-side scalar). */
export function scaleByKernel(x: Buf, n: number, s: Buf, index: number): void {
  if (n === 0) return;
  const u = new Params().u32(n, index).build();
  dispatch("scale_by", SCALE_BY_WGSL, [x, s], u, grid(Math.ceil(n / WG)));
}
