/**
 * Convolutions with stride equal to the kernel size (a ViT's patch embedding), computed as a
 * patch gather followed by one matrix product, so the backward comes from the gather's inverse
 * and from matmul.
 */
import { type PatchDims, patchifyKernel, unpatchifyKernel } from "../../kernels/patch.ts";
import { record } from "../autograd.ts";
import { empty, type Tensor } from "../tensor.ts";
import { matmul } from "./matmul.ts";
import { reshape } from "./shape.ts";

function patchDims(x: Tensor, p: number, op: string): PatchDims {
  if (x.rank !== 4 || x.dtype !== "float32") {
    throw new RangeError(`${op}: x must be float32 [B, C, H, W], got ${x}`);
  }
  const [b, c, h, w] = x.shape;
  if (!Number.isInteger(p) || p < 1 || p > h || p > w) {
    throw new RangeError(`${op}: patch size ${p} must be an integer in 1..min(H, W) for ${x}`);
  }
  return { b, c, h, w, p };
}

/**
 * Non-overlapping p x p patches as rows: x [B, C, H, W] -> [B, nH * nW, C * p * p] with
 * nH = floor(H / p), nW = floor(W / p) (the remainder is dropped, as PyTorch's Conv2d does).
 * Patches are numbered row-major (py * nW + px); features are ordered (c, ky, kx), the layout of
 * a conv weight [E, C, p, p]. Differentiable in x (dropped pixels get zero gradient).
 */
export function patchify(x: Tensor, p: number): Tensor {
  const d = patchDims(x, p, "patchify");
  const nh = Math.floor(d.h / p), nw = Math.floor(d.w / p);
  const y = empty([d.b, nh * nw, d.c * p * p]);
  patchifyKernel(x.buf, y.buf, d);
  return record(y, "patchify", [x], (g) => {
    const dx = empty(x.shape);
    unpatchifyKernel(g.buf, dx.buf, d);
    return [dx];
  });
}

/**
 * ViT patch embedding: conv2d(x, weight, bias, stride = kernel = p) followed by
 * flatten(2).transpose(1, 2). x [B, C, H, W], weight [E, C, p, p], bias [E] or null ->
 * [B, (H / p) * (W / p), E] (floor division). Computed as patchify(x, p) times weight^T
 * (flattened to [E, C * p * p]) plus bias; differentiable in x, weight and bias.
 */
export function patchEmbed(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  p: number,
): Tensor {
  const d = patchDims(x, p, "patchEmbed");
  if (
    weight.rank !== 4 || weight.shape[1] !== d.c || weight.shape[2] !== p || weight.shape[3] !== p
  ) {
    throw new RangeError(`patchEmbed: weight ${weight} must be [E, ${d.c}, ${p}, ${p}] for ${x}`);
  }
  const E = weight.shape[0];
  if (bias && (bias.rank !== 1 || bias.shape[0] !== E)) {
    throw new RangeError(`patchEmbed: bias ${bias} must be [${E}]`);
  }
  const patches = patchify(x, p);
  const w2 = reshape(weight, [E, d.c * p * p]);
  const y = matmul(patches, w2, { transposeB: true, bias });
  if (!y.requiresGrad) {
    // Nothing will run backward through them: free the intermediates now (with gradients on,
    // y's graph still reads them; they then go with the caller's tidy scope).
    patches.dispose();
    w2.dispose();
  }
  return y;
}
