/**
 * The WGSL of the matmul kernels (`matmul.ts` launches them): the two families' generators, the
 * load modes (vec4 where the layout allows it), operand sources (f32 or f16 storage buffers, or
 * rgba32float textures read with textureLoad), the epilogue stores, and the split-k sum kernel.
 * Every variant's source is generated once and cached by name.
 */
import { ACTIVATION_WGSL, activationExpr, type MatmulActivation } from "./activation.ts";
import type { MatmulTile } from "./tune.ts";
import { codeCache, FLAT_WG } from "./wgsl.ts";

/** Sizes and strides of one batched matmul. */
export interface MatmulDims {
  batch: number;
  M: number;
  N: number;
  K: number;
  /** A strides: batch, row (m), column (k). */
  sab: number;
  sam: number;
  sak: number;
  /** B strides: batch, row (k), column (n). */
  sbb: number;
  sbk: number;
  sbn: number;
}

/** How A is read: vec4 along k or m, or scalars (k- or m-contiguous, for the load pattern). */
export type AMode = "vk" | "vm" | "sk" | "sm";
/** How B is read: vec4 along n or k, or scalars (n- or k-contiguous). */
export type BMode = "vn" | "vk" | "sn" | "sk";

/** `x` is a multiple of 4, or irrelevant because the axis it strides has extent 1. */
function al(x: number, extent: number): boolean {
  return x % 4 === 0 || extent === 1;
}

/** The load modes a kernel for `d` can use with tile `t` (vec4 only where aligned). */
export function matmulModes(d: MatmulDims, t: MatmulTile): { a: AMode; b: BMode } {
  const shared = t.kind === "shared";
  const bk = t.BK ?? 8;
  let a: AMode;
  if (d.sak === 1 && d.K % 4 === 0 && al(d.sam, d.M) && al(d.sab, d.batch) && bk % 4 === 0) {
    a = "vk";
  } else if (
    d.sam === 1 && d.M % 4 === 0 && al(d.sak, d.K) && al(d.sab, d.batch) &&
    (shared ? (t.WY * t.TM) % 4 === 0 : t.TM % 4 === 0)
  ) a = "vm";
  else a = d.sak === 1 ? "sk" : "sm";
  let b: BMode;
  if (
    d.sbn === 1 && d.N % 4 === 0 && al(d.sbk, d.K) && al(d.sbb, d.batch) &&
    (shared ? (t.WX * t.TN) % 4 === 0 : t.TN % 4 === 0)
  ) b = "vn";
  else if (
    d.sbk === 1 && d.K % 4 === 0 && al(d.sbn, d.N) && al(d.sbb, d.batch) && bk % 4 === 0
  ) b = "vk";
  else b = d.sbn === 1 ? "sn" : "sk";
  return { a, b };
}

/**
 * Where an operand is read from: an f32 storage buffer, an f16 storage buffer (converted to f32
 * on load, needs `shader-f16`), or an rgba32float texture holding the f32 buffer's bytes as
 * texels (CPU adapters, see {@link MatmulInput}).
 */
export type OperandSource = "f32" | "f16" | "texture";

/** Texels per row of an operand texture (a power of two): texel t is at (t % W, t / W). */
export const TEXTURE_WIDTH = 4096;

/** One kernel variant: tile, load modes, operand sources, epilogue. */
export interface Variant {
  t: MatmulTile;
  a: AMode;
  b: BMode;
  srcA: OperandSource;
  srcB: OperandSource;
  /** Store C as vec4 (N % 4 == 0 and the per-invocation columns are vec4-aligned). */
  cv: boolean;
  bias: boolean;
  act: MatmulActivation;
  /** Store the pre-activation into Z too. */
  pre: boolean;
}

const HEADER = /* wgsl */ `
struct P {
  M: u32, N: u32, K: u32, sab: u32, sam: u32, sak: u32, sbb: u32, sbk: u32, sbn: u32,
  alpha: f32, slope: f32, wx0: u32, wy0: u32, wz0: u32, S: u32, kz: u32,
}
@group(0) @binding(0) var<uniform> p: P;`;

/**
 * The binding of operand `X` and its loader `ldX(i)`: element i of the operand seen as an array
 * of vec4 (`vec`) or of scalars, converted to f32.
 */
