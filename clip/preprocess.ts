/**
 * CLIP image preprocessing on the CPU, matching torchvision on PIL images:
 *
 *   Resize(size, interpolation=BICUBIC) -> CenterCrop(size) -> ToTensor() -> Normalize(mean, std)
 *
 * The resize reproduces PIL's separable two-pass resampler (Pillow's libImaging/Resample.c)
 * bit for bit: a cubic convolution kernel with a = -0.5 and support 2 that is widened by the
 * scale factor when downscaling (so it antialiases), coefficients normalised per output pixel
 * and quantised to 22 fractional bits, a horizontal pass then a vertical pass, each rounding and
 * clipping to uint8. Output sizes and crop offsets follow torchvision's rules.
 *
 * The resize + centre crop of {@link preprocessImage} computes only the pixels the crop keeps
 * ({@link resizeShortSideCenterCrop}): every output pixel of PIL's resampler depends only on its
 * own coordinate, so this is bit-identical to resizing the whole image and cropping, and the work
 * and memory stay bounded by the crop whatever the aspect ratio (a 1x50000 image would otherwise
 * be resized to 224x11,200,000 first).
 */
import { assertRgbImage, type DecodedImage, MAX_IMAGE_PIXELS } from "../nn/formats/image.ts";

/** OpenAI CLIP's normalisation mean (R, G, B), as in its `_transform`. */
export const OPENAI_CLIP_MEAN: readonly [number, number, number] = [
  0.48145466,
  0.4578275,
  0.40821073,
];
/** OpenAI CLIP's normalisation standard deviation (R, G, B). */
export const OPENAI_CLIP_STD: readonly [number, number, number] = [
  0.26862954,
  0.26130258,
  0.27577711,
];
/** ImageNet normalisation mean (R, G, B), used by timm / torchvision backbones. */
export const IMAGENET_MEAN: readonly [number, number, number] = [0.485, 0.456, 0.406];
/** ImageNet normalisation standard deviation (R, G, B). */
export const IMAGENET_STD: readonly [number, number, number] = [0.229, 0.224, 0.225];

/** Options for {@link preprocessImage}. */
export interface PreprocessOptions {
  /** Short side after resizing and the side of the square centre crop (default 224). */
  size?: number;
  /** Per-channel mean (default {@link OPENAI_CLIP_MEAN}). */
  mean?: readonly number[];
  /** Per-channel standard deviation (default {@link OPENAI_CLIP_STD}). */
  std?: readonly number[];
}

// PIL keeps 32 - 8 - 2 fractional bits in its fixed-point coefficients: 8 for the pixel value
// and 2 spare because bicubic weights can sum above 1 before clipping.
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);
const BICUBIC_SUPPORT = 2;

/** The cubic convolution kernel with a = -0.5, written in the same operation order as PIL. */
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/** Per-output-pixel source window and fixed-point weights for one axis. */
interface Coefficients {
  /** Weights per output pixel, `ksize` slots each (unused slots are 0). */
  weights: Int32Array;
  /** First source index per output pixel. */
  start: Int32Array;
  /** Number of source pixels per output pixel. */
  count: Int32Array;
  ksize: number;
}

/**
 * PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing an axis of `inSize` pixels
 * (the whole axis, box [0, inSize]) to `outSize` pixels, for the `n` output pixels from `first`
 * on (slot i of the result is output pixel `first + i`).
 */
function coefficients(inSize: number, outSize: number, first = 0, n = outSize): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = BICUBIC_SUPPORT * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Int32Array(n * ksize);
  const start = new Int32Array(n);
  const count = new Int32Array(n);
  const k = new Float64Array(ksize);
  const ss = 1 / filterScale;
  for (let i = 0; i < n; i++) {
    const xx = first + i;
    const center = (xx + 0.5) * scale;
    // C's (int) cast truncates toward zero; the clamps make the sign irrelevant.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubic((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? k[x] / ww : k[x];
      // Round half away from zero to 22 fractional bits, as PIL does.
      weights[i * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    start[i] = xmin;
    count[i] = xmax;
  }
  return { weights, start, count, ksize };
}

/** Fixed-point accumulator -> uint8 as PIL's clip8: arithmetic shift, then clamp. */
function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** A rectangle of pixels: left/top corner and size. */
export interface PixelBox {
  /** First column. */
  left: number;
  /** First row. */
  top: number;
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
}

