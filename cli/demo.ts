/**
 * `cli.ts demo` (`deno task demo`): the whole CLIP-IT pipeline on a built-in default, downloading
 * nothing. It says plainly that everything in it is synthetic.
 *
 * 1. A generated histology-like world (train/data/world.ts): 32x32 H&E-like tiles whose class is
 *    decided by a few visual factors under strong nuisance variation, reports that describe those
 *    factors in varied words (never the class), a small labelled training split, and an
 *    unpaired report corpus. Written as PNG files, a CSV manifest and a text corpus: from here on
 *    the demo reads them as `cli.ts` reads real data.
 * 2. A tiny CLIP pretrained contrastively on a separate paired part of that world (the stand-in
 *    for QuiltNet, PLIP or CONCH).
 * 3. Pairing: every image of every split with its most similar corpus reports.
 * 4. For each seed: the unimodal baseline (frozen image tower + linear head), then CLIP-IT (LoRA
 *    on both towers, distillation, text-branch head, late fusion) started from that head.
 * 5. The comparison table (balanced accuracy, mean +/- std over the seeds), the elapsed time and
 *    where the report is. Whatever the numbers show is printed as it is.
 */
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { pairingFileName } from "../clip/pairing.ts";
import { runPairing } from "../clip/pairing_run.ts";
import { loaderImageSource, pairingDataset } from "../train/data/pairing_source.ts";
import type { World, WorldOptions } from "../train/data/world.ts";
import { classOf } from "../train/data/world_factors.ts";
import { aggregateRuns, type ClassificationReport } from "../train/metrics.ts";
import { formatComparisonTable } from "../train/metrics_table.ts";
import { runStage, type SplitPairing, type StageInputs } from "../train/pipeline.ts";
import { environmentInfo, RUN_FILES, RunDir } from "../train/run.ts";
import type { ClipItSettings } from "../train/clipit_train.ts";
import { intOption } from "./args.ts";
import { type DemoPretrain, prepareDemoWorld } from "./demo_setup.ts";
import { Progress } from "./progress.ts";

const USAGE = `usage: deno run -A cli.ts demo [--out DIR] [--seeds N] [--fresh] [--quiet]

CLIP-IT end to end on a generated (synthetic) histology-like world, downloading nothing:
world -> tiny CLIP pretrained contrastively -> pairing -> baseline and CLIP-IT per seed ->
balanced accuracy, mean +/- std.

  --out DIR     where the world, the CLIP, the pairing and the runs go (default out/demo)
  --seeds N     training seeds (default 3)
  --fresh       recompute everything (default: reuse the world and the CLIP of an earlier demo)
  --quiet       no progress bars
  -h, --help    this text`;

/** The demo's world: the defaults of train/data/world.ts. */
export const WORLD: WorldOptions = { seed: 1 };
/** Pretraining of the tiny CLIP. */
export const PRETRAIN: DemoPretrain = { steps: 400, batchSize: 128, lr: 2e-3, seed: 7 };
/** Stage settings, the paper's defaults where they fit a 64-image training split. */
export const STAGE: ClipItSettings = {
  epochs: 30,
  batchSize: 64,
  lr: 1e-3,
  weightDecay: 1e-4,
  maxGradNorm: 0.5,
  lambda: 1,
  lora: { rank: 16, alpha: 8 },
  logEvery: 10,
  workers: 1,
};
export const BASELINE: ClipItSettings = { ...STAGE, epochs: 100, batchSize: 32 };

function say(quiet: boolean, line: string): void {
  if (!quiet) console.error(line);
}

