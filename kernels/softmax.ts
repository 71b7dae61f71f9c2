/**
 * Softmax and log-softmax over the last axis (forward and backward), and the scaffolding every
 * "row" kernel shares (layernorm, l2norm and cross-entropy import it from here).
 *
 * A row kernel works on a contiguous [rows, n] array. When n % 4 == 0 rows are read as vec4
 * "units", otherwise as f32 units. Two shapes of launch, picked per adapter by {@link rowPlan}:
 * - group mode (GPUs): `tpr` invocations share a row; invocation t owns units t, t + tpr, ...
 *   (coalesced); row-wide sums and maxima go through a tree in workgroup memory.
 * - lane mode (tpr = 1; CPU adapters such as llvmpipe, and tiny rows on GPUs): each invocation
 *   owns a whole row, `rpw` rows per workgroup, with no workgroup memory and no barriers. On
 *   llvmpipe (invocations are SIMD lanes of one core, barriers are coroutine switches) this was
 *   5x cheaper than 256-wide groups for a 4096 x 1024 softmax (11 vs 52 ms of CPU time).
 * When the row fits (at most {@link MAX_CACHED_FLOATS} floats per invocation per array), each
 * invocation loads its units into registers once and every later pass reuses them, so a fused
 * softmax reads the row once and writes it once. Longer rows are streamed: each pass reads the
 * row again (softmax then uses an online max/sum so it needs only two reads).
 */
import { type Buf, dispatch, grid } from "./runtime.ts";
import { gpu } from "./device.ts";
import { codeCache, FLAT_WG, NEG_BIG_WGSL, Params } from "./wgsl.ts";

/** How a row kernel covers rows of `n` floats. */
export interface RowPlan {
  /** Row length in floats. */
  n: number;
  /** Units are vec4<f32> (n % 4 == 0) rather than f32. */
  vec: boolean;
  /** Units per row (n / 4 or n). */
  units: number;
  /** Invocations per row: a power of two up to 256; 1 is lane mode. */
  tpr: number;
  /** Rows per workgroup (1 in group mode). */
  rpw: number;
  /** Invocations per workgroup (tpr * rpw). */
  wg: number;
  /** Units each invocation keeps in registers; 0 means the row is streamed from memory. */
  vpt: number;
}

/** Floats of one array an invocation may keep in registers before the row is streamed. */
export const MAX_CACHED_FLOATS = 32;

/** Overrides for {@link rowPlan} (tests and tuning). */
export interface RowOptions {
  /** Register budget per array in floats (0 forces streaming). Default {@link MAX_CACHED_FLOATS}. */
  maxFloats?: number;
  /** Invocations per row (a power of two, 1 to 256; 1 = lane mode). Default: per adapter. */
  threads?: number;
}

/**
 * Plan a row kernel for `rows` rows of `n` floats: vec4 units when n % 4 == 0, the launch shape
 * for this adapter, register caching when the row fits.
 * - CPU adapter: lane mode with 8 rows per workgroup (one 256-bit SIMD vector) when there are at
 *   least 16 rows; otherwise 8 invocations per row so that a few long rows still use the lanes.
 * - GPU: lane mode (64 rows per workgroup) for rows of at most 8 units; otherwise a power of two
 *   from 32 to 256 invocations per row, about 4 units each. Measured with GPU timestamps on an
 *   H100 (Vulkan), softmax 4096 x 1024 at 32 / 64 / 128 / 256 invocations per row: 9.0 / 8.6 /
 *   9.8 / 12.9 us (64 is the default; the unfused core-op softmax takes 84 us); [65536, 8] in lane
 *   mode 13 us vs 128 us at 32 per row.
 */
export function rowPlan(n: number, rows: number, opts: RowOptions = {}): RowPlan {
  const vec = n > 0 && n % 4 === 0;
  const units = vec ? n / 4 : n;
  const cpu = gpu().tuning.cpu;
  let tpr = opts.threads ?? 0;
  if (tpr) {
    if (!Number.isInteger(Math.log2(tpr)) || tpr > 256) {
      throw new RangeError(`rowPlan: threads must be a power of two <= 256, got ${tpr}`);
    }
  } else if (cpu) tpr = rows >= 16 ? 1 : 8;
  else if (units <= 8) tpr = 1;
  else {
    tpr = 32;
    while (tpr < 256 && tpr * 4 < units) tpr *= 2;
  }
  const rpw = tpr > 1 ? 1 : cpu ? 8 : 64;
  const vpt = Math.max(1, Math.ceil(units / tpr));
  const maxFloats = opts.maxFloats ?? MAX_CACHED_FLOATS;
  return {
    n,
    vec,
    units,
    tpr,
    rpw,
    wg: tpr * rpw,
    vpt: vpt * (vec ? 4 : 1) <= maxFloats ? vpt : 0,
  };
}