/**
 * Resizes an RGB image to exactly `outWidth` x `outHeight` like PIL's
 * `Image.resize((outWidth, outHeight), Image.BICUBIC)` (bit-exact on uint8 RGB): a horizontal
 * pass (only when the width changes) over the rows the vertical pass needs, then a vertical pass
 * (only when the height changes), each rounding and clipping to uint8.
 * @throws RangeError for a malformed image, a non-positive / non-integer output size, or an
 * output of more than MAX_IMAGE_PIXELS pixels (resize a window with {@link resizeBicubicWindow}).
 */
export function resizeBicubic(
  img: DecodedImage,
  outWidth: number,
  outHeight: number,
): DecodedImage {
  if (outWidth * outHeight > MAX_IMAGE_PIXELS) {
    throw new RangeError(
      `resizeBicubic: a ${outWidth}x${outHeight} output is more than the ${MAX_IMAGE_PIXELS} ` +
        `pixels allowed; resize only the window you need (resizeBicubicWindow)`,
    );
  }
  return resizeBicubicWindow(img, outWidth, outHeight, {
    left: 0,
    top: 0,
    width: outWidth,
    height: outHeight,
  });
}

/**
 * The pixels `box` of the image PIL's bicubic resize to `outWidth` x `outHeight` would give
 * (bit-exact with {@link resizeBicubic} followed by a crop), computing only those pixels: the
 * work and memory are bounded by the box and the source rows it needs, not by the full output.
 * @throws RangeError for a malformed image, a bad output size, or a box outside the output.
 */
export function resizeBicubicWindow(
  img: DecodedImage,
  outWidth: number,
  outHeight: number,
  box: PixelBox,
): DecodedImage {
  assertRgbImage(img, "resizeBicubic input");
  if (
    !Number.isSafeInteger(outWidth) || !Number.isSafeInteger(outHeight) || outWidth <= 0 ||
    outHeight <= 0
  ) {
    throw new RangeError(
      `resizeBicubic: output size must be positive integers, got ${outWidth}x${outHeight}`,
    );
  }
  const { left, top, width: bw, height: bh } = box;
  if (
    ![left, top, bw, bh].every(Number.isSafeInteger) || left < 0 || top < 0 || bw <= 0 ||
    bh <= 0 || left + bw > outWidth || top + bh > outHeight
  ) {
    throw new RangeError(
      `resizeBicubicWindow: box ${bw}x${bh} at (${left}, ${top}) is not inside the ` +
        `${outWidth}x${outHeight} output`,
    );
  }
  const { width: inW, height: inH } = img;
  if (inW === outWidth && inH === outHeight) {
    if (bw === inW && bh === inH) return { width: inW, height: inH, data: img.data.slice() };
    return cropRgb(img, box);
  }
  const vert = coefficients(inH, outHeight, top, bh);
  // Rows of the source the vertical pass reads (all of the box's rows when it does not run).
  const firstRow = outHeight === inH ? top : vert.start[0];
  const lastRow = outHeight === inH ? top + bh : vert.start[bh - 1] + vert.count[bh - 1];

  let src = img.data;
  let srcRowOffset = 0; // row index in `src` of source row `firstRow`
  let curW = inW;
  let colOffset = left; // column of `src` holding output column `left`
  if (outWidth !== inW) {
    const hor = coefficients(inW, outWidth, left, bw);
    const rows = lastRow - firstRow;
    const tmp = new Uint8Array(bw * rows * 3);
    const { weights, start, count, ksize } = hor;
    for (let y = 0; y < rows; y++) {
      const rowIn = (y + firstRow) * inW * 3;
      const rowOut = y * bw * 3;
      for (let xx = 0; xx < bw; xx++) {
        let r = HALF, g = HALF, b = HALF;
        const kOff = xx * ksize;
        let p = rowIn + start[xx] * 3;
        const n = count[xx];
        for (let x = 0; x < n; x++, p += 3) {
          const w = weights[kOff + x];
          r += src[p] * w;
          g += src[p + 1] * w;
          b += src[p + 2] * w;
        }
        const o = rowOut + xx * 3;
        tmp[o] = clip8(r);
        tmp[o + 1] = clip8(g);
        tmp[o + 2] = clip8(b);
      }
    }
    src = tmp;
    srcRowOffset = firstRow;
    curW = bw;
    colOffset = 0;
  }
  if (outHeight === inH) {
    // Only the width changed: the horizontal pass covered exactly the box's rows.
    return { width: bw, height: bh, data: src };
  }
  const out = new Uint8Array(bw * bh * 3);
  const { weights, start, count, ksize } = vert;
  const stride = curW * 3;
  const x0 = colOffset * 3;
  const rowLen = bw * 3;
  for (let yy = 0; yy < bh; yy++) {
    const kOff = yy * ksize;
    const y0 = (start[yy] - srcRowOffset) * stride + x0;
    const n = count[yy];
    const rowOut = yy * rowLen;
    for (let i = 0; i < rowLen; i++) {
      let acc = HALF;
      let p = y0 + i;
      for (let y = 0; y < n; y++, p += stride) acc += src[p] * weights[kOff + y];
      out[rowOut + i] = clip8(acc);
    }
  }
  return { width: bw, height: bh, data: out };
}

