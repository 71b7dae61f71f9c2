/**
 * `cli.ts train`: one training run of a stage into a run folder (train/pipeline.ts does the
 * work; this file parses, checks and prints).
 *
 *   deno run -A cli.ts train --stage baseline --dataset crc --root data/crc \
 *     --weights quiltnet/ --out runs/baseline-s0
 *   deno run -A cli.ts train --stage clipit --dataset crc --root data/crc \
 *     --weights quiltnet/ --corpus reports.txt --pairing pairing/ \
 *     --init-head runs/baseline-s0/model.safetensors --out runs/clipit-s0
 *
 * Everything cheap is checked before anything expensive: the options, the dataset, the corpus,
 * the pairing files against both, the model files, the run folder. Ctrl-C stops after the
 * current step with a resumable checkpoint; `--resume RUN` continues it with the options stored
 * in its config.json. Exit status: 0 done, 1 failure while working (a NaN loss names its step),
 * 2 bad arguments or inputs, 130 interrupted.
 */
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { checkOutputPath } from "../nn/formats/safe_write.ts";
import { type Corpus, readCorpus } from "../clip/pairing_corpus.ts";
import type { Dataset, SplitName } from "../train/data/datasets.ts";
import { NonFiniteLossError, TrainingInterrupted } from "../train/loop.ts";
import { formatReportTable } from "../train/metrics_table.ts";
import { randomSplitPairing, runStage, type SplitPairing, STAGES } from "../train/pipeline.ts";
import { environmentInfo, RUN_FILES, RunDir } from "../train/run.ts";
import {
  choiceOption,
  DATASET_OPTIONS,
  DATASET_USAGE,
  datasetArgs,
  interruptOnCtrlC,
  intOption,
  openDatasetArgs,
} from "./args.ts";
import { prepareTrainModels } from "./models.ts";
import { Progress } from "./progress.ts";
import {
  CLIPIT_OPTIONS,
  CLIPIT_USAGE,
  loadPairings,
  MODEL_OPTIONS,
  MODEL_USAGE,
  OPTIM_OPTIONS,
  optimUsage,
  parseModelSpec,
  parseSettings,
} from "./train_options.ts";

const USAGE = `usage: deno run -A cli.ts train --stage STAGE --dataset KIND --root DIR
                         --weights FILE|DIR|random [--arch NAME|FILE] --out RUN [options]
       deno run -A cli.ts train --resume RUN

Trains one stage of CLIP-IT (or a baseline) into the run folder RUN: config.json,
metrics.jsonl, checkpoints, model.safetensors (LoRA merged), eval.json, report.html.

Stage:
  --stage S             baseline (frozen backbone + linear head), text-baseline (frozen text
                        encoder on the paired report + MLP head), clipit, contrastive
Data:
${DATASET_USAGE}
  --corpus FILE         the report corpus (text stages)
  --pairing DIR|random  the output folder of \`cli.ts pair\` (its pairs-<split>.jsonl are checked
                        against this dataset and corpus), or random reports (the ablation)
Models:
${MODEL_USAGE}
CLIP-IT:
${CLIPIT_USAGE}
  --init-head FILE      a baseline run's model.safetensors to start fc from
Optimisation:
${optimUsage()}
Runs:
  --out RUN             a new run folder
  --resume RUN          continue RUN from its last checkpoint with its stored options
  --feature-cache DIR   share stage-1 feature caches between runs (default: the run folder)
  --quiet               no progress bars
  -h, --help            this text

Exit status: 0 done, 1 failure while working, 2 bad arguments or inputs, 130 interrupted
(continue with --resume RUN).`;

