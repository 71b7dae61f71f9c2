/**
 * Layout ops. Tensors are always contiguous, so `reshape` is a free view and everything else
 * (permute, transpose, slice, concat, broadcastTo) is one strided copy through the map kernel.
 */
import { contiguousStrides, mapKernel } from "../../kernels/elementwise.ts";
import { record } from "../autograd.ts";
import { empty, numel, type Tensor, zeros } from "../tensor.ts";
import { broadcastView, viewOf } from "./elementwise.ts";
import { sumTo } from "./reduce.ts";

const ty = (t: Tensor) => (t.dtype === "int32" ? "i32" : "f32");

/** The same values in a new shape; one dimension may be -1 (inferred). Free (a view). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1);
  const s = shape.map((d) => (d === -1 ? x.size / Math.max(1, numel(known)) : d));
  if (
    numel(s) !== x.size || shape.filter((d) => d === -1).length > 1 || !s.every(Number.isInteger)
  ) {
    throw new RangeError(`reshape: cannot view ${x} as [${shape}]`);
  }
  const y = x.view(s);
  return record(y, "reshape", [x], (g) => [g.view(x.shape)]);
}

/** Reorder the axes: output axis i is input axis `perm[i]`. */
export function permute(x: Tensor, perm: readonly number[]): Tensor {
  if (perm.length !== x.rank || [...perm].sort().some((p, i) => p !== i)) {
    throw new RangeError(`permute: [${perm}] is not a permutation of ${x.rank} axes`);
  }
  const xs = contiguousStrides(x.shape);
  const shape = perm.map((p) => x.shape[p]);
  const y = empty(shape, x.dtype);
  mapKernel(
    "permute",
    "a",
    [{ buf: x.buf, strides: perm.map((p) => xs[p]), offset: 0 }],
    viewOf(y),
    shape,
    ty(x),
  );
  const inverse = perm.map((_, i) => perm.indexOf(i));
  return record(y, "permute", [x], (g) => [permute(g, inverse)]);
}

/** Swap two axes (default: the last two). */
export function transpose(x: Tensor, a = -2, b = -1): Tensor {
  const r = x.rank;
  const perm = [...Array(r).keys()];
  const ia = a < 0 ? a + r : a, ib = b < 0 ? b + r : b;
  [perm[ia], perm[ib]] = [perm[ib], perm[ia]];
  return permute(x, perm);
}

/** `length` entries of `axis` starting at `start` (a copy). */
export function slice(x: Tensor, axis: number, start: number, length: number): Tensor {
  const a = axis < 0 ? axis + x.rank : axis;
  if (a < 0 || a >= x.rank || start < 0 || length < 0 || start + length > x.shape[a]) {
    throw new RangeError(`slice: [${start}, ${start + length}) of axis ${axis} of ${x}`);
  }
  const shape = [...x.shape];
  shape[a] = length;
  const xs = contiguousStrides(x.shape);
  const y = empty(shape, x.dtype);
  mapKernel(
    "slice",
    "a",
    [{ buf: x.buf, strides: xs, offset: start * xs[a] }],
    viewOf(y),
    shape,
    ty(x),
  );
  return record(y, "slice", [x], (g) => {
    const gx = zeros(x.shape);
    mapKernel(
      "slice_grad",
      "a",
      [viewOf(g)],
      { buf: gx.buf, strides: xs, offset: start * xs[a] },
      shape,
    );
    return [gx];
  });
}

/** Join tensors along `axis`; all other extents must agree. */
export function concat(xs: Tensor[], axis = 0): Tensor {
  if (xs.length === 0) throw new RangeError("concat: no tensors");
  const r = xs[0].rank;
  const a = axis < 0 ? axis + r : axis;
  for (const t of xs) {
    if (t.rank !== r || t.shape.some((d, i) => i !== a && d !== xs[0].shape[i])) {
      throw new RangeError(`concat: ${t} does not match ${xs[0]} outside axis ${axis}`);
    }
  }
  const shape = [...xs[0].shape];
  shape[a] = xs.reduce((s, t) => s + t.shape[a], 0);
  const y = empty(shape, xs[0].dtype);
  const ys = contiguousStrides(shape);
  let at = 0;
  for (const t of xs) {
    mapKernel(
      "concat",
      "a",
      [viewOf(t)],
      { buf: y.buf, strides: ys, offset: at * ys[a] },
      t.shape,
      ty(t),
    );
    at += t.shape[a];
  }
  return record(y, "concat", xs, (g) => {
    let s = 0;
    return xs.map((t) => {
      const part = slice(g, a, s, t.shape[a]);
      s += t.shape[a];
      return part;
    });
  });
}

/** Repeat `x` along broadcast axes to `shape` (a copy). */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  const y = empty(shape, x.dtype);
  mapKernel("broadcast", "a", [broadcastView(x, shape)], viewOf(y), shape, ty(x));
  return record(y, "broadcastTo", [x], (g) => [sumTo(g, x.shape)]);
}
