/**
 * Fused scaled dot-product attention, flash-style: forward with an online softmax and a backward
 * that recomputes the probabilities from the saved log-sum-exp, so no T x T matrix ever exists in
 * global memory (extra memory: one float per query row).
 *
 * Layout: Q [BH, Tq, D], K and V [BH, Tk, D], O [BH, Tq, D], all contiguous row-major, where BH is
 * batch * heads. Rows are processed as D4 = ceil(D / 4) vec4 chunks zero-padded past D, so any
 * D <= 128 works (D = 7 included); when D is a multiple of 4 the buffers are read as vec4 arrays.
 *
 * Parallel scheme (one invocation owns one row, which suits llvmpipe's SIMD-across-invocations and
 * keeps the kernels simple):
 * - forward and dQ: a workgroup owns ROWS consecutive queries of one (b, h); it walks the keys in
 *   tiles of BK rows (K and V tiles);
 * - dK/dV: a workgroup owns ROWS consecutive keys; it walks the queries in tiles (Q and dO tiles).
 * On a GPU the workgroup first loads each tile into workgroup memory, so every K/V row is read
 * from global memory once per workgroup instead of once per query; that memory stays within
 * 16 KiB (2 * tile * D4 * 16 bytes), inside llvmpipe's 32 KiB. On CPU adapters the tiles are read
 * straight from the buffers instead (see {@link TileMode}).
 *
 * Causal masking is top-left aligned like PyTorch's `is_causal`: query i sees keys j <= i.
 */
import {
  RB_KPL,
  RB_QPL,
  rowsDkvCode,
  rowsDqCode,
  rowsForwardCode,
  RW_LANES,
  RW_QPL,
} from "./attention_rows.ts";
import { type FlashTile, flashTile, tiledBackward, tiledForward } from "./attention_tiled.ts";
import { gpu } from "./device.ts";
import { type Buf, dispatch, grid } from "./runtime.ts";
import type { TileMode } from "./tune.ts";
import { codeCache, FLAT_WG, NEG_BIG_WGSL, Params } from "./wgsl.ts";

export type { TileMode } from "./tune.ts";
export type { FlashTile } from "./attention_tiled.ts";

/** Largest head dimension the kernels are compiled for. */
export const MAX_HEAD_DIM = 128;

/** Invocations (rows) per workgroup. */
const ROWS = 32;
/** Workgroup memory budget for the two shared tiles. */
const SHARED_BYTES = 16384;
/** Upper bound on the tile length. */
const MAX_TILE = 32;

/**
 * Which kernels a launch runs ({@link TileMode}): `tiled` is the flash attention for GPUs
 * (`attention_tiled.ts`); the row kernels here read the K/V (or Q/dO) tiles in one of three
 * ways: `shared` stages them in workgroup memory, `direct` reads them from the storage buffers (CPU adapters: on
 * llvmpipe the ViT-B/16 forward took 195 ms direct vs 243 ms shared), `blocked` is `direct`
 * except that it uses the lanes-along-rows kernels of `attention_rows.ts` when
 * D % 4 == 0 (on llvmpipe ViT-B/16 about 3x faster than `direct`, ~0.75x the unfused
 * composition). `tiles` (a call's option) wins, then the device's `tuning.attentionTiles`; `auto`
 * picks `tiled` on GPUs and `blocked` on CPU adapters. (On an NVIDIA H200 the `shared` row kernel
 * ran ViT-B/16 attention at B=64 in 17.5 ms against 4.3 ms for matmul-softmax-matmul.)
 */
export function attentionTileMode(tiles: TileMode = "auto"): Exclude<TileMode, "auto"> {
  const { tuning } = gpu();
  const mode = tiles !== "auto" ? tiles : tuning.attentionTiles;
  if (mode !== "auto") return mode;
  return tuning.cpu ? "blocked" : "tiled";
}

