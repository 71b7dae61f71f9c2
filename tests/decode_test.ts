/**
 * Tests for the image decoders of nn/formats/ (image.ts, png.ts, jpeg.ts, tiff.ts,
 * tiff_codecs.ts): pixels against PIL (fixtures from tests/fixtures/make_image_fixture.py),
 * hand-computed conversions of PNGs written with fast-png, and clear ImageDecodeErrors for bad
 * files.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { encode as encodePng } from "fast-png";
import {
  decodeImage,
  detectImageFormat,
  ImageDecodeError,
  readImage,
} from "../nn/formats/image.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import { checksum, fromB64, pixel } from "./fixture_util.ts";

const TILE_DIR = join(SHARED_DATA, "crc-tiles");
const fixture = (name: string) =>
  JSON.parse(Deno.readTextFileSync(new URL(`./fixtures/${name}`, import.meta.url)));

// ------------------------------------------------------------------------------------------------
// real tiles vs PIL

Deno.test({
  name: "decode: all 42 CRC tiles equal PIL's RGB exactly (needs ../shared/data)",
  ignore: !hasSharedData,
  async fn() {
    const fx = fixture("image_tiles.json");
    const names = [...Deno.readDirSync(TILE_DIR)].map((e) => e.name).sort();
    assert.deepEqual(names, fx.tiles.map((t: { name: string }) => t.name), "tile list changed");
    assert.equal(names.length, 42);
    for (const t of fx.tiles) {
      const img = await readImage(join(TILE_DIR, t.name));
      assert.equal(img.width, t.width, t.name);
      assert.equal(img.height, t.height, t.name);
      assert.equal(img.data.length, t.width * t.height * 3, t.name);
      // tolerance: exact (every byte enters the checksums; samples localise a failure)
      assert.deepEqual(checksum(img.data), [t.sum, t.wsum], `${t.name}: checksum`);
      fx.positions.forEach(([y, x]: number[], i: number) => {
        assert.deepEqual(pixel(img, y, x), t.samples[i], `${t.name} at (${y}, ${x})`);
      });
    }
  },
});

// ------------------------------------------------------------------------------------------------
// synthetic files of many variants vs PIL (fixture, no shared data needed)

interface FormatCase {
  name: string;
  kind: string;
  file: string;
  pilMode: string | null;
  width?: number;
  height?: number;
  rgb?: string;
  pilError?: string;
}

/** Cases the decoder refuses on purpose, with a fragment of the expected reason. */
const REFUSED: Record<string, string> = {
  png_gray2_adam7: "interlaced (Adam7) with 2-bit samples",
  piltiff_rgb_jpeg: "JPEG-compressed TIFF is not decoded",
  jpeg_cmyk: "4 colour components",
};

/**
 * JPEG tolerances (uint8 levels): jpeg-js's IDCT differs from libjpeg-turbo's ISLOW one and it
 * upsamples chroma by repetition where libjpeg-turbo interpolates ("fancy upsampling"). Measured
 * here: 4:4:4 max 3 / mean 0.16, 4:2:0 max 7 / mean 0.65, 4:2:2 max 4 / mean 0.63, gray max 1 /
 * mean 0.06; the bounds leave a small margin.
 */
const JPEG_TOLERANCE: Record<string, { max: number; mean: number }> = {
  jpeg_444_q95: { max: 4, mean: 0.25 },
  jpeg_progressive_444: { max: 4, mean: 0.25 },
  jpeg_420_q90: { max: 9, mean: 0.8 },
  jpeg_422_q90: { max: 6, mean: 0.8 },
  jpeg_gray_q90: { max: 2, mean: 0.1 },
};

