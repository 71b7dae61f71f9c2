/**
 * L2 normalisation of each row of a contiguous [rows, n] f32 array, like
 * torch.nn.functional.normalize: y = x / max(||x||, eps). One workgroup per row (see the row
 * scaffolding in softmax.ts). The forward also writes the norms [rows] for the backward:
 *   ||x|| > eps:  dx = (g - y * (g . y)) / ||x||
 *   otherwise:    dx = g / eps            (y = x / eps is linear in x there)
 */
import { type Buf, dispatch } from "./runtime.ts";
import { codeCache, Params } from "./wgsl.ts";
import {
  cacheUnits,
  eachUnit,
  planKey,
  rowGrid,
  rowMain,
  type RowOptions,
  type RowPlan,
  rowPlan,
  rowPrelude,
  treeReduce,
} from "./softmax.ts";

const cached = codeCache();

function forwardCode(plan: RowPlan): string {
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;
@group(0) @binding(3) var<storage, read_write> norm: array<f32>;
${treeReduce("rsum", "f32", plan, "a + b")}
${rowMain(plan)}
  ${cacheUnits(plan, ["x"])}
  var q = 0.0;
  ${eachUnit(plan, ["x"], "q += hsum(xv * xv);")}
  let nrm = sqrt(rsum(q, li));
  let inv = 1.0 / max(nrm, p.eps);
  ${eachUnit(plan, ["x"], "y[base + j] = xv * V(inv);")}
  if (lead) { norm[row] = nrm; }
}`;
}

function backwardCode(plan: RowPlan): string {
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read> g: array<V>;
@group(0) @binding(3) var<storage, read> norm: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<V>;
${treeReduce("rsum", "f32", plan, "a + b")}
${rowMain(plan)}
  ${cacheUnits(plan, ["y", "g"])}
  let nrm = norm[row];
  var d = 0.0;
  ${eachUnit(plan, ["y", "g"], "d += hsum(gv * yv);")}
  d = rsum(d, li);
  // Past the clamp the map is x / eps: no projection.
  let proj = select(0.0, d, nrm > p.eps);
  let inv = 1.0 / max(nrm, p.eps);
  ${eachUnit(plan, ["y", "g"], "dx[base + j] = (gv - yv * V(proj)) * V(inv);")}
}`;
}

/**
 * y = x / max(||x||, eps) for each row of [rows, n] `x`; `norm` [rows] receives ||x||.
 * `opts` overrides the launch shape (tests).
 */
export function l2NormForward(
  x: Buf,
  y: Buf,
  norm: Buf,
  rows: number,
  n: number,
  eps: number,
  opts: RowOptions = {},
): void {
  if (rows === 0 || n === 0) return;
  const plan = rowPlan(n, rows, opts);
  const name = `l2norm_${planKey(plan)}`;
  const code = cached(name, () => forwardCode(plan));
  const params = new Params().u32(rows, plan.units).f32(eps).build();
  dispatch(name, code, [x, y, norm], params, rowGrid(plan, rows));
}

/** dx of {@link l2NormForward} from its output `y`, the gradient `g` and the saved `norm`. */
export function l2NormBackward(
  y: Buf,
  g: Buf,
  norm: Buf,
  dx: Buf,
  rows: number,
  n: number,
  eps: number,
  opts: RowOptions = {},
): void {
  if (rows === 0 || n === 0) return;
  const plan = rowPlan(n, rows, opts);
  const name = `l2norm_grad_${planKey(plan)}`;
  const code = cached(name, () => backwardCode(plan));
  const params = new Params().u32(rows, plan.units).f32(eps).build();
  dispatch(name, code, [y, g, norm, dx], params, rowGrid(plan, rows));
}
