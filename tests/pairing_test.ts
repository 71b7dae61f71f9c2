/**
 * CLIP-IT pairing (clip/pairing*.ts, train/data/pairing_source.ts, cli/pair.ts): the corpus
 * reader, token windows, the pairing file against float64 CPU cosines of the stored embeddings
 * (tolerance 1e-5: float32 GPU dot products of unit vectors, rounded to 6 decimals), chunk mode
 * against a brute-force CPU max over windows, resume after an interruption, readPairing's named
 * refusals, randomPairing, the command line, and the real tiles and reports of ../shared/data.
 * Models are random-weight tiny CLIPs; tokenizers are CLIP's byte-level BPE without merges (one
 * token per character) or the real BPE for the shared data.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { gpuTest } from "./util.ts";
import { pngBytes, withTempDir } from "./fixture_util.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { builtinConfig, configToJson } from "../clip/config.ts";
import { ConchTokenizer } from "../clip/conch_tokenizer.ts";
import { ClipModel } from "../clip/model.ts";
import { ClipTokenizer } from "../clip/tokenizer.ts";
import {
  datasetFingerprint,
  PAIRING_FORMAT,
  type PairingExpectation,
  randomPairing,
  readPairing,
} from "../clip/pairing.ts";
import {
  cachedSha256File,
  type Corpus,
  parseCorpus,
  readCorpus,
  sha256Hex,
} from "../clip/pairing_corpus.ts";
import { embedSplitImages, type ImageRangeSource } from "../clip/pairing_images.ts";
import { topKReports } from "../clip/pairing_match.ts";
import {
  modelKey,
  type PairingModel,
  type PairingProgress,
  runPairing,
  type RunPairingOptions,
} from "../clip/pairing_run.ts";
import { type CorpusEmbeddings, embedCorpus, tokenWindows } from "../clip/pairing_text.ts";
import { openDataset } from "../train/data/datasets.ts";
import { loaderImageSource, pairingDataset } from "../train/data/pairing_source.ts";
import { pairCommand } from "../cli/pair.ts";
import { Rng } from "../nn/rng.ts";

const enc = new TextEncoder();

// ---- fixtures ----------------------------------------------------------------------------------

const LONG = "tumour glands " + "with crowded atypical nuclei and necrosis ".repeat(8);
/** A corpus with a BOM, CRLF, blank lines and reports longer than 75 characters. */
const CORPUS_TEXT = "\uFEFFadipose tissue, large empty fat cells\r\n" +
  "\n" +
  "dense lymphocytes in sheets\n" +
  "   \n" +
  LONG + "\n" +
  "smooth muscle bundles, " + "elongated nuclei ".repeat(6) + "\n" +
  "mucin pools with floating epithelium\n" +
  "\n" +
  "debris and " + "karyorrhectic fragments ".repeat(10) + "\n" +
  "normal colonic mucosa with goblet cells\n";
/** Its non-blank lines' 1-based numbers. */
const CORPUS_LINES = [1, 3, 5, 6, 7, 9, 10];

/** A `folder` dataset: train/{ADI,TUM} 5 + 5 PNGs, val/{ADI,TUM} 2 + 2 (sizes vary). */
async function writeFolderDataset(root: string): Promise<void> {
  let seed = 1;
  for (const [split, n] of [["train", 5], ["val", 2]] as const) {
    for (const cls of ["ADI", "TUM"]) {
      await Deno.mkdir(join(root, split, cls), { recursive: true });
      for (let i = 0; i < n; i++) {
        const w = 36 + (seed % 3) * 7, h = 40 + (seed % 2) * 9;
        await Deno.writeFile(join(root, split, cls, `${cls}-${i}.png`), pngBytes(w, h, seed++));
      }
    }
  }
}

/** CLIP's byte-level BPE with no merges: one token per character, 514 ids. */
function charTokenizer(): ClipTokenizer {
  return ClipTokenizer.fromMerges("#version: 0.2\n", { numMerges: 0, source: "no merges" });
}

