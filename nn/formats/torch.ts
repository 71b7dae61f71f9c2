/**
 * PyTorch checkpoints (`torch.save` zip format, `.bin` / `.pt` / `.pth`) read without Python.
 *
 * A `torch.save` file is a zip archive: `<prefix>/data.pkl` (a pickle of the saved object,
 * whose tensors refer to storages by persistent id), `<prefix>/data/<key>` (the raw bytes of
 * each storage), and optionally `<prefix>/version` and `<prefix>/byteorder`. The prefix is
 * `archive` in recent PyTorch and the file's stem in older versions.
 *
 * Three layers: `ZipReader` (zip.ts) reads the archive, `unpickle` (pickle.ts) runs `data.pkl`
 * with the torch constructors of this file (tensor and parameter rebuilders, storage types; nothing
 * else runs), and `TorchCheckpoint` / `loadTorchCheckpoint` read tensors lazily, one at a time,
 * straight into their final typed array (float types become Float32Array).
 */
import { asIterable, type PickleCallable, PyGlobal, unpickle } from "./pickle.ts";
import { bf16ToF32, f16ToF32 } from "./safetensors.ts";
import { checkInputFile } from "./input_file.ts";
import { ZipReader } from "./zip.ts";

/** Element types of torch storages, named like safetensors dtypes. */
export type TorchDtype =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

const ITEM: Record<TorchDtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

const STORAGE_DTYPES: Record<string, TorchDtype> = {
  DoubleStorage: "F64",
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
  UntypedStorage: "U8",
};

/** A storage named by a persistent id: `('storage', type, key, location, numel)`. */
export interface TorchStorageRef {
  key: string;
  dtype: TorchDtype;
  location: string;
  numel: number;
}

/** A tensor in the unpickled tree: a strided view of a storage, not yet read. */
export class TorchTensorRef {
  isParameter = false;
  constructor(
    readonly storage: TorchStorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly requiresGrad: boolean,
  ) {}
  get dtype(): TorchDtype {
    return this.storage.dtype;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  /** True when the elements are row-major and dense (the storage bytes can be used as is). */
  get isContiguous(): boolean {
    let expected = 1;
    for (let d = this.shape.length - 1; d >= 0; d--) {
      if (this.shape[d] !== 1 && this.stride[d] !== expected) return false;
      expected *= this.shape[d];
    }
    return true;
  }
}

function isIntList(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((v) => typeof v === "number" && Number.isSafeInteger(v));
}

function rebuildTensor(args: unknown[], where: string): TorchTensorRef {
  const [storage, offset, size, stride, requiresGrad] = args;
  if (!storage || typeof storage !== "object" || !("key" in storage)) {
    throw new Error(`${where}: tensor storage is not a torch storage`);
  }
  if (typeof offset !== "number" || !isIntList(size) || !isIntList(stride)) {
    throw new Error(`${where}: bad tensor offset/size/stride`);
  }
  if (size.length !== stride.length || size.some((d) => d < 0) || stride.some((s) => s < 0)) {
    throw new Error(`${where}: bad tensor size [${size}] / stride [${stride}]`);
  }
  return new TorchTensorRef(
    storage as TorchStorageRef,
    offset,
    size,
    stride,
    requiresGrad === true,
  );
}

function rebuildParameter(args: unknown[], where: string): TorchTensorRef {
  const [data, requiresGrad] = args;
  if (!(data instanceof TorchTensorRef)) throw new Error(`${where}: Parameter data not a tensor`);
  const t = new TorchTensorRef(
    data.storage,
    data.storageOffset,
    data.shape,
    data.stride,
    !!requiresGrad,
  );
  t.isParameter = true;
  return t;
}

/** The torch constructors `data.pkl` may call (REDUCE / NEWOBJ), by "module.name". */
const TORCH_CALLABLES: Record<string, PickleCallable> = {
  "torch._utils._rebuild_tensor_v2": rebuildTensor,
  "torch._utils._rebuild_tensor": rebuildTensor,
  "torch._utils._rebuild_parameter": rebuildParameter,
  "torch._utils._rebuild_parameter_with_state": rebuildParameter,
  "torch._tensor._rebuild_from_type_v2": (args, where) => {
    // (func, type, args, state): rebuild with func; the python type (Tensor/Parameter) and
    // attribute state do not change the data.
    const [func, , inner] = args;
    if (
      !(func instanceof PyGlobal) || !Object.hasOwn(TORCH_CALLABLES, func.qualified) ||
      !Array.isArray(inner)
    ) {
      throw new Error(`${where}: unsupported _rebuild_from_type_v2 arguments`);
    }
    return TORCH_CALLABLES[func.qualified](inner, where);
  },
  "torch.Size": (args) => [...asIterable(args[0], "torch.Size")],
};

/** Globals that may appear as values (storage types, the tensor classes). */
function isTorchValueGlobal(g: PyGlobal): boolean {
  if (g.module === "torch" && Object.hasOwn(STORAGE_DTYPES, g.name)) return true;
  if (g.qualified === "torch.Tensor" || g.qualified === "torch.nn.parameter.Parameter") return true;
  return false;
}

/** A tensor read from a checkpoint. Float types are converted to Float32Array. */
export interface LoadedTensor {
  /** The stored element type ("F32", "F16", "BF16", "F64", "I64", "I32", ...). */
  dtype: TorchDtype;
  /** Shape ([] for a scalar). */
  shape: number[];
  /** Float32Array for F64/F32/F16/BF16, BigInt64Array for I64, Int32Array for the rest. */
  data: Float32Array | Int32Array | BigInt64Array;
}

/** Options of `TorchCheckpoint.open` and `loadTorchCheckpoint`. */
export interface TorchCheckpointOptions {
  /** Unknown classes (optimizer extras, argparse.Namespace, ...) become inert PyObject. */
  allowUnknownGlobals?: boolean;
}

/** Top-level keys that wrap the real state dict in training checkpoints, in priority order. */
export const STATE_DICT_WRAPPERS = ["state_dict", "model", "module"] as const;

const LEGACY_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8];