function operand(X: string, binding: number, vec: boolean, src: OperandSource): string {
  const decl = (ty: string) =>
    `@group(0) @binding(${binding}) var<storage, read> ${X}: array<${ty}>;`;
  const ret = vec ? "vec4<f32>" : "f32";
  if (src === "f32") {
    return `${decl(ret)}\nfn ld${X}(i: u32) -> ${ret} { return ${X}[i]; }`;
  }
  if (src === "f16") {
    return `${
      decl(vec ? "vec4<f16>" : "f16")
    }\nfn ld${X}(i: u32) -> ${ret} { return ${ret}(${X}[i]); }`;
  }
  const W = TEXTURE_WIDTH, lw = Math.log2(W);
  const tex = `@group(0) @binding(${binding}) var ${X}: texture_2d<f32>;`;
  return vec
    ? `${tex}\nfn ld${X}(i: u32) -> vec4<f32> {
  return textureLoad(${X}, vec2<u32>(i & ${W - 1}u, i >> ${lw}u), 0);
}`
    : `${tex}\nfn ld${X}(i: u32) -> f32 {
  return textureLoad(${X}, vec2<u32>((i >> 2u) & ${W - 1}u, i >> ${lw + 2}u), 0)[i & 3u];
}`;
}

function bindings(v: Variant): string {
  const ty = (vec: boolean) => (vec ? "vec4<f32>" : "f32");
  const lines = [
    v.srcA === "f16" || v.srcB === "f16" ? `enable f16;\n${HEADER}` : HEADER,
    operand("A", 1, v.a[0] === "v", v.srcA),
    operand("B", 2, v.b[0] === "v", v.srcB),
    `@group(0) @binding(3) var<storage, read_write> C: array<${ty(v.cv)}>;`,
  ];
  if (v.bias) lines.push("@group(0) @binding(4) var<storage, read> bias: array<f32>;");
  if (v.pre) {
    lines.push(
      `@group(0) @binding(${v.bias ? 5 : 4}) var<storage, read_write> Z: array<${ty(v.cv)}>;`,
    );
  }
  if (v.act === "gelu" || v.act === "quick_gelu") lines.push(ACTIVATION_WGSL);
  return `${lines.join("\n")}
fn pre(x: f32, bias_n: f32) -> f32 { return x * p.alpha + bias_n; }
fn act(v: f32) -> f32 { return ${activationExpr(v.act, "v", "p.slope")}; }
fn epi(x: f32, bias_n: f32) -> f32 { return act(pre(x, bias_n)); }`;
}

/**
 * Stores of a TM x TN block held in scalars `c{i}_{j}`: accumulator (i, j) belongs to row
 * `row(i)` and column `col(j)` (WGSL expressions); columns 4g..4g+3 must be consecutive when C is
 * stored as vec4.
 */
function stores(
  v: Variant,
  TM: number,
  TN: number,
  row: (i: number) => string = (i) => `m0 + ${i}u`,
  col: (j: number) => string = (j) => `n0 + ${j}u`,
): string {
  const out: string[] = [];
  // One bias load per column, not per output: on llvmpipe every load is a per-lane loop, and
  // TM*TN of them made a 32x32 block take ~15 s to compile.
  for (let j = 0; j < TN; j++) {
    out.push(`let bias${j} = ${v.bias ? `bias[min(${col(j)}, p.N - 1u)]` : "0.0"};`);
  }
  for (let i = 0; i < TM; i++) {
    out.push(`if (${row(i)} < p.M) {`);
    out.push(`  let r${i} = (z * p.M + ${row(i)}) * p.N;`);
    if (v.cv && v.pre) {
      for (let j = 0; j < TN; j += 4) {
        const z = [0, 1, 2, 3].map((q) => `pre(c${i}_${j + q}, bias${j + q})`);
        out.push(
          `  if (${col(j)} < p.N) { let o = (r${i} + ${col(j)}) / 4u; let z = vec4<f32>(${z}); ` +
            `Z[o] = z; C[o] = vec4<f32>(act(z.x), act(z.y), act(z.z), act(z.w)); }`,
        );
      }
    } else if (v.cv) {
      for (let j = 0; j < TN; j += 4) {
        const e = [0, 1, 2, 3].map((q) => `epi(c${i}_${j + q}, bias${j + q})`);
        out.push(`  if (${col(j)} < p.N) { C[(r${i} + ${col(j)}) / 4u] = vec4<f32>(${e}); }`);
      }
    } else if (v.pre) {
      for (let j = 0; j < TN; j++) {
        out.push(
          `  if (${col(j)} < p.N) { let o = r${i} + ${
            col(j)
          }; let z = pre(c${i}_${j}, bias${j}); ` +
            `Z[o] = z; C[o] = act(z); }`,
        );
      }
    } else {
      for (let j = 0; j < TN; j++) {
        out.push(`  if (${col(j)} < p.N) { C[r${i} + ${col(j)}] = epi(c${i}_${j}, bias${j}); }`);
      }
    }
    out.push("}");
  }
  return out.join("\n  ");
}

