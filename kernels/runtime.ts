/**
 * How kernels reach the GPU: a buffer pool, a pipeline cache, one command encoder that records
 * many dispatches before a single submit, and readbacks.
 *
 * Binding convention for every kernel: `@group(0) @binding(0)` is the kernel's uniform struct
 * (when it has one), then bindings 1, 2, ... are the storage buffers in the order passed to
 * {@link dispatch}. Every kernel's entry point is `main`.
 *
 * Uniforms of all dispatches in a batch live in one arena buffer, written once just before the
 * batch is submitted; WebGPU orders that write after every earlier submit, so reusing the arena
 * is safe. Buffers go back to the pool as soon as their tensor is disposed, even while commands
 * that read them are still being recorded: later dispatches in the same queue run after them. The
 * one unsafe case, a CPU upload into a buffer that an unsubmitted dispatch still reads, is handled
 * by {@link upload}, which submits first.
 *
 * Also here, because they share the recording state (the open encoder and compute pass): copies
 * of buffers into operand textures ({@link copyToTexture}) and per-kernel GPU timing with
 * timestamp queries ({@link startProfile}). One file for one state machine.
 */
import { checkErrors, deferError, gpu, GpuError, lostPromise, onNewDevice } from "./device.ts";

/**
 * A pooled GPU buffer. `bytes` is the capacity; `batch` the last batch that used it; `gen` the
 * device generation it belongs to (a buffer of a lost device cannot be used).
 */
export interface Buf {
  readonly buffer: GPUBuffer;
  readonly bytes: number;
  batch: number;
  readonly gen: number;
}

/** Throw a clear GpuError when `buf` belongs to a device older than `generation`. */
function checkLive(buf: { readonly gen: number }, generation: number): void {
  if (buf.gen !== generation) {
    throw new GpuError(
      "a tensor of a lost WebGPU device was used: tensors do not survive their device; " +
        "create them again after init()",
    );
  }
}

const USAGE = 0x80 /* STORAGE */ | 0x04 /* COPY_SRC */ | 0x08; /* COPY_DST */

/** Round a request up to a size class: 4 classes per power of two, so at most 25% waste. */
export function sizeClass(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 4) * 4);
  if (b <= 4096) return Math.ceil(b / 256) * 256;
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 4;
  return Math.ceil(b / step) * step;
}

/** Statistics of the buffer pool, in bytes. `allocated` is what exists on the GPU. */
export interface PoolStats {
  /** Bytes of all GPU buffers the pool has created and not destroyed. */
  allocatedBytes: number;
  /** Bytes of the buffers held by live tensors (rounded up to size classes). */
  inUseBytes: number;
  /** Bytes of idle buffers waiting for reuse (`allocatedBytes - inUseBytes`). */
  freeBytes: number;
  /** Number of GPU buffers that exist. */
  buffers: number;
}

class BufferPool {
  private free = new Map<number, Buf[]>();
  allocatedBytes = 0;
  inUseBytes = 0;
  buffers = 0;
  /** Generation of the device the pooled buffers belong to (0 until the first allocation). */
  gen = 0;

  acquire(bytes: number): Buf {
    const size = sizeClass(bytes);
    const list = this.free.get(size);
    const hit = list?.pop();
    this.inUseBytes += size;
    if (hit) return hit;
    const { device, adapter, generation } = gpu();
    if (this.gen === 0) this.gen = generation;
    if (size > adapter.limits.maxBufferSize) {
      this.inUseBytes -= size;
      throw new RangeError(
        `cannot allocate ${bytes} bytes: the adapter's maxBufferSize is ` +
          `${adapter.limits.maxBufferSize} (${adapter.description})`,
      );
    }
    const buffer = device.createBuffer({ size, usage: USAGE });
    this.allocatedBytes += size;
    this.buffers++;
    return { buffer, bytes: size, batch: 0, gen: this.gen };
  }

  release(buf: Buf): void {
    if (buf.gen !== this.gen) return; // its device is gone, and so is the buffer
    this.inUseBytes -= buf.bytes;
    let list = this.free.get(buf.bytes);
    if (!list) this.free.set(buf.bytes, list = []);
    list.push(buf);
  }

