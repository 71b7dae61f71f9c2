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
 *    for QuiltNet, PLIP or CONCH). Pretraining takes minutes on a software GPU, so its result
 *    ships beside this file (`cli/demo_clip.safetensors` + `.json`, made by `--pretrain`, which
 *    redoes it); a world that differs from the one it was made from is pretrained on anew.
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

const USAGE =
  `usage: deno run -A cli.ts demo [--out DIR] [--seeds N] [--fresh] [--pretrain] [--quiet]

CLIP-IT end to end on a generated (synthetic) histology-like world, downloading nothing:
world -> tiny CLIP pretrained contrastively -> pairing -> baseline and CLIP-IT per seed ->
balanced accuracy, mean +/- std.

  --out DIR     where the world, the CLIP, the pairing and the runs go (default out/demo)
  --seeds N     training seeds (default 3)
  --fresh       write the world again (default: reuse the world of an earlier demo in DIR)
  --pretrain    pretrain the tiny CLIP now instead of using the one shipped with the demo
                (cli/demo_clip.safetensors, made by this command; several minutes)
  --quiet       no progress bars
  -h, --help    this text`;

/**
 * The demo's world: train/data/world.ts' defaults (2000 paired tiles for pretraining, 16
 * labelled tiles per class for training, 32 per class for validation, 64 for test, a corpus of
 * 1000 reports).
 */
export const WORLD: WorldOptions = { seed: 1 };
/**
 * Pretraining of the tiny CLIP (AdamW, cosine schedule with warm-up). It takes minutes on a
 * software GPU, so the demo ships the result (cli/demo_clip.safetensors) and `--pretrain` redoes
 * it; the printout says how often a pairing has the image's own class.
 */
export const PRETRAIN: DemoPretrain = { steps: 1000, batchSize: 64, lr: 2e-3, seed: 7 };
/**
 * CLIP-IT: the paper's defaults (Adam 1e-3, weight decay 1e-4, clipping 0.5, LoRA r 16 alpha 8,
 * lambda 1), with a batch of 32 so the 64-image training split gives 2 steps per epoch.
 */
export const CLIPIT: ClipItSettings = {
  epochs: 30,
  batchSize: 32,
  lr: 1e-3,
  weightDecay: 1e-4,
  maxGradNorm: 0.5,
  lambda: 1,
  lora: { rank: 16, alpha: 8 },
  valEvery: 20,
  logEvery: 20,
  workers: 0, // 32x32 PNGs decode faster in this thread than worker threads start
};
/** The stage-1 head: more epochs (it is cheap: features are computed once). */
export const BASELINE: ClipItSettings = { ...CLIPIT, epochs: 60, valEvery: 30 };
/** The paper's lambda = 0 ablation: the same LoRA fine-tuning without the reports. */
export const NO_TEXT: ClipItSettings = { ...CLIPIT, lambda: 0 };

