/**
 * The byte-level pieces of the HDF5 reader (hdf5.ts): its errors, the bounds-checked field
 * cursor, the parsers of the object header messages a dataset needs (dataspace, datatype, fill
 * value, layout, filter pipeline), the shuffle and Fletcher-32 filters, and element conversion.
 */

/** Thrown for an unreadable, truncated, corrupt or unsupported HDF5 file; names the file. */
export class H5Error extends Error {
  /** The file path. */
  readonly path: string;
  /** What is wrong, without the path. */
  readonly reason: string;
  /** Builds the error; `cause` keeps an underlying error. */
  constructor(path: string, reason: string, options?: { cause?: unknown }) {
    super(`HDF5 file ${path}: ${reason}`, options);
    this.name = "H5Error";
    this.path = path;
    this.reason = reason;
  }
}

/** A raised reason, turned into an H5Error naming the file by the public entry points. */
export class Bad extends Error {}
/** Raises a {@link Bad} carrying `reason`. */
export function bad(reason: string): never {
  throw new Bad(reason);
}

/** The 8-byte HDF5 format signature. */
export const SIGNATURE = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a];
/** The undefined address (all ones), as {@link Cursor.uint} returns it. */
export const UNDEF = -1;

/** Element type of a dataset. */
export interface H5Dtype {
  /** "uint" / "int" (HDF5 fixed-point) or "float" (IEEE). */
  kind: "uint" | "int" | "float";
  /** Bytes per element (1, 2, 4 or 8). */
  size: number;
  littleEndian: boolean;
}

/** How a dataset's elements are stored. */
export type H5Layout =
  | { kind: "compact"; data: Uint8Array }
  | { kind: "contiguous"; address: number; size: number }
  | {
    kind: "chunked";
    chunk: number[];
    index: ChunkIndex;
  };

/** How a chunked dataset finds its chunks. */
export type ChunkIndex =
  | { type: "btree1"; address: number }
  | { type: "single"; address: number; filteredSize: number; filterMask: number }
  | { type: "implicit"; address: number }
  | { type: "fixed"; address: number };

/** One filter of a dataset's pipeline (in the order they were applied when writing). */
export interface H5Filter {
  id: number;
  name: string;
  optional: boolean;
  values: number[];
}

/** One object header message: its type, flags and payload. */
export interface Message {
  type: number;
  flags: number;
  data: DataView;
}

/** A chunk's location: file address, stored (filtered) size and the mask of skipped filters. */
export interface ChunkRef {
  address: number;
  size: number;
  mask: number;
}

/** Little-endian field reader over a DataView with bounds checks. */
export class Cursor {
  pos: number;
  constructor(readonly view: DataView, pos = 0, readonly what = "structure") {
    this.pos = pos;
  }
  need(n: number): void {
    if (this.pos + n > this.view.byteLength) {
      bad(`${this.what} is cut short (needs ${this.pos + n} bytes, has ${this.view.byteLength})`);
    }
  }
  u8(): number {
    this.need(1);
    return this.view.getUint8(this.pos++);
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  /** An unsigned little-endian integer of `n` bytes (1-8); all-ones of 8 bytes -> UNDEF. */
  uint(n: number): number {
    this.need(n);
    let v = 0;
    let allOnes = true;
    for (let i = n - 1; i >= 0; i--) {
      const b = this.view.getUint8(this.pos + i);
      if (b !== 0xff) allOnes = false;
      v = v * 256 + b;
    }
    this.pos += n;
    if (allOnes && n >= 4) return UNDEF;
    if (v > Number.MAX_SAFE_INTEGER) bad(`${this.what} holds an integer too large to address`);
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const b = new Uint8Array(this.view.buffer, this.view.byteOffset + this.pos, n);
    this.pos += n;
    return b;
  }
  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }
  sig(expect: string): void {
    const b = this.bytes(4);
    const got = String.fromCharCode(...b);
    if (got !== expect) {
      bad(`${this.what}: expected signature "${expect}", found ${JSON.stringify(got)}`);
    }
  }
}

/** A DataView over exactly the bytes of `b`. */
export function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** The dimensions of a dataspace message. */
export function parseDataspace(c: Cursor, sl: number): number[] {
  const version = c.u8();
  const rank = c.u8();
  const flags = c.u8();
  if (version === 1) c.skip(5);
  else if (version === 2) {
    const type = c.u8();
    if (type === 2) return [0]; // null dataspace: no elements
  } else bad(`unsupported dataspace version ${version}`);
  void flags;
  const shape: number[] = [];
  for (let i = 0; i < rank; i++) shape.push(c.uint(sl));
  return shape;
}

