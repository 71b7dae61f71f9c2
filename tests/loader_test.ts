/**
 * The loader: exact CLIP preprocessing of every sample, a deterministic order and augmentation
 * for a seed (whatever the number of workers), augmentation operations against independent
 * references, bad files failing with their path and reason or skipped and listed, GPU batches,
 * and the `data` subcommand's report. Pixel checks are exact (tolerance 0) unless stated.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpuTest } from "./util.ts";
import { pngBytes, tiffBytes, withTempDir, writeCorruptPcam } from "./fixture_util.ts";
import { preprocessImage } from "../clip/preprocess.ts";
import { decodeImage, ImageDecodeError } from "../nn/formats/image.ts";
import { getSplit, openDataset, pcamFileName, type Split } from "../train/data/datasets.ts";
import {
  type CpuBatch,
  DataLoader,
  formatSkipped,
  type LoaderOptions,
} from "../train/data/loader.ts";
import {
  applyAugment,
  augmentParams,
  DEFAULT_AUGMENT,
  geometric,
  resolveAugment,
} from "../train/data/augment.ts";
import type { DecodedImage } from "../nn/formats/image.ts";
import { dataCommand } from "../cli/data.ts";
import { H5File } from "../nn/formats/hdf5.ts";

const PCAM = new URL("./fixtures/pcam/", import.meta.url).pathname;
const SIZE = 12;
const NORM = { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] };

/** A folder dataset of 23 images (PNG and TIFF, square and not) in 3 classes. */
async function makeFolder(dir: string): Promise<void> {
  const sizes: [number, number][] = [[16, 16], [20, 14], [14, 21], [12, 12], [30, 17]];
  for (let i = 0; i < 23; i++) {
    const cls = ["a", "b", "c"][i % 3];
    const [w, h] = sizes[i % sizes.length];
    const bytes = i % 4 === 0 ? tiffBytes(w, h, i) : pngBytes(w, h, i);
    await Deno.mkdir(join(dir, cls), { recursive: true });
    await Deno.writeFile(
      join(dir, cls, `img${String(i).padStart(2, "0")}.${i % 4 === 0 ? "tif" : "png"}`),
      bytes,
    );
  }
}

async function collect(loader: DataLoader, epoch = 0, from = 0): Promise<CpuBatch[]> {
  const out: CpuBatch[] = [];
  for await (const b of loader.cpuBatches(epoch, from)) {
    out.push({
      images: b.images.slice(),
      labels: b.labels.slice(),
      indices: b.indices.slice(),
      size: b.size,
      end: b.end,
    });
  }
  return out;
}

async function load(split: Split, opts: LoaderOptions, epoch = 0): Promise<CpuBatch[]> {
  const loader = new DataLoader(split, opts);
  try {
    return await collect(loader, epoch);
  } finally {
    await loader.close();
  }
}

function filePath(split: Split, i: number): string {
  if (split.source.kind !== "files") throw new Error("expected files");
  return split.source.paths[i];
}

function plane(b: CpuBatch, j: number): Float32Array {
  const n = 3 * SIZE * SIZE;
  return b.images.subarray(j * n, (j + 1) * n);
}