  /** Destroy every idle buffer (after flushing, so nothing recorded still needs one). */
  trim(): void {
    flush();
    for (const list of this.free.values()) {
      for (const b of list) {
        b.buffer.destroy();
        this.allocatedBytes -= b.bytes;
        this.buffers--;
      }
    }
    this.free.clear();
  }

  /** A new device replaced a lost one: every buffer the pool knew died with the old one. */
  forget(generation: number): void {
    this.free.clear();
    this.allocatedBytes = this.inUseBytes = this.buffers = 0;
    this.gen = generation;
  }

  stats(): PoolStats {
    return {
      allocatedBytes: this.allocatedBytes,
      inUseBytes: this.inUseBytes,
      freeBytes: this.allocatedBytes - this.inUseBytes,
      buffers: this.buffers,
    };
  }
}

/** The process-wide buffer pool. */
export const pool: BufferPool = new BufferPool();

/** Pool statistics: a training loop whose `allocatedBytes` grows is leaking tensors. */
export function poolStats(): PoolStats {
  return pool.stats();
}

// ---- pipelines ------------------------------------------------------------------------------

const pipelines = new Map<string, GPUComputePipeline>();

/**
 * A compute pipeline for WGSL `code` (entry point `main`), compiled once and cached by source.
 * Compilation errors surface, with `name`, from the next operation.
 */
