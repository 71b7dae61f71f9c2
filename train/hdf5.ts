/**
 * A small, streaming, read-only HDF5 reader for n-dimensional numeric arrays: enough for the
 * PCAM files (`x` uint8 [N,96,96,3], `y` [N,1,1,1]) and for what h5py writes with its default
 * and its `libver="latest"` settings. It reads only the bytes it needs (one patch of a 7 GB file
 * reads the object headers, a few B-tree nodes and one chunk), synchronously, with positional
 * reads, so several workers can each keep their own handle open.
 *
 * Supported: superblock versions 0-3 (with a user block); object header versions 1 and 2 with
 * continuation blocks; groups as symbol tables (v1 B-tree + local heap) or compact link
 * messages; fixed-point and IEEE float datatypes of 1-8 bytes in either byte order; compact,
 * contiguous and chunked layouts (layout message versions 1-4); chunk indexes: v1 B-tree,
 * single chunk, implicit and fixed array (paged or not); filters: deflate (gzip), shuffle and
 * fletcher32 (verified). Not supported, with a clear error: dense link storage (fractal heaps),
 * extensible-array and v2-B-tree chunk indexes (datasets with unlimited dimensions written with
 * `libver="latest"`), other filters (szip, lzf, blosc, ...), external files, virtual datasets.
 *
 * h5wasm (the npm build of libhdf5) was evaluated first: it streams from disk and handles files
 * over 4 GB in Deno, but reports a truncated or non-HDF5 file as "name not defined", prints
 * libhdf5's error stack to stderr for every failure, and loads 4 MB of WebAssembly per worker.
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { inflateSync } from "node:zlib";

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
class Bad extends Error {}
function bad(reason: string): never {
  throw new Bad(reason);
}

const SIGNATURE = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a];
const UNDEF = -1;

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

type ChunkIndex =
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

interface Message {
  type: number;
  flags: number;
  data: DataView;
}

/** A chunk's location: file address, stored (filtered) size and the mask of skipped filters. */
interface ChunkRef {
  address: number;
  size: number;
  mask: number;
}

/** Little-endian field reader over a DataView with bounds checks. */
class Cursor {
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

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** An open HDF5 file. Close it with {@link H5File.close}. */
export class H5File {
  private fd: number;
  /** File size in bytes. */
  readonly fileSize: number;
  private base = 0;
  private so = 8; // size of offsets
  private sl = 8; // size of lengths
  private rootHeader = UNDEF;
  private rootSymtab: { btree: number; heap: number } | null = null;
  private datasets = new Map<string, H5Dataset>();
  /** Bytes read from the file so far (to check that reads stay local). */
  bytesRead = 0;

  private constructor(readonly path: string, fd: number, size: number) {
    this.fd = fd;
    this.fileSize = size;
  }

  /**
   * Opens `path` and reads its superblock.
   * @throws H5Error when the file cannot be opened, is empty, is not HDF5, or is shorter than
   * its superblock says (a truncated download).
   */
  static open(path: string): H5File {
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      throw new H5Error(path, `cannot open the file (${msg})`, { cause: err });
    }
    const size = fstatSync(fd).size;
    const f = new H5File(path, fd, size);
    try {
      f.guard(() => f.readSuperblock());
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    return f;
  }