/** The demo's runs per seed, in order (CLIP-IT's fc starts from the baseline's head). */
const VARIANTS = [
  {
    id: "baseline",
    stage: "baseline",
    name: "unimodal baseline (frozen + linear head)",
    settings: BASELINE,
  },
  { id: "lambda0", stage: "clipit", name: "CLIP-IT with lambda = 0 (no text)", settings: NO_TEXT },
  { id: "clipit", stage: "clipit", name: "CLIP-IT", settings: CLIPIT },
] as const;

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
        pretrain: { type: "boolean", default: false },
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
  const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
  // The demo's matmuls are tiny: use a tile sweep cached by an earlier command, never spend the
  // ~20 s of measuring one (kernels/autotune.ts).
  const gpu = await init({ tune: "cache" });
  console.log(
    "CLIP-IT demo. Everything here is SYNTHETIC: generated H&E-like tiles, generated reports and " +
      "a tiny CLIP trained on them; the numbers say nothing about real pathology.",
  );
  say(quiet, `demo: adapter ${gpu.adapter.description || "WebGPU"}; output in ${out}`);

  // 1-2. The world, written as files, and the tiny CLIP.
  const setup = await prepareDemoWorld(out, {
    world: WORLD,
    pretrain: PRETRAIN,
    fresh: values.fresh,
    pretrainNow: values.pretrain,
    quiet,
    label: "demo",
  });
  const { world, dataset: ds, tokenizer: tok, corpus } = setup;

  // 3. Pairing.
  const pairDir = join(out, "pairing");
  {
    const { model, dispose } = await setup.pairingModel();
    const pbar = new Progress("pair", 1, "items", quiet);
    await Deno.mkdir(pairDir, { recursive: true });
    await runPairing(
      model,
      corpus,
      pairingDataset(ds),
      loaderImageSource(ds, {
        size: model.image.imageSize,
        mean: model.image.mean,
        std: model.image.std,
        interpolation: "bicubic",
        batch: 64,
        workers: 0,
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
    `demo: [${elapsed()}] pairing done; ${
      (100 * truthAgree).toFixed(0)
    }% of training images are paired with ` +
      `a report written for their own class (chance: ~${(100 / ds.classes.length).toFixed(0)}%)`,
  );

  // 4. Baseline and CLIP-IT per seed.
  const inputs: StageInputs = {
    dataset: ds,
    corpus,
    pairing,
    tokenizer: tok,
    load: async () => {
      const m = await setup.loadTiny();
      return { backbone: m.backbone, textEncoder: m.textEncoder, logitScale: m.logitScale };
    },
    backboneKey: `demo-tiny:${setup.clipPath}`,
    featureCache: join(out, "features"),
  };
  await Deno.mkdir(join(out, "features"), { recursive: true });
  const results = new Map<string, ClassificationReport[]>(VARIANTS.map((v) => [v.id, []]));
  const runsDir = join(out, "runs");
  for (let seed = 0; seed < seeds; seed++) {
    for (const v of VARIANTS) {
      const dir = join(runsDir, `${v.id}-s${seed}`);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      const settings = { ...v.settings, seed };
      const run = await RunDir.create(dir, {
        command: "demo",
        stage: v.stage,
        variant: v.id,
        settings,
        dataset: { kind: ds.kind, root: ds.root, classes: ds.classes },
        environment: { ...environmentInfo(), adapter: adapterInfo() },
        note: "synthetic demo world",
      });
      const bar = new Progress(`${v.id} seed ${seed}`, 1, "steps", quiet);
      const r = await runStage(
        run,
        v.stage,
        {
          ...inputs,
          initHead: v.stage === "clipit"
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
      results.get(v.id)!.push(r.test!);
      const t = r.seconds;
      say(
        quiet,
        `demo: [${elapsed()}] ${v.id} seed ${seed}: ${r.steps} steps; balanced accuracy ` +
          `${(100 * r.test!.balanced_accuracy).toFixed(1)}%; time: data ${
            t.data.toFixed(1)
          } s, steps ${t.train.toFixed(1)} s, ` +
          `validation ${t.validate.toFixed(1)} s, checkpoints ${t.checkpoint.toFixed(1)} s`,
      );
    }
  }

  // 5. The table.
  const rows = VARIANTS.map((v) => ({
    name: v.name,
    aggregate: aggregateRuns(results.get(v.id)!),
  }));
  const seconds = (performance.now() - t0) / 1000;
  const mean = (i: number) => rows[i].aggregate.balanced_accuracy.mean!;
  const std = (i: number) => rows[i].aggregate.balanced_accuracy.std ?? 0;
  console.log(
    `\nBalanced accuracy on the synthetic world's test split (${
      ds.splits.find((s) => s.name === "test")!.labels.length
    } images), mean +/- std over ${seeds} seed(s):\n`,
  );
  console.log(formatComparisonTable(rows));
  const delta = 100 * (mean(2) - mean(0)), textDelta = 100 * (mean(2) - mean(1));
  const noise = 100 * Math.max(std(0), std(2));
  console.log(
    `\nCLIP-IT - baseline: ${delta >= 0 ? "+" : ""}${delta.toFixed(1)} points; CLIP-IT - ` +
      `(lambda = 0): ${textDelta >= 0 ? "+" : ""}${textDelta.toFixed(1)} points (what the ` +
      `reports add beyond the LoRA fine-tuning). ${
        Math.abs(delta) <= noise
          ? `The gap is within one standard deviation across seeds (${noise.toFixed(1)}): no ` +
            "difference can be claimed here."
          : delta > 0
          ? "CLIP-IT is above the baseline here."
          : "CLIP-IT is NOT above the baseline here."
      }`,
  );
  console.log(`Report of one run: ${join(runsDir, "clipit-s0", RUN_FILES.report)}`);
  console.log(`Elapsed: ${seconds.toFixed(1)} s on ${gpu.adapter.description || "WebGPU"}.`);
  console.log(`
With real data and weights (see the README, "CLIP-IT on real data"):
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