function swapBytes(buf: Uint8Array, item: number): void {
  if (item === 1) return;
  for (let i = 0; i < buf.length; i += item) buf.subarray(i, i + item).reverse();
}

type Elements =
  | Float64Array
  | Uint32Array
  | Uint16Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

/** A typed view of `buf` with the element type of `dtype` (F32 as raw uint32 bits). */
function elementsOf(dtype: TorchDtype, buf: ArrayBuffer, n: number): Elements {
  switch (dtype) {
    case "F64":
      return new Float64Array(buf, 0, n);
    case "F32": // as bit patterns, so that copying through JS numbers cannot alter NaNs
      return new Uint32Array(buf, 0, n);
    case "F16":
    case "BF16":
      return new Uint16Array(buf, 0, n);
    case "I64":
      return new BigInt64Array(buf, 0, n);
    case "I32":
      return new Int32Array(buf, 0, n);
    case "I16":
      return new Int16Array(buf, 0, n);
    case "I8":
      return new Int8Array(buf, 0, n);
    default:
      return new Uint8Array(buf, 0, n);
  }
}

/**
 * An opened `torch.save` zip checkpoint: the unpickled object tree (`root`, with tensors as
 * lazy `TorchTensorRef`s) and the means to read each tensor.
 */
export class TorchCheckpoint {
  readonly path: string;
  /** The saved object: Maps, arrays, numbers, strings, TorchTensorRefs, ... */
  readonly root: unknown;
  readonly zip: ZipReader;
  /** The archive folder inside the zip ("archive" or the file stem). */
  readonly prefix: string;
  readonly littleEndian: boolean;

  private constructor(
    path: string,
    root: unknown,
    zip: ZipReader,
    prefix: string,
    littleEndian: boolean,
  ) {
    this.path = path;
    this.root = root;
    this.zip = zip;
    this.prefix = prefix;
    this.littleEndian = littleEndian;
  }

