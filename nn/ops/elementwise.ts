/**
 * Differentiable elementwise ops with NumPy broadcasting: add, sub, mul, div, pow, neg, exp, log,
 * sqrt, relu, tanh, sigmoid, and friends. Each op is one `mapKernel` launch forward and a few in
 * backward; broadcast gradients are summed back to the input's shape.
 */
import { contiguousStrides, mapKernel, type View } from "../../kernels/elementwise.ts";
import { NEG_BIG } from "../../kernels/wgsl.ts";
import { record } from "../autograd.ts";
import { empty, type Tensor } from "../tensor.ts";
import { sumTo } from "./reduce.ts";

/**
 * A contiguous view of a tensor for the map kernel (plumbing for ops; not in the manual).
 * @ignore
 */
export function viewOf(t: Tensor): View {
  return { buf: t.buf, strides: contiguousStrides(t.shape), offset: 0 };
}

/** The broadcast shape of two shapes (NumPy rules), or a clear error. */
export function broadcastShapes(a: readonly number[], b: readonly number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out = new Array(r);
  for (let i = 0; i < r; i++) {
    const x = a[a.length - r + i] ?? 1, y = b[b.length - r + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new RangeError(`shapes [${a}] and [${b}] do not broadcast`);
    }
    out[i] = x === 1 ? y : x;
  }
  return out;
}

/**
 * Strides that read `t` as if it had `shape` (broadcast dims get stride 0). Plumbing for ops;
 * not in the manual.
 * @ignore
 */
export function broadcastView(t: Tensor, shape: readonly number[]): View {
  const s = contiguousStrides(t.shape);
  const off = shape.length - t.shape.length;
  return {
    buf: t.buf,
    offset: 0,
    strides: shape.map((_, d) => (d < off || t.shape[d - off] === 1 ? 0 : s[d - off])),
  };
}

/**
 * Apply a WGSL expression over `a` (and `b`, `c`) broadcast together; no autograd. `prelude` is
 * WGSL the expression needs (functions such as `ACTIVATION_WGSL`).
 */
export function map(
  name: string,
  expr: string,
  inputs: Tensor[],
  scalar = 0,
  prelude = "",
): Tensor {
  let shape: number[] = [...inputs[0].shape];
  for (const t of inputs.slice(1)) shape = broadcastShapes(shape, t.shape);
  const out = empty(shape, inputs[0].dtype);
  mapKernel(
    name,
    expr,
    inputs.map((t) => broadcastView(t, shape)),
    viewOf(out),
    shape,
    inputs[0].dtype === "int32" ? "i32" : "f32",
    scalar,
    prelude,
  );
  return out;
}

/** An input of a binary elementwise op: a tensor, or a number broadcast like a scalar tensor. */
export type Operand = Tensor | number;

function unary(
  name: string,
  expr: string,
  x: Tensor,
  grad: (g: Tensor, x: Tensor, y: Tensor) => Tensor,
  scalar = 0,
): Tensor {
  const y = map(name, expr, [x], scalar);
  const out = y.view(y.shape); // saved for backward, even if the caller disposes y
  return record(y, name, [x], (g) => [grad(g, x, out)], [out]);
}

/** a + b (broadcasting; either may be a number). */
export function add(a: Operand, b: Operand): Tensor {
  if (typeof b === "number") return addScalar(a as Tensor, b);
  if (typeof a === "number") return addScalar(b, a);
  const y = map("add", "a + b", [a, b]);
  return record(y, "add", [a, b], (g) => [sumTo(g, a.shape), sumTo(g, b.shape)]);
}

/** a - b (broadcasting; either may be a number). */
export function sub(a: Operand, b: Operand): Tensor {
  if (typeof b === "number") return addScalar(a as Tensor, -b);
  if (typeof a === "number") return addScalar(neg(b), a);
  const y = map("sub", "a - b", [a, b]);
  return record(y, "sub", [a, b], (g) => [sumTo(g, a.shape), sumTo(neg(g), b.shape)]);
}

/** a * b (broadcasting; either may be a number). */
export function mul(a: Operand, b: Operand): Tensor {
  if (typeof b === "number") return scale(a as Tensor, b);
  if (typeof a === "number") return scale(b, a);
  const y = map("mul", "a * b", [a, b]);
  return record(y, "mul", [a, b], (g) => [
    a.requiresGrad ? sumTo(map("mul", "a * b", [g, b]), a.shape) : null,
    b.requiresGrad ? sumTo(map("mul", "a * b", [g, a]), b.shape) : null,
  ]);
}

