/**
 * Tests for clip/preprocess.ts against PIL / torchvision / torch (fixture from
 * tests/fixtures/make_image_fixture.py) and against hand-computed values.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import type { DecodedImage } from "../nn/formats/image.ts";
import {
  centerCrop,
  centerCropOffsets,
  IMAGENET_MEAN,
  IMAGENET_STD,
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  preprocessImage,
  resizeBicubic,
  resizeShortSideBicubic,
  shortSideSize,
  toNormalizedCHW,
} from "../clip/preprocess.ts";
import { readImage } from "../nn/formats/image.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import { checksum, fromB64, pixel } from "./fixture_util.ts";

const TILE_DIR = join(SHARED_DATA, "crc-tiles");
const fx = JSON.parse(
  Deno.readTextFileSync(new URL("./fixtures/image_resize.json", import.meta.url)),
);

/** Crop (left, top, right, bottom) of an RGB image, as numpy slicing does. */
function box(img: DecodedImage, [l, t, r, b]: number[]): DecodedImage {
  const w = r - l, h = b - t;
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    out.set(
      img.data.subarray(((t + y) * img.width + l) * 3, ((t + y) * img.width + r) * 3),
      y * w * 3,
    );
  }
  return { width: w, height: h, data: out };
}

/** Images side by side (same height), as numpy.concatenate(axis=1). */
function hstack(imgs: DecodedImage[]): DecodedImage {
  const h = imgs[0].height;
  const w = imgs.reduce((s, i) => s + i.width, 0);
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    let x0 = 0;
    for (const img of imgs) {
      out.set(img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3), (y * w + x0) * 3);
      x0 += img.width;
    }
  }
  return { width: w, height: h, data: out };
}

/** Max and mean |diff| over sampled positions; the fixture's samples are [r, g, b] lists. */
function sampledDiff(img: DecodedImage, positions: number[][], samples: number[][]) {
  let max = 0, sum = 0, n = 0;
  positions.forEach(([y, x], i) => {
    pixel(img, y, x).forEach((v, c) => {
      const d = Math.abs(v - samples[i][c]);
      max = Math.max(max, d);
      sum += d;
      n++;
    });
  });
  return { max, mean: sum / n };
}

// ------------------------------------------------------------------------------------------------
// real tiles: Resize -> CenterCrop -> ToTensor/Normalize vs PIL + torch

interface ResizeCase {
  tiles: string[];
  box: number[] | null;
  size: number;
  srcWidth: number;
  srcHeight: number;
  resizedWidth: number;
  resizedHeight: number;
  resizedSum: number;
  resizedWsum: number;
  resizedPositions: number[][];
  resizedSamples: number[][];
  cropTop: number;
  cropLeft: number;
  cropSum: number;
  cropWsum: number;
  cropPositions: number[][];
  cropSamples: number[][];
  normalize: null | {
    which: string;
    mean: number[];
    std: number[];
    indices: number[][];
    values: number[];
    sum: number;
  };
}

async function caseSource(c: ResizeCase): Promise<DecodedImage> {
  const imgs = await Promise.all(c.tiles.map((t) => readImage(join(TILE_DIR, t))));
  const joined = imgs.length === 1 ? imgs[0] : hstack(imgs);
  return c.box ? box(joined, c.box) : joined;
}