/**
 * Loads and FMAs of one step of the register kernel over k .. k+KS-1: a{i}_{kk} = A(m0+i, k+kk),
 * b{kk}_{j} = B(k+kk, n0+j), then c{i}_{j} += sum over kk, each accumulator's KS FMAs in a row
 * (llvmpipe keeps the accumulator in a register for them instead of reloading it per FMA).
 */
function registerStep(v: Variant, KS: number): string[] {
  const { TM, TN } = v.t;
  const body: string[] = [];
  const aName: string[][] = [], bName: string[][] = [];
  for (let i = 0; i < TM; i++) aName.push([]);
  for (let kk = 0; kk < KS; kk++) bName.push([]);
  if (v.a === "vk") {
    for (let i = 0; i < TM; i++) {
      for (let u = 0; u < KS / 4; u++) {
        body.push(`let av${i}_${u} = ldA(ra${i} + k / 4u + ${u}u);`);
        for (let q = 0; q < 4; q++) aName[i][4 * u + q] = `av${i}_${u}[${q}]`;
      }
    }
  } else if (v.a === "vm") {
    for (let kk = 0; kk < KS; kk++) {
      body.push(`let ak${kk} = (b * p.sab + (k + ${kk}u) * p.sak) / 4u;`);
      for (let i = 0; i < TM; i += 4) {
        body.push(`let av${i}_${kk} = ldA(ak${kk} + mq${i});`);
        for (let q = 0; q < 4; q++) aName[i + q][kk] = `av${i}_${kk}[${q}]`;
      }
    }
  } else {
    for (let i = 0; i < TM; i++) {
      for (let kk = 0; kk < KS; kk++) {
        body.push(`let a${i}_${kk} = ldA(ra${i} + (k + ${kk}u) * p.sak);`);
        aName[i][kk] = `a${i}_${kk}`;
      }
    }
  }
  if (v.b === "vn") {
    for (let kk = 0; kk < KS; kk++) {
      body.push(`let bk${kk} = ((k + ${kk}u) * p.sbk) / 4u;`);
      for (let j = 0; j < TN; j += 4) {
        body.push(`let bv${kk}_${j} = ldB(cb${j} + bk${kk});`);
        for (let q = 0; q < 4; q++) bName[kk][j + q] = `bv${kk}_${j}[${q}]`;
      }
    }
  } else if (v.b === "vk") {
    for (let j = 0; j < TN; j++) {
      for (let u = 0; u < KS / 4; u++) {
        body.push(`let bv${j}_${u} = ldB(cb${j} + k / 4u + ${u}u);`);
        for (let q = 0; q < 4; q++) bName[4 * u + q][j] = `bv${j}_${u}[${q}]`;
      }
    }
  } else {
    for (let kk = 0; kk < KS; kk++) {
      for (let j = 0; j < TN; j++) {
        body.push(`let b${kk}_${j} = ldB(cb${j} + (k + ${kk}u) * p.sbk);`);
        bName[kk][j] = `b${kk}_${j}`;
      }
    }
  }
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN; j++) {
      for (let kk = 0; kk < KS; kk++) {
        body.push(`c${i}_${j} = fma(${aName[i][kk]}, ${bName[kk][j]}, c${i}_${j});`);
      }
    }
  }
  return body;
}

/**
 * The register kernel. With WY == 1 the row block depends only on the workgroup id, so A's
 * addresses are the same in every lane (uniform) and llvmpipe loads them once.
 */
