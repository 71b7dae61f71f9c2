/**
 * Layer normalisation over the last axis of a contiguous [rows, n] f32 array:
 * y = (x - mean) * rstd * w + b with rstd = 1 / sqrt(var + eps) (biased variance, like PyTorch).
 *
 * - forward: one workgroup per row (see the row scaffolding in softmax.ts); mean first, then the
 *   variance as the mean of squared deviations (not E[x^2] - E[x]^2, which cancels badly); writes
 *   y and per-row stats [rows, 2] = (mean, rstd) for the backward.
 * - backward dx: one workgroup per row, both row sums in one vec2 tree.
 * - backward dw/db: a column reduction in two stages: workgroups of 64 columns x 4 row lanes
 *   (GPU; 64 x 1 on CPU adapters) sum chunks of rows into partials [chunks, n] (vec2: g * xhat
 *   and g), then workgroups of the same shape add the chunks. Deterministic (no atomics).
 */
import { type Buf, dispatch, pool } from "./runtime.ts";
import { codeCache, Params } from "./wgsl.ts";
import { gpu } from "./device.ts";
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

function forwardCode(plan: RowPlan, hasW: boolean, hasB: boolean, residual = false): string {
  let bind = residual ? 3 : 2;
  const wDecl = hasW ? `@group(0) @binding(${bind++}) var<storage, read> w: array<V>;` : "";
  const bDecl = hasB ? `@group(0) @binding(${bind++}) var<storage, read> b: array<V>;` : "";
  const affine = `(xv - V(mu)) * V(r)${hasW ? " * w[j]" : ""}${hasB ? " + b[j]" : ""}`;
  const yBind = bind++, sBind = bind++;
  // With a residual, x + res is normalised and also stored (into h): cached plans add in
  // registers, streamed ones write h in the first pass and read it back in the others.
  let load = cacheUnits(plan, ["x"]);
  let first = eachUnit(plan, ["x"], "s += hsum(xv);");
  let rest = (body: string) => eachUnit(plan, ["x"], body);
  if (residual) {
    if (plan.vpt > 0) {
      const add: string[] = [];
      for (let k = 0; k < plan.vpt; k++) {
        const j = `first + ${k * plan.tpr}u`;
        add.push(`x${k} += res${k}; if (${j} < p.units) { h[base + ${j}] = x${k}; }`);
      }
      load = `${cacheUnits(plan, ["x", "res"])}\n  ${add.join("\n  ")}`;
    } else {
      load = "";
      first = eachUnit(plan, ["x", "res"], "let t = xv + resv; h[base + j] = t; s += hsum(t);");
      rest = (body: string) => eachUnit(plan, ["h"], `let xv = hv; ${body}`);
    }
  }
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32, n: f32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<V>;
${residual ? "@group(0) @binding(2) var<storage, read> res: array<V>;" : ""}
${wDecl}
${bDecl}
@group(0) @binding(${yBind}) var<storage, read_write> y: array<V>;
@group(0) @binding(${sBind}) var<storage, read_write> stats: array<vec2<f32>>;
${residual ? `@group(0) @binding(${sBind + 1}) var<storage, read_write> h: array<V>;` : ""}
${treeReduce("rsum", "f32", plan, "a + b")}
${rowMain(plan)}
  ${load}
  var s = 0.0;
  ${first}
  let mu = rsum(s, li) / p.n;
  var q = 0.0;
  ${rest("let dv = xv - V(mu); q += hsum(dv * dv);")}
  let r = inverseSqrt(rsum(q, li) / p.n + p.eps);
  ${rest(`y[base + j] = ${affine};`)}
  if (lead) { stats[row] = vec2<f32>(mu, r); }
}`;
}

function backwardInputCode(plan: RowPlan, hasW: boolean): string {
  // With xhat = (x - mean) * rstd and gw = g * w:
  // dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))
  const wDecl = hasW ? `@group(0) @binding(2) var<storage, read> w: array<V>;` : "";
  const o = hasW ? 3 : 2;
  const gw = hasW ? "gv * w[j]" : "gv";
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32, n: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<V>;
${wDecl}
@group(0) @binding(${o}) var<storage, read> g: array<V>;
@group(0) @binding(${o + 1}) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(${o + 2}) var<storage, read_write> dx: array<V>;
${treeReduce("rsum2", "vec2<f32>", plan, "a + b")}
${rowMain(plan)}
  let st = stats[row];
  ${cacheUnits(plan, ["x", "g"])}
  var acc = vec2<f32>(0.0, 0.0);
  ${
    eachUnit(
      plan,
      ["x", "g"],
      `let gw = ${gw}; acc += vec2<f32>(hsum(gw), hsum(gw * (xv - V(st.x)) * V(st.y)));`,
    )
  }
  let m = rsum2(acc, li) / p.n;
  ${
    eachUnit(
      plan,
      ["x", "g"],
      `let xh = (xv - V(st.x)) * V(st.y); dx[base + j] = V(st.y) * ((${gw}) - V(m.x) - xh * V(m.y));`,
    )
  }
}`;
}

