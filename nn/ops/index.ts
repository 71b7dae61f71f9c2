/**
 * Every op, in one import: the differentiable ops and the in-place writes. Not the raw WGSL
 * mapping (`map`) nor the kernel views (`viewOf`, `broadcastView`) that ops are built from: those
 * stay inside nn/.
 */
export {
  add,
  addScalar,
  broadcastShapes,
  clamp,
  div,
  exp,
  log,
  mul,
  neg,
  type Operand,
  pow,
  relu,
  scale,
  sigmoid,
  sqrt,
  square,
  sub,
  tanh,
} from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./shape.ts";
export * from "./matmul.ts";
export * from "./nn.ts";
export * from "./attention.ts";
export * from "./embedding.ts";
export * from "./conv.ts";
export * from "./inplace.ts";