  /**
   * Opens `path`, reads its central directory and unpickles `data.pkl` (storages are not
   * read). Throws naming the file for: a legacy (pre-1.6, non-zip) torch.save file, a
   * TorchScript archive, a non-zip file, a missing `data.pkl`, unknown globals.
   */
  static async open(path: string, options: TorchCheckpointOptions = {}): Promise<TorchCheckpoint> {
    await checkInputFile(path);
    const head = new Uint8Array(12);
    const f = await Deno.open(path, { read: true });
    try {
      await f.read(head);
    } finally {
      f.close();
    }
    if (LEGACY_MAGIC.every((b, i) => head[i] === b)) {
      throw new Error(
        `${path}: legacy (pre-1.6, non-zip) torch.save format is not supported; load it in ` +
          `PyTorch and save it again with torch.save (zip format) or as safetensors`,
      );
    }
    if (head[0] === 0x80 && head[1] >= 2 && head[1] <= 5) {
      throw new Error(
        `${path}: a bare pickle (pickle.dump, or torch.save with the legacy serialization), not ` +
          `a torch.save zip; save it again with torch.save (zip format) or as safetensors`,
      );
    }
    if (!(head[0] === 0x50 && head[1] === 0x4b)) {
      throw new Error(`${path}: not a torch.save zip checkpoint (no zip signature)`);
    }
    const zip = await ZipReader.open(path);
    try {
      const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
      if (pkls.length !== 1) {
        const ts = [...zip.entries.keys()].some((n) => /^[^/]+\/constants\.pkl$/.test(n));
        throw new Error(
          ts
            ? `${path}: a TorchScript archive, not a torch.save checkpoint`
            : `${path}: zip has ${pkls.length} "<folder>/data.pkl" entries, expected exactly 1`,
        );
      }
      const prefix = pkls[0].slice(0, -"/data.pkl".length);
      let littleEndian = true;
      const bo = `${prefix}/byteorder`;
      if (zip.entries.has(bo)) {
        const order = new TextDecoder().decode(await zip.read(bo)).trim();
        if (order !== "little" && order !== "big") {
          throw new Error(`${path}: unknown byteorder "${order}"`);
        }
        littleEndian = order === "little";
      }
      const storages = new Map<string, TorchStorageRef>();
      const where = `${path}: ${pkls[0]}`;
      const root = unpickle(await zip.read(pkls[0]), {
        source: where,
        allowUnknownGlobals: options.allowUnknownGlobals,
        callables: TORCH_CALLABLES,
        isValueGlobal: isTorchValueGlobal,
        // Tensor python attributes do not affect the data.
        dropsState: (obj) => obj instanceof TorchTensorRef,
        persistentLoad: (pid) => {
          if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
            const kind = Array.isArray(pid) ? pid[0] : pid;
            throw new Error(`${where}: unsupported persistent id ${String(kind)}`);
          }
          const [, type, key, location, numel] = pid;
          if (!(type instanceof PyGlobal) || !Object.hasOwn(STORAGE_DTYPES, type.name)) {
            throw new Error(
              `${where}: unsupported storage type ${String(type?.qualified ?? type)}`,
            );
          }
          if (typeof key !== "string" || typeof numel !== "number") {
            throw new Error(`${where}: bad storage persistent id for key ${String(key)}`);
          }
          let s = storages.get(key);
          if (!s) {
            s = { key, dtype: STORAGE_DTYPES[type.name], location: String(location), numel };
            zip.entry(`${prefix}/data/${key}`); // fail early when the storage is missing
            storages.set(key, s);
          }
          return s;
        },
      });
      return new TorchCheckpoint(path, root, zip, prefix, littleEndian);
    } catch (e) {
      zip.close();
      throw e;
    }
  }

  /**
   * The tensors of the state dict, by name. Rule: starting from the top-level dict, while it
   * holds a key from STATE_DICT_WRAPPERS ("state_dict", then "model", then "module") whose
   * value is a dict, descend into it (the wrapper key is not part of the names; sibling
   * entries such as "epoch" or "optimizer" are ignored). In the dict reached, tensors keep
   * their keys, nested dicts are flattened with "." ("encoder" -> {"w": t} gives "encoder.w"),
   * and other values (numbers, strings, lists) are skipped. Throws when the top level is not
   * a dict, or on a duplicate flattened name.
   */
  tensors(): Map<string, TorchTensorRef> {
    if (!(this.root instanceof Map)) {
      throw new Error(`${this.path}: top-level object is not a dict (state dict expected)`);
    }
    let dict = this.root as Map<unknown, unknown>;
    for (;;) {
      const d = dict;
      const w = STATE_DICT_WRAPPERS.find((k) => d.get(k) instanceof Map);
      if (!w) break;
      dict = d.get(w) as Map<unknown, unknown>;
    }
    const out = new Map<string, TorchTensorRef>();
    const walk = (m: Map<unknown, unknown>, prefix: string) => {
      for (const [k, v] of m) {
        const name = prefix + String(k);
        if (v instanceof TorchTensorRef) {
          if (out.has(name)) throw new Error(`${this.path}: duplicate tensor name "${name}"`);
          out.set(name, v);
        } else if (v instanceof Map) walk(v, `${name}.`);
      }
    };
    walk(dict, "");
    return out;
  }

  /**
   * Reads one tensor: only the storage bytes it spans, gathered through its strides when it
   * is not contiguous, converted to its output type. `name` only labels errors. Throws when
   * the tensor reaches beyond its storage.
   */
  async read(t: TorchTensorRef, name = "tensor"): Promise<LoadedTensor> {
    const where = `${this.path}: tensor "${name}"`;
    const item = ITEM[t.dtype];
    const numel = t.numel;
    const entry = this.zip.entry(`${this.prefix}/data/${t.storage.key}`);
    let span = 0;
    if (numel > 0) {
      span = 1;
      for (let d = 0; d < t.shape.length; d++) span += (t.shape[d] - 1) * t.stride[d];
    }
    const begin = t.storageOffset * item;
    if (numel > 0 && begin + span * item > entry.uncompressedSize) {
      throw new Error(
        `${where}: needs bytes [${begin}, ${begin + span * item}) of storage ` +
          `"${t.storage.key}", which has ${entry.uncompressedSize} bytes`,
      );
    }
    const raw = numel > 0 ? await this.zip.readRange(entry.name, begin, span * item) : null;
    if (raw && !this.littleEndian) swapBytes(raw, item);
    let elems = elementsOf(t.dtype, (raw ?? new Uint8Array(0)).buffer as ArrayBuffer, span);
    if (numel > 0 && !t.isContiguous) {
      // Gather through the strides (transposes, slices, expanded dims) into row-major order.
      const dense = new (elems.constructor as new (n: number) => Elements)(numel);
      const nd = t.shape.length;
      const idx = new Array<number>(nd).fill(0);
      let p = 0;
      for (let i = 0; i < numel; i++) {
        dense[i] = elems[p];
        for (let d = nd - 1; d >= 0; d--) {
          idx[d]++;
          p += t.stride[d];
          if (idx[d] < t.shape[d]) break;
          p -= t.stride[d] * t.shape[d];
          idx[d] = 0;
        }
      }
      elems = dense;
    }
    let data: Float32Array | Int32Array | BigInt64Array;
    switch (t.dtype) {
      case "F32":
        data = new Float32Array(elems.buffer as ArrayBuffer, 0, numel);
        break;
      case "F16":
        data = f16ToF32(elems as Uint16Array);
        break;
      case "BF16":
        data = bf16ToF32(elems as Uint16Array);
        break;
      case "F64":
        data = Float32Array.from(elems as Float64Array);
        break;
      case "I64":
        data = elems as BigInt64Array;
        break;
      case "I32":
        data = elems as Int32Array;
        break;
      default:
        data = Int32Array.from(elems as Int16Array);
    }
    return { dtype: t.dtype, shape: [...t.shape], data };
  }

  /** Closes the archive. */
  close(): void {
    this.zip.close();
  }
}

/**
 * Loads every tensor of the state dict in a `torch.save` zip checkpoint (see
 * `TorchCheckpoint.tensors` for which dict and how names are formed). Tensors are read one at
 * a time; names that refer to the same pickled tensor (tied weights) share one array.
 * Float types (F64/F32/F16/BF16) become Float32Array, I64 BigInt64Array, other ints Int32Array.
 */
export async function loadTorchCheckpoint(
  path: string,
  options: TorchCheckpointOptions = {},
): Promise<Map<string, LoadedTensor>> {
  const ckpt = await TorchCheckpoint.open(path, options);
  try {
    const out = new Map<string, LoadedTensor>();
    const seen = new Map<TorchTensorRef, LoadedTensor>();
    for (const [name, ref] of ckpt.tensors()) {
      let t = seen.get(ref);
      if (!t) {
        t = await ckpt.read(ref, name);
        seen.set(ref, t);
      }
      out.set(name, t);
    }
    return out;
  } finally {
    ckpt.close();
  }
}
