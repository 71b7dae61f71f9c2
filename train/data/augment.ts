/**
 * Training augmentation on 8-bit RGB images (applied after the resize and centre crop, before
 * normalisation): random horizontal / vertical flips, 90-degree rotations, and colour jitter of
 * brightness, contrast, saturation and hue with torchvision's `ColorJitter` semantics (factors
 * drawn uniformly, the four adjustments applied in a random order, each rounding back to uint8
 * as torchvision does on PIL images). All randomness comes from one seed per sample, so the same
 * (seed, epoch, index) always gives the same augmentation, whichever worker runs it.
 */
import type { DecodedImage } from "../../nn/formats/image.ts";
import { Rng } from "../../nn/rng.ts";

/** What augmentation does; colour strengths follow torchvision's ColorJitter arguments. */
export interface AugmentOptions {
  /** Random horizontal and vertical flips, each with probability 1/2 (default true). */
  flips?: boolean;
  /** Random rotation by 0, 90, 180 or 270 degrees (default true). */
  rotations?: boolean;
  /** Brightness factor drawn from [max(0, 1 - b), 1 + b] (default 0.2; 0 = off). */
  brightness?: number;
  /** Contrast factor drawn from [max(0, 1 - c), 1 + c] (default 0.2; 0 = off). */
  contrast?: number;
  /** Saturation factor drawn from [max(0, 1 - s), 1 + s] (default 0.2; 0 = off). */
  saturation?: number;
  /** Hue shift drawn from [-h, h] of a full turn, 0 <= h <= 0.5 (default 0.05; 0 = off). */
  hue?: number;
}

/** The defaults used when augmentation is simply switched on. */
export const DEFAULT_AUGMENT: Required<AugmentOptions> = {
  flips: true,
  rotations: true,
  brightness: 0.2,
  contrast: 0.2,
  saturation: 0.2,
  hue: 0.05,
};

/** The random choices for one sample. */
export interface AugmentParams {
  hflip: boolean;
  vflip: boolean;
  /** Quarter turns counter-clockwise (0-3). */
  rot90: number;
  /** Colour operations in application order, each with its factor (hue: shift in turns). */
  colour: { op: "brightness" | "contrast" | "saturation" | "hue"; factor: number }[];
}

/**
 * Fills in defaults and checks ranges.
 * @throws RangeError for negative strengths or a hue above 0.5.
 */
export function resolveAugment(opts: AugmentOptions | boolean): Required<AugmentOptions> | null {
  if (opts === false) return null;
  const o = { ...DEFAULT_AUGMENT, ...(opts === true ? {} : opts) };
  for (const k of ["brightness", "contrast", "saturation", "hue"] as const) {
    if (!(o[k] >= 0)) throw new RangeError(`augment ${k} must be >= 0, got ${o[k]}`);
  }
  if (o.hue > 0.5) throw new RangeError(`augment hue must be <= 0.5, got ${o.hue}`);
  return o;
}

