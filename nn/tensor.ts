/**
 * Tensors: a shape, a dtype and a pooled GPU buffer. Always contiguous (row-major); reshape is a
 * view that shares the buffer, every other layout change is a copy kernel.
 *
 * Memory: a tensor holds its buffer until `dispose()`. Tensors created inside {@link tidy} are
 * disposed when it returns, except what it returns and what was {@link keep}-ed. That is how a
 * training loop keeps GPU memory flat.
 */
import { type Buf, pool, readback, upload } from "../kernels/runtime.ts";
import { fillKernel } from "../kernels/elementwise.ts";
import type { Node } from "./autograd.ts";
import { Rng } from "./rng.ts";

export { Rng } from "./rng.ts";

/** Element type: float32 for values, int32 for indices and labels. */
export type DType = "float32" | "int32";

/** A shared, reference-counted GPU buffer (several reshaped views may share one). */
class Storage {
  refs = 1;
  constructor(public buf: Buf) {}
  release(): void {
    if (--this.refs === 0) pool.release(this.buf);
  }
}

// ---- scopes -----------------------------------------------------------------------------------

const scopes: Set<Tensor>[] = [];

/**
 * Run `fn`, then dispose every tensor created inside it except those it returns (a tensor, or an
 * array, object, Map (keys and values) or Set of tensors, nested) and those passed to
 * {@link keep}. Synchronous functions only: an
 * `await` inside would let other code's tensors land in this scope.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  const survivors = new Set<Tensor>();
  collect(result!, survivors);
  const parent = scopes[scopes.length - 1];
  for (const t of scope) {
    if (survivors.has(t)) {
      t.scope = parent ?? null;
      parent?.add(t);
    } else t.dispose();
  }
  return result!;
}

function collect(x: unknown, out: Set<Tensor>): void {
  if (x instanceof Tensor) out.add(x);
  else if (Array.isArray(x) || x instanceof Set) x.forEach((y) => collect(y, out));
  else if (x instanceof Map) {
    x.forEach((v, k) => {
      collect(k, out);
      collect(v, out);
    });
  } else if (x && typeof x === "object" && !(x instanceof Promise)) {
    for (const v of Object.values(x)) collect(v, out);
  }
}

/** Exclude `t` from every enclosing {@link tidy}: the caller now owns it. Returns `t`. */
export function keep<T extends Tensor>(t: T): T {
  t.scope?.delete(t);
  t.scope = null;
  return t;
}

// ---- the tensor ------------------------------------------------------------------------------

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function checkShape(shape: readonly number[]): void {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`invalid shape [${shape}]`);
  }
}

let nextId = 1;

/** An n-dimensional array on the GPU. */
export class Tensor {
  /** Unique id (for debugging and the autograd's bookkeeping). */
  readonly id: number = nextId++;
  /** Gradient accumulated by `backward` (leaf tensors with `requiresGrad`). */
  grad: Tensor | null = null;
  /** The autograd node that produced this tensor, if it was produced with gradients on. */
  node: Node | null = null;
  /** @internal the tidy scope that owns this tensor. */
  scope: Set<Tensor> | null = null;
  /** A name for error messages and checkpoints. */
  name = "";
  private storage: Storage | null;

  /** @internal use `tensor()`, `zeros()`, ... to make tensors. */
  constructor(
    storage: Storage | Buf,
    readonly shape: readonly number[],
    readonly dtype: DType = "float32",
    public requiresGrad = false,
  ) {
    checkShape(shape);
    this.storage = storage instanceof Storage ? storage : new Storage(storage);
    const top = scopes[scopes.length - 1];
    if (top) {
      top.add(this);
      this.scope = top;
    }
  }

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  /** True once `dispose()` was called. */
  get disposed(): boolean {
    return this.storage === null;
  }

  /** @internal the GPU buffer; throws a clear error after `dispose()`. */
  get buf(): Buf {
    if (!this.storage) {
      throw new Error(
        `tensor ${this.name || "#" + this.id} [${this.shape}] was used after dispose() ` +
          `(was it created inside a tidy() that has returned?)`,
      );
    }
    return this.storage.buf;
  }

  /** @internal a new tensor of `shape` sharing this buffer (same element count). */
  view(shape: readonly number[]): Tensor {
    if (numel(shape) !== this.size) {
      throw new RangeError(`cannot view [${this.shape}] as [${shape}]`);
    }
    const s = this.storage;
    if (!s) void this.buf; // throws the use-after-dispose error
    s!.refs++;
    return new Tensor(s!, shape, this.dtype);
  }

  /**
   * Copy the values to the CPU: a Float32Array for a float32 tensor, an Int32Array for an int32
   * one (exact). {@link toFloat32Array} and {@link toInt32Array} say which they expect.
   */
  async toArray(): Promise<Float32Array | Int32Array> {
    const bytes = await readback(this.buf, this.size * 4);
    return this.dtype === "int32" ? new Int32Array(bytes) : new Float32Array(bytes);
  }

  /** Copy a float32 tensor's values to the CPU (throws a TypeError on an int32 tensor). */
  async toFloat32Array(): Promise<Float32Array> {
    if (this.dtype !== "float32") throw new TypeError(`toFloat32Array() on ${this}`);
    return new Float32Array(await readback(this.buf, this.size * 4));
  }

