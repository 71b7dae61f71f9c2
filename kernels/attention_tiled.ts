/**
 * Flash attention for GPUs (tile mode `tiled`): forward, dQ and dK/dV kernels in which a
 * workgroup of WX x WY invocations owns a block of 4*WY rows (queries; keys for dK/dV) and walks
 * the other side in tiles of 4*WX. Each tile is a small matrix product inside the workgroup, done
 * like the `shared` matmul: Q and K (or dO and V) are staged in workgroup memory in chunks of DK
 * along the head dimension, every invocation accumulates a 4 x 4 block of scores in registers,
 * the probabilities go through workgroup memory once (P[j][i]), and the output rows (O, dQ, dK,
 * dV: 4 rows x D/WX columns per invocation) accumulate in registers from V (K, dO, Q) tiles
 * staged in the same memory. Nothing of size T x T exists outside the workgroup.
 *
 * One file (~680 lines) for the three kernels: they share the tile layout, the staging loops and
 * the launch planning, and a change to one must be checked against the others side by side.
 *
 * The forward keeps the online softmax in registers; the row maximum of a tile is reduced across
 * the WX invocations of a row group through workgroup memory, or with subgroup shuffles where the
 * device has `subgroups` (a kernel that checks at run time that its subgroups hold whole row
 * groups, and falls back to workgroup memory when they do not). The backward recomputes the
 * probabilities from the forward's log-sum-exp like the other tile modes (see attention.ts).
 *
 * Workgroup memory: forward 4 * (DK*BR + DK*BC + BC*BR) bytes, backward 4 * (2*DK*BR + 2*DK*BC +
 * BC*BR) (BR = 4*WY, BC = 4*WX): 24 KiB and 32 KiB for the default 16 x 16 x 16, inside llvmpipe's
 * 32 KiB, so CI runs the exact kernels a GPU runs. {@link flashTile} picks a smaller tile for
 * adapters with less.
 *
 * One file because the three kernels share their staging and product code generators.
 */
import type { AttentionDims } from "./attention.ts";
import { type Buf, dispatch, grid } from "./runtime.ts";
import { codeCache, FLAT_WG, NEG_BIG_WGSL, Params } from "./wgsl.ts";

/** Thread grid and staging depth of the tiled kernels: rows BR = 4*WY, columns BC = 4*WX. */
export interface FlashTile {
  /** Invocations along the tile's columns (keys in the forward); a power of two >= 4. */
  WX: number;
  /** Invocations along the rows; a power of two >= 1. */
  WY: number;
  /** Head-dimension chunk staged per step of the score product; a multiple of 4. */
  DK: number;
}

/** Bytes of workgroup memory the backward kernels of `t` need (the forward needs less). */
export function flashBytes(t: FlashTile): number {
  const BR = 4 * t.WY, BC = 4 * t.WX;
  return 4 * (2 * t.DK * BR + 2 * t.DK * BC + BC * BR);
}

/**
 * The tile for an adapter with `wgMem` bytes of workgroup memory and `maxInvocations` per
 * workgroup: 16 x 16 invocations (64 x 64 score tiles) where they fit, smaller otherwise.
 */
export function flashTile(wgMem: number, maxInvocations: number): FlashTile {
  const options: FlashTile[] = [
    { WX: 16, WY: 16, DK: 16 },
    { WX: 8, WY: 16, DK: 16 },
    { WX: 8, WY: 8, DK: 16 },
    { WX: 4, WY: 8, DK: 8 },
  ];
  return options.find((t) => flashBytes(t) <= wgMem && t.WX * t.WY <= maxInvocations) ??
    options[options.length - 1];
}

function checkTile(t: FlashTile, d: number): void {
  const pow2 = (x: number) => Number.isInteger(x) && x > 0 && (x & (x - 1)) === 0;
  if (!pow2(t.WX) || t.WX < 4 || !pow2(t.WY) || !(t.DK % 4 === 0 && t.DK > 0)) {
    throw new RangeError(`attention (tiled): invalid tile ${JSON.stringify(t)}`);
  }
  if (layout(t, d).VK < 1) {
    throw new RangeError(
      `attention (tiled): tile ${JSON.stringify(t)} stages fewer than one row of D=${d}`,
    );
  }
}