function registerCode(v: Variant): string {
  const { TM, TN, WX, WY } = v.t;
  // k values per loop step: a multiple of 4 (vec4 loads along k need K % 4 == 0, which the
  // modes guarantee); the remainder runs in a second loop.
  const KS = 4 * (v.t.KU ?? 1);
  const L: string[] = [];
  // Which grid axis walks the row blocks (see MatmulTile.rowsFirst).
  const wgM = v.t.rowsFirst ? "(wg.x + p.wx0)" : "(wg.y + p.wy0)";
  const wgN = v.t.rowsFirst ? "(wg.y + p.wy0)" : "(wg.x + p.wx0)";
  const rowOf = WY === 1 ? `${wgM} * ${TM}u` : `(${wgM} * ${WY}u + lid.y) * ${TM}u`;
  // Grid z walks batch x k-slices (split-k: slice z % S covers k in [kbeg, kend)).
  L.push(`let z = wg.z + p.wz0; let b = z / p.S;`);
  L.push(`let kbeg = (z % p.S) * p.kz; let kend = min(p.K, kbeg + p.kz);`);
  L.push(`let m0 = ${rowOf};`);
  L.push(`let n0 = (${wgN} * ${WX}u + lid.x) * ${TN}u;`);
  // Per-row / per-column base addresses (clamped: out-of-range results are never stored).
  if (v.a === "vm") {
    for (let i = 0; i < TM; i += 4) L.push(`let mq${i} = min((m0 + ${i}u) / 4u, p.M / 4u - 1u);`);
  } else {
    for (let i = 0; i < TM; i++) {
      const base = `b * p.sab + min(m0 + ${i}u, p.M - 1u) * p.sam`;
      L.push(`let ra${i} = ${v.a === "vk" ? `(${base}) / 4u` : base};`);
    }
  }
  if (v.b === "vn") {
    for (let j = 0; j < TN; j += 4) {
      L.push(`let cb${j} = (b * p.sbb) / 4u + min((n0 + ${j}u) / 4u, p.N / 4u - 1u);`);
    }
  } else {
    for (let j = 0; j < TN; j++) {
      const base = `b * p.sbb + min(n0 + ${j}u, p.N - 1u) * p.sbn`;
      L.push(`let cb${j} = ${v.b === "vk" ? `(${base}) / 4u` : base};`);
    }
  }
  for (let i = 0; i < TM; i++) {
    L.push(Array.from({ length: TN }, (_, j) => `var c${i}_${j} = 0.0;`).join(" "));
  }
  const main = registerStep(v, KS);
  // Remainder of K after the unrolled loop: vec4-along-k modes step 4 (K % 4 == 0), others 1.
  const tailKS = v.a === "vk" || v.b === "vk" ? 4 : 1;
  const tail = KS > tailKS ? registerStep(v, tailKS) : null;
  return /* wgsl */ `${bindings(v)}
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${L.join("\n  ")}
  var k = kbeg;
  for (; k + ${KS}u <= kend; k += ${KS}u) {
    ${main.join("\n    ")}
  }
  ${tail ? `for (; k < kend; k += ${tailKS}u) {\n    ${tail.join("\n    ")}\n  }` : ""}
  ${stores(v, TM, TN)}
}`;
}

/**
 * The workgroup-memory kernel: per step of BK, the WX*WY invocations copy a BM x BK tile of A
 * (stored k-major, As[kk][m]) and a BK x BN tile of B (Bs[kk][n]) with zero fill outside the
 * matrices, then each accumulates its TM x TN block (rows ty*TM.., columns tx*TN..).
 */
