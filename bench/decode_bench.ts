/**
 * `deno bench -A bench/decode_bench.ts`: CPU image decoding and CLIP preprocessing throughput on
 * the 224x224 CRC tiles in ../shared/data/crc-tiles (32 PNG, 10 PackBits TIFF), PNG and TIFF
 * separately, plus the resize of a BACH-sized (2048x1536) image. One bench iteration processes
 * every tile of its group; images/s lines are printed when the module loads (tile benches are
 * skipped when the shared data is absent).
 */
import { join } from "node:path";
import { preprocessImage } from "../clip/preprocess.ts";
import { decodeImage } from "../nn/formats/image.ts";
import { hasSharedData, SHARED_DATA } from "../tests/data_util.ts";

const TILE_DIR = join(SHARED_DATA, "crc-tiles");

interface TileFile {
  path: string;
  bytes: Uint8Array;
}

function loadTiles(ext: string): TileFile[] {
  if (!hasSharedData) return [];
  return [...Deno.readDirSync(TILE_DIR)]
    .filter((e) => e.name.endsWith(ext))
    .map((e) => e.name)
    .sort()
    .map((name) => {
      const path = join(TILE_DIR, name);
      return { path, bytes: Deno.readFileSync(path) };
    });
}

const png = loadTiles(".png");
const tif = loadTiles(".tif");

function decodeAll(files: TileFile[]): number {
  let bytes = 0;
  for (const f of files) bytes += decodeImage(f.bytes, f.path).data.length;
  return bytes;
}

function decodeAndPreprocess(files: TileFile[]): number {
  let n = 0;
  for (const f of files) n += preprocessImage(decodeImage(f.bytes, f.path), { size: 224 }).length;
  return n;
}

// A BACH-sized image (2048x1536), smooth with some texture, for the resize path.
const bach = (() => {
  const width = 2048, height = 1536;
  const data = new Uint8Array(width * height * 3);
  for (let y = 0, p = 0; y < height; y++) {
    for (let x = 0; x < width; x++, p += 3) {
      data[p] = (x >> 3) & 255;
      data[p + 1] = (y >> 3) & 255;
      data[p + 2] = ((x * 7) ^ (y * 13)) & 255;
    }
  }
  return { width, height, data };
})();

/** Runs `fn` (which handles `images` images) for at least ~0.5 s and prints images/s. */
function report(label: string, images: number, fn: () => unknown): void {
  fn(); // warm-up
  let iters = 0;
  const t0 = performance.now();
  let t = t0;
  while (iters < 3 || t - t0 < 500) {
    fn();
    iters++;
    t = performance.now();
  }
  const perSecond = (images * iters * 1000) / (t - t0);
  console.log(
    `${label}: ${perSecond.toFixed(1)} images/s (${
      ((t - t0) / (iters * images)).toFixed(2)
    } ms/image)`,
  );
}

if (hasSharedData) {
  report("decode PNG 224x224", png.length, () => decodeAll(png));
  report("decode TIFF 224x224 (PackBits)", tif.length, () => decodeAll(tif));
  report("decode + preprocess PNG -> [3,224,224]", png.length, () => decodeAndPreprocess(png));
  report("decode + preprocess TIFF -> [3,224,224]", tif.length, () => decodeAndPreprocess(tif));
} else {
  console.log(`decode_bench: ${SHARED_DATA} is absent, tile benchmarks skipped`);
}
report(
  "preprocess 2048x1536 -> [3,224,224] (resize 298x224, crop, normalise)",
  1,
  () => preprocessImage(bach, { size: 224 }),
);

Deno.bench({
  name: `decode ${png.length} PNG tiles 224x224`,
  group: "decode",
  baseline: true,
  ignore: !hasSharedData,
  fn: () => void decodeAll(png),
});
Deno.bench({
  name: `decode ${tif.length} TIFF tiles 224x224 (PackBits)`,
  group: "decode",
  ignore: !hasSharedData,
  fn: () => void decodeAll(tif),
});
Deno.bench({
  name: `decode + preprocess ${png.length} PNG tiles -> [3,224,224]`,
  group: "decode+preprocess",
  baseline: true,
  ignore: !hasSharedData,
  fn: () => void decodeAndPreprocess(png),
});
Deno.bench({
  name: `decode + preprocess ${tif.length} TIFF tiles -> [3,224,224]`,
  group: "decode+preprocess",
  ignore: !hasSharedData,
  fn: () => void decodeAndPreprocess(tif),
});
Deno.bench({
  name: "preprocess one 2048x1536 image -> [3,224,224]",
  fn: () => void preprocessImage(bach, { size: 224 }),
});