Deno.test("decode: PNG/TIFF variants equal PIL exactly; JPEG within stated tolerance", () => {
  const fx = fixture("image_formats.json");
  let exact = 0, jpegs = 0;
  for (const c of fx.cases as FormatCase[]) {
    const bytes = fromB64(c.file);
    assert.equal(detectImageFormat(bytes), c.kind, `${c.name}: format`);
    if (c.name in REFUSED) {
      assert.throws(() => decodeImage(bytes, c.name), (e: unknown) => {
        assert.ok(e instanceof ImageDecodeError, `${c.name}: ${e}`);
        assert.ok(e.reason.includes(REFUSED[c.name]), `${c.name}: reason "${e.reason}"`);
        return true;
      });
      continue;
    }
    assert.ok(c.rgb, `${c.name}: PIL could not decode it (${c.pilError}); no reference`);
    const img = decodeImage(bytes, c.name);
    const expected = fromB64(c.rgb);
    assert.equal(img.width, c.width, `${c.name}: width`);
    assert.equal(img.height, c.height, `${c.name}: height`);
    assert.equal(img.data.length, expected.length, `${c.name}: length`);
    if (c.kind === "jpeg") {
      const tol = JPEG_TOLERANCE[c.name];
      assert.ok(tol, `${c.name}: no tolerance stated`);
      let max = 0, sum = 0;
      for (let i = 0; i < expected.length; i++) {
        const d = Math.abs(expected[i] - img.data[i]);
        max = Math.max(max, d);
        sum += d;
      }
      assert.ok(max <= tol.max, `${c.name}: max |diff| ${max} > ${tol.max}`);
      assert.ok(
        sum / expected.length <= tol.mean,
        `${c.name}: mean |diff| ${sum / expected.length}`,
      );
      jpegs++;
    } else {
      // tolerance: exact
      const bad = expected.findIndex((v, i) => v !== img.data[i]);
      assert.equal(bad, -1, `${c.name} (PIL mode ${c.pilMode}): first mismatch at byte ${bad}`);
      exact++;
    }
  }
  assert.ok(exact >= 60, `only ${exact} exact cases ran`);
  assert.equal(jpegs, 5);
});

// ------------------------------------------------------------------------------------------------
// PNGs written with fast-png, checked against hand-computed RGB

function png(
  data: Uint8Array | Uint16Array,
  width: number,
  height: number,
  channels: number,
  depth: 1 | 8 | 16,
) {
  return encodePng({ width, height, data, channels, depth });
}

Deno.test("decode: 16-bit RGB/RGBA PNG keeps the high byte (PIL: v >> 8)", () => {
  const rgb = new Uint16Array([0x1234, 0xffff, 0x00ff, 0x8000, 0x7fff, 0x0100]);
  const img = decodeImage(png(rgb, 2, 1, 3, 16), "rgb16.png");
  assert.deepEqual([...img.data], [0x12, 0xff, 0x00, 0x80, 0x7f, 0x01]); // exact
  const rgba = new Uint16Array([0xabcd, 0x0102, 0xfeff, 0x0000]);
  const img2 = decodeImage(png(rgba, 1, 1, 4, 16), "rgba16.png");
  assert.deepEqual([...img2.data], [0xab, 0x01, 0xfe]); // exact, alpha dropped
});

Deno.test("decode: 16-bit gray PNG is clipped to 255 as PIL's mode-I convert does", () => {
  const g = new Uint16Array([0, 200, 255, 256, 65535]);
  const img = decodeImage(png(g, 5, 1, 1, 16), "gray16.png");
  assert.deepEqual([...img.data], [
    0,
    0,
    0,
    200,
    200,
    200,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    255,
  ]);
  // 16-bit gray+alpha takes the high byte instead (PIL unpacks it into RGBA).
  const ga = new Uint16Array([0x4321, 0xffff]);
  assert.deepEqual([...decodeImage(png(ga, 1, 1, 2, 16), "ga16.png").data], [0x43, 0x43, 0x43]);
});

Deno.test("decode: 8-bit gray, gray+alpha and RGBA PNG replicate gray and drop alpha", () => {
  const gray = new Uint8Array([0, 17, 255]);
  assert.deepEqual([...decodeImage(png(gray, 3, 1, 1, 8), "g.png").data], [
    0,
    0,
    0,
    17,
    17,
    17,
    255,
    255,
    255,
  ]);
  const ga = new Uint8Array([90, 0, 91, 255]);
  assert.deepEqual([...decodeImage(png(ga, 2, 1, 2, 8), "ga.png").data], [90, 90, 90, 91, 91, 91]);
  const rgba = new Uint8Array([1, 2, 3, 0, 250, 251, 252, 128]);
  assert.deepEqual([...decodeImage(png(rgba, 2, 1, 4, 8), "rgba.png").data], [
    1,
    2,
    3,
    250,
    251,
    252,
  ]);
});

