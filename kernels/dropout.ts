/**
 * Dropout with a mask computed on the fly from a hash of (element index, seed): nothing is stored,
 * the backward regenerates the same mask from the same seed. Element i is kept when
 * pcg(pcg(i) ^ key) >= threshold, with key = pcg(seed) and threshold = round(p * 2^32), compared
 * as integers; kept elements are scaled by 1 / (1 - p). `dropout_ref.ts` applies the same rule
 * on the CPU (results do not depend on the adapter).
 */
import { type Buf, dispatch, grid } from "./runtime.ts";
import { FLAT_WG, Params } from "./wgsl.ts";

const WG = 256;

const CODE = /* wgsl */ `
struct P { n: u32, key: u32, thresh: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let i = ${FLAT_WG} * ${WG}u + li;
  if (i >= p.n) { return; }
  let h = pcg(pcg(i) ^ p.key);
  y[i] = select(0.0, x[i] * p.scale, h >= p.thresh);
}`;

/** PCG-RXS-M-XS 32-bit hash (the same as the WGSL `pcg`). */
export function pcgHash(v: number): number {
  const s = (Math.imul(v >>> 0, 747796405) + 2891336453) >>> 0;
  const w = Math.imul(((s >>> ((s >>> 28) + 4)) ^ s) >>> 0, 277803737) >>> 0;
  return ((w >>> 22) ^ w) >>> 0;
}

/** The integer threshold of keep probability 1 - `p`: hashes below it are dropped. */
export function dropoutThreshold(p: number): number {
  return Math.min(0xffffffff, Math.round(p * 2 ** 32));
}

/** Throw a RangeError unless `p` is in [0, 1] and `seed` is an integer. */
export function checkDropoutArgs(p: number, seed: number): void {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`dropout: p must be in [0, 1], got ${p}`);
  if (!Number.isInteger(seed)) {
    throw new RangeError(`dropout: seed must be an integer, got ${seed}`);
  }
}

/**
 * y[i] = x[i] * mask(i) / (1 - p) for the first `n` elements, where mask is the seeded hash
 * mask. Applying it to a gradient with the same seed and p gives the dropout backward.
 * p = 1 drops everything (scale 0). Throws on p outside [0, 1] or a non-integer seed.
 */
export function dropoutKernel(x: Buf, y: Buf, n: number, p: number, seed: number): void {
  checkDropoutArgs(p, seed);
  if (n === 0) return;
  if (n > 0xffffffff) throw new RangeError(`dropout: ${n} elements exceed the 32-bit index`);
  const scale = p >= 1 ? 0 : 1 / (1 - p);
  const params = new Params().u32(n, pcgHash(seed), dropoutThreshold(p)).f32(scale).build();
  dispatch("dropout", CODE, [x, y], params, grid(Math.ceil(n / WG)));
}
