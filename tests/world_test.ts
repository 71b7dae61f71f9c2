/**
 * The demo world (train/data/world*.ts), its word tokenizer (clip/word_tokenizer.ts) and the
 * demo-tiny CLIP config: determinism, no label words in any report, phrase coverage, the class
 * rule, reports that say what the tile shows, the files the pipeline reads, and pixel statistics
 * that move with the factors (a cheap stand-in for looking; tests/world_sheet.ts draws a sheet
 * to look at).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { builtinConfig } from "../clip/config.ts";
import { eotPositions } from "../clip/tokenizer.ts";
import { WordTokenizer } from "../clip/word_tokenizer.ts";
import { getSplit, openDataset, parseCsv } from "../train/data/datasets.ts";
import { readImage } from "../nn/formats/image.ts";
import {
  type RgbImage,
  World,
  WORLD_DEFAULTS,
  WORLD_SPLITS,
  worldImagePath,
  worldSample,
  worldTokenizer,
  writeWorld,
} from "../train/data/world.ts";
import { drawTile } from "../train/data/world_draw.ts";
import {
  CLASS_SUPPORTS,
  classCombos,
  classOf,
  FACTOR_NAMES,
  type Factors,
  WORLD_CLASSES,
  WORLD_FACTORS,
  WorldRng,
} from "../train/data/world_factors.ts";
import {
  BOILERPLATE,
  classWords,
  FACTOR_PHRASES,
  readReport,
  reportWords,
  worldVocabulary,
  writeReport,
} from "../train/data/world_text.ts";

const SMALL = {
  pretrain: 24,
  trainPerClass: 3,
  valPerClass: 2,
  testPerClass: 2,
  corpus: 30,
} as const;

Deno.test("world: the same seed gives the same bytes, another seed other bytes", () => {
  const a = new World({ seed: 5 }), b = new World({ seed: 5 }), c = new World({ seed: 6 });
  for (const split of WORLD_SPLITS) {
    for (const i of [0, 3, 17]) {
      const x = a.sample(split, i), y = b.sample(split, i);
      assertEquals(x.image.data, y.image.data, `${split} ${i}`);
      assertEquals(x.report, y.report);
      assertEquals(x.factors, y.factors);
      assertNotEquals(x.image.data, c.sample(split, i).image.data, `${split} ${i} seed 6`);
    }
  }
  assertEquals(a.corpusReport(9), b.corpusReport(9));
  // Random access: a sample does not depend on which samples were made before it.
  assertEquals(worldSample("train", 7, { seed: 5 }).image.data, a.sample("train", 7).image.data);
  assertEquals(a.sample("pretrain", 0).image.data.length, 32 * 32 * 3);
});

Deno.test("world: options are validated, samples range-checked", () => {
  assertThrows(() => new World({ imageSize: 4 }), RangeError, "imageSize");
  assertThrows(() => new World({ labelNoise: 1.5 }), RangeError, "labelNoise");
  assertThrows(() => new World({ trainPerClass: 0 }), RangeError, "trainPerClass");
  assertThrows(() => new World({ bogus: 1 } as never), RangeError, "bogus");
  const w = new World(SMALL);
  assertEquals(w.size("train"), 12);
  assertThrows(() => w.sample("val", 8), RangeError, "out of range");
  assertThrows(() => w.corpusReport(30), RangeError, "corpus");
});

Deno.test("world: no report and no vocabulary word names a class", () => {
  const banned = new Set([...classWords(), ...WORLD_CLASSES]);
  for (const word of worldVocabulary()) assert(!banned.has(word), `vocabulary has "${word}"`);
  const w = new World();
  const texts = [
    ...w.corpus(),
    ...WORLD_SPLITS.flatMap((s) => range(Math.min(200, w.size(s))).map((i) => w.report(s, i))),
  ];
  for (const t of texts) {
    for (const word of reportWords(t)) assert(!banned.has(word), `"${word}" in: ${t}`);
    assert(/^[a-z .]+$/.test(t), `not lower-case ASCII words: ${t}`);
  }
});

Deno.test("world: reports are 15-45 words and every word is in the vocabulary", () => {
  const vocab = new Set(worldVocabulary());
  const lengths = new World().corpus().map((t) => {
    for (const word of reportWords(t)) assert(vocab.has(word), `"${word}" not in vocabulary`);
    return reportWords(t).length;
  });
  assert(
    Math.min(...lengths) >= 15 && Math.max(...lengths) <= 45,
    `${Math.min(...lengths)}-${Math.max(...lengths)}`,
  );
});

Deno.test("world: the corpus uses every phrase, and pretraining every factor combination", () => {
  const w = new World();
  const corpus = w.corpus().map((t) => ` ${reportWords(t).join(" ")} `);
  for (const phrase of [...FACTOR_PHRASES.flat(2), ...BOILERPLATE]) {
    assert(corpus.some((t) => t.includes(` ${phrase} `)), `no report says "${phrase}"`);
  }
  const seen = new Set(
    range(w.size("pretrain")).map((i) => JSON.stringify(w.factors("pretrain", i))),
  );
  assertEquals(seen.size, 3 * 2 * 3 * 3);
  // The corpus also describes combinations no class has (the rule leaves 7 of 18 out).
  const orphan = range(w.options.corpus).filter((i) => classOf(w.corpusFactors(i)) < 0).length;
  assert(orphan > 0.2 * w.options.corpus && orphan < 0.6 * w.options.corpus, `${orphan}`);
});

Deno.test("world: phrases of one factor's levels never contain each other", () => {
  FACTOR_PHRASES.forEach((levels, k) => {
    levels.forEach((phrases, a) => {
      levels.forEach((others, b) => {
        if (a === b) return;
        for (const p of phrases) {
          for (const q of others) {
            assert(!` ${p} `.includes(` ${q} `), `${FACTOR_NAMES[k]}: "${p}" contains "${q}"`);
          }
        }
      });
    });
  });
});

Deno.test("world: the class is a function of the factors, every class reachable", () => {
  const all: Factors[] = [];
  for (let cellularity = 0; cellularity < 3; cellularity++) {
    for (let nuclei = 0; nuclei < 2; nuclei++) {
      for (let glands = 0; glands < 3; glands++) {
        all.push({ cellularity, nuclei, glands, staining: 0 });
      }
    }
  }
  const byClass = WORLD_CLASSES.map((_, c) => all.filter((f) => classOf(f) === c).length);
  assertEquals(byClass, [2, 2, 4, 3]);
  for (let c = 0; c < WORLD_CLASSES.length; c++) {
    for (const f of classCombos(c)) assertEquals(classOf({ ...f, staining: 0 }), c);
  }
  // Staining is not a class factor.
  for (const f of all) {
    for (let s = 1; s < 3; s++) assertEquals(classOf({ ...f, staining: s }), classOf(f));
  }
  // Every class factor is needed: changing it alone changes some class.
  FACTOR_NAMES.slice(0, 3).forEach((name, k) => {
    const levels = WORLD_FACTORS[k].levels.length;
    const next = (f: Factors) => ({ ...f, [name]: (f[name] + 1) % levels });
    assert(all.some((f) => classOf(f) !== classOf(next(f))), `${name} never matters`);
  });
  assertEquals(CLASS_SUPPORTS.length, WORLD_CLASSES.length);
  // Labelled splits: balanced, and the label is the rule's class of the factors.
  const w = new World();
  for (const split of ["train", "val", "test"] as const) {
    for (let i = 0; i < w.size(split); i++) {
      const f = w.factors(split, i);
      assertEquals(w.label(split, i), i % 4);
      assertEquals(classOf(f), i % 4);
    }
  }
});

Deno.test("world: a report says what its tile shows", () => {
  const w = new World();
  let described = 0, total = 0;
  for (const split of WORLD_SPLITS) {
    for (let i = 0; i < 60; i++) {
      const f = w.factors(split, i);
      const read = readReport(w.report(split, i));
      for (const name of FACTOR_NAMES) {
        if (read[name] === undefined) continue;
        assertEquals(read[name], f[name], `${split} ${i} ${name}: ${w.report(split, i)}`);
      }
      described += ["cellularity", "nuclei", "glands"].filter((n) => n in read).length;
      total += 3;
    }
  }
  assert(described / total > 0.85, `only ${described} of ${total} class factors described`);
  // writeReport records what it mentioned, and readReport finds exactly that.
  const rng = new WorldRng(3);
  for (let i = 0; i < 200; i++) {
    const f = { cellularity: i % 3, nuclei: i % 2, glands: (i >> 1) % 3, staining: (i >> 2) % 3 };
    const r = writeReport(f, rng);
    assertEquals(readReport(r.text), r.mentioned, r.text);
  }
});

Deno.test("world: label noise changes only training labels, never to the true class", () => {
  const w = new World({ labelNoise: 0.5, trainPerClass: 50 });
  let flipped = 0;
  for (let i = 0; i < w.size("train"); i++) {
    const s = w.sample("train", i);
    assertEquals(s.trueLabel, i % 4);
    if (s.label !== s.trueLabel) flipped++;
    assert(s.label >= 0 && s.label < 4);
  }
  assert(flipped > 70 && flipped < 130, `${flipped} of 200 flipped`);
  for (let i = 0; i < w.size("val"); i++) assertEquals(w.label("val", i), i % 4);
  const clean = new World({ trainPerClass: 50 });
  assertEquals(clean.sample("train", 5).image.data, w.sample("train", 5).image.data);
});

Deno.test({
  name: "world: writeWorld writes what the pipeline reads, and the same bytes twice",
  permissions: { read: true, write: true },
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "world_test_" });
    try {
      const m = await writeWorld(join(dir, "a"), { ...SMALL, labelNoise: 0.3 });
      assertEquals(m.classes, [...WORLD_CLASSES]);
      assertEquals(m.counts.train.total, 12);
      assertEquals(m.counts.corpus.total, 30);
      const ds = await openDataset("csv", join(dir, "a", "labels.csv"), { classes: m.classes });
      assertEquals(ds.classes, [...WORLD_CLASSES]);
      assertEquals(ds.splits.map((s) => [s.name, s.labels.length]), [["train", 12], ["val", 8], [
        "test",
        8,
      ]]);
      const world = new World({ ...SMALL, labelNoise: 0.3 });
      const train = getSplit(ds, "train")!;
      let noisy = 0;
      for (let i = 0; i < 12; i++) {
        assertEquals(train.labels[i], world.label("train", i));
        if (world.label("train", i) !== i % 4) noisy++;
      }
      assertEquals(m.noisyTrainLabels, noisy);
      // Without `classes` the manifest still opens (classes sorted by name).
      assertEquals((await openDataset("csv", join(dir, "a", "labels.csv"))).classes.length, 4);
      // Pixels survive the PNG round trip exactly.
      const test = getSplit(ds, "test")!;
      assert(test.source.kind === "files");
      const img = await readImage(test.source.paths[5]);
      assertEquals(img.data, world.sample("test", 5).image.data);
      // pretrain.csv pairs each image with its own report; the corpus has one report per line.
      const pre = parseCsv(await Deno.readTextFile(join(dir, "a", "pretrain.csv")));
      assertEquals(pre[0], ["path", "report"]);
      assertEquals(pre[3], [worldImagePath("pretrain", 2), world.report("pretrain", 2)]);
      const corpus = (await Deno.readTextFile(join(dir, "a", "corpus.txt"))).split("\n");
      assertEquals(corpus.slice(0, 30), world.corpus());
      assertEquals(corpus[30], "");
      const tok = WordTokenizer.fromJSON(
        JSON.parse(await Deno.readTextFile(join(dir, "a", "tokenizer.json"))),
      );
      assertEquals(tok.words, worldTokenizer().words);
      const factors = parseCsv(await Deno.readTextFile(join(dir, "a", "factors.csv")));
      assertEquals(factors.length, 1 + 24 + 12 + 8 + 8);
      // Same options: nothing rewritten; elsewhere: identical bytes.
      const before = (await Deno.stat(join(dir, "a", "labels.csv"))).mtime;
      await writeWorld(join(dir, "a"), { ...SMALL, labelNoise: 0.3 });
      assertEquals((await Deno.stat(join(dir, "a", "labels.csv"))).mtime, before);
      await writeWorld(join(dir, "b"), { ...SMALL, labelNoise: 0.3 });
      for (
        const f of [
          "labels.csv",
          "pretrain.csv",
          "corpus.txt",
          "factors.csv",
          worldImagePath("val", 3),
        ]
      ) {
        assertEquals(
          await Deno.readFile(join(dir, "a", f)),
          await Deno.readFile(join(dir, "b", f)),
          f,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("word tokenizer: ids, truncation, padding, round trip, JSON", () => {
  const tok = WordTokenizer.fromWords(["nuclei", "dense", "glands", "dense"]);
  assertEquals(tok.words, ["dense", "glands", "nuclei"]);
  assertEquals(tok.vocabSize, 7);
  assertEquals(tok.eotId, 6);
  const ids = tok.tokenize(["Dense nuclei, glands!", "nuclei mitoses", ""], 6);
  assertEquals([...ids], [1, 3, 5, 4, 6, 0, 1, 5, 2, 6, 0, 0, 1, 6, 0, 0, 0, 0]);
  assertEquals([...eotPositions(ids, 6)], [4, 3, 1]);
  // Truncation keeps contextLength - 2 words and ends with end-of-text, like OpenCLIP.
  assertEquals([...tok.tokenize(["dense dense glands nuclei nuclei"], 4)], [1, 3, 3, 6]);
  assertEquals(tok.decode(ids.subarray(6, 12)), "nuclei <unk>");
  assertThrows(() => tok.tokenize(["x"], 1), RangeError, "contextLength");
  assertThrows(() => WordTokenizer.fromWords(["Dense"]), Error, "Dense");
  assertThrows(() => WordTokenizer.fromWords([]), Error, "empty");
  assertThrows(() => WordTokenizer.fromJSON({ words: ["a"] }), Error, "type");
  const again = WordTokenizer.fromJSON(JSON.parse(JSON.stringify(tok)));
  assertEquals(again.tokenize(["glands dense"], 8), tok.tokenize(["glands dense"], 8));
});

Deno.test("word tokenizer: every world report round-trips; end-of-text is each row's max", () => {
  const tok = worldTokenizer();
  const texts = new World().corpus();
  const ids = tok.tokenize(texts, 64);
  texts.forEach((t, r) => {
    const row = ids.subarray(r * 64, (r + 1) * 64);
    assertEquals(tok.decode(row), reportWords(t).join(" "));
    assert(!row.includes(tok.unknownId), t);
    const eot = row.indexOf(tok.eotId);
    assertEquals(eot, reportWords(t).length + 1);
    assertEquals(Math.max(...row), tok.eotId);
  });
  assertEquals(tok.eotId, tok.vocabSize - 1);
});

Deno.test("demo-tiny config matches the world and its tokenizer", () => {
  const c = builtinConfig("demo-tiny");
  assertEquals(c.vision.imageSize, WORLD_DEFAULTS.imageSize);
  assertEquals(
    c.text.vocabSize,
    worldTokenizer().vocabSize,
    "update demo-tiny's text.vocabSize in clip/config.ts to the world vocabulary size",
  );
  const lengths = new World().corpus().map((t) => reportWords(t).length + 2);
  const fit = lengths.filter((n) => n <= c.text.contextLength).length / lengths.length;
  assert(fit > 0.85, `only ${(100 * fit).toFixed(0)}% of reports fit the context`);
});

/** Mean fraction of dark (nuclear) and bright (lumen) pixels over tiles of given factors. */
function pixelStats(f: Factors, n: number): { dark: number; bright: number } {
  let dark = 0, bright = 0;
  for (let i = 0; i < n; i++) {
    const img: RgbImage = drawTile(f, 32, new WorldRng(1000 + i));
    for (let p = 0; p < 32 * 32; p++) {
      const [r, g, b] = img.data.subarray(p * 3, p * 3 + 3);
      const luma = 0.299 * r + 0.587 * g + 0.114 * b;
      if (luma < 110 && b > r) dark++;
      if (luma > 205 && g > 185) bright++;
    }
  }
  return { dark: dark / (n * 1024), bright: bright / (n * 1024) };
}