  /** Closes the file handle (idempotent). */
  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /** Runs `fn`, turning internal failures into H5Errors that name this file. */
  guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof H5Error) throw err;
      if (err instanceof Bad) throw new H5Error(this.path, err.message);
      const msg = err instanceof Error ? err.message : String(err);
      throw new H5Error(this.path, msg, { cause: err });
    }
  }

  /** @internal reads `len` bytes at file address `addr` (relative to the base address). */
  read(addr: number, len: number, what: string): Uint8Array {
    if (this.fd < 0) bad("the file is closed");
    const pos = this.base + addr;
    if (addr < 0 || pos + len > this.fileSize) {
      bad(
        `${what} at byte ${pos} (+${len}) lies past the end of the file (${this.fileSize} bytes): ` +
          "the file is truncated or corrupt",
      );
    }
    const out = new Uint8Array(len);
    this.bytesRead += len;
    let got = 0;
    while (got < len) {
      const n = readSync(this.fd, out, got, len - got, pos + got);
      if (n <= 0) bad(`${what}: read ${got} of ${len} bytes at ${pos}`);
      got += n;
    }
    return out;
  }

  /** @internal reads a structure of up to `len` bytes, clipped to the end of the file. */
  private readUpTo(addr: number, len: number, what: string): Cursor {
    const avail = this.fileSize - (this.base + addr);
    if (addr < 0 || avail <= 0) bad(`${what} at ${addr} lies past the end of the file`);
    return new Cursor(dv(this.read(addr, Math.min(len, avail), what)), 0, what);
  }

  private readSuperblock(): void {
    if (this.fileSize === 0) bad("the file is empty");
    // The superblock sits at 0 or after a user block of 512 * 2^k bytes.
    let at = -1;
    for (let off = 0; off + 8 <= this.fileSize; off = off === 0 ? 512 : off * 2) {
      const b = this.read(off, 8, "signature");
      if (SIGNATURE.every((v, i) => b[i] === v)) {
        at = off;
        break;
      }
    }
    if (at < 0) bad("not an HDF5 file (no HDF5 signature at byte 0, 512, 1024, ...)");
    const c = this.readUpTo(at, 256, "superblock");
    c.skip(8);
    const version = c.u8();
    let eof: number;
    if (version === 0 || version === 1) {
      c.skip(4); // free-space, root symbol table, reserved, shared header versions
      this.so = c.u8();
      this.sl = c.u8();
      c.skip(1);
      c.skip(4); // group leaf / internal K
      c.skip(4); // consistency flags
      if (version === 1) c.skip(4);
      this.checkSizes();
      this.base = c.uint(this.so);
      c.uint(this.so); // free-space info
      eof = c.uint(this.so);
      c.uint(this.so); // driver info
      // Root group symbol table entry.
      c.uint(this.so); // link name offset
      this.rootHeader = c.uint(this.so);
      const cacheType = c.u32();
      c.skip(4);
      if (cacheType === 1) {
        const btree = c.uint(this.so);
        const heap = c.uint(this.so);
        this.rootSymtab = { btree, heap };
      }
    } else if (version === 2 || version === 3) {
      this.so = c.u8();
      this.sl = c.u8();
      c.skip(1); // flags
      this.checkSizes();
      this.base = c.uint(this.so);
      c.uint(this.so); // superblock extension
      eof = c.uint(this.so);
      this.rootHeader = c.uint(this.so);
    } else {
      bad(`unsupported superblock version ${version}`);
    }
    if (this.base !== 0 && this.base !== at) {
      bad(`unusual base address ${this.base} (superblock at ${at})`);
    }
    this.base = at === 0 ? this.base : at;
    // The stored end-of-file address counts the user block too (libhdf5 compares it so).
    if (eof !== UNDEF && eof > this.fileSize) {
      bad(
        `the file is truncated: it has ${this.fileSize} bytes but its superblock says ` +
          `${eof} (an incomplete download or copy?)`,
      );
    }
    if (this.rootHeader === UNDEF) bad("the superblock has no root group");
  }

  private checkSizes(): void {
    for (const [what, v] of [["offsets", this.so], ["lengths", this.sl]] as const) {
      if (![2, 4, 8].includes(v)) bad(`unsupported size of ${what}: ${v} bytes`);
    }
  }

  /** @internal absolute offset that file addresses are relative to (the user block size). */
  get baseAddress(): number {
    return this.base;
  }

  /** @internal size of file offsets / lengths in bytes. */
  get sizes(): { so: number; sl: number } {
    return { so: this.so, sl: this.sl };
  }

  // ---- object headers ---------------------------------------------------------------------

  /** @internal parses the object header at `addr` into its messages (continuations followed). */
  messages(addr: number): Message[] {
    const first = this.readUpTo(addr, 16, "object header");
    const out: Message[] = [];
    const blocks: { addr: number; len: number; v2: boolean; cont: boolean }[] = [];
    let v2 = false;
    let trackOrder = false;
    if (first.view.getUint8(0) === 1) {
      first.skip(2);
      first.u16(); // number of messages
      first.u32(); // reference count
      const size = first.u32();
      blocks.push({ addr: addr + 16, len: size, v2: false, cont: false });
    } else {
      const h = this.readUpTo(addr, 64, "object header");
      h.sig("OHDR");
      const version = h.u8();
      if (version !== 2) bad(`unsupported object header version ${version} at ${addr}`);
      v2 = true;
      const flags = h.u8();
      trackOrder = (flags & 0x04) !== 0;
      if (flags & 0x20) h.skip(16);
      if (flags & 0x10) h.skip(4);
      const size = h.uint(1 << (flags & 3));
      blocks.push({ addr: addr + h.pos, len: size, v2: true, cont: false });
    }
    for (let bi = 0; bi < blocks.length; bi++) {
      if (bi > 64) bad(`object header at ${addr} has too many continuation blocks`);
      const blk = blocks[bi];
      const raw = this.read(blk.addr, blk.len, "object header messages");
      const c = new Cursor(dv(raw), 0, `object header at ${addr}`);
      if (blk.cont && blk.v2) c.sig("OCHK");
      // v2 blocks end with a 4-byte checksum (chunk 0's follows its data; the size excludes it).
      const end = blk.v2 && blk.cont ? raw.length - 4 : raw.length;
      const hdr = blk.v2 ? (trackOrder ? 6 : 4) : 8;
      while (c.pos + hdr <= end) {
        let type: number, size: number, flags: number;
        if (blk.v2) {
          type = c.u8();
          size = c.u16();
          flags = c.u8();
          if (trackOrder) c.skip(2);
        } else {
          type = c.u16();
          size = c.u16();
          flags = c.u8();
          c.skip(3);
        }
        if (c.pos + size > end) {
          bad(`object header at ${addr}: message of ${size} bytes overruns it`);
        }
        const data = new DataView(raw.buffer, raw.byteOffset + c.pos, size);
        c.pos += size;
        if (type === 0x10) {
          const cc = new Cursor(data, 0, "continuation message");
          const a = cc.uint(this.so);
          const l = cc.uint(this.sl);
          blocks.push({ addr: a, len: l, v2, cont: true });
          continue;
        }
        if (flags & 0x02) {
          bad(`object header at ${addr}: shared messages (type ${type}) are not supported`);
        }
        out.push({ type, flags, data });
      }
    }
    return out;
  }

  // ---- groups -----------------------------------------------------------------------------

  /** @internal the links (name -> object header address) of the group whose header is at `addr`. */
  links(addr: number, symtab: { btree: number; heap: number } | null = null): Map<string, number> {
    const out = new Map<string, number>();
    let st = symtab;
    if (!st) {
      for (const m of this.messages(addr)) {
        if (m.type === 0x11) {
          const c = new Cursor(m.data, 0, "symbol table message");
          st = { btree: c.uint(this.so), heap: c.uint(this.so) };
        } else if (m.type === 0x06) {
          const link = this.parseLink(m.data);
          if (link) out.set(link.name, link.address);
        } else if (m.type === 0x02) {
          const c = new Cursor(m.data, 0, "link info message");
          c.u8();
          const flags = c.u8();
          if (flags & 1) c.skip(8);
          const heap = c.uint(this.so);
          if (heap !== UNDEF) {
            bad("groups with dense link storage (a fractal heap) are not supported");
          }
        }
      }
    }
    if (st) this.symbolTable(st.btree, st.heap, out);
    return out;
  }

  private parseLink(data: DataView): { name: string; address: number } | null {
    const c = new Cursor(data, 0, "link message");
    const version = c.u8();
    if (version !== 1) bad(`unsupported link message version ${version}`);
    const flags = c.u8();
    const type = flags & 0x08 ? c.u8() : 0;
    if (flags & 0x04) c.skip(8);
    if (flags & 0x10) c.skip(1);
    const len = c.uint(1 << (flags & 3));
    const name = new TextDecoder().decode(c.bytes(len));
    if (type !== 0) return null; // soft and external links are not followed
    return { name, address: c.uint(this.so) };
  }

  private symbolTable(btree: number, heapAddr: number, out: Map<string, number>): void {
    const h = this.readUpTo(heapAddr, 8 + 2 * this.sl + this.so, "local heap");
    h.sig("HEAP");
    h.skip(4);
    const dataSize = h.uint(this.sl);
    h.uint(this.sl);
    const dataAddr = h.uint(this.so);
    const heap = this.read(dataAddr, dataSize, "local heap data");
    const nameAt = (off: number) => {
      if (off >= heap.length) bad(`symbol name offset ${off} outside the local heap`);
      let e = off;
      while (e < heap.length && heap[e] !== 0) e++;
      return new TextDecoder().decode(heap.subarray(off, e));
    };
    const visit = (addr: number, depth: number) => {
      if (depth > 32) bad("group B-tree is too deep (a cycle?)");
      const node = this.btreeNode(addr, 0, this.sl);
      for (const child of node.children) {
        if (node.level > 0) {
          visit(child, depth + 1);
          continue;
        }
        const s = this.readUpTo(child, 8, "symbol table node");
        s.sig("SNOD");
        s.skip(2);
        const n = s.u16();
        const entry = 2 * this.so + 24;
        const e = new Cursor(dv(this.read(child + 8, n * entry, "symbol table node")), 0, "SNOD");
        for (let i = 0; i < n; i++) {
          const nameOff = e.uint(this.so);
          const header = e.uint(this.so);
          e.skip(24);
          out.set(nameAt(nameOff), header);
        }
      }
    };
    visit(btree, 0);
  }

  /** @internal a v1 B-tree node: its level, the raw keys and the child addresses. */
  btreeNode(
    addr: number,
    type: number,
    keySize: number,
  ): { level: number; keys: DataView[]; children: number[] } {
    const headLen = 8 + 2 * this.so;
    const h = new Cursor(dv(this.read(addr, headLen, "B-tree node")), 0, `B-tree node at ${addr}`);
    h.sig("TREE");
    const t = h.u8();
    if (t !== type) bad(`B-tree node at ${addr} has type ${t}, expected ${type}`);
    const level = h.u8();
    const n = h.u16();
    const body = this.read(addr + headLen, n * (keySize + this.so) + keySize, "B-tree node");
    const c = new Cursor(dv(body), 0, `B-tree node at ${addr}`);
    const keys: DataView[] = [];
    const children: number[] = [];
    for (let i = 0; i < n; i++) {
      keys.push(new DataView(body.buffer, body.byteOffset + c.pos, keySize));
      c.skip(keySize);
      children.push(c.uint(this.so));
    }
    keys.push(new DataView(body.buffer, body.byteOffset + c.pos, keySize));
    return { level, keys, children };
  }

  /** Names of the objects in the root group. */
  keys(): string[] {
    return this.guard(() => [...this.rootLinks().keys()]);
  }

  private rootLinks(): Map<string, number> {
    return this.links(this.rootHeader, this.rootSymtab);
  }

  /**
   * The dataset at `path` ("x", "group/sub/data"), with its shape, type, layout and filters.
   * @throws H5Error when it does not exist, is not a dataset, or uses unsupported features.
   */
  dataset(path: string): H5Dataset {
    const cached = this.datasets.get(path);
    if (cached) return cached;
    return this.guard(() => {
      const parts = path.split("/").filter((p) => p.length > 0);
      let links = this.rootLinks();
      let addr = UNDEF;
      for (let i = 0; i < parts.length; i++) {
        const next = links.get(parts[i]);
        if (next === undefined) {
          const where = parts.slice(0, i).join("/") || "/";
          bad(
            `no object "${parts[i]}" in group ${where} (it has: ${
              [...links.keys()].join(", ") || "nothing"
            })`,
          );
        }
        addr = next;
        if (i < parts.length - 1) links = this.links(addr);
      }
      if (addr === UNDEF) bad(`"${path}" is not a dataset`);
      const ds = new H5Dataset(this, path, this.messages(addr));
      this.datasets.set(path, ds);
      return ds;
    });
  }
}

