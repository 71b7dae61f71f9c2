/**
 * JPEG decoding via `jpeg-js` (pure JavaScript, synchronous). Its IDCT and chroma upsampling are
 * not libjpeg-turbo's, so pixels differ slightly from PIL's (tests/decode_test.ts measures it);
 * the YCbCr -> RGB conversion is done here with libjpeg's integer tables, as PIL does.
 */
import jpeg from "jpeg-js";
import { checkSize, fail, MAX_IMAGE_PIXELS } from "./image_common.ts";
import type { DecodedImage } from "./image.ts";

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

/** Decodes JPEG bytes to 8-bit RGB. Raises DecodeFailure for corrupt or unsupported input. */
export function decodeJpeg(bytes: Uint8Array): DecodedImage {
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