Deno.test({
  name: "preprocess: bicubic short-side resize of real tiles matches PIL (needs ../shared/data)",
  ignore: !hasSharedData,
  async fn() {
    let exactCases = 0;
    for (const c of fx.cases as ResizeCase[]) {
      const label = `${c.tiles.join("+")} ${c.box ?? ""} -> ${c.size}`;
      const src = await caseSource(c);
      assert.deepEqual([src.width, src.height], [c.srcWidth, c.srcHeight], label);
      const r = resizeShortSideBicubic(src, c.size);
      assert.deepEqual([r.width, r.height], [c.resizedWidth, c.resizedHeight], `${label}: size`);
      // tolerance: within 1 level on every sample and mean |diff| < 0.05 (the brief's bound) ...
      const d = sampledDiff(r, c.resizedPositions, c.resizedSamples);
      assert.ok(d.max <= 1, `${label}: max |diff| ${d.max}`);
      assert.ok(d.mean < 0.05, `${label}: mean |diff| ${d.mean}`);
      // ... and in fact bit-exact: the whole-image checksums agree.
      assert.deepEqual(checksum(r.data), [c.resizedSum, c.resizedWsum], `${label}: checksum`);
      exactCases++;
    }
    assert.equal(exactCases, fx.cases.length);
  },
});

Deno.test({
  name: "preprocess: centre crop offsets and pixels match torchvision (needs ../shared/data)",
  ignore: !hasSharedData,
  async fn() {
    for (const c of fx.cases as ResizeCase[]) {
      const label = `${c.tiles.join("+")} ${c.box ?? ""} -> ${c.size}`;
      const r = resizeShortSideBicubic(await caseSource(c), c.size);
      const off = centerCropOffsets(r.width, r.height, c.size, c.size);
      assert.deepEqual([off.top, off.left], [c.cropTop, c.cropLeft], `${label}: offsets`);
      const crop = centerCrop(r, c.size);
      assert.deepEqual([crop.width, crop.height], [c.size, c.size]);
      // tolerance: exact
      assert.deepEqual(checksum(crop.data), [c.cropSum, c.cropWsum], `${label}: checksum`);
      c.cropPositions.forEach(([y, x], i) => {
        assert.deepEqual(pixel(crop, y, x), c.cropSamples[i], `${label}: crop at (${y}, ${x})`);
      });
    }
  },
});

Deno.test({
  name: "preprocess: ToTensor + Normalize equals torch within 1e-6 (needs ../shared/data)",
  ignore: !hasSharedData,
  async fn() {
    let checked = 0;
    for (const c of fx.cases as ResizeCase[]) {
      const n = c.normalize;
      if (!n) continue;
      const [mean, std] = n.which === "openai"
        ? [OPENAI_CLIP_MEAN, OPENAI_CLIP_STD]
        : [IMAGENET_MEAN, IMAGENET_STD];
      assert.deepEqual([...mean], n.mean, "exported mean matches the fixture's");
      assert.deepEqual([...std], n.std, "exported std matches the fixture's");
      const t = preprocessImage(await caseSource(c), { size: c.size, mean, std });
      assert.equal(t.length, 3 * c.size * c.size);
      n.indices.forEach(([ch, y, x], i) => {
        const v = t[(ch * c.size + y) * c.size + x];
        // tolerance: 1e-6 absolute (the float32 ops are the same as torch's, so it is exact)
        assert.ok(
          Math.abs(v - n.values[i]) <= 1e-6,
          `${c.tiles} [${ch},${y},${x}]: ${v} vs ${n.values[i]}`,
        );
      });
      let sum = 0;
      for (const v of t) sum += v;
      // tolerance: 1e-3 absolute on a sum of ~1e5 float32 terms (summation order differs)
      assert.ok(Math.abs(sum - n.sum) < 1e-3, `${c.tiles}: sum ${sum} vs ${n.sum}`);
      checked++;
    }
    assert.equal(checked, 6);
  },
});

// ------------------------------------------------------------------------------------------------
// synthetic images stored whole in the fixture (no shared data needed)

interface SyntheticCase {
  name: string;
  width: number;
  height: number;
  rgb: string;
  ops: {
    kind: "short" | "exact";
    size?: number;
    width: number;
    height: number;
    rgb: string;
    cropTop?: number;
    cropLeft?: number;
    crop?: string;
  }[];
}

