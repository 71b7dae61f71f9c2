/**
 * Image file decoding on the CPU: PNG, TIFF and JPEG bytes -> 8-bit RGB (row-major HWC), giving
 * the pixels PIL gives for `Image.open(path).convert("RGB")` (which is what the PyTorch CLIP /
 * torchvision pipelines feed their transforms).
 *
 * - PNG via `fast-png` (CRCs checked); every colour type and bit depth, Adam7 for 8/16 bits.
 * - TIFF: parsed and decompressed here (no compression, PackBits, LZW, deflate; predictor 2;
 *   strips or tiles; chunky or planar; either byte order; fill order 1 or 2). `utif` is not used:
 *   it loops forever on a corrupt LZW strip and silently zero-fills truncated strips, while a
 *   data loader must fail fast with a clear error.
 * - JPEG via `jpeg-js` (pure JavaScript, synchronous, well established). Its IDCT, chroma
 *   upsampling and colour conversion are not libjpeg-turbo's, so JPEG pixels differ slightly
 *   from PIL's (see tests/decode_test.ts for the measured difference).
 *
 * Conversions to RGB follow PIL 9.4: alpha is dropped (premultiplied TIFF alpha is first undone
 * as PIL's unpacker does), 16-bit RGB(A) and gray+alpha keep the high byte (`v >> 8`), 16-bit
 * gray without alpha is clipped to 255 (PIL opens it as a 32-bit integer image and clips when
 * converting), 1/2/4-bit gray is scaled by 255, 85 or 17, palettes are looked up (16-bit TIFF
 * colour maps keep the high byte; PNG indices past the palette give gray (i, i, i) as PIL's padded
 * palette does), WhiteIsZero is inverted. Like `Image.open`, EXIF orientation and ICC profiles are
 * not applied.
 */
import { decode as decodePngLib } from "fast-png";
import jpeg from "jpeg-js";
import { inflateSync } from "node:zlib";
import type { DecodedImage } from "../clip/image.ts";

export type { DecodedImage } from "../clip/image.ts";

/**
 * Largest image accepted, in pixels: PIL's decompression-bomb error threshold (twice its default
 * `Image.MAX_IMAGE_PIXELS`). Checked from the header before anything is allocated.
 */
export const MAX_IMAGE_PIXELS = 2 * 89_478_485;

/**
 * Thrown for any input that cannot be decoded: empty, truncated, corrupt, unreadable, or an
 * unsupported format or variant. The message names the path and the reason.
 */
export class ImageDecodeError extends Error {
  /** The file path (or label) given to the decoder. */
  readonly path: string;
  /** Why decoding failed, without the path. */
  readonly reason: string;
  /** Builds the error; `cause` keeps the underlying library error when there is one. */
  constructor(path: string, reason: string, options?: { cause?: unknown }) {
    super(`cannot decode image ${path}: ${reason}`, options);
    this.name = "ImageDecodeError";
    this.path = path;
    this.reason = reason;
  }
}

/** A reason raised inside a format decoder, turned into an ImageDecodeError with the path. */
class DecodeFailure extends Error {}

function fail(reason: string): never {
  throw new DecodeFailure(reason);
}

/** The image formats recognised by their leading bytes. */
export type ImageFormat = "png" | "tiff" | "jpeg";

/** Recognises PNG, TIFF (classic, either byte order) and JPEG by magic bytes; null otherwise. */
export function detectImageFormat(bytes: Uint8Array): ImageFormat | null {
  const b = bytes;
  if (
    b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 &&
    b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a
  ) return "png";
  if (b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49) || (b[0] === 0x4d && b[1] === 0x4d))) {
    const magic = b[0] === 0x49 ? b[2] | (b[3] << 8) : (b[2] << 8) | b[3];
    if (magic === 42 || magic === 43) return "tiff";
  }
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "jpeg";
  return null;
}

/**
 * Decodes PNG, TIFF or JPEG bytes (format chosen by magic bytes, not by the path) into 8-bit RGB,
 * row-major HWC, with the pixel values PIL's `Image.open(...).convert("RGB")` gives (JPEG: close
 * to, not identical with, PIL). Only the first image of a multi-page TIFF is read.
 * @param bytes the whole file.
 * @param path used only in error messages.
 * @throws ImageDecodeError for empty, truncated, corrupt or unsupported input.
 */
