/**
 * Kernel shapes per adapter, and the per-device {@link Tuning} state every launch reads. A CPU
 * rasteriser (llvmpipe, lavapipe, SwiftShader) runs each workgroup on one core with invocations
 * as SIMD lanes: there, big register tiles and no workgroup memory win (DESIGN.md section 3), and
 * every lane should read the same A values so the compiler emits one scalar load instead of a
 * per-lane gather. A real GPU wants the opposite: workgroup-memory tiles shared by 256
 * invocations with a few outputs each.
 *
 * {@link isCpuAdapter} is the one place that tells the two apart; `init()` stores its answer in
 * the device's {@link Tuning}, together with the overrides (`InitOptions`, or the environment read
 * once at init: `CLIPIT_MATMUL_KIND=register|shared`).
 */
import type { AdapterDescription } from "./device.ts";

/** A matmul kernel family (see {@link MatmulTile}). */
export type MatmulKind = "register" | "shared";

/**
 * Which attention kernels run: `tiled` is the flash attention for GPUs (a block of queries per
 * workgroup, score tiles as small matrix products in workgroup memory; `attention_tiled.ts`);
 * the others run one query row per invocation and differ in how they read their K/V (or Q/dO)
 * tiles: `shared` stages them in workgroup memory, `direct` reads them from the storage buffers,
 * `blocked` is `direct` with the lanes-along-queries forward (CPU adapters, D % 4 == 0). `auto`
 * picks per adapter (`tiled` on GPUs, `blocked` on CPU adapters). See `attention.ts`.
 */
export type TileMode = "auto" | "tiled" | "shared" | "direct" | "blocked";

/**
 * Kernel choices of one device, fixed when it is created and read by every launch: whether the
 * adapter runs shaders on the CPU, and the forced variants. Tests and benchmarks force a variant
 * per call through the kernels' options instead; changing a field here affects every later launch
 * on this device.
 */
export interface Tuning {
  /** The adapter runs shaders on the CPU ({@link isCpuAdapter}); every CPU/GPU choice reads it. */
  cpu: boolean;
  /** Matmul family for products without an explicit tile; null picks per adapter. */
  matmulKind: MatmulKind | null;
  /** Attention tile mode for calls without one ("auto" picks per adapter). */
  attentionTiles: TileMode;
  /**
   * Kernels may use subgroup operations: the adapter offers `subgroups` (and the device was
   * created with it). False forces the paths without them.
   */
  subgroups: boolean;
  /**
   * CPU adapters: the register matmul's inputs and largest tile, when measured (see
   * `autotune.ts`); null uses the fixed table below.
   */
  matmul: MatmulPreference | null;
  /** Where `matmul` came from: "table" (fixed), "cache" (a stored measurement), "measured". */
  matmulSource: "table" | "cache" | "measured";
}

/** What a sweep on a CPU adapter chose for the register matmul family. */
export interface MatmulPreference {
  /** Read A and B through textures ({@link MatmulTile.textures}). */
  textures: boolean;
  /** Largest TM and TN of a register tile. */
  maxTile: 16 | 32;
}

/**
 * How one matmul dispatch is shaped.
 * - `register`: each invocation computes TM x TN outputs straight from storage buffers; a
 *   workgroup is WX x WY invocations (WX along N). TM, TN: 1..32; TN a multiple of 4 for vec4
 *   loads of B and C.
 * - `shared`: the workgroup stages a (WY*TM) x BK tile of A and a BK x (WX*TN) tile of B in
 *   workgroup memory, then each invocation computes TM x TN outputs from it.
 */
export interface MatmulTile {
  TM: number;
  TN: number;
  WX: number;
  WY: number;
  /** Kernel family; `register` when absent. */
  kind?: MatmulKind;
  /** Depth of the workgroup-memory tile (shared kind only); default 8. */
  BK?: number;
  /**
   * Register kind only: consecutive workgroups walk down the rows (the grid's x axis counts row
   * blocks), so they reuse one panel of B from cache while A streams through contiguously.
   */
  rowsFirst?: boolean;
  /** Register kind only: the k loop is unrolled 4 * KU times (default 1). */
  KU?: number;
  /**
   * Shared kind only: two copies of each workgroup-memory tile, the next staged while the current
   * one is used (one barrier per step instead of two; twice the memory).
   */
  double?: boolean;
  /**
   * Split the k loop over this many workgroups (default 1): each writes its partial product to
   * scratch memory and a second kernel sums them and applies the epilogue. For products with
   * too few output tiles to fill the GPU and a deep k.
   */
  splitK?: number;
  /**
   * Register kind only: read A and B through rgba32float textures (`textureLoad`) instead of
   * storage buffers; the launch copies the operands into pooled textures. On llvmpipe a storage
   * buffer load is a per-lane loop with bounds checks, a texel fetch is not. `"A"` or `"B"`:
   * only that operand (the other from its storage buffer).
   */
  textures?: boolean | "A" | "B";
}

/** The sizes a tile is chosen for (batch, rows, columns, depth). */
export interface MatmulShape {
  batch: number;
  M: number;
  N: number;
  K: number;
}

/** True for adapters that run shaders on the CPU (Mesa llvmpipe/lavapipe, SwiftShader, WARP). */
export function isCpuAdapter(a: AdapterDescription): boolean {
  return a.isFallbackAdapter ||
    /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render|warp/i.test(a.description) ||
    a.vendor === "65541" /* VK_VENDOR_ID_MESA: llvmpipe through Vulkan */;
}

