/**
 * The experiment runner (train/experiment.ts, cli/experiment.ts): the results table's
 * arithmetic (mean, sample std, delta, paired delta) on synthetic eval.json files against
 * numbers worked out by hand; resumption (stopped by the abort signal during the second run, a
 * rerun skips the finished run, resumes the interrupted one from its checkpoint and starts the
 * rest; a rerun with other settings is refused); and `cli.ts experiment` end to end on the real
 * CRC tiles and TCGA reports with a random-weight tiny CLIP (skipped without ../shared/data).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { encode } from "fast-png";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { builtinConfig } from "../clip/config.ts";
import { ClipModel } from "../clip/model.ts";
import { readCorpus } from "../clip/pairing_corpus.ts";
import { WordTokenizer } from "../clip/word_tokenizer.ts";
import { Rng } from "../nn/rng.ts";
import { openDataset, type Split } from "../train/data/datasets.ts";
import {
  ExperimentMismatchError,
  type ExperimentSettings,
  planExperiment,
  type RunAction,
  runExperiment,
  writeExperimentResults,
} from "../train/experiment.ts";
import { TrainingInterrupted } from "../train/loop.ts";
import { classificationReport } from "../train/metrics.ts";
import { RUN_FILES } from "../train/run.ts";
import { experimentCommand } from "../cli/experiment.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import { gpuTest } from "./util.ts";

/** A two-class report whose balanced accuracy is (r0 + r1) / 2 with recalls r0, r1 in tenths. */
function reportWith(r0: number, r1: number) {
  const labels = new Int32Array(20), probs = new Float32Array(40);
  for (let i = 0; i < 20; i++) {
    const c = i < 10 ? 0 : 1;
    labels[i] = c;
    const right = (i % 10) < (c === 0 ? r0 : r1);
    const p = right ? c : 1 - c;
    probs[i * 2 + p] = 0.9;
    probs[i * 2 + (1 - p)] = 0.1;
  }
  return classificationReport(labels, probs, ["a", "b"]);
}

const close = (a: number | null, b: number, what: string) =>
  assert.ok(a !== null && Math.abs(a - b) < 1e-9, `${what}: ${a} != ${b}`);