/** Derived sizes of a kernel for tile `t` and head dim `d`. */
interface Layout {
  WX: number;
  WY: number;
  DK: number;
  BR: number;
  BC: number;
  T: number;
  D: number;
  /** Head dim padded so that every invocation owns DP / WX output columns. */
  DP: number;
  /** Output columns as vec4 groups (g*WX + tx)*4.. when DP is a multiple of 4*WX. */
  vecCols: boolean;
  /** The global buffers are read as vec4 (D % 4 == 0). */
  gvec: boolean;
  /** Rows of the natural-layout staging (V, K, dO or Q rows of DP floats) per step. */
  VK: number;
}

function layout(t: FlashTile, d: number, stagingFloats?: number): Layout {
  const BR = 4 * t.WY, BC = 4 * t.WX;
  const dpv = Math.ceil(d / (4 * t.WX)) * 4 * t.WX, dps = Math.ceil(d / t.WX) * t.WX;
  const DP = dpv === dps ? dpv : dps;
  const room = stagingFloats ?? t.DK * BR;
  let VK = 1;
  while (VK * 2 <= Math.min(BC, Math.floor(room / DP))) VK *= 2;
  if (room < DP) VK = 0;
  return {
    WX: t.WX,
    WY: t.WY,
    DK: t.DK,
    BR,
    BC,
    T: t.WX * t.WY,
    D: d,
    DP,
    vecCols: dpv === dps,
    gvec: d % 4 === 0,
    VK,
  };
}

const range = (n: number) => [...Array(n).keys()];

/** Store scalar `val` at element `idx` of the vec4 workgroup array `arr`. */
function put(arr: string, idx: string, val: string): string {
  return `{ let i_ = ${idx}; ${arr}[i_ / 4u][i_ % 4u] = ${val}; }`;
}

/**
 * WGSL: stage rows `base` + 0 .. rows-1 (zero at or past `limit`), head-dim columns d0 .. d0+DK-1
 * (zero past D), of global `X` into `arr` transposed: element `off + k*rows + r`.
 */
function stageT(
  L: Layout,
  arr: string,
  off: number,
  X: string,
  base: string,
  limit: string,
  rows: number,
): string {
  const { DK, T, D } = L;
  if (L.gvec) {
    return `for (var e = li; e < ${(rows * DK) / 4}u; e += ${T}u) {
      let r = e / ${DK / 4}u; let q4 = e % ${DK / 4}u;
      let row = ${base} + r; let d = d0 + q4 * 4u;
      var x = vec4<f32>();
      if (row < ${limit} && d < ${D}u) { x = ${X}[row * ${D / 4}u + d / 4u]; }
      let o = ${off}u + q4 * ${4 * rows}u + r;
      ${put(arr, "o", "x.x")} ${put(arr, `o + ${rows}u`, "x.y")}
      ${put(arr, `o + ${2 * rows}u`, "x.z")} ${put(arr, `o + ${3 * rows}u`, "x.w")}
    }`;
  }
  return `for (var e = li; e < ${rows * DK}u; e += ${T}u) {
      let r = e / ${DK}u; let k = e % ${DK}u;
      let row = ${base} + r; let d = d0 + k;
      var x = 0.0;
      if (row < ${limit} && d < ${D}u) { x = ${X}[row * ${D}u + d]; }
      ${put(arr, `${off}u + k * ${rows}u + r`, "x")}
    }`;
}