export function decodeImage(bytes: Uint8Array, path: string): DecodedImage {
  if (bytes.length === 0) throw new ImageDecodeError(path, "the file is empty");
  const format = detectImageFormat(bytes);
  if (format === null) {
    const head = Array.from(bytes.subarray(0, 8), (v) => v.toString(16).padStart(2, "0"));
    throw new ImageDecodeError(
      path,
      `unsupported or unrecognised format (first bytes ${
        head.join(" ")
      }); expected PNG, TIFF or JPEG`,
    );
  }
  try {
    if (format === "png") return decodePng(bytes);
    if (format === "tiff") return decodeTiff(bytes);
    return decodeJpeg(bytes);
  } catch (err) {
    if (err instanceof DecodeFailure) throw new ImageDecodeError(path, err.message);
    const msg = err instanceof Error ? err.message : String(err);
    throw new ImageDecodeError(path, `corrupt or truncated ${format.toUpperCase()} data (${msg})`, {
      cause: err,
    });
  }
}

/**
 * Reads a file and decodes it with {@link decodeImage}.
 * @throws ImageDecodeError when the file cannot be read (reason names the OS error) or decoded.
 */
export async function readImage(path: string): Promise<DecodedImage> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new ImageDecodeError(path, `cannot read the file (${msg})`, { cause: err });
  }
  return decodeImage(bytes, path);
}

function checkSize(width: number, height: number, what: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    fail(`${what} has an invalid size ${width}x${height}`);
  }
  if (width * height > MAX_IMAGE_PIXELS) {
    fail(`${what} is ${width}x${height}, more than the ${MAX_IMAGE_PIXELS} pixels accepted`);
  }
}

/** Unpacks `count` MSB-first `depth`-bit values (depth 1, 2, 4) from `src` at `offset`. */
function unpackBits(
  src: Uint8Array,
  offset: number,
  count: number,
  depth: number,
  out: Uint8Array,
  outOffset: number,
  outStride: number,
): void {
  const mask = (1 << depth) - 1;
  const perByte = 8 / depth;
  for (let i = 0; i < count; i++) {
    const byte = src[offset + Math.floor(i / perByte)];
    const shift = 8 - depth * ((i % perByte) + 1);
    out[outOffset + i * outStride] = (byte >> shift) & mask;
  }
}

// ------------------------------------------------------------------------------------------------
// PNG

const PNG_DEPTHS: Record<number, number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};