/** Per-call options of the attention kernels (tests and benchmarks). */
export interface AttentionLaunchOptions {
  /** Force a tile mode (default: the device's choice, see {@link attentionTileMode}). */
  tiles?: TileMode;
  /** `tiled` only: force the thread grid (default {@link flashTile} for the adapter). */
  flash?: FlashTile;
  /**
   * `tiled` forward only: use subgroup shuffles for the row reductions (default: the device's
   * `tuning.subgroups`; true needs the `subgroups` feature).
   */
  subgroups?: boolean;
}

/** The tiled kernels' grid for this launch: the option, else the adapter's. */
function launchFlashTile(opts: AttentionLaunchOptions): FlashTile {
  const { limits } = gpu().adapter;
  return opts.flash ??
    flashTile(limits.maxComputeWorkgroupStorageSize, limits.maxComputeInvocationsPerWorkgroup);
}

/** Sizes of one attention call. */
export interface AttentionDims {
  /** batch * heads. */
  bh: number;
  tq: number;
  tk: number;
  d: number;
  scale: number;
  causal: boolean;
}

/** Rows of a shared tile so that two tiles of `d4` vec4 per row fit in {@link SHARED_BYTES}. */
function tileRows(d4: number): number {
  return Math.min(MAX_TILE, Math.floor(SHARED_BYTES / (2 * 16 * d4)));
}

/**
 * WGSL helpers `ld<X>(row, c) -> vec4<f32>` and `st<X>(row, c, v)` for each named buffer: chunk `c`
 * of row `row`, zero past D. `vec` reads the buffers as `array<vec4<f32>>` (D % 4 == 0).
 */
function rowAccess(names: string[], stores: string[], vec: boolean): string {
  const out: string[] = [];
  for (const n of names) {
    out.push(
      vec
        ? `fn ld${n}(row: u32, c: u32) -> vec4<f32> { return ${n}[row * D4 + c]; }`
        : `fn ld${n}(row: u32, c: u32) -> vec4<f32> {
  let b = row * p.d + c * 4u;
  let e = p.d - c * 4u; // D4 = ceil(d / 4), so e >= 1
  var r = vec4<f32>(0.0);
  r.x = ${n}[b];
  if (e > 1u) { r.y = ${n}[b + 1u]; }
  if (e > 2u) { r.z = ${n}[b + 2u]; }
  if (e > 3u) { r.w = ${n}[b + 3u]; }
  return r;
}`,
    );
  }
  for (const n of stores) {
    out.push(
      vec
        ? `fn st${n}(row: u32, c: u32, v: vec4<f32>) { ${n}[row * D4 + c] = v; }`
        : `fn st${n}(row: u32, c: u32, v: vec4<f32>) {
  let b = row * p.d + c * 4u;
  let e = p.d - c * 4u;
  ${n}[b] = v.x;
  if (e > 1u) { ${n}[b + 1u] = v.y; }
  if (e > 2u) { ${n}[b + 2u] = v.z; }
  if (e > 3u) { ${n}[b + 3u] = v.w; }
}`,
    );
  }
  return out.join("\n");
}

const PARAMS =
  "struct P { bh: u32, tq: u32, tk: u32, d: u32, scale: f32, causal: u32, ntile: u32 }";

function binding(i: number, name: string, ty: string, write = false): string {
  return `@group(0) @binding(${i}) var<storage, ${
    write ? "read_write" : "read"
  }> ${name}: array<${ty}>;`;
}

/** The uniform struct and the compile-time row width shared by the three row kernels. */
function header(d4: number): string {
  return `${PARAMS}
@group(0) @binding(0) var<uniform> p: P;
const D4 = ${d4}u;
const NEG = ${NEG_BIG_WGSL};`;
}

/**
 * The two tiles a row kernel walks (K and V, or Q and dO): WGSL `t<X>(base, r, c)` returns chunk
 * `c` of tile row `r` (global row `base + r`). Shared: read from workgroup memory, filled by
 * {@link loadTile}. Direct: read straight from the storage buffer; every invocation reads the same
 * address, which CPU adapters turn into one scalar load (faster there than workgroup memory and
 * its barriers).
 */
