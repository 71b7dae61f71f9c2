/**
 * Datasets: the HDF5 reader against h5py-written fixtures (tests/fixtures/make_pcam_fixture.py),
 * the PCAM / CRC / BACH / folder / flat / CSV dataset kinds over generated folders and over the
 * real CRC tiles in ../shared/data/crc-tiles, stratified splits, and clear errors for missing,
 * truncated and corrupt inputs. Every pixel check is exact (tolerance 0): the formats are
 * lossless and the fixtures' values are recomputed here from their formulas.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import {
  FIXTURES_DIR,
  pngBytes,
  tiffBytes,
  withTempDir,
  writeCorruptPcam,
} from "./fixture_util.ts";
import { H5Error, H5File } from "../nn/formats/hdf5.ts";
import {
  BACH_CLASSES,
  CRC_CLASSES,
  type Dataset,
  DatasetError,
  getSplit,
  labelFromFileName,
  openDataset,
  parseCsv,
  pcamFileName,
  type Split,
} from "../train/data/datasets.ts";
import { permutation, stratifiedSplit } from "../train/data/split.ts";
import { SampleReader } from "../train/data/sample.ts";
import { DecodePool } from "../train/data/pool.ts";
import { ImageDecodeError } from "../nn/formats/image.ts";

const PCAM = join(FIXTURES_DIR, "pcam");
const TILES = join(SHARED_DATA, "crc-tiles");

// ---- helpers ---------------------------------------------------------------------------------

/** The PCAM fixture's pixel formula (make_pcam_fixture.py `pcam_pixel`). */
function pcamPixel(split: number, i: number, r: number, c: number, ch: number): number {
  return (split * 61 + i * 37 + r * 3 + c * 5 + ch * 71 + ((r * c) % 7)) % 256;
}

/** The PCAM fixture's label formula (`pcam_label`). */
function pcamLabel(split: number, i: number): number {
  return (i * 7 + split) % 3 === 1 ? 1 : 0;
}

/** Writes files: path relative to `dir` -> bytes. */
async function writeTree(dir: string, files: Record<string, Uint8Array | string>): Promise<void> {
  for (const [rel, data] of Object.entries(files)) {
    const p = join(dir, rel);
    await Deno.mkdir(join(p, ".."), { recursive: true });
    if (typeof data === "string") await Deno.writeTextFile(p, data);
    else await Deno.writeFile(p, data);
  }
}

function paths(split: Split): string[] {
  assert.equal(split.source.kind, "files");
  return split.source.kind === "files" ? split.source.paths : [];
}

function countsByClass(ds: Dataset, split: Split): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of split.labels) out[ds.classes[l]] = (out[ds.classes[l]] ?? 0) + 1;
  return out;
}

type ErrorClass = new (...a: never[]) => Error;

