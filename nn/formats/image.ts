/**
 * Image file decoding on the CPU: PNG, TIFF and JPEG bytes -> 8-bit RGB (row-major HWC), giving
 * the pixels PIL gives for `Image.open(path).convert("RGB")` (which is what the PyTorch CLIP /
 * torchvision pipelines feed their transforms).
 *
 * This file holds the image type, format detection and the entry points; the decoders are
 * png.ts (`fast-png`), jpeg.ts (`jpeg-js`, close to but not identical with PIL's pixels) and
 * tiff.ts (+ tiff_codecs.ts: parsed and decompressed here).
 *
 * Conversions to RGB follow PIL 9.4: alpha is dropped (premultiplied TIFF alpha is first undone
 * as PIL's unpacker does), 16-bit RGB(A) and gray+alpha keep the high byte (`v >> 8`), 16-bit
 * gray without alpha is clipped to 255 (PIL opens it as a 32-bit integer image and clips when
 * converting), 1/2/4-bit gray is scaled by 255, 85 or 17, palettes are looked up (16-bit TIFF
 * colour maps keep the high byte; PNG indices past the palette give gray (i, i, i) as PIL's padded
 * palette does), WhiteIsZero is inverted. Like `Image.open`, EXIF orientation and ICC profiles are
 * not applied.
 */
import { DecodeFailure } from "./image_common.ts";
import { type ImageHeader, probeHeader } from "./image_probe.ts";
import { decodeJpeg } from "./jpeg.ts";
import { decodePng } from "./png.ts";
import { decodeTiff } from "./tiff.ts";

export { MAX_IMAGE_PIXELS } from "./image_common.ts";
export { GRAY16_NOTE, type ImageHeader, type ProbedFormat } from "./image_probe.ts";

/**
 * An 8-bit RGB image: `data[(y * width + x) * 3 + c]`, row-major HWC, c = 0 (R), 1 (G), 2 (B).
 * `data.length === width * height * 3`.
 */
export interface DecodedImage {
  /** Width in pixels (a positive integer). */
  width: number;
  /** Height in pixels (a positive integer). */
  height: number;
  /** The RGB bytes, row-major HWC, `width * height * 3` of them. */
  data: Uint8Array;
}

/**
 * Checks that `img` is a well-formed {@link DecodedImage}: positive integer width and height
 * and exactly `width * height * 3` bytes.
 * @throws RangeError naming `what` (e.g. a file path or "input image") when it is not.
 */
export function assertRgbImage(img: DecodedImage, what = "image"): void {
  const { width, height, data } = img;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new RangeError(
      `${what}: width and height must be positive integers, got ${width}x${height}`,
    );
  }
  if (!(data instanceof Uint8Array) || data.length !== width * height * 3) {
    throw new RangeError(
      `${what}: expected ${width}x${height}x3 = ${width * height * 3} RGB bytes, got ${
        data instanceof Uint8Array ? data.length : typeof data
      }`,
    );
  }
}

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
 * @throws ImageDecodeError when the file cannot be read (reason names the OS error; a FIFO,
 * device or folder is refused without being opened) or decoded.
 */
export async function readImage(path: string): Promise<DecodedImage> {
  let bytes: Uint8Array;
  try {
    // Never open a FIFO or a device: reading one blocks or never ends.
    const st = await Deno.stat(path);
    if (!st.isFile) {
      throw new Error(st.isDirectory ? "a folder" : "not a regular file (FIFO, device or socket)");
    }
    bytes = await Deno.readFile(path);
  } catch (err) {
    const link = err instanceof Deno.errors.NotFound &&
      await Deno.lstat(path).then((l) => l.isSymlink).catch(() => false);
    const msg = link ? "a broken symbolic link" : err instanceof Error ? err.message : String(err);
    throw new ImageDecodeError(path, `cannot read the file (${msg})`, { cause: err });
  }
  return decodeImage(bytes, path);
}

/**
 * The format, size and sample layout of an image file from its headers only (a few kilobytes
 * read; nothing decoded), with a `note` when the conversion to RGB will surprise (16-bit
 * grayscale). Cheap enough to run over every input before any expensive work.
 * @throws ImageDecodeError naming the file: not a regular file (a FIFO would block), a broken
 * link, empty, an unknown format, headers that are corrupt, an image too large, or a PNG too
 * short for the pixels its header claims.
 */
export async function probeImage(path: string): Promise<ImageHeader> {
  let file: Deno.FsFile;
  let size: number;
  try {
    const st = await Deno.stat(path);
    if (!st.isFile) {
      throw new Error(st.isDirectory ? "a folder" : "not a regular file (FIFO, device or socket)");
    }
    size = st.size;
    file = await Deno.open(path, { read: true });
  } catch (err) {
    const link = err instanceof Deno.errors.NotFound &&
      await Deno.lstat(path).then((l) => l.isSymlink).catch(() => false);
    const msg = link ? "a broken symbolic link" : err instanceof Error ? err.message : String(err);
    throw new ImageDecodeError(path, `cannot read the file (${msg})`, { cause: err });
  }
  try {
    return await probeHeader(async (offset, len) => {
      const buf = new Uint8Array(Math.max(0, Math.min(len, size - offset)));
      if (offset < 0 || buf.length === 0) return new Uint8Array(0);
      await file.seek(offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < buf.length) {
        const n = await file.read(buf.subarray(got));
        if (n === null) break;
        got += n;
      }
      return buf.subarray(0, got);
    }, size);
  } catch (err) {
    if (err instanceof DecodeFailure) throw new ImageDecodeError(path, err.message);
    throw new ImageDecodeError(path, `cannot read the file (${(err as Error).message})`);
  } finally {
    file.close();
  }
}