/** A dataset of an {@link H5File}: metadata plus reads along the first axis. */
export class H5Dataset {
  /** Dimensions, outermost first. */
  readonly shape: number[];
  readonly dtype: H5Dtype;
  readonly layout: H5Layout;
  readonly filters: H5Filter[];
  /** Fill value bytes for chunks never written (zeros unless the file defines one). */
  private fill: Uint8Array;
  private nodeCache = new Map<number, { level: number; keys: DataView[]; children: number[] }>();
  private chunkCache = new Map<string, Uint8Array>();
  private chunkCacheBytes = 0;
  /** Bytes of decoded chunks kept for reuse (least recently used dropped first). */
  chunkCacheLimit = 16 << 20;

  /** @internal use {@link H5File.dataset}. */
  constructor(readonly file: H5File, readonly name: string, msgs: Message[]) {
    const { so, sl } = file.sizes;
    let shape: number[] | null = null;
    let dtype: H5Dtype | null = null;
    let layout: H5Layout | null = null;
    let fill: Uint8Array | null = null;
    const filters: H5Filter[] = [];
    for (const m of msgs) {
      const c = new Cursor(m.data, 0, `dataset "${name}"`);
      switch (m.type) {
        case 0x01:
          shape = parseDataspace(c, sl);
          break;
        case 0x03:
          dtype = parseDatatype(c, name);
          break;
        case 0x05:
          fill = parseFillValue(c) ?? fill;
          break;
        case 0x08:
          layout = parseLayout(c, so, sl, name);
          break;
        case 0x0b:
          filters.push(...parseFilters(c));
          break;
        case 0x07:
          bad(`dataset "${name}" stores its data in external files, which is not supported`);
      }
    }
    if (!layout) bad(`"${name}" is not a dataset (no data layout message)`);
    if (!shape) bad(`dataset "${name}" has no dataspace`);
    if (!dtype) bad(`dataset "${name}" has no datatype`);
    this.shape = shape;
    this.dtype = dtype;
    this.layout = layout;
    this.filters = filters;
    for (const f of filters) {
      if (![1, 2, 3].includes(f.id)) {
        bad(
          `dataset "${name}" uses filter ${f.id} (${f.name || "unnamed"}); only deflate (gzip), ` +
            "shuffle and fletcher32 are supported",
        );
      }
    }
    this.fill = fill && fill.length === dtype.size ? fill : new Uint8Array(dtype.size);
    if (layout.kind === "chunked" && layout.chunk.length !== shape.length) {
      bad(`dataset "${name}": chunk rank ${layout.chunk.length} differs from rank ${shape.length}`);
    }
    if (layout.kind === "contiguous" && layout.address !== UNDEF) {
      const need = this.numel() * dtype.size;
      if (layout.size < need) {
        bad(`dataset "${name}": contiguous storage of ${layout.size} bytes < ${need}`);
      }
    }
  }