function decodePng(bytes: Uint8Array): DecodedImage {
  // IHDR is always the first chunk: read it here to validate before fast-png allocates.
  if (bytes.length < 33) fail("truncated PNG: the file ends inside the header");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (String.fromCharCode(...bytes.subarray(12, 16)) !== "IHDR") fail("corrupt PNG: no IHDR chunk");
  const width = dv.getUint32(16);
  const height = dv.getUint32(20);
  const depth = bytes[24];
  const colorType = bytes[25];
  const interlace = bytes[28];
  checkSize(width, height, "PNG");
  if (!(colorType in PNG_DEPTHS)) fail(`corrupt PNG: invalid colour type ${colorType}`);
  if (!PNG_DEPTHS[colorType].includes(depth)) {
    fail(`corrupt PNG: bit depth ${depth} is invalid for colour type ${colorType}`);
  }
  if (interlace > 1) fail(`corrupt PNG: invalid interlace method ${interlace}`);
  if (interlace === 1 && depth < 8) {
    // fast-png's Adam7 path assumes whole bytes per pixel and would return wrong pixels.
    fail(`unsupported PNG: interlaced (Adam7) with ${depth}-bit samples`);
  }
  const png = decodePngLib(bytes, { checkCrc: true });
  if (png.width !== width || png.height !== height) fail("corrupt PNG: inconsistent header");
  const n = width * height;
  const out = new Uint8Array(n * 3);
  const data = png.data;
  const channels = png.channels;
  if (depth === 16) {
    const d16 = data as Uint16Array;
    if (d16.length < n * channels) fail("truncated PNG: not enough pixel data");
    if (colorType === 0) {
      // PIL: mode "I" image, clipped to 255 by convert("RGB").
      for (let i = 0; i < n; i++) {
        const v = d16[i] > 255 ? 255 : d16[i];
        out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = v;
      }
    } else if (colorType === 4) {
      for (let i = 0; i < n; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = d16[2 * i] >> 8;
    } else {
      for (let i = 0, p = 0; i < n; i++, p += channels) {
        out[3 * i] = d16[p] >> 8;
        out[3 * i + 1] = d16[p + 1] >> 8;
        out[3 * i + 2] = d16[p + 2] >> 8;
      }
    }
    return { width, height, data: out };
  }
  const d8 = data as Uint8Array;
  if (colorType === 3 || (colorType === 0 && depth < 8)) {
    // One sample per pixel, possibly packed: unpack row by row.
    const values = new Uint8Array(n);
    if (depth === 8) {
      if (d8.length < n) fail("truncated PNG: not enough pixel data");
      values.set(d8.subarray(0, n));
    } else {
      const rowBytes = Math.ceil((width * depth) / 8);
      if (d8.length < rowBytes * height) fail("truncated PNG: not enough pixel data");
      for (let y = 0; y < height; y++) {
        unpackBits(d8, y * rowBytes, width, depth, values, y * width, 1);
      }
    }
    if (colorType === 0) {
      const scale = 255 / ((1 << depth) - 1);
      for (let i = 0; i < n; i++) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = values[i] * scale;
      return { width, height, data: out };
    }
    const palette = png.palette;
    if (!palette || palette.length === 0) fail("corrupt PNG: palette image without a PLTE chunk");
    // PIL pads a short palette with the gray ramp (i, i, i).
    const lut = new Uint8Array(256 * 3);
    for (let i = 0; i < 256; i++) {
      const c = i < palette.length ? palette[i] : [i, i, i];
      lut[3 * i] = c[0];
      lut[3 * i + 1] = c[1];
      lut[3 * i + 2] = c[2];
    }
    for (let i = 0; i < n; i++) {
      const j = 3 * values[i];
      out[3 * i] = lut[j];
      out[3 * i + 1] = lut[j + 1];
      out[3 * i + 2] = lut[j + 2];
    }
    return { width, height, data: out };
  }
  if (d8.length < n * channels) fail("truncated PNG: not enough pixel data");
  if (channels === 3) return { width, height, data: d8.length === n * 3 ? d8 : d8.slice(0, n * 3) };
  if (channels <= 2) {
    for (let i = 0, p = 0; i < n; i++, p += channels) {
      out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = d8[p];
    }
  } else {
    for (let i = 0, p = 0; i < n; i++, p += 4) {
      out[3 * i] = d8[p];
      out[3 * i + 1] = d8[p + 1];
      out[3 * i + 2] = d8[p + 2];
    }
  }
  return { width, height, data: out };
}

// ------------------------------------------------------------------------------------------------
// JPEG

/** What the JPEG headers say: frame size, components, and whether the samples are YCbCr. */
interface JpegInfo {
  width: number;
  height: number;
  components: number;
  ycc: boolean;
  /** The Adobe APP14 colour transform flag, -1 without that marker. */
  adobeTransform: number;
}

/**
 * Walks the JPEG marker segments up to the first scan: frame header (SOFn) size and components,
 * and the colour space libjpeg would infer (Adobe APP14 transform flag, else component ids
 * 'R','G','B' mean RGB, else YCbCr).
 */
function jpegInfo(bytes: Uint8Array): JpegInfo {
  let p = 2;
  let adobeTransform = -1;
  let frame: { width: number; height: number; ids: number[] } | null = null;
  while (p + 4 <= bytes.length) {
    if (bytes[p] !== 0xff) fail(`corrupt JPEG: expected a marker at byte ${p}`);
    const marker = bytes[p + 1];
    if (marker === 0xff) {
      p++; // fill byte
      continue;
    }
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      p += 2;
      continue;
    }
    if (marker === 0xd9 || marker === 0xda) break; // EOI / start of scan
    const len = (bytes[p + 2] << 8) | bytes[p + 3];
    if (len < 2 || p + 2 + len > bytes.length) {
      fail(`truncated or corrupt JPEG: segment at byte ${p}`);
    }
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
      marker !== 0xcc;
    if (isSof) {
      if (marker === 0xc3 || marker >= 0xc5) {
        fail(`unsupported JPEG: SOF${marker - 0xc0} (lossless, hierarchical or arithmetic coding)`);
      }
      if (bytes[p + 4] !== 8) fail(`unsupported JPEG: ${bytes[p + 4]}-bit samples (only 8-bit)`);
      const n = bytes[p + 9];
      if (len < 8 + 3 * n) fail("corrupt JPEG: short frame header");
      const ids = Array.from({ length: n }, (_, i) => bytes[p + 10 + 3 * i]);
      frame = {
        height: (bytes[p + 5] << 8) | bytes[p + 6],
        width: (bytes[p + 7] << 8) | bytes[p + 8],
        ids,
      };
    }
    // APP14 "Adobe": byte 11 of the payload is the colour transform flag.
    if (
      marker === 0xee && len >= 14 && bytes[p + 4] === 0x41 && bytes[p + 5] === 0x64 &&
      bytes[p + 6] === 0x6f && bytes[p + 7] === 0x62 && bytes[p + 8] === 0x65
    ) adobeTransform = bytes[p + 15];
    p += 2 + len;
  }
  if (frame === null) return fail("truncated or corrupt JPEG: no frame header before the scan");
  const { ids } = frame;
  const rgbIds = ids.length === 3 && ids[0] === 0x52 && ids[1] === 0x47 && ids[2] === 0x42;
  const ycc = ids.length === 3 && (adobeTransform >= 0 ? adobeTransform !== 0 : !rgbIds);
  return { width: frame.width, height: frame.height, components: ids.length, ycc, adobeTransform };
}