export function pipeline(name: string, code: string): GPUComputePipeline {
  let p = pipelines.get(code);
  if (p) return p;
  const { device } = gpu();
  device.pushErrorScope("validation");
  const module = device.createShaderModule({ label: name, code });
  p = device.createComputePipeline({
    label: name,
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  device.popErrorScope().then((err) => {
    if (err) {
      pipelines.delete(code);
      deferError(`kernel "${name}" failed to compile: ${err.message}`);
    }
  });
  pipelines.set(code, p);
  return p;
}

// ---- recording ------------------------------------------------------------------------------

const ARENA_BYTES = 256 * 1024;
const UNIFORM_SLOT = 256; // minUniformBufferOffsetAlignment
const MAX_DISPATCHES = ARENA_BYTES / UNIFORM_SLOT;

let encoder: GPUCommandEncoder | null = null;
let pass: GPUComputePassEncoder | null = null;
let arena: GPUBuffer | null = null;
const arenaCpu = new Uint8Array(ARENA_BYTES);
let arenaUsed = 0;
let recorded = 0;
let batchId = 1;
/** Counters for tests and benchmarks. */
export const counters = { dispatches: 0, submits: 0, readbacks: 0 };

function ensurePass(): GPUComputePassEncoder {
  if (!pass) {
    const { device } = gpu();
    encoder ??= device.createCommandEncoder();
    pass = encoder.beginComputePass();
  }
  return pass;
}

// ---- textures (operands read through textureLoad on CPU adapters) ----------------------------

/**
 * A pooled rgba32float texture that holds a buffer's floats as texels (texel t at (t % width,
 * t / width)), bound to a kernel in place of a storage buffer (see {@link copyToTexture}).
 */
export interface Tex {
  readonly texture: GPUTexture;
  readonly view: GPUTextureView;
  readonly width: number;
  readonly rows: number;
  readonly gen: number;
}

const texPool = new Map<string, Tex[]>();

/** A texture of `width` x `rows` texels from the pool (rows rounded up to a power of two). */
export function acquireTexture(width: number, rows: number): Tex {
  const h = 2 ** Math.ceil(Math.log2(Math.max(1, rows)));
  const key = `${width}x${h}`;
  const hit = texPool.get(key)?.pop();
  if (hit) return hit;
  const { device, generation } = gpu();
  const texture = device.createTexture({
    size: { width, height: h },
    format: "rgba32float",
    usage: 0x04 /* TEXTURE_BINDING */ | 0x02, /* COPY_DST */
  });
  return { texture, view: texture.createView(), width, rows: h, gen: generation };
}

/** Return a texture to the pool; like buffers, safe while recorded work still reads it. */
export function releaseTexture(t: Tex): void {
  if (t.gen !== gpu().generation) return;
  const key = `${t.width}x${t.rows}`;
  let list = texPool.get(key);
  if (!list) texPool.set(key, list = []);
  list.push(t);
}

/**
 * Record a copy of the first `texels` * 4 floats of `buf` into `tex` (in order with the
 * dispatches around it: later kernels see the copy, earlier ones the texture's old contents).
 */
export function copyToTexture(buf: Buf, tex: Tex, texels: number): void {
  checkErrors();
  const { device, generation } = gpu();
  checkLive(buf, generation);
  if (capturing) return;
  if (recorded >= MAX_DISPATCHES) flush();
  pass?.end();
  pass = null;
  encoder ??= device.createCommandEncoder();
  buf.batch = batchId;
  const W = tex.width, full = Math.floor(texels / W), rest = texels - full * W;
  const bytesPerRow = W * 16;
  if (full > 0) {
    encoder.copyBufferToTexture(
      { buffer: buf.buffer, offset: 0, bytesPerRow },
      { texture: tex.texture },
      { width: W, height: full },
    );
  }
  if (rest > 0) {
    encoder.copyBufferToTexture(
      { buffer: buf.buffer, offset: full * bytesPerRow, bytesPerRow },
      { texture: tex.texture, origin: { x: 0, y: full } },
      { width: rest, height: 1 },
    );
  }
  recorded++;
}

/** Uniform values: a typed array (u32/i32/f32 mixed through a DataView by the caller). */
export type Uniforms = Uint32Array | Int32Array | Float32Array | ArrayBuffer;

/**
 * Record one compute dispatch. Nothing runs until the batch is submitted by {@link flush}, a
 * readback, or the batch filling up.
 */
export function dispatch(
  name: string,
  code: string,
  buffers: (Buf | Tex)[],
  uniforms: Uniforms | null,
  workgroups: [number, number?, number?],
): void {
  checkErrors();
  const { device, generation } = gpu();
  if (capturing) {
    const [x, y = 1, z = 1] = workgroups;
    capturing.push({ name, code, workgroups: [x, y, z], buffers: buffers.length });
    return;
  }
  if (recorded >= MAX_DISPATCHES) flush();
  const p = pipeline(name, code);
  const entries: GPUBindGroupEntry[] = [];
  if (uniforms) {
    const bytes = uniforms instanceof ArrayBuffer
      ? new Uint8Array(uniforms)
      : new Uint8Array(uniforms.buffer, uniforms.byteOffset, uniforms.byteLength);
    if (bytes.byteLength > UNIFORM_SLOT) throw new Error(`${name}: uniforms over 256 bytes`);
    arena ??= device.createBuffer({ size: ARENA_BYTES, usage: 0x40 /* UNIFORM */ | 0x08 });
    arenaCpu.set(bytes, arenaUsed);
    const size = Math.max(16, Math.ceil(bytes.byteLength / 16) * 16);
    entries.push({ binding: 0, resource: { buffer: arena, offset: arenaUsed, size } });
    arenaUsed += UNIFORM_SLOT;
  }
  const first = uniforms ? 1 : 0;
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i];
    if ("view" in b) {
      checkLive(b, generation);
      entries.push({ binding: first + i, resource: b.view });
      continue;
    }
    checkLive(b, generation);
    b.batch = batchId;
    entries.push({ binding: first + i, resource: { buffer: b.buffer } });
  }
  const bindGroup = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries });
  const cp = profiling ? profiledPass(name) : ensurePass();
  cp.setPipeline(p);
  cp.setBindGroup(0, bindGroup);
  const [x, y = 1, z = 1] = workgroups;
  if (x > 0 && y > 0 && z > 0) cp.dispatchWorkgroups(x, y, z);
  if (profiling) {
    cp.end();
    pass = null;
  }
  recorded++;
  counters.dispatches++;
}

// ---- profiling: GPU time per kernel (timestamp queries) ---------------------------------------

/** GPU time of one kernel name over a profile: launches and total nanoseconds. */
export interface KernelTime {
  count: number;
  ns: number;
}