Deno.test("preprocess: resize of synthetic images (down, up, mixed, overshooting edges) is bit-exact with PIL", () => {
  let n = 0;
  for (const s of fx.synthetic as SyntheticCase[]) {
    const src = { width: s.width, height: s.height, data: fromB64(s.rgb) };
    for (const op of s.ops) {
      const label = `${s.name} ${s.width}x${s.height} -> ${op.kind} ${
        op.size ?? ""
      } ${op.width}x${op.height}`;
      const r = op.kind === "short"
        ? resizeShortSideBicubic(src, op.size!)
        : resizeBicubic(src, op.width, op.height);
      assert.deepEqual([r.width, r.height], [op.width, op.height], label);
      // tolerance: exact
      const expected = fromB64(op.rgb);
      const bad = expected.findIndex((v, i) => v !== r.data[i]);
      assert.equal(
        bad,
        -1,
        `${label}: first mismatch at byte ${bad} (${r.data[bad]} vs ${expected[bad]})`,
      );
      if (op.kind === "short") {
        const crop = centerCrop(r, op.size!);
        const off = centerCropOffsets(r.width, r.height, op.size!, op.size!);
        assert.deepEqual([off.top, off.left], [op.cropTop, op.cropLeft], `${label}: crop offsets`);
        assert.deepEqual([...crop.data], [...fromB64(op.crop!)], `${label}: crop`);
      }
      n++;
    }
  }
  assert.equal(n, 14);
});

// ------------------------------------------------------------------------------------------------
// hand-computed rules

Deno.test("preprocess: short-side output size truncates like torchvision's int()", () => {
  assert.deepEqual(shortSideSize(224, 160, 150), { width: 210, height: 150 });
  assert.deepEqual(shortSideSize(100, 80, 150), { width: 187, height: 150 }); // 187.5 -> 187
  assert.deepEqual(shortSideSize(137, 219, 96), { width: 96, height: 153 }); // 153.46 -> 153
  assert.deepEqual(shortSideSize(224, 224, 96), { width: 96, height: 96 });
  assert.deepEqual(shortSideSize(2048, 1536, 224), { width: 298, height: 224 }); // BACH size
  assert.throws(() => shortSideSize(10, 10, 0), RangeError);
  assert.throws(() => shortSideSize(10.5, 10, 5), RangeError);
});

Deno.test("preprocess: centre crop offsets use Python's half-to-even round", () => {
  const left = (w: number, c: number) => centerCropOffsets(w, c, c, c).left;
  assert.equal(left(10, 10), 0);
  assert.equal(left(11, 10), 0); // 0.5 -> 0
  assert.equal(left(13, 10), 2); // 1.5 -> 2
  assert.equal(left(15, 10), 2); // 2.5 -> 2
  assert.equal(left(17, 10), 4); // 3.5 -> 4
  assert.equal(left(187, 150), 18); // 18.5 -> 18
  assert.equal(left(20, 10), 5);
  assert.deepEqual(centerCropOffsets(298, 224, 224, 224), { top: 0, left: 37 });
});

Deno.test("preprocess: centre crop larger than the image pads with zeros as torchvision does", () => {
  // 3x2 image, values 1..18; crop to 5x5: pad left (5-3)//2 = 1, top (5-2)//2 = 1.
  const img = { width: 3, height: 2, data: Uint8Array.from({ length: 18 }, (_, i) => i + 1) };
  const c = centerCrop(img, 5);
  const at = (y: number, x: number) => pixel(c, y, x);
  assert.deepEqual(at(0, 0), [0, 0, 0]);
  assert.deepEqual(at(1, 1), [1, 2, 3]);
  assert.deepEqual(at(1, 3), [7, 8, 9]);
  assert.deepEqual(at(2, 2), [13, 14, 15]);
  assert.deepEqual(at(3, 2), [0, 0, 0]);
  assert.deepEqual(at(1, 4), [0, 0, 0]);
  let nonzero = 0;
  for (const v of c.data) if (v) nonzero++;
  assert.equal(nonzero, 18);
  // Wider than the crop but too short: pad rows, centre-crop columns.
  const wide = { width: 7, height: 1, data: Uint8Array.from({ length: 21 }, (_, i) => i + 1) };
  const w = centerCrop(wide, [3, 4]); // [height, width]
  assert.deepEqual([w.width, w.height], [4, 3]);
  assert.deepEqual(pixel(w, 1, 0), pixel(wide, 0, 2)); // left = round(3 / 2) = 2
  assert.deepEqual(pixel(w, 0, 0), [0, 0, 0]);
});