/** Asserts that a caught `err` is a `cls` whose message mentions `text`, and returns it. */
function assertErrorMentions(err: unknown, cls: ErrorClass, text: string): Error {
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${err}`);
  assert.ok(
    (err as Error).message.includes(text),
    `"${(err as Error).message}" should mention "${text}"`,
  );
  return err as Error;
}

async function rejectsWith(p: Promise<unknown>, cls: ErrorClass, text: string): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return assertErrorMentions(err, cls, text);
  }
  throw new Error(`expected a ${cls.name} mentioning "${text}"`);
}

function throwsWith(fn: () => unknown, cls: ErrorClass, text: string): Error {
  try {
    fn();
  } catch (err) {
    return assertErrorMentions(err, cls, text);
  }
  throw new Error(`expected a ${cls.name} mentioning "${text}"`);
}

// ---- HDF5 reader -----------------------------------------------------------------------------

interface VariantCase {
  file: string;
  name: string;
  shape?: number[];
  formula?: { kind: "int" | "float"; a: number; b: number; m: number; o: number };
  rows?: [number, number][];
  fill?: number;
  error: string | null;
  sum?: number;
  chunks?: number[] | null;
}

const variants: VariantCase[] =
  JSON.parse(Deno.readTextFileSync(join(FIXTURES_DIR, "h5_variants.json"))).cases;

Deno.test("hdf5: every h5py-written layout, chunk index, filter and dtype reads exactly (tolerance 0)", () => {
  const files = new Map<string, H5File>();
  try {
    let checked = 0;
    for (const c of variants) {
      let f = files.get(c.file);
      if (!f) files.set(c.file, f = H5File.open(join(FIXTURES_DIR, c.file)));
      if (c.error) {
        throwsWith(() => f!.dataset(c.name).readAll(), H5Error, c.error);
        continue;
      }
      const ds = f.dataset(c.name);
      assert.deepEqual(ds.shape, c.shape, c.name);
      const vals = ds.readAll();
      const n = vals.length;
      const row = n / c.shape![0];
      let sum = 0;
      for (let k = 0; k < n; k++) {
        const r = Math.floor(k / row);
        const written = c.rows!.some(([lo, hi]) => r >= lo && r < hi);
        const p = c.formula!;
        const expected = !written
          ? c.fill!
          : p.kind === "float"
          ? k * 0.25 - 7.5
          : ((k * p.a + p.b) % p.m) + p.o;
        if (vals[k] !== expected) {
          assert.fail(`${c.file} ${c.name}[${k}] = ${vals[k]}, expected ${expected}`);
        }
        if (written) sum += vals[k];
      }
      assert.equal(sum, c.sum, `${c.name}: sum of written values vs numpy's`);
      // Row-by-row reads agree with the whole read (edge chunks, partial chunks).
      const all = ds.readRows(0, c.shape![0]);
      for (let r = 0; r < c.shape![0]; r++) {
        assert.deepEqual(
          ds.readRows(r, 1),
          all.subarray(r * ds.rowBytes, (r + 1) * ds.rowBytes),
          `${c.name} row ${r}`,
        );
      }
      if (c.shape![0] > 3) {
        assert.deepEqual(ds.readRows(1, 3), all.subarray(ds.rowBytes, 4 * ds.rowBytes));
      }
      checked++;
    }
    assert.ok(checked >= 20, `checked ${checked} datasets`);
  } finally {
    for (const f of files.values()) f.close();
  }
});

Deno.test("hdf5: reading one patch reads one chunk, not the file", () => {
  const f = H5File.open(join(PCAM, pcamFileName("train", "x")));
  try {
    const x = f.dataset("x");
    assert.deepEqual(x.shape, [8, 96, 96, 3]);
    const before = f.bytesRead;
    const patch = x.readRows(5);
    const read = f.bytesRead - before;
    const chunk = x.chunkLocation([5, 0, 0, 0])!;
    assert.ok(read < chunk.size + 4096, `read ${read} bytes for one patch (chunk ${chunk.size})`);
    assert.ok(read < f.fileSize / 4, `read ${read} of ${f.fileSize} bytes`);
    for (let k = 0; k < patch.length; k += 101) {
      const ch = k % 3, c = Math.floor(k / 3) % 96, r = Math.floor(k / 288);
      assert.equal(patch[k], pcamPixel(0, 5, r, c, ch));
    }
  } finally {
    f.close();
  }
});

Deno.test("hdf5: empty, non-HDF5, truncated and missing files fail with the path and the reason", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    const good = await Deno.readFile(join(PCAM, pcamFileName("train", "x")));
    await writeTree(dir, {
      "empty.h5": new Uint8Array(0),
      "text.h5": "not hdf5 at all\n",
      "trunc.h5": good.subarray(0, good.length - 1000),
    });
    throwsWith(() => H5File.open(join(dir, "empty.h5")), H5Error, "the file is empty");
    throwsWith(() => H5File.open(join(dir, "text.h5")), H5Error, "not an HDF5 file");
    const e = throwsWith(() => H5File.open(join(dir, "trunc.h5")), H5Error, "truncated");
    assert.equal((e as H5Error).path, join(dir, "trunc.h5"));
    throwsWith(() => H5File.open(join(dir, "nope.h5")), H5Error, "cannot open the file");
  });
});