interface Profile {
  querySet: GPUQuerySet;
  resolve: GPUBuffer;
  capacity: number;
  /** Kernel names of the passes recorded in this batch (2 queries each). */
  names: string[];
  pending: Promise<void>[];
  totals: Map<string, KernelTime>;
  /** Pairs whose end was before their start (a driver without reliable timestamps). */
  bad: number;
}

let profiling: Profile | null = null;
const PROFILE_QUERIES = 2048;

/** A compute pass for one dispatch of `name`, with timestamps at its start and end. */
function profiledPass(name: string): GPUComputePassEncoder {
  const prof = profiling!;
  if (prof.names.length * 2 >= prof.capacity) flush();
  const { device } = gpu();
  pass?.end();
  pass = null;
  encoder ??= device.createCommandEncoder();
  const i = prof.names.length * 2;
  prof.names.push(name);
  return encoder.beginComputePass({
    timestampWrites: {
      querySet: prof.querySet,
      beginningOfPassWriteIndex: i,
      endOfPassWriteIndex: i + 1,
    },
  });
}

/** Record the resolve of this batch's timestamps (called by {@link flush} before submit). */
function resolveProfile(enc: GPUCommandEncoder): (() => void) | null {
  const prof = profiling;
  if (!prof || prof.names.length === 0) return null;
  const { device } = gpu();
  const n = prof.names.length * 2;
  const staging = device.createBuffer({ size: n * 8, usage: 0x01 /* MAP_READ */ | 0x08 });
  enc.resolveQuerySet(prof.querySet, 0, n, prof.resolve, 0);
  enc.copyBufferToBuffer(prof.resolve, 0, staging, 0, n * 8);
  const names = prof.names;
  prof.names = [];
  // After the submit: map and add up, without making anything wait for it.
  return () => {
    prof.pending.push(
      staging.mapAsync(0x01).then(() => {
        const t = new BigUint64Array(staging.getMappedRange().slice(0));
        staging.unmap();
        staging.destroy();
        names.forEach((name, k) => {
          const dt = Number(t[2 * k + 1] - t[2 * k]);
          if (!(dt >= 0)) prof.bad++;
          const e = prof.totals.get(name) ?? { count: 0, ns: 0 };
          e.count++;
          e.ns += Math.max(0, dt);
          prof.totals.set(name, e);
        });
      }),
    );
  };
}

/**
 * Start recording the GPU time of every kernel launch (each dispatch gets its own compute pass
 * with timestamp queries, which costs a little). Needs the adapter feature `timestamp-query`;
 * throws a clear Error without it. Stop with {@link stopProfile}.
 */
export function startProfile(): void {
  const { device } = gpu();
  if (!device.features.has("timestamp-query")) {
    throw new Error("profiling needs the adapter feature timestamp-query, which this one lacks");
  }
  if (profiling) throw new Error("a profile is already running");
  flush();
  profiling = {
    querySet: device.createQuerySet({ type: "timestamp", count: PROFILE_QUERIES }),
    resolve: device.createBuffer({
      size: PROFILE_QUERIES * 8,
      usage: 0x200 /* QUERY_RESOLVE */ | 0x04, /* COPY_SRC */
    }),
    capacity: PROFILE_QUERIES,
    names: [],
    pending: [],
    totals: new Map(),
    bad: 0,
  };
}

/**
 * Finish the profile: waits for the GPU and returns the GPU time per kernel name (the name a
 * kernel was dispatched under: its variant), and how many timestamp pairs were unusable.
 */
export async function stopProfile(): Promise<{ kernels: Map<string, KernelTime>; bad: number }> {
  if (!profiling) throw new Error("no profile is running");
  const prof = profiling;
  try {
    await sync();
    await Promise.all(prof.pending);
  } finally {
    profiling = null;
    prof.querySet.destroy();
    prof.resolve.destroy();
  }
  return { kernels: prof.totals, bad: prof.bad };
}

/** Submit everything recorded so far (one command buffer). Cheap when nothing is recorded. */
export function flush(): void {
  if (!encoder) return;
  const { device } = gpu();
  pass?.end();
  pass = null;
  if (arena && arenaUsed > 0) device.queue.writeBuffer(arena, 0, arenaCpu, 0, arenaUsed);
  const afterSubmit = resolveProfile(encoder);
  device.queue.submit([encoder.finish()]);
  afterSubmit?.();
  encoder = null;
  arenaUsed = 0;
  recorded = 0;
  batchId++;
  counters.submits++;
}

