/**
 * Float64 reference of the fused attention kernels (`attention.ts`): softmax(scale q k^T + causal
 * mask) v and its gradients, by the definition. CPU only, for tests and benchmarks.
 */

/** Sizes of an attention call on [B, H, T, D] tensors. */
export interface AttentionRefDims {
  B: number;
  H: number;
  Tq: number;
  Tk: number;
  D: number;
  /** Query i sees keys j <= i (top-left aligned, as PyTorch's `is_causal`). */
  causal: boolean;
  /** Default 1 / sqrt(D). */
  scale?: number;
}

/** Output and gradients of {@link attentionRef}. */
export interface AttentionRef {
  o: Float64Array;
  dq: Float64Array;
  dk: Float64Array;
  dv: Float64Array;
}

/**
 * Float64 attention of q [B, H, Tq, D], k and v [B, H, Tk, D], and its gradients for upstream
 * gradient `g` (skipped when null). `rows` restricts the work to those query rows (the others are
 * left zero), for long sequences.
 */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  g: ArrayLike<number> | null,
  c: AttentionRefDims,
  rows?: number[],
): AttentionRef {
  const { B, H, Tq, Tk, D, causal } = c;
  const sc = c.scale ?? 1 / Math.sqrt(D);
  const o = new Float64Array(B * H * Tq * D);
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const p = new Float64Array(Tk), dp = new Float64Array(Tk);
  for (let bh = 0; bh < B * H; bh++) {
    const qb = bh * Tq * D, kb = bh * Tk * D;
    for (const i of rows ?? [...Array(Tq).keys()]) {
      const n = causal ? Math.min(Tk, i + 1) : Tk;
      let m = -Infinity;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let e = 0; e < D; e++) s += q[qb + i * D + e] * k[kb + j * D + e];
        p[j] = s * sc;
        m = Math.max(m, p[j]);
      }
      let l = 0;
      for (let j = 0; j < n; j++) l += p[j] = Math.exp(p[j] - m);
      for (let j = 0; j < n; j++) p[j] /= l;
      for (let e = 0; e < D; e++) {
        let s = 0;
        for (let j = 0; j < n; j++) s += p[j] * v[kb + j * D + e];
        o[qb + i * D + e] = s;
      }
      if (!g) continue;
      let dot = 0;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let e = 0; e < D; e++) s += g[qb + i * D + e] * v[kb + j * D + e];
        dp[j] = s;
        dot += p[j] * s;
      }
      for (let j = 0; j < n; j++) {
        const ds = p[j] * (dp[j] - dot) * sc;
        for (let e = 0; e < D; e++) {
          dq[qb + i * D + e] += ds * k[kb + j * D + e];
          dk[kb + j * D + e] += ds * q[qb + i * D + e];
          dv[kb + j * D + e] += p[j] * g[qb + i * D + e];
        }
      }
    }
  }
  return { o, dq, dk, dv };
}
