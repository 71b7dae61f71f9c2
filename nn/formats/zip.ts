/**
 * A read-only zip archive reader for `torch.save` checkpoints: the central directory (zip64
 * included), stored and deflated entries, and ranged reads of stored entries, so one tensor of a
 * multi-gigabyte checkpoint is read without reading the rest. Only what torch writes is
 * supported: no encryption, no compression other than deflate, no multi-disk archives.
 *
 * Every read that covers a whole entry checks the entry's CRC-32 from the central directory (a
 * flipped bit in a stored tensor would otherwise load silently). A ranged read of part of a
 * stored entry cannot be checked without reading all of it, and is not.
 */
import { crc32, inflateRawSync } from "node:zlib";
import { checkInputFile } from "./input_file.ts";

/** One member of a zip archive, from its central directory record. */
export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflate. */
  method: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
  /** CRC-32 of the uncompressed bytes, from the central directory. */
  crc32: number;
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
    await checkInputFile(path);
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
      if (e.method === 0) return this.#checked(e, raw);
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
      return this.#checked(e, out);
    });
  }

  /** `bytes` (the whole of entry `e`) when their CRC-32 matches the central directory's. */
  #checked(e: ZipEntry, bytes: Uint8Array): Uint8Array {
    const got = crc32(bytes) >>> 0;
    if (got !== e.crc32) {
      const hex = (v: number) => `0x${v.toString(16).padStart(8, "0")}`;
      throw new Error(
        `${this.path}: zip entry "${e.name}" fails its CRC-32 check (stored ${hex(e.crc32)}, ` +
          `computed ${hex(got)}): the file is corrupt`,
      );
    }
    return bytes;
  }

  /**
   * Reads bytes [start, start + length) of entry `name` (uncompressed positions) into a fresh,
   * 0-offset buffer. Stored entries read only that range (CRC-checked when it is the whole
   * entry); deflated ones inflate (and check) the entry.
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
      return start === 0 && length === e.uncompressedSize ? this.#checked(e, buf) : buf;
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
    const crc = v.getUint32(p + 16, true);
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
    entries.push({ name, method, compressedSize, uncompressedSize, localHeaderOffset, crc32: crc });
    p = xEnd + commentLen;
  }
  return entries;
}