function sharedCode(v: Variant): string {
  const { TM, TN, WX, WY } = v.t;
  const BK = v.t.BK ?? 8;
  const BM = WY * TM, BN = WX * TN, T = WX * WY;
  // vec4 tiles in workgroup memory when each invocation's block is made of whole vec4s.
  const vec = TM % 4 === 0 && TN % 4 === 0;
  const L: string[] = [];
  // Grid z walks batch x k-slices (split-k: slice z % S covers k in [kbeg, kend)).
  L.push(`let z = wg.z + p.wz0; let b = z / p.S;`);
  L.push(`let kbeg = (z % p.S) * p.kz; let kend = min(p.K, kbeg + p.kz);`);
  L.push(`let tx = lid.x; let ty = lid.y; let li = ty * ${WX}u + tx;`);
  L.push(`let mt = (wg.y + p.wy0) * ${BM}u; let nt = (wg.x + p.wx0) * ${BN}u;`);
  /** Store scalar `val` at element `idx` of tile `arr` (a vec4 array when `vec`). */
  const put = (arr: string, idx: string, val: string) =>
    vec ? `{ let i_ = ${idx}; ${arr}[i_ / 4u][i_ % 4u] = ${val}; }` : `${arr}[${idx}] = ${val};`;
  // ---- global -> workgroup memory, per operand; `e` enumerates the tile's elements/vec4s.
  const loadA: string[] = [];
  if (v.a === "vk") {
    const n = (BM * BK) / 4;
    loadA.push(`for (var e = li; e < ${n}u; e += ${T}u) {`);
    loadA.push(`  let row = e / ${BK / 4}u; let kq = e % ${BK / 4}u;`);
    loadA.push(`  let m = mt + row; let k = k0 + kq * 4u;`);
    loadA.push(`  var x = vec4<f32>();`);
    loadA.push(`  if (m < p.M && k < kend) { x = ldA((b * p.sab + m * p.sam + k) / 4u); }`);
    loadA.push(
      `  for (var q = 0u; q < 4u; q++) { ${put("As", `(kq * 4u + q) * ${BM}u + row`, "x[q]")} }`,
    );
    loadA.push(`}`);
  } else if (v.a === "vm") {
    const n = (BM * BK) / 4;
    loadA.push(`for (var e = li; e < ${n}u; e += ${T}u) {`);
    loadA.push(`  let kk = e / ${BM / 4}u; let mq = e % ${BM / 4}u;`);
    loadA.push(`  let m = mt + mq * 4u; let k = k0 + kk;`);
    loadA.push(`  var x = vec4<f32>();`);
    loadA.push(`  if (m < p.M && k < kend) { x = ldA((b * p.sab + k * p.sak + m) / 4u); }`);
    loadA.push(
      `  ${
        vec
          ? `As[kk * ${BM / 4}u + mq] = x;`
          : `for (var q = 0u; q < 4u; q++) { As[kk * ${BM}u + mq * 4u + q] = x[q]; }`
      }`,
    );
    loadA.push(`}`);
  } else {
    // Consecutive invocations read consecutive addresses along the contiguous axis.
    const idx = v.a === "sk"
      ? `let row = e / ${BK}u; let kk = e % ${BK}u;`
      : `let kk = e / ${BM}u; let row = e % ${BM}u;`;
    loadA.push(`for (var e = li; e < ${BM * BK}u; e += ${T}u) {`);
    loadA.push(`  ${idx}`);
    loadA.push(`  let m = mt + row; let k = k0 + kk;`);
    loadA.push(`  var x = 0.0;`);
    loadA.push(`  if (m < p.M && k < kend) { x = ldA(b * p.sab + m * p.sam + k * p.sak); }`);
    loadA.push(`  ${put("As", `kk * ${BM}u + row`, "x")}`);
    loadA.push(`}`);
  }
  const loadB: string[] = [];
  if (v.b === "vn") {
    const n = (BN * BK) / 4;
    loadB.push(`for (var e = li; e < ${n}u; e += ${T}u) {`);
    loadB.push(`  let kk = e / ${BN / 4}u; let nq = e % ${BN / 4}u;`);
    loadB.push(`  let n = nt + nq * 4u; let k = k0 + kk;`);
    loadB.push(`  var x = vec4<f32>();`);
    loadB.push(`  if (n < p.N && k < kend) { x = ldB((b * p.sbb + k * p.sbk + n) / 4u); }`);
    loadB.push(
      `  ${
        vec
          ? `Bs[kk * ${BN / 4}u + nq] = x;`
          : `for (var q = 0u; q < 4u; q++) { Bs[kk * ${BN}u + nq * 4u + q] = x[q]; }`
      }`,
    );
    loadB.push(`}`);
  } else if (v.b === "vk") {
    const n = (BN * BK) / 4;
    loadB.push(`for (var e = li; e < ${n}u; e += ${T}u) {`);
    loadB.push(`  let col = e / ${BK / 4}u; let kq = e % ${BK / 4}u;`);
    loadB.push(`  let n = nt + col; let k = k0 + kq * 4u;`);
    loadB.push(`  var x = vec4<f32>();`);
    loadB.push(`  if (n < p.N && k < kend) { x = ldB((b * p.sbb + n * p.sbn + k) / 4u); }`);
    loadB.push(
      `  for (var q = 0u; q < 4u; q++) { ${put("Bs", `(kq * 4u + q) * ${BN}u + col`, "x[q]")} }`,
    );
    loadB.push(`}`);
  } else {
    const idx = v.b === "sk"
      ? `let col = e / ${BK}u; let kk = e % ${BK}u;`
      : `let kk = e / ${BN}u; let col = e % ${BN}u;`;
    loadB.push(`for (var e = li; e < ${BN * BK}u; e += ${T}u) {`);
    loadB.push(`  ${idx}`);
    loadB.push(`  let n = nt + col; let k = k0 + kk;`);
    loadB.push(`  var x = 0.0;`);
    loadB.push(`  if (n < p.N && k < kend) { x = ldB(b * p.sbb + k * p.sbk + n * p.sbn); }`);
    loadB.push(`  ${put("Bs", `kk * ${BN}u + col`, "x")}`);
    loadB.push(`}`);
  }
  const acc: string[] = [];
  for (let i = 0; i < TM; i++) {
    acc.push(Array.from({ length: TN }, (_, j) => `var c${i}_${j} = 0.0;`).join(" "));
  }
  const inner: string[] = [];
  let row: (i: number) => string, col: (j: number) => string;
  if (vec) {
    // Interleaved: invocation (tx, ty) owns row groups g*WY+ty and column groups g*WX+tx (4 wide),
    // so neighbouring invocations read neighbouring vec4s of Bs (no bank conflicts) and the
    // same vec4 of As (a broadcast).
    for (let g = 0; g < TM / 4; g++) {
      inner.push(`let a${g} = As[kk * ${BM / 4}u + ${g * WY}u + ty];`);
      L.push(`let mr${g} = mt + (${g * WY}u + ty) * 4u;`);
    }
    for (let g = 0; g < TN / 4; g++) {
      inner.push(`let b${g} = Bs[kk * ${BN / 4}u + ${g * WX}u + tx];`);
      L.push(`let nc${g} = nt + (${g * WX}u + tx) * 4u;`);
    }
    for (let i = 0; i < TM; i++) {
      for (let j = 0; j < TN; j++) {
        inner.push(
          `c${i}_${j} = fma(a${i >> 2}[${i & 3}], b${j >> 2}[${j & 3}], c${i}_${j});`,
        );
      }
    }
    row = (i) => `mr${i >> 2} + ${i & 3}u`;
    col = (j) => `nc${j >> 2} + ${j & 3}u`;
  } else {
    for (let i = 0; i < TM; i++) inner.push(`let a${i} = As[kk * ${BM}u + ty * ${TM}u + ${i}u];`);
    for (let j = 0; j < TN; j++) inner.push(`let b${j} = Bs[kk * ${BN}u + tx * ${TN}u + ${j}u];`);
    for (let i = 0; i < TM; i++) {
      for (let j = 0; j < TN; j++) inner.push(`c${i}_${j} = fma(a${i}, b${j}, c${i}_${j});`);
    }
    L.push(`let m0 = mt + ty * ${TM}u; let n0 = nt + tx * ${TN}u;`);
    row = (i) => `m0 + ${i}u`;
    col = (j) => `n0 + ${j}u`;
  }
  const arr = (n: number) => (vec ? `array<vec4<f32>, ${n / 4}>` : `array<f32, ${n}>`);
  const db = v.t.double ?? false;
  // Double-buffered: two copies of each tile; the next tile is staged while this one is used.
  const decl = db
    ? `var<workgroup> As: array<${arr(BM * BK)}, 2>;\nvar<workgroup> Bs: array<${arr(BN * BK)}, 2>;`
    : `var<workgroup> As: ${arr(BM * BK)};\nvar<workgroup> Bs: ${arr(BN * BK)};`;
  const stage = (buf: string) =>
    [...loadA, ...loadB].join("\n    ").replaceAll("As[", `As${buf}[`).replaceAll(
      "Bs[",
      `Bs${buf}[`,
    );
  const body = db
    ? `{ let k0 = kbeg; ${stage("[0]")} }
  workgroupBarrier();
  var cb = 0u;
  for (var kt = kbeg; kt < kend; kt += ${BK}u) {
    if (kt + ${BK}u < kend) {
      let k0 = kt + ${BK}u;
      ${stage("[1u - cb]")}
    }
    for (var kk = 0u; kk < ${BK}u; kk++) {
      ${inner.join("\n      ").replaceAll("As[", "As[cb][").replaceAll("Bs[", "Bs[cb][")}
    }
    workgroupBarrier(); // this tile is used up, the next one is staged
    cb = 1u - cb;
  }`
    : `for (var k0 = kbeg; k0 < kend; k0 += ${BK}u) {
    ${stage("")}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
      ${inner.join("\n      ")}
    }
    workgroupBarrier();
  }`;
  return /* wgsl */ `${bindings(v)}
${decl}
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  ${L.join("\n  ")}
  ${acc.join("\n  ")}
  ${body}
  ${stores(v, TM, TN, row, col)}
}`;
}