const OPTIONS = {
  stage: { type: "string" },
  ...DATASET_OPTIONS,
  corpus: { type: "string" },
  pairing: { type: "string" },
  "pairing-seed": { type: "string" },
  ...MODEL_OPTIONS,
  ...CLIPIT_OPTIONS,
  "init-head": { type: "string" },
  ...OPTIM_OPTIONS,
  out: { type: "string" },
  resume: { type: "string" },
  "feature-cache": { type: "string" },
  quiet: { type: "boolean", default: false },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** Options a resumed run may change (they do not change what is computed). */
const RESUME_MAY_SET = new Set(["resume", "quiet", "workers", "help"]);

/** Run `train` with the arguments after the command name (see the module comment). */
export async function trainCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    console.error(`train: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  let resumeRun: RunDir | null = null;
  if (values.resume) {
    const extra = Object.keys(values).filter((k) =>
      !RESUME_MAY_SET.has(k) && args.some((a) => a === `--${k}` || a.startsWith(`--${k}=`))
    );
    if (extra.length) {
      console.error(
        `train: --resume continues a run with the options it was started with; drop ` +
          `${extra.map((k) => `--${k}`).join(", ")} (or start a new run with --out)`,
      );
      return 2;
    }
    try {
      resumeRun = await RunDir.open(values.resume);
      if (!(await resumeRun.has(RUN_FILES.last))) {
        throw new Error(`--resume ${values.resume}: no ${RUN_FILES.last} to continue from`);
      }
    } catch (e) {
      console.error(`train: ${(e as Error).message}`);
      return 2;
    }
    const stored = resumeRun.config.args as string[] | undefined;
    if (!Array.isArray(stored)) {
      console.error(`train: --resume ${values.resume}: its config.json has no stored arguments`);
      return 2;
    }
    const keep = args.filter((a) => a === "--quiet" || a.startsWith("--workers"));
    ({ values } = parseArgs({
      args: [...stored, ...keep],
      options: OPTIONS,
      strict: true,
      allowPositionals: false,
    }));
  }

  // ---- options ----
  const problems: string[] = [];
  const stage = choiceOption("stage", values.stage, STAGES, problems);
  if (!values.stage) problems.push(`--stage is required (${STAGES.join(", ")})`);
  const data = datasetArgs(values, problems);
  const needsPairing = stage === "clipit" || stage === "contrastive" || stage === "text-baseline";
  if (needsPairing && !values.corpus) problems.push(`--stage ${stage} needs --corpus FILE`);
  if (needsPairing && !values.pairing) problems.push(`--stage ${stage} needs --pairing DIR|random`);
  if (!needsPairing && (values.pairing || values.corpus)) {
    problems.push(`--stage ${stage} uses no reports: drop --pairing / --corpus`);
  }
  const spec = parseModelSpec(values, problems);
  if (!resumeRun && !values.out) problems.push("--out RUN (a new run folder) or --resume RUN");
  if (stage !== "clipit") {
    for (const f of ["lambda", "init-head", "lora-targets", "fusion-init"] as const) {
      if (values[f] !== undefined) problems.push(`--${f} is for --stage clipit`);
    }
  }
  const settings = parseSettings(values, problems);
  const pairingSeed = intOption("pairing-seed", values["pairing-seed"], -(2 ** 31), problems);
  if (problems.length) {
    console.error(`train: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const quiet = values.quiet;
  const out = resumeRun ? resumeRun.dir : values.out!;

  // ---- inputs, checked before any model work ----
  let ds: Dataset, corpus: Corpus | undefined;
  let pairing: Partial<Record<SplitName, SplitPairing>> | undefined;
  let models;
  try {
    ds = await openDatasetArgs(data);
    if (values.corpus) corpus = await readCorpus(values.corpus);
    if (values.pairing === "random") {
      pairing = randomSplitPairing(ds, corpus!.reports.length, pairingSeed ?? settings.seed ?? 0);
    } else if (values.pairing) {
      pairing = await loadPairings(values.pairing, ds, corpus!, `--corpus ${values.corpus}`);
    }
    if (values["init-head"]) await Deno.stat(values["init-head"]);
    if (!resumeRun) {
      await Deno.mkdir(out, { recursive: true });
      await checkOutputPath(join(out, RUN_FILES.config), { label: "--out" });
    }
    models = await prepareTrainModels(spec, stage !== "baseline");
  } catch (e) {
    console.error(`train: ${(e as Error).message}`);
    return 2;
  }

  const gpu = await init();
  let run: RunDir;
  if (resumeRun) run = resumeRun;
  else {
    try {
      run = await RunDir.create(out, {
        command: "train",
        args,
        stage,
        settings,
        dataset: {
          kind: ds.kind,
          root: ds.root,
          classes: ds.classes,
          splits: Object.fromEntries(ds.splits.map((s) => [s.name, s.labels.length])),
        },
        corpus: corpus
          ? { path: resolve(corpus.path), sha256: corpus.sha256, reports: corpus.reports.length }
          : null,
        pairing: values.pairing ?? null,
        models: models.describe,
        init_head: values["init-head"] ?? null,
        environment: { ...environmentInfo(), adapter: adapterInfo() },
        created: new Date().toISOString(),
      });
    } catch (e) {
      console.error(`train: ${(e as Error).message}`);
      return 2;
    }
  }
  for (const note of models.notes) console.error(`train: note: ${note}`);
  if (!quiet) {
    const counts = ds.splits.map((s) => `${s.name} ${s.labels.length}`).join(", ");
    console.error(
      `train: ${stage} on ${ds.kind}:${ds.root} (${ds.classes.length} classes; ${counts})` +
        `${resumeRun ? `, resuming ${run.dir}` : ` into ${run.dir}`} on ` +
        `${gpu.adapter.description || "WebGPU"}`,
    );
  }
  const ctrlC = interruptOnCtrlC("train");
  let bar: Progress | null = null, features: Progress | null = null;
  try {
    const loaded = models;
    const result = await runStage(
      run,
      stage!,
      {
        dataset: ds,
        corpus,
        pairing,
        load: () => loaded.load(),
        tokenizer: models.tokenizer,
        initHead: values["init-head"],
        featureCache: values["feature-cache"],
        backboneKey: models.backboneKey,
      },
      settings,
      {
        resume: resumeRun !== null,
        signal: ctrlC.signal,
        onFeatures: (split, done, total) => {
          if (quiet) return;
          if (!features || features.label !== `features ${split}`) {
            features = new Progress(`features ${split}`, total, "images", quiet);
          }
          features.update(done);
        },
        onProgress: (p) => {
          if (quiet) return;
          bar ??= new Progress("train", p.totalSteps, "steps", quiet);
          if (p.phase === "train") {
            bar.update(
              p.step,
              `loss ${Number.isFinite(p.loss) ? p.loss.toFixed(4) : "-"}  ` +
                `${p.imagesPerSecond.toFixed(1)} images/s`,
            );
          } else {
            console.error(
              `\nval at step ${p.step}: loss ${p.val!.loss.toFixed(4)}, balanced accuracy ` +
                `${(100 * p.val!.balanced_accuracy).toFixed(2)}%`,
            );
          }
        },
      },
    );
    if (result.test) console.log(formatReportTable(result.test));
    // What the stage wrote (the text baseline has no image model to export).
    const wrote: string[] = [];
    for (const f of [RUN_FILES.model, RUN_FILES.eval, RUN_FILES.report]) {
      if (await run.has(f)) wrote.push(f);
    }
    console.log(`train: ${result.steps} steps; run folder ${run.dir} (${wrote.join(", ")})`);
    return 0;
  } catch (e) {
    if (e instanceof TrainingInterrupted) {
      console.error(`train: ${e.message}; continue with --resume ${run.dir}`);
      return 130;
    }
    if (e instanceof NonFiniteLossError) {
      console.error(`train: ${e.message} (${run.dir}/${RUN_FILES.last})`);
      return 1;
    }
    throw e;
  } finally {
    ctrlC.release();
  }
}
