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
 *
 * Files: this one (the file: superblock, object headers, groups), hdf5_dataset.ts (reading a
 * dataset's rows through its chunk index and filters), hdf5_parse.ts (errors, the field cursor,
 * message parsers, filters).
 */
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { H5Dataset } from "./hdf5_dataset.ts";
import { Bad, bad, Cursor, dv, H5Error, type Message, SIGNATURE, UNDEF } from "./hdf5_parse.ts";

export { H5Dataset } from "./hdf5_dataset.ts";
export { type H5Dtype, H5Error, type H5Filter, type H5Layout, toNumbers } from "./hdf5_parse.ts";

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