/** Copy CPU data into a pooled buffer, submitting first if recorded work still reads it. */
export function upload(buf: Buf, data: ArrayBufferView, byteOffset = 0): void {
  const { device, generation } = gpu();
  checkLive(buf, generation);
  if (buf.batch === batchId && encoder) flush();
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  // writeBuffer needs a multiple of 4 bytes; every dtype here is 4 bytes wide.
  device.queue.writeBuffer(buf.buffer, byteOffset, bytes);
}

/**
 * Read `bytes` bytes of `buf` back to the CPU: records a copy, submits, waits. The only place
 * that waits on the GPU; a lost device rejects with a {@link GpuError} instead of hanging. When
 * kernels recorded input checks since the last readback (see {@link checkSlot}), their words
 * come back in the same copy and a failed check throws its RangeError here.
 */
export async function readback(buf: Buf, bytes: number, byteOffset = 0): Promise<ArrayBuffer> {
  checkErrors();
  const { device, generation } = gpu();
  checkLive(buf, generation);
  const size = Math.max(4, Math.ceil(bytes / 4) * 4);
  const checks = takeChecks();
  const staging = device.createBuffer({
    size: size + checks.bytes,
    usage: 0x01 /* MAP_READ */ | 0x08,
  });
  pass?.end();
  pass = null;
  encoder ??= device.createCommandEncoder();
  encoder.copyBufferToBuffer(buf.buffer, byteOffset, staging, 0, size);
  if (checks.bytes > 0) {
    encoder.copyBufferToBuffer(checks.buf!.buffer, 0, staging, size, checks.bytes);
    encoder.clearBuffer(checks.buf!.buffer, 0, checks.bytes);
  }
  flush();
  counters.readbacks++;
  try {
    await waitOrLost(staging.mapAsync(0x01 /* READ */), "readback");
    const mapped = staging.getMappedRange();
    const out = mapped.slice(0, bytes);
    const words = checks.bytes > 0
      ? new Uint32Array(mapped.slice(size, size + checks.bytes))
      : null;
    staging.unmap();
    checkErrors();
    if (words) reportChecks(words, checks.sites);
    return out;
  } finally {
    staging.destroy();
  }
}

/**
 * Submit pending work and wait until the GPU has finished it (for benchmarks). Pending input
 * checks are read and reported as by {@link readback}.
 */
export async function sync(): Promise<void> {
  if (checkSites.length > 0 && checkBuf) {
    await readback(checkBuf, 0);
    return;
  }
  flush();
  const { device } = gpu();
  await waitOrLost(device.queue.onSubmittedWorkDone(), "sync");
  checkErrors();
}

/**
 * Await `work` or the device's loss, whichever comes first. A rejected map or wait (as after
 * `device.destroy()`, before the loss is reported) becomes a GpuError naming the loss when it is
 * reported within a moment.
 */
async function waitOrLost(work: Promise<unknown>, what: string): Promise<void> {
  const lost = lostPromise();
  try {
    await Promise.race([work, lost]);
  } catch (e) {
    if (e instanceof GpuError) throw e;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const loss = await Promise.race([
      lost.then(() => null, (l) => l as GpuError),
      new Promise<null>((r) => timer = setTimeout(() => r(null), 250)),
    ]);
    clearTimeout(timer);
    throw loss ?? new GpuError(`WebGPU ${what} failed: ${(e as Error).message ?? e}`);
  }
}

// ---- input checks on the GPU ------------------------------------------------------------------

/** u32 words per check slot: count, max of (bad value ^ 0x80000000), max of ~(that). */
const SLOT_WORDS = 4;
/** Slots between two readbacks; later checks share the last slot. */
const CHECK_SLOTS = 64;

/** What a failed check reports: how many values failed and the smallest and largest of them. */
export interface CheckResult {
  count: number;
  min: number;
  max: number;
}