Deno.test("hdf5: a corrupt gzip chunk and a bad Fletcher-32 checksum are reported, other chunks still read", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    const src = join(PCAM, pcamFileName("train", "x"));
    const f = H5File.open(src);
    const loc = f.dataset("x").chunkLocation([3, 0, 0, 0])!;
    f.close();
    const bytes = await Deno.readFile(src);
    for (let i = 10; i < 40; i++) bytes[loc.offset + i] ^= 0x5a;
    await Deno.writeFile(join(dir, "x.h5"), bytes);
    const g = H5File.open(join(dir, "x.h5"));
    try {
      throwsWith(() => g.dataset("x").readRows(3), H5Error, "chunk [3, 0, 0, 0]");
      assert.equal(g.dataset("x").readRows(2)[0], pcamPixel(0, 2, 0, 0, 0));
    } finally {
      g.close();
    }
    const v = join(FIXTURES_DIR, "h5_variants_v0.h5");
    const h = H5File.open(v);
    const fl = h.dataset("i16be_fletcher").chunkLocation([4, 0])!;
    h.close();
    const vb = await Deno.readFile(v);
    // Flip bits in the checksum itself: the data still inflates, the checksum no longer matches.
    vb[fl.offset + fl.size - 1] ^= 0xff;
    await Deno.writeFile(join(dir, "v.h5"), vb);
    const k = H5File.open(join(dir, "v.h5"));
    try {
      throwsWith(
        () => k.dataset("i16be_fletcher").readRows(4),
        H5Error,
        "Fletcher-32 checksum mismatch",
      );
      assert.equal(k.dataset("i16be_fletcher").readRows(0).length, 12);
    } finally {
      k.close();
    }
  });
});

// ---- splits --------------------------------------------------------------------------------