/** WGSL: stage VK rows `base` + 0.. (zero at or past `limit`, zero past D) of `X` as arr[jj][d]. */
function stageN(L: Layout, arr: string, X: string, base: string, limit: string): string {
  const { VK, DP, T, D } = L;
  if (L.gvec) {
    return `for (var e = li; e < ${(VK * DP) / 4}u; e += ${T}u) {
        let row = ${base} + e / ${DP / 4}u; let c4 = e % ${DP / 4}u;
        var x = vec4<f32>();
        if (row < ${limit} && c4 < ${D / 4}u) { x = ${X}[row * ${D / 4}u + c4]; }
        ${arr}[e] = x;
      }`;
  }
  return `for (var e = li; e < ${VK * DP}u; e += ${T}u) {
        let row = ${base} + e / ${DP}u; let c = e % ${DP}u;
        var x = 0.0;
        if (row < ${limit} && c < ${D}u) { x = ${X}[row * ${D}u + c]; }
        ${put(arr, "e", "x")}
      }`;
}

/** Names of an invocation's output accumulators for rows r = 0..3: vec4 groups or scalars. */
function outCols(L: Layout): number {
  return L.vecCols ? L.DP / (4 * L.WX) : L.DP / L.WX;
}

function declOut(L: Layout, name: string): string {
  const ty = L.vecCols ? "vec4<f32>()" : "0.0";
  return range(4).map((r) =>
    range(outCols(L)).map((c) => `var ${name}${r}_${c} = ${ty};`).join(" ")
  )
    .join("\n  ");
}

/**
 * WGSL: for jj in the staged natural rows, `acc[r][cols] += P(row r, column j0+jj) * arr[jj][cols]`
 * for each (accumulator name, probability array) pair; P is read as sP-style `[j][rows]` vec4s.
 */
function productStep(L: Layout, pairs: [string, string][], arr: string): string {
  const out: string[] = [];
  for (const [, parr] of pairs) {
    out.push(`let pv_${parr} = ${parr}[(j0 + jj) * ${L.BR / 4}u + ty];`);
  }
  const n = outCols(L);
  for (let c = 0; c < n; c++) {
    if (L.vecCols) out.push(`let v${c} = ${arr}[jj * ${L.DP / 4}u + ${c * L.WX}u + tx];`);
    else {
      out.push(`let e${c} = jj * ${L.DP}u + ${c * L.WX}u + tx;`);
      out.push(`let v${c} = ${arr}[e${c} / 4u][e${c} % 4u];`);
    }
    for (const [acc, parr] of pairs) {
      for (const r of range(4)) {
        const p = L.vecCols ? `vec4<f32>(pv_${parr}[${r}])` : `pv_${parr}[${r}]`;
        out.push(`${acc}${r}_${c} = fma(${p}, v${c}, ${acc}${r}_${c});`);
      }
    }
  }
  return out.join("\n          ");
}

/**
 * WGSL: the product of the probabilities in the `pairs`' arrays with rows tileBase + 0.. of the
 * named globals (one staged natural tile per pair), over the first `ncols` (uniform) columns.
 */
function product(
  L: Layout,
  acc: string,
  parr: string,
  X: string,
  tileBase: string,
  limit: string,
  ncols: string,
): string {
  return `for (var j0 = 0u; j0 < ${ncols}; j0 += ${L.VK}u) {
      workgroupBarrier(); // the staging memory is free, and P is written
      ${stageN(L, "sA", X, `${tileBase} + j0`, limit)}
      workgroupBarrier();
      for (var jj = 0u; jj < ${L.VK}u; jj++) {
          ${productStep(L, [[acc, parr]], "sA")}
      }
    }`;
}

/** WGSL: the 4 x 4 score block(s) of this invocation: s{r}_{c} += sum over the staged chunk. */
function scoreStep(L: Layout, pairs: { acc: string; aoff: number; boff: number }[]): string {
  const out: string[] = [];
  for (const { acc, aoff, boff } of pairs) {
    out.push(`let a_${acc} = sA[${aoff / 4}u + k * ${L.BR / 4}u + ty];`);
    out.push(`let b_${acc} = sB[${boff / 4}u + k * ${L.BC / 4}u + tx];`);
    for (const r of range(4)) {
      for (const c of range(4)) {
        out.push(`${acc}${r}_${c} = fma(a_${acc}[${r}], b_${acc}[${c}], ${acc}${r}_${c});`);
      }
    }
  }
  return out.join("\n        ");
}