let checkBuf: Buf | null = null;
/** Messages of the checks recorded since the last readback, one per slot in use. */
let checkSites: ((r: CheckResult) => string)[] = [];

/**
 * Reserve a slot of the device-side check buffer for one launch that validates its inputs on the
 * GPU (so checking them costs no readback). The kernel binds `buf` as
 * `array<atomic<u32>>` (see `CHECK_WGSL` in `wgsl.ts`) and reports each bad value into word
 * `slot * 4`; the next readback (or `sync`) brings the words back with its data and throws
 * `RangeError(message(result))` for the first slot that saw a bad value. Slots past the 64th of a
 * batch share the last one, whose message then names the first of those launches.
 */
export function checkSlot(message: (r: CheckResult) => string): { buf: Buf; slot: number } {
  if (!checkBuf) {
    const { device, generation } = gpu();
    const buffer = device.createBuffer({ size: CHECK_SLOTS * SLOT_WORDS * 4, usage: USAGE });
    checkBuf = { buffer, bytes: CHECK_SLOTS * SLOT_WORDS * 4, batch: 0, gen: generation };
  }
  if (capturing) return { buf: checkBuf, slot: 0 };
  if (checkSites.length < CHECK_SLOTS) checkSites.push(message);
  return { buf: checkBuf, slot: checkSites.length - 1 };
}

/** Hand the pending checks to a readback: the buffer, the bytes in use, their messages. */
function takeChecks(): { buf: Buf | null; bytes: number; sites: ((r: CheckResult) => string)[] } {
  const sites = checkSites;
  checkSites = [];
  return { buf: checkBuf, bytes: sites.length * SLOT_WORDS * 4, sites };
}

function reportChecks(words: Uint32Array, sites: ((r: CheckResult) => string)[]): void {
  for (let i = 0; i < sites.length; i++) {
    const count = words[i * SLOT_WORDS];
    if (count === 0) continue;
    const max = (words[i * SLOT_WORDS + 1] ^ 0x80000000) | 0;
    const min = (~words[i * SLOT_WORDS + 2] ^ 0x80000000) | 0;
    throw new RangeError(sites[i]({ count, min, max }));
  }
}

// ---- capture (for printing the WGSL a launch runs) --------------------------------------------

/** One dispatch seen by {@link captureDispatches}. */
export interface CapturedDispatch {
  /** The kernel's name (its variant). */
  name: string;
  /** The WGSL source. */
  code: string;
  /** Workgroups in x, y, z. */
  workgroups: [number, number, number];
  /** Storage buffers bound. */
  buffers: number;
}

let capturing: CapturedDispatch[] | null = null;

/**
 * Run `fn` with dispatching replaced by recording: every kernel launch inside it is listed with
 * its WGSL instead of running (nothing is submitted, no buffer is read or written by a kernel).
 * The launch functions choose their variants exactly as they would for real, so this prints what
 * a call runs on this device (`deno task wgsl`).
 */
export function captureDispatches(fn: () => void): CapturedDispatch[] {
  const out: CapturedDispatch[] = [];
  const prev = capturing;
  capturing = out;
  try {
    fn();
  } finally {
    capturing = prev;
  }
  return out;
}

// ---- a new device ------------------------------------------------------------------------------

onNewDevice((generation) => {
  // Everything below belongs to the lost device: drop it without touching it.
  pool.forget(generation);
  texPool.clear();
  pipelines.clear();
  encoder = null;
  pass = null;
  arena = null;
  arenaUsed = 0;
  recorded = 0;
  batchId++;
  checkBuf = null;
  checkSites = [];
  profiling = null;
});

/**
 * Workgroup counts for `n` workgroups in a 2-D grid that respects
 * maxComputeWorkgroupsPerDimension. Kernels recover the flat index as
 * `wg.x + wg.y * nwg.x` (see `FLAT_WG` in `wgsl.ts`).
 */
export function grid(n: number): [number, number] {
  const max = gpu().adapter.limits.maxComputeWorkgroupsPerDimension;
  if (n <= max) return [n, 1];
  const y = Math.ceil(n / max);
  return [Math.ceil(n / y), y];
}
