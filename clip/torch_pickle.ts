/**
 * PyTorch checkpoints (`torch.save` zip format, `.bin` / `.pt` / `.pth`) read without Python.
 *
 * A `torch.save` file is a zip archive: `<prefix>/data.pkl` (a pickle of the saved object,
 * whose tensors refer to storages by persistent id), `<prefix>/data/<key>` (the raw bytes of
 * each storage), and optionally `<prefix>/version` and `<prefix>/byteorder`. The prefix is
 * `archive` in recent PyTorch and the file's stem in older versions.
 *
 * Three layers, each exported:
 * - `ZipReader`: central directory, stored and deflated entries, zip64, ranged reads.
 * - `unpickle`: a small pickle virtual machine (protocols 2-5 opcodes that torch.save and
 *   plain data use). It never imports or runs anything: a GLOBAL is resolved against a fixed
 *   table of known constructors (OrderedDict, torch tensor rebuilders, storage types, ...),
 *   and anything else fails with an error naming it (or, on request, becomes an inert
 *   `PyObject` record).
 * - `TorchCheckpoint` / `loadTorchCheckpoint`: tensors read lazily, one at a time, straight
 *   into their final typed array (float types become Float32Array).
 */
import { inflateRawSync } from "node:zlib";
import { bf16ToF32, f16ToF32 } from "../nn/safetensors.ts";

// ---------------------------------------------------------------------------------------------
// Zip

/** One member of a zip archive, from its central directory record. */
export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflate. */
  method: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const SIG_ZIP64_EOCD = 0x06064b50;

