/**
 * Float64 reference of the patchify kernels (`patch.ts`) as the operation they implement: a
 * convolution whose stride equals its kernel (a ViT's patch embedding). CPU only, for tests and
 * benchmarks.
 */

/**
 * conv2d(x [B, C, H, W], w [E, C, p, p], bias [E], stride = kernel = p), then
 * flatten(2).transpose(1, 2): [B, nH * nW, E], by the definition. Pixels past nH * p or nW * p
 * are dropped, as in PyTorch. With an identity weight (E = C p p) this is patchify itself.
 */
export function patchEmbedRef(
  x: ArrayLike<number>,
  [B, C, H, W]: readonly number[],
  w: ArrayLike<number>,
  E: number,
  bias: ArrayLike<number> | null,
  p: number,
): Float64Array {
  const nh = Math.floor(H / p), nw = Math.floor(W / p);
  const out = new Float64Array(B * nh * nw * E);
  for (let b = 0; b < B; b++) {
    for (let oy = 0; oy < nh; oy++) {
      for (let ox = 0; ox < nw; ox++) {
        for (let e = 0; e < E; e++) {
          let s = bias ? bias[e] : 0;
          for (let c = 0; c < C; c++) {
            for (let ky = 0; ky < p; ky++) {
              for (let kx = 0; kx < p; kx++) {
                s += w[((e * C + c) * p + ky) * p + kx] *
                  x[((b * C + c) * H + oy * p + ky) * W + ox * p + kx];
              }
            }
          }
          out[((b * nh + oy) * nw + ox) * E + e] = s;
        }
      }
    }
  }
  return out;
}
