/**
 * Differentiable reductions: sum, mean and max over one axis or all, and `sumTo`, which folds a
 * broadcast gradient back onto the shape of the input that was broadcast.
 */
import { mapKernel } from "../../kernels/elementwise.ts";
import { reduceKernel, type ReduceOp } from "../../kernels/reduce.ts";
import { record } from "../autograd.ts";
import { empty, numel, type Tensor } from "../tensor.ts";
import { broadcastView, map, viewOf } from "./elementwise.ts";

function normAxis(axis: number, rank: number, op: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new RangeError(`${op}: axis ${axis} out of range for rank ${rank}`);
  return a;
}

/** Reduce [outer, n, inner] of `x` without autograd into a tensor of `shape`. */
function reduceRaw(
  op: ReduceOp,
  x: Tensor,
  outer: number,
  n: number,
  inner: number,
  shape: readonly number[],
): Tensor {
  const out = empty(shape);
  reduceKernel(op, x.buf, out.buf, outer, n, inner);
  return out;
}

/** Reduce `axis` of `x` without autograd, keeping the axis with extent 1. */
function reduceAxis(op: ReduceOp, x: Tensor, axis: number): Tensor {
  const shape = [...x.shape];
  shape[axis] = 1;
  const outer = numel(x.shape.slice(0, axis));
  return reduceRaw(op, x, outer, x.shape[axis], numel(x.shape.slice(axis + 1)), shape);
}

/** Broadcast `g` (shaped like a keep-dim reduction) back to `shape`, times `s`. */
function expandTo(g: Tensor, shape: readonly number[], s = 1): Tensor {
  const out = empty(shape);
  mapKernel("expand", "a * p.s", [broadcastView(g, shape)], viewOf(out), shape, "f32", s);
  return out;
}

function reduce(op: ReduceOp, x: Tensor, axis: number | undefined, keepDim: boolean): Tensor {
  let kept: number[], y: Tensor, n: number;
  if (axis === undefined) {
    kept = x.shape.map(() => 1);
    n = x.size;
    y = reduceRaw(op, x, 1, n, 1, keepDim ? kept : []);
  } else {
    const a = normAxis(axis, x.rank, op);
    kept = [...x.shape];
    kept[a] = 1;
    n = x.shape[a];
    y = reduceRaw(
      op,
      x,
      numel(x.shape.slice(0, a)),
      n,
      numel(x.shape.slice(a + 1)),
      keepDim ? kept : x.shape.filter((_, d) => d !== a),
    );
  }
  const saved = op === "max" ? [y.view(kept)] : [];
  return record(y, op, [x], (g) => {
    const gk = g.view(kept);
    let gx: Tensor;
    if (op === "max") {
      // Gradient to every position equal to the max (ties share it; PyTorch picks one).
      gx = map("max_grad", "select(0.0, a, b == c)", [gk, x, saved[0]]);
    } else gx = expandTo(gk, x.shape, op === "mean" ? 1 / n : 1);
    gk.dispose();
    return [gx];
  }, saved);
}

/** Sum over `axis` (all elements when omitted). */
export function sum(x: Tensor, axis?: number, keepDim = false): Tensor {
  return reduce("sum", x, axis, keepDim);
}

/** Mean over `axis` (all elements when omitted). */
export function mean(x: Tensor, axis?: number, keepDim = false): Tensor {
  return reduce("mean", x, axis, keepDim);
}

/** Maximum over `axis` (all elements when omitted). */
export function max(x: Tensor, axis?: number, keepDim = false): Tensor {
  return reduce("max", x, axis, keepDim);
}

/**
 * Sum `g` over the axes along which a tensor of `shape` was broadcast to `g.shape`, giving a
 * tensor of `shape`. Always returns a new tensor (a view when nothing is summed). No autograd.
 */
export function sumTo(g: Tensor, shape: readonly number[]): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) {
    return g.view(shape);
  }
  const lead = g.rank - shape.length;
  let cur = g.view(g.shape);
  for (let d = 0; d < g.rank; d++) {
    const target = d < lead ? 1 : shape[d - lead];
    if (g.shape[d] !== target) {
      const next = reduceAxis("sum", cur, d);
      cur.dispose();
      cur = next;
    }
  }
  const out = cur.view(shape);
  cur.dispose();
  return out;
}