export function variantOf(
  d: MatmulDims,
  t: MatmulTile,
  bias: boolean,
  act: MatmulActivation,
  pre: boolean,
  srcA: OperandSource = "f32",
  srcB: OperandSource = "f32",
): Variant {
  const { a, b } = matmulModes(d, t);
  const cv = d.N % 4 === 0 && t.TN % 4 === 0;
  return { t, a, b, cv, bias, act, pre, srcA, srcB };
}

/** A variant's name: its family, load modes and epilogue, and the tile (unique per source). */
function variantName(v: Variant): string {
  const t = v.t;
  const shape = `${t.TM}x${t.TN}_${t.WX}x${t.WY}` + (t.kind === "shared" ? `_k${t.BK ?? 8}` : "") +
    (t.rowsFirst ? "_rows" : "") + (t.KU && t.KU > 1 ? `_u${t.KU}` : "") +
    (t.double && t.kind === "shared" ? "_db" : "");
  return `matmul_${t.kind ?? "register"}_${v.a}_${v.b}${v.cv ? "_c4" : ""}_${shape}` +
    (v.bias ? "_bias" : "") + (v.act === "none" ? "" : `_${v.act}`) + (v.pre ? "_pre" : "") +
    (v.srcA === "f32" ? "" : `_${v.srcA}A`) + (v.srcB === "f32" ? "" : `_${v.srcB}B`);
}

