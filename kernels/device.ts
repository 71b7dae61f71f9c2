/**
 * The one WebGPU device every kernel runs on.
 *
 * `init()` finds an adapter, requests the limits the kernels need and remembers what the adapter
 * is, and the device's kernel {@link Tuning} (CPU or GPU adapter, forced variants). Errors that
 * WebGPU reports asynchronously (WGSL validation, out-of-memory, a lost device) are stored here and
 * thrown by the next operation, so a broken kernel never turns into a hang.
 *
 * A lost or destroyed device is not the end: the next operation throws {@link GpuError}, and a
 * later `init()` creates a new device (tensors of the old one are dead: using one throws).
 */
import { type Tuning, tuningFor } from "./tune.ts";

/** Options for {@link init}. Environment variables give the defaults (see README). */
export interface InitOptions {
  /** Ask for the fallback (software) adapter. Env: `CLIPIT_FALLBACK_ADAPTER=1`. */
  forceFallbackAdapter?: boolean;
  /** Env: `CLIPIT_POWER_PREFERENCE=low-power|high-performance` (default high-performance). */
  powerPreference?: GPUPowerPreference;
  /** Test hook: pretend no adapter exists, to exercise the error path. Env: `CLIPIT_NO_ADAPTER=1`. */
  simulateNoAdapter?: boolean;
  /**
   * Override the device's kernel choices (see {@link Tuning}); e.g. `{ cpu: false }` picks the
   * GPU kernels on a CPU adapter. Env: `CLIPIT_MATMUL_KIND=register|shared` for `matmulKind`.
   */
  tuning?: Partial<Tuning>;
  /**
   * CPU adapters: choose the matmul inputs and tile by a short measured sweep on first use,
   * cached on disk per adapter (`autotune.ts`). `true` (default; env `CLIPIT_TUNE=off` turns it
   * off): read the cache, measure when it has no entry; `"cache"`: read the cache, never
   * measure; `false`: the fixed table only (tests: deterministic).
   */
  tune?: boolean | "cache";
  /** Where warnings go (a corrupt tuning cache); default `console.warn`. */
  onWarning?: (message: string) => void;
}

/** What the adapter is and what it allows; read once, before the device is requested. */
export interface AdapterDescription {
  /** Human-readable adapter name (the vendor, or "unknown adapter", when the driver gives none). */
  description: string;
  /** Vendor reported by the driver (may be empty). */
  vendor: string;
  /** GPU architecture reported by the driver (may be empty). */
  architecture: string;
  /** True for a software (fallback) adapter such as llvmpipe when the driver says so. */
  isFallbackAdapter: boolean;
  /** The adapter's optional WebGPU features, sorted (e.g. "shader-f16", "timestamp-query"). */
  features: string[];
  /** The adapter's WebGPU limits that matter to the kernels (bytes or counts; requested in full). */
  limits: {
    maxBufferSize: number;
    maxStorageBufferBindingSize: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupSizeX: number;
    maxComputeWorkgroupsPerDimension: number;
    maxStorageBuffersPerShaderStage: number;
    maxTextureDimension2D: number;
  };
  /** The WebGPU backend Deno used, when known (`DENO_WEBGPU_BACKEND`). */
  backend: string;
}

/** Raised when no WebGPU adapter can be found; the message says how to get one. */
export class NoAdapterError extends Error {
  /** An error whose message lists how to install a software adapter. */
  constructor() {
    super(
      "No WebGPU adapter found. On a machine without a GPU install Mesa's software rasteriser " +
        "(Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` for llvmpipe through Vulkan, or " +
        "`libegl-mesa0 libgl1-mesa-dri` for llvmpipe through GL) and set XDG_RUNTIME_DIR to a " +
        "writable folder. Deno picks the backend from DENO_WEBGPU_BACKEND=vulkan|gl. On an " +
        "NVIDIA server without a registered Vulkan driver see bench/gpu_check.sh.",
    );
    this.name = "NoAdapterError";
  }
}

/** Raised by the next operation after WebGPU reported an error or lost the device. */
export class GpuError extends Error {
  /** An error with WebGPU's (or the lost device's) message. */
  constructor(message: string) {
    super(message);
    this.name = "GpuError";
  }
}

/** The state shared by every kernel launch. */
export interface Gpu {
  /** The WebGPU device, with the adapter's limits and the features the kernels use. */
  device: GPUDevice;
  /** What the adapter is, read before the device was requested. */
  adapter: AdapterDescription;
  /** Rejects when the device is lost; raced against every wait so nothing hangs. */
  lost: Promise<never>;
  /** Kernel choices for this device, read by every launch (fixed at init unless changed). */
  tuning: Tuning;
  /** Counts the devices this process created: buffers remember the one they belong to. */
  generation: number;
}

let current: Gpu | null = null;
let pending: Promise<Gpu> | null = null;
let deferredError: GpuError | null = null;
let lostInfo: string | null = null;
let generation = 0;
const newDeviceHooks: ((generation: number) => void)[] = [];

/**
 * Run `hook(generation)` whenever a new device replaces a lost one (the runtime drops its pool,
 * pipelines and recording state there: they belong to the old device).
 */
export function onNewDevice(hook: (generation: number) => void): void {
  newDeviceHooks.push(hook);
}

function envFlag(name: string): boolean {
  try {
    const v = Deno.env.get(name);
    return v !== undefined && v !== "" && v !== "0" && v.toLowerCase() !== "false";
  } catch {
    return false; // no --allow-env: fall back to the defaults
  }
}

function envString(name: string): string | undefined {
  try {
    return Deno.env.get(name) ?? undefined;
  } catch {
    return undefined;
  }
}

