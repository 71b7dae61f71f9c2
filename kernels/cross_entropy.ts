/**
 * Cross-entropy from logits [rows, classes] and int32 labels [rows], with label smoothing eps:
 *   loss_r = (1 - eps) * (lse_r - x[r, label]) + eps * (lse_r - mean_c x[r, c])
 * where lse_r = log sum_c exp(x[r, c]) (the log-softmax is fused; nothing [rows, classes] is
 * written). The backward needs only lse_r, so it is one pass over each row (a row kernel without
 * reductions, see softmax.ts):
 *   dx[r, c] = g_r * (exp(x[r, c] - lse_r) - (1 - eps) * [c == label_r] - eps / classes).
 *
 * Labels out of [0, classes) cannot be checked on the CPU without a readback (they live on the
 * GPU), so the kernels never index with them: such a row's loss and gradient are NaN.
 */
import { type Buf, dispatch } from "./runtime.ts";
import { codeCache, Params } from "./wgsl.ts";
import {
  cacheUnits,
  eachUnit,
  lseReduceDecl,
  planKey,
  rowGrid,
  rowLogSumExp,
  rowMain,
  type RowOptions,
  type RowPlan,
  rowPlan,
  rowPrelude,
  treeReduce,
} from "./softmax.ts";

/** Bit pattern of a quiet NaN, passed as a uniform (a NaN constant is a WGSL compile error). */
const NAN_BITS = 0x7fc00000;

const cached = codeCache();

function forwardCode(plan: RowPlan): string {
  const pick = plan.vec ? "x[base + lab / 4u][lab % 4u]" : "x[base + lab]";
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32, classes: u32, ls_eps: f32, nan_bits: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;
${lseReduceDecl(plan)}
${treeReduce("rsum", "f32", plan, "a + b")}
${rowMain(plan)}
  ${cacheUnits(plan, ["x"])}
  var sx = 0.0;
  ${rowLogSumExp(plan, "sx += hsum(xv);")}
  let r = lse(vec2<f32>(lm, ls), li);
  let total = rsum(sx, li);
  if (lead) {
    let l = r.x + log(r.y);
    lse_out[row] = l;
    let li32 = labels[row];
    if (li32 < 0 || u32(li32) >= p.classes) {
      loss[row] = bitcast<f32>(p.nan_bits);
    } else {
      let lab = u32(li32);
      let xl = ${pick};
      // Without smoothing the mean term is skipped, not multiplied by 0: a -inf logit (a masked
      // class) would make it 0 * inf = NaN.
      let smoothed = select(0.0, p.ls_eps * (l - total / f32(p.classes)), p.ls_eps > 0.0);
      loss[row] = (1.0 - p.ls_eps) * (l - xl) + smoothed;
    }
  }
}`;
}

function backwardCode(plan: RowPlan): string {
  // Column index of each element of unit j, compared with the label all at once.
  const cols = plan.vec ? "vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u)" : "j";
  const lab = plan.vec ? "vec4<u32>(lab)" : "lab";
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32, classes: u32, ls_eps: f32, gscale: f32, gstride: u32,
  nan_bits: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<V>;
${rowMain(plan)}
  let li32 = labels[row];
  if (li32 < 0 || u32(li32) >= p.classes) {
    ${eachUnit(plan, [], "dx[base + j] = V(bitcast<f32>(p.nan_bits));")}
    return;
  }
  let lab = u32(li32);
  let l = lse[row];
  let gr = g[row * p.gstride] * p.gscale;
  let off = p.ls_eps / f32(p.classes);
  ${
    eachUnit(
      plan,
      ["x"],
      `dx[base + j] = V(gr) * (exp(xv - V(l)) - select(V(off), V(1.0 - p.ls_eps + off), ${cols} == ${lab}));`,
    )
  }
}`;
}

/**
 * Per-row losses `loss` [rows] and log-sum-exps `lse` [rows] of `logits` [rows, classes] against
 * int32 `labels` [rows] with label smoothing `smooth` in [0, 1]. Out-of-range labels give NaN.
 * `opts` overrides the launch shape (tests).
 */
export function crossEntropyForward(
  logits: Buf,
  labels: Buf,
  loss: Buf,
  lse: Buf,
  rows: number,
  classes: number,
  smooth: number,
  opts: RowOptions = {},
): void {
  if (rows === 0 || classes === 0) return;
  const plan = rowPlan(classes, rows, opts);
  const name = `cross_entropy_${planKey(plan)}`;
  const code = cached(name, () => forwardCode(plan));
  const params = new Params().u32(rows, plan.units, classes).f32(smooth).u32(NAN_BITS).build();
  dispatch(name, code, [logits, labels, loss, lse], params, rowGrid(plan, rows));
}

/**
 * d loss / d logits into `dx` [rows, classes]. The incoming gradient of row r is
 * `g[r * gStride] * gScale`: gStride 1 for per-row losses, 0 for a reduced scalar (gScale 1/rows
 * for a mean).
 */
export function crossEntropyBackward(
  logits: Buf,
  labels: Buf,
  lse: Buf,
  g: Buf,
  dx: Buf,
  rows: number,
  classes: number,
  smooth: number,
  gScale: number,
  gStride: 0 | 1,
  opts: RowOptions = {},
): void {
  if (rows === 0 || classes === 0) return;
  // One pass over the row: nothing to keep in registers.
  const plan = rowPlan(classes, rows, { ...opts, maxFloats: 0 });
  const name = `cross_entropy_grad_${planKey(plan)}`;
  const code = cached(name, () => backwardCode(plan));
  const params = new Params().u32(rows, plan.units, classes).f32(smooth, gScale)
    .u32(gStride, NAN_BITS).build();
  dispatch(name, code, [logits, labels, lse, g, dx], params, rowGrid(plan, rows));
}