function u64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what} ${v} is too large`);
  return Number(v);
}

/**
 * A read-only zip archive on disk. Only the central directory is read on open; entries are
 * read on demand with seek + read. Supports stored and deflated entries and zip64.
 */
export class ZipReader {
  readonly path: string;
  readonly size: number;
  readonly entries: Map<string, ZipEntry>;
  #file: Deno.FsFile | null;
  #queue: Promise<unknown> = Promise.resolve();
  #dataStart = new Map<string, number>();

  private constructor(path: string, file: Deno.FsFile, size: number, entries: ZipEntry[]) {
    this.path = path;
    this.#file = file;
    this.size = size;
    this.entries = new Map(entries.map((e) => [e.name, e]));
  }

  /** Opens `path` and reads its central directory. Throws naming the file if not a zip. */
  static async open(path: string): Promise<ZipReader> {
    const file = await Deno.open(path, { read: true });
    try {
      const size = (await file.stat()).size;
      // The end-of-central-directory record is 22 bytes plus a comment of up to 65535 bytes.
      const tailLen = Math.min(size, 22 + 65535);
      const tail = new Uint8Array(tailLen);
      await readAt(file, size - tailLen, tail, path);
      const tv = new DataView(tail.buffer);
      let eocd = -1;
      for (let i = tailLen - 22; i >= 0; i--) {
        if (tv.getUint32(i, true) === SIG_EOCD) {
          eocd = i;
          break;
        }
      }
      if (eocd < 0) {
        throw new Error(`${path}: not a zip archive (no end-of-central-directory record)`);
      }
      let count = tv.getUint16(eocd + 10, true);
      let cdSize = tv.getUint32(eocd + 12, true);
      let cdOffset = tv.getUint32(eocd + 16, true);
      // zip64: a locator right before the EOCD points at the zip64 EOCD with 64-bit fields.
      if (eocd >= 20 && tv.getUint32(eocd - 20, true) === SIG_ZIP64_LOCATOR) {
        const at = u64(tv, eocd - 20 + 8, `${path}: zip64 EOCD offset`);
        const rec = new Uint8Array(56);
        await readAt(file, at, rec, path);
        const rv = new DataView(rec.buffer);
        if (rv.getUint32(0, true) !== SIG_ZIP64_EOCD) {
          throw new Error(`${path}: zip64 end-of-central-directory record not found at ${at}`);
        }
        count = u64(rv, 32, `${path}: entry count`);
        cdSize = u64(rv, 40, `${path}: central directory size`);
        cdOffset = u64(rv, 48, `${path}: central directory offset`);
      }
      if (cdOffset + cdSize > size) {
        throw new Error(`${path}: central directory [${cdOffset}, +${cdSize}) beyond file end`);
      }
      const cd = new Uint8Array(cdSize);
      await readAt(file, cdOffset, cd, path);
      return new ZipReader(path, file, size, parseCentralDirectory(path, cd, count, size));
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The entry called `name`, or throws naming the archive. */
  entry(name: string): ZipEntry {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.path}: zip archive has no entry "${name}"`);
    return e;
  }

  /** Runs `fn` after every earlier file operation, so seek+read pairs never interleave. */
  #serial<T>(fn: (file: Deno.FsFile) => Promise<T>): Promise<T> {
    const run = () => {
      if (!this.#file) throw new Error(`${this.path}: archive is closed`);
      return fn(this.#file);
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  async #start(file: Deno.FsFile, e: ZipEntry): Promise<number> {
    const known = this.#dataStart.get(e.name);
    if (known !== undefined) return known;
    const head = new Uint8Array(30);
    await readAt(file, e.localHeaderOffset, head, this.path);
    const hv = new DataView(head.buffer);
    if (hv.getUint32(0, true) !== SIG_LOCAL) {
      throw new Error(`${this.path}: bad local header for zip entry "${e.name}"`);
    }
    // The local name/extra lengths may differ from the central ones (torch pads with extras).
    const start = e.localHeaderOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
    if (start + e.compressedSize > this.size) {
      throw new Error(`${this.path}: zip entry "${e.name}" extends beyond the end of the file`);
    }
    this.#dataStart.set(e.name, start);
    return start;
  }

  /** Reads and (if deflated) inflates the whole entry `name`. A fresh, 0-offset buffer. */
  async read(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    return await this.#serial(async (file) => {
      const raw = new Uint8Array(e.compressedSize);
      await readAt(file, await this.#start(file, e), raw, this.path);
      if (e.method === 0) return raw;
      let out: Uint8Array;
      try {
        out = new Uint8Array(inflateRawSync(raw));
      } catch (err) {
        throw new Error(`${this.path}: zip entry "${name}" fails to inflate: ${err}`);
      }
      if (out.length !== e.uncompressedSize) {
        throw new Error(
          `${this.path}: zip entry "${name}" inflates to ${out.length} bytes, ` +
            `expected ${e.uncompressedSize}`,
        );
      }
      return out;
    });
  }

  /**
   * Reads bytes [start, start + length) of entry `name` (uncompressed positions) into a fresh,
   * 0-offset buffer. Stored entries read only that range; deflated ones inflate the entry.
   */
  async readRange(name: string, start: number, length: number): Promise<Uint8Array> {
    const e = this.entry(name);
    if (start < 0 || length < 0 || start + length > e.uncompressedSize) {
      throw new Error(
        `${this.path}: range [${start}, ${start + length}) is outside zip entry "${name}" ` +
          `(${e.uncompressedSize} bytes)`,
      );
    }
    if (e.method !== 0) return (await this.read(name)).slice(start, start + length);
    return this.#serial(async (file) => {
      const buf = new Uint8Array(length);
      await readAt(file, (await this.#start(file, e)) + start, buf, this.path);
      return buf;
    });
  }

  /** Closes the file; later reads throw. Closing twice is harmless. */
  close(): void {
    this.#file?.close();
    this.#file = null;
  }
}

async function readAt(file: Deno.FsFile, at: number, buf: Uint8Array, path: string) {
  await file.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    if (n === null) {
      throw new Error(`${path}: unexpected end of file reading ${buf.length} bytes at ${at}`);
    }
    done += n;
  }
}