Deno.test("decode: 1-bit gray PNG maps 0/1 to 0/255", () => {
  // 10 pixels -> 2 packed bytes per row: 1011001110 + padding
  const packed = new Uint8Array([0b10110011, 0b10000000]);
  const img = decodeImage(png(packed, 10, 1, 1, 1), "bits.png");
  const expected = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0].flatMap((b) => [b * 255, b * 255, b * 255]);
  assert.deepEqual([...img.data], expected);
});

Deno.test("decode: palette PNG looks indices up in the palette", () => {
  const palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [7, 8, 9]];
  const data = new Uint8Array([3, 0, 2, 1, 1, 3]);
  const bytes = encodePng({ width: 3, height: 2, data, channels: 1, depth: 8, palette });
  const img = decodeImage(bytes, "pal.png");
  assert.deepEqual([...img.data], [...data].flatMap((i) => palette[i]));
  assert.deepEqual([img.width, img.height], [3, 2]);
});

// ------------------------------------------------------------------------------------------------
// bad input

function expectDecodeError(fn: () => unknown, path: string, reasonPart?: RegExp): ImageDecodeError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(
    caught instanceof ImageDecodeError,
    `${path}: expected ImageDecodeError, got ${caught}`,
  );
  assert.equal(caught.path, path);
  assert.ok(caught.message.includes(path), `message names the path: ${caught.message}`);
  assert.ok(caught.reason.length > 0);
  if (reasonPart) assert.match(caught.reason, reasonPart);
  return caught;
}

async function expectReadError(path: string, reasonPart?: RegExp): Promise<ImageDecodeError> {
  let caught: unknown;
  try {
    await readImage(path);
  } catch (e) {
    caught = e;
  }
  return expectDecodeError(
    () => {
      if (caught) throw caught;
    },
    path,
    reasonPart,
  );
}

/** A PNG/TIFF/JPEG from the formats fixture by name. */
function fixtureFile(name: string): Uint8Array {
  const c = (fixture("image_formats.json").cases as FormatCase[]).find((x) => x.name === name);
  assert.ok(c, name);
  return fromB64(c.file);
}

/** A TIFF with one LZW strip of the given bytes (the case that makes utif loop forever). */
function lzwTiff(strip: Uint8Array, w: number, h: number): Uint8Array {
  const entries: [number, number, number][] = [
    [256, 3, w],
    [257, 3, h],
    [258, 3, 8],
    [259, 3, 5],
    [262, 3, 1],
    [273, 4, 0],
    [277, 3, 1],
    [278, 3, h],
    [279, 4, strip.length],
  ];
  const ifd = 8, dataAt = ifd + 2 + entries.length * 12 + 4;
  const out = new Uint8Array(dataAt + strip.length);
  const dv = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]);
  dv.setUint32(4, ifd, true);
  dv.setUint16(ifd, entries.length, true);
  entries.forEach(([tag, type, v], i) => {
    const o = ifd + 2 + 12 * i;
    dv.setUint16(o, tag, true);
    dv.setUint16(o + 2, type, true);
    dv.setUint32(o + 4, 1, true);
    const value = tag === 273 ? dataAt : v;
    if (type === 3) dv.setUint16(o + 8, value, true);
    else dv.setUint32(o + 8, value, true);
  });
  out.set(strip, dataAt);
  return out;
}