let shared: { clip: ClipModel; model: PairingModel } | null = null;
/** One random-weight "tiny" CLIP for the library tests (after init). */
function tinyModel(): PairingModel {
  if (!shared) {
    const cfg = builtinConfig("tiny");
    const clip = new ClipModel(cfg, { seed: 3 });
    shared = {
      clip,
      model: {
        image: ClipImageBackbone.fromClip(clip),
        text: new ClipTextEncoder(clip),
        tokenizer: charTokenizer(),
        identity: {
          name: cfg.name,
          weights: "random (seed 3)",
          weightsSha256: null,
          config: configToJson(cfg),
          tokenizer: "no merges",
          tokenizerSha256: sha256Hex("no merges"),
        },
      },
    };
  }
  return shared.model;
}

/** Writes the dataset and corpus under `dir` and opens them. */
async function fixtures(dir: string) {
  await writeFolderDataset(join(dir, "ds"));
  await Deno.writeFile(join(dir, "reports.txt"), enc.encode(CORPUS_TEXT));
  const ds = await openDataset("folder", join(dir, "ds"));
  const corpus = await readCorpus(join(dir, "reports.txt"));
  return { ds, data: pairingDataset(ds), corpus };
}

function source(ds: Awaited<ReturnType<typeof openDataset>>, model: PairingModel) {
  return loaderImageSource(ds, {
    size: model.image.imageSize,
    mean: model.image.mean,
    std: model.image.std,
    interpolation: model.image.interpolation,
    batch: 3,
    workers: 0,
  });
}

/** An image source that must not be called (everything is cached). */
const noImages: ImageRangeSource = () => {
  throw new Error("images were embedded again although every chunk is saved");
};

interface Row {
  i: number;
  id: string;
  label: string;
  reports: number[];
  lines: number[];
  scores: number[];
}

async function readRows(path: string): Promise<{ header: Record<string, unknown>; rows: Row[] }> {
  const lines = (await Deno.readTextFile(path)).trimEnd().split("\n");
  return { header: JSON.parse(lines[0]), rows: lines.slice(1).map((l) => JSON.parse(l)) };
}

/** float64 cosine of rows a and b of length d. */
function cos64(a: Float32Array, ai: number, b: Float32Array, bi: number, d: number): number {
  let dot = 0, na = 0, nb = 0;
  for (let j = 0; j < d; j++) {
    const x = a[ai * d + j], y = b[bi * d + j];
    dot += x * y;
    na += x * x;
    nb += y * y;
  }
  return dot / Math.sqrt(na * nb);
}

/** Exact top-k reports by max over their rows (float64), ties by lower index. */
function bruteTopK(img: Float32Array, i: number, text: CorpusEmbeddings, reports: number) {
  const best = new Float64Array(reports).fill(-Infinity);
  for (let w = 0; w < text.rows; w++) {
    const s = cos64(img, i, text.embeds, w, text.dim);
    if (s > best[text.owner[w]]) best[text.owner[w]] = s;
  }
  return best;
}

/** Checks a row's reports are a correct top-k of `best` (float64) within `tol`. */
function assertTopK(row: Row, best: Float64Array, k: number, tol: number, what: string): void {
  assert.equal(row.reports.length, k, `${what}: k reports`);
  assert.equal(new Set(row.reports).size, k, `${what}: distinct reports`);
  for (let j = 0; j < k; j++) {
    const r = row.reports[j];
    assert.ok(Math.abs(row.scores[j] - best[r]) <= tol, `${what}: score ${j} vs float64`);
    if (j > 0) assert.ok(row.scores[j] <= row.scores[j - 1], `${what}: sorted`);
  }
  const kth = best[row.reports[k - 1]];
  for (let r = 0; r < best.length; r++) {
    if (!row.reports.includes(r)) {
      assert.ok(best[r] <= kth + tol, `${what}: report ${r} (${best[r]}) beats the k-th (${kth})`);
    }
  }
}

// ---- corpus and windows ------------------------------------------------------------------------