  /** Number of elements. */
  numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Bytes of one row (one index of the first axis). */
  get rowBytes(): number {
    return this.shape.slice(1).reduce((a, b) => a * b, 1) * this.dtype.size;
  }

  /**
   * Raw bytes (the file's byte order) of rows `start .. start + count - 1` along the first axis,
   * all of every other axis: a `count * rowBytes` array in row-major order. Reads only the
   * chunks (or the contiguous byte range) those rows touch.
   * @throws H5Error for an out-of-range request, a truncated file, or a corrupt chunk.
   */
  readRows(start: number, count = 1): Uint8Array {
    return this.file.guard(() => {
      if (this.shape.length === 0) bad(`dataset "${this.name}" is a scalar`);
      const n = this.shape[0];
      if (
        !Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 ||
        start + count > n
      ) {
        bad(`dataset "${this.name}": rows ${start}..${start + count - 1} outside [0, ${n})`);
      }
      const rb = this.rowBytes;
      const L = this.layout;
      if (L.kind === "compact") return L.data.slice(start * rb, (start + count) * rb);
      if (L.kind === "contiguous") {
        if (L.address === UNDEF) return this.filled(count * rb);
        return this.file.read(L.address + start * rb, count * rb, `dataset "${this.name}" rows`);
      }
      return this.readChunked(start, count);
    });
  }

