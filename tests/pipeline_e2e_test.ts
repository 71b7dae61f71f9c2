/**
 * The command line end to end, as a user runs it: pair -> train baseline -> train clipit -> eval
 * -> predict, each a `deno run -A cli.ts ...` subprocess, on a small synthetic world (files on
 * disk, a word tokenizer, the demo's shipped tiny CLIP), checking every file each step must
 * write. Then the same on the real tiles and reports of ../shared/data with a
 * random-weight tiny CLIP and CLIP's BPE (skipped when the folder is absent).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeWorld } from "../train/data/world.ts";
import { WORLD_CLASSES } from "../train/data/world_factors.ts";

const CLI = fileURLToPath(new URL("../cli.ts", import.meta.url));
const SHARED = fileURLToPath(new URL("../../shared/data/", import.meta.url));

/** Run `cli.ts args`; returns the exit code and the output. */
async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const p = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: p.code, out: dec.decode(p.stdout), err: dec.decode(p.stderr) };
}

async function ok(args: string[]): Promise<string> {
  const r = await cli(args);
  assert.equal(r.code, 0, `cli.ts ${args.join(" ")} failed:\n${r.err}\n${r.out}`);
  return r.out;
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Every file of a finished run folder, and sane contents. */
async function checkRun(dir: string, stage: string): Promise<void> {
  for (
    const f of [
      "config.json",
      "metrics.jsonl",
      "last.ckpt.safetensors",
      "best.ckpt.safetensors",
      "model.safetensors",
      "eval.json",
      "report.html",
    ]
  ) {
    assert.ok(await exists(join(dir, f)), `${stage}: ${f} written`);
  }
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  assert.equal(config.stage, stage);
  assert.ok(config.environment.adapter.description !== undefined);
  const records = (await Deno.readTextFile(join(dir, "metrics.jsonl"))).trim().split("\n").map((
    l,
  ) => JSON.parse(l));
  assert.ok(records.some((r) => r.type === "train"));
  assert.ok(records.some((r) => r.type === "val"));
  assert.ok(records.some((r) => r.type === "test"));
  const html = await Deno.readTextFile(join(dir, "report.html"));
  assert.match(html, /<svg/);
}

Deno.test({
  name: "pipeline e2e: pair -> baseline -> clipit -> eval -> predict through cli.ts",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "clipit-e2e-" });
    try {
      const world = join(tmp, "world");
      await writeWorld(world, {
        seed: 3,
        pretrain: 0,
        trainPerClass: 4,
        valPerClass: 2,
        testPerClass: 2,
        corpus: 30,
      });
      const data = [
        "--dataset",
        "csv",
        "--root",
        join(world, "labels.csv"),
        "--classes",
        WORLD_CLASSES.join(","),
      ];
      // Real weights (the demo's shipped tiny CLIP): the commands hash and load a checkpoint.
      const model = [
        "--arch",
        "demo-tiny",
        "--weights",
        fileURLToPath(new URL("../cli/demo_clip.safetensors", import.meta.url)),
        "--tokenizer",
        join(world, "tokenizer.json"),
      ];
      const corpus = ["--corpus", join(world, "corpus.txt")];
      const pairing = join(tmp, "pairing");
      await ok(["pair", ...data, ...corpus, ...model, "--out", pairing, "--k", "3", "--quiet"]);
      for (const s of ["train", "val", "test"]) {
        const lines = (await Deno.readTextFile(join(pairing, `pairs-${s}.jsonl`))).trim()
          .split("\n");
        const header = JSON.parse(lines[0]);
        assert.equal(header.format, "clipit-pairing/1");
        assert.equal(lines.length - 1, header.dataset.count);
        assert.equal(JSON.parse(lines[1]).reports.length, 3);
      }
      assert.ok(await exists(join(pairing, "summary.json")));

      const opt = ["--epochs", "2", "--batch", "8", "--workers", "0", "--quiet"];
      const base = join(tmp, "baseline"), clipit = join(tmp, "clipit");
      await ok(["train", "--stage", "baseline", ...data, ...model, ...opt, "--out", base]);
      await checkRun(base, "baseline");
      await ok([
        "train",
        "--stage",
        "clipit",
        ...data,
        ...model,
        ...corpus,
        "--pairing",
        pairing,
        "--init-head",
        join(base, "model.safetensors"),
        "--lora-rank",
        "4",
        ...opt,
        "--out",
        clipit,
      ]);
      await checkRun(clipit, "clipit");

      // eval: the stored report, recomputed from model.safetensors (LoRA merged) equal to it.
      const evalOut = join(tmp, "eval.json");
      const printed = await ok(["eval", base, clipit, "--out", evalOut, "--quiet"]);
      assert.match(printed, /mean \+\/- std over 2 runs/);
      const agg = JSON.parse(await Deno.readTextFile(evalOut));
      assert.equal(agg.runs.length, 2);
      assert.ok(agg.aggregate.balanced_accuracy.mean >= 0);
      const stored = JSON.parse(await Deno.readTextFile(join(clipit, "eval.json")));
      const again = JSON.parse(await ok(["eval", clipit, "--recompute", "--json", "--quiet"]));
      assert.deepEqual(again.runs[0].confusion, stored.confusion);

      // predict: one CSV row per image, probabilities summing to 1.
      const csv = join(tmp, "pred.csv");
      await ok([
        "predict",
        "--model",
        join(clipit, "model.safetensors"),
        "--images",
        join(world, "images", "test"),
        "--out",
        csv,
        "--quiet",
      ]);
      const rows = (await Deno.readTextFile(csv)).trim().split("\n");
      assert.equal(rows[0], `path,prediction,${WORLD_CLASSES.map((c) => `p_${c}`).join(",")}`);
      assert.equal(rows.length - 1, 2 * WORLD_CLASSES.length);
      for (const r of rows.slice(1)) {
        const p = r.split(",").slice(2).map(Number);
        assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-4, r);
      }

      // Outputs onto inputs are refused and leave them as they were.
      const modelFile = join(clipit, "model.safetensors");
      const modelBytes = await Deno.readFile(modelFile);
      const onModel = await cli([
        "predict",
        "--model",
        modelFile,
        "--images",
        join(world, "images", "test"),
        "--out",
        modelFile,
      ]);
      assert.equal(onModel.code, 2);
      assert.match(onModel.err, /--out .*is the same file as --model/);
      const onEval = await cli(["eval", clipit, "--out", join(clipit, "eval.json"), "--quiet"]);
      assert.equal(onEval.code, 2);
      assert.match(onEval.err, /--out .*eval\.json: is the same file as run/);
      assert.deepEqual(await Deno.readFile(modelFile), modelBytes);

      // A pairing file made for another corpus is refused, naming it; nothing is written.
      const other = join(tmp, "other.txt");
      await Deno.writeTextFile(other, "a different corpus\nof two reports\n");
      const bad = await cli([
        "train",
        "--stage",
        "clipit",
        ...data,
        ...model,
        "--corpus",
        other,
        "--pairing",
        pairing,
        ...opt,
        "--out",
        join(tmp, "bad"),
      ]);
      assert.equal(bad.code, 2);
      assert.match(bad.err, /pairs-train\.jsonl.*corpus/s);
      assert.equal(await exists(join(tmp, "bad", "config.json")), false);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

const haveShared = await exists(join(SHARED, "reports", "tcga-colon-reports.txt"));

Deno.test({
  name: "pipeline e2e: the real CRC tiles and TCGA reports with a random-weight tiny CLIP",
  ignore: !haveShared,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "clipit-e2e-real-" });
    try {
      // The tiles' label is their file-name prefix. Every class needs a training and a
      // validation image, so the one BACK tile stays out (a copy of the other 41).
      const tiles = join(tmp, "tiles");
      await Deno.mkdir(tiles);
      for await (const e of Deno.readDir(join(SHARED, "crc-tiles"))) {
        if (e.isFile && !e.name.startsWith("BACK") && /\.(png|tif)$/.test(e.name)) {
          await Deno.copyFile(join(SHARED, "crc-tiles", e.name), join(tiles, e.name));
        }
      }
      const classes = "ADI,DEB,LYM,MUC,MUS,NORM,STR,TUM";
      const data = [
        "--dataset",
        "flat",
        "--root",
        tiles,
        "--classes",
        classes,
        "--val-fraction",
        "0.25",
        "--test-fraction",
        "0.25",
      ];
      const model = ["--arch", "tiny", "--weights", "random"];
      const corpus = ["--corpus", join(SHARED, "reports", "tcga-colon-reports.txt")];
      const pairing = join(tmp, "pairing");
      const summary = await cli(["pair", ...data, ...corpus, ...model, "--out", pairing]);
      assert.equal(summary.code, 0, summary.err);
      assert.match(summary.out + summary.err, /truncated/);
      const opt = ["--epochs", "1", "--batch", "8", "--workers", "0", "--quiet"];
      const base = join(tmp, "baseline");
      await ok(["train", "--stage", "baseline", ...data, ...model, ...opt, "--out", base]);
      await ok([
        "train",
        "--stage",
        "clipit",
        ...data,
        ...model,
        ...corpus,
        "--pairing",
        pairing,
        "--init-head",
        join(base, "model.safetensors"),
        "--lora-rank",
        "4",
        ...opt,
        "--out",
        join(tmp, "clipit"),
      ]);
      const r = JSON.parse(await Deno.readTextFile(join(tmp, "clipit", "eval.json")));
      assert.equal(r.classes.length, 8);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