function declScores(name: string): string {
  return range(4).map((r) => range(4).map((c) => `var ${name}${r}_${c} = 0.0;`).join(" "))
    .join("\n    ");
}

/** WGSL: store an invocation's output rows (4 x its columns) times the scalar `mul(r)`. */
function storeOut(
  L: Layout,
  Y: string,
  acc: string,
  rowBase: string,
  rowOf: (r: number) => string,
  limit: string,
  mul: (r: number) => string,
): string {
  const out: string[] = [];
  for (const r of range(4)) {
    out.push(`if (${rowOf(r)} < ${limit}) {`);
    out.push(`  let y${r} = ${rowBase} + ${rowOf(r)};`);
    for (let c = 0; c < outCols(L); c++) {
      const v = `${acc}${r}_${c}`;
      if (!L.vecCols) {
        const col = `${c * L.WX}u + tx`;
        out.push(`  if (${col} < ${L.D}u) { ${Y}[y${r} * ${L.D}u + ${col}] = ${v} * ${mul(r)}; }`);
      } else if (outVec(L)) {
        out.push(
          `  if ((${c * L.WX}u + tx) * 4u < ${L.D}u) { ` +
            `${Y}[y${r} * ${L.D / 4}u + ${c * L.WX}u + tx] = ${v} * ${mul(r)}; }`,
        );
      } else {
        for (const q of range(4)) {
          const col = `(${c * L.WX}u + tx) * 4u + ${q}u`;
          out.push(
            `  if (${col} < ${L.D}u) { ${Y}[y${r} * ${L.D}u + ${col}] = ${v}[${q}] * ${mul(r)}; }`,
          );
        }
      }
    }
    out.push(`}`);
  }
  return out.join("\n  ");
}

/**
 * Outputs are stored as vec4 only when each invocation owns whole vec4s of them: invocations
 * never write different lanes of one vec4 (a backend may store a lane as a read-modify-write of
 * the vector).
 */
function outVec(L: Layout): boolean {
  return L.vecCols && L.gvec;
}

const PARAMS =
  /* wgsl */ `struct P { bh: u32, tq: u32, tk: u32, d: u32, scale: f32, causal: u32, ntile: u32 }
@group(0) @binding(0) var<uniform> p: P;
const NEG = ${NEG_BIG_WGSL};`;

function bind(i: number, name: string, L: Layout, write = false, scalar = false): string {
  const ty = scalar || !(write ? outVec(L) : L.gvec) ? "f32" : "vec4<f32>";
  return `@group(0) @binding(${i}) var<storage, ${
    write ? "read_write" : "read"
  }> ${name}: array<${ty}>;`;
}

/** WGSL: the row-group reduction of vec4 `x` (rows ty*4..) across the WX invocations of a row. */
function reduceRows(
  L: Layout,
  x: string,
  op: "max" | "sum",
  out: string,
  subgroups: boolean,
): string {
  const comb = (a: string, b: string) => (op === "max" ? `max(${a}, ${b})` : `${a} + ${b}`);
  const viaMemory = `workgroupBarrier(); // done reading sB
    sB[tx * ${L.BR / 4}u + ty] = ${x};
    workgroupBarrier();
    ${out} = sB[ty];
    for (var t = 1u; t < ${L.WX}u; t++) { ${out} = ${comb(out, `sB[t * ${L.BR / 4}u + ty]`)}; }`;
  if (!subgroups) return viaMemory;
  const steps: string[] = [`${out} = ${x};`];
  for (let m = L.WX / 2; m >= 1; m /= 2) {
    steps.push(`${out} = ${comb(out, `subgroupShuffleXor(${out}, ${m}u)`)};`);
  }
  return `if (sgShared) {
    ${viaMemory}
    } else {
    ${steps.join("\n    ")}
    }`;
}