  /** Copy an int32 tensor's values to the CPU exactly. */
  async toInt32Array(): Promise<Int32Array> {
    if (this.dtype !== "int32") throw new TypeError(`toInt32Array() on ${this}`);
    return new Int32Array(await readback(this.buf, this.size * 4));
  }

  /** The single value of a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new RangeError(`item() needs one element, got [${this.shape}]`);
    return (await this.toArray())[0];
  }

  /** Release the GPU buffer (and the gradient). Safe to call twice. */
  dispose(): void {
    if (!this.storage) return;
    this.storage.release();
    this.storage = null;
    this.node = null;
    this.scope?.delete(this);
    this.scope = null;
    this.grad?.dispose();
    this.grad = null;
  }

  /** `Tensor(shape=[2, 3], float32)`. */
  toString(): string {
    return `Tensor(${this.name ? this.name + ", " : ""}shape=[${this.shape}], ${this.dtype})`;
  }
}

// ---- creation ---------------------------------------------------------------------------------

/** Options for tensor creation. */
export interface TensorOptions {
  /** Make it a leaf that `backward` accumulates a gradient into (default false). */
  requiresGrad?: boolean;
  /** Element type (default float32; `tensor()` infers int32 from an Int32Array). */
  dtype?: DType;
}

/** Allocate an uninitialised tensor (its values are whatever the pooled buffer held). */
export function empty(shape: readonly number[], dtype: DType = "float32"): Tensor {
  checkShape(shape);
  return new Tensor(pool.acquire(Math.max(1, numel(shape)) * 4), shape, dtype);
}

function flatten(data: unknown, out: number[]): void {
  if (typeof data === "number") out.push(data);
  else if (Array.isArray(data)) data.forEach((d) => flatten(d, out));
  else throw new TypeError(`tensor(): expected numbers or nested arrays, got ${typeof data}`);
}

/**
 * A tensor from CPU data. `data` is a typed array or (nested) number array holding
 * `prod(shape)` values; `shape` defaults to `[data.length]` for flat data.
 */
export function tensor(
  data: ArrayLike<number> | number[] | number[][] | number[][][] | number,
  shape?: readonly number[],
  opts: TensorOptions = {},
): Tensor {
  const dtype = opts.dtype ?? (data instanceof Int32Array ? "int32" : "float32");
  let flat: ArrayLike<number>;
  if (data instanceof Float32Array || data instanceof Int32Array) flat = data;
  else if (typeof data === "number") flat = [data];
  else {
    const arr: number[] = [];
    flatten(data, arr);
    flat = arr;
  }
  const s = shape ?? (typeof data === "number" ? [] : [flat.length]);
  if (numel(s) !== flat.length) {
    throw new RangeError(`tensor(): ${flat.length} values do not fill shape [${s}]`);
  }
  const typed = dtype === "int32"
    ? (flat instanceof Int32Array ? flat : Int32Array.from(flat))
    : (flat instanceof Float32Array ? flat : Float32Array.from(flat));
  const t = empty(s, dtype);
  if (typed.length > 0) upload(t.buf, typed);
  t.requiresGrad = opts.requiresGrad ?? false;
  return t;
}

/** A tensor filled with `value`. */
export function full(shape: readonly number[], value: number, opts: TensorOptions = {}): Tensor {
  const t = empty(shape, opts.dtype ?? "float32");
  fillKernel(t.buf, t.size, value, t.dtype === "int32" ? "i32" : "f32");
  t.requiresGrad = opts.requiresGrad ?? false;
  return t;
}

/** A tensor of zeros. */
export function zeros(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 0, opts);
}

/** A tensor of ones. */
export function ones(shape: readonly number[], opts: TensorOptions = {}): Tensor {
  return full(shape, 1, opts);
}

// ---- seeded random numbers (CPU, so results do not depend on the adapter) ----------------------

/** Options for the random constructors. */
export interface RandomOptions extends TensorOptions {
  /** Seed of a fresh generator (default 0); ignored when `rng` is given. */
  seed?: number;
  /** Reuse a generator instead of seeding a new one. */
  rng?: Rng;
}

/** Normal(mean, std) values from a seeded generator. */
export function randn(
  shape: readonly number[],
  opts: RandomOptions & { mean?: number; std?: number } = {},
): Tensor {
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const a = new Float32Array(numel(shape));
  const m = opts.mean ?? 0, s = opts.std ?? 1;
  for (let i = 0; i < a.length; i++) a[i] = m + s * rng.normal();
  return tensor(a, shape, { requiresGrad: opts.requiresGrad });
}

/** Uniform values in [low, high) from a seeded generator. */
export function rand(
  shape: readonly number[],
  opts: RandomOptions & { low?: number; high?: number } = {},
): Tensor {
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const a = new Float32Array(numel(shape));
  const lo = opts.low ?? 0, hi = opts.high ?? 1;
  for (let i = 0; i < a.length; i++) a[i] = lo + (hi - lo) * rng.next();
  return tensor(a, shape, { requiresGrad: opts.requiresGrad });
}
