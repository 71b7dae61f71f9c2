/**
 * Batched matrix product C[b] = op(A[b]) op(B[b]) (+ bias) with arbitrary strides, so transposes
 * and broadcast batches cost nothing: A's element (m, k) of batch b lives at
 * `b * sab + m * sam + k * sak`, B's (k, n) at `b * sbb + k * sbk + n * sbn`, C is contiguous
 * [batch, M, N].
 *
 * Register-blocked: each invocation computes a TM x TN block of C, reading TM values of A and TN of
 * B per step of k; the block shape is a parameter so each adapter can get its own.
 */
import { type Buf, dispatch } from "./runtime.ts";
import { Params } from "./wgsl.ts";

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

/** Tile parameters: the workgroup is WX x WY invocations, each computing TM x TN outputs. */
export interface MatmulTile {
  TM: number;
  TN: number;
  WX: number;
  WY: number;
}

/** A block shape that runs well on most adapters; `kernels/tune.ts` may choose another. */
export const DEFAULT_TILE: MatmulTile = { TM: 4, TN: 4, WX: 8, WY: 8 };

function code(t: MatmulTile, bias: boolean): string {
  const { TM, TN, WX, WY } = t;
  return /* wgsl */ `
struct P { M: u32, N: u32, K: u32, sab: u32, sam: u32, sak: u32, sbb: u32, sbk: u32, sbn: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
${bias ? "@group(0) @binding(4) var<storage, read> bias: array<f32>;" : ""}
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m0 = gid.y * ${TM}u;
  let n0 = gid.x * ${TN}u;
  if (m0 >= p.M || n0 >= p.N) { return; }
  let b = gid.z;
  var acc: array<array<f32, ${TN}>, ${TM}>;
  var ra: array<u32, ${TM}>;
  var rb: array<u32, ${TN}>;
  // Clamp out-of-range rows/columns to a valid address; their results are never stored.
  for (var i = 0u; i < ${TM}u; i++) { ra[i] = b * p.sab + min(m0 + i, p.M - 1u) * p.sam; }
  for (var j = 0u; j < ${TN}u; j++) { rb[j] = b * p.sbb + min(n0 + j, p.N - 1u) * p.sbn; }
  for (var k = 0u; k < p.K; k++) {
    var a: array<f32, ${TM}>;
    var bv: array<f32, ${TN}>;
    for (var i = 0u; i < ${TM}u; i++) { a[i] = A[ra[i] + k * p.sak]; }
    for (var j = 0u; j < ${TN}u; j++) { bv[j] = B[rb[j] + k * p.sbk]; }
    for (var i = 0u; i < ${TM}u; i++) {
      for (var j = 0u; j < ${TN}u; j++) { acc[i][j] = fma(a[i], bv[j], acc[i][j]); }
    }
  }
  for (var i = 0u; i < ${TM}u; i++) {
    let m = m0 + i;
    if (m >= p.M) { break; }
    for (var j = 0u; j < ${TN}u; j++) {
      let n = n0 + j;
      if (n >= p.N) { break; }
      C[(b * p.M + m) * p.N + n] = acc[i][j]${bias ? " + bias[n]" : ""};
    }
  }
}`;
}

/**
 * Record C = A B (+ bias[N]) for the given dims. `c` must hold batch * M * N floats.
 */
export function matmulKernel(
  a: Buf,
  b: Buf,
  c: Buf,
  d: MatmulDims,
  bias: Buf | null = null,
  tile: MatmulTile = DEFAULT_TILE,
): void {
  if (d.batch * d.M * d.N === 0) return;
  const p = new Params().u32(d.M, d.N, d.K, d.sab, d.sam, d.sak, d.sbb, d.sbk, d.sbn).build();
  const bufs = bias ? [a, b, c, bias] : [a, b, c];
  dispatch(
    bias ? "matmul_bias" : "matmul",
    code(tile, bias !== null),
    bufs,
    p,
    [Math.ceil(d.N / (tile.TN * tile.WX)), Math.ceil(d.M / (tile.TM * tile.WY)), d.batch],
  );
}