  /** All elements as numbers (for small label arrays). */
  readAll(): number[] {
    const bytes = this.shape.length === 0 ? this.readScalar() : this.readRows(0, this.shape[0]);
    return toNumbers(bytes, this.dtype);
  }

  private readScalar(): Uint8Array {
    return this.file.guard(() => {
      const L = this.layout;
      if (L.kind === "compact") return L.data.slice(0, this.dtype.size);
      if (L.kind === "contiguous") return this.file.read(L.address, this.dtype.size, "scalar");
      bad(`dataset "${this.name}": chunked scalar`);
    });
  }

  private filled(bytes: number): Uint8Array {
    const out = new Uint8Array(bytes);
    if (this.fill.some((v) => v !== 0)) {
      for (let i = 0; i < bytes; i += this.fill.length) out.set(this.fill, i);
    }
    return out;
  }

  private readChunked(start: number, count: number): Uint8Array {
    const L = this.layout as Extract<H5Layout, { kind: "chunked" }>;
    const rank = this.shape.length;
    const es = this.dtype.size;
    const out = new Uint8Array(count * this.rowBytes);
    // Selection: [start, start + count) on axis 0, everything on the others.
    const selLo = [start, ...new Array(rank - 1).fill(0)];
    const selHi = [start + count, ...this.shape.slice(1)];
    const outShape = [count, ...this.shape.slice(1)];
    const grid = this.shape.map((d, i) => Math.ceil(d / L.chunk[i]));
    const cLo = selLo.map((v, i) => Math.floor(v / L.chunk[i]));
    const cHi = selHi.map((v, i) => Math.ceil(v / L.chunk[i])); // exclusive
    if (count === 0 || grid.some((g) => g === 0)) return out;
    const cc = cLo.slice();
    for (;;) {
      const chunk = this.chunk(cc, grid);
      copyBlock(chunk, L.chunk, cc.map((c, i) => c * L.chunk[i]), out, outShape, selLo, selHi, es);
      // Next chunk coordinate (row-major).
      let d = rank - 1;
      while (d >= 0) {
        cc[d]++;
        if (cc[d] < cHi[d]) break;
        cc[d] = cLo[d];
        d--;
      }
      if (d < 0) break;
    }
    return out;
  }