/**
 * WGSL prologue of the subgroup variant: invocation index `li` numbered subgroup by subgroup
 * (so a row group's WX invocations share a subgroup), and `sgShared`, true (the same in the whole
 * workgroup) when some subgroup does not hold whole row groups, which then reduce via memory.
 */
function subgroupPrologue(L: Layout): string {
  return `var base = 0u;
  let cnt = subgroupAdd(1u);
  if (subgroupElect()) { base = atomicAdd(&sgNext, cnt); }
  base = subgroupBroadcastFirst(base);
  if (base % ${L.WX}u != 0u || cnt % ${L.WX}u != 0u) { atomicOr(&sgBadA, 1u); }
  workgroupBarrier();
  if (lidx == 0u) { sgBad = atomicLoad(&sgBadA); }
  let sgShared = workgroupUniformLoad(&sgBad) != 0u;
  let li = select(base + sgi, lidx, sgShared);`;
}

/** Forward: O = softmax(scale q k^T + mask) v and LSE, one workgroup per BR queries. */
function forwardCode(L: Layout, subgroups: boolean): string {
  const { BR, BC, DK } = L;
  const scoresValid: string[] = [];
  for (const r of range(4)) {
    scoresValid.push(`let i${r} = q0 + ty * 4u + ${r}u;`);
    scoresValid.push(
      `var lim${r} = p.tk; if (p.causal != 0u) { lim${r} = min(p.tk, i${r} + 1u); }`,
    );
  }
  const mask: string[] = [];
  for (const r of range(4)) {
    for (const c of range(4)) {
      mask.push(`let ok${r}_${c} = k0 + tx * 4u + ${c}u < lim${r};`);
      mask.push(`s${r}_${c} = select(NEG, s${r}_${c} * p.scale, ok${r}_${c});`);
    }
  }
  const soft: string[] = [];
  soft.push(
    `let mloc = vec4<f32>(${
      range(4).map((r) => `max(max(s${r}_0, s${r}_1), max(s${r}_2, s${r}_3))`).join(", ")
    });`,
  );
  soft.push(`var mt = vec4<f32>();`);
  soft.push(reduceRows(L, "mloc", "max", "mt", subgroups));
  for (const r of range(4)) {
    soft.push(`let mn${r} = max(m${r}, mt[${r}]);`);
    soft.push(`let al${r} = exp(m${r} - mn${r});`);
    for (const c of range(4)) {
      soft.push(`let p${r}_${c} = select(0.0, exp(s${r}_${c} - mn${r}), ok${r}_${c});`);
    }
    soft.push(`l${r} = l${r} * al${r} + (p${r}_0 + p${r}_1) + (p${r}_2 + p${r}_3);`);
    soft.push(`m${r} = mn${r};`);
    for (let c = 0; c < outCols(L); c++) {
      soft.push(`o${r}_${c} *= ${L.vecCols ? `vec4<f32>(al${r})` : `al${r}`};`);
    }
  }
  for (const c of range(4)) {
    soft.push(
      `sP[(tx * 4u + ${c}u) * ${BR / 4}u + ty] = vec4<f32>(p0_${c}, p1_${c}, p2_${c}, p3_${c});`,
    );
  }
  const state = range(4).map((r) => `var m${r} = NEG; var l${r} = 0.0;`).join(" ");
  const sg = subgroups;
  return /* wgsl */ `${sg ? "enable subgroups;\n" : ""}${PARAMS}
${bind(1, "Q", L)}
${bind(2, "K", L)}
${bind(3, "V", L)}
${bind(4, "O", L, true)}
${bind(5, "LSE", L, true, true)}
var<workgroup> sA: array<vec4<f32>, ${(DK * BR) / 4}>;
var<workgroup> sB: array<vec4<f32>, ${Math.max(DK * BC, L.WX * BR) / 4}>;
var<workgroup> sP: array<vec4<f32>, ${(BC * BR) / 4}>;
${
    sg
      ? "var<workgroup> sgNext: atomic<u32>;\nvar<workgroup> sgBadA: atomic<u32>;\nvar<workgroup> sgBad: u32;"
      : ""
  }
@compute @workgroup_size(${L.T})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lidx: u32${
    sg ? ", @builtin(subgroup_invocation_id) sgi: u32" : ""
  }) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; } // whole workgroup: barriers stay uniform
  ${sg ? subgroupPrologue(L) : "let li = lidx;"}
  let tx = li % ${L.WX}u; let ty = li / ${L.WX}u;
  let bh = flat / p.ntile;
  let q0 = (flat % p.ntile) * ${BR}u;
  let qb = bh * p.tq;
  let kb = bh * p.tk;
  ${scoresValid.join("\n  ")}
  ${state}
  ${declOut(L, "o")}
  var kEnd = p.tk;
  if (p.causal != 0u) { kEnd = min(p.tk, q0 + ${BR}u); } // later keys are masked for every row
  for (var k0 = 0u; k0 < kEnd; k0 += ${BC}u) {
    ${declScores("s")}
    for (var d0 = 0u; d0 < ${L.D}u; d0 += ${DK}u) {
      workgroupBarrier(); // everyone is done with the previous chunk
      ${stageT(L, "sA", 0, "Q", "qb + q0", "qb + p.tq", BR)}
      ${stageT(L, "sB", 0, "K", "kb + k0", "kb + p.tk", BC)}
      workgroupBarrier();
      for (var k = 0u; k < ${DK}u; k++) {
        ${scoreStep(L, [{ acc: "s", aoff: 0, boff: 0 }])}
      }
    }
    ${mask.join("\n    ")}
    ${soft.join("\n    ")}
    let ncols = min(${BC}u, kEnd - k0);
    ${product(L, "o", "sP", "V", "kb + k0", "kb + kEnd", "ncols")}
  }
  let lloc = vec4<f32>(l0, l1, l2, l3);
  var lt = vec4<f32>();
  ${reduceRows(L, "lloc", "sum", "lt", subgroups)}
  ${storeOut(L, "O", "o", "qb", (r) => `i${r}`, "p.tq", (r) => `(1.0 / lt[${r}])`)}
  if (tx == 0u) {
    ${
    range(4).map((r) => `if (i${r} < p.tq) { LSE[qb + i${r}] = m${r} + log(lt[${r}]); }`).join(
      "\n    ",
    )
  }
  }
}`;
}