Deno.test("loader: every sample is exactly the CLIP preprocessing of its file, in a seeded order, any worker count", async () => {
  await withTempDir("clipit-loader-", async (dir) => {
    await makeFolder(dir);
    const ds = await openDataset("folder", dir, { valFraction: 0 });
    const split = ds.splits[0];
    const opts: LoaderOptions = { batchSize: 5, size: SIZE, ...NORM, seed: 5, workers: 0 };
    const a = await load(split, opts);
    assert.deepEqual(a.map((b) => b.size), [5, 5, 5, 5, 3]);
    const order = a.flatMap((b) => [...b.indices]);
    assert.deepEqual(
      [...order].sort((x, y) => x - y),
      Array.from({ length: 23 }, (_, i) => i),
      "each sample once",
    );
    assert.notDeepEqual(order, Array.from({ length: 23 }, (_, i) => i), "shuffled");
    for (const b of a) {
      for (let j = 0; j < b.size; j++) {
        const idx = b.indices[j];
        assert.equal(b.labels[j], split.labels[idx]);
        const img = decodeImage(await Deno.readFile(filePath(split, idx)), filePath(split, idx));
        const want = preprocessImage(img, { size: SIZE, ...NORM });
        assert.deepEqual(plane(b, j), want, `sample ${idx}`);
      }
    }
    // Two workers give the same batches; another epoch or seed another order.
    const b2 = await load(split, { ...opts, workers: 2 });
    assert.deepEqual(b2, a);
    const loader = new DataLoader(split, opts);
    try {
      assert.deepEqual([...loader.order(0)], order);
      assert.notDeepEqual([...loader.order(1)], order);
      assert.equal(loader.numBatches, 5);
    } finally {
      await loader.close();
    }
    // A resumed epoch: from a batch's end position, the rest of the epoch, batch for batch.
    assert.deepEqual(a.map((b) => b.end), [5, 10, 15, 20, 23]);
    const resumed = new DataLoader(split, opts);
    try {
      assert.deepEqual(await collect(resumed, 0, a[1].end), a.slice(2));
      await assert.rejects(collect(resumed, 0, 24), /start position 24 not in \[0, 23\]/);
    } finally {
      await resumed.close();
    }
    // Epochs after the first come from the in-memory cache: identical to decoding again.
    const cached = new DataLoader(split, opts),
      uncached = new DataLoader(split, {
        ...opts,
        cacheBytes: 0,
      });
    try {
      for (const e of [0, 1, 2]) {
        assert.deepEqual(await collect(cached, e), await collect(uncached, e), `epoch ${e}`);
      }
    } finally {
      await cached.close();
      await uncached.close();
    }
    const other = await load(split, { ...opts, seed: 6 });
    assert.notDeepEqual(other.flatMap((b) => [...b.indices]), order);
    const plain = await load(split, { ...opts, shuffle: false, dropLast: true });
    assert.deepEqual(plain.map((b) => b.size), [5, 5, 5, 5]);
    assert.deepEqual(plain.flatMap((b) => [...b.indices]), Array.from({ length: 20 }, (_, i) => i));
  });
});

/** The 8 flips/rotations of a CHW image (S x S) as flat arrays. */
function dihedral(chw: Float32Array, s: number): Float32Array[] {
  const out: Float32Array[] = [];
  for (let t = 0; t < 8; t++) {
    const o = new Float32Array(chw.length);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < s; y++) {
        for (let x = 0; x < s; x++) {
          let sx = x, sy = y;
          if (t & 1) sx = s - 1 - sx;
          if (t & 2) sy = s - 1 - sy;
          if (t & 4) [sx, sy] = [sy, sx];
          o[c * s * s + y * s + x] = chw[c * s * s + sy * s + sx];
        }
      }
    }
    out.push(o);
  }
  return out;
}

Deno.test("loader: augmentation depends only on (seed, epoch, index); flips/rotations are exact dihedral transforms", async () => {
  await withTempDir("clipit-loader-", async (dir) => {
    await makeFolder(dir);
    const split = (await openDataset("folder", dir, { valFraction: 0 })).splits[0];
    const base: LoaderOptions = {
      batchSize: 4,
      size: SIZE,
      ...NORM,
      seed: 3,
      shuffle: false,
      workers: 0,
    };
    const plain = (await load(split, base)).flatMap((b) =>
      Array.from({ length: b.size }, (_, j) => plane(b, j))
    );
    const geo = await load(split, {
      ...base,
      augment: { flips: true, rotations: true, brightness: 0, contrast: 0, saturation: 0, hue: 0 },
    });
    let changed = 0;
    for (const b of geo) {
      for (let j = 0; j < b.size; j++) {
        const want = dihedral(plain[b.indices[j]], SIZE);
        const got = plane(b, j);
        assert.ok(
          want.some((w) => w.every((v, k) => v === got[k])),
          `sample ${b.indices[j]} is a flip/rotation`,
        );
        if (!want[0].every((v, k) => v === got[k])) changed++;
      }
    }
    assert.ok(changed >= 10, `${changed} of 23 samples transformed (expected about 7/8 of them)`);
    const full: LoaderOptions = { ...base, augment: true };
    const e0 = await load(split, full, 0);
    assert.deepEqual(
      await load(split, { ...full, workers: 2, batchSize: 7 }, 0).then((bs) =>
        bs.flatMap((b) => [...b.images])
      ),
      e0.flatMap((b) => [...b.images]),
      "same augmentation with 2 workers and another batch size",
    );
    const e1 = await load(split, full, 1);
    assert.notDeepEqual(e1[0].images, e0[0].images, "epoch 1 draws new augmentations");
  });
});