/** The element type of a datatype message (fixed-point or IEEE float, 1-8 bytes). */
export function parseDatatype(c: Cursor, name: string): H5Dtype {
  const b0 = c.u8();
  const cls = b0 & 0x0f;
  const bits = c.u8();
  c.skip(2);
  const size = c.u32();
  const littleEndian = (bits & 1) === 0;
  if (cls === 0 && [1, 2, 4, 8].includes(size)) {
    return { kind: bits & 0x08 ? "int" : "uint", size, littleEndian };
  }
  if (cls === 1 && (size === 4 || size === 8)) return { kind: "float", size, littleEndian };
  const names = [
    "integer",
    "float",
    "time",
    "string",
    "bitfield",
    "opaque",
    "compound",
    "reference",
    "enum",
    "vlen",
    "array",
  ];
  bad(
    `dataset "${name}" has an unsupported datatype (${
      names[cls] ?? `class ${cls}`
    }, ${size} bytes)`,
  );
}

/** The fill value bytes of a fill value message, or null when there is none. */
export function parseFillValue(c: Cursor): Uint8Array | null {
  const version = c.u8();
  if (version === 1 || version === 2) {
    c.skip(2);
    const defined = c.u8();
    if (version === 2 && !defined) return null;
    const size = c.u32();
    return size > 0 ? c.bytes(size).slice() : null;
  }
  if (version === 3) {
    const flags = c.u8();
    if (!(flags & 0x20)) return null;
    const size = c.u32();
    return size > 0 ? c.bytes(size).slice() : null;
  }
  return null;
}

/** The storage layout of a data layout message (versions 1-4). */
export function parseLayout(c: Cursor, so: number, sl: number, name: string): H5Layout {
  const version = c.u8();
  if (version === 1 || version === 2) {
    const dims = c.u8();
    const cls = c.u8();
    c.skip(5);
    const address = cls === 0 ? UNDEF : c.uint(so);
    const sizes: number[] = [];
    for (let i = 0; i < dims; i++) sizes.push(c.u32());
    if (cls === 0) return { kind: "compact", data: c.bytes(c.u32()).slice() };
    if (cls === 1) return { kind: "contiguous", address, size: sizes.reduce((a, b) => a * b, 1) };
    return { kind: "chunked", chunk: sizes.slice(0, -1), index: { type: "btree1", address } };
  }
  if (version !== 3 && version !== 4) {
    bad(`dataset "${name}": unsupported layout version ${version}`);
  }
  const cls = c.u8();
  if (cls === 0) return { kind: "compact", data: c.bytes(c.u16()).slice() };
  if (cls === 1) return { kind: "contiguous", address: c.uint(so), size: c.uint(sl) };
  if (cls !== 2) bad(`dataset "${name}": unsupported layout class ${cls} (virtual dataset?)`);
  if (version === 3) {
    const dims = c.u8();
    const address = c.uint(so);
    const sizes: number[] = [];
    for (let i = 0; i < dims; i++) sizes.push(c.u32());
    return { kind: "chunked", chunk: sizes.slice(0, -1), index: { type: "btree1", address } };
  }
  const flags = c.u8();
  const dims = c.u8();
  const enc = c.u8();
  const sizes: number[] = [];
  for (let i = 0; i < dims; i++) sizes.push(c.uint(enc));
  const chunk = sizes.slice(0, -1);
  const type = c.u8();
  if (type === 1) {
    let filteredSize = 0, filterMask = 0;
    if (flags & 2) {
      filteredSize = c.uint(sl);
      filterMask = c.u32();
    }
    return {
      kind: "chunked",
      chunk,
      index: { type: "single", address: c.uint(so), filteredSize, filterMask },
    };
  }
  if (type === 2) {
    return { kind: "chunked", chunk, index: { type: "implicit", address: c.uint(so) } };
  }
  if (type === 3) {
    c.u8(); // page bits (read again from the array header)
    return { kind: "chunked", chunk, index: { type: "fixed", address: c.uint(so) } };
  }
  const what = type === 4
    ? "an extensible array"
    : type === 5
    ? "a version 2 B-tree"
    : `index type ${type}`;
  bad(
    `dataset "${name}" indexes its chunks with ${what} (a resizable dataset written with ` +
      'libver="latest"), which is not supported: rewrite it with fixed dimensions',
  );
}

