/**
 * Elementwise kernels: one generic "map" kernel that applies a WGSL expression to up to three
 * inputs with arbitrary strides (broadcasting, transposes, slices and concatenation are all just
 * strides and offsets), with a fast path when everything is contiguous.
 */
import { type Buf, dispatch, grid } from "./runtime.ts";
import { codeCache, FLAT_WG, MAX_RANK, Params } from "./wgsl.ts";

/** A strided view of a buffer: element `coord` lives at `offset + sum(coord[d] * strides[d])`. */
export interface View {
  buf: Buf;
  strides: readonly number[];
  offset: number;
}

const WG = 256;
const NAMES = ["a", "b", "c"];

function mapCode(
  expr: string,
  nIn: number,
  ty: string,
  contiguous: boolean,
  prelude: string,
): string {
  const inputs = NAMES.slice(0, nIn)
    .map((n, i) => `@group(0) @binding(${i + 1}) var<storage, read> ${n}_: array<${ty}>;`)
    .join("\n");
  const loads = NAMES.slice(0, nIn).map((n) =>
    contiguous ? `let ${n} = ${n}_[i];` : `let ${n} = ${n}_[p.off_${n} + idx_${n}];`
  ).join("\n    ");
  const strideFields = NAMES.slice(0, nIn).map((n) => `s_${n}: array<vec4<u32>, 2>,`).join(" ");
  const offFields = NAMES.slice(0, nIn).map((n) => `off_${n}: u32,`).join(" ");
  const index = contiguous ? "let o = i;" : `
    var rem = i;
    ${NAMES.slice(0, nIn).map((n) => `var idx_${n} = 0u;`).join(" ")}
    var o = p.off_out;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
      let du = u32(d);
      let extent = p.shape[du / 4u][du % 4u];
      let c = rem % extent;
      rem = rem / extent;
      o += c * p.s_out[du / 4u][du % 4u];
      ${NAMES.slice(0, nIn).map((n) => `idx_${n} += c * p.s_${n}[du / 4u][du % 4u];`).join(" ")}
    }`;
  return /* wgsl */ `
struct P { n: u32, rank: u32, off_out: u32, s: f32, ${offFields}
  shape: array<vec4<u32>, 2>, s_out: array<vec4<u32>, 2>, ${strideFields} }
@group(0) @binding(0) var<uniform> p: P;
${inputs}
@group(0) @binding(${nIn + 1}) var<storage, read_write> out: array<${ty}>;
${prelude}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i >= p.n) { return; }
  ${index}
    ${loads}
  out[o] = ${expr};
}`;
}

function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

function isContiguous(v: View, shape: readonly number[]): boolean {
  if (v.offset !== 0) return false;
  const c = contiguousStrides(shape);
  return shape.every((e, d) => e === 1 || v.strides[d] === c[d]);
}

const cached = codeCache();

/**
 * out[o(coord)] = expr(a[..], b[..], c[..]) for every coord of `shape`.
 * `expr` is WGSL over the names `a`, `b`, `c` (for as many inputs as given) of type `ty`.
 * `scalar` is available to the expression as `p.s` (f32), so scalar constants do not create new
 * pipelines. `prelude` is WGSL placed before the entry point (functions the expression calls,
 * such as `ACTIVATION_WGSL`). `name` labels the kernel in errors.
 */
export function mapKernel(
  name: string,
  expr: string,
  inputs: View[],
  out: View,
  shape: readonly number[],
  ty: "f32" | "i32" = "f32",
  scalar = 0,
  prelude = "",
): void {
  const n = shape.reduce((x, y) => x * y, 1);
  if (n === 0) return;
  if (shape.length > MAX_RANK) throw new RangeError(`${name}: rank ${shape.length} > ${MAX_RANK}`);
  const contiguous = isContiguous(out, shape) && inputs.every((v) => isContiguous(v, shape));
  const key = `${inputs.length}${ty}${contiguous ? "c" : "s"}|${expr}|${prelude}`;
  const code = cached(key, () => mapCode(expr, inputs.length, ty, contiguous, prelude));
  const p = new Params().u32(n, shape.length, out.offset).f32(scalar);
  for (const v of inputs) p.u32(v.offset);
  p.vec4Array(shape, 8, 1).vec4Array(out.strides, 8);
  for (const v of inputs) p.vec4Array(v.strides, 8);
  const groups = grid(Math.ceil(n / WG));
  dispatch(name, code, [...inputs.map((v) => v.buf), out.buf], p.build(), groups);
}

/** Contiguous strides of `shape` (row-major). */
export { contiguousStrides };

/** Fill `n` elements of `out` with `value` (f32 or i32 bit pattern). */
export function fillKernel(out: Buf, n: number, value: number, ty: "f32" | "i32" = "f32"): void {
  if (n === 0) return;
  const code = cached(`fill_${ty}`, () => /* wgsl */ `
struct P { n: u32, v: ${ty} }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> out: array<${ty}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i < p.n) { out[i] = p.v; }
}`);
  const p = new Params().u32(n);
  if (ty === "f32") p.f32(value);
  else p.i32(value);
  dispatch("fill", code, [out], p.build(), grid(Math.ceil(n / WG)));
}