/**
 * libjpeg's fixed-point YCbCr -> RGB tables (16 fractional bits, rounded), so the colour
 * conversion matches libjpeg-turbo (and hence PIL) exactly for the same Y/Cb/Cr samples.
 */
const YCC = (() => {
  const fix = (x: number) => Math.floor(x * 65536 + 0.5);
  const half = 1 << 15;
  const crR = new Int32Array(256), cbB = new Int32Array(256);
  const crG = new Int32Array(256), cbG = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    const x = i - 128;
    crR[i] = (fix(1.402) * x + half) >> 16;
    cbB[i] = (fix(1.772) * x + half) >> 16;
    crG[i] = -fix(0.71414) * x;
    cbG[i] = -fix(0.34414) * x + half;
  }
  return { crR, cbB, crG, cbG };
})();

function clampByte(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function decodeJpeg(bytes: Uint8Array): DecodedImage {
  const info = jpegInfo(bytes);
  checkSize(info.width, info.height, "JPEG");
  if (info.components !== 1 && info.components !== 3) {
    fail(
      `unsupported JPEG: ${info.components} colour components (only grayscale and YCbCr/RGB; ` +
        "CMYK/YCCK is not converted)",
    );
  }
  // Take the raw (upsampled) samples and convert colours here: jpeg-js's own conversion
  // truncates instead of rounding, and it treats an Adobe "no transform" (RGB) file as YCbCr.
  const img = jpeg.decode(bytes, {
    useTArray: true,
    formatAsRGBA: false,
    colorTransform: false,
    // Strict: a damaged scan must throw rather than come back partly gray.
    tolerantDecoding: false,
    maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6,
    maxMemoryUsageInMB: 4096,
  });
  if (img.width !== info.width || img.height !== info.height) {
    fail("corrupt JPEG: the decoded size does not match the frame header");
  }
  const d = img.data;
  // jpeg-js converts by itself, whatever the option says, when an Adobe marker asks for it.
  const converted = info.components === 3 && info.adobeTransform > 0;
  if (info.ycc && !converted) {
    const { crR, cbB, crG, cbG } = YCC;
    for (let i = 0; i < d.length; i += 3) {
      const y = d[i], cb = d[i + 1], cr = d[i + 2];
      d[i] = clampByte(y + crR[cr]);
      d[i + 1] = clampByte(y + ((cbG[cb] + crG[cr]) >> 16));
      d[i + 2] = clampByte(y + cbB[cb]);
    }
  }
  return { width: img.width, height: img.height, data: d };
}

// ------------------------------------------------------------------------------------------------
// TIFF

/** Sizes in bytes of the TIFF field types. */
const TIFF_TYPE_SIZE: Record<number, number> = {
  1: 1,
  2: 1,
  3: 2,
  4: 4,
  5: 8,
  6: 1,
  7: 1,
  8: 2,
  9: 4,
  10: 8,
  11: 4,
  12: 8,
  13: 4,
};

const TAG = {
  width: 256,
  height: 257,
  bitsPerSample: 258,
  compression: 259,
  photometric: 262,
  fillOrder: 266,
  stripOffsets: 273,
  samplesPerPixel: 277,
  rowsPerStrip: 278,
  stripByteCounts: 279,
  planarConfig: 284,
  predictor: 317,
  colorMap: 320,
  tileWidth: 322,
  tileLength: 323,
  tileOffsets: 324,
  tileByteCounts: 325,
  extraSamples: 338,
  sampleFormat: 339,
} as const;

const COMPRESSION_NAMES: Record<number, string> = {
  2: "CCITT RLE",
  3: "CCITT Group 3",
  4: "CCITT Group 4",
  6: "old-style JPEG",
  7: "JPEG",
  34712: "JPEG 2000",
  50000: "Zstandard",
  34925: "LZMA",
  50001: "WebP",
};

interface TiffField {
  type: number;
  count: number;
  /** Byte offset of the value(s) in the file. */
  at: number;
}

/** The first IFD of a TIFF, read with bounds checks. */
class TiffDirectory {
  readonly fields = new Map<number, TiffField>();
  constructor(readonly bytes: Uint8Array, readonly dv: DataView, readonly le: boolean) {
    const magic = dv.getUint16(2, le);
    if (magic === 43) fail("unsupported TIFF: BigTIFF");
    if (bytes.length < 8) fail("truncated TIFF: the file ends inside the header");
    const ifd = dv.getUint32(4, le);
    if (ifd < 8 || ifd + 2 > bytes.length) {
      fail(`truncated or corrupt TIFF: IFD offset ${ifd} is outside the file`);
    }
    const n = dv.getUint16(ifd, le);
    if (n === 0) fail("corrupt TIFF: empty IFD");
    if (ifd + 2 + 12 * n > bytes.length) fail("truncated TIFF: the file ends inside the IFD");
    for (let i = 0; i < n; i++) {
      const e = ifd + 2 + 12 * i;
      const tag = dv.getUint16(e, le);
      const type = dv.getUint16(e + 2, le);
      const count = dv.getUint32(e + 4, le);
      const size = TIFF_TYPE_SIZE[type];
      if (size === undefined) continue; // unknown type: a tag we do not need
      const total = size * count;
      const at = total <= 4 ? e + 8 : dv.getUint32(e + 8, le);
      this.fields.set(tag, { type, count, at });
    }
  }

  has(tag: number): boolean {
    return this.fields.has(tag);
  }

  /** All values of an integer tag (BYTE, SHORT, LONG, or their signed forms). */
  ints(tag: number, name: string): number[] {
    const f = this.fields.get(tag);
    if (!f) return fail(`corrupt TIFF: missing ${name} tag (${tag})`);
    const size = TIFF_TYPE_SIZE[f.type];
    if (![1, 3, 4, 6, 8, 9].includes(f.type)) {
      fail(`corrupt TIFF: ${name} tag has non-integer type ${f.type}`);
    }
    if (f.at + size * f.count > this.bytes.length) {
      fail(`truncated TIFF: the values of the ${name} tag lie past the end of the file`);
    }
    const out = new Array<number>(f.count);
    for (let i = 0; i < f.count; i++) {
      const p = f.at + size * i;
      switch (f.type) {
        case 1:
          out[i] = this.bytes[p];
          break;
        case 6:
          out[i] = this.dv.getInt8(p);
          break;
        case 3:
          out[i] = this.dv.getUint16(p, this.le);
          break;
        case 8:
          out[i] = this.dv.getInt16(p, this.le);
          break;
        case 4:
          out[i] = this.dv.getUint32(p, this.le);
          break;
        default:
          out[i] = this.dv.getInt32(p, this.le);
      }
    }
    return out;
  }

  /** The first value of an integer tag, or `fallback` when the tag is absent. */
  int(tag: number, name: string, fallback?: number): number {
    if (!this.fields.has(tag)) {
      if (fallback === undefined) fail(`corrupt TIFF: missing ${name} tag (${tag})`);
      return fallback;
    }
    const v = this.ints(tag, name);
    if (v.length === 0) fail(`corrupt TIFF: ${name} tag has no value`);
    return v[0];
  }
}

/** Layout of the image data: how the pixel grid is cut into strips or tiles. */
interface TiffLayout {
  width: number;
  height: number;
  spp: number;
  bps: number;
  planar: number;
  compression: number;
  predictor: number;
  fillOrder: number;
  le: boolean;
}

function decodeTiff(bytes: Uint8Array): DecodedImage {
  if (bytes.length < 8) fail("truncated TIFF: the file ends inside the header");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const le = bytes[0] === 0x49;
  const dir = new TiffDirectory(bytes, dv, le);
  const width = dir.int(TAG.width, "ImageWidth");
  const height = dir.int(TAG.height, "ImageLength");
  checkSize(width, height, "TIFF");
  const compression = dir.int(TAG.compression, "Compression", 1);
  if (![1, 5, 8, 32946, 32773].includes(compression)) {
    const name = COMPRESSION_NAMES[compression];
    if (compression === 6 || compression === 7) {
      fail(
        `unsupported TIFF compression ${compression} (${name}): JPEG-compressed TIFF is not ` +
          "decoded; re-save it uncompressed or with LZW, deflate or PackBits",
      );
    }
    fail(`unsupported TIFF compression ${compression}${name ? ` (${name})` : ""}`);
  }
  const spp = dir.int(TAG.samplesPerPixel, "SamplesPerPixel", 1);
  if (spp < 1 || spp > 16) fail(`corrupt TIFF: ${spp} samples per pixel`);
  const bpsAll = dir.has(TAG.bitsPerSample) ? dir.ints(TAG.bitsPerSample, "BitsPerSample") : [1];
  const bps = bpsAll[0];
  if (bpsAll.some((b) => b !== bps)) {
    fail(`unsupported TIFF: mixed bits per sample ${bpsAll.join(",")}`);
  }
  if (![1, 2, 4, 8, 16].includes(bps)) fail(`unsupported TIFF: ${bps} bits per sample`);
  if (dir.has(TAG.sampleFormat)) {
    const formats = dir.ints(TAG.sampleFormat, "SampleFormat");
    if (formats.some((f) => f !== 1)) {
      fail(`unsupported TIFF: sample format ${formats.join(",")} (only unsigned integers)`);
    }
  }
  const photometric = dir.int(TAG.photometric, "PhotometricInterpretation");
  const planar = dir.int(TAG.planarConfig, "PlanarConfiguration", 1);
  if (planar !== 1 && planar !== 2) fail(`corrupt TIFF: planar configuration ${planar}`);
  const predictor = dir.int(TAG.predictor, "Predictor", 1);
  if (predictor !== 1 && predictor !== 2) {
    fail(`unsupported TIFF predictor ${predictor}${predictor === 3 ? " (floating point)" : ""}`);
  }
  if (predictor === 2 && bps < 8) {
    fail(`unsupported TIFF: horizontal predictor with ${bps}-bit samples`);
  }
  const fillOrder = dir.int(TAG.fillOrder, "FillOrder", 1);
  if (fillOrder !== 1 && fillOrder !== 2) fail(`corrupt TIFF: fill order ${fillOrder}`);
  const extra = dir.has(TAG.extraSamples) ? dir.ints(TAG.extraSamples, "ExtraSamples") : [];

  const convert = tiffConverter(dir, photometric, spp, bps, extra);
  const layout: TiffLayout = {
    width,
    height,
    spp,
    bps,
    planar,
    compression,
    predictor,
    fillOrder,
    le,
  };
  const samples = readTiffSamples(dir, layout);
  return { width, height, data: convert(samples, width * height) };
}

type SampleBuffer = Uint8Array | Uint16Array;
type Converter = (samples: SampleBuffer, n: number) => Uint8Array;

/**
 * Chooses the samples -> RGB conversion PIL applies for this photometric interpretation, or
 * fails for the variants PIL does not open (or opens into something useless).
 */
function tiffConverter(
  dir: TiffDirectory,
  photometric: number,
  spp: number,
  bps: number,
  extra: number[],
): Converter {
  const extraCount = extra.length;
  if (photometric === 0 || photometric === 1) {
    if (spp !== 1 && !(spp === 2 && bps === 8 && extra[0] === 2 && photometric === 1)) {
      fail(
        `unsupported TIFF: grayscale with ${spp} samples per pixel (extra samples ${
          extra.join(",")
        })`,
      );
    }
    if (photometric === 0 && bps === 16) fail("unsupported TIFF: 16-bit WhiteIsZero grayscale");
    const max = (1 << bps) - 1;
    const lut = new Uint8Array(bps === 16 ? 65536 : max + 1);
    for (let v = 0; v < lut.length; v++) {
      // 16-bit: PIL opens mode I;16 and clips to 255; lower depths scale up to 255.
      const g = bps === 16 ? Math.min(v, 255) : Math.round((v * 255) / max);
      lut[v] = photometric === 0 ? 255 - g : g;
    }
    return (s, n) => {
      const out = new Uint8Array(n * 3);
      for (let i = 0, p = 0; i < n; i++, p += spp) {
        out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = lut[s[p]];
      }
      return out;
    };
  }
  if (photometric === 2) {
    if (spp < 3 || spp - 3 !== extraCount && !(spp === 4 && extraCount === 0)) {
      fail(
        `unsupported TIFF: RGB with ${spp} samples per pixel and extra samples [${
          extra.join(",")
        }]`,
      );
    }
    if (bps !== 8 && bps !== 16) fail(`unsupported TIFF: RGB with ${bps}-bit samples`);
    const shift = bps === 16 ? 8 : 0;
    // ExtraSamples = 1 marks premultiplied alpha: PIL's "RGBa" unpacker divides it out.
    const premultiplied = spp >= 4 && extra[0] === 1;
    return (s, n) => {
      if (spp === 3 && shift === 0 && s instanceof Uint8Array) return s;
      const out = new Uint8Array(n * 3);
      for (let i = 0, p = 0; i < n; i++, p += spp) {
        let r = s[p] >> shift, g = s[p + 1] >> shift, b = s[p + 2] >> shift;
        if (premultiplied) {
          const a = s[p + 3] >> shift;
          if (a === 0) r = g = b = 0;
          else if (a !== 255) {
            r = Math.min(255, Math.floor((r * 255) / a));
            g = Math.min(255, Math.floor((g * 255) / a));
            b = Math.min(255, Math.floor((b * 255) / a));
          }
        }
        out[3 * i] = r;
        out[3 * i + 1] = g;
        out[3 * i + 2] = b;
      }
      return out;
    };
  }
  if (photometric === 3) {
    if (spp !== 1) fail(`unsupported TIFF: palette image with ${spp} samples per pixel`);
    if (bps > 8) fail(`unsupported TIFF: palette image with ${bps}-bit indices`);
    const entries = 1 << bps;
    const map = dir.ints(TAG.colorMap, "ColorMap");
    if (map.length < 3 * entries) {
      fail(`corrupt TIFF: colour map has ${map.length} values, needs ${3 * entries}`);
    }
    const lut = new Uint8Array(entries * 3);
    for (let i = 0; i < entries; i++) {
      lut[3 * i] = map[i] >> 8;
      lut[3 * i + 1] = map[entries + i] >> 8;
      lut[3 * i + 2] = map[2 * entries + i] >> 8;
    }
    return (s, n) => {
      const out = new Uint8Array(n * 3);
      for (let i = 0; i < n; i++) {
        const j = 3 * s[i];
        out[3 * i] = lut[j];
        out[3 * i + 1] = lut[j + 1];
        out[3 * i + 2] = lut[j + 2];
      }
      return out;
    };
  }
  const names: Record<number, string> = {
    4: "transparency mask",
    5: "CMYK",
    6: "YCbCr",
    8: "CIELab",
  };
  return fail(
    `unsupported TIFF photometric interpretation ${photometric}${
      names[photometric] ? ` (${names[photometric]})` : ""
    }`,
  );
}

/**
 * Decompresses every strip or tile and assembles the samples as one chunky array
 * [height, width, spp]: Uint8Array for 1-8 bits (sub-byte values unpacked), Uint16Array for 16.
 */
function readTiffSamples(dir: TiffDirectory, L: TiffLayout): SampleBuffer {
  const { width, height, spp, bps, planar } = L;
  const tiled = dir.has(TAG.tileWidth) || dir.has(TAG.tileOffsets);
  const planes = planar === 2 ? spp : 1;
  const sppChunk = planar === 2 ? 1 : spp;
  let chunkW: number, chunkH: number, across: number, down: number;
  let offsets: number[], counts: number[] | null;
  if (tiled) {
    chunkW = dir.int(TAG.tileWidth, "TileWidth");
    chunkH = dir.int(TAG.tileLength, "TileLength");
    if (chunkW <= 0 || chunkH <= 0) fail(`corrupt TIFF: tile size ${chunkW}x${chunkH}`);
    across = Math.ceil(width / chunkW);
    down = Math.ceil(height / chunkH);
    offsets = dir.ints(TAG.tileOffsets, "TileOffsets");
    counts = dir.has(TAG.tileByteCounts) ? dir.ints(TAG.tileByteCounts, "TileByteCounts") : null;
  } else {
    chunkW = width;
    const rps = dir.int(TAG.rowsPerStrip, "RowsPerStrip", height);
    chunkH = rps <= 0 || rps > height ? height : rps;
    across = 1;
    down = Math.ceil(height / chunkH);
    offsets = dir.ints(TAG.stripOffsets, "StripOffsets");
    counts = dir.has(TAG.stripByteCounts) ? dir.ints(TAG.stripByteCounts, "StripByteCounts") : null;
  }
  const nChunks = across * down * planes;
  const kind = tiled ? "tile" : "strip";
  if (offsets.length < nChunks) {
    fail(`corrupt TIFF: ${offsets.length} ${kind} offsets, needs ${nChunks}`);
  }
  if (counts === null) {
    if (L.compression !== 1 || nChunks !== 1) fail(`corrupt TIFF: missing ${kind} byte counts`);
  } else if (counts.length < nChunks) {
    fail(`corrupt TIFF: ${counts.length} ${kind} byte counts, needs ${nChunks}`);
  }
  const rowBytes = Math.ceil((chunkW * sppChunk * bps) / 8);
  const samples: SampleBuffer = bps === 16
    ? new Uint16Array(width * height * spp)
    : new Uint8Array(width * height * spp);
  const bytes = dir.bytes;
  for (let plane = 0; plane < planes; plane++) {
    for (let cy = 0; cy < down; cy++) {
      for (let cx = 0; cx < across; cx++) {
        const index = (plane * down + cy) * across + cx;
        const y0 = cy * chunkH;
        const x0 = cx * chunkW;
        // Strips: the last one may hold fewer rows. Tiles are always whole.
        const rows = tiled ? chunkH : Math.min(chunkH, height - y0);
        const need = rowBytes * rows;
        const offset = offsets[index];
        const count = counts === null ? need : counts[index];
        if (offset + count > bytes.length) {
          fail(
            `truncated TIFF: ${kind} ${index} (${count} bytes at offset ${offset}) runs past the ` +
              `end of the file (${bytes.length} bytes)`,
          );
        }
        let raw = bytes.subarray(offset, offset + count);
        if (L.fillOrder === 2) raw = reverseBits(raw);
        const chunk = decompress(raw, L.compression, need, `${kind} ${index}`);
        if (L.predictor === 2) undoPredictor(chunk, rows, rowBytes, sppChunk, bps, L.le);
        placeChunk(chunk, samples, L, {
          x0,
          y0,
          w: Math.min(chunkW, width - x0),
          h: Math.min(rows, height - y0),
          rowBytes,
          sppChunk,
          plane: planar === 2 ? plane : -1,
        });
      }
    }
  }
  return samples;
}

const BIT_REVERSE = (() => {
  const t = new Uint8Array(256);
  for (let i = 0; i < 256; i++) {
    let r = 0;
    for (let b = 0; b < 8; b++) if (i & (1 << b)) r |= 0x80 >> b;
    t[i] = r;
  }
  return t;
})();

function reverseBits(src: Uint8Array): Uint8Array {
  const out = new Uint8Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = BIT_REVERSE[src[i]];
  return out;
}

/** Decompresses one strip/tile to exactly `need` bytes, failing when it yields fewer. */
function decompress(raw: Uint8Array, compression: number, need: number, what: string): Uint8Array {
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
function undoPredictor(
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

interface ChunkPlacement {
  x0: number;
  y0: number;
  /** Columns and rows of the chunk inside the image. */
  w: number;
  h: number;
  rowBytes: number;
  sppChunk: number;
  /** Sample index for planar data, -1 for chunky. */
  plane: number;
}

/** Copies a decompressed strip/tile into the chunky sample array. */
function placeChunk(
  chunk: Uint8Array,
  samples: SampleBuffer,
  L: TiffLayout,
  P: ChunkPlacement,
): void {
  const { width, spp, bps, le } = L;
  const { x0, y0, w, h, rowBytes, sppChunk, plane } = P;
  const dstBase = plane < 0 ? 0 : plane;
  const stride = plane < 0 ? 1 : spp; // distance between consecutive values in the destination
  if (bps === 8) {
    const dst = samples as Uint8Array;
    for (let y = 0; y < h; y++) {
      const from = y * rowBytes;
      const to = ((y0 + y) * width + x0) * spp + dstBase;
      if (plane < 0) {
        dst.set(chunk.subarray(from, from + w * sppChunk), to);
      } else {
        for (let x = 0; x < w; x++) dst[to + x * spp] = chunk[from + x];
      }
    }
    return;
  }
  if (bps === 16) {
    const dst = samples as Uint16Array;
    const dv = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const per = w * sppChunk;
    for (let y = 0; y < h; y++) {
      const from = y * rowBytes;
      const to = ((y0 + y) * width + x0) * spp + dstBase;
      for (let i = 0; i < per; i++) dst[to + i * stride] = dv.getUint16(from + 2 * i, le);
    }
    return;
  }
  const dst = samples as Uint8Array;
  for (let y = 0; y < h; y++) {
    const to = ((y0 + y) * width + x0) * spp + dstBase;
    unpackBits(chunk, y * rowBytes, w * sppChunk, bps, dst, to, stride);
  }
}