  /**
   * Where the chunk holding the element at `coords` is stored: absolute byte offset in the file
   * and stored (filtered) size, or null when it was never written or the dataset is not chunked.
   * For diagnostics.
   */
  chunkLocation(coords: number[]): { offset: number; size: number } | null {
    return this.file.guard(() => {
      const L = this.layout;
      if (L.kind !== "chunked") return null;
      if (
        coords.length !== this.shape.length || coords.some((c, i) => !(c >= 0 && c < this.shape[i]))
      ) {
        bad(
          `dataset "${this.name}": element [${coords.join(", ")}] outside [${
            this.shape.join(", ")
          }]`,
        );
      }
      const grid = this.shape.map((d, i) => Math.ceil(d / L.chunk[i]));
      const chunkBytes = L.chunk.reduce((a, b) => a * b, 1) * this.dtype.size;
      const ref = this.locate(coords.map((c, i) => Math.floor(c / L.chunk[i])), grid, chunkBytes);
      return ref ? { offset: this.file.baseAddress + ref.address, size: ref.size } : null;
    });
  }

  /** The decoded bytes of the chunk at chunk-grid coordinates `cc` (fill when never written). */
  private chunk(cc: number[], grid: number[]): Uint8Array {
    const L = this.layout as Extract<H5Layout, { kind: "chunked" }>;
    const key = cc.join(",");
    const hit = this.chunkCache.get(key);
    if (hit) {
      this.chunkCache.delete(key);
      this.chunkCache.set(key, hit);
      return hit;
    }
    const chunkBytes = L.chunk.reduce((a, b) => a * b, 1) * this.dtype.size;
    const ref = this.locate(cc, grid, chunkBytes);
    let data: Uint8Array;
    const where = `chunk [${
      cc.map((c, i) => c * L.chunk[i]).join(", ")
    }] of dataset "${this.name}"`;
    if (!ref) data = this.filled(chunkBytes);
    else {
      const raw = this.file.read(ref.address, ref.size, where);
      data = this.unfilter(raw, ref.mask, where);
      if (data.length !== chunkBytes) {
        bad(`${where} decodes to ${data.length} bytes, expected ${chunkBytes} (corrupt file)`);
      }
    }
    this.chunkCache.set(key, data);
    this.chunkCacheBytes += data.length;
    while (this.chunkCacheBytes > this.chunkCacheLimit && this.chunkCache.size > 1) {
      const [k, v] = this.chunkCache.entries().next().value!;
      this.chunkCache.delete(k);
      this.chunkCacheBytes -= v.length;
    }
    return data;
  }