/**
 * Stage 1 of dw / db: workgroups of `cols` columns x `lanes` row lanes; lane l of column c sums
 * rows r0 + l, r0 + l + lanes, ... of its chunk, then the lanes are added in workgroup memory.
 * GPUs use 64 x 4 (coalesced rows, 4 lanes in flight); CPU adapters 64 x 1 (no barrier: lanes
 * are SIMD lanes reading adjacent columns).
 */
function partialCode(cols: number, lanes: number): string {
  const combine = lanes === 1 ? "let t = acc;" : `red[li] = acc;
  workgroupBarrier();
  var t = red[li];
  for (var l = 1u; l < ${lanes}u; l++) { t += red[li + l * ${cols}u]; }`;
  return /* wgsl */ `
struct P { rows: u32, n: u32, rpc: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> part: array<vec2<f32>>;
${lanes === 1 ? "" : `var<workgroup> red: array<vec2<f32>, ${cols * lanes}>;`}
@compute @workgroup_size(${cols * lanes})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let c = wg.x * ${cols}u + li % ${cols}u;
  let lane = li / ${cols}u;
  let r0 = wg.y * p.rpc;
  let r1 = min(r0 + p.rpc, p.rows);
  var acc = vec2<f32>(0.0, 0.0);
  if (c < p.n) {
    for (var r = r0 + lane; r < r1; r += ${lanes}u) {
      let st = stats[r];
      let gv = g[r * p.n + c];
      acc += vec2<f32>(gv * (x[r * p.n + c] - st.x) * st.y, gv);
    }
  }
  ${combine}
  if (lane == 0u && c < p.n) { part[wg.y * p.n + c] = t; }
}`;
}

/**
 * Stage 2: dw / db from the partials [chunks, n]. Same shape as stage 1: `cols` columns x `lanes`
 * lanes per workgroup, lane l adding chunks l, l + lanes, ... (one invocation per column would
 * serialise over the chunks).
 */
function finalCode(hasW: boolean, hasB: boolean, cols: number, lanes: number): string {
  const outs: string[] = [];
  const writes: string[] = [];
  if (hasW) {
    outs.push(`@group(0) @binding(2) var<storage, read_write> dw: array<f32>;`);
    writes.push("dw[c] = t.x;");
  }
  if (hasB) {
    outs.push(
      `@group(0) @binding(${hasW ? 3 : 2}) var<storage, read_write> db: array<f32>;`,
    );
    writes.push("db[c] = t.y;");
  }
  const combine = lanes === 1 ? "let t = acc;" : `red[li] = acc;
  workgroupBarrier();
  var t = red[li];
  for (var l = 1u; l < ${lanes}u; l++) { t += red[li + l * ${cols}u]; }`;
  return /* wgsl */ `
struct P { n: u32, chunks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> part: array<vec2<f32>>;
${outs.join("\n")}
${lanes === 1 ? "" : `var<workgroup> red: array<vec2<f32>, ${cols * lanes}>;`}
@compute @workgroup_size(${cols * lanes})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let c = wg.x * ${cols}u + li % ${cols}u;
  let lane = li / ${cols}u;
  var acc = vec2<f32>(0.0, 0.0);
  if (c < p.n) {
    for (var k = lane; k < p.chunks; k += ${lanes}u) { acc += part[k * p.n + c]; }
  }
  ${combine}
  if (lane == 0u && c < p.n) { ${writes.join(" ")} }
}`;
}

/** A residual fused into {@link layerNormForward}: `res` is added to x first, the sum stored in `h`. */
export interface LayerNormResidual {
  res: Buf;
  h: Buf;
}

/**
 * Forward layer norm of [rows, n] `x` into `y`, with optional per-column `w` and `b` ([n]);
 * writes `stats` [rows, 2] = (mean, rstd) for {@link layerNormBackwardInput} /
 * {@link layerNormBackwardParams}. With `residual`, normalises x + res instead and also stores
 * that sum (a transformer block's residual add and the next layer norm in one pass; the backward
 * then takes `h` as its x). `opts` overrides the launch shape (tests).
 */