/** WGSL: p = exp(scale s - lse) where valid, ds = p (dp - delta); `lse`/`delta` per (r, c). */
function probs(
  lse: (r: number, c: number) => string,
  delta: (r: number, c: number) => string,
  ok: (r: number, c: number) => string,
): string {
  const out: string[] = [];
  for (const r of range(4)) {
    for (const c of range(4)) {
      out.push(
        `let p${r}_${c} = select(0.0, exp(s${r}_${c} * p.scale - ${lse(r, c)}), ${ok(r, c)});`,
      );
      out.push(`let ds${r}_${c} = p${r}_${c} * (dp${r}_${c} - ${delta(r, c)});`);
    }
  }
  return out.join("\n    ");
}

function writeP(L: Layout, name: string): string {
  return range(4).map((c) =>
    `sP[(tx * 4u + ${c}u) * ${
      L.BR / 4
    }u + ty] = vec4<f32>(${name}0_${c}, ${name}1_${c}, ${name}2_${c}, ${name}3_${c});`
  ).join("\n    ");
}

/** The score phase of the backward kernels: s = R C^T and dp = R2 C2^T over the head dim. */
function backwardScores(
  L: Layout,
  R: string,
  R2: string,
  rowBase: string,
  rowLimit: string,
  C: string,
  C2: string,
  colBase: string,
  colLimit: string,
): string {
  const { BR, BC, DK } = L;
  return `${declScores("s")}
    ${declScores("dp")}
    for (var d0 = 0u; d0 < ${L.D}u; d0 += ${DK}u) {
      workgroupBarrier();
      ${stageT(L, "sA", 0, R, rowBase, rowLimit, BR)}
      ${stageT(L, "sA", DK * BR, R2, rowBase, rowLimit, BR)}
      ${stageT(L, "sB", 0, C, colBase, colLimit, BC)}
      ${stageT(L, "sB", DK * BC, C2, colBase, colLimit, BC)}
      workgroupBarrier();
      for (var k = 0u; k < ${DK}u; k++) {
        ${
    scoreStep(L, [{ acc: "s", aoff: 0, boff: 0 }, { acc: "dp", aoff: DK * BR, boff: DK * BC }])
  }
      }
    }`;
}