/** The {@link Tuning} of a new device on adapter `a`, with `overrides` applied. */
export function tuningFor(a: AdapterDescription, overrides: Partial<Tuning> = {}): Tuning {
  return {
    cpu: overrides.cpu ?? isCpuAdapter(a),
    matmulKind: overrides.matmulKind ?? null,
    attentionTiles: overrides.attentionTiles ?? "auto",
    subgroups: overrides.subgroups ?? a.features.includes("subgroups"),
    matmul: overrides.matmul ?? null,
    matmulSource: overrides.matmulSource ?? (overrides.matmul ? "measured" : "table"),
  };
}

function count(s: MatmulShape, bm: number, bn: number): number {
  return Math.ceil(s.M / bm) * Math.ceil(s.N / bn) * s.batch;
}

/**
 * Register tile for a CPU adapter: 8 lanes (one AVX2 vector) along N, TM x TN outputs each.
 *
 * Measured on llvmpipe (Mesa 22.3, 2 cores): every storage-buffer load there is a per-lane loop,
 * so the tile with the most FMAs per loaded value wins: 1024^3 takes ~105 ms of CPU with 32x32,
 * ~130 ms with 16x16, ~155 ms with 16x8, and 4x4 / 8x8 are 5x slower. Big tiles compile slowly
 * (0.3 s for 16x8, 0.6 s for 16x16, ~5 s for 32x32), so they are kept for products large enough
 * to repay it. Tiles never get much wider or taller than the matrix.
 */
function cpuTile(s: MatmulShape, pref: MatmulPreference | null = null): MatmulTile {
  const work = s.batch * s.M * s.N * s.K;
  const cap = pref?.maxTile === 16 ? 256 : 1024;
  // A sweep that found 32x32 fastest (autotune.ts) has paid for compiling it: use it from
  // 2^28 multiply-adds (ViT-B/16's products at batch 2: 0.71 -> 1.0 images/s on an EPYC).
  const big = pref?.maxTile === 32 ? 2 ** 28 : 2 ** 30;
  const maxOutputs = Math.min(cap, work >= big ? 1024 : work >= 2 ** 26 ? 256 : 128);
  const pick = (limit: number) => [32, 16, 8, 4].find((t) => t <= limit) ?? 4;
  // Square-ish blocks: the most FMAs per loaded value for a given number of outputs.
  const TN = pick(Math.max(4, Math.min(Math.sqrt(maxOutputs), s.N / 8)));
  let TM = pick(Math.max(4, Math.min(s.M, maxOutputs / TN)));
  // Keep both cores busy: at least 4 workgroups when the product allows it.
  while (TM > 4 && count(s, TM, 8 * TN) < 4) TM /= 2;
  // rowsFirst: consecutive workgroups share B's column panel in cache.
  const t: MatmulTile = { TM, TN, WX: 8, WY: 1, rowsFirst: true };
  // Textures where measured faster, for products that repay the copy into them.
  if (pref?.textures && work >= 2 ** 21) t.textures = true;
  return t;
}

/** Workgroup-memory tile for a GPU: as large as still gives enough workgroups to fill it. */
function gpuTile(s: MatmulShape, a: AdapterDescription): MatmulTile {
  const wgMem = a.limits.maxComputeWorkgroupStorageSize;
  const inv = a.limits.maxComputeInvocationsPerWorkgroup;
  // ~2 waves of workgroups on a 100+ SM GPU before the biggest tile pays off.
  const fits = (t: MatmulTile) =>
    t.WX * t.WY <= inv && (t.BK ?? 8) * (t.WY * t.TM + t.WX * t.TN) * 4 <= wgMem;
  // Measured on an NVIDIA H200 (bench/matmul_tune.ts): 4096^3 16.2 TFLOP/s with the big tile
  // (BK 8: 15.7), the mid tile best at 1024^3 and for odd sizes.
  const big: MatmulTile = { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 16 };
  const mid: MatmulTile = { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16 };
  const small: MatmulTile = { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 16 };
  if (count(s, 128, 128) >= 256 && fits(big)) return big;
  // Too few output tiles for the GPU and a deep k: split k over workgroups (a second kernel
  // sums the slices). Untimed default: bench/matmul_tune.ts measures the split candidates.
  if (count(s, 64, 64) < 64 && s.K >= 2048 && fits(mid)) {
    return {
      ...mid,
      splitK: Math.min(8, Math.ceil(128 / count(s, 64, 64)), Math.floor(s.K / 512)),
    };
  }
  if (count(s, 64, 64) >= 128 && fits(mid)) return mid;
  return fits(small) ? small : { kind: "shared", TM: 4, TN: 4, WX: 8, WY: 8, BK: 4 };
}

/**
 * The tile to use for a matmul of shape `s` on adapter `a`: `tuning.matmulKind` when set, else
 * the register family on CPU adapters (`tuning.cpu`, or {@link isCpuAdapter}) and the
 * workgroup-memory family on GPUs.
 */
export function matmulTile(
  s: MatmulShape,
  a: AdapterDescription,
  tuning: Partial<Tuning> = {},
): MatmulTile {
  const kind = tuning.matmulKind ?? ((tuning.cpu ?? isCpuAdapter(a)) ? "register" : "shared");
  return kind === "register" ? cpuTile(s, tuning.matmul ?? null) : gpuTile(s, a);
}