Deno.test("split: permutations are valid and seeded; stratified splits keep class proportions", () => {
  const p = permutation(1000, 7);
  assert.deepEqual([...p].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  assert.deepEqual(permutation(1000, 7), p);
  assert.notDeepEqual(permutation(1000, 8), p);
  const labels = Array.from({ length: 1000 }, (_, i) => (i % 10 < 7 ? 0 : i % 10 < 9 ? 1 : 2));
  const s = stratifiedSplit(labels, { val: 0.2, test: 0.1 }, 42);
  const all = [...s.train, ...s.val, ...s.test].sort((a, b) => a - b);
  assert.deepEqual(
    all,
    Array.from({ length: 1000 }, (_, i) => i),
    "parts are disjoint and cover all",
  );
  const count = (idx: number[], c: number) => idx.filter((i) => labels[i] === c).length;
  // 700 / 200 / 100 per class -> val 140 / 40 / 20, test 70 / 20 / 10 exactly.
  assert.deepEqual([0, 1, 2].map((c) => count(s.val, c)), [140, 40, 20]);
  assert.deepEqual([0, 1, 2].map((c) => count(s.test, c)), [70, 20, 10]);
  assert.deepEqual(stratifiedSplit(labels, { val: 0.2, test: 0.1 }, 42), s);
  assert.notDeepEqual(stratifiedSplit(labels, { val: 0.2, test: 0.1 }, 43).val, s.val);
  assert.throws(() => stratifiedSplit(labels, { val: 0.6, test: 0.5 }, 1), RangeError);
});

// ---- PCAM ----------------------------------------------------------------------------------

Deno.test("pcam: the six .h5 files give official splits, labels and exact patches through the loader's reader", async () => {
  const ds = await openDataset("pcam", PCAM);
  assert.deepEqual(ds.classes, ["normal", "tumor"]);
  assert.deepEqual(ds.splits.map((s) => [s.name, s.labels.length]), [["train", 8], ["val", 4], [
    "test",
    2,
  ]]);
  for (const [si, split] of ds.splits.entries()) {
    assert.deepEqual(
      [...split.labels],
      Array.from({ length: split.labels.length }, (_, i) => pcamLabel(si, i)),
    );
    const reader = new SampleReader(split.source);
    try {
      for (let i = 0; i < split.labels.length; i++) {
        const img = await reader.image(i);
        assert.equal(img.width, 96);
        assert.equal(img.height, 96);
        for (let k = 0; k < img.data.length; k++) {
          const ch = k % 3, c = Math.floor(k / 3) % 96, r = Math.floor(k / 288);
          if (img.data[k] !== pcamPixel(si, i, r, c, ch)) {
            assert.fail(`${split.name}[${i}] byte ${k}`);
          }
        }
      }
    } finally {
      reader.close();
    }
  }
});

Deno.test("pcam: missing, half-present, gzipped, truncated and mislabelled files fail clearly", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    await rejectsWith(
      openDataset("pcam", dir),
      DatasetError,
      "camelyonpatch_level_2_split_train_x.h5",
    );
    await Deno.writeFile(
      join(dir, pcamFileName("train", "x") + ".gz"),
      new Uint8Array([0x1f, 0x8b]),
    );
    await rejectsWith(openDataset("pcam", dir), DatasetError, "gunzip");
    const x = await Deno.readFile(join(PCAM, pcamFileName("train", "x")));
    await Deno.writeFile(join(dir, pcamFileName("train", "x")), x);
    await rejectsWith(openDataset("pcam", dir), DatasetError, "but not");
    await Deno.copyFile(
      join(PCAM, pcamFileName("valid", "y")),
      join(dir, pcamFileName("train", "y")),
    );
    await rejectsWith(openDataset("pcam", dir), DatasetError, "has 4 labels but");
    await Deno.copyFile(
      join(PCAM, pcamFileName("train", "y")),
      join(dir, pcamFileName("train", "y")),
    );
    const ok = await openDataset("pcam", dir);
    assert.deepEqual(ok.splits.map((s) => s.name), ["train"]);
    assert.ok(ok.notes.some((n) => n.includes("val split absent")));
    await Deno.writeFile(join(dir, pcamFileName("train", "x")), x.subarray(0, x.length >> 1));
    await rejectsWith(openDataset("pcam", dir), DatasetError, "truncated");
  });
});

Deno.test("pcam: a corrupt patch fails with its file and index", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    const xPath = await writeCorruptPcam(dir);
    const ds = await openDataset("pcam", dir);
    const reader = new SampleReader(ds.splits[0].source);
    try {
      const err = await rejectsWith(reader.image(6), ImageDecodeError, "corrupt");
      assert.equal((err as ImageDecodeError).path, `${xPath}[x][6]`);
      assert.equal((await reader.image(5)).data[0], pcamPixel(0, 5, 0, 0, 0));
    } finally {
      reader.close();
    }
  });
});

// ---- CRC -----------------------------------------------------------------------------------