/** a / b (broadcasting; either may be a number). */
export function div(a: Operand, b: Operand): Tensor {
  if (typeof b === "number") return scale(a as Tensor, 1 / b);
  if (typeof a === "number") {
    return unary("rdiv", "p.s / a", b, (g) => map("rdiv_grad", "-p.s * a / (b * b)", [g, b], a), a);
  }
  const y = map("div", "a / b", [a, b]);
  return record(y, "div", [a, b], (g) => [
    a.requiresGrad ? sumTo(map("div", "a / b", [g, b]), a.shape) : null,
    b.requiresGrad ? sumTo(map("div_grad_b", "-a * b / (c * c)", [g, a, b]), b.shape) : null,
  ]);
}

/** x + s for a number s. */
export function addScalar(x: Tensor, s: number): Tensor {
  return unary("add_scalar", "a + p.s", x, (g) => map("copy", "a", [g]), s);
}

/** x * s for a number s. */
export function scale(x: Tensor, s: number): Tensor {
  return unary("scale", "a * p.s", x, (g) => map("scale", "a * p.s", [g], s), s);
}

/** -x. */
export function neg(x: Tensor): Tensor {
  return unary("neg", "-a", x, (g) => map("neg", "-a", [g]));
}

/** e^x. */
export function exp(x: Tensor): Tensor {
  return unary("exp", "exp(a)", x, (g, _x, y) => map("mul", "a * b", [g, y]));
}

/** Natural log. */
export function log(x: Tensor): Tensor {
  return unary("log", "log(a)", x, (g) => map("div", "a / b", [g, x]));
}

/** Square root. */
export function sqrt(x: Tensor): Tensor {
  return unary("sqrt", "sqrt(a)", x, (g, _x, y) => map("sqrt_grad", "0.5 * a / b", [g, y]));
}

/** x^p for a number p. */
export function pow(x: Tensor, p: number): Tensor {
  return unary(
    "pow",
    "select(pow(abs(a), p.s) * select(1.0, -1.0, a < 0.0 && fract(p.s * 0.5) != 0.0), " +
      "select(0.0, 1.0, p.s == 0.0), a == 0.0)",
    x,
    (g) =>
      map(
        "pow_grad",
        "a * p.s * select(pow(abs(b), p.s - 1.0) * " +
          "select(1.0, -1.0, b < 0.0 && fract((p.s - 1.0) * 0.5) != 0.0), 0.0, b == 0.0)",
        [g, x],
        p,
      ),
    p,
  );
}

/** x * x. */
export function square(x: Tensor): Tensor {
  return unary("square", "a * a", x, (g) => map("square_grad", "2.0 * a * b", [g, x]));
}

/** max(x, 0). */
export function relu(x: Tensor): Tensor {
  return unary(
    "relu",
    "max(a, 0.0)",
    x,
    (g) => map("relu_grad", "select(0.0, a, b > 0.0)", [g, x]),
  );
}

/** tanh(x). */
export function tanh(x: Tensor): Tensor {
  return unary("tanh", "tanh(a)", x, (g, _x, y) => map("tanh_grad", "a * (1.0 - b * b)", [g, y]));
}

/** 1 / (1 + e^-x). */
export function sigmoid(x: Tensor): Tensor {
  return unary(
    "sigmoid",
    "1.0 / (1.0 + exp(-a))",
    x,
    (g, _x, y) => map("sigmoid_grad", "a * b * (1.0 - b)", [g, y]),
  );
}

/** Elementwise clamp to [lo, hi] (gradient passes inside the range only). */
export function clamp(x: Tensor, lo: number, hi: number): Tensor {
  const lit = (v: number) => `f32(${Math.max(NEG_BIG, Math.min(-NEG_BIG, v)).toExponential()})`;
  const y = map("clamp", `clamp(a, ${lit(lo)}, ${lit(hi)})`, [x]);
  const out = y.view(y.shape);
  return record(y, "clamp", [x], (g) => [
    map("clamp_grad", "select(0.0, a, b == c)", [g, x, out]),
  ], [out]);
}