  private unfilter(raw: Uint8Array, mask: number, where: string): Uint8Array {
    let data = raw;
    for (let i = this.filters.length - 1; i >= 0; i--) {
      if (mask & (1 << i)) continue;
      const f = this.filters[i];
      if (f.id === 1) {
        try {
          data = new Uint8Array(inflateSync(data));
        } catch (err) {
          const msg = err instanceof Error ? err.message : String(err);
          bad(`${where}: corrupt deflate data (${msg})`);
        }
      } else if (f.id === 2) {
        data = unshuffle(data, f.values[0] ?? this.dtype.size);
      } else if (f.id === 3) {
        data = checkFletcher32(data, where);
      }
    }
    return data;
  }

  /** Where the chunk at grid coordinates `cc` is stored, or null when it was never written. */
  private locate(cc: number[], grid: number[], chunkBytes: number): ChunkRef | null {
    const L = this.layout as Extract<H5Layout, { kind: "chunked" }>;
    const idx = L.index;
    const noFilter = this.filters.length === 0;
    let linear = 0;
    for (let i = 0; i < cc.length; i++) linear = linear * grid[i] + cc[i];
    if (idx.address === UNDEF) return null;
    if (idx.type === "single") {
      return {
        address: idx.address,
        size: noFilter ? chunkBytes : idx.filteredSize,
        mask: idx.filterMask,
      };
    }
    if (idx.type === "implicit") {
      return { address: idx.address + linear * chunkBytes, size: chunkBytes, mask: 0 };
    }
    if (idx.type === "fixed") return this.fixedArray(idx.address, linear, chunkBytes);
    return this.btreeLookup(idx.address, cc.map((c, i) => c * L.chunk[i]));
  }

  private btreeLookup(root: number, target: number[]): ChunkRef | null {
    const rank = target.length;
    const keySize = 8 + 8 * (rank + 1);
    let addr = root;
    for (let depth = 0; depth < 64; depth++) {
      let node = this.nodeCache.get(addr);
      if (!node) {
        node = this.file.btreeNode(addr, 1, keySize);
        this.nodeCache.set(addr, node);
      }
      // The last child whose first key is <= target.
      let pick = -1;
      for (let i = 0; i < node.children.length; i++) {
        if (compareKey(node.keys[i], target) <= 0) pick = i;
        else break;
      }
      if (pick < 0) return null;
      const k = node.keys[pick];
      if (node.level === 0) {
        if (compareKey(k, target) !== 0) return null;
        return {
          address: node.children[pick],
          size: k.getUint32(0, true),
          mask: k.getUint32(4, true),
        };
      }
      addr = node.children[pick];
    }
    bad("chunk B-tree is too deep (a cycle?)");
  }

  private fixedArrayInfo:
    | { entrySize: number; pageBits: number; max: number; dblock: number; client: number }
    | null = null;

