/**
 * PNG decoding via `fast-png` (CRCs checked): every colour type and bit depth, Adam7 for 8/16
 * bits, converted to 8-bit RGB as PIL's `convert("RGB")` does (see image.ts).
 */
import { decode as decodePngLib } from "fast-png";
import { checkSize, fail, unpackBits } from "./image_common.ts";
import { pngHeader } from "./image_probe.ts";
import type { DecodedImage } from "./image.ts";

const PNG_DEPTHS: Record<number, number[]> = {
  0: [1, 2, 4, 8, 16],
  2: [8, 16],
  3: [1, 2, 4, 8],
  4: [8, 16],
  6: [8, 16],
};

/** Decodes PNG bytes to 8-bit RGB. Raises DecodeFailure for corrupt or unsupported input. */
export function decodePng(bytes: Uint8Array): DecodedImage {
  // IHDR is always the first chunk: read it here to validate before fast-png allocates, and
  // refuse a file too short for the pixels it claims (fast-png would allocate them, then fail
  // with "Unsupported filter: undefined").
  pngHeader(bytes, bytes.length);
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