const cached = codeCache();

/** The WGSL of a variant, generated once per variant (a 32x32 tile is ~100 KB of source). */
export function variantCode(v: Variant): { name: string; code: string } {
  const name = variantName(v);
  const code = cached(name, () => (v.t.kind === "shared" ? sharedCode(v) : registerCode(v)));
  return { name, code };
}

/** The sum-of-slices kernel of split-k, with the epilogue. */
export function splitSumCode(bias: boolean, act: MatmulActivation, pre: boolean): string {
  const lines = [
    "struct P { n: u32, MN: u32, N: u32, S: u32, alpha: f32, slope: f32 }",
    "@group(0) @binding(0) var<uniform> p: P;",
    "@group(0) @binding(1) var<storage, read> part: array<f32>;",
    "@group(0) @binding(2) var<storage, read_write> C: array<f32>;",
  ];
  if (bias) lines.push("@group(0) @binding(3) var<storage, read> bias: array<f32>;");
  if (pre) {
    lines.push(`@group(0) @binding(${bias ? 4 : 3}) var<storage, read_write> Z: array<f32>;`);
  }
  if (act === "gelu" || act === "quick_gelu") lines.push(ACTIVATION_WGSL);
  return /* wgsl */ `${lines.join("\n")}
fn act(v: f32) -> f32 { return ${activationExpr(act, "v", "p.slope")}; }
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * 256u + li;
  if (i >= p.n) { return; }
  let b = i / p.MN; let r = i % p.MN;
  var s = 0.0;
  for (var t = 0u; t < p.S; t++) { s += part[(b * p.S + t) * p.MN + r]; }
  let z = s * p.alpha + ${bias ? "bias[r % p.N]" : "0.0"};
  ${pre ? "Z[i] = z;" : ""}
  C[i] = act(z);
}`;
}