Deno.test("experiment results: mean, sample std, delta and paired delta of eval.json files", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const plan = planExperiment(tmp, ["clipit", "lambda0"], [0, 1, 2], {
      clipit: {},
      baseline: {},
    });
    assert.deepEqual(plan.map((r) => r.name), [
      "baseline-s0",
      "clipit-s0",
      "lambda0-s0",
      "baseline-s1",
      "clipit-s1",
      "lambda0-s1",
      "baseline-s2",
      "clipit-s2",
      "lambda0-s2",
    ]);
    // baseline 80, 85, 90 %; CLIP-IT 90, 90, 95 %; lambda0 only seed 0 (85 %), the rest pending.
    const values: Record<string, [number, number]> = {
      "baseline-s0": [8, 8],
      "baseline-s1": [8, 9],
      "baseline-s2": [9, 9],
      "clipit-s0": [9, 9],
      "clipit-s1": [9, 9],
      "clipit-s2": [9, 10],
      "lambda0-s0": [8, 9],
    };
    for (const [name, [r0, r1]] of Object.entries(values)) {
      await Deno.mkdir(join(tmp, name));
      await Deno.writeTextFile(join(tmp, name, RUN_FILES.eval), JSON.stringify(reportWith(r0, r1)));
    }
    const { summary: s, markdown } = await writeExperimentResults(tmp, plan, {}, {
      backbone: "ViT-B/16",
      dataset: "crc",
    });
    const [base, clip, l0] = s.variants;
    // By hand: mean(80, 85, 90) = 85, sample std = sqrt((25 + 0 + 25) / 2) = 5.
    close(base.balanced_accuracy.mean, 85, "baseline mean");
    close(base.balanced_accuracy.std, 5, "baseline std");
    // mean(90, 90, 95) = 91.6667, std = sqrt((25/9 + 25/9 + 100/9) / 2) = sqrt(25/3).
    close(clip.balanced_accuracy.mean, 275 / 3, "clipit mean");
    close(clip.balanced_accuracy.std, Math.sqrt(25 / 3), "clipit std");
    close(clip.delta_vs_unimodal, 275 / 3 - 85, "delta");
    // Per seed: 10, 5, 5 -> mean 6.6667, std sqrt(25/3).
    close(clip.paired_delta!.mean, 20 / 3, "paired delta mean");
    close(clip.paired_delta!.std, Math.sqrt(25 / 3), "paired delta std");
    assert.equal(l0.runs, 1);
    assert.equal(l0.balanced_accuracy.std, null, "no std of one run");
    close(l0.delta_vs_unimodal, 0, "lambda0 delta (85 vs 85)");
    close(l0.paired_delta!.mean, 5, "lambda0 paired (85 - 80)");
    assert.deepEqual(s.pending, ["lambda0-s1", "lambda0-s2"]);
    assert.equal(s.complete, false);
    assert.equal(s.headline!.row, "85.00 ± 5.00 -> 91.67 ± 2.89 (+6.67)");
    assert.match(markdown, /\| ViT-B\/16 \| crc \| 85\.00 ± 5\.00 -> 91\.67 ± 2\.89 \| \+6\.67 \|/);
    assert.match(
      markdown,
      /\| lambda0: .* \| 1\/3 \| 85\.00 \| \+0\.00 \| \+5\.00 \| s0 85\.00 \|/,
    );
    assert.match(markdown, /Not finished: lambda0-s1, lambda0-s2/);
    const onDisk = JSON.parse(await Deno.readTextFile(join(tmp, "results.json")));
    assert.deepEqual(onDisk, JSON.parse(JSON.stringify(s)));
    assert.equal(await Deno.readTextFile(join(tmp, "results.md")), markdown);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

/** 3 classes x 8 tinted 32x32 PNGs in class folders. */
async function tinyDataset(dir: string): Promise<string> {
  const rng = new Rng(3);
  for (const [c, name] of ["alpha", "beta", "gamma"].entries()) {
    await Deno.mkdir(join(dir, name), { recursive: true });
    for (let i = 0; i < 8; i++) {
      const data = new Uint8Array(32 * 32 * 3);
      for (let p = 0; p < data.length; p++) {
        data[p] = Math.min(255, Math.floor(rng.next() * 160 + (p % 3 === c ? 90 : 0)));
      }
      await Deno.writeFile(
        join(dir, name, `${i}.png`),
        encode({ width: 32, height: 32, data, channels: 3 }),
      );
    }
  }
  return dir;
}

gpuTest(
  "experiment: stopped during its second run, a rerun skips the first, resumes the second",
  async () => {
    const tmp = await Deno.makeTempDir();
    try {
      const root = await tinyDataset(join(tmp, "data"));
      const ds = await openDataset("folder", root, { valFraction: 0.25, testFraction: 0.25 });
      const words = ["red", "green", "blue", "round", "flat", "dense", "loose", "pale"];
      await Deno.writeTextFile(
        join(tmp, "corpus.txt"),
        Array.from({ length: 9 }, (_, m) => `${words[m % 8]} ${words[(m * 3) % 8]} tissue`)
          .join("\n") + "\n",
      );
      const corpus = await readCorpus(join(tmp, "corpus.txt"));
      const tokenizer = WordTokenizer.fromWords([...words, "tissue"]);
      const config = builtinConfig("tiny-test");
      const pairing = Object.fromEntries(
        ds.splits.map((s: Split) => [s.name, {
          reports: Int32Array.from(s.labels, (l, i) => (3 * l + i) % 9),
          scores: new Float32Array(s.labels.length).fill(0.5),
        }]),
      );
      const inputs = {
        dataset: ds,
        corpus,
        pairing,
        tokenizer,
        load: () => {
          const clip = new ClipModel(config, { seed: 1 });
          return Promise.resolve({
            backbone: ClipImageBackbone.fromClip(clip),
            textEncoder: new ClipTextEncoder(clip),
          });
        },
        backboneKey: "tiny-test:1",
        fingerprint: { models: "tiny-test seed 1" },
      };
      const settings: ExperimentSettings = {
        clipit: { epochs: 1, batchSize: 4, logEvery: 1, workers: 0, lora: { rank: 2 } },
        baseline: { epochs: 1, batchSize: 4, logEvery: 1, workers: 0 },
      };
      const out = join(tmp, "exp");
      const plan = planExperiment(out, ["clipit", "random-pairing"], [0], settings);
      const events: [string, RunAction][] = [];
      const stop = new AbortController();
      await assert.rejects(
        runExperiment(out, plan, inputs, {
          signal: stop.signal,
          onRun: (e) => events.push([e.run.name, e.action]),
          stageControl: (run) => ({
            onProgress: (p) => {
              if (run.variant === "clipit" && p.phase === "train" && p.step === 1) stop.abort();
            },
          }),
        }),
        TrainingInterrupted,
      );
      assert.deepEqual(events, [["baseline-s0", "start"], ["clipit-s0", "start"]]);
      const baselineEval = join(out, "baseline-s0", RUN_FILES.eval);
      const evalBefore = await Deno.readTextFile(baselineEval);
      const mtime = (await Deno.stat(baselineEval)).mtime;
      assert.ok(await Deno.stat(join(out, "clipit-s0", RUN_FILES.last)), "a checkpoint to resume");
      await assert.rejects(Deno.stat(join(out, "clipit-s0", RUN_FILES.eval)));
      const partial = JSON.parse(await Deno.readTextFile(join(out, "results.json")));
      assert.deepEqual(partial.pending, ["clipit-s0", "random-pairing-s0"]);

      // The same experiment with other settings is refused before anything trains.
      const other = planExperiment(out, ["clipit", "random-pairing"], [0], {
        ...settings,
        clipit: { ...settings.clipit, lr: 0.5 },
      });
      await assert.rejects(
        runExperiment(out, other, inputs),
        (e) => e instanceof ExperimentMismatchError && e.fields.includes("settings.lr"),
      );

      events.length = 0;
      const done = await runExperiment(out, plan, inputs, {
        onRun: (e) => events.push([e.run.name, e.action]),
      });
      assert.deepEqual(events, [
        ["baseline-s0", "skip"],
        ["clipit-s0", "resume"],
        ["random-pairing-s0", "start"],
      ]);
      assert.equal(await Deno.readTextFile(baselineEval), evalBefore);
      assert.deepEqual((await Deno.stat(baselineEval)).mtime, mtime, "the finished run untouched");
      // The resumed run's log reads as one run: every step once.
      const metrics = (await Deno.readTextFile(join(out, "clipit-s0", RUN_FILES.metrics)))
        .trim().split("\n").map((l) => JSON.parse(l));
      const steps = metrics.filter((r) => r.type === "train").map((r) => r.step);
      assert.deepEqual(steps, [1, 2, 3], "3 batches of 4 in the 12 training images");
      assert.equal(done.summary.complete, true);
      assert.deepEqual(done.summary.variants.map((v) => v.runs), [1, 1, 1]);
      assert.ok(done.summary.headline, "the unimodal -> CLIP-IT row");
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
);

gpuTest(
  "cli experiment: real CRC tiles and TCGA reports, random tiny CLIP, 1 seed, 1 epoch",
  async () => {
    const tmp = await Deno.makeTempDir();
    try {
      const args = [
        "--dataset",
        "flat",
        "--root",
        join(SHARED_DATA, "crc-tiles"),
        "--classes",
        "ADI,BACK,DEB,LYM,MUC,MUS,NORM,STR,TUM",
        "--val-fraction",
        "0.25",
        "--test-fraction",
        "0.25",
        "--corpus",
        join(SHARED_DATA, "reports", "tcga-colon-reports.txt"),
        "--weights",
        "random",
        "--arch",
        "tiny",
        "--seeds",
        "1",
        "--variants",
        "clipit",
        "--epochs",
        "1",
        "--batch",
        "12",
        "--workers",
        "0",
        "--quiet",
        "--out",
        join(tmp, "exp"),
      ];
      assert.equal(await experimentCommand(args), 0);
      const s = JSON.parse(await Deno.readTextFile(join(tmp, "exp", "results.json")));
      assert.equal(s.complete, true);
      assert.deepEqual(s.variants.map((v: { variant: string }) => v.variant), [
        "baseline",
        "clipit",
      ]);
      assert.match(s.headline.row, /^\d+\.\d\d -> \d+\.\d\d \([+-]\d+\.\d\d\)$/);
      const md = await Deno.readTextFile(join(tmp, "exp", "results.md"));
      assert.match(md, /\| tiny image tower \(random weights\) \| flat \|/);
      // Rerun: everything finished, nothing trains; other options: refused with exit 2.
      assert.equal(await experimentCommand(args), 0);
      assert.equal(await experimentCommand([...args, "--lr", "0.01"]), 2);
      assert.equal(await experimentCommand(["--demo", "--root", "x", "--out", tmp]), 2);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
  !hasSharedData,
);
