/**
 * Reductions over one axis of a contiguous array viewed as [outer, n, inner]: sum, mean, max.
 * With inner = 1 (the last axis) one workgroup reduces each row with a tree in workgroup
 * memory; otherwise each invocation walks one (outer, inner) column. NaN propagates: sums through
 * IEEE arithmetic, max through `max_nan` (WGSL's `max` may drop a NaN). Max starts from the
 * row's first element, not from a very negative constant, so a row of -Infinity gives -Infinity
 * (as in PyTorch); max over an empty axis is refused.
 */
import { type Buf, dispatch, grid } from "./runtime.ts";
import { codeCache, FLAT_WG, NAN_WGSL, Params } from "./wgsl.ts";

/** Which reduction. `mean` is `sum / n`. */
export type ReduceOp = "sum" | "mean" | "max";

const WG = 256;

/** The starting value: 0 for sums, the first element (`x[base]`) for max. */
function init(op: ReduceOp): string {
  return op === "max" ? "x[base]" : "0.0";
}
function combine(op: ReduceOp, a: string, b: string): string {
  return op === "max" ? `max_nan(${a}, ${b})` : `${a} + ${b}`;
}
const cached = codeCache();

function finish(op: ReduceOp, v: string): string {
  return op === "mean" ? `${v} / f32(p.n)` : v;
}

function rowCode(op: ReduceOp): string {
  return /* wgsl */ `
struct P { outer: u32, n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${op === "max" ? NAN_WGSL : ""}
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let row = ${FLAT_WG};
  if (row >= p.outer) { return; }
  let base = row * p.n;
  var acc = ${init(op)};
  for (var j = li; j < p.n; j += ${WG}u) { acc = ${combine(op, "acc", "x[base + j]")}; }
  part[li] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { part[li] = ${combine(op, "part[li]", "part[li + s]")}; }
    workgroupBarrier();
  }
  if (li == 0u) { out[row] = ${finish(op, "part[0]")}; }
}`;
}

function columnCode(op: ReduceOp): string {
  return /* wgsl */ `
struct P { outer: u32, n: u32, inner: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${op === "max" ? NAN_WGSL : ""}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let o = ${FLAT_WG} * ${WG}u + li;
  if (o >= p.outer * p.inner) { return; }
  let base = (o / p.inner) * p.n * p.inner + o % p.inner;
  var acc = ${init(op)};
  for (var j = 0u; j < p.n; j++) { acc = ${combine(op, "acc", "x[base + j * p.inner]")}; }
  out[o] = ${finish(op, "acc")};
}`;
}

/**
 * out[o, i] = reduce_j x[o, j, i] for x viewed as [outer, n, inner] (contiguous).
 * `out` holds outer * inner values.
 */
export function reduceKernel(
  op: ReduceOp,
  x: Buf,
  out: Buf,
  outer: number,
  n: number,
  inner: number,
): void {
  if (outer * inner === 0) return;
  if (op === "max" && n === 0) throw new RangeError("max: reducing an empty axis");
  if (inner === 1) {
    const p = new Params().u32(outer, n).build();
    const name = `reduce_${op}_rows`;
    dispatch(name, cached(name, () => rowCode(op)), [x, out], p, grid(outer));
  } else {
    const p = new Params().u32(outer, n, inner).build();
    const name = `reduce_${op}_cols`;
    const groups = grid(Math.ceil(outer * inner / WG));
    dispatch(name, cached(name, () => columnCode(op)), [x, out], p, groups);
  }
}
