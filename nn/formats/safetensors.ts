/**
 * Safetensors reading and writing (the format of Hugging Face / PyTorch `safetensors`).
 *
 * Layout: an 8-byte little-endian u64 `N`, then `N` bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}`, then the
 * data block. Offsets are relative to the start of the data block; the tensors must tile the
 * block exactly (no gaps, no overlaps). Data is little-endian and row-major.
 *
 * Reading is lazy: `SafetensorsFile.open` reads and validates only the header; `read(name)`
 * seeks to one tensor and reads just its bytes. Writing is atomic (temporary file, fsync,
 * rename). The host is assumed little-endian (every platform Deno ships for is).
 */

import { checkInputFile } from "./input_file.ts";
import { type OutputOptions, writeFileAtomic } from "./safe_write.ts";

/** Element types of the safetensors format that this module knows. */
export type SafetensorsDtype =
  | "BOOL"
  | "U8"
  | "I8"
  | "I16"
  | "U16"
  | "F16"
  | "BF16"
  | "I32"
  | "U32"
  | "F32"
  | "F64"
  | "I64"
  | "U64";

const ITEM_SIZE: Record<SafetensorsDtype, number> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

// The Rust/Python library orders tensors by dtype (declaration order, descending: wide types
// first, which keeps every tensor aligned to its item size) and then by name. We do the same.
const DTYPE_RANK: Record<SafetensorsDtype, number> = {
  BOOL: 0,
  U8: 1,
  I8: 2,
  I16: 3,
  U16: 4,
  F16: 5,
  BF16: 6,
  I32: 7,
  U32: 8,
  F32: 9,
  F64: 10,
  I64: 11,
  U64: 12,
};

// Same cap as the reference implementation: a larger header is corrupt or hostile.
const MAX_HEADER_BYTES = 100_000_000;

/** True when `dtype` is a safetensors dtype this module understands. */
export function isSafetensorsDtype(dtype: string): dtype is SafetensorsDtype {
  return Object.hasOwn(ITEM_SIZE, dtype);
}

/** One tensor of a safetensors file. `byteOffset` is absolute (from the start of the file). */
export interface SafetensorsEntry {
  /** Element type as stored in the file. */
  dtype: SafetensorsDtype;
  /** Shape ([] for a scalar). */
  shape: number[];
  /** Where the tensor's bytes start, from the start of the file. */
  byteOffset: number;
  /** Size of the tensor's bytes (elements * item size of `dtype`). */
  byteLength: number;
}

/** A tensor to write: raw bytes, or a typed array converted to `dtype` (see writeSafetensors). */
export interface SafetensorsTensor {
  /** Element type to store. */
  dtype: SafetensorsDtype;
  /** Shape ([] for a scalar); its product must match the number of values. */
  shape: number[];
  /**
   * Raw little-endian bytes of `dtype`; or float32 values (stored as F32, F16, BF16 or F64); or
   * int32 values (stored as I32 or I64).
   */
  data: Uint8Array | Float32Array | Int32Array;
}

function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function isShape(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((d) => Number.isSafeInteger(d) && d >= 0);
}

/** Reads exactly `buf.length` bytes at `position`, or throws naming `path` on a short read. */
async function readExactly(
  file: Deno.FsFile,
  position: number,
  buf: Uint8Array,
  path: string,
): Promise<void> {
  await file.seek(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    if (n === null) {
      throw new Error(
        `${path}: unexpected end of file reading ${buf.length} bytes at offset ${position}`,
      );
    }
    done += n;
  }
}

/**
 * The first key that appears twice in one object of `json` (valid JSON text), or null.
 * `JSON.parse` keeps the last of duplicate keys silently; a safetensors header with two entries
 * for one tensor is corrupt (or crafted so that two readers see different tensors). Iterative,
 * so deep nesting cannot overflow the stack.
 */