Deno.test("pairing corpus: BOM, CRLF, blank lines skipped with 1-based line numbers, sha256 of bytes", () => {
  const bytes = enc.encode(CORPUS_TEXT);
  const c = parseCorpus(bytes, "r.txt");
  assert.equal(c.reports.length, 7);
  assert.deepEqual([...c.lines], CORPUS_LINES);
  assert.equal(c.reports[0], "adipose tissue, large empty fat cells", "BOM and CR dropped");
  assert.equal(c.totalLines, 10);
  assert.equal(c.blankLines, 3);
  assert.equal(c.sha256, sha256Hex(bytes));
  assert.throws(
    () => parseCorpus(enc.encode("\n  \n\r\n"), "e.txt"),
    /corpus e\.txt: no text lines \(3 blank line\(s\)\)/,
  );
  const bad = new Uint8Array([...enc.encode("ok\nfine\nbad "), 0xff, 0x0a]);
  assert.throws(() => parseCorpus(bad, "b.txt"), /corpus b\.txt: line 3 is not valid UTF-8/);
});

Deno.test("pairing weights digest: hashed once, remembered by path, size and mtime", async () => {
  await withTempDir("pairing-sha-", async (dir) => {
    const file = join(dir, "w.bin"), memo = join(dir, "sha256.json");
    await Deno.writeFile(file, enc.encode("weights v1"));
    assert.equal(await cachedSha256File(file, memo), sha256Hex("weights v1"));
    // A remembered digest is used as is (here a planted one) while size and mtime match ...
    const table = JSON.parse(await Deno.readTextFile(memo));
    const key = Object.keys(table)[0];
    table[key].sha256 = "planted";
    await Deno.writeTextFile(memo, JSON.stringify(table));
    assert.equal(await cachedSha256File(file, memo), "planted");
    // ... and the file is hashed again when it changes.
    await Deno.writeFile(file, enc.encode("weights v2, longer"));
    assert.equal(await cachedSha256File(file, memo), sha256Hex("weights v2, longer"));
  });
});

Deno.test("pairing windows: first window = tokenize row, windows cover every token (CLIP and CONCH)", async () => {
  const clip = charTokenizer();
  const ctx = 12;
  for (const text of ["", "abc", "a".repeat(10), "a".repeat(11), LONG]) {
    const w = tokenWindows(clip, text, ctx);
    assert.deepEqual([...w.subarray(0, ctx)], [...clip.tokenize([text], ctx)], text.slice(0, 20));
    const content: number[] = [];
    for (let r = 0; r < w.length / ctx; r++) {
      const row = [...w.subarray(r * ctx, (r + 1) * ctx)];
      assert.equal(row[0], clip.sotToken);
      const end = row.indexOf(clip.eotToken);
      assert.ok(end > 0, "each window has its end token");
      content.push(...row.slice(1, end));
    }
    assert.deepEqual(content, clip.encode(text), "windows hold the whole text, in order");
    assert.equal(w.length / ctx, Math.max(1, Math.ceil(clip.encode(text).length / (ctx - 2))));
  }
  const conch = await ConchTokenizer.fromFile(
    new URL("./fixtures/conch/tokenizer_local.json", import.meta.url).pathname,
  );
  for (const text of ["tumour", LONG]) {
    const w = tokenWindows(conch, text, ctx);
    assert.deepEqual([...w.subarray(0, ctx)], [...conch.tokenize([text], ctx)]);
    assert.equal(w[w.length - 1], conch.padId, "the placeholder column stays pad");
  }
  assert.ok(tokenWindows(conch, LONG, ctx).length / ctx > 1);
});

// ---- the pairing file --------------------------------------------------------------------------