function tiles(a: string, b: string, size: number, shared: boolean): string {
  return [a, b].map((n) =>
    shared
      ? `var<workgroup> s${n}: array<vec4<f32>, ${size}>;
fn t${n}(base: u32, r: u32, c: u32) -> vec4<f32> { return s${n}[r * D4 + c]; }`
      : `fn t${n}(base: u32, r: u32, c: u32) -> vec4<f32> { return ld${n}(base + r, c); }`
  ).join("\n");
}

/**
 * WGSL that fills the shared tiles of `a` and `b` with rows `base` + 0 .. n - 1 (zeros past n),
 * the `threads` invocations of the workgroup striding over the tile; barriers on both sides.
 */
function loadTile(a: string, b: string, base: string, rows: string, threads: string): string {
  return `workgroupBarrier(); // everyone is done with the previous tile
    for (var e = li; e < ${rows} * D4; e += ${threads}) {
      let r = e / D4;
      var va = vec4<f32>(0.0);
      var vb = vec4<f32>(0.0);
      if (r < n) {
        va = ld${a}(${base} + r, e % D4);
        vb = ld${b}(${base} + r, e % D4);
      }
      s${a}[e] = va;
      s${b}[e] = vb;
    }
    workgroupBarrier();`;
}

function forwardCode(d4: number, bk: number, vec: boolean, shared: boolean): string {
  const t = vec ? "vec4<f32>" : "f32";
  return /* wgsl */ `${header(d4)}
const BQ = ${ROWS}u;
const BK = ${bk}u;
${binding(1, "Q", t)}
${binding(2, "K", t)}
${binding(3, "V", t)}
${binding(4, "O", t, true)}
${binding(5, "LSE", "f32", true)}
${rowAccess(["Q", "K", "V"], ["O"], vec)}
${tiles("K", "V", bk * d4, shared)}
@compute @workgroup_size(${ROWS})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; } // whole workgroup: barriers stay uniform
  let bh = flat / p.ntile;
  let q0 = (flat % p.ntile) * BQ;
  let i = q0 + li;
  let qrow = bh * p.tq + min(i, p.tq - 1u);
  var q: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) { q[c] = ldQ(qrow, c) * p.scale; }
  var acc: array<vec4<f32>, D4>;
  var m = NEG;
  var l = 0.0;
  var kEnd = p.tk;
  if (p.causal != 0u) { kEnd = min(p.tk, q0 + BQ); } // later keys are masked for every row here
  for (var k0 = 0u; k0 < kEnd; k0 += BK) {
    let n = min(BK, kEnd - k0);
    let kb = bh * p.tk + k0;
    ${shared ? loadTile("K", "V", "kb", "BK", "BQ") : ""}
    var lim = n;
    if (p.causal != 0u) { lim = min(n, select(0u, i + 1u - k0, i + 1u > k0)); }
    // The loop bound and the loads are the same for the whole workgroup; the causal mask is
    // applied with select, not with a branch, so CPU adapters keep scalar (uniform) loads.
    for (var j = 0u; j < n; j++) {
      let valid = j < lim;
      var d = vec4<f32>(0.0);
      for (var c = 0u; c < D4; c++) { d = fma(q[c], tK(kb, j, c), d); }
      let sj = select(NEG, d.x + d.y + d.z + d.w, valid);
      if (sj > m) {
        // Online softmax, one key at a time: rescale only when the running max grows (a few
        // times per row). Keeping a tile of scores instead (two passes per tile) ran 1.5x
        // faster on llvmpipe/Vulkan, no faster on llvmpipe/GL, and Mesa's GL compiler needs
        // 3 s (scores in workgroup memory) to 45 s (a private array) per such kernel.
        let corr = exp(m - sj);
        l *= corr;
        for (var c = 0u; c < D4; c++) { acc[c] *= corr; }
        m = sj;
      }
      let pj = select(0.0, exp(sj - m), valid);
      l += pj;
      for (var c = 0u; c < D4; c++) { acc[c] = fma(vec4<f32>(pj), tV(kb, j, c), acc[c]); }
    }
  }
  if (i < p.tq) {
    let inv = 1.0 / l;
    for (var c = 0u; c < D4; c++) { stO(qrow, c, acc[c] * inv); }
    LSE[qrow] = m + log(l);
  }
}`;
}