export function duplicateJsonKey(json: string): string | null {
  const stack: (Set<string> | null)[] = [];
  let wantKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (c === 0x7b) {
      stack.push(new Set());
      wantKey = true;
    } else if (c === 0x5b) {
      stack.push(null);
      wantKey = false;
    } else if (c === 0x7d || c === 0x5d) {
      stack.pop();
      wantKey = false;
    } else if (c === 0x2c) wantKey = stack[stack.length - 1] instanceof Set;
    else if (c === 0x22) {
      let j = i + 1;
      while (j < json.length && json.charCodeAt(j) !== 0x22) {
        j += json.charCodeAt(j) === 0x5c ? 2 : 1;
      }
      if (wantKey) {
        const key = JSON.parse(json.slice(i, j + 1)) as string;
        const keys = stack[stack.length - 1]!;
        if (keys.has(key)) return key;
        keys.add(key);
        wantKey = false;
      }
      i = j;
    }
  }
  return null;
}

/** Validates a parsed header against the data block size; returns entries sorted by offset. */
function parseHeader(
  path: string,
  header: unknown,
  dataStart: number,
  dataSize: number,
): { entries: Map<string, SafetensorsEntry>; metadata: Record<string, string> } {
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new Error(`${path}: safetensors header is not a JSON object`);
  }
  const metadata: Record<string, string> = {};
  const spans: { name: string; begin: number; end: number; entry: SafetensorsEntry }[] = [];
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        throw new Error(`${path}: "__metadata__" is not an object of strings`);
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== "string") {
          throw new Error(`${path}: "__metadata__" value for "${k}" is not a string`);
        }
        metadata[k] = v;
      }
      continue;
    }
    const where = `${path}: tensor "${name}"`;
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw new Error(`${where}: header entry is not an object`);
    }
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (typeof dtype !== "string" || !isSafetensorsDtype(dtype)) {
      throw new Error(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
    }
    if (!isShape(shape)) throw new Error(`${where}: bad shape ${JSON.stringify(shape)}`);
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      throw new Error(`${where}: bad data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataSize) {
      throw new Error(
        `${where}: data_offsets [${begin}, ${end}] out of range of the ${dataSize}-byte data block`,
      );
    }
    const expected = product(shape) * ITEM_SIZE[dtype];
    if (end - begin !== expected) {
      throw new Error(
        `${where}: byte length ${end - begin} != ${expected} = prod([${shape}]) * ${
          ITEM_SIZE[dtype]
        } (${dtype})`,
      );
    }
    spans.push({
      name,
      begin,
      end,
      entry: { dtype, shape, byteOffset: dataStart + begin, byteLength: end - begin },
    });
  }
  // The tensors must tile the data block: sorted by offset, each starts where the last ended.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous = "";
  for (const s of spans) {
    if (s.begin < cursor) {
      throw new Error(`${path}: tensor "${s.name}" overlaps tensor "${previous}"`);
    }
    if (s.begin > cursor) {
      throw new Error(
        `${path}: bytes [${cursor}, ${s.begin}) of the data block before tensor "${s.name}" ` +
          `belong to no tensor`,
      );
    }
    cursor = s.end;
    previous = s.name;
  }
  if (cursor !== dataSize) {
    throw new Error(
      `${path}: tensors cover ${cursor} bytes but the data block has ${dataSize} bytes`,
    );
  }
  return { entries: new Map(spans.map((s) => [s.name, s.entry])), metadata };
}

/**
 * An open safetensors file. Only the header is held in memory; tensors are read on demand.
 * Reads are serialised internally, so concurrent `read` calls on one instance are safe.
 */
export class SafetensorsFile {
  /** The file's path, as given to `open` (used in error messages). */
  readonly path: string;
  /** The `__metadata__` strings ({} when absent). */
  readonly metadata: Record<string, string>;
  #file: Deno.FsFile | null;
  #entries: Map<string, SafetensorsEntry>;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(
    path: string,
    file: Deno.FsFile,
    entries: Map<string, SafetensorsEntry>,
    metadata: Record<string, string>,
  ) {
    this.path = path;
    this.#file = file;
    this.#entries = entries;
    this.metadata = metadata;
  }

  /**
   * Opens `path` and reads and validates its header. Throws (naming the file and tensor) on a
   * path that is not a regular file, a header length beyond the file, bad JSON, a key named twice,
   * unknown dtype, bad shape, offsets out of range,
   * overlapping or not covering the data block, or a byte length != prod(shape) * item size.
   */
  static async open(path: string): Promise<SafetensorsFile> {
    await checkInputFile(path);
    const file = await Deno.open(path, { read: true });
    try {
      const size = (await file.stat()).size;
      if (size < 8) throw new Error(`${path}: ${size} bytes is too short for a safetensors file`);
      const lenBytes = new Uint8Array(8);
      await readExactly(file, 0, lenBytes, path);
      const headerLen = new DataView(lenBytes.buffer).getBigUint64(0, true);
      if (headerLen > BigInt(size - 8)) {
        throw new Error(
          `${path}: header length ${headerLen} goes beyond the end of the ${size}-byte file`,
        );
      }
      if (headerLen > BigInt(MAX_HEADER_BYTES)) {
        throw new Error(`${path}: header length ${headerLen} exceeds ${MAX_HEADER_BYTES} bytes`);
      }
      const n = Number(headerLen);
      const headerBytes = new Uint8Array(n);
      await readExactly(file, 8, headerBytes, path);
      let header: unknown;
      let text: string;
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
        header = JSON.parse(text);
      } catch (e) {
        throw new Error(`${path}: header is not valid JSON (${(e as Error).message})`);
      }
      const dup = duplicateJsonKey(text);
      if (dup !== null) {
        throw new Error(`${path}: the header names "${dup}" twice (a corrupt or forged file)`);
      }
      const { entries, metadata } = parseHeader(path, header, 8 + n, size - 8 - n);
      return new SafetensorsFile(path, file, entries, metadata);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** The tensors, in data-block order. The map is a copy; changing it changes nothing. */
  entries(): Map<string, SafetensorsEntry> {
    return new Map([...this.#entries].map(([k, e]) => [k, { ...e, shape: [...e.shape] }]));
  }

  /** The entry for `name`, or throws naming the file. */
  entry(name: string): SafetensorsEntry {
    const e = this.#entries.get(name);
    if (!e) throw new Error(`${this.path}: no tensor named "${name}"`);
    return e;
  }

  /** Reads the raw little-endian bytes of tensor `name` (a fresh, 0-offset buffer). */
  async read(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const run = async () => {
      if (!this.#file) throw new Error(`${this.path}: file is closed`);
      const buf = new Uint8Array(e.byteLength);
      await readExactly(this.#file, e.byteOffset, buf, this.path);
      return buf;
    };
    // Chain on the queue so that seek+read pairs of concurrent calls never interleave.
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return await result;
  }

  /**
   * Reads tensor `name` as float32 values (row-major, `prod(shape)` of them), converting F16,
   * BF16 and F64. Throws for integer and bool dtypes.
   */
  async readFloat32(name: string): Promise<Float32Array> {
    const e = this.entry(name);
    if (!["F32", "F16", "BF16", "F64"].includes(e.dtype)) {
      throw new Error(`${this.path}: tensor "${name}" has dtype ${e.dtype}, not a float type`);
    }
    const bytes = await this.read(name);
    const n = e.byteLength / ITEM_SIZE[e.dtype];
    switch (e.dtype) {
      case "F32":
        return new Float32Array(bytes.buffer, 0, n);
      case "F16":
        return f16ToF32(new Uint16Array(bytes.buffer, 0, n));
      case "BF16":
        return bf16ToF32(new Uint16Array(bytes.buffer, 0, n));
      default:
        return Float32Array.from(new Float64Array(bytes.buffer, 0, n));
    }
  }

  /** Closes the file. Later reads throw. Closing twice is harmless. */
  close(): void {
    this.#file?.close();
    this.#file = null;
  }
}

/**
 * Throws naming `file` and `name` when `data` holds a NaN or an infinity: weights like that give
 * all-NaN outputs with nothing to say why. The scan costs about a millisecond per million values.
 */
export function assertFinite(file: string, name: string, data: Float32Array): Float32Array {
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      let nan = 0, inf = 0;
      for (let j = i; j < data.length; j++) {
        if (Number.isNaN(data[j])) nan++;
        else if (!Number.isFinite(data[j])) inf++;
      }
      throw new Error(
        `${file}: tensor "${name}" holds ${nan} NaN and ${inf} infinite value(s) of ` +
          `${data.length} (the first at index ${i}): the checkpoint is corrupt or diverged`,
      );
    }
  }
  return data;
}

let f16Table: Uint32Array | null = null;

/** float16 bit pattern -> float32 bit pattern (exact; NaN payloads kept). */
function halfToFloatBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  let man = h & 0x3ff;
  if (exp === 0) {
    if (man === 0) return sign >>> 0;
    // Subnormal half: normalise into a float32 normal (every half subnormal is one).
    let e = 113;
    while ((man & 0x400) === 0) {
      man <<= 1;
      e--;
    }
    return (sign | (e << 23) | ((man & 0x3ff) << 13)) >>> 0;
  }
  if (exp === 31) return (sign | 0x7f800000 | (man << 13)) >>> 0;
  return (sign | ((exp + 112) << 23) | (man << 13)) >>> 0;
}

/**
 * Converts float16 bit patterns to float32 values, exactly (subnormals, infinities and NaN
 * payloads included). Writes into `out` when given (same length), else a new array.
 */
export function f16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = halfToFloatBits(h);
  }
  const dst = out ?? new Float32Array(src.length);
  if (dst.length !== src.length) throw new Error("f16ToF32: output length differs from input");
  // Copy bit patterns through a Uint32 view: going through JS numbers could canonicalise NaNs.
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  const table = f16Table;
  for (let i = 0; i < src.length; i++) bits[i] = table[src[i]];
  return dst;
}

/**
 * Converts bfloat16 bit patterns to float32 values (exact: bf16 is the top half of an f32).
 * Writes into `out` when given (same length), else a new array.
 */
export function bf16ToF32(src: Uint16Array, out?: Float32Array): Float32Array {
  const dst = out ?? new Float32Array(src.length);
  if (dst.length !== src.length) throw new Error("bf16ToF32: output length differs from input");
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}

/**
 * Converts float32 values to float16 bit patterns with round-to-nearest-even, as PyTorch
 * does: overflow gives +-inf, tiny values become subnormals or +-0, NaN stays a quiet NaN.
 */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const man = x & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (man ? 0x200 | (man >>> 13) : 0);
      continue;
    }
    const he = exp - 112; // rebias 127 -> 15
    if (he >= 0x1f) {
      out[i] = sign | 0x7c00;
    } else if (he <= 0) {
      if (he < -10) {
        out[i] = sign; // below half the smallest subnormal: rounds to zero
        continue;
      }
      const full = man | 0x800000;
      const shift = 14 - he;
      let r = full >>> shift;
      const rem = full & ((1 << shift) - 1);
      const half = 1 << (shift - 1);
      if (rem > half || (rem === half && (r & 1))) r++; // may become the smallest normal: fine
      out[i] = sign | r;
    } else {
      let r = (he << 10) | (man >>> 13);
      const rem = man & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) r++; // a carry into exp gives inf: right
      out[i] = sign | r;
    }
  }
  return out;
}

/** Converts float32 values to bfloat16 bit patterns, round-to-nearest-even (as PyTorch). */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = bits[i];
    if ((x & 0x7fffffff) > 0x7f800000) {
      out[i] = (x >>> 16) | 0x40; // NaN: keep it a quiet NaN
    } else {
      out[i] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
    }
  }
  return out;
}

/** The little-endian bytes of one tensor to write, converting typed arrays as documented. */
function tensorBytes(path: string, name: string, t: SafetensorsTensor): Uint8Array {
  const where = `${path}: tensor "${name}"`;
  if (!isSafetensorsDtype(t.dtype)) throw new Error(`${where}: unknown dtype "${t.dtype}"`);
  if (!isShape(t.shape)) throw new Error(`${where}: bad shape ${JSON.stringify(t.shape)}`);
  const n = product(t.shape);
  const { data, dtype } = t;
  let bytes: Uint8Array;
  if (data instanceof Uint8Array) {
    bytes = data;
  } else if (data instanceof Float32Array) {
    if (data.length !== n) {
      throw new Error(`${where}: ${data.length} values for shape [${t.shape}] (${n} elements)`);
    }
    if (dtype === "F32") bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else if (dtype === "F16") bytes = new Uint8Array(f32ToF16(data).buffer);
    else if (dtype === "BF16") bytes = new Uint8Array(f32ToBf16(data).buffer);
    else if (dtype === "F64") bytes = new Uint8Array(Float64Array.from(data).buffer);
    else throw new Error(`${where}: a Float32Array cannot be written as ${dtype}`);
  } else if (data instanceof Int32Array) {
    if (data.length !== n) {
      throw new Error(`${where}: ${data.length} values for shape [${t.shape}] (${n} elements)`);
    }
    if (dtype === "I32") bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else if (dtype === "I64") {
      const wide = new BigInt64Array(n);
      for (let i = 0; i < n; i++) wide[i] = BigInt(data[i]);
      bytes = new Uint8Array(wide.buffer);
    } else throw new Error(`${where}: an Int32Array cannot be written as ${dtype}`);
  } else {
    throw new Error(`${where}: data must be a Uint8Array, Float32Array or Int32Array`);
  }
  const expected = n * ITEM_SIZE[dtype];
  if (bytes.length !== expected) {
    throw new Error(
      `${where}: byte length ${bytes.length} != ${expected} = prod([${t.shape}]) * ${
        ITEM_SIZE[dtype]
      } (${dtype})`,
    );
  }
  return bytes;
}

/**
 * Writes `tensors` (and optional string `metadata`) to `path` in safetensors format.
 *
 * Data: a Uint8Array is taken as the raw little-endian bytes of `dtype`; a Float32Array is
 * written as F32, or converted to F16 / BF16 (round-to-nearest-even) or F64; an Int32Array as
 * I32 or sign-extended to I64. Every tensor is validated (dtype, shape, byte length) before
 * anything touches the disk. Tensors are laid out like the Python library does (by dtype,
 * widest first, then by name) and the header is space-padded to a multiple of 8 bytes.
 *
 * Written through {@link writeFileAtomic} (safe_write.ts): a temporary file beside `path`,
 * fsynced and renamed over it; on any error the temporary file is removed and an existing `path`
 * is left untouched. `opts` names the option and the run's inputs (which `path` may not be).
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, SafetensorsTensor>,
  metadata?: Record<string, string>,
  opts: OutputOptions = {},
): Promise<void> {
  const items: { name: string; dtype: SafetensorsDtype; shape: number[]; bytes: Uint8Array }[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") throw new Error(`${path}: "__metadata__" is a reserved name`);
    items.push({ name, dtype: t.dtype, shape: [...t.shape], bytes: tensorBytes(path, name, t) });
  }
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new Error(`${path}: metadata "${k}" is not a string`);
    }
  }
  items.sort((a, b) =>
    DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  );
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header.__metadata__ = { ...metadata };
  let offset = 0;
  for (const it of items) {
    header[it.name] = {
      dtype: it.dtype,
      shape: it.shape,
      data_offsets: [offset, offset + it.bytes.length],
    };
    offset += it.bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(padded.length), true);

  await writeFileAtomic(path, [prefix, padded, ...items.map((it) => it.bytes)], opts);
}