function backwardHeader(L: Layout, outputs: string[]): string {
  const { BR, BC, DK } = L;
  return `${PARAMS}
${bind(1, "Q", L)}
${bind(2, "K", L)}
${bind(3, "V", L)}
${bind(4, "dO", L)}
${bind(5, "LSE", L, false, true)}
${bind(6, "DELTA", L, false, true)}
${outputs.map((o, i) => bind(7 + i, o, L, true)).join("\n")}
var<workgroup> sA: array<vec4<f32>, ${(2 * DK * BR) / 4}>;
var<workgroup> sB: array<vec4<f32>, ${(2 * DK * BC) / 4}>;
var<workgroup> sP: array<vec4<f32>, ${(BC * BR) / 4}>;
@compute @workgroup_size(${L.T})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; }
  let tx = li % ${L.WX}u; let ty = li / ${L.WX}u;
  let bh = flat / p.ntile;
  let qb = bh * p.tq;
  let kb = bh * p.tk;`;
}

/** dQ = scale * sum_j dS[i][j] K[j]: one workgroup per BR queries, walking key tiles. */
function dqCode(L: Layout): string {
  const { BR, BC } = L;
  const rows: string[] = [];
  for (const r of range(4)) {
    rows.push(`let i${r} = q0 + ty * 4u + ${r}u;`);
    rows.push(`var lim${r} = p.tk; if (p.causal != 0u) { lim${r} = min(p.tk, i${r} + 1u); }`);
    rows.push(`let lse${r} = LSE[qb + min(i${r}, p.tq - 1u)];`);
    rows.push(`let dl${r} = DELTA[qb + min(i${r}, p.tq - 1u)];`);
  }
  return /* wgsl */ `${backwardHeader(L, ["dQ"])}
  let q0 = (flat % p.ntile) * ${BR}u;
  ${rows.join("\n  ")}
  ${declOut(L, "g")}
  var kEnd = p.tk;
  if (p.causal != 0u) { kEnd = min(p.tk, q0 + ${BR}u); }
  for (var k0 = 0u; k0 < kEnd; k0 += ${BC}u) {
    ${backwardScores(L, "Q", "dO", "qb + q0", "qb + p.tq", "K", "V", "kb + k0", "kb + p.tk")}
    ${probs((r) => `lse${r}`, (r) => `dl${r}`, (r, c) => `k0 + tx * 4u + ${c}u < lim${r}`)}
    ${writeP(L, "ds")}
    let ncols = min(${BC}u, kEnd - k0);
    ${product(L, "g", "sP", "K", "kb + k0", "kb + kEnd", "ncols")}
  }
  ${storeOut(L, "dQ", "g", "qb", (r) => `i${r}`, "p.tq", () => "p.scale")}
}`;
}

