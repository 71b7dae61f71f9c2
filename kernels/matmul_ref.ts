/**
 * Float64 reference of the batched matmul kernel (`matmul.ts`): C[b] = act(alpha * op(A[b])
 * op(B[b]) + bias) with the same strides, by the definition. CPU only, for tests and benchmarks.
 */
import { activationRef } from "./activation_ref.ts";
import type { MatmulActivation, MatmulDims } from "./matmul.ts";

/** Options of {@link matmulRef}: the kernel's epilogue. */
export interface MatmulRefOptions {
  bias?: ArrayLike<number> | null;
  alpha?: number;
  activation?: MatmulActivation;
  /** Negative slope of `leaky_relu` (default 0.01). */
  slope?: number;
}

/** Layout of dense row-major operands for {@link denseDims}. */
export interface DenseLayout {
  /** A is stored [batch, K, M] (read transposed). */
  transposeA?: boolean;
  /** B is stored [batch, N, K] (read transposed). */
  transposeB?: boolean;
  /** One A shared by every batch (batch stride 0). */
  broadcastA?: boolean;
  /** One B shared by every batch. */
  broadcastB?: boolean;
}

/** The strides of a product of dense row-major operands. */
export function denseDims(
  batch: number,
  M: number,
  N: number,
  K: number,
  l: DenseLayout = {},
): MatmulDims {
  const tA = l.transposeA ?? false, tB = l.transposeB ?? false;
  return {
    batch,
    M,
    N,
    K,
    sab: l.broadcastA ? 0 : M * K,
    sam: tA ? 1 : K,
    sak: tA ? M : 1,
    sbb: l.broadcastB ? 0 : K * N,
    sbk: tB ? 1 : N,
    sbn: tB ? K : 1,
  };
}

/** One entry of the plain product: sum_k A(b, m, k) B(b, k, n), in float64. */
export function matmulEntryRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  d: MatmulDims,
  batch: number,
  m: number,
  n: number,
): number {
  let s = 0;
  const a0 = batch * d.sab + m * d.sam, b0 = batch * d.sbb + n * d.sbn;
  for (let k = 0; k < d.K; k++) s += a[a0 + k * d.sak] * b[b0 + k * d.sbk];
  return s;
}

/** The whole product [batch, M, N] with the epilogue act(alpha * sum + bias[n]). */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  d: MatmulDims,
  opts: MatmulRefOptions = {},
): Float64Array {
  const alpha = opts.alpha ?? 1, act = opts.activation ?? "none", bias = opts.bias ?? null;
  const out = new Float64Array(d.batch * d.M * d.N);
  for (let q = 0; q < d.batch; q++) {
    for (let m = 0; m < d.M; m++) {
      for (let n = 0; n < d.N; n++) {
        const s = alpha * matmulEntryRef(a, b, d, q, m, n) + (bias ? bias[n] : 0);
        out[(q * d.M + m) * d.N + n] = activationRef(act, s, opts.slope);
      }
    }
  }
  return out;
}

/**
 * {@link matmulRef} of dense row-major operands: A [batch, M, K] (or [batch, K, M] with
 * `transposeA`), B [batch, K, N] (or [batch, N, K] with `transposeB`).
 */
export function denseMatmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  batch: number,
  M: number,
  N: number,
  K: number,
  opts: DenseLayout & MatmulRefOptions = {},
): Float64Array {
  return matmulRef(a, b, denseDims(batch, M, N, K, opts), opts);
}