/** A short key of a plan, for kernel names and caches. */
export function planKey(plan: RowPlan): string {
  return `${plan.vec ? "v4" : "f1"}_t${plan.tpr}_r${plan.rpw}_c${plan.vpt}`;
}

/** Workgroup counts for `rows` rows under `plan`. */
export function rowGrid(plan: RowPlan, rows: number): [number, number] {
  return grid(Math.ceil(rows / plan.rpw));
}

/**
 * WGSL shared by row kernels: `alias V` (the unit type), `hsum(V)`, `hmax(V)` (horizontal sum
 * and max of a unit).
 */
export function rowPrelude(plan: RowPlan): string {
  return /* wgsl */ `
alias V = ${plan.vec ? "vec4<f32>" : "f32"};
fn hsum(v: V) -> f32 { return ${plan.vec ? "(v.x + v.y) + (v.z + v.w)" : "v"}; }
fn hmax(v: V) -> f32 { return ${plan.vec ? "max(max(v.x, v.y), max(v.z, v.w))" : "v"}; }`;
}

/**
 * WGSL for `fn <name>(v: <ty>, li: u32) -> <ty>`: combines `v` over the invocations of a row with
 * `combine` (an expression over `a` and `b`, associative) through a tree in workgroup memory, and
 * returns the result to each of them. In lane mode it is the identity. Must be called in uniform
 * control flow; callable repeatedly.
 */
export function treeReduce(name: string, ty: string, plan: RowPlan, combine: string): string {
  if (plan.tpr === 1) return `fn ${name}(v: ${ty}, li: u32) -> ${ty} { return v; }`;
  const wg = plan.tpr;
  return /* wgsl */ `
var<workgroup> ${name}_buf: array<${ty}, ${wg}>;
fn ${name}_op(a: ${ty}, b: ${ty}) -> ${ty} { return ${combine}; }
fn ${name}(v: ${ty}, li: u32) -> ${ty} {
  ${name}_buf[li] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { ${name}_buf[li] = ${name}_op(${name}_buf[li], ${name}_buf[li + s]); }
    workgroupBarrier();
  }
  let r = ${name}_buf[0];
  workgroupBarrier(); // the buffer may be reused by the next call
  return r;
}`;
}

/**
 * Load this invocation's units of each array in `arrays` into registers `<a>0, <a>1, ...`
 * (cached plans; nothing for streamed ones). Needs `first`, `base` and `p.units` (see
 * {@link rowMain}).
 */
export function cacheUnits(plan: RowPlan, arrays: string[]): string {
  if (plan.vpt === 0) return "";
  const lines: string[] = [];
  for (let k = 0; k < plan.vpt; k++) {
    const j = `first + ${k * plan.tpr}u`;
    lines.push(arrays.map((a) => `var ${a}${k} = V(0.0);`).join(" "));
    lines.push(
      `if (${j} < p.units) { ${arrays.map((a) => `${a}${k} = ${a}[base + ${j}];`).join(" ")} }`,
    );
  }
  return lines.join("\n  ");
}

/**
 * Run `body` once for every unit this invocation owns, with `j` (unit index within the row) and
 * `<a>v` (that unit of array `a`) in scope: from registers for cached plans (see
 * {@link cacheUnits}), read from memory for streamed ones.
 */
export function eachUnit(plan: RowPlan, arrays: string[], body: string): string {
  if (plan.vpt > 0) {
    const out: string[] = [];
    for (let k = 0; k < plan.vpt; k++) {
      const j = `first + ${k * plan.tpr}u`;
      out.push(
        `if (${j} < p.units) { let j = ${j}; ${
          arrays.map((a) => `let ${a}v = ${a}${k};`).join(" ")
        } ${body} }`,
      );
    }
    return out.join("\n  ");
  }
  return `for (var j = first; j < p.units; j += ${plan.tpr}u) { ${
    arrays.map((a) => `let ${a}v = ${a}[base + j];`).join(" ")
  } ${body} }`;
}

/**
 * The entry point's signature and what every row kernel starts with: `row`, `base` (its first
 * unit), `first` (this invocation's first unit in the row), `lead` (true for one invocation per
 * row: the one that writes per-row results), and the early exit past the last row. `p` must have
 * `rows` and `units`.
 */
export function rowMain(plan: RowPlan): string {
  const lane = plan.tpr === 1;
  return /* wgsl */ `
@compute @workgroup_size(${plan.wg})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let row = ${lane ? `${FLAT_WG} * ${plan.rpw}u + li` : FLAT_WG};
  // Group mode: uniform, the whole workgroup leaves together. Lane mode has no barriers.
  if (row >= p.rows) { return; }
  let base = row * p.units;
  let first = ${lane ? "0u" : "li"};
  let lead = ${lane ? "true" : "li == 0u"};`;
}

/** Combine two (max, sum of exp(x - max)) pairs into one. */
const LSE_COMBINE =
  "vec2<f32>(max(a.x, b.x), a.y * exp(a.x - max(a.x, b.x)) + b.y * exp(b.x - max(a.x, b.x)))";