/** dV = sum_i P[i][j] dO[i], dK = scale * sum_i dS[i][j] Q[i]: a workgroup per BR keys. */
function dkvCode(L: Layout): string {
  const { BR, BC } = L;
  const rows: string[] = [];
  for (const r of range(4)) rows.push(`let j${r} = k0 + ty * 4u + ${r}u;`);
  const cols: string[] = [];
  for (const c of range(4)) {
    cols.push(`let i${c} = q0 + tx * 4u + ${c}u;`);
    cols.push(`let lse${c} = LSE[qb + min(i${c}, p.tq - 1u)];`);
    cols.push(`let dl${c} = DELTA[qb + min(i${c}, p.tq - 1u)];`);
  }
  const ok = (r: number, c: number) => `i${c} < p.tq && (p.causal == 0u || i${c} >= j${r})`;
  return /* wgsl */ `${backwardHeader(L, ["dK", "dV"])}
  let k0 = (flat % p.ntile) * ${BR}u;
  ${rows.join("\n  ")}
  ${declOut(L, "gk")}
  ${declOut(L, "gv")}
  var qStart = 0u;
  if (p.causal != 0u) { qStart = k0; } // earlier queries see none of these keys
  for (var q0 = qStart; q0 < p.tq; q0 += ${BC}u) {
    ${cols.join("\n    ")}
    ${backwardScores(L, "K", "V", "kb + k0", "kb + p.tk", "Q", "dO", "qb + q0", "qb + p.tq")}
    ${probs((_, c) => `lse${c}`, (_, c) => `dl${c}`, ok)}
    let ncols = min(${BC}u, p.tq - q0);
    ${writeP(L, "p")}
    ${product(L, "gv", "sP", "dO", "qb + q0", "qb + p.tq", "ncols")}
    workgroupBarrier(); // everyone is done reading P
    ${writeP(L, "ds")}
    ${product(L, "gk", "sP", "Q", "qb + q0", "qb + p.tq", "ncols")}
  }
  ${storeOut(L, "dK", "gk", "kb", (r) => `j${r}`, "p.tk", () => "p.scale")}
  ${storeOut(L, "dV", "gv", "kb", (r) => `j${r}`, "p.tk", () => "1.0")}
}`;
}

const cached = codeCache();

function params(d: AttentionDims, ntile: number): ArrayBuffer {
  return new Params().u32(d.bh, d.tq, d.tk, d.d).f32(d.scale).u32(d.causal ? 1 : 0, ntile)
    .build();
}

const tileKey = (t: FlashTile) => `${t.WX}x${t.WY}_k${t.DK}`;

/** Record the tiled forward (see the module doc); `subgroups` needs the device feature. */
export function tiledForward(
  q: Buf,
  k: Buf,
  v: Buf,
  o: Buf,
  lse: Buf,
  d: AttentionDims,
  t: FlashTile,
  subgroups: boolean,
): void {
  checkTile(t, d.d);
  const L = layout(t, d.d);
  const ntile = Math.ceil(d.tq / L.BR);
  const name = `attention_fwd_tiled_d${d.d}_${tileKey(t)}${subgroups ? "_sg" : ""}`;
  dispatch(
    name,
    cached(name, () => forwardCode(L, subgroups)),
    [q, k, v, o, lse],
    params(d, ntile),
    grid(d.bh * ntile),
  );
}

/** Record the tiled dQ and/or dK+dV kernels (delta must already hold rowsum(dO * O)). */
export function tiledBackward(
  q: Buf,
  k: Buf,
  v: Buf,
  lse: Buf,
  dO: Buf,
  delta: Buf,
  dq: Buf | null,
  dk: Buf | null,
  dv: Buf | null,
  d: AttentionDims,
  t: FlashTile,
): void {
  checkTile(t, d.d);
  const BR = 4 * t.WY;
  const L = layout(t, d.d, 2 * t.DK * BR);
  if (dq) {
    const ntile = Math.ceil(d.tq / BR);
    const name = `attention_dq_tiled_d${d.d}_${tileKey(t)}`;
    dispatch(
      name,
      cached(name, () => dqCode(L)),
      [q, k, v, dO, lse, delta, dq],
      params(d, ntile),
      grid(d.bh * ntile),
    );
  }
  if (dk && dv) {
    const ntile = Math.ceil(d.tk / BR);
    const name = `attention_dkv_tiled_d${d.d}_${tileKey(t)}`;
    dispatch(
      name,
      cached(name, () => dkvCode(L)),
      [q, k, v, dO, lse, delta, dk, dv],
      params(d, ntile),
      grid(d.bh * ntile),
    );
  }
}
