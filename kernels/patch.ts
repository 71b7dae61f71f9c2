/**
 * Patchify for a convolution whose stride equals its kernel (a ViT's patch embedding): a gather
 * of non-overlapping p x p patches into rows, and its exact inverse for the backward pass. Since
 * the patches do not overlap, every input pixel lands in at most one output element, so the
 * inverse is also a gather (one invocation per input pixel, no atomics).
 *
 * x [B, C, H, W] -> patches [B, nH * nW, C * p * p] with nH = floor(H / p), nW = floor(W / p);
 * patch index py * nW + px, feature index c * p * p + ky * p + kx (the layout of a conv weight
 * [E, C, p, p] flattened to [E, C * p * p]). Pixels past nH * p or nW * p are dropped, as in
 * PyTorch's Conv2d; their gradient is zero.
 */
import { type Buf, dispatch, grid } from "./runtime.ts";
import { FLAT_WG, Params } from "./wgsl.ts";

const WG = 256;

/** Sizes of one patchify. */
export interface PatchDims {
  b: number;
  c: number;
  h: number;
  w: number;
  p: number;
}

const STRUCT = "struct P { b: u32, c: u32, h: u32, w: u32, p: u32, nh: u32, nw: u32 }";

const PATCHIFY = /* wgsl */ `
${STRUCT}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let o = ${FLAT_WG} * ${WG}u + li;
  let pp = p.p * p.p;
  let f = p.c * pp;
  let np = p.nh * p.nw;
  if (o >= p.b * np * f) { return; }
  let fi = o % f;
  let n = (o / f) % np;
  let b = o / (f * np);
  let c = fi / pp;
  let y = (n / p.nw) * p.p + (fi / p.p) % p.p;
  let xx = (n % p.nw) * p.p + fi % p.p;
  out[o] = x[((b * p.c + c) * p.h + y) * p.w + xx];
}`;

const UNPATCHIFY = /* wgsl */ `
${STRUCT}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i >= p.b * p.c * p.h * p.w) { return; }
  let xx = i % p.w;
  let y = (i / p.w) % p.h;
  let c = (i / (p.w * p.h)) % p.c;
  let b = i / (p.w * p.h * p.c);
  var v = 0.0;
  if (y < p.nh * p.p && xx < p.nw * p.p) {
    let n = (y / p.p) * p.nw + xx / p.p;
    let fi = (c * p.p + y % p.p) * p.p + xx % p.p;
    v = g[(b * p.nh * p.nw + n) * p.c * p.p * p.p + fi];
  }
  dx[i] = v;
}`;

function params(d: PatchDims): ArrayBuffer {
  return new Params().u32(d.b, d.c, d.h, d.w, d.p, Math.floor(d.h / d.p), Math.floor(d.w / d.p))
    .build();
}

/** Record out = patchify(x): x [b, c, h, w] -> out [b, nH * nW, c * p * p]. */
export function patchifyKernel(x: Buf, out: Buf, d: PatchDims): void {
  const n = d.b * Math.floor(d.h / d.p) * Math.floor(d.w / d.p) * d.c * d.p * d.p;
  if (n === 0) return;
  dispatch("patchify", PATCHIFY, [x, out], params(d), grid(Math.ceil(n / WG)));
}

/** Record dx = the inverse gather of g [b, nH * nW, c * p * p] into dx [b, c, h, w] (zeros off-grid). */
export function unpatchifyKernel(g: Buf, dx: Buf, d: PatchDims): void {
  const n = d.b * d.c * d.h * d.w;
  if (n === 0) return;
  dispatch("unpatchify", UNPATCHIFY, [g, dx], params(d), grid(Math.ceil(n / WG)));
}
