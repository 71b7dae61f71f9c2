/**
 * The in-memory image type shared by the decoders (train/decode.ts) and CLIP preprocessing
 * (clip/preprocess.ts). It lives in clip/ because data flows one way (clip <- train): the
 * decoders re-export it.
 */

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
