/**
 * Embedding lookup (a row gather) and its backward (a scatter-add of output gradients into the
 * rows of the table).
 *
 * Out-of-range ids (< 0 or >= V) are refused: the ids live on the GPU, so the gather checks them
 * there and reports bad ones into the runtime's check buffer (`checkSlot` in runtime.ts, no
 * readback of its own); the next readback or `sync` throws a RangeError naming an offending id.
 * Until then such a row reads as zeros (never out of bounds, never aliased to a real row) and
 * receives no gradient.
 *
 * The scatter-add is deterministic and atomic-free. WGSL has no float atomics; a compare-exchange
 * loop on bitcast u32 would work but adds the gradients in whatever order the threads happen to
 * run, so training would not be bit-reproducible, and repeated ids (padding) would contend on the
 * same words. Instead:
 * 1. `link`: one invocation per position n finds the next position with the same id (or N) and
 *    whether n is the first occurrence (top bit). O(N^2) id comparisons, tiled through workgroup
 *    memory: cheap for token batches (N = B * T of a few thousand).
 * 2. `scatter`: one invocation per (first occurrence n, column d) walks that id's chain in
 *    position order, sums the gradients and writes the row once. No two invocations write the
 *    same element, and every sum has a fixed order.
 */
import { type Buf, checkSlot, dispatch, grid } from "./runtime.ts";
import { checkWgsl, FLAT_WG, Params } from "./wgsl.ts";

const WG = 256;

const GATHER = /* wgsl */ `
struct P { n: u32, v: u32, d: u32, slot: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> W: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${checkWgsl(4)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let o = ${FLAT_WG} * ${WG}u + li;
  if (o >= p.n * p.d) { return; }
  let id = ids[o / p.d];
  var x = 0.0;
  if (id >= 0 && u32(id) < p.v) {
    x = W[u32(id) * p.d + o % p.d];
  } else if (o % p.d == 0u) {
    report_bad(p.slot, id); // once per position
  }
  out[o] = x;
}`;

/** Top bit of a link word: this position is its id's first occurrence. */
const HEAD = 0x80000000;

const LINK = /* wgsl */ `
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> link: array<u32>;
var<workgroup> tile: array<i32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let n = ${FLAT_WG} * ${WG}u + li;
  let id = ids[min(n, p.n - 1u)];
  var head = true;
  var next = p.n;
  for (var t0 = 0u; t0 < p.n; t0 += ${WG}u) {
    workgroupBarrier();
    tile[li] = ids[min(t0 + li, p.n - 1u)];
    workgroupBarrier();
    let cnt = min(${WG}u, p.n - t0);
    for (var r = 0u; r < cnt; r++) {
      let m = t0 + r;
      if (tile[r] == id) {
        if (m < n) { head = false; }
        if (m > n && m < next) { next = m; }
      }
    }
  }
  if (n < p.n) { link[n] = next | select(0u, ${HEAD}u, head); }
}`;

const SCATTER = /* wgsl */ `
struct P { n: u32, v: u32, d: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read> link: array<u32>;
@group(0) @binding(4) var<storage, read_write> dW: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let o = ${FLAT_WG} * ${WG}u + li;
  if (o >= p.n * p.d) { return; }
  let n = o / p.d;
  let col = o % p.d;
  let id = ids[n];
  if ((link[n] & ${HEAD}u) == 0u || id < 0 || u32(id) >= p.v) { return; }
  var s = 0.0;
  var m = n;
  loop {
    s += g[m * p.d + col];
    m = link[m] & ${HEAD - 1}u;
    if (m >= p.n) { break; }
  }
  dW[u32(id) * p.d + col] = s;
}`;

/**
 * Record out[n, :] = W[ids[n], :]. W is [v, d], out [n, d]. Out-of-range ids give zero rows and
 * make the next readback throw `RangeError("embedding: id 50000 not in [0, 49408) ...")`;
 * `what` names the lookup in that message (e.g. the ids tensor).
 */
export function embeddingKernel(
  weight: Buf,
  ids: Buf,
  out: Buf,
  n: number,
  v: number,
  d: number,
  what = "",
): void {
  if (n * d === 0) return;
  const check = checkSlot((r) => {
    const id = r.max >= v ? r.max : r.min; // too large first, else the most negative
    const notes = [what];
    if (r.count > 1) notes.push(`${r.count} of ${n} ids out of range, from ${r.min} to ${r.max}`);
    const note = notes.filter((x) => x).join("; ");
    return `embedding: id ${id} not in [0, ${v})${note ? ` (${note})` : ""}`;
  });
  const p = new Params().u32(n, v, d, check.slot).build();
  const groups = grid(Math.ceil(n * d / WG));
  dispatch("embedding_gather", GATHER, [weight, ids, out, check.buf], p, groups);
}

/**
 * Record dW[id, :] = sum over positions n with ids[n] == id of g[n, :] for every row that occurs
 * in `ids`; rows that do not occur are left as they are (the caller zero-fills `dW`). `link` is
 * scratch of `n` u32.
 */
export function embeddingBackwardKernel(
  g: Buf,
  ids: Buf,
  link: Buf,
  dW: Buf,
  n: number,
  v: number,
  d: number,
): void {
  if (n * d === 0) return;
  if (n >= HEAD) throw new RangeError(`embedding backward: ${n} positions is too many`);
  dispatch(
    "embedding_link",
    LINK,
    [ids, link],
    new Params().u32(n).build(),
    grid(Math.ceil(n / WG)),
  );
  const p = new Params().u32(n, v, d).build();
  dispatch("embedding_scatter", SCATTER, [g, ids, link, dW], p, grid(Math.ceil(n * d / WG)));
}