Deno.test("crc: NCT-CRC-HE-100K gives a seeded stratified 80/20 train/val split, CRC-VAL-HE-7K the test split", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    const files: Record<string, Uint8Array | string> = {};
    CRC_CLASSES.forEach((c, ci) => {
      // 10 or 15 images per class in training, 3 in test.
      const n = ci % 2 ? 15 : 10;
      for (let i = 0; i < n; i++) {
        files[`NCT-CRC-HE-100K/${c}/${c}-${String(i).padStart(4, "0")}.png`] = pngBytes(
          4,
          3,
          ci * 100 + i,
        );
      }
      for (let i = 0; i < 3; i++) {
        files[`CRC-VAL-HE-7K/${c}/${c}-TEST-${i}.tif`] = tiffBytes(4, 3, ci * 100 + 50 + i);
      }
    });
    files["NCT-CRC-HE-100K/ADI/readme.txt"] = "not an image";
    files["NCT-CRC-HE-100K/.DS_Store/x"] = "hidden";
    await writeTree(dir, files);
    const ds = await openDataset("crc", dir);
    assert.deepEqual(ds.classes, CRC_CLASSES);
    const train = getSplit(ds, "train")!, val = getSplit(ds, "val")!, test = getSplit(ds, "test")!;
    CRC_CLASSES.forEach((c, ci) => {
      const n = ci % 2 ? 15 : 10;
      assert.equal(countsByClass(ds, val)[c], Math.round(n * 0.2), `val ${c}`);
      assert.equal(countsByClass(ds, train)[c], n - Math.round(n * 0.2), `train ${c}`);
      assert.equal(countsByClass(ds, test)[c], 3, `test ${c}`);
    });
    // Every label matches its class folder; train and val are disjoint.
    for (const s of [train, val, test]) {
      paths(s).forEach((p, i) => assert.ok(p.includes(`/${ds.classes[s.labels[i]]}/`), p));
    }
    assert.equal(
      new Set([...paths(train), ...paths(val)]).size,
      train.labels.length + val.labels.length,
    );
    assert.deepEqual(ds.ignored, [join(dir, "NCT-CRC-HE-100K/ADI/readme.txt")]);
    assert.ok(ds.notes.some((n) => n.includes("seed 42")));
    // Same seed, same split; another seed, another split.
    assert.deepEqual(paths(getSplit(await openDataset("crc", dir), "val")!), paths(val));
    assert.notDeepEqual(
      paths(getSplit(await openDataset("crc", dir, { seed: 1 }), "val")!),
      paths(val),
    );
    // No test folder: a note, not an error. A missing class folder: an error naming it.
    await Deno.remove(join(dir, "CRC-VAL-HE-7K"), { recursive: true });
    const noTest = await openDataset("crc", dir);
    assert.equal(getSplit(noTest, "test"), undefined);
    assert.ok(noTest.notes.some((n) => n.includes("test split absent")));
    await Deno.remove(join(dir, "NCT-CRC-HE-100K/MUS"), { recursive: true });
    await rejectsWith(openDataset("crc", dir), DatasetError, "MUS");
  });
});

// ---- BACH ----------------------------------------------------------------------------------

Deno.test("bach: 400 photos split 268/132 (67/33 per class) by seed, or by a split file", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    const files: Record<string, Uint8Array> = {};
    const tiny = pngBytes(2, 2, 1);
    BACH_CLASSES.forEach((c, ci) => {
      for (let i = 0; i < 100; i++) {
        files[
          `ICIAR2018_BACH_Challenge/Photos/${c}/${c[0].toLowerCase()}${ci}${
            String(i).padStart(3, "0")
          }.tif`
        ] = tiny;
      }
    });
    await writeTree(dir, files);
    const ds = await openDataset("bach", dir);
    assert.deepEqual(ds.classes, BACH_CLASSES);
    assert.equal(ds.root, join(dir, "ICIAR2018_BACH_Challenge/Photos"));
    assert.deepEqual(ds.splits.map((s) => [s.name, s.labels.length]), [["train", 268], [
      "test",
      132,
    ]]);
    for (const c of BACH_CLASSES) assert.equal(countsByClass(ds, ds.splits[1])[c], 33);
    // A fixed split from a CSV (name,split): here, image numbers below 30 are test.
    const rows = ["name,split"];
    for (const p of [...paths(ds.splits[0]), ...paths(ds.splits[1])]) {
      const name = p.split("/").pop()!;
      rows.push(`${name},${Number(name.slice(2, 5)) < 30 ? "test" : "train"}`);
    }
    await Deno.writeTextFile(join(dir, "split.csv"), rows.join("\n"));
    const fixed = await openDataset("bach", dir, { splitFile: join(dir, "split.csv") });
    assert.deepEqual(fixed.splits.map((s) => [s.name, s.labels.length]), [["train", 280], [
      "test",
      120,
    ]]);
    for (const p of paths(getSplit(fixed, "test")!)) {
      assert.ok(Number(p.split("/").pop()!.slice(2, 5)) < 30, p);
    }
    await Deno.writeTextFile(join(dir, "split.csv"), rows.slice(0, 300).join("\n"));
    await rejectsWith(
      openDataset("bach", dir, { splitFile: join(dir, "split.csv") }),
      DatasetError,
      "does not list 101",
    );
    await rejectsWith(
      openDataset("bach", join(dir, "nothing")),
      DatasetError,
      "nothing does not exist",
    );
  });
});