/** Draws one sample's augmentation from a 32-bit `seed` (see split.ts `seedOf`). */
export function augmentParams(opts: Required<AugmentOptions>, seed: number): AugmentParams {
  const rng = Rng.fromState(seed);
  // Always draw every value so one option does not shift the others' randomness.
  const hflip = rng.next() < 0.5;
  const vflip = rng.next() < 0.5;
  const rot90 = rng.int(4);
  const factor = (s: number) => {
    const u = rng.next();
    return Math.max(0, 1 - s) + u * (1 + s - Math.max(0, 1 - s));
  };
  const b = factor(opts.brightness), c = factor(opts.contrast), s = factor(opts.saturation);
  const h = -opts.hue + rng.next() * 2 * opts.hue;
  const ops = ["brightness", "contrast", "saturation", "hue"] as const;
  const order = [0, 1, 2, 3];
  for (let i = 3; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const colour: AugmentParams["colour"] = [];
  for (const k of order) {
    const op = ops[k];
    if (op === "brightness" && opts.brightness > 0) colour.push({ op, factor: b });
    if (op === "contrast" && opts.contrast > 0) colour.push({ op, factor: c });
    if (op === "saturation" && opts.saturation > 0) colour.push({ op, factor: s });
    if (op === "hue" && opts.hue > 0) colour.push({ op, factor: h });
  }
  return {
    hflip: opts.flips && hflip,
    vflip: opts.flips && vflip,
    rot90: opts.rotations ? rot90 : 0,
    colour,
  };
}

/** Applies `p` to `img` and returns a new image (rotations by 90 / 270 swap width and height). */
export function applyAugment(img: DecodedImage, p: AugmentParams): DecodedImage {
  let out = geometric(img, p.hflip, p.vflip, p.rot90);
  for (const { op, factor } of p.colour) {
    if (op === "brightness") out = brightness(out, factor);
    else if (op === "contrast") out = contrast(out, factor);
    else if (op === "saturation") out = saturation(out, factor);
    else out = hue(out, factor);
  }
  return out;
}

/**
 * Flips then rotates counter-clockwise by `rot` quarter turns, in one pass: output pixel (x, y)
 * reads the source pixel the inverse transform maps it to.
 */
export function geometric(
  img: DecodedImage,
  hflip: boolean,
  vflip: boolean,
  rot: number,
): DecodedImage {
  const { width: w, height: h, data } = img;
  const r = ((rot % 4) + 4) % 4;
  if (!hflip && !vflip && r === 0) return img;
  const ow = r % 2 ? h : w, oh = r % 2 ? w : h;
  // The source pixel is affine in (x, y): sx = ax + bx * x + cx * y, sy = ay + by * x + cy * y.
  // First undo the rotation (coordinates in the flipped image) ...
  let [ax, bx, cx, ay, by, cy] = r === 0
    ? [0, 1, 0, 0, 0, 1]
    : r === 1
    ? [w - 1, 0, -1, 0, 1, 0]
    : r === 2
    ? [w - 1, -1, 0, h - 1, 0, -1]
    : [0, 0, 1, h - 1, -1, 0];
  // ... then the flips.
  if (hflip) [ax, bx, cx] = [w - 1 - ax, -bx, -cx];
  if (vflip) [ay, by, cy] = [h - 1 - ay, -by, -cy];
  const out = new Uint8Array(data.length);
  for (let y = 0; y < oh; y++) {
    let sx = ax + cx * y, sy = ay + cy * y;
    for (let x = 0, o = y * ow * 3; x < ow; x++, o += 3, sx += bx, sy += by) {
      const s = (sy * w + sx) * 3;
      out[o] = data[s];
      out[o + 1] = data[s + 1];
      out[o + 2] = data[s + 2];
    }
  }
  return { width: ow, height: oh, data: out };
}

function clampRound(v: number): number {
  return v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
}

/** PIL's "L" conversion: (R * 299 + G * 587 + B * 114) / 1000, rounded. */
function luma(r: number, g: number, b: number): number {
  return Math.round((r * 299 + g * 587 + b * 114) / 1000);
}

/** `v * f`, clamped (PIL ImageEnhance.Brightness: blend with black). */
function brightness(img: DecodedImage, f: number): DecodedImage {
  const out = new Uint8Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = clampRound(img.data[i] * f);
  return { ...img, data: out };
}

/** Blend with the mean grey level (PIL ImageEnhance.Contrast). */
function contrast(img: DecodedImage, f: number): DecodedImage {
  const d = img.data;
  let sum = 0;
  for (let i = 0; i < d.length; i += 3) sum += luma(d[i], d[i + 1], d[i + 2]);
  const mean = Math.round(sum / (d.length / 3));
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i++) out[i] = clampRound(mean + f * (d[i] - mean));
  return { ...img, data: out };
}

/** Blend with each pixel's grey level (PIL ImageEnhance.Color). */
function saturation(img: DecodedImage, f: number): DecodedImage {
  const d = img.data;
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i += 3) {
    const l = luma(d[i], d[i + 1], d[i + 2]);
    out[i] = clampRound(l + f * (d[i] - l));
    out[i + 1] = clampRound(l + f * (d[i + 1] - l));
    out[i + 2] = clampRound(l + f * (d[i + 2] - l));
  }
  return { ...img, data: out };
}

/** Rotates the hue by `shift` turns in HSV space (value and saturation kept). */
function hue(img: DecodedImage, shift: number): DecodedImage {
  const d = img.data;
  const out = new Uint8Array(d.length);
  for (let i = 0; i < d.length; i += 3) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    const max = Math.max(r, g, b), min = Math.min(r, g, b);
    const c = max - min;
    if (c === 0) {
      out[i] = r;
      out[i + 1] = g;
      out[i + 2] = b;
      continue;
    }
    let h: number;
    if (max === r) h = ((g - b) / c) / 6;
    else if (max === g) h = ((b - r) / c + 2) / 6;
    else h = ((r - g) / c + 4) / 6;
    h = (h + shift) % 1;
    if (h < 0) h += 1;
    // HSV -> RGB with the same max (value) and chroma.
    const hp = h * 6;
    const xx = c * (1 - Math.abs((hp % 2) - 1));
    let rr = 0, gg = 0, bb = 0;
    if (hp < 1) [rr, gg, bb] = [c, xx, 0];
    else if (hp < 2) [rr, gg, bb] = [xx, c, 0];
    else if (hp < 3) [rr, gg, bb] = [0, c, xx];
    else if (hp < 4) [rr, gg, bb] = [0, xx, c];
    else if (hp < 5) [rr, gg, bb] = [xx, 0, c];
    else [rr, gg, bb] = [c, 0, xx];
    out[i] = clampRound(rr + min);
    out[i + 1] = clampRound(gg + min);
    out[i + 2] = clampRound(bb + min);
  }
  return { ...img, data: out };
}
