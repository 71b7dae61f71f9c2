/** Every differentiable op, in one import. */
export * from "./elementwise.ts";
export * from "./reduce.ts";
export * from "./shape.ts";
export * from "./matmul.ts";
export * from "./nn.ts";
export * from "./attention.ts";
export * from "./embedding.ts";
export * from "./conv.ts";