function deltaCode(): string {
  return /* wgsl */ `struct P { rows: u32, d: u32 }
@group(0) @binding(0) var<uniform> p: P;
${binding(1, "dO", "f32")}
${binding(2, "O", "f32")}
${binding(3, "delta", "f32", true)}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let r = ${FLAT_WG} * 64u + li;
  if (r >= p.rows) { return; }
  var s = 0.0;
  for (var e = r * p.d; e < (r + 1u) * p.d; e++) { s = fma(dO[e], O[e], s); }
  delta[r] = s;
}`;
}

function dqCode(d4: number, bk: number, vec: boolean, shared: boolean): string {
  const t = vec ? "vec4<f32>" : "f32";
  return /* wgsl */ `${header(d4)}
const BQ = ${ROWS}u;
const BK = ${bk}u;
${binding(1, "Q", t)}
${binding(2, "K", t)}
${binding(3, "V", t)}
${binding(4, "dO", t)}
${binding(5, "LSE", "f32")}
${binding(6, "DELTA", "f32")}
${binding(7, "dQ", t, true)}
${rowAccess(["Q", "K", "V", "dO"], ["dQ"], vec)}
${tiles("K", "V", bk * d4, shared)}
@compute @workgroup_size(${ROWS})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; }
  let bh = flat / p.ntile;
  let q0 = (flat % p.ntile) * BQ;
  let i = q0 + li;
  let qrow = bh * p.tq + min(i, p.tq - 1u);
  var q: array<vec4<f32>, D4>;
  var go: array<vec4<f32>, D4>;
  var dq: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) {
    q[c] = ldQ(qrow, c) * p.scale;
    go[c] = lddO(qrow, c);
  }
  let lse = LSE[qrow];
  let delta = DELTA[qrow];
  var kEnd = p.tk;
  if (p.causal != 0u) { kEnd = min(p.tk, q0 + BQ); }
  for (var k0 = 0u; k0 < kEnd; k0 += BK) {
    let n = min(BK, kEnd - k0);
    let kb = bh * p.tk + k0;
    ${shared ? loadTile("K", "V", "kb", "BK", "BQ") : ""}
    var lim = n;
    if (p.causal != 0u) { lim = min(n, select(0u, i + 1u - k0, i + 1u > k0)); }
    for (var j = 0u; j < n; j++) {
      var sd = vec4<f32>(0.0);
      var pd = vec4<f32>(0.0);
      for (var c = 0u; c < D4; c++) {
        sd = fma(q[c], tK(kb, j, c), sd);
        pd = fma(go[c], tV(kb, j, c), pd);
      }
      let pj = select(0.0, exp(sd.x + sd.y + sd.z + sd.w - lse), j < lim);
      let ds = pj * (pd.x + pd.y + pd.z + pd.w - delta);
      for (var c = 0u; c < D4; c++) { dq[c] = fma(vec4<f32>(ds), tK(kb, j, c), dq[c]); }
    }
  }
  if (i < p.tq) {
    for (var c = 0u; c < D4; c++) { stdQ(qrow, c, dq[c] * p.scale); }
  }
}`;
}

