/**
 * Kernels for streaming cosine top-k retrieval (`nn/retrieval.ts` drives them):
 * - {@link normalizeRowsKernel}: rows divided by max(||row||, 1e-12) (torch.nn.functional.normalize).
 * - {@link topkMergeKernel}: folds a tile of scores into a running top-k per query.
 *
 * The score tile is laid out key-major, S[j][q] (key j, query q), so the invocations of a
 * workgroup (consecutive queries) read consecutive addresses on a GPU. The running state is one
 * u32 buffer per query block: for query q, `state[q*2k .. q*2k+k)` holds the scores (f32 bits,
 * best first) and `state[q*2k+k .. q*2k+2k)` the key indices.
 */
import { gpu } from "./device.ts";
import { type Buf, dispatch, flush, grid } from "./runtime.ts";
import { codeCache, FLAT_WG, NEG_BIG_WGSL, Params } from "./wgsl.ts";

/** The largest k the merge kernel supports (its per-invocation lists live in registers/stack). */
export const MAX_TOPK = 64;

const WG = 64;

const NORMALIZE = /* wgsl */ `
struct P { rows: u32, d: u32, src0: u32, normalize: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let r = ${FLAT_WG} * ${WG}u + li;
  if (r >= p.rows) { return; }
  let src = (p.src0 + r) * p.d;
  let dst = r * p.d;
  var inv = 1.0;
  if (p.normalize != 0u) {
    var ss = 0.0;
    for (var i = 0u; i < p.d; i++) { let v = x[src + i]; ss = fma(v, v, ss); }
    inv = 1.0 / max(sqrt(ss), 1e-12);
  }
  for (var i = 0u; i < p.d; i++) { y[dst + i] = x[src + i] * inv; }
}`;

/**
 * y[r, :] = x[src0 + r, :] / max(||x[src0 + r, :]||, 1e-12) for `rows` rows of `d` floats
 * (as torch.nn.functional.normalize); with `normalize` false, a plain copy of those rows.
 * `x` and `y` must be different buffers.
 */
export function normalizeRowsKernel(
  x: Buf,
  y: Buf,
  rows: number,
  d: number,
  src0 = 0,
  normalize = true,
): void {
  if (rows === 0) return;
  dispatch(
    "cosine_normalize",
    NORMALIZE,
    [x, y],
    new Params().u32(rows, d, src0, normalize ? 1 : 0).build(),
    grid(Math.ceil(rows / WG)),
  );
}

const NORMALIZE_INPLACE = /* wgsl */ `
struct P { rows: u32, d: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let r = ${FLAT_WG} * ${WG}u + li;
  if (r >= p.rows) { return; }
  let base = r * p.d;
  var ss = 0.0;
  for (var i = 0u; i < p.d; i++) { let v = y[base + i]; ss = fma(v, v, ss); }
  let inv = 1.0 / max(sqrt(ss), 1e-12);
  for (var i = 0u; i < p.d; i++) { y[base + i] = y[base + i] * inv; }
}`;

/** Normalise the first `rows` rows of `d` floats of `x` in place (same formula). */
export function normalizeRowsInPlaceKernel(x: Buf, rows: number, d: number): void {
  if (rows === 0) return;
  dispatch(
    "cosine_normalize_inplace",
    NORMALIZE_INPLACE,
    [x],
    new Params().u32(rows, d).build(),
    grid(Math.ceil(rows / WG)),
  );
}

const cached = codeCache();

function mergeCode(k: number): string {
  return /* wgsl */ `
struct P { rows: u32, cols: u32, ld: u32, keyBase: u32, first: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> S: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let q = ${FLAT_WG} * ${WG}u + li;
  if (q >= p.rows) { return; }
  var tv: array<f32, ${k}>;
  var ti: array<u32, ${k}>;
  let base = q * ${2 * k}u;
  for (var i = 0u; i < ${k}u; i++) {
    if (p.first != 0u) {
      tv[i] = ${NEG_BIG_WGSL}; // below any cosine; never returned because M >= k
      ti[i] = 0xffffffffu;
    } else {
      tv[i] = bitcast<f32>(state[base + i]);
      ti[i] = state[base + ${k}u + i];
    }
  }
  var worst = tv[${k - 1}u];
  for (var j = 0u; j < p.cols; j++) {
    let s = S[j * p.ld + q];
    // Strictly greater: an equal score never displaces an earlier (lower) key index. NaN fails.
    if (s > worst) {
      var pos = ${k - 1}u;
      loop {
        if (pos == 0u) { break; }
        if (!(tv[pos - 1u] < s)) { break; }
        tv[pos] = tv[pos - 1u];
        ti[pos] = ti[pos - 1u];
        pos--;
      }
      tv[pos] = s;
      ti[pos] = p.keyBase + j;
      worst = tv[${k - 1}u];
    }
  }
  for (var i = 0u; i < ${k}u; i++) {
    state[base + i] = bitcast<u32>(tv[i]);
    state[base + ${k}u + i] = ti[i];
  }
}`;
}

/**
 * Fold a key-major score tile `S[j * ld + q]` (keys j < cols, queries q < rows) into the running
 * top-`k` of each query held in `state` (rows * 2k u32, layout above). Key j gets index
 * `keyBase + j`. `first` starts each list empty instead of reading `state`. Ties keep the lower
 * index as long as tiles are merged in increasing key order.
 */
export function topkMergeKernel(
  scores: Buf,
  state: Buf,
  rows: number,
  cols: number,
  ld: number,
  k: number,
  keyBase: number,
  first: boolean,
): void {
  if (!Number.isInteger(k) || k < 1 || k > MAX_TOPK) {
    throw new RangeError(`topkMergeKernel: k = ${k} must be an integer in 1..${MAX_TOPK}`);
  }
  if (rows === 0) return;
  const name = `topk_merge_${k}`;
  dispatch(
    name,
    cached(name, () => mergeCode(k)),
    [scores, state],
    new Params().u32(rows, cols, ld, keyBase, first ? 1 : 0).build(),
    grid(Math.ceil(rows / WG)),
  );
}

/**
 * Copy `bytes` bytes from `src` at `srcOffset` into the start of `dst`: for sources larger than
 * maxStorageBufferBindingSize, which no kernel can bind whole. Submits the recorded batch first
 * so the copy is ordered after it and before everything recorded later.
 */
export function copyBytes(src: Buf, srcOffset: number, dst: Buf, bytes: number): void {
  if (bytes % 4 !== 0 || srcOffset % 4 !== 0 || bytes > dst.bytes) {
    throw new RangeError(`copyBytes: bad range ${srcOffset}+${bytes} into ${dst.bytes} bytes`);
  }
  flush();
  const { device } = gpu();
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, 0, bytes);
  device.queue.submit([enc.finish()]);
}