/** The filters of a filter pipeline message, in the order they were applied. */
export function parseFilters(c: Cursor): H5Filter[] {
  const version = c.u8();
  const n = c.u8();
  if (version === 1) c.skip(6);
  else if (version !== 2) bad(`unsupported filter pipeline version ${version}`);
  const out: H5Filter[] = [];
  for (let i = 0; i < n; i++) {
    const id = c.u16();
    const nameLen = version === 1 || id >= 256 ? c.u16() : 0;
    const flags = c.u16();
    const nv = c.u16();
    let name = "";
    if (nameLen > 0) {
      const b = c.bytes(version === 1 ? Math.ceil(nameLen / 8) * 8 : nameLen);
      const end = b.indexOf(0);
      name = new TextDecoder().decode(b.subarray(0, end < 0 ? b.length : end));
    }
    const values: number[] = [];
    for (let j = 0; j < nv; j++) values.push(c.u32());
    if (version === 1 && nv % 2 === 1) c.skip(4);
    out.push({ id, name, optional: (flags & 1) !== 0, values });
  }
  return out;
}

/** Undoes HDF5's byte shuffle (all first bytes, then all second bytes, ...). */
export function unshuffle(data: Uint8Array, es: number): Uint8Array {
  if (es <= 1) return data;
  const n = Math.floor(data.length / es);
  const out = new Uint8Array(data.length);
  for (let b = 0; b < es; b++) {
    const from = b * n;
    for (let i = 0; i < n; i++) out[i * es + b] = data[from + i];
  }
  out.set(data.subarray(n * es), n * es); // leftover bytes are stored unshuffled
  return out;
}

/** HDF5's Fletcher-32 over 16-bit big-endian words (H5_checksum_fletcher32). */
function fletcher32(data: Uint8Array): number {
  let sum1 = 0, sum2 = 0;
  let len = data.length >> 1;
  let p = 0;
  while (len) {
    let t = len > 360 ? 360 : len;
    len -= t;
    do {
      sum1 += (data[p] << 8) | data[p + 1];
      p += 2;
      sum2 += sum1;
    } while (--t);
    sum1 = (sum1 & 0xffff) + (sum1 >>> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >>> 16);
  }
  if (data.length & 1) {
    sum1 += data[p] << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >>> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >>> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >>> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >>> 16);
  return ((sum2 << 16) | sum1) >>> 0;
}

/** Verifies and strips a chunk's trailing Fletcher-32 checksum. */
export function checkFletcher32(data: Uint8Array, where: string): Uint8Array {
  if (data.length < 4) bad(`${where}: too short for its Fletcher-32 checksum`);
  const body = data.subarray(0, data.length - 4);
  const v = dv(data);
  const stored = v.getUint32(data.length - 4, true);
  const sum = fletcher32(body);
  // Files from old libraries stored the checksum byte-swapped; HDF5 accepts both.
  const swapped = ((sum & 0xff) << 24 | (sum & 0xff00) << 8 | (sum >>> 8) & 0xff00 | sum >>> 24) >>>
    0;
  if (stored !== sum && stored !== swapped) {
    bad(`${where}: Fletcher-32 checksum mismatch (corrupt data)`);
  }
  return body;
}

/** Converts raw element bytes to numbers (integers up to 2^53; 8-byte integers beyond fail). */
export function toNumbers(bytes: Uint8Array, t: H5Dtype): number[] {
  const v = dv(bytes);
  const n = Math.floor(bytes.length / t.size);
  const out = new Array<number>(n);
  const le = t.littleEndian;
  for (let i = 0, p = 0; i < n; i++, p += t.size) {
    if (t.kind === "float") out[i] = t.size === 4 ? v.getFloat32(p, le) : v.getFloat64(p, le);
    else if (t.size === 1) out[i] = t.kind === "int" ? v.getInt8(p) : v.getUint8(p);
    else if (t.size === 2) out[i] = t.kind === "int" ? v.getInt16(p, le) : v.getUint16(p, le);
    else if (t.size === 4) out[i] = t.kind === "int" ? v.getInt32(p, le) : v.getUint32(p, le);
    else {
      const b = t.kind === "int" ? v.getBigInt64(p, le) : v.getBigUint64(p, le);
      out[i] = Number(b);
      if (!Number.isSafeInteger(out[i])) {
        throw new RangeError(`64-bit value ${b} is not a safe integer`);
      }
    }
  }
  return out;
}