function dkvCode(d4: number, bq: number, vec: boolean, shared: boolean): string {
  const t = vec ? "vec4<f32>" : "f32";
  return /* wgsl */ `${header(d4)}
const BKEY = ${ROWS}u;
const BQ = ${bq}u;
${binding(1, "Q", t)}
${binding(2, "K", t)}
${binding(3, "V", t)}
${binding(4, "dO", t)}
${binding(5, "LSE", "f32")}
${binding(6, "DELTA", "f32")}
${binding(7, "dK", t, true)}
${binding(8, "dV", t, true)}
${rowAccess(["Q", "K", "V", "dO"], ["dK", "dV"], vec)}
${tiles("Q", "dO", bq * d4, shared)}
@compute @workgroup_size(${ROWS})
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let flat = ${FLAT_WG};
  if (flat >= p.bh * p.ntile) { return; }
  let bh = flat / p.ntile;
  let k0 = (flat % p.ntile) * BKEY;
  let j = k0 + li;
  let krow = bh * p.tk + min(j, p.tk - 1u);
  var k: array<vec4<f32>, D4>;
  var v: array<vec4<f32>, D4>;
  var dk: array<vec4<f32>, D4>;
  var dv: array<vec4<f32>, D4>;
  for (var c = 0u; c < D4; c++) {
    k[c] = ldK(krow, c) * p.scale;
    v[c] = ldV(krow, c);
  }
  // Causal: queries before k0 see none of this workgroup's keys.
  var qStart = 0u;
  if (p.causal != 0u) { qStart = k0; }
  for (var q0 = qStart; q0 < p.tq; q0 += BQ) {
    let n = min(BQ, p.tq - q0);
    let qb = bh * p.tq + q0;
    ${shared ? loadTile("Q", "dO", "qb", "BQ", "BKEY") : ""}
    // Rows r < first are masked for this key (causal: query q0 + r must be >= j).
    var first = 0u;
    if (p.causal != 0u && j > q0) { first = j - q0; }
    for (var r = 0u; r < n; r++) {
      let row = qb + r;
      var sd = vec4<f32>(0.0);
      var pd = vec4<f32>(0.0);
      for (var c = 0u; c < D4; c++) {
        sd = fma(tQ(qb, r, c), k[c], sd);
        pd = fma(tdO(qb, r, c), v[c], pd);
      }
      // LSE and DELTA of one query are the same for every invocation: a broadcast read.
      let pr = select(0.0, exp(sd.x + sd.y + sd.z + sd.w - LSE[row]), r >= first);
      let ds = pr * (pd.x + pd.y + pd.z + pd.w - DELTA[row]);
      for (var c = 0u; c < D4; c++) {
        dv[c] = fma(vec4<f32>(pr), tdO(qb, r, c), dv[c]);
        dk[c] = fma(vec4<f32>(ds), tQ(qb, r, c), dk[c]);
      }
    }
  }
  if (j < p.tk) {
    for (var c = 0u; c < D4; c++) {
      stdK(krow, c, dk[c] * p.scale);
      stdV(krow, c, dv[c]);
    }
  }
}`;
}

function check(d: AttentionDims): void {
  if (d.d < 1 || d.d > MAX_HEAD_DIM) {
    throw new RangeError(`attention kernel: head dim ${d.d} outside 1..${MAX_HEAD_DIM}`);
  }
  if (d.tk < 1 || d.tq < 1) throw new RangeError(`attention kernel: empty Tq=${d.tq} Tk=${d.tk}`);
}

const cached = codeCache();

function params(d: AttentionDims, ntile: number): ArrayBuffer {
  return new Params().u32(d.bh, d.tq, d.tk, d.d).f32(d.scale).u32(d.causal ? 1 : 0, ntile)
    .build();
}

/**
 * Record the forward pass: `o` gets softmax(scale * q k^T (+ causal mask)) v and `lse` the
 * per-row log-sum-exp of the scaled scores (`bh * tq` floats), which the backward needs.
 */
export function attentionForwardKernel(
  q: Buf,
  k: Buf,
  v: Buf,
  o: Buf,
  lse: Buf,
  d: AttentionDims,
  opts: AttentionLaunchOptions = {},
): void {
  check(d);
  if (d.bh === 0) return;
  const d4 = Math.ceil(d.d / 4);
  const vec = d.d % 4 === 0;
  const mode = attentionTileMode(opts.tiles);
  if (mode === "tiled") {
    const sg = opts.subgroups ?? gpu().tuning.subgroups;
    tiledForward(q, k, v, o, lse, d, launchFlashTile(opts), sg);
    return;
  }
  if (mode === "blocked" && vec) {
    const ntile = Math.ceil(d.tq / (RW_LANES * RW_QPL));
    const name = `attention_fwd_rows_d${d.d}`;
    dispatch(
      name,
      cached(name, () => rowsForwardCode(d4)),
      [q, k, v, o, lse],
      params(d, ntile),
      grid(d.bh * ntile),
    );
    return;
  }
  const ntile = Math.ceil(d.tq / ROWS);
  const shared = mode === "shared";
  const name = `attention_fwd_d${d.d}${shared ? "" : "_direct"}`;
  dispatch(
    name,
    cached(name, () => forwardCode(d4, tileRows(d4), vec, shared)),
    [q, k, v, o, lse],
    params(d, ntile),
    grid(d.bh * ntile),
  );
}

