/**
 * A dataset of an HDF5 file (hdf5.ts): its metadata, and reads of whole rows along the first
 * axis that touch only the chunks (or the contiguous byte range) those rows cover. Chunks are
 * found through any of the supported indexes (v1 B-tree, single chunk, implicit, fixed array),
 * unfiltered (deflate, shuffle, Fletcher-32) and kept in a small LRU cache.
 */
import { inflateSync } from "node:zlib";
import type { H5File } from "./hdf5.ts";

/** Deflate's best compression ratio (258-byte matches in 2-bit codes): about 1032:1. */
const MAX_DEFLATE_RATIO = 1032;
import {
  bad,
  checkFletcher32,
  type ChunkRef,
  Cursor,
  dv,
  type H5Dtype,
  type H5Filter,
  type H5Layout,
  type Message,
  parseDataspace,
  parseDatatype,
  parseFillValue,
  parseFilters,
  parseLayout,
  toNumbers,
  UNDEF,
  unshuffle,
} from "./hdf5_parse.ts";

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
    this.checkShapeAgainstFile();
  }

  /**
   * Refuses a shape the file cannot hold, before any read allocates for it: a 1 KB file that
   * declares 10^9 rows is corrupt (or hostile), and reading it would allocate gigabytes of fill
   * values first. Bound: the file's size, times deflate's best ratio (1032:1) when the data is
   * compressed. A dataset whose chunks were never written is refused by the same rule.
   */
  private checkShapeAgainstFile(): void {
    const L = this.layout;
    const bytes = this.numel() * this.dtype.size;
    const shape = `[${this.shape.join(", ")}]`;
    if (!Number.isSafeInteger(bytes)) {
      bad(`dataset "${this.name}": shape ${shape} is too large to address`);
    }
    if (L.kind === "compact") {
      if (L.data.length < bytes) {
        bad(`dataset "${this.name}": compact data of ${L.data.length} bytes for shape ${shape}`);
      }
      return;
    }
    const deflate = L.kind === "chunked" && this.filters.some((f) => f.id === 1);
    const cap = this.file.fileSize * (deflate ? MAX_DEFLATE_RATIO : 1);
    if (bytes > cap) {
      bad(
        `dataset "${this.name}" declares shape ${shape} (${bytes} bytes) but the ` +
          `${this.file.fileSize}-byte file can hold at most ${cap} bytes of it` +
          (deflate ? ` (deflate compresses at most ${MAX_DEFLATE_RATIO}:1)` : "") +
          ": the shape is corrupt, the file truncated, or the data never written",
      );
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