function parseCentralDirectory(
  path: string,
  cd: Uint8Array,
  count: number,
  fileSize: number,
): ZipEntry[] {
  const v = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const entries: ZipEntry[] = [];
  let p = 0;
  const utf8 = new TextDecoder();
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || v.getUint32(p, true) !== SIG_CENTRAL) {
      throw new Error(`${path}: corrupt zip central directory (record ${i})`);
    }
    const flags = v.getUint16(p + 8, true);
    const method = v.getUint16(p + 10, true);
    let compressedSize = v.getUint32(p + 20, true);
    let uncompressedSize = v.getUint32(p + 24, true);
    const nameLen = v.getUint16(p + 28, true);
    const extraLen = v.getUint16(p + 30, true);
    const commentLen = v.getUint16(p + 32, true);
    let localHeaderOffset = v.getUint32(p + 42, true);
    const name = utf8.decode(cd.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field (id 1): 64-bit values, present only for the fields that are all-ones.
    let x = p + 46 + nameLen;
    const xEnd = x + extraLen;
    while (x + 4 <= xEnd) {
      const id = v.getUint16(x, true);
      const len = v.getUint16(x + 2, true);
      if (id === 1) {
        let q = x + 4;
        const what = `${path}: zip64 field of "${name}"`;
        if (uncompressedSize === 0xffffffff) (uncompressedSize = u64(v, q, what)), (q += 8);
        if (compressedSize === 0xffffffff) (compressedSize = u64(v, q, what)), (q += 8);
        if (localHeaderOffset === 0xffffffff) localHeaderOffset = u64(v, q, what);
      }
      x += 4 + len;
    }
    if (flags & 1) throw new Error(`${path}: zip entry "${name}" is encrypted`);
    if (method !== 0 && method !== 8) {
      throw new Error(`${path}: zip entry "${name}" uses unsupported compression ${method}`);
    }
    if (method === 0 && compressedSize !== uncompressedSize) {
      throw new Error(`${path}: stored zip entry "${name}" has inconsistent sizes`);
    }
    if (localHeaderOffset + 30 > fileSize) {
      throw new Error(`${path}: zip entry "${name}" starts beyond the end of the file`);
    }
    entries.push({ name, method, compressedSize, uncompressedSize, localHeaderOffset });
    p = xEnd + commentLen;
  }
  return entries;
}

// ---------------------------------------------------------------------------------------------
// Pickle

/** A reference to a Python global (module + name), as pushed by GLOBAL / STACK_GLOBAL. */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  /** "module.name". */
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** An inert record of an object of an unknown class (only with `allowUnknownGlobals`). */
export class PyObject {
  state: unknown = undefined;
  constructor(readonly cls: PyGlobal, readonly args: unknown[]) {}
}

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

/** Options of `unpickle`. */
export interface UnpickleOptions {
  /** Turns a persistent id (BINPERSID) into a value; without it persistent ids are errors. */
  persistentLoad?: (pid: unknown) => unknown;
  /** Make unknown globals inert `PyObject` records instead of failing. Default false. */
  allowUnknownGlobals?: boolean;
  /** Named in error messages. */
  source?: string;
}

type Callable = (args: unknown[], where: string) => unknown;

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

function asIterable(x: unknown, where: string): unknown[] {
  if (x === undefined) return [];
  if (Array.isArray(x)) return x;
  if (x instanceof Set) return [...x];
  if (x instanceof Map) return [...x.keys()];
  throw new Error(`${where}: expected a sequence`);
}

/** The globals that may be called (REDUCE / NEWOBJ), by "module.name". Nothing else runs. */
const CALLABLES: Record<string, Callable> = {
  "collections.OrderedDict": (args, where) => {
    const m = new Map<unknown, unknown>();
    for (const kv of asIterable(args[0], where)) {
      if (!Array.isArray(kv) || kv.length !== 2) throw new Error(`${where}: bad OrderedDict item`);
      m.set(kv[0], kv[1]);
    }
    return m;
  },
  "torch._utils._rebuild_tensor_v2": rebuildTensor,
  "torch._utils._rebuild_tensor": rebuildTensor,
  "torch._utils._rebuild_parameter": rebuildParameter,
  "torch._utils._rebuild_parameter_with_state": rebuildParameter,
  "torch._tensor._rebuild_from_type_v2": (args, where) => {
    // (func, type, args, state): rebuild with func; the python type (Tensor/Parameter) and
    // attribute state do not change the data.
    const [func, , inner] = args;
    if (!(func instanceof PyGlobal) || !CALLABLES[func.qualified] || !Array.isArray(inner)) {
      throw new Error(`${where}: unsupported _rebuild_from_type_v2 arguments`);
    }
    return CALLABLES[func.qualified](inner, where);
  },
  "torch.Size": (args) => [...asIterable(args[0], "torch.Size")],
  "_codecs.encode": (args, where) => {
    // Protocol 2 pickles bytes as _codecs.encode(latin1 text, "latin1").
    const [text, enc] = args;
    if (typeof text !== "string" || !["latin1", "latin-1"].includes(String(enc))) {
      throw new Error(`${where}: unsupported _codecs.encode arguments`);
    }
    return Uint8Array.from(text, (c) => c.charCodeAt(0));
  },
  "builtins.set": (args, where) => new Set(asIterable(args[0], where)),
  "builtins.frozenset": (args, where) => new Set(asIterable(args[0], where)),
  "builtins.bytes": (args, where) => {
    // Protocol 2 pickles b"" as bytes(); other bytes arrive through _codecs.encode.
    if (args.length === 0) return new Uint8Array(0);
    const items = asIterable(args[0], where);
    if (!items.every((b) => typeof b === "number" && Number.isInteger(b) && b >= 0 && b < 256)) {
      throw new Error(`${where}: unsupported bytes() argument`);
    }
    return Uint8Array.from(items as number[]);
  },
  "builtins.bytearray": (args) =>
    args[0] instanceof Uint8Array ? args[0].slice() : new Uint8Array(0),
};
for (const n of ["set", "frozenset", "bytes", "bytearray"]) {
  CALLABLES[`__builtin__.${n}`] = CALLABLES[`builtins.${n}`];
}

