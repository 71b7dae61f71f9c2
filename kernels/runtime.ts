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
 */
import { checkErrors, deferError, gpu, lostPromise } from "./device.ts";

/** A pooled GPU buffer. `bytes` is the capacity; `batch` the last batch that used it. */
export interface Buf {
  readonly buffer: GPUBuffer;
  readonly bytes: number;
  batch: number;
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

  acquire(bytes: number): Buf {
    const size = sizeClass(bytes);
    const list = this.free.get(size);
    const hit = list?.pop();
    this.inUseBytes += size;
    if (hit) return hit;
    const { device, adapter } = gpu();
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
    return { buffer, bytes: size, batch: 0 };
  }

  release(buf: Buf): void {
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

/** Uniform values: a typed array (u32/i32/f32 mixed through a DataView by the caller). */
export type Uniforms = Uint32Array | Int32Array | Float32Array | ArrayBuffer;

/**
 * Record one compute dispatch. Nothing runs until the batch is submitted by {@link flush}, a
 * readback, or the batch filling up.
 */
export function dispatch(
  name: string,
  code: string,
  buffers: Buf[],
  uniforms: Uniforms | null,
  workgroups: [number, number?, number?],
): void {
  checkErrors();
  const { device } = gpu();
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
    buffers[i].batch = batchId;
    entries.push({ binding: first + i, resource: { buffer: buffers[i].buffer } });
  }
  const bindGroup = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries });
  const cp = ensurePass();
  cp.setPipeline(p);
  cp.setBindGroup(0, bindGroup);
  const [x, y = 1, z = 1] = workgroups;
  if (x > 0 && y > 0 && z > 0) cp.dispatchWorkgroups(x, y, z);
  recorded++;
  counters.dispatches++;
}

/** Submit everything recorded so far (one command buffer). Cheap when nothing is recorded. */
export function flush(): void {
  if (!encoder) return;
  const { device } = gpu();
  pass?.end();
  pass = null;
  if (arena && arenaUsed > 0) device.queue.writeBuffer(arena, 0, arenaCpu, 0, arenaUsed);
  device.queue.submit([encoder.finish()]);
  encoder = null;
  arenaUsed = 0;
  recorded = 0;
  batchId++;
  counters.submits++;
}

/** Copy CPU data into a pooled buffer, submitting first if recorded work still reads it. */
export function upload(buf: Buf, data: ArrayBufferView, byteOffset = 0): void {
  if (buf.batch === batchId && encoder) flush();
  const { device } = gpu();
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  // writeBuffer needs a multiple of 4 bytes; every dtype here is 4 bytes wide.
  device.queue.writeBuffer(buf.buffer, byteOffset, bytes);
}

/**
 * Read `bytes` bytes of `buf` back to the CPU: records a copy, submits, waits. The only place
 * that waits on the GPU; a lost device rejects instead of hanging.
 */
export async function readback(buf: Buf, bytes: number, byteOffset = 0): Promise<ArrayBuffer> {
  checkErrors();
  const { device } = gpu();
  const size = Math.max(4, Math.ceil(bytes / 4) * 4);
  const staging = device.createBuffer({ size, usage: 0x01 /* MAP_READ */ | 0x08 });
  pass?.end();
  pass = null;
  encoder ??= device.createCommandEncoder();
  encoder.copyBufferToBuffer(buf.buffer, byteOffset, staging, 0, size);
  flush();
  counters.readbacks++;
  try {
    await Promise.race([staging.mapAsync(0x01 /* READ */), lostPromise()]);
    const out = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    checkErrors();
    return out;
  } finally {
    staging.destroy();
  }
}

/** Submit pending work and wait until the GPU has finished it (for benchmarks). */
export async function sync(): Promise<void> {
  flush();
  const { device } = gpu();
  await Promise.race([device.queue.onSubmittedWorkDone(), lostPromise()]);
  checkErrors();
}

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