/**
 * Record the backward pass given the forward's `o` and `lse` and the output gradient `dO`:
 * delta = rowsum(dO * O), then dQ (loop over keys) and dK, dV (loop over queries). Pass `null`
 * for `dq` or for both `dk` and `dv` to skip that kernel. `delta` is scratch of `bh * tq` floats.
 */
export function attentionBackwardKernel(
  q: Buf,
  k: Buf,
  v: Buf,
  o: Buf,
  lse: Buf,
  dO: Buf,
  delta: Buf,
  dq: Buf | null,
  dk: Buf | null,
  dv: Buf | null,
  d: AttentionDims,
  opts: AttentionLaunchOptions = {},
): void {
  check(d);
  if (d.bh === 0) return;
  const d4 = Math.ceil(d.d / 4);
  const vec = d.d % 4 === 0;
  const rows = d.bh * d.tq;
  dispatch(
    "attention_delta",
    cached("attention_delta", deltaCode),
    [dO, o, delta],
    new Params().u32(rows, d.d).build(),
    grid(Math.ceil(rows / 64)),
  );
  if (dk && !dv || dv && !dk) {
    throw new Error("attention backward: dk and dv are computed together; pass both or neither");
  }
  const mode = attentionTileMode(opts.tiles);
  if (mode === "tiled") {
    tiledBackward(q, k, v, lse, dO, delta, dq, dk, dv, d, launchFlashTile(opts));
    return;
  }
  if (mode === "blocked" && vec) {
    // Lanes along queries (dQ) and along keys (dK, dV), uniform loads of the other side.
    if (dq) {
      const ntile = Math.ceil(d.tq / (RW_LANES * RB_QPL));
      const name = `attention_dq_rows_d${d.d}`;
      dispatch(
        name,
        cached(name, () => rowsDqCode(d4)),
        [q, k, v, dO, lse, delta, dq],
        params(d, ntile),
        grid(d.bh * ntile),
      );
    }
    if (dk && dv) {
      const ntile = Math.ceil(d.tk / (RW_LANES * RB_KPL));
      const name = `attention_dkv_rows_d${d.d}`;
      dispatch(
        name,
        cached(name, () => rowsDkvCode(d4)),
        [q, k, v, dO, lse, delta, dk, dv],
        params(d, ntile),
        grid(d.bh * ntile),
      );
    }
    return;
  }
  const tile = tileRows(d4);
  const shared = mode === "shared";
  const sfx = shared ? "" : "_direct";
  if (dq) {
    const ntile = Math.ceil(d.tq / ROWS);
    const name = `attention_dq_d${d.d}${sfx}`;
    dispatch(
      name,
      cached(name, () => dqCode(d4, tile, vec, shared)),
      [q, k, v, dO, lse, delta, dq],
      params(d, ntile),
      grid(d.bh * ntile),
    );
  }
  if (dk && dv) {
    const ntile = Math.ceil(d.tk / ROWS);
    const name = `attention_dkv_d${d.d}${sfx}`;
    dispatch(
      name,
      cached(name, () => dkvCode(d4, tile, vec, shared)),
      [q, k, v, dO, lse, delta, dk, dv],
      params(d, ntile),
      grid(d.bh * ntile),
    );
  } else if (dk || dv) {
    throw new Error("attention backward: dk and dv are computed together; pass both or neither");
  }
}