// ---- generic folder, flat folder, CSV --------------------------------------------------------

Deno.test("folder: class subfolders (seeded split) or train/val/test folders (official split)", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    const files: Record<string, Uint8Array> = {};
    for (const [c, n] of [["cat", 10], ["dog", 5]] as const) {
      for (let i = 0; i < n; i++) {
        files[`plain/${c}/${i}.png`] = pngBytes(3, 3, i);
        files[`split/train/${c}/${i}.png`] = pngBytes(3, 3, i);
      }
      files[`split/valid/${c}/v.png`] = pngBytes(3, 3, 9);
      files[`split/test/${c}/sub/t.png`] = pngBytes(3, 3, 8); // nested folders are read too
    }
    await writeTree(dir, files);
    const plain = await openDataset("folder", join(dir, "plain"));
    assert.deepEqual(plain.classes, ["cat", "dog"]);
    assert.deepEqual(plain.splits.map((s) => [s.name, s.labels.length]), [["train", 12], [
      "val",
      3,
    ]]);
    assert.deepEqual(countsByClass(plain, plain.splits[1]), { cat: 2, dog: 1 });
    const split = await openDataset("folder", join(dir, "split"));
    assert.deepEqual(split.splits.map((s) => [s.name, s.labels.length]), [
      ["train", 15],
      ["val", 2],
      ["test", 2],
    ]);
    const ordered = await openDataset("folder", join(dir, "plain"), { classes: ["dog", "cat"] });
    assert.deepEqual(ordered.classes, ["dog", "cat"]);
    paths(ordered.splits[0]).forEach((p, i) =>
      assert.ok(p.includes(`/${ordered.classes[ordered.splits[0].labels[i]]}/`))
    );
    await rejectsWith(
      openDataset("folder", join(dir, "plain"), { classes: ["dog"] }),
      DatasetError,
      "cat",
    );
  });
});

Deno.test("flat: labels from file-name prefixes, or from a known class list", () => {
  assert.equal(labelFromFileName("ADI-TCGA-EENSRDNW.png"), "ADI");
  assert.equal(labelFromFileName("/x/CRC-VAL-HE-7K-NORM-TCGA-YLVCMEHK.tif"), "CRC");
  assert.equal(labelFromFileName("CRC-VAL-HE-7K-NORM-TCGA-YLVCMEHK.tif", CRC_CLASSES), "NORM");
  assert.equal(labelFromFileName("nolabel.png"), null);
  assert.equal(labelFromFileName("X-Y.png", CRC_CLASSES), null);
});

