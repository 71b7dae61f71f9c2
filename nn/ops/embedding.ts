/**
 * Differentiable embedding lookup: rows of a [V, D] table gathered by int32 ids.
 */
import { embeddingBackwardKernel, embeddingKernel } from "../../kernels/embedding.ts";
import { record } from "../autograd.ts";
import { empty, type Tensor, zeros } from "../tensor.ts";

/**
 * `weight[ids]`: weight [V, D] (float32), ids int32 of any shape [...] -> [..., D].
 * Out-of-range ids (< 0 or >= V) are refused: they are checked on the GPU (no readback), and the
 * next readback or `sync()` throws `RangeError("embedding: id 50000 not in [0, 49408) ...")`
 * (until then such a row reads as zeros and gets no gradient). The gradient to `weight` is a deterministic scatter-add: rows that occur
 * several times get their gradients summed in position order; rows that never occur get zeros.
 * `ids` gets no gradient. Throws a RangeError/TypeError on a wrong rank or dtype.
 */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  if (weight.rank !== 2 || weight.dtype !== "float32") {
    throw new RangeError(`embedding: weight must be float32 [V, D], got ${weight}`);
  }
  if (ids.dtype !== "int32") throw new TypeError(`embedding: ids must be int32, got ${ids}`);
  const [V, D] = weight.shape;
  const n = ids.size;
  const out = empty([...ids.shape, D]);
  const what = `ids [${ids.shape}] into ${weight.name || "a table"} [${V}, ${D}]`;
  embeddingKernel(weight.buf, ids.buf, out.buf, n, V, D, what);
  return record(out, "embedding", [weight], (g) => {
    const dW = zeros([V, D]);
    const link = empty([n], "int32");
    embeddingBackwardKernel(g.buf, ids.buf, link.buf, dW.buf, n, V, D);
    link.dispose();
    return [dW];
  });
}