/** The pixels `box` (inside the image) of an RGB image, copied. */
function cropRgb(img: DecodedImage, box: PixelBox): DecodedImage {
  const out = new Uint8Array(box.width * box.height * 3);
  for (let y = 0; y < box.height; y++) {
    const from = ((box.top + y) * img.width + box.left) * 3;
    out.set(img.data.subarray(from, from + box.width * 3), y * box.width * 3);
  }
  return { width: box.width, height: box.height, data: out };
}

/**
 * torchvision's output size for `Resize(size)` with an int size: the short side becomes `size`,
 * the long side `int(size * long / short)` (truncated), so 224x160 -> short side 150 gives
 * 210x150.
 * @throws RangeError for non-positive or non-integer sizes.
 */
export function shortSideSize(
  width: number,
  height: number,
  size: number,
): { width: number; height: number } {
  for (const [name, v] of [["width", width], ["height", height], ["size", size]] as const) {
    if (!Number.isInteger(v) || v <= 0) {
      throw new RangeError(`shortSideSize: ${name} must be a positive integer, got ${v}`);
    }
  }
  if (width <= height) return { width: size, height: Math.trunc((size * height) / width) };
  return { width: Math.trunc((size * width) / height), height: size };
}

/**
 * `torchvision.transforms.Resize(size, interpolation=BICUBIC)` on a PIL RGB image: resizes so
 * the short side is `size` ({@link shortSideSize}) with PIL's antialiasing bicubic resampler
 * ({@link resizeBicubic}). Returns a copy when the size is unchanged. Result is uint8 RGB HWC.
 * @throws RangeError for a malformed image or a bad size.
 */
export function resizeShortSideBicubic(img: DecodedImage, size: number): DecodedImage {
  assertRgbImage(img, "resizeShortSideBicubic input");
  const out = shortSideSize(img.width, img.height, size);
  return resizeBicubic(img, out.width, out.height);
}

/** Python's round() of d / 2 for an integer d >= 0: halves go to the even neighbour. */
function halfRoundEven(d: number): number {
  if (d % 2 === 0) return d / 2;
  const k = (d - 1) / 2;
  return k % 2 === 0 ? k : k + 1;
}

/**
 * Top-left corner of torchvision's `center_crop` of a `width` x `height` image to
 * `cropWidth` x `cropHeight`: `top = int(round((height - cropHeight) / 2))` with Python's
 * half-to-even rounding (so a difference of 37 gives 18, of 3 gives 2). Negative when the crop
 * is larger than the image (torchvision pads with zeros; see {@link centerCrop}).
 */
export function centerCropOffsets(
  width: number,
  height: number,
  cropWidth: number,
  cropHeight: number,
): { top: number; left: number } {
  // torchvision first pads by floor((crop - size) / 2) on the top/left, after which the image
  // is exactly crop-sized in that dimension and the offset there is 0.
  const axis = (n: number, c: number) => (c > n ? -Math.floor((c - n) / 2) : halfRoundEven(n - c));
  return { top: axis(height, cropHeight), left: axis(width, cropWidth) };
}

/**
 * `torchvision.transforms.CenterCrop(size)` on an RGB image: a `size` x `size` (or
 * `[height, width]`) crop at {@link centerCropOffsets}; where the crop is larger than the
 * image the outside is filled with 0 as torchvision pads. Returns a new image.
 * @throws RangeError for a malformed image or a non-positive / non-integer size.
 */