function describe(adapter: GPUAdapter): AdapterDescription {
  const info = adapter.info;
  const l = adapter.limits;
  return {
    description: info.description || info.vendor || "unknown adapter",
    vendor: info.vendor,
    architecture: info.architecture,
    isFallbackAdapter: (info as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      false,
    features: [...adapter.features].sort(),
    limits: {
      maxBufferSize: l.maxBufferSize,
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
      maxTextureDimension2D: l.maxTextureDimension2D,
    },
    backend: envString("DENO_WEBGPU_BACKEND") ?? "default",
  };
}

async function create(opts: InitOptions): Promise<Gpu> {
  if (opts.simulateNoAdapter ?? envFlag("CLIPIT_NO_ADAPTER")) throw new NoAdapterError();
  if (typeof navigator === "undefined" || !("gpu" in navigator)) throw new NoAdapterError();
  const pref = opts.powerPreference ??
    (envString("CLIPIT_POWER_PREFERENCE") as GPUPowerPreference | undefined) ??
    "high-performance";
  const adapter = await navigator.gpu.requestAdapter({
    powerPreference: pref,
    forceFallbackAdapter: opts.forceFallbackAdapter ?? envFlag("CLIPIT_FALLBACK_ADAPTER"),
  });
  if (!adapter) throw new NoAdapterError();
  // Read everything before requestDevice: the adapter cannot be used afterwards.
  const desc = describe(adapter);
  const l = desc.limits;
  const wanted: Record<string, number> = {
    maxBufferSize: l.maxBufferSize,
    maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
    maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
    maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
    maxTextureDimension2D: l.maxTextureDimension2D,
  };
  if (l.maxStorageBuffersPerShaderStage < 6 || l.maxComputeInvocationsPerWorkgroup < 256) {
    throw new GpuError(
      `adapter "${desc.description}" is too small for these kernels: ` +
        `maxStorageBuffersPerShaderStage=${l.maxStorageBuffersPerShaderStage} (need 6), ` +
        `maxComputeInvocationsPerWorkgroup=${l.maxComputeInvocationsPerWorkgroup} (need 256)`,
    );
  }
  const features: GPUFeatureName[] = [];
  for (const f of ["timestamp-query", "shader-f16", "subgroups"] as GPUFeatureName[]) {
    if (adapter.features.has(f)) features.push(f);
  }
  const device = await adapter.requestDevice({
    requiredLimits: wanted,
    requiredFeatures: features,
  });
  const gen = ++generation;
  const isCurrent = () => generation === gen;
  device.addEventListener("uncapturederror", (ev) => {
    const e = (ev as GPUUncapturedErrorEvent).error;
    if (isCurrent()) deferredError ??= new GpuError(`WebGPU error: ${e.message}`);
  });
  const lost = device.lost.then((info): never => {
    const message = `WebGPU device lost (${info.reason}): ${info.message}`;
    if (isCurrent()) {
      // A device replaced in the meantime reports late: that must not kill its successor.
      lostInfo = message;
      current = null;
      pending = null;
    }
    throw new GpuError(message);
  });
  lost.catch(() => {}); // observed by the races below, not an unhandled rejection
  // A fresh device: errors of a lost predecessor are history, its resources are unusable.
  lostInfo = null;
  deferredError = null;
  if (gen > 1) { for (const hook of newDeviceHooks) hook(gen); }
  const forced = envString("CLIPIT_MATMUL_KIND");
  const tuning = tuningFor(desc, {
    ...(forced === "register" || forced === "shared" ? { matmulKind: forced } : {}),
    ...opts.tuning,
  });
  return { device, adapter: desc, lost, tuning, generation: gen };
}

/**
 * Initialise WebGPU once and return the device. Safe to call many times: later calls return the
 * same device (their options are ignored) until it is lost; then `init()` creates a new one.
 * Throws {@link NoAdapterError} when there is no adapter.
 */
export function init(opts: InitOptions = {}): Promise<Gpu> {
  if (current) return Promise.resolve(current);
  pending ??= create(opts).then(async (g) => {
    current = g;
    await applyMeasuredTuning(g, opts);
    return g;
  }).catch((e) => {
    pending = null;
    throw e;
  });
  return pending;
}

/** The measured matmul preference for a CPU adapter (see `autotune.ts`), when enabled. */
async function applyMeasuredTuning(g: Gpu, opts: InitOptions): Promise<void> {
  if (!g.tuning.cpu || g.tuning.matmul || g.tuning.matmulKind === "shared") return;
  const { autotuneMatmul, tuneEnabledByEnv } = await import("./autotune.ts");
  const mode = opts.tune ?? (tuneEnabledByEnv() ? true : false);
  if (mode === false) return;
  const warn = opts.onWarning ?? ((m: string) => console.warn(`warning: ${m}`));
  await autotuneMatmul(g, mode === "cache" ? "cache" : "measure", warn);
}

/** The initialised device; throws if `init()` has not finished or an error is pending. */
export function gpu(): Gpu {
  checkErrors();
  if (!current) {
    throw new GpuError(
      lostInfo ?? "WebGPU is not initialised: `await init()` before creating tensors",
    );
  }
  return current;
}

/** Throw (once) an error that WebGPU reported since the last check, or a lost device. */
export function checkErrors(): void {
  if (lostInfo) throw new GpuError(lostInfo);
  if (deferredError) {
    const e = deferredError;
    deferredError = null;
    throw e;
  }
}

/** Record an error found asynchronously so that the next operation throws it. */
export function deferError(message: string): void {
  deferredError ??= new GpuError(message);
}

/** A promise that rejects when the device is lost; races readbacks so they never hang. */
export function lostPromise(): Promise<never> {
  return gpu().lost;
}

/** The adapter's description, after `init()`. */
export function adapterInfo(): AdapterDescription {
  return gpu().adapter;
}
