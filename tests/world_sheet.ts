/**
 * A contact sheet of the demo world, to look at: one row per class (test split), `perClass`
 * tiles each, magnified with nearest-neighbour so single pixels stay visible.
 *
 *   deno run -A tests/world_sheet.ts [out.png] [perClass=8] [scale=4] [imageSize=32] [seed=1]
 *
 * Check by eye that tiles look like H&E (pink stroma, purple nuclei, white lumens) and that the
 * rows differ the way the class rule says (train/data/world_factors.ts).
 */
import { encode as encodePng } from "fast-png";
import { type RgbImage, World } from "../train/data/world.ts";

/** Tiles of each class of `world`'s test split in rows, magnified `scale` times, 2-pixel gaps. */
export function contactSheet(world: World, perClass: number, scale: number): RgbImage {
  const S = world.options.imageSize, C = world.classes.length, gap = 2, cell = S * scale + gap;
  const width = perClass * cell - gap, height = C * cell - gap;
  const data = new Uint8Array(width * height * 3).fill(255);
  const seen = new Array(C).fill(0);
  // The test split cycles through the classes, so sample c + C * j is the j-th of class c.
  for (let c = 0; c < C; c++) {
    for (let j = 0; j < perClass; j++) {
      const i = c + C * j;
      if (i >= world.size("test")) break;
      const img = world.sample("test", i).image;
      seen[c]++;
      for (let y = 0; y < S * scale; y++) {
        for (let x = 0; x < S * scale; x++) {
          const src = (Math.floor(y / scale) * S + Math.floor(x / scale)) * 3;
          const dst = ((c * cell + y) * width + j * cell + x) * 3;
          data.set(img.data.subarray(src, src + 3), dst);
        }
      }
    }
  }
  return { width, height, data };
}

if (import.meta.main) {
  const [out = "world_sheet.png", per = "8", scale = "4", size = "32", seed = "1"] = Deno.args;
  const world = new World({
    imageSize: Number(size),
    seed: Number(seed),
    testPerClass: Number(per),
  });
  const sheet = contactSheet(world, Number(per), Number(scale));
  await Deno.writeFile(out, encodePng({ ...sheet, channels: 3, depth: 8 }));
  console.log(`${out}: rows ${world.classes.join(", ")} (test split, seed ${seed})`);
}
