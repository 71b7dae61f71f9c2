/**
 * TIFF decoding, parsed here (no compression, PackBits, LZW, deflate; predictor 2; strips or
 * tiles; chunky or planar; either byte order; fill order 1 or 2; 1-16 bit gray, RGB(A),
 * palette), converted to 8-bit RGB as PIL does. The codecs are in tiff_codecs.ts. `utif` is not
 * used: it loops forever on a corrupt LZW strip and silently zero-fills truncated strips, while a
 * data loader must fail fast with a clear error.
 */
import { checkSize, fail, unpackBits } from "./image_common.ts";
import type { DecodedImage } from "./image.ts";
import { decompress, reverseBits, undoPredictor } from "./tiff_codecs.ts";

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

/** Decodes TIFF bytes (first image) to 8-bit RGB. Raises DecodeFailure on bad input. */
export function decodeTiff(bytes: Uint8Array): DecodedImage {
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
