/**
 * Float64 reference of the gradient-clipping kernels (`optim.ts`): torch.nn.utils.clip_grad_norm_
 * on CPU arrays. (The optimiser updates are checked against PyTorch fixtures instead:
 * tests/fixtures/optim_torch.json.) CPU only, for tests and benchmarks.
 */

/**
 * The total L2 norm of `grads` and the gradients scaled by min(1, maxNorm / (norm + 1e-6)).
 * A non-finite norm is NaN and leaves the gradients as they are (the engine's rule, see
 * nn/optim.ts; float64 overflows far later than the kernel's f32).
 */
export function clipGradNormRef(
  grads: ArrayLike<number>[],
  maxNorm: number,
): { norm: number; out: Float64Array[] } {
  let sq = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
  const norm = Number.isFinite(sq) ? Math.sqrt(sq) : NaN;
  const s = Number.isFinite(norm) ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
  return { norm, out: grads.map((g) => Float64Array.from(g, (v) => v * s)) };
}
