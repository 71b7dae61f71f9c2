/**
 * A cheap look at an image file before anything is decoded: the format, the size and the sample
 * layout from the headers only (PNG's IHDR, TIFF's first IFD, JPEG's frame header), reading a few
 * kilobytes. Commands probe every input image before they build a model, so a truncated or
 * foreign file among thousands is named in seconds, not after an hour of work.
 *
 * The probe refuses what the decoders would refuse from the same headers (unknown format, a size
 * of 0 or above MAX_IMAGE_PIXELS, BigTIFF, a PNG too short to hold the pixels its header
 * claims), and notes what decodes but surprises (16-bit grayscale, which PIL clips to white).
 */
import { checkSize, DecodeFailure, fail } from "./image_common.ts";

/** Which image format, by magic bytes. */
export type ProbedFormat = "png" | "tiff" | "jpeg";

/** What an image's headers say. */
export interface ImageHeader {
  /** The format, from the magic bytes. */
  format: ProbedFormat;
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** Bits per sample (PNG bit depth, TIFF BitsPerSample, 8 for JPEG). */
  bitDepth: number;
  /** Samples per pixel (1 gray, 2 gray + alpha, 3 colour, 4 colour + alpha; PNG palette: 1). */
  samples: number;
  /** Something the user should know about how this file is converted, if anything. */
  note?: string;
}

/** Reads `len` bytes at `offset` (fewer at the end of the file). */
export type ByteSource = (offset: number, len: number) => Promise<Uint8Array>;

/**
 * Largest ratio of raw to deflate-compressed bytes (deflate's 258-byte matches in 2-bit codes
 * top out near 1032:1): a PNG file smaller than its pixel data divided by this is truncated.
 */
export const MAX_DEFLATE_RATIO = 1032;

/** The note attached to 16-bit grayscale images (PIL's convert("RGB") clips them at 255). */
export const GRAY16_NOTE: string =
  '16-bit grayscale: clipped at 255 as PIL\'s convert("RGB") does ' +
  "(most pixels turn white); kept for parity with PIL";

const PNG_CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * Checks a PNG's IHDR (the first 33 bytes) against the file size: a file that cannot hold the
 * compressed pixel data its header claims is truncated. Returns the header.
 */
export function pngHeader(head: Uint8Array, fileSize: number): ImageHeader {
  if (head.length < 33 || fileSize < 33) fail("truncated PNG: the file ends inside the header");
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (String.fromCharCode(...head.subarray(12, 16)) !== "IHDR") fail("corrupt PNG: no IHDR chunk");
  const width = dv.getUint32(16), height = dv.getUint32(20);
  const depth = head[24], colorType = head[25];
  checkSize(width, height, "PNG");
  const samples = PNG_CHANNELS[colorType];
  if (samples === undefined) fail(`corrupt PNG: invalid colour type ${colorType}`);
  const depths = colorType === 0 ? [1, 2, 4, 8, 16] : colorType === 3 ? [1, 2, 4, 8] : [8, 16];
  if (!depths.includes(depth)) {
    fail(`corrupt PNG: bit depth ${depth} is invalid for colour type ${colorType}`);
  }
  // One filter byte per row plus the packed samples.
  const raw = height * (1 + Math.ceil((width * samples * depth) / 8));
  const minimum = 33 + 12 + Math.ceil(raw / MAX_DEFLATE_RATIO) + 12;
  if (fileSize < minimum) {
    fail(
      `truncated PNG: the header says ${width}x${height} (${raw} bytes of pixel data, at least ` +
        `${minimum} bytes compressed) but the file has only ${fileSize} bytes`,
    );
  }
  const header: ImageHeader = { format: "png", width, height, bitDepth: depth, samples };
  if (depth === 16 && colorType === 0) header.note = GRAY16_NOTE;
  return header;
}