Deno.test("world: pixels move with the factors (nuclear area, lumens)", () => {
  const base: Factors = { cellularity: 1, nuclei: 0, glands: 2, staining: 1 };
  const by = (g: Partial<Factors>) => pixelStats({ ...base, ...g }, 60);
  const sparse = by({ cellularity: 0 }), dense = by({ cellularity: 2 }), moderate = by({});
  assert(
    sparse.dark < moderate.dark && moderate.dark < dense.dark,
    JSON.stringify([sparse, moderate, dense]),
  );
  assert(by({ nuclei: 1 }).dark > 1.5 * moderate.dark, "atypical nuclei cover more area");
  assert(by({ glands: 0 }).bright > moderate.bright + 0.05, "round glands have white lumens");
  // A tile is H&E-like: on average pink (red and blue above green).
  const img = drawTile(base, 32, new WorldRng(9));
  const mean = [0, 1, 2].map((k) =>
    range(1024).reduce((s, p) => s + img.data[p * 3 + k], 0) / 1024
  );
  assert(mean[0] > mean[1] && mean[2] > mean[1], `mean RGB ${mean.map(Math.round)}`);
  assertEquals(WORLD_FACTORS.map((d) => d.name), [...FACTOR_NAMES]);
});

function assertEquals(actual: unknown, expected: unknown, message?: string): void {
  assert.deepStrictEqual(actual, expected, message);
}

function assertNotEquals(actual: unknown, expected: unknown, message?: string): void {
  assert.notDeepStrictEqual(actual, expected, message);
}

/** `fn` throws an instance of `type` whose message contains `part`. */
function assertThrows(fn: () => unknown, type: new (...a: never[]) => Error, part: string): void {
  assert.throws(fn, (e: unknown) => e instanceof type && e.message.includes(part));
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