/** Globals that may appear as values (storage types, the tensor classes, torch dtypes). */
function isKnownValueGlobal(g: PyGlobal): boolean {
  if (g.module === "torch" && Object.hasOwn(STORAGE_DTYPES, g.name)) return true;
  if (g.qualified === "torch.Tensor" || g.qualified === "torch.nn.parameter.Parameter") return true;
  return false;
}

/**
 * Runs the pickle in `bytes` (protocols 0-5; the binary opcodes plus the simple text ones)
 * and returns the resulting value. Python values map to: None -> null, bool, int -> number
 * (bigint beyond 2^53), float -> number, str -> string, bytes -> Uint8Array, list and tuple
 * -> Array, dict and OrderedDict -> Map, set -> Set, tensors -> TorchTensorRef.
 * Throws naming `options.source` on malformed input, an unknown opcode or an unknown global.
 */
export function unpickle(bytes: Uint8Array, options: UnpickleOptions = {}): unknown {
  const src = options.source ?? "pickle";
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  let pos = 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();

  const fail = (msg: string): never => {
    throw new Error(`${src}: ${msg} (pickle offset ${pos})`);
  };
  const need = (n: number) => {
    if (pos + n > bytes.length) fail("truncated pickle");
  };
  const take = (n: number): Uint8Array => {
    need(n);
    const b = bytes.subarray(pos, pos + n);
    pos += n;
    return b;
  };
  const u8 = () => (need(1), bytes[pos++]);
  const u16 = () => (need(2), (pos += 2), view.getUint16(pos - 2, true));
  const u32 = () => (need(4), (pos += 4), view.getUint32(pos - 4, true));
  const i32 = () => (need(4), (pos += 4), view.getInt32(pos - 4, true));
  const u64n = () => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail("length too large");
    return Number(v);
  };
  const line = (): string => {
    const end = bytes.indexOf(0x0a, pos);
    if (end < 0) fail("unterminated text line");
    const s = new TextDecoder("latin1").decode(bytes.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const text = (n: number): string => {
    const b = take(n);
    try {
      return utf8.decode(b);
    } catch {
      return fail("invalid UTF-8 string");
    }
  };
  const pop = (): unknown => (stack.length === 0 ? fail("stack underflow") : stack.pop());
  const top =
    (): unknown => (stack.length === 0 ? fail("stack underflow") : stack[stack.length - 1]);
  const popMark = (): unknown[] => {
    if (metastack.length === 0) fail("MARK expected");
    const items = stack;
    stack = metastack.pop()!;
    return items;
  };
  const smallInt = (v: bigint): number | bigint =>
    v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  const longLE = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return smallInt(v);
  };
  const global = (module: string, name: string): PyGlobal => {
    const g = new PyGlobal(module, name);
    if (!CALLABLES[g.qualified] && !isKnownValueGlobal(g) && !options.allowUnknownGlobals) {
      fail(`unknown global "${g.qualified}" (refusing to load it; nothing is executed)`);
    }
    return g;
  };
  const call = (fn: unknown, args: unknown, what: string): unknown => {
    if (!(fn instanceof PyGlobal)) return fail(`${what} on a non-class value`);
    if (!Array.isArray(args)) return fail(`${what} arguments are not a tuple`);
    const impl = CALLABLES[fn.qualified];
    if (impl) return impl(args, `${src}: ${fn.qualified}`);
    if (options.allowUnknownGlobals) return new PyObject(fn, args);
    return fail(`cannot call "${fn.qualified}"`);
  };
  const setItems = (target: unknown, items: unknown[]) => {
    if (items.length % 2) fail("odd number of items for SETITEMS");
    if (target instanceof Map) {
      for (let i = 0; i < items.length; i += 2) target.set(items[i], items[i + 1]);
    } else if (target instanceof PyObject) {
      // e.g. a dict subclass of unknown type: keep its items as state.
      const m = (target.state instanceof Map ? target.state : new Map()) as Map<unknown, unknown>;
      for (let i = 0; i < items.length; i += 2) m.set(items[i], items[i + 1]);
      target.state = m;
    } else fail("SETITEM on a non-dict");
  };
  const appendItems = (target: unknown, items: unknown[]) => {
    if (Array.isArray(target)) target.push(...items);
    else if (target instanceof Set) { for (const x of items) target.add(x); }
    else fail("APPEND on a non-list");
  };

  for (;;) {
    const at = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail("unsupported pickle protocol");
        break;
      case 0x95: // FRAME (protocol 4): only a length hint
        u64n();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || metastack.length) fail("malformed pickle at STOP");
        return stack[0];
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length) stack.pop();
        else popMark();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(longLE(take(u8())));
        break;
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) fail("negative LONG4 length");
        stack.push(longLE(take(n)));
        break;
      }
      case 0x49: { // INT (text): "I01\n" / "I00\n" are booleans
        const s = line();
        if (s === "01") stack.push(true);
        else if (s === "00") stack.push(false);
        else if (/^[-+]?\d+$/.test(s)) stack.push(smallInt(BigInt(s)));
        else fail(`bad INT "${s}"`);
        break;
      }
      case 0x4c: { // LONG (text)
        const s = line().replace(/L$/, "");
        if (!/^[-+]?\d+$/.test(s)) fail(`bad LONG "${s}"`);
        stack.push(smallInt(BigInt(s)));
        break;
      }
      case 0x47: // BINFLOAT: big-endian float64
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: { // FLOAT (text)
        const v = Number(line());
        if (Number.isNaN(v)) fail("bad FLOAT");
        stack.push(v);
        break;
      }
      case 0x58: // BINUNICODE
        stack.push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64n()));
        break;
      case 0x54: // BINSTRING (py2 str): latin1
        stack.push(new TextDecoder("latin1").decode(take(i32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(new TextDecoder("latin1").decode(take(u8())));
        break;
      case 0x42: // BINBYTES
        stack.push(take(u32()).slice());
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(take(u8()).slice());
        break;
      case 0x8e: // BINBYTES8
        stack.push(take(u64n()).slice());
        break;
      case 0x96: // BYTEARRAY8
        stack.push(take(u64n()).slice());
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push([]);
        break;
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x74: // TUPLE
        {
          const items = popMark();
          stack.push(items);
        }
        break;
      case 0x6c: // LIST
        {
          const items = popMark();
          stack.push(items);
        }
        break;
      case 0x85: // TUPLE1
        stack.push([pop()]);
        break;
      case 0x86: { // TUPLE2
        const b = pop();
        stack.push([pop(), b]);
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop();
        const b = pop();
        stack.push([pop(), b, c]);
        break;
      }
      case 0x64: { // DICT
        const m = new Map();
        setItems(m, popMark());
        stack.push(m);
        break;
      }
      case 0x91: // FROZENSET
        {
          const items = popMark();
          stack.push(new Set(items));
        }
        break;
      case 0x61: { // APPEND
        const v = pop();
        appendItems(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x90: { // ADDITEMS
        const items = popMark();
        appendItems(top(), items);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        stack.push(global(module, line()));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("bad STACK_GLOBAL");
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        stack.push(call(pop(), args, "REDUCE"));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ"));
        break;
      }
      case 0x92: { // NEWOBJ_EX (cls, args, kwargs)
        pop(); // kwargs: no supported class takes any
        const args = pop();
        stack.push(call(pop(), args, "NEWOBJ_EX"));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = top();
        if (obj instanceof PyObject) obj.state = state;
        else if (obj instanceof Map || obj instanceof TorchTensorRef) {
          // OrderedDict attributes (a state dict's `_metadata`) and tensor python attributes
          // do not affect the tensors: drop them.
        } else fail("BUILD on an object that takes no state");
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!options.persistentLoad) fail("persistent id without a persistent loader");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x50: { // PERSID (text)
        const pid = line();
        if (!options.persistentLoad) fail("persistent id without a persistent loader");
        stack.push(options.persistentLoad!(pid));
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT (text)
        memo.set(Number(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET (text)
        const k = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(line());
        if (!memo.has(k)) fail(`memo key ${k} not found`);
        stack.push(memo.get(k));
        break;
      }
      default:
        pos = at;
        fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

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
