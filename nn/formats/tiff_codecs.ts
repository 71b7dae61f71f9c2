/**
 * The TIFF strip/tile codecs: PackBits, LZW (libtiff's variant), deflate, bit reversal for fill
 * order 2, and the horizontal-differencing predictor. Every decoder stops once its output is full
 * and reports a short or corrupt stream instead of looping or zero-filling.
 */
import { inflateSync } from "node:zlib";
import { fail } from "./image_common.ts";

/** Each byte with its bit order reversed. */
const BIT_REVERSE = (() => {
  const t = new Uint8Array(256);
  for (let i = 0; i < 256; i++) {
    let r = 0;
    for (let b = 0; b < 8; b++) if (i & (1 << b)) r |= 0x80 >> b;
    t[i] = r;
  }
  return t;
})();

/** A copy of `src` with the bits of every byte reversed (TIFF FillOrder 2). */
export function reverseBits(src: Uint8Array): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = BIT_REVERSE[src[i]];
  return out;
}

/** Decompresses one strip/tile to exactly `need` bytes, failing when it yields fewer. */
export function decompress(
  raw: Uint8Array,
  compression: number,
  need: number,
  what: string,
): Uint8Array {
  let out: Uint8Array;
  let got: number;
  switch (compression) {
    case 1:
      if (raw.length < need) fail(`truncated TIFF: ${what} has ${raw.length} bytes, needs ${need}`);
      return raw.slice(0, need);
    case 32773:
      out = new Uint8Array(need);
      got = unpackBitsRle(raw, out, what);
      break;
    case 5:
      out = new Uint8Array(need);
      got = lzwDecode(raw, out, what);
      break;
    default: {
      // 8 and 32946: zlib streams.
      let inflated: Uint8Array;
      try {
        inflated = inflateSync(raw);
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        return fail(`corrupt or truncated TIFF: deflate data of ${what} (${msg})`);
      }
      out = inflated.length >= need ? inflated.subarray(0, need) : inflated;
      got = out.length;
    }
  }
  if (got < need) fail(`truncated or corrupt TIFF: ${what} decodes to ${got} bytes, needs ${need}`);
  return out;
}

/** PackBits: returns the number of bytes written (stops once `out` is full). */
function unpackBitsRle(src: Uint8Array, out: Uint8Array, what: string): number {
  let i = 0, o = 0;
  const n = src.length, cap = out.length;
  while (i < n && o < cap) {
    const h = src[i++];
    if (h < 128) {
      const len = h + 1;
      if (i + len > n) fail(`truncated TIFF: PackBits literal run of ${what} ends past its data`);
      const take = Math.min(len, cap - o);
      out.set(src.subarray(i, i + take), o);
      o += take;
      i += len;
    } else if (h > 128) {
      if (i >= n) fail(`truncated TIFF: PackBits repeat run of ${what} ends past its data`);
      const len = Math.min(257 - h, cap - o);
      out.fill(src[i++], o, o + len);
      o += len;
    } // 128: no-op
  }
  return o;
}

/**
 * TIFF LZW (MSB-first, 9-12 bit codes, libtiff's early width change, Clear = 256, EOI = 257).
 * Returns the number of bytes written; stops at EOI, at the end of the input, or when `out` is
 * full. Every code consumes at least 9 input bits, so the loop always ends.
 */
function lzwDecode(src: Uint8Array, out: Uint8Array, what: string): number {
  const prefix = new Int32Array(4096);
  const suffix = new Uint8Array(4096);
  const length = new Uint16Array(4096);
  for (let i = 0; i < 256; i++) {
    suffix[i] = i;
    length[i] = 1;
    prefix[i] = -1;
  }
  const totalBits = src.length * 8;
  let bitPos = 0;
  let width = 9;
  let next = 258;
  let old = -1;
  let o = 0;
  const cap = out.length;
  const readCode = (): number => {
    if (bitPos + width > totalBits) return -1;
    // Up to 12 bits spread over at most 3 bytes.
    const byte = bitPos >> 3;
    const chunk = (src[byte] << 16) | ((src[byte + 1] ?? 0) << 8) | (src[byte + 2] ?? 0);
    const code = (chunk >> (24 - (bitPos & 7) - width)) & ((1 << width) - 1);
    bitPos += width;
    return code;
  };
  /** Writes the string of `code` at `o` (clipped to `out`); returns its first byte. */
  const emit = (code: number): number => {
    const len = length[code];
    let c = code;
    for (let k = len - 1; k >= 0; k--) {
      if (o + k < cap) out[o + k] = suffix[c];
      if (k > 0) c = prefix[c];
    }
    o += len;
    return suffix[c];
  };
  while (o < cap) {
    const code = readCode();
    if (code < 0 || code === 257) break;
    if (code === 256) {
      width = 9;
      next = 258;
      old = -1;
      continue;
    }
    if (old < 0) {
      if (code > 255) fail(`corrupt TIFF: LZW data of ${what} starts with code ${code}`);
      emit(code);
      old = code;
      continue;
    }
    let first: number;
    if (code < next) {
      first = emit(code);
    } else if (code === next) {
      // The KwKwK case: the string of `old` followed by its own first byte.
      first = emit(old);
      if (o < cap) out[o] = first;
      o++;
    } else {
      return fail(`corrupt TIFF: invalid LZW code ${code} in ${what}`);
    }
    if (next >= 4096) fail(`corrupt TIFF: LZW table overflow in ${what} (no Clear code)`);
    prefix[next] = old;
    suffix[next] = first;
    length[next] = length[old] + 1;
    next++;
    if (next >= (1 << width) - 1 && width < 12) width++;
    old = code;
  }
  return Math.min(o, cap);
}

/** Undoes horizontal differencing in place (per row, per sample; 16-bit in file byte order). */
export function undoPredictor(
  chunk: Uint8Array,
  rows: number,
  rowBytes: number,
  spp: number,
  bps: number,
  le: boolean,
): void {
  if (bps === 8) {
    for (let y = 0; y < rows; y++) {
      const r = y * rowBytes;
      for (let i = spp; i < rowBytes; i++) {
        chunk[r + i] = (chunk[r + i] + chunk[r + i - spp]) & 0xff;
      }
    }
    return;
  }
  const dv = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  const step = 2 * spp;
  for (let y = 0; y < rows; y++) {
    const r = y * rowBytes;
    for (let i = step; i + 1 < rowBytes; i += 2) {
      dv.setUint16(r + i, (dv.getUint16(r + i, le) + dv.getUint16(r + i - step, le)) & 0xffff, le);
    }
  }
}
