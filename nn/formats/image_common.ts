/**
 * What the PNG, JPEG and TIFF decoders share: the size limit (checked from a header before
 * anything is allocated), the failure they raise (image.ts turns it into an ImageDecodeError that
 * names the file), and MSB-first unpacking of 1/2/4-bit samples.
 */

/**
 * Largest image accepted, in pixels: PIL's decompression-bomb error threshold (twice its default
 * `Image.MAX_IMAGE_PIXELS`). Checked from the header before anything is allocated.
 */
export const MAX_IMAGE_PIXELS = 2 * 89_478_485;

/** A reason raised inside a format decoder, turned into an ImageDecodeError with the path. */
export class DecodeFailure extends Error {}

/** Raises a {@link DecodeFailure} carrying `reason`. */
export function fail(reason: string): never {
  throw new DecodeFailure(reason);
}

/** Fails unless `width` x `height` is a positive integer size of at most MAX_IMAGE_PIXELS. */
export function checkSize(width: number, height: number, what: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    fail(`${what} has an invalid size ${width}x${height}`);
  }
  if (width * height > MAX_IMAGE_PIXELS) {
    fail(`${what} is ${width}x${height}, more than the ${MAX_IMAGE_PIXELS} pixels accepted`);
  }
}

/** Unpacks `count` MSB-first `depth`-bit values (depth 1, 2, 4) from `src` at `offset`. */
export function unpackBits(
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