  private fixedArray(hdrAddr: number, linear: number, chunkBytes: number): ChunkRef | null {
    const { so, sl } = this.file.sizes;
    if (!this.fixedArrayInfo) {
      const c = new Cursor(
        dv(this.file.read(hdrAddr, 12 + sl + so, "fixed array header")),
        0,
        "FAHD",
      );
      c.sig("FAHD");
      c.u8();
      const client = c.u8();
      const entrySize = c.u8();
      const pageBits = c.u8();
      const max = c.uint(sl);
      const dblock = c.uint(so);
      this.fixedArrayInfo = { entrySize, pageBits, max, dblock, client };
    }
    const { entrySize, pageBits, max, dblock, client } = this.fixedArrayInfo;
    if (linear >= max) bad(`chunk ${linear} beyond the fixed array's ${max} entries`);
    if (dblock === UNDEF) return null;
    const perPage = 2 ** pageBits;
    const paged = max > perPage;
    let addr: number;
    if (!paged) addr = dblock + 6 + so + linear * entrySize;
    else {
      const npages = Math.ceil(max / perPage);
      const bitmapBytes = Math.ceil(npages / 8);
      const page = Math.floor(linear / perPage);
      const bm = this.file.read(dblock + 6 + so + (page >> 3), 1, "fixed array page bitmap")[0];
      if (!(bm & (0x80 >> (page & 7)))) return null;
      const pageSize = perPage * entrySize + 4;
      addr = dblock + 6 + so + bitmapBytes + 4 + page * pageSize + (linear % perPage) * entrySize;
    }
    const c = new Cursor(
      dv(this.file.read(addr, entrySize, "fixed array element")),
      0,
      "FADB element",
    );
    const address = c.uint(so);
    if (address === UNDEF) return null;
    if (client === 0) return { address, size: chunkBytes, mask: 0 };
    const size = c.uint(entrySize - so - 4);
    return { address, size, mask: c.u32() };
  }
}

/** Compares a chunk B-tree key's offsets with `target` (rank values, element dim ignored). */
function compareKey(key: DataView, target: number[]): number {
  for (let i = 0; i < target.length; i++) {
    const lo = key.getUint32(8 + 8 * i, true);
    const hi = key.getUint32(12 + 8 * i, true);
    const v = hi * 4294967296 + lo;
    if (v !== target[i]) return v < target[i] ? -1 : 1;
  }
  return 0;
}

/**
 * Copies the part of a chunk (shape `chunk`, origin `origin` in dataset coordinates) that falls
 * inside the selection [selLo, selHi) into `out` (shape `outShape`, origin `selLo`). Trailing
 * axes that both cover completely are merged so the inner copy is one long run.
 */
function copyBlock(
  src: Uint8Array,
  chunk: number[],
  origin: number[],
  out: Uint8Array,
  outShape: number[],
  selLo: number[],
  selHi: number[],
  es: number,
): void {
  const rank = chunk.length;
  const lo = origin.map((o, i) => Math.max(o, selLo[i]));
  const hi = origin.map((o, i) => Math.min(o + chunk[i], selHi[i]));
  if (lo.some((v, i) => v >= hi[i])) return;
  // Merge trailing axes where the chunk and the output have the same extent and the copy is whole.
  let tail = rank - 1;
  let run = (hi[tail] - lo[tail]) * es;
  while (
    tail > 0 && chunk[tail] === outShape[tail] && lo[tail] === origin[tail] &&
    hi[tail] - lo[tail] === chunk[tail]
  ) {
    tail--;
    run *= hi[tail] - lo[tail];
  }
  // Strides in bytes.
  const sStride = new Array(rank).fill(0);
  const oStride = new Array(rank).fill(0);
  let s = es, o = es;
  for (let i = rank - 1; i >= 0; i--) {
    sStride[i] = s;
    oStride[i] = o;
    s *= chunk[i];
    o *= outShape[i];
  }
  const idx = lo.slice(0, tail);
  for (;;) {
    let sp = (lo[tail] - origin[tail]) * sStride[tail];
    let op = (lo[tail] - selLo[tail]) * oStride[tail];
    for (let i = 0; i < tail; i++) {
      sp += (idx[i] - origin[i]) * sStride[i];
      op += (idx[i] - selLo[i]) * oStride[i];
    }
    out.set(src.subarray(sp, sp + run), op);
    let d = tail - 1;
    while (d >= 0) {
      idx[d]++;
      if (idx[d] < hi[d]) break;
      idx[d] = lo[d];
      d--;
    }
    if (d < 0) break;
  }
}

function parseDataspace(c: Cursor, sl: number): number[] {
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

function parseDatatype(c: Cursor, name: string): H5Dtype {
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

function parseFillValue(c: Cursor): Uint8Array | null {
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

function parseLayout(c: Cursor, so: number, sl: number, name: string): H5Layout {
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

function parseFilters(c: Cursor): H5Filter[] {
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
function unshuffle(data: Uint8Array, es: number): Uint8Array {
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

function checkFletcher32(data: Uint8Array, where: string): Uint8Array {
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