async function tiffHeader(read: ByteSource, head: Uint8Array): Promise<ImageHeader> {
  const le = head[0] === 0x49;
  const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (head.length < 8) fail("truncated TIFF: the file ends inside the header");
  if (dv(head).getUint16(2, le) === 43) fail("unsupported TIFF: BigTIFF");
  const ifd = dv(head).getUint32(4, le);
  const countBytes = await read(ifd, 2);
  if (ifd < 8 || countBytes.length < 2) {
    fail(`truncated or corrupt TIFF: IFD offset ${ifd} is outside the file`);
  }
  const n = dv(countBytes).getUint16(0, le);
  if (n === 0) fail("corrupt TIFF: empty IFD");
  const entries = await read(ifd + 2, 12 * n);
  if (entries.length < 12 * n) fail("truncated TIFF: the file ends inside the IFD");
  const ev = dv(entries);
  const first = async (tag: number): Promise<number | undefined> => {
    for (let i = 0; i < n; i++) {
      if (ev.getUint16(12 * i, le) !== tag) continue;
      const type = ev.getUint16(12 * i + 2, le), count = ev.getUint32(12 * i + 4, le);
      const size = type === 3 ? 2 : type === 4 ? 4 : type === 1 ? 1 : 0;
      if (size === 0 || count === 0) fail(`corrupt TIFF: tag ${tag} has type ${type}`);
      let at = 12 * i + 8, src = ev;
      if (size * count > 4) {
        const b = await read(ev.getUint32(12 * i + 8, le), size);
        if (b.length < size) fail(`truncated TIFF: the values of tag ${tag} lie past the end`);
        (src = dv(b)), (at = 0);
      }
      return size === 1 ? src.getUint8(at) : size === 2 ? src.getUint16(at, le) : src.getUint32(
        at,
        le,
      );
    }
    return undefined;
  };
  const width = await first(256), height = await first(257);
  if (width === undefined || height === undefined) fail("corrupt TIFF: no ImageWidth / Length");
  checkSize(width, height, "TIFF");
  const compression = (await first(259)) ?? 1;
  if (![1, 5, 8, 32946, 32773].includes(compression)) {
    fail(`unsupported TIFF compression ${compression} (only none, LZW, deflate, PackBits)`);
  }
  const bitDepth = (await first(258)) ?? 1;
  if (![1, 2, 4, 8, 16].includes(bitDepth)) fail(`unsupported TIFF: ${bitDepth} bits per sample`);
  const samples = (await first(277)) ?? 1;
  const photometric = await first(262);
  const header: ImageHeader = { format: "tiff", width, height, bitDepth, samples };
  if (bitDepth === 16 && samples === 1 && (photometric === 0 || photometric === 1)) {
    header.note = GRAY16_NOTE;
  }
  return header;
}

async function jpegHeader(read: ByteSource): Promise<ImageHeader> {
  let p = 2;
  for (let segments = 0; segments < 10_000; segments++) {
    const m = await read(p, 10);
    if (m.length < 4) break;
    if (m[0] !== 0xff) fail(`corrupt JPEG: expected a marker at byte ${p}`);
    const marker = m[1];
    if (marker === 0xff) {
      p++;
      continue;
    }
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) {
      p += 2;
      continue;
    }
    if (marker === 0xd9 || marker === 0xda) break;
    const len = (m[2] << 8) | m[3];
    if (len < 2) fail(`corrupt JPEG: segment at byte ${p}`);
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
      marker !== 0xcc;
    if (isSof) {
      if (m.length < 10) fail("truncated JPEG: the file ends inside the frame header");
      if (marker === 0xc3 || marker >= 0xc5) {
        fail(`unsupported JPEG: SOF${marker - 0xc0} (lossless, hierarchical or arithmetic coding)`);
      }
      if (m[4] !== 8) fail(`unsupported JPEG: ${m[4]}-bit samples (only 8-bit)`);
      if (m[9] !== 1 && m[9] !== 3) {
        fail(`unsupported JPEG: ${m[9]} colour components (only grayscale and YCbCr/RGB)`);
      }
      const height = (m[5] << 8) | m[6], width = (m[7] << 8) | m[8];
      checkSize(width, height, "JPEG");
      return { format: "jpeg", width, height, bitDepth: m[4], samples: m[9] };
    }
    p += 2 + len;
  }
  return fail("truncated or corrupt JPEG: no frame header before the scan");
}

/**
 * The headers of an image read through `read` (see the module comment).
 * @throws DecodeFailure (a reason without the path) for an unknown format or bad headers.
 */
export async function probeHeader(read: ByteSource, fileSize: number): Promise<ImageHeader> {
  if (fileSize === 0) fail("the file is empty");
  const head = await read(0, 64);
  const b = head;
  if (
    b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47 &&
    b[4] === 0x0d && b[5] === 0x0a && b[6] === 0x1a && b[7] === 0x0a
  ) return pngHeader(head, fileSize);
  if (b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49) || (b[0] === 0x4d && b[1] === 0x4d))) {
    const magic = b[0] === 0x49 ? b[2] | (b[3] << 8) : (b[2] << 8) | b[3];
    if (magic === 42 || magic === 43) return await tiffHeader(read, head);
  }
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
    return await jpegHeader(read);
  }
  const hex = Array.from(b.subarray(0, 8), (v) => v.toString(16).padStart(2, "0")).join(" ");
  return fail(
    `unsupported or unrecognised format (first bytes ${hex}); expected PNG, TIFF or JPEG`,
  );
}

export { DecodeFailure };