gpuTest(
  "pairing: file format, k rows, line numbers, scores = float64 cosines of the stored embeddings; readPairing round trip",
  async () => {
    await withTempDir("pairing-", async (dir) => {
      const model = tinyModel();
      const { ds, data, corpus } = await fixtures(dir);
      const out = join(dir, "out");
      await Deno.mkdir(out);
      const k = 3;
      const summary = await runPairing(model, corpus, data, source(ds, model), { out, k });
      for (const split of data.splits) {
        const path = join(out, `pairs-${split.name}.jsonl`);
        const { header, rows } = await readRows(path);
        assert.equal(header.format, PAIRING_FORMAT);
        assert.equal(header.split, split.name);
        assert.equal(header.k, k);
        assert.ok(!Number.isNaN(Date.parse(header.created as string)));
        assert.deepEqual(header.dataset, {
          kind: "folder",
          root: ds.root,
          classes: ["ADI", "TUM"],
          count: split.ids.length,
          fingerprint: datasetFingerprint(split.ids, split.labels, ds.classes),
        });
        assert.deepEqual(header.corpus, {
          path: corpus.path,
          sha256: corpus.sha256,
          reports: 7,
          lines: 10,
          blank: 3,
          truncated: 3,
        });
        const m = header.model as Record<string, unknown>;
        assert.deepEqual(
          [m.name, m.weights_sha256, m.context_length, m.chunk],
          ["tiny", null, 77, false],
        );
        assert.equal(rows.length, split.ids.length);
        // The stored embeddings (both from the caches: nothing is embedded again).
        const text = await embedCorpus(model.text, model.tokenizer, corpus, {
          cacheDir: join(out, "cache"),
          modelKey: modelKey(model.identity),
        });
        assert.ok(text.cached, "the corpus embeddings come from the cache");
        const img = await embedSplitImages(model.image, split, noImages, {
          cacheDir: join(out, "cache"),
          modelKey: modelKey(model.identity),
          datasetRoot: ds.root,
        });
        assert.equal(img.cached, split.ids.length);
        const top1: number[] = [];
        rows.forEach((row, i) => {
          assert.equal(row.i, i);
          assert.equal(row.id, split.ids[i]);
          assert.equal(row.id, `${split.name}/${row.label}/${row.id.split("/")[2]}`);
          assert.equal(row.label, ds.classes[split.labels[i]]);
          assert.deepEqual(row.lines, row.reports.map((r) => CORPUS_LINES[r]), "1-based lines");
          assertTopK(row, bruteTopK(img.embeds, i, text, 7), k, 1e-5, `${split.name} #${i}`);
          top1.push(row.scores[0]);
        });
        const s = summary.splits[split.name];
        assert.equal(s.count, rows.length);
        assert.equal(s.scores.max, Math.max(...top1));
        assert.equal(s.scores.min, Math.min(...top1));
        assert.equal(s.histogram.counts.length, 20);
        assert.equal(s.histogram.counts.reduce((a, b) => a + b), rows.length);
        assert.equal(s.distinct_top1, new Set(rows.map((r) => r.reports[0])).size);
        assert.equal(s.top_reports[0].text, corpus.reports[s.top_reports[0].report].slice(0, 100));
        // readPairing gives back the same table.
        const p = await readPairing(path, expectation(split, ds.classes, corpus, k));
        assert.equal(p.k, k);
        assert.deepEqual([...p.indices], rows.flatMap((r) => r.reports));
        assert.deepEqual([...p.scores], rows.flatMap((r) => r.scores).map(Math.fround));
      }
      const js = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
      assert.equal(js.corpus.truncated, 3);
      assert.deepEqual(Object.keys(js.splits), ["train", "val"]);
    });
  },
);

function expectation(
  split: { name: string; ids: readonly string[]; labels: Int32Array },
  classes: string[],
  corpus: Corpus,
  k = 1,
): PairingExpectation {
  return {
    split: split.name,
    ids: split.ids,
    labels: split.labels,
    classes,
    corpus: { sha256: corpus.sha256, reports: corpus.reports.length, label: "--corpus r.txt" },
    k,
  };
}