export function layerNormForward(
  x: Buf,
  w: Buf | null,
  b: Buf | null,
  y: Buf,
  stats: Buf,
  rows: number,
  n: number,
  eps: number,
  opts: RowOptions = {},
  residual: LayerNormResidual | null = null,
): void {
  if (rows === 0 || n === 0) return;
  const plan = rowPlan(n, rows, opts);
  const name = `layernorm_${planKey(plan)}${w ? "_w" : ""}${b ? "_b" : ""}` +
    (residual ? "_res" : "");
  const code = cached(name, () => forwardCode(plan, w !== null, b !== null, residual !== null));
  const bufs = [
    x,
    ...(residual ? [residual.res] : []),
    ...(w ? [w] : []),
    ...(b ? [b] : []),
    y,
    stats,
    ...(residual ? [residual.h] : []),
  ];
  const params = new Params().u32(rows, plan.units).f32(n, eps).build();
  dispatch(name, code, bufs, params, rowGrid(plan, rows));
}

/** dx of layer norm from `x`, optional `w`, output gradient `g` and the forward's `stats`. */
export function layerNormBackwardInput(
  x: Buf,
  w: Buf | null,
  g: Buf,
  stats: Buf,
  dx: Buf,
  rows: number,
  n: number,
  opts: RowOptions = {},
): void {
  if (rows === 0 || n === 0) return;
  const plan = rowPlan(n, rows, opts);
  const name = `layernorm_grad_x_${planKey(plan)}${w ? "_w" : ""}`;
  const code = cached(name, () => backwardInputCode(plan, w !== null));
  const bufs = [x, ...(w ? [w] : []), g, stats, dx];
  dispatch(
    name,
    code,
    bufs,
    new Params().u32(rows, plan.units).f32(n).build(),
    rowGrid(plan, rows),
  );
}

/** Overrides for {@link layerNormBackwardParams} (tests and tuning). */
export interface ColumnReduceOptions {
  /** Row lanes per column: 1, 2, 4 or 8. Default 4 on GPUs, 1 on CPU adapters. */
  lanes?: number;
  /** Rows each workgroup sums. Default: about rows / 64 (at least 32) on GPUs, 256 on CPUs. */
  rowsPerChunk?: number;
}

/**
 * dw[c] = sum_r g[r, c] * xhat[r, c] and db[c] = sum_r g[r, c] (either may be null: not computed).
 * Uses a temporary buffer of chunks * n vec2 partials from the pool.
 */
export function layerNormBackwardParams(
  x: Buf,
  g: Buf,
  stats: Buf,
  dw: Buf | null,
  db: Buf | null,
  rows: number,
  n: number,
  opts: ColumnReduceOptions = {},
): void {
  if (n === 0 || (!dw && !db)) return;
  // Rows per chunk. GPUs: about 64 chunks, at least 32 rows each (measured on an H200: [1576, 768]
  // 30 us at 32 rows vs 62 us at 256; [8192, 768] 87 us at 128 vs 134 us at 32). CPU adapters:
  // 256 (fewer partials; the column blocks already fill the cores). More when the chunk count
  // would pass the grid limit.
  const cpu = gpu().tuning.cpu;
  const cols = 64;
  const lanes = opts.lanes ?? (cpu ? 1 : 4);
  if (![1, 2, 4, 8].includes(lanes)) throw new RangeError(`layerNorm: lanes ${lanes}`);
  const maxY = 65535;
  const auto = cpu ? 256 : Math.max(32, 2 ** Math.ceil(Math.log2(Math.max(1, rows / 64))));
  const rpc = Math.max(opts.rowsPerChunk ?? auto, Math.ceil(rows / maxY));
  const chunks = Math.max(1, Math.ceil(rows / rpc));
  const colBlocks = Math.ceil(n / cols);
  if (colBlocks > maxY) throw new RangeError(`layerNorm: ${n} columns exceed the grid limit`);
  const part = pool.acquire(chunks * n * 8);
  try {
    // With rows = 0 the one chunk is empty and the partials (hence dw, db) are zeros.
    const name = `layernorm_grad_wb_partial_${cols}x${lanes}`;
    dispatch(
      name,
      cached(name, () => partialCode(cols, lanes)),
      [x, g, stats, part],
      new Params().u32(rows, n, rpc).build(),
      [colBlocks, chunks],
    );
    const key = `layernorm_grad_wb_final_${cols}x${lanes}${dw ? "_w" : ""}${db ? "_b" : ""}`;
    const code = cached(key, () => finalCode(dw !== null, db !== null, cols, lanes));
    const outs = [...(dw ? [dw] : []), ...(db ? [db] : [])];
    dispatch(
      key,
      code,
      [part, ...outs],
      new Params().u32(n, chunks).build(),
      [colBlocks],
    );
  } finally {
    // Safe while the dispatches are only recorded: later work is ordered after them.
    pool.release(part);
  }
}