Deno.test("augment: geometry against an explicit reference, colour operations' defining cases, parameter ranges", () => {
  const w = 5, h = 3;
  const img: DecodedImage = {
    width: w,
    height: h,
    data: Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * 37) % 256),
  };
  const px = (
    im: DecodedImage,
    x: number,
    y: number,
  ) => [...im.data.subarray((y * im.width + x) * 3, (y * im.width + x) * 3 + 3)];
  // rot = 1: numpy's rot90 (counter-clockwise): out[y][x] = in[x][w - 1 - y].
  const r1 = geometric(img, false, false, 1);
  assert.deepEqual([r1.width, r1.height], [h, w]);
  for (let y = 0; y < w; y++) {
    for (let x = 0; x < h; x++) assert.deepEqual(px(r1, x, y), px(img, w - 1 - y, x));
  }
  const r2 = geometric(img, true, false, 2); // hflip then 180 degrees = vflip
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) assert.deepEqual(px(r2, x, y), px(img, x, h - 1 - y));
  }
  const r3 = geometric(img, false, true, 3);
  for (let y = 0; y < w; y++) {
    for (let x = 0; x < h; x++) assert.deepEqual(px(r3, x, y), px(img, y, x));
  }
  assert.equal(geometric(img, false, false, 0), img);

  const colour = (op: "brightness" | "contrast" | "saturation" | "hue", factor: number, im = img) =>
    applyAugment(im, { hflip: false, vflip: false, rot90: 0, colour: [{ op, factor }] });
  for (const op of ["brightness", "contrast", "saturation"] as const) {
    assert.deepEqual(colour(op, 1).data, img.data, `${op} 1`);
  }
  assert.deepEqual(colour("hue", 0).data, img.data);
  assert.ok(colour("brightness", 0).data.every((v) => v === 0));
  assert.deepEqual(colour("brightness", 2).data, img.data.map((v) => Math.min(255, 2 * v)));
  const gray = colour("saturation", 0);
  for (let i = 0; i < gray.data.length; i += 3) {
    const l = Math.round(
      (img.data[i] * 299 + img.data[i + 1] * 587 + img.data[i + 2] * 114) / 1000,
    );
    assert.deepEqual([...gray.data.subarray(i, i + 3)], [l, l, l]);
  }
  const flat = colour("contrast", 0);
  assert.ok(flat.data.every((v) => v === flat.data[0]), "contrast 0 gives one grey level");
  const rgb: DecodedImage = {
    width: 3,
    height: 1,
    data: Uint8Array.from([200, 0, 0, 0, 200, 0, 90, 90, 90]),
  };
  assert.deepEqual(
    [...colour("hue", 1 / 3, rgb).data],
    [0, 200, 0, 0, 0, 200, 90, 90, 90],
    "red -> green -> blue, grey kept",
  );

  const opts = resolveAugment(true)!;
  assert.deepEqual(opts, DEFAULT_AUGMENT);
  let hflips = 0;
  const rots = [0, 0, 0, 0];
  for (let s = 0; s < 4000; s++) {
    const p = augmentParams(opts, s * 7919);
    hflips += p.hflip ? 1 : 0;
    rots[p.rot90]++;
    for (const c of p.colour) {
      const lim = c.op === "hue" ? [-0.05, 0.05] : [0.8, 1.2];
      assert.ok(c.factor >= lim[0] && c.factor <= lim[1], `${c.op} ${c.factor}`);
    }
    assert.equal(new Set(p.colour.map((c) => c.op)).size, 4);
  }
  // Binomial: 4000 draws at p = 1/2 (sd 32) and 1/4 (sd 27); allow about 5 sd.
  assert.ok(Math.abs(hflips - 2000) < 160, `hflips ${hflips}`);
  for (const r of rots) assert.ok(Math.abs(r - 1000) < 140, `rotations ${rots}`);
  assert.deepEqual(augmentParams(opts, 77), augmentParams(opts, 77));
  assert.throws(() => resolveAugment({ hue: 0.7 }), RangeError);
});