/** Run the demo with the arguments after the command name. */
export async function demoCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        out: { type: "string", default: "out/demo" },
        seeds: { type: "string", default: "3" },
        fresh: { type: "boolean", default: false },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`demo: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const problems: string[] = [];
  const seeds = intOption("seeds", values.seeds, 1, problems)!;
  if (problems.length) {
    console.error(`demo: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const quiet = values.quiet, out = resolve(values.out!);
  const t0 = performance.now();
  const gpu = await init();
  console.log(
    "CLIP-IT demo. Everything here is SYNTHETIC: generated H&E-like tiles, generated reports and " +
      "a tiny CLIP trained on them in this run; the numbers say nothing about real pathology.",
  );
  say(quiet, `demo: adapter ${gpu.adapter.description || "WebGPU"}; output in ${out}`);

  // 1-2. The world, written as files, and the tiny CLIP.
  const setup = await prepareDemoWorld(out, {
    world: WORLD,
    pretrain: PRETRAIN,
    fresh: values.fresh,
    quiet,
    label: "demo",
  });
  const { world, dataset: ds, tokenizer: tok, corpus, loadTiny } = setup;
  const pre = { path: setup.clipPath };

  // 3. Pairing.
  const pairDir = join(out, "pairing");
  {
    const { model, dispose } = await setup.pairingModel();
    const backbone = model.image;
    const data = pairingDataset(ds);
    const pbar = new Progress("pair", 1, "items", quiet);
    await runPairing(
      model,
      corpus,
      data,
      loaderImageSource(ds, {
        size: backbone.imageSize,
        mean: backbone.mean,
        std: backbone.std,
        interpolation: "bicubic",
        batch: 64,
        workers: 1,
      }),
      {
        out: pairDir,
        k: 5,
        onProgress: (p) => {
          if (p.stage === "match" || p.stage === "write") return;
          pbar.total = p.total;
          pbar.update(p.done);
        },
      },
    );
    dispose();
  }
  const pairing: Partial<Record<"train" | "val" | "test", SplitPairing>> = {};
  for (const s of ds.splits) {
    const lines = (await Deno.readTextFile(join(pairDir, pairingFileName(s.name)))).trim()
      .split("\n").slice(1).map((l) => JSON.parse(l));
    pairing[s.name] = {
      reports: Int32Array.from(lines, (r) => r.reports[0]),
      scores: Float32Array.from(lines, (r) => r.scores[0]),
    };
  }
  const truthAgree = pairingAgreement(world, pairing.train!.reports);
  say(
    quiet,
    `demo: pairing done; ${(100 * truthAgree).toFixed(0)}% of training images are paired with ` +
      `a report written for their own class (chance: ~${(100 / ds.classes.length).toFixed(0)}%)`,
  );

  // 4. Baseline and CLIP-IT per seed.
  const inputs: StageInputs = {
    dataset: ds,
    corpus,
    pairing,
    tokenizer: tok,
    load: async () => {
      const m = await loadTiny();
      return { backbone: m.backbone, textEncoder: m.textEncoder, logitScale: m.logitScale };
    },
    backboneKey: `demo-tiny:${pre.path}`,
    featureCache: join(out, "features"),
  };
  await Deno.mkdir(join(out, "features"), { recursive: true });
  const results: Record<"baseline" | "clipit", ClassificationReport[]> = {
    baseline: [],
    clipit: [],
  };
  const runsDir = join(out, "runs");
  for (let seed = 0; seed < seeds; seed++) {
    for (const stage of ["baseline", "clipit"] as const) {
      const dir = join(runsDir, `${stage}-s${seed}`);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      const settings = { ...(stage === "baseline" ? BASELINE : STAGE), seed };
      const run = await RunDir.create(dir, {
        command: "demo",
        stage,
        settings,
        dataset: { kind: ds.kind, root: ds.root, classes: ds.classes },
        environment: { ...environmentInfo(), adapter: adapterInfo() },
        note: "synthetic demo world",
      });
      const bar = new Progress(`${stage} seed ${seed}`, 1, "steps", quiet);
      const r = await runStage(
        run,
        stage,
        {
          ...inputs,
          initHead: stage === "clipit"
            ? join(runsDir, `baseline-s${seed}`, RUN_FILES.model)
            : undefined,
        },
        settings,
        {
          onProgress: (p) => {
            bar.total = p.totalSteps;
            if (p.phase === "train") bar.update(p.step);
          },
        },
      );
      results[stage].push(r.test!);
      const t = r.seconds;
      say(
        quiet,
        `demo: ${stage} seed ${seed}: ${r.steps} steps; balanced accuracy ` +
          `${(100 * r.test!.balanced_accuracy).toFixed(1)}%; time: steps ${
            t.train.toFixed(1)
          } s, ` +
          `validation ${t.validate.toFixed(1)} s, checkpoints ${t.checkpoint.toFixed(1)} s`,
      );
    }
  }

  // 5. The table.
  const rows = (["baseline", "clipit"] as const).map((stage) => ({
    name: stage === "baseline" ? "unimodal baseline" : "CLIP-IT",
    aggregate: aggregateRuns(results[stage]),
  }));
  const seconds = (performance.now() - t0) / 1000;
  const b = rows[0].aggregate, c = rows[1].aggregate;
  const mean = (a: typeof b) => a.balanced_accuracy.mean!;
  console.log(
    `\nBalanced accuracy on the synthetic world's test split (${
      ds.splits.find((s) => s.name === "test")!.labels.length
    } images), mean +/- std over ${seeds} seed(s):\n`,
  );
  console.log(formatComparisonTable(rows));
  const delta = 100 * (mean(c) - mean(b));
  console.log(
    `\n${
      delta > 0
        ? `CLIP-IT is ${delta.toFixed(1)} points above the baseline here.`
        : `CLIP-IT is NOT above the baseline here (${delta.toFixed(1)} points).`
    } Spread across seeds is shown; with ${seeds} seeds treat small gaps as noise.`,
  );
  console.log(`Report of one run: ${join(runsDir, "clipit-s0", RUN_FILES.report)}`);
  console.log(`Elapsed: ${seconds.toFixed(1)} s on ${gpu.adapter.description || "WebGPU"}.`);
  console.log(`
With real data and weights (see README "Running CLIP-IT on real data"):
  deno run -A cli.ts pair  --dataset crc --root NCT-CRC-HE --corpus tcga-colon-reports.txt \\
      --weights quiltnet-b32/ --out pairing/
  deno run -A cli.ts train --stage baseline --dataset crc --root NCT-CRC-HE \\
      --weights quiltnet-b32/ --out runs/baseline-s0
  deno run -A cli.ts train --stage clipit --dataset crc --root NCT-CRC-HE \\
      --weights quiltnet-b32/ --corpus tcga-colon-reports.txt --pairing pairing/ \\
      --init-head runs/baseline-s0/model.safetensors --out runs/clipit-s0
  deno run -A cli.ts eval runs/clipit-s0 runs/clipit-s1 runs/clipit-s2`);
  return 0;
}

/**
 * Fraction of training images whose top-1 report was written for a tile of the same class (the
 * world knows every corpus report's factors; the pipeline never sees them).
 */
function pairingAgreement(world: World, reports: Int32Array): number {
  let same = 0;
  for (let i = 0; i < reports.length; i++) {
    const imageClass = classOf(world.factors("train", i));
    const reportClass = classOf(world.corpusFactors(reports[i]));
    if (reportClass === imageClass) same++;
  }
  return same / Math.max(1, reports.length);
}