gpuTest(
  "pairing: --chunk scores a report by its best window, equal to a brute-force CPU max",
  async () => {
    await withTempDir("pairing-chunk-", async (dir) => {
      const model = tinyModel();
      const { ds, data, corpus } = await fixtures(dir);
      const out = join(dir, "out");
      await Deno.mkdir(out);
      const k = 2;
      // Three reports are longer than the 77-token context and span several windows.
      const train = { ...data, splits: data.splits.slice(0, 1) };
      const summary = await runPairing(model, corpus, train, source(ds, model), {
        out,
        k,
        chunk: true,
      });
      assert.ok(summary.corpus.max_windows >= 3, `windows: ${summary.corpus.max_windows}`);
      assert.equal(summary.chunk.k_prime, k * summary.corpus.max_windows);
      const cacheDir = join(out, "cache"), key = modelKey(model.identity);
      const text = await embedCorpus(model.text, model.tokenizer, corpus, {
        cacheDir,
        modelKey: key,
        chunk: true,
      });
      assert.ok(text.cached && text.rows > corpus.reports.length);
      // Window 0 of each report is the truncated row of the same context.
      const trunc = await embedCorpus(model.text, model.tokenizer, corpus, {});
      for (let r = 0; r < corpus.reports.length; r++) {
        const w0 = text.owner.indexOf(r);
        assert.ok(cos64(text.embeds, w0, trunc.embeds, r, text.dim) > 1 - 1e-6, `report ${r}`);
      }
      const split = train.splits[0];
      const img = await embedSplitImages(model.image, split, noImages, {
        cacheDir,
        modelKey: key,
        datasetRoot: ds.root,
      });
      const { rows } = await readRows(join(out, "pairs-train.jsonl"));
      rows.forEach((row, i) =>
        assertTopK(row, bruteTopK(img.embeds, i, text, 7), k, 1e-5, `#${i}`)
      );
    });
  },
);

gpuTest(
  "pairing: chunk top-k exact when k x windows exceeds 64 (clamped, completed on the CPU)",
  async () => {
    // 30 reports x 5 near-identical windows; k = 20 asks for 100 > 64 windows, and the best 64
    // windows of an image cover only about 13 reports, so most rows need the CPU completion.
    const d = 8, reports = 30, per = 5, rng = new Rng(5);
    const embeds = new Float32Array(reports * per * d), owner = new Int32Array(reports * per);
    for (let r = 0; r < reports; r++) {
      const base = Array.from({ length: d }, () => rng.normal());
      for (let w = 0; w < per; w++) {
        owner[r * per + w] = r;
        for (let j = 0; j < d; j++) embeds[(r * per + w) * d + j] = base[j] + 0.01 * rng.normal();
      }
    }
    const norm = (x: Float32Array) => {
      for (let i = 0; i < x.length; i += d) {
        const n = Math.hypot(...x.subarray(i, i + d));
        for (let j = 0; j < d; j++) x[i + j] /= n;
      }
    };
    norm(embeds);
    const text: CorpusEmbeddings = {
      embeds,
      dim: d,
      rows: reports * per,
      owner,
      maxWindows: per,
      truncated: 0,
      chunk: true,
      cached: false,
      cacheFile: null,
    };
    const images = Float32Array.from({ length: 6 * d }, () => rng.normal());
    norm(images);
    const k = 20;
    const top = await topKReports(images, text, reports, k);
    assert.ok(top.clamped && top.kPrime === 64);
    assert.ok(top.cpuRows > 0, "some rows needed the CPU completion");
    for (let i = 0; i < 6; i++) {
      const row: Row = {
        i,
        id: "",
        label: "",
        reports: [...top.indices.subarray(i * k, (i + 1) * k)],
        lines: [],
        scores: [...top.scores.subarray(i * k, (i + 1) * k)],
      };
      assertTopK(row, bruteTopK(images, i, text, reports), k, 1e-5, `image ${i}`);
    }
  },
);

// ---- resume ------------------------------------------------------------------------------------