Deno.test("preprocess: resizing a constant image keeps it constant; same size is a copy", () => {
  for (const v of [0, 1, 128, 254, 255]) {
    const img = { width: 37, height: 23, data: new Uint8Array(37 * 23 * 3).fill(v) };
    for (const [w, h] of [[10, 7], [80, 50], [37, 5], [3, 23], [1, 1]]) {
      const r = resizeBicubic(img, w, h);
      assert.ok(r.data.every((x) => x === v), `${v} -> ${w}x${h}`); // tolerance: exact
    }
  }
  const img = { width: 4, height: 4, data: Uint8Array.from({ length: 48 }, (_, i) => i) };
  const same = resizeShortSideBicubic(img, 4);
  assert.deepEqual([...same.data], [...img.data]);
  assert.notEqual(same.data, img.data);
});

Deno.test("preprocess: toNormalizedCHW computes (v/255 - mean)/std in CHW order", () => {
  // 2x1 image: pixel 0 = (255, 0, 128), pixel 1 = (51, 102, 204)
  const img = { width: 2, height: 1, data: new Uint8Array([255, 0, 128, 51, 102, 204]) };
  const t = toNormalizedCHW(img, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]);
  const expected = [
    [255, 51],
    [0, 102],
    [128, 204],
  ].flatMap((row) => row.map((v) => (v / 255 - 0.5) / 0.25));
  assert.equal(t.length, 6);
  // tolerance: 1e-6 absolute (float32 vs float64 hand values)
  t.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) <= 1e-6, `${i}: ${v} vs ${expected[i]}`));
  assert.equal(t[0], 2); // (1 - 0.5) / 0.25 exactly
  assert.equal(t[2], -2);
  const openai = toNormalizedCHW(img, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD);
  assert.ok(Math.abs(openai[0] - (1 - 0.48145466) / 0.26862954) <= 1e-6);
  assert.throws(() => toNormalizedCHW(img, [0.5, 0.5], [1, 1, 1]), RangeError);
  assert.throws(() => toNormalizedCHW(img, [0.5, 0.5, 0.5], [1, 0, 1]), RangeError);
});

Deno.test("preprocess: preprocessImage = resize -> crop -> normalise, default size 224", () => {
  const data = Uint8Array.from({ length: 300 * 250 * 3 }, (_, i) => (i * 31 + (i >> 7)) & 255);
  const img = { width: 300, height: 250, data };
  const t = preprocessImage(img);
  assert.equal(t.length, 3 * 224 * 224);
  const manual = toNormalizedCHW(
    centerCrop(resizeShortSideBicubic(img, 224), 224),
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
  );
  assert.deepEqual(t, manual); // tolerance: exact
  const small = preprocessImage(img, { size: 32, mean: IMAGENET_MEAN, std: IMAGENET_STD });
  assert.equal(small.length, 3 * 32 * 32);
});

Deno.test("preprocess: malformed images and sizes throw RangeError", () => {
  const bad = { width: 4, height: 4, data: new Uint8Array(10) };
  assert.throws(() => resizeShortSideBicubic(bad, 2), /expected 4x4x3/);
  assert.throws(() => centerCrop(bad, 2), RangeError);
  const ok = { width: 4, height: 4, data: new Uint8Array(48) };
  assert.throws(() => resizeBicubic(ok, 0, 3), RangeError);
  assert.throws(() => centerCrop(ok, -1), RangeError);
  assert.throws(() => preprocessImage(ok, { size: 2.5 }), RangeError);
});