/** Good images plus one each of: corrupt, truncated, empty, unsupported, and a non-image file. */
async function makeBadFolder(dir: string): Promise<Record<string, string>> {
  await Deno.mkdir(join(dir, "x"), { recursive: true });
  await Deno.mkdir(join(dir, "y"), { recursive: true });
  for (let i = 0; i < 10; i++) {
    await Deno.writeFile(join(dir, i % 2 ? "x" : "y", `good${i}.png`), pngBytes(13, 12, i));
  }
  const png = pngBytes(40, 30, 99);
  const corrupt = png.slice();
  corrupt.fill(0x41, 40, 200);
  const bad: Record<string, string> = {
    [join(dir, "x", "a_corrupt.png")]: "",
    [join(dir, "x", "b_truncated.tif")]: "",
    [join(dir, "y", "c_empty.png")]: "empty",
    [join(dir, "y", "d_unsupported.bmp")]: "unsupported",
  };
  await Deno.writeFile(join(dir, "x", "a_corrupt.png"), corrupt);
  const tif = tiffBytes(40, 30, 5);
  await Deno.writeFile(join(dir, "x", "b_truncated.tif"), tif.subarray(0, tif.length >> 1));
  await Deno.writeFile(join(dir, "y", "c_empty.png"), new Uint8Array(0));
  await Deno.writeFile(
    join(dir, "y", "d_unsupported.bmp"),
    Uint8Array.from([0x42, 0x4d, 1, 2, 3, 4, 5, 6, 7, 8]),
  );
  await Deno.writeTextFile(join(dir, "y", "notes.txt"), "left out, not an image");
  return bad;
}

Deno.test("loader: a corrupt, truncated, empty or unsupported file fails with its path, or is skipped and listed", async () => {
  await withTempDir("clipit-loader-", async (dir) => {
    const bad = await makeBadFolder(dir);
    const ds = await openDataset("folder", dir, { valFraction: 0 });
    assert.deepEqual(ds.ignored, [join(dir, "y", "notes.txt")]);
    const split = ds.splits[0];
    assert.equal(split.labels.length, 14);
    const opts: LoaderOptions = { batchSize: 4, size: SIZE, shuffle: false, workers: 0 };
    const loader = new DataLoader(split, opts);
    try {
      let err: unknown = null;
      try {
        for await (const _ of loader.cpuBatches(0)) { /* consume */ }
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof ImageDecodeError, `got ${err}`);
      assert.equal(err.path, join(dir, "x", "a_corrupt.png"), "the first bad file in order");
      assert.ok(err.message.includes(err.path) && err.reason.length > 0, err.message);
    } finally {
      await loader.close();
    }
    const skip = new DataLoader(split, { ...opts, onBadImage: "skip", workers: 2 });
    try {
      const batches = await collect(skip);
      assert.deepEqual(batches.map((b) => b.size), [4, 4, 2], "good images fill the batches");
      assert.equal(new Set(batches.flatMap((b) => [...b.indices])).size, 10);
      const skipped = skip.skipped;
      assert.deepEqual(skipped.map((s) => s.path).sort(), Object.keys(bad).sort());
      for (const s of skipped) {
        assert.ok(s.reason.toLowerCase().includes(bad[s.path]), `${s.path}: ${s.reason}`);
      }
      const text = formatSkipped(skipped);
      assert.ok(text.startsWith("4 image(s) skipped:"), text);
      for (const p of Object.keys(bad)) assert.ok(text.includes(p));
      // A second epoch skips the same files without listing them twice.
      await collect(skip, 1);
      assert.equal(skip.skipped.length, 4);
    } finally {
      await skip.close();
    }
  });
});

Deno.test("loader: PCAM patches through the loader, exact at 96 and upscaled like preprocessImage at 224; a corrupt patch is skipped", async () => {
  const ds = await openDataset("pcam", PCAM);
  const val = getSplit(ds, "val")!;
  const at96 = await load(val, {
    batchSize: 3,
    size: 96,
    mean: [0, 0, 0],
    std: [1, 1, 1],
    shuffle: false,
    workers: 0,
  });
  const f = H5File.open(join(PCAM, pcamFileName("valid", "x")));
  try {
    const x = f.dataset("x");
    for (const b of at96) {
      for (let j = 0; j < b.size; j++) {
        const raw = x.readRows(b.indices[j]);
        const got = b.images.subarray(j * 3 * 96 * 96, (j + 1) * 3 * 96 * 96);
        for (let k = 0; k < raw.length; k++) {
          const c = k % 3, p = Math.floor(k / 3);
          if (got[c * 96 * 96 + p] !== Math.fround(raw[k] / 255)) {
            assert.fail(`patch ${b.indices[j]} value ${k}`);
          }
        }
      }
    }
    const at224 = await load(val, { batchSize: 4, size: 224, shuffle: false, workers: 0 });
    assert.equal(at224[0].images.length, 4 * 3 * 224 * 224);
    const want = preprocessImage({ width: 96, height: 96, data: x.readRows(2) }, { size: 224 });
    assert.deepEqual(at224[0].images.subarray(2 * want.length, 3 * want.length), want);
  } finally {
    f.close();
  }
  await withTempDir("clipit-loader-", async (dir) => {
    const xPath = await writeCorruptPcam(dir);
    const train = getSplit(await openDataset("pcam", dir), "train")!;
    const loader = new DataLoader(train, {
      batchSize: 4,
      size: 96,
      onBadImage: "skip",
      workers: 0,
    });
    try {
      const got = await collect(loader);
      assert.deepEqual(got.map((b) => b.size), [4, 3]);
      assert.deepEqual(loader.skipped.map((s) => s.path), [`${xPath}[x][6]`]);
    } finally {
      await loader.close();
    }
    // The data command reads every patch and lists the corrupt one.
    const r = await runData(["--dataset", "pcam", "--root", dir, "--workers", "0"]);
    assert.equal(r.code, 1, r.out + r.err);
    assert.ok(r.out.includes("split train: 8 images, 1 unreadable"), r.out);
    assert.ok(r.out.includes(`${xPath}[x][6]: `), r.out);
    assert.ok(r.out.includes("split val: 4 images, 0 unreadable"), r.out);
  });
});