gpuTest(
  "pairing: interrupted after the first saved chunk, a rerun resumes and gives the same pairing",
  async () => {
    await withTempDir("pairing-resume-", async (dir) => {
      const model = tinyModel();
      const { ds, data, corpus } = await fixtures(dir);
      const train = { ...data, splits: data.splits.slice(0, 1) };
      const opts = (out: string): RunPairingOptions => ({
        out,
        k: 2,
        imageChunk: 4,
        now: new Date(0),
      });
      const a = join(dir, "a"), b = join(dir, "b");
      await Deno.mkdir(a);
      await Deno.mkdir(b);
      const full = await runPairing(model, corpus, train, source(ds, model), opts(a));
      assert.equal(full.splits.train.embedded, 10);

      const stop = new AbortController();
      const onProgress = (p: PairingProgress) => {
        if (p.stage === "images" && p.saved) stop.abort(new Error("test stop"));
      };
      await assert.rejects(
        runPairing(model, corpus, train, source(ds, model), {
          ...opts(b),
          signal: stop.signal,
          onProgress,
        }),
        /test stop/,
      );
      const chunks = [...Deno.readDirSync(join(b, "cache"))].filter((e) =>
        /^train-images-.*\.safetensors$/.test(e.name)
      );
      assert.equal(chunks.length, 1, "one chunk saved before the stop");
      await assert.rejects(Deno.stat(join(b, "pairs-train.jsonl")), Deno.errors.NotFound);

      const resumed = await runPairing(model, corpus, train, source(ds, model), opts(b));
      assert.equal(resumed.splits.train.cached, 4);
      assert.equal(resumed.splits.train.embedded, 6, "only the images after the saved chunk");
      const ra = (await readRows(join(a, "pairs-train.jsonl"))).rows;
      const rb = (await readRows(join(b, "pairs-train.jsonl"))).rows;
      assert.deepEqual(rb.map((r) => r.reports), ra.map((r) => r.reports));
      rb.forEach((r, i) =>
        r.scores.forEach((s, j) => assert.ok(Math.abs(s - ra[i].scores[j]) <= 1e-6, `#${i}`))
      );
      // A chunk of another model is not reused.
      const other = { ...model, identity: { ...model.identity, weights: "random (seed 4)" } };
      const again = await runPairing(other, corpus, train, source(ds, model), opts(b));
      assert.equal(again.splits.train.cached, 0);
    });
  },
);

// ---- readPairing refusals ----------------------------------------------------------------------