Deno.test("decode: empty, truncated, corrupt and unsupported files give ImageDecodeError naming the path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "decode_test_" });
  try {
    const write = async (name: string, bytes: Uint8Array) => {
      const p = join(dir, name);
      await Deno.writeFile(p, bytes);
      return p;
    };
    const goodPng = png(new Uint8Array(64 * 48 * 3).map((_, i) => (i * 7) & 255), 64, 48, 3, 8);
    const packbitsTiff = fixtureFile("tiff_rgb8_c32773");
    const lzwTiffOk = fixtureFile("tiff_rgb8_c5");
    const jpg = fixtureFile("jpeg_444_q95");

    await expectReadError(await write("empty.png", new Uint8Array(0)), /empty/);
    await expectReadError(
      await write("missing-part.png", goodPng.subarray(0, goodPng.length >> 1)),
    );
    await expectReadError(await write("header-only.png", goodPng.subarray(0, 20)), /truncated/);
    const flipped = goodPng.slice();
    flipped[60] ^= 0xff; // inside IDAT: the CRC no longer matches
    await expectReadError(await write("flipped.png", flipped));
    await expectReadError(await write("cut.tif", packbitsTiff.subarray(0, 100)), /truncated/);
    await expectReadError(await write("cut-lzw.tif", lzwTiffOk.subarray(0, 60)), /truncated/);
    await expectReadError(
      await write("header.tif", new Uint8Array([0x49, 0x49, 42, 0, 0, 0])),
      /truncated/,
    );
    await expectReadError(
      await write("bigtiff.tif", new Uint8Array([0x49, 0x49, 43, 0, 8, 0, 0, 0, 0, 0, 0, 0])),
      /BigTIFF/,
    );
    // Garbage LZW codes: must end with an error, not loop.
    const garbage = new Uint8Array(40).map((_, i) => (i * 97 + 13) & 255);
    await expectReadError(await write("garbage-lzw.tif", lzwTiff(garbage, 8, 8)), /LZW|decodes to/);
    await expectReadError(await write("cut.jpg", jpg.subarray(0, jpg.length - 200)));
    await expectReadError(await write("header-only.jpg", jpg.subarray(0, 30)), /truncated|corrupt/);
    const badJpg = jpg.slice();
    badJpg.fill(0xff, 400, 440); // markers inside the entropy-coded data
    await expectReadError(await write("bad.jpg", badJpg));
    // SOF0 precision byte set to 12: refused rather than mis-decoded.
    const jpg12 = jpg.slice();
    const sof = jpg12.findIndex((v, i) => v === 0xff && jpg12[i + 1] === 0xc0);
    jpg12[sof + 4] = 12;
    await expectReadError(await write("12bit.jpg", jpg12), /12-bit samples/);
    // A header announcing 100000 x 100000 pixels is refused before allocating.
    const huge = goodPng.slice();
    new DataView(huge.buffer).setUint32(16, 100000);
    new DataView(huge.buffer).setUint32(20, 100000);
    await expectReadError(await write("huge.png", huge), /more than the \d+ pixels/);
    await expectReadError(
      await write("image.gif", new TextEncoder().encode("GIF89a\x01\x00\x01\x00")),
      /unsupported or unrecognised format/,
    );
    await expectReadError(
      await write("image.bmp", new Uint8Array([0x42, 0x4d, 0, 0, 0, 0])),
      /unsupported or unrecognised format/,
    );
    await expectReadError(
      await write("notes.txt", new TextEncoder().encode("not an image")),
      /unsupported/,
    );
    await expectReadError(join(dir, "does-not-exist.png"), /cannot read the file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("decode: every truncation of a small PNG, TIFF and JPEG throws ImageDecodeError", () => {
  // Exhaustive over cut points; a decoder that returned a partial image would fail here.
  for (
    const name of [
      "png_rgb8",
      "tiff_rgb8_c32773",
      "tiff_rgb8_c8",
      "tiff_rgb8_lzw_pred",
      "jpeg_444_q95",
    ]
  ) {
    const bytes = fixtureFile(name);
    // PNG: anything short of IEND. TIFF: the IFD sits after the pixel data in these files.
    // JPEG: up to the end of the entropy-coded data (the last 2 bytes are the EOI marker).
    const last = name.startsWith("jpeg") ? bytes.length - 2 : bytes.length - 1;
    for (let cut = 1; cut < last; cut++) {
      expectDecodeError(
        () => decodeImage(bytes.subarray(0, cut), `${name}@${cut}`),
        `${name}@${cut}`,
      );
    }
  }
});

Deno.test({
  name: "decode: a truncated real tile throws (needs ../shared/data)",
  ignore: !hasSharedData,
  fn() {
    for (const name of ["ADI-TCGA-EENSRDNW.png", "ADI-AAQEFMRI.tif"]) {
      const bytes = Deno.readFileSync(join(TILE_DIR, name));
      for (const frac of [0.25, 0.5, 0.9, 0.99]) {
        const cut = Math.floor(bytes.length * frac);
        expectDecodeError(
          () => decodeImage(bytes.subarray(0, cut), `${name}[:${cut}]`),
          `${name}[:${cut}]`,
        );
      }
    }
  },
});
