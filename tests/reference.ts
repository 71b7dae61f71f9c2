/**
 * Float64 CPU references for the kernels. Straightforward loops: they are the definition the GPU
 * kernels are checked against.
 */

/** C[b] = op(A[b]) op(B[b]) for row-major inputs. */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  batch: number,
  M: number,
  N: number,
  K: number,
  tA = false,
  tB = false,
  bias?: ArrayLike<number>,
): Float64Array {
  const c = new Float64Array(batch * M * N);
  for (let q = 0; q < batch; q++) {
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = bias ? bias[n] : 0;
        for (let k = 0; k < K; k++) {
          const av = tA ? a[q * M * K + k * M + m] : a[q * M * K + m * K + k];
          const bv = tB ? b[q * K * N + n * K + k] : b[q * K * N + k * N + n];
          s += av * bv;
        }
        c[q * M * N + m * N + n] = s;
      }
    }
  }
  return c;
}
