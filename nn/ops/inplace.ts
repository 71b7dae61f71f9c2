/**
 * In-place writes into an existing tensor: copy another tensor's values into it, or write host
 * values into it. They keep the tensor object (and its buffer), which is what loading weights,
 * merging LoRA adapters and re-initialising a layer need: an optimiser or a model holding the
 * tensor stays valid. They record no gradient (overwriting a value has none): use them on leaf
 * tensors, typically under `noGrad`. Everything above nn/ writes tensors through these, never
 * through a GPU buffer.
 */
import { mapKernel } from "../../kernels/elementwise.ts";
import { upload } from "../../kernels/runtime.ts";
import type { Tensor } from "../tensor.ts";

/**
 * Copies `src`'s values into `dst`, element by element in row-major order: same dtype and same
 * number of elements (the shapes may differ, e.g. a weight and its flattened update). One GPU
 * copy, recorded like any op (no wait). Copying a tensor onto itself does nothing.
 * @throws RangeError when the element counts differ, TypeError when the dtypes do.
 */
export function copyInto(dst: Tensor, src: Tensor): void {
  if (dst.size !== src.size) {
    throw new RangeError(`copyInto: ${src} has ${src.size} elements, ${dst} has ${dst.size}`);
  }
  if (dst.dtype !== src.dtype) throw new TypeError(`copyInto: ${src} into ${dst}`);
  if (dst === src || dst.size === 0) return;
  const flat = { strides: [1], offset: 0 };
  mapKernel(
    "copy_into",
    "a",
    [{ buf: src.buf, ...flat }],
    { buf: dst.buf, ...flat },
    [dst.size],
    dst.dtype === "int32" ? "i32" : "f32",
  );
}

/**
 * Writes host values into `t`: `data` replaces elements [offset, offset + data.length) in
 * row-major order (offset 0 and the full length: the whole tensor). A Float32Array goes into a
 * float32 tensor, an Int32Array into an int32 one. The write is ordered after every op already
 * recorded that uses `t` and before every later one.
 * @throws TypeError for an array of the other type, RangeError when the values do not fit.
 */
export function writeTensor(t: Tensor, data: Float32Array | Int32Array, offset = 0): void {
  const want = t.dtype === "int32" ? Int32Array : Float32Array;
  if (!(data instanceof want)) {
    throw new TypeError(`writeTensor: ${t} takes a ${want.name}, got a ${data.constructor.name}`);
  }
  if (!Number.isInteger(offset) || offset < 0 || offset + data.length > t.size) {
    throw new RangeError(
      `writeTensor: ${data.length} values at offset ${offset} do not fit ${t} (${t.size} elements)`,
    );
  }
  if (data.length > 0) upload(t.buf, data, offset * 4);
}