export function centerCrop(
  img: DecodedImage,
  size: number | readonly [number, number],
): DecodedImage {
  assertRgbImage(img, "centerCrop input");
  const [ch, cw] = typeof size === "number" ? [size, size] : size;
  if (!Number.isInteger(ch) || !Number.isInteger(cw) || ch <= 0 || cw <= 0) {
    throw new RangeError(`centerCrop: size must be positive integers, got ${cw}x${ch}`);
  }
  const { top, left } = centerCropOffsets(img.width, img.height, cw, ch);
  const out = new Uint8Array(cw * ch * 3);
  const src = img.data;
  // Columns of the crop that fall inside the image.
  const x0 = Math.max(0, -left);
  const x1 = Math.min(cw, img.width - left);
  for (let y = 0; y < ch; y++) {
    const sy = y + top;
    if (sy < 0 || sy >= img.height || x1 <= x0) continue;
    const from = (sy * img.width + left + x0) * 3;
    out.set(src.subarray(from, from + (x1 - x0) * 3), (y * cw + x0) * 3);
  }
  return { width: cw, height: ch, data: out };
}

/**
 * `ToTensor()` then `Normalize(mean, std)`: returns Float32Array [3, H, W] (CHW) with
 * `(v / 255 - mean[c]) / std[c]`, each step rounded to float32 as torch computes it, so the
 * values equal torchvision's exactly.
 * @throws RangeError for a malformed image, or mean/std that are not 3 finite numbers (std != 0).
 */
export function toNormalizedCHW(
  img: DecodedImage,
  mean: readonly number[],
  std: readonly number[],
): Float32Array {
  assertRgbImage(img, "toNormalizedCHW input");
  if (mean.length !== 3 || std.length !== 3) {
    throw new RangeError(
      `toNormalizedCHW: mean and std need 3 values, got ${mean.length} and ${std.length}`,
    );
  }
  if (![...mean, ...std].every(Number.isFinite) || std.some((s) => s === 0)) {
    throw new RangeError(
      `toNormalizedCHW: mean/std must be finite and std non-zero: ${mean} / ${std}`,
    );
  }
  const plane = img.width * img.height;
  const out = new Float32Array(3 * plane);
  const src = img.data;
  for (let c = 0; c < 3; c++) {
    // The lookup is exact: the value depends only on the byte and the channel.
    const m = Math.fround(mean[c]);
    const s = Math.fround(std[c]);
    const lut = new Float32Array(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.fround(Math.fround(Math.fround(v / 255) - m) / s);
    const base = c * plane;
    for (let i = 0, p = c; i < plane; i++, p += 3) out[base + i] = lut[src[p]];
  }
  return out;
}

/**
 * `Resize(size, BICUBIC)` then `CenterCrop(size)`, computing only the cropped pixels
 * ({@link resizeBicubicWindow}): bit-identical to {@link resizeShortSideBicubic} followed by
 * {@link centerCrop}, with work and memory bounded by `size` whatever the aspect ratio.
 * @throws RangeError for a malformed image or a bad size.
 */
export function resizeShortSideCenterCrop(img: DecodedImage, size: number): DecodedImage {
  assertRgbImage(img, "resizeShortSideCenterCrop input");
  const out = shortSideSize(img.width, img.height, size);
  // The short side is `size` and the long side at least `size`: the crop lies inside.
  const { top, left } = centerCropOffsets(out.width, out.height, size, size);
  return resizeBicubicWindow(img, out.width, out.height, {
    left,
    top,
    width: size,
    height: size,
  });
}

/**
 * The whole CLIP image transform: {@link resizeShortSideBicubic} to `size`, {@link centerCrop}
 * to `size` x `size` (both at once, {@link resizeShortSideCenterCrop}), {@link toNormalizedCHW}.
 * Returns Float32Array [3, size, size]. Defaults: size 224, OpenAI CLIP mean/std.
 * @throws RangeError for a malformed image or bad options.
 */
export function preprocessImage(img: DecodedImage, options: PreprocessOptions = {}): Float32Array {
  const { size = 224, mean = OPENAI_CLIP_MEAN, std = OPENAI_CLIP_STD } = options;
  return toNormalizedCHW(resizeShortSideCenterCrop(img, size), mean, std);
}