gpuTest(
  "readPairing: refuses another split, one image more, another order, another label, another corpus, a malformed line, too small k",
  async () => {
    await withTempDir("pairing-read-", async (dir) => {
      const model = tinyModel();
      const { ds, data, corpus } = await fixtures(dir);
      const train = { ...data, splits: data.splits.slice(0, 1) };
      const out = join(dir, "out");
      await Deno.mkdir(out);
      await runPairing(model, corpus, train, source(ds, model), { out, k: 2 });
      const path = join(out, "pairs-train.jsonl");
      const split = train.splits[0];
      const ok = expectation(split, ds.classes, corpus);
      await readPairing(path, ok);

      const more = {
        ...ok,
        ids: [...split.ids, "train/TUM/extra.png"],
        labels: [...split.labels, 1],
      };
      await assert.rejects(
        readPairing(path, more),
        new RegExp(
          `pairs-train\\.jsonl was made for 10 images of split train of dataset folder:.*, but ` +
            `this split has 11 \\(the first 10 match; then this split has #10: train/TUM/extra\\.png\\)`,
        ),
      );
      const fewer = { ...ok, ids: split.ids.slice(1), labels: split.labels.slice(1) };
      await assert.rejects(
        readPairing(path, fewer),
        /made for 10 images .* but this split has 9 \(first difference at #0: train\/ADI\/ADI-0\.png vs train\/ADI\/ADI-1\.png\)/,
      );
      const swapped = [...split.ids];
      [swapped[2], swapped[3]] = [swapped[3], swapped[2]];
      await assert.rejects(
        readPairing(path, { ...ok, ids: swapped }),
        /image #2 is train\/ADI\/ADI-2\.png there and train\/ADI\/ADI-3\.png in this split \(other images or another order\)/,
      );
      const relabelled = Int32Array.from(split.labels);
      relabelled[7] = 0;
      await assert.rejects(
        readPairing(path, { ...ok, labels: relabelled }),
        /pairs-train\.jsonl: image #7 train\/TUM\/TUM-2\.png has label TUM there but ADI in this split/,
      );
      await assert.rejects(
        readPairing(path, { ...ok, corpus: { ...ok.corpus, sha256: "cd34".repeat(16) } }),
        new RegExp(
          `made from corpus .*reports\\.txt \\(sha256 ${corpus.sha256.slice(0, 12)}\\.\\., 7 ` +
            `reports\\); --corpus r\\.txt is sha256 cd34cd34cd34\\.\\. \\(7 reports\\)`,
        ),
      );
      await assert.rejects(
        readPairing(path, { ...ok, split: "val" }),
        /pairs split train, not split val/,
      );
      await assert.rejects(
        readPairing(path, { ...ok, classes: ["TUM", "ADI"] }),
        /made with classes \[ADI, TUM\] but the dataset has \[TUM, ADI\]/,
      );
      await assert.rejects(
        readPairing(path, { ...ok, k: 3 }),
        /has k = 2 report\(s\) per image, but 3 are needed/,
      );

      const lines = (await Deno.readTextFile(path)).split("\n");
      const broken = join(out, "broken.jsonl");
      await Deno.writeTextFile(
        broken,
        [...lines.slice(0, 4), '{"i":3,"id":', ...lines.slice(5)].join("\n"),
      );
      await assert.rejects(readPairing(broken, ok), /broken\.jsonl line 5: not valid JSON/);
      const row = JSON.parse(lines[3]);
      row.reports = [row.reports[0], 99];
      await Deno.writeTextFile(
        broken,
        [...lines.slice(0, 3), JSON.stringify(row), ...lines.slice(4)].join("\n"),
      );
      await assert.rejects(
        readPairing(broken, ok),
        /broken\.jsonl line 4: report index 99 is outside 0\.\.6/,
      );
      await Deno.writeTextFile(broken, lines.slice(0, 6).join("\n"));
      await assert.rejects(
        readPairing(broken, ok),
        /the header says 10 images but the file has 5 rows/,
      );
    });
  },
);

Deno.test("randomPairing: deterministic per seed, k distinct reports in range, seeds differ", () => {
  const a = randomPairing(50, 7, 3, 11), b = randomPairing(50, 7, 3, 11);
  assert.deepEqual(a.indices, b.indices);
  assert.notDeepEqual(a.indices, randomPairing(50, 7, 3, 12).indices);
  assert.equal(a.k, 3);
  assert.equal(a.indices.length, 150);
  for (let i = 0; i < 50; i++) {
    const row = [...a.indices.subarray(i * 3, i * 3 + 3)];
    assert.equal(new Set(row).size, 3);
    assert.ok(row.every((r) => r >= 0 && r < 7));
  }
  const counts = new Array(7).fill(0);
  for (const r of randomPairing(7000, 7, 1, 1).indices) counts[r]++;
  assert.ok(counts.every((c) => c > 850 && c < 1150), `uniform: ${counts}`);
  assert.throws(() => randomPairing(5, 0, 1, 0), /reports must be an integer >= 1/);
});

// ---- command line ------------------------------------------------------------------------------

/** GPT-2's byte characters in CLIP's order: vocab.json of a merges-free CLIP tokenizer. */
function charVocab(): Record<string, number> {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const chars = cs.map((c) => String.fromCharCode(c));
  const vocab: Record<string, number> = {};
  [...chars, ...chars.map((c) => c + "</w>"), "<|startoftext|>", "<|endoftext|>"].forEach(
    (t, i) => vocab[t] = i,
  );
  return vocab;
}

gpuTest(
  "cli pair: writes the files, resumes after an interruption (exit 130), exit 2 for bad inputs",
  async () => {
    await withTempDir("pairing-cli-", async (dir) => {
      await writeFolderDataset(join(dir, "ds"));
      await Deno.writeFile(join(dir, "reports.txt"), enc.encode(CORPUS_TEXT));
      await Deno.mkdir(join(dir, "tok"));
      await Deno.writeTextFile(join(dir, "tok", "vocab.json"), JSON.stringify(charVocab()));
      await Deno.writeTextFile(join(dir, "tok", "merges.txt"), "#version: 0.2\n");
      const out = join(dir, "out");
      const args = [
        ...["--dataset", "folder", "--root", join(dir, "ds"), "--corpus", join(dir, "reports.txt")],
        ...["--arch", "tiny", "--weights", "random", "--tokenizer", join(dir, "tok")],
        ...["--out", out, "--k", "2", "--save-every", "4", "--batch", "4", "--workers", "1"],
        "--quiet",
      ];
      const stop = new AbortController();
      const code = await pairCommand(args, {
        signal: stop.signal,
        onProgress: (p) => {
          if (p.stage === "images" && p.saved) stop.abort();
        },
      });
      assert.equal(code, 130);
      let embedded = 0;
      assert.equal(
        await pairCommand(args, {
          onProgress: (p) => {
            if (p.stage === "images" && p.done === p.total) embedded += p.done - p.cached;
          },
        }),
        0,
      );
      assert.equal(embedded, 14 - 4, "the first saved chunk is not embedded again");
      const { header } = await readRows(join(out, "pairs-val.jsonl"));
      assert.equal((header.model as Record<string, unknown>).tokenizer, join(dir, "tok"));
      const summary = JSON.parse(await Deno.readTextFile(join(out, "summary.json")));
      assert.deepEqual(Object.keys(summary.splits), ["train", "val"]);

      const without = (flag: string) => {
        const i = args.indexOf(flag);
        return [...args.slice(0, i), ...args.slice(i + 2)];
      };
      assert.equal(await pairCommand(without("--corpus")), 2);
      assert.equal(await pairCommand([...args, "--k", "99"]), 2);
      assert.equal(await pairCommand([...args, "--k", "8"]), 2, "more than the 7 reports");
      assert.equal(await pairCommand([...args, "--splits", "test"]), 2, "no test split");
      assert.equal(await pairCommand([...without("--root"), "--root", join(dir, "none")]), 2);
      await Deno.writeTextFile(join(dir, "file"), "");
      assert.equal(await pairCommand([...without("--out"), "--out", join(dir, "file")]), 2);
      assert.equal(await pairCommand([...args, "--model", "blip"]), 2);
    });
  },
);

// ---- real data ---------------------------------------------------------------------------------

gpuTest(
  "pairing: the 42 CRC tiles and 376 TCGA reports with a random-weight tiny CLIP (needs ../shared/data)",
  async () => {
    await withTempDir("pairing-real-", async (dir) => {
      const cfg = builtinConfig("tiny");
      const clip = new ClipModel(cfg, { seed: 0 });
      try {
        const tokPath = join(SHARED_DATA, "clip-bpe", "bpe_simple_vocab_16e6.txt.gz");
        const model: PairingModel = {
          image: ClipImageBackbone.fromClip(clip),
          text: new ClipTextEncoder(clip),
          tokenizer: await ClipTokenizer.load(tokPath),
          identity: {
            name: "tiny",
            weights: "random (seed 0)",
            weightsSha256: null,
            config: configToJson(cfg),
            tokenizer: tokPath,
            tokenizerSha256: "clip-bpe",
          },
        };
        const ds = await openDataset("flat", join(SHARED_DATA, "crc-tiles"), {
          classes: ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"],
        });
        const data = pairingDataset(ds);
        const corpus = await readCorpus(join(SHARED_DATA, "reports", "tcga-colon-reports.txt"));
        assert.equal(corpus.reports.length, 376);
        const out = join(dir, "out");
        await Deno.mkdir(out);
        const summary = await runPairing(model, corpus, data, source(ds, model), { out, k: 5 });
        assert.ok(summary.corpus.truncated! > 300, `truncated: ${summary.corpus.truncated}`);
        let images = 0;
        for (const split of data.splits) {
          const p = await readPairing(
            join(out, `pairs-${split.name}.jsonl`),
            expectation(split, ds.classes, corpus, 5),
          );
          assert.equal(p.indices.length, split.ids.length * 5);
          images += split.ids.length;
        }
        assert.equal(images, 42);
      } finally {
        clip.dispose();
      }
    });
  },
  !hasSharedData,
);