/**
 * WGSL that leaves `m` (row max) and `s` (sum of exp(x - m)) for the row of `x` in every
 * invocation: two register passes when cached, one online pass when streamed. Declares `lse`'s
 * tree helper through {@link lseReduceDecl}.
 *
 * NaN and Inf propagate without a NaN-aware max: whether `max` keeps or drops a NaN, the NaN
 * reaches the sum through exp(x - m) (and +Inf gives Inf - Inf = NaN there), so the whole row's
 * output is NaN, as in PyTorch; -Inf entries get probability 0.
 */
export function rowLogSumExp(plan: RowPlan, extra = ""): string {
  const local = plan.vpt > 0
    ? `${eachUnit(plan, ["x"], "lm = max(lm, hmax(xv));")}
  ${eachUnit(plan, ["x"], `ls += hsum(exp(xv - V(lm))); ${extra}`)}`
    : eachUnit(
      plan,
      ["x"],
      `let mn = max(lm, hmax(xv)); ls = ls * exp(lm - mn) + hsum(exp(xv - V(mn))); lm = mn; ${extra}`,
    );
  return /* wgsl */ `
  var lm = ${NEG_BIG_WGSL};
  var ls = 0.0;
  ${local}`;
}

/** Declaration of the `lse(vec2(max, sum), li)` tree used with {@link rowLogSumExp}. */
export function lseReduceDecl(plan: RowPlan): string {
  return treeReduce("lse", "vec2<f32>", plan, LSE_COMBINE);
}

// ---- softmax --------------------------------------------------------------------------------

const cached = codeCache();

function forwardCode(plan: RowPlan, log: boolean): string {
  const write = log
    ? `let lsum = log(r.y);
  ${eachUnit(plan, ["x"], "y[base + j] = (xv - V(r.x)) - V(lsum);")}`
    : `let inv = 1.0 / r.y;
  ${eachUnit(plan, ["x"], "y[base + j] = exp(xv - V(r.x)) * inv;")}`;
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<V>;
@group(0) @binding(2) var<storage, read_write> y: array<V>;
${lseReduceDecl(plan)}
${rowMain(plan)}
  ${cacheUnits(plan, ["x"])}
  ${rowLogSumExp(plan)}
  let r = lse(vec2<f32>(lm, ls), li);
  ${write}
}`;
}

function backwardCode(plan: RowPlan, log: boolean): string {
  // softmax:     dx = y * (g - sum(g * y))
  // log-softmax: dx = g - exp(y) * sum(g)          (y = log-softmax output)
  return /* wgsl */ `
${rowPrelude(plan)}
struct P { rows: u32, units: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> y: array<V>;
@group(0) @binding(2) var<storage, read> g: array<V>;
@group(0) @binding(3) var<storage, read_write> dx: array<V>;
${treeReduce("rsum", "f32", plan, "a + b")}
${rowMain(plan)}
  ${cacheUnits(plan, ["y", "g"])}
  var d = 0.0;
  ${eachUnit(plan, ["y", "g"], log ? "d += hsum(gv);" : "d += hsum(gv * yv);")}
  d = rsum(d, li);
  ${
    eachUnit(
      plan,
      ["y", "g"],
      log ? "dx[base + j] = gv - exp(yv) * V(d);" : "dx[base + j] = yv * (gv - V(d));",
    )
  }
}`;
}

/**
 * y = softmax(x) (or log-softmax with `log`) over each row of a contiguous [rows, n] f32 array.
 * Numerically stable (the row max is subtracted). `opts` overrides the launch shape (tests).
 */
export function softmaxForward(
  x: Buf,
  y: Buf,
  rows: number,
  n: number,
  log: boolean,
  opts: RowOptions = {},
): void {
  if (rows === 0 || n === 0) return;
  const plan = rowPlan(n, rows, opts);
  const name = `${log ? "log_softmax" : "softmax"}_${planKey(plan)}`;
  const code = cached(name, () => forwardCode(plan, log));
  dispatch(name, code, [x, y], new Params().u32(rows, plan.units).build(), rowGrid(plan, rows));
}

/**
 * dx from the forward output `y` and the output gradient `g`, each [rows, n]: the softmax (or,
 * with `log`, log-softmax) vector-Jacobian product.
 */
export function softmaxBackward(
  y: Buf,
  g: Buf,
  dx: Buf,
  rows: number,
  n: number,
  log: boolean,
  opts: RowOptions = {},
): void {
  if (rows === 0 || n === 0) return;
  const plan = rowPlan(n, rows, opts);
  const name = `${log ? "log_softmax" : "softmax"}_grad_${planKey(plan)}`;
  const code = cached(name, () => backwardCode(plan, log));
  dispatch(name, code, [y, g, dx], new Params().u32(rows, plan.units).build(), rowGrid(plan, rows));
}