gpuTest(
  "loader: GPU batches are float32 [B,3,S,S] images and int32 [B] labels equal to the CPU batches",
  async () => {
    await withTempDir("clipit-loader-", async (dir) => {
      await makeFolder(dir);
      const split = (await openDataset("folder", dir, { valFraction: 0 })).splits[0];
      const opts: LoaderOptions = { batchSize: 8, size: SIZE, seed: 9, workers: 0 };
      const cpu = await load(split, opts);
      const loader = new DataLoader(split, opts);
      try {
        let i = 0;
        for await (const b of loader.batches(0)) {
          assert.deepEqual(b.images.shape, [b.size, 3, SIZE, SIZE]);
          assert.equal(b.images.dtype, "float32");
          assert.deepEqual(b.labels.shape, [b.size]);
          assert.equal(b.labels.dtype, "int32");
          assert.deepEqual(await b.images.toArray(), cpu[i].images);
          assert.deepEqual(await b.labels.toInt32Array(), cpu[i].labels);
          b.images.dispose();
          b.labels.dispose();
          i++;
        }
        assert.equal(i, 3);
      } finally {
        await loader.close();
      }
    });
  },
);

/** Runs dataCommand with console output captured. */
async function runData(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [], err: string[] = [];
  const log = console.log, error = console.error;
  console.log = (...a: unknown[]) => out.push(a.join(" "));
  console.error = (...a: unknown[]) => err.push(a.join(" "));
  try {
    const code = await dataCommand(args);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

Deno.test("data command: counts per split and class, image sizes, and every unreadable file", async () => {
  await withTempDir("clipit-loader-", async (dir) => {
    const bad = await makeBadFolder(join(dir, "bad"));
    await makeFolder(join(dir, "good"));
    const r = await runData([
      "--dataset",
      "folder",
      "--root",
      join(dir, "bad"),
      "--val-fraction",
      "0",
      "--workers",
      "0",
    ]);
    assert.equal(r.code, 1, r.out + r.err);
    assert.ok(r.out.includes("split train: 14 images, 4 unreadable"), r.out);
    assert.ok(r.out.includes("13x12 (5)"), r.out);
    for (const p of Object.keys(bad)) assert.ok(r.out.includes(p), `lists ${p}`);
    const j = await runData([
      "--dataset",
      "folder",
      "--root",
      join(dir, "good"),
      "--json",
      "--workers",
      "0",
    ]);
    assert.equal(j.code, 0, j.err);
    const report = JSON.parse(j.out);
    assert.deepEqual(report.splits.map((s: { name: string; count: number }) => [s.name, s.count]), [
      ["train", 18],
      ["val", 5],
    ]);
    const sizes: Record<string, number> = {};
    for (const s of report.splits) {
      for (const c of s.classes) {
        for (const [k, v] of Object.entries(c.sizes as Record<string, number>)) {
          sizes[k] = (sizes[k] ?? 0) + v;
        }
      }
    }
    assert.deepEqual(sizes, { "16x16": 5, "20x14": 5, "14x21": 5, "12x12": 4, "30x17": 4 });
    const q = await runData(["--dataset", "pcam", "--root", PCAM, "--quick"]);
    assert.equal(q.code, 0);
    assert.ok(/normal\s+5\s+-\s+96x96 \(5\)/.test(q.out), q.out);
    assert.equal((await runData(["--dataset", "nope", "--root", dir])).code, 2);
    const missing = await runData(["--dataset", "crc", "--root", dir]);
    assert.equal(missing.code, 2);
    assert.ok(missing.err.includes("NCT-CRC-HE-100K"), missing.err);
  });
});