Deno.test("csv: a manifest with and without a split column, relative paths, clear errors", async () => {
  await withTempDir("clipit-datasets-", async (dir) => {
    await writeTree(dir, {
      "img/a.png": pngBytes(3, 3, 1),
      "img/b.png": pngBytes(3, 3, 2),
      "with.csv": 'path,label,split\nimg/a.png,10,train\n"img/b.png",2,test\r\n',
      "without.csv": "img/a.png,tumor\nimg/b.png,normal\n",
      "mixed.csv": "img/a.png,1,train\nimg/b.png,2\n",
      "badsplit.csv": "img/a.png,1,holdout\n",
    });
    const w = await openDataset("csv", join(dir, "with.csv"));
    assert.deepEqual(w.classes, ["2", "10"], "integer labels sort numerically");
    assert.deepEqual(w.splits.map((s) => [s.name, paths(s), [...s.labels]]), [
      ["train", [join(dir, "img/a.png")], [1]],
      ["test", [join(dir, "img/b.png")], [0]],
    ]);
    const wo = await openDataset("csv", join(dir, "without.csv"), { valFraction: 0 });
    assert.deepEqual(wo.classes, ["normal", "tumor"]);
    assert.equal(wo.splits[0].labels.length, 2);
    await rejectsWith(openDataset("csv", join(dir, "mixed.csv")), DatasetError, "no split");
    await rejectsWith(openDataset("csv", join(dir, "badsplit.csv")), DatasetError, "holdout");
    await rejectsWith(
      openDataset("csv", join(dir, "none.csv")),
      DatasetError,
      "none.csv does not exist",
    );
    assert.deepEqual(parseCsv('a,"b,""c"""\n\n1,2'), [["a", 'b,"c"'], ["1", "2"]]);
  });
});

// ---- the real CRC tiles ----------------------------------------------------------------------

interface TileRef {
  name: string;
  width: number;
  height: number;
  sum: number;
  wsum: number;
  samples: number[][];
}

Deno.test({
  name:
    "crc tiles (real data): the flat dataset finds all 42 tiles and the workers decode them as PIL does",
  ignore: !hasSharedData,
  fn: async () => {
    const ref = JSON.parse(await Deno.readTextFile(join(FIXTURES_DIR, "image_tiles.json")));
    const byName = new Map<string, TileRef>(ref.tiles.map((t: TileRef) => [t.name, t]));
    const positions: [number, number][] = ref.positions;
    const ds = await openDataset("flat", TILES, { valFraction: 0 });
    assert.equal(ds.splits.length, 1);
    const split = ds.splits[0];
    assert.equal(split.labels.length, 42);
    const counts = countsByClass(ds, split);
    assert.deepEqual(counts, {
      ADI: 5,
      BACK: 1,
      CRC: 1,
      DEB: 5,
      LYM: 5,
      MUC: 5,
      MUS: 5,
      NORM: 5,
      STR: 5,
      TUM: 5,
    });
    const known = await openDataset("flat", TILES, { valFraction: 0, classes: CRC_CLASSES });
    assert.equal(countsByClass(known, known.splits[0]).NORM, 6);
    // Decode through the worker pool (the loader's path) and compare with PIL's pixels.
    const pool = new DecodePool(split.source, {
      size: 224,
      mean: [0, 0, 0],
      std: [1, 1, 1],
      augment: null,
      seed: 0,
    }, 2);
    try {
      const results = await Promise.all(paths(split).map((_, i) => pool.run(i, 0, "decode")));
      results.forEach((r, i) => {
        const name = paths(split)[i].split("/").pop()!;
        const t = byName.get(name)!;
        assert.ok(t, `${name} in image_tiles.json`);
        assert.ok(r.ok, `${name} decodes`);
        if (!r.ok) return;
        assert.equal(r.width, t.width);
        assert.equal(r.height, t.height);
        const d = r.data as Uint8Array;
        let sum = 0, wsum = 0;
        for (let k = 0; k < d.length; k++) {
          sum += d[k];
          wsum = (wsum + ((k * d[k]) % 4294967296)) % 4294967296;
        }
        assert.equal(sum, t.sum, `${name} byte sum`);
        assert.equal(wsum, t.wsum, `${name} weighted sum`);
        positions.forEach(([y, x], j) => {
          const o = (y * r.width + x) * 3;
          assert.deepEqual([d[o], d[o + 1], d[o + 2]], t.samples[j], `${name} pixel (${y}, ${x})`);
        });
        assert.equal(ds.classes[split.labels[i]], name.split("-")[0]);
      });
    } finally {
      await pool.close();
    }
  },
});
